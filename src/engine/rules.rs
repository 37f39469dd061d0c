//! The exclusion rules of the contract: a person whose score reached the threshold is still
//! not an MQL when one of them matches. Each is switched and parametrised by the mapping
//! (`Policy::rules`); the first that matches, in the contract's order, is the reason given.

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::model::{Cycle, Opportunity, PersonFacts, RuleKind};
use super::policy::{AttributeRule, Rules};

/// What a rule saw when it matched.
#[derive(Clone, Debug, PartialEq)]
pub struct Exclusion {
    pub rule: RuleKind,
    pub detail: String,
}

fn excluded(rule: RuleKind, detail: String) -> Option<Exclusion> {
    Some(Exclusion { rule, detail })
}

fn attribute_rule(rule: &AttributeRule, person: &PersonFacts, kind: RuleKind) -> Option<Exclusion> {
    let value = person.attributes.get(&rule.attribute)?;
    rule.values
        .iter()
        .any(|v| v.trim().eq_ignore_ascii_case(value.trim()))
        .then(|| Exclusion {
            rule: kind,
            detail: format!("{} {value} is not supported", rule.attribute),
        })
}

/// The first exclusion that matches a person at `at`, if any.
pub fn first_exclusion<'a>(
    rules: &Rules,
    person: &PersonFacts,
    opportunities: impl IntoIterator<Item = &'a Opportunity>,
    cycles: &[Cycle],
    at: Timestamp,
) -> Option<Exclusion> {
    if let (Some(statuses), Some(status)) = (&rules.excluded_statuses, &person.status)
        && statuses
            .iter()
            .any(|s| s.eq_ignore_ascii_case(status.trim()))
    {
        return excluded(RuleKind::Status, format!("status {status}"));
    }
    let opportunities: Vec<&Opportunity> = opportunities.into_iter().collect();
    if rules.open_opportunity
        && let Some(open) = opportunities
            .iter()
            .find(|o| !o.is_closed && o.created_at <= at)
    {
        return excluded(
            RuleKind::OpenOpportunity,
            format!(
                "opportunity {} is open on account {}",
                open.id, open.account_id
            ),
        );
    }
    // Calendar dates cost a time-zone conversion each: only with a closed opportunity.
    if let Some(window) = rules.recent_opportunity
        && opportunities.iter().any(|o| o.is_closed)
    {
        let since = (at - window).to_zoned(TimeZone::UTC).date();
        let today = at.to_zoned(TimeZone::UTC).date();
        if let Some(recent) = opportunities
            .iter()
            .find(|o| o.is_closed && o.close_date.is_some_and(|d| since <= d && d <= today))
        {
            let verdict = if recent.is_won { "won" } else { "lost" };
            return excluded(
                RuleKind::RecentOpportunity,
                format!(
                    "opportunity {} {verdict} on {}",
                    recent.id,
                    recent.close_date.expect("closed with a date")
                ),
            );
        }
    }
    if let Some(window) = rules.recent_mql
        && let Some(last) = cycles.iter().map(|c| c.mql_at).filter(|t| *t <= at).max()
        && at.duration_since(last) < window
    {
        return excluded(RuleKind::RecentMql, format!("last MQL at {last}"));
    }
    if let (Some(patterns), Some(title)) = (&rules.titles, &person.title)
        && let Some(pattern) = patterns.iter().find(|p| p.is_match(title))
    {
        return excluded(
            RuleKind::Title,
            format!("title {title:?} matches {}", pattern.as_str()),
        );
    }
    if let Some(rule) = &rules.regions
        && let Some(hit) = attribute_rule(rule, person, RuleKind::Region)
    {
        return Some(hit);
    }
    if let Some(rule) = &rules.verticals
        && let Some(hit) = attribute_rule(rule, person, RuleKind::Vertical)
    {
        return Some(hit);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::{CrmKind, CrmRef, CycleStatus};
    use crate::engine::policy::Policy;
    use jiff::SignedDuration;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn person() -> PersonFacts {
        PersonFacts {
            crm: CrmRef {
                kind: CrmKind::Contact,
                id: "003A".into(),
            },
            status: Some("Open - Not Contacted".into()),
            owner_id: None,
            title: Some("VP Marketing".into()),
            account_id: Some("001A".into()),
            converted: false,
            attributes: [("region", "EMEA"), ("vertical", "Software")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            prior_mql_at: None,
            modified_at: ts("2026-01-01T00:00:00Z"),
        }
    }

    fn opp(closed: Option<(&str, bool)>) -> Opportunity {
        Opportunity {
            id: "006A".into(),
            account_id: "001A".into(),
            is_closed: closed.is_some(),
            is_won: closed.is_some_and(|(_, won)| won),
            close_date: closed.map(|(d, _)| d.parse().unwrap()),
            created_at: ts("2025-12-01T00:00:00Z"),
            modified_at: ts("2025-12-01T00:00:00Z"),
        }
    }

    fn cycle_at(at: &str) -> Cycle {
        Cycle {
            external_id: "003A-1".into(),
            crm: person().crm,
            map_lead_id: None,
            number: 1,
            status: CycleStatus::Rejected,
            score: 0.0,
            threshold: 0.0,
            threshold_id: None,
            segment: "default".into(),
            campaign: None,
            owner_at_mql: None,
            owner_id: None,
            team: None,
            mql_at: ts(at),
            sal_at: None,
            closed_at: None,
            rejection_reason: None,
            outcome: None,
            sla_due_at: None,
            reassign_at: None,
            overdue: false,
            reassignments: 0,
            backfilled: false,
            written_at: None,
            hand_raise: None,
            account_id: None,
            note: None,
            crm_modified_at: None,
            crm_versions: Box::default(),
        }
    }

    fn rule_of(
        p: &PersonFacts,
        opps: &[Opportunity],
        cycles: &[Cycle],
        at: &str,
    ) -> Option<RuleKind> {
        first_exclusion(&Policy::example().rules, p, opps, cycles, ts(at)).map(|e| e.rule)
    }

    const NOW: &str = "2026-03-01T12:00:00Z";

    #[test]
    fn a_clean_person_is_not_excluded() {
        assert_eq!(rule_of(&person(), &[], &[], NOW), None);
    }

    #[test]
    fn status_rejected_or_spam_excludes() {
        let mut p = person();
        p.status = Some("spam".into());
        assert_eq!(rule_of(&p, &[], &[], NOW), Some(RuleKind::Status));
    }

    #[test]
    fn an_open_opportunity_on_the_account_excludes() {
        assert_eq!(
            rule_of(&person(), &[opp(None)], &[], NOW),
            Some(RuleKind::OpenOpportunity)
        );
    }

    #[test]
    fn an_opportunity_closed_within_thirty_days_excludes_and_after_does_not() {
        let won = opp(Some(("2026-02-01", true)));
        assert_eq!(
            rule_of(&person(), std::slice::from_ref(&won), &[], NOW),
            Some(RuleKind::RecentOpportunity)
        );
        assert_eq!(
            rule_of(&person(), &[won], &[], "2026-03-04T00:00:00Z"),
            None
        );
        let lost = opp(Some(("2026-02-28", false)));
        assert_eq!(
            rule_of(&person(), &[lost], &[], NOW),
            Some(RuleKind::RecentOpportunity)
        );
    }

    #[test]
    fn an_mql_within_fifteen_days_excludes() {
        let recent = cycle_at("2026-02-20T00:00:00Z");
        assert_eq!(
            rule_of(&person(), &[], &[recent], NOW),
            Some(RuleKind::RecentMql)
        );
        let old = cycle_at("2026-02-10T00:00:00Z");
        assert_eq!(rule_of(&person(), &[], &[old], NOW), None);
    }

    #[test]
    fn student_titles_unsupported_regions_and_verticals_exclude() {
        let mut p = person();
        p.title = Some("PhD Student".into());
        assert_eq!(rule_of(&p, &[], &[], NOW), Some(RuleKind::Title));
        let mut p = person();
        p.attributes.insert("region", "antarctica");
        assert_eq!(rule_of(&p, &[], &[], NOW), Some(RuleKind::Region));
        let mut p = person();
        p.attributes.insert("vertical", "Gambling");
        assert_eq!(rule_of(&p, &[], &[], NOW), Some(RuleKind::Vertical));
    }

    #[test]
    fn every_rule_can_be_switched_off() {
        let mut p = person();
        p.status = Some("Rejected".into());
        p.title = Some("Student".into());
        p.attributes.insert("region", "Antarctica");
        p.attributes.insert("vertical", "Gambling");
        let opps = [opp(None), opp(Some(("2026-02-27", true)))];
        let cycles = [cycle_at("2026-02-28T00:00:00Z")];
        let off = Rules::default();
        assert_eq!(first_exclusion(&off, &p, &opps, &cycles, ts(NOW)), None);
        // And the windows are parameters: a 1-day re-MQL window lets a 3-day-old MQL pass.
        let short = Rules {
            recent_mql: Some(SignedDuration::from_hours(24)),
            ..Rules::default()
        };
        assert_eq!(first_exclusion(&short, &p, &[], &cycles, ts(NOW)), None);
    }
}
