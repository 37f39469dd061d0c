//! Salesforce REST: OAuth token flows (JWT bearer, client credentials, refresh token), query
//! paging, incremental reads by `(SystemModstamp, Id)`, sObject Collections writes, Bulk API 2.0
//! query ([`bulk`]) and ingest ([`ingest`]) jobs, `/limits` and the `Sforce-Limit-Info` budget.
//!
//! This file must not know MQL semantics, and must not log or format a token, key or secret.

pub mod bulk;
pub mod incremental;
pub mod ingest;
pub mod soql;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{self, FreshToken, Session, TokenCache};
use super::error::{ConnectorError, RecordError, Result, SettingNames, System};
use super::http::Target;
use super::limits::{
    Admit, DailyBudget, Pacer, Priority, parse_limit_info, resume_after_daily_limit,
};
use super::retry::{Repeat, RetryPolicy, parse_retry_after};
use super::{Crm, PageRequest, QueryPage, Record, RecordOutcome, WriteStatus, http};

pub use incremental::{ChangePage, IncrementalRead};
pub use soql::ModstampCursor;

const SYS: System = System::Salesforce;

/// The most records sObject Collections takes in one request.
pub const COLLECTION_CHUNK: usize = 200;

/// Salesforce connection settings (TOML `[salesforce]`). Secrets are not here: see
/// [`SalesforceSecrets`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceSettings {
    /// Base URL of the instance serving the REST API (`https://acme.my.salesforce.com`, or the
    /// sandbox). Used for every data call; the token response's `instance_url` is ignored so that
    /// any server speaking the API can be targeted.
    pub base_url: String,
    /// Token endpoint, e.g. `https://login.salesforce.com/services/oauth2/token`.
    pub token_url: String,
    /// REST API version without the `v`.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    pub auth: SalesforceAuth,
    /// Percent of the daily API allocation kept for essential calls (writes of decided MQLs).
    #[serde(default = "default_reserve_pct")]
    pub daily_reserve_pct: f64,
    /// Concurrent calls at most (Salesforce refuses over 25 long-running requests per org).
    #[serde(default = "default_sf_in_flight")]
    pub max_in_flight: usize,
    /// Query page size sent as `Sforce-Query-Options: batchSize=` (200..=2000).
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// Per-request timeout.
    #[serde(default = "default_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Salesforce does not say when a session ends (inactivity timeout, 2 h by default): renew
    /// proactively after this long; a 401 renews earlier.
    #[serde(default = "default_session_secs")]
    pub session_renew_after_secs: u64,
    /// `Sforce-Call-Options: client=` tag, so our own writes can be recognised (CDC changeOrigin).
    #[serde(default = "default_client_tag")]
    pub call_options_client: String,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Bulk API 2.0 ingest jobs: polling and upload size.
    #[serde(default)]
    pub ingest: ingest::IngestSettings,
    /// What the user's configuration calls these settings, for errors that say what to check.
    #[serde(default)]
    pub names: SettingNames,
}

/// How to obtain an access token.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SalesforceAuth {
    /// Server-to-server: an RS256 assertion signed with the connected app's private key.
    JwtBearer {
        /// Connected-app consumer key (`iss`).
        client_id: String,
        /// Salesforce username (`sub`).
        username: String,
        /// PEM private key (PKCS#8 or PKCS#1) of the connected app's certificate.
        private_key_file: PathBuf,
        /// `aud`: the login host, not My Domain. Default `https://login.salesforce.com`.
        #[serde(default = "default_audience")]
        audience: String,
    },
    /// `client_credentials` with HTTP Basic `client_id:client_secret` (secret in [`SalesforceSecrets`]).
    ClientCredentials { client_id: String },
    /// `refresh_token` grant (token and optional secret in [`SalesforceSecrets`]).
    RefreshToken { client_id: String },
}

/// Secrets, loaded by the caller from the environment or a file.
#[derive(Clone, Default)]
pub struct SalesforceSecrets {
    pub client_secret: Option<SecretString>,
    pub refresh_token: Option<SecretString>,
}

fn default_api_version() -> String {
    "62.0".into()
}
fn default_reserve_pct() -> f64 {
    20.0
}
fn default_sf_in_flight() -> usize {
    10
}
fn default_batch_size() -> u32 {
    2000
}
fn default_timeout_secs() -> u64 {
    120
}
fn default_session_secs() -> u64 {
    3600
}
fn default_client_tag() -> String {
    "mqlsync".into()
}
fn default_audience() -> String {
    "https://login.salesforce.com".into()
}

enum Credentials {
    Jwt {
        client_id: String,
        username: String,
        audience: String,
        key: jsonwebtoken::EncodingKey,
    },
    ClientSecret {
        client_id: String,
        secret: SecretString,
    },
    Refresh {
        client_id: String,
        secret: Option<SecretString>,
        token: std::sync::Mutex<SecretString>,
    },
}

struct Inner {
    settings: SalesforceSettings,
    creds: Credentials,
    /// The REST API, named when it cannot be reached.
    api: Target,
    /// The token endpoint, named when it cannot be reached or answers with something else
    /// than a token.
    token: Target,
    /// What was refused when the token endpoint refuses us, and what to check.
    refused: (&'static str, String),
    http: reqwest::Client,
    /// For the `oauth2` crate: redirects off, as it requires (no token sent to a redirect target).
    oauth_http: reqwest::Client,
    tokens: TokenCache,
    pacer: Pacer,
    budget: DailyBudget,
    requests: http::RequestCount,
    /// The identity URL of the last token response (`id`:
    /// `https://login.salesforce.com/id/{org id}/{user id}`): the daemon checks Outbound
    /// Messages against its org id.
    identity_url: std::sync::Mutex<Option<String>>,
}

/// The Salesforce client. Clones share the token, the pacer and the daily budget.
#[derive(Clone)]
pub struct SalesforceClient {
    inner: Arc<Inner>,
}

/// A Composite response: one answer per subrequest, in order.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CompositeAnswer {
    composite_response: Vec<CompositeSubAnswer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CompositeSubAnswer {
    #[serde(default)]
    body: Value,
    http_status_code: u16,
}

/// What a request carries.
#[derive(Clone, Copy)]
enum Payload<'a> {
    Empty,
    Json(&'a Value),
    /// A Bulk API 2.0 upload (`Content-Type: text/csv`).
    Csv(&'a bytes::Bytes),
}

/// The longest query URL sent as a GET: the REST API takes at most 16,384 bytes of URI and
/// headers together; ours add about 400.
const MAX_QUERY_URL: usize = 15_000;
/// SOQL's limit on a statement's length.
pub const MAX_SOQL_CHARS: usize = 100_000;

#[derive(Deserialize)]
struct TokenBody {
    access_token: String,
    #[serde(default)]
    instance_url: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    /// The identity URL, `.../id/{org id}/{user id}`.
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
struct RestError {
    #[serde(default, rename = "errorCode", alias = "statusCode")]
    error_code: String,
    #[serde(default)]
    message: String,
}

/// Where the REST API and the token endpoint are, as the user configured them. A token
/// endpoint on the API's host (the default) is named by the base URL's setting.
fn targets(settings: &SalesforceSettings) -> (Target, Target) {
    let names = &settings.names;
    let base = settings.base_url.trim_end_matches('/');
    let api = Target {
        url: base.to_string(),
        setting: names.base_url.clone().unwrap_or_else(|| "base_url".into()),
    };
    let token = if origin(&settings.token_url) == origin(base) {
        api.clone()
    } else {
        Target {
            url: origin(&settings.token_url),
            setting: names
                .token_url
                .clone()
                .unwrap_or_else(|| "token_url".into()),
        }
    };
    (api, token)
}

/// `https://login.salesforce.com` of `https://login.salesforce.com/services/oauth2/token`.
fn origin(url: &str) -> String {
    reqwest::Url::parse(url).map_or_else(|_| url.to_string(), |u| u.origin().ascii_serialization())
}

/// What the token endpoint refuses when it refuses this client, and what to check then.
fn refused(settings: &SalesforceSettings) -> (&'static str, String) {
    let (what, default_check) = match &settings.auth {
        SalesforceAuth::JwtBearer { .. } => (
            "the JWT bearer assertion",
            "client_id, username and private_key_file, and that the connected app holds the key's certificate and pre-authorizes the user",
        ),
        SalesforceAuth::ClientCredentials { .. } => {
            ("the client credentials", "client_id and the client secret")
        }
        SalesforceAuth::RefreshToken { .. } => {
            ("the refresh token", "client_id and the refresh token")
        }
    };
    let check = settings
        .names
        .credentials
        .clone()
        .unwrap_or_else(|| default_check.into());
    (what, check)
}

impl SalesforceClient {
    /// Build a client; reads the JWT private key file now so a bad path fails at start-up.
    pub fn new(settings: SalesforceSettings, secrets: SalesforceSecrets) -> Result<Self> {
        let creds = match &settings.auth {
            SalesforceAuth::JwtBearer {
                client_id,
                username,
                private_key_file,
                audience,
            } => {
                let pem = std::fs::read(private_key_file).map_err(|e| {
                    ConnectorError::Config(format!(
                        "cannot read private_key_file {}: {e}",
                        private_key_file.display()
                    ))
                })?;
                let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).map_err(|e| {
                    ConnectorError::Config(format!(
                        "private_key_file {} is not an RSA PEM key: {e}",
                        private_key_file.display()
                    ))
                })?;
                Credentials::Jwt {
                    client_id: client_id.clone(),
                    username: username.clone(),
                    audience: audience.clone(),
                    key,
                }
            }
            SalesforceAuth::ClientCredentials { client_id } => Credentials::ClientSecret {
                client_id: client_id.clone(),
                secret: secrets.client_secret.ok_or_else(|| {
                    ConnectorError::Config("client_credentials needs a client secret".into())
                })?,
            },
            SalesforceAuth::RefreshToken { client_id } => Credentials::Refresh {
                client_id: client_id.clone(),
                secret: secrets.client_secret,
                token: std::sync::Mutex::new(secrets.refresh_token.ok_or_else(|| {
                    ConnectorError::Config("refresh_token auth needs a refresh token".into())
                })?),
            },
        };
        let (api, token) = targets(&settings);
        let refused = refused(&settings);
        let http = http::client(Duration::from_secs(settings.request_timeout_secs))?;
        let tokens = TokenCache::new(
            Duration::ZERO,
            Duration::from_secs(settings.session_renew_after_secs),
        );
        let pacer = Pacer::in_flight_only(settings.max_in_flight);
        let budget = DailyBudget::new(SYS, 0, settings.daily_reserve_pct);
        let oauth_http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(settings.request_timeout_secs))
            .build()
            .map_err(|e| ConnectorError::Config(format!("cannot build HTTP client: {e}")))?;
        Ok(SalesforceClient {
            inner: Arc::new(Inner {
                settings,
                creds,
                api,
                token,
                refused,
                http,
                oauth_http,
                tokens,
                pacer,
                budget,
                requests: http::RequestCount::default(),
                identity_url: std::sync::Mutex::new(None),
            }),
        })
    }

    /// Sign in now (or keep the cached token), with the retries any call gets, so that wrong
    /// credentials or a server that cannot be reached stop a run before it starts work. The
    /// token is the one the calls that follow use: signing in first costs no call, and the
    /// token endpoint is not an API call counted against the daily limit.
    pub async fn sign_in(&self) -> Result<()> {
        super::retry::run(&self.inner.settings.retry, || async {
            self.inner.tokens.session(|| self.fetch_token()).await?;
            Ok(())
        })
        .await
    }

    /// The shared daily budget (`used`, `limit`) as last seen in `Sforce-Limit-Info`.
    pub fn budget(&self) -> &DailyBudget {
        &self.inner.budget
    }

    /// The identity URL of the signed-in user (`https://login.salesforce.com/id/{org id}/{user
    /// id}`), from the last token response that had one; `None` before signing in.
    pub fn identity_url(&self) -> Option<String> {
        self.inner
            .identity_url
            .lock()
            .expect("not poisoned")
            .clone()
    }

    /// Keeps the token response's identity URL, when it has one.
    fn keep_identity(&self, id: Option<String>) {
        if let Some(id) = id {
            *self.inner.identity_url.lock().expect("not poisoned") = Some(id);
        }
    }

    /// What this client and its clones have sent so far (see [`http::Sent`]).
    pub fn sent(&self) -> http::Sent {
        self.inner.requests.sent()
    }

    /// The current refresh token (it changes when the org rotates refresh tokens; persist it).
    pub fn refresh_token(&self) -> Option<SecretString> {
        match &self.inner.creds {
            Credentials::Refresh { token, .. } => Some(token.lock().expect("not poisoned").clone()),
            _ => None,
        }
    }

    fn data_url(&self, rest: &str) -> String {
        format!(
            "{}/services/data/v{}{rest}",
            self.inner.settings.base_url.trim_end_matches('/'),
            self.inner.settings.api_version
        )
    }

    async fn fetch_token(&self) -> Result<FreshToken> {
        let s = &self.inner.settings;
        let req = self.inner.http.post(&s.token_url);
        let req = match &self.inner.creds {
            Credentials::Jwt {
                client_id,
                username,
                audience,
                key,
            } => {
                let exp = Timestamp::now().as_second() + 180;
                let claims =
                    json!({"iss": client_id, "sub": username, "aud": audience, "exp": exp});
                let assertion = jsonwebtoken::encode(
                    &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
                    &claims,
                    key,
                )
                .map_err(|e| {
                    ConnectorError::Config(format!("cannot sign the JWT assertion: {e}"))
                })?;
                req.form(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    ("assertion", assertion.as_str()),
                ])
            }
            Credentials::ClientSecret { .. } | Credentials::Refresh { .. } => {
                return self.fetch_token_oauth2().await;
            }
        };
        self.inner.requests.count_token();
        let resp = req
            .send()
            .await
            .map_err(|e| http::send_error(SYS, e, &self.inner.token))?;
        let status = resp.status();
        let bytes = http::body(SYS, resp).await?;
        if let Some(e) = self.not_a_token_answer(status.as_u16(), &bytes) {
            return Err(e);
        }
        if !status.is_success() {
            let (what, check) = &self.inner.refused;
            return Err(auth::refusal(SYS, what, &bytes, check));
        }
        let body: TokenBody = http::json(SYS, &bytes)?;
        self.keep_identity(body.id.clone());
        if let (Credentials::Refresh { token, .. }, Some(new)) =
            (&self.inner.creds, body.refresh_token)
        {
            tracing::info!("Salesforce rotated the refresh token; persist the new one");
            *token.lock().expect("not poisoned") = new.into();
        }
        Ok(FreshToken {
            access_token: body.access_token.into(),
            instance_url: body.instance_url,
            lifetime: None,
        })
    }

    /// [`auth::not_a_token_answer`] for this client's token endpoint.
    fn not_a_token_answer(&self, status: u16, body: &[u8]) -> Option<ConnectorError> {
        let token = &self.inner.settings.token_url;
        auth::not_a_token_answer(SYS, token, status, body, &self.inner.token.setting)
    }

    /// The HTTP client the `oauth2` crate sends through: ours, so that an unreachable endpoint,
    /// a 5xx or an answer that is not OAuth (HTML, a REST error array) is reported as such
    /// instead of as a token response that does not parse.
    async fn oauth_send(
        &self,
        request: oauth2::HttpRequest,
    ) -> Result<oauth2::HttpResponse, ConnectorError> {
        let request = reqwest::Request::try_from(request)
            .map_err(|e| ConnectorError::Config(format!("token request: {e}")))?;
        self.inner.requests.count_token();
        let resp = self
            .inner
            .oauth_http
            .execute(request)
            .await
            .map_err(|e| http::send_error(SYS, e, &self.inner.token))?;
        let status = resp.status();
        let mut answer = oauth2::http::Response::builder().status(status);
        for (name, value) in resp.headers() {
            answer = answer.header(name, value);
        }
        let bytes = http::body(SYS, resp).await?;
        if let Some(e) = self.not_a_token_answer(status.as_u16(), &bytes) {
            return Err(e);
        }
        // The `oauth2` crate keeps no field it does not know: the identity URL is read here.
        if status.is_success() {
            #[derive(Deserialize)]
            struct Identity {
                #[serde(default)]
                id: Option<String>,
            }
            self.keep_identity(
                serde_json::from_slice::<Identity>(&bytes)
                    .ok()
                    .and_then(|i| i.id),
            );
        }
        answer
            .body(bytes.to_vec())
            .map_err(|e| ConnectorError::Malformed {
                system: SYS,
                detail: format!("token response: {e}"),
            })
    }

    /// Client credentials and refresh token through the `oauth2` crate (HTTP Basic client auth;
    /// without a secret the client id goes in the body). A rotated refresh token replaces the
    /// old one (read it back with [`SalesforceClient::refresh_token`] to persist it).
    async fn fetch_token_oauth2(&self) -> Result<FreshToken> {
        use oauth2::basic::{BasicClient, BasicErrorResponse};
        use oauth2::{
            ClientId, ClientSecret, RefreshToken, RequestTokenError, TokenResponse, TokenUrl,
        };
        let token_url = TokenUrl::new(self.inner.settings.token_url.clone())
            .map_err(|e| ConnectorError::Config(format!("token_url: {e}")))?;
        let map_err = |e: RequestTokenError<ConnectorError, BasicErrorResponse>| match e {
            RequestTokenError::ServerResponse(r) => ConnectorError::Auth {
                system: SYS,
                what: self.inner.refused.0.to_string(),
                error: r.error().to_string(),
                description: r.error_description().cloned().unwrap_or_default(),
                check: self.inner.refused.1.clone(),
            },
            RequestTokenError::Request(e) => e,
            RequestTokenError::Parse(e, _) => ConnectorError::Malformed {
                system: SYS,
                detail: format!("token response: {e}"),
            },
            RequestTokenError::Other(e) => ConnectorError::Malformed {
                system: SYS,
                detail: format!("token response: {e}"),
            },
        };
        let http = OAuthSender(self);
        let resp = match &self.inner.creds {
            Credentials::ClientSecret { client_id, secret } => {
                BasicClient::new(ClientId::new(client_id.clone()))
                    .set_client_secret(ClientSecret::new(secret.expose_secret().to_string()))
                    .set_token_uri(token_url)
                    .exchange_client_credentials()
                    .request_async(&http)
                    .await
                    .map_err(map_err)?
            }
            Credentials::Refresh {
                client_id,
                secret,
                token,
            } => {
                let rt = RefreshToken::new(
                    token
                        .lock()
                        .expect("not poisoned")
                        .expose_secret()
                        .to_string(),
                );
                let mut client =
                    BasicClient::new(ClientId::new(client_id.clone())).set_token_uri(token_url);
                if let Some(sec) = secret {
                    client = client
                        .set_client_secret(ClientSecret::new(sec.expose_secret().to_string()));
                }
                let resp = client
                    .exchange_refresh_token(&rt)
                    .request_async(&http)
                    .await
                    .map_err(map_err)?;
                if let Some(new) = resp.refresh_token() {
                    tracing::info!("Salesforce rotated the refresh token; persist the new one");
                    *token.lock().expect("not poisoned") = new.secret().clone().into();
                }
                resp
            }
            Credentials::Jwt { .. } => unreachable!("JWT bearer is posted by fetch_token"),
        };
        Ok(FreshToken {
            access_token: resp.access_token().secret().clone().into(),
            instance_url: None,
            lifetime: resp.expires_in(),
        })
    }

    /// One authenticated call with retries by error class. `url` is absolute.
    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        priority: Priority,
    ) -> Result<Value> {
        self.call_as(method, url, body, priority, Repeat::Harmless)
            .await
    }

    /// [`Self::call`] for a call that may not be harmless to send twice (see [`Repeat`]).
    async fn call_as(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        priority: Priority,
        repeat: Repeat,
    ) -> Result<Value> {
        super::retry::run_as(&self.inner.settings.retry, repeat, || {
            let method = method.clone();
            async move {
                let payload = body.map_or(Payload::Empty, Payload::Json);
                let (_, bytes) = self
                    .call_once(method, url, payload, priority, "application/json")
                    .await?;
                if bytes.is_empty() {
                    return Ok(Value::Null);
                }
                http::json(SYS, &bytes)
            }
        })
        .await
    }

    /// One attempt: budget check, token, pacing, request, limit header, classification.
    /// Returns the headers and the raw body of a successful response.
    async fn call_once(
        &self,
        method: Method,
        url: &str,
        payload: Payload<'_>,
        priority: Priority,
        accept: &str,
    ) -> Result<(reqwest::header::HeaderMap, bytes::Bytes)> {
        self.inner.budget.check(priority, Timestamp::now())?;
        let session: Session = self.inner.tokens.session(|| self.fetch_token()).await?;
        let _permit = self.inner.pacer.admit().await;
        let mut req = self
            .inner
            .http
            .request(method, url)
            .bearer_auth(session.access_token.expose_secret())
            .header(
                "Sforce-Query-Options",
                format!("batchSize={}", self.inner.settings.batch_size),
            )
            .header(
                "Sforce-Call-Options",
                format!("client={}", self.inner.settings.call_options_client),
            )
            .header("Accept", accept);
        match payload {
            Payload::Empty => {}
            Payload::Json(b) => req = req.json(b),
            Payload::Csv(csv) => {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "text/csv")
                    .body(csv.clone());
            }
        }
        self.inner.requests.count();
        let resp = req
            .send()
            .await
            .map_err(|e| http::send_error(SYS, e, &self.inner.api))?;
        if let Some((used, limit)) = resp
            .headers()
            .get("Sforce-Limit-Info")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_limit_info)
        {
            self.inner.budget.observe(used, limit);
        }
        let status = resp.status();
        let headers = resp.headers().clone();
        let retry_after = parse_retry_after(
            resp.headers()
                .get("Retry-After")
                .and_then(|v| v.to_str().ok()),
        );
        let bytes = http::body(SYS, resp).await?;
        if let Some(err) = classify(status, &bytes, retry_after, Timestamp::now()) {
            if matches!(err, ConnectorError::SessionExpired { .. }) {
                self.inner.tokens.invalidate(session.generation).await;
            }
            return Err(err);
        }
        Ok((headers, bytes))
    }

    /// The first page of a query whose URL is too long for a GET (the REST API refuses a URI
    /// over 16,384 bytes with 414, or 431 with the headers): sent as the one subrequest of a
    /// Composite request, whose body takes the statement up to SOQL's own limit of 100,000
    /// characters; one call against the API limits, like the GET. Later pages come by
    /// `nextRecordsUrl` as usual. The subrequest's own status and errors are read as a direct
    /// call's would be, and retried the same way (a query is harmless to send twice).
    async fn query_in_composite(
        &self,
        url: &reqwest::Url,
        soql: &str,
        priority: Priority,
    ) -> Result<QueryPage> {
        if soql.chars().count() > MAX_SOQL_CHARS {
            return Err(ConnectorError::Config(format!(
                "a SOQL statement of {} characters is over Salesforce's limit of {MAX_SOQL_CHARS}",
                soql.chars().count()
            )));
        }
        let relative = format!("{}?{}", url.path(), url.query().unwrap_or_default());
        let body = json!({
            "allOrNone": false,
            "compositeRequest": [{"method": "GET", "url": relative, "referenceId": "query"}],
        });
        let composite = self.data_url("/composite");
        super::retry::run_as(&self.inner.settings.retry, Repeat::Harmless, || async {
            let (_, bytes) = self
                .call_once(
                    Method::POST,
                    &composite,
                    Payload::Json(&body),
                    priority,
                    "application/json",
                )
                .await?;
            let answer: CompositeAnswer =
                serde_json::from_slice(&bytes).map_err(|e| ConnectorError::Malformed {
                    system: SYS,
                    detail: format!("composite response: {e}"),
                })?;
            let Some(sub) = answer.composite_response.into_iter().next() else {
                return Err(ConnectorError::Malformed {
                    system: SYS,
                    detail: "composite response without a subrequest answer".into(),
                });
            };
            let status = StatusCode::from_u16(sub.http_status_code).map_err(|e| {
                ConnectorError::Malformed {
                    system: SYS,
                    detail: format!("composite subrequest status: {e}"),
                }
            })?;
            let body = serde_json::to_vec(&sub.body).unwrap_or_default();
            if let Some(err) = classify(status, &body, None, Timestamp::now()) {
                return Err(err);
            }
            serde_json::from_value(sub.body).map_err(|e| ConnectorError::Malformed {
                system: SYS,
                detail: format!("query page: {e}"),
            })
        })
        .await
    }

    async fn collection(
        &self,
        method: Method,
        url: String,
        object: &str,
        records: Vec<Record>,
        upsert: bool,
        repeat: Repeat,
    ) -> Result<Vec<RecordOutcome>> {
        let mut out = Vec::with_capacity(records.len());
        for (chunk_no, chunk) in records.chunks(COLLECTION_CHUNK).enumerate() {
            let recs: Vec<Value> = chunk
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.insert("attributes".into(), json!({"type": object}));
                    Value::Object(r)
                })
                .collect();
            let body = json!({"allOrNone": false, "records": recs});
            let resp = self
                .call_as(
                    method.clone(),
                    &url,
                    Some(&body),
                    Priority::Essential,
                    repeat,
                )
                .await?;
            let results: Vec<CollectionResult> =
                serde_json::from_value(resp).map_err(|e| ConnectorError::Malformed {
                    system: SYS,
                    detail: format!("collection response: {e}"),
                })?;
            if results.len() != chunk.len() {
                return Err(ConnectorError::Malformed {
                    system: SYS,
                    detail: format!("{} results for {} records", results.len(), chunk.len()),
                });
            }
            for (i, r) in results.into_iter().enumerate() {
                out.push(r.into_outcome(chunk_no * COLLECTION_CHUNK + i, upsert));
            }
        }
        Ok(out)
    }
}

/// The `oauth2` crate's HTTP client: [`SalesforceClient::oauth_send`].
struct OAuthSender<'a>(&'a SalesforceClient);

impl<'c> oauth2::AsyncHttpClient<'c> for OAuthSender<'_> {
    type Error = ConnectorError;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<oauth2::HttpResponse, ConnectorError>> + Send + 'c>,
    >;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(self.0.oauth_send(request))
    }
}

/// One per-record result of sObject Collections.
#[derive(Debug, Deserialize)]
struct CollectionResult {
    #[serde(default)]
    id: Option<String>,
    success: bool,
    #[serde(default)]
    created: Option<bool>,
    #[serde(default)]
    errors: Vec<RecordErrorWire>,
}

#[derive(Debug, Deserialize)]
struct RecordErrorWire {
    #[serde(default, rename = "statusCode")]
    status_code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    fields: Vec<String>,
}

impl CollectionResult {
    fn into_outcome(self, index: usize, upsert: bool) -> RecordOutcome {
        if self.success {
            let status = if self.created == Some(true) {
                WriteStatus::Created
            } else {
                WriteStatus::Updated
            };
            return RecordOutcome {
                index,
                id: self.id,
                result: Ok(status),
            };
        }
        let first = self.errors.into_iter().next().unwrap_or(RecordErrorWire {
            status_code: "UNKNOWN".into(),
            message: "failed without an error".into(),
            fields: vec![],
        });
        failed_record(
            index,
            self.id,
            RecordError {
                retryable: false,
                code: first.status_code,
                message: first.message,
                fields: first.fields,
            },
            upsert,
        )
    }
}

/// The outcome of a record the vendor refused with `error` (its `retryable` is set here):
/// already done for the codes [`already_done`] names, else failed, retryable when sending the
/// record again later may succeed. Shared by Collections and Bulk API 2.0 ingest, so a code
/// means the same whichever way the record went.
fn failed_record(
    index: usize,
    id: Option<String>,
    mut error: RecordError,
    upsert: bool,
) -> RecordOutcome {
    if let Some(code) = already_done(&error.code, upsert) {
        return RecordOutcome {
            index,
            id: id.or_else(|| id_in_message(&error.message)),
            result: Ok(WriteStatus::AlreadyDone { code }),
        };
    }
    error.retryable = matches!(
        error.code.as_str(),
        "UNABLE_TO_LOCK_ROW" | "ALL_OR_NONE_OPERATION_ROLLED_BACK" | "SERVER_UNAVAILABLE"
    );
    RecordOutcome {
        index,
        id,
        result: Err(error),
    }
}

/// Per-record codes that mean the work is already done, mapped to success explicitly.
///
/// - `DUPLICATE_VALUE` on an **upsert by external id**: a concurrent upsert with the same key
///   created the record first (unique external ids race). The record with our key exists; since
///   the caller's key is deterministic per write (e.g. one MQL cycle), it is the same write.
///   On an update it is a real conflict and fails the record.
/// - `CANNOT_UPDATE_CONVERTED_LEAD`: the lead was converted; there is nothing left to stamp on it
///   and retrying can never succeed. Reported as done so the ledger does not retry it; the code
///   is kept so the caller can log or re-target the contact.
pub fn already_done(code: &str, upsert: bool) -> Option<String> {
    match code {
        "DUPLICATE_VALUE" if upsert => Some(code.to_string()),
        "CANNOT_UPDATE_CONVERTED_LEAD" => Some(code.to_string()),
        _ => None,
    }
}

/// `duplicate value found: Ext__c duplicates value on record with id: a0B...` → the id.
fn id_in_message(msg: &str) -> Option<String> {
    let (_, rest) = msg.split_once("record with id: ")?;
    let id: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    (!id.is_empty()).then_some(id)
}

/// Map an HTTP response to an error, or `None` when it is a success.
pub fn classify(
    status: StatusCode,
    body: &[u8],
    retry_after: Option<Duration>,
    now: Timestamp,
) -> Option<ConnectorError> {
    if status.is_success() {
        return None;
    }
    let first: Option<RestError> = serde_json::from_slice::<Vec<RestError>>(body)
        .ok()
        .and_then(|v| v.into_iter().next());
    let (code, message) = match first {
        Some(e) => (e.error_code, e.message),
        None => (String::new(), http::snippet(body)),
    };
    let s = status.as_u16();
    Some(match (s, code.as_str()) {
        (401, _) if message.contains("not valid for use with the REST API") => {
            ConnectorError::Auth {
                system: SYS,
                what: "the session for the REST API".into(),
                error: code,
                description: message,
                check: "that the integration user has the API Enabled permission".into(),
            }
        }
        (401, _) => ConnectorError::SessionExpired {
            system: SYS,
            code: if code.is_empty() { "401".into() } else { code },
        },
        (403, "REQUEST_LIMIT_EXCEEDED") if message.contains("Concurrent") => {
            ConnectorError::RateLimited {
                system: SYS,
                code,
                message,
                retry_after,
            }
        }
        (403, "REQUEST_LIMIT_EXCEEDED") => ConnectorError::DailyLimit {
            system: SYS,
            code,
            message,
            resume_at: resume_after_daily_limit(SYS, now),
        },
        (429, _) => ConnectorError::RateLimited {
            system: SYS,
            code,
            message,
            retry_after,
        },
        (400, "UNABLE_TO_LOCK_ROW") | (420, _) => ConnectorError::Server {
            system: SYS,
            status: s,
            code,
            message,
        },
        (500..=599, _) => ConnectorError::Server {
            system: SYS,
            status: s,
            code,
            message,
        },
        _ => ConnectorError::Request {
            system: SYS,
            status: s,
            code,
            message,
        },
    })
}

impl Crm for SalesforceClient {
    async fn query_page(&self, page: PageRequest, priority: Priority) -> Result<QueryPage> {
        let url = match &page {
            PageRequest::Start { soql, all } => {
                let path = if *all { "/queryAll" } else { "/query" };
                let mut u = reqwest::Url::parse(&self.data_url(path))
                    .map_err(|e| ConnectorError::Config(format!("base_url is not a URL: {e}")))?;
                u.query_pairs_mut().append_pair("q", soql);
                if u.as_str().len() > MAX_QUERY_URL {
                    return self.query_in_composite(&u, soql, priority).await;
                }
                u.to_string()
            }
            PageRequest::Next { next_records_url } => {
                if !next_records_url.starts_with("/services/data/") {
                    return Err(ConnectorError::Malformed {
                        system: SYS,
                        detail: format!("unexpected nextRecordsUrl {next_records_url:?}"),
                    });
                }
                format!(
                    "{}{next_records_url}",
                    self.inner.settings.base_url.trim_end_matches('/')
                )
            }
        };
        let v = self.call(Method::GET, &url, None, priority).await?;
        serde_json::from_value(v).map_err(|e| ConnectorError::Malformed {
            system: SYS,
            detail: format!("query page: {e}"),
        })
    }

    async fn upsert(
        &self,
        object: &str,
        external_id_field: &str,
        records: Vec<Record>,
    ) -> Result<Vec<RecordOutcome>> {
        soql::identifier(object)?;
        soql::identifier(external_id_field)?;
        let url = self.data_url(&format!("/composite/sobjects/{object}/{external_id_field}"));
        self.collection(Method::PATCH, url, object, records, true, Repeat::Harmless)
            .await
    }

    async fn upsert_bulk(
        &self,
        object: &str,
        external_id_field: &str,
        records: Vec<Record>,
        priority: Priority,
    ) -> Result<Vec<RecordOutcome>> {
        self.ingest_upsert(object, external_id_field, records, priority)
            .await
    }

    async fn update_bulk(
        &self,
        object: &str,
        records: Vec<Record>,
        priority: Priority,
    ) -> Result<Vec<RecordOutcome>> {
        self.ingest_update(object, records, priority).await
    }

    async fn create(&self, object: &str, records: Vec<Record>) -> Result<Vec<RecordOutcome>> {
        soql::identifier(object)?;
        let url = self.data_url("/composite/sobjects");
        self.collection(Method::POST, url, object, records, false, Repeat::Unknown)
            .await
    }

    async fn update(&self, object: &str, records: Vec<Record>) -> Result<Vec<RecordOutcome>> {
        soql::identifier(object)?;
        let url = self.data_url("/composite/sobjects");
        self.collection(Method::PATCH, url, object, records, false, Repeat::Harmless)
            .await
    }

    async fn describe(&self, object: &str) -> Result<Record> {
        soql::identifier(object)?;
        let url = self.data_url(&format!("/sobjects/{object}/describe"));
        match self
            .call(Method::GET, &url, None, Priority::Routine)
            .await?
        {
            Value::Object(map) => Ok(map),
            _ => Err(ConnectorError::Malformed {
                system: SYS,
                detail: format!("describe of {object} is not an object"),
            }),
        }
    }

    async fn limits(&self) -> Result<Record> {
        let v = self
            .call(
                Method::GET,
                &self.data_url("/limits"),
                None,
                Priority::Essential,
            )
            .await?;
        let Value::Object(map) = v else {
            return Err(ConnectorError::Malformed {
                system: SYS,
                detail: "limits is not an object".into(),
            });
        };
        if let Some(d) = map.get("DailyApiRequests") {
            let max = d.get("Max").and_then(Value::as_u64);
            let rem = d.get("Remaining").and_then(Value::as_u64);
            if let (Some(max), Some(rem)) = (max, rem) {
                self.inner.budget.observe(max.saturating_sub(rem), max);
            }
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests;
