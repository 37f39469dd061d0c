//! The engine's vocabulary: the facts that arrive as events, the cycles it keeps, and the
//! decisions it hands back. Plain data only, serialisable, with no vendor names in it (the
//! mapping turns `Score_Threshold__c` or `leadScore` into these terms at the edge).

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};

pub use super::text::{Attributes, Text};

/// Whether a CRM person is a lead or a contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CrmKind {
    Lead,
    Contact,
}

impl CrmKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CrmKind::Lead => "Lead",
            CrmKind::Contact => "Contact",
        }
    }
}

/// A CRM record id. Kept inline up to 24 bytes (a Salesforce id has 15 or 18 characters), so
/// the ids a person carries (its own, its account's, its MAP lead's link) cost no allocation
/// each; longer ids go to the heap. Serialised as a string.
pub type CrmId = compact_str::CompactString;

/// A lead or contact record in the CRM: the thing an MQL cycle belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CrmRef {
    pub kind: CrmKind,
    pub id: CrmId,
}

/// A marketing program or campaign, as far as the MQL record needs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Campaign {
    /// Shared ([`Text`]): every MAP lead keeps the campaign of its last score change, and an
    /// instance has a few hundred campaigns for millions of leads.
    pub id: Text,
    pub name: Option<Text>,
}

/// A sales manager's knob: one threshold record as the CRM holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    pub id: String,
    /// Attribute = value pairs a person must match; empty matches everyone (a default).
    pub segment: BTreeMap<String, String>,
    pub score: f64,
    pub effective_from: Option<Timestamp>,
    pub effective_to: Option<Timestamp>,
    pub active: bool,
    /// Who last set it (a CRM user id or name), for the audit log.
    pub set_by: Option<String>,
    /// The CRM's last modification: the version of this record.
    pub modified_at: Timestamp,
    /// Deleted in the CRM: kept in the audit log, never used again.
    #[serde(default)]
    pub deleted: bool,
}

impl Threshold {
    /// Whether the record applies at `t`: active, not deleted, and inside its window
    /// (`effective_from` inclusive, `effective_to` exclusive).
    pub fn in_force_at(&self, t: Timestamp) -> bool {
        self.active
            && !self.deleted
            && self.effective_from.is_none_or(|from| from <= t)
            && self.effective_to.is_none_or(|to| t < to)
    }

    /// Whether `other` is this record with only fields the engine does not read changed: who
    /// set it, a reason, the feedback mqlsync writes beside the knob. Such a version is kept,
    /// but re-evaluates nobody.
    pub fn same_knob(&self, other: &Threshold) -> bool {
        self.segment == other.segment
            && self.score == other.score
            && self.effective_from == other.effective_from
            && self.effective_to == other.effective_to
            && self.active == other.active
            && self.deleted == other.deleted
    }

    /// `region=EMEA,team=SDR` or `default`: how the segment is named on MQL records.
    pub fn segment_label(&self) -> String {
        segment_label(&self.segment)
    }
}

pub fn segment_label(segment: &BTreeMap<String, String>) -> String {
    if segment.is_empty() {
        return "default".to_string();
    }
    segment
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// What the CRM says about a lead or contact, as far as the rules need it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PersonFacts {
    pub crm: CrmRef,
    pub status: Option<Text>,
    pub owner_id: Option<Text>,
    pub title: Option<Text>,
    pub account_id: Option<CrmId>,
    /// A converted lead (the CRM's `IsConverted`).
    #[serde(default)]
    pub converted: bool,
    /// Mapped attributes by attribute name (`region`, `team`, `vertical`, ...): what segments,
    /// teams and exclusion rules match on.
    #[serde(default)]
    pub attributes: Attributes,
    /// The earliest MQL date the CRM record held before mqlsync (the mapping's
    /// `prior_mql_dates` fields, e.g. a date a Marketo flow used to stamp): the person's
    /// original MQL date stays that, not mqlsync's first MQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_mql_at: Option<Timestamp>,
    pub modified_at: Timestamp,
}

/// An account, as far as its people need it: the attributes its contacts carry through it
/// (a target-account flag), and its owner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccountFacts {
    pub id: CrmId,
    pub owner_id: Option<Text>,
    /// Mapped attributes read on the account (`target_account`): each of its contacts
    /// carries them, over any value of the same name read on the contact.
    #[serde(default)]
    pub attributes: Attributes,
    pub modified_at: Timestamp,
}

/// An opportunity, as far as the exclusion rules and conversion need it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Opportunity {
    pub id: String,
    pub account_id: String,
    pub is_closed: bool,
    pub is_won: bool,
    pub close_date: Option<Date>,
    pub created_at: Timestamp,
    pub modified_at: Timestamp,
}

/// Which part of the MAP's score a change touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScorePart {
    Total,
    Behavior,
    Demographic,
}

impl ScorePart {
    /// Every part, in the order of [`ScorePart::index`].
    pub const ALL: [ScorePart; 3] = [
        ScorePart::Total,
        ScorePart::Behavior,
        ScorePart::Demographic,
    ];

    /// The part's place in [`ScorePart::ALL`] (and in per-part arrays).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One change of one score field of one MAP lead (a Change Score activity or a webhook push).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreChange {
    pub map_lead_id: i64,
    /// The MAP's id of the change (`marketoGUID`); with `at`, its version.
    pub change_id: String,
    pub part: ScorePart,
    pub new_value: f64,
    /// The value before, when the MAP says; otherwise the engine's last known value.
    pub old_value: Option<f64>,
    pub campaign: Option<Campaign>,
    pub at: Timestamp,
}

/// The CRM record a MAP lead is synced to changed (or appeared).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapLink {
    pub map_lead_id: i64,
    pub crm: Option<CrmRef>,
    pub at: Timestamp,
}

/// A MAP activity other than a score change, as far as a hand-raiser rule matches on it: a
/// form fill, a program status change, a named asset. The engine decides whether a rule
/// names it (see [`super::policy::HandRaiserRule`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapActivity {
    pub map_lead_id: i64,
    /// The MAP's id of the activity (`marketoGUID`): inline, no allocation.
    pub activity_id: compact_str::CompactString,
    /// The MAP's activity type (Fill Out Form is 2, Change Status in Progression 104).
    pub type_id: u32,
    /// The primary asset's id and name: the form, the program, the web page. Shared
    /// ([`Text`]), as the status is: an instance has a few hundred forms and programs for
    /// millions of fills.
    pub asset_id: Option<Text>,
    pub asset_name: Option<Text>,
    /// The program status the person moved to (Change Status in Progression): its name, or
    /// its id when the MAP gives only that.
    pub status: Option<Text>,
    pub campaign: Option<Campaign>,
    pub at: Timestamp,
}

impl MapActivity {
    /// How the audit names it: `Fill Out Form on Demo Request (activity 4711)`.
    pub fn label(&self) -> ActivityLabel {
        ActivityLabel::Parts(Box::new(ActivityParts {
            type_id: self.type_id,
            asset: self.asset_name.clone().or_else(|| self.asset_id.clone()),
            status: self.status.clone(),
            activity_id: self.activity_id.clone(),
        }))
    }
}

/// How a reason names a MAP activity: `Fill Out Form on Demo Request (activity 4711)`.
///
/// Kept as the activity's parts and written when read: shown, saved (serialised straight
/// into the audit row), compared. A hand-raise held back (most are: the person has a cycle
/// open) wrote a sentence for a reason that is often only counted. The parts are boxed, so
/// that a reason is no larger than with the text. Saved and read back as the text, which is
/// what compares.
#[derive(Clone, Debug)]
pub enum ActivityLabel {
    /// An activity's parts, as the engine met it.
    Parts(Box<ActivityParts>),
    /// The label as written (read back from the store).
    Written(String),
}

/// What [`ActivityLabel`] names an activity by: shared texts and an inline id.
#[derive(Clone, Debug)]
pub struct ActivityParts {
    type_id: u32,
    /// The asset's name, else its id.
    asset: Option<Text>,
    status: Option<Text>,
    activity_id: compact_str::CompactString,
}

impl std::fmt::Display for ActivityLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActivityLabel::Written(text) => f.write_str(text),
            ActivityLabel::Parts(parts) => {
                let (asset, status) = (parts.asset.as_deref(), parts.status.as_deref());
                write_activity(f, parts.type_id, asset, status)?;
                write!(f, " (activity {})", parts.activity_id)
            }
        }
    }
}

impl PartialEq for ActivityLabel {
    fn eq(&self, other: &ActivityLabel) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Serialize for ActivityLabel {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ActivityLabel {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(ActivityLabel::Written)
    }
}

/// What opened a hand-raiser cycle: the rule and the activity that matched it. The MQL
/// record carries it instead of a score crossing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandRaise {
    pub rule: String,
    pub activity_id: String,
    pub type_id: u32,
    /// The asset's name, else its id.
    pub asset: Option<String>,
    pub status: Option<String>,
    /// When the person raised their hand (the cycle's MQL date may be later: when the MAP
    /// lead was linked to its CRM record).
    pub at: Timestamp,
}

impl HandRaise {
    /// `Hand-raiser Demo Request: Fill Out Form on Demo Request at 2026-11-29T10:00:00Z`:
    /// what the MQL record says qualified the person.
    pub fn label(&self) -> String {
        let mut text = format!("Hand-raiser {}: ", self.rule);
        let (asset, status) = (self.asset.as_deref(), self.status.as_deref());
        write_activity(&mut text, self.type_id, asset, status).expect("a String takes any text");
        text.push_str(" at ");
        text.push_str(&self.at.to_string());
        text
    }
}

/// `Fill Out Form on Demo Request`, `Change Status in Progression on Webinar to Attended`:
/// an activity as the audit and the MQL record name it.
fn write_activity(
    to: &mut impl std::fmt::Write,
    type_id: u32,
    asset: Option<&str>,
    status: Option<&str>,
) -> std::fmt::Result {
    to.write_str(&activity_kind(type_id))?;
    if let Some(asset) = asset {
        write!(to, " on {asset}")?;
    }
    if let Some(status) = status {
        write!(to, " to {status}")?;
    }
    Ok(())
}

/// A MAP activity type as people name it.
fn activity_kind(type_id: u32) -> std::borrow::Cow<'static, str> {
    match type_id {
        2 => "Fill Out Form".into(),
        104 => "Change Status in Progression".into(),
        other => format!("activity type {other}").into(),
    }
}

/// A rep (or anyone in the CRM) edited an MQL record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CycleEdit {
    pub external_id: String,
    pub status: CycleStatus,
    pub rejection_reason: Option<String>,
    pub owner_id: Option<String>,
    pub modified_at: Timestamp,
    pub modified_by: Option<String>,
}

/// The CRM accepted the first write of a cycle's MQL record: from `at` its rep can see it,
/// so its SLA starts then. The writer reports it; the engine never guesses it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CycleWritten {
    pub external_id: String,
    pub at: Timestamp,
}

/// Everything that can happen, from either system.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Threshold(Threshold),
    Person(PersonFacts),
    /// An account: its contacts take its attributes from now on.
    Account(AccountFacts),
    Opportunity(Opportunity),
    Score(ScoreChange),
    /// The value a score field holds at `at`, read from the MAP's lead record rather than
    /// from a change (a first run reads every linked lead's current score this way, so that
    /// scores older than the activity look-back are known). Applied like a change of that
    /// field, versioned the same way, but nobody is evaluated: it is what the MAP holds, not
    /// something that happened at `at`. What becomes of the people it reaches is
    /// [`Event::GoLive`]'s decision, or the next change's or knob turn's.
    CurrentScore(ScoreChange),
    /// A MAP activity a hand-raiser rule may name: it opens a cycle whatever the score.
    Activity(MapActivity),
    Link(MapLink),
    CycleEdit(CycleEdit),
    /// mqlsync goes live at `at`. With `mqls`, everyone linked, without any cycle, at or above
    /// their threshold and not excluded becomes an MQL now, with reason `at_go_live` (a first
    /// run knows people whose scores crossed long before it); without, they wait for their
    /// next score change or knob turn. Once per store: a later one is a replay.
    GoLive {
        at: Timestamp,
        mqls: bool,
    },
    CycleWritten(CycleWritten),
}

impl Event {
    /// The instant the event happened at the source.
    pub fn at(&self) -> Timestamp {
        match self {
            Event::Threshold(t) => t.modified_at,
            Event::Person(p) => p.modified_at,
            Event::Account(a) => a.modified_at,
            Event::Opportunity(o) => o.modified_at,
            Event::Score(s) | Event::CurrentScore(s) => s.at,
            Event::Activity(a) => a.at,
            Event::Link(l) => l.at,
            Event::CycleEdit(e) => e.modified_at,
            Event::GoLive { at, .. } => *at,
            Event::CycleWritten(w) => w.at,
        }
    }
}

/// The status of an MQL cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CycleStatus {
    Open,
    Working,
    Rejected,
    Converted,
}

impl CycleStatus {
    /// Open and Working cycles are open: a person has at most one.
    pub fn is_open(self) -> bool {
        matches!(self, CycleStatus::Open | CycleStatus::Working)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CycleStatus::Open => "Open",
            CycleStatus::Working => "Working",
            CycleStatus::Rejected => "Rejected",
            CycleStatus::Converted => "Converted",
        }
    }

    pub fn parse(text: &str) -> Option<CycleStatus> {
        match text.trim().to_ascii_lowercase().as_str() {
            "open" => Some(CycleStatus::Open),
            "working" => Some(CycleStatus::Working),
            "rejected" => Some(CycleStatus::Rejected),
            "converted" => Some(CycleStatus::Converted),
            _ => None,
        }
    }
}

/// What an MQL cycle came to, which decides what marketing does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Outcome {
    Success,
    #[serde(rename = "Not now")]
    NotNow,
    #[serde(rename = "Not me")]
    NotMe,
    Fail,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "Success",
            Outcome::NotNow => "Not now",
            Outcome::NotMe => "Not me",
            Outcome::Fail => "Fail",
        }
    }

    pub fn parse(text: &str) -> Option<Outcome> {
        match text
            .trim()
            .to_ascii_lowercase()
            .replace(['_', '-'], " ")
            .as_str()
        {
            "success" => Some(Outcome::Success),
            "not now" => Some(Outcome::NotNow),
            "not me" => Some(Outcome::NotMe),
            "fail" => Some(Outcome::Fail),
            _ => None,
        }
    }
}

/// A cycle's external id, `{crm id}-{number}`, written without the formatting machinery
/// (which cost some 800 instructions per new MQL).
pub fn cycle_external_id(crm_id: &str, number: u32) -> String {
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    let mut rest = number;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let mut id = String::with_capacity(crm_id.len() + 1 + digits.len() - start);
    id.push_str(crm_id);
    id.push('-');
    id.extend(digits[start..].iter().map(|&d| char::from(d)));
    id
}

/// One MQL cycle: what the MQL custom-object record in the CRM carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cycle {
    /// `{crm id}-{number}`: deterministic, so a replayed write upserts the same record.
    pub external_id: String,
    pub crm: CrmRef,
    pub map_lead_id: Option<i64>,
    pub number: u32,
    pub status: CycleStatus,
    pub score: f64,
    pub threshold: f64,
    pub threshold_id: Option<String>,
    pub segment: String,
    pub campaign: Option<Campaign>,
    /// The person's owner when the MQL happened.
    pub owner_at_mql: Option<String>,
    /// The cycle's owner now (changes on reassignment or when a rep reassigns it).
    pub owner_id: Option<String>,
    pub team: Option<String>,
    pub mql_at: Timestamp,
    pub sal_at: Option<Timestamp>,
    pub closed_at: Option<Timestamp>,
    pub rejection_reason: Option<String>,
    pub outcome: Option<Outcome>,
    /// When the rep must have accepted it; `None` while its SLA has not started (its record
    /// not yet written, see `written_at`), and for ever for a backfilled or team-less cycle.
    pub sla_due_at: Option<Timestamp>,
    pub reassign_at: Option<Timestamp>,
    pub overdue: bool,
    pub reassignments: u32,
    /// Rebuilt from history: it never gets an SLA (nobody could have worked it then).
    pub backfilled: bool,
    /// When the CRM accepted the first write of its MQL record, as the writer reported it
    /// ([`Event::CycleWritten`]): the SLA of a cycle decided while no rep could see it starts
    /// here, not at `mql_at`. `None`: not written yet, or a cycle whose SLA started at its
    /// decision (`simulate`, and stores older than this field), which gets it at its next
    /// write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_at: Option<Timestamp>,
    /// The hand-raiser rule and activity that opened it; `None`: a score crossing (or
    /// go-live).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hand_raise: Option<Box<HandRaise>>,
    /// Under account scoring: the account whose score met the threshold (the cycle belongs
    /// to the person whose change tipped it, and to the account's owner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<CrmId>,
    /// A note for the CRM record (a data-quality problem mqlsync refused to accept).
    pub note: Option<String>,
    /// The last CRM modification of the record mqlsync has applied: only a later edit is
    /// applied.
    pub crm_modified_at: Option<Timestamp>,
    /// Every CRM version of the record mqlsync has read (applied, refused or found stale),
    /// ascending: an edit at one of these instants is a replay and changes nothing, while an
    /// older edit at any other instant arrived out of order and is recorded as stale. Absent
    /// from cycles saved before it existed. A boxed slice, not a vector: 8 bytes fewer make a
    /// cycle 512 bytes, the allocator's size class below the 640 bytes it took at 520 (a
    /// person's cycles are most of their memory once they have any). Reps' edits are rare, so
    /// a version added copies the list.
    #[serde(default, skip_serializing_if = "<[Timestamp]>::is_empty")]
    pub crm_versions: Box<[Timestamp]>,
}

impl Cycle {
    /// What made the cycle an MQL when it was not the person's own score: the hand-raiser
    /// rule and activity, or the account whose score met the threshold.
    pub fn qualified_by(&self) -> Option<String> {
        match (&self.hand_raise, &self.account_id) {
            (Some(raised), _) => Some(raised.label()),
            (None, Some(account)) => Some(format!(
                "Account score: account {account}, its people's score changes over the window"
            )),
            (None, None) => None,
        }
    }

    /// How the cycle qualified, as the run summary, the metrics and the reports count it:
    /// `score`, `go-live` (opened by [`Event::GoLive`]), `account` or `hand-raiser <rule>`.
    pub fn qualified_kind(&self, at_go_live: bool) -> String {
        match (&self.hand_raise, at_go_live) {
            (Some(raised), _) => format!("hand-raiser {}", raised.rule),
            (None, true) => "go-live".into(),
            (None, false) if self.account_id.is_some() => "account".into(),
            (None, false) => "score".into(),
        }
    }
}

/// The date stamps and status mqlsync keeps on the lead or contact (the "basic" solution).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stamps {
    pub status: Option<Text>,
    pub mql_recent: Option<Timestamp>,
    pub mql_original: Option<Timestamp>,
    pub sal_recent: Option<Timestamp>,
    pub sal_original: Option<Timestamp>,
    pub mql_count: u32,
}

/// An exclusion rule of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    Status,
    OpenOpportunity,
    RecentOpportunity,
    RecentMql,
    Title,
    Region,
    Vertical,
}

/// What set off an evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Trigger {
    ScoreChange {
        change_id: String,
    },
    ThresholdChange {
        threshold_id: String,
    },
    /// A scheduled threshold started or ended at this instant.
    ThresholdSchedule {
        threshold_id: String,
    },
    PersonChange,
    Link,
    /// mqlsync went live (see [`Event::GoLive`]).
    GoLive,
}

/// Why a decision was taken (or not): machine-readable, for the audit log and `explain`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Reason {
    /// The score reached the threshold and nothing excluded the person.
    Qualified {
        score: f64,
        threshold: f64,
        threshold_id: Option<String>,
        trigger: Trigger,
    },
    BelowThreshold {
        score: f64,
        threshold: f64,
        threshold_id: Option<String>,
    },
    /// A hand-raiser rule named a MAP activity of the person, and nothing held them: an MQL
    /// whatever the score. The score (if the MAP has sent one) and threshold are those of the
    /// moment, for reference.
    HandRaised {
        rule: String,
        activity: ActivityLabel,
        score: Option<f64>,
        threshold: f64,
        threshold_id: Option<String>,
    },
    /// A hand-raiser rule named a MAP activity of the person, but `why` held them (an open
    /// cycle, an exclusion, a cool-down, no link yet, no threshold).
    HandRaiseHeld {
        rule: String,
        activity: ActivityLabel,
        why: Box<Reason>,
    },
    /// A hand-raise of a MAP lead that had no CRM record then, and was linked to one only at
    /// `linked_at`, past the mapping's `hand_raisers_wait_for_link_days`: too old to act on.
    HandRaiseExpired {
        rule: String,
        activity: ActivityLabel,
        linked_at: Timestamp,
    },
    /// No threshold record matches and no default is configured: no MQLs for this person.
    NoThreshold,
    /// The MAP lead is not linked to a CRM lead or contact.
    NotLinked {
        map_lead_id: i64,
    },
    /// No score has arrived for the person yet.
    NoScore,
    Excluded {
        rule: RuleKind,
        detail: String,
    },
    OpenCycle {
        /// Inline (an external id is short): recording this hold allocates nothing.
        external_id: compact_str::CompactString,
    },
    CoolingDown {
        until: Timestamp,
        outcome: Outcome,
    },
    /// A rep changed the status of the MQL record.
    StatusChanged {
        from: CycleStatus,
        to: CycleStatus,
        by: Option<String>,
    },
    /// A backfill read, in the CRM's status history, that the person's status became
    /// `status` (what the mapping's `[statuses.history]` says it meant) while this rebuilt
    /// cycle was open.
    HistoricStatus {
        status: String,
        from: CycleStatus,
        to: CycleStatus,
    },
    /// A rep changed the owner of the MQL record.
    OwnerChanged {
        to: Option<String>,
    },
    /// The lead converted, or an opportunity was opened on the account.
    Converted {
        by: String,
    },
    SlaOverdue {
        due: Timestamp,
    },
    /// The cycle's MQL record reached the CRM: its rep can see it, and its SLA runs from
    /// then.
    SlaStarted {
        written_at: Timestamp,
        due: Timestamp,
    },
    Reassigned {
        from: Option<String>,
        to: String,
        count: u32,
    },
    /// A rep's edit that mqlsync did not accept (rejection without a reason, a closed cycle
    /// reopened): the record is written back as it was, with a note.
    EditRefused {
        problem: String,
    },
    /// A threshold record that cannot be used (window ends before it starts, ...).
    ThresholdInvalid {
        problem: String,
    },
    ThresholdSeen {
        version: Timestamp,
    },
    RejectionReasonUnmapped {
        reason: String,
    },
    /// An edit of an MQL record that has no cycle in this store (made by hand in the CRM,
    /// or by another store): not applied. Recorded once per version of the record.
    EditUnknownCycle {
        external_id: String,
        edited_at: Timestamp,
    },
    /// An edit of an MQL record older than what is already applied: a later version of the
    /// record (`applied_at`), or, without one, the MQL itself (`mql_at`). It arrived out of
    /// order and is not applied. Recorded once per version of the record.
    EditStale {
        external_id: String,
        edited_at: Timestamp,
        applied_at: Option<Timestamp>,
        mql_at: Timestamp,
    },
    /// `explain` of an id the store has never read as a lead or contact, nor linked to a MAP
    /// lead.
    NotSeen,
    /// Account scoring: the account's score (its people's score changes over the window)
    /// reached the person's threshold, on `trigger`, and no other person of the account has an
    /// MQL open.
    AccountQualified {
        account_id: String,
        score: f64,
        threshold: f64,
        threshold_id: Option<String>,
        trigger: Trigger,
    },
    /// At go-live the person was already at or above the threshold, not excluded and without
    /// any cycle: an MQL from go-live on (its score may have crossed long before).
    AtGoLive {
        score: f64,
        threshold: f64,
        threshold_id: Option<String>,
    },
}

impl RuleKind {
    /// The rule's name as a sentence says it.
    pub fn label(self) -> &'static str {
        match self {
            RuleKind::Status => "status",
            RuleKind::OpenOpportunity => "open opportunity",
            RuleKind::RecentOpportunity => "recent opportunity",
            RuleKind::RecentMql => "recent MQL",
            RuleKind::Title => "title",
            RuleKind::Region => "region",
            RuleKind::Vertical => "vertical",
        }
    }
}

/// What set off an evaluation, as `explain` says it.
impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::ScoreChange { change_id } => write!(f, "a score change ({change_id})"),
            Trigger::ThresholdChange { threshold_id } => {
                write!(f, "a change of threshold {threshold_id}")
            }
            Trigger::ThresholdSchedule { threshold_id } => {
                write!(f, "threshold {threshold_id} starting or ending")
            }
            Trigger::PersonChange => f.write_str("a change of the lead or contact"),
            Trigger::Link => f.write_str("the MAP lead being linked to it"),
            Trigger::GoLive => f.write_str("mqlsync going live"),
        }
    }
}

/// A reason as one sentence for people (`explain`); the audit log keeps the JSON.
impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let which = |id: &Option<String>| id.clone().unwrap_or_else(|| "the default".into());
        match self {
            Reason::Qualified {
                score,
                threshold,
                threshold_id,
                trigger,
            } => write!(
                f,
                "MQL: score {score} reached the threshold {threshold} ({}), on {trigger}",
                which(threshold_id)
            ),
            Reason::BelowThreshold {
                score,
                threshold,
                threshold_id,
            } => write!(
                f,
                "not an MQL: score {score} is below the threshold {threshold} ({})",
                which(threshold_id)
            ),
            Reason::HandRaised {
                rule,
                activity,
                score,
                threshold,
                threshold_id,
            } => {
                write!(f, "MQL: qualified by hand-raiser rule {rule} ({activity}), ")?;
                match score {
                    Some(score) => write!(f, "score {score}")?,
                    None => f.write_str("no score yet")?,
                }
                write!(
                    f,
                    " against the threshold {threshold} ({})",
                    which(threshold_id)
                )
            }
            Reason::HandRaiseHeld {
                rule,
                activity,
                why,
            } => write!(
                f,
                "hand-raiser rule {rule} matched {activity}, but {why}"
            ),
            Reason::HandRaiseExpired {
                rule,
                activity,
                linked_at,
            } => write!(
                f,
                "hand-raiser rule {rule} matched {activity}, but its MAP lead was linked to this record only at {linked_at}, too late to act on it"
            ),
            Reason::NoThreshold => f.write_str(
                "not an MQL: no threshold record matches its segment and the mapping sets no default",
            ),
            Reason::NotLinked { map_lead_id } => write!(
                f,
                "MAP lead {map_lead_id} is not linked to a CRM lead or contact yet"
            ),
            Reason::NoScore => f.write_str("not an MQL: no score has arrived from the MAP"),
            Reason::Excluded { rule, detail } => write!(
                f,
                "not an MQL: excluded by the {} rule ({detail})",
                rule.label()
            ),
            Reason::OpenCycle { external_id } => {
                write!(f, "already an MQL: cycle {external_id} is open")
            }
            Reason::CoolingDown { until, outcome } => write!(
                f,
                "not an MQL: cooling down until {until} after a rejection ({})",
                outcome.as_str()
            ),
            Reason::StatusChanged { from, to, by } => {
                write!(f, "status changed from {} to {}", from.as_str(), to.as_str())?;
                match by {
                    Some(by) => write!(f, " by {by}"),
                    None => Ok(()),
                }
            }
            Reason::HistoricStatus { status, from, to } => write!(
                f,
                "status changed from {} to {}: the CRM's status history has {status:?} then",
                from.as_str(),
                to.as_str()
            ),
            Reason::OwnerChanged { to } => match to {
                Some(to) => write!(f, "owner changed to {to}"),
                None => f.write_str("owner removed"),
            },
            Reason::Converted { by } => write!(f, "converted ({by})"),
            Reason::SlaOverdue { due } => write!(f, "overdue: not accepted by {due}"),
            Reason::SlaStarted { written_at, due } => write!(
                f,
                "the MQL record reached the CRM at {written_at}: its rep has until {due} to accept it"
            ),
            Reason::Reassigned { from, to, count } => write!(
                f,
                "reassigned from {} to {to} (reassignment {count})",
                from.as_deref().unwrap_or("nobody")
            ),
            Reason::EditRefused { problem } => write!(f, "a rep's edit was refused: {problem}"),
            Reason::ThresholdInvalid { problem } => {
                write!(f, "threshold record not used: {problem}")
            }
            Reason::ThresholdSeen { version } => {
                write!(f, "threshold version of {version} recorded")
            }
            Reason::RejectionReasonUnmapped { reason } => write!(
                f,
                "rejection reason {reason:?} has no outcome in the mapping: no cool-down"
            ),
            Reason::EditUnknownCycle {
                external_id,
                edited_at,
            } => write!(
                f,
                "an edit of MQL record {external_id} made at {edited_at} was ignored: this store has no MQL with that external id (a record made by hand in the CRM, or by another store)"
            ),
            Reason::EditStale {
                external_id,
                edited_at,
                applied_at: Some(applied_at),
                ..
            } => write!(
                f,
                "an edit of MQL record {external_id} made at {edited_at} was ignored: the record's later version of {applied_at} is already applied"
            ),
            Reason::EditStale {
                external_id,
                edited_at,
                applied_at: None,
                mql_at,
            } => write!(
                f,
                "an edit of MQL record {external_id} made at {edited_at} was ignored: it is older than the MQL itself ({mql_at})"
            ),
            Reason::AccountQualified {
                account_id,
                score,
                threshold,
                threshold_id,
                trigger,
            } => write!(
                f,
                "MQL: the score of account {account_id} ({score}, its people's score changes over the window) reached the threshold {threshold} ({}), on {trigger}",
                which(threshold_id)
            ),
            Reason::AtGoLive {
                score,
                threshold,
                threshold_id,
            } => write!(
                f,
                "MQL at go-live: score {score} was already at or above the threshold {threshold} ({}) when mqlsync went live",
                which(threshold_id)
            ),
            Reason::NotSeen => f.write_str(
                "not seen: no lead or contact with this id has been read or linked (check the id, and that a run has read it)",
            ),
        }
    }
}

/// Something the engine wants done, with the reason for the audit log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Create the MQL record of a new cycle. Boxed, as in `UpdateCycle`: a cycle is most of
    /// a decision's size, and a small decision keeps the decision list out of the
    /// allocator's large-chunk path (same JSON).
    OpenCycle { cycle: Box<Cycle> },
    /// Write the cycle's record as it now stands.
    UpdateCycle { cycle: Box<Cycle> },
    /// Write the status and date stamps onto the lead or contact.
    StampPerson { crm: CrmRef, stamps: Box<Stamps> },
    /// Tell the cycle's owner (a CRM task or an e-mail, as the team wants).
    Notify {
        owner_id: String,
        external_id: String,
        crm: CrmRef,
        channel: AlertChannel,
    },
    /// Nothing to write: recorded for `explain` and the audit log.
    Record,
}

impl Action {
    /// The action's name, as the audit log and summaries count it (its JSON `action` tag).
    pub fn name(&self) -> &'static str {
        match self {
            Action::OpenCycle { .. } => "open_cycle",
            Action::UpdateCycle { .. } => "update_cycle",
            Action::StampPerson { .. } => "stamp_person",
            Action::Notify { .. } => "notify",
            Action::Record => "record",
        }
    }
}

/// How a team wants to hear of new MQLs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertChannel {
    #[default]
    None,
    Task,
    Email,
}

/// One decision: an action, what it is about, when, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub at: Timestamp,
    /// The CRM id, `map:{id}` or a threshold id the decision is about.
    pub subject: String,
    pub action: Action,
    pub reason: Reason,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Each part of an activity named; saved and read back as the text it reads as.
    #[test]
    fn an_activity_is_labelled_by_its_parts() {
        let mut activity = MapActivity {
            map_lead_id: 7,
            activity_id: "4711".into(),
            type_id: 104,
            asset_id: Some("1044".into()),
            asset_name: Some("Webinar 2026".into()),
            status: Some("Attended".into()),
            campaign: None,
            at: jiff::Timestamp::UNIX_EPOCH,
        };
        let label = activity.label();
        let text = "Change Status in Progression on Webinar 2026 to Attended (activity 4711)";
        assert_eq!(label.to_string(), text);
        let saved = serde_json::to_string(&label).unwrap();
        assert_eq!(saved, format!("\"{text}\""));
        let read: ActivityLabel = serde_json::from_str(&saved).unwrap();
        assert!(matches!(&read, ActivityLabel::Written(t) if t == text));
        assert_eq!(read, label);
        (activity.type_id, activity.asset_name, activity.status) = (9, None, None);
        assert_eq!(
            activity.label().to_string(),
            "activity type 9 on 1044 (activity 4711)"
        );
        assert_ne!(activity.label(), label);
    }

    #[test]
    fn reasons_read_as_sentences() {
        let qualified = Reason::Qualified {
            score: 82.5,
            threshold: 80.0,
            threshold_id: None,
            trigger: Trigger::ScoreChange {
                change_id: "5001".into(),
            },
        };
        assert_eq!(
            qualified.to_string(),
            "MQL: score 82.5 reached the threshold 80 (the default), on a score change (5001)"
        );
        let cooling = Reason::CoolingDown {
            until: "2026-06-01T00:00:00Z".parse().unwrap(),
            outcome: Outcome::NotNow,
        };
        assert_eq!(
            cooling.to_string(),
            "not an MQL: cooling down until 2026-06-01T00:00:00Z after a rejection (Not now)"
        );
        let moved = Reason::Reassigned {
            from: None,
            to: "005B".into(),
            count: 2,
        };
        assert_eq!(
            moved.to_string(),
            "reassigned from nobody to 005B (reassignment 2)"
        );
    }

    proptest! {
        #[test]
        fn a_cycle_external_id_is_the_crm_id_a_dash_and_the_number(
            crm_id in "[0-9A-Za-z]{0,18}",
            number in any::<u32>(),
        ) {
            prop_assert_eq!(cycle_external_id(&crm_id, number), format!("{crm_id}-{number}"));
        }
    }
}
