//! `mqlsync sandbox`: starts both emulators on 127.0.0.1, prints their base URLs and the
//! credentials to use (with `--json`, first line one JSON object for scripts), optionally writes
//! a ready mqlsync config for them (`--write-config`), and runs until SIGTERM or Ctrl-C. It must
//! not contain emulator behaviour, and shares no code with the connectors or the engine: the
//! config it writes is plain text from its connection info.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::faults::Faults;
use super::salesforce::{OutboundMessaging, SalesforceConfig};
use super::server::{Sandbox, SandboxError, SandboxOptions};

#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// People in the generated world (CRM leads and contacts, MAP leads). The default is the
    /// world of `mqlsync demo`.
    #[arg(long, default_value_t = 2_000)]
    pub leads: usize,
    /// Seed of the deterministic world generator (the default is `mqlsync demo`'s).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Score changes per person in the year of generated history, at most (the sandbox keeps
    /// about 4 KB a change in memory: a world of a million people needs a few).
    #[arg(long, default_value_t = super::world::DEFAULT_TOUCHES)]
    pub score_touches: u32,
    /// Port of the Salesforce emulator (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub sf_port: u16,
    /// Port of the Marketo emulator (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub mkto_port: u16,
    /// Fault rules to arm at start: a JSON file holding an array of rules, each
    /// `{"system": "salesforce"|"marketo", "kind": "query"|"activities"|..., "method", "path",
    /// "skip": N, "times": N, "action": {"type": ...}}` where the action type is `status`
    /// (`status`, `body`), `vendor_error` (`code`, e.g. "606" or "REQUEST_LIMIT_EXCEEDED"),
    /// `delay` (`millis`), `drop`, `lose_response`, `expire_tokens`, `fail_record` (`index`,
    /// `code`) or `malformed_json`. The README's "The sandbox" lists them; rules can also be
    /// set while it runs (`PUT /__sandbox/faults`).
    #[arg(long, value_name = "FILE")]
    pub faults: Option<PathBuf>,
    /// Print one JSON object with URLs and credentials as the first line of output.
    #[arg(long)]
    pub json: bool,
    /// Do not enforce vendor limits (daily API limit, Marketo rate limits).
    #[arg(long)]
    pub no_limits: bool,
    /// Send Salesforce Outbound Messages (SOAP) for MQL_Threshold__c changes to this URL,
    /// retried until acknowledged.
    #[arg(long, value_name = "URL")]
    pub sf_outbound_url: Option<String>,
    /// Once both servers listen, write an mqlsync config for this sandbox to FILE (base URLs,
    /// client ids, store `state/sandbox.sqlite` relative to FILE) and its two client secrets
    /// beside it, FILE's name with `.salesforce-secret` / `.marketo-secret` for extension, so that
    /// `mqlsync --config FILE run --once` needs nothing else. An existing FILE is replaced only
    /// if this option wrote it (its first line says so), a secret file only if it holds the
    /// same secret; anything else is left alone and the sandbox stops with exit code 2. Each
    /// start is a new org: delete the store before syncing a restarted sandbox.
    #[arg(long, value_name = "FILE")]
    pub write_config: Option<PathBuf>,
}

/// The first line of every config `--write-config` writes: how it knows a file is its own and
/// may be replaced (a restarted sandbox listens on new ports).
const WRITTEN_BY: &str = "# Written by `mqlsync sandbox --write-config`";

/// Where the store of a written config goes, relative to the config file. Not the default
/// `state/mqlsync.sqlite`, so that a sandbox's checkpoints never mix with a real org's.
pub const SANDBOX_STORE: &str = "state/sandbox.sqlite";

/// Files holding a sandbox's client secrets, named in a config relative to the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFiles {
    pub salesforce: String,
    pub marketo: String,
}

/// The environment that goes with [`sandbox_config_toml`] without secret files: both client
/// secrets of the sandbox whose connection info is `info`, and the daemon's Marketo webhook
/// secret when given.
pub fn secrets_env(
    info: &serde_json::Value,
    webhook_secret: Option<&str>,
) -> Vec<(String, String)> {
    let secret = |system: &str| {
        info[system]["client_secret"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let mut env = vec![
        (
            "MQLSYNC_SALESFORCE_CLIENT_SECRET".to_string(),
            secret("salesforce"),
        ),
        (
            "MQLSYNC_MARKETO_CLIENT_SECRET".to_string(),
            secret("marketo"),
        ),
    ];
    if let Some(webhook) = webhook_secret {
        env.push((
            "MQLSYNC_DAEMON_WEBHOOK_SECRET".to_string(),
            webhook.to_string(),
        ));
    }
    env
}

/// The mqlsync config (TOML) for the sandbox whose connection info is `info`, as
/// [`Sandbox::connection_info`] gives it: both base URLs, client-credentials auth, the client
/// ids and `store`. With `secret_files`, each side reads its client secret from the named file
/// (relative to the config file); without, the caller supplies `MQLSYNC_SALESFORCE_CLIENT_SECRET`
/// and `MQLSYNC_MARKETO_CLIENT_SECRET`, since a secret in the TOML itself is refused.
pub fn sandbox_config_toml(
    info: &Value,
    store: &str,
    secret_files: Option<&SecretFiles>,
) -> String {
    let quoted = |v: &str| toml::Value::String(v.to_string()).to_string();
    let field = |system: &str, key: &str| quoted(info[system][key].as_str().unwrap_or_default());
    let marketo_url = info["marketo"]["base_url"].as_str().unwrap_or_default();
    let mut text = format!("store = {}\n", quoted(store));
    text.push_str(&format!(
        "\n[salesforce]\nbase_url = {}\nauth = \"client_credentials\"\nclient_id = {}\n",
        field("salesforce", "base_url"),
        field("salesforce", "client_id"),
    ));
    if let Some(files) = secret_files {
        text.push_str(&format!(
            "client_secret_file = {}\n",
            quoted(&files.salesforce)
        ));
    }
    text.push_str(&format!(
        "\n[marketo]\nbase_url = {}\nidentity_url = {}\nclient_id = {}\n",
        quoted(marketo_url),
        quoted(&format!("{marketo_url}/identity")),
        field("marketo", "client_id"),
    ));
    if let Some(files) = secret_files {
        text.push_str(&format!(
            "client_secret_file = {}\n",
            quoted(&files.marketo)
        ));
    }
    // The sandbox moves a bulk export job one state per status poll; Marketo at most once a
    // minute (leave the key out against a real instance: 60).
    text.push_str("bulk_poll_interval_secs = 1\n");
    text
}

/// Why `--write-config` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum WriteConfigError {
    #[error(
        "{} exists and was not written by `mqlsync sandbox --write-config`; it is left as it is: pass another path to --write-config, or move the file away",
        path.display()
    )]
    NotOurs { path: PathBuf },
    #[error("cannot write {}: {error}; check that its directory exists and is writable", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// The secret files of the config at `config`: its name with another extension, beside it.
fn secret_paths(config: &Path) -> (PathBuf, PathBuf) {
    (
        config.with_extension("salesforce-secret"),
        config.with_extension("marketo-secret"),
    )
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Refuses to replace a file `--write-config` did not write: the config must start with
/// [`WRITTEN_BY`], a secret file must hold the secret about to be written.
fn check_ours(path: &Path, ours: impl Fn(&str) -> bool) -> Result<(), WriteConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) if ours(&text) => Ok(()),
        Ok(_) => Err(WriteConfigError::NotOurs {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        // A directory, an unreadable file, text that is not UTF-8: not ours either.
        Err(_) => Err(WriteConfigError::NotOurs {
            path: path.to_path_buf(),
        }),
    }
}

/// Writes `text` to `path`, readable by its owner only where the platform allows.
fn write_private(path: &Path, text: &str) -> Result<(), WriteConfigError> {
    let io = |error| WriteConfigError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}

/// Writes the config for the sandbox described by `info` to `config`, and its two client
/// secrets beside it. Checks every file first, so a refusal leaves all three untouched.
pub fn write_config(config: &Path, info: &Value) -> Result<(), WriteConfigError> {
    let (sf_path, mk_path) = secret_paths(config);
    let sf_secret = info["salesforce"]["client_secret"]
        .as_str()
        .unwrap_or_default();
    let mk_secret = info["marketo"]["client_secret"]
        .as_str()
        .unwrap_or_default();
    check_ours(config, |text| text.starts_with(WRITTEN_BY))?;
    check_ours(&sf_path, |text| text.trim() == sf_secret)?;
    check_ours(&mk_path, |text| text.trim() == mk_secret)?;
    write_private(&sf_path, &format!("{sf_secret}\n"))?;
    write_private(&mk_path, &format!("{mk_secret}\n"))?;
    let files = SecretFiles {
        salesforce: file_name(&sf_path),
        marketo: file_name(&mk_path),
    };
    let text = format!(
        "{WRITTEN_BY} for the sandbox at {} and {};\n# it replaces this file when it starts again. The client secrets are in the two files named below.\n{}",
        info["salesforce"]["base_url"].as_str().unwrap_or_default(),
        info["marketo"]["base_url"].as_str().unwrap_or_default(),
        sandbox_config_toml(info, SANDBOX_STORE, Some(&files)),
    );
    std::fs::write(config, text).map_err(|error| WriteConfigError::Io {
        path: config.to_path_buf(),
        error,
    })
}

/// Runs the sandbox until `shutdown` resolves.
pub async fn run(
    args: SandboxArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SandboxError> {
    let faults = match &args.faults {
        Some(path) => Faults::load(path)?,
        None => Vec::new(),
    };
    let mut salesforce = SalesforceConfig::sandbox_default();
    salesforce.outbound = args.sf_outbound_url.clone().map(|url| OutboundMessaging {
        url,
        objects: vec!["MQL_Threshold__c".into()],
        fields: [
            "Name",
            "Region__c",
            "Team__c",
            "Business_Line__c",
            "Score_Threshold__c",
            "Effective_From__c",
            "Effective_To__c",
            "Active__c",
            "SystemModstamp",
        ]
        .map(String::from)
        .to_vec(),
        retry_initial_secs: 15,
        deliver_in_background: true,
    });
    let sandbox = Sandbox::start(SandboxOptions {
        leads: args.leads,
        seed: args.seed,
        score_touches: args.score_touches,
        sf_port: args.sf_port,
        mkto_port: args.mkto_port,
        faults,
        limits: !args.no_limits,
        salesforce,
        ..SandboxOptions::default()
    })
    .await?;
    let info = sandbox.connection_info();
    if let Some(path) = &args.write_config
        && let Err(e) = write_config(path, &info)
    {
        sandbox.shutdown().await;
        return Err(e.into());
    }
    let sf = &info["salesforce"];
    let mk = &info["marketo"];
    let human = format!(
        "Salesforce sandbox: {}\n  token endpoint: {}/services/oauth2/token (client_credentials, refresh_token, JWT bearer)\n  client_id={} client_secret={} username={}\n\
Marketo sandbox:    {}\n  client_id={} client_secret={} munchkin_id={}\n\
Admin API on both:  /__sandbox/clock, /__sandbox/faults, /__sandbox/log, /__sandbox/state\n\
{} people, seed {}; limits {}. Ctrl-C or SIGTERM stops it.",
        sf["base_url"].as_str().unwrap_or(""),
        sf["base_url"].as_str().unwrap_or(""),
        sf["client_id"].as_str().unwrap_or(""),
        sf["client_secret"].as_str().unwrap_or(""),
        sf["username"].as_str().unwrap_or(""),
        mk["base_url"].as_str().unwrap_or(""),
        mk["client_id"].as_str().unwrap_or(""),
        mk["client_secret"].as_str().unwrap_or(""),
        sandbox.marketo_credentials().munchkin_id,
        args.leads,
        args.seed,
        if args.no_limits { "off" } else { "on" },
    );
    let human = match &args.write_config {
        Some(path) => format!(
            "{human}\nConfig for mqlsync written to {0}: mqlsync --config {0} run --once",
            path.display()
        ),
        None => human,
    };
    {
        let mut out = std::io::stdout().lock();
        if args.json {
            let _ = writeln!(out, "{}", sandbox.connection_info_line());
            eprintln!("{human}");
        } else {
            let _ = writeln!(out, "{human}");
        }
        let _ = out.flush();
    }
    shutdown.await;
    sandbox.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(sf_port: u16, mk_port: u16) -> Value {
        json!({
            "salesforce": {"base_url": format!("http://127.0.0.1:{sf_port}"), "client_id": "sf-id",
                           "client_secret": "sf-secret", "username": "u@example.com"},
            "marketo": {"base_url": format!("http://127.0.0.1:{mk_port}"), "client_id": "mk-id",
                        "client_secret": "mk-secret"},
        })
    }

    #[test]
    fn the_config_text_names_both_sandboxes_and_quotes_values_as_toml() {
        let mut odd = info(1, 2);
        odd["salesforce"]["client_id"] = json!("id with \"quotes\" and \\ backslash");
        let files = SecretFiles {
            salesforce: "a.salesforce-secret".into(),
            marketo: "a.marketo-secret".into(),
        };
        let parsed: toml::Table = sandbox_config_toml(&odd, "state/x.sqlite", Some(&files))
            .parse()
            .unwrap();
        assert_eq!(parsed["store"].as_str(), Some("state/x.sqlite"));
        let sf = &parsed["salesforce"];
        assert_eq!(sf["base_url"].as_str(), Some("http://127.0.0.1:1"));
        assert_eq!(sf["auth"].as_str(), Some("client_credentials"));
        assert_eq!(
            sf["client_id"].as_str(),
            Some("id with \"quotes\" and \\ backslash")
        );
        assert_eq!(
            sf["client_secret_file"].as_str(),
            Some("a.salesforce-secret")
        );
        let mk = &parsed["marketo"];
        assert_eq!(
            mk["identity_url"].as_str(),
            Some("http://127.0.0.1:2/identity")
        );
        assert_eq!(mk["client_secret_file"].as_str(), Some("a.marketo-secret"));

        let without = sandbox_config_toml(&odd, "s.sqlite", None);
        assert!(!without.contains("secret"), "{without}");
    }

    #[test]
    fn a_written_config_loads_with_its_secrets_from_the_files_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mqlsync.toml");
        write_config(&path, &info(1, 2)).unwrap();
        let config = crate::config::load(Some(&path), &[]).unwrap();
        assert_eq!(config.store, dir.path().join(SANDBOX_STORE));
        let sf = config.salesforce.unwrap();
        assert_eq!(sf.base_url, "http://127.0.0.1:1");
        assert_eq!(sf.client_secret.unwrap().expose(), "sf-secret");
        let mk = config.marketo.unwrap();
        assert_eq!(mk.client_secret.unwrap().expose(), "mk-secret");
        assert!(dir.path().join("mqlsync.salesforce-secret").exists());
        assert!(dir.path().join("mqlsync.marketo-secret").exists());
    }

    #[test]
    fn its_own_config_is_replaced_by_a_restarted_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mqlsync.toml");
        write_config(&path, &info(1, 2)).unwrap();
        write_config(&path, &info(3, 4)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("http://127.0.0.1:3") && !text.contains(":1\""),
            "{text}"
        );
    }

    #[test]
    fn a_file_it_did_not_write_is_left_alone_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mqlsync.toml");
        std::fs::write(&path, "mapping = \"mine.toml\"\n").unwrap();
        let err = write_config(&path, &info(1, 2)).unwrap_err();
        assert!(matches!(err, WriteConfigError::NotOurs { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("mqlsync.toml exists and was not written by"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "mapping = \"mine.toml\"\n"
        );
        assert!(!dir.path().join("mqlsync.salesforce-secret").exists());

        // A secret file holding something else (a real secret?) is not replaced either.
        let other = dir.path().join("other.toml");
        std::fs::write(dir.path().join("other.marketo-secret"), "real-secret\n").unwrap();
        let err = write_config(&other, &info(1, 2)).unwrap_err();
        assert!(
            err.to_string().contains("other.marketo-secret exists"),
            "{err}"
        );
        assert!(!other.exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("other.marketo-secret")).unwrap(),
            "real-secret\n"
        );
    }
}
