//! The engine's parameters: score source, default threshold, exclusion rules, outcomes,
//! status names and SLA teams. Built from the mapping file (`crate::mapping`) and handed to
//! every call; the engine never reads a file itself.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use regex::Regex;

use super::model::{AlertChannel, Attributes, MapActivity, Outcome};
use super::sla::BusinessCalendar;

/// How the score a threshold is compared with is made.
#[derive(Clone, Debug, PartialEq)]
pub enum ScoreSource {
    /// The MAP's total score field.
    Total,
    /// Behaviour part plus demographic part.
    BehaviorPlusDemographic,
    /// Demographic part plus a behaviour part whose every change fades with this half-life.
    TimeDecayed { half_life: SignedDuration },
    /// Account (demand-unit) scoring: a contact of an account is compared by the account's
    /// score, the sum of the total-score changes of its people over the last `window`; a
    /// person without an account by their own total.
    Account { window: SignedDuration },
}

/// An exclusion on a mapped attribute: people whose attribute holds one of `values`
/// (compared case-insensitively) are excluded.
#[derive(Clone, Debug)]
pub struct AttributeRule {
    pub attribute: String,
    pub values: Vec<String>,
}

/// The seven exclusion rules; `None` switches a rule off.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    /// CRM statuses that exclude (Rejected, Spam, Disqualified), case-insensitive.
    pub excluded_statuses: Option<Vec<String>>,
    /// An open opportunity on the person's account.
    pub open_opportunity: bool,
    /// An opportunity won or lost within this window.
    pub recent_opportunity: Option<SignedDuration>,
    /// An MQL within this window.
    pub recent_mql: Option<SignedDuration>,
    /// Titles matching any of these patterns (student, intern, ...).
    pub titles: Option<Vec<Regex>>,
    pub regions: Option<AttributeRule>,
    pub verticals: Option<AttributeRule>,
}

/// What happens after a cycle closes with an outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct OutcomePolicy {
    /// How long the person may not become an MQL again.
    pub cooldown: SignedDuration,
    /// The status the person gets (`Nurture` for "Not now"), if any.
    pub person_status: Option<String>,
}

/// An SLA team: whom it covers, how fast it must accept, and whom MQLs move to.
#[derive(Clone, Debug)]
pub struct Team {
    pub name: String,
    /// Attribute = value pairs; the most specific matching team covers a person.
    pub matches: BTreeMap<String, String>,
    pub accept_within_hours: f64,
    /// Business hours after the MQL (or the last reassignment) when an Open cycle moves on.
    pub reassign_after_hours: Option<f64>,
    /// Round-robin pool of owner ids.
    pub pool: Vec<String>,
    pub alert: AlertChannel,
    pub calendar: BusinessCalendar,
}

/// A running SLA clock: when the rep must have accepted, and when the cycle moves on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlaClock {
    pub due: Timestamp,
    pub reassign_at: Option<Timestamp>,
}

impl Team {
    /// The SLA of a cycle its rep can see from `start` (its record written, or reassigned to
    /// them then): due and reassignment in business hours of the team's calendar. The one rule
    /// for it: the engine and the writer (the `SLA_Due__c` of a record's first write) both
    /// call it.
    pub fn sla_from(&self, start: Timestamp) -> SlaClock {
        SlaClock {
            due: self
                .calendar
                .add_business_hours(start, self.accept_within_hours),
            reassign_at: self
                .reassign_after_hours
                .map(|h| self.calendar.add_business_hours(start, h)),
        }
    }
}

/// What a status in a person's CRM history says about the MQL cycle open then.
#[derive(Clone, Debug, PartialEq)]
pub enum HistoricStatus {
    /// A rep accepted the MQL: the cycle is Working from then (its SAL date).
    Accepted,
    /// A rep sent the person back: the cycle is Rejected then, with this rejection reason.
    Rejected { reason: String },
}

/// A hand-raiser rule: MAP activities that make a person an MQL at once, whatever the score
/// (a Demo Request form fill, an event attended). The other conditions still hold: linked,
/// not excluded, no open cycle, not cooling down, a threshold (for reference) resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct HandRaiserRule {
    /// How the audit, `explain` and the MQL record name it ("Demo Request").
    pub name: String,
    /// The MAP's activity type id (Fill Out Form 2, Change Status in Progression 104).
    pub activity_type_id: u32,
    /// Asset ids or names (forms, programs), compared case-insensitively; empty: any asset.
    pub assets: Vec<String>,
    /// The program status moved to ("Attended", or its id), case-insensitive; `None`: any.
    pub status: Option<String>,
    /// Attribute = value pairs the person must match (`target_account = true`); empty:
    /// everyone.
    pub segment: BTreeMap<String, String>,
}

impl HandRaiserRule {
    /// Whether the activity is one this rule names (its type, asset and status).
    pub fn names(&self, activity: &MapActivity) -> bool {
        activity.type_id == self.activity_type_id
            && (self.assets.is_empty()
                || self.assets.iter().any(|asset| {
                    // By name first: rules name forms and programs as people do.
                    activity
                        .asset_name
                        .as_deref()
                        .is_some_and(|name| same(name, asset))
                        || activity
                            .asset_id
                            .as_deref()
                            .is_some_and(|id| same(id, asset))
                }))
            && self.status.as_deref().is_none_or(|wanted| {
                activity
                    .status
                    .as_deref()
                    .is_some_and(|status| same(status, wanted))
            })
    }

    /// Whether the rule applies to a person with these attributes.
    pub fn covers(&self, attributes: &Attributes) -> bool {
        self.segment
            .iter()
            .all(|(k, v)| attributes.get(k).is_some_and(|a| a.eq_ignore_ascii_case(v)))
    }
}

impl Policy {
    /// The first hand-raiser rule that names the activity (its index), whatever the person.
    pub fn hand_raiser_naming(&self, activity: &MapActivity) -> Option<usize> {
        self.hand_raisers.iter().position(|r| r.names(activity))
    }

    /// The rule a hand-raise of a person with these attributes acts under: the first that
    /// names the activity and covers them. `named` is [`Policy::hand_raiser_naming`]'s answer
    /// for the activity, so that only its segment and the rules after it are tested again.
    pub fn hand_raiser_for(
        &self,
        (activity, named): (&MapActivity, usize),
        attributes: &Attributes,
    ) -> Option<&HandRaiserRule> {
        let rules = &self.hand_raisers;
        if rules[named].covers(attributes) {
            return Some(&rules[named]);
        }
        rules[named + 1..]
            .iter()
            .find(|r| r.names(activity) && r.covers(attributes))
    }
}

/// The same asset or status name, ignoring ASCII case and surrounding whitespace. Names
/// that start and end with a printable ASCII character (nearly all) are compared as they are:
/// trimming decodes their ends as characters, for every activity of the rule's type.
fn same(a: &str, b: &str) -> bool {
    // The common match (the rule spells the asset as the MAP does) is settled by comparing
    // the bytes at once, before the comparison that folds ASCII case a byte at a time.
    if a == b {
        return true;
    }
    let bare = |s: &str| {
        let bytes = s.as_bytes();
        bytes.first().is_none_or(u8::is_ascii_graphic)
            && bytes.last().is_none_or(u8::is_ascii_graphic)
    };
    if bare(a) && bare(b) {
        a.eq_ignore_ascii_case(b)
    } else {
        a.trim().eq_ignore_ascii_case(b.trim())
    }
}

/// Everything the engine needs to decide.
#[derive(Clone, Debug)]
pub struct Policy {
    pub score: ScoreSource,
    pub default_threshold: Option<f64>,
    pub rules: Rules,
    /// Rejection reason (as the CRM picklist has it) -> outcome.
    pub rejection_outcomes: BTreeMap<String, Outcome>,
    pub outcomes: BTreeMap<Outcome, OutcomePolicy>,
    /// Status stamped on the person at MQL ("Marketing Qualified") and at acceptance.
    pub mql_status: String,
    pub sal_status: Option<String>,
    /// What a person's CRM status meant before mqlsync: a backfill replays the CRM's status
    /// history onto the cycles it rebuilds (their SAL and closed dates).
    pub status_history: BTreeMap<String, HistoricStatus>,
    pub teams: Vec<Team>,
    /// Hand-raiser rules, in the mapping's order: the first that names an activity and
    /// covers the person is the one a cycle records.
    pub hand_raisers: Vec<HandRaiserRule>,
    /// How long a hand-raise of a MAP lead without a CRM record waits for its link (a new
    /// person's form fill reaches the CRM minutes later, through the MAP's CRM sync).
    pub hand_raise_wait_for_link: SignedDuration,
}

impl Policy {
    /// The MAP activity types the hand-raiser rules name, ascending, each once.
    pub fn hand_raiser_type_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .hand_raisers
            .iter()
            .map(|r| r.activity_type_id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The team a cycle records by name (`Cycle::team`).
    pub fn team_named(&self, name: &str) -> Option<&Team> {
        self.teams.iter().find(|t| t.name == name)
    }

    /// The most specific team covering these attributes.
    pub fn team_for(&self, attributes: &Attributes) -> Option<&Team> {
        self.teams
            .iter()
            .filter(|team| {
                team.matches
                    .iter()
                    .all(|(k, v)| attributes.get(k).is_some_and(|a| a.eq_ignore_ascii_case(v)))
            })
            .max_by_key(|team| team.matches.len())
    }

    /// The outcome a rejection reason maps to (case-insensitive).
    pub fn outcome_of(&self, reason: &str) -> Option<Outcome> {
        self.rejection_outcomes
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(reason.trim()))
            .map(|(_, o)| *o)
    }

    /// A small policy for tests and examples: total score, default threshold 100, every rule
    /// on with the contract's defaults, one team in UTC.
    pub fn example() -> Policy {
        let day = SignedDuration::from_hours(24);
        Policy {
            score: ScoreSource::Total,
            default_threshold: Some(100.0),
            rules: Rules {
                excluded_statuses: Some(vec![
                    "Rejected".into(),
                    "Spam".into(),
                    "Disqualified".into(),
                ]),
                open_opportunity: true,
                recent_opportunity: Some(day * 30),
                recent_mql: Some(day * 15),
                titles: Some(vec![Regex::new(r"(?i)\bstudent\b").expect("regex")]),
                regions: Some(AttributeRule {
                    attribute: "region".into(),
                    values: vec!["Antarctica".into()],
                }),
                verticals: Some(AttributeRule {
                    attribute: "vertical".into(),
                    values: vec!["Gambling".into()],
                }),
            },
            rejection_outcomes: [
                ("Bad Timing", Outcome::NotNow),
                ("Not Interested Now", Outcome::NotNow),
                ("Wrong Person", Outcome::NotMe),
                ("Spam", Outcome::Fail),
                ("Student", Outcome::Fail),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            outcomes: [
                (Outcome::Success, None, SignedDuration::ZERO),
                (Outcome::NotNow, Some("Nurture"), day * 30),
                (Outcome::NotMe, Some("Nurture"), day * 90),
                (Outcome::Fail, Some("Rejected"), day * 180),
            ]
            .into_iter()
            .map(|(o, status, cooldown)| {
                (
                    o,
                    OutcomePolicy {
                        cooldown,
                        person_status: status.map(str::to_string),
                    },
                )
            })
            .collect(),
            mql_status: "Marketing Qualified".into(),
            sal_status: Some("Sales Accepted".into()),
            status_history: [
                ("Sales Accepted", HistoricStatus::Accepted),
                ("Working - Contacted", HistoricStatus::Accepted),
                (
                    "Nurture",
                    HistoricStatus::Rejected {
                        reason: "Bad Timing".into(),
                    },
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            teams: vec![Team {
                name: "SDR".into(),
                matches: BTreeMap::new(),
                accept_within_hours: 4.0,
                reassign_after_hours: Some(8.0),
                pool: vec!["005A".into(), "005B".into(), "005C".into()],
                alert: AlertChannel::Task,
                calendar: BusinessCalendar::nine_to_five(jiff::tz::TimeZone::UTC),
            }],
            hand_raisers: vec![HandRaiserRule {
                name: "Demo Request".into(),
                activity_type_id: 2,
                assets: vec!["Demo Request".into()],
                status: None,
                segment: BTreeMap::new(),
            }],
            hand_raise_wait_for_link: day * 7,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::same;

    proptest! {
        /// The shortcut for bare names answers what trimming both answers, with ASCII and
        /// Unicode whitespace (a no-break space) at either end or inside, and other letters.
        #[test]
        fn names_compare_as_trimmed_whatever_their_ends(
            a in "[ \t\u{a0}aAbé1-]{0,6}",
            b in "[ \t\u{a0}aAbé1-]{0,6}",
        ) {
            prop_assert_eq!(same(&a, &b), a.trim().eq_ignore_ascii_case(b.trim()));
        }
    }

    #[test]
    fn an_asset_name_matches_in_any_case_and_with_spaces_around() {
        assert!(same("Demo Request", "demo request"));
        assert!(same(" Demo Request\t", "DEMO REQUEST"));
        assert!(same("\u{a0}Attended", "attended"));
        assert!(!same("Demo Request", "Demo  Request"));
        assert!(!same("1001", "Demo Request"));
    }
}
