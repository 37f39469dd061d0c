//! Report and what-if benchmark (issue 14): `report` over a store of 1,000,000 people and
//! 2,000,000 cycles, and `whatif` over 10,000,000 stored score changes of one segment, through
//! the library entry points the commands use (`report::build`, `report::whatif::run`).
//!
//! The store is generated straight into SQLite (schema by `Store::open`, rows by prepared
//! inserts): two years of MQLs over four regions and the default segment, 200 reps, 300
//! campaigns, realistic status, SLA, rejection and opportunity mixes; the EMEA segment's
//! 250,000 people carry the score history. It is kept in `target/bench-report-<size>.db` and
//! reused while its size matches, since generating it takes longer than the measurements.
//!
//! For each it reports wall time (best of `MQLSYNC_BENCH_REPORT_RUNS`, default 3; each what-if
//! in a fresh process, as the command runs, with the allocator set as the command sets it),
//! time per cycle or per score change, and the peak Rust heap above the start, from one more
//! run (SQLite's page cache is its own: 64 MiB at most). The heap is mimalloc's, as in the
//! `mqlsync` binary, and is counted only in that last run: the count is a cache line every
//! allocation of every thread writes, which the binary does not pay.
//!
//! `cargo bench --bench report`; `MQLSYNC_BENCH_REPORT=SCALE` shrinks everything by SCALE
//! (default 1: the issue's sizes); `MQLSYNC_BENCH_REPORT_ONLY=whatif` (or `report`) measures one
//! of the two; `RUST_LOG=mqlsync=debug` prints each phase's time. It measures; it asserts only
//! that the report counted every cycle and the replay every change.

#[path = "common/heap.rs"]
mod heap;

#[global_allocator]
static ALLOC: heap::Counting<mimalloc::MiMalloc> = heap::Counting(mimalloc::MiMalloc);

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use mqlsync::mapping;
use mqlsync::report::whatif::{self, WhatIfQuery};
use mqlsync::report::{self, Grouping, Period, Query, Settings};
use mqlsync::store::Store;
use rusqlite::{Connection, params};

const REGIONS: [&str; 4] = ["NA", "EMEA", "APAC", "LATAM"];
const STATUSES: [&str; 4] = ["Open", "Working", "Rejected", "Converted"];
const REASONS: [&str; 5] = [
    "Bad Timing",
    "No Budget",
    "Wrong Person",
    "Competitor",
    "Not Interested Now",
];

struct Size {
    people: u64,
    cycles: u64,
    /// Score changes of the EMEA segment.
    changes: u64,
    opportunities: u64,
}

/// Set in the child processes that time one what-if each.
const CHILD: &str = "MQLSYNC_BENCH_REPORT_CHILD";

/// What `mqlsync whatif` sets before its run (`keep_freed_memory` in `src/main.rs`): mimalloc
/// never gives freed pages back to the system (option 15, `mi_option_purge_delay`, at -1).
fn keep_freed_memory() {
    // SAFETY: mi_option_set stores one option atomically.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
}

/// A small deterministic generator (xorshift), so that every run builds the same store.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const START: &str = "2025-01-01T00:00:00Z";
const SPAN_DAYS: i64 = 730;

fn ns(t: Timestamp) -> i64 {
    t.as_nanosecond() as i64
}

fn generate(path: &Path, size: &Size) {
    let _ = std::fs::remove_file(path);
    drop(Store::open(path).expect("store"));
    let mut conn = Connection::open(path).unwrap();
    conn.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
        .unwrap();
    let start: Timestamp = START.parse().unwrap();
    let span = SignedDuration::from_hours(24 * SPAN_DAYS).as_nanos() as i64;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let tx = conn.transaction().unwrap();
    {
        // The knob: a default record and one per region, each turned a few times.
        let mut version = tx
            .prepare("INSERT INTO threshold_versions (threshold_id, modified_at, score, segment, active, deleted, seen_at) VALUES (?1, ?2, ?3, ?4, 1, 0, ?2)")
            .unwrap();
        for (i, region) in [None, Some("NA"), Some("EMEA"), Some("APAC"), Some("LATAM")]
            .iter()
            .enumerate()
        {
            let segment = region.map_or("{}".to_string(), |r| format!("{{\"region\":\"{r}\"}}"));
            for (k, score) in [100.0, 90.0, 80.0].iter().enumerate() {
                let at = start + SignedDuration::from_hours(24 * (240 * k as i64 + i as i64));
                version
                    .execute(params![format!("a0T{i}"), at.to_string(), score, segment])
                    .unwrap();
            }
        }
        let mut person = tx
            .prepare("INSERT INTO persons (crm_id, kind, map_lead_id, facts, stamps) VALUES (?1, 'Lead', ?2, ?3, '{}')")
            .unwrap();
        for i in 0..size.people {
            let region = REGIONS[(i % 4) as usize];
            let id = format!("00Q{i:012}");
            let facts = format!(
                r#"{{"crm":{{"kind":"Lead","id":"{id}"}},"status":"Open","owner_id":"005R{:03}","title":"Manager","account_id":null,"converted":false,"attributes":{{"region":"{region}","business_line":"BL{}"}},"modified_at":"{START}"}}"#,
                i % 200,
                i % 3
            );
            person.execute(params![id, i as i64, facts]).unwrap();
        }
        let mut cycle = tx
            .prepare(
                "INSERT INTO cycle_facts (external_id, crm_id, kind, number, status, owner_id, owner_at_mql, team,
                    segment, attributes, account_id, campaign_id, campaign_name, qualified_by, score, threshold,
                    threshold_id, mql_at_ns, seen_at_ns, sal_at_ns, closed_at_ns, sla_due_ns, overdue,
                    reassignments, rejection_reason, outcome, backfilled)
                 VALUES (?1, ?2, 'Lead', ?3, ?4, ?5, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'score', ?12, ?13, 'a0T1',
                    ?14, ?14, ?15, ?16, ?17, ?18, ?19, ?20, NULL, 0)",
            )
            .unwrap();
        let hour = 3_600_000_000_000i64;
        for c in 0..size.cycles {
            let p = c % size.people;
            let number = c / size.people + 1;
            let region = REGIONS[(p % 4) as usize];
            let status = STATUSES[rng.below(4) as usize];
            let mql = ns(start) + (rng.below(span as u64)) as i64;
            let sal = matches!(status, "Working" | "Converted")
                .then(|| mql + (1 + rng.below(48) as i64) * hour);
            let closed = match status {
                "Rejected" => Some(mql + (1 + rng.below(96) as i64) * hour),
                "Converted" => sal.map(|s| s + (24 + rng.below(24 * 60) as i64) * hour),
                _ => None,
            };
            let account = p.is_multiple_of(2).then(|| format!("001A{:09}", p / 5));
            let campaign = rng.below(300);
            cycle
                .execute(params![
                    format!("00Q{p:012}-{number}"),
                    format!("00Q{p:012}"),
                    number as i64,
                    status,
                    format!("005R{:03}", rng.below(200)),
                    format!("SDR {region}"),
                    if p % 5 == 4 {
                        "default".to_string()
                    } else {
                        format!("region={region}")
                    },
                    format!(r#"{{"region":"{region}","business_line":"BL{}"}}"#, p % 3),
                    account,
                    format!("C{campaign}"),
                    format!("Campaign {campaign}"),
                    60.0 + rng.below(140) as f64,
                    [80.0, 90.0, 100.0][rng.below(3) as usize],
                    mql,
                    sal,
                    closed,
                    mql + 4 * hour,
                    rng.below(10) == 0,
                    i64::from(rng.below(20) == 0),
                    (status == "Rejected").then(|| REASONS[rng.below(5) as usize]),
                ])
                .unwrap();
        }
        let mut opp = tx
            .prepare("INSERT INTO opportunities (id, account_id, body) VALUES (?1, ?2, ?3)")
            .unwrap();
        for o in 0..size.opportunities {
            let account = format!("001A{:09}", rng.below(size.people / 10));
            let created = start + SignedDuration::from_nanos((rng.below(span as u64)) as i64);
            let body = format!(
                r#"{{"id":"006{o:012}","account_id":"{account}","is_closed":false,"is_won":{},"close_date":null,"created_at":"{created}","modified_at":"{created}"}}"#,
                rng.below(3) == 0
            );
            opp.execute(params![format!("006{o:012}"), account, body])
                .unwrap();
        }
        // The EMEA people's score history, in time order (arrival order is time order).
        let emea: Vec<u64> = (0..size.people).filter(|p| p % 4 == 1).collect();
        let mut change = tx
            .prepare("INSERT INTO score_history (change_id, map_lead_id, part, new_value, old_value, at_ns) VALUES (?1, ?2, 'total', ?3, NULL, ?4)")
            .unwrap();
        let step = span / size.changes.max(1) as i64;
        let mut scores = vec![0.0f64; emea.len()];
        for k in 0..size.changes {
            let who = rng.below(emea.len() as u64) as usize;
            // Mostly up, sometimes down, between 0 and 200.
            let delta = rng.below(25) as f64 - 6.0;
            scores[who] = (scores[who] + delta).clamp(0.0, 200.0);
            change
                .execute(params![
                    format!("c{k}"),
                    emea[who] as i64,
                    scores[who],
                    ns(start) + step * k as i64
                ])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// The best wall time of `runs` runs, with the heap uncounted (see `heap::COUNTING`), then
/// one more, counted, for the peak heap above the start; returns that run's output.
fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, usize, T) {
    let mut best = Duration::MAX;
    heap::COUNTING.store(false, std::sync::atomic::Ordering::Relaxed);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let out = f();
        best = best.min(t.elapsed());
        drop(out);
    }
    heap::COUNTING.store(true, std::sync::atomic::Ordering::Relaxed);
    let start = heap::baseline();
    let out = f();
    (best, heap::peak_above(start), out)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `RUST_LOG=mqlsync=debug` prints the phases' times (the reads, the replays, the passes).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let scale: u64 = std::env::var("MQLSYNC_BENCH_REPORT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    let runs: usize = std::env::var("MQLSYNC_BENCH_REPORT_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let size = Size {
        people: 1_000_000 / scale,
        cycles: 2_000_000 / scale,
        changes: 10_000_000 / scale,
        opportunities: 100_000 / scale,
    };
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(format!(
            "bench-report-{}x{}x{}.db",
            size.people, size.cycles, size.changes
        ));
    if !path.exists() {
        let t = Instant::now();
        generate(&path, &size);
        println!(
            "generated {} ({} people, {} cycles, {} score changes) in {:.1} s",
            path.display(),
            size.people,
            size.cycles,
            size.changes,
            t.elapsed().as_secs_f64()
        );
    }
    let query = WhatIfQuery {
        segment: [("region".to_string(), "EMEA".to_string())].into(),
        threshold: 70.0,
        from: None,
        to: None,
    };
    let loaded = mapping::load(None).unwrap();
    let settings = Settings::from_mapping(&loaded);
    if std::env::var_os(CHILD).is_some() {
        // One what-if in this fresh process, as `mqlsync whatif` runs: its time on stdout.
        heap::COUNTING.store(false, std::sync::atomic::Ordering::Relaxed);
        keep_freed_memory();
        let t = Instant::now();
        let result = whatif::run(&path, &loaded.policy, &settings, &query).unwrap();
        assert_eq!(result.score_changes, size.changes);
        println!("{}", t.elapsed().as_secs_f64());
        return;
    }
    // The score history's blocks: a generated history is written as rows, and a store of an
    // older schema gets its blocks from the migration, so open it as the writer would.
    let t = Instant::now();
    let packed = Store::open(&path)
        .and_then(|mut store| store.pack_score_history())
        .unwrap();
    println!(
        "opened as the writer (migrations, blocks of the score history) in {:.1} s; {packed} changes packed now",
        t.elapsed().as_secs_f64()
    );
    let now: Timestamp = "2027-01-01T00:00:00Z".parse().unwrap();

    // `MQLSYNC_BENCH_REPORT_ONLY=whatif` (or `report`) measures one of the two.
    let only = std::env::var("MQLSYNC_BENCH_REPORT_ONLY").unwrap_or_default();
    let reports: &[(Period, Grouping)] = if only == "whatif" {
        &[]
    } else {
        &[
            (Period::Month, Grouping::Segment),
            (Period::Week, Grouping::Owner),
        ]
    };
    for (by, group) in reports.iter().cloned() {
        let query = Query {
            from: None,
            to: None,
            by,
            group: group.clone(),
            now,
        };
        let (time, peak, built) = best_of(runs, || {
            let store = Store::open_reader(&path).unwrap();
            report::build(&store, &settings, &query).unwrap()
        });
        assert_eq!(built.totals.mqls as u64, size.cycles);
        println!(
            "report --by {by:?} --group {}: {:.2} s for {} cycles ({:.2} µs a cycle), peak heap {:.1} MiB, {} volume rows",
            group.name(),
            time.as_secs_f64(),
            size.cycles,
            time.as_secs_f64() * 1e6 / size.cycles as f64,
            peak as f64 / 1_048_576.0,
            built.volume.len()
        );
    }

    if only == "report" {
        return;
    }
    // Each timed what-if in a fresh process, as a user runs it: in one process, a second run
    // finds the first one's pages mapped and cleared, which the command never does.
    let times: Vec<f64> = (0..runs)
        .map(|_| {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .arg("--bench")
                .env(CHILD, "whatif")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        })
        .collect();
    let time = times.iter().copied().fold(f64::INFINITY, f64::min);
    // The heap counted in this process, whose first what-if this is.
    keep_freed_memory();
    heap::COUNTING.store(true, std::sync::atomic::Ordering::Relaxed);
    let start = heap::baseline();
    let result = whatif::run(&path, &loaded.policy, &settings, &query).unwrap();
    let peak = heap::peak_above(start);
    assert_eq!(result.score_changes, size.changes);
    println!(
        "whatif --segment region=EMEA --threshold 70: {time:.2} s (best of {}: {}) for {} score changes of {} people ({:.3} µs a change, two replays on two threads), peak heap {:.1} MiB ({:.0} B a person); MQLs then {} (replayed {}), at 70: {}",
        times.len(),
        times
            .iter()
            .map(|t| format!("{t:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        result.score_changes,
        result.people,
        time * 1e6 / result.score_changes as f64,
        peak as f64 / 1_048_576.0,
        peak as f64 / result.people.max(1) as f64,
        result.total.actual,
        result.total.replayed_then,
        result.total.at_threshold
    );
}
