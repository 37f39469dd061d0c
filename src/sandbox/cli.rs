//! `mqlsync sandbox`: starts both emulators on 127.0.0.1, prints their base URLs and the
//! credentials to use (with `--json`, first line one JSON object for scripts), and runs until
//! SIGTERM or Ctrl-C. It must not contain emulator behaviour.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;

use super::faults::Faults;
use super::salesforce::{OutboundMessaging, SalesforceConfig};
use super::server::{Sandbox, SandboxError, SandboxOptions};

#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// People in the generated world (CRM leads and contacts, MAP leads).
    #[arg(long, default_value_t = 500)]
    pub leads: usize,
    /// Seed of the deterministic world generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Port of the Salesforce emulator (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub sf_port: u16,
    /// Port of the Marketo emulator (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub mkto_port: u16,
    /// JSON array of fault rules to arm at start (see `src/sandbox/faults.rs`).
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
        sf_port: args.sf_port,
        mkto_port: args.mkto_port,
        faults,
        limits: !args.no_limits,
        salesforce,
        ..SandboxOptions::default()
    })
    .await?;
    let info = sandbox.connection_info();
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
