//! The knob's consequence next to the knob: for a threshold record, the MQLs a week its
//! threshold would have made over the last `report.feedback_weeks` (the stored history
//! replayed at its score, as `whatif` does) and the MQLs a week its segment really had over
//! the same weeks. The sync writes both on the record (`[crm.threshold]`
//! `projected_weekly_mqls`, `actual_weekly_mqls`, `feedback_date`), so that a sales manager
//! turning the knob sees, beside it, what the new level would have meant.

use jiff::civil::Date;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::engine::Policy;
use crate::engine::model::{Threshold, segment_label};
use crate::store::{Store, StoreError};

use super::whatif::{self, WhatIfQuery};
use super::{Settings, ns};

/// What is written on one threshold record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KnobFeedback {
    pub threshold_id: String,
    /// MQLs a week at the record's threshold over the weeks, to a tenth.
    pub projected_weekly: f64,
    /// MQLs a week the segment had over the same weeks, to a tenth.
    pub actual_weekly: f64,
    /// The day (in the report's zone) the weeks end: the record says how fresh it is.
    pub day: Date,
}

/// The feedback of `threshold` at `now`, over the `settings.feedback_weeks` before it.
pub fn of_threshold(
    store: &Store,
    policy: &Policy,
    settings: &Settings,
    threshold: &Threshold,
    now: Timestamp,
) -> Result<KnobFeedback, StoreError> {
    let weeks = settings.feedback_weeks.max(1);
    let from = now - SignedDuration::from_hours(24 * 7 * i64::from(weeks));
    let label = segment_label(&threshold.segment);
    let actual: i64 = store
        .connection()
        .query_row(
            "SELECT count(*) FROM cycle_facts WHERE segment = ?1 AND mql_at_ns >= ?2 AND mql_at_ns < ?3",
            rusqlite::params![label, ns(from), ns(now)],
            |r| r.get(0),
        )
        .map_err(|e| store.sql_err(e))?;
    let query = WhatIfQuery {
        segment: threshold.segment.clone(),
        threshold: threshold.score,
        from: Some(from),
        to: Some(now),
    };
    let projected = whatif::mqls_at(store, policy, settings, &query)?;
    let weekly = |n: f64| (n / f64::from(weeks) * 10.0).round() / 10.0;
    Ok(KnobFeedback {
        threshold_id: threshold.id.clone(),
        projected_weekly: weekly(projected as f64),
        actual_weekly: weekly(actual as f64),
        day: now.to_zoned(settings.time_zone.clone()).date(),
    })
}
