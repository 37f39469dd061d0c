//! The world both emulators are seeded from: reps, accounts, opportunities, people (each a
//! CRM lead or contact linked to a MAP lead), thresholds per region, campaigns, the score
//! history that led to today's scores, and the engagements (form fills, program status
//! changes) of the marketing forms and programs. Generated deterministically from `--seed`,
//! so that a test or a demo run sees the same org every time.
//!
//! These are the sandbox's own facts, in plain terms; each emulator turns them into its
//! vendor's records (a person becomes a Salesforce Lead or Contact and a Marketo lead with
//! `sfdcLeadId`/`sfdcContactId`; a score change becomes a Marketo "Change Score" activity, a
//! form fill a "Fill Out Form" one, a program status change a "Change Status in Progression").
//!
//! Engagements come from a random stream of their own, drawn after everything else: adding
//! them left every other fact of a seed's world as it was.

use jiff::{SignedDuration, Timestamp};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Regions the generator uses; `Antarctica` is the one a default mapping marks unsupported.
pub const REGIONS: [&str; 5] = ["NA", "EMEA", "APAC", "LATAM", "Antarctica"];
/// Verticals the generator uses; `Gambling` is the one a default mapping marks unsupported.
pub const VERTICALS: [&str; 7] = [
    "Software",
    "Manufacturing",
    "Healthcare",
    "Financial Services",
    "Retail",
    "Education",
    "Gambling",
];

/// A sales rep (a Salesforce User).
#[derive(Clone, Debug, Serialize)]
pub struct Rep {
    pub id: String,
    pub name: String,
    pub email: String,
    pub region: String,
    pub team: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Account {
    pub id: String,
    pub name: String,
    pub region: String,
    pub vertical: String,
    pub owner_id: String,
    /// On the sales team's target-account list (`Target_Account__c`): every fifth account,
    /// drawn from no random stream, so the rest of a seed's world is what it was.
    pub target: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Opportunity {
    pub id: String,
    pub account_id: String,
    pub name: String,
    /// `Prospecting`, `Closed Won` or `Closed Lost`.
    pub stage: String,
    pub is_closed: bool,
    pub is_won: bool,
    pub amount: f64,
    pub close_date: jiff::civil::Date,
    pub created_at: Timestamp,
    pub modified_at: Timestamp,
}

/// Whether a person is a CRM Lead or a Contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CrmKind {
    Lead,
    Contact,
}

/// One human being, known to both systems.
#[derive(Clone, Debug, Serialize)]
pub struct Person {
    /// The MAP (Marketo) lead id.
    pub map_id: i64,
    pub crm_kind: CrmKind,
    /// The CRM Lead or Contact id; `None` for a MAP lead not yet synced to the CRM.
    pub crm_id: Option<String>,
    /// Contacts belong to an account; leads do not.
    pub account_id: Option<String>,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub title: String,
    pub company: String,
    pub region: String,
    pub vertical: String,
    /// Lead status (`Open - Not Contacted`, `Working - Contacted`, `Nurture`, `Rejected`,
    /// `Spam`); contacts carry the same values in a custom status field.
    pub status: String,
    /// When a rep moved the person from `Open - Not Contacted` to `status` (the CRM's field
    /// history has the row); `None` while the person is still Open. Most often some hours or
    /// days after the person's last score change, as a rep working an MQL would.
    pub status_changed_at: Option<Timestamp>,
    pub owner_id: String,
    pub behavior_score: i64,
    pub demographic_score: i64,
    /// `behavior_score + demographic_score`, Marketo's `leadScore`.
    pub lead_score: i64,
    pub created_at: Timestamp,
    pub modified_at: Timestamp,
}

/// The score fields a change can touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ScoreField {
    LeadScore,
    BehaviorScore,
    DemographicScore,
}

/// A marketing program or smart campaign that changes scores.
#[derive(Clone, Debug, Serialize)]
pub struct Campaign {
    pub id: i64,
    pub name: String,
    /// `Webinar`, `Content`, `Trade Show`, `Email`, `Nurture`.
    pub kind: String,
}

/// One change of one score field of one MAP lead.
#[derive(Clone, Debug, Serialize)]
pub struct ScoreChange {
    /// Sequential, unique across the world: Marketo's activity `id`.
    pub activity_id: i64,
    pub map_id: i64,
    pub at: Timestamp,
    pub field: ScoreField,
    pub old: i64,
    pub new: i64,
    pub campaign_id: i64,
}

/// A sales manager's knob: one MQL threshold record.
#[derive(Clone, Debug, Serialize)]
pub struct Threshold {
    pub id: String,
    pub name: String,
    /// `None` matches every region (the default record).
    pub region: Option<String>,
    pub score: f64,
    pub effective_from: Option<Timestamp>,
    pub effective_to: Option<Timestamp>,
    pub active: bool,
    /// The rep (manager) who last set it.
    pub set_by: String,
    pub created_at: Timestamp,
    pub modified_at: Timestamp,
}

/// Campaign touches a generated person gets at most (see [`World::generate_touching`]).
pub const DEFAULT_TOUCHES: u32 = 10;

/// The status a person has until a rep works them.
pub const OPEN_STATUS: &str = "Open - Not Contacted";

/// Everything generated.
#[derive(Clone, Debug, Serialize)]
pub struct World {
    pub seed: u64,
    /// The instant the world was generated for; histories lie before it.
    pub generated_at: Timestamp,
    pub reps: Vec<Rep>,
    pub accounts: Vec<Account>,
    pub opportunities: Vec<Opportunity>,
    pub people: Vec<Person>,
    pub campaigns: Vec<Campaign>,
    /// Sorted by time, then activity id.
    pub score_changes: Vec<ScoreChange>,
    pub thresholds: Vec<Threshold>,
    pub forms: Vec<Form>,
    pub programs: Vec<Program>,
    /// Sorted by time, then MAP lead id; numbered after the score changes.
    pub engagements: Vec<Engagement>,
}

/// A Marketo form. The sandbox's forms are global (Design Studio) assets, so their names carry
/// no `<program>.` prefix.
#[derive(Clone, Debug, Serialize)]
pub struct Form {
    pub id: i64,
    pub name: String,
    /// The landing page the form is on (Marketo's "Webpage ID").
    pub webpage_id: i64,
    /// The form's fields, by Marketo's form field names (`Email`, `FirstName`, ...).
    pub fields: Vec<String>,
}

/// One status of a program channel's progression.
#[derive(Clone, Debug, Serialize)]
pub struct ProgressionStatus {
    pub id: i64,
    pub name: String,
    /// Reaching it is a success of the program (`Attended`).
    pub success: bool,
}

/// A Marketo program whose members move through its channel's statuses.
#[derive(Clone, Debug, Serialize)]
pub struct Program {
    pub id: i64,
    pub name: String,
    /// `Live Event` or `Webinar`.
    pub channel: String,
    /// The channel's statuses in progression order, `Not in Program` first; statuses of a
    /// channel have the same ids in every program of that channel.
    pub statuses: Vec<ProgressionStatus>,
    /// When the event or webinar took place.
    pub held_at: Timestamp,
}

impl Program {
    /// The status named `name` (case-insensitive) and its position in [`Program::statuses`].
    pub fn status(&self, name: &str) -> Option<(usize, &ProgressionStatus)> {
        self.statuses
            .iter()
            .enumerate()
            .find(|(_, s)| s.name.eq_ignore_ascii_case(name))
    }
}

/// What a person did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum EngagementKind {
    /// Filled out a form.
    FormFill { form_id: i64 },
    /// Moved from one progression status of a program to another. `acquired_by`: the program
    /// is the one that brought the person in (its first program, joined soon after the record
    /// was created).
    ProgramStatus {
        program_id: i64,
        old_status_id: i64,
        new_status_id: i64,
        acquired_by: bool,
    },
}

/// One engagement of one MAP lead, processed by a smart campaign.
#[derive(Clone, Debug, Serialize)]
pub struct Engagement {
    /// Unique across the world's activities, numbered after the score changes.
    pub activity_id: i64,
    pub map_id: i64,
    pub at: Timestamp,
    pub campaign_id: i64,
    pub kind: EngagementKind,
}

/// A Salesforce-style 18-character id: a 3-character key prefix, a 12-character body
/// derived from `n`, and the 3-character case-safe suffix Salesforce computes.
pub fn salesforce_id(prefix: &str, n: u64) -> String {
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    assert_eq!(prefix.len(), 3, "Salesforce key prefixes have 3 characters");
    let mut body = [b'0'; 9];
    let mut rest = n;
    for slot in body.iter_mut().rev() {
        *slot = BASE62[(rest % 62) as usize];
        rest /= 62;
    }
    let id15 = format!("{prefix}5g0{}", std::str::from_utf8(&body).expect("ascii"));
    let mut id = id15.clone();
    const SUFFIX: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    for chunk in id15.as_bytes().chunks(5) {
        let bits = chunk
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_ascii_uppercase())
            .fold(0usize, |acc, (i, _)| acc | (1 << i));
        id.push(SUFFIX[bits] as char);
    }
    id
}

const FIRST_NAMES: [&str; 16] = [
    "Ada", "Ben", "Chloe", "Dev", "Elif", "Femi", "Greta", "Hiro", "Ines", "Jonas", "Kemi", "Liam",
    "Maya", "Noor", "Omar", "Priya",
];
const LAST_NAMES: [&str; 16] = [
    "Okafor", "O'Brien", "Schmidt", "Tanaka", "Garcia", "Novak", "Rossi", "Silva", "Khan",
    "Dubois", "Larsen", "Moreau", "Nguyen", "Kowalski", "Haddad", "Smith",
];
const TITLES: [&str; 10] = [
    "VP Marketing",
    "Director of Operations",
    "CTO",
    "Software Engineer",
    "Head of Sales",
    "Procurement Manager",
    "IT Manager",
    "CFO",
    "Student",
    "Marketing Intern",
];
const CAMPAIGN_KINDS: [&str; 5] = ["Webinar", "Content", "Trade Show", "Email", "Nurture"];

impl World {
    /// Generates a world of `people` people for the instant `now`, from `seed`.
    pub fn generate(seed: u64, people: usize, now: Timestamp) -> World {
        Self::generate_touching(seed, people, now, DEFAULT_TOUCHES)
    }

    /// [`World::generate`] with up to `touches` campaign touches a person (each a behaviour
    /// change and a `leadScore` change; the default 10 gives about 11 score changes a person):
    /// the same people with a sparser or denser score history.
    pub fn generate_touching(seed: u64, people: usize, now: Timestamp, touches: u32) -> World {
        let now = Timestamp::from_second(now.as_second()).expect("whole seconds");
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let day = SignedDuration::from_hours(24);

        let mut reps = Vec::new();
        for (r, region) in REGIONS.iter().take(4).enumerate() {
            for k in 0..3 {
                let n = (r * 3 + k) as u64 + 1;
                let first = FIRST_NAMES[(r * 3 + k) % FIRST_NAMES.len()];
                reps.push(Rep {
                    id: salesforce_id("005", n),
                    name: format!("{first} Rep{n}"),
                    email: format!("{}.rep{n}@sandbox.example", first.to_lowercase()),
                    region: region.to_string(),
                    team: format!("SDR {region}"),
                });
            }
        }
        let rep_in = |region: &str, rng: &mut ChaCha8Rng| -> String {
            let pool: Vec<&Rep> = reps.iter().filter(|r| r.region == region).collect();
            let pool = if pool.is_empty() {
                reps.iter().collect()
            } else {
                pool
            };
            pool.choose(rng).expect("reps").id.clone()
        };

        let campaigns: Vec<Campaign> = (0..12)
            .map(|i| {
                let kind = CAMPAIGN_KINDS[i % CAMPAIGN_KINDS.len()];
                Campaign {
                    id: 1000 + i as i64,
                    name: format!("{kind} {}", 2026 - (i as i64 % 2)),
                    kind: kind.to_string(),
                }
            })
            .collect();

        let account_count = (people / 5).max(1);
        let mut accounts = Vec::with_capacity(account_count);
        let mut opportunities = Vec::new();
        for a in 0..account_count {
            let region = *REGIONS[..4].choose(&mut rng).expect("regions");
            let vertical = *VERTICALS.choose(&mut rng).expect("verticals");
            let account = Account {
                id: salesforce_id("001", a as u64 + 1),
                name: format!(
                    "{} {}",
                    LAST_NAMES[a % LAST_NAMES.len()],
                    ["Inc", "GmbH", "Ltd", "SA"][a % 4]
                ),
                region: region.to_string(),
                vertical: vertical.to_string(),
                owner_id: rep_in(region, &mut rng),
                target: a % 5 == 0,
            };
            if rng.random_bool(0.3) {
                let (stage, closed, won) = *[
                    ("Prospecting", false, false),
                    ("Closed Won", true, true),
                    ("Closed Lost", true, false),
                ]
                .choose(&mut rng)
                .expect("stages");
                let created = now - day * rng.random_range(10..120);
                let close = if closed {
                    now - day * rng.random_range(1..60)
                } else {
                    now + day * rng.random_range(10..90)
                };
                opportunities.push(Opportunity {
                    id: salesforce_id("006", opportunities.len() as u64 + 1),
                    account_id: account.id.clone(),
                    name: format!("{} renewal", account.name),
                    stage: stage.to_string(),
                    is_closed: closed,
                    is_won: won,
                    amount: f64::from(rng.random_range(5..500u32)) * 1000.0,
                    close_date: close.to_zoned(jiff::tz::TimeZone::UTC).date(),
                    created_at: created,
                    modified_at: if closed { close } else { created },
                });
            }
            accounts.push(account);
        }

        let mut persons = Vec::with_capacity(people);
        let mut score_changes = Vec::new();
        let mut lead_n = 0u64;
        let mut contact_n = 0u64;
        for p in 0..people {
            let map_id = 1_000_001 + p as i64;
            let is_contact = rng.random_bool(0.3);
            let account = is_contact.then(|| accounts.choose(&mut rng).expect("accounts"));
            let region = match account {
                Some(a) => a.region.clone(),
                None => REGIONS[rng.random_range(0..100) % 5].to_string(),
            };
            let vertical = match account {
                Some(a) => a.vertical.clone(),
                None => VERTICALS.choose(&mut rng).expect("verticals").to_string(),
            };
            let first = *FIRST_NAMES.choose(&mut rng).expect("names");
            let last = *LAST_NAMES.choose(&mut rng).expect("names");
            let synced = rng.random_bool(0.95);
            let crm_id = synced.then(|| {
                if is_contact {
                    contact_n += 1;
                    salesforce_id("003", contact_n)
                } else {
                    lead_n += 1;
                    salesforce_id("00Q", lead_n)
                }
            });
            let status = *[
                OPEN_STATUS,
                OPEN_STATUS,
                OPEN_STATUS,
                "Working - Contacted",
                "Nurture",
                "Nurture",
                "Rejected",
                "Spam",
            ]
            .choose(&mut rng)
            .expect("statuses");
            let created = now - day * rng.random_range(30..400);
            let owner = rep_in(&region, &mut rng);

            // The score history: demographic points arrive with the record, behaviour points
            // with campaign touches; each change of a part changes leadScore too.
            let mut behavior = 0i64;
            let mut demographic = 0i64;
            let mut at = created;
            let touches = rng.random_range(0..touches.max(1));
            for t in 0..=touches {
                at += SignedDuration::from_mins(rng.random_range(30..20_000));
                if at >= now {
                    break;
                }
                let campaign = campaigns.choose(&mut rng).expect("campaigns").id;
                let (field, delta) = if t == 0 {
                    (ScoreField::DemographicScore, rng.random_range(5..40))
                } else {
                    (
                        ScoreField::BehaviorScore,
                        *[5, 10, 15, 20, 25, -10].choose(&mut rng).expect("deltas"),
                    )
                };
                let (old_part, new_part) = match field {
                    ScoreField::DemographicScore => {
                        let old = demographic;
                        demographic += delta;
                        (old, demographic)
                    }
                    _ => {
                        let old = behavior;
                        behavior = (behavior + delta).max(0);
                        (old, behavior)
                    }
                };
                if old_part == new_part {
                    continue;
                }
                let old_total = behavior + demographic - (new_part - old_part);
                for (field, old, new) in [
                    (field, old_part, new_part),
                    (ScoreField::LeadScore, old_total, behavior + demographic),
                ] {
                    score_changes.push(ScoreChange {
                        activity_id: 0,
                        map_id,
                        at,
                        field,
                        old,
                        new,
                        campaign_id: campaign,
                    });
                }
            }
            let modified = score_changes
                .iter()
                .rev()
                .find(|c| c.map_id == map_id)
                .map_or(created, |c| c.at);
            // Derived from the lead id, not drawn from `rng`: the rest of the world stays the
            // world it was before status changes were dated.
            let status_changed_at = (status != OPEN_STATUS).then(|| {
                let after = SignedDuration::from_hours(1 + (map_id * 7_919).rem_euclid(240));
                let changed = modified + after;
                if changed < now {
                    changed
                } else {
                    created + (now.duration_since(created) / 2)
                }
            });
            persons.push(Person {
                map_id,
                crm_kind: if is_contact {
                    CrmKind::Contact
                } else {
                    CrmKind::Lead
                },
                crm_id,
                account_id: account.map(|a| a.id.clone()),
                first_name: first.to_string(),
                last_name: last.to_string(),
                email: format!(
                    "{}.{}{p}@example.com",
                    first.to_lowercase(),
                    last.to_lowercase().replace('\'', "")
                ),
                title: TITLES.choose(&mut rng).expect("titles").to_string(),
                company: account.map_or_else(|| format!("{last} Partners"), |a| a.name.clone()),
                region,
                vertical,
                status: status.to_string(),
                status_changed_at,
                owner_id: owner,
                behavior_score: behavior,
                demographic_score: demographic,
                lead_score: behavior + demographic,
                created_at: created,
                modified_at: modified,
            });
        }
        score_changes.sort_by_key(|c| (c.at, c.map_id));
        for (i, change) in score_changes.iter_mut().enumerate() {
            change.activity_id = 50_000_001 + i as i64;
        }

        let manager = |region: &str| {
            reps.iter()
                .find(|r| r.region == region)
                .map_or_else(String::new, |r| r.id.clone())
        };
        let mut thresholds = vec![Threshold {
            id: salesforce_id("a0T", 1),
            name: "Default".into(),
            region: None,
            score: 100.0,
            effective_from: None,
            effective_to: None,
            active: true,
            set_by: reps[0].id.clone(),
            created_at: now - day * 200,
            modified_at: now - day * 200,
        }];
        for (i, (region, score)) in [
            ("NA", 90.0),
            ("EMEA", 80.0),
            ("APAC", 70.0),
            ("LATAM", 75.0),
        ]
        .into_iter()
        .enumerate()
        {
            let set = now - day * rng.random_range(20..120);
            thresholds.push(Threshold {
                id: salesforce_id("a0T", i as u64 + 2),
                name: format!("{region} SDR knob"),
                region: Some(region.into()),
                score,
                effective_from: Some(set),
                effective_to: None,
                active: true,
                set_by: manager(region),
                created_at: set,
                modified_at: set,
            });
        }
        // A scheduled change: the EMEA knob goes down for a campaign season next week.
        let start = now + day * 7;
        thresholds.push(Threshold {
            id: salesforce_id("a0T", 6),
            name: "EMEA season push".into(),
            region: Some("EMEA".into()),
            score: 60.0,
            effective_from: Some(start),
            effective_to: Some(start + day * 14),
            active: true,
            set_by: manager("EMEA"),
            created_at: now - day,
            modified_at: now - day,
        });

        let forms = forms();
        let programs = programs(now);
        let engagements = engagements(
            seed,
            &persons,
            &campaigns,
            &programs,
            now,
            50_000_001 + score_changes.len() as i64,
        );
        World {
            seed,
            generated_at: now,
            reps,
            accounts,
            opportunities,
            people: persons,
            campaigns,
            score_changes,
            thresholds,
            forms,
            programs,
            engagements,
        }
    }
}

/// Mixed into the seed for the engagements' own random stream.
const ENGAGEMENT_STREAM: u64 = 0x5eed_f0e5_a11e_11ed;

/// The forms, with the chance that a person fills each one out (each at most once).
const FORMS: [(i64, &str, &[&str], f64); 5] = [
    (
        1001,
        "Demo Request",
        &["Email", "FirstName", "LastName", "Company", "Title"],
        0.025,
    ),
    (
        1002,
        "Contact Us",
        &["Email", "FirstName", "LastName", "Company"],
        0.03,
    ),
    (
        1003,
        "Free Trial",
        &["Email", "FirstName", "LastName", "Company"],
        0.03,
    ),
    (
        1004,
        "Whitepaper Download",
        &["Email", "FirstName", "Company"],
        0.06,
    ),
    (1005, "Newsletter Signup", &["Email"], 0.05),
];

fn forms() -> Vec<Form> {
    FORMS
        .iter()
        .map(|(id, name, fields, _)| Form {
            id: *id,
            name: name.to_string(),
            webpage_id: id + 2_100,
            fields: fields.iter().map(|f| f.to_string()).collect(),
        })
        .collect()
}

fn statuses(channel: &[(i64, &str, bool)]) -> Vec<ProgressionStatus> {
    channel
        .iter()
        .map(|(id, name, success)| ProgressionStatus {
            id: *id,
            name: name.to_string(),
            success: *success,
        })
        .collect()
}

const LIVE_EVENT: [(i64, &str, bool); 6] = [
    (1, "Not in Program", false),
    (2, "Invited", false),
    (3, "Registered", false),
    (4, "Waitlisted", false),
    (5, "No Show", false),
    (6, "Attended", true),
];
const WEBINAR: [(i64, &str, bool); 6] = [
    (7, "Not in Program", false),
    (8, "Invited", false),
    (9, "Registered", false),
    (10, "No Show", false),
    (11, "Attended", true),
    (12, "Attended On-demand", true),
];

fn programs(now: Timestamp) -> Vec<Program> {
    let day = SignedDuration::from_hours(24);
    vec![
        Program {
            id: 2001,
            name: "2026 Customer Summit".into(),
            channel: "Live Event".into(),
            statuses: statuses(&LIVE_EVENT),
            held_at: now - day * 30,
        },
        Program {
            id: 2002,
            name: "Q3 2026 Product Webinar".into(),
            channel: "Webinar".into(),
            statuses: statuses(&WEBINAR),
            held_at: now - day * 75,
        },
        Program {
            id: 2003,
            name: "Q1 2026 Industry Webinar".into(),
            channel: "Webinar".into(),
            statuses: statuses(&WEBINAR),
            held_at: now - day * 250,
        },
    ]
}

/// The form fills and program status changes of every person, from their own random stream,
/// sorted by time and numbered from `first_id`. About 18 % of people fill out a form (2.5 %
/// the Demo Request); of the people there before a program, about 8 % are invited, about
/// 4 % register, and some 55 % of those registered attend (a webinar's no-shows may watch it
/// on demand later).
fn engagements(
    seed: u64,
    people: &[Person],
    campaigns: &[Campaign],
    programs: &[Program],
    now: Timestamp,
    first_id: i64,
) -> Vec<Engagement> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ ENGAGEMENT_STREAM);
    let of_kind = |kind: &str| -> Vec<i64> {
        let ids: Vec<i64> = campaigns
            .iter()
            .filter(|c| c.kind == kind)
            .map(|c| c.id)
            .collect();
        if ids.is_empty() {
            campaigns.iter().map(|c| c.id).collect()
        } else {
            ids
        }
    };
    let content = of_kind("Content");
    let events = of_kind("Trade Show");
    let webinars = of_kind("Webinar");
    let hour = SignedDuration::from_hours(1);
    let day = hour * 24;
    let between = |rng: &mut ChaCha8Rng, from: Timestamp, to: Timestamp| -> Option<Timestamp> {
        let span = to.as_second() - from.as_second();
        (span > 0).then(|| from + SignedDuration::from_secs(rng.random_range(0..span)))
    };

    let mut out = Vec::new();
    let mut mine = Vec::new();
    for person in people {
        mine.clear();
        let since = person.created_at + SignedDuration::from_mins(1);
        for (form_id, _, _, chance) in FORMS {
            if rng.random_bool(chance)
                && let Some(at) = between(&mut rng, since, now)
            {
                mine.push(Engagement {
                    activity_id: 0,
                    map_id: person.map_id,
                    at,
                    campaign_id: *content.choose(&mut rng).expect("campaigns"),
                    kind: EngagementKind::FormFill { form_id },
                });
            }
        }
        for program in programs {
            let pool = if program.channel == "Webinar" {
                &webinars
            } else {
                &events
            };
            let held = program.held_at;
            if person.created_at >= held - day * 2 {
                continue;
            }
            let invited = rng.random_bool(0.08);
            let registers = if invited {
                rng.random_bool(0.35)
            } else {
                rng.random_bool(0.015)
            };
            let attends = rng.random_bool(0.55);
            let on_demand = rng.random_bool(0.3);
            let mut path: Vec<(&str, Timestamp)> = Vec::new();
            let open = person.created_at.max(held - day * 45);
            if invited && let Some(at) = between(&mut rng, open, held - day * 10) {
                path.push(("Invited", at));
            }
            if registers {
                let from = path.last().map_or(open, |(_, at)| *at + hour);
                if let Some(at) = between(&mut rng, from, held - day) {
                    path.push(("Registered", at));
                    let after = held + hour * rng.random_range(2..30);
                    if attends {
                        path.push(("Attended", after));
                    } else {
                        path.push(("No Show", after));
                        if program.channel == "Webinar" && on_demand {
                            let later = after + day * rng.random_range(1..20);
                            path.push(("Attended On-demand", later));
                        }
                    }
                }
            }
            let campaign_id = *pool.choose(&mut rng).expect("campaigns");
            let mut old = &program.statuses[0];
            for (name, at) in path {
                if at >= now {
                    break;
                }
                let (_, new) = program.status(name).expect("the channel has the status");
                mine.push(Engagement {
                    activity_id: 0,
                    map_id: person.map_id,
                    at,
                    campaign_id,
                    kind: EngagementKind::ProgramStatus {
                        program_id: program.id,
                        old_status_id: old.id,
                        new_status_id: new.id,
                        acquired_by: false,
                    },
                });
                old = new;
            }
        }
        mine.sort_by_key(|e| e.at);
        // The first program the person joined acquired them when they joined within two
        // weeks of the record's creation.
        if let Some(EngagementKind::ProgramStatus { acquired_by, .. }) = mine
            .iter_mut()
            .find(|e| matches!(e.kind, EngagementKind::ProgramStatus { .. }))
            .filter(|e| e.at.duration_since(person.created_at) <= day * 14)
            .map(|e| &mut e.kind)
        {
            *acquired_by = true;
        }
        out.append(&mut mine);
    }
    out.sort_by_key(|e| (e.at, e.map_id));
    for (i, e) in out.iter_mut().enumerate() {
        e.activity_id = first_id + i as i64;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-11-02T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn the_same_seed_gives_the_same_world() {
        let a = serde_json::to_string(&World::generate(7, 200, now())).unwrap();
        let b = serde_json::to_string(&World::generate(7, 200, now())).unwrap();
        let c = serde_json::to_string(&World::generate(8, 200, now())).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn scores_are_the_sum_of_their_history() {
        let world = World::generate(1, 300, now());
        for person in &world.people {
            let last = world
                .score_changes
                .iter()
                .rfind(|c| c.map_id == person.map_id && c.field == ScoreField::LeadScore);
            assert_eq!(last.map_or(0, |c| c.new), person.lead_score);
            assert_eq!(
                person.lead_score,
                person.behavior_score + person.demographic_score
            );
        }
        assert!(world.score_changes.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(
            world
                .score_changes
                .iter()
                .all(|c| c.at < world.generated_at)
        );
    }

    /// FNV-1a of the JSON of every fact but the engagements (and the accounts' target flag,
    /// which came later and is drawn from no random stream).
    fn fingerprint_before_engagements(world: &World) -> u64 {
        #[derive(Serialize)]
        struct AccountBefore<'a> {
            id: &'a str,
            name: &'a str,
            region: &'a str,
            vertical: &'a str,
            owner_id: &'a str,
        }
        let accounts: Vec<AccountBefore<'_>> = world
            .accounts
            .iter()
            .map(|a| AccountBefore {
                id: &a.id,
                name: &a.name,
                region: &a.region,
                vertical: &a.vertical,
                owner_id: &a.owner_id,
            })
            .collect();
        let text = serde_json::to_string(&(
            &world.reps,
            &accounts,
            &world.opportunities,
            &world.people,
            &world.campaigns,
            &world.score_changes,
            &world.thresholds,
        ))
        .unwrap();
        text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    #[test]
    fn engagements_left_the_rest_of_the_world_as_it_was() {
        // Taken from the commit before engagements were generated.
        for (seed, people, touches, want, changes) in [
            (7, 2000, DEFAULT_TOUCHES, 0xe4b4_e9c7_5de2_dc28, 20_978),
            (11, 400, DEFAULT_TOUCHES, 0x594d_efc3_c99e_8cab, 4_094),
            (3, 500, 1, 0x1b3b_21fc_f43b_ab59, 1_000),
        ] {
            let world = World::generate_touching(seed, people, now(), touches);
            assert_eq!(world.score_changes.len(), changes, "seed {seed}");
            assert_eq!(
                fingerprint_before_engagements(&world),
                want,
                "seed {seed}: a fact other than the engagements changed"
            );
        }
    }

    #[test]
    fn engagements_are_a_plausible_history_of_forms_and_programs() {
        let world = World::generate(7, 20_000, now());
        let e = &world.engagements;
        assert!(
            e.windows(2)
                .all(|w| (w[0].at, w[0].map_id) <= (w[1].at, w[1].map_id))
        );
        let first = 50_000_001 + world.score_changes.len() as i64;
        assert!(
            e.iter()
                .enumerate()
                .all(|(i, x)| x.activity_id == first + i as i64)
        );
        let created: std::collections::HashMap<i64, Timestamp> = world
            .people
            .iter()
            .map(|p| (p.map_id, p.created_at))
            .collect();
        assert!(
            e.iter()
                .all(|x| x.at < world.generated_at && x.at > created[&x.map_id])
        );
        let campaigns: Vec<i64> = world.campaigns.iter().map(|c| c.id).collect();
        assert!(e.iter().all(|x| campaigns.contains(&x.campaign_id)));

        let share = |keep: &dyn Fn(&Engagement) -> bool| {
            let people: std::collections::HashSet<i64> =
                e.iter().filter(|x| keep(x)).map(|x| x.map_id).collect();
            people.len() as f64 / world.people.len() as f64
        };
        let filled = share(&|x| matches!(x.kind, EngagementKind::FormFill { .. }));
        let demo = share(&|x| x.kind == EngagementKind::FormFill { form_id: 1001 });
        let attended_summit = share(&|x| {
            matches!(
                x.kind,
                EngagementKind::ProgramStatus {
                    program_id: 2001,
                    new_status_id: 6,
                    ..
                }
            )
        });
        assert!((0.10..0.20).contains(&filled), "{filled}");
        assert!((0.015..0.035).contains(&demo), "{demo}");
        assert!((0.01..0.05).contains(&attended_summit), "{attended_summit}");

        // Each member's changes chain: a change starts from the status the last one ended in.
        let mut current: std::collections::HashMap<(i64, i64), i64> = Default::default();
        let mut acquired = std::collections::HashSet::new();
        for x in e {
            if let EngagementKind::ProgramStatus {
                program_id,
                old_status_id,
                new_status_id,
                acquired_by,
            } = x.kind
            {
                let program = world.programs.iter().find(|p| p.id == program_id).unwrap();
                let start = program.statuses[0].id;
                let was = current.insert((program_id, x.map_id), new_status_id);
                assert_eq!(was.unwrap_or(start), old_status_id, "{x:?}");
                assert!(program.statuses.iter().any(|s| s.id == new_status_id));
                if acquired_by {
                    assert_eq!(old_status_id, start);
                    assert!(acquired.insert(x.map_id), "acquired twice: {x:?}");
                }
            }
        }
        assert!(!acquired.is_empty());
    }

    #[test]
    fn salesforce_ids_carry_the_case_safe_suffix() {
        // Chunks of the 15-char id with upper-case letters set bits in the suffix.
        let id = salesforce_id("00Q", 61);
        assert_eq!(id.len(), 18);
        assert_eq!(&id[..15], "00Q5g000000000z");
        assert_eq!(&id[15..], "EAA");
        let upper = salesforce_id("a0T", 35);
        assert_eq!(&upper[..15], "a0T5g000000000Z");
        assert_eq!(&upper[15..], "EAQ");
    }
}
