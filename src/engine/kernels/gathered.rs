//! One or many input columns through a sparse layer (CSR or bitmask) over the absolute column
//! of every stored entry, derived when the layer is prepared (`EntryColumns`): the kernels
//! gather `x[col]` directly instead of walking the running sum of the narrow gaps or scanning
//! the mask. One column (`GatheredRows`): a gather dot per row, f32 values read in place,
//! f16/bf16 widened and codes unpacked in registers (AVX-512, VBMI), other values decoded per
//! row; half-precision bitmasks keeping a quarter of the weights or more expand each row's
//! values over its columns instead (`MaskRows`). Many columns (`GatheredBatch`): one axpy per
//! kept weight over the batch, so the work is proportional to the kept weights.

use std::sync::OnceLock;

use super::super::format::{Indexing, PackedLayer, ValueStore};
use super::super::gemm::ConvRhs;
use super::super::ops::{Cell, Clamp};
#[cfg(target_arch = "x86_64")]
use super::common::by_four_rows;
use super::common::{KernelScratch, bias_of, fill_bias};
#[cfg(target_arch = "x86_64")]
use super::unpack::{self, Levels, Width, book_table};
use crate::compress::Granularity;
use crate::engine::cpu::{Avx512, Isa};

/// Absolute columns of a sparse layer's entries and a bound on them.
#[derive(Debug, Clone, Default)]
pub struct EntryColumns {
    /// Column of entry `k`, for every stored entry (CSR padding entries included), in entry
    /// order.
    pub cols: Vec<u32>,
    /// One past the largest column (0 when there are no entries).
    pub bound: usize,
}

impl EntryColumns {
    /// The columns of a sparse layer's entries; `None` for dense layers.
    pub fn of(layer: &PackedLayer) -> Option<EntryColumns> {
        if layer.is_dense() {
            return None;
        }
        let mut cols = Vec::with_capacity(layer.entries);
        let mut row = Vec::new();
        for r in 0..layer.rows {
            layer.row_columns(r, &mut row);
            cols.extend_from_slice(&row);
        }
        let bound = cols.iter().max().map_or(0, |&c| c as usize + 1);
        Some(EntryColumns { cols, bound })
    }

    /// Whether the vector gathers may read `x[col]` for every column of an input of `cols`
    /// values: every column inside it and addressable by a 32-bit lane.
    fn gatherable(&self, cols: usize) -> bool {
        self.bound <= cols && self.bound <= i32::MAX as usize
    }
}

/// Each row's first entry, and one past the last row's: `rows + 1` offsets (a stored layer's
/// rows follow each other from entry 0).
fn row_starts(layer: &PackedLayer) -> Vec<usize> {
    std::iter::once(0)
        .chain((0..layer.rows).map(|r| layer.row_entries(r).end))
        .collect()
}

/// How `GatheredRows` turns a row's entries into weights.
#[derive(Debug, Clone)]
enum Weights {
    /// f32 values read in place (gathered with AVX-512 when the token is there).
    F32 {
        values: Vec<f32>,
        avx512: Option<Avx512>,
    },
    /// f16 or bf16 bits widened in registers. Made only with an `Avx512` token.
    #[cfg(target_arch = "x86_64")]
    Half { values: Vec<u16>, bf: bool },
    /// Codes unpacked in registers, uniform codes with one scale per row (`scale`, `zero` per
    /// row) or a codebook repeated over 256 entries. Made only with a `Vbmi` token.
    #[cfg(target_arch = "x86_64")]
    Packed {
        width: Width,
        codes: Vec<u8>,
        levels: PackedLevels,
    },
    /// Any value store, each row decoded into a buffer first (gathered with AVX-512 when the
    /// token is there).
    Decoded {
        layer: Box<PackedLayer>,
        avx512: Option<Avx512>,
    },
}

#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone)]
enum PackedLevels {
    Book(Box<[f32; 256]>),
    Affine { scale: Vec<f32>, zero: Vec<f32> },
}

/// One input column through a sparse layer: per row, `Σ w_k · x[col_k]` over its entries.
#[derive(Debug, Clone)]
pub(super) struct GatheredRows {
    rows: usize,
    cols: usize,
    columns: Vec<u32>,
    starts: Vec<usize>,
    weights: Weights,
    bias: Option<Vec<f32>>,
}

impl GatheredRows {
    /// Over `ec`, the layer's entry columns (`EntryColumns::of`).
    pub(super) fn new(layer: &PackedLayer, ec: EntryColumns, isa: Isa) -> Self {
        // Vector gathers only where every column lies inside the input.
        let avx512 = isa.avx512.filter(|_| ec.gatherable(layer.cols));
        let weights = match (&layer.values, avx512) {
            (ValueStore::F32(v), _) => Weights::F32 {
                values: v.clone(),
                avx512,
            },
            #[cfg(target_arch = "x86_64")]
            (ValueStore::F16(v) | ValueStore::Bf16(v), Some(_)) => Weights::Half {
                values: v.clone(),
                bf: matches!(layer.values, ValueStore::Bf16(_)),
            },
            #[cfg(target_arch = "x86_64")]
            (
                ValueStore::Uniform {
                    bits,
                    codes,
                    scales,
                    zero_points,
                    granularity: granularity @ (Granularity::Tensor | Granularity::Channel),
                },
                Some(_),
            ) if isa.vbmi.is_some()
                && let Some(width) = Width::new(*bits) =>
            {
                let group = |r: usize| granularity.group_of(r, 0, layer.cols);
                Weights::Packed {
                    width,
                    codes: codes.clone(),
                    levels: PackedLevels::Affine {
                        scale: (0..layer.rows).map(|r| scales[group(r)]).collect(),
                        zero: (0..layer.rows)
                            .map(|r| zero_points.get(group(r), *bits) as f32)
                            .collect(),
                    },
                }
            }
            #[cfg(target_arch = "x86_64")]
            (
                ValueStore::Codebook {
                    bits,
                    codes,
                    codebook,
                },
                Some(_),
            ) if isa.vbmi.is_some()
                && let Some(width) = Width::new(*bits) =>
            {
                Weights::Packed {
                    width,
                    codes: codes.clone(),
                    levels: PackedLevels::Book(Box::new(book_table(*bits, codebook))),
                }
            }
            _ => Weights::Decoded {
                layer: Box::new(layer.clone()),
                avx512,
            },
        };
        GatheredRows {
            rows: layer.rows,
            cols: layer.cols,
            columns: ec.cols,
            starts: row_starts(layer),
            weights,
            bias: layer.bias.clone(),
        }
    }

    pub(super) fn run(&self, x: &[f32], y: &mut [f32], s: &mut KernelScratch) {
        // Every column is below `cols` when the vector gathers were chosen (`new`).
        let x = &x[..self.cols];
        for r in 0..self.rows {
            let range = self.starts[r]..self.starts[r + 1];
            let idx = &self.columns[range.clone()];
            let d = match &self.weights {
                Weights::F32 { values, avx512 } => gather(*avx512, &values[range], idx, x),
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Half` is made only with an `Avx512` token (AVX-512 F/BW/VL, the
                // features the kernel enables) and only when every column is below `cols`
                // and 2^31 (`new`); `x` holds `cols` values.
                Weights::Half { values, bf: true } => unsafe {
                    x86::gather_half::<true>(&values[range], idx, x)
                },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as for `bf: true`.
                Weights::Half { values, bf: false } => unsafe {
                    x86::gather_half::<false>(&values[range], idx, x)
                },
                #[cfg(target_arch = "x86_64")]
                Weights::Packed {
                    width,
                    codes,
                    levels,
                } => {
                    let levels = match levels {
                        PackedLevels::Book(book) => Levels::Book(book),
                        PackedLevels::Affine { scale, zero } => Levels::Affine {
                            seg: usize::MAX,
                            scales: [&scale[r..r + 1]; 4],
                            zeros: [&zero[r..r + 1]; 4],
                        },
                    };
                    // SAFETY: `Packed` is made only with a `Vbmi` token (AVX-512 F/BW/VL/VBMI,
                    // the features the kernel enables) and only when every column is below
                    // `cols` and 2^31 (`new`); `x` holds `cols` values; row 0 of `levels` has
                    // a scale and a zero point.
                    unsafe { unpack::packed_gather(*width, codes, range.start, idx, levels, x) }
                }
                Weights::Decoded { layer, avx512 } => {
                    let n = range.len();
                    s.vals.resize(n.max(1), 0.0);
                    layer.decode_values(range, r, Some(idx), &mut s.codes, &mut s.vals);
                    gather(*avx512, &s.vals[..n], idx, x)
                }
            };
            y[r] = d + bias_of(&self.bias, r);
        }
    }
}

/// `Σ vals[k] · x[idx[k]]`, with AVX-512 gathers when the token is there.
#[inline]
fn gather(avx512: Option<Avx512>, vals: &[f32], idx: &[u32], x: &[f32]) -> f32 {
    match avx512 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the token vouches for AVX-512 F/BW/VL, the features the kernel enables; the
        // callers pass one only when every column is below `x.len()` and 2^31
        // (`EntryColumns::gatherable`).
        Some(_) => unsafe { x86::gather_dot(vals, idx, x) },
        _ => gather_dot(vals, idx, x),
    }
}

/// Σ vals[k] · x[idx[k]].
#[inline]
fn gather_dot(vals: &[f32], idx: &[u32], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let n = vals.len().min(idx.len());
    let mut k = 0;
    while k + 8 <= n {
        for j in 0..8 {
            acc[j] = vals[k + j].mul_add(x[idx[k + j] as usize], acc[j]);
        }
        k += 8;
    }
    let mut t = 0f32;
    while k < n {
        t = vals[k].mul_add(x[idx[k] as usize], t);
        k += 1;
    }
    acc.iter().sum::<f32>() + t
}

/// One input column through a half-precision bitmask layer keeping at least a quarter of its
/// weights: per 16 columns, each row's next values are widened and expanded into the set lanes
/// (`vexpandps`), then multiplied with the dense input, four rows per pass: no gathers. Made
/// only by `new`, which takes the `Avx512` token.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone)]
pub(super) struct MaskRows {
    rows: usize,
    cols: usize,
    mask: Vec<u8>,
    starts: Vec<usize>,
    values: Vec<u16>,
    bf: bool,
    bias: Option<Vec<f32>>,
}

#[cfg(target_arch = "x86_64")]
impl MaskRows {
    /// `None` unless the layer is a bitmask of f16 or bf16 values keeping at least a quarter of
    /// its weights (and its columns, `ec`, lie inside the input).
    pub(super) fn new(layer: &PackedLayer, ec: &EntryColumns, _: Avx512) -> Option<Self> {
        let (Indexing::Bitmask { mask, .. }, ValueStore::F16(v) | ValueStore::Bf16(v)) =
            (&layer.index, &layer.values)
        else {
            return None;
        };
        let dense_enough = layer.entries * 4 >= layer.rows * layer.cols;
        (dense_enough && ec.gatherable(layer.cols)).then(|| MaskRows {
            rows: layer.rows,
            cols: layer.cols,
            mask: mask.clone(),
            starts: row_starts(layer),
            values: v.clone(),
            bf: matches!(layer.values, ValueStore::Bf16(_)),
            bias: layer.bias.clone(),
        })
    }

    pub(super) fn run(&self, x: &[f32], y: &mut [f32]) {
        let cols = self.cols;
        let x = &x[..cols];
        by_four_rows(self.rows, &self.bias, y, |ks| {
            let vals = ks.map(|r| &self.values[self.starts[r]..self.starts[r + 1]]);
            let bits = ks.map(|r| r * cols);
            // SAFETY: a `MaskRows` exists only where an `Avx512` token vouched for AVX-512
            // F/BW/VL, the features the kernel enables; it bounds its loads by the slices.
            unsafe {
                if self.bf {
                    x86::rows4_mask_half::<true>(&self.mask, bits, vals, cols, x)
                } else {
                    x86::rows4_mask_half::<false>(&self.mask, bits, vals, cols, x)
                }
            }
        });
    }
}

/// Many input columns through a sparse layer: `y[r] = bias[r] + Σ_k w_k · B[col_k]`, one axpy
/// of a batch row per kept weight (f32 values read in place, others decoded per row).
#[derive(Debug, Clone)]
pub(super) struct GatheredBatch {
    rows: usize,
    columns: Vec<u32>,
    starts: Vec<usize>,
    /// `columns` as 16-bit numbers, where they fit and the values are read in place: `run`'s
    /// four-row sums stream 6 bytes per kept weight instead of 8 (a single sample through a
    /// layer whose weights are not in the caches waits on that stream).
    narrow: Option<Vec<u16>>,
    /// One past the largest column.
    bound: usize,
    /// Where `run_conv`'s kept weights read in its padded planes, for the one geometry a layer
    /// runs at: found on the first call rather than on every sample.
    offsets: OnceLock<(TapGeometry, Vec<usize>)>,
    /// The rows by their count of kept weights, so that the four rows `run` sums side by side
    /// have about as many each.
    order: Vec<usize>,
    /// f32 values read in place, or the stored layer, decoded row by row.
    values: Result<Vec<f32>, Box<PackedLayer>>,
    bias: Option<Vec<f32>>,
}

impl GatheredBatch {
    /// Over `ec`, the layer's entry columns (`EntryColumns::of`).
    pub(super) fn new(layer: &PackedLayer, ec: EntryColumns) -> Self {
        let starts = row_starts(layer);
        let mut order: Vec<usize> = (0..layer.rows).collect();
        order.sort_by_key(|&r| starts[r + 1] - starts[r]);
        let f32_values = matches!(layer.values, ValueStore::F32(_));
        let narrow = (f32_values && ec.bound <= 1 << 16)
            .then(|| ec.cols.iter().map(|&c| c as u16).collect());
        GatheredBatch {
            rows: layer.rows,
            columns: ec.cols,
            starts,
            narrow,
            bound: ec.bound,
            offsets: OnceLock::new(),
            order,
            values: match &layer.values {
                ValueStore::F32(v) => Ok(v.clone()),
                _ => Err(Box::new(layer.clone())),
            },
            bias: layer.bias.clone(),
        }
    }

    /// `y (rows × p) = bias + W · b` for `b` (`cols × p`): under 64 columns (a convolution
    /// over 4 × 4 positions), four rows at a time (`sparse_rows4_batch`), the last few one at
    /// a time; otherwise row by row.
    pub(super) fn run(&self, b: &[f32], p: usize, y: &mut [f32], s: &mut KernelScratch) {
        assert!(
            b.len() >= self.bound * p && y.len() >= self.rows * p,
            "sparse layer operands too short"
        );
        fill_bias(&self.bias, 0..self.rows, p, y);
        // From 64 columns on, a row's tile holds four registers, four sums in flight already;
        // and rows of a few kept weights each (a 1×1 convolution over a few dozen channels)
        // have short sums that a quad's setup would outweigh: those run one row at a time.
        let four = p < 64 && self.starts[self.rows] >= QUAD_MIN_KEPT * self.rows;
        if !four {
            for r in 0..self.rows {
                self.row(r, b, p, y, s);
            }
            return;
        }
        let (quads, rest) = self.order.split_at(self.rows / 4 * 4);
        for quad in quads.chunks_exact(4) {
            let rows = [quad[0], quad[1], quad[2], quad[3]];
            let ranges = rows.map(|r| self.starts[r]..self.starts[r + 1]);
            if let (Ok(v), Some(narrow)) = (&self.values, &self.narrow) {
                let lists = ranges.map(|range| (&narrow[range.clone()], &v[range]));
                // SAFETY: every column is below `bound` and every row below `rows` (asserted
                // against `b` and `y` above).
                unsafe { sparse_rows4_batch(rows, lists, b, p, y) };
                continue;
            }
            let lists = match &self.values {
                Ok(v) => ranges.map(|range| (&self.columns[range.clone()], &v[range])),
                Err(layer) => {
                    // Each row's values decoded after the previous row's.
                    let total = ranges.iter().map(|r| r.len()).sum::<usize>();
                    s.vals.resize(total.max(1), 0.0);
                    let mut at = 0;
                    for (range, &r) in ranges.iter().zip(&rows) {
                        let (idx, n) = (&self.columns[range.clone()], range.len());
                        let out = &mut s.vals[at..at + n];
                        layer.decode_values(range.clone(), r, Some(idx), &mut s.codes, out);
                        at += n;
                    }
                    let mut at = 0;
                    ranges.map(|range| {
                        let n = range.len();
                        at += n;
                        (&self.columns[range], &s.vals[at - n..at])
                    })
                }
            };
            // SAFETY: every column is below `bound` and every row below `rows` (asserted
            // against `b` and `y` above).
            unsafe { sparse_rows4_batch(rows, lists, b, p, y) };
        }
        for &r in rest {
            self.row(r, b, p, y, s);
        }
    }

    /// Row `r` of `run` alone.
    fn row(&self, r: usize, b: &[f32], p: usize, y: &mut [f32], s: &mut KernelScratch) {
        let range = self.starts[r]..self.starts[r + 1];
        let n = range.len();
        let idx = &self.columns[range.clone()];
        let vals: &[f32] = match &self.values {
            Ok(v) => &v[range],
            Err(layer) => {
                s.vals.resize(n.max(1), 0.0);
                layer.decode_values(range, r, Some(idx), &mut s.codes, &mut s.vals);
                &s.vals[..n]
            }
        };
        sparse_row_batch(idx, vals, b, p, &mut y[r * p..(r + 1) * p]);
    }
}

impl GatheredBatch {
    /// `y (rows × positions) = bias + W ∗ x` for one sample of a convolution at stride 1 over
    /// maps at least 16 wide, straight from its input planes: each kept weight `(ci, i, j)`
    /// reads the zero-padded plane `ci` shifted by its tap, over a tile of 4 output rows × 16
    /// columns held in registers, so the work is the kept weights' and no im2col matrix is
    /// written. `false`,
    /// with nothing written, for other convolutions (the caller forms the im2col matrix).
    /// Given `clamp`, the outputs are bounded.
    pub(super) fn run_conv(
        &self,
        c: ConvRhs<'_>,
        y: &mut [f32],
        s: &mut KernelScratch,
        clamp: Option<Clamp>,
    ) -> bool {
        let sh = c.shape;
        let cg = sh.cin / sh.groups.max(1);
        // Narrower maps would leave most of a tile's lanes idle: the gathered columns serve
        // them better (measured with `squeeze info --time` on ResNet-18 at l1 90 %: 3×3 over
        // 32 × 32 maps 700 -> 250-350 µs here, 8 × 8 maps 470 -> 700-890 µs).
        if c.samples != 1 || sh.stride != (1, 1) || sh.ow < LANES || sh.k() != cg * sh.kh * sh.kw {
            return false;
        }
        let (hp, wp) = (sh.h + 2 * sh.pad.0, sh.w + 2 * sh.pad.1);
        let (oh, ow, plane) = (sh.oh, sh.ow, hp * wp);
        // The group's planes zero-padded, then enough zeros for a tile's rows and columns past
        // the last output to be read (and not stored).
        let tail = ROWS * wp + LANES;
        s.xpad.clear();
        s.xpad.resize(cg * plane + tail, 0.0);
        let first = c.group * cg * sh.h * sh.w;
        let avx512 = Isa::current().avx512;
        for (ci, xs) in c.x[first..first + cg * sh.h * sh.w]
            .chunks_exact(sh.h * sh.w)
            .enumerate()
        {
            for (r, row) in xs.chunks_exact(sh.w).enumerate() {
                let at = ci * plane + (r + sh.pad.0) * wp + sh.pad.1;
                f32::copy_row(&mut s.xpad[at..at + sh.w], row, avx512);
            }
        }
        let geometry = TapGeometry {
            plane,
            wp,
            kw: sh.kw,
            kk: sh.kh * sh.kw,
            dil: sh.dil,
        };
        let offsets = match self
            .offsets
            .get_or_init(|| (geometry, geometry.offsets(&self.columns)))
        {
            (g, offsets) if *g == geometry => offsets,
            _ => {
                s.offsets = geometry.offsets(&self.columns);
                &s.offsets
            }
        };
        let vals: &[f32] = match &self.values {
            Ok(v) => v,
            Err(layer) => {
                let total = self.starts[self.rows];
                s.vals.resize(total.max(1), 0.0);
                for r in 0..self.rows {
                    let range = self.starts[r]..self.starts[r + 1];
                    let (idx, out) = (&self.columns[range.clone()], &mut s.vals[range.clone()]);
                    layer.decode_values(range, r, Some(idx), &mut s.codes, out);
                }
                &s.vals[..total]
            }
        };
        let (xp, pos) = (&s.xpad[..], oh * ow);
        for (r, yr) in y.chunks_exact_mut(pos).enumerate().take(self.rows) {
            let range = self.starts[r]..self.starts[r + 1];
            let (offs, vals) = (&offsets[range.clone()], &vals[range]);
            let b = self.bias.as_ref().map_or(0.0, |b| b[r]);
            for oy in (0..oh).step_by(ROWS) {
                for ox in (0..ow).step_by(LANES) {
                    let acc = shifted_tile(offs, vals, xp, oy * wp + ox, wp);
                    for (i, a) in acc.iter().enumerate().take(oh - oy) {
                        let w = LANES.min(ow - ox);
                        let out = &mut yr[(oy + i) * ow + ox..][..w];
                        for (o, &v) in out.iter_mut().zip(a) {
                            *o = match clamp {
                                Some(c) => c.bound(b + v),
                                None => b + v,
                            };
                        }
                    }
                }
            }
        }
        true
    }
}

/// The geometry of `GatheredBatch::run_conv`'s padded planes that places its kept weights.
#[derive(Debug, Clone, Copy, PartialEq)]
struct TapGeometry {
    plane: usize,
    wp: usize,
    kw: usize,
    kk: usize,
    dil: (usize, usize),
}

impl TapGeometry {
    /// Where each of `columns` (`(ci, i, j)` of a convolution's im2col rows) reads in the
    /// padded planes, from a tile's first input.
    fn offsets(&self, columns: &[u32]) -> Vec<usize> {
        columns
            .iter()
            .map(|&col| {
                let (ci, t) = (col as usize / self.kk, col as usize % self.kk);
                ci * self.plane + (t / self.kw) * self.dil.0 * self.wp + (t % self.kw) * self.dil.1
            })
            .collect()
    }
}

/// Output rows and columns of `shifted_tile`.
const ROWS: usize = 4;
const LANES: usize = 16;

/// `Σ_k vals[k] · xp[offs[k] + at + i·wp + l]` for `ROWS` rows `i` and `LANES` columns `l`.
#[inline]
fn shifted_tile(
    offs: &[usize],
    vals: &[f32],
    xp: &[f32],
    at: usize,
    wp: usize,
) -> [[f32; LANES]; ROWS] {
    let mut acc = [[0f32; LANES]; ROWS];
    for (&off, &v) in offs.iter().zip(vals) {
        for (i, acc) in acc.iter_mut().enumerate() {
            let src = &xp[off + at + i * wp..][..LANES];
            for (a, &x) in acc.iter_mut().zip(src) {
                *a = v.mul_add(x, *a);
            }
        }
    }
    acc
}

/// `yr[j] += Σ_k vals[k] · b[idx[k]·p + j]` (`b` is `cols × p`): 64 batch columns at a time
/// held in registers across the row's entries, so `yr` is loaded and stored once per tile
/// instead of once per kept weight; then 16 at a time (a convolution over 4 × 4 positions),
/// then the rest one kept weight at a time. Every tile sums in `axpy`'s order.
fn sparse_row_batch(idx: &[u32], vals: &[f32], b: &[f32], p: usize, yr: &mut [f32]) {
    let mut t0 = 0;
    while t0 + 64 <= p {
        t0 = register_tile::<64>(idx, vals, b, p, t0, yr);
    }
    while t0 + 16 <= p {
        t0 = register_tile::<16>(idx, vals, b, p, t0, yr);
    }
    if t0 < p {
        for (&c, &v) in idx.iter().zip(vals) {
            let c = c as usize;
            axpy(v, &b[c * p + t0..(c + 1) * p], &mut yr[t0..]);
        }
    }
}

/// `sparse_row_batch` for rows `rows` of `y` (`lists` their kept weights' columns and values)
/// side by side: at each step every row adds its next kept weight, so four independent sums
/// are in flight where one row alone waits on each multiply-add before the next (a tile of 16
/// columns, a convolution over 4 × 4 positions, is one register). Each row sums in its own
/// order, so the outputs are `sparse_row_batch`'s bits. The reads go unchecked: per kept weight
/// the work is a load of its column, a broadcast of its value and the multiply-adds, where
/// bounds tests had tripled the instructions.
///
/// # Safety
/// Every column `c` of `lists` has `(c + 1)·p ≤ b.len()`, and every row `r` of `rows`
/// `(r + 1)·p ≤ y.len()`.
unsafe fn sparse_rows4_batch<C: Column>(
    rows: [usize; 4],
    lists: [(&[C], &[f32]); 4],
    b: &[f32],
    p: usize,
    y: &mut [f32],
) {
    let lists = lists.map(|(idx, vals)| {
        let n = idx.len().min(vals.len());
        (&idx[..n], &vals[..n])
    });
    let mut t0 = 0;
    while t0 + 16 <= p {
        // SAFETY: the tile reads columns `t0 .. t0 + 16 ≤ p` of the rows the contract bounds.
        t0 = unsafe { rows4_tile::<C, 16>(rows, &lists, b, p, t0, y) };
    }
    if t0 < p {
        for (&r, (idx, vals)) in rows.iter().zip(lists) {
            for (&c, &v) in idx.iter().zip(vals) {
                let c = c.at();
                axpy(
                    v,
                    &b[c * p + t0..(c + 1) * p],
                    &mut y[r * p + t0..(r + 1) * p],
                );
            }
        }
    }
}

/// Least mean count of kept weights per row for which `GatheredBatch::run` sums four rows side
/// by side (MobileNetV2 at l1 90 %, whose 1×1 convolutions keep 2 to 96 weights a row, ran
/// 7 % slower with every layer four rows at a time).
const QUAD_MIN_KEPT: usize = 32;

/// A kept weight's column as `sparse_rows4_batch` reads it: 32 or 16 bits.
trait Column: Copy {
    fn at(self) -> usize;
}

impl Column for u32 {
    fn at(self) -> usize {
        self as usize
    }
}

impl Column for u16 {
    fn at(self) -> usize {
        usize::from(self)
    }
}

/// Columns `t0 .. t0 + T` of `sparse_rows4_batch`, in registers; returns `t0 + T`.
///
/// # Safety
/// `sparse_rows4_batch`'s, with `t0 + T ≤ p`; `lists` pairs columns and values of equal
/// lengths.
#[inline]
unsafe fn rows4_tile<C: Column, const T: usize>(
    rows: [usize; 4],
    lists: &[(&[C], &[f32]); 4],
    b: &[f32],
    p: usize,
    t0: usize,
    y: &mut [f32],
) -> usize {
    let mut acc = [[0f32; T]; 4];
    for (a, &r) in acc.iter_mut().zip(&rows) {
        a.copy_from_slice(&y[r * p + t0..r * p + t0 + T]);
    }
    let common = lists.iter().map(|l| l.0.len()).min().unwrap_or(0);
    let bp = b.as_ptr();
    let step = |a: &mut [f32; T], c: C, v: f32| {
        // SAFETY: column `c` reads `b[c·p + t0 .. c·p + t0 + T]`, inside `b` by the contract.
        let x = unsafe { &*(bp.add(c.at() * p + t0) as *const [f32; T]) };
        for (a, &x) in a.iter_mut().zip(x) {
            *a = v.mul_add(x, *a);
        }
    };
    for k in 0..common {
        for (a, (idx, vals)) in acc.iter_mut().zip(lists) {
            // SAFETY: `k < common`, the shortest list's length.
            let (c, v) = unsafe { (*idx.get_unchecked(k), *vals.get_unchecked(k)) };
            step(a, c, v);
        }
    }
    for (a, (idx, vals)) in acc.iter_mut().zip(lists) {
        for (&c, &v) in idx[common..].iter().zip(&vals[common..]) {
            step(a, c, v);
        }
    }
    for (a, &r) in acc.iter().zip(&rows) {
        y[r * p + t0..r * p + t0 + T].copy_from_slice(a);
    }
    t0 + T
}

/// Columns `t0 .. t0 + T` of `sparse_row_batch`, in registers; returns `t0 + T`.
#[inline]
fn register_tile<const T: usize>(
    idx: &[u32],
    vals: &[f32],
    b: &[f32],
    p: usize,
    t0: usize,
    yr: &mut [f32],
) -> usize {
    let mut acc = [0f32; T];
    acc.copy_from_slice(&yr[t0..t0 + T]);
    for (&c, &v) in idx.iter().zip(vals) {
        let at = c as usize * p + t0;
        let br = &b[at..at + T];
        for i in 0..T {
            acc[i] = v.mul_add(br[i], acc[i]);
        }
    }
    yr[t0..t0 + T].copy_from_slice(&acc);
    t0 + T
}

#[inline]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = a.mul_add(*xi, *yi);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::engine::simd::{hsum4, lanes_upto, low_lanes, widen_half};

    /// `Σ vals[k] · x[cols[k]]` with 16-lane gathers.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL (a `cpu::Avx512` token), and every `cols[k]` for `k < min(len)`
    /// is `< x.len()` and `< 2^31`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gather_dot(vals: &[f32], cols: &[u32], x: &[f32]) -> f32 {
        let n = vals.len().min(cols.len());
        let (vp, cp, xp) = (vals.as_ptr(), cols.as_ptr(), x.as_ptr());
        let mut a0 = _mm512_setzero_ps();
        let mut a1 = _mm512_setzero_ps();
        let mut k = 0;
        // SAFETY: for the whole block, loads stay below `n`, within both slices; gathered columns
        // are in `x` by the caller's contract; masked lanes are neither loaded nor gathered.
        unsafe {
            while k + 32 <= n {
                let i0 = _mm512_loadu_si512(cp.add(k).cast());
                let i1 = _mm512_loadu_si512(cp.add(k + 16).cast());
                let g0 = _mm512_i32gather_ps::<4>(i0, xp);
                let g1 = _mm512_i32gather_ps::<4>(i1, xp);
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(vp.add(k)), g0, a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(vp.add(k + 16)), g1, a1);
                k += 32;
            }
            if k + 16 <= n {
                let i0 = _mm512_loadu_si512(cp.add(k).cast());
                let g0 = _mm512_i32gather_ps::<4>(i0, xp);
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(vp.add(k)), g0, a0);
                k += 16;
            }
            if k < n {
                let m = low_lanes(n - k);
                let i1 = _mm512_maskz_loadu_epi32(m, cp.add(k).cast());
                let g1 = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m, i1, xp);
                a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, vp.add(k)), g1, a1);
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
    }

    /// `Σ w[k] · x[cols[k]]` over half-precision values (IEEE f16, or bfloat16 when `BF`)
    /// widened in registers, with 16-lane gathers.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL (a `cpu::Avx512` token), and every `cols[k]` for `k < min(len)`
    /// is `< x.len()` and `< 2^31`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn gather_half<const BF: bool>(vals: &[u16], cols: &[u32], x: &[f32]) -> f32 {
        let n = vals.len().min(cols.len());
        let (vp, cp, xp) = (vals.as_ptr(), cols.as_ptr(), x.as_ptr());
        let mut a0 = _mm512_setzero_ps();
        let mut a1 = _mm512_setzero_ps();
        let mut k = 0;
        // SAFETY: for the whole block, loads stay below `n`, within both slices; gathered columns
        // are in `x` by the caller's contract; masked lanes are neither loaded nor gathered.
        unsafe {
            while k + 32 <= n {
                let g0 = _mm512_i32gather_ps::<4>(_mm512_loadu_si512(cp.add(k).cast()), xp);
                let g1 = _mm512_i32gather_ps::<4>(_mm512_loadu_si512(cp.add(k + 16).cast()), xp);
                let w0 = widen_half::<BF>(_mm256_loadu_si256(vp.add(k).cast()));
                let w1 = widen_half::<BF>(_mm256_loadu_si256(vp.add(k + 16).cast()));
                a0 = _mm512_fmadd_ps(w0, g0, a0);
                a1 = _mm512_fmadd_ps(w1, g1, a1);
                k += 32;
            }
            while k < n {
                let m = lanes_upto(n - k);
                let i = _mm512_maskz_loadu_epi32(m, cp.add(k).cast());
                let g = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m, i, xp);
                let w = widen_half::<BF>(_mm256_maskz_loadu_epi16(m, vp.add(k).cast()));
                a0 = _mm512_fmadd_ps(w, g, a0);
                k += 16;
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
    }

    /// Bits `bit .. bit + 16` of an LSB-first bitmask (bits past its end read as 0).
    #[inline(always)]
    fn mask_bits16(mask: &[u8], bit: usize) -> u32 {
        let at = bit / 8;
        let word = match mask.get(at..at + 4) {
            Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
            _ => {
                let byte = |i: usize| mask.get(at + i).copied().unwrap_or(0) as u32;
                byte(0) | byte(1) << 8 | byte(2) << 16
            }
        };
        (word >> (bit % 8)) & 0xFFFF
    }

    /// `[Σ_c w_k[c] · x[c]]` for four rows of a bitmask layer with half-precision values
    /// (IEEE f16, or bfloat16 when `BF`): row `k`'s columns `0..n` are bits `bits[k] ..` of
    /// `mask`, its values `vals[k]` the set columns' in order. Per 16 columns, the row's next
    /// values are widened and expanded into the set lanes (`vexpandps`), then multiplied with
    /// the dense input: no gathers, so it pays off when many columns are kept.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL (a `cpu::Avx512` token).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn rows4_mask_half<const BF: bool>(
        mask: &[u8],
        bits: [usize; 4],
        vals: [&[u16]; 4],
        n: usize,
        x: &[f32],
    ) -> [f32; 4] {
        let n = n.min(x.len());
        let xp = x.as_ptr();
        let mut at = [0usize; 4];
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut j = 0;
        while j < n {
            let lanes = lanes_upto(n - j);
            // SAFETY: the mask admits only lanes `j..n`, inside `x`.
            let xv = unsafe { _mm512_maskz_loadu_ps(lanes, xp.add(j)) };
            for k in 0..4 {
                let m = mask_bits16(mask, bits[k] + j) as __mmask16 & lanes;
                let left = vals[k].len().saturating_sub(at[k]);
                let p = vals[k].as_ptr().wrapping_add(at[k]);
                // SAFETY: 16 values are read only when `left >= 16` remain in `vals[k]`;
                // otherwise the mask admits only the `left` remaining (none when it is
                // exhausted, the pointer then never being dereferenced).
                let h = unsafe {
                    if left >= 16 {
                        _mm256_loadu_si256(p.cast())
                    } else {
                        _mm256_maskz_loadu_epi16(low_lanes(left), p.cast())
                    }
                };
                let w = _mm512_maskz_expand_ps(m, widen_half::<BF>(h));
                acc[k] = _mm512_fmadd_ps(w, xv, acc[k]);
                at[k] += m.count_ones() as usize;
            }
            j += 16;
        }
        hsum4(acc)
    }
}
