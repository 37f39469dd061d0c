//! The CRM schema the Salesforce emulator knows: objects, fields, types, key prefixes,
//! external ids and field-history tracking. Describe, SOQL and every write read it from
//! here. It must not hold records (that is `store`) nor know any wire format beyond the
//! describe field names.

use std::collections::HashMap;
use std::sync::LazyLock;

/// A field's Salesforce data type, as describe names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    Id,
    String,
    TextArea,
    Email,
    Picklist,
    Boolean,
    Double,
    Currency,
    Date,
    DateTime,
    Reference,
    /// History `OldValue`/`NewValue`.
    AnyType,
}

impl FieldType {
    /// The `DataType` a field-history row gives a change of a field of this type.
    pub fn history_data_type(self) -> &'static str {
        match self {
            FieldType::Picklist => "DynamicEnum",
            FieldType::Reference | FieldType::Id => "EntityId",
            FieldType::Boolean => "Boolean",
            FieldType::Double => "Double",
            FieldType::Currency => "Currency",
            FieldType::Date => "Date",
            FieldType::DateTime => "DateTime",
            FieldType::Email => "Email",
            FieldType::TextArea => "TextArea",
            FieldType::String | FieldType::AnyType => "Text",
        }
    }

    pub fn describe_name(self) -> &'static str {
        match self {
            FieldType::Id => "id",
            FieldType::String => "string",
            FieldType::TextArea => "textarea",
            FieldType::Email => "email",
            FieldType::Picklist => "picklist",
            FieldType::Boolean => "boolean",
            FieldType::Double => "double",
            FieldType::Currency => "currency",
            FieldType::Date => "date",
            FieldType::DateTime => "datetime",
            FieldType::Reference => "reference",
            FieldType::AnyType => "anyType",
        }
    }

    /// Whether values compare as text (case-insensitively, as SOQL does).
    pub fn is_text(self) -> bool {
        matches!(
            self,
            FieldType::String
                | FieldType::TextArea
                | FieldType::Email
                | FieldType::Picklist
                | FieldType::AnyType
        )
    }

    pub fn is_number(self) -> bool {
        matches!(self, FieldType::Double | FieldType::Currency)
    }

    pub fn is_id(self) -> bool {
        matches!(self, FieldType::Id | FieldType::Reference)
    }
}

#[derive(Clone, Debug)]
pub struct Field {
    pub name: &'static str,
    pub ty: FieldType,
    pub external_id: bool,
    pub unique: bool,
    pub createable: bool,
    pub updateable: bool,
    pub auto_number: bool,
    pub reference_to: Option<&'static str>,
    /// Field history is tracked for this field.
    pub history: bool,
    pub length: u32,
}

impl Field {
    /// The parent relationship a reference field is followed by in SOQL (`OwnerId` ->
    /// `Owner`, `Lead__c` -> `Lead__r`).
    pub fn relationship_name(&self) -> Option<String> {
        self.reference_to?;
        Some(match self.name.strip_suffix("__c") {
            Some(base) => format!("{base}__r"),
            None => self
                .name
                .strip_suffix("Id")
                .unwrap_or(self.name)
                .to_string(),
        })
    }

    pub fn label(&self) -> String {
        self.name
            .trim_end_matches("__c")
            .replace('_', " ")
            .trim()
            .to_string()
    }
}

#[derive(Debug)]
pub struct ObjectSchema {
    pub name: &'static str,
    pub key_prefix: &'static str,
    pub custom: bool,
    pub createable: bool,
    pub fields: Vec<Field>,
    pub required: &'static [&'static str],
    /// The `…__History` object that records changes of tracked fields.
    pub history_object: Option<&'static str>,
    by_lower: HashMap<String, usize>,
}

impl ObjectSchema {
    /// The field called `name`, compared case-insensitively as Salesforce does.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.by_lower
            .get(&name.to_ascii_lowercase())
            .map(|&i| &self.fields[i])
    }

    pub fn label(&self) -> String {
        self.name.trim_end_matches("__c").replace('_', " ")
    }

    pub fn is_history(&self) -> bool {
        is_history_name(self.name)
    }
}

/// A field-history object: `…__History` of a custom object, `LeadHistory` and `ContactHistory`
/// of the standard ones.
fn is_history_name(name: &str) -> bool {
    name.ends_with("__History") || matches!(name, "LeadHistory" | "ContactHistory")
}

/// The field of a history row that names the record it belongs to: `ParentId` on a custom
/// object's history, `LeadId` and `ContactId` on the standard objects' (the vendor's names).
pub fn history_parent_field(history: &str) -> &'static str {
    match history {
        "LeadHistory" => "LeadId",
        "ContactHistory" => "ContactId",
        _ => "ParentId",
    }
}

/// Every object of the emulated org.
pub struct Schema {
    pub objects: Vec<ObjectSchema>,
    by_lower: HashMap<String, usize>,
}

impl Schema {
    pub fn object(&self, name: &str) -> Option<&ObjectSchema> {
        self.by_lower
            .get(&name.to_ascii_lowercase())
            .map(|&i| &self.objects[i])
    }

    /// The object whose records carry this 3-character id prefix.
    pub fn object_for_id(&self, id: &str) -> Option<&ObjectSchema> {
        let prefix = id.get(..3)?;
        self.objects.iter().find(|o| o.key_prefix == prefix)
    }
}

/// The schema, built once.
pub static SCHEMA: LazyLock<Schema> = LazyLock::new(build);

struct Def {
    name: &'static str,
    ty: FieldType,
    reference_to: Option<&'static str>,
}

fn s(name: &'static str) -> Def {
    Def {
        name,
        ty: FieldType::String,
        reference_to: None,
    }
}
fn t(name: &'static str, ty: FieldType) -> Def {
    Def {
        name,
        ty,
        reference_to: None,
    }
}
fn r(name: &'static str, to: &'static str) -> Def {
    Def {
        name,
        ty: FieldType::Reference,
        reference_to: Some(to),
    }
}

struct ObjectDef {
    name: &'static str,
    key_prefix: &'static str,
    fields: Vec<Def>,
    required: &'static [&'static str],
    tracked: &'static [&'static str],
    external_ids: &'static [&'static str],
    auto_number_name: bool,
    history_object: Option<&'static str>,
}

const MQL_STAMPS: [&str; 4] = [
    "MQL_Date_Most_Recent__c",
    "MQL_Date_Original__c",
    "SAL_Date_Most_Recent__c",
    "SAL_Date_Original__c",
];

fn build() -> Schema {
    use FieldType::*;
    let mut lead = vec![
        s("FirstName"),
        s("LastName"),
        t("Email", Email),
        s("Title"),
        s("Company"),
        t("Industry", Picklist),
        t("Status", Picklist),
        r("OwnerId", "User"),
        t("IsConverted", Boolean),
        r("ConvertedContactId", "Contact"),
        r("ConvertedAccountId", "Account"),
        s("Region__c"),
        s("Team__c"),
        s("Business_Line__c"),
        t("Target_Account__c", Boolean),
    ];
    let mut contact = vec![
        r("AccountId", "Account"),
        s("FirstName"),
        s("LastName"),
        t("Email", Email),
        s("Title"),
        r("OwnerId", "User"),
        t("Contact_Status__c", Picklist),
        s("Region__c"),
        s("Team__c"),
        s("Business_Line__c"),
    ];
    for stamps in [&mut lead, &mut contact] {
        for name in MQL_STAMPS {
            stamps.push(t(name, DateTime));
        }
        stamps.push(t("MQL_Count__c", Double));
    }
    let defs = vec![
        ObjectDef {
            name: "User",
            key_prefix: "005",
            fields: vec![s("Name"), t("Email", Email), t("IsActive", Boolean)],
            required: &[],
            tracked: &[],
            external_ids: &[],
            auto_number_name: false,
            history_object: None,
        },
        ObjectDef {
            name: "Account",
            key_prefix: "001",
            fields: vec![
                s("Name"),
                t("Industry", Picklist),
                r("OwnerId", "User"),
                s("Region__c"),
                t("Target_Account__c", Boolean),
            ],
            required: &["Name"],
            tracked: &[],
            external_ids: &[],
            auto_number_name: false,
            history_object: None,
        },
        ObjectDef {
            name: "Opportunity",
            key_prefix: "006",
            fields: vec![
                r("AccountId", "Account"),
                s("Name"),
                t("StageName", Picklist),
                t("IsClosed", Boolean),
                t("IsWon", Boolean),
                t("Amount", Currency),
                t("CloseDate", Date),
            ],
            required: &["Name", "StageName", "CloseDate"],
            tracked: &[],
            external_ids: &[],
            auto_number_name: false,
            history_object: None,
        },
        ObjectDef {
            name: "Lead",
            key_prefix: "00Q",
            fields: lead,
            required: &["LastName", "Company"],
            // The org tracks the status (a backfill reads when each lead was accepted or
            // sent back to nurture before mqlsync) and the owner.
            tracked: &["Status", "OwnerId"],
            external_ids: &[],
            auto_number_name: false,
            history_object: Some("LeadHistory"),
        },
        ObjectDef {
            name: "Contact",
            key_prefix: "003",
            fields: contact,
            required: &["LastName"],
            tracked: &["Contact_Status__c", "OwnerId"],
            external_ids: &[],
            auto_number_name: false,
            history_object: Some("ContactHistory"),
        },
        ObjectDef {
            name: "Task",
            key_prefix: "00T",
            fields: vec![
                r("WhoId", "Lead"),
                r("OwnerId", "User"),
                s("Subject"),
                t("ActivityDate", Date),
                t("Status", Picklist),
                t("Description", TextArea),
                s("MQL_Alert_Key__c"),
            ],
            required: &[],
            tracked: &[],
            external_ids: &[],
            auto_number_name: false,
            history_object: None,
        },
        ObjectDef {
            name: "MQL_Threshold__c",
            key_prefix: "a0T",
            fields: vec![
                s("Name"),
                s("Region__c"),
                s("Team__c"),
                s("Business_Line__c"),
                s("Target_Account__c"),
                t("Score_Threshold__c", Double),
                t("Effective_From__c", DateTime),
                t("Effective_To__c", DateTime),
                t("Active__c", Boolean),
                t("Reason__c", TextArea),
                t("Projected_Weekly_MQLs__c", Double),
                t("Actual_Weekly_MQLs__c", Double),
                t("Feedback_Date__c", Date),
                r("OwnerId", "User"),
            ],
            required: &[],
            tracked: &[
                "Name",
                "Region__c",
                "Team__c",
                "Business_Line__c",
                "Score_Threshold__c",
                "Effective_From__c",
                "Effective_To__c",
                "Active__c",
                "Reason__c",
            ],
            external_ids: &[],
            auto_number_name: false,
            history_object: Some("MQL_Threshold__History"),
        },
        ObjectDef {
            name: "MQL__c",
            key_prefix: "a0M",
            fields: vec![
                s("Name"),
                s("External_Id__c"),
                r("Lead__c", "Lead"),
                r("Contact__c", "Contact"),
                t("Cycle_Number__c", Double),
                t("Status__c", Picklist),
                s("Rejection_Reason__c"),
                s("Outcome__c"),
                t("Score_At_MQL__c", Double),
                t("Threshold_At_MQL__c", Double),
                s("Threshold_Id__c"),
                s("Segment__c"),
                s("Campaign_Id__c"),
                s("Campaign_Name__c"),
                s("Owner_At_MQL__c"),
                s("Team__c"),
                t("MQL_Date__c", DateTime),
                t("SAL_Date__c", DateTime),
                t("Closed_Date__c", DateTime),
                t("SLA_Due__c", DateTime),
                t("Overdue__c", Boolean),
                t("Reassignment_Count__c", Double),
                t("Backfilled__c", Boolean),
                t("Sync_Note__c", TextArea),
                s("Qualified_By__c"),
                r("OwnerId", "User"),
            ],
            required: &[],
            tracked: &["Status__c", "Rejection_Reason__c", "OwnerId"],
            external_ids: &["External_Id__c"],
            auto_number_name: true,
            history_object: Some("MQL__History"),
        },
    ];

    let mut objects = Vec::new();
    for def in defs {
        let mut fields = vec![Field {
            name: "Id",
            ty: FieldType::Id,
            external_id: false,
            unique: true,
            createable: false,
            updateable: false,
            auto_number: false,
            reference_to: None,
            history: false,
            length: 18,
        }];
        for d in def.fields {
            let auto = def.auto_number_name && d.name == "Name";
            let read_only = auto || matches!(d.name, "IsConverted" | "IsClosed" | "IsWon");
            fields.push(Field {
                name: d.name,
                ty: d.ty,
                external_id: def.external_ids.contains(&d.name),
                unique: def.external_ids.contains(&d.name),
                createable: !read_only,
                updateable: !read_only,
                auto_number: auto,
                reference_to: d.reference_to,
                history: def.tracked.contains(&d.name),
                length: match d.ty {
                    FieldType::TextArea => 32_768,
                    FieldType::Reference | FieldType::Id => 18,
                    FieldType::String | FieldType::Email | FieldType::Picklist => 255,
                    _ => 0,
                },
            });
        }
        fields.extend(system_fields(true));
        objects.push(object(
            def.name,
            def.key_prefix,
            fields,
            def.required,
            def.history_object,
        ));
        if let Some(history) = def.history_object {
            objects.push(history_schema(history, def.name));
        }
    }
    let by_lower = objects
        .iter()
        .enumerate()
        .map(|(i, o)| (o.name.to_ascii_lowercase(), i))
        .collect();
    Schema { objects, by_lower }
}

fn object(
    name: &'static str,
    key_prefix: &'static str,
    fields: Vec<Field>,
    required: &'static [&'static str],
    history_object: Option<&'static str>,
) -> ObjectSchema {
    let by_lower = fields
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name.to_ascii_lowercase(), i))
        .collect();
    ObjectSchema {
        name,
        key_prefix,
        custom: name.ends_with("__c"),
        createable: !is_history_name(name),
        fields,
        required,
        history_object,
        by_lower,
    }
}

fn read_only(name: &'static str, ty: FieldType, reference_to: Option<&'static str>) -> Field {
    Field {
        name,
        ty,
        external_id: false,
        unique: false,
        createable: false,
        updateable: false,
        auto_number: false,
        reference_to,
        history: false,
        length: if ty == FieldType::Reference { 18 } else { 0 },
    }
}

fn system_fields(modifiable: bool) -> Vec<Field> {
    let mut fields = vec![
        read_only("IsDeleted", FieldType::Boolean, None),
        read_only("CreatedDate", FieldType::DateTime, None),
        read_only("CreatedById", FieldType::Reference, Some("User")),
    ];
    if modifiable {
        fields.extend([
            read_only("LastModifiedDate", FieldType::DateTime, None),
            read_only("LastModifiedById", FieldType::Reference, Some("User")),
            read_only("SystemModstamp", FieldType::DateTime, None),
        ]);
    }
    fields
}

fn history_schema(name: &'static str, parent: &'static str) -> ObjectSchema {
    let mut fields = vec![
        read_only("Id", FieldType::Id, None),
        read_only(
            history_parent_field(name),
            FieldType::Reference,
            Some(parent),
        ),
        read_only("Field", FieldType::Picklist, None),
        read_only("DataType", FieldType::Picklist, None),
        read_only("OldValue", FieldType::AnyType, None),
        read_only("NewValue", FieldType::AnyType, None),
    ];
    fields.extend(system_fields(false));
    object(name, "017", fields, &[], None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_objects_are_found_case_insensitively() {
        let mql = SCHEMA.object("mql__C").expect("MQL__c");
        assert_eq!(mql.name, "MQL__c");
        let ext = mql.field("external_id__c").expect("ext id");
        assert!(ext.external_id && ext.unique);
        assert!(mql.field("Name").unwrap().auto_number);
        assert!(mql.field("Status__c").unwrap().history);
        assert!(SCHEMA.object("MQL__History").unwrap().is_history());
        assert_eq!(
            SCHEMA.object_for_id("00Q5g000000001AAA").unwrap().name,
            "Lead"
        );
    }
}
