//! `mqlsync run --once`: one full sync cycle. Pull what changed since the stored cursors
//! (thresholds with deletions, leads, contacts, opportunities and reps' MQL edits from the CRM;
//! Change Score activities and the CRM links of their leads from the MAP), reconcile through
//! the engine, commit each page with its cursor in one transaction, then drain the outbox
//! through sObject Collections (200 records a call, one result per record).
//!
//! A record that cannot be read fails that record (counted, logged), not the page. A daily
//! limit or budget reserve stops the run cleanly after the last committed page and says when
//! it can resume. Run twice, the second run writes nothing: every event is a replay and every
//! outbox row is already written.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::connectors::marketo::{ActivityCursor, ActivityPages, ActivitySource};
use crate::connectors::salesforce::incremental::IncrementalRead;
use crate::connectors::salesforce::soql::{self, ModstampCursor, datetime_literal};
use crate::connectors::{
    ConnectorError, Crm, ErrorClass, Map, Priority, QueryPages, RecordOutcome,
};
use crate::engine::model::{CrmKind, CycleStatus, Event};
use crate::engine::{Context, EngineState, Policy, reconcile};
use crate::mapping::Mapping;
use crate::store::{Batch, OutboxRow, Settlement, Store, StoreError};

use super::records::{self, RecordError, ScoreFields};
use super::writes::{self, AlertState, Write};

/// Alert keys looked up per query: about 100 characters each once quoted and URL-encoded, so
/// 100 keep the query URL well under Salesforce's 16,384-character limit.
const ALERT_LOOKUP_KEYS: usize = 100;

/// Why a run stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Transparent: the connector's message names the cause, once (with `{0}` and a source,
    /// `{:#}` printed it twice).
    #[error(transparent)]
    Remote(#[from] ConnectorError),
    #[error(
        "cursor {name} in the store cannot be read ({detail}); delete it with care to re-read from the start"
    )]
    Cursor { name: String, detail: String },
}

impl SyncError {
    /// When the run may resume, for a daily limit or the budget reserve.
    pub fn resume_at(&self) -> Option<Timestamp> {
        match self {
            SyncError::Remote(e) => match e.class() {
                ErrorClass::Checkpoint { resume_at } => Some(resume_at),
                _ => None,
            },
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
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            lookback: Duration::from_secs(300),
            initial_window: SignedDuration::from_hours(24 * 30),
            max_empty_pages: 50,
        }
    }
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
    /// Records written, by call.
    pub written: BTreeMap<String, usize>,
    /// Outbox rows settled without a write, by why: `task_found` (an earlier run created the
    /// task and stopped before it heard back), `task_superseded` (the alert's cycle moved on).
    pub settled: BTreeMap<String, usize>,
    /// Records the CRM refused, and rows mqlsync does not send (each kept with its outbox
    /// row and error).
    pub write_failures: Vec<String>,
    /// API calls this run made, by system (from the connectors' usage counters).
    pub calls: BTreeMap<String, u64>,
    /// The fewest calls the same work could take, by system.
    pub minimum_calls: BTreeMap<String, u64>,
}

/// Whether an alert still asks its rep for something: the cycle is Open (not yet accepted,
/// rejected or converted) and owned by that rep. A first run catching up on weeks of history,
/// or a writer held up by an outage, would otherwise hand each rep of a round-robin chain a
/// task for an MQL that has since moved on. A current alert is due on the date of the SLA
/// deadline in the cycle's team's time zone.
fn alert_state(state: &EngineState, policy: &Policy, alert: &writes::Alert<'_>) -> AlertState {
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
    AlertState::Current {
        due: cycle.sla_due_at.map(|due| due.to_zoned(zone).date()),
    }
}

/// The field-history object of a custom object (`MQL_Threshold__c` -> `MQL_Threshold__History`).
fn history_object(object: &str) -> String {
    format!("{}__History", object.strip_suffix("__c").unwrap_or(object))
}

struct Run<'a, C: Crm, M: Map> {
    crm: &'a C,
    map: &'a M,
    mapping: &'a Mapping,
    policy: &'a Policy,
    store: &'a mut Store,
    state: EngineState,
    now: Timestamp,
    settings: &'a RunSettings,
    summary: RunSummary,
    sf_min: u64,
    mkto_min: u64,
    usage: &'a dyn Fn() -> (u64, u64),
    /// The CRM's call counter after this run's first call, less that call: Salesforce only
    /// reports the org's running total, which includes every other integration's calls.
    sf_start: Option<u64>,
}

/// Runs one sync cycle at `now` (the caller's clock). Holds the store's writer lock for the
/// whole run: a second run on the same store (an overlapping cron job) stops at once with
/// [`StoreError::Busy`].
#[allow(clippy::too_many_arguments)]
pub async fn run_once<C: Crm, M: Map>(
    crm: &C,
    map: &M,
    mapping: &Mapping,
    policy: &Policy,
    store: &mut Store,
    now: Timestamp,
    settings: &RunSettings,
    usage: impl Fn() -> (u64, u64),
) -> Result<RunSummary, SyncError> {
    let _writer = store.lock_writer()?;
    // Marketo's count is the instance's, for today: read it first, so that the reserve holds
    // across runs and against other integrations (a fresh process would otherwise count from
    // zero). The call itself is counted below, with the run's.
    map.refresh_usage().await?;
    let before = usage();
    let state = store.load_engine(policy)?;
    let mut run = Run {
        crm,
        map,
        mapping,
        policy,
        store,
        state,
        now,
        settings,
        summary: RunSummary::default(),
        sf_min: 0,
        mkto_min: 1,
        usage: &usage,
        sf_start: None,
    };
    let mut result = run.all().await;
    // A complete run leaves a score snapshot, so the next run loads without replaying the
    // score history. Not after a failure: the state may then hold a page that did not commit.
    if result.is_ok()
        && let Err(e) = run.store.save_scores(&mut run.state)
    {
        result = Err(e.into());
    }
    let after = usage();
    let sf_calls = run
        .sf_start
        .map_or(0, |start| after.0.saturating_sub(start));
    run.summary.calls.insert("salesforce".into(), sf_calls);
    run.summary
        .calls
        .insert("marketo".into(), after.1.saturating_sub(before.1) + 1);
    run.summary
        .minimum_calls
        .insert("salesforce".into(), run.sf_min);
    run.summary
        .minimum_calls
        .insert("marketo".into(), run.mkto_min);
    result.map(|()| run.summary)
}

impl<C: Crm, M: Map> Run<'_, C, M> {
    async fn all(&mut self) -> Result<(), SyncError> {
        let m = self.mapping;
        // Thresholds first, so that people read in this run meet the knob as it stands.
        let fields = records::threshold_fields(m);
        self.crm_object(&m.crm.threshold.object.clone(), fields, true, |m, r| {
            records::threshold(m, r).map(Event::Threshold)
        })
        .await?;
        self.threshold_history().await?;
        for kind in [CrmKind::Lead, CrmKind::Contact] {
            let object = match kind {
                CrmKind::Lead => m.crm.lead.object.clone(),
                CrmKind::Contact => m.crm.contact.object.clone(),
            };
            let fields = records::person_fields(m, kind);
            self.crm_object(&object, fields, false, move |m, r| {
                records::person(m, kind, r).map(Event::Person)
            })
            .await?;
        }
        let fields = records::OPPORTUNITY_FIELDS
            .iter()
            .map(|s| s.to_string())
            .collect();
        self.crm_object(&m.crm.opportunity.clone(), fields, false, |m, r| {
            records::opportunity(m, r).map(Event::Opportunity)
        })
        .await?;
        let fields = records::mql_fields(m);
        self.crm_object(&m.crm.mql.object.clone(), fields, false, |m, r| {
            records::cycle_edit(m, r).map(Event::CycleEdit)
        })
        .await?;
        self.map_activities().await?;
        self.drain_outbox().await
    }

    fn cursor<T: serde::de::DeserializeOwned + Default>(&self, name: &str) -> Result<T, SyncError> {
        match self.store.cursor(name)? {
            None => Ok(T::default()),
            Some(text) => serde_json::from_str(&text).map_err(|e| SyncError::Cursor {
                name: name.into(),
                detail: e.to_string(),
            }),
        }
    }

    /// Applies events, commits them with their decisions and the cursor in one transaction.
    fn commit(&mut self, events: Vec<Event>, cursor: (String, String)) -> Result<(), SyncError> {
        let ctx = Context {
            policy: self.policy,
            now: self.now,
            backfill: false,
        };
        let mut decisions = Vec::new();
        for e in &events {
            decisions.extend(reconcile(&mut self.state, &ctx, e));
        }
        for d in &decisions {
            let name = d.action.name();
            *self.summary.decisions.entry(name.into()).or_default() += 1;
        }
        self.summary.events += events.len();
        self.store.commit_batch(
            Batch {
                events: &events,
                decisions: &decisions,
                cursors: &[cursor],
                seen_at: self.now,
            },
            &mut self.state,
        )?;
        Ok(())
    }

    fn unreadable(&mut self, e: RecordError) {
        tracing::warn!(object = %e.object, id = %e.id, field = %e.field, "record skipped: {}", e.message);
        self.summary.unreadable.push(e.to_string());
    }

    async fn crm_object(
        &mut self,
        object: &str,
        fields: Vec<String>,
        all: bool,
        to_event: impl Fn(&Mapping, &crate::connectors::Record) -> Result<Event, RecordError>,
    ) -> Result<(), SyncError> {
        let name = format!("crm.{object}");
        let cursor: ModstampCursor = self.cursor(&name)?;
        let field_refs: Vec<&str> = fields.iter().map(String::as_str).collect();
        let mut reader = IncrementalRead::new(
            self.crm.clone(),
            object,
            &field_refs,
            cursor,
            self.settings.lookback,
            None,
            all,
        )?;
        let mut read = 0usize;
        let mut pages = 0u64;
        while let Some(page) = reader.next_page().await? {
            if self.sf_start.is_none() {
                self.sf_start = Some((self.usage)().0.saturating_sub(1));
            }
            pages += 1;
            read += page.records.len();
            let mut events = Vec::with_capacity(page.records.len());
            for r in &page.records {
                match to_event(self.mapping, r) {
                    Ok(e) => events.push(e),
                    Err(e) => self.unreadable(e),
                }
            }
            let cursor = serde_json::to_string(&page.cursor).expect("cursors serialise");
            self.commit(events, (name.clone(), cursor))?;
        }
        // The fewest query calls for what was read: one per 2,000 records, at least one.
        self.sf_min += (read as u64).div_ceil(2000).max(1);
        tracing::debug!(object, pages, read, "read");
        *self.summary.read.entry(object.to_string()).or_default() += read;
        Ok(())
    }

    /// The CRM's field history of threshold records since the last run: who turned which knob
    /// from what to what. History objects have no `SystemModstamp`, so the cursor is the last
    /// `CreatedDate` read, re-read with the look-back; rows seen again are ignored by id.
    async fn threshold_history(&mut self) -> Result<(), SyncError> {
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
        let (mut read, mut last) = (0usize, since);
        while let Some(page) = pages.next_page().await? {
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
            self.store
                .record_threshold_history(&rows, (&name, &cursor), self.now)?;
        }
        self.sf_min += (read as u64).div_ceil(2000).max(1);
        *self.summary.read.entry(object).or_default() += read;
        Ok(())
    }

    async fn map_activities(&mut self) -> Result<(), SyncError> {
        let m = self.mapping;
        let describe = self.map.describe().await?;
        let describe: Vec<serde_json::Value> = describe
            .into_iter()
            .map(serde_json::Value::Object)
            .collect();
        let fields = ScoreFields::from_describe(m, &describe);
        self.mkto_min += 1;
        let name = "map.activities".to_string();
        let mut cursor: ActivityCursor = self.cursor(&name)?;
        if cursor.next_page_token.is_empty() {
            cursor.next_page_token = self
                .map
                .paging_token(self.now - self.settings.initial_window)
                .await?;
            self.mkto_min += 1;
        }
        let type_id = u32::try_from(m.map.score_activity_type).unwrap_or(22);
        let mut pages = ActivityPages::new(
            self.map.clone(),
            ActivitySource::Types(vec![type_id]),
            cursor,
            self.settings.max_empty_pages,
        );
        let mut read = 0usize;
        let mut nonempty = 0u64;
        while let Some((activities, cursor)) = pages.next_page().await? {
            read += activities.len();
            nonempty += u64::from(!activities.is_empty());
            let mut changes = Vec::with_capacity(activities.len());
            for a in &activities {
                let value = serde_json::to_value(a).expect("activities serialise");
                match records::score_change(&fields, &value) {
                    Ok(Some(c)) => changes.push(c),
                    Ok(None) => {}
                    Err(e) => self.unreadable(e),
                }
            }
            // Links of leads the engine has not linked yet, 300 ids a call.
            let unlinked: BTreeSet<i64> = changes
                .iter()
                .map(|c| c.map_lead_id)
                .filter(|id| self.state.map_leads.get(id).is_none_or(|l| l.crm.is_none()))
                .collect();
            let mut events = Vec::new();
            let ids: Vec<String> = unlinked.iter().map(i64::to_string).collect();
            let link_fields = [
                m.map.crm_lead_id.as_str(),
                m.map.crm_contact_id.as_str(),
                "updatedAt",
            ];
            for chunk in ids.chunks(300) {
                let mut token: Option<String> = None;
                loop {
                    let page = self
                        .map
                        .leads_by_filter("id", chunk, &link_fields, token.as_deref())
                        .await?;
                    self.mkto_min += 1;
                    for lead in page.leads {
                        match records::link(m, &serde_json::Value::Object(lead)) {
                            Ok(l) => events.push(Event::Link(l)),
                            Err(e) => self.unreadable(e),
                        }
                    }
                    match page.next_page_token {
                        Some(t) => token = Some(t),
                        None => break,
                    }
                }
            }
            events.extend(changes.into_iter().map(Event::Score));
            let cursor = serde_json::to_string(&cursor).expect("cursors serialise");
            self.commit(events, (name.clone(), cursor))?;
        }
        self.mkto_min += nonempty.max(1);
        *self.summary.read.entry("activities".into()).or_default() += read;
        Ok(())
    }

    async fn drain_outbox(&mut self) -> Result<(), SyncError> {
        let m = self.mapping;
        let (state, policy) = (&self.state, self.policy);
        let mut plan = writes::plan(m, self.store.outbox_pending(usize::MAX >> 1)?, |a| {
            alert_state(state, policy, a)
        });
        let tasks = std::mem::take(&mut plan.task_creates);
        self.sf_min += writes::minimum_calls(&plan, 200) as u64;
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
        let mql = (
            m.crm.mql.object.clone(),
            Some(m.crm.mql.external_id.clone()),
            plan.mql_upserts,
            "mql_upsert",
        );
        let leads = (
            m.crm.lead.object.clone(),
            None,
            plan.lead_updates,
            "lead_update",
        );
        let contacts = (
            m.crm.contact.object.clone(),
            None,
            plan.contact_updates,
            "contact_update",
        );
        let mut stop = None;
        for (object, ext, group, label) in [mql, leads, contacts] {
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
                    Ok(outcomes) => self.settle(chunk, outcomes, label, &mut results),
                    // The whole call failed after the connector's own retries: the rows stay
                    // pending for the next run.
                    Err(e) => stop = Some(e),
                }
            }
        }
        if stop.is_none()
            && let Err(e) = self.alert_tasks(tasks, &mut results).await
        {
            stop = Some(e);
        }
        self.store.outbox_settle(&results, self.now)?;
        match stop {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
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
        for chunk in tasks.chunks(ALERT_LOOKUP_KEYS) {
            let keys: Vec<String> = chunk.iter().map(|w| soql::quote(&w.row.key)).collect();
            let query = format!(
                "SELECT {key_field} FROM {object} WHERE {key_field} IN ({})",
                keys.join(", ")
            );
            let mut pages = QueryPages::new(self.crm.clone(), query, true, Priority::Essential);
            while let Some(page) = pages.next_page().await? {
                self.sf_min += 1;
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
        self.sf_min += new.len().div_ceil(200) as u64;
        for chunk in new.chunks(200) {
            let records: Vec<_> = chunk.iter().map(|w| w.record.clone()).collect();
            let outcomes = self.crm.create(object, records).await?;
            self.settle(chunk, outcomes, "task_create", results);
        }
        Ok(())
    }

    fn settle(
        &mut self,
        chunk: &[Write],
        outcomes: Vec<RecordOutcome>,
        label: &str,
        results: &mut Vec<(OutboxRow, Settlement)>,
    ) {
        for (i, w) in chunk.iter().enumerate() {
            let result = match outcomes.iter().find(|o| o.index == i).map(|o| &o.result) {
                Some(Ok(_)) => {
                    *self.summary.written.entry(label.into()).or_default() += 1;
                    Settlement::Done
                }
                Some(Err(e)) => {
                    let text = format!("{}: {}", e.code, e.message);
                    let (settlement, after) = if e.retryable {
                        (Settlement::Retry(text.clone()), " (sent again next run)")
                    } else {
                        (Settlement::Failed(text.clone()), "")
                    };
                    self.summary
                        .write_failures
                        .push(format!("{}: {text}{after}", w.row.key));
                    settlement
                }
                // Nothing says the CRM refused it: the next run sends it again.
                None => Settlement::Retry("the CRM returned no result for this record".into()),
            };
            results.push((w.row.clone(), result));
        }
    }
}
