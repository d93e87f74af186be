//! Storage formats of one linear/conv layer (`PackedLayer`): how its kept positions are indexed
//! (dense, CSR with narrow relative column gaps, or a bitmask) and how its values are stored
//! (f32 / f16 / bf16, bit-packed uniform codes with per-group scales and zero points, or
//! bit-packed codebook indices). `size_bytes` is the exact number of bytes of the tensors the
//! layer serializes to. Reading a stored layer (row access, decoding) and validating one read
//! from a file live here; how it runs — the layouts and kernels prepared from it — lives in
//! `kernels/`.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::pack;
use crate::compress::{ActivationQuant, Granularity};

/// Row pointers of a CSR layer: entry offsets, `rows + 1` of them, 16-bit when they fit.
#[derive(Debug, Clone, PartialEq)]
pub enum RowPtr {
    U16(Vec<u16>),
    U32(Vec<u32>),
}

impl RowPtr {
    pub(super) fn from_offsets(offsets: &[usize]) -> Self {
        if offsets.last().is_none_or(|&n| n <= u16::MAX as usize) {
            RowPtr::U16(offsets.iter().map(|&o| o as u16).collect())
        } else {
            RowPtr::U32(offsets.iter().map(|&o| o as u32).collect())
        }
    }

    #[inline]
    pub fn get(&self, i: usize) -> usize {
        match self {
            RowPtr::U16(v) => v[i] as usize,
            RowPtr::U32(v) => v[i] as usize,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            RowPtr::U16(v) => v.len(),
            RowPtr::U32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> usize {
        match self {
            RowPtr::U16(v) => v.len() * 2,
            RowPtr::U32(v) => v.len() * 4,
        }
    }

    pub fn bits(&self) -> u8 {
        match self {
            RowPtr::U16(_) => 16,
            RowPtr::U32(_) => 32,
        }
    }
}

/// Where a layer's stored entries sit in its `rows × cols` matrix.
#[derive(Debug, Clone, PartialEq)]
pub enum Indexing {
    /// Every position, row-major.
    Dense,
    /// Compressed sparse rows with relative column indices: within a row, entry `k` sits at
    /// column `p + gap[k]` where `p` is one past the previous entry's column (0 at the row's
    /// start). A distance longer than the widest gap takes padding entries holding zero, as in
    /// Deep Compression.
    Csr {
        gap_bits: u8,
        gaps: Vec<u8>,
        row_ptr: RowPtr,
    },
    /// One bit per position (row-major, LSB-first); entries are the set bits in order.
    /// `row_start` (the first entry of each row, `rows + 1` values) is derived from the mask at
    /// build time for the kernels and is not stored.
    Bitmask { mask: Vec<u8>, row_start: Vec<u32> },
}

/// Zero points of uniform codes.
#[derive(Debug, Clone, PartialEq)]
pub enum ZeroPoints {
    /// Every group's zero point is `2^(bits−1)` (symmetric quantization): nothing stored.
    Midpoint,
    U8(Vec<u8>),
    I32(Vec<i32>),
}

impl ZeroPoints {
    #[inline]
    pub fn get(&self, g: usize, bits: u8) -> i32 {
        match self {
            ZeroPoints::Midpoint => 1 << (bits - 1),
            ZeroPoints::U8(v) => v[g] as i32,
            ZeroPoints::I32(v) => v[g],
        }
    }

    fn bytes(&self) -> usize {
        match self {
            ZeroPoints::Midpoint => 0,
            ZeroPoints::U8(v) => v.len(),
            ZeroPoints::I32(v) => v.len() * 4,
        }
    }
}

/// The stored values, one per entry of the indexing.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueStore {
    F32(Vec<f32>),
    /// IEEE half bits.
    F16(Vec<u16>),
    /// bfloat16 bits.
    Bf16(Vec<u16>),
    /// `value = scales[g] × (code − zero_point[g])`, codes bit-packed.
    Uniform {
        bits: u8,
        codes: Vec<u8>,
        scales: Vec<f32>,
        zero_points: ZeroPoints,
        granularity: Granularity,
    },
    /// `value = codebook[code]`, codes bit-packed.
    Codebook {
        bits: u8,
        codes: Vec<u8>,
        codebook: Vec<f32>,
    },
}

/// A layer's exact stored bytes by role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeBreakdown {
    pub values: usize,
    pub indices: usize,
    /// Scales, zero points, codebook and activation quantization parameters.
    pub scales: usize,
    pub bias: usize,
}

impl SizeBreakdown {
    pub fn total(&self) -> usize {
        self.values + self.indices + self.scales + self.bias
    }
}

impl std::ops::AddAssign for SizeBreakdown {
    fn add_assign(&mut self, o: Self) {
        self.values += o.values;
        self.indices += o.indices;
        self.scales += o.scales;
        self.bias += o.bias;
    }
}

/// One linear/conv layer in its storage format: exactly what is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedLayer {
    pub rows: usize,
    pub cols: usize,
    /// Stored entries (values): `rows × cols` when dense, kept weights plus padding for CSR,
    /// kept weights for a bitmask.
    pub entries: usize,
    pub index: Indexing,
    pub values: ValueStore,
    pub bias: Option<Vec<f32>>,
    pub activation: Option<ActivationQuant>,
    /// Bytes of the layer Huffman-coded (Deep Compression's third stage: codes and index gaps
    /// entropy-coded, plus tables, scales and bias), a figure reported beside `size_bytes`;
    /// known when the layer was encoded from a plan, kept in the exported file's metadata.
    pub entropy_bytes: Option<usize>,
}

/// A short name for the encoding, for reports: `csr8+u4/channel`, `dense+f32`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    Dense,
    Csr,
    Bitmask,
}

impl PackedLayer {
    /// A plain dense f32 layer (no compression): `rows × cols × 4 + bias` bytes.
    pub fn dense_f32(rows: usize, cols: usize, weights: Vec<f32>, bias: Option<Vec<f32>>) -> Self {
        PackedLayer {
            rows,
            cols,
            entries: rows * cols,
            index: Indexing::Dense,
            values: ValueStore::F32(weights),
            bias,
            activation: None,
            entropy_bytes: None,
        }
    }

    pub fn index_kind(&self) -> IndexKind {
        match self.index {
            Indexing::Dense => IndexKind::Dense,
            Indexing::Csr { .. } => IndexKind::Csr,
            Indexing::Bitmask { .. } => IndexKind::Bitmask,
        }
    }

    /// A short human-readable name of the encoding.
    pub fn format_name(&self) -> String {
        let idx = match &self.index {
            Indexing::Dense => "dense".to_string(),
            Indexing::Csr { gap_bits, .. } => format!("csr{gap_bits}"),
            Indexing::Bitmask { .. } => "bitmask".to_string(),
        };
        let val = match &self.values {
            ValueStore::F32(_) => "f32".to_string(),
            ValueStore::F16(_) => "f16".to_string(),
            ValueStore::Bf16(_) => "bf16".to_string(),
            ValueStore::Uniform {
                bits, granularity, ..
            } => match granularity {
                Granularity::Tensor => format!("u{bits}/tensor"),
                Granularity::Channel => format!("u{bits}/channel"),
                Granularity::Group { size } => format!("u{bits}/group{size}"),
            },
            ValueStore::Codebook { bits, .. } => format!("codebook{bits}"),
        };
        let act = match self.activation {
            Some(a) => format!(" ×a{}", a.bits),
            None => String::new(),
        };
        format!("{idx}+{val}{act}")
    }

    /// Exact stored bytes by role.
    pub fn size_breakdown(&self) -> SizeBreakdown {
        let values = match &self.values {
            ValueStore::F32(v) => v.len() * 4,
            ValueStore::F16(v) | ValueStore::Bf16(v) => v.len() * 2,
            ValueStore::Uniform { codes, .. } | ValueStore::Codebook { codes, .. } => codes.len(),
        };
        let mut scales = match &self.values {
            ValueStore::Uniform {
                scales,
                zero_points,
                ..
            } => scales.len() * 4 + zero_points.bytes(),
            ValueStore::Codebook { codebook, .. } => codebook.len() * 4,
            _ => 0,
        };
        if self.activation.is_some() {
            // act_scale (f32) and act_zero_point (i32).
            scales += 8;
        }
        let indices = match &self.index {
            Indexing::Dense => 0,
            Indexing::Csr { gaps, row_ptr, .. } => gaps.len() + row_ptr.bytes(),
            Indexing::Bitmask { mask, .. } => mask.len(),
        };
        SizeBreakdown {
            values,
            indices,
            scales,
            bias: self.bias.as_ref().map_or(0, |b| b.len() * 4),
        }
    }

    pub fn size_bytes(&self) -> usize {
        self.size_breakdown().total()
    }

    /// The stored entries of row `r`.
    #[inline]
    pub fn row_entries(&self, r: usize) -> Range<usize> {
        match &self.index {
            Indexing::Dense => r * self.cols..(r + 1) * self.cols,
            Indexing::Csr { row_ptr, .. } => row_ptr.get(r)..row_ptr.get(r + 1),
            Indexing::Bitmask { row_start, .. } => row_start[r] as usize..row_start[r + 1] as usize,
        }
    }

    /// Whether every position is stored (no index).
    pub fn is_dense(&self) -> bool {
        matches!(self.index, Indexing::Dense)
    }

    /// The stored entries of rows `rows`.
    fn entry_span(&self, rows: &Range<usize>) -> Range<usize> {
        match &self.index {
            Indexing::Dense => rows.start * self.cols..rows.end * self.cols,
            Indexing::Csr { row_ptr, .. } => row_ptr.get(rows.start)..row_ptr.get(rows.end),
            Indexing::Bitmask { row_start, .. } => {
                row_start[rows.start] as usize..row_start[rows.end] as usize
            }
        }
    }

    /// Rows `rows` as a layer of their own (one group of a grouped convolution): the same
    /// encoding, with the index, values, scales, zero points and bias of those rows.
    pub fn row_slice(&self, rows: Range<usize>) -> PackedLayer {
        let cols = self.cols;
        let span = self.entry_span(&rows);
        let rebased = |offsets: &mut dyn Iterator<Item = usize>| -> Vec<usize> {
            offsets.map(|o| o - span.start).collect()
        };
        let index = match &self.index {
            Indexing::Dense => Indexing::Dense,
            Indexing::Csr {
                gap_bits,
                gaps,
                row_ptr,
            } => {
                let kept: Vec<usize> = span
                    .clone()
                    .map(|k| pack::gap_at(gaps, *gap_bits, k))
                    .collect();
                let offsets = rebased(&mut (rows.start..=rows.end).map(|r| row_ptr.get(r)));
                Indexing::Csr {
                    gap_bits: *gap_bits,
                    gaps: pack::pack_gaps(&kept, *gap_bits),
                    row_ptr: RowPtr::from_offsets(&offsets),
                }
            }
            Indexing::Bitmask { mask, row_start } => {
                let bits: Vec<bool> = (rows.start * cols..rows.end * cols)
                    .map(|i| pack::mask_bit(mask, i))
                    .collect();
                let starts = rebased(&mut (rows.start..=rows.end).map(|r| row_start[r] as usize));
                Indexing::Bitmask {
                    mask: pack::pack_mask(&bits),
                    row_start: starts.into_iter().map(|o| o as u32).collect(),
                }
            }
        };
        let codes_of = |packed: &[u8], bits: u8| {
            let mut codes = vec![0u8; span.len()];
            pack::unpack_codes(packed, bits, span.start, &mut codes);
            pack::pack_codes(&codes, bits)
        };
        let values = match &self.values {
            ValueStore::F32(v) => ValueStore::F32(v[span.clone()].to_vec()),
            ValueStore::F16(v) => ValueStore::F16(v[span.clone()].to_vec()),
            ValueStore::Bf16(v) => ValueStore::Bf16(v[span.clone()].to_vec()),
            ValueStore::Uniform {
                bits,
                codes,
                scales,
                zero_points,
                granularity,
            } => {
                // The scale groups of those rows.
                let groups = match granularity {
                    Granularity::Tensor => 0..1,
                    Granularity::Channel => rows.clone(),
                    Granularity::Group { size } => {
                        let per_row = cols.div_ceil(*size);
                        rows.start * per_row..rows.end * per_row
                    }
                };
                ValueStore::Uniform {
                    bits: *bits,
                    codes: codes_of(codes, *bits),
                    scales: scales[groups.clone()].to_vec(),
                    zero_points: match zero_points {
                        ZeroPoints::Midpoint => ZeroPoints::Midpoint,
                        ZeroPoints::U8(z) => ZeroPoints::U8(z[groups].to_vec()),
                        ZeroPoints::I32(z) => ZeroPoints::I32(z[groups].to_vec()),
                    },
                    granularity: *granularity,
                }
            }
            ValueStore::Codebook {
                bits,
                codes,
                codebook,
            } => ValueStore::Codebook {
                bits: *bits,
                codes: codes_of(codes, *bits),
                codebook: codebook.clone(),
            },
        };
        PackedLayer {
            rows: rows.len(),
            cols,
            entries: span.len(),
            index,
            values,
            bias: self.bias.as_ref().map(|b| b[rows].to_vec()),
            activation: self.activation,
            entropy_bytes: None,
        }
    }

    /// Stored entries per weight (`1` for dense layers; CSR padding entries count).
    pub fn density(&self) -> f64 {
        self.entries as f64 / (self.rows * self.cols).max(1) as f64
    }

    /// Columns of row `r`'s entries (sparse formats), appended to `out` after clearing it.
    pub fn row_columns(&self, r: usize, out: &mut Vec<u32>) {
        out.clear();
        match &self.index {
            Indexing::Dense => out.extend(0..self.cols as u32),
            Indexing::Csr { gap_bits, gaps, .. } => {
                let mut p = 0usize;
                let range = self.row_entries(r);
                match gap_bits {
                    8 => {
                        for &g in &gaps[range] {
                            let c = p + g as usize;
                            out.push(c as u32);
                            p = c + 1;
                        }
                    }
                    _ => {
                        for k in range {
                            let c = p + pack::gap_at(gaps, *gap_bits, k);
                            out.push(c as u32);
                            p = c + 1;
                        }
                    }
                }
            }
            Indexing::Bitmask { mask, .. } => {
                pack::for_each_set_bit(mask, r * self.cols, self.cols, |c| out.push(c as u32));
            }
        }
    }

    /// Dequantized values of entries `range` (all in row `row`; `cols` gives their columns for
    /// sparse formats, `None` when dense) into `out`.
    pub fn decode_values(
        &self,
        range: Range<usize>,
        row: usize,
        cols: Option<&[u32]>,
        codes: &mut Vec<u8>,
        out: &mut [f32],
    ) {
        let n = range.len();
        let out = &mut out[..n];
        match &self.values {
            ValueStore::F32(v) => out.copy_from_slice(&v[range]),
            ValueStore::F16(v) => {
                for (o, &h) in out.iter_mut().zip(&v[range]) {
                    *o = half::f16::from_bits(h).to_f32();
                }
            }
            ValueStore::Bf16(v) => {
                for (o, &h) in out.iter_mut().zip(&v[range]) {
                    *o = half::bf16::from_bits(h).to_f32();
                }
            }
            ValueStore::Codebook {
                bits,
                codes: packed,
                codebook,
            } => {
                codes.resize(n, 0);
                pack::unpack_codes(packed, *bits, range.start, codes);
                // A 256-entry table makes the lookup branch- and bounds-check-free.
                let mut lut = [0f32; 256];
                lut[..codebook.len()].copy_from_slice(codebook);
                for (o, &c) in out.iter_mut().zip(codes.iter()) {
                    *o = lut[c as usize];
                }
            }
            ValueStore::Uniform {
                bits,
                codes: packed,
                scales,
                zero_points,
                granularity,
            } => {
                codes.resize(n, 0);
                pack::unpack_codes(packed, *bits, range.start, codes);
                let seg = |g: usize| (scales[g], zero_points.get(g, *bits) as f32);
                match (granularity, cols) {
                    (Granularity::Tensor | Granularity::Channel, _) => {
                        let g = granularity.group_of(row, 0, self.cols);
                        let (s, z) = seg(g);
                        for (o, &c) in out.iter_mut().zip(codes.iter()) {
                            *o = s * (c as f32 - z);
                        }
                    }
                    (Granularity::Group { size }, None) => {
                        // Dense row: entry k is column k.
                        for (gi, (o, c)) in
                            out.chunks_mut(*size).zip(codes.chunks(*size)).enumerate()
                        {
                            let (s, z) = seg(row * self.cols.div_ceil(*size) + gi);
                            for (o, &c) in o.iter_mut().zip(c) {
                                *o = s * (c as f32 - z);
                            }
                        }
                    }
                    (Granularity::Group { size }, Some(cols)) => {
                        let base = row * self.cols.div_ceil(*size);
                        for ((o, &c), &col) in out.iter_mut().zip(codes.iter()).zip(cols) {
                            let (s, z) = seg(base + col as usize / size);
                            *o = s * (c as f32 - z);
                        }
                    }
                }
            }
        }
    }

    /// The whole matrix, dequantized, row-major (`rows × cols`), zeros where nothing is stored.
    pub fn decode_dense(&self, out: &mut [f32]) {
        let mut cols = Vec::new();
        let mut codes = Vec::new();
        let mut vals = vec![0f32; self.cols.max(1)];
        let out = &mut out[..self.rows * self.cols];
        match self.index {
            Indexing::Dense => {
                for r in 0..self.rows {
                    let range = self.row_entries(r);
                    let row = &mut out[r * self.cols..(r + 1) * self.cols];
                    self.decode_values(range, r, None, &mut codes, row);
                }
            }
            _ => {
                out.fill(0.0);
                for r in 0..self.rows {
                    let range = self.row_entries(r);
                    self.row_columns(r, &mut cols);
                    vals.resize(range.len().max(1), 0.0);
                    self.decode_values(range, r, Some(&cols), &mut codes, &mut vals);
                    let row = &mut out[r * self.cols..(r + 1) * self.cols];
                    for (&c, &v) in cols.iter().zip(&vals) {
                        // Padding entries hold zero; adding keeps a kept value they share a
                        // column with (they never do, but this is exact either way).
                        row[c as usize] += v;
                    }
                }
            }
        }
    }

    /// The dequantized matrix as a new vector.
    pub fn dequantized(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.decode_dense(&mut out);
        out
    }

    /// Checks the internal consistency of a layer read from a file, so kernels can trust it:
    /// every length matches the shape, and every index structure is checked whole (row
    /// pointers in order and inside the entries, columns inside the row, codes inside the
    /// codebook) before anything is read through it.
    pub fn check(&self) -> Result<(), LayoutError> {
        let (rows, cols) = (self.rows, self.cols);
        let positions = rows
            .checked_mul(cols)
            .ok_or(LayoutError::Overflow { rows, cols })?;
        match &self.index {
            Indexing::Dense => {
                if self.entries != positions {
                    return Err(LayoutError::DenseEntries {
                        held: self.entries,
                        expected: positions,
                    });
                }
            }
            Indexing::Csr {
                gap_bits,
                gaps,
                row_ptr,
            } => self.check_csr(*gap_bits, gaps, row_ptr)?,
            Indexing::Bitmask { mask, row_start } => {
                if mask.len() != positions.div_ceil(8) {
                    return Err(LayoutError::MaskBytes {
                        held: mask.len(),
                        expected: positions.div_ceil(8),
                    });
                }
                // `row_start` is derived from the mask, never stored: it must be exactly that.
                if *row_start != bitmask_row_start(mask, rows, cols) {
                    return Err(LayoutError::RowStarts);
                }
                if row_start.last().is_none_or(|&n| n as usize != self.entries) {
                    return Err(LayoutError::MaskBits {
                        set: row_start.last().copied().unwrap_or(0),
                        stored: self.entries,
                    });
                }
            }
        }
        self.check_values()?;
        if let Some(b) = &self.bias
            && b.len() != rows
        {
            return Err(LayoutError::Biases {
                held: b.len(),
                rows,
            });
        }
        Ok(())
    }

    /// The CSR index: its row pointers whole first (`0` first, never decreasing, the entry
    /// count last, hence every one inside the entries), then each row's columns.
    fn check_csr(&self, gap_bits: u8, gaps: &[u8], row_ptr: &RowPtr) -> Result<(), LayoutError> {
        let (rows, cols) = (self.rows, self.cols);
        if ![4, 8, 16].contains(&gap_bits) {
            return Err(LayoutError::GapWidth(gap_bits));
        }
        if Some(row_ptr.len()) != rows.checked_add(1) {
            return Err(LayoutError::RowPtrLen {
                held: row_ptr.len(),
                rows,
            });
        }
        let need = self
            .entries
            .checked_mul(gap_bits as usize)
            .map(|b| b.div_ceil(8));
        if need != Some(gaps.len()) {
            return Err(LayoutError::GapBytes {
                held: gaps.len(),
                entries: self.entries,
                gap_bits,
            });
        }
        if row_ptr.get(0) != 0 {
            return Err(LayoutError::RowPtrStart(row_ptr.get(0)));
        }
        if let Some(r) = (0..rows).find(|&r| row_ptr.get(r + 1) < row_ptr.get(r)) {
            return Err(LayoutError::RowPtrDecreases {
                row: r,
                from: row_ptr.get(r),
                to: row_ptr.get(r + 1),
            });
        }
        if row_ptr.get(rows) != self.entries {
            return Err(LayoutError::RowPtrEnd {
                end: row_ptr.get(rows),
                entries: self.entries,
            });
        }
        // Every row pointer now lies in `0..=entries`: the rows can be read.
        let mut buf = Vec::new();
        for r in 0..rows {
            self.row_columns(r, &mut buf);
            // Columns increase within a row, so the last one is the largest.
            if buf.last().is_some_and(|&c| c as usize >= cols) {
                return Err(LayoutError::Column { row: r, cols });
            }
        }
        Ok(())
    }

    /// The value store against the entry count and the shape's scale groups.
    fn check_values(&self) -> Result<(), LayoutError> {
        let n = self.entries;
        match &self.values {
            ValueStore::F32(v) if v.len() != n => Err(LayoutError::Values {
                held: v.len(),
                expected: n,
            }),
            ValueStore::F16(v) | ValueStore::Bf16(v) if v.len() != n => Err(LayoutError::Values {
                held: v.len(),
                expected: n,
            }),
            ValueStore::Uniform {
                bits,
                codes,
                scales,
                zero_points,
                granularity,
            } => {
                check_codes(*bits, codes, n)?;
                if let Granularity::Group { size: 0 } = granularity {
                    return Err(LayoutError::GroupSizeZero);
                }
                let groups = granularity.group_count(self.rows, self.cols);
                if scales.len() != groups {
                    return Err(LayoutError::Scales {
                        held: scales.len(),
                        groups,
                    });
                }
                let zp = match zero_points {
                    ZeroPoints::Midpoint => groups,
                    ZeroPoints::U8(v) => v.len(),
                    ZeroPoints::I32(v) => v.len(),
                };
                if zp != groups {
                    return Err(LayoutError::ZeroPoints { held: zp, groups });
                }
                // The kernels subtract zero points from codes in i32 and convert them to f32:
                // both stay exact within ±2^24, far beyond any code range.
                if let ZeroPoints::I32(v) = zero_points
                    && let Some(g) = v.iter().position(|z| z.unsigned_abs() > 1 << 24)
                {
                    return Err(LayoutError::ZeroPointRange {
                        value: v[g],
                        group: g,
                    });
                }
                Ok(())
            }
            ValueStore::Codebook {
                bits,
                codes,
                codebook,
            } => {
                check_codes(*bits, codes, n)?;
                if codebook.is_empty() || codebook.len() > 1 << bits {
                    return Err(LayoutError::Codebook {
                        entries: codebook.len(),
                        bits: *bits,
                    });
                }
                let mut buf = vec![0u8; n];
                pack::unpack_codes(codes, *bits, 0, &mut buf);
                if let Some(bad) = buf.iter().position(|&c| c as usize >= codebook.len()) {
                    return Err(LayoutError::CodePastCodebook(bad));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn check_codes(bits: u8, codes: &[u8], n: usize) -> Result<(), LayoutError> {
    if !(1..=8).contains(&bits) {
        return Err(LayoutError::CodeBits(bits));
    }
    if n.checked_mul(bits as usize).map(|b| b.div_ceil(8)) != Some(codes.len()) {
        return Err(LayoutError::CodeBytes {
            held: codes.len(),
            entries: n,
            bits,
        });
    }
    Ok(())
}

/// A stored layer whose parts do not agree with its shape ([`PackedLayer::check`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("{rows}×{cols} positions overflow")]
    Overflow { rows: usize, cols: usize },
    #[error("dense layer holds {held} entries, expected {expected}")]
    DenseEntries { held: usize, expected: usize },
    #[error("mask takes {held} bytes, expected {expected}")]
    MaskBytes { held: usize, expected: usize },
    #[error("row starts do not match the mask")]
    RowStarts,
    #[error("mask has {set} set bits, but {stored} values are stored")]
    MaskBits { set: u32, stored: usize },
    #[error("{held} biases, expected {rows}")]
    Biases { held: usize, rows: usize },
    #[error("gap width {0} is not 4, 8 or 16")]
    GapWidth(u8),
    #[error("row_ptr has {held} values, expected {rows} + 1")]
    RowPtrLen { held: usize, rows: usize },
    #[error("gaps take {held} bytes, expected {entries} {gap_bits}-bit gaps")]
    GapBytes {
        held: usize,
        entries: usize,
        gap_bits: u8,
    },
    #[error("row_ptr starts at {0}, not 0")]
    RowPtrStart(usize),
    #[error("row_ptr decreases at row {row} ({from} then {to})")]
    RowPtrDecreases { row: usize, from: usize, to: usize },
    #[error("row_ptr ends at {end}, but {entries} entries are stored")]
    RowPtrEnd { end: usize, entries: usize },
    #[error("row {row} has a column index past {cols}")]
    Column { row: usize, cols: usize },
    #[error("{held} values, expected {expected}")]
    Values { held: usize, expected: usize },
    #[error("group size 0")]
    GroupSizeZero,
    #[error("{held} scales, expected {groups}")]
    Scales { held: usize, groups: usize },
    #[error("{held} zero points, expected {groups}")]
    ZeroPoints { held: usize, groups: usize },
    #[error("zero point {value} of group {group} is out of range")]
    ZeroPointRange { value: i32, group: usize },
    #[error("codebook of {entries} entries for {bits}-bit codes")]
    Codebook { entries: usize, bits: u8 },
    #[error("code at entry {0} is past the codebook")]
    CodePastCodebook(usize),
    #[error("{0}-bit codes (1 to 8 supported)")]
    CodeBits(u8),
    #[error("codes take {held} bytes, expected {entries} {bits}-bit codes")]
    CodeBytes {
        held: usize,
        entries: usize,
        bits: u8,
    },
}

/// Value index of each row's first set bit, `rows + 1` values.
pub(crate) fn bitmask_row_start(mask: &[u8], rows: usize, cols: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(rows + 1);
    let mut n = 0usize;
    out.push(0);
    for r in 0..rows {
        n += pack::count_ones(mask, r * cols, cols);
        out.push(n as u32);
    }
    out
}
