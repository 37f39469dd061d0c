//! The sync: moving records between the two systems and the engine.
//!
//! - [`records`]: vendor records <-> engine values, driven by the mapping (which field is the
//!   threshold's score, where a lead's region is read, how a cycle is written as an MQL record).
//! - [`writes`]: outbox rows -> the CRM calls that write them, one result per row.
//! - [`preflight`]: the mapping checked against the org and the MAP (`check --remote`).
//! - [`dry_run`]: `run --once --dry-run` on a copy of the store, its writes compared with
//!   what was last written.
//!
//! The first end-to-end run (`mqlsync run --once`) and the daemon's workers build on this.

pub mod connect;
pub mod dry_run;
pub mod once;
pub mod preflight;
pub mod records;
pub mod writes;
