//! What `squeeze bench` measures: dense and compressed variants of one model in one run —
//! accuracy, exact size, the median time of evaluating the whole set, and single-sample
//! latency, each variant's speed-up taken against the dense engine in alternating bursts —
//! beside the candle reference forward pass when asked for, and the FMA roofline of the dense
//! evaluation. Each step is reported to a progress callback as it starts; `Effort::quick`
//! trades precision for an answer within a minute on a MobileNetV2-sized model.

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
    /// Samples the accuracy and the full-set time were measured on.
    pub samples: usize,
}

/// How much measuring a bench does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Effort {
    /// Timed full-set passes, after one untimed pass (the median is reported).
    pub repeat: usize,
    /// Single-sample latency: at least this many runs...
    pub latency_runs: usize,
    /// ...and at least this long.
    pub latency_time: Duration,
    /// Also measure candle's forward pass, the reference the engine is checked against.
    pub reference: bool,
}

/// Samples `--quick` measures accuracy and the full-set time on: a fixed random subset.
pub const QUICK_SAMPLES: usize = 256;
/// Single-sample latency runs under `--quick` (at least, each variant).
pub const QUICK_LATENCY_RUNS: usize = 20;
/// Single-sample latency time under `--quick` (at least, each variant), in milliseconds.
pub const QUICK_LATENCY_MS: u64 = 50;

impl Effort {
    /// The full measurement: `repeat` timed passes, latency from at least 200 runs and 0.3 s.
    pub fn full(repeat: usize, reference: bool) -> Self {
        Effort {
            repeat: repeat.max(1),
            latency_runs: 200,
            latency_time: Duration::from_millis(300),
            reference,
        }
    }

    /// `--quick`: one timed pass, latency from at least `QUICK_LATENCY_RUNS` runs and
    /// `QUICK_LATENCY_MS` ms (the samples are cut by `subset`).
    pub fn quick(reference: bool) -> Self {
        Effort {
            repeat: 1,
            latency_runs: QUICK_LATENCY_RUNS,
            latency_time: Duration::from_millis(QUICK_LATENCY_MS),
            reference,
        }
    }
}

/// A fixed random choice of `k` of the `labels.len()` samples (all of them when `k` is not
/// smaller), in their order in the set: the same subset every run. `inputs` holds
/// `sample_len` values per sample.
pub fn subset(inputs: &[f32], labels: &[u32], sample_len: usize, k: usize) -> (Vec<f32>, Vec<u32>) {
    use rand::SeedableRng;
    let n = labels.len();
    if k >= n {
        return (inputs.to_vec(), labels.to_vec());
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_be4c);
    let mut idx = rand::seq::index::sample(&mut rng, n, k).into_vec();
    idx.sort_unstable();
    let mut xs = Vec::with_capacity(k * sample_len);
    let mut ys = Vec::with_capacity(k);
    for i in idx {
        xs.extend_from_slice(&inputs[i * sample_len..(i + 1) * sample_len]);
        ys.push(labels[i]);
    }
    (xs, ys)
}

/// What a bench is doing, reported as each step starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Compressing the model by the variant's recipe and packing it.
    Compress,
    /// Evaluating the whole set: pass `pass` (1-based) of `of`; the first is untimed.
    Pass { pass: usize, of: usize },
    /// Timing single samples.
    Latency,
    /// The variant is measured.
    Done,
}

/// One step of a bench: variant `index` (1-based) of `count`, named `name`.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    pub index: usize,
    pub count: usize,
    pub name: &'a str,
    pub stage: Stage,
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

/// The rows of a bench (the candle reference first when measured, then each variant in order),
/// with what the roofline needs.
#[derive(Debug, Clone)]
pub struct Bench {
    pub rows: Vec<BenchRow>,
    /// Whether `rows` starts with the candle reference.
    pub reference: bool,
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

/// Single-sample latency (median, p90, µs) of the candle reference forward pass: at least
/// `min_runs` runs and `min_time` after `min(20, min_runs)` untimed ones.
pub fn candle_latency(
    model: &Model,
    sample: &[f32],
    min_runs: usize,
    min_time: Duration,
) -> candle_core::Result<(f64, f64)> {
    let mut shape = vec![1];
    shape.extend(&model.input.shape);
    let x = Tensor::from_slice(sample, shape, &Device::Cpu)?;
    for _ in 0..min_runs.clamp(1, 20) {
        model.forward(&x)?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < min_runs.max(1) || start.elapsed() < min_time {
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
/// `n` prepared `inputs` with their `labels`, timing `effort.repeat` full-set passes after an
/// untimed one; then, when `effort.reference`, the candle reference, listed first. `progress`
/// hears of each step as it starts.
pub fn bench(
    model: &Model,
    inputs: &[f32],
    labels: &[u32],
    variants: Vec<(String, Recipe)>,
    effort: &Effort,
    progress: &mut dyn FnMut(Step<'_>),
) -> Result<Bench, BenchError> {
    // The FMA peak for the roofline line, measured before the variants and again after them
    // (the higher is kept): a neighbour busy through one measurement does not halve it.
    let peak_before = engine::fma_peak_gflops(Duration::from_millis(500));
    let n = labels.len();
    let repeat = effort.repeat.max(1);
    let kind = OutputKind::of(model);
    let dense_size: usize = model.compressible().map(|(_, l)| l.param_count() * 4).sum();
    let count = variants.len() + usize::from(effort.reference);
    let mut rows = Vec::new();
    let mut dense: Option<CompressedModel> = None;
    let mut dense_macs = 0u64;
    for (i, (name, recipe)) in variants.into_iter().enumerate() {
        let mut step = |stage| {
            progress(Step {
                index: i + 1,
                count,
                name: &name,
                stage,
            })
        };
        step(Stage::Compress);
        let calib = recipe.activations.as_ref().map(|a| {
            let count = a.calibration_samples.min(n);
            (&inputs[..count * model.input_len()], count)
        });
        let plan = compress::apply(model, &recipe, calib)?;
        let cm = CompressedModel::build(&plan)?;
        // One untimed pass first: it builds the batched layouts (decoded panels) and wakes the
        // thread pool, which a timed pass should not pay for.
        step(Stage::Pass {
            pass: 1,
            of: repeat + 1,
        });
        let first = cm.logits(inputs, n);
        let mut pass = 1;
        let (times, last) = timed(repeat, || {
            pass += 1;
            step(Stage::Pass {
                pass,
                of: repeat + 1,
            });
            cm.logits(inputs, n)
        });
        let outputs = last.unwrap_or(first);
        let acc = super::score(&outputs, cm.num_classes(), labels, kind, None);
        // The dense model's latency alone; every other variant's in alternating bursts with
        // the dense model's, so each speed-up compares two medians taken in the same moments.
        step(Stage::Latency);
        let sample = &inputs[..cm.input_len()];
        let (lat, speedup) = match &dense {
            None => (
                engine::latency_with(&cm, sample, effort.latency_runs, effort.latency_time),
                1.0,
            ),
            Some(d) => {
                let (base, lat) = engine::latency_pair_with(
                    d,
                    &cm,
                    sample,
                    effort.latency_runs,
                    effort.latency_time,
                );
                let speedup = base.median_us / lat.median_us.max(1e-9);
                (lat, speedup)
            }
        };
        step(Stage::Done);
        rows.push(BenchRow {
            name: name.clone(),
            accuracy: acc.accuracy,
            size_bytes: cm.size_bytes(),
            ratio: dense_size as f64 / cm.size_bytes().max(1) as f64,
            full_set_ms: median(times),
            latency_us: lat.median_us,
            latency_p90_us: lat.p90_us,
            speedup,
            samples: n,
        });
        if dense.is_none() {
            dense_macs = cm.dense_macs();
            dense = Some(cm);
        }
    }

    // The candle reference, measured after the engine so the threads it starts cannot weigh
    // on the engine's figures; listed first.
    if effort.reference {
        const NAME: &str = "dense f32 (candle reference)";
        let mut step = |stage| {
            progress(Step {
                index: count,
                count,
                name: NAME,
                stage,
            })
        };
        let mut times = Vec::with_capacity(repeat);
        let mut outputs = Vec::new();
        for pass in 1..=repeat {
            step(Stage::Pass { pass, of: repeat });
            let t = Instant::now();
            outputs = super::dense_outputs(model, inputs, n)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let acc = super::score(&outputs, model.num_classes(), labels, kind, None);
        step(Stage::Latency);
        let (lat, p90) = candle_latency(
            model,
            &inputs[..model.input_len()],
            effort.latency_runs,
            effort.latency_time,
        )?;
        step(Stage::Done);
        rows.insert(
            0,
            BenchRow {
                name: NAME.into(),
                accuracy: acc.accuracy,
                size_bytes: dense_size,
                ratio: 1.0,
                full_set_ms: median(times),
                latency_us: lat,
                latency_p90_us: p90,
                speedup: 0.0,
                samples: n,
            },
        );
    }
    Ok(Bench {
        rows,
        reference: effort.reference,
        dense_macs,
        peak_before,
    })
}

/// A compressed file measured as it is stored: its measurement and one row timing
/// `effort.repeat` full-set passes and single-sample latency as `effort` says. There is no
/// dense model to compare with, so no speed-up.
pub fn bench_stored(
    cm: &CompressedModel,
    pruning: Option<&PruningRecord>,
    inputs: &[f32],
    labels: &[u32],
    effort: &Effort,
) -> (BenchRow, Measurement) {
    let n = labels.len();
    let mut m = super::measure(
        cm,
        None,
        pruning,
        inputs,
        labels,
        None,
        Timing {
            latency: false,
            throughput: false,
        },
    );
    let (times, _) = timed(effort.repeat.max(1), || {
        std::hint::black_box(cm.logits(inputs, n));
    });
    let lat = engine::latency_with(
        cm,
        &inputs[..cm.input_len()],
        effort.latency_runs,
        effort.latency_time,
    );
    m.latency_us = lat.median_us;
    m.latency_p90_us = lat.p90_us;
    let row = BenchRow {
        name: "as stored".into(),
        accuracy: m.accuracy.accuracy,
        size_bytes: m.size_bytes,
        ratio: m.ratio,
        full_set_ms: median(times),
        latency_us: lat.median_us,
        latency_p90_us: lat.p90_us,
        speedup: 1.0,
        samples: n,
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
        let dense = self.rows.get(usize::from(self.reference))?;
        let peak = engine::fma_peak_gflops(Duration::from_millis(500)).max(self.peak_before);
        Some(Roofline {
            peak_gflops: peak,
            floor_ms: 2.0 * self.dense_macs as f64 * samples as f64 / (peak * 1e9) * 1e3,
            measured_ms: dense.full_set_ms,
        })
    }
}
