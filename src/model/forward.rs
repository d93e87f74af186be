//! The dense f32 forward pass on candle-core: the reference every compressed run is compared
//! with, and the graph training differentiates through (in train mode, conv and max pooling go
//! through `train_ops`, whose backward passes are fast).

use candle_core::{D, Result, Tensor};

use super::{Activation, Conv2dGeometry, Model, Op, Params, Pool2d, train_ops};

impl Model {
    /// Runs a batch `[N, ...input.shape]` of already-scaled inputs and returns `[N, classes]`
    /// logits (or whatever the last layer outputs). `train` enables dropout.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_observed(x, train, |_, _| Ok(()))
    }

    /// `forward`, calling `observe(i, input)` with each layer's input before layer `i` runs
    /// (activation calibration watches the linear/conv inputs this way).
    pub fn forward_observed(
        &self,
        x: &Tensor,
        train: bool,
        mut observe: impl FnMut(usize, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let keep = self.residual_sources();
        let mut saved: Vec<Option<Tensor>> = vec![None; self.layers.len()];
        let mut x = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            observe(i, &x)?;
            x = match &layer.op {
                Op::Linear(p) => {
                    let y = x.matmul(&p.weight.t()?)?;
                    match &p.bias {
                        Some(b) => y.broadcast_add(b)?,
                        None => y,
                    }
                }
                Op::Conv2d(p, g) => {
                    if g.stride.0 != g.stride.1 || g.dilation.0 != g.dilation.1 {
                        candle_core::bail!(
                            "layer {}: the dense reference needs equal stride and dilation in both dimensions",
                            layer.name
                        );
                    }
                    if train {
                        // Same values; a backward pass several times faster than candle's.
                        train_ops::conv2d(&x, &p.weight, p.bias.as_ref(), *g)?
                    } else {
                        conv2d(&x, p, g)?
                    }
                }
                Op::ChannelAffine { scale, shift } => {
                    let mut shape = vec![1, scale.elem_count()];
                    shape.extend(std::iter::repeat_n(1, x.rank() - 2));
                    x.broadcast_mul(&scale.reshape(shape.clone())?)?
                        .broadcast_add(&shift.reshape(shape)?)?
                }
                Op::Activation(Activation::Relu) if train => train_ops::relu(&x)?,
                Op::Activation(a) => activation(&x, *a)?,
                Op::MaxPool2d(p) if train => {
                    // Same values; the gradient goes to each window's maximum (see train_ops).
                    train_ops::max_pool2d(&x, p.kernel, p.stride, p.padding)?
                }
                Op::MaxPool2d(p) => {
                    let x = pad(&x, p.padding, f32::NEG_INFINITY)?;
                    x.max_pool2d_with_stride(p.kernel, p.stride)?
                }
                Op::AvgPool2d(p) => avg_pool(&x, p)?,
                Op::GlobalAvgPool => x.mean(D::Minus1)?.mean(D::Minus1)?,
                Op::Flatten => x.flatten_from(1)?,
                Op::Dropout(p) => {
                    if train && *p > 0.0 {
                        candle_nn::ops::dropout(&x, *p as f32)?
                    } else {
                        x
                    }
                }
                Op::Softmax => candle_nn::ops::softmax_last_dim(&x)?,
                Op::Add { from } => match &saved[*from] {
                    Some(s) => (x + s)?,
                    None => candle_core::bail!("layer {}: residual source not kept", layer.name),
                },
            };
            if keep[i] {
                saved[i] = Some(x.clone());
            }
        }
        Ok(x)
    }

    /// `true` for layers whose output a later `add` reads.
    pub fn residual_sources(&self) -> Vec<bool> {
        let mut keep = vec![false; self.layers.len()];
        for l in &self.layers {
            if let Op::Add { from } = l.op {
                keep[from] = true;
            }
        }
        keep
    }
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
    }
}

/// candle's conv2d on the zero-padded input (equal stride and dilation in both dimensions).
fn conv2d(x: &Tensor, p: &Params, g: &Conv2dGeometry) -> Result<Tensor> {
    let x = pad(x, g.padding, 0.0)?;
    let y = x.conv2d(&p.weight, 0, g.stride.0, g.dilation.0, g.groups)?;
    match &p.bias {
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

/// Average pooling counting padded zeros, as PyTorch's default `count_include_pad=True`.
fn avg_pool(x: &Tensor, p: &Pool2d) -> Result<Tensor> {
    let x = pad(x, p.padding, 0.0)?;
    x.avg_pool2d_with_stride(p.kernel, p.stride)
}
