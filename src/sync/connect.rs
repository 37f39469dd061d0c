//! Builds the connectors from the validated config: the one place where mqlsync's settings
//! become the connectors' settings, including the names the connectors' errors use for them
//! (`salesforce.base_url in mqlsync.toml`, `MQLSYNC_MARKETO_CLIENT_SECRET`), and signs in to
//! both systems before a command starts work.

use serde_json::json;

use crate::config::Secret;
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
    let credentials = match &sf.auth {
        ConfigAuth::JwtBearer { .. } => format!(
            "{}, {} and {}, and that the connected app holds the key's certificate and pre-authorizes the user",
            key(config, "salesforce.client_id"),
            key(config, "salesforce.username"),
            key(config, "salesforce.private_key_file"),
        ),
        ConfigAuth::ClientCredentials => format!(
            "the client secret {} and {}",
            from(sf.client_secret.as_ref()),
            key(config, "salesforce.client_id")
        ),
        ConfigAuth::RefreshToken => format!(
            "the refresh token {} and {}",
            from(sf.refresh_token.as_ref()),
            key(config, "salesforce.client_id")
        ),
    };
    let settings: SalesforceSettings = serde_json::from_value(json!({
        "base_url": sf.base_url,
        "token_url": format!("{}/services/oauth2/token", sf.login_url),
        "api_version": sf.api_version,
        "auth": auth,
        "daily_reserve_pct": sf.daily_reserve_percent,
        "names": {
            "base_url": key(config, "salesforce.base_url"),
            "token_url": key(config, "salesforce.login_url"),
            "credentials": credentials,
        },
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
        "names": {
            "base_url": key(config, "marketo.base_url"),
            "token_url": key(config, "marketo.identity_url"),
            "credentials": format!(
                "the client secret {} and {}",
                from(mk.client_secret.as_ref()),
                key(config, "marketo.client_id")
            ),
        },
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

/// Sign in to Salesforce, then to Marketo, before a command starts work: wrong credentials or a
/// server that cannot be reached stop it before it opens the store or reads anything. The
/// tokens stay in the clients' caches for the calls that follow (no extra call).
pub async fn sign_in(sf: &SalesforceClient, mk: &MarketoClient) -> Result<(), ConnectorError> {
    sf.sign_in().await?;
    mk.sign_in().await
}

/// A config key as the user set it: the environment variable that overrode it, else the key
/// in the config file (or the key alone when there is no file).
fn key(config: &Config, key: &str) -> String {
    let var = format!("MQLSYNC_{}", key.replace('.', "_").to_uppercase());
    if config.overrides.contains(&var) {
        return var;
    }
    match &config.file {
        Some(file) => format!("{key} in {}", file.display()),
        None => key.to_string(),
    }
}

/// Where a secret came from: `in MQLSYNC_SALESFORCE_CLIENT_SECRET`, `in file /etc/...`.
fn from(secret: Option<&Secret>) -> String {
    secret.map_or_else(String::new, |s| format!("in {}", s.origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str, env: &[(&str, &str)]) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mqlsync.toml");
        std::fs::write(&file, toml).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        crate::config::load(Some(&file), &env).unwrap()
    }

    #[test]
    fn a_key_is_named_where_the_user_set_it() {
        let c = config(
            "[marketo]\nbase_url = \"https://a.mktorest.com\"\nclient_id = \"id\"\n",
            &[
                ("MQLSYNC_MARKETO_CLIENT_SECRET", "s"),
                (
                    "MQLSYNC_MARKETO_IDENTITY_URL",
                    "https://b.example.com/identity",
                ),
            ],
        );
        let file = c.file.as_ref().unwrap().display().to_string();
        assert_eq!(
            key(&c, "marketo.base_url"),
            format!("marketo.base_url in {file}")
        );
        assert_eq!(
            key(&c, "marketo.identity_url"),
            "MQLSYNC_MARKETO_IDENTITY_URL"
        );
        let mk = c.marketo.as_ref().unwrap();
        assert_eq!(
            from(mk.client_secret.as_ref()),
            "in MQLSYNC_MARKETO_CLIENT_SECRET"
        );
    }
}
