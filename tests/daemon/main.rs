//! The daemon's HTTP port (issue 13, points 3 and 6) against a server bound to 127.0.0.1:0:
//! webhooks (auth, limits, the Ack, the org id check, the inbound queue and the pollers'
//! bells), health, readiness and metrics, and the sandbox's own webhook calls and outbound
//! messages reaching it. No sleeps: a queue is awaited with a timeout that only bounds a
//! failure.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use jiff::Timestamp;
use mqlsync::config;
use mqlsync::engine::model::ScorePart;
use mqlsync::mapping;
use mqlsync::sandbox::clock::SandboxClock;
use mqlsync::sandbox::marketo::MarketoWebhook;
use mqlsync::sandbox::salesforce::OutboundMessaging;
use mqlsync::sandbox::server::{Sandbox, SandboxOptions};
use mqlsync::sandbox::world::ScoreField;
use mqlsync::workers::http::{self, HttpState, Readiness, WebhookSettings};
use mqlsync::workers::metrics::{Endpoint, WebhookResult};
use mqlsync::workers::webhook::{self, ACK, MARKETO_TEMPLATE};
use mqlsync::workers::{CrmRecords, Inbound, MarketoScore};
use reqwest::StatusCode;
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc, oneshot};

const SECRET: &str = "test-shared-secret-0123456789abcdef";
const ORG: &str = "00D000000000001AAA";
/// Bounds a wait that should end at once; reaching it is a failure, not a pace.
const FAILURE_BOUND: Duration = Duration::from_secs(20);

struct Daemon {
    base: String,
    state: HttpState,
    inbound: mpsc::Receiver<Inbound>,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

thread_local! {
    /// Where this thread's log lines go; `None`: nowhere.
    static CAPTURE: std::cell::RefCell<Option<Arc<Mutex<Vec<u8>>>>> = const { std::cell::RefCell::new(None) };
}

/// Writes a log line into its thread's [`CAPTURE`].
struct ThreadCapture;

impl std::io::Write for ThreadCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(captured) = c.borrow().as_ref() {
                captured.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One global subscriber for the whole binary, installed before any daemon logs: a scoped
/// subscriber per test races with the callsite caches of the tests running beside it.
fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("mqlsync=debug"))
            .with_writer(|| ThreadCapture)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
}

/// A daemon port with the secret set, a 4 KiB body limit and room for 16 inbound calls.
async fn spawn_daemon() -> Daemon {
    spawn_daemon_with(Some(SECRET), 16).await
}

/// The port as `mqlsync run` will build it: from a config file, the environment's secret and
/// the default mapping.
async fn spawn_daemon_with(secret: Option<&str>, capacity: usize) -> Daemon {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mqlsync.toml");
    std::fs::write(
        &file,
        "[daemon]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 4096\n",
    )
    .unwrap();
    let env: Vec<(String, String)> = secret
        .map(|s| ("MQLSYNC_DAEMON_WEBHOOK_SECRET".to_string(), s.to_string()))
        .into_iter()
        .collect();
    let cfg = config::load(Some(&file), &env).unwrap();
    let loaded = mapping::load(None).unwrap();
    let settings = WebhookSettings::new(&cfg.daemon, &loaded.mapping);
    let (state, inbound) =
        HttpState::new(settings, Readiness::new(Duration::from_secs(120)), capacity);
    let listener = http::bind(cfg.daemon.listen).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, state.clone(), async move {
        let _ = stopped.await;
    }));
    Daemon {
        base,
        state,
        inbound,
        http: reqwest::Client::new(),
        stop: Some(stop),
        server,
        _dir: dir,
    }
}

impl Daemon {
    async fn post(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        secret: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.http.post(format!("{}{path}", self.base)).body(body);
        if let Some(s) = secret {
            request = request.header("X-Mqlsync-Secret", s);
        }
        request.send().await.unwrap()
    }

    async fn marketo(&self, body: &str) -> reqwest::Response {
        self.post("/webhooks/marketo", body.to_string(), Some(SECRET))
            .await
    }

    async fn salesforce(&self, body: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/webhooks/salesforce", self.base))
            .header("content-type", "text/xml; charset=utf-8")
            .header("soapaction", "\"\"")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn next_inbound(&mut self) -> Inbound {
        tokio::time::timeout(FAILURE_BOUND, self.inbound.recv())
            .await
            .expect("an inbound call")
            .expect("the queue is open")
    }

    fn queued(&mut self) -> Option<Inbound> {
        self.inbound.try_recv().ok()
    }

    fn count(&self, endpoint: Endpoint, result: WebhookResult) -> u64 {
        self.state.metrics().webhook_count(endpoint, result)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.server.await.unwrap().unwrap();
    }
}

/// Whether the bell was rung since it was last heard (a ring with nobody waiting is kept).
/// The sandbox's frozen clock as the daemon's: the test moves it, and the daemon's waits for
/// an instant end when it gets there.
struct TestClock {
    sandbox: SandboxClock,
    now: tokio::sync::watch::Sender<Timestamp>,
}

impl TestClock {
    fn new(sandbox: SandboxClock) -> Self {
        let now = tokio::sync::watch::Sender::new(sandbox.now());
        TestClock { sandbox, now }
    }

    fn set(&self, at: Timestamp) {
        self.sandbox.set(at);
        self.now.send_replace(at);
    }
}

impl mqlsync::workers::daemon::Clock for TestClock {
    fn now(&self) -> Timestamp {
        self.sandbox.now()
    }

    fn wait_until(&self, at: Timestamp) -> futures::future::BoxFuture<'static, ()> {
        let mut now = self.now.subscribe();
        Box::pin(async move {
            let _ = now.wait_for(|t| *t >= at).await;
        })
    }
}

/// Whether a score change of +500 at `at` makes `person` an MQL, as the engine decides it on a
/// copy of `state`: linked, below their threshold at `below_at`, and no exclusion applies.
fn a_push_qualifies(
    state: &mqlsync::engine::EngineState,
    policy: &mqlsync::engine::Policy,
    person: &mqlsync::sandbox::world::Person,
    below_at: Timestamp,
    at: Timestamp,
) -> bool {
    use mqlsync::engine::model::ScoreChange;
    use mqlsync::engine::{Action, Context, Event, Reason, Visibility, explain, reconcile};
    let Some(id) = person.crm_id.as_deref() else {
        return false;
    };
    if !matches!(
        explain(state, policy, id, below_at),
        Reason::BelowThreshold { .. }
    ) {
        return false;
    }
    let ctx = Context {
        policy,
        now: at,
        backfill: false,
        visibility: Visibility::WhenWritten,
    };
    let push = Event::Score(ScoreChange {
        map_lead_id: person.map_id,
        change_id: "probe".into(),
        part: ScorePart::Total,
        new_value: person.lead_score as f64 + 500.0,
        old_value: Some(person.lead_score as f64),
        campaign: None,
        at,
    });
    reconcile(&mut state.clone(), &ctx, &push)
        .iter()
        .any(|d| matches!(d.action, Action::OpenCycle { .. }))
}

fn rung(bell: &Notify) -> bool {
    bell.notified().now_or_never().is_some()
}

/// The README's template with its tokens replaced as Marketo's JSON token encoding does.
fn marketo_body(lead: i64, total: i64) -> String {
    MARKETO_TEMPLATE
        .replace("{{lead.Id}}", &lead.to_string())
        .replace("{{lead.Lead Score}}", &total.to_string())
        .replace("{{lead.Behavior Score}}", "40")
        .replace("{{lead.Demographic Score}}", "null")
        .replace("{{lead.SFDC Lead ID}}", "\"00Q000000000007AAA\"")
        .replace("{{lead.SFDC Contact ID}}", "null")
        .replace("{{campaign.id}}", "1003")
        .replace("{{campaign.name}}", "\"Webinar follow-up\"")
        .replace("{{system.dateTime}}", "\"2026-11-02 12:00:00\"")
}

/// An Outbound Message as Salesforce sends it, one notification per record id.
fn outbound(org: &str, object: &str, ids: &[&str]) -> String {
    let mut notifications = String::new();
    for (i, id) in ids.iter().enumerate() {
        notifications.push_str(&format!(
            "<Notification><Id>04l0000000000{:02}AAA</Id><sObject xsi:type=\"sf:{object}\" xmlns:sf=\"urn:sobject.enterprise.soap.sforce.com\"><sf:Id>{id}</sf:Id><sf:Name>T&amp;C</sf:Name></sObject></Notification>",
            i + 1
        ));
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body><notifications xmlns=\"http://soap.sforce.com/2005/09/outbound\"><OrganizationId>{org}</OrganizationId><ActionId>04k000000000001AAA</ActionId><SessionId xsi:nil=\"true\"/><EnterpriseUrl>https://acme.my.salesforce.com/services/Soap/c/62.0/00D000000000001</EnterpriseUrl><PartnerUrl>https://acme.my.salesforce.com/services/Soap/u/62.0/00D000000000001</PartnerUrl>{notifications}</notifications></soapenv:Body></soapenv:Envelope>"
    )
}

#[tokio::test]
async fn a_marketo_webhook_is_queued_acknowledged_and_wakes_the_score_poller() {
    let mut d = spawn_daemon().await;
    let r = d.marketo(&marketo_body(1042, 87)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "{\"status\":\"accepted\"}");
    let Inbound::MarketoScore(score) = d.next_inbound().await else {
        panic!("a score");
    };
    let MarketoScore {
        map_lead_id,
        scores,
        crm_lead_id,
        crm_contact_id,
        campaign,
        sent_at,
        ..
    } = score;
    assert_eq!(map_lead_id, 1042);
    assert_eq!(
        scores,
        vec![(ScorePart::Total, 87.0), (ScorePart::Behavior, 40.0)]
    );
    assert_eq!(crm_lead_id.as_deref(), Some("00Q000000000007AAA"));
    assert_eq!(crm_contact_id, None);
    assert_eq!(campaign.unwrap().id, "1003");
    assert_eq!(sent_at, Some("2026-11-02T12:00:00Z".parse().unwrap()));
    let wake = d.state.wake();
    assert!(rung(&wake.score_activities));
    assert!(!rung(&wake.thresholds) && !rung(&wake.mql_records) && !rung(&wake.people));
    assert_eq!(d.count(Endpoint::Marketo, WebhookResult::Accepted), 1);
    d.stop().await;
}

#[tokio::test]
async fn the_marketo_secret_is_required_and_compared_exactly() {
    let mut d = spawn_daemon().await;
    let body = marketo_body(1, 10);
    let cases = [
        None,
        Some("wrong"),
        // Same length, last character different; a prefix; the secret and more.
        Some("test-shared-secret-0123456789abcdeF"),
        Some("test-shared-secret-0123456789abcde"),
        Some("test-shared-secret-0123456789abcdef0"),
    ];
    for secret in cases {
        let r = d.post("/webhooks/marketo", body.clone(), secret).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{secret:?}");
        let text = r.text().await.unwrap();
        assert!(
            text.contains("X-Mqlsync-Secret") || text.contains("x-mqlsync-secret"),
            "{text}"
        );
        assert!(!text.contains(SECRET), "{text}");
    }
    assert_eq!(d.count(Endpoint::Marketo, WebhookResult::Unauthorized), 5);
    assert!(d.queued().is_none());
    assert!(!rung(&d.state.wake().score_activities));
    // The same secret under the header's name in any case is accepted.
    let r = d
        .http
        .post(format!("{}/webhooks/marketo", d.base))
        .header("x-mqlsync-secret", SECRET)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    d.stop().await;

    // Without a configured secret, nothing gets in.
    let mut d = spawn_daemon_with(None, 4).await;
    let r = d.marketo(&body).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("MQLSYNC_DAEMON_WEBHOOK_SECRET")
    );
    assert!(d.queued().is_none());
    d.stop().await;
}

#[tokio::test]
async fn bad_bodies_are_400_or_413_and_nothing_crashes() {
    let mut d = spawn_daemon().await;
    let malformed: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"garbage".to_vec(),
        b"\xff\xfe\x00{\"leadId\": 1}".to_vec(),
        br#"{"leadId": 1"#.to_vec(),
        br#"{"leadId": 1e999}"#.to_vec(),
        br#"{"leadId": 123456789012345678901234567890}"#.to_vec(),
        br#"{"leadId": 1, "scores": {"leadScore": 1e999}}"#.to_vec(),
        br#"{"leadId": 1, "scores": {"nope": 1}}"#.to_vec(),
        "[".repeat(3000).into_bytes(),
    ];
    for body in &malformed {
        let r = d
            .post("/webhooks/marketo", body.clone(), Some(SECRET))
            .await;
        assert_eq!(
            r.status(),
            StatusCode::BAD_REQUEST,
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
    assert_eq!(
        d.count(Endpoint::Marketo, WebhookResult::Malformed),
        malformed.len() as u64
    );
    // Too large, declared and streamed without a length.
    let big = format!("{{\"leadId\": 1, \"pad\": \"{}\"}}", "x".repeat(5000));
    let r = d.post("/webhooks/marketo", big.clone(), Some(SECRET)).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..3).map(|_| Ok(vec![b' '; 2048])).collect();
    let r = d
        .post(
            "/webhooks/marketo",
            reqwest::Body::wrap_stream(futures::stream::iter(chunks)),
            Some(SECRET),
        )
        .await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(d.count(Endpoint::Marketo, WebhookResult::TooLarge), 2);

    d.state.set_salesforce_org_id(ORG);
    let good = outbound(ORG, "MQL_Threshold__c", &["a0B000000000001AAA"]);
    let bad: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"<not-soap/>".to_vec(),
        b"\xff<soap/>".to_vec(),
        good.replace("</soapenv:Envelope>", "").into_bytes(),
        good.as_bytes()[..good.len() / 2].to_vec(),
        good.replace("a0B000000000001AAA", "9".repeat(400).as_str())
            .into_bytes(),
        format!(
            "<!DOCTYPE lol [<!ENTITY a \"aaaa\">]>{}",
            good.trim_start_matches("<?xml version=\"1.0\" encoding=\"UTF-8\"?>")
        )
        .into_bytes(),
    ];
    for body in &bad {
        let r = d
            .http
            .post(format!("{}/webhooks/salesforce", d.base))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::BAD_REQUEST,
            "{:?}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
    }
    let huge = outbound(ORG, "MQL_Threshold__c", &["a0B000000000001AAA"; 40]);
    assert!(huge.len() > 4096);
    assert_eq!(
        d.salesforce(&huge).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert!(d.queued().is_none(), "nothing refused is queued");
    // The port still serves.
    assert_eq!(d.get("/healthz").await, (StatusCode::OK, "ok\n".into()));
    d.stop().await;
}

#[tokio::test]
async fn wrong_methods_are_405_and_unknown_paths_404() {
    let d = spawn_daemon().await;
    let r = d
        .http
        .get(format!("{}/webhooks/marketo", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()["allow"], "POST");
    let r = d
        .http
        .put(format!("{}/webhooks/salesforce", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let r = d.post("/metrics", "x", None).await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    assert_eq!(d.get("/webhooks").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        d.get("/webhooks/hubspot?token=x").await.0,
        StatusCode::NOT_FOUND
    );
    d.stop().await;
}

#[tokio::test]
async fn an_outbound_message_is_acknowledged_only_for_our_org_and_wakes_its_poller() {
    let mut d = spawn_daemon().await;
    let threshold = outbound(
        ORG,
        "MQL_Threshold__c",
        &[
            "a0B000000000001AAA",
            "a0B000000000002AAA",
            "a0B000000000001AAA",
        ],
    );
    // Before the daemon knows its org, Salesforce is told to retry.
    let r = d.salesforce(&threshold).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(d.queued().is_none());

    d.state.set_salesforce_org_id(ORG);
    let r = d
        .salesforce(&outbound(
            "00D000000000009AAA",
            "MQL_Threshold__c",
            &["a0B000000000001AAA"],
        ))
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        d.count(Endpoint::Salesforce, WebhookResult::Unauthorized),
        1
    );
    assert!(d.queued().is_none());
    assert!(!rung(&d.state.wake().thresholds));

    let r = d.salesforce(&threshold).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/xml; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), ACK);
    let Inbound::Threshold(CrmRecords {
        object,
        record_ids,
        notification_ids,
        ..
    }) = d.next_inbound().await
    else {
        panic!("threshold records");
    };
    assert_eq!(object, "MQL_Threshold__c");
    assert_eq!(record_ids, ["a0B000000000001AAA", "a0B000000000002AAA"]);
    assert_eq!(notification_ids.len(), 3);
    let wake = d.state.wake();
    assert!(rung(&wake.thresholds));
    assert!(!rung(&wake.mql_records) && !rung(&wake.score_activities));

    // The 15-character org id works too; MQL records and people go to their pollers.
    d.state.set_salesforce_org_id(&ORG[..15]);
    let r = d
        .salesforce(&outbound(ORG, "MQL__c", &["a0C000000000001AAA"]))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        matches!(d.next_inbound().await, Inbound::MqlRecord(r) if r.record_ids == ["a0C000000000001AAA"])
    );
    assert!(rung(&wake.mql_records));
    let r = d
        .salesforce(&outbound(ORG, "Contact", &["003000000000001AAA"]))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(matches!(d.next_inbound().await, Inbound::Person(r) if r.object == "Contact"));
    assert!(rung(&wake.people));

    // An object mqlsync does not read is acknowledged (or Salesforce retries for a day) and
    // nothing is queued.
    let r = d
        .salesforce(&outbound(ORG, "Opportunity", &["006000000000001AAA"]))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), ACK);
    assert!(d.queued().is_none());
    assert_eq!(d.count(Endpoint::Salesforce, WebhookResult::Ignored), 1);
    assert_eq!(d.count(Endpoint::Salesforce, WebhookResult::Accepted), 3);
    d.stop().await;
}

#[tokio::test]
async fn a_full_queue_still_acknowledges_counts_dropped_and_rings_the_bell() {
    let mut d = spawn_daemon_with(Some(SECRET), 1).await;
    d.state.set_salesforce_org_id(ORG);
    assert_eq!(
        d.marketo(&marketo_body(1, 10)).await.status(),
        StatusCode::OK
    );
    assert!(rung(&d.state.wake().score_activities));
    // The daemon has not read the first: the queue is full.
    assert_eq!(
        d.marketo(&marketo_body(2, 20)).await.status(),
        StatusCode::OK
    );
    assert!(rung(&d.state.wake().score_activities));
    let r = d
        .salesforce(&outbound(ORG, "MQL_Threshold__c", &["a0B000000000001AAA"]))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), ACK);
    assert!(rung(&d.state.wake().thresholds));
    assert_eq!(d.count(Endpoint::Marketo, WebhookResult::Accepted), 1);
    assert_eq!(d.count(Endpoint::Marketo, WebhookResult::Dropped), 1);
    assert_eq!(d.count(Endpoint::Salesforce, WebhookResult::Dropped), 1);
    assert!(matches!(d.next_inbound().await, Inbound::MarketoScore(s) if s.map_lead_id == 1));
    assert!(d.queued().is_none());
    d.stop().await;
}

#[tokio::test]
async fn report_serves_the_html_report_of_the_store_and_refuses_a_bad_query_with_400() {
    let d = spawn_daemon().await;
    let (status, text) = d.get("/report").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
    // A store with the fixture history's seven MQLs.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let loaded = mapping::load(None).unwrap();
    let history = mqlsync::simulate::read_history(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report-history.csv"),
    )
    .unwrap();
    let mut store = mqlsync::store::Store::open(&path).unwrap();
    mqlsync::simulate::run(&history, &loaded.policy, &mut store, "report", None, 100).unwrap();
    drop(store);
    d.state.serve_report(http::ReportSource {
        store: path,
        mapping: loaded,
    });
    let r = d
        .http
        .get(format!("{}/report?by=week&group=owner", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    let page = r.text().await.unwrap();
    assert_eq!(page.matches("<svg class=\"chart\"").count(), 4);
    assert!(
        page.contains("2026-W45") && page.contains("0055g0000000001AAA"),
        "{page}"
    );
    for (query, words) in [
        (
            "by=fortnight",
            "by \"fortnight\": day, week, month, quarter or year",
        ),
        ("group=territory", "--group \"territory\""),
        ("from=yesterday", "from \"yesterday\": not a date"),
    ] {
        let (status, text) = d.get(&format!("/report?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert!(text.contains(words), "{query}: {text}");
    }
    d.stop().await;
}

#[tokio::test]
async fn healthz_readyz_and_metrics() {
    let d = spawn_daemon().await;
    assert_eq!(d.get("/healthz").await, (StatusCode::OK, "ok\n".into()));
    let (status, text) = d.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        text,
        "store: not open\nsalesforce: not signed in\nsalesforce: no successful poll yet\nmarketo: not signed in\nmarketo: no successful poll yet\n"
    );
    let now = tokio::time::Instant::now();
    d.state.update_readiness(|r| {
        r.store_open = true;
        r.salesforce.authenticated = true;
        r.salesforce.last_ok_poll = Some(now);
        r.marketo.authenticated = true;
        r.marketo.last_ok_poll = Some(now);
    });
    assert_eq!(d.get("/readyz").await, (StatusCode::OK, "ready\n".into()));
    // A system whose last good poll is older than the bound is not ready.
    let stale = now.checked_sub(Duration::from_secs(300)).unwrap();
    d.state
        .update_readiness(|r| r.marketo.last_ok_poll = Some(stale));
    let (status, text) = d.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        text.starts_with("marketo: last successful poll 30")
            && text.ends_with("s ago (more than 120 s)\n"),
        "{text}"
    );

    // /metrics reflects the webhook counts and what the daemon records.
    d.marketo(&marketo_body(1, 10)).await;
    d.post("/webhooks/marketo", "{}", Some("nope")).await;
    d.post("/webhooks/marketo", "{", Some(SECRET)).await;
    let metrics = d.state.metrics();
    metrics.count_mql_opened("EMEA");
    metrics.set_outbox_depth(3);
    let r = d
        .http
        .get(format!("{}/metrics", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.text().await.unwrap();
    for line in [
        "# TYPE mqlsync_webhook_requests_total counter",
        "mqlsync_webhook_requests_total{endpoint=\"marketo\",result=\"accepted\"} 1",
        "mqlsync_webhook_requests_total{endpoint=\"marketo\",result=\"unauthorized\"} 1",
        "mqlsync_webhook_requests_total{endpoint=\"marketo\",result=\"malformed\"} 1",
        "mqlsync_webhook_requests_total{endpoint=\"salesforce\",result=\"accepted\"} 0",
        "mqlsync_mqls_opened_total{segment=\"EMEA\"} 1",
        "mqlsync_outbox_depth 3",
        "# TYPE process_resident_memory_bytes gauge",
        "# TYPE process_cpu_seconds_total counter",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}\n{text}");
    }
    // The process's own figures: this test process holds at least a megabyte, and has run.
    let sample = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name}\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(sample("process_resident_memory_bytes") > 1_048_576.0);
    assert!(sample("process_cpu_seconds_total") > 0.0);
    d.stop().await;
}

/// Each refusal writes exactly one warn line that names its reason, and no line holds the
/// secret (presented or configured) or the body. The runtime has one thread, so the server's
/// tasks log on this test's thread, into its capture.
#[tokio::test(flavor = "current_thread")]
async fn each_refusal_logs_one_warn_line_without_secret_or_body() {
    let captured = Arc::new(Mutex::new(Vec::new()));
    CAPTURE.with(|c| *c.borrow_mut() = Some(captured.clone()));
    let d = spawn_daemon().await;
    d.state.set_salesforce_org_id(ORG);
    let presented = "presented-wrong-secret-XYZZY";
    let marker = "BODYMARKER-4711";
    let refusals: Vec<(&str, reqwest::Response)> = vec![
        ("does not hold the configured secret", d.post("/webhooks/marketo", marketo_body(1, 1), Some(presented)).await),
        ("header is missing", d.post("/webhooks/marketo", marketo_body(1, 1), None).await),
        ("not JSON", d.post("/webhooks/marketo", format!("{{\"leadId\": \"{marker}\""), Some(SECRET)).await),
        ("leadId is not", d.post("/webhooks/marketo", format!("{{\"leadId\": \"{marker}\"}}"), Some(SECRET)).await),
        ("larger than 4096 bytes", d.post("/webhooks/marketo", marker.repeat(500), Some(SECRET)).await),
        ("not the org", d.salesforce(&outbound("00D000000000009AAA", "MQL__c", &["a0C000000000001AAA"])).await),
        ("not well-formed", d.salesforce(&format!("<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"><soapenv:Body>{marker}</soapenv:Header>")).await),
        ("no such endpoint", d.post("/webhooks/hubspot", marker, None).await),
        ("method not allowed", d.http.delete(format!("{}/webhooks/marketo", d.base)).send().await.unwrap()),
    ];
    // One accepted call: no warn line.
    assert_eq!(
        d.marketo(&marketo_body(5, 50)).await.status(),
        StatusCode::OK
    );
    for (_, r) in &refusals {
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    CAPTURE.with(|c| c.borrow_mut().take());
    let log = String::from_utf8(captured.lock().unwrap().clone()).unwrap();
    let warns: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warns.len(), refusals.len(), "{log}");
    for ((reason, _), line) in refusals.iter().zip(&warns) {
        assert!(line.contains(reason), "{reason}: {line}");
    }
    for secret in [presented, SECRET, marker] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    d.stop().await;
}

/// The sandbox's own calls, configured as the README says, reach the port: a score change in
/// Marketo (its "Call Webhook" step with the template and the secret header) and a threshold
/// edited in the CRM (its outbound message, acknowledged so that it stops).
#[tokio::test]
async fn the_sandbox_webhook_and_outbound_message_reach_the_daemon() {
    let mut d = spawn_daemon().await;
    let mut options = SandboxOptions {
        leads: 20,
        seed: 7,
        clock: SandboxClock::frozen("2026-11-02T12:00:00Z".parse::<Timestamp>().unwrap()),
        ..SandboxOptions::default()
    };
    options.marketo.webhook = Some(MarketoWebhook {
        url: format!("{}/webhooks/marketo", d.base),
        template: MARKETO_TEMPLATE.into(),
        headers: vec![
            ("X-Mqlsync-Secret".into(), SECRET.into()),
            ("Content-Type".into(), "application/json".into()),
        ],
    });
    options.salesforce.outbound = Some(OutboundMessaging {
        url: format!("{}/webhooks/salesforce", d.base),
        objects: vec!["MQL_Threshold__c".into(), "MQL__c".into()],
        fields: vec![
            "Name".into(),
            "Score_Threshold__c".into(),
            "Effective_To__c".into(),
            "Active__c".into(),
        ],
        retry_initial_secs: 60,
        deliver_in_background: false,
    });
    let sandbox = Sandbox::start(options).await.unwrap();

    // The org id comes from the OAuth identity URL, as the daemon learns it.
    let sf = sandbox.salesforce_config().clone();
    let token: Value = d
        .http
        .post(format!(
            "{}/services/oauth2/token",
            sandbox.salesforce_url()
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", sf.client_id.as_str()),
            ("client_secret", sf.client_secret.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let org = webhook::org_id_from_identity_url(token["id"].as_str().unwrap()).unwrap();
    d.state.set_salesforce_org_id(org);

    let person = sandbox
        .world()
        .people
        .iter()
        .find(|p| p.crm_id.is_some())
        .unwrap()
        .clone();
    sandbox
        .marketo()
        .apply_score_change(person.map_id, ScoreField::BehaviorScore, 15, Some(1003))
        .unwrap();
    let Inbound::MarketoScore(score) = d.next_inbound().await else {
        panic!("a score");
    };
    assert_eq!(score.map_lead_id, person.map_id);
    assert_eq!(
        score.scores,
        vec![
            (ScorePart::Total, (person.lead_score + 15) as f64),
            (ScorePart::Behavior, (person.behavior_score + 15) as f64),
            (ScorePart::Demographic, person.demographic_score as f64),
        ]
    );
    let crm = score.crm_lead_id.or(score.crm_contact_id);
    assert_eq!(crm, person.crm_id);
    assert_eq!(score.campaign.unwrap().id, "1003");
    assert_eq!(score.sent_at, Some("2026-11-02T12:00:00Z".parse().unwrap()));
    assert!(rung(&d.state.wake().score_activities));

    let threshold = sandbox.world().thresholds[0].id.clone();
    let mut fields = Map::new();
    fields.insert("Score_Threshold__c".into(), json!(70));
    sandbox
        .salesforce()
        .edit_record("MQL_Threshold__c", &threshold, fields)
        .unwrap();
    assert_eq!(
        sandbox.salesforce().deliver_outbound().await,
        1,
        "the sandbox read our answer as an Ack: {:?}",
        sandbox.salesforce().outbound_deliveries()
    );
    let Inbound::Threshold(records) = d.next_inbound().await else {
        panic!("threshold records");
    };
    assert_eq!(records.object, "MQL_Threshold__c");
    assert_eq!(records.record_ids, [threshold]);
    assert!(rung(&d.state.wake().thresholds));
    assert_eq!(
        sandbox.salesforce().state()["outbound"]["pending"],
        json!([])
    );
    assert_eq!(d.count(Endpoint::Marketo, WebhookResult::Accepted), 1);
    assert_eq!(d.count(Endpoint::Salesforce, WebhookResult::Accepted), 1);
    sandbox.shutdown().await;
    d.stop().await;
}

/// The secret is only ever compared by `webhook::secret_matches` (SHA-256 digests compared
/// with `subtle`'s constant-time equality), never with `==`.
#[test]
fn the_secret_is_compared_in_constant_time() {
    let squeeze = |s: &str| s.split_whitespace().collect::<String>();
    let http = squeeze(include_str!("../../src/workers/http.rs"));
    assert_eq!(http.matches("expose_secret()").count(), 1);
    assert!(http.contains(
        "webhook::secret_matches(presented.as_bytes(),secret.expose_secret().as_bytes())"
    ));
    let webhook = squeeze(include_str!("../../src/workers/webhook.rs"));
    assert!(webhook.contains("a.as_slice().ct_eq(b.as_slice()).into()"));
    assert!(webhook::secret_matches(
        SECRET.as_bytes(),
        SECRET.as_bytes()
    ));
}
#[cfg(unix)]
mod crash;
#[path = "loop.rs"]
mod daemon_loop;
mod e2e;
#[path = "../support/feedback_mapping.rs"]
mod feedback_mapping;
