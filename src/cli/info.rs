//! `squeeze info`: the model's layers, parameters, MACs, bytes, activation memory and what
//! loading and running it allocates — of a dense model or of a compressed one (written by
//! `apply` or `finetune`), then with each layer's stored format and exact packed bytes.

use serde::Serialize;

use super::common::{Format, ModelArgs, load_model, thousands};
use crate::engine::CompressedModel;
use crate::measure::{PruningRecord, SparsityBasis, StoredSparsity};
use crate::model::Model;
use crate::units;

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Serialize)]
pub struct LayerInfo {
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
}

#[derive(Debug, Serialize)]
pub struct ModelInfo {
    pub model: String,
    pub input_shape: Vec<usize>,
    pub classes: usize,
    pub layers: Vec<LayerInfo>,
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
}

pub fn model_info(model: &Model) -> ModelInfo {
    info_with_formats(model, &|_| None)
}

/// What `info` adds for a packed layer: its stored format, bytes and sparsity.
struct Stored {
    format: String,
    bytes: usize,
    sparsity: StoredSparsity,
}

/// The description of a compressed model: its layers as the file stores them, their sparsity
/// against the original model as `pruning` records it (stored zeros without a record).
pub fn compressed_info(cm: &CompressedModel, pruning: Option<&PruningRecord>) -> ModelInfo {
    let packed: Vec<(usize, Stored)> = cm
        .packed_layers()
        .map(|(i, p)| {
            let l = &cm.model.layers[i];
            let sparsity = crate::measure::stored_sparsity(&l.name, p, l.param_count(), pruning);
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
    let mut info = info_with_formats(&cm.model, &|i| {
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
fn info_with_formats<'a>(model: &Model, stored: &dyn Fn(usize) -> Option<&'a Stored>) -> ModelInfo {
    let arena = crate::measure::arena(model, 4);
    let layers: Vec<LayerInfo> = model
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let packed = stored(i);
            LayerInfo {
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
            }
        })
        .collect();
    ModelInfo {
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
        layers,
    }
}

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    // A compressed file is described as it is stored: its layers' formats and packed bytes.
    let info = if crate::engine::is_compressed_file(&args.model.model) {
        let path = &args.model.model;
        let pruning = PruningRecord::read(path).map_err(anyhow::Error::msg)?;
        compressed_info(&crate::engine::load_compressed(path)?, pruning.as_ref())
    } else {
        model_info(&load_model(&args.model.model, args.model.arch.as_deref())?.model)
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&info)?),
        Format::Text => print!("{}", render_text(&info)),
    }
    Ok(())
}

pub fn render_text(info: &ModelInfo) -> String {
    let mut s = format!(
        "model {}  input {:?}  {} classes\n\n",
        info.model, info.input_shape, info.classes
    );
    let compressed = info.layers.iter().any(|l| l.format.is_some());
    let format_col = |f: &str, sparsity: &str| {
        if compressed {
            format!(" {f:<22} {sparsity:>8}")
        } else {
            String::new()
        }
    };
    s += &format!(
        "{:<12} {:<14} {:<14} {:>10} {:>12}{} {:>11} {:>11}\n",
        "layer",
        "op",
        "output",
        "params",
        "MACs",
        format_col("stored as", "sparsity"),
        "bytes",
        "activation"
    );
    for l in &info.layers {
        s += &format!(
            "{:<12} {:<14} {:<14} {:>10} {:>12}{} {:>11} {:>11}\n",
            l.name,
            l.op,
            format!("{:?}", l.output_shape),
            thousands(l.params),
            thousands(l.macs),
            format_col(
                l.format.as_deref().unwrap_or(""),
                &l.sparsity
                    .map(|s| format!("{:.1} %", s * 100.0))
                    .unwrap_or_default()
            ),
            units::bytes(l.bytes as f64),
            units::bytes(l.activation_bytes as f64)
        );
    }
    s += &format!(
        "{:<42} {:>10} {:>12}{} {:>11}\n\npeak activation memory (one sample, f32, kernel scratch included): {} at {}\n",
        "total",
        thousands(info.params),
        thousands(info.macs),
        format_col(
            "",
            &info
                .sparsity
                .map(|s| format!("{:.1} %", s * 100.0))
                .unwrap_or_default()
        ),
        units::bytes(info.bytes as f64),
        units::bytes(info.peak_activation_bytes as f64),
        info.peak_activation_layer
    );
    if let (Some(sparsity), Some(zeros), Some(basis)) =
        (info.sparsity, info.zeros, info.sparsity_basis)
    {
        s += &match basis {
            SparsityBasis::Pruning => format!(
                "sparsity: {:.1} % of the original weights pruned; {:.1} % exactly zero as stored\n",
                sparsity * 100.0,
                zeros * 100.0
            ),
            SparsityBasis::StoredZeros => format!(
                "sparsity: {:.1} % exact zeros among the stored weights (the file has no pruning record: export it again to record the pruning)\n",
                sparsity * 100.0
            ),
        };
    }
    s += &format!(
        "memory to load and run one sample (f32 parameters and activations): {} of the {} memory limit\n",
        units::bytes(info.memory_bytes as f64),
        units::bytes(info.memory_limit_bytes as f64)
    );
    s
}
