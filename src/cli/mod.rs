//! The command line: clap definitions and thin dispatch to the library.

mod apply;
mod bench;
pub mod common;
mod distill;
mod eval;
mod explore;
pub mod finetune;
mod headless;
mod info;
pub mod recipe_args;
mod report;
mod search;
mod sensitivity;
mod sweep;
mod train;

use clap::{Parser, Subcommand};

/// Explore how far a neural network can be compressed before it stops being good enough.
#[derive(Debug, Parser)]
#[command(name = "squeeze", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The most memory a model, a run or a data set may ask for (e.g. 512M, 16G, 2T). Sizes
    /// read from files are checked against it before anything is allocated, and going over is
    /// an error giving the figure. Default: the machine's physical memory.
    #[arg(long, global = true, value_name = "SIZE", value_parser = crate::limits::parse_size)]
    pub memory_limit: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open the interactive explorer: tune pruning and quantization per layer and watch
    /// accuracy, size and latency move.
    Explore(explore::ExploreArgs),
    /// Show a model's layers, parameters, MACs, bytes and activation memory.
    Info(info::InfoArgs),
    /// Measure a model (dense, compressed by a recipe, or a compressed file): accuracy, size, latency.
    Eval(eval::EvalArgs),
    /// Compress a model as a recipe says and write the packed model (and optionally dense weights).
    Apply(apply::ApplyArgs),
    /// Measure dense and compressed variants in one run: accuracy, size, full-set time, latency.
    Bench(bench::BenchArgs),
    /// Train a model from an architecture file and write it as safetensors.
    Train(train::TrainArgs),
    /// Each layer alone across sparsities and bit widths: how much each layer can take.
    Sensitivity(sensitivity::SensitivityArgs),
    /// Measure a grid of recipes (or one shard of it), one JSON line per configuration.
    Sweep(sweep::SweepArgs),
    /// Join the result files of sweep shards, one line per configuration.
    Merge(sweep::MergeArgs),
    /// Find per-layer sparsity and bits that maximise accuracy under a budget (size, latency,
    /// flash, RAM, a device target).
    Search(search::SearchArgs),
    /// Compress a model by a recipe and train it compressed (masks held, gradual pruning,
    /// quantization-aware training, shared values, distillation); measure and write it packed.
    Finetune(finetune::FinetuneArgs),
    /// Train a smaller architecture from scratch on a teacher's softened outputs, beside the
    /// same run on labels alone.
    Distill(distill::DistillArgs),
    /// Write the handout of an exploration: one self-contained HTML file with the baseline,
    /// the pinned configurations, both charts, the sensitivity table and the pinned recipes.
    Report(report::ReportArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(limit) = cli.memory_limit {
        crate::limits::set_memory_limit(limit);
    }
    match cli.command {
        Some(Command::Explore(args)) => explore::run(args),
        Some(Command::Info(args)) => info::run(args),
        Some(Command::Eval(args)) => eval::run(args),
        Some(Command::Apply(args)) => apply::run(args),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Train(args)) => train::run(args),
        Some(Command::Sensitivity(args)) => sensitivity::run(args),
        Some(Command::Sweep(args)) => sweep::run_sweep(args),
        Some(Command::Merge(args)) => sweep::run_merge(args),
        Some(Command::Search(args)) => search::run(args),
        Some(Command::Finetune(args)) => finetune::run(args),
        Some(Command::Distill(args)) => distill::run(args),
        Some(Command::Report(args)) => report::run(args),
        None => default_job(),
    }
}

/// `squeeze` with no arguments: the explorer on the bundled model and data when on a terminal;
/// otherwise (a pipe, CI) the same model's summary and evaluation, never waiting for keys.
fn default_job() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
        return explore::run(explore::ExploreArgs::default());
    }
    eprintln!(
        "squeeze: not on a terminal, so showing the bundled model's summary and evaluation; `squeeze explore` opens the explorer on a terminal, `squeeze --help` lists the headless commands"
    );
    let model = common::asset(common::DEFAULT_MODEL);
    let data = common::asset(common::DEFAULT_DATA);
    info::run(info::InfoArgs {
        model: common::ModelArgs {
            model: model.clone(),
            arch: None,
        },
        format: common::Format::Text,
    })?;
    println!();
    eval::run(eval::EvalArgs {
        model: common::ModelArgs { model, arch: None },
        data: common::DataArgs {
            data,
            labels: None,
            label_column: None,
            limit: None,
        },
        recipe: Default::default(),
        reference: None,
        calibration_data: None,
        no_timing: false,
        format: common::Format::Text,
    })
}

/// The error and its causes on one line, leaving out causes the message already quotes.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg = format!("{msg}: {c}");
        }
    }
    msg
}
