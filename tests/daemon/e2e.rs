//! Issue 13, point 9: the behaviours of the contract (docs/behaviour.md) that involve both
//! systems, driven end to end through the daemon against the in-process sandbox: a knob
//! turned up, a rep accepting and rejecting MQL records in the CRM, a re-MQL after the
//! cool-down, an SLA running out and a reassignment, webhooks lost and duplicated, and an
//! exclusion by a title edited in the CRM. (A knob turned down, a scheduled threshold and a
//! Marketo score push are in `loop.rs`.)
//!
//! No sleeps: the sandbox's clock stands still and is moved by the test (the daemon's clock
//! follows it), the sandbox's outbound messages are delivered when the test says, and every
//! wait is on the daemon's [`Progress`], bounded by a timeout that only marks a failure. The
//! one exception is the lost-webhook test, where the pollers' own one-second interval is what
//! is under test.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use mqlsync::config::{self, Config};
use mqlsync::engine::model::{CycleStatus, Outcome, RuleKind};
use mqlsync::engine::{Cycle, Reason, explain};
use mqlsync::mapping::{self, LoadedMapping};
use mqlsync::sandbox::clock::SandboxClock;
use mqlsync::sandbox::salesforce::OutboundMessaging;
use mqlsync::sandbox::server::{Sandbox, SandboxOptions};
use mqlsync::sandbox::world::{CrmKind, Person, ScoreField, Threshold};
use mqlsync::store::Store;
use mqlsync::sync::connect;
use mqlsync::sync::once::{RunSettings, Source};
use mqlsync::workers::daemon::{self, Daemon, DaemonError, Progress, Stopped};
use mqlsync::workers::http::{self, HttpState, Readiness, WebhookSettings};
use mqlsync::workers::metrics::{Endpoint, WebhookResult};
use mqlsync::workers::webhook::{self, MARKETO_TEMPLATE};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::TestClock;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "e2e-test-shared-secret-0123456789";
/// Bounds a wait on the daemon; reaching it is a failure, not a pace.
const FAILURE_BOUND: Duration = Duration::from_secs(90);
/// Every source's interval and the idle ceiling: an hour, so that within a test only a
/// webhook, the engine's clock or the first pass can start a pass.
const NEVER_BY_INTERVAL: &str = "poll_thresholds_secs = 3600\npoll_people_secs = 3600\npoll_mql_edits_secs = 3600\npoll_opportunities_secs = 3600\npoll_activities_secs = 3600\npoll_idle_ceiling_secs = 3600\n";

fn start() -> Timestamp {
    "2026-11-02T12:00:00Z".parse().unwrap()
}

fn minutes(n: i64) -> Timestamp {
    start() + SignedDuration::from_mins(n)
}

/// How a test's world is wired.
struct Wiring {
    leads: usize,
    /// More `[daemon]` keys.
    daemon_toml: &'static str,
    /// The objects whose changes the CRM sends as Outbound Messages.
    outbound: &'static [&'static str],
    /// Whether the webhooks reach the daemon; `false`: they go to a port nobody listens on.
    webhooks_reach: bool,
    /// The mapping writes the knob's feedback on threshold records.
    knob_feedback: bool,
}

impl Default for Wiring {
    fn default() -> Self {
        Wiring {
            leads: 300,
            daemon_toml: NEVER_BY_INTERVAL,
            outbound: &["MQL_Threshold__c"],
            webhooks_reach: true,
            knob_feedback: false,
        }
    }
}

struct App {
    sandbox: Sandbox,
    clock: Arc<TestClock>,
    config: Config,
    loaded: LoadedMapping,
    http: HttpState,
    progress: watch::Receiver<Progress>,
    /// The daemon's port.
    base: String,
    client: reqwest::Client,
    shutdown: CancellationToken,
    daemon: Option<tokio::task::JoinHandle<Result<Stopped, DaemonError>>>,
    /// How the daemon ended, once it has (its error, for a test that finds it stopped).
    ended: Arc<std::sync::Mutex<Option<String>>>,
    _dir: tempfile::TempDir,
}

/// A sandbox on a frozen clock, wired to the daemon as `wiring` says, and the daemon started
/// on it; returns once the daemon's first pass has gone live.
async fn spawn_app(wiring: Wiring) -> App {
    let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let target = if wiring.webhooks_reach {
        base.clone()
    } else {
        // A port that was free a moment ago and that nobody listens on.
        let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", gone.local_addr().unwrap())
    };
    let sandbox_clock = SandboxClock::frozen(start());
    let mut options = SandboxOptions {
        leads: wiring.leads,
        seed: 3,
        clock: sandbox_clock.clone(),
        // The clock stands still: Marketo's 20-second window would never pass.
        limits: false,
        ..SandboxOptions::default()
    };
    options.marketo.webhook = Some(mqlsync::demo::marketo_webhook(&target, SECRET));
    options.salesforce.outbound = Some(OutboundMessaging {
        url: format!("{target}/webhooks/salesforce"),
        objects: wiring.outbound.iter().map(|o| o.to_string()).collect(),
        fields: vec!["Name".into()],
        retry_initial_secs: 60,
        deliver_in_background: false,
    });
    let sandbox = Sandbox::start(options).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let info = sandbox.connection_info();
    let file = dir.path().join("mqlsync.toml");
    std::fs::write(
        &file,
        format!(
            "{}\n[daemon]\nwrite_window_ms = 20\n{}",
            mqlsync::sandbox::cli::sandbox_config_toml(&info, "state.sqlite", None),
            wiring.daemon_toml
        ),
    )
    .unwrap();
    let env = mqlsync::sandbox::cli::secrets_env(&info, Some(SECRET));
    let config = config::load(Some(&file), &env).unwrap();
    let sf = connect::salesforce(&config).unwrap();
    let mk = connect::marketo(&config).unwrap();
    let loaded = if wiring.knob_feedback {
        crate::feedback_mapping::feedback_mapping()
    } else {
        mapping::load(None).unwrap()
    };
    let schedule = config.daemon.schedule.clone();
    let (state, inbound) = HttpState::new(
        WebhookSettings::new(&config.daemon, &loaded.mapping),
        Readiness::new(daemon::max_poll_age(&schedule)),
        64,
    );
    daemon::sign_in(&sf, &mk, &state).await.unwrap();
    let store = Store::open(&config.store).unwrap();
    let clock = Arc::new(TestClock::new(sandbox_clock));
    let d = Daemon::new(
        sf,
        mk,
        loaded.mapping.clone(),
        loaded.policy.clone(),
        store,
        RunSettings {
            go_live: config.sync.go_live,
            ..RunSettings::default()
        },
        schedule,
        clock.clone(),
        state.clone(),
        inbound,
        Some(listener),
    );
    let progress = d.progress();
    let shutdown = CancellationToken::new();
    let ended = Arc::new(std::sync::Mutex::new(None));
    let daemon = {
        let (ended, shutdown) = (ended.clone(), shutdown.clone());
        tokio::spawn(async move {
            let how = d.run(shutdown).await;
            *ended.lock().unwrap() = Some(format!("{how:?}"));
            how
        })
    };
    let app = App {
        sandbox,
        clock,
        config,
        loaded,
        http: state,
        progress,
        base,
        client: reqwest::Client::new(),
        shutdown,
        daemon: Some(daemon),
        ended,
        _dir: dir,
    };
    app.wait_until("the first pass", |_, p| p.live).await;
    app
}

impl App {
    /// Waits until `done` holds, looking again after every step of the daemon; fails after
    /// [`FAILURE_BOUND`], or at once when the daemon has stopped.
    async fn wait_until(&self, what: &str, done: impl Fn(&App, &Progress) -> bool) -> Progress {
        let mut progress = self.progress.clone();
        let waited = tokio::time::timeout(FAILURE_BOUND, async {
            loop {
                let p = progress.borrow_and_update().clone();
                if done(self, &p) {
                    return Ok(p);
                }
                if progress.changed().await.is_err() {
                    return Err(p);
                }
            }
        })
        .await;
        match waited {
            Ok(Ok(p)) => p,
            Ok(Err(p)) => panic!(
                "the daemon stopped before {what} ({}): {p:?}",
                self.ended
                    .lock()
                    .unwrap()
                    .as_deref()
                    .unwrap_or("its task panicked: see the panic above")
            ),
            Err(_) => panic!(
                "no {what} within {FAILURE_BOUND:?}: {:?}",
                self.progress.borrow()
            ),
        }
    }

    /// Waits until `source` has polled more than `before` times and nothing waits in the
    /// outbox.
    async fn polled(&self, source: Source, before: u64) -> Progress {
        self.wait_until(&format!("a {} poll written", source.label()), |_, p| {
            p.polls.get(&source).copied().unwrap_or(0) > before && p.pending_writes == 0
        })
        .await
    }

    fn polls(&self, source: Source) -> u64 {
        self.progress
            .borrow()
            .polls
            .get(&source)
            .copied()
            .unwrap_or(0)
    }

    /// Moves the clock to `at` and waits until the daemon's clock has fired every timer up
    /// to it and written what they decided.
    async fn time_passes(&self, at: Timestamp) -> Progress {
        let ticks = self.progress.borrow().ticks;
        self.clock.set(at);
        self.wait_until(&format!("the timers up to {at}"), |_, p| {
            p.ticks > ticks && p.next_deadline.is_none_or(|d| d > at) && p.pending_writes == 0
        })
        .await
    }

    /// Delivers every outbound message due, as the CRM would; how many notifications the
    /// daemon acknowledged.
    async fn deliver_outbound(&self) -> usize {
        let mut acknowledged = 0;
        loop {
            let n = self.sandbox.salesforce().deliver_outbound().await;
            if n == 0 {
                return acknowledged;
            }
            acknowledged += n;
        }
    }

    /// Delivers the outbound messages of `object` the daemon's own writes set off (a CRM
    /// flow sends them for every edit) and waits until the poll they wake has run; again
    /// until the outbox is empty and no message is left, so that a write the daemon sends
    /// after the first delivery does not echo into the test's own edits.
    async fn deliver_own_echoes(&self, source: Source) {
        loop {
            self.wait_until("the outbox sent", |_, p| p.pending_writes == 0)
                .await;
            let before = self.polls(source);
            if self.deliver_outbound().await == 0 {
                return;
            }
            self.polled(source, before).await;
        }
    }

    async fn stop(&mut self) -> Result<Stopped, DaemonError> {
        self.shutdown.cancel();
        let handle = self.daemon.take().expect("the daemon runs");
        tokio::time::timeout(FAILURE_BOUND, handle)
            .await
            .expect("the daemon stops within the bound")
            .expect("the daemon's task does not panic")
    }

    fn store(&self) -> Store {
        Store::open_existing(&self.config.store).unwrap()
    }

    fn cycles(&self) -> Vec<Cycle> {
        self.store().cycles().unwrap()
    }

    fn cycles_of(&self, crm_id: &str) -> Vec<Cycle> {
        let mut cycles: Vec<Cycle> = self
            .cycles()
            .into_iter()
            .filter(|c| c.crm.id == crm_id)
            .collect();
        cycles.sort_by_key(|c| c.number);
        cycles
    }

    /// Why `crm_id` is or is not an MQL at `at`, from the daemon's store.
    fn explain(&self, crm_id: &str, at: Timestamp) -> Reason {
        let policy = &self.loaded.policy;
        let state = self.store().load_engine(policy).unwrap();
        explain(&state, policy, crm_id, at)
    }

    /// Every live record of `object` in the sandbox's CRM.
    fn records(&self, object: &str) -> Vec<Map<String, Value>> {
        self.sandbox.salesforce().state()["objects"][object]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["IsDeleted"] != json!(true))
            .map(|r| r.as_object().unwrap().clone())
            .collect()
    }

    fn record(&self, object: &str, id: &str) -> Map<String, Value> {
        self.records(object)
            .into_iter()
            .find(|r| r["Id"] == json!(id))
            .unwrap_or_else(|| panic!("no {object} {id}"))
    }

    /// The MQL record of a cycle, by external id.
    fn mql_record(&self, external_id: &str) -> Map<String, Value> {
        self.records("MQL__c")
            .into_iter()
            .find(|r| r["External_Id__c"] == json!(external_id))
            .unwrap_or_else(|| panic!("no MQL record {external_id}"))
    }

    /// Whether the store holds cycles that match `which`, and the CRM a record of each.
    /// (The pollers of the lost-webhook test run on their own: the store is read after the
    /// daemon's progress, so the progress alone could be older than what it shows.)
    fn all_written(&self, which: impl Fn(&Cycle) -> bool) -> bool {
        let cycles: Vec<Cycle> = self.cycles().into_iter().filter(|c| which(c)).collect();
        let records: BTreeSet<String> = self
            .records("MQL__c")
            .iter()
            .filter_map(|r| r["External_Id__c"].as_str().map(str::to_string))
            .collect();
        !cycles.is_empty() && cycles.iter().all(|c| records.contains(&c.external_id))
    }

    /// Every MQL record is in the CRM once, and the store knows exactly those.
    fn assert_each_record_once(&self) {
        let records = self.records("MQL__c");
        let ids: BTreeSet<String> = records
            .iter()
            .map(|r| r["External_Id__c"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.len(), records.len(), "a duplicate MQL record");
        let known: BTreeSet<String> = self.cycles().into_iter().map(|c| c.external_id).collect();
        assert_eq!(ids, known);
    }

    /// A user edits a record in the CRM at the clock's present.
    fn edit(&self, object: &str, id: &str, fields: Value) {
        let Value::Object(fields) = fields else {
            panic!("fields as an object")
        };
        self.sandbox
            .salesforce()
            .edit_record(object, id, fields)
            .unwrap();
    }

    /// A rep edits the MQL record of cycle `external_id` in the CRM.
    fn edit_mql(&self, external_id: &str, fields: Value) {
        let id = self.mql_record(external_id)["Id"]
            .as_str()
            .expect("the MQL record's id")
            .to_string();
        self.edit("MQL__c", &id, fields);
    }

    /// A smart campaign changes `person`'s behaviour score (and so their total) by `delta`;
    /// Marketo calls its webhook.
    fn push(&self, person: &Person, delta: i64) {
        self.sandbox
            .marketo()
            .apply_score_change(person.map_id, ScoreField::BehaviorScore, delta, Some(1003))
            .unwrap();
    }

    /// The person of the world with this CRM id.
    fn person(&self, crm_id: &str) -> Person {
        self.sandbox
            .world()
            .people
            .iter()
            .find(|p| p.crm_id.as_deref() == Some(crm_id))
            .unwrap()
            .clone()
    }

    /// The EMEA knob in force at the start.
    fn emea_knob(&self) -> Threshold {
        self.sandbox
            .world()
            .thresholds
            .iter()
            .find(|t| {
                t.region.as_deref() == Some("EMEA") && t.effective_from.is_none_or(|f| f <= start())
            })
            .unwrap()
            .clone()
    }

    /// People below their threshold at the start whom a score change of +500 at `at` makes
    /// MQLs, as the engine decides it on a copy of the daemon's state (no exclusion applies).
    fn would_qualify_with_a_push(&self, at: Timestamp) -> Vec<Person> {
        let policy = &self.loaded.policy;
        let state = self.store().load_engine(policy).unwrap();
        self.sandbox
            .world()
            .people
            .iter()
            .filter(|p| crate::a_push_qualifies(&state, policy, p, start(), at))
            .cloned()
            .collect()
    }

    /// The organisation id the daemon accepts Outbound Messages of, as it learns it: from
    /// the OAuth identity URL.
    async fn org_id(&self) -> String {
        let sf = self.sandbox.salesforce_config().clone();
        let token: Value = self
            .client
            .post(format!(
                "{}/services/oauth2/token",
                self.sandbox.salesforce_url()
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
        webhook::org_id_from_identity_url(token["id"].as_str().unwrap())
            .unwrap()
            .to_string()
    }

    async fn post(&self, path: &str, body: String, headers: &[(&str, &str)]) -> u16 {
        let mut request = self.client.post(format!("{}{path}", self.base)).body(body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.send().await.unwrap().status().as_u16()
    }

    fn webhooks(&self, endpoint: Endpoint) -> u64 {
        self.http
            .metrics()
            .webhook_count(endpoint, WebhookResult::Accepted)
    }
}

/// The CRM's status field of a person.
fn status_field(kind: CrmKind) -> &'static str {
    match kind {
        CrmKind::Lead => "Status",
        CrmKind::Contact => "Contact_Status__c",
    }
}

fn instant(value: &Value) -> Option<Timestamp> {
    value.as_str().map(|s| s.parse().unwrap())
}

/// Issue 13, point 9 (docs/behaviour.md, "Turning the knob": raising one never takes back an
/// MQL already handed to sales): the EMEA knob turned up in the CRM reaches the daemon by its
/// outbound message; no MQL is opened or closed, and a person whose score then reaches the old
/// knob but not the new one is not an MQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_knob_turned_up_makes_no_mql_and_leaves_the_open_ones_open() {
    let mut app = spawn_app(Wiring {
        leads: 600,
        ..Wiring::default()
    })
    .await;
    let knob = app.emea_knob();
    let before: Vec<(String, CycleStatus)> = app
        .cycles()
        .into_iter()
        .map(|c| (c.external_id, c.status))
        .collect();
    assert!(
        app.cycles()
            .iter()
            .any(|c| c.status == CycleStatus::Open && c.threshold_id.as_deref() == Some(&knob.id)),
        "open EMEA MQLs to keep"
    );
    // Someone of the segment below the knob, whom a score at the old knob would make an MQL.
    let waiting = app
        .sandbox
        .world()
        .people
        .iter()
        .find(|p| {
            p.crm_id.as_deref().is_some_and(|id| {
                matches!(
                    app.explain(id, start()),
                    Reason::BelowThreshold { threshold_id: Some(t), .. } if t == knob.id
                )
            })
        })
        .expect("an EMEA person below the knob")
        .clone();

    app.clock.set(minutes(1));
    app.edit(
        "MQL_Threshold__c",
        &knob.id,
        json!({"Score_Threshold__c": knob.score + 20.0}),
    );
    let polls = app.polls(Source::Thresholds);
    assert_eq!(app.deliver_outbound().await, 1);
    app.polled(Source::Thresholds, polls).await;
    let after: Vec<(String, CycleStatus)> = app
        .cycles()
        .into_iter()
        .map(|c| (c.external_id, c.status))
        .collect();
    assert_eq!(after, before, "a knob turned up opened or closed an MQL");

    // The old knob is reached, the new one is not: no MQL.
    app.clock.set(minutes(2));
    let activities = app.polls(Source::Activities);
    app.push(&waiting, (knob.score + 5.0) as i64 - waiting.lead_score);
    app.polled(Source::Activities, activities).await;
    let crm_id = waiting.crm_id.as_deref().unwrap();
    assert!(app.cycles_of(crm_id).is_empty());
    match app.explain(crm_id, minutes(2)) {
        Reason::BelowThreshold {
            score, threshold, ..
        } => assert_eq!((score, threshold), (knob.score + 5.0, knob.score + 20.0)),
        other => panic!("{other:?}"),
    }
    app.assert_each_record_once();
    app.stop().await.unwrap();
}

/// Issue 13, point 9 (docs/behaviour.md, "Lifecycle and statuses"): a rep accepts one MQL
/// record and rejects another in the CRM; the outbound messages of `MQL__c` wake the daemon,
/// which stamps the SAL date on the cycle and the person, and applies the rejection's outcome
/// (Bad Timing: Not now, the person to Nurture).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rep_accepting_and_rejecting_mql_records_in_the_crm_is_applied_at_once() {
    let mut app = spawn_app(Wiring {
        outbound: &["MQL__c"],
        ..Wiring::default()
    })
    .await;
    app.deliver_own_echoes(Source::MqlEdits).await;
    let open: Vec<Cycle> = app
        .cycles()
        .into_iter()
        .filter(|c| c.status == CycleStatus::Open)
        .collect();
    let (accepted, rejected) = (&open[0], &open[1]);

    let later = minutes(30);
    app.clock.set(later);
    app.edit_mql(&accepted.external_id, json!({"Status__c": "Working"}));
    app.edit_mql(
        &rejected.external_id,
        json!({"Status__c": "Rejected", "Rejection_Reason__c": "Bad Timing"}),
    );
    let edits = app.polls(Source::MqlEdits);
    assert_eq!(app.deliver_outbound().await, 2);
    app.wait_until("both edits applied and written", |app, p| {
        p.polls.get(&Source::MqlEdits).copied().unwrap_or(0) > edits
            && p.pending_writes == 0
            && app
                .cycles()
                .iter()
                .any(|c| c.external_id == rejected.external_id && c.status == CycleStatus::Rejected)
    })
    .await;

    let cycles = app.cycles();
    let find = |c: &Cycle| {
        cycles
            .iter()
            .find(|x| x.external_id == c.external_id)
            .unwrap()
            .clone()
    };
    let a = find(accepted);
    assert_eq!((a.status, a.sal_at), (CycleStatus::Working, Some(later)));
    let person = app.record(a.crm.kind.as_str(), &a.crm.id);
    assert_eq!(instant(&person["SAL_Date_Most_Recent__c"]), Some(later));
    assert_eq!(instant(&person["SAL_Date_Original__c"]), Some(later));

    let r = find(rejected);
    assert_eq!(
        (r.status, r.outcome, r.closed_at),
        (CycleStatus::Rejected, Some(Outcome::NotNow), Some(later))
    );
    let person = app.record(r.crm.kind.as_str(), &r.crm.id);
    let kind = app.person(&r.crm.id).crm_kind;
    assert_eq!(person[status_field(kind)], json!("Nurture"));
    assert_eq!(
        app.mql_record(&r.external_id)["Outcome__c"],
        json!("Not now")
    );
    app.assert_each_record_once();
    app.stop().await.unwrap();
}

/// Issue 13, point 9 (docs/behaviour.md, "Cycles" and "Lifecycle"): a person whose MQL was
/// rejected as Not now cools down for 30 days: a score push within them makes no MQL, one
/// after them opens a second cycle, its own MQL record `{id}-2`, and the person keeps the
/// original MQL date beside the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_cool_down_a_rejected_person_becomes_an_mql_again_in_a_second_cycle() {
    let mut app = spawn_app(Wiring {
        outbound: &["MQL__c"],
        ..Wiring::default()
    })
    .await;
    app.deliver_own_echoes(Source::MqlEdits).await;
    let first = app
        .cycles()
        .into_iter()
        .find(|c| c.status == CycleStatus::Open && c.map_lead_id.is_some())
        .unwrap();
    let person = app.person(&first.crm.id);
    let rejected_at = minutes(30);
    app.clock.set(rejected_at);
    app.edit_mql(
        &first.external_id,
        json!({"Status__c": "Rejected", "Rejection_Reason__c": "Bad Timing"}),
    );
    app.deliver_own_echoes(Source::MqlEdits).await;
    assert_eq!(
        app.cycles_of(&first.crm.id)[0].status,
        CycleStatus::Rejected
    );

    // Ten days on, still cooling down.
    let within = rejected_at + SignedDuration::from_hours(24 * 10);
    app.time_passes(within).await;
    let activities = app.polls(Source::Activities);
    app.push(&person, 500);
    app.polled(Source::Activities, activities).await;
    assert_eq!(app.cycles_of(&first.crm.id).len(), 1);
    assert!(
        matches!(
            app.explain(&first.crm.id, within),
            Reason::CoolingDown {
                outcome: Outcome::NotNow,
                ..
            }
        ),
        "{:?}",
        app.explain(&first.crm.id, within)
    );

    // Past the 30 days, the next score change makes the second MQL.
    let after = rejected_at + SignedDuration::from_hours(24 * 31);
    app.time_passes(after).await;
    let activities = app.polls(Source::Activities);
    app.push(&person, 10);
    app.polled(Source::Activities, activities).await;
    let cycles = app.cycles_of(&first.crm.id);
    assert_eq!(cycles.len(), 2, "{cycles:?}");
    let second = &cycles[1];
    assert_eq!(
        (
            second.number,
            second.external_id.as_str(),
            second.mql_at,
            second.status
        ),
        (
            2,
            format!("{}-2", first.crm.id).as_str(),
            after,
            CycleStatus::Open
        )
    );
    assert_eq!(
        app.mql_record(&first.external_id)["Status__c"],
        json!("Rejected"),
        "the first cycle's record is its own"
    );
    assert_eq!(
        instant(&app.mql_record(&second.external_id)["MQL_Date__c"]),
        Some(after)
    );
    let stamps = app.record(first.crm.kind.as_str(), &first.crm.id);
    assert_eq!(instant(&stamps["MQL_Date_Original__c"]), Some(first.mql_at));
    assert_eq!(instant(&stamps["MQL_Date_Most_Recent__c"]), Some(after));
    assert_eq!(stamps["MQL_Count__c"].as_f64(), Some(2.0));
    assert_eq!(
        stamps[status_field(person.crm_kind)],
        json!("Marketing Qualified")
    );
    app.assert_each_record_once();
    app.stop().await.unwrap();
}

/// Issue 13, point 9 (docs/behaviour.md, "Exclusions": the recent-MQL rule) with real CRM
/// data, through the daemon: a rep marks an MQL record Converted (an outcome with no cool-down);
/// a score push ten days later makes no MQL, held by the recent-MQL rule (15 days), and one
/// after the window opens the person's second cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_who_was_an_mql_within_fifteen_days_is_held_by_the_recent_mql_rule() {
    let mut app = spawn_app(Wiring {
        outbound: &["MQL__c"],
        ..Wiring::default()
    })
    .await;
    app.deliver_own_echoes(Source::MqlEdits).await;
    let person = app
        .would_qualify_with_a_push(minutes(10))
        .into_iter()
        .next()
        .expect("a person a push makes an MQL");
    let crm_id = person.crm_id.clone().unwrap();
    app.clock.set(minutes(1));
    let activities = app.polls(Source::Activities);
    app.push(&person, 500);
    app.polled(Source::Activities, activities).await;
    let first = app.cycles_of(&crm_id)[0].clone();
    assert_eq!(first.mql_at, minutes(1));
    app.wait_until("the first MQL record", |_, p| p.pending_writes == 0)
        .await;

    app.clock.set(minutes(30));
    app.edit_mql(&first.external_id, json!({"Status__c": "Converted"}));
    app.deliver_own_echoes(Source::MqlEdits).await;
    assert_eq!(app.cycles_of(&crm_id)[0].status, CycleStatus::Converted);

    let within = first.mql_at + SignedDuration::from_hours(24 * 10);
    app.time_passes(within).await;
    let activities = app.polls(Source::Activities);
    app.push(&person, 500);
    app.polled(Source::Activities, activities).await;
    assert_eq!(app.cycles_of(&crm_id).len(), 1);
    match app.explain(&crm_id, within) {
        Reason::Excluded {
            rule: RuleKind::RecentMql,
            ..
        } => {}
        other => panic!("expected the recent-MQL rule, explain says {other:?}"),
    }

    let after = first.mql_at + SignedDuration::from_hours(24 * 16);
    app.time_passes(after).await;
    let activities = app.polls(Source::Activities);
    app.push(&person, 10);
    app.polled(Source::Activities, activities).await;
    let cycles = app.cycles_of(&crm_id);
    assert_eq!(cycles.len(), 2, "{cycles:?}");
    assert_eq!((cycles[1].number, cycles[1].mql_at), (2, after));
    assert_eq!(
        instant(&app.mql_record(&cycles[1].external_id)["MQL_Date__c"]),
        Some(after)
    );
    app.assert_each_record_once();
    app.stop().await.unwrap();
}

/// Issue 13, point 9 (docs/behaviour.md, "SLA, reassignment and alerts"): with nothing else
/// happening, the daemon's clock flags an Open MQL overdue when its SLA runs out and, past the
/// team's trigger, reassigns it to the next rep, with a fresh SLA and a task for that rep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_clock_flags_an_mql_overdue_then_reassigns_it_with_a_task_for_the_new_rep() {
    let mut app = spawn_app(Wiring::default()).await;
    let cycle = app
        .cycles()
        .into_iter()
        .filter(|c| {
            c.status == CycleStatus::Open
                && c.reassign_at.is_some()
                && matches!(c.team.as_deref(), Some("SDR EMEA" | "SDR APAC"))
        })
        .min_by_key(|c| c.sla_due_at)
        .expect("an open MQL of a team that reassigns and alerts by task");
    let (due, trigger) = (cycle.sla_due_at.unwrap(), cycle.reassign_at.unwrap());
    assert!(due > start() && due < trigger);
    let record = app.mql_record(&cycle.external_id);
    assert_eq!(
        (&record["Overdue__c"], instant(&record["SLA_Due__c"])),
        (&json!(false), Some(due))
    );

    let past_due = due + SignedDuration::from_mins(1);
    app.time_passes(past_due).await;
    let record = app.mql_record(&cycle.external_id);
    assert_eq!(
        (
            &record["Overdue__c"],
            record["Reassignment_Count__c"].as_f64()
        ),
        (&json!(true), Some(0.0)),
        "{record:?}"
    );

    let past_trigger = trigger + SignedDuration::from_mins(1);
    app.time_passes(past_trigger).await;
    let record = app.mql_record(&cycle.external_id);
    assert_eq!(
        (
            &record["Overdue__c"],
            record["Reassignment_Count__c"].as_f64()
        ),
        (&json!(false), Some(1.0)),
        "{record:?}"
    );
    let new_owner = record["OwnerId"].as_str().unwrap().to_string();
    assert_ne!(Some(new_owner.as_str()), cycle.owner_id.as_deref());
    assert!(instant(&record["SLA_Due__c"]).is_some_and(|d| d > past_trigger));
    assert_eq!(instant(&record["MQL_Date__c"]), Some(cycle.mql_at));
    let prefix = format!("Notify:{}:{new_owner}:", cycle.external_id);
    let tasks: Vec<Map<String, Value>> = app
        .records("Task")
        .into_iter()
        .filter(|t| {
            t["MQL_Alert_Key__c"]
                .as_str()
                .is_some_and(|k| k.starts_with(&prefix))
        })
        .collect();
    assert_eq!(tasks.len(), 1, "one task for the new rep");
    assert_eq!(tasks[0]["OwnerId"], json!(new_owner));
    // Only the clock woke the daemon.
    assert!(app.progress.borrow().polls.is_empty());
    app.stop().await.unwrap();
}

/// Issue 13, point 9 (README, "The daemon": a lost webhook costs latency, never correctness):
/// Marketo's webhook and the CRM's outbound messages go to a port nobody listens on; the
/// pollers, at their one-second intervals, still bring the score push and the knob turn to MQL
/// records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_webhooks_cost_latency_the_pollers_still_write_the_mqls() {
    let mut app = spawn_app(Wiring {
        // Every source every second, two at most when idle.
        daemon_toml: "poll_activities_secs = 1\npoll_thresholds_secs = 1\npoll_people_secs = 1\npoll_mql_edits_secs = 1\npoll_opportunities_secs = 1\npoll_idle_ceiling_secs = 2\n",
        webhooks_reach: false,
        ..Wiring::default()
    })
    .await;
    let later = minutes(1);
    let person = app.would_qualify_with_a_push(later)[0].clone();
    let crm_id = person.crm_id.clone().unwrap();
    app.clock.set(later);
    app.push(&person, 500);
    app.wait_until("the score push's MQL written by the poller", |app, _| {
        app.all_written(|c| c.crm.id == crm_id)
    })
    .await;
    assert_eq!(app.cycles_of(&crm_id)[0].mql_at, later);

    let knob = app.emea_knob();
    let turned = minutes(2);
    app.clock.set(turned);
    app.edit(
        "MQL_Threshold__c",
        &knob.id,
        json!({"Score_Threshold__c": knob.score - 25.0}),
    );
    assert_eq!(app.deliver_outbound().await, 0, "nobody acknowledges");
    app.wait_until("the knob turn's MQLs written by the poller", |app, _| {
        app.all_written(|c| c.mql_at == turned)
    })
    .await;
    assert_eq!(app.webhooks(Endpoint::Marketo), 0);
    assert_eq!(app.webhooks(Endpoint::Salesforce), 0);
    app.assert_each_record_once();
    for c in app.cycles().iter().filter(|c| c.mql_at >= later) {
        assert!(
            app.records("MQL__c")
                .iter()
                .any(|r| r["External_Id__c"] == json!(c.external_id)),
            "{} not written",
            c.external_id
        );
    }
    app.stop().await.unwrap();
}

/// Issue 13, point 9 (README, "The daemon": webhooks are hints, delivered at least once): the
/// CRM's outbound message of a knob turn arrives twice (the same notification), and Marketo's
/// webhook of a score push three times; each change makes its MQLs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_webhooks_make_each_mql_once() {
    let mut app = spawn_app(Wiring {
        leads: 600,
        ..Wiring::default()
    })
    .await;
    let knob = app.emea_knob();
    let turned = minutes(1);
    app.clock.set(turned);
    app.edit(
        "MQL_Threshold__c",
        &knob.id,
        json!({"Score_Threshold__c": knob.score - 25.0}),
    );
    let polls = app.polls(Source::Thresholds);
    assert_eq!(app.deliver_outbound().await, 1);
    app.polled(Source::Thresholds, polls).await;
    let made = app.cycles().iter().filter(|c| c.mql_at == turned).count();
    assert!(made > 0, "the knob turn made no MQL");
    let written = app.progress.borrow().written.clone();

    // Salesforce delivers the same notification again (at least once).
    let delivery = app.sandbox.salesforce().outbound_deliveries().remove(0);
    let org = app.org_id().await;
    let again = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body><notifications xmlns=\"http://soap.sforce.com/2005/09/outbound\"><OrganizationId>{org}</OrganizationId><ActionId>04k000000000001AAA</ActionId><SessionId xsi:nil=\"true\"/><EnterpriseUrl>https://sandbox.my.salesforce.com/services/Soap/c/62.0/x</EnterpriseUrl><PartnerUrl>https://sandbox.my.salesforce.com/services/Soap/u/62.0/x</PartnerUrl><Notification><Id>{}</Id><sObject xsi:type=\"sf:MQL_Threshold__c\" xmlns:sf=\"urn:sobject.enterprise.soap.sforce.com\"><sf:Id>{}</sf:Id></sObject></Notification></notifications></soapenv:Body></soapenv:Envelope>",
        delivery.notification_ids[0], knob.id
    );
    let polls = app.polls(Source::Thresholds);
    assert_eq!(
        app.post(
            "/webhooks/salesforce",
            again,
            &[("content-type", "text/xml; charset=utf-8")]
        )
        .await,
        200
    );
    app.polled(Source::Thresholds, polls).await;
    assert_eq!(
        app.cycles().iter().filter(|c| c.mql_at == turned).count(),
        made
    );
    assert_eq!(
        app.progress.borrow().written,
        written,
        "nothing written again"
    );

    // Marketo's webhook for one score push, then the same body twice more.
    let pushed = minutes(2);
    let person = app.would_qualify_with_a_push(pushed)[0].clone();
    let crm_id = person.crm_id.clone().unwrap();
    app.clock.set(pushed);
    let activities = app.polls(Source::Activities);
    app.push(&person, 500);
    app.polled(Source::Activities, activities).await;
    assert_eq!(app.cycles_of(&crm_id).len(), 1);
    let body = MARKETO_TEMPLATE
        .replace("{{lead.Id}}", &person.map_id.to_string())
        .replace(
            "{{lead.Lead Score}}",
            &(person.lead_score + 500).to_string(),
        )
        .replace(
            "{{lead.Behavior Score}}",
            &(person.behavior_score + 500).to_string(),
        )
        .replace(
            "{{lead.Demographic Score}}",
            &person.demographic_score.to_string(),
        )
        .replace("{{lead.SFDC Lead ID}}", "null")
        .replace("{{lead.SFDC Contact ID}}", "null")
        .replace("{{campaign.id}}", "1003")
        .replace("{{campaign.name}}", "null")
        .replace("{{system.dateTime}}", "null");
    let written = app.progress.borrow().written.clone();
    for _ in 0..2 {
        let activities = app.polls(Source::Activities);
        let status = app
            .post(
                "/webhooks/marketo",
                body.clone(),
                &[
                    ("X-Mqlsync-Secret", SECRET),
                    ("content-type", "application/json"),
                ],
            )
            .await;
        assert_eq!(status, 200);
        app.polled(Source::Activities, activities).await;
    }
    assert_eq!(app.cycles_of(&crm_id).len(), 1);
    assert_eq!(
        app.progress.borrow().written,
        written,
        "nothing written again"
    );
    assert_eq!(app.webhooks(Endpoint::Marketo), 3);
    assert_eq!(app.webhooks(Endpoint::Salesforce), 2);
    app.assert_each_record_once();
    app.stop().await.unwrap();
}

/// Issue 13, point 9 (docs/behaviour.md, "Exclusions", the title rule): an admin retitles a
/// lead "Graduate Student" in the CRM; the outbound message of the lead wakes the people poller,
/// and a score push that would have made the lead an MQL makes none, for that reason. Retitled
/// back, the lead's next score change makes the MQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_title_edited_in_the_crm_excludes_a_lead_until_it_is_edited_back() {
    let mut app = spawn_app(Wiring {
        outbound: &["Lead"],
        ..Wiring::default()
    })
    .await;
    app.deliver_own_echoes(Source::People).await;
    let person = app
        .would_qualify_with_a_push(minutes(10))
        .into_iter()
        .find(|p| p.crm_kind == CrmKind::Lead)
        .expect("a lead a push makes an MQL");
    let crm_id = person.crm_id.clone().unwrap();

    app.clock.set(minutes(1));
    app.edit("Lead", &crm_id, json!({"Title": "Graduate Student"}));
    let people = app.polls(Source::People);
    assert_eq!(app.deliver_outbound().await, 1);
    app.polled(Source::People, people).await;

    app.clock.set(minutes(2));
    let activities = app.polls(Source::Activities);
    app.push(&person, 500);
    app.polled(Source::Activities, activities).await;
    assert!(app.cycles_of(&crm_id).is_empty());
    assert!(
        matches!(
            app.explain(&crm_id, minutes(2)),
            Reason::Excluded {
                rule: RuleKind::Title,
                ..
            }
        ),
        "{:?}",
        app.explain(&crm_id, minutes(2))
    );

    app.clock.set(minutes(3));
    app.edit("Lead", &crm_id, json!({"Title": person.title}));
    let people = app.polls(Source::People);
    assert_eq!(app.deliver_outbound().await, 1);
    app.polled(Source::People, people).await;
    app.clock.set(minutes(4));
    let activities = app.polls(Source::Activities);
    app.push(&person, 5);
    app.polled(Source::Activities, activities).await;
    let cycles = app.cycles_of(&crm_id);
    assert_eq!(cycles.len(), 1, "{:?}", app.explain(&crm_id, minutes(4)));
    assert!(cycles[0].mql_at >= minutes(3), "{:?}", cycles[0]);
    assert_eq!(
        instant(&app.mql_record(&cycles[0].external_id)["MQL_Date__c"]),
        Some(cycles[0].mql_at)
    );
    app.stop().await.unwrap();
}

/// Issue 13, point 9 (docs/behaviour.md, "Exclusions": the status, region and vertical rules)
/// with real CRM data, through the daemon: three leads whom a push would make MQLs are edited
/// in the CRM (status Disqualified, region Antarctica, industry Gambling); their outbound
/// messages wake the people poller, and the push makes none of them an MQL, each held by its
/// own rule; a fourth lead, pushed last and not edited, gets its MQL record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_region_and_vertical_rules_hold_back_leads_edited_in_the_crm() {
    let mut app = spawn_app(Wiring {
        outbound: &["Lead"],
        ..Wiring::default()
    })
    .await;
    app.deliver_own_echoes(Source::People).await;
    let leads: Vec<Person> = app
        .would_qualify_with_a_push(minutes(10))
        .into_iter()
        .filter(|p| p.crm_kind == CrmKind::Lead)
        .take(4)
        .collect();
    assert_eq!(leads.len(), 4, "four leads a push makes MQLs");
    let id = |p: &Person| p.crm_id.clone().unwrap();
    let edits = [
        (json!({"Status": "Disqualified"}), RuleKind::Status),
        (json!({"Region__c": "Antarctica"}), RuleKind::Region),
        (json!({"Industry": "Gambling"}), RuleKind::Vertical),
    ];

    app.clock.set(minutes(1));
    for (lead, (fields, _)) in leads.iter().zip(&edits) {
        app.edit("Lead", &id(lead), fields.clone());
    }
    let people = app.polls(Source::People);
    assert_eq!(app.deliver_outbound().await, edits.len());
    app.polled(Source::People, people).await;

    app.clock.set(minutes(2));
    for lead in &leads {
        app.push(lead, 500);
    }
    // The activities are read in time order: once the last push is an MQL record, the
    // three before it have been read and decided too.
    let control = id(&leads[3]);
    // Its record in the CRM, not only the progress's pending count: the progress is
    // published between the daemon's steps, so it can predate the poll that opened it.
    app.wait_until("the control lead's MQL record", |app, p| {
        p.pending_writes == 0 && app.all_written(|c| c.crm.id == control)
    })
    .await;
    let cycle = &app.cycles_of(&control)[0];
    assert_eq!(
        instant(&app.mql_record(&cycle.external_id)["MQL_Date__c"]),
        Some(cycle.mql_at)
    );
    for (lead, (_, rule)) in leads.iter().zip(&edits) {
        let crm_id = id(lead);
        assert!(app.cycles_of(&crm_id).is_empty(), "{crm_id}: {rule:?}");
        match app.explain(&crm_id, minutes(2)) {
            Reason::Excluded { rule: by, .. } if by == *rule => {}
            other => panic!("{crm_id}: expected the {rule:?} rule, explain says {other:?}"),
        }
        assert!(
            app.records("MQL__c")
                .iter()
                .all(|r| r.get("Lead__c").and_then(Value::as_str) != Some(crm_id.as_str())),
            "{crm_id}: no MQL record"
        );
    }
    app.stop().await.unwrap();
}

/// Issue 13, point 9 (docs/behaviour.md, "Exclusions": the open and the recent opportunity
/// rules) with real CRM data, through the daemon: a rep moves an open opportunity onto one
/// contact's account and a recently closed one onto another's; the opportunities poller reads
/// them (every second here: opportunities have no outbound message), and a push that would have
/// made both contacts MQLs makes neither, each held by its rule; a third contact, pushed last,
/// gets its MQL record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opportunity_rules_hold_back_contacts_whose_account_gets_one() {
    let mut app = spawn_app(Wiring {
        daemon_toml: "poll_thresholds_secs = 3600\npoll_people_secs = 3600\npoll_mql_edits_secs = 3600\npoll_opportunities_secs = 1\npoll_activities_secs = 3600\npoll_idle_ceiling_secs = 3600\n",
        ..Wiring::default()
    })
    .await;
    // Three contacts of three different accounts.
    let mut accounts = BTreeSet::new();
    let contacts: Vec<Person> = app
        .would_qualify_with_a_push(minutes(10))
        .into_iter()
        .filter(|p| p.crm_kind == CrmKind::Contact)
        .filter(|p| accounts.insert(p.account_id.clone().unwrap()))
        .take(3)
        .collect();
    assert_eq!(contacts.len(), 3, "three contacts a push makes MQLs");
    let world = app.sandbox.world();
    let open = world
        .opportunities
        .iter()
        .find(|o| !o.is_closed && !accounts.contains(&o.account_id))
        .expect("an open opportunity elsewhere")
        .id
        .clone();
    let closed = world
        .opportunities
        .iter()
        .find(|o| o.is_closed && !accounts.contains(&o.account_id))
        .expect("a closed opportunity elsewhere")
        .id
        .clone();
    let today = minutes(1).to_zoned(jiff::tz::TimeZone::UTC).date();

    app.clock.set(minutes(1));
    let polls = app.polls(Source::Opportunities);
    app.edit(
        "Opportunity",
        &open,
        json!({"AccountId": contacts[0].account_id}),
    );
    app.edit(
        "Opportunity",
        &closed,
        json!({"AccountId": contacts[1].account_id, "CloseDate": today.to_string()}),
    );
    app.polled(Source::Opportunities, polls).await;
    let read = app.polls(Source::Opportunities);
    app.polled(Source::Opportunities, read).await;

    app.clock.set(minutes(2));
    for contact in &contacts {
        app.push(contact, 500);
    }
    let control = contacts[2].crm_id.clone().unwrap();
    // Activities poll only when the pushes wake them: the last push's MQL means all three
    // were read.
    app.wait_until("the control contact's MQL record", |app, p| {
        p.pending_writes == 0 && app.all_written(|c| c.crm.id == control)
    })
    .await;
    for (contact, rule) in contacts
        .iter()
        .zip([RuleKind::OpenOpportunity, RuleKind::RecentOpportunity])
    {
        let crm_id = contact.crm_id.clone().unwrap();
        assert!(app.cycles_of(&crm_id).is_empty(), "{crm_id}: {rule:?}");
        match app.explain(&crm_id, minutes(2)) {
            Reason::Excluded { rule: by, .. } if by == rule => {}
            other => panic!("{crm_id}: expected the {rule:?} rule, explain says {other:?}"),
        }
    }
    app.stop().await.unwrap();
}

/// Issue 15, point 2: a Demo Request form fill fires the Marketo webhook (the trigger
/// campaign's Call Webhook step, with the score template); the push wakes the activity poll,
/// which reads the fill in the same call as the score changes and writes the hand-raiser MQL
/// of a person below the threshold. No poll runs by interval here: only the push starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_request_reaches_the_crm_through_the_webhook_whatever_the_score() {
    let mut app = spawn_app(Wiring::default()).await;
    let person = app.would_qualify_with_a_push(minutes(1))[0].clone();
    let crm_id = person.crm_id.clone().unwrap();
    app.clock.set(minutes(1));
    let activities = app.polls(Source::Activities);
    let pushes = app.webhooks(Endpoint::Marketo);
    app.sandbox
        .marketo()
        .fill_out_form(person.map_id, 1001, Some(1003))
        .unwrap();
    app.polled(Source::Activities, activities).await;
    assert_eq!(app.webhooks(Endpoint::Marketo), pushes + 1);
    let cycles = app.cycles_of(&crm_id);
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    let cycle = &cycles[0];
    assert_eq!(cycle.mql_at, minutes(1));
    assert!(cycle.score < cycle.threshold, "{cycle:?}");
    assert_eq!(
        cycle.hand_raise.as_ref().map(|h| h.rule.as_str()),
        Some("Demo Request")
    );
    // The record is written (the default mapping writes no Qualified_By__c: opt-in).
    let record = app.mql_record(&cycle.external_id);
    assert_eq!(record["Qualified_By__c"], Value::Null, "{record:?}");
    let metrics = app.http.metrics().render();
    assert!(
        metrics
            .contains("mqlsync_mqls_qualified_total{qualified_by=\"hand-raiser Demo Request\"} 1"),
        "{metrics}"
    );
    app.assert_each_record_once();
    app.stop().await.unwrap();
}

/// Issue 14, point 3, through the daemon: its first pass writes each threshold record's
/// weekly MQLs; a knob turn's MQL records are written, then the turned record's feedback; the
/// feedback write coming back as an outbound message writes nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_writes_the_knobs_consequence_beside_the_knob_after_its_mqls() {
    let mut app = spawn_app(Wiring {
        leads: 600,
        knob_feedback: true,
        ..Wiring::default()
    })
    .await;
    let knobs = app.records("MQL_Threshold__c");
    assert!(
        knobs.iter().all(|k| k["Feedback_Date__c"].is_string()),
        "{knobs:?}"
    );
    let knob = app.emea_knob();
    let projected = |app: &App| {
        app.record("MQL_Threshold__c", &knob.id)["Projected_Weekly_MQLs__c"]
            .as_f64()
            .unwrap()
    };
    let before = projected(&app);
    let mqls_before = app.cycles().len();
    // Its own feedback writes came back: nothing re-evaluated, nothing written again.
    app.deliver_own_echoes(Source::Thresholds).await;
    assert_eq!(app.cycles().len(), mqls_before);

    app.clock.set(minutes(1));
    app.edit(
        "MQL_Threshold__c",
        &knob.id,
        json!({"Score_Threshold__c": knob.score - 25.0}),
    );
    assert_eq!(app.deliver_outbound().await, 1);
    app.wait_until("the turned knob's feedback", |app, p| {
        p.pending_writes == 0 && projected(app) > before
    })
    .await;
    // The knob turn's MQLs are in the CRM.
    assert!(app.cycles().len() > mqls_before);
    assert!(app.all_written(|c| c.mql_at == minutes(1)));
    app.assert_each_record_once();
    app.stop().await.unwrap();
}
