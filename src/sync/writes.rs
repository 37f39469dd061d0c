//! Outbox rows -> CRM writes. Pure: groups the pending rows by the call that writes them
//! (MQL records upserted by external id, lead and contact stamps and threshold records' knob
//! feedback updated by id, tasks created
//! for notifications, each task carrying its outbox key so that it is looked up before it is
//! created), each record tagged with the outbox key it settles. The writer sends
//! each group in chunks of the vendor's collection size and settles every row with its own
//! result, so one failing record never fails the others.
//!
//! An MQL record's first write is completed here ([`plan_at`]): the cycle is marked written at
//! the write instant with the engine's own rule ([`mark_written`]), so the record carries the
//! SLA due that starts with it, and the writer can tell the engine which cycles it wrote.

use std::collections::btree_map::{BTreeMap, Entry};

use jiff::Timestamp;
use jiff::civil::Date;

use serde_json::{Map, Value, json};

use crate::engine::model::{Action, AlertChannel, CrmKind, CrmRef, Cycle, Stamps};
use crate::engine::{Policy, mark_written};
use crate::mapping::Mapping;
use crate::store::OutboxRow;

use super::records::{knob_feedback_record, mql_record, stamps_record};
use crate::report::feedback::KnobFeedback;

/// One record to write and the outbox row it settles.
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    pub row: OutboxRow,
    pub record: Map<String, Value>,
}

/// The writes of a set of outbox rows, by call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WritePlan {
    /// Upserts of the MQL object by its external id field.
    pub mql_upserts: Vec<Write>,
    /// Updates of leads by id.
    pub lead_updates: Vec<Write>,
    /// Updates of contacts by id.
    pub contact_updates: Vec<Write>,
    /// Updates of threshold records by id: the knob's feedback beside the knob.
    pub threshold_updates: Vec<Write>,
    /// Tasks to create (new-MQL alerts for teams that want them), each with its outbox key
    /// in the mapping's `task_alert_key` field.
    pub task_creates: Vec<Write>,
    /// Rows settled as failed with this message, never sent: payloads that cannot be read (a
    /// store edited by hand, or written by a newer mqlsync) and e-mail alerts.
    pub unsent: Vec<(OutboxRow, String)>,
    /// Alerts that no longer say anything (see [`Alert`]): settled as done, never sent.
    pub superseded: Vec<OutboxRow>,
    /// The MQL records among `mql_upserts` written for the first time, by outbox key: the
    /// cycle as that write leaves it (written at the write instant, its SLA started there if
    /// it was waiting for it). Once the CRM accepts one, the writer keeps it as the row's
    /// payload and reports the cycle written to the engine.
    pub first_writes: BTreeMap<String, Cycle>,
}

impl WritePlan {
    pub fn is_empty(&self) -> bool {
        self.mql_upserts.is_empty()
            && self.lead_updates.is_empty()
            && self.contact_updates.is_empty()
            && self.threshold_updates.is_empty()
            && self.task_creates.is_empty()
    }

    /// The number of records to send.
    pub fn len(&self) -> usize {
        self.mql_upserts.len()
            + self.lead_updates.len()
            + self.contact_updates.len()
            + self.threshold_updates.len()
            + self.task_creates.len()
    }
}

/// The number of write calls a plan needs with collections of `chunk` records: the minimum
/// (alert tasks add their look-ups, and only the tasks not found are created).
pub fn minimum_calls(plan: &WritePlan, chunk: usize) -> usize {
    [
        &plan.mql_upserts,
        &plan.lead_updates,
        &plan.contact_updates,
        &plan.threshold_updates,
        &plan.task_creates,
    ]
    .iter()
    .map(|w| w.len().div_ceil(chunk))
    .sum()
}

/// A new-MQL alert as the writer checks it before sending.
pub struct Alert<'a> {
    /// The lead or contact's CRM id.
    pub crm_id: &'a str,
    /// The MQL cycle's external id.
    pub external_id: &'a str,
    /// The rep it tells.
    pub owner_id: &'a str,
}

/// What the writer knows of an alert's cycle when it is about to send it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertState {
    /// The cycle waits for this rep: send the alert, due when the rep must accept (the SLA
    /// deadline's date in the team's time zone).
    Current { due: Option<Date> },
    /// The cycle moved on (another owner, or already worked): the alert says nothing now.
    Superseded,
}

/// Plans the writes of pending outbox rows. `state` says whether an alert still says
/// something when it is about to be sent (its cycle still waits for that rep): an alert for
/// a rep the cycle has since left, or for a cycle already worked, is superseded.
pub fn plan(
    m: &Mapping,
    rows: Vec<OutboxRow>,
    state: impl Fn(&Alert<'_>) -> AlertState,
) -> WritePlan {
    plan_with(m, rows, state, None)
}

/// [`plan`] for writes sent at `at`: the MQL record of a cycle not yet written is completed
/// as the engine will see it once the CRM accepts it (see [`WritePlan::first_writes`]), so
/// an MQL is written once, already carrying its SLA due.
pub fn plan_at(
    m: &Mapping,
    rows: Vec<OutboxRow>,
    state: impl Fn(&Alert<'_>) -> AlertState,
    policy: &Policy,
    at: Timestamp,
) -> WritePlan {
    plan_with(m, rows, state, Some((policy, at)))
}

fn plan_with(
    m: &Mapping,
    rows: Vec<OutboxRow>,
    state: impl Fn(&Alert<'_>) -> AlertState,
    written_at: Option<(&Policy, Timestamp)>,
) -> WritePlan {
    let mut plan = WritePlan::default();
    let mut latest: BTreeMap<(String, String), Write> = BTreeMap::new();
    for row in rows {
        match row.kind.as_str() {
            "cycle" => match serde_json::from_str::<Cycle>(&row.payload) {
                Ok(mut cycle) => {
                    if let Some((policy, at)) = written_at
                        && cycle.written_at.is_none()
                    {
                        mark_written(policy, &mut cycle, at);
                        plan.first_writes.insert(row.key.clone(), cycle.clone());
                    }
                    let record = mql_record(m, &cycle);
                    plan.mql_upserts.push(Write { row, record });
                }
                Err(e) => plan.unsent.push((row, format!("cycle payload: {e}"))),
            },
            "stamps" => match serde_json::from_str::<(CrmRef, Stamps)>(&row.payload) {
                Ok((crm, stamps)) => {
                    let record = stamps_record(m, &crm, &stamps);
                    let write = Write { row, record };
                    match crm.kind {
                        CrmKind::Lead => plan.lead_updates.push(write),
                        CrmKind::Contact => plan.contact_updates.push(write),
                    }
                }
                Err(e) => plan.unsent.push((row, format!("stamps payload: {e}"))),
            },
            "knob_feedback" => match serde_json::from_str::<KnobFeedback>(&row.payload) {
                Ok(feedback) => {
                    let record = knob_feedback_record(m, &feedback);
                    plan.threshold_updates.push(Write { row, record });
                }
                Err(e) => plan
                    .unsent
                    .push((row, format!("knob feedback payload: {e}"))),
            },
            "notify" => match serde_json::from_str::<Action>(&row.payload) {
                Ok(Action::Notify {
                    owner_id,
                    external_id,
                    crm,
                    channel: AlertChannel::Task,
                }) => {
                    let alert = Alert {
                        crm_id: &crm.id,
                        external_id: &external_id,
                        owner_id: &owner_id,
                    };
                    if let AlertState::Current { due } = state(&alert) {
                        let record = task(m, &row.key, &owner_id, &external_id, &crm, due);
                        // A cycle that came back to the same rep alerts once: the latest.
                        let write = Write { row, record };
                        match latest.entry((external_id, owner_id)) {
                            Entry::Vacant(v) => {
                                v.insert(write);
                            }
                            Entry::Occupied(mut o) => {
                                let older = if alert_order(&o.get().row.key)
                                    < alert_order(&write.row.key)
                                {
                                    o.insert(write)
                                } else {
                                    write
                                };
                                plan.superseded.push(older.row);
                            }
                        }
                    } else {
                        plan.superseded.push(row);
                    }
                }
                Ok(Action::Notify { channel, .. }) => {
                    let message = format!(
                        "{channel:?} alerts are not sent by mqlsync: use alert = \"task\", or a CRM flow on new MQL records"
                    );
                    plan.unsent.push((row, message));
                }
                Ok(_) | Err(_) => plan
                    .unsent
                    .push((row, "notify payload is not a notification".into())),
            },
            other => {
                let message = format!("unknown outbox kind {other:?}");
                plan.unsent.push((row, message));
            }
        }
    }
    plan.task_creates.extend(latest.into_values());
    plan
}

/// The order of two alerts of one cycle and rep: by the instant their outbox key ends with
/// (`Notify:{external id}:{owner}:{instant}`), then by the key.
fn alert_order(key: &str) -> (Option<jiff::Timestamp>, &str) {
    let instant = key.splitn(4, ':').nth(3).and_then(|t| t.parse().ok());
    (instant, key)
}

/// A CRM task telling the owner about a new MQL, due when it must be accepted, marked with
/// the alert's outbox key.
pub(crate) fn task(
    m: &Mapping,
    key: &str,
    owner_id: &str,
    external_id: &str,
    crm: &CrmRef,
    due: Option<Date>,
) -> Map<String, Value> {
    let mut r = Map::new();
    r.insert(m.crm.task_alert_key.clone(), json!(key));
    if let Some(due) = due {
        r.insert("ActivityDate".into(), json!(due.to_string()));
    }
    r.insert("OwnerId".into(), json!(owner_id));
    r.insert("WhoId".into(), json!(crm.id));
    r.insert(
        "Subject".into(),
        json!(format!("New MQL {external_id}: accept or reject it")),
    );
    r.insert("Status".into(), json!("Not Started"));
    r.insert("Description".into(), json!(format!("mqlsync opened MQL cycle {external_id}. Set it to Working to accept, or Rejected with a reason.")));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping;

    fn row(key: &str, kind: &str, payload: String) -> OutboxRow {
        OutboxRow {
            key: key.into(),
            kind: kind.into(),
            payload,
            attempts: 0,
            last_error: None,
        }
    }

    #[test]
    fn rows_are_grouped_by_call_and_keep_their_keys() {
        let m = mapping::load(None).unwrap().mapping;
        let crm = CrmRef {
            kind: CrmKind::Contact,
            id: "003A".into(),
        };
        let stamps = Stamps {
            status: Some("Marketing Qualified".into()),
            mql_count: 1,
            ..Stamps::default()
        };
        let notify = Action::Notify {
            owner_id: "005A".into(),
            external_id: "003A-1".into(),
            crm: crm.clone(),
            channel: AlertChannel::Task,
        };
        let rows = vec![
            row(
                "Contact:003A",
                "stamps",
                serde_json::to_string(&(crm.clone(), stamps)).unwrap(),
            ),
            row(
                "Notify:003A-1:005A:t",
                "notify",
                serde_json::to_string(&notify).unwrap(),
            ),
            row(
                "Notify:003A-1:005B:t",
                "notify",
                serde_json::to_string(&Action::Notify {
                    owner_id: "005B".into(),
                    external_id: "003A-1".into(),
                    crm: crm.clone(),
                    channel: AlertChannel::Email,
                })
                .unwrap(),
            ),
            row("MQL:bad", "cycle", "{not json".into()),
        ];
        let due = Some(jiff::civil::date(2026, 11, 3));
        let p = plan(&m, rows.clone(), |_| AlertState::Current { due });
        assert_eq!(p.contact_updates.len(), 1);
        assert_eq!(p.contact_updates[0].row.key, "Contact:003A");
        assert_eq!(
            p.contact_updates[0].record["Contact_Status__c"],
            "Marketing Qualified"
        );
        assert_eq!(p.task_creates[0].record["WhoId"], "003A");
        assert_eq!(
            p.task_creates[0].record["MQL_Alert_Key__c"],
            "Notify:003A-1:005A:t"
        );
        assert_eq!(p.task_creates[0].record["ActivityDate"], "2026-11-03");
        assert_eq!(p.unsent.len(), 2, "{:?}", p.unsent);
        assert_eq!(p.unsent[0].0.key, "Notify:003A-1:005B:t");
        assert!(
            p.unsent[0].1.contains("alert = \"task\""),
            "{}",
            p.unsent[0].1
        );
        assert_eq!(p.len(), 2);
        // The same alert once its cycle no longer waits for 005A: not sent.
        let p = plan(&m, rows, |a| {
            if a.owner_id == "005A" {
                AlertState::Superseded
            } else {
                AlertState::Current { due: None }
            }
        });
        assert!(p.task_creates.is_empty());
        assert_eq!(p.superseded[0].key, "Notify:003A-1:005A:t");
    }

    #[test]
    fn a_cycle_that_came_back_to_the_same_rep_alerts_once_with_the_latest_alert() {
        let m = mapping::load(None).unwrap().mapping;
        let crm = CrmRef {
            kind: CrmKind::Lead,
            id: "00QA".into(),
        };
        let alert = |owner: &str, at: &str| {
            let notify = Action::Notify {
                owner_id: owner.into(),
                external_id: "00QA-1".into(),
                crm: crm.clone(),
                channel: AlertChannel::Task,
            };
            let key = format!("Notify:00QA-1:{owner}:{at}");
            row(&key, "notify", serde_json::to_string(&notify).unwrap())
        };
        // A, then B, then A again (round-robin over a pool of two); the rows come in any order.
        let rows = vec![
            alert("005A", "2026-11-03T09:00:00Z"),
            alert("005A", "2026-11-03T09:00:00.5Z"),
            alert("005A", "2026-11-02T09:00:00Z"),
            alert("005B", "2026-11-02T17:00:00Z"),
        ];
        let p = plan(&m, rows, |a| {
            if a.owner_id == "005A" {
                AlertState::Current { due: None }
            } else {
                AlertState::Superseded
            }
        });
        let keys: Vec<&str> = p.task_creates.iter().map(|w| w.row.key.as_str()).collect();
        assert_eq!(keys, ["Notify:00QA-1:005A:2026-11-03T09:00:00.5Z"]);
        let mut superseded: Vec<&str> = p.superseded.iter().map(|r| r.key.as_str()).collect();
        superseded.sort();
        assert_eq!(
            superseded,
            [
                "Notify:00QA-1:005A:2026-11-02T09:00:00Z",
                "Notify:00QA-1:005A:2026-11-03T09:00:00Z",
                "Notify:00QA-1:005B:2026-11-02T17:00:00Z"
            ]
        );
    }

    /// An Open EMEA cycle of an MQL on 1 October, as the engine decides it in a run: its
    /// record not written yet, so no SLA.
    fn unwritten(crm_id: &str) -> Cycle {
        Cycle {
            external_id: format!("{crm_id}-1"),
            crm: CrmRef {
                kind: CrmKind::Lead,
                id: crm_id.into(),
            },
            map_lead_id: Some(1),
            number: 1,
            status: crate::engine::CycleStatus::Open,
            score: 85.0,
            threshold: 80.0,
            threshold_id: None,
            segment: "region=EMEA".into(),
            campaign: None,
            owner_at_mql: Some("005A".into()),
            owner_id: Some("005A".into()),
            team: Some("SDR EMEA".into()),
            mql_at: "2026-10-01T10:00:00Z".parse().unwrap(),
            sal_at: None,
            closed_at: None,
            rejection_reason: None,
            outcome: None,
            sla_due_at: None,
            reassign_at: None,
            overdue: false,
            reassignments: 0,
            backfilled: false,
            written_at: None,
            hand_raise: None,
            account_id: None,
            note: None,
            crm_modified_at: None,
            crm_versions: Box::default(),
        }
    }

    #[test]
    fn an_mql_records_first_write_carries_the_sla_that_starts_with_it() {
        let loaded = mapping::load(None).unwrap();
        let (m, policy) = (&loaded.mapping, &loaded.policy);
        // Monday 2 November, 12:00 UTC: 13:00 in Berlin, where SDR EMEA works 9 to 5.
        let at: Timestamp = "2026-11-02T12:00:00Z".parse().unwrap();
        let new = unwritten("00QA");
        let mut seen = unwritten("00QB");
        seen.written_at = Some("2026-10-01T10:05:00Z".parse().unwrap());
        seen.sla_due_at = Some("2026-10-01T14:05:00Z".parse().unwrap());
        let mut closed = unwritten("00QC");
        closed.status = crate::engine::CycleStatus::Converted;
        let rows: Vec<OutboxRow> = [&new, &seen, &closed]
            .iter()
            .map(|c| {
                let key = format!("MQL:{}", c.external_id);
                row(&key, "cycle", serde_json::to_string(c).unwrap())
            })
            .collect();
        let p = plan_at(m, rows.clone(), |_| AlertState::Superseded, policy, at);
        let sla = |w: &Write| w.record["SLA_Due__c"].clone();
        // Four business hours from the write: 17:00 in Berlin.
        assert_eq!(
            sla(&p.mql_upserts[0]),
            json!("2026-11-02T16:00:00.000+0000")
        );
        assert_eq!(p.mql_upserts[0].record["Overdue__c"], json!(false));
        assert_eq!(
            p.mql_upserts[0].record["MQL_Date__c"],
            json!("2026-10-01T10:00:00.000+0000")
        );
        assert_eq!(
            sla(&p.mql_upserts[1]),
            json!("2026-10-01T14:05:00.000+0000")
        );
        assert_eq!(sla(&p.mql_upserts[2]), Value::Null);
        let first: Vec<&str> = p.first_writes.keys().map(String::as_str).collect();
        assert_eq!(first, ["MQL:00QA-1", "MQL:00QC-1"]);
        let kept = &p.first_writes["MQL:00QA-1"];
        assert_eq!(kept.written_at, Some(at));
        assert_eq!(
            kept.reassign_at,
            Some("2026-11-03T12:00:00Z".parse().unwrap())
        );
        assert_eq!(p.first_writes["MQL:00QC-1"].sla_due_at, None);
        // Without a write instant (a dry run's "what was written"), rows are taken as they are.
        let p = plan(m, rows, |_| AlertState::Superseded);
        assert_eq!(sla(&p.mql_upserts[0]), Value::Null);
        assert!(p.first_writes.is_empty());
    }

    #[test]
    fn the_minimum_is_one_call_per_200_records_per_kind() {
        let m = mapping::load(None).unwrap().mapping;
        let stamps = Stamps::default();
        let rows: Vec<OutboxRow> = (0..401)
            .map(|i| {
                let crm = CrmRef {
                    kind: CrmKind::Lead,
                    id: format!("00Q{i}").into(),
                };
                row(
                    &format!("Lead:00Q{i}"),
                    "stamps",
                    serde_json::to_string(&(crm, stamps.clone())).unwrap(),
                )
            })
            .collect();
        let p = plan(&m, rows, |_| AlertState::Current { due: None });
        assert_eq!(minimum_calls(&p, 200), 3);
    }
}
