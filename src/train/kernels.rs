//! The arithmetic of the training ops on plain f32 slices, forward and backward: linear and
//! conv layers (on the engine's GEMM through `matmul`), ReLU, max pooling and cross-entropy.
//! The graph nodes in `ops` call these; nothing here knows about candle's graph.
//!
//! Deterministic whatever the number of threads: each output value is summed by one thread in
//! a fixed order; the convolution's weight gradient adds partial sums over chunks of a fixed
//! number of samples, in order.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::matmul::{Lhs, matmul_acc, with_scratch};
use crate::engine::gemm::{self, Rhs};
use crate::engine::{ConvShape, im2col};
use crate::model::shape::{Window, WindowError};

/// Values per parallel task in element-wise loops.
const CHUNK: usize = 1 << 15;

/// One spatial axis of a sliding window: input size, kernel, stride, padding, output size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Axis {
    pub size: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    pub out: usize,
}

impl Axis {
    /// The axis, or why the window does not fit (`model::shape::Window`'s check).
    pub fn new(
        size: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
        dilation: usize,
    ) -> Result<Self, WindowError> {
        let out = Window::new(kernel, stride, pad, dilation).out_size(size)?;
        Ok(Axis {
            size,
            kernel,
            stride,
            pad,
            out,
        })
    }

    /// The kernel taps `lo..hi` that output `o` reads inside the input (pooling: no dilation).
    #[inline]
    fn taps(&self, o: usize) -> (usize, usize) {
        let first = o * self.stride;
        let lo = self.pad.saturating_sub(first).min(self.kernel);
        let hi = (self.size + self.pad)
            .saturating_sub(first)
            .clamp(lo, self.kernel);
        (lo, hi)
    }
}

/// `y = x · wᵀ + b` for `x` `[n, inputs]`, `w` `[out, inputs]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Linear {
    pub n: usize,
    pub inputs: usize,
    pub out: usize,
}

impl Linear {
    pub fn forward(&self, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
        let Linear { n, inputs, out } = *self;
        let mut y = Vec::with_capacity(n * out);
        for _ in 0..n {
            y.extend_from_slice(b);
        }
        matmul_acc(Lhs::Rows(x), n, out, inputs, Rhs::Cols(w), &mut y);
        y
    }

    /// `dx = dy · w`.
    pub fn input_grad(&self, w: &[f32], dy: &[f32]) -> Vec<f32> {
        let Linear { n, inputs, out } = *self;
        let mut dx = vec![0f32; n * inputs];
        matmul_acc(Lhs::Rows(dy), n, inputs, out, Rhs::Rows(w), &mut dx);
        dx
    }

    /// `dw = dyᵀ · x`.
    pub fn weight_grad(&self, x: &[f32], dy: &[f32]) -> Vec<f32> {
        let Linear { n, inputs, out } = *self;
        let mut dw = vec![0f32; out * inputs];
        matmul_acc(Lhs::Cols(dy), out, inputs, n, Rhs::Rows(x), &mut dw);
        dw
    }

    /// `db = Σₙ dy`, samples added in order.
    pub fn bias_grad(&self, dy: &[f32]) -> Vec<f32> {
        let mut db = vec![0f32; self.out];
        for row in dy.chunks_exact(self.out) {
            for (d, g) in db.iter_mut().zip(row) {
                *d += g;
            }
        }
        db
    }
}

/// A 2-D convolution of `n` samples: per sample, the engine's im2col lays the input out as
/// `[C/groups·kh·kw, oh·ow]` columns, one GEMM per group multiplies the weight by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Conv {
    pub n: usize,
    pub shape: ConvShape,
}

/// Samples whose weight gradients one task sums before the tasks' sums are added in order: a
/// constant, so the weight gradient does not depend on the number of threads.
const SAMPLES_PER_PARTIAL: usize = 16;

impl Conv {
    /// Values per input sample.
    pub fn sample_in(&self) -> usize {
        let s = &self.shape;
        s.cin * s.h * s.w
    }

    /// Values per output sample.
    pub fn sample_out(&self) -> usize {
        self.shape.cout * self.shape.positions()
    }

    /// Output channels per group.
    fn og(&self) -> usize {
        self.shape.cout / self.shape.groups
    }

    /// The im2col columns of group `g` of one sample: the sample itself for a pointwise
    /// convolution, else laid out in `cols`.
    fn columns<'a>(&self, x: &'a [f32], g: usize, cols: &'a mut Vec<f32>) -> &'a [f32] {
        let s = &self.shape;
        let (k, l) = (s.k(), s.positions());
        if s.is_pointwise() {
            return &x[g * k * l..(g + 1) * k * l];
        }
        cols.resize(k * l, 0.0);
        im2col(x, s, g, cols);
        cols
    }

    /// Each group's weight (`og × k`) in the GEMM's panel layout, transposed when `t`.
    fn weight_panels(&self, w: &[f32], t: bool) -> Vec<Vec<f32>> {
        let (og, k) = (self.og(), self.shape.k());
        (0..self.shape.groups)
            .map(|g| {
                let mut p = Vec::new();
                let wg = &w[g * og * k..];
                if t {
                    gemm::row_panels_t(wg, k, k, og, &mut p);
                } else {
                    gemm::row_panels(wg, og, k, &mut p);
                }
                p
            })
            .collect()
    }

    pub fn forward(&self, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
        let s = &self.shape;
        let (og, k, l) = (self.og(), s.k(), s.positions());
        let panels = self.weight_panels(w, false);
        let (sin, sout) = (self.sample_in(), self.sample_out());
        let mut y: Vec<f32> = Vec::with_capacity(self.n * sout);
        y.spare_capacity_mut()[..self.n * sout]
            .par_chunks_mut(sout)
            .zip(x.par_chunks(sin))
            .for_each(|(yn, xn)| {
                // The bias first: written once, where zeroing and then filling takes two passes.
                for (plane, &bo) in yn.chunks_exact_mut(l).zip(b) {
                    for v in plane {
                        v.write(bo);
                    }
                }
                // SAFETY: `yn` is `cout` planes of `l` values and `b` holds `cout` biases (both
                // checked by the caller), so the loop above wrote every value of `yn`.
                let yn = unsafe { &mut *(yn as *mut [MaybeUninit<f32>] as *mut [f32]) };
                with_scratch(|sc| {
                    for (g, wp) in panels.iter().enumerate() {
                        let cols = self.columns(xn, g, &mut sc.cols);
                        let yg = &mut yn[g * og * l..(g + 1) * og * l];
                        gemm::gemm_acc(wp, og, l, k, Rhs::Rows(cols), yg, &mut sc.gemm);
                    }
                })
            });
        // SAFETY: the chunks of `sout` values cover the first `n · sout`, each written whole.
        unsafe { y.set_len(self.n * sout) };
        y
    }

    /// The input gradient (when `want_dx`) and the weight gradient (when `want_dw`) for the
    /// output gradient `dy`: per sample, `dW_g += dy_g · colsᵀ` and `dx = col2im(W_gᵀ · dy_g)`.
    pub fn backward(
        &self,
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        want_dx: bool,
        want_dw: bool,
    ) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
        let s = &self.shape;
        let (og, k, l) = (self.og(), s.k(), s.positions());
        let (sin, sout) = (self.sample_in(), self.sample_out());
        let wt = if want_dx {
            self.weight_panels(w, true)
        } else {
            Vec::new()
        };
        let per = SAMPLES_PER_PARTIAL;
        let chunks = self.n.div_ceil(per);
        let mut dx = vec![0f32; if want_dx { self.n * sin } else { 0 }];
        let mut dw = vec![0f32; if want_dw { chunks * s.cout * k } else { 0 }];
        let task = |(i, (dxc, dwc)): (usize, (&mut [f32], &mut [f32]))| {
            // An unwanted gradient's chunks are empty and never touched.
            with_scratch(|sc| {
                for j in 0..per.min(self.n - i * per) {
                    let n = i * per + j;
                    let (xn, dyn_) = (&x[n * sin..][..sin], &dy[n * sout..][..sout]);
                    for g in 0..s.groups {
                        let dyg = &dyn_[g * og * l..(g + 1) * og * l];
                        if want_dw {
                            gemm::row_panels(dyg, og, l, &mut sc.a_panels);
                            let mut cols = std::mem::take(&mut sc.cols);
                            let c = self.columns(xn, g, &mut cols);
                            let dwg = &mut dwc[g * og * k..(g + 1) * og * k];
                            gemm::gemm_acc(&sc.a_panels, og, k, l, Rhs::Cols(c), dwg, &mut sc.gemm);
                            sc.cols = cols;
                        }
                        if want_dx {
                            sc.dcols.clear();
                            sc.dcols.resize(k * l, 0.0);
                            let (wg, dcols) = (&wt[g], &mut sc.dcols);
                            gemm::gemm_acc(wg, k, l, og, Rhs::Rows(dyg), dcols, &mut sc.gemm);
                            col2im(&sc.dcols, s, g, &mut dxc[j * sin..(j + 1) * sin]);
                        }
                    }
                }
            })
        };
        // Every task gets its two chunks, empty ones for a gradient not wanted.
        let dxs: Vec<&mut [f32]> = if want_dx {
            dx.chunks_mut(per * sin).collect()
        } else {
            (0..chunks).map(|_| <&mut [f32]>::default()).collect()
        };
        let dws: Vec<&mut [f32]> = if want_dw {
            dw.chunks_mut(s.cout * k).collect()
        } else {
            (0..chunks).map(|_| <&mut [f32]>::default()).collect()
        };
        dxs.into_par_iter().zip(dws).enumerate().for_each(task);
        let dw = want_dw.then(|| {
            let (first, rest) = dw.split_at_mut(s.cout * k);
            for part in rest.chunks_exact(s.cout * k) {
                for (a, b) in first.iter_mut().zip(part) {
                    *a += b;
                }
            }
            dw.truncate(s.cout * k);
            dw
        });
        (want_dx.then_some(dx), dw)
    }

    /// `db[o] = Σₙ Σ_positions dy[n, o]`: each plane summed by `lane_sum`, the samples added
    /// in order.
    pub fn bias_grad(&self, dy: &[f32]) -> Vec<f32> {
        let l = self.shape.positions();
        (0..self.shape.cout)
            .into_par_iter()
            .map(|o| {
                dy.chunks_exact(self.sample_out())
                    .map(|yn| lane_sum(&yn[o * l..(o + 1) * l]))
                    .sum::<f32>()
            })
            .collect()
    }
}

/// The sum of `v` in a fixed order the compiler can vectorise: 16 running sums (value `i` into
/// sum `i % 16`), added pairwise at the end.
fn lane_sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = v.chunks_exact(16);
    for c in &mut chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    for (a, x) in acc.iter_mut().zip(chunks.remainder()) {
        *a += x;
    }
    let mut width = 16;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] += acc[i + width];
        }
    }
    acc[0]
}

/// The adjoint of the engine's `im2col` for group `g`: adds every column entry into the input
/// position of `x` (`[C, H, W]`, one sample) it was read from.
fn col2im(cols: &[f32], s: &ConvShape, g: usize, x: &mut [f32]) {
    let cg = s.cin / s.groups;
    let l = s.positions();
    for ci in 0..cg {
        let plane = &mut x[(g * cg + ci) * s.h * s.w..(g * cg + ci + 1) * s.h * s.w];
        for i in 0..s.kh {
            for j in 0..s.kw {
                let row = &cols[((ci * s.kh + i) * s.kw + j) * l..][..l];
                for (oy, orow) in row.chunks_exact(s.ow).enumerate() {
                    let iy = (oy * s.stride.0 + i * s.dil.0) as isize - s.pad.0 as isize;
                    if iy < 0 || iy >= s.h as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * s.w..(iy as usize + 1) * s.w];
                    let off = (j * s.dil.1) as isize - s.pad.1 as isize;
                    if s.stride.1 == 1 && off >= 0 && off as usize + s.ow <= s.w {
                        let dst = &mut dst[off as usize..off as usize + s.ow];
                        for (d, v) in dst.iter_mut().zip(orow) {
                            *d += v;
                        }
                        continue;
                    }
                    for (ox, v) in orow.iter().enumerate() {
                        let ix = (ox * s.stride.1) as isize + off;
                        if ix >= 0 && ix < s.w as isize {
                            dst[ix as usize] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Max pooling over `planes` planes, padding counting as −∞; the gradient goes to each window's
/// first maximum in row-major order (PyTorch's rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MaxPool {
    /// N·C.
    pub planes: usize,
    pub h: Axis,
    pub w: Axis,
}

impl MaxPool {
    /// Calls `visit(output index, input index of the window's first maximum)` for one plane; the
    /// input index is `None` when the window lies entirely in the padding.
    #[inline]
    fn argmax(&self, plane: &[f32], mut visit: impl FnMut(usize, Option<usize>)) {
        let (h, w) = (&self.h, &self.w);
        for oy in 0..h.out {
            let (i0, i1) = h.taps(oy);
            for ox in 0..w.out {
                let (j0, j1) = w.taps(ox);
                let mut best: Option<(usize, f32)> = None;
                for i in i0..i1 {
                    let row = (oy * h.stride + i - h.pad) * w.size;
                    for j in j0..j1 {
                        let at = row + ox * w.stride + j - w.pad;
                        let v = plane[at];
                        // The first value, then only strictly greater ones: the first maximum,
                        // as candle's forward and PyTorch keep.
                        if best.is_none_or(|(_, b)| v > b) {
                            best = Some((at, v));
                        }
                    }
                }
                visit(oy * w.out + ox, best.map(|(at, _)| at));
            }
        }
    }

    pub fn plane_in(&self) -> usize {
        self.h.size * self.w.size
    }

    pub fn plane_out(&self) -> usize {
        self.h.out * self.w.out
    }

    /// The common unpadded 2×2 window with stride 2: each input in one window, no bounds.
    fn is_2x2(&self) -> bool {
        let two = |a: &Axis| a.kernel == 2 && a.stride == 2 && a.pad == 0;
        two(&self.h) && two(&self.w)
    }

    /// The 2×2 forward of one plane: each output row from a pair of input rows.
    fn forward_2x2(&self, src: &[f32], dst: &mut [f32]) {
        let ws = self.w.size;
        for (oy, out) in dst.chunks_exact_mut(self.w.out).enumerate() {
            let r0 = &src[2 * oy * ws..][..2 * out.len()];
            let r1 = &src[(2 * oy + 1) * ws..][..2 * out.len()];
            for ((o, a), b) in out
                .iter_mut()
                .zip(r0.chunks_exact(2))
                .zip(r1.chunks_exact(2))
            {
                *o = a[0].max(a[1]).max(b[0].max(b[1]));
            }
        }
    }

    /// The 2×2 backward of one plane: every input position written, the gradient at each
    /// window's first maximum (the first tap equal to the window's maximum), zero elsewhere —
    /// and zero where `relu_in` (the input of a ReLU this pooling follows) is negative.
    fn backward_2x2(&self, src: &[f32], relu_in: Option<&[f32]>, grad: &[f32], dst: &mut [f32]) {
        let (ws, ow) = (self.w.size, self.w.out);
        for (oy, g) in grad.chunks_exact(ow).enumerate() {
            let rows = 2 * oy * ws..(2 * oy + 2) * ws;
            let (s0, s1) = src[rows.clone()].split_at(ws);
            let (d0, d1) = dst[rows.clone()].split_at_mut(ws);
            let (s0, s1, d0, d1) = (&s0[..2 * ow], &s1[..2 * ow], &mut d0[..], &mut d1[..]);
            for i in 0..ow {
                let (a, b, c, d) = (s0[2 * i], s0[2 * i + 1], s1[2 * i], s1[2 * i + 1]);
                let m = a.max(b).max(c.max(d));
                let (t0, t1, t2) = (a == m, b == m, c == m);
                d0[2 * i] = if t0 { g[i] } else { 0.0 };
                d0[2 * i + 1] = if !t0 && t1 { g[i] } else { 0.0 };
                d1[2 * i] = if !t0 && !t1 && t2 { g[i] } else { 0.0 };
                d1[2 * i + 1] = if !t0 && !t1 && !t2 { g[i] } else { 0.0 };
            }
            // An odd width leaves a last column outside every window.
            d0[2 * ow..].fill(0.0);
            d1[2 * ow..].fill(0.0);
            if let Some(r) = relu_in {
                relu_backward_slice(&r[rows], &mut dst[2 * oy * ws..(2 * oy + 2) * ws]);
            }
        }
        // And an odd height a last row.
        dst[2 * self.h.out * ws..].fill(0.0);
    }

    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let (pin, pout) = (self.plane_in(), self.plane_out());
        let mut out = vec![0f32; self.planes * pout];
        out.par_chunks_mut(pout)
            .zip(x.par_chunks(pin))
            .for_each(|(dst, src)| {
                if self.is_2x2() {
                    return self.forward_2x2(src, dst);
                }
                self.argmax(src, |o, at| {
                    dst[o] = at.map_or(f32::NEG_INFINITY, |at| src[at]);
                })
            });
        out
    }

    /// The input gradient into `dx` (the input's size, any contents): each output's gradient
    /// at its window's first maximum, zero elsewhere. With `relu_in`, the input of a ReLU
    /// whose output `x` is, the ReLU's backward is applied too (the gradient of `relu_in`).
    pub fn backward_into(&self, x: &[f32], relu_in: Option<&[f32]>, dy: &[f32], dx: &mut [f32]) {
        let (pin, pout) = (self.plane_in(), self.plane_out());
        dx.par_chunks_mut(pin)
            .zip(x.par_chunks(pin).zip(dy.par_chunks(pout)))
            .enumerate()
            .for_each(|(p, (dst, (src, grad)))| {
                let relu_in = relu_in.map(|r| &r[p * pin..(p + 1) * pin]);
                if self.is_2x2() {
                    return self.backward_2x2(src, relu_in, grad, dst);
                }
                dst.fill(0.0);
                self.argmax(src, |o, at| {
                    if let Some(at) = at {
                        dst[at] += grad[o];
                    }
                });
                if let Some(r) = relu_in {
                    relu_backward_slice(r, dst);
                }
            });
    }
}

pub(super) fn relu_forward(x: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    out.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(d, s)| {
            for (d, s) in d.iter_mut().zip(s) {
                d.write(s.max(0.0));
            }
        });
    // SAFETY: the first `x.len()` spare values and `x` are cut into chunks of the same size,
    // paired one to one, and the loop above writes every value of every chunk.
    unsafe { out.set_len(x.len()) };
    out
}

/// `dy ← dy · [x ≥ 0]` in place: candle's rule (the gradient passes at zero).
pub(super) fn relu_backward_in_place(x: &[f32], dy: &mut [f32]) {
    dy.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(g, x)| relu_backward_slice(x, g));
}

#[inline]
fn relu_backward_slice(x: &[f32], dy: &mut [f32]) {
    for (g, x) in dy.iter_mut().zip(x) {
        *g = if *x >= 0.0 { *g } else { 0.0 };
    }
}

/// `(max, log Σ exp(z − max))` of one row of logits.
#[inline]
fn log_sum_exp(row: &[f32]) -> (f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
    (max, sum.ln())
}

/// The mean over rows of `−log softmax(z)[label]` for logits `z` `[n, classes]`.
pub(super) fn cross_entropy(z: &[f32], labels: &[u32], classes: usize) -> f32 {
    let mut total = 0f32;
    for (row, &y) in z.chunks_exact(classes).zip(labels) {
        let (max, lse) = log_sum_exp(row);
        total += lse - (row[y as usize] - max);
    }
    total / labels.len().max(1) as f32
}

/// The gradient of `scale ·` the summed cross-entropy: `scale · (softmax(z) − onehot)`.
pub(super) fn cross_entropy_grad(
    z: &[f32],
    labels: &[u32],
    classes: usize,
    scale: f32,
) -> Vec<f32> {
    let mut dz = vec![0f32; z.len()];
    for ((d, row), &y) in dz
        .chunks_exact_mut(classes)
        .zip(z.chunks_exact(classes))
        .zip(labels)
    {
        let (max, lse) = log_sum_exp(row);
        for (d, v) in d.iter_mut().zip(row) {
            *d = scale * (v - max - lse).exp();
        }
        d[y as usize] -= scale;
    }
    dz
}
