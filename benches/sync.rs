//! Connector benchmark with the sandbox's real limits on: read 100,000 Change Score activities
//! from Marketo and upsert 20,000 MQL records into Salesforce. Reports calls used against the
//! minimum, the sustained Marketo call rate against the allowed 100 calls / 20 s, and the limit
//! errors provoked (calls the server refused, which the connector then repeated).
//!
//! Then (issue 15, point 2) the same span of history read again with the hand-raiser types
//! (Fill Out Form 2, Change Status in Progression 104) in the same calls as Change Score: the
//! calls grow by the pages the extra activities fill, not by a call per type.
//!
//! `cargo bench --bench sync` (about three minutes: the reads are paced by the limit).

use std::time::Instant;

use jiff::{SignedDuration, Timestamp};
use mqlsync::connectors::marketo::{
    ActivityCursor, ActivityPages, ActivitySource, MarketoClient, MarketoSettings,
};
use mqlsync::connectors::salesforce::{SalesforceClient, SalesforceSecrets, SalesforceSettings};
use mqlsync::connectors::{Crm, Map, Record};
use mqlsync::sandbox::clock::SandboxClock;
use mqlsync::sandbox::faults::System;
use mqlsync::sandbox::server::{Sandbox, SandboxOptions};
use mqlsync::sandbox::world::World;
use serde_json::json;

const ACTIVITIES: usize = 100_000;
const WRITES: usize = 20_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
    // Enough people for 100,000 score activities (each touch changes a part and leadScore).
    let mut people = 8_000;
    while World::generate(7, people, now).score_changes.len() < ACTIVITIES {
        people += 1_000;
    }
    let sandbox = Sandbox::start(SandboxOptions {
        leads: people,
        seed: 7,
        clock: SandboxClock::running(),
        limits: true,
        ..SandboxOptions::default()
    })
    .await
    .unwrap();
    let info = sandbox.connection_info();
    let calls_per_20s: u32 = std::env::var("MQLSYNC_BENCH_CALLS_PER_20S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mk: MarketoSettings = serde_json::from_value(json!({
        "base_url": sandbox.marketo_url(), "client_id": info["marketo"]["client_id"], "calls_per_20s": calls_per_20s,
    }))
    .unwrap();
    let mk = MarketoClient::new(
        mk,
        info["marketo"]["client_secret"]
            .as_str()
            .unwrap()
            .to_string()
            .into(),
    )
    .unwrap();
    let sf: SalesforceSettings = serde_json::from_value(json!({
        "base_url": sandbox.salesforce_url(),
        "token_url": format!("{}/services/oauth2/token", sandbox.salesforce_url()),
        "auth": {"kind": "client_credentials", "client_id": info["salesforce"]["client_id"]},
    }))
    .unwrap();
    let secret = info["salesforce"]["client_secret"]
        .as_str()
        .unwrap()
        .to_string();
    let sf = SalesforceClient::new(
        sf,
        SalesforceSecrets {
            client_secret: Some(secret.into()),
            refresh_token: None,
        },
    )
    .unwrap();

    // Read.
    let started = Instant::now();
    let token = mk
        .paging_token(now - SignedDuration::from_hours(24 * 500))
        .await
        .unwrap();
    let mut pages = ActivityPages::new(
        mk.clone(),
        ActivitySource::Types(vec![22]),
        ActivityCursor {
            next_page_token: token,
            last_guids: vec![],
        },
        10_000,
    );
    let (mut read, mut fetched) = (0usize, 0u64);
    let mut last_at = None;
    while read < ACTIVITIES {
        let Some((activities, _)) = pages.next_page().await.unwrap() else {
            break;
        };
        fetched += 1;
        read += activities.len();
        last_at = activities.last().map(|a| a.activity_date).or(last_at);
    }
    let read_secs = started.elapsed().as_secs_f64();
    let counts = sandbox.log().counts();
    let count = |system: System, kind: &str| {
        counts
            .get(&(system, kind.to_string()))
            .copied()
            .unwrap_or(0)
    };
    let activity_calls = count(System::Marketo, "activities");
    let marketo_calls = activity_calls + count(System::Marketo, "paging_token");
    let read_minimum = (read as u64).div_ceil(300) + 1;
    let refused = activity_calls.saturating_sub(fetched);
    let rate = marketo_calls as f64 / read_secs;

    // Write.
    let records: Vec<Record> = (0..WRITES)
        .map(|i| json!({"External_Id__c": format!("bench-{i}"), "Status__c": "Open", "Cycle_Number__c": 1}).as_object().unwrap().clone())
        .collect();
    let started = Instant::now();
    let outcomes = sf
        .upsert("MQL__c", "External_Id__c", records)
        .await
        .unwrap();
    let write_secs = started.elapsed().as_secs_f64();
    let ok = outcomes.iter().filter(|o| o.result.is_ok()).count();
    let counts = sandbox.log().counts();
    let write_calls = counts
        .get(&(System::Salesforce, "composite_upsert".to_string()))
        .copied()
        .unwrap_or(0);
    let write_minimum = (WRITES as u64).div_ceil(200);
    let sf_refused = sandbox
        .log()
        .snapshot()
        .iter()
        .filter(|r| r.system == System::Salesforce && r.status == 403)
        .count();

    println!("people seeded: {people}; Marketo pacer set to {calls_per_20s} calls / 20 s");
    println!(
        "read:  {read} Change Score activities in {read_secs:.1} s: {marketo_calls} Marketo calls ({activity_calls} activities + 1 paging token), minimum {read_minimum}: ratio {:.3}",
        marketo_calls as f64 / read_minimum as f64
    );
    println!(
        "read:  sustained {rate:.2} calls/s vs 5.00 allowed (100 / 20 s): ratio {:.3}",
        rate / 5.0
    );
    println!("read:  limit errors provoked (calls refused, then repeated): {refused}");
    println!(
        "write: {ok}/{WRITES} MQL records upserted in {write_secs:.1} s with {write_calls} calls, minimum {write_minimum}: ratio {:.3}",
        write_calls as f64 / write_minimum as f64
    );
    println!("write: REQUEST_LIMIT_EXCEEDED or other 403s: {sf_refused}");

    // The same span again, with the hand-raiser types in the same calls.
    let until = last_at.expect("a page was read");
    let before = sandbox.log().counts();
    let token = mk
        .paging_token(now - SignedDuration::from_hours(24 * 500))
        .await
        .unwrap();
    let mut pages = ActivityPages::new(
        mk.clone(),
        ActivitySource::Types(vec![2, 22, 104]),
        ActivityCursor {
            next_page_token: token,
            last_guids: vec![],
        },
        10_000,
    );
    let (mut scores, mut raised, mut done) = (0usize, 0usize, false);
    while !done {
        let Some((activities, _)) = pages.next_page().await.unwrap() else {
            break;
        };
        for a in &activities {
            if a.activity_date > until {
                done = true;
            } else if a.activity_type_id == 22 {
                scores += 1;
            } else {
                raised += 1;
            }
        }
    }
    let after = sandbox.log().counts();
    let calls = |kind: &str| {
        let key = (System::Marketo, kind.to_string());
        after.get(&key).copied().unwrap_or(0) - before.get(&key).copied().unwrap_or(0)
    };
    let with_raisers = calls("activities") + calls("paging_token");
    let minimum = ((scores + raised) as u64).div_ceil(300) + 1;
    println!(
        "read with hand-raisers: {scores} Change Score and {raised} form fills and program status changes over the same span: {with_raisers} Marketo calls (score-only read: {marketo_calls}), minimum {minimum}: ratio {:.3}",
        with_raisers as f64 / minimum as f64
    );
    sandbox.shutdown().await;
}
