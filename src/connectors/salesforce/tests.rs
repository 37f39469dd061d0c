//! Salesforce connector tests: classification units and HTTP behaviour against local stubs
//! (paused tokio time, no sleeps).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode as AxStatus};
use axum::response::IntoResponse;
use axum::routing::{get, patch, post};
use axum::{Form, Json, Router};
use serde_json::{Value, json};

use super::*;
use crate::connectors::testkit::serve;
use crate::connectors::{ErrorClass, QueryPages};

fn key_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/connectors/salesforce/testdata/test_key.pem")
}

fn settings(base: &str, auth: SalesforceAuth) -> SalesforceSettings {
    SalesforceSettings {
        base_url: base.into(),
        token_url: format!("{base}/services/oauth2/token"),
        api_version: "62.0".into(),
        auth,
        daily_reserve_pct: 10.0,
        max_in_flight: 4,
        batch_size: 2000,
        request_timeout_secs: 30,
        session_renew_after_secs: 3600,
        call_options_client: "mqlsync".into(),
        retry: RetryPolicy::default(),
        ingest: Default::default(),
        names: Default::default(),
    }
}

fn jwt() -> SalesforceAuth {
    SalesforceAuth::JwtBearer {
        client_id: "3MVG9".into(),
        username: "sync@acme.com".into(),
        private_key_file: key_path(),
        audience: "https://login.salesforce.com".into(),
    }
}

fn client_credentials(base: &str) -> SalesforceClient {
    SalesforceClient::new(
        settings(
            base,
            SalesforceAuth::ClientCredentials {
                client_id: "cid".into(),
            },
        ),
        SalesforceSecrets {
            client_secret: Some("s3cret".into()),
            refresh_token: None,
        },
    )
    .unwrap()
}

fn now() -> Timestamp {
    "2026-11-23T00:00:00Z".parse().unwrap()
}

fn body(v: Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn classification_of_every_fault_kind() {
    let c = |s: u16, b: Value| {
        classify(StatusCode::from_u16(s).unwrap(), &body(b), None, now()).map(|e| e.class())
    };
    assert_eq!(c(200, json!({})), None);
    assert_eq!(
        c(
            401,
            json!([{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}])
        ),
        Some(ErrorClass::RenewToken)
    );
    assert_eq!(
        c(
            401,
            json!([{"message":"This session is not valid for use with the REST API","errorCode":"INVALID_SESSION_ID"}])
        ),
        Some(ErrorClass::Fatal),
        "a 401 that renewal cannot fix must not loop"
    );
    assert!(matches!(
        c(
            403,
            json!([{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}])
        ),
        Some(ErrorClass::Checkpoint { .. })
    ));
    assert_eq!(
        c(
            403,
            json!([{"message":"ConcurrentPerOrgLongTxn Limit exceeded","errorCode":"REQUEST_LIMIT_EXCEEDED"}])
        ),
        Some(ErrorClass::BackOff)
    );
    assert_eq!(
        c(
            503,
            json!([{"message":"down","errorCode":"SERVER_UNAVAILABLE"}])
        ),
        Some(ErrorClass::Retry)
    );
    assert_eq!(
        c(502, json!("<html>bad gateway</html>")),
        Some(ErrorClass::Retry)
    );
    assert_eq!(c(420, json!({})), Some(ErrorClass::Retry));
    assert_eq!(c(429, json!({})), Some(ErrorClass::BackOff));
    assert_eq!(
        c(
            400,
            json!([{"message":"unexpected token","errorCode":"MALFORMED_QUERY"}])
        ),
        Some(ErrorClass::Fatal)
    );
    assert_eq!(
        c(
            400,
            json!([{"message":"x","errorCode":"INVALID_QUERY_LOCATOR"}])
        ),
        Some(ErrorClass::Fatal)
    );
    assert_eq!(
        c(
            400,
            json!([{"message":"x","errorCode":"UNABLE_TO_LOCK_ROW"}])
        ),
        Some(ErrorClass::Retry)
    );
    assert_eq!(
        c(
            404,
            json!([{"message":"The requested resource does not exist","errorCode":"NOT_FOUND"}])
        ),
        Some(ErrorClass::Fatal)
    );
    // HTML error page body on a 401: still a renewal, never a crash.
    let e = classify(StatusCode::UNAUTHORIZED, b"<html>", None, now()).unwrap();
    assert_eq!(e.class(), ErrorClass::RenewToken);
}

#[test]
fn per_record_results_map_to_outcomes() {
    let r = |v: Value, upsert: bool| {
        serde_json::from_value::<CollectionResult>(v)
            .unwrap()
            .into_outcome(7, upsert)
    };
    let ok = r(
        json!({"id":"a01","success":true,"errors":[],"created":true}),
        true,
    );
    assert_eq!(
        ok,
        RecordOutcome {
            index: 7,
            id: Some("a01".into()),
            result: Ok(WriteStatus::Created)
        }
    );
    let upd = r(json!({"id":"a01","success":true,"errors":[]}), false);
    assert_eq!(upd.result, Ok(WriteStatus::Updated));
    let dup = r(
        json!({"success":false,"errors":[{"statusCode":"DUPLICATE_VALUE","message":"duplicate value found: Cycle_Key__c duplicates value on record with id: a0B000000000001","fields":[]}]}),
        true,
    );
    assert_eq!(
        dup.result,
        Ok(WriteStatus::AlreadyDone {
            code: "DUPLICATE_VALUE".into()
        })
    );
    assert_eq!(dup.id.as_deref(), Some("a0B000000000001"));
    let dup_update = r(
        json!({"success":false,"errors":[{"statusCode":"DUPLICATE_VALUE","message":"d","fields":[]}]}),
        false,
    );
    assert!(
        dup_update.result.is_err(),
        "on an update a duplicate is a real conflict"
    );
    let conv = r(
        json!({"success":false,"errors":[{"statusCode":"CANNOT_UPDATE_CONVERTED_LEAD","message":"converted","fields":[]}]}),
        false,
    );
    assert!(matches!(conv.result, Ok(WriteStatus::AlreadyDone { .. })));
    let lock = r(
        json!({"success":false,"errors":[{"statusCode":"UNABLE_TO_LOCK_ROW","message":"unable","fields":[]}]}),
        true,
    );
    assert!(matches!(
        lock.result,
        Err(RecordError {
            retryable: true,
            ..
        })
    ));
    let missing = r(
        json!({"success":false,"errors":[{"statusCode":"REQUIRED_FIELD_MISSING","message":"Required fields are missing: [LastName]","fields":["LastName"]}]}),
        true,
    );
    let Err(e) = missing.result else { panic!() };
    assert_eq!(
        (e.code.as_str(), e.retryable, e.fields),
        (
            "REQUIRED_FIELD_MISSING",
            false,
            vec!["LastName".to_string()]
        )
    );
}

#[derive(Default)]
struct Stub {
    tokens: AtomicUsize,
    queries: AtomicUsize,
    /// What each query call saw: (authorization, Sforce-Query-Options, q).
    seen: Mutex<Vec<(String, String, Option<String>)>>,
    /// Reject the first page-2 call with INVALID_SESSION_ID.
    expire_once: Mutex<bool>,
    failures: Mutex<Vec<(u16, String)>>,
}

async fn token(
    State(s): State<Arc<Stub>>,
    Form(f): Form<HashMap<String, String>>,
) -> impl IntoResponse {
    let n = s.tokens.fetch_add(1, SeqCst) + 1;
    if f.get("grant_type").map(String::as_str)
        == Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        let pubkey = std::fs::read(key_path().with_file_name("test_key.pub.pem")).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_audience(&["https://login.salesforce.com"]);
        v.set_issuer(&["3MVG9"]);
        let claims = jsonwebtoken::decode::<Value>(
            &f["assertion"],
            &jsonwebtoken::DecodingKey::from_rsa_pem(&pubkey).unwrap(),
            &v,
        );
        match claims {
            Ok(d) if d.claims["sub"] == "sync@acme.com" => {}
            _ => {
                return (
                    AxStatus::BAD_REQUEST,
                    Json(json!({"error":"invalid_grant","error_description":"bad assertion"})),
                );
            }
        }
    }
    (
        AxStatus::OK,
        Json(
            json!({"access_token": format!("00D!tok{n}"), "instance_url": "https://ignored.example", "token_type": "Bearer"}),
        ),
    )
}

async fn query(
    State(s): State<Arc<Stub>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> axum::response::Response {
    s.queries.fetch_add(1, SeqCst);
    let h = |k: &str| {
        headers
            .get(k)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    s.seen.lock().unwrap().push((
        h("authorization"),
        h("sforce-query-options"),
        q.get("q").cloned(),
    ));
    if let Some((status, b)) = s.failures.lock().unwrap().pop() {
        return (
            AxStatus::from_u16(status).unwrap(),
            [("Sforce-Limit-Info", "api-usage=10/1000")],
            b,
        )
            .into_response();
    }
    let page = json!({"totalSize":3,"done":false,"nextRecordsUrl":"/services/data/v62.0/query/01gX-2",
        "records":[{"attributes":{"type":"Lead"},"Id":"00Q1","SystemModstamp":"2026-11-22T10:00:00.000+0000"},
                   {"attributes":{"type":"Lead"},"Id":"00Q2","SystemModstamp":"2026-11-22T10:00:00.000+0000"}]});
    ([("Sforce-Limit-Info", "api-usage=10/1000")], Json(page)).into_response()
}

async fn query_more(State(s): State<Arc<Stub>>, headers: HeaderMap) -> axum::response::Response {
    s.queries.fetch_add(1, SeqCst);
    let auth = headers
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    {
        let mut e = s.expire_once.lock().unwrap();
        if *e && auth == "Bearer 00D!tok1" {
            *e = false;
            return (AxStatus::UNAUTHORIZED, Json(json!([{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]))).into_response();
        }
    }
    Json(json!({"totalSize":3,"done":true,
        "records":[{"attributes":{"type":"Lead"},"Id":"00Q3","SystemModstamp":"2026-11-22T10:00:01.000+0000"}]}))
    .into_response()
}

fn router(stub: Arc<Stub>) -> Router {
    Router::new()
        .route("/services/oauth2/token", post(token))
        .route("/services/data/v62.0/query", get(query))
        .route("/services/data/v62.0/query/01gX-2", get(query_more))
        .with_state(stub)
}

#[tokio::test(start_paused = true)]
async fn jwt_bearer_and_paging_with_largest_batch_size() {
    let stub = Arc::new(Stub::default());
    let base = serve(router(stub.clone())).await;
    let sf = SalesforceClient::new(settings(&base, jwt()), SalesforceSecrets::default()).unwrap();
    let mut pages = QueryPages::new(
        sf.clone(),
        "SELECT Id FROM Lead WHERE Name = 'O\\'Brien'",
        false,
        Priority::Routine,
    );
    let p1 = pages.next_page().await.unwrap().unwrap();
    let p2 = pages.next_page().await.unwrap().unwrap();
    assert!(pages.next_page().await.unwrap().is_none());
    assert_eq!((p1.len(), p2.len()), (2, 1));
    assert_eq!(stub.tokens.load(SeqCst), 1, "one token for the whole read");
    let seen = stub.seen.lock().unwrap();
    assert_eq!(seen[0].0, "Bearer 00D!tok1");
    assert_eq!(seen[0].1, "batchSize=2000");
    assert_eq!(
        seen[0].2.as_deref(),
        Some("SELECT Id FROM Lead WHERE Name = 'O\\'Brien'")
    );
    assert_eq!(
        sf.budget().usage(),
        (10, 1000),
        "Sforce-Limit-Info feeds the shared budget"
    );
}

#[tokio::test(start_paused = true)]
async fn token_expiry_mid_run_renews_once_and_continues() {
    let stub = Arc::new(Stub {
        expire_once: Mutex::new(true),
        ..Default::default()
    });
    let base = serve(router(stub.clone())).await;
    let sf = client_credentials(&base);
    let mut pages = QueryPages::new(sf, "SELECT Id FROM Lead", false, Priority::Routine);
    pages.next_page().await.unwrap();
    let p2 = pages.next_page().await.unwrap().unwrap();
    assert_eq!(p2.len(), 1);
    assert_eq!(stub.tokens.load(SeqCst), 2);
    assert_eq!(stub.queries.load(SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn server_errors_and_malformed_json_are_retried() {
    let stub = Arc::new(Stub::default());
    stub.failures.lock().unwrap().extend([
        (200, "{\"totalSize\":".to_string()),
        (
            503,
            r#"[{"message":"down","errorCode":"SERVER_UNAVAILABLE"}]"#.to_string(),
        ),
    ]);
    let base = serve(router(stub.clone())).await;
    let sf = client_credentials(&base);
    let page = sf
        .query_page(
            PageRequest::Start {
                soql: "SELECT Id FROM Lead".into(),
                all: false,
            },
            Priority::Routine,
        )
        .await
        .unwrap();
    assert_eq!(page.records.len(), 2);
    assert_eq!(stub.queries.load(SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn daily_limit_stops_at_once_with_a_resume_time() {
    let stub = Arc::new(Stub::default());
    stub.failures.lock().unwrap().push((
        403,
        r#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#
            .into(),
    ));
    let base = serve(router(stub.clone())).await;
    let sf = client_credentials(&base);
    let err = sf
        .query_page(
            PageRequest::Start {
                soql: "SELECT Id FROM Lead".into(),
                all: false,
            },
            Priority::Routine,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.class(), ErrorClass::Checkpoint { resume_at } if resume_at > Timestamp::now())
    );
    assert_eq!(
        stub.queries.load(SeqCst),
        1,
        "no retry against a daily limit"
    );
}

#[tokio::test(start_paused = true)]
async fn reserve_stops_routine_calls_before_the_limit_is_hit() {
    let stub = Arc::new(Stub::default());
    let base = serve(router(stub.clone())).await;
    let sf = client_credentials(&base);
    let other_task = sf.clone();
    sf.budget().observe(900, 1000); // 10 % reserve = 100 calls left
    let err = other_task
        .query_page(
            PageRequest::Start {
                soql: "SELECT Id FROM Lead".into(),
                all: false,
            },
            Priority::Routine,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectorError::BudgetReserve { remaining: 100, .. }),
        "{err}"
    );
    assert_eq!(stub.queries.load(SeqCst), 0);
    assert!(
        other_task
            .query_page(
                PageRequest::Start {
                    soql: "SELECT Id FROM Lead".into(),
                    all: false
                },
                Priority::Essential
            )
            .await
            .is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn request_timeout_is_retried() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new()
        .route(
            "/services/oauth2/token",
            post(|| async {
                Json(json!({"access_token":"t","instance_url":"x","token_type":"Bearer"}))
            }),
        )
        .route(
            "/services/data/v62.0/limits",
            get(move || {
                let h = h.clone();
                async move {
                    if h.fetch_add(1, SeqCst) == 0 {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    Json(json!({"DailyApiRequests":{"Max":15000,"Remaining":14998}}))
                }
            }),
        );
    let base = serve(app).await;
    let sf = client_credentials(&base);
    let limits = sf.limits().await.unwrap();
    assert!(limits.contains_key("DailyApiRequests"));
    assert_eq!(hits.load(SeqCst), 2);
    assert_eq!(sf.budget().usage(), (2, 15000));
}

#[tokio::test(start_paused = true)]
async fn dropped_connection_is_retried() {
    let (base, hits) = crate::connectors::testkit::dropping_server(
        2,
        crate::connectors::testkit::json_response(
            r#"{"DailyApiRequests":{"Max":100,"Remaining":90}}"#,
        ),
    )
    .await;
    // The token endpoint is the same raw server: first two connections are dropped, so the token
    // fetch itself is retried; the token body is then the limits JSON, which has no access_token.
    let sf = client_credentials(&base);
    let err = sf.limits().await.unwrap_err();
    assert!(matches!(err, ConnectorError::Malformed { .. }), "{err}");
    assert!(
        *hits.lock().unwrap() >= 3,
        "the dropped connections were retried"
    );
}

#[derive(Default)]
struct Collections {
    bodies: Mutex<Vec<Value>>,
}

#[tokio::test(start_paused = true)]
async fn upsert_in_chunks_of_200_with_one_failing_record() {
    let state = Arc::new(Collections::default());
    let app = Router::new()
        .route("/services/oauth2/token", post(|| async { Json(json!({"access_token":"t","token_type":"Bearer"})) }))
        .route(
            "/services/data/v62.0/composite/sobjects/MQL__c/Cycle_Key__c",
            patch(|State(s): State<Arc<Collections>>, Json(b): Json<Value>| async move {
                let recs = b["records"].as_array().unwrap().clone();
                s.bodies.lock().unwrap().push(b);
                let out: Vec<Value> = recs
                    .iter()
                    .map(|r| match r["Cycle_Key__c"].as_str().unwrap() {
                        "k3" => json!({"success":false,"errors":[{"statusCode":"REQUIRED_FIELD_MISSING","message":"Required fields are missing: [Lead__c]","fields":["Lead__c"]}]}),
                        "k4" => json!({"success":false,"errors":[{"statusCode":"DUPLICATE_VALUE","message":"duplicate value found: Cycle_Key__c duplicates value on record with id: a0B4","fields":[]}]}),
                        k => json!({"id": format!("a0B{}", &k[1..]),"success":true,"errors":[],"created":true}),
                    })
                    .collect();
                Json(out)
            }),
        )
        .with_state(state.clone());
    let base = serve(app).await;
    let sf = client_credentials(&base);
    let records: Vec<Record> = (0..250)
        .map(|i| {
            serde_json::from_value(json!({"Cycle_Key__c": format!("k{i}"), "Lead__c": "00Q1"}))
                .unwrap()
        })
        .collect();
    let out = sf.upsert("MQL__c", "Cycle_Key__c", records).await.unwrap();
    assert_eq!(out.len(), 250);
    let bodies = state.bodies.lock().unwrap();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0]["records"].as_array().unwrap().len(), 200);
    assert_eq!(bodies[1]["records"].as_array().unwrap().len(), 50);
    assert_eq!(bodies[0]["allOrNone"], json!(false));
    assert_eq!(
        bodies[0]["records"][0]["attributes"]["type"],
        json!("MQL__c")
    );
    assert!(out.iter().enumerate().all(|(i, o)| o.index == i));
    assert!(matches!(&out[3].result, Err(e) if e.code == "REQUIRED_FIELD_MISSING"));
    assert_eq!(
        out[4].result,
        Ok(WriteStatus::AlreadyDone {
            code: "DUPLICATE_VALUE".into()
        })
    );
    assert_eq!(out[249].id.as_deref(), Some("a0B249"));
    assert_eq!(out.iter().filter(|o| o.result.is_err()).count(), 1);
}

#[tokio::test(start_paused = true)]
async fn incremental_read_dedupes_the_lookback_and_keeps_ties() {
    // Two records share a modstamp; on the second run the look-back re-reads them plus a
    // late-committed record with an older stamp: only the late one is new.
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let seen_q = Arc::new(Mutex::new(Vec::<String>::new()));
    let sq = seen_q.clone();
    let app = Router::new()
        .route(
            "/services/oauth2/token",
            post(|| async { Json(json!({"access_token":"t","token_type":"Bearer"})) }),
        )
        .route(
            "/services/data/v62.0/query",
            get(move |Query(q): Query<HashMap<String, String>>| {
                let run = r.fetch_add(1, SeqCst);
                sq.lock().unwrap().push(q["q"].clone());
                async move {
                    let rec = |id: &str, ts: &str| json!({"Id": id, "SystemModstamp": ts});
                    let recs = if run == 0 {
                        vec![
                            rec("00QA", "2026-11-22T10:00:00.000+0000"),
                            rec("00QB", "2026-11-22T10:00:00.000+0000"),
                        ]
                    } else {
                        vec![
                            rec("00QL", "2026-11-22T09:59:30.000+0000"),
                            rec("00QA", "2026-11-22T10:00:00.000+0000"),
                            rec("00QB", "2026-11-22T10:00:00.000+0000"),
                        ]
                    };
                    Json(json!({"totalSize": recs.len(), "done": true, "records": recs}))
                }
            }),
        );
    let base = serve(app).await;
    let sf = client_credentials(&base);
    let lookback = Duration::from_secs(120);
    let mut read = IncrementalRead::new(
        sf.clone(),
        "Lead",
        &["Email"],
        ModstampCursor::default(),
        lookback,
        None,
        false,
    )
    .unwrap();
    let page = read.next_page().await.unwrap().unwrap();
    assert_eq!(page.records.len(), 2);
    let stored = serde_json::to_string(&page.cursor).unwrap();
    assert!(read.next_page().await.unwrap().is_none());

    let cursor: ModstampCursor = serde_json::from_str(&stored).unwrap();
    let mut read =
        IncrementalRead::new(sf, "Lead", &["Email"], cursor, lookback, None, false).unwrap();
    let page = read.next_page().await.unwrap().unwrap();
    let ids: Vec<&str> = page
        .records
        .iter()
        .map(|r| r["Id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["00QL"]);
    assert_eq!(
        page.cursor.id.as_deref(),
        Some("00QB"),
        "a late record does not move the cursor back"
    );
    let q = &seen_q.lock().unwrap()[1];
    assert!(
        q.contains("WHERE SystemModstamp >= 2026-11-22T09:58:00.000Z"),
        "{q}"
    );
    assert!(q.ends_with("ORDER BY SystemModstamp ASC, Id ASC"), "{q}");
}

#[test]
fn bad_key_file_and_missing_secrets_fail_at_start_up() {
    let mut s = settings("http://127.0.0.1:1", jwt());
    if let SalesforceAuth::JwtBearer {
        private_key_file, ..
    } = &mut s.auth
    {
        *private_key_file = "/nonexistent/key.pem".into();
    }
    assert!(matches!(
        SalesforceClient::new(s, SalesforceSecrets::default()),
        Err(ConnectorError::Config(_))
    ));
    let s = settings(
        "http://127.0.0.1:1",
        SalesforceAuth::ClientCredentials {
            client_id: "c".into(),
        },
    );
    let err = SalesforceClient::new(s, SalesforceSecrets::default())
        .err()
        .unwrap();
    assert!(!format!("{err}").contains("s3cret"));
}

#[test]
fn settings_deserialize_with_defaults() {
    let s: SalesforceSettings = toml::from_str(
        r#"
        base_url = "https://acme.my.salesforce.com"
        token_url = "https://login.salesforce.com/services/oauth2/token"
        [auth]
        kind = "jwt_bearer"
        client_id = "3MVG9"
        username = "sync@acme.com"
        private_key_file = "/etc/mqlsync/sf.pem"
        "#,
    )
    .unwrap();
    assert_eq!(s.api_version, "62.0");
    assert_eq!(s.batch_size, 2000);
    assert!(
        matches!(s.auth, SalesforceAuth::JwtBearer { ref audience, .. } if audience == "https://login.salesforce.com")
    );
}

#[tokio::test(start_paused = true)]
async fn bulk_query_polls_then_reads_result_sets_by_locator() {
    let polls = Arc::new(AtomicUsize::new(0));
    let p = polls.clone();
    let created = Arc::new(Mutex::new(None::<Value>));
    let c = created.clone();
    let app = Router::new()
        .route("/services/oauth2/token", post(|| async { Json(json!({"access_token":"t","token_type":"Bearer"})) }))
        .route(
            "/services/data/v62.0/jobs/query",
            post(move |Json(b): Json<Value>| {
                *c.lock().unwrap() = Some(b);
                async { Json(json!({"id":"750R0000000zlh9IAA","operation":"query","object":"Lead","state":"UploadComplete"})) }
            }),
        )
        .route(
            "/services/data/v62.0/jobs/query/750R0000000zlh9IAA",
            get(move || {
                let n = p.fetch_add(1, SeqCst);
                async move {
                    let state = if n < 2 { "InProgress" } else { "JobComplete" };
                    Json(json!({"id":"750R0000000zlh9IAA","state": state}))
                }
            }),
        )
        .route(
            "/services/data/v62.0/jobs/query/750R0000000zlh9IAA/results",
            get(|headers: HeaderMap, Query(q): Query<HashMap<String, String>>| async move {
                assert_eq!(headers["accept"], "text/csv");
                assert_eq!(q["maxRecords"], "2");
                match q.get("locator").map(String::as_str) {
                    None => ([("Sforce-Locator", "MTAwMDA"), ("Sforce-NumberOfRecords", "2")], "\"Id\",\"Email\"\n\"00Q1\",\"a@b.c\"\n\"00Q2\",\"\"\n"),
                    Some("MTAwMDA") => ([("Sforce-Locator", "null"), ("Sforce-NumberOfRecords", "1")], "\"Id\",\"Email\"\n\"00Q3\",\"c@d.e\"\n"),
                    Some(other) => panic!("unexpected locator {other}"),
                }
            }),
        );
    let base = serve(app).await;
    let sf = client_credentials(&base);
    let mut q = bulk::BulkQuery::start(sf, "SELECT Id, Email FROM Lead", true, 2)
        .await
        .unwrap();
    assert_eq!(
        created.lock().unwrap().as_ref().unwrap()["operation"],
        json!("queryAll")
    );
    let job = q.wait(Duration::from_secs(10), 10).await.unwrap();
    assert_eq!(job.state, "JobComplete");
    assert_eq!(polls.load(SeqCst), 3);
    let s1 = q.next_set().await.unwrap().unwrap();
    assert_eq!(s1.len(), 2);
    assert_eq!(s1[1]["Email"], Value::Null, "an empty CSV field is null");
    let s2 = q.next_set().await.unwrap().unwrap();
    assert_eq!(s2[0]["Id"], json!("00Q3"));
    assert!(q.next_set().await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn client_credentials_and_refresh_token_flows() {
    let forms = Arc::new(Mutex::new(Vec::<(String, HashMap<String, String>)>::new()));
    let f = forms.clone();
    let app = Router::new()
        .route(
            "/services/oauth2/token",
            post(move |headers: HeaderMap, Form(form): Form<HashMap<String, String>>| {
                let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                f.lock().unwrap().push((auth, form.clone()));
                async move {
                    match (form["grant_type"].as_str(), form.get("refresh_token").map(String::as_str)) {
                        ("client_credentials", _) => (AxStatus::OK, Json(json!({"access_token":"cc","token_type":"Bearer","instance_url":"x"}))),
                        ("refresh_token", Some("r1")) => (AxStatus::OK, Json(json!({"access_token":"rt","token_type":"Bearer","refresh_token":"r2"}))),
                        _ => (AxStatus::BAD_REQUEST, Json(json!({"error":"invalid_grant","error_description":"expired access/refresh token"}))),
                    }
                }
            }),
        )
        .route("/services/data/v62.0/limits", get(|| async { Json(json!({})) }));
    let base = serve(app).await;

    client_credentials(&base).limits().await.unwrap();
    let (auth, form) = forms.lock().unwrap()[0].clone();
    // base64("cid:s3cret")
    assert_eq!(auth, "Basic Y2lkOnMzY3JldA==");
    assert_eq!(form["grant_type"], "client_credentials");

    let sf = SalesforceClient::new(
        settings(
            &base,
            SalesforceAuth::RefreshToken {
                client_id: "cid".into(),
            },
        ),
        SalesforceSecrets {
            client_secret: None,
            refresh_token: Some("r1".into()),
        },
    )
    .unwrap();
    sf.limits().await.unwrap();
    assert_eq!(
        sf.refresh_token().unwrap().expose_secret(),
        "r2",
        "rotated token kept for persisting"
    );
    let (_, form) = forms.lock().unwrap()[1].clone();
    assert_eq!(form.get("client_id").map(String::as_str), Some("cid"));

    // A dead refresh token fails the run (no retry loop) and the error names no secret.
    let sf = SalesforceClient::new(
        settings(
            &base,
            SalesforceAuth::RefreshToken {
                client_id: "cid".into(),
            },
        ),
        SalesforceSecrets {
            client_secret: Some("s3cret".into()),
            refresh_token: Some("dead-token".into()),
        },
    )
    .unwrap();
    let err = sf.limits().await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal);
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("invalid_grant") && !text.contains("dead-token") && !text.contains("s3cret"),
        "{text}"
    );
    assert_eq!(forms.lock().unwrap().len(), 3);
}

/// An ingest job server that answers the job's state from a script (its last state repeats)
/// and notes when the job was closed and polled.
#[derive(Default)]
struct IngestStub {
    states: Mutex<std::collections::VecDeque<&'static str>>,
    closed_at: Mutex<Vec<tokio::time::Instant>>,
    polled_at: Mutex<Vec<tokio::time::Instant>>,
}

fn ingest_router(stub: Arc<IngestStub>) -> Router {
    let job = |state: &str| {
        json!({"id": "750A0000000001", "state": state, "object": "MQL__c", "operation": "upsert",
               "externalIdFieldName": "External_Id__c", "numberRecordsProcessed": 2, "numberRecordsFailed": 0})
    };
    let polled = stub.clone();
    let closed = stub.clone();
    Router::new()
        .route(
            "/services/oauth2/token",
            post(|| async { Json(json!({"access_token": "00D!t", "token_type": "Bearer"})) }),
        )
        .route(
            "/services/data/v62.0/jobs/ingest",
            post(move || async move { Json(job("Open")) }),
        )
        .route(
            "/services/data/v62.0/jobs/ingest/750A0000000001/batches",
            axum::routing::put(|| async { AxStatus::CREATED }),
        )
        .route(
            "/services/data/v62.0/jobs/ingest/750A0000000001",
            patch(move || async move {
                closed
                    .closed_at
                    .lock()
                    .unwrap()
                    .push(tokio::time::Instant::now());
                Json(job("UploadComplete"))
            })
            .get(move || async move {
                polled
                    .polled_at
                    .lock()
                    .unwrap()
                    .push(tokio::time::Instant::now());
                let mut states = polled.states.lock().unwrap();
                let state = if states.len() > 1 {
                    states.pop_front().unwrap()
                } else {
                    states[0]
                };
                Json(job(state))
            }),
        )
        .route(
            "/services/data/v62.0/jobs/ingest/750A0000000001/successfulResults",
            get(|| async {
                "\"sf__Id\",\"sf__Created\",External_Id__c\n\"a0M2\",\"true\",k-2\n\"a0M1\",\"false\",k-1\n"
            }),
        )
        .with_state(())
}

fn ingest_client(base: &str, max_wait_secs: u64) -> SalesforceClient {
    let mut s = settings(
        base,
        SalesforceAuth::ClientCredentials {
            client_id: "cid".into(),
        },
    );
    s.ingest = ingest::IngestSettings {
        poll_initial_ms: 1_000,
        poll_max_ms: 4_000,
        max_wait_secs,
        max_upload_bytes: 1_000_000,
    };
    SalesforceClient::new(
        s,
        SalesforceSecrets {
            client_secret: Some("s".into()),
            refresh_token: None,
        },
    )
    .unwrap()
}

fn two_mqls() -> Vec<Record> {
    ["k-1", "k-2"]
        .iter()
        .map(|k| json!({"External_Id__c": k}).as_object().unwrap().clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_ingest_job_is_polled_at_doubling_waits_and_closed_again_when_left_open() {
    let stub = Arc::new(IngestStub::default());
    stub.states.lock().unwrap().extend([
        "Open",
        "InProgress",
        "InProgress",
        "InProgress",
        "InProgress",
        "JobComplete",
    ]);
    let sf = ingest_client(&serve(ingest_router(stub.clone())).await, 3_600);
    let out = sf
        .ingest_upsert("MQL__c", "External_Id__c", two_mqls(), Priority::Routine)
        .await
        .unwrap();
    assert_eq!(
        out.iter()
            .map(|o| (o.index, o.id.as_deref(), o.result.clone()))
            .collect::<Vec<_>>(),
        [
            (0, Some("a0M1"), Ok(WriteStatus::Updated)),
            (1, Some("a0M2"), Ok(WriteStatus::Created)),
        ],
        "results come back in another order; outcomes are in input order"
    );
    let closed = stub.closed_at.lock().unwrap().clone();
    assert_eq!(
        closed.len(),
        2,
        "the job still Open at the first poll is closed again"
    );
    let polled = stub.polled_at.lock().unwrap().clone();
    let waits: Vec<u64> = std::iter::once(closed[0])
        .chain(polled.iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis() as u64)
        .collect();
    assert_eq!(waits, [1_000, 2_000, 4_000, 4_000, 4_000, 4_000]);
}

#[tokio::test(start_paused = true)]
async fn an_ingest_job_that_outlasts_the_wait_is_reported_with_what_to_do() {
    let stub = Arc::new(IngestStub::default());
    stub.states.lock().unwrap().push_back("InProgress");
    let sf = ingest_client(&serve(ingest_router(stub.clone())).await, 5);
    let err = sf
        .ingest_upsert("MQL__c", "External_Id__c", two_mqls(), Priority::Routine)
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Retry);
    let said = err.to_string();
    assert!(
        said.contains("ingest job 750A0000000001 still InProgress after 5 s")
            && said.contains("sending them again is safe"),
        "{said}"
    );
    assert_eq!(stub.polled_at.lock().unwrap().len(), 3, "at 1, 3 and 7 s");
}
