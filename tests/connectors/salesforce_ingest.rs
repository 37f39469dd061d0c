//! Bulk API 2.0 ingest (upsert by external id) against the sandbox: records created then
//! updated, a failing record failing alone, results matched back to their records (the
//! sandbox lists results last row first, as the vendor keeps no order), lost answers that make
//! no second job and write no record twice, and the calls each run takes.

use std::collections::HashMap;

use mqlsync::connectors::salesforce::{SalesforceClient, SalesforceSecrets, SalesforceSettings};
use mqlsync::connectors::{ErrorClass, Priority, Record, RecordOutcome, WriteStatus};
use mqlsync::sandbox::clock::SandboxClock;
use mqlsync::sandbox::faults::{FaultAction, System};
use mqlsync::sandbox::server::SandboxOptions;
use serde_json::{Value, json};

use super::{App, PageRequest, fast_retry, now, spawn_app};
use mqlsync::connectors::Crm;

const OBJECT: &str = "MQL__c";
const EXT: &str = "External_Id__c";

async fn app(tweak: impl FnOnce(&mut SandboxOptions)) -> App {
    let mut options = SandboxOptions {
        leads: 50,
        seed: 5,
        clock: SandboxClock::frozen(now()),
        ..SandboxOptions::default()
    };
    tweak(&mut options);
    spawn_app(options).await
}

/// A client of the sandbox that looks at a job as soon as it is closed (the sandbox moves a
/// job one state per look, so no test waits), with uploads of at most `max_upload_bytes`.
fn ingest_client(app: &App, max_upload_bytes: usize) -> SalesforceClient {
    let info = app.sandbox.connection_info();
    let url = app.sandbox.salesforce_url();
    let settings: SalesforceSettings = serde_json::from_value(json!({
        "base_url": url,
        "token_url": format!("{url}/services/oauth2/token"),
        "auth": {"kind": "client_credentials", "client_id": info["salesforce"]["client_id"]},
        "request_timeout_secs": 5,
        "retry": fast_retry(),
        "ingest": {"poll_initial_ms": 0, "poll_max_ms": 0, "max_upload_bytes": max_upload_bytes},
    }))
    .unwrap();
    let secret = info["salesforce"]["client_secret"].as_str().unwrap();
    SalesforceClient::new(
        settings,
        SalesforceSecrets {
            client_secret: Some(secret.to_string().into()),
            refresh_token: None,
        },
    )
    .unwrap()
}

/// `n` MQL records keyed `{tag}-{i}`, each with fields that change with `status`.
fn mqls(n: usize, tag: &str, status: &str) -> Vec<Record> {
    (0..n)
        .map(|i| {
            json!({"External_Id__c": format!("{tag}-{i}"), "Status__c": status, "Cycle_Number__c": 1,
                   "Score_At_MQL__c": 50 + i % 50, "Segment__c": if i % 2 == 0 { "EMEA" } else { "NA" },
                   "Backfilled__c": true, "MQL_Date__c": "2026-03-02T10:00:00Z",
                   "Sync_Note__c": "backfilled, from \"history\"\nline two"})
            .as_object()
            .unwrap()
            .clone()
        })
        .collect()
}

impl App {
    /// Id by external id of the MQL records whose key starts with `tag-`.
    async fn mql_ids(&self, tag: &str) -> HashMap<String, String> {
        let soql =
            format!("SELECT Id, External_Id__c FROM MQL__c WHERE External_Id__c LIKE '{tag}-%'");
        let mut out = HashMap::new();
        let mut page = self
            .sf
            .query_page(PageRequest::Start { soql, all: false }, Priority::Routine)
            .await
            .unwrap();
        loop {
            for r in &page.records {
                out.insert(
                    r["External_Id__c"].as_str().unwrap().to_string(),
                    r["Id"].as_str().unwrap().to_string(),
                );
            }
            let Some(next) = page.next_records_url.clone() else {
                return out;
            };
            page = self
                .sf
                .query_page(
                    PageRequest::Next {
                        next_records_url: next,
                    },
                    Priority::Routine,
                )
                .await
                .unwrap();
        }
    }

    fn ingest_states(&self) -> Vec<String> {
        let state = self.sandbox.salesforce().state();
        let mut jobs: Vec<(String, String)> = state["bulk_jobs"]["ingest"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                (
                    j["id"].as_str().unwrap().to_string(),
                    j["state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        jobs.sort();
        jobs.into_iter().map(|(_, s)| s).collect()
    }

    fn sf_calls(&self, kinds: &[&str]) -> Vec<u64> {
        kinds
            .iter()
            .map(|k| self.calls(System::Salesforce, k))
            .collect()
    }
}

const JOB_KINDS: [&str; 6] = [
    "bulk2_ingest_create",
    "bulk2_ingest_upload",
    "bulk2_ingest_state",
    "bulk2_ingest_status",
    "bulk2_ingest_results",
    "bulk2_ingest_list",
];

fn statuses(out: &[RecordOutcome]) -> Vec<Result<WriteStatus, String>> {
    out.iter()
        .map(|o| o.result.clone().map_err(|e| e.code))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_mqls_are_created_then_updated_each_time_by_one_job_of_six_calls() {
    let app = app(|_| {}).await;
    let sf = ingest_client(&app, 100_000_000);
    let out = sf
        .upsert_bulk(OBJECT, EXT, mqls(1_000, "ing", "Open"), Priority::Routine)
        .await
        .unwrap();
    assert_eq!(out.len(), 1_000);
    assert!(
        out.iter().enumerate().all(|(i, o)| o.index == i),
        "in input order"
    );
    assert_eq!(statuses(&out), vec![Ok(WriteStatus::Created); 1_000]);
    let ids = app.mql_ids("ing").await;
    assert_eq!(ids.len(), 1_000, "one record per external id");
    for (i, o) in out.iter().enumerate() {
        assert_eq!(o.id.as_ref(), Some(&ids[&format!("ing-{i}")]), "record {i}");
    }
    // create, upload, close, two looks (InProgress, JobComplete), successfulResults: no
    // failedResults when the job counts none failed.
    assert_eq!(app.sf_calls(&JOB_KINDS), [1, 1, 1, 2, 1, 0]);

    let before = app.sandbox.salesforce().api_usage();
    let again = sf
        .upsert_bulk(
            OBJECT,
            EXT,
            mqls(1_000, "ing", "Working"),
            Priority::Routine,
        )
        .await
        .unwrap();
    let after = app.sandbox.salesforce().api_usage();
    assert_eq!(
        after - before,
        6,
        "each call counts against the daily limit"
    );
    assert_eq!(
        sf.budget().usage().0,
        after,
        "and the budget follows Sforce-Limit-Info"
    );
    assert_eq!(statuses(&again), vec![Ok(WriteStatus::Updated); 1_000]);
    assert!(
        again
            .iter()
            .enumerate()
            .all(|(i, o)| o.index == i && o.id.as_ref() == Some(&ids[&format!("ing-{i}")]))
    );
    assert_eq!(app.mql_ids("ing").await.len(), 1_000, "no duplicate");
    assert_eq!(app.sf_calls(&JOB_KINDS), [2, 2, 2, 4, 2, 0]);
    assert_eq!(
        sf.sent().requests - sf.sent().token_requests,
        12,
        "six calls a job"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_record_fails_alone_with_the_vendors_code_and_class() {
    let app = app(|_| {}).await;
    let sf = ingest_client(&app, 100_000_000);
    for (index, code, class) in [
        (
            1,
            "FIELD_CUSTOM_VALIDATION_EXCEPTION",
            ErrorClass::FailRecord,
        ),
        (3, "UNABLE_TO_LOCK_ROW", ErrorClass::Retry),
    ] {
        app.fault(
            System::Salesforce,
            "bulk2_ingest_state",
            1,
            FaultAction::FailRecord {
                index,
                code: Some(code.into()),
                message: None,
            },
        );
        let tag = format!("fail{index}");
        let out = sf
            .upsert_bulk(OBJECT, EXT, mqls(5, &tag, "Open"), Priority::Routine)
            .await
            .unwrap();
        for (i, o) in out.iter().enumerate() {
            assert_eq!(o.index, i);
            if i == index {
                let e = o.result.as_ref().unwrap_err();
                assert_eq!((e.code.as_str(), e.class()), (code, class), "{e:?}");
            } else {
                assert_eq!(o.result, Ok(WriteStatus::Created), "{code}: record {i}");
            }
        }
        let ids = app.mql_ids(&tag).await;
        assert_eq!(ids.len(), 4);
        assert!(!ids.contains_key(&format!("{tag}-{index}")));
    }
    assert_eq!(
        app.calls(System::Salesforce, "bulk2_ingest_results"),
        4,
        "successful and failed results of each job"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_a_job_create_makes_no_second_job() {
    let app = app(|_| {}).await;
    let sf = ingest_client(&app, 100_000_000);
    app.fault(
        System::Salesforce,
        "bulk2_ingest_create",
        1,
        FaultAction::LoseResponse,
    );
    let out = sf
        .upsert_bulk(OBJECT, EXT, mqls(20, "lost", "Open"), Priority::Routine)
        .await
        .unwrap();
    assert_eq!(statuses(&out), vec![Ok(WriteStatus::Created); 20]);
    assert_eq!(
        app.ingest_states(),
        ["JobComplete"],
        "one job, the one created"
    );
    assert_eq!(
        app.sf_calls(&["bulk2_ingest_create", "bulk2_ingest_list"]),
        [1, 1],
        "not sent again: the open job was found by listing"
    );
    assert_eq!(app.mql_ids("lost").await.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_an_upload_abandons_the_job_and_a_fresh_one_writes_each_record_once() {
    let app = app(|_| {}).await;
    let sf = ingest_client(&app, 100_000_000);
    app.fault(
        System::Salesforce,
        "bulk2_ingest_upload",
        1,
        FaultAction::LoseResponse,
    );
    let out = sf
        .upsert_bulk(OBJECT, EXT, mqls(20, "up", "Open"), Priority::Routine)
        .await
        .unwrap();
    assert_eq!(statuses(&out), vec![Ok(WriteStatus::Created); 20]);
    assert_eq!(
        app.ingest_states(),
        ["Aborted", "JobComplete"],
        "the job whose data may or may not have arrived is never processed"
    );
    assert_eq!(app.mql_ids("up").await.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_stops_aborts_its_job() {
    let app = app(|_| {}).await;
    let sf = ingest_client(&app, 100_000_000);
    app.fault(
        System::Salesforce,
        "bulk2_ingest_state",
        1,
        FaultAction::VendorError {
            code: "INSUFFICIENT_ACCESS".into(),
            message: None,
        },
    );
    let err = sf
        .upsert_bulk(OBJECT, EXT, mqls(3, "stop", "Open"), Priority::Routine)
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal, "{err}");
    assert_eq!(app.ingest_states(), ["Aborted"], "never processed later");
    assert!(app.mql_ids("stop").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_job_taken_after_a_lost_create_that_already_held_data_is_not_processed() {
    // An orphan of a killed run: open, with data, never closed. Then a create whose request
    // never reached the server: the orphan is the open job the listing finds. Uploading to it
    // makes two contents; the vendor refuses to close it; a fresh job does the work.
    let app = app(|_| {}).await;
    let sf = ingest_client(&app, 100_000_000);
    let orphan = app.open_orphan_with_data().await;
    app.fault(
        System::Salesforce,
        "bulk2_ingest_create",
        1,
        FaultAction::Drop,
    );
    let out = sf
        .upsert_bulk(OBJECT, EXT, mqls(10, "fresh", "Open"), Priority::Routine)
        .await
        .unwrap();
    assert_eq!(statuses(&out), vec![Ok(WriteStatus::Created); 10]);
    assert!(
        app.mql_ids("stale").await.is_empty(),
        "the orphan's data was never processed"
    );
    assert_eq!(app.mql_ids("fresh").await.len(), 10);
    assert_eq!(
        app.sf_calls(&[
            "bulk2_ingest_create",
            "bulk2_ingest_list",
            "bulk2_ingest_upload"
        ]),
        [3, 1, 3],
        "the orphan's create, the dropped one, the fresh one; the orphan's upload, ours to it, ours to the fresh job"
    );
    let state = app.sandbox.salesforce().state();
    let orphan_state = state["bulk_jobs"]["ingest"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == orphan)
        .unwrap()["state"]
        .clone();
    assert_eq!(
        orphan_state, "Aborted",
        "taken, refused at the close, abandoned"
    );
}

impl App {
    /// Opens an ingest job and uploads data to it, as a run killed before its close leaves it.
    async fn open_orphan_with_data(&self) -> Value {
        let url = self.sandbox.salesforce_url();
        let http = reqwest::Client::new();
        let config = self.sandbox.salesforce_config();
        let token: Value = http
            .post(format!("{url}/services/oauth2/token"))
            .basic_auth(&config.client_id, Some(&config.client_secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = token["access_token"].as_str().unwrap();
        let job: Value = http
            .post(format!("{url}/services/data/v62.0/jobs/ingest"))
            .bearer_auth(token)
            .json(&json!({"object": OBJECT, "externalIdFieldName": EXT, "operation": "upsert", "contentType": "CSV", "lineEnding": "LF"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = job["id"].clone();
        let status = http
            .put(format!(
                "{url}/services/data/v62.0/jobs/ingest/{}/batches",
                id.as_str().unwrap()
            ))
            .bearer_auth(token)
            .header("content-type", "text/csv")
            .body("External_Id__c,Status__c\nstale-0,Open\n")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 201);
        id
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_over_one_upload_goes_in_several_jobs_and_outcomes_keep_input_order() {
    let app = app(|_| {}).await;
    let sf = ingest_client(&app, 5_000);
    let records = mqls(300, "split", "Open");
    let out = sf
        .upsert_bulk(OBJECT, EXT, records, Priority::Routine)
        .await
        .unwrap();
    assert!(out.iter().enumerate().all(|(i, o)| o.index == i));
    assert_eq!(statuses(&out), vec![Ok(WriteStatus::Created); 300]);
    let jobs = app.ingest_states();
    assert!(jobs.len() >= 4, "{jobs:?}");
    assert!(jobs.iter().all(|s| s == "JobComplete"));
    let ids = app.mql_ids("split").await;
    assert!((0..300).all(|i| out[i].id.as_ref() == Some(&ids[&format!("split-{i}")])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_a_failed_job_left_unprocessed_come_back_retryable() {
    let app = app(|o| o.salesforce.daily_bulk_batch_limit = 0).await;
    let sf = ingest_client(&app, 100_000_000);
    let out = sf
        .upsert_bulk(OBJECT, EXT, mqls(10, "cut", "Open"), Priority::Routine)
        .await
        .unwrap();
    for o in &out {
        let e = o.result.as_ref().unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.class()),
            ("NOT_PROCESSED", ErrorClass::Retry)
        );
        assert!(
            e.message.contains("ended Failed (Daily batch allocation"),
            "{}",
            e.message
        );
    }
    assert_eq!(
        app.sf_calls(&["bulk2_ingest_results"]),
        [1],
        "nothing processed: only the unprocessed records are read"
    );
}
