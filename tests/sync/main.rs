//! The first end-to-end sync against the sandbox: `run --once` reads both systems, decides,
//! writes MQL records and stamps with the fewest calls, and a second run writes nothing.

use std::collections::BTreeSet;

use jiff::{SignedDuration, Timestamp};
use mqlsync::config::{self, Config};
use mqlsync::connectors::marketo::MarketoClient;
use mqlsync::connectors::marketo::extract::PauseBy;
use mqlsync::connectors::salesforce::SalesforceClient;
use mqlsync::connectors::{Priority, QueryPages};
use mqlsync::engine::model::CycleStatus;
use mqlsync::mapping;
use mqlsync::sandbox::clock::SandboxClock;
use mqlsync::sandbox::faults::{FaultAction, FaultRule, System};
use mqlsync::sandbox::server::{Sandbox, SandboxOptions};
use mqlsync::store::Store;
use mqlsync::sync::connect;
use mqlsync::sync::once::{BulkReads, RunSettings, RunSummary, SyncError, run_once};
use serde_json::{Map, Value, json};

#[path = "../support/feedback_mapping.rs"]
mod feedback_mapping;
use feedback_mapping::feedback_mapping;

struct App {
    sandbox: Sandbox,
    sf: SalesforceClient,
    mk: MarketoClient,
    store: Store,
    config: Config,
    _dir: tempfile::TempDir,
}

fn now() -> Timestamp {
    "2026-11-02T12:00:00Z".parse().unwrap()
}

/// A sandbox on port 0 with a frozen clock, a config pointing at it, and a fresh store.
async fn spawn_app() -> App {
    spawn_app_with(300, "").await
}

/// `marketo_extra`: more `[marketo]` settings, one `key = value` a line.
async fn spawn_app_with(leads: usize, marketo_extra: &str) -> App {
    spawn_app_limits(leads, marketo_extra, true).await
}

/// [`spawn_app_with`], with the vendors' rate limits on or off (the sandbox's clock is frozen,
/// so a run of more than 100 Marketo calls would meet the 20-second window with limits on).
async fn spawn_app_limits(leads: usize, marketo_extra: &str, limits: bool) -> App {
    let sandbox = Sandbox::start(SandboxOptions {
        leads,
        seed: 3,
        clock: SandboxClock::frozen(now()),
        limits,
        ..SandboxOptions::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let info = sandbox.connection_info();
    let file = dir.path().join("mqlsync.toml");
    std::fs::write(
        &file,
        format!(
            "store = \"state.sqlite\"\n[salesforce]\nbase_url = \"{}\"\nauth = \"client_credentials\"\nclient_id = \"{}\"\n[marketo]\nbase_url = \"{}\"\nclient_id = \"{}\"\n{marketo_extra}\n",
            info["salesforce"]["base_url"].as_str().unwrap(),
            info["salesforce"]["client_id"].as_str().unwrap(),
            info["marketo"]["base_url"].as_str().unwrap(),
            info["marketo"]["client_id"].as_str().unwrap(),
        ),
    )
    .unwrap();
    let env = vec![
        (
            "MQLSYNC_SALESFORCE_CLIENT_SECRET".to_string(),
            info["salesforce"]["client_secret"]
                .as_str()
                .unwrap()
                .to_string(),
        ),
        (
            "MQLSYNC_MARKETO_CLIENT_SECRET".to_string(),
            info["marketo"]["client_secret"]
                .as_str()
                .unwrap()
                .to_string(),
        ),
    ];
    let config: Config = config::load(Some(&file), &env).unwrap();
    let sf = connect::salesforce(&config).unwrap();
    let mk = connect::marketo(&config).unwrap();
    let store = Store::open(&config.store).unwrap();
    App {
        sandbox,
        sf,
        mk,
        store,
        config,
        _dir: dir,
    }
}

impl App {
    async fn run(&mut self, at: Timestamp) -> RunSummary {
        self.try_run(at).await.unwrap()
    }

    /// One `run --once` with another mapping.
    async fn run_mapped(&mut self, at: Timestamp, m: &mapping::LoadedMapping) -> RunSummary {
        self.try_run_mapped(at, &RunSettings::default(), m)
            .await
            .unwrap()
    }

    /// One `run --once` with the default mapping, which may stop with an error.
    async fn try_run(&mut self, at: Timestamp) -> Result<RunSummary, SyncError> {
        self.try_run_with(at, &RunSettings::default()).await
    }

    /// [`App::try_run`] with other settings.
    async fn try_run_with(
        &mut self,
        at: Timestamp,
        settings: &RunSettings,
    ) -> Result<RunSummary, SyncError> {
        let m = mapping::load(None).unwrap();
        self.try_run_mapped(at, settings, &m).await
    }

    /// [`App::try_run_with`] with another mapping.
    async fn try_run_mapped(
        &mut self,
        at: Timestamp,
        settings: &RunSettings,
        m: &mapping::LoadedMapping,
    ) -> Result<RunSummary, SyncError> {
        let (sf, mk) = (self.sf.clone(), self.mk.clone());
        let sent = move || (sf.sent(), mk.sent());
        run_once(
            &self.sf,
            &self.mk,
            &m.mapping,
            &m.policy,
            &mut self.store,
            at,
            settings,
            sent,
        )
        .await
    }

    async fn query(&self, soql: &str) -> Vec<Map<String, Value>> {
        let mut pages = QueryPages::new(self.sf.clone(), soql, false, Priority::Routine);
        let mut all = Vec::new();
        while let Some(page) = pages.next_page().await.unwrap() {
            all.extend(page);
        }
        all
    }

    /// Arms a Salesforce fault on requests of `kind`: after `skip` of them, `times` times
    /// (for ever when `None`).
    fn fault(&self, kind: &str, skip: u32, times: Option<u32>, action: FaultAction) {
        self.fault_on(System::Salesforce, kind, skip, times, action);
    }

    /// [`App::fault`] on either system.
    fn fault_on(
        &self,
        system: System,
        kind: &str,
        skip: u32,
        times: Option<u32>,
        action: FaultAction,
    ) {
        self.sandbox.faults().add(FaultRule {
            system,
            method: None,
            path: None,
            kind: Some(kind.into()),
            skip,
            times,
            action,
        });
    }

    /// Requests that reached each emulator since the log was last cleared,
    /// `(salesforce, marketo)`.
    fn requests_seen(&self) -> (u64, u64) {
        let counts = self.sandbox.log().counts();
        let of = |system: System| {
            counts
                .iter()
                .filter(|((s, _), _)| *s == system)
                .map(|(_, n)| n)
                .sum::<u64>()
        };
        (of(System::Salesforce), of(System::Marketo))
    }

    fn calls(&self, kind: &str) -> u64 {
        self.sandbox
            .log()
            .counts()
            .get(&(System::Salesforce, kind.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

/// A run's calls are what reached the sandbox (its own count), and the fewest its work allows
/// but for `describes`: a store's first run describes the MAP's lead fields once to find the
/// score fields; later runs keep what it found. The log must have been cleared before the run.
fn assert_fewest_calls(app: &App, run: &RunSummary, describes: u64) {
    let (sf, mk) = app.requests_seen();
    assert_eq!(
        (run.calls["salesforce"], run.calls["marketo"]),
        (sf, mk),
        "the run counts what the server saw: {run:?}"
    );
    assert_eq!(
        run.calls["salesforce"], run.minimum_calls["salesforce"],
        "{run:?}"
    );
    assert_eq!(
        run.calls["marketo"],
        run.minimum_calls["marketo"] + describes,
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_writes_each_cycle_once_with_the_fewest_calls_and_a_second_run_writes_nothing() {
    let mut app = spawn_app().await;
    let first = app.run(now()).await;
    let cycles = app.store.cycles().unwrap();
    assert!(!cycles.is_empty(), "the seeded world has MQLs: {first:?}");
    assert_eq!(first.written.get("mql_upsert"), Some(&cycles.len()));
    assert!(
        first.write_failures.is_empty(),
        "{:?}",
        first.write_failures
    );
    assert!(first.unreadable.is_empty(), "{:?}", first.unreadable);
    assert_fewest_calls(&app, &first, 1);
    assert_eq!(
        app.calls("composite_upsert"),
        cycles.len().div_ceil(200) as u64
    );

    // The CRM now holds exactly one MQL record per cycle, under its external id.
    let in_crm: BTreeSet<String> = app
        .query("SELECT Id, External_Id__c, Status__c FROM MQL__c")
        .await
        .iter()
        .map(|r| r["External_Id__c"].as_str().unwrap().to_string())
        .collect();
    let decided: BTreeSet<String> = cycles.iter().map(|c| c.external_id.clone()).collect();
    assert_eq!(in_crm, decided);

    // Again: our own writes come back as changes, and nothing is written.
    app.sandbox.log().clear();
    let second = app.run(now()).await;
    assert!(second.written.is_empty(), "{second:?}");
    assert_eq!(
        app.calls("composite_upsert") + app.calls("composite_update"),
        0
    );
    assert!(app.store.outbox_pending(10).unwrap().is_empty());
    assert_fewest_calls(&app, &second, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rep_accepting_an_mql_in_the_crm_stamps_the_sal_date_on_the_next_run() {
    let mut app = spawn_app().await;
    app.run(now()).await;
    let cycle = app
        .store
        .cycles()
        .unwrap()
        .into_iter()
        .find(|c| c.status.as_str() == "Open")
        .expect("an open MQL");
    let record = app
        .query(&format!(
            "SELECT Id FROM MQL__c WHERE External_Id__c = '{}'",
            cycle.external_id
        ))
        .await
        .remove(0);
    let later = now() + SignedDuration::from_mins(30);
    app.sandbox.clock().set(later);
    let mut edit = Map::new();
    edit.insert("Status__c".into(), json!("Working"));
    app.sandbox
        .salesforce()
        .edit_record("MQL__c", record["Id"].as_str().unwrap(), edit)
        .unwrap();

    let run = app.run(later).await;
    assert_eq!(run.written.get("mql_upsert"), Some(&1), "{run:?}");
    let object = cycle.crm.kind.as_str();
    let person = app
        .query(&format!(
            "SELECT Id, SAL_Date_Most_Recent__c, MQL_Count__c FROM {object} WHERE Id = '{}'",
            cycle.crm.id
        ))
        .await
        .remove(0);
    assert_eq!(
        person["SAL_Date_Most_Recent__c"]
            .as_str()
            .map(|s| s.parse::<Timestamp>().unwrap()),
        Some(later)
    );
    let stored = app
        .store
        .cycles()
        .unwrap()
        .into_iter()
        .find(|c| c.external_id == cycle.external_id)
        .unwrap();
    assert_eq!(
        (stored.status.as_str(), stored.sal_at),
        ("Working", Some(later))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_knob_turn_in_the_crm_is_read_with_its_history_and_makes_the_waiting_leads_mql() {
    // Enough people that some EMEA leads wait between the old and the new knob.
    let mut app = spawn_app_with(2_000, "").await;
    app.run(now()).await;
    let before = app.store.cycles().unwrap().len();
    let later = now() + SignedDuration::from_mins(1);
    let (knob_id, knob_score) = turn_emea_knob(&app, 25.0, later);

    let run = app.run(later).await;
    assert_eq!(run.read.get("MQL_Threshold__c"), Some(&1), "{run:?}");
    let history = app.store.threshold_history(&knob_id).unwrap();
    let change = history
        .iter()
        .find(|h| h.field == "Score_Threshold__c" && h.changed_at == later)
        .expect("the knob turn in the field history");
    let value = |v: &Option<String>| v.as_deref().map(|s| s.parse::<f64>().unwrap());
    assert_eq!(
        (value(&change.old_value), value(&change.new_value)),
        (Some(knob_score), Some(knob_score - 25.0))
    );
    assert!(change.changed_by.is_some());

    let cycles = app.store.cycles().unwrap();
    let new: Vec<_> = cycles.iter().filter(|c| c.mql_at == later).collect();
    assert!(!new.is_empty(), "turning the knob down made no MQL");
    assert_eq!(cycles.len(), before + new.len());
    for c in new {
        assert_eq!(
            (c.segment.as_str(), c.threshold, c.threshold_id.as_deref()),
            ("region=EMEA", knob_score - 25.0, Some(knob_id.as_str()))
        );
        assert!(c.score >= c.threshold && c.score < knob_score, "{c:?}");
    }
    assert_eq!(
        run.written.get("mql_upsert").copied().unwrap_or(0),
        cycles.len() - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_limit_stops_the_run_cleanly_keeping_what_it_committed_and_says_when_to_resume() {
    let mut app = spawn_app().await;
    // The org's daily limit runs out when the run reaches the MQL records: the fifth `query`
    // (thresholds go through `queryAll`), after the threshold history, leads, contacts and
    // opportunities, one page each.
    app.fault(
        "query",
        4,
        None,
        FaultAction::VendorError {
            code: "REQUEST_LIMIT_EXCEEDED".into(),
            message: None,
        },
    );
    let err = app.try_run(now()).await.unwrap_err();
    assert!(err.resume_at().is_some_and(|t| t > now()), "{err}");
    // What was read before the limit is committed with its cursor; nothing was written.
    assert!(app.store.cursor("crm.Lead").unwrap().is_some());
    assert!(app.store.cursor("crm.MQL__c").unwrap().is_none());
    assert_eq!(app.calls("composite_upsert"), 0);
    // Once the limit is back, the next run picks up from there and writes.
    app.sandbox.faults().clear();
    let run = app.run(now()).await;
    assert!(
        run.written.get("mql_upsert").is_some_and(|n| *n > 0),
        "{run:?}"
    );
    assert_eq!(run.read.get("Lead"), Some(&0), "leads were not read twice");
}

/// An MQL record as the CRM holds it, by external id.
async fn mql_record(app: &App, external_id: &str) -> Map<String, Value> {
    app.query(&format!(
        "SELECT External_Id__c, OwnerId, MQL_Date__c, SLA_Due__c, Overdue__c, Reassignment_Count__c FROM MQL__c WHERE External_Id__c = '{external_id}'"
    ))
    .await
    .remove(0)
}

fn instant(value: &Value) -> Option<Timestamp> {
    value.as_str().map(|s| s.parse().unwrap())
}

/// Issue 12, point 3: a first run replaying 30 days of score changes used to write MQL
/// records already reassigned and overdue for time no rep could see them. The SLA now starts
/// when the record is written; the MQL date stays the historical one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_run_writes_no_mql_already_overdue_or_reassigned_and_the_sla_runs_from_the_write() {
    let mut app = spawn_app().await;
    app.run(now()).await;
    let cycles = app.store.cycles().unwrap();
    let records = app
        .query("SELECT External_Id__c, MQL_Date__c, SLA_Due__c, Overdue__c, Reassignment_Count__c FROM MQL__c")
        .await;
    assert_eq!(records.len(), cycles.len());
    let week_ago = now() - SignedDuration::from_hours(24 * 7);
    assert!(
        cycles
            .iter()
            .any(|c| c.status == CycleStatus::Open && c.mql_at < week_ago),
        "the history holds open MQLs older than any SLA"
    );
    for r in &records {
        let c = cycles
            .iter()
            .find(|c| json!(c.external_id) == r["External_Id__c"])
            .unwrap();
        assert_eq!(r["Reassignment_Count__c"].as_f64(), Some(0.0), "{r:?}");
        assert_eq!(r["Overdue__c"], json!(false), "{r:?}");
        assert_eq!(instant(&r["MQL_Date__c"]), Some(c.mql_at), "{r:?}");
        assert_eq!(c.written_at, Some(now()), "{c:?}");
        if c.status == CycleStatus::Open {
            let due = instant(&r["SLA_Due__c"]).unwrap_or_else(|| panic!("{r:?}"));
            assert!(due > now(), "{r:?}");
            assert_eq!(c.sla_due_at, Some(due));
        } else {
            assert_eq!(r["SLA_Due__c"], Value::Null, "{r:?}");
        }
    }

    // The clock runs from the write: past the due the record is flagged overdue; past the
    // reassignment trigger it moves to the next rep, once.
    let cycle = cycles
        .iter()
        .filter(|c| c.status == CycleStatus::Open && c.reassign_at.is_some())
        .min_by_key(|c| c.sla_due_at)
        .expect("an open MQL of a team that reassigns")
        .clone();
    let (due, trigger) = (cycle.sla_due_at.unwrap(), cycle.reassign_at.unwrap());
    let past_due = due + SignedDuration::from_mins(1);
    assert!(past_due < trigger);
    app.sandbox.clock().set(past_due);
    app.run(past_due).await;
    let r = mql_record(&app, &cycle.external_id).await;
    assert_eq!(
        (&r["Overdue__c"], r["Reassignment_Count__c"].as_f64()),
        (&json!(true), Some(0.0)),
        "{r:?}"
    );
    let past_trigger = trigger + SignedDuration::from_mins(1);
    app.sandbox.clock().set(past_trigger);
    app.run(past_trigger).await;
    let r = mql_record(&app, &cycle.external_id).await;
    assert_eq!(
        (&r["Overdue__c"], r["Reassignment_Count__c"].as_f64()),
        (&json!(false), Some(1.0)),
        "{r:?}"
    );
    assert_ne!(r["OwnerId"], json!(cycle.owner_id), "{r:?}");
    assert!(
        instant(&r["SLA_Due__c"]).is_some_and(|d| d > past_trigger),
        "{r:?}"
    );
    assert_eq!(instant(&r["MQL_Date__c"]), Some(cycle.mql_at));
}

/// The alert tasks in the CRM, by alert key.
async fn alert_tasks(app: &App) -> Vec<Map<String, Value>> {
    app.query("SELECT Id, MQL_Alert_Key__c, WhoId, OwnerId, Subject, ActivityDate FROM Task WHERE MQL_Alert_Key__c != null")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_mql_alert_tasks_are_created_once_even_when_the_answer_to_the_create_is_lost() {
    let mut app = spawn_app().await;
    // The CRM creates the first batch of tasks and the answer never arrives: the connector
    // must not send the create again, and the run stops with the alert rows still pending.
    app.fault("composite_create", 0, Some(1), FaultAction::LoseResponse);
    let err = app.try_run(now()).await.unwrap_err();
    assert_eq!(app.calls("composite_create"), 1, "sent once: {err}");
    let created = alert_tasks(&app).await;
    assert!(!created.is_empty(), "the lost create did create the tasks");
    let pending: Vec<String> = app
        .store
        .outbox_pending(10_000)
        .unwrap()
        .into_iter()
        .filter(|r| r.kind == "notify")
        .map(|r| r.key)
        .collect();
    assert_eq!(pending.len(), created.len(), "the alerts are still pending");

    // The next run finds them by their keys and creates nothing.
    app.sandbox.faults().clear();
    app.sandbox.log().clear();
    let run = app.run(now()).await;
    assert_eq!(
        run.settled.get("task_found"),
        Some(&pending.len()),
        "{run:?}"
    );
    assert_eq!(run.written.get("task_create"), None, "{run:?}");
    assert_eq!(app.calls("composite_create"), 0);
    assert_fewest_calls(&app, &run, 0);
    let tasks = alert_tasks(&app).await;
    let keys: BTreeSet<&str> = tasks
        .iter()
        .map(|t| t["MQL_Alert_Key__c"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), tasks.len(), "one task per alert");
    assert_eq!(keys, pending.iter().map(String::as_str).collect());
    assert!(app.store.outbox_pending(10_000).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mql_waiting_for_a_rep_of_a_team_that_wants_tasks_gets_one_task_for_that_rep() {
    let mut app = spawn_app().await;
    let m = mapping::load(None).unwrap();
    let first = app.run(now()).await;
    assert_fewest_calls(&app, &first, 1);
    let tasks = alert_tasks(&app).await;
    // The default mapping's EMEA, APAC and LATAM teams want tasks; NA wants none. The first
    // run catches up on 30 days of MQLs no rep could see before this run wrote them: none was
    // reassigned, and each open one alerts the rep it was given to.
    let cycles = app.store.cycles().unwrap();
    let waiting: Vec<_> = cycles
        .iter()
        .filter(|c| {
            matches!(
                c.team.as_deref(),
                Some("SDR EMEA" | "SDR APAC" | "SDR LATAM")
            )
        })
        .filter(|c| c.status == CycleStatus::Open)
        .collect();
    assert!(
        !waiting.is_empty(),
        "the seeded world has open MQLs that want tasks"
    );
    assert_eq!(tasks.len(), waiting.len(), "{first:?}");
    assert_eq!(first.written.get("task_create"), Some(&tasks.len()));
    for c in &waiting {
        let task = tasks
            .iter()
            .find(|t| {
                t["MQL_Alert_Key__c"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("Notify:{}:", c.external_id))
            })
            .unwrap_or_else(|| panic!("no task for {}", c.external_id));
        assert_eq!(task["WhoId"], json!(c.crm.id));
        assert_eq!(task["OwnerId"], json!(c.owner_id.as_deref().unwrap()));
        assert_eq!(
            (c.owner_id.as_ref(), c.reassignments),
            (c.owner_at_mql.as_ref(), 0)
        );
        // Due when the rep must accept: the SLA deadline's date where the team works.
        let team = m.policy.team_named(c.team.as_deref().unwrap()).unwrap();
        let zone = team.calendar.time_zone.clone();
        let due = c.sla_due_at.unwrap().to_zoned(zone).date();
        assert_eq!(
            task["ActivityDate"],
            json!(due.to_string()),
            "{}",
            c.external_id
        );
    }
    // Every other alert (of an MQL closed since) was settled without a write, none was lost
    // or left pending.
    let alerts = first.decisions["notify"];
    assert_eq!(
        first.settled.get("task_superseded").copied().unwrap_or(0),
        alerts - tasks.len(),
        "{first:?}"
    );
    assert!(app.store.outbox_pending(10_000).unwrap().is_empty());

    // A second run: nothing new, nothing looked up, nothing created.
    app.sandbox.log().clear();
    let second = app.run(now()).await;
    assert!(second.written.is_empty(), "{second:?}");
    assert_eq!(app.calls("composite_create"), 0);
    assert_eq!(alert_tasks(&app).await.len(), tasks.len());
}

/// Fails the first record of the next MQL upsert with `code`.
fn fail_first_mql(app: &App, code: &str) {
    app.fault(
        "composite_upsert",
        0,
        Some(1),
        FaultAction::FailRecord {
            index: 0,
            code: Some(code.into()),
            message: None,
        },
    );
}

async fn mql_records(app: &App) -> usize {
    app.query("SELECT Id FROM MQL__c").await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mql_record_the_crm_refuses_for_now_is_sent_again_by_the_next_run() {
    let mut app = spawn_app().await;
    fail_first_mql(&app, "UNABLE_TO_LOCK_ROW");
    let first = app.run(now()).await;
    let cycles = app.store.cycles().unwrap().len();
    assert_eq!(mql_records(&app).await, cycles - 1);
    assert!(
        first
            .write_failures
            .iter()
            .any(|f| f.contains("UNABLE_TO_LOCK_ROW") && f.ends_with("(sent again next run)")),
        "{first:?}"
    );
    let second = app.run(now()).await;
    assert_eq!(second.written.get("mql_upsert"), Some(&1), "{second:?}");
    assert_eq!(mql_records(&app).await, cycles, "no MQL lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mql_record_refused_for_good_waits_for_a_requeue_then_is_written() {
    let mut app = spawn_app().await;
    fail_first_mql(&app, "FIELD_CUSTOM_VALIDATION_EXCEPTION");
    app.run(now()).await;
    let cycles = app.store.cycles().unwrap().len();
    // Refused for good: the next run does not hammer the CRM with it.
    app.sandbox.log().clear();
    let second = app.run(now()).await;
    assert_eq!(app.calls("composite_upsert"), 0, "{second:?}");
    assert_eq!(app.store.summary().unwrap().outbox_failed, 1);
    assert_eq!(mql_records(&app).await, cycles - 1);
    // The admin fixed the validation rule and requeues: the next run writes it.
    assert_eq!(
        app.store
            .outbox_requeue(Some("FIELD_CUSTOM_VALIDATION_EXCEPTION"))
            .unwrap(),
        1
    );
    let third = app.run(now()).await;
    assert_eq!(third.written.get("mql_upsert"), Some(&1), "{third:?}");
    assert_eq!(mql_records(&app).await, cycles);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_remote_finds_the_default_mapping_whole_and_names_the_key_of_each_problem() {
    use mqlsync::sync::preflight;
    let app = spawn_app().await;
    let mut m = mapping::load(None).unwrap().mapping;
    let problems = preflight::check(&app.sf, &app.mk, &m).await.unwrap();
    assert!(problems.is_empty(), "{problems:?}");

    m.crm.mql.overdue = "Overdue_Flag__c".into();
    m.crm.mql.note = "CreatedDate".into();
    m.crm.mql.external_id = "Segment__c".into();
    m.map.total_score = "leadScor".into();
    let problems: Vec<String> = preflight::check(&app.sf, &app.mk, &m)
        .await
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    let expected = [
        "crm.mql.overdue: MQL__c has no field Overdue_Flag__c, or the integration user cannot see it",
        "crm.mql.note: MQL__c.CreatedDate is not writable by the integration user",
        "crm.mql.external_id, crm.mql.segment: MQL__c.Segment__c is not an External ID field: MQL records are upserted by it",
        "map.total_score: the MAP has no lead field leadScor (REST name), which score.source = \"total\" reads",
    ];
    for e in expected {
        assert!(
            problems.iter().any(|p| p == e),
            "missing {e:?} in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_the_same_store_is_refused_while_the_first_holds_it() {
    let mut app = spawn_app().await;
    // Another process (an overlapping cron job) has the same store file open and is writing.
    let other = Store::open(std::path::Path::new(app.store.path())).unwrap();
    let held = other.lock_writer().unwrap();
    let err = app.try_run(now()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("is being written by another mqlsync process"),
        "{err}"
    );
    assert_eq!(
        app.calls("query") + app.calls("query_all"),
        0,
        "no call made"
    );
    drop(held);
    let run = app.run(now()).await;
    assert!(
        run.written.get("mql_upsert").is_some_and(|n| *n > 0),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_marketo_reserve_counts_what_other_integrations_used_today() {
    // A quota of 40 calls, 20 % kept back: routine work stops at 32 used.
    let mut app = spawn_app_with(300, "daily_quota = 40").await;
    // Another integration (a client of its own, with its own count) spent 35 of them today.
    // (Its own budget knows the instance's full quota; ours is the 40 we may use.)
    let mut theirs = app.config.clone();
    theirs.marketo.as_mut().unwrap().daily_quota = 50_000;
    let other = connect::marketo(&theirs).unwrap();
    for _ in 0..35 {
        mqlsync::connectors::marketo::Map::describe(&other)
            .await
            .unwrap();
    }
    // A fresh process must not count from zero: it reads the day's count and stops at once.
    let err = app.try_run(now()).await.unwrap_err();
    assert!(err.resume_at().is_some(), "{err}");
    assert!(err.to_string().contains("reserve"), "{err}");
    assert_eq!(app.mk.budget().usage().0, 36, "35 + the usage call itself");
}

/// The app's cycles are those of a fresh app (same seed, same clock) after one unbroken run.
async fn assert_ends_as_an_unbroken_run(app: &App) {
    let mut unbroken = spawn_app().await;
    unbroken.run(now()).await;
    let ids = |app: &App| -> BTreeSet<String> {
        app.store
            .cycles()
            .unwrap()
            .into_iter()
            .map(|c| c.external_id)
            .collect()
    };
    assert!(!ids(&unbroken).is_empty());
    assert_eq!(ids(app), ids(&unbroken));
}

/// Issue 11, point 9: a MAP lead row the sync cannot key used to be skipped while the cursor
/// moved on, losing the person for good. Now the pages waiting for it do not commit, the run
/// names the call, and the next run reads them again and ends where an unbroken run ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_lead_row_without_an_id_fails_its_pages_and_the_next_run_reads_them_again() {
    let mut app = spawn_app().await;
    let lead_without_id = json!({
        "requestId": "e1f#19a0c", "success": true,
        "result": [{"sfdcLeadId": "00Q000000000001AAA", "updatedAt": "2026-11-01T10:00:00Z"}],
    });
    app.fault_on(
        System::Marketo,
        "leads_by_filter",
        0,
        Some(1),
        FaultAction::Status {
            status: 200,
            body: Some(lead_without_id),
        },
    );
    let err = app.try_run(now()).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("GET /rest/v1/leads.json?filterType=id") && text.contains("without `id`"),
        "{text}"
    );
    assert_eq!(
        app.store.cursor("map.activities").unwrap(),
        None,
        "the activities cursor must not move past pages whose leads were not linked"
    );
    app.run(now()).await;
    assert_ends_as_an_unbroken_run(&app).await;
}

/// Issue 11, point 4 and 13: a write refused for now on its last attempt is parked, and says
/// so (not "sent again next run"); every later run lists it until it is requeued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_for_now_on_its_last_attempt_is_said_parked_and_later_runs_list_it() {
    let mut app = spawn_app().await;
    let attempts = mqlsync::store::OUTBOX_MAX_ATTEMPTS as u32;
    app.fault(
        "composite_upsert",
        0,
        Some(attempts),
        FaultAction::FailRecord {
            index: 0,
            code: Some("UNABLE_TO_LOCK_ROW".into()),
            message: None,
        },
    );
    for attempt in 1..=attempts {
        let run = app.run(now()).await;
        let failure = run
            .write_failures
            .iter()
            .find(|f| f.contains("UNABLE_TO_LOCK_ROW"))
            .unwrap_or_else(|| panic!("attempt {attempt}: {run:?}"));
        if attempt < attempts {
            assert!(failure.ends_with("(sent again next run)"), "{failure}");
            assert_eq!(run.parked.count, 0, "{run:?}");
        } else {
            assert!(!failure.contains("sent again"), "{failure}");
            assert!(
                failure.contains("parked until `mqlsync requeue`"),
                "{failure}"
            );
            assert_eq!(run.parked.count, 1, "{run:?}");
        }
    }
    let later = app.run(now()).await;
    assert!(later.write_failures.is_empty(), "{later:?}");
    assert_eq!(later.parked.count, 1);
    assert!(
        later.parked.first[0].starts_with("MQL:")
            && later.parked.first[0].contains("UNABLE_TO_LOCK_ROW"),
        "{:?}",
        later.parked
    );
}

/// Issue 11, point 10: on a first run over 3,000 people and their whole score history, the
/// calls that reached each system (the sandbox's count) are within a tenth of the fewest the
/// work needs, reckoned here from the work alone: a token each; the threshold, lead, contact,
/// opportunity and MQL queries and the threshold field history at 2,000 records a page;
/// Marketo's daily usage, a paging token, the activities at 300 a page, the links of every
/// lead they name at 300 ids a call and the current scores of the CRM's leads and contacts at
/// 300 ids a call; alert keys at 1,000 a look-up; writes at 200 a call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_run_over_3000_people_costs_at_most_a_tenth_over_the_fewest_calls() {
    let mut app = spawn_app_limits(3_000, "", false).await;
    let m = mapping::load(None).unwrap();
    let settings = RunSettings {
        initial_window: SignedDuration::from_hours(24 * 400),
        ..RunSettings::default()
    };
    let (sf, mk) = (app.sf.clone(), app.mk.clone());
    let run = run_once(
        &app.sf,
        &app.mk,
        &m.mapping,
        &m.policy,
        &mut app.store,
        now(),
        &settings,
        move || (sf.sent(), mk.sent()),
    )
    .await
    .unwrap();
    let (sf_calls, mk_calls) = app.requests_seen();
    let pages = |n: usize, size: usize| n.div_ceil(size).max(1) as u64;
    let read = |source: &str| run.read.get(source).copied().unwrap_or(0);
    let written = |what: &str| run.written.get(what).copied().unwrap_or(0);
    let alert_keys = written("task_create") + run.settled.get("task_found").copied().unwrap_or(0);
    let sf_minimum = 1
        + [
            "MQL_Threshold__c",
            "MQL_Threshold__History",
            "Lead",
            "Contact",
            "Opportunity",
            "MQL__c",
        ]
        .iter()
        .map(|o| pages(read(o), 2_000))
        .sum::<u64>()
        + alert_keys.div_ceil(1_000) as u64
        + ["mql_upsert", "lead_update", "contact_update", "task_create"]
            .iter()
            .map(|w| written(w).div_ceil(200) as u64)
            .sum::<u64>();
    let linked = app.store.summary().unwrap().map_leads as usize;
    // The current scores of the CRM's leads and contacts, 300 ids a call.
    let current = (read("Lead").div_ceil(300) + read("Contact").div_ceil(300)) as u64;
    let mk_minimum =
        1 + 1 + 1 + pages(read("activities"), 300) + linked.div_ceil(300) as u64 + current;
    let ratio = |calls: u64, minimum: u64| calls as f64 / minimum as f64;
    println!(
        "salesforce {sf_calls} / {sf_minimum} = {:.3}; marketo {mk_calls} / {mk_minimum} = {:.3}; {} score changes, {linked} MAP leads, {alert_keys} alert keys",
        ratio(sf_calls, sf_minimum),
        ratio(mk_calls, mk_minimum),
        read("activities")
    );
    assert!(read("activities") > 10_000, "{run:?}");
    assert!(
        ratio(sf_calls, sf_minimum) <= 1.10,
        "{sf_calls} / {sf_minimum}: {run:?}"
    );
    assert!(
        ratio(mk_calls, mk_minimum) <= 1.10,
        "{mk_calls} / {mk_minimum}: {run:?}"
    );
    assert_eq!(
        (run.calls["salesforce"], run.calls["marketo"]),
        (sf_calls, mk_calls)
    );
}

/// Issue 11, point 9: an activity the sync cannot key (here without `marketoGUID`) fails its
/// page too: the run names the call, the cursor stays before it, and the next run ends where
/// an unbroken run ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_without_a_guid_fails_its_page_and_the_next_run_reads_it_again() {
    let mut app = spawn_app().await;
    let unkeyed = json!({
        "requestId": "a1b#19a0d", "success": true, "nextPageToken": "GIYDAOBNGEYS2MBWKQ======",
        "moreResult": true,
        "result": [{"id": 1, "leadId": 1000001, "activityDate": "2026-11-01T10:00:00Z",
                    "activityTypeId": 22, "primaryAttributeValue": "Lead Score",
                    "attributes": [{"name": "New Value", "value": 40}]}],
    });
    app.fault_on(
        System::Marketo,
        "activities",
        0,
        Some(1),
        FaultAction::Status {
            status: 200,
            body: Some(unkeyed),
        },
    );
    let text = app.try_run(now()).await.unwrap_err().to_string();
    assert!(
        text.contains("GET /rest/v1/activities.json (nextPageToken ")
            && text.contains("marketoGUID")
            && !text.contains("retrying"),
        "{text}"
    );
    assert_eq!(app.store.cursor("map.activities").unwrap(), None);
    app.run(now()).await;
    assert_ends_as_an_unbroken_run(&app).await;
}

// --- adoption on a real org (issue 12) ---

/// The EMEA knob of the seeded world in force at the start.
fn emea_knob(app: &App) -> mqlsync::sandbox::world::Threshold {
    app.sandbox
        .world()
        .thresholds
        .iter()
        .find(|t| {
            t.region.as_deref() == Some("EMEA") && t.effective_from.is_none_or(|f| f <= now())
        })
        .unwrap()
        .clone()
}

/// The EMEA knob of the seeded world, turned down by `by` points at `at`.
fn turn_emea_knob(app: &App, by: f64, at: Timestamp) -> (String, f64) {
    let knob = emea_knob(app);
    app.sandbox.clock().set(at);
    let mut edit = Map::new();
    edit.insert("Score_Threshold__c".into(), json!(knob.score - by));
    app.sandbox
        .salesforce()
        .edit_record("MQL_Threshold__c", &knob.id, edit)
        .unwrap();
    (knob.id, knob.score)
}

/// Issue 12, point 1: a first run knows the current score of every linked MAP lead, however
/// long ago it last changed, so a knob turn reaches everyone of the segment between the new
/// and the old threshold: each becomes an MQL or is held for a reason `explain` gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_knob_turn_reaches_everyone_between_the_thresholds_even_scores_older_than_the_look_back()
{
    let mut app = spawn_app_with(2_000, "").await;
    let m = mapping::load(None).unwrap();
    let first = app.run(now()).await;
    let world = app.sandbox.world().clone();
    let look_back = now() - SignedDuration::from_hours(24 * 30);
    // Every person the CRM has whose MAP lead is synced carries a score in the store.
    let state = app.store.load_engine(&m.policy).unwrap();
    for p in world.people.iter().filter(|p| p.crm_id.is_some()) {
        let id = p.crm_id.as_deref().unwrap();
        let lead = state.persons.get(id).and_then(|s| s.map_lead);
        let score = lead
            .and_then(|l| state.map_leads.get(&l))
            .and_then(|l| l.scores.value(&m.policy.score, now()));
        assert_eq!(
            score,
            Some(p.lead_score as f64),
            "{id} (MAP lead {}): {first:?}",
            p.map_id
        );
    }
    // Each current score is kept in the score history (a reload, a what-if or a backfill reads
    // it there), once per lead.
    let kept = app.store.summary().unwrap().score_changes as usize;
    assert!(
        kept >= first.read["current scores"],
        "{kept} rows: {first:?}"
    );
    let later = now() + SignedDuration::from_mins(1);
    let (knob, old) = turn_emea_knob(&app, 25.0, later);
    let run = app.run(later).await;
    let state = app.store.load_engine(&m.policy).unwrap();
    let (mut became, mut held, mut old_scores) = (0, 0, 0);
    for (id, person) in state.persons.iter() {
        let emea = person
            .facts
            .as_ref()
            .is_some_and(|f| f.attributes.get("region") == Some("EMEA"));
        let map_lead = person.map_lead;
        let score = map_lead
            .and_then(|l| state.map_leads.get(&l))
            .and_then(|l| l.scores.value(&m.policy.score, later));
        if !emea || !score.is_some_and(|s| s >= old - 25.0 && s < old) {
            continue;
        }
        if person.cycles.iter().any(|c| c.mql_at == later) {
            became += 1;
            let c = person.cycles.last().unwrap();
            assert_eq!(c.threshold_id.as_deref(), Some(knob.as_str()));
            // Known only from the lead record: no score change inside the look-back.
            if !world
                .score_changes
                .iter()
                .any(|s| Some(s.map_id) == map_lead && s.at >= look_back)
            {
                old_scores += 1;
            }
        } else {
            held += 1;
            let why = mqlsync::engine::explain(&state, &m.policy, id, later);
            assert!(
                matches!(
                    why,
                    mqlsync::engine::Reason::Excluded { .. }
                        | mqlsync::engine::Reason::OpenCycle { .. }
                        | mqlsync::engine::Reason::CoolingDown { .. }
                ),
                "{id}: {why:?}"
            );
        }
    }
    assert!(became > 0 && held > 0, "{run:?}");
    assert!(
        old_scores > 0,
        "some of them last changed before the look-back"
    );
    assert_eq!(run.decisions.get("open_cycle"), Some(&became), "{run:?}");
}

/// Issue 12, point 2: by default the people already at or above their threshold at the first
/// run become MQLs at go-live (dated then, reason `at_go_live`); a dry run says beforehand how
/// many, by segment and CRM status; `sync.go_live = "wait"` leaves the same people waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_run_goes_live_as_its_dry_run_said_or_leaves_them_waiting() {
    let mut app = spawn_app_with(1_000, "").await;
    let dry = app
        .try_run_with(
            now(),
            &RunSettings {
                dry_run: true,
                ..RunSettings::default()
            },
        )
        .await
        .unwrap();
    // The dry run ran on this store: it went live there. A fresh app runs for real.
    let said = dry.go_live.clone().expect("a first run goes live");
    let mut real = spawn_app_with(1_000, "").await;
    let first = real.run(now()).await;
    let went = first.go_live.clone().expect("a first run goes live");
    assert!(went.people > 0, "{first:?}");
    assert_eq!(
        (went.people, &went.by_segment, &went.by_status),
        (said.people, &said.by_segment, &said.by_status)
    );
    let at_go_live: Vec<_> = real
        .store
        .cycles()
        .unwrap()
        .into_iter()
        .filter(|c| c.mql_at == now())
        .collect();
    assert_eq!(at_go_live.len(), went.people);
    let audit = real.store.audit_of(&at_go_live[0].crm.id).unwrap();
    assert!(
        audit
            .iter()
            .any(|(_, _, why)| why.contains("\"code\":\"at_go_live\"")),
        "{audit:?}"
    );
    // A second run does not go live again.
    assert!(real.run(now()).await.go_live.is_none());

    let mut waiting = spawn_app_with(1_000, "").await;
    let run = waiting
        .try_run_with(
            now(),
            &RunSettings {
                go_live: mqlsync::config::GoLive::Wait,
                ..RunSettings::default()
            },
        )
        .await
        .unwrap();
    let left = run.go_live.expect("a first run goes live");
    assert_eq!(
        (left.people, &left.by_segment),
        (went.people, &went.by_segment)
    );
    assert!(
        waiting
            .store
            .cycles()
            .unwrap()
            .iter()
            .all(|c| c.mql_at != now()),
        "nobody became an MQL at go-live"
    );
}

/// A backfill of the last year on `app` (writes above `bulk_above` MQL records go through
/// Bulk API 2.0 ingest). A year is longer than 31 days: the score history comes by bulk
/// activity extract, whose waits move the sandbox's clock.
fn backfill_settings(app: &App, bulk_above: usize) -> RunSettings {
    RunSettings {
        backfill: Some(mqlsync::sync::once::BackfillWindow {
            since: now() - SignedDuration::from_hours(24 * 365),
            until: now(),
            bulk_above,
        }),
        bulk_reads: bulk_reads(app),
        ..RunSettings::default()
    }
}

/// [`backfill_settings`] reading the score history through the activities API instead.
fn backfill_settings_by_api(app: &App, bulk_above: usize) -> RunSettings {
    let mut settings = backfill_settings(app, bulk_above);
    settings.bulk_reads.activities_above_days = 400;
    settings
}

/// Bulk reads whose waits between export-status polls move the sandbox's clock: Marketo's
/// minutes pass at once.
fn bulk_reads(app: &App) -> BulkReads {
    let clock = app.sandbox.clock().clone();
    BulkReads {
        pause: PauseBy::Hook(std::sync::Arc::new(move |d| {
            clock.advance(SignedDuration::try_from(d).expect("a short pause"))
        })),
        ..BulkReads::default()
    }
}

fn marketo_calls(app: &App, kind: &str) -> u64 {
    app.sandbox
        .log()
        .counts()
        .get(&(System::Marketo, kind.to_string()))
        .copied()
        .unwrap_or(0)
}

/// The cycles of a store as (external id, MQL date, status), for comparisons.
fn cycle_facts(app: &App) -> Vec<(String, Timestamp, String)> {
    let mut facts: Vec<_> = app
        .store
        .cycles()
        .unwrap()
        .into_iter()
        .map(|c| (c.external_id, c.mql_at, c.status.as_str().to_string()))
        .collect();
    facts.sort();
    facts
}

/// Issue 12, points 4, 5 and 8: a backfill rebuilds the year's cycles, marked backfilled, with
/// their historical MQL dates, no alert and no SLA; the MQL records reach the CRM marked so;
/// run again it writes nothing; the first run after it goes live without a duplicate and
/// continues each person's numbering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_rebuilds_the_history_once_and_the_first_run_after_it_continues() {
    let mut app = spawn_app_limits(1_000, "", false).await;
    let first = app
        .try_run_with(now(), &backfill_settings(&app, 100_000))
        .await
        .unwrap();
    let report = first.backfill.clone().expect("a backfill report");
    let cycles = app.store.cycles().unwrap();
    assert!(
        report.cycles > 0 && report.cycles == cycles.len(),
        "{first:?}"
    );
    assert!(
        cycles
            .iter()
            .all(|c| c.backfilled && c.sla_due_at.is_none())
    );
    let look_back = now() - SignedDuration::from_hours(24 * 30);
    assert!(
        cycles.iter().any(|c| c.mql_at < look_back),
        "history older than a run's look-back"
    );
    assert_eq!(first.decisions.get("notify"), None, "no alerts: {first:?}");
    let records = app
        .query("SELECT Id, External_Id__c, Backfilled__c FROM MQL__c")
        .await;
    assert_eq!(records.len(), cycles.len());
    assert!(records.iter().all(|r| r["Backfilled__c"] == json!(true)));
    // Again: complete, nothing read or written.
    app.sandbox.log().clear();
    let again = app
        .try_run_with(now(), &backfill_settings(&app, 100_000))
        .await
        .unwrap();
    assert!(again.backfill.unwrap().already_complete);
    assert!(again.written.is_empty(), "{:?}", again.written);
    // The first run: no duplicate, numbering continues, go-live skips people with history.
    let run = app.run(now()).await;
    let after = app.store.cycles().unwrap();
    let mut ids: Vec<&str> = after.iter().map(|c| c.external_id.as_str()).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "no duplicate cycle");
    for c in after.iter().filter(|c| !c.backfilled) {
        let earlier = after
            .iter()
            .filter(|b| b.crm.id == c.crm.id && b.backfilled)
            .map(|b| b.number)
            .max()
            .unwrap_or(0);
        assert_eq!(c.number, earlier + 1, "{c:?}");
    }
    assert!(run.go_live.is_some());
    assert_eq!(
        app.query("SELECT Id FROM MQL__c").await.len(),
        after.len(),
        "one MQL record per cycle"
    );
}

/// Issue 12, point 5: killed at any point and started again with the same window, a backfill
/// continues from its cursor and ends where an unbroken one ends, whether it reads the score
/// history through the activities API or by bulk extract; a bulk one does not export again
/// the windows it had finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_killed_anywhere_and_started_again_ends_as_an_unbroken_one() {
    let mut unbroken = spawn_app_limits(600, "", false).await;
    let settings = backfill_settings_by_api(&unbroken, 100_000);
    unbroken.try_run_with(now(), &settings).await.unwrap();
    let expected = cycle_facts(&unbroken);
    assert!(!expected.is_empty());
    let cases = [
        (false, "activities", 2),
        (false, "leads_by_filter", 1),
        (false, "activities", 9),
        (true, "bulk_activities_file", 5),
        (true, "bulk_activities_status", 8),
        (true, "leads_by_filter", 3),
    ];
    for (bulk, kind, skip) in cases {
        let mut app = spawn_app_limits(600, "", false).await;
        let settings = match bulk {
            true => backfill_settings(&app, 100_000),
            false => backfill_settings_by_api(&app, 100_000),
        };
        app.fault_on(
            System::Marketo,
            kind,
            skip,
            Some(1),
            FaultAction::Status {
                status: 400,
                body: None,
            },
        );
        let stopped = app.try_run_with(now(), &settings).await;
        assert!(
            stopped.is_err(),
            "the fault on {kind} after {skip} stopped it"
        );
        let files_before = marketo_calls(&app, "bulk_activities_file");
        let resumed = app.try_run_with(now(), &settings).await.unwrap();
        assert!(!resumed.backfill.unwrap().already_complete);
        assert_eq!(cycle_facts(&app), expected, "killed at {kind} #{skip}");
        if bulk {
            let windows = 12; // 365 days in windows of 31
            let files = marketo_calls(&app, "bulk_activities_file");
            assert!(files_before > 0 && files > files_before, "{kind} #{skip}");
            // Of the score history, the window under way is downloaded again, and the next
            // one, fetched while it was replayed (its export was queued beside it either way,
            // so Marketo's daily export quota pays the same); the hand-raiser rules' export
            // is read whole at each start.
            assert!(
                files <= windows + 2 + 2 * windows,
                "only the windows under way are downloaded again ({files} downloads, {kind} #{skip})"
            );
        }
    }
}

/// Issue 12, point 4: a backfill longer than 31 days reads the score history by bulk
/// activity extract, one export job per 31-day window and no activities page, and rebuilds
/// the same cycles as the activities API, those of the hand-raiser rules included (their
/// activities by an export of their own: the Change Score export's filter on the score
/// fields takes one asset group).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_backfill_reads_the_history_by_bulk_extract_and_rebuilds_what_the_api_would() {
    let mut by_api = spawn_app_limits(600, "", false).await;
    let settings = backfill_settings_by_api(&by_api, 100_000);
    by_api.try_run_with(now(), &settings).await.unwrap();
    assert!(marketo_calls(&by_api, "activities") > 0);
    let mut app = spawn_app_limits(600, "", false).await;
    let settings = backfill_settings(&app, 100_000);
    let run = app.try_run_with(now(), &settings).await.unwrap();
    assert_eq!(cycle_facts(&app), cycle_facts(&by_api), "{run:?}");
    assert!(!cycle_facts(&app).is_empty());
    assert_eq!(hand_raised(&app), hand_raised(&by_api));
    assert!(!hand_raised(&app).is_empty(), "the history's demo requests");
    assert_eq!(marketo_calls(&app, "activities"), 0, "no activities page");
    // 365 days in windows of 31: the score history's and the hand-raiser rules' exports.
    assert_eq!(marketo_calls(&app, "bulk_activities_create"), 12 + 12);
    assert_eq!(marketo_calls(&app, "bulk_activities_file"), 12 + 12);
}

/// The backfilled cycles a hand-raise opened, as (external id, MQL date, rule, activity id).
fn hand_raised(app: &App) -> Vec<(String, Timestamp, String, String)> {
    let mut raised: Vec<_> = app
        .store
        .cycles()
        .unwrap()
        .into_iter()
        .filter(|c| c.backfilled)
        .filter_map(|c| {
            let h = *c.hand_raise?;
            Some((c.external_id, c.mql_at, h.rule, h.activity_id))
        })
        .collect();
    raised.sort();
    raised
}

/// Issue 12, point 1: a large instance's current scores come by bulk lead extract (one job
/// per 31 days since `sync.leads_since`), and the first run then knows, and decides, what a
/// read by filter would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_scores_by_bulk_lead_extract_know_what_a_read_by_filter_knows() {
    let mut by_filter = spawn_app_limits(300, "", false).await;
    let expected = by_filter.run(now()).await;
    assert_eq!(marketo_calls(&by_filter, "bulk_leads_create"), 0);
    let mut app = spawn_app_limits(300, "", false).await;
    let since = now() - SignedDuration::from_hours(24 * 401);
    let settings = RunSettings {
        bulk_reads: BulkReads {
            current_scores: mqlsync::config::CurrentScoreRead::Bulk,
            leads_since: Some(since),
            ..bulk_reads(&app)
        },
        ..RunSettings::default()
    };
    let run = app.try_run_with(now(), &settings).await.unwrap();
    let choice = run.current_scores_read.clone().unwrap();
    assert_eq!(choice.bulk_since, Some(since), "{choice:?}");
    assert_eq!(marketo_calls(&app, "bulk_leads_create"), 13, "401 days");
    assert_eq!(marketo_calls(&app, "bulk_leads_file"), 13);
    assert_eq!(
        run.read["current scores"], expected.read["current scores"],
        "the same linked leads"
    );
    assert_eq!(cycle_facts(&app), cycle_facts(&by_filter));
    assert!(!cycle_facts(&app).is_empty());
}

/// Issue 12, point 4 and 8: above the configured size the MQL records, and the people's
/// stamps, go through Bulk API 2.0 ingest, and a record it refuses fails alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_backfill_writes_through_bulk_ingest_and_a_refused_record_fails_alone() {
    let mut app = spawn_app_limits(1_000, "", false).await;
    app.fault(
        "bulk2_ingest_upload",
        0,
        Some(1),
        FaultAction::FailRecord {
            index: 0,
            code: Some("FIELD_CUSTOM_VALIDATION_EXCEPTION".into()),
            message: Some("Backfilled records need a source".into()),
        },
    );
    let run = app
        .try_run_with(now(), &backfill_settings(&app, 10))
        .await
        .unwrap();
    let cycles = app.store.cycles().unwrap().len();
    // The MQL records, then the leads' and the contacts' stamps: three jobs, no Collections.
    assert!(app.calls("bulk2_ingest_create") >= 3, "{run:?}");
    assert_eq!(app.calls("composite_upsert"), 0, "{run:?}");
    assert_eq!(app.calls("composite_update"), 0, "{run:?}");
    assert!(
        run.written.get("lead_update").copied().unwrap_or(0) > 10
            && run.written.get("contact_update").copied().unwrap_or(0) > 10,
        "{run:?}"
    );
    // The jobs run side by side, so the first upload the fault meets may be any object's:
    // whichever it is, that one record is parked and every other is written.
    assert_eq!(run.parked.count, 1, "{run:?}");
    let parked = &run.parked.first[0];
    assert!(
        parked.contains("FIELD_CUSTOM_VALIDATION_EXCEPTION"),
        "{:?}",
        run.parked
    );
    let refused_mql = !(parked.starts_with("Lead:") || parked.starts_with("Contact:"));
    let mqls = run.written.get("mql_upsert").copied().unwrap_or(0);
    assert_eq!(mqls + usize::from(refused_mql), cycles, "{run:?}");
    assert_eq!(app.query("SELECT Id FROM MQL__c").await.len(), mqls);
}

/// Issue 12, point 4: a backfill rebuilds what came before go-live; on a live store it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_on_a_store_that_went_live_stops_saying_why() {
    let mut app = spawn_app().await;
    app.run(now()).await;
    let err = app
        .try_run_with(now(), &backfill_settings(&app, 100_000))
        .await
        .unwrap_err();
    assert!(matches!(err, SyncError::AlreadyLive { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("before the first `mqlsync run --once`")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_during_a_write_sends_again_only_that_calls_records() {
    let mut app = spawn_app().await;
    // The MQL records' upsert is answered; the leads' stamps update then hangs, and the run is
    // dropped there, as a killed process would be.
    app.fault(
        "composite_update",
        0,
        Some(1),
        FaultAction::Delay { millis: 600_000 },
    );
    let watcher = Store::open_existing(&app.config.store).unwrap();
    let faults = app.sandbox.faults().clone();
    let mql_pending = || {
        watcher
            .outbox_pending(100_000)
            .unwrap()
            .into_iter()
            .filter(|r| r.kind == "cycle")
            .count()
    };
    let upserted = {
        let run = app.try_run(now());
        tokio::pin!(run);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            tokio::select! {
                r = &mut run => panic!("the run should hang on the stamps: {r:?}"),
                _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
            }
            // Every MQL record is sent before the stamps; once the stamps' call is in flight,
            // the upserted records must already be settled in the store.
            if faults.fired() == [1] {
                break mql_pending();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stamps' call never started"
            );
        }
    };
    assert_eq!(
        upserted, 0,
        "the answered upsert was settled before the next call"
    );
    let upserts = app.calls("composite_upsert");
    assert!(upserts >= 1);

    app.sandbox.faults().clear();
    let run = app.run(now()).await;
    assert_eq!(
        app.calls("composite_upsert"),
        upserts,
        "no MQL record sent twice: {:?}",
        run.written
    );
    assert!(app.calls("composite_update") >= 1, "the stamps went out");
    assert!(app.store.outbox_pending(10_000).unwrap().is_empty());
}

/// The threshold history is re-read with the look-back (history rows have no modstamp), but a
/// row seen before is not read news: a daemon's thresholds source that counted it would poll
/// at its interval for ever instead of backing off while idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_history_rows_read_again_are_not_counted_as_read() {
    let mut app = spawn_app().await;
    let first = app.run(now()).await;
    assert!(
        first
            .read
            .get("MQL_Threshold__History")
            .is_some_and(|n| *n > 0),
        "{:?}",
        first.read
    );
    let again = app.run(now()).await;
    assert_eq!(
        again.read.get("MQL_Threshold__History"),
        Some(&0),
        "{:?}",
        again.read
    );
}

/// Issue 12, point 4: a backfilled cycle carries its historical SAL and closed dates. The
/// sandbox's org tracks the people's status; a rep moved each worked person off Open some hours
/// or days after their last score change. The backfill reads that history: a cycle whose
/// person went to Working - Contacted (accepted, by the mapping's `[statuses.history]`) is
/// Working from then, its record and the person carry that SAL date; one whose person went to
/// Nurture is Rejected then with the mapped reason. The people's own status is left as is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_dates_acceptance_and_rejection_from_the_crms_status_history() {
    let mut app = spawn_app_limits(1_000, "", false).await;
    let statuses = |rows: Vec<Map<String, Value>>, field: &str| {
        rows.into_iter()
            .map(|r| (r["Id"].as_str().unwrap().to_string(), r[field].clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let leads_before = statuses(app.query("SELECT Id, Status FROM Lead").await, "Status");
    let contacts_before = statuses(
        app.query("SELECT Id, Contact_Status__c FROM Contact").await,
        "Contact_Status__c",
    );
    app.try_run_with(now(), &backfill_settings(&app, 100_000))
        .await
        .unwrap();

    let mut changed = std::collections::BTreeMap::new();
    for (object, parent, field) in [
        ("LeadHistory", "LeadId", "Status"),
        ("ContactHistory", "ContactId", "Contact_Status__c"),
    ] {
        for r in app
            .query(&format!(
                "SELECT {parent}, NewValue, CreatedDate FROM {object} WHERE Field = '{field}'"
            ))
            .await
        {
            changed.insert(
                r[parent].as_str().unwrap().to_string(),
                (
                    r["NewValue"].as_str().unwrap().to_string(),
                    instant(&r["CreatedDate"]).unwrap(),
                ),
            );
        }
    }
    let (mut working, mut rejected) = (0, 0);
    for c in app.store.cycles().unwrap() {
        let record = &app
            .query(&format!(
                "SELECT Status__c, SAL_Date__c, Closed_Date__c, Rejection_Reason__c FROM MQL__c WHERE External_Id__c = '{}'",
                c.external_id
            ))
            .await[0];
        assert_eq!(record["Status__c"], json!(c.status.as_str()), "{c:?}");
        let change = changed
            .get(c.crm.id.as_str())
            .filter(|(_, at)| *at >= c.mql_at);
        match c.status {
            CycleStatus::Working => {
                working += 1;
                let (status, at) = change.expect("accepted by a status change");
                assert_eq!(status, "Working - Contacted", "{c:?}");
                assert_eq!(c.sal_at, Some(*at), "{c:?}");
                assert_eq!(instant(&record["SAL_Date__c"]), Some(*at));
            }
            CycleStatus::Rejected => {
                rejected += 1;
                let (status, at) = change.expect("rejected by a status change");
                let reason = match status.as_str() {
                    "Nurture" => "Not Interested Now",
                    "Rejected" => "Bad Data",
                    "Spam" => "Spam",
                    other => panic!("{other} rejects nothing: {c:?}"),
                };
                assert_eq!(
                    (c.closed_at, c.rejection_reason.as_deref()),
                    (Some(*at), Some(reason)),
                    "{c:?}"
                );
                assert_eq!(instant(&record["Closed_Date__c"]), Some(*at));
                assert_eq!(record["Rejection_Reason__c"], json!(reason));
            }
            CycleStatus::Open => assert!(
                change.is_none() || c.number > 1,
                "an Open cycle whose person was worked after it: {c:?} {change:?}"
            ),
            CycleStatus::Converted => {}
        }
    }
    assert!(
        working > 0 && rejected > 0,
        "{working} working, {rejected} rejected"
    );
    assert_eq!(
        statuses(app.query("SELECT Id, Status FROM Lead").await, "Status"),
        leads_before,
        "the leads' status as the CRM had it"
    );
    assert_eq!(
        statuses(
            app.query("SELECT Id, Contact_Status__c FROM Contact").await,
            "Contact_Status__c"
        ),
        contacts_before
    );
}

/// A mapping text with `crm.mql.qualified_by` on (the default leaves it off).
fn with_qualified_by(text: &str) -> String {
    let off = "# qualified_by = \"Qualified_By__c\"";
    assert!(text.contains(off));
    text.replacen(off, "qualified_by = \"Qualified_By__c\"", 1)
}

/// The first person of the store (by slot) whose verdict `explain` gives at `at` matches
/// `wanted`, and who a score far above the threshold would make an MQL (`qualifies`) or not,
/// with their MAP lead: the engine says so on a copy of the store's state.
fn person_where(
    app: &App,
    at: Timestamp,
    wanted: impl Fn(&mqlsync::engine::model::Reason) -> bool,
    qualifies: bool,
) -> (String, i64) {
    let policy = mapping::load(None).unwrap().policy;
    person_under(app, &policy, at, |_, r| wanted(r), qualifies)
}

/// [`person_where`] under another policy, `wanted` seeing the CRM id too.
fn person_under(
    app: &App,
    policy: &mqlsync::engine::Policy,
    at: Timestamp,
    wanted: impl Fn(&str, &mqlsync::engine::model::Reason) -> bool,
    qualifies: bool,
) -> (String, i64) {
    let state = app.store.load_engine(policy).unwrap();
    (0..state.persons.len() as u32)
        .find_map(|slot| {
            let id = state.persons.id(slot);
            let lead = state.persons.at(slot).map_lead?;
            if !wanted(id, &mqlsync::engine::explain(&state, policy, id, at)) {
                return None;
            }
            (would_qualify(&state, policy, lead, at) == qualifies).then(|| (id.to_string(), lead))
        })
        .expect("such a person in the seeded world")
}

/// Whether a score far above any threshold on MAP lead `lead` at `at` would open a cycle:
/// the engine says so on a copy of the state.
fn would_qualify(
    state: &mqlsync::engine::EngineState,
    policy: &mqlsync::engine::Policy,
    lead: i64,
    at: Timestamp,
) -> bool {
    use mqlsync::engine::model::{Action, Event, ScoreChange, ScorePart};
    use mqlsync::engine::{Context, Visibility, reconcile};
    let ctx = Context {
        policy,
        now: at,
        backfill: false,
        visibility: Visibility::WhenWritten,
    };
    let mut copy = state.clone();
    let high = Event::Score(ScoreChange {
        map_lead_id: lead,
        change_id: "probe".into(),
        part: ScorePart::Total,
        new_value: 10_000.0,
        old_value: None,
        campaign: None,
        at,
    });
    reconcile(&mut copy, &ctx, &high)
        .iter()
        .any(|d| matches!(d.action, Action::OpenCycle { .. }))
}

/// Issue 15, points 1, 2 and 5: a Demo Request form fill makes an MQL of a person below the
/// threshold, read in the same activities calls as the score changes; an excluded person and
/// a person with an open MQL raise their hands for nothing, and the audit says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_request_makes_an_mql_whatever_the_score_in_the_calls_the_scores_take() {
    use mqlsync::engine::model::Reason;
    let mut app = spawn_app().await;
    app.run(now()).await;
    let below = person_where(
        &app,
        now(),
        |r| matches!(r, Reason::BelowThreshold { .. }),
        true,
    );
    let excluded = person_where(&app, now(), |r| matches!(r, Reason::Excluded { .. }), false);
    let open = person_where(
        &app,
        now(),
        |r| matches!(r, Reason::OpenCycle { .. }),
        false,
    );
    let before = app.store.cycles().unwrap();
    let cycles_before = before.len();
    let of = |cycles: &[mqlsync::engine::model::Cycle], id: &str| {
        cycles.iter().filter(|c| c.crm.id == id).count()
    };
    let open_cycles = of(&before, &open.0);

    let later = now() + SignedDuration::from_mins(10);
    app.sandbox.clock().set(later);
    let marketo = app.sandbox.marketo();
    for (_, lead) in [&below, &excluded, &open] {
        marketo.fill_out_form(*lead, 1001, None).unwrap();
    }
    // A form no rule names, and a score change: read in the same calls.
    marketo.fill_out_form(below.1, 1005, None).unwrap();
    marketo
        .apply_score_change(
            excluded.1,
            mqlsync::sandbox::world::ScoreField::LeadScore,
            1,
            None,
        )
        .unwrap();
    app.sandbox.log().clear();
    let labelled = mapping::parse(
        &with_qualified_by(mapping::DEFAULT_MAPPING),
        "labelled.toml",
    )
    .unwrap();
    let run = app.run_mapped(later, &labelled).await;
    assert_fewest_calls(&app, &run, 0);
    let activity_calls = app
        .sandbox
        .log()
        .counts()
        .get(&(System::Marketo, "activities".to_string()))
        .copied();
    assert_eq!(
        activity_calls,
        Some(1),
        "one page holds the score change and the form fills"
    );
    assert_eq!(
        run.qualified_by.get("hand-raiser Demo Request"),
        Some(&1),
        "{run:?}"
    );

    let cycles = app.store.cycles().unwrap();
    assert_eq!(cycles.len(), cycles_before + 1);
    let raised = cycles
        .iter()
        .find(|c| c.crm.id == below.0)
        .expect("the MQL");
    assert!(raised.score < raised.threshold, "{raised:?}");
    assert_eq!(raised.mql_at, later);
    let record = app
        .query(&format!(
            "SELECT Status__c, Qualified_By__c, Score_At_MQL__c FROM MQL__c WHERE External_Id__c = '{}'",
            raised.external_id
        ))
        .await
        .remove(0);
    assert_eq!(record["Score_At_MQL__c"], json!(raised.score));
    let qualified = record["Qualified_By__c"].as_str().unwrap();
    assert!(
        qualified.starts_with("Hand-raiser Demo Request: Fill Out Form on Demo Request at "),
        "{qualified}"
    );
    assert_eq!(record["Status__c"], json!("Open"));

    let held = |id: &str, code: &str| {
        app.store.audit_of(id).unwrap().iter().any(|(_, _, why)| {
            let why: Value = serde_json::from_str(why).unwrap();
            why["code"] == "hand_raise_held" && why["why"]["code"] == code
        })
    };
    assert!(
        held(&excluded.0, "excluded"),
        "{:?}",
        app.store.audit_of(&excluded.0)
    );
    assert!(
        held(&open.0, "open_cycle"),
        "{:?}",
        app.store.audit_of(&open.0)
    );
    assert_eq!(of(&cycles, &open.0), open_cycles);

    // Read again through the look-back: applied once.
    let again = app.run_mapped(later, &labelled).await;
    assert!(again.qualified_by.is_empty(), "{again:?}");
    assert_eq!(app.store.cycles().unwrap().len(), cycles_before + 1);
}

/// The default mapping with target accounts on: contacts through their account's
/// `Target_Account__c`, leads through their own, and a segment of the knob.
fn target_account_mapping(account_field: &str) -> mapping::LoadedMapping {
    let text = mapping::DEFAULT_MAPPING
        .replacen(
            "segments = [\"region\", \"team\", \"business_line\"]",
            "segments = [\"region\", \"team\", \"business_line\", \"target_account\"]",
            1,
        )
        .replacen(
            "# target_account = { lead = \"Target_Account__c\", account = \"Target_Account__c\",",
            &format!(
                "target_account = {{ lead = \"Target_Account__c\", account = \"{account_field}\","
            ),
            1,
        )
        .replacen(
            "# [crm.account]\n# object = \"Account\"",
            "[crm.account]\nobject = \"Account\"",
            1,
        );
    assert!(text.contains("[crm.account]") && text.contains("\ntarget_account = {"));
    mapping::parse(&text, "target-accounts.toml").unwrap()
}

/// Issue 15, point 3: target accounts are an attribute like any other. A knob for target
/// accounts only reaches the contacts of target accounts (through their account) and the
/// leads flagged themselves; an account added to the list later brings its contacts the
/// knob at that instant; `check --remote` checks the account's field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_accounts_have_their_own_knob_through_their_account() {
    use mqlsync::engine::model::{CrmKind, Reason};
    use mqlsync::sync::preflight;
    let mut app = spawn_app().await;
    let loaded = target_account_mapping("Target_Account__c");
    let problems = preflight::check(&app.sf, &app.mk, &loaded.mapping)
        .await
        .unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let broken = target_account_mapping("Target_Acount__c");
    let problems: Vec<String> = preflight::check(&app.sf, &app.mk, &broken.mapping)
        .await
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        problems,
        [
            "attributes.target_account.account: Account has no field Target_Acount__c, or the integration user cannot see it"
        ]
    );

    // A sales manager turns the EMEA knob into one for target accounts, at 5.
    let knob = emea_knob(&app);
    let mut edit = Map::new();
    edit.insert("Region__c".into(), Value::Null);
    edit.insert("Target_Account__c".into(), json!("true"));
    edit.insert("Score_Threshold__c".into(), json!(5.0));
    app.sandbox
        .salesforce()
        .edit_record("MQL_Threshold__c", &knob.id, edit)
        .unwrap();
    let first = app.run_mapped(now(), &loaded).await;
    assert!(
        first.read.get("Account").is_some_and(|n| *n > 0),
        "{first:?}"
    );
    let world = app.sandbox.world().clone();
    let targets: BTreeSet<&str> = world
        .accounts
        .iter()
        .filter(|a| a.target)
        .map(|a| a.id.as_str())
        .collect();
    let targeted = app
        .store
        .cycles()
        .unwrap()
        .into_iter()
        .filter(|c| c.segment == "target_account=true")
        .collect::<Vec<_>>();
    assert!(
        targeted.iter().any(|c| c.crm.kind == CrmKind::Contact),
        "{targeted:?}"
    );
    for c in &targeted {
        let person = world
            .people
            .iter()
            .find(|p| p.crm_id.as_deref() == Some(c.crm.id.as_str()))
            .unwrap();
        match c.crm.kind {
            CrmKind::Contact => assert!(
                targets.contains(person.account_id.as_deref().unwrap()),
                "{c:?}"
            ),
            CrmKind::Lead => {}
        }
    }

    // An account added to the list later: its contact below the old knob meets the new one.
    let contact = |id: &str| {
        world
            .people
            .iter()
            .find(|p| p.crm_id.as_deref() == Some(id))
            .cloned()
    };
    let (crm_id, _) = person_under(
        &app,
        &loaded.policy,
        now(),
        |id, r| {
            contact(id).is_some_and(|p| {
                p.account_id
                    .as_deref()
                    .is_some_and(|a| !targets.contains(a))
            }) && matches!(r, Reason::BelowThreshold { score, .. } if *score >= 5.0)
        },
        true,
    );
    let account = contact(&crm_id).unwrap().account_id.unwrap();
    let later = now() + SignedDuration::from_mins(15);
    app.sandbox.clock().set(later);
    let mut edit = Map::new();
    edit.insert("Target_Account__c".into(), json!(true));
    app.sandbox
        .salesforce()
        .edit_record("Account", &account, edit)
        .unwrap();
    app.run_mapped(later, &loaded).await;
    let cycles: Vec<_> = app
        .store
        .cycles()
        .unwrap()
        .into_iter()
        .filter(|c| c.crm.id == crm_id)
        .collect();
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert_eq!(
        (cycles[0].mql_at, cycles[0].segment.as_str()),
        (later, "target_account=true")
    );
}

/// Issue 15, point 4: under account scoring, two contacts of one account each add points;
/// the change that takes the account's sum over the threshold opens one MQL, for that
/// contact, owned by the account's owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_crossing_through_two_contacts_makes_one_mql_for_the_account_owner() {
    use mqlsync::engine::model::Reason;
    let mut app = spawn_app().await;
    let text = with_qualified_by(mapping::DEFAULT_MAPPING)
        .replacen("source = \"total\"", "source = \"account\"", 1)
        .replacen(
            "# [crm.account]\n# object = \"Account\"",
            "[crm.account]\nobject = \"Account\"",
            1,
        );
    let loaded = mapping::parse(&text, "account-scoring.toml").unwrap();
    app.run_mapped(now(), &loaded).await;

    // An account with two contacts below the threshold whom nothing else holds back.
    let world = app.sandbox.world().clone();
    let state = app.store.load_engine(&loaded.policy).unwrap();
    let below = |id: &str| match mqlsync::engine::explain(&state, &loaded.policy, id, now()) {
        Reason::BelowThreshold {
            score, threshold, ..
        } => Some((score, threshold)),
        _ => None,
    };
    let (account, first, second, (score, threshold)) = world
        .accounts
        .iter()
        .find_map(|a| {
            let contacts: Vec<_> = world
                .people
                .iter()
                .filter(|p| p.account_id.as_deref() == Some(a.id.as_str()))
                .filter(|p| {
                    p.crm_id.as_deref().is_some_and(|id| {
                        below(id).is_some()
                            && would_qualify(&state, &loaded.policy, p.map_id, now())
                    })
                })
                .collect();
            let [first, second, ..] = contacts.as_slice() else {
                return None;
            };
            let sum = below(first.crm_id.as_deref().unwrap())?;
            Some((a.clone(), (*first).clone(), (*second).clone(), sum))
        })
        .expect("an account with two contacts below the threshold");
    let gap = (threshold - score).ceil() as i64;
    assert!(gap >= 2, "{score} {threshold}");

    let later = now() + SignedDuration::from_mins(20);
    app.sandbox.clock().set(later);
    let marketo = app.sandbox.marketo();
    let total = mqlsync::sandbox::world::ScoreField::LeadScore;
    marketo
        .apply_score_change(first.map_id, total, gap / 2, None)
        .unwrap();
    app.sandbox
        .clock()
        .set(later + SignedDuration::from_secs(1));
    marketo
        .apply_score_change(second.map_id, total, gap - gap / 2, Some(1003))
        .unwrap();
    let run = app
        .run_mapped(later + SignedDuration::from_secs(1), &loaded)
        .await;
    assert_eq!(run.qualified_by.get("account"), Some(&1), "{run:?}");
    let opened: Vec<_> = app
        .store
        .cycles()
        .unwrap()
        .into_iter()
        .filter(|c| {
            world.people.iter().any(|p| {
                p.crm_id.as_deref() == Some(c.crm.id.as_str())
                    && p.account_id.as_deref() == Some(account.id.as_str())
            })
        })
        .collect();
    assert_eq!(opened.len(), 1, "{opened:?}");
    let cycle = &opened[0];
    assert_eq!(
        cycle.crm.id,
        second.crm_id.clone().unwrap(),
        "the contact whose change tipped it"
    );
    assert_eq!(cycle.owner_id.as_deref(), Some(account.owner_id.as_str()));
    assert_eq!(cycle.account_id.as_deref(), Some(account.id.as_str()));
    assert!(cycle.score >= cycle.threshold, "{cycle:?}");
    let record = app
        .query(&format!(
            "SELECT OwnerId, Qualified_By__c FROM MQL__c WHERE External_Id__c = '{}'",
            cycle.external_id
        ))
        .await
        .remove(0);
    assert_eq!(record["OwnerId"], json!(account.owner_id));
    assert!(
        record["Qualified_By__c"]
            .as_str()
            .unwrap()
            .starts_with(&format!("Account score: account {}", account.id)),
        "{record:?}"
    );
}

/// Issue 14, point 3: each threshold record carries the MQLs a week its segment had and its
/// level would have made over the last four weeks; mqlsync's own write coming back changes
/// nothing and writes nothing; a knob turn refreshes the record it turned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_threshold_record_carries_its_weekly_mqls_and_a_knob_turn_refreshes_them() {
    let mut app = spawn_app_with(2_000, "").await;
    let m = feedback_mapping();
    let first = app.run_mapped(now(), &m).await;
    let soql = "SELECT Id, Region__c, Score_Threshold__c, Projected_Weekly_MQLs__c, Actual_Weekly_MQLs__c, Feedback_Date__c FROM MQL_Threshold__c";
    let records = app.query(soql).await;
    assert_eq!(
        first.written.get("threshold_update"),
        Some(&records.len()),
        "{first:?}"
    );
    // Actual: the store's MQLs of the record's segment over the four weeks, a week.
    let since = now() - SignedDuration::from_hours(24 * 28);
    let cycles = app.store.cycles().unwrap();
    let number = |r: &Map<String, Value>, field: &str| r[field].as_f64().unwrap();
    for r in &records {
        let segment = r["Region__c"]
            .as_str()
            .map_or("default".to_string(), |region| format!("region={region}"));
        let mqls = cycles
            .iter()
            .filter(|c| c.segment == segment && c.mql_at >= since && c.mql_at < now())
            .count();
        let weekly = (mqls as f64 / 4.0 * 10.0).round() / 10.0;
        assert_eq!(number(r, "Actual_Weekly_MQLs__c"), weekly, "{r:?}");
        assert_eq!(r["Feedback_Date__c"], json!("2026-11-02"), "{r:?}");
        assert!(number(r, "Projected_Weekly_MQLs__c") >= 0.0, "{r:?}");
    }
    // mqlsync's writes come back as new versions of the records: nobody is re-evaluated,
    // and the feedback, computed again, is what was written.
    let again = app.run_mapped(now(), &m).await;
    assert_eq!(again.read.get("MQL_Threshold__c"), Some(&records.len()));
    assert_eq!(again.written.get("threshold_update"), None, "{again:?}");
    assert_eq!(app.store.cycles().unwrap().len(), cycles.len());

    let emea = emea_knob(&app).id;
    let projected_before = number(
        records.iter().find(|r| r["Id"] == json!(emea)).unwrap(),
        "Projected_Weekly_MQLs__c",
    );
    let later = now() + SignedDuration::from_mins(1);
    turn_emea_knob(&app, 25.0, later);
    let turned = app.run_mapped(later, &m).await;
    assert_eq!(
        turned.written.get("threshold_update"),
        Some(&1),
        "{turned:?}"
    );
    let after = app.query(soql).await;
    let knob = after.iter().find(|r| r["Id"] == json!(emea)).unwrap();
    assert!(
        number(knob, "Projected_Weekly_MQLs__c") > projected_before,
        "a lower knob projects more MQLs: {projected_before} -> {knob:?}"
    );
}
