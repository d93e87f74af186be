//! The non-parametric ops on one sample's `[C, H, W]` (or flat) values, the im2col that turns
//! a convolution into the matrix kernels' `W · B`, and the transposes between sample-major and
//! feature-major activations.

use std::ops::Range;

use super::cpu::{Avx512, Isa};
use super::gemm::NR;
#[cfg(target_arch = "x86_64")]
use super::simd;
use crate::model::{Activation, LinearTap, adaptive_window};

/// One convolution's geometry for one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub dil: (usize, usize),
    pub groups: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvShape {
    /// Rows of the im2col matrix of one group: `cin/groups × kh × kw`.
    pub fn k(&self) -> usize {
        self.cin / self.groups * self.kh * self.kw
    }

    /// Output positions: `oh × ow`.
    pub fn positions(&self) -> usize {
        self.oh * self.ow
    }

    /// A 1×1, stride-1, unpadded convolution reads its input as the im2col matrix directly.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == (1, 1) && self.pad == (0, 0)
    }
}

/// Values im2col can lay out. The copy of one short output row is specialised per type: a
/// general `copy_from_slice` of a few values costs a library call each, and a 5×5 convolution
/// over an 8×8 output copies 25 rows of 8 values per input channel.
pub trait Cell: Copy + Default {
    /// Copies `src` into `dst` (of the same length), with vector moves given the token.
    #[inline]
    fn copy_row(dst: &mut [Self], src: &[Self], _avx512: Option<Avx512>) {
        dst.copy_from_slice(src);
    }
}

impl Cell for i16 {}
impl Cell for u8 {}

impl Cell for f32 {
    #[inline]
    fn copy_row(dst: &mut [f32], src: &[f32], avx512: Option<Avx512>) {
        #[cfg(target_arch = "x86_64")]
        if avx512.is_some() && dst.len() <= 64 && src.len() == dst.len() {
            // SAFETY: the `Avx512` token vouches for AVX-512F; both slices hold `dst.len()`
            // values.
            unsafe { copy_short(dst, src) };
            return;
        }
        let _ = avx512;
        dst.copy_from_slice(src);
    }
}

/// Copies up to 64 f32 in masked 16-lane steps. (A loop of plain vector moves is turned
/// back into a call to `memcpy` by the compiler, which costs more than the copy.)
///
/// # Safety
/// The CPU has AVX-512F; `dst.len() == src.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn copy_short(dst: &mut [f32], src: &[f32]) {
    use std::arch::x86_64::*;
    let n = dst.len().min(src.len());
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    let mut k = 0;
    // SAFETY: every step reads and writes only the lanes `k .. min(k + 16, n)` its mask
    // admits: inside both slices.
    unsafe {
        while k < n {
            let m = (u32::MAX >> (32 - (n - k).min(16))) as __mmask16;
            let v = _mm512_maskz_loadu_ps(m, sp.add(k));
            _mm512_mask_storeu_ps(dp.add(k), m, v);
            k += 16;
        }
    }
}

/// Lays out group `g` of `x` (`cin × h × w`) as the `k × (oh·ow)` matrix whose row
/// `ci·kh·kw + i·kw + j` holds input channel `ci` shifted by kernel offset `(i, j)` (PyTorch's
/// OIHW weight order), zeros where the window overhangs the padding; short rows copied with
/// vector moves where the CPU has them (`cpu::Isa::current`).
pub fn im2col<T: Cell>(x: &[T], s: &ConvShape, g: usize, out: &mut [T]) {
    let avx512 = Isa::current().avx512;
    im2col_into(x, s, g, out, (s.positions(), 0), T::default(), avx512);
}

/// `im2col` writing row `r` at `out[r·stride + offset ..][..oh·ow]` for `at = (stride,
/// offset)`, so several samples' matrices can sit side by side in one wide matrix, with `fill`
/// where the window overhangs the padding (the zero point, for activation codes), and vector
/// moves given the `Avx512` token.
pub fn im2col_into<T: Cell>(
    x: &[T],
    s: &ConvShape,
    g: usize,
    out: &mut [T],
    at: (usize, usize),
    fill: T,
    avx512: Option<Avx512>,
) {
    let (stride, offset) = at;
    let p = s.positions();
    for row in 0..s.k() {
        let o = &mut out[row * stride + offset..row * stride + offset + p];
        im2col_row(x, s, g, row, o, fill, avx512);
    }
}

/// Row `row` (`ci·kh·kw + i·kw + j`) of group `g`'s im2col matrix of `x`: input channel `ci`
/// of the group shifted by kernel offset `(i, j)`, one value per output position, `fill` where
/// the window overhangs the padding.
#[inline]
fn im2col_row<T: Cell>(
    x: &[T],
    s: &ConvShape,
    g: usize,
    row: usize,
    o: &mut [T],
    fill: T,
    vector: Option<Avx512>,
) {
    let cg = s.cin / s.groups;
    let (ci, i, j) = (row / (s.kh * s.kw), row / s.kw % s.kh, row % s.kw);
    let plane = &x[(g * cg + ci) * s.h * s.w..(g * cg + ci + 1) * s.h * s.w];
    if s.pad == (0, 0) && s.ow > 0 {
        // A valid convolution: output row `oy` is input row `oy·sy + i·dy` from column
        // `j·dx`, always inside the plane.
        for (oy, orow) in o.chunks_exact_mut(s.ow).enumerate().take(s.oh) {
            let src = &plane[(oy * s.stride.0 + i * s.dil.0) * s.w + j * s.dil.1..];
            if s.stride.1 == 1 {
                T::copy_row(orow, &src[..s.ow], vector);
            } else {
                for (v, &x) in orow.iter_mut().zip(src.iter().step_by(s.stride.1)) {
                    *v = x;
                }
            }
        }
        return;
    }
    let off = (j * s.dil.1) as isize - s.pad.1 as isize;
    // Output columns whose input column `ox·stride + off` is inside the row.
    let sx = s.stride.1 as isize;
    let lo = if off >= 0 { 0 } else { (-off + sx - 1) / sx } as usize;
    let hi = ((s.w as isize - off + sx - 1) / sx).clamp(0, s.ow as isize) as usize;
    let lo = lo.min(hi);
    for (oy, orow) in o.chunks_exact_mut(s.ow.max(1)).enumerate().take(s.oh) {
        let iy = (oy * s.stride.0 + i * s.dil.0) as isize - s.pad.0 as isize;
        if iy < 0 || iy >= s.h as isize {
            orow.fill(fill);
            continue;
        }
        let src = &plane[iy as usize * s.w..(iy as usize + 1) * s.w];
        orow[..lo].fill(fill);
        orow[hi..].fill(fill);
        let first = (lo as isize * sx + off) as usize;
        if s.stride.1 == 1 {
            T::copy_row(&mut orow[lo..hi], &src[first..first + hi - lo], vector);
        } else {
            for (v, &x) in orow[lo..hi]
                .iter_mut()
                .zip(src[first..].iter().step_by(s.stride.1))
            {
                *v = x;
            }
        }
    }
}

/// Group `g`'s input channels of `samples` samples of `x`, zero-padded into `out`; returns the
/// geometry of the same convolution as a valid one (no padding, one group) over them, whose
/// im2col rows need no bounds tests.
pub(crate) fn pad_group(
    x: &[f32],
    s: &ConvShape,
    g: usize,
    samples: usize,
    out: &mut Vec<f32>,
    avx512: Option<Avx512>,
) -> ConvShape {
    let cg = s.cin / s.groups;
    let (h, w) = (s.h + 2 * s.pad.0, s.w + 2 * s.pad.1);
    out.clear();
    out.resize(samples * cg * h * w, 0.0);
    let in_len = s.cin * s.h * s.w;
    // (`max(1)`: an empty plane has no rows to copy, and a chunk length may not be 0.)
    for (sample, dst) in out
        .chunks_exact_mut((cg * h * w).max(1))
        .enumerate()
        .take(samples)
    {
        let src = &x[sample * in_len + g * cg * s.h * s.w..][..cg * s.h * s.w];
        let planes = src.chunks_exact((s.h * s.w).max(1));
        for (plane, dplane) in planes.zip(dst.chunks_exact_mut((h * w).max(1))) {
            for (row, drow) in plane
                .chunks_exact(s.w.max(1))
                .zip(dplane[s.pad.0 * w..].chunks_exact_mut(w.max(1)))
            {
                f32::copy_row(&mut drow[s.pad.1..s.pad.1 + s.w], row, avx512);
            }
        }
    }
    ConvShape {
        cin: cg,
        h,
        w,
        cout: s.cout / s.groups,
        pad: (0, 0),
        groups: 1,
        ..*s
    }
}

/// Columns `j0 ..` of rows `k0 .. k0 + kc` of the im2col matrix of `samples` samples side by
/// side (group `g`; column `c` is sample `c / positions`, position `c % positions`), written
/// straight into the matrix product's column panels (`kc × NR` each, columns past the last
/// zero): the product's packing of its right-hand operand, without the whole
/// im2col matrix in between. `row` is scratch for one im2col row of every sample.
#[allow(clippy::too_many_arguments)]
pub(crate) fn im2col_panels(
    x: &[f32],
    s: &ConvShape,
    g: usize,
    samples: usize,
    (k0, kc): (usize, usize),
    out: &mut [f32],
    row: &mut Vec<f32>,
    avx512: Option<Avx512>,
) {
    let (pos, in_len) = (s.positions(), s.cin * s.h * s.w);
    let n = samples * pos;
    let panels = n.div_ceil(NR);
    row.clear();
    row.resize(panels * NR, 0.0);
    for kk in 0..kc {
        for (sample, o) in row.chunks_exact_mut(pos.max(1)).enumerate().take(samples) {
            im2col_row(&x[sample * in_len..], s, g, k0 + kk, o, 0.0, avx512);
        }
        for (jp, src) in row.chunks_exact(NR).enumerate() {
            let at = jp * kc * NR + kk * NR;
            if let (Ok(d), Ok(src)) = (
                <&mut [f32; NR]>::try_from(&mut out[at..at + NR]),
                <&[f32; NR]>::try_from(src),
            ) {
                // A fixed-size copy: two vector moves rather than a library call.
                *d = *src;
            }
        }
    }
}

/// Pooling window geometry for one sample `[c, h, w]` → `[c, oh, ow]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolShape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub oh: usize,
    pub ow: usize,
}

/// Max pooling; padded positions never win (PyTorch pads with −∞).
pub fn max_pool(x: &[f32], s: &PoolShape, out: &mut [f32]) {
    if s.pad == (0, 0) && s.kernel == (2, 2) && s.stride == (2, 2) {
        // The common 2×2 / stride 2 window, unpadded: two input rows per output row, no
        // bounds tests in the inner loop.
        for c in 0..s.c {
            let plane = &x[c * s.h * s.w..(c + 1) * s.h * s.w];
            let o = &mut out[c * s.oh * s.ow..(c + 1) * s.oh * s.ow];
            for (oy, orow) in o.chunks_exact_mut(s.ow).enumerate() {
                let r0 = &plane[2 * oy * s.w..][..2 * s.ow];
                let r1 = &plane[(2 * oy + 1) * s.w..][..2 * s.ow];
                for ((v, a), b) in orow
                    .iter_mut()
                    .zip(r0.chunks_exact(2))
                    .zip(r1.chunks_exact(2))
                {
                    *v = a[0].max(a[1]).max(b[0].max(b[1]));
                }
            }
        }
        return;
    }
    pool(x, s, out, f32::NEG_INFINITY, f32::max, |m, _| m);
}

/// Average pooling counting padded zeros (PyTorch's default `count_include_pad=True`).
pub fn avg_pool(x: &[f32], s: &PoolShape, out: &mut [f32]) {
    let area = (s.kernel.0 * s.kernel.1) as f32;
    pool(x, s, out, 0.0, |a, b| a + b, |sum, _| sum / area);
}

fn pool(
    x: &[f32],
    s: &PoolShape,
    out: &mut [f32],
    init: f32,
    fold: impl Fn(f32, f32) -> f32,
    finish: impl Fn(f32, usize) -> f32,
) {
    for c in 0..s.c {
        let plane = &x[c * s.h * s.w..(c + 1) * s.h * s.w];
        let o = &mut out[c * s.oh * s.ow..(c + 1) * s.oh * s.ow];
        for oy in 0..s.oh {
            for ox in 0..s.ow {
                let mut acc = init;
                for i in 0..s.kernel.0 {
                    let iy = (oy * s.stride.0 + i) as isize - s.pad.0 as isize;
                    if iy < 0 || iy >= s.h as isize {
                        continue;
                    }
                    let row = &plane[iy as usize * s.w..(iy as usize + 1) * s.w];
                    for j in 0..s.kernel.1 {
                        let ix = (ox * s.stride.1 + j) as isize - s.pad.1 as isize;
                        if ix >= 0 && ix < s.w as isize {
                            acc = fold(acc, row[ix as usize]);
                        }
                    }
                }
                o[oy * s.ow + ox] = finish(acc, 0);
            }
        }
    }
}

/// Mean over each channel's `hw` values.
pub fn global_avg_pool(x: &[f32], c: usize, hw: usize, out: &mut [f32]) {
    for ch in 0..c {
        let sum: f32 = x[ch * hw..(ch + 1) * hw].iter().sum();
        out[ch] = sum / hw as f32;
    }
}

/// Geometry of a resampling step for one sample `[c, h, w]` → `[c, oh, ow]` (adaptive
/// pooling, upsampling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResampleShape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
}

/// PyTorch's adaptive average pooling: output `(i, j)` is the mean of the window rows
/// `adaptive_window(i, h, oh)` by columns `adaptive_window(j, w, ow)`, summed row by row and
/// divided by its area, as PyTorch's CPU kernel.
pub fn adaptive_avg_pool(x: &[f32], s: &ResampleShape, out: &mut [f32]) {
    for c in 0..s.c {
        let plane = &x[c * s.h * s.w..(c + 1) * s.h * s.w];
        let o = &mut out[c * s.oh * s.ow..(c + 1) * s.oh * s.ow];
        for oy in 0..s.oh {
            let (y0, y1) = adaptive_window(oy, s.h, s.oh);
            for ox in 0..s.ow {
                let (x0, x1) = adaptive_window(ox, s.w, s.ow);
                let mut sum = 0.0f32;
                for row in plane[y0 * s.w..y1 * s.w].chunks(s.w) {
                    for v in &row[x0..x1] {
                        sum += v;
                    }
                }
                o[oy * s.ow + ox] = sum / ((y1 - y0) * (x1 - x0)) as f32;
            }
        }
    }
}

/// Nearest upsampling by integer factors: output `(i, j)` is input `(i / sh, j / sw)`, with
/// `sh = oh / h`, `sw = ow / w`.
pub fn upsample_nearest(x: &[f32], s: &ResampleShape, out: &mut [f32]) {
    let sh = (s.oh / s.h.max(1)).max(1);
    let sw = (s.ow / s.w.max(1)).max(1);
    for c in 0..s.c {
        let plane = &x[c * s.h * s.w..(c + 1) * s.h * s.w];
        let o = &mut out[c * s.oh * s.ow..(c + 1) * s.oh * s.ow];
        for (oy, orow) in o.chunks_mut(s.ow.max(1)).enumerate() {
            let row = &plane[(oy / sh) * s.w..(oy / sh + 1) * s.w];
            for (v, chunk) in row.iter().zip(orow.chunks_mut(sw)) {
                chunk.fill(*v);
            }
        }
    }
}

/// Bilinear upsampling through each axis' taps (`linear_taps`: `rows` for the height, `cols`
/// for the width): along the width within the two rows read, then between them, in PyTorch's
/// order.
pub fn upsample_bilinear(
    x: &[f32],
    s: &ResampleShape,
    (rows, cols): (&[LinearTap], &[LinearTap]),
    out: &mut [f32],
) {
    let along = |row: &[f32], t: &LinearTap| t.w0 * row[t.i0] + t.w1 * row[t.i1];
    for c in 0..s.c {
        let plane = &x[c * s.h * s.w..(c + 1) * s.h * s.w];
        let o = &mut out[c * s.oh * s.ow..(c + 1) * s.oh * s.ow];
        for (orow, r) in o.chunks_mut(s.ow.max(1)).zip(rows) {
            let row0 = &plane[r.i0 * s.w..(r.i0 + 1) * s.w];
            let row1 = &plane[r.i1 * s.w..(r.i1 + 1) * s.w];
            for (v, t) in orow.iter_mut().zip(cols) {
                *v = r.w0 * along(row0, t) + r.w1 * along(row1, t);
            }
        }
    }
}

/// Each token id of `ids` replaced by its row of `table` (`dim` values a row). A run cannot
/// fail: an id that is not a row, which `CompressedModel::check_inputs` refuses before a run,
/// gives a row of NaN.
pub fn embedding(ids: &[f32], table: &[f32], dim: usize, out: &mut [f32]) {
    let rows = table.len() / dim.max(1);
    for (id, y) in ids.iter().zip(out.chunks_mut(dim.max(1))) {
        let row =
            (id.fract() == 0.0 && *id >= 0.0 && (*id as usize) < rows).then_some(*id as usize);
        match row {
            Some(r) => y.copy_from_slice(&table[r * dim..(r + 1) * dim]),
            None => y.fill(f32::NAN),
        }
    }
}

/// How two values of one sample join element by element: `c` channels of `hw` values each,
/// either operand whole (`c × hw` values) or one value per channel, broadcast. Equal shapes
/// are one channel of all the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinShape {
    pub c: usize,
    pub hw: usize,
    pub a_per_channel: bool,
    pub b_per_channel: bool,
}

impl JoinShape {
    /// The join of values shaped `a` and `b` (as `model::shape::broadcast` allows them).
    pub fn new(a: &[usize], b: &[usize]) -> JoinShape {
        let len = |s: &[usize]| s.iter().product::<usize>();
        if a == b {
            return JoinShape {
                c: 1,
                hw: len(a),
                a_per_channel: false,
                b_per_channel: false,
            };
        }
        let (big, a_small) = if len(a) >= len(b) {
            (a, false)
        } else {
            (b, true)
        };
        let c = big.first().copied().unwrap_or(1);
        JoinShape {
            c,
            hw: len(big) / c.max(1),
            a_per_channel: a_small,
            b_per_channel: !a_small,
        }
    }

    /// Values per sample of the output.
    pub fn len(&self) -> usize {
        self.c * self.hw
    }
}

/// `y = a + b` or `a × b` for one sample, as `j` says the operands are laid out.
pub fn join(a: &[f32], b: &[f32], j: &JoinShape, mul: bool, y: &mut [f32]) {
    if mul {
        join_with(a, b, j, y, |x, z| x * z);
    } else {
        join_with(a, b, j, y, |x, z| x + z);
    }
}

/// Channel `ch` of a value of `hw` values per channel.
fn channel(v: &[f32], ch: usize, hw: usize) -> &[f32] {
    v.get(ch * hw..(ch + 1) * hw).unwrap_or(&[])
}

fn join_with(a: &[f32], b: &[f32], j: &JoinShape, y: &mut [f32], f: impl Fn(f32, f32) -> f32) {
    let hw = j.hw;
    for (ch, out) in y[..j.len()].chunks_mut(hw.max(1)).enumerate() {
        let whole = |v| channel(v, ch, hw);
        match (j.a_per_channel, j.b_per_channel) {
            (false, false) => {
                for ((o, x), z) in out.iter_mut().zip(whole(a)).zip(whole(b)) {
                    *o = f(*x, *z);
                }
            }
            (true, false) => {
                let x = a[ch];
                for (o, z) in out.iter_mut().zip(whole(b)) {
                    *o = f(x, *z);
                }
            }
            (false, true) => {
                let z = b[ch];
                for (o, x) in out.iter_mut().zip(whole(a)) {
                    *o = f(*x, z);
                }
            }
            (true, true) => out.fill(f(a[ch], b[ch])),
        }
    }
}

/// Layer normalization of each run of `weight.len()` values in place: `(x − mean) / √(var +
/// eps) × weight + bias` with the biased variance, the sums in f64.
pub fn layer_norm(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f64) {
    let d = weight.len().max(1);
    for row in x.chunks_mut(d) {
        let mean = row.iter().map(|v| f64::from(*v)).sum::<f64>() / d as f64;
        let var = row
            .iter()
            .map(|v| (f64::from(*v) - mean).powi(2))
            .sum::<f64>()
            / d as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
            *v = ((f64::from(*v) - mean) * inv) as f32 * w + b;
        }
    }
}

/// For a sample of shape `shape` with dimensions `a` and `b` swapped: the input index of each
/// output value.
pub fn transpose_index(shape: &[usize], a: usize, b: usize) -> Vec<usize> {
    let mut strides = vec![1usize; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * shape[k + 1];
    }
    let mut out_shape = shape.to_vec();
    out_shape.swap(a, b);
    strides.swap(a, b);
    let len: usize = shape.iter().product();
    let mut index = Vec::with_capacity(len);
    let mut at = vec![0usize; shape.len()];
    for _ in 0..len {
        index.push(at.iter().zip(&strides).map(|(i, s)| i * s).sum());
        // The next output position, last dimension fastest.
        for k in (0..at.len()).rev() {
            at[k] += 1;
            if at[k] < out_shape[k] {
                break;
            }
            at[k] = 0;
        }
    }
    index
}

/// For a sample of shape `shape`, index `i` of dimension `dim` (the dimension dropped): the
/// input index of each output value.
pub fn select_index(shape: &[usize], dim: usize, i: usize) -> Vec<usize> {
    let outer: usize = shape[..dim].iter().product();
    let inner: usize = shape[dim + 1..].iter().product();
    (0..outer)
        .flat_map(|o| {
            let start = (o * shape[dim] + i) * inner;
            start..start + inner
        })
        .collect()
}

/// The mean over the middle dimension of `x` seen as `[outer, n, inner]`.
pub fn mean(x: &[f32], (outer, n, inner): (usize, usize, usize), y: &mut [f32]) {
    for o in 0..outer {
        let ys = &mut y[o * inner..(o + 1) * inner];
        ys.fill(0.0);
        for row in x[o * n * inner..(o + 1) * n * inner].chunks(inner.max(1)) {
            for (v, a) in ys.iter_mut().zip(row) {
                *v += a;
            }
        }
        for v in ys {
            *v /= n as f32;
        }
    }
}

/// Self-attention of one sample: `x` is `[tokens, 3·d]` (queries, keys, values), `y` `[tokens,
/// d]`; per head of `d / heads` values, softmax(q·kᵀ / √(d/heads))·v. `scores` is scratch.
pub fn attention(
    x: &[f32],
    (tokens, d, heads): (usize, usize, usize),
    y: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let dh = d / heads.max(1);
    let scale = 1.0 / (dh as f32).sqrt();
    scores.resize(tokens, 0.0);
    for h in 0..heads {
        let col = h * dh;
        for i in 0..tokens {
            let q = &x[i * 3 * d + col..i * 3 * d + col + dh];
            let mut max = f32::NEG_INFINITY;
            for (j, s) in scores.iter_mut().enumerate() {
                let k = &x[j * 3 * d + d + col..j * 3 * d + d + col + dh];
                let dot: f32 = q.iter().zip(k).map(|(a, b)| a * scale * b).sum();
                *s = dot;
                max = max.max(dot);
            }
            let mut sum = 0.0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let out = &mut y[i * d + col..i * d + col + dh];
            out.fill(0.0);
            for (j, s) in scores.iter().enumerate() {
                let p = s / sum;
                let v = &x[j * 3 * d + 2 * d + col..j * 3 * d + 2 * d + col + dh];
                for (o, v) in out.iter_mut().zip(v) {
                    *o += p * v;
                }
            }
        }
    }
}

/// `x × scale[c] + shift[c]` per channel of `per` values.
pub fn channel_affine(x: &mut [f32], scale: &[f32], shift: &[f32], per: usize) {
    for (c, chunk) in x.chunks_mut(per.max(1)).enumerate() {
        let (a, b) = (scale[c], shift[c]);
        for v in chunk {
            *v = v.mul_add(a, b);
        }
    }
}

/// An activation that bounds its input, `min(max(x, lo), hi)` (ReLU, ReLU6): the kernels of
/// the layer before it apply it to their sums in registers, as they store them, so the
/// activation costs no pass of its own over the layer's outputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clamp {
    pub lo: f32,
    pub hi: f32,
}

impl Clamp {
    /// The bounds of `a`, when it is one.
    pub fn of(a: Activation) -> Option<Clamp> {
        match a {
            Activation::Relu => Some(Clamp {
                lo: 0.0,
                hi: f32::INFINITY,
            }),
            Activation::Relu6 => Some(Clamp { lo: 0.0, hi: 6.0 }),
            _ => None,
        }
    }

    /// `v` bounded (a NaN becomes `lo`, as the vector kernels' max-then-min gives).
    #[inline]
    pub fn bound(self, v: f32) -> f32 {
        v.max(self.lo).min(self.hi)
    }

    /// `x`'s values bounded, where a kernel did not bound them itself.
    pub fn apply(self, x: &mut [f32]) {
        x.iter_mut().for_each(|v| *v = self.bound(*v));
    }
}

pub fn activation(x: &mut [f32], a: Activation) {
    match a {
        Activation::Relu | Activation::Relu6 => {
            if let Some(c) = Clamp::of(a) {
                c.apply(x)
            }
        }
        Activation::LeakyRelu(s) => {
            let s = s as f32;
            x.iter_mut().for_each(|v| {
                if *v < 0.0 {
                    *v *= s
                }
            })
        }
        Activation::Gelu => x.iter_mut().for_each(|v| {
            *v = (0.5 * *v as f64 * (1.0 + erf(*v as f64 / std::f64::consts::SQRT_2))) as f32
        }),
        Activation::Tanh => x.iter_mut().for_each(|v| *v = v.tanh()),
        Activation::Sigmoid => x.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
        Activation::Silu => x.iter_mut().for_each(|v| *v /= 1.0 + (-*v).exp()),
        Activation::Hardswish => x
            .iter_mut()
            .for_each(|v| *v = *v * (*v + 3.0).clamp(0.0, 6.0) / 6.0),
        Activation::Hardsigmoid => x
            .iter_mut()
            .for_each(|v| *v = (*v + 3.0).clamp(0.0, 6.0) / 6.0),
    }
}

/// Softmax over consecutive runs of `last` values (the last dimension).
pub fn softmax(x: &mut [f32], last: usize) {
    for row in x.chunks_mut(last.max(1)) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        for v in row.iter_mut() {
            *v /= sum;
        }
    }
}

/// The error function, to f64 precision well below f32's (W. J. Cody's rational
/// approximations as used by many libms would be overkill; this series/continued-fraction pair
/// is accurate to ~1e-15).
fn erf(x: f64) -> f64 {
    if x.abs() < 2.5 {
        // Maclaurin series: erf x = 2/√π Σ (−1)^n x^(2n+1) / (n! (2n+1)).
        let mut term = x;
        let mut sum = x;
        let x2 = x * x;
        let mut n = 0.0;
        // |x| < 2.5 converges well within 100 terms; the bound also ends x = 0 at once.
        while n < 100.0 {
            n += 1.0;
            term *= -x2 / n;
            let t = term / (2.0 * n + 1.0);
            sum += t;
            if t.abs() <= 1e-17 * sum.abs() {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else {
        // erfc by continued fraction (Lentz), accurate for |x| ≥ 2.5.
        let ax = x.abs();
        let mut f = ax;
        let mut c = ax;
        let mut d = 0.0;
        for k in 1..200 {
            let a = k as f64 / 2.0;
            d = ax + a * d;
            d = 1.0 / d;
            c = ax + a / c;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        let erfc = (-ax * ax).exp() / (f * std::f64::consts::PI.sqrt());
        if x > 0.0 { 1.0 - erfc } else { erfc - 1.0 }
    }
}

/// `out (c × r) = xᵀ` for `x (r × c)`: whole 16 × 16 blocks in registers given the `Avx512`
/// token, the rest in cache-sized tiles.
pub fn transpose(x: &[f32], r: usize, c: usize, out: &mut [f32], avx512: Option<Avx512>) {
    let (x, out) = (&x[..r * c], &mut out[..r * c]);
    #[cfg(target_arch = "x86_64")]
    if avx512.is_some() {
        // SAFETY: the `Avx512` token vouches for AVX-512F; both slices hold `r·c` values.
        unsafe { simd::transpose_blocks16(x, r, c, out) };
        let (r16, c16) = (r / 16 * 16, c / 16 * 16);
        transpose_tiles(x, r, c, 0..r16, c16..c, out);
        transpose_tiles(x, r, c, r16..r, 0..c, out);
        return;
    }
    let _ = avx512;
    transpose_tiles(x, r, c, 0..r, 0..c, out);
}

/// The part `rows × cols` of `transpose`, in 32 × 32 tiles.
fn transpose_tiles(
    x: &[f32],
    r: usize,
    c: usize,
    rows: Range<usize>,
    cols: Range<usize>,
    out: &mut [f32],
) {
    const T: usize = 32;
    for i0 in rows.clone().step_by(T) {
        for j0 in cols.clone().step_by(T) {
            for i in i0..(i0 + T).min(rows.end) {
                for j in j0..(j0 + T).min(cols.end) {
                    out[j * r + i] = x[i * c + j];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_rows_copy_exactly_their_values_on_both_paths() {
        for avx512 in [Isa::current().avx512, None] {
            for n in 0..=70 {
                let src: Vec<f32> = (0..n).map(|i| i as f32 + 0.5).collect();
                // Guards either side of the row: nothing outside it is written.
                let mut dst = vec![-1f32; n + 32];
                f32::copy_row(&mut dst[16..16 + n], &src, avx512);
                assert_eq!(&dst[16..16 + n], &src[..], "{n} values, {avx512:?}");
                assert!(dst[..16].iter().chain(&dst[16 + n..]).all(|&v| v == -1.0));
            }
        }
    }

    #[test]
    fn transpose_matches_the_definition_on_both_paths_and_ragged_shapes() {
        for avx512 in [crate::engine::cpu::Isa::current().avx512, None] {
            for (r, c) in [
                (1, 1),
                (16, 16),
                (128, 784),
                (37, 50),
                (15, 33),
                (48, 17),
                (3, 64),
            ] {
                let x: Vec<f32> = (0..r * c).map(|i| i as f32).collect();
                let mut out = vec![f32::NAN; r * c];
                transpose(&x, r, c, &mut out, avx512);
                for i in 0..r {
                    for j in 0..c {
                        assert_eq!(out[j * r + i], x[i * c + j], "{r}×{c} at ({i}, {j})");
                    }
                }
            }
        }
    }

    #[test]
    fn two_by_two_max_pool_matches_the_general_window() {
        for (h, w) in [(4, 4), (5, 7), (2, 3), (9, 8)] {
            let c = 3;
            let x: Vec<f32> = (0..c * h * w)
                .map(|i| ((i * 37) % 23) as f32 - 11.0)
                .collect();
            let s = PoolShape {
                c,
                h,
                w,
                kernel: (2, 2),
                stride: (2, 2),
                pad: (0, 0),
                oh: (h - 2) / 2 + 1,
                ow: (w - 2) / 2 + 1,
            };
            let mut fast = vec![0f32; c * s.oh * s.ow];
            let mut general = fast.clone();
            max_pool(&x, &s, &mut fast);
            pool(&x, &s, &mut general, f32::NEG_INFINITY, f32::max, |m, _| m);
            assert_eq!(fast, general, "{h}×{w}");
        }
    }

    #[test]
    fn im2col_into_places_rows_at_the_offset() {
        let s = ConvShape {
            cin: 2,
            h: 4,
            w: 5,
            cout: 1,
            kh: 3,
            kw: 2,
            stride: (1, 2),
            pad: (1, 0),
            dil: (1, 1),
            groups: 1,
            oh: 4,
            ow: 2,
        };
        let x: Vec<f32> = (0..40).map(|i| i as f32).collect();
        let (k, p) = (s.k(), s.positions());
        let mut one = vec![0f32; k * p];
        im2col(&x, &s, 0, &mut one);
        let mut wide = vec![-1f32; k * 3 * p];
        im2col_into(&x, &s, 0, &mut wide, (3 * p, p), 0.0, None);
        for r in 0..k {
            assert_eq!(
                &wide[r * 3 * p + p..r * 3 * p + 2 * p],
                &one[r * p..(r + 1) * p]
            );
            assert!(wide[r * 3 * p..r * 3 * p + p].iter().all(|&v| v == -1.0));
        }
    }

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.0, 0.999_977_909_503_001_4),
            (-1.0, -0.842_700_792_949_714_9),
        ] {
            assert!((erf(x) - want).abs() < 1e-12, "erf({x}) = {}", erf(x));
        }
    }
}
