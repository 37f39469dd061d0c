//! `mqlsync demo`: the whole product in one command, on embedded defaults. Starts the sandbox
//! (both emulators, a seeded org) and the daemon (`mqlsync run`, in this process, on a free
//! port), with the sandbox's Outbound Messages and Marketo webhook pointed at the daemon, as the
//! README sets them up against a real org. The daemon's first pass goes live; then a sales
//! manager turns the EMEA knob down in the CRM, the CRM's outbound message wakes the daemon's
//! threshold poller, and the demo says how long the knob turn took to become MQL records, who
//! they are, and the API calls it used against the fewest possible. Then the daemon stops as on
//! SIGTERM.
//!
//! Must not: sleep to wait for the daemon (it watches the daemon's [`Progress`]), or leave the
//! sandbox or the daemon running when it returns.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Map, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::mapping;
use crate::sandbox::cli::sandbox_config_toml;
use crate::sandbox::marketo::MarketoWebhook;
use crate::sandbox::salesforce::OutboundMessaging;
use crate::sandbox::server::{Sandbox, SandboxOptions};
use crate::store::Store;
use crate::sync::connect;
use crate::sync::once::{RunSettings, RunSummary, Source};
use crate::workers::daemon::{self, Daemon, DaemonError, Progress, Stopped, SystemClock};
use crate::workers::http::{self, HttpState, Readiness, WebhookSettings};
use crate::workers::metrics::{Endpoint, WebhookResult};
use crate::workers::webhook::MARKETO_TEMPLATE;

/// The longest the demo waits for the daemon's first pass, or for a knob turn's MQLs: far
/// beyond what either takes, so that a daemon that cannot get on ends the demo with a message
/// instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(600);

/// What the demo did.
pub struct DemoReport {
    /// Where the daemon's webhooks, `/healthz`, `/readyz` and `/metrics` were served.
    pub daemon_url: String,
    /// The daemon's first pass: what `run --once` would have done.
    pub first: RunSummary,
    pub knob: KnobTurn,
    /// What the daemon did from the knob turn until the last of its MQL records was written:
    /// read, decided, written, and the calls against the fewest for that work.
    pub second: RunSummary,
    /// From the knob turn in the CRM to the daemon's last MQL record written (`None`: the turn
    /// made no MQL).
    pub latency: Option<Duration>,
    /// The Outbound Messages the daemon acknowledged.
    pub outbound_messages: u64,
    /// How long the daemon's writer waits to fill a batch (`daemon.write_window_ms`): part of
    /// the latency.
    pub write_window_ms: u64,
    pub cycles_before: usize,
    pub cycles_after: usize,
    /// The people the knob turn made MQLs, by name.
    pub new_mqls: Vec<NewMql>,
    /// Everyone of the segment between the new and the old threshold, and what became of them.
    pub between: Between,
    /// How the daemon stopped at the end (as on SIGTERM).
    pub stopped: Stopped,
    pub store: String,
}

/// The people of the turned segment whose score sat between the new threshold (included) and
/// the old one when the knob turned: those who became MQLs, and why the others did not.
#[derive(Default)]
pub struct Between {
    pub people: usize,
    pub became_mqls: usize,
    /// Why the others are not new MQLs, in `explain`'s words, with how many.
    pub held: BTreeMap<String, usize>,
}

/// A person the knob turn made an MQL.
pub struct NewMql {
    pub name: String,
    /// Title and company, as the CRM has them.
    pub role: String,
    pub crm_kind: &'static str,
    pub crm_id: String,
    pub score: f64,
    pub threshold: f64,
    /// The MQL record's external id.
    pub external_id: String,
    pub alerted: bool,
}

/// The knob the demo turned.
pub struct KnobTurn {
    pub threshold_id: String,
    pub segment: String,
    pub from: f64,
    pub to: f64,
    /// When the sales manager saved it (the sandbox's clock, the machine's time).
    pub at: Timestamp,
}

/// Runs the demo with `leads` people seeded from `seed`, keeping the store at `store`.
pub async fn run(
    leads: usize,
    seed: u64,
    store_path: &std::path::Path,
) -> anyhow::Result<DemoReport> {
    // The daemon's port first: the sandbox's webhooks need its address.
    let listener = http::bind("127.0.0.1:0".parse().expect("a socket address")).await?;
    let daemon_url = format!("http://{}", listener.local_addr()?);
    let secret = webhook_secret();
    let mut options = SandboxOptions {
        leads,
        seed,
        ..SandboxOptions::default()
    };
    // As the README's "The daemon" sets them up in Marketo and Salesforce.
    options.marketo.webhook = Some(marketo_webhook(&daemon_url, &secret));
    options.salesforce.outbound = Some(OutboundMessaging {
        url: format!("{daemon_url}/webhooks/salesforce"),
        // The threshold object only: the knob is what the demo turns (the README also sends
        // `MQL__c` for reps' edits, which would have the daemon read back its own writes here).
        objects: vec!["MQL_Threshold__c".into()],
        fields: vec!["Name".into(), "Score_Threshold__c".into()],
        retry_initial_secs: 15,
        deliver_in_background: true,
    });
    let sandbox = Sandbox::start(options).await?;
    let result = with_sandbox(&sandbox, listener, daemon_url, secret, store_path).await;
    sandbox.shutdown().await;
    result
}

/// The demo on a started sandbox (which the caller shuts down whatever happens).
async fn with_sandbox(
    sandbox: &Sandbox,
    listener: tokio::net::TcpListener,
    daemon_url: String,
    secret: String,
    store_path: &std::path::Path,
) -> anyhow::Result<DemoReport> {
    let info = sandbox.connection_info();
    let dir = store_path
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let file = dir.join("demo.toml");
    // The demo's store is new each time: the old one goes with its -wal and -shm (a stale
    // -wal beside a new file would be read as part of it). Opening the store first makes a
    // folder this user cannot write an error that names the store's path.
    for suffix in ["", "-wal", "-shm"] {
        let mut name = store_path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(std::path::PathBuf::from(name));
    }
    let store = Store::open(store_path)?;
    let store_name = store_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::write(&file, sandbox_config_toml(&info, &store_name, None)).map_err(|e| {
        anyhow::anyhow!(
            "cannot write the demo's config {}: {e}; pass --store with a path in a folder you can write",
            file.display()
        )
    })?;
    let env = crate::sandbox::cli::secrets_env(&info, Some(&secret));
    let config = config::load(Some(&file), &env)?;
    let loaded = mapping::load(None)?;
    let sf = connect::salesforce(&config)?;
    let mk = connect::marketo(&config)?;
    let schedule = config.daemon.schedule.clone();
    let (state, inbound) = HttpState::new(
        WebhookSettings::new(&config.daemon, &loaded.mapping),
        Readiness::new(daemon::max_poll_age(&schedule)),
        1024,
    );
    daemon::sign_in(&sf, &mk, &state).await?;
    state.serve_report(crate::workers::http::ReportSource {
        store: store_path.to_path_buf(),
        mapping: loaded.clone(),
    });
    let settings = RunSettings {
        go_live: config.sync.go_live,
        ..RunSettings::default()
    };
    let d = Daemon::new(
        sf,
        mk,
        loaded.mapping.clone(),
        loaded.policy.clone(),
        store,
        settings,
        schedule,
        Arc::new(SystemClock),
        state.clone(),
        inbound,
        Some(listener),
    );
    let mut watching = Watch {
        progress: d.progress(),
        shutdown: CancellationToken::new(),
        daemon: None,
    };
    watching.daemon = Some(tokio::spawn(d.run(watching.shutdown.clone())));
    let result = knob_turn(sandbox, &mut watching, &loaded, store_path).await;
    // Whatever happened, the daemon stops as on SIGTERM.
    let stopped = watching.stop().await;
    let (mut report, new_cycles, before) = result?;
    report.stopped = stopped?;
    report.daemon_url = daemon_url;
    report.outbound_messages = state
        .metrics()
        .webhook_count(Endpoint::Salesforce, WebhookResult::Accepted);
    report.store = config.store.display().to_string();
    report.write_window_ms = config.daemon.schedule.write_window_ms;

    // The daemon has let go of the store: read what the knob turn did.
    let store = Store::open(store_path)?;
    report.between = between(&store, &loaded.policy, &report.knob, &before)?;
    let alert_keys = alert_keys(
        sandbox,
        &loaded.mapping.crm.task,
        &loaded.mapping.crm.task_alert_key,
    );
    let world = sandbox.world();
    report.new_mqls = new_cycles
        .iter()
        .map(|c| {
            let person = world
                .people
                .iter()
                .find(|p| p.crm_id.as_deref() == Some(c.crm.id.as_str()));
            NewMql {
                name: person.map_or_else(
                    || "(not in the seeded world)".into(),
                    |p| format!("{} {}", p.first_name, p.last_name),
                ),
                role: person.map_or_else(String::new, |p| format!("{}, {}", p.title, p.company)),
                crm_kind: c.crm.kind.as_str(),
                crm_id: c.crm.id.to_string(),
                score: c.score,
                threshold: c.threshold,
                // An alert task's key starts with `Notify:{external id}:`.
                alerted: alert_keys
                    .iter()
                    .any(|k| k.starts_with(&format!("Notify:{}:", c.external_id))),
                external_id: c.external_id.clone(),
            }
        })
        .collect();
    report.new_mqls.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(report)
}

/// The running daemon, as the demo watches it.
struct Watch {
    progress: watch::Receiver<Progress>,
    shutdown: CancellationToken,
    daemon: Option<tokio::task::JoinHandle<Result<Stopped, DaemonError>>>,
}

impl Watch {
    /// Waits until the daemon's progress satisfies `done`, calling `seen` on every progress
    /// it publishes meanwhile. Fails when the daemon stops, a step fails or [`PATIENCE`] runs
    /// out.
    async fn until(
        &mut self,
        what: &str,
        mut seen: impl FnMut(&Progress),
        done: impl Fn(&Progress) -> bool,
    ) -> anyhow::Result<Progress> {
        let errors = self.progress.borrow().errors;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let p = self.progress.borrow_and_update().clone();
            seen(&p);
            if p.errors > errors {
                anyhow::bail!(
                    "the daemon's {what} failed (the log above says why); the demo stops"
                );
            }
            if done(&p) {
                return Ok(p);
            }
            match tokio::time::timeout_at(deadline, self.progress.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => anyhow::bail!("the daemon stopped before its {what} ended"),
                Err(_) => anyhow::bail!(
                    "the daemon's {what} did not end within {} s; the demo stops",
                    PATIENCE.as_secs()
                ),
            }
        }
    }

    /// Stops the daemon as the first SIGTERM does, and says how it ended.
    async fn stop(&mut self) -> anyhow::Result<Stopped> {
        self.shutdown.cancel();
        let handle = self.daemon.take().expect("the daemon was started");
        Ok(handle.await??)
    }
}

/// The daemon goes live; a sales manager turns the EMEA knob down; the demo waits until the
/// daemon has written what that made. Returns the report so far, the cycles the knob turn
/// opened, and the external ids of the cycles before it.
async fn knob_turn(
    sandbox: &Sandbox,
    watching: &mut Watch,
    loaded: &mapping::LoadedMapping,
    store_path: &std::path::Path,
) -> anyhow::Result<(DemoReport, Vec<crate::engine::Cycle>, HashSet<String>)> {
    let live = watching
        .until("first pass", |_| {}, |p| p.live && p.first_pass.is_some())
        .await?;
    let first = live
        .first_pass
        .as_deref()
        .cloned()
        .expect("a live daemon's first pass");
    // Read beside the daemon, as `mqlsync status` does.
    let before: HashSet<String> = Store::open_existing(store_path)?
        .cycles()?
        .into_iter()
        .map(|c| c.external_id)
        .collect();

    // A sales manager turns the EMEA knob down by 25 points.
    let now = sandbox.clock().now();
    let knob = sandbox
        .world()
        .thresholds
        .iter()
        .find(|t| t.region.as_deref() == Some("EMEA") && t.effective_from.is_none_or(|f| f <= now))
        .ok_or_else(|| anyhow::anyhow!("the seeded org has no EMEA threshold"))?;
    let threshold_object = loaded.mapping.crm.threshold.object.clone();
    let mut edit = Map::new();
    edit.insert(
        loaded.mapping.crm.threshold.score.clone(),
        json!((knob.score - 25.0).max(0.0)),
    );
    edit.insert(
        loaded.mapping.crm.threshold.reason.clone(),
        json!("Pipeline short for the quarter: more leads"),
    );
    let before_turn = watching.progress.borrow().clone();
    let turned = Instant::now();
    let at = sandbox.clock().now();
    sandbox
        .salesforce()
        .edit_record(&threshold_object, &knob.id, edit)
        .map_err(anyhow::Error::msg)?;
    let turn = KnobTurn {
        threshold_id: knob.id.clone(),
        segment: "region=EMEA".into(),
        from: knob.score,
        to: (knob.score - 25.0).max(0.0),
        at,
    };

    // Done when the threshold poller has read the turned record and the outbox is empty:
    // every write the turn made went out. The MQL records were written when the count of
    // them last grew.
    let mqls = |p: &Progress| p.written.get("mql_upsert").copied().unwrap_or(0);
    let polls = |p: &Progress| p.polls.get(&Source::Thresholds).copied().unwrap_or(0);
    let read = |p: &Progress| p.read.get(&threshold_object).copied().unwrap_or(0);
    let mut last_written = None;
    let mut mqls_seen = mqls(&before_turn);
    let after = watching
        .until(
            "knob turn",
            |p| {
                if mqls(p) > mqls_seen {
                    mqls_seen = mqls(p);
                    last_written = Some(Instant::now());
                }
            },
            |p| {
                polls(p) > polls(&before_turn)
                    && read(p) > read(&before_turn)
                    && p.pending_writes == 0
            },
        )
        .await?;
    let second = since(&before_turn, &after);
    let cycles: Vec<crate::engine::Cycle> = Store::open_existing(store_path)?.cycles()?;
    let cycles_after = cycles.len();
    let new_cycles = cycles
        .into_iter()
        .filter(|c| !before.contains(&c.external_id))
        .collect();
    let report = DemoReport {
        daemon_url: String::new(),
        first,
        knob: turn,
        second,
        latency: last_written.map(|at| at - turned),
        outbound_messages: 0,
        write_window_ms: 0,
        cycles_before: before.len(),
        cycles_after,
        new_mqls: Vec::new(),
        between: Between::default(),
        stopped: Stopped::Gracefully,
        store: String::new(),
    };
    Ok((report, new_cycles, before))
}

/// What the daemon did between two of its progress reports, as a run's summary: records read,
/// decisions, writes, and the calls against the fewest for that work.
fn since(before: &Progress, after: &Progress) -> RunSummary {
    fn minus<N: Copy + PartialOrd + std::ops::Sub<Output = N> + Default>(
        after: &BTreeMap<String, N>,
        before: &BTreeMap<String, N>,
    ) -> BTreeMap<String, N> {
        after
            .iter()
            .map(|(k, n)| {
                let was = before.get(k).copied().unwrap_or_default();
                (k.clone(), *n - was)
            })
            .filter(|(_, n)| *n > N::default())
            .collect()
    }
    let mut calls = minus(&after.calls, &before.calls);
    let mut minimum_calls = minus(&after.minimum_calls, &before.minimum_calls);
    // Both systems are named, a system the steps did not call with 0.
    for system in ["marketo", "salesforce"] {
        calls.entry(system.into()).or_default();
        minimum_calls.entry(system.into()).or_default();
    }
    RunSummary {
        read: minus(&after.read, &before.read),
        events: after.events - before.events,
        decisions: minus(&after.decisions, &before.decisions),
        written: minus(&after.written, &before.written),
        settled: minus(&after.settled, &before.settled),
        calls,
        minimum_calls,
        ..RunSummary::default()
    }
}

/// The sandbox's Marketo webhook pointed at a daemon at `daemon_url`, as the README's "The
/// daemon" sets it up in Marketo: the template's JSON body, the shared secret in the default
/// header.
pub fn marketo_webhook(daemon_url: &str, secret: &str) -> MarketoWebhook {
    MarketoWebhook {
        url: format!("{daemon_url}/webhooks/marketo"),
        template: MARKETO_TEMPLATE.into(),
        headers: vec![
            (
                crate::config::DEFAULT_WEBHOOK_SECRET_HEADER.into(),
                secret.into(),
            ),
            ("Content-Type".into(), "application/json".into()),
        ],
    }
}

/// A fresh shared secret for the Marketo webhook: 32 random bytes, in hex.
fn webhook_secret() -> String {
    use rand::Rng as _;
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The alert keys of the tasks in the sandbox's CRM.
fn alert_keys(sandbox: &Sandbox, task: &str, field: &str) -> Vec<String> {
    let state = sandbox.salesforce().state();
    state["objects"][task]
        .as_array()
        .map(|tasks| {
            tasks
                .iter()
                .filter_map(|t| t[field].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Who of the turned segment (region EMEA) sat between the new threshold and the old one at
/// the turn, from the store's own state: which of them became MQLs, and the engine's reason
/// (`explain`) for each of the others.
fn between(
    store: &Store,
    policy: &crate::engine::Policy,
    turn: &KnobTurn,
    before: &HashSet<String>,
) -> anyhow::Result<Between> {
    let at = turn.at;
    use crate::engine::model::Reason;
    let state = store.load_engine(policy)?;
    let mut out = Between::default();
    for (id, person) in state.persons.iter() {
        let in_segment = person
            .facts
            .as_ref()
            .is_some_and(|f| f.attributes.get("region") == Some("EMEA"));
        let score = person
            .map_lead
            .and_then(|l| state.map_leads.get(&l))
            .and_then(|l| l.scores.value(&policy.score, at));
        if !score.is_some_and(|s| in_segment && s >= turn.to && s < turn.from) {
            continue;
        }
        out.people += 1;
        let opened_now = person
            .cycles
            .iter()
            .any(|c| !before.contains(&c.external_id));
        if opened_now {
            out.became_mqls += 1;
            continue;
        }
        let why = match crate::engine::explain(&state, policy, id, at) {
            Reason::Excluded { rule, .. } => format!("excluded by the {} rule", rule.label()),
            Reason::OpenCycle { .. } => "an MQL still open from before".to_string(),
            Reason::CoolingDown { .. } => "cooling down after a rejection".to_string(),
            Reason::NotLinked { .. } => "not linked to a CRM record".to_string(),
            other => other.to_string(),
        };
        *out.held.entry(why).or_default() += 1;
    }
    Ok(out)
}
