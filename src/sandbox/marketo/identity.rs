//! The identity service: `GET|POST /identity/oauth/token?grant_type=client_credentials&...`.
//!
//! Tokens belong to a client id; asking again before expiry returns the same token with
//! `expires_in` counting down, as Marketo does. Token checks on REST calls accept only the
//! `Authorization: Bearer` header (the `access_token` query parameter is ignored, as after
//! Marketo's removal of it): missing -> 603, unknown or invalidated -> 601, expired -> 602.
//! This module must not read the wall clock: time comes from the caller (the sandbox clock).

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};

use super::envelope::ApiError;

#[derive(Clone, Debug)]
struct Issued {
    client_id: String,
    expires_at: Timestamp,
}

/// Issued tokens, by token and by client.
#[derive(Debug, Default)]
pub struct TokenStore {
    inner: Mutex<Tokens>,
}

#[derive(Debug, Default)]
struct Tokens {
    by_token: HashMap<String, Issued>,
    current: HashMap<String, String>,
    issued: u64,
}

impl TokenStore {
    /// Issues (or returns the live) token for a client; `(token, expires_in)`.
    pub fn token(&self, client_id: &str, now: Timestamp, ttl_secs: i64) -> (String, i64) {
        let mut tokens = self.inner.lock().expect("token lock");
        if let Some(token) = tokens.current.get(client_id).cloned()
            && let Some(issued) = tokens.by_token.get(&token)
        {
            let left = issued.expires_at.duration_since(now).as_secs();
            if left > 0 {
                return (token, left);
            }
        }
        tokens.issued += 1;
        let n = tokens.issued;
        let r: u128 = rand::random();
        let hex = format!("{:032x}", r ^ u128::from(n));
        let token = format!(
            "{}-{}-{}-{}-{}:sb",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        );
        tokens.by_token.insert(
            token.clone(),
            Issued {
                client_id: client_id.to_string(),
                expires_at: now + SignedDuration::from_secs(ttl_secs),
            },
        );
        tokens.current.insert(client_id.to_string(), token.clone());
        (token, ttl_secs)
    }

    /// Checks a bearer token; returns the client id it belongs to.
    pub fn check(&self, bearer: Option<&str>, now: Timestamp) -> Result<String, ApiError> {
        let Some(token) = bearer.filter(|t| !t.is_empty()) else {
            return Err(ApiError::standard("603"));
        };
        let tokens = self.inner.lock().expect("token lock");
        match tokens.by_token.get(token) {
            None => Err(ApiError::standard("601")),
            Some(issued) if issued.expires_at <= now => Err(ApiError::standard("602")),
            Some(issued) => Ok(issued.client_id.clone()),
        }
    }

    /// Makes every token issued so far expired (the `expire_tokens` fault): their next use
    /// answers 602 and the next identity call issues a new token.
    pub fn expire_all(&self, now: Timestamp) {
        let mut tokens = self.inner.lock().expect("token lock");
        for issued in tokens.by_token.values_mut() {
            issued.expires_at = issued.expires_at.min(now);
        }
    }

    pub fn count(&self) -> usize {
        self.inner.lock().expect("token lock").by_token.len()
    }
}
