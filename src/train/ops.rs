//! Training-mode conv2d, max pooling and ReLU ([`TrainOps`], the forward pass training
//! differentiates through): the values of candle's `conv2d`, `max_pool2d` and
//! `relu`, with backward passes that are fast on the CPU. Each is one graph node, because
//! candle's backward allocates a zeroed gradient and adds into it for every node.
//!
//! candle's CPU conv2d backward computes the input gradient with a direct-loop transposed
//! convolution (even for a first layer whose input needs none), which made training a conv net
//! about 8× slower than PyTorch. Here a convolution is one custom op: an unfold (im2col)
//! followed by one matmul per group, so both gradients are matmuls (plus a fold, the scatter
//! back, for the input gradient, which is skipped when the input needs none).
//!
//! Max pooling's backward sends each output's gradient to the first maximum of its window (in
//! row-major order), as PyTorch does. candle's own max-pool backward multiplies it by
//! `maxima / (kh·kw)` instead (¼ for a 2×2 window with one maximum); see `max_pool2d`.
//!
//! Everything here is f32 on the CPU and deterministic: each output element is summed by one
//! thread in a fixed order.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Storage, Tensor,
    bail,
};
use rayon::prelude::*;

use crate::model::{Activation, Conv2dGeometry, ForwardOps, Pool2d};

/// One spatial axis of a sliding window: input size, kernel, stride, padding, dilation, output
/// size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Axis {
    size: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
    out: usize,
}

impl Axis {
    fn new(size: usize, kernel: usize, stride: usize, pad: usize, dilation: usize) -> Result<Self> {
        let out =
            match crate::model::shape::Window::new(kernel, stride, pad, dilation).out_size(size) {
                Ok(out) => out,
                Err(e) => bail!("{e}"),
            };
        Ok(Axis {
            size,
            kernel,
            stride,
            pad,
            dilation,
            out,
        })
    }

    /// The input coordinate that output `o`, kernel tap `k` reads, or `None` in the padding.
    #[inline]
    fn input(&self, o: usize, k: usize) -> Option<usize> {
        (o * self.stride + k * self.dilation)
            .checked_sub(self.pad)
            .filter(|&i| i < self.size)
    }
}

/// The kernel taps `lo..hi` that output `o` reads inside the input (pooling: no dilation).
#[inline]
fn taps(a: &Axis, o: usize) -> (usize, usize) {
    let first = o * a.stride;
    let lo = a.pad.saturating_sub(first).min(a.kernel);
    let hi = (a.size + a.pad).saturating_sub(first).clamp(lo, a.kernel);
    (lo, hi)
}

/// The f32 values of a contiguous CPU tensor.
fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else {
        bail!("{what}: only f32 tensors are supported");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => bail!("{what}: the input must be contiguous"),
    }
}

/// Runs `f` on the f32 values of a contiguous CPU tensor, without copying them.
fn with_f32<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("{what}: only CPU tensors are supported");
    };
    Ok(f(f32_slice(cpu, layout, what)?))
}

/// im2col for `[N, C, H, W]` inputs: `[groups, N·oh·ow, C/groups·kh·kw]`, one row per output
/// position holding what each tap `(c, i, j)` (the weight's order) sees there, zero in the
/// padding. (Rows of taps make the matmul with the weight twice as fast as columns.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unfold {
    n: usize,
    c: usize,
    groups: usize,
    h: Axis,
    w: Axis,
}

impl Unfold {
    fn channels_per_group(&self) -> usize {
        self.c / self.groups
    }

    /// Rows per group.
    fn k(&self) -> usize {
        self.channels_per_group() * self.h.kernel * self.w.kernel
    }

    /// Output positions per sample.
    fn l(&self) -> usize {
        self.h.out * self.w.out
    }

    fn input_dims(&self) -> [usize; 4] {
        [self.n, self.c, self.h.size, self.w.size]
    }

    /// Calls `f(tap, input offset within the sample)` for every tap of one group (channel
    /// offsets from `g`'s first channel) that output `(oy, ox)` reads inside the input.
    #[inline]
    fn for_taps(&self, g: usize, oy: usize, ox: usize, mut f: impl FnMut(usize, usize)) {
        let (kh, kw) = (self.h.kernel, self.w.kernel);
        let hw = self.h.size * self.w.size;
        let cg = self.channels_per_group();
        for c in 0..cg {
            let plane = (g * cg + c) * hw;
            for i in 0..kh {
                let Some(iy) = self.h.input(oy, i) else {
                    continue;
                };
                let row = plane + iy * self.w.size;
                for j in 0..kw {
                    if let Some(ix) = self.w.input(ox, j) {
                        f((c * kh + i) * kw + j, row + ix);
                    }
                }
            }
        }
    }
}

impl CustomOp1 for Unfold {
    fn name(&self) -> &'static str {
        "squeeze-unfold"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        if layout.dims() != self.input_dims() {
            bail!(
                "unfold: input {:?}, expected {:?}",
                layout.dims(),
                self.input_dims()
            );
        }
        let x = f32_slice(storage, layout, "unfold")?;
        let (k, l) = (self.k(), self.l());
        let chw = self.c * self.h.size * self.w.size;
        let mut out = vec![0f32; self.groups * self.n * l * k];
        // One (group, sample) block of L rows per task.
        out.par_chunks_mut(l * k)
            .enumerate()
            .for_each(|(b, block)| {
                let (g, n) = (b / self.n, b % self.n);
                let sample = &x[n * chw..][..chw];
                for (p, row) in block.chunks_exact_mut(k).enumerate() {
                    let (oy, ox) = (p / self.w.out, p % self.w.out);
                    self.for_taps(g, oy, ox, |t, at| row[t] = sample[at]);
                }
            });
        let shape = Shape::from((self.groups, self.n * l, k));
        Ok((CpuStorage::F32(out), shape))
    }
}

/// The adjoint of `Unfold` (col2im): sums every entry back into the input position it was read
/// from.
#[derive(Debug, Clone, Copy)]
struct Fold(Unfold);

impl CustomOp1 for Fold {
    fn name(&self) -> &'static str {
        "squeeze-fold"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let u = &self.0;
        let (k, l) = (u.k(), u.l());
        let nl = u.n * l;
        if layout.dims() != [u.groups, nl, k] {
            bail!(
                "fold: input {:?}, expected {:?}",
                layout.dims(),
                [u.groups, nl, k]
            );
        }
        let cols = f32_slice(storage, layout, "fold")?;
        let chw = u.c * u.h.size * u.w.size;
        let mut out = vec![0f32; u.n * chw];
        // One sample per task: its sums never race and always run in the same order.
        out.par_chunks_mut(chw).enumerate().for_each(|(n, sample)| {
            for g in 0..u.groups {
                let block = &cols[(g * nl + n * l) * k..][..l * k];
                for (p, row) in block.chunks_exact(k).enumerate() {
                    let (oy, ox) = (p / u.w.out, p % u.w.out);
                    u.for_taps(g, oy, ox, |t, at| sample[at] += row[t]);
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from(&u.input_dims())))
    }
}

/// A 2-D convolution of `x` `[N, C, H, W]` with `weight` `[O, C/groups, kh, kw]` (and `bias`
/// `[O]`), equal to candle's `conv2d` on the zero-padded input up to rounding, with any stride,
/// padding and dilation per dimension. Gradients flow to `x` (when it needs one), the weight and
/// the bias.
///
/// The whole convolution is one graph node: candle's backward allocates a zeroed gradient and
/// adds into it for every node, which on an unfold → matmul → permute → bias chain cost more
/// than the arithmetic.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geometry: Conv2dGeometry,
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (o, cg, kh, kw) = weight.dims4()?;
    let groups = geometry.groups;
    if groups == 0 || cg * groups != c || !o.is_multiple_of(groups) {
        bail!(
            "conv2d: weight {:?} does not fit {c} input channels in {groups} groups",
            weight.dims()
        );
    }
    let unfold = Unfold {
        n,
        c,
        groups,
        h: Axis::new(
            h,
            kh,
            geometry.stride.0,
            geometry.padding.0,
            geometry.dilation.0,
        )?,
        w: Axis::new(
            w,
            kw,
            geometry.stride.1,
            geometry.padding.1,
            geometry.dilation.1,
        )?,
    };
    let bias = match bias {
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(o, x.dtype(), x.device())?,
    };
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias, Conv { unfold, out: o })
}

/// `(x, weight, bias)` → convolution, as unfold + one matmul per group.
#[derive(Debug, Clone, Copy)]
struct Conv {
    unfold: Unfold,
    out: usize,
}

impl Conv {
    fn out_dims(&self) -> [usize; 4] {
        let u = &self.unfold;
        [u.n, self.out, u.h.out, u.w.out]
    }

    /// `[G, N·L, O/G]` (matmul order) → `[N, O, L]` plus `bias`.
    fn matmul_to_nchw(&self, src: &[f32], bias: &[f32]) -> Vec<f32> {
        let (n, l, og) = (
            self.unfold.n,
            self.unfold.l(),
            self.out / self.unfold.groups,
        );
        let mut dst = vec![0f32; src.len()];
        dst.par_chunks_mut(l).enumerate().for_each(|(p, plane)| {
            let (ni, oi) = (p / self.out, p % self.out);
            let (g, o) = (oi / og, oi % og);
            let from = &src[(g * n + ni) * l * og..][..l * og];
            for (d, s) in plane.iter_mut().zip(from[o..].iter().step_by(og)) {
                *d = s + bias[oi];
            }
        });
        dst
    }

    /// `[N, O, L]` → `[G, N·L, O/G]`.
    fn nchw_to_matmul(&self, src: &[f32]) -> Vec<f32> {
        let (n, l, og) = (
            self.unfold.n,
            self.unfold.l(),
            self.out / self.unfold.groups,
        );
        let mut dst = vec![0f32; src.len()];
        dst.par_chunks_mut(l * og)
            .enumerate()
            .for_each(|(b, block)| {
                let (g, ni) = (b / n, b % n);
                for o in 0..og {
                    let plane = &src[(ni * self.out + g * og + o) * l..][..l];
                    for (d, s) in block[o..].iter_mut().step_by(og).zip(plane) {
                        *d = *s;
                    }
                }
            });
        dst
    }
}

impl CustomOp3 for Conv {
    fn name(&self) -> &'static str {
        "squeeze-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let u = &self.unfold;
        let (cols, _) = u.cpu_fwd(s1, l1)?;
        let CpuStorage::F32(cols) = cols else {
            bail!("conv2d: only f32 tensors are supported");
        };
        let cols = Tensor::from_vec(cols, (u.groups, u.n * u.l(), u.k()), &Device::Cpu)?;
        let w = f32_slice(s2, l2, "conv2d weight")?;
        let b = f32_slice(s3, l3, "conv2d bias")?;
        if w.len() != self.out * u.k() || b.len() != self.out {
            bail!("conv2d: unexpected weight or bias size");
        }
        let w = Tensor::from_slice(w, (u.groups, self.out / u.groups, u.k()), &Device::Cpu)?;
        // [G, N·L, K] × [G, K, O/G]
        let y = cols.matmul(&w.t()?)?;
        let y = with_f32(&y, "conv2d", |y| self.matmul_to_nchw(y, b))?;
        Ok((CpuStorage::F32(y), Shape::from(&self.out_dims())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let u = &self.unfold;
        let (g, og, k, nl) = (u.groups, self.out / u.groups, u.k(), u.n * u.l());
        let grad = with_f32(&grad.contiguous()?, "conv2d backward", |g| {
            self.nchw_to_matmul(g)
        })?;
        // [G, N·L, O/G]
        let grad = Tensor::from_vec(grad, (g, nl, og), &Device::Cpu)?;
        let grad_bias = if bias.track_op() {
            Some(grad.sum(1)?.reshape(self.out)?)
        } else {
            None
        };
        let grad_weight = if weight.track_op() {
            let cols = x.apply_op1_no_bwd(u)?;
            // [G, O/G, N·L] × [G, N·L, K]
            Some(grad.t()?.matmul(&cols)?.reshape(weight.shape())?)
        } else {
            None
        };
        let grad_x = if x.track_op() {
            let w = weight.reshape((g, og, k))?;
            // [G, N·L, O/G] × [G, O/G, K]
            let cols = grad.matmul(&w)?;
            Some(cols.apply_op1_no_bwd(&Fold(*u))?)
        } else {
            None
        };
        Ok((grad_x, grad_weight, grad_bias))
    }
}

/// Max pooling of `x` `[N, C, H, W]`, padding counting as −∞. Its values equal candle's
/// `max_pool2d_with_stride` on the padded input; its gradient goes to the first maximum of each
/// window (PyTorch's rule), where candle's backward scales it by `maxima / (kh·kw)` and
/// supports only stride = kernel.
pub fn max_pool2d(
    x: &Tensor,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let pool = MaxPool {
        planes: n * c,
        h: Axis::new(h, kernel.0, stride.0, padding.0, 1)?,
        w: Axis::new(w, kernel.1, stride.1, padding.1, 1)?,
    };
    let y = x.contiguous()?.apply_op1(pool)?;
    y.reshape((n, c, pool.h.out, pool.w.out))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MaxPool {
    /// N·C.
    planes: usize,
    h: Axis,
    w: Axis,
}

impl MaxPool {
    /// Calls `visit(output index, input index of the window's first maximum)` for one plane; the
    /// input index is `None` when the window lies entirely in the padding.
    #[inline]
    fn argmax(&self, plane: &[f32], mut visit: impl FnMut(usize, Option<usize>)) {
        let (h, w) = (&self.h, &self.w);
        for oy in 0..h.out {
            let (i0, i1) = taps(h, oy);
            for ox in 0..w.out {
                let (j0, j1) = taps(w, ox);
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

    fn plane_in(&self) -> usize {
        self.h.size * self.w.size
    }

    fn plane_out(&self) -> usize {
        self.h.out * self.w.out
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "squeeze-max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, "max_pool2d")?;
        let (pin, pout) = (self.plane_in(), self.plane_out());
        if x.len() != self.planes * pin {
            bail!(
                "max_pool2d: input of {} values, expected {}",
                x.len(),
                self.planes * pin
            );
        }
        let mut out = vec![0f32; self.planes * pout];
        out.par_chunks_mut(pout)
            .zip(x.par_chunks(pin))
            .for_each(|(dst, src)| {
                self.argmax(src, |o, at| {
                    dst[o] = at.map_or(f32::NEG_INFINITY, |at| src[at]);
                })
            });
        Ok((CpuStorage::F32(out), Shape::from((self.planes, pout))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        if !arg.track_op() {
            return Ok(None);
        }
        let grad = grad_res.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&grad, &MaxPoolBackward(*self))?))
    }
}

/// `(input, output gradient)` → input gradient: each output's gradient added at the first
/// maximum of its window.
#[derive(Debug, Clone, Copy)]
struct MaxPoolBackward(MaxPool);

impl CustomOp2 for MaxPoolBackward {
    fn name(&self) -> &'static str {
        "squeeze-max-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let p = &self.0;
        let x = f32_slice(s1, l1, "max_pool2d backward")?;
        let g = f32_slice(s2, l2, "max_pool2d backward")?;
        let (pin, pout) = (p.plane_in(), p.plane_out());
        if x.len() != p.planes * pin || g.len() != p.planes * pout {
            bail!("max_pool2d backward: unexpected input or gradient size");
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(pin)
            .zip(x.par_chunks(pin).zip(g.par_chunks(pout)))
            .for_each(|(dst, (src, grad))| {
                p.argmax(src, |o, at| {
                    if let Some(at) = at {
                        dst[at] += grad[o];
                    }
                })
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// ReLU whose backward is one pass: `grad · [x ≥ 0]`, candle's rule (which takes four passes and
/// two temporaries).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Relu)
}

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "squeeze-relu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, "relu")?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(d, s)| {
                for (d, s) in d.iter_mut().zip(s) {
                    *d = s.max(0.0);
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        if !arg.track_op() {
            return Ok(None);
        }
        Ok(Some(arg.apply_op2_no_bwd(
            &grad_res.contiguous()?,
            &ReluBackward,
        )?))
    }
}

/// `(x, output gradient)` → `grad · [x ≥ 0]`.
struct ReluBackward;

impl CustomOp2 for ReluBackward {
    fn name(&self) -> &'static str {
        "squeeze-relu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "relu backward")?;
        let g = f32_slice(s2, l2, "relu backward")?;
        if x.len() != g.len() {
            bail!("relu backward: input and gradient sizes differ");
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(d, (x, g))| {
                for ((d, x), g) in d.iter_mut().zip(x).zip(g) {
                    *d = g * if *x >= 0.0 { 1.0 } else { 0.0 };
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Elements per parallel task in element-wise loops.
const CHUNK: usize = 1 << 15;

/// The operations of the training forward pass: conv2d, ReLU and max pooling with the fast
/// backward passes above, dropout active; everything else as the inference reference.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrainOps;

impl ForwardOps for TrainOps {
    fn conv2d(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        g: &Conv2dGeometry,
    ) -> Result<Tensor> {
        conv2d(x, w, b, *g)
    }

    fn activation(&self, x: &Tensor, a: Activation) -> Result<Tensor> {
        match a {
            Activation::Relu => relu(x),
            other => crate::model::activation(x, other),
        }
    }

    fn max_pool2d(&self, x: &Tensor, p: &Pool2d) -> Result<Tensor> {
        // Same values; the gradient goes to each window's first maximum.
        max_pool2d(x, p.kernel, p.stride, p.padding)
    }

    fn dropout(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        if p > 0.0 {
            candle_nn::ops::dropout(x, p as f32)
        } else {
            Ok(x.clone())
        }
    }
}
