//! What-if's score changes as it holds them between reading the history and replaying it: a
//! group's changes, in arrival order, packed in bytes. What-if holds every change of a segment
//! at once (10,000,000 in the benchmark), and the pages it takes are a cost of their own: the
//! system clears each one it hands out. As a struct a change took 40 bytes and its id; packed it
//! takes about a third (a Marketo activity's: a whole number of seconds since the group's last
//! change, a whole-number score and a numeric id take one to five bytes each; 16 bytes in all,
//! 21 for the benchmark's, whose instants are not whole seconds and whose ids are text).
//!
//! A change: a flags byte ([`PART`] bits, then one bit each for an old value, a whole-number
//! new and old value, a numeric id and an instant in whole seconds), the MAP lead id (zigzag
//! LEB128), the instant as the difference from the list's change before (zigzag LEB128, in
//! seconds when the flag says so), the new and the old value (zigzag LEB128 when whole, else
//! the f64's eight bytes) and the id (its number in LEB128, else its length and bytes).

use crate::engine::model::ScorePart;
use crate::leb128;

/// A number this list wrote (so whole).
fn get(bytes: &mut &[u8]) -> u64 {
    leb128::get(bytes).expect("written by ChangeList::push")
}

fn put(out: &mut Vec<u8>, n: u64) {
    leb128::put(out, n);
}

const PART: u8 = 0b11;
const OLD: u8 = 1 << 2;
const NEW_WHOLE: u8 = 1 << 3;
const OLD_WHOLE: u8 = 1 << 4;
const ID_NUMBER: u8 = 1 << 5;
const AT_SECONDS: u8 = 1 << 6;

/// Bytes a chunk holds: a list grows a chunk at a time, so nothing it holds is ever copied.
const CHUNK: usize = 64 * 1024;

/// One change as the replay needs it; its id is written to the reader's buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub map_lead_id: i64,
    pub at: i64,
    pub new_value: f64,
    pub old_value: Option<f64>,
    pub part: ScorePart,
}

/// Changes in arrival order, packed.
#[derive(Default)]
pub struct ChangeList {
    chunks: Vec<Vec<u8>>,
    len: usize,
    /// The instant of the last change pushed (the next one is written as the difference).
    last_at: i64,
    /// The earliest instant pushed.
    earliest: Option<i64>,
}

impl ChangeList {
    pub fn len(&self) -> usize {
        self.len
    }

    /// The earliest instant of the list's changes (none when it is empty): known without
    /// reading the list back.
    pub fn earliest(&self) -> Option<i64> {
        self.earliest
    }

    pub fn push(&mut self, change: &Change, id: &str) {
        // The most a change takes besides its id's bytes: the flags, then the lead, the
        // instant, two values and the id's number or length, at most ten bytes each.
        let most = 1 + 5 * 10 + id.len();
        let chunk = match self.chunks.last_mut() {
            Some(chunk) if chunk.capacity() - chunk.len() >= most => chunk,
            _ => {
                self.chunks.push(Vec::with_capacity(CHUNK.max(most)));
                self.chunks.last_mut().expect("just pushed")
            }
        };
        let delta = change.at.wrapping_sub(self.last_at);
        self.last_at = change.at;
        self.earliest = Some(self.earliest.map_or(change.at, |e| e.min(change.at)));
        let mut flags = change.part.index() as u8;
        let seconds = delta % 1_000_000_000 == 0;
        let new_whole = whole(change.new_value);
        let old_whole = change.old_value.and_then(whole);
        let number = id_number(id);
        flags |= if change.old_value.is_some() { OLD } else { 0 }
            | if new_whole.is_some() { NEW_WHOLE } else { 0 }
            | if old_whole.is_some() { OLD_WHOLE } else { 0 }
            | if number.is_some() { ID_NUMBER } else { 0 }
            | if seconds { AT_SECONDS } else { 0 };
        chunk.push(flags);
        put(chunk, zigzag(change.map_lead_id));
        put(
            chunk,
            zigzag(if seconds {
                delta / 1_000_000_000
            } else {
                delta
            }),
        );
        match new_whole {
            Some(n) => put(chunk, zigzag(n)),
            None => chunk.extend_from_slice(&change.new_value.to_le_bytes()),
        }
        match (change.old_value, old_whole) {
            (_, Some(n)) => put(chunk, zigzag(n)),
            (Some(old), None) => chunk.extend_from_slice(&old.to_le_bytes()),
            (None, None) => {}
        }
        match number {
            Some(n) => put(chunk, n),
            None => {
                put(chunk, id.len() as u64);
                chunk.extend_from_slice(id.as_bytes());
            }
        }
        self.len += 1;
    }

    /// The changes in order, without their ids.
    pub fn iter(&self) -> impl Iterator<Item = Change> + '_ {
        let mut reader = self.reader();
        let mut id = String::new();
        std::iter::from_fn(move || reader.next(&mut id))
    }

    /// Reads the list from its start.
    pub fn reader(&self) -> Reader<'_> {
        Reader {
            chunks: &self.chunks,
            chunk: 0,
            at: 0,
            last_at: 0,
        }
    }
}

/// Reads a [`ChangeList`] in order.
pub struct Reader<'a> {
    chunks: &'a [Vec<u8>],
    chunk: usize,
    /// The position in the chunk.
    at: usize,
    last_at: i64,
}

impl Reader<'_> {
    /// The next change, its id written to `id` (cleared first).
    pub fn next(&mut self, id: &mut String) -> Option<Change> {
        let mut bytes = loop {
            let chunk = self.chunks.get(self.chunk)?;
            if self.at < chunk.len() {
                break &chunk[self.at..];
            }
            (self.chunk, self.at) = (self.chunk + 1, 0);
        };
        let start = bytes.len();
        let flags = bytes[0];
        bytes = &bytes[1..];
        let map_lead_id = unzigzag(get(&mut bytes));
        let delta = unzigzag(get(&mut bytes));
        let delta = if flags & AT_SECONDS != 0 {
            delta.wrapping_mul(1_000_000_000)
        } else {
            delta
        };
        self.last_at = self.last_at.wrapping_add(delta);
        let value = |bytes: &mut &[u8], whole: bool| {
            if whole {
                unzigzag(get(bytes)) as f64
            } else {
                let (head, tail) = bytes.split_at(8);
                *bytes = tail;
                f64::from_le_bytes(head.try_into().expect("eight bytes"))
            }
        };
        let new_value = value(&mut bytes, flags & NEW_WHOLE != 0);
        let old_value = (flags & OLD != 0).then(|| value(&mut bytes, flags & OLD_WHOLE != 0));
        id.clear();
        if flags & ID_NUMBER != 0 {
            let n = get(&mut bytes);
            id.push_str(itoa_u64(n, &mut [0; 20]));
        } else {
            let len = get(&mut bytes) as usize;
            let (text, tail) = bytes.split_at(len);
            bytes = tail;
            id.push_str(std::str::from_utf8(text).expect("written from a str"));
        }
        self.at += start - bytes.len();
        let part = ScorePart::ALL[usize::from(flags & PART)];
        Some(Change {
            map_lead_id,
            at: self.last_at,
            new_value,
            old_value,
            part,
        })
    }
}

/// `v` as a whole number, when it is one exactly (its f64 is the same bits back).
fn whole(v: f64) -> Option<i64> {
    let n = v as i64;
    (n as f64).to_bits().eq(&v.to_bits()).then_some(n)
}

/// The id's number, when the id is the decimal writing of it (digits, no leading zero).
fn id_number(id: &str) -> Option<u64> {
    let plain = !id.is_empty()
        && id.len() <= 19
        && id.bytes().all(|b| b.is_ascii_digit())
        && (id == "0" || !id.starts_with('0'));
    plain.then(|| id.parse().ok()).flatten()
}

fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).expect("digits")
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            (-300i64..300).prop_map(|n| n as f64),
            any::<f64>(),
            Just(-0.0),
            Just(f64::NAN),
            Just(1e300),
            Just(i64::MAX as f64),
        ]
    }

    fn id() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u64..u64::MAX).prop_map(|n| n.to_string()),
            Just("0".to_string()),
            Just("007".to_string()),
            Just("18446744073709551615".to_string()),
            Just("99999999999999999999".to_string()),
            "current:[0-9]{1,6}:[a-z]{0,4}",
            ".{0,40}",
        ]
    }

    proptest! {
        #[test]
        fn a_list_gives_back_each_change_and_id_pushed_in_order(
            changes in prop::collection::vec(
                (any::<i64>(), prop_oneof![any::<i64>(), (-1000i64..1000).prop_map(|s| s * 1_000_000_000)],
                 value(), prop::option::of(value()), 0..3usize, id()),
                0..400),
        ) {
            let mut list = ChangeList::default();
            let parts = [ScorePart::Total, ScorePart::Behavior, ScorePart::Demographic];
            let made: Vec<(Change, String)> = changes
                .into_iter()
                .map(|(lead, at, new_value, old_value, part, id)| {
                    (Change { map_lead_id: lead, at, new_value, old_value, part: parts[part] }, id)
                })
                .collect();
            for (change, id) in &made {
                list.push(change, id);
            }
            prop_assert_eq!(list.len(), made.len());
            prop_assert_eq!(list.earliest(), made.iter().map(|(c, _)| c.at).min());
            let mut reader = list.reader();
            let mut id = String::new();
            for (change, made_id) in &made {
                let back = reader.next(&mut id).expect("as many as pushed");
                prop_assert_eq!(back.map_lead_id, change.map_lead_id);
                prop_assert_eq!(back.at, change.at);
                prop_assert_eq!(back.new_value.to_bits(), change.new_value.to_bits());
                prop_assert_eq!(back.old_value.map(f64::to_bits), change.old_value.map(f64::to_bits));
                prop_assert_eq!(back.part, change.part);
                prop_assert_eq!(&id, made_id);
            }
            prop_assert!(reader.next(&mut id).is_none());
        }
    }

    #[test]
    fn a_marketo_change_takes_a_few_bytes() {
        let mut list = ChangeList::default();
        for k in 0..1000i64 {
            let change = Change {
                map_lead_id: 12_345_678,
                at: 1_700_000_000_000_000_000 + k * 600_000_000_000,
                new_value: 40.0 + (k % 50) as f64,
                old_value: Some(35.0 + (k % 50) as f64),
                part: ScorePart::Total,
            };
            list.push(&change, &(987_654_321 + k).to_string());
        }
        let bytes: usize = list.chunks.iter().map(Vec::len).sum();
        // flags 1, lead 4, ten minutes 2, values 2 + 2 (zigzag doubles them), id 5; the first
        // change's instant takes more.
        assert!(bytes <= 1000 * 16 + 16, "{bytes} bytes for 1,000 changes");
    }
}
