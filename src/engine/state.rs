//! What the engine remembers between events: thresholds, people, MAP leads with their
//! scores, opportunities, cycles, timers and round-robin positions. Plain data that the
//! store saves and loads; the indexes (cycle owners, people by account, timers) are rebuilt
//! on load.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::model::{CrmRef, Cycle, Opportunity, Outcome, PersonFacts, Reason, Stamps, Threshold};
use super::score::Scores;
use super::thresholds::Resolved;

/// One CRM lead or contact.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PersonState {
    pub facts: Option<PersonFacts>,
    /// The MAP lead whose score this person carries.
    pub map_lead: Option<i64>,
    /// Every cycle, oldest first; at most the last one is open.
    pub cycles: Vec<Cycle>,
    pub stamps: Stamps,
    /// No new MQL before this instant (after a rejection), and the outcome that set it.
    pub cooldown: Option<(Timestamp, Outcome)>,
    /// The reason of the last hold decision, so the same hold is not recorded twice.
    pub last_hold: Option<Reason>,
    #[serde(skip)]
    pub(crate) resolved: Option<(u64, Resolved)>,
}

impl PersonState {
    pub fn open_cycle(&self) -> Option<&Cycle> {
        self.cycles.last().filter(|c| c.status.is_open())
    }
}

/// One MAP lead.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MapLeadState {
    pub crm: Option<CrmRef>,
    pub link_at: Option<Timestamp>,
    pub scores: Scores,
    /// Whether the "not linked" hold was recorded already.
    pub unlinked_recorded: bool,
}

/// A pending timer. Timers are an index: each is checked against the state when it fires,
/// so a stale one does nothing.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// A threshold starts or ends.
    ThresholdBoundary(String),
    /// An Open cycle's SLA runs out.
    SlaDue(String),
    /// An Open cycle moves to the next owner.
    Reassign(String),
}

/// What changed since the store last saved: the keys to write.
#[derive(Clone, Debug, Default)]
pub struct Dirty {
    pub persons: HashSet<String>,
    pub map_leads: HashSet<i64>,
    pub thresholds: HashSet<String>,
    pub opportunities: HashSet<String>,
    pub cycles: HashSet<String>,
    pub meta: bool,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        self.persons.is_empty()
            && self.map_leads.is_empty()
            && self.thresholds.is_empty()
            && self.opportunities.is_empty()
            && self.cycles.is_empty()
            && !self.meta
    }
}

/// Small values saved as one row.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineMeta {
    /// The latest instant the engine was advanced to.
    pub clock: Option<Timestamp>,
    /// Next pool position per team.
    pub round_robin: BTreeMap<String, usize>,
}

/// The whole engine state.
#[derive(Clone, Debug, Default)]
pub struct EngineState {
    pub thresholds: BTreeMap<String, Threshold>,
    /// By CRM id. Unordered for speed: whatever iterates it in a way that reaches decisions
    /// sorts the ids first, so decisions never depend on hash order.
    pub persons: HashMap<String, PersonState>,
    pub map_leads: HashMap<i64, MapLeadState>,
    pub opportunities: BTreeMap<String, Opportunity>,
    pub meta: EngineMeta,
    pub dirty: Dirty,
    // Indexes, rebuilt by `rebuild_indexes`.
    pub(crate) cycle_owner: HashMap<String, String>,
    pub(crate) account_people: HashMap<String, BTreeSet<String>>,
    pub(crate) account_opportunities: HashMap<String, BTreeSet<String>>,
    pub(crate) timers: BTreeSet<(Timestamp, Timer)>,
    /// Threshold cache generation: bumped whenever the set of records in force may change.
    pub(crate) threshold_generation: u64,
    /// Cached resolutions are valid from this instant up to the clock.
    pub(crate) generation_valid_from: Option<Timestamp>,
}

impl EngineState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the indexes from the saved parts (after loading from the store).
    pub fn rebuild_indexes(&mut self) {
        self.cycle_owner.clear();
        self.account_people.clear();
        self.account_opportunities.clear();
        self.timers.clear();
        for (id, person) in &self.persons {
            if let Some(account) = person.facts.as_ref().and_then(|f| f.account_id.clone()) {
                self.account_people
                    .entry(account)
                    .or_default()
                    .insert(id.clone());
            }
            for cycle in &person.cycles {
                self.cycle_owner
                    .insert(cycle.external_id.clone(), id.clone());
                if cycle.status == super::model::CycleStatus::Open {
                    if let Some(due) = cycle.sla_due_at.filter(|_| !cycle.overdue) {
                        self.timers
                            .insert((due, Timer::SlaDue(cycle.external_id.clone())));
                    }
                    if let Some(at) = cycle.reassign_at {
                        self.timers
                            .insert((at, Timer::Reassign(cycle.external_id.clone())));
                    }
                }
            }
        }
        for (id, opp) in &self.opportunities {
            self.account_opportunities
                .entry(opp.account_id.clone())
                .or_default()
                .insert(id.clone());
        }
        let clock = self.meta.clock;
        for threshold in self.thresholds.values() {
            for at in [threshold.effective_from, threshold.effective_to]
                .into_iter()
                .flatten()
            {
                if clock.is_none_or(|c| at > c) {
                    self.timers
                        .insert((at, Timer::ThresholdBoundary(threshold.id.clone())));
                }
            }
        }
        self.threshold_generation += 1;
        self.generation_valid_from = clock;
    }

    /// The next instant a timer fires, for the clock worker.
    pub fn next_wakeup(&self) -> Option<Timestamp> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// The cycle with this external id.
    pub fn cycle(&self, external_id: &str) -> Option<&Cycle> {
        let owner = self.cycle_owner.get(external_id)?;
        self.persons
            .get(owner)?
            .cycles
            .iter()
            .find(|c| c.external_id == external_id)
    }

    /// Opportunities of an account.
    pub fn account_opportunities(&self, account: &str) -> impl Iterator<Item = &Opportunity> {
        self.account_opportunities
            .get(account)
            .into_iter()
            .flatten()
            .filter_map(|id| self.opportunities.get(id))
    }

    /// Takes the dirty keys, leaving an empty set.
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }
}
