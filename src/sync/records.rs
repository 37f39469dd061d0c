//! Vendor records <-> engine values, driven by the mapping.
//!
//! CRM records arrive as the JSON objects of a SOQL query (`{"Id": ..., "Region__c": ...,
//! "Account": {"Industry": ...}}`); MAP activities as Marketo activity objects. The field
//! names all come from the mapping; the wire formats (Salesforce datetimes such as
//! `2026-03-02T10:00:00.000+0000`, Change Score attributes) are the vendors'. A record that
//! cannot be read is a [`RecordError`] naming the object, the record and the field: it fails
//! that record, never the batch.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use jiff::civil::Date;
use serde_json::{Map, Value, json};

use crate::engine::model::{
    AccountFacts, Campaign, CrmKind, CrmRef, Cycle, CycleEdit, CycleStatus, MapActivity, MapLink,
    Opportunity, PersonFacts, ScoreChange, ScorePart, Stamps, Text, Threshold,
};
use crate::mapping::{Mapping, PersonObject};

/// A record that cannot be turned into an engine value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{object} {id}: {field}: {message}")]
pub struct RecordError {
    pub object: String,
    pub id: String,
    pub field: String,
    pub message: String,
}

type Record = Map<String, Value>;

struct Reader<'a> {
    object: &'a str,
    record: &'a Record,
}

impl Reader<'_> {
    fn id(&self) -> String {
        self.record
            .get("Id")
            .and_then(Value::as_str)
            .unwrap_or("(no Id)")
            .to_string()
    }

    fn err(&self, field: &str, message: impl Into<String>) -> RecordError {
        RecordError {
            object: self.object.to_string(),
            id: self.id(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// A field, following `Parent.Field` paths; JSON null and absent are both `None`.
    fn get(&self, path: &str) -> Option<&Value> {
        let mut value = None;
        let mut here = self.record;
        for (i, part) in path.split('.').enumerate() {
            let v = here.get(part).filter(|v| !v.is_null())?;
            if i + 1 < path.split('.').count() {
                here = v.as_object()?;
            } else {
                value = Some(v);
            }
        }
        value
    }

    fn text(&self, path: &str) -> Option<String> {
        self.get(path)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .filter(|s| !s.trim().is_empty())
    }

    fn need_text(&self, path: &str) -> Result<String, RecordError> {
        self.text(path).ok_or_else(|| self.err(path, "missing"))
    }

    fn instant(&self, path: &str) -> Result<Option<Timestamp>, RecordError> {
        self.text(path)
            .map(|s| {
                parse_datetime(&s).ok_or_else(|| self.err(path, format!("{s:?} is not a datetime")))
            })
            .transpose()
    }

    fn need_instant(&self, path: &str) -> Result<Timestamp, RecordError> {
        self.instant(path)?.ok_or_else(|| self.err(path, "missing"))
    }

    fn number(&self, path: &str) -> Result<Option<f64>, RecordError> {
        match self.get(path) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                .map(Some)
                .ok_or_else(|| self.err(path, format!("{v} is not a number"))),
        }
    }

    fn flag(&self, path: &str) -> Result<Option<bool>, RecordError> {
        match self.get(path) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(self.err(path, format!("{v} is not true or false"))),
        }
    }

    /// The version of the record: `SystemModstamp`, else `LastModifiedDate`.
    fn modified(&self) -> Result<Timestamp, RecordError> {
        match self.instant("SystemModstamp")? {
            Some(t) => Ok(t),
            None => self.need_instant("LastModifiedDate"),
        }
    }
}

/// A Salesforce or Marketo datetime (`2026-03-02T10:00:00.000+0000`, `2026-03-02T10:00:00Z`).
pub fn parse_datetime(text: &str) -> Option<Timestamp> {
    text.trim().parse().ok()
}

/// A datetime as Salesforce writes it, in UTC.
pub fn format_datetime(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

/// The fields to SELECT for threshold records.
pub fn threshold_fields(m: &Mapping) -> Vec<String> {
    let t = &m.crm.threshold;
    let mut fields = vec![
        "Id".to_string(),
        "LastModifiedById".into(),
        "LastModifiedDate".into(),
        "SystemModstamp".into(),
        "IsDeleted".into(),
    ];
    fields.extend([&t.score, &t.effective_from, &t.effective_to, &t.active].map(String::clone));
    fields.extend(segment_fields(m).into_iter().map(|(_, f)| f));
    fields
}

/// The threshold object's segment fields: (attribute, field).
pub fn segment_fields(m: &Mapping) -> Vec<(String, String)> {
    m.segment_attributes()
        .into_iter()
        .filter_map(|a| {
            m.attributes
                .get(a)
                .and_then(|f| f.threshold.clone())
                .map(|f| (a.to_string(), f))
        })
        .collect()
}

/// A threshold record.
pub fn threshold(m: &Mapping, record: &Record) -> Result<Threshold, RecordError> {
    let t = &m.crm.threshold;
    let r = Reader {
        object: &t.object,
        record,
    };
    let mut segment = BTreeMap::new();
    for (attribute, field) in segment_fields(m) {
        if let Some(value) = r.text(&field) {
            segment.insert(attribute, value.trim().to_string());
        }
    }
    let score = r
        .number(&t.score)?
        .ok_or_else(|| r.err(&t.score, "missing: every threshold record needs a score"))?;
    Ok(Threshold {
        id: r.need_text("Id")?,
        segment,
        score,
        effective_from: r.instant(&t.effective_from)?,
        effective_to: r.instant(&t.effective_to)?,
        active: r.flag(&t.active)?.unwrap_or(true),
        set_by: r.text("LastModifiedById"),
        modified_at: r.modified()?,
        deleted: r.flag("IsDeleted")?.unwrap_or(false),
    })
}

fn person_object(m: &Mapping, kind: CrmKind) -> &PersonObject {
    match kind {
        CrmKind::Lead => &m.crm.lead,
        CrmKind::Contact => &m.crm.contact,
    }
}

fn attribute_field(m: &Mapping, kind: CrmKind, attribute: &str) -> Option<String> {
    let f = m.attributes.get(attribute)?;
    match kind {
        CrmKind::Lead => f.lead.clone(),
        CrmKind::Contact => f.contact.clone(),
    }
}

/// The fields to SELECT for leads or contacts.
pub fn person_fields(m: &Mapping, kind: CrmKind) -> Vec<String> {
    let p = person_object(m, kind);
    let mut fields = vec![
        "Id".to_string(),
        "SystemModstamp".into(),
        p.status.clone(),
        p.owner.clone(),
        p.title.clone(),
    ];
    fields.extend(p.account.iter().cloned());
    fields.extend(p.converted.iter().cloned());
    for f in &p.prior_mql_dates {
        if !fields.contains(f) {
            fields.push(f.clone());
        }
    }
    for attribute in m.attributes.keys() {
        if let Some(f) = attribute_field(m, kind, attribute)
            && !fields.contains(&f)
        {
            fields.push(f);
        }
    }
    fields
}

/// A row of a threshold object's field history (`ParentId`, `Field`, `OldValue`, `NewValue`,
/// `CreatedDate`, `CreatedById`).
pub fn threshold_change(
    object: &str,
    record: &Record,
) -> Result<crate::store::ThresholdFieldChange, RecordError> {
    let r = Reader { object, record };
    Ok(crate::store::ThresholdFieldChange {
        id: r.need_text("Id")?,
        threshold_id: r.need_text("ParentId")?,
        field: r.need_text("Field")?,
        old_value: r.text("OldValue"),
        new_value: r.text("NewValue"),
        changed_at: r.need_instant("CreatedDate")?,
        changed_by: r.text("CreatedById"),
    })
}

/// A lead or contact record.
pub fn person(m: &Mapping, kind: CrmKind, record: &Record) -> Result<PersonFacts, RecordError> {
    let p = person_object(m, kind);
    let r = Reader {
        object: &p.object,
        record,
    };
    let mut attributes = BTreeMap::new();
    for attribute in m.attributes.keys() {
        if let Some(field) = attribute_field(m, kind, attribute)
            && let Some(value) = r.text(&field)
        {
            attributes.insert(attribute.clone(), value);
        }
    }
    Ok(PersonFacts {
        crm: CrmRef {
            kind,
            id: r.need_text("Id")?.into(),
        },
        status: r.text(&p.status).map(Into::into),
        owner_id: r.text(&p.owner).map(Into::into),
        title: r.text(&p.title).map(Into::into),
        account_id: p.account.as_deref().and_then(|f| r.text(f)).map(Into::into),
        converted: match &p.converted {
            Some(f) => r.flag(f)?.unwrap_or(false),
            None => false,
        },
        attributes: attributes.into(),
        prior_mql_at: prior_mql_at(&r, &p.prior_mql_dates)?,
        modified_at: r.modified()?,
    })
}

/// The earliest of the fields where the org kept MQL dates before mqlsync: datetimes, or
/// dates (taken as midnight UTC of that day).
fn prior_mql_at(r: &Reader<'_>, fields: &[String]) -> Result<Option<Timestamp>, RecordError> {
    let mut earliest: Option<Timestamp> = None;
    for field in fields {
        let Some(text) = r.text(field) else { continue };
        let at = parse_datetime(&text)
            .or_else(|| {
                text.trim()
                    .parse::<Date>()
                    .ok()
                    .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
                    .map(|z| z.timestamp())
            })
            .ok_or_else(|| r.err(field, format!("{text:?} is not a date or datetime")))?;
        earliest = Some(earliest.map_or(at, |e| e.min(at)));
    }
    Ok(earliest)
}

/// The fields to SELECT for opportunities.
pub const OPPORTUNITY_FIELDS: &[&str] = &[
    "Id",
    "AccountId",
    "IsClosed",
    "IsWon",
    "CloseDate",
    "CreatedDate",
    "SystemModstamp",
];

/// An opportunity record.
pub fn opportunity(m: &Mapping, record: &Record) -> Result<Opportunity, RecordError> {
    let r = Reader {
        object: &m.crm.opportunity,
        record,
    };
    Ok(Opportunity {
        id: r.need_text("Id")?,
        account_id: r.need_text("AccountId")?,
        is_closed: r.flag("IsClosed")?.unwrap_or(false),
        is_won: r.flag("IsWon")?.unwrap_or(false),
        close_date: r
            .text("CloseDate")
            .map(|d| {
                d.parse::<Date>()
                    .map_err(|_| r.err("CloseDate", format!("{d:?} is not a date")))
            })
            .transpose()?,
        created_at: r.need_instant("CreatedDate")?,
        modified_at: r.modified()?,
    })
}

/// The fields to SELECT for accounts (`crm.account`): owner, name, and every attribute read
/// on them.
pub fn account_fields(m: &Mapping) -> Vec<String> {
    let Some(a) = &m.crm.account else {
        return Vec::new();
    };
    let mut fields = vec![
        "Id".to_string(),
        "SystemModstamp".into(),
        a.owner.clone(),
        a.name.clone(),
    ];
    for f in m.attributes.values().filter_map(|f| f.account.as_ref()) {
        if !fields.contains(f.get_ref()) {
            fields.push(f.get_ref().clone());
        }
    }
    fields
}

/// An account record: its owner and the attributes its contacts carry. An account a
/// target-account list names carries its attribute `true`; one it does not, the field's value
/// or `false`.
pub fn account(m: &Mapping, record: &Record) -> Result<AccountFacts, RecordError> {
    let a = m
        .crm
        .account
        .as_ref()
        .expect("accounts are read only when mapped");
    let r = Reader {
        object: &a.object,
        record,
    };
    let id = r.need_text("Id")?;
    let name = r.text(&a.name);
    let mut attributes = BTreeMap::new();
    for (attribute, fields) in &m.attributes {
        if let Some(field) = &fields.account
            && let Some(value) = r.text(field.get_ref())
        {
            attributes.insert(attribute.clone(), value);
        }
    }
    if let Some(list) = &m.target_accounts {
        let listed = list.accounts.iter().any(|entry| {
            let entry = entry.trim();
            entry == id
                || name
                    .as_deref()
                    .is_some_and(|n| n.trim().eq_ignore_ascii_case(entry))
        });
        let attribute = list.attribute.get_ref().clone();
        if listed {
            attributes.insert(attribute, "true".into());
        } else {
            attributes
                .entry(attribute)
                .or_insert_with(|| "false".into());
        }
    }
    Ok(AccountFacts {
        id: id.into(),
        owner_id: r.text(&a.owner).map(Into::into),
        attributes: attributes.into(),
        modified_at: r.modified()?,
    })
}

/// The fields to SELECT for MQL records (reps' edits).
pub fn mql_fields(m: &Mapping) -> Vec<String> {
    let q = &m.crm.mql;
    vec![
        "Id".into(),
        "OwnerId".into(),
        "LastModifiedById".into(),
        "SystemModstamp".into(),
        q.external_id.clone(),
        q.status.clone(),
        q.rejection_reason.clone(),
    ]
}

/// An MQL record as a rep left it.
pub fn cycle_edit(m: &Mapping, record: &Record) -> Result<CycleEdit, RecordError> {
    let q = &m.crm.mql;
    let r = Reader {
        object: &q.object,
        record,
    };
    let status = r.need_text(&q.status)?;
    Ok(CycleEdit {
        external_id: r.need_text(&q.external_id)?,
        status: CycleStatus::parse(&status).ok_or_else(|| {
            r.err(
                &q.status,
                format!("{status:?} is not Open, Working, Rejected or Converted"),
            )
        })?,
        rejection_reason: r.text(&q.rejection_reason),
        owner_id: r.text("OwnerId"),
        modified_at: r.modified()?,
        modified_by: r.text("LastModifiedById"),
    })
}

/// A Salesforce Text field holds at most 255 characters.
const TEXT_FIELD_MAX: usize = 255;

/// `text` cut to at most `max` characters (not bytes), so the CRM does not refuse it.
fn truncate_text(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].to_string(),
        None => text.to_string(),
    }
}

/// The MQL record of a cycle, for an upsert by external id.
pub fn mql_record(m: &Mapping, cycle: &Cycle) -> Record {
    let q = &m.crm.mql;
    let dt = |t: Option<Timestamp>| t.map_or(Value::Null, |t| Value::String(format_datetime(t)));
    let (lead, contact) = match cycle.crm.kind {
        CrmKind::Lead => (Value::String(cycle.crm.id.to_string()), Value::Null),
        CrmKind::Contact => (Value::Null, Value::String(cycle.crm.id.to_string())),
    };
    let mut r = Record::new();
    let mut put = |k: &str, v: Value| {
        r.insert(k.to_string(), v);
    };
    put(&q.external_id, json!(cycle.external_id));
    put(&q.lead, lead);
    put(&q.contact, contact);
    put(&q.cycle_number, json!(cycle.number));
    put(&q.status, json!(cycle.status.as_str()));
    put(
        &q.rejection_reason,
        cycle
            .rejection_reason
            .clone()
            .map_or(Value::Null, Value::String),
    );
    put(
        &q.outcome,
        cycle.outcome.map_or(Value::Null, |o| json!(o.as_str())),
    );
    put(&q.score, json!(cycle.score));
    put(&q.threshold, json!(cycle.threshold));
    put(
        &q.threshold_id,
        cycle
            .threshold_id
            .clone()
            .map_or(Value::Null, Value::String),
    );
    put(&q.segment, json!(cycle.segment));
    put(
        &q.campaign_id,
        cycle.campaign.as_ref().map_or(Value::Null, |c| json!(c.id)),
    );
    put(
        &q.campaign_name,
        cycle
            .campaign
            .as_ref()
            .and_then(|c| c.name.as_deref())
            .map_or(Value::Null, |n| Value::String(n.to_string())),
    );
    put(
        &q.owner_at_mql,
        cycle
            .owner_at_mql
            .clone()
            .map_or(Value::Null, Value::String),
    );
    put(
        &q.team,
        cycle.team.clone().map_or(Value::Null, Value::String),
    );
    put(&q.mql_date, dt(Some(cycle.mql_at)));
    put(&q.sal_date, dt(cycle.sal_at));
    put(&q.closed_date, dt(cycle.closed_at));
    put(&q.sla_due, dt(cycle.sla_due_at));
    put(&q.overdue, json!(cycle.overdue));
    put(&q.reassignment_count, json!(cycle.reassignments));
    put(&q.backfilled, json!(cycle.backfilled));
    if let Some(field) = &q.qualified_by
        && let Some(label) = cycle.qualified_by()
    {
        put(field, json!(truncate_text(&label, TEXT_FIELD_MAX)));
    }
    put(
        &q.note,
        cycle.note.clone().map_or(Value::Null, Value::String),
    );
    if let Some(owner) = &cycle.owner_id {
        put("OwnerId", json!(owner));
    }
    r
}

/// The status and date stamps of a lead or contact, for an update by id.
pub fn stamps_record(m: &Mapping, crm: &CrmRef, stamps: &Stamps) -> Record {
    let p = person_object(m, crm.kind);
    let dt = |t: Option<Timestamp>| t.map_or(Value::Null, |t| Value::String(format_datetime(t)));
    let mut r = Record::new();
    r.insert("Id".into(), json!(crm.id));
    if let Some(status) = &stamps.status {
        r.insert(p.status.clone(), json!(status));
    }
    r.insert(p.mql_date_recent.clone(), dt(stamps.mql_recent));
    r.insert(p.mql_date_original.clone(), dt(stamps.mql_original));
    r.insert(p.sal_date_recent.clone(), dt(stamps.sal_recent));
    r.insert(p.sal_date_original.clone(), dt(stamps.sal_original));
    r.insert(p.mql_count.clone(), json!(stamps.mql_count));
    r
}

/// The knob's feedback as an update of its threshold record: the mapped fields only (a
/// mapping that names none writes nothing, and the sync enqueues none).
pub fn knob_feedback_record(
    m: &Mapping,
    feedback: &crate::report::feedback::KnobFeedback,
) -> Record {
    let t = &m.crm.threshold;
    let mut r = Record::new();
    r.insert("Id".into(), json!(feedback.threshold_id));
    if let Some(field) = &t.projected_weekly_mqls {
        r.insert(field.clone(), json!(feedback.projected_weekly));
    }
    if let Some(field) = &t.actual_weekly_mqls {
        r.insert(field.clone(), json!(feedback.actual_weekly));
    }
    if let Some(field) = &t.feedback_date {
        r.insert(field.clone(), json!(feedback.day.to_string()));
    }
    r
}

/// Which score part each MAP lead field id is, from the MAP's lead describe
/// (`[{"id": 58, "displayName": "Lead Score", "rest": {"name": "leadScore"}}, ...]`).
/// Serialisable, so that a run can keep it in the store instead of describing every time.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScoreFields {
    by_id: HashMap<i64, ScorePart>,
    by_display_name: HashMap<String, ScorePart>,
}

impl ScoreFields {
    /// The MAP field names (REST) the mapping reads scores from, in the order total,
    /// behaviour, demographic: what a kept copy of the describe was made for.
    pub fn mapped_names(m: &Mapping) -> Vec<String> {
        [
            Some(m.map.total_score.as_str()),
            m.map.behavior_score.as_deref(),
            m.map.demographic_score.as_deref(),
        ]
        .into_iter()
        .flatten()
        .map(str::to_string)
        .collect()
    }

    pub fn from_describe(m: &Mapping, describe: &[Value]) -> ScoreFields {
        let parts: Vec<(&str, ScorePart)> = [
            (Some(m.map.total_score.as_str()), ScorePart::Total),
            (m.map.behavior_score.as_deref(), ScorePart::Behavior),
            (m.map.demographic_score.as_deref(), ScorePart::Demographic),
        ]
        .into_iter()
        .filter_map(|(name, part)| name.map(|n| (n, part)))
        .collect();
        let mut fields = ScoreFields::default();
        for field in describe {
            let name = field.pointer("/rest/name").and_then(Value::as_str);
            let Some((_, part)) = parts.iter().find(|(n, _)| Some(*n) == name) else {
                continue;
            };
            if let Some(id) = field.get("id").and_then(Value::as_i64) {
                fields.by_id.insert(id, *part);
            }
            if let Some(display) = field.get("displayName").and_then(Value::as_str) {
                fields.by_display_name.insert(display.to_string(), *part);
            }
        }
        fields
    }

    /// The MAP field ids of the score fields, for activity filters.
    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.by_id.keys().copied().collect();
        ids.sort_unstable();
        ids
    }
}

fn attribute<'a>(activity: &'a Value, name: &str) -> Option<&'a Value> {
    activity
        .get("attributes")?
        .as_array()?
        .iter()
        .find(|a| a.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|a| a.get("value"))
}

fn as_number(v: &Value) -> Option<f64> {
    v.as_f64().or_else(|| {
        v.as_str()
            .and_then(|s| s.trim().trim_start_matches('+').parse().ok())
    })
}

/// A Change Score activity as a score change; `Ok(None)` when it changes a field that is not
/// one of the mapped score fields.
pub fn score_change(
    fields: &ScoreFields,
    activity: &Value,
) -> Result<Option<ScoreChange>, RecordError> {
    let id = activity
        .get("marketoGUID")
        .and_then(|g| {
            g.as_str()
                .map(str::to_string)
                .or_else(|| g.as_i64().map(|n| n.to_string()))
        })
        .or_else(|| activity.get("id").map(Value::to_string))
        .unwrap_or_default();
    let err = |field: &str, message: String| RecordError {
        object: "activity".into(),
        id: id.clone(),
        field: field.into(),
        message,
    };
    let part = activity
        .get("primaryAttributeValueId")
        .and_then(Value::as_i64)
        .and_then(|fid| fields.by_id.get(&fid))
        .or_else(|| {
            activity
                .get("primaryAttributeValue")
                .and_then(Value::as_str)
                .and_then(|n| fields.by_display_name.get(n))
        });
    let Some(part) = part.copied() else {
        return Ok(None);
    };
    let lead = activity.get("leadId").and_then(|v| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    });
    let lead = lead.ok_or_else(|| err("leadId", "missing or not an integer".into()))?;
    let at = activity
        .get("activityDate")
        .and_then(Value::as_str)
        .and_then(parse_datetime)
        .ok_or_else(|| err("activityDate", "missing or not a datetime".into()))?;
    let new_value = attribute(activity, "New Value")
        .and_then(as_number)
        .ok_or_else(|| err("New Value", "missing or not a number".into()))?;
    Ok(Some(ScoreChange {
        map_lead_id: lead,
        change_id: id.clone(),
        part,
        new_value,
        old_value: attribute(activity, "Old Value").and_then(as_number),
        campaign: activity
            .get("campaignId")
            .and_then(|c| c.as_i64())
            .map(|c| Campaign {
                id: c.to_string().into(),
                name: None,
            }),
        at,
    }))
}

/// [`score_change`] of an activity already read into its connector type (the activities
/// API's pages and the bulk export's files): the same rules without a JSON round trip, which
/// cost a backfill of millions of changes more than the engine did.
pub fn score_change_of(
    fields: &ScoreFields,
    activity: &crate::connectors::marketo::Activity,
) -> Result<Option<ScoreChange>, RecordError> {
    let part = activity
        .primary_attribute_value_id
        .as_ref()
        .and_then(|v| v.as_i64().or_else(|| v.as_str()?.trim().parse().ok()))
        .and_then(|fid| fields.by_id.get(&fid))
        .or_else(|| {
            activity
                .primary_attribute_value
                .as_deref()
                .and_then(|n| fields.by_display_name.get(n))
        });
    let Some(part) = part.copied() else {
        return Ok(None);
    };
    let attribute = |name: &str| {
        activity
            .attributes
            .iter()
            .find(|a| a.name == name)
            .map(|a| &a.value)
    };
    let new_value = attribute("New Value")
        .and_then(as_number)
        .ok_or_else(|| RecordError {
            object: "activity".into(),
            id: activity.marketo_guid.clone(),
            field: "New Value".into(),
            message: "missing or not a number".into(),
        })?;
    Ok(Some(ScoreChange {
        map_lead_id: activity.lead_id,
        change_id: activity.marketo_guid.clone(),
        part,
        new_value,
        old_value: attribute("Old Value").and_then(as_number),
        campaign: activity.campaign_id.map(|c| Campaign {
            id: c.to_string().into(),
            name: None,
        }),
        at: activity.activity_date,
    }))
}

/// A MAP activity as the hand-raiser rules match on it: the primary asset (a form, a
/// program) by id and name, and for a program status change the status moved to, by name
/// ("New Status") or, when the MAP gives only that, by id ("New Status ID").
pub fn map_activity_of(activity: &crate::connectors::marketo::Activity) -> MapActivity {
    let text = |v: &Value| match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let attribute = |name: &str| {
        activity
            .attributes
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
            .and_then(|a| text(&a.value))
    };
    MapActivity {
        map_lead_id: activity.lead_id,
        activity_id: activity.marketo_guid.as_str().into(),
        type_id: activity.activity_type_id,
        asset_id: activity
            .primary_attribute_value_id
            .as_ref()
            .and_then(text)
            .map(Text::from),
        asset_name: activity
            .primary_attribute_value
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(Text::new),
        status: attribute("New Status")
            .or_else(|| attribute("New Status ID"))
            .map(Text::from),
        campaign: activity.campaign_id.map(|c| Campaign {
            id: c.to_string().into(),
            name: None,
        }),
        at: activity.activity_date,
    }
}

/// The CRM link of a MAP lead record (`sfdcLeadId`, `sfdcContactId`, `updatedAt`); a contact
/// id wins over a lead id (the lead was converted).
pub fn link(m: &Mapping, lead: &Value) -> Result<MapLink, RecordError> {
    let id = lead.get("id").and_then(Value::as_i64);
    let err = |field: &str, message: &str| RecordError {
        object: "MAP lead".into(),
        id: id.map_or_else(|| "(no id)".into(), |i| i.to_string()),
        field: field.into(),
        message: message.into(),
    };
    let map_lead_id = id.ok_or_else(|| err("id", "missing"))?;
    let text = |f: &str| {
        lead.get(f)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let crm = match (text(&m.map.crm_contact_id), text(&m.map.crm_lead_id)) {
        (Some(c), _) => Some(CrmRef {
            kind: CrmKind::Contact,
            id: c.into(),
        }),
        (None, Some(l)) => Some(CrmRef {
            kind: CrmKind::Lead,
            id: l.into(),
        }),
        _ => None,
    };
    let at = text("updatedAt")
        .as_deref()
        .and_then(parse_datetime)
        .ok_or_else(|| err("updatedAt", "missing or not a datetime"))?;
    Ok(MapLink {
        map_lead_id,
        crm,
        at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping;

    fn m() -> Mapping {
        mapping::load(None).unwrap().mapping
    }

    fn rec(v: Value) -> Record {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_threshold_record_reads_its_segment_window_and_version() {
        let t = threshold(
            &m(),
            &rec(json!({"Id": "a0T1", "Region__c": "EMEA", "Team__c": null, "Score_Threshold__c": 80.0,
                "Effective_From__c": "2026-12-01T00:00:00.000+0000", "Effective_To__c": null, "Active__c": true,
                "LastModifiedById": "005M", "SystemModstamp": "2026-11-20T09:30:00.000+0000", "IsDeleted": false})),
        )
        .unwrap();
        assert_eq!(
            t.segment,
            BTreeMap::from([("region".to_string(), "EMEA".to_string())])
        );
        assert_eq!((t.score, t.active, t.deleted), (80.0, true, false));
        assert_eq!(
            t.effective_from,
            Some("2026-12-01T00:00:00Z".parse().unwrap())
        );
        assert_eq!(t.modified_at, "2026-11-20T09:30:00Z".parse().unwrap());
        assert_eq!(t.set_by.as_deref(), Some("005M"));
    }

    #[test]
    fn a_bad_field_fails_the_record_naming_object_id_and_field() {
        let e = threshold(&m(), &rec(json!({"Id": "a0T2", "Score_Threshold__c": "high", "SystemModstamp": "2026-11-20T09:30:00.000+0000"}))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "MQL_Threshold__c a0T2: Score_Threshold__c: \"high\" is not a number"
        );
    }

    #[test]
    fn the_earliest_prior_mql_date_is_read_from_dates_and_datetimes() {
        let mut m = m();
        m.crm.lead.prior_mql_dates = vec!["MQL_Date__c".into(), "Old_MQL_Date__c".into()];
        assert!(person_fields(&m, CrmKind::Lead).contains(&"Old_MQL_Date__c".to_string()));
        let lead = |a: Value, b: Value| {
            person(
                &m,
                CrmKind::Lead,
                &rec(
                    json!({"Id": "00QA", "Status": "Open", "MQL_Date__c": a, "Old_MQL_Date__c": b,
                    "SystemModstamp": "2026-11-20T09:30:00.000+0000"}),
                ),
            )
        };
        let p = lead(json!("2024-02-03T10:00:00.000+0000"), json!("2023-05-01")).unwrap();
        assert_eq!(
            p.prior_mql_at,
            Some("2023-05-01T00:00:00Z".parse().unwrap())
        );
        assert_eq!(lead(Value::Null, Value::Null).unwrap().prior_mql_at, None);
        let e = lead(json!("soon"), Value::Null).unwrap_err();
        assert_eq!(e.field, "MQL_Date__c");
    }

    #[test]
    fn a_contact_reads_parent_fields_for_its_attributes() {
        let p = person(
            &m(),
            CrmKind::Contact,
            &rec(json!({"Id": "003A", "Contact_Status__c": "Open", "OwnerId": "005A", "Title": "CTO", "AccountId": "001A",
                "Region__c": "NA", "Account": {"Industry": "Software"}, "SystemModstamp": "2026-11-20T09:30:00.000+0000"})),
        )
        .unwrap();
        assert_eq!(p.attributes.get("vertical"), Some("Software"));
        assert_eq!(p.attributes.get("region"), Some("NA"));
        assert_eq!(p.account_id.as_deref(), Some("001A"));
        assert!(person_fields(&m(), CrmKind::Contact).contains(&"Account.Industry".to_string()));
    }

    #[test]
    fn a_cycle_round_trips_through_its_mql_record() {
        let cycle = Cycle {
            external_id: "00QA-1".into(),
            crm: CrmRef {
                kind: CrmKind::Lead,
                id: "00QA".into(),
            },
            map_lead_id: Some(1),
            number: 1,
            status: CycleStatus::Working,
            score: 85.0,
            threshold: 80.0,
            threshold_id: Some("a0T1".into()),
            segment: "region=EMEA".into(),
            campaign: Some(Campaign {
                id: "1001".into(),
                name: None,
            }),
            owner_at_mql: Some("005A".into()),
            owner_id: Some("005B".into()),
            team: Some("SDR EMEA".into()),
            mql_at: "2026-03-02T10:00:00Z".parse().unwrap(),
            sal_at: Some("2026-03-02T13:00:00Z".parse().unwrap()),
            closed_at: None,
            rejection_reason: None,
            outcome: None,
            sla_due_at: None,
            reassign_at: None,
            overdue: false,
            reassignments: 1,
            backfilled: false,
            written_at: None,
            hand_raise: None,
            account_id: None,
            note: None,
            crm_modified_at: None,
            crm_versions: Box::default(),
        };
        let r = mql_record(&m(), &cycle);
        assert_eq!(r["External_Id__c"], "00QA-1");
        assert_eq!(r["Lead__c"], "00QA");
        assert_eq!(r["Contact__c"], Value::Null);
        assert_eq!(r["MQL_Date__c"], "2026-03-02T10:00:00.000+0000");
        assert_eq!(r["OwnerId"], "005B");
        let mut back = r.clone();
        back.insert(
            "SystemModstamp".into(),
            json!("2026-03-02T13:00:01.000+0000"),
        );
        let edit = cycle_edit(&m(), &back).unwrap();
        assert_eq!(
            (edit.external_id.as_str(), edit.status),
            ("00QA-1", CycleStatus::Working)
        );
    }

    #[test]
    fn a_change_score_activity_becomes_a_score_change_of_the_mapped_part() {
        let describe = vec![
            json!({"id": 58, "displayName": "Lead Score", "dataType": "score", "rest": {"name": "leadScore"}}),
            json!({"id": 612, "displayName": "Behavior Score", "dataType": "score", "rest": {"name": "behaviorScore"}}),
        ];
        let fields = ScoreFields::from_describe(&m(), &describe);
        assert_eq!(fields.ids(), [58, 612]);
        let activity = json!({"id": 9, "marketoGUID": "9", "leadId": 1001, "activityDate": "2026-03-02T10:00:00Z",
            "activityTypeId": 22, "campaignId": 1004, "primaryAttributeValueId": 58, "primaryAttributeValue": "Lead Score",
            "attributes": [{"name": "Change Value", "value": "+10"}, {"name": "New Value", "value": 45}, {"name": "Old Value", "value": 35}]});
        let c = score_change(&fields, &activity).unwrap().unwrap();
        assert_eq!(
            (c.map_lead_id, c.part, c.new_value, c.old_value),
            (1001, ScorePart::Total, 45.0, Some(35.0))
        );
        assert_eq!(c.campaign.unwrap().id, "1004");
        let other = json!({"id": 10, "leadId": 1, "activityDate": "2026-03-02T10:00:00Z", "primaryAttributeValueId": 77, "attributes": []});
        assert_eq!(score_change(&fields, &other).unwrap(), None);
        // The typed reading agrees with the JSON one, on a change, another field, a change
        // known by its display name only, and one without a new value.
        let by_name = json!({"marketoGUID": "g-3", "leadId": 7, "activityDate": "2026-03-02T11:00:00Z",
            "activityTypeId": 22, "primaryAttributeValue": "Behavior Score",
            "attributes": [{"name": "New Value", "value": "12"}]});
        let broken = json!({"marketoGUID": "g-4", "leadId": 7, "activityDate": "2026-03-02T11:00:00Z",
            "activityTypeId": 22, "primaryAttributeValueId": 58, "attributes": []});
        let other = json!({"marketoGUID": "g-5", "leadId": 1, "activityDate": "2026-03-02T10:00:00Z",
            "activityTypeId": 22, "primaryAttributeValueId": 77, "attributes": []});
        for json in [activity, by_name, broken, other] {
            let typed: crate::connectors::marketo::Activity =
                serde_json::from_value(json.clone()).unwrap();
            assert_eq!(
                score_change_of(&fields, &typed),
                score_change(&fields, &json),
                "{json}"
            );
        }
    }

    #[test]
    fn a_map_lead_links_to_its_contact_before_its_lead() {
        let l = link(&m(), &json!({"id": 7, "sfdcLeadId": "00QA", "sfdcContactId": "003A", "updatedAt": "2026-03-02T10:00:00Z"})).unwrap();
        assert_eq!(
            l.crm,
            Some(CrmRef {
                kind: CrmKind::Contact,
                id: "003A".into()
            })
        );
        let l = link(
            &m(),
            &json!({"id": 8, "sfdcLeadId": null, "updatedAt": "2026-03-02T10:00:00Z"}),
        )
        .unwrap();
        assert_eq!(l.crm, None);
    }

    #[test]
    fn an_account_carries_its_field_or_the_list_and_its_owner() {
        let mut m = m();
        m.crm.account = Some(mapping::AccountObject {
            object: "Account".into(),
            owner: "OwnerId".into(),
            name: "Name".into(),
        });
        m.attributes.insert(
            "target_account".into(),
            mapping::AttributeFields {
                lead: None,
                contact: None,
                account: Some(toml::Spanned::new(0..0, "Target_Account__c".into())),
                threshold: None,
            },
        );
        assert_eq!(
            account_fields(&m),
            [
                "Id",
                "SystemModstamp",
                "OwnerId",
                "Name",
                "Target_Account__c"
            ]
        );
        let at = "2026-11-20T09:30:00.000+0000";
        let read = |m: &Mapping, id: &str, name: &str, flag: Value| {
            account(
                m,
                &rec(json!({"Id": id, "Name": name, "OwnerId": "005A", "Target_Account__c": flag, "SystemModstamp": at})),
            )
            .unwrap()
        };
        let a = read(&m, "001A", "Acme Corp", json!(true));
        assert_eq!(a.attributes.get("target_account"), Some("true"));
        assert_eq!(a.owner_id.as_deref(), Some("005A"));
        assert_eq!(
            read(&m, "001B", "Beta", json!(false))
                .attributes
                .get("target_account"),
            Some("false")
        );
        // A list in the mapping: by name (any case) or id; the rest keep their field.
        m.target_accounts = Some(mapping::TargetAccounts {
            attribute: toml::Spanned::new(0..0, "target_account".into()),
            accounts: vec!["beta".into(), "001C".into()],
        });
        assert_eq!(
            read(&m, "001B", "Beta", json!(false))
                .attributes
                .get("target_account"),
            Some("true")
        );
        assert_eq!(
            read(&m, "001C", "Gamma", Value::Null)
                .attributes
                .get("target_account"),
            Some("true")
        );
        assert_eq!(
            read(&m, "001D", "Delta", Value::Null)
                .attributes
                .get("target_account"),
            Some("false")
        );
        assert_eq!(
            read(&m, "001A", "Acme Corp", json!(true))
                .attributes
                .get("target_account"),
            Some("true")
        );
    }
}
