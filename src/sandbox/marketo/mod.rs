//! PLACEHOLDER for the Marketo emulator, written on another branch (helper "mkto"): exactly
//! the interface of the sandbox interface brief, with an empty router, so that `server.rs`,
//! `admin.rs` and `cli.rs` compile and run. The lead replaces this file at merge. It must not
//! grow behaviour here.

use std::sync::Arc;

use serde_json::{Value, json};

use super::clock::SandboxClock;
use super::faults::Faults;
use super::log::RequestLog;
use super::world::{ScoreField, World};

pub struct MarketoConfig {
    pub client_id: String,
    pub client_secret: String,
    /// "123-ABC-456" style.
    pub munchkin_id: String,
    /// 100 calls / 20 s (606), 10 concurrent (615), daily quota (607).
    pub limits: bool,
    /// Default 50_000.
    pub daily_quota: u64,
    /// Default 3600.
    pub token_ttl_secs: i64,
    pub webhook: Option<MarketoWebhook>,
}

pub struct MarketoWebhook {
    pub url: String,
    pub template: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Clone)]
pub struct Marketo {
    config: Arc<MarketoConfig>,
}

impl MarketoConfig {
    pub fn sandbox_default() -> Self {
        Self {
            client_id: "sandbox-marketo-client-id".into(),
            client_secret: "sandbox-marketo-client-secret".into(),
            munchkin_id: "123-ABC-456".into(),
            limits: true,
            daily_quota: 50_000,
            token_ttl_secs: 3600,
            webhook: None,
        }
    }
}

impl Marketo {
    pub fn new(
        _world: &World,
        config: MarketoConfig,
        _clock: SandboxClock,
        _faults: Arc<Faults>,
        _log: Arc<RequestLog>,
    ) -> Self {
        Self {
            config: Arc::new(config),
        }
    }

    /// Every Marketo route (identity + REST + bulk) at the server root, plus this system's
    /// admin routes under /__sandbox/marketo/... (empty in this placeholder).
    pub fn router(&self) -> axum::Router {
        let _ = &self.config;
        axum::Router::new()
    }

    /// Applies a score change as a smart campaign would (not in this placeholder).
    pub fn apply_score_change(
        &self,
        _map_id: i64,
        _field: ScoreField,
        _delta: i64,
        _campaign_id: Option<i64>,
    ) -> Result<(), String> {
        Err("the Marketo emulator is a placeholder on this branch".into())
    }

    /// All state as JSON for the admin API and tests.
    pub fn state(&self) -> Value {
        json!({"placeholder": true})
    }
}
