//! Marketo connector tests: code classification and HTTP behaviour against local stubs (paused
//! tokio time, no sleeps).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Form, Json, Router};
use serde_json::json;

use super::*;
use crate::connectors::ErrorClass;
use crate::connectors::testkit::serve;

fn settings(base: &str) -> MarketoSettings {
    MarketoSettings {
        base_url: base.into(),
        identity_url: None,
        client_id: "cid".into(),
        calls_per_20s: 100,
        max_in_flight: 10,
        daily_quota: 50_000,
        daily_reserve_pct: 20.0,
        token_margin_secs: 60,
        request_timeout_secs: 30,
        retry: RetryPolicy::default(),
        names: Default::default(),
    }
}

fn client(base: &str) -> MarketoClient {
    MarketoClient::new(settings(base), "mkto-s3cret".into()).unwrap()
}

#[test]
fn every_code_has_the_right_reaction() {
    let now: Timestamp = "2026-11-23T05:30:00Z".parse().unwrap();
    let c = |code: &str, msg: &str| classify_code(code, msg, now).class();
    assert_eq!(c("601", "Access token invalid"), ErrorClass::RenewToken);
    assert_eq!(c("602", "Access token expired"), ErrorClass::RenewToken);
    assert_eq!(
        c("606", "Max rate limit '100' exceeded with in '20' secs"),
        ErrorClass::BackOff
    );
    assert_eq!(
        c("615", "Concurrent access limit '10' reached"),
        ErrorClass::BackOff
    );
    assert_eq!(
        c("607", "Daily quota reached"),
        ErrorClass::Checkpoint {
            resume_at: "2026-11-23T06:00:00Z".parse().unwrap()
        }
    );
    for code in ["604", "608", "611", "614", "713"] {
        assert_eq!(c(code, ""), ErrorClass::Retry, "{code}");
    }
    for code in ["603", "605", "609", "610", "612", "1003", "1006"] {
        assert_eq!(c(code, ""), ErrorClass::Fatal, "{code}");
    }
    assert!(matches!(
        c("1029", "Export daily quota 500MB exceeded"),
        ErrorClass::Checkpoint { .. }
    ));
    assert_eq!(
        c("1029", "Too many jobs (10) in queue"),
        ErrorClass::BackOff
    );
    assert_eq!(c("1029", "Job already queued"), ErrorClass::Fatal);
    assert_eq!(
        classify_code("606", "", now).retry_after(),
        Some(Duration::from_secs(20))
    );
}

#[test]
fn activities_parse_both_date_forms_and_numeric_guids() {
    let a: Activity = serde_json::from_value(json!({"id":102988,"marketoGUID":"102988","leadId":1,"activityDate":"2023-01-16T23:32:19Z",
        "activityTypeId":22,"campaignId":123,"primaryAttributeValueId":58,"primaryAttributeValue":"Lead Score",
        "attributes":[{"name":"New Value","value":45},{"name":"Old Value","value":35}]}))
    .unwrap();
    assert_eq!(a.marketo_guid, "102988");
    assert_eq!(a.activity_date.to_string(), "2023-01-16T23:32:19Z");
    assert_eq!(a.attributes[0].value, json!(45));
    let b: Activity = serde_json::from_value(json!({"id":1078,"marketoGUID":1078,"leadId":775,"activityDate":"2014-09-17T22:31:49+0000",
        "activityTypeId":13,"fields":[{"id":48,"name":"firstName","newValue":"A","oldValue":"B"}],"attributes":[]}))
    .unwrap();
    assert_eq!(b.activity_date.to_string(), "2014-09-17T22:31:49Z");
    assert_eq!(b.fields[0]["name"], json!("firstName"));
    assert_eq!(
        format_datetime("2014-10-06T13:22:17.5-08:00".parse().unwrap()),
        "2014-10-06T21:22:17Z"
    );
}

#[derive(Default)]
struct Stub {
    identity: AtomicUsize,
    calls: AtomicUsize,
    /// Envelope errors to answer before serving, popped from the end.
    faults: Mutex<Vec<(&'static str, &'static str)>>,
    raw_queries: Mutex<Vec<String>>,
    forms: Mutex<Vec<HashMap<String, String>>>,
}

async fn identity(
    State(s): State<Arc<Stub>>,
    Query(q): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    if q.get("client_secret").map(String::as_str) != Some("mkto-s3cret") {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error":"unauthorized","error_description":"Bad client credentials"})),
        );
    }
    let n = s.identity.fetch_add(1, SeqCst) + 1;
    (
        StatusCode::OK,
        Json(
            json!({"access_token": format!("tok{n}:int"),"token_type":"bearer","expires_in":3599,"scope":"api@acme.com"}),
        ),
    )
}

fn envelope_fault(s: &Stub) -> Option<Json<Value>> {
    let (code, msg) = s.faults.lock().unwrap().pop()?;
    Some(Json(
        json!({"requestId":"e42b#1","success":false,"errors":[{"code":code,"message":msg}]}),
    ))
}

async fn activities(
    State(s): State<Arc<Stub>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Json<Value> {
    s.calls.fetch_add(1, SeqCst);
    let raw = raw.unwrap_or_default();
    assert!(
        !raw.contains("access_token"),
        "token must travel only in the header"
    );
    assert!(
        headers
            .get("authorization")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("Bearer tok")
    );
    s.raw_queries.lock().unwrap().push(raw.clone());
    if let Some(f) = envelope_fault(&s) {
        return f;
    }
    let q: HashMap<String, String> = serde_urlencoded_pairs(&raw);
    let act = |guid: &str| json!({"id":1,"marketoGUID":guid,"leadId":7,"activityDate":"2026-11-22T10:00:00Z","activityTypeId":22,"attributes":[]});
    Json(match q["nextPageToken"].as_str() {
        "T0" => {
            json!({"success":true,"result":[act("g1"),act("g2")],"nextPageToken":"T1","moreResult":true})
        }
        "T1" => json!({"success":true,"nextPageToken":"T2","moreResult":true}),
        "T2" => {
            json!({"success":true,"result":[act("g2"),act("g3")],"nextPageToken":"T3","moreResult":false})
        }
        other => panic!("unexpected token {other}"),
    })
}

fn serde_urlencoded_pairs(raw: &str) -> HashMap<String, String> {
    reqwest::Url::parse(&format!("http://x/?{raw}"))
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

async fn paging_token(
    State(s): State<Arc<Stub>>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    s.calls.fetch_add(1, SeqCst);
    assert_eq!(q["sinceDatetime"], "2026-11-01T00:00:00Z");
    Json(json!({"requestId":"1","success":true,"nextPageToken":"T0"}))
}

async fn leads_get(
    State(s): State<Arc<Stub>>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    s.calls.fetch_add(1, SeqCst);
    if let Some(f) = envelope_fault(&s) {
        return f;
    }
    s.forms.lock().unwrap().push(q);
    Json(json!({"success":true,"result":[{"id":1,"email":"a@b.c","leadScore":40}]}))
}

async fn leads_post(
    State(s): State<Arc<Stub>>,
    Query(q): Query<HashMap<String, String>>,
    Form(f): Form<HashMap<String, String>>,
) -> Json<Value> {
    s.calls.fetch_add(1, SeqCst);
    assert_eq!(q.get("_method").map(String::as_str), Some("GET"));
    s.forms.lock().unwrap().push(f);
    Json(json!({"success":true,"result":[{"id":2}]}))
}

async fn serve_stub(stub: Arc<Stub>) -> String {
    serve(
        Router::new()
            .route("/identity/oauth/token", get(identity))
            .route("/rest/v1/activities.json", get(activities))
            .route("/rest/v1/activities/pagingtoken.json", get(paging_token))
            .route("/rest/v1/leads.json", get(leads_get).post(leads_post))
            .route(
                "/rest/v1/activities/leadchanges.json",
                get(|Query(q): Query<HashMap<String, String>>| async move {
                    assert_eq!(q["fields"], "leadScore,email");
                    Json(json!({"success":true,"nextPageToken":"LC2","moreResult":false,"result":[
                        {"id":1078,"marketoGUID":"1078","leadId":775,"activityDate":"2014-09-17T22:31:49+0000","activityTypeId":13,
                         "fields":[{"id":48,"name":"leadScore","newValue":"55","oldValue":"40"}],"attributes":[]}]}))
                }),
            )
            .route(
                "/rest/v1/leads/describe.json",
                get(|| async { "{\"success\":true,\"result\":[{\"id\":1," }),
            )
            .with_state(stub),
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn activities_follow_tokens_through_empty_pages_and_renew_on_602() {
    let stub = Arc::new(Stub::default());
    stub.faults
        .lock()
        .unwrap()
        .push(("602", "Access token expired"));
    let base = serve_stub(stub.clone()).await;
    let mkto = client(&base);
    let token = mkto
        .paging_token("2026-11-01T00:00:00Z".parse().unwrap())
        .await
        .unwrap();
    let mut pages = ActivityPages::new(
        mkto.clone(),
        ActivitySource::Types(vec![22, 13]),
        ActivityCursor {
            next_page_token: token,
            last_guids: vec![],
        },
        50,
    );
    let mut guids = Vec::new();
    let mut last = None;
    while let Some((acts, cursor)) = pages.next_page().await.unwrap() {
        guids.extend(acts.into_iter().map(|a| a.marketo_guid));
        last = Some(cursor);
    }
    assert_eq!(
        guids,
        ["g1", "g2", "g3"],
        "the empty page was followed and the repeated g2 dropped"
    );
    assert_eq!(last.unwrap().next_page_token, "T3");
    assert_eq!(stub.identity.load(SeqCst), 2, "602 renewed the token once");
    let q = stub.raw_queries.lock().unwrap();
    assert!(
        q[0].contains("activityTypeIds=22%2C13") || q[0].contains("activityTypeIds=22,13"),
        "{}",
        q[0]
    );
    assert!(q[0].contains("batchSize=300"));
    assert_eq!(
        mkto.budget().usage().0,
        4,
        "4 data calls; the 602 and identity are not counted"
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limits_back_off_for_the_window_then_succeed() {
    let stub = Arc::new(Stub::default());
    stub.faults.lock().unwrap().extend([
        ("615", "Concurrent access limit '10' reached"),
        ("606", "Max rate limit '100' exceeded with in '20' secs"),
    ]);
    let base = serve_stub(stub.clone()).await;
    let mkto = client(&base);
    let start = tokio::time::Instant::now();
    let page = mkto
        .leads_by_filter("email", &["a@b.c".into()], &["email", "leadScore"], None)
        .await
        .unwrap();
    assert_eq!(page.leads.len(), 1);
    assert!(page.next_page_token.is_none());
    assert!(
        start.elapsed() >= Duration::from_secs(40),
        "two rate-limit waits of at least 20 s: {:?}",
        start.elapsed()
    );
    assert_eq!(stub.calls.load(SeqCst), 3);
    let f = &stub.forms.lock().unwrap()[0];
    assert_eq!(f["filterType"], "email");
    assert_eq!(f["fields"], "email,leadScore");
}

#[tokio::test(start_paused = true)]
async fn daily_quota_and_fatal_codes_are_not_retried() {
    let stub = Arc::new(Stub::default());
    stub.faults
        .lock()
        .unwrap()
        .extend([("603", "Access denied"), ("607", "Daily quota reached")]);
    let base = serve_stub(stub.clone()).await;
    let mkto = client(&base);
    let err = mkto
        .leads_by_filter("id", &["1".into()], &[], None)
        .await
        .unwrap_err();
    assert!(
        matches!(err.class(), ErrorClass::Checkpoint { .. }),
        "{err}"
    );
    let err = mkto
        .leads_by_filter("id", &["1".into()], &[], None)
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert_eq!(stub.calls.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn transient_codes_and_malformed_json_are_retried() {
    let stub = Arc::new(Stub::default());
    stub.faults
        .lock()
        .unwrap()
        .extend([("611", "System error"), ("604", "Request timed out")]);
    let base = serve_stub(stub.clone()).await;
    let mkto = client(&base);
    assert!(
        mkto.leads_by_filter("id", &["1".into()], &[], None)
            .await
            .is_ok()
    );
    assert_eq!(stub.calls.load(SeqCst), 3);
    let policy = RetryPolicy {
        max_retries: 2,
        ..Default::default()
    };
    let mkto = MarketoClient::new(
        MarketoSettings {
            retry: policy,
            ..settings(&base)
        },
        "mkto-s3cret".into(),
    )
    .unwrap();
    let err = mkto.describe().await.unwrap_err();
    assert!(matches!(err, ConnectorError::Malformed { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn long_filters_go_as_post_with_method_get() {
    let stub = Arc::new(Stub::default());
    let base = serve_stub(stub.clone()).await;
    let mkto = client(&base);
    let values: Vec<String> = (0..300)
        .map(|i| format!("someone.with.a.long.address{i}@example.com"))
        .collect();
    let page = mkto
        .leads_by_filter("email", &values, &["id"], None)
        .await
        .unwrap();
    assert_eq!(page.leads[0]["id"], json!(2));
    let n = stub.forms.lock().unwrap()[0]["filterValues"]
        .split(',')
        .count();
    assert_eq!(n, 300);
    let too_many: Vec<String> = (0..301).map(|i| i.to_string()).collect();
    assert!(matches!(
        mkto.leads_by_filter("id", &too_many, &[], None).await,
        Err(ConnectorError::Config(_))
    ));
    assert!(matches!(
        mkto.activities_page("T0", &[1; 11]).await,
        Err(ConnectorError::Config(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn bad_credentials_fail_the_run_without_leaking_the_secret() {
    let stub = Arc::new(Stub::default());
    let base = serve_stub(stub.clone()).await;
    let mkto = MarketoClient::new(settings(&base), "wrong-secret".into()).unwrap();
    let err = mkto.describe().await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal);
    let text = format!("{err} {err:?}");
    assert!(!text.contains("wrong-secret"), "{text}");
    assert!(text.contains("unauthorized"));
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_quota() {
    let stub = Arc::new(Stub::default());
    let base = serve_stub(stub.clone()).await;
    let a = MarketoClient::new(
        MarketoSettings {
            daily_quota: 10,
            daily_reserve_pct: 20.0,
            ..settings(&base)
        },
        "mkto-s3cret".into(),
    )
    .unwrap();
    let b = a.clone();
    for i in 0..8 {
        let c = if i % 2 == 0 { &a } else { &b };
        c.leads_by_filter("id", &["1".into()], &[], None)
            .await
            .unwrap();
    }
    let err = b
        .leads_by_filter("id", &["1".into()], &[], None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectorError::BudgetReserve { remaining: 2, .. }),
        "{err}"
    );
    assert_eq!(stub.calls.load(SeqCst), 8);
}

#[tokio::test(start_paused = true)]
async fn dropped_connection_is_retried() {
    let (base, hits) = crate::connectors::testkit::dropping_server(
        1,
        crate::connectors::testkit::json_response(r#"{"access_token":"t:int","token_type":"bearer","expires_in":3599,"scope":"x","success":true,"result":[]}"#),
    )
    .await;
    let mkto = client(&base);
    let types = mkto.activity_types().await.unwrap();
    assert!(types.is_empty());
    assert_eq!(
        *hits.lock().unwrap(),
        3,
        "identity dropped once, then identity + types"
    );
}

#[test]
fn settings_deserialize_with_defaults() {
    let s: MarketoSettings =
        toml::from_str("base_url = \"https://123-ABC-456.mktorest.com\"\nclient_id = \"cid\"\n")
            .unwrap();
    assert_eq!(
        (s.calls_per_20s, s.max_in_flight, s.daily_quota),
        (100, 10, 50_000)
    );
    assert!(s.identity_url.is_none());
}

#[tokio::test(start_paused = true)]
async fn lead_changes_follow_the_same_cursor() {
    let stub = Arc::new(Stub::default());
    let base = serve_stub(stub.clone()).await;
    let cursor = ActivityCursor {
        next_page_token: "LC1".into(),
        last_guids: vec![],
    };
    let fields = vec!["leadScore".to_string(), "email".to_string()];
    let mut pages = ActivityPages::new(
        client(&base),
        ActivitySource::LeadChanges(fields),
        cursor,
        10,
    );
    let (acts, cursor) = pages.next_page().await.unwrap().unwrap();
    assert_eq!(acts[0].fields[0]["newValue"], json!("55"));
    assert_eq!(
        cursor,
        ActivityCursor {
            next_page_token: "LC2".into(),
            last_guids: vec!["1078".into()]
        }
    );
    assert!(pages.next_page().await.unwrap().is_none());
    let stored = serde_json::to_value(&cursor).unwrap();
    assert_eq!(
        stored,
        json!({"next_page_token":"LC2","last_guids":["1078"]})
    );
}
