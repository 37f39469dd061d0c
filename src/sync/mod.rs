//! The sync: moving records between the two systems and the engine.
//!
//! - [`records`]: vendor records <-> engine values, driven by the mapping (which field is the
//!   threshold's score, where a lead's region is read, how a cycle is written as an MQL record).
//! - [`writes`]: outbox rows -> the CRM calls that write them, one result per row.
//! - [`crm_read`]: the pollers' CRM object reads as values (the daemon runs them off its loop).
//! - [`current`]: the current score of every linked MAP lead (first run, `--full`).
//! - [`replay`]: the backfill pass (history replayed in backfill mode).
//! - [`bulk_read`]: the MAP read by bulk extract (a long backfill, a large instance's scores).
//! - [`preflight`]: the mapping checked against the org and the MAP (`check --remote`).
//! - [`dry_run`]: `run --once --dry-run` on a copy of the store, its writes compared with
//!   what was last written.
//!
//! The first end-to-end run (`mqlsync run --once`) and the daemon's workers build on this.

pub mod bulk_read;
pub mod connect;
pub mod crm_read;
pub mod current;
pub mod dry_run;
pub mod knob;
pub mod once;
pub mod preflight;
pub mod records;
pub mod replay;
pub mod writes;

/// A cursor as one short line: a JSON cursor's fields with long strings cut and lists
/// counted (the ids seen at the cursor's instant, the activity GUIDs of the last page), so
/// that `status` stays readable; `status --json` keeps them whole.
pub fn cursor_brief(value: &str) -> String {
    fn cut(s: &str) -> String {
        match s.char_indices().nth(24) {
            Some((i, _)) => format!("{}…", &s[..i]),
            None => s.to_string(),
        }
    }
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(serde_json::Value::Object(fields)) => fields
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={}", cut(s)),
                serde_json::Value::Array(a) if a.len() == 1 => format!("{k}=[1 item]"),
                serde_json::Value::Array(a) => format!("{k}=[{} items]", a.len()),
                serde_json::Value::Object(o) => format!("{k}={{{} fields}}", o.len()),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ if value.chars().count() > 64 => cut(value),
        _ => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::cursor_brief;

    #[test]
    fn a_cursor_is_shown_on_one_short_line() {
        let recent: Vec<_> = (0..50)
            .map(|i| serde_json::json!(["2026-11-23T11:07:27Z", format!("00Q{i:015}")]))
            .collect();
        let modstamp = serde_json::json!({
            "systemmodstamp": "2026-11-23T11:07:27Z",
            "id": "00Q5g00000000L5EAI",
            "recent": recent,
        });
        assert_eq!(
            cursor_brief(&modstamp.to_string()),
            "id=00Q5g00000000L5EAI recent=[50 items] systemmodstamp=2026-11-23T11:07:27Z"
        );
        let token = serde_json::json!({
            "next_page_token": "GIYDENRNGEYS2MRTKQYDSORSGU5DENZOGAYDAKZQGAYDALBVGAYDEMBZG44A====",
            "last_guids": ["50020803", "50020804"],
        });
        assert_eq!(
            cursor_brief(&token.to_string()),
            "last_guids=[2 items] next_page_token=GIYDENRNGEYS2MRTKQYDSORS…"
        );
        assert_eq!(cursor_brief("2026-11-23T11:08:27Z"), "2026-11-23T11:08:27Z");
    }
}
