//! `mqlsync report` and `mqlsync whatif` over a store built by `simulate` from a known history
//! (`tests/fixtures/report-history.csv`), every figure checked against values worked out by
//! hand from that history. The history's comments are here, since a CSV has none:
//!
//! - the SDR NA team (New York, 09:00-17:00, Thanksgiving 26 Nov a holiday) must accept
//!   within 4 business hours and loses the MQL after 8; SDR EMEA (Berlin) the same;
//! - C (00QC) crosses 100 on Mon 2 Nov 10:00 NY and is rejected two hours later (Bad Timing:
//!   30 days' cool-down); it crosses again on Thu 3 Dec, a second cycle still inside its SLA
//!   at the report's now (3 Dec 16:00Z);
//! - D (00QD) crosses on Tue 3 Nov 09:00 NY; nobody answers: overdue at 13:00, reassigned to
//!   R2 at 17:00 (which clears the flag), who accepts on Wed 10:00: 9 business hours;
//! - A (00QA) crosses on Fri 6 Nov 15:00 NY and is accepted on Mon 10:00: 2 + 1 business
//!   hours over the weekend; converted on 20 Nov, 13.79 days after its MQL;
//! - F (00QF, EMEA, account 001ACC1) crosses EMEA's 70 on Thu 12 Nov 11:00 Berlin; not
//!   answered, it moves to R5 on Fri and goes overdue again; an opportunity on its account on
//!   Mon 16 Nov 09:00Z converts it (3.96 days);
//! - the knob turn: the default threshold goes from 100 to 80 on Tue 17 Nov 19:00 NY, which
//!   makes E (00QE, at 90 since 10 Nov) an MQL then (its New York day is the 17th); E rejects
//!   it on Wed 10:00 (No Budget);
//! - B (00QB) crosses 80 on Wed 25 Nov 14:00 NY; with Thanksgiving off, its SLA runs to Fri
//!   10:00 and its acceptance on Fri 09:30 is in time: 3.5 business hours.

use std::path::Path;

use serde_json::{Value, json};

use super::{fixture, mqlsync, text};

const R1: &str = "0055g0000000001AAA";
const R2: &str = "0055g0000000002AAA";
const R4: &str = "0055g0000000004AAA";
const R5: &str = "0055g0000000005AAA";
/// The report's now: C's second MQL is an hour old, inside its SLA.
const NOW: &str = "2026-12-03T16:00:00Z";

/// The default mapping with two checklist attributes and reports in New York time.
fn report_mapping() -> String {
    let edits = [
        (
            "[attributes]\n",
            "[attributes]\nbudget = { lead = \"Budget__c\", contact = \"Budget__c\" }\nauthority = { lead = \"Authority__c\", contact = \"Authority__c\" }\n",
        ),
        ("time_zone = \"UTC\"", "time_zone = \"America/New_York\""),
        ("checklist = []", "checklist = [\"budget\", \"authority\"]"),
    ];
    edits.iter().fold(
        mqlsync::mapping::DEFAULT_MAPPING.to_string(),
        |m, (from, to)| {
            assert!(m.contains(from), "{from}");
            m.replacen(from, to, 1)
        },
    )
}

/// A directory with `m.toml` and `s.db`, the fixture history simulated into it.
fn simulated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.toml"), report_mapping()).unwrap();
    let history = fixture("report-history.csv");
    let out = mqlsync(
        &[
            "simulate",
            history.to_str().unwrap(),
            "--mapping",
            "m.toml",
            "--store",
            "s.db",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    dir
}

fn report_json(dir: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "report",
        "--store",
        "s.db",
        "--mapping",
        "m.toml",
        "--at",
        NOW,
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    let out = mqlsync(&args, dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_figure_of_the_report_matches_the_history_worked_out_by_hand() {
    let dir = simulated();
    let r = report_json(dir.path(), &["--by", "month", "--group", "segment"]);
    // Seven cycles of six people: C counts twice.
    assert_eq!(
        r["totals"],
        json!({"mqls": 7, "people": 6, "open": 1, "working": 2, "rejected": 2, "converted": 2,
               "accepted": 3, "sla_known": 6, "sla_missed": 2, "pct_missed_sla": 33.3,
               "pct_converted": 28.6, "pct_rejected": 28.6})
    );
    assert_eq!(
        r["volume"],
        json!([
            {"period": "2026-11", "group": "default", "mqls": 5, "people": 5},
            {"period": "2026-11", "group": "region=EMEA", "mqls": 1, "people": 1},
            {"period": "2026-12", "group": "default", "mqls": 1, "people": 1},
        ])
    );
    assert_eq!(r["qualified_by"], json!([{"key": "score", "count": 7}]));
    // An attribute grouping reads the attribute from each cycle's attributes.
    let by_region = report_json(dir.path(), &["--by", "month", "--group", "region"]);
    assert_eq!(
        by_region["volume"],
        json!([
            {"period": "2026-11", "group": "EMEA", "mqls": 1, "people": 1},
            {"period": "2026-11", "group": "NA", "mqls": 5, "people": 5},
            {"period": "2026-12", "group": "NA", "mqls": 1, "people": 1},
        ])
    );
    // By the owner now: D went to R2 and F to R5 when they were reassigned. A took 3
    // business hours (Friday afternoon, Monday morning), B 3.5 (Thanksgiving skipped).
    assert_eq!(
        r["reps"],
        json!([
            {"owner": R1, "mqls": 5, "open": 1, "working": 1, "rejected": 2, "converted": 1,
             "overdue": 0, "pct_rejected": 40.0, "accepted": 2, "avg_business_hours_to_sal": 3.25},
            {"owner": R2, "mqls": 1, "open": 0, "working": 1, "rejected": 0, "converted": 0,
             "overdue": 0, "pct_rejected": 0.0, "accepted": 1, "avg_business_hours_to_sal": 9.0},
            {"owner": R5, "mqls": 1, "open": 0, "working": 0, "rejected": 0, "converted": 1,
             "overdue": 1, "pct_rejected": 0.0, "accepted": 0, "avg_business_hours_to_sal": null},
        ])
    );
    // The SLA is the first owner's: R1 missed D's, R4 missed F's; C's second cycle is still
    // inside its SLA, so it is in neither count.
    assert_eq!(
        r["sla_by_rep"],
        json!([
            {"owner": R1, "with_sla": 6, "sla_known": 5, "sla_met": 4, "sla_missed": 1,
             "pct_missed_sla": 20.0, "reassigned": 1},
            {"owner": R4, "with_sla": 1, "sla_known": 1, "sla_met": 0, "sla_missed": 1,
             "pct_missed_sla": 100.0, "reassigned": 1},
        ])
    );
    assert_eq!(
        r["overdue_by_owner_region"],
        json!([{"owner": R5, "region": "EMEA", "overdue": 1, "mqls": 1}])
    );
    assert_eq!(
        r["rejected_by_reason"],
        json!([{"key": "Bad Timing", "count": 1}, {"key": "No Budget", "count": 1}])
    );
    assert_eq!(
        r["timeframes"],
        json!([
            {"period": "2026-11", "mqls": 6, "sla_known": 6, "sla_missed": 2, "pct_missed_sla": 33.3,
             "converted": 2, "pct_converted": 33.3, "rejected": 2, "pct_rejected": 33.3},
            {"period": "2026-12", "mqls": 1, "sla_known": 0, "sla_missed": 0, "pct_missed_sla": null,
             "converted": 0, "pct_converted": 0.0, "rejected": 0, "pct_rejected": 0.0},
        ])
    );
    // E's campaign is its last score change's: the knob turn crossed no change of its own.
    assert_eq!(
        r["campaigns"],
        json!([
            {"campaign": "Webinar 2026", "mqls": 3, "accepted": 2, "converted": 1, "pct_converted": 33.3},
            {"campaign": "Pricing e-book", "mqls": 2, "accepted": 0, "converted": 0, "pct_converted": 0.0},
            {"campaign": "Demo request", "mqls": 1, "accepted": 1, "converted": 0, "pct_converted": 0.0},
            {"campaign": "Trade show Berlin", "mqls": 1, "accepted": 0, "converted": 1, "pct_converted": 100.0},
        ])
    );
    let band = |from: f64, mqls: i64, accepted: f64, converted: f64, rejected: f64| {
        (from, mqls, accepted, converted, rejected)
    };
    let bands: Vec<(f64, i64, f64, f64, f64)> = r["score_bands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            band(
                b["score_from"].as_f64().unwrap(),
                b["mqls"].as_i64().unwrap(),
                b["pct_accepted"].as_f64().unwrap(),
                b["pct_converted"].as_f64().unwrap(),
                b["pct_rejected"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        bands,
        vec![
            band(70.0, 1, 0.0, 100.0, 0.0),    // F
            band(90.0, 1, 0.0, 0.0, 100.0),    // E
            band(100.0, 1, 0.0, 0.0, 100.0),   // C's first
            band(110.0, 1, 100.0, 0.0, 0.0),   // B
            band(120.0, 1, 100.0, 100.0, 0.0), // A
            band(130.0, 1, 100.0, 0.0, 0.0),   // D
            band(140.0, 1, 0.0, 0.0, 0.0),     // C's second
        ]
    );
    let velocity = |i: usize, key: &str| r["score_bands"][i][key].clone();
    assert_eq!(velocity(0, "avg_days_to_opportunity"), json!(3.96));
    assert_eq!(velocity(0, "avg_days_to_converted"), json!(3.96));
    assert_eq!(velocity(3, "avg_business_hours_to_sal"), json!(3.5));
    assert_eq!(velocity(4, "avg_business_hours_to_sal"), json!(3.0));
    assert_eq!(velocity(4, "avg_days_to_converted"), json!(13.79));
    assert_eq!(velocity(5, "avg_business_hours_to_sal"), json!(9.0));
    // The knob turn splits the default segment's MQLs between 100 and 80.
    assert_eq!(
        r["thresholds"],
        json!([
            {"segment": "default", "threshold": 80.0, "mqls": 3, "accepted": 1, "converted": 0,
             "pct_converted": 0.0, "with_opportunity": 0, "opportunities": 0, "won": 0},
            {"segment": "default", "threshold": 100.0, "mqls": 3, "accepted": 2, "converted": 1,
             "pct_converted": 33.3, "with_opportunity": 0, "opportunities": 0, "won": 0},
            {"segment": "region=EMEA", "threshold": 70.0, "mqls": 1, "accepted": 0, "converted": 1,
             "pct_converted": 100.0, "with_opportunity": 1, "opportunities": 1, "won": 0},
        ])
    );
    let steps: Vec<(String, f64)> = r["threshold_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["threshold_id"].as_str().unwrap().to_string(),
                s["score"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        vec![
            ("a0T-DEFAULT".to_string(), 100.0),
            ("a0T-EMEA".to_string(), 70.0),
            ("a0T-DEFAULT".to_string(), 80.0),
        ]
    );
    // A and D filled both fields, B and F one, C and E none.
    assert_eq!(
        r["checklist"],
        json!({"fields": ["budget", "authority"], "by_status": [
            {"status": "Converted", "mqls": 2, "pct_filled": 75.0, "complete": 1},
            {"status": "Open", "mqls": 1, "pct_filled": 0.0, "complete": 0},
            {"status": "Rejected", "mqls": 2, "pct_filled": 0.0, "complete": 0},
            {"status": "Working", "mqls": 2, "pct_filled": 75.0, "complete": 1},
        ]})
    );
}

#[test]
fn days_are_the_report_zones_and_a_range_takes_whole_days() {
    let dir = simulated();
    // E's MQL at 00:00Z on the 18th is the 17th in New York.
    let r = report_json(dir.path(), &["--by", "day", "--group", "owner"]);
    let days: Vec<(String, String, i64)> = r["volume"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["period"].as_str().unwrap().to_string(),
                v["group"].as_str().unwrap().to_string(),
                v["mqls"].as_i64().unwrap(),
            )
        })
        .collect();
    let day = |d: &str, o: &str| (d.to_string(), o.to_string(), 1);
    assert_eq!(
        days,
        vec![
            day("2026-11-02", R1),
            day("2026-11-03", R2),
            day("2026-11-06", R1),
            day("2026-11-12", R5),
            day("2026-11-17", R1),
            day("2026-11-25", R1),
            day("2026-12-03", R1),
        ]
    );
    // --to names a day it includes; C's second MQL (3 Dec) is outside November.
    let r = report_json(dir.path(), &["--from", "2026-11-01", "--to", "2026-11-30"]);
    assert_eq!(r["totals"]["mqls"], json!(6));
    // 18 Nov, in New York, starts after E's MQL (17 Nov 19:00 NY).
    let r = report_json(dir.path(), &["--from", "2026-11-18", "--by", "week"]);
    let weeks: Vec<&str> = r["timeframes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["period"].as_str().unwrap())
        .collect();
    assert_eq!(weeks, vec!["2026-W48", "2026-W49"]);
    assert_eq!(r["totals"]["mqls"], json!(2));
}

#[test]
fn the_table_and_the_csv_carry_the_same_figures() {
    let dir = simulated();
    let out = mqlsync(
        &[
            "report",
            "--store",
            "s.db",
            "--mapping",
            "m.toml",
            "--at",
            NOW,
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.contains("periods in America/New_York"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["Webinar", "2026", "3", "2", "1", "33.3%"]),
        "{table}"
    );
    let out = mqlsync(
        &[
            "report",
            "--store",
            "s.db",
            "--mapping",
            "m.toml",
            "--at",
            NOW,
            "--format",
            "csv",
            "--out",
            "r.csv",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let csv = std::fs::read_to_string(dir.path().join("r.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "section,key,group,metric,value");
    for expected in [
        "totals,all,,mqls,7",
        "totals,all,,% missed SLA,33.3",
        "campaigns,Webinar 2026,,% converted,33.3",
        "sla,0055g0000000004AAA,,% missed SLA,100.0",
        "thresholds,region=EMEA,70,opportunities,1",
        "timeframes,2026-12,,% missed SLA,",
    ] {
        assert!(lines.contains(&expected), "{expected} missing from\n{csv}");
    }
}

#[test]
fn whatif_replays_the_segment_at_another_threshold_beside_what_happened() {
    let dir = simulated();
    let out = mqlsync(
        &[
            "whatif",
            "--store",
            "s.db",
            "--mapping",
            "m.toml",
            "--segment",
            "default",
            "--threshold",
            "120",
            "--format",
            "json",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let w: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(w["thresholds_then"], json!([80.0, 100.0]));
    // Then (replayed, nobody's answers): C, D and A in W45, E at the knob turn (W47), B
    // (W48); C's second crossing finds its first cycle still open. At 120: A and D (W45)
    // and C at 140 (W49). A converted, of those three.
    let weeks: Vec<(String, i64, i64, i64, i64)> = w["weeks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["week"].as_str().unwrap().to_string(),
                r["actual"].as_i64().unwrap(),
                r["replayed_then"].as_i64().unwrap(),
                r["at_threshold"].as_i64().unwrap(),
                r["converted_people"].as_i64().unwrap(),
            )
        })
        .collect();
    let week = |w: &str, a, t, at, c| (w.to_string(), a, t, at, c);
    assert_eq!(
        weeks,
        vec![
            week("2026-W45", 3, 3, 2, 1),
            week("2026-W47", 1, 1, 0, 0),
            week("2026-W48", 1, 1, 0, 0),
            week("2026-W49", 1, 0, 1, 0),
        ]
    );
    assert_eq!(
        w["total"],
        json!({"week": "total", "actual": 6, "replayed_then": 5, "at_threshold": 3, "change": -2,
               "converted_people": 1, "pct_converted": 33.3})
    );
    // The store was only read: the same report before and after.
    let before = report_json(dir.path(), &[]);
    let out = mqlsync(
        &[
            "whatif",
            "--store",
            "s.db",
            "--mapping",
            "m.toml",
            "--segment",
            "region=EMEA",
            "--threshold",
            "80",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // At 80, F (75) is never an MQL in EMEA.
    let table = text(&out.stdout);
    assert!(
        table.lines().any(
            |l| l.split_whitespace().collect::<Vec<_>>() == ["total", "1", "1", "0", "-1", "-"]
        ),
        "{table}"
    );
    assert_eq!(report_json(dir.path(), &[]), before);
}

#[test]
fn a_group_segment_or_date_that_cannot_be_used_is_exit_2_naming_the_flag() {
    let dir = simulated();
    for (args, words) in [
        (
            vec!["report", "--group", "territory"],
            vec!["--group", "territory", "region", "business_line"],
        ),
        (
            vec!["report", "--from", "last week"],
            vec!["--from", "last week"],
        ),
        (
            vec!["whatif", "--segment", "EMEA", "--threshold", "50"],
            vec!["--segment", "attribute=value"],
        ),
    ] {
        let mut full = args.clone();
        full.extend(["--store", "s.db", "--mapping", "m.toml"]);
        let out = mqlsync(&full, dir.path());
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        for w in words {
            assert!(err.contains(w), "{w:?} not in {err}");
        }
    }
}

/// Debian's Chromium: `$REPORT_TEST_CHROMIUM` (which `.ci/run` sets after installing the
/// package), else `chromium` on the PATH.
fn chromium() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("REPORT_TEST_CHROMIUM") {
        return Some(path.into());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("chromium"))
            .find(|p| p.is_file())
    })
}

/// Runs headless Chromium with the flags a closed network needs, in its own profile.
fn headless(browser: &Path, profile: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium runs")
}

#[test]
fn the_html_report_draws_every_chart_in_headless_chromium_without_a_console_error() {
    let Some(browser) = chromium() else {
        eprintln!(
            "skipped: no chromium on the PATH (Debian's `chromium` package; .ci/run installs it)"
        );
        return;
    };
    let dir = simulated();
    let out = mqlsync(
        &[
            "report",
            "--store",
            "s.db",
            "--mapping",
            "m.toml",
            "--at",
            NOW,
            "--by",
            "week",
            "--format",
            "html",
            "--out",
            "report.html",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = dir.path().join("report.html");
    // Self-contained: nothing to fetch.
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains(" src="));
    let url = format!("file://{}", page.display());
    let out = headless(&browser, &dir.path().join("profile"), &["--dump-dom", &url]);
    let dom = text(&out.stdout);
    let body = dom
        .lines()
        .find(|l| l.contains("<body"))
        .unwrap_or_else(|| {
            panic!(
                "no <body> in what Chromium rendered:\n{dom}\n{}",
                text(&out.stderr)
            )
        });
    // The page's own check: 4 charts, each drew a mark with a size, no error event.
    assert!(
        body.contains("data-charts=\"4\"")
            && body.contains("data-drawn=\"4\"")
            && body.contains("data-errors=\"0\""),
        "{body}"
    );
    let console: Vec<String> = text(&out.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(String::from)
        .collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report.png");
    let _ = std::fs::remove_file(&shot);
    let out = headless(
        &browser,
        &dir.path().join("profile"),
        &[
            "--window-size=1280,1700",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
    );
    let png = std::fs::read(&shot)
        .unwrap_or_else(|e| panic!("no screenshot ({e}): {}", text(&out.stderr)));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
}

#[test]
fn the_knob_feedback_counts_the_last_four_weeks_then_and_at_the_records_level() {
    let dir = simulated();
    let loaded = mqlsync::mapping::load(Some(&dir.path().join("m.toml"))).unwrap();
    let settings = mqlsync::report::Settings::from_mapping(&loaded);
    let store = mqlsync::store::Store::open_reader(&dir.path().join("s.db")).unwrap();
    let state = store.load_engine(&loaded.policy).unwrap();
    let now: jiff::Timestamp = NOW.parse().unwrap();
    let of = |id: &str| {
        mqlsync::report::feedback::of_threshold(
            &store,
            &loaded.policy,
            &settings,
            &state.thresholds[id],
            now,
        )
        .unwrap()
    };
    // The four weeks from 5 Nov 16:00Z: the default segment had A, E, B and C's second (4,
    // 1.0 a week); at 80 the replay makes A, E and B (C's first, on 2 Nov, is still open):
    // 0.75, to a tenth 0.8.
    let default = of("a0T-DEFAULT");
    assert_eq!(
        (default.projected_weekly, default.actual_weekly),
        (0.8, 1.0)
    );
    assert_eq!(default.day.to_string(), "2026-12-03");
    // EMEA had F, and at 70 would have had F: 0.25 a week, to a tenth 0.3.
    let emea = of("a0T-EMEA");
    assert_eq!((emea.projected_weekly, emea.actual_weekly), (0.3, 0.3));
}
