//! `squeeze bench`: dense and compressed variants of a model measured in one run — accuracy,
//! exact size, full-set evaluation time and single-sample latency.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use serde::Serialize;

use super::common::{DataArgs, Format, ModelArgs, load_model, prepare};
use crate::compress::{self, Recipe};
use crate::engine::{self, CompressedModel};
use crate::measure::{self, OutputKind};
use crate::model::Model;
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

#[derive(Debug, Serialize)]
struct Row {
    name: String,
    accuracy: f64,
    size_bytes: usize,
    ratio: f64,
    /// Median wall time of evaluating the whole set (chunks of samples spread over all threads).
    full_set_ms: f64,
    latency_us: f64,
    latency_p90_us: f64,
    /// Dense f32 single-sample latency of the same engine divided by this one, both measured in
    /// alternating bursts (`engine::latency_pair`).
    speedup: f64,
}

/// The built-in comparison set: the cases the peers are compared on.
fn builtin() -> Vec<(&'static str, &'static str)> {
    vec![
        ("l1 90 %", "[default]\nprune = \"l1\"\nsparsity = 0.9\n"),
        ("l1 95 %", "[default]\nprune = \"l1\"\nsparsity = 0.95\n"),
        ("int8 weights", "[default]\nbits = 8\n"),
        ("int4 weights", "[default]\nbits = 4\n"),
        (
            "l1 90 % + int4",
            "[default]\nprune = \"l1\"\nsparsity = 0.9\nbits = 4\n",
        ),
        (
            "kmeans 5 bits",
            "[default]\nbits = 5\nscheme = \"kmeans\"\n",
        ),
        ("2:4 + f16", "[default]\nprune = \"nm\"\nbits = 16\n"),
        (
            "int8 weights + activations",
            "[default]\nbits = 8\n[activations]\nbits = 8\ncalibration_samples = 512\n",
        ),
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Single-sample latency of the candle reference forward pass.
fn candle_latency(model: &Model, sample: &[f32]) -> anyhow::Result<(f64, f64)> {
    let mut shape = vec![1];
    shape.extend(&model.input.shape);
    let x = Tensor::from_slice(sample, shape, &Device::Cpu)?;
    for _ in 0..20 {
        model.forward(&x)?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 200 || start.elapsed() < Duration::from_millis(300) {
        let t = Instant::now();
        std::hint::black_box(model.forward(&x)?);
        times.push(t.elapsed().as_secs_f64() * 1e6);
        if times.len() >= 20_000 {
            break;
        }
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Ok((at(0.5), at(0.9)))
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
    let m = measure::measure(
        &cm,
        None,
        pruning.as_ref(),
        &inputs,
        &set.labels,
        None,
        measure::Timing {
            latency: true,
            throughput: false,
        },
    );
    let mut times = Vec::new();
    for _ in 0..args.repeat.max(1) {
        let t = Instant::now();
        std::hint::black_box(cm.logits(&inputs, n));
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let row = Row {
        name: "as stored".into(),
        accuracy: m.accuracy.accuracy,
        size_bytes: m.size_bytes,
        ratio: m.ratio,
        full_set_ms: median(times),
        latency_us: m.latency_us,
        latency_p90_us: m.latency_p90_us,
        speedup: 1.0,
    };
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

fn print_rows(rows: &[Row]) {
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
    // The FMA peak for the roofline line, measured before the variants and again after them
    // (the higher is kept): a neighbour busy through one measurement does not halve it.
    let peak_before = engine::fma_peak_gflops(Duration::from_millis(500));
    let n = set.len();
    let repeat = args.repeat.max(1);
    let kind = OutputKind::of(model);
    let mut rows = Vec::new();

    let dense_size = model.compressible().map(|(_, l)| l.param_count() * 4).sum();

    let mut recipes: Vec<(String, Recipe)> = vec![("dense f32".into(), Recipe::default())];
    if !args.only {
        for (name, text) in builtin() {
            recipes.push((name.into(), Recipe::from_toml_str(text)?));
        }
    }
    for path in &args.recipe {
        recipes.push((path.display().to_string(), Recipe::from_path(path)?));
    }
    let mut dense: Option<CompressedModel> = None;
    let mut dense_macs = 0u64;
    for (name, recipe) in recipes {
        let calib = recipe.activations.as_ref().map(|a| {
            let count = a.calibration_samples.min(n);
            (&inputs[..count * model.input_len()], count)
        });
        let plan = compress::apply(model, &recipe, calib)?;
        let cm = CompressedModel::build(&plan)?;
        // One untimed pass first: it builds the batched layouts (decoded panels) and wakes the
        // thread pool, which a timed pass should not pay for.
        let mut outputs = cm.logits(&inputs, n);
        let mut times = Vec::new();
        for _ in 0..repeat {
            let t = Instant::now();
            outputs = cm.logits(&inputs, n);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let acc = measure::score(&outputs, cm.num_classes(), &set.labels, kind, None);
        // The dense model's latency alone; every other variant's in alternating bursts with
        // the dense model's, so each speed-up compares two medians taken in the same moments.
        let sample = &inputs[..cm.input_len()];
        let (lat, speedup) = match &dense {
            None => (engine::latency(&cm, sample), 1.0),
            Some(d) => {
                let (base, lat) = engine::latency_pair(d, &cm, sample);
                let speedup = base.median_us / lat.median_us.max(1e-9);
                (lat, speedup)
            }
        };
        rows.push(Row {
            name,
            accuracy: acc.accuracy,
            size_bytes: cm.size_bytes(),
            ratio: dense_size as f64 / cm.size_bytes().max(1) as f64,
            full_set_ms: median(times),
            latency_us: lat.median_us,
            latency_p90_us: lat.p90_us,
            speedup,
        });
        if dense.is_none() {
            dense_macs = cm.dense_macs();
            dense = Some(cm);
        }
    }

    // The candle reference, measured after the engine so the threads it starts cannot weigh
    // on the engine's figures; listed first.
    let mut times = Vec::new();
    let mut outputs = Vec::new();
    for _ in 0..repeat {
        let t = Instant::now();
        outputs = measure::dense_outputs(model, &inputs, n)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let acc = measure::score(&outputs, model.num_classes(), &set.labels, kind, None);
    let (lat, p90) = candle_latency(model, &inputs[..model.input_len()])?;
    rows.insert(
        0,
        Row {
            name: "dense f32 (candle reference)".into(),
            accuracy: acc.accuracy,
            size_bytes: dense_size,
            ratio: 1.0,
            full_set_ms: median(times),
            latency_us: lat,
            latency_p90_us: p90,
            speedup: 0.0,
        },
    );

    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Text => {
            println!(
                "{} on {} samples of {}; {} threads\n",
                args.model.model.display(),
                n,
                set.source.display(),
                rayon::current_num_threads()
            );
            print_rows(&rows);
            // The roofline: how long the dense evaluation's multiply-adds take at the FMA peak
            // measured now on the same threads.
            if let Some(dense) = rows.get(1) {
                let peak = engine::fma_peak_gflops(Duration::from_millis(500)).max(peak_before);
                let floor_ms = 2.0 * dense_macs as f64 * n as f64 / (peak * 1e9) * 1e3;
                println!(
                    "\nFMA peak on {} threads, measured now: {peak:.0} GFLOP/s. The dense full set \
                     ({n} × {dense_macs} multiply-adds) needs at least {floor_ms:.1} ms at that \
                     peak; measured {:.1} ms ({:.0} % of peak).",
                    rayon::current_num_threads(),
                    dense.full_set_ms,
                    100.0 * floor_ms / dense.full_set_ms.max(1e-9)
                );
            }
        }
    }
    Ok(())
}
