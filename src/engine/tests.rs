//! Scenario tests of the engine, one per behaviour of the contract, and property tests of
//! its invariants.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use super::model::*;
use super::policy::Policy;
use super::reconcile::{
    Context, Visibility, Written, advance, explain, mark_written, reconcile, sla_when_written,
};
use super::state::EngineState;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

const T0: &str = "2026-03-02T10:00:00Z"; // a Monday

fn at(minutes: i64) -> Timestamp {
    ts(T0) + SignedDuration::from_mins(minutes)
}

fn threshold(id: &str, region: Option<&str>, score: f64, modified: Timestamp) -> Event {
    Event::Threshold(Threshold {
        id: id.into(),
        segment: region
            .map(|r| BTreeMap::from([("region".to_string(), r.to_string())]))
            .unwrap_or_default(),
        score,
        effective_from: None,
        effective_to: None,
        active: true,
        set_by: Some("005MGR".into()),
        modified_at: modified,
        deleted: false,
    })
}

fn person(id: &str, region: &str, modified: Timestamp) -> PersonFacts {
    PersonFacts {
        crm: CrmRef {
            kind: if id.starts_with("003") {
                CrmKind::Contact
            } else {
                CrmKind::Lead
            },
            id: id.into(),
        },
        status: Some("Open - Not Contacted".into()),
        owner_id: Some("005A".into()),
        title: Some("CTO".into()),
        account_id: id.starts_with("003").then(|| "001ACC".into()),
        converted: false,
        attributes: Attributes::from(BTreeMap::from([
            ("region".to_string(), region.to_string()),
            ("vertical".to_string(), "Software".to_string()),
        ])),
        prior_mql_at: None,
        modified_at: modified,
    }
}

fn link(map: i64, crm: &str, when: Timestamp) -> Event {
    Event::Link(MapLink {
        map_lead_id: map,
        crm: Some(CrmRef {
            kind: if crm.starts_with("003") {
                CrmKind::Contact
            } else {
                CrmKind::Lead
            },
            id: crm.into(),
        }),
        at: when,
    })
}

fn score(map: i64, id: &str, value: f64, when: Timestamp, campaign: Option<&str>) -> Event {
    Event::Score(ScoreChange {
        map_lead_id: map,
        change_id: id.into(),
        part: ScorePart::Total,
        new_value: value,
        old_value: None,
        campaign: campaign.map(|c| Campaign {
            id: c.into(),
            name: Some(format!("Campaign {c}").into()),
        }),
        at: when,
    })
}

/// A Fill Out Form activity of MAP lead `map` on form `form` (Policy::example's hand-raiser
/// rule names the "Demo Request" form).
fn form_fill(map: i64, id: &str, form: &str, when: Timestamp) -> Event {
    Event::Activity(MapActivity {
        map_lead_id: map,
        activity_id: id.into(),
        type_id: 2,
        asset_id: Some("1001".into()),
        asset_name: Some(form.into()),
        status: None,
        campaign: Some(Campaign {
            id: "DEMO".into(),
            name: Some("Demo Request Processing".into()),
        }),
        at: when,
    })
}

fn edit(external_id: &str, status: CycleStatus, reason: Option<&str>, when: Timestamp) -> Event {
    Event::CycleEdit(CycleEdit {
        external_id: external_id.into(),
        status,
        rejection_reason: reason.map(str::to_string),
        owner_id: None,
        modified_at: when,
        modified_by: Some("005A".into()),
    })
}

/// Drives the engine with each event at its own instant.
struct Harness {
    state: EngineState,
    policy: Policy,
    visibility: Visibility,
    backfill: bool,
}

impl Harness {
    /// A world where a rep sees a cycle the instant it is decided.
    fn new() -> Self {
        Harness {
            state: EngineState::new(),
            policy: Policy::example(),
            visibility: Visibility::AtDecision,
            backfill: false,
        }
    }

    /// A world with a writer: a rep sees a cycle once its record is written.
    fn when_written() -> Self {
        Harness {
            visibility: Visibility::WhenWritten,
            ..Harness::new()
        }
    }

    fn apply(&mut self, event: Event) -> Vec<Decision> {
        let now = event.at();
        self.apply_at(event, now)
    }

    fn apply_at(&mut self, event: Event, now: Timestamp) -> Vec<Decision> {
        let ctx = Context {
            policy: &self.policy,
            now,
            backfill: self.backfill,
            visibility: self.visibility,
        };
        reconcile(&mut self.state, &ctx, &event)
    }

    fn advance(&mut self, now: Timestamp) -> Vec<Decision> {
        let ctx = Context {
            policy: &self.policy,
            now,
            backfill: self.backfill,
            visibility: self.visibility,
        };
        advance(&mut self.state, &ctx)
    }

    /// A linked lead in NA with the default threshold of 100.
    fn lead(&mut self, crm: &str, map: i64) {
        self.apply(Event::Person(person(crm, "NA", at(0))));
        self.apply(link(map, crm, at(0)));
    }

    fn cycles(&self, crm: &str) -> &[Cycle] {
        &self.state.persons[crm].cycles
    }
}

fn opened(decisions: &[Decision]) -> Vec<&Cycle> {
    decisions
        .iter()
        .filter_map(|d| match &d.action {
            Action::OpenCycle { cycle } => Some(&**cycle),
            _ => None,
        })
        .collect()
}

#[test]
fn a_score_at_the_threshold_opens_cycle_one_with_its_campaign_and_stamps() {
    let mut h = Harness::new();
    h.lead("00QA", 1);
    assert!(opened(&h.apply(score(1, "a1", 99.0, at(10), Some("WEB")))).is_empty());
    let out = h.apply(score(1, "a2", 100.0, at(20), Some("DEMO")));
    let cycles = opened(&out);
    assert_eq!(cycles.len(), 1);
    let c = cycles[0];
    assert_eq!(c.external_id, "00QA-1");
    assert_eq!(
        (c.number, c.status, c.score, c.threshold),
        (1, CycleStatus::Open, 100.0, 100.0)
    );
    assert_eq!(c.campaign.as_ref().unwrap().id, "DEMO");
    assert_eq!(c.mql_at, at(20));
    assert_eq!(c.owner_at_mql.as_deref(), Some("005A"));
    assert_eq!(c.segment, "default");
    let stamps = out
        .iter()
        .find_map(|d| match &d.action {
            Action::StampPerson { stamps, .. } => Some((**stamps).clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(stamps.status.as_deref(), Some("Marketing Qualified"));
    assert_eq!(
        (stamps.mql_recent, stamps.mql_original, stamps.mql_count),
        (Some(at(20)), Some(at(20)), 1)
    );
    assert!(
        out.iter()
            .any(|d| matches!(d.action, Action::Notify { .. }))
    );
    assert!(matches!(out[0].reason, Reason::Qualified { .. }));
}

#[test]
fn the_campaign_falls_back_to_the_most_recent_one() {
    let mut h = Harness::new();
    h.apply(Event::Person(person("00QA", "NA", at(0))));
    h.apply(score(1, "a1", 120.0, at(5), Some("WEB")));
    // The score was already high when the lead got linked: no crossing change, so the
    // most recent campaign is the one.
    let out = h.apply(link(1, "00QA", at(10)));
    assert_eq!(opened(&out)[0].campaign.as_ref().unwrap().id, "WEB");
}

#[test]
fn an_unlinked_map_lead_is_recorded_once_and_never_mqls() {
    let mut h = Harness::new();
    let out = h.apply(score(9, "x1", 500.0, at(1), None));
    assert!(matches!(
        out[0].reason,
        Reason::NotLinked { map_lead_id: 9 }
    ));
    assert!(h.apply(score(9, "x2", 600.0, at(2), None)).is_empty());
}

#[test]
fn no_threshold_and_no_default_means_no_mql_and_explain_says_so() {
    let mut h = Harness::new();
    h.policy.default_threshold = None;
    h.lead("00QA", 1);
    let out = h.apply(score(1, "a1", 500.0, at(1), None));
    assert!(opened(&out).is_empty());
    assert_eq!(
        explain(&h.state, &h.policy, "00QA", at(2)),
        Reason::NoThreshold
    );
}

#[test]
fn explain_of_an_id_never_seen_says_so_rather_than_blaming_a_link() {
    let mut h = Harness::new();
    h.lead("00QA", 1);
    assert_eq!(
        explain(&h.state, &h.policy, "00QNOPE", at(2)),
        Reason::NotSeen
    );
}

#[test]
fn turning_the_knob_down_makes_waiting_leads_mql_at_that_moment() {
    let mut h = Harness::new();
    h.apply(threshold("a0T-NA", Some("NA"), 90.0, at(0)));
    h.lead("00QA", 1);
    h.lead("00QB", 2);
    h.apply(Event::Person(person("00QC", "EMEA", at(0))));
    h.apply(link(3, "00QC", at(0)));
    for (map, value) in [(1, 80.0), (2, 60.0), (3, 85.0)] {
        assert!(opened(&h.apply(score(map, &format!("s{map}"), value, at(5), None))).is_empty());
    }
    let out = h.apply(threshold("a0T-NA", Some("NA"), 75.0, at(30)));
    let cycles = opened(&out);
    assert_eq!(cycles.len(), 1, "only the NA lead at 80 qualifies: {out:?}");
    assert_eq!(cycles[0].crm.id, "00QA");
    assert_eq!(cycles[0].mql_at, at(30));
    assert_eq!(cycles[0].threshold_id.as_deref(), Some("a0T-NA"));
    assert!(matches!(
        &out.iter()
            .find(|d| matches!(d.action, Action::OpenCycle { .. }))
            .unwrap()
            .reason,
        Reason::Qualified {
            trigger: Trigger::ThresholdChange { .. },
            ..
        }
    ));
    assert_eq!(cycles[0].segment, "region=NA");
}

#[test]
fn raising_the_knob_never_withdraws_an_mql() {
    let mut h = Harness::new();
    h.lead("00QA", 1);
    h.apply(score(1, "a1", 120.0, at(1), None));
    let out = h.apply(threshold("a0T", None, 500.0, at(2)));
    assert!(out.iter().all(|d| !matches!(
        d.action,
        Action::UpdateCycle { .. } | Action::OpenCycle { .. }
    )));
    assert_eq!(h.cycles("00QA")[0].status, CycleStatus::Open);
}

#[test]
fn a_scheduled_threshold_takes_effect_exactly_at_its_start() {
    let mut h = Harness::new();
    h.lead("00QA", 1);
    h.apply(score(1, "a1", 70.0, at(1), None));
    let start = at(60 * 24 * 3);
    let Event::Threshold(mut season) = threshold("a0T-S", Some("NA"), 60.0, at(2)) else {
        unreachable!()
    };
    season.effective_from = Some(start);
    season.effective_to = Some(start + SignedDuration::from_hours(24 * 14));
    assert!(opened(&h.apply(Event::Threshold(season))).is_empty());
    assert_eq!(h.state.next_wakeup(), Some(start));
    assert!(h.advance(start - SignedDuration::from_secs(1)).is_empty());
    // The clock runs late: the cycle still opens at the start, not when the engine noticed.
    let out = h.advance(start + SignedDuration::from_hours(5));
    let cycles = opened(&out);
    assert_eq!(cycles.len(), 1);
    assert_eq!(cycles[0].mql_at, start);
    assert_eq!(cycles[0].threshold, 60.0);
}

#[test]
fn an_invalid_threshold_is_reported_and_not_used() {
    let mut h = Harness::new();
    h.lead("00QA", 1);
    h.apply(score(1, "a1", 50.0, at(1), None));
    let Event::Threshold(mut bad) = threshold("a0T-BAD", None, 10.0, at(2)) else {
        unreachable!()
    };
    bad.effective_from = Some(at(100));
    bad.effective_to = Some(at(50));
    let out = h.apply(Event::Threshold(bad));
    assert!(
        matches!(&out[0].reason, Reason::ThresholdInvalid { problem } if problem.contains("a0T-BAD"))
    );
    assert!(opened(&out).is_empty());
    assert!(opened(&h.advance(at(200))).is_empty());
}

#[test]
fn each_exclusion_holds_the_mql_and_is_recorded_once() {
    let mut h = Harness::new();
    let mut spam = person("00QA", "NA", at(0));
    spam.status = Some("Spam".into());
    h.apply(Event::Person(spam));
    h.apply(link(1, "00QA", at(0)));
    let out = h.apply(score(1, "a1", 150.0, at(1), None));
    assert!(matches!(
        &out[0].reason,
        Reason::Excluded {
            rule: RuleKind::Status,
            ..
        }
    ));
    assert!(
        h.apply(score(1, "a2", 160.0, at(2), None)).is_empty(),
        "same hold, not recorded again"
    );
    // The rep fixes the status: the lead qualifies on that change.
    let out = h.apply(Event::Person(person("00QA", "NA", at(3))));
    assert_eq!(opened(&out).len(), 1);
}

#[test]
fn an_open_opportunity_excludes_a_contact_and_a_new_one_converts_the_cycle() {
    let mut h = Harness::new();
    h.lead("003A", 1);
    h.apply(score(1, "a1", 150.0, at(1), None));
    assert_eq!(h.cycles("003A")[0].status, CycleStatus::Open);
    let opp = Opportunity {
        id: "006X".into(),
        account_id: "001ACC".into(),
        is_closed: false,
        is_won: false,
        close_date: None,
        created_at: at(10),
        modified_at: at(10),
    };
    let out = h.apply(Event::Opportunity(opp));
    assert!(matches!(&out[0].reason, Reason::Converted { by } if by == "opportunity 006X"));
    let c = &h.cycles("003A")[0];
    assert_eq!(
        (c.status, c.outcome),
        (CycleStatus::Converted, Some(Outcome::Success))
    );
    // Later engagement does not MQL while the opportunity is open.
    let out = h.apply(score(1, "a2", 300.0, at(60 * 24 * 20), None));
    assert!(
        matches!(
            &out[0].reason,
            Reason::Excluded {
                rule: RuleKind::OpenOpportunity,
                ..
            }
        ),
        "{out:?}"
    );
}

#[test]
fn accepting_stamps_sal_dates_and_rejecting_needs_a_reason() {
    let mut h = Harness::new();
    h.lead("00QA", 1);
    h.apply(score(1, "a1", 150.0, at(1), None));
    let out = h.apply(edit("00QA-1", CycleStatus::Working, None, at(30)));
    let c = &h.cycles("00QA")[0];
    assert_eq!((c.status, c.sal_at), (CycleStatus::Working, Some(at(30))));
    let stamps = &h.state.persons["00QA"].stamps;
    assert_eq!(
        (stamps.sal_recent, stamps.sal_original),
        (Some(at(30)), Some(at(30)))
    );
    assert_eq!(stamps.status.as_deref(), Some("Sales Accepted"));
    assert!(
        out.iter()
            .any(|d| matches!(d.action, Action::StampPerson { .. }))
    );

    // Rejected without a reason: refused, written back as Working with a note.
    let out = h.apply(edit("00QA-1", CycleStatus::Rejected, None, at(40)));
    let Action::UpdateCycle { cycle } = &out[0].action else {
        panic!("{out:?}")
    };
    assert_eq!(cycle.status, CycleStatus::Working);
    assert!(cycle.note.as_deref().unwrap().contains("rejection reason"));
    assert!(matches!(out[0].reason, Reason::EditRefused { .. }));

    // With a reason: closed, outcome Not now, the person goes to nurture with a cool-down.
    h.apply(edit(
        "00QA-1",
        CycleStatus::Rejected,
        Some("Bad Timing"),
        at(50),
    ));
    let c = &h.cycles("00QA")[0];
    assert_eq!(
        (c.status, c.outcome, c.closed_at),
        (CycleStatus::Rejected, Some(Outcome::NotNow), Some(at(50)))
    );
    assert_eq!(
        h.state.persons["00QA"].stamps.status.as_deref(),
        Some("Nurture")
    );

    // Inside the cool-down, a higher score does not re-MQL; after it, it opens cycle 2.
    let out = h.apply(score(1, "a2", 200.0, at(60 * 24 * 20), None));
    assert!(
        matches!(
            &out[0].reason,
            Reason::CoolingDown {
                outcome: Outcome::NotNow,
                ..
            }
        ),
        "{out:?}"
    );
    let out = h.apply(score(1, "a3", 210.0, at(60 * 24 * 31), None));
    let cycles = opened(&out);
    assert_eq!(cycles[0].external_id, "00QA-2");
    assert_eq!(h.state.persons["00QA"].stamps.mql_count, 2);
    assert_eq!(h.state.persons["00QA"].stamps.mql_original, Some(at(1)));
}

#[test]
fn a_closed_cycle_cannot_be_reopened_by_an_edit() {
    let mut h = Harness::new();
    h.lead("00QA", 1);
    h.apply(score(1, "a1", 150.0, at(1), None));
    h.apply(edit("00QA-1", CycleStatus::Converted, None, at(5)));
    let out = h.apply(edit("00QA-1", CycleStatus::Open, None, at(6)));
    assert!(matches!(out[0].reason, Reason::EditRefused { .. }));
    assert_eq!(h.cycles("00QA")[0].status, CycleStatus::Converted);
    // Our own write coming back (same status) is not a change.
    assert!(
        h.apply(edit("00QA-1", CycleStatus::Converted, None, at(7)))
            .is_empty()
    );
}

#[test]
fn an_edit_of_an_mql_record_that_does_not_exist_is_recorded_once_under_its_crm_id() {
    let mut h = Harness::new();
    let out = h.apply(edit("00QZ-3", CycleStatus::Working, None, at(5)));
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].subject.as_str(), out[0].at), ("00QZ", at(5)));
    assert!(matches!(out[0].action, Action::Record));
    assert_eq!(
        out[0].reason,
        Reason::EditUnknownCycle {
            external_id: "00QZ-3".into(),
            edited_at: at(5),
        }
    );
    assert_eq!(
        out[0].reason.to_string(),
        "an edit of MQL record 00QZ-3 made at 2026-03-02T10:05:00Z was ignored: this store has no MQL with that external id (a record made by hand in the CRM, or by another store)"
    );
    assert!(h.state.dirty.meta, "the version seen is saved");
    // Read again (a poll's look-back, a replayed history): nothing new to say.
    assert!(
        h.apply_at(edit("00QZ-3", CycleStatus::Working, None, at(5)), at(9))
            .is_empty()
    );
    // A later version of the record is news, and an external id of no form is its own subject.
    assert_eq!(
        h.apply(edit("00QZ-3", CycleStatus::Rejected, None, at(10)))
            .len(),
        1
    );
    let out = h.apply(edit("hand-made", CycleStatus::Open, None, at(11)));
    assert_eq!(out[0].subject, "hand-made");
}

#[test]
fn an_edit_older_than_a_version_already_applied_is_recorded_once_and_changes_nothing() {
    let mut h = Harness::new();
    h.lead("00QA", 1);
    h.apply(score(1, "a1", 150.0, at(1), None));
    h.apply(edit("00QA-1", CycleStatus::Working, None, at(30)));
    h.apply(edit("00QA-1", CycleStatus::Converted, None, at(60)));
    let before = h.cycles("00QA")[0].clone();
    let stamps = h.state.persons["00QA"].stamps.clone();
    // A rejection made before the conversion arrives after it.
    let late = edit("00QA-1", CycleStatus::Rejected, Some("Bad Timing"), at(40));
    let out = h.apply_at(late.clone(), at(61));
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].subject, "00QA");
    assert_eq!(
        out[0].reason,
        Reason::EditStale {
            external_id: "00QA-1".into(),
            edited_at: at(40),
            applied_at: Some(at(60)),
            mql_at: at(1),
        }
    );
    assert!(out[0].reason.to_string().ends_with(
        "was ignored: the record's later version of 2026-03-02T11:00:00Z is already applied"
    ));
    let after = &h.cycles("00QA")[0];
    assert_eq!(
        (after.status, after.outcome),
        (before.status, before.outcome)
    );
    assert_eq!(after.crm_modified_at, Some(at(60)));
    assert_eq!(*after.crm_versions, [at(30), at(40), at(60)]);
    assert_eq!(h.state.persons["00QA"].stamps, stamps);
    assert!(h.state.persons["00QA"].cooldown.is_none());
    // The same stale version read again, and the applied versions replayed: nothing.
    assert!(h.apply_at(late, at(62)).is_empty());
    for when in [30, 60] {
        let status = if when == 30 {
            CycleStatus::Working
        } else {
            CycleStatus::Converted
        };
        assert!(
            h.apply_at(edit("00QA-1", status, None, at(when)), at(62))
                .is_empty()
        );
    }
}

#[test]
fn an_edit_older_than_the_mql_itself_is_recorded_once_and_changes_nothing() {
    let mut h = Harness::new();
    h.lead("00QA", 1);
    h.apply(score(1, "a1", 150.0, at(10), None));
    let early = edit("00QA-1", CycleStatus::Rejected, Some("Bad Timing"), at(5));
    let out = h.apply_at(early.clone(), at(11));
    assert_eq!(
        out.iter().map(|d| &d.reason).collect::<Vec<_>>(),
        [&Reason::EditStale {
            external_id: "00QA-1".into(),
            edited_at: at(5),
            applied_at: None,
            mql_at: at(10),
        }]
    );
    assert!(
        out[0]
            .reason
            .to_string()
            .ends_with("was ignored: it is older than the MQL itself (2026-03-02T10:10:00Z)")
    );
    assert_eq!(h.cycles("00QA")[0].status, CycleStatus::Open);
    assert_eq!(h.cycles("00QA")[0].crm_modified_at, None);
    assert!(h.apply_at(early, at(12)).is_empty());
}

#[test]
fn an_edit_read_before_its_cycle_opened_is_still_a_replay_once_it_has() {
    let mut h = Harness::new();
    h.lead("00QA", 1);
    let early = edit("00QA-1", CycleStatus::Working, None, at(0));
    assert_eq!(h.apply(early.clone()).len(), 1);
    h.apply(score(1, "a1", 150.0, at(1), None));
    assert!(h.state.meta.unknown_cycle_edits.is_empty(), "taken over");
    assert_eq!(*h.cycles("00QA")[0].crm_versions, [at(0)]);
    assert!(h.apply_at(early, at(2)).is_empty());
}

#[test]
fn an_open_mql_past_its_sla_is_overdue_then_moves_round_robin() {
    let mut h = Harness::new();
    h.lead("00QA", 1);
    // Monday 10:00 UTC; 4 business hours -> 14:00; reassign after 8 -> Tuesday 10:00.
    h.apply(score(1, "a1", 150.0, at(0), None));
    let c = h.cycles("00QA")[0].clone();
    assert_eq!(c.sla_due_at, Some(ts("2026-03-02T14:00:00Z")));
    assert_eq!(c.reassign_at, Some(ts("2026-03-03T10:00:00Z")));
    let out = h.advance(ts("2026-03-02T15:00:00Z"));
    assert!(matches!(out[0].reason, Reason::SlaOverdue { .. }));
    assert!(h.cycles("00QA")[0].overdue);
    let out = h.advance(ts("2026-03-03T10:00:00Z"));
    let c = &h.cycles("00QA")[0];
    assert_eq!(
        (c.owner_id.as_deref(), c.reassignments, c.overdue),
        (Some("005B"), 1, false)
    );
    assert!(
        out.iter()
            .any(|d| matches!(&d.action, Action::Notify { owner_id, .. } if owner_id == "005B"))
    );
    // And again a business day later, to the next in the pool.
    h.advance(ts("2026-03-04T10:00:00Z"));
    let c = &h.cycles("00QA")[0];
    assert_eq!((c.owner_id.as_deref(), c.reassignments), (Some("005C"), 2));
    // Accepting stops the clock.
    h.apply(edit(
        "00QA-1",
        CycleStatus::Working,
        None,
        ts("2026-03-04T11:00:00Z"),
    ));
    assert!(h.advance(ts("2026-03-20T00:00:00Z")).is_empty());
}

fn written(external_id: &str, when: Timestamp) -> Event {
    Event::CycleWritten(CycleWritten {
        external_id: external_id.into(),
        at: when,
    })
}

/// Issue 12, point 3: a first run catching up on history used to write MQL records already
/// overdue and reassigned for time no rep could see them.
#[test]
fn the_sla_starts_when_the_record_is_written_not_at_the_mql() {
    let mut h = Harness::when_written();
    h.lead("00QA", 1);
    // MQL on Monday 10:00; the record reaches the CRM on Wednesday 15:00.
    let out = h.apply(score(1, "a1", 150.0, at(0), None));
    let c = opened(&out)[0];
    assert_eq!(
        (c.sla_due_at, c.reassign_at, c.written_at),
        (None, None, None)
    );
    assert_eq!(h.state.next_wakeup(), None, "no SLA timer before the write");
    let write = ts("2026-03-04T15:00:00Z");
    assert!(
        h.advance(write).is_empty(),
        "nothing overdue, nobody reassigned"
    );
    let out = h.apply(written("00QA-1", write));
    // 4 business hours (9-17 UTC) from Wednesday 15:00: Thursday 11:00; 8 hours: 15:00.
    let due = ts("2026-03-05T11:00:00Z");
    assert_eq!(
        out,
        [Decision {
            at: write,
            subject: "00QA".into(),
            action: Action::Record,
            reason: Reason::SlaStarted {
                written_at: write,
                due
            },
        }]
    );
    assert!(
        out[0]
            .reason
            .to_string()
            .contains("until 2026-03-05T11:00:00Z")
    );
    let c = h.cycles("00QA")[0].clone();
    assert_eq!(
        (c.mql_at, c.written_at, c.sla_due_at, c.reassign_at),
        (
            at(0),
            Some(write),
            Some(due),
            Some(ts("2026-03-05T15:00:00Z"))
        )
    );
    // A report read again, or a later one, is a replay.
    assert!(h.apply(written("00QA-1", write)).is_empty());
    assert!(
        h.apply(written("00QA-1", write + SignedDuration::from_hours(1)))
            .is_empty()
    );
    assert_eq!(h.cycles("00QA")[0], c);
    // Then the clock runs from the write: overdue at 11:00, reassigned at 15:00, once.
    assert!(h.advance(due - SignedDuration::from_secs(1)).is_empty());
    let out = h.advance(due);
    assert_eq!(out[0].reason, Reason::SlaOverdue { due });
    let out = h.advance(ts("2026-03-05T15:00:00Z"));
    assert!(matches!(out[0].reason, Reason::Reassigned { count: 1, .. }));
    let c = &h.cycles("00QA")[0];
    assert_eq!((c.owner_id.as_deref(), c.reassignments), (Some("005B"), 1));
}

#[test]
fn a_cycle_never_written_is_never_overdue_nor_reassigned() {
    let mut h = Harness::when_written();
    h.lead("00QA", 1);
    h.apply(score(1, "a1", 150.0, at(0), None));
    assert!(h.advance(at(60 * 24 * 60)).is_empty());
    let c = &h.cycles("00QA")[0];
    assert_eq!((c.overdue, c.reassignments, c.sla_due_at), (false, 0, None));
}

#[test]
fn a_cycle_closed_before_its_record_was_written_gets_no_sla() {
    let mut h = Harness::when_written();
    h.lead("003A", 1);
    h.apply(score(1, "a1", 150.0, at(0), None));
    h.apply(Event::Opportunity(Opportunity {
        id: "006X".into(),
        account_id: "001ACC".into(),
        is_closed: false,
        is_won: false,
        close_date: None,
        created_at: at(5),
        modified_at: at(5),
    }));
    assert!(h.apply(written("003A-1", at(10))).is_empty());
    let c = &h.cycles("003A")[0];
    assert_eq!(
        (c.status, c.written_at, c.sla_due_at),
        (CycleStatus::Converted, Some(at(10)), None)
    );
    assert_eq!(h.state.next_wakeup(), None);
}

#[test]
fn a_backfilled_cycle_gets_no_sla_and_no_alert_whether_seen_at_once_or_when_written() {
    for visibility in [Visibility::AtDecision, Visibility::WhenWritten] {
        let mut h = Harness {
            visibility,
            backfill: true,
            ..Harness::new()
        };
        h.lead("00QA", 1);
        let out = h.apply(score(1, "a1", 150.0, at(0), None));
        assert!(
            !out.iter()
                .any(|d| matches!(d.action, Action::Notify { .. })),
            "a backfilled cycle alerts nobody: {out:?}"
        );
        assert!(h.apply(written("00QA-1", at(5))).is_empty());
        assert!(h.advance(at(60 * 24 * 30)).is_empty(), "{visibility:?}");
        let c = &h.cycles("00QA")[0];
        assert!(c.backfilled);
        assert_eq!(
            (c.sla_due_at, c.reassign_at, c.overdue, c.reassignments),
            (None, None, false, 0),
            "{visibility:?}"
        );
    }
}

/// A person's facts at `when` with this CRM status (a version a backfill rebuilds from the
/// CRM's status history).
fn with_status(id: &str, status: &str, when: Timestamp) -> Event {
    let mut p = person(id, "NA", when);
    p.status = Some(status.into());
    Event::Person(p)
}

#[test]
fn a_backfill_replays_the_status_history_onto_its_cycles_sal_and_closed_dates() {
    let mut h = Harness {
        backfill: true,
        ..Harness::new()
    };
    h.lead("00QA", 1);
    h.lead("00QB", 2);
    h.apply(score(1, "a1", 150.0, at(10), None));
    h.apply(score(2, "b1", 150.0, at(10), None));
    // A status nobody mapped changes no cycle; an accepted one dates the SAL.
    h.apply(with_status("00QA", "Open - Contacted Once", at(20)));
    assert_eq!(h.cycles("00QA")[0].status, CycleStatus::Open);
    let out = h.apply(with_status("00QA", "Working - Contacted", at(30)));
    let a = &h.cycles("00QA")[0];
    assert_eq!((a.status, a.sal_at), (CycleStatus::Working, Some(at(30))));
    let stamps = &h.state.persons["00QA"].stamps;
    assert_eq!(
        (stamps.sal_original, stamps.sal_recent),
        (Some(at(30)), Some(at(30)))
    );
    assert_eq!(stamps.status, None, "the CRM's status is not overwritten");
    assert!(out.iter().any(|d| matches!(
        &d.reason,
        Reason::HistoricStatus { status, to: CycleStatus::Working, .. } if status == "Working - Contacted"
    )));
    // Then back to nurture: Rejected with the mapped reason, closed then, cooling down.
    h.apply(with_status("00QA", "Nurture", at(40)));
    let a = &h.cycles("00QA")[0];
    assert_eq!(
        (
            a.status,
            a.rejection_reason.as_deref(),
            a.outcome,
            a.closed_at
        ),
        (
            CycleStatus::Rejected,
            Some("Bad Timing"),
            Some(Outcome::NotNow),
            Some(at(40))
        )
    );
    assert_eq!(a.sal_at, Some(at(30)), "the SAL date stays");
    let out = h.apply(score(1, "a2", 160.0, at(50), None));
    assert!(opened(&out).is_empty(), "cooling down after Not now");
    // Straight from Open to nurture: Rejected, never accepted.
    h.apply(with_status("00QB", "Nurture", at(25)));
    let b = &h.cycles("00QB")[0];
    assert_eq!(
        (b.status, b.sal_at, b.closed_at),
        (CycleStatus::Rejected, None, Some(at(25)))
    );
}

#[test]
fn status_history_changes_no_live_cycle_and_no_status_before_the_mql() {
    // Live: reps work the MQL record, not the person's status.
    let mut h = Harness::new();
    h.lead("00QA", 1);
    h.apply(score(1, "a1", 150.0, at(10), None));
    h.apply(with_status("00QA", "Working - Contacted", at(30)));
    assert_eq!(h.cycles("00QA")[0].status, CycleStatus::Open);
    // Backfill: a status the person had before the MQL is not about that cycle.
    let mut h = Harness {
        backfill: true,
        ..Harness::new()
    };
    h.lead("00QA", 1);
    h.apply(with_status("00QA", "Working - Contacted", at(5)));
    h.apply(score(1, "a1", 150.0, at(10), None));
    assert_eq!(h.cycles("00QA")[0].status, CycleStatus::Open);
}

#[test]
fn a_cycle_seen_at_its_decision_keeps_its_sla_when_its_record_is_written() {
    let mut h = Harness::new();
    h.lead("00QA", 1);
    h.apply(score(1, "a1", 150.0, at(0), None));
    let before = h.cycles("00QA")[0].clone();
    assert_eq!(before.sla_due_at, Some(ts("2026-03-02T14:00:00Z")));
    assert!(h.apply(written("00QA-1", at(30))).is_empty());
    let after = &h.cycles("00QA")[0];
    assert_eq!(after.written_at, Some(at(30)));
    assert_eq!(
        (after.sla_due_at, after.reassign_at),
        (before.sla_due_at, before.reassign_at)
    );
}

#[test]
fn the_writer_and_the_engine_give_a_written_record_the_same_sla() {
    // The writer marks its copy of the cycle written before it sends it (the record carries
    // that `SLA_Due__c`); the engine marks its own once the CRM accepted it.
    let mut h = Harness::when_written();
    h.lead("00QA", 1);
    let mut copy = opened(&h.apply(score(1, "a1", 150.0, at(0), None)))[0].clone();
    let write = ts("2026-03-06T16:30:00Z"); // a Friday afternoon: due on Monday
    let Written::SlaStarted(clock) = mark_written(&h.policy, &mut copy, write) else {
        panic!("{copy:?}")
    };
    assert_eq!(clock.due, ts("2026-03-09T12:30:00Z"));
    assert_eq!(
        sla_when_written(&h.policy, &h.cycles("00QA")[0], write),
        Some(clock)
    );
    h.apply(written("00QA-1", write));
    assert_eq!(h.cycles("00QA")[0], copy);
    assert_eq!(mark_written(&h.policy, &mut copy, write), Written::Replay);
}

#[test]
fn behaviour_plus_demographic_source_sums_the_parts() {
    let mut h = Harness::new();
    h.policy.score = super::policy::ScoreSource::BehaviorPlusDemographic;
    h.lead("00QA", 1);
    let part = |p, v, id: &str, m| {
        Event::Score(ScoreChange {
            map_lead_id: 1,
            change_id: id.into(),
            part: p,
            new_value: v,
            old_value: None,
            campaign: None,
            at: at(m),
        })
    };
    assert!(opened(&h.apply(part(ScorePart::Demographic, 40.0, "d", 1))).is_empty());
    assert!(
        opened(&h.apply(part(ScorePart::Total, 100.0, "t", 2))).is_empty(),
        "total ignored"
    );
    assert_eq!(
        opened(&h.apply(part(ScorePart::Behavior, 60.0, "b", 3))).len(),
        1
    );
}

#[test]
fn replaying_applied_events_changes_nothing() {
    let mut h = Harness::new();
    let events = vec![
        threshold("a0T", Some("NA"), 80.0, at(0)),
        Event::Person(person("00QA", "NA", at(0))),
        link(1, "00QA", at(0)),
        score(1, "a1", 90.0, at(1), Some("C")),
        edit("00QA-1", CycleStatus::Working, None, at(2)),
    ];
    for e in &events {
        h.apply_at(e.clone(), at(3));
    }
    for e in &events {
        assert!(h.apply_at(e.clone(), at(3)).is_empty(), "replay of {e:?}");
    }
}

fn region_of(i: u8) -> &'static str {
    ["NA", "EMEA", "APAC"][usize::from(i % 3)]
}

fn arb_event() -> impl Strategy<Value = (u16, Event)> {
    // Odd ones are contacts of account 001ACC, the others leads.
    let crm = |i: u8| {
        if i % 2 == 1 {
            format!("003{i}")
        } else {
            format!("00Q{i}")
        }
    };
    prop_oneof![
        (0u8..3, 0u8..5, 0u32..200).prop_map(move |(t, r, s)| {
            let region = (r < 3).then(|| region_of(r));
            let mut knob = threshold(
                &format!("a0T{t}"),
                region,
                f64::from(s),
                Timestamp::UNIX_EPOCH,
            );
            // Some knobs are for target accounts only.
            if r == 4
                && let Event::Threshold(k) = &mut knob
            {
                k.segment.insert("target_account".into(), "true".into());
            }
            knob
        }),
        (0u8..4, 0u8..3, any::<bool>()).prop_map(move |(i, r, spam)| {
            let mut p = person(&crm(i), region_of(r), Timestamp::UNIX_EPOCH);
            if spam {
                p.status = Some("Spam".into());
            }
            Event::Person(p)
        }),
        (0u8..4, 0u8..4).prop_map(move |(m, i)| link(i64::from(m), &crm(i), Timestamp::UNIX_EPOCH)),
        (0u8..4, 0u32..250).prop_map(|(m, s)| score(
            i64::from(m),
            "",
            f64::from(s),
            Timestamp::UNIX_EPOCH,
            Some("C")
        )),
        (0u8..4, 1u8..3, 0u8..4, any::<bool>()).prop_map(move |(i, n, st, why)| {
            let status = [
                CycleStatus::Open,
                CycleStatus::Working,
                CycleStatus::Rejected,
                CycleStatus::Converted,
            ][usize::from(st)];
            edit(
                &format!("{}-{n}", crm(i)),
                status,
                why.then_some("Bad Timing"),
                Timestamp::UNIX_EPOCH,
            )
        }),
        (0u8..4, 0u32..250).prop_map(|(m, s)| current(
            i64::from(m),
            f64::from(s),
            Timestamp::UNIX_EPOCH
        )),
        any::<bool>().prop_map(|target| account("001ACC", target, Timestamp::UNIX_EPOCH)),
        (0u8..4, any::<bool>()).prop_map(|(m, demo)| form_fill(
            i64::from(m),
            "",
            if demo { "Demo Request" } else { "Newsletter" },
            Timestamp::UNIX_EPOCH
        )),
        any::<bool>().prop_map(|mqls| Event::GoLive {
            at: Timestamp::UNIX_EPOCH,
            mqls
        }),
    ]
    .prop_flat_map(|e| (1u16..600, Just(e)))
}

/// Gives each event a strictly later time (gaps in minutes) and a unique change id.
fn timed(raw: &[(u16, Event)]) -> Vec<Event> {
    let mut t = ts(T0);
    raw.iter()
        .enumerate()
        .map(|(i, (gap, e))| {
            t += SignedDuration::from_mins(i64::from(*gap));
            let mut e = e.clone();
            match &mut e {
                Event::Threshold(x) => x.modified_at = t,
                Event::Person(x) => x.modified_at = t,
                Event::Account(x) => x.modified_at = t,
                Event::Opportunity(x) => x.modified_at = t,
                Event::Score(x) | Event::CurrentScore(x) => {
                    x.at = t;
                    x.change_id = format!("c{i}");
                }
                Event::Activity(x) => {
                    x.at = t;
                    x.activity_id = format!("a{i}").into();
                }
                Event::Link(x) => x.at = t,
                Event::CycleEdit(x) => x.modified_at = t,
                Event::GoLive { at, .. } => *at = t,
                Event::CycleWritten(x) => x.at = t,
            }
            e
        })
        .collect()
}

/// [`arb_event`], or the writer's report that the record of cycle 1 or 2 of a person was
/// written (at the instant [`timed`] gives it).
fn arb_event_or_write() -> impl Strategy<Value = (u16, Event)> {
    prop_oneof![
        4 => arb_event(),
        1 => (0u8..4, 1u8..3, 1u16..600).prop_map(|(i, n, gap)| {
            (gap, written(&format!("00Q{i}-{n}"), Timestamp::UNIX_EPOCH))
        }),
    ]
}

/// A cycle whose record was never written has no SLA, is not overdue and was never
/// reassigned; every overdue flag and reassignment comes at or after the write.
fn check_sla_waits_for_the_write(
    state: &EngineState,
    out: &[Decision],
) -> Result<(), TestCaseError> {
    for (id, p) in &state.persons {
        for c in &p.cycles {
            if c.written_at.is_none() {
                prop_assert!(
                    c.sla_due_at.is_none()
                        && c.reassign_at.is_none()
                        && !c.overdue
                        && c.reassignments == 0,
                    "{id}: unwritten {c:?}"
                );
            }
        }
    }
    for d in out {
        if let (
            Reason::SlaOverdue { .. } | Reason::Reassigned { .. },
            Action::UpdateCycle { cycle },
        ) = (&d.reason, &d.action)
        {
            prop_assert!(
                cycle.written_at.is_some_and(|w| w <= d.at),
                "{:?} at {} before the record was written: {cycle:?}",
                d.reason,
                d.at
            );
        }
    }
    Ok(())
}

fn run(events: &[Event]) -> (EngineState, Vec<Decision>) {
    let mut h = Harness::new();
    let mut all = Vec::new();
    for e in events {
        all.extend(h.apply(e.clone()));
    }
    (h.state, all)
}

fn open_ids(state: &EngineState) -> Vec<String> {
    state
        .persons
        .values()
        .flat_map(|p| {
            p.cycles
                .iter()
                .filter(|c| c.status.is_open())
                .map(|c| c.external_id.clone())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn never_two_open_cycles_for_one_record(raw in prop::collection::vec(arb_event(), 1..60)) {
        let mut h = Harness::new();
        for e in timed(&raw) {
            h.apply(e);
            for (id, p) in &h.state.persons {
                let open = p.cycles.iter().filter(|c| c.status.is_open()).count();
                prop_assert!(open <= 1, "{id} has {open} open cycles");
                if open == 1 {
                    prop_assert!(p.cycles.last().unwrap().status.is_open(), "only the last may be open");
                }
                for (n, c) in p.cycles.iter().enumerate() {
                    prop_assert_eq!(&c.external_id, &format!("{id}-{}", n + 1));
                }
            }
        }
    }

    #[test]
    fn raising_a_threshold_never_withdraws_an_mql(raw in prop::collection::vec(arb_event(), 1..60), bump in 1u32..100) {
        let mut h = Harness::new();
        for e in timed(&raw) {
            let raise = match &e {
                Event::Threshold(t) => h.state.thresholds.get(&t.id).map(|old| {
                    let mut t = t.clone();
                    t.score = old.score + f64::from(bump);
                    t.segment = old.segment.clone();
                    Event::Threshold(t)
                }),
                _ => None,
            };
            let before = open_ids(&h.state);
            let event = raise.unwrap_or(e);
            let is_threshold = matches!(event, Event::Threshold(_));
            let out = h.apply(event);
            if is_threshold {
                let after = open_ids(&h.state);
                for id in &before {
                    prop_assert!(after.contains(id), "{id} was withdrawn");
                }
                let closes = out.iter().any(|d| matches!(&d.action,
                    Action::UpdateCycle { cycle } if !cycle.status.is_open()));
                prop_assert!(!closes, "a threshold change closed a cycle");
            }
        }
    }

    #[test]
    fn the_same_inputs_in_the_same_order_give_the_same_decisions(raw in prop::collection::vec(arb_event(), 1..60)) {
        let events = timed(&raw);
        let (_, a) = run(&events);
        let (_, b) = run(&events);
        prop_assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
    }

    #[test]
    fn the_shortcuts_decide_what_the_long_way_decides(raw in prop::collection::vec(arb_event(), 1..80)) {
        // The gate of a MAP lead and `unchanged` skip evaluations that would change nothing:
        // with both off, every score change is evaluated in full, and the decisions agree.
        let events = timed(&raw);
        let (_, quick) = run(&events);
        let mut h = Harness::new();
        h.state.no_shortcuts = true;
        let full: Vec<Decision> = events.iter().flat_map(|e| h.apply(e.clone())).collect();
        prop_assert_eq!(serde_json::to_string(&quick).unwrap(), serde_json::to_string(&full).unwrap());
    }

    #[test]
    fn no_sla_runs_out_before_the_record_is_written(raw in prop::collection::vec(arb_event_or_write(), 1..80)) {
        let events = timed(&raw);
        let mut h = Harness::when_written();
        for e in &events {
            let out = h.apply(e.clone());
            check_sla_waits_for_the_write(&h.state, &out)?;
        }
        // Weeks later: every SLA of a written cycle has run out, and no other.
        let end = events.last().map(Event::at).unwrap() + SignedDuration::from_hours(24 * 30);
        let out = h.advance(end);
        check_sla_waits_for_the_write(&h.state, &out)?;
        for c in h.state.persons.values().flat_map(|p| &p.cycles) {
            if c.status == CycleStatus::Open && c.written_at.is_some() {
                prop_assert!(c.reassignments > 0, "written, never reassigned: {c:?}");
            }
        }
    }

    #[test]
    fn replaying_already_applied_events_yields_no_decision(raw in prop::collection::vec(arb_event(), 1..60), from in 0usize..60) {
        let events = timed(&raw);
        let mut h = Harness::new();
        let end = events.last().map(Event::at).unwrap();
        for e in &events {
            h.apply(e.clone());
        }
        h.advance(end);
        let from = from.min(events.len());
        for e in &events[from..] {
            let out = h.apply_at(e.clone(), end);
            prop_assert!(out.is_empty(), "replay of {:?} gave {:?}", e, out);
        }
    }
}

#[test]
fn a_relink_closes_the_gate_of_the_persons_previous_map_lead() {
    // Map lead 1's gate copies 00QA "quiet below 100". When map lead 2 takes 00QA over and
    // opens its cycle, that copy is stale: the next change of map lead 1 must reach the
    // person (who now records its open cycle's hold), as the long way does.
    let history = [
        Event::Person(person("00QA", "NA", at(0))),
        link(1, "00QA", at(0)),
        score(1, "s1", 50.0, at(1), None),
        score(2, "s2", 500.0, at(2), None),
        link(2, "00QA", at(3)),
        score(1, "s3", 60.0, at(4), None),
    ];
    let mut quick = Harness::new();
    let mut full = Harness::new();
    full.state.no_shortcuts = true;
    for event in &history[..5] {
        assert_eq!(quick.apply(event.clone()), full.apply(event.clone()));
    }
    assert_eq!(quick.cycles("00QA").len(), 1, "map lead 2 opened cycle 1");
    let out = quick.apply(history[5].clone());
    assert_eq!(out, full.apply(history[5].clone()));
    assert!(
        out.iter().any(|d| d.subject == "00QA"
            && matches!(&d.reason, Reason::OpenCycle { external_id } if external_id == "00QA-1")),
        "{out:?}"
    );
}

#[test]
fn a_map_lead_relinked_to_another_person_scores_for_the_new_one_only() {
    // The MAP lead keeps its person's slot for the hot path: a relink must move it.
    let mut h = Harness::new();
    h.lead("00QA", 1);
    h.apply(Event::Person(person("00QB", "NA", at(0))));
    assert!(opened(&h.apply(score(1, "s1", 10.0, at(1), None))).is_empty());
    h.apply(link(1, "00QB", at(2)));
    assert_eq!(h.state.persons["00QA"].map_lead, None);
    let out = h.apply(score(1, "s2", 500.0, at(3), None));
    let cycles = opened(&out);
    assert_eq!(cycles.len(), 1, "{out:?}");
    assert_eq!(cycles[0].crm.id, "00QB");
    assert!(h.state.persons["00QA"].cycles.is_empty());
    // Unlinked: the next change is recorded as not linked, for nobody.
    h.apply(Event::Link(MapLink {
        map_lead_id: 1,
        crm: None,
        at: at(4),
    }));
    let out = h.apply(score(1, "s3", 900.0, at(5), None));
    assert!(opened(&out).is_empty(), "{out:?}");
}

/// A score field's current value as the MAP holds it (issue 12: a first run reads them).
fn current(map: i64, value: f64, when: Timestamp) -> Event {
    Event::CurrentScore(ScoreChange {
        map_lead_id: map,
        change_id: "current".into(),
        part: ScorePart::Total,
        new_value: value,
        old_value: None,
        campaign: None,
        at: when,
    })
}

#[test]
fn current_scores_decide_nothing_and_go_live_makes_mqls_of_who_is_already_above() {
    let mut h = Harness::new();
    h.lead("00QABOVE", 1);
    h.lead("00QBELOW", 2);
    h.lead("00QHASCYCLE", 3);
    let mut student = person("00QSTUDENT", "NA", at(0));
    student.title = Some("Student".into());
    h.apply(Event::Person(student));
    h.apply(link(4, "00QSTUDENT", at(0)));
    // 00QHASCYCLE crossed inside the look-back: its cycle came from the activity.
    assert_eq!(
        opened(&h.apply(score(3, "c1", 120.0, at(5), None))).len(),
        1
    );
    for (map, value) in [(1, 150.0), (2, 50.0), (3, 130.0), (4, 160.0)] {
        assert!(h.apply(current(map, value, at(50))).is_empty());
    }
    let out = h.apply(Event::GoLive {
        at: at(60),
        mqls: true,
    });
    let cycles = opened(&out);
    assert_eq!(cycles.len(), 1, "{out:?}");
    assert_eq!(
        (
            cycles[0].external_id.as_str(),
            cycles[0].mql_at,
            cycles[0].score
        ),
        ("00QABOVE-1", at(60), 150.0)
    );
    let reasons: Vec<&Reason> = out.iter().map(|d| &d.reason).collect();
    assert!(
        matches!(reasons[0], Reason::AtGoLive { score, threshold, .. } if *score == 150.0 && *threshold == 100.0),
        "{reasons:?}"
    );
    // The student is excluded (recorded), the one below records nothing, the one with a cycle
    // is not evaluated.
    assert!(
        out.iter()
            .all(|d| d.subject != "00QBELOW" && d.subject != "00QHASCYCLE")
    );
    assert!(out.iter().any(|d| d.subject == "00QSTUDENT"
        && matches!(
            d.reason,
            Reason::Excluded {
                rule: RuleKind::Title,
                ..
            }
        )));
    assert_eq!(h.cycles("00QHASCYCLE").len(), 1);
    // Going live is once.
    assert!(
        h.apply(Event::GoLive {
            at: at(90),
            mqls: true
        })
        .is_empty()
    );
}

#[test]
fn a_knob_turn_reaches_people_known_only_by_their_current_score() {
    let mut h = Harness::new();
    h.apply(threshold("T-NA", Some("NA"), 90.0, at(0)));
    h.lead("00QOLD", 1);
    // No change in the look-back: the score is known only from the lead record.
    assert!(h.apply(current(1, 80.0, at(10))).is_empty());
    // Gone live with go_live = "wait": nobody opened, the store is live.
    let quiet = h.apply(Event::GoLive {
        at: at(15),
        mqls: false,
    });
    assert!(quiet.is_empty() && h.state.meta.went_live == Some(at(15)));
    let out = h.apply(threshold("T-NA", Some("NA"), 75.0, at(20)));
    let cycles = opened(&out);
    assert_eq!(cycles.len(), 1, "{out:?}");
    assert_eq!((cycles[0].mql_at, cycles[0].threshold), (at(20), 75.0));
}

#[test]
fn a_version_that_leaves_the_knob_as_it_was_reevaluates_nobody() {
    let mut h = Harness::new();
    h.apply(threshold("T-NA", Some("NA"), 75.0, at(0)));
    h.lead("00QOLD", 1);
    h.apply(current(1, 80.0, at(10)));
    // Gone live with go_live = "wait": 00QOLD waits for its next change or a knob turn.
    h.apply(Event::GoLive {
        at: at(15),
        mqls: false,
    });
    // mqlsync's feedback fields written on the record: a new version, the same knob.
    let out = h.apply(threshold("T-NA", Some("NA"), 75.0, at(20)));
    assert!(opened(&out).is_empty(), "{out:?}");
    assert_eq!(h.state.thresholds["T-NA"].modified_at, at(20));
    // The knob itself turned: everyone in the segment again.
    let out = h.apply(threshold("T-NA", Some("NA"), 74.0, at(30)));
    assert_eq!(opened(&out).len(), 1, "{out:?}");
}

#[test]
fn a_current_score_older_than_a_known_change_is_a_replay() {
    let mut h = Harness::new();
    h.lead("00QA", 1);
    h.apply(score(1, "a1", 60.0, at(30), None));
    h.apply(current(1, 140.0, at(20)));
    let value = h.state.map_leads[&1].scores.value(&h.policy.score, at(40));
    assert_eq!(value, Some(60.0));
}

#[test]
fn an_mql_date_the_crm_kept_before_mqlsync_stays_the_original() {
    let mut h = Harness::new();
    let mut facts = person("00QOLD", "NA", at(0));
    facts.prior_mql_at = Some(ts("2023-05-01T00:00:00Z"));
    h.apply(Event::Person(facts));
    h.apply(link(1, "00QOLD", at(0)));
    let out = h.apply(score(1, "a1", 120.0, at(10), None));
    let stamps = out
        .iter()
        .find_map(|d| match &d.action {
            Action::StampPerson { stamps, .. } => Some((**stamps).clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (stamps.mql_original, stamps.mql_recent),
        (Some(ts("2023-05-01T00:00:00Z")), Some(at(10)))
    );
    // A later prior date does not move the original back.
    let mut h = Harness::new();
    let mut facts = person("00QNEW", "NA", at(0));
    facts.prior_mql_at = Some(at(500));
    h.apply(Event::Person(facts));
    h.apply(link(2, "00QNEW", at(0)));
    h.apply(score(2, "b1", 120.0, at(10), None));
    assert_eq!(h.state.persons["00QNEW"].stamps.mql_original, Some(at(10)));
}

#[test]
fn a_demo_request_below_the_threshold_opens_a_cycle_that_records_its_trigger() {
    let mut h = Harness::new();
    h.lead("00QA", 1);
    h.apply(score(1, "s1", 30.0, at(5), Some("WEB")));
    let out = h.apply(form_fill(1, "act1", "demo request", at(10)));
    let cycles = opened(&out);
    assert_eq!(cycles.len(), 1, "{out:#?}");
    let c = cycles[0];
    assert_eq!(
        (c.number, c.mql_at, c.score, c.threshold),
        (1, at(10), 30.0, 100.0)
    );
    assert_eq!(c.campaign.as_ref().unwrap().id, "DEMO");
    let raised = c.hand_raise.as_deref().expect("the trigger");
    assert_eq!(
        (
            raised.rule.as_str(),
            raised.type_id,
            raised.asset.as_deref()
        ),
        ("Demo Request", 2, Some("demo request"))
    );
    assert!(
        raised
            .label()
            .starts_with("Hand-raiser Demo Request: Fill Out Form on demo request at ")
    );
    assert!(
        out.iter()
            .any(|d| matches!(d.action, Action::Notify { .. }))
    );
    let reason = out[0].reason.to_string();
    assert!(
        reason.starts_with("MQL: qualified by hand-raiser rule Demo Request (Fill Out Form on demo request (activity act1)), score 30 against the threshold 100"),
        "{reason}"
    );
    // Delivered again (the daemon delivers at least once): nothing.
    assert!(
        h.apply(form_fill(1, "act1", "Demo Request", at(10)))
            .is_empty()
    );
    // Another form is no hand-raise.
    h.apply(edit(
        "00QA-1",
        CycleStatus::Rejected,
        Some("Bad Timing"),
        at(20),
    ));
    assert!(opened(&h.apply(form_fill(1, "act2", "Newsletter", at(30)))).is_empty());
}

#[test]
fn a_hand_raise_with_a_cycle_open_opens_no_second_and_the_audit_says_so() {
    let mut h = Harness::new();
    h.lead("00QA", 1);
    assert_eq!(
        opened(&h.apply(score(1, "s1", 120.0, at(5), None))).len(),
        1
    );
    let out = h.apply(form_fill(1, "act1", "Demo Request", at(10)));
    assert!(opened(&out).is_empty());
    let [held] = out.as_slice() else {
        panic!("one record: {out:#?}")
    };
    assert!(matches!(held.action, Action::Record));
    match &held.reason {
        Reason::HandRaiseHeld { rule, why, .. } => {
            assert_eq!(rule, "Demo Request");
            assert!(
                matches!(**why, Reason::OpenCycle { ref external_id } if external_id == "00QA-1")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        held.reason.to_string(),
        "hand-raiser rule Demo Request matched Fill Out Form on Demo Request (activity act1), but already an MQL: cycle 00QA-1 is open"
    );
    assert_eq!(h.cycles("00QA").len(), 1);
}

#[test]
fn an_excluded_or_cooling_down_hand_raiser_is_held_with_the_rule_that_holds_them() {
    let mut h = Harness::new();
    let mut spam = person("00QS", "NA", at(0));
    spam.status = Some("Spam".into());
    h.apply(Event::Person(spam));
    h.apply(link(2, "00QS", at(0)));
    let out = h.apply(form_fill(2, "act1", "Demo Request", at(10)));
    assert!(opened(&out).is_empty());
    assert!(matches!(
        &out[0].reason,
        Reason::HandRaiseHeld { why, .. } if matches!(**why, Reason::Excluded { rule: RuleKind::Status, .. })
    ));
    // Rejected "Bad Timing" (Not now): 30 days of cool-down hold a hand-raise too.
    h.lead("00QA", 1);
    h.apply(score(1, "s1", 150.0, at(20), None));
    h.apply(edit(
        "00QA-1",
        CycleStatus::Rejected,
        Some("Bad Timing"),
        at(30),
    ));
    let out = h.apply(form_fill(1, "act2", "Demo Request", at(40)));
    assert!(matches!(
        &out[0].reason,
        Reason::HandRaiseHeld { why, .. } if matches!(**why, Reason::CoolingDown { .. })
    ));
}

#[test]
fn a_hand_raise_of_a_lead_not_yet_in_the_crm_acts_when_it_is_linked_within_the_wait() {
    let mut h = Harness::new();
    // A new person fills the form; the MAP's CRM sync links the lead minutes later.
    let out = h.apply(form_fill(1, "act1", "Demo Request", at(0)));
    assert!(matches!(
        &out[0].reason,
        Reason::HandRaiseHeld { why, .. } if matches!(**why, Reason::NotLinked { map_lead_id: 1 })
    ));
    h.apply(Event::Person(person("00QA", "NA", at(3))));
    let out = h.apply(link(1, "00QA", at(5)));
    let cycles = opened(&out);
    assert_eq!(cycles.len(), 1, "{out:#?}");
    assert_eq!(cycles[0].mql_at, at(5));
    assert_eq!(cycles[0].hand_raise.as_ref().unwrap().at, at(0));
    // Too late: linked eight days after the hand-raise (the example waits seven).
    let out = h.apply(form_fill(2, "act2", "Demo Request", at(0)));
    assert_eq!(out.len(), 1);
    h.apply(Event::Person(person("00QB", "NA", at(1))));
    let out = h.apply(link(2, "00QB", at(8 * 24 * 60)));
    assert!(opened(&out).is_empty());
    assert!(
        out.iter()
            .any(|d| matches!(d.reason, Reason::HandRaiseExpired { .. })),
        "{out:#?}"
    );
}

#[test]
fn a_hand_raiser_rule_limited_to_a_segment_passes_over_everyone_else() {
    let mut h = Harness::new();
    h.policy.hand_raisers[0].segment = BTreeMap::from([("region".into(), "EMEA".into())]);
    h.lead("00QA", 1);
    assert!(
        h.apply(form_fill(1, "act1", "Demo Request", at(10)))
            .is_empty()
    );
    h.apply(Event::Person(person("00QE", "emea", at(0))));
    h.apply(link(2, "00QE", at(0)));
    assert_eq!(
        opened(&h.apply(form_fill(2, "act2", "Demo Request", at(10)))).len(),
        1
    );
}

#[test]
fn of_two_rules_naming_one_form_the_first_that_covers_the_person_qualifies_them() {
    let mut h = Harness::new();
    let everyone = h.policy.hand_raisers[0].clone();
    let mut emea = everyone.clone();
    emea.name = "Demo Request (EMEA)".into();
    emea.segment = BTreeMap::from([("region".into(), "EMEA".into())]);
    h.policy.hand_raisers = vec![emea, everyone];
    h.lead("00QA", 1);
    h.apply(Event::Person(person("00QE", "emea", at(0))));
    h.apply(link(2, "00QE", at(0)));
    let rule_of = |out: &[Decision]| {
        let cycles = opened(out);
        assert_eq!(cycles.len(), 1, "{out:#?}");
        cycles[0].hand_raise.as_ref().unwrap().rule.clone()
    };
    let out = h.apply(form_fill(1, "act1", "Demo Request", at(10)));
    assert_eq!(rule_of(&out), "Demo Request");
    let out = h.apply(form_fill(2, "act2", "Demo Request", at(10)));
    assert_eq!(rule_of(&out), "Demo Request (EMEA)");
}

#[test]
fn a_program_status_rule_names_the_program_and_the_status_by_name_or_id() {
    let mut h = Harness::new();
    h.policy.hand_raisers = vec![super::policy::HandRaiserRule {
        name: "Event attended".into(),
        activity_type_id: 104,
        assets: vec!["2026 Customer Summit".into()],
        status: Some("Attended".into()),
        segment: BTreeMap::new(),
    }];
    h.lead("00QA", 1);
    let status = |id: &str, to: &str| {
        Event::Activity(MapActivity {
            map_lead_id: 1,
            activity_id: id.into(),
            type_id: 104,
            asset_id: Some("2001".into()),
            asset_name: Some("2026 Customer Summit".into()),
            status: Some(to.into()),
            campaign: None,
            at: at(10),
        })
    };
    assert!(h.apply(status("p1", "Registered")).is_empty());
    let out = h.apply(status("p2", "attended"));
    assert_eq!(opened(&out).len(), 1);
    assert_eq!(
        opened(&out)[0]
            .hand_raise
            .as_ref()
            .unwrap()
            .status
            .as_deref(),
        Some("attended")
    );
}

fn account(id: &str, target: bool, when: Timestamp) -> Event {
    Event::Account(AccountFacts {
        id: id.into(),
        owner_id: Some("005OWN".into()),
        attributes: Attributes::from(BTreeMap::from([(
            "target_account".to_string(),
            target.to_string(),
        )])),
        modified_at: when,
    })
}

#[test]
fn contacts_carry_their_accounts_target_flag_and_a_target_knob_reaches_them_when_it_flips() {
    let mut h = Harness::new();
    // Target accounts get a threshold of 50; everyone else the default 100.
    let mut knob = threshold("a0TTA", None, 50.0, at(0));
    if let Event::Threshold(t) = &mut knob {
        t.segment = BTreeMap::from([("target_account".into(), "true".into())]);
    }
    h.apply(knob);
    h.apply(account("001ACC", false, at(1)));
    h.apply(Event::Person(person("003C", "NA", at(2))));
    h.apply(link(1, "003C", at(2)));
    assert!(opened(&h.apply(score(1, "s1", 60.0, at(3), None))).is_empty());
    assert_eq!(
        h.state.persons["003C"]
            .facts
            .as_ref()
            .unwrap()
            .attributes
            .get("target_account"),
        Some("false")
    );
    // Sales adds the account to the target list: its contact meets 50 at that instant.
    let out = h.apply(account("001ACC", true, at(10)));
    let cycles = opened(&out);
    assert_eq!(cycles.len(), 1, "{out:#?}");
    assert_eq!(
        (
            cycles[0].mql_at,
            cycles[0].threshold,
            cycles[0].segment.as_str()
        ),
        (at(10), 50.0, "target_account=true")
    );
    // A later version of the contact keeps the account's flag; an older account is a replay.
    h.apply(Event::Person(person("003C", "NA", at(20))));
    assert_eq!(
        h.state.persons["003C"]
            .facts
            .as_ref()
            .unwrap()
            .attributes
            .get("target_account"),
        Some("true")
    );
    assert!(h.apply(account("001ACC", false, at(5))).is_empty());
}

/// A harness under account scoring (30 days), with two accounts owned by 005OWN1 and
/// 005OWN2, and contacts `003A0..003A3` of 001A (MAP leads 0..3) and `003B0..003B3` of 001B
/// (MAP leads 10..13).
fn account_harness() -> Harness {
    let mut h = Harness::new();
    h.policy.score = super::policy::ScoreSource::Account {
        window: SignedDuration::from_hours(24 * 30),
    };
    for (account, owner, first_lead) in [("001A", "005OWN1", 0), ("001B", "005OWN2", 10)] {
        h.apply(Event::Account(AccountFacts {
            id: account.into(),
            owner_id: Some(owner.into()),
            attributes: Attributes::default(),
            modified_at: at(0),
        }));
        for i in 0..4 {
            let id = format!("003{}{i}", &account[3..]);
            let mut p = person(&id, "NA", at(0));
            p.account_id = Some(account.into());
            h.apply(Event::Person(p));
            h.apply(link(first_lead + i, &id, at(0)));
        }
    }
    h
}

#[test]
fn an_account_crossing_through_two_contacts_opens_one_cycle_for_the_tipping_one() {
    let mut h = account_harness();
    assert!(opened(&h.apply(score(0, "c1", 60.0, at(10), None))).is_empty());
    let out = h.apply(score(1, "c2", 50.0, at(20), Some("WEB")));
    let cycles = opened(&out);
    assert_eq!(cycles.len(), 1, "{out:#?}");
    let c = cycles[0];
    assert_eq!(c.crm.id, "003A1", "the contact whose change tipped the sum");
    assert_eq!((c.score, c.threshold), (110.0, 100.0));
    assert_eq!(
        c.owner_id.as_deref(),
        Some("005OWN1"),
        "the account owner's"
    );
    assert_eq!(c.account_id.as_deref(), Some("001A"));
    assert!(matches!(out[0].reason, Reason::AccountQualified { .. }));
    // While it is open, nobody else of the account opens one; the other account is apart.
    let out = h.apply(score(2, "c3", 500.0, at(30), None));
    assert!(opened(&out).is_empty());
    assert!(
        matches!(&out[0].reason, Reason::OpenCycle { external_id } if external_id == "003A1-1")
    );
    assert!(opened(&h.apply(score(10, "c4", 90.0, at(40), None))).is_empty());
    // Rejected: 60 + 50 + 500 were long ago by the time the next change comes; 40 more
    // points alone do not reach 100 then.
    h.apply(edit(
        "003A1-1",
        CycleStatus::Rejected,
        Some("Wrong Person"),
        at(50),
    ));
    let later = at(60 * 24 * 40);
    let out = h.apply(score(3, "c5", 40.0, later, None));
    assert!(opened(&out).is_empty(), "{out:#?}");
    assert_eq!(
        h.state.account_scores["001A"].at(later, SignedDuration::from_hours(24 * 30)),
        40.0
    );
}

#[test]
fn a_hold_is_saved_as_the_reason_it_records() {
    // The person keeps an open cycle's hold by its id alone; the store's rows hold the
    // reason as before, and either form reads back as what was recorded.
    for reason in [
        Reason::OpenCycle {
            external_id: "003A0-1".into(),
        },
        Reason::NoThreshold,
    ] {
        let hold = super::state::Hold::from(reason.clone());
        assert!(hold.is(&reason));
        let saved = serde_json::to_string(&hold).unwrap();
        assert_eq!(saved, serde_json::to_string(&reason).unwrap());
        let loaded: super::state::Hold = serde_json::from_str(&saved).unwrap();
        assert_eq!(loaded, hold);
        assert_eq!(loaded.reason(), reason);
    }
    let open = super::state::Hold::from(Reason::OpenCycle {
        external_id: "003A0-1".into(),
    });
    assert!(!open.is(&Reason::OpenCycle {
        external_id: "003A0-2".into()
    }));
    assert!(!open.is(&Reason::NoThreshold));
}

#[test]
fn the_holders_own_hold_leaves_the_gates_of_the_accounts_other_people_standing() {
    // 003A0 tips the account and opens its cycle; 003A2 records the hold of it. When 003A0's
    // next change records its own hold, no cycle opened or closed: 003A2's gate, which relies
    // on the account's open cycle, still decides its next change without reading anyone.
    let mut h = account_harness();
    assert_eq!(
        opened(&h.apply(score(0, "c1", 120.0, at(10), None))).len(),
        1
    );
    let out = h.apply(score(2, "c2", 10.0, at(20), None));
    assert!(
        matches!(&out[0].reason, Reason::OpenCycle { external_id } if external_id == "003A0-1"),
        "{out:#?}"
    );
    let account = h.state.account_scores.slot("001A").unwrap();
    let epoch = h.state.account_scores.at(account).epoch;
    let gate = h.state.map_leads.get(&2).unwrap().gate;
    assert_eq!(
        gate.account_epoch, epoch,
        "003A2's gate is set on the account"
    );
    assert!(gate.quiet_above);
    let out = h.apply(score(0, "c3", 130.0, at(30), None));
    assert!(
        out.iter().any(|d| d.subject == "003A0"
            && matches!(&d.reason, Reason::OpenCycle { external_id } if external_id == "003A0-1")),
        "{out:#?}"
    );
    assert_eq!(h.state.account_scores.at(account).epoch, epoch);
    assert!(h.apply(score(2, "c4", 20.0, at(40), None)).is_empty());
    // A closed cycle is another matter: the rejection moves the epoch, and 003A2's next
    // change is decided again (nothing holds it back now).
    h.apply(edit(
        "003A0-1",
        CycleStatus::Rejected,
        Some("Bad Timing"),
        at(50),
    ));
    assert_ne!(h.state.account_scores.at(account).epoch, epoch);
    let out = h.apply(score(2, "c5", 30.0, at(60), None));
    assert!(
        !out.is_empty(),
        "003A2's hold is cleared or a cycle opens: {out:#?}"
    );
}

#[test]
fn an_account_knows_an_open_cycle_that_joined_it_before_or_after_its_record_was_made() {
    // An account's record counts its people's open cycles when it is made, so that its
    // first cycle opens without a scan of them; a contact who brings an open cycle along,
    // to an account with a record or to one without, must still hold the others back.
    for joiner_first in [true, false] {
        let mut h = account_harness();
        assert_eq!(
            opened(&h.apply(score(0, "c1", 120.0, at(10), None))).len(),
            1
        );
        let mut mover = person("003A0", "NA", at(20));
        mover.account_id = Some("001C".into());
        let mut other = person("003C1", "NA", at(20));
        other.account_id = Some("001C".into());
        let arrivals = if joiner_first {
            [mover, other]
        } else {
            [other, mover]
        };
        for p in arrivals {
            h.apply(Event::Person(p));
        }
        h.apply(link(30, "003C1", at(20)));
        let out = h.apply(score(30, "c2", 500.0, at(30), None));
        assert!(
            opened(&out).is_empty(),
            "joiner first: {joiner_first}: {out:#?}"
        );
        assert!(
            out.iter().any(|d| matches!(&d.reason,
                Reason::OpenCycle { external_id } if external_id == "003A0-1")),
            "joiner first: {joiner_first}: {out:#?}"
        );
        // The account the cycle left has none open now: its next crossing opens one.
        let out = h.apply(score(1, "c3", 150.0, at(40), None));
        assert_eq!(opened(&out).len(), 1, "{out:#?}");
    }
}

/// Events under account scoring: score changes (absolute values, unique ids) of the eight
/// contacts' leads, knob turns of the default, and reps' edits of the first cycles.
fn arb_account_event() -> impl Strategy<Value = (u16, Event)> {
    let lead = |i: u8| {
        if i < 4 {
            i64::from(i)
        } else {
            10 + i64::from(i - 4)
        }
    };
    prop_oneof![
        6 => (0u8..8, 0u32..120).prop_map(move |(i, s)| score(
            lead(i),
            "",
            f64::from(s),
            Timestamp::UNIX_EPOCH,
            None
        )),
        1 => (0u32..200).prop_map(|s| threshold("a0TD", None, f64::from(s), Timestamp::UNIX_EPOCH)),
        1 => (0u8..8, any::<bool>()).prop_map(move |(i, reject)| {
            let account = if i < 4 { "A" } else { "B" };
            edit(
                &format!("003{account}{}-1", i % 4),
                if reject { CycleStatus::Rejected } else { CycleStatus::Working },
                Some("Bad Timing"),
                Timestamp::UNIX_EPOCH,
            )
        }),
    ]
    // Gaps up to 20 days: changes fall out of the 30-day window.
    .prop_flat_map(|e| (1u16..28_800, Just(e)))
}

/// [`timed`] for the account harness: after its set-up at `at(0)`.
fn timed_after_setup(raw: &[(u16, Event)]) -> Vec<Event> {
    timed(raw)
        .into_iter()
        .map(|e| match e {
            Event::Score(mut s) => {
                s.at += SignedDuration::from_hours(1);
                Event::Score(s)
            }
            Event::Threshold(mut t) => {
                t.modified_at += SignedDuration::from_hours(1);
                Event::Threshold(t)
            }
            Event::CycleEdit(mut c) => {
                c.modified_at += SignedDuration::from_hours(1);
                Event::CycleEdit(c)
            }
            Event::Person(mut p) => {
                p.modified_at += SignedDuration::from_hours(1);
                Event::Person(p)
            }
            Event::Activity(mut a) => {
                a.at += SignedDuration::from_hours(1);
                Event::Activity(a)
            }
            other => other,
        })
        .collect()
}

/// [`arb_account_event`], a contact moving to the other account, to a third one that has no
/// record until its first person arrives, or back (with an open cycle or not), or a Demo
/// Request form fill: what the engine's account shortcuts (the slot kept beside a person,
/// where an account's open cycle is, that none of its people has one) must follow.
fn arb_account_event_or_move() -> impl Strategy<Value = (u16, Event)> {
    prop_oneof![
        6 => arb_account_event(),
        1 => (0u8..8, 0u8..3, 1u16..28_800).prop_map(|(i, to, gap)| {
            let home = if i < 4 { 'A' } else { 'B' };
            let mut p = person(&format!("003{home}{}", i % 4), "NA", Timestamp::UNIX_EPOCH);
            let other = if home == 'A' { 'B' } else { 'A' };
            let to = [home, other, 'C'][usize::from(to)];
            p.account_id = Some(format!("001{to}").into());
            (gap, Event::Person(p))
        }),
        1 => (0u8..8, 1u16..28_800).prop_map(|(i, gap)| {
            let lead = if i < 4 { i64::from(i) } else { 10 + i64::from(i - 4) };
            (gap, form_fill(lead, "", "Demo Request", Timestamp::UNIX_EPOCH))
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn under_account_scoring_the_shortcut_decides_what_the_long_way_decides(
        raw in prop::collection::vec(arb_account_event_or_move(), 1..80),
    ) {
        let mut quick = account_harness();
        let mut long = account_harness();
        long.state.no_shortcuts = true;
        let (mut fast, mut full) = (Vec::new(), Vec::new());
        for e in timed_after_setup(&raw) {
            // A contact who takes an open cycle along to an account with one of its own
            // leaves it with two, and the hold then names either: the shortcut keeps the one
            // recorded, the long way the first of the account's people. Those moves are not
            // compared; a move with an open cycle to an account without one is.
            if let Event::Person(p) = &e
                && quick.state.persons.get(&p.crm.id).and_then(|x| x.open_cycle()).is_some()
                && quick.state.persons.iter().any(|(id, other)| {
                    *id != p.crm.id
                        && other.facts.as_ref().and_then(|f| f.account_id.as_ref()) == p.account_id.as_ref()
                        && other.open_cycle().is_some()
                })
            {
                continue;
            }
            fast.extend(quick.apply(e.clone()));
            full.extend(long.apply(e));
        }
        prop_assert_eq!(serde_json::to_string(&fast).unwrap(), serde_json::to_string(&full).unwrap());
    }

    #[test]
    fn at_most_one_open_cycle_per_account_and_its_score_is_its_history_added_up(
        raw in prop::collection::vec(arb_account_event(), 1..60),
    ) {
        let window = SignedDuration::from_hours(24 * 30);
        let mut h = account_harness();
        // Every change applied so far: (account, instant, points).
        let mut history: Vec<(&str, Timestamp, f64)> = Vec::new();
        let mut last: BTreeMap<i64, f64> = BTreeMap::new();
        for e in timed_after_setup(&raw) {
            if let Event::Score(s) = &e {
                let before = last.insert(s.map_lead_id, s.new_value).unwrap_or(0.0);
                let account = if s.map_lead_id < 10 { "001A" } else { "001B" };
                history.push((account, s.at, s.new_value - before));
            }
            let now = e.at();
            h.apply(e);
            for account in ["001A", "001B"] {
                let recomputed: f64 = history
                    .iter()
                    .filter(|(a, t, _)| *a == account && *t > now - window && *t <= now)
                    .map(|(_, _, d)| d)
                    .sum();
                let kept = h.state.account_scores.get(account).map_or(0.0, |s| s.at(now, window));
                prop_assert!((kept - recomputed).abs() < 1e-9, "{account} at {now}: {kept} != {recomputed}");
                let open = h.state.account_people[account]
                    .iter()
                    .filter(|slot| h.state.persons.at(**slot).open_cycle().is_some())
                    .count();
                prop_assert!(open <= 1, "{account}: {open} open cycles");
            }
        }
    }
}

#[test]
fn a_hand_raiser_rule_for_target_accounts_reaches_contacts_through_their_account() {
    let mut h = Harness::new();
    h.policy.hand_raisers[0].segment = BTreeMap::from([("target_account".into(), "true".into())]);
    h.apply(account("001ACC", false, at(0)));
    h.apply(Event::Person(person("003C", "NA", at(0))));
    h.apply(link(1, "003C", at(0)));
    assert!(
        h.apply(form_fill(1, "act1", "Demo Request", at(5)))
            .is_empty()
    );
    h.apply(account("001ACC", true, at(10)));
    let out = h.apply(form_fill(1, "act2", "Demo Request", at(15)));
    assert_eq!(opened(&out).len(), 1, "{out:#?}");
}
