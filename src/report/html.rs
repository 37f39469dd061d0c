//! The report as one self-contained HTML page (`--format html`, the daemon's `/report`).

use super::Report;

pub fn page(r: &Report) -> String {
    format!(
        "<!doctype html><title>mqlsync report</title><pre>{}</pre>",
        super::render::text(r)
    )
}
