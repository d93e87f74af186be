//! Checked shape arithmetic: what each operation gives for its inputs ([`out_shape`]) and which
//! weight it takes ([`weight_shape`]), the output size of a convolution or pooling window,
//! element counts and the memory a model's tensors and activations take. Loading, export,
//! training and the engine all use these, so a shape is judged the same way everywhere, and
//! arithmetic on sizes read from a file is checked rather than wrapped.

use super::graph::{Layer, Model, Op, ParamJoin, Source};
use super::spec::OpSpec;

/// Why an operation cannot take the input it is given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShapeError {
    /// The input has a rank the operation does not read.
    #[error("input has shape {input:?}; {op} needs {needs}")]
    Rank {
        op: &'static str,
        input: Vec<usize>,
        needs: &'static str,
    },
    /// The operation's own tensors or settings do not fit its input.
    #[error("{0}")]
    Params(String),
    /// A window does not fit (or overflows) along one axis.
    #[error("{axis} {size}: {error}")]
    Window {
        axis: &'static str,
        size: usize,
        error: WindowError,
    },
    #[error("input shape {0:?} has too many elements")]
    TooLarge(Vec<usize>),
    /// Values joined element by element differ in shape.
    #[error("joins a value of shape {other:?} to a value of shape {input:?}")]
    Join {
        input: Vec<usize>,
        other: Vec<usize>,
    },
    #[error("{op} takes {expected} input(s), given {given}")]
    Inputs {
        op: &'static str,
        expected: usize,
        given: usize,
    },
}

const FLAT: &str = "a flat vector or [tokens, d] (add a flatten layer before it)";
const IMAGE: &str = "[channels, height, width]";
const SEQUENCE: &str = "[channels, length]";
const IDS: &str = "[tokens] (token ids)";
const TOKENS: &str = "[tokens, 3·d] (queries, keys and values from a linear layer)";

/// One sample's output shape of `op` given its inputs' shapes: the previous layer's output
/// first, then the outputs of the layers it names (`add`'s `from`). The one judge of whether an
/// operation fits its inputs: loading, export, training and the engine all ask it.
pub fn out_shape(op: &Op, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
    let expected = 1 + op.joined().len();
    if inputs.len() != expected {
        return Err(ShapeError::Inputs {
            op: op.name(),
            expected,
            given: inputs.len(),
        });
    }
    let x = inputs[0];
    let rank = |needs: &'static str, n: usize| {
        if x.len() == n {
            Ok(())
        } else {
            Err(ShapeError::Rank {
                op: op.name(),
                input: x.to_vec(),
                needs,
            })
        }
    };
    match op {
        Op::Linear(p) => {
            if x.len() != 2 {
                rank(FLAT, 1)?;
            }
            let last = x[x.len() - 1];
            match p.weight.dims() {
                &[out, cols] if cols == last => {
                    let mut y = x.to_vec();
                    y[x.len() - 1] = out;
                    Ok(y)
                }
                d => Err(ShapeError::Params(format!(
                    "weight {d:?} does not take {last} inputs"
                ))),
            }
        }
        Op::Embedding(p) => {
            rank(IDS, 1)?;
            match p.weight.dims() {
                &[_, dim] => Ok(vec![x[0], dim]),
                d => Err(ShapeError::Params(format!(
                    "weight {d:?} is not a [num_embeddings, embedding_dim] table"
                ))),
            }
        }
        Op::Reshape(shape) => {
            if element_count(shape) != element_count(x) {
                return Err(ShapeError::Params(format!(
                    "shape {shape:?} does not hold the values of an input of shape {x:?}"
                )));
            }
            Ok(shape.clone())
        }
        Op::Transpose(a, b) => {
            if *a >= x.len() || *b >= x.len() {
                return Err(ShapeError::Params(format!(
                    "dimensions {} and {} of a sample of shape {x:?}",
                    a + 1,
                    b + 1
                )));
            }
            let mut y = x.to_vec();
            y.swap(*a, *b);
            Ok(y)
        }
        Op::Select { dim, index } => match x.get(*dim) {
            Some(n) if index < n => {
                let mut y = x.to_vec();
                y.remove(*dim);
                Ok(y)
            }
            _ => Err(ShapeError::Params(format!(
                "index {index} of dimension {} of a sample of shape {x:?}",
                dim + 1
            ))),
        },
        Op::Mean(dim) => {
            if *dim >= x.len() || x.len() == 1 {
                return Err(ShapeError::Params(format!(
                    "the mean over dimension {} of a sample of shape {x:?} (a sample keeps one dimension)",
                    dim + 1
                )));
            }
            let mut y = x.to_vec();
            y.remove(*dim);
            Ok(y)
        }
        Op::Attention { heads } => {
            rank(TOKENS, 2)?;
            let d = x[1] / 3;
            if !x[1].is_multiple_of(3) || *heads == 0 || !d.is_multiple_of(*heads) {
                return Err(ShapeError::Params(format!(
                    "{} values per token are not queries, keys and values of {heads} heads (3 · d, d a multiple of heads)",
                    x[1]
                )));
            }
            Ok(vec![x[0], d])
        }
        Op::Param { join, param } => {
            let v = param.value.dims();
            match join {
                ParamJoin::Add | ParamJoin::Mul if v == x => Ok(x.to_vec()),
                ParamJoin::Concat if v.len() == x.len() && v.get(1..) == x.get(1..) => {
                    let mut y = x.to_vec();
                    y[0] = y[0]
                        .checked_add(v[0])
                        .ok_or_else(|| ShapeError::TooLarge(x.to_vec()))?;
                    Ok(y)
                }
                _ => Err(ShapeError::Join {
                    input: x.to_vec(),
                    other: v.to_vec(),
                }),
            }
        }
        Op::Conv2d(p, g) => {
            // A conv1d is a convolution of height 1: `[C, L]` read as `[C, 1, L]`.
            let conv1d = p.is_conv1d();
            let x: Vec<usize> = if conv1d {
                rank(SEQUENCE, 2)?;
                vec![x[0], 1, x[1]]
            } else {
                rank(IMAGE, 3)?;
                x.to_vec()
            };
            let groups = g.groups;
            if groups == 0 || !x[0].is_multiple_of(groups) {
                return Err(ShapeError::Params(format!(
                    "groups = {groups} must divide the {} input channels",
                    x[0]
                )));
            }
            let d = p.weight.dims();
            let d: Vec<usize> = match d {
                [o, i, k] if conv1d => vec![*o, *i, 1, *k],
                _ => d.to_vec(),
            };
            if d.len() != 4 || d[1].checked_mul(groups) != Some(x[0]) {
                return Err(ShapeError::Params(format!(
                    "weight {:?} does not take {} input channels in {groups} group(s)",
                    p.weight.dims(),
                    x[0]
                )));
            }
            if !d[0].is_multiple_of(groups) {
                return Err(ShapeError::Params(format!(
                    "{} output channels are not divisible by groups = {groups}",
                    d[0]
                )));
            }
            let (oh, ow) = windows(
                &x,
                Window::new(d[2], g.stride.0, g.padding.0, g.dilation.0),
                Window::new(d[3], g.stride.1, g.padding.1, g.dilation.1),
            )?;
            if conv1d {
                if (g.stride.0, g.padding.0, g.dilation.0) != (1, 0, 1) {
                    return Err(ShapeError::Params(
                        "a conv1d's geometry has no height (stride and dilation 1, padding 0)"
                            .into(),
                    ));
                }
                return Ok(vec![d[0], ow]);
            }
            Ok(vec![d[0], oh, ow])
        }
        Op::LayerNorm(n) => {
            let last = x.last().copied().unwrap_or(0);
            if n.weight.elem_count() != last || n.bias.elem_count() != last {
                return Err(ShapeError::Params(format!(
                    "{} weights and {} biases for a last dimension of {last}",
                    n.weight.elem_count(),
                    n.bias.elem_count()
                )));
            }
            Ok(x.to_vec())
        }
        Op::ChannelAffine { scale, shift } => {
            if scale.elem_count() != x[0] || shift.elem_count() != x[0] {
                return Err(ShapeError::Params(format!(
                    "{} scales and {} shifts for {} channels",
                    scale.elem_count(),
                    shift.elem_count(),
                    x[0]
                )));
            }
            Ok(x.to_vec())
        }
        Op::Activation(_) | Op::Dropout(_) | Op::Softmax => Ok(x.to_vec()),
        Op::MaxPool2d(p) | Op::AvgPool2d(p) => {
            rank(IMAGE, 3)?;
            if p.padding.0 * 2 > p.kernel.0 || p.padding.1 * 2 > p.kernel.1 {
                return Err(ShapeError::Params(
                    "padding may be at most half the kernel size".into(),
                ));
            }
            let (oh, ow) = windows(
                x,
                Window::new(p.kernel.0, p.stride.0, p.padding.0, 1),
                Window::new(p.kernel.1, p.stride.1, p.padding.1, 1),
            )?;
            Ok(vec![x[0], oh, ow])
        }
        Op::GlobalAvgPool => {
            rank(IMAGE, 3)?;
            Ok(vec![x[0]])
        }
        Op::AdaptiveAvgPool((oh, ow)) => {
            rank(IMAGE, 3)?;
            Ok(vec![x[0], *oh, *ow])
        }
        Op::Upsample { scale, .. } => {
            rank(IMAGE, 3)?;
            let too_large = || ShapeError::TooLarge(x.to_vec());
            let (h, w) = (
                x[1].checked_mul(scale.0).ok_or_else(too_large)?,
                x[2].checked_mul(scale.1).ok_or_else(too_large)?,
            );
            let out = vec![x[0], h, w];
            element_count(&out).ok_or_else(too_large)?;
            Ok(out)
        }
        Op::Flatten => Ok(vec![
            element_count(x).ok_or_else(|| ShapeError::TooLarge(x.to_vec()))?,
        ]),
        Op::Add { .. } | Op::Mul { .. } => broadcast(x, inputs[1]),
        Op::Concat { .. } => {
            let mut out = x.to_vec();
            for other in &inputs[1..] {
                if other.len() != x.len() || other[1..] != x[1..] {
                    return Err(ShapeError::Join {
                        input: x.to_vec(),
                        other: other.to_vec(),
                    });
                }
                out[0] = out[0]
                    .checked_add(other[0])
                    .ok_or_else(|| ShapeError::TooLarge(x.to_vec()))?;
            }
            Ok(out)
        }
    }
}

/// The shape of an element-wise join of `a` and `b`: their shape when equal, else the `[C, H,
/// W]` one when the other is `[C]` or `[C, 1, 1]` (one value per channel, broadcast).
pub fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>, ShapeError> {
    let per_channel = |big: &[usize], small: &[usize]| {
        big.len() == 3 && (small == [big[0]] || small == [big[0], 1, 1])
    };
    if a == b || per_channel(a, b) {
        Ok(a.to_vec())
    } else if per_channel(b, a) {
        Ok(b.to_vec())
    } else {
        Err(ShapeError::Join {
            input: a.to_vec(),
            other: b.to_vec(),
        })
    }
}

/// The weight a linear, conv or embedding op takes for `input` (`None` for a dimension the description
/// leaves to the tensor), or `None` for an op without one.
pub fn weight_shape(
    op: &OpSpec,
    input: &[usize],
) -> Result<Option<Vec<Option<usize>>>, ShapeError> {
    let rank = |needs: &'static str, n: usize| {
        if input.len() == n {
            Ok(())
        } else {
            Err(ShapeError::Rank {
                op: op.op_name(),
                input: input.to_vec(),
                needs,
            })
        }
    };
    match op {
        OpSpec::Linear { out_features, .. } => {
            if input.len() != 2 {
                rank(FLAT, 1)?;
            }
            Ok(Some(vec![*out_features, input.last().copied()]))
        }
        OpSpec::Conv2d {
            out_channels,
            kernel,
            groups,
            ..
        } => {
            rank(IMAGE, 3)?;
            if *groups == 0 || !input[0].is_multiple_of(*groups) {
                return Err(ShapeError::Params(format!(
                    "groups = {groups} must divide the {} input channels",
                    input[0]
                )));
            }
            let k = kernel.map(|k| k.hw());
            Ok(Some(vec![
                *out_channels,
                Some(input[0] / groups),
                k.map(|k| k.0),
                k.map(|k| k.1),
            ]))
        }
        OpSpec::Embedding {
            num_embeddings,
            embedding_dim,
            ..
        } => {
            rank(IDS, 1)?;
            Ok(Some(vec![*num_embeddings, *embedding_dim]))
        }
        OpSpec::Conv1d {
            out_channels,
            kernel,
            groups,
            ..
        } => {
            rank(SEQUENCE, 2)?;
            if *groups == 0 || !input[0].is_multiple_of(*groups) {
                return Err(ShapeError::Params(format!(
                    "groups = {groups} must divide the {} input channels",
                    input[0]
                )));
            }
            Ok(Some(vec![*out_channels, Some(input[0] / groups), *kernel]))
        }
        _ => Ok(None),
    }
}

/// Checks that every layer reads values that exist before it (the previous layer's output
/// unless it names its inputs) and outputs what [`out_shape`] gives for them: what the
/// engine's buffers are sized by. The error names the layer.
pub fn check_graph(model: &Model) -> Result<(), (String, ShapeError)> {
    for (i, layer) in model.layers.iter().enumerate() {
        let fail = |e| Err((layer.name.clone(), e));
        let reads = model.reads(i);
        if let Some(Source::Layer(j)) = reads
            .iter()
            .find(|s| matches!(s, Source::Layer(j) if *j >= i))
        {
            return fail(ShapeError::Params(format!(
                "reads layer {j}, not an earlier one"
            )));
        }
        let inputs: Vec<&[usize]> = reads.iter().map(|s| model.shape_of(*s)).collect();
        if layer.in_shape != inputs[0] {
            return fail(ShapeError::Join {
                input: inputs[0].to_vec(),
                other: layer.in_shape.clone(),
            });
        }
        match out_shape(&layer.op, &inputs) {
            Ok(out) if out == layer.out_shape => {}
            Ok(out) => {
                return fail(ShapeError::Params(format!(
                    "outputs {out:?}, recorded as {:?}",
                    layer.out_shape
                )));
            }
            Err(e) => return fail(e),
        }
    }
    Ok(())
}

/// The output height and width of windows sliding over a `[channels, height, width]` input.
fn windows(shape: &[usize], h: Window, w: Window) -> Result<(usize, usize), ShapeError> {
    let axis = |axis, size: usize, win: Window| {
        win.out_size(size)
            .map_err(|error| ShapeError::Window { axis, size, error })
    };
    Ok((axis("height", shape[1], h)?, axis("width", shape[2], w)?))
}

/// Why a window has no output size along an axis.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("kernel ({kernel}), stride ({stride}) and dilation ({dilation}) must be at least 1")]
    Zero {
        kernel: usize,
        stride: usize,
        dilation: usize,
    },
    #[error(
        "a window of kernel {kernel}, dilation {dilation}, padding {padding} over {size} inputs is too large to compute"
    )]
    Overflow {
        kernel: usize,
        dilation: usize,
        padding: usize,
        size: usize,
    },
    #[error(
        "a window spanning {span} (kernel {kernel}, dilation {dilation}) does not fit {size} inputs padded by {padding} on each side"
    )]
    DoesNotFit {
        span: usize,
        kernel: usize,
        dilation: usize,
        size: usize,
        padding: usize,
    },
}

/// A window sliding along one axis: convolution (any dilation) or pooling (dilation 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
}

impl Window {
    pub fn new(kernel: usize, stride: usize, padding: usize, dilation: usize) -> Window {
        Window {
            kernel,
            stride,
            padding,
            dilation,
        }
    }

    /// The output size along an axis of `size` inputs, as PyTorch computes it:
    /// `(size + 2·padding − dilation·(kernel − 1) − 1) / stride + 1`. An error when kernel,
    /// stride or dilation is 0, when the window does not fit the padded input, or when the
    /// padded axis would pass `isize::MAX` (padding = 2⁶² is an error, not an output of
    /// 2⁶³ + 24).
    pub fn out_size(self, size: usize) -> Result<usize, WindowError> {
        let Window {
            kernel,
            stride,
            padding,
            dilation,
        } = self;
        if kernel == 0 || stride == 0 || dilation == 0 {
            return Err(WindowError::Zero {
                kernel,
                stride,
                dilation,
            });
        }
        let overflow = || WindowError::Overflow {
            kernel,
            dilation,
            padding,
            size,
        };
        let span = dilation
            .checked_mul(kernel - 1)
            .and_then(|s| s.checked_add(1))
            .ok_or_else(overflow)?;
        // No index into a buffer may pass isize::MAX (Rust's bound on any allocation), so a
        // padded axis longer than that is refused however the arithmetic would come out.
        let padded = padding
            .checked_mul(2)
            .and_then(|p| p.checked_add(size))
            .filter(|p| isize::try_from(*p).is_ok())
            .ok_or_else(overflow)?;
        if padded < span {
            return Err(WindowError::DoesNotFit {
                span,
                kernel,
                dilation,
                size,
                padding,
            });
        }
        Ok((padded - span) / stride + 1)
    }
}

/// PyTorch's adaptive pooling window for output `i` of `o` over an input of length `l`:
/// `[floor(i·l/o), ceil((i+1)·l/o))`, as `(start, end)`.
pub fn adaptive_window(i: usize, l: usize, o: usize) -> (usize, usize) {
    (i * l / o, ((i + 1) * l).div_ceil(o))
}

/// One output position of a linear interpolation along an axis: `w0 · x[i0] + w1 · x[i1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearTap {
    pub i0: usize,
    pub i1: usize,
    pub w0: f32,
    pub w1: f32,
}

/// The taps of PyTorch's linear interpolation of an axis of length `l` to `l · scale` outputs
/// (`area_pixel_compute_source_index` and its weights, in f32 as PyTorch computes them for f32
/// inputs): output `o` reads source position `(o + 0.5) / scale − 0.5`, at least 0, or
/// `o · (l − 1) / (out − 1)` with `align_corners`; the neighbour past the last input is the
/// last input.
pub fn linear_taps(l: usize, scale: usize, align_corners: bool) -> Vec<LinearTap> {
    let out = l * scale;
    let last = l.saturating_sub(1);
    let ratio = match (align_corners, out > 1) {
        (true, true) => last as f32 / (out - 1) as f32,
        (true, false) => 0.0,
        // PyTorch takes 1 / scale_factor in double, then rounds it to f32.
        (false, _) => (1.0 / scale as f64) as f32,
    };
    (0..out)
        .map(|o| {
            let src = if align_corners {
                ratio * o as f32
            } else {
                // The half-pixel position in double, then f32, as PyTorch.
                ((f64::from(ratio) * (o as f64 + 0.5) - 0.5) as f32).max(0.0)
            };
            let i0 = (src.floor() as usize).min(last);
            let w1 = (src - i0 as f32).clamp(0.0, 1.0);
            LinearTap {
                i0,
                i1: (i0 + 1).min(last),
                w0: 1.0 - w1,
                w1,
            }
        })
        .collect()
}

/// The number of elements of `shape`, or `None` when it overflows.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, d| n.checked_mul(*d))
}

/// Bytes of `elements` f32 values, or `None` when it overflows.
pub fn f32_bytes(elements: usize) -> Option<usize> {
    elements.checked_mul(4)
}

/// Elements of `shape` as u128, saturating: sizes from a file may multiply past any integer,
/// and a saturated figure is still refused by any memory limit.
pub fn elements_u128(shape: &[usize]) -> u128 {
    shape
        .iter()
        .fold(1u128, |n, d| n.saturating_mul(*d as u128))
}

/// Bytes of f32 values one sample needs at its peak while running `layers`: a layer's input
/// and output, plus the unfolded input patches a convolution multiplies.
pub fn sample_activation_bytes(layers: &[Layer]) -> u128 {
    layers
        .iter()
        .map(|l| {
            let mut n = elements_u128(&l.in_shape).saturating_add(elements_u128(&l.out_shape));
            if let Op::Conv2d(p, _) = &l.op {
                let dims = p.weight.dims();
                let per_position = elements_u128(dims.get(1..).unwrap_or(&[]));
                let positions = elements_u128(l.out_shape.get(1..).unwrap_or(&[]));
                n = n.saturating_add(per_position.saturating_mul(positions));
            }
            n.saturating_mul(4)
        })
        .max()
        .unwrap_or(0)
}

/// Bytes of the linear and conv parameters held as f32.
pub fn parameter_bytes(layers: &[Layer]) -> u128 {
    layers
        .iter()
        .map(|l| (l.param_count() as u128).saturating_mul(4))
        .fold(0u128, u128::saturating_add)
}

/// What loading a model and running one sample allocates: its parameters as f32 and one
/// sample's activations. The loader refuses a model whose figure is over the memory limit.
pub fn run_bytes(layers: &[Layer]) -> u128 {
    parameter_bytes(layers).saturating_add(sample_activation_bytes(layers))
}

/// What evaluating `samples` samples of `model` in batches of `batch` allocates, the model
/// included: the prepared inputs, the outputs (the model's and a reference's) and one batch's
/// activations.
pub fn evaluation_bytes(model: &Model, samples: usize, batch: usize) -> u128 {
    let n = samples as u128;
    let inputs = n.saturating_mul(elements_u128(&model.input.shape));
    let outputs = n
        .saturating_mul(model.num_classes() as u128)
        .saturating_mul(2);
    let activations =
        (batch.min(samples) as u128).saturating_mul(sample_activation_bytes(&model.layers));
    run_bytes(&model.layers)
        .saturating_add(inputs.saturating_add(outputs).saturating_mul(4))
        .saturating_add(activations)
}

#[cfg(test)]
mod tests {
    #[test]
    fn linear_taps_follow_pytorch_half_pixel_and_align_corners() {
        let taps = |l, s, a| -> Vec<(usize, usize, f32)> {
            super::linear_taps(l, s, a)
                .iter()
                .map(|t| (t.i0, t.i1, t.w1))
                .collect()
        };
        // Half-pixel: sources −0.25 (clamped to 0), 0.25, 0.75, 1.25 (past the last input).
        assert_eq!(
            taps(2, 2, false),
            [(0, 1, 0.0), (0, 1, 0.25), (0, 1, 0.75), (1, 1, 0.25)]
        );
        // Corners aligned: sources 0, 1/3, 2/3, 1.
        let a = taps(2, 2, true);
        assert_eq!((a[0], a[3]), ((0, 1, 0.0), (1, 1, 0.0)));
        assert!((a[1].2 - 1.0 / 3.0).abs() < 1e-7 && (a[2].2 - 2.0 / 3.0).abs() < 1e-7);
        assert_eq!(taps(1, 3, true), [(0, 0, 0.0); 3]);
    }

    use super::*;

    #[test]
    fn matches_pytorch_on_lenet() {
        assert_eq!(Window::new(5, 1, 0, 1).out_size(28), Ok(24));
        assert_eq!(Window::new(2, 2, 0, 1).out_size(24), Ok(12));
        assert_eq!(Window::new(3, 2, 1, 1).out_size(7), Ok(4));
        assert_eq!(Window::new(3, 1, 0, 2).out_size(7), Ok(3));
    }

    fn params(dims: &[usize]) -> crate::model::Params {
        let weight =
            candle_core::Tensor::zeros((), candle_core::DType::F32, &candle_core::Device::Cpu)
                .and_then(|z| z.broadcast_as(dims))
                .unwrap();
        crate::model::Params {
            weight,
            bias: None,
            weight_name: "w".into(),
            bias_name: "b".into(),
            folded: None,
        }
    }

    #[test]
    fn out_shape_follows_each_op_and_names_what_does_not_fit() {
        use crate::model::{Conv2dGeometry, Pool2d};
        let geo = |groups| Conv2dGeometry {
            stride: (2, 1),
            padding: (1, 0),
            dilation: (1, 1),
            groups,
        };
        let conv = Op::Conv2d(params(&[8, 2, 3, 3]), geo(2));
        assert_eq!(out_shape(&conv, &[&[4, 9, 9]]), Ok(vec![8, 5, 7]));
        let e = out_shape(&conv, &[&[3, 9, 9]]).unwrap_err();
        assert!(
            e.to_string().contains("groups = 2 must divide the 3"),
            "{e}"
        );
        let e = out_shape(&conv, &[&[4, 9, 2]]).unwrap_err();
        assert!(e.to_string().starts_with("width 2:"), "{e}");
        let linear = Op::Linear(params(&[3, 10]));
        assert_eq!(out_shape(&linear, &[&[10]]), Ok(vec![3]));
        let e = out_shape(&linear, &[&[2, 5, 1]]).unwrap_err();
        assert!(e.to_string().contains("add a flatten layer"), "{e}");
        // Each token of a [tokens, d] sample.
        assert_eq!(out_shape(&linear, &[&[4, 10]]), Ok(vec![4, 3]));
        assert!(out_shape(&linear, &[&[2, 5]]).is_err());
        assert!(out_shape(&linear, &[&[11]]).is_err());
        let pool = Pool2d {
            kernel: (2, 2),
            stride: (2, 2),
            padding: (1, 1),
        };
        assert_eq!(
            out_shape(&Op::MaxPool2d(pool), &[&[3, 5, 6]]),
            Ok(vec![3, 3, 4])
        );
        let wide = Pool2d {
            padding: (2, 0),
            ..pool
        };
        assert!(out_shape(&Op::AvgPool2d(wide), &[&[3, 5, 6]]).is_err());
        assert_eq!(out_shape(&Op::Flatten, &[&[3, 5, 6]]), Ok(vec![90]));
        assert_eq!(out_shape(&Op::GlobalAvgPool, &[&[3, 5, 6]]), Ok(vec![3]));
        let adaptive = Op::AdaptiveAvgPool((3, 1));
        assert_eq!(out_shape(&adaptive, &[&[2, 7, 5]]), Ok(vec![2, 3, 1]));
        assert!(matches!(
            out_shape(&adaptive, &[&[10]]),
            Err(ShapeError::Rank {
                op: "adaptive_avgpool",
                ..
            })
        ));
        let up = Op::Upsample {
            scale: (2, 3),
            mode: crate::model::UpsampleMode::Nearest,
            align_corners: false,
        };
        assert_eq!(out_shape(&up, &[&[2, 4, 5]]), Ok(vec![2, 8, 15]));
        assert!(matches!(
            out_shape(&up, &[&[10]]),
            Err(ShapeError::Rank { op: "upsample", .. })
        ));
        assert!(matches!(
            out_shape(&up, &[&[2, usize::MAX / 2, 5]]),
            Err(ShapeError::TooLarge(_))
        ));
        let add = Op::Add {
            from: Source::Layer(0),
        };
        assert_eq!(out_shape(&add, &[&[3, 4], &[3, 4]]), Ok(vec![3, 4]));
        let mul = Op::Mul {
            from: Source::Layer(0),
        };
        assert_eq!(out_shape(&mul, &[&[3, 4, 5], &[3]]), Ok(vec![3, 4, 5]));
        assert_eq!(
            out_shape(&mul, &[&[3, 1, 1], &[3, 4, 5]]),
            Ok(vec![3, 4, 5])
        );
        assert!(out_shape(&mul, &[&[3, 4, 5], &[4]]).is_err());
        assert!(out_shape(&mul, &[&[3, 4, 5], &[3, 4, 1]]).is_err());
        let cat = Op::Concat {
            from: vec![Source::Layer(0), Source::Input],
        };
        assert_eq!(
            out_shape(&cat, &[&[3, 4, 5], &[2, 4, 5], &[1, 4, 5]]),
            Ok(vec![6, 4, 5])
        );
        assert!(matches!(
            out_shape(&cat, &[&[3, 4, 5], &[2, 4, 5], &[1, 5, 4]]),
            Err(ShapeError::Join { .. })
        ));
        assert!(matches!(
            out_shape(&add, &[&[3, 4], &[4, 3]]),
            Err(ShapeError::Join { .. })
        ));
        assert!(matches!(
            out_shape(&add, &[&[3, 4]]),
            Err(ShapeError::Inputs { .. })
        ));
    }

    #[test]
    fn refuses_what_does_not_fit_or_overflows() {
        assert!(Window::new(5, 1, 0, 1).out_size(3).is_err());
        assert!(Window::new(0, 1, 0, 1).out_size(3).is_err());
        assert!(Window::new(3, 0, 0, 1).out_size(3).is_err());
        assert!(Window::new(3, 1, 0, 0).out_size(3).is_err());
        let e = Window::new(3, 1, 1 << 62, 1).out_size(28).unwrap_err();
        assert!(matches!(e, WindowError::Overflow { .. }), "{e}");
        assert!(e.to_string().contains("too large"), "{e}");
        assert!(Window::new(usize::MAX, 1, 0, 2).out_size(28).is_err());
        assert_eq!(element_count(&[1 << 40, 1 << 40]), None);
        assert_eq!(element_count(&[3, 4]), Some(12));
    }
}
