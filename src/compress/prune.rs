//! Pruning: which weights survive. Masks (`true` = kept) for unstructured and N:M methods, and
//! structured pruning, which physically removes output neurons/filters and the inputs of the
//! layer that consumes them, producing a smaller `Model`.
//!
//! Counts follow PyTorch's `torch.nn.utils.prune`: `round(sparsity × n)` with Python's
//! round-half-to-even. Ties in magnitude are broken by position (the earlier weight is removed
//! first), so every mask is deterministic.

use candle_core::{DType, Device, Tensor};

use super::CompressError;
use super::recipe::Norm;
use crate::model::{Model, Op, OpSpec, Source};

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

/// The output rows (neurons/filters) structured pruning keeps, ascending: removes
/// `round(sparsity × rows)` rows of smallest L1/L2 norm, always keeping at least one.
pub fn structured_rows(
    weights: &[f32],
    rows: usize,
    cols: usize,
    sparsity: f64,
    norm: Norm,
) -> Vec<usize> {
    let norms: Vec<f32> = (0..rows)
        .map(|r| {
            let row = &weights[r * cols..(r + 1) * cols];
            match norm {
                Norm::L1 => row.iter().map(|w| w.abs() as f64).sum::<f64>() as f32,
                Norm::L2 => row.iter().map(|w| (*w as f64).powi(2)).sum::<f64>().sqrt() as f32,
            }
        })
        .collect();
    let k = prune_count(sparsity, rows).min(rows.saturating_sub(1));
    let keep = remove_smallest(&norms, k);
    (0..rows).filter(|r| keep[*r]).collect()
}

/// Why the outputs of a layer cannot be removed by structured pruning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StructuredError {
    #[error("no layer #{0}")]
    NoLayer(usize),
    #[error("it is a grouped convolution (groups = {0}); only groups = 1 can lose filters")]
    Grouped(usize),
    #[error("it is a {0} layer, not linear/conv")]
    NotLinear(&'static str),
    /// A layer whose outputs structured pruning does not remove (a conv1d, a linear layer over
    /// tokens).
    #[error(
        "it is a {0}; structured pruning removes the outputs of linear layers on vectors and conv2d filters"
    )]
    Unsupported(&'static str),
    /// An op between the layer and its consumer that mixes the layer's outputs with each other.
    #[error(
        "{via} ({op}) mixes {layer}'s outputs with each other before a linear/conv layer reads them"
    )]
    Mixes {
        via: String,
        op: &'static str,
        layer: String,
    },
    #[error(
        "{0} produces the model's output (class scores); removing its outputs would remove classes"
    )]
    Output(String),
    #[error(
        "the residual add \"{add}\" reads {layer}'s output, coupling its channels with the other branch; \
         prune the coupled layers together or leave {layer} unpruned"
    )]
    AddReads { add: String, layer: String },
    #[error("its output feeds the grouped convolution {consumer} (groups = {groups})")]
    FeedsGrouped { consumer: String, groups: usize },
    #[error(
        "the residual add \"{add}\" adds the output of \"{from}\" to {layer}'s channels, coupling them; \
         prune the coupled layers together or leave {layer} unpruned"
    )]
    AddCouples {
        add: String,
        from: String,
        layer: String,
    },
    #[error("the softmax \"{softmax}\" normalizes over {layer}'s outputs")]
    Softmax { softmax: String, layer: String },
    #[error(
        "the residual add \"{add}\" reads the output of \"{via}\" (downstream of {layer}), coupling its channels"
    )]
    AddDownstream {
        add: String,
        via: String,
        layer: String,
    },
    #[error(
        "the output of {via} flows on to more than the next layer ({readers}): removing {layer}'s outputs would change what those read; structured pruning follows a chain"
    )]
    Branch {
        via: String,
        readers: String,
        layer: String,
    },
    #[error(
        "{join} ({op}) joins {layer}'s outputs with another value before a linear/conv layer reads them"
    )]
    Joined {
        join: String,
        op: &'static str,
        layer: String,
    },
    #[error("no linear/conv layer consumes {0}'s output")]
    NoConsumer(String),
}

/// Checks that the outputs of `layer` can be removed: it is a linear/conv (groups = 1) whose
/// output reaches exactly one later linear/conv through per-channel ops (activation, dropout,
/// unfolded batchnorm, pooling, flatten) and no residual `add` couples its channels. Returns
/// the consuming layer's index, or why not.
pub fn structured_path(model: &Model, layer: usize) -> Result<usize, StructuredError> {
    let layers = &model.layers;
    let Some(this) = layers.get(layer) else {
        return Err(StructuredError::NoLayer(layer));
    };
    match &this.op {
        Op::Conv2d(p, _) if p.is_conv1d() => return Err(StructuredError::Unsupported("conv1d")),
        Op::Linear(_) if this.in_shape.len() != 1 => {
            return Err(StructuredError::Unsupported("linear layer over tokens"));
        }
        Op::Linear(_) => {}
        Op::Conv2d(_, g) if g.groups == 1 => {}
        Op::Conv2d(_, g) => {
            return Err(StructuredError::Grouped(g.groups));
        }
        other => return Err(StructuredError::NotLinear(other.name())),
    }
    if !layers[layer + 1..].iter().any(|l| l.params().is_some()) {
        return Err(StructuredError::Output(this.name.clone()));
    }
    let adds_reading = |src: usize| -> Option<&str> {
        layers.iter().find_map(|l| match l.op {
            Op::Add { from } if from == Source::Layer(src) => Some(l.name.as_str()),
            _ => None,
        })
    };
    // The value must flow only to the next layer, which reads it as its input.
    let branches = |src: usize| -> Result<(), StructuredError> {
        let readers = model.consumers(src);
        if readers == [src + 1] && layers[src + 1].input.is_none() {
            return Ok(());
        }
        Err(StructuredError::Branch {
            via: layers[src].name.clone(),
            readers: readers
                .iter()
                .map(|&r| layers[r].name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            layer: this.name.clone(),
        })
    };
    if let Some(add) = adds_reading(layer) {
        return Err(StructuredError::AddReads {
            add: add.to_string(),
            layer: this.name.clone(),
        });
    }
    branches(layer)?;
    for (j, l) in layers.iter().enumerate().skip(layer + 1) {
        match &l.op {
            Op::Linear(_) => return Ok(j),
            Op::Conv2d(_, g) => {
                if g.groups != 1 {
                    return Err(StructuredError::FeedsGrouped {
                        consumer: l.name.clone(),
                        groups: g.groups,
                    });
                }
                return Ok(j);
            }
            Op::Add { from } => {
                return Err(StructuredError::AddCouples {
                    add: l.name.clone(),
                    from: model.source_name(*from),
                    layer: this.name.clone(),
                });
            }
            Op::Mul { .. } | Op::Concat { .. } => {
                return Err(StructuredError::Joined {
                    join: l.name.clone(),
                    op: l.op.name(),
                    layer: this.name.clone(),
                });
            }
            Op::Softmax => {
                return Err(StructuredError::Softmax {
                    softmax: l.name.clone(),
                    layer: this.name.clone(),
                });
            }
            Op::LayerNorm(_) => {
                return Err(StructuredError::Mixes {
                    via: l.name.clone(),
                    op: l.op.name(),
                    layer: this.name.clone(),
                });
            }
            Op::ChannelAffine { .. }
            | Op::Activation(_)
            | Op::MaxPool2d(_)
            | Op::AvgPool2d(_)
            | Op::GlobalAvgPool
            | Op::AdaptiveAvgPool(_)
            | Op::Upsample { .. }
            | Op::Flatten
            | Op::Dropout(_) => {}
        }
        if let Some(add) = adds_reading(j) {
            return Err(StructuredError::AddDownstream {
                add: add.to_string(),
                via: l.name.clone(),
                layer: this.name.clone(),
            });
        }
        branches(j)?;
    }
    Err(StructuredError::NoConsumer(this.name.clone()))
}

/// For each structurally pruned layer (index into `Model::layers`), the original rows kept.
pub type KeptRows = Vec<(usize, Vec<usize>)>;

/// Structured pruning of several layers, in model order: each layer's rows are ranked on its
/// current weights (after earlier layers removed some of its inputs), removed, and the model
/// shrunk. Returns the smaller model and, per pruned layer, the original row indices kept.
pub fn shrink_structured(
    model: &Model,
    layers: &[(usize, f64, Norm)],
) -> Result<(Model, KeptRows), CompressError> {
    let mut order = layers.to_vec();
    order.sort_by_key(|l| l.0);
    let mut model = model.clone();
    let mut kept = Vec::new();
    for (layer, sparsity, norm) in order {
        let name = model.layers[layer].name.clone();
        let tensor_err = |source| CompressError::Tensor {
            layer: name.clone(),
            source,
        };
        let Some(p) = model.layers[layer].params() else {
            return Err(CompressError::Structured {
                layer: name,
                msg: "not a linear/conv layer".into(),
            });
        };
        let dims = p.weight.dims().to_vec();
        let rows = dims[0];
        let cols: usize = dims[1..].iter().product();
        let w = p
            .weight
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(tensor_err)?;
        let keep = structured_rows(&w, rows, cols, sparsity, norm);
        model = shrink(&model, layer, &keep)?;
        kept.push((layer, keep));
    }
    Ok((model, kept))
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

/// Removes the output rows of `layer` not in `keep` (ascending), the matching values of the
/// per-channel ops after it, and the matching inputs of the layer that consumes it.
///
/// A removed output is 0 in the masked dense model (its weights and bias are zero); what that
/// 0 becomes after the ops in between (sigmoid(0) = 0.5, a batchnorm's shift) is a constant the
/// consumer would have multiplied, so it is folded into the consumer's bias. That fold is exact
/// for a linear consumer and an unpadded conv; at the borders of a padded conv (or after a
/// padded average pool) the padding zeros make the true contribution smaller, so there the
/// shrunk model differs slightly from the masked one (only for activations with f(0) ≠ 0 or
/// unfolded batchnorm).
pub fn shrink(model: &Model, layer: usize, keep: &[usize]) -> Result<Model, CompressError> {
    let name = model.layers[layer].name.clone();
    let consumer = structured_path(model, layer).map_err(|e| CompressError::Structured {
        layer: name.clone(),
        msg: e.to_string(),
    })?;
    let terr = |l: &str| {
        let l = l.to_string();
        move |source| CompressError::Tensor { layer: l, source }
    };
    let mut m = model.clone();

    // The pruned layer itself.
    let rows = {
        let l = &mut m.layers[layer];
        let old_params = l.param_count();
        let (Op::Linear(p) | Op::Conv2d(p, _)) = &mut l.op else {
            // structured_path accepted it, so it is a linear/conv.
            return Err(CompressError::Structured {
                layer: name,
                msg: "not a linear/conv layer".into(),
            });
        };
        let rows = p.weight.dims()[0];
        if keep.is_empty()
            || keep.iter().any(|&r| r >= rows)
            || keep.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(CompressError::Structured {
                layer: name,
                msg: format!(
                    "rows to keep must be ascending, distinct, non-empty and below {rows}"
                ),
            });
        }
        let ids = index_tensor(keep).map_err(terr(&name))?;
        p.weight = p.weight.index_select(&ids, 0).map_err(terr(&name))?;
        if let Some(b) = &p.bias {
            p.bias = Some(b.index_select(&ids, 0).map_err(terr(&name))?);
        }
        l.out_shape[0] = keep.len();
        l.stored_bytes = scale_bytes(l.stored_bytes, l.param_count(), old_params);
        rows
    };
    update_spec_outputs(&mut m, layer, keep.len());

    // Along dimension 0 of the value flowing to the consumer: the kept indices and, for the
    // removed ones, the constant each would have carried in the masked dense model.
    let mut keep_idx: Vec<usize> = keep.to_vec();
    let mut removed: Vec<usize> = (0..rows)
        .filter(|r| keep.binary_search(r).is_err())
        .collect();
    let mut consts: Vec<f32> = vec![0.0; removed.len()];

    for j in layer + 1..consumer {
        let prev_out = m.layers[j - 1].out_shape.clone();
        let lname = m.layers[j].name.clone();
        let l = &mut m.layers[j];
        let old_params = l.param_count();
        l.in_shape = prev_out.clone();
        match &mut l.op {
            Op::Activation(a) => {
                if !consts.is_empty() {
                    let t = Tensor::from_vec(consts.clone(), consts.len(), &Device::Cpu)
                        .map_err(terr(&lname))?;
                    // The dense forward's own activation, so folded constants match it exactly.
                    consts = crate::model::activation(&t, *a)
                        .and_then(|t| t.to_dtype(DType::F32))
                        .and_then(|t| t.to_vec1::<f32>())
                        .map_err(terr(&lname))?;
                }
            }
            Op::ChannelAffine { scale, shift } => {
                let s = scale.to_vec1::<f32>().map_err(terr(&lname))?;
                let h = shift.to_vec1::<f32>().map_err(terr(&lname))?;
                for (c, v) in removed.iter().zip(consts.iter_mut()) {
                    *v = *v * s[*c] + h[*c];
                }
                let ids = index_tensor(&keep_idx).map_err(terr(&lname))?;
                *scale = scale.index_select(&ids, 0).map_err(terr(&lname))?;
                *shift = shift.index_select(&ids, 0).map_err(terr(&lname))?;
            }
            Op::Flatten if l.out_shape.len() == 1 && prev_out.len() > 1 => {
                // Channel c of a [C, H, W] value becomes columns c·H·W .. (c+1)·H·W.
                let old_in_hw: usize = l.out_shape[0] / (keep_idx.len() + removed.len());
                let expand = |idx: &[usize]| -> Vec<usize> {
                    idx.iter()
                        .flat_map(|c| c * old_in_hw..(c + 1) * old_in_hw)
                        .collect()
                };
                consts = consts
                    .iter()
                    .flat_map(|v| std::iter::repeat_n(*v, old_in_hw))
                    .collect();
                keep_idx = expand(&keep_idx);
                removed = expand(&removed);
            }
            Op::Flatten
            | Op::MaxPool2d(_)
            | Op::AvgPool2d(_)
            | Op::GlobalAvgPool
            | Op::AdaptiveAvgPool(_)
            | Op::Upsample { .. }
            | Op::Dropout(_) => {}
            // structured_path stops at linear/conv/add/softmax: none of these is in between.
            Op::Linear(_)
            | Op::Conv2d(..)
            | Op::Add { .. }
            | Op::Mul { .. }
            | Op::Concat { .. }
            | Op::LayerNorm(_)
            | Op::Softmax => {
                return Err(CompressError::Structured {
                    layer: name,
                    msg: format!(
                        "unexpected {} layer {lname} before the consumer",
                        l.op.name()
                    ),
                });
            }
        }
        l.out_shape[0] = keep_idx.len();
        l.stored_bytes = scale_bytes(l.stored_bytes, l.param_count(), old_params);
    }

    // The consumer: drop the matching inputs, fold the removed constants into its bias.
    let prev_out = m.layers[consumer - 1].out_shape.clone();
    let cname = m.layers[consumer].name.clone();
    let c = &mut m.layers[consumer];
    let old_params = c.param_count();
    c.in_shape = prev_out;
    let (Op::Linear(p) | Op::Conv2d(p, _)) = &mut c.op else {
        return Err(CompressError::Structured {
            layer: name,
            msg: format!("consumer {cname} is not linear/conv"),
        });
    };
    let dims = p.weight.dims().to_vec();
    let out = dims[0];
    let inputs = dims[1];
    let per_input: usize = dims[2..].iter().product();
    if inputs != keep_idx.len() + removed.len() {
        return Err(CompressError::Structured {
            layer: name,
            msg: format!(
                "consumer {cname} takes {inputs} inputs but {} reach it",
                keep_idx.len() + removed.len()
            ),
        });
    }
    if consts.iter().any(|v| *v != 0.0) {
        let w = p
            .weight
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(terr(&cname))?;
        let mut bias = match &p.bias {
            Some(b) => b.to_vec1::<f32>().map_err(terr(&cname))?,
            None => vec![0.0; out],
        };
        for (o, b) in bias.iter_mut().enumerate() {
            let mut acc = 0f64;
            for (col, v) in removed.iter().zip(&consts) {
                let start = (o * inputs + col) * per_input;
                let sum: f64 = w[start..start + per_input].iter().map(|x| *x as f64).sum();
                acc += sum * *v as f64;
            }
            *b += acc as f32;
        }
        p.bias = Some(Tensor::from_vec(bias, out, &Device::Cpu).map_err(terr(&cname))?);
    }
    let ids = index_tensor(&keep_idx).map_err(terr(&cname))?;
    p.weight = p.weight.index_select(&ids, 1).map_err(terr(&cname))?;
    let new_params = c.param_count();
    c.stored_bytes = scale_bytes(c.stored_bytes, new_params, old_params);
    Ok(m)
}

/// Keeps an explicit `out_features`/`out_channels` in the architecture in step with the
/// shrunk layer, so a written model reloads.
fn update_spec_outputs(model: &mut Model, layer: usize, outputs: usize) {
    let name = model.layers[layer].name.clone();
    for (i, ls) in model.spec.layers.iter_mut().enumerate() {
        if ls.display_name(i) != name {
            continue;
        }
        match &mut ls.op {
            OpSpec::Linear {
                out_features: Some(n),
                ..
            }
            | OpSpec::Conv2d {
                out_channels: Some(n),
                ..
            } => *n = outputs,
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

    #[test]
    fn structured_keeps_at_least_one() {
        let w = [1.0, 1.0, 2.0, 2.0, 0.5, 0.5];
        assert_eq!(structured_rows(&w, 3, 2, 0.99, Norm::L1), vec![1]);
        assert_eq!(structured_rows(&w, 3, 2, 0.4, Norm::L2), vec![0, 1]);
    }
}
