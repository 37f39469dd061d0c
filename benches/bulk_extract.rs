//! Bulk-extract benchmark with the sandbox's real Marketo limits on: N Change Score activities
//! (420 days of history, 14 windows of 31 days) exported by the runner, downloaded, checked
//! and parsed one record at a time. Reports, for each N:
//! - Marketo calls by kind against the minimum (a create, an enqueue, a status poll that finds
//!   the job Completed and a file download per window, plus the one list a run makes);
//! - Marketo time spent waiting on jobs against the limit-bound minimum: a job's status moves
//!   at most once a minute and 2 jobs process at once, so W windows take at least a minute
//!   queued plus ceil(W / 2) minutes processing;
//! - wall time (the client paces itself to 100 calls / 20 s, one call per 208 ms) and rows/s;
//! - the runner's peak heap, which must not grow with N (files go to disk and are read back
//!   one record at a time).
//!
//! Then the same for the current scores of every lead (a lead export of `id`, `leadScore`,
//! `sfdcLeadId`, `sfdcContactId`), as a first run reads them on a large instance.
//!
//! The sandbox runs in a child process (this binary, started again with
//! `MQLSYNC_BENCH_SANDBOX_ACTIVITIES`), so the heap measured is the runner's alone; its clock
//! is frozen and the runner's pauses move it through the admin API, so Marketo's minutes pass
//! at once. `cargo bench --bench bulk_extract`; `MQLSYNC_BENCH_ACTIVITIES=100000,1000000`
//! picks the sizes. It measures; it asserts nothing but that every activity arrived once.

use std::io::{BufRead, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use mqlsync::connectors::marketo::export_file::WindowFile;
use mqlsync::connectors::marketo::extract::{
    BulkExtract, ExportPlan, ExtractSettings, ExtractStats, Pause,
};
use mqlsync::connectors::marketo::{MarketoClient, MarketoSettings};
use mqlsync::sandbox::clock::SandboxClock;
use mqlsync::sandbox::marketo::MarketoConfig;
use mqlsync::sandbox::server::{Sandbox, SandboxOptions};
use mqlsync::sandbox::world::World;
use serde_json::{Value, json};

#[path = "common/heap.rs"]
mod heap;

use heap::Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting(std::alloc::System);

const CHILD: &str = "MQLSYNC_BENCH_SANDBOX_ACTIVITIES";
const HISTORY_DAYS: i64 = 420;
const SEED: u64 = 7;

fn now() -> Timestamp {
    "2026-11-02T12:00:00Z".parse().unwrap()
}

fn main() {
    if let Ok(n) = std::env::var(CHILD) {
        return serve_sandbox(n.parse().expect("a number of activities"));
    }
    let sizes: Vec<usize> = std::env::var("MQLSYNC_BENCH_ACTIVITIES")
        .unwrap_or_else(|_| "100000,1000000".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("MQLSYNC_BENCH_ACTIVITIES: numbers, comma-separated")
        })
        .collect();
    for n in sizes {
        measure(n);
    }
}

/// The child: a sandbox with about `activities` Change Score activities, Marketo's limits and
/// bulk timing on, a frozen clock; prints its address, serves until stdin closes.
fn serve_sandbox(activities: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // About 11 score activities a person; one correction gets close enough.
        let estimate = (activities / 11).max(10);
        let got = World::generate(SEED, estimate, now()).score_changes.len();
        let people = (estimate * activities).div_ceil(got.max(1));
        let mut marketo = MarketoConfig::sandbox_default();
        marketo.export_status_interval_secs = Some(60);
        let sandbox = Sandbox::start(SandboxOptions {
            leads: people,
            seed: SEED,
            clock: SandboxClock::frozen(now()),
            limits: true,
            now: Some(now()),
            marketo,
            ..SandboxOptions::default()
        })
        .await
        .expect("sandbox");
        let info = sandbox.connection_info();
        let line = json!({
            "base_url": info["marketo"]["base_url"], "client_id": info["marketo"]["client_id"],
            "client_secret": info["marketo"]["client_secret"], "people": people,
            "activities": sandbox.world().score_changes.len(),
        });
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

/// Moves the child's sandbox clock through its admin API.
struct AdminPause {
    http: reqwest::Client,
    url: String,
}

impl Pause for AdminPause {
    async fn pause(&self, duration: Duration) {
        self.http
            .post(&self.url)
            .json(&json!({"seconds": duration.as_secs()}))
            .send()
            .await
            .expect("advance the sandbox clock")
            .error_for_status()
            .expect("advance the sandbox clock");
    }
}

fn measure(n: usize) {
    let exe = std::env::current_exe().expect("this binary");
    let mut child = Command::new(exe)
        .env(CHILD, n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the sandbox process");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the sandbox's first line");
    let sandbox: Value = serde_json::from_str(&line).expect("the sandbox's JSON line");
    let base = sandbox["base_url"].as_str().expect("base_url").to_string();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let settings: MarketoSettings = serde_json::from_value(json!({
            "base_url": base, "client_id": sandbox["client_id"],
        }))
        .expect("settings");
        let secret = sandbox["client_secret"]
            .as_str()
            .expect("secret")
            .to_string();
        let client = MarketoClient::new(settings, secret.into()).expect("client");
        let start = now() - SignedDuration::from_hours(24 * HISTORY_DAYS);

        let plan = ExportPlan::activities(&[22], &[], start, now()).expect("plan");
        let report = export(&client, &base, plan, |file| {
            let mut sum = 0i64;
            let mut rows = 0u64;
            for activity in file.activities().expect("the file") {
                sum = sum.wrapping_add(activity.expect("an activity").lead_id);
                rows += 1;
            }
            (rows, sum)
        })
        .await;
        assert_eq!(
            Some(report.rows),
            sandbox["activities"].as_u64(),
            "every activity once"
        );
        println!(
            "bulk_extract {n} requested: {} Change Score activities over {} people",
            report.rows, sandbox["people"]
        );
        report.print();

        // The current scores of every lead, as a first run on a large instance reads them.
        let fields = ["id", "leadScore", "sfdcLeadId", "sfdcContactId"];
        let plan = ExportPlan::leads(&fields, start, now()).expect("plan");
        let report = export(&client, &base, plan, |file| {
            let mut sum = 0i64;
            let mut rows = 0u64;
            for lead in file.leads().expect("the file") {
                let score = &lead.expect("a lead")["leadScore"];
                sum = sum.wrapping_add(score.as_str().and_then(|s| s.parse().ok()).unwrap_or(0));
                rows += 1;
            }
            (rows, sum)
        })
        .await;
        assert_eq!(
            Some(report.rows),
            sandbox["people"].as_u64(),
            "every lead once"
        );
        println!("  then the current scores of {} leads:", report.rows);
        report.print();
    });
    drop(child.stdin.take());
    let _ = child.wait();
}

/// What one export cost.
struct Report {
    rows: u64,
    checksum: i64,
    windows: u64,
    calls: Vec<(&'static str, u64)>,
    stats: ExtractStats,
    wall: Duration,
    peak: usize,
}

impl Report {
    fn print(&self) {
        let windows = self.windows;
        let used: u64 = self.calls.iter().map(|(_, c)| c).sum();
        let minimum = 4 * windows + 1;
        let by_kind: Vec<String> = self.calls.iter().map(|(k, c)| format!("{k} {c}")).collect();
        println!(
            "  calls: {used} ({}) vs minimum {minimum} (4 a window + 1 list): ratio {:.3}",
            by_kind.join(", "),
            used as f64 / minimum as f64
        );
        let waited = self.stats.waited.as_secs();
        let least = 60 * (1 + windows.div_ceil(2));
        println!(
            "  Marketo time waiting on jobs: {} min vs the limit-bound minimum {} min (1 queued + ceil({windows}/2) processing, a minute each): ratio {:.3}",
            waited / 60,
            least / 60,
            waited as f64 / least as f64
        );
        println!(
            "  wall: {:.1} s ({:.0} rows/s; calls paced to 100 / 20 s); runner peak heap {:.2} MiB for {:.1} MB of files in {windows} windows (checksum {})",
            self.wall.as_secs_f64(),
            self.rows as f64 / self.wall.as_secs_f64(),
            self.peak as f64 / (1024.0 * 1024.0),
            self.stats.bytes as f64 / 1e6,
            self.checksum
        );
    }
}

/// Runs `plan` against the child sandbox, reading each file with `read` (rows, checksum).
async fn export(
    client: &MarketoClient,
    base: &str,
    plan: ExportPlan,
    read: impl Fn(&WindowFile) -> (u64, i64),
) -> Report {
    let http = reqwest::Client::new();
    let counts = async |http: &reqwest::Client| -> Value {
        let log: Value = http
            .get(format!("{base}/__sandbox/log?system=marketo"))
            .send()
            .await
            .expect("the request log")
            .json()
            .await
            .expect("the request log");
        log["counts"]["marketo"].clone()
    };
    let before = counts(&http).await;
    let kind = plan.kind().segment();
    let windows = plan.windows().len() as u64;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut run = BulkExtract::new(client.clone(), plan, ExtractSettings::default(), dir.path())
        .expect("runner")
        .with_pause(AdminPause {
            http: http.clone(),
            url: format!("{base}/__sandbox/clock/advance"),
        });
    let baseline = heap::baseline();
    let started = Instant::now();
    let (mut rows, mut checksum) = (0u64, 0i64);
    while let Some(file) = run.next_window().await.expect("a window") {
        let (n, sum) = read(&file);
        rows += n;
        checksum = checksum.wrapping_add(sum);
    }
    let wall = started.elapsed();
    let peak = heap::peak_above(baseline);
    let after = counts(&http).await;
    let calls = ["create", "enqueue", "status", "file", "list", "cancel"]
        .into_iter()
        .map(|k| {
            let key = format!("bulk_{kind}_{k}");
            let n = |v: &Value| v[&key].as_u64().unwrap_or(0);
            (k, n(&after) - n(&before))
        })
        .collect();
    Report {
        rows,
        checksum,
        windows,
        calls,
        stats: run.stats().clone(),
        wall,
        peak,
    }
}
