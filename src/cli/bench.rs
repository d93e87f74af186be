//! `squeeze bench`: dense and compressed variants of a model measured in one run — accuracy,
//! exact size, full-set evaluation time and single-sample latency (`measure::bench`). This
//! module parses the options and prints.

use std::path::PathBuf;

use super::common::{DataArgs, Format, ModelArgs, load_model, prepare};
use crate::compress::Recipe;
use crate::engine;
use crate::measure::{self, bench::BenchRow};
use crate::units;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Recipes to measure besides the built-in set (repeatable).
    #[arg(long, short = 'r', value_name = "FILE")]
    pub recipe: Vec<PathBuf>,
    /// Only the given recipes (and the dense baselines), not the built-in set.
    #[arg(long)]
    pub only: bool,
    /// Timed repetitions of the full-set evaluation, after one untimed pass (the median is
    /// reported).
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// A compressed file (written by `squeeze apply`) measured as it is stored: there is no dense
/// model to compare with in one run, so no recipes and no speed-up.
fn run_compressed(args: &BenchArgs) -> anyhow::Result<()> {
    if !args.recipe.is_empty() {
        anyhow::bail!(
            "{} is already compressed; --recipe applies to a dense model",
            args.model.model.display()
        );
    }
    let cm = engine::load_compressed(&args.model.model)?;
    let pruning = measure::PruningRecord::read(&args.model.model).map_err(anyhow::Error::msg)?;
    let set = args.data.load()?;
    let inputs = prepare(&cm.model, &set)?;
    let n = set.len();
    let (row, m) =
        measure::bench::bench_stored(&cm, pruning.as_ref(), &inputs, &set.labels, args.repeat);
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&[row])?),
        Format::Text => {
            println!(
                "{} (compressed) on {n} samples of {}; {} threads\n",
                args.model.model.display(),
                set.source.display(),
                rayon::current_num_threads()
            );
            print_rows(&[row]);
            println!();
            for l in &m.layers {
                println!(
                    "  {:<12} {:<26} {:>11}",
                    l.name,
                    l.format,
                    units::bytes(l.size_bytes as f64)
                );
            }
        }
    }
    Ok(())
}

fn print_rows(rows: &[BenchRow]) {
    println!(
        "{:<30} {:>8} {:>11} {:>7} {:>11} {:>11} {:>10} {:>8}",
        "variant", "top-1", "size", "ratio", "full set", "latency", "p90", "speed-up"
    );
    for r in rows {
        println!(
            "{:<30} {:>7.2}% {:>11} {:>6.1}× {:>8.1} ms {:>8.1} µs {:>7.1} µs {:>7.2}×",
            r.name,
            r.accuracy * 100.0,
            units::bytes(r.size_bytes as f64),
            r.ratio,
            r.full_set_ms,
            r.latency_us,
            r.latency_p90_us,
            r.speedup
        );
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if engine::is_compressed_file(&args.model.model) {
        return run_compressed(&args);
    }
    let loaded = load_model(&args.model.model, args.model.arch.as_deref())?;
    let model = &loaded.model;
    let set = args.data.load()?;
    let inputs = prepare(model, &set)?;
    let n = set.len();
    let mut variants = measure::bench::variants(args.only)?;
    for path in &args.recipe {
        variants.push((path.display().to_string(), Recipe::from_path(path)?));
    }
    let bench = measure::bench::bench(model, &inputs, &set.labels, variants, args.repeat)?;

    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&bench.rows)?),
        Format::Text => {
            println!(
                "{} on {} samples of {}; {} threads\n",
                args.model.model.display(),
                n,
                set.source.display(),
                rayon::current_num_threads()
            );
            print_rows(&bench.rows);
            // The roofline: how long the dense evaluation's multiply-adds take at the FMA peak
            // measured now on the same threads.
            if let Some(r) = bench.roofline(n) {
                println!(
                    "\nFMA peak on {} threads, measured now: {:.0} GFLOP/s. The dense full set \
                     ({n} × {} multiply-adds) needs at least {:.1} ms at that \
                     peak; measured {:.1} ms ({:.0} % of peak).",
                    rayon::current_num_threads(),
                    r.peak_gflops,
                    bench.dense_macs,
                    r.floor_ms,
                    r.measured_ms,
                    100.0 * r.floor_ms / r.measured_ms.max(1e-9)
                );
            }
        }
    }
    Ok(())
}
