//! The Salesforce emulator: OAuth 2.0 token endpoint, REST API (query/queryAll with
//! locators, sObject CRUD and upsert, describe, sObject Collections, limits), Bulk API 2.0,
//! field history and Outbound Messaging, on one axum router, faithful to the wire facts in
//! `docs/apis/salesforce.md`. It must share no code with `src/connectors` or
//! `src/engine`, and it reads time only from the `SandboxClock`.
//!
//! # Request pipeline
//! Every request outside `/__sandbox` passes `gate`: it is classified into a *kind*, held to
//! the vendor's request size limits (below), checked against the fault rules
//! (`System::Salesforce`), authenticated (Bearer session, 401 `INVALID_SESSION_ID` when
//! unknown or idle longer than `session_ttl_secs`), counted against the rolling-24-h daily
//! API limit (403 `REQUEST_LIMIT_EXCEEDED` when `limits` is on and the limit is used up),
//! served, given an `Sforce-Limit-Info` header, and recorded in the request log with its
//! kind and final status (0 when a fault dropped the connection).
//!
//! # Request size limits
//! The vendor refuses a request whose URI is longer than 16,384 bytes with `414 URI Too
//! Long`, and one whose URI and headers together pass 16,384 bytes with `431 Request
//! Header Fields Too Large`, in both cases with its front end's HTML page
//! (`<h1>Bad Message 414</h1><pre>reason: URI Too Long</pre>`, as clients have logged it).
//! `gate` does the same before anything else: the refusal is logged under the kind the
//! request would have had, is not authenticated, not counted against the daily limit and
//! has no `Sforce-Limit-Info`. URIs here count as sent on the request line (path and
//! query), headers as `name: value` plus CRLF. A URI longer than 65,534 bytes never reaches
//! `gate`: the HTTP server itself answers 414 with an empty body and nothing is logged.
//! Long SOQL belongs in a Composite subrequest ([`composite`]), where only the SOQL limits
//! apply.
//!
//! # Request kinds (for the request log and fault rules)
//! `token`, `revoke`, `versions`, `resources`, `limits`, `describe_global`, `describe`,
//! `sobject_info`, `query`, `query_all`, `query_more`, `sobject_get`, `sobject_get_by_external`,
//! `sobject_create`, `sobject_update`, `sobject_delete`, `sobject_upsert`, `updated`,
//! `deleted`, `composite` (one call, whatever its subrequests), `composite_create`,
//! `composite_update`, `composite_upsert`, `composite_delete`, `bulk2_query_create`,
//! `bulk2_query_status`, `bulk2_query_results`, `bulk2_query_abort`, `bulk2_ingest_create`,
//! `bulk2_ingest_list`, `bulk2_ingest_upload`, `bulk2_ingest_state`, `bulk2_ingest_status`, `bulk2_ingest_results`,
//! `bulk2_ingest_delete`, `unknown`.
//! Calls that count against the daily limit: every kind except `token`, `revoke`, `versions`.
//!
//! # Layout
//! - [`schema`]: objects, fields, key prefixes, external ids, tracked fields.
//! - [`store`]: records, indexes, history rows, write validation, seeding from the world.
//! - [`soql`]: the SOQL parser and evaluator.
//! - [`oauth`]: token endpoint and sessions.
//! - [`query`]: query/queryAll and query locators (cursors).
//! - [`sobjects`]: CRUD, upsert, describe, collections, limits.
//! - [`composite`]: the Composite resource (subrequests run by the handlers above).
//! - [`bulk2`]: Bulk API 2.0 query and ingest jobs.
//! - [`outbound`]: Outbound Messaging (SOAP notifications, retried until acknowledged).

// Handlers return early with a ready vendor-shaped `Response` as the error (see `Reply`);
// boxing it everywhere would only add noise.
#![allow(clippy::result_large_err)]

pub mod bulk2;
pub mod composite;
pub mod oauth;
pub mod outbound;
pub mod query;
pub mod schema;
pub mod sobjects;
pub mod soql;
pub mod store;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use jiff::Timestamp;
use serde_json::{Value, json};

use super::clock::SandboxClock;
use super::faults::{FaultAction, Faults, RequestFacts, System};
use super::log::{RequestLog, RequestRecord};
use super::world::World;
use store::{RecordError, Store};

/// The PEM of the sandbox-only RSA public key in `tests/fixtures/jwt/` (test-only, never a
/// real credential): the default key JWT bearer assertions are checked against.
pub const TEST_JWT_PUBLIC_KEY_PEM: &str =
    include_str!("../../../tests/fixtures/jwt/sandbox-test-only-public.pem");

/// The emulated org's settings.
#[derive(Clone, Debug)]
pub struct SalesforceConfig {
    pub client_id: String,
    pub client_secret: String,
    pub username: String,
    /// Checks RS256 assertions of the JWT bearer flow.
    pub jwt_public_key_pem: String,
    /// Enforce the daily API limit (off for benchmarks).
    pub limits: bool,
    /// Calls per rolling 24 h; default 15_000 (a Developer Edition org's allocation).
    pub daily_api_limit: u64,
    /// Bulk API batches per rolling 24 h (`DailyBulkApiBatches`); default 15_000, the
    /// vendor's allocation. Enforced on ingest jobs when `limits` is on.
    pub daily_bulk_batch_limit: u64,
    /// Idle session timeout; default 7200 (the vendor's 2 h default).
    pub session_ttl_secs: i64,
    /// SOAP notifications to a URL, retried until acknowledged.
    pub outbound: Option<OutboundMessaging>,
}

/// An Outbound Messaging action: when a record of one of `objects` is created or changed
/// (by the API or through `edit_record`), a SOAP `notifications` message with its current
/// `fields` is POSTed to `url` until the endpoint answers `<Ack>true</Ack>`. Retries back off
/// exponentially from `retry_initial_secs` to at most 2 h (sandbox clock); a message not
/// acknowledged within 24 h is dropped, as the vendor does.
#[derive(Clone, Debug)]
pub struct OutboundMessaging {
    pub url: String,
    pub objects: Vec<String>,
    /// Fields sent in each `sObject`; `Id` is always sent.
    pub fields: Vec<String>,
    pub retry_initial_secs: i64,
    /// Deliver from a background task (the CLI); tests turn it off and step delivery with
    /// `Salesforce::deliver_outbound` so that nothing races them.
    pub deliver_in_background: bool,
}

impl SalesforceConfig {
    /// The sandbox's default org: fixed test credentials, limits on.
    pub fn sandbox_default() -> Self {
        Self {
            client_id: "3MVG9sandbox.mqlsync.consumer.key".into(),
            client_secret: "sandbox-consumer-secret".into(),
            username: "integration@mqlsync.sandbox".into(),
            jwt_public_key_pem: TEST_JWT_PUBLIC_KEY_PEM.into(),
            limits: true,
            daily_api_limit: 15_000,
            daily_bulk_batch_limit: 15_000,
            session_ttl_secs: 7200,
            outbound: None,
        }
    }
}

/// A handle on the emulator; clones share the org.
#[derive(Clone)]
pub struct Salesforce {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub config: SalesforceConfig,
    pub clock: SandboxClock,
    pub faults: Arc<Faults>,
    pub log: Arc<RequestLog>,
    pub db: Mutex<Store>,
    pub sessions: Mutex<oauth::Sessions>,
    pub usage: Mutex<Usage>,
    pub cursors: Mutex<query::Cursors>,
    pub bulk: Mutex<bulk2::Jobs>,
    pub outbound: Mutex<outbound::Queue>,
    pub outbound_wake: tokio::sync::Notify,
    pub http: reqwest::Client,
}

/// API calls counted per minute over the rolling 24 h.
#[derive(Default)]
pub(crate) struct Usage {
    minutes: VecDeque<(i64, u64)>,
    total: u64,
}

impl Usage {
    fn prune(&mut self, now: Timestamp) {
        let oldest = now.as_second() / 60 - 24 * 60;
        while let Some(&(minute, n)) = self.minutes.front() {
            if minute > oldest {
                break;
            }
            self.total -= n;
            self.minutes.pop_front();
        }
    }
    pub fn used(&mut self, now: Timestamp) -> u64 {
        self.prune(now);
        self.total
    }
    fn add(&mut self, now: Timestamp) {
        let minute = now.as_second() / 60;
        match self.minutes.back_mut() {
            Some((m, n)) if *m == minute => *n += 1,
            _ => self.minutes.push_back((minute, 1)),
        }
        self.total += 1;
    }
}

/// The fault a rule asked a collection or bulk write to apply to one record.
#[derive(Clone, Debug)]
pub(crate) struct FailRecord {
    pub index: usize,
    pub code: String,
    pub message: Option<String>,
}

impl FailRecord {
    pub fn error(&self, id: Option<&str>) -> RecordError {
        let message = self.message.clone().unwrap_or_else(|| match self.code.as_str() {
            "UNABLE_TO_LOCK_ROW" => format!(
                "unable to obtain exclusive access to this record or 1 records: {}",
                id.unwrap_or("")
            ),
            "DUPLICATE_VALUE" => "duplicate value found: External_Id__c duplicates value on record with id: unknown".into(),
            other => format!("{other} (injected by a sandbox fault rule)"),
        });
        RecordError::new(&self.code, message, &[])
    }
}

impl Salesforce {
    pub fn new(
        world: &World,
        config: SalesforceConfig,
        clock: SandboxClock,
        faults: Arc<Faults>,
        log: Arc<RequestLog>,
    ) -> Self {
        let store = Store::seed(world);
        Self {
            inner: Arc::new(Inner {
                sessions: Mutex::new(oauth::Sessions::new(world.seed)),
                config,
                clock,
                faults,
                log,
                db: Mutex::new(store),
                usage: Mutex::new(Usage::default()),
                cursors: Mutex::new(query::Cursors::default()),
                bulk: Mutex::new(bulk2::Jobs::default()),
                outbound: Mutex::new(outbound::Queue::default()),
                outbound_wake: tokio::sync::Notify::new(),
                http: reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(60))
                    .build()
                    .expect("reqwest client"),
            }),
        }
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    pub fn config(&self) -> &SalesforceConfig {
        &self.inner.config
    }

    /// Every Salesforce route at the server root, plus `/__sandbox/salesforce/...` admin
    /// routes (see [`admin_routes`](Self::admin_routes)).
    pub fn router(&self) -> Router {
        let data = "/services/data/{version}";
        let mut api: Router<Salesforce> = Router::new();
        let mut route = |path: String, handler: MethodRouter<Salesforce>| {
            api = std::mem::take(&mut api)
                .route(&path, handler.clone())
                .route(&format!("{path}/"), handler);
        };
        route("/services/oauth2/token".into(), post(oauth::token));
        route("/services/oauth2/revoke".into(), post(oauth::revoke));
        route("/services/data".into(), get(sobjects::versions));
        route(data.into(), get(sobjects::resources));
        route(format!("{data}/limits"), get(sobjects::limits));
        route(format!("{data}/query"), get(query::query));
        route(format!("{data}/queryAll"), get(query::query_all));
        route(format!("{data}/query/{{locator}}"), get(query::query_more));
        route(
            format!("{data}/queryAll/{{locator}}"),
            get(query::query_more),
        );
        route(format!("{data}/sobjects"), get(sobjects::describe_global));
        route(
            format!("{data}/sobjects/{{object}}"),
            get(sobjects::sobject_info).post(sobjects::create),
        );
        route(
            format!("{data}/sobjects/{{object}}/describe"),
            get(sobjects::describe),
        );
        route(
            format!("{data}/sobjects/{{object}}/updated"),
            get(sobjects::updated),
        );
        route(
            format!("{data}/sobjects/{{object}}/deleted"),
            get(sobjects::deleted),
        );
        route(
            format!("{data}/sobjects/{{object}}/{{id}}"),
            get(sobjects::get_record)
                .patch(sobjects::update)
                .delete(sobjects::delete),
        );
        route(
            format!("{data}/sobjects/{{object}}/{{field}}/{{value}}"),
            get(sobjects::get_by_external).patch(sobjects::upsert),
        );
        route(format!("{data}/composite"), post(composite::composite));
        route(
            format!("{data}/composite/sobjects"),
            post(sobjects::collection_create)
                .patch(sobjects::collection_update)
                .delete(sobjects::collection_delete),
        );
        route(
            format!("{data}/composite/sobjects/{{object}}/{{field}}"),
            axum::routing::patch(sobjects::collection_upsert),
        );
        route(
            format!("{data}/jobs/query"),
            post(bulk2::query_create).get(bulk2::query_list),
        );
        route(
            format!("{data}/jobs/query/{{job}}"),
            get(bulk2::query_status)
                .patch(bulk2::query_abort)
                .delete(bulk2::query_delete),
        );
        route(
            format!("{data}/jobs/query/{{job}}/results"),
            get(bulk2::query_results),
        );
        route(
            format!("{data}/jobs/ingest"),
            post(bulk2::ingest_create).get(bulk2::ingest_list),
        );
        route(
            format!("{data}/jobs/ingest/{{job}}"),
            get(bulk2::ingest_status)
                .patch(bulk2::ingest_state)
                .delete(bulk2::ingest_delete),
        );
        route(
            format!("{data}/jobs/ingest/{{job}}/batches"),
            axum::routing::put(bulk2::ingest_upload),
        );
        route(
            format!("{data}/jobs/ingest/{{job}}/{{result}}"),
            get(bulk2::ingest_results),
        );
        api.fallback(|| async { not_found() })
            .method_not_allowed_fallback(method_not_allowed)
            // Bulk API 2.0 accepts CSV uploads up to 150 MB (axum's default is 2 MB).
            .layer(axum::extract::DefaultBodyLimit::max(150 * 1024 * 1024))
            .layer(axum::middleware::from_fn_with_state(self.clone(), gate))
            .merge(self.admin_routes())
            .with_state(self.clone())
    }

    /// `/__sandbox/salesforce/...`: `POST records/{object}/{id}` (edit as a user: JSON
    /// object of fields), `POST refresh_tokens` (mint a refresh token for the configured
    /// user: `{"refresh_token"}`), `POST outbound/deliver` (attempt due outbound messages
    /// now: `{"delivered"}`), `GET state`.
    pub fn admin_routes(&self) -> Router<Salesforce> {
        Router::new()
            .route(
                "/__sandbox/salesforce/records/{object}/{id}",
                post(admin_edit_record),
            )
            .route(
                "/__sandbox/salesforce/refresh_tokens",
                post(admin_refresh_token),
            )
            .route(
                "/__sandbox/salesforce/outbound/deliver",
                post(admin_deliver_outbound),
            )
            .route("/__sandbox/salesforce/state", get(admin_state))
    }

    /// Edits a record as a user in the UI would: bumps LastModifiedDate/SystemModstamp,
    /// writes field history for tracked fields, sends outbound messages.
    pub fn edit_record(
        &self,
        object: &str,
        id: &str,
        fields: serde_json::Map<String, Value>,
    ) -> Result<(), String> {
        let schema = schema::SCHEMA
            .object(object)
            .ok_or_else(|| format!("no object {object} in the sandbox schema"))?;
        let changes = store::normalize_write(schema, &fields, false)
            .map_err(|e| format!("{}: {}", e.status_code, e.message))?;
        let now = self.inner.clock.now();
        let user = {
            let db = self.inner.db.lock().expect("db lock");
            let record = db
                .live(schema.name, id)
                .ok_or_else(|| format!("no live {object} record {id}"))?;
            // Edits come from the record's owner, as a rep in the UI.
            record
                .get("OwnerId")
                .as_str()
                .map_or_else(store::api_user_id, str::to_string)
        };
        let full_id = self
            .inner
            .db
            .lock()
            .expect("db lock")
            .live(schema.name, id)
            .map(|r| r.get("Id").as_str().unwrap_or(id).to_string())
            .unwrap_or_else(|| id.to_string());
        self.inner
            .db
            .lock()
            .expect("db lock")
            .update(schema, &full_id, changes, now, &user)
            .map_err(|e| e.message)?;
        self.notify_outbound(schema.name, &[full_id]);
        Ok(())
    }

    /// Mints a refresh token for the configured user (the result of an authorization-code
    /// flow, which the sandbox has no browser for).
    pub fn issue_refresh_token(&self) -> String {
        self.inner
            .sessions
            .lock()
            .expect("sessions lock")
            .mint_refresh()
    }

    /// All state as JSON for the admin API and tests: records by object (live and deleted),
    /// sessions count, API usage, bulk jobs, outbound queue and deliveries.
    pub fn state(&self) -> Value {
        let now = self.inner.clock.now();
        let db = self.inner.db.lock().expect("db lock");
        let mut objects = serde_json::Map::new();
        for object in &schema::SCHEMA.objects {
            let Some(table) = db.table(object.name) else {
                continue;
            };
            let records: Vec<Value> = table
                .records
                .values()
                .map(|r| Value::Object(r.fields.clone()))
                .collect();
            objects.insert(object.name.into(), Value::Array(records));
        }
        drop(db);
        let used = self.inner.usage.lock().expect("usage lock").used(now);
        json!({
            "objects": objects,
            "api_usage": {"used": used, "max": self.inner.config.daily_api_limit},
            "sessions": self.inner.sessions.lock().expect("sessions lock").live_count(now),
            "bulk_jobs": self.inner.bulk.lock().expect("bulk lock").summary(),
            "outbound": self.inner.outbound.lock().expect("outbound lock").summary(),
        })
    }

    /// Calls used in the rolling 24 h.
    pub fn api_usage(&self) -> u64 {
        let now = self.inner.clock.now();
        self.inner.usage.lock().expect("usage lock").used(now)
    }

    /// Queues outbound messages for these records if an action watches their object.
    pub(crate) fn notify_outbound(&self, object: &str, ids: &[String]) {
        let Some(config) = &self.inner.config.outbound else {
            return;
        };
        if !config
            .objects
            .iter()
            .any(|o| o.eq_ignore_ascii_case(object))
        {
            return;
        }
        let now = self.inner.clock.now();
        self.inner
            .outbound
            .lock()
            .expect("outbound lock")
            .enqueue(object, ids, now);
        self.inner.outbound_wake.notify_one();
    }
}

/// What a REST handler answers. `Err` carries a ready vendor-shaped error, so the checks in
/// front of the work (API version, object, body, job) are `?`; axum renders an `Err` just
/// like an `Ok`, so both reach the wire as the same response.
pub(crate) type Reply = Result<Response, Response>;

/// The vendor's 404 for an unknown path, API version, object, record, field or job.
pub(crate) fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "The requested resource does not exist",
    )
}

async fn method_not_allowed(method: Method) -> Response {
    not_allowed(&method)
}

/// The vendor's 405 for a resource that does not serve `method`.
pub(crate) fn not_allowed(method: &Method) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        &format!("HTTP Method '{method}' not allowed."),
    )
}

/// A top-level REST error: `[{"message", "errorCode"}]`.
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!([{"message": message, "errorCode": code}])),
    )
        .into_response()
}

/// A single-record write the store refused: 400 with the record's error at the top level.
pub(crate) fn record_error(e: RecordError) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!([e.top_level()]))).into_response()
}

/// Parses a JSON request body or answers 400 `JSON_PARSER_ERROR` as the vendor does.
pub(crate) fn json_body(body: &[u8]) -> Result<Value, Response> {
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "JSON_PARSER_ERROR",
            &format!("Unexpected character: {e}"),
        )
    })
}

/// Parses `vNN.N` or answers 404 as the vendor does for an unknown version.
pub(crate) fn api_version(version: &str) -> Result<f64, Response> {
    version
        .strip_prefix('v')
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| (20.0..=70.0).contains(v) && version.contains('.'))
        .ok_or_else(not_found)
}

/// The request kind of a method and path (see the module docs).
pub fn classify(method: &Method, path: &str) -> &'static str {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match parts.as_slice() {
        ["services", "oauth2", "token"] => "token",
        ["services", "oauth2", "revoke"] => "revoke",
        ["services", "data"] => "versions",
        ["services", "data", _] => "resources",
        ["services", "data", _, rest @ ..] => match (method.as_str(), rest) {
            (_, ["limits"]) => "limits",
            (_, ["query"]) => "query",
            (_, ["queryAll"]) => "query_all",
            (_, ["query" | "queryAll", _]) => "query_more",
            (_, ["sobjects"]) => "describe_global",
            ("POST", ["sobjects", _]) => "sobject_create",
            (_, ["sobjects", _]) => "sobject_info",
            (_, ["sobjects", _, "describe"]) => "describe",
            (_, ["sobjects", _, "updated"]) => "updated",
            (_, ["sobjects", _, "deleted"]) => "deleted",
            ("GET", ["sobjects", _, _]) => "sobject_get",
            ("PATCH", ["sobjects", _, _]) => "sobject_update",
            ("DELETE", ["sobjects", _, _]) => "sobject_delete",
            ("GET", ["sobjects", _, _, _]) => "sobject_get_by_external",
            ("PATCH", ["sobjects", _, _, _]) => "sobject_upsert",
            ("POST", ["composite"]) => "composite",
            ("POST", ["composite", "sobjects"]) => "composite_create",
            ("PATCH", ["composite", "sobjects"]) => "composite_update",
            ("DELETE", ["composite", "sobjects"]) => "composite_delete",
            ("PATCH", ["composite", "sobjects", _, _]) => "composite_upsert",
            ("POST", ["jobs", "query"]) => "bulk2_query_create",
            ("GET", ["jobs", "query"]) => "bulk2_query_status",
            ("GET", ["jobs", "query", _]) => "bulk2_query_status",
            (_, ["jobs", "query", _]) => "bulk2_query_abort",
            (_, ["jobs", "query", _, "results"]) => "bulk2_query_results",
            ("POST", ["jobs", "ingest"]) => "bulk2_ingest_create",
            ("GET", ["jobs", "ingest"]) => "bulk2_ingest_list",
            ("PUT", ["jobs", "ingest", _, "batches"]) => "bulk2_ingest_upload",
            ("PATCH", ["jobs", "ingest", _]) => "bulk2_ingest_state",
            ("GET", ["jobs", "ingest", _]) => "bulk2_ingest_status",
            ("DELETE", ["jobs", "ingest", _]) => "bulk2_ingest_delete",
            ("GET", ["jobs", "ingest", _, _]) => "bulk2_ingest_results",
            _ => "unknown",
        },
        _ => "unknown",
    }
}

/// The most bytes the vendor takes in a URI, and in a URI and its headers together.
pub const MAX_URI_AND_HEADER_BYTES: usize = 16_384;

/// The vendor front end's refusal of a request over [`MAX_URI_AND_HEADER_BYTES`]: 414 for
/// the URI alone, 431 for URI and headers together; `None` when the request fits.
fn oversized(req: &Request) -> Option<Response> {
    let uri = req
        .uri()
        .path_and_query()
        .map_or(req.uri().path().len(), |p| p.as_str().len());
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let (status, reason) = if uri > MAX_URI_AND_HEADER_BYTES {
        (StatusCode::URI_TOO_LONG, "URI Too Long")
    } else if uri + headers > MAX_URI_AND_HEADER_BYTES {
        (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Request Header Fields Too Large",
        )
    } else {
        return None;
    };
    Some(
        (
            status,
            [("content-type", "text/html;charset=iso-8859-1")],
            format!(
                "<h1>Bad Message {}</h1><pre>reason: {reason}</pre>",
                status.as_u16()
            ),
        )
            .into_response(),
    )
}

fn counts_against_limit(kind: &str) -> bool {
    !matches!(kind, "token" | "revoke" | "versions")
}

/// The vendor's answer to a fault rule's `vendor_error` code.
fn vendor_error(kind: &str, code: &str, message: Option<String>) -> Response {
    if kind == "token" {
        let description = message.unwrap_or_else(|| "authentication failure".into());
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": code, "error_description": description})),
        )
            .into_response();
    }
    let (status, default) = match code {
        "INVALID_SESSION_ID" => (StatusCode::UNAUTHORIZED, "Session expired or invalid"),
        "REQUEST_LIMIT_EXCEEDED" => (StatusCode::FORBIDDEN, "TotalRequests Limit exceeded."),
        "SERVER_UNAVAILABLE" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Server temporarily unavailable",
        ),
        "NOT_FOUND" => (
            StatusCode::NOT_FOUND,
            "The requested resource does not exist",
        ),
        "INVALID_QUERY_LOCATOR" => (StatusCode::BAD_REQUEST, "invalid query locator"),
        "QUERY_TIMEOUT" => (
            StatusCode::BAD_REQUEST,
            "Your query request was running for too long.",
        ),
        "UNABLE_TO_LOCK_ROW" => (
            StatusCode::BAD_REQUEST,
            "unable to obtain exclusive access to this record",
        ),
        "INSUFFICIENT_ACCESS" => (
            StatusCode::FORBIDDEN,
            "insufficient access rights on cross-reference id",
        ),
        _ => (StatusCode::BAD_REQUEST, "injected by a sandbox fault rule"),
    };
    error(status, code, &message.unwrap_or_else(|| default.into()))
}

fn status_fault(status: u16, body: Option<Value>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match body {
        Some(Value::String(text)) => {
            (status, [("content-type", "text/html; charset=UTF-8")], text).into_response()
        }
        Some(body) => (status, axum::Json(body)).into_response(),
        None => {
            let (code, message) = match status.as_u16() {
                503 => ("SERVER_UNAVAILABLE", "Server temporarily unavailable"),
                500 => ("UNKNOWN_EXCEPTION", "An unexpected error occurred"),
                401 => ("INVALID_SESSION_ID", "Session expired or invalid"),
                403 => ("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
                404 => ("NOT_FOUND", "The requested resource does not exist"),
                _ => ("UNKNOWN_EXCEPTION", "injected by a sandbox fault rule"),
            };
            error(status, code, message)
        }
    }
}

/// A response whose body fails at once, so the connection closes without a full answer.
fn dropped() -> Response {
    let stream = futures::stream::once(async {
        Err::<bytes::Bytes, std::io::Error>(std::io::Error::other(
            "connection dropped by a sandbox fault rule",
        ))
    });
    Response::new(Body::from_stream(stream))
}

/// The per-request pipeline: kind, size limits, faults, session, daily limit, handler,
/// header, log.
async fn gate(State(sf): State<Salesforce>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let kind = classify(&method, &path);
    let inner = sf.inner();
    let at = inner.clock.now();
    if let Some(refused) = oversized(&req) {
        inner.log.record(RequestRecord {
            system: System::Salesforce,
            method: method.to_string(),
            path,
            kind: kind.to_string(),
            status: refused.status().as_u16(),
            at,
        });
        return refused;
    }
    let action = inner.faults.check(RequestFacts {
        system: System::Salesforce,
        method: method.as_str(),
        path: &path,
        kind,
    });
    let log = |status: u16| {
        inner.log.record(RequestRecord {
            system: System::Salesforce,
            method: method.to_string(),
            path: path.clone(),
            kind: kind.to_string(),
            status,
            at,
        })
    };
    let mut early = None;
    let mut lose = false;
    match action {
        None => {}
        Some(FaultAction::Drop) => {
            log(0);
            return dropped();
        }
        Some(FaultAction::Status { status, body }) => early = Some(status_fault(status, body)),
        Some(FaultAction::VendorError { code, message }) => {
            early = Some(vendor_error(kind, &code, message))
        }
        Some(FaultAction::MalformedJson) => {
            early = Some(
                (
                    StatusCode::OK,
                    [("content-type", "application/json;charset=UTF-8")],
                    "{\"totalSize\": 1, \"done\": tr",
                )
                    .into_response(),
            )
        }
        Some(FaultAction::Delay { millis }) => {
            tokio::time::sleep(std::time::Duration::from_millis(millis)).await
        }
        Some(FaultAction::ExpireTokens) => {
            inner.sessions.lock().expect("sessions lock").expire_all();
        }
        Some(FaultAction::LoseResponse) => lose = true,
        Some(FaultAction::FailRecord {
            index,
            code,
            message,
        }) => {
            req.extensions_mut().insert(FailRecord {
                index,
                code: code.unwrap_or_else(|| "UNABLE_TO_LOCK_ROW".into()),
                message,
            });
        }
    }
    let is_rest = path.starts_with("/services/data/v");
    let mut response = match early {
        Some(r) => r,
        None => {
            if matches!(kind, "token" | "revoke" | "versions") {
                next.run(req).await
            } else if let Err(r) = oauth::authenticate(inner, req.headers(), at) {
                r
            } else if let Err(r) = sf.count_call(kind, at) {
                r
            } else {
                next.run(req).await
            }
        }
    };
    if lose {
        log(0);
        return dropped();
    }
    if is_rest {
        let used = inner.usage.lock().expect("usage lock").used(at);
        let value = format!("api-usage={used}/{}", inner.config.daily_api_limit);
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert("sforce-limit-info", v);
        }
    }
    log(response.status().as_u16());
    response
}

impl Salesforce {
    /// Counts one call against the rolling daily limit, refusing it when used up.
    fn count_call(&self, kind: &str, now: Timestamp) -> Result<(), Response> {
        if !counts_against_limit(kind) {
            return Ok(());
        }
        let inner = self.inner();
        let mut usage = inner.usage.lock().expect("usage lock");
        if inner.config.limits && usage.used(now) >= inner.config.daily_api_limit {
            return Err(error(
                StatusCode::FORBIDDEN,
                "REQUEST_LIMIT_EXCEEDED",
                "TotalRequests Limit exceeded.",
            ));
        }
        usage.add(now);
        Ok(())
    }
}

async fn admin_edit_record(
    State(sf): State<Salesforce>,
    axum::extract::Path((object, id)): axum::extract::Path<(String, String)>,
    axum::Json(fields): axum::Json<serde_json::Map<String, Value>>,
) -> Response {
    match sf.edit_record(&object, &id, fields) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(message) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": message})),
        )
            .into_response(),
    }
}

async fn admin_refresh_token(State(sf): State<Salesforce>) -> Response {
    axum::Json(json!({"refresh_token": sf.issue_refresh_token()})).into_response()
}

async fn admin_deliver_outbound(State(sf): State<Salesforce>) -> Response {
    let delivered = sf.deliver_outbound().await;
    axum::Json(json!({"delivered": delivered})).into_response()
}

async fn admin_state(State(sf): State<Salesforce>) -> Response {
    axum::Json(sf.state()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_name_what_a_call_does() {
        let v = "/services/data/v62.0";
        let cases = [
            (Method::POST, "/services/oauth2/token".to_string(), "token"),
            (Method::GET, "/services/data/".to_string(), "versions"),
            (Method::GET, format!("{v}/query/"), "query"),
            (Method::GET, format!("{v}/queryAll"), "query_all"),
            (
                Method::GET,
                format!("{v}/query/01g5g0000000001AAA-2000"),
                "query_more",
            ),
            (
                Method::GET,
                format!("{v}/queryAll/01g5g0000000001AAA-2000"),
                "query_more",
            ),
            (
                Method::POST,
                format!("{v}/sobjects/MQL__c/"),
                "sobject_create",
            ),
            (
                Method::PATCH,
                format!("{v}/sobjects/MQL__c/External_Id__c/x"),
                "sobject_upsert",
            ),
            (
                Method::PATCH,
                format!("{v}/sobjects/Lead/00Q5g0000000001AAA"),
                "sobject_update",
            ),
            (
                Method::GET,
                format!("{v}/sobjects/Lead/describe"),
                "describe",
            ),
            (
                Method::POST,
                format!("{v}/composite/sobjects"),
                "composite_create",
            ),
            (
                Method::PATCH,
                format!("{v}/composite/sobjects"),
                "composite_update",
            ),
            (
                Method::PATCH,
                format!("{v}/composite/sobjects/MQL__c/External_Id__c"),
                "composite_upsert",
            ),
            (Method::POST, format!("{v}/composite/"), "composite"),
            (Method::GET, format!("{v}/limits/"), "limits"),
            (
                Method::GET,
                format!("{v}/jobs/query/750x/results"),
                "bulk2_query_results",
            ),
            (
                Method::PUT,
                format!("{v}/jobs/ingest/750x/batches"),
                "bulk2_ingest_upload",
            ),
            (
                Method::GET,
                format!("{v}/jobs/ingest/"),
                "bulk2_ingest_list",
            ),
            (
                Method::GET,
                format!("{v}/jobs/ingest/750x/failedResults/"),
                "bulk2_ingest_results",
            ),
            (Method::GET, "/nowhere".to_string(), "unknown"),
        ];
        for (method, path, kind) in cases {
            assert_eq!(classify(&method, &path), kind, "{method} {path}");
        }
    }
}
