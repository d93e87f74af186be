//! `squeeze train`: build a model from an architecture file, train it, write safetensors.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::data::{DataOptions, EvalSet, Split};
use crate::model::{Model, Op};
use crate::train::{
    self, EpochSummary, LrDecay, OptimizerKind, PreparedSet, TRAIN_METADATA_KEY, TrainConfig,
    TrainEvent,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OptimizerArg {
    Adamw,
    Sgd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LrDecayArg {
    /// Half a cosine from the full rate down to near zero.
    Cosine,
    /// ×0.1 from half-way, ×0.01 from three quarters of the epochs.
    Step,
    None,
}

/// Options every training command shares.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainingArgs {
    /// Mini-batch size.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Seeds initialisation and shuffling: the same seed gives the same file.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = OptimizerArg::Adamw)]
    pub optimizer: OptimizerArg,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Weight decay (default 0.01 for AdamW, as PyTorch; 0 for SGD).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Learning-rate schedule, applied per epoch.
    #[arg(long, value_enum, default_value_t = LrDecayArg::Cosine)]
    pub lr_decay: LrDecayArg,
}

impl TrainingArgs {
    pub fn config(&self, epochs: usize, lr: f64) -> TrainConfig {
        let optimizer = match self.optimizer {
            OptimizerArg::Adamw => OptimizerKind::AdamW,
            OptimizerArg::Sgd => OptimizerKind::Sgd,
        };
        TrainConfig {
            epochs,
            lr,
            batch: self.batch,
            seed: self.seed,
            optimizer,
            momentum: self.momentum,
            weight_decay: self.weight_decay.unwrap_or(match optimizer {
                OptimizerKind::AdamW => 0.01,
                OptimizerKind::Sgd => 0.0,
            }),
            lr_decay: match self.lr_decay {
                LrDecayArg::Cosine => LrDecay::Cosine,
                LrDecayArg::Step => LrDecay::Step,
                LrDecayArg::None => LrDecay::None,
            },
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Architecture description (TOML, or JSON when it ends in .json). Linear layers need
    /// `out_features`, conv layers `out_channels` and `kernel`.
    #[arg(long, value_name = "FILE")]
    pub arch: PathBuf,
    /// Training set: anything the evaluation-set readers take (IDX images file, directory, ...).
    #[arg(long, value_name = "PATH")]
    pub data: PathBuf,
    /// Test set, evaluated after every epoch.
    #[arg(long, value_name = "PATH")]
    pub test: PathBuf,
    /// Where to write the trained model (.safetensors).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Initial learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[command(flatten)]
    pub training: TrainingArgs,
    /// Train on the first N training samples only (quick runs).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

impl TrainArgs {
    fn config(&self) -> TrainConfig {
        self.training.config(self.epochs, self.lr)
    }
}

/// What `squeeze.train` records: the settings and the result, nothing machine- or
/// time-dependent, so one seed gives the same bytes.
#[derive(Serialize)]
struct TrainMetadata<'a> {
    #[serde(flatten)]
    config: &'a TrainConfig,
    data: String,
    test: String,
    limit: Option<usize>,
    train_samples: usize,
    test_samples: usize,
    final_train_loss: f64,
    test_accuracy: f64,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let cfg = args.config();
    cfg.validate()?;
    if args.limit == Some(0) {
        anyhow::bail!("--limit must be at least 1");
    }
    let opts = DataOptions::default();
    let data_files = crate::data::source_files(&args.data, &opts);
    let test_files = crate::data::source_files(&args.test, &opts);
    crate::files::OutputCheck::new()
        .input("--arch", &args.arch)
        .inputs("--data", data_files.iter().map(PathBuf::as_path))
        .inputs("--test", test_files.iter().map(PathBuf::as_path))
        .output("--out", &args.out)
        .check()?;
    let spec = train::read_arch(&args.arch)?;
    let mut tm = train::init_model(&spec, &args.arch, cfg.seed)?;
    check_training_memory(&tm.model, cfg.batch)?;
    if tm
        .model
        .layers
        .iter()
        .any(|l| matches!(l.op, Op::Dropout(p) if p > 0.0))
    {
        eprintln!(
            "warning: dropout masks come from candle's unseeded RNG: this run will not be reproducible"
        );
    }

    let opts = opts.for_model(&tm.model);
    let train_opts = DataOptions {
        limit: args.limit,
        ..opts.clone()
    };
    let train_set = crate::data::load(&args.data, &train_opts)
        .with_context(|| format!("reading the training set {}", args.data.display()))?;
    let test_set = crate::data::load(&args.test, &opts)
        .with_context(|| format!("reading the test set {}", args.test.display()))?;
    let train_data = PreparedSet::new(&train_set, &tm.model)?;
    let test_data = PreparedSet::new(&test_set, &tm.model)?;
    drop((train_set, test_set));

    let params: usize = tm.model.layers.iter().map(|l| l.param_count()).sum();
    eprintln!(
        "training {} ({params} parameters) on {} samples, testing on {}: {} epochs, {:?} lr {} ({:?} decay), batch {}, seed {}",
        args.arch.display(),
        train_data.len(),
        test_data.len(),
        cfg.epochs,
        cfg.optimizer,
        cfg.lr,
        cfg.lr_decay,
        cfg.batch,
        cfg.seed
    );

    let mut progress = Progress(EpochBar::new(train_data.len(), false));
    let report = train::train(&mut tm, &train_data, &test_data, &cfg, &mut |e| {
        progress.event(e)
    })?;
    progress.0.finish();

    let final_train_loss = report.epochs.last().map_or(0.0, |e| e.train_loss);
    let meta = TrainMetadata {
        config: &cfg,
        data: args.data.display().to_string(),
        test: args.test.display().to_string(),
        limit: args.limit,
        train_samples: train_data.len(),
        test_samples: test_data.len(),
        final_train_loss,
        test_accuracy: report.test_accuracy,
    };
    let mut extra = HashMap::new();
    extra.insert(
        TRAIN_METADATA_KEY.to_string(),
        serde_json::to_string(&meta)?,
    );
    let model = tm.detached();
    train::save(&model, &args.out, &extra)?;
    let total: f64 = report.epochs.iter().map(|e| e.train_seconds).sum();
    eprintln!(
        "wrote {}: test accuracy {:.2} %, {:.1} s per epoch on average",
        args.out.display(),
        report.test_accuracy * 100.0,
        total / report.epochs.len().max(1) as f64
    );
    Ok(())
}

/// Refuses a run whose batches would not fit the memory limit: every parameter with its
/// gradient and two optimizer moments, and every layer's output and its gradient for each
/// sample of a batch (the backward pass keeps them all).
pub(super) fn check_training_memory(
    model: &crate::model::Model,
    batch: usize,
) -> anyhow::Result<()> {
    use crate::model::shape::{elements_u128, parameter_bytes};
    let per_sample = model
        .layers
        .iter()
        .map(|l| elements_u128(&l.out_shape))
        .fold(elements_u128(&model.input.shape), u128::saturating_add)
        .saturating_mul(8);
    let need = parameter_bytes(&model.layers)
        .saturating_mul(4)
        .saturating_add(per_sample.saturating_mul(batch as u128));
    crate::limits::check_memory(&format!("training in batches of {batch}"), Some(need))
        .map_err(anyhow::Error::msg)
}

/// One epoch's progress on stderr: a bar with the loss and samples/s on a terminal, nothing
/// while the epoch runs otherwise; lines printed above the bar (or plainly). Quiet prints
/// nothing at all.
pub(super) struct EpochBar {
    terminal: bool,
    quiet: bool,
    bar: Option<ProgressBar>,
    samples_per_epoch: usize,
    epoch_start: Instant,
}

impl EpochBar {
    pub(super) fn new(samples_per_epoch: usize, quiet: bool) -> Self {
        EpochBar {
            terminal: std::io::stderr().is_terminal(),
            quiet,
            bar: None,
            samples_per_epoch,
            epoch_start: Instant::now(),
        }
    }

    /// Starts an epoch's bar, labelled `prefix`.
    pub(super) fn start(&mut self, prefix: String) {
        self.epoch_start = Instant::now();
        if let Some(old) = self.bar.take() {
            old.finish_and_clear();
        }
        if self.terminal && !self.quiet {
            let bar = ProgressBar::new(self.samples_per_epoch as u64);
            let style =
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(prefix);
            self.bar = Some(bar);
        }
    }

    /// After a step: `samples` seen in this epoch, the batch's loss and anything to add.
    pub(super) fn step(&mut self, batch: usize, samples: usize, loss: f32, extra: &str) {
        if let Some(bar) = &self.bar {
            bar.set_position(samples as u64);
            // Refreshing the message every step costs more than the step on tiny models.
            if batch.is_multiple_of(10) {
                let rate = samples as f64 / self.epoch_start.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!("loss {loss:.4}{extra}, {rate:.0} samples/s"));
            }
        }
    }

    /// A line of its own (above the bar on a terminal).
    pub(super) fn line(&self, line: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub(super) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// `squeeze train`'s progress: the bar, and one line per epoch.
struct Progress(EpochBar);

impl Progress {
    fn event(&mut self, e: &TrainEvent) {
        match e {
            TrainEvent::EpochStarted {
                epoch, epochs, lr, ..
            } => self
                .0
                .start(format!("epoch {}/{epochs} lr {lr:.2e}", epoch + 1)),
            TrainEvent::Step {
                samples,
                loss,
                batch,
                ..
            } => self.0.step(*batch, *samples, *loss, ""),
            TrainEvent::EpochFinished(s) => self.0.line(&epoch_line(s)),
        }
    }
}

/// The training set a training command reads from `path` for `model` (a folder holding both
/// MNIST splits gives its training pair), cut to the first `limit` samples when asked.
pub(super) fn load_training_set(
    path: &Path,
    limit: Option<usize>,
    model: &Model,
) -> anyhow::Result<EvalSet> {
    let opts = DataOptions {
        split: Split::Train,
        ..Default::default()
    }
    .for_model(model);
    if limit == Some(0) {
        anyhow::bail!("--limit must be at least 1");
    }
    let set = crate::data::load(path, &opts)
        .with_context(|| format!("reading the training set {}", path.display()))?;
    Ok(match limit {
        Some(n) => set.truncated(n),
        None => set,
    })
}

/// The test set to report on: `test` when given, else the test pair of a folder `data` that
/// holds both splits (the bundled MNIST folder), else none. `train` is the training set read
/// from `data`: a folder holding only that is no test set.
pub(super) fn load_test_set(
    data: &Path,
    test: Option<&Path>,
    train: &EvalSet,
    model: &Model,
) -> anyhow::Result<Option<EvalSet>> {
    let path = match test {
        Some(t) => t,
        None if data.is_dir() => data,
        None => return Ok(None),
    };
    let set = crate::data::load(path, &DataOptions::default().for_model(model))
        .with_context(|| format!("reading the test set {}", path.display()))?;
    if test.is_none() && set.source == train.source {
        return Ok(None);
    }
    Ok(Some(set))
}

/// A file an output was made from: its name and SHA-256.
#[derive(Debug, Clone, Serialize)]
pub(super) struct InputFile {
    pub file: String,
    pub sha256: String,
}

impl InputFile {
    pub(super) fn of(path: &Path) -> anyhow::Result<InputFile> {
        Ok(InputFile {
            // The name only: where the file lives on this machine is nobody's business.
            file: path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            sha256: crate::files::sha256_file(path)?,
        })
    }

    /// The files a data set at `path` is read from (for IDX, the images and the labels).
    pub(super) fn of_data(path: &Path, split: Split) -> anyhow::Result<Vec<InputFile>> {
        let opts = DataOptions {
            split,
            ..Default::default()
        };
        let mut files: Vec<PathBuf> = crate::data::source_files(path, &opts)
            .into_iter()
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        files.dedup();
        files.iter().map(|p| InputFile::of(p)).collect()
    }
}

fn epoch_line(s: &EpochSummary) -> String {
    format!(
        "epoch {}/{}  lr {:.2e}  loss {:.4}  test {:.2} %  {:.1} s ({:.0} samples/s)",
        s.epoch + 1,
        s.epochs,
        s.lr,
        s.train_loss,
        s.test_accuracy * 100.0,
        s.train_seconds,
        s.samples as f64 / s.train_seconds.max(1e-9)
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    #[test]
    fn parses_all_options() {
        let cli = Cli::parse_from([
            "squeeze",
            "train",
            "--arch",
            "a.toml",
            "--data",
            "d",
            "--test",
            "t",
            "--out",
            "m.safetensors",
            "--epochs",
            "3",
            "--lr",
            "0.1",
            "--batch",
            "16",
            "--seed",
            "7",
            "--optimizer",
            "sgd",
            "--momentum",
            "0.5",
            "--weight-decay",
            "0.001",
            "--lr-decay",
            "step",
            "--limit",
            "100",
        ]);
        let Some(Command::Train(args)) = cli.command else {
            panic!("not a train command");
        };
        let cfg = args.config();
        assert_eq!(cfg.epochs, 3);
        assert_eq!(cfg.optimizer, super::OptimizerKind::Sgd);
        assert_eq!(cfg.weight_decay, 0.001);
        assert_eq!(cfg.lr_decay, super::LrDecay::Step);
        assert_eq!(args.limit, Some(100));
    }
}
