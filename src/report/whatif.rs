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
//! The two replays run on two threads, each with its own read of the store; a replay reads
//! the score history in arrival order (the order the engine saw it live), skipping the MAP
//! leads of people outside the segment before anything is decoded.

use std::collections::{BTreeMap, HashSet};
use std::iter::Peekable;
use std::path::Path;

use jiff::Timestamp;
use serde::Serialize;

use crate::engine::model::{
    Action, Event, MapLink, Opportunity, PersonFacts, ScoreChange, ScorePart, Threshold,
    segment_label,
};
use crate::engine::{Context, EngineState, Policy, Visibility, reconcile};
use crate::store::{Store, StoreError};

use super::{Period, Settings, at_ns, ns};

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

/// One replay's MQLs in the segment: (week, crm id) per cycle opened in the range.
struct Replayed {
    mqls: Vec<(String, String)>,
    score_changes: u64,
    people: usize,
}

/// The MQLs the segment would have had in the query's range at the query's threshold: one
/// replay of the store's history (the knob's feedback on threshold records).
pub fn mqls_at(
    store: &Store,
    policy: &Policy,
    settings: &Settings,
    query: &WhatIfQuery,
) -> Result<usize, StoreError> {
    Ok(
        replay(store, policy, settings, query, Some(query.threshold))?
            .mqls
            .len(),
    )
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
    let (then, at_t) = std::thread::scope(|scope| {
        let then =
            scope.spawn(|| replay(&Store::open_reader(path)?, policy, settings, query, None));
        let at_t = Store::open_reader(path)
            .and_then(|store| replay(&store, policy, settings, query, Some(query.threshold)));
        (then.join().expect("what-if replay thread"), at_t)
    });
    let (then, at_t) = (then?, at_t?);

    let store = Store::open_reader(path)?;
    let conn = store.connection();
    let err = |e| store.sql_err(e);
    let converted: HashSet<String> = {
        let mut stmt = conn
            .prepare("SELECT DISTINCT crm_id FROM cycle_facts WHERE status = 'Converted'")
            .map_err(err)?;
        stmt.query_map([], |r| r.get::<_, String>(0))
            .map_err(err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(err)?
    };
    let mut weeks: BTreeMap<String, WhatIfWeek> = BTreeMap::new();
    fn week<'w>(weeks: &'w mut BTreeMap<String, WhatIfWeek>, w: &str) -> &'w mut WhatIfWeek {
        weeks.entry(w.to_string()).or_insert_with(|| WhatIfWeek {
            week: w.to_string(),
            ..WhatIfWeek::default()
        })
    }
    {
        let (from, to) = (
            query.from.map_or(i64::MIN, ns),
            query.to.map_or(i64::MAX, ns),
        );
        let mut stmt = conn
            .prepare(
                "SELECT mql_at_ns FROM cycle_facts WHERE segment = ?1 AND mql_at_ns >= ?2 AND mql_at_ns < ?3",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map(rusqlite::params![label, from, to], |r| r.get::<_, i64>(0))
            .map_err(err)?;
        for at in rows {
            let at = at.map_err(err)?;
            week(
                &mut weeks,
                &Period::Week.label(at_ns(at), &settings.time_zone),
            )
            .actual += 1;
        }
    }
    for (w, _) in &then.mqls {
        week(&mut weeks, w).replayed_then += 1;
    }
    let mut people_by_week: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
    for (w, crm_id) in &at_t.mqls {
        week(&mut weeks, w).at_threshold += 1;
        people_by_week.entry(w).or_default().insert(crm_id);
    }
    for (w, people) in people_by_week {
        let n = people.iter().filter(|p| converted.contains(**p)).count() as i64;
        let row = week(&mut weeks, w);
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
    all_people.extend(at_t.mqls.iter().map(|(_, p)| p.as_str()));
    total.converted_people = all_people
        .iter()
        .filter(|p| converted.contains(**p))
        .count() as i64;
    total.pct_converted = super::pct(total.converted_people, all_people.len() as i64);

    let mut thresholds_then: Vec<f64> = {
        let mut stmt = conn
            .prepare("SELECT DISTINCT score, segment FROM threshold_versions")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, f64>(0)?, r.get::<_, String>(1)?)))
            .map_err(err)?;
        let mut scores = Vec::new();
        for row in rows {
            let (score, segment) = row.map_err(err)?;
            if serde_json::from_str::<BTreeMap<String, String>>(&segment)
                .is_ok_and(|s| s == query.segment)
            {
                scores.push(score);
            }
        }
        scores
    };
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
        score_changes: at_t.score_changes,
        people: at_t.people,
    })
}

/// One replay of the stored history into a fresh engine state; `threshold` replaces the
/// score of every threshold record of the segment (and the mapping's default, for the
/// default segment).
fn replay(
    store: &Store,
    policy: &Policy,
    settings: &Settings,
    query: &WhatIfQuery,
    threshold: Option<f64>,
) -> Result<Replayed, StoreError> {
    let conn = store.connection();
    let err = |e| store.sql_err(e);
    let mut policy = policy.clone();
    policy.rules.excluded_statuses = None;
    if let Some(t) = threshold
        && query.segment.is_empty()
        && policy.default_threshold.is_some()
    {
        policy.default_threshold = Some(t);
    }
    let label = segment_label(&query.segment);
    let (from, to) = (
        query.from.map_or(i64::MIN, ns),
        query.to.map_or(i64::MAX, ns),
    );

    // The knob's versions, in time order, the segment's at the new score.
    let mut knobs: Vec<Threshold> = {
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
            let (id, modified, score, segment, eff_from, eff_to, active, deleted) =
                row.map_err(err)?;
            let (Ok(modified_at), Ok(segment)) = (
                modified.parse::<Timestamp>(),
                serde_json::from_str::<BTreeMap<String, String>>(&segment),
            ) else {
                continue;
            };
            let score = match threshold {
                Some(t) if segment == query.segment => t,
                _ => score,
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
        knobs
    };

    // The segment's people (their attributes hold every pair of the segment), linked.
    let mut people: Vec<(PersonFacts, i64)> = Vec::new();
    {
        let mut sql = String::from(
            "SELECT map_lead_id, facts FROM persons WHERE map_lead_id IS NOT NULL AND facts IS NOT NULL",
        );
        let mut params: Vec<String> = Vec::new();
        for (k, v) in &query.segment {
            params.push(format!("$.attributes.\"{}\"", k.replace('"', "")));
            params.push(v.clone());
            sql.push_str(&format!(
                " AND lower(json_extract(facts, ?{})) = lower(?{})",
                params.len() - 1,
                params.len()
            ));
        }
        let mut stmt = conn.prepare(&sql).map_err(err)?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(params), |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(err)?;
        for row in rows {
            let (lead, facts) = row.map_err(err)?;
            if let Ok(facts) = serde_json::from_str::<PersonFacts>(&facts) {
                people.push((facts, lead));
            }
        }
    }
    // Asked of every stored change: a fast hash, not SipHash.
    let leads: HashSet<i64, std::hash::BuildHasherDefault<crate::engine::state::FxHasher>> =
        people.iter().map(|(_, lead)| *lead).collect();
    let accounts: HashSet<&str> = people
        .iter()
        .filter_map(|(f, _)| f.account_id.as_ref().map(|a| a.as_str()))
        .collect();
    let mut opportunities: Vec<Opportunity> = {
        let mut stmt = conn
            .prepare("SELECT account_id, body FROM opportunities")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(err)?;
        let mut opps = Vec::new();
        for row in rows {
            let (account, body) = row.map_err(err)?;
            if accounts.contains(account.as_str())
                && let Ok(o) = serde_json::from_str::<Opportunity>(&body)
            {
                opps.push(o);
            }
        }
        opps.sort_by_key(|o| o.created_at);
        opps
    };

    let mut engine = Engine {
        state: EngineState::new(),
        policy: &policy,
        now: Timestamp::MIN,
        label: &label,
        range: (from, to),
        zone: &settings.time_zone,
        mqls: Vec::new(),
    };
    // The first instant of the history: people and links are known from there.
    let start: Option<i64> = conn
        .query_row("SELECT min(at_ns) FROM score_history", [], |r| r.get(0))
        .map_err(err)?;
    let start = start.map_or(Timestamp::UNIX_EPOCH, at_ns);
    let mut knobs = knobs.drain(..).peekable();
    let mut opportunities = opportunities.drain(..).peekable();
    engine.catch_up(&mut knobs, &mut opportunities, start);
    let people_count = people.len();
    for (mut facts, lead) in people {
        facts.modified_at = start;
        let crm = facts.crm.clone();
        engine.apply(Event::Person(facts));
        engine.apply(Event::Link(MapLink {
            map_lead_id: lead,
            crm: Some(crm),
            at: start,
        }));
    }

    let mut score_changes = 0u64;
    let mut stmt = conn
        .prepare(
            "SELECT seq, change_id, map_lead_id, part, new_value, old_value, at_ns
             FROM score_history ORDER BY seq",
        )
        .map_err(err)?;
    let mut rows = stmt.query([]).map_err(err)?;
    while let Some(r) = rows.next().map_err(err)? {
        let lead: i64 = r.get(2).map_err(err)?;
        if !leads.contains(&lead) {
            continue;
        }
        let change_id: String = r.get(1).map_err(err)?;
        let part = match r.get_ref(3).map_err(err)?.as_str().unwrap_or("total") {
            "behavior" => ScorePart::Behavior,
            "demographic" => ScorePart::Demographic,
            _ => ScorePart::Total,
        };
        let at = at_ns(r.get(6).map_err(err)?);
        engine.catch_up(&mut knobs, &mut opportunities, at);
        let change = ScoreChange {
            map_lead_id: lead,
            part,
            new_value: r.get(4).map_err(err)?,
            old_value: r.get(5).map_err(err)?,
            campaign: None,
            at,
            change_id: String::new(),
        };
        score_changes += 1;
        let current = change_id.starts_with("current:");
        let change = ScoreChange {
            change_id,
            ..change
        };
        let event = if current {
            Event::CurrentScore(change)
        } else {
            Event::Score(change)
        };
        engine.apply(event);
    }
    if let Some(to) = query.to {
        engine.catch_up(&mut knobs, &mut opportunities, to);
    }
    Ok(Replayed {
        mqls: engine.mqls,
        score_changes,
        people: people_count,
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
    mqls: Vec<(String, String)>,
}

impl Engine<'_> {
    fn apply(&mut self, event: Event) {
        self.now = self.now.max(event.at());
        let ctx = Context {
            policy: self.policy,
            now: self.now,
            backfill: true,
            visibility: Visibility::AtDecision,
        };
        for d in reconcile(&mut self.state, &ctx, &event) {
            if let Action::OpenCycle { cycle } = &d.action {
                let at = ns(cycle.mql_at);
                if cycle.segment == self.label && at >= self.range.0 && at < self.range.1 {
                    self.mqls.push((
                        Period::Week.label(cycle.mql_at, self.zone),
                        cycle.crm.id.as_str().to_string(),
                    ));
                }
            }
        }
        // Nothing is saved: forget what a store would have written.
        let _ = self.state.take_dirty();
    }

    /// Applies the knob versions and opportunities up to `until`, in time order.
    fn catch_up(
        &mut self,
        knobs: &mut Peekable<impl Iterator<Item = Threshold>>,
        opportunities: &mut Peekable<impl Iterator<Item = Opportunity>>,
        until: Timestamp,
    ) {
        loop {
            let knob_at = knobs.peek().map(|k| k.modified_at);
            let opp_at = opportunities.peek().map(|o| o.created_at);
            match (knob_at, opp_at) {
                (Some(k), o) if k <= until && o.is_none_or(|o| k <= o) => {
                    let knob = knobs.next().expect("peeked");
                    self.apply(Event::Threshold(knob));
                }
                (_, Some(o)) if o <= until => {
                    let opp = opportunities.next().expect("peeked");
                    self.apply(Event::Opportunity(opp));
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
