//! Forms and programs as the Marketo emulator knows them: the world's catalogue of both,
//! program membership (each member's progression status and Program Member ID, and which
//! program acquired a lead), and the "Form Fields" text a form fill carries.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

use super::leads::Lead;
use crate::sandbox::world::{Form, Program};

/// Program Member IDs start here.
const FIRST_MEMBER_ID: i64 = 3_000_001;

/// A lead joins a program within this long of its creation for the program to acquire it.
const ACQUISITION_WINDOW: SignedDuration = SignedDuration::from_hours(24 * 14);

/// The forms and programs, by id.
pub struct Catalogue {
    pub forms: HashMap<i64, Arc<Form>>,
    pub programs: HashMap<i64, Arc<Program>>,
}

impl Catalogue {
    pub fn new(forms: &[Form], programs: &[Program]) -> Self {
        Catalogue {
            forms: forms.iter().map(|f| (f.id, Arc::new(f.clone()))).collect(),
            programs: programs
                .iter()
                .map(|p| (p.id, Arc::new(p.clone())))
                .collect(),
        }
    }

    /// The forms, ordered by id, for the admin state.
    pub fn forms_by_id(&self) -> Vec<&Form> {
        let mut forms: Vec<&Form> = self.forms.values().map(|f| f.as_ref()).collect();
        forms.sort_by_key(|f| f.id);
        forms
    }

    /// The programs, ordered by id, for the admin state.
    pub fn programs_by_id(&self) -> Vec<&Program> {
        let mut programs: Vec<&Program> = self.programs.values().map(|p| p.as_ref()).collect();
        programs.sort_by_key(|p| p.id);
        programs
    }

    pub fn form(&self, id: i64) -> Result<Arc<Form>, String> {
        self.forms.get(&id).cloned().ok_or_else(|| {
            format!(
                "no Marketo form with id {id}; the sandbox's forms are {}",
                listing(self.forms.values().map(|f| (f.id, f.name.as_str())))
            )
        })
    }

    pub fn program(&self, id: i64) -> Result<Arc<Program>, String> {
        self.programs.get(&id).cloned().ok_or_else(|| {
            format!(
                "no Marketo program with id {id}; the sandbox's programs are {}",
                listing(self.programs.values().map(|p| (p.id, p.name.as_str())))
            )
        })
    }
}

fn listing<'a>(items: impl Iterator<Item = (i64, &'a str)>) -> String {
    let mut items: Vec<(i64, &str)> = items.collect();
    items.sort();
    items
        .iter()
        .map(|(id, name)| format!("{id} ({name})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One lead's membership of one program.
#[derive(Clone, Copy, Debug)]
pub struct Member {
    /// Position of the current status in the program's statuses.
    pub status: u8,
    pub id: i64,
}

/// What a status change found and did.
#[derive(Clone, Copy, Debug)]
pub struct Move {
    /// Position of the status the member left (0, `Not in Program`, for a lead that joined).
    pub old: u8,
    pub member_id: i64,
    pub acquired_by: bool,
}

/// Every program membership, and the leads some program acquired.
#[derive(Debug)]
pub struct Members {
    by_key: HashMap<(i64, i64), Member>,
    acquired: HashSet<i64>,
    next_id: i64,
}

impl Default for Members {
    fn default() -> Self {
        Members {
            by_key: HashMap::new(),
            acquired: HashSet::new(),
            next_id: FIRST_MEMBER_ID,
        }
    }
}

impl Members {
    pub fn count(&self) -> usize {
        self.by_key.len()
    }

    /// Moves `lead` to status `new` of `program`; a lead not yet a member joins with the next
    /// Program Member ID. `acquired_by`: the world's word for it, or `None` for the rule of a
    /// change made now: the program acquires a lead that joins it within two weeks of the
    /// lead's creation (`created`) when no program has acquired it yet.
    pub fn change(
        &mut self,
        program: i64,
        lead: i64,
        new: u8,
        acquired_by: Option<bool>,
        at: Timestamp,
        created: Option<Timestamp>,
    ) -> Move {
        let joining = !self.by_key.contains_key(&(program, lead));
        let next_id = &mut self.next_id;
        let member = self.by_key.entry((program, lead)).or_insert_with(|| {
            let id = *next_id;
            *next_id += 1;
            Member { status: 0, id }
        });
        let old = member.status;
        member.status = new;
        let acquired_by = acquired_by.unwrap_or_else(|| {
            joining
                && !self.acquired.contains(&lead)
                && created.is_some_and(|c| at.duration_since(c) <= ACQUISITION_WINDOW)
        });
        if acquired_by {
            self.acquired.insert(lead);
        }
        Move {
            old,
            member_id: member.id,
            acquired_by,
        }
    }
}

/// The "Form Fields" of a fill of `form` by `lead`: each form field (`FirstName`) with the
/// lead's value of the field of the same REST name (`firstName`), PHP-serialized
/// (`a:1:{s:5:"Email";s:13:"ada@x.example";}`), the form Marketo's activity log is reported
/// to keep them in. Adobe's published documentation names the attribute (type `text`) but
/// shows no value, so this form is not checked against it.
pub fn form_fields(form: &Form, lead: &Lead) -> Box<str> {
    let mut out = format!("a:{}:{{", form.fields.len());
    for field in &form.fields {
        let mut rest_name = field.clone();
        if let Some(first) = rest_name.get_mut(0..1) {
            first.make_ascii_lowercase();
        }
        let value = match lead.get(&rest_name) {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        out.push_str(&format!(
            "s:{}:\"{field}\";s:{}:\"{value}\";",
            field.len(),
            value.len()
        ));
    }
    out.push('}');
    out.into_boxed_str()
}
