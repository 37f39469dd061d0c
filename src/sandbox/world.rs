//! The world both emulators are seeded from: reps, accounts, opportunities, people (each a
//! CRM lead or contact linked to a MAP lead), thresholds per region, campaigns, and the score
//! history that led to today's scores. Generated deterministically from `--seed`, so that a
//! test or a demo run sees the same org every time.
//!
//! These are the sandbox's own facts, in plain terms; each emulator turns them into its
//! vendor's records (a person becomes a Salesforce Lead or Contact and a Marketo lead with
//! `sfdcLeadId`/`sfdcContactId`; a score change becomes a Marketo "Change Score" activity).

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
        }
    }
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
