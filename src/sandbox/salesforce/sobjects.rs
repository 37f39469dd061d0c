//! sObject resources: versions and resources lists, `/limits`, describe (global and per
//! object), single-record CRUD, upsert by external id (201 created / 200 updated in v46+,
//! 204 up to v45), get updated/deleted, and sObject Collections (create, update, upsert,
//! delete; at most 200 records; `allOrNone`; per-record results with `statusCode` errors).
//! Writes are checked by `store::normalize_write`. It must not parse SOQL.

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::query::render;
use super::schema::{FieldType, ObjectSchema, SCHEMA};
use super::soql::Selected;
use super::store::{
    RecordError, Store, api_user_id, format_datetime, is_id_shaped, normalize_write,
};
use super::{
    FailRecord, Reply, Salesforce, api_version, error, json_body, not_found, record_error,
};

const VERSIONS: [(&str, &str); 6] = [
    ("Winter '24", "59.0"),
    ("Spring '24", "60.0"),
    ("Summer '24", "61.0"),
    ("Winter '25", "62.0"),
    ("Spring '25", "63.0"),
    ("Summer '25", "64.0"),
];

pub(crate) async fn versions() -> Response {
    let list: Vec<Value> = VERSIONS
        .iter()
        .map(|(label, v)| json!({"label": label, "url": format!("/services/data/v{v}"), "version": v}))
        .collect();
    axum::Json(list).into_response()
}

pub(crate) async fn resources(Path(version): Path<String>) -> Reply {
    api_version(&version)?;
    let base = format!("/services/data/{version}");
    let mut out = Map::new();
    for name in [
        "sobjects",
        "query",
        "queryAll",
        "limits",
        "composite",
        "jobs",
    ] {
        out.insert(name.into(), json!(format!("{base}/{name}")));
    }
    Ok(axum::Json(Value::Object(out)).into_response())
}

pub(crate) async fn limits(State(sf): State<Salesforce>, Path(version): Path<String>) -> Reply {
    api_version(&version)?;
    let inner = sf.inner();
    let now = inner.clock.now();
    let max = inner.config.daily_api_limit;
    let max_batches = inner.config.daily_bulk_batch_limit;
    let used = inner.usage.lock().expect("usage lock").used(now);
    let bulk_query_jobs = inner.bulk.lock().expect("bulk lock").query_jobs_today(now);
    let batches = inner
        .bulk
        .lock()
        .expect("bulk lock")
        .ingest_batches_today(now);
    let body = json!({
        "DailyApiRequests": {"Max": max, "Remaining": max.saturating_sub(used)},
        "DailyAsyncApexExecutions": {"Max": 250000, "Remaining": 250000},
        "DailyBulkApiBatches": {"Max": max_batches, "Remaining": max_batches.saturating_sub(batches)},
        "DailyBulkV2QueryFileStorageMB": {"Max": 976562, "Remaining": 976562},
        "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000u64.saturating_sub(bulk_query_jobs)},
        "DailyDurableStreamingApiEvents": {"Max": 10000, "Remaining": 10000},
        "DailyStreamingApiEvents": {"Max": 10000, "Remaining": 10000},
        "DataStorageMB": {"Max": 5, "Remaining": 5},
        "FileStorageMB": {"Max": 20, "Remaining": 20},
        "SingleEmail": {"Max": 15, "Remaining": 15},
    });
    Ok(axum::Json(body).into_response())
}

fn object_or_404(name: &str) -> Result<&'static ObjectSchema, Response> {
    SCHEMA.object(name).ok_or_else(not_found)
}

/// The object a `/sobjects/{object}/...` path names, after its API version is checked: the
/// vendor answers 404 for either one unknown.
fn versioned_object(version: &str, name: &str) -> Result<&'static ObjectSchema, Response> {
    api_version(version)?;
    object_or_404(name)
}

fn urls(object: &ObjectSchema, version: &str) -> Value {
    let base = format!("/services/data/{version}/sobjects/{}", object.name);
    json!({
        "sobject": base,
        "describe": format!("{base}/describe"),
        "rowTemplate": format!("{base}/{{ID}}"),
    })
}

fn object_summary(object: &ObjectSchema, version: &str) -> Value {
    let label = object.label();
    json!({
        "name": object.name,
        "label": label,
        "labelPlural": format!("{label}s"),
        "keyPrefix": object.key_prefix,
        "custom": object.custom,
        "createable": object.createable,
        "updateable": object.createable,
        "deletable": object.createable,
        "queryable": true,
        "retrieveable": true,
        "searchable": !object.is_history(),
        "replicateable": true,
        "triggerable": object.createable,
        "layoutable": object.createable,
        "deprecatedAndHidden": false,
        "urls": urls(object, version),
    })
}

pub(crate) async fn describe_global(Path(version): Path<String>) -> Reply {
    api_version(&version)?;
    let sobjects: Vec<Value> = SCHEMA
        .objects
        .iter()
        .map(|o| object_summary(o, &version))
        .collect();
    Ok(
        axum::Json(json!({"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": sobjects}))
            .into_response(),
    )
}

pub(crate) async fn sobject_info(Path((version, object)): Path<(String, String)>) -> Reply {
    let object = versioned_object(&version, &object)?;
    Ok(
        axum::Json(json!({"objectDescribe": object_summary(object, &version), "recentItems": []}))
            .into_response(),
    )
}

pub(crate) async fn describe(Path((version, object)): Path<(String, String)>) -> Reply {
    let object = versioned_object(&version, &object)?;
    let mut body = object_summary(object, &version);
    let fields: Vec<Value> = object
        .fields
        .iter()
        .map(|f| {
            let relationship = f.relationship_name();
            let soap = match f.ty {
                FieldType::Id | FieldType::Reference => "tns:ID",
                FieldType::Boolean => "xsd:boolean",
                FieldType::Double | FieldType::Currency => "xsd:double",
                FieldType::Date => "xsd:date",
                FieldType::DateTime => "xsd:dateTime",
                FieldType::AnyType => "xsd:anyType",
                _ => "xsd:string",
            };
            json!({
                "name": f.name,
                "label": f.label(),
                "type": f.ty.describe_name(),
                "soapType": soap,
                "length": f.length,
                "byteLength": f.length * 3,
                "precision": if f.ty.is_number() { 18 } else { 0 },
                "scale": if f.ty.is_number() { 2 } else { 0 },
                "custom": f.name.ends_with("__c"),
                "externalId": f.external_id,
                "unique": f.unique,
                "idLookup": f.name == "Id" || f.external_id,
                "nillable": f.createable && f.ty != FieldType::Boolean && !object.required.contains(&f.name),
                "createable": f.createable,
                "updateable": f.updateable,
                "filterable": true,
                "sortable": f.ty != FieldType::TextArea,
                "groupable": f.ty != FieldType::TextArea,
                "autoNumber": f.auto_number,
                "calculated": false,
                "caseSensitive": false,
                "defaultedOnCreate": f.ty == FieldType::Boolean || f.auto_number || !f.createable,
                "referenceTo": f.reference_to.map_or_else(Vec::new, |r| vec![r]),
                "relationshipName": relationship,
                "picklistValues": [],
                "trackHistory": f.history,
            })
        })
        .collect();
    body["fields"] = json!(fields);
    body["childRelationships"] = json!([]);
    body["recordTypeInfos"] = json!([]);
    Ok(axum::Json(body).into_response())
}

fn object_body(body: &[u8]) -> Result<Map<String, Value>, Response> {
    match json_body(body)? {
        Value::Object(map) => Ok(map),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            "JSON_PARSER_ERROR",
            "Cannot deserialize instance of sObject from a value that is not an object",
        )),
    }
}

fn malformed_id(object: &ObjectSchema, id: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!([{"errorCode": "MALFORMED_ID",
            "message": format!("{} ID: id value of incorrect type: {id}", object.label()),
            "fields": ["Id"]}])),
    )
        .into_response()
}

fn full_id(db: &Store, object: &ObjectSchema, id: &str) -> Option<String> {
    db.live(object.name, id)
        .and_then(|r| r.get("Id").as_str().map(str::to_string))
}

#[derive(serde::Deserialize)]
pub(crate) struct FieldsParam {
    fields: Option<String>,
}

pub(crate) async fn get_record(
    State(sf): State<Salesforce>,
    Path((version, object, id)): Path<(String, String, String)>,
    Query(params): Query<FieldsParam>,
) -> Reply {
    let object = versioned_object(&version, &object)?;
    if !is_id_shaped(&id) {
        return Err(malformed_id(object, &id));
    }
    let db = sf.inner().db.lock().expect("db lock");
    let Some(record) = db.live(object.name, &id) else {
        return Err(not_found());
    };
    let names: Vec<&str> = match &params.fields {
        Some(list) => {
            let mut names = Vec::new();
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                match object.field(name) {
                    Some(f) => names.push(f.name),
                    None => {
                        return Err(error(
                            StatusCode::BAD_REQUEST,
                            "INVALID_FIELD",
                            &format!("No such column '{name}' on entity '{}'", object.name),
                        ));
                    }
                }
            }
            names
        }
        None => object.fields.iter().map(|f| f.name).collect(),
    };
    let select: Vec<Selected> = names.into_iter().map(Selected::Field).collect();
    Ok(axum::Json(render(&db, object.name, record, &select, &version)).into_response())
}

pub(crate) async fn get_by_external(
    State(sf): State<Salesforce>,
    Path((version, object, field, value)): Path<(String, String, String, String)>,
) -> Reply {
    let object = versioned_object(&version, &object)?;
    let Some(field) = object
        .field(&field)
        .filter(|f| f.external_id || f.name == "Id")
    else {
        return Err(not_found());
    };
    let db = sf.inner().db.lock().expect("db lock");
    let id = if field.name == "Id" {
        full_id(&db, object, &value)
    } else {
        db.by_external(object.name, field.name, &value)
    };
    let Some(record) = id.and_then(|id| db.live(object.name, &id)) else {
        return Err(not_found());
    };
    let select: Vec<Selected> = object
        .fields
        .iter()
        .map(|f| Selected::Field(f.name))
        .collect();
    Ok(axum::Json(render(&db, object.name, record, &select, &version)).into_response())
}

/// Checks that a new unique external id value is not taken by another record.
fn check_unique(
    db: &Store,
    object: &ObjectSchema,
    fields: &Map<String, Value>,
    own_id: Option<&str>,
) -> Result<(), RecordError> {
    for f in object.fields.iter().filter(|f| f.unique && f.external_id) {
        if let Some(Value::String(v)) = fields.get(f.name)
            && let Some(other) = db.by_external(object.name, f.name, v)
            && Some(other.as_str()) != own_id
        {
            return Err(RecordError::new(
                "DUPLICATE_VALUE",
                format!(
                    "duplicate value found: {} duplicates value on record with id: {other}",
                    f.name
                ),
                &[f.name],
            ));
        }
    }
    Ok(())
}

pub(crate) async fn create(
    State(sf): State<Salesforce>,
    Path((version, object)): Path<(String, String)>,
    body: bytes::Bytes,
) -> Reply {
    let object = versioned_object(&version, &object)?;
    let body = object_body(&body)?;
    if !object.createable {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "INVALID_TYPE_FOR_OPERATION",
            &format!("entity type {} does not support create", object.name),
        ));
    }
    let fields = normalize_write(object, &body, true).map_err(record_error)?;
    let inner = sf.inner();
    let now = inner.clock.now();
    let mut db = inner.db.lock().expect("db lock");
    check_unique(&db, object, &fields, None).map_err(record_error)?;
    let id = db.insert(object, fields, now, &api_user_id());
    drop(db);
    sf.notify_outbound(object.name, std::slice::from_ref(&id));
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"id": id, "success": true, "errors": []})),
    )
        .into_response())
}

pub(crate) async fn update(
    State(sf): State<Salesforce>,
    Path((version, object, id)): Path<(String, String, String)>,
    body: bytes::Bytes,
) -> Reply {
    let object = versioned_object(&version, &object)?;
    if !is_id_shaped(&id) {
        return Err(malformed_id(object, &id));
    }
    let body = object_body(&body)?;
    let changes = normalize_write(object, &body, false).map_err(record_error)?;
    let inner = sf.inner();
    let now = inner.clock.now();
    let mut db = inner.db.lock().expect("db lock");
    let Some(id) = full_id(&db, object, &id) else {
        return Err(not_found());
    };
    check_unique(&db, object, &changes, Some(&id)).map_err(record_error)?;
    db.update(object, &id, changes, now, &api_user_id())
        .map_err(record_error)?;
    drop(db);
    sf.notify_outbound(object.name, &[id]);
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn delete(
    State(sf): State<Salesforce>,
    Path((version, object, id)): Path<(String, String, String)>,
) -> Reply {
    let object = versioned_object(&version, &object)?;
    if !is_id_shaped(&id) {
        return Err(malformed_id(object, &id));
    }
    let inner = sf.inner();
    let now = inner.clock.now();
    let mut db = inner.db.lock().expect("db lock");
    let Some(id) = full_id(&db, object, &id) else {
        return Err(not_found());
    };
    db.delete(object, &id, now, &api_user_id())
        .map_err(record_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The outcome of one upsert: created or updated, with the record id.
fn upsert_one(
    db: &mut Store,
    object: &ObjectSchema,
    field: &str,
    value: &str,
    mut body: Map<String, Value>,
    now: Timestamp,
) -> Result<(String, bool), RecordError> {
    body.retain(|k, _| !k.eq_ignore_ascii_case(field));
    match db.by_external(object.name, field, value) {
        Some(id) => {
            let changes = normalize_write(object, &body, false)?;
            check_unique(db, object, &changes, Some(&id))?;
            db.update(object, &id, changes, now, &api_user_id())?;
            Ok((id, false))
        }
        None => {
            let mut fields = normalize_write(object, &body, true)?;
            fields.insert(field.to_string(), json!(value));
            let id = db.insert(object, fields, now, &api_user_id());
            Ok((id, true))
        }
    }
}

pub(crate) async fn upsert(
    State(sf): State<Salesforce>,
    Path((version, object, field, value)): Path<(String, String, String, String)>,
    body: bytes::Bytes,
) -> Reply {
    let api = api_version(&version)?;
    let object = object_or_404(&object)?;
    let Some(field) = object.field(&field).filter(|f| f.external_id) else {
        return Err(not_found());
    };
    let body = object_body(&body)?;
    let inner = sf.inner();
    let now = inner.clock.now();
    let mut db = inner.db.lock().expect("db lock");
    let result = upsert_one(&mut db, object, field.name, &value, body, now);
    drop(db);
    let (id, created) = result.map_err(record_error)?;
    sf.notify_outbound(object.name, std::slice::from_ref(&id));
    let body = json!({"id": id, "success": true, "errors": [], "created": created});
    Ok(if created {
        (StatusCode::CREATED, axum::Json(body)).into_response()
    } else if api >= 46.0 {
        (StatusCode::OK, axum::Json(body)).into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    })
}

#[derive(serde::Deserialize)]
pub(crate) struct WindowParams {
    start: Option<String>,
    end: Option<String>,
}

fn window(params: &WindowParams) -> Result<(Timestamp, Timestamp), Response> {
    let parse = |s: &Option<String>| {
        s.as_deref()
            .and_then(|s| s.replace(' ', "+").parse::<Timestamp>().ok())
            .map(|t| Timestamp::from_second(t.as_second() / 60 * 60).expect("in range"))
    };
    match (parse(&params.start), parse(&params.end)) {
        (Some(s), Some(e)) if s < e => Ok((s, e)),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            "INVALID_REPLICATION_DATE",
            "start date must chronologically precede end date",
        )),
    }
}

pub(crate) async fn updated(
    State(sf): State<Salesforce>,
    Path((version, object)): Path<(String, String)>,
    Query(params): Query<WindowParams>,
) -> Reply {
    let object = versioned_object(&version, &object)?;
    let (start, end) = window(&params)?;
    let (from, to) = (format_datetime(start), format_datetime(end));
    let db = sf.inner().db.lock().expect("db lock");
    let table = db.table(object.name).expect("table");
    let ids: Vec<&str> = table
        .by_modstamp
        .range((from, String::new())..(to.clone(), String::new()))
        .filter(|(_, id)| table.records.get(id).is_some_and(|r| !r.deleted))
        .map(|(_, id)| id.as_str())
        .collect();
    Ok(axum::Json(json!({"ids": ids, "latestDateCovered": to})).into_response())
}

pub(crate) async fn deleted(
    State(sf): State<Salesforce>,
    Path((version, object)): Path<(String, String)>,
    Query(params): Query<WindowParams>,
) -> Reply {
    let object = versioned_object(&version, &object)?;
    let (start, end) = window(&params)?;
    let (from, to) = (format_datetime(start), format_datetime(end));
    let now = sf.inner().clock.now();
    let db = sf.inner().db.lock().expect("db lock");
    let table = db.table(object.name).expect("table");
    let records: Vec<Value> = table
        .by_modstamp
        .range((from, String::new())..(to.clone(), String::new()))
        .filter_map(|(stamp, id)| {
            let r = table.records.get(id)?;
            r.deleted.then(|| json!({"id": id, "deletedDate": stamp}))
        })
        .collect();
    let earliest = format_datetime(now - jiff::SignedDuration::from_hours(15 * 24));
    Ok(axum::Json(json!({"deletedRecords": records, "earliestDateAvailable": earliest, "latestDateCovered": to}))
        .into_response())
}

// ---------------------------------------------------------------------------------------
// sObject Collections

#[derive(Clone, Copy, PartialEq)]
enum CollectionOp {
    Create,
    Update,
    Upsert,
}

fn collection_request(body: &[u8]) -> Result<(bool, Vec<Value>), Response> {
    let value = json_body(body)?;
    let all_or_none = value
        .get("allOrNone")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let Some(records) = value.get("records").and_then(Value::as_array) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "INVALID_FIELD",
            "The request is missing its records array",
        ));
    };
    if records.len() > 200 {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "EXCEEDED_ID_LIMIT",
            "record limit reached. cannot submit more than 200 records into this call",
        ));
    }
    Ok((all_or_none, records.clone()))
}

pub(crate) async fn collection_create(
    state: State<Salesforce>,
    Path(version): Path<String>,
    fail: Option<Extension<FailRecord>>,
    body: bytes::Bytes,
) -> Reply {
    collection(state, &version, None, CollectionOp::Create, fail, &body)
}

pub(crate) async fn collection_update(
    state: State<Salesforce>,
    Path(version): Path<String>,
    fail: Option<Extension<FailRecord>>,
    body: bytes::Bytes,
) -> Reply {
    collection(state, &version, None, CollectionOp::Update, fail, &body)
}

pub(crate) async fn collection_upsert(
    state: State<Salesforce>,
    Path((version, object, field)): Path<(String, String, String)>,
    fail: Option<Extension<FailRecord>>,
    body: bytes::Bytes,
) -> Reply {
    collection(
        state,
        &version,
        Some((object, field)),
        CollectionOp::Upsert,
        fail,
        &body,
    )
}

/// What one record of a collection would do, decided before anything is written.
enum Planned {
    Insert(&'static ObjectSchema, Map<String, Value>),
    Update(&'static ObjectSchema, String, Map<String, Value>),
}

fn collection(
    State(sf): State<Salesforce>,
    version: &str,
    upsert_key: Option<(String, String)>,
    op: CollectionOp,
    fail: Option<Extension<FailRecord>>,
    body: &[u8],
) -> Reply {
    let api = api_version(version)?;
    let (all_or_none, records) = collection_request(body)?;
    let upsert = match &upsert_key {
        Some((object, field)) => {
            let object = object_or_404(object)?;
            let Some(field) = object.field(field).filter(|f| f.external_id) else {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_FIELD",
                    &format!(
                        "Field name provided, {field} is not an External ID or indexed field for {}",
                        object.name
                    ),
                ));
            };
            Some((object, field.name))
        }
        None => None,
    };
    if op == CollectionOp::Upsert && api < 46.0 {
        return Err(not_found());
    }
    let inner = sf.inner();
    let now = inner.clock.now();
    let mut db = inner.db.lock().expect("db lock");
    // Plan every record first: nothing is written until all are checked.
    let mut plans: Vec<Result<(Planned, bool), RecordError>> = Vec::with_capacity(records.len());
    let mut seen_ext: Vec<String> = Vec::new();
    for (index, record) in records.iter().enumerate() {
        let plan = plan_record(&db, op, upsert, record, &mut seen_ext);
        let plan = match (&fail, plan) {
            (Some(Extension(f)), Ok(p)) if f.index == index => {
                let id = match &p.0 {
                    Planned::Update(_, id, _) => Some(id.clone()),
                    Planned::Insert(..) => None,
                };
                Err(f.error(id.as_deref()))
            }
            (_, plan) => plan,
        };
        plans.push(plan);
    }
    let any_failed = plans.iter().any(Result::is_err);
    let mut results = Vec::with_capacity(plans.len());
    let mut notify: Vec<(&'static str, String)> = Vec::new();
    for plan in plans {
        let result = match plan {
            Err(e) => json!({"success": false, "errors": [e.per_record()]}),
            Ok((planned, _)) if all_or_none && any_failed => {
                let rolled_back = RecordError::new(
                    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                    "Record rolled back because not all records were valid and the request was using AllOrNone header",
                    &[],
                );
                let mut v = json!({"success": false, "errors": [rolled_back.per_record()]});
                if let Planned::Update(_, id, _) = planned {
                    v["id"] = json!(id);
                }
                v
            }
            Ok((Planned::Insert(object, fields), _)) => {
                let id = db.insert(object, fields, now, &api_user_id());
                notify.push((object.name, id.clone()));
                let mut v = json!({"id": id, "success": true, "errors": []});
                if op == CollectionOp::Upsert {
                    v["created"] = json!(true);
                }
                v
            }
            Ok((Planned::Update(object, id, changes), _)) => {
                match db.update(object, &id, changes, now, &api_user_id()) {
                    Ok(_) => {
                        notify.push((object.name, id.clone()));
                        let mut v = json!({"id": id, "success": true, "errors": []});
                        if op == CollectionOp::Upsert {
                            v["created"] = json!(false);
                        }
                        v
                    }
                    Err(e) => json!({"success": false, "errors": [e.per_record()]}),
                }
            }
        };
        results.push(result);
    }
    drop(db);
    for (object, id) in notify {
        sf.notify_outbound(object, &[id]);
    }
    Ok(axum::Json(results).into_response())
}

fn plan_record(
    db: &Store,
    op: CollectionOp,
    upsert: Option<(&'static ObjectSchema, &'static str)>,
    record: &Value,
    seen_ext: &mut Vec<String>,
) -> Result<(Planned, bool), RecordError> {
    let Some(map) = record.as_object() else {
        return Err(RecordError::new(
            "JSON_PARSER_ERROR",
            "Each record must be a JSON object",
            &[],
        ));
    };
    let type_name = map
        .get("attributes")
        .and_then(|a| a.get("type"))
        .and_then(Value::as_str);
    let object = match (upsert, type_name) {
        (Some((object, _)), _) => object,
        (None, Some(t)) => SCHEMA.object(t).ok_or_else(|| {
            RecordError::new(
                "INVALID_TYPE",
                format!("sObject type '{t}' is not supported."),
                &[],
            )
        })?,
        (None, None) => {
            return Err(RecordError::new(
                "INVALID_TYPE",
                "Must specify a type in attributes",
                &[],
            ));
        }
    };
    if !object.createable {
        return Err(RecordError::new(
            "INVALID_TYPE_FOR_OPERATION",
            format!(
                "entity type {} does not support this operation",
                object.name
            ),
            &[],
        ));
    }
    let id_value = map
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("id"))
        .map(|(_, v)| v.clone());
    match op {
        CollectionOp::Create => {
            if id_value.is_some_and(|v| !v.is_null()) {
                return Err(RecordError::new(
                    "INVALID_FIELD",
                    "cannot specify Id in an insert call",
                    &["Id"],
                ));
            }
            let fields = normalize_write(object, map, true)?;
            check_unique(db, object, &fields, None)?;
            claim_ext(object, &fields, seen_ext)?;
            Ok((Planned::Insert(object, fields), true))
        }
        CollectionOp::Update => {
            let Some(Value::String(id)) = id_value else {
                return Err(RecordError::new(
                    "MISSING_ARGUMENT",
                    "Id not specified in an update call",
                    &[],
                ));
            };
            let wrong_type = SCHEMA
                .object_for_id(&id)
                .is_none_or(|o| o.name != object.name);
            if !is_id_shaped(&id) || wrong_type {
                return Err(RecordError::new(
                    "MALFORMED_ID",
                    format!("{} ID: id value of incorrect type: {id}", object.label()),
                    &["Id"],
                ));
            }
            let Some(id) = full_id(db, object, &id) else {
                return Err(RecordError::new(
                    "ENTITY_IS_DELETED",
                    "entity is deleted",
                    &[],
                ));
            };
            let changes = normalize_write(object, map, false)?;
            check_unique(db, object, &changes, Some(&id))?;
            claim_ext(object, &changes, seen_ext)?;
            Ok((Planned::Update(object, id, changes), false))
        }
        CollectionOp::Upsert => {
            let (_, field) = upsert.expect("upsert has a key");
            let value = map
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(field))
                .and_then(|(_, v)| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .ok_or_else(|| {
                    RecordError::new(
                        "REQUIRED_FIELD_MISSING",
                        format!("Required fields are missing: [{field}]"),
                        &[field],
                    )
                })?;
            if seen_ext.contains(&value.to_lowercase()) {
                return Err(RecordError::new(
                    "DUPLICATE_EXTERNAL_ID",
                    format!("Duplicate external id specified: {value}"),
                    &[field],
                ));
            }
            seen_ext.push(value.to_lowercase());
            let mut body = map.clone();
            body.retain(|k, _| !k.eq_ignore_ascii_case(field) && !k.eq_ignore_ascii_case("id"));
            match db.by_external(object.name, field, &value) {
                Some(id) => {
                    let changes = normalize_write(object, &body, false)?;
                    Ok((Planned::Update(object, id, changes), false))
                }
                None => {
                    let mut fields = normalize_write(object, &body, true)?;
                    fields.insert(field.to_string(), json!(value));
                    Ok((Planned::Insert(object, fields), true))
                }
            }
        }
    }
}

/// Refuses two records of one request claiming the same unique external id value.
fn claim_ext(
    object: &ObjectSchema,
    fields: &Map<String, Value>,
    seen: &mut Vec<String>,
) -> Result<(), RecordError> {
    for f in object.fields.iter().filter(|f| f.unique && f.external_id) {
        if let Some(Value::String(v)) = fields.get(f.name) {
            let key = v.to_lowercase();
            if seen.contains(&key) {
                return Err(RecordError::new(
                    "DUPLICATE_VALUE",
                    format!(
                        "duplicate value found: {} duplicates value on record with id: {}",
                        f.name, v
                    ),
                    &[f.name],
                ));
            }
            seen.push(key);
        }
    }
    Ok(())
}

#[derive(serde::Deserialize)]
pub(crate) struct DeleteParams {
    ids: Option<String>,
    #[serde(rename = "allOrNone")]
    all_or_none: Option<bool>,
}

pub(crate) async fn collection_delete(
    State(sf): State<Salesforce>,
    Path(version): Path<String>,
    Query(params): Query<DeleteParams>,
) -> Reply {
    api_version(&version)?;
    let ids: Vec<String> = params
        .ids
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if ids.len() > 200 {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "EXCEEDED_ID_LIMIT",
            "record limit reached. cannot submit more than 200 records into this call",
        ));
    }
    let inner = sf.inner();
    let now = inner.clock.now();
    let mut db = inner.db.lock().expect("db lock");
    let resolved: Vec<Result<(&'static ObjectSchema, String), RecordError>> = ids
        .iter()
        .map(|id| {
            let object = SCHEMA
                .object_for_id(id)
                .filter(|o| o.createable && is_id_shaped(id))
                .ok_or_else(|| {
                    RecordError::new("MALFORMED_ID", format!("malformed id {id}"), &[])
                })?;
            let full = full_id(&db, object, id)
                .ok_or_else(|| RecordError::new("ENTITY_IS_DELETED", "entity is deleted", &[]))?;
            Ok((object, full))
        })
        .collect();
    let any_failed = resolved.iter().any(Result::is_err);
    let all_or_none = params.all_or_none.unwrap_or(false);
    let results: Vec<Value> = resolved
        .into_iter()
        .map(|r| match r {
            Err(e) => json!({"success": false, "errors": [e.per_record()]}),
            Ok((_, id)) if all_or_none && any_failed => json!({"id": id, "success": false,
                "errors": [{"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                    "message": "Record rolled back because not all records were valid and the request was using AllOrNone header",
                    "fields": []}]}),
            Ok((object, id)) => match db.delete(object, &id, now, &api_user_id()) {
                Ok(()) => json!({"id": id, "success": true, "errors": []}),
                Err(e) => json!({"success": false, "errors": [e.per_record()]}),
            },
        })
        .collect();
    Ok(axum::Json(results).into_response())
}
