//! Fake quantization for quantization-aware training: the forward pass computes with the values
//! the compressed model will hold, the backward pass lets gradients through unchanged (the
//! straight-through estimator), except where a fixed range clips the input.
//!
//! - [`fake_quantize`]: a fixed scale and zero point (activations, calibrated), as PyTorch's
//!   `fake_quantize_per_tensor_affine`: forward `scale × (clamp(round(x/scale) + zp, 0, 2^b − 1)
//!   − zp)`, rounding half to even like the engine; gradient `g` where `round(x/scale) + zp`
//!   lies in `[0, 2^b − 1]`, zero outside.
//! - [`fake_quantize_weights`]: uniform levels computed from the tensor itself by the very
//!   function `compress::apply` uses (`quant::quantize_uniform`), so training sees exactly the
//!   values the recipe will store. Its ranges are the weights' own min and max, so no weight is
//!   ever outside them and the gradient is the identity.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};

use crate::compress::Granularity;
use crate::compress::quant::{dequantize, quantize_uniform};

/// The values of a contiguous f32 CPU tensor.
fn f32_values<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else {
        bail!("{what}: only f32 tensors are supported");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => bail!("{what}: the input must be contiguous"),
    }
}

/// Fixed-range fake quantization of `x` to `bits` with `scale` and `zero_point` (see the
/// module comment). `scale` must be positive and finite.
pub fn fake_quantize(x: &Tensor, bits: u8, scale: f32, zero_point: i32) -> Result<Tensor> {
    if !(scale.is_finite() && scale > 0.0 && (1..=16).contains(&bits)) {
        bail!(
            "fake quantization needs 1..16 bits and a positive scale, got {bits} bits, scale {scale}"
        );
    }
    x.contiguous()?.apply_op1(Affine {
        bits,
        scale,
        zero_point,
    })
}

#[derive(Debug, Clone, Copy)]
struct Affine {
    bits: u8,
    scale: f32,
    zero_point: i32,
}

impl Affine {
    fn top(&self) -> f32 {
        ((1i32 << self.bits) - 1) as f32
    }

    /// The integer level before clamping.
    #[inline]
    fn level(&self, x: f32) -> f32 {
        (x / self.scale).round_ties_even() + self.zero_point as f32
    }
}

impl CustomOp1 for Affine {
    fn name(&self) -> &'static str {
        "squeeze-fake-quantize"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut out = f32_values(storage, layout, "fake_quantize")?.to_vec();
        crate::engine::fake_quantize(&mut out, self.bits, self.scale, self.zero_point);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let top = self.top();
        let inside: Vec<f32> = arg
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|&x| {
                let q = self.level(x);
                if (0.0..=top).contains(&q) { 1.0 } else { 0.0 }
            })
            .collect();
        let inside = Tensor::from_vec(inside, arg.shape(), arg.device())?;
        Ok(Some(grad_res.mul(&inside)?))
    }
}

/// Uniform fake quantization of a `rows × cols` weight (any shape with that many elements,
/// pruned weights already zero), exactly as `compress::quant::quantize_uniform` quantizes it.
pub fn fake_quantize_weights(
    w: &Tensor,
    rows: usize,
    cols: usize,
    bits: u8,
    symmetric: bool,
    granularity: Granularity,
) -> Result<Tensor> {
    if w.elem_count() != rows * cols {
        bail!(
            "fake quantization: a weight of {} values is not {rows} × {cols}",
            w.elem_count()
        );
    }
    w.contiguous()?.apply_op1(Weights {
        rows,
        cols,
        bits,
        symmetric,
        granularity,
    })
}

#[derive(Debug, Clone, Copy)]
struct Weights {
    rows: usize,
    cols: usize,
    bits: u8,
    symmetric: bool,
    granularity: Granularity,
}

impl CustomOp1 for Weights {
    fn name(&self) -> &'static str {
        "squeeze-fake-quantize-weights"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = f32_values(storage, layout, "fake_quantize_weights")?;
        // Every weight counts as kept: a pruned weight is 0.0, which neither widens the range
        // (it always includes 0) nor takes a code other than the zero point, so the values
        // equal those `quantize_uniform` gives with the real mask.
        let kept = vec![true; w.len()];
        let q = quantize_uniform(
            w,
            &kept,
            self.rows,
            self.cols,
            self.bits,
            self.symmetric,
            self.granularity,
        );
        let out = dequantize(&q, self.rows, self.cols);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.clone()))
    }
}
