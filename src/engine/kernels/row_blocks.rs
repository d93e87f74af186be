//! One input column through a sparse layer as 16-row blocks over 32-column windows, laid out
//! when the layer is prepared from its stored entries (`RowBlocks`): one permute picks 16 rows'
//! inputs from a window held in two registers, one FMA multiplies them by the values (half
//! precision widened, codes stored as `code − zero point` and scaled once per row at the end,
//! codebook indices looked up with one more permute). AVX-512 only; the layout is derived in
//! the layer's own value precision and costs memory at run time, never stored bytes.

use super::super::format::{PackedLayer, ValueStore};
use super::super::pack;
#[cfg(target_arch = "x86_64")]
use super::common::KernelScratch;
use super::gathered::EntryColumns;
use crate::compress::Granularity;
#[cfg(target_arch = "x86_64")]
use crate::engine::cpu::Avx512;

/// Rows rearranged for the single-column kernel: rows are taken `LANES` at a time (lane
/// `j` = row `16·b + j`) and columns in windows of `WINDOW`. Within block `b` and window `w`,
/// step `s` holds for every lane its row's `s`-th entry in that window (column offset in the
/// window and value), or a zero value when the row has fewer: a kernel loads the window of `x`
/// into two registers, picks each lane's input with one in-register permutation and multiplies
/// 16 rows at once, so no memory gathers are needed. Holds a copy of the values (plus the
/// zero padding), so it is built only when the padding stays small.
#[derive(Debug, Clone, Default)]
pub struct RowBlocks {
    /// Per block, the range of `windows` it uses.
    block_windows: Vec<u32>,
    /// `(window, first step, steps)` for every window a block touches.
    windows: Vec<(u32, u32, u32)>,
    /// Column offset within the window, `LANES` per step.
    offsets: Vec<u8>,
    /// Values, `LANES` per step (0 in padded lanes), in the layer's own value type.
    values: BlockValues,
}

/// `RowBlocks`' values as the layer stores them: f32, or f16/bf16 bits the kernel widens in
/// registers (so a half-precision layer's blocks hold half-precision values).
#[derive(Debug, Clone)]
enum BlockValues {
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
struct Lanes([f32; RowBlocks::LANES]);

/// One step of centred codes: sixteen bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(C, align(16))]
struct CodeLanes([i8; RowBlocks::LANES]);

/// One step of half-precision values (bits): sixteen on half a cache line.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(C, align(32))]
struct HalfLanes([u16; RowBlocks::LANES]);

impl RowBlocks {
    pub const LANES: usize = 16;
    pub const WINDOW: usize = 32;
    /// The layout is built only while it holds at most this many slots per stored entry.
    pub const MAX_EXPANSION: usize = 5;

    fn with(self, values: BlockValues) -> Self {
        RowBlocks { values, ..self }
    }

    /// The row-block layout of a sparse layer with f32, f16 or bf16 values, uniform codes with
    /// one scale per row or a codebook of up to 32 entries; `None` for other layers and when
    /// the padding would exceed `MAX_EXPANSION` slots per entry.
    pub fn build(layer: &PackedLayer) -> Option<RowBlocks> {
        Self::from_columns(layer, &EntryColumns::of(layer)?)
    }

    /// `build` over the layer's entry columns (`EntryColumns::of`).
    fn from_columns(layer: &PackedLayer, ec: &EntryColumns) -> Option<RowBlocks> {
        let per_row = |g: &Granularity| matches!(g, Granularity::Tensor | Granularity::Channel);
        match &layer.values {
            ValueStore::F32(_) | ValueStore::F16(_) | ValueStore::Bf16(_) => {}
            ValueStore::Uniform { granularity, .. } if per_row(granularity) => {}
            ValueStore::Codebook { bits, .. } if *bits <= 5 => {}
            _ => return None,
        }
        let c = &ec.cols;
        match &layer.values {
            ValueStore::F32(v) => build_row_blocks(layer, v, c)
                .map(|(rb, vs)| rb.with(BlockValues::F32(vs.into_iter().map(Lanes).collect()))),
            ValueStore::F16(v) => build_row_blocks(layer, v, c)
                .map(|(rb, vs)| rb.with(BlockValues::F16(vs.into_iter().map(HalfLanes).collect()))),
            ValueStore::Bf16(v) => build_row_blocks(layer, v, c).map(|(rb, vs)| {
                rb.with(BlockValues::Bf16(vs.into_iter().map(HalfLanes).collect()))
            }),
            ValueStore::Uniform { .. } => code_row_blocks(layer, c),
            ValueStore::Codebook { .. } => book_row_blocks(layer, c),
        }
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

/// `RowBlocks` of codebook indices (`BlockValues::Book`); `None` for codebooks of more
/// than 32 entries, when all 32 are non-zero (no index can stand for the padding), or when
/// the padding is too large.
fn book_row_blocks(layer: &PackedLayer, cols: &[u32]) -> Option<RowBlocks> {
    let ValueStore::Codebook {
        bits,
        codes: packed,
        codebook,
    } = &layer.values
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
    let mut raw = vec![0u8; layer.entries];
    pack::unpack_codes(packed, *bits, 0, &mut raw);
    let idx: Vec<i8> = raw.into_iter().map(remap).collect();
    let (rb, vs) = build_row_blocks(layer, &idx, cols)?;
    Some(rb.with(BlockValues::Book {
        codes: vs.into_iter().map(CodeLanes).collect(),
        table,
    }))
}

/// `RowBlocks` of uniform codes with one scale per row (`BlockValues::Codes`); `None` when
/// a centred code does not fit i8 or the padding is too large.
fn code_row_blocks(layer: &PackedLayer, cols: &[u32]) -> Option<RowBlocks> {
    let ValueStore::Uniform {
        bits,
        codes: packed,
        scales,
        zero_points,
        granularity,
    } = &layer.values
    else {
        return None;
    };
    let mut raw = vec![0u8; layer.entries];
    pack::unpack_codes(packed, *bits, 0, &mut raw);
    let mut centred = vec![0i8; layer.entries];
    let mut row_scale = vec![0f32; layer.rows];
    for (r, rs) in row_scale.iter_mut().enumerate() {
        let g = granularity.group_of(r, 0, layer.cols);
        let z = zero_points.get(g, *bits);
        *rs = scales[g];
        for k in layer.row_entries(r) {
            centred[k] = i8::try_from(i32::from(raw[k]) - z).ok()?;
        }
    }
    let (rb, vs) = build_row_blocks(layer, &centred, cols)?;
    const L: usize = RowBlocks::LANES;
    let scales = (0..layer.rows.div_ceil(L))
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

/// The single-column kernel over `RowBlocks`, plus the layer's bias. Made only by `new`, which
/// takes the `Avx512` token.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone)]
pub(super) struct BlockRows {
    rows: usize,
    cols: usize,
    blocks: RowBlocks,
    bias: Option<Vec<f32>>,
}

#[cfg(target_arch = "x86_64")]
impl BlockRows {
    /// Over `ec`, the layer's entry columns; `None` where `RowBlocks` are not built.
    pub(super) fn new(layer: &PackedLayer, ec: &EntryColumns, _: Avx512) -> Option<Self> {
        Some(BlockRows {
            rows: layer.rows,
            cols: layer.cols,
            blocks: RowBlocks::from_columns(layer, ec)?,
            bias: layer.bias.clone(),
        })
    }

    pub(super) fn run(&self, x: &[f32], y: &mut [f32], s: &mut KernelScratch) {
        // The input zero-padded to whole windows, so every window loads unmasked.
        let width = self.cols.div_ceil(RowBlocks::WINDOW) * RowBlocks::WINDOW;
        s.xpad.clear();
        s.xpad.extend_from_slice(&x[..self.cols]);
        s.xpad.resize(width, 0.0);
        let y = &mut y[..self.rows];
        // SAFETY: a `BlockRows` exists only where an `Avx512` token vouched for AVX-512
        // F/BW/VL, the features the kernel enables; it bounds every access itself.
        unsafe { x86::row_blocks_dot(&self.blocks, &s.xpad, y) };
        if let Some(bias) = &self.bias {
            for (yv, bv) in y.iter_mut().zip(bias) {
                *yv += bv;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BlockValues, Lanes, RowBlocks};
    use crate::engine::simd::widen_half;

    /// `y[r] = Σ_c W[r][c] · x[c]` for every row of a layer laid out as `RowBlocks`: per block
    /// of 16 rows and window of 32 columns, the window of `x` sits in two registers and each
    /// step picks every lane's input with one permutation (`vpermt2ps`), then one FMA serves 16
    /// rows (half-precision values widened first). `x` is the input zero-padded to whole
    /// windows (`xpad`, at least `32 ×` the windows the layer spans), so every window loads
    /// unmasked; `y` receives at most `y.len()` rows.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL (a `cpu::Avx512` token).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn row_blocks_dot(rb: &RowBlocks, xpad: &[f32], y: &mut [f32]) {
        // SAFETY: forwarded contract; each pointer is the start of `len` steps of its type.
        unsafe {
            match &rb.values {
                BlockValues::F32(v) => {
                    row_blocks_kernel::<0>(rb, v.as_ptr().cast(), v.len(), &[], &[0.0; 32], xpad, y)
                }
                BlockValues::F16(v) => {
                    row_blocks_kernel::<1>(rb, v.as_ptr().cast(), v.len(), &[], &[0.0; 32], xpad, y)
                }
                BlockValues::Bf16(v) => {
                    row_blocks_kernel::<2>(rb, v.as_ptr().cast(), v.len(), &[], &[0.0; 32], xpad, y)
                }
                BlockValues::Codes { codes, scales } => {
                    let (p, n) = (codes.as_ptr().cast(), codes.len());
                    row_blocks_kernel::<3>(rb, p, n, scales, &[0.0; 32], xpad, y)
                }
                BlockValues::Book { codes, table } => {
                    let (p, n) = (codes.as_ptr().cast(), codes.len());
                    row_blocks_kernel::<4>(rb, p, n, &[], table, xpad, y)
                }
            }
        }
    }

    /// `row_blocks_dot` over `len` steps of values at `vp0`: f32 (`V = 0`), f16 (`1`) or
    /// bf16 (`2`) bits, centred i8 codes (`3`) whose block sums are multiplied by that
    /// block's `scales` (a block without scales gives zeros), or indices into `table` (`4`).
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL; `vp0` points at `len` steps of 16 values of the type `V`
    /// names.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn row_blocks_kernel<const V: u8>(
        rb: &RowBlocks,
        vp0: *const u8,
        len: usize,
        scales: &[Lanes],
        table: &[f32; 32],
        xpad: &[f32],
        y: &mut [f32],
    ) {
        // SAFETY: `table` holds 32 f32.
        let (t0, t1) = unsafe {
            (
                _mm512_loadu_ps(table.as_ptr()),
                _mm512_loadu_ps(table.as_ptr().add(16)),
            )
        };
        const L: usize = RowBlocks::LANES;
        const W: usize = RowBlocks::WINDOW;
        let size = match V {
            0 => 4,
            1 | 2 => 2,
            _ => 1,
        };
        let steps = (rb.offsets.len() / L).min(len);
        let (op0, xp0) = (rb.offsets.as_ptr(), xpad.as_ptr());
        for (b, span) in rb.block_windows.windows(2).enumerate() {
            let mut a0 = _mm512_setzero_ps();
            let mut a1 = _mm512_setzero_ps();
            let mut a2 = _mm512_setzero_ps();
            let mut a3 = _mm512_setzero_ps();
            let Some(wins) = rb.windows.get(span[0] as usize..span[1] as usize) else {
                continue;
            };
            for &(w, first, n) in wins {
                let (base, first, n) = (w as usize * W, first as usize, n as usize);
                // A window outside the padded input or steps outside the layout (a malformed
                // layout) is skipped rather than read.
                if base + W > xpad.len() || first + n > steps {
                    continue;
                }
                // SAFETY: the window `base .. base + 32` lies in `xpad` and steps
                // `first .. first + n` in both step arrays (checked just above); the
                // permutation uses only the low 5 bits of each offset, a register index.
                unsafe {
                    let x0 = _mm512_loadu_ps(xp0.add(base));
                    let x1 = _mm512_loadu_ps(xp0.add(base + L));
                    let (op, vp) = (op0.add(first * L), vp0.add(first * L * size));
                    let pick = |s: usize| {
                        let i = _mm512_cvtepu8_epi32(_mm_loadu_si128(op.add(s * L).cast()));
                        _mm512_permutex2var_ps(x0, i, x1)
                    };
                    let val = |s: usize| {
                        let p = vp.add(s * L * size);
                        match V {
                            0 => _mm512_loadu_ps(p.cast()),
                            1 => widen_half::<false>(_mm256_loadu_si256(p.cast())),
                            2 => widen_half::<true>(_mm256_loadu_si256(p.cast())),
                            3 => {
                                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast())))
                            }
                            // The permutation reads the low 5 bits of each index.
                            _ => _mm512_permutex2var_ps(
                                t0,
                                _mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast())),
                                t1,
                            ),
                        }
                    };
                    let mut s = 0;
                    while s + 4 <= n {
                        a0 = _mm512_fmadd_ps(val(s), pick(s), a0);
                        a1 = _mm512_fmadd_ps(val(s + 1), pick(s + 1), a1);
                        a2 = _mm512_fmadd_ps(val(s + 2), pick(s + 2), a2);
                        a3 = _mm512_fmadd_ps(val(s + 3), pick(s + 3), a3);
                        s += 4;
                    }
                    if s + 2 <= n {
                        a0 = _mm512_fmadd_ps(val(s), pick(s), a0);
                        a1 = _mm512_fmadd_ps(val(s + 1), pick(s + 1), a1);
                        s += 2;
                    }
                    if s < n {
                        a2 = _mm512_fmadd_ps(val(s), pick(s), a2);
                    }
                }
            }
            let mut sum = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
            if V == 3 {
                sum = match scales.get(b) {
                    // SAFETY: `sc` holds exactly 16 f32.
                    Some(sc) => _mm512_mul_ps(sum, unsafe { _mm512_loadu_ps(sc.0.as_ptr()) }),
                    None => _mm512_setzero_ps(),
                };
            }
            let mut out = [0f32; L];
            // SAFETY: `out` holds exactly 16 f32.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), sum) };
            let start = (b * L).min(y.len());
            let end = (b * L + L).min(y.len());
            y[start..end].copy_from_slice(&out[..end - start]);
        }
    }
}
