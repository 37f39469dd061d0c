//! The daemon's loop (issue 13, points 1, 2, 4 and 5) against the in-process sandbox: the
//! first pass goes live, webhooks wake their source at once (the intervals here are an hour,
//! so nothing else could), the engine's clock wakes it exactly when a scheduled threshold
//! starts, a shutdown finishes or drops the pass in flight and leaves a store that the next
//! `run --once` continues without writing anything twice, and `mqlsync run` as a child
//! process serves `/healthz` and exits 0 on SIGTERM.
//!
//! No sleeps: the sandbox's clock stands still and is moved by the test (the daemon waits on
//! it through [`TestClock`]), and every wait on the daemon is on its [`Progress`], bounded by
//! a timeout that only marks a failure.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use mqlsync::config::{self, Config};
use mqlsync::connectors::salesforce::SalesforceClient;
use mqlsync::connectors::{Priority, QueryPages};
use mqlsync::engine::Cycle;
use mqlsync::mapping::{self, LoadedMapping};
use mqlsync::sandbox::clock::SandboxClock;
use mqlsync::sandbox::faults::{FaultAction, FaultRule, System};
use mqlsync::sandbox::salesforce::OutboundMessaging;
use mqlsync::sandbox::server::{Sandbox, SandboxOptions};
use mqlsync::sandbox::world::ScoreField;
use mqlsync::store::Store;
use mqlsync::sync::connect;
use mqlsync::sync::once::{RunSettings, RunSummary, Source, run_once};
use mqlsync::workers::daemon::{self, Daemon, DaemonError, Progress, Stopped};
use mqlsync::workers::http::{self, HttpState, Readiness, WebhookSettings};
use mqlsync::workers::metrics::{Endpoint, WebhookResult};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::TestClock;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "loop-test-shared-secret-0123456789";
/// Bounds a wait on the daemon; reaching it is a failure, not a pace.
const FAILURE_BOUND: Duration = Duration::from_secs(90);
/// Every source's interval and the idle ceiling: an hour, so that within a test only a
/// webhook, the engine's clock or the first pass can start a pass.
const NEVER_BY_INTERVAL: &str = "poll_thresholds_secs = 3600\npoll_people_secs = 3600\npoll_mql_edits_secs = 3600\npoll_opportunities_secs = 3600\npoll_activities_secs = 3600\npoll_idle_ceiling_secs = 3600\n";

fn start() -> Timestamp {
    "2026-11-02T12:00:00Z".parse().unwrap()
}

struct App {
    sandbox: Sandbox,
    clock: Arc<TestClock>,
    /// The test's own client, for queries.
    sf: SalesforceClient,
    config: Config,
    loaded: LoadedMapping,
    http: HttpState,
    progress: watch::Receiver<Progress>,
    /// The daemon's port.
    base: String,
    shutdown: CancellationToken,
    daemon: Option<tokio::task::JoinHandle<Result<Stopped, DaemonError>>>,
    _dir: tempfile::TempDir,
}

/// A sandbox of `leads` people on a frozen clock, whose Marketo webhook and Outbound
/// Messages (threshold records) point at the daemon's port, and the daemon started on it;
/// `daemon_toml`: more `[daemon]` keys.
async fn spawn_app(leads: usize, daemon_toml: &str, faults: Vec<FaultRule>) -> App {
    let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let sandbox_clock = SandboxClock::frozen(start());
    let mut options = SandboxOptions {
        leads,
        seed: 3,
        clock: sandbox_clock.clone(),
        // The clock stands still: Marketo's 20-second window would never pass.
        limits: false,
        faults,
        ..SandboxOptions::default()
    };
    options.marketo.webhook = Some(mqlsync::demo::marketo_webhook(&base, SECRET));
    options.salesforce.outbound = Some(OutboundMessaging {
        url: format!("{base}/webhooks/salesforce"),
        objects: vec!["MQL_Threshold__c".into()],
        fields: vec!["Name".into(), "Score_Threshold__c".into()],
        retry_initial_secs: 60,
        deliver_in_background: false,
    });
    let sandbox = Sandbox::start(options).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let info = sandbox.connection_info();
    let file = dir.path().join("mqlsync.toml");
    std::fs::write(
        &file,
        format!(
            "{}\n[daemon]\n{NEVER_BY_INTERVAL}{}{daemon_toml}",
            mqlsync::sandbox::cli::sandbox_config_toml(&info, "state.sqlite", None),
            if daemon_toml.contains("write_window_ms") {
                ""
            } else {
                "write_window_ms = 20\n"
            }
        ),
    )
    .unwrap();
    let env = mqlsync::sandbox::cli::secrets_env(&info, Some(SECRET));
    let config = config::load(Some(&file), &env).unwrap();
    let sf = connect::salesforce(&config).unwrap();
    let mk = connect::marketo(&config).unwrap();
    let loaded = mapping::load(None).unwrap();
    let schedule = config.daemon.schedule.clone();
    let (state, inbound) = HttpState::new(
        WebhookSettings::new(&config.daemon, &loaded.mapping),
        Readiness::new(daemon::max_poll_age(&schedule)),
        64,
    );
    daemon::sign_in(&sf, &mk, &state).await.unwrap();
    let store = Store::open(&config.store).unwrap();
    let clock = Arc::new(TestClock::new(sandbox_clock));
    let settings = RunSettings {
        go_live: config.sync.go_live,
        ..RunSettings::default()
    };
    let d = Daemon::new(
        sf.clone(),
        mk,
        loaded.mapping.clone(),
        loaded.policy.clone(),
        store,
        settings,
        schedule,
        clock.clone(),
        state.clone(),
        inbound,
        Some(listener),
    );
    let progress = d.progress();
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(d.run(shutdown.clone()));
    App {
        sandbox,
        clock,
        sf,
        config,
        loaded,
        http: state,
        progress,
        base,
        shutdown,
        daemon: Some(daemon),
        _dir: dir,
    }
}

impl App {
    /// Waits until the daemon's progress satisfies `done`; fails after [`FAILURE_BOUND`],
    /// or at once when the daemon has stopped.
    async fn wait_for(&mut self, what: &str, done: impl Fn(&Progress) -> bool) -> Progress {
        let waited = {
            let wait = self.progress.wait_for(|p| done(p));
            match tokio::time::timeout(FAILURE_BOUND, wait).await {
                Ok(Ok(p)) => Ok(p.clone()),
                Ok(Err(_)) => Err(true),
                Err(_) => Err(false),
            }
        };
        match waited {
            Ok(p) => p,
            Err(true) => panic!("the daemon stopped before {what}: {:?}", self.stop().await),
            Err(false) => panic!("no {what} within {FAILURE_BOUND:?}: {:?}", self.now()),
        }
    }

    fn now(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// At `at`, pushes a score change (Marketo's webhook follows) that makes someone an MQL,
    /// and waits until an activities poll and a drain after it have emptied the outbox: the
    /// progress then, and the person's cycle.
    async fn push_to_an_mql(&mut self, at: Timestamp) -> (Progress, Cycle) {
        let person = qualifies_with_a_push(self, at);
        let crm_id = person.crm_id.clone().unwrap();
        self.clock.set(at);
        let polls = self.polls(Source::Activities);
        let drains = self.now().drains;
        self.sandbox
            .marketo()
            .apply_score_change(person.map_id, ScoreField::BehaviorScore, 500, Some(1003))
            .unwrap();
        let p = self
            .wait_for("the score change's MQL record written", |p| {
                p.polls.get(&Source::Activities).copied().unwrap_or(0) > polls
                    && p.drains > drains
                    && p.pending_writes == 0
            })
            .await;
        let cycle = self
            .cycles()
            .into_iter()
            .find(|c| c.crm.id == crm_id)
            .unwrap_or_else(|| panic!("no MQL for {crm_id}, whose score was pushed: {p:?}"));
        (p, cycle)
    }

    fn polls(&self, source: Source) -> u64 {
        self.now().polls.get(&source).copied().unwrap_or(0)
    }

    /// Stops the daemon as the first SIGTERM does and says how it ended.
    async fn stop(&mut self) -> Result<Stopped, DaemonError> {
        self.shutdown.cancel();
        let handle = self.daemon.take().expect("the daemon runs");
        tokio::time::timeout(FAILURE_BOUND, handle)
            .await
            .expect("the daemon stops within the bound")
            .expect("the daemon's task does not panic")
    }

    /// The store's cycles, read beside the daemon (as `mqlsync status` does).
    fn cycles(&self) -> Vec<Cycle> {
        Store::open_existing(&self.config.store)
            .unwrap()
            .cycles()
            .unwrap()
    }

    async fn query(&self, soql: &str) -> Vec<Map<String, Value>> {
        let mut pages = QueryPages::new(self.sf.clone(), soql, false, Priority::Routine);
        let mut all = Vec::new();
        while let Some(page) = pages.next_page().await.unwrap() {
            all.extend(page);
        }
        all
    }

    /// Every MQL record in the CRM: external id and MQL date.
    async fn mql_records(&self) -> Vec<(String, Option<Timestamp>)> {
        self.query("SELECT External_Id__c, MQL_Date__c FROM MQL__c")
            .await
            .into_iter()
            .map(|r| {
                (
                    r["External_Id__c"].as_str().unwrap().to_string(),
                    r["MQL_Date__c"].as_str().map(|s| s.parse().unwrap()),
                )
            })
            .collect()
    }

    /// `run --once` on the daemon's store, with clients of its own.
    async fn run_once(&self, at: Timestamp) -> RunSummary {
        let sf = connect::salesforce(&self.config).unwrap();
        let mk = connect::marketo(&self.config).unwrap();
        let mut store = Store::open(&self.config.store).unwrap();
        let (a, b) = (sf.clone(), mk.clone());
        run_once(
            &sf,
            &mk,
            &self.loaded.mapping,
            &self.loaded.policy,
            &mut store,
            at,
            &RunSettings::default(),
            move || (a.sent(), b.sent()),
        )
        .await
        .unwrap()
    }
}

/// Someone linked and below their threshold whom a score change of +500 at `at` makes an
/// MQL, as the engine decides it on a copy of the daemon's state (no exclusion applies).
fn qualifies_with_a_push(app: &App, at: Timestamp) -> mqlsync::sandbox::world::Person {
    let policy = &app.loaded.policy;
    let state = Store::open_existing(&app.config.store)
        .unwrap()
        .load_engine(policy)
        .unwrap();
    app.sandbox
        .world()
        .people
        .iter()
        .find(|p| crate::a_push_qualifies(&state, policy, p, start(), at))
        .expect("someone a score push makes an MQL")
        .clone()
}

/// Every MQL record is in the CRM once, and the store knows exactly those.
fn assert_each_record_once(records: &[(String, Option<Timestamp>)], cycles: &[Cycle]) {
    let ids: BTreeSet<&str> = records.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), records.len(), "a duplicate MQL record");
    let known: BTreeSet<&str> = cycles.iter().map(|c| c.external_id.as_str()).collect();
    assert_eq!(ids, known);
}

/// The EMEA knob as the world has it today, turned down by `by` in the CRM at `at`.
fn turn_emea_knob(app: &App, by: f64, at: Timestamp) -> (String, f64) {
    let knob = app
        .sandbox
        .world()
        .thresholds
        .iter()
        .find(|t| {
            t.region.as_deref() == Some("EMEA") && t.effective_from.is_none_or(|f| f <= start())
        })
        .unwrap()
        .clone();
    app.clock.set(at);
    let mut edit = Map::new();
    edit.insert("Score_Threshold__c".into(), json!(knob.score - by));
    app.sandbox
        .salesforce()
        .edit_record("MQL_Threshold__c", &knob.id, edit)
        .unwrap();
    (knob.id, knob.score)
}

/// Issue 13, points 2 and 3: the daemon's first pass goes live and writes the MQL records;
/// a sales manager's knob turn, delivered by the CRM's Outbound Message, makes the leads
/// waiting between the old and the new knob MQLs at once: the thresholds interval is an
/// hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_pass_goes_live_and_a_knob_turn_outbound_message_makes_mqls_at_once() {
    let mut app = spawn_app(1_000, "", Vec::new()).await;
    let first = app.wait_for("first pass", |p| p.live).await;
    let cycles = app.cycles();
    assert!(!cycles.is_empty());
    assert!(first.records_written() >= cycles.len(), "{first:?}");
    assert_each_record_once(&app.mql_records().await, &cycles);
    assert_eq!(app.polls(Source::Thresholds), 0);
    // Point 6 wired: signed in, store open, both systems polled: ready; the metrics count.
    let ready = reqwest::get(format!("{}/readyz", app.base)).await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    let metrics = app.http.metrics().render();
    for sample in [
        "mqlsync_mqls_opened_total{segment=\"region=EMEA\"}",
        "mqlsync_decisions_total{kind=\"open_cycle\"}",
        "mqlsync_events_total{kind=\"Lead\"}",
        "mqlsync_api_calls_total{system=\"salesforce\"}",
        "mqlsync_api_daily_budget_remaining{system=\"marketo\"}",
        "mqlsync_poll_lag_seconds{source=\"thresholds\"}",
        "mqlsync_outbox_depth 0",
    ] {
        assert!(metrics.contains(sample), "{sample} in\n{metrics}");
    }

    let later = start() + SignedDuration::from_mins(1);
    let (knob_id, knob_score) = turn_emea_knob(&app, 25.0, later);
    let drains = app.now().drains;
    assert_eq!(app.sandbox.salesforce().deliver_outbound().await, 1);
    app.wait_for("the knob turn's MQLs written", |p| {
        p.polls.get(&Source::Thresholds).is_some_and(|n| *n >= 1)
            && p.drains > drains
            && p.pending_writes == 0
    })
    .await;
    let cycles = app.cycles();
    let new: Vec<&Cycle> = cycles.iter().filter(|c| c.mql_at == later).collect();
    assert!(!new.is_empty(), "turning the knob down made no MQL");
    for c in &new {
        assert_eq!(
            (c.segment.as_str(), c.threshold, c.threshold_id.as_deref()),
            ("region=EMEA", knob_score - 25.0, Some(knob_id.as_str()))
        );
    }
    let records = app.mql_records().await;
    assert_each_record_once(&records, &cycles);
    for c in new {
        assert!(
            records
                .iter()
                .any(|(id, at)| *id == c.external_id && *at == Some(later)),
            "{} not written",
            c.external_id
        );
    }
    assert_eq!(
        app.http
            .metrics()
            .webhook_count(Endpoint::Salesforce, WebhookResult::Accepted),
        1
    );
    assert_eq!(app.stop().await.unwrap(), Stopped::Gracefully);
}

/// Issue 13, points 2 and 3: Marketo's webhook after a score change wakes the activities
/// poller, and the change reaches an MQL record without waiting for its interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marketo_webhook_wakes_the_activities_poller_and_the_score_becomes_an_mql_record() {
    let mut app = spawn_app(300, "", Vec::new()).await;
    app.wait_for("first pass", |p| p.live).await;
    let later = start() + SignedDuration::from_mins(2);
    let polls = app.polls(Source::Activities);
    let (p, cycle) = app.push_to_an_mql(later).await;
    assert_eq!(
        p.polls.get(&Source::Activities),
        Some(&(polls + 1)),
        "one poll for one webhook: {p:?}"
    );
    assert_eq!(cycle.mql_at, later);
    let records = app.mql_records().await;
    assert!(
        records
            .iter()
            .any(|(id, at)| *id == cycle.external_id && *at == Some(later)),
        "{records:?}"
    );
    assert_eq!(
        app.http
            .metrics()
            .webhook_count(Endpoint::Marketo, WebhookResult::Accepted),
        1
    );
    app.stop().await.unwrap();
}

/// Issue 13, performance: a CRM read in flight holds back neither a Marketo poll nor the
/// writer. The people poller's query is held by the CRM for a minute; meanwhile a score push
/// becomes an MQL record, and the people poll is still waiting for its page. (Read in the
/// loop, the query held everything behind it for the minute, and the people poll ended
/// first.) A stop then ends the read in flight at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_crm_read_holds_back_neither_a_score_push_nor_its_mql_record() {
    let mut app = spawn_app(300, "", Vec::new()).await;
    app.wait_for("first pass", |p| p.live).await;
    app.sandbox.faults().add(FaultRule {
        system: System::Salesforce,
        method: None,
        path: None,
        kind: Some("query".into()),
        skip: 0,
        times: Some(1),
        action: FaultAction::Delay { millis: 60_000 },
    });
    let people_polls = app.polls(Source::People);
    app.http.wake().people.notify_one();
    // The people read's query has reached the CRM (it answers in a minute).
    let asked = tokio::time::timeout(FAILURE_BOUND, async {
        while app.sandbox.faults().fired() != [1] {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    asked
        .await
        .expect("the people poll's query reaches the CRM");

    let (p, cycle) = app
        .push_to_an_mql(start() + SignedDuration::from_mins(2))
        .await;
    assert_eq!(
        p.polls.get(&Source::People).copied().unwrap_or(0),
        people_polls,
        "the people poll is still waiting for its page: {p:?}"
    );
    let records = app.mql_records().await;
    assert!(
        records.iter().any(|(id, _)| *id == cycle.external_id),
        "{records:?}"
    );
    assert_eq!(app.stop().await.unwrap(), Stopped::Gracefully);
}

/// Issue 13, point 1: the shutdown token (what SIGTERM cancels) during the first pass, whose
/// first write the CRM holds for three seconds, with a grace of one second: the daemon
/// stops, dropping the pass after its last commit; the next `run --once` finishes the work
/// without writing any MQL record twice, and a further one writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_mid_pass_the_next_run_writes_nothing_twice() {
    let slow_write = FaultRule {
        system: System::Salesforce,
        method: None,
        path: None,
        kind: Some("composite_upsert".into()),
        skip: 0,
        times: Some(1),
        action: FaultAction::Delay { millis: 3_000 },
    };
    let mut app = spawn_app(300, "grace_secs = 1\n", vec![slow_write]).await;
    // The first pass starts at once: it is in flight now.
    assert_eq!(app.stop().await.unwrap(), Stopped::GraceOver);
    assert!(!app.now().live, "the pass in flight was dropped");
    let written_before: BTreeSet<String> = app
        .mql_records()
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();

    let run = app.run_once(start()).await;
    assert!(
        run.records
            .iter()
            .filter(|r| r.action == "create")
            .all(|r| !written_before.contains(r.external_id.as_deref().unwrap_or_default())),
        "a record written before the stop was created again: {:?}",
        run.records
    );
    assert!(
        run.written.get("mql_upsert").is_some_and(|n| *n > 0),
        "{run:?}"
    );
    assert_each_record_once(&app.mql_records().await, &app.cycles());
    let again = app.run_once(start()).await;
    assert!(again.written.is_empty(), "{:?}", again.written);
}

/// Issue 13, points 1 and 5: a shutdown while new writes wait for their window (here ten
/// seconds) sends them before the daemon exits, gracefully; the next `run --once` writes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_sends_the_writes_waiting_for_their_window() {
    let mut app = spawn_app(300, "write_window_ms = 10000\n", Vec::new()).await;
    app.wait_for("first pass", |p| p.live).await;
    let later = start() + SignedDuration::from_mins(1);
    let person = qualifies_with_a_push(&app, later);
    app.clock.set(later);
    app.sandbox
        .marketo()
        .apply_score_change(person.map_id, ScoreField::BehaviorScore, 500, None)
        .unwrap();
    let drains = app.now().drains;
    app.wait_for("the score change decided and waiting", |p| {
        p.pending_writes > 0 && p.decisions.get("open_cycle").is_some_and(|n| *n > 0)
    })
    .await;
    assert_eq!(app.now().drains, drains, "the window holds the writes");
    assert_eq!(app.stop().await.unwrap(), Stopped::Gracefully);
    let cycle = app
        .cycles()
        .into_iter()
        .find(|c| c.crm.id == *person.crm_id.as_ref().unwrap())
        .unwrap();
    assert!(
        app.mql_records()
            .await
            .iter()
            .any(|(id, _)| *id == cycle.external_id),
        "the waiting write was sent at shutdown"
    );
    let run = app.run_once(later).await;
    assert!(run.written.is_empty(), "{:?}", run.written);
}

/// Issue 13, point 4: the world's scheduled EMEA knob ("season push", 60 from a week on)
/// makes its MQLs when the clock reaches its start, dated then, and not a minute before; the
/// daemon's next wake-up is that instant at the latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_threshold_makes_its_mqls_when_the_clock_reaches_it_not_before() {
    let mut app = spawn_app(1_000, "", Vec::new()).await;
    app.wait_for("first pass", |p| p.live).await;
    let season = app
        .sandbox
        .world()
        .thresholds
        .iter()
        .find(|t| t.effective_from.is_some_and(|f| f > start()))
        .expect("the world's scheduled threshold")
        .clone();
    let takes_effect = season.effective_from.unwrap();
    let scheduled = |cycles: &[Cycle]| {
        cycles
            .iter()
            .filter(|c| c.threshold_id.as_deref() == Some(season.id.as_str()))
            .count()
    };

    // A minute before: the SLA and reassignment timers up to then fire; the knob does not.
    let before = takes_effect - SignedDuration::from_mins(1);
    app.clock.set(before);
    let p = app
        .wait_for("the clock's timers up to a minute before", |p| {
            p.next_deadline.is_some_and(|d| d > before) && p.pending_writes == 0
        })
        .await;
    let next = p.next_deadline.unwrap();
    assert!(next <= takes_effect, "the daemon would wake at {next}");
    assert_eq!(scheduled(&app.cycles()), 0, "MQLs before the knob starts");

    let ticks = p.ticks;
    app.clock.set(takes_effect);
    app.wait_for("the scheduled knob's MQLs written", |p| {
        p.ticks > ticks
            && p.next_deadline.is_some_and(|d| d > takes_effect)
            && p.pending_writes == 0
    })
    .await;
    let cycles = app.cycles();
    let made: Vec<&Cycle> = cycles
        .iter()
        .filter(|c| c.threshold_id.as_deref() == Some(season.id.as_str()))
        .collect();
    assert!(!made.is_empty(), "the scheduled knob made no MQL");
    for c in &made {
        assert_eq!(
            (c.mql_at, c.threshold),
            (takes_effect, season.score),
            "{c:?}"
        );
    }
    let records = app.mql_records().await;
    assert_each_record_once(&records, &cycles);
    for c in made {
        assert!(
            records
                .iter()
                .any(|(id, at)| *id == c.external_id && *at == Some(takes_effect)),
            "{} not written",
            c.external_id
        );
    }
    assert_eq!(app.polls(Source::Activities), 0, "only the clock woke it");
    app.stop().await.unwrap();
}

/// Issue 13, points 1 and 6, through the binary: `mqlsync run` against the sandbox answers
/// `/healthz` while it runs and exits 0 on SIGTERM.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqlsync_run_serves_healthz_and_exits_0_on_sigterm() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let sandbox = Sandbox::start(SandboxOptions {
        leads: 100,
        seed: 3,
        ..SandboxOptions::default()
    })
    .await
    .unwrap();
    let info = sandbox.connection_info();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mqlsync.toml"),
        format!(
            "{}\n[daemon]\nlisten = \"127.0.0.1:0\"\n",
            mqlsync::sandbox::cli::sandbox_config_toml(&info, "state/mqlsync.sqlite", None)
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqlsync"))
        .args(["--config", "mqlsync.toml", "run"])
        .current_dir(dir.path())
        .env_remove("MQLSYNC_CONFIG")
        .env("MQLSYNC_LOG", "warn")
        .env(
            "MQLSYNC_SALESFORCE_CLIENT_SECRET",
            info["salesforce"]["client_secret"].as_str().unwrap(),
        )
        .env(
            "MQLSYNC_MARKETO_CLIENT_SECRET",
            info["marketo"]["client_secret"].as_str().unwrap(),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(FAILURE_BOUND, stdout.read_line(&mut line))
        .await
        .expect("the daemon says where it listens")
        .unwrap();
    let base = regex::Regex::new(r"http://127\.0\.0\.1:\d+")
        .unwrap()
        .find(&line)
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .as_str()
        .to_string();
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok\n");
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("# TYPE mqlsync_outbox_depth gauge"),
        "{metrics}"
    );

    let pid = i32::try_from(child.id().unwrap()).unwrap();
    // SAFETY: sends a signal to the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(FAILURE_BOUND, child.wait())
        .await
        .expect("the daemon stops within the bound")
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(dir.path().join("state/mqlsync.sqlite").exists());
    sandbox.shutdown().await;
}
