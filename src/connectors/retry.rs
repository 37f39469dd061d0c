//! The retry mechanism, driven by [`ErrorClass`]: backoff delays come from `backon`'s exponential
//! builder (with jitter), a server `Retry-After` is honoured when longer, a dead token is renewed
//! at most twice per call. Classification lives in `error.rs`; this file must not inspect vendor
//! codes.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::Deserialize;

use super::error::{ErrorClass, Result};

/// How hard to retry one call (serde: part of each system's settings).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts after the first for `Retry` and `BackOff` errors.
    pub max_retries: usize,
    /// First backoff delay in milliseconds.
    pub min_delay_ms: u64,
    /// Longest single backoff delay in milliseconds (a `Retry-After` may be longer).
    pub max_delay_ms: u64,
    /// Shortest wait after a rate-limit error: Marketo's window is 20 s.
    pub rate_limit_delay_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            min_delay_ms: 500,
            max_delay_ms: 30_000,
            rate_limit_delay_ms: 20_000,
        }
    }
}

impl RetryPolicy {
    fn backoff(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.min_delay_ms))
            .with_max_delay(Duration::from_millis(self.max_delay_ms))
            .with_max_times(self.max_retries)
            .with_jitter()
            .build()
    }
}

/// Run `attempt` until it succeeds or its error's class says stop.
///
/// `Retry` and `BackOff` sleep (tokio time) and retry up to `max_retries`; `RenewToken` retries at
/// once, at most twice (the attempt itself must have invalidated the token it used); every other
/// class is returned to the caller.
pub async fn run<T, F, Fut>(policy: &RetryPolicy, attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    run_as(policy, Repeat::Harmless, attempt).await
}

/// Whether a call may be sent again when its outcome is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repeat {
    /// Reads, upserts and updates: sending them twice does what sending them once does.
    Harmless,
    /// Creates: a second send after a lost answer makes a second record. Only the errors that
    /// say the server refused the call before doing it (a dead token, a rate limit) are
    /// retried; a timeout, a dropped connection, a 5xx or an unreadable answer is returned,
    /// and the caller finds out what happened before it sends again.
    Unknown,
}

/// [`run`], for a call that may or may not be [`Repeat::Harmless`].
pub async fn run_as<T, F, Fut>(policy: &RetryPolicy, repeat: Repeat, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut delays = policy.backoff();
    let mut renewals = 0;
    loop {
        let err = match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let delay = match err.class() {
            ErrorClass::RenewToken if renewals < 2 => {
                renewals += 1;
                tracing::info!(error = %err, "renewing access token");
                continue;
            }
            ErrorClass::Retry if repeat == Repeat::Harmless => delays.next(),
            ErrorClass::BackOff => delays.next().map(|d| {
                d.max(Duration::from_millis(policy.rate_limit_delay_ms))
                    .max(err.retry_after().unwrap_or_default())
            }),
            _ => None,
        };
        match delay {
            Some(d) => {
                tracing::warn!(error = %err, delay_ms = d.as_millis() as u64, "retrying");
                tokio::time::sleep(d).await;
            }
            None => return Err(err),
        }
    }
}

/// Parse `Retry-After` given in seconds (the HTTP-date form is not used by either vendor).
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    value?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::error::{ConnectorError, System};
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    fn transient() -> ConnectorError {
        ConnectorError::Transport {
            system: System::Marketo,
            detail: "reset".into(),
            timeout: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_then_succeed() {
        let n = AtomicUsize::new(0);
        let out = run(&RetryPolicy::default(), || {
            let k = n.fetch_add(1, SeqCst) + 1;
            async move { if k < 3 { Err(transient()) } else { Ok(k) } }
        })
        .await;
        assert_eq!(out.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_must_not_repeat_is_retried_only_when_the_server_refused_it() {
        let n = AtomicUsize::new(0);
        let out: Result<()> = run_as(&RetryPolicy::default(), Repeat::Unknown, || {
            n.fetch_add(1, SeqCst);
            async { Err(transient()) }
        })
        .await;
        assert!(matches!(out, Err(ConnectorError::Transport { .. })));
        assert_eq!(n.load(SeqCst), 1, "a lost answer is not sent again");

        let n = AtomicUsize::new(0);
        let out = run_as(&RetryPolicy::default(), Repeat::Unknown, || {
            let k = n.fetch_add(1, SeqCst);
            async move {
                if k == 0 {
                    Err(ConnectorError::RateLimited {
                        system: System::Salesforce,
                        code: "REQUEST_LIMIT_EXCEEDED".into(),
                        message: "concurrent".into(),
                        retry_after: None,
                    })
                } else {
                    Ok(k)
                }
            }
        })
        .await;
        assert_eq!(out.unwrap(), 1, "a refused call is sent again");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_bounded() {
        let n = AtomicUsize::new(0);
        let policy = RetryPolicy {
            max_retries: 3,
            ..Default::default()
        };
        let out: Result<()> = run(&policy, || {
            n.fetch_add(1, SeqCst);
            async { Err(transient()) }
        })
        .await;
        assert!(out.is_err());
        assert_eq!(n.load(SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_cannot_be_reached_is_tried_once() {
        let n = AtomicUsize::new(0);
        let out: Result<()> = run(&RetryPolicy::default(), || async {
            n.fetch_add(1, SeqCst);
            Err(ConnectorError::Unreachable {
                system: System::Salesforce,
                url: "http://127.0.0.1:9".into(),
                cause: "connection refused".into(),
                setting: "salesforce.base_url".into(),
            })
        })
        .await;
        assert!(matches!(out, Err(ConnectorError::Unreachable { .. })));
        assert_eq!(n.load(SeqCst), 1, "refused is not worth a retry");
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limits_wait_at_least_retry_after() {
        let start = tokio::time::Instant::now();
        let n = AtomicUsize::new(0);
        run(&RetryPolicy::default(), || async {
            if n.fetch_add(1, SeqCst) == 0 {
                Err(ConnectorError::RateLimited {
                    system: System::Marketo,
                    code: "606".into(),
                    message: "Max rate limit".into(),
                    retry_after: Some(Duration::from_secs(45)),
                })
            } else {
                Ok(())
            }
        })
        .await
        .unwrap();
        assert!(start.elapsed() >= Duration::from_secs(45));
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_and_checkpoint_are_not_retried_and_renewal_is_bounded() {
        let n = AtomicUsize::new(0);
        let out: Result<()> = run(&RetryPolicy::default(), || async {
            n.fetch_add(1, SeqCst);
            Err(ConnectorError::Request {
                system: System::Salesforce,
                status: 400,
                code: "MALFORMED_QUERY".into(),
                message: String::new(),
            })
        })
        .await;
        assert!(out.is_err());
        assert_eq!(n.load(SeqCst), 1);

        let n = AtomicUsize::new(0);
        let start = tokio::time::Instant::now();
        let out: Result<()> = run(&RetryPolicy::default(), || async {
            n.fetch_add(1, SeqCst);
            Err(ConnectorError::SessionExpired {
                system: System::Marketo,
                code: "601".into(),
            })
        })
        .await;
        assert!(out.is_err());
        assert_eq!(n.load(SeqCst), 3, "first try + two renewals");
        assert_eq!(start.elapsed(), Duration::ZERO, "renewal does not sleep");
    }
}
