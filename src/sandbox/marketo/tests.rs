//! Behaviour tests of the Marketo emulator, over real HTTP on 127.0.0.1 with reqwest as a
//! plain client. Time comes from a frozen sandbox clock; nothing sleeps.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::*;
use crate::sandbox::faults::FaultRule;

pub(super) fn now() -> Timestamp {
    "2026-11-02T12:00:00Z".parse().unwrap()
}

pub(super) struct Harness {
    pub marketo: Marketo,
    pub base: String,
    pub http: reqwest::Client,
    pub clock: SandboxClock,
    pub faults: Arc<Faults>,
    pub log: Arc<RequestLog>,
    pub world: World,
}

pub(super) async fn spawn_with(people: usize, config: MarketoConfig) -> Harness {
    let world = World::generate(11, people, now());
    let clock = SandboxClock::frozen(now());
    let faults = Arc::new(Faults::default());
    let log = Arc::new(RequestLog::default());
    let marketo = Marketo::new(&world, config, clock.clone(), faults.clone(), log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = marketo.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Harness {
        marketo,
        base,
        http: reqwest::Client::new(),
        clock,
        faults,
        log,
        world,
    }
}

pub(super) async fn spawn(people: usize) -> Harness {
    spawn_with(people, MarketoConfig::sandbox_default()).await
}

impl Harness {
    pub async fn token(&self) -> String {
        let c = MarketoConfig::sandbox_default();
        let v: Value = self
            .http
            .get(format!(
                "{}/identity/oauth/token?grant_type=client_credentials&client_id={}&client_secret={}",
                self.base, c.client_id, c.client_secret
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["access_token"].as_str().unwrap().to_string()
    }

    pub async fn get(&self, token: &str, path_and_query: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path_and_query}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path_and_query}");
        r.json().await.unwrap()
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.json().await.unwrap()
    }
}

fn code(v: &Value) -> &str {
    v["errors"][0]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn identity_reuses_tokens_and_rest_calls_take_only_bearer_headers() {
    let h = spawn(20).await;
    let first = h.token().await;
    h.clock.advance(SignedDuration::from_secs(100));
    let url = format!(
        "{}/identity/oauth/token?grant_type=client_credentials&client_id=sandbox-marketo-client&client_secret=sandbox-marketo-secret",
        h.base
    );
    let again: Value = h
        .http
        .post(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["access_token"], json!(first));
    assert_eq!(again["expires_in"], json!(3500));
    assert_eq!(again["token_type"], json!("bearer"));

    let bad = h
        .http
        .get(url.replace("secret=sandbox", "secret=wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["error"],
        json!("unauthorized")
    );

    let path = "/rest/v1/leads/describe.json";
    let by_query: Value = h
        .http
        .get(format!("{}{path}?access_token={first}", h.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (by_query["success"].clone(), code(&by_query)),
        (json!(false), "603")
    );
    assert_eq!(code(&h.get("not-a-token", path).await), "601");
    assert_eq!(h.get(&first, path).await["success"], json!(true));
    h.clock.advance(SignedDuration::from_secs(3500));
    assert_eq!(code(&h.get(&first, path).await), "602");
    let renewed = h.token().await;
    assert_ne!(renewed, first);

    h.faults.add(serde_json::from_value::<FaultRule>(json!(
        {"system": "marketo", "kind": "leads_describe", "times": 1, "action": {"type": "expire_tokens"}})).unwrap());
    assert_eq!(code(&h.get(&renewed, path).await), "602");
    let kinds: Vec<String> = h.log.snapshot().iter().map(|r| r.kind.clone()).collect();
    assert!(
        kinds.iter().filter(|k| *k == "identity").count() >= 4,
        "{kinds:?}"
    );
}

#[tokio::test]
async fn describe_reports_score_fields_and_vendor_errors_are_http_200() {
    let h = spawn(20).await;
    let token = h.token().await;
    let v = h.get(&token, "/rest/v1/leads/describe.json").await;
    assert_eq!(v["errors"], json!([]));
    assert!(v["requestId"].as_str().unwrap().contains('#'));
    let score_fields: Vec<&str> = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["dataType"] == "score")
        .map(|f| f["rest"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        score_fields,
        ["leadScore", "behaviorScore", "demographicScore"]
    );

    h.faults.add(serde_json::from_value::<FaultRule>(json!(
        {"system": "marketo", "kind": "activity_types", "times": 1,
         "action": {"type": "vendor_error", "code": "1029", "message": "Export daily quota 500MB exceeded"}})).unwrap());
    let v = h.get(&token, "/rest/v1/activities/types.json").await;
    assert_eq!(v["success"], json!(false));
    assert_eq!(
        v["errors"][0],
        json!({"code": "1029", "message": "Export daily quota 500MB exceeded"})
    );
    let v = h.get(&token, "/rest/v1/activities/types.json").await;
    let ids: Vec<i64> = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert!(ids.contains(&22) && ids.contains(&13), "{ids:?}");
    assert_eq!(code(&h.get(&token, "/rest/v1/nothing.json").await), "610");
}

#[tokio::test]
async fn leads_by_filter_pages_and_accepts_tunnelled_form_posts() {
    let h = spawn(50).await;
    let token = h.token().await;
    let p = &h.world.people[3];
    let v = h
        .get(&token, &format!("/rest/v1/leads.json?filterType=email&filterValues={}&fields=leadScore,behaviorScore,sfdcType,region", p.email))
        .await;
    assert_eq!(v["result"][0]["id"], json!(p.map_id));
    assert_eq!(v["result"][0]["leadScore"], json!(p.lead_score));
    assert_eq!(v["result"][0]["behaviorScore"], json!(p.behavior_score));

    let ids: Vec<String> = h
        .world
        .people
        .iter()
        .take(5)
        .map(|p| p.map_id.to_string())
        .collect();
    let mut seen = Vec::new();
    let mut token_param = String::new();
    for _ in 0..10 {
        let v = h
            .get(
                &token,
                &format!(
                    "/rest/v1/leads.json?filterType=id&filterValues={}&batchSize=2{token_param}",
                    ids.join(",")
                ),
            )
            .await;
        seen.extend(
            v["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["id"].as_i64().unwrap()),
        );
        match v["nextPageToken"].as_str() {
            Some(t) => token_param = format!("&nextPageToken={t}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);

    let form = format!(
        "filterType=id&filterValues={}&fields=email",
        ids.join("%2C")
    );
    let v: Value = h
        .http
        .post(format!("{}/rest/v1/leads.json", h.base))
        .bearer_auth(&token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("_method=GET&{form}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["result"].as_array().unwrap().len(), 5, "{v}");

    let many: Vec<String> = (0..301).map(|i| i.to_string()).collect();
    let v = h
        .get(
            &token,
            &format!(
                "/rest/v1/leads.json?filterType=id&filterValues={}",
                many.join(",")
            ),
        )
        .await;
    assert_eq!(code(&v), "1003");
    let v = h
        .get(
            &token,
            "/rest/v1/leads.json?filterType=firstName&filterValues=Ada",
        )
        .await;
    assert_eq!(code(&v), "1011");
}

#[tokio::test]
async fn the_101st_call_in_20_seconds_gets_606() {
    let h = spawn(5).await;
    let token = h.token().await;
    for i in 0..100 {
        let v = h.get(&token, "/rest/v1/activities/types.json").await;
        assert_eq!(v["success"], json!(true), "call {i}");
    }
    assert_eq!(
        code(&h.get(&token, "/rest/v1/activities/types.json").await),
        "606"
    );
    h.clock.advance(SignedDuration::from_secs(20));
    assert_eq!(
        h.get(&token, "/rest/v1/activities/types.json").await["success"],
        json!(true)
    );
}

#[tokio::test]
async fn the_daily_quota_gives_607_until_midnight_central() {
    let mut config = MarketoConfig::sandbox_default();
    config.daily_quota = 3;
    let h = spawn_with(5, config).await;
    let token = h.token().await;
    for _ in 0..3 {
        assert_eq!(
            h.get(&token, "/rest/v1/stats/usage.json").await["success"],
            json!(true)
        );
    }
    assert_eq!(
        code(&h.get(&token, "/rest/v1/stats/usage.json").await),
        "607"
    );
    // 12:00 UTC is 06:00 in Chicago: midnight Central is 18 hours on.
    h.clock.advance(SignedDuration::from_hours(18));
    let token = h.token().await;
    let v = h.get(&token, "/rest/v1/stats/usage.json").await;
    assert_eq!(v["result"][0]["total"], json!(1));
}

#[tokio::test]
async fn the_11th_concurrent_call_gets_615() {
    let h = spawn(5).await;
    let token = h.token().await;
    h.faults.add(
        serde_json::from_value::<FaultRule>(json!(
        {"system": "marketo", "kind": "leads_describe", "times": 10,
         "action": {"type": "delay", "millis": 60000}}))
        .unwrap(),
    );
    let mut in_flight = h.marketo.inner.limits.watch_in_flight();
    let mut held = Vec::new();
    for _ in 0..10 {
        let request = h
            .http
            .get(format!("{}/rest/v1/leads/describe.json", h.base))
            .bearer_auth(&token)
            .send();
        held.push(tokio::spawn(request));
    }
    in_flight.wait_for(|n| *n == 10).await.unwrap();
    assert_eq!(
        code(&h.get(&token, "/rest/v1/activities/types.json").await),
        "615"
    );
    for task in held {
        task.abort();
    }
}

async fn all_activities(h: &Harness, token: &str, query: &str) -> (Vec<Value>, usize) {
    let start = h
        .get(
            token,
            "/rest/v1/activities/pagingtoken.json?sinceDatetime=2020-01-01T00:00:00Z",
        )
        .await;
    let mut next = start["nextPageToken"].as_str().unwrap().to_string();
    let mut records = Vec::new();
    let mut empty_with_more = 0;
    for _ in 0..1000 {
        let v = h
            .get(
                token,
                &format!("/rest/v1/activities.json?nextPageToken={next}&{query}"),
            )
            .await;
        assert_eq!(v["success"], json!(true), "{v}");
        let page = v["result"].as_array().unwrap();
        if page.is_empty() && v["moreResult"] == json!(true) {
            empty_with_more += 1;
        }
        records.extend(page.iter().cloned());
        next = v["nextPageToken"].as_str().unwrap().to_string();
        if v["moreResult"] == json!(false) {
            return (records, empty_with_more);
        }
    }
    panic!("activities never ended");
}

#[tokio::test]
async fn activities_page_through_short_and_empty_pages() {
    let h = spawn(400).await;
    let token = h.token().await;
    let (changes, _) = all_activities(&h, &token, "activityTypeIds=22").await;
    assert_eq!(changes.len(), h.world.score_changes.len());
    let dates: Vec<&str> = changes
        .iter()
        .map(|a| a["activityDate"].as_str().unwrap())
        .collect();
    assert!(dates.windows(2).all(|w| w[0] <= w[1]));
    let one = &changes[0];
    assert!(one["primaryAttributeValue"].as_str().is_some());
    assert!(one["campaignId"].as_i64().is_some());
    assert_eq!(
        one["marketoGUID"],
        json!(one["id"].as_i64().unwrap().to_string())
    );

    let lead = h.world.people[7].map_id;
    let (mine, empty_pages) = all_activities(
        &h,
        &token,
        &format!("activityTypeIds=22,12&leadIds={lead}&batchSize=5"),
    )
    .await;
    let expected = h
        .world
        .score_changes
        .iter()
        .filter(|c| c.map_id == lead)
        .count()
        + 1;
    assert_eq!(mine.len(), expected);
    assert!(
        empty_pages > 0,
        "a sparse filter should meet empty pages with moreResult true"
    );

    let eleven = "1,2,3,6,10,11,12,13,22,23,24";
    let v = h.get(&token, &format!("/rest/v1/activities.json?nextPageToken=GIYDAOBNGEYS2MBWKQYDAORQGA5DAMBOGAYDAKZQGAYDALBQ&activityTypeIds={eleven}")).await;
    assert_eq!(code(&v), "1003");
}

/// A webhook receiver on a free port: its URL, and each call's `X-Api-Key` and body.
async fn hook_receiver() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let tx = tx.clone();
            async move {
                let key = headers
                    .get("x-api-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                tx.send((key, body)).unwrap();
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });
    (hook_url, rx)
}

#[tokio::test]
async fn a_score_change_is_an_activity_and_a_webhook_call() {
    let (hook_url, mut rx) = hook_receiver().await;
    let mut config = MarketoConfig::sandbox_default();
    config.webhook = Some(MarketoWebhook {
        url: hook_url,
        template: r#"{"leadId": {{lead.Id}}, "email": {{lead.Email Address}}, "score": {{lead.Lead Score}}, "campaign": {{campaign.id}}}"#.into(),
        headers: vec![("X-Api-Key".into(), "s3cret-{{lead.Id}}".into())],
    });
    let h = spawn_with(10, config).await;
    let p = h.world.people[2].clone();
    h.clock.advance(SignedDuration::from_secs(60));
    h.marketo
        .apply_score_change(p.map_id, ScoreField::BehaviorScore, 15, Some(1003))
        .unwrap();
    let (key, body) = rx.recv().await.unwrap();
    assert_eq!(key, format!("s3cret-{}", p.map_id));
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body,
        json!({"leadId": p.map_id, "email": p.email, "score": p.lead_score + 15, "campaign": 1003})
    );

    let token = h.token().await;
    let since = "2026-11-02T12:00:30Z";
    let t = h
        .get(
            &token,
            &format!("/rest/v1/activities/pagingtoken.json?sinceDatetime={since}"),
        )
        .await;
    let v = h
        .get(
            &token,
            &format!(
                "/rest/v1/activities.json?activityTypeIds=22&nextPageToken={}",
                t["nextPageToken"].as_str().unwrap()
            ),
        )
        .await;
    let records = v["result"].as_array().unwrap();
    assert_eq!(records.len(), 2, "{v}");
    assert_eq!(records[0]["primaryAttributeValue"], json!("Behavior Score"));
    assert_eq!(records[1]["primaryAttributeValue"], json!("Lead Score"));
    assert_eq!(records[1]["campaignId"], json!(1003));
    let attrs = records[1]["attributes"].as_array().unwrap();
    assert!(attrs.contains(&json!({"name": "Change Value", "value": "+15"})));
    assert!(attrs.contains(&json!({"name": "New Value", "value": p.lead_score + 15})));
    assert_eq!(v["moreResult"], json!(false));

    let admin: Value = h
        .http
        .post(format!("{}/__sandbox/marketo/score_change", h.base))
        .json(&json!({"map_id": p.map_id, "field": "leadScore", "delta": -5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(admin, json!({"ok": true}));
    let state: Value = h
        .http
        .get(format!("{}/__sandbox/marketo/state", h.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lead = state["leads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == json!(p.map_id))
        .unwrap()
        .clone();
    assert_eq!(lead["leadScore"], json!(p.lead_score + 10));
}

#[tokio::test]
async fn syncing_leads_reports_per_record_status_and_feeds_lead_changes() {
    let h = spawn(10).await;
    let token = h.token().await;
    h.faults.add(serde_json::from_value::<FaultRule>(json!(
        {"system": "marketo", "kind": "leads_sync", "times": 1,
         "action": {"type": "fail_record", "index": 1, "code": "1007", "message": "Multiple lead match lookup criteria"}})).unwrap());
    let p = &h.world.people[0];
    let t = h
        .get(
            &token,
            "/rest/v1/activities/pagingtoken.json?sinceDatetime=2026-11-02T11:59:00Z",
        )
        .await;
    let v = h
        .post(
            &token,
            "/rest/v1/leads.json",
            json!({"action": "createOrUpdate", "lookupField": "email", "input": [
                {"email": p.email, "title": "Chief Scoring Officer"},
                {"email": "second@example.com"},
                {"email": "new@example.com", "firstName": "Nia"},
            ]}),
        )
        .await;
    assert_eq!(v["result"][0], json!({"id": p.map_id, "status": "updated"}));
    assert_eq!(v["result"][1]["status"], json!("skipped"));
    assert_eq!(v["result"][1]["reasons"][0]["code"], json!("1007"));
    assert_eq!(v["result"][2]["status"], json!("created"));
    let v = h
        .post(
            &token,
            "/rest/v1/leads.json",
            json!({"action": "createOnly", "input": [{"email": p.email}]}),
        )
        .await;
    assert_eq!(v["result"][0]["reasons"][0]["code"], json!("1005"));

    let v = h
        .get(
            &token,
            &format!(
                "/rest/v1/activities/leadchanges.json?fields=title&nextPageToken={}",
                t["nextPageToken"].as_str().unwrap()
            ),
        )
        .await;
    let changes = v["result"].as_array().unwrap();
    assert_eq!(changes.len(), 2, "{v}");
    let data_value = changes
        .iter()
        .find(|c| c["activityTypeId"] == json!(13))
        .unwrap();
    assert_eq!(
        data_value["fields"][0]["newValue"],
        json!("Chief Scoring Officer")
    );
    assert_eq!(data_value["leadId"], json!(p.map_id));
    assert!(changes.iter().any(|c| c["activityTypeId"] == json!(12)));
}

#[tokio::test]
async fn bulk_activity_extract_runs_its_states_and_serves_csv() {
    let h = spawn(100).await;
    let token = h.token().await;
    let too_long = h.post(&token, "/bulk/v1/activities/export/create.json", json!({"format": "CSV",
        "filter": {"createdAt": {"startAt": "2026-08-01T00:00:00Z", "endAt": "2026-09-15T00:00:00Z"}}})).await;
    assert_eq!(code(&too_long), "1003");
    let created = h.post(&token, "/bulk/v1/activities/export/create.json", json!({"format": "CSV",
        "filter": {"createdAt": {"startAt": "2026-10-05T00:00:00Z", "endAt": "2026-11-02T12:00:00Z"}, "activityTypeIds": [22]}})).await;
    let id = created["result"][0]["exportId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(created["result"][0]["status"], json!("Created"));
    let file_url = format!("{}/bulk/v1/activities/export/{id}/file.json", h.base);
    let early = h
        .http
        .get(&file_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(early.status(), 404);
    let q = h
        .post(
            &token,
            &format!("/bulk/v1/activities/export/{id}/enqueue.json"),
            json!({}),
        )
        .await;
    assert_eq!(q["result"][0]["status"], json!("Queued"));
    let mut states = Vec::new();
    for _ in 0..5 {
        let s = h
            .get(
                &token,
                &format!("/bulk/v1/activities/export/{id}/status.json"),
            )
            .await;
        states.push(s["result"][0]["status"].as_str().unwrap().to_string());
        if states.last().unwrap() == "Completed" {
            assert!(
                s["result"][0]["fileChecksum"]
                    .as_str()
                    .unwrap()
                    .starts_with("sha256:")
            );
            break;
        }
    }
    assert_eq!(states, ["Processing", "Completed"]);
    let csv = h
        .http
        .get(&file_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "marketoGUID,leadId,activityDate,activityTypeId,campaignId,primaryAttributeValueId,primaryAttributeValue,attributes"
    );
    let start: Timestamp = "2026-10-05T00:00:00Z".parse().unwrap();
    let want = h
        .world
        .score_changes
        .iter()
        .filter(|c| c.at >= start)
        .count();
    assert_eq!(lines.count(), want);
    let part = h
        .http
        .get(&file_url)
        .bearer_auth(&token)
        .header("Range", "bytes=0-0")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.text().await.unwrap(), "m");
}

#[tokio::test]
async fn a_lost_response_means_the_request_was_served_but_never_answered() {
    let h = spawn(5).await;
    let token = h.token().await;
    h.faults.add(
        serde_json::from_value(
            json!({"system": "marketo", "kind": "bulk_activities_create",
            "times": 1, "action": {"type": "lose_response"}}),
        )
        .unwrap(),
    );
    let lost = h
        .http
        .post(format!("{}/bulk/v1/activities/export/create.json", h.base))
        .bearer_auth(&token)
        .json(&json!({"format": "CSV", "filter": {"createdAt":
            {"startAt": "2026-10-05T00:00:00Z", "endAt": "2026-11-02T12:00:00Z"}}}))
        .send()
        .await;
    assert!(lost.is_err() || lost.unwrap().bytes().await.is_err());
    // The job exists all the same: a client that creates again without looking makes two.
    let jobs = h.get(&token, "/bulk/v1/activities/export.json").await;
    assert_eq!(jobs["result"].as_array().map(Vec::len), Some(1), "{jobs}");
}

#[tokio::test]
async fn transport_faults_and_limits_answer_as_told() {
    let h = spawn(5).await;
    let token = h.token().await;
    let rules: Vec<FaultRule> = serde_json::from_value(json!([
        {"system": "marketo", "kind": "activity_types", "times": 1, "action": {"type": "drop"}},
        {"system": "marketo", "kind": "leads_describe", "times": 1, "action": {"type": "status", "status": 502}},
        {"system": "marketo", "kind": "usage", "times": 1, "action": {"type": "malformed_json"}},
    ]))
    .unwrap();
    for rule in rules {
        h.faults.add(rule);
    }
    let dropped = h
        .http
        .get(format!("{}/rest/v1/activities/types.json", h.base))
        .bearer_auth(&token)
        .send()
        .await;
    assert!(dropped.is_err() || dropped.unwrap().bytes().await.is_err());
    let bad_gateway = h
        .http
        .get(format!("{}/rest/v1/leads/describe.json", h.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_gateway.status(), 502);
    let garbled = h
        .http
        .get(format!("{}/rest/v1/stats/usage.json", h.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(garbled.json::<Value>().await.is_err());
    let long = format!(
        "{}/rest/v1/leads.json?filterType=id&filterValues={}",
        h.base,
        "1,".repeat(5000)
    );
    assert_eq!(
        h.http
            .get(long)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        414
    );
    let logged: Vec<(String, u16)> = h
        .log
        .snapshot()
        .into_iter()
        .map(|r| (r.kind, r.status))
        .collect();
    assert!(
        logged.contains(&("leads_describe".to_string(), 502)),
        "{logged:?}"
    );
    assert!(
        logged.contains(&("activity_types".to_string(), 0)),
        "{logged:?}"
    );
}

#[tokio::test]
async fn bulk_lead_exports_filter_by_updated_at_and_the_queue_holds_ten() {
    let h = spawn(60).await;
    let token = h.token().await;
    let window = json!({"startAt": "2026-10-03T12:00:00Z", "endAt": "2026-11-02T12:00:00Z"});
    let mut ids = Vec::new();
    for _ in 0..11 {
        let v = h
            .post(
                &token,
                "/bulk/v1/leads/export/create.json",
                json!({"format": "CSV",
                "fields": ["id", "leadScore", "updatedAt"], "filter": {"updatedAt": window}}),
            )
            .await;
        ids.push(v["result"][0]["exportId"].as_str().unwrap().to_string());
    }
    for (i, id) in ids.iter().enumerate() {
        let v = h
            .post(
                &token,
                &format!("/bulk/v1/leads/export/{id}/enqueue.json"),
                json!({}),
            )
            .await;
        if i < 10 {
            assert_eq!(v["result"][0]["status"], json!("Queued"), "job {i}: {v}");
        } else {
            assert_eq!(code(&v), "1029");
            assert_eq!(
                v["errors"][0]["message"],
                json!("Too many jobs (10) in queue")
            );
        }
    }
    let listed = h
        .get(&token, "/bulk/v1/leads/export.json?status=Processing")
        .await;
    assert_eq!(listed["result"].as_array().unwrap().len(), 2, "{listed}");
    let mut done = None;
    for _ in 0..3 {
        let s = h
            .get(
                &token,
                &format!("/bulk/v1/leads/export/{}/status.json", ids[0]),
            )
            .await;
        if s["result"][0]["status"] == json!("Completed") {
            done = Some(s["result"][0].clone());
            break;
        }
    }
    let done = done.expect("the first job completes");
    let csv = h
        .http
        .get(format!(
            "{}/bulk/v1/leads/export/{}/file.json",
            h.base, ids[0]
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let start: Timestamp = "2026-10-03T12:00:00Z".parse().unwrap();
    let want = h
        .world
        .people
        .iter()
        .filter(|p| p.modified_at >= start)
        .count();
    assert_eq!(csv.lines().count() - 1, want);
    assert_eq!(done["numberOfRecords"], json!(want));
}

/// A sandbox whose bulk jobs are timed by the clock, a minute a state, as Marketo's are.
async fn spawn_timed(people: usize, export_daily_bytes: u64) -> Harness {
    let mut config = MarketoConfig::sandbox_default();
    config.export_status_interval_secs = Some(60);
    config.export_daily_bytes = export_daily_bytes;
    spawn_with(people, config).await
}

impl Harness {
    /// Creates and enqueues an activity export of the 30 days before `now()`.
    async fn queued_export(&self, token: &str) -> String {
        let created = self
            .post(
                token,
                "/bulk/v1/activities/export/create.json",
                json!({"format": "CSV", "filter": {"createdAt":
                    {"startAt": "2026-10-03T12:00:00Z", "endAt": "2026-11-02T12:00:00Z"}}}),
            )
            .await;
        let id = created["result"][0]["exportId"]
            .as_str()
            .unwrap()
            .to_string();
        let queued = self
            .post(
                token,
                &format!("/bulk/v1/activities/export/{id}/enqueue.json"),
                json!({}),
            )
            .await;
        assert_eq!(queued["result"][0]["status"], json!("Queued"), "{queued}");
        id
    }

    async fn export_status(&self, token: &str, id: &str) -> Value {
        let v = self
            .get(
                token,
                &format!("/bulk/v1/activities/export/{id}/status.json"),
            )
            .await;
        v["result"][0].clone()
    }
}

#[tokio::test]
async fn timed_bulk_jobs_move_once_a_minute_two_at_a_time_polled_or_not() {
    let h = spawn_timed(60, bulk::DAILY_EXPORT_BYTES).await;
    let token = h.token().await;
    let ids = [
        h.queued_export(&token).await,
        h.queued_export(&token).await,
        h.queued_export(&token).await,
    ];
    let mut states = Vec::new();
    for at in [0, 59, 60, 119, 120, 180] {
        h.clock.set(now() + SignedDuration::from_secs(at));
        let mut row = Vec::new();
        for id in &ids {
            // Polling again at the same instant changes nothing.
            let first = h.export_status(&token, id).await["status"].clone();
            assert_eq!(h.export_status(&token, id).await["status"], first);
            row.push(first.as_str().unwrap().to_string());
        }
        states.push((at, row));
    }
    let row = |s: [&str; 3]| s.map(String::from).to_vec();
    assert_eq!(
        states,
        [
            (0, row(["Queued", "Queued", "Queued"])),
            (59, row(["Queued", "Queued", "Queued"])),
            (60, row(["Processing", "Processing", "Queued"])),
            (119, row(["Processing", "Processing", "Queued"])),
            (120, row(["Completed", "Completed", "Processing"])),
            (180, row(["Completed", "Completed", "Completed"])),
        ]
    );
    let third = h.export_status(&token, &ids[2]).await;
    assert_eq!(third["startedAt"], json!("2026-11-02T12:02:00Z"), "{third}");
    assert_eq!(
        third["finishedAt"],
        json!("2026-11-02T12:03:00Z"),
        "{third}"
    );

    // Unpolled, a job runs all the same: ten minutes on, it is done at the first look.
    let id = h.queued_export(&token).await;
    h.clock.advance(SignedDuration::from_mins(10));
    let done = h.export_status(&token, &id).await;
    assert_eq!(done["status"], json!("Completed"), "{done}");
    assert_eq!(done["queuedAt"], json!("2026-11-02T12:03:00Z"));
    assert_eq!(done["finishedAt"], json!("2026-11-02T12:05:00Z"));
}

#[tokio::test]
async fn a_spent_export_allowance_refuses_create_and_enqueue_until_midnight_central() {
    let h = spawn_timed(60, 1).await;
    let token = h.token().await;
    let waiting = h
        .post(
            &token,
            "/bulk/v1/activities/export/create.json",
            json!({"format": "CSV", "filter": {"createdAt":
                {"startAt": "2026-10-03T12:00:00Z", "endAt": "2026-11-02T12:00:00Z"}}}),
        )
        .await["result"][0]["exportId"]
        .as_str()
        .unwrap()
        .to_string();
    let id = h.queued_export(&token).await;
    h.clock.advance(SignedDuration::from_mins(2));
    assert_eq!(
        h.export_status(&token, &id).await["status"],
        json!("Completed")
    );
    let body = json!({"format": "CSV", "filter": {"createdAt":
        {"startAt": "2026-10-03T12:00:00Z", "endAt": "2026-11-02T12:00:00Z"}}});
    let refused = h
        .post(
            &token,
            "/bulk/v1/activities/export/create.json",
            body.clone(),
        )
        .await;
    assert_eq!(code(&refused), "1029");
    assert_eq!(
        refused["errors"][0]["message"],
        json!("Export daily quota 1MB exceeded")
    );
    let refused = h
        .post(
            &token,
            &format!("/bulk/v1/activities/export/{waiting}/enqueue.json"),
            json!({}),
        )
        .await;
    assert_eq!(code(&refused), "1029", "{refused}");
    // 12:02 UTC is 06:02 in Chicago: the allowance comes back at 06:00 UTC the next day.
    h.clock.set("2026-11-03T05:59:59Z".parse().unwrap());
    let token = h.token().await;
    let still = h
        .post(
            &token,
            "/bulk/v1/activities/export/create.json",
            body.clone(),
        )
        .await;
    assert_eq!(code(&still), "1029");
    h.clock.set("2026-11-03T06:00:00Z".parse().unwrap());
    let again = h
        .post(&token, "/bulk/v1/activities/export/create.json", body)
        .await;
    assert_eq!(again["result"][0]["status"], json!("Created"), "{again}");
}

#[tokio::test]
async fn a_job_told_to_fail_is_failed_with_its_message_and_has_no_file() {
    let h = spawn_timed(60, bulk::DAILY_EXPORT_BYTES).await;
    let armed = h
        .http
        .post(format!("{}/__sandbox/marketo/export_failures", h.base))
        .json(&json!({"skip": 1, "times": 1, "message": "Internal error"}))
        .send()
        .await
        .unwrap();
    assert_eq!(armed.status(), 200);
    let token = h.token().await;
    let ids = [
        h.queued_export(&token).await,
        h.queued_export(&token).await,
        h.queued_export(&token).await,
    ];
    h.clock.advance(SignedDuration::from_mins(5));
    let states: Vec<Value> =
        futures::future::join_all(ids.iter().map(|id| h.export_status(&token, id))).await;
    let status: Vec<&str> = states
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(status, ["Completed", "Failed", "Completed"]);
    assert_eq!(states[1]["errorMsg"], json!("Internal error"));
    assert!(states[1].get("fileChecksum").is_none());
    let file = h
        .http
        .get(format!(
            "{}/bulk/v1/activities/export/{}/file.json",
            h.base, ids[1]
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(file.status(), 404);
    let failed = h
        .get(&token, "/bulk/v1/activities/export.json?status=Failed")
        .await;
    assert_eq!(failed["result"].as_array().unwrap().len(), 1, "{failed}");
    // Cancelled answers to either spelling; batchSize caps the list.
    h.post(
        &token,
        &format!(
            "/bulk/v1/activities/export/{}/cancel.json",
            h.queued_export(&token).await
        ),
        json!({}),
    )
    .await;
    let cancelled = h
        .get(&token, "/bulk/v1/activities/export.json?status=Canceled")
        .await;
    assert_eq!(
        cancelled["result"].as_array().unwrap().len(),
        1,
        "{cancelled}"
    );
    let two = h
        .get(&token, "/bulk/v1/activities/export.json?batchSize=2")
        .await;
    assert_eq!(two["result"].as_array().unwrap().len(), 2, "{two}");
}

/// Attribute values of an activity record by name.
fn attributes_of(record: &Value) -> serde_json::Map<String, Value> {
    record["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap().to_string(), a["value"].clone()))
        .collect()
}

/// The attribute names the type catalogue declares for `type_id`.
async fn declared_attributes(h: &Harness, token: &str, type_id: i64) -> Vec<String> {
    let types = h.get(token, "/rest/v1/activities/types.json").await;
    let t = types["result"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == json!(type_id))
        .unwrap_or_else(|| panic!("type {type_id} is not in the catalogue"))
        .clone();
    t["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect()
}

fn program_of(world: &World, id: i64) -> &crate::sandbox::world::Program {
    world.programs.iter().find(|p| p.id == id).unwrap()
}

#[tokio::test]
async fn form_fills_and_program_changes_page_with_score_changes_only_when_asked_for() {
    let h = spawn(400).await;
    let token = h.token().await;
    let world = &h.world;
    let fills: Vec<_> = (world.engagements.iter())
        .filter(|e| matches!(e.kind, EngagementKind::FormFill { .. }))
        .collect();
    let moves: Vec<_> = (world.engagements.iter())
        .filter(|e| matches!(e.kind, EngagementKind::ProgramStatus { .. }))
        .collect();
    assert!(
        fills.len() > 40 && moves.len() > 20,
        "{} {}",
        fills.len(),
        moves.len()
    );

    let (scores, _) = all_activities(&h, &token, "activityTypeIds=22").await;
    assert!(scores.iter().all(|a| a["activityTypeId"] == json!(22)));
    let (all, _) = all_activities(&h, &token, "activityTypeIds=2,104,22").await;
    let count = |t: i64| {
        all.iter()
            .filter(|a| a["activityTypeId"] == json!(t))
            .count()
    };
    assert_eq!(count(2), fills.len());
    assert_eq!(count(104), moves.len());
    assert_eq!(count(22), world.score_changes.len());
    let keys: Vec<(String, i64)> = all
        .iter()
        .map(|a| {
            let date = a["activityDate"].as_str().unwrap().to_string();
            (date, a["id"].as_i64().unwrap())
        })
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "ordered by date, then id"
    );
    let by_id = |id: i64| all.iter().find(|a| a["id"] == json!(id)).unwrap();

    let form_attributes = declared_attributes(&h, &token, 2).await;
    for e in &fills {
        let EngagementKind::FormFill { form_id } = e.kind else {
            unreachable!()
        };
        let form = world.forms.iter().find(|f| f.id == form_id).unwrap();
        let person = world.people.iter().find(|p| p.map_id == e.map_id).unwrap();
        let a = by_id(e.activity_id);
        assert_eq!(a["leadId"], json!(e.map_id));
        assert_eq!(a["primaryAttributeValueId"], json!(form_id));
        assert_eq!(a["primaryAttributeValue"], json!(form.name));
        assert_eq!(a["campaignId"], json!(e.campaign_id));
        let attrs = attributes_of(a);
        assert!(attrs.keys().all(|k| form_attributes.contains(k)), "{a}");
        assert_eq!(attrs["Webpage ID"], json!(form.webpage_id));
        let fields = attrs["Form Fields"].as_str().unwrap();
        assert!(
            fields.contains(&format!(
                "s:5:\"Email\";s:{}:\"{}\";",
                person.email.len(),
                person.email
            )),
            "{fields}"
        );
        assert!(
            attrs["Client IP Address"]
                .as_str()
                .unwrap()
                .split('.')
                .count()
                == 4
        );
    }

    let program_attributes = declared_attributes(&h, &token, 104).await;
    let mut members: std::collections::HashMap<(i64, i64), i64> = Default::default();
    for e in &moves {
        let EngagementKind::ProgramStatus {
            program_id,
            old_status_id,
            new_status_id,
            acquired_by,
        } = e.kind
        else {
            unreachable!()
        };
        let program = program_of(world, program_id);
        let status = |id: i64| program.statuses.iter().find(|s| s.id == id).unwrap();
        let a = by_id(e.activity_id);
        assert_eq!(a["primaryAttributeValueId"], json!(program_id));
        assert_eq!(a["primaryAttributeValue"], json!(program.name));
        assert_eq!(a["campaignId"], json!(e.campaign_id));
        let attrs = attributes_of(a);
        assert!(attrs.keys().all(|k| program_attributes.contains(k)), "{a}");
        assert_eq!(attrs["Old Status ID"], json!(old_status_id));
        assert_eq!(attrs["New Status ID"], json!(new_status_id));
        assert_eq!(attrs["Old Status"], json!(status(old_status_id).name));
        assert_eq!(attrs["New Status"], json!(status(new_status_id).name));
        assert_eq!(attrs["Acquired By"], json!(acquired_by));
        let reached = status(new_status_id).success && !status(old_status_id).success;
        assert_eq!(attrs["Success"], json!(reached));
        let campaign = world
            .campaigns
            .iter()
            .find(|c| c.id == e.campaign_id)
            .unwrap();
        assert_eq!(
            attrs["Reason"],
            json!(format!(
                "Changed by Smart Campaign {} action Change Program Status",
                campaign.name
            ))
        );
        let member = attrs["Program Member ID"].as_i64().unwrap();
        let first = *members.entry((program_id, e.map_id)).or_insert(member);
        assert_eq!(member, first, "one member id per lead and program");
    }
    let ids: std::collections::HashSet<i64> = members.values().copied().collect();
    assert_eq!(ids.len(), members.len(), "member ids are unique");
}

#[tokio::test]
async fn asset_ids_keep_the_activities_of_those_assets_of_one_type() {
    let h = spawn(400).await;
    let token = h.token().await;
    let world = &h.world;
    let of = |keep: &dyn Fn(&EngagementKind) -> bool| {
        world.engagements.iter().filter(|e| keep(&e.kind)).count()
    };

    let (demos, _) = all_activities(&h, &token, "activityTypeIds=2&assetIds=1001").await;
    assert_eq!(
        demos.len(),
        of(&|k| *k == EngagementKind::FormFill { form_id: 1001 })
    );
    assert!(!demos.is_empty());
    assert!(
        demos
            .iter()
            .all(|a| a["primaryAttributeValue"] == json!("Demo Request"))
    );

    let (webinars, _) = all_activities(
        &h,
        &token,
        "activityTypeIds=104&assetIds=2002&assetIds=2003",
    )
    .await;
    let want = of(
        &|k| matches!(k, EngagementKind::ProgramStatus { program_id, .. } if *program_id != 2001),
    );
    assert_eq!(webinars.len(), want);
    assert!(!webinars.is_empty());

    // The lead field id of leadScore: a Change Score's primary asset.
    let lead_score = leads::field("leadScore").unwrap().id;
    let (scores, _) = all_activities(
        &h,
        &token,
        &format!("activityTypeIds=22&assetIds={lead_score}"),
    )
    .await;
    let want = (world.score_changes.iter())
        .filter(|c| c.field == ScoreField::LeadScore)
        .count();
    assert_eq!(scores.len(), want);

    let zero = "GIYDAOBNGEYS2MBWKQYDAORQGA5DAMBOGAYDAKZQGAYDALBQ";
    for query in [
        "activityTypeIds=2,104&assetIds=1001",
        "activityTypeIds=2&activityTypeIds=22&assetIds=1001",
        "activityTypeIds=2&assetIds=demo",
    ] {
        let v = h
            .get(
                &token,
                &format!("/rest/v1/activities.json?nextPageToken={zero}&{query}"),
            )
            .await;
        assert_eq!(v["success"], json!(false), "{query}: {v}");
        assert_eq!(code(&v), "1003", "{query}");
    }
}

/// Runs an activity export of `filter` to its end; the CSV's rows by column name.
async fn exported_activities(
    h: &Harness,
    token: &str,
    filter: Value,
) -> Vec<std::collections::HashMap<String, String>> {
    let created = h
        .post(
            token,
            "/bulk/v1/activities/export/create.json",
            json!({"format": "CSV", "filter": filter}),
        )
        .await;
    assert_eq!(created["success"], json!(true), "{created}");
    let id = created["result"][0]["exportId"]
        .as_str()
        .unwrap()
        .to_string();
    h.post(
        token,
        &format!("/bulk/v1/activities/export/{id}/enqueue.json"),
        json!({}),
    )
    .await;
    for _ in 0..5 {
        let s = h
            .get(
                token,
                &format!("/bulk/v1/activities/export/{id}/status.json"),
            )
            .await;
        if s["result"][0]["status"] == json!("Completed") {
            break;
        }
    }
    let text = h
        .http
        .get(format!(
            "{}/bulk/v1/activities/export/{id}/file.json",
            h.base
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            header
                .iter()
                .cloned()
                .zip(r.iter().map(String::from))
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn bulk_activity_exports_carry_form_fills_and_program_changes_as_rest_pages_do() {
    let h = spawn(1500).await;
    let token = h.token().await;
    let window = json!({"startAt": "2026-10-02T12:00:00Z", "endAt": "2026-11-02T12:00:00Z"});
    let start: Timestamp = "2026-10-02T12:00:00Z".parse().unwrap();
    let in_window = |keep: &dyn Fn(&EngagementKind) -> bool| {
        (h.world.engagements.iter())
            .filter(|e| e.at >= start && keep(&e.kind))
            .count()
    };

    let rows = exported_activities(
        &h,
        &token,
        json!({"createdAt": window, "activityTypeIds": [2, 104]}),
    )
    .await;
    assert_eq!(rows.len(), in_window(&|_| true));
    assert!(rows.iter().any(|r| r["activityTypeId"] == "2"));
    assert!(rows.iter().any(|r| r["activityTypeId"] == "104"));
    let (rest, _) = all_activities(&h, &token, "activityTypeIds=2,104").await;
    for row in &rows {
        let a = rest
            .iter()
            .find(|a| a["marketoGUID"] == json!(row["marketoGUID"]))
            .unwrap_or_else(|| panic!("{row:?} is not on the REST pages"));
        assert_eq!(row["leadId"], a["leadId"].to_string());
        assert_eq!(row["activityTypeId"], a["activityTypeId"].to_string());
        assert_eq!(row["campaignId"], a["campaignId"].to_string());
        assert_eq!(
            row["primaryAttributeValueId"],
            a["primaryAttributeValueId"].to_string()
        );
        assert_eq!(
            row["primaryAttributeValue"],
            a["primaryAttributeValue"].as_str().unwrap()
        );
        let attributes: Value = serde_json::from_str(&row["attributes"]).unwrap();
        assert_eq!(attributes, Value::Object(attributes_of(a)), "{row:?}");
    }

    let summit = exported_activities(
        &h,
        &token,
        json!({"createdAt": window, "activityTypeIds": [104], "primaryAttributeValueIds": [2001]}),
    )
    .await;
    let want = in_window(&|k| {
        matches!(
            k,
            EngagementKind::ProgramStatus {
                program_id: 2001,
                ..
            }
        )
    });
    assert_eq!(summit.len(), want);
    assert!(want > 0);
    assert!(
        summit
            .iter()
            .all(|r| r["primaryAttributeValue"] == "2026 Customer Summit")
    );

    let demos = exported_activities(
        &h,
        &token,
        json!({"createdAt": window, "activityTypeIds": [2], "primaryAttributeValues": ["Demo Request"]}),
    )
    .await;
    assert_eq!(
        demos.len(),
        in_window(&|k| *k == EngagementKind::FormFill { form_id: 1001 })
    );
    assert!(demos.iter().all(|r| r["primaryAttributeValueId"] == "1001"));

    let scores = exported_activities(
        &h,
        &token,
        json!({"createdAt": window, "activityTypeIds": [22, 13], "primaryAttributeValues": ["Lead Score"]}),
    )
    .await;
    assert!(!scores.is_empty());
    assert!(
        scores
            .iter()
            .all(|r| r["primaryAttributeValue"] == "Lead Score")
    );

    let many: Vec<i64> = (1..=51).collect();
    for filter in [
        json!({"createdAt": window, "activityTypeIds": [2, 104], "primaryAttributeValueIds": [1001]}),
        json!({"createdAt": window, "activityTypeIds": [2, 22], "primaryAttributeValues": ["Demo Request"]}),
        json!({"createdAt": window, "primaryAttributeValueIds": [1001]}),
        json!({"createdAt": window, "activityTypeIds": [2], "primaryAttributeValueIds": [1001], "primaryAttributeValues": ["Demo Request"]}),
        json!({"createdAt": window, "activityTypeIds": [2], "primaryAttributeValueIds": many}),
        json!({"createdAt": window, "activityTypeIds": [1], "primaryAttributeValueIds": [71]}),
    ] {
        let v = h
            .post(
                &token,
                "/bulk/v1/activities/export/create.json",
                json!({"format": "CSV", "filter": filter}),
            )
            .await;
        assert_eq!(code(&v), "1003", "{filter}: {v}");
    }
}

/// The next webhook call the receiver got, or a failure after 10 s without one.
async fn next_call(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) -> (String, String) {
    tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .expect("no webhook call within 10 s")
        .expect("the receiver is running")
}

#[tokio::test]
async fn triggered_form_fills_and_status_changes_are_on_the_next_page_and_call_the_webhook() {
    let (hook_url, mut rx) = hook_receiver().await;
    let mut config = MarketoConfig::sandbox_default();
    config.webhook = Some(MarketoWebhook {
        url: hook_url,
        template: r#"{"leadId": {{lead.Id}}, "email": {{lead.Email Address}}, "campaign": {{campaign.id}}, "campaignName": {{campaign.name}}}"#.into(),
        headers: vec![("X-Api-Key".into(), "s3cret-{{lead.Id}}".into())],
    });
    let h = spawn_with(50, config).await;
    let token = h.token().await;
    // A person who is not a member of the summit in the world's history.
    let p = (h.world.people.iter())
        .find(|p| {
            !h.world.engagements.iter().any(|e| {
                e.map_id == p.map_id
                    && matches!(
                        e.kind,
                        EngagementKind::ProgramStatus {
                            program_id: 2001,
                            ..
                        }
                    )
            })
        })
        .unwrap()
        .clone();
    let t = h
        .get(
            &token,
            "/rest/v1/activities/pagingtoken.json?sinceDatetime=2026-11-02T12:00:00Z",
        )
        .await;
    let since = t["nextPageToken"].as_str().unwrap().to_string();
    let page = |types: &'static str| {
        let since = since.clone();
        let h = &h;
        let token = token.clone();
        async move {
            h.get(
                &token,
                &format!("/rest/v1/activities.json?activityTypeIds={types}&nextPageToken={since}"),
            )
            .await
        }
    };
    let v = page("2,104").await;
    assert_eq!(v["result"], json!([]), "{v}");

    h.clock.advance(SignedDuration::from_secs(60));
    let fill = h.marketo.fill_out_form(p.map_id, 1001, Some(1001)).unwrap();
    let (key, body) = next_call(&mut rx).await;
    assert_eq!(key, format!("s3cret-{}", p.map_id));
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body,
        json!({"leadId": p.map_id, "email": p.email, "campaign": 1001, "campaignName": "Content 2025"})
    );
    let v = page("2").await;
    let records = v["result"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{v}");
    let a = &records[0];
    assert_eq!(a["id"], json!(fill));
    assert_eq!(a["leadId"], json!(p.map_id));
    assert_eq!(a["activityDate"], json!("2026-11-02T12:01:00Z"));
    assert_eq!(a["primaryAttributeValueId"], json!(1001));
    assert_eq!(a["primaryAttributeValue"], json!("Demo Request"));
    assert_eq!(a["campaignId"], json!(1001));
    let fields = attributes_of(a)["Form Fields"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(fields.starts_with("a:5:{s:5:\"Email\";"), "{fields}");
    assert!(
        fields.contains(&p.email) && fields.contains(&p.title),
        "{fields}"
    );

    h.clock.advance(SignedDuration::from_secs(60));
    let registered = (h.marketo)
        .change_program_status(p.map_id, 2001, "Registered", Some(1002))
        .unwrap();
    let attended = (h.marketo)
        .change_program_status(p.map_id, 2001, "attended", None)
        .unwrap();
    assert!(fill < registered && registered < attended);
    for campaign in [json!(1002), Value::Null] {
        let (_, body) = next_call(&mut rx).await;
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["leadId"], json!(p.map_id));
        assert_eq!(body["campaign"], campaign);
    }
    let v = page("104").await;
    let records = v["result"].as_array().unwrap();
    assert_eq!(records.len(), 2, "{v}");
    let (first, second) = (attributes_of(&records[0]), attributes_of(&records[1]));
    assert_eq!(records[0]["id"], json!(registered));
    assert_eq!(records[0]["campaignId"], json!(1002));
    assert_eq!(first["Old Status"], json!("Not in Program"));
    assert_eq!(first["Old Status ID"], json!(1));
    assert_eq!(first["New Status"], json!("Registered"));
    assert_eq!(first["New Status ID"], json!(3));
    assert_eq!(first["Success"], json!(false));
    assert_eq!(
        first["Reason"],
        json!("Changed by Smart Campaign Trade Show 2026 action Change Program Status")
    );
    assert!(records[1].get("campaignId").is_none());
    assert_eq!(second["Old Status"], json!("Registered"));
    assert_eq!(second["New Status"], json!("Attended"));
    assert_eq!(second["New Status ID"], json!(6));
    assert_eq!(second["Success"], json!(true));
    assert!(second.get("Reason").is_none());
    assert_eq!(first["Program Member ID"], second["Program Member ID"]);
    let v = page("2,104,22").await;
    assert_eq!(v["result"].as_array().unwrap().len(), 3, "{v}");

    let unknown = [
        h.marketo.fill_out_form(42, 1001, None).unwrap_err(),
        h.marketo.fill_out_form(p.map_id, 999, None).unwrap_err(),
        h.marketo
            .change_program_status(p.map_id, 999, "Attended", None)
            .unwrap_err(),
        h.marketo
            .change_program_status(p.map_id, 2001, "Attend", None)
            .unwrap_err(),
    ];
    assert!(
        unknown[0].contains("no Marketo lead with id 42"),
        "{}",
        unknown[0]
    );
    assert!(
        unknown[1].contains("no Marketo form with id 999"),
        "{}",
        unknown[1]
    );
    assert!(unknown[1].contains("1001 (Demo Request)"), "{}", unknown[1]);
    assert!(
        unknown[2].contains("no Marketo program with id 999"),
        "{}",
        unknown[2]
    );
    assert!(
        unknown[3].contains("no status 'Attend'") && unknown[3].contains("No Show"),
        "{}",
        unknown[3]
    );

    let admin = |path: &'static str, body: Value| {
        let h = &h;
        async move {
            let r = h
                .http
                .post(format!("{}/__sandbox/marketo/{path}", h.base))
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, v) = admin("form_fill", json!({"map_id": p.map_id, "form_id": 1003})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"], json!(true));
    assert!(v["activity_id"].as_i64().unwrap() > attended);
    let (status, v) = admin(
        "program_status",
        json!({"map_id": p.map_id, "program_id": 2002, "status": "Registered", "campaign_id": 1000}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = admin(
        "program_status",
        json!({"map_id": p.map_id, "program_id": 2002, "status": "Maybe"}),
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        v["error"].as_str().unwrap().contains("no status 'Maybe'"),
        "{v}"
    );
    let (status, _) = admin("form_fill", json!({"map_id": p.map_id})).await;
    assert_eq!(status, 400);
    for _ in 0..2 {
        next_call(&mut rx).await;
    }
    let v = page("2,104").await;
    assert_eq!(v["result"].as_array().unwrap().len(), 5, "{v}");
}

#[test]
fn activities_stay_as_small_as_a_change_score() {
    // Ten million are held for the backfill benchmark: the engagement variants must not
    // make every activity bigger than Change Score made it (48 bytes of detail).
    assert!(
        std::mem::size_of::<Detail>() <= 48,
        "{}",
        std::mem::size_of::<Detail>()
    );
}
