//! What the kernel variants share: the scratch buffers a run reuses, the bias, rows taken four
//! at a time, and the portable sums.

use std::ops::Range;

use super::super::gemm::GemmScratch;

/// Buffers the kernels reuse between calls, so a warm run allocates nothing.
#[derive(Debug, Default, Clone)]
pub struct KernelScratch {
    /// A row's decoded values.
    pub(super) vals: Vec<f32>,
    /// A row's unpacked codes.
    pub(super) codes: Vec<u8>,
    /// The integer sums of a batch (integer kernel).
    pub(super) acci: Vec<i32>,
    /// The two halves of an input split for nibble pairs: even / odd elements, or
    /// `nibble_inputs`.
    pub(super) xe: Vec<f32>,
    pub(super) xo: Vec<f32>,
    /// The input zero-padded to whole windows (row blocks), or a convolution's input planes
    /// zero-padded (`GatheredBatch::run_conv`).
    pub(super) xpad: Vec<f32>,
    /// Where each kept weight of a sparse convolution reads in its padded input.
    pub(super) offsets: Vec<usize>,
    pub(super) gemm: GemmScratch,
}

/// A matrix's rows each starting on a 64-byte boundary, so the vector loads of a row never
/// straddle two cache lines (rows of f32 weights one 16-byte step off run up to half again as
/// long): `rows × stride` values, the stride the row length rounded up to 64 bytes, from the
/// first 64-byte boundary of the buffer.
#[derive(Debug)]
pub(super) struct AlignedRows<T> {
    buf: Vec<T>,
    start: usize,
    stride: usize,
    rows: usize,
    cols: usize,
}

impl<T: Copy + Default> AlignedRows<T> {
    /// The rows of `src` (`rows × cols`, row-major).
    pub(super) fn new(src: &[T], rows: usize, cols: usize) -> Self {
        let size = std::mem::size_of::<T>().max(1);
        let per_line = (64 / size).max(1);
        let stride = cols.div_ceil(per_line) * per_line;
        let mut buf = vec![T::default(); rows * stride + per_line];
        // Values are `size`-aligned, so a whole number of them reaches the boundary.
        let start = (64 - buf.as_ptr() as usize % 64) % 64 / size;
        for (r, row) in src.chunks_exact(cols.max(1)).take(rows).enumerate() {
            buf[start + r * stride..][..cols].copy_from_slice(row);
        }
        AlignedRows {
            buf,
            start,
            stride,
            rows,
            cols,
        }
    }

    /// Row `r`: `cols` values.
    #[inline]
    pub(super) fn row(&self, r: usize) -> &[T] {
        &self.buf[self.start + r * self.stride..][..self.cols]
    }
}

impl<T: Copy + Default> Clone for AlignedRows<T> {
    /// A copy aligned in its own buffer.
    fn clone(&self) -> Self {
        let rows: Vec<T> = (0..self.rows).flat_map(|r| self.row(r).to_vec()).collect();
        AlignedRows::new(&rows, self.rows, self.cols)
    }
}

/// A layer's bias: `bias[r]`, or 0 without one.
#[inline]
pub(super) fn bias_of(bias: &Option<Vec<f32>>, r: usize) -> f32 {
    bias.as_ref().map_or(0.0, |b| b[r])
}

/// `y[i·p .. (i+1)·p] = bias[r]` for the `i`-th row `r` of `rows` (0 without a bias).
pub(super) fn fill_bias(bias: &Option<Vec<f32>>, rows: Range<usize>, p: usize, y: &mut [f32]) {
    for (i, r) in rows.enumerate() {
        y[i * p..(i + 1) * p].fill(bias_of(bias, r));
    }
}

/// Runs `f` on rows `0..rows` four at a time (a short last block repeats its last row) and
/// writes `y[r] = f(..)[k] + bias[r]` for each block's own rows.
#[inline]
pub(super) fn by_four_rows(
    rows: usize,
    bias: &Option<Vec<f32>>,
    y: &mut [f32],
    mut f: impl FnMut([usize; 4]) -> [f32; 4],
) {
    let mut r = 0;
    while r < rows {
        let last = rows - 1;
        let d = f([r, r + 1, r + 2, r + 3].map(|k| k.min(last)));
        for (k, &v) in d.iter().enumerate().take(rows - r) {
            y[r + k] = v + bias_of(bias, r + k);
        }
        r += 4;
    }
}

/// `Σ x` in f64 over eight independent lanes (a single chain of dependent f64 additions costs
/// more than the 8-bit row kernels it serves).
pub(super) fn sum_f64(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            acc[i] += c[i] as f64;
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| v as f64).sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// The even and odd elements of `x` (`x.len()` even) into `xe` and `xo`, by indexed writes the
/// compiler turns into vector shuffles.
pub(super) fn split_even_odd(x: &[f32], xe: &mut Vec<f32>, xo: &mut Vec<f32>) {
    let half = x.len() / 2;
    xe.resize(half, 0.0);
    xo.resize(half, 0.0);
    for ((p, e), o) in x.chunks_exact(2).zip(xe.iter_mut()).zip(xo.iter_mut()) {
        *e = p[0];
        *o = p[1];
    }
}

/// The inputs of the nibble-pair kernels: `ea[j] = x[2j] − x[2j+1] / 16` and `ob[j] =
/// x[2j+1] / 16` (`x.len()` even), so that `lo · x[2j] + hi · x[2j+1] = lo · ea[j] + (lo + 16 ·
/// hi) · ob[j]`. Dividing by 16 is exact; `ea` rounds once, like any product of the dot.
#[cfg(target_arch = "x86_64")]
pub(super) fn nibble_inputs(x: &[f32], ea: &mut Vec<f32>, ob: &mut Vec<f32>) {
    let half = x.len() / 2;
    ea.resize(half, 0.0);
    ob.resize(half, 0.0);
    for ((p, e), o) in x.chunks_exact(2).zip(ea.iter_mut()).zip(ob.iter_mut()) {
        *o = p[1] * 0.0625;
        *e = p[0] - *o;
    }
}

/// Sum of 16 lanes by halving, so the reduction stays in vector adds instead of a chain of
/// 16 dependent scalar adds.
#[inline(always)]
pub(super) fn hsum16(v: &[f32; 16]) -> f32 {
    let mut h8 = [0f32; 8];
    for i in 0..8 {
        h8[i] = v[i] + v[i + 8];
    }
    let mut h4 = [0f32; 4];
    for i in 0..4 {
        h4[i] = h8[i] + h8[i + 4];
    }
    (h4[0] + h4[2]) + (h4[1] + h4[3])
}

/// Sum of 64 lanes (four vector registers) by halving.
#[inline(always)]
pub(super) fn hsum64(a: &[f32; 64]) -> f32 {
    let mut v = [0f32; 16];
    for i in 0..16 {
        v[i] = (a[i] + a[i + 16]) + (a[i + 32] + a[i + 48]);
    }
    hsum16(&v)
}

/// Dot product with 64 independent accumulators (four vector registers) so LLVM keeps
/// several FMAs in flight.
#[inline]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 64;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; L];
    let mut ca = a.chunks_exact(L);
    let mut cb = b.chunks_exact(L);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..L {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail = x.mul_add(*y, tail);
    }
    hsum64(&acc) + tail
}
