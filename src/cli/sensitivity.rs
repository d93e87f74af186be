//! `squeeze sensitivity`: each compressible layer alone across a grid of sparsities and bit
//! widths — a table (layers × grid, accuracy and its change), JSON or CSV, and a plot. Layers
//! are measured in parallel, curves stop once collapsed, and every point is journaled, so a
//! rerun (or the explorer on the same model) finds them.

use std::path::PathBuf;

use serde::Serialize;

use super::explore::SessionArgs;
use super::headless::{Headless, Quiet, TableFormat};
use crate::compress::recipe::PruneMethod;
use crate::explore::Evaluator;
use crate::explore::config::Permille;
use crate::explore::results::Inputs;
use crate::explore::sensitivity::{self, SensitivityGrid, SensitivityTable};
use crate::explore::session::SessionOptions;

#[derive(Debug, clap::Args)]
pub struct SensitivityArgs {
    #[command(flatten)]
    pub session: SessionArgs,
    /// Sparsities each layer is pruned to, alone.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.1,0.3,0.5,0.6,0.7,0.8,0.85,0.9,0.95"
    )]
    pub sparsities: Vec<f64>,
    /// Bit widths each layer is quantized to, alone (symmetric, per channel); `none` for no
    /// quantization curves.
    #[arg(long, value_delimiter = ',', default_value = "8,6,4,3,2")]
    pub bits: Vec<String>,
    /// Pruning method of the sparsity curves.
    #[arg(long, value_enum, default_value_t = Method::L1)]
    pub method: Method,
    #[arg(long, value_enum, default_value_t)]
    pub format: TableFormat,
    /// Also draw the curves (one per layer) into this file (.png or .svg).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub quiet: Quiet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    L1,
    Random,
    Structured,
}

/// What `--format json` prints.
#[derive(Serialize)]
struct Report<'a> {
    inputs: &'a Inputs,
    /// The seed of random pruning (the explorer's configurations use 0).
    seed: u64,
    grid: &'a SensitivityGrid,
    /// Points measured now, and found in the cache.
    measured: usize,
    cached: usize,
    elapsed_s: f64,
    stopped_early: bool,
    #[serde(flatten)]
    table: &'a SensitivityTable,
}

pub fn grid(args: &SensitivityArgs) -> anyhow::Result<SensitivityGrid> {
    let sparsities = args
        .sparsities
        .iter()
        .map(|s| {
            if !(s.is_finite() && *s > 0.0 && *s <= 0.99) {
                anyhow::bail!("--sparsities: {s} is not a sparsity above 0 and at most 0.99");
            }
            Ok((s * 1000.0).round() as Permille)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let bits = if args.bits.iter().any(|b| b == "none") {
        Vec::new()
    } else {
        args.bits
            .iter()
            .map(|b| {
                b.trim().parse::<u8>().map_err(|_| {
                    anyhow::anyhow!("--bits: \"{b}\" is not a bit width (1 to 8, or none)")
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let method = match args.method {
        Method::L1 => PruneMethod::L1,
        Method::Random => PruneMethod::Random,
        Method::Structured => PruneMethod::Structured,
    };
    SensitivityGrid {
        method,
        sparsities,
        bits,
    }
    .normalized()
    .map_err(|e| anyhow::anyhow!("--sparsities/--bits: {e}"))
}

pub fn run(args: SensitivityArgs) -> anyhow::Result<()> {
    let grid = grid(&args)?;
    if let Some(p) = &args.plot {
        crate::report::check_plot_path(p)?;
    }
    let start = std::time::Instant::now();
    let mut h = Headless::open(&args.session, SessionOptions::default(), args.quiet.quiet)?;
    if let Some(p) = &args.plot {
        crate::files::OutputCheck::new()
            .inputs(
                "input",
                h.setup.evaluator.inputs().iter().map(PathBuf::as_path),
            )
            .output("--plot", p)
            .check()?;
    }
    let before: usize = h
        .session
        .points
        .values()
        .filter(|p| p.full.is_some())
        .count();
    let requests = h.session.sensitivity_sweep(&grid);
    h.run("sensitivity", requests);
    let after: usize = h
        .session
        .points
        .values()
        .filter(|p| p.full.is_some())
        .count();
    let table = h.session.sensitivity_table(&grid);
    let measured = after - before;
    let probes = sensitivity::probes(&h.session.info, &grid).len();
    let report = Report {
        inputs: &h.setup.inputs,
        seed: 0,
        grid: &grid,
        measured,
        cached: probes.saturating_sub(measured),
        elapsed_s: start.elapsed().as_secs_f64(),
        stopped_early: table.stopped_early(),
        table: &table,
    };
    match args.format {
        TableFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        TableFormat::Csv => print!("{}", sensitivity::render_csv(&table)),
        TableFormat::Text => {
            println!(
                "{} on {} ({} samples): {} points measured, {} from the cache, {:.2} s",
                h.session.info.name,
                h.session.info.data_name,
                h.session.info.samples,
                measured,
                report.cached,
                report.elapsed_s
            );
            print!("{}", sensitivity::render_text(&table, &grid));
        }
    }
    if let Some(p) = &args.plot {
        let written = crate::report::write_sensitivity_plot(
            &table,
            &grid,
            &format!("{} on {}", h.session.info.name, h.session.info.data_name),
            p,
        )?;
        if !args.quiet.quiet {
            eprintln!("plot written to {}", written.display());
        }
    }
    if !table.is_complete() {
        anyhow::bail!("some points could not be measured (see the errors above)");
    }
    Ok(())
}
