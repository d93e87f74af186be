//! What `squeeze bench` measures: dense and compressed variants of one model in one run —
//! accuracy, exact size, the median time of evaluating the whole set, and single-sample
//! latency, each variant's speed-up taken against the dense engine in alternating bursts —
//! beside the candle reference forward pass, and the FMA roofline of the dense evaluation.

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use serde::Serialize;

use super::{Measurement, OutputKind, PruningRecord, Timing};
use crate::compress::{self, Recipe, RecipeError};
use crate::engine::{self, CompressedModel};
use crate::model::Model;

/// One measured variant.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub name: String,
    pub accuracy: f64,
    pub size_bytes: usize,
    pub ratio: f64,
    /// Median wall time of evaluating the whole set (chunks of samples spread over all threads).
    pub full_set_ms: f64,
    pub latency_us: f64,
    pub latency_p90_us: f64,
    /// Dense f32 single-sample latency of the same engine divided by this one, both measured in
    /// alternating bursts (`engine::latency_pair`).
    pub speedup: f64,
}

/// Why a variant could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Compress(#[from] compress::CompressError),
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The built-in comparison set: the cases the peers are compared on.
pub const BUILTIN: [(&str, &str); 8] = [
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
];

/// The variants a bench measures: the dense f32 baseline first, then the built-in set unless
/// `only`.
pub fn variants(only: bool) -> Result<Vec<(String, Recipe)>, RecipeError> {
    let mut out = vec![("dense f32".to_string(), Recipe::default())];
    if !only {
        for (name, text) in BUILTIN {
            out.push((name.to_string(), Recipe::from_toml_str(text)?));
        }
    }
    Ok(out)
}

/// The rows of a bench (the candle reference first, then each variant in order), with what the
/// roofline needs.
#[derive(Debug, Clone)]
pub struct Bench {
    pub rows: Vec<BenchRow>,
    /// Multiply-adds of one sample through the dense model.
    pub dense_macs: u64,
    /// The FMA peak (GFLOP/s) measured before the variants.
    pub peak_before: f64,
}

/// The median of `v` (the upper one of an even count); 0 for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Wall times in milliseconds of `repeat` runs of `f`; the last run's output.
fn timed<T>(repeat: usize, mut f: impl FnMut() -> T) -> (Vec<f64>, Option<T>) {
    let mut times = Vec::with_capacity(repeat);
    let mut last = None;
    for _ in 0..repeat {
        let t = Instant::now();
        last = Some(f());
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    (times, last)
}

/// Single-sample latency (median, p90, µs) of the candle reference forward pass.
pub fn candle_latency(model: &Model, sample: &[f32]) -> candle_core::Result<(f64, f64)> {
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

/// Measures each of `variants` (the first is the dense baseline the speed-ups compare with) on
/// `n` prepared `inputs` with their `labels`, timing `repeat` full-set passes after an untimed
/// one; then the candle reference, listed first.
pub fn bench(
    model: &Model,
    inputs: &[f32],
    labels: &[u32],
    variants: Vec<(String, Recipe)>,
    repeat: usize,
) -> Result<Bench, BenchError> {
    // The FMA peak for the roofline line, measured before the variants and again after them
    // (the higher is kept): a neighbour busy through one measurement does not halve it.
    let peak_before = engine::fma_peak_gflops(Duration::from_millis(500));
    let n = labels.len();
    let repeat = repeat.max(1);
    let kind = OutputKind::of(model);
    let dense_size: usize = model.compressible().map(|(_, l)| l.param_count() * 4).sum();
    let mut rows = Vec::new();
    let mut dense: Option<CompressedModel> = None;
    let mut dense_macs = 0u64;
    for (name, recipe) in variants {
        let calib = recipe.activations.as_ref().map(|a| {
            let count = a.calibration_samples.min(n);
            (&inputs[..count * model.input_len()], count)
        });
        let plan = compress::apply(model, &recipe, calib)?;
        let cm = CompressedModel::build(&plan)?;
        // One untimed pass first: it builds the batched layouts (decoded panels) and wakes the
        // thread pool, which a timed pass should not pay for.
        let first = cm.logits(inputs, n);
        let (times, last) = timed(repeat, || cm.logits(inputs, n));
        let outputs = last.unwrap_or(first);
        let acc = super::score(&outputs, cm.num_classes(), labels, kind, None);
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
        rows.push(BenchRow {
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
    let mut times = Vec::with_capacity(repeat);
    let mut outputs = Vec::new();
    for _ in 0..repeat {
        let t = Instant::now();
        outputs = super::dense_outputs(model, inputs, n)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let acc = super::score(&outputs, model.num_classes(), labels, kind, None);
    let (lat, p90) = candle_latency(model, &inputs[..model.input_len()])?;
    rows.insert(
        0,
        BenchRow {
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
    Ok(Bench {
        rows,
        dense_macs,
        peak_before,
    })
}

/// A compressed file measured as it is stored: its measurement (latency included) and one row
/// timing `repeat` full-set passes. There is no dense model to compare with, so no speed-up.
pub fn bench_stored(
    cm: &CompressedModel,
    pruning: Option<&PruningRecord>,
    inputs: &[f32],
    labels: &[u32],
    repeat: usize,
) -> (BenchRow, Measurement) {
    let n = labels.len();
    let m = super::measure(
        cm,
        None,
        pruning,
        inputs,
        labels,
        None,
        Timing {
            latency: true,
            throughput: false,
        },
    );
    let (times, _) = timed(repeat.max(1), || {
        std::hint::black_box(cm.logits(inputs, n));
    });
    let row = BenchRow {
        name: "as stored".into(),
        accuracy: m.accuracy.accuracy,
        size_bytes: m.size_bytes,
        ratio: m.ratio,
        full_set_ms: median(times),
        latency_us: m.latency_us,
        latency_p90_us: m.latency_p90_us,
        speedup: 1.0,
    };
    (row, m)
}

/// How long the dense engine's full set takes against the FMA peak.
#[derive(Debug, Clone, Copy)]
pub struct Roofline {
    /// GFLOP/s: the higher of the peak measured before the variants and one measured now.
    pub peak_gflops: f64,
    /// The least time `samples` × the dense multiply-adds take at that peak.
    pub floor_ms: f64,
    /// The dense engine's measured full-set time.
    pub measured_ms: f64,
}

impl Bench {
    /// The roofline of the dense engine's full set of `samples`, measuring the FMA peak again
    /// now on the same threads; `None` without a dense engine row.
    pub fn roofline(&self, samples: usize) -> Option<Roofline> {
        let dense = self.rows.get(1)?;
        let peak = engine::fma_peak_gflops(Duration::from_millis(500)).max(self.peak_before);
        Some(Roofline {
            peak_gflops: peak,
            floor_ms: 2.0 * self.dense_macs as f64 * samples as f64 / (peak * 1e9) * 1e3,
            measured_ms: dense.full_set_ms,
        })
    }
}
