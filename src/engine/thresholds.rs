//! Threshold resolution: which knob applies to a person at an instant.
//!
//! Among the records in force at `t` whose segment the person matches, the most specific
//! (most attributes matched) wins, then the latest `effective_from` (a record without one
//! counts as the earliest), then the latest modification, then the larger id so that the
//! answer never depends on iteration order. No match: the configured default, else none.

use std::collections::BTreeMap;

use jiff::Timestamp;

use super::model::Threshold;

/// The threshold a person gets.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub score: f64,
    /// `None` for the configured default.
    pub threshold_id: Option<String>,
    pub segment: String,
}

/// Whether a person with these attributes falls in the record's segment (values compared
/// case-insensitively, surrounding blanks ignored).
pub fn matches(threshold: &Threshold, attributes: &BTreeMap<String, String>) -> bool {
    threshold.segment.iter().all(|(key, value)| {
        attributes
            .get(key)
            .is_some_and(|a| a.trim().eq_ignore_ascii_case(value.trim()))
    })
}

/// The threshold for a person at `t`.
pub fn resolve<'a>(
    thresholds: impl IntoIterator<Item = &'a Threshold>,
    attributes: &BTreeMap<String, String>,
    t: Timestamp,
    default: Option<f64>,
) -> Option<Resolved> {
    thresholds
        .into_iter()
        .filter(|th| th.in_force_at(t) && matches(th, attributes))
        .max_by(|a, b| {
            (a.segment.len(), a.effective_from, a.modified_at, &a.id).cmp(&(
                b.segment.len(),
                b.effective_from,
                b.modified_at,
                &b.id,
            ))
        })
        .map(|th| Resolved {
            score: th.score,
            threshold_id: Some(th.id.clone()),
            segment: th.segment_label(),
        })
        .or_else(|| {
            default.map(|score| Resolved {
                score,
                threshold_id: None,
                segment: "default".to_string(),
            })
        })
}

/// Why a threshold record cannot be used, if it cannot.
pub fn problem(threshold: &Threshold) -> Option<String> {
    if let (Some(from), Some(to)) = (threshold.effective_from, threshold.effective_to)
        && to <= from
    {
        return Some(format!(
            "threshold {}: effective_to {to} is not after effective_from {from}; fix the record in the CRM",
            threshold.id
        ));
    }
    if !threshold.score.is_finite() || threshold.score < 0.0 {
        return Some(format!(
            "threshold {}: score {} is not a number of zero or more; fix the record in the CRM",
            threshold.id, threshold.score
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn th(id: &str, segment: &[(&str, &str)], score: f64) -> Threshold {
        Threshold {
            id: id.into(),
            segment: segment
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            score,
            effective_from: None,
            effective_to: None,
            active: true,
            set_by: None,
            modified_at: ts("2026-01-01T00:00:00Z"),
            deleted: false,
        }
    }

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn most_specific_match_wins() {
        let all = [
            th("default", &[], 100.0),
            th("emea", &[("region", "EMEA")], 80.0),
            th("emea-sdr", &[("region", "EMEA"), ("team", "SDR")], 70.0),
        ];
        let t = ts("2026-02-01T00:00:00Z");
        let r = resolve(
            &all,
            &attrs(&[("region", "emea"), ("team", "SDR")]),
            t,
            None,
        )
        .unwrap();
        assert_eq!(
            (r.score, r.threshold_id.as_deref()),
            (70.0, Some("emea-sdr"))
        );
        let r = resolve(&all, &attrs(&[("region", "EMEA"), ("team", "AE")]), t, None).unwrap();
        assert_eq!(r.threshold_id.as_deref(), Some("emea"));
        let r = resolve(&all, &attrs(&[("region", "NA")]), t, None).unwrap();
        assert_eq!(r.threshold_id.as_deref(), Some("default"));
    }

    #[test]
    fn then_latest_effective_from_then_latest_modification() {
        let mut old = th("old", &[("region", "NA")], 90.0);
        old.effective_from = Some(ts("2026-01-01T00:00:00Z"));
        let mut newer = th("newer", &[("region", "NA")], 60.0);
        newer.effective_from = Some(ts("2026-02-01T00:00:00Z"));
        let a = attrs(&[("region", "NA")]);
        let r = resolve([&old, &newer], &a, ts("2026-03-01T00:00:00Z"), None).unwrap();
        assert_eq!(r.score, 60.0);
        // Before the newer one starts, the old one holds.
        let r = resolve([&old, &newer], &a, ts("2026-01-15T00:00:00Z"), None).unwrap();
        assert_eq!(r.score, 90.0);
        // Same start: the later modification wins.
        let mut edited = old.clone();
        edited.id = "edited".into();
        edited.score = 75.0;
        edited.modified_at = ts("2026-01-05T00:00:00Z");
        let r = resolve([&old, &edited], &a, ts("2026-01-15T00:00:00Z"), None).unwrap();
        assert_eq!(r.score, 75.0);
    }

    #[test]
    fn a_scheduled_threshold_starts_exactly_at_its_start_and_ends_at_its_end() {
        let mut season = th("season", &[("region", "EMEA")], 60.0);
        season.effective_from = Some(ts("2026-12-01T00:00:00Z"));
        season.effective_to = Some(ts("2026-12-15T00:00:00Z"));
        let base = th("base", &[("region", "EMEA")], 80.0);
        let a = attrs(&[("region", "EMEA")]);
        let at = |s| resolve([&base, &season], &a, ts(s), None).unwrap().score;
        assert_eq!(at("2026-11-30T23:59:59Z"), 80.0);
        assert_eq!(at("2026-12-01T00:00:00Z"), 60.0);
        assert_eq!(at("2026-12-14T23:59:59Z"), 60.0);
        assert_eq!(at("2026-12-15T00:00:00Z"), 80.0);
    }

    #[test]
    fn inactive_and_deleted_records_do_not_apply_and_default_fills_in() {
        let mut off = th("off", &[], 10.0);
        off.active = false;
        let mut gone = th("gone", &[], 20.0);
        gone.deleted = true;
        let t = ts("2026-02-01T00:00:00Z");
        assert_eq!(resolve([&off, &gone], &attrs(&[]), t, None), None);
        let r = resolve([&off, &gone], &attrs(&[]), t, Some(55.0)).unwrap();
        assert_eq!((r.score, r.threshold_id), (55.0, None));
    }

    #[test]
    fn a_window_that_ends_before_it_starts_is_a_problem() {
        let mut bad = th("a0T1", &[], 50.0);
        bad.effective_from = Some(ts("2026-02-01T00:00:00Z"));
        bad.effective_to = Some(ts("2026-01-01T00:00:00Z"));
        let p = problem(&bad).unwrap();
        assert!(p.contains("a0T1") && p.contains("effective_to"), "{p}");
        assert_eq!(problem(&th("ok", &[], 50.0)), None);
    }
}
