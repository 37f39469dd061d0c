//! `mqlsync run --once`: one full sync cycle. Pull what changed since the stored cursors
//! (thresholds with deletions, accounts when the mapping reads them, leads, contacts,
//! opportunities and reps' MQL edits from the CRM; Change Score activities, with the
//! hand-raiser rules' activities in the same calls, and the CRM links of their leads from the
//! MAP), reconcile through
//! the engine, commit each page with its cursor in one transaction, then drain the outbox
//! through sObject Collections (200 records a call, one result per record).
//!
//! A record that cannot be read fails that record (counted, logged), not the page; a MAP record
//! that cannot even be keyed (a lead without `id`) fails its page, so that no cursor moves past
//! it. A daily limit or budget reserve stops the run cleanly after the last committed page and
//! says when it can resume. Run twice, the second run writes nothing: every event is a replay
//! and every outbox row is already written. A dry run ([`RunSettings::dry_run`]) does the same
//! reads and decisions and lists the writes instead of sending them.
//!
//! Each phase is a tracing span (a progress bar on a terminal) and logs a line per committed
//! page; the summary counts every request the clients sent against the fewest the work needs.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;
use tracing_indicatif::span_ext::IndicatifSpanExt;

use crate::config::GoLive;
use crate::connectors::http::Sent;
use crate::connectors::marketo::extract::{ExtractError, ExtractSettings, PauseBy};
use crate::connectors::marketo::{ActivityCursor, ActivityPages, ActivitySource};
use crate::connectors::salesforce::MAX_SOQL_CHARS;
use crate::connectors::salesforce::incremental::{ChangePage, IncrementalRead};
use crate::connectors::salesforce::soql::{self, ModstampCursor, datetime_literal};
use crate::connectors::{
    ConnectorError, Crm, ErrorClass, Map, Priority, QueryPages, RecordOutcome, WriteStatus,
};
use crate::engine::model::{
    CrmKind, CycleStatus, CycleWritten, Event, MapActivity, MapLink, ScoreChange,
};
use crate::engine::{Context, EngineState, Policy, Visibility, reconcile, sla_when_written};
use crate::mapping::Mapping;
use crate::store::{Batch, OUTBOX_MAX_ATTEMPTS, OutboxRow, Settlement, Store, StoreError};

use super::crm_read::{CrmObject, ReadCount};
use super::current;
use super::records::{self, RecordError, ScoreFields};
use super::writes::{self, AlertState, Write};

/// Records on a Marketo activities page.
const MAP_PAGE_SIZE: u64 = 300;
/// Ids a Marketo leads-by-filter call takes.
const MAP_FILTER_VALUES: usize = 300;
/// Score changes that may wait for their leads' links before the look-up is made with fewer
/// than 300 ids (bounds memory when new leads are rare among many changes).
const MAX_WAITING_CHANGES: usize = 50_000;
/// Outbox rows a drain loads at a time: enough for a few Bulk API 2.0 jobs on a large
/// backfill, few enough that their payloads (about 3 KB each in memory) stay small.
const OUTBOX_CHUNK: usize = 25_000;
/// Chunks of the outbox whose Bulk API 2.0 jobs run at once (see
/// [`Run::drain_outbox`]): each job waits for its processing (two status polls, 2 and 4 s
/// apart, at the least), so three at once take about a third of the time of one after
/// another, for about 160 MB more heap a chunk held (the backfill bench's peak: 1,332 MiB
/// with two, 1,494-1,523 with three).
const OUTBOX_CHUNKS_IN_FLIGHT: usize = 3;
/// Where the store keeps the MAP's score fields as last described.
const SCORE_FIELDS_CURSOR: &str = "map.score_fields";

/// Why a run stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Transparent: the connector's message names the cause, once (with `{0}` and a source,
    /// `{:#}` printed it twice).
    #[error(transparent)]
    Remote(#[from] ConnectorError),
    /// The MAP returned a record the sync cannot key: the page it belongs to is not
    /// committed, so its cursor does not move past it.
    #[error(
        "Marketo's {call} returned {detail}; nothing of the pages waiting for it was committed, so the next run reads them again (if it persists, the MAP is returning records it cannot identify: ask Marketo support)"
    )]
    Unkeyed { call: String, detail: String },
    /// A backfill on a store that has gone live: what it would rebuild comes before cycles
    /// that already exist.
    #[error(
        "this store went live at {at}: a backfill rebuilds the MQL history before go-live, so it must run before the first `mqlsync run --once` (or into a new store, before its first run)"
    )]
    AlreadyLive { at: Timestamp },
    /// A backfill of another window was started (or done) on this store.
    #[error(
        "this store holds a backfill of {since}..{until} ({}): run that one again to finish it, or backfill into a new store",
        if *complete { "complete" } else { "not finished" }
    )]
    OtherBackfill {
        since: Timestamp,
        until: Timestamp,
        complete: bool,
    },
    #[error(
        "cursor {name} in the store cannot be read ({detail}); delete it with care to re-read from the start"
    )]
    Cursor { name: String, detail: String },
    /// A Marketo bulk extract stopped; the message names the window to resume from.
    #[error(transparent)]
    Extract(#[from] ExtractError),
}

impl SyncError {
    /// When the run may resume, for a daily limit or the budget reserve.
    pub fn resume_at(&self) -> Option<Timestamp> {
        match self {
            SyncError::Remote(e) => match e.class() {
                ErrorClass::Checkpoint { resume_at } => Some(resume_at),
                _ => None,
            },
            SyncError::Extract(e) => e.resume_at(),
            _ => None,
        }
    }
}

/// Settings of one run.
#[derive(Clone, Debug)]
pub struct RunSettings {
    /// Re-read this far behind each CRM cursor (records committed late).
    pub lookback: Duration,
    /// On the first run, read MAP activities from this long before now (backfill reads older
    /// history).
    pub initial_window: SignedDuration,
    /// Empty activity pages in a row before a run stops reading (the cursor keeps the place).
    pub max_empty_pages: usize,
    /// What the clients had sent when the run began, when the caller signed in before calling
    /// [`run_once`] (so that the sign-in counts with the run); `None`: at the call.
    pub sent_before: Option<(Sent, Sent)>,
    /// Read every linked MAP lead's current score again (`run --once --full`); a store's first
    /// run does it anyway (see [`super::current`]).
    pub full: bool,
    /// What the store's first run does with people already at or above their threshold.
    pub go_live: GoLive,
    /// Rebuild the MQL history of `[since, until)` instead of syncing (`mqlsync backfill`).
    pub backfill: Option<BackfillWindow>,
    /// Read and decide as usual but send no write: each record the run would write is listed
    /// in [`RunSummary::plan`] instead. The caller runs a dry run on a copy of the store
    /// (see [`super::dry_run`]), so that nothing is committed either.
    pub dry_run: bool,
    /// When and how the MAP is read by bulk extract instead of its REST pages.
    pub bulk_reads: BulkReads,
}

/// When the MAP is read by Marketo's bulk extract (export jobs over windows of at most 31
/// days) rather than page by page: a backfill's score history over a long range, and the
/// current scores of a large instance (see [`super::bulk_read`]).
#[derive(Clone, Debug)]
pub struct BulkReads {
    /// A backfill over more days than this reads the score history by bulk activity extract;
    /// a shorter one pages through the activities API.
    pub activities_above_days: u32,
    /// How a first run (or `--full`) reads the current scores.
    pub current_scores: CurrentScoreRead,
    /// When the instance's oldest lead was created: where a bulk lead extract starts. Without
    /// it the current scores are read by filter.
    pub leads_since: Option<Timestamp>,
    pub extract: ExtractSettings,
    pub pause: PauseBy,
}

impl Default for BulkReads {
    fn default() -> Self {
        BulkReads {
            activities_above_days: 31,
            current_scores: CurrentScoreRead::Auto,
            leads_since: None,
            extract: ExtractSettings::default(),
            pause: PauseBy::Tokio,
        }
    }
}

pub use crate::config::CurrentScoreRead;

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            lookback: Duration::from_secs(300),
            initial_window: SignedDuration::from_hours(24 * 30),
            max_empty_pages: 50,
            sent_before: None,
            full: false,
            go_live: GoLive::Mql,
            backfill: None,
            dry_run: false,
            bulk_reads: BulkReads::default(),
        }
    }
}

/// The period a backfill rebuilds, and how it writes.
#[derive(Clone, Debug)]
pub struct BackfillWindow {
    pub since: Timestamp,
    pub until: Timestamp,
    /// Above this many records of an object to write, they go through Bulk API 2.0 ingest
    /// instead of sObject Collections.
    pub bulk_above: usize,
}

/// One object's writes of an outbox chunk: the object, its external id field (`None`: an
/// update by record id), the writes, and the label they are counted under.
type WriteGroup = (String, Option<String>, Vec<Write>, &'static str);

/// What writing a group in one call came back with.
type WriteResult = Result<Vec<RecordOutcome>, ConnectorError>;

/// A Bulk API 2.0 job of a group, under way in its task (stopped if dropped).
type BulkJob = AbortOnDropHandle<WriteResult>;

/// A chunk of the outbox planned, its Bulk API 2.0 jobs (a backfill's) under way.
struct Started {
    /// MQL records, leads, contacts and threshold records, in that order.
    groups: [WriteGroup; 4],
    in_bulk: [Option<BulkJob>; 4],
    tasks: Vec<Write>,
    first_writes: BTreeMap<String, crate::engine::Cycle>,
    /// Rows settled without a call (unsendable, superseded).
    results: Vec<(OutboxRow, Settlement)>,
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunSummary {
    /// Records read, by source.
    pub read: BTreeMap<String, usize>,
    /// Records that could not be read (object, id, field, message).
    pub unreadable: Vec<String>,
    pub events: usize,
    pub decisions: BTreeMap<String, usize>,
    /// MQL cycles opened, by segment (the daemon's metrics; not printed).
    #[serde(skip)]
    pub opened_by_segment: BTreeMap<String, usize>,
    /// MQL cycles opened, by how the person qualified: `score` (the score met the
    /// threshold), `account` (the account's score did), `go-live` (already above it when
    /// mqlsync went live), or `hand-raiser <rule>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub qualified_by: BTreeMap<String, usize>,
    /// Records written, by call.
    pub written: BTreeMap<String, usize>,
    /// Outbox rows settled without a write, by why: `task_found` (an earlier run created the
    /// task and stopped before it heard back), `task_superseded` (the alert's cycle moved on).
    pub settled: BTreeMap<String, usize>,
    /// Records the CRM refused, and rows mqlsync does not send (each kept with its outbox
    /// row and error).
    pub write_failures: Vec<String>,
    /// The HTTP requests this run sent, by system (token requests, retries and describes
    /// included): what a count at the server gives.
    pub calls: BTreeMap<String, u64>,
    /// The fewest calls the same work could take, by system, computed from the work (records
    /// read and written, the page and batch sizes of each API), never from the calls made: a
    /// token request when the run had to sign in, Marketo's daily usage, each query's pages of
    /// 2,000, activities pages of 300, link look-ups of 300 ids, alert-key look-ups as long as
    /// SOQL allows, writes of 200. A describe is not in it.
    pub minimum_calls: BTreeMap<String, u64>,
    /// The writes left parked in the outbox when the run ended, this run's and earlier runs'
    /// (refused for good, or refused for now [`OUTBOX_MAX_ATTEMPTS`] times): they wait for the
    /// cause to be fixed in the CRM and `mqlsync requeue`. A run that leaves any exits 3.
    pub parked: Parked,
    /// Every record this run sent, with how it ended (empty in a dry run).
    pub records: Vec<RecordWrite>,
    /// A dry run's writes: every record it would send, none sent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<PlannedWrite>,
    /// The store's first run: who was already at or above their threshold when it went live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub go_live: Option<GoLiveReport>,
    /// What a backfill rebuilt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backfill: Option<super::replay::BackfillReport>,
    /// How the current scores were read (first run, `--full`), and what each way costs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_scores_read: Option<current::ReadChoice>,
    /// A write step ([`Syncer::write_step`]) handed back to the loop between two groups of
    /// writes: the rows it did not reach wait in the outbox for the next step.
    #[serde(skip)]
    pub writes_left: bool,
}

/// What going live did (or, with `go_live = "wait"`, left waiting): the people already at or
/// above their threshold, not excluded and without any cycle, counted by segment and by their
/// current CRM status.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GoLiveReport {
    pub at: Timestamp,
    pub setting: GoLive,
    /// With `mql`: the MQLs opened at go-live; with `wait`: the people left waiting.
    pub people: usize,
    pub by_segment: BTreeMap<String, usize>,
    pub by_status: BTreeMap<String, usize>,
}

/// One record a run sent to the CRM and how it ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecordWrite {
    /// The CRM object (`MQL__c`, `Lead`, `Contact`, `Task`).
    pub object: String,
    /// The record's CRM id: the one the CRM reported, else the one the write named.
    pub crm_id: Option<String>,
    /// The MQL record's external id, or an alert task's key.
    pub external_id: Option<String>,
    /// `create` or `update` as the CRM reported it; `upsert` when it did not say.
    pub action: String,
    /// `written`, `already_done` (the CRM said the work was done), `retry` (refused for now:
    /// sent again next run), `parked` (refused for good, or for now too many times) or
    /// `no_result` (the CRM said nothing of it: sent again next run).
    pub outcome: String,
    /// The CRM's error, for `retry` and `parked`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One record a dry run would send.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlannedWrite {
    pub object: String,
    /// The outbox key the write would settle.
    pub key: String,
    pub crm_id: Option<String>,
    pub external_id: Option<String>,
    /// `create` (a new MQL record or task), `update`, or `upsert` (an MQL record whose
    /// previous write the store does not know).
    pub action: String,
    /// The fields it would send, each with what mqlsync last wrote there when the store
    /// knows it; fields that would not change are left out.
    pub fields: Vec<FieldChange>,
}

/// A field of a planned write.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldChange {
    pub field: String,
    /// What mqlsync last wrote there (absent: nothing known; `null`: written empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<serde_json::Value>,
    pub to: serde_json::Value,
}

/// Writes waiting in the outbox for `mqlsync requeue`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Parked {
    pub count: usize,
    /// The first [`PARKED_LISTED`] by outbox key, as `key: error`.
    pub first: Vec<String>,
}

/// Parked writes a summary lists by name (`mqlsync status` counts them all).
pub const PARKED_LISTED: usize = 50;

/// Whether an alert still asks its rep for something: the cycle is Open (not yet accepted,
/// rejected or converted) and owned by that rep. A first run catching up on weeks of history,
/// or a writer held up by an outage, would otherwise hand each rep of a round-robin chain a
/// task for an MQL that has since moved on. A current alert is due on the date of the SLA
/// deadline in the cycle's team's time zone: for a cycle whose record this run writes first,
/// the deadline that starts with that write at `now`.
fn alert_state(
    state: &EngineState,
    policy: &Policy,
    alert: &writes::Alert<'_>,
    now: Timestamp,
) -> AlertState {
    let cycle = state.persons.get(alert.crm_id).and_then(|p| {
        p.cycles.iter().find(|c| {
            c.external_id == alert.external_id
                && c.status == CycleStatus::Open
                && c.owner_id.as_deref() == Some(alert.owner_id)
        })
    });
    let Some(cycle) = cycle else {
        return AlertState::Superseded;
    };
    let zone = cycle
        .team
        .as_deref()
        .and_then(|name| policy.team_named(name))
        .map_or(jiff::tz::TimeZone::UTC, |t| t.calendar.time_zone.clone());
    let due = cycle
        .sla_due_at
        .or_else(|| sla_when_written(policy, cycle, now).map(|sla| sla.due));
    AlertState::Current {
        due: due.map(|due| due.to_zoned(zone).date()),
    }
}

/// The cursor `name` as `store` holds it (the default before the first read).
pub(super) fn stored_cursor<T: serde::de::DeserializeOwned + Default>(
    store: &Store,
    name: &str,
) -> Result<T, SyncError> {
    match store.cursor(name)? {
        None => Ok(T::default()),
        Some(text) => serde_json::from_str(&text).map_err(|e| SyncError::Cursor {
            name: name.into(),
            detail: e.to_string(),
        }),
    }
}

/// The span of one phase of a run (an object read, the score changes, the writes): log lines
/// inside it carry its name, and on a terminal it is drawn as a progress bar.
pub(super) fn phase(name: &str) -> tracing::Span {
    tracing::info_span!(
        "phase",
        phase = name,
        "indicatif.pb_show" = tracing::field::Empty
    )
}

/// The queries that look up alert keys: `SELECT {field} FROM {object} WHERE {field} IN (...)`,
/// each as long as SOQL allows (100,000 characters: about 1,000 keys of 90), so that a first
/// run's thousands of alerts cost a few look-ups. A statement that long does not fit in a
/// query URL; the connector sends it in a Composite request's body.
fn alert_lookups(object: &str, key_field: &str, keys: &[&str]) -> Vec<String> {
    let head = format!("SELECT {key_field} FROM {object} WHERE {key_field} IN (");
    let mut queries = Vec::new();
    let mut query = String::new();
    for key in keys {
        let quoted = soql::quote(key);
        // `, ` before every key but the first, and the closing `)`.
        if !query.is_empty() && query.len() + 2 + quoted.len() + 1 > MAX_SOQL_CHARS {
            query.push(')');
            queries.push(std::mem::take(&mut query));
        }
        if query.is_empty() {
            query.push_str(&head);
        } else {
            query.push_str(", ");
        }
        query.push_str(&quoted);
    }
    if !query.is_empty() {
        query.push(')');
        queries.push(query);
    }
    queries
}

/// The field-history object of an object: `MQL_Threshold__c` -> `MQL_Threshold__History`, and
/// for a standard object `Lead` -> `LeadHistory`.
pub(super) fn history_object(object: &str) -> String {
    match object.strip_suffix("__c") {
        Some(custom) => format!("{custom}__History"),
        None => format!("{object}History"),
    }
}

/// The field of a history row that names its record: `ParentId` on a custom object's history,
/// `LeadId` on `LeadHistory`, `ContactId` on `ContactHistory`.
pub(super) fn history_parent_field(object: &str) -> String {
    if object.ends_with("__c") {
        "ParentId".into()
    } else {
        format!("{object}Id")
    }
}

/// Which Change Score activities a run reads.
pub(super) struct ActivityRead {
    /// The cursor they commit with.
    pub cursor: String,
    /// Where a read without a cursor starts.
    pub start: Timestamp,
    /// Activities at or after this instant are left unread (a backfill's end).
    pub until: Option<Timestamp>,
}

/// An activities page read but not yet committed: it waits until the links of its new MAP
/// leads are known.
struct WaitingPage {
    changes: Vec<ScoreChange>,
    /// Activities the hand-raiser rules name, read in the same calls (usually none).
    activities: Vec<MapActivity>,
    /// The leads whose links this page is the first to need, in the order queued.
    needs: Vec<i64>,
    /// The page may commit once this many queued leads have been asked for.
    ready_after: usize,
    cursor: String,
}

/// The MAP leads whose CRM links a run looks up: queued once each, asked for 300 at a time in
/// the order queued, and held until the page that needs them commits.
#[derive(Default)]
struct LinkLookup {
    seen: HashSet<i64>,
    queue: Vec<i64>,
    asked: usize,
    found: HashMap<i64, MapLink>,
}

impl LinkLookup {
    /// Queues the leads not queued before in this run; returns them.
    fn queue(&mut self, ids: impl Iterator<Item = i64>) -> Vec<i64> {
        let new: Vec<i64> = ids.filter(|id| self.seen.insert(*id)).collect();
        self.queue.extend_from_slice(&new);
        new
    }

    fn queued(&self) -> usize {
        self.queue.len()
    }

    fn asked(&self) -> usize {
        self.asked
    }

    fn unasked(&self) -> usize {
        self.queue.len() - self.asked
    }

    /// The next leads to ask for (at most 300), counted as asked.
    fn next_chunk(&mut self) -> Vec<i64> {
        let end = (self.asked + MAP_FILTER_VALUES).min(self.queue.len());
        let chunk = self.queue[self.asked..end].to_vec();
        self.asked = end;
        chunk
    }

    fn found(&mut self, link: MapLink) {
        self.found.insert(link.map_lead_id, link);
    }

    /// The link found for a lead (none when the MAP did not return it), handed out once.
    fn take(&mut self, id: i64) -> Option<MapLink> {
        self.found.remove(&id)
    }
}

/// Score changes on their way into the store: the pages waiting for their leads' links, and
/// what was read.
pub(super) struct Intake {
    cursor: String,
    links: LinkLookup,
    waiting: VecDeque<WaitingPage>,
    /// Activities read (of any field) and pages (or files) they came in.
    pub(super) read: usize,
    pub(super) pages: u64,
}

impl Intake {
    /// An intake whose pages commit with the cursor named `cursor`.
    pub(super) fn new(cursor: &str) -> Intake {
        Intake {
            cursor: cursor.to_string(),
            links: LinkLookup::default(),
            waiting: VecDeque::new(),
            read: 0,
            pages: 0,
        }
    }
}

/// What outlives passes: the clients, the mapping and policy, the store and the engine state
/// loaded from it once. `run --once` makes one and runs one pass of every source on it; the
/// daemon keeps one for its whole life and runs one source's pass at a time on it, each with
/// its own `now` and summary (the store has one writer and the engine state lives in memory,
/// so loading it once is both the cheapest and the only consistent way).
///
/// The engine state only changes inside [`Run::commit`] and the writer's settlement, right
/// before the store transaction that saves it: a pass stopped by a remote error (or dropped at
/// an `await`) leaves the state equal to the store. A store error leaves it ahead of the store,
/// and then the syncer must not be used again.
pub struct Syncer<'a, C: Crm, M: Map> {
    pub(super) crm: &'a C,
    map: &'a M,
    pub(super) mapping: &'a Mapping,
    policy: &'a Policy,
    pub(super) store: &'a mut Store,
    state: EngineState,
    pub(super) settings: &'a RunSettings,
    /// What each client has sent so far, `(salesforce, marketo)`.
    sent: &'a (dyn Fn() -> (Sent, Sent) + Send + Sync),
    /// Marketo usage reads made for the next pass (see [`Syncer::usage_read`]).
    usage_reads: u64,
}

/// The reads a source's pass makes (the daemon's pollers; `run --once` makes them all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Threshold records (the knob) and their field history.
    Thresholds,
    /// Leads and contacts.
    People,
    /// Reps' edits of MQL records.
    MqlEdits,
    /// Opportunities (exclusions, conversions).
    Opportunities,
    /// The MAP's Change Score activities and the CRM links of their leads.
    Activities,
}

impl Source {
    pub const ALL: [Source; 5] = [
        Source::Thresholds,
        Source::People,
        Source::MqlEdits,
        Source::Opportunities,
        Source::Activities,
    ];

    /// The name in config keys, logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Source::Thresholds => "thresholds",
            Source::People => "people",
            Source::MqlEdits => "mql_edits",
            Source::Opportunities => "opportunities",
            Source::Activities => "activities",
        }
    }

    /// The system the source reads.
    pub fn system(self) -> crate::connectors::error::System {
        match self {
            Source::Activities => crate::connectors::error::System::Marketo,
            _ => crate::connectors::error::System::Salesforce,
        }
    }
}

impl<'a, C: Crm, M: Map> Syncer<'a, C, M> {
    /// Loads the engine state from `store` (the caller holds the writer lock).
    pub fn load(
        crm: &'a C,
        map: &'a M,
        mapping: &'a Mapping,
        policy: &'a Policy,
        store: &'a mut Store,
        settings: &'a RunSettings,
        sent: &'a (dyn Fn() -> (Sent, Sent) + Send + Sync),
    ) -> Result<Self, SyncError> {
        let state = store.load_engine(policy)?;
        Ok(Syncer {
            crm,
            map,
            mapping,
            policy,
            store,
            state,
            settings,
            sent,
            usage_reads: 0,
        })
    }

    /// Reads Marketo's count of today's calls (every integration's, since midnight US
    /// Central), so that the budget's reserve holds across processes; counted with the next
    /// pass.
    pub async fn refresh_usage(&mut self) -> Result<(), SyncError> {
        self.map.refresh_usage().await?;
        self.usage_reads += 1;
        Ok(())
    }

    /// A pass at `now`, with an empty summary.
    fn pass(&mut self, now: Timestamp) -> Run<'_, C, M> {
        Run {
            crm: self.crm,
            map: self.map,
            mapping: self.mapping,
            policy: self.policy,
            store: &mut *self.store,
            state: &mut self.state,
            now,
            settings: self.settings,
            summary: RunSummary::default(),
            sf_min: 0,
            mkto_min: std::mem::take(&mut self.usage_reads),
            sent: self.sent,
            later_cursors: Vec::new(),
            yield_at: None,
            replaying: self.settings.backfill.is_some(),
            progress_by_time: false,
        }
    }

    /// Runs `work` as one pass at `now` and says what it did: its calls (what the clients
    /// sent from `before`, else from the pass's start) against the fewest for its work.
    async fn run_pass<F>(
        &mut self,
        now: Timestamp,
        before: Option<(Sent, Sent)>,
        work: F,
    ) -> Result<RunSummary, SyncError>
    where
        F: for<'r, 'p> FnOnce(&'r mut Run<'p, C, M>) -> PassFuture<'r>,
    {
        let before = before.unwrap_or_else(self.sent);
        let mut run = self.pass(now);
        let result = work(&mut run).await;
        let summary = run.finish(before);
        result.map(|()| summary)
    }

    /// Runs `work` as one pass at `now` that makes no call itself, and says what it did.
    pub(super) fn in_pass<R>(
        &mut self,
        now: Timestamp,
        work: impl FnOnce(&mut Run<'_, C, M>) -> R,
    ) -> (R, RunSummary) {
        let before = (self.sent)();
        let mut run = self.pass(now);
        let result = work(&mut run);
        (result, run.finish(before))
    }

    /// Every source, then (a store's first pass) the current scores and go-live, the clock,
    /// and the writes: what `run --once` does, and the daemon's first pass.
    pub async fn full_pass(
        &mut self,
        now: Timestamp,
        before: Option<(Sent, Sent)>,
    ) -> Result<RunSummary, SyncError> {
        self.run_pass(now, before, |run| Box::pin(run.all())).await
    }

    /// One source's reads since its cursors, each page committed with its decisions (the
    /// outbox rows they make wait for [`Syncer::write`]).
    pub async fn poll(&mut self, now: Timestamp, source: Source) -> Result<RunSummary, SyncError> {
        self.run_pass(now, None, move |run| Box::pin(run.source(source)))
            .await
    }

    /// Lets time pass up to `now`: the timers due (a scheduled threshold taking effect, an
    /// SLA running out, a reassignment) fire at their own instants, and their decisions
    /// commit (see [`Run::clock`]).
    pub async fn tick(&mut self, now: Timestamp) -> Result<RunSummary, SyncError> {
        self.run_pass(now, None, |run| Box::pin(async move { run.clock() }))
            .await
    }

    /// The knob's feedback on the threshold records whose version or day changed (see
    /// [`super::knob`]): the daemon asks once its outbox is empty, so that a knob turn's MQL
    /// records go first.
    /// `None`: the mapping names no feedback field, and no pass ran.
    pub async fn knob_feedback(&mut self, now: Timestamp) -> Result<Option<RunSummary>, SyncError> {
        if !super::knob::mapped(self.mapping) {
            return Ok(None);
        }
        self.run_pass(now, None, |run| {
            Box::pin(async move { run.knob_feedback() })
        })
        .await
        .map(Some)
    }

    /// Drains the outbox (see [`Run::drain_outbox`]).
    pub async fn write(&mut self, now: Timestamp) -> Result<RunSummary, SyncError> {
        self.run_pass(now, None, |run| {
            Box::pin(run.drain_outbox().instrument(phase("writes")))
        })
        .await
    }

    /// One step of the daemon's writer: the waiting writes group by group (MQL records,
    /// leads' stamps, contacts' stamps, alert tasks), handing back to the loop between two
    /// groups once `yield_at` has passed (a poll is due), so that a score push's MQL record
    /// does not wait behind the stamps and tasks of the last poll. Each group's rows are
    /// settled as its calls are answered; `writes_left` says whether others wait.
    pub async fn write_step(
        &mut self,
        now: Timestamp,
        yield_at: Option<tokio::time::Instant>,
    ) -> Result<RunSummary, SyncError> {
        self.run_pass(now, None, move |run| {
            Box::pin(
                async move {
                    run.yield_at = yield_at;
                    run.drain_outbox().await
                }
                .instrument(phase("writes")),
            )
        })
        .await
    }

    /// The store, to read (the daemon's checkpoints ask it whether it was written).
    pub fn store(&self) -> &Store {
        self.store
    }

    /// The next instant a timer of the engine fires: when something is due by time alone.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.state.next_wakeup()
    }

    /// Whether the store has gone live (its first full pass ended).
    pub fn live(&self) -> bool {
        self.state.meta.went_live.is_some()
    }

    /// Gives the store's page cache back to the system (see [`Store::release_memory`]).
    pub fn release_memory(&self) -> Result<(), SyncError> {
        Ok(self.store.release_memory()?)
    }

    /// Writes waiting in the outbox, and writes parked there.
    pub fn outbox_depth(&self) -> Result<(usize, usize), SyncError> {
        Ok(self.store.outbox_depth()?)
    }

    /// The writes parked in the outbox, as a summary lists them.
    pub fn parked(&self) -> Result<Parked, SyncError> {
        let (count, first) = self.store.outbox_parked(PARKED_LISTED)?;
        Ok(Parked {
            count,
            first: first
                .into_iter()
                .map(|(k, e)| format!("{k}: {e}"))
                .collect(),
        })
    }

    /// Saves a snapshot of the scores, so that the next start loads without replaying the
    /// score history.
    pub fn save_scores(&mut self) -> Result<(), SyncError> {
        Ok(self.store.save_scores(&mut self.state)?)
    }

    /// The engine state, read-only (tests, `explain`-like views).
    pub fn state(&self) -> &EngineState {
        &self.state
    }
}

/// The future of a pass's work, borrowing the pass.
type PassFuture<'r> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SyncError>> + Send + 'r>>;

/// One pass: the clients, the store and the engine state it moves values between, at its own
/// `now`.
pub(super) struct Run<'a, C: Crm, M: Map> {
    pub(super) crm: &'a C,
    pub(super) map: &'a M,
    pub(super) mapping: &'a Mapping,
    pub(super) policy: &'a Policy,
    pub(super) store: &'a mut Store,
    pub(super) state: &'a mut EngineState,
    pub(super) now: Timestamp,
    pub(super) settings: &'a RunSettings,
    pub(super) summary: RunSummary,
    pub(super) sf_min: u64,
    pub(super) mkto_min: u64,
    /// Replaying history (a backfill): score changes and threshold versions are decided at
    /// their own instants, and the cycles they open are marked backfilled (no SLA, no alert).
    pub(super) replaying: bool,
    /// The phase's progress bar counts time or windows (set by the phase), not records.
    pub(super) progress_by_time: bool,
    /// What each client has sent so far, `(salesforce, marketo)`: the calls figures.
    sent: &'a (dyn Fn() -> (Sent, Sent) + Send + Sync),
    /// Cursors to commit with the next page (what a run learnt that is not a page position).
    pub(super) later_cursors: Vec<(String, String)>,
    /// Hand back to the daemon's loop between two groups of writes from this instant on
    /// (see [`Syncer::write_step`]).
    pub(super) yield_at: Option<tokio::time::Instant>,
}

/// Runs one sync cycle at `now` (the caller's clock). Holds the store's writer lock for the
/// whole run: a second run on the same store (an overlapping cron job) stops at once with
/// [`StoreError::Busy`]. `sent` says what each client, `(salesforce, marketo)`, has sent so
/// far (their [`Sent`] counters): the run's calls are what they sent from
/// [`RunSettings::sent_before`] (else from the run's start) to its end.
#[allow(clippy::too_many_arguments)]
pub async fn run_once<C: Crm, M: Map>(
    crm: &C,
    map: &M,
    mapping: &Mapping,
    policy: &Policy,
    store: &mut Store,
    now: Timestamp,
    settings: &RunSettings,
    sent: impl Fn() -> (Sent, Sent) + Send + Sync,
) -> Result<RunSummary, SyncError> {
    let before = settings.sent_before.unwrap_or_else(&sent);
    let _writer = store.lock_writer()?;
    // Marketo's count is the instance's, for today: read it first, so that the reserve holds
    // across runs and against other integrations (a fresh process would otherwise count from
    // zero).
    map.refresh_usage().await?;
    let mut syncer = Syncer::load(crm, map, mapping, policy, store, settings, &sent)?;
    syncer.usage_reads = 1;
    let mut result = syncer.full_pass(now, Some(before)).await;
    if let Ok(summary) = &mut result {
        match syncer.parked() {
            Ok(parked) => summary.parked = parked,
            Err(e) => result = Err(e),
        }
    }
    // A complete run leaves a score snapshot, so the next run loads without replaying the
    // score history. Not after a failure: the state may then hold a page that did not commit.
    if result.is_ok()
        && let Err(e) = syncer.save_scores()
    {
        result = Err(e);
    }
    result
}

impl<C: Crm, M: Map> Run<'_, C, M> {
    async fn all(&mut self) -> Result<(), SyncError> {
        if let Some(window) = self.settings.backfill.clone() {
            return self.backfill(&window).await;
        }
        // Thresholds first, so that people read in this run meet the knob as it stands.
        self.source(Source::Thresholds).await?;
        self.read_people(true).await?;
        self.map_activities()
            .instrument(phase("score changes"))
            .await?;
        let progress: current::Progress = self.cursor(current::CURSOR)?;
        if progress.read_at.is_none() || self.settings.full {
            let progress = if progress.read_at.is_some() {
                current::Progress::default()
            } else {
                progress
            };
            self.current_scores(progress)
                .instrument(phase("current scores"))
                .await?;
        }
        if self.state.meta.went_live.is_none() {
            self.go_live()?;
        }
        // Time passes even when nothing was read (every event read already moved it to
        // `now`): SLAs run out and scheduled thresholds start.
        self.clock()?;
        // The knob's consequence, counting this pass's MQLs (committed, so in the counts),
        // written with them in the one drain.
        self.knob_feedback()?;
        self.drain_outbox().instrument(phase("writes")).await
    }

    /// One source's reads since its cursors (a daemon poller's pass). Nothing goes live here:
    /// the daemon's first pass is a full one.
    async fn source(&mut self, source: Source) -> Result<(), SyncError> {
        let m = self.mapping;
        match source {
            Source::Thresholds => {
                let object = m.crm.threshold.object.clone();
                let fields = records::threshold_fields(m);
                self.crm_object(&object, fields, true, |m, r| {
                    records::threshold(m, r).map(Event::Threshold)
                })
                .instrument(phase(&object))
                .await?;
                let history = history_object(&m.crm.threshold.object);
                self.threshold_history().instrument(phase(&history)).await
            }
            Source::People | Source::MqlEdits | Source::Opportunities => {
                let objects = CrmObject::of_source(source).expect("a source of CRM objects");
                self.read_objects(objects).await
            }
            Source::Activities => {
                self.map_activities()
                    .instrument(phase("score changes"))
                    .await
            }
        }
    }

    /// Lets the engine's time run to `now`: every timer due fires at its own instant (a
    /// scheduled threshold's `effective_from` or `effective_to`, an SLA due time, a
    /// reassignment trigger), and the decisions commit in one transaction. Reads do the same
    /// as a side effect of their first event; this is for when nothing was read.
    pub(super) fn clock(&mut self) -> Result<(), SyncError> {
        if self.replaying {
            return Ok(());
        }
        let ctx = Context {
            policy: self.policy,
            now: self.now,
            backfill: false,
            visibility: Visibility::WhenWritten,
        };
        let decisions = crate::engine::advance(self.state, &ctx);
        if decisions.is_empty() {
            // The clock moved in memory; it is saved with the next commit.
            return Ok(());
        }
        self.count_decisions(&decisions);
        self.store.commit_batch(
            Batch {
                events: &[],
                decisions: &decisions,
                cursors: &[],
                seen_at: self.now,
            },
            self.state,
        )?;
        tracing::info!(decisions = decisions.len(), "time passed: timers fired");
        Ok(())
    }

    /// Counts decisions in the summary: by kind, and the MQLs opened by segment.
    fn count_decisions(&mut self, decisions: &[crate::engine::model::Decision]) {
        for d in decisions {
            *self
                .summary
                .decisions
                .entry(d.action.name().into())
                .or_default() += 1;
            if let crate::engine::model::Action::OpenCycle { cycle } = &d.action {
                *self
                    .summary
                    .opened_by_segment
                    .entry(cycle.segment.clone())
                    .or_default() += 1;
                let how = cycle.qualified_kind(matches!(
                    d.reason,
                    crate::engine::model::Reason::AtGoLive { .. }
                ));
                *self.summary.qualified_by.entry(how).or_default() += 1;
            }
        }
    }

    /// What the pass did, with its calls: what the clients sent since `before`, against the
    /// fewest its work needs.
    fn finish(mut self, before: (Sent, Sent)) -> RunSummary {
        let after = (self.sent)();
        let (sf, mk) = (after.0 - before.0, after.1 - before.1);
        // A client that had to sign in needed one token request; more (a token renewed early,
        // a refused first try) count against the run.
        self.sf_min += u64::from(sf.token_requests > 0);
        self.mkto_min += u64::from(mk.token_requests > 0);
        self.summary.calls.insert("salesforce".into(), sf.requests);
        self.summary.calls.insert("marketo".into(), mk.requests);
        self.summary
            .minimum_calls
            .insert("salesforce".into(), self.sf_min);
        self.summary
            .minimum_calls
            .insert("marketo".into(), self.mkto_min);
        self.summary
    }

    /// Leads, contacts, reps' MQL edits and (with `opportunities`) accounts and
    /// opportunities since their cursors.
    pub(super) async fn read_people(&mut self, opportunities: bool) -> Result<(), SyncError> {
        // Accounts first: their contacts read next carry their attributes at once.
        let objects: &[CrmObject] = if opportunities {
            &[
                CrmObject::Account,
                CrmObject::Person(CrmKind::Lead),
                CrmObject::Person(CrmKind::Contact),
                CrmObject::Opportunity,
                CrmObject::MqlEdit,
            ]
        } else {
            &[
                CrmObject::Person(CrmKind::Lead),
                CrmObject::Person(CrmKind::Contact),
                CrmObject::MqlEdit,
            ]
        };
        self.read_objects(objects).await
    }

    /// Calls sent so far in this process, `(salesforce, marketo)`, for the log.
    fn calls_so_far(&self) -> (u64, u64) {
        let (sf, mk) = (self.sent)();
        (sf.requests, mk.requests)
    }

    /// Logs a committed page (and moves the phase's progress bar on by its records).
    pub(super) fn log_page(&self, source: &str, records: usize, cursor: &str) {
        let (salesforce_calls, marketo_calls) = self.calls_so_far();
        if !self.progress_by_time {
            tracing::Span::current().pb_inc(records as u64);
        }
        tracing::info!(
            source,
            records,
            cursor = %super::cursor_brief(cursor),
            salesforce_calls,
            marketo_calls,
            "committed a page"
        );
    }

    /// Logs one write call (and moves the progress bar on by its records).
    fn log_write(&self, object: &str, records: usize) {
        let (salesforce_calls, marketo_calls) = self.calls_so_far();
        tracing::Span::current().pb_inc(records as u64);
        tracing::info!(
            object,
            records,
            salesforce_calls,
            marketo_calls,
            "wrote a batch"
        );
    }

    /// Logs the end of a phase.
    pub(super) fn log_phase_done(&self, records: usize, pages: u64) {
        let (salesforce_calls, marketo_calls) = self.calls_so_far();
        tracing::info!(records, pages, salesforce_calls, marketo_calls, "read");
    }

    pub(super) fn cursor<T: serde::de::DeserializeOwned + Default>(
        &self,
        name: &str,
    ) -> Result<T, SyncError> {
        stored_cursor(self.store, name)
    }

    /// Applies events, commits them with their decisions and the cursor in one transaction.
    pub(super) fn commit(
        &mut self,
        events: Vec<Event>,
        cursor: (String, String),
    ) -> Result<Vec<crate::engine::model::Decision>, SyncError> {
        let mut ctx = Context {
            policy: self.policy,
            now: self.now,
            backfill: self.replaying,
            visibility: Visibility::WhenWritten,
        };
        let mut decisions = Vec::new();
        for e in &events {
            // Replaying history, time runs with the events (a scheduled threshold starts
            // between the changes around it); a run decides at its own instant.
            // Facts of the present (people, opportunities, links) move no time.
            if let Some(window) = &self.settings.backfill {
                let clock = self.state.meta.clock.unwrap_or(window.since);
                ctx.now = match e {
                    Event::Score(_) | Event::Threshold(_) | Event::Opportunity(_) => {
                        e.at().max(clock)
                    }
                    _ => clock,
                }
                .min(self.now);
            }
            decisions.extend(reconcile(self.state, &ctx, e));
        }
        self.count_decisions(&decisions);
        self.summary.events += events.len();
        let mut cursors = std::mem::take(&mut self.later_cursors);
        cursors.push(cursor);
        self.store.commit_batch(
            Batch {
                events: &events,
                decisions: &decisions,
                cursors: &cursors,
                seen_at: self.now,
            },
            self.state,
        )?;
        Ok(decisions)
    }

    pub(super) fn unreadable(&mut self, e: RecordError) {
        tracing::warn!(object = %e.object, id = %e.id, field = %e.field, "record skipped: {}", e.message);
        self.summary.unreadable.push(e.to_string());
    }

    pub(super) async fn crm_object(
        &mut self,
        object: &str,
        fields: Vec<String>,
        all: bool,
        to_event: impl Fn(&Mapping, &crate::connectors::Record) -> Result<Event, RecordError>,
    ) -> Result<(), SyncError> {
        let name = format!("crm.{object}");
        let cursor: ModstampCursor = self.cursor(&name)?;
        self.read_crm_object(object, &fields, all, cursor, &name, to_event)
            .await?;
        Ok(())
    }

    /// Reads `object` from `from` page by page, committing each page's events with its
    /// position under the cursor `commit_as`; returns the last position read.
    pub(super) async fn read_crm_object(
        &mut self,
        object: &str,
        fields: &[String],
        all: bool,
        from: ModstampCursor,
        commit_as: &str,
        mut to_event: impl FnMut(&Mapping, &crate::connectors::Record) -> Result<Event, RecordError>,
    ) -> Result<Option<String>, SyncError> {
        let field_refs: Vec<&str> = fields.iter().map(String::as_str).collect();
        let mut reader = IncrementalRead::new(
            self.crm.clone(),
            object,
            &field_refs,
            from,
            self.settings.lookback,
            None,
            all,
        )?;
        let (mut count, mut last) = (ReadCount::default(), None);
        while let Some(page) = reader.next_page().await? {
            let cursor = serde_json::to_string(&page.cursor).expect("cursors serialise");
            self.commit_crm_page(object, commit_as, page, &mut count, &mut to_event)?;
            last = Some(cursor);
        }
        self.end_crm_read(object, count);
        Ok(last)
    }

    /// Commits a page of `object`'s records (each made an event by `to_event`; one that
    /// cannot be is skipped with a warning) with its position under the cursor `commit_as`.
    pub(super) fn commit_crm_page(
        &mut self,
        object: &str,
        commit_as: &str,
        page: ChangePage,
        count: &mut ReadCount,
        mut to_event: impl FnMut(&Mapping, &crate::connectors::Record) -> Result<Event, RecordError>,
    ) -> Result<(), SyncError> {
        count.pages += 1;
        count.records += page.records.len();
        let mut events = Vec::with_capacity(page.records.len());
        for r in &page.records {
            match to_event(self.mapping, r) {
                Ok(e) => events.push(e),
                Err(e) => self.unreadable(e),
            }
        }
        let cursor = serde_json::to_string(&page.cursor).expect("cursors serialise");
        self.commit(events, (commit_as.to_string(), cursor.clone()))?;
        self.log_page(object, page.records.len(), &cursor);
        Ok(())
    }

    /// The end of a read of `object`: logged, counted, and its fewest calls (one per 2,000
    /// records, at least one) added to the pass's minimum.
    pub(super) fn end_crm_read(&mut self, object: &str, count: ReadCount) {
        self.sf_min += (count.records as u64).div_ceil(2000).max(1);
        self.log_phase_done(count.records, count.pages);
        *self.summary.read.entry(object.to_string()).or_default() += count.records;
    }

    /// The CRM's field history of threshold records since the last run: who turned which knob
    /// from what to what. History objects have no `SystemModstamp`, so the cursor is the last
    /// `CreatedDate` read, re-read with the look-back; rows seen again are ignored by id and
    /// not counted as read.
    pub(super) async fn threshold_history(&mut self) -> Result<(), SyncError> {
        let m = self.mapping;
        let object = history_object(&m.crm.threshold.object);
        let name = format!("crm.{object}");
        let since: Option<Timestamp> = self.store.cursor(&name)?.and_then(|t| t.parse().ok());
        let lookback =
            SignedDuration::try_from(self.settings.lookback).unwrap_or(SignedDuration::ZERO);
        let filter = since.map_or_else(String::new, |t| {
            format!(" WHERE CreatedDate >= {}", datetime_literal(t - lookback))
        });
        let soql = format!(
            "SELECT Id, ParentId, Field, OldValue, NewValue, CreatedDate, CreatedById FROM {object}{filter} ORDER BY CreatedDate, Id"
        );
        let mut pages = QueryPages::new(self.crm.clone(), soql, false, Priority::Routine);
        let (mut read, mut last, mut count, mut new) = (0usize, since, 0u64, 0usize);
        while let Some(page) = pages.next_page().await? {
            count += 1;
            read += page.len();
            let mut rows = Vec::with_capacity(page.len());
            for r in &page {
                match records::threshold_change(&object, r) {
                    Ok(row) => {
                        last = last.max(Some(row.changed_at));
                        rows.push(row);
                    }
                    Err(e) => self.unreadable(e),
                }
            }
            let cursor = last.map_or_else(String::new, |t| t.to_string());
            new += self
                .store
                .record_threshold_history(&rows, (&name, &cursor), self.now)?;
            self.log_page(&object, page.len(), &cursor);
        }
        self.sf_min += (read as u64).div_ceil(2000).max(1);
        self.log_phase_done(read, count);
        // Rows new to the store only: the look-back reads the last rows again every time, and
        // a daemon's thresholds source that counted them would never be idle.
        *self.summary.read.entry(object).or_default() += new;
        Ok(())
    }

    async fn map_activities(&mut self) -> Result<(), SyncError> {
        let read = ActivityRead {
            cursor: "map.activities".into(),
            start: self.now - self.settings.initial_window,
            until: None,
        };
        self.read_activities(read, &mut VecDeque::new()).await
    }

    /// Reads Change Score activities from `read.start` (or where its cursor stands), up to
    /// `read.until` when given, committing page by page with the cursor; `also` holds events
    /// of the same time line (a backfill's threshold versions, oldest first) that commit with
    /// the page they fall in, in time order.
    pub(super) async fn read_activities(
        &mut self,
        read: ActivityRead,
        also: &mut VecDeque<Event>,
    ) -> Result<(), SyncError> {
        let m = self.mapping;
        let fields = self.score_fields().await?;
        let name = read.cursor.clone();
        let mut cursor: ActivityCursor = self.cursor(&name)?;
        if cursor.next_page_token.is_empty() {
            cursor.next_page_token = self.map.paging_token(read.start).await?;
            self.mkto_min += 1;
        }
        let type_id = u32::try_from(m.map.score_activity_type).unwrap_or(22);
        // The hand-raiser rules' activity types come in the same calls, from the same token
        // (the mapping keeps them to Marketo's 10 types a call), for a backfill as for a run:
        // a backfill by bulk extract reads them by an export of their own and merges them
        // into its time line (`hand_raises_in_bulk`), so that both rebuild the same cycles.
        let mut types = vec![type_id];
        types.extend(self.policy.hand_raiser_type_ids());
        types.sort_unstable();
        types.dedup();
        let mut pages = ActivityPages::new(
            self.map.clone(),
            ActivitySource::Types(types),
            cursor,
            self.settings.max_empty_pages,
        );
        let mut intake = Intake::new(&name);
        // A read with an end (a backfill) shows its progress in hours of history, with an ETA.
        let span = tracing::Span::current();
        let hours = |at: Timestamp| at.duration_since(read.start).as_hours().max(0) as u64;
        if let Some(until) = read.until {
            span.pb_set_style(&crate::logging::bar_with_eta("hours of history"));
            span.pb_set_length(hours(until));
            self.progress_by_time = true;
        }
        let mut past_until = false;
        while !past_until && let Some((activities, cursor)) = pages.next_page().await? {
            if let (Some(until), Some(last)) = (read.until, activities.last()) {
                span.pb_set_position(hours(last.activity_date.min(until)));
            }
            intake.read += activities.len();
            intake.pages += 1;
            let mut changes = Vec::with_capacity(activities.len());
            let mut raised = Vec::new();
            for a in &activities {
                if read.until.is_some_and(|until| a.activity_date >= until) {
                    // Later activities are the live runs' to read.
                    past_until = true;
                    continue;
                }
                if a.activity_type_id != type_id {
                    raised.push(records::map_activity_of(a));
                } else if let Some(c) = self.score_change(&fields, a) {
                    changes.push(c);
                }
            }
            let cursor = serde_json::to_string(&cursor).expect("cursors serialise");
            self.take_page(&mut intake, changes, raised, cursor, also)
                .await?;
        }
        // The fewest calls for this work: an activities page holds 300.
        self.mkto_min += (intake.read as u64).div_ceil(MAP_PAGE_SIZE).max(1);
        let finished = self.finish_intake(intake, also).await;
        self.progress_by_time = false;
        finished
    }

    /// One activity as a score change of a mapped score field (`None` for another field, or
    /// an activity that cannot be read, which is listed).
    pub(super) fn score_change(
        &mut self,
        fields: &ScoreFields,
        activity: &crate::connectors::marketo::Activity,
    ) -> Option<ScoreChange> {
        match records::score_change_of(fields, activity) {
            Ok(change) => change,
            Err(e) => {
                self.unreadable(e);
                None
            }
        }
    }

    /// Takes one page of score changes (in time order) into `intake`: the CRM links of leads
    /// the engine has not linked yet are looked up 300 ids a call across pages, and a page
    /// commits with `cursor` once every link it needs is known, so that each lead's link
    /// still commits before its score changes.
    pub(super) async fn take_changes(
        &mut self,
        intake: &mut Intake,
        changes: Vec<ScoreChange>,
        cursor: String,
        also: &mut VecDeque<Event>,
    ) -> Result<(), SyncError> {
        self.take_page(intake, changes, Vec::new(), cursor, also)
            .await
    }

    /// [`Self::take_changes`] with the page's hand-raiser activities, whose leads' links are
    /// looked up the same way (a new person's form fill may be the first the run sees of
    /// them).
    async fn take_page(
        &mut self,
        intake: &mut Intake,
        changes: Vec<ScoreChange>,
        activities: Vec<MapActivity>,
        cursor: String,
        also: &mut VecDeque<Event>,
    ) -> Result<(), SyncError> {
        let state = &self.state;
        let links = &mut intake.links;
        let needs = links.queue(
            changes
                .iter()
                .map(|c| c.map_lead_id)
                .chain(activities.iter().map(|a| a.map_lead_id))
                .filter(|id| state.map_leads.get(id).is_none_or(|l| l.crm.is_none())),
        );
        intake.waiting.push_back(WaitingPage {
            changes,
            activities,
            needs,
            ready_after: links.queued(),
            cursor,
        });
        let buffered: usize = intake.waiting.iter().map(|p| p.changes.len()).sum();
        while intake.links.unasked() >= MAP_FILTER_VALUES
            || (intake.links.unasked() > 0 && buffered >= MAX_WAITING_CHANGES)
        {
            self.look_up_links(&mut intake.links).await?;
        }
        self.commit_ready(&intake.cursor, &mut intake.waiting, &mut intake.links, also)
    }

    /// Looks up the links still unasked and commits every page waiting for them: a
    /// checkpoint (the end of an export window) after which a killed read resumes.
    pub(super) async fn flush_intake(
        &mut self,
        intake: &mut Intake,
        also: &mut VecDeque<Event>,
    ) -> Result<(), SyncError> {
        while intake.links.unasked() > 0 {
            self.look_up_links(&mut intake.links).await?;
        }
        self.commit_ready(&intake.cursor, &mut intake.waiting, &mut intake.links, also)
    }

    /// Looks up the links still unasked and commits every page waiting for them.
    pub(super) async fn finish_intake(
        &mut self,
        mut intake: Intake,
        also: &mut VecDeque<Event>,
    ) -> Result<(), SyncError> {
        self.flush_intake(&mut intake, also).await?;
        debug_assert!(
            intake.waiting.is_empty(),
            "every page commits once its links are known"
        );
        // A leads-by-filter call takes 300 ids.
        self.mkto_min += (intake.links.queued() as u64).div_ceil(MAP_FILTER_VALUES as u64);
        *self.summary.read.entry("activities".into()).or_default() += intake.read;
        self.log_phase_done(intake.read, intake.pages);
        Ok(())
    }

    /// The current score of every MAP lead linked to a CRM person the store knows, by
    /// `sfdcLeadId` / `sfdcContactId`, 300 ids a call, or by bulk lead extract when that
    /// takes fewer calls (see [`current::choose`]), committed as read with its progress (a
    /// killed read resumes after the last id or window committed).
    async fn current_scores(&mut self, progress: current::Progress) -> Result<(), SyncError> {
        let take = current::Take::LinksAndScores;
        let choice = self.choose_lead_read(&progress, take);
        self.summary.current_scores_read = Some(choice.clone());
        self.read_linked_leads(progress, current::CURSOR, take, &choice)
            .await
    }

    /// How the MAP leads of the CRM people the engine knows are read: by filter or by bulk
    /// lead extract, whichever takes fewer calls unless `sync.current_scores` says.
    pub(super) fn choose_lead_read(
        &self,
        progress: &current::Progress,
        take: current::Take,
    ) -> current::ReadChoice {
        let bulk = &self.settings.bulk_reads;
        let people = |kind| current::people(self.state, kind, None).len();
        let choice = current::choose(
            bulk.current_scores,
            bulk.leads_since,
            self.now,
            people(CrmKind::Lead),
            people(CrmKind::Contact),
            progress,
        );
        tracing::info!(
            by = if choice.bulk_since.is_some() {
                "bulk lead extract"
            } else {
                "filter"
            },
            why = choice.why,
            by_filter_calls = choice.by_filter_calls,
            bulk_calls = choice.bulk_calls,
            "reading the {}",
            take.what()
        );
        choice
    }

    /// Reads the MAP leads of the CRM's people the way `choice` says, committing under
    /// `cursor_name`.
    pub(super) async fn read_linked_leads(
        &mut self,
        progress: current::Progress,
        cursor_name: &str,
        take: current::Take,
        choice: &current::ReadChoice,
    ) -> Result<(), SyncError> {
        match choice.bulk_since {
            Some(since) => {
                self.linked_leads_in_bulk(progress, since, cursor_name, take)
                    .await
            }
            None => self.linked_leads(progress, cursor_name, take).await,
        }
    }

    /// Reads the MAP lead of every CRM lead and contact the engine knows (see
    /// [`current::Take`]), committing each call with its progress under `cursor_name`.
    pub(super) async fn linked_leads(
        &mut self,
        mut progress: current::Progress,
        cursor_name: &str,
        take: current::Take,
    ) -> Result<(), SyncError> {
        let m = self.mapping;
        let source = &self.policy.score;
        let fields = current::lead_fields(m, source, take);
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        let (mut read, mut calls) = (0usize, 0u64);
        // Progress in people asked for, of everyone left to ask for: a bar with an ETA.
        let span = tracing::Span::current();
        let left: usize = [CrmKind::Lead, CrmKind::Contact]
            .into_iter()
            .map(|kind| current::people(self.state, kind, progress.after(kind)).len())
            .sum();
        span.pb_set_style(&crate::logging::bar_with_eta("people"));
        span.pb_set_length(left as u64);
        self.progress_by_time = true;
        for kind in [CrmKind::Lead, CrmKind::Contact] {
            let filter = current::filter_field(m, kind).to_string();
            let people = current::people(self.state, kind, progress.after(kind));
            for chunk in people.chunks(current::IDS_A_CALL) {
                let mut rows = Vec::new();
                let mut token: Option<String> = None;
                loop {
                    let page = self
                        .map
                        .leads_by_filter(&filter, chunk, &fields, token.as_deref())
                        .await?;
                    rows.extend(page.leads.into_iter().map(serde_json::Value::Object));
                    match page.next_page_token {
                        Some(t) => token = Some(t),
                        None => break,
                    }
                }
                calls += 1;
                read += rows.len();
                let mut unreadable = Vec::new();
                let events = current::events(
                    m,
                    source,
                    self.state,
                    &rows,
                    self.now,
                    take,
                    &mut unreadable,
                )
                .map_err(|e| SyncError::Unkeyed {
                    call: format!(
                        "GET /rest/v1/leads.json?filterType={filter} ({} ids: {}..{})",
                        chunk.len(),
                        chunk.first().map_or("", String::as_str),
                        chunk.last().map_or("", String::as_str)
                    ),
                    detail: format!("a lead row without `id` ({})", e.message),
                })?;
                for e in unreadable {
                    self.unreadable(e);
                }
                progress.set_after(kind, chunk.last().expect("a chunk is not empty"));
                let cursor = serde_json::to_string(&progress).expect("cursors serialise");
                self.commit(events, (cursor_name.to_string(), cursor.clone()))?;
                span.pb_inc(chunk.len() as u64);
                self.log_page(cursor_name, rows.len(), &cursor);
            }
        }
        self.progress_by_time = false;
        progress = current::Progress {
            read_at: Some(self.now),
            ..current::Progress::default()
        };
        let cursor = serde_json::to_string(&progress).expect("cursors serialise");
        self.commit(Vec::new(), (cursor_name.to_string(), cursor))?;
        // The fewest calls: one per 300 people of each kind.
        self.mkto_min += calls;
        *self.summary.read.entry(take.what().into()).or_default() += read;
        self.log_phase_done(read, calls);
        Ok(())
    }

    /// Goes live: with `go_live = "mql"`, everyone already at or above their threshold, not
    /// excluded and without any cycle becomes an MQL now (reason `at_go_live`); with `"wait"`
    /// they are counted and left for their next score change. Either way the store is live
    /// from now on, and this happens once.
    fn go_live(&mut self) -> Result<(), SyncError> {
        let mqls = self.settings.go_live == GoLive::Mql;
        let mut report = GoLiveReport {
            at: self.now,
            setting: self.settings.go_live,
            ..GoLiveReport::default()
        };
        if !mqls {
            // Who would have become an MQL: the engine's own verdict, read-only.
            let waiting: Vec<(String, String)> = self
                .state
                .persons
                .iter()
                .filter(|(_, p)| p.cycles.is_empty() && p.facts.is_some())
                .filter_map(|(id, p)| {
                    match crate::engine::explain(self.state, self.policy, id, self.now) {
                        crate::engine::model::Reason::Qualified { threshold_id, .. } => {
                            let segment = threshold_id
                                .and_then(|t| self.state.thresholds.get(&t))
                                .map_or_else(|| "default".to_string(), |t| t.segment_label());
                            let status = p
                                .facts
                                .as_ref()
                                .and_then(|f| f.status.as_deref().map(String::from));
                            Some((segment, status.unwrap_or_default()))
                        }
                        _ => None,
                    }
                })
                .collect();
            for (segment, status) in waiting {
                report.people += 1;
                *report.by_segment.entry(segment).or_default() += 1;
                *report.by_status.entry(status).or_default() += 1;
            }
        }
        let event = Event::GoLive { at: self.now, mqls };
        let decisions = self.commit(vec![event], ("sync.go_live".into(), self.now.to_string()))?;
        for d in &decisions {
            if let (
                crate::engine::model::Reason::AtGoLive { .. },
                crate::engine::model::Action::OpenCycle { cycle },
            ) = (&d.reason, &d.action)
            {
                report.people += 1;
                *report.by_segment.entry(cycle.segment.clone()).or_default() += 1;
                let status = self
                    .state
                    .persons
                    .get(&cycle.crm.id)
                    .and_then(|p| p.facts.as_ref())
                    .and_then(|f| f.status.as_deref().map(String::from))
                    .unwrap_or_default();
                *report.by_status.entry(status).or_default() += 1;
            }
        }
        tracing::info!(
            people = report.people,
            setting = ?report.setting,
            "went live"
        );
        self.summary.go_live = Some(report);
        Ok(())
    }

    /// Which MAP field ids are the mapped score fields: from the copy of the MAP's lead
    /// describe the store keeps (made for the same field names, less than a day old), else
    /// from a new describe, kept with the next committed page. Field ids do not change when a
    /// field is renamed; the daily refresh catches a field deleted and made again.
    pub(super) async fn score_fields(&mut self) -> Result<ScoreFields, SyncError> {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Kept {
            names: Vec<String>,
            read_at: Timestamp,
            fields: ScoreFields,
        }
        let names = ScoreFields::mapped_names(self.mapping);
        let kept = self
            .store
            .cursor(SCORE_FIELDS_CURSOR)?
            .and_then(|text| serde_json::from_str::<Kept>(&text).ok())
            .filter(|k| {
                k.names == names
                    && k.read_at <= self.now
                    && self.now.duration_since(k.read_at) < SignedDuration::from_hours(24)
            });
        if let Some(kept) = kept {
            return Ok(kept.fields);
        }
        let describe: Vec<serde_json::Value> = self
            .map
            .describe()
            .await?
            .into_iter()
            .map(serde_json::Value::Object)
            .collect();
        let fields = ScoreFields::from_describe(self.mapping, &describe);
        let kept = Kept {
            names,
            read_at: self.now,
            fields,
        };
        self.later_cursors.push((
            SCORE_FIELDS_CURSOR.to_string(),
            serde_json::to_string(&kept).expect("score fields serialise"),
        ));
        Ok(kept.fields)
    }

    /// Asks the MAP for the CRM links of the next (up to) 300 queued leads. A lead row the
    /// sync cannot key (no `id`) fails the call: none of the waiting pages commits, so the
    /// cursor stays before them and the next run reads them again.
    async fn look_up_links(&mut self, links: &mut LinkLookup) -> Result<(), SyncError> {
        let m = self.mapping;
        let ids: Vec<String> = links.next_chunk().iter().map(i64::to_string).collect();
        let fields = [
            m.map.crm_lead_id.as_str(),
            m.map.crm_contact_id.as_str(),
            "updatedAt",
        ];
        let mut token: Option<String> = None;
        loop {
            let page = self
                .map
                .leads_by_filter("id", &ids, &fields, token.as_deref())
                .await?;
            for lead in page.leads {
                let lead = serde_json::Value::Object(lead);
                match records::link(m, &lead) {
                    Ok(l) => links.found(l),
                    Err(e) if e.field == "id" => {
                        return Err(SyncError::Unkeyed {
                            call: format!(
                                "GET /rest/v1/leads.json?filterType=id ({} ids: {}..{})",
                                ids.len(),
                                ids.first().map_or("", String::as_str),
                                ids.last().map_or("", String::as_str)
                            ),
                            detail: "a lead row without `id`".into(),
                        });
                    }
                    Err(e) => self.unreadable(e),
                }
            }
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => return Ok(()),
            }
        }
    }

    /// Commits, in order, the waiting pages whose links are all known: each page with the
    /// links it needs first, then its score changes, and its cursor.
    fn commit_ready(
        &mut self,
        name: &str,
        waiting: &mut VecDeque<WaitingPage>,
        links: &mut LinkLookup,
        also: &mut VecDeque<Event>,
    ) -> Result<(), SyncError> {
        while waiting
            .front()
            .is_some_and(|p| p.ready_after <= links.asked())
        {
            let page = waiting.pop_front().expect("a front page");
            let mut events: Vec<Event> = page
                .needs
                .iter()
                .filter_map(|id| links.take(*id))
                .map(Event::Link)
                .collect();
            let records = page.changes.len() + page.activities.len();
            // Events of the same time line up to this page's last change, in time order after
            // the links (a score change meets the knob as it stood then).
            let until = page
                .changes
                .last()
                .map(|c| c.at)
                .max(page.activities.last().map(|a| a.at));
            let mut timeline: Vec<Event> = Vec::new();
            while let Some(e) = also.front()
                && until.is_some_and(|u| e.at() <= u)
            {
                timeline.push(also.pop_front().expect("a front event"));
            }
            // At the same instant a hand-raise goes before a score change (the form fill is
            // what the scoring campaign reacted to): the cycle records the hand-raise.
            timeline.extend(page.activities.into_iter().map(Event::Activity));
            timeline.extend(page.changes.into_iter().map(Event::Score));
            timeline.sort_by_key(Event::at);
            events.extend(timeline);
            self.commit(events, (name.to_string(), page.cursor.clone()))?;
            self.log_page("activities", records, &page.cursor);
        }
        Ok(())
    }

    /// Writes every row waiting in the outbox, [`OUTBOX_CHUNK`] rows at a time (a backfill
    /// of a large org leaves hundreds of thousands; their payloads are not held all at once),
    /// each call's rows settled in the store as soon as its answer is read. Rows refused for
    /// now stay pending for the next pass; a call that fails stops the drain.
    ///
    /// A chunk whose writes go through Bulk API 2.0 ingest (a backfill's) is sent, and the
    /// next chunks' jobs started, before its results are awaited: the vendor processes jobs
    /// side by side, so the drain waits about one job's processing for every
    /// [`OUTBOX_CHUNKS_IN_FLIGHT`] chunks, not one per chunk. At most that many chunks are
    /// held at once.
    pub(super) async fn drain_outbox(&mut self) -> Result<(), SyncError> {
        let keys = self.store.outbox_pending_keys()?;
        let mut in_flight: VecDeque<Started> = VecDeque::new();
        for chunk in keys.chunks(OUTBOX_CHUNK) {
            if in_flight.len() >= OUTBOX_CHUNKS_IN_FLIGHT {
                let earliest = in_flight.pop_front().expect("a chunk in flight");
                self.finish_rows(earliest).await?;
            }
            if self.summary.writes_left {
                break;
            }
            let rows = self.store.outbox_rows(chunk)?;
            let started = self.start_rows(rows);
            if started.in_bulk.iter().any(Option::is_some) {
                in_flight.push_back(started);
                continue;
            }
            // Collections calls: the chunks in flight are settled first, in order.
            while let Some(earlier) = in_flight.pop_front() {
                self.finish_rows(earlier).await?;
            }
            self.finish_rows(started).await?;
        }
        // Jobs already sent are awaited and settled, whatever stopped the drain.
        while let Some(last) = in_flight.pop_front() {
            self.finish_rows(last).await?;
        }
        Ok(())
    }

    /// Plans a chunk of outbox rows and starts its Bulk API 2.0 jobs, if any.
    fn start_rows(&mut self, rows: Vec<OutboxRow>) -> Started {
        let m = self.mapping;
        let (state, policy, now) = (&self.state, self.policy, self.now);
        let mut plan =
            writes::plan_at(m, rows, |a| alert_state(state, policy, a, now), policy, now);
        let tasks = std::mem::take(&mut plan.task_creates);
        let first_writes = std::mem::take(&mut plan.first_writes);
        if !self.settings.dry_run {
            self.sf_min += writes::minimum_calls(&plan, 200) as u64;
        }
        let mut results: Vec<(OutboxRow, Settlement)> = Vec::new();
        for (row, e) in plan.unsent {
            self.summary
                .write_failures
                .push(format!("{}: {e}", row.key));
            results.push((row, Settlement::Failed(e)));
        }
        if !plan.superseded.is_empty() {
            *self
                .summary
                .settled
                .entry("task_superseded".into())
                .or_default() += plan.superseded.len();
            results.extend(
                plan.superseded
                    .into_iter()
                    .map(|row| (row, Settlement::Done)),
            );
        }
        let groups = [
            (
                m.crm.mql.object.clone(),
                Some(m.crm.mql.external_id.clone()),
                plan.mql_upserts,
                "mql_upsert",
            ),
            (
                m.crm.lead.object.clone(),
                None,
                plan.lead_updates,
                "lead_update",
            ),
            (
                m.crm.contact.object.clone(),
                None,
                plan.contact_updates,
                "contact_update",
            ),
            (
                m.crm.threshold.object.clone(),
                None,
                plan.threshold_updates,
                "threshold_update",
            ),
        ];
        let in_bulk = self.start_bulk(&groups);
        Started {
            groups,
            in_bulk,
            tasks,
            first_writes,
            results,
        }
    }

    /// Writes a planned chunk: the results of its Bulk API 2.0 jobs, the other groups
    /// through Collections, then its alert tasks; each settled as its answer is read.
    async fn finish_rows(&mut self, started: Started) -> Result<(), SyncError> {
        let Started {
            groups,
            mut in_bulk,
            tasks,
            first_writes,
            mut results,
        } = started;
        let mut stop = None;
        // The daemon's writer hands back to the loop between groups once a poll is due.
        let mut wrote = false;
        let yield_at = self.yield_at;
        let due =
            move |wrote: bool| wrote && yield_at.is_some_and(|y| tokio::time::Instant::now() >= y);
        for (n, (object, ext, group, label)) in groups.into_iter().enumerate() {
            if let Some(job) = in_bulk[n].take() {
                let written = job
                    .await
                    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                wrote = true;
                match written {
                    Ok(outcomes) => {
                        self.settle(&object, &group, outcomes, label, &mut results);
                        self.log_write(&object, group.len());
                        self.commit_writes(std::mem::take(&mut results), &first_writes)?;
                    }
                    Err(e) => {
                        stop.get_or_insert(e);
                    }
                }
                continue;
            }
            if self.summary.writes_left || due(wrote) {
                self.summary.writes_left |= !group.is_empty();
                continue;
            }
            wrote |= !group.is_empty();
            if self.settings.dry_run {
                let action = if ext.is_some() { "upsert" } else { "update" };
                self.plan_writes(&object, &group, action);
                continue;
            }
            for chunk in group.chunks(200) {
                if stop.is_some() {
                    break;
                }
                let records: Vec<_> = chunk.iter().map(|w: &Write| w.record.clone()).collect();
                let outcome = match &ext {
                    Some(field) => self.crm.upsert(&object, field, records).await,
                    None => self.crm.update(&object, records).await,
                };
                match outcome {
                    Ok(outcomes) => {
                        self.settle(&object, chunk, outcomes, label, &mut results);
                        self.log_write(&object, chunk.len());
                        // Settled before the next call: a process killed during it sends
                        // only the rows of that call again, not the whole drain's.
                        self.commit_writes(std::mem::take(&mut results), &first_writes)?;
                    }
                    // The whole call failed after the connector's own retries: the rows stay
                    // pending for the next run.
                    Err(e) => stop = Some(e),
                }
            }
        }
        if self.summary.writes_left || due(wrote) {
            self.summary.writes_left |= !tasks.is_empty();
        } else if stop.is_none()
            && let Err(e) = self.alert_tasks(tasks, &mut results).await
        {
            stop = Some(e);
        }
        self.commit_writes(results, &first_writes)?;
        match stop {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Settles the outbox rows written and tells the engine which MQL records reached the
    /// CRM for the first time ([`Event::CycleWritten`] at the run's `now`, the instant their
    /// `SLA_Due__c` was computed from), in one transaction: their SLA starts there. A crash
    /// before it leaves the rows pending, and the next run writes them again, with the SLA
    /// starting at that run.
    fn commit_writes(
        &mut self,
        mut results: Vec<(OutboxRow, Settlement)>,
        first_writes: &BTreeMap<String, crate::engine::Cycle>,
    ) -> Result<(), SyncError> {
        let mut events = Vec::new();
        for (row, settlement) in &mut results {
            if *settlement == Settlement::Done
                && let Some(cycle) = first_writes.get(&row.key)
            {
                let payload = serde_json::to_string(cycle).expect("cycles serialise");
                *settlement = Settlement::DoneAs(payload);
                events.push(Event::CycleWritten(CycleWritten {
                    external_id: cycle.external_id.clone(),
                    at: self.now,
                }));
            }
        }
        let ctx = Context {
            policy: self.policy,
            now: self.now,
            backfill: false,
            visibility: Visibility::WhenWritten,
        };
        let decisions: Vec<_> = events
            .iter()
            .flat_map(|e| reconcile(self.state, &ctx, e))
            .collect();
        self.count_decisions(&decisions);
        let batch = Batch {
            events: &events,
            decisions: &decisions,
            cursors: &[],
            seen_at: self.now,
        };
        self.store.settle_writes(&results, batch, self.state)?;
        Ok(())
    }

    /// Creates new-MQL alert tasks once. A task cannot be upserted (it has no external id), so
    /// the alerts' keys are looked up first (`queryAll`: a task a rep already deleted counts
    /// too): those found were created by an earlier run that stopped before it heard back,
    /// and are settled without a write; the others are created.
    async fn alert_tasks(
        &mut self,
        tasks: Vec<Write>,
        results: &mut Vec<(OutboxRow, Settlement)>,
    ) -> Result<(), ConnectorError> {
        let m = self.mapping;
        let object = soql::identifier(&m.crm.task)?;
        let key_field = soql::identifier(&m.crm.task_alert_key)?;
        let mut found = BTreeSet::new();
        let keys: Vec<&str> = tasks.iter().map(|w| w.row.key.as_str()).collect();
        let queries = alert_lookups(object, key_field, &keys);
        // The fewest look-ups: as many keys a statement as SOQL's length allows.
        self.sf_min += queries.len() as u64;
        for query in queries {
            let mut pages = QueryPages::new(self.crm.clone(), query, true, Priority::Essential);
            while let Some(page) = pages.next_page().await? {
                found.extend(
                    page.iter()
                        .filter_map(|r| r.get(key_field)?.as_str().map(str::to_string)),
                );
            }
        }
        let (existing, new): (Vec<Write>, Vec<Write>) =
            tasks.into_iter().partition(|w| found.contains(&w.row.key));
        for w in existing {
            *self.summary.settled.entry("task_found".into()).or_default() += 1;
            results.push((w.row, Settlement::Done));
        }
        if self.settings.dry_run {
            self.plan_writes(object, &new, "create");
            return Ok(());
        }
        self.sf_min += new.len().div_ceil(200) as u64;
        for chunk in new.chunks(200) {
            let records: Vec<_> = chunk.iter().map(|w| w.record.clone()).collect();
            let outcomes = self.crm.create(object, records).await?;
            self.settle(object, chunk, outcomes, "task_create", results);
            self.log_write(object, chunk.len());
        }
        Ok(())
    }

    /// Starts a Bulk API 2.0 ingest job, in a task of its own, for each of a backfill's groups
    /// of more than `bulk_above` writes (a handful of calls a job instead of one per 200
    /// records); the vendor processes jobs side by side, so they run at once. `None` for a
    /// group that goes by Collections, and for every group of a dry run or of a pass that is
    /// not a backfill.
    fn start_bulk(&mut self, groups: &[WriteGroup; 4]) -> [Option<BulkJob>; 4] {
        let Some(window) = &self.settings.backfill else {
            return Default::default();
        };
        if self.settings.dry_run || self.summary.writes_left {
            return Default::default();
        }
        let bulk_above = window.bulk_above;
        groups.each_ref().map(|(object, ext, group, _)| {
            if group.len() <= bulk_above {
                return None;
            }
            // The fewest calls of one job (create, upload, close, a status, the results)
            // instead of one per 200.
            self.sf_min = (self.sf_min + 5).saturating_sub(group.len().div_ceil(200) as u64);
            let records: Vec<_> = group.iter().map(|w| w.record.clone()).collect();
            let (crm, object, ext) = (self.crm.clone(), object.clone(), ext.clone());
            let job = async move {
                match ext {
                    Some(field) => {
                        crm.upsert_bulk(&object, &field, records, Priority::Routine)
                            .await
                    }
                    None => crm.update_bulk(&object, records, Priority::Routine).await,
                }
            };
            let job = job.instrument(tracing::Span::current());
            Some(AbortOnDropHandle::new(tokio::spawn(job)))
        })
    }

    /// A dry run's writes: listed with every field they would send (the caller compares them
    /// with what was last written, see [`super::dry_run::compare`]).
    fn plan_writes(&mut self, object: &str, writes: &[Write], action: &str) {
        for w in writes {
            let (crm_id, external_id) = self.record_ids(object, w);
            self.summary.plan.push(PlannedWrite {
                object: object.to_string(),
                key: w.row.key.clone(),
                crm_id,
                external_id,
                action: action.to_string(),
                fields: w
                    .record
                    .iter()
                    .map(|(field, to)| FieldChange {
                        field: field.clone(),
                        from: None,
                        to: to.clone(),
                    })
                    .collect(),
            });
        }
    }

    /// The CRM id a write names (updates carry `Id`) and its external id (an MQL record's
    /// external id field, an alert task's key).
    fn record_ids(&self, object: &str, w: &Write) -> (Option<String>, Option<String>) {
        let m = self.mapping;
        let text = |field: &str| {
            w.record
                .get(field)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let external_id = if object == m.crm.mql.object {
            text(&m.crm.mql.external_id)
        } else if object == m.crm.task {
            Some(w.row.key.clone())
        } else {
            None
        };
        (text("Id"), external_id)
    }

    fn settle(
        &mut self,
        object: &str,
        chunk: &[Write],
        outcomes: Vec<RecordOutcome>,
        label: &str,
        results: &mut Vec<(OutboxRow, Settlement)>,
    ) {
        // Each record's outcome by its index (a bulk job's come in any order: a search per
        // record was quadratic in a 25,000-record job), the first one when several name it.
        let mut by_index: Vec<Option<&RecordOutcome>> = vec![None; chunk.len()];
        for o in &outcomes {
            if let Some(slot @ None) = by_index.get_mut(o.index) {
                *slot = Some(o);
            }
        }
        for (w, outcome) in chunk.iter().zip(by_index) {
            let (crm_id, external_id) = self.record_ids(object, w);
            let mut record = RecordWrite {
                object: object.to_string(),
                crm_id: outcome.and_then(|o| o.id.clone()).or(crm_id),
                external_id,
                action: "upsert".into(),
                outcome: "no_result".into(),
                error: None,
            };
            if label == "task_create" {
                record.action = "create".into();
            } else if label != "mql_upsert" {
                record.action = "update".into();
            }
            let result = match outcome.map(|o| &o.result) {
                Some(Ok(status)) => {
                    *self.summary.written.entry(label.into()).or_default() += 1;
                    record.outcome = "written".into();
                    // Only an upsert's answer says whether it created the record.
                    match status {
                        WriteStatus::Created if label == "mql_upsert" => {
                            record.action = "create".into()
                        }
                        WriteStatus::Updated if label == "mql_upsert" => {
                            record.action = "update".into()
                        }
                        WriteStatus::AlreadyDone { .. } => record.outcome = "already_done".into(),
                        _ => {}
                    }
                    Settlement::Done
                }
                Some(Err(e)) => {
                    let text = format!("{}: {}", e.code, e.message);
                    // The store parks a row refused for now on its last attempt: say so, not
                    // that it will be sent again.
                    let last = w.row.attempts + 1 >= OUTBOX_MAX_ATTEMPTS;
                    let (settlement, after) = match (e.retryable, last) {
                        (true, false) => (Settlement::Retry(text.clone()), " (sent again next run)".to_string()),
                        (true, true) => (
                            Settlement::Retry(text.clone()),
                            format!(" (refused {OUTBOX_MAX_ATTEMPTS} times: parked until `mqlsync requeue`)"),
                        ),
                        (false, _) => (
                            Settlement::Failed(text.clone()),
                            " (refused for good: parked until the cause is fixed in the CRM and `mqlsync requeue` is run)".to_string(),
                        ),
                    };
                    self.summary
                        .write_failures
                        .push(format!("{}: {text}{after}", w.row.key));
                    record.outcome = match &settlement {
                        Settlement::Retry(_) if !last => "retry",
                        _ => "parked",
                    }
                    .into();
                    record.error = Some(text);
                    settlement
                }
                // Nothing says the CRM refused it: the next run sends it again.
                None => Settlement::Retry("the CRM returned no result for this record".into()),
            };
            self.summary.records.push(record);
            results.push((w.row.clone(), result));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_lookups_fill_each_statement_up_to_soqls_length_limit() {
        let keys: Vec<String> = (0..2_500)
            .map(|i| {
                format!("Notify:00Q5g00000{i:05}AAA-1:0055g0000000{i:03}AAA:2026-11-03T09:00:00Z")
            })
            .collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let queries = alert_lookups("Task", "MQL_Alert_Key__c", &refs);
        // 2,500 keys of 70 characters (74 quoted with `, `): about 1,350 a statement.
        assert_eq!(
            queries.len(),
            2,
            "{:?}",
            queries.iter().map(String::len).collect::<Vec<_>>()
        );
        assert!(queries.iter().all(|q| q.len() <= MAX_SOQL_CHARS));
        assert!(queries[0].len() > MAX_SOQL_CHARS - 100, "the first is full");
        let listed: usize = queries.iter().map(|q| q.matches("'Notify:").count()).sum();
        assert_eq!(listed, keys.len());
        assert!(
            queries[1].starts_with(
                "SELECT MQL_Alert_Key__c FROM Task WHERE MQL_Alert_Key__c IN ('Notify:"
            )
        );
        assert!(queries[1].ends_with("Z')"));
        assert!(alert_lookups("Task", "K", &[]).is_empty());
    }
}
