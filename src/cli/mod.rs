//! The command line: clap definitions and thin dispatch to the library.

mod apply;
mod bench;
pub mod common;
mod eval;
mod info;
pub mod recipe_args;
mod train;

use clap::{Parser, Subcommand};

/// Explore how far a neural network can be compressed before it stops being good enough.
#[derive(Debug, Parser)]
#[command(name = "squeeze", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Info(args)) => info::run(args),
        Some(Command::Eval(args)) => eval::run(args),
        Some(Command::Apply(args)) => apply::run(args),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Train(args)) => train::run(args),
        None => default_job(),
    }
}

/// `squeeze` with no arguments: the main job on the bundled model and data.
fn default_job() -> anyhow::Result<()> {
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
