//! The one error type of the connectors and its class: what the caller (and the retry loop) must do.
//!
//! Vendor codes become a [`ConnectorError`] here, at the edge; nothing above the connectors sees a
//! Salesforce `errorCode` or a Marketo `"606"`. This file must not retry or sleep: it only names the
//! reaction ([`ErrorClass`]); `retry.rs` acts on it. Messages never contain a secret.

use std::time::Duration;

use jiff::Timestamp;

/// Which remote system an error came from (for messages and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    Salesforce,
    Marketo,
}

impl std::fmt::Display for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            System::Salesforce => "Salesforce",
            System::Marketo => "Marketo",
        })
    }
}

/// The reaction an error calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient (timeout, 5xx, dropped connection, 604/608/611/713, malformed body): retry with
    /// exponential backoff and jitter.
    Retry,
    /// The access token is dead (401 `INVALID_SESSION_ID`, 601, 602): renew it once, retry at once.
    RenewToken,
    /// A short-term rate limit (606, 615, 429, concurrent `REQUEST_LIMIT_EXCEEDED`): wait for the
    /// window (`retry_after` when known) and retry.
    BackOff,
    /// One record of a batch failed; the batch is fine. Only used for per-record outcomes.
    FailRecord,
    /// A daily quota is spent (Salesforce `TotalRequests`, Marketo 607, or our own reserve):
    /// checkpoint and stop; do not call again before `resume_at`.
    Checkpoint { resume_at: Timestamp },
    /// Configuration or programming error (bad credentials, 603, malformed SOQL, 4xx, a host that
    /// does not resolve or refuses the connection): fail the run.
    Fatal,
}

/// Everything that can go wrong talking to the CRM or the MAP.
///
/// Messages say what happened and what to check, once: they never say what the retry loop is
/// about to do ("retrying"), because the error a caller finally sees is the one the loop gave
/// up on. The reaction is [`ConnectorError::class`]; `retry.rs` logs it while it acts.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("{system}: network error ({detail}): check the network and that {system} is up")]
    Transport {
        system: System,
        detail: String,
        timeout: bool,
    },

    /// Nothing answers at the address, or the host name does not resolve: the configuration
    /// (or the server) is wrong, and trying again in a few seconds does not change that.
    #[error("cannot reach {system} at {url} ({cause}): check {setting} or that the server is up")]
    Unreachable {
        system: System,
        /// The URL as configured (the base URL, or the token endpoint's when on another host).
        url: String,
        /// `connection refused`, `host name not found: ...`.
        cause: String,
        /// What sets the URL, as the user knows it (`salesforce.base_url in mqlsync.toml`).
        setting: String,
    },

    #[error("{system}: server error {}: {message}; a problem on {system}'s side: run again later", status_and_code(*status, code))]
    Server {
        system: System,
        status: u16,
        code: String,
        message: String,
    },

    /// A token endpoint answered with something that is not an OAuth answer (an HTML page, a
    /// REST error array, an empty body) or a 5xx: the server's own words, not a credential
    /// problem.
    #[error(
        "{system}'s token endpoint {url} answered {}: {body}; {}",
        status_line(*status),
        token_endpoint_advice(*status, setting)
    )]
    TokenEndpoint {
        system: System,
        /// The endpoint without its query (Marketo's carries the secret there).
        url: String,
        status: u16,
        /// The start of the body, on one line.
        body: String,
        /// What sets the endpoint's URL, as the user knows it.
        setting: String,
    },

    #[error(
        "{system}: the access token was refused ({code}) even after renewing it: check that the integration user may still sign in"
    )]
    SessionExpired { system: System, code: String },

    #[error(
        "{system}: rate limit hit ({}): another integration may share the limit; run again later",
        vendor_said(code, message)
    )]
    RateLimited {
        system: System,
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },

    #[error(
        "{system}: daily API quota spent ({}); checkpoint and resume after {resume_at}",
        vendor_said(code, message)
    )]
    DailyLimit {
        system: System,
        code: String,
        message: String,
        resume_at: Timestamp,
    },

    #[error(
        "{system}: only {remaining} of {limit} daily calls left, at or below the reserve of {reserve}; only essential calls run; resume after {resume_at}"
    )]
    BudgetReserve {
        system: System,
        remaining: u64,
        limit: u64,
        reserve: u64,
        resume_at: Timestamp,
    },

    /// The server refused to sign us in (an OAuth error such as `invalid_client`), or refused
    /// the session for the API.
    #[error(
        "{system} refused {what} ({}): check {check}",
        vendor_said(error, description)
    )]
    Auth {
        system: System,
        /// What was refused: `the client credentials`, `the refresh token`, ...
        what: String,
        error: String,
        description: String,
        /// What to check, as the user knows it (`MQLSYNC_SALESFORCE_CLIENT_SECRET`).
        check: String,
    },

    #[error(
        "{system}: request rejected {}: {message}; fix the request or the configuration",
        status_and_code(*status, code)
    )]
    Request {
        system: System,
        status: u16,
        code: String,
        message: String,
    },

    #[error(
        "{system}: the answer could not be read ({detail}): a problem on {system}'s side or of a proxy in between"
    )]
    Malformed { system: System, detail: String },

    #[error("connector configuration error: {0}; fix the settings")]
    Config(String),
}

/// `HTTP 503`, `HTTP 400 MALFORMED_QUERY`, or `code 604` for a Marketo error in an HTTP 200.
fn status_and_code(status: u16, code: &str) -> String {
    match (status, code.is_empty()) {
        (_, true) => format!("HTTP {status}"),
        (200, false) => format!("code {code}"),
        (_, false) => format!("HTTP {status} {code}"),
    }
}

/// `503 Service Unavailable`.
fn status_line(status: u16) -> String {
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason());
    match reason {
        Some(r) => format!("{status} {r}"),
        None => status.to_string(),
    }
}

fn token_endpoint_advice(status: u16, setting: &str) -> String {
    match status {
        500.. => "the server's own error: run again later".into(),
        429 => "too many sign-ins: run again later".into(),
        _ => format!("check {setting}"),
    }
}

/// A vendor's code and message, whichever of them it sent.
fn vendor_said(code: &str, message: &str) -> String {
    match (code.is_empty(), message.is_empty()) {
        (false, false) => format!("{code}: {message}"),
        (false, true) => code.to_string(),
        (true, false) => message.to_string(),
        (true, true) => "no reason given".into(),
    }
}

/// What the user's configuration calls a client's settings, so that an error can name what to
/// check (`salesforce.base_url in mqlsync.toml`); the connectors take values and know no config
/// file. Each absent name falls back to the connector's own field name.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SettingNames {
    /// What sets the base URL of the API.
    pub base_url: Option<String>,
    /// What sets the token endpoint, when it is not on the base URL's host.
    pub token_url: Option<String>,
    /// What holds the credentials (the secret's variable or file, the client id's key).
    pub credentials: Option<String>,
}

impl ConnectorError {
    /// The reaction this error calls for.
    pub fn class(&self) -> ErrorClass {
        match self {
            ConnectorError::Transport { .. } | ConnectorError::Server { .. } => ErrorClass::Retry,
            ConnectorError::Malformed { .. } => ErrorClass::Retry,
            ConnectorError::TokenEndpoint { status, .. } => match status {
                500.. => ErrorClass::Retry,
                429 => ErrorClass::BackOff,
                _ => ErrorClass::Fatal,
            },
            ConnectorError::SessionExpired { .. } => ErrorClass::RenewToken,
            ConnectorError::RateLimited { .. } => ErrorClass::BackOff,
            ConnectorError::DailyLimit { resume_at, .. }
            | ConnectorError::BudgetReserve { resume_at, .. } => ErrorClass::Checkpoint {
                resume_at: *resume_at,
            },
            ConnectorError::Auth { .. }
            | ConnectorError::Unreachable { .. }
            | ConnectorError::Request { .. }
            | ConnectorError::Config(_) => ErrorClass::Fatal,
        }
    }

    /// When a spent daily quota can be used again (only for `Checkpoint`-class errors).
    pub fn resume_at(&self) -> Option<Timestamp> {
        match self.class() {
            ErrorClass::Checkpoint { resume_at } => Some(resume_at),
            _ => None,
        }
    }

    /// The server's `Retry-After`, when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ConnectorError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl RecordError {
    /// `Retry` when sending the record again later may succeed, else `FailRecord`.
    pub fn class(&self) -> ErrorClass {
        if self.retryable {
            ErrorClass::Retry
        } else {
            ErrorClass::FailRecord
        }
    }
}

pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;

/// One failed record of a batch write, kept with its outcome.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordError {
    /// Vendor code, e.g. `REQUIRED_FIELD_MISSING` or Marketo `1004`.
    pub code: String,
    pub message: String,
    pub fields: Vec<String>,
    /// True when sending the same record again later may succeed (`UNABLE_TO_LOCK_ROW`).
    pub retryable: bool,
}
