//! The sandbox: emulators of the Salesforce REST API and the Marketo REST API, on loopback,
//! for `mqlsync sandbox`, `mqlsync demo` and the tests.
//!
//! Its standard is that public clients nobody here wrote (simple-salesforce, jsforce,
//! marketorestpython, tap-marketo) work against it unchanged. It must share no code with
//! `src/connectors` or `src/engine`: no wire types, no parsers, no rules. A protocol
//! misunderstanding written once and used on both sides would pass every test and fail on
//! the first real org; written twice, it shows up as a failing test.
//!
//! # Layout
//! - [`clock`]: the sandbox's own clock, shared by both servers, that tests can advance.
//! - [`faults`]: deterministic fault rules (status, vendor code, delay, drop, token expiry,
//!   one failing record), loadable from a file or set through the admin API.
//! - [`log`]: the request log, with counts of calls by kind, read by tests to count API calls.
//! - [`world`]: the deterministic data generator both servers are seeded from.
//! - `salesforce`: the Salesforce REST, OAuth, Bulk 2.0 and Outbound Messaging emulator.
//! - `marketo`: the Marketo identity, REST, bulk extract and webhook emulator.
//! - [`server`]: `Sandbox::start(SandboxOptions)`: both emulators on 127.0.0.1, in-process.
//! - [`admin`]: the shared `/__sandbox/...` admin API (clock, faults, log, state).
//! - [`cli`]: `mqlsync sandbox` (args, `--json` first line, run until SIGTERM/Ctrl-C).

pub mod admin;
pub mod cli;
pub mod clock;
pub mod faults;
pub mod log;
pub mod marketo;
pub mod salesforce;
pub mod server;
pub mod world;
