//! The command line as a user runs it: `check`, `simulate`, `status`, `explain`, and the
//! exit code 2 with a one-line message for input that cannot be used (a config, a mapping, a
//! store path this user cannot write), and one writer per store file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mqlsync(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mqlsync"))
        .args(args)
        .current_dir(dir)
        .env_remove("MQLSYNC_CONFIG")
        .env("MQLSYNC_LOG", "off")
        .output()
        .expect("mqlsync runs")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_validates_and_prints_the_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mqlsync.toml"),
        "[marketo]\nbase_url = \"https://123-ABC-456.mktorest.com\"\nclient_id = \"cid\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mqlsync"))
        .args(["--config", "mqlsync.toml", "check"])
        .current_dir(dir.path())
        .env("MQLSYNC_MARKETO_CLIENT_SECRET", "hunter2-very-secret")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("mapping: mappings/salesforce-marketo.toml (built in) (ok"),
        "{stdout}"
    );
    assert!(
        stdout.contains("<redacted: from MQLSYNC_MARKETO_CLIENT_SECRET>"),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2") && !text(&out.stderr).contains("hunter2"));
}

#[test]
fn simulate_gives_the_same_cycles_from_csv_and_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let out = mqlsync(
            &[
                "simulate",
                fixture(name).to_str().unwrap(),
                "--until",
                "2026-03-10T00:00:00Z",
                "--json",
            ],
            dir.path(),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["cycles"].clone()
    };
    let csv = run("history.csv");
    assert_eq!(csv, run("history.jsonl"));
    let ids: Vec<&str> = csv
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["external_id"].as_str().unwrap())
        .collect();
    // The student (00QCHL) is excluded; 00QDEV qualifies when the scheduled EMEA knob starts.
    assert_eq!(ids, ["00QADA-1", "00QBEN-1", "00QDEV-1"]);
    let dev = &csv[2];
    assert_eq!(dev["mql_at"], "2026-03-09T00:00:00Z");
    assert_eq!(csv[0]["status"], "Rejected");
    assert_eq!(csv[0]["outcome"], "Not now");
}

#[test]
fn simulate_into_a_store_then_status_and_explain_read_it_and_a_rerun_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let history = fixture("history.csv");
    let args = ["simulate", history.to_str().unwrap(), "--store", "s.sqlite"];
    assert!(mqlsync(&args, dir.path()).status.success());
    let status = mqlsync(&["status", "--store", "s.sqlite", "--json"], dir.path());
    let first: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(first["cursors"][0]["name"], "simulate:history.csv");
    assert_eq!(first["cursors"][0]["value"], "20");
    assert!(first["outbox_pending"].as_i64().unwrap() > 0);
    // The same history again: every event is a replay.
    let again = mqlsync(&[&args[..], &["--json"]].concat(), dir.path());
    let v: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(v["cycles_opened"], 0);
    assert_eq!(v["decisions"], serde_json::json!({}));
    // Nothing failed (simulate sends nothing): requeue finds nothing to put back.
    let requeue = mqlsync(&["requeue", "--store", "s.sqlite"], dir.path());
    assert!(requeue.status.success(), "{}", text(&requeue.stderr));
    assert!(text(&requeue.stdout).starts_with("0 failed writes are pending again"));
    let explain = mqlsync(&["explain", "00QCHL", "--store", "s.sqlite"], dir.path());
    let said = text(&explain.stdout);
    assert!(
        said.contains("not an MQL: excluded by the title rule (title"),
        "{said}"
    );
    let explain = mqlsync(
        &["explain", "00QCHL", "--store", "s.sqlite", "--json"],
        dir.path(),
    );
    let said: serde_json::Value = serde_json::from_slice(&explain.stdout).unwrap();
    assert_eq!(said["reason"]["code"], "excluded");
    assert_eq!(said["reason"]["rule"], "title");
    assert!(said["history"].as_array().is_some_and(|h| !h.is_empty()));
}

#[test]
fn a_bad_date_is_one_line_naming_file_line_and_field_exit_2_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(fixture("history.csv")).unwrap();
    let bad = good.replacen("2026-03-02T10:30:00Z", "2026-03-32T10:30:00Z", 1);
    std::fs::write(dir.path().join("bad.csv"), bad).unwrap();
    let out = mqlsync(&["simulate", "bad.csv", "--store", "s.sqlite"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("bad.csv:14: at: \"2026-03-32T10:30:00Z\" is not an instant"),
        "{err}"
    );
    assert!(
        !dir.path().join("s.sqlite").exists(),
        "the store was created"
    );
}

#[test]
fn a_threshold_that_ends_before_it_starts_is_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.jsonl"),
        "{\"type\":\"threshold\",\"at\":\"2026-03-01T00:00:00Z\",\"id\":\"a0T9\",\"score\":50,\"effective_from\":\"2026-03-10T00:00:00Z\",\"effective_to\":\"2026-03-01T00:00:00Z\"}\n",
    )
    .unwrap();
    let out = mqlsync(&["simulate", "t.jsonl"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("t.jsonl:1: effective_to: threshold a0T9"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_malformed_mapping_or_unknown_rule_field_is_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = mqlsync::mapping::DEFAULT_MAPPING
        .replace("attribute = \"region\"", "attribute = \"territory\"");
    std::fs::write(dir.path().join("m.toml"), mapping).unwrap();
    let out = mqlsync(&["check", "--mapping", "m.toml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("m.toml:")
            && err.contains("rules.region.attribute")
            && err.contains("territory"),
        "{err}"
    );
    std::fs::write(dir.path().join("m.toml"), "[crm\n").unwrap();
    let out = mqlsync(&["check", "--mapping", "m.toml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("m.toml:1"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_file_that_is_not_a_store_is_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("notes.sqlite"),
        "not a database at all, just some words in a file",
    )
    .unwrap();
    let out = mqlsync(&["status", "--store", "notes.sqlite"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is not an mqlsync store"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn demo_syncs_the_sandbox_and_shows_the_mqls_of_a_knob_turn() {
    let dir = tempfile::tempdir().unwrap();
    let out = mqlsync(
        &[
            "demo",
            "--leads",
            "600",
            "--seed",
            "7",
            "--store",
            "d/demo.sqlite",
        ],
        dir.path(),
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}{}", stdout, text(&out.stderr));
    assert!(
        stdout.contains("1. First sync")
            && stdout.contains("2. A sales manager turns the region=EMEA knob"),
        "{stdout}"
    );
    let new: usize = stdout
        .split(" new from the knob turn")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|n| n.trim().parse().ok())
        .expect("a count of new MQLs");
    assert!(new > 0, "turning the knob down made no MQL: {stdout}");
    // Every run used exactly the fewest calls its work allowed.
    for line in stdout.lines().filter(|l| l.starts_with("API calls:")) {
        let used: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
        let minimum: u64 = line
            .rsplit(": ")
            .next()
            .unwrap()
            .trim_end_matches(')')
            .parse()
            .unwrap();
        assert_eq!(used, minimum, "{line}");
    }
    assert!(dir.path().join("d/demo.sqlite").exists());
}

#[cfg(unix)]
#[test]
fn a_reader_that_goes_away_ends_a_printing_command_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    // 3,000 leads that all become MQLs: `simulate` prints far more than a pipe holds.
    let dir = tempfile::tempdir().unwrap();
    let mut history = String::from(
        "{\"type\": \"threshold\", \"at\": \"2026-03-01T08:00:00Z\", \"id\": \"a0T-ALL\", \"score\": 10}\n",
    );
    for i in 0..3000 {
        history.push_str(&format!(
            "{{\"type\": \"person\", \"at\": \"2026-03-02T09:00:00Z\", \"id\": \"00Q{i:09}\", \"kind\": \"Lead\", \"status\": \"Open - Not Contacted\", \"owner\": \"0055g0000000004AAA\", \"attributes\": {{\"region\": \"EMEA\"}}}}\n\
             {{\"type\": \"link\", \"at\": \"2026-03-02T09:00:00Z\", \"id\": \"00Q{i:09}\", \"kind\": \"Lead\", \"map_lead\": {i}}}\n\
             {{\"type\": \"score\", \"at\": \"2026-03-02T10:00:00Z\", \"map_lead\": {i}, \"value\": 50}}\n"
        ));
    }
    std::fs::write(dir.path().join("many.jsonl"), history).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqlsync"))
        .args(["simulate", "many.jsonl"])
        .current_dir(dir.path())
        .env_remove("MQLSYNC_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The pipe's read end is dropped here, like `| head -c 64`.
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn check_remote_against_the_sandbox_passes_and_a_wrong_field_is_exit_2_naming_the_key() {
    use mqlsync::sandbox::server::{Sandbox, SandboxOptions};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sandbox = runtime
        .block_on(Sandbox::start(SandboxOptions {
            leads: 20,
            ..SandboxOptions::default()
        }))
        .unwrap();
    let info = sandbox.connection_info();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mqlsync.toml"),
        format!(
            "[salesforce]\nbase_url = \"{}\"\nauth = \"client_credentials\"\nclient_id = \"{}\"\n[marketo]\nbase_url = \"{}\"\nclient_id = \"{}\"\n",
            info["salesforce"]["base_url"].as_str().unwrap(),
            info["salesforce"]["client_id"].as_str().unwrap(),
            info["marketo"]["base_url"].as_str().unwrap(),
            info["marketo"]["client_id"].as_str().unwrap(),
        ),
    )
    .unwrap();
    let bad = mqlsync::mapping::DEFAULT_MAPPING
        .replace("overdue = \"Overdue__c\"", "overdue = \"Overdue_Flag__c\"");
    std::fs::write(dir.path().join("bad.toml"), bad).unwrap();
    let check = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mqlsync"))
            .args(["--config", "mqlsync.toml", "check", "--remote"])
            .args(extra)
            .current_dir(dir.path())
            .env_remove("MQLSYNC_CONFIG")
            .env("MQLSYNC_LOG", "off")
            .env(
                "MQLSYNC_SALESFORCE_CLIENT_SECRET",
                info["salesforce"]["client_secret"].as_str().unwrap(),
            )
            .env(
                "MQLSYNC_MARKETO_CLIENT_SECRET",
                info["marketo"]["client_secret"].as_str().unwrap(),
            )
            .output()
            .unwrap()
    };
    let good = check(&[]);
    assert!(good.status.success(), "{}", text(&good.stderr));
    assert!(
        text(&good.stdout).contains("remote: ok"),
        "{}",
        text(&good.stdout)
    );
    let out = check(&["--mapping", "bad.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(
            "remote: crm.mql.overdue: MQL__c has no field Overdue_Flag__c, or the integration user cannot see it"
        ),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("1 problem(s)"),
        "{}",
        text(&out.stderr)
    );
}

/// The binary's own message, without the `mqlsync: ` prefix; asserts it is one line.
fn one_line_error(out: &Output) -> String {
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    err.trim_end()
        .strip_prefix("mqlsync: ")
        .unwrap_or_else(|| panic!("{err}"))
        .to_string()
}

/// Issue 11, point 4: an unknown config key names its line and section with the key meant; an
/// unknown variable names the variable; the logging variables are not settings.
#[test]
fn an_unknown_key_or_variable_is_one_line_naming_it_and_the_closest_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mqlsync.toml"),
        "store = \"s.sqlite\"\n[salesforce]\nbase_ulr = \"https://acme.my.salesforce.com\"\nauth = \"client_credentials\"\nclient_id = \"x\"\n",
    )
    .unwrap();
    let out = mqlsync(&["--config", "mqlsync.toml", "status"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        one_line_error(&out),
        "mqlsync.toml:3: salesforce.base_ulr: unknown key; did you mean `base_url`?"
    );
    let run = |var: &str| {
        Command::new(env!("CARGO_BIN_EXE_mqlsync"))
            .arg("check")
            .current_dir(dir.path())
            .env_remove("MQLSYNC_CONFIG")
            .env("MQLSYNC_LOG", "off")
            .env(var, "json")
            .output()
            .unwrap()
    };
    let out = run("MQLSYNC_SALESFORCE_BASE_ULR");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        one_line_error(&out),
        "environment: MQLSYNC_SALESFORCE_BASE_ULR: unknown variable; did you mean MQLSYNC_SALESFORCE_BASE_URL?"
    );
    let out = run("MQLSYNC_LOG_FORMAT");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Issue 11, point 4: a team pool id error points at the `pool` line.
#[test]
fn a_team_pool_error_names_the_pool_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = mqlsync::mapping::DEFAULT_MAPPING;
    let line = good[..good.find("pool = [\"0055g0000000001AAA\"").unwrap()]
        .matches('\n')
        .count()
        + 1;
    let bad = good.replacen("\"0055g0000000001AAA\"", "\"0055g0000000001AA\"", 1);
    std::fs::write(dir.path().join("m.toml"), bad).unwrap();
    let out = mqlsync(&["check", "--mapping", "m.toml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        one_line_error(&out).starts_with(&format!(
            "m.toml:{line}: teams[0].pool: \"0055g0000000001AA\""
        )),
        "{}",
        text(&out.stderr)
    );
}

/// Issue 11, point 5: `status`, `explain` and `requeue` (and `simulate`) work with a config whose
/// secrets are not set; `run` still says which one is missing.
#[test]
fn store_commands_need_no_secrets_and_run_names_the_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mqlsync.toml"),
        "store = \"s.sqlite\"\n[salesforce]\nbase_url = \"https://acme.my.salesforce.com\"\nauth = \"client_credentials\"\nclient_id = \"x\"\nclient_secret_file = \"/nonexistent/secret\"\n[marketo]\nbase_url = \"https://123-ABC-456.mktorest.com\"\nclient_id = \"y\"\n",
    )
    .unwrap();
    let history = fixture("history.csv");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mqlsync"))
            .arg("--config")
            .arg("mqlsync.toml")
            .args(args)
            .current_dir(dir.path())
            .env_remove("MQLSYNC_CONFIG")
            .env_remove("MQLSYNC_SALESFORCE_CLIENT_SECRET")
            .env_remove("MQLSYNC_SALESFORCE_REFRESH_TOKEN")
            .env_remove("MQLSYNC_MARKETO_CLIENT_SECRET")
            .env("MQLSYNC_LOG", "off")
            .output()
            .unwrap()
    };
    let out = run(&["simulate", history.to_str().unwrap(), "--store", "s.sqlite"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["explain", "00QCHL"],
        &["requeue"],
    ] {
        let out = run(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
    let out = run(&["run", "--once"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        one_line_error(&out).contains("cannot read the secret file /nonexistent/secret"),
        "{}",
        text(&out.stderr)
    );
}

/// Issue 11, point 5: `status` names the records of pending writes, and `--json` holds them and
/// its cursors as values.
#[test]
fn status_lists_the_records_waiting_in_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let history = fixture("history.csv");
    let args = ["simulate", history.to_str().unwrap(), "--store", "s.sqlite"];
    assert!(mqlsync(&args, dir.path()).status.success());
    let json = mqlsync(&["status", "--store", "s.sqlite", "--json"], dir.path());
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let keys: Vec<&str> = v["pending_writes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys.len() as i64,
        v["outbox_pending"].as_i64().unwrap().min(20)
    );
    assert!(keys.contains(&"MQL:00QADA-1"), "{keys:?}");
    assert_eq!(
        v["cursors"][0],
        serde_json::json!({"name": "simulate:history.csv", "value": "20", "saved_at": v["cursors"][0]["saved_at"]})
    );
    let said = text(&mqlsync(&["status", "--store", "s.sqlite"], dir.path()).stdout);
    assert!(said.contains("  pending writes:\n"), "{said}");
    assert!(said.contains("\n    MQL:00QADA-1\n"), "{said}");
}

/// Holds the writer lock of the store `name` in `dir` as a running mqlsync would: an OS lock on
/// `{real path}.lock` with this process's id in it.
fn hold_writer_lock(dir: &Path, name: &str) -> std::fs::File {
    use std::io::Write as _;
    let lock = std::fs::canonicalize(dir)
        .unwrap()
        .join(format!("{name}.lock"));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(lock)
        .unwrap();
    file.try_lock().unwrap();
    write!(file, "{}", std::process::id()).unwrap();
    file
}

/// Issue 11, point 4: two first runs on a fresh store. The second stops with the writer-lock
/// message before it creates anything (not "table cursors already exists" nor "database is
/// locked").
#[test]
fn a_second_writer_of_a_fresh_store_stops_at_the_lock_before_creating_it() {
    let dir = tempfile::tempdir().unwrap();
    let _held = hold_writer_lock(dir.path(), "fresh.sqlite");
    let history = fixture("history.csv");
    let out = mqlsync(
        &[
            "simulate",
            history.to_str().unwrap(),
            "--store",
            "fresh.sqlite",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let said = one_line_error(&out);
    assert!(
        said.starts_with(&format!(
            "store fresh.sqlite is being written by another mqlsync process (pid {})",
            std::process::id()
        )),
        "{said}"
    );
    assert!(!dir.path().join("fresh.sqlite").exists());
}

/// Issue 11, point 12: a second writer reaching the store through a symlink to the file or a
/// relative path with `..` takes the same lock as the first (it wrote every alert task twice
/// when the lock followed the path as typed); readers still read.
#[cfg(unix)]
#[test]
fn one_writer_per_store_file_through_a_symlink_or_a_relative_path() {
    let dir = tempfile::tempdir().unwrap();
    let history = fixture("history.csv");
    let real = dir.path().join("data/s.sqlite");
    let simulate = |store: &str| {
        mqlsync(
            &["simulate", history.to_str().unwrap(), "--store", store],
            dir.path(),
        )
    };
    assert!(simulate("data/s.sqlite").status.success());
    std::os::unix::fs::symlink("data/s.sqlite", dir.path().join("link.sqlite")).unwrap();
    // Another process's run holds the store by its real path.
    let store = mqlsync::store::Store::open(&real).unwrap();
    let _writer = store.lock_writer().unwrap();
    for path in ["link.sqlite", "./data/../data/s.sqlite"] {
        let out = simulate(path);
        assert_eq!(out.status.code(), Some(1), "{path}: {}", text(&out.stderr));
        assert!(
            one_line_error(&out).contains("is being written by another mqlsync process"),
            "{path}: {}",
            text(&out.stderr)
        );
        let out = mqlsync(&["requeue", "--store", path], dir.path());
        assert_eq!(out.status.code(), Some(1), "{path}: {}", text(&out.stderr));
        let out = mqlsync(&["status", "--store", path], dir.path());
        assert!(out.status.success(), "{path}: {}", text(&out.stderr));
    }
}

/// Issue 11, point 4: a damaged store is one line naming it and what to do, exit 2.
#[test]
fn a_damaged_store_is_one_line_naming_it_exit_2() {
    use std::io::{Seek as _, SeekFrom, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let history = fixture("history.csv");
    let args = ["simulate", history.to_str().unwrap(), "--store", "s.sqlite"];
    assert!(mqlsync(&args, dir.path()).status.success());
    let path = dir.path().join("s.sqlite");
    let root: u64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = 'cycles'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start((root - 1) * 16_384 + 8)).unwrap();
    f.write_all(&[0xff; 4]).unwrap();
    drop(f);
    for args in [&["status", "--store", "s.sqlite"][..], &args[..]] {
        let out = mqlsync(args, dir.path());
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        let said = one_line_error(&out);
        assert!(
            said.starts_with("store s.sqlite is damaged (SQLite integrity check: ")
                && said.ends_with("then copy your last backup of the store to s.sqlite"),
            "{said}"
        );
    }
}

/// Runs mqlsync as a user the file permissions apply to: this user when the tests do not run
/// as root, else `nobody` through setpriv(1). `None` where that cannot be done here.
#[cfg(unix)]
fn mqlsync_unprivileged(args: &[&str], dir: &Path) -> Option<Output> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some(mqlsync(args, dir));
    }
    let run = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_mqlsync"))
            .args(args)
            .current_dir(dir)
            .env_remove("MQLSYNC_CONFIG")
            .env("MQLSYNC_LOG", "off")
            .output()
            .ok()
    };
    run(&["--version"])
        .filter(|o| o.status.success())
        .and_then(|_| run(args))
}

/// Issue 11, point 4: a store where this user cannot write says "permission denied" with the
/// path, or that its directory is read-only; not SQLite's "unable to open database file".
#[cfg(unix)]
#[test]
fn a_store_this_user_cannot_write_says_so_naming_the_path_exit_2() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let history = fixture("history.csv");
    std::fs::create_dir(dir.path().join("ro")).unwrap();
    let args = [
        "simulate",
        history.to_str().unwrap(),
        "--store",
        "ro/old.sqlite",
    ];
    assert!(mqlsync(&args, dir.path()).status.success());
    std::fs::copy(&history, dir.path().join("history.csv")).unwrap();
    let mode = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    mode(dir.path(), 0o755);
    mode(&dir.path().join("ro"), 0o555);
    mode(&dir.path().join("history.csv"), 0o644);
    let run = |args: &[&str]| mqlsync_unprivileged(args, dir.path());
    let Some(out) = run(&["simulate", "history.csv", "--store", "ro/new.sqlite"]) else {
        eprintln!("skipped: cannot run mqlsync as a user without root's permissions here");
        return;
    };
    for (out, expected) in [
        (
            out,
            "permission denied: cannot create the store at ro/new.sqlite (",
        ),
        (
            run(&["simulate", "history.csv", "--store", "ro/sub/new.sqlite"]).unwrap(),
            "permission denied: cannot create the store at ro/sub/new.sqlite (",
        ),
        (
            run(&["status", "--store", "ro/old.sqlite"]).unwrap(),
            "the store at ro/old.sqlite is in a read-only directory (",
        ),
        (
            run(&["simulate", "history.csv", "--store", "ro/old.sqlite"]).unwrap(),
            "the store at ro/old.sqlite is in a read-only directory (",
        ),
    ] {
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        let said = one_line_error(&out);
        assert!(said.starts_with(expected), "{said}");
        assert!(
            !said.contains("unable to open") && !said.contains("Error code"),
            "{said}"
        );
    }
    mode(&dir.path().join("ro"), 0o755);
}

/// Issue 11, point 4: a store on a read-only mount says so. Needs a mount namespace (root with
/// CAP_SYS_ADMIN); elsewhere the test says it was skipped.
#[cfg(target_os = "linux")]
#[test]
fn a_store_on_a_read_only_file_system_says_so_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let history = fixture("history.csv");
    let args = [
        "simulate",
        history.to_str().unwrap(),
        "--store",
        "mnt/s.sqlite",
    ];
    assert!(mqlsync(&args, dir.path()).status.success());
    let mnt = std::fs::canonicalize(dir.path().join("mnt")).unwrap();
    let read_only = |args: &[&str]| {
        Command::new("unshare")
            .args(["-m", "sh", "-c"])
            .arg(format!(
                "mount --bind '{0}' '{0}' && mount -o remount,bind,ro '{0}' && exec \"$0\" \"$@\"",
                mnt.display()
            ))
            .args(args)
            .current_dir(dir.path())
            .env_remove("MQLSYNC_CONFIG")
            .env("MQLSYNC_LOG", "off")
            .output()
            .ok()
    };
    if !read_only(&["true"]).is_some_and(|o| o.status.success()) {
        eprintln!("skipped: cannot mount read-only here");
        return;
    }
    let bin = env!("CARGO_BIN_EXE_mqlsync");
    for args in [
        &[bin, "status", "--store", "mnt/s.sqlite"][..],
        &[
            bin,
            "simulate",
            history.to_str().unwrap(),
            "--store",
            "mnt/s.sqlite",
        ],
        &[
            bin,
            "simulate",
            history.to_str().unwrap(),
            "--store",
            "mnt/new/s.sqlite",
        ],
    ] {
        let out = read_only(args).unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        let said = one_line_error(&out);
        assert!(said.contains(" is on a read-only file system; "), "{said}");
    }
}
