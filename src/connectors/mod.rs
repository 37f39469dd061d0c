//! The Salesforce and Marketo REST clients behind the [`Crm`] and [`Map`] traits.
//!
//! Vendor-level and generic: they speak SOQL, sObjects, activities and leads, and know nothing of
//! MQLs, thresholds or mappings (the sync layer builds field lists and turns records into engine
//! events). Records are `serde_json` maps; typed only where the vendor's shape is fixed
//! ([`marketo::Activity`]).
//!
//! # Layout
//! - [`error`]: [`ConnectorError`] and its [`ErrorClass`] (retry, renew token, back off, fail
//!   record, checkpoint, fatal); [`SettingNames`], what the user's config calls the settings an
//!   error tells them to check.
//! - [`http`]: the reqwest client and transport-error mapping (a refused connection or an
//!   unknown host is its own, unretried error naming the configured URL).
//! - [`auth`]: the single-flight token cache; a token endpoint's refusal or other answer.
//! - [`limits`]: governor pacing on tokio time, in-flight caps, daily budgets with a reserve.
//! - [`retry`]: backon-driven retry loop acting on the class.
//! - [`salesforce`]: OAuth flows, SOQL escaping and cursors, query paging, sObject Collections,
//!   Bulk API 2.0 query and ingest jobs, `/limits`.
//! - [`marketo`]: identity, envelope and codes, activities, paging tokens, leads by filter.
//!
//! Every client is `Clone`; clones share the token cache, the pacer and the daily budget, so one
//! quota serves every task that calls a system. Delivery contract of the read paths: at-least-once
//! (a checkpointed cursor may hand a record out again after a crash; consumers de-duplicate on
//! `(SystemModstamp, Id)` or `marketoGUID`).

pub mod auth;
pub mod error;
pub mod http;
pub mod limits;
pub mod marketo;
pub mod retry;
pub mod salesforce;
#[cfg(test)]
mod testkit;

use std::future::Future;

use tracing::Instrument;

pub use error::{ConnectorError, ErrorClass, RecordError, Result, SettingNames, System};
pub use limits::Priority;

/// One record as the vendor sent it.
pub type Record = serde_json::Map<String, serde_json::Value>;

/// How a write of one record ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WriteStatus {
    Created,
    Updated,
    /// The vendor said the work was already done (see [`salesforce::already_done`]); counted as
    /// success. `code` is the vendor code that said so.
    AlreadyDone {
        code: String,
    },
}

/// The outcome of one record of a batch write, in input order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordOutcome {
    /// Position in the caller's input.
    pub index: usize,
    /// The record id the vendor reported, when it did.
    pub id: Option<String>,
    pub result: std::result::Result<WriteStatus, RecordError>,
}

/// One page of a SOQL query.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryPage {
    pub total_size: u64,
    pub done: bool,
    #[serde(default)]
    pub next_records_url: Option<String>,
    pub records: Vec<Record>,
}

/// Which page to fetch.
#[derive(Debug, Clone)]
pub enum PageRequest {
    /// The first page of `soql`; `all` uses `/queryAll` (deleted and merged rows too).
    Start { soql: String, all: bool },
    /// A later page, by the server's `nextRecordsUrl`.
    Next { next_records_url: String },
}

/// The CRM (Salesforce REST).
pub trait Crm: Clone + Send + Sync + 'static {
    /// Fetch one page of a query (largest batch size).
    fn query_page(
        &self,
        page: PageRequest,
        priority: Priority,
    ) -> impl Future<Output = Result<QueryPage>> + Send;

    /// Upsert by external id through sObject Collections, 200 records a request; one outcome per
    /// input record. A per-record failure fails that record only.
    fn upsert(
        &self,
        object: &str,
        external_id_field: &str,
        records: Vec<Record>,
    ) -> impl Future<Output = Result<Vec<RecordOutcome>>> + Send;

    /// Upsert by external id through Bulk API 2.0 ingest jobs, for writes too large for
    /// Collections (a call per 200 records): a handful of calls per job of up to ~100 MB of
    /// CSV. One outcome per input record, in input order (the vendor's results are matched
    /// back by external id); a per-record failure fails that record only. `priority` is the
    /// daily budget's (a backfill is routine; it must not spend the reserve).
    fn upsert_bulk(
        &self,
        object: &str,
        external_id_field: &str,
        records: Vec<Record>,
        priority: Priority,
    ) -> impl Future<Output = Result<Vec<RecordOutcome>>> + Send;

    /// Update by record id (each record carries `Id`) through Bulk API 2.0 ingest jobs, as
    /// [`Crm::upsert_bulk`] does for upserts (results matched back by `Id`).
    fn update_bulk(
        &self,
        object: &str,
        records: Vec<Record>,
        priority: Priority,
    ) -> impl Future<Output = Result<Vec<RecordOutcome>>> + Send;

    /// Create records through sObject Collections, 200 records a request; one outcome per
    /// input record. Not idempotent: the caller looks up what exists first, and a call whose
    /// answer is lost is not sent again (see [`retry::Repeat`]).
    fn create(
        &self,
        object: &str,
        records: Vec<Record>,
    ) -> impl Future<Output = Result<Vec<RecordOutcome>>> + Send;

    /// Update by record id (each record carries `Id`) through sObject Collections.
    fn update(
        &self,
        object: &str,
        records: Vec<Record>,
    ) -> impl Future<Output = Result<Vec<RecordOutcome>>> + Send;

    /// `GET /sobjects/{object}/describe`: the object's fields and what the user may do with
    /// them.
    fn describe(&self, object: &str) -> impl Future<Output = Result<Record>> + Send;

    /// `GET /limits`; also refreshes the shared daily budget from `DailyApiRequests`.
    fn limits(&self) -> impl Future<Output = Result<Record>> + Send;
}

/// Page-by-page reader of one query; memory holds one page at a time, or two when it reads
/// ahead.
pub struct QueryPages<C: Crm> {
    crm: C,
    next: Option<PageRequest>,
    priority: Priority,
    /// Whether the next page is asked for as soon as a page arrives (see
    /// [`QueryPages::reading_ahead`]), and that request under way.
    read_ahead: bool,
    ahead: Option<tokio_util::task::AbortOnDropHandle<Result<QueryPage>>>,
}

impl<C: Crm> QueryPages<C> {
    pub fn new(crm: C, soql: impl Into<String>, all: bool, priority: Priority) -> Self {
        QueryPages {
            crm,
            next: Some(PageRequest::Start {
                soql: soql.into(),
                all,
            }),
            priority,
            read_ahead: false,
            ahead: None,
        }
    }

    /// Asks for each next page as soon as a page arrives, so that the vendor serves it while
    /// the caller works on this one (a read of a million records spent half its time
    /// waiting). Only for a reader that reads to the end: a page asked for is a call spent,
    /// and dropping the reader abandons it.
    pub fn reading_ahead(mut self) -> Self {
        self.read_ahead = true;
        self
    }

    /// The next page, or `None` after the last.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Record>>> {
        let Some(req) = self.next.take() else {
            return Ok(None);
        };
        let page = match self.ahead.take() {
            Some(asked) => asked
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
            None => self.crm.query_page(req.clone(), self.priority).await,
        };
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                self.next = Some(req); // the caller may try again
                return Err(e);
            }
        };
        self.next = match (page.done, page.next_records_url) {
            (false, Some(url)) => Some(PageRequest::Next {
                next_records_url: url,
            }),
            _ => None,
        };
        if self.read_ahead
            && let Some(next) = &self.next
        {
            let (crm, next, priority) = (self.crm.clone(), next.clone(), self.priority);
            let asked = async move { crm.query_page(next, priority).await }
                .instrument(tracing::Span::current());
            self.ahead = Some(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
                asked,
            )));
        }
        Ok(Some(page.records))
    }
}

pub use marketo::Map;
