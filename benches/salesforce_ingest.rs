//! Bulk API 2.0 ingest against sObject Collections: upsert MQL records into the sandbox's
//! Salesforce (limits off) both ways and report records per second and the API calls each
//! took, per 10,000 records. The sandbox moves an ingest job one state per status call and the
//! client polls at once, so the ingest figures are the client's and the sandbox's own work; on
//! an org the job's processing time and the poll waits add to the elapsed time, and a poll
//! or two to the calls.
//!
//! `cargo bench --bench salesforce_ingest` (optimised), or `cargo test --bench
//! salesforce_ingest` (a debug build, slower). `MQLSYNC_BENCH_RECORDS` sets the larger
//! ingest run (100,000).

use std::time::Instant;

use mqlsync::connectors::salesforce::{SalesforceClient, SalesforceSecrets, SalesforceSettings};
use mqlsync::connectors::{Crm, Priority, Record, RecordOutcome};
use mqlsync::sandbox::clock::SandboxClock;
use mqlsync::sandbox::faults::System;
use mqlsync::sandbox::server::{Sandbox, SandboxOptions};
use serde_json::json;

fn client(sandbox: &Sandbox) -> SalesforceClient {
    let info = sandbox.connection_info();
    let url = sandbox.salesforce_url();
    let settings: SalesforceSettings = serde_json::from_value(json!({
        "base_url": url,
        "token_url": format!("{url}/services/oauth2/token"),
        "auth": {"kind": "client_credentials", "client_id": info["salesforce"]["client_id"]},
        "ingest": {"poll_initial_ms": 0, "poll_max_ms": 0},
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

/// MQL records as a backfill writes them.
fn mqls(n: usize, tag: &str) -> Vec<Record> {
    (0..n)
        .map(|i| {
            json!({"External_Id__c": format!("{tag}-{i}"), "Status__c": "Closed", "Cycle_Number__c": 1,
                   "Score_At_MQL__c": 60 + i % 40, "Threshold_At_MQL__c": 55, "Segment__c": "EMEA",
                   "Backfilled__c": true, "MQL_Date__c": "2026-03-02T10:00:00Z",
                   "SAL_Date__c": "2026-03-03T09:30:00Z", "Closed_Date__c": "2026-03-20T16:00:00Z"})
            .as_object()
            .unwrap()
            .clone()
        })
        .collect()
}

/// Salesforce API calls in the request log (the token endpoint is not one).
fn calls(sandbox: &Sandbox) -> u64 {
    sandbox
        .log()
        .counts()
        .iter()
        .filter(|((system, kind), _)| *system == System::Salesforce && kind != "token")
        .map(|(_, n)| n)
        .sum()
}

async fn run<F, Fut>(sandbox: &Sandbox, label: &str, n: usize, write: F)
where
    F: FnOnce(Vec<Record>) -> Fut,
    Fut: Future<Output = Vec<RecordOutcome>>,
{
    let records = mqls(n, label);
    let before = calls(sandbox);
    let started = Instant::now();
    let out = write(records).await;
    let secs = started.elapsed().as_secs_f64();
    let used = calls(sandbox) - before;
    let ok = out.iter().filter(|o| o.result.is_ok()).count();
    println!(
        "{label:<12} {ok:>7}/{n:<7} records in {secs:>6.2} s: {:>7.0} records/s, {used:>4} calls ({:.1} per 10,000)",
        n as f64 / secs,
        used as f64 * 10_000.0 / n as f64
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let large: usize = std::env::var("MQLSYNC_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let sandbox = Sandbox::start(SandboxOptions {
        leads: 100,
        seed: 7,
        clock: SandboxClock::running(),
        limits: false,
        ..SandboxOptions::default()
    })
    .await
    .unwrap();
    let sf = client(&sandbox);
    sf.sign_in().await.unwrap();
    let ingest = |sf: SalesforceClient| {
        move |records: Vec<Record>| async move {
            sf.upsert_bulk("MQL__c", "External_Id__c", records, Priority::Routine)
                .await
                .unwrap()
        }
    };
    let collections = |sf: SalesforceClient| {
        move |records: Vec<Record>| async move {
            sf.upsert("MQL__c", "External_Id__c", records)
                .await
                .unwrap()
        }
    };
    run(&sandbox, "collections", 10_000, collections(sf.clone())).await;
    run(&sandbox, "ingest", 10_000, ingest(sf.clone())).await;
    run(&sandbox, "ingest-large", large, ingest(sf.clone())).await;
    sandbox.shutdown().await;
}
