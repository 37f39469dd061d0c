//! Integration tests of the sandbox, in-process on port 0, driven with reqwest as a plain
//! HTTP client (never `mqlsync::connectors`): one binary, one module per emulator.

mod salesforce;
mod server;
