//! `squeeze info`: the model's layers, parameters, MACs, bytes, activation memory and what
//! loading and running it allocates — of a dense model or of a compressed one (written by
//! `apply` or `finetune`), then with each layer's stored format and exact packed bytes. The
//! figures are `measure::describe`'s; this module parses and prints.

use std::time::Duration;

use super::common::{Format, ModelArgs, column_width, load_model, thousands};
use crate::compress::Plan;
use crate::engine::CompressedModel;
use crate::measure::describe::{Description, describe, describe_compressed};
use crate::measure::{PruningRecord, SparsityBasis};
use crate::units;

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Also time each layer: the median single-sample time on one thread (at least 20 runs
    /// and 0.3 s on an input of zeros), to see which layers the latency goes to
    #[arg(long)]
    pub time: bool,
}

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    // A compressed file is described as it is stored: its layers' formats and packed bytes.
    let (mut info, loaded) = if crate::engine::is_compressed_file(&args.model.model) {
        let path = &args.model.model;
        let pruning = PruningRecord::read(path).map_err(anyhow::Error::msg)?;
        let cm = crate::engine::load_compressed(path)?;
        (describe_compressed(&cm, pruning.as_ref()), Ok(cm))
    } else {
        let model = load_model(&args.model.model, args.model.arch.as_deref())?.model;
        (describe(&model), Err(model))
    };
    if args.time {
        // A dense model runs as dense f32 layers on the engine.
        let cm = match loaded {
            Ok(cm) => cm,
            Err(model) => CompressedModel::build(&Plan {
                model,
                layers: Vec::new(),
            })?,
        };
        let zeros = vec![0f32; cm.input_len()];
        let times = crate::engine::layer_times(&cm, &zeros, 20, Duration::from_millis(300));
        let latency = crate::engine::latency_with(&cm, &zeros, 20, Duration::from_millis(300));
        for (l, t) in info.layers.iter_mut().zip(times) {
            l.time_us = Some(t);
        }
        info.latency_us = Some(latency.median_us);
    }
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&info)?),
        Format::Text => print!("{}", render_text(&info)),
    }
    Ok(())
}

pub fn render_text(info: &Description) -> String {
    let mut s = format!(
        "model {}  input {:?}  {} classes\n\n",
        info.model, info.input_shape, info.classes
    );
    let compressed = info.layers.iter().any(|l| l.format.is_some());
    // Column widths from the longest cell, so long names (`features.10.conv.0.0`) keep the
    // columns aligned; the former fixed widths are the least.
    let shapes: Vec<String> = info
        .layers
        .iter()
        .map(|l| format!("{:?}", l.output_shape))
        .collect();
    let nw = column_width("layer", info.layers.iter().map(|l| l.name.as_str())).max(12);
    let ow = column_width("op", info.layers.iter().map(|l| l.op)).max(14);
    let sw = column_width("output", shapes.iter().map(String::as_str)).max(14);
    let fw = column_width(
        "stored as",
        info.layers.iter().filter_map(|l| l.format.as_deref()),
    )
    .max(22);
    let format_col = |f: &str, sparsity: &str| {
        if compressed {
            format!(" {f:<fw$} {sparsity:>8}")
        } else {
            String::new()
        }
    };
    // `info --time`: each layer's single-sample time and its share of their sum.
    let timed: f64 = info.layers.iter().filter_map(|l| l.time_us).sum();
    let time_col = |t: Option<f64>| match t {
        Some(t) => format!(
            " {:>10} {:>6}",
            format!("{t:.1}"),
            format!("{:.1} %", t / timed.max(1e-9) * 100.0)
        ),
        None => String::new(),
    };
    let time_head = if info.latency_us.is_some() {
        format!(" {:>10} {:>6}", "µs", "share")
    } else {
        String::new()
    };
    s += &format!(
        "{:<nw$} {:<ow$} {:<sw$} {:>10} {:>12}{} {:>11} {:>11}{time_head}\n",
        "layer",
        "op",
        "output",
        "params",
        "MACs",
        format_col("stored as", "sparsity"),
        "bytes",
        "activation"
    );
    for (l, shape) in info.layers.iter().zip(&shapes) {
        s += &format!(
            "{:<nw$} {:<ow$} {:<sw$} {:>10} {:>12}{} {:>11} {:>11}{}\n",
            l.name,
            l.op,
            shape,
            thousands(l.params),
            thousands(l.macs),
            format_col(
                l.format.as_deref().unwrap_or(""),
                &l.sparsity
                    .map(|s| format!("{:.1} %", s * 100.0))
                    .unwrap_or_default()
            ),
            units::bytes(l.bytes as f64),
            units::bytes(l.activation_bytes as f64),
            time_col(l.time_us)
        );
    }
    let tw = nw + 1 + ow + 1 + sw;
    s += &format!(
        "{:<tw$} {:>10} {:>12}{} {:>11}\n\npeak activation memory (one sample, f32, kernel scratch included): {} at {}\n",
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
    if let Some(latency) = info.latency_us {
        s += &format!(
            "single-sample latency on one thread: {:.1} µs (the layers' medians add up to {:.1} µs)\n",
            latency, timed
        );
    }
    s += &format!(
        "memory to load and run one sample (f32 parameters and activations): {} of the {} memory limit\n",
        units::bytes(info.memory_bytes as f64),
        units::bytes(info.memory_limit_bytes as f64)
    );
    s
}
