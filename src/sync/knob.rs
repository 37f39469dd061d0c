//! The knob's consequence next to the knob: the sync computes for each threshold record the
//! MQLs a week its threshold would have made and its segment really had over the last weeks
//! ([`crate::report::feedback`]), and writes them on the record through the outbox like any
//! other write: `run --once` after its reads and decisions, before its writes; the daemon once
//! its outbox is empty, so that a knob turn's MQL records go first.
//!
//! A record's feedback is computed again when the record changed (a new version: a knob turn,
//! or mqlsync's own write coming back) and once a day (the weeks move on). mqlsync's own write
//! comes back as a version that leaves the knob as it was: the engine re-evaluates nobody for
//! it, and its feedback, computed again that same day, is the payload already written, so the
//! outbox sends nothing (the write does not loop). Opt-in: nothing happens while the mapping
//! names none of the feedback fields.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::civil::Date;

use crate::connectors::{Crm, Map};
use crate::mapping::Mapping;
use crate::report::{Settings, feedback};

use super::once::{Run, SyncError};

/// The cursor that says, per threshold record, the version and the day its feedback was last
/// computed for.
pub const CURSOR: &str = "knob_feedback";

/// The outbox kind of a feedback write.
pub const KIND: &str = "knob_feedback";

/// Whether the mapping names any feedback field (else the knob's feedback is off).
pub fn mapped(m: &Mapping) -> bool {
    let t = &m.crm.threshold;
    t.projected_weekly_mqls.is_some() || t.actual_weekly_mqls.is_some() || t.feedback_date.is_some()
}

impl<C: Crm, M: Map> Run<'_, C, M> {
    /// Enqueues the feedback of every threshold record (deleted ones aside) whose version or
    /// day changed since it was last computed. Nothing in a backfill, or when the mapping
    /// names no feedback field.
    pub(super) fn knob_feedback(&mut self) -> Result<(), SyncError> {
        if !mapped(self.mapping) || self.replaying {
            return Ok(());
        }
        let settings = Settings::new(self.mapping, self.policy);
        let today = self.now.to_zoned(settings.time_zone.clone()).date();
        let mut seen: BTreeMap<String, (Timestamp, Date)> = self.cursor(CURSOR)?;
        let due: Vec<_> = self
            .state
            .thresholds
            .values()
            .filter(|t| !t.deleted && seen.get(&t.id) != Some(&(t.modified_at, today)))
            .cloned()
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(due.len());
        for threshold in &due {
            let computed =
                feedback::of_threshold(self.store, self.policy, &settings, threshold, self.now)?;
            tracing::debug!(
                threshold_id = %threshold.id,
                projected_weekly = computed.projected_weekly,
                actual_weekly = computed.actual_weekly,
                "knob feedback"
            );
            rows.push((
                format!("Knob:{}", threshold.id),
                KIND.to_string(),
                serde_json::to_string(&computed).expect("feedback serialises"),
            ));
            seen.insert(threshold.id.clone(), (threshold.modified_at, today));
        }
        let cursor = serde_json::to_string(&seen).expect("cursor serialises");
        self.store.enqueue(&rows, (CURSOR, &cursor), self.now)?;
        Ok(())
    }
}
