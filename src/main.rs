//! The `mqlsync` command line: parses arguments, sets up logging, runs one command, and
//! maps failures to exit codes (2: bad input, a config, mapping or history that cannot be
//! used; 1: anything else). User-facing output goes to stdout, logs to stderr.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use jiff::Timestamp;

use mqlsync::config::{self, Config, ConfigError};
use mqlsync::engine::{Cycle, explain};
use mqlsync::mapping::{self, MappingError};
use mqlsync::sandbox::cli::WriteConfigError;
use mqlsync::sandbox::server::SandboxError;
use mqlsync::simulate::{self, HistoryError};
use mqlsync::store::{Store, StoreError};

/// mimalloc, not the system allocator: the engine allocates small strings and vectors per
/// decision, and glibc malloc and free were a quarter of its instructions; a long-running
/// daemon also fragments less. `benches/engine.rs` uses the same allocator, so its figures
/// are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What the top-level help ends with: exit codes, the environment and an example.
const AFTER_HELP: &str = "\
Exit codes:
  0  done
  1  stopped before the end (a server out of reach, a daily limit, a store another run holds):
     what was committed stays committed; the next run continues from there
  2  input that cannot be used (config, mapping, history, store path, a backfill the store
     cannot take): one line naming the file, line and key, or the variable, or the path
  3  `run --once` finished, but writes the CRM refused are parked in the outbox (listed): fix
     the cause in the CRM, then `mqlsync requeue`
  130, 143  the daemon (`run`) stopped at once on a second SIGINT or SIGTERM (the first lets it
     finish within daemon.grace_secs and exit 0)

Environment:
  MQLSYNC_CONFIG              the config file, when --config is not given
  MQLSYNC_LOG                 log filter: `info`, `debug`, or directives such as
                              `mqlsync=debug,warn` (default: `mqlsync=info,warn` for `run`,
                              `warn` for the rest); logs go to stderr
  MQLSYNC_LOG_FORMAT          `text` (default) or `json` (one object a line), like --log-format
  MQLSYNC_<SECTION>_<KEY>     any config key, e.g. MQLSYNC_SALESFORCE_BASE_URL
  MQLSYNC_SALESFORCE_CLIENT_SECRET, MQLSYNC_SALESFORCE_REFRESH_TOKEN, MQLSYNC_MARKETO_CLIENT_SECRET
                              the secrets (or the config's *_file keys; never the TOML itself)

Example:
  mqlsync demo                                     # the product on embedded defaults
  mqlsync sandbox --write-config mqlsync.toml      # emulators + a ready config (terminal 1)
  mqlsync --config mqlsync.toml run --once --dry-run
  mqlsync --config mqlsync.toml run --once
  mqlsync --config mqlsync.toml run                # the daemon, until SIGTERM or Ctrl-C";

#[derive(Parser)]
#[command(
    name = "mqlsync",
    version,
    about = "Sales controls the MQL threshold; marketing keeps scoring.",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Config file (TOML), for the commands that read one (before or after the command);
    /// `MQLSYNC_*` variables override it. Default: `MQLSYNC_CONFIG`, else built-in defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format on stderr: `text`, or `json` (one object a line); default from
    /// `MQLSYNC_LOG_FORMAT`, else text.
    #[arg(long, global = true, value_enum)]
    log_format: Option<mqlsync::logging::LogFormat>,
    #[command(subcommand)]
    command: Command,
}

/// `--config` after a command that reads a config.
#[derive(clap::Args, Default)]
struct ConfigFlag {
    /// Config file (TOML); `MQLSYNC_*` variables override it. Default: `MQLSYNC_CONFIG`, else
    /// built-in defaults.
    #[arg(long = "config", value_name = "FILE", id = "command_config")]
    path: Option<PathBuf>,
}

/// A date (midnight UTC) or an RFC 3339 instant, as `--since` and `--until` take them.
#[derive(Clone, Copy, Debug)]
struct DateOrInstant(Timestamp);

impl std::str::FromStr for DateOrInstant {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(t) = s.parse::<Timestamp>() {
            return Ok(DateOrInstant(t));
        }
        s.parse::<jiff::civil::Date>()
            .ok()
            .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
            .map(|z| DateOrInstant(z.timestamp()))
            .ok_or_else(|| {
                format!(
                    "{s:?} is not a date (2025-01-01) or an RFC 3339 instant (2025-01-01T00:00:00Z)"
                )
            })
    }
}

/// How `report` prints.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ReportFormat {
    Table,
    Json,
    Csv,
    Html,
}

/// An RFC 3339 instant, such as `2026-03-02T10:00:00Z` or `2026-03-02T11:00:00+01:00`.
const INSTANT: &str = "INSTANT";

#[derive(Subcommand)]
enum Command {
    /// Validate the config and the mapping and print the effective config, secrets redacted.
    Check {
        #[command(flatten)]
        config: ConfigFlag,
        /// Mapping file (default: the config's, else the built-in default mapping).
        #[arg(long, value_name = "FILE")]
        mapping: Option<PathBuf>,
        /// Also check the mapping against the org and the MAP: every object and field the sync
        /// reads or writes exists and is writable where written (one describe per object).
        #[arg(long)]
        remote: bool,
    },
    /// Summarise the store: cursors, cycles by status, the writes waiting or failed, what it
    /// has seen. Needs no secrets; reads while a run writes.
    Status {
        #[command(flatten)]
        config: ConfigFlag,
        /// Store file (default: the config's `store`).
        #[arg(long, value_name = "FILE")]
        store: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Put failed outbox writes back in line for the next run, once their cause is fixed in
    /// the CRM (a validation rule, an inactive owner).
    Requeue {
        #[command(flatten)]
        config: ConfigFlag,
        /// Store file (default: the config's `store`).
        #[arg(long, value_name = "FILE")]
        store: Option<PathBuf>,
        /// Only the rows whose error contains this text (e.g. `INACTIVE_OWNER_OR_USER`).
        #[arg(long)]
        error: Option<String>,
    },
    /// Replay a CSV or JSONL history through the engine and print the resulting cycles.
    Simulate {
        /// The history: `.csv` or `.jsonl`, one event a row (`threshold`, `person`, `link`,
        /// `score`, `opportunity`, `cycle`; the columns are in the README, examples in
        /// tests/fixtures/).
        history: PathBuf,
        #[command(flatten)]
        config: ConfigFlag,
        /// Store to write into (default: a fresh store in memory, gone at exit).
        #[arg(long, value_name = "FILE")]
        store: Option<PathBuf>,
        /// Mapping file (default: the config's, else the built-in default mapping).
        #[arg(long, value_name = "FILE")]
        mapping: Option<PathBuf>,
        /// Let time run to this instant after the last row (SLA timers, scheduled
        /// thresholds): RFC 3339, e.g. `2026-03-10T00:00:00Z`.
        #[arg(long, value_name = INSTANT)]
        until: Option<Timestamp>,
        /// Events per store transaction.
        #[arg(long, default_value_t = 2_000)]
        batch_size: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The whole product on embedded defaults: the sandbox and the daemon, a sales manager
    /// turning a knob, the MQLs that turn produced and how fast they were written.
    Demo {
        /// People in the seeded org (the same world as `mqlsync sandbox` by default).
        #[arg(long, default_value_t = 2_000)]
        leads: usize,
        /// Seed of the seeded org's generator: the same seed, the same people and history.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Where the demo's store goes (replaced on every run; a `demo.toml` is written beside
        /// it).
        #[arg(long, value_name = "FILE", default_value = "state/demo.sqlite")]
        store: PathBuf,
    },
    /// Run the sync daemon until SIGTERM or SIGINT: poll each source on its schedule, take
    /// webhooks and serve /healthz, /readyz and /metrics on `daemon.listen`, write through the
    /// outbox; the first signal finishes the pass in flight (within `daemon.grace_secs`) and
    /// exits 0, a second exits at once. With `--once`: one full sync and a summary, then exit
    /// 0 done, 1 stopped, 3 writes left parked.
    Run {
        #[command(flatten)]
        config: ConfigFlag,
        /// One full sync (read since the cursors, decide, write through the outbox), a
        /// summary, then exit: for cron or a systemd timer instead of the daemon.
        #[arg(long)]
        once: bool,
        /// Store file (default: the config's `store`).
        #[arg(long, value_name = "FILE")]
        store: Option<PathBuf>,
        /// With `--once`: print the summary as JSON, with every record written (object, CRM
        /// id, external id, action, outcome); with `--dry-run`, every record it would write.
        #[arg(long, requires = "once")]
        json: bool,
        /// With `--once`: read and decide as usual, but write nothing to the CRM and commit
        /// nothing to the store (the run works on a copy): print each record it would create
        /// or update, by object, with the fields that would change.
        #[arg(long, requires = "once")]
        dry_run: bool,
        /// With `--once`: read the current score of every MAP lead linked to a CRM lead or
        /// contact again (a store's first run always does): repairs missed score changes.
        #[arg(long, requires = "once")]
        full: bool,
    },
    /// Rebuild the MQL cycles the process would have produced before go-live, from the MAP's
    /// score-change history and the thresholds' field history, replayed through the same
    /// engine; write them to the CRM marked as backfilled (no alerts, no SLA). Run it before
    /// the first `run --once`. Killed, the same command continues where it stopped; run again,
    /// it writes nothing.
    Backfill {
        #[command(flatten)]
        config: ConfigFlag,
        /// Start of the history to rebuild: a date (`2025-01-01`, midnight UTC) or an
        /// RFC 3339 instant.
        #[arg(long, value_name = "DATE")]
        since: DateOrInstant,
        /// End of the history (excluded; default and latest: now).
        #[arg(long, value_name = "DATE")]
        until: Option<DateOrInstant>,
        /// Store file (default: the config's `store`).
        #[arg(long, value_name = "FILE")]
        store: Option<PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Read and rebuild as usual on a copy of the store, write nothing to the CRM: print
        /// the cycles it would rebuild by segment, month and status, and write them to `--csv`.
        #[arg(long)]
        dry_run: bool,
        /// Where a dry run writes its cycles (default: `backfill-dry-run.csv`).
        #[arg(long, value_name = "FILE", requires = "dry_run")]
        csv: Option<PathBuf>,
    },
    /// Run the Salesforce and Marketo emulators on 127.0.0.1 until Ctrl-C / SIGTERM.
    Sandbox(mqlsync::sandbox::cli::SandboxArgs),
    /// The metrics of the MQL process from the store: volume, reps' performance, SLA,
    /// conversion, campaign attribution, score vs conversion and velocity, pipeline vs
    /// threshold, checklist completion. Needs no secrets; reads while a run writes.
    Report {
        #[command(flatten)]
        config: ConfigFlag,
        /// Store file (default: the config's `store`).
        #[arg(long, value_name = "FILE")]
        store: Option<PathBuf>,
        /// Mapping file (default: the config's, else the built-in default mapping).
        #[arg(long, value_name = "FILE")]
        mapping: Option<PathBuf>,
        /// MQLs from this day (in the mapping's `report.time_zone`) or RFC 3339 instant.
        #[arg(long, value_name = "DATE")]
        from: Option<String>,
        /// MQLs up to this day, included, or before this RFC 3339 instant.
        #[arg(long, value_name = "DATE")]
        to: Option<String>,
        /// The periods of the volume and conversion tables.
        #[arg(long, value_enum, default_value = "month")]
        by: mqlsync::report::Period,
        /// What the volume table is broken down by: owner, team, segment, campaign,
        /// qualified-by, region, business-line, target-account or another attribute.
        #[arg(long, default_value = "segment")]
        group: String,
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
        /// Write the report to this file instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// The report's "now" (Open cycles past due then have missed their SLA): RFC 3339
        /// (default: the store's clock).
        #[arg(long, value_name = INSTANT)]
        at: Option<Timestamp>,
    },
    /// How many MQLs a segment would have produced per week at another threshold: the
    /// stored score history replayed through the engine at the thresholds then and at the
    /// new one (the store is read, never written), beside the real MQLs and the historical
    /// conversion of the people involved.
    Whatif {
        #[command(flatten)]
        config: ConfigFlag,
        /// The segment: attribute=value pairs (`region=EMEA`, `region=EMEA,team=SDR`) or
        /// `default`.
        #[arg(long)]
        segment: String,
        /// The threshold to try.
        #[arg(long)]
        threshold: f64,
        /// Store file (default: the config's `store`).
        #[arg(long, value_name = "FILE")]
        store: Option<PathBuf>,
        /// Mapping file (default: the config's, else the built-in default mapping).
        #[arg(long, value_name = "FILE")]
        mapping: Option<PathBuf>,
        /// MQLs from this day (in `report.time_zone`) or RFC 3339 instant.
        #[arg(long, value_name = "DATE")]
        from: Option<String>,
        /// MQLs up to this day, included, or before this RFC 3339 instant.
        #[arg(long, value_name = "DATE")]
        to: Option<String>,
        /// table, json or csv.
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
    },
    /// Say why a CRM lead or contact is, or is not, an MQL, with its audit log.
    Explain {
        /// The CRM lead or contact id.
        crm_id: String,
        #[command(flatten)]
        config: ConfigFlag,
        /// Store file (default: the config's `store`).
        #[arg(long, value_name = "FILE")]
        store: Option<PathBuf>,
        /// Mapping file (default: the config's, else the built-in default mapping).
        #[arg(long, value_name = "FILE")]
        mapping: Option<PathBuf>,
        /// The instant to explain at (default: the store's clock): RFC 3339, e.g.
        /// `2026-03-10T00:00:00Z`.
        #[arg(long, value_name = INSTANT)]
        at: Option<Timestamp>,
        /// Print JSON (the machine-readable reasons) instead of sentences.
        #[arg(long)]
        json: bool,
    },
}

/// A run that finished but left writes parked in the outbox (refused for good by the CRM):
/// exit code 3, so that a scheduler can tell "done, but someone must act" from "stopped".
#[derive(Debug, thiserror::Error)]
#[error(
    "{count} writes are parked in the outbox (listed above); fix the cause in the CRM, then `mqlsync requeue [--error TEXT]` sends them again"
)]
struct ParkedWrites {
    count: usize,
}

/// A failure caused by input the user can fix: exit code 2.
///
/// A store path counts as input: one that cannot be used as given (not a store, a newer
/// schema, a damaged file, a place this user cannot write) is 2, like a config that cannot be
/// used, because running again unchanged fails the same way. A store another run holds
/// (`Busy`) is 1: it frees itself when that run ends, as a network failure may.
fn is_bad_input(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<ConfigError>()
            || c.is::<MappingError>()
            || c.is::<HistoryError>()
            || c.is::<mqlsync::report::ArgumentError>()
            || c.is::<mqlsync::sandbox::faults::FaultsFileError>()
            // Its variants are transparent, so the chain holds the SandboxError, not its cause.
            || matches!(
                c.downcast_ref::<SandboxError>(),
                Some(
                    SandboxError::Faults(_)
                        | SandboxError::WriteConfig(WriteConfigError::NotOurs { .. })
                )
            )
            || c.is::<mqlsync::sync::preflight::Mismatch>()
            // A backfill asked of a store it cannot serve (gone live, another window).
            || matches!(
                c.downcast_ref::<mqlsync::sync::once::SyncError>(),
                Some(
                    mqlsync::sync::once::SyncError::AlreadyLive { .. }
                        | mqlsync::sync::once::SyncError::OtherBackfill { .. }
                )
            )
            || matches!(
                c.downcast_ref::<StoreError>(),
                Some(
                    StoreError::NotAStore { .. }
                        | StoreError::NewerSchema { .. }
                        | StoreError::Corrupt { .. }
                        | StoreError::PermissionDenied { .. }
                        | StoreError::ReadOnly { .. }
                )
            )
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    quiet_on_closed_pipe(&cli.command);
    // A run logs a line per phase and per committed page by default (and draws progress bars
    // on a terminal); the other commands print their own output and log only warnings.
    let run = matches!(cli.command, Command::Run { .. } | Command::Backfill { .. });
    let default_filter = if run { "mqlsync=info,warn" } else { "warn" };
    let logging = mqlsync::logging::format_from(
        cli.log_format,
        std::env::var(mqlsync::logging::FORMAT_VARIABLE)
            .ok()
            .as_deref(),
    )
    .and_then(|format| mqlsync::logging::init(format, default_filter, run));
    if let Err(e) = logging {
        eprintln!("mqlsync: {e}");
        return ExitCode::from(2);
    }
    match self::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mqlsync: {e:#}");
            if is_bad_input(&e) {
                ExitCode::from(2)
            } else if e.is::<ParkedWrites>() {
                ExitCode::from(3)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Commands that only read and print end quietly when their reader goes away
/// (`mqlsync explain 00Q... | head`), as `cat` does, instead of panicking on the write. The
/// Rust runtime ignores SIGPIPE so that writing to a closed socket is an error, not death:
/// the commands that serve or call over the network (`sandbox`, `run`, `demo`) keep that.
fn quiet_on_closed_pipe(command: &Command) {
    #[cfg(unix)]
    if matches!(
        command,
        Command::Check { remote: false, .. }
            | Command::Status { .. }
            | Command::Simulate { .. }
            | Command::Explain { .. }
            | Command::Report { .. }
            | Command::Whatif { .. }
    ) {
        // SAFETY: restores the default disposition of one signal, before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    #[cfg(not(unix))]
    let _ = command;
}

/// From here on, a write to a closed stdout ends the process quietly (see
/// [`quiet_on_closed_pipe`]); for commands that are done with the network and only print.
fn end_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal; the threads left (the async
    // runtime's, idle) do not write to sockets any more.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The store a reading command works on (`--store`, else the config's), which must exist:
/// opening would create an empty one.
fn existing_store(store: Option<PathBuf>, config: &Config) -> anyhow::Result<PathBuf> {
    let path = store.unwrap_or_else(|| config.store.clone());
    if !path.exists() {
        anyhow::bail!(
            "no store at {}: run `mqlsync simulate --store` or `mqlsync run` first",
            path.display()
        );
    }
    Ok(path)
}

/// The config `command` needs: the commands that call neither the CRM nor the MAP (`status`,
/// `explain`, `requeue`, `simulate`) need no secrets, so they run where the connectors'
/// secrets are not set.
/// The config file a command reads: its own `--config`, else the one before the command, else
/// `MQLSYNC_CONFIG`. `demo` and `sandbox` make their own and refuse one given by flag.
fn config_path(top: Option<PathBuf>, command: &Command) -> anyhow::Result<Option<PathBuf>> {
    let own = match command {
        Command::Check { config, .. }
        | Command::Status { config, .. }
        | Command::Requeue { config, .. }
        | Command::Simulate { config, .. }
        | Command::Run { config, .. }
        | Command::Backfill { config, .. }
        | Command::Report { config, .. }
        | Command::Whatif { config, .. }
        | Command::Explain { config, .. } => config.path.clone(),
        Command::Demo { .. } | Command::Sandbox(_) => {
            if let Some(path) = top {
                return Err(ConfigError {
                    source_name: "command line".into(),
                    key: format!("--config {}", path.display()),
                    message: "`demo` and `sandbox` use their own embedded settings and read no config; drop --config".into(),
                }
                .into());
            }
            return Ok(None);
        }
    };
    Ok(own
        .or(top)
        .or_else(|| std::env::var_os("MQLSYNC_CONFIG").map(PathBuf::from)))
}

fn load_config(path: Option<&Path>, command: &Command) -> anyhow::Result<Config> {
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("MQLSYNC_"))
        .collect();
    let scope = match command {
        Command::Status { .. }
        | Command::Explain { .. }
        | Command::Report { .. }
        | Command::Whatif { .. }
        | Command::Requeue { .. }
        | Command::Simulate { .. } => config::Scope::Local,
        _ => config::Scope::Remote,
    };
    Ok(config::load_for(path, &env, scope)?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config_file = config_path(cli.config, &cli.command)?;
    if let Command::Demo { leads, seed, store } = &cli.command {
        let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        let report = runtime.block_on(mqlsync::demo::run(*leads, *seed, store))?;
        println!(
            "mqlsync demo: a seeded org of {leads} people in the sandbox (Salesforce + Marketo emulators), synced by the daemon (`mqlsync run`) on {}, where the CRM's outbound messages and Marketo's webhook reach it\n",
            report.daemon_url
        );
        println!("1. The daemon starts: its first pass (a full sync, as `run --once`) goes live");
        print_run(&report.first);
        println!("   MQL records in the CRM: {}\n", report.cycles_before);
        let k = &report.knob;
        println!(
            "2. A sales manager turns the {} knob ({}) from {} down to {} in the CRM; its outbound message reaches the daemon ({} acknowledged), which polls the thresholds at once and writes the MQLs",
            k.segment, k.threshold_id, k.from, k.to, report.outbound_messages
        );
        match report.latency {
            Some(latency) => println!(
                "   knob turn -> last MQL record written: {:.2} s (the outbound message, the threshold poll, the decisions and the writes, which wait up to daemon.write_window_ms = {} ms to fill their batches)",
                latency.as_secs_f64(),
                report.write_window_ms
            ),
            None => println!("   knob turn -> last MQL record written: no MQL record to write"),
        }
        print_run(&report.second);
        println!(
            "   MQL records in the CRM: {} ({} new from the knob turn)\n",
            report.cycles_after,
            report.cycles_after - report.cycles_before
        );
        let b = &report.between;
        println!(
            "   Between the new and the old threshold ({} <= score < {}) the segment held {} people: {} became MQLs{}",
            k.to,
            k.from,
            b.people,
            b.became_mqls,
            if b.held.is_empty() {
                String::new()
            } else {
                format!(
                    "; the others: {}",
                    b.held
                        .iter()
                        .map(|(why, n)| format!("{n} {why}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
        if !report.new_mqls.is_empty() {
            println!("   The knob turn made these people MQLs:");
        }
        for p in &report.new_mqls {
            println!(
                "   - {} ({}), {} {}: score {} against the new threshold {}; MQL record {}{}",
                p.name,
                p.role,
                p.crm_kind,
                p.crm_id,
                p.score,
                p.threshold,
                p.external_id,
                if p.alerted {
                    ", a task for the owning rep"
                } else {
                    ""
                }
            );
        }
        println!();
        println!(
            "3. The daemon stops as on SIGTERM: {}",
            match report.stopped {
                mqlsync::workers::daemon::Stopped::Gracefully =>
                    "gracefully, with nothing in flight and the score snapshot saved",
                mqlsync::workers::daemon::Stopped::GraceOver =>
                    "after its grace period, with a pass in flight dropped after its last commit",
            }
        );
        println!();
        println!(
            "store: {} (try `mqlsync status --store {}`, or its report as a page:\n  `mqlsync report --store {} --by week --format html --out report.html`)",
            report.store, report.store, report.store
        );
        return Ok(());
    }
    if let Command::Sandbox(args) = cli.command {
        let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        return runtime
            .block_on(mqlsync::sandbox::cli::run(
                args,
                mqlsync::sandbox::cli::shutdown_signal(),
            ))
            .context("sandbox");
    }
    let config = load_config(config_file.as_deref(), &cli.command)?;
    match cli.command {
        Command::Sandbox(_) | Command::Demo { .. } => unreachable!("handled above"),
        Command::Run {
            once,
            store,
            json,
            dry_run,
            full,
            ..
        } => {
            if !once {
                return daemon(&config, store);
            }
            let settings = mqlsync::sync::once::RunSettings {
                dry_run,
                full,
                go_live: config.sync.go_live,
                ..Default::default()
            };
            sync_pass(&config, store, json, None, settings)
        }
        Command::Backfill {
            since,
            until,
            store,
            json,
            dry_run,
            csv,
            ..
        } => {
            let now = Timestamp::now();
            let until = until.map_or(now, |u| u.0).min(now);
            if since.0 >= until {
                return Err(ConfigError {
                    source_name: "command line".into(),
                    key: "--since".into(),
                    message: format!(
                        "{} is not before --until {until}: nothing to rebuild",
                        since.0
                    ),
                }
                .into());
            }
            let settings = mqlsync::sync::once::RunSettings {
                dry_run,
                backfill: Some(mqlsync::sync::once::BackfillWindow {
                    since: since.0,
                    until,
                    bulk_above: config.sync.bulk_ingest_above,
                }),
                ..Default::default()
            };
            let csv = dry_run.then(|| csv.unwrap_or_else(|| PathBuf::from("backfill-dry-run.csv")));
            sync_pass(&config, store, json, csv.as_deref(), settings)
        }
        Command::Check {
            mapping, remote, ..
        } => {
            let loaded = mapping::load(mapping.as_deref().or(config.mapping.as_deref()))?;
            println!(
                "config: {}",
                config
                    .file
                    .as_ref()
                    .map_or("(none: defaults)".to_string(), |f| f.display().to_string())
            );
            println!(
                "mapping: {} (ok: {} segment attributes, {} teams)",
                loaded.source,
                loaded.mapping.segments.len(),
                loaded.policy.teams.len()
            );
            println!(
                "\n# effective config (secrets redacted)\n{}",
                toml::to_string(&config).context("printing the config")?
            );
            if remote {
                let sf = mqlsync::sync::connect::salesforce(&config)?;
                let mk = mqlsync::sync::connect::marketo(&config)?;
                let runtime =
                    tokio::runtime::Runtime::new().context("starting the async runtime")?;
                let problems = runtime.block_on(async {
                    mqlsync::sync::connect::sign_in(&sf, &mk).await?;
                    mqlsync::sync::preflight::check(&sf, &mk, &loaded.mapping).await
                })?;
                if !problems.is_empty() {
                    for p in &problems {
                        println!("remote: {p}");
                    }
                    return Err(mqlsync::sync::preflight::Mismatch {
                        count: problems.len(),
                    }
                    .into());
                }
                println!(
                    "remote: ok (every object and field the sync uses is there and writable where written)"
                );
            }
            Ok(())
        }
        Command::Requeue { store, error, .. } => {
            let path = existing_store(store, &config)?;
            // A writer: refused while a run holds the store, which may be settling these rows.
            let mut store = Store::open(&path)?;
            let _writer = store.lock_writer()?;
            let n = store.outbox_requeue(error.as_deref())?;
            println!("{n} failed writes are pending again: the next run sends them");
            Ok(())
        }
        Command::Status { store, json, .. } => {
            let path = existing_store(store, &config)?;
            let summary = Store::open_existing(&path)?.summary()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
                return Ok(());
            }
            println!(
                "store: {} (schema {})",
                path.display(),
                summary.schema_version
            );
            println!("cursors:");
            for c in &summary.cursors {
                println!(
                    "  {:<28} {}  (saved {})",
                    c.name,
                    mqlsync::sync::cursor_brief(&c.value),
                    c.saved_at
                );
            }
            println!("cycles by status:");
            for (status, n) in &summary.cycles_by_status {
                println!("  {status:<10} {n}");
            }
            println!(
                "outbox: {} pending, {} failed",
                summary.outbox_pending, summary.outbox_failed
            );
            print_writes("pending", &summary.pending_writes, summary.outbox_pending);
            print_writes("failed", &summary.failed_writes, summary.outbox_failed);
            if !summary.outbox_failures.is_empty() {
                println!("  commonest errors of failed writes:");
            }
            for (error, n) in &summary.outbox_failures {
                println!("  {n:>6} failed: {error}");
            }
            if summary.outbox_failed > 0 {
                println!(
                    "  fix the cause in the CRM, then `mqlsync requeue [--error TEXT]` sends them again"
                );
            }
            println!(
                "seen: {} people, {} MAP leads, {} thresholds ({} versions), {} score changes; {} audit entries",
                summary.persons,
                summary.map_leads,
                summary.thresholds,
                summary.threshold_versions,
                summary.score_changes,
                summary.audit_entries
            );
            Ok(())
        }
        Command::Simulate {
            history,
            store,
            mapping,
            until,
            batch_size,
            json,
            ..
        } => {
            let loaded = mapping::load(mapping.as_deref().or(config.mapping.as_deref()))?;
            // Read and check everything before the store is touched.
            let rows = simulate::read_history(&history)?;
            let mut store = match &store {
                Some(path) => Store::open(path)?,
                None => Store::open_in_memory()?,
            };
            let cursor = format!(
                "simulate:{}",
                history
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            );
            let summary = simulate::run(
                &rows,
                &loaded.policy,
                &mut store,
                &cursor,
                until,
                batch_size,
            )?;
            // Ignored rows are said on stderr in both modes; `--json` also lists them.
            for warning in &summary.warnings {
                eprintln!("{warning}");
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print_cycles(&summary.cycles);
                let ignored = match summary.warnings.len() {
                    0 => String::new(),
                    n => format!("; {n} rows ignored (warnings on stderr)"),
                };
                println!(
                    "\n{} events, {} new cycles; decisions: {}{ignored}",
                    summary.events,
                    summary.cycles_opened,
                    summary
                        .decisions
                        .iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Ok(())
        }
        Command::Report {
            store,
            mapping,
            from,
            to,
            by,
            group,
            format,
            out,
            at,
            ..
        } => {
            use mqlsync::report;
            let loaded = mapping::load(mapping.as_deref().or(config.mapping.as_deref()))?;
            let settings = report::Settings::from_mapping(&loaded);
            // The arguments are checked before the store is opened; `now` is the store's.
            let mut query = report::Query::parse(
                &loaded,
                &settings,
                from.as_deref(),
                to.as_deref(),
                by,
                &group,
                Timestamp::now(),
            )?;
            let store = Store::open_reader(&existing_store(store, &config)?)?;
            if let Some(now) = at.or(store.clock()?) {
                query.now = now;
            }
            let built = report::build(&store, &settings, &query)?;
            let text = match format {
                ReportFormat::Table => report::render::text(&built),
                ReportFormat::Csv => report::render::csv(&built),
                ReportFormat::Json => serde_json::to_string_pretty(&built)? + "\n",
                ReportFormat::Html => report::html::page(&built),
            };
            match out {
                Some(path) => {
                    std::fs::write(&path, text).map_err(|e| {
                        anyhow::anyhow!("cannot write the report to {}: {e}", path.display())
                    })?;
                    eprintln!("report written to {}", path.display());
                }
                None => print!("{text}"),
            }
            Ok(())
        }
        Command::Whatif {
            segment,
            threshold,
            store,
            mapping,
            from,
            to,
            format,
            ..
        } => {
            use mqlsync::report::{self, whatif};
            let loaded = mapping::load(mapping.as_deref().or(config.mapping.as_deref()))?;
            let settings = report::Settings::from_mapping(&loaded);
            let segment = whatif::parse_segment(&segment)?;
            if !threshold.is_finite() {
                return Err(report::ArgumentError(format!(
                    "--threshold {threshold}: not a number"
                ))
                .into());
            }
            let from = from
                .map(|d| report::bound("--from", &d, &settings.time_zone, false))
                .transpose()?;
            let to = to
                .map(|d| report::bound("--to", &d, &settings.time_zone, true))
                .transpose()?;
            let path = existing_store(store, &config)?;
            let query = whatif::WhatIfQuery {
                segment,
                threshold,
                from,
                to,
            };
            keep_freed_memory();
            let result = whatif::run(&path, &loaded.policy, &settings, &query)?;
            match format {
                ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&result)?),
                ReportFormat::Csv => print!("{}", whatif::csv(&result)),
                ReportFormat::Table | ReportFormat::Html => print!("{}", whatif::text(&result)),
            }
            Ok(())
        }
        Command::Explain {
            crm_id,
            store,
            mapping,
            at,
            json,
            ..
        } => {
            let loaded = mapping::load(mapping.as_deref().or(config.mapping.as_deref()))?;
            let store = Store::open_existing(&existing_store(store, &config)?)?;
            let state = store.load_engine(&loaded.policy)?;
            let at = at.or(state.meta.clock).unwrap_or_else(Timestamp::now);
            let reason = explain(&state, &loaded.policy, &crm_id, at);
            let history = store.audit_of(&crm_id)?;
            if json {
                let history: Vec<serde_json::Value> = history
                    .iter()
                    .map(|(when, action, why)| {
                        let why = serde_json::from_str::<serde_json::Value>(why)
                            .unwrap_or_else(|_| why.as_str().into());
                        serde_json::json!({"at": when, "action": action, "reason": why})
                    })
                    .collect();
                let out = serde_json::json!({
                    "crm_id": crm_id, "at": at, "reason": reason, "history": history,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(());
            }
            println!("{crm_id} at {at}: {reason}");
            // An open MQL that was not the person's own score crossing says what made it.
            if let mqlsync::engine::model::Reason::OpenCycle { external_id } = &reason
                && let Some(cycle) = state
                    .persons
                    .values()
                    .flat_map(|p| &p.cycles)
                    .find(|c| c.external_id == *external_id)
                && let Some(label) = cycle.qualified_by()
            {
                println!("  {external_id} qualified by: {label}");
            }
            if !history.is_empty() {
                println!("history:");
            }
            for (when, action, why) in history {
                // Rows written by a newer mqlsync may not parse: show them as stored.
                let why = serde_json::from_str::<mqlsync::engine::model::Reason>(&why)
                    .map_or(why, |r| r.to_string());
                println!("  {when}  {action:<13} {why}");
            }
            Ok(())
        }
    }
}

/// The `status` lines of the first pending or failed writes: the records they write, and the
/// last error of one that was tried (a pending one was refused for now and is sent again).
fn print_writes(state: &str, shown: &[mqlsync::store::OutboxEntry], total: i64) {
    if shown.is_empty() {
        return;
    }
    println!("  {state} writes:");
    for w in shown {
        match &w.last_error {
            Some(error) => println!("    {}  ({} attempts) {error}", w.key, w.attempts),
            None => println!("    {}", w.key),
        }
    }
    let more = total - shown.len() as i64;
    if more > 0 {
        println!("    and {more} more");
    }
}

/// A count under a name a user reads: the summary's keys (action and call names, kept as
/// they are in `--json`) in the product's words.
fn in_words(key: &str, n: usize) -> String {
    let words = match key {
        "open_cycle" => "MQLs opened",
        "update_cycle" => "MQL record changes (status, SLA, owner)",
        "stamp_person" => "people stamped",
        "notify" => "alerts to reps",
        "record" => "decisions recorded for `explain` only",
        "mql_upsert" => "MQL records",
        "lead_update" => "leads stamped",
        "contact_update" => "contacts stamped",
        "task_create" => "alert tasks",
        "task_superseded" => "alerts no longer needed (their MQL had moved on)",
        "task_found" => "alert tasks already in the CRM",
        "activities" => "score changes",
        "current scores" => "MAP leads' current scores",
        other => return format!("{other} {n}"),
    };
    format!("{n} {words}")
}

fn counts_in_words(m: &std::collections::BTreeMap<String, usize>) -> String {
    if m.is_empty() {
        return "none".to_string();
    }
    m.iter()
        .map(|(k, v)| in_words(k, *v))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_run(s: &mqlsync::sync::once::RunSummary) {
    print_reads_and_decisions(s);
    print_go_live(s, false);
    println!("written:   {}", counts_in_words(&s.written));
    if !s.settled.is_empty() {
        println!("no write needed: {}", counts_in_words(&s.settled));
    }
    print_calls(s);
    print_problems(s);
}

/// What going live did, or (in a dry run) will do, and what else the user may choose.
fn print_go_live(s: &mqlsync::sync::once::RunSummary, dry_run: bool) {
    use mqlsync::config::GoLive;
    let Some(g) = &s.go_live else { return };
    let list = |m: &std::collections::BTreeMap<String, usize>| {
        m.iter()
            .map(|(k, n)| format!("{} {n}", if k.is_empty() { "(none)" } else { k }))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (will, did) = if dry_run {
        ("will become", "the first real run")
    } else {
        ("became", "this run")
    };
    match g.setting {
        GoLive::Mql => println!(
            "go-live:   {} people already at or above their threshold (not excluded, no MQL before) {will} MQLs at go-live ({did}, reason at_go_live)",
            g.people
        ),
        GoLive::Wait => println!(
            "go-live:   {} people already at or above their threshold wait for their next score change (sync.go_live = \"wait\")",
            g.people
        ),
    }
    if g.people > 0 {
        println!("           by segment: {}", list(&g.by_segment));
        println!("           by CRM status: {}", list(&g.by_status));
    }
    if dry_run && g.people > 0 {
        println!(
            "           to keep someone out, add an exclusion to the mapping; to choose the other way, set sync.go_live = \"{}\"",
            if g.setting == GoLive::Mql {
                "wait"
            } else {
                "mql"
            }
        );
    }
}

fn print_reads_and_decisions(s: &mqlsync::sync::once::RunSummary) {
    println!("read:      {}", counts_in_words(&s.read));
    println!(
        "decided:   {} (from {} events)",
        counts_in_words(&s.decisions),
        s.events
    );
    if !s.qualified_by.is_empty() {
        let how: Vec<String> = s
            .qualified_by
            .iter()
            .map(|(how, n)| format!("{how} {n}"))
            .collect();
        println!("MQLs by how they qualified: {}", how.join(", "));
    }
}

fn print_calls(s: &mqlsync::sync::once::RunSummary) {
    for (system, calls) in &s.calls {
        println!(
            "API calls: {system} {calls} (minimum for this work: {})",
            s.minimum_calls.get(system).copied().unwrap_or(0)
        );
    }
}

fn print_problems(s: &mqlsync::sync::once::RunSummary) {
    if !s.unreadable.is_empty() {
        println!(
            "{} records could not be read (skipped, see the log):",
            s.unreadable.len()
        );
        for u in s.unreadable.iter().take(20) {
            println!("  {u}");
        }
    }
    if !s.write_failures.is_empty() {
        println!(
            "{} records were refused by the CRM or are not sent by mqlsync in this run (kept in the outbox with their error):",
            s.write_failures.len()
        );
        for f in s.write_failures.iter().take(20) {
            println!("  {f}");
        }
    }
    if s.parked.count > 0 {
        println!(
            "{} writes are parked in the outbox, waiting for `mqlsync requeue`{}:",
            s.parked.count,
            if s.parked.count > s.parked.first.len() {
                format!(" (the first {})", s.parked.first.len())
            } else {
                String::new()
            }
        );
        for p in &s.parked.first {
            println!("  {p}");
        }
    }
}

/// One pass of `run --once` or `backfill`: signs in to both systems before the store is
/// opened (so wrong credentials create no store), runs on the store (a dry run on a copy),
/// prints the summary, and turns what the scheduler must know into the exit code. `csv`: a
/// dry backfill writes the cycles it would rebuild there.
fn sync_pass(
    config: &Config,
    store: Option<PathBuf>,
    json: bool,
    csv: Option<&Path>,
    settings: mqlsync::sync::once::RunSettings,
) -> anyhow::Result<()> {
    let dry_run = settings.dry_run;
    let what = if settings.backfill.is_some() {
        "backfill"
    } else {
        "run --once"
    };
    let loaded = mapping::load(config.mapping.as_deref())?;
    let sf = mqlsync::sync::connect::salesforce(config)?;
    let mk = mqlsync::sync::connect::marketo(config)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    // The sign-in's requests count with the run.
    let sent = || (sf.sent(), mk.sent());
    let sent_before = sent();
    // Wrong credentials or a server out of reach stop the run before it creates a store.
    runtime.block_on(mqlsync::sync::connect::sign_in(&sf, &mk))?;
    let path = store.unwrap_or_else(|| config.store.clone());
    // A dry run works on a copy of the store (removed when `_scratch` drops).
    let (_scratch, mut store) = if dry_run {
        let (scratch, store) = mqlsync::sync::dry_run::ScratchStore::open(&path)?;
        (Some(scratch), store)
    } else {
        (None, Store::open(&path)?)
    };
    let settings = mqlsync::sync::once::RunSettings {
        sent_before: Some(sent_before),
        bulk_reads: bulk_reads(config),
        ..settings
    };
    let outcome = runtime.block_on(mqlsync::sync::once::run_once(
        &sf,
        &mk,
        &loaded.mapping,
        &loaded.policy,
        &mut store,
        Timestamp::now(),
        &settings,
        sent,
    ));
    // The network work is over: a reader that goes away now ends the printing quietly.
    end_quietly_on_closed_pipe();
    match outcome {
        Ok(mut summary) if dry_run => {
            let original = match path.exists() {
                true => Some(Store::open_existing(&path)?),
                false => None,
            };
            mqlsync::sync::dry_run::compare(original.as_ref(), &loaded.mapping, &mut summary.plan)?;
            if let Some(csv) = csv {
                write_cycles_csv(csv, &store)?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else if summary.backfill.is_some() {
                print_backfill(&summary, &path, csv);
            } else {
                print_dry_run(&summary, &path);
            }
        }
        Ok(summary) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else if summary.backfill.is_some() {
                print_backfill(&summary, &path, None);
            } else {
                print_run(&summary);
            }
            if summary.parked.count > 0 {
                return Err(ParkedWrites {
                    count: summary.parked.count,
                }
                .into());
            }
        }
        Err(e) if dry_run => {
            return Err(e).context(format!(
                "{what} --dry-run stopped; nothing was written to the CRM or committed to the store"
            ));
        }
        Err(e) => {
            if let Some(at) = e.resume_at() {
                anyhow::bail!("{e}; everything read so far is committed; run again after {at}");
            }
            let again = if settings.backfill.is_some() {
                "run the same backfill again to continue from there"
            } else {
                "the next run continues from there"
            };
            return Err(e).context(format!(
                "{what} stopped; what was committed stays committed, {again}"
            ));
        }
    }
    Ok(())
}

/// How the MAP is read in bulk, from the config.
fn bulk_reads(config: &Config) -> mqlsync::sync::once::BulkReads {
    mqlsync::sync::once::BulkReads {
        activities_above_days: config.sync.bulk_extract_above_days,
        current_scores: config.sync.current_scores,
        leads_since: config.sync.leads_since,
        extract: mqlsync::connectors::marketo::extract::ExtractSettings {
            poll_interval_secs: config
                .marketo
                .as_ref()
                .map_or(60, |m| m.bulk_poll_interval_secs),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// `mqlsync run` without `--once`: signs in (wrong credentials stop it at once, as for a
/// run), opens the store and the port, and runs the daemon until SIGTERM or SIGINT. The
/// first signal lets it finish within `daemon.grace_secs` and exit 0; a second exits at once
/// with 128 + the signal (130 for SIGINT, 143 for SIGTERM): every commit is a transaction, so
/// the store is consistent either way.
fn daemon(config: &Config, store: Option<PathBuf>) -> anyhow::Result<()> {
    use mqlsync::workers::{daemon, http};
    let loaded = mapping::load(config.mapping.as_deref())?;
    let sf = mqlsync::sync::connect::salesforce(config)?;
    let mk = mqlsync::sync::connect::marketo(config)?;
    fit_in_a_sidecar();
    // The loop runs on this thread (`block_on` below); one worker serves the HTTP port and
    // the CRM reads beside it. More workers (tokio's default is one a core: 64 on a big
    // node) would only hold memory a sidecar's limit counts: each keeps its own heap.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let schedule = config.daemon.schedule.clone();
    let settings = http::WebhookSettings::new(&config.daemon, &loaded.mapping);
    let readiness = http::Readiness::new(daemon::max_poll_age(&schedule));
    let (state, inbound) = http::HttpState::new(settings, readiness, 1024);
    runtime.block_on(daemon::sign_in(&sf, &mk, &state))?;
    let path = store.unwrap_or_else(|| config.store.clone());
    let store = Store::open(&path)?;
    state.serve_report(http::ReportSource {
        store: path.clone(),
        mapping: loaded.clone(),
    });
    let listener = runtime.block_on(http::bind(config.daemon.listen))?;
    let addr = listener
        .local_addr()
        .context("reading the daemon's address")?;
    let run_settings = mqlsync::sync::once::RunSettings {
        go_live: config.sync.go_live,
        bulk_reads: bulk_reads(config),
        ..Default::default()
    };
    let daemon = daemon::Daemon::new(
        sf,
        mk,
        loaded.mapping,
        loaded.policy,
        store,
        run_settings,
        schedule,
        std::sync::Arc::new(daemon::SystemClock),
        state,
        inbound,
        Some(listener),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stopped = runtime.block_on(async {
        // The handlers are in place before anyone learns the daemon runs: a SIGTERM sent
        // right after the line below is a graceful stop, never the default death.
        let signals = Signals::install()?;
        // One line on stdout, for whoever started it: where the port is (`listen` may take
        // any free port with `:0`).
        println!(
            "mqlsync: syncing; webhooks, /healthz, /readyz, /metrics and /report on http://{addr}; SIGTERM or Ctrl-C stops"
        );
        tokio::spawn(signals.stop(shutdown.clone()));
        anyhow::Ok(daemon.run(shutdown).await?)
    })?;
    if stopped == daemon::Stopped::GraceOver {
        eprintln!(
            "mqlsync: stopped after daemon.grace_secs with a pass in flight; what it committed stays committed, the next start continues from there"
        );
    }
    Ok(())
}

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h` of its v2 line, the one built here; the
/// bindings name no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// What a sidecar's memory limit counts, kept small (README, Benchmarks: 28.9 MiB idle with an
/// empty store before these two, 23.1 after):
/// - The allocator gives pages freed whole back to the system at once, not 10 ms later at its
///   next call on that thread: a daemon idles most of its life, so a delayed purge waited for
///   the next poll (1.1 to 1.6 MB). The extra system calls cost nothing a daemon can see: its
///   first pass on a large org waits for Marketo's pace, not for the CPU.
/// - No transparent huge pages: mimalloc asks for them on its arena (`MADV_HUGEPAGE`), and a
///   2 MiB page is resident whole when a few bytes of it are touched (three were 6 of an idle
///   daemon's 9 MB of heap). They speed up a big engine state's lookups a little.
///
/// Other commands keep both.
fn fit_in_a_sidecar() {
    // SAFETY: mi_option_set stores one option atomically; any thread may call it at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes only this process's
    // page-fault policy; a kernel without it returns an error, which changes nothing.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// For `whatif`, which runs once and exits: the allocator never gives freed pages back to the
/// system, so that the next allocation reuses them. What-if frees each group's engine states
/// (megabytes) and makes the next group's at once; given back 10 ms later (mimalloc's default),
/// every group took its pages from the system again, and the system clears each page it hands
/// out (README, Benchmarks: the replays took 4.5 s instead of 3.7 on the bench store).
fn keep_freed_memory() {
    // SAFETY: as in `fit_in_a_sidecar`; a negative delay is mimalloc's "never".
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// SIGTERM and SIGINT, caught from [`Signals::install`] on.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
                int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The first SIGTERM or SIGINT cancels `shutdown` (the daemon finishes what it is
    /// doing); the second exits the process at once with 128 + its number.
    async fn stop(self, shutdown: tokio_util::sync::CancellationToken) {
        #[cfg(unix)]
        {
            let Signals { mut term, mut int } = self;
            let mut first = true;
            loop {
                let code = tokio::select! {
                    _ = term.recv() => 143,
                    _ = int.recv() => 130,
                };
                if !first {
                    eprintln!("mqlsync: second signal: stopping now (the store is consistent)");
                    std::process::exit(code);
                }
                first = false;
                tracing::info!(
                    "signal received: finishing the pass in flight, then stopping (a second signal stops at once)"
                );
                shutdown.cancel();
            }
        }
        #[cfg(not(unix))]
        {
            let _ = self;
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            let _ = tokio::signal::ctrl_c().await;
            std::process::exit(130);
        }
    }
}

/// A backfill's summary: what it read, the cycles it rebuilt (counted by segment, month and
/// status), and (a real one) what it wrote.
fn print_backfill(s: &mqlsync::sync::once::RunSummary, store: &Path, csv: Option<&Path>) {
    let Some(b) = &s.backfill else { return };
    if let Some(csv) = csv {
        println!(
            "dry run: nothing was sent to the CRM and nothing was committed to {}; the cycles a backfill would rebuild are in {}\n",
            store.display(),
            csv.display()
        );
    }
    let window = |t: Option<Timestamp>| t.map_or("?".to_string(), |t| t.to_string());
    if b.already_complete {
        println!(
            "backfill of {} .. {}: complete already; nothing read again",
            window(b.since),
            window(b.until)
        );
    } else {
        println!("backfill of {} .. {}", window(b.since), window(b.until));
        print_reads_and_decisions(s);
    }
    let list = |m: &std::collections::BTreeMap<String, usize>| {
        m.iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "cycles:    {} rebuilt (marked backfilled: no alerts, no SLA)",
        b.cycles
    );
    if b.cycles > 0 {
        println!("           by segment: {}", list(&b.by_segment));
        println!("           by month: {}", list(&b.by_month));
        println!("           by status: {}", list(&b.by_status));
    }
    for u in &b.unreadable_history {
        println!("           {u}: the later value was kept");
    }
    if csv.is_none() {
        println!("written:   {}", counts_in_words(&s.written));
    }
    print_calls(s);
    print_problems(s);
}

/// The backfilled cycles of a store as CSV, one row per cycle.
fn write_cycles_csv(path: &Path, store: &Store) -> anyhow::Result<()> {
    let mut out = csv::Writer::from_path(path)
        .with_context(|| format!("cannot write the dry run's cycles to {}", path.display()))?;
    out.write_record([
        "external_id",
        "crm_id",
        "kind",
        "number",
        "status",
        "segment",
        "threshold_id",
        "threshold",
        "score",
        "mql_at",
        "sal_at",
        "closed_at",
        "owner_id",
        "campaign",
    ])?;
    for c in store.cycles()?.iter().filter(|c| c.backfilled) {
        let at = |t: Option<Timestamp>| t.map_or(String::new(), |t| t.to_string());
        out.write_record([
            c.external_id.clone(),
            c.crm.id.to_string(),
            c.crm.kind.as_str().to_string(),
            c.number.to_string(),
            c.status.as_str().to_string(),
            c.segment.clone(),
            c.threshold_id.clone().unwrap_or_default(),
            c.threshold.to_string(),
            c.score.to_string(),
            c.mql_at.to_string(),
            at(c.sal_at),
            at(c.closed_at),
            c.owner_id.clone().unwrap_or_default(),
            c.campaign
                .as_ref()
                .map_or(String::new(), |x| x.id.to_string()),
        ])?;
    }
    out.flush()
        .with_context(|| format!("cannot write the dry run's cycles to {}", path.display()))?;
    Ok(())
}

/// A dry run: what was read and decided, then every record a real run would write now.
fn print_dry_run(s: &mqlsync::sync::once::RunSummary, store: &Path) {
    println!(
        "dry run: nothing was sent to the CRM and nothing was committed to {}; a real run now would do this work.\n",
        store.display()
    );
    print_reads_and_decisions(s);
    print_go_live(s, true);
    print_calls(s);
    if s.plan.is_empty() {
        println!("\nplan: nothing to write");
    }
    let mut objects: Vec<&str> = s.plan.iter().map(|p| p.object.as_str()).collect();
    objects.dedup();
    for object in objects {
        let writes: Vec<_> = s.plan.iter().filter(|p| p.object == object).collect();
        let count = |action: &str| writes.iter().filter(|p| p.action == action).count();
        println!(
            "\n{object}: {} to create, {} to update",
            count("create"),
            writes.len() - count("create")
        );
        for w in writes {
            let id = w
                .external_id
                .as_deref()
                .or(w.crm_id.as_deref())
                .unwrap_or(&w.key);
            // A new record starts empty: its empty fields say nothing.
            let fields: Vec<String> = w
                .fields
                .iter()
                .filter(|f| f.field != "Id" && !(w.action == "create" && f.to.is_null()))
                .map(|f| match &f.from {
                    Some(from) => {
                        format!("{}: {} -> {}", f.field, show_value(from), show_value(&f.to))
                    }
                    None => format!("{}={}", f.field, show_value(&f.to)),
                })
                .collect();
            println!("  {:<6} {id}  {}", w.action, fields.join("  "));
        }
    }
    print_problems(s);
}

/// A field value as a user reads it: strings without quotes, null as `(empty)`.
fn show_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "(empty)".into(),
        other => other.to_string(),
    }
}

fn print_cycles(cycles: &[Cycle]) {
    println!(
        "{:<22} {:<9} {:>6} {:>6} {:<12} {:<12} {:<21} {:<21} {:>4} {:>3}",
        "external id",
        "status",
        "score",
        "thresh",
        "segment",
        "campaign",
        "mql at",
        "sal at",
        "late",
        "re"
    );
    for c in cycles {
        println!(
            "{:<22} {:<9} {:>6} {:>6} {:<12} {:<12} {:<21} {:<21} {:>4} {:>3}",
            c.external_id,
            c.status.as_str(),
            c.score,
            c.threshold,
            c.segment,
            c.campaign.as_ref().map_or("-", |x| x.id.as_str()),
            c.mql_at.to_string(),
            c.sal_at.map_or("-".to_string(), |t| t.to_string()),
            if c.overdue { "yes" } else { "no" },
            c.reassignments
        );
    }
}
