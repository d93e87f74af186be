//! What `squeeze info` reports of a model, dense or compressed: each layer's output shape,
//! parameters, multiply-adds, stored bytes (a compressed layer's exact packed bytes, format and
//! sparsity) and output activation, the peak activation memory of one sample, and what loading
//! and running it allocates against the memory limit.

use serde::Serialize;

use super::{PruningRecord, SparsityBasis, StoredSparsity};
use crate::engine::CompressedModel;
use crate::model::Model;

#[derive(Debug, Serialize)]
pub struct LayerDescription {
    pub name: String,
    pub op: &'static str,
    pub output_shape: Vec<usize>,
    pub params: usize,
    pub macs: usize,
    /// Bytes of the layer's tensors as stored in the file (a compressed layer: its exact packed
    /// bytes).
    pub bytes: usize,
    /// A compressed layer's stored format (`csr8+u4/channel`), in the engine's names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// A compressed layer's pruned fraction of its original weights (as `squeeze eval`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<f64>,
    /// A compressed layer's fraction of its original weights exactly zero as stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zeros: Option<f64>,
    /// Bytes of one sample's output activation (f32).
    pub activation_bytes: usize,
    /// The layer's median single-sample time on one thread in µs (`info --time`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_us: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Description {
    pub model: String,
    pub input_shape: Vec<usize>,
    pub classes: usize,
    pub layers: Vec<LayerDescription>,
    pub params: usize,
    pub macs: usize,
    pub bytes: usize,
    /// A compressed model's pruned fraction of the original weights, exact zeros as stored,
    /// and where the sparsity comes from (see `squeeze eval`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zeros: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparsity_basis: Option<SparsityBasis>,
    /// Largest amount of activation memory alive at once for one sample (f32): a layer's input
    /// and output (one buffer for in-place operations), outputs kept for later residual
    /// additions, and kernel scratch (a convolution's im2col).
    pub peak_activation_bytes: usize,
    /// The layer that sets that peak.
    pub peak_activation_layer: String,
    /// What loading the model and running one sample allocates (parameters as f32 and one
    /// sample's activations): the figure checked against the memory limit.
    pub memory_bytes: u64,
    /// The memory limit (`--memory-limit`; the machine's physical memory by default).
    pub memory_limit_bytes: u64,
    /// The whole model's median single-sample latency on one thread in µs (`info --time`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<f64>,
}

/// The description of a dense model.
pub fn describe(model: &Model) -> Description {
    with_formats(model, &|_| None)
}

/// What a packed layer adds: its stored format, bytes and sparsity.
struct Stored {
    format: String,
    bytes: usize,
    sparsity: StoredSparsity,
}

/// The description of a compressed model: its layers as the file stores them, their sparsity
/// against the original model as `pruning` records it (stored zeros without a record).
pub fn describe_compressed(cm: &CompressedModel, pruning: Option<&PruningRecord>) -> Description {
    let packed: Vec<(usize, Stored)> = cm
        .packed_layers()
        .map(|(i, p)| {
            let l = &cm.model.layers[i];
            let sparsity = super::stored_sparsity(&l.name, p, l.param_count(), pruning);
            let format = p.format_name();
            (
                i,
                Stored {
                    format,
                    bytes: p.size_bytes(),
                    sparsity,
                },
            )
        })
        .collect();
    let mut info = with_formats(&cm.model, &|i| {
        packed.iter().find(|(j, _)| *j == i).map(|(_, s)| s)
    });
    let weights: usize = packed.iter().map(|(_, s)| s.sparsity.weights).sum();
    let weighted = |f: fn(&StoredSparsity) -> f64| {
        let sum: f64 = packed
            .iter()
            .map(|(_, s)| f(&s.sparsity) * s.sparsity.weights as f64)
            .sum();
        sum / weights.max(1) as f64
    };
    info.sparsity = Some(weighted(|s| s.sparsity));
    info.zeros = Some(weighted(|s| s.zeros));
    info.sparsity_basis = Some(if pruning.is_some() {
        SparsityBasis::Pruning
    } else {
        SparsityBasis::StoredZeros
    });
    info
}

/// `stored(i)`: how layer `i` is stored, when it is packed.
fn with_formats<'a>(model: &Model, stored: &dyn Fn(usize) -> Option<&'a Stored>) -> Description {
    let arena = super::arena(model, 4);
    let layers: Vec<LayerDescription> = model
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let packed = stored(i);
            LayerDescription {
                name: l.name.clone(),
                op: l.op.name(),
                output_shape: l.out_shape.clone(),
                params: l.param_count(),
                macs: l.macs(),
                bytes: packed.map_or(l.stored_bytes, |p| p.bytes),
                format: packed.map(|p| p.format.clone()),
                sparsity: packed.map(|p| p.sparsity.sparsity),
                zeros: packed.map(|p| p.sparsity.zeros),
                activation_bytes: l.out_shape.iter().product::<usize>() * 4,
                time_us: None,
            }
        })
        .collect();
    Description {
        model: model.source.display().to_string(),
        input_shape: model.input.shape.clone(),
        classes: model.num_classes(),
        params: layers.iter().map(|l| l.params).sum(),
        macs: layers.iter().map(|l| l.macs).sum(),
        bytes: layers.iter().map(|l| l.bytes).sum(),
        sparsity: None,
        zeros: None,
        sparsity_basis: None,
        peak_activation_bytes: arena.peak_bytes,
        peak_activation_layer: arena.peak_layer,
        memory_bytes: u64::try_from(crate::model::shape::run_bytes(&model.layers))
            .unwrap_or(u64::MAX),
        memory_limit_bytes: crate::limits::memory_limit(),
        latency_us: None,
        layers,
    }
}
