//! Pruning: which weights survive. Masks (`true` = kept) for unstructured and N:M methods, and
//! structured pruning, which physically removes the channels of a channel group (see
//! [`super::groups`]) from every layer producing or reading them, producing a smaller `Model`.
//!
//! Counts follow PyTorch's `torch.nn.utils.prune`: `round(sparsity × n)` with Python's
//! round-half-to-even. Ties in magnitude are broken by position (the earlier weight is removed
//! first), so every mask is deterministic.

use std::borrow::Cow;

use candle_core::{DType, Device, Tensor};

use super::CompressError;
use super::groups::{ChannelGraph, Fixed};
use super::recipe::{Norm, Rank};
use crate::model::{Model, Op, OpSpec, Params, Source};

/// The values magnitude pruning ranks for a layer whose (flat, row-major) weights are `w`: the
/// weights themselves, or, with a batchnorm folded into the layer and [`Rank::Weights`], the
/// layer's own weights before the fold (as `torch.nn.utils.prune` sees them).
pub fn rank_values<'a>(p: &Params, w: &'a [f32], rank: Rank) -> Cow<'a, [f32]> {
    match (&p.folded, rank) {
        (Some(norm), Rank::Weights) => {
            let cols = p.weight.dims()[1..].iter().product();
            Cow::Owned(norm.own_weights(w, cols))
        }
        _ => Cow::Borrowed(w),
    }
}

/// How many of `n` items `sparsity` removes: `round(sparsity × n)`, ties to even (as Python's
/// `round` in `torch.nn.utils.prune`).
pub fn prune_count(sparsity: f64, n: usize) -> usize {
    ((sparsity * n as f64).round_ties_even().max(0.0) as usize).min(n)
}

/// Marks the `k` smallest of `keys` (by value, then position) as removed.
fn remove_smallest(keys: &[f32], k: usize) -> Vec<bool> {
    let mut keep = vec![true; keys.len()];
    if k == 0 {
        return keep;
    }
    let mut order: Vec<u32> = (0..keys.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| {
        keys[*a as usize]
            .total_cmp(&keys[*b as usize])
            .then(a.cmp(b))
    };
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, cmp);
    }
    for &i in &order[..k.min(order.len())] {
        keep[i as usize] = false;
    }
    keep
}

/// Per-layer magnitude pruning (`l1_unstructured`): removes exactly `round(sparsity × n)`
/// weights of smallest |w|.
pub fn l1_mask(weights: &[f32], sparsity: f64) -> Vec<bool> {
    let abs: Vec<f32> = weights.iter().map(|w| w.abs()).collect();
    remove_smallest(&abs, prune_count(sparsity, weights.len()))
}

/// One magnitude ranking across several layers (`global_unstructured` with `L1Unstructured`):
/// exactly `round(sparsity × total)` weights removed over all of them together.
pub fn global_masks(layers: &[&[f32]], sparsity: f64) -> Vec<Vec<bool>> {
    let abs: Vec<f32> = layers
        .iter()
        .flat_map(|w| w.iter().map(|v| v.abs()))
        .collect();
    let keep = remove_smallest(&abs, prune_count(sparsity, abs.len()));
    let mut out = Vec::with_capacity(layers.len());
    let mut start = 0;
    for w in layers {
        out.push(keep[start..start + w.len()].to_vec());
        start += w.len();
    }
    out
}

/// SplitMix64: a tiny, fixed generator so a seed gives the same mask in every build.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by rejection so there is no modulo bias.
    fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let v = self.next();
            if v < zone {
                return v % n;
            }
        }
    }
}

/// Random pruning (the baseline): exactly `round(sparsity × n)` weights removed, chosen by a
/// seeded partial Fisher–Yates shuffle.
pub fn random_mask(n: usize, sparsity: f64, seed: u64) -> Vec<bool> {
    let k = prune_count(sparsity, n);
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64(seed);
    let mut keep = vec![true; n];
    for i in 0..k {
        let j = i + rng.below((n - i) as u64) as usize;
        idx.swap(i, j);
        keep[idx[i]] = false;
    }
    keep
}

/// N:M semi-structured pruning: in every `m` consecutive weights of a row (a `cols`-wide
/// row-major matrix; conv rows are the flattened in×kh×kw), keep the `n` largest |w|. A shorter
/// tail group at the end of a row keeps its `min(n, len)` largest.
pub fn nm_mask(weights: &[f32], cols: usize, n: usize, m: usize) -> Vec<bool> {
    let mut keep = vec![false; weights.len()];
    if cols == 0 || m == 0 {
        return keep;
    }
    for (r, row) in weights.chunks(cols).enumerate() {
        for (g, group) in row.chunks(m).enumerate() {
            let base = r * cols + g * m;
            let mut order: Vec<usize> = (0..group.len()).collect();
            // Largest first; the earlier position wins a tie.
            order.sort_by(|a, b| group[*b].abs().total_cmp(&group[*a].abs()).then(a.cmp(b)));
            for &i in order.iter().take(n) {
                keep[base + i] = true;
            }
        }
    }
    keep
}

/// Han et al.'s threshold: removes |w| < quality × std(w), the layer's (unbiased) standard
/// deviation as `torch.std` computes it.
pub fn std_mask(weights: &[f32], quality: f64) -> Vec<bool> {
    let n = weights.len();
    if n < 2 {
        return vec![true; n];
    }
    let mean = weights.iter().map(|w| *w as f64).sum::<f64>() / n as f64;
    let var = weights
        .iter()
        .map(|w| (*w as f64 - mean).powi(2))
        .sum::<f64>()
        / (n - 1) as f64;
    let threshold = quality * var.sqrt();
    weights
        .iter()
        .map(|w| (w.abs() as f64) >= threshold)
        .collect()
}

/// Why a layer's outputs cannot be removed by structured pruning, or why the layers asked for
/// do not fit the model's channel groups (see [`super::groups`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StructuredError {
    #[error("no layer #{0}")]
    NoLayer(usize),
    #[error("it is a {0} layer, not linear/conv")]
    NotLinear(&'static str),
    #[error(
        "it is a grouped convolution (groups = {0}); only groups = 1 and depthwise convolutions can lose filters"
    )]
    Grouped(usize),
    /// A layer whose outputs structured pruning does not remove (a conv1d, a linear layer over
    /// tokens).
    #[error(
        "it is a {0}; structured pruning removes the outputs of linear layers on vectors and conv2d filters"
    )]
    Unsupported(&'static str),
    #[error(
        "{0} produces the model's output (class scores); removing its outputs would remove classes"
    )]
    Output(String),
    #[error(
        "its channels are tied to the model input's, which \"{reader}\" reads; the model input is never shrunk"
    )]
    Input { reader: String },
    #[error(
        "its channels are tied to the model's output, which \"{output}\" produces; the model output is never shrunk"
    )]
    OutputTied { output: String },
    #[error("its channels reach \"{reader}\", which {why}")]
    Opaque { reader: String, why: String },
    #[error(
        "{a} (sparsity {sa}, norm {na}) and {b} (sparsity {sb}, norm {nb}) lose the same channels (tied through \"{via}\"); give every layer of the group one sparsity and norm"
    )]
    Conflict {
        a: String,
        sa: f64,
        na: &'static str,
        b: String,
        sb: f64,
        nb: &'static str,
        via: String,
    },
}

fn norm_name(norm: Norm) -> &'static str {
    match norm {
        Norm::L1 => "l1",
        Norm::L2 => "l2",
    }
}

/// Checks that structured pruning can remove outputs of `layer`: a linear layer or a conv with
/// groups = 1 or depthwise, not the output layer, with at least one output channel that is not
/// tied to the model input, the model output or an operation structured pruning does not
/// follow. Returns the layer's group in `graph`.
pub fn structured_check(
    model: &Model,
    graph: &ChannelGraph,
    layer: usize,
) -> Result<usize, StructuredError> {
    let Some(this) = model.layers.get(layer) else {
        return Err(StructuredError::NoLayer(layer));
    };
    match &this.op {
        Op::Conv2d(p, _) if p.is_conv1d() => return Err(StructuredError::Unsupported("conv1d")),
        Op::Linear(_) if this.in_shape.len() != 1 => {
            return Err(StructuredError::Unsupported("linear layer over tokens"));
        }
        Op::Linear(_) => {}
        Op::Conv2d(p, g) if g.groups > 1 => {
            let in_ch = model.shape_of(model.input_of(layer)).first().copied();
            if in_ch != Some(g.groups) || p.weight.dims().first() != in_ch.as_ref() {
                return Err(StructuredError::Grouped(g.groups));
            }
        }
        Op::Conv2d(..) => {}
        other => return Err(StructuredError::NotLinear(other.name())),
    }
    if !model.layers[layer + 1..]
        .iter()
        .any(|l| l.params().is_some())
    {
        return Err(StructuredError::Output(this.name.clone()));
    }
    let Some(group) = graph.group_of(layer) else {
        return Err(StructuredError::NotLinear(this.op.name()));
    };
    let mut first = None;
    for c in 0..graph.width[layer + 1].0 {
        match &graph.channels[graph.channel(layer + 1, c)].fixed {
            None => return Ok(group),
            Some(f) => {
                first.get_or_insert(f);
            }
        }
    }
    Err(match first {
        Some(Fixed::Input { reader }) => StructuredError::Input {
            reader: reader.clone(),
        },
        Some(Fixed::Output { layer }) => StructuredError::OutputTied {
            output: layer.clone(),
        },
        Some(Fixed::Opaque { layer, why }) => StructuredError::Opaque {
            reader: layer.clone(),
            why: why.clone(),
        },
        None => StructuredError::NotLinear(this.op.name()),
    })
}

/// The conflict between two layers of one group asking different structured pruning.
pub fn structured_conflict(
    model: &Model,
    graph: &ChannelGraph,
    group: usize,
    a: (usize, f64, Norm),
    b: (usize, f64, Norm),
) -> StructuredError {
    let name = |l: usize| {
        model
            .layers
            .get(l)
            .map_or_else(String::new, |l| l.name.clone())
    };
    StructuredError::Conflict {
        a: name(a.0),
        sa: a.1,
        na: norm_name(a.2),
        b: name(b.0),
        sb: b.1,
        nb: norm_name(b.2),
        via: graph.groups[group]
            .couplers
            .first()
            .map_or_else(String::new, |&l| name(l)),
    }
}

/// For each structurally pruned layer (index into `Model::layers`), the original rows kept.
pub type KeptRows = Vec<(usize, Vec<usize>)>;

/// Structured pruning of the groups of several layers (see [`super::groups`]): each listed
/// layer asks for its group to lose `round(sparsity × channels)` of its channels, ranked by
/// `norm`; layers of one group must ask the same. Groups are pruned in model order, each ranked
/// on its current weights (after earlier groups removed some of its members' inputs). Returns
/// the smaller model and, for every member of a pruned group, the original rows kept.
pub fn shrink_structured(
    model: &Model,
    layers: &[(usize, f64, Norm)],
    rank: Rank,
) -> Result<(Model, KeptRows), CompressError> {
    let graph = ChannelGraph::analyze(model);
    let refuse = |layer: usize, e: StructuredError| CompressError::Structured {
        layer: model
            .layers
            .get(layer)
            .map_or_else(|| format!("#{layer}"), |l| l.name.clone()),
        msg: e.to_string(),
    };
    let mut requests: Vec<(usize, (usize, f64, Norm))> = Vec::new();
    for &(layer, sparsity, norm) in layers {
        let g = structured_check(model, &graph, layer).map_err(|e| refuse(layer, e))?;
        match requests.iter().find(|r| r.0 == g) {
            Some(&(_, first)) if first.1 != sparsity || first.2 != norm => {
                let e = structured_conflict(model, &graph, g, first, (layer, sparsity, norm));
                return Err(refuse(layer, e));
            }
            Some(_) => {}
            None => requests.push((g, (layer, sparsity, norm))),
        }
    }
    requests.sort_by_key(|r| graph.groups[r.0].members.first().copied());
    let mut m = model.clone();
    let mut kept = Vec::new();
    for (_, (layer, sparsity, norm)) in requests {
        // Earlier groups changed their consumers' inputs, not which channels are tied.
        let graph = ChannelGraph::analyze(&m);
        let g = structured_check(&m, &graph, layer).map_err(|e| refuse(layer, e))?;
        let removed = removed_channels(&m, &graph, g, sparsity, norm, rank)?;
        for &l in &graph.groups[g].members {
            let rows = (0..graph.width[l + 1].0)
                .filter(|&c| !removed[graph.channel(l + 1, c)])
                .collect();
            kept.push((l, rows));
        }
        m = shrink_channels(&m, &graph, &removed)?;
    }
    kept.sort_by_key(|k| k.0);
    Ok((m, kept))
}

/// The channels (indices into `graph.channels`) group `group` loses: in each part (channels of
/// the same producers), the `round(sparsity × channels)` removable ones whose member filters
/// have the smallest summed norm (L1: Σ|w| over every member filter; L2: the sum of each
/// member filter's L2 norm), keeping at least one channel of the part.
fn removed_channels(
    model: &Model,
    graph: &ChannelGraph,
    group: usize,
    sparsity: f64,
    norm: Norm,
    rank: Rank,
) -> Result<Vec<bool>, CompressError> {
    let mut weights = std::collections::BTreeMap::new();
    for &l in &graph.groups[group].members {
        let layer = &model.layers[l];
        let Some(p) = layer.params() else {
            continue;
        };
        let cols: usize = p.weight.dims()[1..].iter().product();
        let w = p
            .weight
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|source| CompressError::Tensor {
                layer: layer.name.clone(),
                source,
            })?;
        weights.insert(l, (rank_values(p, &w, rank).into_owned(), cols));
    }
    let row_norm = |l: usize, r: usize| -> f64 {
        let Some((w, cols)) = weights.get(&l) else {
            return 0.0;
        };
        let row = w.get(r * cols..(r + 1) * cols).unwrap_or(&[]);
        match norm {
            Norm::L1 => row.iter().map(|v| v.abs() as f64).sum(),
            Norm::L2 => row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt(),
        }
    };
    let mut removed = vec![false; graph.channels.len()];
    for part in &graph.groups[group].parts {
        let free: Vec<usize> = part
            .iter()
            .copied()
            .filter(|&k| graph.channels[k].fixed.is_none())
            .collect();
        let scores: Vec<f32> = free
            .iter()
            .map(|&k| {
                graph.channels[k]
                    .rows
                    .iter()
                    .map(|&(l, r)| row_norm(l, r))
                    .sum::<f64>() as f32
            })
            .collect();
        let k = prune_count(sparsity, part.len())
            .min(part.len().saturating_sub(1))
            .min(free.len());
        for (keep, &c) in remove_smallest(&scores, k).iter().zip(&free) {
            removed[c] = !keep;
        }
    }
    Ok(removed)
}

fn index_tensor(idx: &[usize]) -> candle_core::Result<Tensor> {
    let v: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    Tensor::from_vec(v, idx.len(), &Device::Cpu)
}

/// `stored × new / old`, for a layer whose tensors shrank from `old` to `new` values.
fn scale_bytes(stored: usize, new: usize, old: usize) -> usize {
    if old == 0 {
        return stored;
    }
    ((stored as u128 * new as u128) / old as u128) as usize
}

fn slot(s: Source) -> usize {
    match s {
        Source::Input => 0,
        Source::Layer(j) => j + 1,
    }
}

/// Removes the channels flagged in `removed` (indices into `graph.channels`) everywhere: the
/// output rows (and biases) of every linear/conv producing them, depthwise filters, unfolded
/// batchnorm entries, and the input columns of every linear/conv reading them (each channel of
/// a flattened `[C, H, W]` value is its `H·W` columns).
///
/// The result computes what the *masked* model computes: the same model with every removed
/// channel's producer rows, biases and depthwise filters set to zero. A removed channel is then
/// 0 where it is produced; what that 0 becomes on its way to a reader (a batchnorm's shift,
/// sigmoid(0) = 0.5, sums and products of such constants through add and mul) is a constant the
/// reader would have multiplied, so it is folded into the reader's bias. That fold is exact for
/// a linear reader and an unpadded conv; at the borders of a padded conv (or after a padded
/// average pool) the padding zeros make the true contribution smaller, so there the shrunk
/// model differs slightly from the masked one (only where a removed channel carries a nonzero
/// constant: an unfolded batchnorm or an activation with f(0) ≠ 0 on its way).
pub fn shrink_channels(
    model: &Model,
    graph: &ChannelGraph,
    removed: &[bool],
) -> Result<Model, CompressError> {
    let n = model.layers.len();
    let structured = |layer: &str, msg: String| CompressError::Structured {
        layer: layer.to_string(),
        msg,
    };
    // Per slot, one flag per entry of the first dimension.
    let gone: Vec<Vec<bool>> = (0..=n)
        .map(|s| {
            let (c, span) = graph.width[s];
            (0..c * span)
                .map(|e| removed.get(graph.channel(s, e / span)).copied() == Some(true))
                .collect()
        })
        .collect();
    if gone[0].iter().any(|g| *g) {
        return Err(structured(
            "input",
            "the model input cannot lose channels".into(),
        ));
    }
    let mut konst: Vec<Vec<f32>> = Vec::with_capacity(n + 1);
    konst.push(vec![0.0; gone[0].len()]);
    let mut m = model.clone();
    for i in 0..n {
        let o = i + 1;
        let layer = &model.layers[i];
        let name = layer.name.as_str();
        let terr = |source| CompressError::Tensor {
            layer: name.to_string(),
            source,
        };
        let reads: Vec<usize> = model.reads(i).into_iter().map(slot).collect();
        let r0 = reads[0];
        let len = gone[o].len();
        let from = |r: usize| konst[r].clone();
        let k: Vec<f32> = match &layer.op {
            Op::ChannelAffine { scale, shift } => {
                let s = scale.to_vec1::<f32>().map_err(terr)?;
                let h = shift.to_vec1::<f32>().map_err(terr)?;
                konst[r0]
                    .iter()
                    .zip(s.iter().zip(&h))
                    .map(|(k, (s, h))| k * s + h)
                    .collect()
            }
            Op::Activation(a) => {
                let v = from(r0);
                let t = Tensor::from_vec(v.clone(), v.len(), &Device::Cpu).map_err(terr)?;
                // The dense forward's own activation, so folded constants match it exactly.
                crate::model::activation(&t, *a)
                    .and_then(|t| t.to_dtype(DType::F32))
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(terr)?
            }
            Op::Flatten if konst[r0].len() != len && !konst[r0].is_empty() => {
                let per = len / konst[r0].len();
                konst[r0]
                    .iter()
                    .flat_map(|v| std::iter::repeat_n(*v, per))
                    .collect()
            }
            Op::Add { .. } | Op::Mul { .. } => {
                let add = matches!(layer.op, Op::Add { .. });
                let mut acc = from(r0);
                for &r in &reads[1..] {
                    for (a, b) in acc.iter_mut().zip(&konst[r]) {
                        *a = if add { *a + b } else { *a * b };
                    }
                }
                acc
            }
            Op::Concat { .. } => reads.iter().flat_map(|&r| konst[r].clone()).collect(),
            Op::Flatten
            | Op::MaxPool2d(_)
            | Op::AvgPool2d(_)
            | Op::GlobalAvgPool
            | Op::AdaptiveAvgPool(_)
            | Op::Upsample { .. }
            | Op::Dropout(_) => from(r0),
            // Removed rows are zero; nothing else carries a removed channel.
            _ => Vec::new(),
        };
        konst.push(if k.len() == len { k } else { vec![0.0; len] });

        let cut_in = gone[r0].iter().any(|g| *g);
        let cut_out = gone[o].iter().any(|g| *g);
        let in_shape = m.shape_of(m.input_of(i)).to_vec();
        let ml = &mut m.layers[i];
        ml.in_shape = in_shape;
        if !cut_in && !cut_out {
            continue;
        }
        let old_params = ml.param_count();
        let keep_out: Vec<usize> = (0..len).filter(|&e| !gone[o][e]).collect();
        let keep_in: Vec<usize> = (0..gone[r0].len()).filter(|&e| !gone[r0][e]).collect();
        let mut groups = None;
        match &mut ml.op {
            Op::Conv2d(p, g) if g.groups > 1 => {
                // Depthwise: its filters go with its channels.
                let ids = index_tensor(&keep_out).map_err(terr)?;
                p.weight = p.weight.index_select(&ids, 0).map_err(terr)?;
                if let Some(b) = &p.bias {
                    p.bias = Some(b.index_select(&ids, 0).map_err(terr)?);
                }
                p.folded = p.folded.as_ref().map(|f| f.keep(&keep_out));
                g.groups = keep_out.len();
                groups = Some(keep_out.len());
            }
            Op::Linear(p) | Op::Conv2d(p, _) => {
                let dims = p.weight.dims().to_vec();
                if cut_in {
                    let (out, inputs) = (dims[0], dims[1]);
                    if inputs != gone[r0].len() {
                        return Err(structured(
                            name,
                            format!("takes {inputs} inputs but {} reach it", gone[r0].len()),
                        ));
                    }
                    let per: usize = dims[2..].iter().product();
                    let cols: Vec<usize> = (0..inputs).filter(|&e| gone[r0][e]).collect();
                    if cols.iter().any(|&e| konst[r0][e] != 0.0) {
                        let w = p
                            .weight
                            .flatten_all()
                            .and_then(|t| t.to_vec1::<f32>())
                            .map_err(terr)?;
                        let mut bias = match &p.bias {
                            Some(b) => b.to_vec1::<f32>().map_err(terr)?,
                            None => vec![0.0; out],
                        };
                        for (row, b) in bias.iter_mut().enumerate() {
                            let mut acc = 0f64;
                            for &e in &cols {
                                let start = (row * inputs + e) * per;
                                let sum: f64 =
                                    w[start..start + per].iter().map(|x| *x as f64).sum();
                                acc += sum * konst[r0][e] as f64;
                            }
                            *b += acc as f32;
                        }
                        p.bias = Some(Tensor::from_vec(bias, out, &Device::Cpu).map_err(terr)?);
                    }
                    let ids = index_tensor(&keep_in).map_err(terr)?;
                    p.weight = p.weight.index_select(&ids, 1).map_err(terr)?;
                }
                if cut_out {
                    let ids = index_tensor(&keep_out).map_err(terr)?;
                    p.weight = p.weight.index_select(&ids, 0).map_err(terr)?;
                    if let Some(b) = &p.bias {
                        p.bias = Some(b.index_select(&ids, 0).map_err(terr)?);
                    }
                    p.folded = p.folded.as_ref().map(|f| f.keep(&keep_out));
                }
            }
            Op::ChannelAffine { scale, shift } => {
                let ids = index_tensor(&keep_out).map_err(terr)?;
                *scale = scale.index_select(&ids, 0).map_err(terr)?;
                *shift = shift.index_select(&ids, 0).map_err(terr)?;
            }
            _ => {}
        }
        if let Some(d) = ml.out_shape.first_mut() {
            *d = keep_out.len();
        }
        ml.stored_bytes = scale_bytes(ml.stored_bytes, ml.param_count(), old_params);
        if cut_out && ml.params().is_some() {
            update_spec_outputs(&mut m, i, keep_out.len(), groups);
        }
    }
    Ok(m)
}

/// Keeps an explicit `out_features`/`out_channels` (and a depthwise conv's `groups`) in the
/// architecture in step with the shrunk layer, so a written model reloads.
fn update_spec_outputs(model: &mut Model, layer: usize, outputs: usize, groups: Option<usize>) {
    let name = model.layers[layer].name.clone();
    for (i, ls) in model.spec.layers.iter_mut().enumerate() {
        if ls.display_name(i) != name {
            continue;
        }
        match &mut ls.op {
            OpSpec::Linear {
                out_features: Some(n),
                ..
            } => *n = outputs,
            OpSpec::Conv2d {
                out_channels,
                groups: g,
                ..
            } => {
                if let Some(n) = out_channels {
                    *n = outputs;
                }
                if let Some(new) = groups {
                    *g = new;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_half_to_even_like_python() {
        assert_eq!(prune_count(0.5, 5), 2);
        assert_eq!(prune_count(0.5, 7), 4);
        assert_eq!(prune_count(0.3, 10), 3);
        assert_eq!(prune_count(0.0, 10), 0);
    }

    #[test]
    fn l1_breaks_ties_by_position() {
        let m = l1_mask(&[1.0, -1.0, 1.0, 2.0], 0.5);
        assert_eq!(m, vec![false, false, true, true]);
    }

    #[test]
    fn nm_keeps_two_of_four() {
        let w = [0.1, -0.5, 0.3, 0.2, 4.0, 3.0, -2.0, 1.0];
        assert_eq!(
            nm_mask(&w, 8, 2, 4),
            vec![false, true, true, false, true, true, false, false]
        );
    }

    #[test]
    fn random_is_seeded_and_exact() {
        let a = random_mask(100, 0.37, 7);
        assert_eq!(a, random_mask(100, 0.37, 7));
        assert_ne!(a, random_mask(100, 0.37, 8));
        assert_eq!(a.iter().filter(|k| !**k).count(), 37);
    }

    #[test]
    fn std_threshold() {
        // mean 0, unbiased std = sqrt(4/3 · 1.25) for [-2, -0.5, 0.5, 2]
        let w = [-2.0f32, -0.5, 0.5, 2.0];
        let std = ((4.0 + 0.25 + 0.25 + 4.0) / 3.0f64).sqrt();
        assert!(std > 0.5 && std < 2.0);
        assert_eq!(std_mask(&w, 1.0), vec![true, false, false, true]);
        assert_eq!(std_mask(&w, 0.0), vec![true; 4]);
    }
}
