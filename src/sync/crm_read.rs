//! The CRM object reads of the pollers as values: which object, its fields and cursor, what
//! its records become, and a reader that owns its client. `run --once` runs them in line
//! ([`Run::read_objects`]); the daemon hands a source's readers to a task of their own and
//! applies each page in its loop as it arrives ([`Syncer::apply_crm_page`]), so that a
//! Salesforce page in flight (2,000 records can take a second) never holds back a Marketo
//! poll or the writer.
//!
//! Sources read this way: people (leads, contacts), reps' MQL edits, accounts and
//! opportunities. The thresholds stay in the loop: a knob turn's read is a few records and
//! the one thing the loop should do at once, and their field history keeps its own cursor.
//!
//! Must not: decide anything (the engine does), or commit a position past a page not applied.

use tracing::Instrument;

use crate::connectors::salesforce::incremental::{ChangePage, IncrementalRead};
use crate::connectors::salesforce::soql::ModstampCursor;
use crate::connectors::{Crm, Map, Record};
use crate::engine::model::{CrmKind, Event};
use crate::mapping::Mapping;

use super::once::{Run, RunSummary, Source, SyncError, Syncer, phase, stored_cursor};
use super::records::{self, RecordError};

/// A CRM object the pollers read, by what its records become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrmObject {
    Account,
    Person(CrmKind),
    Opportunity,
    MqlEdit,
}

impl CrmObject {
    /// The objects `source` reads, in order; `None`: the source is not read this way.
    pub fn of_source(source: Source) -> Option<&'static [CrmObject]> {
        const PEOPLE: [CrmObject; 2] = [
            CrmObject::Person(CrmKind::Lead),
            CrmObject::Person(CrmKind::Contact),
        ];
        match source {
            Source::People => Some(&PEOPLE),
            Source::MqlEdits => Some(&[CrmObject::MqlEdit]),
            // Accounts first: the contacts of a changed account carry its attributes at once.
            Source::Opportunities => Some(&[CrmObject::Account, CrmObject::Opportunity]),
            Source::Thresholds | Source::Activities => None,
        }
    }

    /// The object's API name and the fields read; `None`: the mapping does not read it (no
    /// `crm.account`).
    fn describe(self, m: &Mapping) -> Option<(String, Vec<String>)> {
        Some(match self {
            CrmObject::Account => {
                let account = m.crm.account.as_ref()?;
                (account.object.clone(), records::account_fields(m))
            }
            CrmObject::Person(kind) => {
                let object = match kind {
                    CrmKind::Lead => &m.crm.lead.object,
                    CrmKind::Contact => &m.crm.contact.object,
                };
                (object.clone(), records::person_fields(m, kind))
            }
            CrmObject::Opportunity => (
                m.crm.opportunity.clone(),
                records::OPPORTUNITY_FIELDS
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ),
            CrmObject::MqlEdit => (m.crm.mql.object.clone(), records::mql_fields(m)),
        })
    }

    fn event(self, m: &Mapping, r: &Record) -> Result<Event, RecordError> {
        match self {
            CrmObject::Account => records::account(m, r).map(Event::Account),
            CrmObject::Person(kind) => records::person(m, kind, r).map(Event::Person),
            CrmObject::Opportunity => records::opportunity(m, r).map(Event::Opportunity),
            CrmObject::MqlEdit => records::cycle_edit(m, r).map(Event::CycleEdit),
        }
    }
}

/// What one read is: the object (its API name), the cursor its pages commit under, and what
/// its records become.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrmReadKind {
    pub object: String,
    pub cursor: String,
    pub what: CrmObject,
}

/// A read ready to run from its cursor: its kind and a reader that owns its client, so that
/// it can run in any task.
pub struct CrmRead<C: Crm> {
    pub kind: CrmReadKind,
    pub reader: IncrementalRead<C>,
}

/// What one read brought so far: records and pages (for its end, [`Syncer::end_crm_read`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadCount {
    pub records: usize,
    pub pages: u64,
}

/// The reads of `objects` from the cursors `store` holds now.
fn reads<C: Crm>(
    crm: &C,
    mapping: &Mapping,
    store: &crate::store::Store,
    lookback: std::time::Duration,
    objects: &[CrmObject],
) -> Result<Vec<CrmRead<C>>, SyncError> {
    let mut reads = Vec::with_capacity(objects.len());
    for what in objects {
        let Some((object, fields)) = what.describe(mapping) else {
            continue;
        };
        let cursor = format!("crm.{object}");
        let from: ModstampCursor = stored_cursor(store, &cursor)?;
        let field_refs: Vec<&str> = fields.iter().map(String::as_str).collect();
        let reader = IncrementalRead::new(
            crm.clone(),
            &object,
            &field_refs,
            from,
            lookback,
            None,
            false,
        )?;
        reads.push(CrmRead {
            kind: CrmReadKind {
                object,
                cursor,
                what: *what,
            },
            reader,
        });
    }
    Ok(reads)
}

impl<C: Crm, M: Map> Run<'_, C, M> {
    /// Reads `objects` here, one after the other, each page committed as it comes.
    pub(super) async fn read_objects(&mut self, objects: &[CrmObject]) -> Result<(), SyncError> {
        let reads = reads(
            self.crm,
            self.mapping,
            self.store,
            self.settings.lookback,
            objects,
        )?;
        for read in reads {
            let span = phase(&read.kind.object);
            self.read_one(read).instrument(span).await?;
        }
        Ok(())
    }

    async fn read_one(&mut self, mut read: CrmRead<C>) -> Result<(), SyncError> {
        let mut count = ReadCount::default();
        while let Some(page) = read.reader.next_page().await? {
            self.apply_crm_page(&read.kind, page, &mut count)?;
        }
        self.end_crm_read(&read.kind.object, count);
        Ok(())
    }

    fn apply_crm_page(
        &mut self,
        kind: &CrmReadKind,
        page: ChangePage,
        count: &mut ReadCount,
    ) -> Result<(), SyncError> {
        let what = kind.what;
        self.commit_crm_page(&kind.object, &kind.cursor, page, count, |m, r| {
            what.event(m, r)
        })
    }
}

impl<C: Crm, M: Map> Syncer<'_, C, M> {
    /// `source`'s reads from the cursors committed now, to run in a task of their own;
    /// `None` for a source the loop reads itself ([`Syncer::poll`]).
    pub fn crm_reads(&self, source: Source) -> Result<Option<Vec<CrmRead<C>>>, SyncError> {
        let Some(objects) = CrmObject::of_source(source) else {
            return Ok(None);
        };
        reads(
            self.crm,
            self.mapping,
            self.store,
            self.settings.lookback,
            objects,
        )
        .map(Some)
    }

    /// Applies one page a [`CrmRead`] brought, at `now`: its events decided and committed with
    /// the page's position in one transaction. `count` adds the page up for the read's end.
    pub fn apply_crm_page(
        &mut self,
        now: jiff::Timestamp,
        kind: &CrmReadKind,
        page: ChangePage,
        count: &mut ReadCount,
    ) -> Result<RunSummary, SyncError> {
        let (result, summary) = self.in_pass(now, |run| run.apply_crm_page(kind, page, count));
        result.map(|()| summary)
    }

    /// The end of one object's read: what it read, against the fewest calls for it.
    pub fn end_crm_read(
        &mut self,
        now: jiff::Timestamp,
        kind: &CrmReadKind,
        count: ReadCount,
    ) -> RunSummary {
        self.in_pass(now, |run| run.end_crm_read(&kind.object, count))
            .1
    }
}
