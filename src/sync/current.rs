//! The current score of every MAP lead linked to a CRM person, read from the MAP's lead
//! records: what a first run (and `run --once --full`) needs so that people whose score last
//! changed before the activity look-back are known, and a knob turn reaches all of them.
//!
//! The people come from the CRM (the run has just read every lead and contact), and their MAP
//! leads are asked for by `sfdcLeadId` / `sfdcContactId`, 300 ids a call, with the fields the
//! score source reads: MAP leads linked to nobody cannot become MQLs and are not read. Pure:
//! this file builds the requests' id lists and turns lead rows into engine events; the run
//! makes the calls and commits.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::CurrentScoreRead;
use crate::engine::EngineState;
use crate::engine::model::{CrmKind, Event, ScoreChange, ScorePart};
use crate::engine::policy::ScoreSource;
use crate::mapping::Mapping;

use super::records::{self, RecordError};

/// Ids a leads-by-filter call takes.
pub const IDS_A_CALL: usize = 300;

/// Where the store keeps the read's progress.
pub const CURSOR: &str = "map.current_scores";

/// How far the current-score read got: the last CRM id asked for, per kind, and whether the
/// read is complete (`read_at`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    #[serde(default)]
    pub lead_after: Option<String>,
    #[serde(default)]
    pub contact_after: Option<String>,
    /// When the last complete read ended; `None` while one is under way (or before any).
    #[serde(default)]
    pub read_at: Option<Timestamp>,
    /// A read by bulk lead extract: the first window not yet committed.
    #[serde(default)]
    pub bulk_window: Option<usize>,
}

impl Progress {
    pub fn after(&self, kind: CrmKind) -> Option<&str> {
        match kind {
            CrmKind::Lead => self.lead_after.as_deref(),
            CrmKind::Contact => self.contact_after.as_deref(),
        }
    }

    pub fn set_after(&mut self, kind: CrmKind, id: &str) {
        let slot = match kind {
            CrmKind::Lead => &mut self.lead_after,
            CrmKind::Contact => &mut self.contact_after,
        };
        *slot = Some(id.to_string());
    }
}

/// The fewest calls a bulk lead extract takes per 31-day window: create, enqueue, one status,
/// one download.
pub const BULK_CALLS_A_WINDOW: u64 = 4;

/// How a current-score read goes, and what each way would cost.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReadChoice {
    /// `Some(since)`: by bulk lead extract from `since`; `None`: by filter.
    pub bulk_since: Option<Timestamp>,
    /// Calls by filter: one per 300 people of each kind.
    pub by_filter_calls: u64,
    /// Fewest calls by bulk extract (`None` without `leads_since`): one list, then
    /// [`BULK_CALLS_A_WINDOW`] per 31-day window since the instance's oldest lead.
    pub bulk_calls: Option<u64>,
    pub why: &'static str,
}

/// Chooses how to read the current scores of `leads` CRM leads and `contacts` contacts: a
/// read under way goes on the way it started; otherwise the setting, and under `auto` the way
/// with fewer calls (by filter on a tie: it is quicker, with no export queue to wait on).
pub fn choose(
    setting: CurrentScoreRead,
    leads_since: Option<Timestamp>,
    now: Timestamp,
    leads: usize,
    contacts: usize,
    progress: &Progress,
) -> ReadChoice {
    let by_filter_calls = (leads.div_ceil(IDS_A_CALL) + contacts.div_ceil(IDS_A_CALL)) as u64;
    let bulk_calls = leads_since.filter(|s| *s < now).map(|since| {
        let windows = crate::connectors::marketo::extract::windows(since, now).len() as u64;
        1 + BULK_CALLS_A_WINDOW * windows
    });
    let bulk_since = leads_since.filter(|s| *s < now);
    let (bulk, why) = if progress.bulk_window.is_some() {
        (bulk_since.is_some(), "continuing a bulk read")
    } else if progress.lead_after.is_some() || progress.contact_after.is_some() {
        (false, "continuing a read by filter")
    } else {
        match setting {
            CurrentScoreRead::ByFilter => (false, "sync.current_scores = \"by_filter\""),
            CurrentScoreRead::Bulk => (bulk_since.is_some(), "sync.current_scores = \"bulk\""),
            CurrentScoreRead::Auto => match bulk_calls {
                None => (false, "no sync.leads_since: a bulk lead extract needs it"),
                Some(b) if b < by_filter_calls => (true, "fewer calls by bulk extract"),
                Some(_) => (false, "fewer calls by filter"),
            },
        }
    };
    ReadChoice {
        bulk_since: if bulk { bulk_since } else { None },
        by_filter_calls,
        bulk_calls,
        why,
    }
}

/// A lead row of a bulk export (every value a string or null) as the REST API gives it:
/// `id` a number.
pub fn export_row(mut lead: crate::connectors::Record) -> Value {
    if let Some(id) = lead
        .get("id")
        .and_then(Value::as_str)
        .and_then(|s| s.trim().parse::<i64>().ok())
    {
        lead.insert("id".into(), Value::from(id));
    }
    Value::Object(lead)
}

/// Whether a MAP lead row names a CRM person the engine knows (a bulk export holds every lead
/// of the instance; only those linked to someone can become MQLs). A row without `id` is kept,
/// for the caller to fail.
pub fn linked_to_known(m: &Mapping, state: &EngineState, row: &Value) -> bool {
    if row.get("id").and_then(Value::as_i64).is_none() {
        return true;
    }
    [&m.map.crm_lead_id, &m.map.crm_contact_id]
        .into_iter()
        .filter_map(|f| row.get(f.as_str()).and_then(Value::as_str))
        .any(|id| state.persons.get(id).is_some_and(|p| p.facts.is_some()))
}

/// The MAP lead field a person of `kind` is found by.
pub fn filter_field(m: &Mapping, kind: CrmKind) -> &str {
    match kind {
        CrmKind::Lead => &m.map.crm_lead_id,
        CrmKind::Contact => &m.map.crm_contact_id,
    }
}

/// The score fields the source reads, with the part each is.
pub fn score_fields(m: &Mapping, source: &ScoreSource) -> Vec<(ScorePart, String)> {
    match source {
        ScoreSource::Total | ScoreSource::Account { .. } => {
            vec![(ScorePart::Total, m.map.total_score.clone())]
        }
        _ => [
            (ScorePart::Behavior, m.map.behavior_score.clone()),
            (ScorePart::Demographic, m.map.demographic_score.clone()),
        ]
        .into_iter()
        .filter_map(|(part, field)| field.map(|f| (part, f)))
        .collect(),
    }
}

/// The lead fields each call asks for.
pub fn lead_fields(m: &Mapping, source: &ScoreSource, take: Take) -> Vec<String> {
    let mut fields = vec![
        "id".to_string(),
        m.map.crm_lead_id.clone(),
        m.map.crm_contact_id.clone(),
        "updatedAt".to_string(),
    ];
    if take == Take::LinksAndScores {
        fields.extend(score_fields(m, source).into_iter().map(|(_, f)| f));
    }
    fields
}

/// The CRM ids of the people of `kind` the engine knows from the CRM, after `after`, sorted.
pub fn people(state: &EngineState, kind: CrmKind, after: Option<&str>) -> Vec<String> {
    let mut ids: Vec<String> = state
        .persons
        .iter()
        .filter(|(id, p)| {
            p.facts.as_ref().is_some_and(|f| f.crm.kind == kind)
                && after.is_none_or(|a| id.as_str() > a)
        })
        .map(|(id, _)| id.to_string())
        .collect();
    ids.sort_unstable();
    ids
}

/// What a read of the linked MAP leads takes from each row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// The link and the current score: a first run, `--full`.
    LinksAndScores,
    /// The link only: a backfill, which replays the scores' history instead.
    Links,
}

impl Take {
    /// What the read is of, for the log and the run summary.
    pub fn what(self) -> &'static str {
        match self {
            Take::LinksAndScores => "current scores",
            Take::Links => "MAP lead links",
        }
    }
}

/// One call's lead rows as events: each lead's link when the engine does not hold it yet
/// (first, oldest first, so that the latest of several MAP leads of one person speaks for it),
/// then (with [`Take::LinksAndScores`]) the current value of each score field at `at`. A row without `id` is the caller's
/// to fail the call for (`Err` with field `id`); another unreadable row fails alone.
pub fn events(
    m: &Mapping,
    source: &ScoreSource,
    state: &EngineState,
    rows: &[Value],
    at: Timestamp,
    take: Take,
    unreadable: &mut Vec<RecordError>,
) -> Result<Vec<Event>, RecordError> {
    let mut links = Vec::new();
    let mut scores = Vec::new();
    let fields = match take {
        Take::LinksAndScores => score_fields(m, source),
        Take::Links => Vec::new(),
    };
    for row in rows {
        let link = match records::link(m, row) {
            Ok(link) => link,
            Err(e) if e.field == "id" => return Err(e),
            Err(e) => {
                unreadable.push(e);
                continue;
            }
        };
        let known = state
            .map_leads
            .get(&link.map_lead_id)
            .is_some_and(|l| l.crm == link.crm);
        for (part, field) in &fields {
            let Some(value) = row.get(field).and_then(as_number) else {
                continue;
            };
            // One id per lead, part and read: the store keeps every change id once.
            scores.push(Event::CurrentScore(ScoreChange {
                map_lead_id: link.map_lead_id,
                change_id: format!("current:{}:{}:{at}", link.map_lead_id, part_label(*part)),
                part: *part,
                new_value: value,
                old_value: None,
                campaign: None,
                at,
            }));
        }
        if !known {
            links.push(link);
        }
    }
    links.sort_by_key(|l| l.at);
    let mut out: Vec<Event> = links.into_iter().map(Event::Link).collect();
    out.extend(scores);
    Ok(out)
}

fn part_label(part: ScorePart) -> &'static str {
    match part {
        ScorePart::Total => "total",
        ScorePart::Behavior => "behavior",
        ScorePart::Demographic => "demographic",
    }
}

fn as_number(v: &Value) -> Option<f64> {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn auto_takes_the_way_with_fewer_calls_and_a_read_under_way_keeps_its_way() {
        let now = at("2026-11-01T00:00:00Z");
        let ten_years = Some(at("2016-11-01T00:00:00Z"));
        let fresh = Progress::default();
        // 3,000 people: 10 calls by filter against 1 + 4 x 118 windows.
        let small = choose(CurrentScoreRead::Auto, ten_years, now, 1_800, 1_200, &fresh);
        assert_eq!((small.bulk_since, small.by_filter_calls), (None, 10));
        assert_eq!(small.bulk_calls, Some(1 + 4 * 118));
        // 1,000,000 people: 3,334 calls by filter.
        let large = choose(
            CurrentScoreRead::Auto,
            ten_years,
            now,
            600_000,
            400_000,
            &fresh,
        );
        assert_eq!(large.bulk_since, ten_years);
        assert_eq!(large.by_filter_calls, 2_000 + 1_334);
        // Without the instance's start there is no bulk way.
        let unknown = choose(CurrentScoreRead::Auto, None, now, 600_000, 400_000, &fresh);
        assert_eq!((unknown.bulk_since, unknown.bulk_calls), (None, None));
        // The settings force a way; a read under way goes on as it started.
        let forced = choose(CurrentScoreRead::Bulk, ten_years, now, 10, 0, &fresh);
        assert_eq!(forced.bulk_since, ten_years);
        let by_filter = choose(
            CurrentScoreRead::ByFilter,
            ten_years,
            now,
            600_000,
            0,
            &fresh,
        );
        assert_eq!(by_filter.bulk_since, None);
        let under_way = Progress {
            lead_after: Some("00Q1".into()),
            ..Progress::default()
        };
        let going_on = choose(
            CurrentScoreRead::Auto,
            ten_years,
            now,
            600_000,
            0,
            &under_way,
        );
        assert_eq!(going_on.bulk_since, None);
        let bulk_under_way = Progress {
            bulk_window: Some(3),
            ..Progress::default()
        };
        let going_on = choose(
            CurrentScoreRead::ByFilter,
            ten_years,
            now,
            10,
            0,
            &bulk_under_way,
        );
        assert_eq!(going_on.bulk_since, ten_years);
    }

    #[test]
    fn an_export_row_has_a_numeric_id_and_only_rows_of_known_people_are_kept() {
        let m = crate::mapping::load(None).unwrap().mapping;
        let mut lead = crate::connectors::Record::new();
        lead.insert("id".into(), Value::from("42"));
        lead.insert(m.map.crm_lead_id.clone(), Value::from("00Q000000000001"));
        let row = export_row(lead);
        assert_eq!(row["id"], Value::from(42));
        let state = EngineState::default();
        assert!(!linked_to_known(&m, &state, &row), "nobody is known");
        let keyless = export_row(crate::connectors::Record::new());
        assert!(
            linked_to_known(&m, &state, &keyless),
            "kept, for the caller to fail"
        );
    }
}
