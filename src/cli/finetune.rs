//! `squeeze finetune`: compress a model by a recipe and train it compressed (masks held,
//! gradual pruning, quantization-aware training, shared values, distillation), then measure
//! it on the engine and write the packed model.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::Serialize;

use super::apply::write_packed;
use super::common::{Format, ModelArgs, column_width, load_model};
use super::recipe_args::RecipeArgs;
use super::train::{
    EpochBar, InputFile, TrainingArgs, check_training_memory, load_test_set, load_training_set,
};
use crate::compress::{Plan, Recipe, WeightValues};
use crate::data::{DataOptions, Split};
use crate::files::OutputCheck;
use crate::measure::{Measurement, Timing};
use crate::model::Model;
use crate::train::{
    self, Distillation, FinetuneEvent, FinetuneReport, FinetuneSets, FinetuneSettings, Finetuned,
    PruneSchedule, Qat,
};
use crate::units;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScheduleArg {
    /// The recipe's masks from the first step.
    Oneshot,
    /// Zhu & Gupta's gradual pruning: sparsity s_f·(1 − (1 − t/(nΔt))³), masks recomputed by
    /// magnitude every Δt steps.
    Agp,
    /// Han et al.'s prune → retrain in rounds, each removing the same fraction of what is left.
    Iterative,
}

/// Options shared by the commands that run fine-tuning: schedule, QAT, validation, output.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Epochs in all (pruning, then the shared values of k-means layers).
    #[arg(long, default_value_t = 8)]
    pub epochs: usize,
    /// Initial learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[command(flatten)]
    pub training: TrainingArgs,
    /// Training samples held out, the last N, to choose the checkpoint kept (0: keep the last
    /// epoch). The test set is only reported on.
    #[arg(long, value_name = "N", default_value_t = 5000)]
    pub val_split: usize,
    /// Use only the first N training samples (before the validation split): quick runs.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// No progress on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Training set: a folder holding MNIST's two splits gives its training pair (and its test
    /// pair is reported on); or any evaluation-set format.
    #[arg(long, short = 'd', value_name = "PATH")]
    pub data: PathBuf,
    /// Test set, only reported on. Default: the test pair of a --data folder holding both.
    #[arg(long, value_name = "PATH")]
    pub test: Option<PathBuf>,
    /// Where to write the fine-tuned model, packed as `squeeze apply` writes it.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    /// Also write its weights dequantized as dense f32 with the original tensor names (zeros
    /// where pruned), for going back to PyTorch.
    #[arg(long, value_name = "FILE")]
    pub dense_out: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
    #[arg(long, value_enum, default_value_t = ScheduleArg::Oneshot)]
    pub schedule: ScheduleArg,
    /// agp: steps between mask updates (Δt). Default: a quarter of an epoch.
    #[arg(long, value_name = "STEPS")]
    pub prune_interval: Option<usize>,
    /// agp: the fraction of the pruning epochs by which the final sparsity is reached.
    #[arg(long, value_name = "FRACTION", default_value_t = 2.0 / 3.0)]
    pub prune_end: f64,
    /// iterative: rounds of prune → retrain.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Quantization-aware training even at 8 bits and more (on by default when the recipe
    /// stores weights or activations below 8 bits).
    #[arg(long)]
    pub qat: bool,
    /// No quantization-aware training: train under masks, quantize at the end.
    #[arg(long, conflicts_with = "qat")]
    pub no_qat: bool,
    /// Epochs, of --epochs, that train the shared values of k-means layers (assignments fixed).
    /// Default: a quarter, at least one.
    #[arg(long, value_name = "N")]
    pub shared_epochs: Option<usize>,
    /// Learning rate of those epochs. Default: a tenth of --lr.
    #[arg(long, value_name = "LR")]
    pub shared_lr: Option<f64>,
    #[command(flatten)]
    pub distill: DistillArgs,
}

/// Distillation options.
#[derive(Debug, Clone, clap::Args)]
pub struct DistillArgs {
    /// Learn from a teacher's softened outputs too: α·T²·KL(teacher ‖ student at T) +
    /// (1 − α)·cross-entropy. The teacher is the uncompressed model unless --teacher names one.
    #[arg(long)]
    pub distill: bool,
    /// The teacher model (with --distill).
    #[arg(long, value_name = "FILE", requires = "distill")]
    pub teacher: Option<PathBuf>,
    /// Softmax temperature T.
    #[arg(long, default_value_t = Distillation::default().temperature)]
    pub temperature: f64,
    /// Weight α of the teacher's term (0: labels only).
    #[arg(long, default_value_t = Distillation::default().alpha)]
    pub alpha: f64,
    /// Skip the run on labels alone (same seed and epochs) that measures what distillation
    /// gains.
    #[arg(long)]
    pub no_baseline: bool,
}

impl DistillArgs {
    fn settings(&self) -> Option<Distillation> {
        self.distill.then_some(Distillation {
            temperature: self.temperature,
            alpha: self.alpha,
        })
    }
}

impl FinetuneArgs {
    fn settings(&self) -> FinetuneSettings {
        let mut s = FinetuneSettings::new(self.run.training.config(self.run.epochs, self.run.lr));
        s.schedule = match self.schedule {
            ScheduleArg::Oneshot => PruneSchedule::OneShot,
            ScheduleArg::Agp => PruneSchedule::Agp {
                interval: self.prune_interval,
                end: self.prune_end,
            },
            ScheduleArg::Iterative => PruneSchedule::Iterative {
                rounds: self.rounds,
            },
        };
        s.qat = if self.qat {
            Qat::On
        } else if self.no_qat {
            Qat::Off
        } else {
            Qat::Auto
        };
        s.shared_epochs = self.shared_epochs;
        s.shared_lr = self.shared_lr;
        s.distill = self.distill.settings();
        s.timing = Timing {
            latency: true,
            throughput: false,
        };
        s
    }
}

/// What `squeeze.finetune` records: the settings, the inputs' hashes and the figures; nothing
/// machine- or time-dependent, so one seed gives the same bytes.
#[derive(Serialize)]
pub(super) struct Provenance<'a> {
    pub settings: &'a FinetuneSettings,
    pub model: Option<InputFile>,
    pub teacher: Option<InputFile>,
    pub data: Vec<InputFile>,
    pub test: Vec<InputFile>,
    pub limit: Option<usize>,
    pub val_split: usize,
    #[serde(flatten)]
    pub report: &'a FinetuneReport,
    /// The same run on labels alone, when distilling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels_only: Option<&'a FinetuneReport>,
}

/// `--format json`.
#[derive(Serialize)]
struct Output<'a> {
    model: String,
    data: String,
    out: String,
    recipe: &'a Recipe,
    #[serde(flatten)]
    provenance: &'a Provenance<'a>,
    /// The recipe applied without training, measured on the test set.
    untuned: Option<&'a Measurement>,
    /// The fine-tuned model on the test set.
    test: Option<&'a Measurement>,
    size_bytes: usize,
    /// Huffman-coded bytes by layer and part, without training and fine-tuned.
    untuned_entropy: Vec<EntropyRow>,
    entropy: Vec<EntropyRow>,
}

/// Progress of one run on stderr: the untrained figure, a bar per epoch, a line per epoch.
pub(super) struct Progress {
    bar: EpochBar,
    /// Names the run when two are made (distilled, labels only).
    label: String,
}

impl Progress {
    pub(super) fn new(samples_per_epoch: usize, quiet: bool, label: &str) -> Self {
        Progress {
            bar: EpochBar::new(samples_per_epoch, quiet),
            label: if label.is_empty() {
                String::new()
            } else {
                format!("{label}: ")
            },
        }
    }

    pub(super) fn event(&mut self, e: &FinetuneEvent) {
        let pct = |a: Option<f64>| a.map_or("–".to_string(), |a| format!("{:.2} %", a * 100.0));
        match e {
            FinetuneEvent::Untuned { validation, test } => self.bar.line(&format!(
                "{}the recipe without training: validation {}, test {}",
                self.label,
                pct(*validation),
                pct(*test)
            )),
            FinetuneEvent::EpochStarted {
                epoch,
                epochs,
                phase,
                lr,
                ..
            } => self.bar.start(format!(
                "{}epoch {}/{epochs} {} lr {lr:.1e}",
                self.label,
                epoch + 1,
                phase.label()
            )),
            FinetuneEvent::Step {
                batch,
                samples,
                loss,
                sparsity,
                ..
            } => {
                let extra = if *sparsity > 0.0 {
                    format!(", sparsity {:.1} %", sparsity * 100.0)
                } else {
                    String::new()
                };
                self.bar.step(*batch, *samples, *loss, &extra);
            }
            FinetuneEvent::EpochFinished(r) => self.bar.line(&format!(
                "{}epoch {}/{}  {:<13} lr {:.1e}  loss {:.4}  validation {}  sparsity {:.1} %  {:.1} s{}{}",
                self.label,
                r.epoch + 1,
                r.epochs,
                r.phase.label(),
                r.lr,
                r.train_loss,
                pct(r.validation_accuracy),
                r.sparsity * 100.0,
                r.seconds,
                if r.eta_seconds >= 0.5 {
                    format!(", {} left", duration(r.eta_seconds))
                } else {
                    String::new()
                },
                if r.candidate { "" } else { "  (before the final phase)" }
            )),
            FinetuneEvent::Compressing => {
                self.bar.finish();
                self.bar.line(&format!(
                    "{}compressing with the trained masks and shared values held; measuring on the engine",
                    self.label
                ));
            }
        }
    }

    pub(super) fn finish(&mut self) {
        self.bar.finish();
    }
}

/// One layer's Huffman-coded size by part: Deep Compression's third stage.
#[derive(Debug, Serialize)]
pub(super) struct EntropyRow {
    pub layer: String,
    /// Fraction of the input layer's weights kept.
    pub kept: f64,
    /// Code width, or the float storage.
    pub bits: String,
    /// Huffman-coded codes of the kept weights.
    pub values: usize,
    /// Huffman-coded gaps between kept positions.
    pub indices: usize,
    /// Codebook, or scales and zero points.
    pub codebook: usize,
    /// The Huffman code tables.
    pub tables: usize,
    /// f32 biases.
    pub bias: usize,
}

impl EntropyRow {
    /// Values, indices and codebook: what Deep Compression counts.
    pub fn paper(&self) -> usize {
        self.values + self.indices + self.codebook
    }

    pub fn all(&self) -> usize {
        self.paper() + self.tables + self.bias
    }
}

/// The Huffman-coded size of every layer of `plan`, kept fractions against `original`.
pub(super) fn entropy_rows(plan: &Plan, original: &Model) -> Vec<EntropyRow> {
    let sparsity = plan.sparsity_against(original);
    plan.layers
        .iter()
        .zip(&sparsity.layers)
        .map(|(q, s)| {
            let e = crate::compress::entropy_size(q);
            EntropyRow {
                layer: s.name.clone(),
                kept: 1.0 - s.fraction(),
                bits: match &q.values {
                    WeightValues::Float { storage, .. } => format!("{storage:?}").to_lowercase(),
                    WeightValues::Uniform { bits, .. } | WeightValues::Codebook { bits, .. } => {
                        bits.to_string()
                    }
                },
                values: e.values,
                indices: e.indices,
                codebook: e.scales,
                tables: e.tables,
                bias: e.bias,
            }
        })
        .collect()
}

/// The rows as a table, totals and ratios against `dense` bytes included.
pub(super) fn entropy_table(rows: &[EntropyRow], dense: usize) -> String {
    let nw = column_width("layer", rows.iter().map(|r| r.layer.as_str())).max(10);
    let mut s = format!(
        "  {:<nw$} {:>7} {:>5} {:>8} {:>8} {:>9} {:>8} {:>7} {:>7} {:>8}\n",
        "layer",
        "kept",
        "bits",
        "values",
        "indices",
        "codebook",
        "counted",
        "tables",
        "biases",
        "all"
    );
    for r in rows {
        s += &format!(
            "  {:<nw$} {:>6.1}% {:>5} {:>8} {:>8} {:>9} {:>8} {:>7} {:>7} {:>8}\n",
            r.layer,
            r.kept * 100.0,
            r.bits,
            r.values,
            r.indices,
            r.codebook,
            r.paper(),
            r.tables,
            r.bias,
            r.all()
        );
    }
    let paper: usize = rows.iter().map(EntropyRow::paper).sum();
    let all: usize = rows.iter().map(EntropyRow::all).sum();
    s += &format!(
        "  total: {paper} bytes counted as Deep Compression does (values, indices, codebooks), {:.1}× smaller than dense f32 ({dense} bytes); {all} bytes with the code tables and f32 biases, {:.1}×\n",
        dense as f64 / paper.max(1) as f64,
        dense as f64 / all.max(1) as f64
    );
    s
}

/// Seconds as a person reads them.
fn duration(s: f64) -> String {
    if s < 90.0 {
        format!("{s:.0} s")
    } else if s < 5400.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// One row of the summary table.
pub(super) fn summary_row(
    name: &str,
    test: Option<f64>,
    val: Option<f64>,
    m: Option<&Measurement>,
) -> String {
    let pct = |a: Option<f64>| a.map_or("–".to_string(), |a| format!("{:.2} %", a * 100.0));
    let size = m.map_or(String::new(), |m| {
        format!(
            "{:>10}  {:>6.1}×  {:>10}",
            units::bytes(m.size_bytes as f64),
            m.ratio,
            units::bytes(m.entropy_bytes as f64)
        )
    });
    format!("{name:<26} {:>9}  {:>10}  {size}", pct(test), pct(val))
}

pub(super) fn summary_header() -> String {
    format!(
        "{:<26} {:>9}  {:>10}  {:>10}  {:>7}  {:>10}",
        "", "test", "validation", "packed", "ratio", "Huffman"
    )
}

/// Refuses, before any work, outputs that would overwrite an input or each other, or that
/// cannot be written.
/// Adds both pairs a training data folder may hold (training and evaluation files) to `check`
/// as `--data` inputs.
pub(super) fn training_data_inputs(check: OutputCheck, data: &Path) -> OutputCheck {
    let train = DataOptions {
        split: Split::Train,
        ..Default::default()
    };
    check
        .inputs(
            "--data",
            crate::data::source_files(data, &train)
                .iter()
                .map(PathBuf::as_path),
        )
        .inputs(
            "--data",
            crate::data::source_files(data, &DataOptions::default())
                .iter()
                .map(PathBuf::as_path),
        )
}

fn check_paths(args: &FinetuneArgs) -> anyhow::Result<()> {
    let mut check = training_data_inputs(
        OutputCheck::new().input("--model", &args.model.model),
        &args.data,
    )
    .output("--out", &args.out);
    for (role, path) in [
        ("--arch", &args.model.arch),
        ("--recipe", &args.recipe.recipe),
        ("--teacher", &args.distill.teacher),
        ("--test", &args.test),
    ] {
        if let Some(p) = path {
            check = check.input(role, p);
        }
    }
    if let Some(d) = &args.dense_out {
        check = check.output("--dense-out", d);
    }
    check.check()?;
    Ok(())
}

pub fn run(args: FinetuneArgs) -> anyhow::Result<()> {
    let Some(recipe) = args.recipe.recipe()? else {
        anyhow::bail!(
            "give a recipe: --recipe FILE, or quick flags such as --sparsity 0.9 --bits 4"
        );
    };
    let settings = args.settings();
    settings.validate()?;
    if args.run.limit == Some(0) {
        anyhow::bail!("--limit must be at least 1");
    }
    check_paths(&args)?;
    if crate::engine::is_compressed_file(&args.model.model) {
        anyhow::bail!(
            "{} is already compressed; fine-tuning starts from a dense model",
            args.model.model.display()
        );
    }

    let model = load_model(&args.model.model, args.model.arch.as_deref())?.model;
    check_training_memory(&model, settings.train.batch)?;
    let teacher = match (&args.distill.teacher, args.distill.distill) {
        (Some(t), true) => Some(load_model(t, None)?.model),
        _ => None,
    };
    let full = load_training_set(&args.data, args.run.limit, &model)?;
    let (train_set, val_set) = train::split_validation(&full, args.run.val_split)?;
    let test_set = load_test_set(&args.data, args.test.as_deref(), &full, &model)?;
    let sets = FinetuneSets {
        train: &train_set,
        validation: val_set.as_ref(),
        test: test_set.as_ref(),
    };
    let quiet = args.run.quiet;
    if !quiet {
        eprintln!(
            "fine-tuning {} compressed as {}: {} training samples, {} validation, {} test; {} epochs, {} schedule, {:?} lr {} ({:?} decay), batch {}, seed {}",
            args.model.model.display(),
            args.recipe
                .recipe
                .as_ref()
                .map_or("the quick flags".to_string(), |r| r.display().to_string()),
            train_set.len(),
            val_set.as_ref().map_or(0, |v| v.len()),
            test_set.as_ref().map_or(0, |t| t.len()),
            settings.train.epochs,
            settings.schedule.name(),
            settings.train.optimizer,
            settings.train.lr,
            settings.train.lr_decay,
            settings.train.batch,
            settings.train.seed,
        );
    }
    let cancel = AtomicBool::new(false);
    let distilling = settings.distill.is_some();
    let run_one = |settings: &FinetuneSettings, label: &str| -> anyhow::Result<Finetuned> {
        let mut progress = Progress::new(train_set.len(), quiet, label);
        let r = train::finetune(
            &model,
            &recipe,
            sets,
            settings,
            teacher.as_ref(),
            &cancel,
            &mut |e| progress.event(e),
        );
        progress.finish();
        Ok(r?)
    };
    let result = run_one(&settings, if distilling { "distilled" } else { "" })?;
    let baseline = if distilling && !args.distill.no_baseline {
        let mut plain = settings.clone();
        plain.distill = None;
        plain.measure_untuned = false;
        Some(run_one(&plain, "labels only")?)
    } else {
        None
    };

    let provenance = Provenance {
        settings: &settings,
        model: Some(InputFile::of(&args.model.model)?),
        teacher: args
            .distill
            .teacher
            .as_deref()
            .map(InputFile::of)
            .transpose()?,
        data: InputFile::of_data(&args.data, Split::Train)?,
        test: match (&test_set, &args.test) {
            (None, _) => Vec::new(),
            (Some(_), Some(t)) => InputFile::of_data(t, Split::Test)?,
            (Some(_), None) => InputFile::of_data(&args.data, Split::Test)?,
        },
        limit: args.run.limit,
        val_split: args.run.val_split,
        report: &result.report,
        labels_only: baseline.as_ref().map(|b| &b.report),
    };
    let recipe_text = recipe.to_toml();
    let compressed = result.compressed.sealed_with(
        Some(&recipe_text),
        &[
            (
                train::FINETUNE_METADATA_KEY,
                serde_json::to_string(&provenance)?,
            ),
            crate::measure::PruningRecord::of(&result.plan, &model).metadata(),
        ],
    );
    let dense = match &args.dense_out {
        Some(path) => Some((
            path.as_path(),
            result
                .dense
                .sealed(&[("squeeze.recipe", recipe_text.clone())])?,
        )),
        None => None,
    };
    write_packed(&args.out, compressed, dense)?;

    match args.run.format {
        Format::Json => {
            let out = Output {
                model: args.model.model.display().to_string(),
                data: args.data.display().to_string(),
                out: args.out.display().to_string(),
                recipe: &recipe,
                provenance: &provenance,
                untuned: result.untuned_test.as_ref(),
                test: result.test.as_ref(),
                size_bytes: result.compressed.size_bytes(),
                untuned_entropy: entropy_rows(&result.untuned, &model),
                entropy: entropy_rows(&result.plan, &model),
            };
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Format::Text => {
            let r = &result.report;
            println!("{}", summary_header());
            if settings.measure_untuned {
                println!(
                    "{}",
                    summary_row(
                        "recipe, no training",
                        r.untuned_test_accuracy,
                        r.untuned_validation_accuracy,
                        result.untuned_test.as_ref()
                    )
                );
            }
            if let Some(b) = &baseline {
                println!(
                    "{}",
                    summary_row(
                        "fine-tuned, labels only",
                        b.report.test_accuracy,
                        b.report.validation_accuracy,
                        b.test.as_ref()
                    )
                );
            }
            println!(
                "{}",
                summary_row(
                    if distilling {
                        "fine-tuned, distilled"
                    } else {
                        "fine-tuned"
                    },
                    r.test_accuracy,
                    r.validation_accuracy,
                    result.test.as_ref()
                )
            );
            let dense_bytes: usize =
                model.layers.iter().map(|l| l.param_count()).sum::<usize>() * 4;
            if settings.measure_untuned {
                println!(
                    "\nHuffman-coded bytes without training\n{}",
                    entropy_table(&entropy_rows(&result.untuned, &model), dense_bytes)
                );
            }
            println!(
                "Huffman-coded bytes fine-tuned\n{}",
                entropy_table(&entropy_rows(&result.plan, &model), dense_bytes)
            );
            let epochs = r.epochs.len();
            println!(
                "kept the weights after epoch {} of {epochs}{}; sparsity {:.1} %{}",
                r.kept_epoch,
                if r.qat {
                    ", trained quantization-aware"
                } else {
                    ""
                },
                result.test.as_ref().map_or(0.0, |m| m.sparsity) * 100.0,
                result.test.as_ref().map_or(String::new(), |m| format!(
                    "; latency {:.1} µs",
                    m.latency_us
                )),
            );
            println!(
                "wrote {} ({} bytes of packed tensors)",
                args.out.display(),
                result.compressed.size_bytes()
            );
            if let Some(d) = &args.dense_out {
                println!("wrote {} (dense f32, dequantized)", d.display());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    #[test]
    fn parses_the_options() {
        let cli = Cli::parse_from([
            "squeeze",
            "finetune",
            "-m",
            "m.safetensors",
            "--sparsity",
            "0.9",
            "--data",
            "d",
            "--out",
            "x.safetensors",
            "--epochs",
            "3",
            "--schedule",
            "agp",
            "--prune-interval",
            "50",
            "--distill",
            "--temperature",
            "2",
            "--alpha",
            "0.5",
            "--no-qat",
        ]);
        let Some(Command::Finetune(args)) = cli.command else {
            panic!("not a finetune command");
        };
        let s = args.settings();
        assert_eq!(s.train.epochs, 3);
        assert_eq!(
            s.schedule,
            super::PruneSchedule::Agp {
                interval: Some(50),
                end: 2.0 / 3.0
            }
        );
        assert_eq!(s.qat, super::Qat::Off);
        let d = s.distill.expect("distillation on");
        assert_eq!((d.temperature, d.alpha), (2.0, 0.5));
    }

    /// The explorer's `f` fine-tunes with `squeeze finetune`'s defaults: its `TuneSpec` is
    /// the command's settings with no option given, less what the explorer measures itself
    /// (the untuned twin, timings).
    #[test]
    fn the_explorers_fine_tune_is_the_commands_defaults() {
        use crate::explore::finetune::TuneSpec;
        let cli = Cli::parse_from([
            "squeeze",
            "finetune",
            "-m",
            "m.safetensors",
            "--sparsity",
            "0.9",
            "--data",
            "d",
            "--out",
            "x.safetensors",
        ]);
        let Some(Command::Finetune(args)) = cli.command else {
            panic!("not a finetune command");
        };
        let explorer = TuneSpec::default();
        let mut settings = args.settings();
        settings.measure_untuned = false;
        settings.timing = explorer.settings.timing;
        let command = TuneSpec {
            settings,
            val_split: args.run.val_split,
            limit: args.run.limit,
        };
        assert_eq!(explorer, command);
    }
}
