//! The OAuth 2.0 token endpoint (`POST /services/oauth2/token`: client credentials with
//! HTTP Basic or body credentials, refresh token, JWT bearer with an RS256 assertion checked
//! against the configured public key), `/services/oauth2/revoke`, and the sessions the REST
//! API authenticates against: idle sessions expire after `session_ttl_secs` on the sandbox
//! clock and then get 401 `INVALID_SESSION_ID`.
//!
//! Token-endpoint errors are a JSON object `{"error", "error_description"}` with HTTP 400,
//! unlike REST errors. It must never log a token or a secret.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use jiff::{SignedDuration, Timestamp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::store::{api_user_id, org_id};
use super::{Inner, Reply, Salesforce, error};

pub(crate) struct Sessions {
    rng: ChaCha8Rng,
    /// Access token -> the instant it expires unless used again.
    access: HashMap<String, Timestamp>,
    refresh: HashMap<String, ()>,
}

impl Sessions {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5f0a_u64),
            access: HashMap::new(),
            refresh: HashMap::new(),
        }
    }

    fn random(&mut self, n: usize) -> String {
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz._";
        (0..n)
            .map(|_| ALPHABET[self.rng.random_range(0..ALPHABET.len())] as char)
            .collect()
    }

    fn mint_access(&mut self, now: Timestamp, ttl_secs: i64) -> String {
        let token = format!("{}!AQ{}", &org_id()[..15], self.random(96));
        self.access
            .insert(token.clone(), now + SignedDuration::from_secs(ttl_secs));
        token
    }

    pub fn mint_refresh(&mut self) -> String {
        let token = format!("5Aep861{}", self.random(80));
        self.refresh.insert(token.clone(), ());
        token
    }

    /// Ends every session (a fault rule's `expire_tokens`); refresh tokens stay valid.
    pub fn expire_all(&mut self) {
        self.access.clear();
    }

    pub fn live_count(&self, now: Timestamp) -> usize {
        self.access.values().filter(|&&t| t > now).count()
    }
}

/// Checks the Bearer session of a REST call and renews its idle timer.
pub(crate) fn authenticate(
    inner: &Inner,
    headers: &HeaderMap,
    now: Timestamp,
) -> Result<(), Response> {
    let expired = || {
        error(
            StatusCode::UNAUTHORIZED,
            "INVALID_SESSION_ID",
            "Session expired or invalid",
        )
    };
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("OAuth "))
        })
        .map(str::trim)
        .ok_or_else(expired)?;
    let mut sessions = inner.sessions.lock().expect("sessions lock");
    match sessions.access.get_mut(token) {
        Some(expires) if *expires > now => {
            *expires = now + SignedDuration::from_secs(inner.config.session_ttl_secs);
            Ok(())
        }
        Some(_) => {
            sessions.access.remove(token);
            Err(expired())
        }
        None => Err(expired()),
    }
}

fn oauth_error(code: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": code, "error_description": description})),
    )
        .into_response()
}

/// Decodes standard or URL-safe base64 (padding optional).
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn form(body: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(serde::Deserialize)]
struct Assertion {
    iss: Option<String>,
    sub: Option<String>,
    prn: Option<String>,
    aud: Option<Value>,
    exp: Option<Value>,
}

/// `POST /services/oauth2/token`.
pub(crate) async fn token(
    State(sf): State<Salesforce>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Reply {
    let inner = sf.inner();
    let config = &inner.config;
    let params = form(&body);
    let now = inner.clock.now();
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let instance_url = format!("http://{host}");
    let identity = format!("{instance_url}/id/{}/{}", org_id(), api_user_id());
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(base64_decode)
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        });
    let (client_id, client_secret) = match basic {
        Some((id, secret)) => (Some(id), Some(secret)),
        None => (
            params.get("client_id").cloned(),
            params.get("client_secret").cloned(),
        ),
    };
    let Some(grant) = params.get("grant_type") else {
        return Err(oauth_error("invalid_request", "grant type is missing"));
    };
    let mut response = json!({
        "instance_url": instance_url,
        "id": identity,
        "token_type": "Bearer",
    });
    let issued_at = now.as_millisecond().to_string();
    match grant.as_str() {
        "client_credentials" => {
            if client_id.as_deref() != Some(config.client_id.as_str()) {
                return Err(oauth_error(
                    "invalid_client_id",
                    "client identifier invalid",
                ));
            }
            if client_secret.as_deref() != Some(config.client_secret.as_str()) {
                return Err(oauth_error("invalid_client", "invalid client credentials"));
            }
            response["scope"] = json!("api");
        }
        "refresh_token" => {
            if client_id.as_deref() != Some(config.client_id.as_str()) {
                return Err(oauth_error(
                    "invalid_client_id",
                    "client identifier invalid",
                ));
            }
            if client_secret
                .as_deref()
                .is_some_and(|s| s != config.client_secret)
            {
                return Err(oauth_error("invalid_client", "invalid client credentials"));
            }
            let known = params.get("refresh_token").is_some_and(|t| {
                inner
                    .sessions
                    .lock()
                    .expect("sessions lock")
                    .refresh
                    .contains_key(t)
            });
            if !known {
                return Err(oauth_error("invalid_grant", "expired access/refresh token"));
            }
            response["scope"] = json!("api refresh_token");
        }
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
            check_assertion(inner, params.get("assertion"), now, host)?;
            response["scope"] = json!("api");
            let token = inner
                .sessions
                .lock()
                .expect("sessions lock")
                .mint_access(now, config.session_ttl_secs);
            response["access_token"] = json!(token);
            return Ok(axum::Json(response).into_response());
        }
        _ => {
            return Err(oauth_error(
                "unsupported_grant_type",
                "grant type not supported",
            ));
        }
    }
    let token = inner
        .sessions
        .lock()
        .expect("sessions lock")
        .mint_access(now, config.session_ttl_secs);
    response["access_token"] = json!(token);
    response["issued_at"] = json!(issued_at);
    response["signature"] = json!(signature(
        &config.client_secret,
        &format!("{identity}{issued_at}")
    ));
    Ok(axum::Json(response).into_response())
}

/// Base64 HMAC-SHA256 of `message` keyed with the client secret (the vendor's `signature`).
fn signature(secret: &str, message: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
        .unwrap_or_default()
}

fn check_assertion(
    inner: &Inner,
    assertion: Option<&String>,
    now: Timestamp,
    host: &str,
) -> Result<(), Response> {
    let config = &inner.config;
    let Some(assertion) = assertion else {
        return Err(oauth_error("invalid_request", "assertion is missing"));
    };
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(config.jwt_public_key_pem.as_bytes())
        .map_err(|_| oauth_error("invalid_client", "connected app has no valid certificate"))?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Assertion>(assertion, &key, &validation)
        .map_err(|_| oauth_error("invalid_grant", "invalid assertion"))?
        .claims;
    if claims.iss.as_deref() != Some(config.client_id.as_str()) {
        return Err(oauth_error(
            "invalid_client_id",
            "client identifier invalid",
        ));
    }
    let subject = claims.prn.or(claims.sub);
    if subject.as_deref() != Some(config.username.as_str()) {
        return Err(oauth_error(
            "invalid_grant",
            "user hasn't approved this consumer",
        ));
    }
    let audiences: Vec<String> = match claims.aud {
        Some(Value::String(a)) => vec![a],
        Some(Value::Array(a)) => a
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => vec![],
    };
    let accepted = |aud: &str| {
        let aud = aud.trim_end_matches('/');
        aud == "https://login.salesforce.com"
            || aud == "https://test.salesforce.com"
            || aud.ends_with(host)
    };
    if !audiences.iter().any(|a| accepted(a)) {
        return Err(oauth_error("invalid_grant", "audience is invalid"));
    }
    let exp = match claims.exp {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    let Some(exp) = exp else {
        return Err(oauth_error("invalid_grant", "invalid assertion"));
    };
    if exp <= now.as_second() {
        return Err(oauth_error("invalid_grant", "expired authorization code"));
    }
    Ok(())
}

/// `POST /services/oauth2/revoke`: ends an access or refresh token.
pub(crate) async fn revoke(State(sf): State<Salesforce>, body: bytes::Bytes) -> Response {
    let params = form(&body);
    let Some(token) = params.get("token") else {
        return oauth_error("unsupported_token_type", "this token type is not supported");
    };
    let mut sessions = sf.inner().sessions.lock().expect("sessions lock");
    let known = sessions.access.remove(token).is_some() || sessions.refresh.remove(token).is_some();
    if known {
        StatusCode::OK.into_response()
    } else {
        oauth_error("invalid_token", "invalid token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_forms_decode() {
        assert_eq!(base64_decode("aWQ6c2VjcmV0").unwrap(), b"id:secret");
        let f = form(b"grant_type=client_credentials&client_id=a%2Bb&x=1+2");
        assert_eq!(f["client_id"], "a+b");
        assert_eq!(f["x"], "1 2");
    }
}
