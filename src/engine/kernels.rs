//! Matrix kernels over the storage formats: `Y = W·B + bias` where `W` is a `PackedLayer` (or
//! a row range of it, for grouped convolutions) and `B` is `cols × p` row-major (`p = 1` for
//! one sample's linear layer, the output positions for a convolution, the batch for batched
//! linear layers).
//!
//! - dense f32, `p = 1`: a matrix-vector product straight over the stored values;
//! - dense other values, `p = 1`: each row is decoded (codes unpacked, scales applied per
//!   group) into a small buffer, then dotted;
//! - dense, `p > 1` (and sparse layers at ≥ 30 % density): a blocked matrix product
//!   (`gemm.rs`) over the layer decoded once into row panels, whatever its storage format;
//! - CSR / bitmask: each row's columns and values are decoded into small buffers, then a gather
//!   dot (`p = 1`) or one axpy per kept weight over the `p` columns of `B` (`p > 1`), so the
//!   work is proportional to the kept weights;
//! - integer: uniform codes × quantized activations accumulate in i32 per scale group.

use std::ops::Range;

use super::format::{EntryColumns, Indexing, PackedLayer, RowBlocks, ValueStore};
use super::gemm::{self, GemmScratch, Rhs};
use super::pack;
use super::simd;
use crate::compress::Granularity;

/// Buffers the kernels reuse between calls, so a single-sample run allocates nothing.
#[derive(Debug, Default, Clone)]
pub struct KernelScratch {
    vals: Vec<f32>,
    idx: Vec<u32>,
    codes: Vec<u8>,
    wi: Vec<i16>,
    acci: Vec<i32>,
    dense: Vec<f32>,
    segs: Vec<(usize, usize, usize)>,
    /// The two halves of a 4-bit layer's input: even / odd elements on the portable path,
    /// `nibble_inputs` on AVX-512.
    xe: Vec<f32>,
    xo: Vec<f32>,
    panels: Vec<f32>,
    xpad: Vec<f32>,
    gemm: GemmScratch,
}

/// `Σ x` in f64 over eight independent lanes (a single chain of dependent f64 additions costs
/// more than the 8-bit row kernels it serves).
fn sum_f64(x: &[f32]) -> f64 {
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
fn split_even_odd(x: &[f32], xe: &mut Vec<f32>, xo: &mut Vec<f32>) {
    let half = x.len() / 2;
    xe.resize(half, 0.0);
    xo.resize(half, 0.0);
    for ((p, e), o) in x.chunks_exact(2).zip(xe.iter_mut()).zip(xo.iter_mut()) {
        *e = p[0];
        *o = p[1];
    }
}

/// The inputs of `simd::rows4_nibbles`: `ea[j] = x[2j] − x[2j+1] / 16` and `ob[j] = x[2j+1] /
/// 16` (`x.len()` even), so that `lo · x[2j] + hi · x[2j+1] = lo · ea[j] + (lo + 16 · hi) ·
/// ob[j]`. Dividing by 16 is exact; `ea` rounds once, like any product of the dot.
#[cfg(target_arch = "x86_64")]
fn nibble_inputs(x: &[f32], ea: &mut Vec<f32>, ob: &mut Vec<f32>) {
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
fn hsum16(v: &[f32; 16]) -> f32 {
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
fn hsum64(a: &[f32; 64]) -> f32 {
    let mut v = [0f32; 16];
    for i in 0..16 {
        v[i] = (a[i] + a[i + 16]) + (a[i + 32] + a[i + 48]);
    }
    hsum16(&v)
}

/// Dot product with 64 independent accumulators (four vector registers) so LLVM keeps
/// several FMAs in flight.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
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

/// Four rows against one vector at once: `x` is loaded once for four rows.
#[inline]
fn dot4(w: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
    const L: usize = 16;
    let n = x.len().min(w.iter().map(|r| r.len()).min().unwrap_or(0));
    let full = n / L * L;
    let (x, xt) = x[..n].split_at(full);
    let mut a0 = [0f32; L];
    let mut a1 = [0f32; L];
    let mut a2 = [0f32; L];
    let mut a3 = [0f32; L];
    for ((((xv, w0), w1), w2), w3) in x
        .chunks_exact(L)
        .zip(w[0][..full].chunks_exact(L))
        .zip(w[1][..full].chunks_exact(L))
        .zip(w[2][..full].chunks_exact(L))
        .zip(w[3][..full].chunks_exact(L))
    {
        for i in 0..L {
            a0[i] = w0[i].mul_add(xv[i], a0[i]);
            a1[i] = w1[i].mul_add(xv[i], a1[i]);
            a2[i] = w2[i].mul_add(xv[i], a2[i]);
            a3[i] = w3[i].mul_add(xv[i], a3[i]);
        }
    }
    let mut out = [hsum16(&a0), hsum16(&a1), hsum16(&a2), hsum16(&a3)];
    for (r, o) in out.iter_mut().enumerate() {
        for (wv, xv) in w[r][full..n].iter().zip(xt) {
            *o = wv.mul_add(*xv, *o);
        }
    }
    out
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

/// `Σ vals[k] · x[cols[k]]` over a sparse row's derived absolute columns, each `< bound`.
#[inline]
fn sparse_dot(vals: &[f32], cols: &[u32], x: &[f32], bound: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd::avx512() && bound <= x.len() && bound <= i32::MAX as usize {
        // SAFETY: `simd::avx512()` confirmed AVX-512F/BW/VL; every derived column is `< bound` (`EntryColumns`),
        // and `bound` ≤ x.len() and < 2^31 was checked just above.
        return unsafe { simd::gather_dot(vals, cols, x) };
    }
    let _ = bound;
    gather_dot(vals, cols, x)
}

/// `Σ (codes[i] − z) · x[i]`, AVX-512 when available (`sum_x` = Σ x, for its zero-point
/// correction).
#[inline]
fn codes_dot(codes: &[u8], z: i32, x: &[f32], sum_x: f64) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd::avx512() {
        // SAFETY: `simd::avx512()` confirmed AVX-512F/BW/VL; the kernel bounds its own loads.
        return unsafe { simd::dot_codes(codes, (z as f64 * sum_x) as f32, x) };
    }
    let _ = sum_x;
    dot_codes(codes, z, x)
}

/// 4-bit codes two per byte against the even / odd inputs, AVX-512 when available (`sum_x` =
/// Σ xe + Σ xo, for its zero-point correction).
#[inline]
fn nibbles_dot(bytes: &[u8], z: i32, xe: &[f32], xo: &[f32], sum_x: f64) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd::avx512() {
        // SAFETY: `simd::avx512()` confirmed AVX-512F/BW/VL; the kernel bounds its own loads.
        return unsafe { simd::dot_nibbles(bytes, (z as f64 * sum_x) as f32, xe, xo) };
    }
    let _ = sum_x;
    dot_nibbles(bytes, z, xe, xo)
}

/// Σ (codes[i] − z) · x[i], the conversion done in vector registers. One flat array of 64
/// accumulators: LLVM keeps it in four vector registers.
#[inline]
fn dot_codes(codes: &[u8], z: i32, x: &[f32]) -> f32 {
    const L: usize = 64;
    let n = codes.len().min(x.len());
    let (codes, x) = (&codes[..n], &x[..n]);
    let mut acc = [0f32; L];
    let mut cc = codes.chunks_exact(L);
    let mut cx = x.chunks_exact(L);
    for (c, xv) in (&mut cc).zip(&mut cx) {
        for i in 0..L {
            acc[i] = ((c[i] as i32 - z) as f32).mul_add(xv[i], acc[i]);
        }
    }
    let (rc, rx) = (cc.remainder(), cx.remainder());
    let mut cc = rc.chunks_exact(16);
    let mut cx = rx.chunks_exact(16);
    for (c, xv) in (&mut cc).zip(&mut cx) {
        for i in 0..16 {
            acc[i] = ((c[i] as i32 - z) as f32).mul_add(xv[i], acc[i]);
        }
    }
    let mut t = 0f32;
    for (&c, &xv) in cc.remainder().iter().zip(cx.remainder()) {
        t = ((c as i32 - z) as f32).mul_add(xv, t);
    }
    hsum64(&acc) + t
}

/// Σ over bytes j of (lo_j − z)·xe[j] + (hi_j − z)·xo[j]: 4-bit codes two per byte against
/// the even and odd inputs, split once per call, so the nibbles never leave vector registers.
#[inline]
fn dot_nibbles(bytes: &[u8], z: i32, xe: &[f32], xo: &[f32]) -> f32 {
    const L: usize = 32;
    let n = bytes.len().min(xe.len()).min(xo.len());
    let (bytes, xe, xo) = (&bytes[..n], &xe[..n], &xo[..n]);
    let mut lo = [0f32; L];
    let mut hi = [0f32; L];
    let mut cb = bytes.chunks_exact(L);
    let mut ce = xe.chunks_exact(L);
    let mut co = xo.chunks_exact(L);
    for ((b, e), o) in (&mut cb).zip(&mut ce).zip(&mut co) {
        for i in 0..L {
            let v = b[i] as i32;
            lo[i] = (((v & 0xF) - z) as f32).mul_add(e[i], lo[i]);
            hi[i] = (((v >> 4) - z) as f32).mul_add(o[i], hi[i]);
        }
    }
    let mut t = 0f32;
    for ((&b, &e), &o) in cb
        .remainder()
        .iter()
        .zip(ce.remainder())
        .zip(co.remainder())
    {
        let v = b as i32;
        t = (((v & 0xF) - z) as f32).mul_add(e, t);
        t = (((v >> 4) - z) as f32).mul_add(o, t);
    }
    let mut both = [0f32; 64];
    both[..L].copy_from_slice(&lo);
    both[L..].copy_from_slice(&hi);
    hsum64(&both) + t
}

/// The bias of row `r` (0 without one).
#[inline]
fn bias_of(layer: &PackedLayer, r: usize) -> f32 {
    layer.bias.as_ref().map_or(0.0, |b| b[r])
}

/// Runs `f` on the rows of `rows` four at a time (a short last block repeats its last row) and
/// writes `y[r − rows.start] = f(..)[k] + bias[r]` for each block's own rows.
#[inline]
fn by_four_rows(
    layer: &PackedLayer,
    rows: Range<usize>,
    y: &mut [f32],
    mut f: impl FnMut([usize; 4]) -> [f32; 4],
) {
    let mut r = rows.start;
    while r < rows.end {
        let last = rows.end - 1;
        let d = f([r, r + 1, r + 2, r + 3].map(|k| k.min(last)));
        for (k, &v) in d.iter().enumerate().take(rows.end - r) {
            y[r + k - rows.start] = v + bias_of(layer, r + k);
        }
        r += 4;
    }
}

/// A codebook as `simd::Levels::Book` wants it: repeated with period `2^bits` over 256
/// entries, 0 past its end.
#[cfg(target_arch = "x86_64")]
fn book_table(bits: u8, codebook: &[f32]) -> [f32; 256] {
    let period = 1usize << bits.clamp(1, 8);
    std::array::from_fn(|i| codebook.get(i % period).copied().unwrap_or(0.0))
}

/// `simd::$kernel::<B>(args)` for the code width `B` equal to `$bits`, as `Some`; `None` for widths
/// outside 1..=8. The unpacking kernels take the width as a constant, so each width compiles
/// to its own loop.
#[cfg(target_arch = "x86_64")]
macro_rules! by_width {
    ($bits:expr, $kernel:ident, $($arg:expr),* $(,)?) => {
        match $bits {
            1 => Some(simd::$kernel::<1>($($arg),*)),
            2 => Some(simd::$kernel::<2>($($arg),*)),
            3 => Some(simd::$kernel::<3>($($arg),*)),
            4 => Some(simd::$kernel::<4>($($arg),*)),
            5 => Some(simd::$kernel::<5>($($arg),*)),
            6 => Some(simd::$kernel::<6>($($arg),*)),
            7 => Some(simd::$kernel::<7>($($arg),*)),
            8 => Some(simd::$kernel::<8>($($arg),*)),
            _ => None,
        }
    };
}

/// `simd::rows4_packed` for `bits`-bit codes (`None` for widths outside 1..=8).
///
/// # Safety
/// As `simd::rows4_packed`: the CPU has AVX-512F/BW/VL/VBMI (`simd::avx512_vbmi()`) and
/// `Levels::Affine` holds `ceil(n / seg)` scales and zero points per row.
#[cfg(target_arch = "x86_64")]
unsafe fn packed_rows4(
    bits: u8,
    codes: &[u8],
    starts: [usize; 4],
    n: usize,
    levels: simd::Levels<'_>,
    x: &[f32],
) -> Option<[f32; 4]> {
    // SAFETY: forwarded contract; the width is the kernel's constant.
    unsafe { by_width!(bits, rows4_packed, codes, starts, n, levels, x) }
}

/// `simd::rows4_planes` for `bits` planes (`[0.0; 4]` for widths it is not built for).
///
/// # Safety
/// As `simd::rows4_planes`: the CPU has AVX-512F (`simd::avx512()`).
#[cfg(target_arch = "x86_64")]
unsafe fn planes_rows4(bits: usize, rows: [&[u16]; 4], x: &[f32]) -> [f32; 4] {
    // SAFETY: forwarded contract; the width is the kernel's constant.
    unsafe {
        match bits {
            1 => simd::rows4_planes::<1>(rows, x),
            2 => simd::rows4_planes::<2>(rows, x),
            3 => simd::rows4_planes::<3>(rows, x),
            _ => [0.0; 4],
        }
    }
}

/// `simd::gather_packed` for `bits`-bit codes (`None` for widths outside 1..=8).
///
/// # Safety
/// As `simd::gather_packed`: the CPU has AVX-512F/BW/VL/VBMI (`simd::avx512_vbmi()`), every
/// `cols[k]` is `< x.len()` and `< 2^31`, and `Levels::Affine` holds row 0's scale and zero
/// point.
#[cfg(target_arch = "x86_64")]
unsafe fn packed_gather(
    bits: u8,
    codes: &[u8],
    start: usize,
    cols: &[u32],
    levels: simd::Levels<'_>,
    x: &[f32],
) -> Option<f32> {
    // SAFETY: forwarded contract; the width is the kernel's constant.
    unsafe { by_width!(bits, gather_packed, codes, start, cols, levels, x) }
}

/// Single-sample product of a dense-indexed layer with non-f32 values on the AVX-512 kernels,
/// four rows per pass, the weights dequantized in registers: 8-bit and (even-length) 4-bit
/// codes with one scale per row convert straight into the FMA with the zero point and scale
/// applied to each row's sum, other widths with one scale per row run as bit planes
/// (`BitPlanes`); 4-bit codebooks look each nibble up in a register; f16/bf16 widen in
/// registers; other codes and codebooks unpack in registers and look their weights up in a
/// table (with VBMI). Returns `false`, doing nothing, for layers it has no kernel for (f32
/// values among them).
///
/// The caller has checked `simd::avx512()`.
#[cfg(target_arch = "x86_64")]
fn dense_rows_avx512(
    layer: &PackedLayer,
    rows: Range<usize>,
    x: &[f32],
    y: &mut [f32],
    s: &mut KernelScratch,
) -> bool {
    let cols = layer.cols;
    match &layer.values {
        ValueStore::F16(v) | ValueStore::Bf16(v) => {
            let bf = matches!(layer.values, ValueStore::Bf16(_));
            let row = |r: usize| &v[r * cols..(r + 1) * cols];
            by_four_rows(layer, rows, y, |ks| {
                let w = ks.map(row);
                // SAFETY: the caller checked `simd::avx512()`; the kernel bounds its own loads.
                unsafe {
                    if bf {
                        simd::rows4_half::<true>(w, x)
                    } else {
                        simd::rows4_half::<false>(w, x)
                    }
                }
            });
            true
        }
        ValueStore::Uniform {
            bits,
            codes,
            scales,
            zero_points,
            granularity,
        } => {
            let bits = *bits;
            let per_row = matches!(granularity, Granularity::Tensor | Granularity::Channel);
            if per_row && (bits == 8 || (bits == 4 && cols.is_multiple_of(2))) {
                // Raw code sums, then per row `scale · (Σ code·x − z · Σ x)` (Σ x in f64, so the
                // correction adds no rounding of its own).
                let sum_x = sum_f64(x);
                let finish = |r: usize, d: f32| {
                    let g = granularity.group_of(r, 0, cols);
                    scales[g] * (d - (zero_points.get(g, bits) as f64 * sum_x) as f32)
                };
                if bits == 8 {
                    by_four_rows(layer, rows, y, |ks| {
                        let w = ks.map(|r| &codes[r * cols..(r + 1) * cols]);
                        // SAFETY: the caller checked `simd::avx512()`; the kernel bounds its
                        // own loads.
                        let d = unsafe { simd::rows4_codes(w, x) };
                        [0, 1, 2, 3].map(|k| finish(ks[k], d[k]))
                    });
                } else {
                    nibble_inputs(x, &mut s.xe, &mut s.xo);
                    let (ea, ob) = (&s.xe, &s.xo);
                    let half = cols / 2;
                    by_four_rows(layer, rows, y, |ks| {
                        let w = ks.map(|r| &codes[r * half..(r + 1) * half]);
                        // SAFETY: the caller checked `simd::avx512()`; the kernel bounds its
                        // own loads.
                        let d = unsafe { simd::rows4_nibbles(w, ea, ob) };
                        [0, 1, 2, 3].map(|k| finish(ks[k], d[k]))
                    });
                }
                return true;
            }
            if let Some(planes) = layer.bit_planes() {
                let sum_x = sum_f64(x);
                let split = !planes.nibbles.is_empty();
                if split {
                    nibble_inputs(x, &mut s.xe, &mut s.xo);
                }
                let (ea, ob, half) = (&s.xe, &s.xo, cols / 2);
                by_four_rows(layer, rows, y, |ks| {
                    // SAFETY: the caller checked `simd::avx512()`; the kernel bounds its own
                    // loads.
                    let mut d =
                        unsafe { planes_rows4(planes.planes, ks.map(|r| planes.row(r)), x) };
                    if split {
                        let w = ks.map(|r| &planes.nibbles[r * half..(r + 1) * half]);
                        // SAFETY: as above.
                        let lo = unsafe { simd::rows4_nibbles(w, ea, ob) };
                        d = [0, 1, 2, 3].map(|k| lo[k] + 16.0 * d[k]);
                    }
                    [0, 1, 2, 3].map(|k| {
                        let g = granularity.group_of(ks[k], 0, cols);
                        scales[g] * (d[k] - (zero_points.get(g, bits) as f64 * sum_x) as f32)
                    })
                });
                return true;
            }
            if !simd::avx512_vbmi() || !(1..=8).contains(&bits) {
                return false;
            }
            // Segments of one scale and zero point: the whole row, or groups whose size keeps
            // every group boundary on a 16-code step.
            let (seg, per) = match granularity {
                Granularity::Group { size } if size.is_multiple_of(16) || *size >= cols => {
                    (*size, cols.div_ceil(*size))
                }
                Granularity::Group { .. } => return false,
                _ => (usize::MAX, 1),
            };
            let zf = &mut s.vals;
            zf.resize(4 * per, 0.0);
            by_four_rows(layer, rows, y, |ks| {
                let first = ks.map(|r| granularity.group_of(r, 0, cols));
                for (z, &g0) in zf.chunks_exact_mut(per).zip(&first) {
                    for (i, zv) in z.iter_mut().enumerate() {
                        *zv = zero_points.get(g0 + i, bits) as f32;
                    }
                }
                let zf: &[f32] = zf;
                let levels = simd::Levels::Affine {
                    seg,
                    scales: first.map(|g0| &scales[g0..g0 + per]),
                    zeros: [0, 1, 2, 3].map(|k| &zf[k * per..(k + 1) * per]),
                };
                // SAFETY: `simd::avx512_vbmi()` was checked above; every row has `per =
                // ceil(cols / seg)` scales and zero points.
                unsafe { packed_rows4(bits, codes, ks.map(|r| r * cols), cols, levels, x) }
                    .unwrap_or([0.0; 4])
            });
            true
        }
        ValueStore::Codebook {
            bits,
            codes,
            codebook,
        } if *bits == 4 && cols.is_multiple_of(2) && codebook.len() <= 16 => {
            // Stored two per byte, like 4-bit uniform codes: each nibble looked up in a register.
            let book: [f32; 16] = std::array::from_fn(|i| codebook.get(i).copied().unwrap_or(0.0));
            split_even_odd(x, &mut s.xe, &mut s.xo);
            let (xe, xo, half) = (&s.xe, &s.xo, cols / 2);
            by_four_rows(layer, rows, y, |ks| {
                let w = ks.map(|r| &codes[r * half..(r + 1) * half]);
                // SAFETY: the caller checked `simd::avx512()`; the kernel bounds its own loads.
                unsafe { simd::rows4_book_nibbles(w, xe, xo, &book) }
            });
            true
        }
        ValueStore::Codebook {
            bits,
            codes,
            codebook,
        } if simd::avx512_vbmi() && (1..=8).contains(bits) => {
            let book = book_table(*bits, codebook);
            by_four_rows(layer, rows, y, |ks| {
                let levels = simd::Levels::Book(&book);
                // SAFETY: `simd::avx512_vbmi()` was checked above.
                unsafe { packed_rows4(*bits, codes, ks.map(|r| r * cols), cols, levels, x) }
                    .unwrap_or([0.0; 4])
            });
            true
        }
        _ => false,
    }
}

/// Single-sample product of a sparse layer with non-f32 values on the AVX-512 kernels: each
/// row's values are widened (f16/bf16) or unpacked and looked up (codes with one scale per
/// row, codebooks; with VBMI) in registers, straight into a gather dot over the derived
/// columns. Returns `false`, doing nothing, for layers it has no kernel for.
///
/// The caller has checked `simd::avx512()`.
#[cfg(target_arch = "x86_64")]
fn sparse_rows_avx512(
    layer: &PackedLayer,
    rows: Range<usize>,
    x: &[f32],
    y: &mut [f32],
    ec: &EntryColumns,
) -> bool {
    // Every derived column is `< bound` (`EntryColumns`): with these checks the gathers stay
    // inside `x`.
    if ec.bound > x.len() || ec.bound > i32::MAX as usize {
        return false;
    }
    let out = |y: &mut [f32], r: usize, d: f32| y[r - rows.start] = d + bias_of(layer, r);
    // A bitmask keeping at least a quarter of the weights: expanding each row's values over
    // its columns costs less than gathering its inputs.
    if let (Indexing::Bitmask { mask, .. }, ValueStore::F16(v) | ValueStore::Bf16(v)) =
        (&layer.index, &layer.values)
        && layer.entries * 4 >= layer.rows * layer.cols
    {
        let bf = matches!(layer.values, ValueStore::Bf16(_));
        let cols = layer.cols;
        by_four_rows(layer, rows, y, |ks| {
            let vals = ks.map(|r| &v[layer.row_entries(r)]);
            let bits = ks.map(|r| r * cols);
            // SAFETY: the caller checked `simd::avx512()`; the kernel bounds its own loads.
            unsafe {
                if bf {
                    simd::rows4_mask_half::<true>(mask, bits, vals, cols, x)
                } else {
                    simd::rows4_mask_half::<false>(mask, bits, vals, cols, x)
                }
            }
        });
        return true;
    }
    match &layer.values {
        ValueStore::F16(v) | ValueStore::Bf16(v) => {
            let bf = matches!(layer.values, ValueStore::Bf16(_));
            for r in rows.clone() {
                let range = layer.row_entries(r);
                let (vals, idx) = (&v[range.clone()], &ec.cols[range]);
                // SAFETY: the caller checked `simd::avx512()`; the columns are in `x` and below
                // 2^31 (checked above).
                let d = unsafe {
                    if bf {
                        simd::gather_half::<true>(vals, idx, x)
                    } else {
                        simd::gather_half::<false>(vals, idx, x)
                    }
                };
                out(y, r, d);
            }
            true
        }
        ValueStore::Uniform {
            bits,
            codes,
            scales,
            zero_points,
            granularity: granularity @ (Granularity::Tensor | Granularity::Channel),
        } if simd::avx512_vbmi() && (1..=8).contains(bits) => {
            for r in rows.clone() {
                let range = layer.row_entries(r);
                let g = granularity.group_of(r, 0, layer.cols);
                let z = [zero_points.get(g, *bits) as f32];
                let levels = simd::Levels::Affine {
                    seg: usize::MAX,
                    scales: [&scales[g..g + 1]; 4],
                    zeros: [&z[..]; 4],
                };
                let idx = &ec.cols[range.clone()];
                // SAFETY: `simd::avx512_vbmi()` was checked above; the columns are in `x` and
                // below 2^31 (checked above); row 0 of `levels` has a scale and a zero point.
                let d = unsafe { packed_gather(*bits, codes, range.start, idx, levels, x) };
                out(y, r, d.unwrap_or(0.0));
            }
            true
        }
        ValueStore::Codebook {
            bits,
            codes,
            codebook,
        } if simd::avx512_vbmi() && (1..=8).contains(bits) => {
            let book = book_table(*bits, codebook);
            for r in rows.clone() {
                let range = layer.row_entries(r);
                let idx = &ec.cols[range.clone()];
                let levels = simd::Levels::Book(&book);
                // SAFETY: `simd::avx512_vbmi()` was checked above; the columns are in `x` and
                // below 2^31 (checked above).
                let d = unsafe { packed_gather(*bits, codes, range.start, idx, levels, x) };
                out(y, r, d.unwrap_or(0.0));
            }
            true
        }
        _ => false,
    }
}

/// `yr[j] += Σ_k vals[k] · b[idx[k]·p + j]` (`b` is `cols × p`): 64 batch columns at a time
/// held in registers across the row's entries, so `yr` is loaded and stored once per tile
/// instead of once per kept weight.
fn sparse_row_batch(idx: &[u32], vals: &[f32], b: &[f32], p: usize, yr: &mut [f32]) {
    const T: usize = 64;
    let mut t0 = 0;
    while t0 + T <= p {
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
        t0 += T;
    }
    if t0 < p {
        for (&c, &v) in idx.iter().zip(vals) {
            let c = c as usize;
            axpy(v, &b[c * p + t0..(c + 1) * p], &mut yr[t0..]);
        }
    }
}

#[inline]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = a.mul_add(*xi, *yi);
    }
}

fn fill_bias(layer: &PackedLayer, rows: &Range<usize>, p: usize, y: &mut [f32]) {
    for (i, r) in rows.clone().enumerate() {
        let b = layer.bias.as_ref().map_or(0.0, |b| b[r]);
        y[i * p..(i + 1) * p].fill(b);
    }
}

/// Decodes rows `rows` of a dense-indexed layer into `out` (`rows.len() × cols`).
pub fn decode_rows(layer: &PackedLayer, rows: Range<usize>, codes: &mut Vec<u8>, out: &mut [f32]) {
    let c = layer.cols;
    for (i, r) in rows.enumerate() {
        let range = layer.row_entries(r);
        layer.decode_values(range, r, None, codes, &mut out[i * c..(i + 1) * c]);
    }
}

/// `y[(r − rows.start)·p + j] = bias[r] + Σ_c W[r][c] · b[c·p + j]` for `r` in `rows`.
///
/// `dense_w`, when given, is the whole layer decoded (`rows × cols`), so batched callers decode
/// a dense-indexed layer once per batch rather than once per call.
pub fn matmul(
    layer: &PackedLayer,
    rows: Range<usize>,
    b: &[f32],
    p: usize,
    y: &mut [f32],
    dense_w: Option<&[f32]>,
    s: &mut KernelScratch,
) {
    let cols = layer.cols;
    let m = rows.len();
    assert!(
        b.len() >= cols * p && y.len() >= m * p,
        "matmul operands too short"
    );
    match (&layer.index, p) {
        (Indexing::Dense, 1) => {
            let x = &b[..cols];
            #[cfg(target_arch = "x86_64")]
            if simd::avx512() && dense_rows_avx512(layer, rows.clone(), x, &mut y[..m], s) {
                return;
            }
            if let ValueStore::F32(w) = &layer.values {
                let mut r = rows.start;
                while r + 4 <= rows.end {
                    let rw = |k: usize| &w[(r + k) * cols..(r + k + 1) * cols];
                    let d = dot4([rw(0), rw(1), rw(2), rw(3)], x);
                    for k in 0..4 {
                        y[r - rows.start + k] =
                            d[k] + layer.bias.as_ref().map_or(0.0, |b| b[r + k]);
                    }
                    r += 4;
                }
                for r in r..rows.end {
                    let d = dot(&w[r * cols..(r + 1) * cols], x);
                    y[r - rows.start] = d + layer.bias.as_ref().map_or(0.0, |b| b[r]);
                }
            } else if let ValueStore::Uniform {
                bits,
                codes,
                scales,
                zero_points,
                granularity: granularity @ (Granularity::Tensor | Granularity::Channel),
            } = &layer.values
            {
                // Codes straight into the FMA: (code − zp) converted in registers, one scale
                // per row applied to the sum.
                let nibbles = *bits == 4 && cols.is_multiple_of(2);
                // Σ x once per call: the vector kernels subtract `z · Σ x` per row instead of
                // `z` per code (in f64, so the correction adds no rounding of its own).
                let sum_x = sum_f64(x);
                if nibbles {
                    split_even_odd(x, &mut s.xe, &mut s.xo);
                }
                for r in rows.clone() {
                    let g = granularity.group_of(r, 0, cols);
                    let z = zero_points.get(g, *bits);
                    let d = if *bits == 8 {
                        codes_dot(&codes[r * cols..(r + 1) * cols], z, x, sum_x)
                    } else if nibbles {
                        let half = cols / 2;
                        nibbles_dot(&codes[r * half..(r + 1) * half], z, &s.xe, &s.xo, sum_x)
                    } else {
                        s.codes.resize(cols, 0);
                        pack::unpack_codes(codes, *bits, r * cols, &mut s.codes);
                        codes_dot(&s.codes, z, x, sum_x)
                    };
                    y[r - rows.start] = scales[g] * d + layer.bias.as_ref().map_or(0.0, |b| b[r]);
                }
            } else {
                s.vals.resize(cols, 0.0);
                for r in rows.clone() {
                    layer.decode_values(layer.row_entries(r), r, None, &mut s.codes, &mut s.vals);
                    y[r - rows.start] = dot(&s.vals, x) + layer.bias.as_ref().map_or(0.0, |b| b[r]);
                }
            }
        }
        (Indexing::Dense, _) => dense_product(layer, rows, b, p, y, dense_w, s),
        (_, 1) => {
            let x = &b[..cols];
            // Sparse: the derived absolute columns (`EntryColumns`) drive a gather dot; f32
            // values are read in place, other stores decoded per row.
            #[cfg(target_arch = "x86_64")]
            if rows == (0..layer.rows)
                && simd::avx512()
                && let Some(rb) = layer.row_blocks()
            {
                // The input zero-padded to whole windows, so every window loads unmasked.
                let width = layer.cols.div_ceil(RowBlocks::WINDOW) * RowBlocks::WINDOW;
                s.xpad.clear();
                s.xpad.extend_from_slice(x);
                s.xpad.resize(width, 0.0);
                // SAFETY: `simd::avx512()` confirmed AVX-512F/BW/VL; the kernel bounds every
                // access itself.
                unsafe { simd::row_blocks_dot(rb, &s.xpad, &mut y[..m]) };
                if let Some(bias) = &layer.bias {
                    for (yv, bv) in y[..m].iter_mut().zip(bias) {
                        *yv += bv;
                    }
                }
                return;
            }
            let Some(ec) = layer.entry_columns() else {
                return;
            };
            #[cfg(target_arch = "x86_64")]
            if simd::avx512() && sparse_rows_avx512(layer, rows.clone(), x, &mut y[..m], ec) {
                return;
            }
            for r in rows.clone() {
                let range = layer.row_entries(r);
                let n = range.len();
                let idx = &ec.cols[range.clone()];
                let d = if let ValueStore::F32(v) = &layer.values {
                    sparse_dot(&v[range], idx, x, ec.bound)
                } else {
                    s.vals.resize(n.max(1), 0.0);
                    layer.decode_values(range, r, Some(idx), &mut s.codes, &mut s.vals);
                    sparse_dot(&s.vals[..n], idx, x, ec.bound)
                };
                y[r - rows.start] = d + layer.bias.as_ref().map_or(0.0, |b| b[r]);
            }
        }
        (_, _) if rows == (0..layer.rows) && layer.density() >= SPARSE_GEMM_DENSITY => {
            dense_product(layer, rows, b, p, y, None, s)
        }
        _ => {
            fill_bias(layer, &rows, p, y);
            let Some(ec) = layer.entry_columns() else {
                return;
            };
            for r in rows.clone() {
                let range = layer.row_entries(r);
                let n = range.len();
                let idx = &ec.cols[range.clone()];
                let vals: &[f32] = if let ValueStore::F32(v) = &layer.values {
                    &v[range]
                } else {
                    s.vals.resize(n.max(1), 0.0);
                    layer.decode_values(range, r, Some(idx), &mut s.codes, &mut s.vals);
                    &s.vals[..n]
                };
                let yr = &mut y[(r - rows.start) * p..(r - rows.start + 1) * p];
                sparse_row_batch(idx, vals, b, p, yr);
            }
        }
    }
}

/// `y (rows × p) = bias + W · xᵀ` for a whole layer and sample-major inputs `x` (`p × cols`),
/// where the layer runs as a matrix product over its cached panels (dense-indexed, or sparse
/// at `SPARSE_GEMM_DENSITY` or more): the product packs `x` itself, so the caller needs no
/// transposed copy. `false`, with nothing written, for other layers and single samples.
pub fn matmul_samples(
    layer: &PackedLayer,
    x: &[f32],
    p: usize,
    y: &mut [f32],
    s: &mut KernelScratch,
) -> bool {
    let whole = matches!(layer.index, Indexing::Dense) || layer.density() >= SPARSE_GEMM_DENSITY;
    if p < 2 || !whole {
        return false;
    }
    let rows = 0..layer.rows;
    fill_bias(layer, &rows, p, y);
    let panels = layer.gemm_panels();
    gemm::gemm_acc(
        panels,
        layer.rows,
        p,
        layer.cols,
        Rhs::Cols(x),
        y,
        &mut s.gemm,
    );
    true
}

/// Stored entries per weight from which a batched sparse layer runs as a dense matrix product
/// over its decoded panels (zeros where pruned): the sparse kernel reloads `p` inputs from memory
/// per kept weight, the product keeps its tile in registers. Measured with `squeeze bench` on
/// LeNet-300-100's 10k set: at 50 % (2:4 + f16) the product takes 31–36 ms where the sparse
/// kernel took 49 ms; at 10 % (l1 90 %) the sparse kernel takes 11–15 ms against the product's
/// 31–36 ms. The threshold sits between the two.
const SPARSE_GEMM_DENSITY: f64 = 0.3;

/// `y = bias + W[rows] · b` as a blocked matrix product. The whole layer multiplies by its
/// cached panels (`PackedLayer::gemm_panels`); a row range (one group of a grouped
/// convolution) is packed per call from `dense_w` (the decoded layer), the stored f32 values or
/// its rows decoded here.
fn dense_product(
    layer: &PackedLayer,
    rows: Range<usize>,
    b: &[f32],
    p: usize,
    y: &mut [f32],
    dense_w: Option<&[f32]>,
    s: &mut KernelScratch,
) {
    let (m, cols) = (rows.len(), layer.cols);
    fill_bias(layer, &rows, p, y);
    if rows == (0..layer.rows) {
        gemm::gemm_acc(
            layer.gemm_panels(),
            m,
            p,
            cols,
            Rhs::Rows(b),
            y,
            &mut s.gemm,
        );
        return;
    }
    let w: &[f32] = match (dense_w, &layer.values) {
        (Some(d), _) => &d[rows.start * cols..rows.end * cols],
        (None, ValueStore::F32(w)) => &w[rows.start * cols..rows.end * cols],
        (None, _) => {
            s.dense.resize(m * cols, 0.0);
            decode_rows(layer, rows.clone(), &mut s.codes, &mut s.dense);
            &s.dense
        }
    };
    gemm::row_panels(w, m, cols, &mut s.panels);
    gemm::gemm_acc(&s.panels, m, p, cols, Rhs::Rows(b), y, &mut s.gemm);
}

/// Quantizes `x` to activation codes centred on the zero point: `q − zero_point`, with
/// `q = clamp(round_half_even(x / scale) + zero_point, 0, 2^bits − 1)`.
pub fn quantize_centered(x: &[f32], bits: u8, scale: f32, zero_point: i32, out: &mut [i16]) {
    let top = ((1i32 << bits) - 1) as f32;
    let z = zero_point as f32;
    for (o, &v) in out.iter_mut().zip(x) {
        let q = ((v / scale).round_ties_even() + z).clamp(0.0, top);
        *o = (q - z) as i16;
    }
}

/// The value the layer sees for `x` under activation quantization: `scale × (q − zero_point)`.
pub fn fake_quantize(x: &mut [f32], bits: u8, scale: f32, zero_point: i32) {
    let top = ((1i32 << bits) - 1) as f32;
    let z = zero_point as f32;
    for v in x.iter_mut() {
        let q = ((*v / scale).round_ties_even() + z).clamp(0.0, top);
        *v = scale * (q - z);
    }
}

/// Integer kernel for uniform weight codes and quantized activations:
/// `y = bias + Σ_groups scale_w[g] · scale_a · Σ_{c in g} (code − zp_w[g]) · bq[c]` with the inner
/// sums accumulated exactly in i32. `bq` is `cols × p` of centred activation codes.
/// Returns `false` (doing nothing) when the layer's values are not uniform codes.
pub fn matmul_int(
    layer: &PackedLayer,
    rows: Range<usize>,
    bq: &[i16],
    p: usize,
    a_scale: f32,
    y: &mut [f32],
    s: &mut KernelScratch,
) -> bool {
    let ValueStore::Uniform {
        bits,
        codes: packed,
        scales,
        zero_points,
        granularity,
    } = &layer.values
    else {
        return false;
    };
    let cols = layer.cols;
    assert!(
        bq.len() >= cols * p && y.len() >= rows.len() * p,
        "matmul_int operands too short"
    );
    let dense = matches!(layer.index, Indexing::Dense);
    let groups_per_row = match granularity {
        Granularity::Group { size } => cols.div_ceil(*size),
        _ => 1,
    };
    fill_bias(layer, &rows, p, y);
    for r in rows.clone() {
        let range = layer.row_entries(r);
        let n = range.len();
        if dense {
            s.idx.clear();
        } else {
            layer.row_columns(r, &mut s.idx);
        }
        s.codes.resize(n, 0);
        pack::unpack_codes(packed, *bits, range.start, &mut s.codes);
        // Segments of entries sharing one scale group: (start, end, group).
        s.segs.clear();
        match granularity {
            Granularity::Tensor | Granularity::Channel => {
                s.segs.push((0, n, granularity.group_of(r, 0, cols)))
            }
            Granularity::Group { size } => {
                let mut start = 0;
                while start < n {
                    let col = if dense { start } else { s.idx[start] as usize };
                    let g = col / size;
                    let mut end = start + 1;
                    while end < n && (if dense { end } else { s.idx[end] as usize }) / size == g {
                        end += 1;
                    }
                    s.segs.push((start, end, r * groups_per_row + g));
                    start = end;
                }
            }
        }
        s.wi.resize(n, 0);
        for &(a, e, g) in &s.segs {
            let z = zero_points.get(g, *bits);
            for k in a..e {
                s.wi[k] = (s.codes[k] as i32 - z) as i16;
            }
        }
        let yr = &mut y[(r - rows.start) * p..(r - rows.start + 1) * p];
        for &(a, e, g) in &s.segs {
            let f = scales[g] * a_scale;
            if p == 1 {
                let acc: i32 = if dense {
                    s.wi[a..e]
                        .iter()
                        .zip(&bq[a..e])
                        .map(|(&w, &q)| w as i32 * q as i32)
                        .sum()
                } else {
                    s.wi[a..e]
                        .iter()
                        .zip(&s.idx[a..e])
                        .map(|(&w, &c)| w as i32 * bq[c as usize] as i32)
                        .sum()
                };
                yr[0] += f * acc as f32;
            } else {
                s.acci.clear();
                s.acci.resize(p, 0);
                for k in a..e {
                    let c = if dense { k } else { s.idx[k] as usize };
                    let w = s.wi[k] as i32;
                    if w == 0 {
                        continue;
                    }
                    for (acc, &q) in s.acci.iter_mut().zip(&bq[c * p..(c + 1) * p]) {
                        *acc += w * q as i32;
                    }
                }
                for (yv, &acc) in yr.iter_mut().zip(&s.acci) {
                    *yv += f * acc as f32;
                }
            }
        }
    }
    true
}
