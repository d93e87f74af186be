//! Bit-level packing shared by the storage formats: b-bit codes (1–8 bits) packed LSB-first
//! into a continuous byte stream, bitmasks, and the narrow (4/8/16-bit) relative column gaps of
//! CSR rows.
//!
//! Code `i` of a b-bit stream occupies bits `i·b .. i·b + b`, bit `j` of the stream being bit
//! `j % 8` of byte `j / 8`. Rows are not padded, so a stream of `n` codes is exactly
//! `ceil(n·b / 8)` bytes.

/// Bytes taken by `n` codes of `bits` bits.
pub fn packed_len(n: usize, bits: u8) -> usize {
    (n * bits as usize).div_ceil(8)
}

/// Packs `codes` (each `< 2^bits`, higher bits ignored) into `ceil(n·bits/8)` bytes.
pub fn pack_codes(codes: &[u8], bits: u8) -> Vec<u8> {
    let b = bits as usize;
    let mut out = vec![0u8; packed_len(codes.len(), bits)];
    if b == 8 {
        out.copy_from_slice(codes);
        return out;
    }
    let mask = (1u16 << b) - 1;
    for (i, &c) in codes.iter().enumerate() {
        let bit = i * b;
        let (byte, shift) = (bit / 8, bit % 8);
        let v = (c as u16 & mask) << shift;
        out[byte] |= v as u8;
        if shift + b > 8 {
            out[byte + 1] |= (v >> 8) as u8;
        }
    }
    out
}

/// Reads code `i` of a `bits`-bit stream.
#[inline]
pub fn code_at(packed: &[u8], bits: u8, i: usize) -> u8 {
    let b = bits as usize;
    let bit = i * b;
    let (byte, shift) = (bit / 8, bit % 8);
    let lo = packed.get(byte).copied().unwrap_or(0) as u16;
    let hi = packed.get(byte + 1).copied().unwrap_or(0) as u16;
    (((lo | (hi << 8)) >> shift) & ((1u16 << b) - 1)) as u8
}

/// Unpacks codes `start .. start + out.len()` of a `bits`-bit stream into `out`.
pub fn unpack_codes(packed: &[u8], bits: u8, start: usize, out: &mut [u8]) {
    let n = out.len();
    match bits {
        8 => out.copy_from_slice(&packed[start..start + n]),
        4 if start.is_multiple_of(2) => {
            // Two codes per byte, low nibble first.
            let src = &packed[start / 2..];
            let mut pairs = out.chunks_exact_mut(2);
            for (pair, &b) in (&mut pairs).zip(src) {
                pair[0] = b & 0xF;
                pair[1] = b >> 4;
            }
            if let [last] = pairs.into_remainder() {
                *last = src[n / 2] & 0xF;
            }
        }
        1 => unpack_fast::<1>(packed, start, out),
        2 => unpack_fast::<2>(packed, start, out),
        3 => unpack_fast::<3>(packed, start, out),
        4 => unpack_fast::<4>(packed, start, out),
        5 => unpack_fast::<5>(packed, start, out),
        6 => unpack_fast::<6>(packed, start, out),
        7 => unpack_fast::<7>(packed, start, out),
        _ => {
            for (k, o) in out.iter_mut().enumerate() {
                *o = code_at(packed, bits, start + k);
            }
        }
    }
}

/// Every 8 codes of a B-bit stream that start at a multiple of 8 fill exactly B bytes: unpack
/// those blocks with one 64-bit load each, and the unaligned head and tail code by code.
fn unpack_fast<const B: usize>(packed: &[u8], start: usize, out: &mut [u8]) {
    let n = out.len();
    let head = ((8 - start % 8) % 8).min(n);
    for (k, o) in out[..head].iter_mut().enumerate() {
        *o = code_at(packed, B as u8, start + k);
    }
    let body = (n - head) / 8 * 8;
    let first_byte = (start + head) / 8 * B;
    let src = &packed[first_byte..first_byte + body / 8 * B];
    let mask = (1u64 << B) - 1;
    for (chunk, o) in src
        .chunks_exact(B)
        .zip(out[head..head + body].chunks_exact_mut(8))
    {
        let mut w = [0u8; 8];
        w[..B].copy_from_slice(chunk);
        let v = u64::from_le_bytes(w);
        for (j, oj) in o.iter_mut().enumerate() {
            *oj = ((v >> (j * B)) & mask) as u8;
        }
    }
    for (k, o) in out.iter_mut().enumerate().skip(head + body) {
        *o = code_at(packed, B as u8, start + k);
    }
}

/// Packs a boolean mask into bits, LSB-first.
pub fn pack_mask(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, _) in bits.iter().enumerate().filter(|(_, b)| **b) {
        out[i / 8] |= 1 << (i % 8);
    }
    out
}

#[inline]
pub fn mask_bit(mask: &[u8], i: usize) -> bool {
    mask.get(i / 8).is_some_and(|b| b >> (i % 8) & 1 == 1)
}

/// Calls `f(k)` for every set bit `start + k` with `k < len`, in order, a word at a time.
#[inline]
pub fn for_each_set_bit(mask: &[u8], start: usize, len: usize, mut f: impl FnMut(usize)) {
    let end = start + len;
    let mut pos = start;
    while pos < end {
        let byte = pos / 8;
        // Read up to 8 bytes as one little-endian word starting at `byte`.
        let mut w = [0u8; 8];
        let avail = mask.len().saturating_sub(byte).min(8);
        w[..avail].copy_from_slice(&mask[byte..byte + avail]);
        let mut word = u64::from_le_bytes(w) >> (pos % 8);
        let span = (64 - pos % 8).min(end - pos);
        if span < 64 {
            word &= (1u64 << span) - 1;
        }
        while word != 0 {
            let t = word.trailing_zeros() as usize;
            f(pos + t - start);
            word &= word - 1;
        }
        pos += span;
    }
}

/// Number of set bits in `start .. start + len`.
pub fn count_ones(mask: &[u8], start: usize, len: usize) -> usize {
    let mut n = 0;
    for_each_set_bit(mask, start, len, |_| n += 1);
    n
}

/// Gap width of a CSR index stream: 4, 8 or 16 bits per entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GapWidth(pub u8);

impl GapWidth {
    /// The largest gap one entry holds; a longer distance takes padding entries.
    pub fn max_gap(self) -> usize {
        (1usize << self.0) - 1
    }

    pub fn bytes_for(self, entries: usize) -> usize {
        packed_len(entries, self.0)
    }
}

/// Reads gap `i` of a stream of `width`-bit gaps (16-bit gaps are little-endian pairs).
#[inline]
pub fn gap_at(gaps: &[u8], width: u8, i: usize) -> usize {
    match width {
        8 => gaps[i] as usize,
        16 => u16::from_le_bytes([gaps[2 * i], gaps[2 * i + 1]]) as usize,
        _ => (gaps[i / 2] >> ((i % 2) * 4) & 0xF) as usize,
    }
}

/// Packs gaps (each `<= 2^width − 1`) into a `width`-bit stream.
pub fn pack_gaps(gaps: &[usize], width: u8) -> Vec<u8> {
    match width {
        16 => gaps
            .iter()
            .flat_map(|&g| (g as u16).to_le_bytes())
            .collect(),
        8 => gaps.iter().map(|&g| g as u8).collect(),
        _ => {
            let codes: Vec<u8> = gaps.iter().map(|&g| g as u8).collect();
            pack_codes(&codes, 4)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_every_width_and_offset() {
        for bits in 1..=8u8 {
            let codes: Vec<u8> = (0..203u32)
                .map(|i| ((i * 37 + 11) % (1 << bits)) as u8)
                .collect();
            let packed = pack_codes(&codes, bits);
            assert_eq!(packed.len(), (codes.len() * bits as usize).div_ceil(8));
            for start in [0usize, 1, 3, 7, 8, 13, 100] {
                for len in [0usize, 1, 5, 8, 17, 64, 103] {
                    let mut out = vec![0u8; len];
                    unpack_codes(&packed, bits, start, &mut out);
                    assert_eq!(
                        &out[..],
                        &codes[start..start + len],
                        "bits {bits} start {start}"
                    );
                }
            }
        }
    }

    #[test]
    fn set_bits_are_visited_in_order() {
        let bits: Vec<bool> = (0..300).map(|i| (i * 7) % 5 == 0 || i == 299).collect();
        let mask = pack_mask(&bits);
        for start in [0usize, 3, 64, 70] {
            let len = 300 - start;
            let mut seen = Vec::new();
            for_each_set_bit(&mask, start, len, |k| seen.push(start + k));
            let want: Vec<usize> = (start..300).filter(|&i| bits[i]).collect();
            assert_eq!(seen, want);
            assert_eq!(count_ones(&mask, start, len), want.len());
        }
    }
}
