//! The MQL decision, pure: no I/O, no clock, no async. Everything it needs arrives as
//! arguments (the state, the policy, the event, the present instant); everything it wants
//! done leaves as [`Decision`] values. That is what makes it testable with property tests
//! and replayable for `explain`, `simulate` and backfill.
//!
//! # Layout
//! - [`model`]: events, cycles, decisions and reasons.
//! - [`policy`]: the parameters the mapping sets (score source, rules, outcomes, teams).
//! - [`thresholds`]: which knob applies to a person at an instant.
//! - [`rules`]: the exclusion rules.
//! - [`score`]: score parts and the time-decayed score.
//! - [`sla`]: business hours.
//! - [`state`]: what the engine remembers; the store saves and loads it.
//! - [`reconcile`]: event in, decisions out; time passing; the cycle lifecycle; explain.

pub mod model;
pub mod policy;
pub mod reconcile;
pub mod rules;
pub mod score;
pub mod sla;
pub mod state;
pub mod text;
pub mod thresholds;

pub use model::{Action, Cycle, CycleStatus, Decision, Event, Reason};
pub use policy::{Policy, SlaClock};
pub use reconcile::{
    Context, Visibility, Written, advance, explain, mark_written, reconcile, sla_when_written,
};
pub use state::EngineState;

#[cfg(test)]
mod tests;
