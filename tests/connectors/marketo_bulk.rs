//! The bulk-extract runner against the sandbox's bulk export, timed as Marketo times it (a
//! job's status moves at most once a minute, 2 jobs processing at once, 10 in the queue).
//! The runner waits by moving the sandbox clock, so a year of windows runs in milliseconds and
//! nothing sleeps; the calls are counted from the sandbox's request log.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use mqlsync::connectors::ErrorClass;
use mqlsync::connectors::marketo::bulk::{ExportKind, activity_export_request};
use mqlsync::connectors::marketo::extract::{
    BulkExtract, ExportPlan, ExtractError, ExtractSettings, Pause,
};
use mqlsync::connectors::marketo::{Activity, MarketoClient, MarketoSettings};
use mqlsync::sandbox::clock::SandboxClock;
use mqlsync::sandbox::faults::{FaultAction, System};
use mqlsync::sandbox::marketo::MarketoConfig;
use mqlsync::sandbox::server::SandboxOptions;
use serde_json::{Value, json};

use super::{App, now, spawn_app};

/// Waits by moving the sandbox clock: Marketo's minute passes at once.
struct SandboxPause(SandboxClock);

impl Pause for SandboxPause {
    async fn pause(&self, duration: Duration) {
        self.0
            .advance(SignedDuration::try_from(duration).expect("a short pause"));
        tokio::task::yield_now().await;
    }
}

/// A sandbox of `leads` people whose bulk jobs run on Marketo's timing, with
/// `export_daily_bytes` of files a day. The client paces itself to 2,000 calls / 20 s instead
/// of 100 (one call per 208 ms of wall time): the sandbox's own 100 calls / 20 s still holds,
/// on its clock, which only the runner's pauses move.
async fn bulk_app(leads: usize, export_daily_bytes: u64) -> App {
    let mut marketo = MarketoConfig::sandbox_default();
    marketo.export_status_interval_secs = Some(60);
    marketo.export_daily_bytes = export_daily_bytes;
    let mut app = spawn_app(SandboxOptions {
        leads,
        seed: 5,
        clock: SandboxClock::frozen(now()),
        marketo,
        ..SandboxOptions::default()
    })
    .await;
    let info = app.sandbox.connection_info();
    let settings: MarketoSettings = serde_json::from_value(json!({
        "base_url": app.sandbox.marketo_url(),
        "client_id": info["marketo"]["client_id"],
        "calls_per_20s": 2_000,
        "request_timeout_secs": 5,
        "retry": super::fast_retry(),
    }))
    .unwrap();
    let secret = info["marketo"]["client_secret"].as_str().unwrap();
    app.mk = MarketoClient::new(settings, secret.to_string().into()).unwrap();
    app
}

/// Every history of the sandbox's world lies within this many days before `now()`.
const HISTORY_DAYS: i64 = 420;

fn history_start() -> Timestamp {
    now() - SignedDuration::from_hours(24 * HISTORY_DAYS)
}

fn change_scores(start: Timestamp, end: Timestamp) -> ExportPlan {
    ExportPlan::activities(&[22], &[], start, end).unwrap()
}

fn runner(app: &App, plan: ExportPlan, dir: &std::path::Path) -> BulkExtract<SandboxPause> {
    BulkExtract::new(app.mk.clone(), plan, ExtractSettings::default(), dir)
        .unwrap()
        .with_pause(SandboxPause(app.sandbox.clock().clone()))
}

/// Reads every window the runner hands out: the activities, in order, and the windows done.
async fn read_all(
    run: &mut BulkExtract<SandboxPause>,
) -> (Vec<Activity>, Vec<usize>, Option<ExtractError>) {
    let (mut activities, mut done) = (Vec::new(), Vec::new());
    loop {
        match run.next_window().await {
            Ok(Some(file)) => {
                for row in file.activities().unwrap() {
                    activities.push(row.unwrap());
                }
                done.push(file.window.index);
            }
            Ok(None) => return (activities, done, None),
            Err(e) => return (activities, done, Some(e)),
        }
    }
}

/// The world's Change Score activities in `[start, end)`, as the REST API orders them.
fn world_changes(app: &App, start: Timestamp, end: Timestamp) -> Vec<(String, i64, Timestamp)> {
    app.sandbox
        .world()
        .score_changes
        .iter()
        .filter(|c| start <= c.at && c.at < end)
        .map(|c| (c.activity_id.to_string(), c.map_id, c.at))
        .collect()
}

fn keys(activities: &[Activity]) -> Vec<(String, i64, Timestamp)> {
    activities
        .iter()
        .map(|a| (a.marketo_guid.clone(), a.lead_id, a.activity_date))
        .collect()
}

fn export_jobs(app: &App) -> Vec<Value> {
    app.sandbox.marketo().state()["export_jobs"]
        .as_array()
        .unwrap()
        .clone()
}

fn statuses(app: &App) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for job in export_jobs(app) {
        *out.entry(job["status"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_window_activity_export_yields_every_change_score_in_order_near_the_minimum() {
    let app = bulk_app(300, 500 * 1024 * 1024).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = change_scores(history_start(), now());
    let windows = plan.windows().len() as u64;
    assert_eq!(windows, 14, "420 days in windows of 31");
    let mut run = runner(&app, plan, dir.path());
    let (activities, done, error) = read_all(&mut run).await;
    assert!(error.is_none(), "{error:?}");
    let want = world_changes(&app, history_start(), now());
    assert!(want.len() > 1_000, "{}", want.len());
    assert_eq!(keys(&activities), want, "every Change Score once, in order");
    assert_eq!(done, (0..14).collect::<Vec<_>>());
    let first = &activities[0];
    assert_eq!(first.activity_type_id, 22);
    assert!(first.campaign_id.is_some());
    let new_value = first.attributes.iter().find(|a| a.name == "New Value");
    assert!(new_value.is_some_and(|v| v.value.is_i64()), "{first:?}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "each file is removed once read"
    );

    // Calls: one create, enqueue and file per window, one list a run. Each minute two jobs
    // complete: two polls find them Completed, one finds the next still Processing.
    let calls = |kind: &str| app.calls(System::Marketo, kind);
    assert_eq!(calls("bulk_activities_create"), windows);
    assert_eq!(calls("bulk_activities_enqueue"), windows);
    assert_eq!(calls("bulk_activities_file"), windows);
    assert_eq!(calls("bulk_activities_list"), 1);
    let polls = calls("bulk_activities_status");
    assert!(
        polls <= windows * 3 / 2,
        "{polls} status polls for {windows} windows"
    );
    // Time: 2 jobs process at once and each state lasts a minute, so 14 windows take at
    // least a minute queued plus 7 minutes processing; the runner keeps to that.
    let minimum = Duration::from_secs(60 * (1 + windows.div_ceil(2)));
    assert_eq!(run.stats().waited, minimum, "{:?}", run.stats());
    assert_eq!(statuses(&app), BTreeMap::from([("Completed".into(), 14)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_export_hands_out_each_lead_once_with_the_fields_asked_for() {
    let app = bulk_app(300, 500 * 1024 * 1024).await;
    let dir = tempfile::tempdir().unwrap();
    let plan =
        ExportPlan::leads(&["id", "leadScore", "sfdcLeadId"], history_start(), now()).unwrap();
    let mut run = runner(&app, plan, dir.path());
    let mut leads = Vec::new();
    while let Some(file) = run.next_window().await.unwrap() {
        for lead in file.leads().unwrap() {
            leads.push(lead.unwrap());
        }
    }
    let world = &app.sandbox.world().people;
    assert_eq!(leads.len(), world.len());
    let ids: std::collections::BTreeSet<String> = leads
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), world.len(), "no lead twice");
    let person = &world[0];
    let lead = leads
        .iter()
        .find(|l| l["id"] == json!(person.map_id.to_string()))
        .unwrap();
    assert_eq!(lead["leadScore"], json!(person.lead_score.to_string()));
    assert_eq!(
        lead.keys().collect::<Vec<_>>(),
        ["id", "leadScore", "sfdcLeadId"],
        "createdAt is read for the window, not handed out"
    );
    assert!(
        leads.iter().any(|l| l["sfdcLeadId"].is_null()),
        "contacts have no sfdcLeadId: a null, not the text \"null\""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_waited_out() {
    let app = bulk_app(300, 500 * 1024 * 1024).await;
    // Another integration fills the instance's queue with 10 lead exports.
    let other = json!({"format": "CSV", "fields": ["id"], "filter": {"createdAt":
        {"startAt": "2026-10-03T12:00:00Z", "endAt": "2026-11-02T12:00:00Z"}}});
    for _ in 0..10 {
        let job = app
            .mk
            .export_create(ExportKind::Leads, &other)
            .await
            .unwrap();
        app.mk
            .export_enqueue(ExportKind::Leads, &job.export_id)
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let start = now() - SignedDuration::from_hours(24 * 60);
    let mut run = runner(&app, change_scores(start, now()), dir.path());
    let (activities, done, error) = read_all(&mut run).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(done, [0, 1]);
    assert_eq!(keys(&activities), world_changes(&app, start, now()));
    assert!(run.stats().queue_full >= 1, "{:?}", run.stats());
    assert_eq!(app.calls(System::Marketo, "bulk_activities_create"), 2);
    // The other 10 jobs, 2 at a time, a minute each: room came after 2 minutes.
    assert!(
        run.stats().waited >= Duration::from_secs(120),
        "{:?}",
        run.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_names_its_window_and_the_jobs_after_it_are_cancelled() {
    let app = bulk_app(300, 500 * 1024 * 1024).await;
    app.sandbox.marketo().fail_exports(1, 1, "Internal error");
    let dir = tempfile::tempdir().unwrap();
    let plan = change_scores(history_start(), now());
    let second = plan.windows()[1].clone();
    let mut run = runner(&app, plan, dir.path());
    let (_, done, error) = read_all(&mut run).await;
    assert_eq!(done, [0], "the window before the failed one is handed out");
    let error = error.expect("window 1 fails");
    assert!(matches!(error, ExtractError::JobFailed { ref window, .. } if *window == second));
    let text = error.to_string();
    assert_eq!(
        second.to_string(),
        "window 1 (2025-10-09T12:00:00Z to 2025-11-09T12:00:00Z)"
    );
    assert!(
        text.contains(&second.to_string())
            && text.contains("Failed (Internal error)")
            && text.contains("run again"),
        "{text}"
    );
    assert_eq!(error.class(), ErrorClass::Retry);
    let by_status = statuses(&app);
    assert_eq!(by_status.get("Failed"), Some(&1), "{by_status:?}");
    // The three jobs in flight behind it are not left to spend the export allowance.
    assert_eq!(by_status.get("Cancelled"), Some(&3), "{by_status:?}");
    assert_eq!(
        app.calls(System::Marketo, "bulk_activities_cancel"),
        3,
        "the failed job itself is not cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_create_answer_does_not_make_a_second_job() {
    let app = bulk_app(300, 500 * 1024 * 1024).await;
    // A job some earlier run left in state Created: not this run's, never to be taken for it.
    let start = now() - SignedDuration::from_hours(24 * 90);
    let orphan = activity_export_request(&[22], now() - SignedDuration::from_hours(24), now());
    let orphan = orphan.unwrap();
    let orphan = app
        .mk
        .export_create(ExportKind::Activities, &orphan)
        .await
        .unwrap();
    app.fault(
        System::Marketo,
        "bulk_activities_create",
        1,
        FaultAction::LoseResponse,
    );
    let dir = tempfile::tempdir().unwrap();
    let mut run = runner(&app, change_scores(start, now()), dir.path());
    let (activities, done, error) = read_all(&mut run).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(done, [0, 1, 2]);
    assert_eq!(keys(&activities), world_changes(&app, start, now()));
    assert_eq!(run.stats().adopted, 1, "{:?}", run.stats());
    // One create more than windows (the orphan's), and every job of this run completed once.
    assert_eq!(app.calls(System::Marketo, "bulk_activities_create"), 1 + 3);
    let jobs = export_jobs(&app);
    assert_eq!(jobs.len(), 1 + 3, "{jobs:?}");
    let left = jobs
        .iter()
        .find(|j| j["exportId"] == json!(orphan.export_id))
        .unwrap();
    assert_eq!(left["status"], json!("Created"), "the orphan is left alone");
    assert_eq!(statuses(&app).get("Completed"), Some(&3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_export_allowance_stops_with_a_resume_time_and_the_next_day_goes_on() {
    // About two windows of files a day.
    let app = bulk_app(300, 120 * 1024).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = change_scores(history_start(), now());
    let mut run = runner(&app, plan.clone(), dir.path());
    let (mut activities, done, error) = read_all(&mut run).await;
    let error = error.expect("the allowance runs out");
    let ExtractError::Checkpoint {
        ref window,
        resume_at,
        ..
    } = error
    else {
        panic!("{error}")
    };
    // The windows queued before the allowance ran out ran to the end and were handed out;
    // the run stops at the first window it could not queue.
    let stopped = window.index;
    assert!((2..14).contains(&stopped), "{error}");
    assert_eq!(done, (0..stopped).collect::<Vec<_>>());
    assert_eq!(error.resume_at(), Some(resume_at));
    let chicago = resume_at.to_zoned(jiff::tz::TimeZone::get("America/Chicago").unwrap());
    assert_eq!((chicago.hour(), chicago.minute()), (0, 0), "{chicago}");
    let text = error.to_string();
    assert!(
        text.contains("Export daily quota")
            && text.contains(&format!("go on from window {stopped} (")),
        "{text}"
    );

    // The next day (sandbox time), a new run from window 4 goes on where this one stopped.
    app.sandbox.clock().advance(SignedDuration::from_hours(24));
    let mut next = runner(&app, plan, dir.path()).starting_at(stopped);
    let mut rest = Vec::new();
    loop {
        match next.next_window().await {
            Ok(Some(file)) => rest.extend(file.activities().unwrap().map(Result::unwrap)),
            Ok(None) => break,
            // Each day holds about two windows more.
            Err(ExtractError::Checkpoint { window, .. }) => {
                app.sandbox.clock().advance(SignedDuration::from_hours(24));
                next = runner(&app, change_scores(history_start(), now()), dir.path())
                    .starting_at(window.index);
            }
            Err(e) => panic!("{e}"),
        }
    }
    activities.extend(rest);
    assert_eq!(
        keys(&activities),
        world_changes(&app, history_start(), now())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_file_that_is_not_there_or_not_whole_is_downloaded_again() {
    let app = bulk_app(300, 500 * 1024 * 1024).await;
    let dir = tempfile::tempdir().unwrap();
    let start = now() - SignedDuration::from_hours(24 * 20);
    // "Completed but 404", past the client's own retries (3 with these settings).
    app.fault(
        System::Marketo,
        "bulk_activities_file",
        4,
        FaultAction::Status {
            status: 404,
            body: None,
        },
    );
    let mut run = runner(&app, change_scores(start, now()), dir.path());
    let (activities, _, error) = read_all(&mut run).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(keys(&activities), world_changes(&app, start, now()));
    assert_eq!(run.stats().downloads, 2, "{:?}", run.stats());

    // A file cut short: its checksum does not match, it is fetched again.
    app.fault(
        System::Marketo,
        "bulk_activities_file",
        1,
        FaultAction::Status {
            status: 200,
            body: Some(json!("marketoGUID,leadId")),
        },
    );
    let mut run = runner(&app, change_scores(start, now()), dir.path());
    let (again, _, error) = read_all(&mut run).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(keys(&again), keys(&activities));
    assert_eq!(run.stats().downloads, 2, "{:?}", run.stats());

    // Never whole: the error names the window and says what did not match.
    app.fault(
        System::Marketo,
        "bulk_activities_file",
        3,
        FaultAction::Status {
            status: 200,
            body: Some(json!("marketoGUID,leadId")),
        },
    );
    let mut run = runner(&app, change_scores(start, now()), dir.path());
    let (_, _, error) = read_all(&mut run).await;
    let text = error.expect("three bad downloads").to_string();
    assert!(
        text.contains("window 0") && text.contains("where fileChecksum says"),
        "{text}"
    );
}
