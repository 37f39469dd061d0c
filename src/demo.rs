//! `mqlsync demo`: the whole product in one command, on embedded defaults. Starts the sandbox
//! (both emulators, a seeded org), runs a full sync, then has a sales manager turn the EMEA
//! knob down in the CRM and syncs again, so the new MQLs of that knob turn show up, with the
//! API calls each run used against the fewest possible.

use jiff::{SignedDuration, Timestamp};
use serde_json::{Map, json};

use crate::config;
use crate::mapping;
use crate::sandbox::cli::sandbox_config_toml;
use crate::sandbox::clock::SandboxClock;
use crate::sandbox::server::{Sandbox, SandboxOptions};
use crate::store::Store;
use crate::sync::connect;
use crate::sync::once::{RunSettings, RunSummary, run_once};

/// What the demo did.
pub struct DemoReport {
    pub first: RunSummary,
    pub knob: KnobTurn,
    pub second: RunSummary,
    pub cycles_before: usize,
    pub cycles_after: usize,
    /// The people the knob turn made MQLs, by name.
    pub new_mqls: Vec<NewMql>,
    /// Everyone of the segment between the new and the old threshold, and what became of them.
    pub between: Between,
    pub store: String,
}

/// The people of the turned segment whose score sat between the new threshold (included) and
/// the old one when the knob turned: those who became MQLs, and why the others did not.
#[derive(Default)]
pub struct Between {
    pub people: usize,
    pub became_mqls: usize,
    /// Why the others are not new MQLs, in `explain`'s words, with how many.
    pub held: std::collections::BTreeMap<String, usize>,
}

/// A person the knob turn made an MQL.
pub struct NewMql {
    pub name: String,
    /// Title and company, as the CRM has them.
    pub role: String,
    pub crm_kind: &'static str,
    pub crm_id: String,
    pub score: f64,
    pub threshold: f64,
    /// The MQL record's external id.
    pub external_id: String,
    pub alerted: bool,
}

/// The knob the demo turned.
pub struct KnobTurn {
    pub threshold_id: String,
    pub segment: String,
    pub from: f64,
    pub to: f64,
}

/// Runs the demo with `leads` people seeded from `seed`, keeping the store at `store`.
pub async fn run(
    leads: usize,
    seed: u64,
    store_path: &std::path::Path,
) -> anyhow::Result<DemoReport> {
    let start = Timestamp::from_second(Timestamp::now().as_second())?;
    let sandbox = Sandbox::start(SandboxOptions {
        leads,
        seed,
        clock: SandboxClock::frozen(start),
        ..SandboxOptions::default()
    })
    .await?;
    let info = sandbox.connection_info();
    let text = |system: &str, key: &str| info[system][key].as_str().unwrap_or_default().to_string();
    let dir = store_path
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let file = dir.join("demo.toml");
    // The demo's store is new each time: the old one goes with its -wal and -shm (a stale
    // -wal beside a new file would be read as part of it). Opening the store first makes a
    // folder this user cannot write an error that names the store's path.
    for suffix in ["", "-wal", "-shm"] {
        let mut name = store_path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(std::path::PathBuf::from(name));
    }
    let mut store = Store::open(store_path)?;
    let store_name = store_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::write(&file, sandbox_config_toml(&info, &store_name, None)).map_err(|e| {
        anyhow::anyhow!(
            "cannot write the demo's config {}: {e}; pass --store with a path in a folder you can write",
            file.display()
        )
    })?;
    let env = vec![
        (
            "MQLSYNC_SALESFORCE_CLIENT_SECRET".to_string(),
            text("salesforce", "client_secret"),
        ),
        (
            "MQLSYNC_MARKETO_CLIENT_SECRET".to_string(),
            text("marketo", "client_secret"),
        ),
    ];
    let config = config::load(Some(&file), &env)?;
    let loaded = mapping::load(None)?;
    let sf = connect::salesforce(&config)?;
    let mk = connect::marketo(&config)?;
    let settings = RunSettings::default();
    let sent = || (sf.sent(), mk.sent());

    let first = run_once(
        &sf,
        &mk,
        &loaded.mapping,
        &loaded.policy,
        &mut store,
        start,
        &settings,
        sent,
    )
    .await?;
    let before: std::collections::HashSet<String> =
        store.cycles()?.into_iter().map(|c| c.external_id).collect();
    let cycles_before = before.len();

    // A sales manager turns the EMEA knob down by 25 points, a minute later.
    let knob = sandbox
        .world()
        .thresholds
        .iter()
        .find(|t| {
            t.region.as_deref() == Some("EMEA") && t.effective_from.is_none_or(|f| f <= start)
        })
        .ok_or_else(|| anyhow::anyhow!("the seeded org has no EMEA threshold"))?;
    let turn = KnobTurn {
        threshold_id: knob.id.clone(),
        segment: "region=EMEA".into(),
        from: knob.score,
        to: (knob.score - 25.0).max(0.0),
    };
    let later = start + SignedDuration::from_mins(1);
    sandbox.clock().set(later);
    let mut edit = Map::new();
    edit.insert("Score_Threshold__c".into(), json!(turn.to));
    edit.insert(
        "Reason__c".into(),
        json!("Pipeline short for the quarter: more leads"),
    );
    sandbox
        .salesforce()
        .edit_record("MQL_Threshold__c", &turn.threshold_id, edit)
        .map_err(anyhow::Error::msg)?;

    let second = run_once(
        &sf,
        &mk,
        &loaded.mapping,
        &loaded.policy,
        &mut store,
        later,
        &settings,
        sent,
    )
    .await?;
    let after = store.cycles()?;
    let cycles_after = after.len();
    let between = between(&store, &loaded.policy, &turn, &before, later)?;
    let alerted: std::collections::HashSet<&str> = second
        .records
        .iter()
        .filter(|r| r.object == loaded.mapping.crm.task && r.outcome == "written")
        .filter_map(|r| r.external_id.as_deref())
        .collect();
    let world = sandbox.world();
    let mut new_mqls: Vec<NewMql> = after
        .iter()
        .filter(|c| !before.contains(&c.external_id))
        .map(|c| {
            let person = world
                .people
                .iter()
                .find(|p| p.crm_id.as_deref() == Some(c.crm.id.as_str()));
            NewMql {
                name: person.map_or_else(
                    || "(not in the seeded world)".into(),
                    |p| format!("{} {}", p.first_name, p.last_name),
                ),
                role: person.map_or_else(String::new, |p| format!("{}, {}", p.title, p.company)),
                crm_kind: c.crm.kind.as_str(),
                crm_id: c.crm.id.clone(),
                score: c.score,
                threshold: c.threshold,
                // An alert task's key starts with `Notify:{external id}:`.
                alerted: alerted.iter().any(|k| {
                    k.strip_prefix("Notify:")
                        .is_some_and(|rest| rest.starts_with(&format!("{}:", c.external_id)))
                }),
                external_id: c.external_id.clone(),
            }
        })
        .collect();
    new_mqls.sort_by(|a, b| a.name.cmp(&b.name));
    sandbox.shutdown().await;
    Ok(DemoReport {
        first,
        knob: turn,
        second,
        cycles_before,
        cycles_after,
        new_mqls,
        between,
        store: config.store.display().to_string(),
    })
}

/// Who of the turned segment (region EMEA) sat between the new threshold and the old one at
/// the turn, from the store's own state: which of them became MQLs, and the engine's reason
/// (`explain`) for each of the others.
fn between(
    store: &Store,
    policy: &crate::engine::Policy,
    turn: &KnobTurn,
    before: &std::collections::HashSet<String>,
    at: Timestamp,
) -> anyhow::Result<Between> {
    use crate::engine::model::Reason;
    let state = store.load_engine(policy)?;
    let mut out = Between::default();
    for (id, person) in state.persons.iter() {
        let in_segment = person
            .facts
            .as_ref()
            .is_some_and(|f| f.attributes.get("region").map(String::as_str) == Some("EMEA"));
        let score = person
            .map_lead
            .and_then(|l| state.map_leads.get(&l))
            .and_then(|l| l.scores.value(&policy.score, at));
        if !score.is_some_and(|s| in_segment && s >= turn.to && s < turn.from) {
            continue;
        }
        out.people += 1;
        let opened_now = person
            .cycles
            .iter()
            .any(|c| !before.contains(&c.external_id));
        if opened_now {
            out.became_mqls += 1;
            continue;
        }
        let why = match crate::engine::explain(&state, policy, id, at) {
            Reason::Excluded { rule, .. } => format!("excluded by the {} rule", rule.label()),
            Reason::OpenCycle { .. } => "an MQL still open from before".to_string(),
            Reason::CoolingDown { .. } => "cooling down after a rejection".to_string(),
            Reason::NotLinked { .. } => "not linked to a CRM record".to_string(),
            other => other.to_string(),
        };
        *out.held.entry(why).or_default() += 1;
    }
    Ok(out)
}
