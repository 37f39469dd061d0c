//! The SQLite checkpoint store (being written).
