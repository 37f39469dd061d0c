//! Settings: a TOML file (`mqlsync.toml`) with `MQLSYNC_*` environment overrides, validated
//! into ready values. Secrets come only from the environment or from a file path, never
//! from the TOML itself, and are never printed. Every error names the file and line (or the
//! variable), the key and what is allowed; an unknown key or variable also names the one it
//! was probably meant to be (never a secret key, which a file may not hold).
//!
//! Loading runs in stages: the file's keys (syntax, unknown keys, value types, each with its
//! line), then the environment's overrides (each error names its variable), then the merged
//! values. Commands that only use the store load with [`Scope::Local`] and need no secret.
//! Must not: read a secret from the file, or print one.
//!
//! | key | env override | meaning |
//! | --- | --- | --- |
//! | `mapping` | `MQLSYNC_MAPPING` | mapping file (relative to the config file); the built-in default when absent |
//! | `store` | `MQLSYNC_STORE` | SQLite store path (default `state/mqlsync.sqlite`) |
//! | `salesforce.*` | `MQLSYNC_SALESFORCE_<KEY>` | base_url, login_url, api_version, auth, client_id, username, private_key_file, client_secret_file, refresh_token_file, daily_reserve_percent |
//! | `marketo.*` | `MQLSYNC_MARKETO_<KEY>` | base_url, identity_url, client_id, client_secret_file, calls_per_20s, max_in_flight, daily_quota, bulk_poll_interval_secs |
//! | `sync.*` | `MQLSYNC_SYNC_<KEY>` | poll_interval_secs, batch_size, go_live (`mql` or `wait`), bulk_ingest_above, current_scores (`auto`, `by_filter`, `bulk`), leads_since, bulk_extract_above_days |
//! | `daemon.*` | `MQLSYNC_DAEMON_<KEY>` | listen, webhook_secret_file, webhook_secret_header, max_body_bytes (the HTTP port of `mqlsync run`); poll_thresholds_secs, poll_people_secs, poll_mql_edits_secs, poll_opportunities_secs, poll_activities_secs, poll_idle_ceiling_secs, write_window_ms, max_pending_writes, grace_secs (its loop) |
//! | secrets | `MQLSYNC_SALESFORCE_CLIENT_SECRET`, `MQLSYNC_SALESFORCE_REFRESH_TOKEN`, `MQLSYNC_MARKETO_CLIENT_SECRET`, `MQLSYNC_DAEMON_WEBHOOK_SECRET` | or the `*_file` keys |

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {key}: {message}")]
pub struct ConfigError {
    /// The file (`FILE:LINE` when the key is in it), or `environment` for a variable.
    pub source_name: String,
    /// The dotted key (`salesforce.base_url`), or the variable's name.
    pub key: String,
    pub message: String,
}

/// Which settings a command uses. Commands that only read or edit the store (`status`,
/// `explain`, `requeue`) run where the connectors' secrets are not set (an operator's shell,
/// a support machine): they get [`Scope::Local`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The store and the mapping: secrets are neither read nor required (the connectors'
    /// secrets in the returned config are `None`), every other key is checked as usual.
    Local,
    /// Everything a sync needs, secrets included (`run`, `check`, `demo`).
    Remote,
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
    #[serde(default)]
    daemon: RawDaemon,
}

/// Required keys are options here so that a file may leave them to the environment; their
/// presence is checked once file and environment are merged.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawSalesforce {
    base_url: Option<String>,
    login_url: Option<String>,
    api_version: Option<String>,
    auth: Option<String>,
    client_id: Option<String>,
    username: Option<String>,
    private_key_file: Option<String>,
    client_secret_file: Option<String>,
    refresh_token_file: Option<String>,
    daily_reserve_percent: Option<f64>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawMarketo {
    base_url: Option<String>,
    identity_url: Option<String>,
    client_id: Option<String>,
    client_secret_file: Option<String>,
    calls_per_20s: Option<u32>,
    max_in_flight: Option<u32>,
    daily_quota: Option<u64>,
    bulk_poll_interval_secs: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    poll_interval_secs: Option<u64>,
    batch_size: Option<usize>,
    go_live: Option<String>,
    bulk_ingest_above: Option<usize>,
    current_scores: Option<String>,
    leads_since: Option<String>,
    bulk_extract_above_days: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    listen: Option<String>,
    webhook_secret_file: Option<String>,
    webhook_secret_header: Option<String>,
    max_body_bytes: Option<usize>,
    poll_thresholds_secs: Option<u64>,
    poll_people_secs: Option<u64>,
    poll_mql_edits_secs: Option<u64>,
    poll_opportunities_secs: Option<u64>,
    poll_activities_secs: Option<u64>,
    poll_idle_ceiling_secs: Option<u64>,
    write_window_ms: Option<u64>,
    max_pending_writes: Option<usize>,
    grace_secs: Option<u64>,
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
    /// First wait between a bulk export job's status polls (Marketo moves a job at most once a
    /// minute; the sandbox moves one a state per poll).
    pub bulk_poll_interval_secs: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SyncConfig {
    pub poll_interval_secs: u64,
    pub batch_size: usize,
    pub go_live: GoLive,
    /// Above this many records of an object to write at once (a backfill's MQL records, its
    /// leads' or contacts' stamps), Bulk API 2.0 ingest is used instead of sObject Collections
    /// (a call per 200 records).
    pub bulk_ingest_above: usize,
    /// How a first run reads the current scores (see [`CurrentScoreRead`]).
    pub current_scores: CurrentScoreRead,
    /// When the MAP instance's oldest lead was created: where a bulk lead extract starts.
    pub leads_since: Option<jiff::Timestamp>,
    /// A backfill over more days than this reads the score history by bulk activity extract.
    pub bulk_extract_above_days: u32,
}

/// How a first run (or `run --once --full`) reads the current score of every linked MAP lead,
/// and a backfill their links (`sync.current_scores`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CurrentScoreRead {
    /// Whichever costs fewer calls: by filter (300 people a call) or a bulk lead extract
    /// (about three calls per 31 days since `marketo.leads_since`; never without it).
    #[default]
    Auto,
    /// Leads by filter on the CRM ids, 300 a call.
    ByFilter,
    /// A bulk lead extract from `marketo.leads_since` (required).
    Bulk,
}

/// What the first run does with people already at or above their threshold, not excluded and
/// without any cycle (`sync.go_live`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GoLive {
    /// They become MQLs at go-live, dated then, with reason `at_go_live` (the default).
    #[default]
    Mql,
    /// They wait for their next score change (or a knob turn).
    Wait,
}

/// The daemon's HTTP port (`[daemon]`): webhooks, health, readiness and metrics.
#[derive(Clone, Debug, Serialize)]
pub struct DaemonConfig {
    /// Where the port listens (default `127.0.0.1:8080`; `0.0.0.0:PORT` to take webhooks from
    /// outside the host).
    pub listen: std::net::SocketAddr,
    /// The shared secret the Marketo webhook sends in [`Self::webhook_secret_header`]. `None`:
    /// every Marketo webhook call is refused (the pollers still see every score change).
    pub webhook_secret: Option<Secret>,
    /// The header that carries it (default `X-Mqlsync-Secret`), as set in Marketo's
    /// "Set Custom Header".
    pub webhook_secret_header: String,
    /// Larger webhook bodies are refused with 413 before they are read whole.
    pub max_body_bytes: usize,
    /// The run loop: how often each source is polled, how writes are batched, how it stops.
    pub schedule: DaemonSchedule,
}

/// The daemon's loop (`daemon.poll_*`, `write_window_ms`, `max_pending_writes`,
/// `grace_secs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DaemonSchedule {
    /// Seconds between polls of the threshold records (the knob) while they change.
    pub poll_thresholds_secs: u64,
    /// ... of leads and contacts.
    pub poll_people_secs: u64,
    /// ... of reps' edits of MQL records.
    pub poll_mql_edits_secs: u64,
    /// ... of opportunities.
    pub poll_opportunities_secs: u64,
    /// ... of the MAP's Change Score activities.
    pub poll_activities_secs: u64,
    /// A source whose polls find nothing waits twice as long each time, up to this.
    pub poll_idle_ceiling_secs: u64,
    /// The writer waits at most this long after new decisions for more to fill a batch.
    pub write_window_ms: u64,
    /// Above this many writes waiting in the outbox, the people and activity pollers pause
    /// until the writer has drained it below.
    pub max_pending_writes: usize,
    /// After SIGTERM or SIGINT, the pass in flight may finish for this long.
    pub grace_secs: u64,
}

impl Default for DaemonSchedule {
    fn default() -> Self {
        DaemonSchedule {
            poll_thresholds_secs: 5,
            poll_people_secs: 60,
            poll_mql_edits_secs: 30,
            poll_opportunities_secs: 300,
            poll_activities_secs: 5,
            poll_idle_ceiling_secs: 300,
            write_window_ms: 50,
            max_pending_writes: 10_000,
            grace_secs: 30,
        }
    }
}

/// The header the Marketo webhook's secret comes in unless `daemon.webhook_secret_header` says.
pub const DEFAULT_WEBHOOK_SECRET_HEADER: &str = "X-Mqlsync-Secret";

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
    pub daemon: DaemonConfig,
    /// The environment variables that overrode the file.
    pub overrides: Vec<String>,
}

/// Environment variable -> config key path. Also the list of every key a config file may
/// hold (besides the sections themselves).
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
        "MQLSYNC_MARKETO_BULK_POLL_INTERVAL_SECS",
        &["marketo", "bulk_poll_interval_secs"],
    ),
    (
        "MQLSYNC_SYNC_POLL_INTERVAL_SECS",
        &["sync", "poll_interval_secs"],
    ),
    ("MQLSYNC_SYNC_BATCH_SIZE", &["sync", "batch_size"]),
    ("MQLSYNC_SYNC_GO_LIVE", &["sync", "go_live"]),
    (
        "MQLSYNC_SYNC_BULK_INGEST_ABOVE",
        &["sync", "bulk_ingest_above"],
    ),
    ("MQLSYNC_SYNC_CURRENT_SCORES", &["sync", "current_scores"]),
    ("MQLSYNC_SYNC_LEADS_SINCE", &["sync", "leads_since"]),
    (
        "MQLSYNC_SYNC_BULK_EXTRACT_ABOVE_DAYS",
        &["sync", "bulk_extract_above_days"],
    ),
    ("MQLSYNC_DAEMON_LISTEN", &["daemon", "listen"]),
    (
        "MQLSYNC_DAEMON_WEBHOOK_SECRET_FILE",
        &["daemon", "webhook_secret_file"],
    ),
    (
        "MQLSYNC_DAEMON_WEBHOOK_SECRET_HEADER",
        &["daemon", "webhook_secret_header"],
    ),
    (
        "MQLSYNC_DAEMON_MAX_BODY_BYTES",
        &["daemon", "max_body_bytes"],
    ),
    (
        "MQLSYNC_DAEMON_POLL_THRESHOLDS_SECS",
        &["daemon", "poll_thresholds_secs"],
    ),
    (
        "MQLSYNC_DAEMON_POLL_PEOPLE_SECS",
        &["daemon", "poll_people_secs"],
    ),
    (
        "MQLSYNC_DAEMON_POLL_MQL_EDITS_SECS",
        &["daemon", "poll_mql_edits_secs"],
    ),
    (
        "MQLSYNC_DAEMON_POLL_OPPORTUNITIES_SECS",
        &["daemon", "poll_opportunities_secs"],
    ),
    (
        "MQLSYNC_DAEMON_POLL_ACTIVITIES_SECS",
        &["daemon", "poll_activities_secs"],
    ),
    (
        "MQLSYNC_DAEMON_POLL_IDLE_CEILING_SECS",
        &["daemon", "poll_idle_ceiling_secs"],
    ),
    (
        "MQLSYNC_DAEMON_WRITE_WINDOW_MS",
        &["daemon", "write_window_ms"],
    ),
    (
        "MQLSYNC_DAEMON_MAX_PENDING_WRITES",
        &["daemon", "max_pending_writes"],
    ),
    ("MQLSYNC_DAEMON_GRACE_SECS", &["daemon", "grace_secs"]),
];

/// Secret variables, read directly and never placed in the table.
const SECRET_VARS: &[&str] = &[
    "MQLSYNC_SALESFORCE_CLIENT_SECRET",
    "MQLSYNC_SALESFORCE_REFRESH_TOKEN",
    "MQLSYNC_MARKETO_CLIENT_SECRET",
    "MQLSYNC_DAEMON_WEBHOOK_SECRET",
];

/// `MQLSYNC_*` variables that are not settings: the config file's path and logging, read by
/// the command line. Any other `MQLSYNC_*` variable must be a setting or a secret.
pub const NON_CONFIG_VARS: &[&str] = &["MQLSYNC_CONFIG", "MQLSYNC_LOG", "MQLSYNC_LOG_FORMAT"];

/// Secret keys a config file may not hold: (key, its variable, its `*_file` key).
const REFUSED_SECRETS: &[(&str, &str, &str)] = &[
    (
        "salesforce.client_secret",
        "MQLSYNC_SALESFORCE_CLIENT_SECRET",
        "client_secret_file",
    ),
    (
        "salesforce.refresh_token",
        "MQLSYNC_SALESFORCE_REFRESH_TOKEN",
        "refresh_token_file",
    ),
    (
        "marketo.client_secret",
        "MQLSYNC_MARKETO_CLIENT_SECRET",
        "client_secret_file",
    ),
    (
        "daemon.webhook_secret",
        "MQLSYNC_DAEMON_WEBHOOK_SECRET",
        "webhook_secret_file",
    ),
];

/// Reads the whole config (secrets included) from `file` (none: defaults) and the given
/// environment.
pub fn load(file: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
    load_for(file, env, Scope::Remote)
}

/// Reads the config a command of `scope` needs: the file's keys are checked (syntax, unknown
/// keys, types, with their line), then the environment's overrides, then the merged values.
pub fn load_for(
    file: Option<&Path>,
    env: &[(String, String)],
    scope: Scope,
) -> Result<Config, ConfigError> {
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
    let keys = FileKeys::read(&shown, &text)?;
    // The file alone first, so that a value of the wrong type names its line.
    toml::from_str::<RawConfig>(&text).map_err(|e| keys.error(&e))?;
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|e| toml_error(&shown, &text, &e))?;
    let overrides = apply_env(&mut table, env)?;
    let raw = RawConfig::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError {
        source_name: shown.clone(),
        key: "(value)".into(),
        message: one_line(e.message()),
    })?;
    let origin = Origin {
        shown: &shown,
        lines: keys.lines,
        overrides,
    };
    validate(raw, file, &origin, env, scope)
}

fn one_line(message: &str) -> String {
    message.trim().replace('\n', " ")
}

fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|s| line_at(text, s.start));
    ConfigError {
        source_name: line.map_or_else(|| file.to_string(), |l| format!("{file}:{l}")),
        key: e
            .message()
            .split('`')
            .nth(1)
            .unwrap_or("(syntax)")
            .to_string(),
        message: one_line(e.message()),
    }
}

/// The keys of a config file with their lines, every one of them known to mqlsync.
struct FileKeys<'a> {
    shown: &'a str,
    text: &'a str,
    /// Dotted key -> line (sections too, for keys missing from them).
    lines: std::collections::BTreeMap<String, usize>,
    /// Where each key's value is, innermost last, for errors that come with a span.
    values: Vec<(std::ops::Range<usize>, String)>,
}

/// The sections of the file: every settings key that has a dot.
fn sections() -> impl Iterator<Item = &'static str> {
    let mut seen: Vec<&str> = Vec::new();
    for (_, path) in OVERRIDES {
        if path.len() == 2 && !seen.contains(&path[0]) {
            seen.push(path[0]);
        }
    }
    seen.into_iter()
}

/// The settings keys of a section (`""`: the top level, sections included).
fn keys_of(section: &str) -> Vec<&'static str> {
    let mut keys: Vec<&str> = OVERRIDES
        .iter()
        .filter_map(|(_, path)| match path {
            [key] if section.is_empty() => Some(*key),
            [s, key] if *s == section => Some(*key),
            _ => None,
        })
        .collect();
    if section.is_empty() {
        keys.extend(sections());
    }
    keys
}

impl<'a> FileKeys<'a> {
    fn read(shown: &'a str, text: &'a str) -> Result<FileKeys<'a>, ConfigError> {
        let doc = toml::de::DeTable::parse(text).map_err(|e| toml_error(shown, text, &e))?;
        let mut keys = FileKeys {
            shown,
            text,
            lines: Default::default(),
            values: Vec::new(),
        };
        for (key, value) in doc.get_ref().iter() {
            let name: &str = key.get_ref();
            keys.check(key.span().start, "", name)?;
            keys.lines
                .insert(name.to_string(), line_at(text, key.span().start));
            keys.values.push((value.span(), name.to_string()));
            let Some(table) = value.get_ref().as_table() else {
                continue;
            };
            if !sections().any(|s| s == name) {
                continue;
            }
            for (k, v) in table.iter() {
                let dotted = format!("{name}.{}", k.get_ref());
                keys.check(k.span().start, name, k.get_ref())?;
                keys.lines
                    .insert(dotted.clone(), line_at(text, k.span().start));
                keys.values.push((v.span(), dotted));
            }
        }
        Ok(keys)
    }

    /// Refuses a key mqlsync does not know (with the key it was probably meant to be) and a
    /// secret, which is never read from a file.
    fn check(&self, at: usize, section: &str, key: &str) -> Result<(), ConfigError> {
        let known = keys_of(section);
        if known.contains(&key) {
            return Ok(());
        }
        let dotted = if section.is_empty() {
            key.to_string()
        } else {
            format!("{section}.{key}")
        };
        let error = |message: String| ConfigError {
            source_name: format!("{}:{}", self.shown, line_at(self.text, at)),
            key: dotted.clone(),
            message,
        };
        let secrets: Vec<&(&str, &str, &str)> = REFUSED_SECRETS
            .iter()
            .filter(|(k, _, _)| {
                k.strip_prefix(section)
                    .and_then(|r| r.strip_prefix('.'))
                    .is_some()
            })
            .collect();
        let secret_of = |name: &str| {
            secrets
                .iter()
                .find(|(k, _, _)| k.rsplit('.').next() == Some(name))
                .copied()
        };
        let refused = |(_, var, file_key): &(&str, &str, &str)| {
            format!("secrets are not read from the config file; set {var} or `{file_key}`")
        };
        if let Some(secret) = secret_of(key) {
            return Err(error(refused(secret)));
        }
        let near = closest(key, known.iter().copied());
        let near_secret = closest(
            key,
            secrets
                .iter()
                .map(|(k, _, _)| k.rsplit('.').next().unwrap_or(k)),
        );
        match (near, near_secret) {
            // Never suggest a secret key (it would be refused next): say where it goes.
            (_, Some((s, d))) if near.is_none_or(|(_, n)| d < n) => Err(error(format!(
                "unknown key; {}",
                refused(secret_of(s).expect("a secret key"))
            ))),
            (Some((k, _)), _) => Err(error(format!("unknown key; did you mean `{k}`?"))),
            _ => {
                let elsewhere: Vec<String> = std::iter::once("")
                    .chain(sections())
                    .filter(|s| *s != section && keys_of(s).contains(&key))
                    .map(|s| {
                        if s.is_empty() {
                            "the top level (before any [section])".to_string()
                        } else {
                            format!("[{s}]")
                        }
                    })
                    .collect();
                if elsewhere.is_empty() {
                    let place = if section.is_empty() {
                        "the top level".to_string()
                    } else {
                        format!("[{section}]")
                    };
                    Err(error(format!(
                        "unknown key; {place} has: {}",
                        known.join(", ")
                    )))
                } else {
                    Err(error(format!(
                        "unknown key here; `{key}` belongs in {}",
                        elsewhere.join(" or ")
                    )))
                }
            }
        }
    }

    /// A deserialisation error of the file, at its line and key.
    fn error(&self, e: &toml::de::Error) -> ConfigError {
        let Some(span) = e.span() else {
            return ConfigError {
                source_name: self.shown.to_string(),
                key: "(value)".into(),
                message: one_line(e.message()),
            };
        };
        let key = self
            .values
            .iter()
            .filter(|(v, _)| v.start <= span.start && span.start < v.end.max(v.start + 1))
            .min_by_key(|(v, _)| v.len())
            .map_or("(value)", |(_, k)| k.as_str());
        ConfigError {
            source_name: format!("{}:{}", self.shown, line_at(self.text, span.start)),
            key: key.to_string(),
            message: one_line(e.message()),
        }
    }
}

/// The candidate `typed` most probably meant, with its distance: at most a third of its
/// letters off (a swap of two neighbours counts once), or one name a prefix of the other.
fn closest<'c>(
    typed: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<(&'c str, usize)> {
    let limit = (typed.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (c, edit_distance(typed, c)))
        .filter(|(c, d)| {
            *d <= limit || (typed.len() >= 4 && (c.starts_with(typed) || typed.starts_with(c)))
        })
        .min_by_key(|(_, d)| *d)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of
/// neighbouring letters, each counting one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// A setting the environment overrode.
struct Override {
    var: String,
    /// The dotted key it set.
    key: String,
}

/// Puts the environment's settings into the file's table. A variable that is neither a
/// setting, a secret nor one of [`NON_CONFIG_VARS`] is refused by name, with the closest
/// one. A value is taken as a number or boolean when it reads as one and its key takes it,
/// else as text (`MQLSYNC_SALESFORCE_API_VERSION=62.0` is the text "62.0").
fn apply_env(
    table: &mut toml::Table,
    env: &[(String, String)],
) -> Result<Vec<Override>, ConfigError> {
    let mut overrides = Vec::new();
    for (name, value) in env {
        if !name.starts_with("MQLSYNC_")
            || SECRET_VARS.contains(&name.as_str())
            || NON_CONFIG_VARS.contains(&name.as_str())
        {
            continue;
        }
        let Some((_, path)) = OVERRIDES.iter().find(|(n, _)| n == name) else {
            return Err(unknown_variable(name));
        };
        let mut typed = table.clone();
        set_path(&mut typed, path, literal(value));
        let mut text = table.clone();
        set_path(&mut text, path, toml::Value::String(value.clone()));
        // The file alone deserialised, and so did the variables before this one: an error
        // now is this value's.
        *table = match RawConfig::deserialize(toml::Value::Table(typed.clone())) {
            Ok(_) => typed,
            Err(e) => match RawConfig::deserialize(toml::Value::Table(text.clone())) {
                Ok(_) => text,
                Err(_) => {
                    return Err(ConfigError {
                        source_name: "environment".into(),
                        key: name.clone(),
                        message: format!("{value:?}: {}", one_line(e.message())),
                    });
                }
            },
        };
        overrides.push(Override {
            var: name.clone(),
            key: path.join("."),
        });
    }
    Ok(overrides)
}

fn unknown_variable(name: &str) -> ConfigError {
    let known = OVERRIDES
        .iter()
        .map(|(n, _)| *n)
        .chain(SECRET_VARS.iter().copied())
        .chain(NON_CONFIG_VARS.iter().copied());
    let message = match closest(name, known.clone()) {
        Some((near, _)) => format!("unknown variable; did you mean {near}?"),
        None => format!(
            "unknown variable; unset it, or use one of: {}",
            known.collect::<Vec<_>>().join(", ")
        ),
    };
    ConfigError {
        source_name: "environment".into(),
        key: name.to_string(),
        message,
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

/// Where a value came from, for its errors: the variable that set it, else the file's line.
struct Origin<'a> {
    shown: &'a str,
    lines: std::collections::BTreeMap<String, usize>,
    overrides: Vec<Override>,
}

impl Origin<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let message = message.into();
        if let Some(o) = self.overrides.iter().find(|o| o.key == key) {
            return ConfigError {
                source_name: "environment".into(),
                key: o.var.clone(),
                message,
            };
        }
        // A key missing from its section: the section's line.
        let line = self.lines.get(key).or_else(|| {
            key.rsplit_once('.')
                .and_then(|(section, _)| self.lines.get(section))
        });
        ConfigError {
            source_name: line
                .map_or_else(|| self.shown.to_string(), |l| format!("{}:{l}", self.shown)),
            key: key.to_string(),
            message,
        }
    }

    fn required(
        &self,
        value: Option<String>,
        key: &str,
        what: &str,
    ) -> Result<String, ConfigError> {
        value.ok_or_else(|| self.err(key, format!("missing: {what}")))
    }

    fn secret(
        &self,
        env: &[(String, String)],
        var: &str,
        file_key: Option<&String>,
        base: &Path,
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
        let value = std::fs::read_to_string(&full).map_err(|e| {
            self.err(
                key,
                format!("cannot read the secret file {}: {e}", full.display()),
            )
        })?;
        Ok(Some(Secret {
            value: SecretString::from(value.trim().to_string()),
            origin: format!("file {}", full.display()),
        }))
    }

    fn url(&self, key: &str, url: &str) -> Result<String, ConfigError> {
        let ok = (url.starts_with("https://") || url.starts_with("http://"))
            && url.len() > "https://".len();
        if !ok {
            return Err(self.err(
                key,
                format!("{url:?} is not an http(s) URL (e.g. https://acme.my.salesforce.com)"),
            ));
        }
        Ok(url.trim_end_matches('/').to_string())
    }
}

fn validate(
    raw: RawConfig,
    file: Option<&Path>,
    origin: &Origin<'_>,
    env: &[(String, String)],
    scope: Scope,
) -> Result<Config, ConfigError> {
    let base = file
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let salesforce = raw
        .salesforce
        .map(|sf| salesforce(sf, origin, env, &base, scope))
        .transpose()?;
    let marketo = raw
        .marketo
        .map(|m| marketo(m, origin, env, &base, scope))
        .transpose()?;
    let poll = raw.sync.poll_interval_secs.unwrap_or(30);
    if poll == 0 {
        return Err(origin.err(
            "sync.poll_interval_secs",
            "0: poll at least every second (1 or more)",
        ));
    }
    let batch = raw.sync.batch_size.unwrap_or(2_000);
    if batch == 0 {
        return Err(origin.err("sync.batch_size", "0: a batch has 1 or more events"));
    }
    let daemon = daemon(raw.daemon, origin, env, &base, scope)?;
    let go_live = match raw.sync.go_live.as_deref() {
        None | Some("mql") => GoLive::Mql,
        Some("wait") => GoLive::Wait,
        Some(other) => {
            return Err(origin.err(
                "sync.go_live",
                format!(
                    "{other:?}: use \"mql\" (people already above their threshold become MQLs at the first run) or \"wait\" (they wait for their next score change)"
                ),
            ));
        }
    };
    let current_scores = match raw.sync.current_scores.as_deref() {
        None | Some("auto") => CurrentScoreRead::Auto,
        Some("by_filter") => CurrentScoreRead::ByFilter,
        Some("bulk") => CurrentScoreRead::Bulk,
        Some(other) => {
            return Err(origin.err(
                "sync.current_scores",
                format!(
                    "{other:?}: use \"auto\" (whichever costs fewer calls), \"by_filter\" (300 people a call) or \"bulk\" (a bulk lead extract from sync.leads_since)"
                ),
            ));
        }
    };
    let leads_since = match raw.sync.leads_since.as_deref() {
        None => None,
        Some(text) => Some(instant(text).ok_or_else(|| {
            origin.err(
                "sync.leads_since",
                format!(
                    "{text:?} is not a date: give the day the MAP instance's oldest lead was created, e.g. \"2016-04-01\" or \"2016-04-01T00:00:00Z\""
                ),
            )
        })?),
    };
    if current_scores == CurrentScoreRead::Bulk && leads_since.is_none() {
        return Err(origin.err(
            "sync.current_scores",
            "\"bulk\" needs sync.leads_since: the day the MAP instance's oldest lead was created (a bulk lead extract runs over 31-day windows from then)",
        ));
    }
    let bulk_extract_above_days = raw.sync.bulk_extract_above_days.unwrap_or(31);
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
            go_live,
            bulk_ingest_above: raw.sync.bulk_ingest_above.unwrap_or(2_000),
            current_scores,
            leads_since,
            bulk_extract_above_days,
        },
        daemon,
        overrides: origin.overrides.iter().map(|o| o.var.clone()).collect(),
    })
}

/// An RFC 3339 instant, or a day (taken at midnight UTC).
fn instant(text: &str) -> Option<jiff::Timestamp> {
    let text = text.trim();
    text.parse().ok().or_else(|| {
        text.parse::<jiff::civil::Date>()
            .ok()
            .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
            .map(|z| z.timestamp())
    })
}

fn salesforce(
    sf: RawSalesforce,
    origin: &Origin<'_>,
    env: &[(String, String)],
    base: &Path,
    scope: Scope,
) -> Result<SalesforceConfig, ConfigError> {
    let (client_secret, refresh_token) = match scope {
        Scope::Local => (None, None),
        Scope::Remote => (
            origin.secret(
                env,
                "MQLSYNC_SALESFORCE_CLIENT_SECRET",
                sf.client_secret_file.as_ref(),
                base,
                "salesforce.client_secret_file",
            )?,
            origin.secret(
                env,
                "MQLSYNC_SALESFORCE_REFRESH_TOKEN",
                sf.refresh_token_file.as_ref(),
                base,
                "salesforce.refresh_token_file",
            )?,
        ),
    };
    let needs_secrets = scope == Scope::Remote;
    let auth = origin.required(
        sf.auth,
        "salesforce.auth",
        "jwt_bearer, client_credentials or refresh_token",
    )?;
    let auth = match auth.as_str() {
        "jwt_bearer" => {
            let username = sf.username.clone().ok_or_else(|| {
                origin.err(
                    "salesforce.username",
                    "jwt_bearer needs the integration user's username",
                )
            })?;
            let key = sf.private_key_file.clone().ok_or_else(|| {
                origin.err(
                    "salesforce.private_key_file",
                    "jwt_bearer needs the path of the PEM private key",
                )
            })?;
            SalesforceAuth::JwtBearer {
                username,
                private_key_file: crate::mapping::resolve_path(base, &key),
            }
        }
        "client_credentials" => {
            if needs_secrets && client_secret.is_none() {
                return Err(origin.err(
                    "salesforce.client_secret_file",
                    "client_credentials needs MQLSYNC_SALESFORCE_CLIENT_SECRET or client_secret_file",
                ));
            }
            SalesforceAuth::ClientCredentials
        }
        "refresh_token" => {
            if needs_secrets && refresh_token.is_none() {
                return Err(origin.err(
                    "salesforce.refresh_token_file",
                    "refresh_token needs MQLSYNC_SALESFORCE_REFRESH_TOKEN or refresh_token_file",
                ));
            }
            SalesforceAuth::RefreshToken
        }
        other => {
            return Err(origin.err(
                "salesforce.auth",
                format!("{other:?}: use jwt_bearer, client_credentials or refresh_token"),
            ));
        }
    };
    let reserve = sf.daily_reserve_percent.unwrap_or(20.0);
    if !(0.0..100.0).contains(&reserve) {
        return Err(origin.err(
            "salesforce.daily_reserve_percent",
            format!("{reserve}: a percentage from 0 up to (not including) 100"),
        ));
    }
    let base_url = origin.required(
        sf.base_url,
        "salesforce.base_url",
        "the org's URL (e.g. https://acme.my.salesforce.com)",
    )?;
    let base_url = origin.url("salesforce.base_url", &base_url)?;
    Ok(SalesforceConfig {
        login_url: match &sf.login_url {
            Some(u) => origin.url("salesforce.login_url", u)?,
            None => base_url.clone(),
        },
        base_url,
        api_version: sf.api_version.unwrap_or_else(|| "62.0".into()),
        auth,
        client_id: origin.required(
            sf.client_id,
            "salesforce.client_id",
            "the connected app's consumer key",
        )?,
        client_secret,
        refresh_token,
        daily_reserve_percent: reserve,
    })
}

fn marketo(
    m: RawMarketo,
    origin: &Origin<'_>,
    env: &[(String, String)],
    base: &Path,
    scope: Scope,
) -> Result<MarketoConfig, ConfigError> {
    let client_secret = match scope {
        Scope::Local => None,
        Scope::Remote => {
            let secret = origin.secret(
                env,
                "MQLSYNC_MARKETO_CLIENT_SECRET",
                m.client_secret_file.as_ref(),
                base,
                "marketo.client_secret_file",
            )?;
            if secret.is_none() {
                return Err(origin.err(
                    "marketo.client_secret_file",
                    "Marketo needs MQLSYNC_MARKETO_CLIENT_SECRET or client_secret_file",
                ));
            }
            secret
        }
    };
    let calls = m.calls_per_20s.unwrap_or(100);
    if calls == 0 || calls > 100 {
        return Err(origin.err(
            "marketo.calls_per_20s",
            format!("{calls}: from 1 to 100 (Marketo allows 100 calls in 20 s)"),
        ));
    }
    let in_flight = m.max_in_flight.unwrap_or(10);
    if in_flight == 0 || in_flight > 10 {
        return Err(origin.err(
            "marketo.max_in_flight",
            format!("{in_flight}: from 1 to 10 (Marketo allows 10 concurrent calls)"),
        ));
    }
    let bulk_poll = m.bulk_poll_interval_secs.unwrap_or(60);
    if bulk_poll == 0 || bulk_poll > 300 {
        return Err(origin.err(
            "marketo.bulk_poll_interval_secs",
            format!(
                "{bulk_poll}: from 1 to 300 (Marketo updates an export job's status at most once a minute: 60 suits a real instance)"
            ),
        ));
    }
    let base_url = origin.required(
        m.base_url,
        "marketo.base_url",
        "the REST API URL (e.g. https://123-ABC-456.mktorest.com)",
    )?;
    let base_url = origin.url("marketo.base_url", &base_url)?;
    Ok(MarketoConfig {
        identity_url: match &m.identity_url {
            Some(u) => origin.url("marketo.identity_url", u)?,
            None => format!("{base_url}/identity"),
        },
        base_url,
        client_id: origin.required(
            m.client_id,
            "marketo.client_id",
            "the LaunchPoint service's client id",
        )?,
        client_secret,
        calls_per_20s: calls,
        max_in_flight: in_flight,
        daily_quota: m.daily_quota.unwrap_or(50_000),
        bulk_poll_interval_secs: bulk_poll,
    })
}

/// Webhook bodies up to this size are read unless `daemon.max_body_bytes` says otherwise: a
/// Salesforce Outbound Message of 100 notifications with a few fields each is far below it.
const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// The largest `daemon.max_body_bytes` allowed: a webhook is a nudge, not a bulk transfer.
const MAX_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// A shared secret shorter than this is too easy to guess.
const MIN_WEBHOOK_SECRET_CHARS: usize = 16;

/// The daemon's loop settings of `[daemon]`, each checked against its range.
fn daemon_schedule(d: &RawDaemon, origin: &Origin<'_>) -> Result<DaemonSchedule, ConfigError> {
    let defaults = DaemonSchedule::default();
    const DAY: u64 = 86_400;
    let in_range = |key: &str, value: Option<u64>, default: u64, min: u64, max: u64, what: &str| {
        let v = value.unwrap_or(default);
        if (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(origin.err(key, format!("{v}: from {min} to {max} {what}")))
        }
    };
    let poll = |key: &str, value: Option<u64>, default: u64| {
        in_range(key, value, default, 1, DAY, "seconds")
    };
    let schedule = DaemonSchedule {
        poll_thresholds_secs: poll(
            "daemon.poll_thresholds_secs",
            d.poll_thresholds_secs,
            defaults.poll_thresholds_secs,
        )?,
        poll_people_secs: poll(
            "daemon.poll_people_secs",
            d.poll_people_secs,
            defaults.poll_people_secs,
        )?,
        poll_mql_edits_secs: poll(
            "daemon.poll_mql_edits_secs",
            d.poll_mql_edits_secs,
            defaults.poll_mql_edits_secs,
        )?,
        poll_opportunities_secs: poll(
            "daemon.poll_opportunities_secs",
            d.poll_opportunities_secs,
            defaults.poll_opportunities_secs,
        )?,
        poll_activities_secs: poll(
            "daemon.poll_activities_secs",
            d.poll_activities_secs,
            defaults.poll_activities_secs,
        )?,
        poll_idle_ceiling_secs: poll(
            "daemon.poll_idle_ceiling_secs",
            d.poll_idle_ceiling_secs,
            defaults.poll_idle_ceiling_secs,
        )?,
        write_window_ms: in_range(
            "daemon.write_window_ms",
            d.write_window_ms,
            defaults.write_window_ms,
            0,
            10_000,
            "milliseconds",
        )?,
        max_pending_writes: in_range(
            "daemon.max_pending_writes",
            d.max_pending_writes.map(|n| n as u64),
            defaults.max_pending_writes as u64,
            1,
            10_000_000,
            "writes",
        )? as usize,
        grace_secs: in_range(
            "daemon.grace_secs",
            d.grace_secs,
            defaults.grace_secs,
            1,
            3_600,
            "seconds",
        )?,
    };
    let longest = [
        ("poll_thresholds_secs", schedule.poll_thresholds_secs),
        ("poll_people_secs", schedule.poll_people_secs),
        ("poll_mql_edits_secs", schedule.poll_mql_edits_secs),
        ("poll_opportunities_secs", schedule.poll_opportunities_secs),
        ("poll_activities_secs", schedule.poll_activities_secs),
    ]
    .into_iter()
    .max_by_key(|(_, secs)| *secs)
    .expect("five intervals");
    if schedule.poll_idle_ceiling_secs < longest.1 {
        return Err(origin.err(
            "daemon.poll_idle_ceiling_secs",
            format!(
                "{}: below daemon.{} ({}); an idle source waits at least its interval, so the ceiling is at least the longest one",
                schedule.poll_idle_ceiling_secs, longest.0, longest.1
            ),
        ));
    }
    Ok(schedule)
}

fn daemon(
    d: RawDaemon,
    origin: &Origin<'_>,
    env: &[(String, String)],
    base: &Path,
    scope: Scope,
) -> Result<DaemonConfig, ConfigError> {
    let schedule = daemon_schedule(&d, origin)?;
    let listen = d.listen.as_deref().unwrap_or("127.0.0.1:8080");
    let listen = listen.parse().map_err(|_| {
        origin.err(
            "daemon.listen",
            format!("{listen:?} is not an address and port (e.g. 127.0.0.1:8080 or 0.0.0.0:8080)"),
        )
    })?;
    let header = d
        .webhook_secret_header
        .unwrap_or_else(|| DEFAULT_WEBHOOK_SECRET_HEADER.to_string());
    if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
        return Err(origin.err(
            "daemon.webhook_secret_header",
            format!(
                "{header:?} is not an HTTP header name (letters, digits and `-`, e.g. {DEFAULT_WEBHOOK_SECRET_HEADER})"
            ),
        ));
    }
    let max_body_bytes = d.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if !(1024..=MAX_MAX_BODY_BYTES).contains(&max_body_bytes) {
        return Err(origin.err(
            "daemon.max_body_bytes",
            format!("{max_body_bytes}: from 1024 to {MAX_MAX_BODY_BYTES} bytes"),
        ));
    }
    let webhook_secret = match scope {
        Scope::Local => None,
        Scope::Remote => origin.secret(
            env,
            "MQLSYNC_DAEMON_WEBHOOK_SECRET",
            d.webhook_secret_file.as_ref(),
            base,
            "daemon.webhook_secret_file",
        )?,
    };
    if let Some(secret) = &webhook_secret
        && secret.expose().chars().count() < MIN_WEBHOOK_SECRET_CHARS
    {
        let key = if secret.origin == "MQLSYNC_DAEMON_WEBHOOK_SECRET" {
            "MQLSYNC_DAEMON_WEBHOOK_SECRET"
        } else {
            "daemon.webhook_secret_file"
        };
        let message = format!(
            "the webhook secret (from {}) is shorter than {MIN_WEBHOOK_SECRET_CHARS} characters; use a long random one (e.g. `openssl rand -hex 32`)",
            secret.origin
        );
        return Err(if key.starts_with("MQLSYNC_") {
            ConfigError {
                source_name: "environment".into(),
                key: key.into(),
                message,
            }
        } else {
            origin.err(key, message)
        });
    }
    Ok(DaemonConfig {
        listen,
        webhook_secret,
        webhook_secret_header: header,
        max_body_bytes,
        schedule,
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
        assert_eq!(
            e.to_string(),
            format!(
                "{}:5: salesforce.auht: unknown key; did you mean `auth`?",
                file.display()
            )
        );
        let file = write(dir.path(), &GOOD.replace("client_credentials", "password"));
        let e = load(Some(&file), &[]).unwrap_err();
        assert_eq!(e.key, "salesforce.auth");
        assert!(e.source_name.ends_with("mqlsync.toml:5"), "{e}");
        assert!(e.message.contains("jwt_bearer"), "{e}");
        let e = load(
            Some(&write(dir.path(), GOOD)),
            &env(&[("MQLSYNC_SYNC_POLL_INTERVAL", "5")]),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment: MQLSYNC_SYNC_POLL_INTERVAL: unknown variable; did you mean MQLSYNC_SYNC_POLL_INTERVAL_SECS?"
        );
    }

    /// Issue 12, point 1: how the current scores and the score history are read in bulk.
    #[test]
    fn bulk_read_settings_are_checked_and_a_bulk_read_needs_the_instance_start() {
        let dir = tempfile::tempdir().unwrap();
        let with = |extra: &str| write(dir.path(), &format!("{GOOD}[sync]\n{extra}\n"));
        let secrets = env(&[
            ("MQLSYNC_SALESFORCE_CLIENT_SECRET", "x"),
            ("MQLSYNC_MARKETO_CLIENT_SECRET", "y"),
        ]);
        let c = load(
            Some(&with(
                "current_scores = \"auto\"\nleads_since = \"2016-04-01\"",
            )),
            &secrets,
        )
        .unwrap();
        assert_eq!(c.sync.current_scores, CurrentScoreRead::Auto);
        assert_eq!(
            c.sync.leads_since,
            Some("2016-04-01T00:00:00Z".parse().unwrap())
        );
        assert_eq!(c.sync.bulk_extract_above_days, 31);
        assert_eq!(c.marketo.unwrap().bulk_poll_interval_secs, 60);
        let e = load(Some(&with("current_scores = \"bulk\"")), &secrets).unwrap_err();
        assert_eq!(e.key, "sync.current_scores");
        assert!(e.message.contains("sync.leads_since"), "{e}");
        let e = load(Some(&with("leads_since = \"spring 2016\"")), &secrets).unwrap_err();
        assert_eq!(e.key, "sync.leads_since");
        assert!(e.message.contains("2016-04-01"), "{e}");
        let e = load(Some(&with("current_scores = \"fast\"")), &secrets).unwrap_err();
        assert!(e.message.contains("by_filter"), "{e}");
        let e = load(
            Some(&write(dir.path(), GOOD)),
            &env(&[
                ("MQLSYNC_SALESFORCE_CLIENT_SECRET", "x"),
                ("MQLSYNC_MARKETO_CLIENT_SECRET", "y"),
                ("MQLSYNC_MARKETO_BULK_POLL_INTERVAL_SECS", "0"),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.key, "MQLSYNC_MARKETO_BULK_POLL_INTERVAL_SECS", "{e}");
    }

    /// Issue 11, point 4: an unknown key names its line and section, with the key it was
    /// probably meant to be.
    #[test]
    fn an_unknown_key_names_line_and_section_and_the_closest_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            &GOOD.replace("base_url = \"https://acme", "base_ulr = \"https://acme"),
        );
        let e = load(Some(&file), &[]).unwrap_err();
        assert_eq!(e.source_name, format!("{}:4", file.display()));
        assert_eq!(e.key, "salesforce.base_ulr");
        assert_eq!(e.message, "unknown key; did you mean `base_url`?");
        // A section's name, a key at the wrong level, a key of another section.
        let e = load(
            Some(&write(dir.path(), "[salesforc]\nbase_url = \"x\"\n")),
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:1: salesforc: unknown key; did you mean `salesforce`?",
                file.display()
            )
        );
        let e = load(Some(&write(dir.path(), "\n\nbatch_size = 5\n")), &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:3: batch_size: unknown key here; `batch_size` belongs in [sync]",
                file.display()
            )
        );
        let e = load(
            Some(&write(dir.path(), "[marketo]\nlogin_url = \"x\"\n")),
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:2: marketo.login_url: unknown key here; `login_url` belongs in [salesforce]",
                file.display()
            )
        );
        let e = load(Some(&write(dir.path(), "[sync]\nfrobnicate = 1\n")), &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:2: sync.frobnicate: unknown key; [sync] has: poll_interval_secs, batch_size, go_live, bulk_ingest_above, current_scores, leads_since, bulk_extract_above_days",
                file.display()
            )
        );
        // A dotted key is in its section too.
        let e = load(Some(&write(dir.path(), "sync.batch_sise = 5\n")), &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:1: sync.batch_sise: unknown key; did you mean `batch_size`?",
                file.display()
            )
        );
    }

    /// A misspelt secret key is not answered with the secret key, which would be refused next.
    #[test]
    fn a_key_close_to_a_secret_is_pointed_at_the_variable_not_the_refused_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            &GOOD.replace(
                "client_id = \"abc\"",
                "client_id = \"abc\"\nclient_secre = \"oops\"",
            ),
        );
        let e = load(Some(&file), &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:10: marketo.client_secre: unknown key; secrets are not read from the config file; set MQLSYNC_MARKETO_CLIENT_SECRET or `client_secret_file`",
                file.display()
            )
        );
        assert!(!e.to_string().contains("oops"));
        // The `_file` key is suggested when it is the closer one.
        let file = write(
            dir.path(),
            &GOOD.replace(
                "client_id = \"abc\"",
                "client_id = \"abc\"\nclient_secrt_file = \"s\"",
            ),
        );
        let e = load(Some(&file), &[]).unwrap_err();
        assert_eq!(e.message, "unknown key; did you mean `client_secret_file`?");
        let file = write(
            dir.path(),
            &GOOD.replace(
                "client_id = \"3MVG9\"",
                "client_id = \"3MVG9\"\nrefresh_tokn = \"oops\"",
            ),
        );
        let e = load(Some(&file), &[]).unwrap_err();
        assert!(
            e.message
                .contains("set MQLSYNC_SALESFORCE_REFRESH_TOKEN or `refresh_token_file`"),
            "{e}"
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            &format!("{GOOD}[sync]\nbatch_size = \"lots\"\n"),
        );
        let e = load(Some(&file), &[]).unwrap_err();
        assert_eq!(e.source_name, format!("{}:11", file.display()));
        assert_eq!(e.key, "sync.batch_size");
        // A required key left out names its section's line.
        let file = write(dir.path(), &GOOD.replace("client_id = \"abc\"\n", ""));
        let e = load(
            Some(&file),
            &env(&[
                ("MQLSYNC_SALESFORCE_CLIENT_SECRET", "x"),
                ("MQLSYNC_MARKETO_CLIENT_SECRET", "y"),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.source_name, format!("{}:7", file.display()));
        assert_eq!(e.key, "marketo.client_id");
    }

    /// Issue 11, point 4: an unknown or mistyped `MQLSYNC_*` variable names the variable, not
    /// the file; the variables of logging and of the config's path are not settings.
    #[test]
    fn variables_are_named_by_name_and_logging_variables_are_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), GOOD);
        let secrets = [
            ("MQLSYNC_SALESFORCE_CLIENT_SECRET", "x"),
            ("MQLSYNC_MARKETO_CLIENT_SECRET", "y"),
        ];
        let e = load(
            Some(&file),
            &env(&[("MQLSYNC_SALESFORCE_BASE_ULR", "https://x.example")]),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment: MQLSYNC_SALESFORCE_BASE_ULR: unknown variable; did you mean MQLSYNC_SALESFORCE_BASE_URL?"
        );
        let e = load(Some(&file), &env(&[("MQLSYNC_LOG_FROMAT", "json")])).unwrap_err();
        assert_eq!(
            e.message,
            "unknown variable; did you mean MQLSYNC_LOG_FORMAT?"
        );
        let e = load(Some(&file), &env(&[("MQLSYNC_FROBNICATE", "1")])).unwrap_err();
        assert!(
            e.message
                .starts_with("unknown variable; unset it, or use one of: MQLSYNC_MAPPING,"),
            "{e}"
        );
        for var in NON_CONFIG_VARS {
            let mut e = env(&secrets);
            e.push((var.to_string(), "x".into()));
            load(Some(&file), &e).unwrap_or_else(|err| panic!("{var}: {err}"));
        }
        // A value that does not fit its key names the variable.
        let mut e = env(&secrets);
        e.push(("MQLSYNC_SYNC_BATCH_SIZE".into(), "lots".into()));
        let err = load(Some(&file), &e).unwrap_err();
        assert_eq!(
            (err.source_name.as_str(), err.key.as_str()),
            ("environment", "MQLSYNC_SYNC_BATCH_SIZE")
        );
        assert!(err.message.starts_with("\"lots\": invalid type"), "{err}");
        // ... and so does one that fits its type but not its rules.
        let mut e = env(&secrets);
        e.push(("MQLSYNC_SALESFORCE_AUTH".into(), "password".into()));
        let err = load(Some(&file), &e).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment: MQLSYNC_SALESFORCE_AUTH: \"password\": use jwt_bearer, client_credentials or refresh_token"
        );
        // A text setting that reads as a number stays text.
        let mut e = env(&secrets);
        e.push(("MQLSYNC_SALESFORCE_API_VERSION".into(), "61.0".into()));
        assert_eq!(
            load(Some(&file), &e)
                .unwrap()
                .salesforce
                .unwrap()
                .api_version,
            "61.0"
        );
    }

    /// Issue 11, point 5: commands that only read the store load the config without secrets.
    #[test]
    fn the_local_scope_needs_no_secrets_and_reads_no_secret_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = GOOD.replace(
            "client_id = \"abc\"",
            "client_id = \"abc\"\nclient_secret_file = \"missing.txt\"",
        );
        let file = write(dir.path(), &text);
        let cfg = load_for(Some(&file), &[], Scope::Local).unwrap();
        assert_eq!(cfg.store, dir.path().join("data/m.sqlite"));
        assert!(cfg.marketo.unwrap().client_secret.is_none());
        let e = load(
            Some(&file),
            &env(&[("MQLSYNC_SALESFORCE_CLIENT_SECRET", "x")]),
        )
        .unwrap_err();
        assert!(e.message.contains("cannot read the secret file"), "{e}");
        // The whole config still says what is missing.
        let e = load(Some(&write(dir.path(), GOOD)), &[]).unwrap_err();
        assert_eq!(e.key, "salesforce.client_secret_file");
        assert!(
            e.message.contains("MQLSYNC_SALESFORCE_CLIENT_SECRET"),
            "{e}"
        );
        // Everything else is still checked.
        let file = write(
            dir.path(),
            &GOOD.replace("https://123-ABC", "ftp://123-ABC"),
        );
        let e = load_for(Some(&file), &[], Scope::Local).unwrap_err();
        assert_eq!(e.key, "marketo.base_url");
    }

    #[test]
    fn every_setting_is_a_key_the_file_may_hold() {
        for (var, path) in OVERRIDES {
            let (section, key) = match path {
                [key] => ("", *key),
                [section, key] => (*section, *key),
                _ => unreachable!(),
            };
            assert!(keys_of(section).contains(&key), "{var}");
            let mut table = toml::Table::new();
            set_path(&mut table, path, toml::Value::Integer(1));
            // Deserialises as a key of the raw config (a type error at most, never unknown).
            if let Err(e) = RawConfig::deserialize(toml::Value::Table(table)) {
                assert!(!e.message().contains("unknown field"), "{var}: {e}");
            }
        }
    }

    #[test]
    fn closeness_counts_a_swap_once() {
        assert_eq!(edit_distance("base_ulr", "base_url"), 1);
        assert_eq!(edit_distance("store", "store"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(closest("stor", ["store", "sync"]), Some(("store", 1)));
        assert_eq!(closest("zzz", ["store", "sync"]), None);
    }

    /// Issue 13: the daemon's port, its webhook secret (never from the file) and body limit.
    #[test]
    fn the_daemon_section_has_defaults_overrides_and_a_secret_from_outside_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = [
            ("MQLSYNC_SALESFORCE_CLIENT_SECRET", "x"),
            ("MQLSYNC_MARKETO_CLIENT_SECRET", "y"),
        ];
        let cfg = load(Some(&write(dir.path(), GOOD)), &env(&secrets)).unwrap();
        assert_eq!(cfg.daemon.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(cfg.daemon.webhook_secret_header, "X-Mqlsync-Secret");
        assert_eq!(cfg.daemon.max_body_bytes, 1024 * 1024);
        assert!(cfg.daemon.webhook_secret.is_none());

        std::fs::write(
            dir.path().join("hook.secret"),
            "0123456789abcdef-from-file\n",
        )
        .unwrap();
        let text = format!(
            "{GOOD}[daemon]\nlisten = \"0.0.0.0:9000\"\nwebhook_secret_file = \"hook.secret\"\nwebhook_secret_header = \"X-Hook-Key\"\nmax_body_bytes = 4096\n"
        );
        let file = write(dir.path(), &text);
        let cfg = load(Some(&file), &env(&secrets)).unwrap();
        assert_eq!(cfg.daemon.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(cfg.daemon.webhook_secret_header, "X-Hook-Key");
        assert_eq!(cfg.daemon.max_body_bytes, 4096);
        let secret = cfg.daemon.webhook_secret.as_ref().unwrap();
        assert_eq!(secret.expose(), "0123456789abcdef-from-file");
        let shown = toml::to_string(&cfg).unwrap() + &format!("{cfg:?}");
        assert!(!shown.contains("from-file\""), "{shown}");
        // The variable wins over the file; the local scope reads no secret.
        let mut e = env(&secrets);
        e.push((
            "MQLSYNC_DAEMON_WEBHOOK_SECRET".into(),
            "a-long-secret-from-the-environment".into(),
        ));
        e.push(("MQLSYNC_DAEMON_MAX_BODY_BYTES".into(), "2048".into()));
        let cfg = load(Some(&file), &e).unwrap();
        assert_eq!(
            cfg.daemon.webhook_secret.unwrap().origin,
            "MQLSYNC_DAEMON_WEBHOOK_SECRET"
        );
        assert_eq!(cfg.daemon.max_body_bytes, 2048);
        let cfg = load_for(Some(&file), &[], Scope::Local).unwrap();
        assert!(cfg.daemon.webhook_secret.is_none());
    }

    #[test]
    fn daemon_keys_are_checked_like_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = env(&[
            ("MQLSYNC_SALESFORCE_CLIENT_SECRET", "x"),
            ("MQLSYNC_MARKETO_CLIENT_SECRET", "y"),
        ]);
        let with = |extra: &str| write(dir.path(), &format!("{GOOD}[daemon]\n{extra}\n"));
        let e = load(Some(&with("lisen = \"127.0.0.1:1\"")), &secrets).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:11: daemon.lisen: unknown key; did you mean `listen`?",
                dir.path().join("mqlsync.toml").display()
            )
        );
        let e = load(Some(&with("webhook_secret = \"oops\"")), &secrets).unwrap_err();
        assert_eq!(e.key, "daemon.webhook_secret");
        assert_eq!(
            e.message,
            "secrets are not read from the config file; set MQLSYNC_DAEMON_WEBHOOK_SECRET or `webhook_secret_file`"
        );
        assert!(!e.to_string().contains("oops"));
        let e = load(Some(&with("listen = \"localhost\"")), &secrets).unwrap_err();
        assert_eq!(e.key, "daemon.listen");
        assert!(e.source_name.ends_with("mqlsync.toml:11"), "{e}");
        assert!(e.message.contains("127.0.0.1:8080"), "{e}");
        let e = load(
            Some(&with("webhook_secret_header = \"X Secret\"")),
            &secrets,
        )
        .unwrap_err();
        assert_eq!(e.key, "daemon.webhook_secret_header");
        let e = load(Some(&with("max_body_bytes = 10")), &secrets).unwrap_err();
        assert_eq!(e.message, "10: from 1024 to 67108864 bytes");
        let mut short = secrets.clone();
        short.push(("MQLSYNC_DAEMON_WEBHOOK_SECRET".into(), "short".into()));
        let e = load(Some(&with("")), &short).unwrap_err();
        assert_eq!(
            (e.source_name.as_str(), e.key.as_str()),
            ("environment", "MQLSYNC_DAEMON_WEBHOOK_SECRET")
        );
        assert!(!e.to_string().contains("short\""), "{e}");
        let e = load(
            Some(&with("")),
            &env(&[("MQLSYNC_DAEMON_LISTN", "127.0.0.1:1")]),
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "unknown variable; did you mean MQLSYNC_DAEMON_LISTEN?"
        );
    }

    /// Issue 13: the daemon loop's intervals, window, bound and grace, checked like every key.
    #[test]
    fn the_daemon_loop_settings_have_defaults_ranges_and_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = env(&[
            ("MQLSYNC_SALESFORCE_CLIENT_SECRET", "x"),
            ("MQLSYNC_MARKETO_CLIENT_SECRET", "y"),
        ]);
        let cfg = load(Some(&write(dir.path(), GOOD)), &secrets).unwrap();
        assert_eq!(cfg.daemon.schedule, DaemonSchedule::default());
        let with = |extra: &str| write(dir.path(), &format!("{GOOD}[daemon]\n{extra}\n"));
        let file = with(
            "poll_thresholds_secs = 2\npoll_idle_ceiling_secs = 600\nwrite_window_ms = 0\nmax_pending_writes = 50\ngrace_secs = 5",
        );
        let mut e = secrets.clone();
        e.push(("MQLSYNC_DAEMON_POLL_PEOPLE_SECS".into(), "120".into()));
        let s = load(Some(&file), &e).unwrap().daemon.schedule;
        assert_eq!(
            (
                s.poll_thresholds_secs,
                s.poll_people_secs,
                s.poll_idle_ceiling_secs,
                s.write_window_ms,
                s.max_pending_writes,
                s.grace_secs
            ),
            (2, 120, 600, 0, 50, 5)
        );
        let shown = dir.path().join("mqlsync.toml").display().to_string();
        let e = load(Some(&with("poll_thresolds_secs = 2")), &secrets).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{shown}:11: daemon.poll_thresolds_secs: unknown key; did you mean `poll_thresholds_secs`?"
            )
        );
        let e = load(Some(&with("poll_activities_secs = 0")), &secrets).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{shown}:11: daemon.poll_activities_secs: 0: from 1 to 86400 seconds")
        );
        let e = load(Some(&with("grace_secs = 0")), &secrets).unwrap_err();
        assert_eq!(e.key, "daemon.grace_secs");
        let e = load(Some(&with("poll_idle_ceiling_secs = 60")), &secrets).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{shown}:11: daemon.poll_idle_ceiling_secs: 60: below daemon.poll_opportunities_secs (300); an idle source waits at least its interval, so the ceiling is at least the longest one"
            )
        );
        let mut e = secrets.clone();
        e.push(("MQLSYNC_DAEMON_WRITE_WINDOW_MS".into(), "60000".into()));
        let err = load(Some(&with("")), &e).unwrap_err();
        assert_eq!(
            (err.source_name.as_str(), err.key.as_str()),
            ("environment", "MQLSYNC_DAEMON_WRITE_WINDOW_MS")
        );
    }

    #[test]
    fn no_file_means_defaults() {
        let cfg = load(None, &[]).unwrap();
        assert!(cfg.salesforce.is_none() && cfg.marketo.is_none() && cfg.mapping.is_none());
        assert_eq!(cfg.store, PathBuf::from("state/mqlsync.sqlite"));
    }
}
