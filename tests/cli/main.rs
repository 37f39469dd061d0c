//! The command line as a user runs it: `check`, `simulate`, `status`, `explain`, and the
//! exit code 2 with a one-line message for input that cannot be used.

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
    assert_eq!(first["cursors"][0][0], "simulate:history.csv");
    assert_eq!(first["cursors"][0][1], "20");
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

// --- simulate ---

/// `tests/fixtures/history-ignored-rows.csv`, the messages of its three ignored rows by line.
fn ignored_rows() -> (String, [(u64, &'static str); 3]) {
    let file = fixture("history-ignored-rows.csv").display().to_string();
    let rows = [
        (
            11,
            "cycle: row at 2026-03-02T16:00:00Z is older than the one already applied at 2026-03-03T09:00:00Z for 00QEVA-1; row ignored",
        ),
        (12, "cycle: MQL record 00QEVA-3 does not exist; row ignored"),
        (
            14,
            "cycle: row at 2026-03-19T12:00:00Z is older than MQL record 00QEVA-2 itself (MQL at 2026-03-20T10:00:00Z); row ignored",
        ),
    ];
    (file, rows)
}

#[test]
fn simulate_warns_of_each_ignored_cycle_row_with_its_file_and_line_and_audits_it() {
    let dir = tempfile::tempdir().unwrap();
    let (file, rows) = ignored_rows();
    let expected_stderr: String = rows
        .iter()
        .map(|(line, message)| format!("{file}:{line}: {message}\n"))
        .collect();
    let out = mqlsync(
        &["simulate", &file, "--store", "s.sqlite", "--json"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), expected_stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let warnings: Vec<serde_json::Value> = rows
        .iter()
        .map(|(line, message)| serde_json::json!({"file": file, "line": line, "message": message}))
        .collect();
    assert_eq!(v["warnings"], serde_json::Value::from(warnings));
    // The rows changed nothing: 00QEVA-1 stays Converted, 00QEVA-2 is Working from 15:00.
    assert_eq!(v["cycles"][0]["status"], "Converted");
    assert_eq!(v["cycles"][1]["sal_at"], "2026-03-20T15:00:00Z");

    // Each is in the store's audit log, where `explain` of the lead finds it.
    let explain = mqlsync(
        &["explain", "00QEVA", "--store", "s.sqlite", "--json"],
        dir.path(),
    );
    let said: serde_json::Value = serde_json::from_slice(&explain.stdout).unwrap();
    let ignored: Vec<(&str, &str)> = said["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["action"] == "record")
        .map(|h| {
            (
                h["reason"]["code"].as_str().unwrap(),
                h["reason"]["external_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ignored,
        [
            ("edit_stale", "00QEVA-1"),
            ("edit_unknown_cycle", "00QEVA-3"),
            ("edit_stale", "00QEVA-2"),
        ]
    );
    let explain = mqlsync(&["explain", "00QEVA", "--store", "s.sqlite"], dir.path());
    assert!(
        text(&explain.stdout).contains(
            "an edit of MQL record 00QEVA-3 made at 2026-03-05T10:00:00Z was ignored: this store has no MQL with that external id"
        ),
        "{}",
        text(&explain.stdout)
    );

    // Without --json the warnings are the same lines, and the summary counts them.
    let out = mqlsync(&["simulate", &file], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), expected_stderr);
    assert!(
        text(&out.stdout)
            .trim_end()
            .ends_with("; 3 rows ignored (warnings on stderr)"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn simulate_json_gives_each_persons_stamps_after_the_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = ignored_rows();
    let out = mqlsync(&["simulate", &file, "--json"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // By hand from the fixture: 00QEVA MQLs at 10:00 on 2 March (score 120 >= 100), is
    // accepted at 14:00, converted the next day, and MQLs again on 20 March (150; the
    // 15-day re-MQL window is over), accepted at 15:00. 00QFOX stays below (40).
    assert_eq!(
        v["persons"],
        serde_json::json!([
            {
                "crm_id": "00QEVA",
                "status": "Sales Accepted",
                "mql_recent": "2026-03-20T10:00:00Z",
                "mql_original": "2026-03-02T10:00:00Z",
                "sal_recent": "2026-03-20T15:00:00Z",
                "sal_original": "2026-03-02T14:00:00Z",
                "mql_count": 2,
            },
            {
                "crm_id": "00QFOX",
                "status": null,
                "mql_recent": null,
                "mql_original": null,
                "sal_recent": null,
                "sal_original": null,
                "mql_count": 0,
            },
        ])
    );
    // The fields that were there before are unchanged.
    assert_eq!(v["events"], 14);
    assert_eq!(v["cycles_opened"], 2);
    assert_eq!(v["cycles"].as_array().unwrap().len(), 2);
}

#[test]
fn simulate_replayed_into_the_same_store_warns_nothing_and_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = ignored_rows();
    let args = ["simulate", file.as_str(), "--store", "s.sqlite", "--json"];
    let audit_entries = || {
        let status = mqlsync(&["status", "--store", "s.sqlite", "--json"], dir.path());
        let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        v["audit_entries"].as_i64().unwrap()
    };
    let first = mqlsync(&args, dir.path());
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert_eq!(text(&first.stderr).lines().count(), 3);
    let entries = audit_entries();
    // Every row is a version already seen, the ignored ones included: not older, replayed.
    let again = mqlsync(&args, dir.path());
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(text(&again.stderr), "");
    let v: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(v["warnings"], serde_json::json!([]));
    assert_eq!(v["decisions"], serde_json::json!({}));
    assert_eq!(audit_entries(), entries);
    // The stamps come from the store's state, the same as after the first run.
    let first: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(v["persons"], first["persons"]);
}
