//! `mqlsync check --remote`: the mapping checked against the org and the MAP before a run, so
//! that a field renamed in the CRM, a permission missing or field history switched off is one
//! line naming the mapping key, not a run that stops on `INVALID_FIELD` halfway.
//!
//! The fields checked are the ones the sync really reads and writes: the SELECT lists of
//! [`records`] and the keys of the records [`records`] and [`writes`] build, so this list
//! cannot drift from the code. One describe call per object, one Marketo lead describe.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde_json::Value;

use crate::connectors::marketo::Map;
use crate::connectors::{ConnectorError, Crm};
use crate::engine::model::{CrmId, CrmKind, CrmRef, Cycle, CycleStatus, HandRaise, Stamps};
use crate::mapping::Mapping;

use super::records::{self, OPPORTUNITY_FIELDS};
use super::writes;

/// The org or the MAP lacks what the mapping names: input the user can fix (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error(
    "{count} problem(s) between the mapping and the org or the MAP (listed above): fix the mapping, or deploy mappings/salesforce/ and grant its permission set"
)]
pub struct Mismatch {
    pub count: usize,
}

/// One thing in the org or the MAP that the mapping expects and does not find.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The mapping keys that name the field (empty for fields mqlsync always uses).
    pub keys: Vec<String>,
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.keys.is_empty() {
            f.write_str(&self.what)
        } else {
            write!(f, "{}: {}", self.keys.join(", "), self.what)
        }
    }
}

/// What the sync does with a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Use {
    Read,
    Write,
    /// Written, and the key that upserts go by.
    UpsertKey,
}

/// Every (object, field, use) of a sync with this mapping.
pub(crate) fn field_uses(m: &Mapping) -> BTreeMap<String, BTreeMap<String, Use>> {
    let mut uses: BTreeMap<String, BTreeMap<String, Use>> = BTreeMap::new();
    let mut add = |object: &str, fields: &mut dyn Iterator<Item = String>, use_: Use| {
        let entry = uses.entry(object.to_string()).or_default();
        for field in fields {
            let slot = entry.entry(field).or_insert(use_);
            *slot = (*slot).max(use_);
        }
    };
    let c = &m.crm;
    add(
        &c.threshold.object,
        &mut records::threshold_fields(m).into_iter(),
        Use::Read,
    );
    let history = format!(
        "{}__History",
        c.threshold
            .object
            .strip_suffix("__c")
            .unwrap_or(&c.threshold.object)
    );
    let history_fields = [
        "ParentId",
        "Field",
        "OldValue",
        "NewValue",
        "CreatedDate",
        "CreatedById",
    ];
    add(
        &history,
        &mut history_fields.map(String::from).into_iter(),
        Use::Read,
    );
    // The knob's feedback, when the mapping names its fields.
    let feedback = [
        &c.threshold.projected_weekly_mqls,
        &c.threshold.actual_weekly_mqls,
        &c.threshold.feedback_date,
    ];
    add(
        &c.threshold.object,
        &mut feedback.into_iter().flatten().cloned(),
        Use::Write,
    );
    add(
        &c.opportunity,
        &mut OPPORTUNITY_FIELDS.iter().map(|f| f.to_string()),
        Use::Read,
    );
    if let Some(account) = &c.account {
        add(
            &account.object,
            &mut records::account_fields(m).into_iter(),
            Use::Read,
        );
    }
    add(
        &c.mql.object,
        &mut records::mql_fields(m).into_iter(),
        Use::Read,
    );
    let sample = sample_cycle();
    add(
        &c.mql.object,
        &mut records::mql_record(m, &sample).into_iter().map(|(k, _)| k),
        Use::Write,
    );
    add(
        &c.mql.object,
        &mut std::iter::once(c.mql.external_id.clone()),
        Use::UpsertKey,
    );
    for (kind, object) in [
        (CrmKind::Lead, &c.lead.object),
        (CrmKind::Contact, &c.contact.object),
    ] {
        add(
            object,
            &mut records::person_fields(m, kind).into_iter(),
            Use::Read,
        );
        let crm = CrmRef {
            kind,
            id: CrmId::default(),
        };
        let stamps = Stamps {
            status: Some("".into()),
            ..Stamps::default()
        };
        let written = records::stamps_record(m, &crm, &stamps)
            .into_iter()
            .map(|(k, _)| k);
        add(object, &mut written.filter(|f| f != "Id"), Use::Write);
    }
    let due = Some(jiff::civil::date(2000, 1, 1));
    let task = writes::task(m, "", "", "", &sample.crm, due);
    add(&c.task, &mut task.into_iter().map(|(k, _)| k), Use::Write);
    uses
}

/// A cycle with every optional part set, so that the record written for it has every field.
fn sample_cycle() -> Cycle {
    let at = Timestamp::UNIX_EPOCH;
    Cycle {
        external_id: String::new(),
        crm: CrmRef {
            kind: CrmKind::Lead,
            id: CrmId::default(),
        },
        map_lead_id: Some(0),
        number: 1,
        status: CycleStatus::Open,
        score: 0.0,
        threshold: 0.0,
        threshold_id: Some(String::new()),
        segment: String::new(),
        campaign: None,
        owner_at_mql: Some(String::new()),
        owner_id: Some(String::new()),
        team: Some(String::new()),
        mql_at: at,
        sal_at: Some(at),
        closed_at: Some(at),
        rejection_reason: Some(String::new()),
        outcome: None,
        sla_due_at: Some(at),
        reassign_at: Some(at),
        overdue: false,
        reassignments: 0,
        backfilled: false,
        written_at: None,
        hand_raise: Some(Box::new(HandRaise {
            rule: String::new(),
            activity_id: String::new(),
            type_id: 0,
            asset: None,
            status: None,
            at,
        })),
        account_id: None,
        note: Some(String::new()),
        crm_modified_at: None,
        crm_versions: Box::default(),
    }
}

/// The mapping keys (dotted paths) whose value is `field`.
fn keys_naming(m: &Mapping, field: &str) -> Vec<String> {
    fn walk(path: &str, value: &Value, field: &str, out: &mut Vec<String>) {
        match value {
            Value::String(s) if s == field => out.push(path.to_string()),
            Value::Object(map) => {
                for (k, v) in map {
                    let next = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(&next, v, field, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (section, value) in [
        ("crm", serde_json::to_value(&m.crm)),
        ("attributes", serde_json::to_value(&m.attributes)),
        ("map", serde_json::to_value(&m.map)),
    ] {
        if let Ok(value) = value {
            walk(section, &value, field, &mut out);
        }
    }
    out
}

/// Checks the mapping against the CRM (one describe per object) and the MAP (one lead
/// describe). A describe that fails for another reason than a missing object is an error.
pub async fn check<C: Crm, M: Map>(
    crm: &C,
    map: &M,
    m: &Mapping,
) -> Result<Vec<Problem>, ConnectorError> {
    let mut problems = Vec::new();
    let mut problem = |field: Option<&str>, what: String| {
        let keys = field.map(|f| keys_naming(m, f)).unwrap_or_default();
        problems.push(Problem { keys, what });
    };
    for (object, fields) in field_uses(m) {
        let describe = match crm.describe(&object).await {
            Ok(d) => d,
            Err(ConnectorError::Request { status: 404, .. }) => {
                let what = if object.ends_with("__History") {
                    format!(
                        "{object} does not exist: switch on field history for the threshold object"
                    )
                } else {
                    format!("object {object} does not exist, or the integration user cannot see it")
                };
                problem(None, what);
                continue;
            }
            Err(e) => return Err(e),
        };
        let described: BTreeMap<&str, &Value> = describe
            .get("fields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|f| Some((f.get("name")?.as_str()?, f)))
            .collect();
        let relationships: BTreeSet<&str> = described
            .values()
            .filter_map(|f| f.get("relationshipName")?.as_str())
            .collect();
        for (field, use_) in fields {
            // `Account.Industry`: the first hop must be a relationship of this object.
            if let Some((hop, _)) = field.split_once('.') {
                if !relationships.contains(hop) {
                    problem(
                        Some(&field),
                        format!("{object} has no relationship {hop} (for {field})"),
                    );
                }
                continue;
            }
            let Some(d) = described.get(field.as_str()) else {
                problem(
                    Some(&field),
                    format!("{object} has no field {field}, or the integration user cannot see it"),
                );
                continue;
            };
            let flag = |name: &str| d.get(name).and_then(Value::as_bool).unwrap_or(false);
            if use_ >= Use::Write && !flag("createable") && !flag("updateable") {
                problem(
                    Some(&field),
                    format!("{object}.{field} is not writable by the integration user"),
                );
            }
            if use_ == Use::UpsertKey && !flag("externalId") {
                problem(
                    Some(&field),
                    format!(
                        "{object}.{field} is not an External ID field: MQL records are upserted by it"
                    ),
                );
            }
        }
    }
    let described = map.describe().await?;
    let names: BTreeSet<&str> = described
        .iter()
        .filter_map(|f| f.get("rest")?.get("name")?.as_str())
        .collect();
    for (field, why) in map_fields(m) {
        if !names.contains(field) {
            problem(
                Some(field),
                format!("the MAP has no lead field {field} (REST name), which {why}"),
            );
        }
    }
    Ok(problems)
}

/// The MAP lead fields the sync reads with this mapping, each with what it is read for: the
/// score fields of the configured score source only (a standard Marketo instance has
/// `leadScore`, not the custom behaviour and demographic scores), and the CRM id fields that
/// link MAP leads to CRM people.
fn map_fields(m: &Mapping) -> Vec<(&str, String)> {
    let mm = &m.map;
    let source = m.score.source.get_ref();
    let reads = format!("score.source = {source:?} reads");
    let scores = match source.as_str() {
        "total" => vec![Some(&mm.total_score)],
        _ => vec![mm.behavior_score.as_ref(), mm.demographic_score.as_ref()],
    };
    let mut fields: Vec<(&str, String)> = scores
        .into_iter()
        .flatten()
        .map(|f| (f.as_str(), reads.clone()))
        .collect();
    fields.push((&mm.crm_lead_id, "links MAP leads to CRM leads".into()));
    fields.push((&mm.crm_contact_id, "links MAP leads to CRM contacts".into()));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(source: &str) -> Mapping {
        let text = crate::mapping::DEFAULT_MAPPING
            .replace("source = \"total\"", &format!("source = \"{source}\""));
        crate::mapping::parse(&text, "mapping.toml")
            .unwrap()
            .mapping
    }

    fn fields(source: &str) -> Vec<String> {
        let m = mapping(source);
        map_fields(&m)
            .into_iter()
            .map(|(f, _)| f.to_string())
            .collect()
    }

    #[test]
    fn only_the_score_fields_of_the_score_source_are_required_of_the_map() {
        assert_eq!(
            fields("total"),
            ["leadScore", "sfdcLeadId", "sfdcContactId"],
            "a standard Marketo instance has no behaviour or demographic score"
        );
        let parts = [
            "behaviorScore",
            "demographicScore",
            "sfdcLeadId",
            "sfdcContactId",
        ];
        assert_eq!(fields("behavior_plus_demographic"), parts);
        assert_eq!(fields("time_decayed"), parts);
        let m = mapping("behavior_plus_demographic");
        assert_eq!(
            map_fields(&m)[0].1,
            "score.source = \"behavior_plus_demographic\" reads"
        );
    }
}
