//! Matrix kernels over the storage formats: `Y = W·B + bias` where `W` is a `PackedLayer` (or
//! a row range of it, for grouped convolutions) and `B` is `cols × p` row-major (`p = 1` for
//! one sample's linear layer, the output positions for a convolution, the batch for batched
//! linear layers).
//!
//! - dense f32, `p = 1`: a matrix-vector product straight over the stored values;
//! - dense other values, `p = 1`: each row is decoded (codes unpacked, scales applied per
//!   group) into a small buffer, then dotted;
//! - dense, `p > 1`: the matrix is decoded once per call (or handed in decoded, once per batch)
//!   and multiplied with the `gemm` crate;
//! - CSR / bitmask: each row's columns and values are decoded into small buffers, then a gather
//!   dot (`p = 1`) or one axpy per kept weight over the `p` columns of `B` (`p > 1`), so the
//!   work is proportional to the kept weights;
//! - integer: uniform codes × quantized activations accumulate in i32 per scale group.

use std::ops::Range;

use super::format::{Indexing, PackedLayer, ValueStore};
use super::pack;
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
}

/// Dot product with independent accumulators so LLVM keeps several vector FMAs in flight.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    const L: usize = 16;
    let mut acc = [[0f32; L]; 4];
    let mut ca = a.chunks_exact(4 * L);
    let mut cb = b.chunks_exact(4 * L);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for j in 0..4 {
            for i in 0..L {
                acc[j][i] = x[j * L + i].mul_add(y[j * L + i], acc[j][i]);
            }
        }
    }
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut ca = ra.chunks_exact(L);
    let mut cb = rb.chunks_exact(L);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..L {
            acc[0][i] = x[i].mul_add(y[i], acc[0][i]);
        }
    }
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail = x.mul_add(*y, tail);
    }
    let mut s = [0f32; L];
    for (i, si) in s.iter_mut().enumerate() {
        *si = (acc[0][i] + acc[1][i]) + (acc[2][i] + acc[3][i]);
    }
    s.iter().sum::<f32>() + tail
}

/// Four rows against one vector at once: `x` is loaded once for four rows.
#[inline]
fn dot4(w: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
    const L: usize = 16;
    let n = x.len();
    let mut acc = [[0f32; L]; 4];
    let full = n / L * L;
    for base in (0..full).step_by(L) {
        let xv = &x[base..base + L];
        for r in 0..4 {
            let wv = &w[r][base..base + L];
            for i in 0..L {
                acc[r][i] = wv[i].mul_add(xv[i], acc[r][i]);
            }
        }
    }
    let mut out = [0f32; 4];
    for r in 0..4 {
        let mut t = 0f32;
        for i in full..n {
            t = w[r][i].mul_add(x[i], t);
        }
        out[r] = acc[r].iter().sum::<f32>() + t;
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

/// Σ (codes[i] − z) · x[i], the conversion done in vector registers.
#[inline]
fn dot_codes(codes: &[u8], z: i32, x: &[f32]) -> f32 {
    const L: usize = 16;
    let n = codes.len().min(x.len());
    let (codes, x) = (&codes[..n], &x[..n]);
    let mut acc = [[0f32; L]; 2];
    let mut cc = codes.chunks_exact(2 * L);
    let mut cx = x.chunks_exact(2 * L);
    for (c, xv) in (&mut cc).zip(&mut cx) {
        for j in 0..2 {
            for i in 0..L {
                let w = (c[j * L + i] as i32 - z) as f32;
                acc[j][i] = w.mul_add(xv[j * L + i], acc[j][i]);
            }
        }
    }
    let mut t = 0f32;
    for (&c, &xv) in cc.remainder().iter().zip(cx.remainder()) {
        t = ((c as i32 - z) as f32).mul_add(xv, t);
    }
    let mut sum = 0f32;
    for i in 0..L {
        sum += acc[0][i] + acc[1][i];
    }
    sum + t
}

/// One CSR row with 8-bit gaps and f32 values against `x`: the gaps are a running sum, and
/// four accumulators hide the FMA latency.
#[inline]
fn csr_dot8(gaps: &[u8], vals: &[f32], x: &[f32]) -> f32 {
    let n = gaps.len().min(vals.len());
    let (gaps, vals) = (&gaps[..n], &vals[..n]);
    let mut acc = [0f32; 4];
    let mut p = 0usize;
    let mut gc = gaps.chunks_exact(4);
    let mut vc = vals.chunks_exact(4);
    for (g, v) in (&mut gc).zip(&mut vc) {
        for j in 0..4 {
            let c = p + g[j] as usize;
            acc[j] = v[j].mul_add(x[c], acc[j]);
            p = c + 1;
        }
    }
    let mut t = 0f32;
    for (&g, &v) in gc.remainder().iter().zip(vc.remainder()) {
        let c = p + g as usize;
        t = v.mul_add(x[c], t);
        p = c + 1;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + t
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
    assert!(b.len() >= cols * p && y.len() >= m * p, "matmul operands too short");
    match (&layer.index, p) {
        (Indexing::Dense, 1) => {
            let x = &b[..cols];
            if let ValueStore::F32(w) = &layer.values {
                let mut r = rows.start;
                while r + 4 <= rows.end {
                    let rw = |k: usize| &w[(r + k) * cols..(r + k + 1) * cols];
                    let d = dot4([rw(0), rw(1), rw(2), rw(3)], x);
                    for k in 0..4 {
                        y[r - rows.start + k] = d[k] + layer.bias.as_ref().map_or(0.0, |b| b[r + k]);
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
                for r in rows.clone() {
                    let g = granularity.group_of(r, 0, cols);
                    let z = zero_points.get(g, *bits);
                    let d = if *bits == 8 {
                        dot_codes(&codes[r * cols..(r + 1) * cols], z, x)
                    } else {
                        s.codes.resize(cols, 0);
                        pack::unpack_codes(codes, *bits, r * cols, &mut s.codes);
                        dot_codes(&s.codes, z, x)
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
        (Indexing::Dense, _) => {
            let w: &[f32] = match (dense_w, &layer.values) {
                (Some(d), _) => &d[rows.start * cols..rows.end * cols],
                (None, ValueStore::F32(w)) => &w[rows.start * cols..rows.end * cols],
                (None, _) => {
                    s.dense.resize(m * cols, 0.0);
                    decode_rows(layer, rows.clone(), &mut s.codes, &mut s.dense);
                    &s.dense
                }
            };
            fill_bias(layer, &rows, p, y);
            gemm_acc(m, p, cols, w, b, y);
        }
        (Indexing::Csr { gap_bits, gaps, .. }, 1) if matches!(layer.values, ValueStore::F32(_)) => {
            let x = &b[..cols];
            let ValueStore::F32(v) = &layer.values else {
                return;
            };
            for r in rows.clone() {
                let range = layer.row_entries(r);
                let d = match gap_bits {
                    8 => csr_dot8(&gaps[range.clone()], &v[range], x),
                    _ => {
                        let mut acc = 0f32;
                        let mut p = 0usize;
                        for k in range {
                            let c = p + pack::gap_at(gaps, *gap_bits, k);
                            acc = v[k].mul_add(x[c], acc);
                            p = c + 1;
                        }
                        acc
                    }
                };
                y[r - rows.start] = d + layer.bias.as_ref().map_or(0.0, |b| b[r]);
            }
        }
        (_, 1) => {
            let x = &b[..cols];
            for r in rows.clone() {
                let range = layer.row_entries(r);
                let n = range.len();
                layer.row_columns(r, &mut s.idx);
                s.vals.resize(n.max(1), 0.0);
                layer.decode_values(range, r, Some(&s.idx), &mut s.codes, &mut s.vals);
                y[r - rows.start] =
                    gather_dot(&s.vals[..n], &s.idx, x) + layer.bias.as_ref().map_or(0.0, |b| b[r]);
            }
        }
        _ => {
            fill_bias(layer, &rows, p, y);
            for r in rows.clone() {
                let range = layer.row_entries(r);
                let n = range.len();
                layer.row_columns(r, &mut s.idx);
                s.vals.resize(n.max(1), 0.0);
                layer.decode_values(range, r, Some(&s.idx), &mut s.codes, &mut s.vals);
                let yr = &mut y[(r - rows.start) * p..(r - rows.start + 1) * p];
                for (&c, &v) in s.idx.iter().zip(&s.vals[..n]) {
                    let c = c as usize;
                    axpy(v, &b[c * p..(c + 1) * p], yr);
                }
            }
        }
    }
}

/// `y (m × n) += w (m × k) · b (k × n)`, all row-major and contiguous.
fn gemm_acc(m: usize, n: usize, k: usize, w: &[f32], b: &[f32], y: &mut [f32]) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(w.len() >= m * k && b.len() >= k * n && y.len() >= m * n);
    // SAFETY: the assert above keeps every access inside the three slices: `w` is read as
    // m×k with row stride k, `b` as k×n with row stride n, `y` written as m×n with row stride n.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            true,
            w.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
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
    assert!(bq.len() >= cols * p && y.len() >= rows.len() * p, "matmul_int operands too short");
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
