//! `squeeze eval`: accuracy, size and latency of a model (compressed by a recipe, or a
//! compressed file) on an evaluation set.

use std::path::PathBuf;

use serde::Serialize;

use super::common::{
    DataArgs, Format, ModelArgs, check_evaluation_memory, column_width, load_model, prepare,
};
use super::recipe_args::RecipeArgs;
use crate::compress::{self, Plan, Recipe};
use crate::data::{DataOptions, EvalSet, Split};
use crate::engine::{self, CompressedModel};
use crate::measure::{self, Measurement, OutputKind, PruningRecord, SparsityBasis, Timing};
use crate::model::Model;
use crate::units;

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Another model on the same data: report top-1 agreement with it and the mean KL
    /// divergence from its softmax.
    #[arg(long, value_name = "FILE")]
    pub reference: Option<PathBuf>,
    /// Samples for activation calibration (any evaluation-set format); default: the training
    /// set beside the evaluation set, else the evaluation set's first samples.
    #[arg(long, value_name = "PATH")]
    pub calibration_data: Option<PathBuf>,
    /// Skip the latency and throughput measurements.
    #[arg(long)]
    pub no_timing: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Serialize)]
struct EvalReport<'a> {
    model: String,
    data: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    recipe: Option<&'a Recipe>,
    #[serde(flatten)]
    measurement: &'a Measurement,
}

/// A model ready to run: compressed by this process (with its plan and the model it came
/// from) or reloaded from a compressed file.
pub struct Prepared {
    pub compressed: CompressedModel,
    pub plan: Option<Plan>,
    /// What pruning left of the original model's layers: from the plan, or as the file
    /// records it (`None` for a file written without a record).
    pub pruning: Option<PruningRecord>,
    pub recipe: Option<Recipe>,
}

/// Loads `--model` and compresses it as the recipe flags say (dense when they say nothing).
/// A compressed file is run as it is.
pub fn prepare_model(
    model: &ModelArgs,
    recipe: &RecipeArgs,
    calibration: impl FnOnce(&Model, usize) -> anyhow::Result<Vec<f32>>,
) -> anyhow::Result<Prepared> {
    if engine::is_compressed_file(&model.model) {
        if recipe.recipe()?.is_some() {
            anyhow::bail!(
                "{} is already compressed; a recipe applies to a dense model",
                model.model.display()
            );
        }
        let compressed = engine::load_compressed(&model.model)?;
        let meta = crate::files::read_metadata(&model.model)
            .map_err(|e| anyhow::anyhow!("{}: {e}", model.model.display()))?;
        if let Some(w) = crate::files::partner_warning(&model.model, &meta) {
            eprintln!("warning: {w}");
        }
        let pruning = PruningRecord::from_metadata(&meta)
            .map_err(|e| anyhow::anyhow!("{}: {e}", model.model.display()))?;
        return Ok(Prepared {
            compressed,
            plan: None,
            pruning,
            recipe: None,
        });
    }
    let loaded = load_model(&model.model, model.arch.as_deref())?;
    let recipe = recipe.recipe()?;
    let effective = recipe.clone().unwrap_or_default();
    let calib = match &effective.activations {
        Some(a) => Some((
            calibration(&loaded.model, a.calibration_samples)?,
            a.calibration_samples,
        )),
        None => None,
    };
    let calib_ref = calib.as_ref().map(|(v, n)| {
        let n = (*n).min(v.len() / loaded.model.input_len().max(1));
        (v.as_slice(), n)
    });
    let plan = compress::apply(&loaded.model, &effective, calib_ref)?;
    let compressed = CompressedModel::build(&plan)?;
    Ok(Prepared {
        compressed,
        pruning: Some(PruningRecord::of(&plan, &loaded.model)),
        plan: Some(plan),
        recipe,
    })
}

/// Calibration inputs: `path` when given; else the training set beside the evaluation set
/// (the folder holding both MNIST splits, or the `train-*` file beside a `t10k-*` one), so
/// the images that report accuracy are not the ones calibrated on; else, saying so, the
/// evaluation set's first samples. A folder holding both splits gives its training pair.
pub fn calibration_inputs(
    path: Option<&PathBuf>,
    fallback: &EvalSet,
    model: &Model,
    count: usize,
) -> anyhow::Result<Vec<f32>> {
    let train = calibration_options(count, model);
    let set = match path {
        Some(p) => crate::data::load(p, &train)?,
        None => match crate::data::training_set_beside(&fallback.source) {
            Some(beside) => {
                let set = crate::data::load(&beside, &train)?;
                eprintln!(
                    "note: calibrating activations on the first {} samples of {}, the training set beside the evaluation set (--calibration-data to use other data)",
                    count.min(set.len()),
                    set.source.display()
                );
                set
            }
            None => {
                eprintln!(
                    "note: calibrating activations on the first {} samples of {}, the evaluation set itself: no training set beside it (give --calibration-data to keep the two apart)",
                    count.min(fallback.len()),
                    fallback.source.display()
                );
                fallback.clone()
            }
        },
    };
    prepare(model, &set.truncated(count))
}

/// What calibration reads for `model`: the training split of a folder holding both, and only
/// the samples it uses.
pub fn calibration_options(count: usize, model: &Model) -> DataOptions {
    DataOptions {
        split: Split::Train,
        limit: Some(count.max(1)),
        ..Default::default()
    }
    .for_model(model)
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    // The model is read first: an image folder is resized to its input.
    let mut read = None;
    let prepared = prepare_model(&args.model, &args.recipe, |m, count| {
        let set = read.insert(args.data.load(m)?);
        calibration_inputs(args.calibration_data.as_ref(), set, m, count)
    })?;
    let set = match read {
        Some(set) => set,
        None => args.data.load(&prepared.compressed.model)?,
    };
    let cm = &prepared.compressed;
    check_evaluation_memory(&cm.model, &set)?;
    let inputs = prepare(&cm.model, &set)?;
    let reference = match &args.reference {
        Some(path) => {
            let r = prepare_model(
                &ModelArgs {
                    model: path.clone(),
                    arch: None,
                },
                &RecipeArgs::default(),
                |_, _| Ok(Vec::new()),
            )?;
            if r.compressed.num_classes() != cm.num_classes() {
                anyhow::bail!(
                    "{}: reference has {} outputs, the model has {}",
                    path.display(),
                    r.compressed.num_classes(),
                    cm.num_classes()
                );
            }
            let rin = prepare(&r.compressed.model, &set)?;
            let out = r.compressed.logits(&rin, set.len());
            Some((out, OutputKind::of(&r.compressed.model)))
        }
        None => None,
    };
    let timing = Timing {
        latency: !args.no_timing,
        throughput: !args.no_timing,
    };
    let m = measure::measure(
        cm,
        prepared.plan.as_ref(),
        prepared.pruning.as_ref(),
        &inputs,
        &set.labels,
        reference.as_ref().map(|(o, k)| (o.as_slice(), *k)),
        timing,
    );
    let report = EvalReport {
        model: args.model.model.display().to_string(),
        data: set.source.display().to_string(),
        recipe: prepared.recipe.as_ref(),
        measurement: &m,
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => print!("{}", render_text(&report, timing)),
    }
    Ok(())
}

fn render_text(r: &EvalReport, timing: Timing) -> String {
    let m = r.measurement;
    let a = &m.accuracy;
    let mut s = format!(
        "model    {}\ndata     {}\nsamples  {}\ntop-1    {:.2} %\ntop-5    {:.2} %\nloss     {:.4}\n",
        r.model,
        r.data,
        a.samples,
        a.accuracy * 100.0,
        a.top5 * 100.0,
        a.loss
    );
    if let (Some(ag), Some(kl)) = (a.agreement, a.kl) {
        s += &format!(
            "agreement with reference  {:.2} %\nKL from reference  {kl:.5}\n",
            ag * 100.0
        );
    }
    s += &format!(
        "size     {} packed ({} bytes), dense f32 {}, ratio {:.1}×, Huffman-coded {}\n",
        units::bytes(m.size_bytes as f64),
        m.size_bytes,
        units::bytes(m.dense_bytes as f64),
        m.ratio,
        units::bytes(m.entropy_bytes as f64),
    );
    s += &match m.sparsity_basis {
        SparsityBasis::Pruning => format!(
            "sparsity {:.1} % of the original weights pruned; {:.1} % exactly zero as stored\n",
            m.sparsity * 100.0,
            m.zeros * 100.0
        ),
        SparsityBasis::StoredZeros => format!(
            "sparsity {:.1} % exact zeros among the stored weights (the file has no pruning record: weights quantized to zero count, removed rows do not; export it again to record the pruning)\n",
            m.sparsity * 100.0
        ),
    };
    if timing.latency {
        s += &format!(
            "latency  {:.1} µs median, {:.1} µs p90 (one sample, one thread)\nthroughput {:.0} samples/s (batch 256, all threads)\n",
            m.latency_us, m.latency_p90_us, m.throughput
        );
    }
    s += &format!(
        "wall     {:.1} ms for the whole set\n\nlayers\n",
        m.wall_s * 1e3
    );
    let nw = column_width("", m.layers.iter().map(|l| l.name.as_str())).max(10);
    let fw = column_width("", m.layers.iter().map(|l| l.format.as_str())).max(24);
    for l in &m.layers {
        s += &format!(
            "  {:<nw$} {:<7} {:<fw$} sparsity {:>5.1} %  zeros {:>5.1} %  {:>10} of {:>10}\n",
            l.name,
            l.op,
            l.format,
            l.sparsity * 100.0,
            l.zeros * 100.0,
            units::bytes(l.size_bytes as f64),
            units::bytes(l.dense_bytes as f64)
        );
    }
    s += "\nper class\n";
    for (c, (ok, total)) in a.per_class.iter().enumerate() {
        if *total > 0 {
            s += &format!(
                "  {c:>3}  {:>6.2} %  ({ok}/{total})\n",
                *ok as f64 * 100.0 / *total as f64
            );
        }
    }
    if a.confusion.len() <= 20 {
        s += "\nconfusion (rows: label, columns: predicted)\n      ";
        for c in 0..a.confusion.len() {
            s += &format!("{c:>6}");
        }
        s += "\n";
        for (l, row) in a.confusion.iter().enumerate() {
            s += &format!("{l:>6}");
            for v in row {
                s += &format!("{v:>6}");
            }
            s += "\n";
        }
    }
    s
}
