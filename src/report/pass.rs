//! The report's one pass over `cycle_facts`: every section's figures from a single streamed
//! scan, aggregated into maps keyed by the section's groups (reps, periods, campaigns, score
//! bands), so that a store of millions of cycles is read once and never held: memory follows
//! the number of groups, plus 16 bytes a person for the distinct-people counts.
//!
//! On a store file, two passes run on two threads, each over half of the people (by the last
//! character of their id) on its own connection; their figures add up, distinct people
//! included, since no person is in both.
//!
//! One scan instead of one `GROUP BY` query per section: SQLite answers a `GROUP BY` on an
//! unindexed expression by sorting every row, and the report has ten of them; the measured
//! difference is in the README. SQL still does the filtering (the MQL range, through its
//! index when the range is narrow); the attributes' JSON is read here, each distinct text
//! once (`Attributes`).

use std::collections::BTreeMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use rusqlite::Connection;

use super::{
    BandRow, CampaignRow, Checklist, ChecklistRow, Count, OverdueRow, Query, RepRow, Settings,
    SlaRow, ThresholdRow, TimeframeRow, Totals, VolumeRow, at_ns, attribute_name, ns, pct, round2,
};
use crate::engine::sla::BusinessCalendar;
use crate::engine::state::FxHasher;

type Fast<K, V> = hashbrown::HashMap<K, V, BuildHasherDefault<FxHasher>>;
type FastSet<K> = hashbrown::HashSet<K, BuildHasherDefault<FxHasher>>;

/// What the pass produces: every section but the threshold history.
pub(super) struct Sections {
    pub totals: Totals,
    pub volume: Vec<VolumeRow>,
    pub qualified_by: Vec<Count>,
    pub reps: Vec<RepRow>,
    pub sla_by_rep: Vec<SlaRow>,
    pub overdue_by_owner_region: Vec<OverdueRow>,
    pub rejected_by_reason: Vec<Count>,
    pub timeframes: Vec<TimeframeRow>,
    pub campaigns: Vec<CampaignRow>,
    pub score_bands: Vec<BandRow>,
    pub thresholds: Vec<ThresholdRow>,
    pub checklist: Option<Checklist>,
}

#[derive(Default)]
struct Rep {
    mqls: i64,
    open: i64,
    working: i64,
    rejected: i64,
    converted: i64,
    overdue: i64,
    accepted: i64,
    hours: Mean,
}

#[derive(Default)]
struct Sla {
    with_sla: i64,
    known: i64,
    missed: i64,
    reassigned: i64,
}

#[derive(Default)]
struct Timeframe {
    mqls: i64,
    known: i64,
    missed: i64,
    converted: i64,
    rejected: i64,
}

#[derive(Default)]
struct Campaign {
    mqls: i64,
    accepted: i64,
    converted: i64,
}

#[derive(Default)]
struct Band {
    mqls: i64,
    accepted: i64,
    converted: i64,
    rejected: i64,
    hours: Mean,
    to_opportunity: Mean,
    to_converted: Mean,
}

#[derive(Default)]
struct Knob {
    mqls: i64,
    accepted: i64,
    converted: i64,
    with_opportunity: i64,
    opportunities: i64,
    won: i64,
}

#[derive(Default)]
struct Filled {
    mqls: i64,
    share_sum: f64,
    complete: i64,
}

/// A running mean.
#[derive(Default, Clone, Copy)]
struct Mean {
    sum: f64,
    n: i64,
}

impl Mean {
    fn add(&mut self, v: f64) {
        self.sum += v;
        self.n += 1;
    }

    fn get(self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
}

/// The entry of `key` in `map`: one lookup, the key allocated only the first time.
fn entry<'m, V: Default>(map: &'m mut Fast<String, V>, key: &str) -> &'m mut V {
    map.entry_ref(key).or_default()
}

/// Group names as small numbers, so that a row's keys allocate nothing once seen.
#[derive(Default)]
struct Names {
    index: Fast<String, u32>,
    names: Vec<String>,
}

impl Names {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), i);
        i
    }

    fn name(&self, id: u32) -> String {
        self.names[id as usize].clone()
    }
}

/// A person's id as 128 bits (two independent 64-bit hashes): distinct counts without
/// keeping the ids.
fn person_key(id: &str) -> u128 {
    let mut a = FxHasher::default();
    id.hash(&mut a);
    // The second half: the same bytes, another start, mixed the other way round.
    let mut b = FxHasher::default();
    0x9E37_79B9_7F4A_7C15u64.hash(&mut b);
    id.bytes().rev().for_each(|byte| byte.hash(&mut b));
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// What the pass reads from a cycle's attributes: the region, the grouping's attribute and how
/// many checklist fields are filled in. An org's attribute texts repeat (a few regions, teams
/// and lines of business), so each distinct text is parsed once; the cache starts over past
/// `Attributes::MOST` texts, so attributes that do not repeat cost a parse each, not memory.
struct Attributes<'a> {
    /// The grouping's attribute name, when the report groups by one.
    group: Option<String>,
    checklist: &'a [String],
    seen: Fast<Box<str>, AttributeFacts>,
    none: AttributeFacts,
}

#[derive(Default)]
struct AttributeFacts {
    region: Option<Box<str>>,
    group: Option<Box<str>>,
    filled: i64,
}

impl<'a> Attributes<'a> {
    const MOST: usize = 100_000;

    fn new(query: &Query, checklist: &'a [String]) -> Attributes<'a> {
        Attributes {
            group: match &query.group {
                super::Grouping::Attribute(a) => Some(attribute_name(a)),
                _ => None,
            },
            checklist,
            seen: Fast::default(),
            none: AttributeFacts::default(),
        }
    }

    /// The facts of one cycle's attributes text.
    fn of(&mut self, text: Option<&str>) -> &AttributeFacts {
        let Some(text) = text else {
            return &self.none;
        };
        if self.seen.len() >= Self::MOST && !self.seen.contains_key(text) {
            self.seen.clear();
        }
        let (group, checklist) = (self.group.as_deref(), self.checklist);
        self.seen
            .entry_ref(text)
            .or_insert_with(|| AttributeFacts::parse(text, group, checklist))
    }
}

impl AttributeFacts {
    /// As SQLite's `json_extract` reads them: a value that is not text is no region and no
    /// group; a checklist field is filled in unless missing, null or the empty text. Text
    /// that is not a JSON object holds nothing.
    fn parse(text: &str, group: Option<&str>, checklist: &[String]) -> AttributeFacts {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).unwrap_or_default();
        let text_of = |name: &str| map.get(name).and_then(|v| v.as_str()).map(Box::from);
        AttributeFacts {
            region: text_of("region"),
            group: group.and_then(text_of),
            filled: checklist
                .iter()
                .filter(|f| match map.get(&attribute_name(f)) {
                    None | Some(serde_json::Value::Null) => false,
                    Some(serde_json::Value::String(s)) => !s.is_empty(),
                    Some(_) => true,
                })
                .count() as i64,
        }
    }
}

/// Period labels, computed once per quarter hour (every zone's offset is a multiple of 15
/// minutes, so a quarter hour never straddles a period boundary).
struct Periods<'a> {
    settings: &'a Settings,
    by: super::Period,
    cache: Fast<i64, u32>,
    labels: Vec<String>,
}

impl Periods<'_> {
    const QUARTER_HOUR: i64 = 900 * 1_000_000_000;

    fn of(&mut self, at: i64) -> u32 {
        let bucket = at.div_euclid(Self::QUARTER_HOUR);
        if let Some(&i) = self.cache.get(&bucket) {
            return i;
        }
        let label = self
            .by
            .label(at_ns(bucket * Self::QUARTER_HOUR), &self.settings.time_zone);
        let i = match self.labels.iter().position(|l| *l == label) {
            Some(i) => i as u32,
            None => {
                self.labels.push(label);
                (self.labels.len() - 1) as u32
            }
        };
        self.cache.insert(bucket, i);
        i
    }
}

/// Scans the cycles of the query's range once and computes every section.
pub(super) fn run(
    conn: &Connection,
    settings: &Settings,
    query: &Query,
    part: Option<(u32, u32)>,
) -> rusqlite::Result<Partial> {
    let from = query.from.map_or(i64::MIN, ns);
    let to = query.to.map_or(i64::MAX, ns);
    // Without bounds every row is read: a plain scan beats walking the index and looking
    // each row up (`+` keeps SQLite off the index).
    let range = if query.from.is_none() && query.to.is_none() {
        "+mql_at_ns >= ?1 AND +mql_at_ns < ?2"
    } else {
        "mql_at_ns >= ?1 AND mql_at_ns < ?2"
    };
    // The region, an attribute grouping and the checklist are read from the attributes'
    // JSON here, each distinct text once (`Attributes`), not by SQLite's JSON functions on
    // every row (a tenth of the pass).
    let group = query.group.sql();
    let checklist = &settings.checklist;
    // A share of the people: this pass's of `n` passes over disjoint people, by the last
    // character of their CRM id.
    let passes = part.map_or(1, |(_, n)| n as usize).max(1);
    let part = part.map_or_else(String::new, |(k, n)| {
        format!(" AND unicode(substr(crm_id, -1)) % {n} = {k}")
    });
    let sql = format!(
        "SELECT crm_id, status, owner_id, owner_at_mql, team, segment,
            attributes, {group}, coalesce(campaign_name, campaign_id),
            qualified_by, score, threshold, mql_at_ns, seen_at_ns, sal_at_ns, closed_at_ns,
            sla_due_ns, overdue, reassignments, rejection_reason
         FROM cycle_facts WHERE {range}{part}"
    );
    let mut attributes = Attributes::new(query, checklist);
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params![from, to])?;

    let calendars: BTreeMap<&str, &BusinessCalendar> = settings
        .calendars
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let fallback = BusinessCalendar::nine_to_five(settings.time_zone.clone());
    let business_hours = |team: Option<&str>, start: i64, end: i64| -> f64 {
        let calendar = team
            .and_then(|t| calendars.get(t).copied())
            .unwrap_or(&fallback);
        calendar
            .business_time_between(at_ns(start), at_ns(end))
            .as_secs_f64()
            / 3600.0
    };
    let now = ns(query.now);
    let mut periods = Periods {
        settings,
        by: query.by,
        cache: Fast::default(),
        labels: Vec::new(),
    };

    // The two sets that grow with the people: sized once for a whole-store report (about
    // the pass's share of the rows), rather than rehashed into fresh memory at each doubling,
    // 7.5 % of the pass's samples under perf; with a range, the share is not known and
    // they grow.
    let rows_expected = if query.from.is_none() && query.to.is_none() {
        let last: Option<i64> =
            conn.query_row("SELECT max(rowid) FROM cycle_facts", [], |r| r.get(0))?;
        usize::try_from(last.unwrap_or(0)).unwrap_or(0) / passes
    } else {
        0
    };
    let mut totals = Totals::default();
    let mut people: FastSet<u128> =
        FastSet::with_capacity_and_hasher(rows_expected, <_>::default());
    let mut names = Names::default();
    let mut volume: Fast<(u32, u32), (i64, i64)> = Fast::default();
    let mut volume_people: FastSet<(u32, u32, u128)> =
        FastSet::with_capacity_and_hasher(rows_expected, <_>::default());
    let mut qualified: Fast<String, i64> = Fast::default();
    let mut reps: Fast<String, Rep> = Fast::default();
    let mut slas: Fast<String, Sla> = Fast::default();
    let mut overdue: Fast<(u32, u32), (i64, i64)> = Fast::default();
    let mut reasons: Fast<String, i64> = Fast::default();
    let mut timeframes: Fast<u32, Timeframe> = Fast::default();
    let mut campaigns: Fast<String, Campaign> = Fast::default();
    let mut bands: Fast<i64, Band> = Fast::default();
    let mut knobs: Fast<(u32, u64), Knob> = Fast::default();
    let mut filled: Fast<String, Filled> = Fast::default();

    while let Some(r) = rows.next()? {
        let text = |i: usize| -> rusqlite::Result<Option<&str>> {
            Ok(r.get_ref(i)?.as_str_or_null().ok().flatten())
        };
        let crm_id = text(0)?.unwrap_or_default();
        let status = text(1)?.unwrap_or_default();
        let owner = text(2)?.unwrap_or("(none)");
        let first_owner = text(3)?.unwrap_or("(none)");
        let team = text(4)?;
        let segment = text(5)?.unwrap_or_default();
        let facts = attributes.of(text(6)?);
        let region = facts.region.as_deref().unwrap_or("(none)");
        let group = match &query.group {
            super::Grouping::Attribute(_) => facts.group.as_deref(),
            _ => text(7)?,
        }
        .unwrap_or("(none)");
        let campaign = text(8)?.unwrap_or("(none)");
        let how = text(9)?.unwrap_or("score");
        let score: f64 = r.get(10)?;
        let threshold: f64 = r.get(11)?;
        let mql: i64 = r.get(12)?;
        let seen: i64 = r.get(13)?;
        let sal: Option<i64> = r.get(14)?;
        let closed: Option<i64> = r.get(15)?;
        let due: Option<i64> = r.get(16)?;
        let went_overdue: bool = r.get(17)?;
        let reassigned = r.get::<_, i64>(18)? > 0;
        let reason = text(19)?.unwrap_or("(none)");
        let checklist_filled = facts.filled;

        let (open, working, rejected, converted) = (
            status == "Open",
            status == "Working",
            status == "Rejected",
            status == "Converted",
        );
        let accepted = sal.is_some();
        // The SLA: missed when the cycle went overdue, moved on (after its due time), or was
        // acted upon after it; known when missed or acted upon.
        let acted = sal.or(closed);
        let (known, missed) = match due {
            None => (false, false),
            Some(due) => {
                let missed = went_overdue || reassigned || acted.unwrap_or(now) > due;
                (missed || acted.is_some(), missed)
            }
        };
        let hours = sal.map(|s| business_hours(team, seen, s));
        let person = person_key(crm_id);
        let period = periods.of(mql);

        totals.mqls += 1;
        people.insert(person);
        totals.open += i64::from(open);
        totals.working += i64::from(working);
        totals.rejected += i64::from(rejected);
        totals.converted += i64::from(converted);
        totals.accepted += i64::from(accepted);
        totals.sla_known += i64::from(known);
        totals.sla_missed += i64::from(missed);

        let group = names.id(group);
        let v = volume.entry((period, group)).or_insert((0, 0));
        v.0 += 1;
        if volume_people.insert((period, group, person)) {
            v.1 += 1;
        }
        *entry(&mut qualified, how) += 1;

        let rep = entry(&mut reps, owner);
        rep.mqls += 1;
        rep.open += i64::from(open);
        rep.working += i64::from(working);
        rep.rejected += i64::from(rejected);
        rep.converted += i64::from(converted);
        rep.overdue += i64::from(went_overdue);
        rep.accepted += i64::from(accepted);
        if let Some(h) = hours {
            rep.hours.add(h);
        }
        if due.is_some() {
            let sla = entry(&mut slas, first_owner);
            sla.with_sla += 1;
            sla.known += i64::from(known);
            sla.missed += i64::from(missed);
            sla.reassigned += i64::from(reassigned);
        }
        let o = overdue
            .entry((names.id(owner), names.id(region)))
            .or_insert((0, 0));
        o.0 += i64::from(went_overdue);
        o.1 += 1;
        if rejected {
            *entry(&mut reasons, reason) += 1;
        }
        let tf = timeframes.entry(period).or_default();
        tf.mqls += 1;
        tf.known += i64::from(known);
        tf.missed += i64::from(missed);
        tf.converted += i64::from(converted);
        tf.rejected += i64::from(rejected);
        let c = entry(&mut campaigns, campaign);
        c.mqls += 1;
        c.accepted += i64::from(accepted);
        c.converted += i64::from(converted);

        let band = bands
            .entry((score / settings.score_band).floor() as i64)
            .or_default();
        band.mqls += 1;
        band.accepted += i64::from(accepted);
        band.converted += i64::from(converted);
        band.rejected += i64::from(rejected);
        if let Some(h) = hours {
            band.hours.add(h);
        }
        if converted && let Some(closed) = closed {
            band.to_converted.add((closed - mql) as f64 / 86_400e9);
        }
        let knob = knobs
            .entry((names.id(segment), threshold.to_bits()))
            .or_default();
        knob.mqls += 1;
        knob.accepted += i64::from(accepted);
        knob.converted += i64::from(converted);
        if !checklist.is_empty() {
            let f = entry(&mut filled, status);
            f.mqls += 1;
            f.share_sum += 100.0 * checklist_filled as f64 / checklist.len() as f64;
            f.complete += i64::from(checklist_filled == checklist.len() as i64);
        }
    }

    totals.people = people.len() as i64;
    let label = |i: u32| periods.labels[i as usize].clone();
    Ok(Partial {
        totals,
        volume: volume
            .into_iter()
            .map(|((p, g), v)| ((label(p), names.name(g)), v))
            .collect(),
        qualified,
        reps,
        slas,
        overdue: overdue
            .into_iter()
            .map(|((o, r), v)| ((names.name(o), names.name(r)), v))
            .collect(),
        reasons,
        timeframes: timeframes.into_iter().map(|(p, t)| (label(p), t)).collect(),
        campaigns,
        bands,
        knobs: knobs
            .into_iter()
            .map(|((segment, bits), k)| ((names.name(segment), bits), k))
            .collect(),
        filled,
    })
}

/// The pipeline of the range's cycles (the opportunities of the person's account created
/// from the MQL to the window's end) as figures of their score bands and thresholds: one join
/// driven from the opportunities (far fewer than cycles) through the index of cycles by
/// account, CROSS JOIN keeping SQLite to that order. `conn` must have `instant_ns`.
pub(super) fn pipeline(
    conn: &Connection,
    settings: &Settings,
    query: &Query,
) -> rusqlite::Result<Partial> {
    let window = i64::try_from(settings.opportunity_window.as_nanos()).unwrap_or(i64::MAX / 2);
    let mut stmt = conn.prepare(&format!(
        "WITH o AS MATERIALIZED (
            SELECT account_id, json_extract(body, '$.is_won') = 1 AS won,
                instant_ns(json_extract(body, '$.created_at')) AS created
            FROM opportunities)
         SELECT f.score, f.segment, f.threshold, f.mql_at_ns, count(*), sum(o.won), min(o.created)
         FROM o CROSS JOIN cycle_facts f ON f.account_id = o.account_id
         WHERE f.mql_at_ns >= ?1 AND f.mql_at_ns < ?2
           AND o.created >= f.mql_at_ns AND o.created <= f.mql_at_ns + {window}
         GROUP BY f.external_id"
    ))?;
    let (from, to) = (
        query.from.map_or(i64::MIN, ns),
        query.to.map_or(i64::MAX, ns),
    );
    let mut rows = stmt.query(rusqlite::params![from, to])?;
    let mut bands: Fast<i64, Band> = Fast::default();
    let mut knobs: Fast<(String, u64), Knob> = Fast::default();
    while let Some(r) = rows.next()? {
        let score: f64 = r.get(0)?;
        let segment: String = r.get(1)?;
        let threshold: f64 = r.get(2)?;
        let (mql, n, won, first): (i64, i64, i64, i64) =
            (r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?);
        bands
            .entry((score / settings.score_band).floor() as i64)
            .or_default()
            .to_opportunity
            .add((first - mql) as f64 / 86_400e9);
        let knob = knobs.entry((segment, threshold.to_bits())).or_default();
        knob.with_opportunity += 1;
        knob.opportunities += n;
        knob.won += won;
    }
    Ok(Partial {
        totals: Totals::default(),
        volume: Fast::default(),
        qualified: Fast::default(),
        reps: Fast::default(),
        slas: Fast::default(),
        overdue: Fast::default(),
        reasons: Fast::default(),
        timeframes: Fast::default(),
        campaigns: Fast::default(),
        bands,
        knobs,
        filled: Fast::default(),
    })
}

/// One pass's figures, by name, before the shares and the order: two passes over disjoint
/// people add up.
pub(super) struct Partial {
    totals: Totals,
    volume: Fast<(String, String), (i64, i64)>,
    qualified: Fast<String, i64>,
    reps: Fast<String, Rep>,
    slas: Fast<String, Sla>,
    overdue: Fast<(String, String), (i64, i64)>,
    reasons: Fast<String, i64>,
    timeframes: Fast<String, Timeframe>,
    campaigns: Fast<String, Campaign>,
    bands: Fast<i64, Band>,
    knobs: Fast<(String, u64), Knob>,
    filled: Fast<String, Filled>,
}

/// Adds another pass's figures.
trait Merge {
    fn merge(&mut self, other: Self);
}

impl Merge for i64 {
    fn merge(&mut self, other: i64) {
        *self += other;
    }
}

impl Merge for (i64, i64) {
    fn merge(&mut self, other: (i64, i64)) {
        self.0 += other.0;
        self.1 += other.1;
    }
}

impl Merge for Mean {
    fn merge(&mut self, other: Mean) {
        self.sum += other.sum;
        self.n += other.n;
    }
}

impl Merge for Rep {
    fn merge(&mut self, o: Rep) {
        self.mqls += o.mqls;
        self.open += o.open;
        self.working += o.working;
        self.rejected += o.rejected;
        self.converted += o.converted;
        self.overdue += o.overdue;
        self.accepted += o.accepted;
        self.hours.merge(o.hours);
    }
}

impl Merge for Sla {
    fn merge(&mut self, o: Sla) {
        self.with_sla += o.with_sla;
        self.known += o.known;
        self.missed += o.missed;
        self.reassigned += o.reassigned;
    }
}

impl Merge for Timeframe {
    fn merge(&mut self, o: Timeframe) {
        self.mqls += o.mqls;
        self.known += o.known;
        self.missed += o.missed;
        self.converted += o.converted;
        self.rejected += o.rejected;
    }
}

impl Merge for Campaign {
    fn merge(&mut self, o: Campaign) {
        self.mqls += o.mqls;
        self.accepted += o.accepted;
        self.converted += o.converted;
    }
}

impl Merge for Band {
    fn merge(&mut self, o: Band) {
        self.mqls += o.mqls;
        self.accepted += o.accepted;
        self.converted += o.converted;
        self.rejected += o.rejected;
        self.hours.merge(o.hours);
        self.to_opportunity.merge(o.to_opportunity);
        self.to_converted.merge(o.to_converted);
    }
}

impl Merge for Knob {
    fn merge(&mut self, o: Knob) {
        self.mqls += o.mqls;
        self.accepted += o.accepted;
        self.converted += o.converted;
        self.with_opportunity += o.with_opportunity;
        self.opportunities += o.opportunities;
        self.won += o.won;
    }
}

impl Merge for Filled {
    fn merge(&mut self, o: Filled) {
        self.mqls += o.mqls;
        self.share_sum += o.share_sum;
        self.complete += o.complete;
    }
}

impl<K: std::hash::Hash + Eq, V: Merge + Default> Merge for Fast<K, V> {
    fn merge(&mut self, other: Self) {
        for (k, v) in other {
            self.entry(k).or_default().merge(v);
        }
    }
}

impl Partial {
    /// The cycles counted.
    pub(super) fn mqls(&self) -> i64 {
        self.totals.mqls
    }

    pub(super) fn merge(&mut self, o: Partial) {
        let t = &mut self.totals;
        t.mqls += o.totals.mqls;
        t.people += o.totals.people;
        t.open += o.totals.open;
        t.working += o.totals.working;
        t.rejected += o.totals.rejected;
        t.converted += o.totals.converted;
        t.accepted += o.totals.accepted;
        t.sla_known += o.totals.sla_known;
        t.sla_missed += o.totals.sla_missed;
        self.volume.merge(o.volume);
        self.qualified.merge(o.qualified);
        self.reps.merge(o.reps);
        self.slas.merge(o.slas);
        self.overdue.merge(o.overdue);
        self.reasons.merge(o.reasons);
        self.timeframes.merge(o.timeframes);
        self.campaigns.merge(o.campaigns);
        self.bands.merge(o.bands);
        self.knobs.merge(o.knobs);
        self.filled.merge(o.filled);
    }

    /// The sections: shares, means and each table's order.
    pub(super) fn sections(self, settings: &Settings) -> Sections {
        let Partial {
            mut totals,
            volume,
            qualified,
            reps,
            slas,
            overdue,
            reasons,
            timeframes,
            campaigns,
            bands,
            knobs,
            filled,
        } = self;
        let checklist = &settings.checklist;
        totals.pct_missed_sla = pct(totals.sla_missed, totals.sla_known);
        totals.pct_converted = pct(totals.converted, totals.mqls);
        totals.pct_rejected = pct(totals.rejected, totals.mqls);

        let mut volume: Vec<VolumeRow> = volume
            .into_iter()
            .map(|((period, group), (mqls, people))| VolumeRow {
                period,
                group,
                mqls,
                people,
            })
            .collect();
        volume.sort_by(|a, b| (&a.period, &a.group).cmp(&(&b.period, &b.group)));
        let by_count = |map: Fast<String, i64>| -> Vec<Count> {
            let mut v: Vec<Count> = map
                .into_iter()
                .map(|(key, count)| Count { key, count })
                .collect();
            v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
            v
        };
        let mut rep_rows: Vec<RepRow> = reps
            .into_iter()
            .map(|(owner, r)| RepRow {
                owner,
                mqls: r.mqls,
                open: r.open,
                working: r.working,
                rejected: r.rejected,
                converted: r.converted,
                overdue: r.overdue,
                pct_rejected: pct(r.rejected, r.mqls),
                accepted: r.accepted,
                avg_business_hours_to_sal: round2(r.hours.get()),
            })
            .collect();
        rep_rows.sort_by(|a, b| b.mqls.cmp(&a.mqls).then_with(|| a.owner.cmp(&b.owner)));
        let mut sla_rows: Vec<SlaRow> = slas
            .into_iter()
            .map(|(owner, s)| SlaRow {
                owner,
                with_sla: s.with_sla,
                sla_known: s.known,
                sla_met: s.known - s.missed,
                sla_missed: s.missed,
                pct_missed_sla: pct(s.missed, s.known),
                reassigned: s.reassigned,
            })
            .collect();
        sla_rows.sort_by(|a, b| a.owner.cmp(&b.owner));
        let mut overdue_rows: Vec<OverdueRow> = overdue
            .into_iter()
            .filter(|(_, (n, _))| *n > 0)
            .map(|((owner, region), (overdue, mqls))| OverdueRow {
                owner,
                region,
                overdue,
                mqls,
            })
            .collect();
        overdue_rows.sort_by(|a, b| {
            b.overdue
                .cmp(&a.overdue)
                .then_with(|| (&a.owner, &a.region).cmp(&(&b.owner, &b.region)))
        });
        let mut timeframe_rows: Vec<TimeframeRow> = timeframes
            .into_iter()
            .map(|(period, t)| TimeframeRow {
                period,
                mqls: t.mqls,
                sla_known: t.known,
                sla_missed: t.missed,
                pct_missed_sla: pct(t.missed, t.known),
                converted: t.converted,
                pct_converted: pct(t.converted, t.mqls),
                rejected: t.rejected,
                pct_rejected: pct(t.rejected, t.mqls),
            })
            .collect();
        timeframe_rows.sort_by(|a, b| a.period.cmp(&b.period));
        let mut campaign_rows: Vec<CampaignRow> = campaigns
            .into_iter()
            .map(|(campaign, c)| CampaignRow {
                campaign,
                mqls: c.mqls,
                accepted: c.accepted,
                converted: c.converted,
                pct_converted: pct(c.converted, c.mqls),
            })
            .collect();
        campaign_rows.sort_by(|a, b| {
            b.mqls
                .cmp(&a.mqls)
                .then_with(|| a.campaign.cmp(&b.campaign))
        });
        let width = settings.score_band;
        let mut band_rows: Vec<(i64, BandRow)> = bands
            .into_iter()
            .map(|(band, b)| {
                let low = band as f64 * width;
                (
                    band,
                    BandRow {
                        score_from: low,
                        score_to: low + width,
                        mqls: b.mqls,
                        accepted: b.accepted,
                        converted: b.converted,
                        rejected: b.rejected,
                        pct_accepted: pct(b.accepted, b.mqls),
                        pct_converted: pct(b.converted, b.mqls),
                        pct_rejected: pct(b.rejected, b.mqls),
                        avg_business_hours_to_sal: round2(b.hours.get()),
                        avg_days_to_opportunity: round2(b.to_opportunity.get()),
                        avg_days_to_converted: round2(b.to_converted.get()),
                    },
                )
            })
            .collect();
        band_rows.sort_by_key(|(band, _)| *band);
        let mut knob_rows: Vec<ThresholdRow> = knobs
            .into_iter()
            .map(|((segment, bits), k)| ThresholdRow {
                segment,
                threshold: f64::from_bits(bits),
                mqls: k.mqls,
                accepted: k.accepted,
                converted: k.converted,
                pct_converted: pct(k.converted, k.mqls),
                with_opportunity: k.with_opportunity,
                opportunities: k.opportunities,
                won: k.won,
            })
            .collect();
        knob_rows.sort_by(|a, b| {
            a.segment
                .cmp(&b.segment)
                .then_with(|| a.threshold.total_cmp(&b.threshold))
        });
        let checklist = (!checklist.is_empty()).then(|| {
            let mut by_status: Vec<ChecklistRow> = filled
                .into_iter()
                .map(|(status, f)| ChecklistRow {
                    status,
                    mqls: f.mqls,
                    pct_filled: (f.mqls > 0)
                        .then(|| (f.share_sum / f.mqls as f64 * 10.0).round() / 10.0),
                    complete: f.complete,
                })
                .collect();
            by_status.sort_by(|a, b| a.status.cmp(&b.status));
            Checklist {
                fields: checklist.clone(),
                by_status,
            }
        });
        Sections {
            totals,
            volume,
            qualified_by: by_count(qualified),
            reps: rep_rows,
            sla_by_rep: sla_rows,
            overdue_by_owner_region: overdue_rows,
            rejected_by_reason: by_count(reasons),
            timeframes: timeframe_rows,
            campaigns: campaign_rows,
            score_bands: band_rows.into_iter().map(|(_, b)| b).collect(),
            thresholds: knob_rows,
            checklist,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{Grouping, Period, Query, Settings, build};
    use crate::store::Store;

    /// One cycle's report row: (person, status, owner, region, score, mql hour, hours to SAL,
    /// overdue, reassigned, account, campaign).
    type Row = (
        u8,
        u8,
        u8,
        u8,
        u8,
        u16,
        Option<u8>,
        bool,
        bool,
        Option<u8>,
        u8,
    );

    /// The attributes read in Rust are what SQLite's `json_extract` read before: the region
    /// and a grouping attribute when text, and a checklist field filled unless missing, null
    /// or empty, over texts of every kind of value.
    #[test]
    fn attributes_read_as_json_extract_reads_them() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let checklist = ["budget".to_string(), "auth\"ority".to_string()];
        let texts = [
            r#"{"region":"EMEA","budget":"yes"}"#,
            r#"{"region":"","budget":"","authority":"CFO"}"#,
            r#"{"region":7,"budget":0,"authority":false}"#,
            r#"{"region":null,"budget":null,"authority":[1]}"#,
            r#"{"region":{"a":1},"budget":{},"authority":"x","line":"BL1"}"#,
            r#"{"line":"Ünïcode \" quoted","budget":true}"#,
            r#"{}"#,
        ];
        for text in texts {
            let (region, line, filled): (Option<String>, Option<String>, i64) = conn
                .query_row(
                    "SELECT CASE WHEN json_type(?1, '$.region') = 'text'
                                 THEN json_extract(?1, '$.region') END,
                            CASE WHEN json_type(?1, '$.\"line\"') = 'text'
                                 THEN json_extract(?1, '$.\"line\"') END,
                            (coalesce(json_extract(?1, '$.\"budget\"'), '') <> '')
                              + (coalesce(json_extract(?1, '$.\"authority\"'), '') <> '')",
                    [text],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .unwrap();
            let facts = super::AttributeFacts::parse(text, Some("line"), &checklist);
            assert_eq!(facts.region.as_deref(), region.as_deref(), "{text}");
            assert_eq!(facts.group.as_deref(), line.as_deref(), "{text}");
            assert_eq!(facts.filled, filled, "{text}");
        }
    }

    fn insert(store: &Store, rows: &[Row]) {
        let conn = store.connection();
        let hour = 3_600_000_000_000i64;
        let start = 1_790_000_000_000_000_000i64;
        for (
            i,
            (person, status, owner, region, score, at, sal, overdue, reassigned, account, campaign),
        ) in rows.iter().enumerate()
        {
            let status = ["Open", "Working", "Rejected", "Converted"][*status as usize % 4];
            let mql = start + i64::from(*at) * hour;
            let sal = sal.map(|h| mql + i64::from(h) * hour);
            let closed = matches!(status, "Rejected" | "Converted").then_some(mql + 100 * hour);
            let region = ["NA", "EMEA", "APAC"][*region as usize % 3];
            conn.execute(
                "INSERT INTO cycle_facts (external_id, crm_id, kind, number, status, owner_id,
                    owner_at_mql, team, segment, attributes, account_id, campaign_id,
                    campaign_name, qualified_by, score, threshold, threshold_id, mql_at_ns,
                    seen_at_ns, sal_at_ns, closed_at_ns, sla_due_ns, overdue, reassignments,
                    rejection_reason, outcome, backfilled)
                 VALUES (?1, ?2, 'Lead', ?3, ?4, ?5, ?5, 'SDR NA', ?6, ?7, ?8, ?9, ?9, 'score',
                    ?10, 80.0, 'a0T', ?11, ?11, ?12, ?13, ?14, ?15, ?16, ?17, NULL, 0)",
                rusqlite::params![
                    format!("00Q{person}-{i}"),
                    format!("00Q{person}"),
                    i as i64 + 1,
                    status,
                    format!("005R{owner}"),
                    format!("region={region}"),
                    format!(r#"{{"region":"{region}"}}"#),
                    account.map(|a| format!("001A{a}")),
                    format!("C{campaign}"),
                    f64::from(*score),
                    mql,
                    sal,
                    closed,
                    mql + 4 * hour,
                    overdue,
                    i64::from(*reassigned),
                    (status == "Rejected").then_some("No Budget"),
                ],
            )
            .unwrap();
        }
        for a in 0..4 {
            let created =
                jiff::Timestamp::from_nanosecond(i128::from(start + 30 * hour * a)).unwrap();
            conn.execute(
                "INSERT INTO opportunities (id, account_id, body) VALUES (?1, ?2, ?3)",
                rusqlite::params![
                    format!("006O{a}"),
                    format!("001A{a}"),
                    format!(
                        r#"{{"id":"006O{a}","account_id":"001A{a}","is_closed":false,"is_won":{},"close_date":null,"created_at":"{created}","modified_at":"{created}"}}"#,
                        a % 2 == 0
                    ),
                ],
            )
            .unwrap();
        }
    }

    /// Equal, but for the last rounding of a mean: the halves add their sums in another
    /// order, and a mean a hair from a rounding boundary may round the other way.
    fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
        use serde_json::Value;
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                (x - y).abs() <= 0.0100001
            }
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
            }
            _ => a == b,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// The report of a store file (two passes over halves of the people, and the
        /// pipeline, on three connections) is the report of the same rows in memory (one
        /// connection, one pass): the halves add up, distinct people included.
        #[test]
        fn the_passes_over_halves_of_the_people_add_up_to_one_pass(
            rows in proptest::collection::vec(
                (0u8..40, 0u8..4, 0u8..5, 0u8..3, 50u8..200, 0u16..2000,
                 proptest::option::of(0u8..60), any::<bool>(), any::<bool>(),
                 proptest::option::of(0u8..4), 0u8..6),
                0..120,
            ),
            by in prop_oneof![Just(Period::Day), Just(Period::Week), Just(Period::Month)],
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s.db");
            drop(Store::open(&path).unwrap());
            {
                let file = Store::open(&path).unwrap();
                insert(&file, &rows);
            }
            let memory = Store::open_in_memory().unwrap();
            insert(&memory, &rows);
            let loaded = crate::mapping::load(None).unwrap();
            let settings = Settings::from_mapping(&loaded);
            for group in [Grouping::Owner, Grouping::Attribute("region".into())] {
                let query = Query {
                    from: None,
                    to: None,
                    by,
                    group,
                    now: jiff::Timestamp::from_second(1_800_000_000).unwrap(),
                };
                let file = Store::open_reader(&path).unwrap();
                prop_assert!(file.is_file());
                let split = build(&file, &settings, &query).unwrap();
                let whole = build(&memory, &settings, &query).unwrap();
                let (split, whole) = (
                    serde_json::to_value(&split).unwrap(),
                    serde_json::to_value(&whole).unwrap(),
                );
                prop_assert!(same(&split, &whole), "{split}\n{whole}");
            }
        }
    }
}
