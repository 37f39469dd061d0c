//! Marketo leads: the field catalogue (describe, describe2, with `leadScore` and the custom
//! `behaviorScore`/`demographicScore` fields of `dataType: score`), leads by filter (300 a
//! page, 300 filter values, 1003 past 1,000 matches, paging by position), lead by id, and
//! the createOrUpdate sync with per-record `skipped` reasons.
//!
//! It must not touch activities directly: it returns the changes it made and the caller
//! records them as activities.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::envelope::ApiError;
use super::routes::Params;
use crate::sandbox::world::{CrmKind, Person, ScoreField};

#[derive(Debug)]
/// One lead field: id, REST name, display name, data type, length, updateable, searchable.
pub struct FieldDef {
    pub id: i64,
    pub name: &'static str,
    pub display: &'static str,
    pub data_type: &'static str,
    pub length: Option<i64>,
    pub updateable: bool,
    pub searchable: bool,
}

const fn f(
    id: i64,
    name: &'static str,
    display: &'static str,
    data_type: &'static str,
    length: Option<i64>,
    updateable: bool,
    searchable: bool,
) -> FieldDef {
    FieldDef {
        id,
        name,
        display,
        data_type,
        length,
        updateable,
        searchable,
    }
}

pub const FIELDS: &[FieldDef] = &[
    f(1, "id", "Id", "integer", None, false, true),
    f(2, "email", "Email Address", "email", Some(255), true, true),
    f(
        3,
        "firstName",
        "First Name",
        "string",
        Some(255),
        true,
        false,
    ),
    f(4, "lastName", "Last Name", "string", Some(255), true, false),
    f(5, "title", "Job Title", "string", Some(255), true, false),
    f(
        6,
        "company",
        "Company Name",
        "string",
        Some(255),
        true,
        false,
    ),
    f(7, "industry", "Industry", "string", Some(255), true, false),
    f(8, "country", "Country", "string", Some(255), true, false),
    f(58, "leadScore", "Lead Score", "score", None, true, false),
    f(
        3001,
        "behaviorScore",
        "Behavior Score",
        "score",
        None,
        true,
        false,
    ),
    f(
        3002,
        "demographicScore",
        "Demographic Score",
        "score",
        None,
        true,
        false,
    ),
    f(3003, "region", "Region", "string", Some(255), true, true),
    f(
        60,
        "sfdcLeadId",
        "SFDC Lead ID",
        "string",
        Some(18),
        false,
        true,
    ),
    f(
        61,
        "sfdcContactId",
        "SFDC Contact ID",
        "string",
        Some(18),
        false,
        true,
    ),
    f(
        62,
        "sfdcAccountId",
        "SFDC Account ID",
        "string",
        Some(18),
        false,
        true,
    ),
    f(
        63,
        "sfdcType",
        "SFDC Type",
        "string",
        Some(255),
        false,
        false,
    ),
    f(
        10,
        "createdAt",
        "Created At",
        "datetime",
        None,
        false,
        false,
    ),
    f(
        11,
        "updatedAt",
        "Updated At",
        "datetime",
        None,
        false,
        false,
    ),
];

pub fn field(name: &str) -> Option<&'static FieldDef> {
    FIELDS.iter().find(|f| f.name == name)
}

pub fn score_field_name(field: ScoreField) -> &'static str {
    match field {
        ScoreField::LeadScore => "leadScore",
        ScoreField::BehaviorScore => "behaviorScore",
        ScoreField::DemographicScore => "demographicScore",
    }
}

const DEFAULT_FIELDS: [&str; 6] = [
    "id",
    "email",
    "updatedAt",
    "createdAt",
    "firstName",
    "lastName",
];
pub const MAX_BATCH: usize = 300;
const MAX_MATCHES: usize = 1000;

/// A Marketo lead; values by REST field name (absent means null).
#[derive(Clone, Debug)]
pub struct Lead {
    pub id: i64,
    pub values: BTreeMap<&'static str, Value>,
}

impl Lead {
    pub fn from_person(p: &Person) -> Self {
        let mut values = BTreeMap::new();
        let mut put = |k: &'static str, v: Value| {
            values.insert(k, v);
        };
        put("id", json!(p.map_id));
        put("email", json!(p.email));
        put("firstName", json!(p.first_name));
        put("lastName", json!(p.last_name));
        put("title", json!(p.title));
        put("company", json!(p.company));
        put("industry", json!(p.vertical));
        put("leadScore", json!(p.lead_score));
        put("behaviorScore", json!(p.behavior_score));
        put("demographicScore", json!(p.demographic_score));
        put("region", json!(p.region));
        let (lead, contact, kind) = match (p.crm_kind, &p.crm_id) {
            (_, None) => (None, None, None),
            (CrmKind::Lead, Some(id)) => (Some(id.clone()), None, Some("Lead")),
            (CrmKind::Contact, Some(id)) => (None, Some(id.clone()), Some("Contact")),
        };
        put("sfdcLeadId", json!(lead));
        put("sfdcContactId", json!(contact));
        put("sfdcAccountId", json!(p.account_id));
        put("sfdcType", json!(kind));
        put("createdAt", json!(format_time(p.created_at)));
        put("updatedAt", json!(format_time(p.modified_at)));
        Lead {
            id: p.map_id,
            values,
        }
    }

    pub fn get(&self, name: &str) -> &Value {
        self.values.get(name).unwrap_or(&Value::Null)
    }

    pub fn score(&self, name: &str) -> i64 {
        self.get(name).as_i64().unwrap_or(0)
    }

    /// The lead as a result record with the requested fields (`id` first).
    pub fn project(&self, fields: &[&'static FieldDef]) -> Value {
        let mut out = Map::new();
        out.insert("id".into(), json!(self.id));
        for f in fields {
            out.insert(f.name.into(), self.get(f.name).clone());
        }
        Value::Object(out)
    }
}

/// Marketo's timestamp form in REST answers: `2026-11-02T12:00:00Z`.
pub fn format_time(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parses the requested `fields` (or the default set); unknown names give 1006.
pub fn requested_fields(params: &Params) -> Result<Vec<&'static FieldDef>, ApiError> {
    let names = params.list("fields");
    if names.is_empty() {
        return Ok(DEFAULT_FIELDS.iter().filter_map(|n| field(n)).collect());
    }
    names
        .iter()
        .map(|n| field(n).ok_or_else(|| ApiError::new("1006", format!("Field '{n}' not found"))))
        .collect()
}

/// All leads with lookup indexes.
#[derive(Debug, Default)]
pub struct LeadTable {
    pub by_id: BTreeMap<i64, Lead>,
    by_email: HashMap<String, i64>,
    /// Leads by their CRM link (`sfdcLeadId`, `sfdcContactId`): a filter on them looks its
    /// values up instead of scanning every lead (an org of 1,000,000 people asks 3,334 times).
    by_link: HashMap<(&'static str, String), BTreeSet<i64>>,
    next_id: i64,
}

/// The lead fields [`LeadTable`] indexes for leads by filter.
const LINK_FIELDS: [&str; 2] = ["sfdcLeadId", "sfdcContactId"];

/// A field change the caller records as a Change Data Value (13) activity.
pub struct Change {
    pub lead_id: i64,
    pub field: &'static FieldDef,
    pub old: Value,
    pub new: Value,
}

/// What one sync did.
pub struct SyncOutcome {
    pub results: Vec<Value>,
    pub created: Vec<i64>,
    pub changes: Vec<Change>,
}

impl LeadTable {
    pub fn new(people: &[Person]) -> Self {
        let mut table = LeadTable::default();
        for p in people {
            table.insert(Lead::from_person(p));
        }
        table.next_id = table.by_id.keys().next_back().copied().unwrap_or(0) + 1;
        table
    }

    fn insert(&mut self, lead: Lead) {
        if let Some(email) = lead.get("email").as_str() {
            self.by_email.insert(email.to_lowercase(), lead.id);
        }
        for field in LINK_FIELDS {
            if let Some(value) = lead.get(field).as_str() {
                self.link(field, value, lead.id, true);
            }
        }
        self.by_id.insert(lead.id, lead);
    }

    /// Adds (or removes) a lead under a link field's value in the index.
    fn link(&mut self, field: &'static str, value: &str, id: i64, add: bool) {
        let key = (field, value.to_string());
        if add {
            self.by_link.entry(key).or_default().insert(id);
        } else if let Some(ids) = self.by_link.get_mut(&key) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_link.remove(&key);
            }
        }
    }

    /// Leads by filter: one page after the position token (the last id served).
    pub fn by_filter(&self, params: &Params) -> Result<(Vec<Value>, Option<i64>), ApiError> {
        let filter_type = params
            .get("filterType")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::new("701", "filterType cannot be blank"))?;
        let values = params.list("filterValues");
        if values.is_empty() {
            return Err(ApiError::new("701", "filterValues cannot be blank"));
        }
        if values.len() > MAX_BATCH {
            return Err(ApiError::new(
                "1003",
                format!("Too many filter values, maximum is {MAX_BATCH}"),
            ));
        }
        let def = field(filter_type)
            .ok_or_else(|| ApiError::new("1006", format!("Field '{filter_type}' not found")))?;
        if !def.searchable {
            return Err(ApiError::new(
                "1011",
                format!("Field '{filter_type}' not supported"),
            ));
        }
        let fields = requested_fields(params)?;
        let batch = batch_size(params)?;
        let after = match params.get("nextPageToken").filter(|t| !t.is_empty()) {
            None => i64::MIN,
            Some(token) => decode_lead_token(token)?,
        };
        let mut ids: Vec<i64> = match filter_type {
            "id" => values
                .iter()
                .filter_map(|v| v.parse().ok())
                .filter(|id| self.by_id.contains_key(id))
                .collect(),
            "email" => values
                .iter()
                .filter_map(|v| self.by_email.get(&v.to_lowercase()).copied())
                .collect(),
            indexed if LINK_FIELDS.contains(&indexed) => {
                let field = LINK_FIELDS[usize::from(indexed == LINK_FIELDS[1])];
                values
                    .iter()
                    .filter_map(|v| self.by_link.get(&(field, v.to_string())))
                    .flatten()
                    .copied()
                    .collect()
            }
            _ => self
                .by_id
                .values()
                .filter(|lead| {
                    lead.get(filter_type)
                        .as_str()
                        .is_some_and(|s| values.iter().any(|v| v == s))
                })
                .map(|lead| lead.id)
                .collect(),
        };
        ids.sort_unstable();
        ids.dedup();
        if ids.len() > MAX_MATCHES {
            return Err(ApiError::new("1003", "Too many results match the filter"));
        }
        let rest: Vec<i64> = ids.into_iter().filter(|id| *id > after).collect();
        let page: Vec<Value> = rest
            .iter()
            .take(batch)
            .map(|id| self.by_id[id].project(&fields))
            .collect();
        let next = (rest.len() > batch).then(|| rest[batch - 1]);
        Ok((page, next))
    }

    /// Syncs leads (`createOnly`, `updateOnly`, `createOrUpdate`) by `email` or `id`.
    pub fn sync(
        &mut self,
        body: &Value,
        now: Timestamp,
        fail_record: Option<(usize, ApiError)>,
    ) -> Result<SyncOutcome, ApiError> {
        let action = body["action"].as_str().unwrap_or("createOrUpdate");
        let lookup = body["lookupField"].as_str().unwrap_or("email");
        let input = body["input"]
            .as_array()
            .ok_or_else(|| ApiError::new("701", "input cannot be blank"))?;
        if input.len() > MAX_BATCH {
            return Err(ApiError::new("1003", "Too many records, maximum is 300"));
        }
        if ![
            "createOnly",
            "updateOnly",
            "createOrUpdate",
            "createDuplicate",
        ]
        .contains(&action)
        {
            return Err(ApiError::new("1003", format!("Invalid action '{action}'")));
        }
        if lookup == "id" && action != "updateOnly" {
            return Err(ApiError::new(
                "1003",
                "lookupField 'id' is allowed only with action 'updateOnly'",
            ));
        }
        let mut out = SyncOutcome {
            results: Vec::new(),
            created: Vec::new(),
            changes: Vec::new(),
        };
        for (index, record) in input.iter().enumerate() {
            if let Some((at, error)) = &fail_record
                && *at == index
            {
                out.results.push(skipped(error));
                continue;
            }
            let Some(record) = record.as_object() else {
                out.results.push(skipped(&ApiError::standard("1003")));
                continue;
            };
            let key = record.get(lookup).cloned().unwrap_or(Value::Null);
            let existing = match lookup {
                "id" => key.as_i64().filter(|id| self.by_id.contains_key(id)),
                "email" => key
                    .as_str()
                    .and_then(|e| self.by_email.get(&e.to_lowercase()).copied()),
                other => {
                    out.results.push(skipped(&ApiError::new(
                        "1006",
                        format!("Field '{other}' not found"),
                    )));
                    continue;
                }
            };
            let mut unknown = None;
            for name in record.keys() {
                if field(name).is_none() {
                    unknown = Some(name.clone());
                }
            }
            if let Some(name) = unknown {
                out.results.push(skipped(&ApiError::new(
                    "1006",
                    format!("Field '{name}' not found"),
                )));
                continue;
            }
            match (existing, action) {
                (Some(_), "createOnly") => {
                    out.results.push(skipped(&ApiError::standard("1005")));
                }
                (None, "updateOnly") => out.results.push(skipped(&ApiError::standard("1004"))),
                (Some(id), _) => {
                    let lead = self.by_id.get_mut(&id).expect("indexed lead");
                    let mut changed = false;
                    let mut relinked = Vec::new();
                    for (name, value) in record {
                        let def = field(name).expect("checked");
                        if !def.updateable || lead.get(name) == value {
                            continue;
                        }
                        if LINK_FIELDS.contains(&def.name) {
                            relinked.push((def.name, lead.get(name).clone(), value.clone()));
                        }
                        out.changes.push(Change {
                            lead_id: id,
                            field: def,
                            old: lead.get(name).clone(),
                            new: value.clone(),
                        });
                        lead.values.insert(def.name, value.clone());
                        changed = true;
                    }
                    if changed {
                        lead.values.insert("updatedAt", json!(format_time(now)));
                    }
                    let email = lead.get("email").as_str().map(str::to_lowercase);
                    if let Some(email) = email {
                        self.by_email.insert(email, id);
                    }
                    for (name, old, new) in relinked {
                        if let Some(old) = old.as_str() {
                            self.link(name, old, id, false);
                        }
                        if let Some(new) = new.as_str() {
                            self.link(name, new, id, true);
                        }
                    }
                    out.results.push(json!({"id": id, "status": "updated"}));
                }
                (None, _) => {
                    let id = self.next_id;
                    self.next_id += 1;
                    let mut values = BTreeMap::new();
                    for (name, value) in record {
                        let def = field(name).expect("checked");
                        if def.updateable {
                            values.insert(def.name, value.clone());
                        }
                    }
                    values.insert("id", json!(id));
                    values.insert("createdAt", json!(format_time(now)));
                    values.insert("updatedAt", json!(format_time(now)));
                    for score in ["leadScore", "behaviorScore", "demographicScore"] {
                        values.entry(score).or_insert(json!(0));
                    }
                    self.insert(Lead { id, values });
                    out.created.push(id);
                    out.results.push(json!({"id": id, "status": "created"}));
                }
            }
        }
        Ok(out)
    }
}

fn skipped(error: &ApiError) -> Value {
    json!({"status": "skipped", "reasons": [{"code": error.code, "message": error.message}]})
}

/// `batchSize`, at most and by default 300.
pub fn batch_size(params: &Params) -> Result<usize, ApiError> {
    match params.get("batchSize").filter(|v| !v.is_empty()) {
        None => Ok(MAX_BATCH),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_BATCH).contains(&n) => Ok(n),
            _ => Err(ApiError::new(
                "1003",
                format!("Invalid batchSize '{v}', must be 1 to {MAX_BATCH}"),
            )),
        },
    }
}

fn decode_lead_token(token: &str) -> Result<i64, ApiError> {
    super::activities::base32_decode(token)
        .and_then(|text| text.strip_prefix("lead,").and_then(|n| n.parse().ok()))
        .ok_or_else(|| ApiError::new("1003", "Invalid nextPageToken"))
}

pub fn encode_lead_token(last_id: i64) -> String {
    super::activities::base32_encode(format!("lead,{last_id}").as_bytes())
}

/// describe.json records.
pub fn describe() -> Vec<Value> {
    FIELDS
        .iter()
        .map(|f| {
            let mut v = json!({
                "id": f.id,
                "displayName": f.display,
                "dataType": f.data_type,
                "rest": {"name": f.name, "readOnly": !f.updateable},
                "soap": {"name": f.name, "readOnly": !f.updateable},
            });
            if let Some(len) = f.length {
                v["length"] = json!(len);
            }
            v
        })
        .collect()
}

/// describe2.json's single record.
pub fn describe2() -> Vec<Value> {
    let searchable: Vec<Value> = FIELDS
        .iter()
        .filter(|f| f.searchable)
        .map(|f| json!([f.name]))
        .collect();
    let fields: Vec<Value> = FIELDS
        .iter()
        .map(|f| {
            let mut v = json!({
                "name": f.name, "displayName": f.display, "dataType": f.data_type,
                "updateable": f.updateable, "crmManaged": f.name.starts_with("sfdc"),
            });
            if let Some(len) = f.length {
                v["length"] = json!(len);
            }
            v
        })
        .collect();
    vec![json!({"name": "API Lead", "searchableFields": searchable, "fields": fields})]
}

#[cfg(test)]
mod link_index_tests {
    use super::*;
    use crate::sandbox::marketo::routes::Params;
    use crate::sandbox::world::World;

    fn filter(table: &LeadTable, field: &str, value: &str) -> Vec<i64> {
        let params = Params(vec![
            ("filterType".into(), field.into()),
            ("filterValues".into(), value.into()),
            ("fields".into(), "id".into()),
        ]);
        let (rows, _) = table.by_filter(&params).unwrap();
        rows.iter().map(|r| r["id"].as_i64().unwrap()).collect()
    }

    /// A filter on a CRM link finds what a scan of every lead finds (the links are not
    /// updateable through the API: Marketo's CRM sync owns them).
    #[test]
    fn a_filter_on_a_crm_link_finds_what_a_scan_finds() {
        let now: jiff::Timestamp = "2026-11-02T12:00:00Z".parse().unwrap();
        let world = World::generate(5, 80, now);
        let table = LeadTable::new(&world.people);
        let mut checked = 0;
        for field in LINK_FIELDS {
            for lead in table.by_id.values() {
                let Some(crm) = lead.get(field).as_str() else {
                    continue;
                };
                let scan: Vec<i64> = table
                    .by_id
                    .values()
                    .filter(|l| l.get(field).as_str() == Some(crm))
                    .map(|l| l.id)
                    .collect();
                assert_eq!(filter(&table, field, crm), scan, "{field} {crm}");
                checked += 1;
            }
        }
        assert!(checked > 40, "both kinds of link were checked: {checked}");
        assert!(filter(&table, "sfdcLeadId", "00Q00000000NONE").is_empty());
    }
}
