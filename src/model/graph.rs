//! The loaded layer graph: a model's layers in execution order, each an operation resolved from
//! its description ([`OpSpec`]) with its tensors, and the shapes that flow between them.

use std::path::PathBuf;

use candle_core::Tensor;

use super::spec::{
    Activation, ArchSpec, InputSpec, LayerSpec, MODEL_INPUT, OpSpec, Pair, UpsampleMode,
};

/// A loaded model: layers in execution order with their weights (f32, CPU) and the shapes that
/// flow between them, for one sample.
#[derive(Debug, Clone)]
pub struct Model {
    /// The architecture as described (before batchnorm folding); written back on export.
    pub spec: ArchSpec,
    pub input: InputSpec,
    pub layers: Vec<Layer>,
    /// Where it came from, for messages.
    pub source: PathBuf,
}

/// A value a layer reads: the model's (scaled) input or an earlier layer's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    Input,
    /// The output of layer `i` of `Model::layers`.
    Layer(usize),
}

#[derive(Debug, Clone)]
pub struct Layer {
    pub name: String,
    pub op: Op,
    /// Where the layer's input comes from when it is not the previous layer's output (the
    /// model input for the first layer); `None` for a chain.
    pub input: Option<Source>,
    /// One sample's shape into and out of the layer.
    pub in_shape: Vec<usize>,
    pub out_shape: Vec<usize>,
    /// Bytes of this layer's tensors as stored in the source file (batchnorm included when
    /// folded into it).
    pub stored_bytes: usize,
}

/// A linear or conv layer's parameters. `weight` is `[out, in]` for linear,
/// `[out, in/groups, kh, kw]` for conv2d and `[out, in/groups, k]` for conv1d, as in PyTorch.
#[derive(Debug, Clone)]
pub struct Params {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// The state_dict names, used when writing dense weights back.
    pub weight_name: String,
    pub bias_name: String,
    /// The batchnorm folded into these weights, kept so that pruning can rank the layer's own
    /// weights (as PyTorch does) and a dense file can be written as the original module.
    pub folded: Option<FoldedNorm>,
}

/// A batchnorm folded into the linear/conv before it: `weight' = weight × scale` per output
/// row, `bias' = bias × scale + beta − mean × scale`, with `scale = gamma / √(var + eps)`.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldedNorm {
    /// Per output row: `gamma / √(running_var + eps)`, as the fold used it.
    pub scale: Vec<f32>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
    /// The state_dict names of weight (gamma), bias (beta), running_mean and running_var.
    pub names: [String; 4],
    /// Whether the layer had a bias of its own before the fold (PyTorch's `bias=True`).
    pub own_bias: bool,
}

impl FoldedNorm {
    /// The batchnorm of the output rows `rows` (in that order), after structured pruning.
    pub fn keep(&self, rows: &[usize]) -> FoldedNorm {
        let pick = |v: &[f32]| rows.iter().map(|&r| v[r]).collect();
        FoldedNorm {
            scale: pick(&self.scale),
            gamma: pick(&self.gamma),
            beta: pick(&self.beta),
            running_mean: pick(&self.running_mean),
            running_var: pick(&self.running_var),
            names: self.names.clone(),
            own_bias: self.own_bias,
        }
    }

    /// The layer's own weights from the folded ones (`cols` values per output row): each row
    /// divided by its scale, in f64 so that unfolding returns the loaded weights. A row whose
    /// scale is 0 lost its weights in the fold (its output is the constant beta): it reads 0.
    pub fn own_weights(&self, folded: &[f32], cols: usize) -> Vec<f32> {
        folded
            .chunks(cols.max(1))
            .zip(&self.scale)
            .flat_map(|(row, &s)| {
                row.iter().map(move |&w| {
                    if s == 0.0 {
                        0.0
                    } else {
                        (w as f64 / s as f64) as f32
                    }
                })
            })
            .collect()
    }

    /// The module before the fold, from folded weights and bias: its own weights, its own bias
    /// (`None` when it had none) and the batchnorm's beta. gamma and the running statistics are
    /// the loaded ones. Where the layer had a bias, `bias = (bias' − beta) / scale + mean`;
    /// otherwise the folded bias is carried by beta: `beta = bias' + mean × scale`.
    pub fn unfold(
        &self,
        weight: &[f32],
        bias: Option<&[f32]>,
        cols: usize,
    ) -> (Vec<f32>, Option<Vec<f32>>, Vec<f32>) {
        let w = self.own_weights(weight, cols);
        let rows = self.scale.len();
        let folded_bias = |r: usize| bias.map_or(0.0, |b| b[r]) as f64;
        if !self.own_bias {
            let beta = (0..rows)
                .map(|r| {
                    (folded_bias(r) + self.running_mean[r] as f64 * self.scale[r] as f64) as f32
                })
                .collect();
            return (w, None, beta);
        }
        let mut beta = self.beta.clone();
        let own = (0..rows)
            .map(|r| {
                let s = self.scale[r] as f64;
                if s == 0.0 {
                    // The output is beta alone: carry the folded bias there.
                    beta[r] = folded_bias(r) as f32;
                    0.0
                } else {
                    ((folded_bias(r) - self.beta[r] as f64) / s + self.running_mean[r] as f64)
                        as f32
                }
            })
            .collect();
        (w, Some(own), beta)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

/// A layer normalization's values: one weight and bias per value of a sample's last dimension
/// (ones and zeros without elementwise affine).
#[derive(Debug, Clone)]
pub struct NormParams {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
    /// The state_dict names; `None` without elementwise affine.
    pub weight_name: Option<String>,
    pub bias_name: Option<String>,
}

/// How a learned tensor joins a layer's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamJoin {
    Add,
    Mul,
    /// The tensor first, then the input, along a sample's first dimension.
    Concat,
}

/// A learned tensor a join reads as its second operand (a ViT's class token or position
/// embedding).
#[derive(Debug, Clone)]
pub struct ParamValue {
    /// As the state_dict holds it.
    pub stored: Tensor,
    /// Its values in one sample's shape: the input's for add and mul (broadcast), `[p, …]` with
    /// the input's other dimensions for concat.
    pub value: Tensor,
    /// The state_dict name.
    pub name: String,
}

impl ParamValue {
    /// `stored` read against an input of one sample's shape `x`, as PyTorch broadcasts it over
    /// a batch: a leading dimension of 1 beyond the sample's rank is the batch's; add and mul
    /// broadcast the rest against the input's last dimensions (each equal or 1), concat takes
    /// it whole with the input's dimensions after the first.
    pub fn new(join: ParamJoin, stored: Tensor, name: &str, x: &[usize]) -> Result<Self, String> {
        let s = stored.dims().to_vec();
        let sample = match &s[..] {
            [1, rest @ ..] if rest.len() == x.len() => rest.to_vec(),
            _ => s.clone(),
        };
        let fail = || {
            Err(format!(
                "param \"{name}\" of shape {s:?} does not {} the input's {x:?}",
                if join == ParamJoin::Concat {
                    "join along the first dimension of"
                } else {
                    "broadcast to"
                }
            ))
        };
        let value = match join {
            ParamJoin::Concat => {
                if sample.len() != x.len() || sample.get(1..) != x.get(1..) || sample.is_empty() {
                    return fail();
                }
                stored.reshape(sample)
            }
            ParamJoin::Add | ParamJoin::Mul => {
                let off = match x.len().checked_sub(sample.len()) {
                    Some(off) => off,
                    None => return fail(),
                };
                if sample
                    .iter()
                    .zip(&x[off..])
                    .any(|(p, d)| *p != *d && *p != 1)
                {
                    return fail();
                }
                stored
                    .reshape(sample)
                    .and_then(|t| t.broadcast_as(x))
                    .and_then(|t| t.contiguous())
            }
        };
        Ok(ParamValue {
            stored,
            value: value.map_err(|e| e.to_string())?,
            name: name.to_string(),
        })
    }
}

/// A dimension in PyTorch's numbering on a batch (0 the batch, 1 a sample's first, negative
/// from the end) as an index into one sample's shape of `rank` dimensions.
fn sample_dim(field: &'static str, d: i64, rank: usize) -> Result<usize, OpError> {
    let r = rank as i64;
    let t = if d < 0 { d + r + 1 } else { d };
    if t < 1 || t > r {
        return Err(OpError::Dim {
            field,
            dim: d,
            rank,
        });
    }
    Ok((t - 1) as usize)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2d {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
}

/// An operation as loaded: [`OpSpec`] with its tensors read, its defaults applied and the layers
/// it reads resolved to indices.
#[derive(Debug, Clone)]
pub enum Op {
    /// `x · wᵀ + b` over a sample's last dimension: a `[features]` vector, or each token of a
    /// `[tokens, d]` sample.
    Linear(Params),
    /// A 2-D convolution over `[C, H, W]`, or a 1-D one over `[C, L]` held as a convolution of
    /// height 1: its weight `[out, in/groups, k]` (3-D, as PyTorch's `nn.Conv1d`), its
    /// geometry's height stride and dilation 1 and height padding 0 (`Params::is_conv1d`).
    Conv2d(Params, Conv2dGeometry),
    /// Row `id` of the weight `[num_embeddings, embedding_dim]` for each id of a `[tokens]`
    /// sample (`Layer::token_ids`); no bias.
    Embedding(Params),
    /// Normalization over a sample's last dimension.
    LayerNorm(NormParams),
    /// A batchnorm that could not be folded (no linear/conv right before it): `x × scale + shift`
    /// per channel (dimension 0 of one sample).
    ChannelAffine {
        scale: Tensor,
        shift: Tensor,
    },
    Activation(Activation),
    MaxPool2d(Pool2d),
    AvgPool2d(Pool2d),
    GlobalAvgPool,
    /// Average pooling to `(oh, ow)` outputs (PyTorch's adaptive windows).
    AdaptiveAvgPool((usize, usize)),
    /// Upsampling by integer factors `(sh, sw)`.
    Upsample {
        scale: (usize, usize),
        mode: UpsampleMode,
        /// Bilinear only: the corner values of input and output aligned.
        align_corners: bool,
    },
    Flatten,
    /// One sample's values kept in order, shaped as given (`reshape`, `flatten` of some
    /// dimensions).
    Reshape(Vec<usize>),
    /// Two dimensions of a sample swapped.
    Transpose(usize, usize),
    /// Index `index` of a sample's dimension `dim`, the dimension dropped.
    Select {
        dim: usize,
        index: usize,
    },
    /// The mean over a sample's dimension, dropped.
    Mean(usize),
    /// Self-attention of `heads` heads over `[tokens, 3·d]` queries, keys and values.
    Attention {
        heads: usize,
    },
    /// The input joined with a learned tensor.
    Param {
        join: ParamJoin,
        param: ParamValue,
    },
    Dropout(f64),
    Softmax,
    /// The input plus the value `from`, a `[C]` or `[C, 1, 1]` operand broadcast per channel.
    Add {
        from: Source,
    },
    /// The input times the value `from`, broadcast as `Add`.
    Mul {
        from: Source,
    },
    /// The input then each value of `from`, joined along a sample's first dimension.
    Concat {
        from: Vec<Source>,
    },
}

/// Why an op cannot be built from its spec alone ([`Op::without_params`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OpError {
    #[error("slope = {0} must be finite")]
    Slope(f64),
    #[error("{field} = {value:?} must be positive in both dimensions")]
    Zero {
        field: &'static str,
        value: (usize, usize),
    },
    #[error("p = {0} must be in [0, 1)")]
    DropoutP(f64),
    #[error(
        "{field} = {dim} is not a dimension of a sample of rank {rank} (PyTorch's numbering: 0 is the batch, 1 a sample's first, negative from the end)"
    )]
    Dim {
        field: &'static str,
        dim: i64,
        rank: usize,
    },
    #[error("{0}")]
    Shape(String),
    /// A linear, conv, batchnorm or add layer: loading resolves it with its tensors and inputs.
    #[error("{0} needs its tensors or inputs resolved")]
    NeedsParams(&'static str),
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Linear(_) => "linear",
            Op::Conv2d(p, _) if p.is_conv1d() => "conv1d",
            Op::Conv2d(..) => "conv2d",
            Op::Embedding(_) => "embedding",
            Op::LayerNorm(_) => "layer_norm",
            Op::ChannelAffine { .. } => "batchnorm",
            Op::Activation(a) => a.name(),
            Op::MaxPool2d(_) => "maxpool2d",
            Op::AvgPool2d(_) => "avgpool2d",
            Op::GlobalAvgPool => "global_avgpool",
            Op::AdaptiveAvgPool(_) => "adaptive_avgpool",
            Op::Upsample { .. } => "upsample",
            Op::Flatten => "flatten",
            Op::Reshape(_) => "reshape",
            Op::Transpose(..) => "transpose",
            Op::Select { .. } => "select",
            Op::Mean(_) => "mean",
            Op::Attention { .. } => "attention",
            Op::Param { join, .. } => match join {
                ParamJoin::Add => "add",
                ParamJoin::Mul => "mul",
                ParamJoin::Concat => "concat",
            },
            Op::Dropout(_) => "dropout",
            Op::Softmax => "softmax",
            Op::Add { .. } => "add",
            Op::Mul { .. } => "mul",
            Op::Concat { .. } => "concat",
        }
    }

    /// The values the op reads besides its input (a join's other operands).
    pub fn joined(&self) -> &[Source] {
        match self {
            Op::Add { from } | Op::Mul { from } => std::slice::from_ref(from),
            Op::Concat { from } => from,
            _ => &[],
        }
    }

    /// Whether the op joins several values (add, mul, concat).
    pub fn is_join(&self) -> bool {
        matches!(self, Op::Add { .. } | Op::Mul { .. } | Op::Concat { .. })
    }

    /// The op `spec` describes when it needs neither tensors nor other layers' outputs (an
    /// element-wise function, pooling, flatten, dropout, softmax); an error for the others,
    /// which loading resolves with their tensors and inputs.
    pub fn without_params(spec: &OpSpec) -> Result<Op, OpError> {
        if let Some(a) = spec.activation() {
            if let Activation::LeakyRelu(slope) = a
                && !slope.is_finite()
            {
                return Err(OpError::Slope(slope));
            }
            return Ok(Op::Activation(a));
        }
        Ok(match spec {
            OpSpec::Maxpool2d {
                kernel,
                stride,
                padding,
            }
            | OpSpec::Avgpool2d {
                kernel,
                stride,
                padding,
            } => {
                let pool = Pool2d {
                    kernel: kernel.hw(),
                    stride: stride.unwrap_or(*kernel).hw(),
                    padding: padding.hw(),
                };
                if matches!(spec, OpSpec::Maxpool2d { .. }) {
                    Op::MaxPool2d(pool)
                } else {
                    Op::AvgPool2d(pool)
                }
            }
            OpSpec::GlobalAvgpool {} => Op::GlobalAvgPool,
            OpSpec::AdaptiveAvgpool { size } => {
                let size = size.hw();
                if size.0 == 0 || size.1 == 0 {
                    return Err(OpError::Zero {
                        field: "size",
                        value: size,
                    });
                }
                Op::AdaptiveAvgPool(size)
            }
            OpSpec::Upsample {
                scale,
                mode,
                align_corners,
            } => {
                let scale = scale.hw();
                if scale.0 == 0 || scale.1 == 0 {
                    return Err(OpError::Zero {
                        field: "scale",
                        value: scale,
                    });
                }
                if *align_corners && *mode == UpsampleMode::Nearest {
                    return Err(OpError::Shape(
                        "align_corners = true needs mode = \"bilinear\" (as in PyTorch)".into(),
                    ));
                }
                Op::Upsample {
                    scale,
                    mode: *mode,
                    align_corners: *align_corners,
                }
            }
            OpSpec::Flatten {
                start_dim: None | Some(1),
                end_dim: None | Some(-1),
            } => Op::Flatten,
            OpSpec::Dropout { p } => {
                let p = p.unwrap_or(0.5);
                if !(0.0..1.0).contains(&p) {
                    return Err(OpError::DropoutP(p));
                }
                Op::Dropout(p)
            }
            OpSpec::Softmax {} => Op::Softmax,
            other => return Err(OpError::NeedsParams(other.op_name())),
        })
    }

    /// The op `spec` describes for an input of one sample's shape `x`, when it needs neither
    /// tensors nor other layers' outputs: the reshapes, selections and attention, whose
    /// dimensions depend on the input's, then every op [`Op::without_params`] builds.
    pub fn for_input(spec: &OpSpec, x: &[usize]) -> Result<Op, OpError> {
        let rank = x.len();
        Ok(match spec {
            OpSpec::Flatten { start_dim, end_dim } => {
                let start = sample_dim("start_dim", start_dim.unwrap_or(1), rank)?;
                let end = sample_dim("end_dim", end_dim.unwrap_or(-1), rank)?;
                if start > end {
                    return Err(OpError::Shape(format!(
                        "start_dim comes after end_dim for an input of shape {x:?}"
                    )));
                }
                if start == 0 && end + 1 == rank {
                    return Ok(Op::Flatten);
                }
                let mut shape = x[..start].to_vec();
                shape.push(x[start..=end].iter().product());
                shape.extend_from_slice(&x[end + 1..]);
                Op::Reshape(shape)
            }
            OpSpec::Reshape { shape } => {
                let len: usize = x.iter().product();
                let unknown = shape.iter().filter(|d| **d == -1).count();
                let known: Option<usize> = shape
                    .iter()
                    .filter(|d| **d != -1)
                    .map(|d| usize::try_from(*d).ok().filter(|d| *d > 0))
                    .product();
                let bad = || {
                    OpError::Shape(format!(
                        "shape = {shape:?} does not hold the {len} values of an input of shape {x:?} (positive sizes, at most one −1)"
                    ))
                };
                let known = known.filter(|k| unknown <= 1 && *k > 0).ok_or_else(bad)?;
                if !len.is_multiple_of(known) || (unknown == 0 && known != len) {
                    return Err(bad());
                }
                Op::Reshape(
                    shape
                        .iter()
                        .map(|d| if *d == -1 { len / known } else { *d as usize })
                        .collect(),
                )
            }
            OpSpec::Transpose { dims } => {
                let a = sample_dim("dims", dims[0], rank)?;
                let b = sample_dim("dims", dims[1], rank)?;
                Op::Transpose(a.min(b), a.max(b))
            }
            OpSpec::Select { dim, index } => Op::Select {
                dim: sample_dim("dim", *dim, rank)?,
                index: *index,
            },
            OpSpec::Mean { dim } => Op::Mean(sample_dim("dim", *dim, rank)?),
            OpSpec::Attention { heads } => {
                if *heads == 0 {
                    return Err(OpError::Shape("heads = 0 must be at least 1".into()));
                }
                Op::Attention { heads: *heads }
            }
            other => Op::without_params(other)?,
        })
    }

    /// The linear, conv or embedding op `spec` describes, holding `params` (a conv keeps its
    /// geometry; every other spec with tensors is a linear layer).
    pub fn with_params(spec: &OpSpec, params: Params) -> Op {
        match spec {
            OpSpec::Embedding { .. } => Op::Embedding(params),
            OpSpec::Conv1d {
                stride,
                padding,
                dilation,
                groups,
                ..
            } => Op::Conv2d(
                params,
                Conv2dGeometry {
                    stride: (1, *stride),
                    padding: (0, *padding),
                    dilation: (1, *dilation),
                    groups: *groups,
                },
            ),
            OpSpec::Conv2d {
                stride,
                padding,
                dilation,
                groups,
                ..
            } => Op::Conv2d(
                params,
                Conv2dGeometry {
                    stride: stride.hw(),
                    padding: padding.hw(),
                    dilation: dilation.hw(),
                    groups: *groups,
                },
            ),
            _ => Op::Linear(params),
        }
    }

    /// Linear, conv and embedding layers: the ones compression works on.
    pub fn params(&self) -> Option<&Params> {
        match self {
            Op::Linear(p) | Op::Conv2d(p, _) | Op::Embedding(p) => Some(p),
            _ => None,
        }
    }

    pub fn params_mut(&mut self) -> Option<&mut Params> {
        match self {
            Op::Linear(p) | Op::Conv2d(p, _) | Op::Embedding(p) => Some(p),
            _ => None,
        }
    }
}

impl Params {
    /// Whether the weight is a 1-D convolution's `[out, in/groups, k]`.
    pub fn is_conv1d(&self) -> bool {
        self.weight.rank() == 3
    }
}

impl Layer {
    pub fn params(&self) -> Option<&Params> {
        self.op.params()
    }

    /// How many times one sample applies each weight of a linear/conv layer: a convolution's
    /// output positions, a linear layer's tokens (1 for a vector).
    pub fn positions(&self) -> usize {
        let rest = |s: &[usize]| s.iter().product::<usize>();
        match &self.op {
            Op::Conv2d(..) => rest(self.out_shape.get(1..).unwrap_or(&[])),
            Op::Linear(_) => rest(
                self.in_shape
                    .get(..self.in_shape.len().saturating_sub(1))
                    .unwrap_or(&[]),
            ),
            _ => 1,
        }
    }

    /// The token ids `values` hold (an embedding's input: one sample's or a batch's), or what
    /// is wrong with the first that is not a whole number below the table's rows.
    pub fn token_ids(&self, values: &[f32]) -> Result<Vec<u32>, String> {
        let rows = self.params().map_or(0, |p| p.weight.dims()[0]);
        let tokens = self.in_shape.iter().product::<usize>().max(1);
        values
            .iter()
            .enumerate()
            .map(|(k, &v)| {
                if v.fract() == 0.0 && v >= 0.0 && (v as usize) < rows {
                    Ok(v as u32)
                } else {
                    Err(format!(
                        "token id {v} (sample {}, token {}) is not a whole number in [0, {rows})",
                        k / tokens,
                        k % tokens
                    ))
                }
            })
            .collect()
    }

    /// Number of parameters (weights and biases) the layer computes with.
    pub fn param_count(&self) -> usize {
        match &self.op {
            Op::Linear(p) | Op::Conv2d(p, _) | Op::Embedding(p) => {
                p.weight.elem_count() + p.bias.as_ref().map_or(0, |b| b.elem_count())
            }
            Op::ChannelAffine { scale, shift } => scale.elem_count() + shift.elem_count(),
            Op::Param { param, .. } => param.stored.elem_count(),
            Op::LayerNorm(n) => {
                usize::from(n.weight_name.is_some()) * n.weight.elem_count()
                    + usize::from(n.bias_name.is_some()) * n.bias.elem_count()
            }
            _ => 0,
        }
    }

    /// Multiply-accumulates for one sample.
    pub fn macs(&self) -> usize {
        let out: usize = self.out_shape.iter().product();
        match &self.op {
            Op::Linear(p) => p.weight.elem_count() * self.positions(),
            // Queries times keys, then weights times values: 2 · tokens² · d.
            Op::Attention { .. } => match self.out_shape[..] {
                [t, d] => 2 * t * t * d,
                _ => 0,
            },
            Op::Conv2d(p, _) => {
                // Each output value takes (in/groups × kh × kw) MACs.
                let dims = p.weight.dims();
                out * dims[1..].iter().product::<usize>()
            }
            _ => 0,
        }
    }
}

impl Model {
    /// Number of classes: the size of the (1-D) output.
    pub fn num_classes(&self) -> usize {
        self.output_shape().iter().product()
    }

    pub fn output_shape(&self) -> &[usize] {
        self.layers
            .last()
            .map_or(&self.input.shape[..], |l| &l.out_shape[..])
    }

    /// Values in one input sample.
    pub fn input_len(&self) -> usize {
        self.input.shape.iter().product()
    }

    /// `layer`'s op in the schema's words, naming tensors and layers as loading named them
    /// (the inverse of loading, with its defaults written out). An unfolded batchnorm keeps its
    /// description's tensor names (its values are `scale` and `shift` by now).
    pub fn op_spec(&self, layer: &Layer) -> OpSpec {
        let pair = |(h, w): (usize, usize)| Pair::HW([h, w]);
        match &layer.op {
            Op::Linear(p) => OpSpec::Linear {
                weight: p.weight_name.clone(),
                bias: p.bias.as_ref().map(|_| p.bias_name.clone()),
                out_features: p.weight.dims().first().copied(),
            },
            Op::Embedding(p) => OpSpec::Embedding {
                weight: p.weight_name.clone(),
                num_embeddings: p.weight.dims().first().copied(),
                embedding_dim: p.weight.dims().get(1).copied(),
            },
            Op::Conv2d(p, g) if p.is_conv1d() => {
                let d = p.weight.dims();
                OpSpec::Conv1d {
                    weight: p.weight_name.clone(),
                    bias: p.bias.as_ref().map(|_| p.bias_name.clone()),
                    out_channels: d.first().copied(),
                    kernel: d.get(2).copied(),
                    stride: g.stride.1,
                    padding: g.padding.1,
                    dilation: g.dilation.1,
                    groups: g.groups,
                }
            }
            Op::Conv2d(p, g) => {
                let d = p.weight.dims();
                OpSpec::Conv2d {
                    weight: p.weight_name.clone(),
                    bias: p.bias.as_ref().map(|_| p.bias_name.clone()),
                    out_channels: d.first().copied(),
                    kernel: (d.len() == 4).then(|| Pair::HW([d[2], d[3]])),
                    stride: pair(g.stride),
                    padding: pair(g.padding),
                    dilation: pair(g.dilation),
                    groups: g.groups,
                }
            }
            Op::ChannelAffine { .. } => match self.spec_of(&layer.name) {
                Some(bn @ OpSpec::Batchnorm { .. }) => bn.clone(),
                _ => OpSpec::batchnorm(&layer.name),
            },
            Op::LayerNorm(n) => OpSpec::LayerNorm {
                weight: n.weight_name.clone(),
                bias: n.bias_name.clone(),
                eps: n.eps,
            },
            Op::Activation(a) => OpSpec::from(*a),
            Op::MaxPool2d(p) | Op::AvgPool2d(p) => {
                let (kernel, stride, padding) =
                    (pair(p.kernel), Some(pair(p.stride)), pair(p.padding));
                if matches!(layer.op, Op::MaxPool2d(_)) {
                    OpSpec::Maxpool2d {
                        kernel,
                        stride,
                        padding,
                    }
                } else {
                    OpSpec::Avgpool2d {
                        kernel,
                        stride,
                        padding,
                    }
                }
            }
            Op::GlobalAvgPool => OpSpec::GlobalAvgpool {},
            Op::AdaptiveAvgPool(size) => OpSpec::AdaptiveAvgpool { size: pair(*size) },
            Op::Upsample {
                scale,
                mode,
                align_corners,
            } => OpSpec::Upsample {
                scale: pair(*scale),
                mode: *mode,
                align_corners: *align_corners,
            },
            Op::Flatten => OpSpec::Flatten {
                start_dim: None,
                end_dim: None,
            },
            Op::Reshape(shape) => OpSpec::Reshape {
                shape: shape.iter().map(|d| *d as i64).collect(),
            },
            Op::Transpose(a, b) => OpSpec::Transpose {
                dims: [*a as i64 + 1, *b as i64 + 1],
            },
            Op::Select { dim, index } => OpSpec::Select {
                dim: *dim as i64 + 1,
                index: *index,
            },
            Op::Mean(dim) => OpSpec::Mean {
                dim: *dim as i64 + 1,
            },
            Op::Attention { heads } => OpSpec::Attention { heads: *heads },
            Op::Param { join, param } => {
                let param = Some(param.name.clone());
                match join {
                    ParamJoin::Add => OpSpec::Add { from: None, param },
                    ParamJoin::Mul => OpSpec::Mul { from: None, param },
                    ParamJoin::Concat => OpSpec::Concat { param },
                }
            }
            Op::Dropout(p) => OpSpec::Dropout { p: Some(*p) },
            Op::Softmax => OpSpec::Softmax {},
            Op::Add { from } => OpSpec::Add {
                from: Some(self.source_name(*from)),
                param: None,
            },
            Op::Mul { from } => OpSpec::Mul {
                from: Some(self.source_name(*from)),
                param: None,
            },
            Op::Concat { .. } => OpSpec::Concat { param: None },
        }
    }

    /// Layer `i` in the schema's words: its name, the inputs it names and its op (a concat
    /// names all its inputs; `add` and `mul` name the second in `from`).
    pub fn layer_spec(&self, i: usize) -> LayerSpec {
        let layer = &self.layers[i];
        let mut inputs: Vec<String> = layer.input.iter().map(|s| self.source_name(*s)).collect();
        if let Op::Concat { from } = &layer.op {
            if inputs.is_empty() {
                inputs.push(self.source_name(self.input_of(i)));
            }
            inputs.extend(from.iter().map(|s| self.source_name(*s)));
        }
        LayerSpec {
            name: Some(layer.name.clone()),
            inputs,
            op: self.op_spec(layer),
        }
    }

    /// The name a layer reads `source` by: [`MODEL_INPUT`] or the layer's name.
    pub fn source_name(&self, source: Source) -> String {
        match source {
            Source::Input => MODEL_INPUT.to_string(),
            Source::Layer(j) => self
                .layers
                .get(j)
                .map_or_else(String::new, |l| l.name.clone()),
        }
    }

    /// Where layer `i`'s input comes from: the one it names, else the previous layer (the
    /// model input for the first).
    pub fn input_of(&self, i: usize) -> Source {
        self.layers[i]
            .input
            .unwrap_or(i.checked_sub(1).map_or(Source::Input, Source::Layer))
    }

    /// Every value layer `i` reads: its input, then a join's other operands.
    pub fn reads(&self, i: usize) -> Vec<Source> {
        let mut v = vec![self.input_of(i)];
        v.extend_from_slice(self.layers[i].op.joined());
        v
    }

    /// One sample's shape of `source`.
    pub fn shape_of(&self, source: Source) -> &[usize] {
        match source {
            Source::Input => &self.input.shape,
            Source::Layer(j) => &self.layers[j].out_shape,
        }
    }

    /// Values a run must keep beyond the next layer: `[0]` is the model input, `[j + 1]`
    /// layer `j`'s output; `true` where a layer reads it other than as the next layer's input.
    pub fn kept_values(&self) -> Vec<bool> {
        let mut keep = vec![false; self.layers.len() + 1];
        let slot = |s: Source| match s {
            Source::Input => 0,
            Source::Layer(j) => j + 1,
        };
        for l in &self.layers {
            if let Some(s) = l.input {
                keep[slot(s)] = true;
            }
            for s in l.op.joined() {
                keep[slot(*s)] = true;
            }
        }
        keep
    }

    /// Whether every layer reads only the previous one's output (no branch, no join).
    pub fn is_chain(&self) -> bool {
        self.layers
            .iter()
            .all(|l| l.input.is_none() && !l.op.is_join())
    }

    /// The layers that read layer `j`'s output, in order.
    pub fn consumers(&self, j: usize) -> Vec<usize> {
        (0..self.layers.len())
            .filter(|&i| self.reads(i).contains(&Source::Layer(j)))
            .collect()
    }

    /// The description of the layer named `name` in the architecture the model was loaded from.
    pub fn spec_of(&self, name: &str) -> Option<&OpSpec> {
        self.spec
            .layers
            .iter()
            .enumerate()
            .find(|(i, l)| l.display_name(*i) == name)
            .map(|(_, l)| &l.op)
    }

    /// Checks the token ids of every embedding layer that reads the model input in `inputs`
    /// (samples, scaled): the layer's name and the first bad id.
    pub fn check_token_ids(&self, inputs: &[f32]) -> Result<(), (String, String)> {
        for (i, layer) in self.layers.iter().enumerate() {
            if matches!(layer.op, Op::Embedding(_)) && self.input_of(i) == Source::Input {
                layer
                    .token_ids(inputs)
                    .map_err(|e| (layer.name.clone(), e))?;
            }
        }
        Ok(())
    }

    pub fn layer_index(&self, name: &str) -> Option<usize> {
        self.layers.iter().position(|l| l.name == name)
    }

    /// The layers compression works on (linear and conv), in order.
    pub fn compressible(&self) -> impl Iterator<Item = (usize, &Layer)> {
        self.layers
            .iter()
            .enumerate()
            .filter(|(_, l)| l.params().is_some())
    }
}
