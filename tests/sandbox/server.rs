//! The sandbox server and shared admin API: the `--json` line, clock moves, fault rules and
//! state through HTTP, both ports.

use jiff::Timestamp;
use mqlsync::sandbox::clock::SandboxClock;
use mqlsync::sandbox::server::{Sandbox, SandboxOptions};
use serde_json::{Value, json};

#[tokio::test]
async fn json_line_and_shared_admin_routes() {
    let start: Timestamp = "2026-11-02T12:00:00Z".parse().unwrap();
    let sandbox = Sandbox::start(SandboxOptions {
        leads: 30,
        clock: SandboxClock::frozen(start),
        ..SandboxOptions::default()
    })
    .await
    .unwrap();
    let line = sandbox.connection_info_line();
    assert!(line.starts_with("{\"salesforce\":{\"base_url\":"), "{line}");
    let info: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(info["salesforce"]["base_url"], sandbox.salesforce_url());
    assert_eq!(info["marketo"]["base_url"], sandbox.marketo_url());
    for key in ["client_id", "client_secret", "username"] {
        assert!(info["salesforce"][key].is_string(), "{key}");
    }
    assert_ne!(sandbox.salesforce_url(), sandbox.marketo_url());

    let http = reqwest::Client::new();
    for base in [sandbox.salesforce_url(), sandbox.marketo_url()] {
        let clock: Value = http
            .post(format!("{base}/__sandbox/clock/advance"))
            .json(&json!({"seconds": 3600}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(clock["frozen"], true);
    }
    assert_eq!(
        sandbox.clock().now(),
        "2026-11-02T14:00:00Z".parse::<Timestamp>().unwrap()
    );
    let r = http
        .post(format!("{}/__sandbox/faults", sandbox.marketo_url()))
        .json(&json!({"system": "salesforce", "kind": "query", "action": {"type": "status", "status": 500}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(sandbox.faults().rules().len(), 1);
    let r = http
        .post(format!("{}/__sandbox/faults", sandbox.marketo_url()))
        .json(&json!({"system": "salesforce", "tiems": 1, "action": {"type": "drop"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::BAD_REQUEST);
    let state: Value = http
        .get(format!("{}/__sandbox/state", sandbox.salesforce_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["world"]["people"], 30);
    assert_eq!(
        state["salesforce"]["objects"]["MQL_Threshold__c"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    sandbox.shutdown().await;
}
