//! Deep Compression's third stage as a size figure: Huffman-code a layer's quantized values
//! and the gaps between its kept positions, and count everything a decoder would need.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use super::{QuantizedLayer, WeightValues};

/// Huffman code lengths for symbol frequencies (0 for unused symbols). A lone used symbol gets
/// length 1 so every coded symbol costs at least one bit.
pub fn code_lengths(freqs: &[u64]) -> Vec<u32> {
    let mut lengths = vec![0u32; freqs.len()];
    let used: Vec<usize> = (0..freqs.len()).filter(|&s| freqs[s] > 0).collect();
    match used.len() {
        0 => return lengths,
        1 => {
            lengths[used[0]] = 1;
            return lengths;
        }
        _ => {}
    }
    // Nodes 0..used.len() are leaves; merged nodes follow. Ties are broken by node id so the
    // lengths are deterministic.
    let mut parent: Vec<usize> = vec![usize::MAX; used.len()];
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = used
        .iter()
        .enumerate()
        .map(|(id, &s)| Reverse((freqs[s], id)))
        .collect();
    while heap.len() > 1 {
        let (Some(Reverse((fa, a))), Some(Reverse((fb, b)))) = (heap.pop(), heap.pop()) else {
            break;
        };
        let id = parent.len();
        parent.push(usize::MAX);
        parent[a] = id;
        parent[b] = id;
        heap.push(Reverse((fa + fb, id)));
    }
    for (leaf, &s) in used.iter().enumerate() {
        let mut depth = 0;
        let mut n = leaf;
        while parent[n] != usize::MAX {
            n = parent[n];
            depth += 1;
        }
        lengths[s] = depth;
    }
    lengths
}

/// Canonical prefix codes for the given lengths (most significant bit first); unused symbols
/// get 0. Lengths above 64 cannot occur for frequency totals below 2^44.
pub fn canonical_codes(lengths: &[u32]) -> Vec<u64> {
    let mut order: Vec<usize> = (0..lengths.len()).filter(|&s| lengths[s] > 0).collect();
    order.sort_by_key(|&s| (lengths[s], s));
    let mut codes = vec![0u64; lengths.len()];
    let mut code = 0u64;
    let mut prev_len = 0u32;
    for (k, &s) in order.iter().enumerate() {
        if k > 0 {
            code += 1;
        }
        code <<= lengths[s] - prev_len;
        prev_len = lengths[s];
        codes[s] = code;
    }
    codes
}

/// Total bits of coding `freqs` with `lengths`: Σ freq × length.
pub fn coded_bits(freqs: &[u64], lengths: &[u32]) -> u64 {
    freqs.iter().zip(lengths).map(|(f, l)| f * *l as u64).sum()
}

/// A layer's entropy-coded size, by part (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntropySize {
    /// Huffman-coded codes of the kept weights (raw bytes for float storage).
    pub values: usize,
    /// Huffman-coded gaps between consecutive kept positions (none when nothing is pruned).
    pub indices: usize,
    /// The code tables, as JPEG's DHT describes a canonical code: one count byte per code
    /// length up to the longest, then the used symbols in canonical order (values one byte
    /// each, gaps as LEB128 varints).
    pub tables: usize,
    /// Scales (4 bytes each) and zero points (1 byte each, unless all are the symmetric
    /// midpoint), or the f32 codebook.
    pub scales: usize,
    /// f32 biases.
    pub bias: usize,
}

impl EntropySize {
    pub fn total(&self) -> usize {
        self.values + self.indices + self.tables + self.scales + self.bias
    }
}

/// The entropy-coded size of one layer in bytes (see `entropy_size` for the parts).
pub fn entropy_bytes(layer: &QuantizedLayer) -> usize {
    entropy_size(layer).total()
}

/// Huffman-codes the kept weights' codes and the gaps between kept positions (row-major; the
/// first gap counts from the start), and adds the tables, scales/codebook and biases.
pub fn entropy_size(layer: &QuantizedLayer) -> EntropySize {
    let mut size = EntropySize {
        bias: layer.bias.as_ref().map_or(0, |b| b.len() * 4),
        ..EntropySize::default()
    };
    let kept_count = layer.kept.iter().filter(|k| **k).count();

    match &layer.values {
        WeightValues::Float { storage, .. } => {
            let width = match storage {
                super::FloatStorage::F32 => 4,
                super::FloatStorage::F16 | super::FloatStorage::Bf16 => 2,
            };
            size.values = kept_count * width;
        }
        WeightValues::Uniform { bits, codes, .. } | WeightValues::Codebook { bits, codes, .. } => {
            let mut freqs = vec![0u64; 1usize << bits];
            for (c, k) in codes.iter().zip(&layer.kept) {
                if *k && (*c as usize) < freqs.len() {
                    freqs[*c as usize] += 1;
                }
            }
            let lengths = code_lengths(&freqs);
            size.values = coded_bits(&freqs, &lengths).div_ceil(8) as usize;
            size.tables += table_bytes(&lengths, |_| 1);
            size.scales = match &layer.values {
                WeightValues::Uniform {
                    scales,
                    zero_points,
                    ..
                } => {
                    let mid = 1i32 << (bits - 1);
                    let zp_bytes = if zero_points.iter().all(|z| *z == mid) {
                        0
                    } else {
                        zero_points.len()
                    };
                    scales.len() * 4 + zp_bytes
                }
                WeightValues::Codebook { codebook, .. } => codebook.len() * 4,
                WeightValues::Float { .. } => 0,
            };
        }
    }

    if kept_count < layer.kept.len() && kept_count > 0 {
        let mut gaps: BTreeMap<usize, u64> = BTreeMap::new();
        let mut next = 0usize;
        for (i, k) in layer.kept.iter().enumerate() {
            if *k {
                *gaps.entry(i - next).or_default() += 1;
                next = i + 1;
            }
        }
        let freqs: Vec<u64> = gaps.values().copied().collect();
        let symbols: Vec<usize> = gaps.keys().copied().collect();
        let lengths = code_lengths(&freqs);
        size.indices = coded_bits(&freqs, &lengths).div_ceil(8) as usize;
        size.tables += table_bytes(&lengths, |i| varint_len(symbols[i]));
    }
    size
}

/// Bytes of a canonical code's description: a count per length `1..=max`, and each used
/// symbol (`symbol_bytes(i)` for symbol `i`).
fn table_bytes(lengths: &[u32], symbol_bytes: impl Fn(usize) -> usize) -> usize {
    let max = lengths.iter().copied().max().unwrap_or(0) as usize;
    max + (0..lengths.len())
        .filter(|&i| lengths[i] > 0)
        .map(symbol_bytes)
        .sum::<usize>()
}

/// Bytes of `v` as a LEB128 varint (7 bits per byte).
fn varint_len(v: usize) -> usize {
    let bits = usize::BITS - v.leading_zeros();
    (bits as usize).div_ceil(7).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes `symbols` with canonical codes and decodes them back bit by bit.
    fn round_trip(symbols: &[usize], alphabet: usize) -> (Vec<usize>, u64) {
        let mut freqs = vec![0u64; alphabet];
        for s in symbols {
            freqs[*s] += 1;
        }
        let lengths = code_lengths(&freqs);
        let codes = canonical_codes(&lengths);
        let mut bits: Vec<bool> = Vec::new();
        for s in symbols {
            for b in (0..lengths[*s]).rev() {
                bits.push((codes[*s] >> b) & 1 == 1);
            }
        }
        assert_eq!(bits.len() as u64, coded_bits(&freqs, &lengths));
        let mut out = Vec::new();
        let (mut code, mut len) = (0u64, 0u32);
        for b in bits {
            code = (code << 1) | b as u64;
            len += 1;
            if let Some(s) = (0..alphabet).find(|&s| lengths[s] == len && codes[s] == code) {
                out.push(s);
                code = 0;
                len = 0;
            }
        }
        assert_eq!(len, 0);
        (out, coded_bits(&freqs, &lengths))
    }

    #[test]
    fn known_lengths() {
        // Classic example: frequencies 45, 13, 12, 16, 9, 5 → lengths 1, 3, 3, 3, 4, 4.
        let l = code_lengths(&[45, 13, 12, 16, 9, 5]);
        assert_eq!(l, vec![1, 3, 3, 3, 4, 4]);
        assert_eq!(code_lengths(&[0, 7, 0]), vec![0, 1, 0]);
    }

    #[test]
    fn table_sizes() {
        assert_eq!((varint_len(0), varint_len(127), varint_len(128)), (1, 1, 2));
        // Lengths 1, 2, 2 (longest 2): two counts and three symbols.
        assert_eq!(table_bytes(&[1, 0, 2, 2], |_| 1), 5);
        assert_eq!(table_bytes(&[0, 0], |_| 1), 0);
    }

    #[test]
    fn encoding_round_trips() {
        let symbols: Vec<usize> = (0..500usize).map(|i| (i * i + 3 * i) % 11 % 7).collect();
        let (decoded, _) = round_trip(&symbols, 8);
        assert_eq!(decoded, symbols);
        let (decoded, bits) = round_trip(&[3; 10], 4);
        assert_eq!(decoded, vec![3; 10]);
        assert_eq!(bits, 10);
    }
}
