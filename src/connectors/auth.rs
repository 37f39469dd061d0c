//! Access-token cache shared by every task calling one system: renewed before expiry and after the
//! server rejects it, with one renewal in flight at a time (single flight: concurrent callers wait
//! for the same renewal instead of each fetching a token).
//!
//! Also how a token endpoint's refusal reads ([`refusal`], [`not_a_token_answer`]), shared by
//! both vendors' sign-ins.
//!
//! Tokens are `SecretString`; this file must never log or format a token.

use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::error::{ConnectorError, Result, System};
use super::http;

/// A token as the token endpoint returned it.
#[derive(Clone)]
pub struct FreshToken {
    pub access_token: SecretString,
    /// Salesforce: where the REST API lives for this session.
    pub instance_url: Option<String>,
    /// How long the token is good for, from now; `None` when the server does not say.
    pub lifetime: Option<Duration>,
}

/// A cached token plus the generation that identifies it for [`TokenCache::invalidate`].
#[derive(Clone)]
pub struct Session {
    pub access_token: SecretString,
    pub instance_url: Option<String>,
    pub generation: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("access_token", &"[redacted]")
            .field("instance_url", &self.instance_url)
            .field("generation", &self.generation)
            .finish()
    }
}

struct Slot {
    session: Option<Session>,
    renew_at: Option<Instant>,
    generation: u64,
}

/// The cache; share it with `Arc`.
pub struct TokenCache {
    slot: Mutex<Slot>,
    /// Renew this long before the stated expiry.
    margin: Duration,
    /// Renew after this long when the server gives no lifetime (Salesforce).
    default_lifetime: Duration,
}

impl TokenCache {
    pub fn new(margin: Duration, default_lifetime: Duration) -> Self {
        TokenCache {
            slot: Mutex::new(Slot {
                session: None,
                renew_at: None,
                generation: 0,
            }),
            margin,
            default_lifetime,
        }
    }

    /// The current session, fetching a new token with `fetch` when there is none or it is due.
    /// The lock is held across `fetch`: that is the single flight.
    pub async fn session<F, Fut>(&self, fetch: F) -> Result<Session>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<FreshToken>>,
    {
        let mut slot = self.slot.lock().await;
        let due = slot.renew_at.is_some_and(|t| Instant::now() >= t);
        if let (Some(s), false) = (&slot.session, due) {
            return Ok(s.clone());
        }
        let fresh = fetch().await?;
        let lifetime = fresh.lifetime.unwrap_or(self.default_lifetime);
        slot.generation += 1;
        slot.renew_at = Some(Instant::now() + lifetime.saturating_sub(self.margin));
        let session = Session {
            access_token: fresh.access_token,
            instance_url: fresh.instance_url,
            generation: slot.generation,
        };
        slot.session = Some(session.clone());
        tracing::debug!(generation = slot.generation, "access token renewed");
        Ok(session)
    }

    /// Drop the token of `generation` after the server rejected it. A newer token (renewed by
    /// another caller meanwhile) is kept.
    pub async fn invalidate(&self, generation: u64) {
        let mut slot = self.slot.lock().await;
        if slot.generation == generation {
            slot.session = None;
        }
    }
}

/// A token endpoint's answer that is not a token and not an OAuth refusal: a 5xx, an HTML
/// page, a REST error array, an empty body. It is reported as the server's own answer
/// ([`ConnectorError::TokenEndpoint`], retried when a 5xx). `None` for a success, and for an
/// OAuth error object (`{"error": ...}`, RFC 6749 section 5.2) in a 4xx, which the caller reads
/// as a refusal of the credentials ([`refusal`]).
pub fn not_a_token_answer(
    system: System,
    url: &str,
    status: u16,
    body: &[u8],
    setting: &str,
) -> Option<ConnectorError> {
    if (200..300).contains(&status) {
        return None;
    }
    let oauth = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .is_some_and(|v| v.get("error").is_some_and(serde_json::Value::is_string));
    if oauth && status < 500 {
        return None;
    }
    Some(ConnectorError::TokenEndpoint {
        system,
        url: url.to_string(),
        status,
        body: http::snippet(body),
        setting: setting.to_string(),
    })
}

/// An OAuth error object as a refusal of `what` (`the client credentials`), naming what to
/// check.
pub fn refusal(system: System, what: &str, body: &[u8], check: &str) -> ConnectorError {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let field = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    ConnectorError::Auth {
        system,
        what: what.to_string(),
        error: field("error"),
        description: field("error_description"),
        check: check.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn token(n: u32, secs: u64) -> FreshToken {
        FreshToken {
            access_token: format!("tok{n}").into(),
            instance_url: None,
            lifetime: Some(Duration::from_secs(secs)),
        }
    }

    #[test]
    fn a_token_endpoint_answer_is_a_refusal_only_when_it_is_an_oauth_error() {
        let refusal =
            br#"{"error":"invalid_client","error_description":"invalid client credentials"}"#;
        assert!(not_a_token_answer(System::Salesforce, "u", 400, refusal, "k").is_none());
        assert!(not_a_token_answer(System::Salesforce, "u", 200, b"{}", "k").is_none());
        let array =
            br#"[{"errorCode":"SERVER_UNAVAILABLE","message":"Server temporarily unavailable"}]"#;
        let e = not_a_token_answer(System::Salesforce, "https://login/x", 503, array, "k").unwrap();
        assert_eq!(
            e.to_string(),
            "Salesforce's token endpoint https://login/x answered 503 Service Unavailable: \
             [{\"errorCode\":\"SERVER_UNAVAILABLE\",\"message\":\"Server temporarily unavailable\"}]; \
             the server's own error: run again later"
        );
        assert_eq!(e.class(), crate::connectors::ErrorClass::Retry);
        // An OAuth-shaped 5xx is still the server's trouble, not the credentials'.
        let e = not_a_token_answer(System::Marketo, "u", 500, refusal, "k").unwrap();
        assert_eq!(e.class(), crate::connectors::ErrorClass::Retry);
        // A wrong URL: an HTML 404, to be fixed in the settings.
        let e = not_a_token_answer(
            System::Marketo,
            "u",
            404,
            b"<html>\n<h1>Not Found</h1>",
            "marketo.identity_url",
        )
        .unwrap();
        assert_eq!(
            e.to_string(),
            "Marketo's token endpoint u answered 404 Not Found: <html> <h1>Not Found</h1>; check marketo.identity_url"
        );
        assert_eq!(e.class(), crate::connectors::ErrorClass::Fatal);
    }

    #[test]
    fn a_refusal_names_what_was_refused_and_what_to_check() {
        let e = refusal(
            System::Salesforce,
            "the client credentials",
            br#"{"error":"invalid_client","error_description":"invalid client credentials"}"#,
            "MQLSYNC_SALESFORCE_CLIENT_SECRET",
        );
        assert_eq!(
            e.to_string(),
            "Salesforce refused the client credentials (invalid_client: invalid client credentials): check MQLSYNC_SALESFORCE_CLIENT_SECRET"
        );
        assert_eq!(e.class(), crate::connectors::ErrorClass::Fatal);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_renewal() {
        let cache = Arc::new(TokenCache::new(
            Duration::from_secs(60),
            Duration::from_secs(3600),
        ));
        let fetches = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (cache, fetches) = (cache.clone(), fetches.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .session(async || {
                        let n = fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(token(n, 3600))
                    })
                    .await
                    .unwrap()
                    .access_token
                    .expose_secret()
                    .to_string()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), "tok0");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn renews_before_expiry_and_after_invalidation() {
        let cache = TokenCache::new(Duration::from_secs(60), Duration::from_secs(3600));
        let mut n = 0;
        let mut get = async |cache: &TokenCache| {
            cache
                .session(async || {
                    n += 1;
                    Ok(token(n, 600))
                })
                .await
                .unwrap()
        };
        let s1 = get(&cache).await;
        tokio::time::advance(Duration::from_secs(500)).await;
        assert_eq!(get(&cache).await.generation, s1.generation, "still fresh");
        tokio::time::advance(Duration::from_secs(41)).await;
        let s2 = get(&cache).await;
        assert_ne!(s2.generation, s1.generation, "renewed 60 s before expiry");
        cache.invalidate(s1.generation).await; // stale rejection: keep the newer token
        assert_eq!(get(&cache).await.generation, s2.generation);
        cache.invalidate(s2.generation).await;
        assert_ne!(get(&cache).await.generation, s2.generation);
    }
}
