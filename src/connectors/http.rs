//! The shared HTTP layer: one reqwest client per system (rustls, timeouts, gzip off), and the
//! mapping of transport failures (timeout, refused or dropped connection, unreadable body) onto
//! [`ConnectorError`]. Vendor envelopes are read in the vendor modules; this file must not know
//! them, and must not put request URLs with tokens or secrets into errors.

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
