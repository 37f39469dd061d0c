//! The daemon's workers (`mqlsync run`): its loop and its HTTP surface, which the loop mounts.
//!
//! # Layout
//! - [`daemon`]: the loop: one syncer, a schedule per source, the engine's clock, the
//!   outbox writer, shutdown. Its module doc argues the design.
//! - [`schedule`]: the loop's pure rules: per-source intervals and idle backoff, the
//!   writer's window, back-pressure, what a failure means. No I/O, no clock.
//! - [`http`]: one axum router on one port: the two webhooks, `/healthz`, `/readyz`,
//!   `/metrics`; [`http::HttpState`] is what the daemon shares with it (the wake-up bells of
//!   the pollers, readiness, metrics, the sending side of the inbound queue).
//! - [`webhook`]: what the webhooks accept: the Marketo JSON body and its shared secret, the
//!   Salesforce Outbound Message (SOAP) and its organisation id, the Ack. No I/O.
//! - [`metrics`]: the metrics registry and its Prometheus text.
//!
//! # The webhooks' contract
//! A webhook is a hint, not a fact: it says "look now". The pollers remain the source of
//! truth, so a lost, late, duplicated or forged webhook costs latency, never correctness.
//! Every accepted call is acknowledged at once (Marketo does not retry; Salesforce retries
//! until acknowledged), wakes the poller of its source, and puts an [`Inbound`] on a bounded
//! queue the daemon reads; when that queue is full the call is still acknowledged and counted
//! as `dropped`.
//!
//! Must not: decide anything, write to the store or call either system: that is the run
//! loop's and the engine's.

pub mod daemon;
pub mod http;
pub mod metrics;
pub mod schedule;
pub mod webhook;

use jiff::Timestamp;

use crate::engine::model::{Campaign, ScorePart};

/// One webhook call, as the daemon reads it from the inbound queue.
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    /// Marketo's "Call Webhook" step after a score change.
    MarketoScore(MarketoScore),
    /// Threshold records (the sales managers' knob) changed in the CRM.
    Threshold(CrmRecords),
    /// MQL records changed in the CRM (a rep accepting or rejecting, an admin's edit).
    MqlRecord(CrmRecords),
    /// Leads or contacts changed in the CRM (status, owner, conversion).
    Person(CrmRecords),
}

/// A Marketo webhook body (see [`webhook::MARKETO_TEMPLATE`]).
#[derive(Clone, Debug, PartialEq)]
pub struct MarketoScore {
    pub map_lead_id: i64,
    /// The score fields the body carried with a value (an empty field renders as `null` and
    /// is left out), as the mapping's parts.
    pub scores: Vec<(ScorePart, f64)>,
    /// `sfdcLeadId` / `sfdcContactId`: the CRM records the lead is synced to, when set.
    pub crm_lead_id: Option<String>,
    pub crm_contact_id: Option<String>,
    /// The smart campaign whose flow called the webhook.
    pub campaign: Option<Campaign>,
    /// `{{system.dateTime}}` as Marketo rendered it (no zone given: read as UTC).
    pub sent_at: Option<Timestamp>,
    /// When the daemon received the call.
    pub received_at: Timestamp,
}

/// CRM records named in one Salesforce Outbound Message, all of one object.
#[derive(Clone, Debug, PartialEq)]
pub struct CrmRecords {
    /// The object's API name as the message gave it (`MQL_Threshold__c`).
    pub object: String,
    /// The records' ids, in message order, without repeats.
    pub record_ids: Vec<String>,
    /// The notifications' ids: Salesforce delivers at least once, and a redelivery carries
    /// the same ids.
    pub notification_ids: Vec<String>,
    pub received_at: Timestamp,
}
