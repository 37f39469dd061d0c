//! `mqlsync backfill`: rebuilding the MQL cycles the process would have produced before
//! go-live. This file holds what the rebuild needs beyond a run: the threshold records as
//! they stood over time, reconstructed from the CRM's field history, so that the engine
//! replays every score change against the knob as it was then. Pure: no I/O.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};

use crate::engine::model::Threshold;
use crate::mapping::Mapping;
use crate::store::ThresholdFieldChange;
use crate::sync::records::{parse_datetime, segment_fields};

/// The versions of one threshold record over time, oldest first, from its current version
/// and its field history (one change row per field and save): each save of the record is a
/// version dated at that save; the first version (before the first recorded save, or the
/// only one without history) is dated when the record came to be: its `created` instant, or
/// `origin` (the start of the replay) when it was created earlier or is not known — never after
/// the first save. A field the history names but the
/// mapping does not use changes nothing; a value that cannot be read keeps the later one (and
/// is reported back, with its row, so the caller can say so).
pub fn threshold_versions<'a>(
    m: &Mapping,
    current: &Threshold,
    created: Option<Timestamp>,
    history: &'a [ThresholdFieldChange],
    origin: Timestamp,
    unreadable: &mut Vec<&'a ThresholdFieldChange>,
) -> Vec<Threshold> {
    // The saves, by instant: the rows of one save share it.
    let mut saves: BTreeMap<Timestamp, Vec<&ThresholdFieldChange>> = BTreeMap::new();
    for row in history.iter().filter(|r| r.threshold_id == current.id) {
        saves.entry(row.changed_at).or_default().push(row);
    }
    // Back from the current version: the values before each save, newest first.
    let mut versions = vec![current.clone()];
    for rows in saves.values().rev() {
        let mut before = versions.last().expect("one version").clone();
        for row in rows {
            if !undo(m, &mut before, row) {
                unreadable.push(row);
            }
        }
        versions.push(before);
    }
    versions.reverse();
    // Oldest first: before the first save (since `origin`), then what each save made; the
    // last is the current version, dated at the CRM's own modification.
    let start = created.map_or(origin, |c| c.max(origin));
    match saves.keys().next() {
        Some(first) => {
            versions[0].modified_at = start.min(*first - SignedDuration::from_millis(1));
            versions[0].set_by = None;
        }
        None => versions[0].modified_at = start.min(current.modified_at),
    }
    for (i, (at, rows)) in saves.iter().enumerate() {
        versions[i + 1].modified_at = *at;
        versions[i + 1].set_by = rows.first().and_then(|r| r.changed_by.clone());
    }
    if versions.len() > 1 {
        let last = versions.last_mut().expect("one version");
        last.modified_at = current.modified_at.max(last.modified_at);
        last.set_by.clone_from(&current.set_by);
    }
    versions
}

/// Puts back the value a field had before one change; `false` when the old value cannot be
/// read as that field.
fn undo(m: &Mapping, t: &mut Threshold, row: &ThresholdFieldChange) -> bool {
    let o = &m.crm.threshold;
    let old = row
        .old_value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty());
    if row.field == o.score {
        match old.map(str::parse::<f64>) {
            Some(Ok(score)) => t.score = score,
            _ => return false,
        }
    } else if row.field == o.effective_from || row.field == o.effective_to {
        let value = match old {
            None => None,
            Some(v) => match instant(v) {
                Some(at) => Some(at),
                None => return false,
            },
        };
        if row.field == o.effective_from {
            t.effective_from = value;
        } else {
            t.effective_to = value;
        }
    } else if row.field == o.active {
        match old.map(str::to_ascii_lowercase).as_deref() {
            Some("true") => t.active = true,
            Some("false") | None => t.active = false,
            Some(_) => return false,
        }
    } else if let Some((attribute, _)) = segment_fields(m)
        .into_iter()
        .find(|(_, field)| *field == row.field)
    {
        match old {
            Some(v) => t.segment.insert(attribute, v.to_string()),
            None => t.segment.remove(&attribute),
        };
    }
    true
}

/// A datetime, or a date taken as midnight UTC.
fn instant(text: &str) -> Option<Timestamp> {
    parse_datetime(text).or_else(|| {
        text.parse::<jiff::civil::Date>()
            .ok()
            .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
            .map(|z| z.timestamp())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn change(field: &str, old: Option<&str>, new: Option<&str>, at: &str) -> ThresholdFieldChange {
        ThresholdFieldChange {
            id: format!("hist-{field}-{at}"),
            threshold_id: "a0T1".into(),
            field: field.into(),
            old_value: old.map(str::to_string),
            new_value: new.map(str::to_string),
            changed_at: ts(at),
            changed_by: Some("005M".into()),
        }
    }

    fn current() -> Threshold {
        Threshold {
            id: "a0T1".into(),
            segment: BTreeMap::from([("region".to_string(), "EMEA".to_string())]),
            score: 55.0,
            effective_from: None,
            effective_to: None,
            active: true,
            set_by: Some("005M".into()),
            modified_at: ts("2026-11-02T12:00:00Z"),
            deleted: false,
        }
    }

    #[test]
    fn each_save_is_a_version_and_the_first_holds_the_old_values() {
        let m = mapping::load(None).unwrap().mapping;
        let history = [
            change(
                "Score_Threshold__c",
                Some("90"),
                Some("80"),
                "2026-03-01T09:00:00Z",
            ),
            change(
                "Region__c",
                Some("EU"),
                Some("EMEA"),
                "2026-03-01T09:00:00Z",
            ),
            change(
                "Score_Threshold__c",
                Some("80"),
                Some("55"),
                "2026-11-02T12:00:00Z",
            ),
        ];
        let mut bad = Vec::new();
        let origin = ts("2025-01-01T00:00:00Z");
        let v = threshold_versions(&m, &current(), None, &history, origin, &mut bad);
        assert!(bad.is_empty());
        let seen: Vec<(f64, &str, Timestamp)> = v
            .iter()
            .map(|t| (t.score, t.segment["region"].as_str(), t.modified_at))
            .collect();
        assert_eq!(
            seen,
            [
                (90.0, "EU", origin),
                (80.0, "EMEA", ts("2026-03-01T09:00:00Z")),
                (55.0, "EMEA", ts("2026-11-02T12:00:00Z")),
            ]
        );
    }

    #[test]
    fn without_history_the_current_version_holds_since_the_record_came_to_be() {
        let m = mapping::load(None).unwrap().mapping;
        let origin = ts("2025-01-01T00:00:00Z");
        let v = threshold_versions(&m, &current(), None, &[], origin, &mut Vec::new());
        let since_origin = Threshold {
            modified_at: origin,
            ..current()
        };
        assert_eq!(v, [since_origin]);
        // Created inside the replay: it did not exist before.
        let created = ts("2026-06-01T00:00:00Z");
        let v = threshold_versions(&m, &current(), Some(created), &[], origin, &mut Vec::new());
        assert_eq!(v[0].modified_at, created);
    }

    #[test]
    fn an_unreadable_old_value_is_reported_and_the_later_value_kept() {
        let m = mapping::load(None).unwrap().mapping;
        let history = [
            change(
                "Score_Threshold__c",
                Some("lots"),
                Some("55"),
                "2026-11-02T12:00:00Z",
            ),
            change(
                "Active__c",
                Some("false"),
                Some("true"),
                "2026-11-02T12:00:00Z",
            ),
        ];
        let mut bad = Vec::new();
        let v = threshold_versions(
            &m,
            &current(),
            None,
            &history,
            ts("2025-01-01T00:00:00Z"),
            &mut bad,
        );
        assert_eq!(bad.len(), 1);
        assert_eq!((v[0].score, v[0].active), (55.0, false));
    }
}
