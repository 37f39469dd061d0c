//! Marketo REST (Lead Database): identity (client credentials, token only in the
//! `Authorization: Bearer` header), the response envelope and its 6xx/1xxx codes, activity types,
//! paging tokens, activities (≤10 type ids, 300 a page, through empty pages while `moreResult`),
//! lead changes, leads by filter (≤300 values, `POST ?_method=GET` for long queries), describe.
//! Bulk extract: the calls in [`bulk`], the runner over 31-day windows in [`extract`], the
//! downloaded files read a record at a time in [`export_file`].
//!
//! This file must not know MQL semantics, and must not log or format the token or the secret.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::auth::{self, FreshToken, TokenCache};
use super::error::{ConnectorError, Result, SettingNames, System};
use super::http::Target;
use super::limits::{Admit, DailyBudget, Pacer, Priority, resume_after_daily_limit};
use super::retry::{Repeat, RetryPolicy};
use super::{Record, http};

pub mod bulk;
pub mod export_file;
pub mod extract;

const SYS: System = System::Marketo;

/// Most values in one `leads.json` filter, records in one page, type ids in one activity call.
pub const MAX_FILTER_VALUES: usize = 300;
pub const PAGE_SIZE: usize = 300;
pub const MAX_ACTIVITY_TYPES: usize = 10;
/// URLs longer than this go as `POST ?_method=GET` (Marketo refuses URIs over 8 KB with 414).
pub const MAX_GET_URL: usize = 7_000;

/// Marketo connection settings (TOML `[marketo]`); the client secret is passed separately.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketoSettings {
    /// Base URL of the instance, without `/rest` (`https://123-ABC-456.mktorest.com`).
    pub base_url: String,
    /// Identity URL; default `base_url + "/identity"`.
    #[serde(default)]
    pub identity_url: Option<String>,
    /// Client id of the custom service.
    pub client_id: String,
    /// Calls allowed in any 20 s window (Marketo's instance-wide limit is 100, shared by all
    /// integrations: lower it when others run).
    #[serde(default = "default_calls_per_20s")]
    pub calls_per_20s: u32,
    /// Concurrent calls at most (Marketo allows 10 per instance).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Daily call quota of the subscription (resets at midnight US Central).
    #[serde(default = "default_daily_quota")]
    pub daily_quota: u64,
    /// Percent of the daily quota kept for essential calls.
    #[serde(default = "default_reserve")]
    pub daily_reserve_pct: f64,
    /// Renew the token this long before `expires_in` runs out.
    #[serde(default = "default_margin")]
    pub token_margin_secs: u64,
    #[serde(default = "default_timeout")]
    pub request_timeout_secs: u64,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// What the user's configuration calls these settings, for errors that say what to check.
    #[serde(default)]
    pub names: SettingNames,
}

fn default_calls_per_20s() -> u32 {
    100
}
fn default_in_flight() -> usize {
    10
}
fn default_daily_quota() -> u64 {
    50_000
}
fn default_reserve() -> f64 {
    20.0
}
fn default_margin() -> u64 {
    60
}
fn default_timeout() -> u64 {
    120
}

/// The Marketo `Map` (marketing automation platform) operations.
pub trait Map: Clone + Send + Sync + 'static {
    /// `GET /rest/v1/activities/types.json`.
    fn activity_types(&self) -> impl Future<Output = Result<Vec<Record>>> + Send;
    /// `GET /rest/v1/activities/pagingtoken.json?sinceDatetime=`.
    fn paging_token(&self, since: Timestamp) -> impl Future<Output = Result<String>> + Send;
    /// One page of activities after `token` of up to 10 types.
    fn activities_page(
        &self,
        token: &str,
        type_ids: &[u32],
    ) -> impl Future<Output = Result<ActivityPage>> + Send;
    /// One page of lead changes (types 12 and 13) after `token`, with the given lead fields.
    fn lead_changes_page(
        &self,
        token: &str,
        fields: &[&str],
    ) -> impl Future<Output = Result<ActivityPage>> + Send;
    /// One page of leads whose `filter_type` is one of `values` (≤300).
    fn leads_by_filter(
        &self,
        filter_type: &str,
        values: &[String],
        fields: &[&str],
        next_page_token: Option<&str>,
    ) -> impl Future<Output = Result<LeadPage>> + Send;
    /// `GET /rest/v1/leads/describe.json`.
    fn describe(&self) -> impl Future<Output = Result<Vec<Record>>> + Send;
    /// `GET /rest/v1/stats/usage.json`: today's calls of the whole instance (every
    /// integration), which the daily budget takes as its count. Returns that count.
    fn refresh_usage(&self) -> impl Future<Output = Result<u64>> + Send;
    /// A bulk-extract runner of `plan` on this instance, its files in `dir`.
    fn bulk_extract(
        &self,
        plan: extract::ExportPlan,
        settings: extract::ExtractSettings,
        dir: &std::path::Path,
        pause: extract::PauseBy,
    ) -> std::result::Result<extract::BulkExtract<extract::PauseBy>, extract::ExtractError>;
}

/// An activity (`/activities.json` and `/activities/leadchanges.json`). `marketo_guid` is the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    /// Numeric id; may be absent or not unique on migrated instances: use `marketo_guid`.
    #[serde(default)]
    pub id: Option<i64>,
    #[serde(rename = "marketoGUID", deserialize_with = "string_or_number")]
    pub marketo_guid: String,
    pub lead_id: i64,
    #[serde(deserialize_with = "marketo_datetime")]
    pub activity_date: Timestamp,
    pub activity_type_id: u32,
    #[serde(default)]
    pub campaign_id: Option<i64>,
    #[serde(default)]
    pub primary_attribute_value_id: Option<Value>,
    #[serde(default)]
    pub primary_attribute_value: Option<String>,
    #[serde(default)]
    pub attributes: Vec<Attribute>,
    /// Lead changes only: `[{id, name, newValue, oldValue}]`.
    #[serde(default)]
    pub fields: Vec<Record>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attribute {
    pub name: String,
    #[serde(default)]
    pub value: Value,
}

/// One page of activities plus the token that resumes after it (store it as the cursor).
#[derive(Debug, Clone)]
pub struct ActivityPage {
    pub activities: Vec<Activity>,
    pub next_page_token: String,
    pub more_result: bool,
}

#[derive(Debug, Clone)]
pub struct LeadPage {
    pub leads: Vec<Record>,
    /// Present while more pages remain.
    pub next_page_token: Option<String>,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "expected a string id, got {other}"
        ))),
    }
}

fn marketo_datetime<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Timestamp, D::Error> {
    let s = String::deserialize(d)?;
    parse_datetime(&s)
        .ok_or_else(|| serde::de::Error::custom(format!("bad Marketo datetime {s:?}")))
}

/// Parse a Marketo datetime: `2023-01-16T23:32:19Z`, `2014-09-17T22:31:49+0000`, `...+00:00`.
pub fn parse_datetime(s: &str) -> Option<Timestamp> {
    s.parse::<Timestamp>().ok().or_else(|| {
        jiff::fmt::strtime::parse("%Y-%m-%dT%H:%M:%S%z", s)
            .ok()?
            .to_timestamp()
            .ok()
    })
}

/// A datetime as Marketo takes it in `sinceDatetime` and bulk filters: UTC, whole seconds, `Z`.
pub fn format_datetime(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The response envelope.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    result: Vec<Value>,
    #[serde(default)]
    errors: Vec<EnvelopeError>,
    #[serde(default)]
    next_page_token: Option<String>,
    #[serde(default)]
    more_result: bool,
}

#[derive(Debug, Deserialize)]
struct EnvelopeError {
    #[serde(deserialize_with = "string_or_number")]
    code: String,
    #[serde(default)]
    message: String,
}

/// Map an envelope error code to the connector error.
pub fn classify_code(code: &str, message: &str, now: Timestamp) -> ConnectorError {
    let (code, message) = (code.to_string(), message.to_string());
    match code.as_str() {
        "601" | "602" => ConnectorError::SessionExpired { system: SYS, code },
        "606" => ConnectorError::RateLimited {
            system: SYS,
            code,
            message,
            retry_after: Some(Duration::from_secs(20)),
        },
        "615" => ConnectorError::RateLimited {
            system: SYS,
            code,
            message,
            retry_after: None,
        },
        "607" => ConnectorError::DailyLimit {
            system: SYS,
            code,
            message,
            resume_at: resume_after_daily_limit(SYS, now),
        },
        "1029" if message.contains("Export daily quota") => ConnectorError::DailyLimit {
            system: SYS,
            code,
            message,
            resume_at: resume_after_daily_limit(SYS, now),
        },
        // An enqueue sent twice: not a limit, the job is queued (`bulk::export_enqueue`).
        "1029" if message.to_ascii_lowercase().contains("already queued") => {
            ConnectorError::Request {
                system: SYS,
                status: 200,
                code,
                message,
            }
        }
        "1029" | "1016" | "1019" => ConnectorError::RateLimited {
            system: SYS,
            code,
            message,
            retry_after: None,
        },
        "604" | "608" | "611" | "614" | "713" => ConnectorError::Server {
            system: SYS,
            status: 200,
            code,
            message,
        },
        _ => ConnectorError::Request {
            system: SYS,
            status: 200,
            code,
            message,
        },
    }
}

/// What a call sends in its body.
#[derive(Clone, Copy)]
enum Body<'a> {
    None,
    Form(&'a [(&'a str, String)]),
    Json(&'a Value),
}

struct Inner {
    settings: MarketoSettings,
    secret: SecretString,
    /// `{identity URL}/oauth/token`, without the query that carries the secret.
    identity: String,
    /// The REST API and the identity endpoint, named when they cannot be reached.
    api: Target,
    token: Target,
    http: reqwest::Client,
    tokens: TokenCache,
    pacer: Pacer,
    budget: DailyBudget,
    requests: http::RequestCount,
}

/// The Marketo client. Clones share the token, the 100/20 s pacer, the in-flight cap and the
/// daily budget.
#[derive(Clone)]
pub struct MarketoClient {
    inner: Arc<Inner>,
}

#[derive(Deserialize)]
struct IdentityBody {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl MarketoClient {
    pub fn new(settings: MarketoSettings, client_secret: SecretString) -> Result<Self> {
        let base = settings.base_url.trim_end_matches('/').to_string();
        let identity = match &settings.identity_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("{base}/identity"),
        };
        let api = Target {
            url: base.clone(),
            setting: settings
                .names
                .base_url
                .clone()
                .unwrap_or_else(|| "base_url".into()),
        };
        // The identity endpoint on the API's host is named by the base URL's setting.
        let token = if identity.starts_with(&format!("{base}/")) {
            api.clone()
        } else {
            Target {
                url: identity.clone(),
                setting: (settings.names.token_url.clone())
                    .unwrap_or_else(|| "identity_url".into()),
            }
        };
        let identity = format!("{identity}/oauth/token");
        let http = http::client(Duration::from_secs(settings.request_timeout_secs))?;
        let tokens = TokenCache::new(
            Duration::from_secs(settings.token_margin_secs),
            Duration::from_secs(3600),
        );
        let pacer = Pacer::new(
            settings.calls_per_20s,
            Duration::from_secs(20),
            settings.max_in_flight,
        );
        let budget = DailyBudget::new(SYS, settings.daily_quota, settings.daily_reserve_pct);
        Ok(MarketoClient {
            inner: Arc::new(Inner {
                settings,
                secret: client_secret,
                identity,
                api,
                token,
                http,
                tokens,
                pacer,
                budget,
                requests: http::RequestCount::default(),
            }),
        })
    }

    /// When the next call may start by the 100-in-20-s pacer (see [`Pacer::ready_at`]).
    pub fn ready_at(&self) -> tokio::time::Instant {
        self.inner.pacer.ready_at()
    }

    /// Sign in now (or keep the cached token), with the retries any call gets, so that wrong
    /// credentials or a server that cannot be reached stop a run before it starts work. The
    /// token is the one the calls that follow use: signing in first costs no call, and
    /// identity calls are not counted against the daily quota.
    pub async fn sign_in(&self) -> Result<()> {
        super::retry::run(&self.inner.settings.retry, || async {
            self.inner.tokens.session(|| self.fetch_token()).await?;
            Ok(())
        })
        .await
    }

    /// The shared daily budget (calls counted locally since midnight US Central).
    pub fn budget(&self) -> &DailyBudget {
        &self.inner.budget
    }

    /// What this client and its clones have sent so far (see [`http::Sent`]).
    pub fn sent(&self) -> http::Sent {
        self.inner.requests.sent()
    }

    fn base(&self) -> &str {
        self.inner.settings.base_url.trim_end_matches('/')
    }

    async fn fetch_token(&self) -> Result<FreshToken> {
        // Identity takes its parameters in the query string; errors carry the URL without it.
        self.inner.requests.count_token();
        let resp = self
            .inner
            .http
            .get(&self.inner.identity)
            .query(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.inner.settings.client_id.as_str()),
                ("client_secret", self.inner.secret.expose_secret()),
            ])
            .send()
            .await
            .map_err(|e| http::send_error(SYS, e, &self.inner.token))?;
        let status = resp.status().as_u16();
        let bytes = http::body(SYS, resp).await?;
        let (url, setting) = (&self.inner.identity, &self.inner.token.setting);
        if let Some(e) = auth::not_a_token_answer(SYS, url, status, &bytes, setting) {
            return Err(e);
        }
        if !(200..300).contains(&status) {
            let names = &self.inner.settings.names;
            let check = (names.credentials.as_deref()).unwrap_or("client_id and the client secret");
            return Err(auth::refusal(SYS, "the client credentials", &bytes, check));
        }
        let body: IdentityBody = http::json(SYS, &bytes)?;
        Ok(FreshToken {
            access_token: body.access_token.into(),
            instance_url: None,
            lifetime: body.expires_in.map(Duration::from_secs),
        })
    }

    /// One REST call with retries by class; returns the envelope of a successful call.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Body<'_>,
        priority: Priority,
    ) -> Result<Envelope> {
        self.call_as(method, path, query, body, priority, Repeat::Harmless)
            .await
    }

    /// [`Self::call`] for a call that may not be harmless to send twice (see [`Repeat`]).
    async fn call_as(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Body<'_>,
        priority: Priority,
        repeat: Repeat,
    ) -> Result<Envelope> {
        super::retry::run_as(&self.inner.settings.retry, repeat, || {
            self.call_once(method.clone(), path, query, body, priority)
        })
        .await
    }

    async fn call_once(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Body<'_>,
        priority: Priority,
    ) -> Result<Envelope> {
        let now = Timestamp::now();
        self.inner.budget.check(priority, now)?;
        let session = self.inner.tokens.session(|| self.fetch_token()).await?;
        let _permit = self.inner.pacer.admit().await;
        self.inner.budget.count_call(now);
        let mut req = self
            .inner
            .http
            .request(method, format!("{}{path}", self.base()))
            .bearer_auth(session.access_token.expose_secret())
            .query(query);
        match body {
            Body::None => {}
            Body::Form(f) => req = req.form(f),
            Body::Json(j) => req = req.json(j),
        }
        self.inner.requests.count();
        let resp = req
            .send()
            .await
            .map_err(|e| http::send_error(SYS, e, &self.inner.api))?;
        let status = resp.status();
        let bytes = http::body(SYS, resp).await?;
        if status.is_server_error() {
            return Err(ConnectorError::Server {
                system: SYS,
                status: status.as_u16(),
                code: String::new(),
                message: http::snippet(&bytes),
            });
        }
        if !status.is_success() {
            return Err(ConnectorError::Request {
                system: SYS,
                status: status.as_u16(),
                code: String::new(),
                message: http::snippet(&bytes),
            });
        }
        let env: Envelope = http::json(SYS, &bytes)?;
        if !env.success {
            let (code, message) = env
                .errors
                .first()
                .map(|e| (e.code.as_str(), e.message.as_str()))
                .unwrap_or(("", "success:false without errors"));
            let err = classify_code(code, message, now);
            if matches!(code, "601" | "602" | "604" | "605" | "608" | "611") {
                self.inner.budget.uncount_call(); // "not counted against your daily quota"
            }
            if matches!(err, ConnectorError::SessionExpired { .. }) {
                self.inner.tokens.invalidate(session.generation).await;
            }
            return Err(err);
        }
        Ok(env)
    }

    fn records(env: Envelope) -> Result<Vec<Record>> {
        env.result
            .into_iter()
            .map(|v| match v {
                Value::Object(m) => Ok(m),
                other => Err(ConnectorError::Malformed {
                    system: SYS,
                    detail: format!("result item is not an object: {other}"),
                }),
            })
            .collect()
    }

    /// An activities page. An activity the caller cannot key (no `marketoGUID`, no `leadId`,
    /// no date) fails the whole page, naming the call and its paging token, so that a cursor
    /// never moves past a record it could not use.
    fn activity_page(env: Envelope, call: &str, token: &str) -> Result<ActivityPage> {
        let next_page_token =
            env.next_page_token
                .clone()
                .ok_or_else(|| ConnectorError::Malformed {
                    system: SYS,
                    detail: "activities response without nextPageToken".into(),
                })?;
        let more_result = env.more_result;
        let activities = env
            .result
            .into_iter()
            .map(serde_json::from_value)
            .collect::<std::result::Result<Vec<Activity>, _>>()
            .map_err(|e| ConnectorError::Malformed {
                system: SYS,
                detail: format!(
                    "GET {call} (nextPageToken {token}) returned an activity that cannot be used: {e}; nothing of that page was committed"
                ),
            })?;
        Ok(ActivityPage {
            activities,
            next_page_token,
            more_result,
        })
    }
}

impl Map for MarketoClient {
    fn bulk_extract(
        &self,
        plan: extract::ExportPlan,
        settings: extract::ExtractSettings,
        dir: &std::path::Path,
        pause: extract::PauseBy,
    ) -> std::result::Result<extract::BulkExtract<extract::PauseBy>, extract::ExtractError> {
        Ok(extract::BulkExtract::new(self.clone(), plan, settings, dir)?.with_pause(pause))
    }

    async fn activity_types(&self) -> Result<Vec<Record>> {
        Self::records(
            self.call(
                Method::GET,
                "/rest/v1/activities/types.json",
                &[],
                Body::None,
                Priority::Routine,
            )
            .await?,
        )
    }

    async fn paging_token(&self, since: Timestamp) -> Result<String> {
        let env = self
            .call(
                Method::GET,
                "/rest/v1/activities/pagingtoken.json",
                &[("sinceDatetime", format_datetime(since))],
                Body::None,
                Priority::Routine,
            )
            .await?;
        env.next_page_token
            .ok_or_else(|| ConnectorError::Malformed {
                system: SYS,
                detail: "paging token response without nextPageToken".into(),
            })
    }

    async fn activities_page(&self, token: &str, type_ids: &[u32]) -> Result<ActivityPage> {
        if type_ids.is_empty() || type_ids.len() > MAX_ACTIVITY_TYPES {
            return Err(ConnectorError::Config(format!(
                "activities take 1 to {MAX_ACTIVITY_TYPES} type ids, got {}",
                type_ids.len()
            )));
        }
        let ids = type_ids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let q = [
            ("nextPageToken", token.to_string()),
            ("activityTypeIds", ids),
            ("batchSize", PAGE_SIZE.to_string()),
        ];
        Self::activity_page(
            self.call(
                Method::GET,
                "/rest/v1/activities.json",
                &q,
                Body::None,
                Priority::Routine,
            )
            .await?,
            "/rest/v1/activities.json",
            token,
        )
    }

    async fn lead_changes_page(&self, token: &str, fields: &[&str]) -> Result<ActivityPage> {
        let q = [
            ("nextPageToken", token.to_string()),
            ("fields", fields.join(",")),
            ("batchSize", PAGE_SIZE.to_string()),
        ];
        Self::activity_page(
            self.call(
                Method::GET,
                "/rest/v1/activities/leadchanges.json",
                &q,
                Body::None,
                Priority::Routine,
            )
            .await?,
            "/rest/v1/activities/leadchanges.json",
            token,
        )
    }

    async fn leads_by_filter(
        &self,
        filter_type: &str,
        values: &[String],
        fields: &[&str],
        next_page_token: Option<&str>,
    ) -> Result<LeadPage> {
        if values.is_empty() || values.len() > MAX_FILTER_VALUES {
            return Err(ConnectorError::Config(format!(
                "leads by filter take 1 to {MAX_FILTER_VALUES} values, got {}",
                values.len()
            )));
        }
        let mut params = vec![
            ("filterType", filter_type.to_string()),
            ("filterValues", values.join(",")),
            ("batchSize", PAGE_SIZE.to_string()),
        ];
        if !fields.is_empty() {
            params.push(("fields", fields.join(",")));
        }
        if let Some(t) = next_page_token {
            params.push(("nextPageToken", t.to_string()));
        }
        let encoded_len: usize = params.iter().map(|(k, v)| k.len() + v.len() * 3 + 2).sum();
        let env = if self.base().len() + encoded_len > MAX_GET_URL {
            self.call(
                Method::POST,
                "/rest/v1/leads.json",
                &[("_method", "GET".into())],
                Body::Form(&params),
                Priority::Routine,
            )
            .await?
        } else {
            self.call(
                Method::GET,
                "/rest/v1/leads.json",
                &params,
                Body::None,
                Priority::Routine,
            )
            .await?
        };
        // Marketo sends `nextPageToken` with `moreResult:true` while pages remain; a full page
        // with a token is also followed (older instances omit `moreResult`).
        let more = env.more_result || env.result.len() == PAGE_SIZE;
        let next_page_token = env.next_page_token.clone().filter(|_| more);
        let leads = Self::records(env)?;
        Ok(LeadPage {
            leads,
            next_page_token,
        })
    }

    async fn refresh_usage(&self) -> Result<u64> {
        let env = self
            .call(
                Method::GET,
                "/rest/v1/stats/usage.json",
                &[],
                Body::None,
                Priority::Essential,
            )
            .await?;
        let total = Self::records(env)?
            .first()
            .and_then(|day| day.get("total"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        // The local count includes this call; the instance's may not yet.
        let used = total.max(self.inner.budget.usage().0);
        self.inner.budget.observe_today(used, Timestamp::now());
        Ok(used)
    }

    async fn describe(&self) -> Result<Vec<Record>> {
        Self::records(
            self.call(
                Method::GET,
                "/rest/v1/leads/describe.json",
                &[],
                Body::None,
                Priority::Routine,
            )
            .await?,
        )
    }
}

/// Where an activity read stands: the paging token after the last processed page, plus the
/// `marketoGUID`s of that page so a re-read after a crash does not hand them out twice.
/// Stored as JSON `{"next_page_token":"GIYD...","last_guids":["102988"]}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ActivityCursor {
    pub next_page_token: String,
    #[serde(default)]
    pub last_guids: Vec<String>,
}

/// Which activity feed to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivitySource {
    /// `/activities.json` for up to 10 activity type ids (e.g. 22 Change Score).
    Types(Vec<u32>),
    /// `/activities/leadchanges.json` with these lead fields (types 12 and 13).
    LeadChanges(Vec<String>),
}

/// Follows `nextPageToken` through empty pages while `moreResult`, page by page.
pub struct ActivityPages<M: Map> {
    map: M,
    source: ActivitySource,
    cursor: ActivityCursor,
    done: bool,
    /// Empty pages in a row allowed before giving up for this run (Marketo scans in blocks and
    /// may return many empty pages for sparse types); the cursor keeps the progress.
    max_empty_pages: usize,
    empty_in_row: usize,
}

impl<M: Map> ActivityPages<M> {
    pub fn new(
        map: M,
        source: ActivitySource,
        cursor: ActivityCursor,
        max_empty_pages: usize,
    ) -> Self {
        ActivityPages {
            map,
            source,
            cursor,
            done: false,
            max_empty_pages,
            empty_in_row: 0,
        }
    }

    /// The next page of unseen activities and the cursor to store after processing it; `None`
    /// when caught up (`moreResult:false`) or after too many empty pages in a row.
    pub async fn next_page(&mut self) -> Result<Option<(Vec<Activity>, ActivityCursor)>> {
        if self.done {
            return Ok(None);
        }
        let token = &self.cursor.next_page_token;
        let page = match &self.source {
            ActivitySource::Types(ids) => self.map.activities_page(token, ids).await?,
            ActivitySource::LeadChanges(fields) => {
                let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
                self.map.lead_changes_page(token, &fields).await?
            }
        };
        let fresh: Vec<Activity> = page
            .activities
            .into_iter()
            .filter(|a| !self.cursor.last_guids.contains(&a.marketo_guid))
            .collect();
        self.empty_in_row = if fresh.is_empty() {
            self.empty_in_row + 1
        } else {
            0
        };
        self.done = !page.more_result || self.empty_in_row >= self.max_empty_pages;
        self.cursor = ActivityCursor {
            next_page_token: page.next_page_token,
            last_guids: if fresh.is_empty() {
                std::mem::take(&mut self.cursor.last_guids)
            } else {
                fresh.iter().map(|a| a.marketo_guid.clone()).collect()
            },
        };
        Ok(Some((fresh, self.cursor.clone())))
    }
}

#[cfg(test)]
mod tests;
