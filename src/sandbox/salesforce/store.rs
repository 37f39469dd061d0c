//! The emulated org's records: one ordered table per object (by Id, plus a SystemModstamp
//! index so that incremental queries page without sorting the table), external-id indexes,
//! field history, and the seeding of all of it from the sandbox `World`.
//!
//! Values are kept as JSON in the wire encoding (datetimes as `2024-04-25T15:50:37.000+0000`,
//! dates as `2024-04-25`), which sorts correctly as text. Validation of incoming values lives
//! here too (`normalize_write`), so single, collection and bulk writes agree. It must not
//! speak HTTP.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::schema::{FieldType, ObjectSchema, SCHEMA, history_parent_field};
use crate::sandbox::world::{CrmKind, World, salesforce_id};

/// The user every API write is attributed to (the integration user).
pub fn api_user_id() -> String {
    salesforce_id("005", 900)
}

pub fn org_id() -> String {
    salesforce_id("00D", 1)
}

/// The wire encoding of a datetime.
pub fn format_datetime(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

/// A record-level error in the vendor's shape (`statusCode`, `message`, `fields`).
#[derive(Clone, Debug, PartialEq)]
pub struct RecordError {
    pub status_code: String,
    pub message: String,
    pub fields: Vec<String>,
}

impl RecordError {
    pub fn new(code: &str, message: impl Into<String>, fields: &[&str]) -> Self {
        Self {
            status_code: code.to_string(),
            message: message.into(),
            fields: fields.iter().map(|f| f.to_string()).collect(),
        }
    }

    /// As an element of a collection result's `errors` array.
    pub fn per_record(&self) -> Value {
        json!({"statusCode": self.status_code, "message": self.message, "fields": self.fields})
    }

    /// As an element of a top-level REST error array.
    pub fn top_level(&self) -> Value {
        let mut v = json!({"message": self.message, "errorCode": self.status_code});
        if !self.fields.is_empty() {
            v["fields"] = json!(self.fields);
        }
        v
    }
}

#[derive(Clone, Debug)]
pub struct Record {
    pub fields: Map<String, Value>,
    pub deleted: bool,
}

impl Record {
    pub fn get(&self, field: &str) -> &Value {
        self.fields.get(field).unwrap_or(&Value::Null)
    }
    pub fn modstamp(&self) -> String {
        match self
            .fields
            .get("SystemModstamp")
            .or_else(|| self.fields.get("CreatedDate"))
        {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        }
    }
}

/// One object's records.
#[derive(Debug, Default)]
pub struct Table {
    pub records: BTreeMap<String, Record>,
    /// (SystemModstamp, Id) of every record, for `ORDER BY SystemModstamp` paging.
    pub by_modstamp: BTreeSet<(String, String)>,
    /// External-id field -> lower-cased value -> record id.
    pub external: HashMap<&'static str, HashMap<String, String>>,
    next_n: u64,
    next_auto: u64,
}

/// One change of a tracked field, waiting to become a history row.
struct Tracked {
    field: &'static str,
    data_type: &'static str,
    old: Value,
    new: Value,
}

/// Every table of the org.
#[derive(Debug, Default)]
pub struct Store {
    pub tables: HashMap<&'static str, Table>,
}

impl Store {
    pub fn table(&self, object: &str) -> Option<&Table> {
        self.tables.get(object)
    }

    /// Builds the org from the world: users, accounts, opportunities, leads and contacts
    /// (people with a CRM id), and the MQL thresholds.
    pub fn seed(world: &World) -> Store {
        let mut store = Store::default();
        for object in &SCHEMA.objects {
            let mut table = Table::default();
            for f in &object.fields {
                if f.external_id {
                    table.external.insert(f.name, HashMap::new());
                }
            }
            store.tables.insert(object.name, table);
        }
        let dt = |t: Timestamp| Value::String(format_datetime(t));
        let admin = world.reps.first().map(|r| r.id.clone()).unwrap_or_default();
        let mut seed = |object: &'static str,
                        id: &str,
                        created: Timestamp,
                        modified: Timestamp,
                        by: &str,
                        fields: Value| {
            let mut map = match fields {
                Value::Object(map) => map,
                _ => unreachable!("seed fields are objects"),
            };
            map.insert("Id".into(), json!(id));
            map.insert("IsDeleted".into(), json!(false));
            map.insert("CreatedDate".into(), dt(created));
            map.insert("CreatedById".into(), json!(by));
            map.insert("LastModifiedDate".into(), dt(modified));
            map.insert("LastModifiedById".into(), json!(by));
            map.insert("SystemModstamp".into(), dt(modified));
            store.put_seeded(object, map);
        };
        let epoch = world.generated_at - jiff::SignedDuration::from_hours(24 * 500);
        seed(
            "User",
            &api_user_id(),
            epoch,
            epoch,
            &admin,
            json!({"Name": "Integration User", "Email": "integration@sandbox.example", "IsActive": true}),
        );
        for rep in &world.reps {
            seed(
                "User",
                &rep.id,
                epoch,
                epoch,
                &admin,
                json!({"Name": rep.name, "Email": rep.email, "IsActive": true}),
            );
        }
        for a in &world.accounts {
            seed(
                "Account",
                &a.id,
                epoch,
                epoch,
                &admin,
                json!({"Name": a.name, "Industry": a.vertical, "OwnerId": a.owner_id, "Region__c": a.region,
                       "Target_Account__c": a.target}),
            );
        }
        for o in &world.opportunities {
            seed(
                "Opportunity",
                &o.id,
                o.created_at,
                o.modified_at,
                &admin,
                json!({"AccountId": o.account_id, "Name": o.name, "StageName": o.stage,
                       "IsClosed": o.is_closed, "IsWon": o.is_won, "Amount": o.amount,
                       "CloseDate": o.close_date.to_string()}),
            );
        }
        for (i, p) in world.people.iter().enumerate() {
            let Some(id) = &p.crm_id else { continue };
            let mut fields = json!({"FirstName": p.first_name, "LastName": p.last_name,
                "Email": p.email, "Title": p.title, "OwnerId": p.owner_id,
                "Region__c": p.region, "Team__c": null, "Business_Line__c": null,
                "MQL_Date_Most_Recent__c": null, "MQL_Date_Original__c": null,
                "SAL_Date_Most_Recent__c": null, "SAL_Date_Original__c": null,
                "MQL_Count__c": 0.0});
            let object = match p.crm_kind {
                CrmKind::Lead => {
                    fields["Company"] = json!(p.company);
                    fields["Industry"] = json!(p.vertical);
                    fields["Status"] = json!(p.status);
                    fields["IsConverted"] = json!(false);
                    fields["ConvertedContactId"] = Value::Null;
                    fields["ConvertedAccountId"] = Value::Null;
                    // A lead-to-account matcher flags about one lead in ten.
                    fields["Target_Account__c"] = json!(i % 10 == 3);
                    "Lead"
                }
                CrmKind::Contact => {
                    fields["AccountId"] = json!(p.account_id);
                    fields["Contact_Status__c"] = json!(p.status);
                    "Contact"
                }
            };
            let modified = p.status_changed_at.unwrap_or(p.created_at);
            seed(object, id, p.created_at, modified, &admin, fields);
        }
        for th in &world.thresholds {
            seed(
                "MQL_Threshold__c",
                &th.id,
                th.created_at,
                th.modified_at,
                &th.set_by,
                json!({"Name": th.name, "Region__c": th.region, "Team__c": null, "Target_Account__c": null,
                       "Business_Line__c": null, "Score_Threshold__c": th.score,
                       "Effective_From__c": th.effective_from.map(format_datetime),
                       "Effective_To__c": th.effective_to.map(format_datetime),
                       "Active__c": th.active, "Reason__c": null, "OwnerId": th.set_by}),
            );
        }
        let thresholds = SCHEMA.object("MQL_Threshold__c").expect("schema");
        for th in &world.thresholds {
            store.history_created(thresholds, &th.id, th.created_at, &th.set_by);
        }
        // The status history of the people a rep has worked (the org tracks it).
        for p in &world.people {
            let (Some(id), Some(at)) = (&p.crm_id, p.status_changed_at) else {
                continue;
            };
            let (history, field) = match p.crm_kind {
                CrmKind::Lead => ("LeadHistory", "Status"),
                CrmKind::Contact => ("ContactHistory", "Contact_Status__c"),
            };
            let change = Tracked {
                field,
                data_type: FieldType::Picklist.history_data_type(),
                old: json!(crate::sandbox::world::OPEN_STATUS),
                new: json!(p.status),
            };
            store.history_row(history, id, change, at, &p.owner_id);
        }
        store
    }

    fn put_seeded(&mut self, object: &'static str, fields: Map<String, Value>) {
        let table = self.tables.get_mut(object).expect("seeded table exists");
        table.next_n += 1;
        let id = fields["Id"].as_str().expect("id").to_string();
        table.index(&id, &fields);
        table.records.insert(
            id,
            Record {
                fields,
                deleted: false,
            },
        );
    }

    /// Creates a record from already-normalized fields; returns its id.
    pub fn insert(
        &mut self,
        schema: &ObjectSchema,
        mut fields: Map<String, Value>,
        now: Timestamp,
        by: &str,
    ) -> String {
        let table = self.tables.get_mut(schema.name).expect("table exists");
        // Far above the ids the seed used (numbered from 1), and still in creation order.
        table.next_n += 1;
        let id = salesforce_id(schema.key_prefix, 1_000_000_000_000 + table.next_n);
        for f in &schema.fields {
            if f.auto_number {
                table.next_auto += 1;
                fields.insert(f.name.into(), json!(format!("MQL-{:07}", table.next_auto)));
            }
        }
        let stamp = json!(format_datetime(now));
        for f in &schema.fields {
            if !fields.contains_key(f.name) {
                let default = match f.ty {
                    FieldType::Boolean => json!(false),
                    _ => Value::Null,
                };
                fields.insert(f.name.into(), default);
            }
        }
        fields.insert("Id".into(), json!(id));
        fields.insert("IsDeleted".into(), json!(false));
        fields.insert("CreatedDate".into(), stamp.clone());
        fields.insert("CreatedById".into(), json!(by));
        if schema.field("SystemModstamp").is_some() {
            fields.insert("LastModifiedDate".into(), stamp.clone());
            fields.insert("LastModifiedById".into(), json!(by));
            fields.insert("SystemModstamp".into(), stamp);
        }
        if schema.field("OwnerId").is_some() && fields["OwnerId"].is_null() {
            fields.insert("OwnerId".into(), json!(by));
        }
        table.index(&id, &fields);
        table.records.insert(
            id.clone(),
            Record {
                fields,
                deleted: false,
            },
        );
        self.history_created(schema, &id, now, by);
        id
    }

    /// The `created` row the vendor writes to a tracked object's history on insert.
    fn history_created(&mut self, schema: &ObjectSchema, id: &str, at: Timestamp, by: &str) {
        if let Some(history) = schema.history_object {
            let change = Tracked {
                field: "created",
                data_type: "Text",
                old: Value::Null,
                new: Value::Null,
            };
            self.history_row(history, id, change, at, by);
        }
    }

    /// One field-history row of record `id`, dated `at`.
    fn history_row(
        &mut self,
        history: &'static str,
        id: &str,
        change: Tracked,
        at: Timestamp,
        by: &str,
    ) {
        let schema = SCHEMA.object(history).expect("history schema");
        let mut row = Map::new();
        row.insert(history_parent_field(history).into(), json!(id));
        row.insert("Field".into(), json!(change.field));
        row.insert("DataType".into(), json!(change.data_type));
        row.insert("OldValue".into(), change.old);
        row.insert("NewValue".into(), change.new);
        self.insert(schema, row, at, by);
    }

    /// Applies normalized field changes to a live record, bumps its modstamps and writes
    /// history rows for tracked fields that really changed. Returns the names that changed.
    pub fn update(
        &mut self,
        schema: &ObjectSchema,
        id: &str,
        changes: Map<String, Value>,
        now: Timestamp,
        by: &str,
    ) -> Result<Vec<String>, RecordError> {
        let table = self.tables.get_mut(schema.name).expect("table exists");
        let Some(record) = table.records.get(id).filter(|r| !r.deleted) else {
            return Err(RecordError::new(
                "ENTITY_IS_DELETED",
                "entity is deleted",
                &[],
            ));
        };
        let old_fields = record.fields.clone();
        table.unindex(id, &old_fields);
        let record = table.records.get_mut(id).expect("checked above");
        let mut changed = Vec::new();
        let mut tracked = Vec::new();
        for (name, value) in changes {
            let old = record.fields.get(&name).cloned().unwrap_or(Value::Null);
            if old != value {
                if let Some(f) = schema.field(&name).filter(|f| f.history) {
                    tracked.push(Tracked {
                        field: f.name,
                        data_type: f.ty.history_data_type(),
                        old: old.clone(),
                        new: value.clone(),
                    });
                }
                changed.push(name.clone());
            }
            record.fields.insert(name, value);
        }
        let stamp = json!(format_datetime(now));
        record
            .fields
            .insert("LastModifiedDate".into(), stamp.clone());
        record.fields.insert("LastModifiedById".into(), json!(by));
        record.fields.insert("SystemModstamp".into(), stamp);
        let new_fields = record.fields.clone();
        table.index(id, &new_fields);
        if let Some(history) = schema.history_object {
            for change in tracked {
                self.history_row(history, id, change, now, by);
            }
        }
        Ok(changed)
    }

    /// Soft-deletes a record (queryAll still sees it, with IsDeleted = true).
    pub fn delete(
        &mut self,
        schema: &ObjectSchema,
        id: &str,
        now: Timestamp,
        by: &str,
    ) -> Result<(), RecordError> {
        let table = self.tables.get_mut(schema.name).expect("table exists");
        let Some(record) = table.records.get(id).filter(|r| !r.deleted) else {
            return Err(RecordError::new(
                "ENTITY_IS_DELETED",
                "entity is deleted",
                &[],
            ));
        };
        let old = record.fields.clone();
        table.unindex(id, &old);
        let record = table.records.get_mut(id).expect("checked above");
        record.deleted = true;
        let stamp = json!(format_datetime(now));
        record.fields.insert("IsDeleted".into(), json!(true));
        record
            .fields
            .insert("LastModifiedDate".into(), stamp.clone());
        record.fields.insert("LastModifiedById".into(), json!(by));
        record.fields.insert("SystemModstamp".into(), stamp);
        let stamp = record.modstamp();
        table.by_modstamp.insert((stamp, id.to_string()));
        Ok(())
    }

    /// The live record with this id, if any.
    pub fn live(&self, object: &str, id: &str) -> Option<&Record> {
        let table = self.tables.get(object)?;
        let record = match table.records.get(id) {
            Some(r) => r,
            None if id.len() == 15 => {
                table
                    .records
                    .range(id.to_string()..)
                    .next()
                    .filter(|(k, _)| k.starts_with(id))?
                    .1
            }
            None => return None,
        };
        (!record.deleted).then_some(record)
    }

    /// The id of the live record whose external id `field` equals `value` (case-insensitive).
    pub fn by_external(&self, object: &str, field: &str, value: &str) -> Option<String> {
        self.tables
            .get(object)?
            .external
            .get(field)?
            .get(&value.to_lowercase())
            .cloned()
    }
}

impl Table {
    fn index(&mut self, id: &str, fields: &Map<String, Value>) {
        let stamp = match fields
            .get("SystemModstamp")
            .or_else(|| fields.get("CreatedDate"))
        {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        self.by_modstamp.insert((stamp, id.to_string()));
        for (field, index) in self.external.iter_mut() {
            if let Some(Value::String(v)) = fields.get(*field) {
                index.insert(v.to_lowercase(), id.to_string());
            }
        }
    }

    fn unindex(&mut self, id: &str, fields: &Map<String, Value>) {
        let stamp = match fields
            .get("SystemModstamp")
            .or_else(|| fields.get("CreatedDate"))
        {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        self.by_modstamp.remove(&(stamp, id.to_string()));
        for (field, index) in self.external.iter_mut() {
            if let Some(Value::String(v)) = fields.get(*field) {
                index.remove(&v.to_lowercase());
            }
        }
    }
}

/// Whether `s` looks like a Salesforce id (15 or 18 alphanumerics).
pub fn is_id_shaped(s: &str) -> bool {
    (s.len() == 15 || s.len() == 18) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Checks and converts the fields of a create (`create = true`) or update body into the
/// stored encoding, with canonical field names. `attributes` is ignored.
pub fn normalize_write(
    schema: &ObjectSchema,
    body: &Map<String, Value>,
    create: bool,
) -> Result<Map<String, Value>, RecordError> {
    let mut out = Map::new();
    for (name, value) in body {
        if name == "attributes" || (!create && name.eq_ignore_ascii_case("id")) {
            continue;
        }
        let Some(field) = schema.field(name) else {
            return Err(RecordError::new(
                "INVALID_FIELD",
                format!("No such column '{name}' on sobject of type {}", schema.name),
                &[],
            ));
        };
        let allowed = if create {
            field.createable
        } else {
            field.updateable
        };
        if !allowed {
            let message = if field.name == "Id" && create {
                "cannot specify Id in an insert call".to_string()
            } else {
                format!(
                    "Unable to {} fields: {}. Please check the security settings of this field and verify that it is read/write for your profile or permission set.",
                    if create { "create" } else { "update" },
                    field.name
                )
            };
            return Err(RecordError::new(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                message,
                &[field.name],
            ));
        }
        let bad = |expected: &str| {
            RecordError::new(
                "JSON_PARSER_ERROR",
                format!(
                    "Cannot deserialize instance of {expected} from {} value {value} for field {}",
                    json_kind(value),
                    field.name
                ),
                &[field.name],
            )
        };
        let stored = match (field.ty, value) {
            (_, Value::Null) => Value::Null,
            (FieldType::Boolean, Value::Bool(_)) => value.clone(),
            (FieldType::Boolean, Value::String(s)) if s == "true" || s == "false" => {
                json!(s == "true")
            }
            (FieldType::Boolean, _) => return Err(bad("boolean")),
            (FieldType::Double | FieldType::Currency, Value::Number(n)) => {
                json!(n.as_f64().unwrap_or(0.0))
            }
            (FieldType::Double | FieldType::Currency, Value::String(s)) => {
                match s.trim().parse::<f64>() {
                    Ok(n) => json!(n),
                    Err(_) => return Err(bad("double")),
                }
            }
            (FieldType::Double | FieldType::Currency, _) => return Err(bad("double")),
            (FieldType::Date, Value::String(s)) => match s.parse::<jiff::civil::Date>() {
                Ok(d) if s.len() == 10 => json!(d.to_string()),
                _ => return Err(bad("date")),
            },
            (FieldType::DateTime, Value::String(s)) => match s.parse::<Timestamp>() {
                Ok(t) => json!(format_datetime(t)),
                Err(_) => return Err(bad("datetime")),
            },
            (FieldType::Reference | FieldType::Id, Value::String(s)) => {
                if !is_id_shaped(s) {
                    return Err(RecordError::new(
                        "MALFORMED_ID",
                        format!("{}: id value of incorrect type: {s}", field.label()),
                        &[field.name],
                    ));
                }
                json!(s)
            }
            (FieldType::Date | FieldType::DateTime | FieldType::Reference | FieldType::Id, _) => {
                return Err(bad("string"));
            }
            (_, Value::String(s)) => {
                if field.length > 0 && s.chars().count() > field.length as usize {
                    return Err(RecordError::new(
                        "STRING_TOO_LONG",
                        format!(
                            "{}: data value too large: {} (max length={})",
                            field.label(),
                            s,
                            field.length
                        ),
                        &[field.name],
                    ));
                }
                value.clone()
            }
            (_, Value::Number(n)) => json!(n.to_string()),
            (_, Value::Bool(b)) => json!(b.to_string()),
            (_, _) => return Err(bad("string")),
        };
        out.insert(field.name.to_string(), stored);
    }
    if create {
        let missing: Vec<&str> = schema
            .required
            .iter()
            .copied()
            .filter(|f| out.get(*f).is_none_or(|v| v.is_null() || v == ""))
            .collect();
        if !missing.is_empty() {
            return Err(RecordError::new(
                "REQUIRED_FIELD_MISSING",
                format!("Required fields are missing: [{}]", missing.join(", ")),
                &missing,
            ));
        }
    }
    Ok(out)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-11-02T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn seeding_and_tracked_updates_write_history() {
        let world = World::generate(3, 50, now());
        let mut store = Store::seed(&world);
        let th = SCHEMA.object("MQL_Threshold__c").unwrap();
        let id = world.thresholds[1].id.clone();
        let changes = normalize_write(
            th,
            json!({"score_threshold__c": 55, "Reason__c": "season"})
                .as_object()
                .unwrap(),
            false,
        )
        .unwrap();
        let changed = store
            .update(th, &id, changes, now(), &api_user_id())
            .unwrap();
        assert_eq!(changed, ["Reason__c", "Score_Threshold__c"]);
        let history = &store.tables["MQL_Threshold__History"].records;
        // One `created` row per seeded threshold, then the two changes.
        assert_eq!(history.len(), world.thresholds.len() + 2);
        assert!(
            history
                .values()
                .any(|r| r.get("ParentId") == &json!(id) && r.get("Field") == &json!("created"))
        );
        let row = history
            .values()
            .find(|r| r.get("Field") == &json!("Score_Threshold__c"))
            .unwrap();
        assert_eq!(row.get("OldValue"), &json!(90.0));
        assert_eq!(row.get("NewValue"), &json!(55.0));
        let record = store.live("MQL_Threshold__c", &id).unwrap();
        assert_eq!(
            record.get("SystemModstamp"),
            &json!("2026-11-02T12:00:00.000+0000")
        );
    }

    #[test]
    fn writes_are_checked_like_the_vendor_checks_them() {
        let lead = SCHEMA.object("Lead").unwrap();
        let err =
            normalize_write(lead, json!({"LastName": "X"}).as_object().unwrap(), true).unwrap_err();
        assert_eq!(err.status_code, "REQUIRED_FIELD_MISSING");
        let err =
            normalize_write(lead, json!({"Bogus": 1}).as_object().unwrap(), false).unwrap_err();
        assert_eq!(err.status_code, "INVALID_FIELD");
        let err = normalize_write(lead, json!({"OwnerId": "nope"}).as_object().unwrap(), false)
            .unwrap_err();
        assert_eq!(err.status_code, "MALFORMED_ID");
        let ok = normalize_write(
            lead,
            json!({"MQL_Date_Original__c": "2026-01-02T03:04:05+01:00"})
                .as_object()
                .unwrap(),
            false,
        )
        .unwrap();
        assert_eq!(
            ok["MQL_Date_Original__c"],
            json!("2026-01-02T02:04:05.000+0000")
        );
    }
}
