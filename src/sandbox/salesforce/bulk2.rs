//! Bulk API 2.0: query jobs (`UploadComplete` -> `JobComplete` on the first status poll,
//! CSV results paged with `locator`/`maxRecords`, `Sforce-Locator` = `"null"` on the last
//! set, `Sforce-NumberOfRecords`) and ingest jobs.
//!
//! # Ingest jobs
//! `POST /jobs/ingest` opens a job (`Open`); `PUT .../batches` takes its CSV. The vendor
//! accepts a second `PUT` on the same job and then refuses to close it (400 `INVALIDJOB`,
//! "Found multipe contents for job", its spelling), so the sandbox does the same: a client
//! that sends its data twice learns it at the close, as it would on an org. `PATCH`
//! `{"state": "UploadComplete"}` queues the job; it then moves one state per status call:
//! `InProgress` on the first `GET .../jobs/ingest/{id}`, `JobComplete` (or `Failed`) on the
//! next, when its rows are applied record by record. `{"state": "Aborted"}` stops a job that
//! has not finished; its rows become `unprocessedrecords`.
//!
//! Results, as the vendor's CSV: `successfulResults` = `sf__Id`, `sf__Created`, then the
//! columns as uploaded; `failedResults` = `sf__Id`, `sf__Error` (`CODE:message:fields --`,
//! `CODE:message:--` without fields), then the columns; `unprocessedrecords` = the columns
//! only. Each row echoes the uploaded cells; rows come last first (the vendor does not keep
//! upload order in results). An empty cell leaves a field alone, `#N/A` sets it to null.
//!
//! Batches: the vendor splits a job into one batch per 10,000 records, and every batch counts
//! against the daily allocation shared with Bulk API 1.0 (`DailyBulkApiBatches`). With limits
//! on, a job that needs more batches than are left has its first batches processed and the
//! rest left unprocessed, and ends `Failed` (the vendor's wording for this is undocumented; the
//! `errorMessage` here is ours). A `fail_record` fault rule that fires on a job's upload or
//! close fails the row at its `index` (0-based, after the header) when the job is processed.
//! `GET /jobs/ingest` lists ingest jobs, 1,000 a page, with `nextRecordsUrl`.
//!
//! Query results list matching ids at completion (the vendor materialises result files too).
//! It must not speak SOQL beyond calling `soql::parse`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Map, Value, json};

use super::schema::ObjectSchema;
use super::soql;
use super::store::{RecordError, api_user_id, format_datetime, normalize_write};
use super::{FailRecord, Reply, Salesforce, api_version, error, json_body, not_found};
use crate::sandbox::world::salesforce_id;

struct QueryJob {
    info: Map<String, Value>,
    query: Arc<soql::Query>,
    all_rows: bool,
    ids: Option<Arc<Vec<String>>>,
    delimiter: u8,
}

struct IngestJob {
    info: Map<String, Value>,
    /// Creation order, for listing.
    seq: u64,
    object: &'static ObjectSchema,
    operation: String,
    external_id: Option<&'static str>,
    delimiter: u8,
    /// Each `PUT .../batches` body, in order (the vendor refuses to close a job with more
    /// than one).
    uploads: Vec<Vec<u8>>,
    /// A `fail_record` fault rule that fired on the job's upload or close, applied when the
    /// job is processed.
    fail: Option<FailRecord>,
    successful: Vec<Vec<String>>,
    failed: Vec<Vec<String>>,
    unprocessed: Vec<Vec<String>>,
    header: Vec<String>,
}

#[derive(Default)]
pub(crate) struct Jobs {
    next: u64,
    query: HashMap<String, QueryJob>,
    ingest: HashMap<String, IngestJob>,
    query_created: Vec<Timestamp>,
    batches: Vec<Timestamp>,
}

impl Jobs {
    pub fn query_jobs_today(&self, now: Timestamp) -> u64 {
        let since = now - SignedDuration::from_hours(24);
        self.query_created.iter().filter(|&&t| t > since).count() as u64
    }
    /// Ingest batches processed in the rolling 24 h (one per 10,000 records of a job).
    pub fn ingest_batches_today(&self, now: Timestamp) -> u64 {
        let since = now - SignedDuration::from_hours(24);
        self.batches.iter().filter(|&&t| t > since).count() as u64
    }
    pub fn summary(&self) -> Value {
        let q: Vec<Value> = self
            .query
            .values()
            .map(|j| Value::Object(j.info.clone()))
            .collect();
        let i: Vec<Value> = self
            .ingest
            .values()
            .map(|j| Value::Object(j.info.clone()))
            .collect();
        json!({"query": q, "ingest": i})
    }
    fn next_id(&mut self) -> String {
        self.next += 1;
        salesforce_id("750", self.next)
    }
}

fn delimiter(name: Option<&str>) -> Result<u8, Response> {
    Ok(match name.unwrap_or("COMMA") {
        "COMMA" => b',',
        "BACKQUOTE" => b'`',
        "CARET" => b'^',
        "PIPE" => b'|',
        "SEMICOLON" => b';',
        "TAB" => b'\t',
        other => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "INVALIDJOB",
                &format!("Invalid column delimiter: {other}"),
            ));
        }
    })
}

fn base_info(
    id: &str,
    api: f64,
    now: Timestamp,
    body: &Value,
    job_type: &str,
) -> Map<String, Value> {
    let stamp = format_datetime(now);
    let mut info = Map::new();
    info.insert("id".into(), json!(id));
    info.insert(
        "operation".into(),
        body.get("operation").cloned().unwrap_or(json!("query")),
    );
    info.insert("createdById".into(), json!(api_user_id()));
    info.insert("createdDate".into(), json!(stamp));
    info.insert("systemModstamp".into(), json!(stamp));
    info.insert("concurrencyMode".into(), json!("Parallel"));
    info.insert("contentType".into(), json!("CSV"));
    info.insert("apiVersion".into(), json!(api));
    info.insert("jobType".into(), json!(job_type));
    info.insert(
        "lineEnding".into(),
        body.get("lineEnding").cloned().unwrap_or(json!("LF")),
    );
    info.insert(
        "columnDelimiter".into(),
        body.get("columnDelimiter")
            .cloned()
            .unwrap_or(json!("COMMA")),
    );
    info.insert("numberRecordsProcessed".into(), json!(0));
    info.insert("retries".into(), json!(0));
    info.insert("totalProcessingTime".into(), json!(0));
    info
}

pub(crate) async fn query_create(
    State(sf): State<Salesforce>,
    Path(version): Path<String>,
    body: bytes::Bytes,
) -> Reply {
    let api = api_version(&version)?;
    let body = json_body(&body)?;
    let inner = sf.inner();
    let now = inner.clock.now();
    let operation = body
        .get("operation")
        .and_then(Value::as_str)
        .unwrap_or("query");
    if !matches!(operation, "query" | "queryAll") {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "INVALIDJOB",
            &format!("Invalid operation: {operation}"),
        ));
    }
    let delim = delimiter(body.get("columnDelimiter").and_then(Value::as_str))?;
    let text = body.get("query").and_then(Value::as_str).unwrap_or("");
    let query =
        soql::parse(text, now).map_err(|e| error(StatusCode::BAD_REQUEST, e.code, &e.message))?;
    let mut jobs = inner.bulk.lock().expect("bulk lock");
    let id = jobs.next_id();
    let mut info = base_info(&id, api, now, &body, "V2Query");
    info.insert("object".into(), json!(query.object.name));
    info.insert("state".into(), json!("UploadComplete"));
    jobs.query_created.push(now);
    jobs.query.insert(
        id,
        QueryJob {
            info: info.clone(),
            query: Arc::new(query),
            all_rows: operation == "queryAll",
            ids: None,
            delimiter: delim,
        },
    );
    Ok(axum::Json(Value::Object(info)).into_response())
}

pub(crate) async fn query_list(State(sf): State<Salesforce>) -> Response {
    let jobs = sf.inner().bulk.lock().expect("bulk lock");
    let records: Vec<Value> = jobs
        .query
        .values()
        .map(|j| Value::Object(j.info.clone()))
        .collect();
    axum::Json(json!({"done": true, "records": records, "nextRecordsUrl": null})).into_response()
}

/// Runs a query job that has not run yet.
fn complete(sf: &Salesforce, job: &mut QueryJob) {
    if job.ids.is_some() {
        return;
    }
    let db = sf.inner().db.lock().expect("db lock");
    let table = db.table(job.query.object.name).expect("table");
    let mut matching: Vec<&super::store::Record> = table
        .records
        .values()
        .filter(|r| {
            (job.all_rows || !r.deleted)
                && job
                    .query
                    .filter
                    .as_ref()
                    .is_none_or(|f| f.matches(r, Some(&db)))
        })
        .collect();
    matching.sort_by(|a, b| soql::order_records(&job.query.order, a, b));
    let ids: Vec<String> = matching
        .into_iter()
        .skip(job.query.offset)
        .take(job.query.limit.unwrap_or(usize::MAX))
        .map(|r| r.get("Id").as_str().unwrap_or("").to_string())
        .collect();
    job.info
        .insert("numberRecordsProcessed".into(), json!(ids.len()));
    job.info.insert("state".into(), json!("JobComplete"));
    job.ids = Some(Arc::new(ids));
}

pub(crate) async fn query_status(
    State(sf): State<Salesforce>,
    Path((version, id)): Path<(String, String)>,
) -> Reply {
    api_version(&version)?;
    let mut jobs = sf.inner().bulk.lock().expect("bulk lock");
    let job = jobs.query.get_mut(&id).ok_or_else(not_found)?;
    if job.info["state"] == "UploadComplete" {
        complete(&sf, job);
    }
    Ok(axum::Json(Value::Object(job.info.clone())).into_response())
}

pub(crate) async fn query_abort(
    State(sf): State<Salesforce>,
    Path((version, id)): Path<(String, String)>,
    body: bytes::Bytes,
) -> Reply {
    api_version(&version)?;
    let body = json_body(&body)?;
    let mut jobs = sf.inner().bulk.lock().expect("bulk lock");
    let job = jobs.query.get_mut(&id).ok_or_else(not_found)?;
    if body.get("state").and_then(Value::as_str) != Some("Aborted") {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "INVALIDJOBSTATE",
            "Invalid state transition",
        ));
    }
    job.info.insert("state".into(), json!("Aborted"));
    Ok(axum::Json(Value::Object(job.info.clone())).into_response())
}

pub(crate) async fn query_delete(
    State(sf): State<Salesforce>,
    Path((version, id)): Path<(String, String)>,
) -> Reply {
    api_version(&version)?;
    let mut jobs = sf.inner().bulk.lock().expect("bulk lock");
    jobs.query.remove(&id).ok_or_else(not_found)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(serde::Deserialize)]
pub(crate) struct ResultParams {
    locator: Option<String>,
    #[serde(rename = "maxRecords")]
    max_records: Option<usize>,
}

fn csv_text(delim: u8, header: &[String], rows: &[Vec<String>]) -> String {
    let mut w = csv::WriterBuilder::new()
        .delimiter(delim)
        .quote_style(csv::QuoteStyle::Always)
        .from_writer(Vec::new());
    let _ = w.write_record(header);
    for row in rows {
        let _ = w.write_record(row);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.1}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

pub(crate) async fn query_results(
    State(sf): State<Salesforce>,
    Path((version, id)): Path<(String, String)>,
    Query(params): Query<ResultParams>,
) -> Reply {
    api_version(&version)?;
    let mut jobs = sf.inner().bulk.lock().expect("bulk lock");
    let job = jobs.query.get_mut(&id).ok_or_else(not_found)?;
    if job.info["state"] == "UploadComplete" {
        complete(&sf, job);
    }
    if job.info["state"] != "JobComplete" {
        return Err(error(
            StatusCode::PRECONDITION_FAILED,
            "JOB_NOT_COMPLETE",
            "Job is not complete",
        ));
    }
    let ids = job.ids.clone().expect("complete jobs have ids");
    let start = match params.locator.as_deref() {
        None | Some("") => 0,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if n <= ids.len() => n,
            _ => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_LOCATOR",
                    "invalid locator",
                ));
            }
        },
    };
    let max = params.max_records.unwrap_or(50_000).max(1);
    let end = (start + max).min(ids.len());
    let select = job.query.select.clone();
    let object = job.query.object.name;
    let delim = job.delimiter;
    drop(jobs);
    let db = sf.inner().db.lock().expect("db lock");
    let rows: Vec<Vec<String>> = ids[start..end]
        .iter()
        .filter_map(|id| db.table(object)?.records.get(id))
        .map(|r| {
            select
                .iter()
                .map(|s| cell(super::query::selected_value(&db, r, s)))
                .collect()
        })
        .collect();
    drop(db);
    let header: Vec<String> = select.iter().map(soql::Selected::column).collect();
    let locator = if end < ids.len() {
        end.to_string()
    } else {
        "null".into()
    };
    Ok((
        StatusCode::OK,
        [
            ("content-type", "text/csv".to_string()),
            ("sforce-locator", locator),
            ("sforce-numberofrecords", rows.len().to_string()),
        ],
        csv_text(delim, &header, &rows),
    )
        .into_response())
}

pub(crate) async fn ingest_create(
    State(sf): State<Salesforce>,
    Path(version): Path<String>,
    body: bytes::Bytes,
) -> Reply {
    let api = api_version(&version)?;
    let body = json_body(&body)?;
    let Some(object) = body
        .get("object")
        .and_then(Value::as_str)
        .and_then(|o| super::schema::SCHEMA.object(o))
    else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "INVALIDJOB",
            "InvalidJob : Invalid object",
        ));
    };
    let operation = body.get("operation").and_then(Value::as_str).unwrap_or("");
    if !matches!(
        operation,
        "insert" | "update" | "upsert" | "delete" | "hardDelete"
    ) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "INVALIDJOB",
            &format!("InvalidJob : Invalid operation: {operation}"),
        ));
    }
    let external_id = match body.get("externalIdFieldName").and_then(Value::as_str) {
        Some(f) => match object.field(f).filter(|f| f.external_id || f.name == "Id") {
            Some(f) => Some(f.name),
            None => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "INVALIDJOB",
                    &format!(
                        "InvalidJob : Field name provided, {f} is not an External ID or indexed field for {}",
                        object.name
                    ),
                ));
            }
        },
        None if operation == "upsert" => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "INVALIDJOB",
                "InvalidJob : External ID was blank for upsert",
            ));
        }
        None => None,
    };
    let delim = delimiter(body.get("columnDelimiter").and_then(Value::as_str))?;
    let now = sf.inner().clock.now();
    let mut jobs = sf.inner().bulk.lock().expect("bulk lock");
    let id = jobs.next_id();
    let seq = jobs.next;
    let mut info = base_info(&id, api, now, &body, "V2Ingest");
    info.insert("object".into(), json!(object.name));
    info.insert("state".into(), json!("Open"));
    info.insert("externalIdFieldName".into(), json!(external_id));
    info.insert(
        "contentUrl".into(),
        json!(format!("services/data/{version}/jobs/ingest/{id}/batches")),
    );
    info.insert("numberRecordsFailed".into(), json!(0));
    info.insert("apiActiveProcessingTime".into(), json!(0));
    info.insert("apexProcessingTime".into(), json!(0));
    jobs.ingest.insert(
        id,
        IngestJob {
            info: info.clone(),
            seq,
            object,
            operation: operation.to_string(),
            external_id,
            delimiter: delim,
            uploads: Vec::new(),
            fail: None,
            successful: Vec::new(),
            failed: Vec::new(),
            unprocessed: Vec::new(),
            header: Vec::new(),
        },
    );
    Ok(axum::Json(Value::Object(info)).into_response())
}

/// The most jobs one page of `GET /jobs/ingest` lists.
const JOBS_PER_PAGE: usize = 1000;

#[derive(serde::Deserialize)]
pub(crate) struct ListParams {
    #[serde(rename = "jobType")]
    job_type: Option<String>,
    #[serde(rename = "isPkChunkingEnabled")]
    pk_chunking: Option<String>,
    #[serde(rename = "queryLocator")]
    locator: Option<String>,
}

/// `GET /jobs/ingest`: every ingest job, oldest first, 1,000 a page. Only Bulk API 2.0
/// jobs exist here, so `jobType=Classic` or `BigObjectIngest`, and `isPkChunkingEnabled=true`,
/// list none.
pub(crate) async fn ingest_list(
    State(sf): State<Salesforce>,
    Path(version): Path<String>,
    Query(params): Query<ListParams>,
) -> Reply {
    api_version(&version)?;
    let start = match params.locator.as_deref() {
        None | Some("") => 0,
        Some(l) => l.parse::<usize>().map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                "INVALID_LOCATOR",
                "invalid query locator",
            )
        })?,
    };
    let listed = params.job_type.as_deref().is_none_or(|t| t == "V2Ingest")
        && params.pk_chunking.as_deref() != Some("true");
    let jobs = sf.inner().bulk.lock().expect("bulk lock");
    let mut all: Vec<&IngestJob> = if listed {
        jobs.ingest.values().collect()
    } else {
        Vec::new()
    };
    all.sort_by_key(|j| j.seq);
    let end = (start + JOBS_PER_PAGE).min(all.len());
    let records: Vec<Value> = all
        .get(start..end)
        .unwrap_or_default()
        .iter()
        .map(|j| Value::Object(j.info.clone()))
        .collect();
    let done = end >= all.len();
    let next = (!done).then(|| format!("/services/data/{version}/jobs/ingest?queryLocator={end}"));
    Ok(
        axum::Json(json!({"done": done, "records": records, "nextRecordsUrl": next}))
            .into_response(),
    )
}

pub(crate) async fn ingest_upload(
    State(sf): State<Salesforce>,
    Path((version, id)): Path<(String, String)>,
    fail: Option<Extension<FailRecord>>,
    body: bytes::Bytes,
) -> Reply {
    api_version(&version)?;
    let mut jobs = sf.inner().bulk.lock().expect("bulk lock");
    let job = jobs.ingest.get_mut(&id).ok_or_else(not_found)?;
    if job.info["state"] != "Open" {
        return Err(error(
            StatusCode::CONFLICT,
            "INVALIDJOBSTATE",
            "Job is not open for data upload",
        ));
    }
    job.uploads.push(body.to_vec());
    if let Some(Extension(f)) = fail {
        job.fail = Some(f);
    }
    Ok(StatusCode::CREATED.into_response())
}

/// `GET /jobs/ingest/{id}`: a queued job moves on one state per call (see the module docs).
pub(crate) async fn ingest_status(
    State(sf): State<Salesforce>,
    Path((version, id)): Path<(String, String)>,
) -> Reply {
    api_version(&version)?;
    let mut jobs = sf.inner().bulk.lock().expect("bulk lock");
    let batches_today = jobs.ingest_batches_today(sf.inner().clock.now());
    let job = jobs.ingest.get_mut(&id).ok_or_else(not_found)?;
    let mut processed = None;
    match job.info["state"].as_str() {
        Some("UploadComplete") => {
            job.info.insert("state".into(), json!("InProgress"));
        }
        Some("InProgress") => processed = Some(process(&sf, job, batches_today)),
        _ => {}
    }
    let info = Value::Object(job.info.clone());
    if let Some(batches) = processed {
        let now = sf.inner().clock.now();
        jobs.batches.extend(std::iter::repeat_n(now, batches));
    }
    Ok(axum::Json(info).into_response())
}

pub(crate) async fn ingest_delete(
    State(sf): State<Salesforce>,
    Path((version, id)): Path<(String, String)>,
) -> Reply {
    api_version(&version)?;
    let mut jobs = sf.inner().bulk.lock().expect("bulk lock");
    jobs.ingest.remove(&id).ok_or_else(not_found)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PATCH /jobs/ingest/{id}`: close (`UploadComplete`) an open job, or abort one that has
/// not finished.
pub(crate) async fn ingest_state(
    State(sf): State<Salesforce>,
    Path((version, id)): Path<(String, String)>,
    fail: Option<Extension<FailRecord>>,
    body: bytes::Bytes,
) -> Reply {
    api_version(&version)?;
    let body = json_body(&body)?;
    let target = body.get("state").and_then(Value::as_str).unwrap_or("");
    let mut jobs = sf.inner().bulk.lock().expect("bulk lock");
    let job = jobs.ingest.get_mut(&id).ok_or_else(not_found)?;
    match (job.info["state"].as_str().unwrap_or(""), target) {
        ("Open", "UploadComplete") if job.uploads.len() > 1 => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "INVALIDJOB",
                &format!(
                    "Found multipe contents for job: <{id}>, please 'Close' / 'Abort' / 'Delete' the current Job then create a new Job and make sure you only do 'PUT' once on a given Job."
                ),
            ));
        }
        ("Open", "UploadComplete") => {
            if let Some(Extension(f)) = fail {
                job.fail = Some(f);
            }
            job.info.insert("state".into(), json!("UploadComplete"));
        }
        ("Open" | "UploadComplete" | "InProgress", "Aborted") => {
            if let Some((header, rows)) = rows_of(job) {
                job.header = header;
                job.unprocessed = rows;
            }
            job.info.insert("state".into(), json!("Aborted"));
        }
        _ => {
            return Err(error(
                StatusCode::CONFLICT,
                "INVALIDJOBSTATE",
                "Invalid state transition",
            ));
        }
    }
    Ok(axum::Json(Value::Object(job.info.clone())).into_response())
}

/// The header and rows of a job's (single) upload.
fn rows_of(job: &IngestJob) -> Option<(Vec<String>, Vec<Vec<String>>)> {
    let data = job.uploads.first()?;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(job.delimiter)
        .flexible(true)
        .from_reader(data.as_slice());
    let header: Vec<String> = reader
        .headers()
        .map(|h| h.iter().map(str::to_string).collect())
        .unwrap_or_default();
    let rows = reader
        .records()
        .filter_map(Result::ok)
        .map(|r| r.iter().map(str::to_string).collect())
        .collect();
    Some((header, rows))
}

/// Records a batch holds: the vendor splits a job's data into one batch per 10,000.
const RECORDS_PER_BATCH: usize = 10_000;

/// Applies an uploaded CSV record by record, as the vendor's batch processing would, within
/// what is left of the daily batch allocation (`batches_today` used). Returns the batches
/// the job used.
fn process(sf: &Salesforce, job: &mut IngestJob, batches_today: u64) -> usize {
    let inner = sf.inner();
    let now = inner.clock.now();
    let (header, rows) = rows_of(job).unwrap_or_default();
    job.header = header.clone();
    let needed = rows.len().div_ceil(RECORDS_PER_BATCH);
    let left = if inner.config.limits {
        inner
            .config
            .daily_bulk_batch_limit
            .saturating_sub(batches_today) as usize
    } else {
        usize::MAX
    };
    let batches = needed.min(left);
    let allowed = batches.saturating_mul(RECORDS_PER_BATCH);
    let object = job.object;
    let fail = job.fail.take();
    let mut changed = Vec::new();
    let mut db = inner.db.lock().expect("db lock");
    for (index, row) in rows.into_iter().enumerate() {
        if index >= allowed {
            job.unprocessed.push(row);
            continue;
        }
        let mut map = Map::new();
        for (name, value) in header.iter().zip(&row) {
            // Empty cells leave a field alone; `#N/A` sets it to null.
            if value.is_empty() {
                continue;
            }
            let v = if value == "#N/A" {
                Value::Null
            } else {
                json!(value)
            };
            map.insert(name.clone(), v);
        }
        let outcome: Result<(String, bool), (RecordError, Option<String>)> = match &fail {
            Some(f) if f.index == index => {
                let existing = existing_id(&db, job, object, &map);
                Err((f.error(existing.as_deref()), existing))
            }
            _ => apply_row(&mut db, job, object, map, now).map_err(|e| (e, None)),
        };
        match outcome {
            Ok((id, created)) => {
                changed.push(id.clone());
                let mut out = vec![id, created.to_string()];
                out.extend(row);
                job.successful.push(out);
            }
            Err((e, id)) => {
                let fields = if e.fields.is_empty() {
                    "--".to_string()
                } else {
                    format!("{} --", e.fields.join(","))
                };
                let mut out = vec![
                    id.unwrap_or_default(),
                    format!("{}:{}:{fields}", e.status_code, e.message),
                ];
                out.extend(row);
                job.failed.push(out);
            }
        }
    }
    drop(db);
    let state = if job.unprocessed.is_empty() {
        "JobComplete"
    } else {
        job.info.insert(
            "errorMessage".into(),
            json!(format!(
                "Daily batch allocation of {} batches exceeded: {} of the job's {needed} batches were processed",
                inner.config.daily_bulk_batch_limit, batches
            )),
        );
        "Failed"
    };
    job.info.insert("state".into(), json!(state));
    job.info.insert(
        "numberRecordsProcessed".into(),
        json!(job.successful.len() + job.failed.len()),
    );
    job.info
        .insert("numberRecordsFailed".into(), json!(job.failed.len()));
    sf.notify_outbound(object.name, &changed);
    batches
}

/// The id of the record an update or upsert row would change, if it exists.
fn existing_id(
    db: &super::store::Store,
    job: &IngestJob,
    object: &'static ObjectSchema,
    map: &Map<String, Value>,
) -> Option<String> {
    let field = match job.operation.as_str() {
        "upsert" => job.external_id?,
        "insert" => return None,
        _ => "Id",
    };
    let value = map
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(field))
        .and_then(|(_, v)| v.as_str())?;
    if field == "Id" {
        return db
            .live(object.name, value)
            .and_then(|r| r.get("Id").as_str().map(str::to_string));
    }
    db.by_external(object.name, field, value)
}

fn apply_row(
    db: &mut super::store::Store,
    job: &IngestJob,
    object: &'static ObjectSchema,
    mut map: Map<String, Value>,
    now: Timestamp,
) -> Result<(String, bool), RecordError> {
    let user = api_user_id();
    let id_of = |map: &Map<String, Value>| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Id"))
            .and_then(|(_, v)| v.as_str().map(str::to_string))
    };
    match job.operation.as_str() {
        "insert" => {
            let fields = normalize_write(object, &map, true)?;
            Ok((db.insert(object, fields, now, &user), true))
        }
        "update" => {
            let id = id_of(&map).ok_or_else(|| {
                RecordError::new(
                    "MISSING_ARGUMENT",
                    "Id not specified in an update call",
                    &[],
                )
            })?;
            let id = db
                .live(object.name, &id)
                .and_then(|r| r.get("Id").as_str().map(str::to_string))
                .ok_or_else(|| RecordError::new("ENTITY_IS_DELETED", "entity is deleted", &[]))?;
            let changes = normalize_write(object, &map, false)?;
            db.update(object, &id, changes, now, &user)?;
            Ok((id, false))
        }
        "upsert" => {
            let field = job.external_id.expect("upsert jobs have an external id");
            let value = map
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(field))
                .and_then(|(_, v)| v.as_str().map(str::to_string))
                .ok_or_else(|| {
                    RecordError::new(
                        "REQUIRED_FIELD_MISSING",
                        format!("Required fields are missing: [{field}]"),
                        &[field],
                    )
                })?;
            map.retain(|k, _| !k.eq_ignore_ascii_case(field));
            match db.by_external(object.name, field, &value) {
                Some(id) => {
                    let changes = normalize_write(object, &map, false)?;
                    db.update(object, &id, changes, now, &user)?;
                    Ok((id, false))
                }
                None => {
                    let mut fields = normalize_write(object, &map, true)?;
                    fields.insert(field.to_string(), json!(value));
                    Ok((db.insert(object, fields, now, &user), true))
                }
            }
        }
        _ => {
            let id = id_of(&map).ok_or_else(|| {
                RecordError::new("MISSING_ARGUMENT", "Id not specified in a delete call", &[])
            })?;
            let id = db
                .live(object.name, &id)
                .and_then(|r| r.get("Id").as_str().map(str::to_string))
                .ok_or_else(|| RecordError::new("ENTITY_IS_DELETED", "entity is deleted", &[]))?;
            db.delete(object, &id, now, &user)?;
            Ok((id, false))
        }
    }
}

pub(crate) async fn ingest_results(
    State(sf): State<Salesforce>,
    Path((version, id, result)): Path<(String, String, String)>,
) -> Reply {
    api_version(&version)?;
    let jobs = sf.inner().bulk.lock().expect("bulk lock");
    let job = jobs.ingest.get(&id).ok_or_else(not_found)?;
    let (mut header, rows) = match result.as_str() {
        "successfulResults" => (
            vec!["sf__Id".to_string(), "sf__Created".to_string()],
            &job.successful,
        ),
        "failedResults" => (
            vec!["sf__Id".to_string(), "sf__Error".to_string()],
            &job.failed,
        ),
        "unprocessedrecords" => (vec![], &job.unprocessed),
        _ => return Err(not_found()),
    };
    header.extend(job.header.iter().cloned());
    // The vendor does not keep upload order in results; listing them last row first keeps
    // clients from relying on it.
    let rows: Vec<Vec<String>> = rows.iter().rev().cloned().collect();
    Ok((
        StatusCode::OK,
        [("content-type", "text/csv")],
        csv_text(job.delimiter, &header, &rows),
    )
        .into_response())
}
