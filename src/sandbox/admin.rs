//! The admin API both servers mount under `/__sandbox/` (it is not part of either vendor's
//! API, is never logged in the request log and never counts against limits): move the
//! clock, read and set fault rules, read the request log with counts by kind, read all state.
//! System-specific admin routes live with each emulator (`/__sandbox/salesforce/...`,
//! `/__sandbox/marketo/...`). It must not change records itself.
//!
//! Routes:
//! - `GET /__sandbox/clock` -> `{"now", "frozen"}`
//! - `POST /__sandbox/clock/advance` `{"seconds": n}` -> `{"now", "frozen"}`
//! - `POST /__sandbox/clock/set` `{"at": "2026-11-02T12:00:00Z"}` -> `{"now", "frozen"}`
//! - `GET /__sandbox/faults` -> array of rules; `PUT` replaces them (array), `POST` adds one
//!   rule (object), `DELETE` clears them
//! - `GET /__sandbox/log[?system=salesforce|marketo]` -> `{"records": [...], "counts":
//!   {"salesforce": {"query": n, ...}, "marketo": {...}}, "total": n}`; `DELETE` clears it
//! - `GET /__sandbox/state` -> `{"now", "world": {"seed", "generated_at", "people"},
//!   "faults", "salesforce": {...}, "marketo": {...}}`

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::clock::SandboxClock;
use super::faults::{FaultRule, Faults, System};
use super::log::RequestLog;
use super::marketo::Marketo;
use super::salesforce::Salesforce;
use super::world::World;

/// What the admin routes reach.
#[derive(Clone)]
pub struct AdminState {
    pub clock: SandboxClock,
    pub faults: Arc<Faults>,
    pub log: Arc<RequestLog>,
    pub salesforce: Salesforce,
    pub marketo: Marketo,
    pub world: Arc<World>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/__sandbox/clock", get(clock))
        .route("/__sandbox/clock/advance", post(advance))
        .route("/__sandbox/clock/set", post(set_clock))
        .route(
            "/__sandbox/faults",
            get(faults)
                .put(replace_faults)
                .post(add_fault)
                .delete(clear_faults),
        )
        .route("/__sandbox/log", get(log).delete(clear_log))
        .route("/__sandbox/state", get(state_all))
        .with_state(state)
}

fn clock_json(clock: &SandboxClock) -> Value {
    json!({"now": clock.now().to_string(), "frozen": clock.is_frozen()})
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response()
}

async fn clock(State(s): State<AdminState>) -> Json<Value> {
    Json(clock_json(&s.clock))
}

#[derive(serde::Deserialize)]
struct Advance {
    seconds: i64,
}

async fn advance(State(s): State<AdminState>, Json(by): Json<Advance>) -> Json<Value> {
    s.clock.advance(SignedDuration::from_secs(by.seconds));
    Json(clock_json(&s.clock))
}

#[derive(serde::Deserialize)]
struct SetClock {
    at: String,
}

async fn set_clock(State(s): State<AdminState>, Json(to): Json<SetClock>) -> Response {
    match to.at.parse::<Timestamp>() {
        Ok(at) => {
            s.clock.set(at);
            Json(clock_json(&s.clock)).into_response()
        }
        Err(e) => bad_request(format!("`at` is not an RFC 3339 instant: {e}")),
    }
}

async fn faults(State(s): State<AdminState>) -> Json<Vec<FaultRule>> {
    Json(s.faults.rules())
}

async fn replace_faults(State(s): State<AdminState>, body: bytes::Bytes) -> Response {
    match serde_json::from_slice::<Vec<FaultRule>>(&body) {
        Ok(rules) => {
            s.faults.replace(rules);
            Json(s.faults.rules()).into_response()
        }
        Err(e) => bad_request(format!("not a JSON array of fault rules: {e}")),
    }
}

async fn add_fault(State(s): State<AdminState>, body: bytes::Bytes) -> Response {
    match serde_json::from_slice::<FaultRule>(&body) {
        Ok(rule) => {
            s.faults.add(rule);
            Json(s.faults.rules()).into_response()
        }
        Err(e) => bad_request(format!("not a fault rule: {e}")),
    }
}

async fn clear_faults(State(s): State<AdminState>) -> StatusCode {
    s.faults.clear();
    StatusCode::NO_CONTENT
}

#[derive(serde::Deserialize)]
struct LogFilter {
    system: Option<System>,
}

async fn log(State(s): State<AdminState>, Query(filter): Query<LogFilter>) -> Json<Value> {
    let records: Vec<_> = s
        .log
        .snapshot()
        .into_iter()
        .filter(|r| filter.system.is_none_or(|sys| sys == r.system))
        .collect();
    let mut counts = serde_json::Map::new();
    for system in [System::Salesforce, System::Marketo] {
        counts.insert(system.as_str().into(), json!({}));
    }
    for r in &records {
        let by_kind = counts
            .get_mut(r.system.as_str())
            .and_then(Value::as_object_mut)
            .expect("both systems present");
        let n = by_kind.get(&r.kind).and_then(Value::as_u64).unwrap_or(0);
        by_kind.insert(r.kind.clone(), json!(n + 1));
    }
    Json(json!({"total": records.len(), "counts": counts, "records": records}))
}

async fn clear_log(State(s): State<AdminState>) -> StatusCode {
    s.log.clear();
    StatusCode::NO_CONTENT
}

async fn state_all(State(s): State<AdminState>) -> Json<Value> {
    Json(json!({
        "now": s.clock.now().to_string(),
        "world": {"seed": s.world.seed, "generated_at": s.world.generated_at.to_string(),
                  "people": s.world.people.len()},
        "faults": s.faults.rules(),
        "salesforce": s.salesforce.state(),
        "marketo": s.marketo.state(),
    }))
}
