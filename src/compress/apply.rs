//! `apply`: a model and a recipe in, a `Plan` out. Validation, structured pruning (which
//! shrinks the model), masks, weight quantization, then activation calibration on the
//! weight-compressed model (PyTorch's prepare → calibrate → convert order).

use candle_core::{Device, Tensor};

use super::calibrate::calibrate;
use super::prune::{global_masks, l1_mask, nm_mask, random_mask, shrink_structured, std_mask};
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
}

/// Compresses `model` as `recipe` says. `calibration` (already scaled inputs, back to back,
/// and their count) is needed when the recipe quantizes activations. Every linear/conv layer
/// appears in `Plan::layers`, in model order, untouched ones as f32 with every weight kept.
pub fn apply(
    model: &Model,
    recipe: &Recipe,
    calibration: Option<(&[f32], usize)>,
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
    let (model, resolved) = if structured.is_empty() {
        (model.clone(), resolved)
    } else {
        let (shrunk, _) = shrink_structured(model, &structured)?;
        // Row lengths changed: group sizes and N:M must still fit the shrunk layers.
        let resolved = recipe.validate(&shrunk)?;
        (shrunk, resolved)
    };

    // Weights as flat row-major matrices.
    let mut mats = Vec::with_capacity(resolved.layers.len());
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
        mats.push((rows, cols, w, bias));
    }

    // Masks.
    let mut masks: Vec<Vec<bool>> = resolved
        .layers
        .iter()
        .zip(&mats)
        .map(|(lp, (_, cols, w, _))| match lp.prune {
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
        let weights: Vec<&[f32]> = slots.iter().map(|&k| mats[k].2.as_slice()).collect();
        for (k, mask) in slots.iter().zip(global_masks(&weights, *sparsity)) {
            masks[*k] = mask;
        }
    }

    // Quantization.
    let mut layers = Vec::with_capacity(resolved.layers.len());
    for ((lp, (rows, cols, mut w, bias)), kept) in resolved.layers.iter().zip(mats).zip(masks) {
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
            WeightFormat::KMeans { bits } => kmeans(&w, &kept, bits).values,
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
        let targets: Vec<usize> = plan.layers.iter().map(|l| l.layer).collect();
        let quants = calibrate(&reference, &targets, settings, data, count)?;
        for (l, q) in plan.layers.iter_mut().zip(quants) {
            l.activation = Some(q);
        }
    }
    Ok(plan)
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
            if let crate::model::Op::Linear(p) | crate::model::Op::Conv2d(p, _) = &mut layer.op {
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
