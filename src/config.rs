//! Settings: a TOML file (`mqlsync.toml`) with `MQLSYNC_*` environment overrides, validated
//! into ready values. Secrets come only from the environment or from a file path, never
//! from the TOML itself, and are never printed. Every error names the file (or the
//! variable), the key and what is allowed.
//!
//! | key | env override | meaning |
//! | --- | --- | --- |
//! | `mapping` | `MQLSYNC_MAPPING` | mapping file (relative to the config file); the built-in default when absent |
//! | `store` | `MQLSYNC_STORE` | SQLite store path (default `state/mqlsync.sqlite`) |
//! | `salesforce.*` | `MQLSYNC_SALESFORCE_<KEY>` | base_url, login_url, api_version, auth, client_id, username, private_key_file, client_secret_file, refresh_token_file, daily_reserve_percent |
//! | `marketo.*` | `MQLSYNC_MARKETO_<KEY>` | base_url, identity_url, client_id, client_secret_file, calls_per_20s, max_in_flight, daily_quota |
//! | `sync.*` | `MQLSYNC_SYNC_<KEY>` | poll_interval_secs, batch_size |
//! | secrets | `MQLSYNC_SALESFORCE_CLIENT_SECRET`, `MQLSYNC_SALESFORCE_REFRESH_TOKEN`, `MQLSYNC_MARKETO_CLIENT_SECRET` | or the `*_file` keys |

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {key}: {message}")]
pub struct ConfigError {
    /// The file (with line when known) or the environment variable.
    pub source_name: String,
    pub key: String,
    pub message: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    mapping: Option<String>,
    store: Option<String>,
    salesforce: Option<RawSalesforce>,
    marketo: Option<RawMarketo>,
    #[serde(default)]
    sync: RawSync,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawSalesforce {
    base_url: String,
    login_url: Option<String>,
    api_version: Option<String>,
    auth: String,
    client_id: String,
    username: Option<String>,
    private_key_file: Option<String>,
    client_secret_file: Option<String>,
    refresh_token_file: Option<String>,
    daily_reserve_percent: Option<f64>,
    /// Refused: secrets never live in the config file.
    client_secret: Option<String>,
    refresh_token: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawMarketo {
    base_url: String,
    identity_url: Option<String>,
    client_id: String,
    client_secret_file: Option<String>,
    calls_per_20s: Option<u32>,
    max_in_flight: Option<u32>,
    daily_quota: Option<u64>,
    /// Refused: secrets never live in the config file.
    client_secret: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    poll_interval_secs: Option<u64>,
    batch_size: Option<usize>,
}

/// How mqlsync signs in to Salesforce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SalesforceAuth {
    /// Server-to-server: an RS256 assertion signed with the private key.
    JwtBearer {
        username: String,
        private_key_file: PathBuf,
    },
    ClientCredentials,
    RefreshToken,
}

/// A secret and where it came from (for messages; the value is never shown).
#[derive(Clone, Debug)]
pub struct Secret {
    pub value: SecretString,
    pub origin: String,
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("<redacted: from {}>", self.origin))
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        self.value.expose_secret()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SalesforceConfig {
    pub base_url: String,
    pub login_url: String,
    pub api_version: String,
    pub auth: SalesforceAuth,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub refresh_token: Option<Secret>,
    /// Below this share of the daily API limit left, only essential calls run.
    pub daily_reserve_percent: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MarketoConfig {
    pub base_url: String,
    pub identity_url: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub calls_per_20s: u32,
    pub max_in_flight: u32,
    pub daily_quota: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SyncConfig {
    pub poll_interval_secs: u64,
    pub batch_size: usize,
}

/// The validated configuration.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// The file it was read from, if any.
    pub file: Option<PathBuf>,
    /// The mapping file; `None` is the built-in default.
    pub mapping: Option<PathBuf>,
    pub store: PathBuf,
    pub salesforce: Option<SalesforceConfig>,
    pub marketo: Option<MarketoConfig>,
    pub sync: SyncConfig,
    /// The environment variables that overrode the file.
    pub overrides: Vec<String>,
}

/// Environment variable -> config key path.
const OVERRIDES: &[(&str, &[&str])] = &[
    ("MQLSYNC_MAPPING", &["mapping"]),
    ("MQLSYNC_STORE", &["store"]),
    ("MQLSYNC_SALESFORCE_BASE_URL", &["salesforce", "base_url"]),
    ("MQLSYNC_SALESFORCE_LOGIN_URL", &["salesforce", "login_url"]),
    (
        "MQLSYNC_SALESFORCE_API_VERSION",
        &["salesforce", "api_version"],
    ),
    ("MQLSYNC_SALESFORCE_AUTH", &["salesforce", "auth"]),
    ("MQLSYNC_SALESFORCE_CLIENT_ID", &["salesforce", "client_id"]),
    ("MQLSYNC_SALESFORCE_USERNAME", &["salesforce", "username"]),
    (
        "MQLSYNC_SALESFORCE_PRIVATE_KEY_FILE",
        &["salesforce", "private_key_file"],
    ),
    (
        "MQLSYNC_SALESFORCE_CLIENT_SECRET_FILE",
        &["salesforce", "client_secret_file"],
    ),
    (
        "MQLSYNC_SALESFORCE_REFRESH_TOKEN_FILE",
        &["salesforce", "refresh_token_file"],
    ),
    (
        "MQLSYNC_SALESFORCE_DAILY_RESERVE_PERCENT",
        &["salesforce", "daily_reserve_percent"],
    ),
    ("MQLSYNC_MARKETO_BASE_URL", &["marketo", "base_url"]),
    ("MQLSYNC_MARKETO_IDENTITY_URL", &["marketo", "identity_url"]),
    ("MQLSYNC_MARKETO_CLIENT_ID", &["marketo", "client_id"]),
    (
        "MQLSYNC_MARKETO_CLIENT_SECRET_FILE",
        &["marketo", "client_secret_file"],
    ),
    (
        "MQLSYNC_MARKETO_CALLS_PER_20S",
        &["marketo", "calls_per_20s"],
    ),
    (
        "MQLSYNC_MARKETO_MAX_IN_FLIGHT",
        &["marketo", "max_in_flight"],
    ),
    ("MQLSYNC_MARKETO_DAILY_QUOTA", &["marketo", "daily_quota"]),
    (
        "MQLSYNC_SYNC_POLL_INTERVAL_SECS",
        &["sync", "poll_interval_secs"],
    ),
    ("MQLSYNC_SYNC_BATCH_SIZE", &["sync", "batch_size"]),
];

/// Secret variables, read directly and never placed in the table.
const SECRET_VARS: &[&str] = &[
    "MQLSYNC_SALESFORCE_CLIENT_SECRET",
    "MQLSYNC_SALESFORCE_REFRESH_TOKEN",
    "MQLSYNC_MARKETO_CLIENT_SECRET",
];

/// Reads the config from `file` (none: defaults) and the given environment.
pub fn load(file: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let shown = file.map_or_else(
        || "(no config file)".to_string(),
        |f| f.display().to_string(),
    );
    let text = match file {
        Some(f) => std::fs::read_to_string(f).map_err(|e| ConfigError {
            source_name: shown.clone(),
            key: "(file)".into(),
            message: format!("cannot read the config: {e}"),
        })?,
        None => String::new(),
    };
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|e| toml_error(&shown, &text, &e))?;
    let mut overrides = Vec::new();
    for (name, value) in env {
        if !name.starts_with("MQLSYNC_")
            || SECRET_VARS.contains(&name.as_str())
            || name == "MQLSYNC_LOG"
        {
            continue;
        }
        let Some((_, path)) = OVERRIDES.iter().find(|(n, _)| n == name) else {
            let known: Vec<&str> = OVERRIDES
                .iter()
                .map(|(n, _)| *n)
                .chain(SECRET_VARS.iter().copied())
                .collect();
            return Err(ConfigError {
                source_name: format!("{name} (environment)"),
                key: name.clone(),
                message: format!("not a setting mqlsync knows; known: {}", known.join(", ")),
            });
        };
        set_path(&mut table, path, literal(value));
        overrides.push(name.clone());
    }
    let raw: RawConfig = RawConfig::deserialize(toml::Value::Table(table)).map_err(|e| {
        let named = overrides.iter().find(|o| {
            e.message()
                .contains(&o.trim_start_matches("MQLSYNC_").to_ascii_lowercase())
        });
        ConfigError {
            source_name: named.map_or_else(|| shown.clone(), |n| format!("{n} (environment)")),
            key: e
                .message()
                .split('`')
                .nth(1)
                .unwrap_or("(value)")
                .to_string(),
            message: e.message().trim().replace('\n', " "),
        }
    })?;
    validate(raw, file, &shown, env, overrides)
}

fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    ConfigError {
        source_name: line.map_or_else(|| file.to_string(), |l| format!("{file}:{l}")),
        key: e
            .message()
            .split('`')
            .nth(1)
            .unwrap_or("(syntax)")
            .to_string(),
        message: e.message().trim().replace('\n', " "),
    }
}

/// An environment value as a TOML value: numbers and booleans as such, anything else a string.
fn literal(raw: &str) -> toml::Value {
    let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| {
            matches!(
                v,
                toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)
            )
        });
    parsed.unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(table: &mut toml::Table, path: &[&str], value: toml::Value) {
    let (last, parents) = path.split_last().expect("a key");
    let mut here = table;
    for p in parents {
        here = here
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("a table");
    }
    here.insert(last.to_string(), value);
}

fn secret(
    env: &[(String, String)],
    var: &str,
    file_key: Option<&String>,
    base: &Path,
    source: &str,
    key: &str,
) -> Result<Option<Secret>, ConfigError> {
    if let Some((_, v)) = env.iter().find(|(n, _)| n == var) {
        return Ok(Some(Secret {
            value: SecretString::from(v.clone()),
            origin: var.to_string(),
        }));
    }
    let Some(path) = file_key else {
        return Ok(None);
    };
    let full = crate::mapping::resolve_path(base, path);
    let value = std::fs::read_to_string(&full).map_err(|e| ConfigError {
        source_name: source.to_string(),
        key: key.to_string(),
        message: format!("cannot read the secret file {}: {e}", full.display()),
    })?;
    Ok(Some(Secret {
        value: SecretString::from(value.trim().to_string()),
        origin: format!("file {}", full.display()),
    }))
}

fn check_url(source: &str, key: &str, url: &str) -> Result<String, ConfigError> {
    let ok =
        (url.starts_with("https://") || url.starts_with("http://")) && url.len() > "https://".len();
    if !ok {
        return Err(ConfigError {
            source_name: source.to_string(),
            key: key.to_string(),
            message: format!("{url:?} is not an http(s) URL (e.g. https://acme.my.salesforce.com)"),
        });
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn validate(
    raw: RawConfig,
    file: Option<&Path>,
    shown: &str,
    env: &[(String, String)],
    overrides: Vec<String>,
) -> Result<Config, ConfigError> {
    let base = file
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let err = |key: &str, message: String| ConfigError {
        source_name: shown.to_string(),
        key: key.to_string(),
        message,
    };
    let salesforce = match raw.salesforce {
        None => None,
        Some(sf) => {
            if sf.client_secret.is_some() || sf.refresh_token.is_some() {
                let key = if sf.client_secret.is_some() {
                    "salesforce.client_secret"
                } else {
                    "salesforce.refresh_token"
                };
                return Err(err(key, "secrets are not read from the config file; set MQLSYNC_SALESFORCE_CLIENT_SECRET / MQLSYNC_SALESFORCE_REFRESH_TOKEN or client_secret_file / refresh_token_file".into()));
            }
            let client_secret = secret(
                env,
                "MQLSYNC_SALESFORCE_CLIENT_SECRET",
                sf.client_secret_file.as_ref(),
                &base,
                shown,
                "salesforce.client_secret_file",
            )?;
            let refresh_token = secret(
                env,
                "MQLSYNC_SALESFORCE_REFRESH_TOKEN",
                sf.refresh_token_file.as_ref(),
                &base,
                shown,
                "salesforce.refresh_token_file",
            )?;
            let auth = match sf.auth.as_str() {
                "jwt_bearer" => {
                    let username = sf.username.clone().ok_or_else(|| {
                        err(
                            "salesforce.username",
                            "jwt_bearer needs the integration user's username".into(),
                        )
                    })?;
                    let key = sf.private_key_file.clone().ok_or_else(|| {
                        err(
                            "salesforce.private_key_file",
                            "jwt_bearer needs the path of the PEM private key".into(),
                        )
                    })?;
                    SalesforceAuth::JwtBearer {
                        username,
                        private_key_file: crate::mapping::resolve_path(&base, &key),
                    }
                }
                "client_credentials" => {
                    if client_secret.is_none() {
                        return Err(err("salesforce.client_secret_file", "client_credentials needs MQLSYNC_SALESFORCE_CLIENT_SECRET or client_secret_file".into()));
                    }
                    SalesforceAuth::ClientCredentials
                }
                "refresh_token" => {
                    if refresh_token.is_none() {
                        return Err(err("salesforce.refresh_token_file", "refresh_token needs MQLSYNC_SALESFORCE_REFRESH_TOKEN or refresh_token_file".into()));
                    }
                    SalesforceAuth::RefreshToken
                }
                other => {
                    return Err(err(
                        "salesforce.auth",
                        format!("{other:?}: use jwt_bearer, client_credentials or refresh_token"),
                    ));
                }
            };
            let reserve = sf.daily_reserve_percent.unwrap_or(20.0);
            if !(0.0..100.0).contains(&reserve) {
                return Err(err(
                    "salesforce.daily_reserve_percent",
                    format!("{reserve}: a percentage from 0 up to (not including) 100"),
                ));
            }
            let base_url = check_url(shown, "salesforce.base_url", &sf.base_url)?;
            Some(SalesforceConfig {
                login_url: match &sf.login_url {
                    Some(u) => check_url(shown, "salesforce.login_url", u)?,
                    None => base_url.clone(),
                },
                base_url,
                api_version: sf.api_version.unwrap_or_else(|| "62.0".into()),
                auth,
                client_id: sf.client_id,
                client_secret,
                refresh_token,
                daily_reserve_percent: reserve,
            })
        }
    };
    let marketo = match raw.marketo {
        None => None,
        Some(m) => {
            if m.client_secret.is_some() {
                return Err(err("marketo.client_secret", "secrets are not read from the config file; set MQLSYNC_MARKETO_CLIENT_SECRET or client_secret_file".into()));
            }
            let client_secret = secret(
                env,
                "MQLSYNC_MARKETO_CLIENT_SECRET",
                m.client_secret_file.as_ref(),
                &base,
                shown,
                "marketo.client_secret_file",
            )?;
            if client_secret.is_none() {
                return Err(err(
                    "marketo.client_secret_file",
                    "Marketo needs MQLSYNC_MARKETO_CLIENT_SECRET or client_secret_file".into(),
                ));
            }
            let calls = m.calls_per_20s.unwrap_or(100);
            if calls == 0 || calls > 100 {
                return Err(err(
                    "marketo.calls_per_20s",
                    format!("{calls}: from 1 to 100 (Marketo allows 100 calls in 20 s)"),
                ));
            }
            let in_flight = m.max_in_flight.unwrap_or(10);
            if in_flight == 0 || in_flight > 10 {
                return Err(err(
                    "marketo.max_in_flight",
                    format!("{in_flight}: from 1 to 10 (Marketo allows 10 concurrent calls)"),
                ));
            }
            let base_url = check_url(shown, "marketo.base_url", &m.base_url)?;
            Some(MarketoConfig {
                identity_url: match &m.identity_url {
                    Some(u) => check_url(shown, "marketo.identity_url", u)?,
                    None => format!("{base_url}/identity"),
                },
                base_url,
                client_id: m.client_id,
                client_secret,
                calls_per_20s: calls,
                max_in_flight: in_flight,
                daily_quota: m.daily_quota.unwrap_or(50_000),
            })
        }
    };
    let poll = raw.sync.poll_interval_secs.unwrap_or(30);
    if poll == 0 {
        return Err(err(
            "sync.poll_interval_secs",
            "0: poll at least every second (1 or more)".into(),
        ));
    }
    let batch = raw.sync.batch_size.unwrap_or(2_000);
    if batch == 0 {
        return Err(err(
            "sync.batch_size",
            "0: a batch has 1 or more events".into(),
        ));
    }
    Ok(Config {
        file: file.map(Path::to_path_buf),
        mapping: raw.mapping.map(|m| crate::mapping::resolve_path(&base, &m)),
        store: crate::mapping::resolve_path(
            &base,
            raw.store.as_deref().unwrap_or("state/mqlsync.sqlite"),
        ),
        salesforce,
        marketo,
        sync: SyncConfig {
            poll_interval_secs: poll,
            batch_size: batch,
        },
        overrides,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("mqlsync.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    const GOOD: &str = r#"
store = "data/m.sqlite"
[salesforce]
base_url = "https://acme.my.salesforce.com/"
auth = "client_credentials"
client_id = "3MVG9"
[marketo]
base_url = "https://123-ABC-456.mktorest.com"
client_id = "abc"
"#;

    #[test]
    fn secrets_come_from_the_environment_and_are_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), GOOD);
        let cfg = load(
            Some(&file),
            &env(&[
                ("MQLSYNC_SALESFORCE_CLIENT_SECRET", "s3cr3t-sf"),
                ("MQLSYNC_MARKETO_CLIENT_SECRET", "s3cr3t-mk"),
            ]),
        )
        .unwrap();
        assert_eq!(
            cfg.salesforce
                .as_ref()
                .unwrap()
                .client_secret
                .as_ref()
                .unwrap()
                .expose(),
            "s3cr3t-sf"
        );
        assert_eq!(cfg.store, dir.path().join("data/m.sqlite"));
        assert_eq!(
            cfg.salesforce.as_ref().unwrap().base_url,
            "https://acme.my.salesforce.com"
        );
        let shown = toml::to_string(&cfg).unwrap() + &format!("{cfg:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("<redacted: from MQLSYNC_MARKETO_CLIENT_SECRET>"));
    }

    #[test]
    fn environment_overrides_win_and_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), GOOD);
        let e = env(&[
            ("MQLSYNC_SALESFORCE_CLIENT_SECRET", "x"),
            ("MQLSYNC_MARKETO_CLIENT_SECRET", "y"),
            ("MQLSYNC_SYNC_POLL_INTERVAL_SECS", "5"),
            ("MQLSYNC_MARKETO_BASE_URL", "http://127.0.0.1:9"),
        ]);
        let cfg = load(Some(&file), &e).unwrap();
        assert_eq!(cfg.sync.poll_interval_secs, 5);
        assert_eq!(
            cfg.marketo.unwrap().identity_url,
            "http://127.0.0.1:9/identity"
        );
        assert_eq!(cfg.overrides.len(), 2);
    }

    #[test]
    fn a_secret_in_the_file_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            &GOOD.replace(
                "client_id = \"abc\"",
                "client_id = \"abc\"\nclient_secret = \"oops\"",
            ),
        );
        let e = load(
            Some(&file),
            &env(&[("MQLSYNC_SALESFORCE_CLIENT_SECRET", "x")]),
        )
        .unwrap_err();
        assert_eq!(e.key, "marketo.client_secret");
        assert!(
            e.to_string().contains("mqlsync.toml") && !e.to_string().contains("oops"),
            "{e}"
        );
    }

    #[test]
    fn bad_keys_and_values_name_file_line_key_and_what_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), &GOOD.replace("auth = ", "auht = "));
        let e = load(Some(&file), &[]).unwrap_err();
        assert!(
            e.source_name.ends_with("mqlsync.toml:3") || e.source_name.contains("mqlsync.toml"),
            "{e}"
        );
        assert!(e.to_string().contains("auht"), "{e}");
        let file = write(dir.path(), &GOOD.replace("client_credentials", "password"));
        let e = load(Some(&file), &[]).unwrap_err();
        assert_eq!(e.key, "salesforce.auth");
        assert!(e.message.contains("jwt_bearer"), "{e}");
        let e = load(
            Some(&write(dir.path(), GOOD)),
            &env(&[("MQLSYNC_SYNC_POLL_INTERVAL", "5")]),
        )
        .unwrap_err();
        assert!(
            e.source_name.contains("environment")
                && e.message.contains("MQLSYNC_SYNC_POLL_INTERVAL_SECS"),
            "{e}"
        );
    }

    #[test]
    fn no_file_means_defaults() {
        let cfg = load(None, &[]).unwrap();
        assert!(cfg.salesforce.is_none() && cfg.marketo.is_none() && cfg.mapping.is_none());
        assert_eq!(cfg.store, PathBuf::from("state/mqlsync.sqlite"));
    }
}
