//! The connectors against the sandbox: every fault kind gets its reaction (retry, renew the
//! token, back off, fail one record, checkpoint), and the calls made, counted from the
//! sandbox's request log, are the fewest the work allows.

use jiff::Timestamp;
use mqlsync::connectors::marketo::{MarketoClient, MarketoSettings};
use mqlsync::connectors::salesforce::{SalesforceClient, SalesforceSecrets, SalesforceSettings};
use mqlsync::connectors::{Crm, ErrorClass, Map, PageRequest, Priority, QueryPages, Record};
use mqlsync::sandbox::clock::SandboxClock;
use mqlsync::sandbox::faults::{FaultAction, FaultRule, System};
use mqlsync::sandbox::server::{Sandbox, SandboxOptions};
use serde_json::{Value, json};

mod marketo_bulk;
mod salesforce_ingest;

fn now() -> Timestamp {
    "2026-11-02T12:00:00Z".parse().unwrap()
}

/// Short waits so that retries and back-offs run in milliseconds.
fn fast_retry() -> Value {
    json!({"max_retries": 3, "min_delay_ms": 5, "max_delay_ms": 20, "rate_limit_delay_ms": 20})
}

struct App {
    sandbox: Sandbox,
    sf: SalesforceClient,
    mk: MarketoClient,
}

async fn spawn_app(options: SandboxOptions) -> App {
    let sandbox = Sandbox::start(options).await.unwrap();
    let info = sandbox.connection_info();
    let sf: SalesforceSettings = serde_json::from_value(json!({
        "base_url": sandbox.salesforce_url(),
        "token_url": format!("{}/services/oauth2/token", sandbox.salesforce_url()),
        "auth": {"kind": "client_credentials", "client_id": info["salesforce"]["client_id"]},
        "request_timeout_secs": 1,
        "retry": fast_retry(),
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
    let mk: MarketoSettings = serde_json::from_value(json!({
        "base_url": sandbox.marketo_url(),
        "client_id": info["marketo"]["client_id"],
        "request_timeout_secs": 1,
        "retry": fast_retry(),
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
    App { sandbox, sf, mk }
}

async fn default_app() -> App {
    spawn_app(SandboxOptions {
        leads: 300,
        seed: 5,
        clock: SandboxClock::frozen(now()),
        ..SandboxOptions::default()
    })
    .await
}

impl App {
    fn calls(&self, system: System, kind: &str) -> u64 {
        self.sandbox
            .log()
            .counts()
            .get(&(system, kind.to_string()))
            .copied()
            .unwrap_or(0)
    }

    fn fault(&self, system: System, kind: &str, times: u32, action: FaultAction) {
        self.sandbox.faults().add(FaultRule {
            system,
            method: None,
            path: None,
            kind: Some(kind.into()),
            skip: 0,
            times: Some(times),
            action,
        });
    }

    async fn leads(&self) -> Vec<Record> {
        let mut pages = QueryPages::new(
            self.sf.clone(),
            "SELECT Id, LastName FROM Lead",
            false,
            Priority::Routine,
        );
        let mut all = Vec::new();
        while let Some(page) = pages.next_page().await.unwrap() {
            all.extend(page);
        }
        all
    }

    fn mql(n: usize, tag: &str) -> Vec<Record> {
        (0..n)
            .map(|i| {
                json!({"External_Id__c": format!("{tag}-{i}"), "Status__c": "Open", "Cycle_Number__c": 1})
                    .as_object()
                    .unwrap()
                    .clone()
            })
            .collect()
    }
}

fn start(soql: &str) -> PageRequest {
    PageRequest::Start {
        soql: soql.into(),
        all: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_5xx_dropped_connections_malformed_json_and_timeouts_are_retried() {
    let app = default_app().await;
    let soql = "SELECT Id FROM Lead LIMIT 5";
    app.sf
        .query_page(start(soql), Priority::Routine)
        .await
        .unwrap();
    for (action, label) in [
        (
            FaultAction::Status {
                status: 503,
                body: None,
            },
            "503",
        ),
        (FaultAction::Drop, "drop"),
        (FaultAction::MalformedJson, "malformed JSON"),
        (FaultAction::Delay { millis: 1_300 }, "timeout"),
    ] {
        app.sandbox.log().clear();
        app.fault(System::Salesforce, "query", 2, action.clone());
        let page = app.sf.query_page(start(soql), Priority::Routine).await;
        assert_eq!(page.map(|p| p.records.len()).ok(), Some(5), "{label}");
        // A timed-out request is logged when the sandbox finishes it, after the client gave
        // up: only the served ones can be counted at this point.
        if !matches!(action, FaultAction::Delay { .. }) {
            assert_eq!(
                app.calls(System::Salesforce, "query"),
                3,
                "{label}: two faults, one success"
            );
        }
        app.sandbox.faults().clear();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_token_expiry_mid_run_renews_once_and_goes_on() {
    let app = default_app().await;
    let soql = "SELECT Id FROM Lead LIMIT 5";
    app.sf
        .query_page(start(soql), Priority::Routine)
        .await
        .unwrap();
    let tokens = app.calls(System::Salesforce, "token");
    app.fault(System::Salesforce, "query", 1, FaultAction::ExpireTokens);
    app.sf
        .query_page(start(soql), Priority::Routine)
        .await
        .unwrap();
    app.sf
        .query_page(start(soql), Priority::Routine)
        .await
        .unwrap();
    assert_eq!(app.calls(System::Salesforce, "token"), tokens + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_reads_every_record_once_with_the_fewest_calls() {
    let app = spawn_app(SandboxOptions {
        leads: 6_000,
        seed: 5,
        clock: SandboxClock::frozen(now()),
        ..SandboxOptions::default()
    })
    .await;
    let leads = app.leads().await;
    let ids: std::collections::BTreeSet<&str> =
        leads.iter().map(|r| r["Id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), leads.len(), "no record twice");
    let pages =
        app.calls(System::Salesforce, "query") + app.calls(System::Salesforce, "query_more");
    assert_eq!(pages, (leads.len() as u64).div_ceil(2000));
    assert_eq!(app.calls(System::Salesforce, "query"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soql_value_with_a_quote_and_a_backslash_cannot_break_the_query() {
    let app = default_app().await;
    let name = "O'Brien\\";
    let mut record = Record::new();
    record.insert("LastName".into(), json!(name));
    record.insert("Company".into(), json!("Acme"));
    let id = app.leads().await[0]["Id"].as_str().unwrap().to_string();
    record.insert("Id".into(), json!(id));
    let out = app.sf.update("Lead", vec![record]).await.unwrap();
    assert!(out[0].result.is_ok(), "{out:?}");
    let soql = format!(
        "SELECT Id, LastName FROM Lead WHERE LastName = {}",
        mqlsync::connectors::salesforce::soql::quote(name)
    );
    let page = app
        .sf
        .query_page(start(&soql), Priority::Routine)
        .await
        .unwrap();
    assert_eq!(page.records.len(), 1, "{soql}");
    assert_eq!(page.records[0]["Id"], json!(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upsert_of_450_takes_three_calls_and_again_updates_without_duplicates() {
    let app = default_app().await;
    let out = app
        .sf
        .upsert("MQL__c", "External_Id__c", App::mql(450, "u"))
        .await
        .unwrap();
    assert!(out.iter().all(|o| o.result.is_ok()));
    assert_eq!(app.calls(System::Salesforce, "composite_upsert"), 3);
    let again = app
        .sf
        .upsert("MQL__c", "External_Id__c", App::mql(450, "u"))
        .await
        .unwrap();
    assert!(
        again
            .iter()
            .all(|o| matches!(o.result, Ok(mqlsync::connectors::WriteStatus::Updated))),
        "{:?}",
        &again[..2]
    );
    let page = app
        .sf
        .query_page(
            start("SELECT COUNT() FROM MQL__c WHERE External_Id__c LIKE 'u-%'"),
            Priority::Routine,
        )
        .await
        .unwrap();
    assert_eq!(page.total_size, 450);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_record_in_a_collection_fails_only_that_record() {
    let app = default_app().await;
    app.fault(
        System::Salesforce,
        "composite_upsert",
        1,
        FaultAction::FailRecord {
            index: 1,
            code: Some("FIELD_CUSTOM_VALIDATION_EXCEPTION".into()),
            message: Some("no".into()),
        },
    );
    let out = app
        .sf
        .upsert("MQL__c", "External_Id__c", App::mql(3, "f"))
        .await
        .unwrap();
    assert!(out[0].result.is_ok() && out[2].result.is_ok(), "{out:?}");
    let err = out[1].result.as_ref().unwrap_err();
    assert_eq!(err.code, "FIELD_CUSTOM_VALIDATION_EXCEPTION");
    assert_eq!(err.class(), ErrorClass::FailRecord);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_salesforce_daily_limit_checkpoints_with_a_resume_time() {
    let app = default_app().await;
    app.fault(
        System::Salesforce,
        "query",
        1,
        FaultAction::VendorError {
            code: "REQUEST_LIMIT_EXCEEDED".into(),
            message: None,
        },
    );
    let err = app
        .sf
        .query_page(start("SELECT Id FROM Lead LIMIT 1"), Priority::Routine)
        .await
        .unwrap_err();
    assert!(
        matches!(err.class(), ErrorClass::Checkpoint { resume_at } if resume_at > Timestamp::now()),
        "{err}"
    );
    assert_eq!(
        app.calls(System::Salesforce, "query"),
        1,
        "no call past the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marketo_601_602_renew_the_token_and_606_615_back_off() {
    let app = default_app().await;
    app.mk.describe().await.unwrap();
    for (code, renews) in [("601", true), ("602", true), ("606", false), ("615", false)] {
        app.sandbox.log().clear();
        app.fault(
            System::Marketo,
            "leads_describe",
            1,
            FaultAction::VendorError {
                code: code.into(),
                message: None,
            },
        );
        let fields = app.mk.describe().await;
        assert!(fields.is_ok_and(|f| !f.is_empty()), "{code}");
        assert_eq!(
            app.calls(System::Marketo, "leads_describe"),
            2,
            "{code}: one refused, one served"
        );
        assert_eq!(
            app.calls(System::Marketo, "identity"),
            u64::from(renews),
            "{code}"
        );
        app.sandbox.faults().clear();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marketo_607_checkpoints_until_midnight_in_chicago() {
    let app = default_app().await;
    app.fault(
        System::Marketo,
        "leads_describe",
        1,
        FaultAction::VendorError {
            code: "607".into(),
            message: None,
        },
    );
    let err = app.mk.describe().await.unwrap_err();
    let ErrorClass::Checkpoint { resume_at } = err.class() else {
        panic!("{err}")
    };
    let chicago = resume_at.to_zoned(jiff::tz::TimeZone::get("America/Chicago").unwrap());
    assert_eq!((chicago.hour(), chicago.minute()), (0, 0), "{chicago}");
    assert!(resume_at > Timestamp::now());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_answer_is_lost_is_not_sent_again() {
    use mqlsync::connectors::marketo::bulk::{ExportKind, activity_export_request};
    let app = default_app().await;
    // Salesforce: a collection create that the CRM did, but whose answer never came.
    app.fault(
        System::Salesforce,
        "composite_create",
        1,
        FaultAction::LoseResponse,
    );
    let task = json!({"Subject": "New MQL", "MQL_Alert_Key__c": "Notify:x"});
    let err = app
        .sf
        .create("Task", vec![task.as_object().unwrap().clone()])
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Retry, "{err}");
    assert_eq!(app.calls(System::Salesforce, "composite_create"), 1);
    // Marketo: an export job created, the answer lost.
    app.fault(
        System::Marketo,
        "bulk_activities_create",
        1,
        FaultAction::LoseResponse,
    );
    let request =
        activity_export_request(&[22], now() - jiff::SignedDuration::from_hours(24), now())
            .unwrap();
    assert!(
        app.mk
            .export_create(ExportKind::Activities, &request)
            .await
            .is_err()
    );
    assert_eq!(app.calls(System::Marketo, "bulk_activities_create"), 1);
    // Refusals before the work are sent again: a 615 (too many at once) backs off and retries.
    app.fault(
        System::Marketo,
        "bulk_activities_create",
        1,
        FaultAction::VendorError {
            code: "615".into(),
            message: None,
        },
    );
    let job = app
        .mk
        .export_create(ExportKind::Activities, &request)
        .await
        .unwrap();
    assert_eq!(job.status, "Created");
    assert_eq!(app.calls(System::Marketo, "bulk_activities_create"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marketo_reads_take_the_fewest_calls() {
    let app = spawn_app(SandboxOptions {
        leads: 700,
        seed: 5,
        clock: SandboxClock::frozen(now()),
        ..SandboxOptions::default()
    })
    .await;
    // Leads by filter: 600 ids in two calls of 300.
    let ids: Vec<String> = (0..600).map(|i| (1_000_001 + i).to_string()).collect();
    for chunk in ids.chunks(300) {
        let page = app
            .mk
            .leads_by_filter("id", chunk, &["id", "sfdcLeadId"], None)
            .await
            .unwrap();
        assert_eq!(page.leads.len(), 300);
    }
    assert_eq!(app.calls(System::Marketo, "leads_by_filter"), 2);
    // Activities: every page the server hands out is fetched once, no more.
    let token = app
        .mk
        .paging_token(now() - jiff::SignedDuration::from_hours(24 * 400))
        .await
        .unwrap();
    let mut pages = mqlsync::connectors::marketo::ActivityPages::new(
        app.mk.clone(),
        mqlsync::connectors::marketo::ActivitySource::Types(vec![22]),
        mqlsync::connectors::marketo::ActivityCursor {
            next_page_token: token,
            last_guids: vec![],
        },
        1_000,
    );
    let (mut read, mut fetched) = (0usize, 0u64);
    let mut guids = std::collections::BTreeSet::new();
    while let Some((activities, _)) = pages.next_page().await.unwrap() {
        fetched += 1;
        read += activities.len();
        guids.extend(activities.into_iter().map(|a| a.marketo_guid));
    }
    assert!(read > 300, "{read}");
    assert_eq!(guids.len(), read, "no activity twice");
    assert_eq!(app.calls(System::Marketo, "activities"), fetched);
    assert_eq!(app.calls(System::Marketo, "paging_token"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwt_bearer_flow_signs_in_to_the_sandbox_with_a_private_key_file() {
    let app = default_app().await;
    let key = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt/sandbox-test-only-private.pem");
    let info = app.sandbox.connection_info();
    let settings: SalesforceSettings = serde_json::from_value(json!({
        "base_url": app.sandbox.salesforce_url(),
        "token_url": format!("{}/services/oauth2/token", app.sandbox.salesforce_url()),
        "auth": {"kind": "jwt_bearer", "client_id": info["salesforce"]["client_id"], "username": info["salesforce"]["username"], "private_key_file": key},
        "retry": fast_retry(),
    }))
    .unwrap();
    let jwt = SalesforceClient::new(settings, SalesforceSecrets::default()).unwrap();
    let page = jwt
        .query_page(start("SELECT Id FROM Lead LIMIT 3"), Priority::Routine)
        .await
        .unwrap();
    assert_eq!(page.records.len(), 3);
    assert_eq!(app.calls(System::Salesforce, "token"), 1);
}

/// A Salesforce client of the sandbox's app with this secret, and these URLs when given.
fn salesforce_client(app: &App, secret: &str, base_url: Option<&str>) -> SalesforceClient {
    let info = app.sandbox.connection_info();
    let token_url = format!("{}/services/oauth2/token", app.sandbox.salesforce_url());
    let settings: SalesforceSettings = serde_json::from_value(json!({
        "base_url": base_url.unwrap_or(app.sandbox.salesforce_url()),
        "token_url": token_url,
        "auth": {"kind": "client_credentials", "client_id": info["salesforce"]["client_id"]},
        "request_timeout_secs": 1,
        "retry": fast_retry(),
        "names": {"base_url": "salesforce.base_url in mqlsync.toml", "token_url": "salesforce.login_url in mqlsync.toml", "credentials": "MQLSYNC_SALESFORCE_CLIENT_SECRET"},
    }))
    .unwrap();
    let secrets = SalesforceSecrets {
        client_secret: Some(secret.to_string().into()),
        refresh_token: None,
    };
    SalesforceClient::new(settings, secrets).unwrap()
}

/// A port nothing listens on: bound, then let go.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_from_a_token_endpoint_is_retried_then_reported_as_the_servers_answer() {
    let app = default_app().await;
    let unavailable = FaultAction::Status {
        status: 503,
        body: None,
    };
    app.fault(System::Salesforce, "token", 100, unavailable.clone());
    let err = app.sf.sign_in().await.unwrap_err();
    let said = err.to_string();
    assert!(
        said.starts_with(&format!(
            "Salesforce's token endpoint {}/services/oauth2/token answered 503 Service Unavailable: [{{\"errorCode\":\"SERVER_UNAVAILABLE\"",
            app.sandbox.salesforce_url()
        )),
        "{said}"
    );
    assert!(!said.contains("retrying"), "{said}");
    assert_eq!(
        err.class(),
        ErrorClass::Retry,
        "a 5xx is the server's trouble"
    );
    assert_eq!(
        app.calls(System::Salesforce, "token"),
        4,
        "retried as a 5xx is: once, then three retries"
    );

    // Marketo's identity endpoint, with a REST envelope where an OAuth answer belongs.
    app.fault(System::Marketo, "identity", 100, unavailable);
    let err = app.mk.sign_in().await.unwrap_err();
    let said = err.to_string();
    assert!(
        said.contains("/identity/oauth/token answered 503 Service Unavailable: {\"")
            && said.contains("\"611\""),
        "{said}"
    );
    assert!(!said.contains("client_secret"), "{said}");
    assert_eq!(app.calls(System::Marketo, "identity"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_once_naming_what_to_check_and_is_not_retried() {
    let app = default_app().await;
    let sf = salesforce_client(&app, "not-the-secret", None);
    let err = sf.sign_in().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "Salesforce refused the client credentials (invalid_client: invalid client credentials): check MQLSYNC_SALESFORCE_CLIENT_SECRET"
    );
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert_eq!(app.calls(System::Salesforce, "token"), 1, "not retried");

    let mk: MarketoSettings = serde_json::from_value(json!({
        "base_url": app.sandbox.marketo_url(),
        "client_id": app.sandbox.connection_info()["marketo"]["client_id"],
        "retry": fast_retry(),
    }))
    .unwrap();
    let mk = MarketoClient::new(mk, "not-the-secret".to_string().into()).unwrap();
    let err = mk.sign_in().await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("Marketo refused the client credentials (unauthorized: "),
        "{err}"
    );
    assert_eq!(app.calls(System::Marketo, "identity"), 1, "not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_first_costs_no_call_the_token_serves_the_calls_after_it() {
    let app = default_app().await;
    app.sf.sign_in().await.unwrap();
    app.mk.sign_in().await.unwrap();
    assert_eq!(app.mk.budget().usage().0, 0, "identity is not counted");
    app.leads().await;
    app.mk.describe().await.unwrap();
    assert_eq!(app.calls(System::Salesforce, "token"), 1);
    assert_eq!(app.calls(System::Marketo, "identity"), 1);
    assert_eq!(app.mk.budget().usage().0, 1, "the describe only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_nobody_listens_at_is_unreachable_at_once_naming_its_setting() {
    let app = default_app().await;
    let base = format!("http://127.0.0.1:{}", closed_port());
    // The token endpoint answers; the API's host refuses the connection.
    let sf = salesforce_client(&app, "sandbox-consumer-secret", Some(&base));
    let err = sf
        .query_page(start("SELECT Id FROM Lead"), Priority::Routine)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot reach Salesforce at {base} (connection refused): check salesforce.base_url in mqlsync.toml or that the server is up"
        )
    );
    assert_eq!(err.class(), ErrorClass::Fatal, "not worth a retry");

    // Marketo's identity endpoint on another host, which does not resolve.
    let mk: MarketoSettings = serde_json::from_value(json!({
        "base_url": app.sandbox.marketo_url(),
        "identity_url": "http://identity.mqlsync-nowhere.invalid/identity",
        "client_id": "c",
        "retry": fast_retry(),
        "names": {"token_url": "MQLSYNC_MARKETO_IDENTITY_URL"},
    }))
    .unwrap();
    let mk = MarketoClient::new(mk, "s".to_string().into()).unwrap();
    let err = mk.sign_in().await.unwrap_err();
    let said = err.to_string();
    assert!(
        said.starts_with(
            "cannot reach Marketo at http://identity.mqlsync-nowhere.invalid/identity (host name not found"
        ) && said.ends_with("check MQLSYNC_MARKETO_IDENTITY_URL or that the server is up"),
        "{said}"
    );
    assert_eq!(err.class(), ErrorClass::Fatal);
}
