//! Threshold resolution: which knob applies to a person at an instant.
//!
//! Among the records in force at `t` whose segment the person matches, the most specific
//! (most attributes matched) wins, then the latest `effective_from` (a record without one
//! counts as the earliest), then the latest modification, then the larger id so that the
//! answer never depends on iteration order. No match: the configured default, else none.

use std::sync::Arc;

use jiff::Timestamp;

use super::model::{Attributes, Threshold};

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
pub fn matches(threshold: &Threshold, attributes: &Attributes) -> bool {
    threshold.segment.iter().all(|(key, value)| {
        attributes
            .get(key)
            .is_some_and(|a| a.trim().eq_ignore_ascii_case(value.trim()))
    })
}

/// The threshold for a person at `t` (records with a [`problem`] never apply).
pub fn resolve<'a>(
    thresholds: impl IntoIterator<Item = &'a Threshold>,
    attributes: &Attributes,
    t: Timestamp,
    default: Option<f64>,
) -> Option<Resolved> {
    Resolver::new(thresholds, default)
        .resolve(attributes, t)
        .map(|r| Resolved::clone(&r))
}

/// A set of threshold records compiled for resolution, for as long as the set is unchanged:
/// records in order of precedence, best first, so the first one in force that the person
/// matches wins; segment values trimmed and lower-cased once; each record's [`Resolved`]
/// built once and shared by everyone it applies to. Resolving then costs a look-up of each
/// segment field in the person's attributes and a few comparisons per record, where
/// matching every record afresh cost some 20,000 instructions per person.
#[derive(Clone, Debug)]
pub struct Resolver {
    /// The attribute names any segment uses, sorted.
    fields: Vec<String>,
    candidates: Vec<Candidate>,
    default: Option<Arc<Resolved>>,
}

#[derive(Clone, Debug)]
struct Candidate {
    /// (index into `fields`, the value trimmed and lower-cased).
    segment: Vec<(usize, String)>,
    effective_from: Option<Timestamp>,
    effective_to: Option<Timestamp>,
    resolved: Arc<Resolved>,
}

/// Segment fields a person's values are looked up for on the stack; more spill to the heap.
const STACK_FIELDS: usize = 8;

impl Resolver {
    /// Compiles the records that can apply (active, not deleted, no [`problem`]) and the
    /// configured default.
    pub fn new<'a>(
        thresholds: impl IntoIterator<Item = &'a Threshold>,
        default: Option<f64>,
    ) -> Self {
        let mut usable: Vec<&Threshold> = thresholds
            .into_iter()
            .filter(|t| t.active && !t.deleted && problem(t).is_none())
            .collect();
        // Best first: most specific, then latest start (none counts as earliest), then
        // latest modification, then the larger id.
        usable.sort_by(|a, b| {
            (b.segment.len(), b.effective_from, b.modified_at, &b.id).cmp(&(
                a.segment.len(),
                a.effective_from,
                a.modified_at,
                &a.id,
            ))
        });
        let mut fields: Vec<String> = usable
            .iter()
            .flat_map(|t| t.segment.keys().cloned())
            .collect();
        fields.sort_unstable();
        fields.dedup();
        let candidates = usable
            .into_iter()
            .map(|t| Candidate {
                segment: t
                    .segment
                    .iter()
                    .map(|(key, value)| {
                        let field = fields.binary_search(key).expect("collected above");
                        (field, value.trim().to_ascii_lowercase())
                    })
                    .collect(),
                effective_from: t.effective_from,
                effective_to: t.effective_to,
                resolved: Arc::new(Resolved {
                    score: t.score,
                    threshold_id: Some(t.id.clone()),
                    segment: t.segment_label(),
                }),
            })
            .collect();
        Resolver {
            fields,
            candidates,
            default: default.map(|score| {
                Arc::new(Resolved {
                    score,
                    threshold_id: None,
                    segment: "default".to_string(),
                })
            }),
        }
    }

    /// Whether this resolver was compiled with `default` as the configured default.
    pub fn has_default(&self, default: Option<f64>) -> bool {
        self.default.as_ref().map(|d| d.score.to_bits()) == default.map(f64::to_bits)
    }

    /// The threshold for a person with these attributes at `t`.
    pub fn resolve(&self, attributes: &Attributes, t: Timestamp) -> Option<Arc<Resolved>> {
        let mut on_stack = [None; STACK_FIELDS];
        let mut on_heap = Vec::new();
        let values: &mut [Option<&str>] = if self.fields.len() <= STACK_FIELDS {
            &mut on_stack[..self.fields.len()]
        } else {
            on_heap.resize(self.fields.len(), None);
            &mut on_heap
        };
        for (value, field) in values.iter_mut().zip(&self.fields) {
            *value = attributes.get(field).map(|a| a.trim());
        }
        self.candidates
            .iter()
            .find(|c| {
                c.effective_from.is_none_or(|from| from <= t)
                    && c.effective_to.is_none_or(|to| t < to)
                    && c.segment.iter().all(|(field, wanted)| {
                        values[*field].is_some_and(|v| v.eq_ignore_ascii_case(wanted))
                    })
            })
            .map(|c| &c.resolved)
            .or(self.default.as_ref())
            .cloned()
    }
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
    use proptest::prelude::*;

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

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
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

    /// The definition the compiled [`Resolver`] must agree with: match every usable record
    /// afresh and take the greatest by precedence.
    fn reference(
        thresholds: &[Threshold],
        attributes: &Attributes,
        t: Timestamp,
        default: Option<f64>,
    ) -> Option<(f64, Option<String>)> {
        thresholds
            .iter()
            .filter(|r| problem(r).is_none() && r.in_force_at(t) && matches(r, attributes))
            .max_by(|a, b| {
                (a.segment.len(), a.effective_from, a.modified_at, &a.id).cmp(&(
                    b.segment.len(),
                    b.effective_from,
                    b.modified_at,
                    &b.id,
                ))
            })
            .map(|r| (r.score, Some(r.id.clone())))
            .or(default.map(|score| (score, None)))
    }

    fn day(d: i64) -> Timestamp {
        ts("2026-01-01T00:00:00Z") + jiff::SignedDuration::from_hours(24 * d)
    }

    fn arb_threshold() -> impl Strategy<Value = Threshold> {
        let value = prop::sample::select(vec!["EMEA", " emea", "NA", "SDR", "ae "]);
        (
            "[a-d]{1,2}",
            prop::collection::btree_map(
                prop::sample::select(vec!["region", "team", "tier"]),
                value,
                0..3,
            ),
            0.0..100.0f64,
            prop::option::of(0..20i64),
            prop::option::of(1..20i64),
            0..5i64,
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(id, segment, score, from, length, modified, active, deleted)| Threshold {
                    id,
                    segment: segment
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    score,
                    effective_from: from.map(day),
                    effective_to: length.map(|l| day(from.unwrap_or(0) + l - 5)),
                    active,
                    set_by: None,
                    modified_at: day(modified),
                    deleted,
                },
            )
    }

    proptest::proptest! {
        #[test]
        fn the_compiled_resolver_agrees_with_matching_every_record(
            // Ids are unique in the CRM (the state keys records by id).
            thresholds in prop::collection::vec(arb_threshold(), 0..12).prop_map(|mut all| {
                for (i, t) in all.iter_mut().enumerate() {
                    t.id = format!("{}{i}", t.id);
                }
                all
            }),
            person in prop::collection::btree_map(
                prop::sample::select(vec!["region", "team", "tier", "country"]),
                prop::sample::select(vec!["EMEA", "emea ", "NA", "sdr", "AE", ""]),
                0..4,
            ),
            at in 0..30i64,
            default in prop::option::of(0.0..100.0f64),
        ) {
            let person: Attributes =
                person.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let resolver = Resolver::new(&thresholds, default);
            let got = resolver
                .resolve(&person, day(at))
                .map(|r| (r.score, r.threshold_id.clone()));
            proptest::prop_assert_eq!(got, reference(&thresholds, &person, day(at), default));
        }
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
