//! LEB128, the variable-length integers of the packed score changes (the store's blocks,
//! `store/blocks.rs`, and what-if's lists, `report/changes.rs`): seven bits a byte, low bits
//! first, the top bit set on every byte but the last.

/// Appends `n`.
pub(crate) fn put(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads one number from the front of `bytes` and moves past it; `None` when `bytes` ends
/// inside it or it does not fit 64 bits.
pub(crate) fn get(bytes: &mut &[u8]) -> Option<u64> {
    // Most numbers here take one byte: a flag, a small score, an id's length.
    let (&first, rest) = bytes.split_first()?;
    if first < 0x80 {
        *bytes = rest;
        return Some(u64::from(first));
    }
    let mut n = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Some(n);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_reads_back_as_written_and_a_cut_one_is_refused() {
        for n in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put(&mut out, n);
            let mut bytes = &out[..];
            assert_eq!(get(&mut bytes), Some(n));
            assert!(bytes.is_empty());
            let mut cut = &out[..out.len() - 1];
            assert_eq!(get(&mut cut), None, "{n}");
        }
        assert_eq!(get(&mut &[0xff; 11][..]), None, "longer than 64 bits");
    }
}
