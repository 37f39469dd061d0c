//! Bulk API 2.0 ingest: upsert by external id, or update by record id, for writes too large
//! for sObject Collections, with one outcome per input record, in input order.
//!
//! # What a run does
//! The records become CSV (a header of every field any record sets, one row per record) and
//! are split into uploads of at most [`IngestSettings::max_upload_bytes`] (the vendor takes
//! 150 MB of base64 per upload, which is about 100 MB of CSV). Each upload is one job:
//! `POST /jobs/ingest` (upsert or update, CSV, comma, LF), `PUT .../batches` (the CSV, once),
//! `PATCH` `{"state": "UploadComplete"}`, then `GET /jobs/ingest/{id}` with growing waits until
//! `JobComplete`, `Failed` or `Aborted`, then the result CSVs the job's counts say are not
//! empty: `successfulResults` (`sf__Id`, `sf__Created`, the uploaded columns),
//! `failedResults` (`sf__Id`, `sf__Error`, the columns) and, for a job that did not complete,
//! `unprocessedrecords` (the columns). The vendor does not keep input order in results, so each
//! result row is matched to its input record by the key it echoes: the external id of an
//! upsert, the `Id` column of an update. Every call counts against the daily API limit like
//! any other: a job takes three calls to send, one per look
//! at its state and one or two to read its results, so 10,000 records cost about 8 calls on an
//! org that processes them in half a minute (6 in the sandbox) where Collections takes 50.
//!
//! # CSV
//! Values: a string as is, a number in JSON notation, a boolean `true`/`false`, a list of
//! scalars joined with `;` (a multi-select picklist), a nested object as `Parent__r.Field`
//! columns (a relationship by the parent's external id). `null` and the empty string become
//! `#N/A`, which blanks the field, as `null` does through Collections (the vendor stores an
//! empty text as null); an empty cell, for a field another record sets, leaves the field alone.
//! Cells with a comma, a quote or a line break are quoted, quotes doubled.
//!
//! # Per-record outcomes
//! A success is `Created` or `Updated` by `sf__Created`. A failure's `sf__Error`
//! (`CODE:message:fields --`) becomes a [`RecordError`] with the vendor's code, classified as
//! Collections classifies it (`UNABLE_TO_LOCK_ROW` retryable, a validation rule not,
//! `DUPLICATE_VALUE` already done). Records a `Failed` or `Aborted` job left unprocessed fail
//! with `NOT_PROCESSED`, and records no result names with `NO_RESULT` (results are not kept
//! for batches over the daily batch allocation); both are retryable: an upsert by external id,
//! or an update that sets the same values, is harmless to send again. Some records fail before
//! any call, since their results could not be told apart: no key (`REQUIRED_FIELD_MISSING`),
//! one an earlier record of the call already has (`DUPLICATE_EXTERNAL_ID`), a value CSV
//! cannot carry (`INVALID_TYPE_ON_FIELD_IN_RECORD`), a row longer than an upload (`RECORD_TOO_LARGE`).
//! These codes are the connector's; the message says so.
//!
//! # Calls whose answer is lost
//! A job is not harmless to create twice, nor its data to upload twice (the vendor takes a
//! second upload, then refuses to close the job because it found several contents). So:
//! - a create whose answer is lost (timeout, dropped connection, 5xx, unreadable answer) is
//!   not sent again; the open ingest jobs are listed (`GET /jobs/ingest?isPkChunkingEnabled=
//!   false&jobType=V2Ingest`) and the newest `Open` upsert job of the same object and external
//!   id field is taken as the one created. Only when there is none is the create sent again.
//!   mqlsync is the only writer of these upserts (one run holds the store's writer lock); a
//!   job taken by mistake (an orphan of a killed run, or another writer's) is not harmful: a
//!   second upload makes the vendor refuse to close it, and the run starts a fresh job. An
//!   update job of a lead or a contact is another matter: other integrations open those too,
//!   and taking one of theirs would put our rows into their job. So a lost update create is
//!   sent again; the worst it leaves is an empty open job of ours, gone when the vendor
//!   deletes its week-old jobs;
//! - an upload whose answer is lost, or a close the vendor refuses, abandons the job (aborted,
//!   so it is never processed) and the run starts a fresh one, at most
//!   [`MAX_JOB_ATTEMPTS`] times per upload;
//! - a close whose answer is lost is seen at the next poll: a job still `Open` is closed again.
//!
//! On an error the call returns it and nothing is known of any record of the call; sending
//! them all again is safe. This file must not know MQL semantics.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Payload, SYS, SalesforceClient, bulk::job_id_checked, failed_record, soql};
use crate::connectors::error::{ConnectorError, ErrorClass, RecordError, Result};
use crate::connectors::retry::{Repeat, run_as};
use crate::connectors::{Priority, Record, RecordOutcome, WriteStatus};

/// How ingest jobs are run (`ingest` of [`SalesforceSettings`](super::SalesforceSettings)).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// Wait between closing a job and the first look at its state; each later wait doubles,
    /// up to `poll_max_ms`. Every look is an API call.
    pub poll_initial_ms: u64,
    /// The longest wait between two looks at a job's state.
    pub poll_max_ms: u64,
    /// Give up waiting for a job after this long; its records may still be written, and
    /// sending them again is safe.
    pub max_wait_secs: u64,
    /// The most CSV bytes in one upload (one job). The vendor takes 150 MB of base64 per
    /// upload and advises at most 100 MB of data.
    pub max_upload_bytes: usize,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            poll_initial_ms: 2_000,
            poll_max_ms: 30_000,
            max_wait_secs: 3_600,
            max_upload_bytes: 100_000_000,
        }
    }
}

/// Times one upload is tried with a fresh job, after a lost upload or a refused close.
pub const MAX_JOB_ATTEMPTS: usize = 3;

/// Times a create is sent when its answer is lost and no job of ours is found open.
const MAX_CREATE_ATTEMPTS: usize = 3;

/// Times a job seen still `Open` at a poll is closed again.
const MAX_CLOSES: usize = 3;

/// An ingest job as the server reports it (`GET /jobs/ingest/{id}`, and each record of the
/// list).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngestJob {
    pub id: String,
    /// `Open`, `UploadComplete`, `InProgress`, `JobComplete`, `Failed`, `Aborted`.
    pub state: String,
    #[serde(default)]
    pub object: Option<String>,
    #[serde(default)]
    pub operation: Option<String>,
    #[serde(default)]
    pub external_id_field_name: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub created_date: Option<String>,
    #[serde(default)]
    pub error_message: Option<String>,
    #[serde(default)]
    pub number_records_processed: Option<u64>,
    #[serde(default)]
    pub number_records_failed: Option<u64>,
}

impl IngestJob {
    fn finished(&self) -> bool {
        matches!(self.state.as_str(), "JobComplete" | "Failed" | "Aborted")
    }
}

/// What an ingest job does with its rows, and the column that matches a result row to its
/// input record.
#[derive(Debug, Clone, Copy)]
pub enum IngestOperation<'a> {
    /// Upsert by the external id field named.
    Upsert { external_id_field: &'a str },
    /// Update by record id: every record carries `Id`.
    Update,
}

impl<'a> IngestOperation<'a> {
    /// The column each row is known by.
    fn key_field(self) -> &'a str {
        match self {
            IngestOperation::Upsert { external_id_field } => external_id_field,
            IngestOperation::Update => "Id",
        }
    }

    fn name(self) -> &'static str {
        match self {
            IngestOperation::Upsert { .. } => "upsert",
            IngestOperation::Update => "update",
        }
    }
}

/// One page of `GET /jobs/ingest`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobList {
    #[serde(default)]
    done: bool,
    #[serde(default)]
    records: Vec<IngestJob>,
    #[serde(default)]
    next_records_url: Option<String>,
}

/// One upload: its CSV and the records it carries.
#[derive(Debug)]
struct Upload {
    csv: bytes::Bytes,
    /// External id cell -> input index, for every row of the upload.
    keys: HashMap<String, usize>,
}

/// The records of one call, as uploads, and the records refused before any call.
#[derive(Debug)]
struct Plan {
    uploads: Vec<Upload>,
    refused: Vec<RecordOutcome>,
}

/// A record's cells: (column, value as sent), borrowed from the record where they can be.
type Cells<'r> = Vec<(Cow<'r, str>, Cow<'r, str>)>;

/// A record's cells, or why this record cannot be sent.
type Row<'r> = std::result::Result<Cells<'r>, RecordError>;

/// A refusal by the connector itself, before any call.
fn refusal(code: &str, message: String, fields: Vec<String>) -> RecordError {
    RecordError {
        code: code.into(),
        message: format!("{message} (refused by mqlsync before sending)"),
        fields,
        retryable: false,
    }
}

/// The CSV cell for a JSON value, or `None` when CSV cannot carry it.
fn cell(value: &Value) -> Option<Cow<'_, str>> {
    Some(match value {
        Value::Null => "#N/A".into(),
        Value::String(s) if s.is_empty() => "#N/A".into(),
        Value::String(s) => s.as_str().into(),
        Value::Bool(b) => b.to_string().into(),
        Value::Number(n) => n.to_string().into(),
        Value::Array(items) => {
            let parts: Option<Vec<String>> = items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    _ => None,
                })
                .collect();
            let joined = parts?.join(";");
            if joined.is_empty() {
                "#N/A".into()
            } else {
                joined.into()
            }
        }
        Value::Object(_) => return None,
    })
}

/// A record's columns, a nested object flattened to `Parent__r.Field`. The outer `Err`: a
/// column name that is no API name, the caller's mistake, which fails the whole call.
/// `checked` remembers the names already found good, so each is checked once per call.
fn columns<'r>(record: &'r Record, checked: &mut HashSet<String>) -> Result<Row<'r>> {
    let mut check = |name: &str| -> Result<()> {
        if !checked.contains(name) {
            soql::identifier(name)?;
            checked.insert(name.to_string());
        }
        Ok(())
    };
    let mut out = Vec::with_capacity(record.len());
    for (name, value) in record {
        if name == "attributes" {
            continue;
        }
        check(name)?;
        if let Value::Object(parent) = value {
            for (field, v) in parent {
                if field == "attributes" {
                    continue;
                }
                check(field)?;
                let column = format!("{name}.{field}");
                match cell(v) {
                    Some(c) => out.push((column.into(), c)),
                    None => return Ok(Err(unsendable(&column))),
                }
            }
            continue;
        }
        match cell(value) {
            Some(c) => out.push((name.as_str().into(), c)),
            None => return Ok(Err(unsendable(name))),
        }
    }
    Ok(Ok(out))
}

fn unsendable(column: &str) -> RecordError {
    refusal(
        "INVALID_TYPE_ON_FIELD_IN_RECORD",
        format!("{column}: an object or a list of objects cannot be sent as a CSV cell"),
        vec![column.to_string()],
    )
}

/// Appends `value` as a CSV cell: quoted when it holds a comma, a quote or a line break.
fn push_cell(out: &mut String, value: &str) {
    if value.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

/// Turns the records into uploads of at most `max_bytes` each.
fn plan(records: &[Record], operation: IngestOperation, max_bytes: usize) -> Result<Plan> {
    let external_id_field = operation.key_field();
    let mut refused = Vec::new();
    // (input index, external id cell, cells) of the records that can be sent.
    let mut sendable: Vec<(usize, String, Cells)> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut names = HashSet::new();
    for (index, record) in records.iter().enumerate() {
        let checked = columns(record, &mut names)?.and_then(|cells| {
            let key = cells
                .iter()
                .find(|(c, _)| c.eq_ignore_ascii_case(external_id_field))
                .map(|(_, v)| v.to_string())
                .filter(|v| v != "#N/A")
                .ok_or_else(|| {
                    refusal(
                        "REQUIRED_FIELD_MISSING",
                        format!(
                            "no {external_id_field}: an {} by it needs one, and results are matched to records by it",
                            operation.name()
                        ),
                        vec![external_id_field.to_string()],
                    )
                })?;
            if let Some(first) = seen.get(&key) {
                return Err(refusal(
                    "DUPLICATE_EXTERNAL_ID",
                    format!(
                        "{external_id_field} {key:?} is also the one of record {first} of this call; send one record per {external_id_field}"
                    ),
                    vec![external_id_field.to_string()],
                ));
            }
            seen.insert(key.clone(), index);
            Ok((key, cells))
        });
        match checked {
            Ok((key, cells)) => sendable.push((index, key, cells)),
            Err(e) => refused.push(RecordOutcome {
                index,
                id: None,
                result: Err(e),
            }),
        }
    }

    // The header: every column any record sets, in first-seen order, the external id field
    // spelled as the caller spelled it.
    let mut header: Vec<String> = Vec::new();
    let mut position: HashMap<String, usize> = HashMap::new();
    for (_, _, cells) in &sendable {
        for (column, _) in cells {
            let column = if column.eq_ignore_ascii_case(external_id_field) {
                external_id_field
            } else {
                column
            };
            if !position.contains_key(column) {
                position.insert(column.to_string(), header.len());
                header.push(column.to_string());
            }
        }
    }
    let mut header_line = String::new();
    for (i, column) in header.iter().enumerate() {
        if i > 0 {
            header_line.push(',');
        }
        push_cell(&mut header_line, column);
    }
    header_line.push('\n');

    let mut uploads = Vec::new();
    let mut csv = String::new();
    let mut keys = HashMap::new();
    let mut row = String::new();
    for (index, key, cells) in sendable {
        let mut row_cells: Vec<&str> = vec![""; header.len()];
        for (column, value) in &cells {
            let column = if column.eq_ignore_ascii_case(external_id_field) {
                external_id_field
            } else {
                column
            };
            row_cells[position[column]] = value;
        }
        row.clear();
        for (i, value) in row_cells.iter().enumerate() {
            if i > 0 {
                row.push(',');
            }
            push_cell(&mut row, value);
        }
        row.push('\n');
        if header_line.len() + row.len() > max_bytes {
            refused.push(RecordOutcome {
                index,
                id: None,
                result: Err(refusal(
                    "RECORD_TOO_LARGE",
                    format!(
                        "{} bytes of CSV with its header, over the {max_bytes} of one upload",
                        header_line.len() + row.len()
                    ),
                    vec![],
                )),
            });
            continue;
        }
        if !keys.is_empty() && csv.len() + row.len() > max_bytes {
            uploads.push(Upload {
                csv: bytes::Bytes::from(std::mem::take(&mut csv)),
                keys: std::mem::take(&mut keys),
            });
        }
        if keys.is_empty() {
            csv.push_str(&header_line);
        }
        csv.push_str(&row);
        keys.insert(key, index);
    }
    if !keys.is_empty() {
        uploads.push(Upload {
            csv: bytes::Bytes::from(csv),
            keys,
        });
    }
    Ok(Plan { uploads, refused })
}

/// A result CSV: its header and rows, cells as sent.
struct ResultSet {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl ResultSet {
    fn parse(job: &str, which: &str, bytes: &[u8]) -> Result<ResultSet> {
        let malformed = |e: csv::Error| ConnectorError::Malformed {
            system: SYS,
            detail: format!("{which} of ingest job {job}: {e}"),
        };
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(bytes);
        let header = reader
            .headers()
            .map_err(malformed)?
            .iter()
            .map(str::to_string)
            .collect();
        let rows = reader
            .records()
            .map(|r| r.map(|r| r.iter().map(str::to_string).collect()))
            .collect::<std::result::Result<_, _>>()
            .map_err(malformed)?;
        Ok(ResultSet { header, rows })
    }

    /// The position of a column: exactly as named, else ignoring case.
    fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name).or_else(|| {
            self.header
                .iter()
                .position(|h| h.eq_ignore_ascii_case(name))
        })
    }

    /// The position of a column every row of a non-empty set must have.
    fn required(&self, name: &str, job: &str, which: &str) -> Result<Option<usize>> {
        if self.rows.is_empty() {
            return Ok(None);
        }
        self.column(name)
            .map(Some)
            .ok_or_else(|| ConnectorError::Malformed {
                system: SYS,
                detail: format!(
                    "{which} of ingest job {job} has no {name} column, so its rows cannot be matched to records"
                ),
            })
    }
}

/// `CODE:message:fields --` (the vendor's `sf__Error`) as a record error; `retryable` is
/// set by [`failed_record`].
fn parse_sf_error(text: &str) -> RecordError {
    let text = text.trim();
    let (code, rest) = text.split_once(':').unwrap_or((text, ""));
    let (message, fields) = match rest.trim_end().strip_suffix("--") {
        Some(body) => {
            let body = body.trim_end();
            match body.rsplit_once(':') {
                Some((message, fields)) => (message, fields),
                None => (body, ""),
            }
        }
        None => (rest, ""),
    };
    RecordError {
        code: if code.trim().is_empty() {
            "UNKNOWN_ERROR".into()
        } else {
            code.trim().to_string()
        },
        message: message.trim().to_string(),
        fields: fields
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect(),
        retryable: false,
    }
}

/// Maps a finished job's results onto the records of its upload, by external id.
fn outcomes(
    job: &IngestJob,
    upload: &Upload,
    operation: IngestOperation,
    successful: Option<ResultSet>,
    failed: Option<ResultSet>,
    unprocessed: Option<ResultSet>,
) -> Result<Vec<RecordOutcome>> {
    let mut pending: HashMap<&str, usize> =
        upload.keys.iter().map(|(k, &i)| (k.as_str(), i)).collect();
    let mut out = Vec::with_capacity(upload.keys.len());
    let mut unknown = 0usize;
    let external_id_field = operation.key_field();
    if let Some(set) = &successful
        && let Some(key) = set.required(external_id_field, &job.id, "successfulResults")?
    {
        let id = set.required("sf__Id", &job.id, "successfulResults")?;
        let created = set.required("sf__Created", &job.id, "successfulResults")?;
        for row in &set.rows {
            let Some(index) = row.get(key).and_then(|k| pending.remove(k.as_str())) else {
                unknown += 1;
                continue;
            };
            let cell = |c: Option<usize>| c.and_then(|c| row.get(c)).map(String::as_str);
            let status = if cell(created).is_some_and(|c| c.eq_ignore_ascii_case("true")) {
                WriteStatus::Created
            } else {
                WriteStatus::Updated
            };
            out.push(RecordOutcome {
                index,
                id: cell(id).filter(|i| !i.is_empty()).map(str::to_string),
                result: Ok(status),
            });
        }
    }
    if let Some(set) = &failed
        && let Some(key) = set.required(external_id_field, &job.id, "failedResults")?
    {
        let id = set.column("sf__Id");
        let error = set.required("sf__Error", &job.id, "failedResults")?;
        for row in &set.rows {
            let Some(index) = row.get(key).and_then(|k| pending.remove(k.as_str())) else {
                unknown += 1;
                continue;
            };
            let cell = |c: Option<usize>| c.and_then(|c| row.get(c)).map(String::as_str);
            let id = cell(id).filter(|i| !i.is_empty()).map(str::to_string);
            let error = parse_sf_error(cell(error).unwrap_or_default());
            out.push(failed_record(index, id, error, true));
        }
    }
    let ended = match job.error_message.as_deref().filter(|m| !m.is_empty()) {
        Some(m) => format!("{} ({m})", job.state),
        None => job.state.clone(),
    };
    if let Some(set) = &unprocessed
        && let Some(key) = set.required(external_id_field, &job.id, "unprocessedrecords")?
    {
        for row in &set.rows {
            let Some(index) = row.get(key).and_then(|k| pending.remove(k.as_str())) else {
                unknown += 1;
                continue;
            };
            let message = format!(
                "Bulk API 2.0 job {} ended {ended} before this record was processed; sending it again is safe",
                job.id
            );
            out.push(RecordOutcome {
                index,
                id: None,
                result: Err(RecordError {
                    code: "NOT_PROCESSED".into(),
                    message,
                    fields: vec![],
                    retryable: true,
                }),
            });
        }
    }
    if unknown > 0 {
        tracing::warn!(
            job = %job.id,
            rows = unknown,
            "ingest results named keys that were not uploaded, or named one twice; ignored"
        );
    }
    for (_, index) in pending {
        out.push(RecordOutcome {
            index,
            id: None,
            result: Err(RecordError {
                code: "NO_RESULT".into(),
                message: format!(
                    "Bulk API 2.0 job {} ended {ended} and reported no result for this record (the vendor keeps none for batches over the daily batch allocation); sending it again is safe",
                    job.id
                ),
                fields: vec![],
                retryable: true,
            }),
        });
    }
    Ok(out)
}

/// Why one job of an upload did not get as far as processing.
enum JobSetback {
    /// The job is not usable (its upload's fate is unknown, or its close was refused): abort
    /// it and try the upload with a fresh job.
    FreshJob(ConnectorError),
    /// Stop the call.
    Stop(ConnectorError),
}

impl SalesforceClient {
    /// Upserts `records` into `object` by `external_id_field` through Bulk API 2.0 ingest jobs
    /// (see the module docs): one outcome per input record, in input order.
    pub async fn ingest_upsert(
        &self,
        object: &str,
        external_id_field: &str,
        records: Vec<Record>,
        priority: Priority,
    ) -> Result<Vec<RecordOutcome>> {
        let operation = IngestOperation::Upsert { external_id_field };
        self.ingest(object, operation, records, priority).await
    }

    /// Updates `records` of `object`, each carrying its `Id`, through Bulk API 2.0 ingest
    /// jobs (see the module docs): one outcome per input record, in input order.
    pub async fn ingest_update(
        &self,
        object: &str,
        records: Vec<Record>,
        priority: Priority,
    ) -> Result<Vec<RecordOutcome>> {
        self.ingest(object, IngestOperation::Update, records, priority)
            .await
    }

    async fn ingest(
        &self,
        object: &str,
        operation: IngestOperation<'_>,
        records: Vec<Record>,
        priority: Priority,
    ) -> Result<Vec<RecordOutcome>> {
        soql::identifier(object)?;
        soql::identifier(operation.key_field())?;
        let settings = &self.inner.settings.ingest;
        let plan = plan(&records, operation, settings.max_upload_bytes)?;
        let mut slots: Vec<Option<RecordOutcome>> = Vec::new();
        slots.resize_with(records.len(), || None);
        drop(records); // the uploads hold the data now
        let mut place = |o: RecordOutcome| {
            let i = o.index;
            slots[i] = Some(o);
        };
        plan.refused.into_iter().for_each(&mut place);
        for (n, upload) in plan.uploads.iter().enumerate() {
            let done = self
                .ingest_upload(object, operation, upload, priority)
                .await?;
            tracing::info!(
                object,
                upload = n + 1,
                uploads = plan.uploads.len(),
                records = upload.keys.len(),
                failed = done.iter().filter(|o| o.result.is_err()).count(),
                calls_so_far = self.sent().requests,
                "ingest upload done"
            );
            done.into_iter().for_each(&mut place);
        }
        Ok(slots
            .into_iter()
            .map(|o| o.expect("every record has an outcome"))
            .collect())
    }

    /// One upload, through as many fresh jobs as a lost upload or a refused close takes.
    async fn ingest_upload(
        &self,
        object: &str,
        operation: IngestOperation<'_>,
        upload: &Upload,
        priority: Priority,
    ) -> Result<Vec<RecordOutcome>> {
        let mut attempt = 0;
        let job = loop {
            attempt += 1;
            let job = self.open_ingest_job(object, operation, priority).await?;
            let setback = match self.send_ingest_data(&job.id, upload, priority).await {
                Ok(()) => break job,
                Err(s) => s,
            };
            self.abort_ingest_job(&job.id, priority).await;
            match setback {
                JobSetback::FreshJob(e) if attempt < MAX_JOB_ATTEMPTS => {
                    tracing::warn!(job = %job.id, error = %e, "ingest job abandoned; trying the upload with a fresh job");
                }
                JobSetback::FreshJob(e) | JobSetback::Stop(e) => return Err(e),
            }
        };
        let job = self.wait_for_ingest_job(&job.id, priority).await?;
        let processed = job.number_records_processed;
        let failed_n = job.number_records_failed;
        let succeeded = match (processed, failed_n) {
            (Some(p), Some(f)) => p > f,
            _ => true,
        };
        // Only the sets the job's counts say are not empty: each read is a call.
        let read = async |which: &str, wanted: bool| -> Result<Option<ResultSet>> {
            if !wanted {
                return Ok(None);
            }
            self.ingest_results(&job.id, which, priority)
                .await
                .map(Some)
        };
        let successful = read("successfulResults", succeeded).await?;
        let failed = read("failedResults", failed_n != Some(0)).await?;
        let unprocessed = read("unprocessedrecords", job.state != "JobComplete").await?;
        outcomes(&job, upload, operation, successful, failed, unprocessed)
    }

    /// `POST /jobs/ingest`, sent again only when no job of ours is found open after a lost
    /// answer (see the module docs).
    async fn open_ingest_job(
        &self,
        object: &str,
        operation: IngestOperation<'_>,
        priority: Priority,
    ) -> Result<IngestJob> {
        let url = self.data_url("/jobs/ingest");
        let mut body = json!({
            "object": object,
            "contentType": "CSV",
            "operation": operation.name(),
            "lineEnding": "LF",
            "columnDelimiter": "COMMA",
        });
        let adopt = match operation {
            IngestOperation::Upsert { external_id_field } => {
                body["externalIdFieldName"] = json!(external_id_field);
                Some(external_id_field)
            }
            IngestOperation::Update => None,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let lost = match self
                .call_as(Method::POST, &url, Some(&body), priority, Repeat::Unknown)
                .await
            {
                Ok(v) => return ingest_job(v),
                Err(e) if e.class() == ErrorClass::Retry => e,
                Err(e) => return Err(e),
            };
            let open = match adopt {
                Some(external_id_field) => {
                    self.open_ingest_jobs(object, external_id_field, priority)
                        .await?
                }
                None => Vec::new(),
            };
            let newest = open.into_iter().max_by(|a, b| {
                (a.created_date.as_deref(), a.id.as_str())
                    .cmp(&(b.created_date.as_deref(), b.id.as_str()))
            });
            if let Some(job) = newest {
                tracing::warn!(job = %job.id, error = %lost, "the answer to an ingest job create was lost; taking the open job found");
                return Ok(job);
            }
            if attempt >= MAX_CREATE_ATTEMPTS {
                return Err(lost);
            }
            tracing::warn!(error = %lost, "the answer to an ingest job create was lost and no open job of ours was taken; creating it again");
        }
    }

    /// The `Open` upsert jobs of `object` by `external_id_field`, from every page of
    /// `GET /jobs/ingest`.
    pub async fn open_ingest_jobs(
        &self,
        object: &str,
        external_id_field: &str,
        priority: Priority,
    ) -> Result<Vec<IngestJob>> {
        let base = self
            .inner
            .settings
            .base_url
            .trim_end_matches('/')
            .to_string();
        let mut url = self.data_url("/jobs/ingest?isPkChunkingEnabled=false&jobType=V2Ingest");
        let mut found = Vec::new();
        loop {
            let v = self.call(Method::GET, &url, None, priority).await?;
            let page: JobList =
                serde_json::from_value(v).map_err(|e| ConnectorError::Malformed {
                    system: SYS,
                    detail: format!("ingest job list: {e}"),
                })?;
            found.extend(page.records.into_iter().filter(|j| {
                let same = |a: &Option<String>, b: &str| {
                    a.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(b))
                };
                j.state == "Open"
                    && same(&j.object, object)
                    && same(&j.operation, "upsert")
                    && same(&j.external_id_field_name, external_id_field)
                    && j.content_type.as_deref().is_none_or(|c| c == "CSV")
            }));
            match page.next_records_url {
                Some(next) if !page.done => {
                    if !next.starts_with("/services/data/") {
                        return Err(ConnectorError::Malformed {
                            system: SYS,
                            detail: format!("unexpected nextRecordsUrl {next:?}"),
                        });
                    }
                    url = format!("{base}{next}");
                }
                _ => return Ok(found),
            }
        }
    }

    /// `PUT .../batches` once, then `PATCH` `UploadComplete`.
    async fn send_ingest_data(
        &self,
        job_id: &str,
        upload: &Upload,
        priority: Priority,
    ) -> std::result::Result<(), JobSetback> {
        let id = job_id_checked(job_id).map_err(JobSetback::Stop)?;
        let url = self.data_url(&format!("/jobs/ingest/{id}/batches"));
        let sent = run_as(&self.inner.settings.retry, Repeat::Unknown, || {
            self.call_once(
                Method::PUT,
                &url,
                Payload::Csv(&upload.csv),
                priority,
                "application/json",
            )
        })
        .await;
        match sent {
            Ok(_) => {}
            Err(e) if e.class() == ErrorClass::Retry => return Err(JobSetback::FreshJob(e)),
            Err(e) => return Err(JobSetback::Stop(e)),
        }
        match self.close_ingest_job(id, priority).await {
            Ok(()) => Ok(()),
            // Seen at the next poll: a job still open is closed again.
            Err(e) if e.class() == ErrorClass::Retry => Ok(()),
            Err(ConnectorError::Request {
                status: 400,
                code,
                message,
                ..
            }) if code == "INVALIDJOB" => Err(JobSetback::FreshJob(ConnectorError::Request {
                system: SYS,
                status: 400,
                code,
                message: format!("closing ingest job {id}: {message}"),
            })),
            Err(e) => Err(JobSetback::Stop(e)),
        }
    }

    /// `PATCH /jobs/ingest/{id}` `{"state": "UploadComplete"}`, sent once.
    async fn close_ingest_job(&self, id: &str, priority: Priority) -> Result<()> {
        let url = self.data_url(&format!("/jobs/ingest/{id}"));
        let body = json!({"state": "UploadComplete"});
        self.call_as(Method::PATCH, &url, Some(&body), priority, Repeat::Unknown)
            .await
            .map(drop)
    }

    /// `PATCH` `{"state": "Aborted"}`: a job abandoned is never processed. A failure is only
    /// logged: a job left open is never processed either.
    async fn abort_ingest_job(&self, id: &str, priority: Priority) {
        let Ok(id) = job_id_checked(id) else {
            return;
        };
        let url = self.data_url(&format!("/jobs/ingest/{id}"));
        let body = json!({"state": "Aborted"});
        if let Err(e) = self.call(Method::PATCH, &url, Some(&body), priority).await {
            tracing::warn!(job = %id, error = %e, "could not abort an abandoned ingest job; left open, it is never processed");
        }
    }

    /// `GET /jobs/ingest/{id}`.
    pub async fn ingest_job(&self, job_id: &str, priority: Priority) -> Result<IngestJob> {
        let id = job_id_checked(job_id)?;
        let v = self
            .call(
                Method::GET,
                &self.data_url(&format!("/jobs/ingest/{id}")),
                None,
                priority,
            )
            .await?;
        ingest_job(v)
    }

    /// Looks at the job after [`IngestSettings::poll_initial_ms`], then at doubling waits,
    /// until it is `JobComplete`, `Failed` or `Aborted`; a job still `Open` (its close was
    /// lost) is closed again.
    async fn wait_for_ingest_job(&self, id: &str, priority: Priority) -> Result<IngestJob> {
        let settings = &self.inner.settings.ingest;
        let started = tokio::time::Instant::now();
        let max_wait = Duration::from_secs(settings.max_wait_secs);
        let mut delay = Duration::from_millis(settings.poll_initial_ms);
        let mut closes = 1;
        loop {
            tokio::time::sleep(delay).await;
            let job = self.ingest_job(id, priority).await?;
            tracing::debug!(job = %id, state = %job.state, "ingest job polled");
            if job.finished() {
                return Ok(job);
            }
            if job.state == "Open" {
                if closes >= MAX_CLOSES {
                    return Err(ConnectorError::Server {
                        system: SYS,
                        status: 200,
                        code: "BULK_JOB_NOT_CLOSED".into(),
                        message: format!(
                            "ingest job {id} is still Open after {closes} closes; its records were not written: send them again"
                        ),
                    });
                }
                closes += 1;
                match self.close_ingest_job(id, priority).await {
                    Ok(()) => {}
                    Err(e) if e.class() == ErrorClass::Retry => {}
                    Err(e) => return Err(e),
                }
            }
            if started.elapsed() >= max_wait {
                return Err(ConnectorError::Server {
                    system: SYS,
                    status: 200,
                    code: "BULK_JOB_NOT_DONE".into(),
                    message: format!(
                        "ingest job {id} still {} after {} s; its records may yet be written, and sending them again is safe (or raise ingest.max_wait_secs)",
                        job.state, settings.max_wait_secs
                    ),
                });
            }
            delay = (delay * 2).min(Duration::from_millis(settings.poll_max_ms));
        }
    }

    /// `GET /jobs/ingest/{id}/{which}` as CSV.
    async fn ingest_results(&self, id: &str, which: &str, priority: Priority) -> Result<ResultSet> {
        let url = self.data_url(&format!("/jobs/ingest/{id}/{which}"));
        let (_, bytes) = run_as(&self.inner.settings.retry, Repeat::Harmless, || {
            self.call_once(Method::GET, &url, Payload::Empty, priority, "text/csv")
        })
        .await?;
        ResultSet::parse(id, which, &bytes)
    }
}

fn ingest_job(v: Value) -> Result<IngestJob> {
    serde_json::from_value(v).map_err(|e| ConnectorError::Malformed {
        system: SYS,
        detail: format!("ingest job: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn rec(v: Value) -> Record {
        v.as_object().unwrap().clone()
    }

    fn text(u: &Upload) -> &str {
        std::str::from_utf8(&u.csv).unwrap()
    }

    const EXT: IngestOperation = IngestOperation::Upsert {
        external_id_field: "External_Id__c",
    };

    #[test]
    fn records_become_csv_the_vendor_reads_as_meant() {
        let records = vec![
            rec(
                json!({"External_Id__c": "a-1", "Status__c": "Open", "Score_At_MQL__c": 91.5,
                       "Note__c": "says \"hi\", twice\nthen stops", "Overdue__c": false,
                       "attributes": {"type": "MQL__c"}}),
            ),
            rec(
                json!({"External_Id__c": "a-2", "Status__c": null, "Segment__c": "",
                       "Tags__c": ["EMEA", "SMB"], "Lead__r": {"Email": "x@y.z"}}),
            ),
        ];
        let plan = plan(&records, EXT, 1_000_000).unwrap();
        assert!(plan.refused.is_empty());
        assert_eq!(plan.uploads.len(), 1);
        assert_eq!(
            text(&plan.uploads[0]),
            "External_Id__c,Note__c,Overdue__c,Score_At_MQL__c,Status__c,Lead__r.Email,Segment__c,Tags__c\n\
             a-1,\"says \"\"hi\"\", twice\nthen stops\",false,91.5,Open,,,\n\
             a-2,,,,#N/A,x@y.z,#N/A,EMEA;SMB\n",
            "null and \"\" blank a field (#N/A); a field a record does not set stays empty (left alone)"
        );
        let read: Vec<csv::StringRecord> = csv::Reader::from_reader(plan.uploads[0].csv.as_ref())
            .records()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            &read[0][1], "says \"hi\", twice\nthen stops",
            "a CSV reader gets the value back"
        );
        assert_eq!(
            plan.uploads[0].keys,
            HashMap::from([("a-1".into(), 0), ("a-2".into(), 1)])
        );
    }

    #[test]
    fn records_whose_results_could_not_be_told_apart_fail_alone_before_any_call() {
        let records = vec![
            rec(json!({"External_Id__c": "k", "Status__c": "Open"})),
            rec(json!({"Status__c": "Open"})),
            rec(json!({"External_Id__c": "k", "Status__c": "Working"})),
            rec(json!({"External_Id__c": null})),
            rec(json!({"External_Id__c": "m", "Lead__r": {"Owner": {"Email": "x"}}})),
            rec(json!({"External_Id__c": "n"})),
        ];
        let plan = plan(&records, EXT, 1_000_000).unwrap();
        let codes: Vec<(usize, &str, bool)> = plan
            .refused
            .iter()
            .map(|o| {
                let e = o.result.as_ref().unwrap_err();
                (o.index, e.code.as_str(), e.retryable)
            })
            .collect();
        assert_eq!(
            codes,
            [
                (1, "REQUIRED_FIELD_MISSING", false),
                (2, "DUPLICATE_EXTERNAL_ID", false),
                (3, "REQUIRED_FIELD_MISSING", false),
                (4, "INVALID_TYPE_ON_FIELD_IN_RECORD", false),
            ]
        );
        assert!(
            plan.refused[1]
                .result
                .as_ref()
                .unwrap_err()
                .message
                .contains("record 0"),
            "{:?}",
            plan.refused[1]
        );
        assert_eq!(
            text(&plan.uploads[0]),
            "External_Id__c,Status__c\nk,Open\nn,\n"
        );
        assert!(
            super::plan(
                &[rec(json!({"External_Id__c": "x", "Bad Name": 1}))],
                EXT,
                100
            )
            .is_err(),
            "a column that is no API name is the caller's mistake"
        );
    }

    #[test]
    fn input_is_split_into_uploads_each_under_the_limit_with_its_header() {
        let records: Vec<Record> = (0..100)
            .map(|i| rec(json!({"External_Id__c": format!("r-{i:03}"), "Status__c": "Open"})))
            .collect();
        // A header of 25 bytes and rows of 11: 250 bytes hold the header and 20 rows.
        let plan = plan(&records, EXT, 250).unwrap();
        assert_eq!(plan.uploads.len(), 5);
        let mut seen = 0;
        for u in &plan.uploads {
            assert!(u.csv.len() <= 250, "{}", u.csv.len());
            assert!(text(u).starts_with("External_Id__c,Status__c\nr-"));
            assert!(
                u.keys
                    .values()
                    .all(|&i| (seen..seen + u.keys.len()).contains(&i))
            );
            seen += u.keys.len();
        }
        assert_eq!(seen, 100);
        let big = rec(json!({"External_Id__c": "big", "Note__c": "x".repeat(300)}));
        let plan = super::plan(&[records[0].clone(), big], EXT, 250).unwrap();
        assert_eq!(plan.refused[0].index, 1);
        assert_eq!(
            plan.refused[0].result.as_ref().unwrap_err().code,
            "RECORD_TOO_LARGE"
        );
        assert_eq!(plan.uploads.len(), 1);
    }

    #[test]
    fn sf_error_splits_into_code_message_and_fields() {
        let e =
            parse_sf_error("REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --");
        assert_eq!(
            (e.code.as_str(), e.message.as_str(), e.fields),
            (
                "REQUIRED_FIELD_MISSING",
                "Required fields are missing: [Name]",
                vec!["Name".to_string()]
            )
        );
        let e = parse_sf_error("INVALID_CROSS_REFERENCE_KEY:invalid cross reference id:--");
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
        );
        assert!(e.fields.is_empty());
        let e = parse_sf_error(
            "UNABLE_TO_LOCK_ROW:unable to obtain exclusive access to this record or 1 records: a0M000000000001:--",
        );
        assert_eq!(
            e.message,
            "unable to obtain exclusive access to this record or 1 records: a0M000000000001"
        );
        let e = parse_sf_error(
            "FIELD_CUSTOM_VALIDATION_EXCEPTION:Score too low:Score__c,Segment__c --",
        );
        assert_eq!(e.fields, ["Score__c", "Segment__c"]);
        let e = parse_sf_error("UNABLE_TO_LOCK_ROW");
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("UNABLE_TO_LOCK_ROW", "")
        );
        assert_eq!(parse_sf_error("").code, "UNKNOWN_ERROR");
    }

    fn set(text: &str) -> Option<ResultSet> {
        Some(ResultSet::parse("750x", "test", text.as_bytes()).unwrap())
    }

    fn job(state: &str) -> IngestJob {
        ingest_job(json!({"id": "750x", "state": state, "errorMessage": "batch allocation"}))
            .unwrap()
    }

    #[test]
    fn results_in_any_order_map_back_to_their_records_by_external_id() {
        let records: Vec<Record> = ["a", "b", "c", "d", "e", "f", "g"]
            .iter()
            .map(|k| rec(json!({"External_Id__c": k, "Status__c": "Open"})))
            .collect();
        let plan = plan(&records, EXT, 1_000_000).unwrap();
        let mut out = outcomes(
            &job("Failed"),
            &plan.uploads[0],
            EXT,
            set("\"sf__Id\",\"sf__Created\",External_Id__c,Status__c\n\"a0M2\",\"false\",b,Open\n\"a0M1\",\"true\",a,Open\n"),
            set("\"sf__Id\",\"sf__Error\",External_Id__c,Status__c\n\
                 \"\",\"FIELD_CUSTOM_VALIDATION_EXCEPTION:Score too low:--\",d,Open\n\
                 \"a0M3\",\"UNABLE_TO_LOCK_ROW:unable to obtain exclusive access:--\",c,Open\n\
                 \"\",\"DUPLICATE_VALUE:duplicate value found: External_Id__c duplicates value on record with id: a0M5:--\",e,Open\n"),
            set("External_Id__c,Status__c\nf,Open\n"),
        )
        .unwrap();
        out.sort_by_key(|o| o.index);
        assert_eq!(
            out.iter().map(|o| o.index).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5, 6]
        );
        assert_eq!(
            (out[0].id.as_deref(), &out[0].result),
            (Some("a0M1"), &Ok(WriteStatus::Created))
        );
        assert_eq!(
            (out[1].id.as_deref(), &out[1].result),
            (Some("a0M2"), &Ok(WriteStatus::Updated))
        );
        let err = |i: usize| out[i].result.as_ref().unwrap_err();
        assert_eq!(
            (err(2).code.as_str(), err(2).class()),
            ("UNABLE_TO_LOCK_ROW", ErrorClass::Retry)
        );
        assert_eq!(out[2].id.as_deref(), Some("a0M3"));
        assert_eq!(
            (err(3).code.as_str(), err(3).class()),
            ("FIELD_CUSTOM_VALIDATION_EXCEPTION", ErrorClass::FailRecord)
        );
        assert_eq!(
            (out[4].id.as_deref(), &out[4].result),
            (
                Some("a0M5"),
                &Ok(WriteStatus::AlreadyDone {
                    code: "DUPLICATE_VALUE".into()
                })
            ),
            "a concurrent upsert of the same key made the record: done, as through Collections"
        );
        assert_eq!(
            (err(5).code.as_str(), err(5).retryable),
            ("NOT_PROCESSED", true)
        );
        assert!(
            err(5).message.contains("Failed (batch allocation)"),
            "{}",
            err(5).message
        );
        assert_eq!(
            (err(6).code.as_str(), err(6).retryable),
            ("NO_RESULT", true)
        );
    }

    #[test]
    fn an_update_is_keyed_by_record_id_and_refuses_a_record_without_one() {
        let records: Vec<Record> = vec![
            rec(json!({"Id": "00Q1", "MQL_Count__c": 2})),
            rec(json!({"MQL_Count__c": 1})),
            rec(json!({"Id": "00Q2", "MQL_Count__c": 1})),
            rec(json!({"Id": "00Q1", "MQL_Count__c": 3})),
        ];
        let plan = plan(&records, IngestOperation::Update, 1_000_000).unwrap();
        assert_eq!(text(&plan.uploads[0]), "Id,MQL_Count__c\n00Q1,2\n00Q2,1\n");
        let refused: BTreeMap<usize, &str> = plan
            .refused
            .iter()
            .map(|o| (o.index, o.result.as_ref().unwrap_err().code.as_str()))
            .collect();
        assert_eq!(
            refused,
            BTreeMap::from([(1, "REQUIRED_FIELD_MISSING"), (3, "DUPLICATE_EXTERNAL_ID")])
        );
        let mut out = outcomes(
            &job("JobComplete"),
            &plan.uploads[0],
            IngestOperation::Update,
            set("\"sf__Id\",\"sf__Created\",Id,MQL_Count__c\n\"00Q2\",\"false\",00Q2,1\n"),
            set("\"sf__Id\",\"sf__Error\",Id,MQL_Count__c\n\"00Q1\",\"ENTITY_IS_DELETED:entity is deleted:--\",00Q1,2\n"),
            None,
        )
        .unwrap();
        out.sort_by_key(|o| o.index);
        assert_eq!(
            (out[1].index, out[1].id.as_deref(), &out[1].result),
            (2, Some("00Q2"), &Ok(WriteStatus::Updated))
        );
        assert_eq!(
            (
                out[0].index,
                out[0].result.as_ref().unwrap_err().code.as_str()
            ),
            (0, "ENTITY_IS_DELETED")
        );
    }

    #[test]
    fn a_result_set_without_the_external_id_column_cannot_be_matched() {
        let records = vec![rec(json!({"External_Id__c": "a"}))];
        let plan = plan(&records, EXT, 1_000).unwrap();
        let err = outcomes(
            &job("JobComplete"),
            &plan.uploads[0],
            EXT,
            set("sf__Id,sf__Created\na0M1,true\n"),
            None,
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("no External_Id__c column"),
            "{err}"
        );
    }
}
