//! The `mqlsync` command line (being written).
fn main() {}
