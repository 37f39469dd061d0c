//! The request log: every request either emulator served, with its kind, so that tests can
//! count API calls by kind and compare them with the minimum the work needed.

use std::collections::BTreeMap;
use std::sync::Mutex;

use jiff::Timestamp;
use serde::Serialize;

use super::faults::System;

/// One served request.
#[derive(Clone, Debug, Serialize)]
pub struct RequestRecord {
    pub system: System,
    pub method: String,
    pub path: String,
    /// A short name of what the call does (`token`, `query`, `query_more`, `composite_upsert`,
    /// `leads_by_filter`, `activities`, `paging_token`, ...). Each emulator documents its kinds.
    pub kind: String,
    pub status: u16,
    /// The sandbox clock's time when the request arrived.
    pub at: Timestamp,
}

/// The log, shared by both servers.
#[derive(Debug, Default)]
pub struct RequestLog {
    records: Mutex<Vec<RequestRecord>>,
}

impl RequestLog {
    pub fn record(&self, record: RequestRecord) {
        self.records.lock().expect("request log lock").push(record);
    }

    pub fn snapshot(&self) -> Vec<RequestRecord> {
        self.records.lock().expect("request log lock").clone()
    }

    /// Number of requests by system and kind.
    pub fn counts(&self) -> BTreeMap<(System, String), u64> {
        let mut counts = BTreeMap::new();
        for record in self.records.lock().expect("request log lock").iter() {
            *counts
                .entry((record.system, record.kind.clone()))
                .or_insert(0) += 1;
        }
        counts
    }

    pub fn clear(&self) {
        self.records.lock().expect("request log lock").clear();
    }
}
