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
        ScoreSource::Total => vec![(ScorePart::Total, m.map.total_score.clone())],
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
        .map(|(id, _)| id.clone())
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
