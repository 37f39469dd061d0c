//! mqlsync: lets sales leadership control the MQL threshold while marketing keeps owning
//! lead scoring.
//!
//! # Layout
//! Data flows one way; each module is one stage. What the product must do is
//! `docs/behaviour.md`; the README's "Layout" maps the directories.
//! - [`backfill`]: rebuilding MQL history before go-live (threshold versions from field history).
//! - [`config`]: settings from a TOML file and `MQLSYNC_*` variables, validated.
//! - [`demo`]: the whole product in one command, against the sandbox.
//! - [`logging`]: logs to stderr (text or JSON lines) and progress bars on a terminal.
//! - [`mapping`]: CRM and MAP object and field names, segments, exclusion rules, SLA teams.
//! - [`engine`]: the MQL decision, pure: thresholds, rules, lifecycle, SLA, reconcile.
//! - [`store`]: the SQLite checkpoint store: migrations, cursors, snapshots, cycles, outbox, audit.
//! - [`connectors`]: the Salesforce and Marketo REST clients behind the `Crm` and `Map` traits.
//! - [`sandbox`]: wire-faithful emulators of both APIs, sharing no code with the above.
//! - [`report`]: the metrics and what-if of the contract's "Metrics and feedback", from the store.
//! - [`simulate`]: replays a CSV or JSONL history through the engine into a store.
//! - [`sync`]: vendor records <-> engine values (the mapping applied), the first sync.
//! - [`workers`]: the daemon (`mqlsync run`): its HTTP port (webhooks, health, metrics).

pub mod backfill;
pub mod config;
pub mod connectors;
pub mod demo;
pub mod engine;
mod leb128;
pub mod logging;
pub mod mapping;
pub mod report;
pub mod sandbox;
pub mod simulate;
pub mod store;
pub mod sync;
pub mod workers;
