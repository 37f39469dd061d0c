//! Backfill benchmark (issue 12): `mqlsync backfill` over 420 days of history with the
//! sandbox's limits off and the clients unpaced, through the library entry point the command
//! uses (`run_once` with a backfill window). For each size it reports:
//! - wall time of the whole backfill (CRM people read, threshold and opportunity history, MAP
//!   lead links, the Change Score history by bulk activity extract in 14 windows, the replay
//!   through the engine into the store, the MQL records written through Bulk API 2.0 ingest),
//!   and score changes replayed per second;
//! - the process's peak heap above what it held before, per MAP lead: it must follow the
//!   number of leads, not the number of changes (the history streams from the export files;
//!   the engine holds per-lead state);
//! - calls by system against the run's own minimum.
//!
//! Then a first run over the same org reads every current score (by bulk lead export, chosen
//! by count: `sync.leads_since` is the history's start) and reports those calls against the
//! fewest (a create, an enqueue, a status and a download a window, one list) and what by filter
//! would have cost.
//!
//! The sandbox runs in a child process (this binary started again with
//! `MQLSYNC_BENCH_BACKFILL_CHILD`), so the heap measured is mqlsync's alone.
//! `cargo bench --bench backfill`; `MQLSYNC_BENCH_BACKFILL=100000x10,100000x30,1000000x10`
//! picks the sizes as people x most campaign touches a person (about 1.1 score changes per
//! touch allowed: 10 gives about 11 changes a person). It measures; it asserts only that the
//! backfill completed and rebuilt cycles.

use std::io::{BufRead, Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use jiff::{SignedDuration, Timestamp};
use mqlsync::connectors::marketo::extract::PauseBy;
use mqlsync::connectors::marketo::{MarketoClient, MarketoSettings};
use mqlsync::connectors::salesforce::{SalesforceClient, SalesforceSecrets, SalesforceSettings};
use mqlsync::mapping;
use mqlsync::sandbox::clock::SandboxClock;
use mqlsync::sandbox::marketo::MarketoConfig;
use mqlsync::sandbox::server::{Sandbox, SandboxOptions};
use mqlsync::store::Store;
use mqlsync::sync::once::{BackfillWindow, BulkReads, RunSettings, RunSummary, run_once};
use serde_json::{Value, json};

#[path = "common/heap.rs"]
mod heap;

use heap::{Counting, LIVE};

/// mimalloc, as the `mqlsync` binary runs, counted.
#[global_allocator]
static ALLOCATOR: Counting<mimalloc::MiMalloc> = Counting(mimalloc::MiMalloc);

const CHILD: &str = "MQLSYNC_BENCH_BACKFILL_CHILD";
const HISTORY_DAYS: i64 = 420;
const SEED: u64 = 7;

fn now() -> Timestamp {
    "2026-11-02T12:00:00Z".parse().unwrap()
}

fn main() {
    if let Ok(size) = std::env::var(CHILD) {
        let (people, touches) = parse_size(&size);
        return serve_sandbox(people, touches);
    }
    if std::env::var_os("MQLSYNC_BENCH_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter("mqlsync=info")
            .with_writer(std::io::stderr)
            .init();
        // The live heap every 2 s beside the log's phases: where the peak is.
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(2));
                let live = LIVE.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0);
                eprintln!("{} bench: live heap {live:.0} MiB", jiff::Timestamp::now());
            }
        });
    }
    let sizes: Vec<(usize, u32)> = std::env::var("MQLSYNC_BENCH_BACKFILL")
        .unwrap_or_else(|_| "100000x10,100000x30".into())
        .split(',')
        .map(parse_size)
        .collect();
    for (people, touches) in sizes {
        measure(people, touches);
    }
}

fn parse_size(text: &str) -> (usize, u32) {
    let (people, touches) = text
        .trim()
        .split_once('x')
        .expect("MQLSYNC_BENCH_BACKFILL: sizes as PEOPLExTOUCHES, comma-separated");
    (
        people.parse().expect("a number of people"),
        touches.parse().expect("a number of touches"),
    )
}

/// The child: a sandbox of `people` with their score history, limits off, a frozen clock;
/// prints how to reach it, serves until stdin closes.
fn serve_sandbox(people: usize, touches: u32) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // Limits off, the daily export allowance (500 MB) too: 10,000,000 changes are about
        // 2 GB of files.
        let mut marketo = MarketoConfig::sandbox_default();
        marketo.export_daily_bytes = u64::MAX / 2;
        let sandbox = Sandbox::start(SandboxOptions {
            marketo,
            leads: people,
            seed: SEED,
            clock: SandboxClock::frozen(now()),
            limits: false,
            now: Some(now()),
            score_touches: touches,
            ..SandboxOptions::default()
        })
        .await
        .expect("sandbox");
        let mut line = sandbox.connection_info();
        line["changes"] = json!(sandbox.world().score_changes.len());
        line["salesforce"]["base_url"] = json!(sandbox.salesforce_url());
        line["marketo"]["base_url"] = json!(sandbox.marketo_url());
        println!("{line}");
        std::io::stdout().flush().expect("stdout");
        tokio::task::spawn_blocking(|| {
            let mut rest = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut rest);
        })
        .await
        .expect("stdin");
        sandbox.shutdown().await;
    });
}

fn clients(sandbox: &Value) -> (SalesforceClient, MarketoClient) {
    let sf_url = sandbox["salesforce"]["base_url"].as_str().expect("url");
    let sf: SalesforceSettings = serde_json::from_value(json!({
        "base_url": sf_url,
        "token_url": format!("{sf_url}/services/oauth2/token"),
        "auth": {"kind": "client_credentials", "client_id": sandbox["salesforce"]["client_id"]},
    }))
    .expect("settings");
    let secret = |system: &str| {
        sandbox[system]["client_secret"]
            .as_str()
            .expect("secret")
            .to_string()
    };
    let sf = SalesforceClient::new(
        sf,
        SalesforceSecrets {
            client_secret: Some(secret("salesforce").into()),
            refresh_token: None,
        },
    )
    .expect("client");
    // Unpaced: the limits are off, and the client's pacing is what this bench leaves out.
    let mk: MarketoSettings = serde_json::from_value(json!({
        "base_url": sandbox["marketo"]["base_url"], "client_id": sandbox["marketo"]["client_id"],
        "calls_per_20s": 100_000, "daily_quota": 100_000_000u64,
    }))
    .expect("settings");
    let mk = MarketoClient::new(mk, secret("marketo").into()).expect("client");
    (sf, mk)
}

/// The sandbox's request counts of one system, by kind.
async fn counts(sandbox: &Value, system: &str) -> Value {
    let base = sandbox[system]["base_url"].as_str().expect("url");
    let log: Value = reqwest::get(format!("{base}/__sandbox/log?system={system}"))
        .await
        .expect("the request log")
        .json()
        .await
        .expect("the request log");
    log["counts"][system].clone()
}

fn measure(people: usize, touches: u32) {
    let exe = std::env::current_exe().expect("this binary");
    let started = Instant::now();
    let mut child = Command::new(exe)
        .env(CHILD, format!("{people}x{touches}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the sandbox process");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the sandbox's first line");
    let sandbox: Value = serde_json::from_str(&line).expect("the sandbox's JSON line");
    let changes = sandbox["changes"].as_u64().unwrap_or(0);
    println!(
        "backfill: {people} people, up to {touches} touches: {changes} score changes in the MAP ({:.0} s to generate)",
        started.elapsed().as_secs_f64()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (sf, mk) = clients(&sandbox);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut store = Store::open(&dir.path().join("bench.sqlite")).expect("store");
        let loaded = mapping::load(None).expect("the default mapping");
        let since = now() - SignedDuration::from_hours(24 * HISTORY_DAYS);
        // The sandbox moves an export job a state per status poll: nothing to wait for.
        let bulk_reads = BulkReads {
            pause: PauseBy::Hook(Arc::new(|_| {})),
            leads_since: Some(since),
            ..BulkReads::default()
        };
        let settings = RunSettings {
            backfill: Some(BackfillWindow {
                since,
                until: now(),
                bulk_above: 2_000,
            }),
            bulk_reads: bulk_reads.clone(),
            ..RunSettings::default()
        };
        let sent = || (sf.sent(), mk.sent());
        let baseline = heap::baseline();
        let started = Instant::now();
        let run = run_once(
            &sf,
            &mk,
            &loaded.mapping,
            &loaded.policy,
            &mut store,
            now(),
            &settings,
            sent,
        )
        .await
        .expect("the backfill");
        let wall = started.elapsed().as_secs_f64();
        let peak = heap::peak_above(baseline);
        let cycles = run.backfill.as_ref().map_or(0, |b| b.cycles);
        assert!(cycles > 0, "the backfill rebuilt cycles");
        let replayed = run.read.get("activities").copied().unwrap_or(0);
        println!(
            "  backfill: {wall:.1} s wall, {replayed} Change Score activities read ({:.0}/s over the whole run), {} events, {cycles} cycles rebuilt",
            replayed as f64 / wall,
            run.events
        );
        println!(
            "  peak heap above the start: {:.1} MiB = {:.0} bytes per MAP lead ({:.1} bytes per score change)",
            peak as f64 / (1024.0 * 1024.0),
            peak as f64 / people as f64,
            peak as f64 / changes.max(1) as f64
        );
        print_calls(&run);

        // A first run on the same store: every current score, by bulk lead export.
        let before = counts(&sandbox, "marketo").await;
        let settings = RunSettings {
            bulk_reads,
            ..RunSettings::default()
        };
        let started = Instant::now();
        let first = run_once(
            &sf,
            &mk,
            &loaded.mapping,
            &loaded.policy,
            &mut store,
            now(),
            &settings,
            sent,
        )
        .await
        .expect("the first run");
        let wall = started.elapsed().as_secs_f64();
        let after = counts(&sandbox, "marketo").await;
        let used: u64 = ["create", "enqueue", "status", "file", "list", "cancel"]
            .iter()
            .map(|k| {
                let kind = format!("bulk_leads_{k}");
                after[&kind].as_u64().unwrap_or(0) - before[&kind].as_u64().unwrap_or(0)
            })
            .sum();
        let choice = first.current_scores_read.clone().expect("a current-score read");
        let windows = mqlsync::connectors::marketo::extract::windows(since, now()).len() as u64;
        let minimum = 4 * windows + 1;
        println!(
            "  first run after it: {wall:.1} s; {} current scores by {} ({}): {used} bulk calls / minimum {minimum} = {:.2} (by filter: {} calls)",
            first.read.get("current scores").copied().unwrap_or(0),
            if choice.bulk_since.is_some() {
                "bulk lead export"
            } else {
                "filter"
            },
            choice.why,
            used as f64 / minimum as f64,
            choice.by_filter_calls
        );
    });
    drop(child.stdin.take());
    let _ = child.wait();
}

fn print_calls(run: &RunSummary) {
    for system in ["salesforce", "marketo"] {
        let used = run.calls.get(system).copied().unwrap_or(0);
        let minimum = run.minimum_calls.get(system).copied().unwrap_or(0);
        println!(
            "  {system} calls: {used} / minimum {minimum} = {:.3}",
            used as f64 / minimum.max(1) as f64
        );
    }
}
