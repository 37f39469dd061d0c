//! The backfill pass (`mqlsync backfill --since D [--until D]`): the MQL cycles the process
//! would have produced before go-live, rebuilt by replaying history through the same engine.
//!
//! Order: the CRM's people as they stood when the window starts (their status from the CRM's
//! status history, see [`versions_over_time`]) and the reps' MQL edits; the threshold records
//! as they stood over time (their current versions and the CRM's field history, see
//! [`crate::backfill::threshold_versions`]); the opportunities as they opened and closed; the
//! MAP lead of every CRM person (links only); then the Change Score history of `[since,
//! until)` with the activities the hand-raiser rules name, page by page, merged in time order
//! with the versions of people, thresholds and opportunities, each event decided at its own
//! instant with the engine in backfill mode (cycles marked backfilled, no alerts, no SLA).
//! (By bulk extract the hand-raisers' activities come by an export of their own, read before
//! the replay and merged with the versions.) Each page commits with
//! its cursor, so a killed backfill started again with the same window continues where it
//! stopped and ends where an unbroken one ends; a complete one started again writes nothing.
//! The cycles are written like a run's, through Bulk API 2.0 ingest above a size.
//!
//! A backfill rebuilds what came before go-live: on a store that has gone live it stops (the
//! cycles it would make could not take their place before the live ones).

use std::collections::{BTreeMap, HashMap, VecDeque};

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::connectors::salesforce::soql::{self, ModstampCursor, datetime_literal};
use crate::connectors::{ConnectorError, Crm, Map, Priority, QueryPages};
use crate::engine::model::{CrmKind, Event, Opportunity, PersonFacts, Text};
use crate::store::ThresholdFieldChange;

use super::crm_read::CrmObject;
use super::current;
use super::once::{
    ActivityRead, BackfillWindow, Run, SyncError, history_object, history_parent_field, phase,
};
use super::records;

/// Where the store keeps a backfill's window and whether it is complete.
pub const CURSOR: &str = "backfill";
/// The backfill's own place in the activities (a live run keeps `map.activities`).
const ACTIVITIES_CURSOR: &str = "backfill.activities";
/// The backfill's progress through the MAP leads of the CRM's people.
const LINKS_CURSOR: &str = "backfill.links";

/// The window of the backfill a store holds, and when it completed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Done {
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    /// `None` while it is under way.
    pub complete_at: Option<Timestamp>,
}

/// What a backfill rebuilt: every backfilled cycle the store holds, counted.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BackfillReport {
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    /// The backfill had completed before this call: nothing was read again.
    pub already_complete: bool,
    pub cycles: usize,
    pub by_segment: BTreeMap<String, usize>,
    /// By the month of the MQL date (`2026-03`).
    pub by_month: BTreeMap<String, usize>,
    pub by_status: BTreeMap<String, usize>,
    /// Threshold field-history rows whose old value could not be read (kept the later value).
    pub unreadable_history: Vec<String>,
}

impl<C: Crm, M: Map> Run<'_, C, M> {
    pub(super) async fn backfill(&mut self, window: &BackfillWindow) -> Result<(), SyncError> {
        if let Some(at) = self.state.meta.went_live {
            return Err(SyncError::AlreadyLive { at });
        }
        let done: Done = self.cursor(CURSOR)?;
        let same = done.since == Some(window.since) && done.until == Some(window.until);
        if done.since.is_some() && !same {
            return Err(SyncError::OtherBackfill {
                since: done.since.unwrap_or(window.since),
                until: done.until.unwrap_or(window.until),
                complete: done.complete_at.is_some(),
            });
        }
        let mut report = BackfillReport {
            since: Some(window.since),
            until: Some(window.until),
            ..BackfillReport::default()
        };
        if done.complete_at.is_none() {
            let started = Done {
                since: Some(window.since),
                until: Some(window.until),
                complete_at: None,
            };
            self.later_cursors.push((
                CURSOR.into(),
                serde_json::to_string(&started).expect("cursors serialise"),
            ));
            // Accounts as they stand today (their attributes are no history): the people
            // of the timeline carry them from their first version.
            self.read_objects(&[CrmObject::Account]).await?;
            let people = self.people_timeline(window).await?;
            let mut timeline: Vec<Event> = self
                .threshold_timeline(window, &mut report.unreadable_history)
                .instrument(phase("threshold history"))
                .await?
                .into();
            timeline.extend(people);
            timeline.extend(
                self.opportunity_timeline(window)
                    .instrument(phase("opportunities"))
                    .await?,
            );
            let above = self.settings.bulk_reads.activities_above_days;
            let in_bulk = super::bulk_read::activities_in_bulk(window.since, window.until, above);
            // The activities API reads the hand-raiser rules' activities in the score
            // history's calls; a bulk extract reads them by an export of their own, merged
            // here as the versions are.
            if in_bulk {
                timeline.extend(
                    self.hand_raises_in_bulk(window.since, window.until)
                        .instrument(phase("hand-raiser activities (bulk extract)"))
                        .await?,
                );
            }
            timeline.sort_by_key(Event::at);
            let mut versions: VecDeque<Event> = timeline.into();
            let links: current::Progress = self.cursor(LINKS_CURSOR)?;
            if links.read_at.is_none() {
                let take = current::Take::Links;
                let choice = self.choose_lead_read(&links, take);
                self.read_linked_leads(links, LINKS_CURSOR, take, &choice)
                    .instrument(phase("MAP lead links"))
                    .await?;
            }
            let read = ActivityRead {
                cursor: ACTIVITIES_CURSOR.into(),
                start: window.since,
                until: Some(window.until),
            };
            self.store.replaying(true)?;
            let replayed = if in_bulk {
                self.read_activities_in_bulk(read, &mut versions)
                    .instrument(phase("score history (bulk extract)"))
                    .await
            } else {
                self.read_activities(read, &mut versions)
                    .instrument(phase("score history"))
                    .await
            };
            self.store.replaying(false)?;
            replayed?;
            // The knob turns after the last score change, and the versions of today.
            let finished = Done {
                complete_at: Some(self.now),
                ..started
            };
            let cursor = serde_json::to_string(&finished).expect("cursors serialise");
            self.commit(versions.into_iter().collect(), (CURSOR.into(), cursor))?;
        } else {
            report.already_complete = true;
        }
        for person in self.state.persons.iter().map(|(_, p)| p) {
            for c in person.cycles.iter().filter(|c| c.backfilled) {
                report.cycles += 1;
                *report.by_segment.entry(c.segment.clone()).or_default() += 1;
                let month = c.mql_at.strftime("%Y-%m").to_string();
                *report.by_month.entry(month).or_default() += 1;
                *report
                    .by_status
                    .entry(c.status.as_str().to_string())
                    .or_default() += 1;
            }
        }
        self.summary.backfill = Some(report);
        self.drain_outbox().instrument(phase("writes")).await
    }

    /// The people as they stood over time. Each lead and contact is read whole (not since a
    /// cursor: a restarted backfill rebuilds the versions) and committed as it stood when the
    /// window starts; the versions after that (one per change of its status in the CRM's
    /// status history, then today's) are returned for the timeline. The live cursors of the
    /// people are set once read; the reps' MQL edits are read as a run reads them.
    async fn people_timeline(&mut self, window: &BackfillWindow) -> Result<Vec<Event>, SyncError> {
        let m = self.mapping;
        let mut later = Vec::new();
        for kind in [CrmKind::Lead, CrmKind::Contact] {
            let (object, status) = match kind {
                CrmKind::Lead => (m.crm.lead.object.clone(), m.crm.lead.status.clone()),
                CrmKind::Contact => (m.crm.contact.object.clone(), m.crm.contact.status.clone()),
            };
            let changes = self
                .status_history(&object, &status, window.since)
                .instrument(phase(&history_object(&object)))
                .await?;
            self.person_versions(kind, &object, &changes, window.since, &mut later)
                .instrument(phase(&object))
                .await?;
        }
        self.read_objects(&[CrmObject::MqlEdit]).await?;
        Ok(later)
    }

    /// Every lead or contact, committed as it stood at `since`; its later versions go to `later`.
    async fn person_versions(
        &mut self,
        kind: CrmKind,
        object: &str,
        changes: &StatusChanges,
        since: Timestamp,
        later: &mut Vec<Event>,
    ) -> Result<(), SyncError> {
        let fields = records::person_fields(self.mapping, kind);
        let last = self
            .read_crm_object(
                object,
                &fields,
                false,
                ModstampCursor::default(),
                PEOPLE_CURSOR,
                |m, r| {
                    let facts = records::person(m, kind, r)?;
                    let history = changes.get(facts.crm.id.as_str()).map(Vec::as_slice);
                    let (start, versions) = versions_over_time(facts, history, since);
                    later.extend(versions.into_iter().map(Event::Person));
                    Ok(Event::Person(start))
                },
            )
            .await?;
        if let Some(cursor) = last {
            self.later_cursors.push((format!("crm.{object}"), cursor));
        }
        Ok(())
    }

    /// The changes of the people's status field since `since`, by person, oldest first, from
    /// the object's field history (`LeadHistory`, `ContactHistory`). An org that keeps no
    /// history of the object has none: its backfilled cycles then get no SAL or rejection
    /// date from it, and a warning says so.
    async fn status_history(
        &mut self,
        object: &str,
        status: &str,
        since: Timestamp,
    ) -> Result<StatusChanges, SyncError> {
        let history = history_object(object);
        let parent = history_parent_field(object);
        let field = soql::quote(status);
        let soql = format!(
            "SELECT Id, {parent}, Field, OldValue, NewValue, CreatedDate FROM {history} WHERE Field = {field} AND CreatedDate >= {} ORDER BY CreatedDate, Id",
            datetime_literal(since)
        );
        let mut pages =
            QueryPages::new(self.crm.clone(), soql, false, Priority::Routine).reading_ahead();
        let mut changes = StatusChanges::new();
        let (mut read, mut count) = (0usize, 0u64);
        loop {
            let page = match pages.next_page().await {
                Ok(Some(page)) => page,
                Ok(None) => break,
                Err(ConnectorError::Request { code, message, .. })
                    if code == "INVALID_TYPE" && count == 0 =>
                {
                    tracing::warn!(
                        object = history,
                        %message,
                        "the CRM keeps no field history of {object}: backfilled cycles of its records get no SAL or rejection date from their status"
                    );
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            count += 1;
            read += page.len();
            for r in &page {
                let text = |f: &str| r.get(f).and_then(|v| v.as_str()).map(str::to_string);
                let at = text("CreatedDate")
                    .as_deref()
                    .and_then(records::parse_datetime);
                match (text(&parent), at) {
                    (Some(id), Some(at)) => changes.entry(id).or_default().push(StatusChange {
                        at,
                        old: text("OldValue"),
                        new: text("NewValue"),
                    }),
                    _ => self.unreadable(records::RecordError {
                        object: history.clone(),
                        id: text("Id").unwrap_or_default(),
                        field: format!("{parent}, CreatedDate"),
                        message: "a history row without its record or date".into(),
                    }),
                }
            }
            self.log_page(&history, page.len(), "");
        }
        self.sf_min += (read as u64).div_ceil(2000).max(1);
        self.log_phase_done(read, count);
        *self.summary.read.entry(history).or_default() += read;
        Ok(changes)
    }

    /// The opportunities as they stood over time: each as it was created (open), as it closed
    /// (on its close date), and as it is now, so that an MQL is converted when its account's
    /// opportunity was opened and the exclusion rules see the opportunities of that moment. One
    /// created before the window starts as it stood then.
    async fn opportunity_timeline(
        &mut self,
        window: &BackfillWindow,
    ) -> Result<Vec<Event>, SyncError> {
        let m = self.mapping;
        let soql = format!(
            "SELECT {} FROM {}",
            records::OPPORTUNITY_FIELDS.join(", "),
            m.crm.opportunity
        );
        let mut pages =
            QueryPages::new(self.crm.clone(), soql, false, Priority::Routine).reading_ahead();
        let mut events = Vec::new();
        let mut read = 0usize;
        while let Some(page) = pages.next_page().await? {
            read += page.len();
            for r in &page {
                match records::opportunity(m, r) {
                    Ok(o) => events.extend(opportunity_versions(&o, window.since)),
                    Err(e) => self.unreadable(e),
                }
            }
        }
        self.sf_min += (read as u64).div_ceil(2000).max(1);
        *self
            .summary
            .read
            .entry(m.crm.opportunity.clone())
            .or_default() += read;
        Ok(events)
    }

    /// The threshold records as they stood over time, oldest version first: the current
    /// records (with deletions) and the CRM's field history (committed to the store as a run
    /// does), one version per save.
    async fn threshold_timeline(
        &mut self,
        window: &BackfillWindow,
        unreadable: &mut Vec<String>,
    ) -> Result<VecDeque<Event>, SyncError> {
        let m = self.mapping;
        let fields = records::threshold_fields(m).join(", ");
        let soql = format!(
            "SELECT {fields}, CreatedDate FROM {}",
            m.crm.threshold.object
        );
        let mut pages = QueryPages::new(self.crm.clone(), soql, true, Priority::Routine);
        let mut current = Vec::new();
        let mut read = 0usize;
        while let Some(page) = pages.next_page().await? {
            read += page.len();
            for r in &page {
                match records::threshold(m, r) {
                    Ok(t) => {
                        let created = r
                            .get("CreatedDate")
                            .and_then(|v| v.as_str())
                            .and_then(records::parse_datetime);
                        current.push((t, created));
                    }
                    Err(e) => self.unreadable(e),
                }
            }
        }
        self.sf_min += (read as u64).div_ceil(2000).max(1);
        *self
            .summary
            .read
            .entry(m.crm.threshold.object.clone())
            .or_default() += read;
        self.threshold_history().await?;
        let mut versions = Vec::new();
        for (t, created) in &current {
            let history: Vec<ThresholdFieldChange> = self.store.threshold_history(&t.id)?;
            let mut bad = Vec::new();
            let made = crate::backfill::threshold_versions(
                m,
                t,
                *created,
                &history,
                window.since,
                &mut bad,
            );
            unreadable.extend(bad.iter().map(|r| {
                format!(
                    "{} {} ({}): {}: {:?} cannot be read",
                    history_object(&m.crm.threshold.object),
                    r.id,
                    r.threshold_id,
                    r.field,
                    r.old_value
                )
            }));
            versions.extend(made.into_iter().map(Event::Threshold));
        }
        versions.sort_by_key(Event::at);
        Ok(versions.into())
    }
}

/// Where a backfill's read of the people has got to (informative: a restarted backfill reads
/// them whole again).
const PEOPLE_CURSOR: &str = "backfill.people";

/// One change of a person's status, from the CRM's field history.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct StatusChange {
    pub at: Timestamp,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// Status changes by CRM id, oldest first.
type StatusChanges = HashMap<String, Vec<StatusChange>>;

/// One person's facts over a replay starting at `since`, from today's facts and the changes of
/// their status since `since` (oldest first): the version to hold from the start (its status
/// the one the first change replaced, dated just before `since`), then a version per change at
/// its instant, then today's facts when the record changed after the last change. Without
/// changes, today's facts are the only version. Only the status varies: the other fields are
/// today's.
fn versions_over_time(
    current: PersonFacts,
    changes: Option<&[StatusChange]>,
    since: Timestamp,
) -> (PersonFacts, Vec<PersonFacts>) {
    let Some((first, rest)) = changes.and_then(<[StatusChange]>::split_first) else {
        return (current, Vec::new());
    };
    let with = |status: &Option<String>, at: Timestamp| {
        let mut v = current.clone();
        v.status = status.as_deref().map(Text::from);
        v.modified_at = at;
        v
    };
    let start = with(
        &first.old,
        since.min(first.at) - SignedDuration::from_millis(1),
    );
    let mut versions: Vec<PersonFacts> = std::iter::once(first)
        .chain(rest)
        .map(|c| with(&c.new, c.at))
        .collect();
    let last = rest.last().unwrap_or(first).at;
    if current.modified_at > last {
        versions.push(current);
    }
    (start, versions)
}

/// One opportunity's versions for a replay starting at `since`: open from its creation (or from
/// `since` when created before), closed from its close date (midnight UTC; the CRM keeps no
/// close instant), and as it is now.
fn opportunity_versions(o: &Opportunity, since: Timestamp) -> Vec<Event> {
    let closed_at = o
        .close_date
        .filter(|_| o.is_closed)
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|z| z.timestamp().max(o.created_at));
    let mut versions = Vec::new();
    let open_from = o.created_at.max(since);
    if closed_at.is_none_or(|c| c > open_from) {
        versions.push(Opportunity {
            is_closed: false,
            is_won: false,
            modified_at: open_from,
            ..o.clone()
        });
    }
    if let Some(c) = closed_at.filter(|c| *c < o.modified_at) {
        versions.push(Opportunity {
            modified_at: c.max(since),
            ..o.clone()
        });
    }
    versions.push(o.clone());
    versions.dedup_by_key(|v| v.modified_at);
    versions.into_iter().map(Event::Opportunity).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn opp(closed: Option<&str>) -> Opportunity {
        Opportunity {
            id: "006A".into(),
            account_id: "001A".into(),
            is_closed: closed.is_some(),
            is_won: closed.is_some(),
            close_date: closed.map(|d| d.parse().unwrap()),
            created_at: ts("2026-03-01T10:00:00Z"),
            modified_at: ts("2026-09-01T10:00:00Z"),
        }
    }

    fn states(events: &[Event]) -> Vec<(Timestamp, bool)> {
        events
            .iter()
            .map(|e| match e {
                Event::Opportunity(o) => (o.modified_at, o.is_closed),
                _ => unreachable!(),
            })
            .collect()
    }

    fn lead(status: &str, modified: &str) -> PersonFacts {
        PersonFacts {
            crm: crate::engine::model::CrmRef {
                kind: CrmKind::Lead,
                id: "00QA".into(),
            },
            status: Some(status.into()),
            owner_id: None,
            title: Some("CTO".into()),
            account_id: None,
            converted: false,
            attributes: Default::default(),
            prior_mql_at: None,
            modified_at: ts(modified),
        }
    }

    fn change(at: &str, old: &str, new: &str) -> StatusChange {
        StatusChange {
            at: ts(at),
            old: Some(old.into()),
            new: Some(new.into()),
        }
    }

    fn statuses(versions: &[PersonFacts]) -> Vec<(Timestamp, &str)> {
        versions
            .iter()
            .map(|v| (v.modified_at, v.status.as_deref().unwrap_or("")))
            .collect()
    }

    #[test]
    fn a_person_stands_as_before_the_first_change_then_as_each_change_made_them() {
        let since = ts("2026-01-01T00:00:00Z");
        let today = lead("Nurture", "2026-09-01T10:00:00Z");
        let changes = [
            change("2026-03-01T10:00:00Z", "Open", "Working - Contacted"),
            change("2026-05-01T10:00:00Z", "Working - Contacted", "Nurture"),
        ];
        let (start, later) = versions_over_time(today.clone(), Some(&changes), since);
        assert_eq!(
            statuses(&[start]),
            [(since - SignedDuration::from_millis(1), "Open")]
        );
        assert_eq!(
            statuses(&later),
            [
                (ts("2026-03-01T10:00:00Z"), "Working - Contacted"),
                (ts("2026-05-01T10:00:00Z"), "Nurture"),
                (ts("2026-09-01T10:00:00Z"), "Nurture"),
            ]
        );
        assert_eq!(later.last(), Some(&today), "today's facts last");
        // No change since the window's start: today's facts only.
        let (start, later) = versions_over_time(today.clone(), None, since);
        assert_eq!((start, later.len()), (today, 0));
    }

    #[test]
    fn an_opportunity_is_open_from_its_creation_and_closed_from_its_close_date() {
        let since = ts("2026-01-01T00:00:00Z");
        assert_eq!(
            states(&opportunity_versions(&opp(Some("2026-06-30")), since)),
            [
                (ts("2026-03-01T10:00:00Z"), false),
                (ts("2026-06-30T00:00:00Z"), true),
                (ts("2026-09-01T10:00:00Z"), true),
            ]
        );
        assert_eq!(
            states(&opportunity_versions(&opp(None), since)),
            [
                (ts("2026-03-01T10:00:00Z"), false),
                (ts("2026-09-01T10:00:00Z"), false),
            ]
        );
        // Created and closed before the window: as it stood when the window opened.
        let old = ts("2026-08-01T00:00:00Z");
        assert_eq!(
            states(&opportunity_versions(&opp(Some("2026-06-30")), old)),
            [(old, true), (ts("2026-09-01T10:00:00Z"), true)]
        );
    }
}
