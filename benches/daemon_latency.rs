//! Daemon latency benchmark (issue 13, "Performance"): how fast does a Marketo score push
//! become an MQL record in the CRM? The sandbox (15,000 people, the demo's world, limits off)
//! and the daemon run in this process, wired as the README's "The daemon" says: Marketo's
//! webhook on every score change, with the shared secret. For 30 s, 100 people a second whom a
//! score change of +500 makes MQLs (linked, below their threshold, not excluded: the engine
//! says so on a copy of the daemon's state) get that change; each fires the webhook, which
//! wakes the daemon's activity poller. Per event, the latency runs from the score change (the
//! sandbox's clock, when Marketo applied it) to the `CreatedDate` of the person's MQL record in
//! the CRM (the same clock, when the CRM accepted the upsert). Two runs: the default
//! `daemon.write_window_ms` (50) and 200 ms, to show how much of the latency is the window.
//!
//! The daemon's Marketo client keeps Marketo's pace (100 calls in 20 s, a call per 208 ms):
//! the sandbox's limits are off, the client's are not, as against a real instance.
//!
//! Prints the figures; asserts nothing about time. `cargo bench --bench daemon_latency`
//! (about two minutes: each run starts with the daemon's first pass over the 15,000 people).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use mqlsync::config;
use mqlsync::engine::model::{ScoreChange, ScorePart};
use mqlsync::engine::{Action, Context, Event, Visibility, reconcile};
use mqlsync::mapping;
use mqlsync::sandbox::server::{Sandbox, SandboxOptions};
use mqlsync::sandbox::world::ScoreField;
use mqlsync::store::Store;
use mqlsync::sync::connect;
use mqlsync::sync::once::{RunSettings, Source};
use mqlsync::workers::daemon::{self, Daemon, Progress, SystemClock};
use mqlsync::workers::http::{self, HttpState, Readiness, WebhookSettings};
use mqlsync::workers::metrics::{Endpoint, WebhookResult};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// People in the world: about one in four is linked, below their threshold and not
/// excluded, and 30 s at 100 pushes a second take 3,000 of them.
const PEOPLE: usize = 15_000;
const EVENTS_PER_SEC: u64 = 100;
const SECONDS: u64 = 30;
const SECRET: &str = "bench-shared-secret-0123456789abcdef";
/// Bounds a wait on the daemon; reaching it is a failure, not a pace.
const BOUND: Duration = Duration::from_secs(300);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!(
        "daemon latency: Marketo score push -> MQL record written in the CRM; {PEOPLE} people, {EVENTS_PER_SEC} pushes/s for {SECONDS} s, sandbox limits off"
    );
    for window_ms in [50, 200] {
        let run = run(window_ms).await;
        run.print(window_ms);
    }
}

/// One run's figures.
struct Figures {
    latencies_ms: Vec<f64>,
    /// Per MQL record: from the push to the arrival of the next activities call (the poll
    /// that read it), and from there to the record's `CreatedDate`.
    waits_ms: Vec<f64>,
    after_poll_ms: Vec<f64>,
    pushed: usize,
    offered_per_sec: f64,
    polls: u64,
    drains: u64,
    webhooks: u64,
    salesforce_calls: u64,
    marketo_calls: u64,
}

impl Figures {
    fn print(&self, window_ms: u64) {
        let at = |q: f64| quantile(&self.latencies_ms, q);
        println!(
            "write_window_ms = {window_ms}: {} pushes at {:.1}/s, {} webhooks accepted, {} MQL records written; {} activity polls, {} writer drains; calls: salesforce {}, marketo {}",
            self.pushed,
            self.offered_per_sec,
            self.webhooks,
            self.latencies_ms.len(),
            self.polls,
            self.drains,
            self.salesforce_calls,
            self.marketo_calls,
        );
        println!(
            "  latency ms: p50 {:.0}, p90 {:.0}, p99 {:.0}, max {:.0} (target p99 < 250)",
            at(0.5),
            at(0.9),
            at(0.99),
            at(1.0)
        );
        for (what, values) in [
            ("push -> activities call that read it", &self.waits_ms),
            ("that call -> MQL record written", &self.after_poll_ms),
        ] {
            println!(
                "  of which {what}: p50 {:.0}, p90 {:.0}, p99 {:.0}, max {:.0}",
                quantile(values, 0.5),
                quantile(values, 0.9),
                quantile(values, 0.99),
                quantile(values, 1.0)
            );
        }
        println!(
            "  | Marketo webhook score push -> MQL record written, 100 events/s, write_window_ms = {window_ms} | p50 {:.0} ms, p99 {:.0} ms | p99 < 250 ms: {} |",
            at(0.5),
            at(0.99),
            if at(0.99) < 250.0 { "met" } else { "not met" }
        );
    }
}

/// The `q` quantile of `values` (nearest rank).
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut l = values.to_vec();
    l.sort_by(f64::total_cmp);
    if l.is_empty() {
        f64::NAN
    } else {
        l[((l.len() - 1) as f64 * q).round() as usize]
    }
}

async fn run(window_ms: u64) -> Figures {
    let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut options = SandboxOptions {
        leads: PEOPLE,
        seed: 7,
        limits: false,
        ..SandboxOptions::default()
    };
    options.marketo.webhook = Some(mqlsync::demo::marketo_webhook(&base, SECRET));
    let sandbox = Sandbox::start(options).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let info = sandbox.connection_info();
    let file = dir.path().join("mqlsync.toml");
    std::fs::write(
        &file,
        format!(
            "{}\n[daemon]\nwrite_window_ms = {window_ms}\n",
            mqlsync::sandbox::cli::sandbox_config_toml(&info, "state.sqlite", None)
        ),
    )
    .unwrap();
    let env = mqlsync::sandbox::cli::secrets_env(&info, Some(SECRET));
    let config = config::load(Some(&file), &env).unwrap();
    let loaded = mapping::load(None).unwrap();
    let sf = connect::salesforce(&config).unwrap();
    let mk = connect::marketo(&config).unwrap();
    let schedule = config.daemon.schedule.clone();
    let (state, inbound) = HttpState::new(
        WebhookSettings::new(&config.daemon, &loaded.mapping),
        Readiness::new(daemon::max_poll_age(&schedule)),
        1024,
    );
    daemon::sign_in(&sf, &mk, &state).await.unwrap();
    let d = Daemon::new(
        sf.clone(),
        mk.clone(),
        loaded.mapping.clone(),
        loaded.policy.clone(),
        Store::open(&config.store).unwrap(),
        RunSettings::default(),
        schedule,
        Arc::new(SystemClock),
        state.clone(),
        inbound,
        Some(listener),
    );
    let mut progress = d.progress();
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(d.run(shutdown.clone()));
    let first = Instant::now();
    wait(&mut progress, |p| p.live).await;
    println!(
        "  (window {window_ms} ms: first pass over {PEOPLE} people in {:.1} s)",
        first.elapsed().as_secs_f64()
    );

    // Who a push of +500 makes an MQL: the engine decides each push on a copy of the
    // daemon's state (each touches only its own person, so one copy takes them all).
    let now = sandbox.clock().now();
    let mut probe = Store::open_existing(&config.store)
        .unwrap()
        .load_engine(&loaded.policy)
        .unwrap();
    let ctx = Context {
        policy: &loaded.policy,
        now,
        backfill: false,
        visibility: Visibility::WhenWritten,
    };
    let crossing: Vec<(String, i64)> = sandbox
        .world()
        .people
        .iter()
        .filter_map(|p| Some((p.crm_id.clone()?, p.map_id, p.lead_score)))
        .filter(|(_, map_id, score)| {
            let push = Event::Score(ScoreChange {
                map_lead_id: *map_id,
                change_id: "probe".into(),
                part: ScorePart::Total,
                new_value: (*score + 500) as f64,
                old_value: Some(*score as f64),
                campaign: None,
                at: now,
            });
            reconcile(&mut probe, &ctx, &push)
                .iter()
                .any(|d| matches!(d.action, Action::OpenCycle { .. }))
        })
        .map(|(crm_id, map_id, _)| (crm_id, map_id))
        .take((EVENTS_PER_SEC * SECONDS) as usize)
        .collect();
    drop(probe);

    let before = progress.borrow().clone();
    let (sf_before, mk_before) = (sf.sent().requests, mk.sent().requests);
    let mut pushed_at: BTreeMap<String, Timestamp> = BTreeMap::new();
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / EVENTS_PER_SEC));
    let pushing = Instant::now();
    for (crm_id, map_id) in &crossing {
        ticks.tick().await;
        pushed_at.insert(crm_id.clone(), sandbox.clock().now());
        sandbox
            .marketo()
            .apply_score_change(*map_id, ScoreField::BehaviorScore, 500, Some(1003))
            .unwrap();
    }
    let offered = crossing.len() as f64 / pushing.elapsed().as_secs_f64();

    // Done when an MQL record of each push is written (each push opens one cycle).
    let mqls = |p: &Progress| p.written.get("mql_upsert").copied().unwrap_or(0);
    let mqls_before = mqls(&before);
    wait(&mut progress, |p| mqls(p) >= mqls_before + crossing.len()).await;
    let metrics = state.metrics();
    // A call the daemon's queue had no room for is acknowledged as `dropped`: it still rang
    // the poller's bell.
    let accepted = metrics.webhook_count(Endpoint::Marketo, WebhookResult::Accepted)
        + metrics.webhook_count(Endpoint::Marketo, WebhookResult::Dropped);
    let after = progress.borrow().clone();

    let polls_at: Vec<Timestamp> = sandbox
        .log()
        .snapshot()
        .into_iter()
        .filter(|r| r.kind == "activities")
        .map(|r| r.at)
        .collect();
    let (mut latencies_ms, mut waits_ms, mut after_poll_ms) = (Vec::new(), Vec::new(), Vec::new());
    let crm = sandbox.salesforce().state();
    for record in crm["objects"]["MQL__c"].as_array().unwrap() {
        let person = record["Lead__c"]
            .as_str()
            .or_else(|| record["Contact__c"].as_str());
        let Some(at) = person.and_then(|p| pushed_at.get(p)) else {
            continue;
        };
        let created: Timestamp = record["CreatedDate"]
            .as_str()
            .unwrap()
            .replace("+0000", "Z")
            .parse()
            .unwrap();
        if created < *at {
            continue; // a go-live MQL record of someone pushed later (none expected)
        }
        let ms = |d: jiff::SignedDuration| d.as_secs_f64() * 1000.0;
        latencies_ms.push(ms(created.duration_since(*at)));
        // The poll that read it: the first activities call after the push.
        if let Some(poll) = polls_at.iter().find(|p| *p >= at) {
            waits_ms.push(ms(poll.duration_since(*at)));
            after_poll_ms.push(ms(created.duration_since(*poll)));
        }
    }
    shutdown.cancel();
    daemon.await.unwrap().unwrap();
    sandbox.shutdown().await;
    Figures {
        latencies_ms,
        waits_ms,
        after_poll_ms,
        pushed: crossing.len(),
        offered_per_sec: offered,
        polls: polls(&after) - polls(&before),
        drains: after.drains - before.drains,
        webhooks: accepted,
        salesforce_calls: sf.sent().requests - sf_before,
        marketo_calls: mk.sent().requests - mk_before,
    }
}

fn polls(p: &Progress) -> u64 {
    p.polls.get(&Source::Activities).copied().unwrap_or(0)
}

async fn wait(progress: &mut watch::Receiver<Progress>, done: impl Fn(&Progress) -> bool) {
    tokio::time::timeout(BOUND, progress.wait_for(|p| done(p)))
        .await
        .expect("the daemon gets there within the bound")
        .expect("the daemon runs");
}
