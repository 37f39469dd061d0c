//! Issue 13, point 8: `mqlsync run` (the binary, a child process) syncing 10,000 people is
//! killed with SIGKILL at seeded pseudo-random points and started again, several times; then
//! it is let finish, and the CRM it wrote equals the CRM a clean run wrote into a second
//! sandbox of the same world: the same MQL records (none lost, none twice), the same stamps on
//! every lead and contact, one alert task per alert.
//!
//! Where the kills land: the child logs one JSON line per committed page and per write batch;
//! the kill points are seeded positions in that work, counted over all the daemon's lives
//! (half among the first pass's reads, half among its writes), so they land at the same
//! points of the work whatever the machine's speed; each is followed by a seeded jitter of a
//! few milliseconds, so that it lands inside the step that follows (a page being read, a
//! batch whose answer has not come back, a settlement not yet committed). The jitter is the kill point itself; nothing
//! in this test waits on time for a state: the finish is read from the child's log and the
//! store.
//!
//! The clean run is `run --once` in this process at the instant the killed daemon went live
//! (as soon as it has, beside the kills), so both decide the go-live MQLs at one instant. The only other instant that differs is
//! where each first pass starts reading score changes (30 days before its own start); the
//! test checks that the world has no score change near there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use mqlsync::config;
use mqlsync::mapping;
use mqlsync::sandbox::server::{Sandbox, SandboxOptions};
use mqlsync::store::Store;
use mqlsync::sync::connect;
use mqlsync::sync::once::{RunSettings, run_once};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr};

/// The people of the world: the "at least 10,000".
const PEOPLE: usize = 10_000;
/// The world's seed (checked below for no score change where the first passes start reading).
const WORLD_SEED: u64 = 7;
/// The seed of the kill points.
const KILL_SEED: u64 = 13;
/// Kills among the first pass's reads, and among its writes.
const READ_KILLS: u32 = 3;
const WRITE_KILLS: u32 = 5;
/// Committed pages of the first pass over this world before its writes (thresholds 1,
/// leads 4, contacts 2, opportunities 1, score changes 22, current scores 32, give or take
/// what a restart reads again), and its write batches (MQL records 8, leads 6, contacts 3,
/// alert tasks 7): where the kills land.
const READ_STEPS: u32 = 60;
const WRITE_STEPS: u32 = 24;
/// Bounds a wait on the child; reaching it is a failure, not a pace.
const FAILURE_BOUND: Duration = Duration::from_secs(120);
/// How long after the world's instant every first pass must have started: the world has no
/// score change within this much after its 30-day mark.
const START_MARGIN: SignedDuration = SignedDuration::from_mins(10);

fn options(world_at: Timestamp) -> SandboxOptions {
    SandboxOptions {
        leads: PEOPLE,
        seed: WORLD_SEED,
        now: Some(world_at),
        // Both emulators as fast as they go: no daily limits, no Marketo rate limits.
        limits: false,
        ..SandboxOptions::default()
    }
}

/// The config both runs use, for `sandbox`, with the store beside it.
fn write_config(sandbox: &Sandbox, dir: &Path) -> (std::path::PathBuf, Vec<(String, String)>) {
    let info = sandbox.connection_info();
    let file = dir.join("mqlsync.toml");
    std::fs::write(
        &file,
        format!(
            "{}\n[daemon]\nlisten = \"127.0.0.1:0\"\n# Full batches: the first pass writes thousands of records.\nwrite_window_ms = 1000\n",
            mqlsync::sandbox::cli::sandbox_config_toml(&info, "state.sqlite", None)
        ),
    )
    .unwrap();
    let env = mqlsync::sandbox::cli::secrets_env(&info, None);
    (file, env)
}

/// `mqlsync run` in `dir`, logging JSON lines at info level to its stderr.
fn spawn_daemon(dir: &Path, env: &[(String, String)]) -> (Child, Lines<BufReader<ChildStderr>>) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqlsync"));
    command
        .args(["--config", "mqlsync.toml", "run"])
        .current_dir(dir)
        .env_remove("MQLSYNC_CONFIG")
        .env("MQLSYNC_LOG", "mqlsync=info")
        .env("MQLSYNC_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    (child, lines)
}

/// The next log line of the child as JSON (`None`: it closed its stderr).
async fn next_line(lines: &mut Lines<BufReader<ChildStderr>>) -> Option<Value> {
    let line = tokio::time::timeout(FAILURE_BOUND, lines.next_line())
        .await
        .expect("the daemon logs within the bound")
        .unwrap()?;
    Some(serde_json::from_str(&line).unwrap_or(Value::String(line)))
}

fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or_default()
}

/// Whether the store at `path` has gone live (a daemon started on it polls at once).
fn went_live(path: &Path) -> bool {
    path.exists()
        && Store::open_existing(path)
            .unwrap()
            .cursor("sync.go_live")
            .unwrap()
            .is_some()
}

/// Writes waiting in the outbox of the store at `path`.
fn pending(path: &Path) -> usize {
    Store::open_existing(path)
        .unwrap()
        .outbox_depth()
        .unwrap()
        .0
}

/// Whether `line` ends the reads a daemon on a live store starts with: every source is due
/// at its start, and score changes are the last.
fn polled_every_source(line: &Value) -> bool {
    line["span"]["phase"] == "score changes" && message(line) == "read"
}

/// A log line in a few words: the phase and what it says, for the test's own output.
fn where_in_the_work(line: &Value) -> String {
    let phase = line["span"]["phase"].as_str().unwrap_or("daemon");
    let mut what = message(line).to_string();
    for key in ["source", "object", "records"] {
        if let Some(v) = line["fields"].get(key) {
            what.push_str(&format!(" {key}={v}"));
        }
    }
    format!("{phase}: {what}")
}

/// `mqlsync run --once --json` in `dir`: its summary.
async fn run_once_binary(dir: &Path, env: &[(String, String)]) -> Value {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqlsync"));
    command
        .args(["--config", "mqlsync.toml", "run", "--once", "--json"])
        .current_dir(dir)
        .env_remove("MQLSYNC_CONFIG")
        .env("MQLSYNC_LOG", "warn");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = tokio::time::timeout(FAILURE_BOUND, command.output())
        .await
        .expect("run --once ends within the bound")
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Sends SIGTERM and waits for the child to exit; its exit code.
async fn terminate(child: &mut Child) -> Option<i32> {
    let pid = i32::try_from(child.id().unwrap()).unwrap();
    // SAFETY: sends a signal to the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    tokio::time::timeout(FAILURE_BOUND, child.wait())
        .await
        .expect("the daemon stops within the bound")
        .unwrap()
        .code()
}

/// What a CRM holds that mqlsync wrote, in a form two runs can be compared by.
#[derive(Debug, PartialEq)]
struct Written {
    /// MQL records by external id: the fields a rerun must reproduce (not the SLA due time,
    /// which runs from the write).
    mqls: BTreeMap<String, BTreeMap<String, Value>>,
    /// Each lead's and contact's stamps, by CRM id (only people with any).
    stamps: BTreeMap<String, BTreeMap<String, Value>>,
    /// Alert tasks by alert key: who it is about and whose it is.
    tasks: BTreeMap<String, (Value, Value)>,
}

const MQL_FIELDS: [&str; 12] = [
    "Lead__c",
    "Contact__c",
    "Cycle_Number__c",
    "Status__c",
    "Score_At_MQL__c",
    "Threshold_At_MQL__c",
    "Threshold_Id__c",
    "Segment__c",
    "Campaign_Id__c",
    "Owner_At_MQL__c",
    "Team__c",
    "MQL_Date__c",
];
const STAMP_FIELDS: [&str; 6] = [
    "MQL_Date_Most_Recent__c",
    "MQL_Date_Original__c",
    "SAL_Date_Most_Recent__c",
    "SAL_Date_Original__c",
    "MQL_Count__c",
    "Status",
];

/// Reads what mqlsync wrote from the sandbox's CRM, failing on a duplicate MQL record or
/// alert task.
fn written(sandbox: &Sandbox) -> Written {
    let state = sandbox.salesforce().state();
    let records = |object: &str| -> Vec<Map<String, Value>> {
        state["objects"][object]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|r| r["IsDeleted"] != Value::Bool(true))
                    .filter_map(|r| r.as_object().cloned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let pick = |r: &Map<String, Value>, fields: &[&str]| -> BTreeMap<String, Value> {
        fields
            .iter()
            .map(|f| ((*f).to_string(), r.get(*f).cloned().unwrap_or(Value::Null)))
            .collect()
    };
    let mut mqls = BTreeMap::new();
    for r in records("MQL__c") {
        let id = r["External_Id__c"].as_str().unwrap().to_string();
        let fields = pick(&r, &MQL_FIELDS);
        assert!(
            mqls.insert(id.clone(), fields).is_none(),
            "two MQL records {id}"
        );
    }
    let mut stamps = BTreeMap::new();
    for object in ["Lead", "Contact"] {
        for r in records(object) {
            if r.get("MQL_Count__c").is_none_or(Value::is_null) {
                continue;
            }
            let mut fields = pick(&r, &STAMP_FIELDS);
            if object == "Contact" {
                fields.insert("Status".into(), r["Contact_Status__c"].clone());
            }
            stamps.insert(r["Id"].as_str().unwrap().to_string(), fields);
        }
    }
    let mut tasks = BTreeMap::new();
    for r in records("Task") {
        let Some(key) = r.get("MQL_Alert_Key__c").and_then(Value::as_str) else {
            continue;
        };
        assert!(
            tasks
                .insert(key.to_string(), (r["WhoId"].clone(), r["OwnerId"].clone()))
                .is_none(),
            "two alert tasks {key}"
        );
    }
    Written {
        mqls,
        stamps,
        tasks,
    }
}

/// The clean run: the same world in a second sandbox, one `run --once` at the instant the
/// daemon of the store at `killed_store` went live. The sandbox, and what that run wrote.
async fn clean_run(world_at: Timestamp, killed_store: std::path::PathBuf) -> (Sandbox, Written) {
    let loaded = mapping::load(None).unwrap();
    let went_live = Store::open_existing(&killed_store)
        .unwrap()
        .load_engine(&loaded.policy)
        .unwrap()
        .meta
        .went_live
        .expect("the killed daemon went live");
    assert!(
        went_live >= world_at && went_live.duration_since(world_at) < START_MARGIN,
        "{went_live}"
    );
    let clean = Sandbox::start(options(world_at)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (file, env) = write_config(&clean, dir.path());
    let config = config::load(Some(&file), &env).unwrap();
    let sf = connect::salesforce(&config).unwrap();
    let mk = connect::marketo(&config).unwrap();
    let mut store = Store::open(&config.store).unwrap();
    let (a, b) = (sf.clone(), mk.clone());
    let run = run_once(
        &sf,
        &mk,
        &loaded.mapping,
        &loaded.policy,
        &mut store,
        went_live,
        &RunSettings::default(),
        move || (a.sent(), b.sent()),
    )
    .await
    .unwrap();
    assert!(
        run.parked.count == 0 && run.write_failures.is_empty(),
        "{run:?}"
    );
    let written = written(&clean);
    (clean, written)
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_killed_at_random_points_ends_with_the_crm_of_a_clean_run() {
    let began = Instant::now();
    let world_at = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
    let killed = Sandbox::start(options(world_at)).await.unwrap();
    let look_back_starts = world_at - SignedDuration::from_hours(24 * 30);
    let near = killed
        .world()
        .score_changes
        .iter()
        .filter(|c| c.at >= look_back_starts && c.at <= look_back_starts + START_MARGIN)
        .count();
    assert_eq!(
        near, 0,
        "the world of seed {WORLD_SEED} has score changes where the first passes start reading: pick another seed"
    );
    let dir = tempfile::tempdir().unwrap();
    let (_, env) = write_config(&killed, dir.path());
    eprintln!(
        "crash test: world of {PEOPLE} ready after {:?}",
        began.elapsed()
    );

    // The kill points: positions in the work, counted in committed pages and write batches
    // over all the daemon's lives (a restart goes on from its cursors): one at random in each
    // of three equal stretches of the first pass's reads and of five of its writes, so that
    // every kind of write (MQL records, stamps, alert tasks) gets killed in.
    let mut rng = ChaCha8Rng::seed_from_u64(KILL_SEED);
    let stretch = |from: u32, len: u32, parts: u32, k: u32| {
        let (start, end) = (from + len * k / parts, from + len * (k + 1) / parts);
        start + 1..=end.max(start + 1)
    };
    let at: Vec<u32> = (0..READ_KILLS)
        .map(|k| stretch(0, READ_STEPS, READ_KILLS, k))
        .chain((0..WRITE_KILLS).map(|k| stretch(READ_STEPS, WRITE_STEPS, WRITE_KILLS, k)))
        .map(|range| rng.random_range(range))
        .collect();
    let mut steps = 0;
    let mut kills = Vec::new();
    let store_path = dir.path().join("state.sqlite");
    // The clean run needs the instant the killed daemon went live: it starts as soon as
    // there is one, beside the kills.
    let mut clean = None;
    for target in at {
        let live = went_live(&store_path);
        if live && clean.is_none() {
            clean = Some(tokio::spawn(clean_run(world_at, store_path.clone())));
        }
        let (mut child, mut lines) = spawn_daemon(dir.path(), &env);
        let jitter = Duration::from_micros(rng.random_range(0..30_000));
        let mut last = String::new();
        let mut own_steps = 0;
        // At least one step of its own, then the target; a daemon past its first pass has no
        // more such steps to wait for, so it is killed where it is.
        while own_steps == 0 || steps < target {
            let Some(line) = next_line(&mut lines).await else {
                panic!(
                    "the daemon exited before it was killed: {:?}",
                    child.wait().await
                );
            };
            let text = message(&line);
            // A restart reads every source since its cursors first: its pages that find
            // nothing are not progress, nor the threshold history's last row, which every
            // read of it finds again.
            let moved = line["fields"]["records"].as_u64().is_some_and(|n| n > 0)
                && line["fields"]["source"] != "MQL_Threshold__History";
            if moved && (text.starts_with("committed a page") || text.starts_with("wrote a batch"))
            {
                steps += 1;
                own_steps += 1;
            }
            last = where_in_the_work(&line);
            if text.starts_with("first pass done")
                || (live && polled_every_source(&line) && pending(&store_path) == 0)
            {
                break;
            }
        }
        // The kill point's jitter: see the module doc.
        tokio::time::sleep(jitter).await;
        child.start_kill().unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        kills.push(format!("step {steps}, {jitter:?} after {last}"));
    }
    eprintln!(
        "crash test: killed {} times after {:?}:\n  {}",
        kills.len(),
        began.elapsed(),
        kills.join("\n  ")
    );

    // Let it finish: started again, it reads every source once since its cursors (or, on a
    // store not yet live, runs its first pass to the end), then stops on SIGTERM, sending the
    // writes waiting. After that, one more pass has nothing left to write.
    let live = went_live(&store_path);
    let (mut child, mut lines) = spawn_daemon(dir.path(), &env);
    loop {
        let line = next_line(&mut lines)
            .await
            .expect("the daemon runs until it has read every source");
        let done = if live {
            polled_every_source(&line)
        } else {
            message(&line).starts_with("first pass done")
        };
        if done {
            break;
        }
    }
    assert_eq!(terminate(&mut child).await, Some(0));
    let depth = Store::open_existing(&store_path)
        .unwrap()
        .outbox_depth()
        .unwrap();
    assert_eq!(depth, (0, 0), "writes left in the outbox (pending, parked)");
    let again = run_once_binary(dir.path(), &env).await;
    assert_eq!(again["written"], serde_json::json!({}), "{again}");
    eprintln!("crash test: finished after {:?}", began.elapsed());

    let (clean, clean_run) = match clean {
        Some(task) => task,
        None => tokio::spawn(clean_run(world_at, store_path.clone())),
    }
    .await
    .unwrap();
    eprintln!("crash test: compared after {:?}", began.elapsed());
    let after_kills = written(&killed);
    assert!(
        clean_run.mqls.len() > 1_000,
        "a world with work to do: {}",
        clean_run.mqls.len()
    );
    let ids = |w: &Written| w.mqls.keys().cloned().collect::<BTreeSet<_>>();
    let (a, b) = (ids(&after_kills), ids(&clean_run));
    assert_eq!(
        a.difference(&b).count() + b.difference(&a).count(),
        0,
        "MQL records only after the kills: {:?}; only in the clean run: {:?}",
        a.difference(&b).take(5).collect::<Vec<_>>(),
        b.difference(&a).take(5).collect::<Vec<_>>()
    );
    for (id, fields) in &clean_run.mqls {
        assert_eq!(&after_kills.mqls[id], fields, "MQL record {id}");
    }
    assert_eq!(after_kills.stamps.len(), clean_run.stamps.len());
    for (id, fields) in &clean_run.stamps {
        assert_eq!(after_kills.stamps.get(id), Some(fields), "stamps of {id}");
    }
    assert_eq!(after_kills.tasks, clean_run.tasks, "alert tasks");
    eprintln!(
        "crash test: {} MQL records, {} people stamped, {} alert tasks equal; {:?} in all",
        clean_run.mqls.len(),
        clean_run.stamps.len(),
        clean_run.tasks.len(),
        began.elapsed()
    );
    killed.shutdown().await;
    clean.shutdown().await;
}
