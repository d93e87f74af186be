//! The command line: clap definitions and thin dispatch to the library.

pub mod common;
mod eval;
mod info;
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
    /// Measure a model on an evaluation set: accuracy, loss, per-class figures.
    Eval(eval::EvalArgs),
    /// Train a model from an architecture file and write it as safetensors.
    Train(train::TrainArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Info(args)) => info::run(args),
        Some(Command::Eval(args)) => eval::run(args),
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
        reference: None,
        format: common::Format::Text,
    })
}
