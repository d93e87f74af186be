//! The command line: clap definitions and thin dispatch to the library.

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
    /// Train a model from an architecture file and write it as safetensors.
    Train(train::TrainArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Train(args)) => train::run(args),
        None => Ok(()),
    }
}
