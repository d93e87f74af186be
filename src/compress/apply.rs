//! `apply`: a model and a recipe in, a `Plan` out. Validation, structured pruning (which
//! shrinks the model), masks, weight quantization, then activation calibration on the
//! weight-compressed model (PyTorch's prepare → calibrate → convert order).
//!
//! `apply_held` does the same with decisions fixed elsewhere held as they are: a model that
//! fine-tuning already shrank, masks it trained with, k-means assignments whose shared values
//! it trained. Everything else (uniform levels, f16 rounding, calibration) is computed as
//! `apply` computes it, so a model trained with fake quantization compresses to exactly the
//! values it was trained with.

use std::borrow::Cow;
use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use super::calibrate::calibrate;
use super::prune::{
    global_masks, l1_mask, nm_mask, random_mask, rank_values, shrink_structured, std_mask,
};
use super::quant::{kmeans, quantize_uniform, round_float};
use super::recipe::{Pruning, Recipe, RecipeError, WeightFormat};
use super::{FloatStorage, Plan, QuantizedLayer, WeightValues};
use crate::model::Model;

#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error("layer {layer}: structured pruning: {msg}")]
    Structured { layer: String, msg: String },
    #[error("layer {layer}: weight {index} ({value}) does not fit {storage:?} storage")]
    Overflow {
        layer: String,
        index: usize,
        value: f32,
        storage: FloatStorage,
    },
    #[error("activation calibration: {0}")]
    Calibration(String),
    #[error("layer {layer}: {source}")]
    Tensor {
        layer: String,
        source: candle_core::Error,
    },
    /// A held decision does not fit the layer it is given for.
    #[error("layer {layer}: held {what}: {msg}")]
    Held {
        layer: String,
        what: &'static str,
        msg: String,
    },
}

/// Decisions `apply_held` keeps instead of recomputing, keyed by layer index (into
/// `Model::layers`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Held {
    /// The model was already shrunk by the recipe's structured pruning: do not shrink again.
    pub shrunk: bool,
    /// Kept weights (`true` = kept, row-major), replacing the recipe's pruning for the layer.
    pub masks: BTreeMap<usize, Vec<bool>>,
    /// Weight sharing with fixed assignments: every weight's code and the shared values,
    /// for layers the recipe quantizes with `kmeans` (pruned weights point at an exact 0.0).
    pub codebooks: BTreeMap<usize, HeldCodebook>,
}

/// One layer's k-means assignments and shared values.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldCodebook {
    pub codes: Vec<u8>,
    pub codebook: Vec<f32>,
}

/// Compresses `model` as `recipe` says. `calibration` (already scaled inputs, back to back,
/// and their count) is needed when the recipe quantizes activations. Every linear/conv layer
/// appears in `Plan::layers`, in model order, untouched ones as f32 with every weight kept.
pub fn apply(
    model: &Model,
    recipe: &Recipe,
    calibration: Option<(&[f32], usize)>,
) -> Result<Plan, CompressError> {
    apply_held(model, recipe, calibration, &Held::default())
}

/// `apply` with the decisions in `held` kept as they are (see [`Held`]).
pub fn apply_held(
    model: &Model,
    recipe: &Recipe,
    calibration: Option<(&[f32], usize)>,
    held: &Held,
) -> Result<Plan, CompressError> {
    let resolved = recipe.validate(model)?;

    let structured: Vec<_> = resolved
        .layers
        .iter()
        .filter_map(|l| match l.prune {
            Pruning::Structured { sparsity, norm } if sparsity > 0.0 => {
                Some((l.layer, sparsity, norm))
            }
            _ => None,
        })
        .collect();
    let (model, resolved) = if structured.is_empty() || held.shrunk {
        (model.clone(), resolved)
    } else {
        let (shrunk, _) = shrink_structured(model, &structured, resolved.rank)?;
        // Row lengths changed: group sizes and N:M must still fit the shrunk layers.
        let resolved = recipe.validate(&shrunk)?;
        (shrunk, resolved)
    };

    // Weights as flat row-major matrices, and what magnitude pruning ranks where that is not
    // the weights (a layer's own weights under a folded batchnorm).
    let mut mats = Vec::with_capacity(resolved.layers.len());
    let mut ranked = Vec::with_capacity(resolved.layers.len());
    for lp in &resolved.layers {
        let terr = |source| CompressError::Tensor {
            layer: lp.name.clone(),
            source,
        };
        let Some(p) = model.layers[lp.layer].params() else {
            continue;
        };
        let dims = p.weight.dims();
        let rows = dims[0];
        let cols: usize = dims[1..].iter().product();
        let w = p
            .weight
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(terr)?;
        let bias = match &p.bias {
            Some(b) => Some(b.to_vec1::<f32>().map_err(terr)?),
            None => None,
        };
        ranked.push(match rank_values(p, &w, resolved.rank) {
            Cow::Owned(own) => Some(own),
            Cow::Borrowed(_) => None,
        });
        mats.push((rows, cols, w, bias));
    }
    let keys: Vec<&[f32]> = mats
        .iter()
        .zip(&ranked)
        .map(|((_, _, w, _), own)| own.as_deref().unwrap_or(w))
        .collect();

    // Masks.
    let mut masks: Vec<Vec<bool>> = resolved
        .layers
        .iter()
        .zip(&mats)
        .zip(&keys)
        .map(|((lp, (_, cols, _, _)), w)| match lp.prune {
            Pruning::None | Pruning::Structured { .. } | Pruning::Global { .. } => {
                vec![true; w.len()]
            }
            Pruning::L1 { sparsity } => l1_mask(w, sparsity),
            Pruning::Random { sparsity, seed } => random_mask(w.len(), sparsity, seed),
            Pruning::NM { n, m } => nm_mask(w, *cols, n, m),
            Pruning::Std { quality } => std_mask(w, quality),
        })
        .collect();
    if let Some((sparsity, members)) = &resolved.global {
        let slots: Vec<usize> = resolved
            .layers
            .iter()
            .enumerate()
            .filter(|(_, lp)| members.contains(&lp.layer))
            .map(|(k, _)| k)
            .collect();
        let weights: Vec<&[f32]> = slots.iter().map(|&k| keys[k]).collect();
        for (k, mask) in slots.iter().zip(global_masks(&weights, *sparsity)) {
            masks[*k] = mask;
        }
    }
    for (lp, mask) in resolved.layers.iter().zip(masks.iter_mut()) {
        if let Some(m) = held.masks.get(&lp.layer) {
            if m.len() != mask.len() {
                return Err(CompressError::Held {
                    layer: lp.name.clone(),
                    what: "mask",
                    msg: format!("{} flags for {} weights", m.len(), mask.len()),
                });
            }
            mask.clone_from(m);
        }
    }
    if let Some(&layer) = held
        .masks
        .keys()
        .chain(held.codebooks.keys())
        .find(|l| !resolved.layers.iter().any(|lp| lp.layer == **l))
    {
        return Err(CompressError::Held {
            layer: format!("#{layer}"),
            what: "decision",
            msg: "not a linear/conv layer of the model".into(),
        });
    }

    // Quantization.
    let mut layers = Vec::with_capacity(resolved.layers.len());
    for ((lp, (rows, cols, mut w, bias)), kept) in resolved.layers.iter().zip(mats).zip(masks) {
        if held.codebooks.contains_key(&lp.layer)
            && !matches!(lp.weights, WeightFormat::KMeans { .. })
        {
            return Err(CompressError::Held {
                layer: lp.name.clone(),
                what: "codebook",
                msg: "the recipe does not quantize this layer with kmeans".into(),
            });
        }
        for (v, k) in w.iter_mut().zip(&kept) {
            if !k {
                *v = 0.0;
            }
        }
        let values = match lp.weights {
            WeightFormat::Float(storage) => {
                let data = round_float(&w, storage).map_err(|index| CompressError::Overflow {
                    layer: lp.name.clone(),
                    index,
                    value: w[index],
                    storage,
                })?;
                WeightValues::Float { data, storage }
            }
            WeightFormat::Uniform {
                bits,
                symmetric,
                granularity,
            } => quantize_uniform(&w, &kept, rows, cols, bits, symmetric, granularity),
            WeightFormat::KMeans { bits } => match held.codebooks.get(&lp.layer) {
                Some(h) => held_codebook(h, &kept, bits, &lp.name)?,
                None => kmeans(&w, &kept, bits).values,
            },
        };
        layers.push(QuantizedLayer {
            layer: lp.layer,
            rows,
            cols,
            kept,
            values,
            bias,
            activation: None,
        });
    }
    let mut plan = Plan { model, layers };

    if let Some(settings) = &resolved.activations {
        let Some((data, count)) = calibration else {
            return Err(CompressError::Calibration(
                "the recipe quantizes activations ([activations]) but no calibration inputs were given"
                    .into(),
            ));
        };
        let reference = plan.try_dequantized_model()?;
        // An embedding reads token ids, which are looked up, not multiplied.
        let multiplies = |l: &QuantizedLayer| {
            !matches!(reference.layers[l.layer].op, crate::model::Op::Embedding(_))
        };
        let targets: Vec<usize> = plan
            .layers
            .iter()
            .filter(|l| multiplies(l))
            .map(|l| l.layer)
            .collect();
        let quants = calibrate(&reference, &targets, settings, data, count)?;
        for (l, q) in plan.layers.iter_mut().filter(|l| multiplies(l)).zip(quants) {
            l.activation = Some(q);
        }
    }
    Ok(plan)
}

/// Checks held k-means assignments against the layer and the recipe's width.
fn held_codebook(
    h: &HeldCodebook,
    kept: &[bool],
    bits: u8,
    layer: &str,
) -> Result<WeightValues, CompressError> {
    let bad = |msg: String| {
        Err(CompressError::Held {
            layer: layer.to_string(),
            what: "codebook",
            msg,
        })
    };
    if h.codes.len() != kept.len() {
        return bad(format!(
            "{} codes for {} weights",
            h.codes.len(),
            kept.len()
        ));
    }
    if h.codebook.is_empty() || h.codebook.len() > 1 << bits {
        return bad(format!(
            "{} shared values do not fit {bits}-bit codes",
            h.codebook.len()
        ));
    }
    if let Some(i) = h.codes.iter().position(|&c| c as usize >= h.codebook.len()) {
        return bad(format!(
            "code {} of weight {i} is past the codebook",
            h.codes[i]
        ));
    }
    if let Some(v) = h.codebook.iter().find(|v| !v.is_finite()) {
        return bad(format!("shared value {v} is not finite"));
    }
    if let Some(i) = (0..kept.len()).find(|&i| !kept[i] && h.codebook[h.codes[i] as usize] != 0.0) {
        return bad(format!("pruned weight {i} does not point at an exact 0.0"));
    }
    Ok(WeightValues::Codebook {
        bits,
        codes: h.codes.clone(),
        codebook: h.codebook.clone(),
    })
}

/// Pruned weights against total weights, for the whole model and per layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Sparsity {
    pub pruned: usize,
    pub total: usize,
    pub layers: Vec<LayerSparsity>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LayerSparsity {
    pub name: String,
    pub pruned: usize,
    pub total: usize,
}

impl LayerSparsity {
    pub fn fraction(&self) -> f64 {
        ratio(self.pruned, self.total)
    }
}

impl Sparsity {
    /// `pruned / total` (0 for a model without weights).
    pub fn fraction(&self) -> f64 {
        ratio(self.pruned, self.total)
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

impl Plan {
    /// The fraction of weights pruned by masks, over the plan's own (possibly shrunk) layers.
    /// Structurally removed weights are not in them: see `sparsity_against` for those.
    pub fn achieved_sparsity(&self) -> Sparsity {
        let layers: Vec<LayerSparsity> = self
            .layers
            .iter()
            .map(|l| LayerSparsity {
                name: self.layer_name(l.layer),
                pruned: l.kept.iter().filter(|k| !**k).count(),
                total: l.kept.len(),
            })
            .collect();
        Sparsity {
            pruned: layers.iter().map(|l| l.pruned).sum(),
            total: layers.iter().map(|l| l.total).sum(),
            layers,
        }
    }

    /// Sparsity relative to `original` (the model `apply` was given): weights removed by
    /// structured pruning count as pruned, totals are the original layers' weight counts.
    pub fn sparsity_against(&self, original: &Model) -> Sparsity {
        let layers: Vec<LayerSparsity> = self
            .layers
            .iter()
            .map(|l| {
                let name = self.layer_name(l.layer);
                let kept = l.kept.iter().filter(|k| **k).count();
                let total = original
                    .layer_index(&name)
                    .and_then(|i| original.layers[i].params())
                    .map_or(l.kept.len(), |p| p.weight.elem_count());
                LayerSparsity {
                    name,
                    pruned: total.saturating_sub(kept),
                    total,
                }
            })
            .collect();
        Sparsity {
            pruned: layers.iter().map(|l| l.pruned).sum(),
            total: layers.iter().map(|l| l.total).sum(),
            layers,
        }
    }

    /// The fraction of the original weights that are exactly zero as stored: pruned, removed
    /// by structured pruning, or quantized to zero — at least `sparsity_against`'s figure, and
    /// the `zeros` that `squeeze eval` reads from a packed file.
    pub fn zeros_against(&self, original: &Model) -> f64 {
        let (mut zeros, mut total) = (0usize, 0usize);
        for l in &self.layers {
            let name = self.layer_name(l.layer);
            let weights = original
                .layer_index(&name)
                .and_then(|i| original.layers[i].params())
                .map_or(l.kept.len(), |p| p.weight.elem_count());
            let nonzero = l.dequantized().iter().filter(|v| **v != 0.0).count();
            zeros += weights.saturating_sub(nonzero);
            total += weights;
        }
        ratio(zeros, total)
    }

    fn layer_name(&self, index: usize) -> String {
        self.model
            .layers
            .get(index)
            .map_or_else(|| format!("#{index}"), |l| l.name.clone())
    }

    /// `dequantized_model`, reporting a plan whose layers do not match its model's shapes.
    pub fn try_dequantized_model(&self) -> Result<Model, CompressError> {
        let mut model = self.model.clone();
        for ql in &self.layers {
            let Some(layer) = model.layers.get_mut(ql.layer) else {
                continue;
            };
            let name = layer.name.clone();
            let terr = |source| CompressError::Tensor {
                layer: name.clone(),
                source,
            };
            if let Some(p) = layer.op.params_mut() {
                let dims = p.weight.dims().to_vec();
                p.weight = Tensor::from_vec(ql.dequantized(), dims, &Device::Cpu).map_err(terr)?;
                p.bias = match &ql.bias {
                    Some(b) => Some(Tensor::from_slice(b, b.len(), &Device::Cpu).map_err(terr)?),
                    None => None,
                };
            }
        }
        Ok(model)
    }

    /// The plan's model with every compressed layer's weights replaced by their dequantized
    /// values (zeros where pruned): the reference compressed kernels are compared with, the
    /// model activation calibration observes, and what `--dense-out` writes.
    pub fn dequantized_model(&self) -> Model {
        // `apply` builds every QuantizedLayer with rows × cols equal to its layer's weight
        // count, so rebuilding the tensors cannot fail for a plan it made.
        self.try_dequantized_model()
            .expect("plan layers match their model's weight shapes")
    }
}
