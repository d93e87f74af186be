//! `CompressedModel`: a model whose linear/conv layers are `PackedLayer`s, each prepared into
//! its kernels when the model is assembled, run one sample at a time or in batches over rayon:
//! the batch layouts (sample-major, feature-major), im2col, and the layer-by-layer walk.

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use super::cpu::{Avx512, Isa};
use super::error::EngineError;
use super::format::{PackedLayer, SizeBreakdown};
use super::gemm::{self, ConvRhs};
use super::kernels::{
    Depthwise, FloatKernels, Int8Layer, KernelScratch, LayerKernels, Layout, Run, Work,
    fake_quantize, interleave_quads, quantize_centered,
};
use super::ops::{self, Cell, Clamp, ConvShape, JoinShape, PoolShape, ResampleShape, transpose};
use super::simd::LineBuf;
use crate::compress::Plan;
use crate::model::{
    Activation, InputSpec, LinearTap, Model, Op, ParamJoin, Source, UpsampleMode, linear_taps,
};

/// Samples per rayon task in `logits` (measured: see `benches/inference.rs`), at most.
pub const CHUNK: usize = 128;

/// Activation bytes per sample times samples a rayon task aims at (`CompressedModel::chunk`):
/// LeNet-5's 18 KiB a sample keeps the whole `CHUNK`.
const CHUNK_BYTES: usize = 4 << 20;

/// One step of the compressed graph.
#[derive(Debug, Clone)]
pub enum Step {
    Linear(Prepared),
    /// A linear layer applied to each of a sample's tokens (`[tokens, d]` → `[tokens, out]`).
    TokenLinear(Prepared, usize),
    Conv(Prepared, ConvShape),
    /// Row `id` of the table for each token id: the table as stored, and its values.
    Embedding {
        stored: PackedLayer,
        table: Vec<f32>,
    },
    ChannelAffine {
        scale: Vec<f32>,
        shift: Vec<f32>,
        per: usize,
    },
    /// Layer normalization over each run of `weight.len()` values.
    LayerNorm {
        weight: Vec<f32>,
        bias: Vec<f32>,
        eps: f64,
        /// Whether the file holds the weight and the bias (elementwise affine).
        stored: (bool, bool),
    },
    Activation(Activation),
    MaxPool(PoolShape),
    AvgPool(PoolShape),
    GlobalAvgPool {
        c: usize,
        hw: usize,
    },
    AdaptiveAvgPool(ResampleShape),
    UpsampleNearest(ResampleShape),
    /// Bilinear upsampling through the height's and the width's interpolation taps.
    UpsampleBilinear {
        shape: ResampleShape,
        rows: Vec<LinearTap>,
        cols: Vec<LinearTap>,
    },
    /// Flatten and dropout (at inference) leave one sample's values as they are.
    Identity,
    Softmax {
        last: usize,
    },
    /// Output value `i` of a sample is input value `index[i]` (transpose, select).
    Gather(Vec<usize>),
    /// The mean over the middle dimension of a sample seen as `[outer, n, inner]`.
    Mean {
        outer: usize,
        n: usize,
        inner: usize,
    },
    /// Self-attention over `[tokens, 3·d]` queries, keys and values.
    Attention {
        tokens: usize,
        d: usize,
        heads: usize,
    },
    /// The input plus (or times) a learned tensor of its shape, in place.
    ParamJoin {
        value: Vec<f32>,
        mul: bool,
    },
    /// A learned tensor, then the input.
    ParamConcat(Vec<f32>),
    /// `add` and `mul`: the step's input joined with the value `from`.
    Join {
        from: Source,
        mul: bool,
        shape: JoinShape,
        /// Values per sample of `from`.
        from_len: usize,
    },
    /// The step's input, then each value of `from` (`lens` values per sample each).
    Concat {
        from: Vec<Source>,
        lens: Vec<usize>,
    },
}

impl Step {
    /// The packed weights of a linear, conv or embedding step.
    pub fn packed(&self) -> Option<&PackedLayer> {
        match self {
            Step::Linear(p) | Step::TokenLinear(p, _) | Step::Conv(p, _) => Some(p.stored()),
            Step::Embedding { stored, .. } => Some(stored),
            _ => None,
        }
    }
}

/// A linear/conv layer as stored, with the kernels prepared from it (one per group of a grouped
/// convolution). It reads as its `PackedLayer`.
#[derive(Debug, Clone)]
pub struct Prepared {
    stored: PackedLayer,
    kernels: Vec<LayerKernels>,
    /// A depthwise convolution: its direct kernel, which runs instead of `kernels` (then
    /// empty).
    depthwise: Option<Depthwise>,
    /// The activation after the layer, when its kernels apply it (`fuse`).
    clamp: Option<Clamp>,
    /// A same-shaped `add` (`false`) or `mul` (`true`) of a kept value after the layer, joined
    /// to each sample's outputs before `clamp` bounds them (`fuse`).
    join: Option<(Source, bool)>,
}

impl Prepared {
    /// A linear layer: every kind of work.
    fn linear(stored: PackedLayer) -> Prepared {
        let kernels = vec![LayerKernels::prepare(&stored, Work::ALL)];
        Prepared {
            stored,
            kernels,
            depthwise: None,
            clamp: None,
            join: None,
        }
    }

    /// A convolution: a depthwise one on its direct kernel; otherwise its
    /// groups each prepared as a layer of their own, the single-column variants only for one
    /// output position, the 8-bit kernel only without groups (the activation codes are laid out
    /// for it by `Conv::run`).
    fn conv(stored: PackedLayer, shape: &ConvShape) -> Prepared {
        if let Some(d) = Depthwise::new(&stored, shape) {
            return Prepared {
                stored,
                kernels: Vec::new(),
                depthwise: Some(d),
                clamp: None,
                join: None,
            };
        }
        let work = Work {
            one_column: shape.positions() == 1,
            int8: shape.groups == 1,
            tall: (shape.kh * shape.kw > 1
                && shape.k() >= gemm::DIRECT_MIN_K
                && shape.ow >= gemm::DIRECT_MIN_WIDTH)
                || shape.positions() <= gemm::FEW,
        };
        let kernels = if shape.groups == 1 {
            vec![LayerKernels::prepare(&stored, work)]
        } else {
            let rows = stored.rows / shape.groups;
            (0..shape.groups)
                .map(|g| LayerKernels::prepare(&stored.row_slice(g * rows..(g + 1) * rows), work))
                .collect()
        };
        Prepared {
            stored,
            kernels,
            depthwise: None,
            clamp: None,
            join: None,
        }
    }

    /// The layer as stored.
    pub fn stored(&self) -> &PackedLayer {
        &self.stored
    }

    /// A linear layer's kernels (a convolution's first group's).
    fn kernels(&self) -> &LayerKernels {
        // Every layer has a group: `Prepared::conv` makes one per group, and a convolution has
        // at least one (`assemble` refuses zero).
        &self.kernels[0]
    }
}

impl Deref for Prepared {
    type Target = PackedLayer;

    fn deref(&self) -> &PackedLayer {
        &self.stored
    }
}

/// A compressed model: the architecture (with the dequantized weights, for reference and dense
/// export) and the packed layers the engine runs.
#[derive(Debug, Clone)]
pub struct CompressedModel {
    /// The architecture; linear/conv weights are the dequantized values the engine computes
    /// with (zeros where pruned).
    pub model: Model,
    pub steps: Vec<Step>,
    in_len: usize,
    out_len: usize,
    /// Largest per-sample value count between layers.
    max_len: usize,
    /// Values a run keeps: `[0]` the input, `[j + 1]` layer j's output ([`Model::kept_values`]).
    keep: Vec<bool>,
    /// The transposes' and im2col's vector moves (chosen with the kernels).
    avx512: Option<Avx512>,
    /// Buffers of finished batch runs, reused by the next (`logits`).
    pool: ScratchPool,
}

/// Idle `Scratch`es. rayon calls `logits`' buffer initialiser once per piece of work it
/// splits off, often many times per call; taking warm buffers from here saves allocating and
/// zeroing (and page-faulting) them each time. A clone of a model starts with an empty pool.
#[derive(Debug, Default)]
struct ScratchPool(Mutex<Vec<Scratch>>);

impl Clone for ScratchPool {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl ScratchPool {
    fn take(&self) -> Pooled<'_> {
        let s = self.0.lock().unwrap_or_else(PoisonError::into_inner).pop();
        Pooled {
            pool: self,
            s: s.unwrap_or_default(),
        }
    }
}

/// A `Scratch` on loan from a `ScratchPool`, returned to it when dropped.
struct Pooled<'a> {
    pool: &'a ScratchPool,
    s: Scratch,
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        let s = std::mem::take(&mut self.s);
        self.pool
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(s);
    }
}

/// Per-thread buffers for one run.
#[derive(Debug, Default)]
pub struct Scratch {
    a: LineBuf,
    b: LineBuf,
    saved: Vec<Vec<f32>>,
    bufs: LayerBufs,
    /// Seconds spent in each step of the last run, when timing layers (`timing::layer_times`).
    pub(crate) step_times: Option<Vec<f64>>,
}

/// Buffers of one layer's computation (kept between layers and runs, so a run allocates
/// nothing once warm).
#[derive(Debug, Default)]
struct LayerBufs {
    t1: Vec<f32>,
    t2: Vec<f32>,
    /// Centred activation codes (generic integer kernel).
    qa: Vec<i16>,
    qb: Vec<i16>,
    /// Unsigned activation codes (8-bit kernel).
    q8: Vec<u8>,
    q8b: Vec<u8>,
    /// A layer's outputs before they are transposed into place.
    yt: Vec<f32>,
    /// A padded convolution's input, padded once for its im2col rows (`im2col_padded`).
    padded: Vec<f32>,
    k: KernelScratch,
}

impl CompressedModel {
    /// Encodes every planned layer in its smallest format; layers without a plan stay dense f32.
    pub fn build(plan: &Plan) -> Result<Self, EngineError> {
        let model = &plan.model;
        let mut packed: Vec<Option<PackedLayer>> = vec![None; model.layers.len()];
        for q in &plan.layers {
            let layer = model
                .layers
                .get(q.layer)
                .ok_or_else(|| EngineError::Invalid {
                    layer: format!("#{}", q.layer),
                    msg: format!("the plan names layer {} of {}", q.layer, model.layers.len()),
                })?;
            let Some(p) = layer.params() else {
                return Err(EngineError::Invalid {
                    layer: layer.name.clone(),
                    msg: format!("a {} layer has no weights to compress", layer.op.name()),
                });
            };
            let dims = p.weight.dims();
            let (rows, cols) = (dims[0], dims[1..].iter().product::<usize>());
            if (q.rows, q.cols) != (rows, cols) {
                return Err(EngineError::Invalid {
                    layer: layer.name.clone(),
                    msg: format!(
                        "planned as {}×{}, but the weight is {rows}×{cols}",
                        q.rows, q.cols
                    ),
                });
            }
            packed[q.layer] = Some(PackedLayer::encode(q, &layer.name)?);
        }
        for (i, layer) in model.layers.iter().enumerate() {
            if packed[i].is_none()
                && let Some(p) = layer.params()
            {
                let dims = p.weight.dims();
                let cand = |e: candle_core::Error| EngineError::Invalid {
                    layer: layer.name.clone(),
                    msg: e.to_string(),
                };
                let w = p
                    .weight
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(cand)?;
                let b = match &p.bias {
                    Some(b) => Some(b.to_vec1::<f32>().map_err(cand)?),
                    None => None,
                };
                packed[i] = Some(PackedLayer::dense_f32(
                    dims[0],
                    dims[1..].iter().product(),
                    w,
                    b,
                ));
            }
        }
        Self::assemble(model.clone(), packed)
    }

    /// Stores this model's linear or conv layer `index` as `packed` instead: that layer's
    /// kernels prepared anew (an activation fused into it stays fused), every other step as it
    /// is — what `build` gives for the plan with that one layer changed, without packing the
    /// rest again.
    pub fn set_layer(&mut self, index: usize, packed: PackedLayer) -> Result<(), EngineError> {
        let layer = self
            .model
            .layers
            .get(index)
            .ok_or_else(|| EngineError::Invalid {
                layer: format!("#{index}"),
                msg: format!("the model has {} layers", self.model.layers.len()),
            })?;
        let invalid = |msg: String| EngineError::Invalid {
            layer: layer.name.clone(),
            msg,
        };
        let (old, dims) = match (self.steps.get(index), layer.params()) {
            (Some(Step::Linear(p) | Step::TokenLinear(p, _) | Step::Conv(p, _)), Some(w)) => {
                (p, w.weight.dims().to_vec())
            }
            _ => return Err(invalid("not a linear or conv step".into())),
        };
        if (packed.rows, packed.cols) != (old.rows, old.cols) {
            return Err(invalid(format!(
                "packed as {}×{}, the layer is {}×{}",
                packed.rows, packed.cols, old.rows, old.cols
            )));
        }
        let (weight, bias) = weight_tensors(&packed, &dims).map_err(|e| invalid(e.to_string()))?;
        let step = match &self.steps[index] {
            Step::Linear(_) => Step::Linear(Prepared::linear(packed)),
            Step::TokenLinear(_, tokens) => Step::TokenLinear(Prepared::linear(packed), *tokens),
            Step::Conv(p, shape) => {
                let mut prepared = Prepared::conv(packed, shape);
                (prepared.clamp, prepared.join) = (p.clamp, p.join);
                Step::Conv(prepared, *shape)
            }
            _ => return Err(invalid("not a linear or conv step".into())),
        };
        self.steps[index] = step;
        if let Some(p) = self.model.layers[index].op.params_mut() {
            p.weight = weight;
            p.bias = bias;
        }
        Ok(())
    }

    /// Builds the steps from the graph and the packed layers (one per linear/conv layer), and
    /// puts the dequantized weights into the model's parameters.
    pub(crate) fn assemble(
        mut model: Model,
        mut packed: Vec<Option<PackedLayer>>,
    ) -> Result<Self, EngineError> {
        // Every buffer below is sized by these shapes: they must be what each op gives.
        crate::model::shape::check_graph(&model).map_err(|(layer, e)| EngineError::Invalid {
            layer,
            msg: e.to_string(),
        })?;
        let mut steps = Vec::with_capacity(model.layers.len());
        let (mut joins, mut concats) = (Vec::new(), Vec::new());
        for (i, layer) in model.layers.iter_mut().enumerate() {
            let name = layer.name.clone();
            let graph = |msg: String| EngineError::Invalid {
                layer: name.clone(),
                msg,
            };
            let in_len: usize = layer.in_shape.iter().product();
            let step = match &mut layer.op {
                Op::Linear(p) | Op::Conv2d(p, _) | Op::Embedding(p) => {
                    let Some(pl) = packed[i].take() else {
                        return Err(graph("no packed weights".into()));
                    };
                    let dims = p.weight.dims().to_vec();
                    if pl.rows != dims[0] || pl.cols != dims[1..].iter().product::<usize>() {
                        return Err(graph(format!(
                            "packed as {}×{}, weight is {dims:?}",
                            pl.rows, pl.cols
                        )));
                    }
                    (p.weight, p.bias) =
                        weight_tensors(&pl, &dims).map_err(|e| graph(e.to_string()))?;
                    match &layer.op {
                        Op::Embedding(_) => Step::Embedding {
                            table: pl.dequantized(),
                            stored: pl,
                        },
                        Op::Conv2d(_, g) => {
                            // A conv1d runs as a convolution of height 1.
                            let (ins, outs, dims) =
                                match (&layer.in_shape[..], &layer.out_shape[..], &dims[..]) {
                                    ([c, l], [o, ol], [wo, wi, k]) => {
                                        (vec![*c, 1, *l], vec![*o, 1, *ol], vec![*wo, *wi, 1, *k])
                                    }
                                    (i, o, d) => (i.to_vec(), o.to_vec(), d.to_vec()),
                                };
                            if ins.len() != 3 || outs.len() != 3 || dims.len() != 4 {
                                return Err(graph("conv2d needs [C, H, W] shapes".into()));
                            }
                            let shape = ConvShape {
                                cin: ins[0],
                                h: ins[1],
                                w: ins[2],
                                cout: outs[0],
                                kh: dims[2],
                                kw: dims[3],
                                stride: g.stride,
                                pad: g.padding,
                                dil: g.dilation,
                                groups: g.groups,
                                oh: outs[1],
                                ow: outs[2],
                            };
                            if g.groups == 0
                                || ins[0] % g.groups != 0
                                || outs[0] % g.groups != 0
                                || pl.cols != shape.k()
                            {
                                return Err(graph("inconsistent conv2d groups".into()));
                            }
                            Step::Conv(Prepared::conv(pl, &shape), shape)
                        }
                        _ if layer.in_shape.len() == 2 => {
                            let (tokens, d) = (layer.in_shape[0], layer.in_shape[1]);
                            if pl.cols != d {
                                return Err(graph("linear input size mismatch".into()));
                            }
                            Step::TokenLinear(Prepared::linear(pl), tokens)
                        }
                        _ => {
                            if pl.cols != in_len {
                                return Err(graph("linear input size mismatch".into()));
                            }
                            Step::Linear(Prepared::linear(pl))
                        }
                    }
                }
                Op::ChannelAffine { scale, shift } => {
                    let c = layer.in_shape.first().copied().unwrap_or(1);
                    let v = |t: &Tensor| t.to_vec1::<f32>();
                    Step::ChannelAffine {
                        scale: v(scale).map_err(|e| graph(e.to_string()))?,
                        shift: v(shift).map_err(|e| graph(e.to_string()))?,
                        per: in_len / c.max(1),
                    }
                }
                Op::LayerNorm(n) => {
                    let v = |t: &Tensor| t.to_vec1::<f32>().map_err(|e| graph(e.to_string()));
                    Step::LayerNorm {
                        weight: v(&n.weight)?,
                        bias: v(&n.bias)?,
                        eps: n.eps,
                        stored: (n.weight_name.is_some(), n.bias_name.is_some()),
                    }
                }
                Op::Activation(a) => Step::Activation(*a),
                Op::MaxPool2d(p) | Op::AvgPool2d(p) => {
                    let (ins, outs) = (&layer.in_shape, &layer.out_shape);
                    if ins.len() != 3 || outs.len() != 3 {
                        return Err(graph("pooling needs [C, H, W] shapes".into()));
                    }
                    let s = PoolShape {
                        c: ins[0],
                        h: ins[1],
                        w: ins[2],
                        kernel: p.kernel,
                        stride: p.stride,
                        pad: p.padding,
                        oh: outs[1],
                        ow: outs[2],
                    };
                    if matches!(layer.op, Op::MaxPool2d(_)) {
                        Step::MaxPool(s)
                    } else {
                        Step::AvgPool(s)
                    }
                }
                Op::GlobalAvgPool => {
                    let c = layer.in_shape.first().copied().unwrap_or(1);
                    Step::GlobalAvgPool {
                        c,
                        hw: in_len / c.max(1),
                    }
                }
                Op::AdaptiveAvgPool(_) | Op::Upsample { .. } => {
                    let (ins, outs) = (&layer.in_shape, &layer.out_shape);
                    if ins.len() != 3 || outs.len() != 3 {
                        return Err(graph(format!("{} needs [C, H, W] shapes", layer.op.name())));
                    }
                    let s = ResampleShape {
                        c: ins[0],
                        h: ins[1],
                        w: ins[2],
                        oh: outs[1],
                        ow: outs[2],
                    };
                    match layer.op {
                        Op::Upsample {
                            mode: UpsampleMode::Nearest,
                            ..
                        } => Step::UpsampleNearest(s),
                        Op::Upsample {
                            mode: UpsampleMode::Bilinear,
                            scale: (sh, sw),
                            align_corners,
                        } => Step::UpsampleBilinear {
                            shape: s,
                            rows: linear_taps(s.h, sh, align_corners),
                            cols: linear_taps(s.w, sw, align_corners),
                        },
                        _ => Step::AdaptiveAvgPool(s),
                    }
                }
                Op::Flatten | Op::Reshape(_) | Op::Dropout(_) => Step::Identity,
                Op::Transpose(a, b) => Step::Gather(ops::transpose_index(&layer.in_shape, *a, *b)),
                Op::Select { dim, index } => {
                    Step::Gather(ops::select_index(&layer.in_shape, *dim, *index))
                }
                Op::Mean(dim) => {
                    let (s, dim) = (&layer.in_shape, *dim);
                    Step::Mean {
                        outer: s[..dim].iter().product(),
                        n: s[dim],
                        inner: s[dim + 1..].iter().product(),
                    }
                }
                Op::Attention { heads } => {
                    let (ins, outs) = (&layer.in_shape, &layer.out_shape);
                    if ins.len() != 2 || outs.len() != 2 {
                        return Err(graph("attention needs [tokens, 3·d] shapes".into()));
                    }
                    Step::Attention {
                        tokens: ins[0],
                        d: outs[1],
                        heads: *heads,
                    }
                }
                Op::Param { join, param } => {
                    let v = param
                        .value
                        .flatten_all()
                        .and_then(|t| t.to_vec1::<f32>())
                        .map_err(|e| graph(e.to_string()))?;
                    match join {
                        ParamJoin::Concat => Step::ParamConcat(v),
                        _ => Step::ParamJoin {
                            value: v,
                            mul: *join == ParamJoin::Mul,
                        },
                    }
                }
                Op::Softmax => Step::Softmax {
                    last: layer.in_shape.last().copied().unwrap_or(1),
                },
                // Filled in below, once every layer's shape is at hand.
                Op::Add { from } | Op::Mul { from } => {
                    joins.push((i, *from));
                    Step::Identity
                }
                Op::Concat { from } => {
                    concats.push((i, from.clone()));
                    Step::Identity
                }
            };
            steps.push(step);
        }
        let len = |m: &Model, s: Source| m.shape_of(s).iter().product::<usize>();
        for (i, from) in joins {
            let shape = JoinShape::new(&model.layers[i].in_shape, model.shape_of(from));
            steps[i] = Step::Join {
                from,
                mul: matches!(model.layers[i].op, Op::Mul { .. }),
                shape,
                from_len: len(&model, from),
            };
        }
        for (i, from) in concats {
            let lens = from.iter().map(|s| len(&model, *s)).collect();
            steps[i] = Step::Concat { from, lens };
        }
        let in_len = model.input_len();
        let out_len = model.num_classes();
        let max_len = model
            .layers
            .iter()
            .map(|l| l.out_shape.iter().product::<usize>())
            .chain(std::iter::once(in_len))
            .max()
            .unwrap_or(in_len);
        let keep = model.kept_values();
        fuse(&model, &keep, &mut steps);
        Ok(CompressedModel {
            model,
            steps,
            in_len,
            out_len,
            max_len,
            keep,
            avx512: Isa::current().avx512,
            pool: ScratchPool::default(),
        })
    }

    pub fn input(&self) -> &InputSpec {
        &self.model.input
    }

    pub fn input_len(&self) -> usize {
        self.in_len
    }

    pub fn num_classes(&self) -> usize {
        self.out_len
    }

    /// The packed layers with their model layer index.
    pub fn packed_layers(&self) -> impl Iterator<Item = (usize, &PackedLayer)> {
        self.steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.packed()?)))
    }

    /// Checks that the token ids of `inputs` (samples, scaled) are rows of the tables of the
    /// embedding layers that read them: a run cannot fail, so a bad id is refused here.
    pub fn check_inputs(&self, inputs: &[f32]) -> Result<(), EngineError> {
        self.model
            .check_token_ids(inputs)
            .map_err(|(layer, msg)| EngineError::Invalid { layer, msg })
    }

    /// Exact bytes of every tensor the model serializes to (packed layers and unfolded
    /// batchnorm parameters).
    pub fn size_bytes(&self) -> usize {
        self.size_breakdown().total()
    }

    pub fn size_breakdown(&self) -> SizeBreakdown {
        let mut total = SizeBreakdown::default();
        for s in &self.steps {
            if let Some(p) = s.packed() {
                total += p.size_breakdown();
            }
            match s {
                Step::ChannelAffine { scale, shift, .. } => {
                    total.scales += (scale.len() + shift.len()) * 4
                }
                Step::LayerNorm {
                    weight,
                    bias,
                    stored,
                    ..
                } => {
                    total.scales += (usize::from(stored.0) * weight.len()
                        + usize::from(stored.1) * bias.len())
                        * 4
                }
                _ => {}
            }
        }
        total
    }

    /// What the same layers take dense in f32 (`rows × cols × 4 + bias`, plus unfolded
    /// batchnorm parameters).
    pub fn dense_bytes(&self) -> usize {
        self.steps
            .iter()
            .map(|s| match (s, s.packed()) {
                (_, Some(p)) => (p.rows * p.cols + p.bias.as_ref().map_or(0, Vec::len)) * 4,
                (Step::ChannelAffine { scale, shift, .. }, _) => (scale.len() + shift.len()) * 4,
                (
                    Step::LayerNorm {
                        weight,
                        bias,
                        stored,
                        ..
                    },
                    _,
                ) => {
                    (usize::from(stored.0) * weight.len() + usize::from(stored.1) * bias.len()) * 4
                }
                _ => 0,
            })
            .sum()
    }

    /// Multiply-adds of one sample through the linear/conv layers computed densely (every
    /// weight, pruned or not): the work a dense f32 evaluation does.
    pub fn dense_macs(&self) -> u64 {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Linear(p) => (p.rows * p.cols) as u64,
                Step::TokenLinear(p, tokens) => (p.rows * p.cols * tokens) as u64,
                Step::Conv(p, shape) => (p.rows * p.cols * shape.positions()) as u64,
                _ => 0,
            })
            .sum()
    }

    /// Buffers for `run`, sized for this model.
    pub fn scratch(&self) -> Scratch {
        Scratch::default()
    }

    /// Samples per rayon task in `logits`: `CHUNK`, or fewer where a sample's largest value
    /// between layers is big (a convnet's), so that a task's activations stay near
    /// `CHUNK_BYTES` and its layers work in the caches rather than streaming each value
    /// through memory (MobileNetV2 on 32×32 inputs: 7 samples a task).
    pub fn chunk(&self) -> usize {
        (CHUNK_BYTES / (self.max_len * 4).max(1)).clamp(1, CHUNK)
    }

    /// Logits of `n` samples (`inputs` is `n × input_len`, already scaled): `n × classes`.
    /// Chunks of samples (`chunk`) run in parallel on rayon's pool; each chunk runs
    /// single-threaded.
    pub fn logits(&self, inputs: &[f32], n: usize) -> Vec<f32> {
        let never = AtomicBool::new(false);
        self.logits_until(inputs, n, &never).unwrap_or_default()
    }

    /// `logits`, giving up when `stop` is set: each chunk looks at it before it starts, so a
    /// long run stops within one chunk's time. `None` when it stopped. The outputs are the
    /// same bits `logits` gives.
    pub fn logits_until(&self, inputs: &[f32], n: usize, stop: &AtomicBool) -> Option<Vec<f32>> {
        let (il, ol) = (self.in_len, self.out_len);
        let mut out = vec![0f32; n * ol];
        let inputs = &inputs[..n * il];
        let chunk = self.chunk();
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        if n <= chunk {
            self.run(inputs, n, &mut self.pool.take().s, &mut out);
            return Some(out);
        }
        out.par_chunks_mut(chunk * ol)
            .zip(inputs.par_chunks(chunk * il))
            .for_each_init(
                || self.pool.take(),
                |p, (o, x)| {
                    if !stop.load(Ordering::Relaxed) {
                        self.run(x, x.len() / il, &mut p.s, o);
                    }
                },
            );
        (!stop.load(Ordering::Relaxed)).then_some(out)
    }

    /// Runs `n` samples on the calling thread with `s`'s buffers, writing `n × classes` to
    /// `out`.
    pub fn run(&self, inputs: &[f32], n: usize, s: &mut Scratch, out: &mut [f32]) {
        let inputs = &inputs[..n * self.in_len];
        let need = n * self.max_len;
        s.a.resize(need);
        s.b.resize(need);
        s.saved.resize(self.steps.len() + 1, Vec::new());
        let mut len = self.in_len;
        // Batches keep activations feature-major (`len × n`) through runs of linear layers and
        // elementwise steps, so a chain of linear layers transposes once on the way in and once
        // on the way out rather than around every layer. `fm` says which layout `s.a` holds.
        let mut fm = false;
        // Steps already run before the loop.
        let mut done = 0;
        let lead_started = s.step_times.is_some().then(std::time::Instant::now);
        let lead = self.steps.iter().position(|s| !matches!(s, Step::Identity));
        match lead.map(|i| (i, &self.steps[i])) {
            Some((i, Step::Linear(p)))
                if !self.keep[..=i + 1].contains(&true)
                    && self.model.layers[..=i].iter().all(|l| l.input.is_none()) =>
            {
                // A leading linear layer reads the sample-major inputs in place.
                let x = &inputs[..n * len];
                let k = p.kernels();
                if n > 1 && p.activation.is_none() {
                    // Straight into its matrix product where the layer runs as one, else
                    // transposed once.
                    if k.run_samples(x, n, &mut s.a[..p.rows * n], &mut s.bufs.k) {
                        len = p.rows;
                        done = i + 1;
                    } else {
                        transpose(x, n, len, &mut s.a[..n * len], self.avx512);
                    }
                    fm = true;
                } else {
                    linear(k, x, n, &mut s.a[..n * p.rows], &mut s.bufs, self.avx512);
                    len = p.rows;
                    done = i + 1;
                }
            }
            _ => s.a[..n * len].copy_from_slice(&inputs[..n * len]),
        }
        if let (Some(t0), Some(t)) = (lead_started, &mut s.step_times) {
            t.clear();
            t.resize(self.steps.len(), 0.0);
            // A leading linear layer run above.
            if let Some(i) = done.checked_sub(1) {
                t[i] = t0.elapsed().as_secs_f64();
            }
        }
        for (i, step) in self.steps.iter().enumerate().skip(done) {
            let started = s.step_times.is_some().then(std::time::Instant::now);
            let out_len: usize = self.model.layers[i].out_shape.iter().product();
            if let Some(src) = self.model.layers[i].input {
                // A branch: the step reads a kept value, not the previous step's output.
                let v = kept(inputs, &s.saved, src);
                s.a[..v.len()].copy_from_slice(v);
                len = v.len() / n.max(1);
                fm = false;
            }
            let layout_free = match step {
                Step::Linear(p) => n > 1 && p.activation.is_none(),
                Step::Activation(_) | Step::Identity => true,
                _ => false,
            };
            if fm && !layout_free {
                transpose(&s.a[..n * len], len, n, &mut s.b[..n * len], self.avx512);
                std::mem::swap(&mut s.a, &mut s.b);
                fm = false;
            }
            let (cur, next) = (&mut s.a, &mut s.b);
            let mut swapped = true;
            match step {
                Step::Linear(p) if n > 1 && p.activation.is_none() => {
                    // Feature-major out; in, feature-major or, from sample-major, straight into
                    // the matrix product (else transposed once).
                    let (rows, cols, k) = (p.rows, p.cols, p.kernels());
                    let t = &mut s.bufs;
                    let (x, y) = (&cur[..n * len], &mut next[..rows * n]);
                    if fm {
                        k.run(x, n, y, &mut t.k);
                    } else if !k.run_samples(x, n, y, &mut t.k) {
                        t.t1.resize(cols * n, 0.0);
                        transpose(x, n, cols, &mut t.t1, self.avx512);
                        k.run(&t.t1, n, y, &mut t.k);
                    }
                    fm = true;
                }
                Step::Linear(p) => {
                    let (x, y) = (&cur[..n * len], &mut next[..n * out_len]);
                    linear(p.kernels(), x, n, y, &mut s.bufs, self.avx512);
                }
                Step::TokenLinear(p, tokens) => {
                    let (x, y) = (&cur[..n * len], &mut next[..n * out_len]);
                    linear(p.kernels(), x, n * tokens, y, &mut s.bufs, self.avx512);
                }
                Step::Embedding { stored, table } => {
                    let (x, y) = (&cur[..n * len], &mut next[..n * out_len]);
                    ops::embedding(x, table, stored.cols, y);
                }
                Step::Gather(index) => {
                    for (x, y) in cur[..n * len].chunks(len).zip(next.chunks_mut(out_len)) {
                        for (v, i) in y.iter_mut().zip(index) {
                            *v = x[*i];
                        }
                    }
                }
                Step::Mean { outer, n: m, inner } => {
                    for (x, y) in cur[..n * len].chunks(len).zip(next.chunks_mut(out_len)) {
                        ops::mean(x, (*outer, *m, *inner), y);
                    }
                }
                Step::Attention { tokens, d, heads } => {
                    for (x, y) in cur[..n * len].chunks(len).zip(next.chunks_mut(out_len)) {
                        ops::attention(x, (*tokens, *d, *heads), y, &mut s.bufs.t1);
                    }
                }
                Step::ParamJoin { value, mul } => {
                    for x in cur[..n * len].chunks_mut(len) {
                        for (v, p) in x.iter_mut().zip(value) {
                            *v = if *mul { *v * p } else { *v + p };
                        }
                    }
                    swapped = false;
                }
                Step::ParamConcat(value) => {
                    for (x, y) in cur[..n * len].chunks(len).zip(next.chunks_mut(out_len)) {
                        y[..value.len()].copy_from_slice(value);
                        y[value.len()..value.len() + len].copy_from_slice(x);
                    }
                }
                Step::Conv(p, shape) => {
                    let conv = Conv {
                        layer: p,
                        shape,
                        avx512: self.avx512,
                    };
                    let join = p.join.map(|(src, mul)| (kept(inputs, &s.saved, src), mul));
                    let (x, y) = (&cur[..n * len], &mut next[..n * out_len]);
                    conv.run(x, n, y, &mut s.bufs, join);
                }
                Step::ChannelAffine { scale, shift, per } => {
                    for x in cur[..n * len].chunks_mut(len) {
                        ops::channel_affine(x, scale, shift, *per);
                    }
                    swapped = false;
                }
                Step::Activation(a) => {
                    ops::activation(&mut cur[..n * len], *a);
                    swapped = false;
                }
                Step::LayerNorm {
                    weight, bias, eps, ..
                } => {
                    ops::layer_norm(&mut cur[..n * len], weight, bias, *eps);
                    swapped = false;
                }
                Step::MaxPool(ps) | Step::AvgPool(ps) => {
                    for (x, y) in cur[..n * len].chunks(len).zip(next.chunks_mut(out_len)) {
                        if matches!(step, Step::MaxPool(_)) {
                            ops::max_pool(x, ps, y);
                        } else {
                            ops::avg_pool(x, ps, y);
                        }
                    }
                }
                Step::GlobalAvgPool { c, hw } => {
                    for (x, y) in cur[..n * len].chunks(len).zip(next.chunks_mut(out_len)) {
                        ops::global_avg_pool(x, *c, *hw, y);
                    }
                }
                Step::AdaptiveAvgPool(rs) | Step::UpsampleNearest(rs) => {
                    for (x, y) in cur[..n * len].chunks(len).zip(next.chunks_mut(out_len)) {
                        if matches!(step, Step::AdaptiveAvgPool(_)) {
                            ops::adaptive_avg_pool(x, rs, y);
                        } else {
                            ops::upsample_nearest(x, rs, y);
                        }
                    }
                }
                Step::UpsampleBilinear { shape, rows, cols } => {
                    for (x, y) in cur[..n * len].chunks(len).zip(next.chunks_mut(out_len)) {
                        ops::upsample_bilinear(x, shape, (rows, cols), y);
                    }
                }
                Step::Identity => swapped = false,
                Step::Softmax { last } => {
                    ops::softmax(&mut cur[..n * len], *last);
                    swapped = false;
                }
                Step::Join {
                    from,
                    mul,
                    shape,
                    from_len,
                } => {
                    let b = kept(inputs, &s.saved, *from);
                    if !shape.a_per_channel && !shape.b_per_channel {
                        // Same shapes: in place.
                        for (v, z) in cur[..n * len].iter_mut().zip(b) {
                            *v = if *mul { *v * z } else { *v + z };
                        }
                        swapped = false;
                    } else {
                        let samples = cur[..n * len]
                            .chunks(len)
                            .zip(b.chunks(*from_len))
                            .zip(next.chunks_mut(out_len));
                        for ((a, b), y) in samples {
                            ops::join(a, b, shape, *mul, y);
                        }
                    }
                }
                Step::Concat { from, lens } => {
                    for (k, y) in next[..n * out_len].chunks_mut(out_len).enumerate() {
                        y[..len].copy_from_slice(&cur[k * len..(k + 1) * len]);
                        let mut at = len;
                        for (src, l) in from.iter().zip(lens) {
                            let v = kept(inputs, &s.saved, *src);
                            y[at..at + l].copy_from_slice(&v[k * l..(k + 1) * l]);
                            at += l;
                        }
                    }
                }
            }
            if swapped {
                std::mem::swap(&mut s.a, &mut s.b);
            }
            len = out_len;
            if self.keep[i + 1] && fm {
                transpose(&s.a[..n * len], len, n, &mut s.b[..n * len], self.avx512);
                std::mem::swap(&mut s.a, &mut s.b);
                fm = false;
            }
            if self.keep[i + 1] {
                let saved = &mut s.saved[i + 1];
                saved.clear();
                saved.extend_from_slice(&s.a[..n * len]);
            }
            if let (Some(t0), Some(t)) = (started, &mut s.step_times) {
                t[i] = t0.elapsed().as_secs_f64();
            }
        }
        if fm {
            transpose(&s.a[..n * len], len, n, &mut out[..n * len], self.avx512);
        } else {
            out[..n * len].copy_from_slice(&s.a[..n * len]);
        }
    }
}

/// A kept value of a run over `n` samples, sample-major: the model input or a layer's saved
/// output.
fn kept<'a>(inputs: &'a [f32], saved: &'a [Vec<f32>], src: Source) -> &'a [f32] {
    match src {
        Source::Input => inputs,
        Source::Layer(j) => &saved[j + 1],
    }
}

/// A linear layer over `n` samples (`x` is `n × cols`, `y` is `n × rows`), sample-major in
/// and out.
fn linear(
    k: &LayerKernels,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    t: &mut LayerBufs,
    avx512: Option<Avx512>,
) {
    let (rows, cols) = (k.rows(), k.cols());
    match k.kernels() {
        Run::Int8(il) => {
            // 8-bit activation codes × 8-bit weights, sample-major in and out.
            let kp = il.kp;
            t.q8.resize(n * kp, 0);
            for (xs, qs) in x.chunks(cols).zip(t.q8.chunks_mut(kp)).take(n) {
                il.quantize(xs, qs);
            }
            il.run(&t.q8, n, Layout::Samples, y);
        }
        Run::Integer(ir, a) => {
            // Integer codes × integer codes, accumulated exactly per scale group.
            t.qa.resize(n * cols, 0);
            // Feature-major (cols × n) centred codes.
            t.qb.resize(cols, 0);
            for (si, xs) in x.chunks(cols).enumerate().take(n) {
                quantize_centered(xs, a.bits, a.scale, a.zero_point, &mut t.qb);
                for (c, &v) in t.qb.iter().enumerate() {
                    t.qa[c * n + si] = v;
                }
            }
            t.t2.resize(rows * n, 0.0);
            ir.run(&t.qa, n, &mut t.t2, &mut t.k);
            transpose(&t.t2, rows, n, y, avx512);
        }
        Run::Float(f) => match f.fake_quant {
            Some(a) => {
                // Float weights see the quantized inputs' values.
                let mut xq = std::mem::take(&mut t.t2);
                xq.clear();
                xq.extend_from_slice(&x[..n * cols]);
                fake_quantize(&mut xq, a.bits, a.scale, a.zero_point);
                linear_float(f, &xq, n, y, t, avx512);
                t.t2 = xq;
            }
            None => linear_float(f, x, n, y, t, avx512),
        },
    }
}

/// A linear layer over float inputs: the single-column kernel for one sample; for a batch,
/// `Y = W·xᵀ` (`rows × n`) through the many-column kernel, then transposed back.
fn linear_float(
    f: &FloatKernels,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    t: &mut LayerBufs,
    avx512: Option<Avx512>,
) {
    let (rows, cols) = (f.rows(), f.cols());
    if n == 1 {
        f.run(x, 1, y, &mut t.k);
        return;
    }
    t.t1.resize(cols * n, 0.0);
    transpose(x, n, cols, &mut t.t1, avx512);
    t.yt.resize(rows * n, 0.0);
    f.run(&t.t1, n, &mut t.yt, &mut t.k);
    transpose(&t.yt, rows, n, y, avx512);
}

/// Gives each convolution the steps after it that its kernels can finish while a sample's
/// outputs are still in the caches, and drops their own passes over the whole batch: a
/// same-shaped `add` or `mul` of a kept value (a residual connection), then a ReLU or ReLU6,
/// which the kernels apply as they store the outputs (after the join, when there is one). Only
/// where nothing else reads what the fused steps consume: the layers between (folded
/// batchnorms, dropouts) pass the value on unchanged and read no branch, and none of their
/// outputs is kept for one.
fn fuse(model: &Model, keep: &[bool], steps: &mut [Step]) {
    // The first step from `j` on that is not an identity passing its input on.
    let skip = |steps: &[Step], mut j: usize| {
        while j < steps.len()
            && matches!(steps[j], Step::Identity)
            && model.layers[j].input.is_none()
        {
            j += 1;
        }
        j
    };
    for i in 0..steps.len() {
        if !matches!(steps[i], Step::Conv(..)) {
            continue;
        }
        // Layer `t`'s output is kept when `keep[t + 1]` (slot 0 is the model's input).
        let unread = |from: usize, to: usize| !keep[from + 1..=to].contains(&true);
        let mut j = skip(steps, i + 1);
        let mut join = None;
        if let Some(Step::Join {
            from, mul, shape, ..
        }) = steps.get(j)
            && model.layers[j].input.is_none()
            && !shape.a_per_channel
            && !shape.b_per_channel
            && unread(i, j)
        {
            join = Some((j, (*from, *mul)));
            j = skip(steps, j + 1);
        }
        let start = join.map_or(i, |(at, _)| at);
        let clamp = match steps.get(j) {
            Some(Step::Activation(a)) if model.layers[j].input.is_none() && unread(start, j) => {
                Clamp::of(*a)
            }
            _ => None,
        };
        if let Step::Conv(p, _) = &mut steps[i] {
            p.join = join.map(|(_, v)| v);
            p.clamp = clamp;
        }
        if let Some((at, _)) = join {
            steps[at] = Step::Identity;
        }
        if clamp.is_some() {
            steps[j] = Step::Identity;
        }
    }
}

/// A packed layer's dequantized weights (shaped `dims`) and bias, as the model's parameters
/// hold them.
fn weight_tensors(
    pl: &PackedLayer,
    dims: &[usize],
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let weight = Tensor::from_vec(pl.dequantized(), dims, &Device::Cpu)?;
    let bias = match &pl.bias {
        Some(b) => Some(Tensor::from_vec(b.clone(), b.len(), &Device::Cpu)?),
        None => None,
    };
    Ok((weight, bias))
}

/// The operand of an `add` (`false`) or `mul` (`true`) fused into a convolution
/// (`Prepared::join`): `n` samples shaped as its outputs, sample-major.
type Join<'a> = Option<(&'a [f32], bool)>;

/// A convolution over `n` samples: its geometry, its layer (kernels prepared per group) and
/// the vector moves of its transposes and im2col.
struct Conv<'a> {
    layer: &'a Prepared,
    shape: &'a ConvShape,
    avx512: Option<Avx512>,
}

impl Conv<'_> {
    /// Each sample im2col then the matrix kernels, group by group; batches of float samples
    /// several at a time (`batched`). `join` is the fused `add`/`mul` operand (`n` samples of
    /// the outputs' shape), joined to each sample's outputs before they are bounded.
    fn run(&self, x: &[f32], n: usize, y: &mut [f32], t: &mut LayerBufs, join: Join<'_>) {
        let (s, avx512) = (self.shape, self.avx512);
        let in_len = s.cin * s.h * s.w;
        let out_len = s.cout * s.positions();
        let (kk, pos) = (s.k(), s.positions());
        let rows_g = s.cout / s.groups;
        let clamp = self.kernel_clamp(join);
        let bound = |y: &mut [f32]| {
            if let Some(c) = clamp {
                c.apply(y)
            }
        };
        if let Some(d) = &self.layer.depthwise {
            for (k, (xs, ys)) in x
                .chunks(in_len)
                .zip(y.chunks_mut(out_len))
                .take(n)
                .enumerate()
            {
                d.run(xs, ys, &mut t.t1, &mut t.t2, clamp);
                self.finish(ys, k, join);
            }
            return;
        }
        if let [k] = &self.layer.kernels[..]
            && let Run::Int8(il) = k.kernels()
        {
            return self.int8(il, x, n, y, t, join);
        }
        if self.layer.activation.is_none() && n > 1 && !s.is_pointwise() {
            return self.batched(x, n, y, t, join);
        }
        for (i, (xs, ys)) in x
            .chunks(in_len)
            .zip(y.chunks_mut(out_len))
            .take(n)
            .enumerate()
        {
            // The sample's activation codes, or their values for float weights, made once for
            // all groups.
            let (mut codes, mut values) = (false, false);
            for (g, k) in self.layer.kernels.iter().enumerate() {
                let yg = &mut ys[g * rows_g * pos..(g + 1) * rows_g * pos];
                match k.kernels() {
                    Run::Integer(ir, a) => {
                        if !codes {
                            t.qa.resize(in_len, 0);
                            quantize_centered(xs, a.bits, a.scale, a.zero_point, &mut t.qa);
                            codes = true;
                        }
                        t.qb.resize(kk * pos, 0);
                        ops::im2col_into(&t.qa, s, g, &mut t.qb, (pos, 0), 0, avx512);
                        ir.run(&t.qb, pos, yg, &mut t.k);
                        bound(yg);
                    }
                    Run::Float(f) => {
                        let xs: &[f32] = match f.fake_quant {
                            Some(a) => {
                                if !values {
                                    t.t2.clear();
                                    t.t2.extend_from_slice(xs);
                                    fake_quantize(&mut t.t2, a.bits, a.scale, a.zero_point);
                                    values = true;
                                }
                                &t.t2
                            }
                            None => xs,
                        };
                        let c = ConvRhs {
                            x: xs,
                            shape: s,
                            group: g,
                            samples: 1,
                        };
                        if s.is_pointwise() {
                            let cg = s.cin / s.groups;
                            let xg = &xs[g * cg * pos..(g + 1) * cg * pos];
                            f.run_bounded(xg, pos, yg, &mut t.k, clamp);
                        } else if f.fake_quant.is_some() || !k.run_conv(c, yg, &mut t.k, clamp) {
                            t.t1.resize(kk * pos, 0.0);
                            let col = (&mut t.t1[..], (pos, 0));
                            im2col_padded(xs, s, g, col, &mut t.padded, avx512);
                            f.run_bounded(&t.t1, pos, yg, &mut t.k, clamp);
                        }
                    }
                    // Only ungrouped convolutions prepare the 8-bit kernel (`Prepared::conv`),
                    // and those run it above; the layer's own product gives the same outputs.
                    Run::Int8(_) => {
                        t.t1.resize(kk * pos, 0.0);
                        im2col_padded(xs, s, g, (&mut t.t1[..], (pos, 0)), &mut t.padded, avx512);
                        k.run(&t.t1, pos, yg, &mut t.k);
                        bound(yg);
                    }
                }
            }
            self.finish(ys, i, join);
        }
    }

    /// The bounds the kernels apply as they store the outputs: none when a join comes first
    /// (`finish` bounds the joined values).
    fn kernel_clamp(&self, join: Join<'_>) -> Option<Clamp> {
        self.layer.clamp.filter(|_| join.is_none())
    }

    /// Sample `k`'s outputs `ys`, which the kernels left unbounded, joined with the fused
    /// operand and then bounded, in one pass while they are still in the caches: the same
    /// values the `add`/`mul` and activation steps give in their own passes.
    fn finish(&self, ys: &mut [f32], k: usize, join: Join<'_>) {
        let Some((b, mul)) = join else {
            return;
        };
        let b = &b[k * ys.len()..(k + 1) * ys.len()];
        match (mul, self.layer.clamp) {
            (false, Some(c)) => {
                for (v, z) in ys.iter_mut().zip(b) {
                    *v = c.bound(*v + z);
                }
            }
            (false, None) => ys.iter_mut().zip(b).for_each(|(v, z)| *v += z),
            (true, _) => {
                ys.iter_mut().zip(b).for_each(|(v, z)| *v *= z);
                if let Some(c) = self.layer.clamp {
                    c.apply(ys);
                }
            }
        }
    }

    /// 8-bit codes × 8-bit weights: the positions are the kernel's samples.
    fn int8(
        &self,
        il: &Int8Layer,
        x: &[f32],
        n: usize,
        y: &mut [f32],
        t: &mut LayerBufs,
        join: Join<'_>,
    ) {
        let s = self.shape;
        let in_len = s.cin * s.h * s.w;
        let out_len = s.cout * s.positions();
        let (kk, pos) = (s.k(), s.positions());
        let kp = il.kp;
        // Padding is the zero point, the code of 0.0 (`Int8Layer` admits only zero points in
        // the codes' range).
        let zero = u8::try_from(il.act.zero_point).unwrap_or_default();
        for (i, (xs, ys)) in x
            .chunks(in_len)
            .zip(y.chunks_mut(out_len))
            .take(n)
            .enumerate()
        {
            // The input quantized once; im2col of the codes; then each quad of rows interleaved
            // into the kernel's layout (`[quad][position][4]`; the padding rows past `kk` have
            // zero weights).
            t.q8.resize(in_len, 0);
            il.quantize(xs, &mut t.q8);
            t.q8b.resize(kp * pos, 0);
            ops::im2col_into(&t.q8, s, 0, &mut t.q8b, (pos, 0), zero, self.avx512);
            t.q8b[kk * pos..].fill(0);
            t.q8.resize(kp * pos, 0);
            interleave_quads(&t.q8b, pos, &mut t.q8);
            t.yt.resize(pos * s.cout, 0.0);
            il.run(&t.q8, pos, Layout::Quads, &mut t.yt);
            transpose(&t.yt, pos, s.cout, ys, self.avx512);
            if let Some(c) = self.kernel_clamp(join) {
                c.apply(ys);
            }
            self.finish(ys, i, join);
        }
    }

    /// A float convolution over `n` samples, a few samples at a time (`CONV_COLUMNS` output
    /// positions, at least one sample): their im2col matrices side by side
    /// (`k × (samples·positions)`), one matrix product per group, then each sample's output
    /// rows copied into place.
    fn batched(&self, x: &[f32], n: usize, y: &mut [f32], t: &mut LayerBufs, join: Join<'_>) {
        let s = self.shape;
        let clamp = self.kernel_clamp(join);
        let in_len = s.cin * s.h * s.w;
        let out_len = s.cout * s.positions();
        let (kk, pos) = (s.k(), s.positions());
        let rows_g = s.cout / s.groups;
        if self.layer.kernels.iter().all(LayerKernels::direct) && gemm::runs_direct(s, 1) {
            // Each sample a direct convolution, straight into its outputs.
            for (i, (xs, ys)) in x
                .chunks(in_len)
                .zip(y.chunks_mut(out_len))
                .take(n)
                .enumerate()
            {
                for (g, k) in self.layer.kernels.iter().enumerate() {
                    let c = ConvRhs {
                        x: xs,
                        shape: s,
                        group: g,
                        samples: 1,
                    };
                    let yg = &mut ys[g * rows_g * pos..(g + 1) * rows_g * pos];
                    k.run_conv(c, yg, &mut t.k, clamp);
                }
                self.finish(ys, i, join);
            }
            return;
        }
        let per = CONV_COLUMNS.div_ceil(pos.max(1));
        let (col, prod) = (&mut t.t1, &mut t.yt);
        for start in (0..n).step_by(per) {
            let count = per.min(n - start);
            let wide = count * pos;
            prod.resize(rows_g * wide, 0.0);
            for (g, k) in self.layer.kernels.iter().enumerate() {
                let c = ConvRhs {
                    x: &x[start * in_len..(start + count) * in_len],
                    shape: s,
                    group: g,
                    samples: count,
                };
                if !k.run_conv(c, prod, &mut t.k, clamp) {
                    col.resize(kk * wide, 0.0);
                    for j in 0..count {
                        let xs = &x[(start + j) * in_len..(start + j + 1) * in_len];
                        let at = (&mut col[..], (wide, j * pos));
                        im2col_padded(xs, s, g, at, &mut t.padded, self.avx512);
                    }
                    k.run(col, wide, prod, &mut t.k);
                    if let Some(c) = clamp {
                        c.apply(&mut prod[..rows_g * wide]);
                    }
                }
                for j in 0..count {
                    let ys = &mut y[(start + j) * out_len..(start + j + 1) * out_len];
                    for r in 0..rows_g {
                        let at = (g * rows_g + r) * pos;
                        let src = &prod[r * wide + j * pos..r * wide + (j + 1) * pos];
                        f32::copy_row(&mut ys[at..at + pos], src, self.avx512);
                    }
                }
            }
            for j in start..start + count {
                self.finish(&mut y[j * out_len..(j + 1) * out_len], j, join);
            }
        }
    }
}

/// Group `g`'s im2col matrix of one sample `xs` into `col.0` at `col.1 = (stride, offset)`
/// (`ops::im2col_into`), from the input as the matrix products read it (`gemm::conv_input`:
/// a layer that pads or groups has the group's input padded once into `padded`), so that every
/// row copies whole segments of its input rows without bounds tests or fills.
fn im2col_padded(
    xs: &[f32],
    s: &ConvShape,
    g: usize,
    col: (&mut [f32], (usize, usize)),
    padded: &mut Vec<f32>,
    avx512: Option<Avx512>,
) {
    let (col, at) = col;
    let c = ConvRhs {
        x: xs,
        shape: s,
        group: g,
        samples: 1,
    };
    let (x, valid, group) = gemm::conv_input(c, padded, avx512);
    ops::im2col_into(x, &valid, group, col, at, 0.0, avx512);
}

/// Output positions `Conv::batched` multiplies at once: the im2col block of that many columns
/// (`k × columns`) stays in the L2 cache, and the matrix kernel gets whole column panels.
const CONV_COLUMNS: usize = 128;
