//! The Salesforce and Marketo REST clients (being written).
