//! The daemon's metrics: a small registry the workers update with cheap calls (one short
//! lock, no allocation for a sample that exists) and its rendering in the Prometheus text
//! exposition format 0.0.4 for `GET /metrics`.
//!
//! Every metric is a [`Family`]: its name, help, type and label names are written once,
//! here, so that the names the README documents and the names scraped are the same. Counters
//! end in `_total`. Label values come from the daemon (segments come from the CRM) and are
//! escaped on output.
//!
//! Must not: keep per-person series (a label per lead would grow without bound), or do I/O.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::connectors::error::System;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a sample counts or measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// Events read from either system (pollers and webhooks), by kind.
    Events,
    /// Decisions the engine made, by kind.
    Decisions,
    /// MQL cycles opened, by segment.
    MqlsOpened,
    /// MQL cycles opened, by how the person qualified (score, account, go-live,
    /// hand-raiser <rule>).
    MqlsQualified,
    /// Writes waiting in the outbox.
    OutboxDepth,
    /// Outbox writes that failed, by class (`retry`: tried again later, `permanent`: failed
    /// for good and left for `mqlsync requeue`).
    OutboxFailures,
    /// API calls made, by system.
    ApiCalls,
    /// API calls left in today's budget (after the reserve), by system.
    ApiDailyBudgetRemaining,
    /// Webhook requests, by endpoint and result.
    WebhookRequests,
    /// Seconds since each poller source last read its source up to date.
    PollLagSeconds,
    /// Errors, by class (the connectors' `ErrorClass`, `store`, ...).
    Errors,
    /// CRM people the engine state holds (what the memory per person is counted by).
    People,
    /// The process's resident memory (Prometheus's standard process metric).
    ProcessResidentMemoryBytes,
    /// The process's user and system CPU time (Prometheus's standard process metric).
    ProcessCpuSeconds,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

impl Family {
    /// Every family, in the order they are rendered.
    pub const ALL: [Family; 14] = [
        Family::Events,
        Family::Decisions,
        Family::MqlsOpened,
        Family::MqlsQualified,
        Family::OutboxDepth,
        Family::OutboxFailures,
        Family::ApiCalls,
        Family::ApiDailyBudgetRemaining,
        Family::WebhookRequests,
        Family::PollLagSeconds,
        Family::Errors,
        Family::People,
        Family::ProcessResidentMemoryBytes,
        Family::ProcessCpuSeconds,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::Events => "mqlsync_events_total",
            Family::Decisions => "mqlsync_decisions_total",
            Family::MqlsOpened => "mqlsync_mqls_opened_total",
            Family::MqlsQualified => "mqlsync_mqls_qualified_total",
            Family::OutboxDepth => "mqlsync_outbox_depth",
            Family::OutboxFailures => "mqlsync_outbox_failures_total",
            Family::ApiCalls => "mqlsync_api_calls_total",
            Family::ApiDailyBudgetRemaining => "mqlsync_api_daily_budget_remaining",
            Family::WebhookRequests => "mqlsync_webhook_requests_total",
            Family::PollLagSeconds => "mqlsync_poll_lag_seconds",
            Family::Errors => "mqlsync_errors_total",
            Family::People => "mqlsync_people",
            Family::ProcessResidentMemoryBytes => "process_resident_memory_bytes",
            Family::ProcessCpuSeconds => "process_cpu_seconds_total",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Family::Events => "Events read from the CRM and the MAP (polls and webhooks), by kind.",
            Family::Decisions => "Decisions made by the engine, by kind.",
            Family::MqlsOpened => "MQL cycles opened, by segment.",
            Family::MqlsQualified => {
                "MQL cycles opened, by how the person qualified (score, account, go-live, hand-raiser <rule>)."
            }
            Family::OutboxDepth => "Writes waiting in the outbox.",
            Family::OutboxFailures => {
                "Outbox writes that failed, by class (retry: tried again later; permanent: needs mqlsync requeue)."
            }
            Family::ApiCalls => "API calls made, by system.",
            Family::ApiDailyBudgetRemaining => {
                "API calls left in today's budget after the reserve, by system."
            }
            Family::WebhookRequests => "Webhook requests, by endpoint and result.",
            Family::PollLagSeconds => {
                "Seconds since each poller source was last read up to date, by source."
            }
            Family::Errors => "Errors, by class.",
            Family::People => "CRM leads and contacts the engine state holds.",
            Family::ProcessResidentMemoryBytes => "Resident memory size in bytes.",
            Family::ProcessCpuSeconds => "Total user and system CPU time spent in seconds.",
        }
    }

    fn kind(self) -> Kind {
        match self {
            Family::OutboxDepth
            | Family::ApiDailyBudgetRemaining
            | Family::PollLagSeconds
            | Family::People
            | Family::ProcessResidentMemoryBytes => Kind::Gauge,
            _ => Kind::Counter,
        }
    }

    /// The label names; every sample of the family has one value for each.
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            Family::Events | Family::Decisions => &["kind"],
            Family::MqlsOpened => &["segment"],
            Family::MqlsQualified => &["qualified_by"],
            Family::OutboxDepth
            | Family::People
            | Family::ProcessResidentMemoryBytes
            | Family::ProcessCpuSeconds => &[],
            Family::OutboxFailures | Family::Errors => &["class"],
            Family::ApiCalls | Family::ApiDailyBudgetRemaining => &["system"],
            Family::WebhookRequests => &["endpoint", "result"],
            Family::PollLagSeconds => &["source"],
        }
    }
}

/// Which webhook a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Marketo,
    Salesforce,
}

impl Endpoint {
    pub const ALL: [Endpoint; 2] = [Endpoint::Marketo, Endpoint::Salesforce];

    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Marketo => "marketo",
            Endpoint::Salesforce => "salesforce",
        }
    }
}

/// What became of one webhook request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookResult {
    /// Acknowledged and queued for the daemon.
    Accepted,
    /// Acknowledged, but the daemon's queue was full: only the poller was woken (the poll
    /// reads the change anyway, a little later).
    Dropped,
    /// Acknowledged, about records of no object mqlsync reads (a misconfigured outbound
    /// message): nothing queued, so that the CRM stops retrying.
    Ignored,
    /// Refused with 401: secret missing or wrong, or the wrong organisation.
    Unauthorized,
    /// Refused with 400: not the JSON or SOAP expected.
    Malformed,
    /// Refused with 413.
    TooLarge,
    /// Refused with 503: the daemon cannot check the request yet (organisation id not known).
    Unavailable,
    /// Refused with 408: the body did not arrive in time.
    Timeout,
}

impl WebhookResult {
    pub const ALL: [WebhookResult; 8] = [
        WebhookResult::Accepted,
        WebhookResult::Dropped,
        WebhookResult::Ignored,
        WebhookResult::Unauthorized,
        WebhookResult::Malformed,
        WebhookResult::TooLarge,
        WebhookResult::Unavailable,
        WebhookResult::Timeout,
    ];

    pub fn label(self) -> &'static str {
        match self {
            WebhookResult::Accepted => "accepted",
            WebhookResult::Dropped => "dropped",
            WebhookResult::Ignored => "ignored",
            WebhookResult::Unauthorized => "unauthorized",
            WebhookResult::Malformed => "malformed",
            WebhookResult::TooLarge => "too_large",
            WebhookResult::Unavailable => "unavailable",
            WebhookResult::Timeout => "timeout",
        }
    }
}

fn system_label(system: System) -> &'static str {
    match system {
        System::Salesforce => "salesforce",
        System::Marketo => "marketo",
    }
}

/// The registry. Shared behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    samples: Mutex<BTreeMap<Family, BTreeMap<Vec<String>, f64>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry whose fixed series start at 0 (webhook requests by endpoint and result, the
    /// outbox depth), so that a dashboard sees them before the first event.
    pub fn new() -> Self {
        let metrics = Metrics {
            samples: Mutex::new(BTreeMap::new()),
        };
        for endpoint in Endpoint::ALL {
            for result in WebhookResult::ALL {
                metrics.add(
                    Family::WebhookRequests,
                    &[endpoint.label(), result.label()],
                    0.0,
                );
            }
        }
        metrics.set(Family::OutboxDepth, &[], 0.0);
        metrics
    }

    /// Adds `n` to a counter (or a gauge).
    ///
    /// # Panics
    /// When the number of labels is not the family's (a programming error).
    pub fn add(&self, family: Family, labels: &[&str], n: f64) {
        self.update(family, labels, |v| *v += n);
    }

    /// Sets a gauge (or a counter to a running total kept elsewhere).
    ///
    /// # Panics
    /// When the number of labels is not the family's (a programming error).
    pub fn set(&self, family: Family, labels: &[&str], value: f64) {
        self.update(family, labels, |v| *v = value);
    }

    fn update(&self, family: Family, labels: &[&str], f: impl FnOnce(&mut f64)) {
        assert_eq!(
            labels.len(),
            family.labels().len(),
            "{}: labels {:?}",
            family.name(),
            family.labels()
        );
        let mut samples = self.samples.lock().expect("metrics lock");
        let series = samples.entry(family).or_default();
        // Looked up by borrowed labels first: an existing sample costs no allocation.
        if let Some((_, v)) = series
            .iter_mut()
            .find(|(k, _)| k.iter().map(String::as_str).eq(labels.iter().copied()))
        {
            f(v);
            return;
        }
        let mut v = 0.0;
        f(&mut v);
        series.insert(labels.iter().map(|l| l.to_string()).collect(), v);
    }

    /// The value of one sample, if it exists.
    pub fn get(&self, family: Family, labels: &[&str]) -> Option<f64> {
        let samples = self.samples.lock().expect("metrics lock");
        samples.get(&family).and_then(|series| {
            series
                .iter()
                .find(|(k, _)| k.iter().map(String::as_str).eq(labels.iter().copied()))
                .map(|(_, v)| *v)
        })
    }

    pub fn count_event(&self, kind: &str) {
        self.add(Family::Events, &[kind], 1.0);
    }

    pub fn count_decision(&self, kind: &str) {
        self.add(Family::Decisions, &[kind], 1.0);
    }

    pub fn count_mql_opened(&self, segment: &str) {
        self.add(Family::MqlsOpened, &[segment], 1.0);
    }

    pub fn set_outbox_depth(&self, depth: u64) {
        self.set(Family::OutboxDepth, &[], depth as f64);
    }

    /// `class`: `retry` or `permanent`.
    pub fn count_outbox_failure(&self, class: &str) {
        self.add(Family::OutboxFailures, &[class], 1.0);
    }

    pub fn add_api_calls(&self, system: System, calls: u64) {
        self.add(Family::ApiCalls, &[system_label(system)], calls as f64);
    }

    /// Sets the calls counter to a total the connector keeps (its `sent()`).
    pub fn set_api_calls_total(&self, system: System, total: u64) {
        self.set(Family::ApiCalls, &[system_label(system)], total as f64);
    }

    pub fn set_daily_budget_remaining(&self, system: System, calls: u64) {
        self.set(
            Family::ApiDailyBudgetRemaining,
            &[system_label(system)],
            calls as f64,
        );
    }

    pub fn count_webhook(&self, endpoint: Endpoint, result: WebhookResult) {
        self.add(
            Family::WebhookRequests,
            &[endpoint.label(), result.label()],
            1.0,
        );
    }

    /// How many webhook requests had this result so far.
    pub fn webhook_count(&self, endpoint: Endpoint, result: WebhookResult) -> u64 {
        self.get(Family::WebhookRequests, &[endpoint.label(), result.label()])
            .unwrap_or(0.0) as u64
    }

    /// `source`: the poller's source (`thresholds`, `leads`, `score_activities`, ...).
    pub fn set_poll_lag(&self, source: &str, seconds: f64) {
        self.set(Family::PollLagSeconds, &[source], seconds);
    }

    pub fn count_error(&self, class: &str) {
        self.add(Family::Errors, &[class], 1.0);
    }

    /// The Prometheus text exposition (format 0.0.4): for every family its `# HELP` and
    /// `# TYPE` lines, then its samples sorted by label values.
    pub fn render(&self) -> String {
        let samples = self.samples.lock().expect("metrics lock");
        let mut out = String::new();
        for family in Family::ALL {
            let kind = match family.kind() {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(
                out,
                "# HELP {} {}",
                family.name(),
                escape_help(family.help())
            );
            let _ = writeln!(out, "# TYPE {} {kind}", family.name());
            let Some(series) = samples.get(&family) else {
                continue;
            };
            for (values, v) in series {
                out.push_str(family.name());
                if !values.is_empty() {
                    out.push('{');
                    for (i, (name, value)) in family.labels().iter().zip(values).enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{name}=\"{}\"", escape_label(value));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", number(*v));
            }
        }
        out
    }
}

/// A sample value as Prometheus reads it (`+Inf`, `-Inf`, `NaN`; integers without a point).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

/// `# HELP` text: backslash and newline escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A label value: backslash, double quote and newline escaped.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_is_exactly_prometheus_0_0_4() {
        let m = Metrics::new();
        m.count_event("score_change");
        m.count_event("score_change");
        m.count_event("threshold");
        m.count_decision("open_cycle");
        m.count_mql_opened("EMEA|Enterprise");
        m.count_mql_opened("weird \"seg\"\\\nment");
        m.add(Family::MqlsQualified, &["hand-raiser Demo Request"], 1.0);
        m.set_outbox_depth(17);
        m.count_outbox_failure("retry");
        m.add_api_calls(System::Salesforce, 3);
        m.add_api_calls(System::Salesforce, 2);
        m.set_api_calls_total(System::Marketo, 40);
        m.set_daily_budget_remaining(System::Marketo, 49_960);
        m.count_webhook(Endpoint::Marketo, WebhookResult::Accepted);
        m.count_webhook(Endpoint::Salesforce, WebhookResult::Unauthorized);
        m.set_poll_lag("thresholds", 1.5);
        m.set_poll_lag("leads", f64::INFINITY);
        m.count_error("retry");
        m.set(Family::People, &[], 2_000.0);
        m.set(Family::ProcessResidentMemoryBytes, &[], 31_457_280.0);
        m.set(Family::ProcessCpuSeconds, &[], 0.25);
        let expected = r#"# HELP mqlsync_events_total Events read from the CRM and the MAP (polls and webhooks), by kind.
# TYPE mqlsync_events_total counter
mqlsync_events_total{kind="score_change"} 2
mqlsync_events_total{kind="threshold"} 1
# HELP mqlsync_decisions_total Decisions made by the engine, by kind.
# TYPE mqlsync_decisions_total counter
mqlsync_decisions_total{kind="open_cycle"} 1
# HELP mqlsync_mqls_opened_total MQL cycles opened, by segment.
# TYPE mqlsync_mqls_opened_total counter
mqlsync_mqls_opened_total{segment="EMEA|Enterprise"} 1
mqlsync_mqls_opened_total{segment="weird \"seg\"\\\nment"} 1
# HELP mqlsync_mqls_qualified_total MQL cycles opened, by how the person qualified (score, account, go-live, hand-raiser <rule>).
# TYPE mqlsync_mqls_qualified_total counter
mqlsync_mqls_qualified_total{qualified_by="hand-raiser Demo Request"} 1
# HELP mqlsync_outbox_depth Writes waiting in the outbox.
# TYPE mqlsync_outbox_depth gauge
mqlsync_outbox_depth 17
# HELP mqlsync_outbox_failures_total Outbox writes that failed, by class (retry: tried again later; permanent: needs mqlsync requeue).
# TYPE mqlsync_outbox_failures_total counter
mqlsync_outbox_failures_total{class="retry"} 1
# HELP mqlsync_api_calls_total API calls made, by system.
# TYPE mqlsync_api_calls_total counter
mqlsync_api_calls_total{system="marketo"} 40
mqlsync_api_calls_total{system="salesforce"} 5
# HELP mqlsync_api_daily_budget_remaining API calls left in today's budget after the reserve, by system.
# TYPE mqlsync_api_daily_budget_remaining gauge
mqlsync_api_daily_budget_remaining{system="marketo"} 49960
# HELP mqlsync_webhook_requests_total Webhook requests, by endpoint and result.
# TYPE mqlsync_webhook_requests_total counter
mqlsync_webhook_requests_total{endpoint="marketo",result="accepted"} 1
mqlsync_webhook_requests_total{endpoint="marketo",result="dropped"} 0
mqlsync_webhook_requests_total{endpoint="marketo",result="ignored"} 0
mqlsync_webhook_requests_total{endpoint="marketo",result="malformed"} 0
mqlsync_webhook_requests_total{endpoint="marketo",result="timeout"} 0
mqlsync_webhook_requests_total{endpoint="marketo",result="too_large"} 0
mqlsync_webhook_requests_total{endpoint="marketo",result="unauthorized"} 0
mqlsync_webhook_requests_total{endpoint="marketo",result="unavailable"} 0
mqlsync_webhook_requests_total{endpoint="salesforce",result="accepted"} 0
mqlsync_webhook_requests_total{endpoint="salesforce",result="dropped"} 0
mqlsync_webhook_requests_total{endpoint="salesforce",result="ignored"} 0
mqlsync_webhook_requests_total{endpoint="salesforce",result="malformed"} 0
mqlsync_webhook_requests_total{endpoint="salesforce",result="timeout"} 0
mqlsync_webhook_requests_total{endpoint="salesforce",result="too_large"} 0
mqlsync_webhook_requests_total{endpoint="salesforce",result="unauthorized"} 1
mqlsync_webhook_requests_total{endpoint="salesforce",result="unavailable"} 0
# HELP mqlsync_poll_lag_seconds Seconds since each poller source was last read up to date, by source.
# TYPE mqlsync_poll_lag_seconds gauge
mqlsync_poll_lag_seconds{source="leads"} +Inf
mqlsync_poll_lag_seconds{source="thresholds"} 1.5
# HELP mqlsync_errors_total Errors, by class.
# TYPE mqlsync_errors_total counter
mqlsync_errors_total{class="retry"} 1
# HELP mqlsync_people CRM leads and contacts the engine state holds.
# TYPE mqlsync_people gauge
mqlsync_people 2000
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 31457280
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 0.25
"#;
        assert_eq!(m.render(), expected);
        assert_eq!(
            m.webhook_count(Endpoint::Salesforce, WebhookResult::Unauthorized),
            1
        );
    }

    #[test]
    fn counters_end_in_total_and_gauges_do_not() {
        for family in Family::ALL {
            assert_eq!(
                family.name().ends_with("_total"),
                family.kind() == Kind::Counter,
                "{}",
                family.name()
            );
            // Ours, or Prometheus's standard process metrics.
            assert!(
                family.name().starts_with("mqlsync_") || family.name().starts_with("process_"),
                "{}",
                family.name()
            );
        }
    }

    #[test]
    fn escaping_and_special_values() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_help("x\\y\nz"), "x\\\\y\\nz");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.25");
    }

    #[test]
    #[should_panic(expected = "mqlsync_events_total")]
    fn a_sample_with_the_wrong_labels_is_a_programming_error() {
        Metrics::new().add(Family::Events, &[], 1.0);
    }
}
