//! Builds the connectors from the validated config: the one place where mqlsync's settings
//! become the connectors' settings.

use serde_json::json;

use crate::config::{Config, SalesforceAuth as ConfigAuth};
use crate::connectors::ConnectorError;
use crate::connectors::marketo::{MarketoClient, MarketoSettings};
use crate::connectors::salesforce::{SalesforceClient, SalesforceSecrets, SalesforceSettings};

/// A config that cannot make a connector.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the config has no [{0}] section; `run` needs both [salesforce] and [marketo]")]
    Missing(&'static str),
    #[error("{system}: {detail}")]
    Settings {
        system: &'static str,
        detail: String,
    },
    #[error(transparent)]
    Connector(#[from] ConnectorError),
}

/// The Salesforce client of a config.
pub fn salesforce(config: &Config) -> Result<SalesforceClient, ConnectError> {
    let sf = config
        .salesforce
        .as_ref()
        .ok_or(ConnectError::Missing("salesforce"))?;
    let auth = match &sf.auth {
        ConfigAuth::JwtBearer {
            username,
            private_key_file,
        } => {
            json!({"kind": "jwt_bearer", "client_id": sf.client_id, "username": username, "private_key_file": private_key_file})
        }
        ConfigAuth::ClientCredentials => {
            json!({"kind": "client_credentials", "client_id": sf.client_id})
        }
        ConfigAuth::RefreshToken => json!({"kind": "refresh_token", "client_id": sf.client_id}),
    };
    let settings: SalesforceSettings = serde_json::from_value(json!({
        "base_url": sf.base_url,
        "token_url": format!("{}/services/oauth2/token", sf.login_url),
        "api_version": sf.api_version,
        "auth": auth,
        "daily_reserve_pct": sf.daily_reserve_percent,
    }))
    .map_err(|e| ConnectError::Settings {
        system: "salesforce",
        detail: e.to_string(),
    })?;
    let secrets = SalesforceSecrets {
        client_secret: sf.client_secret.as_ref().map(|s| s.value.clone()),
        refresh_token: sf.refresh_token.as_ref().map(|s| s.value.clone()),
    };
    Ok(SalesforceClient::new(settings, secrets)?)
}

/// The Marketo client of a config.
pub fn marketo(config: &Config) -> Result<MarketoClient, ConnectError> {
    let mk = config
        .marketo
        .as_ref()
        .ok_or(ConnectError::Missing("marketo"))?;
    let settings: MarketoSettings = serde_json::from_value(json!({
        "base_url": mk.base_url,
        "identity_url": mk.identity_url,
        "client_id": mk.client_id,
        "calls_per_20s": mk.calls_per_20s,
        "max_in_flight": mk.max_in_flight,
        "daily_quota": mk.daily_quota,
    }))
    .map_err(|e| ConnectError::Settings {
        system: "marketo",
        detail: e.to_string(),
    })?;
    let secret = mk
        .client_secret
        .as_ref()
        .map(|s| s.value.clone())
        .ok_or(ConnectError::Missing("marketo client secret"))?;
    Ok(MarketoClient::new(settings, secret)?)
}
