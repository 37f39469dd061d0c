//! The daemon's one HTTP port: `POST /webhooks/marketo`, `POST /webhooks/salesforce`,
//! `GET /healthz`, `GET /readyz`, `GET /metrics` and `GET /report` on one axum [`router`], started by
//! [`serve`] with the shutdown future the run loop passes in.
//!
//! A webhook call is checked (size, then secret or organisation, then shape), acknowledged,
//! turned into an [`Inbound`] on the daemon's bounded queue, and rings the [`Wake`] bell of
//! the poller of its source. A full queue still acknowledges (the poll reads the change
//! anyway) and counts `dropped`. Every refusal answers 401, 400, 404, 405, 408, 413 or 503
//! with a one-line reason and writes exactly one `warn` log line naming it, never the secret
//! nor the body.
//!
//! Must not: block on the daemon (the queue is only ever `try_send`), wait for the engine,
//! or call either system.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::Instrument;

use super::metrics::{self, Endpoint, Metrics, WebhookResult};
use super::webhook::{self, ScoreFields};
use super::{CrmRecords, Inbound};
use crate::config::DaemonConfig;
use crate::mapping::Mapping;

/// A body that has not arrived after this long is refused (408): Marketo gives up on a call
/// after 30 s, Salesforce after 60 s.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The bells the webhooks ring: one per poller source. The daemon's pollers wait on them
/// (`notified()`) besides their interval; a bell rung while nobody waits is kept for the next
/// wait (`notify_one`), so a ring is never lost between two polls.
#[derive(Debug, Default)]
pub struct Wake {
    /// The threshold records (the knob).
    pub thresholds: Notify,
    /// The MQL records (reps' edits).
    pub mql_records: Notify,
    /// Leads and contacts.
    pub people: Notify,
    /// Marketo's Change Score activities.
    pub score_activities: Notify,
}

/// The CRM objects the Salesforce webhook takes, by the mapping's names.
#[derive(Clone, Debug)]
pub struct CrmObjects {
    pub threshold: String,
    pub mql: String,
    pub lead: String,
    pub contact: String,
}

/// What the webhooks check, from the config and the mapping.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// The Marketo webhook's shared secret; `None` refuses every Marketo call.
    pub secret: Option<SecretString>,
    pub secret_header: HeaderName,
    pub max_body_bytes: usize,
    pub objects: CrmObjects,
    pub score_fields: ScoreFields,
}

impl WebhookSettings {
    pub fn new(daemon: &DaemonConfig, mapping: &Mapping) -> Self {
        // Checked when the config was loaded; the fallback is the default header.
        let header = HeaderName::from_bytes(daemon.webhook_secret_header.as_bytes())
            .unwrap_or_else(|_| HeaderName::from_static("x-mqlsync-secret"));
        WebhookSettings {
            secret: daemon.webhook_secret.as_ref().map(|s| s.value.clone()),
            secret_header: header,
            max_body_bytes: daemon.max_body_bytes,
            objects: CrmObjects {
                threshold: mapping.crm.threshold.object.clone(),
                mql: mapping.crm.mql.object.clone(),
                lead: mapping.crm.lead.object.clone(),
                contact: mapping.crm.contact.object.clone(),
            },
            score_fields: ScoreFields::new(&mapping.map),
        }
    }
}

/// One system's part of readiness, set by the daemon.
#[derive(Clone, Debug, Default)]
pub struct SystemHealth {
    /// Signed in (a token is held).
    pub authenticated: bool,
    /// The end of the last poll that succeeded.
    pub last_ok_poll: Option<Instant>,
}

/// What `/readyz` checks; the daemon keeps it current through [`HttpState::update_readiness`].
#[derive(Clone, Debug)]
pub struct Readiness {
    pub store_open: bool,
    pub salesforce: SystemHealth,
    pub marketo: SystemHealth,
    /// A system whose last good poll is older than this is not ready.
    pub max_poll_age: Duration,
}

impl Readiness {
    /// Not ready in any way: nothing open, nobody signed in, nothing polled.
    pub fn new(max_poll_age: Duration) -> Self {
        Readiness {
            store_open: false,
            salesforce: SystemHealth::default(),
            marketo: SystemHealth::default(),
            max_poll_age,
        }
    }

    /// Why the daemon is not ready at `now`, one line per failing condition; empty: ready.
    pub fn problems(&self, now: Instant) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.store_open {
            problems.push("store: not open".to_string());
        }
        for (name, health) in [("salesforce", &self.salesforce), ("marketo", &self.marketo)] {
            if !health.authenticated {
                problems.push(format!("{name}: not signed in"));
            }
            match health.last_ok_poll {
                None => problems.push(format!("{name}: no successful poll yet")),
                Some(at) => {
                    let age = now.saturating_duration_since(at);
                    if age > self.max_poll_age {
                        problems.push(format!(
                            "{name}: last successful poll {} s ago (more than {} s)",
                            age.as_secs(),
                            self.max_poll_age.as_secs()
                        ));
                    }
                }
            }
        }
        problems
    }
}

struct Shared {
    settings: WebhookSettings,
    /// The org whose outbound messages are accepted, learnt at sign-in.
    org_id: Mutex<Option<String>>,
    readiness: Mutex<Readiness>,
    wake: Arc<Wake>,
    metrics: Arc<Metrics>,
    inbound: mpsc::Sender<Inbound>,
    /// Where `GET /report` reads (set once the store is open).
    report: std::sync::OnceLock<ReportSource>,
}

/// What `GET /report` needs: the store it reads (a reader beside the daemon's writer) and the
/// mapping it counts by.
#[derive(Clone, Debug)]
pub struct ReportSource {
    pub store: std::path::PathBuf,
    pub mapping: crate::mapping::LoadedMapping,
}

/// What the HTTP port shares with the daemon; cheap to clone.
#[derive(Clone)]
pub struct HttpState {
    shared: Arc<Shared>,
}

impl HttpState {
    /// The state and the receiving end of the inbound queue, which holds at most
    /// `inbound_capacity` calls (at least 1).
    pub fn new(
        settings: WebhookSettings,
        readiness: Readiness,
        inbound_capacity: usize,
    ) -> (Self, mpsc::Receiver<Inbound>) {
        let (tx, rx) = mpsc::channel(inbound_capacity.max(1));
        let state = HttpState {
            shared: Arc::new(Shared {
                settings,
                org_id: Mutex::new(None),
                readiness: Mutex::new(readiness),
                wake: Arc::new(Wake::default()),
                metrics: Arc::new(Metrics::new()),
                inbound: tx,
                report: std::sync::OnceLock::new(),
            }),
        };
        (state, rx)
    }

    /// Serves `GET /report` from this store (once; a second call changes nothing).
    pub fn serve_report(&self, source: ReportSource) {
        let _ = self.shared.report.set(source);
    }

    /// The pollers' bells.
    pub fn wake(&self) -> Arc<Wake> {
        self.shared.wake.clone()
    }

    /// The registry `/metrics` renders; the daemon counts into it.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// The organisation whose outbound messages are accepted (from the OAuth identity URL:
    /// [`webhook::org_id_from_identity_url`]). Until it is set, messages are answered 503 and
    /// Salesforce retries them.
    pub fn set_salesforce_org_id(&self, org_id: impl Into<String>) {
        *self.shared.org_id.lock().expect("org id lock") = Some(org_id.into());
    }

    pub fn update_readiness(&self, f: impl FnOnce(&mut Readiness)) {
        f(&mut self.shared.readiness.lock().expect("readiness lock"));
    }

    fn settings(&self) -> &WebhookSettings {
        &self.shared.settings
    }
}

/// Why the daemon's port could not be opened.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on {addr} for the daemon's webhooks and health checks: {source}; set daemon.listen (or MQLSYNC_DAEMON_LISTEN) to a free address"
)]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Opens the port (`daemon.listen`).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// The routes, on one router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route(
            "/webhooks/marketo",
            post(marketo_webhook).fallback(post_only),
        )
        .route(
            "/webhooks/salesforce",
            post(salesforce_webhook).fallback(post_only),
        )
        .route("/healthz", get(healthz).fallback(get_only))
        .route("/readyz", get(readyz).fallback(get_only))
        .route("/metrics", get(metrics_text).fallback(get_only))
        .route("/report", get(report_page).fallback(get_only))
        .fallback(not_found)
        .with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown` completes, then finishes the requests in
/// flight.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

/// A refused webhook call: one `warn` line, one count, the reason as the answer.
fn refuse(
    state: &HttpState,
    endpoint: Endpoint,
    result: WebhookResult,
    status: StatusCode,
    reason: &str,
) -> Response {
    tracing::warn!(
        endpoint = endpoint.label(),
        result = result.label(),
        status = status.as_u16(),
        reason,
        "webhook call refused"
    );
    state.shared.metrics.count_webhook(endpoint, result);
    text(status, format!("{reason}\n"))
}

enum BodyError {
    TooLarge,
    Timeout,
    Broken,
}

/// Reads a body of at most `limit` bytes: a larger declared length is refused before reading,
/// a larger stream as soon as it passes the limit.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, BodyError> {
    if let Some(length) = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && length > limit as u64
    {
        return Err(BodyError::TooLarge);
    }
    let read = async {
        let mut stream = body.into_data_stream();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| BodyError::Broken)?;
            if out.len() + chunk.len() > limit {
                return Err(BodyError::TooLarge);
            }
            out.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(out))
    };
    tokio::time::timeout(BODY_READ_TIMEOUT, read)
        .await
        .unwrap_or(Err(BodyError::Timeout))
}

/// The body of a webhook call, or the refusal to answer with.
async fn webhook_body(
    state: &HttpState,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, Response> {
    let limit = state.settings().max_body_bytes;
    read_body(headers, body, limit).await.map_err(|e| match e {
        BodyError::TooLarge => refuse(
            state,
            endpoint,
            WebhookResult::TooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is larger than {limit} bytes (daemon.max_body_bytes)"),
        ),
        BodyError::Timeout => refuse(
            state,
            endpoint,
            WebhookResult::Timeout,
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "the body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        ),
        BodyError::Broken => refuse(
            state,
            endpoint,
            WebhookResult::Malformed,
            StatusCode::BAD_REQUEST,
            "the body could not be read (the connection broke off)",
        ),
    })
}

/// Queues a call for the daemon; `false` when the queue is full (or the daemon is stopping).
fn enqueue(state: &HttpState, inbound: Inbound) -> bool {
    state.shared.inbound.try_send(inbound).is_ok()
}

async fn marketo_webhook(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = tracing::info_span!("webhook", endpoint = "marketo");
    async move {
        let endpoint = Endpoint::Marketo;
        let settings = state.settings();
        let header = &settings.secret_header;
        let Some(secret) = &settings.secret else {
            return refuse(
                &state,
                endpoint,
                WebhookResult::Unauthorized,
                StatusCode::UNAUTHORIZED,
                "no webhook secret is configured: set MQLSYNC_DAEMON_WEBHOOK_SECRET or daemon.webhook_secret_file",
            );
        };
        let Some(presented) = headers.get(header) else {
            return refuse(
                &state,
                endpoint,
                WebhookResult::Unauthorized,
                StatusCode::UNAUTHORIZED,
                &format!("the {header} header is missing"),
            );
        };
        if !webhook::secret_matches(presented.as_bytes(), secret.expose_secret().as_bytes()) {
            return refuse(
                &state,
                endpoint,
                WebhookResult::Unauthorized,
                StatusCode::UNAUTHORIZED,
                &format!("the {header} header does not hold the configured secret"),
            );
        }
        let body = match webhook_body(&state, endpoint, &headers, body).await {
            Ok(b) => b,
            Err(response) => return response,
        };
        let score = match webhook::parse_marketo(&body, &settings.score_fields, Timestamp::now())
        {
            Ok(s) => s,
            Err(e) => {
                return refuse(
                    &state,
                    endpoint,
                    WebhookResult::Malformed,
                    StatusCode::BAD_REQUEST,
                    &e.to_string(),
                );
            }
        };
        let lead = score.map_lead_id;
        let queued = enqueue(&state, Inbound::MarketoScore(score));
        state.shared.wake.score_activities.notify_one();
        let result = if queued {
            tracing::debug!(map_lead_id = lead, "score change webhook accepted");
            WebhookResult::Accepted
        } else {
            tracing::warn!(
                map_lead_id = lead,
                "inbound queue full: score change webhook acknowledged but dropped; the score poller will read it"
            );
            WebhookResult::Dropped
        };
        state.shared.metrics.count_webhook(endpoint, result);
        (
            StatusCode::OK,
            [(CONTENT_TYPE, "application/json")],
            "{\"status\":\"accepted\"}",
        )
            .into_response()
    }
    .instrument(span)
    .await
}

/// Which poller a CRM object belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CrmSource {
    Threshold,
    Mql,
    Person,
}

async fn salesforce_webhook(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = tracing::info_span!("webhook", endpoint = "salesforce");
    async move {
        let endpoint = Endpoint::Salesforce;
        let body = match webhook_body(&state, endpoint, &headers, body).await {
            Ok(b) => b,
            Err(response) => return response,
        };
        let message = match webhook::parse_outbound(&body) {
            Ok(m) => m,
            Err(e) => {
                return refuse(
                    &state,
                    endpoint,
                    WebhookResult::Malformed,
                    StatusCode::BAD_REQUEST,
                    &e.to_string(),
                );
            }
        };
        let expected = state.shared.org_id.lock().expect("org id lock").clone();
        let Some(expected) = expected else {
            return refuse(
                &state,
                endpoint,
                WebhookResult::Unavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                "the Salesforce organisation id is not known yet (mqlsync has not signed in); Salesforce retries the message",
            );
        };
        if !webhook::same_org(&expected, &message.organization_id) {
            return refuse(
                &state,
                endpoint,
                WebhookResult::Unauthorized,
                StatusCode::UNAUTHORIZED,
                &format!(
                    "OrganizationId {} is not the org mqlsync signed in to",
                    message.organization_id
                ),
            );
        }
        let objects = &state.settings().objects;
        let source_of = |object: &str| {
            if object.eq_ignore_ascii_case(&objects.threshold) {
                Some(CrmSource::Threshold)
            } else if object.eq_ignore_ascii_case(&objects.mql) {
                Some(CrmSource::Mql)
            } else if object.eq_ignore_ascii_case(&objects.lead)
                || object.eq_ignore_ascii_case(&objects.contact)
            {
                Some(CrmSource::Person)
            } else {
                None
            }
        };
        // One group per object, in message order.
        let received_at = Timestamp::now();
        let mut groups: Vec<(CrmSource, CrmRecords)> = Vec::new();
        let mut ignored: Vec<String> = Vec::new();
        for n in message.notifications {
            let Some(source) = source_of(&n.object) else {
                if !ignored.contains(&n.object) {
                    ignored.push(n.object);
                }
                continue;
            };
            let i = match groups.iter().position(|(_, g)| g.object == n.object) {
                Some(i) => i,
                None => {
                    groups.push((
                        source,
                        CrmRecords {
                            object: n.object.clone(),
                            record_ids: Vec::new(),
                            notification_ids: Vec::new(),
                            received_at,
                        },
                    ));
                    groups.len() - 1
                }
            };
            let group = &mut groups[i].1;
            if !group.record_ids.contains(&n.record_id) {
                group.record_ids.push(n.record_id);
            }
            group.notification_ids.push(n.id);
        }
        let result = if groups.is_empty() {
            tracing::warn!(
                objects = %ignored.join(", "),
                "outbound message about objects mqlsync does not read: acknowledged so that Salesforce stops sending it; remove them from the outbound message"
            );
            WebhookResult::Ignored
        } else {
            let mut dropped = false;
            for (source, records) in groups {
                let count = records.record_ids.len();
                let inbound = match source {
                    CrmSource::Threshold => Inbound::Threshold(records),
                    CrmSource::Mql => Inbound::MqlRecord(records),
                    CrmSource::Person => Inbound::Person(records),
                };
                dropped |= !enqueue(&state, inbound);
                let wake = &state.shared.wake;
                match source {
                    CrmSource::Threshold => wake.thresholds.notify_one(),
                    CrmSource::Mql => wake.mql_records.notify_one(),
                    CrmSource::Person => wake.people.notify_one(),
                }
                tracing::debug!(records = count, "outbound message accepted");
            }
            if dropped {
                tracing::warn!(
                    "inbound queue full: outbound message acknowledged but dropped; the pollers will read the records"
                );
                WebhookResult::Dropped
            } else {
                WebhookResult::Accepted
            }
        };
        state.shared.metrics.count_webhook(endpoint, result);
        (
            StatusCode::OK,
            [(CONTENT_TYPE, "text/xml; charset=utf-8")],
            webhook::ACK,
        )
            .into_response()
    }
    .instrument(span)
    .await
}

/// `GET /report?from=&to=&by=&group=`: the HTML report of the store, as `mqlsync report
/// --format html` prints it, built on a blocking thread (its queries read the whole range).
async fn report_page(
    State(state): State<HttpState>,
    axum::extract::Query(params): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    use crate::report;
    let Some(source) = state.shared.report.get().cloned() else {
        return text(
            StatusCode::NOT_FOUND,
            "no report: the daemon has no store open yet\n",
        );
    };
    let built = tokio::task::spawn_blocking(move || -> Result<String, (StatusCode, String)> {
        let bad = |e: report::ArgumentError| (StatusCode::BAD_REQUEST, e.to_string());
        let settings = report::Settings::from_mapping(&source.mapping);
        let param = |k: &str| params.get(k).filter(|v| !v.is_empty());
        let by = match param("by").map(String::as_str) {
            None => report::Period::Month,
            Some(text) => {
                <report::Period as clap::ValueEnum>::from_str(text, true).map_err(|_| {
                    (
                        StatusCode::BAD_REQUEST,
                        format!("by {text:?}: day, week, month, quarter or year"),
                    )
                })?
            }
        };
        let mut query = report::Query::parse(
            &source.mapping,
            &settings,
            param("from").map(String::as_str),
            param("to").map(String::as_str),
            by,
            param("group").map_or("segment", String::as_str),
            Timestamp::now(),
        )
        .map_err(bad)?;
        let unavailable =
            |e: crate::store::StoreError| (StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        let store = crate::store::Store::open_reader(&source.store).map_err(unavailable)?;
        if let Some(now) = store.clock().map_err(unavailable)? {
            query.now = now;
        }
        let built = report::build(&store, &settings, &query).map_err(unavailable)?;
        Ok(report::html::page(&built))
    })
    .await;
    match built {
        Ok(Ok(page)) => (
            StatusCode::OK,
            [(CONTENT_TYPE, "text/html; charset=utf-8")],
            page,
        )
            .into_response(),
        Ok(Err((status, reason))) => {
            tracing::warn!(status = status.as_u16(), reason, "report refused");
            text(status, format!("{reason}\n"))
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("report failed: {e}\n"),
        ),
    }
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n")
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let problems = state
        .shared
        .readiness
        .lock()
        .expect("readiness lock")
        .problems(Instant::now());
    if problems.is_empty() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n")
    }
}

async fn metrics_text(State(state): State<HttpState>) -> Response {
    sample_process(&state.shared.metrics);
    (
        StatusCode::OK,
        [(CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.shared.metrics.render(),
    )
        .into_response()
}

/// The process's resident memory (`VmRSS` of `/proc/self/status`, Linux only) and CPU time
/// (`getrusage`), read when `/metrics` is scraped.
fn sample_process(metrics: &Metrics) {
    let rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
    if let Some(kib) = rss_kib {
        metrics.set(
            metrics::Family::ProcessResidentMemoryBytes,
            &[],
            (kib * 1024) as f64,
        );
    }
    #[cfg(unix)]
    cpu_seconds(metrics);
}

#[cfg(unix)]
fn cpu_seconds(metrics: &Metrics) {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the pointer it is given; it is read only when
    // the call succeeded.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0 {
        let usage = unsafe { usage.assume_init() };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        metrics.set(
            metrics::Family::ProcessCpuSeconds,
            &[],
            secs(usage.ru_utime) + secs(usage.ru_stime),
        );
    }
}

/// The path for a log line: without the query (which could carry a token), shortened.
fn shown_path(uri: &Uri) -> String {
    uri.path().chars().take(100).collect()
}

fn wrong_method(method: &Method, uri: &Uri, allowed: &'static str) -> Response {
    tracing::warn!(
        %method,
        path = %shown_path(uri),
        status = 405,
        reason = "method not allowed",
        "request refused"
    );
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [
            (ALLOW, allowed),
            (CONTENT_TYPE, "text/plain; charset=utf-8"),
        ],
        format!("{} takes {allowed} only\n", uri.path()),
    )
        .into_response()
}

async fn post_only(method: Method, uri: Uri) -> Response {
    wrong_method(&method, &uri, "POST")
}

async fn get_only(method: Method, uri: Uri) -> Response {
    wrong_method(&method, &uri, "GET, HEAD")
}

async fn not_found(method: Method, uri: Uri) -> Response {
    tracing::warn!(
        %method,
        path = %shown_path(&uri),
        status = 404,
        reason = "no such endpoint",
        "request refused"
    );
    text(
        StatusCode::NOT_FOUND,
        "no such endpoint: /webhooks/marketo, /webhooks/salesforce, /healthz, /readyz, /metrics\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_arrives_is_refused_after_the_timeout() {
        let body = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let read = read_body(&HeaderMap::new(), body, 1024).await;
        assert!(matches!(read, Err(BodyError::Timeout)));
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_before_reading() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, "2048".parse().unwrap());
        let body = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let read = read_body(&headers, body, 1024).await;
        assert!(matches!(read, Err(BodyError::TooLarge)));
        let read = read_body(&HeaderMap::new(), Body::from("12345"), 5).await;
        assert!(matches!(read, Ok(b) if b == "12345"));
    }

    #[test]
    fn readiness_names_every_failing_condition() {
        let now = Instant::now();
        let mut r = Readiness::new(Duration::from_secs(60));
        assert_eq!(r.problems(now).len(), 5);
        r.store_open = true;
        r.salesforce = SystemHealth {
            authenticated: true,
            last_ok_poll: Some(now),
        };
        r.marketo = SystemHealth {
            authenticated: true,
            last_ok_poll: now.checked_sub(Duration::from_secs(61)),
        };
        assert_eq!(
            r.problems(now),
            ["marketo: last successful poll 61 s ago (more than 60 s)"]
        );
        r.marketo.last_ok_poll = now.checked_sub(Duration::from_secs(60));
        assert!(r.problems(now).is_empty());
    }
}
