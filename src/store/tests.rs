//! Store tests: migrations and refusals, one-transaction batches, the outbox, that a store
//! reloaded after any batch continues exactly as an uninterrupted run, and opening: one
//! writer per store file however it is named, readers beside it, and what a store that
//! cannot be used says.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};

use super::*;
use crate::engine::model::{CrmRef, MapLink, PersonFacts, ScoreChange};
use crate::engine::{Context, Policy, Visibility, reconcile};

fn t(minutes: i64) -> Timestamp {
    "2026-03-02T10:00:00Z".parse::<Timestamp>().unwrap() + SignedDuration::from_mins(minutes)
}

fn events() -> Vec<Event> {
    events_of(6)
}

/// A threshold of 80, then `people` leads whose scores cross it.
fn events_of(people: i64) -> Vec<Event> {
    let mut out = vec![Event::Threshold(Threshold {
        id: "a0T1".into(),
        segment: BTreeMap::from([("region".to_string(), "NA".to_string())]),
        score: 80.0,
        effective_from: None,
        effective_to: None,
        active: true,
        set_by: Some("005M".into()),
        modified_at: t(0),
        deleted: false,
    })];
    for i in 0..people {
        let id = format!("00Q{i}");
        out.push(Event::Person(PersonFacts {
            crm: CrmRef {
                kind: CrmKind::Lead,
                id: id.as_str().into(),
            },
            status: Some("Open".into()),
            owner_id: Some("005A".into()),
            title: None,
            account_id: None,
            converted: false,
            attributes: BTreeMap::from([("region".to_string(), "NA".to_string())]).into(),
            prior_mql_at: None,
            modified_at: t(i),
        }));
        out.push(Event::Link(MapLink {
            map_lead_id: i,
            crm: Some(CrmRef {
                kind: CrmKind::Lead,
                id: id.into(),
            }),
            at: t(i),
        }));
        for k in 0..3 {
            out.push(Event::Score(ScoreChange {
                map_lead_id: i,
                change_id: format!("s{i}-{k}"),
                part: ScorePart::Total,
                new_value: 30.0 * (k + 1) as f64 + i as f64,
                old_value: None,
                campaign: Some(Campaign {
                    id: format!("C{k}").into(),
                    name: None,
                }),
                at: t(10 + i * 3 + k),
            }));
        }
    }
    out
}

fn apply(state: &mut EngineState, policy: &Policy, event: &Event) -> Vec<Decision> {
    let ctx = Context {
        policy,
        now: event.at(),
        backfill: false,
        visibility: Visibility::AtDecision,
    };
    reconcile(state, &ctx, event)
}

/// Applies a batch of events and commits it with its decisions (no cursors); gives the
/// decisions.
fn apply_and_commit(
    store: &mut Store,
    state: &mut EngineState,
    policy: &Policy,
    events: &[Event],
) -> Vec<Decision> {
    let decisions: Vec<Decision> = events
        .iter()
        .flat_map(|e| apply(state, policy, e))
        .collect();
    store
        .commit_batch(
            Batch {
                events,
                decisions: &decisions,
                cursors: &[],
                seen_at: t(100),
            },
            state,
        )
        .unwrap();
    decisions
}

#[test]
fn a_new_store_is_migrated_to_the_latest_schema_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s/m.sqlite")).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let mode: String = store
        .conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn a_reloaded_store_continues_exactly_like_an_uninterrupted_run() {
    // Score snapshots never (the history is replayed on every load), after every few
    // history rows (snapshot and history mixed), and after every row.
    for snapshot_rows in [i64::MAX, 5, 1] {
        reload_after_every_batch(snapshot_rows);
    }
}

fn reload_after_every_batch(snapshot_rows: i64) {
    let policy = Policy::example();
    let all = events();
    // Uninterrupted.
    let mut straight = EngineState::new();
    let expected: Vec<Vec<Decision>> = all
        .iter()
        .map(|e| apply(&mut straight, &policy, e))
        .collect();
    // Interrupted after every batch of 4 events: commit, drop everything, reload.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.sqlite");
    let mut got = Vec::new();
    for (n, chunk) in all.chunks(4).enumerate() {
        let mut store = Store::open(&path).unwrap();
        store.set_score_snapshot_rows(snapshot_rows);
        let mut state = store.load_engine(&policy).unwrap();
        let decisions: Vec<Vec<Decision>> = chunk
            .iter()
            .map(|e| apply(&mut state, &policy, e))
            .collect();
        let flat: Vec<Decision> = decisions.iter().flatten().cloned().collect();
        let cursors = [("map.activities".to_string(), format!("batch-{n}"))];
        store
            .commit_batch(
                Batch {
                    events: chunk,
                    decisions: &flat,
                    cursors: &cursors,
                    seen_at: t(100),
                },
                &mut state,
            )
            .unwrap();
        got.extend(decisions);
    }
    assert_eq!(
        serde_json::to_string(&got).unwrap(),
        serde_json::to_string(&expected).unwrap()
    );
    let store = Store::open(&path).unwrap();
    let reloaded = store.load_engine(&policy).unwrap();
    assert_eq!(reloaded.persons.len(), straight.persons.len());
    for (id, p) in &straight.persons {
        assert_eq!(reloaded.persons[id].cycles, p.cycles, "{id}");
        assert_eq!(reloaded.persons[id].stamps, p.stamps, "{id}");
    }
    assert_eq!(reloaded.map_leads, straight.map_leads);
    let last = format!("batch-{}", (all.len() - 1) / 4);
    assert_eq!(store.cursor("map.activities").unwrap(), Some(last));
    let summary = store.summary().unwrap();
    assert_eq!(summary.score_changes, 18);
    assert_eq!(summary.threshold_versions, 1);
    assert!(
        summary
            .cycles_by_status
            .iter()
            .any(|(s, n)| s == "Open" && *n > 0)
    );
}

/// Under account scoring (30 days): two accounts of three contacts each, their scores
/// crossing 100 as accounts (one cycle each, the others held by it), then more changes.
fn account_events() -> Vec<Event> {
    let mut out = Vec::new();
    for (a, account) in ["001A", "001B"].into_iter().enumerate() {
        out.push(Event::Account(crate::engine::model::AccountFacts {
            id: account.into(),
            owner_id: Some(format!("005OWN{a}").into()),
            attributes: Default::default(),
            modified_at: t(0),
        }));
        for i in 0..3 {
            let id = format!("003{a}{i}");
            let lead = (a * 10 + i) as i64;
            out.push(Event::Person(PersonFacts {
                crm: CrmRef {
                    kind: CrmKind::Contact,
                    id: id.as_str().into(),
                },
                status: Some("Open".into()),
                owner_id: Some("005A".into()),
                title: None,
                account_id: Some(account.into()),
                converted: false,
                attributes: BTreeMap::from([("region".to_string(), "NA".to_string())]).into(),
                prior_mql_at: None,
                modified_at: t(1),
            }));
            out.push(Event::Link(MapLink {
                map_lead_id: lead,
                crm: Some(CrmRef {
                    kind: CrmKind::Contact,
                    id: id.into(),
                }),
                at: t(1),
            }));
        }
    }
    for k in 0..8i64 {
        for lead in [0i64, 1, 2, 10, 11, 12] {
            out.push(Event::Score(ScoreChange {
                map_lead_id: lead,
                change_id: format!("s{lead}-{k}"),
                part: ScorePart::Total,
                new_value: 12.0 * (k + 1) as f64,
                old_value: None,
                campaign: None,
                at: t(10 + k * 10 + lead),
            }));
        }
    }
    out
}

#[test]
fn under_account_scoring_a_reloaded_store_continues_exactly_like_an_uninterrupted_run() {
    let mut policy = Policy::example();
    policy.score = crate::engine::policy::ScoreSource::Account {
        window: SignedDuration::from_hours(24 * 30),
    };
    let all = account_events();
    let mut straight = EngineState::new();
    let expected: Vec<Decision> = all
        .iter()
        .flat_map(|e| apply(&mut straight, &policy, e))
        .collect();
    assert_eq!(
        expected
            .iter()
            .filter(|d| matches!(d.action, crate::engine::model::Action::OpenCycle { .. }))
            .count(),
        2,
        "one cycle an account"
    );
    let held_by_another = |d: &Decision| {
        matches!(&d.reason, crate::engine::model::Reason::OpenCycle { external_id }
            if !external_id.starts_with(d.subject.as_str()))
    };
    assert!(
        expected.iter().filter(|d| held_by_another(d)).count() >= 4,
        "the account's other people are held by its cycle: {expected:#?}"
    );
    // The account scores, each person's account slot and where each account's open cycle
    // is come back from the store after every batch of 5 events.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.sqlite");
    let mut got = Vec::new();
    for chunk in all.chunks(5) {
        let mut store = Store::open(&path).unwrap();
        let mut state = store.load_engine(&policy).unwrap();
        got.extend(apply_and_commit(&mut store, &mut state, &policy, chunk));
    }
    assert_eq!(
        serde_json::to_string(&got).unwrap(),
        serde_json::to_string(&expected).unwrap()
    );
    let reloaded = Store::open(&path).unwrap().load_engine(&policy).unwrap();
    assert!(reloaded.account_scores == straight.account_scores);
}

#[test]
fn a_failed_batch_leaves_nothing_behind() {
    let policy = Policy::example();
    let mut store = Store::open_in_memory().unwrap();
    let mut state = EngineState::new();
    let all = events();
    let decisions: Vec<Decision> = all
        .iter()
        .flat_map(|e| apply(&mut state, &policy, e))
        .collect();
    // Break the last statement the batch runs (the cursor write) to fail mid-way.
    store.conn.execute_batch("DROP TABLE cursors").unwrap();
    let cursors = [("crm.leads".to_string(), "x".to_string())];
    let err = store
        .commit_batch(
            Batch {
                events: &all,
                decisions: &decisions,
                cursors: &cursors,
                seen_at: t(0),
            },
            &mut state,
        )
        .unwrap_err();
    assert!(err.to_string().contains("cursors"), "{err}");
    for table in [
        "score_history",
        "audit",
        "outbox",
        "cycles",
        "persons",
        "map_leads",
    ] {
        let n: i64 = store
            .conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "{table} kept rows of a failed batch");
    }
}

#[test]
fn the_outbox_keeps_the_latest_state_per_record_and_a_replay_requeues_nothing() {
    let policy = Policy::example();
    let mut store = Store::open_in_memory().unwrap();
    let mut state = EngineState::new();
    let all = events();
    let decisions: Vec<Decision> = all
        .iter()
        .flat_map(|e| apply(&mut state, &policy, e))
        .collect();
    let commit = |store: &mut Store, state: &mut EngineState, decisions: &[Decision]| {
        store
            .commit_batch(
                Batch {
                    events: &[],
                    decisions,
                    cursors: &[],
                    seen_at: t(50),
                },
                state,
            )
            .unwrap();
    };
    commit(&mut store, &mut state, &decisions);
    let pending = store.outbox_pending(100).unwrap();
    let mql_rows = pending.iter().filter(|r| r.key.starts_with("MQL:")).count();
    let opened = decisions
        .iter()
        .filter(|d| matches!(d.action, Action::OpenCycle { .. }))
        .count();
    assert_eq!(mql_rows, opened, "one row per cycle");
    assert!(pending.iter().all(|r| r.attempts == 0));
    let results: Vec<(OutboxRow, Settlement)> = pending
        .iter()
        .map(|r| {
            (
                r.clone(),
                if r.key == pending[0].key {
                    Settlement::Failed("FIELD_CUSTOM_VALIDATION_EXCEPTION".into())
                } else {
                    Settlement::Done
                },
            )
        })
        .collect();
    // The pending keys come in the rows' order, and loading them by key gives the same rows.
    let keys = store.outbox_pending_keys().unwrap();
    assert_eq!(
        keys,
        pending.iter().map(|r| r.key.clone()).collect::<Vec<_>>()
    );
    let (first, rest) = keys.split_at(keys.len() / 2);
    let mut chunked = store.outbox_rows(first).unwrap();
    chunked.extend(store.outbox_rows(rest).unwrap());
    assert_eq!(
        chunked.iter().map(|r| &r.key).collect::<Vec<_>>(),
        pending.iter().map(|r| &r.key).collect::<Vec<_>>()
    );
    store.outbox_settle(&results, t(60)).unwrap();
    assert!(store.outbox_pending(100).unwrap().is_empty());
    assert!(
        store.outbox_rows(&keys).unwrap().is_empty(),
        "rows no longer pending are not loaded"
    );
    let summary = store.summary().unwrap();
    assert_eq!(summary.outbox_failed, 1);
    assert_eq!(
        summary.outbox_failures,
        [("FIELD_CUSTOM_VALIDATION_EXCEPTION".to_string(), 1)]
    );
    // The same decisions again (a replayed batch): written rows stay written, the failed one
    // is retried.
    commit(&mut store, &mut state, &decisions);
    let again = store.outbox_pending(100).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].key, pending[0].key);
}

/// Commits `events` decided in a world with a writer (a cycle's SLA waits for its record),
/// and returns the pending MQL rows with the cycles as a first write at `write` leaves them.
fn unwritten_mqls(
    store: &mut Store,
    state: &mut EngineState,
    policy: &Policy,
    write: Timestamp,
) -> Vec<(OutboxRow, Cycle)> {
    let decisions: Vec<Decision> = events()
        .iter()
        .flat_map(|e| {
            let ctx = Context {
                policy,
                now: e.at(),
                backfill: false,
                visibility: Visibility::WhenWritten,
            };
            reconcile(state, &ctx, e)
        })
        .collect();
    store
        .commit_batch(
            Batch {
                events: &[],
                decisions: &decisions,
                cursors: &[],
                seen_at: t(50),
            },
            state,
        )
        .unwrap();
    let rows: Vec<(OutboxRow, Cycle)> = store
        .outbox_pending(100)
        .unwrap()
        .into_iter()
        .filter(|r| r.kind == "cycle")
        .map(|r| {
            let mut cycle: Cycle = serde_json::from_str(&r.payload).unwrap();
            assert_eq!(cycle.sla_due_at, None, "no SLA before the write");
            crate::engine::mark_written(policy, &mut cycle, write);
            (r, cycle)
        })
        .collect();
    assert!(!rows.is_empty());
    rows
}

/// The writer's settlement of first writes and the engine's `CycleWritten` reports, as
/// `run --once` commits them.
fn settle_first_writes(
    store: &mut Store,
    state: &mut EngineState,
    policy: &Policy,
    rows: &[(OutboxRow, Cycle)],
    write: Timestamp,
) -> Result<(), StoreError> {
    let results: Vec<(OutboxRow, Settlement)> = rows
        .iter()
        .map(|(r, c)| (r.clone(), Settlement::DoneAs(json(c))))
        .collect();
    let events: Vec<Event> = rows
        .iter()
        .map(|(_, c)| {
            Event::CycleWritten(crate::engine::model::CycleWritten {
                external_id: c.external_id.clone(),
                at: write,
            })
        })
        .collect();
    let ctx = Context {
        policy,
        now: write,
        backfill: false,
        visibility: Visibility::WhenWritten,
    };
    let decisions: Vec<Decision> = events
        .iter()
        .flat_map(|e| reconcile(state, &ctx, e))
        .collect();
    store.settle_writes(
        &results,
        Batch {
            events: &events,
            decisions: &decisions,
            cursors: &[],
            seen_at: write,
        },
        state,
    )
}

#[test]
fn a_first_write_keeps_the_record_as_written_and_its_cycle_knows_it_in_one_transaction() {
    let policy = Policy::example();
    let write = t(60 * 24 * 3);
    let mut store = Store::open_in_memory().unwrap();
    let mut state = EngineState::new();
    let rows = unwritten_mqls(&mut store, &mut state, &policy, write);
    settle_first_writes(&mut store, &mut state, &policy, &rows, write).unwrap();
    let pending = store.outbox_pending(100).unwrap();
    assert!(pending.iter().all(|r| r.kind != "cycle"), "{pending:?}");
    for (row, cycle) in &rows {
        // What the CRM record holds from mqlsync: the cycle with the SLA it was written with.
        let kept = store.outbox_written(&row.key).unwrap().unwrap();
        assert_eq!(kept.payload, json(cycle));
        assert!(cycle.sla_due_at.is_some_and(|due| due > write));
    }
    let audit = store.audit_of(&rows[0].1.crm.id).unwrap();
    assert!(
        audit
            .iter()
            .any(|(_, _, reason)| reason.contains("sla_started")),
        "{audit:?}"
    );
    // A reloaded engine has the same cycles and timers.
    let loaded = store.load_engine(&policy).unwrap();
    for (_, cycle) in &rows {
        assert_eq!(loaded.cycle(&cycle.external_id), Some(cycle));
    }
    assert_eq!(loaded.next_wakeup(), state.next_wakeup());
    assert!(loaded.next_wakeup().is_some_and(|at| at > write));

    // The same with the transaction failing at its end: the rows stay pending and no cycle
    // is saved as written, so the next run writes them again and starts the SLA then.
    let mut store = Store::open_in_memory().unwrap();
    let mut state = EngineState::new();
    let rows = unwritten_mqls(&mut store, &mut state, &policy, write);
    store.conn.execute_batch("DROP TABLE audit").unwrap();
    settle_first_writes(&mut store, &mut state, &policy, &rows, write).unwrap_err();
    let pending = store.outbox_pending(100).unwrap();
    let keys = |rows: Vec<&OutboxRow>| rows.into_iter().map(|r| r.key.clone()).collect::<Vec<_>>();
    assert_eq!(
        keys(pending.iter().filter(|r| r.kind == "cycle").collect()),
        keys(rows.iter().map(|(r, _)| r).collect())
    );
    let loaded = store.load_engine(&policy).unwrap();
    for (_, cycle) in &rows {
        let saved = loaded.cycle(&cycle.external_id).unwrap();
        assert_eq!((saved.written_at, saved.sla_due_at), (None, None));
    }
}

#[test]
fn a_cycle_saved_before_written_at_existed_loads_with_its_sla() {
    let policy = Policy::example();
    let mut store = Store::open_in_memory().unwrap();
    let mut state = EngineState::new();
    apply_and_commit(&mut store, &mut state, &policy, &events());
    let id = state.persons["00Q0"].cycles[0].external_id.clone();
    // The body as an older mqlsync saved it: no `written_at`, its SLA started at the MQL.
    let body: String = store
        .conn
        .query_row(
            "SELECT body FROM cycles WHERE external_id = ?1",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!body.contains("written_at"), "{body}");
    let loaded = store.load_engine(&policy).unwrap();
    let cycle = loaded.cycle(&id).unwrap();
    assert_eq!(cycle.written_at, None);
    assert!(cycle.sla_due_at.is_some());
    assert_eq!(loaded.next_wakeup(), state.next_wakeup());
}

#[test]
fn a_file_that_is_not_a_store_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "these are my notes, not a database, and long enough to look like a header page....",
    )
    .unwrap();
    let err = Store::open(&text).err().unwrap();
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err}");
    assert!(
        std::fs::read_to_string(&text)
            .unwrap()
            .starts_with("these are my notes")
    );
    let other = dir.path().join("other.sqlite");
    Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let err = Store::open(&other).err().unwrap();
    assert!(err.to_string().contains("another application"), "{err}");
}

#[test]
fn a_store_of_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.sqlite");
    drop(Store::open(&path).unwrap());
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    let err = Store::open(&path).err().unwrap();
    assert!(
        matches!(err, StoreError::NewerSchema { found, .. } if found == SCHEMA_VERSION + 1),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade mqlsync"));
}

#[test]
fn a_store_of_an_older_schema_is_migrated_and_keeps_what_it_had() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.sqlite");
    schema_1_store(&path);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    const { assert!(SCHEMA_VERSION >= 2) };
    assert_eq!(store.cursor("crm.Lead").unwrap().as_deref(), Some("x"));
    assert_eq!(store.summary().unwrap().threshold_field_changes, 0);
    // A reader (`status` after an upgrade) migrates it the same way, under the writer lock.
    let path = dir.path().join("r.sqlite");
    schema_1_store(&path);
    let reader = Store::open_existing(&path).unwrap();
    assert_eq!(reader.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(reader.summary().unwrap().threshold_field_changes, 0);
}

/// A store as the first release left it: schema 1 with a cursor.
fn schema_1_store(path: &Path) {
    {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO cursors (name, value, updated_at) VALUES ('crm.Lead', 'x', 'y')",
            [],
        )
        .unwrap();
    }
}

#[test]
fn the_audit_reason_code_is_the_code_the_reason_json_carries() {
    use crate::engine::model::{CycleStatus, Outcome, RuleKind, Trigger};
    let t0 = t(0);
    let reasons = [
        Reason::Qualified {
            score: 1.0,
            threshold: 1.0,
            threshold_id: None,
            trigger: Trigger::Link,
        },
        Reason::BelowThreshold {
            score: 1.0,
            threshold: 2.0,
            threshold_id: None,
        },
        Reason::NoThreshold,
        Reason::NotLinked { map_lead_id: 1 },
        Reason::NoScore,
        Reason::Excluded {
            rule: RuleKind::Title,
            detail: String::new(),
        },
        Reason::OpenCycle {
            external_id: "x-1".into(),
        },
        Reason::CoolingDown {
            until: t0,
            outcome: Outcome::NotNow,
        },
        Reason::StatusChanged {
            from: CycleStatus::Open,
            to: CycleStatus::Working,
            by: None,
        },
        Reason::HistoricStatus {
            status: "Working - Contacted".into(),
            from: CycleStatus::Open,
            to: CycleStatus::Working,
        },
        Reason::OwnerChanged { to: None },
        Reason::Converted { by: String::new() },
        Reason::SlaOverdue { due: t0 },
        Reason::SlaStarted {
            written_at: t0,
            due: t0,
        },
        Reason::Reassigned {
            from: None,
            to: "005B".into(),
            count: 1,
        },
        Reason::EditRefused {
            problem: String::new(),
        },
        Reason::ThresholdInvalid {
            problem: String::new(),
        },
        Reason::ThresholdSeen { version: t0 },
        Reason::RejectionReasonUnmapped {
            reason: String::new(),
        },
        Reason::EditUnknownCycle {
            external_id: "x-1".into(),
            edited_at: t0,
        },
        Reason::EditStale {
            external_id: "x-1".into(),
            edited_at: t0,
            applied_at: None,
            mql_at: t0,
        },
        Reason::NotSeen,
    ];
    for reason in &reasons {
        let value = serde_json::to_value(reason).unwrap();
        assert_eq!(value["code"].as_str(), Some(reason_code(reason)), "{value}");
    }
}

#[test]
fn a_new_store_uses_16_kib_pages_and_an_old_one_keeps_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.sqlite");
    let page_size = |store: &Store| -> i64 {
        store
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap()
    };
    let store = Store::open(&path).unwrap();
    assert_eq!(page_size(&store), 16_384);
    let pragma = |name: &str| -> i64 {
        store
            .conn
            .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(pragma("cache_size"), -65_536);
    assert_eq!(pragma("wal_autocheckpoint"), 8_192);
    drop(store);
    let old = dir.path().join("old.sqlite");
    {
        let conn = Connection::open(&old).unwrap();
        conn.execute_batch("PRAGMA page_size = 4096; VACUUM;")
            .unwrap();
    }
    assert_eq!(page_size(&Store::open(&old).unwrap()), 4_096);
}

#[test]
fn a_store_kept_open_across_batches_saves_every_later_change_of_a_lead() {
    // One engine state through every batch (no reload in between): a lead changed in one
    // batch must be listed again when it changes in a later one.
    let policy = Policy::example();
    let all = events();
    let mut store = Store::open_in_memory().unwrap();
    let mut state = EngineState::new();
    for chunk in all.chunks(3) {
        apply_and_commit(&mut store, &mut state, &policy, chunk);
        assert!(state.dirty.is_empty());
    }
    let reloaded = store.load_engine(&policy).unwrap();
    assert_eq!(reloaded.map_leads, state.map_leads);
    for (id, p) in &state.persons {
        assert_eq!(reloaded.persons[id].cycles, p.cycles, "{id}");
        assert_eq!(reloaded.persons[id].last_hold, p.last_hold, "{id}");
        assert_eq!(reloaded.persons[id].map_lead, p.map_lead, "{id}");
    }
}

#[test]
fn decayed_scores_with_late_and_repeated_changes_reload_exactly() {
    // Behaviour changes under a decayed score, one arriving late (older than one applied)
    // and one delivered twice: whatever mixes snapshot and replayed history, the reloaded
    // scores are the ones of an uninterrupted run, to the bit.
    let mut policy = Policy::example();
    policy.score = crate::engine::policy::ScoreSource::TimeDecayed {
        half_life: jiff::SignedDuration::from_hours(24 * 7),
    };
    let change = |lead: i64, id: &str, part: ScorePart, new: f64, at: i64| {
        Event::Score(ScoreChange {
            map_lead_id: lead,
            change_id: id.to_string(),
            part,
            new_value: new,
            old_value: None,
            campaign: Some(Campaign {
                id: format!("C-{id}").into(),
                name: Some("Webinar".into()),
            }),
            at: t(at),
        })
    };
    let all = vec![
        change(1, "a", ScorePart::Demographic, 20.0, 10),
        change(1, "b", ScorePart::Behavior, 35.0, 20),
        change(2, "c", ScorePart::Behavior, 10.0, 30),
        change(1, "d", ScorePart::Behavior, 55.0, 40_000),
        change(1, "e", ScorePart::Behavior, 45.0, 30_000),
        change(2, "f", ScorePart::Behavior, 70.0, 90_000),
        change(1, "d", ScorePart::Behavior, 55.0, 40_000),
        change(2, "g", ScorePart::Demographic, 5.0, 95_000),
    ];
    let mut straight = EngineState::new();
    for e in &all {
        apply(&mut straight, &policy, e);
    }
    for snapshot_rows in [i64::MAX, 3, 1] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sqlite");
        for chunk in all.chunks(2) {
            let mut store = Store::open(&path).unwrap();
            store.set_score_snapshot_rows(snapshot_rows);
            let mut state = store.load_engine(&policy).unwrap();
            apply_and_commit(&mut store, &mut state, &policy, chunk);
        }
        let mut store = Store::open(&path).unwrap();
        let mut reloaded = store.load_engine(&policy).unwrap();
        assert_eq!(reloaded.map_leads, straight.map_leads, "{snapshot_rows}");
        // After a final snapshot nothing is left to replay, and the rows alone say the same.
        store.save_scores(&mut reloaded).unwrap();
        let saved: String = store
            .conn
            .query_row(
                "SELECT value FROM engine_meta WHERE key = 'scores_saved_through'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(saved, "7", "one row per distinct change");
        let again = Store::open(&path).unwrap().load_engine(&policy).unwrap();
        assert_eq!(again.map_leads, straight.map_leads, "{snapshot_rows}");
        assert!(again.unsaved_scores.is_empty());
    }
}

#[test]
fn a_store_of_schema_2_keeps_its_score_history_and_needs_no_replay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.sqlite");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(MIGRATIONS[1]).unwrap();
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
        conn.execute_batch(
            "INSERT INTO score_history (change_id, map_lead_id, part, new_value, at_ns)
                 VALUES ('x2', 7, 'total', 40.0, 2000), ('x1', 7, 'total', 20.0, 1000);
             INSERT INTO map_leads (id, total, decayed, total_at_ns, total_key, behavior_key, demographic_key, unlinked_recorded)
                 VALUES (7, 40.0, 0.0, 2000, 5, 0, 0, 0);",
        )
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let rows: Vec<(i64, String)> = store
        .conn
        .prepare("SELECT seq, change_id FROM score_history ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, [(1, "x1".to_string()), (2, "x2".to_string())]);
    let state = store.load_engine(&Policy::example()).unwrap();
    assert_eq!(state.map_leads[&7].scores.total, Some(40.0));
    assert_eq!(state.map_leads[&7].scores.versions[0].change, 5);
    assert!(
        state.unsaved_scores.is_empty(),
        "the snapshot covers the old rows"
    );
}

#[test]
fn a_store_of_schema_7_keeps_its_history_rows_and_their_order_and_still_keeps_a_change_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.sqlite");
    {
        let conn = Connection::open(&path).unwrap();
        for migration in &MIGRATIONS[..7] {
            conn.execute_batch(migration).unwrap();
        }
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        conn.pragma_update(None, "user_version", 7).unwrap();
        // A gap in `seq` (the snapshot mark counts by it) and ids that do not follow time.
        conn.execute_batch(
            "INSERT INTO score_history (seq, change_id, map_lead_id, part, new_value, at_ns)
                 VALUES (3, 'b', 7, 'total', 20.0, 1000), (9, 'a', 7, 'total', 40.0, 2000);",
        )
        .unwrap();
    }
    let mut store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let rows = |store: &Store| -> Vec<(i64, String, i64)> {
        store
            .conn
            .prepare("SELECT seq, change_id, at_ns FROM score_history ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(
        rows(&store),
        [(3, "b".to_string(), 1000), (9, "a".to_string(), 2000)]
    );
    // The same change read again (a resumed page) is kept once; a new one follows the last.
    let change = |id: &str, at_ns: i64| {
        Event::Score(ScoreChange {
            map_lead_id: 7,
            change_id: id.into(),
            part: ScorePart::Total,
            new_value: 50.0,
            old_value: None,
            campaign: None,
            at: Timestamp::from_nanosecond(i128::from(at_ns)).unwrap(),
        })
    };
    let mut state = EngineState::new();
    store
        .commit_batch(
            Batch {
                events: &[change("a", 2000), change("c", 3000)],
                decisions: &[],
                cursors: &[],
                seen_at: t(100),
            },
            &mut state,
        )
        .unwrap();
    assert_eq!(
        rows(&store),
        [
            (3, "b".to_string(), 1000),
            (9, "a".to_string(), 2000),
            (10, "c".to_string(), 3000)
        ]
    );
}

#[test]
fn a_write_refused_for_now_stays_pending_until_its_attempts_run_out_and_failed_rows_can_be_requeued()
 {
    let policy = Policy::example();
    let mut store = Store::open_in_memory().unwrap();
    let mut state = EngineState::new();
    let decisions: Vec<Decision> = events()
        .iter()
        .flat_map(|e| apply(&mut state, &policy, e))
        .collect();
    store
        .commit_batch(
            Batch {
                events: &[],
                decisions: &decisions,
                cursors: &[],
                seen_at: t(50),
            },
            &mut state,
        )
        .unwrap();
    let pending = store.outbox_pending(100).unwrap();
    let (locked, refused) = (pending[0].clone(), pending[1].clone());
    let lock = "UNABLE_TO_LOCK_ROW: unable to obtain exclusive access";
    for attempt in 1..=OUTBOX_MAX_ATTEMPTS {
        store
            .outbox_settle(
                &[
                    (locked.clone(), Settlement::Retry(lock.into())),
                    (
                        refused.clone(),
                        Settlement::Failed("INACTIVE_OWNER_OR_USER: x".into()),
                    ),
                ],
                t(60 + attempt),
            )
            .unwrap();
        let still = store.outbox_pending(100).unwrap();
        let waiting = still.iter().find(|r| r.key == locked.key);
        if attempt < OUTBOX_MAX_ATTEMPTS {
            let row = waiting.expect("a locked row is sent again");
            assert_eq!(row.attempts, attempt);
            assert_eq!(row.last_error.as_deref(), Some(lock));
        } else {
            assert!(
                waiting.is_none(),
                "failed after {OUTBOX_MAX_ATTEMPTS} attempts"
            );
        }
        assert!(
            still.iter().all(|r| r.key != refused.key),
            "refused for good"
        );
    }
    assert_eq!(store.summary().unwrap().outbox_failed, 2);
    // The owner is active again: requeue the rows that failed for that reason only.
    assert_eq!(store.outbox_requeue(Some("NO_SUCH_ERROR")).unwrap(), 0);
    assert_eq!(store.outbox_requeue(Some("INACTIVE_OWNER")).unwrap(), 1);
    let back = store.outbox_pending(100).unwrap();
    let row = back.iter().find(|r| r.key == refused.key).unwrap();
    assert_eq!(row.attempts, 0);
    assert_eq!(store.outbox_requeue(None).unwrap(), 1);
    assert_eq!(store.summary().unwrap().outbox_failed, 0);
}

/// Holds the writer lock of the store at `path` as another process would, without opening it.
fn hold_lock(path: &Path) -> WriterLock {
    let real = open::real_path(path).unwrap();
    WriterLock::acquire(&open::lock_path(&real), "other", &real).unwrap()
}

/// Issue 11, point 4: two first runs on a fresh store. The second must stop at the writer lock,
/// not at "table cursors already exists" or "database is locked" from creating the tables
/// the first is creating.
#[test]
fn a_second_first_open_of_a_fresh_store_stops_at_the_writer_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.sqlite");
    let held = hold_lock(&path);
    let err = Store::open(&path).err().unwrap();
    assert!(
        matches!(&err, StoreError::Busy { holder: Some(pid), .. } if *pid == std::process::id()),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("is being written by another mqlsync process (pid "),
        "{err}"
    );
    assert!(!path.exists(), "nothing created before the lock");
    drop(held);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
}

/// The same race with two real opens on two threads, many times over: every open either
/// succeeds or is refused at the lock, and the store ends up whole.
#[test]
fn concurrent_first_opens_give_one_store_or_the_lock_message() {
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("race-{round}.sqlite"));
        let results: Vec<Result<(), String>> = std::thread::scope(|s| {
            let opens: Vec<_> = (0..2)
                .map(|_| s.spawn(|| Store::open(&path).map(drop).map_err(|e| e.to_string())))
                .collect();
            opens.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &results {
            if let Err(e) = r {
                assert!(
                    e.contains("is being written by another mqlsync process"),
                    "{e}"
                );
            }
        }
        assert!(results.iter().any(Result::is_ok), "{results:?}");
        assert_eq!(
            Store::open(&path).unwrap().schema_version().unwrap(),
            SCHEMA_VERSION
        );
    }
}

/// Issue 11, point 12: the lock is the store file's, not the path's. A run reaching the store
/// through a symlink to the file, a symlink to its folder, or a path with `..` in it is the
/// same writer as one using the real path.
#[cfg(unix)]
#[test]
fn every_path_to_one_store_takes_one_writer_lock() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let real = data.join("s.sqlite");
    let first = Store::open(&real).unwrap();
    let _writer = first.lock_writer().unwrap();
    std::os::unix::fs::symlink(&real, dir.path().join("link.sqlite")).unwrap();
    std::os::unix::fs::symlink("data", dir.path().join("alias")).unwrap();
    for other in [
        dir.path().join("link.sqlite"),
        dir.path().join("alias/s.sqlite"),
        dir.path().join("alias/../data/./s.sqlite"),
    ] {
        let err = Store::open(&other).err().unwrap();
        assert!(
            matches!(err, StoreError::Busy { .. }),
            "{}: {err}",
            other.display()
        );
    }
    // A symlink to a store not created yet leads to where SQLite will create it.
    std::os::unix::fs::symlink("data/later.sqlite", dir.path().join("dangling.sqlite")).unwrap();
    assert_eq!(
        open::real_path(&dir.path().join("dangling.sqlite")).unwrap(),
        std::fs::canonicalize(&data).unwrap().join("later.sqlite")
    );
}

/// `status` and `explain` read a store while a run holds it, and never write it.
#[test]
fn a_reader_opens_a_store_a_writer_holds_and_writes_nothing() {
    let policy = Policy::example();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.sqlite");
    let mut store = Store::open(&path).unwrap();
    let mut state = EngineState::new();
    apply_and_commit(&mut store, &mut state, &policy, &events());
    let _writer = store.lock_writer().unwrap();
    let reader = Store::open_existing(&path).unwrap();
    assert!(reader.summary().unwrap().outbox_pending > 0);
    assert!(!reader.load_engine(&policy).unwrap().persons.is_empty());
    assert!(reader.conn.is_readonly(rusqlite::MAIN_DB).unwrap());
}

/// Issue 11, point 5: `status` names the records of pending and failed writes, at most
/// [`SUMMARY_ROWS`] of each, and its JSON holds a JSON cursor as an object.
#[test]
fn the_summary_lists_the_first_pending_and_failed_writes_and_cursors_as_values() {
    let policy = Policy::example();
    let mut store = Store::open_in_memory().unwrap();
    let mut state = EngineState::new();
    let all = events_of(15);
    let decisions: Vec<Decision> = all
        .iter()
        .flat_map(|e| apply(&mut state, &policy, e))
        .collect();
    let modstamp = r#"{"systemmodstamp":"2026-03-02T10:00:00Z","id":"00Q1","recent":[]}"#;
    store
        .commit_batch(
            Batch {
                events: &all,
                decisions: &decisions,
                cursors: &[
                    ("crm.Lead".to_string(), modstamp.to_string()),
                    ("simulate:h.csv".to_string(), "20".to_string()),
                ],
                seen_at: t(50),
            },
            &mut state,
        )
        .unwrap();
    let pending = store.outbox_pending(1_000).unwrap();
    assert!(pending.len() > SUMMARY_ROWS + 2, "{}", pending.len());
    store
        .outbox_settle(
            &[(
                pending[0].clone(),
                Settlement::Failed("INACTIVE_OWNER_OR_USER: x".into()),
            )],
            t(60),
        )
        .unwrap();
    let summary = store.summary().unwrap();
    assert_eq!(summary.pending_writes.len(), SUMMARY_ROWS);
    assert_eq!(summary.outbox_pending as usize, pending.len() - 1);
    assert!(
        summary
            .pending_writes
            .iter()
            .all(|w| w.key != pending[0].key)
    );
    assert_eq!(summary.failed_writes.len(), 1);
    assert_eq!(summary.failed_writes[0].key, pending[0].key);
    assert_eq!(
        summary.failed_writes[0].last_error.as_deref(),
        Some("INACTIVE_OWNER_OR_USER: x")
    );
    let json = serde_json::to_value(&summary).unwrap();
    assert_eq!(
        json["cursors"][0],
        serde_json::json!({
            "name": "crm.Lead",
            "value": {"systemmodstamp": "2026-03-02T10:00:00Z", "id": "00Q1", "recent": []},
            "saved_at": "2026-03-02T10:50:00Z",
        })
    );
    // A cursor that is not a JSON object or list stays the text it was saved as.
    assert_eq!(json["cursors"][1]["value"], "20");
    assert_eq!(
        json["pending_writes"].as_array().unwrap().len(),
        SUMMARY_ROWS
    );
}

/// Issue 11, point 4: a damaged store is one line naming it and a recovery that works: put a
/// copy back, with the damaged file's -wal and -shm moved aside too.
#[test]
fn a_damaged_store_is_one_line_and_a_backup_put_back_opens() {
    let policy = Policy::example();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.sqlite");
    let mut store = Store::open(&path).unwrap();
    let mut state = EngineState::new();
    apply_and_commit(&mut store, &mut state, &policy, &events());
    let cycles = store.cycles().unwrap();
    drop(store);
    // The backup the README describes: a copy taken while no run is going.
    let backup = dir.path().join("backup.sqlite");
    std::fs::copy(&path, &backup).unwrap();
    // Later work, then damage: a table's pages overwritten.
    let mut store = Store::open(&path).unwrap();
    apply_and_commit(&mut store, &mut state, &policy, &events_of(8)[1..]);
    drop(store);
    let root: i64 = Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = 'cycles'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    {
        use std::io::{Seek as _, SeekFrom, Write as _};
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start((root as u64 - 1) * 16_384 + 8))
            .unwrap();
        f.write_all(&[0xff; 4]).unwrap();
    }
    for err in [
        Store::open(&path).err().unwrap(),
        Store::open_existing(&path).err().unwrap(),
    ] {
        let said = err.to_string();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{said}");
        assert!(!said.contains('\n'), "{said}");
        assert!(
            said.starts_with(&format!(
                "store {} is damaged (SQLite integrity check: ",
                path.display()
            )),
            "{said}"
        );
        assert!(
            said.contains("copy your last backup of the store to"),
            "{said}"
        );
    }
    // The recovery the message gives.
    for side in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{side}", path.display()));
        if from.exists() {
            std::fs::rename(&from, format!("{}.damaged", from.display())).unwrap();
        }
    }
    std::fs::copy(&backup, &path).unwrap();
    let store = Store::open(&path).unwrap();
    assert_eq!(store.cycles().unwrap(), cycles);
}

/// What an error of the OS means for the user, for the cases root cannot make with chmod (the
/// CLI tests make them as another user where they can).
#[test]
fn access_errors_name_the_place_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("new.sqlite");
    let existing = dir.path().join("old.sqlite");
    std::fs::write(&existing, "").unwrap();
    let rofs = std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem);
    let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
    let said = open::io_failure("new.sqlite", &missing, &rofs, "create its folder").to_string();
    assert_eq!(
        said,
        "the store at new.sqlite is on a read-only file system; mount it read-write, or set `store` / MQLSYNC_STORE to a writable path"
    );
    let said = open::io_failure("new.sqlite", &missing, &denied, "create its folder").to_string();
    assert!(
        said.starts_with(
            "permission denied: cannot create the store at new.sqlite (create its folder: "
        ) && said.ends_with("; make the directory writable or set `store` / MQLSYNC_STORE"),
        "{said}"
    );
    let said =
        open::io_failure("old.sqlite", &existing, &denied, "create its lock file").to_string();
    assert!(
        said.starts_with(&format!(
            "the store at old.sqlite is in a read-only directory ({}): ",
            dir.path().display()
        )),
        "{said}"
    );
}

/// The report rows of a store: every column, in external-id order.
fn cycle_facts_rows(store: &Store) -> Vec<Vec<rusqlite::types::Value>> {
    let mut stmt = store
        .conn
        .prepare("SELECT * FROM cycle_facts ORDER BY external_id")
        .unwrap();
    let columns = stmt.column_count();
    stmt.query_map([], |r| (0..columns).map(|i| r.get(i)).collect())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn each_saved_cycle_has_its_report_row_and_an_upgraded_store_gets_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.sqlite");
    let policy = Policy::example();
    {
        let mut store = Store::open(&path).unwrap();
        let mut state = EngineState::new();
        let events = events();
        let decisions: Vec<Decision> = events
            .iter()
            .flat_map(|e| apply(&mut state, &policy, e))
            .collect();
        store
            .commit_batch(
                Batch {
                    events: &events,
                    decisions: &decisions,
                    cursors: &[],
                    seen_at: t(100),
                },
                &mut state,
            )
            .unwrap();
    }
    let written = cycle_facts_rows(&Store::open(&path).unwrap());
    assert_eq!(written.len(), 6, "one row per cycle");
    let region = |row: &[rusqlite::types::Value]| row[9].clone();
    assert_eq!(
        region(&written[0]),
        rusqlite::types::Value::Text(r#"{"region":"NA"}"#.into()),
        "the person's attributes"
    );
    // A store of schema 6 (before the report rows): upgraded, it has the same rows.
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP TABLE cycle_facts; DROP INDEX opportunities_by_account; DROP TABLE score_blocks;
             PRAGMA user_version = 6;",
        )
        .unwrap();
    }
    let upgraded = Store::open(&path).unwrap();
    assert_eq!(upgraded.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(cycle_facts_rows(&upgraded), written);
}

#[test]
fn a_replay_checkpoints_beside_the_writer_and_puts_the_settings_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let mut store = Store::open(&path).unwrap();
    let pragma = |store: &Store, name: &str| -> i64 {
        store
            .conn
            .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .unwrap()
    };
    let file_len = || std::fs::metadata(&path).unwrap().len();
    store.replaying(true).unwrap();
    assert_eq!(pragma(&store, "cache_size"), -REPLAY_CACHE_KIB);
    assert_eq!(
        pragma(&store, "wal_autocheckpoint"),
        REPLAY_CHECKPOINT_PAGES
    );
    let before = file_len();
    let changes: Vec<Event> = (0..5_000)
        .map(|i| {
            Event::Score(ScoreChange {
                map_lead_id: i % 300,
                change_id: format!("c{i}"),
                part: ScorePart::Total,
                new_value: f64::from(i as i32),
                old_value: None,
                campaign: None,
                at: t(i),
            })
        })
        .collect();
    let mut state = EngineState::new();
    store
        .commit_batch(
            Batch {
                events: &changes,
                decisions: &[],
                cursors: &[],
                seen_at: t(100),
            },
            &mut state,
        )
        .unwrap();
    // Waits for the checkpoint the commit started: the history is in the database file, far
    // below the writer's own 1 GiB mark.
    store.replaying(false).unwrap();
    assert!(
        file_len() > before + 100_000,
        "{before} -> {}: the log was copied back",
        file_len()
    );
    assert_eq!(pragma(&store, "cache_size"), -CACHE_KIB);
    assert_eq!(pragma(&store, "wal_autocheckpoint"), CHECKPOINT_PAGES);
    assert_eq!(pragma(&store, "mmap_size"), 0);
}

#[tokio::test]
async fn the_checkpointer_takes_checkpoints_off_the_writers_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("c.sqlite")).unwrap();
    let mut checkpointer = store
        .checkpoint_elsewhere(std::time::Duration::from_secs(1))
        .unwrap();
    let autocheckpoint: i64 = store
        .conn
        .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        autocheckpoint, 0,
        "the writer's commits no longer checkpoint"
    );
    store
        .conn
        .execute_batch("CREATE TABLE scratch (b BLOB)")
        .unwrap();
    let commit = || {
        store
            .conn
            .execute("INSERT INTO scratch VALUES (zeroblob(20000))", [])
            .unwrap();
    };
    for _ in 0..50 {
        commit();
    }
    let first = checkpointer.checkpoint_now().unwrap().unwrap();
    assert!(first.log_frames >= 50, "{first:?}");
    assert_eq!(
        first.copied_frames, first.log_frames,
        "the whole log copied"
    );
    // The log starts again from its beginning after a whole checkpoint: it holds only what
    // was written since.
    commit();
    let second = checkpointer.checkpoint_now().unwrap().unwrap();
    assert!(second.log_frames < 10, "{second:?}");

    // After a step: one starts when the store was written and a second has passed since
    // the last, never two at once.
    let t0 = tokio::time::Instant::now();
    assert!(
        checkpointer.after_step(&store, t0),
        "written since it was made"
    );
    checkpointer.finish().await;
    assert!(
        !checkpointer.after_step(&store, t0 + std::time::Duration::from_secs(5)),
        "nothing written since"
    );
    commit();
    assert!(
        !checkpointer.after_step(&store, t0 + std::time::Duration::from_millis(500)),
        "within the second"
    );
    assert!(checkpointer.after_step(&store, t0 + std::time::Duration::from_secs(2)));
    checkpointer.finish().await;
    let in_memory = Store::open_in_memory().unwrap();
    let mut none = in_memory
        .checkpoint_elsewhere(std::time::Duration::from_secs(1))
        .unwrap();
    assert!(none.checkpoint_now().is_none());
    in_memory.conn.execute_batch("CREATE TABLE t (x)").unwrap();
    assert!(!none.after_step(&in_memory, t0));
}

/// Every change the blocks hold, in order: (lead, id, instant, new value, old value, part).
fn packed_changes(store: &Store) -> Vec<(i64, String, i64, f64, Option<f64>, ScorePart)> {
    let mut all = Vec::new();
    store
        .for_each_packed_change((i64::MIN, i64::MAX), |c| {
            all.push((
                c.map_lead_id,
                c.change_id.to_string(),
                c.at_ns,
                c.new_value,
                c.old_value,
                c.part,
            ))
        })
        .unwrap();
    all
}

/// The history's rows up to `seq` `through`, as [`packed_changes`] gives them.
fn history_rows(
    store: &Store,
    through: i64,
) -> Vec<(i64, String, i64, f64, Option<f64>, ScorePart)> {
    store
        .conn
        .prepare(
            "SELECT map_lead_id, change_id, at_ns, new_value, old_value, part FROM score_history
             WHERE seq <= ?1 ORDER BY seq",
        )
        .unwrap()
        .query_map([through], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                part_of(&r.get::<_, String>(5)?).unwrap(),
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn the_commit_that_completes_a_block_of_score_history_packs_it_and_the_rest_waits_as_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("b.sqlite")).unwrap();
    store.set_history_block_changes(3);
    let mut state = EngineState::new();
    let parts = [
        ScorePart::Total,
        ScorePart::Behavior,
        ScorePart::Demographic,
    ];
    let change = |k: i64| {
        Event::Score(ScoreChange {
            map_lead_id: 7 + k % 2,
            change_id: format!("{}{k}", if k % 5 == 0 { "current:" } else { "" }),
            part: parts[k as usize % 3],
            new_value: k as f64 * 1.5,
            old_value: (k % 2 == 0).then_some(k as f64),
            campaign: None,
            at: t(k),
        })
    };
    let mut packed = Vec::new();
    // Batches of two changes, one of them seen again: 1..=13 gives 13 rows.
    for k in (1..=13).step_by(2) {
        let events: Vec<Event> = [k, k + 1, k]
            .into_iter()
            .filter(|k| *k <= 13)
            .map(change)
            .collect();
        store
            .commit_batch(
                Batch {
                    events: &events,
                    decisions: &[],
                    cursors: &[],
                    seen_at: t(k),
                },
                &mut state,
            )
            .unwrap();
        let rows = k.min(12) + 1;
        let through = store.score_history_packed_through().unwrap();
        assert_eq!(through, rows / 3 * 3, "after change {k}");
        packed = packed_changes(&store);
        assert_eq!(packed, history_rows(&store, through), "after change {k}");
    }
    assert_eq!(packed.len(), 12, "the 13th waits for its block");
    assert!(packed.iter().any(|c| c.4.is_some()) && packed.iter().any(|c| c.4.is_none()));
}

#[test]
fn a_store_of_schema_8_gets_its_score_history_packed_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.sqlite");
    let rows = 2 * blocks::BLOCK_CHANGES + 100;
    {
        let conn = Connection::open(&path).unwrap();
        for migration in &MIGRATIONS[..8] {
            conn.execute_batch(migration).unwrap();
        }
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        conn.pragma_update(None, "user_version", 8).unwrap();
        // Every third `seq` left out (a store migrated before keeps its gaps).
        conn.execute(
            "WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < ?1)
             INSERT INTO score_history (seq, change_id, map_lead_id, part, new_value, old_value, campaign_id, at_ns)
             SELECT k * 3, 'a' || k, k % 97, 'behavior', k * 0.5, CASE WHEN k % 2 = 0 THEN k END, 'c', k * 1000
             FROM n",
            [rows as i64],
        )
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let through = store.score_history_packed_through().unwrap();
    assert_eq!(through, 2 * blocks::BLOCK_CHANGES as i64 * 3);
    let packed = packed_changes(&store);
    assert_eq!(packed.len(), 2 * blocks::BLOCK_CHANGES);
    assert_eq!(packed, history_rows(&store, through));
}
