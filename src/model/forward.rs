//! The dense f32 forward pass on candle-core: the reference every compressed run is compared
//! with, and the graph training differentiates through. Training substitutes its own versions
//! of a few operations (fast backward passes, masked or fake-quantized weights) through
//! [`ForwardOps`], so the layer dispatch exists once and the model knows nothing of training.

use candle_core::{D, Result, Tensor};

use super::graph::{
    Conv2dGeometry, Layer, Model, NormParams, Op, ParamJoin, Params, Pool2d, Source,
};
use super::shape::{adaptive_window, linear_taps};
use super::spec::{Activation, UpsampleMode};

/// How the forward pass computes the operations that training customises. Every method has
/// the inference reference as its default, so `Model::forward` is `forward_with` on
/// [`Reference`].
pub trait ForwardOps {
    /// The weight and bias layer `layer` (an index into `Model::layers`) computes with. Training
    /// applies pruning masks and fake quantization here.
    fn params(&self, _layer: usize, p: &Params) -> Result<(Tensor, Option<Tensor>)> {
        Ok((p.weight.clone(), p.bias.clone()))
    }

    /// The input of linear/conv layer `layer` as the layer sees it (training fake-quantizes
    /// activations here when a recipe quantizes them).
    fn layer_input(&self, _layer: usize, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }

    /// `x · wᵀ + b` for `x` `[N, in]`, `w` `[out, in]`.
    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let y = x.matmul(&w.t()?)?;
        match b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    fn conv2d(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        g: &Conv2dGeometry,
    ) -> Result<Tensor> {
        conv2d(x, w, b, g)
    }

    fn activation(&self, x: &Tensor, a: Activation) -> Result<Tensor> {
        activation(x, a)
    }

    fn max_pool2d(&self, x: &Tensor, p: &Pool2d) -> Result<Tensor> {
        let x = pad(x, p.padding, f32::NEG_INFINITY)?;
        x.max_pool2d_with_stride(p.kernel, p.stride)
    }

    /// Dropout with probability `p`: the identity at inference.
    fn dropout(&self, x: &Tensor, _p: f64) -> Result<Tensor> {
        Ok(x.clone())
    }
}

/// The inference reference: every operation as [`ForwardOps`]' defaults compute it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reference;

impl ForwardOps for Reference {}

impl Model {
    /// Runs a batch `[N, ...input.shape]` of already-scaled inputs and returns `[N, classes]`
    /// logits (or whatever the last layer outputs).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, &Reference, |_, _| Ok(()))
    }

    /// The forward pass with `ops` computing the customisable operations, calling
    /// `observe(i, input)` with each layer's input before layer `i` runs (activation
    /// calibration watches the linear/conv inputs this way).
    pub fn forward_with(
        &self,
        x: &Tensor,
        ops: &dyn ForwardOps,
        mut observe: impl FnMut(usize, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let keep = self.kept_values();
        // Kept values: `[0]` the model input, `[j + 1]` layer j's output.
        let mut saved: Vec<Option<Tensor>> = vec![None; self.layers.len() + 1];
        if keep[0] {
            saved[0] = Some(x.clone());
        }
        let mut x = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(src) = layer.input {
                x = kept(&saved, src, &layer.name)?.clone();
            }
            observe(i, &x)?;
            x = layer_forward(i, layer, &x, ops, &saved)?;
            if keep[i + 1] {
                saved[i + 1] = Some(x.clone());
            }
        }
        Ok(x)
    }
}

/// A kept value of the forward pass.
fn kept<'a>(saved: &'a [Option<Tensor>], src: Source, layer: &str) -> Result<&'a Tensor> {
    let slot = match src {
        Source::Input => 0,
        Source::Layer(j) => j + 1,
    };
    match saved.get(slot) {
        Some(Some(t)) => Ok(t),
        _ => candle_core::bail!("layer {layer}: the value it reads was not kept"),
    }
}

/// `a` and `b` joined element by element, a `[N, C]` or `[N, C, 1, 1]` operand broadcast over a
/// `[N, C, H, W]` one.
fn join(a: &Tensor, b: &Tensor, mul: bool) -> Result<Tensor> {
    let (a, b) = if a.rank() == b.rank() && a.dims() == b.dims() {
        (a.clone(), b.clone())
    } else {
        let per_channel = |t: &Tensor| {
            let d = t.dims();
            t.reshape((d[0], d[1], 1, 1))
        };
        if a.rank() == 4 && a.dims()[2..] != [1, 1] {
            (a.clone(), per_channel(b)?)
        } else {
            (per_channel(a)?, b.clone())
        }
    };
    if mul {
        a.broadcast_mul(&b)
    } else {
        a.broadcast_add(&b)
    }
}

/// One layer of the forward pass.
fn layer_forward(
    i: usize,
    layer: &Layer,
    x: &Tensor,
    ops: &dyn ForwardOps,
    saved: &[Option<Tensor>],
) -> Result<Tensor> {
    match &layer.op {
        Op::Linear(p) => {
            let (w, b) = ops.params(i, p)?;
            let x = ops.layer_input(i, x)?;
            if let [n, t, d] = x.dims() {
                // Each token a row: `[N·T, d]` through the layer, then back to `[N, T, out]`.
                let (n, t) = (*n, *t);
                let y = ops.linear(&x.reshape((n * t, *d))?, &w, b.as_ref())?;
                let out = y.dim(1)?;
                return y.reshape((n, t, out));
            }
            ops.linear(&x, &w, b.as_ref())
        }
        Op::Conv2d(p, g) if p.is_conv1d() => {
            // Through the 2-D convolution at height 1: the height's stride and dilation do not
            // change a height-1 output, so both take the length's (candle's conv2d takes one
            // stride and one dilation).
            let (w, b) = ops.params(i, p)?;
            let x = ops.layer_input(i, x)?;
            let g2 = Conv2dGeometry {
                stride: (g.stride.1, g.stride.1),
                dilation: (g.dilation.1, g.dilation.1),
                ..*g
            };
            ops.conv2d(&x.unsqueeze(2)?, &w.unsqueeze(2)?, b.as_ref(), &g2)?
                .squeeze(2)
        }
        Op::Conv2d(p, g) => {
            if g.stride.0 != g.stride.1 || g.dilation.0 != g.dilation.1 {
                candle_core::bail!(
                    "layer {}: the dense reference needs equal stride and dilation in both dimensions",
                    layer.name
                );
            }
            let (w, b) = ops.params(i, p)?;
            let x = ops.layer_input(i, x)?;
            ops.conv2d(&x, &w, b.as_ref(), g)
        }
        Op::Embedding(p) => {
            let (w, _) = ops.params(i, p)?;
            embedding(layer, x, &w)
        }
        Op::ChannelAffine { scale, shift } => {
            let mut shape = vec![1, scale.elem_count()];
            shape.extend(std::iter::repeat_n(1, x.rank() - 2));
            x.broadcast_mul(&scale.reshape(shape.clone())?)?
                .broadcast_add(&shift.reshape(shape)?)
        }
        Op::LayerNorm(n) => layer_norm(x, n),
        Op::Activation(a) => ops.activation(x, *a),
        Op::MaxPool2d(p) => ops.max_pool2d(x, p),
        Op::AvgPool2d(p) => avg_pool(x, p),
        Op::GlobalAvgPool => x.mean(D::Minus1)?.mean(D::Minus1),
        Op::AdaptiveAvgPool((oh, ow)) => adaptive_avg_pool(x, (*oh, *ow)),
        Op::Upsample {
            scale,
            mode,
            align_corners,
        } => match mode {
            UpsampleMode::Nearest => upsample_nearest(x, *scale),
            UpsampleMode::Bilinear => upsample_bilinear(x, *scale, *align_corners),
        },
        Op::Flatten => x.flatten_from(1),
        Op::Reshape(shape) => {
            let mut dims = vec![x.dim(0)?];
            dims.extend_from_slice(shape);
            x.reshape(dims)
        }
        Op::Transpose(a, b) => x.transpose(a + 1, b + 1)?.contiguous(),
        Op::Select { dim, index } => x.narrow(dim + 1, *index, 1)?.squeeze(dim + 1),
        Op::Mean(dim) => x.mean(dim + 1),
        Op::Attention { heads } => attention(x, *heads),
        Op::Param { join, param } => {
            let v = param.value.unsqueeze(0)?;
            match join {
                ParamJoin::Add => x.broadcast_add(&v),
                ParamJoin::Mul => x.broadcast_mul(&v),
                ParamJoin::Concat => {
                    let mut dims = v.dims().to_vec();
                    dims[0] = x.dim(0)?;
                    Tensor::cat(&[&v.broadcast_as(dims)?.contiguous()?, x], 1)
                }
            }
        }
        Op::Dropout(p) => ops.dropout(x, *p),
        Op::Softmax => candle_nn::ops::softmax_last_dim(x),
        Op::Add { from } => join(x, kept(saved, *from, &layer.name)?, false),
        Op::Mul { from } => join(x, kept(saved, *from, &layer.name)?, true),
        Op::Concat { from } => {
            let mut parts = vec![x.clone()];
            for s in from {
                parts.push(kept(saved, *s, &layer.name)?.clone());
            }
            Tensor::cat(&parts, 1)
        }
    }
}

/// The rows of the table `w` for the ids of a `[N, tokens]` batch `x`: `[N, tokens, dim]` (a
/// selection training differentiates through, for the table). An id that is not a whole number
/// in range is an error naming the layer.
fn embedding(layer: &Layer, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n, t) = x.dims2()?;
    let values = x
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let ids = layer
        .token_ids(&values)
        .map_err(|e| candle_core::Error::Msg(format!("layer {}: {e}", layer.name)))?;
    let ids = Tensor::from_vec(ids, n * t, x.device())?;
    w.index_select(&ids, 0)?.reshape((n, t, w.dim(1)?))
}

/// PyTorch's layer normalization over the last dimension: `(x − mean) / √(var + eps) × weight +
/// bias` with the biased variance, from tensor operations training differentiates through.
fn layer_norm(x: &Tensor, n: &NormParams) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let y = centred.broadcast_div(&(var + n.eps)?.sqrt()?)?;
    y.broadcast_mul(&n.weight)?.broadcast_add(&n.bias)
}

/// Self-attention over `[N, T, 3·d]` queries, keys and values (in that order, as
/// `nn.MultiheadAttention`'s `in_proj`): per head of `d / heads` values, softmax(q·kᵀ /
/// √(d/heads))·v; the heads side by side give `[N, T, d]`.
fn attention(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (n, t, d3) = x.dims3()?;
    let d = d3 / 3;
    let dh = d / heads;
    let part = |k: usize| -> Result<Tensor> {
        x.narrow(2, k * d, d)?
            .reshape((n, t, heads, dh))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (q, k, v) = (part(0)?, part(1)?, part(2)?);
    let q = (q * (1.0 / (dh as f64).sqrt()))?;
    let scores = q.matmul(&k.transpose(2, 3)?.contiguous()?)?;
    let p = candle_nn::ops::softmax(&scores, D::Minus1)?;
    p.matmul(&v)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((n, t, d))
}

/// An activation on candle, as the dense inference forward applies it.
pub(crate) fn activation(x: &Tensor, a: Activation) -> Result<Tensor> {
    match a {
        Activation::Relu => x.relu(),
        Activation::Relu6 => x.clamp(0f32, 6f32),
        Activation::LeakyRelu(s) => candle_nn::ops::leaky_relu(x, s),
        Activation::Gelu => x.gelu_erf(),
        Activation::Tanh => x.tanh(),
        Activation::Sigmoid => candle_nn::ops::sigmoid(x),
        Activation::Silu => x.silu(),
        // PyTorch's order of operations: the product first, then the division by 6.
        Activation::Hardswish => (x * relu6_shifted(x)?)?.broadcast_div(&six(x)?),
        Activation::Hardsigmoid => relu6_shifted(x)?.broadcast_div(&six(x)?),
    }
}

/// `relu6(x + 3)`: the ramp hardswish and hardsigmoid share.
fn relu6_shifted(x: &Tensor) -> Result<Tensor> {
    (x + 3.0)?.clamp(0f32, 6f32)
}

/// 6 as a scalar of `x`'s type and device, to divide by (not multiply by 1/6, which rounds
/// differently).
fn six(x: &Tensor) -> Result<Tensor> {
    Tensor::new(6f32, x.device())?.to_dtype(x.dtype())
}

/// candle's conv2d on the zero-padded input (equal stride and dilation in both dimensions).
fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, g: &Conv2dGeometry) -> Result<Tensor> {
    let x = pad(x, g.padding, 0.0)?;
    let y = x.conv2d(w, 0, g.stride.0, g.dilation.0, g.groups)?;
    match b {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
        None => Ok(y),
    }
}

/// Pads the last two dimensions by `(ph, pw)` on both sides with `value`.
fn pad(x: &Tensor, (ph, pw): (usize, usize), value: f32) -> Result<Tensor> {
    if ph == 0 && pw == 0 {
        return Ok(x.clone());
    }
    if value == 0.0 {
        return x
            .pad_with_zeros(D::Minus2, ph, ph)?
            .pad_with_zeros(D::Minus1, pw, pw);
    }
    let mut x = x.clone();
    for (dim, p) in [(2usize, ph), (3usize, pw)] {
        if p == 0 {
            continue;
        }
        let mut shape = x.dims().to_vec();
        shape[dim] = p;
        let fill = Tensor::full(value, shape, x.device())?;
        x = Tensor::cat(&[&fill, &x, &fill], dim)?;
    }
    Ok(x)
}

/// PyTorch's adaptive average pooling of a `[N, C, H, W]` batch to `[N, C, oh, ow]`: each
/// window's mean along the height, then along the width (a rectangle's mean), with slices
/// and means only, so training differentiates through it.
fn adaptive_avg_pool(x: &Tensor, (oh, ow): (usize, usize)) -> Result<Tensor> {
    let along = |x: &Tensor, dim: usize, o: usize| -> Result<Tensor> {
        let l = x.dim(dim)?;
        if l == o {
            return Ok(x.clone());
        }
        let parts = (0..o)
            .map(|i| {
                let (a, b) = adaptive_window(i, l, o);
                x.narrow(dim, a, b - a)?.mean_keepdim(dim)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, dim)
    };
    along(&along(x, 2, oh)?, 3, ow)
}

/// Nearest upsampling of a `[N, C, H, W]` batch by integer factors: each value repeated `sh`
/// times down and `sw` times across (a broadcast, which training differentiates through).
fn upsample_nearest(x: &Tensor, (sh, sw): (usize, usize)) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    x.reshape((n, c, h, 1, w, 1))?
        .broadcast_as((n, c, h, sh, w, sw))?
        .contiguous()?
        .reshape((n, c, h * sh, w * sw))
}

/// Bilinear upsampling of a `[N, C, H, W]` batch by integer factors, as PyTorch's: along the
/// width, then along the height, each a product with the axis' interpolation matrix (two
/// nonzero weights a row, `linear_taps`), which training differentiates through.
fn upsample_bilinear(x: &Tensor, (sh, sw): (usize, usize), align_corners: bool) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let matrix = |l: usize, scale: usize| -> Result<Tensor> {
        let taps = linear_taps(l, scale, align_corners);
        let mut m = vec![0f32; taps.len() * l];
        for (row, t) in m.chunks_mut(l).zip(&taps) {
            row[t.i0] += t.w0;
            row[t.i1] += t.w1;
        }
        Tensor::from_vec(m, (taps.len(), l), x.device())?.to_dtype(x.dtype())
    };
    let along_w = x.broadcast_matmul(&matrix(w, sw)?.t()?)?;
    matrix(h, sh)?.broadcast_matmul(&along_w)
}

/// Average pooling counting padded zeros, as PyTorch's default `count_include_pad=True`.
fn avg_pool(x: &Tensor, p: &Pool2d) -> Result<Tensor> {
    let x = pad(x, p.padding, 0.0)?;
    x.avg_pool2d_with_stride(p.kernel, p.stride)
}
