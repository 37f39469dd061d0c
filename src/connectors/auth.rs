//! Access-token cache shared by every task calling one system: renewed before expiry and after the
//! server rejects it, with one renewal in flight at a time (single flight: concurrent callers wait
//! for the same renewal instead of each fetching a token).
//!
//! Tokens are `SecretString`; this file must never log or format a token.

use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::error::Result;

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
