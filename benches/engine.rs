//! Engine benchmark: 1,000,000 score events over 100,000 leads and 50 segment thresholds,
//! through the engine alone and through engine + store (one transaction per batch).
//!
//! `cargo bench --bench engine` runs each phase in a child process of its own, so that the
//! peak resident memory (VmHWM) it reports belongs to that phase alone. Run one phase with
//! `cargo bench --bench engine -- engine`, `-- qualify` or `-- store`, and alternate the first
//! two with `-- rounds` (`MQLSYNC_BENCH_ROUNDS`, default 25) for the medians and their ratios;
//! `-- against OTHER [PHASE]` runs one phase of this build and of another (a copy of the
//! bench binary built from other code) alternately, for the paired ratio of their times;
//! `MQLSYNC_BENCH_BATCH=10000` sets the events per store transaction (default 100,000).
//! `MQLSYNC_BENCH_NO_THP=1` turns transparent huge pages off, as the daemon does
//! (`fit_in_a_sidecar` in `src/main.rs`); `run --once` keeps them, and so does the bench by
//! default. Each phase prints on stderr what its timed loop cost besides its wall time: the
//! resident memory it grew, its user and system CPU, its page faults (and how many were huge).
//!
//! `qualify` (issue 15): the same people as contacts of 20,000 accounts (five each), account
//! scoring on (30 days) and the example policy's Demo Request hand-raiser rule; a tenth of the
//! million events are form fills, half of them of the Demo Request form. Its figures stand
//! against the score-only `engine` phase.

use std::collections::BTreeMap;
use std::time::Instant;

use jiff::{SignedDuration, Timestamp};
use mqlsync::engine::model::{
    AccountFacts, Attributes, Campaign, CrmKind, CrmRef, Event, MapActivity, MapLink, PersonFacts,
    ScoreChange, ScorePart, Threshold,
};
use mqlsync::engine::policy::ScoreSource;
use mqlsync::engine::{Context, EngineState, Policy, Visibility, reconcile};
use mqlsync::store::{Batch, Store};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The binary's allocator (see `src/main.rs`), so that these figures are the daemon's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LEADS: i64 = 100_000;
const EVENTS: usize = 1_000_000;
/// Events per store transaction; `MQLSYNC_BENCH_BATCH` overrides it.
const BATCH: usize = 100_000;
const REGIONS: [&str; 5] = ["NA", "EMEA", "APAC", "LATAM", "ANZ"];
const TEAMS: [&str; 5] = ["SDR", "AE", "Inside", "Partner", "Enterprise"];

fn start() -> Timestamp {
    "2026-01-05T00:00:00Z".parse().unwrap()
}

/// Thresholds, people and links: the org as it stands before the score events.
fn setup() -> Vec<Event> {
    let mut events = Vec::new();
    let t0 = start();
    // 50 thresholds: 25 region x team, 5 region, 19 team x business line, 1 default.
    let mut n = 0;
    for r in REGIONS {
        for t in TEAMS {
            let score = 90.0 + n as f64;
            events.push(threshold(&mut n, &[("region", r), ("team", t)], score));
        }
        events.push(threshold(&mut n, &[("region", r)], 100.0));
    }
    for t in TEAMS {
        for b in ["Core", "Cloud", "Data", "Security"] {
            if n < 49 {
                events.push(threshold(
                    &mut n,
                    &[("team", t), ("business_line", b)],
                    95.0,
                ));
            }
        }
    }
    events.push(threshold(&mut n, &[], 110.0));
    assert_eq!(n, 50);
    for i in 0..LEADS {
        let id = format!("00Q{i:012}");
        let attributes = BTreeMap::from([
            ("region".to_string(), REGIONS[(i % 5) as usize].to_string()),
            (
                "team".to_string(),
                TEAMS[((i / 5) % 5) as usize].to_string(),
            ),
            (
                "business_line".to_string(),
                ["Core", "Cloud", "Data", "Security"][(i % 4) as usize].to_string(),
            ),
        ]);
        events.push(Event::Person(PersonFacts {
            crm: CrmRef {
                kind: CrmKind::Lead,
                id: id.as_str().into(),
            },
            status: Some("Open - Not Contacted".into()),
            owner_id: Some("005A".into()),
            title: Some("IT Manager".into()),
            account_id: None,
            converted: false,
            attributes: attributes.into(),
            prior_mql_at: None,
            modified_at: t0,
        }));
        events.push(Event::Link(MapLink {
            map_lead_id: i,
            crm: Some(CrmRef {
                kind: CrmKind::Lead,
                id: id.into(),
            }),
            at: t0,
        }));
    }
    events
}

fn threshold(n: &mut usize, segment: &[(&str, &str)], score: f64) -> Event {
    *n += 1;
    Event::Threshold(Threshold {
        id: format!("a0T{n:04}"),
        segment: segment
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        score,
        effective_from: None,
        effective_to: None,
        active: true,
        set_by: None,
        modified_at: start(),
        deleted: false,
    })
}

/// One million score changes: each lead's score walks up and down in steps of 5 to 25.
fn score_events() -> Vec<Event> {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let mut scores = vec![0.0f64; LEADS as usize];
    let campaigns: Vec<Campaign> = (0..20)
        .map(|c| Campaign {
            id: format!("C{c}").into(),
            name: None,
        })
        .collect();
    (0..EVENTS)
        .map(|i| {
            let lead = rng.random_range(0..LEADS);
            let step = f64::from(rng.random_range(1..6u32) * 5)
                * if rng.random_bool(0.8) { 1.0 } else { -1.0 };
            let old = scores[lead as usize];
            let new = (old + step).max(0.0);
            scores[lead as usize] = new;
            Event::Score(ScoreChange {
                map_lead_id: lead,
                change_id: format!("{}", 70_000_000 + i),
                part: ScorePart::Total,
                new_value: new,
                old_value: Some(old),
                campaign: Some(campaigns[i % 20].clone()),
                at: start() + SignedDuration::from_secs(60 + i as i64 * 2),
            })
        })
        .collect()
}

/// People per account in the `qualify` phase.
const PER_ACCOUNT: i64 = 5;

/// The accounts of the `qualify` phase, applied before [`setup_as_contacts`].
fn accounts() -> Vec<Event> {
    (0..LEADS / PER_ACCOUNT)
        .map(|a| {
            Event::Account(AccountFacts {
                id: format!("001{a:012}").as_str().into(),
                owner_id: Some(format!("005{:012}", a % 50).into()),
                attributes: Attributes::default(),
                modified_at: start(),
            })
        })
        .collect()
}

/// [`setup`] with every person a contact of one of [`accounts`] (five each), changed in
/// place: the set-up allocates and frees what the score-only phase's does, so that neither
/// phase's timed loop starts with more of the set-up's freed memory to grow into, nor counts
/// a copy of the set-up in its peak. (Built as a second list while the first was alive, it
/// added about 10 MiB to this phase's peak, about 100 B a person, and left the allocator's free
/// memory laid out differently: with freed memory kept, `MIMALLOC_PURGE_DELAY=-1`, this
/// phase's loop took 34 MiB of fresh pages and the score-only loop none.)
fn setup_as_contacts() -> Vec<Event> {
    let mut events = setup();
    for e in &mut events {
        match e {
            Event::Person(p) => {
                let i: i64 = p.crm.id[3..].parse().unwrap();
                p.crm.kind = CrmKind::Contact;
                p.account_id = Some(format!("001{:012}", i / PER_ACCOUNT).as_str().into());
            }
            Event::Link(l) => {
                if let Some(crm) = &mut l.crm {
                    crm.kind = CrmKind::Contact;
                }
            }
            _ => {}
        }
    }
    events
}

/// [`score_events`] with every tenth replaced by a form fill of the same lead at the same
/// instant, half of them of the Demo Request form.
fn qualify_events() -> Vec<Event> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    score_events()
        .into_iter()
        .enumerate()
        .map(|(i, e)| match e {
            Event::Score(s) if i % 10 == 9 => {
                let demo = rng.random_bool(0.5);
                Event::Activity(MapActivity {
                    map_lead_id: s.map_lead_id,
                    activity_id: format!("{}", 90_000_000 + i).into(),
                    type_id: 2,
                    asset_id: Some(if demo { "1001" } else { "1005" }.into()),
                    asset_name: Some(
                        if demo {
                            "Demo Request"
                        } else {
                            "Newsletter Signup"
                        }
                        .into(),
                    ),
                    status: None,
                    campaign: s.campaign,
                    at: s.at,
                })
            }
            other => other,
        })
        .collect()
}

fn qualify_phase() {
    let mut policy = quiet_policy();
    // `MQLSYNC_BENCH_QUALIFY=hand_raisers` or `account`: one of the two alone.
    let only = std::env::var("MQLSYNC_BENCH_QUALIFY").unwrap_or_default();
    if only != "hand_raisers" {
        policy.score = ScoreSource::Account {
            window: SignedDuration::from_hours(24 * 30),
        };
    }
    assert_eq!(
        policy.hand_raisers.len(),
        1,
        "the example's Demo Request rule"
    );
    let mut state = EngineState::new();
    apply_all(&mut state, &policy, &accounts());
    apply_all(&mut state, &policy, &setup_as_contacts());
    let events = if only == "account" {
        score_events()
    } else {
        qualify_events()
    };
    let (secs, decisions) = measured_loop(&mut state, &policy, &events);
    report(
        "engine, account scoring and hand-raisers (10 % form fills)",
        secs,
        decisions,
        &state,
    );
    let by_account = state
        .persons
        .values()
        .flat_map(|p| &p.cycles)
        .filter(|c| c.account_id.is_some() && c.hand_raise.is_none())
        .count();
    let raised = state
        .persons
        .values()
        .flat_map(|p| &p.cycles)
        .filter(|c| c.hand_raise.is_some())
        .count();
    println!("  cycles by account score {by_account}, by hand-raise {raised}");
    std::mem::forget(state);
}

/// [`timed_engine_loop`] with its wall time, and on stderr what it cost besides: the resident
/// memory it grew, its user and system CPU time, its page faults and how many of them were
/// transparent huge pages (the machine's `thp_fault_alloc`: other processes' count too, none
/// on an idle machine). On a VM a page touched for the first time may cost a fault the host
/// backs as it happens: this one reports its free memory to the host in 8 MiB blocks
/// (`page_reporting_order=11`), which the host takes back, so a 2 MiB page carved from such a
/// block is backed again while the kernel clears it (0.1 to 0.25 s of a loop's system time on
/// the machine of the README's figures), while a 4 KiB page refaulted where the allocator
/// purged one is likelier to come from memory the host still backs. A phase whose loop grows into
/// huge pages pays in system time, not in its own instructions.
fn measured_loop(state: &mut EngineState, policy: &Policy, events: &[Event]) -> (f64, usize) {
    let (before, cpu_before, huge_before) = (rss_mib(), usage_so_far(), huge_page_faults());
    let started = Instant::now();
    let decisions = timed_engine_loop(state, policy, events);
    let secs = started.elapsed().as_secs_f64();
    let (user, system, faults) = usage_so_far();
    eprintln!(
        "  the timed loop grew the resident memory by {:.1} MiB; CPU {:.2} s user, {:.2} s system; {} page faults, {} huge",
        rss_mib() - before,
        user - cpu_before.0,
        system - cpu_before.1,
        faults - cpu_before.2,
        huge_page_faults() - huge_before
    );
    (secs, decisions)
}

/// Transparent huge pages the kernel has given on a fault since it started, on the whole
/// machine (`thp_fault_alloc` in `/proc/vmstat`; 0 where there is none).
fn huge_page_faults() -> i64 {
    std::fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|stat| {
            stat.lines()
                .find_map(|line| line.strip_prefix("thp_fault_alloc "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// This process's CPU time so far (user, system, in seconds) and its page faults.
fn usage_so_far() -> (f64, f64, i64) {
    // SAFETY: getrusage writes the struct it is given and reads nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        secs(usage.ru_utime),
        secs(usage.ru_stime),
        usage.ru_minflt + usage.ru_majflt,
    )
}

/// The peak resident memory (VmHWM) so far, in MiB.
fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// The resident memory (VmRSS) now, in MiB.
fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// A memory figure of `/proc/self/status`, in MiB (NaN where there is none).
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(str::to_string))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn quiet_policy() -> Policy {
    let mut policy = Policy::example();
    policy.teams.clear();
    policy
}

fn engine_phase() {
    let policy = quiet_policy();
    let mut state = EngineState::new();
    apply_all(&mut state, &policy, &setup());
    let events = score_events();
    let (secs, decisions) = measured_loop(&mut state, &policy, &events);
    report("engine alone", secs, decisions, &state);
    // The process exits next: freeing the state is no part of any figure (and would only
    // blur a profile of this phase).
    std::mem::forget(state);
}

/// The org's set-up, each event at its own instant (not timed, and outside the profiled
/// loop below).
fn apply_all(state: &mut EngineState, policy: &Policy, events: &[Event]) {
    for e in events {
        reconcile(
            state,
            &Context {
                policy,
                now: e.at(),
                backfill: false,
                visibility: Visibility::AtDecision,
            },
            e,
        );
    }
}

/// The timed part of the engine phase, a function of its own so that a profiler can be told
/// to count it alone (`valgrind --tool=callgrind --toggle-collect='engine::timed_engine_loop'`).
#[inline(never)]
fn timed_engine_loop(state: &mut EngineState, policy: &Policy, events: &[Event]) -> usize {
    let mut decisions = 0;
    for e in events {
        decisions += reconcile(
            state,
            &Context {
                policy,
                now: e.at(),
                backfill: false,
                visibility: Visibility::AtDecision,
            },
            e,
        )
        .len();
    }
    decisions
}

fn store_phase() {
    let batch = std::env::var("MQLSYNC_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&b| b > 0)
        .unwrap_or(BATCH);
    let policy = quiet_policy();
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("bench.sqlite")).unwrap();
    let mut state = EngineState::new();
    let setup = setup();
    for chunk in setup.chunks(batch) {
        let mut ds = Vec::new();
        for e in chunk {
            ds.extend(reconcile(
                &mut state,
                &Context {
                    policy: &policy,
                    now: e.at(),
                    backfill: false,
                    visibility: Visibility::AtDecision,
                },
                e,
            ));
        }
        store
            .commit_batch(
                Batch {
                    events: chunk,
                    decisions: &ds,
                    cursors: &[],
                    seen_at: start(),
                },
                &mut state,
            )
            .unwrap();
    }
    let events = score_events();
    let started = Instant::now();
    let mut decisions = 0usize;
    for (n, chunk) in events.chunks(batch).enumerate() {
        let mut ds = Vec::new();
        for e in chunk {
            ds.extend(reconcile(
                &mut state,
                &Context {
                    policy: &policy,
                    now: e.at(),
                    backfill: false,
                    visibility: Visibility::AtDecision,
                },
                e,
            ));
        }
        decisions += ds.len();
        let cursors = [("map.activities".to_string(), n.to_string())];
        store
            .commit_batch(
                Batch {
                    events: chunk,
                    decisions: &ds,
                    cursors: &cursors,
                    seen_at: chunk[0].at(),
                },
                &mut state,
            )
            .unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    report(
        &format!("engine + store (batches of {batch})"),
        secs,
        decisions,
        &state,
    );
    std::mem::forget(state);
}

fn report(name: &str, secs: f64, decisions: usize, state: &EngineState) {
    let cycles: usize = state.persons.values().map(|p| p.cycles.len()).sum();
    let rss = peak_rss_mib();
    println!(
        "{name}: {EVENTS} events in {secs:.2} s = {:.0} events/s ({:.2} us/event); {decisions} decisions, {cycles} cycles; peak RSS {rss:.0} MiB ({:.0} B a person, the events included)",
        EVENTS as f64 / secs,
        secs * 1e6 / EVENTS as f64,
        rss * 1024.0 * 1024.0 / LEADS as f64
    );
}

/// `-- rounds`: the `engine` and `qualify` phases alternately, each in a fresh process,
/// `MQLSYNC_BENCH_ROUNDS` times (default 25), then the medians and their ratio (the issue 15
/// figure) and the median of each round's own ratio with its quartiles. On a shared host one run of a phase moves
/// by up to 2x from the next; a ratio of two single runs says little, the ratio of medians of
/// alternating runs does.
fn rounds() {
    let n = rounds_wanted();
    let me = std::env::current_exe().unwrap();
    // Each phase's runs, by figure: per event and a person (its report on stdout), the timed
    // loop's user and system CPU seconds and its huge-page faults (its line on stderr).
    let mut runs: BTreeMap<(&'static str, &'static str), Vec<f64>> = BTreeMap::new();
    for _ in 0..n {
        for phase in ["engine", "qualify"] {
            let (report, cpu) = run_phase(&me, phase);
            print!("{report}");
            // "(0.52 us/event)", "(3455 B a person"; "CPU 0.58 s user, 0.15 s system",
            // "101 page faults, 17 huge"
            for (text, unit, opening) in [
                (&report, " us/event", '('),
                (&report, " B a person", '('),
                (&cpu, " s user", ' '),
                (&cpu, " s system", ' '),
                (&cpu, " huge", ' '),
            ] {
                let value = figure(text, unit, opening);
                runs.entry((unit, phase)).or_default().push(value);
            }
        }
    }
    // Each round's own ratio: its two runs are seconds apart, so load that drifts over the
    // minutes of a series cancels in it, where it moves the medians of either phase.
    let mut paired: Vec<f64> = runs[&(" us/event", "qualify")]
        .iter()
        .zip(&runs[&(" us/event", "engine")])
        .map(|(qualify, engine)| qualify / engine)
        .collect();
    let (paired_q1, paired, paired_q3) = quartiles(&mut paired);
    let mut median = |figure: &'static str, phase: &'static str| {
        median_of(runs.get_mut(&(figure, phase)).expect("runs of the phase"))
    };
    let (engine, qualify) = (
        median(" us/event", "engine"),
        median(" us/event", "qualify"),
    );
    let (engine_b, qualify_b) = (
        median(" B a person", "engine"),
        median(" B a person", "qualify"),
    );
    println!(
        "{n} alternating rounds, medians: score only {engine:.2} us/event, {engine_b:.0} B a person; \
         account scoring and hand-raisers {qualify:.2} us/event ({:.2}x; the rounds' own ratios: {paired:.2}x, \
         quartiles {paired_q1:.2}x to {paired_q3:.2}x), \
         {qualify_b:.0} B a person ({:+.1} %)",
        qualify / engine,
        (qualify_b / engine_b - 1.0) * 100.0
    );
    // The wall time holds the kernel's page faults, whose cost on a VM moves with the host:
    // the user CPU time is the engine's own work, the system time the faults.
    let (engine_user, qualify_user) = (median(" s user", "engine"), median(" s user", "qualify"));
    let (engine_system, qualify_system) = (
        median(" s system", "engine"),
        median(" s system", "qualify"),
    );
    let (engine_huge, qualify_huge) = (median(" huge", "engine"), median(" huge", "qualify"));
    println!(
        "  the timed loop's CPU, medians: user {engine_user:.2} s against {qualify_user:.2} s ({:.2}x), \
         system {engine_system:.2} s against {qualify_system:.2} s; huge-page faults {engine_huge:.0} against {qualify_huge:.0}",
        qualify_user / engine_user
    );
}

/// `-- against OTHER [PHASE]`: one phase (default `qualify`) of this binary and of `OTHER`
/// (another build of this bench, say the code before a change, copied aside) in alternate
/// processes, `MQLSYNC_BENCH_ROUNDS` times (default 25), the order swapped every round; then
/// the median of each round's ratio (this binary's time over the other's) with its quartiles,
/// for wall and user CPU time. On this shared VM a before-and-after of a few per cent is
/// invisible in the medians of the two series and visible in the paired ratios only over tens
/// of rounds: a quartile range that straddles 1.00 says no difference was found.
fn against(other: &str, phase: &str) {
    let n = rounds_wanted();
    let (me, other_binary) = (
        std::env::current_exe().unwrap(),
        std::path::Path::new(other),
    );
    // Per event and the timed loop's user CPU seconds.
    let run = |binary: &std::path::Path| -> (f64, f64) {
        let (report, cpu) = run_phase(binary, phase);
        (
            figure(&report, " us/event", '('),
            figure(&cpu, " s user", ' '),
        )
    };
    let (mut wall, mut user) = (Vec::new(), Vec::new());
    for round in 0..n {
        let (mine, theirs) = if round % 2 == 0 {
            let mine = run(&me);
            (mine, run(other_binary))
        } else {
            let theirs = run(other_binary);
            (run(&me), theirs)
        };
        println!(
            "round {round}: {:.2} against {:.2} us/event",
            mine.0, theirs.0
        );
        wall.push(mine.0 / theirs.0);
        user.push(mine.1 / theirs.1);
    }
    for (name, ratios) in [("wall", &mut wall), ("user CPU", &mut user)] {
        let (q1, median, q3) = quartiles(ratios);
        println!(
            "{phase}, {n} rounds, this binary against {other}: {name} {median:.3}x (quartiles {q1:.3}x to {q3:.3}x)"
        );
    }
}

/// Runs `phase` of the bench binary `binary` in a process of its own: its report (stdout) and
/// what its timed loop cost besides (stderr).
fn run_phase(binary: &std::path::Path, phase: &str) -> (String, String) {
    let out = std::process::Command::new(binary)
        .arg(phase)
        .output()
        .unwrap_or_else(|e| panic!("{} does not run: {e}", binary.display()));
    assert!(out.status.success(), "{} {phase} failed", binary.display());
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The number before `unit` in `text`, after the last `opening` before it: "(0.52 us/event)",
/// "CPU 0.58 s user".
fn figure(text: &str, unit: &str, opening: char) -> f64 {
    let end = text.find(unit).expect("the phase's figure");
    let start = text[..end].rfind(opening).expect("a number before it") + 1;
    text[start..end].trim().parse().expect("a number")
}

/// `MQLSYNC_BENCH_ROUNDS`, or 25.
fn rounds_wanted() -> usize {
    std::env::var("MQLSYNC_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(25)
}

/// The first quartile, median and third quartile of `values` (sorted in place).
fn quartiles(values: &mut [f64]) -> (f64, f64, f64) {
    let median = median_of(values);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (at(0.25), median, at(0.75))
}

/// The median of `values` (sorted in place).
fn median_of(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn main() {
    if std::env::var("MQLSYNC_BENCH_NO_THP").is_ok_and(|v| v == "1") {
        // SAFETY: as in src/main.rs's fit_in_a_sidecar: plain integers, this process's
        // page-fault policy only.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    match args.first().map(String::as_str) {
        // Exit at once: dropping a million events is not part of any figure.
        Some("engine") => {
            engine_phase();
            std::process::exit(0)
        }
        Some("store") => {
            store_phase();
            std::process::exit(0)
        }
        Some("qualify") => {
            qualify_phase();
            std::process::exit(0)
        }
        Some("rounds") => rounds(),
        Some("against") => match args.get(1) {
            Some(other) => against(other, args.get(2).map_or("qualify", String::as_str)),
            None => panic!("`against` needs the path of the other bench binary"),
        },
        _ => {
            let me = std::env::current_exe().unwrap();
            for phase in ["engine", "qualify", "store"] {
                let status = std::process::Command::new(&me).arg(phase).status().unwrap();
                assert!(status.success(), "{phase} phase failed");
            }
        }
    }
}
