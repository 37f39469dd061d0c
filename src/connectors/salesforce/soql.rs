//! SOQL text building: quoted-string escaping, UTC datetime literals, and the incremental
//! `(SystemModstamp, Id)` cursor with its look-back window and de-duplication.
//!
//! Pure functions only; this file must not do I/O. Field and object names are not escapable in
//! SOQL, so they are validated against a strict identifier pattern instead.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::connectors::error::{ConnectorError, Result};

/// Quote a value as a SOQL string literal: `O'Brien\` becomes `'O\'Brien\\'`.
///
/// Escapes per the SOQL reference: `\' \" \\ \n \r \t \b \f`; other control characters as
/// `\uXXXX`. `_` and `%` are only special inside LIKE: use [`quote_like`] there.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        push_escaped(&mut out, c);
    }
    out.push('\'');
    out
}

/// Quote a value for a LIKE pattern, matching it literally (escapes `_` and `%` too).
pub fn quote_like(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '_' => out.push_str("\\_"),
            '%' => out.push_str("\\%"),
            c => push_escaped(&mut out, c),
        }
    }
    out.push('\'');
    out
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\'' => out.push_str("\\'"),
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
        c => out.push(c),
    }
}

/// A SOQL dateTime literal (unquoted, UTC, whole seconds are enough but millis are kept):
/// `2024-01-01T00:00:00Z` or `2024-01-01T00:00:00.123Z`.
pub fn datetime_literal(t: Timestamp) -> String {
    // Salesforce accepts fractional seconds in literals; keep milliseconds, drop finer digits.
    let ms = t.as_millisecond();
    let t = Timestamp::from_millisecond(ms).unwrap_or(t);
    t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Parse a Salesforce record datetime (`2024-04-25T15:50:37.000+0000`, also `Z` / `+00:00`).
pub fn parse_datetime(s: &str) -> Option<Timestamp> {
    s.parse::<Timestamp>().ok().or_else(|| {
        jiff::fmt::strtime::parse("%Y-%m-%dT%H:%M:%S%.f%z", s)
            .ok()?
            .to_timestamp()
            .ok()
    })
}

/// Check an object or field API name (`Lead`, `MQL__c`, `Lead__r.Email`): these cannot be
/// escaped, so anything else is refused.
pub fn identifier(name: &str) -> Result<&str> {
    let ok = !name.is_empty()
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if ok {
        Ok(name)
    } else {
        Err(ConnectorError::Config(format!(
            "{name:?} is not a Salesforce API name"
        )))
    }
}

/// Where an incremental read of one object stands. Stored as JSON, e.g.
/// `{"systemmodstamp":"2026-11-23T00:00:00Z","id":"00Q...","recent":[["2026-11-22T23:58:00Z","00Q..."]]}`.
///
/// `(systemmodstamp, id)` is the last record handed out in `(SystemModstamp, Id)` order;
/// `recent` holds the pairs handed out within the look-back window, so a re-read of the window
/// does not deliver them twice while a late-committed record in the window is still found.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ModstampCursor {
    pub systemmodstamp: Option<Timestamp>,
    pub id: Option<String>,
    #[serde(default)]
    pub recent: BTreeSet<(Timestamp, String)>,
}

/// At most this many pairs are remembered; past it the oldest go and a repeat may be delivered
/// again (delivery is at-least-once).
pub const MAX_RECENT: usize = 20_000;

impl ModstampCursor {
    /// The SOQL for records changed since the cursor, minus `lookback`.
    pub fn query(
        &self,
        object: &str,
        fields: &[&str],
        lookback: Duration,
        extra_where: Option<&str>,
    ) -> Result<String> {
        identifier(object)?;
        let mut select: Vec<&str> = Vec::with_capacity(fields.len() + 2);
        for f in ["Id", "SystemModstamp"]
            .into_iter()
            .chain(fields.iter().copied())
        {
            identifier(f)?;
            if !select.iter().any(|s| s.eq_ignore_ascii_case(f)) {
                select.push(f);
            }
        }
        let mut conds = Vec::new();
        if let Some(ts) = self.systemmodstamp {
            let from = ts
                .checked_sub(jiff::SignedDuration::try_from(lookback).unwrap_or_default())
                .unwrap_or(ts);
            // `>=` on the look-back start: a record exactly at `from` is still re-checked.
            conds.push(format!("SystemModstamp >= {}", datetime_literal(from)));
        }
        if let Some(w) = extra_where {
            conds.push(format!("({w})"));
        }
        let where_ = if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        };
        Ok(format!(
            "SELECT {} FROM {object}{where_} ORDER BY SystemModstamp ASC, Id ASC",
            select.join(", ")
        ))
    }

    /// Whether a record at `(ts, id)` was already handed out.
    pub fn seen(&self, ts: Timestamp, id: &str) -> bool {
        self.recent.contains(&(ts, id.to_string()))
    }

    /// Record that `(ts, id)` was handed out; the cursor never moves backwards, and pairs older
    /// than the look-back window before the newest are forgotten.
    pub fn advance(&mut self, ts: Timestamp, id: &str, lookback: Duration) {
        let newer = match (&self.systemmodstamp, &self.id) {
            (Some(t), Some(i)) => (ts, id) > (*t, i.as_str()),
            _ => true,
        };
        if newer {
            self.systemmodstamp = Some(ts);
            self.id = Some(id.to_string());
        }
        self.recent.insert((ts, id.to_string()));
        if let Some(top) = self.systemmodstamp {
            let floor = top
                .checked_sub(jiff::SignedDuration::try_from(lookback).unwrap_or_default())
                .unwrap_or(top);
            // The pairs are ordered by instant first, so those below the floor are a prefix:
            // popped one by one, not found by a walk over the whole set for every record (a
            // page of records stamped in the same minute, after a mass update, made that
            // walk 20,000 pairs long for each of them).
            while self.recent.first().is_some_and(|(t, _)| *t < floor) {
                self.recent.pop_first();
            }
        }
        while self.recent.len() > MAX_RECENT {
            self.recent.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reverse of `quote`, following the SOQL escape table; `None` if the literal is ill-formed
    /// (an unescaped quote inside, a bad escape, or no closing quote).
    fn unquote(lit: &str) -> Option<String> {
        let inner = lit.strip_prefix('\'')?.strip_suffix('\'')?;
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\'' => return None,
                '\\' => match chars.next()? {
                    '\'' => out.push('\''),
                    '"' => out.push('"'),
                    '\\' => out.push('\\'),
                    'n' | 'N' => out.push('\n'),
                    'r' | 'R' => out.push('\r'),
                    't' | 'T' => out.push('\t'),
                    'b' | 'B' => out.push('\u{8}'),
                    'f' | 'F' => out.push('\u{c}'),
                    'u' => {
                        let hex: String = chars.by_ref().take(4).collect();
                        out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                    }
                    _ => return None,
                },
                c => out.push(c),
            }
        }
        Some(out)
    }

    #[test]
    fn obrien_backslash_cannot_break_out() {
        assert_eq!(quote("O'Brien\\"), r"'O\'Brien\\'");
        assert_eq!(quote_like("50%_off"), r"'50\%\_off'");
    }

    proptest! {
        #[test]
        fn quote_round_trips_and_never_ends_early(s in any::<String>()) {
            let lit = quote(&s);
            prop_assert_eq!(unquote(&lit), Some(s));
        }

        /// The recent pairs a cursor keeps are those the walk over the whole set kept: every
        /// pair handed out at or above the newest instant minus the look-back (at most
        /// `MAX_RECENT`, the oldest going first).
        #[test]
        fn a_cursor_keeps_the_pairs_inside_its_window(
            records in proptest::collection::vec((0i64..3_600, 0u8..50), 1..300),
        ) {
            let lookback = Duration::from_secs(300);
            let base = Timestamp::from_second(1_790_000_000).unwrap();
            let mut cursor = ModstampCursor::default();
            let mut kept: BTreeSet<(Timestamp, String)> = BTreeSet::new();
            let mut top: Option<Timestamp> = None;
            for (second, id) in records {
                let at = base + jiff::SignedDuration::from_secs(second);
                let id = format!("00Q{id}");
                cursor.advance(at, &id, lookback);
                kept.insert((at, id));
                top = top.max(Some(at));
                let floor = top.unwrap() - jiff::SignedDuration::from_secs(300);
                kept.retain(|(t, _)| *t >= floor);
                prop_assert_eq!(&cursor.recent, &kept);
            }
        }

        #[test]
        fn quoted_strings_with_quotes_and_backslashes(s in "[a-z'\\\\\"%_\n]{0,20}") {
            let lit = quote(&s);
            prop_assert_eq!(unquote(&lit), Some(s));
        }
    }

    #[test]
    fn datetime_literals_are_utc() {
        let t: Timestamp = "2024-01-01T05:00:00.123456-05:00".parse().unwrap();
        assert_eq!(datetime_literal(t), "2024-01-01T10:00:00.123Z");
        assert_eq!(
            parse_datetime("2024-04-25T15:50:37.000+0000")
                .unwrap()
                .to_string(),
            "2024-04-25T15:50:37Z"
        );
        assert!(parse_datetime("2024-04-25T15:50:37Z").is_some());
    }

    #[test]
    fn identifiers_are_checked() {
        assert!(identifier("MQL__c").is_ok());
        assert!(identifier("Lead__r.Email").is_ok());
        assert!(identifier("Name FROM Lead--").is_err());
        assert!(identifier("").is_err());
    }

    #[test]
    fn cursor_query_has_lookback_and_tie_breaker_order() {
        let mut c = ModstampCursor::default();
        let q = c
            .query("Lead", &["Email", "Id"], Duration::from_secs(300), None)
            .unwrap();
        assert_eq!(
            q,
            "SELECT Id, SystemModstamp, Email FROM Lead ORDER BY SystemModstamp ASC, Id ASC"
        );
        c.advance(
            "2026-11-23T00:10:00Z".parse().unwrap(),
            "00Q1",
            Duration::from_secs(300),
        );
        let q = c
            .query(
                "Lead",
                &["Email"],
                Duration::from_secs(300),
                Some("IsConverted = false"),
            )
            .unwrap();
        assert_eq!(
            q,
            "SELECT Id, SystemModstamp, Email FROM Lead WHERE SystemModstamp >= 2026-11-23T00:05:00.000Z AND (IsConverted = false) ORDER BY SystemModstamp ASC, Id ASC"
        );
    }

    #[test]
    fn cursor_never_moves_back_and_forgets_beyond_the_window() {
        let lb = Duration::from_secs(300);
        let mut c = ModstampCursor::default();
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        c.advance(t("2026-11-23T00:10:00Z"), "B", lb);
        c.advance(t("2026-11-23T00:09:00Z"), "Z", lb); // late commit inside the window
        assert_eq!(c.id.as_deref(), Some("B"));
        assert!(c.seen(t("2026-11-23T00:09:00Z"), "Z"));
        c.advance(t("2026-11-23T00:20:00Z"), "C", lb);
        assert!(
            !c.seen(t("2026-11-23T00:10:00Z"), "B"),
            "outside the window: forgotten"
        );
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<ModstampCursor>(&json).unwrap(), c);
        assert!(
            json.contains("\"systemmodstamp\":\"2026-11-23T00:20:00Z\""),
            "{json}"
        );
    }
}
