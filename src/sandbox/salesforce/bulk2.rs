//! Bulk API 2.0: query jobs (`UploadComplete` -> `JobComplete` on the first status poll,
//! CSV results paged with `locator`/`maxRecords`, `Sforce-Locator` = `"null"` on the last
//! set, `Sforce-NumberOfRecords`) and ingest jobs (`Open` -> upload CSV -> `UploadComplete`
//! -> processed at once -> `JobComplete`, with `successfulResults` / `failedResults` /
//! `unprocessedrecords` CSVs). Jobs run synchronously: there is no `InProgress` window.
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
    object: &'static ObjectSchema,
    operation: String,
    external_id: Option<&'static str>,
    delimiter: u8,
    data: Vec<u8>,
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
            object,
            operation: operation.to_string(),
            external_id,
            delimiter: delim,
            data: Vec::new(),
            successful: Vec::new(),
            failed: Vec::new(),
            unprocessed: Vec::new(),
            header: Vec::new(),
        },
    );
    Ok(axum::Json(Value::Object(info)).into_response())
}

pub(crate) async fn ingest_upload(
    State(sf): State<Salesforce>,
    Path((version, id)): Path<(String, String)>,
    body: bytes::Bytes,
) -> Reply {
    api_version(&version)?;
    let now = sf.inner().clock.now();
    let mut jobs = sf.inner().bulk.lock().expect("bulk lock");
    let job = jobs.ingest.get_mut(&id).ok_or_else(not_found)?;
    if job.info["state"] != "Open" {
        return Err(error(
            StatusCode::CONFLICT,
            "INVALIDJOBSTATE",
            "Job is not open for data upload",
        ));
    }
    if !job.data.is_empty() {
        return Err(error(
            StatusCode::CONFLICT,
            "INVALIDJOBSTATE",
            "Data has already been uploaded for this job",
        ));
    }
    job.data = body.to_vec();
    jobs.batches.push(now);
    Ok(StatusCode::CREATED.into_response())
}

pub(crate) async fn ingest_status(
    State(sf): State<Salesforce>,
    Path((version, id)): Path<(String, String)>,
) -> Reply {
    api_version(&version)?;
    let jobs = sf.inner().bulk.lock().expect("bulk lock");
    let job = jobs.ingest.get(&id).ok_or_else(not_found)?;
    Ok(axum::Json(Value::Object(job.info.clone())).into_response())
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
    match (job.info["state"].as_str(), target) {
        (Some("Open"), "Aborted") => {
            job.info.insert("state".into(), json!("Aborted"));
        }
        (Some("Open"), "UploadComplete") => {
            process(&sf, job, fail.map(|Extension(f)| f));
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

/// Applies an uploaded CSV record by record, as the vendor's batch processing would.
fn process(sf: &Salesforce, job: &mut IngestJob, fail: Option<FailRecord>) {
    let inner = sf.inner();
    let now = inner.clock.now();
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(job.delimiter)
        .flexible(true)
        .from_reader(job.data.as_slice());
    let header: Vec<String> = reader
        .headers()
        .map(|h| h.iter().map(str::to_string).collect())
        .unwrap_or_default();
    job.header = header.clone();
    let rows: Vec<Vec<String>> = reader
        .records()
        .filter_map(Result::ok)
        .map(|r| r.iter().map(str::to_string).collect())
        .collect();
    let object = job.object;
    let mut changed = Vec::new();
    let mut db = inner.db.lock().expect("db lock");
    for (index, row) in rows.into_iter().enumerate() {
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
        let outcome: Result<(String, bool), RecordError> = match &fail {
            Some(f) if f.index == index => Err(f.error(None)),
            _ => apply_row(&mut db, job, object, map, now),
        };
        match outcome {
            Ok((id, created)) => {
                changed.push(id.clone());
                let mut out = vec![id, created.to_string()];
                out.extend(row);
                job.successful.push(out);
            }
            Err(e) => {
                let mut out = vec![
                    String::new(),
                    format!("{}:{}:{} --", e.status_code, e.message, e.fields.join(",")),
                ];
                out.extend(row);
                job.failed.push(out);
            }
        }
    }
    drop(db);
    job.info.insert("state".into(), json!("JobComplete"));
    job.info.insert(
        "numberRecordsProcessed".into(),
        json!(job.successful.len() + job.failed.len()),
    );
    job.info
        .insert("numberRecordsFailed".into(), json!(job.failed.len()));
    sf.notify_outbound(object.name, &changed);
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
    Ok((
        StatusCode::OK,
        [("content-type", "text/csv")],
        csv_text(job.delimiter, &header, rows),
    )
        .into_response())
}
