//! The shared HTTP layer: one reqwest client per system (rustls, timeouts, gzip off), and the
//! mapping of transport failures (timeout, refused or dropped connection, unknown host,
//! unreadable body) onto [`ConnectorError`]. Vendor envelopes are read in the vendor modules;
//! this file must not know them, and must not put request URLs with tokens or secrets into
//! errors (an unreachable server is named by its configured URL, which carries neither).

use std::time::Duration;

use super::error::{ConnectorError, Result, System};

/// Build the HTTP client for one system.
pub fn client(request_timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(request_timeout)
        .connect_timeout(Duration::from_secs(30).min(request_timeout))
        .user_agent(concat!("mqlsync/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ConnectorError::Config(format!("cannot build HTTP client: {e}")))
}

/// What a client (and its clones) has sent so far: every HTTP request (API calls, token
/// requests, retries, describes, file downloads), and among them the token requests. What a
/// run reports as the calls it made: the figure a count at the server gives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub requests: u64,
    pub token_requests: u64,
}

impl std::ops::Sub for Sent {
    type Output = Sent;

    fn sub(self, earlier: Sent) -> Sent {
        Sent {
            requests: self.requests.saturating_sub(earlier.requests),
            token_requests: self.token_requests.saturating_sub(earlier.token_requests),
        }
    }
}

/// The counters behind [`Sent`], shared by a client's clones.
#[derive(Clone, Debug, Default)]
pub struct RequestCount(std::sync::Arc<[std::sync::atomic::AtomicU64; 2]>);

impl RequestCount {
    /// Counts one request about to be sent.
    pub fn count(&self) {
        self.0[0].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts one token request about to be sent (a request too).
    pub fn count_token(&self) {
        self.count();
        self.0[1].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn sent(&self) -> Sent {
        Sent {
            requests: self.0[0].load(std::sync::atomic::Ordering::Relaxed),
            token_requests: self.0[1].load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// Where a request goes, as the user configured it: named when nothing answers there.
#[derive(Clone, Debug)]
pub struct Target {
    /// The configured URL (base URL or token endpoint), never a request URL with a query.
    pub url: String,
    /// What sets it, as the user knows it (`salesforce.base_url in mqlsync.toml`).
    pub setting: String,
}

/// A request that could not be sent: [`ConnectorError::Unreachable`] when the host name does
/// not resolve or nothing listens at the address (trying again in a few seconds does not
/// change either), else a [`transport`] failure, which is retried.
pub fn send_error(system: System, e: reqwest::Error, target: &Target) -> ConnectorError {
    match unreachable_cause(&e) {
        Some(cause) => ConnectorError::Unreachable {
            system,
            url: target.url.clone(),
            cause,
            setting: target.setting.clone(),
        },
        None => transport(system, e),
    }
}

/// `connection refused` or `host name not found (...)` when the connection failed for one of
/// these reasons; a timeout, a reset or a TLS failure is `None`. reqwest only says "connect
/// error": the cause is read from the source chain (hyper-util's "dns error", then the OS error).
fn unreachable_cause(e: &reqwest::Error) -> Option<String> {
    if !e.is_connect() || e.is_timeout() {
        return None;
    }
    let mut dns = false;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return Some("connection refused".into());
            }
            if dns {
                return Some(format!("host name not found: {io}"));
            }
        }
        dns |= s.to_string() == "dns error";
        source = s.source();
    }
    dns.then(|| "host name not found".into())
}

/// The start of a body for a message: at most 200 characters, on one line (HTML error pages
/// span many).
pub fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(800)]);
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &one_line[..i]),
        None if one_line.is_empty() => "(empty body)".into(),
        None => one_line,
    }
}

/// A transport-level failure (no usable HTTP response). URLs are stripped: they may carry
/// query values.
pub fn transport(system: System, e: reqwest::Error) -> ConnectorError {
    let timeout = e.is_timeout();
    let kind = if timeout {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "connection dropped while reading the body"
    } else {
        "request failed"
    };
    let e = e.without_url();
    ConnectorError::Transport {
        system,
        detail: format!("{kind}: {e}"),
        timeout,
    }
}

/// Read a whole response body (pages are bounded by the vendor: 2,000 or 300 records).
pub async fn body(system: System, resp: reqwest::Response) -> Result<bytes::Bytes> {
    resp.bytes().await.map_err(|e| transport(system, e))
}

/// Parse JSON, mapping failure to `Malformed` (retryable: a truncated body or an HTML error page
/// from a proxy is usually transient).
pub fn json<T: serde::de::DeserializeOwned>(system: System, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        let head: String = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into();
        ConnectorError::Malformed {
            system,
            detail: format!("invalid JSON ({e}) starting {head:?}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::ErrorClass;

    fn target() -> Target {
        Target {
            url: "configured".into(),
            setting: "salesforce.base_url in mqlsync.toml".into(),
        }
    }

    async fn send(url: &str) -> ConnectorError {
        let e = client(Duration::from_secs(5))
            .unwrap()
            .get(url)
            .send()
            .await
            .expect_err("nothing answers there");
        send_error(System::Salesforce, e, &target())
    }

    #[tokio::test]
    async fn a_refused_connection_is_unreachable_and_fatal() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        }; // dropped: nothing listens there any more
        let err = send(&format!("http://127.0.0.1:{port}/services/data")).await;
        let ConnectorError::Unreachable { cause, url, .. } = &err else {
            panic!("not unreachable: {err:?}");
        };
        assert_eq!(cause, "connection refused");
        assert_eq!(url, "configured", "the configured URL, not the request's");
        assert_eq!(err.class(), ErrorClass::Fatal);
        assert_eq!(
            err.to_string(),
            "cannot reach Salesforce at configured (connection refused): check salesforce.base_url in mqlsync.toml or that the server is up"
        );
    }

    #[tokio::test]
    async fn an_unknown_host_is_unreachable_and_fatal() {
        let err = send("http://mqlsync-nowhere.invalid/").await;
        let ConnectorError::Unreachable { cause, .. } = &err else {
            panic!("not unreachable: {err:?}");
        };
        assert!(cause.starts_with("host name not found"), "{cause}");
        assert_eq!(err.class(), ErrorClass::Fatal);
    }

    #[test]
    fn a_snippet_is_one_short_line() {
        let html = format!("<html>\n  <body>\n{}</body></html>", "x".repeat(500));
        let s = snippet(html.as_bytes());
        assert!(s.starts_with("<html> <body> xxx"), "{s}");
        assert_eq!(s.chars().count(), 203);
        assert_eq!(snippet(b""), "(empty body)");
    }
}
