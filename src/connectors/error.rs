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
    /// Configuration or programming error (bad credentials, 603, malformed SOQL, 4xx): fail the run.
    Fatal,
}

/// Everything that can go wrong talking to the CRM or the MAP.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("{system}: network error ({detail}); retrying, check connectivity if it persists")]
    Transport {
        system: System,
        detail: String,
        timeout: bool,
    },

    #[error("{system}: server error HTTP {status} {code}: {message}; retrying with backoff")]
    Server {
        system: System,
        status: u16,
        code: String,
        message: String,
    },

    #[error("{system}: access token rejected ({code}); renewing the token")]
    SessionExpired { system: System, code: String },

    #[error("{system}: rate limit hit ({code}: {message}); backing off")]
    RateLimited {
        system: System,
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },

    #[error(
        "{system}: daily API quota spent ({code}: {message}); checkpoint and resume after {resume_at}"
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

    #[error(
        "{system}: authentication failed ({error}: {description}); check client id, user, key or secret"
    )]
    Auth {
        system: System,
        error: String,
        description: String,
    },

    #[error(
        "{system}: request rejected HTTP {status} {code}: {message}; fix the request or the configuration"
    )]
    Request {
        system: System,
        status: u16,
        code: String,
        message: String,
    },

    #[error("{system}: response could not be read ({detail}); retrying")]
    Malformed { system: System, detail: String },

    #[error("connector configuration error: {0}; fix the settings")]
    Config(String),
}

impl ConnectorError {
    /// The reaction this error calls for.
    pub fn class(&self) -> ErrorClass {
        match self {
            ConnectorError::Transport { .. } | ConnectorError::Server { .. } => ErrorClass::Retry,
            ConnectorError::Malformed { .. } => ErrorClass::Retry,
            ConnectorError::SessionExpired { .. } => ErrorClass::RenewToken,
            ConnectorError::RateLimited { .. } => ErrorClass::BackOff,
            ConnectorError::DailyLimit { resume_at, .. }
            | ConnectorError::BudgetReserve { resume_at, .. } => ErrorClass::Checkpoint {
                resume_at: *resume_at,
            },
            ConnectorError::Auth { .. }
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
