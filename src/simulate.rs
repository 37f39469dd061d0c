//! `mqlsync simulate`: replays a recorded history (CSV or JSONL) through the engine into a
//! fresh or given store, the offline "what happens if" tool that backfill and reports build
//! on. The whole file is read and checked before anything is written: a bad row is a
//! one-line error naming the file, line and field, and the store is left untouched.
//!
//! Each row is one event; `type` says which, `at` is when it happened (RFC 3339). The
//! columns (CSV header or JSON keys) each type reads are listed in [`FIELDS`] and in the
//! README. Rows are applied in file order, at the latest instant seen so far.
//!
//! A well-formed row can still change nothing: a `cycle` row naming an MQL record that does
//! not exist, or one older than a version of the record already applied. The engine
//! records those in the audit log; here each also becomes a [`Warning`] with its file and
//! line, so that a row never vanishes silently. A row replayed into the same store is a
//! version already seen, not an older one, and warns nothing.

use std::collections::BTreeMap;
use std::path::Path;

use jiff::Timestamp;
use jiff::civil::Date;

use crate::engine::model::{
    AccountFacts, Action, Campaign, CrmKind, CrmRef, Cycle, CycleEdit, CycleStatus, Decision,
    Event, MapActivity, MapLink, Opportunity, PersonFacts, Reason, ScoreChange, ScorePart, Stamps,
    Threshold,
};
use crate::engine::{Context, EngineState, Policy, Visibility, advance, reconcile};
use crate::store::{Batch, Store, StoreError};

/// Every column a history may have, with what reads it.
pub const FIELDS: &[(&str, &str)] = &[
    (
        "type",
        "all: threshold, person, opportunity, score, link, cycle",
    ),
    (
        "at",
        "all: when it happened, RFC 3339 (2026-03-02T10:00:00Z)",
    ),
    (
        "id",
        "threshold id, CRM id (person, link), account id (account), opportunity id, MQL external id (cycle)",
    ),
    ("kind", "person, link: Lead or Contact"),
    (
        "segment",
        "threshold: attribute=value pairs joined by ';' (empty: the default record)",
    ),
    ("score", "threshold: the knob"),
    ("effective_from", "threshold: RFC 3339, optional"),
    ("effective_to", "threshold: RFC 3339, optional"),
    ("active", "threshold: true/false (default true)"),
    ("deleted", "threshold: true/false (default false)"),
    ("set_by", "threshold: who set it"),
    (
        "status",
        "person: CRM status; cycle: Open, Working, Rejected, Converted; activity: the program status moved to",
    ),
    ("owner", "person, account, cycle: owner id"),
    ("title", "person"),
    ("account", "person, opportunity: account id"),
    ("converted", "person: true/false"),
    (
        "attributes",
        "person, account: attribute=value pairs joined by ';'",
    ),
    ("map_lead", "score, activity, link: MAP lead id (integer)"),
    (
        "activity_type",
        "activity: the MAP's activity type id (Fill Out Form 2, Change Status in Progression 104)",
    ),
    (
        "asset_id",
        "activity: the primary asset's id (form, program)",
    ),
    ("asset", "activity: the primary asset's name"),
    (
        "part",
        "score: total, behavior or demographic (default total)",
    ),
    ("value", "score: the new value"),
    ("old_value", "score: the value before, optional"),
    (
        "change_id",
        "score, activity: the MAP's id of the change or activity (default: file line)",
    ),
    ("campaign", "score, activity: campaign id"),
    ("campaign_name", "score, activity: campaign name"),
    ("closed", "opportunity: true/false"),
    ("won", "opportunity: true/false"),
    ("close_date", "opportunity: YYYY-MM-DD"),
    ("created_at", "opportunity: RFC 3339 (default: at)"),
    ("rejection_reason", "cycle"),
    ("by", "cycle: who changed it"),
];

/// A history row that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {field}: {message}")]
pub struct HistoryError {
    pub file: String,
    pub line: usize,
    pub field: String,
    pub message: String,
}

/// One parsed event and the line it came from.
#[derive(Clone, Debug)]
pub struct HistoryEvent {
    pub line: usize,
    pub event: Event,
}

/// A history file, read and checked: its name as given (for messages) and its events in
/// file order.
#[derive(Clone, Debug)]
pub struct History {
    pub file: String,
    pub events: Vec<HistoryEvent>,
}

type Row = BTreeMap<String, String>;

/// Reads a whole history file; the format follows the extension (`.csv`, `.jsonl`/`.ndjson`).
pub fn read_history(path: &Path) -> Result<History, HistoryError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| HistoryError {
        file: file.clone(),
        line: 0,
        field: "(file)".into(),
        message: format!("cannot read the history: {e}"),
    })?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let rows = match ext.as_str() {
        "csv" => csv_rows(&text, &file)?,
        "jsonl" | "ndjson" | "json" => jsonl_rows(&text, &file)?,
        _ => {
            return Err(HistoryError {
                file,
                line: 0,
                field: "(file)".into(),
                message: "the history must be a .csv or .jsonl file".into(),
            });
        }
    };
    let events = rows
        .into_iter()
        .map(|(line, row)| {
            to_event(&row, line)
                .map(|event| HistoryEvent { line, event })
                .map_err(|(field, message)| HistoryError {
                    file: file.clone(),
                    line,
                    field,
                    message,
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(History { file, events })
}

fn unknown(file: &str, line: usize, field: &str) -> HistoryError {
    HistoryError {
        file: file.to_string(),
        line,
        field: field.to_string(),
        message: "not a history column; see `mqlsync simulate --help` or the README".into(),
    }
}

fn csv_rows(text: &str, file: &str) -> Result<Vec<(usize, Row)>, HistoryError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|e| HistoryError {
        file: file.to_string(),
        line: 1,
        field: "(header)".into(),
        message: e.to_string(),
    })?;
    let headers: Vec<String> = headers.iter().map(str::to_string).collect();
    if let Some(h) = headers.iter().find(|h| !FIELDS.iter().any(|(f, _)| f == h)) {
        return Err(unknown(file, 1, h));
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| HistoryError {
            file: file.to_string(),
            line: e.position().map_or(0, |p| p.line() as usize),
            field: "(row)".into(),
            message: e.to_string(),
        })?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let row: Row = headers
            .iter()
            .zip(record.iter())
            .filter(|(_, v)| !v.is_empty())
            .map(|(h, v)| (h.clone(), v.to_string()))
            .collect();
        rows.push((line, row));
    }
    Ok(rows)
}

fn jsonl_rows(text: &str, file: &str) -> Result<Vec<(usize, Row)>, HistoryError> {
    let mut rows = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() || raw.trim_start().starts_with('#') {
            continue;
        }
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(raw)
            .map_err(|e| HistoryError {
                file: file.to_string(),
                line,
                field: "(row)".into(),
                message: format!("not a JSON object: {e}"),
            })?;
        let mut row = Row::new();
        for (k, v) in object {
            if !FIELDS.iter().any(|(f, _)| *f == k) {
                return Err(unknown(file, line, &k));
            }
            let text = match v {
                serde_json::Value::Null => continue,
                serde_json::Value::String(s) if s.is_empty() => continue,
                serde_json::Value::String(s) => s,
                serde_json::Value::Object(map) => map
                    .into_iter()
                    .map(|(k, v)| {
                        format!(
                            "{k}={}",
                            v.as_str().map_or_else(|| v.to_string(), str::to_string)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(";"),
                other => other.to_string(),
            };
            row.insert(k, text);
        }
        rows.push((line, row));
    }
    Ok(rows)
}

type FieldError = (String, String);

fn need<'a>(row: &'a Row, field: &str) -> Result<&'a str, FieldError> {
    row.get(field)
        .map(String::as_str)
        .ok_or_else(|| (field.to_string(), "required for this type".to_string()))
}

fn instant(row: &Row, field: &str) -> Result<Option<Timestamp>, FieldError> {
    row.get(field)
        .map(|v| {
            v.parse::<Timestamp>().map_err(|_| {
                (
                    field.to_string(),
                    format!("{v:?} is not an instant (RFC 3339, e.g. 2026-03-02T10:00:00Z)"),
                )
            })
        })
        .transpose()
}

fn number(row: &Row, field: &str) -> Result<Option<f64>, FieldError> {
    row.get(field)
        .map(|v| {
            v.parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .ok_or_else(|| (field.to_string(), format!("{v:?} is not a number")))
        })
        .transpose()
}

fn flag(row: &Row, field: &str, default: bool) -> Result<bool, FieldError> {
    match row.get(field).map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if v == "true" || v == "1" || v == "yes" => Ok(true),
        Some(v) if v == "false" || v == "0" || v == "no" => Ok(false),
        Some(v) => Err((field.to_string(), format!("{v:?} is not true or false"))),
    }
}

fn pairs(row: &Row, field: &str) -> Result<BTreeMap<String, String>, FieldError> {
    let mut out = BTreeMap::new();
    for pair in row
        .get(field)
        .map(String::as_str)
        .unwrap_or_default()
        .split(';')
        .filter(|p| !p.trim().is_empty())
    {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            (
                field.to_string(),
                format!("{pair:?} is not attribute=value"),
            )
        })?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

fn crm_kind(row: &Row) -> Result<CrmKind, FieldError> {
    match need(row, "kind")?.to_ascii_lowercase().as_str() {
        "lead" => Ok(CrmKind::Lead),
        "contact" => Ok(CrmKind::Contact),
        other => Err(("kind".into(), format!("{other:?}: use Lead or Contact"))),
    }
}

fn map_lead(row: &Row) -> Result<i64, FieldError> {
    let v = need(row, "map_lead")?;
    v.parse()
        .map_err(|_| ("map_lead".into(), format!("{v:?} is not an integer id")))
}

fn to_event(row: &Row, line: usize) -> Result<Event, FieldError> {
    let at = instant(row, "at")?.ok_or_else(|| ("at".to_string(), "required".to_string()))?;
    let kind = need(row, "type")?;
    let text = |f: &str| row.get(f).cloned();
    Ok(match kind {
        "threshold" => {
            let t = Threshold {
                id: need(row, "id")?.to_string(),
                segment: pairs(row, "segment")?,
                score: number(row, "score")?
                    .ok_or_else(|| ("score".to_string(), "required for this type".to_string()))?,
                effective_from: instant(row, "effective_from")?,
                effective_to: instant(row, "effective_to")?,
                active: flag(row, "active", true)?,
                set_by: text("set_by"),
                modified_at: at,
                deleted: flag(row, "deleted", false)?,
            };
            if let Some(problem) = crate::engine::thresholds::problem(&t) {
                let field = if problem.contains("effective_to") {
                    "effective_to"
                } else {
                    "score"
                };
                return Err((field.into(), problem));
            }
            Event::Threshold(t)
        }
        "person" => Event::Person(PersonFacts {
            crm: CrmRef {
                kind: crm_kind(row)?,
                id: need(row, "id")?.into(),
            },
            status: text("status").map(Into::into),
            owner_id: text("owner").map(Into::into),
            title: text("title").map(Into::into),
            account_id: text("account").map(Into::into),
            converted: flag(row, "converted", false)?,
            attributes: pairs(row, "attributes")?.into(),
            prior_mql_at: None,
            modified_at: at,
        }),
        "opportunity" => Event::Opportunity(Opportunity {
            id: need(row, "id")?.to_string(),
            account_id: need(row, "account")?.to_string(),
            is_closed: flag(row, "closed", false)?,
            is_won: flag(row, "won", false)?,
            close_date: row
                .get("close_date")
                .map(|v| {
                    v.parse::<Date>().map_err(|_| {
                        (
                            "close_date".to_string(),
                            format!("{v:?} is not a date (YYYY-MM-DD)"),
                        )
                    })
                })
                .transpose()?,
            created_at: instant(row, "created_at")?.unwrap_or(at),
            modified_at: at,
        }),
        "score" => Event::Score(ScoreChange {
            map_lead_id: map_lead(row)?,
            change_id: text("change_id").unwrap_or_else(|| format!("line-{line}")),
            part: match row.get("part").map(|p| p.to_ascii_lowercase()).as_deref() {
                None | Some("total") => ScorePart::Total,
                Some("behavior") | Some("behaviour") => ScorePart::Behavior,
                Some("demographic") => ScorePart::Demographic,
                Some(other) => {
                    return Err((
                        "part".into(),
                        format!("{other:?}: use total, behavior or demographic"),
                    ));
                }
            },
            new_value: number(row, "value")?
                .ok_or_else(|| ("value".to_string(), "required for this type".to_string()))?,
            old_value: number(row, "old_value")?,
            campaign: text("campaign").map(|id| Campaign {
                id: id.into(),
                name: text("campaign_name").map(Into::into),
            }),
            at,
        }),
        "activity" => Event::Activity(MapActivity {
            map_lead_id: map_lead(row)?,
            activity_id: text("change_id")
                .unwrap_or_else(|| format!("line-{line}"))
                .into(),
            type_id: {
                let v = need(row, "activity_type")?;
                v.parse().map_err(|_| {
                    (
                        "activity_type".to_string(),
                        format!("{v:?} is not an activity type id (a positive integer)"),
                    )
                })?
            },
            asset_id: text("asset_id").map(Into::into),
            asset_name: text("asset").map(Into::into),
            status: text("status").map(Into::into),
            campaign: text("campaign").map(|id| Campaign {
                id: id.into(),
                name: text("campaign_name").map(Into::into),
            }),
            at,
        }),
        "account" => Event::Account(AccountFacts {
            id: need(row, "id")?.into(),
            owner_id: text("owner").map(Into::into),
            attributes: pairs(row, "attributes")?.into(),
            modified_at: at,
        }),
        "link" => Event::Link(MapLink {
            map_lead_id: map_lead(row)?,
            crm: match row.get("id") {
                Some(id) => Some(CrmRef {
                    kind: crm_kind(row)?,
                    id: id.as_str().into(),
                }),
                None => None,
            },
            at,
        }),
        "cycle" => Event::CycleEdit(CycleEdit {
            external_id: need(row, "id")?.to_string(),
            status: CycleStatus::parse(need(row, "status")?).ok_or_else(|| {
                (
                    "status".to_string(),
                    "use Open, Working, Rejected or Converted".to_string(),
                )
            })?,
            rejection_reason: text("rejection_reason"),
            owner_id: text("owner"),
            modified_at: at,
            modified_by: text("by"),
        }),
        other => {
            return Err((
                "type".into(),
                format!(
                    "{other:?}: use threshold, person, account, opportunity, score, activity, link or cycle"
                ),
            ));
        }
    })
}

/// What a simulation did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Summary {
    pub events: usize,
    pub decisions: BTreeMap<String, usize>,
    pub cycles_opened: usize,
    /// Every cycle in the store after the run.
    pub cycles: Vec<Cycle>,
    /// Every lead and contact in the store after the run, by CRM id, with the stamps mqlsync
    /// keeps on it (what a sync would write onto the record).
    pub persons: Vec<PersonStamps>,
    /// The rows that were read but ignored, in file order.
    pub warnings: Vec<Warning>,
}

/// A lead or contact's stamps: status, original and most recent MQL and SAL dates, MQL count.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PersonStamps {
    pub crm_id: String,
    #[serde(flatten)]
    pub stamps: Stamps,
}

/// A row that was read but changed nothing, and why: `file:line: type: message`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Warning {
    pub file: String,
    pub line: usize,
    /// What happened to the row, starting with its type (`cycle: ...; row ignored`).
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// The warning for a decision that ignored its row, if it is one.
fn ignored_row(reason: &Reason) -> Option<String> {
    match reason {
        Reason::EditUnknownCycle { external_id, .. } => Some(format!(
            "cycle: MQL record {external_id} does not exist; row ignored"
        )),
        Reason::EditStale {
            external_id,
            edited_at,
            applied_at: Some(applied_at),
            ..
        } => Some(format!(
            "cycle: row at {edited_at} is older than the one already applied at {applied_at} for {external_id}; row ignored"
        )),
        Reason::EditStale {
            external_id,
            edited_at,
            applied_at: None,
            mql_at,
        } => Some(format!(
            "cycle: row at {edited_at} is older than MQL record {external_id} itself (MQL at {mql_at}); row ignored"
        )),
        _ => None,
    }
}

/// Replays a history into `store` in batches of `batch_size`, then lets time run to `until`,
/// holding the store's writer lock (a sync on the same store is refused meanwhile).
pub fn run(
    history: &History,
    policy: &Policy,
    store: &mut Store,
    cursor: &str,
    until: Option<Timestamp>,
    batch_size: usize,
) -> Result<Summary, StoreError> {
    let _writer = store.lock_writer()?;
    let mut state: EngineState = store.load_engine(policy)?;
    let events = &history.events;
    let mut summary = Summary {
        events: events.len(),
        ..Summary::default()
    };
    let mut now = state.meta.clock.unwrap_or(Timestamp::UNIX_EPOCH);
    let count = |decisions: &[Decision], summary: &mut Summary| {
        for d in decisions {
            let name = d.action.name();
            *summary.decisions.entry(name.to_string()).or_default() += 1;
            if matches!(d.action, Action::OpenCycle { .. }) {
                summary.cycles_opened += 1;
            }
        }
    };
    for chunk in events.chunks(batch_size.max(1)) {
        let mut decisions = Vec::new();
        let mut batch_events = Vec::with_capacity(chunk.len());
        for h in chunk {
            now = now.max(h.event.at());
            let ctx = Context {
                policy,
                now,
                backfill: false,
                visibility: Visibility::AtDecision,
            };
            let from = decisions.len();
            decisions.extend(reconcile(&mut state, &ctx, &h.event));
            summary.warnings.extend(
                decisions[from..]
                    .iter()
                    .filter_map(|d| ignored_row(&d.reason))
                    .map(|message| Warning {
                        file: history.file.clone(),
                        line: h.line,
                        message,
                    }),
            );
            batch_events.push(h.event.clone());
        }
        count(&decisions, &mut summary);
        let last = chunk.last().map_or(0, |h| h.line);
        let cursors = [(cursor.to_string(), last.to_string())];
        store.commit_batch(
            Batch {
                events: &batch_events,
                decisions: &decisions,
                cursors: &cursors,
                seen_at: now,
            },
            &mut state,
        )?;
    }
    if let Some(until) = until.filter(|u| *u > now) {
        let ctx = Context {
            policy,
            now: until,
            backfill: false,
            visibility: Visibility::AtDecision,
        };
        let decisions = advance(&mut state, &ctx);
        count(&decisions, &mut summary);
        store.commit_batch(
            Batch {
                events: &[],
                decisions: &decisions,
                cursors: &[],
                seen_at: until,
            },
            &mut state,
        )?;
    }
    store.save_scores(&mut state)?;
    summary.cycles = store.cycles()?;
    summary.persons = state
        .persons
        .iter()
        .map(|(id, person)| PersonStamps {
            crm_id: id.to_string(),
            stamps: Stamps::clone(&person.stamps),
        })
        .collect();
    summary.persons.sort_by(|a, b| a.crm_id.cmp(&b.crm_id));
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JSONL history with a comment and a blank line, so that lines are not row numbers.
    const JSONL: &str = r#"# one lead, its MQL, a rep's edits in the wrong order and one of no record
{"type":"person","at":"2026-03-02T09:00:00Z","id":"00QA","kind":"Lead","status":"Open","attributes":{"region":"NA"}}
{"type":"link","at":"2026-03-02T09:00:00Z","id":"00QA","kind":"Lead","map_lead":1}

{"type":"score","at":"2026-03-02T10:00:00Z","map_lead":1,"value":150}
{"type":"cycle","at":"2026-03-02T12:00:00Z","id":"00QA-1","status":"Working"}
{"type":"cycle","at":"2026-03-02T11:00:00Z","id":"00QA-1","status":"Rejected","rejection_reason":"Bad Timing"}
{"type":"cycle","at":"2026-03-02T13:00:00Z","id":"00QB-1","status":"Working"}
"#;

    fn history(dir: &Path) -> History {
        let path = dir.join("h.jsonl");
        std::fs::write(&path, JSONL).unwrap();
        read_history(&path).unwrap()
    }

    #[test]
    fn ignored_rows_are_warned_with_their_line_and_a_replay_warns_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let history = history(dir.path());
        let policy = Policy::example();
        let mut store = Store::open_in_memory().unwrap();
        let summary = run(&history, &policy, &mut store, "simulate:h", None, 2).unwrap();
        let said: Vec<String> = summary.warnings.iter().map(|w| w.to_string()).collect();
        let file = &history.file;
        assert_eq!(
            said,
            [
                format!(
                    "{file}:7: cycle: row at 2026-03-02T11:00:00Z is older than the one already applied at 2026-03-02T12:00:00Z for 00QA-1; row ignored"
                ),
                format!("{file}:8: cycle: MQL record 00QB-1 does not exist; row ignored"),
            ]
        );
        let again = run(&history, &policy, &mut store, "simulate:h", None, 2).unwrap();
        assert_eq!(again.warnings, []);
        assert_eq!(again.decisions, BTreeMap::new());
    }

    #[test]
    fn the_summary_lists_every_person_with_its_stamps() {
        let dir = tempfile::tempdir().unwrap();
        let history = history(dir.path());
        let mut store = Store::open_in_memory().unwrap();
        let summary = run(&history, &Policy::example(), &mut store, "h", None, 100).unwrap();
        let at = |s: &str| Some(s.parse::<Timestamp>().unwrap());
        assert_eq!(
            summary.persons,
            [PersonStamps {
                crm_id: "00QA".into(),
                stamps: Stamps {
                    status: Some("Sales Accepted".into()),
                    mql_recent: at("2026-03-02T10:00:00Z"),
                    mql_original: at("2026-03-02T10:00:00Z"),
                    sal_recent: at("2026-03-02T12:00:00Z"),
                    sal_original: at("2026-03-02T12:00:00Z"),
                    mql_count: 1,
                },
            }]
        );
        let json = serde_json::to_value(&summary.persons[0]).unwrap();
        assert_eq!(json["crm_id"], "00QA");
        assert_eq!(json["mql_count"], 1);
        assert_eq!(json["sal_original"], "2026-03-02T12:00:00Z");
    }
}
