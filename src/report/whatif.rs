//! `mqlsync whatif`: how many MQLs a segment would have produced per week at another
//! threshold, from the score history in the store.
//!
//! The stored history is replayed through the engine twice, into throwaway in-memory states:
//! once with the thresholds as they were ("replayed then"), once with every threshold record
//! of the segment set to the new score ("at T"). The store is only read. Both replays see the
//! same approximations, so their difference is the threshold's own effect:
//! - people carry today's facts (region, title, account) from the first event on, and the
//!   status rule is off (today's statuses are what reps did with the MQLs that happened);
//! - reps' answers are not replayed (they answered other MQLs), so a replayed MQL stays open
//!   unless its person converts or wins an opportunity; nobody is re-MQL'd after a rejection;
//! - opportunities are known from their creation with today's state.
//!
//! Next to the replays stand the MQLs that really happened in the segment, and, of the people
//! the new threshold would have MQL'd, how many ever converted: the history's answer to
//! "would these have been good leads?".
//!
//! How it is fast enough to be interactive (10,000,000 changes in seconds; see `History`):
//! the store is read once for both replays, the segment's people and the score history on
//! as many connections and threads as there are cores; people are replayed in groups small
//! enough for their engine state to stay in cache (the replay is bound by memory latency),
//! both replays of a group one after the other, the groups shared out over the cores; people
//! whose score never reaches the lowest threshold in play are left out of both; and a lead
//! whose person's cycle is open and cannot close is passed over from then on
//! (`History::replay_group`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::iter::Peekable;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use jiff::Timestamp;
use serde::Serialize;

use crate::engine::model::{
    Action, CrmId, Event, MapLink, Opportunity, PersonFacts, ScoreChange, ScorePart, Threshold,
    segment_label,
};
use crate::engine::policy::ScoreSource;
use crate::engine::state::FastMap;
use crate::engine::{Context, EngineState, Policy, Visibility, reconcile};
use crate::store::blocks::PackedChange;
use crate::store::{Store, StoreError};

use super::changes::{Change, ChangeList};
use super::{IsoWeek, Settings, at_ns, ns};

/// The segment as attribute = value pairs: `region=EMEA`, `region=EMEA,team=SDR`, or
/// `default` (the records that match everyone).
pub fn parse_segment(text: &str) -> Result<BTreeMap<String, String>, super::ArgumentError> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("default") {
        return Ok(BTreeMap::new());
    }
    text.split([',', ';'])
        .map(|pair| {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                super::ArgumentError(format!(
                    "--segment {text:?}: {pair:?} is not attribute=value (e.g. region=EMEA), nor `default`"
                ))
            })?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// What to replay.
#[derive(Clone, Debug)]
pub struct WhatIfQuery {
    pub segment: BTreeMap<String, String>,
    pub threshold: f64,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct WhatIfWeek {
    /// ISO week in the report's zone (`2026-W10`), or `total`.
    pub week: String,
    /// MQLs the segment really had (cycles in the store).
    pub actual: i64,
    /// MQLs of the replay with the thresholds as they were.
    pub replayed_then: i64,
    /// MQLs of the replay at the new threshold.
    pub at_threshold: i64,
    /// `at_threshold - replayed_then`.
    pub change: i64,
    /// Of the people the new threshold MQL'd that week, those who ever converted.
    pub converted_people: i64,
    pub pct_converted: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WhatIf {
    pub segment: String,
    pub threshold: f64,
    /// The scores the segment's threshold records had over the replay (ascending, each once).
    pub thresholds_then: Vec<f64>,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    pub time_zone: String,
    pub weeks: Vec<WhatIfWeek>,
    pub total: WhatIfWeek,
    /// Score changes replayed (per replay).
    pub score_changes: u64,
    pub people: usize,
}

/// One replay's MQLs in the segment: (week, CRM id) per cycle opened in the range. Neither
/// allocates (a CRM id is inline), so a replay that opens hundreds of thousands of cycles
/// writes them where they are counted, with no text made per MQL.
type Mqls = Vec<(IsoWeek, CrmId)>;

/// The MQLs the segment would have had in the query's range at the query's threshold: one
/// replay of the store's history (the knob's feedback on threshold records), on this thread.
pub fn mqls_at(
    store: &Store,
    policy: &Policy,
    settings: &Settings,
    query: &WhatIfQuery,
) -> Result<usize, StoreError> {
    let history = History::read(store, None, 1, policy, query, GROUP_PEOPLE)?;
    let replayed = history.replay(policy, settings, query, &[Some(query.threshold)], 1);
    Ok(replayed[0].len())
}

/// Replays the store at `path` with the segment's thresholds as they were and at the new
/// score, and sets the result beside the real MQLs.
pub fn run(
    path: &Path,
    policy: &Policy,
    settings: &Settings,
    query: &WhatIfQuery,
) -> Result<WhatIf, StoreError> {
    let label = segment_label(&query.segment);
    let store = Store::open_reader(path)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // What happened is read beside the replays, on its own connection.
    let (replayed, happened) = std::thread::scope(|scope| {
        let happened =
            scope.spawn(|| happened(&Store::open_reader(path)?, &label, settings, query));
        let replayed = History::read(&store, Some(path), threads, policy, query, GROUP_PEOPLE).map(
            |history| {
                let started = std::time::Instant::now();
                let replays = history.replay(
                    policy,
                    settings,
                    query,
                    &[None, Some(query.threshold)],
                    threads,
                );
                tracing::debug!(
                    ms = started.elapsed().as_millis() as u64,
                    groups = history.groups.len(),
                    "what-if replays"
                );
                // The scores the segment's threshold records had.
                let then: Vec<f64> = history
                    .knobs
                    .iter()
                    .filter(|k| k.segment == query.segment)
                    .map(|k| k.score)
                    .collect();
                (history.changes, history.people.len(), then, replays)
            },
        );
        (replayed, happened.join().expect("what-if reader thread"))
    });
    let (score_changes, people, mut thresholds_then, replayed) = replayed?;
    let mut replayed = replayed.into_iter();
    let (then, at_t) = (
        replayed.next().expect("two replays"),
        replayed.next().expect("two replays"),
    );
    let (converted, actual) = happened?;

    let mut weeks: BTreeMap<String, WhatIfWeek> = BTreeMap::new();
    fn week<'w>(weeks: &'w mut BTreeMap<String, WhatIfWeek>, w: &str) -> &'w mut WhatIfWeek {
        weeks.entry(w.to_string()).or_insert_with(|| WhatIfWeek {
            week: w.to_string(),
            ..WhatIfWeek::default()
        })
    }
    for (w, n) in actual {
        week(&mut weeks, &w.label()).actual = n;
    }
    let mut then_by_week: BTreeMap<IsoWeek, i64> = BTreeMap::new();
    for (w, _) in &then {
        *then_by_week.entry(*w).or_default() += 1;
    }
    for (w, n) in then_by_week {
        week(&mut weeks, &w.label()).replayed_then = n;
    }
    let mut people_by_week: BTreeMap<IsoWeek, (i64, HashSet<&str>)> = BTreeMap::new();
    for (w, crm_id) in &at_t {
        let (mqls, people) = people_by_week.entry(*w).or_default();
        *mqls += 1;
        people.insert(crm_id);
    }
    for (w, (mqls, people)) in people_by_week {
        let n = people.iter().filter(|p| converted.contains(**p)).count() as i64;
        let row = week(&mut weeks, &w.label());
        row.at_threshold = mqls;
        row.converted_people = n;
        row.pct_converted = super::pct(n, people.len() as i64);
    }
    let mut total = WhatIfWeek {
        week: "total".into(),
        ..WhatIfWeek::default()
    };
    let mut all_people: HashSet<&str> = HashSet::new();
    for row in weeks.values_mut() {
        row.change = row.at_threshold - row.replayed_then;
        total.actual += row.actual;
        total.replayed_then += row.replayed_then;
        total.at_threshold += row.at_threshold;
    }
    total.change = total.at_threshold - total.replayed_then;
    all_people.extend(at_t.iter().map(|(_, p)| p.as_str()));
    total.converted_people = all_people
        .iter()
        .filter(|p| converted.contains(**p))
        .count() as i64;
    total.pct_converted = super::pct(total.converted_people, all_people.len() as i64);

    if thresholds_then.is_empty()
        && query.segment.is_empty()
        && let Some(default) = policy.default_threshold
    {
        thresholds_then.push(default);
    }
    thresholds_then.sort_by(f64::total_cmp);
    thresholds_then.dedup();
    Ok(WhatIf {
        segment: label,
        threshold: query.threshold,
        thresholds_then,
        from: query.from,
        to: query.to,
        time_zone: settings.time_zone_name.clone(),
        weeks: weeks.into_values().collect(),
        total,
        score_changes,
        people,
    })
}

const CONVERTED: &str = "SELECT DISTINCT crm_id FROM cycle_facts WHERE status = 'Converted'";
const SEGMENT_MQLS: &str =
    "SELECT mql_at_ns FROM cycle_facts WHERE segment = ?1 AND mql_at_ns >= ?2 AND mql_at_ns < ?3";

/// The people who ever converted (any cycle Converted), and the segment's MQLs in the range
/// by ISO week.
#[allow(clippy::type_complexity)]
fn happened(
    store: &Store,
    label: &str,
    settings: &Settings,
    query: &WhatIfQuery,
) -> Result<(HashSet<CrmId>, BTreeMap<IsoWeek, i64>), StoreError> {
    let conn = store.connection();
    let err = |e| store.sql_err(e);
    // Each from an index alone (schema 9): the converted cycles' people, in order, and the
    // segment's MQL instants in the range.
    let converted: HashSet<CrmId> = {
        let mut stmt = conn.prepare(CONVERTED).map_err(err)?;
        stmt.query_map([], |r| Ok(CrmId::from(r.get_ref(0)?.as_str()?)))
            .map_err(err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(err)?
    };
    let (from, to) = (
        query.from.map_or(i64::MIN, ns),
        query.to.map_or(i64::MAX, ns),
    );
    let mut stmt = conn.prepare(SEGMENT_MQLS).map_err(err)?;
    let rows = stmt
        .query_map(rusqlite::params![label, from, to], |r| r.get::<_, i64>(0))
        .map_err(err)?;
    let mut actual: BTreeMap<IsoWeek, i64> = BTreeMap::new();
    for at in rows {
        let week = IsoWeek::of(at_ns(at.map_err(err)?), &settings.time_zone);
        *actual.entry(week).or_default() += 1;
    }
    Ok((converted, actual))
}

/// About how many people one group holds: small enough that a group's engine state stays in
/// a core's cache while its changes stream through it (the replay is bound by memory
/// latency, not arithmetic, when every change lands on a random person of 250,000).
const GROUP_PEOPLE: usize = 2_000;

/// Groups are numbered in a byte, 1 to 255 (see `LeadGroups`).
const MAX_GROUPS: usize = 255;

/// What the replays read from the store, read once for all of them: the knob's versions,
/// the segment's people with their MAP leads, their accounts' opportunities, and the
/// people's score changes, split into groups that replay apart.
///
/// Replaying group by group decides what one replay of everybody in arrival order would:
/// people meet in the engine only through a shared MAP lead or account (its opportunities,
/// its score under account scoring), so those stay in one group; the knob's versions and
/// the opportunities are applied in each group as the whole history's clock reaches them,
/// and each change is applied at that clock (kept for the changes that arrived late), so
/// time passes in a group as it would have in the one replay.
struct History {
    /// The threshold versions that can govern the segment's people (`in_play`), in time
    /// order, at their stored scores.
    knobs: Vec<Threshold>,
    /// The segment's people and their MAP leads.
    people: Vec<(Box<PersonFacts>, i64)>,
    /// The opportunities of the people's accounts, in creation order.
    opportunities: Vec<Opportunity>,
    /// The history's first instant: people and links are known from there.
    start: Timestamp,
    groups: Vec<Group>,
    /// Score changes of the segment's people: what each replay goes through.
    changes: u64,
    /// The lowest threshold any replay can meet, when a person's own peak score bounds
    /// every score the engine compares for them: people whose bound stays below it open no
    /// cycle in any replay and are left out of all of them.
    floor: Option<f64>,
    source: ScoreSource,
    /// Whether a lead settles once its person's cycle is open and cannot close (see
    /// `History::replay_group`); off only for the reference replay of the tests.
    settle: bool,
}

/// People replayed together, and their score changes in arrival order.
#[derive(Default)]
struct Group {
    /// Indexes into `History::people` and `History::opportunities`.
    people: Vec<u32>,
    opportunities: Vec<u32>,
    /// Their score changes, one list per range of the history, in arrival order.
    changes: Vec<Changes>,
}

/// Score changes of a group from one range of the history, in arrival order.
#[derive(Default)]
struct Changes {
    list: ChangeList,
    /// `(index in list, clock)` for the changes that arrived after a later one: the latest
    /// instant the history had reached when they came, which the one replay's clock would
    /// have shown.
    late: Vec<(u32, i64)>,
}

impl Changes {
    /// Marks late the changes before `clock`, the latest instant of the ranges before.
    fn after(&mut self, clock: i64) {
        // Arrival order is time order as a rule: nothing to mark.
        if self.list.earliest().is_none_or(|e| e >= clock) {
            return;
        }
        let mut own = std::mem::take(&mut self.late).into_iter().peekable();
        for (i, change) in self.list.iter().enumerate() {
            let seen = match own.peek() {
                Some(&(j, c)) if j as usize == i => {
                    own.next();
                    c
                }
                _ => change.at,
            }
            .max(clock);
            if seen > change.at {
                self.late.push((i as u32, seen));
            }
        }
    }
}

/// A group's changes unpacked for its replays: unpacked once, replayed at every setting, in a
/// buffer each replay thread reuses from group to group (its pages stay the thread's).
#[derive(Default)]
struct Decoded {
    changes: Vec<Unpacked>,
    /// The changes' ids, end to end (`Unpacked::id_end`).
    ids: String,
    /// The group's MAP leads, numbered from 0 in the group (`Unpacked::lead`).
    leads: Vec<i64>,
    lead_index: FastMap<i64, u32>,
    /// By lead: whether an open cycle of its person settles the lead for the rest of a
    /// replay (see `History::replay_group`).
    settles: Vec<bool>,
}

/// A change as the replay applies it.
struct Unpacked {
    at: i64,
    /// The instant the one replay's clock would show when it came: `at`, or later when it
    /// arrived after a later change.
    clock: i64,
    new_value: f64,
    old_value: Option<f64>,
    map_lead_id: i64,
    /// Where its id ends in `Decoded::ids`; it starts where the one before ends.
    id_end: u32,
    /// Its lead's number in the group (`Decoded::leads`).
    lead: u32,
    part: ScorePart,
}

impl Decoded {
    /// The number of `lead` in the group, and whether it is new (numbered now, not settling).
    fn number(&mut self, lead: i64) -> (u32, bool) {
        if let Some(&i) = self.lead_index.get(&lead) {
            return (i, false);
        }
        let i = self.leads.len() as u32;
        self.lead_index.insert(lead, i);
        self.leads.push(lead);
        self.settles.push(false);
        (i, true)
    }

    /// Numbers `group`'s leads and unpacks its changes in arrival order, over the ranges of
    /// the history.
    fn fill(&mut self, history: &History, group: &Group) {
        self.changes.clear();
        self.ids.clear();
        self.leads.clear();
        self.lead_index.clear();
        self.settles.clear();
        // A lead settles when its person alone has it and has no account (so no opportunity
        // of the replay closes the person's cycle), and scores are the person's own.
        let own_scores = history.settle && !matches!(history.source, ScoreSource::Account { .. });
        for &p in &group.people {
            let (facts, lead) = &history.people[p as usize];
            let (i, new) = self.number(*lead);
            // A second person of the lead: it never settles.
            self.settles[i as usize] = new && own_scores && facts.account_id.is_none();
        }
        let mut id = String::new();
        for changes in &group.changes {
            let mut late = changes.late.iter().peekable();
            let mut reader = changes.list.reader();
            let mut i = 0;
            while let Some(change) = reader.next(&mut id) {
                let clock = match late.peek() {
                    Some(&&(j, clock)) if j as usize == i => {
                        late.next();
                        clock
                    }
                    _ => change.at,
                };
                i += 1;
                self.ids.push_str(&id);
                // Each change is of a lead of the group's people (`Scan::take`).
                let (lead, _) = self.number(change.map_lead_id);
                self.changes.push(Unpacked {
                    lead,
                    at: change.at,
                    clock,
                    new_value: change.new_value,
                    old_value: change.old_value,
                    map_lead_id: change.map_lead_id,
                    id_end: self.ids.len() as u32,
                    part: change.part,
                });
            }
        }
    }
}

/// The group of each MAP lead of the segment's people: asked for every stored change, so
/// one byte a lead in a table by id when the ids are dense enough (the MAP numbers them),
/// which stays in a core's cache where a hash map of the same leads would not; a hash map
/// when they are not.
enum LeadGroups {
    /// `groups[id - first_id]`: the group + 1, 0 for none.
    Table {
        first_id: i64,
        groups: Vec<u8>,
    },
    Map(FastMap<i64, u8>),
}

impl LeadGroups {
    fn new(people: &[(Box<PersonFacts>, i64)], groups: &[Group]) -> LeadGroups {
        let leads = || {
            groups.iter().enumerate().flat_map(|(g, group)| {
                group
                    .people
                    .iter()
                    .map(move |p| (people[*p as usize].1, g as u8))
            })
        };
        let (low, high) = leads().fold((i64::MAX, i64::MIN), |(low, high), (id, _)| {
            (low.min(id), high.max(id))
        });
        let span = i128::from(high) - i128::from(low) + 1;
        if span > 0 && span <= 64 * people.len() as i128 + 65_536 {
            let mut table = vec![0u8; span as usize];
            for (id, g) in leads() {
                table[(id - low) as usize] = g + 1;
            }
            LeadGroups::Table {
                first_id: low,
                groups: table,
            }
        } else {
            LeadGroups::Map(leads().collect())
        }
    }

    fn find(&self, id: i64) -> Option<usize> {
        match self {
            LeadGroups::Table { first_id, groups } => {
                let at = usize::try_from(id.checked_sub(*first_id)?).ok()?;
                groups
                    .get(at)
                    .filter(|g| **g != 0)
                    .map(|g| usize::from(*g) - 1)
            }
            LeadGroups::Map(map) => map.get(&id).map(|g| usize::from(*g)),
        }
    }
}

/// One replay's settings: the policy and the knob's versions, at the new score or not.
struct Setting {
    policy: Policy,
    knobs: Vec<Threshold>,
}

impl Setting {
    /// `threshold` replaces the score of every threshold version of the segment (and the
    /// mapping's default, for the default segment). The status rule is off in a replay.
    fn new(
        policy: &Policy,
        knobs: &[Threshold],
        query: &WhatIfQuery,
        threshold: Option<f64>,
    ) -> Self {
        let mut policy = policy.clone();
        policy.rules.excluded_statuses = None;
        if let Some(t) = threshold
            && query.segment.is_empty()
            && policy.default_threshold.is_some()
        {
            policy.default_threshold = Some(t);
        }
        let knobs = knobs
            .iter()
            .map(|k| match threshold {
                Some(t) if k.segment == query.segment => Threshold {
                    score: t,
                    ..k.clone()
                },
                _ => k.clone(),
            })
            .collect();
        Setting { policy, knobs }
    }
}

impl History {
    /// Reads what the replays need. With `path`, the two long reads (the segment's people and
    /// the score history) are split over `threads` connections, each on its own thread.
    /// `group_people`: about how many people a group holds (`GROUP_PEOPLE`).
    fn read(
        store: &Store,
        path: Option<&Path>,
        threads: usize,
        policy: &Policy,
        query: &WhatIfQuery,
        group_people: usize,
    ) -> Result<History, StoreError> {
        let conn = store.connection();
        let err = |e| store.sql_err(e);
        let parts = if path.is_some() { threads.max(1) } else { 1 };

        let knobs = in_play(read_knobs(store)?, &query.segment);

        let started = std::time::Instant::now();
        let ranges = split(store, "persons", "rowid", parts)?;
        let people: Vec<(Box<PersonFacts>, i64)> =
            on_readers(store, path, parts, |store, part| {
                segment_people(store, &query.segment, ranges[part])
            })?
            .concat();
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            people = people.len(),
            "what-if read the segment's people"
        );

        // Groups: people who share a lead or an account are joined (union-find), and the
        // joined sets are packed into groups of about GROUP_PEOPLE.
        let mut parent: Vec<u32> = (0..people.len() as u32).collect();
        fn root(parent: &mut [u32], mut x: u32) -> u32 {
            while parent[x as usize] != x {
                parent[x as usize] = parent[parent[x as usize] as usize];
                x = parent[x as usize];
            }
            x
        }
        let mut first_of_lead: FastMap<i64, u32> = FastMap::default();
        let mut first_of_account: HashMap<&str, u32> = HashMap::new();
        for (i, (facts, lead)) in people.iter().enumerate() {
            let i = i as u32;
            let join = |other: u32, parent: &mut Vec<u32>| {
                let (a, b) = (root(parent, i), root(parent, other));
                if a != b {
                    parent[a as usize] = b;
                }
            };
            match first_of_lead.get(lead) {
                Some(&other) => join(other, &mut parent),
                None => {
                    first_of_lead.insert(*lead, i);
                }
            }
            if let Some(account) = &facts.account_id {
                match first_of_account.get(account.as_str()) {
                    Some(&other) => join(other, &mut parent),
                    None => {
                        first_of_account.insert(account.as_str(), i);
                    }
                }
            }
        }
        drop(first_of_lead);
        drop(first_of_account);
        // At most MAX_GROUPS groups, a lead's group being one byte: a group is started only
        // when the last is full, so there are at most ⌈people / size⌉ of them.
        let group_size = group_people.max(people.len().div_ceil(MAX_GROUPS));
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of_root: FastMap<u32, u32> = FastMap::default();
        let mut group_of_account: HashMap<&str, u32> = HashMap::new();
        for (i, (facts, _)) in people.iter().enumerate() {
            let r = root(&mut parent, i as u32);
            let g = match group_of_root.get(&r) {
                Some(&g) => g,
                None => {
                    if groups.last().is_none_or(|g| g.people.len() >= group_size) {
                        groups.push(Group::default());
                    }
                    let g = groups.len() as u32 - 1;
                    group_of_root.insert(r, g);
                    g
                }
            };
            groups[g as usize].people.push(i as u32);
            if let Some(account) = &facts.account_id {
                group_of_account.insert(account.as_str(), g);
            }
        }
        drop(group_of_root);
        drop(parent);
        let lead_groups = LeadGroups::new(&people, &groups);

        let opportunities: Vec<Opportunity> = {
            let mut stmt = conn
                .prepare("SELECT account_id, body FROM opportunities")
                .map_err(err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(err)?;
            let mut opps = Vec::new();
            for row in rows {
                let (account, body) = row.map_err(err)?;
                if group_of_account.contains_key(account.as_str())
                    && let Ok(o) = serde_json::from_str::<Opportunity>(&body)
                {
                    opps.push(o);
                }
            }
            opps.sort_by_key(|o| o.created_at);
            opps
        };
        for (i, opp) in opportunities.iter().enumerate() {
            let g = group_of_account[opp.account_id.as_str()];
            groups[g as usize].opportunities.push(i as u32);
        }
        drop(group_of_account);

        // The history in arrival order, in `parts` consecutive ranges of it read side by
        // side; each change of the segment's people goes to its group.
        let started = std::time::Instant::now();
        let ranges = split(store, "score_history", "seq", parts)?;
        let packed = store.score_history_packed_through()?;
        let scans = on_readers(store, path, parts, |store, part| {
            scan_history(store, &lead_groups, groups.len(), ranges[part], packed)
        })?;
        let mut start: Option<i64> = None;
        let mut clock = i64::MIN;
        let mut changes = 0u64;
        for scan in scans {
            start = start.into_iter().chain(scan.start).min();
            changes += scan.changes;
            for (group, mut part) in groups.iter_mut().zip(scan.groups) {
                part.after(clock);
                group.changes.push(part);
            }
            clock = clock.max(scan.clock);
        }
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            changes,
            packed_through = packed,
            "what-if read the score history"
        );

        // Only the replays' thresholds, the mapping's default and T can open a cycle.
        let floor = match policy.score {
            ScoreSource::Total | ScoreSource::BehaviorPlusDemographic => knobs
                .iter()
                .map(|k| k.score)
                .chain(policy.default_threshold)
                .chain([query.threshold])
                .min_by(f64::total_cmp),
            // A decayed or an account's score is not bounded by the person's peaks.
            ScoreSource::TimeDecayed { .. } | ScoreSource::Account { .. } => None,
        };
        Ok(History {
            knobs,
            people,
            opportunities,
            start: start.map_or(Timestamp::UNIX_EPOCH, at_ns),
            groups,
            changes,
            floor,
            source: policy.score.clone(),
            settle: true,
        })
    }

    /// By lead number (`Decoded::leads`), whether the lead cannot reach the floor: the
    /// highest score the engine can compare for the lead's person, from the peaks of the
    /// parts the source adds, stays below it.
    fn left_out(&self, decoded: &Decoded) -> Vec<bool> {
        let Some(floor) = self.floor else {
            return vec![false; decoded.leads.len()];
        };
        let mut peaks = vec![[f64::NEG_INFINITY; 3]; decoded.leads.len()];
        for change in &decoded.changes {
            let part = &mut peaks[change.lead as usize][change.part.index()];
            *part = part.max(change.new_value);
        }
        peaks
            .into_iter()
            .map(|[total, behavior, demographic]| {
                let highest = match self.source {
                    ScoreSource::BehaviorPlusDemographic => {
                        behavior.max(0.0) + demographic.max(0.0)
                    }
                    _ => total,
                };
                highest < floor
            })
            .collect()
    }

    /// One replay per entry of `thresholds` (`None`: the thresholds as they were), the
    /// groups shared out over `threads` threads; each thread replays a group at every
    /// setting in turn while its changes are in cache.
    fn replay(
        &self,
        policy: &Policy,
        settings: &Settings,
        query: &WhatIfQuery,
        thresholds: &[Option<f64>],
        threads: usize,
    ) -> Vec<Mqls> {
        let setups: Vec<Setting> = thresholds
            .iter()
            .map(|t| Setting::new(policy, &self.knobs, query, *t))
            .collect();
        let label = segment_label(&query.segment);
        let range = (
            query.from.map_or(i64::MIN, ns),
            query.to.map_or(i64::MAX, ns),
        );
        let next = AtomicUsize::new(0);
        let work = || {
            // About a cycle a person, the people shared out over the threads: room made once
            // rather than by doubling, each doubling a fresh copy of what the replay found.
            let room = self.people.len() / threads.max(1);
            let mut out: Vec<Mqls> = setups.iter().map(|_| Vec::with_capacity(room)).collect();
            let mut decoded = Decoded::default();
            loop {
                let g = next.fetch_add(1, Ordering::Relaxed);
                let Some(group) = self.groups.get(g) else {
                    return out;
                };
                decoded.fill(self, group);
                let left_out = self.left_out(&decoded);
                for (setup, mqls) in setups.iter().zip(out.iter_mut()) {
                    let mut engine = Engine {
                        state: EngineState::new(),
                        policy: &setup.policy,
                        now: Timestamp::MIN,
                        label: &label,
                        range,
                        zone: &settings.time_zone,
                        mqls,
                        opened: Vec::new(),
                    };
                    self.replay_group(
                        group,
                        &decoded,
                        &left_out,
                        &setup.knobs,
                        query.to,
                        &mut engine,
                    );
                    // Nothing is saved: forget what a store would have written.
                    drop(engine.state.take_dirty());
                }
            }
        };
        std::thread::scope(|scope| {
            let helpers: Vec<_> = (1..threads.max(1)).map(|_| scope.spawn(work)).collect();
            let mut all = work();
            for helper in helpers {
                let theirs = helper.join().expect("what-if replay thread");
                for (mine, theirs) in all.iter_mut().zip(theirs) {
                    mine.extend(theirs);
                }
            }
            all
        })
    }

    /// Replays one group at one setting. A lead left out (`left_out`) is passed over from
    /// the start; a lead that settles (`Decoded::settles`) is passed over once its person's
    /// cycle opens: nothing the replay applies closes that cycle (reps' answers are not
    /// replayed, and the person has no account whose opportunity could), so the person opens
    /// no other, and the lead's later changes decide nothing. Once people cross, most of
    /// their changes come after; the replays skip them.
    fn replay_group(
        &self,
        group: &Group,
        decoded: &Decoded,
        left_out: &[bool],
        knobs: &[Threshold],
        to: Option<Timestamp>,
        engine: &mut Engine<'_>,
    ) {
        let mut knobs = knobs.iter().peekable();
        let mut opportunities = group
            .opportunities
            .iter()
            .map(|i| &self.opportunities[*i as usize])
            .peekable();
        engine.catch_up(&mut knobs, &mut opportunities, self.start);
        let number = |lead: i64| decoded.lead_index.get(&lead).map(|&i| i as usize);
        for &p in &group.people {
            let (facts, lead) = &self.people[p as usize];
            if number(*lead).is_some_and(|i| left_out[i]) {
                continue;
            }
            let mut facts = PersonFacts::clone(facts);
            facts.modified_at = self.start;
            let crm = facts.crm.clone();
            engine.apply(&Event::Person(facts), self.start);
            engine.apply(
                &Event::Link(MapLink {
                    map_lead_id: *lead,
                    crm: Some(crm),
                    at: self.start,
                }),
                self.start,
            );
        }
        // The leads whose changes are passed over from here.
        let mut passed = left_out.to_vec();
        let settle = |engine: &mut Engine<'_>, passed: &mut [bool]| {
            for lead in engine.opened.drain(..) {
                if let Some(i) = number(lead).filter(|&i| decoded.settles[i]) {
                    passed[i] = true;
                }
            }
        };
        settle(engine, &mut passed);
        // One id buffer for every change: the engine borrows the event.
        let mut id_buffer = String::new();
        let mut id_start = 0;
        for stored in &decoded.changes {
            let id = &decoded.ids[id_start..stored.id_end as usize];
            id_start = stored.id_end as usize;
            if passed[stored.lead as usize] {
                continue;
            }
            engine.catch_up(&mut knobs, &mut opportunities, at_ns(stored.clock));
            id_buffer.clear();
            id_buffer.push_str(id);
            let change = ScoreChange {
                map_lead_id: stored.map_lead_id,
                part: stored.part,
                new_value: stored.new_value,
                old_value: stored.old_value,
                campaign: None,
                at: at_ns(stored.at),
                change_id: std::mem::take(&mut id_buffer),
            };
            let event = if id.starts_with("current:") {
                Event::CurrentScore(change)
            } else {
                Event::Score(change)
            };
            engine.apply(&event, at_ns(stored.clock));
            if let Event::Score(change) | Event::CurrentScore(change) = event {
                id_buffer = change.change_id;
            }
            settle(engine, &mut passed);
        }
        if let Some(to) = to {
            engine.catch_up(&mut knobs, &mut opportunities, to);
        }
    }
}

/// What one range of the history holds for the groups.
struct Scan {
    groups: Vec<Changes>,
    /// The range's first and latest instants, and its changes of the segment's people.
    start: Option<i64>,
    clock: i64,
    changes: u64,
}

/// Reads the score history from `seq` `range.0` to `range.1` in arrival order: the packed
/// blocks that start in the range, then the rows after `packed` (the last change the blocks
/// hold). Each change of a lead in `leads` goes to its group (`late` marks the changes that
/// came after a later one of the range).
fn scan_history(
    store: &Store,
    leads: &LeadGroups,
    groups: usize,
    range: (i64, i64),
    packed: i64,
) -> Result<Scan, StoreError> {
    let err = |e| store.sql_err(e);
    let mut scan = Scan {
        groups: (0..groups).map(|_| Changes::default()).collect(),
        start: None,
        clock: i64::MIN,
        changes: 0,
    };
    store.for_each_packed_change(range, |change| scan.take(leads, &change))?;
    let rows = (range.0.max(packed.saturating_add(1)), range.1);
    if rows.0 > rows.1 {
        return Ok(scan);
    }
    let mut stmt = store
        .connection()
        .prepare(
            "SELECT map_lead_id, change_id, part, new_value, old_value, at_ns
             FROM score_history WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
        )
        .map_err(err)?;
    let mut rows = stmt.query([rows.0, rows.1]).map_err(err)?;
    while let Some(r) = rows.next().map_err(err)? {
        let at_ns: i64 = r.get(5).map_err(err)?;
        let map_lead_id: i64 = r.get(0).map_err(err)?;
        if leads.find(map_lead_id).is_none() {
            scan.start = Some(scan.start.map_or(at_ns, |s| s.min(at_ns)));
            continue;
        }
        let part = crate::store::part_of(r.get_ref(2).map_err(err)?.as_str().unwrap_or_default())
            .unwrap_or(ScorePart::Total);
        let change = PackedChange {
            map_lead_id,
            at_ns,
            new_value: r.get(3).map_err(err)?,
            old_value: r.get(4).map_err(err)?,
            part,
            change_id: r.get_ref(1).map_err(err)?.as_str().unwrap_or_default(),
        };
        scan.take(leads, &change);
    }
    Ok(scan)
}

impl Scan {
    /// Takes one change of the history, read in arrival order.
    fn take(&mut self, leads: &LeadGroups, change: &PackedChange<'_>) {
        let at = change.at_ns;
        self.start = Some(self.start.map_or(at, |s| s.min(at)));
        let Some(g) = leads.find(change.map_lead_id) else {
            return;
        };
        let group = &mut self.groups[g];
        self.clock = self.clock.max(at);
        if self.clock > at {
            group.late.push((group.list.len() as u32, self.clock));
        }
        group.list.push(
            &Change {
                map_lead_id: change.map_lead_id,
                at,
                new_value: change.new_value,
                old_value: change.old_value,
                part: change.part,
            },
            change.change_id,
        );
        self.changes += 1;
    }
}

/// Every threshold version of the store, in time order.
fn read_knobs(store: &Store) -> Result<Vec<Threshold>, StoreError> {
    let conn = store.connection();
    let err = |e| store.sql_err(e);
    let mut stmt = conn
        .prepare(
            "SELECT threshold_id, modified_at, score, segment, effective_from, effective_to, active, deleted
             FROM threshold_versions",
        )
        .map_err(err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, f64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, bool>(6)?,
                r.get::<_, bool>(7)?,
            ))
        })
        .map_err(err)?;
    let mut knobs = Vec::new();
    for row in rows {
        let (id, modified, score, segment, eff_from, eff_to, active, deleted) = row.map_err(err)?;
        let (Ok(modified_at), Ok(segment)) = (
            modified.parse::<Timestamp>(),
            serde_json::from_str::<BTreeMap<String, String>>(&segment),
        ) else {
            continue;
        };
        knobs.push(Threshold {
            id,
            segment,
            score,
            effective_from: eff_from.and_then(|t| t.parse().ok()),
            effective_to: eff_to.and_then(|t| t.parse().ok()),
            active,
            set_by: None,
            modified_at,
            deleted,
        });
    }
    knobs.sort_by(|a, b| a.modified_at.cmp(&b.modified_at).then(a.id.cmp(&b.id)));
    Ok(knobs)
}

/// The versions of the records that can govern someone of `segment`: a record none of whose
/// versions any of the segment's people matches (a name of the segment with another value,
/// `region=APAC` beside `region=EMEA`) changes nobody's threshold in a replay, and each of
/// its turns would still have every group re-evaluate its people and resolve their
/// thresholds afresh. A record keeps all its versions when one of them may match.
fn in_play(mut knobs: Vec<Threshold>, segment: &BTreeMap<String, String>) -> Vec<Threshold> {
    // The segment's people hold each of its values, ignoring ASCII case (`segment_people`);
    // a record's value matches theirs trimmed, ignoring ASCII case (`thresholds::matches`).
    let may_match = |k: &Threshold| {
        k.segment.iter().all(|(name, value)| {
            segment
                .get(name)
                .is_none_or(|ours| ours.trim().eq_ignore_ascii_case(value.trim()))
        })
    };
    let records: HashSet<String> = knobs
        .iter()
        .filter(|k| may_match(k))
        .map(|k| k.id.clone())
        .collect();
    knobs.retain(|k| records.contains(&k.id));
    knobs
}

/// The people of the segment (their attributes hold every pair of it, values compared
/// ignoring ASCII case) that have a MAP lead, among the rows `range` of the table.
///
/// The facts are matched here rather than with SQLite's JSON functions, which cost 1.6 µs a
/// person: a person whose facts' text does not hold every value of the segment is passed
/// over before any parsing (a value's JSON text is the value itself unless it holds a quote,
/// a backslash or a control character; then every person is parsed).
fn segment_people(
    store: &Store,
    segment: &BTreeMap<String, String>,
    range: (i64, i64),
) -> Result<Vec<(Box<PersonFacts>, i64)>, StoreError> {
    let err = |e| store.sql_err(e);
    let plain = segment
        .values()
        .all(|v| !v.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20));
    let mut stmt = store
        .connection()
        .prepare(
            "SELECT map_lead_id, facts FROM persons WHERE rowid BETWEEN ?1 AND ?2
             AND map_lead_id IS NOT NULL AND facts IS NOT NULL",
        )
        .map_err(err)?;
    let mut rows = stmt.query([range.0, range.1]).map_err(err)?;
    let mut people = Vec::new();
    while let Some(r) = rows.next().map_err(err)? {
        let text = r.get_ref(1).map_err(err)?.as_str().unwrap_or_default();
        if plain
            && !segment
                .values()
                .all(|v| holds_ignoring_case(text.as_bytes(), v.as_bytes()))
        {
            continue;
        }
        // Boxed: a list of facts inline would be copied at each doubling, into fresh pages.
        let Ok(facts) = serde_json::from_str::<Box<PersonFacts>>(text) else {
            continue;
        };
        if segment.iter().all(|(key, value)| {
            facts
                .attributes
                .get(key)
                .is_some_and(|a| a.eq_ignore_ascii_case(value))
        }) {
            people.push((facts, r.get(0).map_err(err)?));
        }
    }
    Ok(people)
}

/// Whether `needle` occurs in `text`, ignoring ASCII case. Each place the first byte occurs
/// in either case is found with `memchr` (a vector compare over 16 or 32 bytes at a time),
/// where comparing byte by byte took a sixth of what-if's read of the people.
fn holds_ignoring_case(text: &[u8], needle: &[u8]) -> bool {
    let Some(&first) = needle.first() else {
        return true;
    };
    let mut from = 0;
    while let Some(at) = memchr::memchr2(
        first.to_ascii_lowercase(),
        first.to_ascii_uppercase(),
        &text[from..],
    ) {
        let at = from + at;
        match text.get(at..at + needle.len()) {
            Some(candidate) if candidate.eq_ignore_ascii_case(needle) => return true,
            Some(_) => from = at + 1,
            None => return false,
        }
    }
    false
}

/// `parts` consecutive ranges of `table`'s integer key `key`, together all of it.
fn split(
    store: &Store,
    table: &str,
    key: &str,
    parts: usize,
) -> Result<Vec<(i64, i64)>, StoreError> {
    // Two subqueries: each is one step down the table's b-tree, where `min` and `max` in one
    // select would read the whole table.
    let (first, last): (Option<i64>, Option<i64>) = store
        .connection()
        .query_row(
            &format!("SELECT (SELECT min({key}) FROM {table}), (SELECT max({key}) FROM {table})"),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(|e| store.sql_err(e))?;
    let (first, last) = (
        i128::from(first.unwrap_or(0)),
        i128::from(last.unwrap_or(-1)),
    );
    let (span, parts) = ((last - first + 1).max(0), parts.max(1) as i128);
    // In 128 bits: a key may be anywhere in 64.
    let at = |k: i128| first + span * k / parts;
    Ok((0..parts)
        .map(|k| (at(k) as i64, (at(k + 1) - 1) as i64))
        .collect())
}

/// Runs `read` for parts `0..parts`: part 0 on `store` here, each other part on its own
/// thread with its own read-only connection to `path` (a connection is not shared between
/// threads). Without `path`, only part 0 runs.
fn on_readers<T: Send>(
    store: &Store,
    path: Option<&Path>,
    parts: usize,
    read: impl Fn(&Store, usize) -> Result<T, StoreError> + Sync,
) -> Result<Vec<T>, StoreError> {
    let Some(path) = path.filter(|_| parts > 1) else {
        return Ok(vec![read(store, 0)?]);
    };
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..parts)
            .map(|part| {
                let read = &read;
                scope.spawn(move || read(&Store::open_reader(path)?, part))
            })
            .collect();
        let mut all = vec![read(store, 0)?];
        for helper in helpers {
            all.push(helper.join().expect("what-if reader thread")?);
        }
        Ok(all)
    })
}

/// A replay's engine: the throwaway state and the MQLs it opened in the segment and range.
struct Engine<'a> {
    state: EngineState,
    policy: &'a Policy,
    now: Timestamp,
    label: &'a str,
    range: (i64, i64),
    zone: &'a jiff::tz::TimeZone,
    mqls: &'a mut Mqls,
    /// The MAP leads of the cycles opened since the replay last looked.
    opened: Vec<i64>,
}

impl Engine<'_> {
    /// Applies `event` with the clock at `clock` (never back).
    fn apply(&mut self, event: &Event, clock: Timestamp) {
        self.now = self.now.max(clock);
        let ctx = Context {
            policy: self.policy,
            now: self.now,
            backfill: true,
            visibility: Visibility::AtDecision,
        };
        for d in reconcile(&mut self.state, &ctx, event) {
            if let Action::OpenCycle { cycle } = &d.action {
                self.opened.extend(cycle.map_lead_id);
                let at = ns(cycle.mql_at);
                if cycle.segment == self.label && at >= self.range.0 && at < self.range.1 {
                    self.mqls
                        .push((IsoWeek::of(cycle.mql_at, self.zone), cycle.crm.id.clone()));
                }
            }
        }
        // What a store would have written is forgotten once, after the group
        // (`History::replay`): the engine lists each changed person or lead once however
        // often it changes, so the lists stay as small as the group.
    }

    /// Applies the knob versions and opportunities up to `until`, in time order.
    fn catch_up<'k>(
        &mut self,
        knobs: &mut Peekable<impl Iterator<Item = &'k Threshold>>,
        opportunities: &mut Peekable<impl Iterator<Item = &'k Opportunity>>,
        until: Timestamp,
    ) {
        loop {
            let knob_at = knobs.peek().map(|k| k.modified_at);
            let opp_at = opportunities.peek().map(|o| o.created_at);
            match (knob_at, opp_at) {
                (Some(k), o) if k <= until && o.is_none_or(|o| k <= o) => {
                    let knob = knobs.next().expect("peeked");
                    self.apply(&Event::Threshold(knob.clone()), knob.modified_at);
                }
                (_, Some(o)) if o <= until => {
                    let opp = opportunities.next().expect("peeked");
                    self.apply(&Event::Opportunity(opp.clone()), opp.created_at);
                }
                _ => break,
            }
        }
    }
}

/// The what-if as a text table.
pub fn text(w: &WhatIf) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let then = w
        .thresholds_then
        .iter()
        .map(|t| format!("{t}"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "What if segment {} had threshold {} (it had: {}); weeks in {}",
        w.segment,
        w.threshold,
        if then.is_empty() { "none" } else { &then },
        w.time_zone
    );
    let _ = writeln!(
        out,
        "{} score changes of {} people replayed twice: with the thresholds as they were, and at {}.\n",
        w.score_changes, w.people, w.threshold
    );
    let _ = writeln!(
        out,
        "  {:<9} {:>7} {:>9} {:>7} {:>7} {:>10}",
        "week", "actual", "replayed", "at T", "change", "converted"
    );
    for row in w.weeks.iter().chain([&w.total]) {
        let converted = match row.pct_converted {
            Some(p) => format!("{} ({p:.1}%)", row.converted_people),
            None => "-".into(),
        };
        let _ = writeln!(
            out,
            "  {:<9} {:>7} {:>9} {:>7} {:>+7} {:>10}",
            row.week, row.actual, row.replayed_then, row.at_threshold, row.change, converted
        );
    }
    let _ = writeln!(
        out,
        "\nactual: MQLs the segment had; replayed: the replay at the thresholds then; at T: at {};\nconverted: of the people MQL'd at {}, those who ever converted.",
        w.threshold, w.threshold
    );
    out
}

/// The what-if as CSV, one row per week and a `total` row.
pub fn csv(w: &WhatIf) -> String {
    let mut out = String::from(
        "segment,threshold,week,actual,replayed_then,at_threshold,change,converted_people,pct_converted\n",
    );
    for row in w.weeks.iter().chain([&w.total]) {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{}\n",
            if w.segment.contains(',') {
                format!("\"{}\"", w.segment)
            } else {
                w.segment.clone()
            },
            w.threshold,
            row.week,
            row.actual,
            row.replayed_then,
            row.at_threshold,
            row.change,
            row.converted_people,
            row.pct_converted
                .map_or_else(String::new, |p| p.to_string())
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rusqlite::params;

    /// A person: region, account (index into `ACCOUNTS`) and MAP lead.
    type Person = (bool, Option<usize>, i64);
    /// A score change: lead, part (0 total, 1 behaviour, 2 demographic), new value, skew in
    /// steps back from its arrival (a change may arrive after later ones).
    type Change = (i64, usize, f64, i64);
    const ACCOUNTS: [&str; 3] = ["001A", "001B", "001C"];
    const HOUR: i64 = 3_600_000_000_000;

    fn at(hours: i64) -> Timestamp {
        at_ns(1_790_000_000_000_000_000 + hours * HOUR)
    }

    /// The threshold records of the test stores, by the index a test's knob version names:
    /// the default, EMEA, and a record that is APAC in some versions and " emea " in others.
    const RECORDS: [(&str, &str); 4] = [
        ("a0T0", "{}"),
        ("a0T1", r#"{"region":"EMEA"}"#),
        ("a0T2", r#"{"region":"APAC"}"#),
        ("a0T2", r#"{"region":" emea "}"#),
    ];

    /// A store holding the people, threshold versions (a record of `RECORDS`, score, hour),
    /// opportunities (account, hour) and score changes, in arrival order.
    fn store(
        dir: &Path,
        people: &[Person],
        knobs: &[(usize, f64, i64)],
        opportunities: &[(usize, i64)],
        changes: &[Change],
    ) -> Store {
        let store = Store::open(&dir.join("s.db")).unwrap();
        let conn = store.connection();
        for (i, (emea, account, lead)) in people.iter().enumerate() {
            let id = format!("00Q{i:03}");
            let facts = serde_json::json!({
                "crm": {"kind": "Lead", "id": id},
                "status": "Open", "owner_id": "005R1", "title": "Manager",
                "account_id": account.map(|a| ACCOUNTS[a]), "converted": false,
                "attributes": {"region": if *emea { "emea" } else { "NA" }},
                "modified_at": at(0).to_string(),
            });
            conn.execute(
                "INSERT INTO persons (crm_id, kind, map_lead_id, facts, stamps) VALUES (?1, 'Lead', ?2, ?3, '{}')",
                params![id, lead, facts.to_string()],
            )
            .unwrap();
        }
        for (i, (record, score, hour)) in knobs.iter().enumerate() {
            let (id, segment) = RECORDS[*record];
            conn.execute(
                "INSERT OR IGNORE INTO threshold_versions (threshold_id, modified_at, score, segment, active, deleted, seen_at)
                 VALUES (?1, ?2, ?3, ?4, 1, 0, ?2)",
                params![id, at(*hour + i as i64 % 2).to_string(), score, segment],
            )
            .unwrap();
        }
        for (i, (account, hour)) in opportunities.iter().enumerate() {
            let body = serde_json::json!({
                "id": format!("006{i}"), "account_id": ACCOUNTS[*account], "is_closed": false,
                "is_won": false, "close_date": null,
                "created_at": at(*hour).to_string(), "modified_at": at(*hour).to_string(),
            });
            conn.execute(
                "INSERT INTO opportunities (id, account_id, body) VALUES (?1, ?2, ?3)",
                params![format!("006{i}"), ACCOUNTS[*account], body.to_string()],
            )
            .unwrap();
        }
        for (k, (lead, part, value, skew)) in changes.iter().enumerate() {
            conn.execute(
                "INSERT INTO score_history (change_id, map_lead_id, part, new_value, old_value, at_ns)
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5)",
                params![
                    format!("c{k}"),
                    lead,
                    ["total", "behavior", "demographic"][*part],
                    value,
                    ns(at(k as i64 * 6 - skew * 6)),
                ],
            )
            .unwrap();
        }
        store
    }

    /// Every replay's MQLs, sorted.
    fn replayed(
        history: &History,
        policy: &Policy,
        query: &WhatIfQuery,
        threads: usize,
    ) -> Vec<Mqls> {
        let settings = Settings::from_mapping(&crate::mapping::load(None).unwrap());
        history
            .replay(
                policy,
                &settings,
                query,
                &[None, Some(query.threshold)],
                threads,
            )
            .into_iter()
            .map(|mut m| {
                m.sort();
                m
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Groups of two people on two threads, with the people who cannot reach any
        /// threshold left out, the records that cannot govern the segment's people and the
        /// changes of settled leads passed over, make the MQLs that one replay of everybody
        /// at every threshold version with every change in arrival order makes (the replay
        /// as it was first written).
        #[test]
        fn replaying_group_by_group_makes_the_mqls_of_one_replay_of_everybody(
            people in prop::collection::vec(
                (any::<bool>(), prop::option::of(0..3usize), 1..8i64), 1..10),
            knobs in prop::collection::vec((0..RECORDS.len(), 20.0..130f64, 0..300i64), 0..6),
            opportunities in prop::collection::vec((0..3usize, 0..300i64), 0..3),
            changes in prop::collection::vec(
                (1..9i64, prop::sample::select(vec![0usize, 0, 0, 1, 2]), 0.0..140f64,
                 prop::sample::select(vec![0i64, 0, 1, 4, 12])),
                0..60),
            threshold in 30.0..120f64,
            parts in any::<bool>(),
            segment_emea in any::<bool>(),
            block in 1..8usize,
            re_mql_rules in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut store = store(dir.path(), &people, &knobs, &opportunities, &changes);
            let mut policy = Policy::example();
            if parts {
                policy.score = ScoreSource::BehaviorPlusDemographic;
            }
            // Without the opportunity and recent-MQL rules, a person whose cycle an
            // opportunity converted can be MQL'd again: what a lead settled too soon misses.
            if !re_mql_rules {
                policy.rules.open_opportunity = false;
                policy.rules.recent_opportunity = None;
                policy.rules.recent_mql = None;
            }
            let query = WhatIfQuery {
                segment: if segment_emea {
                    [("region".to_string(), "EMEA".to_string())].into()
                } else {
                    BTreeMap::new()
                },
                threshold,
                from: None,
                to: Some(at(400)),
            };
            // The history as rows; then packed in blocks of `block` changes, with the
            // changes of a block not yet full still rows: the same changes, in the same order.
            let rows = History::read(&store, None, 1, &policy, &query, 2).unwrap();
            store.set_history_block_changes(block);
            let packed = store.pack_score_history().unwrap() as usize;
            prop_assert_eq!(packed, changes.len() / block * block);
            let grouped = History::read(&store, None, 1, &policy, &query, 2).unwrap();
            prop_assert_eq!(contents(&rows), contents(&grouped));
            // One replay of everybody, at every version of every record, with every change.
            let mut whole = History::read(&store, None, 1, &policy, &query, usize::MAX).unwrap();
            whole.floor = None;
            whole.knobs = read_knobs(&store).unwrap();
            whole.settle = false;
            prop_assert_eq!(whole.groups.len(), usize::from(!whole.people.is_empty()));
            prop_assert_eq!(
                replayed(&grouped, &policy, &query, 2),
                replayed(&whole, &policy, &query, 1)
            );
        }
    }

    /// A person whose account's new opportunity converted their cycle is MQL'd again by a
    /// later change, once the rules let them: their lead does not settle with the first cycle,
    /// while a person without an account is passed over after theirs.
    #[test]
    fn a_lead_settles_only_when_nothing_can_close_its_cycle() {
        let dir = tempfile::tempdir().unwrap();
        // Two EMEA people: lead 1 with an account, lead 2 without; an opportunity on the
        // account at hour 10; EMEA's record at 60 from hour 0; both cross at hours 0 and 6,
        // and again at hours 24 and 30.
        let people = [(true, Some(0), 1), (true, None, 2)];
        let changes = [
            (1, 0, 140.0, 0),
            (2, 0, 140.0, 0),
            (1, 0, 130.0, -2),
            (2, 0, 130.0, -2),
        ];
        let store = store(dir.path(), &people, &[(1, 60.0, 0)], &[(0, 10)], &changes);
        let mut policy = Policy::example();
        policy.rules.open_opportunity = false;
        policy.rules.recent_opportunity = None;
        policy.rules.recent_mql = None;
        let query = WhatIfQuery {
            segment: [("region".to_string(), "EMEA".to_string())].into(),
            threshold: 50.0,
            from: None,
            to: Some(at(400)),
        };
        let history = History::read(&store, None, 1, &policy, &query, 2).unwrap();
        let replayed = replayed(&history, &policy, &query, 1);
        for mqls in replayed {
            let people: Vec<&str> = mqls.iter().map(|(_, p)| p.as_str()).collect();
            assert_eq!(people, ["00Q000", "00Q000", "00Q001"]);
        }
    }

    /// What each group of `history` replays: its people, and each range's changes (lead,
    /// id, instant, values, part) with the late ones' clocks.
    #[allow(clippy::type_complexity)]
    fn contents(
        history: &History,
    ) -> Vec<(
        Vec<u32>,
        Vec<(
            Vec<(i64, String, i64, u64, Option<u64>, usize)>,
            Vec<(u32, i64)>,
        )>,
    )> {
        history
            .groups
            .iter()
            .map(|g| {
                let ranges = g
                    .changes
                    .iter()
                    .map(|c| {
                        let (mut reader, mut id) = (c.list.reader(), String::new());
                        let list = std::iter::from_fn(|| {
                            let s = reader.next(&mut id)?;
                            Some((
                                s.map_lead_id,
                                id.clone(),
                                s.at,
                                s.new_value.to_bits(),
                                s.old_value.map(f64::to_bits),
                                s.part.index(),
                            ))
                        })
                        .collect();
                        (list, c.late.clone())
                    })
                    .collect();
                (g.people.clone(), ranges)
            })
            .collect()
    }

    #[test]
    fn what_happened_is_read_from_indexes_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("i.db")).unwrap();
        for (sql, index) in [
            (CONVERTED, "cycle_facts_converted"),
            (SEGMENT_MQLS, "cycle_facts_by_segment"),
        ] {
            let mut stmt = store
                .connection()
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            let params: &[&dyn rusqlite::ToSql] = &[&"{}", &0, &1];
            let plan: Vec<String> = stmt
                .query_map(&params[..stmt.parameter_count()], |r| r.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                plan.iter()
                    .any(|step| step.contains(&format!("COVERING INDEX {index}"))),
                "{sql}: {plan:?}"
            );
            assert!(
                !plan.iter().any(|step| step.contains("TEMP B-TREE")),
                "{sql}: {plan:?}"
            );
        }
    }

    /// The EMEA segment of `store` read with groups of one person asked for (groups then
    /// hold just the people that must share one).
    fn emea_in_groups_of_one(store: &Store) -> History {
        let query = WhatIfQuery {
            segment: [("region".to_string(), "EMEA".to_string())].into(),
            threshold: 50.0,
            from: None,
            to: None,
        };
        History::read(store, None, 1, &Policy::example(), &query, 1).unwrap()
    }

    #[test]
    fn people_of_one_lead_or_account_share_a_group() {
        let dir = tempfile::tempdir().unwrap();
        // 0 and 3 share lead 1; 1 and 4 share account A; 2 is alone.
        let people = [
            (true, None, 1),
            (true, Some(0), 2),
            (true, None, 3),
            (true, None, 1),
            (true, Some(0), 4),
        ];
        let history = emea_in_groups_of_one(&store(dir.path(), &people, &[], &[], &[]));
        let crm = |p: &u32| history.people[*p as usize].0.crm.id.as_str().to_string();
        let mut groups: Vec<Vec<String>> = history
            .groups
            .iter()
            .map(|g| g.people.iter().map(crm).collect())
            .collect();
        for g in &mut groups {
            g.sort();
        }
        groups.sort();
        assert_eq!(
            groups,
            vec![
                vec!["00Q000".to_string(), "00Q003".to_string()],
                vec!["00Q001".to_string(), "00Q004".to_string()],
                vec!["00Q002".to_string()],
            ]
        );
    }

    #[test]
    fn every_lead_finds_its_group_when_there_are_more_people_than_a_byte_numbers_groups() {
        let dir = tempfile::tempdir().unwrap();
        // Leads 1 to 764 and, sparse, a billion apart: the table by id and the map.
        for (n, spacing) in [(764i64, 1i64), (300, 1_000_000_000)] {
            let people: Vec<Person> = (1..=n).map(|i| (true, None, i * spacing)).collect();
            let sub = dir.path().join(format!("{spacing}"));
            std::fs::create_dir(&sub).unwrap();
            let history = emea_in_groups_of_one(&store(&sub, &people, &[], &[], &[]));
            assert!(
                history.groups.len() <= MAX_GROUPS,
                "{}",
                history.groups.len()
            );
            let leads = LeadGroups::new(&history.people, &history.groups);
            for (g, group) in history.groups.iter().enumerate() {
                for p in &group.people {
                    assert_eq!(leads.find(history.people[*p as usize].1), Some(g));
                }
            }
            assert_eq!(leads.find(0), None);
            assert_eq!(leads.find(n * spacing + 1), None);
        }
    }
}
