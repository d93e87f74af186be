//! Storage formats of one linear/conv layer (`PackedLayer`): how its kept positions are indexed
//! (dense, CSR with narrow relative column gaps, or a bitmask) and how its values are stored
//! (f32 / f16 / bf16, bit-packed uniform codes with per-group scales and zero points, or
//! bit-packed codebook indices). `size_bytes` is the exact number of bytes of the tensors the
//! layer serializes to.

use std::ops::Range;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::gemm;
use super::int8::Int8Layer;
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

/// One linear/conv layer in its storage format, executed directly by the kernels.
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
    /// Runtime-only layout derived from `index` (see `DerivedColumns`): not stored, not counted
    /// in `size_bytes`.
    pub(crate) derived: DerivedColumns,
}

/// Runtime-only data derived from a sparse layer's stored index, never serialized and not part
/// of `size_bytes`: the absolute column of every stored entry (CSR padding entries included), in
/// entry order, so the kernels gather `x[col]` directly instead of walking the running sum of
/// the narrow gaps or scanning the mask (the same role as the bitmask's derived `row_start`).
/// Built on first use; `CompressedModel` builds it when the model is assembled so timed runs
/// never pay for it. The same holds for the other runtime layouts kept here: the sparse row
/// blocks, the bit planes of dense codes of widths other than 4 and 8, the 8-bit integer form
/// of layers with quantized inputs, and the decoded panels the batched matrix product reads
/// (built by the first batched run, as they cost memory). All are pure functions of the stored
/// fields, so they take no part in equality.
#[derive(Debug, Clone, Default)]
pub struct DerivedColumns {
    columns: OnceLock<EntryColumns>,
    blocks: OnceLock<Option<RowBlocks>>,
    panels: OnceLock<Vec<f32>>,
    int8: OnceLock<Option<Int8Layer>>,
    planes: OnceLock<Option<BitPlanes>>,
}

impl PartialEq for DerivedColumns {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Absolute columns of a sparse layer's entries and a bound on them.
#[derive(Debug, Clone, Default)]
pub struct EntryColumns {
    /// Column of entry `k`, for every stored entry.
    pub cols: Vec<u32>,
    /// One past the largest column (0 when there are no entries): the kernels check the input
    /// covers it once per call, which makes their unchecked gathers in bounds.
    pub bound: usize,
}

/// The codes of a dense layer of uniform codes with one scale per row, as bit planes (derived
/// at run time, never stored; see `PackedLayer::bit_planes`): for row `r` and each run of 16
/// columns `j`, `planes` 16-bit masks, mask `b` holding bit `b` of those 16 codes (bit `i` of
/// the mask for column `16·j + i`; columns past the row's end are 0). Since `Σ code·x = Σ_b 2^b
/// · Σ_{bit b set} x`, a kernel adds `x` under each mask, one masked add per plane and 16
/// weights, with no unpacking. Codes of 5 to 7 bits keep their low four bits as nibble pairs
/// (`nibbles`, two per byte like 4-bit codes, run by the 4-bit kernel) and only the bits above
/// as planes. Either way it holds exactly the stored bits, rearranged (plus padding of each row
/// to 16 columns).
#[derive(Debug, Clone, Default)]
pub struct BitPlanes {
    /// Planes per run: the code width, or the width − 4 when `nibbles` holds the low bits.
    pub planes: usize,
    /// Masks per row: `ceil(cols / 16) · planes`.
    pub per_row: usize,
    pub masks: Vec<u16>,
    /// The low four bits of every code, two per byte (low nibble first), `cols / 2` bytes per
    /// row; empty for codes of 1 to 3 bits.
    pub nibbles: Vec<u8>,
}

impl BitPlanes {
    /// Row `r`'s masks, run after run.
    pub fn row(&self, r: usize) -> &[u16] {
        &self.masks[r * self.per_row..(r + 1) * self.per_row]
    }
}

/// Rows rearranged for single-sample vector kernels (derived at run time from a sparse f32
/// layer, never stored; see `PackedLayer::row_blocks`): rows are taken `LANES` at a time (lane
/// `j` = row `16·b + j`) and columns in windows of `WINDOW`. Within block `b` and window `w`,
/// step `s` holds for every lane its row's `s`-th entry in that window (column offset in the
/// window and value), or a zero value when the row has fewer: a kernel loads the window of `x`
/// into two registers, picks each lane's input with one in-register permutation and multiplies
/// 16 rows at once, so no memory gathers are needed. Holds a copy of the values (plus the
/// zero padding), so it is built only when the padding stays small.
#[derive(Debug, Clone, Default)]
pub struct RowBlocks {
    /// Per block, the range of `windows` it uses.
    pub block_windows: Vec<u32>,
    /// `(window, first step, steps)` for every window a block touches.
    pub windows: Vec<(u32, u32, u32)>,
    /// Column offset within the window, `LANES` per step.
    pub offsets: Vec<u8>,
    /// Values, `LANES` per step (0 in padded lanes), in the layer's own value type.
    pub values: BlockValues,
}

/// `RowBlocks`' values as the layer stores them: f32, or f16/bf16 bits the kernel widens in
/// registers (so a half-precision layer's blocks hold half-precision values).
#[derive(Debug, Clone)]
pub enum BlockValues {
    F32(Vec<Lanes>),
    F16(Vec<HalfLanes>),
    Bf16(Vec<HalfLanes>),
    /// Uniform codes with one scale per row, centred on the row's zero point (`code − z`,
    /// which fits i8), and per block the 16 rows' scales: the kernel sums `(code − z) · x` and
    /// scales each lane once at the end.
    Codes {
        codes: Vec<CodeLanes>,
        scales: Vec<Lanes>,
    },
    /// Codebook indices (up to 32 entries) into `table`, the codebook reordered so entry 0 is
    /// 0.0 (the padding's value) and zero-filled to 32: the kernel looks each step's weights
    /// up with one two-register permutation.
    Book {
        codes: Vec<CodeLanes>,
        table: [f32; 32],
    },
}

impl Default for BlockValues {
    fn default() -> Self {
        BlockValues::F32(Vec::new())
    }
}

/// One step of f32 values: sixteen on one 64-byte cache line, so a step loads from a single
/// line wherever the allocator put the vector.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(C, align(64))]
pub struct Lanes(pub [f32; RowBlocks::LANES]);

/// One step of centred codes: sixteen bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(C, align(16))]
pub struct CodeLanes(pub [i8; RowBlocks::LANES]);

/// One step of half-precision values (bits): sixteen on half a cache line.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(C, align(32))]
pub struct HalfLanes(pub [u16; RowBlocks::LANES]);

impl RowBlocks {
    pub const LANES: usize = 16;
    pub const WINDOW: usize = 32;
    /// The layout is built only while it holds at most this many slots per stored entry.
    pub const MAX_EXPANSION: usize = 5;

    fn with(self, values: BlockValues) -> Self {
        RowBlocks { values, ..self }
    }

    /// Every slot's value as f32, step by step (zeros where padded).
    pub fn slot_values(&self) -> Vec<f32> {
        match &self.values {
            BlockValues::F32(v) => v.iter().flat_map(|l| l.0).collect(),
            BlockValues::F16(v) => v
                .iter()
                .flat_map(|l| l.0.map(|b| half::f16::from_bits(b).to_f32()))
                .collect(),
            BlockValues::Bf16(v) => v
                .iter()
                .flat_map(|l| l.0.map(|b| half::bf16::from_bits(b).to_f32()))
                .collect(),
            BlockValues::Codes { codes, scales } => {
                // A step's scales are those of the block whose windows list it.
                let mut out = Vec::with_capacity(codes.len() * Self::LANES);
                for (b, span) in self.block_windows.windows(2).enumerate() {
                    for &(_, first, n) in &self.windows[span[0] as usize..span[1] as usize] {
                        for step in &codes[first as usize..(first + n) as usize] {
                            for (j, &c) in step.0.iter().enumerate() {
                                out.push(scales[b].0[j] * c as f32);
                            }
                        }
                    }
                }
                out
            }
            BlockValues::Book { codes, table } => codes
                .iter()
                .flat_map(|l| l.0.map(|c| table[c as u8 as usize % 32]))
                .collect(),
        }
    }
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
            derived: DerivedColumns::default(),
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

    /// The derived absolute column of every entry (`None` for dense layers), built on first
    /// use: see `DerivedColumns`.
    pub fn entry_columns(&self) -> Option<&EntryColumns> {
        if matches!(self.index, Indexing::Dense) {
            return None;
        }
        Some(self.derived.columns.get_or_init(|| {
            let mut cols = Vec::with_capacity(self.entries);
            let mut row = Vec::new();
            for r in 0..self.rows {
                self.row_columns(r, &mut row);
                cols.extend_from_slice(&row);
            }
            let bound = cols.iter().max().map_or(0, |&c| c as usize + 1);
            EntryColumns { cols, bound }
        }))
    }

    /// The derived row-block layout (`RowBlocks`) of a sparse layer with f32, f16 or bf16 values,
    /// uniform codes with one scale per row or a codebook of up to 32 entries, built on
    /// first use; `None` for other layers and when the padding would exceed
    /// `RowBlocks::MAX_EXPANSION` slots per entry.
    pub fn row_blocks(&self) -> Option<&RowBlocks> {
        let per_row = |g: &Granularity| matches!(g, Granularity::Tensor | Granularity::Channel);
        match &self.values {
            ValueStore::F32(_) | ValueStore::F16(_) | ValueStore::Bf16(_) => {}
            ValueStore::Uniform { granularity, .. } if per_row(granularity) => {}
            ValueStore::Codebook { bits, .. } if *bits <= 5 => {}
            _ => return None,
        }
        let ec = self.entry_columns()?;
        self.derived
            .blocks
            .get_or_init(|| {
                let c = &ec.cols;
                match &self.values {
                    ValueStore::F32(v) => build_row_blocks(self, v, c).map(|(rb, vs)| {
                        rb.with(BlockValues::F32(vs.into_iter().map(Lanes).collect()))
                    }),
                    ValueStore::F16(v) => build_row_blocks(self, v, c).map(|(rb, vs)| {
                        rb.with(BlockValues::F16(vs.into_iter().map(HalfLanes).collect()))
                    }),
                    ValueStore::Bf16(v) => build_row_blocks(self, v, c).map(|(rb, vs)| {
                        rb.with(BlockValues::Bf16(vs.into_iter().map(HalfLanes).collect()))
                    }),
                    ValueStore::Uniform { .. } => self.code_row_blocks(c),
                    ValueStore::Codebook { .. } => self.book_row_blocks(c),
                }
            })
            .as_ref()
    }

    /// `RowBlocks` of codebook indices (`BlockValues::Book`); `None` for codebooks of more
    /// than 32 entries, when all 32 are non-zero (no index can stand for the padding), or when
    /// the padding is too large.
    fn book_row_blocks(&self, cols: &[u32]) -> Option<RowBlocks> {
        let ValueStore::Codebook {
            bits,
            codes: packed,
            codebook,
        } = &self.values
        else {
            return None;
        };
        if codebook.len() > 32 {
            return None;
        }
        let mut table = [0f32; 32];
        table[..codebook.len()].copy_from_slice(codebook);
        // Entry 0 must be 0.0, the value of padded slots: swap in the first zero entry.
        let zero = table.iter().position(|&v| v == 0.0)?;
        table.swap(0, zero);
        let remap = |c: u8| -> i8 {
            let c = c as usize;
            let c = if c == 0 {
                zero
            } else if c == zero {
                0
            } else {
                c
            };
            c as i8
        };
        let mut raw = vec![0u8; self.entries];
        pack::unpack_codes(packed, *bits, 0, &mut raw);
        let idx: Vec<i8> = raw.into_iter().map(remap).collect();
        let (rb, vs) = build_row_blocks(self, &idx, cols)?;
        Some(rb.with(BlockValues::Book {
            codes: vs.into_iter().map(CodeLanes).collect(),
            table,
        }))
    }

    /// `RowBlocks` of uniform codes with one scale per row (`BlockValues::Codes`); `None` when
    /// a centred code does not fit i8 or the padding is too large.
    fn code_row_blocks(&self, cols: &[u32]) -> Option<RowBlocks> {
        let ValueStore::Uniform {
            bits,
            codes: packed,
            scales,
            zero_points,
            granularity,
        } = &self.values
        else {
            return None;
        };
        let mut raw = vec![0u8; self.entries];
        pack::unpack_codes(packed, *bits, 0, &mut raw);
        let mut centred = vec![0i8; self.entries];
        let mut row_scale = vec![0f32; self.rows];
        for (r, rs) in row_scale.iter_mut().enumerate() {
            let g = granularity.group_of(r, 0, self.cols);
            let z = zero_points.get(g, *bits);
            *rs = scales[g];
            for k in self.row_entries(r) {
                centred[k] = i8::try_from(i32::from(raw[k]) - z).ok()?;
            }
        }
        let (rb, vs) = build_row_blocks(self, &centred, cols)?;
        const L: usize = RowBlocks::LANES;
        let scales = (0..self.rows.div_ceil(L))
            .map(|b| {
                Lanes(std::array::from_fn(|j| {
                    row_scale.get(b * L + j).copied().unwrap_or(0.0)
                }))
            })
            .collect();
        Some(rb.with(BlockValues::Codes {
            codes: vs.into_iter().map(CodeLanes).collect(),
            scales,
        }))
    }

    /// The 8-bit integer form of a layer with quantized inputs and uniform weight codes
    /// (`Int8Layer`, zeros where pruned: one instruction does 64 products, where the sparse
    /// integer kernel does one per kept weight), built on first use; `None` when the inputs are
    /// not quantized or the weights do not qualify.
    pub fn int8(&self) -> Option<&Int8Layer> {
        let a = self.activation?;
        if a.bits > 8 || !(0..1i32 << a.bits).contains(&a.zero_point) {
            return None;
        }
        self.derived
            .int8
            .get_or_init(|| Int8Layer::build(self))
            .as_ref()
    }

    /// The derived bit-plane layout (`BitPlanes`) of a dense layer of uniform codes with one
    /// scale per row, for the widths without a kernel of their own (1–3 bits, and 5–7 bits with
    /// an even row length), built on first use; `None` for other layers.
    pub fn bit_planes(&self) -> Option<&BitPlanes> {
        let ValueStore::Uniform {
            bits,
            codes,
            granularity: Granularity::Tensor | Granularity::Channel,
            ..
        } = &self.values
        else {
            return None;
        };
        let cols = self.cols;
        let split = match bits {
            1..=3 => false,
            5..=7 if cols.is_multiple_of(2) => true,
            _ => return None,
        };
        if !matches!(self.index, Indexing::Dense) {
            return None;
        }
        self.derived
            .planes
            .get_or_init(|| {
                let low = if split { 4 } else { 0 };
                let planes = *bits as usize - low;
                let per_row = cols.div_ceil(16) * planes;
                let mut masks = vec![0u16; self.rows * per_row];
                let mut nibbles = vec![0u8; if split { self.rows * cols / 2 } else { 0 }];
                let mut row = vec![0u8; cols];
                for (r, out) in masks.chunks_exact_mut(per_row.max(1)).enumerate() {
                    pack::unpack_codes(codes, *bits, r * cols, &mut row);
                    for (run, m) in row.chunks(16).zip(out.chunks_exact_mut(planes)) {
                        for (i, &c) in run.iter().enumerate() {
                            for (plane, mask) in m.iter_mut().enumerate() {
                                *mask |= u16::from((c >> (low + plane)) & 1) << i;
                            }
                        }
                    }
                    if split {
                        let half = cols / 2;
                        for (b, pair) in nibbles[r * half..(r + 1) * half]
                            .iter_mut()
                            .zip(row.chunks_exact(2))
                        {
                            *b = (pair[0] & 0xF) | (pair[1] & 0xF) << 4;
                        }
                    }
                }
                Some(BitPlanes {
                    planes,
                    per_row,
                    masks,
                    nibbles,
                })
            })
            .as_ref()
    }

    /// Stored entries per weight (`1` for dense layers; CSR padding entries count).
    pub fn density(&self) -> f64 {
        self.entries as f64 / (self.rows * self.cols).max(1) as f64
    }

    /// The whole matrix dequantized into the matrix product's row-panel layout
    /// (`gemm::row_panels`), built on first use by a batched run: the batched kernels multiply
    /// by it at full speed whatever the storage format, and single-sample runs never build it.
    /// It costs `rows × cols × 4` bytes of memory at run time, never stored.
    pub fn gemm_panels(&self) -> &[f32] {
        self.derived.panels.get_or_init(|| {
            let mut out = Vec::new();
            gemm::row_panels(&self.dequantized(), self.rows, self.cols, &mut out);
            out
        })
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
    pub fn check(&self) -> Result<(), String> {
        let (rows, cols) = (self.rows, self.cols);
        let positions = rows
            .checked_mul(cols)
            .ok_or_else(|| format!("{rows}×{cols} positions overflow"))?;
        match &self.index {
            Indexing::Dense => {
                if self.entries != positions {
                    return Err(format!(
                        "dense layer holds {} entries, expected {positions}",
                        self.entries
                    ));
                }
            }
            Indexing::Csr {
                gap_bits,
                gaps,
                row_ptr,
            } => self.check_csr(*gap_bits, gaps, row_ptr)?,
            Indexing::Bitmask { mask, row_start } => {
                if mask.len() != positions.div_ceil(8) {
                    return Err(format!(
                        "mask takes {} bytes, expected {}",
                        mask.len(),
                        positions.div_ceil(8)
                    ));
                }
                // `row_start` is derived from the mask, never stored: it must be exactly that.
                if *row_start != bitmask_row_start(mask, rows, cols) {
                    return Err("row starts do not match the mask".into());
                }
                if row_start.last().is_none_or(|&n| n as usize != self.entries) {
                    return Err(format!(
                        "mask has {} set bits, but {} values are stored",
                        row_start.last().copied().unwrap_or(0),
                        self.entries
                    ));
                }
            }
        }
        self.check_values()?;
        if let Some(b) = &self.bias
            && b.len() != rows
        {
            return Err(format!("{} biases, expected {rows}", b.len()));
        }
        Ok(())
    }

    /// The CSR index: its row pointers whole first (`0` first, never decreasing, the entry
    /// count last, hence every one inside the entries), then each row's columns.
    fn check_csr(&self, gap_bits: u8, gaps: &[u8], row_ptr: &RowPtr) -> Result<(), String> {
        let (rows, cols) = (self.rows, self.cols);
        if ![4, 8, 16].contains(&gap_bits) {
            return Err(format!("gap width {gap_bits} is not 4, 8 or 16"));
        }
        if Some(row_ptr.len()) != rows.checked_add(1) {
            return Err(format!(
                "row_ptr has {} values, expected {rows} + 1",
                row_ptr.len()
            ));
        }
        let need = self
            .entries
            .checked_mul(gap_bits as usize)
            .map(|b| b.div_ceil(8));
        if need != Some(gaps.len()) {
            return Err(format!(
                "gaps take {} bytes, expected {} {gap_bits}-bit gaps",
                gaps.len(),
                self.entries
            ));
        }
        if row_ptr.get(0) != 0 {
            return Err(format!("row_ptr starts at {}, not 0", row_ptr.get(0)));
        }
        if let Some(r) = (0..rows).find(|&r| row_ptr.get(r + 1) < row_ptr.get(r)) {
            return Err(format!(
                "row_ptr decreases at row {r} ({} then {})",
                row_ptr.get(r),
                row_ptr.get(r + 1)
            ));
        }
        if row_ptr.get(rows) != self.entries {
            return Err(format!(
                "row_ptr ends at {}, but {} entries are stored",
                row_ptr.get(rows),
                self.entries
            ));
        }
        // Every row pointer now lies in `0..=entries`: the rows can be read.
        let mut buf = Vec::new();
        for r in 0..rows {
            self.row_columns(r, &mut buf);
            // Columns increase within a row, so the last one is the largest.
            if buf.last().is_some_and(|&c| c as usize >= cols) {
                return Err(format!("row {r} has a column index past {cols}"));
            }
        }
        Ok(())
    }

    /// The value store against the entry count and the shape's scale groups.
    fn check_values(&self) -> Result<(), String> {
        let n = self.entries;
        match &self.values {
            ValueStore::F32(v) if v.len() != n => Err(format!("{} values, expected {n}", v.len())),
            ValueStore::F16(v) | ValueStore::Bf16(v) if v.len() != n => {
                Err(format!("{} values, expected {n}", v.len()))
            }
            ValueStore::Uniform {
                bits,
                codes,
                scales,
                zero_points,
                granularity,
            } => {
                check_codes(*bits, codes, n)?;
                if let Granularity::Group { size: 0 } = granularity {
                    return Err("group size 0".into());
                }
                let groups = granularity.group_count(self.rows, self.cols);
                if scales.len() != groups {
                    return Err(format!("{} scales, expected {groups}", scales.len()));
                }
                let zp = match zero_points {
                    ZeroPoints::Midpoint => groups,
                    ZeroPoints::U8(v) => v.len(),
                    ZeroPoints::I32(v) => v.len(),
                };
                if zp != groups {
                    return Err(format!("{zp} zero points, expected {groups}"));
                }
                // The kernels subtract zero points from codes in i32 and convert them to f32:
                // both stay exact within ±2^24, far beyond any code range.
                if let ZeroPoints::I32(v) = zero_points
                    && let Some(g) = v.iter().position(|z| z.unsigned_abs() > 1 << 24)
                {
                    return Err(format!("zero point {} of group {g} is out of range", v[g]));
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
                    return Err(format!(
                        "codebook of {} entries for {bits}-bit codes",
                        codebook.len()
                    ));
                }
                let mut buf = vec![0u8; n];
                pack::unpack_codes(codes, *bits, 0, &mut buf);
                if let Some(bad) = buf.iter().position(|&c| c as usize >= codebook.len()) {
                    return Err(format!("code at entry {bad} is past the codebook"));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn check_codes(bits: u8, codes: &[u8], n: usize) -> Result<(), String> {
    if !(1..=8).contains(&bits) {
        return Err(format!("{bits}-bit codes (1 to 8 supported)"));
    }
    if n.checked_mul(bits as usize).map(|b| b.div_ceil(8)) != Some(codes.len()) {
        return Err(format!(
            "codes take {} bytes, expected {n} {bits}-bit codes",
            codes.len()
        ));
    }
    Ok(())
}

/// `RowBlocks` of a sparse layer whose entry `k` sits in column `cols[k]` with value
/// `vals[k]`, or `None` when it would take too many padded slots.
fn build_row_blocks<T: Copy + Default>(
    layer: &PackedLayer,
    vals: &[T],
    cols: &[u32],
) -> Option<(RowBlocks, Vec<[T; RowBlocks::LANES]>)> {
    const L: usize = RowBlocks::LANES;
    const W: usize = RowBlocks::WINDOW;
    if vals.len() < layer.entries || cols.len() < layer.entries {
        return None;
    }
    let nwin = layer.cols.div_ceil(W);
    let mut out = RowBlocks {
        block_windows: vec![0],
        ..Default::default()
    };
    let mut values = Vec::new();
    // Per lane: the entries of its row, walked window by window.
    let mut next = [0usize; L];
    let mut end = [0usize; L];
    let mut steps = 0usize;
    for b in 0..layer.rows.div_ceil(L) {
        for (j, (n, e)) in next.iter_mut().zip(end.iter_mut()).enumerate() {
            let r = b * L + j;
            let range = if r < layer.rows {
                layer.row_entries(r)
            } else {
                0..0
            };
            (*n, *e) = (range.start, range.end);
        }
        for w in 0..nwin {
            let first = steps;
            loop {
                let mut any = false;
                let mut offs = [0u8; L];
                let mut vs = [T::default(); L];
                for j in 0..L {
                    if next[j] < end[j] && cols[next[j]] as usize / W == w {
                        offs[j] = (cols[next[j]] as usize % W) as u8;
                        vs[j] = vals[next[j]];
                        next[j] += 1;
                        any = true;
                    }
                }
                if !any {
                    break;
                }
                out.offsets.extend_from_slice(&offs);
                values.push(vs);
                steps += 1;
            }
            if steps > first {
                out.windows
                    .push((w as u32, first as u32, (steps - first) as u32));
            }
        }
        // Columns beyond the last window never occur (they are < cols), so every entry of the
        // block has been placed.
        if next.iter().zip(&end).any(|(n, e)| n != e) {
            return None;
        }
        out.block_windows.push(out.windows.len() as u32);
        if steps * L > RowBlocks::MAX_EXPANSION * layer.entries.max(1) {
            return None;
        }
    }
    Some((out, values))
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
