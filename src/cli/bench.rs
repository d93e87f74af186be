//! `squeeze bench`: dense and compressed variants of a model measured in one run — accuracy,
//! exact size, full-set evaluation time and single-sample latency (`measure::bench`). This
//! module parses the options, reports progress on stderr and prints.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use super::common::{DataArgs, Format, ModelArgs, column_width, load_model, prepare};
use crate::compress::Recipe;
use crate::engine;
use crate::measure::bench::{
    BenchRow, Effort, QUICK_LATENCY_MS, QUICK_LATENCY_RUNS, QUICK_SAMPLES, Stage, Step,
};
use crate::measure::{self};
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
    /// An answer within about a minute on a MobileNetV2-sized model: accuracy and the full-set
    /// time on a fixed random subset of 256 samples (the output says "on 256 of N samples";
    /// activations are calibrated on its first samples), one timed pass after the untimed one,
    /// and single-sample latency from at least 20 runs and 50 ms per variant (instead of 200
    /// runs and 0.3 s).
    #[arg(long, conflicts_with = "repeat")]
    pub quick: bool,
    /// Also measure candle's forward pass, the reference the engine is checked against (slow on
    /// convnets: 80 s a pass of 500 samples on MobileNetV2), listed first.
    #[arg(long)]
    pub reference: bool,
    /// No progress on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

impl BenchArgs {
    fn effort(&self) -> Effort {
        if self.quick {
            Effort::quick(self.reference)
        } else {
            Effort::full(self.repeat, self.reference)
        }
    }

    /// The inputs and labels to measure on: all of them, or `--quick`'s subset.
    fn samples(&self, inputs: Vec<f32>, labels: &[u32], sample_len: usize) -> (Vec<f32>, Vec<u32>) {
        if self.quick && labels.len() > QUICK_SAMPLES {
            measure::bench::subset(&inputs, labels, sample_len, QUICK_SAMPLES)
        } else {
            (inputs, labels.to_vec())
        }
    }
}

/// Progress on stderr: on a terminal one line rewritten at every step (variant, pass n of m,
/// elapsed time); otherwise one line as each variant starts. Nothing with `--quiet`.
struct Progress {
    quiet: bool,
    live: bool,
    start: Instant,
    samples: usize,
    /// The variant whose line was printed last (off a terminal).
    shown: usize,
}

impl Progress {
    fn new(quiet: bool, samples: usize) -> Self {
        Progress {
            quiet,
            live: std::io::stderr().is_terminal(),
            start: Instant::now(),
            samples,
            shown: 0,
        }
    }

    fn step(&mut self, s: Step<'_>) {
        if self.quiet {
            return;
        }
        let elapsed = self.start.elapsed().as_secs_f64();
        let head = format!("bench [{}/{}] {}", s.index, s.count, s.name);
        let mut err = std::io::stderr().lock();
        if self.live {
            let what = match s.stage {
                Stage::Compress => "compressing".to_string(),
                Stage::Pass { pass, of } => {
                    format!("full set ({} samples), pass {pass} of {of}", self.samples)
                }
                Stage::Latency => "single-sample latency".to_string(),
                Stage::Done => "done".to_string(),
            };
            // Cut to the terminal's width: a wrapped line would not be rewritten in place.
            let line = format!("{head}: {what} · {elapsed:.1} s");
            let width = crossterm::terminal::size().map_or(80, |(w, _)| usize::from(w.max(2)));
            let line: String = line.chars().take(width - 1).collect();
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        } else if s.index != self.shown {
            let _ = writeln!(err, "{head} ({elapsed:.1} s so far)");
        }
        self.shown = s.index;
    }

    fn finish(&self) {
        if self.quiet {
            return;
        }
        let elapsed = self.start.elapsed().as_secs_f64();
        let mut err = std::io::stderr().lock();
        if self.live {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "bench: measured in {elapsed:.1} s");
    }
}

/// The line saying what the figures were measured on: `on 256 of 10000 samples of X` under
/// `--quick`, `on 10000 samples of X` otherwise.
fn samples_line(measured: usize, total: usize, source: &std::path::Path, quick: bool) -> String {
    let mut s = if measured < total {
        format!("on {measured} of {total} samples of {}", source.display())
    } else {
        format!("on {total} samples of {}", source.display())
    };
    if quick {
        s += &format!(
            " (--quick: a fixed random subset of at most {QUICK_SAMPLES}, one timed pass, \
             latency from at least {QUICK_LATENCY_RUNS} runs and {QUICK_LATENCY_MS} ms)"
        );
    }
    s
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
    let set = args.data.load(&cm.model)?;
    let (inputs, labels) =
        args.samples(prepare(&cm.model, &set)?, &set.labels, cm.model.input_len());
    let progress = Progress::new(args.quiet, labels.len());
    if !args.quiet {
        eprintln!("bench [1/1] {} as stored", args.model.model.display());
    }
    let (row, m) =
        measure::bench::bench_stored(&cm, pruning.as_ref(), &inputs, &labels, &args.effort());
    progress.finish();
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&[row])?),
        Format::Text => {
            println!(
                "{} (compressed) {}; {} threads\n",
                args.model.model.display(),
                samples_line(labels.len(), set.len(), &set.source, args.quick),
                rayon::current_num_threads()
            );
            print_rows(&[row]);
            println!();
            let w = column_width("layer", m.layers.iter().map(|l| l.name.as_str()));
            let fw = column_width("stored as", m.layers.iter().map(|l| l.format.as_str()));
            println!("  {:<w$} {:<fw$} {:>11}", "layer", "stored as", "bytes");
            for l in &m.layers {
                println!(
                    "  {:<w$} {:<fw$} {:>11}",
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
    let w = column_width("variant", rows.iter().map(|r| r.name.as_str())).max(30);
    println!(
        "{:<w$} {:>8} {:>11} {:>7} {:>11} {:>11} {:>10} {:>8}",
        "variant", "top-1", "size", "ratio", "full set", "latency", "p90", "speed-up"
    );
    for r in rows {
        println!(
            "{:<w$} {:>7.2}% {:>11} {:>6.1}× {:>8.1} ms {:>8.1} µs {:>7.1} µs {:>7.2}×",
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
    let set = args.data.load(model)?;
    let (inputs, labels) = args.samples(prepare(model, &set)?, &set.labels, model.input_len());
    let n = labels.len();
    let mut variants = measure::bench::variants(args.only)?;
    for path in &args.recipe {
        variants.push((path.display().to_string(), Recipe::from_path(path)?));
    }
    let mut progress = Progress::new(args.quiet, n);
    let bench = measure::bench::bench(
        model,
        &inputs,
        &labels,
        variants,
        &args.effort(),
        &mut |s| progress.step(s),
    )?;
    progress.finish();

    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&bench.rows)?),
        Format::Text => {
            println!(
                "{} {}; {} threads\n",
                args.model.model.display(),
                samples_line(n, set.len(), &set.source, args.quick),
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
