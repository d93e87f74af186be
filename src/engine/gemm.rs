//! The f32 matrix product behind batched linear layers and convolutions:
//! `Y (m × n) += A (m × k) · B (k × n)`, all row-major, single-threaded (callers parallelise
//! over batches).
//!
//! The layout follows the classic blocked design (Goto & van de Geijn):
//! - `A` (the weights) is stored once in *row panels* of `MR` rows, each panel `k`-major
//!   (`k × MR`), rows past `m` zero (`row_panels`), so the micro-kernel reads it sequentially;
//! - `B` (activations, im2col columns) is copied per call in blocks of at most `KC` steps of `k`
//!   into column panels of `NR` columns (`kc × NR`, columns past `n` zero), a panel small enough
//!   to stay in the L1 cache while every row panel of `A` streams past it;
//! - the micro-kernel keeps an `MR × NR` tile of `Y` in registers for the whole `k` block: per
//!   step two vector loads of `B`, `MR` broadcasts of `A` and `2·MR` FMAs.
//!
//! The AVX-512 micro-kernel runs where the caller holds the `cpu::Avx512` token (`gemm_acc`
//! asks `cpu::Isa::current()`); the portable one computes the same tile with plain loops (the
//! compiler vectorises it for the target).

use super::cpu::{Avx512, Isa};
use super::ops::{self, Clamp, ConvShape};
#[cfg(target_arch = "x86_64")]
use super::simd;

/// Rows of `A` per panel and per register tile.
pub const MR: usize = 10;
/// Columns of `B` per panel (two 16-lane vectors).
pub const NR: usize = 32;
// `transpose_col_panels` fills panels 16 columns at a time.
const _: () = assert!(NR.is_multiple_of(16));
/// Largest block of the inner dimension: a `KC × NR` panel of `B` is 20 KiB, inside L1.
const KC: usize = 160;
/// Largest `B` (as column panels) multiplied in one block of the whole inner dimension: half
/// of a 2 MiB L2.
const WHOLE_K_BYTES: usize = 1 << 20;

/// Rows of `A` per tall panel (`tall_panels`): two 16-lane vectors.
pub const TR: usize = 32;
/// Output positions up to which a convolution's weights are laid out in tall panels
/// (`product_tall`) rather than row panels: a 4 × 4 map.
pub const FEW: usize = 16;

/// `w` (`m × k`, row-major) as tall panels of `TR` rows, each `k`-major (`k × TR`), rows past
/// `m` zero: element `(r, c)` at `(r / TR)·TR·k + c·TR + r % TR`.
pub fn tall_panels(w: &[f32], m: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0.0; m.div_ceil(TR) * TR * k];
    for (r, row) in w[..m * k].chunks_exact(k.max(1)).enumerate().take(m) {
        let base = (r / TR) * TR * k + r % TR;
        for (c, &v) in row.iter().enumerate() {
            out[base + c * TR] = v;
        }
    }
    out
}

/// `y (m × n) += A · B` with `A` in `tall_panels`' layout: the roles of the operands swapped.
/// With 16 columns or fewer (a convolution over a 4 × 4 map), `product`'s tile holds one vector
/// of `B` against `MR` broadcast weights, so every multiply-add waits on a load of `A`, the
/// stream; here two vectors of 16 weights meet up to 12 broadcast values of `B` (24
/// accumulators) and every weight is loaded once per block of `k`. `B` is formed row-major
/// (`k × n`) in scratch: the im2col matrix, or a transposed sample-major batch; blocks of `k`
/// keep it in L2 for every panel of `A`.
pub(crate) fn product_tall(
    avx512: Avx512,
    a: Lhs<'_>,
    n: usize,
    b: Rhs<'_>,
    y: &mut [f32],
    s: &mut GemmScratch,
) {
    let Lhs { panels: a, m, k } = a;
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let b: &[f32] = match b {
        Rhs::Rows(b) => b,
        Rhs::Cols(bt) => {
            s.row.resize(k * n, 0.0);
            for (j, col) in bt.chunks_exact(k).enumerate().take(n) {
                for (kk, &v) in col.iter().enumerate() {
                    s.row[kk * n + j] = v;
                }
            }
            &s.row
        }
        Rhs::Conv(c) => {
            s.row.resize(k * n, 0.0);
            let (x, shape, group) = conv_input(c, &mut s.padded, Some(avx512));
            let (in_len, pos) = (shape.cin * shape.h * shape.w, shape.positions());
            for (j, x) in x.chunks_exact(in_len).enumerate().take(c.samples) {
                ops::im2col_into(
                    x,
                    &shape,
                    group,
                    &mut s.row,
                    (n, j * pos),
                    0.0,
                    Some(avx512),
                );
            }
            &s.row
        }
    };
    assert!(
        a.len() >= m.div_ceil(TR) * TR * k && b.len() >= k * n && y.len() >= m * n,
        "gemm operands too short"
    );
    let blocks = (k * n * 4).div_ceil(WHOLE_K_BYTES).clamp(1, k);
    let kc_max = k.div_ceil(blocks);
    for k0 in (0..k).step_by(kc_max) {
        let kc = kc_max.min(k - k0);
        for rp in 0..m.div_ceil(TR) {
            let r0 = rp * TR;
            let rows = TR.min(m - r0);
            let ap = &a[rp * TR * k + k0 * TR..rp * TR * k + (k0 + kc) * TR];
            let bp = &b[k0 * n..(k0 + kc) * n];
            let yt = &mut y[r0 * n..];
            let mut j0 = 0;
            while j0 < n {
                // SAFETY: the `Avx512` token vouches for AVX-512F; `ap` holds `kc × TR`
                // weights and `bp` `kc × n` values, the tile reads columns `j0 .. j0 + w ≤ n`
                // and adds into rows `< rows` of `yt` at those columns (`y` holds `m × n`).
                j0 += unsafe {
                    let bj = &bp[j0..];
                    match n - j0 {
                        12.. => x86::tall::<12>(kc, ap, bj, n, yt, j0, rows),
                        8.. => x86::tall::<8>(kc, ap, bj, n, yt, j0, rows),
                        4.. => x86::tall::<4>(kc, ap, bj, n, yt, j0, rows),
                        _ => x86::tall::<1>(kc, ap, bj, n, yt, j0, rows),
                    }
                };
            }
        }
    }
}

/// Least inner dimension for which a convolution runs direct (`product_direct`): with fewer
/// steps (a stem over 3 input channels, `k` = 27) a tile's fixed costs outweigh its work.
pub const DIRECT_MIN_K: usize = 64;
/// Least output width for which a convolution runs direct: narrower rows give tiles of 4
/// positions, whose 8 accumulators wait on the FMA latency (`product_tall` tiles across rows).
pub const DIRECT_MIN_WIDTH: usize = 8;

/// Steps of `k` per block of `product_direct`: a block of a tall panel (`DIRECT_KC × TR`,
/// 24 KiB) stays in L1 while every tile of output positions passes it.
const DIRECT_KC: usize = 192;

/// Output width of the narrow maps `product_direct` runs as tiles of whole rows (two rows of
/// four positions, eight accumulating pairs): a ResNet's last stage on 32×32 inputs.
pub const DIRECT_NARROW: usize = 4;

/// Whether `product_direct` runs this convolution over `samples` samples: strides 1 and 2 in
/// width, and one sample of a map at least `DIRECT_MIN_WIDTH` wide or several samples of a
/// map `DIRECT_NARROW` wide (tiles of whole rows, each block of weights passing every
/// sample's). One sample of a narrow map runs faster as `product_tall` (measured with
/// `squeeze info --time` on ResNet-18's last stage: 838–876 µs a layer against 896–925 µs
/// direct), where its weights stream from L3 once per layer either way.
pub fn runs_direct(shape: &ConvShape, samples: usize) -> bool {
    matches!(shape.stride.1, 1 | 2)
        && ((samples == 1 && shape.ow >= DIRECT_MIN_WIDTH)
            || (samples > 1 && shape.ow == DIRECT_NARROW && shape.k() >= DIRECT_MIN_K))
}

/// One of `x86::direct`'s tiles.
type DirectTile = unsafe fn(&[f32], &[u32], usize, &[f32], usize, usize, &mut [f32], bool);

/// A convolution's outputs `y = bias + A · im2col(x)`, bounded by `clamp`, for `c.samples`
/// samples without the im2col matrix, `A` in `tall_panels`' layout, `bias` one value a row
/// (none: 0), `y (m × samples·positions)` (sample `j`'s positions at columns
/// `j·positions ..`): the input is padded once (`ops::pad_group`), then each tile
/// of output positions (up to 12 consecutive ones of one output row, or two whole rows of a
/// map `DIRECT_NARROW` wide) meets two vectors of 16 filters at every step of `k`, its inputs
/// broadcast straight from the padded planes (tap `kk` of a row's position `p` sits at
/// `taps[kk] + p·stride` from the row's first input). Blocks of `k` keep the weights in L1
/// while every sample's tiles pass them; the tiles accumulate channels-last in scratch (whole
/// vectors), transposed into `y` once per panel with the bias added and the bounds applied,
/// so `y` sees one pass of stores. Strides 1 and 2 (`runs_direct`).
pub(crate) fn product_direct(
    avx512: Avx512,
    a: Lhs<'_>,
    c: ConvRhs<'_>,
    y: &mut [f32],
    s: &mut GemmScratch,
    bias: Option<&[f32]>,
    clamp: Option<Clamp>,
) {
    let Lhs { panels: a, m, k } = a;
    let mut tap_buf = std::mem::take(&mut s.taps);
    direct_taps(c.shape, &mut tap_buf);
    let samples = c.samples;
    let (x, shape, _) = conv_input(c, &mut s.padded, Some(avx512));
    let (oh, ow, pos) = (shape.oh, shape.ow, shape.positions());
    let (sy, sx) = shape.stride;
    let in_len = shape.cin * shape.h * shape.w;
    let (wide, narrow) = (samples * pos, ow == DIRECT_NARROW);
    assert!(
        a.len() >= m.div_ceil(TR) * TR * k
            && tap_buf.len() == k
            && y.len() >= m * wide
            && x.len() >= samples * in_len
            && matches!(sx, 1 | 2)
            && (samples == 1 || narrow)
            && bias.is_none_or(|b| b.len() >= m),
        "direct convolution operands"
    );
    s.row.resize(wide * TR, 0.0);
    let acc = &mut s.row;
    let taps = &tap_buf[..];
    // Floats between an input row of a tile and the next.
    let rs = sy * shape.w;
    for (rp, ap) in a.chunks_exact(TR * k).enumerate().take(m.div_ceil(TR)) {
        for k0 in (0..k).step_by(DIRECT_KC) {
            let kc = DIRECT_KC.min(k - k0);
            let (ab, tb) = (&ap[k0 * TR..(k0 + kc) * TR], &taps[k0..k0 + kc]);
            // The block's farthest tap, which bounds its tiles' reads.
            let far = tb.iter().max().map_or(0, |&t| t as usize);
            let first = k0 == 0;
            for j in 0..samples {
                let xs = &x[j * in_len..];
                let accs = &mut acc[j * pos * TR..];
                let mut oy = 0;
                while oy < oh {
                    let mut ox = 0;
                    while ox < ow {
                        // A tile: its positions, how many per row and its kernel.
                        let (tile, per_row, kernel): (usize, usize, DirectTile) =
                            match (narrow, oh - oy, ow - ox, sx) {
                                // Two whole rows of a narrow map (the last one alone).
                                (true, 2.., _, 1) => (8, 4, x86::direct::<8, 4, 1>),
                                (true, 2.., _, _) => (8, 4, x86::direct::<8, 4, 2>),
                                (true, _, _, 1) => (4, 4, x86::direct::<4, 4, 1>),
                                (true, _, _, _) => (4, 4, x86::direct::<4, 4, 2>),
                                // 16 as 8 + 8 rather than 12 + 4: a 4-wide tile's 8
                                // accumulators wait on the FMA latency.
                                (_, _, 16, 1) => (8, 8, x86::direct::<8, 8, 1>),
                                (_, _, 16, _) => (8, 8, x86::direct::<8, 8, 2>),
                                (_, _, 12.., 1) => (12, 12, x86::direct::<12, 12, 1>),
                                (_, _, 8.., 1) => (8, 8, x86::direct::<8, 8, 1>),
                                (_, _, 4.., 1) => (4, 4, x86::direct::<4, 4, 1>),
                                (_, _, _, 1) => (1, 1, x86::direct::<1, 1, 1>),
                                (_, _, 12.., _) => (12, 12, x86::direct::<12, 12, 2>),
                                (_, _, 8.., _) => (8, 8, x86::direct::<8, 8, 2>),
                                (_, _, 4.., _) => (4, 4, x86::direct::<4, 4, 2>),
                                _ => (1, 1, x86::direct::<1, 1, 2>),
                            };
                        let base = oy * rs + ox * sx;
                        let at = &mut accs[(oy * ow + ox) * TR..];
                        // SAFETY: the `Avx512` token vouches for AVX-512F; `direct` checks its
                        // reads of `xs` and `ab` and its writes of `at`.
                        unsafe { kernel(ab, tb, far, xs, base, rs, at, first) };
                        if tile > per_row {
                            // Whole rows: the tile ends at the end of a row.
                            (ox, oy) = (ow, oy + tile / per_row - 1);
                        } else {
                            ox += tile;
                        }
                    }
                    oy += 1;
                }
            }
        }
        // The panel's outputs, channels-last in `acc`, stored into their rows of `y`.
        let r0 = rp * TR;
        let rows = TR.min(m - r0);
        let mut b = [0f32; TR];
        if let Some(bias) = bias {
            b[..rows].copy_from_slice(&bias[r0..r0 + rows]);
        }
        let yp = &mut y[r0 * wide..(r0 + rows) * wide];
        // SAFETY: the `Avx512` token vouches for AVX-512F; `acc` holds `wide × TR` values and
        // `yp` `rows × wide`, `rows ≤ TR`.
        let done = unsafe { x86::store_transposed(acc, wide, rows, yp, &b, clamp) };
        for (i, yrow) in yp.chunks_exact_mut(wide.max(1)).enumerate() {
            let first = if i < done.0 { done.1 } else { 0 };
            for (v, a) in yrow[first..]
                .iter_mut()
                .zip(acc[first * TR..].chunks_exact(TR))
            {
                let sum = a[i] + b[i];
                *v = clamp.map_or(sum, |c| c.bound(sum));
            }
        }
    }
    s.taps = tap_buf;
}

/// A convolution's input as its im2col rows read it, with the geometry and group that go with
/// it: padded once into `padded` (the group's channels only) when the layer pads or groups, so
/// no row tests bounds; else the input itself.
pub(crate) fn conv_input<'a>(
    c: ConvRhs<'a>,
    padded: &'a mut Vec<f32>,
    avx512: Option<Avx512>,
) -> (&'a [f32], ConvShape, usize) {
    if c.shape.pad != (0, 0) || c.shape.groups > 1 {
        let shape = ops::pad_group(c.x, c.shape, c.group, c.samples, padded, avx512);
        (&padded[..], shape, 0)
    } else {
        (c.x, *c.shape, c.group)
    }
}

/// Where each im2col row `kk = (ci·kh + i)·kw + j` of a convolution reads in its padded
/// input, for `product_direct`: `ci·h·w + i·dy·w + j·dx` (`h`, `w` padded).
fn direct_taps(s: &ConvShape, out: &mut Vec<u32>) {
    let (h, w) = (s.h + 2 * s.pad.0, s.w + 2 * s.pad.1);
    let cg = s.cin / s.groups;
    out.clear();
    for ci in 0..cg {
        for i in 0..s.kh {
            for j in 0..s.kw {
                out.push((ci * h * w + i * s.dil.0 * w + j * s.dil.1) as u32);
            }
        }
    }
}

/// `y (m × n) += A (m × k) · B (k × n)` with `a` in `tall_panels`' layout and `b` row-major, on
/// the AVX-512 kernel (`product_tall`); `false`, with nothing done, where the CPU lacks it.
pub fn gemm_tall_acc(
    a: &[f32],
    m: usize,
    n: usize,
    k: usize,
    b: &[f32],
    y: &mut [f32],
    s: &mut GemmScratch,
) -> bool {
    match Isa::current().avx512 {
        Some(avx512) => {
            product_tall(avx512, Lhs { panels: a, m, k }, n, Rhs::Rows(b), y, s);
            true
        }
        _ => false,
    }
}

/// `product_direct` for one sample of a convolution (group 0, no bias), with `a` in
/// `tall_panels`' layout; `false`, with nothing done, where the CPU lacks AVX-512 or the stride
/// is not 1 or 2.
pub fn conv_direct(
    a: &[f32],
    shape: &ConvShape,
    x: &[f32],
    y: &mut [f32],
    s: &mut GemmScratch,
) -> bool {
    match Isa::current().avx512 {
        Some(avx512) if matches!(shape.stride.1, 1 | 2) => {
            let lhs = Lhs {
                panels: a,
                m: shape.cout / shape.groups,
                k: shape.k(),
            };
            let c = ConvRhs {
                x,
                shape,
                group: 0,
                samples: 1,
            };
            product_direct(avx512, lhs, c, y, s, None, None);
            true
        }
        _ => false,
    }
}

/// Length of `A`'s panel layout for an `m × k` matrix.
pub fn row_panels_len(m: usize, k: usize) -> usize {
    m.div_ceil(MR) * MR * k
}

/// Writes `w` (`m × k`, row-major) into `out` as row panels: element `(r, c)` goes to
/// `(r / MR)·MR·k + c·MR + r % MR`; the rows of the last panel past `m` are zero.
pub fn row_panels(w: &[f32], m: usize, k: usize, out: &mut Vec<f32>) {
    out.clear();
    out.resize(row_panels_len(m, k), 0.0);
    for (r, row) in w[..m * k].chunks_exact(k.max(1)).enumerate().take(m) {
        let base = (r / MR) * MR * k + r % MR;
        for (c, &v) in row.iter().enumerate() {
            out[base + c * MR] = v;
        }
    }
}

/// `row_panels` for an `A` held transposed: row `c` of `at` holds column `c` of `A`
/// (`at[c·ld .. c·ld + m]`, `ld ≥ m`), as when a backward product multiplies by the transpose
/// of a row-major gradient or weight. Each panel row is then one contiguous copy.
pub fn row_panels_t(at: &[f32], ld: usize, m: usize, k: usize, out: &mut Vec<f32>) {
    out.clear();
    out.resize(row_panels_len(m, k), 0.0);
    for (rp, panel) in out.chunks_exact_mut(MR * k.max(1)).enumerate() {
        let r0 = rp * MR;
        let rows = MR.min(m - r0);
        for (c, dst) in panel.chunks_exact_mut(MR).enumerate().take(k) {
            dst[..rows].copy_from_slice(&at[c * ld + r0..c * ld + r0 + rows]);
        }
    }
}

/// Buffers `gemm_acc` reuses between calls.
#[derive(Debug, Default, Clone)]
pub struct GemmScratch {
    col_panels: Vec<f32>,
    /// One im2col row (`Rhs::Conv`).
    row: Vec<f32>,
    /// A padded or grouped convolution's input, padded (`conv_input`).
    padded: Vec<f32>,
    /// A convolution's tap offsets (`product_direct`).
    taps: Vec<u32>,
}

/// The right-hand operand of `gemm_acc`, `B (k × n)`, in one of two layouts.
#[derive(Debug, Clone, Copy)]
pub enum Rhs<'a> {
    /// `B` itself, row-major (`k × n`): feature-major activations, im2col columns.
    Rows(&'a [f32]),
    /// `Bᵀ`, row-major (`n × k`): sample-major activations, each sample's `k` inputs
    /// contiguous. Its column panels are filled by 16 × 16 register transposes, so a batch needs no
    /// transposed copy of its own.
    Cols(&'a [f32]),
    /// The im2col matrix of a convolution, never formed: its column panels are filled from the
    /// input planes directly (`ops::im2col_panels`).
    Conv(ConvRhs<'a>),
}

/// A convolution's im2col matrix as `B` (`k × n`): group `group` of `samples` samples side by
/// side (`x` holds them back to back, `n = samples × positions`).
#[derive(Debug, Clone, Copy)]
pub struct ConvRhs<'a> {
    pub x: &'a [f32],
    pub shape: &'a ConvShape,
    pub group: usize,
    pub samples: usize,
}

/// `A (m × k)` in `row_panels`'s layout.
#[derive(Debug, Clone, Copy)]
pub struct Lhs<'a> {
    pub panels: &'a [f32],
    pub m: usize,
    pub k: usize,
}

/// What `product` starts its sums from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start<'a> {
    /// `y`'s values: `y += A · B`.
    Add,
    /// Row `r`'s bias (zero without one), whatever `y` held: `y = bias + A · B`. The tiles
    /// start from the bias in registers, so `y` is neither filled first nor read.
    Bias(Option<&'a [f32]>),
}

/// `y (m × n) += A (m × k) · B (k × n)` with `a` in `row_panels`'s panel layout, on the
/// AVX-512 micro-kernel where the CPU has it.
///
/// # Panics
/// When a slice is shorter than its shape says.
pub fn gemm_acc(
    a: &[f32],
    m: usize,
    n: usize,
    k: usize,
    b: Rhs<'_>,
    y: &mut [f32],
    s: &mut GemmScratch,
) {
    let a = Lhs { panels: a, m, k };
    product(Isa::current().avx512, a, n, b, y, s, Start::Add, None);
}

/// `gemm_acc` on the AVX-512 micro-kernel when given the token, else on the portable one,
/// the sums started from `start` and, given `clamp`, bounded as they are stored.
#[allow(clippy::too_many_arguments)]
pub(crate) fn product(
    avx512: Option<Avx512>,
    a: Lhs<'_>,
    n: usize,
    b: Rhs<'_>,
    y: &mut [f32],
    s: &mut GemmScratch,
    start: Start<'_>,
    clamp: Option<Clamp>,
) {
    let Lhs { panels: a, m, k } = a;
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let b_ok = match b {
        Rhs::Rows(bs) | Rhs::Cols(bs) => bs.len() >= k * n,
        Rhs::Conv(c) => {
            let s = c.shape;
            c.x.len() >= c.samples * s.cin * s.h * s.w
                && c.group < s.groups
                && s.k() == k
                && c.samples * s.positions() == n
        }
    };
    let bias_ok = match start {
        Start::Bias(Some(bias)) => bias.len() >= m,
        _ => true,
    };
    assert!(
        a.len() >= row_panels_len(m, k) && b_ok && y.len() >= m * n && bias_ok,
        "gemm operands too short"
    );
    let panels = n.div_ceil(NR);
    // Few columns (a convolution's last stages: 4 × 4 or 8 × 8 positions) make `A` the stream:
    // each weight is used `n` times. When all of `B`'s panels fit in L2, one block of the whole
    // `k` reads `A` once, front to back, and keeps each tile in registers until it is done.
    let blocks = if k * NR * panels * 4 <= WHOLE_K_BYTES {
        1
    } else {
        k.div_ceil(KC)
    };
    let kc_max = k.div_ceil(blocks);
    let row_panel_count = m.div_ceil(MR);
    // Row-major `B` in one block of `k`: the tiles read its whole panels in place, `n` floats
    // from one step of `k` to the next, and only a last partial panel is copied (zero-padded).
    // Copying would cost a pass over `B` for each use of its values by `m` rows, a large share
    // for the few rows of a 1 × 1 convolution's projection (24 rows over 1,024 positions).
    let in_place = matches!(b, Rhs::Rows(_)) && blocks == 1;
    let GemmScratch {
        col_panels,
        row,
        padded,
        ..
    } = s;
    let conv = match b {
        Rhs::Conv(c) => Some(conv_input(c, padded, avx512)),
        _ => None,
    };
    for kb in 0..blocks {
        let k0 = kb * kc_max;
        let k1 = (k0 + kc_max).min(k);
        let kc = k1 - k0;
        match b {
            Rhs::Rows(b) if in_place => copy_col_panels(b, kc, n, n / NR, col_panels),
            Rhs::Rows(b) => copy_col_panels(&b[k0 * n..k1 * n], kc, n, 0, col_panels),
            Rhs::Cols(bt) => transpose_col_panels(avx512, bt, k, k0, kc, n, col_panels),
            Rhs::Conv(c) => {
                let len = panels * kc * NR;
                if col_panels.len() < len {
                    col_panels.resize(len, 0.0);
                }
                if let Some((x, shape, group)) = &conv {
                    let (out, samples) = (&mut col_panels[..len], c.samples);
                    ops::im2col_panels(x, shape, *group, samples, (k0, kc), out, row, avx512);
                }
            }
        }
        for jp in 0..panels {
            let j0 = jp * NR;
            let cols = NR.min(n - j0);
            let (bp, ldb) = match b {
                Rhs::Rows(b) if in_place && cols == NR => (&b[j0..], n),
                Rhs::Rows(_) if in_place => (&col_panels[..kc * NR], NR),
                _ => (&col_panels[jp * kc * NR..(jp + 1) * kc * NR], NR),
            };
            for rp in 0..row_panel_count {
                let r0 = rp * MR;
                let rows = MR.min(m - r0);
                let ap = &a[rp * MR * k + k0 * MR..rp * MR * k + k1 * MR];
                let yt = &mut y[r0 * n + j0..];
                // The first block of `k` starts from the bias; later ones add to it.
                let init = match start {
                    Start::Bias(bias) if kb == 0 => Init::Bias(bias.map(|b| &b[r0..r0 + rows])),
                    _ => Init::Load,
                };
                // The last block of `k` stores the finished sums: bounded there.
                let clamp = if kb + 1 == blocks { clamp } else { None };
                #[cfg(target_arch = "x86_64")]
                if avx512.is_some() {
                    // SAFETY: the `Avx512` token vouches for AVX-512F; `ap` holds `kc × MR` and
                    // `bp` `kc` steps `ldb` apart of `NR` values (slices checked above, and
                    // `j0 + NR ≤ n` when read in place); the tile writes rows
                    // `< rows` at stride `n` and columns `< cols`, all inside `yt` since
                    // `r0 + rows ≤ m` and `j0 + cols ≤ n`.
                    unsafe {
                        // A panel of at most 16 columns (a convolution over 4 × 4 positions,
                        // a narrow last panel) computes only the half that holds them.
                        if cols <= 16 {
                            x86::micro::<1>(kc, ap, (bp, ldb), yt, n, rows, cols, init, clamp)
                        } else {
                            x86::micro::<2>(kc, ap, (bp, ldb), yt, n, rows, cols, init, clamp)
                        }
                    };
                    continue;
                }
                micro_portable(kc, ap, (bp, ldb), yt, n, rows, cols, init, clamp);
            }
        }
    }
}

/// Copies `b` (`kc × n`) into column panels of `NR` (`kc × NR` each, columns past `n` zero),
/// the panels from `first` on, the first of them at the start of `out`.
fn copy_col_panels(b: &[f32], kc: usize, n: usize, first: usize, out: &mut Vec<f32>) {
    let panels = n.div_ceil(NR).saturating_sub(first);
    // Grown, never shrunk: every value read is written below, so a later, larger call
    // need not zero what an earlier one left.
    if out.len() < panels * kc * NR {
        out.resize(panels * kc * NR, 0.0);
    }
    for jp in 0..panels {
        let j0 = (first + jp) * NR;
        let w = NR.min(n - j0);
        let dst = &mut out[jp * kc * NR..(jp + 1) * kc * NR];
        for (kk, d) in dst.chunks_exact_mut(NR).enumerate() {
            let src = &b[kk * n + j0..kk * n + j0 + w];
            if let (Ok(d), Ok(src)) = (
                <&mut [f32; NR]>::try_from(&mut *d),
                <&[f32; NR]>::try_from(src),
            ) {
                // A whole panel row: a fixed-size copy the compiler does in two vector moves.
                *d = *src;
            } else {
                d[..w].copy_from_slice(src);
                d[w..].fill(0.0);
            }
        }
    }
}

/// `copy_col_panels` for `Bᵀ` (`bt`, `n × k`): columns `k0 .. k0 + kc` of its rows into the same
/// panels, 16 × 16 blocks in registers given the `Avx512` token.
fn transpose_col_panels(
    avx512: Option<Avx512>,
    bt: &[f32],
    k: usize,
    k0: usize,
    kc: usize,
    n: usize,
    out: &mut Vec<f32>,
) {
    assert!(bt.len() >= n * k && k0 + kc <= k, "gemm operand too short");
    let panels = n.div_ceil(NR);
    if out.len() < panels * kc * NR {
        out.resize(panels * kc * NR, 0.0);
    }
    for jp in 0..panels {
        let dst = &mut out[jp * kc * NR..(jp + 1) * kc * NR];
        for h in 0..NR / 16 {
            // Samples `j0 .. j0 + 16` go to lanes `16h .. 16h + 16` of each panel row.
            let j0 = jp * NR + 16 * h;
            let mut kk = 0;
            #[cfg(target_arch = "x86_64")]
            if avx512.is_some() && j0 + 16 <= n {
                while kk + 16 <= kc {
                    // SAFETY: the `Avx512` token vouches for AVX-512F; the block reads rows
                    // `j0 .. j0 + 16 ≤ n` of `bt` at columns `k0 + kk .. + 16 ≤ k` (`bt.len() ≥
                    // n·k`, asserted above) and writes panel rows `kk .. kk + 16 ≤ kc`, lanes
                    // `16h .. 16h + 16 ≤ NR`, inside `dst` (`kc × NR`).
                    unsafe {
                        simd::transpose16(
                            bt.as_ptr().add(j0 * k + k0 + kk),
                            k,
                            dst.as_mut_ptr().add(kk * NR + 16 * h),
                            NR,
                        )
                    };
                    kk += 16;
                }
            }
            for kk in kk..kc {
                let row = &mut dst[kk * NR + 16 * h..kk * NR + 16 * h + 16];
                for (j, d) in row.iter_mut().enumerate() {
                    *d = if j0 + j < n {
                        bt[(j0 + j) * k + k0 + kk]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// Rows and columns of the portable kernel's sub-tile: 5 × 16 accumulators are ten 8-lane
/// registers, which with two loads of `B` and a broadcast of `A` fit the 16 an AVX2 core has;
/// the whole `MR × NR` tile does not, and the compiler then keeps it in memory, one scalar
/// FMA at a time.
const SUB_ROWS: usize = 5;
const SUB_COLS: usize = 16;
const _: () = assert!(MR.is_multiple_of(SUB_ROWS) && NR.is_multiple_of(SUB_COLS));

/// What a tile of `product` starts from: `y`'s values, or its rows' bias (zero without one).
#[derive(Debug, Clone, Copy)]
enum Init<'a> {
    Load,
    Bias(Option<&'a [f32]>),
}

impl Init<'_> {
    /// Row `i`'s starting value when it is not `y`'s.
    fn bias(&self, i: usize) -> f32 {
        match self {
            Init::Bias(Some(b)) => b[i],
            _ => 0.0,
        }
    }
}

/// The portable `MR × NR` tile: `y[i·ldy + j] = init + Σ_kk a[kk·MR + i] · b[kk·ldb + j]` for
/// `i < rows`, `j < cols`, one `SUB_ROWS × SUB_COLS` sub-tile at a time (sub-tiles wholly past
/// `rows` or `cols` skipped), bounded by `clamp`. Each value is one FMA chain over `kk` in
/// order, as in the AVX-512 kernel.
#[allow(clippy::too_many_arguments)]
fn micro_portable(
    kc: usize,
    a: &[f32],
    (b, ldb): (&[f32], usize),
    y: &mut [f32],
    ldy: usize,
    rows: usize,
    cols: usize,
    init: Init<'_>,
    clamp: Option<Clamp>,
) {
    let bound = |v: f32| clamp.map_or(v, |c| c.bound(v));
    for r0 in (0..rows).step_by(SUB_ROWS) {
        for c0 in (0..cols).step_by(SUB_COLS) {
            let mut acc = [[0f32; SUB_COLS]; SUB_ROWS];
            for (kk, av) in a.chunks_exact(MR).enumerate().take(kc) {
                let bv = &b[kk * ldb + c0..][..SUB_COLS];
                let av = &av[r0..r0 + SUB_ROWS];
                for (acc_row, &ai) in acc.iter_mut().zip(av) {
                    for (v, &bj) in acc_row.iter_mut().zip(bv) {
                        *v = ai.mul_add(bj, *v);
                    }
                }
            }
            let width = SUB_COLS.min(cols - c0);
            for (i, row) in acc.iter().enumerate().take(rows - r0) {
                let yr = y[(r0 + i) * ldy + c0..][..width].iter_mut().zip(row);
                match init {
                    Init::Load => yr.for_each(|(yv, &v)| *yv = bound(*yv + v)),
                    _ => {
                        let b = init.bias(r0 + i);
                        yr.for_each(|(yv, &v)| *yv = bound(b + v))
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Clamp, Init, MR, NR, TR, simd};

    /// Steps of `k` ahead of the one in flight that `tall` asks the caches for.
    const PREFETCH: usize = 32;

    /// `P` output positions, rows of `C` consecutive ones `rs` input floats apart, against a
    /// block of a tall panel: `acc[p·TR + i] (+)= Σ_kk a[kk·TR + i] · x[base + taps[kk] +
    /// (p / C)·rs + (p % C)·SX]` for `p < P`, `i < TR` (`=` for the `first` block).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `far` is at least every value of `taps` (the tile reads up to
    /// `x[base + far + (P − 1) / C·rs + (C − 1)·SX]`, which it asserts is inside `x`).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn direct<const P: usize, const C: usize, const SX: usize>(
        a: &[f32],
        taps: &[u32],
        far: usize,
        x: &[f32],
        base: usize,
        rs: usize,
        acc_out: &mut [f32],
        first: bool,
    ) {
        let k = taps.len();
        let reach = base + far + (P - 1) / C * rs + (C.min(P) - 1) * SX;
        assert!(a.len() >= k * TR && x.len() > reach && acc_out.len() >= P * TR);
        let ap = a.as_ptr();
        let xb = x.as_ptr().wrapping_add(base);
        let op = acc_out.as_mut_ptr();
        debug_assert!(taps.iter().all(|&t| t as usize <= far));
        // SAFETY: step `kk < k` reads `a[kk·TR ..][..TR]` and `x[base + taps[kk] + (p / C)·rs
        // + (p % C)·SX]` for `p < P`, at most `reach < x.len()` (`taps[kk] ≤ far` by the
        // contract); the tile reads and writes `acc_out[.. P·TR]` (all asserted above).
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; P];
            if !first {
                for (p, acc) in acc.iter_mut().enumerate() {
                    acc[0] = _mm512_loadu_ps(op.add(p * TR));
                    acc[1] = _mm512_loadu_ps(op.add(p * TR + 16));
                }
            }
            for (kk, &t) in taps.iter().enumerate() {
                _mm_prefetch::<_MM_HINT_T0>(ap.wrapping_add((kk + PREFETCH) * TR) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(ap.wrapping_add((kk + PREFETCH) * TR + 16) as *const i8);
                let a0 = _mm512_loadu_ps(ap.add(kk * TR));
                let a1 = _mm512_loadu_ps(ap.add(kk * TR + 16));
                let xp = xb.add(t as usize);
                for (p, acc) in acc.iter_mut().enumerate() {
                    let bv = _mm512_set1_ps(*xp.add(p / C * rs + p % C * SX));
                    acc[0] = _mm512_fmadd_ps(a0, bv, acc[0]);
                    acc[1] = _mm512_fmadd_ps(a1, bv, acc[1]);
                }
            }
            for (p, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(op.add(p * TR), acc[0]);
                _mm512_storeu_ps(op.add(p * TR + 16), acc[1]);
            }
        }
    }

    /// `y[i·pos + p] = acc[p·TR + i] + bias[i]`, bounded by `clamp`, for the whole 16 × 16
    /// blocks of `rows ≤ TR` channels and `pos` positions: a direct tile's channels-last sums
    /// stored into the output rows, 16 positions of 16 channels at a time through an
    /// in-register transpose. Returns the rows and positions done (`rows / 16 · 16`,
    /// `pos / 16 · 16`); the caller stores the rest.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn store_transposed(
        acc: &[f32],
        pos: usize,
        rows: usize,
        y: &mut [f32],
        bias: &[f32; TR],
        clamp: Option<Clamp>,
    ) -> (usize, usize) {
        let (r16, p16) = (rows.min(TR) / 16 * 16, pos / 16 * 16);
        assert!(acc.len() >= pos * TR && y.len() >= rows * pos);
        let (ap, yp) = (acc.as_ptr(), y.as_mut_ptr());
        let bounds = clamp.map(|c| (_mm512_set1_ps(c.lo), _mm512_set1_ps(c.hi)));
        for c0 in (0..r16).step_by(16) {
            for p0 in (0..p16).step_by(16) {
                let mut v = [_mm512_setzero_ps(); 16];
                // SAFETY: positions `p0 .. p0 + 16 ≤ pos`, channels `c0 .. c0 + 16 ≤ rows ≤ TR`:
                // reads `acc[(p0 + j)·TR + c0 ..][..16]` inside `pos·TR`, and stores into
                // `y[(c0 + i)·pos + p0 ..][..16]` inside `rows·pos` (asserted above).
                unsafe {
                    for (j, v) in v.iter_mut().enumerate() {
                        *v = _mm512_loadu_ps(ap.add((p0 + j) * TR + c0));
                    }
                    simd::transpose16_regs(&mut v);
                    for (i, v) in v.iter().enumerate() {
                        let mut v = _mm512_add_ps(*v, _mm512_set1_ps(bias[c0 + i]));
                        if let Some((lo, hi)) = bounds {
                            v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
                        }
                        _mm512_storeu_ps(yp.add((c0 + i) * pos + p0), v);
                    }
                }
            }
        }
        (r16, p16)
    }

    /// `P` columns of a tall tile: `y[i·ldb + j0 + j] += Σ_kk a[kk·TR + i] · b[kk·ldb + j]`
    /// for `i < rows`, `j < P`, in `2·P` accumulators over the whole `k`. Returns `P`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `a.len() ≥ k·TR`, `b` holds `(k − 1)·ldb + P` values, `y` holds
    /// `(rows − 1)·ldb + j0 + P` values, `rows ≤ TR`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tall<const P: usize>(
        k: usize,
        a: &[f32],
        b: &[f32],
        ldb: usize,
        y: &mut [f32],
        j0: usize,
        rows: usize,
    ) -> usize {
        assert!(k > 0 && a.len() >= k * TR && b.len() >= (k - 1) * ldb + P && rows <= TR);
        assert!(rows == 0 || y.len() >= (rows - 1) * ldb + j0 + P);
        let mut acc = [[_mm512_setzero_ps(); 2]; P];
        let (mut ap, mut bp) = (a.as_ptr(), b.as_ptr());
        // SAFETY: step `kk < k` reads `a[kk·TR ..][..TR]` and `b[kk·ldb ..][..P]`, and the
        // prefetch hint may point past `a` (a hint never faults); the stores below write
        // rows `< rows`, columns `j0 .. j0 + P` of `y` (all asserted above).
        unsafe {
            for _ in 0..k {
                _mm_prefetch::<_MM_HINT_T0>(ap.wrapping_add(PREFETCH * TR) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(ap.wrapping_add(PREFETCH * TR + 16) as *const i8);
                let a0 = _mm512_loadu_ps(ap);
                let a1 = _mm512_loadu_ps(ap.add(16));
                for (j, acc) in acc.iter_mut().enumerate() {
                    let bv = _mm512_set1_ps(*bp.add(j));
                    acc[0] = _mm512_fmadd_ps(a0, bv, acc[0]);
                    acc[1] = _mm512_fmadd_ps(a1, bv, acc[1]);
                }
                ap = ap.add(TR);
                bp = bp.add(ldb);
            }
            let mut col = [0f32; TR];
            for (j, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(col.as_mut_ptr(), acc[0]);
                _mm512_storeu_ps(col.as_mut_ptr().add(16), acc[1]);
                for (i, &v) in col.iter().enumerate().take(rows) {
                    *y.get_unchecked_mut(i * ldb + j0 + j) += v;
                }
            }
        }
        P
    }

    /// The AVX-512 `MR × NR` tile, or its first `16·H` columns: `H·MR` accumulators held in
    /// registers across the `k` block.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `a.len() ≥ kc·MR`, `b` holds `kc` steps `ldb` apart of `16·H`
    /// values, and `y` holds
    /// `(rows − 1)·ldy + cols` values, `rows ≤ MR`, `cols ≤ 16·H ≤ NR`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn micro<const H: usize>(
        kc: usize,
        a: &[f32],
        (b, ldb): (&[f32], usize),
        y: &mut [f32],
        ldy: usize,
        rows: usize,
        cols: usize,
        init: Init<'_>,
        clamp: Option<Clamp>,
    ) {
        const { assert!(H >= 1 && 16 * H <= NR) };
        assert!(a.len() >= kc * MR && rows <= MR && cols <= 16 * H);
        assert!(kc == 0 || b.len() >= (kc - 1) * ldb + 16 * H);
        assert!(rows == 0 || y.len() >= (rows - 1) * ldy + cols);
        if let Init::Bias(Some(bias)) = init {
            assert!(bias.len() >= rows);
        }
        let (mut ap, mut bp) = (a.as_ptr(), b.as_ptr());
        let mut acc = [[_mm512_setzero_ps(); H]; MR];
        if let Init::Bias(_) = init {
            for (i, acc) in acc.iter_mut().enumerate().take(rows) {
                *acc = [_mm512_set1_ps(init.bias(i)); H];
            }
        }
        // SAFETY: for the whole block, step `kk < kc` reads `a[kk·MR .. kk·MR + MR]` and
        // `b[kk·ldb .. kk·ldb + 16·H]`, inside both slices (asserted above); the tile loads and
        // stores are masked to the `cols` columns of the `rows` rows that `y` holds.
        unsafe {
            for _ in 0..kc {
                let mut bv = [_mm512_setzero_ps(); H];
                for (h, v) in bv.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(bp.add(16 * h));
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*ap.add(i));
                    for (a, &b) in acc.iter_mut().zip(&bv) {
                        *a = _mm512_fmadd_ps(av, b, *a);
                    }
                }
                ap = ap.add(MR);
                bp = bp.add(ldb);
            }
            let lanes = |c: usize| -> __mmask16 {
                if c >= 16 {
                    0xFFFF
                } else {
                    ((1u32 << c) - 1) as __mmask16
                }
            };
            let (m0, m1) = (lanes(cols), lanes(cols.saturating_sub(16)));
            let yp = y.as_mut_ptr();
            let load = matches!(init, Init::Load);
            let bounds = clamp.map(|c| (_mm512_set1_ps(c.lo), _mm512_set1_ps(c.hi)));
            let bound = |v: __m512| match bounds {
                Some((lo, hi)) => _mm512_min_ps(_mm512_max_ps(v, lo), hi),
                None => v,
            };
            for (i, acc) in acc.iter().enumerate().take(rows) {
                let p0 = yp.add(i * ldy);
                let mut v0 = acc[0];
                if load {
                    v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, p0), v0);
                }
                _mm512_mask_storeu_ps(p0, m0, bound(v0));
                if let Some(&a1) = acc.get(1) {
                    let p1 = p0.wrapping_add(16);
                    let mut v1 = a1;
                    if load {
                        v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, p1), v1);
                    }
                    _mm512_mask_storeu_ps(p1, m1, bound(v1));
                }
            }
        }
    }
}

/// Elsewhere no `Avx512` token is ever made (`cpu::Isa::current`), so the tall kernels, which
/// take one, are never reached.
#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    use super::{Clamp, TR};

    pub(super) unsafe fn tall<const P: usize>(
        _: usize,
        _: &[f32],
        _: &[f32],
        _: usize,
        _: &mut [f32],
        _: usize,
        _: usize,
    ) -> usize {
        unreachable!("an Avx512 token is only made on x86_64")
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn direct<const P: usize, const C: usize, const SX: usize>(
        _: &[f32],
        _: &[u32],
        _: usize,
        _: &[f32],
        _: usize,
        _: usize,
        _: &mut [f32],
        _: bool,
    ) {
        unreachable!("an Avx512 token is only made on x86_64")
    }

    pub(super) unsafe fn store_transposed(
        _: &[f32],
        _: usize,
        _: usize,
        _: &mut [f32],
        _: &[f32; TR],
        _: Option<Clamp>,
    ) -> (usize, usize) {
        unreachable!("an Avx512 token is only made on x86_64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_panels_t_lays_out_the_transpose_as_row_panels() {
        let (m, k, ld) = (23, 7, 25);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 + 0.5).collect();
        let mut at = vec![-1f32; k * ld];
        for r in 0..m {
            for c in 0..k {
                at[c * ld + r] = a[r * k + c];
            }
        }
        let (mut want, mut got) = (Vec::new(), Vec::new());
        row_panels(&a, m, k, &mut want);
        row_panels_t(&at, ld, m, k, &mut got);
        assert_eq!(got, want);
    }

    /// A convolution through the product with its im2col matrix packed by the product itself
    /// (`Rhs::Conv`), on row panels and, where the CPU has AVX-512, on tall panels and as a
    /// direct convolution, equals the direct sum over the window, for padded, strided, dilated and grouped layers, several
    /// samples side by side, and an inner dimension long enough to be blocked.
    #[test]
    fn convolutions_through_the_product_equal_the_direct_sum() {
        let shapes = [
            // cin, h, w, cout, k, stride, pad, dil, groups, samples
            (3, 9, 7, 5, 3, 1, 1, 1, 1, 1),
            (4, 8, 8, 6, 3, 2, 1, 1, 2, 3),
            (2, 7, 9, 3, 2, 1, 0, 2, 1, 2),
            (8, 4, 4, 21, 1, 2, 0, 1, 1, 1),
            (160, 16, 16, 33, 3, 1, 1, 1, 1, 1),
            (16, 9, 9, 40, 3, 2, 1, 1, 1, 1),
            (4, 8, 8, 6, 3, 2, 1, 1, 2, 1),
            (5, 12, 14, 7, 3, 1, 2, 2, 1, 1),
            (3, 6, 56, 18, 3, 2, 1, 1, 1, 1),
            (2, 5, 16, 17, 3, 1, 1, 1, 1, 1),
        ];
        for (cin, h, w, cout, kk, st, pad, dil, groups, samples) in shapes {
            let span = dil * (kk - 1) + 1;
            let (oh, ow) = ((h + 2 * pad - span) / st + 1, (w + 2 * pad - span) / st + 1);
            let s = ConvShape {
                cin,
                h,
                w,
                cout,
                kh: kk,
                kw: kk,
                stride: (st, st),
                pad: (pad, pad),
                dil: (dil, dil),
                groups,
                oh,
                ow,
            };
            let (k, pos, rows) = (s.k(), s.positions(), cout / groups);
            let x: Vec<f32> = (0..samples * cin * h * w)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let wt: Vec<f32> = (0..cout * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            for g in 0..groups {
                // The direct sum, column `j·pos + p` for sample `j`, position `p`.
                let n = samples * pos;
                let mut want = vec![0f32; rows * n];
                for r in 0..rows {
                    for j in 0..samples {
                        for (oy, ox) in (0..oh).flat_map(|oy| (0..ow).map(move |ox| (oy, ox))) {
                            let mut sum = 0f32;
                            for c in 0..cin / groups {
                                for (i, jj) in (0..kk).flat_map(|i| (0..kk).map(move |jj| (i, jj)))
                                {
                                    let iy = (oy * st + i * dil) as isize - pad as isize;
                                    let ix = (ox * st + jj * dil) as isize - pad as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let ci = g * (cin / groups) + c;
                                    let xv = x[j * cin * h * w
                                        + (ci * h + iy as usize) * w
                                        + ix as usize];
                                    sum += wt[(g * rows + r) * k + (c * kk + i) * kk + jj] * xv;
                                }
                            }
                            want[r * n + j * pos + oy * ow + ox] = sum;
                        }
                    }
                }
                let wg = &wt[g * rows * k..(g + 1) * rows * k];
                let c = ConvRhs {
                    x: &x,
                    shape: &s,
                    group: g,
                    samples,
                };
                let mut sc = GemmScratch::default();
                let mut panels = Vec::new();
                row_panels(wg, rows, k, &mut panels);
                let mut got = vec![0f32; rows * n];
                let a = Lhs {
                    panels: &panels,
                    m: rows,
                    k,
                };
                product(
                    Isa::current().avx512,
                    a,
                    n,
                    Rhs::Conv(c),
                    &mut got,
                    &mut sc,
                    Start::Add,
                    None,
                );
                let close = |a: &[f32], b: &[f32]| {
                    a.iter()
                        .zip(b)
                        .all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + b.abs()))
                };
                assert!(close(&got, &want), "row panels, {s:?} group {g}");
                // Started from the bias, whatever `y` held, on both micro-kernels.
                let bias: Vec<f32> = (0..rows).map(|r| r as f32 * 0.25 - 1.0).collect();
                let want_b: Vec<f32> = want
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v + bias[i / n])
                    .collect();
                // And bounded as stored, both bounds reached.
                let bounds = Clamp { lo: -0.1, hi: 0.3 };
                let mut want_c = want_b.clone();
                bounds.apply(&mut want_c);
                assert!(want_c.iter().zip(&want_b).any(|(c, b)| c != b));
                for isa in [Isa::current().avx512, None] {
                    let mut got = vec![f32::NAN; rows * n];
                    let start = Start::Bias(Some(&bias));
                    product(isa, a, n, Rhs::Conv(c), &mut got, &mut sc, start, None);
                    assert!(
                        close(&got, &want_b),
                        "from the bias, {s:?} group {g}, {isa:?}"
                    );
                    let mut got = vec![f32::NAN; rows * n];
                    let clamp = Some(bounds);
                    product(isa, a, n, Rhs::Conv(c), &mut got, &mut sc, start, clamp);
                    assert!(close(&got, &want_c), "bounded, {s:?} group {g}, {isa:?}");
                }
                if let Some(avx512) = Isa::current().avx512 {
                    let tall = tall_panels(wg, rows, k);
                    let mut got = vec![0f32; rows * n];
                    let a = Lhs {
                        panels: &tall,
                        m: rows,
                        k,
                    };
                    product_tall(avx512, a, n, Rhs::Conv(c), &mut got, &mut sc);
                    assert!(close(&got, &want), "tall panels, {s:?} group {g}");
                    if samples == 1 && st <= 2 {
                        // Whatever `y` held, from the bias and bounded or not, the 16 × 16
                        // blocks and the ragged rest alike.
                        let cases = [
                            (None, None, &want),
                            (Some(&bias[..]), None, &want_b),
                            (Some(&bias[..]), Some(bounds), &want_c),
                        ];
                        for (b, clamp, want) in cases {
                            let mut got = vec![f32::NAN; rows * n];
                            product_direct(avx512, a, c, &mut got, &mut sc, b, clamp);
                            let case = (b.is_some(), clamp.is_some());
                            assert!(close(&got, want), "direct {case:?}, {s:?} group {g}");
                        }
                    }
                }
            }
        }
    }
}
