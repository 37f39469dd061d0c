//! The Salesforce emulator over HTTP: OAuth flows, session expiry, SOQL paging, sObjects,
//! collections, limits, faults, history, outbound messaging and Bulk API 2.0.

use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};
use mqlsync::sandbox::clock::SandboxClock;
use mqlsync::sandbox::faults::FaultRule;
use mqlsync::sandbox::salesforce::OutboundMessaging;
use mqlsync::sandbox::server::{Sandbox, SandboxOptions};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const V: &str = "/services/data/v62.0";

fn start_time() -> Timestamp {
    "2026-11-02T12:00:00Z".parse().unwrap()
}

struct Org {
    sandbox: Sandbox,
    http: Client,
    token: String,
}

impl Org {
    async fn start(leads: usize, tweak: impl FnOnce(&mut SandboxOptions)) -> Org {
        let mut options = SandboxOptions {
            leads,
            seed: 7,
            clock: SandboxClock::frozen(start_time()),
            ..SandboxOptions::default()
        };
        tweak(&mut options);
        let sandbox = Sandbox::start(options).await.expect("sandbox starts");
        let http = Client::new();
        let token = client_credentials(&http, &sandbox).await;
        Org {
            sandbox,
            http,
            token,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sandbox.salesforce_url())
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request")
    }

    async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let r = self.get(path).await;
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn query(&self, soql: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(self.url(&format!("{V}/query")))
            .query(&[("q", soql)])
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request");
        let status = r.status();
        (status, r.json().await.unwrap())
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method, self.url(path))
            .json(&body)
            .send()
            .await
            .expect("admin request");
        assert!(r.status().is_success(), "admin {path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }
}

async fn client_credentials(http: &Client, sandbox: &Sandbox) -> String {
    let config = sandbox.salesforce_config();
    let r = http
        .post(format!(
            "{}/services/oauth2/token",
            sandbox.salesforce_url()
        ))
        .basic_auth(&config.client_id, Some(&config.client_secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["instance_url"], sandbox.salesforce_url());
    body["access_token"].as_str().unwrap().to_string()
}

fn rule(json: Value) -> FaultRule {
    serde_json::from_value(json).unwrap()
}

#[tokio::test]
async fn oauth_flows_issue_tokens_and_refuse_bad_grants() {
    let org = Org::start(20, |_| {}).await;
    let config = org.sandbox.salesforce_config().clone();
    let token_url = org.url("/services/oauth2/token");

    // Wrong secret: the token endpoint's own error object, not a REST error array.
    let r = org
        .http
        .post(&token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", config.client_id.as_str()),
            ("client_secret", "nope"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");

    // JWT bearer, signed with the test-only key, `exp` as a string as simple-salesforce sends it.
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!(
        "../fixtures/jwt/sandbox-test-only-private.pem"
    ))
    .unwrap();
    let assertion = |exp: i64, sub: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &json!({"iss": config.client_id, "sub": sub,
                    "aud": "https://login.salesforce.com", "exp": exp.to_string()}),
            &key,
        )
        .unwrap()
    };
    let now = start_time().as_second();
    let jwt = |assertion: String| {
        org.http.post(&token_url).form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:jwt-bearer".to_string(),
            ),
            ("assertion", assertion),
        ])
    };
    let r = jwt(assertion(now + 180, &config.username))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert!(body.get("refresh_token").is_none());
    let token = body["access_token"].as_str().unwrap();
    let limits = org
        .http
        .get(org.url(&format!("{V}/limits")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(limits.status(), StatusCode::OK);

    let r = jwt(assertion(now - 1, &config.username))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error_description"], "expired authorization code");
    let r = jwt(assertion(now + 180, "someone@else"))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["error_description"],
        "user hasn't approved this consumer"
    );
    // A token signed by another key (HS256 with a guessable secret) is refused.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"iss": config.client_id, "sub": config.username, "aud": "https://login.salesforce.com", "exp": now + 100}),
        &jsonwebtoken::EncodingKey::from_secret(b"guess"),
    )
    .unwrap();
    let r = jwt(forged).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");

    // Refresh token flow with a token minted through the admin API.
    let minted = org
        .admin(
            reqwest::Method::POST,
            "/__sandbox/salesforce/refresh_tokens",
            json!({}),
        )
        .await;
    let refresh = minted["refresh_token"].as_str().unwrap();
    let r = org
        .http
        .post(&token_url)
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", config.client_id.as_str()),
            ("client_secret", config.client_secret.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = org
        .http
        .post(&token_url)
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "5Aep861bogus"),
            ("client_id", config.client_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_description"], "expired access/refresh token");
    org.sandbox.shutdown().await;
}

#[tokio::test]
async fn idle_sessions_expire_with_invalid_session_id() {
    let org = Org::start(20, |o| o.salesforce.session_ttl_secs = 3600).await;
    let clock = org.sandbox.clock().clone();
    clock.advance(SignedDuration::from_mins(50));
    assert_eq!(
        org.get(&format!("{V}/limits")).await.status(),
        StatusCode::OK
    );
    // Use renews the idle timer: 50 more minutes are still inside the hour.
    clock.advance(SignedDuration::from_mins(50));
    assert_eq!(
        org.get(&format!("{V}/limits")).await.status(),
        StatusCode::OK
    );
    clock.advance(SignedDuration::from_mins(61));
    let (status, body) = org.get_json(&format!("{V}/limits")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
    );
    org.sandbox.shutdown().await;
}

#[tokio::test]
async fn query_pages_follow_next_records_url_with_the_batch_size() {
    let org = Org::start(900, |_| {}).await;
    let world_leads = org
        .sandbox
        .world()
        .people
        .iter()
        .filter(|p| p.crm_id.is_some() && p.crm_kind == mqlsync::sandbox::world::CrmKind::Lead)
        .count();
    let (_, count) = org.query("SELECT COUNT() FROM Lead").await;
    assert_eq!(count["totalSize"], world_leads);
    assert!(world_leads > 450, "{world_leads}");

    let mut seen = Vec::new();
    let r = org
        .http
        .get(org.url(&format!("{V}/query")))
        .query(&[(
            "q",
            "SELECT Id, LastName, SystemModstamp FROM Lead ORDER BY SystemModstamp, Id",
        )])
        .header("Sforce-Query-Options", "batchSize=200")
        .bearer_auth(&org.token)
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["sforce-limit-info"]
            .to_str()
            .unwrap()
            .starts_with("api-usage=")
    );
    let mut page: Value = r.json().await.unwrap();
    let mut pages = 0;
    let mut first_next = None;
    loop {
        pages += 1;
        assert_eq!(page["totalSize"], world_leads);
        let records = page["records"].as_array().unwrap();
        assert!(records.len() <= 200);
        assert_eq!(records[0]["attributes"]["type"], "Lead");
        seen.extend(records.iter().map(|r| {
            (
                r["SystemModstamp"].as_str().unwrap().to_string(),
                r["Id"].as_str().unwrap().to_string(),
            )
        }));
        if page["done"] == true {
            assert!(page.get("nextRecordsUrl").is_none());
            break;
        }
        let next = page["nextRecordsUrl"].as_str().unwrap().to_string();
        assert!(next.starts_with("/services/data/v62.0/query/01g"), "{next}");
        first_next.get_or_insert(next.clone());
        page = org.get_json(&next).await.1;
        assert!(pages < 10);
    }
    assert_eq!(pages, world_leads.div_ceil(200));
    assert_eq!(seen.len(), world_leads);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "ordered by SystemModstamp, Id without duplicates"
    );

    // A page can be fetched again (a client retrying after a dropped connection).
    let again = org.get_json(first_next.as_deref().unwrap()).await.1;
    assert_eq!(again["records"][0]["Id"], seen[200].1.as_str());
    // A locator nobody issued.
    let (status, body) = org
        .get_json(&format!("{V}/query/01gXXXXXXXXXXXXXXX-200"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body[0]["errorCode"], "INVALID_QUERY_LOCATOR");

    // An order the tables are not indexed by, with a filter, LIMIT and date literals.
    let (_, page) = org
        .query("SELECT Id, LastName, Region__c FROM Lead WHERE Region__c IN ('EMEA', 'NA') AND CreatedDate < 2026-11-01T00:00:00Z ORDER BY LastName DESC, Id LIMIT 30")
        .await;
    let names: Vec<String> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["LastName"].as_str().unwrap().to_lowercase())
        .collect();
    assert_eq!(names.len(), 30);
    assert!(names.windows(2).all(|w| w[0] >= w[1]));
    assert!(
        page["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["Region__c"] == "EMEA" || r["Region__c"] == "NA")
    );
    org.sandbox.shutdown().await;
}

#[tokio::test]
async fn bad_soql_gets_the_vendors_errors() {
    let org = Org::start(10, |_| {}).await;
    let (status, body) = org.query("SELECT Bogus FROM Contact").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body[0]["errorCode"], "INVALID_FIELD");
    assert!(
        body[0]["message"]
            .as_str()
            .unwrap()
            .contains("No such column 'Bogus' on entity 'Contact'")
    );
    let (status, body) = org
        .query("SELECT Id FROM Lead WHERE LastName = 'O\\'Brien")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body[0]["errorCode"], "MALFORMED_QUERY");
    let (_, body) = org
        .query("SELECT Id FROM Lead WHERE LastName = 'O\\'Brien'")
        .await;
    assert!(
        body["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["attributes"]["type"] == "Lead")
    );
    org.sandbox.shutdown().await;
}

#[tokio::test]
async fn sobjects_crud_upsert_describe_and_history() {
    let org = Org::start(10, |_| {}).await;
    let (status, describe) = org.get_json(&format!("{V}/sobjects/MQL__c/describe")).await;
    assert_eq!(status, StatusCode::OK);
    let ext = describe["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "External_Id__c")
        .unwrap();
    assert_eq!(ext["externalId"], true);
    assert_eq!(ext["unique"], true);

    let path = format!("{V}/sobjects/MQL__c/External_Id__c/cycle-1");
    let (status, created) = org
        .send(
            reqwest::Method::PATCH,
            &path,
            json!({"Status__c": "Open", "Score_At_MQL__c": 91}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["created"], true);
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("a0M"));
    let (status, updated) = org
        .send(
            reqwest::Method::PATCH,
            &path,
            json!({"Status__c": "Working"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        updated,
        json!({"id": id, "success": true, "errors": [], "created": false})
    );
    // v45 answers 204 with no body.
    let old = path.replace("v62.0", "v45.0");
    let (status, _) = org
        .send(
            reqwest::Method::PATCH,
            &old,
            json!({"Status__c": "Rejected", "Rejection_Reason__c": "Spam"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let (status, record) = org.get_json(&format!("{V}/sobjects/MQL__c/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(record["Status__c"], "Rejected");
    assert!(record["Name"].as_str().unwrap().starts_with("MQL-"));
    assert_eq!(record["External_Id__c"], "cycle-1");

    let (_, history) = org.query(&format!("SELECT Field, OldValue, NewValue FROM MQL__History WHERE ParentId = '{id}' ORDER BY CreatedDate")).await;
    let changes: Vec<(String, Value, Value)> = history["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["Field"].as_str().unwrap().to_string(),
                r["OldValue"].clone(),
                r["NewValue"].clone(),
            )
        })
        .collect();
    assert!(
        changes.contains(&("Status__c".into(), json!("Open"), json!("Working"))),
        "{changes:?}"
    );
    assert!(changes.contains(&("Status__c".into(), json!("Working"), json!("Rejected"))));
    assert!(changes.contains(&("Rejection_Reason__c".into(), Value::Null, json!("Spam"))));

    // Plain create needs required fields; update and delete.
    let (status, err) = org
        .send(
            reqwest::Method::POST,
            &format!("{V}/sobjects/Lead/"),
            json!({"LastName": "Solo"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err[0]["errorCode"], "REQUIRED_FIELD_MISSING");
    let (status, created) = org
        .send(
            reqwest::Method::POST,
            &format!("{V}/sobjects/Lead"),
            json!({"LastName": "Solo", "Company": "Acme"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let lead = created["id"].as_str().unwrap().to_string();
    let (status, _) = org
        .send(
            reqwest::Method::PATCH,
            &format!("{V}/sobjects/Lead/{lead}"),
            json!({"Status": "Working - Contacted"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let r = org
        .http
        .delete(org.url(&format!("{V}/sobjects/Lead/{lead}")))
        .bearer_auth(&org.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (status, body) = org.get_json(&format!("{V}/sobjects/Lead/{lead}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body[0]["errorCode"], "NOT_FOUND");
    let soql = format!("SELECT Id, IsDeleted FROM Lead WHERE Id = '{lead}'");
    assert_eq!(org.query(&soql).await.1["totalSize"], 0);
    let r = org
        .http
        .get(org.url(&format!("{V}/queryAll")))
        .query(&[("q", soql.as_str())])
        .bearer_auth(&org.token)
        .send()
        .await
        .unwrap();
    let all: Value = r.json().await.unwrap();
    assert_eq!(all["records"][0]["IsDeleted"], true);
    org.sandbox.shutdown().await;
}

#[tokio::test]
async fn collections_answer_per_record_in_the_vendors_shape() {
    let org = Org::start(10, |_| {}).await;
    let path = format!("{V}/composite/sobjects");
    let good = |n: u32| json!({"attributes": {"type": "MQL__c"}, "External_Id__c": format!("c-{n}"), "Status__c": "Open"});
    let bad = json!({"attributes": {"type": "MQL__c"}, "Bogus__c": 1});

    let (status, results) = org
        .send(
            reqwest::Method::POST,
            &path,
            json!({"allOrNone": false, "records": [good(1), bad, good(2)]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(results[0]["success"], true);
    assert_eq!(results[1]["success"], false);
    assert!(results[1].get("id").is_none());
    assert_eq!(results[1]["errors"][0]["statusCode"], "INVALID_FIELD");
    assert_eq!(results[2]["success"], true);

    // allOrNone: nothing is written, good records say they were rolled back.
    let (_, results) = org
        .send(
            reqwest::Method::POST,
            &path,
            json!({"allOrNone": true, "records": [good(3), good(3)]}),
        )
        .await;
    assert_eq!(
        results[0]["errors"][0]["statusCode"],
        "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    );
    assert_eq!(results[1]["errors"][0]["statusCode"], "DUPLICATE_VALUE");
    assert_eq!(
        org.query("SELECT COUNT() FROM MQL__c WHERE External_Id__c = 'c-3'")
            .await
            .1["totalSize"],
        0
    );

    // Upsert by external id, with one record failing by fault rule.
    org.sandbox.faults().add(rule(
        json!({"system": "salesforce", "kind": "composite_upsert", "times": 1,
        "action": {"type": "fail_record", "index": 1}}),
    ));
    let upsert = format!("{V}/composite/sobjects/MQL__c/External_Id__c");
    let (status, results) = org
        .send(
            reqwest::Method::PATCH,
            &upsert,
            json!({"allOrNone": false, "records": [good(1), good(4), good(5)]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(results[0]["created"], false);
    assert_eq!(results[1]["errors"][0]["statusCode"], "UNABLE_TO_LOCK_ROW");
    assert_eq!(results[2]["created"], true);

    // Update by id.
    let id = results[2]["id"].as_str().unwrap();
    let (_, results) = org
        .send(
            reqwest::Method::PATCH,
            &path,
            json!({"records": [
        {"attributes": {"type": "MQL__c"}, "id": id, "Status__c": "Working"},
        {"attributes": {"type": "MQL__c"}, "id": "001xx000003DGb2999", "Status__c": "Working"}]}),
        )
        .await;
    assert_eq!(results[0]["success"], true);
    assert_eq!(results[1]["errors"][0]["statusCode"], "MALFORMED_ID");

    let many: Vec<Value> = (0..201).map(good).collect();
    let (status, body) = org
        .send(reqwest::Method::POST, &path, json!({"records": many}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body[0]["errorCode"], "EXCEEDED_ID_LIMIT");
    org.sandbox.shutdown().await;
}

#[tokio::test]
async fn the_daily_limit_is_enforced_with_request_limit_exceeded() {
    let org = Org::start(10, |o| o.salesforce.daily_api_limit = 5).await;
    for n in 1..=5 {
        let r = org.get(&format!("{V}/limits")).await;
        assert_eq!(r.status(), StatusCode::OK, "call {n}");
        assert_eq!(
            r.headers()["sforce-limit-info"],
            format!("api-usage={n}/5").as_str()
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["DailyApiRequests"],
            json!({"Max": 5, "Remaining": 5 - n})
        );
    }
    let (status, body) = org
        .get_json(&format!("{V}/query?q=SELECT+Id+FROM+Lead"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
    );
    // The window rolls: a day later the calls are allowed again.
    org.sandbox.clock().advance(SignedDuration::from_hours(24));
    let token = client_credentials(&org.http, &org.sandbox).await;
    let r = org
        .http
        .get(org.url(&format!("{V}/limits")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    org.sandbox.shutdown().await;
}

#[tokio::test]
async fn faults_fire_deterministically_and_the_log_counts_kinds() {
    let org = Org::start(10, |_| {}).await;
    org.admin(reqwest::Method::PUT, "/__sandbox/faults", json!([
        {"system": "salesforce", "kind": "query", "skip": 1, "times": 1, "action": {"type": "status", "status": 503}},
        {"system": "salesforce", "kind": "describe", "times": 1, "action": {"type": "drop"}},
        {"system": "salesforce", "kind": "limits", "times": 1, "action": {"type": "expire_tokens"}},
        {"system": "salesforce", "kind": "sobject_get", "times": 1, "action": {"type": "vendor_error", "code": "REQUEST_LIMIT_EXCEEDED"}}
    ])).await;
    let q = "SELECT Id FROM User";
    assert_eq!(org.query(q).await.0, StatusCode::OK);
    let (status, body) = org.query(q).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body[0]["errorCode"], "SERVER_UNAVAILABLE");
    assert_eq!(org.query(q).await.0, StatusCode::OK);

    let dropped = org
        .http
        .get(org.url(&format!("{V}/sobjects/Lead/describe")))
        .bearer_auth(&org.token)
        .send()
        .await;
    let failed = match dropped {
        Err(_) => true,
        Ok(r) => r.bytes().await.is_err(),
    };
    assert!(failed, "a dropped connection gives the client an error");

    let user = org.sandbox.world().reps[0].id.clone();
    let (status, body) = org.get_json(&format!("{V}/sobjects/User/{user}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body[0]["errorCode"], "REQUEST_LIMIT_EXCEEDED");

    let (status, body) = org.get_json(&format!("{V}/limits")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body[0]["errorCode"], "INVALID_SESSION_ID");

    let log = org
        .admin(
            reqwest::Method::GET,
            "/__sandbox/log?system=salesforce",
            Value::Null,
        )
        .await;
    let counts = &log["counts"]["salesforce"];
    assert_eq!(counts["token"], 1);
    assert_eq!(counts["query"], 3);
    assert_eq!(counts["describe"], 1);
    assert_eq!(counts["sobject_get"], 1);
    assert_eq!(counts["limits"], 1);
    let statuses: Vec<u64> = log["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 200, 503, 200, 0, 403, 401]);
    org.sandbox.shutdown().await;
}

/// A SOAP endpoint that refuses the first message and acknowledges the rest.
async fn outbound_receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let seen = received.clone();
    let app = axum::Router::new().route(
        "/om",
        axum::routing::post(move |body: String| {
            let seen = seen.clone();
            async move {
                let mut seen = seen.lock().unwrap();
                seen.push(body);
                if seen.len() == 1 {
                    "<html>busy</html>".to_string()
                } else {
                    "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"><soapenv:Body><notificationsResponse xmlns=\"http://soap.sforce.com/2005/09/outbound\"><Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>".to_string()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/om", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

#[tokio::test]
async fn user_edits_write_history_and_outbound_messages_retry_until_acked() {
    let (url, received) = outbound_receiver().await;
    let org = Org::start(10, |o| {
        o.salesforce.outbound = Some(OutboundMessaging {
            url,
            objects: vec!["MQL_Threshold__c".into()],
            fields: vec![
                "Name".into(),
                "Score_Threshold__c".into(),
                "Region__c".into(),
            ],
            retry_initial_secs: 60,
            deliver_in_background: false,
        })
    })
    .await;
    let sf = org.sandbox.salesforce().clone();
    let threshold = org.sandbox.world().thresholds[1].id.clone();
    org.sandbox.clock().advance(SignedDuration::from_mins(5));
    org.admin(
        reqwest::Method::POST,
        &format!("/__sandbox/salesforce/records/MQL_Threshold__c/{threshold}"),
        json!({"Score_Threshold__c": 65}),
    )
    .await;

    let (_, page) = org.query("SELECT Id, Score_Threshold__c, SystemModstamp FROM MQL_Threshold__c WHERE SystemModstamp > 2026-11-02T12:00:00Z").await;
    assert_eq!(page["totalSize"], 1);
    assert_eq!(page["records"][0]["Score_Threshold__c"], 65.0);
    assert_eq!(
        page["records"][0]["SystemModstamp"],
        "2026-11-02T12:05:00.000+0000"
    );
    let (_, history) = org.query(&format!("SELECT Field, OldValue, NewValue, CreatedById FROM MQL_Threshold__History WHERE ParentId = '{threshold}' ORDER BY CreatedDate")).await;
    assert_eq!(history["totalSize"], 2);
    assert_eq!(history["records"][0]["Field"], "created");
    let history = json!({"records": [history["records"][1].clone()]});
    assert_eq!(history["records"][0]["Field"], "Score_Threshold__c");
    assert_eq!(history["records"][0]["NewValue"], 65.0);

    // Delivery is stepped here rather than waited for; the first POST is refused.
    assert_eq!(sf.deliver_outbound().await, 0);
    assert_eq!(received.lock().unwrap().len(), 1);
    let body = received.lock().unwrap()[0].clone();
    assert!(body.contains("<notifications xmlns=\"http://soap.sforce.com/2005/09/outbound\">"));
    assert!(body.contains(&format!("<sf:Id>{threshold}</sf:Id>")));
    assert!(body.contains("<sf:Score_Threshold__c>65.0</sf:Score_Threshold__c>"));
    assert_eq!(
        sf.deliver_outbound().await,
        0,
        "not due before the retry interval"
    );
    assert_eq!(received.lock().unwrap().len(), 1);
    org.sandbox.clock().advance(SignedDuration::from_secs(60));
    assert_eq!(sf.deliver_outbound().await, 1);
    let deliveries = sf.outbound_deliveries();
    assert_eq!(deliveries.len(), 2);
    assert!(!deliveries[0].acknowledged && deliveries[1].acknowledged);
    assert_eq!(
        deliveries[0].notification_ids,
        deliveries[1].notification_ids
    );
    assert_eq!(sf.state()["outbound"]["pending"], json!([]));
    org.sandbox.shutdown().await;
}

#[tokio::test]
async fn bulk2_query_and_ingest_jobs() {
    let org = Org::start(300, |_| {}).await;
    let (status, job) = org
        .send(
            reqwest::Method::POST,
            &format!("{V}/jobs/query"),
            json!({"operation": "query", "query": "SELECT Id, Email FROM Lead ORDER BY Id"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["state"], "UploadComplete");
    let id = job["id"].as_str().unwrap();
    let (_, job) = org.get_json(&format!("{V}/jobs/query/{id}")).await;
    assert_eq!(job["state"], "JobComplete");
    let total = job["numberRecordsProcessed"].as_u64().unwrap() as usize;
    let mut locator: Option<String> = None;
    let mut rows = 0;
    for _ in 0..10 {
        let mut path = format!("{V}/jobs/query/{id}/results?maxRecords=100");
        if let Some(l) = &locator {
            path.push_str(&format!("&locator={l}"));
        }
        let r = org.get(&path).await;
        let next = r.headers()["sforce-locator"].to_str().unwrap().to_string();
        let n: usize = r.headers()["sforce-numberofrecords"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let text = r.text().await.unwrap();
        assert!(text.starts_with("\"Id\",\"Email\""));
        assert_eq!(text.lines().count(), n + 1);
        rows += n;
        if next == "null" {
            break;
        }
        locator = Some(next);
    }
    assert_eq!(rows, total);

    let (_, job) = org.send(reqwest::Method::POST, &format!("{V}/jobs/ingest"), json!({"object": "MQL__c", "operation": "upsert", "externalIdFieldName": "External_Id__c", "contentType": "CSV", "lineEnding": "LF"})).await;
    assert_eq!(job["state"], "Open");
    let id = job["id"].as_str().unwrap();
    let r = org
        .http
        .put(org.url(&format!("{V}/jobs/ingest/{id}/batches")))
        .bearer_auth(&org.token)
        .header("content-type", "text/csv")
        .body("External_Id__c,Status__c,Score_At_MQL__c\nb-1,Open,90\nb-2,Open,notanumber\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (_, job) = org
        .send(
            reqwest::Method::PATCH,
            &format!("{V}/jobs/ingest/{id}"),
            json!({"state": "UploadComplete"}),
        )
        .await;
    assert_eq!(job["state"], "UploadComplete");
    let (_, job) = org.get_json(&format!("{V}/jobs/ingest/{id}")).await;
    assert_eq!(job["state"], "InProgress");
    let (_, job) = org.get_json(&format!("{V}/jobs/ingest/{id}")).await;
    assert_eq!(job["state"], "JobComplete");
    assert_eq!(job["numberRecordsFailed"], 1);
    let ok = org
        .get(&format!("{V}/jobs/ingest/{id}/successfulResults"))
        .await
        .text()
        .await
        .unwrap();
    assert!(ok.starts_with("\"sf__Id\",\"sf__Created\",\"External_Id__c\""));
    assert!(ok.contains("\"true\",\"b-1\""));
    let failed = org
        .get(&format!("{V}/jobs/ingest/{id}/failedResults"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        failed.contains("JSON_PARSER_ERROR") && failed.contains("b-2"),
        "{failed}"
    );
    org.sandbox.shutdown().await;
}

impl Org {
    async fn ingest_job(&self) -> String {
        let (status, job) = self
            .send(
                reqwest::Method::POST,
                &format!("{V}/jobs/ingest"),
                json!({"object": "MQL__c", "operation": "upsert", "externalIdFieldName": "External_Id__c", "contentType": "CSV", "lineEnding": "LF"}),
            )
            .await;
        assert_eq!((status, &job["state"]), (StatusCode::OK, &json!("Open")));
        job["id"].as_str().unwrap().to_string()
    }

    async fn upload(&self, id: &str, csv: String) -> StatusCode {
        self.http
            .put(self.url(&format!("{V}/jobs/ingest/{id}/batches")))
            .bearer_auth(&self.token)
            .header("content-type", "text/csv")
            .body(csv)
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn set_state(&self, id: &str, state: &str) -> (StatusCode, Value) {
        self.send(
            reqwest::Method::PATCH,
            &format!("{V}/jobs/ingest/{id}"),
            json!({"state": state}),
        )
        .await
    }

    /// Closes the job and polls it until it is finished.
    async fn run_job(&self, id: &str) -> Value {
        assert_eq!(self.set_state(id, "UploadComplete").await.0, StatusCode::OK);
        for _ in 0..3 {
            let (_, job) = self.get_json(&format!("{V}/jobs/ingest/{id}")).await;
            if matches!(job["state"].as_str(), Some("JobComplete" | "Failed")) {
                return job;
            }
        }
        panic!("job {id} did not finish in three polls");
    }

    async fn results(&self, id: &str, which: &str) -> String {
        self.get(&format!("{V}/jobs/ingest/{id}/{which}"))
            .await
            .text()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn ingest_jobs_keep_the_vendors_rules() {
    let org = Org::start(50, |o| o.salesforce.daily_bulk_batch_limit = 3).await;

    // Data sent twice: both uploads are taken, the close is refused, the job stays open.
    let twice = org.ingest_job().await;
    for _ in 0..2 {
        assert_eq!(
            org.upload(&twice, "External_Id__c\nt-1\n".into()).await,
            StatusCode::CREATED
        );
    }
    let (status, body) = org.set_state(&twice, "UploadComplete").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body[0]["errorCode"], "INVALIDJOB");
    assert!(
        body[0]["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("Found multipe contents for job: <{twice}>")),
        "{body}"
    );
    let (status, job) = org.set_state(&twice, "Aborted").await;
    assert_eq!((status, &job["state"]), (StatusCode::OK, &json!("Aborted")));
    assert_eq!(
        org.results(&twice, "successfulResults").await,
        "\"sf__Id\",\"sf__Created\",\"External_Id__c\"\n",
        "an aborted job wrote nothing"
    );

    // A failing record (a fault rule on the close), results last row first, `#N/A`.
    org.sandbox.faults().add(rule(json!({"system": "salesforce", "kind": "bulk2_ingest_state", "times": 1,
        "action": {"type": "fail_record", "index": 1, "code": "FIELD_CUSTOM_VALIDATION_EXCEPTION", "message": "Score too low"}})));
    let job_id = org.ingest_job().await;
    org.upload(
        &job_id,
        "External_Id__c,Status__c,Segment__c\ni-0,Open,EMEA\ni-1,Open,EMEA\ni-2,Open,EMEA\n".into(),
    )
    .await;
    let job = org.run_job(&job_id).await;
    assert_eq!(
        (
            &job["state"],
            &job["numberRecordsProcessed"],
            &job["numberRecordsFailed"]
        ),
        (&json!("JobComplete"), &json!(3), &json!(1))
    );
    let ok = org.results(&job_id, "successfulResults").await;
    let lines: Vec<&str> = ok.lines().collect();
    assert_eq!(
        lines[0],
        "\"sf__Id\",\"sf__Created\",\"External_Id__c\",\"Status__c\",\"Segment__c\""
    );
    assert!(
        lines[1].ends_with("\"true\",\"i-2\",\"Open\",\"EMEA\"") && lines[2].contains("\"i-0\""),
        "{ok}"
    );
    let failed = org.results(&job_id, "failedResults").await;
    assert!(
        failed.contains("\"\",\"FIELD_CUSTOM_VALIDATION_EXCEPTION:Score too low:--\",\"i-1\""),
        "{failed}"
    );
    let again = org.ingest_job().await;
    org.upload(
        &again,
        "External_Id__c,Status__c,Segment__c\ni-0,Working,#N/A\ni-2,,APAC\n".into(),
    )
    .await;
    org.run_job(&again).await;
    let ok = org.results(&again, "successfulResults").await;
    assert!(
        ok.contains("\"false\",\"i-0\",\"Working\",\"#N/A\""),
        "{ok}"
    );
    let (_, page) = org
        .query("SELECT External_Id__c, Status__c, Segment__c FROM MQL__c WHERE External_Id__c LIKE 'i-%' ORDER BY External_Id__c")
        .await;
    let got: Vec<(Value, Value)> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["Status__c"].clone(), r["Segment__c"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            (json!("Working"), Value::Null),
            (json!("Open"), json!("APAC")),
        ],
        "#N/A blanks a field, an empty cell leaves it alone"
    );

    // The daily batch allocation: one batch per 10,000 records; three were allowed, two jobs
    // used one each, so a job of 10,001 records gets one batch of its two and fails with one
    // record unprocessed.
    let big = org.ingest_job().await;
    let mut csv = String::from("External_Id__c,Status__c\n");
    for i in 0..10_001 {
        csv.push_str(&format!("big-{i},Open\n"));
    }
    org.upload(&big, csv).await;
    let job = org.run_job(&big).await;
    assert_eq!(job["state"], "Failed");
    assert_eq!(job["numberRecordsProcessed"], 10_000);
    assert!(
        job["errorMessage"]
            .as_str()
            .unwrap()
            .contains("batch allocation"),
        "{job}"
    );
    assert_eq!(
        org.results(&big, "unprocessedrecords").await,
        "\"External_Id__c\",\"Status__c\"\n\"big-10000\",\"Open\"\n"
    );
    let (_, limits) = org.get_json(&format!("{V}/limits")).await;
    assert_eq!(
        limits["DailyBulkApiBatches"],
        json!({"Max": 3, "Remaining": 0})
    );

    // Listing: every ingest job, as Bulk API 2.0 jobs.
    let (_, list) = org
        .get_json(&format!(
            "{V}/jobs/ingest?isPkChunkingEnabled=false&jobType=V2Ingest"
        ))
        .await;
    let states: Vec<&str> = list["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["Aborted", "JobComplete", "JobComplete", "Failed"]);
    assert_eq!(list["done"], true);
    let (_, classic) = org
        .get_json(&format!("{V}/jobs/ingest?jobType=Classic"))
        .await;
    assert_eq!(classic["records"], json!([]));
    org.sandbox.shutdown().await;
}

#[tokio::test]
async fn parent_fields_nest_under_their_relationship() {
    let org = Org::start(20, |_| {}).await;
    let (status, page) = org
        .query("SELECT Id, Owner.Name, owner.email, LastName FROM Lead ORDER BY Id LIMIT 2")
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let lead = &page["records"][0];
    let owner_id = org
        .sandbox
        .world()
        .people
        .iter()
        .find(|p| p.crm_id.as_deref() == lead["Id"].as_str())
        .unwrap()
        .owner_id
        .clone();
    let rep = org
        .sandbox
        .world()
        .reps
        .iter()
        .find(|r| r.id == owner_id)
        .unwrap();
    assert_eq!(lead["Owner"]["attributes"]["type"], "User");
    assert_eq!(lead["Owner"]["Name"], rep.name.as_str());
    assert_eq!(lead["Owner"]["Email"], rep.email.as_str());
    let (_, created) = org
        .send(
            reqwest::Method::PATCH,
            &format!("{V}/sobjects/MQL__c/External_Id__c/p-1"),
            json!({"Status__c": "Open"}),
        )
        .await;
    assert_eq!(created["created"], true);
    let (_, page) = org.query("SELECT Id, Lead__r.Email FROM MQL__c").await;
    assert_eq!(page["records"][0]["Lead__r"], Value::Null);
    // Parent fields filter too.
    let soql = format!(
        "SELECT Id, OwnerId FROM Lead WHERE Owner.Email = '{}' AND Owner.IsActive = true",
        rep.email
    );
    let (status, page) = org.query(&soql).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let owned = org
        .sandbox
        .world()
        .people
        .iter()
        .filter(|p| {
            p.crm_kind == mqlsync::sandbox::world::CrmKind::Lead
                && p.crm_id.is_some()
                && p.owner_id == rep.id
        })
        .count();
    assert_eq!(page["totalSize"], owned);
    assert!(
        page["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["OwnerId"] == rep.id.as_str())
    );
    let (status, body) = org.query("SELECT Id, Boss.Name FROM Lead").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body[0]["errorCode"], "INVALID_FIELD");
    org.sandbox.shutdown().await;
}

/// A 65-character alert-task key, as the sync builds them.
fn alert_key(n: usize) -> String {
    format!("alert-{n:0>59}")
}

impl Org {
    /// POSTs a Composite request; the status, `Sforce-Limit-Info` and body.
    async fn composite(&self, body: Value) -> (StatusCode, String, Value) {
        let r = self
            .http
            .post(self.url(&format!("{V}/composite")))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("composite request");
        let status = r.status();
        let usage = r
            .headers()
            .get("sforce-limit-info")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, usage, r.json().await.unwrap_or(Value::Null))
    }

    async fn create_task(&self, key: &str) -> String {
        let (status, body) = self
            .send(
                reqwest::Method::POST,
                &format!("{V}/sobjects/Task"),
                json!({"Subject": "MQL alert", "MQL_Alert_Key__c": key}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    async fn log_records(&self) -> Vec<Value> {
        let log = self
            .admin(
                reqwest::Method::GET,
                "/__sandbox/log?system=salesforce",
                Value::Null,
            )
            .await;
        log["records"].as_array().unwrap().clone()
    }
}

/// `text` form-encoded as a query parameter value (what a client's URL builder sends).
fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends `GET target` over a plain TCP connection and returns the response's status line.
async fn raw_get(org: &Org, target: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = org.sandbox.salesforce_url().trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        org.token
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    text.lines().next().unwrap_or_default().to_string()
}

fn query_subrequest(reference: &str, soql: &str) -> Value {
    let q = form_encode(soql);
    json!({"method": "GET", "url": format!("{V}/query/?q={q}"), "referenceId": reference})
}

/// `SELECT Id, MQL_Alert_Key__c FROM Task WHERE MQL_Alert_Key__c IN (...)` over `keys`.
fn alert_key_query(keys: &[String]) -> String {
    let list: Vec<String> = keys.iter().map(|k| format!("'{k}'")).collect();
    format!(
        "SELECT Id, MQL_Alert_Key__c FROM Task WHERE MQL_Alert_Key__c IN ({})",
        list.join(",")
    )
}

#[tokio::test]
async fn composite_answers_its_subrequests_in_order_as_one_call() {
    let org = Org::start(20, |_| {}).await;
    let first = org.create_task(&alert_key(1)).await;
    let leads = org.query("SELECT COUNT() FROM Lead").await.1["totalSize"].clone();
    org.sandbox.log().clear();
    let (status, usage, body) = org
        .composite(json!({
            "allOrNone": false,
            "compositeRequest": [
                query_subrequest("alertTasks", &alert_key_query(&[alert_key(1), alert_key(2)])),
                query_subrequest("leadCount", "SELECT COUNT() FROM Lead"),
                {"method": "POST", "url": format!("{V}/sobjects/Task"), "referenceId": "newTask",
                 "body": {"Subject": "MQL alert", "MQL_Alert_Key__c": alert_key(2)}},
                {"method": "GET", "url": format!("{V}/sobjects/Task/@{{newTask.id}}?fields=MQL_Alert_Key__c"),
                 "referenceId": "readBack"},
            ]
        }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // One call: the token, one POST and one query came before it.
    assert_eq!(usage, "api-usage=3/15000");
    let results = body["compositeResponse"].as_array().unwrap();
    let refs: Vec<&str> = results
        .iter()
        .map(|r| r["referenceId"].as_str().unwrap())
        .collect();
    assert_eq!(refs, ["alertTasks", "leadCount", "newTask", "readBack"]);
    assert_eq!(results[0]["httpStatusCode"], 200);
    assert_eq!(results[0]["httpHeaders"], json!({}));
    assert_eq!(results[0]["body"]["totalSize"], 1);
    assert_eq!(results[0]["body"]["done"], true);
    assert_eq!(results[0]["body"]["records"][0]["Id"], first.as_str());
    assert_eq!(
        results[0]["body"]["records"][0]["MQL_Alert_Key__c"],
        alert_key(1).as_str()
    );
    assert_eq!(results[1]["body"]["totalSize"], leads);
    assert_eq!(results[2]["httpStatusCode"], 201);
    let created = results[2]["body"]["id"].as_str().unwrap();
    assert_eq!(
        results[2]["httpHeaders"]["Location"],
        format!("{V}/sobjects/Task/{created}").as_str()
    );
    assert_eq!(results[3]["httpStatusCode"], 200);
    assert_eq!(
        results[3]["body"]["MQL_Alert_Key__c"],
        alert_key(2).as_str()
    );

    let kinds: Vec<(String, u64)> = org
        .log_records()
        .await
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(kinds, [("composite".to_string(), 200)]);
    org.sandbox.shutdown().await;
}

/// Issue 11 point 10: alert-task keys are looked up with about 1,000 keys per statement,
/// which only a request body can carry.
#[tokio::test]
async fn long_soql_works_in_a_composite_but_not_in_a_url() {
    let org = Org::start(10, |_| {}).await;
    let hits = [
        org.create_task(&alert_key(7)).await,
        org.create_task(&alert_key(400)).await,
    ];
    let keys: Vec<String> = (0..900).map(alert_key).collect();
    let soql = alert_key_query(&keys);
    assert!(soql.chars().count() > 60_000, "{}", soql.len());

    let (status, _, body) = org
        .composite(json!({"compositeRequest": [query_subrequest("alertTasks", &soql)]}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let result = &body["compositeResponse"][0];
    assert_eq!(result["httpStatusCode"], 200, "{result}");
    let mut found: Vec<&str> = result["body"]["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Id"].as_str().unwrap())
        .collect();
    found.sort_unstable();
    let mut expected: Vec<&str> = hits.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(found, expected);

    // The same statement as a URL is refused. Encoded it is over 65,534 bytes, which
    // reqwest will not even build a request for and the HTTP server refuses before `gate`
    // sees it, so it goes over a raw connection.
    let target = format!("{V}/query?q={}", form_encode(&soql));
    assert!(target.len() > 65_534, "{}", target.len());
    let status_line = raw_get(&org, &target).await;
    assert!(status_line.starts_with("HTTP/1.1 414"), "{status_line}");

    // A URL over 16,384 bytes that the HTTP server still reads gets the vendor's page,
    // is logged as the query it would have been, and costs no API call.
    org.sandbox.log().clear();
    let medium = alert_key_query(&keys[..250]);
    let r = org
        .http
        .get(org.url(&format!("{V}/query")))
        .query(&[("q", &medium)])
        .bearer_auth(&org.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::URI_TOO_LONG);
    assert!(r.headers().get("sforce-limit-info").is_none());
    assert_eq!(
        r.text().await.unwrap(),
        "<h1>Bad Message 414</h1><pre>reason: URI Too Long</pre>"
    );
    // URI and headers together over the limit: 431.
    let short = alert_key_query(&keys[..100]);
    let r = org
        .http
        .get(org.url(&format!("{V}/query")))
        .query(&[("q", &short)])
        .header("X-Trace", "t".repeat(9_000))
        .bearer_auth(&org.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(
        r.text().await.unwrap(),
        "<h1>Bad Message 431</h1><pre>reason: Request Header Fields Too Large</pre>"
    );
    // Without the header the same URI is served.
    let (status, page) = org.query(&short).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["totalSize"], 1);
    let logged: Vec<(String, u64)> = org
        .log_records()
        .await
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        logged,
        [
            ("query".to_string(), 414),
            ("query".to_string(), 431),
            ("query".to_string(), 200)
        ]
    );
    // Only the served query counted: token, 2 creates, composite, this query.
    let r = org.get(&format!("{V}/limits")).await;
    assert_eq!(r.headers()["sforce-limit-info"], "api-usage=5/15000");

    // Past the SOQL limit even a body is refused.
    let many: Vec<String> = (0..1_400).map(alert_key).collect();
    let mut too_long = alert_key_query(&many);
    too_long.push_str(&" ".repeat(100_001 - too_long.chars().count()));
    let (status, _, body) = org
        .composite(json!({"compositeRequest": [query_subrequest("tooLong", &too_long)]}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let result = &body["compositeResponse"][0];
    assert_eq!(result["httpStatusCode"], 400);
    assert_eq!(result["body"][0]["errorCode"], "MALFORMED_QUERY");
    assert!(
        result["body"][0]["message"]
            .as_str()
            .unwrap()
            .contains("100001 characters"),
        "{result}"
    );
    org.sandbox.shutdown().await;
}

#[tokio::test]
async fn composite_refuses_what_the_vendor_refuses() {
    let org = Org::start(10, |_| {}).await;
    let lookup = |i: usize| query_subrequest(&format!("q{i}"), "SELECT Id FROM User LIMIT 1");
    let read = |i: usize| json!({"method": "GET", "url": format!("{V}/limits"), "referenceId": format!("r{i}")});
    let only_result = |body: &Value| body["compositeResponse"][0].clone();

    // 26 subrequests.
    let (status, _, body) = org
        .composite(json!({"compositeRequest": (0..26).map(read).collect::<Vec<_>>()}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["compositeResponse"].as_array().unwrap().len(), 1);
    assert_eq!(
        only_result(&body),
        json!({"body": [{"errorCode": "LIMIT_EXCEEDED", "message": "The request can’t contain more than 25 operations."}],
               "httpHeaders": {}, "httpStatusCode": 400, "referenceId": null})
    );
    // 25 are served.
    let (_, _, body) = org
        .composite(json!({"compositeRequest": (0..25).map(read).collect::<Vec<_>>()}))
        .await;
    assert_eq!(body["compositeResponse"].as_array().unwrap().len(), 25);
    assert_eq!(body["compositeResponse"][24]["httpStatusCode"], 200);

    // 6 query operations (5 are fine).
    let (_, _, body) = org
        .composite(json!({"compositeRequest": (0..6).map(lookup).collect::<Vec<_>>()}))
        .await;
    let result = only_result(&body);
    assert_eq!(result["httpStatusCode"], 400);
    assert_eq!(result["referenceId"], Value::Null);
    assert_eq!(result["body"][0]["errorCode"], "LIMIT_EXCEEDED");
    let (_, _, body) = org
        .composite(json!({"compositeRequest": (0..5).map(lookup).collect::<Vec<_>>()}))
        .await;
    assert_eq!(body["compositeResponse"].as_array().unwrap().len(), 5);

    // Requests the vendor cannot deserialize: 400 at the top level.
    for (bad, says) in [
        (
            json!({"method": "GET", "url": format!("{V}/limits")}),
            "referenceId is required",
        ),
        (
            json!({"method": "GET", "url": format!("{V}/limits"), "referenceId": "a-b"}),
            "letters, digits and underscores",
        ),
        (
            json!({"method": "get", "url": format!("{V}/limits"), "referenceId": "a"}),
            "method must be one of",
        ),
        (
            json!({"method": "GET", "url": "limits", "referenceId": "a"}),
            "url must be a path",
        ),
        (
            json!({"method": "GET", "url": format!("{V}/limits"), "referenceId": "a",
                "httpHeaders": {"Authorization": "Bearer x"}}),
            "may not set Authorization",
        ),
    ] {
        let (status, _, body) = org.composite(json!({"compositeRequest": [bad]})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body[0]["errorCode"], "INVALID_INPUT");
        assert!(
            body[0]["message"].as_str().unwrap().contains(says),
            "{body}"
        );
    }
    let (status, _, body) = org
        .composite(json!({"compositeRequest": [read(1), read(1)]}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body[0]["message"]
            .as_str()
            .unwrap()
            .contains("Duplicate referenceId 'r1'")
    );

    // Per subrequest: an unsupported resource, a wrong method, a bad reference, and a
    // subrequest depending on a failed one; the others still run (allOrNone false).
    let (status, _, body) = org
        .composite(json!({"compositeRequest": [
            {"method": "POST", "url": format!("{V}/jobs/ingest"), "referenceId": "bulk",
             "body": {"object": "Task", "operation": "insert"}},
            {"method": "DELETE", "url": format!("{V}/limits"), "referenceId": "deleteLimits"},
            {"method": "GET", "url": format!("{V}/sobjects/Task/@{{nobody.id}}"), "referenceId": "dangling"},
            query_subrequest("broken", "SELECT Nope FROM Task"),
            {"method": "GET", "url": format!("{V}/sobjects/Task/@{{broken.records[0].Id}}"), "referenceId": "dependent"},
            read(1),
        ]}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let codes: Vec<(u64, String)> = body["compositeResponse"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["httpStatusCode"].as_u64().unwrap(),
                r["body"][0]["errorCode"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        [
            (404, "NOT_FOUND".to_string()),
            (405, "METHOD_NOT_ALLOWED".to_string()),
            (400, "PROCESSING_HALTED".to_string()),
            (400, "INVALID_FIELD".to_string()),
            (400, "PROCESSING_HALTED".to_string()),
            (200, String::new()),
        ]
    );

    // allOrNone: the first failure halts the rest, and everything else reports the
    // rollback; writes cannot be rolled back here, so they are refused up front.
    let (status, _, body) = org
        .composite(json!({"allOrNone": true, "compositeRequest": [
            lookup(1), query_subrequest("broken", "SELECT Nope FROM Task"), lookup(2)]}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let results = body["compositeResponse"].as_array().unwrap();
    assert_eq!(results[1]["body"][0]["errorCode"], "INVALID_FIELD");
    for i in [0, 2] {
        assert_eq!(results[i]["httpStatusCode"], 400);
        assert_eq!(
            results[i]["body"],
            json!([{"errorCode": "PROCESSING_HALTED", "message": "The transaction was rolled back since another operation in the same transaction failed."}])
        );
    }
    let (status, _, body) = org
        .composite(json!({"allOrNone": true, "compositeRequest": [
            {"method": "POST", "url": format!("{V}/sobjects/Task"), "referenceId": "t",
             "body": {"Subject": "x"}}]}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body[0]["errorCode"], "FUNCTIONALITY_NOT_ENABLED");
    assert_eq!(
        org.query("SELECT COUNT() FROM Task").await.1["totalSize"],
        0
    );
    org.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_composite_query_pages_on_with_its_next_records_url() {
    let org = Org::start(700, |_| {}).await;
    let total = org.query("SELECT COUNT() FROM Lead").await.1["totalSize"]
        .as_u64()
        .unwrap();
    assert!(total > 400, "{total}");
    let mut first = query_subrequest("leads", "SELECT Id FROM Lead ORDER BY Id");
    first["httpHeaders"] = json!({"Sforce-Query-Options": "batchSize=200"});
    let (_, _, body) = org.composite(json!({"compositeRequest": [first]})).await;
    let page = &body["compositeResponse"][0]["body"];
    assert_eq!(page["totalSize"], total);
    assert_eq!(page["done"], false);
    assert_eq!(page["records"].as_array().unwrap().len(), 200);
    let next = page["nextRecordsUrl"].as_str().unwrap().to_string();
    assert!(next.starts_with(&format!("{V}/query/01g")), "{next}");

    // A plain GET follows it ...
    let (status, second) = org.get_json(&next).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(second["records"].as_array().unwrap().len(), 200);
    assert!(
        second["records"][0]["Id"].as_str() > page["records"][199]["Id"].as_str(),
        "pages continue in Id order"
    );
    // ... and so does a query-more subrequest.
    let (_, _, body) = org
        .composite(json!({"compositeRequest": [
            {"method": "GET", "url": next, "referenceId": "again"}]}))
        .await;
    assert_eq!(body["compositeResponse"][0]["body"], second);
    org.sandbox.shutdown().await;
}
