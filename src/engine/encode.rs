//! Choosing how a quantized layer is stored: every valid encoding of its kept weights (dense,
//! CSR with 4-, 8- or 16-bit gaps, bitmask; values as the plan says) is built and the smallest
//! kept (`PackedLayer::encode`). The stored format itself lives in `format.rs`.

use super::error::EngineError;
use super::format::{Indexing, PackedLayer, RowPtr, ValueStore, ZeroPoints, bitmask_row_start};
use super::pack::{self, GapWidth};
use crate::compress::{FloatStorage, Granularity, QuantizedLayer, WeightValues};

impl PackedLayer {
    /// The smallest valid encoding of a quantized layer (dense, CSR with 4/8/16-bit gaps, or
    /// bitmask). Ties go to the simpler (faster) format.
    pub fn encode(q: &QuantizedLayer, name: &str) -> Result<Self, EngineError> {
        let mut best: Option<PackedLayer> = None;
        for c in Self::encodings(q, name)? {
            if best
                .as_ref()
                .is_none_or(|b| c.size_bytes() < b.size_bytes())
            {
                best = Some(c);
            }
        }
        // The bitmask encoding is valid for every layer, so there is always a candidate.
        best.ok_or_else(|| EngineError::Invalid {
            layer: name.to_string(),
            msg: "no storage format fits this layer".into(),
        })
    }

    /// Every valid encoding of `q`, dense first.
    pub fn encodings(q: &QuantizedLayer, name: &str) -> Result<Vec<Self>, EngineError> {
        validate(q, name)?;
        let (rows, cols) = (q.rows, q.cols);
        let entropy = crate::compress::entropy_bytes(q);
        let mut out = Vec::new();
        let pruned = q.kept.iter().any(|k| !k);
        // Dense: every position; pruned positions hold the value zero.
        let all: Vec<Entry> = (0..rows * cols)
            .map(|i| {
                if q.kept[i] {
                    Entry::Kept(i)
                } else {
                    Entry::Zero(i)
                }
            })
            .collect();
        if let Some(values) = build_values(q, &all) {
            out.push(self::PackedLayer {
                rows,
                cols,
                entries: all.len(),
                index: Indexing::Dense,
                values,
                bias: q.bias.clone(),
                activation: q.activation,
                entropy_bytes: Some(entropy),
            });
        }
        if pruned || out.is_empty() {
            for width in [4u8, 8, 16] {
                let (entries, gaps, offsets) = csr_entries(q, GapWidth(width));
                if let Some(values) = build_values(q, &entries) {
                    out.push(PackedLayer {
                        rows,
                        cols,
                        entries: entries.len(),
                        index: Indexing::Csr {
                            gap_bits: width,
                            gaps: pack::pack_gaps(&gaps, width),
                            row_ptr: RowPtr::from_offsets(&offsets),
                        },
                        values,
                        bias: q.bias.clone(),
                        activation: q.activation,
                        entropy_bytes: Some(entropy),
                    });
                }
            }
            let entries: Vec<Entry> = (0..rows * cols)
                .filter(|&i| q.kept[i])
                .map(Entry::Kept)
                .collect();
            if let Some(values) = build_values(q, &entries) {
                let mask = pack::pack_mask(&q.kept);
                let row_start = bitmask_row_start(&mask, rows, cols);
                out.push(PackedLayer {
                    rows,
                    cols,
                    entries: entries.len(),
                    index: Indexing::Bitmask { mask, row_start },
                    values,
                    bias: q.bias.clone(),
                    activation: q.activation,
                    entropy_bytes: Some(entropy),
                });
            }
        }
        Ok(out)
    }
}

/// What one stored entry holds: kept weight `i` (row-major position) or zero at position `i`.
#[derive(Debug, Clone, Copy)]
enum Entry {
    Kept(usize),
    Zero(usize),
}

/// CSR entries of `q` with gaps of `width` bits: entries, gaps and row offsets.
fn csr_entries(q: &QuantizedLayer, width: GapWidth) -> (Vec<Entry>, Vec<usize>, Vec<usize>) {
    let max = width.max_gap();
    let mut entries = Vec::new();
    let mut gaps = Vec::new();
    let mut offsets = vec![0usize];
    for r in 0..q.rows {
        let mut p = 0usize;
        for c in 0..q.cols {
            if !q.kept[r * q.cols + c] {
                continue;
            }
            while c - p > max {
                entries.push(Entry::Zero(r * q.cols + p + max));
                gaps.push(max);
                p += max + 1;
            }
            entries.push(Entry::Kept(r * q.cols + c));
            gaps.push(c - p);
            p = c + 1;
        }
        offsets.push(entries.len());
    }
    (entries, gaps, offsets)
}

/// The value store holding `entries` in order, or `None` when a zero entry cannot be
/// represented (a codebook without 0.0, a zero point outside the code range).
fn build_values(q: &QuantizedLayer, entries: &[Entry]) -> Option<ValueStore> {
    let cols = q.cols;
    Some(match &q.values {
        WeightValues::Float { data, storage } => {
            let v = entries.iter().map(|e| match *e {
                Entry::Kept(i) => data[i],
                Entry::Zero(_) => 0.0,
            });
            match storage {
                FloatStorage::F32 => ValueStore::F32(v.collect()),
                FloatStorage::F16 => {
                    ValueStore::F16(v.map(|x| half::f16::from_f32(x).to_bits()).collect())
                }
                FloatStorage::Bf16 => {
                    ValueStore::Bf16(v.map(|x| half::bf16::from_f32(x).to_bits()).collect())
                }
            }
        }
        WeightValues::Uniform {
            bits,
            codes,
            scales,
            zero_points,
            granularity,
        } => {
            let top = (1i32 << bits) - 1;
            let mut out = Vec::with_capacity(entries.len());
            for e in entries {
                out.push(match *e {
                    Entry::Kept(i) => codes[i],
                    Entry::Zero(i) => {
                        let z = zero_points[granularity.group_of(i / cols, i % cols, cols)];
                        if !(0..=top).contains(&z) {
                            return None;
                        }
                        z as u8
                    }
                });
            }
            let mid = 1i32 << (bits - 1);
            let zp = if zero_points.iter().all(|&z| z == mid) {
                ZeroPoints::Midpoint
            } else if zero_points.iter().all(|&z| (0..=255).contains(&z)) {
                ZeroPoints::U8(zero_points.iter().map(|&z| z as u8).collect())
            } else {
                ZeroPoints::I32(zero_points.clone())
            };
            ValueStore::Uniform {
                bits: *bits,
                codes: pack::pack_codes(&out, *bits),
                scales: scales.clone(),
                zero_points: zp,
                granularity: *granularity,
            }
        }
        WeightValues::Codebook {
            bits,
            codes,
            codebook,
        } => {
            let zero = codebook.iter().position(|&v| v == 0.0);
            let mut out = Vec::with_capacity(entries.len());
            for e in entries {
                out.push(match *e {
                    Entry::Kept(i) => codes[i],
                    Entry::Zero(_) => zero? as u8,
                });
            }
            ValueStore::Codebook {
                bits: *bits,
                codes: pack::pack_codes(&out, *bits),
                codebook: codebook.clone(),
            }
        }
    })
}

/// Checks a `QuantizedLayer` against its own description before encoding it.
fn validate(q: &QuantizedLayer, name: &str) -> Result<(), EngineError> {
    let err = |msg: String| EngineError::Invalid {
        layer: name.to_string(),
        msg,
    };
    let n = q.rows * q.cols;
    if q.kept.len() != n {
        return Err(err(format!(
            "kept has {} flags, expected {n}",
            q.kept.len()
        )));
    }
    if let Some(b) = &q.bias
        && b.len() != q.rows
    {
        return Err(err(format!("{} biases, expected {}", b.len(), q.rows)));
    }
    if let Some(a) = &q.activation
        && !((1..=8).contains(&a.bits) && a.scale > 0.0 && a.scale.is_finite())
    {
        return Err(err(format!(
            "activation quantization needs 1 to 8 bits and a positive scale (got {} bits, scale {})",
            a.bits, a.scale
        )));
    }
    match &q.values {
        WeightValues::Float { data, .. } => {
            if data.len() != n {
                return Err(err(format!("{} values, expected {n}", data.len())));
            }
        }
        WeightValues::Uniform {
            bits,
            codes,
            scales,
            zero_points,
            granularity,
        } => {
            if !(1..=8).contains(bits) {
                return Err(err(format!("{bits}-bit codes (1 to 8 supported)")));
            }
            if codes.len() != n {
                return Err(err(format!("{} codes, expected {n}", codes.len())));
            }
            if let Some(i) = codes.iter().position(|&c| (c as u32) >> bits != 0) {
                return Err(err(format!(
                    "code {} at {i} does not fit {bits} bits",
                    codes[i]
                )));
            }
            if let Granularity::Group { size: 0 } = granularity {
                return Err(err("group size 0".into()));
            }
            let groups = granularity.group_count(q.rows, q.cols);
            if scales.len() != groups || zero_points.len() != groups {
                return Err(err(format!(
                    "{} scales and {} zero points, expected {groups}",
                    scales.len(),
                    zero_points.len()
                )));
            }
        }
        WeightValues::Codebook {
            bits,
            codes,
            codebook,
        } => {
            if !(1..=8).contains(bits) {
                return Err(err(format!("{bits}-bit codes (1 to 8 supported)")));
            }
            if codes.len() != n {
                return Err(err(format!("{} codes, expected {n}", codes.len())));
            }
            if codebook.is_empty() || codebook.len() > 1 << bits {
                return Err(err(format!(
                    "codebook of {} entries for {bits}-bit codes",
                    codebook.len()
                )));
            }
            if let Some(i) = codes.iter().position(|&c| c as usize >= codebook.len()) {
                return Err(err(format!(
                    "code {} at {i} is past the codebook",
                    codes[i]
                )));
            }
        }
    }
    Ok(())
}
