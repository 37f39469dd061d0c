//! `mqlsync report`: the contract's "Metrics and feedback", computed from the store.
//!
//! Every figure comes from `cycle_facts` (one flat row per cycle, written with the cycle; see
//! `store/facts.rs`): one streamed pass over the cycles of the range aggregates every section
//! into maps keyed by its groups (`pass.rs`; two passes over halves of the people on two
//! connections when the store is a file), and one join from the opportunities gives the
//! pipeline. No table is loaded into memory. Periods are computed in the report's time zone,
//! business hours in each team's calendar (weekends and holidays excluded, as the SLA counts
//! them); `instant_ns`, a SQL function registered on the connection, reads the opportunities'
//! RFC 3339 instants. `whatif.rs` replays the score history; `feedback.rs` is the knob's
//! consequence the sync writes on threshold records; `render.rs` and `html.rs` print.
//!
//! The definitions, which the README repeats:
//! - an MQL is a cycle: a person MQL'd three times counts three times;
//! - the period and group of a cycle are those of its MQL; the owner is the cycle's owner now;
//! - time to SAL is business hours from when the rep could see the MQL (its record's first
//!   write; a backfilled cycle's historical MQL) to its SAL, in its team's calendar;
//! - an SLA is missed when the cycle went overdue, was reassigned (its first owner's miss), or
//!   was neither accepted nor closed by its due time; the share is over the cycles with an SLA
//!   whose outcome is known (acted upon, or past due), so an Open cycle still inside its SLA
//!   counts in neither;
//! - an MQL's pipeline is the opportunities of the person's account created from its MQL to
//!   `report.opportunity_window_days` after.

mod changes;
pub mod feedback;
pub mod html;
mod pass;
pub mod render;
pub mod whatif;

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;
use serde::Serialize;

use crate::engine::sla::BusinessCalendar;
use crate::mapping::LoadedMapping;
use crate::store::{Store, StoreError};

/// A `report` or `whatif` argument that cannot be used (`--group`, `--segment`, `--from`,
/// `--to`): the message names the flag and what it takes.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ArgumentError(pub String);

/// The periods a report counts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

impl Period {
    /// `day`, `week`, `month`, `quarter` or `year`, as the flag takes it.
    pub fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Quarter => "quarter",
            Period::Year => "year",
        }
    }

    /// The label of the period holding `at`, in `zone`: `2026-03-02`, `2026-W10` (ISO week),
    /// `2026-03`, `2026-Q1`, `2026`. Labels sort in time order.
    pub fn label(self, at: Timestamp, zone: &TimeZone) -> String {
        let date = at.to_zoned(zone.clone()).date();
        match self {
            Period::Day => date.to_string(),
            Period::Week => IsoWeek::of_date(date).label(),
            Period::Month => format!("{:04}-{:02}", date.year(), date.month()),
            Period::Quarter => format!("{:04}-Q{}", date.year(), (date.month() - 1) / 3 + 1),
            Period::Year => format!("{:04}", date.year()),
        }
    }
}

/// An ISO week: what `--by week` and what-if count by. Small and ordered, so a count keyed by
/// it makes no text until the label is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct IsoWeek {
    year: i16,
    week: i8,
}

impl IsoWeek {
    /// The week holding `at` in `zone`.
    pub(crate) fn of(at: Timestamp, zone: &TimeZone) -> IsoWeek {
        IsoWeek::of_date(zone.to_datetime(at).date())
    }

    fn of_date(date: jiff::civil::Date) -> IsoWeek {
        let week = date.iso_week_date();
        IsoWeek {
            year: week.year(),
            week: week.week(),
        }
    }

    /// `2026-W10`.
    pub(crate) fn label(self) -> String {
        format!("{:04}-W{:02}", self.year, self.week)
    }
}

/// What the volume table is broken down by (`--group`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Grouping {
    Owner,
    Team,
    Segment,
    Campaign,
    QualifiedBy,
    /// A mapped attribute of the person: `region`, `business-line` (`business_line`),
    /// `target-account`, or any other name of `[attributes]`.
    Attribute(String),
}

impl Grouping {
    /// Reads `--group`: the fixed names, else an attribute of the mapping (`-` and `_` alike).
    pub fn parse(text: &str, loaded: &LoadedMapping) -> Result<Grouping, ArgumentError> {
        let name = text.trim().to_ascii_lowercase().replace('-', "_");
        Ok(match name.as_str() {
            "owner" | "rep" => Grouping::Owner,
            "team" => Grouping::Team,
            "segment" => Grouping::Segment,
            "campaign" => Grouping::Campaign,
            "qualified_by" => Grouping::QualifiedBy,
            _ if loaded.mapping.attributes.contains_key(&name) => Grouping::Attribute(name),
            _ => {
                let attributes: Vec<&str> = loaded
                    .mapping
                    .attributes
                    .keys()
                    .map(String::as_str)
                    .collect();
                return Err(ArgumentError(format!(
                    "--group {text:?}: not owner, team, segment, campaign, qualified-by, nor an attribute of the mapping ({})",
                    attributes.join(", ")
                )));
            }
        })
    }

    pub fn name(&self) -> String {
        match self {
            Grouping::Owner => "owner".into(),
            Grouping::Team => "team".into(),
            Grouping::Segment => "segment".into(),
            Grouping::Campaign => "campaign".into(),
            Grouping::QualifiedBy => "qualified_by".into(),
            Grouping::Attribute(a) => a.clone(),
        }
    }

    /// The SQL expression of a cycle's group (none for an attribute: the pass reads it).
    fn sql(&self) -> &'static str {
        match self {
            Grouping::Owner => "coalesce(owner_id, '(none)')",
            Grouping::Team => "coalesce(team, '(none)')",
            Grouping::Segment => "segment",
            Grouping::Campaign => "coalesce(campaign_name, campaign_id, '(none)')",
            Grouping::QualifiedBy => "qualified_by",
            // Read from the attributes' JSON by the pass (`pass::Attributes`).
            Grouping::Attribute(_) => "NULL",
        }
    }
}

/// The key of an attribute in `cycle_facts.attributes` (a name's quotes dropped, as its
/// JSON path `$."name"` always did).
fn attribute_name(name: &str) -> String {
    name.replace('"', "")
}

/// How the mapping asks reports to count.
#[derive(Clone, Debug)]
pub struct Settings {
    pub time_zone: TimeZone,
    pub time_zone_name: String,
    pub checklist: Vec<String>,
    pub opportunity_window: SignedDuration,
    pub score_band: f64,
    /// The weeks the knob's feedback counts over.
    pub feedback_weeks: u32,
    /// Each team's business calendar, by team name.
    pub calendars: BTreeMap<String, BusinessCalendar>,
}

impl Settings {
    pub fn from_mapping(loaded: &LoadedMapping) -> Settings {
        Settings::new(&loaded.mapping, &loaded.policy)
    }

    /// [`Settings::from_mapping`] from the mapping and the policy built from it.
    pub fn new(mapping: &crate::mapping::Mapping, policy: &crate::engine::Policy) -> Settings {
        let report = &mapping.report;
        let name = report.time_zone.get_ref().clone();
        Settings {
            // Checked when the mapping was loaded.
            time_zone: TimeZone::get(&name).unwrap_or(TimeZone::UTC),
            time_zone_name: name,
            checklist: report
                .checklist
                .iter()
                .map(|f| f.get_ref().clone())
                .collect(),
            opportunity_window: SignedDuration::from_hours(
                24 * i64::from(report.opportunity_window_days),
            ),
            score_band: report.score_band,
            feedback_weeks: report.feedback_weeks,
            calendars: policy
                .teams
                .iter()
                .map(|t| (t.name.clone(), t.calendar.clone()))
                .collect(),
        }
    }
}

/// A `--from` or `--to` bound: an RFC 3339 instant as it is, or a day in the report's zone:
/// its start, or (`end`) the start of the next day, so that `--to` includes the day it names.
pub fn bound(
    flag: &str,
    text: &str,
    zone: &TimeZone,
    end: bool,
) -> Result<Timestamp, ArgumentError> {
    if let Ok(t) = text.parse::<Timestamp>() {
        return Ok(t);
    }
    let fail = |why: String| ArgumentError(format!("{flag} {text:?}: {why}"));
    let day = text.parse::<jiff::civil::Date>().map_err(|_| {
        fail("not a date (2026-03-01) or an RFC 3339 instant (2026-03-01T00:00:00Z)".into())
    })?;
    let day = if end {
        day.tomorrow().map_err(|e| fail(e.to_string()))?
    } else {
        day
    };
    day.to_zoned(zone.clone())
        .map(|z| z.timestamp())
        .map_err(|e| fail(e.to_string()))
}

/// What to report on.
#[derive(Clone, Debug)]
pub struct Query {
    /// MQLs at or after this instant (none: from the first).
    pub from: Option<Timestamp>,
    /// MQLs before this instant (none: up to now).
    pub to: Option<Timestamp>,
    pub by: Period,
    pub group: Grouping,
    /// The report's "now": Open cycles past due at this instant have missed their SLA.
    pub now: Timestamp,
}

impl Query {
    /// The query of `--from`, `--to`, `--by` and `--group` (the daemon's `/report` takes the
    /// same as parameters): days in the report's zone, `--to` included.
    pub fn parse(
        loaded: &LoadedMapping,
        settings: &Settings,
        from: Option<&str>,
        to: Option<&str>,
        by: Period,
        group: &str,
        now: Timestamp,
    ) -> Result<Query, ArgumentError> {
        Ok(Query {
            from: from
                .map(|d| bound("--from", d, &settings.time_zone, false))
                .transpose()?,
            to: to
                .map(|d| bound("--to", d, &settings.time_zone, true))
                .transpose()?,
            by,
            group: Grouping::parse(group, loaded)?,
            now,
        })
    }
}

/// The whole report, as `--format json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    pub now: Timestamp,
    pub by: Period,
    pub group: String,
    pub time_zone: String,
    pub totals: Totals,
    /// MQLs created, by period and group.
    pub volume: Vec<VolumeRow>,
    /// MQLs by how they qualified (score, go-live, account, hand-raiser rule).
    pub qualified_by: Vec<Count>,
    /// Each rep's cycles (by their owner now) by status, overdue ones, rejections and time
    /// to SAL.
    pub reps: Vec<RepRow>,
    /// SLA compliance by the rep each MQL went to first (whose SLA it was).
    pub sla_by_rep: Vec<SlaRow>,
    pub overdue_by_owner_region: Vec<OverdueRow>,
    pub rejected_by_reason: Vec<Count>,
    /// By period: SLA missed, converted and rejected shares.
    pub timeframes: Vec<TimeframeRow>,
    /// The campaign of the score change that crossed the threshold.
    pub campaigns: Vec<CampaignRow>,
    /// Score vs conversion and velocity, by band of the score at the MQL.
    pub score_bands: Vec<BandRow>,
    /// Pipeline vs threshold: cycles and their opportunities by the threshold in force.
    pub thresholds: Vec<ThresholdRow>,
    /// The knob's history over the period, for the volume chart.
    pub threshold_history: Vec<ThresholdStep>,
    /// Qualification-checklist completion by cycle status (absent: no checklist mapped).
    pub checklist: Option<Checklist>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Totals {
    pub mqls: i64,
    pub people: i64,
    pub open: i64,
    pub working: i64,
    pub rejected: i64,
    pub converted: i64,
    /// Cycles that reached SAL (accepted), whatever came after.
    pub accepted: i64,
    pub sla_known: i64,
    pub sla_missed: i64,
    pub pct_missed_sla: Option<f64>,
    pub pct_converted: Option<f64>,
    pub pct_rejected: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct VolumeRow {
    pub period: String,
    pub group: String,
    pub mqls: i64,
    pub people: i64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Count {
    pub key: String,
    pub count: i64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RepRow {
    pub owner: String,
    pub mqls: i64,
    pub open: i64,
    pub working: i64,
    pub rejected: i64,
    pub converted: i64,
    pub overdue: i64,
    pub pct_rejected: Option<f64>,
    pub accepted: i64,
    /// Mean business hours from seen to SAL, over the accepted cycles.
    pub avg_business_hours_to_sal: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SlaRow {
    /// The rep the MQL went to first.
    pub owner: String,
    /// MQLs with an SLA (a team's, not backfilled).
    pub with_sla: i64,
    /// Of those, the ones acted upon or past due.
    pub sla_known: i64,
    pub sla_met: i64,
    pub sla_missed: i64,
    pub pct_missed_sla: Option<f64>,
    /// Moved on to another rep for want of an answer.
    pub reassigned: i64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OverdueRow {
    pub owner: String,
    pub region: String,
    pub overdue: i64,
    pub mqls: i64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TimeframeRow {
    pub period: String,
    pub mqls: i64,
    pub sla_known: i64,
    pub sla_missed: i64,
    pub pct_missed_sla: Option<f64>,
    pub converted: i64,
    pub pct_converted: Option<f64>,
    pub rejected: i64,
    pub pct_rejected: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CampaignRow {
    pub campaign: String,
    pub mqls: i64,
    pub accepted: i64,
    pub converted: i64,
    pub pct_converted: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BandRow {
    /// The band is `[score_from, score_to)`.
    pub score_from: f64,
    pub score_to: f64,
    pub mqls: i64,
    pub accepted: i64,
    pub converted: i64,
    pub rejected: i64,
    pub pct_accepted: Option<f64>,
    pub pct_converted: Option<f64>,
    pub pct_rejected: Option<f64>,
    pub avg_business_hours_to_sal: Option<f64>,
    /// Mean days from MQL to the first opportunity, over the cycles that have one.
    pub avg_days_to_opportunity: Option<f64>,
    /// Mean days from MQL to converted, over the converted cycles.
    pub avg_days_to_converted: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ThresholdRow {
    pub segment: String,
    pub threshold: f64,
    pub mqls: i64,
    pub accepted: i64,
    pub converted: i64,
    pub pct_converted: Option<f64>,
    /// Cycles with at least one opportunity in their window.
    pub with_opportunity: i64,
    pub opportunities: i64,
    pub won: i64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ThresholdStep {
    pub threshold_id: String,
    pub segment: String,
    pub at: Timestamp,
    pub score: f64,
    /// Inactive or deleted from here on.
    pub off: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Checklist {
    pub fields: Vec<String>,
    pub by_status: Vec<ChecklistRow>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ChecklistRow {
    pub status: String,
    pub mqls: i64,
    /// Mean share of the checklist filled in, 0-100.
    pub pct_filled: Option<f64>,
    /// Cycles whose person filled in every field.
    pub complete: i64,
}

/// A share in percent, rounded to a tenth; none of nothing.
fn pct(part: i64, whole: i64) -> Option<f64> {
    (whole > 0).then(|| (1000.0 * part as f64 / whole as f64).round() / 10.0)
}

/// A mean rounded to two decimals.
fn round2(v: Option<f64>) -> Option<f64> {
    v.map(|v| (v * 100.0).round() / 100.0)
}

fn ns(t: Timestamp) -> i64 {
    i64::try_from(t.as_nanosecond()).unwrap_or(i64::MAX)
}

fn at_ns(ns: i64) -> Timestamp {
    Timestamp::from_nanosecond(i128::from(ns)).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Registers `instant_ns(text)` on `conn`: an RFC 3339 instant as nanoseconds (the
/// opportunities keep JSON bodies with text instants).
fn register(conn: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("instant_ns", 1, flags, |ctx| {
        let text: Option<String> = ctx.get(0)?;
        Ok(text.and_then(|t| t.parse::<Timestamp>().ok()).map(ns))
    })
}

/// Builds the report from the store.
pub fn build(store: &Store, settings: &Settings, query: &Query) -> Result<Report, StoreError> {
    let conn = store.connection();
    let err = |e| store.sql_err(e);
    let started = std::time::Instant::now();
    // On a store file: two passes over halves of the people and the pipeline join, on three
    // connections at once; in memory, one after the other on the one connection.
    let partial = if store.is_file() {
        let path = std::path::PathBuf::from(store.path());
        std::thread::scope(|scope| -> Result<pass::Partial, StoreError> {
            let reader =
                |work: fn(&Connection, &Settings, &Query) -> rusqlite::Result<pass::Partial>| {
                    let path = path.clone();
                    scope.spawn(move || -> Result<pass::Partial, StoreError> {
                        let store = Store::open_reader(&path)?;
                        let conn = store.connection();
                        register(conn)
                            .and_then(|()| work(conn, settings, query))
                            .map_err(|e| store.sql_err(e))
                    })
                };
            let second =
                reader(|conn, settings, query| pass::run(conn, settings, query, Some((1, 2))));
            let pipeline = reader(pass::pipeline);
            let mut mine = pass::run(conn, settings, query, Some((0, 2))).map_err(err)?;
            mine.merge(second.join().expect("report pass thread")?);
            mine.merge(pipeline.join().expect("report pipeline thread")?);
            Ok(mine)
        })?
    } else {
        register(conn).map_err(err)?;
        let mut all = pass::run(conn, settings, query, None).map_err(err)?;
        all.merge(pass::pipeline(conn, settings, query).map_err(err)?);
        all
    };
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        cycles = partial.mqls(),
        "report passes"
    );
    let sections = partial.sections(settings);
    let threshold_history = threshold_history(conn, query).map_err(err)?;
    Ok(Report {
        from: query.from,
        to: query.to,
        now: query.now,
        by: query.by,
        group: query.group.name(),
        time_zone: settings.time_zone_name.clone(),
        totals: sections.totals,
        volume: sections.volume,
        qualified_by: sections.qualified_by,
        reps: sections.reps,
        sla_by_rep: sections.sla_by_rep,
        overdue_by_owner_region: sections.overdue_by_owner_region,
        rejected_by_reason: sections.rejected_by_reason,
        timeframes: sections.timeframes,
        campaigns: sections.campaigns,
        score_bands: sections.score_bands,
        thresholds: sections.thresholds,
        threshold_history,
        checklist: sections.checklist,
    })
}

/// Every threshold version in force during the report's period: the last one before it
/// (where the knob stood when the period began) and the ones inside it.
fn threshold_history(conn: &Connection, query: &Query) -> rusqlite::Result<Vec<ThresholdStep>> {
    let mut stmt = conn.prepare(
        "SELECT threshold_id, modified_at, score, segment, active, deleted
         FROM threshold_versions ORDER BY threshold_id, modified_at",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, f64>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, bool>(4)?,
            r.get::<_, bool>(5)?,
        ))
    })?;
    let mut steps: Vec<ThresholdStep> = Vec::new();
    for row in rows {
        let (id, at, score, segment, active, deleted) = row?;
        let Ok(at) = at.parse::<Timestamp>() else {
            continue;
        };
        if query.to.is_some_and(|to| at >= to) {
            continue;
        }
        let step = ThresholdStep {
            threshold_id: id,
            segment: segment_label(&segment),
            at,
            score,
            off: !active || deleted,
        };
        // A version before the period replaces the one before it: only the last one
        // before the period matters.
        if let Some(from) = query.from
            && at < from
            && let Some(last) = steps.last_mut()
            && last.threshold_id == step.threshold_id
            && last.at < from
        {
            *last = step;
            continue;
        }
        steps.push(step);
    }
    steps.sort_by(|a, b| a.at.cmp(&b.at).then(a.threshold_id.cmp(&b.threshold_id)));
    Ok(steps)
}

/// A stored segment (JSON object of attribute = value) named as MQL records name it.
fn segment_label(stored: &str) -> String {
    serde_json::from_str::<BTreeMap<String, String>>(stored).map_or_else(
        |_| stored.to_string(),
        |map| crate::engine::model::segment_label(&map),
    )
}
