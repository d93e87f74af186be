//! `squeeze info`: the model's layers, parameters, MACs, bytes and activation memory.

use serde::Serialize;

use super::common::{Format, ModelArgs, human_bytes, load_model, thousands};
use crate::model::{Model, Op};

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
    /// Bytes of the layer's tensors as stored in the file.
    pub bytes: usize,
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
    /// Largest amount of activation memory alive at once for one sample (f32): a layer's input
    /// and output plus outputs kept for later residual additions.
    pub peak_activation_bytes: usize,
}

pub fn model_info(model: &Model) -> ModelInfo {
    let layers: Vec<LayerInfo> = model
        .layers
        .iter()
        .map(|l| LayerInfo {
            name: l.name.clone(),
            op: l.op.name(),
            output_shape: l.out_shape.clone(),
            params: l.param_count(),
            macs: l.macs(),
            bytes: l.stored_bytes,
            activation_bytes: l.out_shape.iter().product::<usize>() * 4,
        })
        .collect();
    ModelInfo {
        model: model.source.display().to_string(),
        input_shape: model.input.shape.clone(),
        classes: model.num_classes(),
        params: layers.iter().map(|l| l.params).sum(),
        macs: layers.iter().map(|l| l.macs).sum(),
        bytes: layers.iter().map(|l| l.bytes).sum(),
        peak_activation_bytes: peak_activation_bytes(model),
        layers,
    }
}

/// Peak live activation bytes for one sample, walking the graph in order.
pub fn peak_activation_bytes(model: &Model) -> usize {
    let bytes = |shape: &[usize]| shape.iter().product::<usize>() * 4;
    // Last layer index that reads each saved output.
    let mut last_use = vec![None; model.layers.len()];
    for (i, l) in model.layers.iter().enumerate() {
        if let Op::Add { from } = l.op {
            last_use[from] = Some(i);
        }
    }
    let mut peak = bytes(&model.input.shape);
    for (i, l) in model.layers.iter().enumerate() {
        let kept: usize = (0..i)
            .filter(|&j| last_use[j].is_some_and(|u| u > i))
            .map(|j| bytes(&model.layers[j].out_shape))
            .sum();
        peak = peak.max(bytes(&l.in_shape) + bytes(&l.out_shape) + kept);
    }
    peak
}

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let loaded = load_model(&args.model.model, args.model.arch.as_deref())?;
    let info = model_info(&loaded.model);
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
    s += &format!(
        "{:<12} {:<14} {:<14} {:>10} {:>12} {:>11} {:>11}\n",
        "layer", "op", "output", "params", "MACs", "bytes", "activation"
    );
    for l in &info.layers {
        s += &format!(
            "{:<12} {:<14} {:<14} {:>10} {:>12} {:>11} {:>11}\n",
            l.name,
            l.op,
            format!("{:?}", l.output_shape),
            thousands(l.params),
            thousands(l.macs),
            human_bytes(l.bytes),
            human_bytes(l.activation_bytes)
        );
    }
    s += &format!(
        "{:<42} {:>10} {:>12} {:>11}\n\npeak activation memory (one sample, f32): {}\n",
        "total",
        thousands(info.params),
        thousands(info.macs),
        human_bytes(info.bytes),
        human_bytes(info.peak_activation_bytes)
    );
    s
}
