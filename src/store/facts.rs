//! The reports' copy of each cycle (`cycle_facts`, migration 7): the columns `report` groups,
//! filters and counts by, written beside the cycle's JSON body in the same transaction, so
//! that a report over millions of cycles is SQL aggregation over plain columns and never
//! decodes a body.
//!
//! The person's mapped attributes (region, business line, the checklist fields) are copied as
//! they are at the cycle's last change. How the cycle qualified is kept from its first save:
//! only the decision that opened it knows it was a go-live MQL.

use rusqlite::{Transaction, params};

use crate::engine::model::{Cycle, PersonFacts};

use super::ns;

const UPSERT: &str = "INSERT INTO cycle_facts (external_id, crm_id, kind, number, status, owner_id, owner_at_mql, team,
        segment, attributes, account_id, campaign_id, campaign_name, qualified_by, score, threshold,
        threshold_id, mql_at_ns, seen_at_ns, sal_at_ns, closed_at_ns, sla_due_ns, overdue,
        reassignments, rejection_reason, outcome, backfilled)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19,
        ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27)
    ON CONFLICT (external_id) DO UPDATE SET kind = excluded.kind, status = excluded.status,
        owner_id = excluded.owner_id, team = excluded.team, attributes = excluded.attributes,
        account_id = excluded.account_id, seen_at_ns = excluded.seen_at_ns,
        sal_at_ns = excluded.sal_at_ns, closed_at_ns = excluded.closed_at_ns,
        sla_due_ns = excluded.sla_due_ns, overdue = excluded.overdue,
        reassignments = excluded.reassignments, rejection_reason = excluded.rejection_reason,
        outcome = excluded.outcome, backfilled = excluded.backfilled";

/// Writes (or refreshes) the report row of `cycle`. `facts` is its person's, if known;
/// `at_go_live` says the decision that opened it was go-live's (ignored on a refresh).
pub(super) fn upsert(
    tx: &Transaction<'_>,
    cycle: &Cycle,
    facts: Option<&PersonFacts>,
    at_go_live: bool,
) -> rusqlite::Result<()> {
    let attributes = facts.map_or_else(
        || "{}".to_string(),
        |f| {
            let map: serde_json::Map<String, serde_json::Value> = f
                .attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.into()))
                .collect();
            serde_json::Value::Object(map).to_string()
        },
    );
    let (campaign_id, campaign_name) = cycle
        .campaign
        .as_ref()
        .map_or((None, None), |c| (Some(c.id.as_str()), c.name.as_deref()));
    // The rep could see it from its first write; a cycle written before that was recorded
    // (or never written) counts from its decision, and a backfilled one from its historical
    // MQL (its SAL date is history too, and older than its write).
    let seen_at = match cycle.written_at {
        Some(written) if !cycle.backfilled => written,
        _ => cycle.mql_at,
    };
    tx.prepare_cached(UPSERT)?.execute(params![
        cycle.external_id,
        cycle.crm.id.as_str(),
        cycle.crm.kind.as_str(),
        cycle.number,
        cycle.status.as_str(),
        cycle.owner_id,
        cycle.owner_at_mql,
        cycle.team,
        cycle.segment,
        attributes,
        facts.and_then(|f| f.account_id.as_ref().map(|a| a.as_str())),
        campaign_id,
        campaign_name,
        cycle.qualified_kind(at_go_live),
        cycle.score,
        cycle.threshold,
        cycle.threshold_id,
        ns(cycle.mql_at),
        ns(seen_at),
        cycle.sal_at.map(ns),
        cycle.closed_at.map(ns),
        cycle.sla_due_at.map(ns),
        cycle.overdue,
        cycle.reassignments,
        cycle.rejection_reason,
        cycle.outcome.map(|o| o.as_str()),
        cycle.backfilled,
    ])?;
    Ok(())
}

/// Fills `cycle_facts` from the stored cycles and people (migration 7, on a store that has
/// cycles already). Go-live MQLs are found in the audit log.
pub(super) fn rebuild(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    // Go-live opens a person's first cycle (it passes over anyone with a cycle), and its
    // audit row's subject is the person.
    let go_live: std::collections::HashSet<String> = {
        let mut stmt = tx.prepare(
            "SELECT DISTINCT subject FROM audit WHERE action = 'open_cycle' AND reason_code = 'at_go_live'",
        )?;
        stmt.query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    let mut stmt = tx.prepare(
        "SELECT c.body, p.facts FROM cycles c LEFT JOIN persons p ON p.crm_id = c.crm_id ORDER BY c.external_id",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let body: String = r.get(0)?;
        let facts: Option<String> = r.get(1)?;
        // A row this build cannot read is left out of the reports, not a failed upgrade:
        // loading the engine names it.
        let Ok(cycle) = serde_json::from_str::<Cycle>(&body) else {
            continue;
        };
        let facts = facts.and_then(|f| serde_json::from_str::<PersonFacts>(&f).ok());
        let opened_at_go_live = cycle.number == 1 && go_live.contains(cycle.crm.id.as_str());
        upsert(tx, &cycle, facts.as_ref(), opened_at_go_live)?;
    }
    Ok(())
}
