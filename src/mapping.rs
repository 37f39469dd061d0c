//! The mapping: which CRM objects and fields, which MAP fields, which attributes segments
//! and rules match on, the exclusion rules, outcomes and SLA teams. Loaded from
//! `mappings/*.toml` (the shipped default is `mappings/salesforce-marketo.toml`) and turned
//! into the engine's [`Policy`]. Every error names the file, the line and the key.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use jiff::SignedDuration;
use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use regex::Regex;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::engine::model::{AlertChannel, Outcome};
use crate::engine::policy::{
    AttributeRule, HandRaiserRule, HistoricStatus, OutcomePolicy, Policy, Rules, ScoreSource, Team,
};
use crate::engine::sla::{BusinessCalendar, WeekdayKey};

/// The default mapping, embedded so that `mqlsync` runs with no file at hand.
pub const DEFAULT_MAPPING: &str = include_str!("../mappings/salesforce-marketo.toml");
/// How the embedded default is named in messages.
pub const DEFAULT_MAPPING_NAME: &str = "mappings/salesforce-marketo.toml (built in)";

/// A mapping that cannot be used: names the file, line and key, says what is allowed.
#[derive(Debug, thiserror::Error)]
#[error("{}: {key}: {message}", location(file, *line))]
pub struct MappingError {
    pub file: String,
    pub line: usize,
    pub key: String,
    pub message: String,
}

fn location(file: &str, line: usize) -> String {
    if line == 0 {
        file.to_string()
    } else {
        format!("{file}:{line}")
    }
}

/// The threshold custom object.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdObject {
    pub object: String,
    pub score: String,
    pub effective_from: String,
    pub effective_to: String,
    pub active: String,
    pub reason: String,
    /// The knob's consequence, written by mqlsync on each record (all opt-in: the fields
    /// must exist): the MQLs a week its threshold would have made over the last
    /// `report.feedback_weeks`, what its segment really had, and the day they were counted.
    #[serde(default)]
    pub projected_weekly_mqls: Option<String>,
    #[serde(default)]
    pub actual_weekly_mqls: Option<String>,
    #[serde(default)]
    pub feedback_date: Option<String>,
    /// Deleted records are read through queryAll (`IsDeleted`).
    #[serde(default = "default_true")]
    pub history: bool,
}

/// The MQL custom object: one record per cycle.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqlObject {
    pub object: String,
    pub external_id: String,
    pub lead: String,
    pub contact: String,
    pub cycle_number: String,
    pub status: String,
    pub rejection_reason: String,
    pub outcome: String,
    pub score: String,
    pub threshold: String,
    pub threshold_id: String,
    pub segment: String,
    pub campaign_id: String,
    pub campaign_name: String,
    pub owner_at_mql: String,
    pub team: String,
    pub mql_date: String,
    pub sal_date: String,
    pub closed_date: String,
    pub sla_due: String,
    pub overdue: String,
    pub reassignment_count: String,
    pub backfilled: String,
    pub note: String,
    /// A text field saying what made a hand-raiser cycle an MQL (rule, activity, asset).
    /// Written on hand-raiser cycles only, so an object without it serves score crossings.
    #[serde(default)]
    pub qualified_by: Option<String>,
}

/// Lead or Contact fields mqlsync reads and stamps.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PersonObject {
    pub object: String,
    pub status: String,
    pub owner: String,
    pub title: String,
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub converted: Option<String>,
    pub mql_date_recent: String,
    pub mql_date_original: String,
    pub sal_date_recent: String,
    pub sal_date_original: String,
    pub mql_count: String,
    /// Fields where the org kept MQL dates before mqlsync (a date or datetime field, e.g. one a
    /// Marketo flow stamped): read with the record, the earliest stays the person's original
    /// MQL date. None by default.
    #[serde(default)]
    pub prior_mql_dates: Vec<String>,
}

/// The account object, read when an attribute is read on it (`[attributes.*] account`) or a
/// target-account list names accounts: its contacts carry its attributes.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountObject {
    pub object: String,
    #[serde(default = "default_owner")]
    pub owner: String,
    #[serde(default = "default_name")]
    pub name: String,
}

fn default_owner() -> String {
    "OwnerId".into()
}
fn default_name() -> String {
    "Name".into()
}

/// A list of target accounts kept in the mapping: the accounts it names (by id or name) carry
/// `attribute` = `true`, the others `false` unless a field says otherwise.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetAccounts {
    pub attribute: Spanned<String>,
    #[serde(default)]
    pub accounts: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CrmSection {
    pub threshold: ThresholdObject,
    pub mql: MqlObject,
    pub lead: PersonObject,
    pub contact: PersonObject,
    #[serde(default = "default_opportunity")]
    pub opportunity: String,
    /// The object of new-MQL alert tasks.
    #[serde(default = "default_task")]
    pub task: String,
    /// The task's text field that holds the alert's outbox key: looked up before a create,
    /// so that a task is never created twice (a Task has no external id to upsert by).
    #[serde(default = "default_task_alert_key")]
    pub task_alert_key: String,
    /// Read only when set: see [`AccountObject`].
    #[serde(default)]
    pub account: Option<AccountObject>,
}

/// The MAP's fields.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MapSection {
    pub total_score: String,
    pub behavior_score: Option<String>,
    pub demographic_score: Option<String>,
    pub crm_lead_id: String,
    pub crm_contact_id: String,
    /// Activity type of a score change (Marketo: 22, Change Score).
    pub score_activity_type: i64,
    /// How long a hand-raise of a MAP lead without a CRM record waits for the MAP's CRM sync
    /// to link it (a new person's form fill reaches the CRM minutes later). Default 7.
    #[serde(default)]
    pub hand_raise_wait_for_link_days: Option<Spanned<i64>>,
}

/// A hand-raiser rule as written (`[[hand_raisers]]`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HandRaiserSection {
    pub name: Spanned<String>,
    /// The MAP's activity type id (Marketo: Fill Out Form 2, Change Status in Progression 104).
    pub activity_type_id: Spanned<i64>,
    /// Asset ids or names (forms, programs); absent or empty: any asset of the type.
    #[serde(default)]
    pub assets: Vec<String>,
    /// The program status moved to (its name or id); absent: any.
    #[serde(default)]
    pub status: Option<String>,
    /// Attribute = value pairs the person must match; absent: everyone.
    #[serde(default)]
    pub segment: BTreeMap<String, Spanned<String>>,
}

/// Where one attribute is read on each side.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeFields {
    pub lead: Option<String>,
    pub contact: Option<String>,
    /// A field of the account (`crm.account`): contacts carry the value of their account's,
    /// over their own field's.
    #[serde(default)]
    pub account: Option<Spanned<String>>,
    /// The field of the threshold object that matches on this attribute (segment attributes).
    pub threshold: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreSection {
    /// `total`, `behavior_plus_demographic`, `time_decayed` or `account`.
    pub source: Spanned<String>,
    pub half_life_days: Option<Spanned<f64>>,
    /// `account`: the window over which the account's people's score changes add up (30).
    #[serde(default)]
    pub account_window_days: Option<Spanned<f64>>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdsSection {
    /// Applies where no threshold record matches; absent: no MQLs there.
    pub default: Option<Spanned<f64>>,
}

fn default_true() -> bool {
    true
}
fn default_opportunity() -> String {
    "Opportunity".into()
}
fn default_task() -> String {
    "Task".into()
}
fn default_task_alert_key() -> String {
    "MQL_Alert_Key__c".into()
}

/// One exclusion rule's switch and parameters.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default)]
    pub statuses: Option<Vec<String>>,
    #[serde(default)]
    pub days: Option<Spanned<i64>>,
    #[serde(default)]
    pub patterns: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub attribute: Option<Spanned<String>>,
    #[serde(default)]
    pub unsupported: Option<Vec<String>>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RulesSection {
    pub status: RuleSection,
    pub open_opportunity: RuleSection,
    pub recent_opportunity: RuleSection,
    pub recent_mql: RuleSection,
    pub title: RuleSection,
    pub region: RuleSection,
    pub vertical: RuleSection,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StatusesSection {
    pub mql: String,
    pub sal: Option<String>,
    /// What a person's CRM status meant before mqlsync, for a backfill that reads the status
    /// history (`LeadHistory`, `ContactHistory`): status -> `accepted` (a rep took the MQL: its
    /// SAL date) or a rejection reason of `[outcomes.reasons]` (the cycle closed as Rejected
    /// with it). Statuses not named change no cycle. Default: the `sal` status is `accepted`.
    #[serde(default)]
    pub history: BTreeMap<String, Spanned<String>>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AfterOutcome {
    pub cooldown_days: Spanned<i64>,
    pub person_status: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomesSection {
    /// Rejection reason -> `Success`, `Not now`, `Not me` or `Fail`.
    pub reasons: BTreeMap<String, Spanned<String>>,
    /// Outcome -> what follows.
    pub after: BTreeMap<String, Spanned<AfterOutcome>>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TeamSection {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matches: BTreeMap<String, Spanned<String>>,
    pub accept_within_hours: Spanned<f64>,
    pub reassign_after_hours: Option<Spanned<f64>>,
    /// The owners a reassignment moves an MQL to, in turn (CRM user ids).
    #[serde(default)]
    pub pool: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub alert: Option<Spanned<String>>,
    pub time_zone: Spanned<String>,
    #[serde(default = "default_day_start")]
    pub day_start: Spanned<String>,
    #[serde(default = "default_day_end")]
    pub day_end: Spanned<String>,
    #[serde(default = "default_workdays")]
    pub workdays: Vec<Spanned<String>>,
    #[serde(default)]
    pub holidays: Vec<Spanned<String>>,
}

fn default_day_start() -> Spanned<String> {
    Spanned::new(0..0, "09:00".into())
}
fn default_day_end() -> Spanned<String> {
    Spanned::new(0..0, "17:00".into())
}
fn default_workdays() -> Vec<Spanned<String>> {
    ["Mon", "Tue", "Wed", "Thu", "Fri"]
        .into_iter()
        .map(|d| Spanned::new(0..0, d.to_string()))
        .collect()
}

/// The mapping file as written.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    pub crm: CrmSection,
    pub map: MapSection,
    /// Attribute name -> where it is read.
    pub attributes: BTreeMap<String, AttributeFields>,
    /// Attributes threshold records match on.
    pub segments: Vec<Spanned<String>>,
    pub score: ScoreSection,
    pub thresholds: ThresholdsSection,
    pub rules: RulesSection,
    pub statuses: StatusesSection,
    pub outcomes: OutcomesSection,
    #[serde(default)]
    pub teams: Vec<TeamSection>,
    #[serde(default)]
    pub hand_raisers: Vec<HandRaiserSection>,
    #[serde(default)]
    pub target_accounts: Option<TargetAccounts>,
    #[serde(default)]
    pub report: ReportSection,
}

/// `[report]`: how `mqlsync report` and `whatif` count.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSection {
    /// The IANA zone whose days, weeks, months and quarters the reports count in.
    #[serde(default = "default_report_zone")]
    pub time_zone: Spanned<String>,
    /// Attributes (of `[attributes]`) that make up the qualification checklist: the report
    /// counts how many of them the people of each cycle have filled in.
    #[serde(default)]
    pub checklist: Vec<Spanned<String>>,
    /// An opportunity on the person's account created this many days after the MQL or
    /// sooner is the MQL's pipeline.
    #[serde(default = "default_opportunity_window")]
    pub opportunity_window_days: u32,
    /// The width of the score bands of "score vs conversion".
    #[serde(default = "default_score_band")]
    pub score_band: f64,
    /// The weeks the knob's feedback on threshold records counts over.
    #[serde(default = "default_feedback_weeks")]
    pub feedback_weeks: u32,
}

impl Default for ReportSection {
    fn default() -> Self {
        ReportSection {
            time_zone: default_report_zone(),
            checklist: Vec::new(),
            opportunity_window_days: default_opportunity_window(),
            score_band: default_score_band(),
            feedback_weeks: default_feedback_weeks(),
        }
    }
}

fn default_feedback_weeks() -> u32 {
    4
}

fn default_report_zone() -> Spanned<String> {
    Spanned::new(0..0, "UTC".into())
}

fn default_opportunity_window() -> u32 {
    90
}

fn default_score_band() -> f64 {
    10.0
}

/// A mapping together with where it came from and the policy built from it.
#[derive(Clone, Debug)]
pub struct LoadedMapping {
    pub mapping: Mapping,
    pub policy: Policy,
    pub source: String,
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> MappingError {
        let line = if span.start == 0 && span.end == 0 {
            0
        } else {
            self.text[..span.start.min(self.text.len())]
                .matches('\n')
                .count()
                + 1
        };
        MappingError {
            file: self.file.to_string(),
            line,
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// Reads a mapping file; `None` loads the built-in default.
pub fn load(path: Option<&Path>) -> Result<LoadedMapping, MappingError> {
    match path {
        None => parse(DEFAULT_MAPPING, DEFAULT_MAPPING_NAME),
        Some(path) => {
            let file = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| MappingError {
                file: file.clone(),
                line: 0,
                key: "(file)".into(),
                message: format!("cannot read the mapping: {e}"),
            })?;
            parse(&text, &file)
        }
    }
}

/// Parses and validates a mapping's text.
pub fn parse(text: &str, file: &str) -> Result<LoadedMapping, MappingError> {
    let ctx = Ctx { file, text };
    let mapping: Mapping = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let key = e
            .message()
            .split('`')
            .nth(1)
            .unwrap_or("(syntax)")
            .to_string();
        ctx.err(span, &key, e.message().trim().replace('\n', " "))
    })?;
    let policy = build_policy(&mapping, &ctx)?;
    Ok(LoadedMapping {
        mapping,
        policy,
        source: file.to_string(),
    })
}

fn known_attribute(
    mapping: &Mapping,
    ctx: &Ctx<'_>,
    key: &str,
    name: &Spanned<String>,
) -> Result<(), MappingError> {
    if mapping.attributes.contains_key(name.get_ref()) {
        return Ok(());
    }
    let known: Vec<&str> = mapping.attributes.keys().map(String::as_str).collect();
    Err(ctx.err(
        name.span(),
        key,
        format!(
            "unknown attribute {:?}; the [attributes] table defines: {}",
            name.get_ref(),
            known.join(", ")
        ),
    ))
}

fn days(
    ctx: &Ctx<'_>,
    key: &str,
    rule: &RuleSection,
    default: i64,
) -> Result<SignedDuration, MappingError> {
    let days = rule.days.as_ref().map_or(default, |d| *d.get_ref());
    if days < 0 {
        let span = rule.days.as_ref().map(Spanned::span).unwrap_or(0..0);
        return Err(ctx.err(
            span,
            key,
            format!("{days} days: a window is zero or more days"),
        ));
    }
    Ok(SignedDuration::from_hours(24 * days))
}

fn attribute_rule(
    mapping: &Mapping,
    ctx: &Ctx<'_>,
    key: &str,
    rule: &RuleSection,
    default: &str,
) -> Result<Option<AttributeRule>, MappingError> {
    if !rule.enabled {
        return Ok(None);
    }
    let attribute = rule
        .attribute
        .clone()
        .unwrap_or_else(|| Spanned::new(0..0, default.to_string()));
    known_attribute(mapping, ctx, &format!("{key}.attribute"), &attribute)?;
    Ok(Some(AttributeRule {
        attribute: attribute.into_inner(),
        values: rule.unsupported.clone().unwrap_or_default(),
    }))
}

fn build_policy(mapping: &Mapping, ctx: &Ctx<'_>) -> Result<Policy, MappingError> {
    for segment in &mapping.segments {
        known_attribute(mapping, ctx, "segments", segment)?;
        if mapping.attributes[segment.get_ref()].threshold.is_none() {
            return Err(ctx.err(
                segment.span(),
                "segments",
                format!("attribute {:?} has no `threshold` field in [attributes], so threshold records cannot match on it", segment.get_ref()),
            ));
        }
    }
    let source = &mapping.score.source;
    let score = match source.get_ref().as_str() {
        "total" => ScoreSource::Total,
        "behavior_plus_demographic" => ScoreSource::BehaviorPlusDemographic,
        "time_decayed" => {
            let Some(half) = &mapping.score.half_life_days else {
                return Err(ctx.err(
                    source.span(),
                    "score.half_life_days",
                    "time_decayed needs half_life_days (a number of days above zero)",
                ));
            };
            if *half.get_ref() <= 0.0 {
                return Err(ctx.err(
                    half.span(),
                    "score.half_life_days",
                    "the half-life must be above zero days",
                ));
            }
            ScoreSource::TimeDecayed {
                half_life: SignedDuration::from_secs_f64(half.get_ref() * 86_400.0),
            }
        }
        "account" => {
            if mapping.crm.account.is_none() {
                return Err(ctx.err(
                    source.span(),
                    "score.source",
                    "account scoring gives each account's MQL to the account owner: it needs [crm.account] (object = \"Account\")",
                ));
            }
            let days = match &mapping.score.account_window_days {
                Some(d) if *d.get_ref() <= 0.0 || !d.get_ref().is_finite() => {
                    return Err(ctx.err(
                        d.span(),
                        "score.account_window_days",
                        "the window is a number of days above zero",
                    ));
                }
                Some(d) => *d.get_ref(),
                None => 30.0,
            };
            ScoreSource::Account {
                window: SignedDuration::from_secs_f64(days * 86_400.0),
            }
        }
        other => {
            return Err(ctx.err(
                source.span(),
                "score.source",
                format!("{other:?} is not a score source; use total, behavior_plus_demographic, time_decayed or account"),
            ));
        }
    };
    if !matches!(score, ScoreSource::Total | ScoreSource::Account { .. })
        && (mapping.map.behavior_score.is_none() || mapping.map.demographic_score.is_none())
    {
        return Err(ctx.err(
            source.span(),
            "score.source",
            "this source needs map.behavior_score and map.demographic_score",
        ));
    }
    let default_threshold = match &mapping.thresholds.default {
        Some(d) if *d.get_ref() < 0.0 || !d.get_ref().is_finite() => {
            return Err(ctx.err(
                d.span(),
                "thresholds.default",
                "the default threshold is a number of zero or more",
            ));
        }
        d => d.as_ref().map(|d| *d.get_ref()),
    };
    let r = &mapping.rules;
    let titles = if r.title.enabled {
        let mut compiled = Vec::new();
        for p in r.title.patterns.clone().unwrap_or_default() {
            compiled.push(Regex::new(p.get_ref()).map_err(|e| {
                ctx.err(
                    p.span(),
                    "rules.title.patterns",
                    format!(
                        "not a regular expression: {}",
                        e.to_string().replace('\n', " ")
                    ),
                )
            })?);
        }
        Some(compiled)
    } else {
        None
    };
    let rules = Rules {
        excluded_statuses: r
            .status
            .enabled
            .then(|| r.status.statuses.clone().unwrap_or_default()),
        open_opportunity: r.open_opportunity.enabled,
        recent_opportunity: if r.recent_opportunity.enabled {
            Some(days(
                ctx,
                "rules.recent_opportunity.days",
                &r.recent_opportunity,
                30,
            )?)
        } else {
            None
        },
        recent_mql: if r.recent_mql.enabled {
            Some(days(ctx, "rules.recent_mql.days", &r.recent_mql, 15)?)
        } else {
            None
        },
        titles,
        regions: attribute_rule(mapping, ctx, "rules.region", &r.region, "region")?,
        verticals: attribute_rule(mapping, ctx, "rules.vertical", &r.vertical, "vertical")?,
    };
    let outcome = |s: &Spanned<String>, key: &str| {
        Outcome::parse(s.get_ref()).ok_or_else(|| {
            ctx.err(
                s.span(),
                key,
                format!(
                    "{:?} is not an outcome; use Success, Not now, Not me or Fail",
                    s.get_ref()
                ),
            )
        })
    };
    let mut rejection_outcomes = BTreeMap::new();
    for (reason, o) in &mapping.outcomes.reasons {
        rejection_outcomes.insert(
            reason.clone(),
            outcome(o, &format!("outcomes.reasons.{reason:?}"))?,
        );
    }
    let mut outcomes = BTreeMap::new();
    for (name, after) in &mapping.outcomes.after {
        let o = Outcome::parse(name).ok_or_else(|| {
            ctx.err(
                after.span(),
                &format!("outcomes.after.{name:?}"),
                "not an outcome; use Success, Not now, Not me or Fail",
            )
        })?;
        let a = after.get_ref();
        if *a.cooldown_days.get_ref() < 0 {
            return Err(ctx.err(
                a.cooldown_days.span(),
                "cooldown_days",
                "a cool-down is zero or more days",
            ));
        }
        outcomes.insert(
            o,
            OutcomePolicy {
                cooldown: SignedDuration::from_hours(24 * a.cooldown_days.get_ref()),
                person_status: a.person_status.clone(),
            },
        );
    }
    let mut status_history = BTreeMap::new();
    if let Some(sal) = &mapping.statuses.sal {
        status_history.insert(sal.clone(), HistoricStatus::Accepted);
    }
    for (status, meaning) in &mapping.statuses.history {
        let value = meaning.get_ref().as_str();
        let read = if value == "accepted" {
            HistoricStatus::Accepted
        } else if rejection_outcomes.contains_key(value) {
            HistoricStatus::Rejected {
                reason: value.to_string(),
            }
        } else {
            return Err(ctx.err(
                meaning.span(),
                &format!("statuses.history.{status:?}"),
                format!(
                    "{value:?} is neither \"accepted\" nor a rejection reason of [outcomes.reasons]"
                ),
            ));
        };
        status_history.insert(status.clone(), read);
    }
    let mut teams = Vec::new();
    for (i, t) in mapping.teams.iter().enumerate() {
        teams.push(build_team(mapping, ctx, i, t)?);
    }
    check_accounts(mapping, ctx)?;
    check_report(mapping, ctx)?;
    let hand_raisers = hand_raisers(mapping, ctx)?;
    let wait_days = match &mapping.map.hand_raise_wait_for_link_days {
        Some(d) if *d.get_ref() < 0 => {
            return Err(ctx.err(
                d.span(),
                "map.hand_raise_wait_for_link_days",
                "a wait is zero or more days",
            ));
        }
        Some(d) => *d.get_ref(),
        None => 7,
    };
    Ok(Policy {
        hand_raisers,
        hand_raise_wait_for_link: SignedDuration::from_hours(24 * wait_days),
        status_history,
        score,
        default_threshold,
        rules,
        rejection_outcomes,
        outcomes,
        mql_status: mapping.statuses.mql.clone(),
        sal_status: mapping.statuses.sal.clone(),
        teams,
    })
}

/// Attributes read on accounts, and a target-account list, need the account object, and the
/// list an attribute to set.
fn check_accounts(mapping: &Mapping, ctx: &Ctx<'_>) -> Result<(), MappingError> {
    let has_account = mapping.crm.account.is_some();
    for (attribute, fields) in &mapping.attributes {
        if let Some(field) = &fields.account
            && !has_account
        {
            return Err(ctx.err(
                field.span(),
                &format!("attributes.{attribute}.account"),
                "an attribute read on the account needs [crm.account] (object = \"Account\")",
            ));
        }
    }
    if let Some(list) = &mapping.target_accounts {
        let attribute = list.attribute.get_ref();
        if !mapping.attributes.contains_key(attribute) {
            return Err(ctx.err(
                list.attribute.span(),
                "target_accounts.attribute",
                format!("unknown attribute {attribute:?}; define it in [attributes]"),
            ));
        }
        if !has_account {
            return Err(ctx.err(
                list.attribute.span(),
                "target_accounts",
                "a target-account list names accounts: it needs [crm.account] (object = \"Account\")",
            ));
        }
    }
    Ok(())
}

fn check_report(mapping: &Mapping, ctx: &Ctx<'_>) -> Result<(), MappingError> {
    let report = &mapping.report;
    if TimeZone::get(report.time_zone.get_ref()).is_err() {
        return Err(ctx.err(
            report.time_zone.span(),
            "report.time_zone",
            format!(
                "{:?} is not an IANA time zone (e.g. Europe/Berlin)",
                report.time_zone.get_ref()
            ),
        ));
    }
    for field in &report.checklist {
        if !mapping.attributes.contains_key(field.get_ref()) {
            return Err(ctx.err(
                field.span(),
                "report.checklist",
                format!(
                    "unknown attribute {:?}; define it in [attributes]",
                    field.get_ref()
                ),
            ));
        }
    }
    if report.feedback_weeks == 0 {
        return Err(ctx.err(
            0..0,
            "report.feedback_weeks",
            "the knob's feedback counts over at least 1 week",
        ));
    }
    if !(report.score_band.is_finite() && report.score_band > 0.0) {
        return Err(ctx.err(
            0..0,
            "report.score_band",
            "the score band width must be a number above 0 (e.g. 10)",
        ));
    }
    Ok(())
}

/// The Marketo activities API takes at most this many activity types a call; the hand-raiser
/// types are read in the same calls as the score changes.
const MAX_ACTIVITY_TYPES: usize = 10;

fn hand_raisers(mapping: &Mapping, ctx: &Ctx<'_>) -> Result<Vec<HandRaiserRule>, MappingError> {
    let mut rules: Vec<HandRaiserRule> = Vec::new();
    let mut types = BTreeSet::from([mapping.map.score_activity_type]);
    for (i, r) in mapping.hand_raisers.iter().enumerate() {
        let key = |k: &str| format!("hand_raisers[{i}].{k}");
        let name = r.name.get_ref().trim();
        if name.is_empty() {
            return Err(ctx.err(r.name.span(), &key("name"), "a rule needs a name"));
        }
        if rules
            .iter()
            .any(|other| other.name.eq_ignore_ascii_case(name))
        {
            return Err(ctx.err(
                r.name.span(),
                &key("name"),
                format!("two hand-raiser rules are named {name:?}; names tell rules apart in the audit and on MQL records"),
            ));
        }
        let type_id = *r.activity_type_id.get_ref();
        if type_id == mapping.map.score_activity_type {
            return Err(ctx.err(
                r.activity_type_id.span(),
                &key("activity_type_id"),
                format!("{type_id} is the score-change activity (map.score_activity_type); a hand-raiser names another activity, e.g. 2 (Fill Out Form) or 104 (Change Status in Progression)"),
            ));
        }
        let Ok(activity_type_id) = u32::try_from(type_id)
            .map_err(|_| ())
            .and_then(|t| if t == 0 { Err(()) } else { Ok(t) })
        else {
            return Err(ctx.err(
                r.activity_type_id.span(),
                &key("activity_type_id"),
                "an activity type id is a positive whole number, e.g. 2 (Fill Out Form)",
            ));
        };
        types.insert(type_id);
        if types.len() > MAX_ACTIVITY_TYPES {
            return Err(ctx.err(
                r.activity_type_id.span(),
                &key("activity_type_id"),
                format!("the hand-raiser rules and the score changes name {} activity types; Marketo's activities API reads at most {MAX_ACTIVITY_TYPES} in one call", types.len()),
            ));
        }
        let mut segment = BTreeMap::new();
        for (attribute, value) in &r.segment {
            if !mapping.attributes.contains_key(attribute) {
                return Err(ctx.err(
                    value.span(),
                    &key(&format!("segment.{attribute}")),
                    format!("unknown attribute {attribute:?}; define it in [attributes]"),
                ));
            }
            segment.insert(attribute.clone(), value.get_ref().clone());
        }
        rules.push(HandRaiserRule {
            name: name.to_string(),
            activity_type_id,
            assets: r.assets.iter().map(|a| a.trim().to_string()).collect(),
            status: r.status.as_ref().map(|s| s.trim().to_string()),
            segment,
        });
    }
    Ok(rules)
}

fn build_team(
    mapping: &Mapping,
    ctx: &Ctx<'_>,
    i: usize,
    t: &TeamSection,
) -> Result<Team, MappingError> {
    let key = |k: &str| format!("teams[{i}].{k}");
    for (attribute, value) in &t.matches {
        if !mapping.attributes.contains_key(attribute) {
            return Err(ctx.err(
                value.span(),
                &key(&format!("match.{attribute}")),
                format!("unknown attribute {attribute:?}; define it in [attributes]"),
            ));
        }
    }
    let tz = TimeZone::get(t.time_zone.get_ref()).map_err(|_| {
        ctx.err(
            t.time_zone.span(),
            &key("time_zone"),
            format!(
                "{:?} is not an IANA time zone (e.g. Europe/Berlin)",
                t.time_zone.get_ref()
            ),
        )
    })?;
    let time = |s: &Spanned<String>, k: &str| -> Result<Time, MappingError> {
        s.get_ref().parse::<Time>().map_err(|_| {
            ctx.err(
                s.span(),
                &key(k),
                format!("{:?} is not a time of day (HH:MM)", s.get_ref()),
            )
        })
    };
    let day_start = time(&t.day_start, "day_start")?;
    let day_end = time(&t.day_end, "day_end")?;
    if day_end <= day_start {
        return Err(ctx.err(
            t.day_end.span(),
            &key("day_end"),
            "the working day ends after it starts",
        ));
    }
    let mut workdays = BTreeSet::new();
    for d in &t.workdays {
        let day = match d.get_ref().to_ascii_lowercase().get(..3) {
            Some("mon") => jiff::civil::Weekday::Monday,
            Some("tue") => jiff::civil::Weekday::Tuesday,
            Some("wed") => jiff::civil::Weekday::Wednesday,
            Some("thu") => jiff::civil::Weekday::Thursday,
            Some("fri") => jiff::civil::Weekday::Friday,
            Some("sat") => jiff::civil::Weekday::Saturday,
            Some("sun") => jiff::civil::Weekday::Sunday,
            _ => {
                return Err(ctx.err(
                    d.span(),
                    &key("workdays"),
                    format!("{:?} is not a weekday (Mon..Sun)", d.get_ref()),
                ));
            }
        };
        workdays.insert(WeekdayKey::from(day));
    }
    let mut holidays = BTreeSet::new();
    for h in &t.holidays {
        holidays.insert(h.get_ref().parse::<Date>().map_err(|_| {
            ctx.err(
                h.span(),
                &key("holidays"),
                format!("{:?} is not a date (YYYY-MM-DD)", h.get_ref()),
            )
        })?);
    }
    let hours = |v: &Spanned<f64>, k: &str| -> Result<f64, MappingError> {
        if *v.get_ref() <= 0.0 || !v.get_ref().is_finite() {
            return Err(ctx.err(v.span(), &key(k), "a number of business hours above zero"));
        }
        Ok(*v.get_ref())
    };
    let alert = match t.alert.as_ref().map(|a| (a, a.get_ref().as_str())) {
        None | Some((_, "none")) => AlertChannel::None,
        Some((_, "task")) => AlertChannel::Task,
        Some((_, "email")) => AlertChannel::Email,
        Some((a, other)) => {
            return Err(ctx.err(
                a.span(),
                &key("alert"),
                format!("{other:?}: use none, task or email"),
            ));
        }
    };
    let reassign_after_hours = t
        .reassign_after_hours
        .as_ref()
        .map(|v| hours(v, "reassign_after_hours"))
        .transpose()?;
    let pool: &[Spanned<String>] = t.pool.as_ref().map_or(&[], |p| p.get_ref());
    if let Some(bad) = pool.iter().find(|id| {
        let id = id.get_ref();
        !(id.len() == 15 || id.len() == 18) || !id.chars().all(|c| c.is_ascii_alphanumeric())
    }) {
        return Err(ctx.err(
            bad.span(),
            &key("pool"),
            format!(
                "{:?} is not a CRM user id (15 or 18 letters and digits)",
                bad.get_ref()
            ),
        ));
    }
    if let Some(after) = &t.reassign_after_hours
        && pool.len() < 2
    {
        // At the pool, or at the setting that needs one when there is no pool.
        let span = t.pool.as_ref().map_or_else(|| after.span(), Spanned::span);
        return Err(ctx.err(
            span,
            &key("pool"),
            "reassignment needs a pool of at least two owners",
        ));
    }
    Ok(Team {
        name: t.name.clone(),
        matches: t
            .matches
            .iter()
            .map(|(k, v)| (k.clone(), v.get_ref().clone()))
            .collect(),
        accept_within_hours: hours(&t.accept_within_hours, "accept_within_hours")?,
        reassign_after_hours,
        pool: pool.iter().map(|id| id.get_ref().clone()).collect(),
        alert,
        calendar: BusinessCalendar {
            time_zone: tz,
            day_start,
            day_end,
            workdays,
            holidays,
        },
    })
}

impl Mapping {
    /// The attributes threshold records match on.
    pub fn segment_attributes(&self) -> Vec<&str> {
        self.segments.iter().map(|s| s.get_ref().as_str()).collect()
    }
}

/// Where the mapping file of a config lives, relative paths taken from the config's folder.
pub fn resolve_path(config_dir: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_dir.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_mapping_loads_with_every_rule_on() {
        let m = load(None).unwrap();
        let r = &m.policy.rules;
        assert!(r.excluded_statuses.is_some() && r.open_opportunity && r.titles.is_some());
        assert_eq!(
            r.recent_opportunity,
            Some(SignedDuration::from_hours(24 * 30))
        );
        assert_eq!(r.recent_mql, Some(SignedDuration::from_hours(24 * 15)));
        assert!(r.regions.is_some() && r.verticals.is_some());
        assert_eq!(m.policy.outcome_of("bad timing"), Some(Outcome::NotNow));
        assert!(!m.policy.teams.is_empty());
        assert_eq!(
            m.mapping.segment_attributes(),
            ["region", "team", "business_line"]
        );
    }

    fn broken(find: &str, replace: &str) -> MappingError {
        assert!(DEFAULT_MAPPING.contains(find), "{find}");
        parse(&DEFAULT_MAPPING.replacen(find, replace, 1), "m.toml").unwrap_err()
    }

    fn line_of(needle: &str) -> usize {
        DEFAULT_MAPPING[..DEFAULT_MAPPING.find(needle).unwrap()]
            .matches('\n')
            .count()
            + 1
    }

    #[test]
    fn an_unknown_attribute_in_a_rule_names_file_line_and_key() {
        let e = broken("attribute = \"vertical\"", "attribute = \"verticle\"");
        assert_eq!(
            (e.file.as_str(), e.key.as_str()),
            ("m.toml", "rules.vertical.attribute")
        );
        assert_eq!(e.line, line_of("attribute = \"vertical\""));
        assert!(
            e.message.contains("verticle") && e.message.contains("region"),
            "{e}"
        );
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn a_misspelt_key_and_bad_toml_name_the_line() {
        let e = broken("accept_within_hours", "accept_within_hourz");
        assert_eq!(e.line, line_of("accept_within_hours"));
        assert!(e.to_string().contains("accept_within_hourz"), "{e}");
        let e = broken("[score]", "[score");
        assert_eq!(e.line, line_of("[score]"));
    }

    #[test]
    fn bad_values_say_what_is_allowed() {
        let e = broken("source = \"total\"", "source = \"sum\"");
        assert!(e.message.contains("time_decayed"), "{e}");
        let e = broken(
            "time_zone = \"America/New_York\"",
            "time_zone = \"Mars/Olympus\"",
        );
        assert_eq!(e.key, "teams[0].time_zone");
        let e = broken("'(?i)\\bstudent\\b'", "'(?i)(student'");
        assert_eq!(e.key, "rules.title.patterns");

        let e = broken("\"Bad Timing\" = \"Not now\"", "\"Bad Timing\" = \"Later\"");
        assert!(e.message.contains("Not me"), "{e}");

        let e = broken("\"Spam\" = \"Spam\"", "\"Spam\" = \"Junk\"");
        assert_eq!(
            (e.key.as_str(), e.line),
            ("statuses.history.\"Spam\"", line_of("\"Spam\" = \"Spam\""))
        );
        assert!(
            e.message.contains("Junk") && e.message.contains("accepted"),
            "{e}"
        );
    }

    #[test]
    fn the_status_history_means_accepted_or_a_rejection_reason() {
        let policy = load(None).unwrap().policy;
        assert_eq!(
            policy.status_history.get("Sales Accepted"),
            Some(&HistoricStatus::Accepted),
            "the SAL status is accepted"
        );
        assert_eq!(
            policy.status_history.get("Nurture"),
            Some(&HistoricStatus::Rejected {
                reason: "Not Interested Now".into()
            })
        );
        assert_eq!(policy.status_history.get("Open - Not Contacted"), None);
    }

    #[test]
    fn the_shipped_mapping_makes_a_demo_request_a_hand_raiser() {
        let policy = load(None).unwrap().policy;
        assert_eq!(policy.hand_raisers.len(), 1);
        let rule = &policy.hand_raisers[0];
        assert_eq!(
            (
                rule.name.as_str(),
                rule.activity_type_id,
                rule.assets.as_slice()
            ),
            ("Demo Request", 2, ["Demo Request".to_string()].as_slice())
        );
        assert_eq!(policy.hand_raiser_type_ids(), [2]);
        assert_eq!(
            policy.hand_raise_wait_for_link,
            SignedDuration::from_hours(24 * 7)
        );
    }

    #[test]
    fn a_hand_raiser_rule_that_cannot_be_read_names_its_key_and_line() {
        let rule = "activity_type_id = 2           # Fill Out Form";
        let e = broken(rule, "activity_type_id = 22");
        assert_eq!(
            (e.key.as_str(), e.line),
            ("hand_raisers[0].activity_type_id", line_of(rule))
        );
        assert!(e.message.contains("score-change activity"), "{e}");
        let e = broken(rule, "activity_type_id = -4");
        assert!(e.message.contains("positive whole number"), "{e}");
        let e = broken(
            "assets = [\"Demo Request\"]",
            "assets = [\"Demo Request\"]\nsegment = { teir = \"1\" }",
        );
        assert_eq!(e.key, "hand_raisers[0].segment.teir");
        assert!(e.message.contains("[attributes]"), "{e}");
        let twice =
            "[[hand_raisers]]\nname = \"demo request\"\nactivity_type_id = 104\n\n# --- SLA teams";
        let e = broken("# --- SLA teams", twice);
        assert_eq!(e.key, "hand_raisers[1].name");
        // Eleven activity types are more than one activities call reads.
        let many: String = (100..110)
            .map(|t| format!("[[hand_raisers]]\nname = \"r{t}\"\nactivity_type_id = {t}\n"))
            .collect();
        let e = broken("# --- SLA teams", &format!("{many}# --- SLA teams"));
        assert_eq!(e.key, "hand_raisers[9].activity_type_id");
        assert!(e.message.contains("at most 10"), "{e}");
        let e = broken(
            "hand_raise_wait_for_link_days = 7",
            "hand_raise_wait_for_link_days = -1",
        );
        assert_eq!(e.key, "map.hand_raise_wait_for_link_days");
    }

    #[test]
    fn the_report_section_names_a_real_zone_and_known_checklist_attributes() {
        let e = broken("time_zone = \"UTC\"", "time_zone = \"Mars/Olympus\"");
        assert_eq!(e.key, "report.time_zone");
        assert_eq!(e.line, line_of("time_zone = \"UTC\""));
        let e = broken("checklist = []", "checklist = [\"budget\"]");
        assert_eq!(e.key, "report.checklist");
        assert!(
            e.message.contains("budget") && e.message.contains("[attributes]"),
            "{e}"
        );
        let e = broken("score_band = 10 ", "score_band = 0 ");
        assert_eq!(e.key, "report.score_band");
        let m = parse(DEFAULT_MAPPING, "m.toml").unwrap().mapping;
        assert_eq!(m.report.opportunity_window_days, 90);
        // A mapping without the section (the file's last) takes the defaults.
        let start = DEFAULT_MAPPING.find("[report]").unwrap();
        let m = parse(&DEFAULT_MAPPING[..start], "m.toml").unwrap().mapping;
        assert_eq!(m.report.time_zone.get_ref(), "UTC");
        assert_eq!(m.report.score_band, 10.0);
        assert_eq!(m.report.feedback_weeks, 4);
    }

    #[test]
    fn target_accounts_need_the_account_object_and_a_known_attribute() {
        let on = "# target_account = { lead = \"Target_Account__c\", account = \"Target_Account__c\", threshold = \"Target_Account__c\" }";
        let e = broken(on, &on[2..]);
        assert_eq!(e.key, "attributes.target_account.account");
        assert!(e.message.contains("[crm.account]"), "{e}");
        let text = DEFAULT_MAPPING
            .replacen(on, &on[2..], 1)
            .replacen(
                "# [crm.account]\n# object = \"Account\"",
                "[crm.account]\nobject = \"Account\"",
                1,
            )
            .replacen(
                "# [target_accounts]\n# attribute = \"target_account\"",
                "[target_accounts]\nattribute = \"target_acount\"",
                1,
            )
            .replacen("# accounts = [", "accounts = [", 1);
        let e = parse(&text, "m.toml").unwrap_err();
        assert_eq!(e.key, "target_accounts.attribute");
        assert!(e.message.contains("target_acount"), "{e}");
        let fixed = text.replacen("\"target_acount\"", "\"target_account\"", 1);
        let m = parse(&fixed, "m.toml").unwrap().mapping;
        assert_eq!(m.crm.account.as_ref().unwrap().owner, "OwnerId");
        assert_eq!(m.target_accounts.as_ref().unwrap().accounts.len(), 2);
    }

    #[test]
    fn account_scoring_needs_the_account_object_and_a_window_above_zero() {
        let source = "source = \"total\"";
        let e = broken(source, "source = \"account\"");
        assert_eq!((e.key.as_str(), e.line), ("score.source", line_of(source)));
        assert!(e.message.contains("[crm.account]"), "{e}");
        let text = DEFAULT_MAPPING
            .replacen(source, "source = \"account\"", 1)
            .replacen(
                "# [crm.account]\n# object = \"Account\"",
                "[crm.account]\nobject = \"Account\"",
                1,
            );
        let policy = parse(&text, "m.toml").unwrap().policy;
        assert_eq!(
            policy.score,
            ScoreSource::Account {
                window: SignedDuration::from_hours(24 * 30)
            }
        );
        let e = parse(
            &text.replacen("half_life_days = 30", "account_window_days = 0", 1),
            "m.toml",
        )
        .unwrap_err();
        assert_eq!(e.key, "score.account_window_days");
    }

    /// Issue 11, point 4: a team's pool error points at the `pool` line, not the time zone's.
    #[test]
    fn a_pool_error_names_the_pool_line() {
        let e = broken("\"0055g0000000001AAA\"", "\"0055g000000000001IAA\"");
        assert_eq!(e.key, "teams[0].pool");
        assert_eq!(e.line, line_of("pool = [\"0055g0000000001AAA\""));
        assert!(e.message.contains("0055g000000000001IAA"), "{e}");
        // An id on a line of its own, in a pool written over several lines.
        let e = broken(
            "pool = [\"0055g0000000001AAA\", ",
            "pool = [\n  \"0055g0000000001AAA\",\n  \"not-an-id\",\n  ",
        );
        assert_eq!(e.line, line_of("pool = [\"0055g0000000001AAA\"") + 2);
        // Too small a pool for reassignment: the pool's line.
        let e = broken(
            "pool = [\"0055g0000000001AAA\", \"0055g0000000002AAA\", \"0055g0000000003AAA\"]",
            "pool = [\"0055g0000000001AAA\"]",
        );
        assert_eq!(
            (e.key.as_str(), e.line),
            ("teams[0].pool", line_of("pool = [\"0055g0000000001AAA\""))
        );
    }
}

#[cfg(test)]
mod metadata_tests {
    //! The shipped Salesforce DX metadata (`mappings/salesforce/`) must deploy every custom
    //! field the default mapping names, so that a RevOps engineer who deploys it and runs with
    //! the default mapping gets no INVALID_FIELD.

    use std::path::Path;

    use super::*;

    fn field_file(object: &str, field: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("mappings/salesforce/force-app/main/default/objects")
            .join(object)
            .join("fields")
            .join(format!("{field}.field-meta.xml"))
    }

    #[test]
    fn every_custom_field_of_the_default_mapping_is_in_the_metadata() {
        // The fields the sync reads and writes, as `check --remote` lists them, with the
        // opt-in knob feedback on.
        let text = [
            "projected_weekly_mqls",
            "actual_weekly_mqls",
            "feedback_date",
        ]
        .iter()
        .fold(DEFAULT_MAPPING.to_string(), |text, key| {
            let commented = format!("# {key} = ");
            assert!(text.contains(&commented), "{key}");
            text.replacen(&commented, &format!("{key} = "), 1)
        });
        let m = parse(&text, "m.toml").unwrap().mapping;
        assert!(m.crm.threshold.feedback_date.is_some());
        let custom: Vec<(String, String)> = crate::sync::preflight::field_uses(&m)
            .into_iter()
            .flat_map(|(object, fields)| {
                // Task custom fields are Activity fields in the metadata (Task and Event
                // share them).
                let folder = if object == m.crm.task {
                    "Activity".to_string()
                } else {
                    object
                };
                fields.into_keys().map(move |f| (folder.clone(), f))
            })
            .filter(|(_, f)| f.ends_with("__c") && !f.contains('.'))
            .collect();
        assert!(custom.len() > 40, "{}", custom.len());
        let missing: Vec<_> = custom
            .iter()
            .filter(|(o, f)| !field_file(o, f).exists())
            .collect();
        assert!(
            missing.is_empty(),
            "not in mappings/salesforce: {missing:?}"
        );
    }

    #[test]
    fn every_rejection_reason_of_the_picklist_has_an_outcome() {
        let m = load(None).unwrap();
        let xml = std::fs::read_to_string(field_file("MQL__c", "Rejection_Reason__c")).unwrap();
        let values: Vec<&str> = xml
            .split("<fullName>")
            .skip(2)
            .filter_map(|s| s.split("</fullName>").next())
            .collect();
        assert_eq!(values.len(), 10, "{values:?}");
        for v in values {
            assert!(
                m.policy.outcome_of(v).is_some(),
                "picklist value {v:?} has no outcome in the mapping"
            );
        }
    }
}
