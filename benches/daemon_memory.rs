//! Daemon memory benchmark (issue 13, "Performance"): the resident memory of `mqlsync run` as
//! a sidecar sees it, idle with an empty store and steady with N people, and its idle CPU.
//!
//! For each size (`MQLSYNC_BENCH_MEMORY=0,100000,...`, default `0,100000`) it starts the
//! release binary twice as separate processes: `mqlsync sandbox --leads N --no-limits
//! --write-config`, then `mqlsync run` on the config it wrote (Marketo's client keeps its
//! pace of 100 calls in 20 s, the most the config allows; the first pass's figure is mostly
//! that pace). When `/readyz` answers 200 and
//! the outbox is empty (the first pass is over and its writes are out) the daemon idles for
//! 10 s; then its resident set (`VmRSS` of `/proc/PID/status`) and its CPU over 30 s of idling
//! are read. The daemon is stopped with SIGTERM and started again on the same store (the
//! steady state of a daemon that has been restarted, without the first pass's peak), and
//! measured the same way. Bytes per person are (RSS - RSS of the empty store) / N.
//!
//! Linux only (`/proc`). Prints the figures; asserts nothing. `MQLSYNC_BENCH_TOUCHES` sets the
//! sandbox's score changes per person (default 4: the sandbox holds about 4 KB a change).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/heap.rs"]
mod heap;

use std::sync::atomic::Ordering;

use mqlsync::mapping;
use mqlsync::store::Store;

/// Counts the heap of the breakdown (the daemon's own figures are its RSS).
#[global_allocator]
static ALLOCATOR: heap::Counting = heap::Counting(std::alloc::System);

const EXE: &str = env!("CARGO_BIN_EXE_mqlsync");
/// Bounds the wait for a first pass; reaching it is a failure, not a figure.
const BOUND: Duration = Duration::from_secs(3_600);
const SETTLE: Duration = Duration::from_secs(10);
const IDLE_CPU_WINDOW: Duration = Duration::from_secs(30);

fn main() {
    let sizes: Vec<usize> = std::env::var("MQLSYNC_BENCH_MEMORY")
        .unwrap_or_else(|_| "0,100000".into())
        .split(',')
        .map(|n| {
            n.trim()
                .replace('_', "")
                .parse()
                .expect("a number of people")
        })
        .collect();
    let touches: u32 = std::env::var("MQLSYNC_BENCH_TOUCHES")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(4);
    println!(
        "daemon memory: `mqlsync run` against `mqlsync sandbox --no-limits`, {touches} score changes a person at most"
    );
    let mut empty_rss = None;
    for people in sizes {
        let m = measure(people, touches);
        let base = if people == 0 {
            empty_rss = Some(m.restarted.rss);
            m.restarted.rss
        } else {
            empty_rss.unwrap_or(0)
        };
        m.print(people, base);
    }
}

/// One daemon process's figures once idle.
#[derive(Clone, Copy)]
struct Sample {
    rss: u64,
    peak: u64,
    cpu_pct: f64,
    ready_after: Duration,
}

struct Measured {
    first: Sample,
    restarted: Sample,
}

impl Measured {
    fn print(&self, people: usize, base: u64) {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        for (label, s) in [
            ("after its first pass", self.first),
            ("restarted on the same store", self.restarted),
        ] {
            let per_person = if people > 0 {
                format!(
                    ", {:.0} B a person above the empty store",
                    s.rss.saturating_sub(base) as f64 / people as f64
                )
            } else {
                String::new()
            };
            println!(
                "  {people} people, {label}: ready in {:.1} s; RSS {:.1} MiB{per_person}; peak {:.1} MiB; idle CPU {:.2} % of a core",
                s.ready_after.as_secs_f64(),
                mib(s.rss),
                mib(s.peak),
                s.cpu_pct
            );
        }
    }
}

fn measure(people: usize, touches: u32) -> Measured {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("mqlsync.toml");
    let started = Instant::now();
    let mut sandbox = Command::new(EXE)
        .args(["sandbox", "--no-limits", "--json", "--leads"])
        .arg(people.to_string())
        .arg("--score-touches")
        .arg(touches.to_string())
        .arg("--write-config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the sandbox");
    let mut line = String::new();
    BufReader::new(sandbox.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the sandbox's first line");
    wait_until(|| config.exists(), "the sandbox's config");
    println!(
        "  ({people} people: sandbox up in {:.0} s)",
        started.elapsed().as_secs_f64()
    );
    let port = free_port();
    let mut text = std::fs::read_to_string(&config).expect("the config");
    text.push_str(&format!("\n[daemon]\nlisten = \"127.0.0.1:{port}\"\n"));
    std::fs::write(&config, text).expect("the config");

    let first = run_daemon(&config, dir.path(), port, "first");
    let restarted = run_daemon(&config, dir.path(), port, "restart");
    stop(&mut sandbox);
    if people > 0 {
        breakdown(&dir.path().join("state/sandbox.sqlite"), people);
    }
    Measured { first, restarted }
}

/// Where the engine state's heap goes: the state the daemon loads from its store, loaded here
/// under a counting allocator, then taken apart one kind of part at a time (each part's bytes
/// are what dropping it frees).
fn breakdown(store: &Path, people: usize) {
    let live = || heap::LIVE.load(Ordering::Relaxed);
    let loaded = mapping::load(None).expect("the default mapping");
    let store = Store::open_existing(store).expect("the daemon's store");
    let start = heap::baseline();
    let mut state = store.load_engine(&loaded.policy).expect("the state");
    let total = live() - start;
    let load_peak = heap::peak_above(start);
    let ids: Vec<String> = state.persons.iter().map(|(id, _)| id.to_string()).collect();
    let cycles: usize = state.persons.iter().map(|(_, p)| p.cycles.len()).sum();
    let holds = state
        .persons
        .iter()
        .filter(|(_, p)| p.last_hold.is_some())
        .count();
    let map_leads = state.map_leads.len();
    let mut part = |take: &mut dyn FnMut(&mut mqlsync::engine::EngineState)| {
        let before = live();
        take(&mut state);
        before.saturating_sub(live())
    };
    let facts = part(&mut |s| {
        for id in &ids {
            s.persons.get_mut(id).expect("a person").facts = None;
        }
    });
    let cycle_bytes = part(&mut |s| {
        for id in &ids {
            s.persons.get_mut(id).expect("a person").cycles = Vec::new();
        }
    });
    let hold_bytes = part(&mut |s| {
        for id in &ids {
            s.persons.get_mut(id).expect("a person").last_hold = None;
        }
    });
    let map_lead_bytes = part(&mut |s| s.map_leads = Default::default());
    drop(ids);
    let rest = live().saturating_sub(start);
    drop(state);
    let per = |b: usize| b as f64 / people as f64;
    println!(
        "  engine state of {people} people ({map_leads} MAP leads, {cycles} cycles, {holds} holds recorded): {:.0} B a person in all (loading it peaks at {:.0})",
        per(total),
        per(load_peak)
    );
    println!(
        "    facts {:.0}, cycles {:.0} ({:.0} a cycle), last holds {:.0}, MAP leads {:.0}, the rest (person records, ids, indexes, thresholds) {:.0}",
        per(facts),
        per(cycle_bytes),
        cycle_bytes as f64 / cycles.max(1) as f64,
        per(hold_bytes),
        per(map_lead_bytes),
        per(rest)
    );
}

/// Starts `mqlsync run`, waits until it is ready with an empty outbox, measures it idle, and
/// stops it with SIGTERM.
fn run_daemon(config: &Path, dir: &Path, port: u16, label: &str) -> Sample {
    let log = std::fs::File::create(dir.join(format!("daemon-{label}.log"))).expect("log");
    let started = Instant::now();
    let mut daemon = Command::new(EXE);
    // mqlsync refuses MQLSYNC_ variables it does not know, such as this bench's own.
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("MQLSYNC_")) {
        daemon.env_remove(name);
    }
    let mut daemon = daemon
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("MQLSYNC_MARKETO_DAILY_QUOTA", "1000000000")
        .env("MQLSYNC_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the daemon");
    let pid = daemon.id();
    wait_until(
        || {
            if let Ok(Some(status)) = daemon.try_wait() {
                let log = std::fs::read_to_string(dir.join(format!("daemon-{label}.log")));
                panic!("the daemon exited ({status}): {}", log.unwrap_or_default());
            }
            get(port, "/readyz").is_some_and(|(code, _)| code == 200)
                && get(port, "/metrics").is_some_and(|(_, body)| outbox_empty(&body))
        },
        "the daemon ready with an empty outbox",
    );
    let ready_after = started.elapsed();
    std::thread::sleep(SETTLE);
    let cpu_before = cpu_ticks(pid);
    let idle_from = Instant::now();
    std::thread::sleep(IDLE_CPU_WINDOW);
    let ticks = cpu_ticks(pid) - cpu_before;
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu_pct = ticks as f64 / per_sec / idle_from.elapsed().as_secs_f64() * 100.0;
    let sample = Sample {
        rss: status_kib(pid, "VmRSS:") * 1024,
        peak: status_kib(pid, "VmHWM:") * 1024,
        cpu_pct,
        ready_after,
    };
    stop(&mut daemon);
    sample
}

fn outbox_empty(metrics: &str) -> bool {
    metrics
        .lines()
        .find(|l| l.starts_with("mqlsync_outbox_depth "))
        .is_some_and(|l| l.ends_with(" 0"))
}

/// SIGTERM, then wait for the exit.
fn stop(child: &mut Child) {
    // SAFETY: kill with a child's pid and a valid signal number.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    child.wait().expect("the child exits");
}

/// A field of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc/PID/status")
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("the field")
}

/// User plus system CPU of a process, in clock ticks (`/proc/PID/stat` fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The command name may hold spaces: the fields start after its closing parenthesis.
    let rest = &stat[stat.rfind(')').expect("(comm)") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// A GET on the daemon's port: the status code and body (HTTP/1.0, so the body ends the
/// connection).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + BOUND;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {BOUND:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}
