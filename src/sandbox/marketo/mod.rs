//! The Marketo emulator: identity, the Lead Database REST API (leads, describe, activity
//! types, paging tokens, activities, lead changes, usage), bulk extract of leads and
//! activities, webhook calls on score changes, form fills and program status changes, and
//! admin routes under `/__sandbox/marketo/`.
//!
//! Its activities are the world's history (New Lead, Change Score, Fill Out Form, Change
//! Status in Progression) and what happens while it runs: lead syncs through the API, and the
//! triggers tests pull ([`Marketo::apply_score_change`], [`Marketo::fill_out_form`],
//! [`Marketo::change_program_status`], or their admin routes), each as a smart campaign would
//! make it, "Call Webhook" step included.
//!
//! Every Marketo request is (1) checked against the shared [`Faults`] with its kind, (2)
//! authenticated by `Authorization: Bearer` only (603 missing, 601 unknown, 602 expired),
//! (3) counted against the limits (607 daily quota, 606 at more than 100 calls in 20 s, 615
//! at more than 10 in flight) unless `limits` is off, and (4) recorded in the shared
//! [`RequestLog`] with its kind and final HTTP status. Vendor errors are HTTP 200 with
//! `success: false`, as Marketo answers. `POST` with `_method=GET` (in the query or a form
//! body) is served as the `GET` of the same path.
//!
//! Request kinds (the `kind` of log records and fault rules): `identity`, `leads_by_filter`,
//! `lead_by_id`, `leads_sync`, `leads_describe`, `leads_describe2`, `activity_types`,
//! `paging_token`, `activities`, `lead_changes`, `usage`, `bulk_leads_create`,
//! `bulk_leads_enqueue`, `bulk_leads_status`, `bulk_leads_cancel`, `bulk_leads_file`,
//! `bulk_leads_list`, the same six `bulk_activities_*`, and `unknown` (no such route).
//!
//! Faults: `vendor_error` answers 200 `success:false` with that code; `expire_tokens`
//! expires every token first, so the call gets 602; `fail_record` skips one record of a
//! `leads_sync` batch with `reasons`; `delay` holds the call in flight; `drop` aborts the
//! response; `status` and `malformed_json` answer as told.
//!
//! It shares no code with `src/connectors` or `src/engine`, and reads time only from
//! the [`SandboxClock`].

mod activities;
mod assets;
mod bulk;
mod envelope;
mod identity;
mod leads;
mod limits;
mod routes;
mod webhook;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jiff::Timestamp;
use serde_json::{Map, Value, json};

use self::activities::{
    Activity, ActivityIndex, CHANGE_DATA_VALUE, CHANGE_SCORE, Detail, FieldChange, NEW_LEAD,
    OtherDetail,
};
use self::assets::{Catalogue, Members};
use self::bulk::{Jobs, Target};
use self::envelope::{ApiError, Reply, RequestIds};
use self::identity::TokenStore;
use self::leads::{FieldDef, Lead, LeadTable};
use self::limits::Limits;
use self::routes::{Op, Params, Route};
use self::webhook::{TokenContext, WebhookCall};
use super::clock::SandboxClock;
use super::faults::{FaultAction, Faults, RequestFacts, System};
use super::log::{RequestLog, RequestRecord};
use super::world::{EngagementKind, Program, ScoreField, World};

/// Largest request body Marketo accepts (413 above it).
const MAX_BODY: usize = 1024 * 1024;
/// Longest request URI Marketo accepts (414 above it; clients then tunnel with `_method=GET`).
const MAX_URI: usize = 8 * 1024;

/// How the Marketo emulator is set up.
#[derive(Clone, Debug)]
pub struct MarketoConfig {
    pub client_id: String,
    pub client_secret: String,
    /// `123-ABC-456` style.
    pub munchkin_id: String,
    /// 100 calls / 20 s (606), 10 concurrent (615), daily quota (607).
    pub limits: bool,
    /// Calls per Central-time day; default 50,000.
    pub daily_quota: u64,
    /// Lifetime of a new access token; default 3,600 s.
    pub token_ttl_secs: i64,
    pub webhook: Option<MarketoWebhook>,
    /// Bulk export timing. `None` (the default, for clients that poll in a tight loop): a
    /// job moves one state per status or list call. `Some(s)`: Marketo's own, on the sandbox
    /// clock: a job's status changes at most once per `s` seconds (Marketo says 60), whether
    /// or not anyone polls, with 2 jobs Processing at most.
    pub export_status_interval_secs: Option<u64>,
    /// Bytes of bulk export files per Central-time day; default 500 MB (1029 past it).
    pub export_daily_bytes: u64,
}

/// A "Call Webhook" flow step fired on every score change, form fill and program status
/// change made while the sandbox runs.
#[derive(Clone, Debug)]
pub struct MarketoWebhook {
    pub url: String,
    /// Body template with `{{lead.Lead Score}}`-style tokens.
    pub template: String,
    pub headers: Vec<(String, String)>,
}

impl MarketoConfig {
    pub fn sandbox_default() -> Self {
        Self {
            client_id: "sandbox-marketo-client".into(),
            client_secret: "sandbox-marketo-secret".into(),
            munchkin_id: "123-ABC-456".into(),
            limits: true,
            daily_quota: 50_000,
            token_ttl_secs: 3600,
            webhook: None,
            export_status_interval_secs: None,
            export_daily_bytes: bulk::DAILY_EXPORT_BYTES,
        }
    }
}

/// The emulator; cheap to clone.
#[derive(Clone)]
pub struct Marketo {
    inner: Arc<Inner>,
}

struct Inner {
    config: MarketoConfig,
    clock: SandboxClock,
    faults: Arc<Faults>,
    log: Arc<RequestLog>,
    tokens: TokenStore,
    limits: Limits,
    ids: RequestIds,
    campaigns: HashMap<i64, String>,
    catalogue: Catalogue,
    db: Mutex<Db>,
    webhook_calls: Arc<Mutex<Vec<WebhookCall>>>,
    webhook_outstanding: Arc<tokio::sync::Semaphore>,
}

struct Db {
    leads: LeadTable,
    activities: ActivityIndex,
    members: Members,
    jobs: Jobs,
}

fn score_def(name: &str) -> &'static FieldDef {
    leads::field(name).expect("score fields are in the catalogue")
}

fn change_score(
    lead_id: i64,
    at: Timestamp,
    field: &'static FieldDef,
    old: i64,
    new: i64,
    campaign: Option<(i64, Arc<str>)>,
) -> Activity {
    Activity {
        id: 0,
        lead_id,
        at,
        type_id: CHANGE_SCORE,
        campaign_id: campaign.as_ref().map(|c| c.0),
        primary_id: Some(field.id),
        detail: Detail::ChangeScore {
            field,
            old,
            new,
            campaign: campaign.map(|c| c.1),
        },
    }
}

impl Marketo {
    pub fn new(
        world: &World,
        config: MarketoConfig,
        clock: SandboxClock,
        faults: Arc<Faults>,
        log: Arc<RequestLog>,
    ) -> Self {
        let campaigns: HashMap<i64, String> = world
            .campaigns
            .iter()
            .map(|c| (c.id, c.name.clone()))
            .collect();
        let mut entries = Vec::with_capacity(
            world.people.len() + world.score_changes.len() + world.engagements.len(),
        );
        for (i, p) in world.people.iter().enumerate() {
            entries.push(Activity {
                id: 40_000_001 + i as i64,
                lead_id: p.map_id,
                at: p.created_at,
                type_id: NEW_LEAD,
                campaign_id: None,
                primary_id: Some(p.map_id),
                detail: Detail::NewLead { source: "New lead" },
            });
        }
        // One copy of each campaign's name, shared by its activities.
        let names: HashMap<i64, Arc<str>> = campaigns
            .iter()
            .map(|(id, name)| (*id, Arc::from(name.as_str())))
            .collect();
        let no_name: Arc<str> = Arc::from("");
        for c in &world.score_changes {
            let name = names.get(&c.campaign_id).unwrap_or(&no_name).clone();
            let mut a = change_score(
                c.map_id,
                c.at,
                score_def(leads::score_field_name(c.field)),
                c.old,
                c.new,
                Some((c.campaign_id, name)),
            );
            a.id = c.activity_id;
            entries.push(a);
        }
        let leads = LeadTable::new(&world.people);
        let catalogue = Catalogue::new(&world.forms, &world.programs);
        let mut members = Members::default();
        for e in &world.engagements {
            let campaign = names.get(&e.campaign_id).unwrap_or(&no_name).clone();
            let mut a = match e.kind {
                EngagementKind::FormFill { form_id } => {
                    let form = catalogue.form(form_id).expect("the world's forms");
                    let lead = leads.by_id.get(&e.map_id).expect("the world's people");
                    let fields = assets::form_fields(&form, lead);
                    activities::form_fill(e.map_id, e.at, form, fields, Some(e.campaign_id))
                }
                EngagementKind::ProgramStatus {
                    program_id,
                    new_status_id,
                    acquired_by,
                    ..
                } => {
                    let program = catalogue.program(program_id).expect("the world's programs");
                    let new = position(&program, new_status_id);
                    let moved =
                        members.change(program_id, e.map_id, new, Some(acquired_by), e.at, None);
                    activities::program_status(
                        e.map_id,
                        e.at,
                        program,
                        (moved.old, new),
                        (moved.member_id, moved.acquired_by),
                        Some((e.campaign_id, campaign)),
                    )
                }
            };
            a.id = e.activity_id;
            entries.push(a);
        }
        let limits = Limits::new(config.limits, config.daily_quota);
        let jobs = Jobs::new(
            (config.export_status_interval_secs).map(|s| jiff::SignedDuration::from_secs(s as i64)),
            config.export_daily_bytes,
        );
        Self {
            inner: Arc::new(Inner {
                config,
                clock,
                faults,
                log,
                tokens: TokenStore::default(),
                limits,
                ids: RequestIds::default(),
                campaigns,
                catalogue,
                db: Mutex::new(Db {
                    leads,
                    activities: ActivityIndex::new(entries),
                    members,
                    jobs,
                }),
                webhook_calls: Arc::new(Mutex::new(Vec::new())),
                webhook_outstanding: Arc::new(tokio::sync::Semaphore::new(
                    webhook::MAX_OUTSTANDING,
                )),
            }),
        }
    }

    /// Every Marketo route (identity + REST + bulk) at the server root, plus this system's admin
    /// routes under /__sandbox/marketo/...
    pub fn router(&self) -> Router {
        Router::new()
            .route("/__sandbox/marketo/state", get(admin_state))
            .route("/__sandbox/marketo/score_change", post(admin_score_change))
            .route("/__sandbox/marketo/form_fill", post(admin_form_fill))
            .route(
                "/__sandbox/marketo/program_status",
                post(admin_program_status),
            )
            .route(
                "/__sandbox/marketo/export_failures",
                post(admin_export_failures),
            )
            .fallback(serve)
            .with_state(self.clone())
    }

    /// Applies a score change as a smart campaign would: changes the field (and leadScore when a
    /// part changes), records a Change Score activity (type 22), fires the webhook if configured.
    pub fn apply_score_change(
        &self,
        map_id: i64,
        field: ScoreField,
        delta: i64,
        campaign_id: Option<i64>,
    ) -> Result<(), String> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let campaign = self.campaign(campaign_id);
        let mut names = vec![leads::score_field_name(field)];
        if field != ScoreField::LeadScore {
            names.push("leadScore");
        }
        let lead = {
            let mut db = inner.db.lock().expect("marketo db lock");
            let Db {
                leads, activities, ..
            } = &mut *db;
            let lead = leads
                .by_id
                .get_mut(&map_id)
                .ok_or_else(|| format!("no Marketo lead with id {map_id}"))?;
            for name in names {
                let old = lead.score(name);
                let new = old + delta;
                lead.values.insert(score_def(name).name, json!(new));
                activities.push(change_score(
                    map_id,
                    now,
                    score_def(name),
                    old,
                    new,
                    campaign
                        .as_ref()
                        .map(|(id, n)| (*id, Arc::from(n.as_str()))),
                ));
            }
            lead.values
                .insert("updatedAt", json!(leads::format_time(now)));
            lead.clone()
        };
        self.call_webhook(&lead, campaign, now);
        Ok(())
    }

    /// A lead fills out a form, as a trigger campaign (`campaign_id`) sees it: records a Fill
    /// Out Form activity (type 2) at the clock's now, fires the webhook if configured, and
    /// returns the activity's id.
    pub fn fill_out_form(
        &self,
        map_id: i64,
        form_id: i64,
        campaign_id: Option<i64>,
    ) -> Result<i64, String> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let form = inner.catalogue.form(form_id)?;
        let campaign = self.campaign(campaign_id);
        let (id, lead) = {
            let mut db = inner.db.lock().expect("marketo db lock");
            let lead = db
                .leads
                .by_id
                .get(&map_id)
                .ok_or_else(|| format!("no Marketo lead with id {map_id}"))?
                .clone();
            let fields = assets::form_fields(&form, &lead);
            let activity = activities::form_fill(map_id, now, form, fields, campaign_id);
            (db.activities.push(activity), lead)
        };
        self.call_webhook(&lead, campaign, now);
        Ok(id)
    }

    /// A smart campaign's Change Program Status step: moves the lead to `new_status` (a status
    /// name of the program's channel, case-insensitive) of the program, joining it first if it
    /// is not a member, records a Change Status in Progression activity (type 104) at the
    /// clock's now, fires the webhook if configured, and returns the activity's id.
    pub fn change_program_status(
        &self,
        map_id: i64,
        program_id: i64,
        new_status: &str,
        campaign_id: Option<i64>,
    ) -> Result<i64, String> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let program = inner.catalogue.program(program_id)?;
        let (new, _) = program.status(new_status).ok_or_else(|| {
            format!(
                "program {program_id} ({}) has no status '{new_status}'; its {} channel's statuses are {}",
                program.name,
                program.channel,
                program
                    .statuses
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let new = u8::try_from(new).expect("a channel has few statuses");
        let campaign = self.campaign(campaign_id);
        let (id, lead) = {
            let mut db = inner.db.lock().expect("marketo db lock");
            let Db {
                leads,
                activities,
                members,
                ..
            } = &mut *db;
            let lead = leads
                .by_id
                .get(&map_id)
                .ok_or_else(|| format!("no Marketo lead with id {map_id}"))?
                .clone();
            let created = lead
                .get("createdAt")
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok());
            let moved = members.change(program_id, map_id, new, None, now, created);
            let activity = activities::program_status(
                map_id,
                now,
                program,
                (moved.old, new),
                (moved.member_id, moved.acquired_by),
                campaign
                    .as_ref()
                    .map(|(id, name)| (*id, Arc::from(name.as_str()))),
            );
            (activities.push(activity), lead)
        };
        self.call_webhook(&lead, campaign, now);
        Ok(id)
    }

    /// The campaign `id` with its name (`Campaign <id>` for one the world does not have).
    fn campaign(&self, id: Option<i64>) -> Option<(i64, String)> {
        id.map(|id| {
            let name = (self.inner.campaigns.get(&id).cloned())
                .unwrap_or_else(|| format!("Campaign {id}"));
            (id, name)
        })
    }

    /// The configured "Call Webhook" step, for `lead` as it is after the change.
    fn call_webhook(&self, lead: &Lead, campaign: Option<(i64, String)>, now: Timestamp) {
        let inner = &self.inner;
        let Some(hook) = &inner.config.webhook else {
            return;
        };
        let ctx = TokenContext {
            lead,
            campaign,
            now,
            munchkin_id: &inner.config.munchkin_id,
        };
        let body = webhook::render(&hook.template, &ctx, true);
        let headers = hook
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), webhook::render(v, &ctx, false)))
            .collect();
        webhook::fire(
            hook,
            lead.id,
            body,
            headers,
            inner.webhook_outstanding.clone(),
            inner.webhook_calls.clone(),
        );
    }

    /// The next `skip` bulk export jobs to finish complete; the `times` after them fail with
    /// `errorMsg` `message` (Marketo gives no reason a client could act on; a failed job must
    /// be created again).
    pub fn fail_exports(&self, skip: u32, times: u32, message: &str) {
        let mut db = self.inner.db.lock().expect("marketo db lock");
        db.jobs.fail_next(skip, times, message);
    }

    /// All state as JSON for the admin API and tests.
    pub fn state(&self) -> Value {
        let inner = &self.inner;
        let db = inner.db.lock().expect("marketo db lock");
        let leads: Vec<Value> = db
            .leads
            .by_id
            .values()
            .map(|l| {
                Value::Object(
                    l.values
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.clone()))
                        .collect(),
                )
            })
            .collect();
        let recent: Vec<Value> = db
            .activities
            .entries
            .iter()
            .rev()
            .take(100)
            .map(Activity::record)
            .collect();
        let today = limits::quota_day(inner.clock.now());
        json!({
            "munchkin_id": inner.config.munchkin_id,
            "limits": inner.config.limits,
            "calls_today": inner.limits.used_on(today),
            "daily_quota": inner.config.daily_quota,
            "in_flight": inner.limits.in_flight(),
            "tokens_issued": inner.tokens.count(),
            "leads": leads,
            "activity_count": db.activities.entries.len(),
            "program_members": db.members.count(),
            "forms": inner.catalogue.forms_by_id(),
            "programs": inner.catalogue.programs_by_id(),
            "recent_activities": recent,
            "export_jobs": db.jobs.jobs.iter().map(bulk::Job::record).collect::<Vec<_>>(),
            "webhook_calls": *inner.webhook_calls.lock().expect("webhook calls lock"),
        })
    }
}

async fn admin_state(State(m): State<Marketo>) -> Response {
    envelope::plain_json(StatusCode::OK, &m.state())
}

/// `POST /__sandbox/marketo/export_failures` `{"skip": 0, "times": 1, "message": "..."}`.
async fn admin_export_failures(State(m): State<Marketo>, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let count = |key: &str, default: u64| v[key].as_u64().unwrap_or(default) as u32;
    if !v.is_object() {
        let hint =
            "body must be JSON: {\"skip\": 0, \"times\": 1, \"message\": \"Internal error\"}";
        return envelope::plain_json(StatusCode::BAD_REQUEST, &json!({"error": hint}));
    }
    let message = v["message"].as_str().unwrap_or("Internal error");
    m.fail_exports(count("skip", 0), count("times", 1), message);
    envelope::plain_json(StatusCode::OK, &json!({"ok": true}))
}

/// The position of status `id` in the program's statuses.
fn position(program: &Program, id: i64) -> u8 {
    let at = (program.statuses.iter())
        .position(|s| s.id == id)
        .expect("a status of the program's channel");
    u8::try_from(at).expect("a channel has few statuses")
}

/// `POST /__sandbox/marketo/form_fill` `{"map_id": 1000001, "form_id": 1001, "campaign_id":
/// 1001}` (campaign optional) -> `{"ok": true, "activity_id": n}`.
async fn admin_form_fill(State(m): State<Marketo>, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (Some(map_id), Some(form_id)) = (v["map_id"].as_i64(), v["form_id"].as_i64()) else {
        let hint = "body must be JSON with integers map_id and form_id: {\"map_id\": 1000001, \"form_id\": 1001, \"campaign_id\": 1001}";
        return envelope::plain_json(StatusCode::BAD_REQUEST, &json!({"error": hint}));
    };
    triggered(m.fill_out_form(map_id, form_id, v["campaign_id"].as_i64()))
}

/// `POST /__sandbox/marketo/program_status` `{"map_id": 1000001, "program_id": 2001,
/// "status": "Attended", "campaign_id": 1002}` (campaign optional) -> `{"ok": true,
/// "activity_id": n}`.
async fn admin_program_status(State(m): State<Marketo>, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (Some(map_id), Some(program_id), Some(status)) = (
        v["map_id"].as_i64(),
        v["program_id"].as_i64(),
        v["status"].as_str(),
    ) else {
        let hint = "body must be JSON with integers map_id and program_id and a status name: {\"map_id\": 1000001, \"program_id\": 2001, \"status\": \"Attended\", \"campaign_id\": 1002}";
        return envelope::plain_json(StatusCode::BAD_REQUEST, &json!({"error": hint}));
    };
    triggered(m.change_program_status(map_id, program_id, status, v["campaign_id"].as_i64()))
}

/// The answer of an admin trigger: the new activity's id, or 404 with what was not found.
fn triggered(outcome: Result<i64, String>) -> Response {
    match outcome {
        Ok(id) => envelope::plain_json(StatusCode::OK, &json!({"ok": true, "activity_id": id})),
        Err(e) => envelope::plain_json(StatusCode::NOT_FOUND, &json!({"error": e})),
    }
}

async fn admin_score_change(State(m): State<Marketo>, body: Bytes) -> Response {
    let bad = |status: StatusCode, message: String| {
        envelope::plain_json(status, &json!({"error": message}))
    };
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return bad(StatusCode::BAD_REQUEST, "body must be JSON: {\"map_id\": 1000001, \"field\": \"behaviorScore\", \"delta\": 10, \"campaign_id\": 1000}".into());
    };
    let field = match v["field"]
        .as_str()
        .unwrap_or("leadScore")
        .to_ascii_lowercase()
        .as_str()
    {
        "leadscore" | "lead_score" => ScoreField::LeadScore,
        "behaviorscore" | "behavior_score" => ScoreField::BehaviorScore,
        "demographicscore" | "demographic_score" => ScoreField::DemographicScore,
        other => {
            return bad(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown score field '{other}': use leadScore, behaviorScore or demographicScore"
                ),
            );
        }
    };
    let (Some(map_id), Some(delta)) = (v["map_id"].as_i64(), v["delta"].as_i64()) else {
        return bad(
            StatusCode::BAD_REQUEST,
            "map_id and delta must be integers".into(),
        );
    };
    match m.apply_score_change(map_id, field, delta, v["campaign_id"].as_i64()) {
        Ok(()) => envelope::plain_json(StatusCode::OK, &json!({"ok": true})),
        Err(e) => bad(StatusCode::NOT_FOUND, e),
    }
}

/// Every Marketo call: parse, fault, route, authenticate, limit, serve, log.
async fn serve(State(m): State<Marketo>, request: Request) -> Response {
    let arrived = m.inner.clock.now();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let raw_method = parts.method.as_str().to_string();
    let uri_len = parts.uri.path().len() + parts.uri.query().map_or(0, |q| q.len() + 1);
    let (response, kind, status) = match to_bytes(body, MAX_BODY).await {
        _ if uri_len > MAX_URI => (
            (StatusCode::URI_TOO_LONG, "Request-URI Too Long").into_response(),
            "unknown",
            414,
        ),
        Err(_) => (
            (StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large").into_response(),
            "unknown",
            413,
        ),
        Ok(bytes) => {
            let mut params = Params(
                parts
                    .uri
                    .query()
                    .map(routes::parse_form)
                    .unwrap_or_default(),
            );
            let mut method = raw_method.clone();
            let is_form = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
            if method == "POST" {
                let form = if is_form {
                    routes::parse_form(&String::from_utf8_lossy(&bytes))
                } else {
                    Vec::new()
                };
                let tunnelled = params.get("_method") == Some("GET")
                    || form.iter().any(|(k, v)| k == "_method" && v == "GET");
                if tunnelled {
                    method = "GET".into();
                    params.0.extend(form);
                }
            }
            let found = routes::find(&method, &path);
            let kind = found.as_ref().map_or("unknown", |(r, _)| r.kind);
            let (response, status) = m
                .handle(found, &method, &path, kind, params, bytes, &parts.headers)
                .await;
            (response, kind, status)
        }
    };
    m.inner.log.record(RequestRecord {
        system: System::Marketo,
        method: raw_method,
        path,
        kind: kind.to_string(),
        status,
        at: arrived,
    });
    response
}

fn dropped() -> Response {
    let stream = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other(
            "connection dropped by a sandbox fault",
        ))
    });
    Response::new(Body::from_stream(stream))
}

impl Marketo {
    #[allow(clippy::too_many_arguments)]
    async fn handle(
        &self,
        found: routes::Found,
        method: &str,
        path: &str,
        kind: &str,
        params: Params,
        body: Bytes,
        headers: &HeaderMap,
    ) -> (Response, u16) {
        let inner = &self.inner;
        let now = inner.clock.now();
        let request_id = inner.ids.next(now.as_millisecond());
        let fail = |e: ApiError| (envelope::failure(request_id.clone(), &e), 200);
        let mut delay = None;
        let mut fail_record = None;
        let mut lose = false;
        match inner.faults.check(RequestFacts {
            system: System::Marketo,
            method,
            path,
            kind,
        }) {
            None => {}
            Some(FaultAction::Status { status, body }) => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let body = body.unwrap_or_else(|| {
                    json!({"requestId": request_id, "success": false,
                           "errors": [{"code": "611", "message": "System error"}]})
                });
                return (envelope::plain_json(status, &body), status.as_u16());
            }
            Some(FaultAction::VendorError { code, message }) => {
                let mut error = ApiError::standard(&code);
                if let Some(message) = message {
                    error.message = message;
                }
                return fail(error);
            }
            Some(FaultAction::Delay { millis }) => delay = Some(Duration::from_millis(millis)),
            Some(FaultAction::Drop) => return (dropped(), 0),
            Some(FaultAction::LoseResponse) => lose = true,
            Some(FaultAction::ExpireTokens) => inner.tokens.expire_all(now),
            Some(FaultAction::FailRecord {
                index,
                code,
                message,
            }) => {
                let code = code.unwrap_or_else(|| "1003".into());
                let mut error = ApiError::standard(&code);
                if let Some(message) = message {
                    error.message = message;
                }
                fail_record = Some((index, error));
            }
            Some(FaultAction::MalformedJson) => {
                let mut response =
                    (StatusCode::OK, "{\"requestId\":\"0#0\",\"success\":tru").into_response();
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    "application/json".parse().expect("static"),
                );
                return (response, 200);
            }
        }
        let (route, args) = match found {
            Ok(found) => found,
            Err(true) => return fail(ApiError::standard("605")),
            Err(false) => return fail(ApiError::standard("610")),
        };
        if route.op == Op::Identity {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            return self.identity(&params, now);
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let client_id = match inner.tokens.check(bearer, now) {
            Ok(client) => client,
            Err(e) => return fail(e),
        };
        let _slot = match inner.limits.admit(now) {
            Ok(slot) => slot,
            Err(e) => return fail(e),
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let answer = match self.dispatch(
            route,
            &args,
            &params,
            &body,
            is_json,
            headers,
            &client_id,
            fail_record,
        ) {
            Ok(Reply::Envelope(fields)) => (envelope::success(request_id, fields), 200),
            Ok(Reply::Raw(response)) => {
                let status = response.status().as_u16();
                (response, status)
            }
            Err(e) => fail(e),
        };
        if lose {
            return (dropped(), 0);
        }
        answer
    }

    fn identity(&self, params: &Params, now: Timestamp) -> (Response, u16) {
        let config = &self.inner.config;
        let grant_ok = params.get("grant_type") == Some("client_credentials");
        let id_ok = params.get("client_id") == Some(config.client_id.as_str());
        let secret_ok = params.get("client_secret") == Some(config.client_secret.as_str());
        if !grant_ok {
            let body = json!({"error": "invalid_request", "error_description": "grant_type must be client_credentials"});
            return (envelope::plain_json(StatusCode::BAD_REQUEST, &body), 400);
        }
        if !(id_ok && secret_ok) {
            let body =
                json!({"error": "unauthorized", "error_description": "Bad client credentials"});
            return (envelope::plain_json(StatusCode::UNAUTHORIZED, &body), 401);
        }
        let (token, expires_in) =
            self.inner
                .tokens
                .token(&config.client_id, now, config.token_ttl_secs);
        let body = json!({"access_token": token, "token_type": "bearer", "expires_in": expires_in,
                          "scope": "apiuser@sandbox.example"});
        let mut response = envelope::plain_json(StatusCode::OK, &body);
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, "no-store".parse().expect("static"));
        (response, 200)
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &self,
        route: &Route,
        args: &[(String, String)],
        params: &Params,
        body: &Bytes,
        is_json: bool,
        headers: &HeaderMap,
        client_id: &str,
        fail_record: Option<(usize, ApiError)>,
    ) -> Result<Reply, ApiError> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let arg = |name: &str| {
            args.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        let json_body = || -> Result<Value, ApiError> {
            if !is_json {
                return Err(ApiError::standard("612"));
            }
            serde_json::from_slice(body).map_err(|_| ApiError::standard("609"))
        };
        let mut db = inner.db.lock().expect("marketo db lock");
        let db = &mut *db;
        let page_reply = |page: activities::Page| {
            let mut fields = Map::new();
            fields.insert("result".into(), Value::Array(page.records));
            fields.insert("nextPageToken".into(), json!(page.token));
            fields.insert("moreResult".into(), json!(page.more));
            Reply::Envelope(fields)
        };
        Ok(match route.op {
            Op::Identity => unreachable!("identity is served before authentication"),
            Op::LeadsByFilter => {
                let (records, next) = db.leads.by_filter(params)?;
                let mut fields = Map::new();
                fields.insert("result".into(), Value::Array(records));
                if let Some(last) = next {
                    fields.insert(
                        "nextPageToken".into(),
                        json!(leads::encode_lead_token(last)),
                    );
                }
                fields.insert("moreResult".into(), json!(next.is_some()));
                Reply::Envelope(fields)
            }
            Op::LeadById => {
                let fields = leads::requested_fields(params)?;
                let id: i64 = arg("leadId").parse().map_err(|_| {
                    ApiError::new("1003", format!("Invalid lead id '{}'", arg("leadId")))
                })?;
                Reply::result(
                    db.leads
                        .by_id
                        .get(&id)
                        .map(|l| l.project(&fields))
                        .into_iter()
                        .collect(),
                )
            }
            Op::SyncLeads => {
                let request = json_body()?;
                let outcome = db.leads.sync(&request, now, fail_record)?;
                for id in &outcome.created {
                    db.activities.push(Activity {
                        id: 0,
                        lead_id: *id,
                        at: now,
                        type_id: NEW_LEAD,
                        campaign_id: None,
                        primary_id: Some(*id),
                        detail: Detail::NewLead {
                            source: "Web service API",
                        },
                    });
                }
                for change in outcome.changes {
                    db.activities.push(Activity {
                        id: 0,
                        lead_id: change.lead_id,
                        at: now,
                        type_id: CHANGE_DATA_VALUE,
                        campaign_id: None,
                        primary_id: Some(change.field.id),
                        detail: Detail::Other(Box::new(OtherDetail {
                            primary_value: Some(change.field.display.to_string()),
                            attributes: vec![
                                ("New Value", change.new.clone()),
                                ("Old Value", change.old.clone()),
                                ("Reason", json!("Web service API")),
                                ("Source", json!("Web service API")),
                                ("Api Method Name", json!("syncLead")),
                            ],
                            changes: vec![FieldChange {
                                field: change.field,
                                old: change.old,
                                new: change.new,
                            }],
                        })),
                    });
                }
                Reply::result(outcome.results)
            }
            Op::Describe => Reply::result(leads::describe()),
            Op::Describe2 => Reply::result(leads::describe2()),
            Op::ActivityTypes => Reply::result(activities::types()),
            Op::PagingToken => {
                let since = params
                    .get("sinceDatetime")
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| ApiError::new("701", "sinceDatetime cannot be blank"))?;
                let since = activities::parse_datetime(since)?;
                let mut fields = Map::new();
                fields.insert(
                    "nextPageToken".into(),
                    json!(activities::encode_token(since, 0)),
                );
                Reply::Envelope(fields)
            }
            Op::Activities => page_reply(db.activities.activities(params)?),
            Op::LeadChanges => page_reply(db.activities.lead_changes(params)?),
            Op::Usage => {
                let day = limits::quota_day(now);
                let total = inner.limits.used_on(day);
                Reply::result(vec![json!({"date": day.to_string(), "total": total,
                    "users": [{"userId": "apiuser@sandbox.example", "count": total}]})])
            }
            Op::ExportCreate => {
                let request = json_body()?;
                db.jobs.settle(&db.leads, &db.activities, now);
                let job =
                    db.jobs
                        .create(Target::from_kind(route.kind), client_id, &request, now)?;
                Reply::result(vec![job.record()])
            }
            Op::ExportEnqueue => {
                db.jobs.settle(&db.leads, &db.activities, now);
                let job = db.jobs.enqueue(
                    Target::from_kind(route.kind),
                    client_id,
                    arg("exportId"),
                    now,
                )?;
                Reply::result(vec![job.record()])
            }
            Op::ExportCancel => {
                db.jobs.settle(&db.leads, &db.activities, now);
                let job = db.jobs.cancel(
                    Target::from_kind(route.kind),
                    client_id,
                    arg("exportId"),
                    now,
                )?;
                Reply::result(vec![job.record()])
            }
            Op::ExportStatus => {
                db.jobs.observe(&db.leads, &db.activities, now);
                let job =
                    db.jobs
                        .status(Target::from_kind(route.kind), client_id, arg("exportId"))?;
                Reply::result(vec![job.record()])
            }
            Op::ExportList => {
                db.jobs.observe(&db.leads, &db.activities, now);
                Reply::result(db.jobs.list(
                    Target::from_kind(route.kind),
                    client_id,
                    &params.list("status"),
                    params.get("batchSize").and_then(|b| b.parse().ok()),
                    now,
                ))
            }
            Op::ExportFile => {
                db.jobs.settle(&db.leads, &db.activities, now);
                let Some(file) =
                    db.jobs
                        .file(Target::from_kind(route.kind), client_id, arg("exportId"))
                else {
                    return Ok(Reply::Raw(
                        (
                            StatusCode::NOT_FOUND,
                            [(header::CONTENT_TYPE, "text/plain")],
                            "Export file not found or job not completed",
                        )
                            .into_response(),
                    ));
                };
                Reply::Raw(file_response(file, headers))
            }
        })
    }
}

/// The export file, whole or the `Range: bytes=a-b` part of it (206).
fn file_response(file: &[u8], headers: &HeaderMap) -> Response {
    let len = file.len();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| {
            let start: usize = a.trim().parse().ok()?;
            let end: usize = if b.trim().is_empty() {
                len.checked_sub(1)?
            } else {
                b.trim().parse().ok()?
            };
            (start <= end && start < len).then_some((start, end.min(len - 1)))
        });
    let mut response = match range {
        Some((start, end)) => {
            let mut r = (StatusCode::PARTIAL_CONTENT, file[start..=end].to_vec()).into_response();
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{len}").parse().expect("ascii"),
            );
            r
        }
        None => (StatusCode::OK, file.to_vec()).into_response(),
    };
    response
        .headers_mut()
        .insert(header::ACCEPT_RANGES, "bytes".parse().expect("static"));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, "text/csv".parse().expect("static"));
    response
}
