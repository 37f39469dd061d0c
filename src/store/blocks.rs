//! The score history packed in blocks (`score_blocks`, migration 9), for the readers of all of
//! it: `whatif` replays every change of a segment, millions of them, and SQLite hands a row's
//! columns over one call at a time (six calls and a step a change were most of what-if's
//! time). A block holds [`BLOCK_CHANGES`] consecutive changes in arrival order (`seq`), packed
//! in one blob: one row and one column for thousands of changes.
//!
//! The blocks are a copy, never the record: `score_history` keeps every row (backfill, the
//! engine's load and the dedup read it there), and a block is written only once all its
//! changes are, in the same transaction as the last of them (the writer's commit, or the
//! migration for a store's existing history). The changes after the last block are read as
//! rows: a reader takes the blocks up to [`packed_through`], then the rows after it.
//!
//! A block's body: a version byte ([`FORMAT`]), then each change as a flags byte (bits 0–1 the
//! part: 0 total, 1 behaviour, 2 demographic; bit 2: an old value follows), the MAP lead id
//! and the instant in nanoseconds (i64), the new value (f64), the old value when there is one
//! (f64), the id's length (LEB128) and the id's bytes; numbers little-endian. The campaign is
//! not kept: the readers of blocks do not use it.

use rusqlite::{Connection, params};

use crate::engine::model::ScorePart;
use crate::leb128;

/// Changes a block holds: enough that the row's own cost vanishes beside its changes, few
/// enough that the writer packs one in a few milliseconds.
pub const BLOCK_CHANGES: usize = 4096;

/// The body's format.
const FORMAT: u8 = 1;

const OLD_VALUE: u8 = 0b100;

/// One change as a block holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedChange<'a> {
    pub map_lead_id: i64,
    pub at_ns: i64,
    pub new_value: f64,
    pub old_value: Option<f64>,
    pub part: ScorePart,
    pub change_id: &'a str,
}

/// The last `seq` the blocks hold (0: none).
pub(crate) fn packed_through(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT coalesce((SELECT last_seq FROM score_blocks ORDER BY first_seq DESC LIMIT 1), 0)",
        [],
        |r| r.get(0),
    )
}

/// Packs every full block of `changes` changes after the last block; the rows of a block not
/// yet full wait for the next call. Returns how many changes were packed. Run inside the
/// transaction that wrote the rows.
pub(crate) fn pack(conn: &Connection, changes: usize) -> rusqlite::Result<u64> {
    let changes = changes.max(1);
    let mut after = packed_through(conn)?;
    let mut read = conn.prepare_cached(
        "SELECT seq, map_lead_id, change_id, part, new_value, old_value, at_ns
         FROM score_history WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let mut write = conn.prepare_cached(
        "INSERT INTO score_blocks (first_seq, last_seq, changes, body) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut packed = 0;
    let mut body = Vec::new();
    loop {
        body.clear();
        body.push(FORMAT);
        let (mut first, mut last, mut count) = (0i64, 0i64, 0usize);
        let mut rows = read.query(params![after, changes as i64])?;
        while let Some(r) = rows.next()? {
            let seq: i64 = r.get(0)?;
            if count == 0 {
                first = seq;
            }
            (last, count) = (seq, count + 1);
            // The writer writes only the three names; the readers of rows take anything
            // else as the total, and so do blocks.
            let part = super::part_of(r.get_ref(3)?.as_str().unwrap_or_default())
                .unwrap_or(ScorePart::Total);
            encode(
                &mut body,
                &PackedChange {
                    map_lead_id: r.get(1)?,
                    at_ns: r.get(6)?,
                    new_value: r.get(4)?,
                    old_value: r.get(5)?,
                    part,
                    change_id: r.get_ref(2)?.as_str().unwrap_or_default(),
                },
            );
        }
        if count < changes {
            return Ok(packed);
        }
        write.execute(params![first, last, count as i64, body])?;
        packed += count as u64;
        after = last;
    }
}

fn encode(body: &mut Vec<u8>, change: &PackedChange<'_>) {
    let flags = change.part.index() as u8
        | if change.old_value.is_some() {
            OLD_VALUE
        } else {
            0
        };
    body.push(flags);
    body.extend_from_slice(&change.map_lead_id.to_le_bytes());
    body.extend_from_slice(&change.at_ns.to_le_bytes());
    body.extend_from_slice(&change.new_value.to_le_bytes());
    if let Some(old) = change.old_value {
        body.extend_from_slice(&old.to_le_bytes());
    }
    leb128::put(body, change.change_id.len() as u64);
    body.extend_from_slice(change.change_id.as_bytes());
}

/// Hands each change of a block's `body` to `each`, in arrival order; returns how many. A body
/// that does not decode is named by what is wrong with it (the caller names the block).
pub(crate) fn unpack<'b>(
    body: &'b [u8],
    mut each: impl FnMut(PackedChange<'_>),
) -> Result<usize, String> {
    let (&format, mut rest) = body.split_first().ok_or("an empty body")?;
    if format != FORMAT {
        return Err(format!(
            "format {format}, which this mqlsync does not know (it writes {FORMAT})"
        ));
    }
    let mut count = 0;
    while let Some((&flags, after)) = rest.split_first() {
        let cut = |rest: &mut &'b [u8], n: usize| take(rest, n).ok_or_else(short(count));
        let eight = |rest: &mut &'b [u8]| -> Result<[u8; 8], String> {
            Ok(cut(rest, 8)?.try_into().expect("eight bytes"))
        };
        rest = after;
        let part = *ScorePart::ALL
            .get(usize::from(flags & 0b11))
            .ok_or_else(|| format!("change {count} has no known part"))?;
        let map_lead_id = i64::from_le_bytes(eight(&mut rest)?);
        let at_ns = i64::from_le_bytes(eight(&mut rest)?);
        let new_value = f64::from_le_bytes(eight(&mut rest)?);
        let old_value = if flags & OLD_VALUE != 0 {
            Some(f64::from_le_bytes(eight(&mut rest)?))
        } else {
            None
        };
        let len = leb128::get(&mut rest)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(short(count))?;
        let id = cut(&mut rest, len)?;
        let change_id =
            std::str::from_utf8(id).map_err(|_| format!("change {count}'s id is not UTF-8"))?;
        each(PackedChange {
            map_lead_id,
            at_ns,
            new_value,
            old_value,
            part,
            change_id,
        });
        count += 1;
    }
    Ok(count)
}

/// The first `n` bytes of `rest`, moving `rest` past them; `None` when it is shorter.
fn take<'b>(rest: &mut &'b [u8], n: usize) -> Option<&'b [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

fn short(count: usize) -> impl Fn() -> String {
    move || format!("change {count} is cut short")
}

/// Hands each packed change whose block starts at a `seq` in `first..=last` to `each`, in
/// arrival order.
pub(crate) fn for_each(
    conn: &Connection,
    (first, last): (i64, i64),
    mut each: impl FnMut(PackedChange<'_>),
) -> Result<(), BlockError> {
    let mut stmt = conn.prepare(
        "SELECT first_seq, changes, body FROM score_blocks
         WHERE first_seq BETWEEN ?1 AND ?2 ORDER BY first_seq",
    )?;
    let mut rows = stmt.query([first, last])?;
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        let expected: i64 = r.get(1)?;
        let body = r.get_ref(2)?.as_blob()?;
        let found = unpack(body, &mut each)
            .map_err(|detail| BlockError::Decode(format!("score block at seq {seq}: {detail}")))?;
        if found as i64 != expected {
            return Err(BlockError::Decode(format!(
                "score block at seq {seq}: holds {found} changes, its row says {expected}"
            )));
        }
    }
    Ok(())
}

/// A block that could not be read.
#[derive(Debug)]
pub(crate) enum BlockError {
    Sql(rusqlite::Error),
    Decode(String),
}

impl From<rusqlite::Error> for BlockError {
    fn from(e: rusqlite::Error) -> Self {
        BlockError::Sql(e)
    }
}

impl From<rusqlite::types::FromSqlError> for BlockError {
    fn from(e: rusqlite::types::FromSqlError) -> Self {
        BlockError::Sql(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_gives_back_the_changes_packed_into_it() {
        let long = "x".repeat(300);
        let changes = [
            PackedChange {
                map_lead_id: 7,
                at_ns: -5,
                new_value: 42.5,
                old_value: None,
                part: ScorePart::Total,
                change_id: "c1",
            },
            PackedChange {
                map_lead_id: i64::MAX,
                at_ns: 1_700_000_000_000_000_000,
                new_value: -1.0,
                old_value: Some(3.25),
                part: ScorePart::Demographic,
                change_id: &long,
            },
            PackedChange {
                map_lead_id: 0,
                at_ns: 0,
                new_value: 0.0,
                old_value: Some(0.0),
                part: ScorePart::Behavior,
                change_id: "",
            },
        ];
        let mut body = vec![FORMAT];
        for c in &changes {
            encode(&mut body, c);
        }
        // A change with its id owned, to outlive the body it was read from.
        let owned = |c: &PackedChange<'_>| {
            let id = c.change_id.to_string();
            (c.map_lead_id, c.at_ns, c.new_value, c.old_value, c.part, id)
        };
        let mut back = Vec::new();
        let n = unpack(&body, |c| back.push(owned(&c))).unwrap();
        assert_eq!(n, 3);
        let expected: Vec<_> = changes.iter().map(owned).collect();
        assert_eq!(back, expected);
        // A body cut anywhere inside a change is refused, not read short.
        for cut in 2..body.len() {
            let ends_a_change = [1 + 1 + 24 + 1 + 2, body.len() - (1 + 24 + 8 + 1)];
            if ends_a_change.contains(&cut) {
                continue;
            }
            assert!(unpack(&body[..cut], |_| {}).is_err(), "cut at {cut}");
        }
        assert!(unpack(&[9], |_| {}).unwrap_err().contains("format 9"));
    }
}
