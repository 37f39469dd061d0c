//! Bulk API 2.0 query jobs, for reads too large for REST paging (backfills): create the job,
//! poll its state, then read CSV result sets by `Sforce-Locator`, one set at a time (memory holds
//! one set of at most `max_records` rows).
//!
//! Ingest jobs (writes) are in `ingest.rs`. This file must not know MQL semantics.

use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{SYS, SalesforceClient};
use crate::connectors::error::{ConnectorError, Result};
use crate::connectors::{Priority, Record};

/// A Bulk 2.0 job as the server reports it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkJob {
    pub id: String,
    /// `UploadComplete`, `InProgress`, `JobComplete`, `Failed`, `Aborted`.
    pub state: String,
    #[serde(default)]
    pub error_message: Option<String>,
    #[serde(default)]
    pub number_records_processed: Option<u64>,
}

/// One CSV result set; `next_locator` is `None` when the server said `Sforce-Locator: null`.
#[derive(Debug, Clone)]
pub struct BulkResultSet {
    pub records: Vec<Record>,
    pub next_locator: Option<String>,
}

impl SalesforceClient {
    /// `POST /jobs/query` with `operation` `query` or `queryAll`, CSV, comma, LF.
    pub async fn bulk_query_create(&self, soql: &str, all: bool) -> Result<BulkJob> {
        let body = json!({
            "operation": if all { "queryAll" } else { "query" },
            "query": soql,
            "contentType": "CSV",
            "columnDelimiter": "COMMA",
            "lineEnding": "LF",
        });
        let v = self
            .call(
                Method::POST,
                &self.data_url("/jobs/query"),
                Some(&body),
                Priority::Routine,
            )
            .await?;
        job(v)
    }

    /// `GET /jobs/query/{id}`.
    pub async fn bulk_query_status(&self, job_id: &str) -> Result<BulkJob> {
        let id = job_id_checked(job_id)?;
        let v = self
            .call(
                Method::GET,
                &self.data_url(&format!("/jobs/query/{id}")),
                None,
                Priority::Routine,
            )
            .await?;
        job(v)
    }

    /// `GET /jobs/query/{id}/results?maxRecords=N[&locator=L]` with `Accept: text/csv`.
    pub async fn bulk_query_results(
        &self,
        job_id: &str,
        locator: Option<&str>,
        max_records: u32,
    ) -> Result<BulkResultSet> {
        let id = job_id_checked(job_id)?;
        let mut url = reqwest::Url::parse(&self.data_url(&format!("/jobs/query/{id}/results")))
            .map_err(|e| ConnectorError::Config(format!("base_url is not a URL: {e}")))?;
        url.query_pairs_mut()
            .append_pair("maxRecords", &max_records.to_string());
        if let Some(l) = locator {
            url.query_pairs_mut().append_pair("locator", l);
        }
        let url = url.to_string();
        crate::connectors::retry::run(&self.inner.settings.retry, || async {
            let (headers, bytes) = self
                .call_once(
                    Method::GET,
                    &url,
                    super::Payload::Empty,
                    Priority::Routine,
                    "text/csv",
                )
                .await?;
            let next_locator = headers
                .get("Sforce-Locator")
                .and_then(|v| v.to_str().ok())
                .filter(|l| !l.is_empty() && *l != "null")
                .map(str::to_string);
            Ok(BulkResultSet {
                records: parse_csv(&bytes)?,
                next_locator,
            })
        })
        .await
    }
}

/// Job ids are record ids (15 or 18 alphanumerics); anything else would change the URL path.
pub(super) fn job_id_checked(id: &str) -> Result<&str> {
    if !id.is_empty() && id.len() <= 18 && id.chars().all(|c| c.is_ascii_alphanumeric()) {
        Ok(id)
    } else {
        Err(ConnectorError::Malformed {
            system: SYS,
            detail: format!("{id:?} is not a Bulk job id"),
        })
    }
}

fn job(v: Value) -> Result<BulkJob> {
    serde_json::from_value(v).map_err(|e| ConnectorError::Malformed {
        system: SYS,
        detail: format!("bulk job: {e}"),
    })
}

/// Parse a Bulk 2.0 CSV result: header row, then rows; an empty field is null.
pub fn parse_csv(bytes: &[u8]) -> Result<Vec<Record>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    let headers = reader
        .headers()
        .map_err(|e| ConnectorError::Malformed {
            system: SYS,
            detail: format!("bulk CSV header: {e}"),
        })?
        .clone();
    let mut out = Vec::new();
    for row in reader.records() {
        let row = row.map_err(|e| ConnectorError::Malformed {
            system: SYS,
            detail: format!("bulk CSV row: {e}"),
        })?;
        let rec: Record = headers
            .iter()
            .zip(row.iter())
            .map(|(h, v)| {
                (
                    h.to_string(),
                    if v.is_empty() {
                        Value::Null
                    } else {
                        Value::String(v.to_string())
                    },
                )
            })
            .collect();
        out.push(rec);
    }
    Ok(out)
}

/// Drives one query job to completion and reads its result sets page by page.
pub struct BulkQuery {
    sf: SalesforceClient,
    job_id: String,
    locator: Option<String>,
    finished: bool,
    max_records: u32,
}

impl BulkQuery {
    /// Create the job now; results are read with [`BulkQuery::next_set`].
    pub async fn start(
        sf: SalesforceClient,
        soql: &str,
        all: bool,
        max_records: u32,
    ) -> Result<Self> {
        let job = sf.bulk_query_create(soql, all).await?;
        Ok(BulkQuery {
            sf,
            job_id: job.id,
            locator: None,
            finished: false,
            max_records,
        })
    }

    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// Poll every `interval`, at most `max_polls` times, until the job is `JobComplete`.
    pub async fn wait(&mut self, interval: Duration, max_polls: usize) -> Result<BulkJob> {
        for _ in 0..max_polls {
            let job = self.sf.bulk_query_status(&self.job_id).await?;
            match job.state.as_str() {
                "JobComplete" => return Ok(job),
                "Failed" | "Aborted" => {
                    return Err(ConnectorError::Request {
                        system: SYS,
                        status: 200,
                        code: job.state.clone(),
                        message: job.error_message.unwrap_or_default(),
                    });
                }
                _ => tokio::time::sleep(interval).await,
            }
        }
        Err(ConnectorError::Server {
            system: SYS,
            status: 200,
            code: "BULK_JOB_NOT_DONE".into(),
            message: format!(
                "job {} still running after {max_polls} polls; poll again later",
                self.job_id
            ),
        })
    }

    /// The next result set, or `None` after the last. Call [`BulkQuery::wait`] first.
    pub async fn next_set(&mut self) -> Result<Option<Vec<Record>>> {
        if self.finished {
            return Ok(None);
        }
        let set = self
            .sf
            .bulk_query_results(&self.job_id, self.locator.as_deref(), self.max_records)
            .await?;
        self.finished = set.next_locator.is_none();
        self.locator = set.next_locator;
        Ok(Some(set.records))
    }
}
