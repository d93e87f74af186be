//! Timing the engine: single-sample latency (alone, or in alternating bursts with a second
//! model), batched throughput, and the machine's FMA peak the matrix kernels are judged
//! against.

use std::time::{Duration, Instant};

use super::cpu::Isa;
use super::model::CompressedModel;
#[cfg(target_arch = "x86_64")]
use super::simd;

/// Single-sample latency on one thread.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LatencyStats {
    pub median_us: f64,
    pub p90_us: f64,
    pub runs: usize,
}

impl LatencyStats {
    /// The median and 90th percentile of per-run times in µs (zeros for no runs).
    fn of(mut times: Vec<f64>) -> Self {
        times.sort_by(f64::total_cmp);
        let last = times.len().saturating_sub(1) as f64;
        let at = |q: f64| {
            times
                .get((last * q).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        LatencyStats {
            median_us: at(0.5),
            p90_us: at(0.9),
            runs: times.len(),
        }
    }
}

/// Times single-sample inference of `sample` on the calling thread: a warm-up, then at least
/// 200 runs and at least 0.3 s (at most 20,000 runs). Each run is timed on its own.
pub fn latency(model: &CompressedModel, sample: &[f32]) -> LatencyStats {
    latency_with(model, sample, 200, Duration::from_millis(300))
}

/// `latency` with a chosen minimum number of runs and minimum time.
pub fn latency_with(
    model: &CompressedModel,
    sample: &[f32],
    min_runs: usize,
    min_time: Duration,
) -> LatencyStats {
    let mut s = model.scratch();
    let mut out = vec![0f32; model.num_classes()];
    let x = &sample[..model.input_len()];
    let warm = Instant::now();
    let mut w = 0;
    while w < 20 || (warm.elapsed() < Duration::from_millis(50) && w < 2000) {
        model.run(x, 1, &mut s, &mut out);
        w += 1;
    }
    let mut times = Vec::with_capacity(min_runs.max(1024));
    let start = Instant::now();
    while (times.len() < min_runs || start.elapsed() < min_time) && times.len() < 20_000 {
        let t = Instant::now();
        model.run(x, 1, &mut s, &mut out);
        std::hint::black_box(&out);
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    LatencyStats::of(times)
}

/// Single-sample latency of two models measured in alternating bursts on the calling thread,
/// so that both medians come from the same moments: on a shared machine a neighbour's burst
/// then weighs on both instead of on one, and their ratio stays honest. Each burst of
/// 200 timed runs follows 20 untimed ones that bring the model's weights back into the
/// cache; at least 200 runs each and 0.3 s in all (at most 20,000 runs each, plus a burst).
pub fn latency_pair(
    a: &CompressedModel,
    b: &CompressedModel,
    sample: &[f32],
) -> (LatencyStats, LatencyStats) {
    latency_pair_with(a, b, sample, 200, Duration::from_millis(300))
}

/// `latency_pair` with a chosen minimum number of runs each and minimum time: bursts of
/// `min(min_runs, 200)` timed runs, each after `min(20, burst)` untimed ones.
pub fn latency_pair_with(
    a: &CompressedModel,
    b: &CompressedModel,
    sample: &[f32],
    min_runs: usize,
    min_time: Duration,
) -> (LatencyStats, LatencyStats) {
    let burst = min_runs.clamp(1, 200);
    let warm = burst.min(20);
    let models = [a, b];
    let mut scratch = models.map(|m| m.scratch());
    let mut outs = models.map(|m| vec![0f32; m.num_classes()]);
    let mut times: [Vec<f64>; 2] = [Vec::with_capacity(1024), Vec::with_capacity(1024)];
    let start = Instant::now();
    while (times[1].len() < min_runs || start.elapsed() < min_time) && times[1].len() < 20_000 {
        for k in 0..2 {
            let (m, s, out) = (models[k], &mut scratch[k], &mut outs[k]);
            let x = &sample[..m.input_len()];
            for _ in 0..warm {
                m.run(x, 1, s, out);
            }
            for _ in 0..burst {
                let t = Instant::now();
                m.run(x, 1, s, out);
                std::hint::black_box(&*out);
                times[k].push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    let [ta, tb] = times.map(LatencyStats::of);
    (ta, tb)
}

/// Samples per second at batch 256 on all threads of rayon's pool: `inputs` holds `n` samples,
/// cycled through in batches of 256 for at least 0.3 s after one warm-up batch.
pub fn throughput(model: &CompressedModel, inputs: &[f32], n: usize) -> f64 {
    const BATCH: usize = 256;
    let il = model.input_len();
    if n == 0 || il == 0 {
        return 0.0;
    }
    // A batch of 256 samples, repeating the inputs when there are fewer.
    let batch: Vec<f32> = (0..BATCH)
        .flat_map(|i| inputs[(i % n) * il..(i % n + 1) * il].iter().copied())
        .collect();
    std::hint::black_box(model.logits(&batch, BATCH));
    let start = Instant::now();
    let mut done = 0usize;
    while start.elapsed() < Duration::from_millis(300) || done < 4 * BATCH {
        std::hint::black_box(model.logits(&batch, BATCH));
        done += BATCH;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// The machine's f32 multiply-add throughput, measured now: every thread of rayon's pool runs
/// twelve independent FMA chains of 16 lanes for `time` at once (AVX-512 where the kernels use
/// it); returns the total in GFLOP/s (2 FLOP per multiply-add). Each thread keeps its best
/// tenth of `time`, so a neighbour's burst on a shared host does not pass for the machine's
/// speed. The roofline the matrix kernels are judged against: a dense product of `m`
/// multiply-adds cannot take less than `2·m / peak` seconds.
pub fn fma_peak_gflops(time: Duration) -> f64 {
    let window = time / 10;
    let best = rayon::broadcast(|_| {
        let mut best = 0f64;
        for _ in 0..10 {
            let start = Instant::now();
            let mut flops = 0f64;
            while start.elapsed() < window {
                flops += fma_burst();
            }
            best = best.max(flops / start.elapsed().as_secs_f64().max(1e-9));
        }
        best
    });
    best.iter().sum::<f64>() / 1e9
}

/// One burst of independent FMA chains; returns the FLOPs done.
fn fma_burst() -> f64 {
    const STEPS: usize = 100_000;
    const CHAINS: usize = 12;
    #[cfg(target_arch = "x86_64")]
    if Isa::current().avx512.is_some() {
        // SAFETY: the `Avx512` token vouches for AVX-512F.
        let r = unsafe { simd::fma_chains(STEPS) };
        std::hint::black_box(r);
        return (STEPS * CHAINS * 16 * 2) as f64;
    }
    let mut acc = [[1f32; 16]; CHAINS];
    let (m, c) = (
        std::hint::black_box(0.999_999f32),
        std::hint::black_box(1e-7f32),
    );
    for _ in 0..STEPS {
        for chain in acc.iter_mut() {
            for v in chain.iter_mut() {
                *v = v.mul_add(m, c);
            }
        }
    }
    std::hint::black_box(&acc);
    (STEPS * CHAINS * 16 * 2) as f64
}

/// Single-sample time of each step of `model` on the calling thread, in µs: the median over at
/// least `min_runs` runs and `min_time` (after a warm-up), one value per model layer (zero for
/// layers the engine folds into their neighbours). Their sum is close to `latency`'s median;
/// the clock reads between steps add well under a microsecond a layer.
pub fn layer_times(
    model: &CompressedModel,
    sample: &[f32],
    min_runs: usize,
    min_time: Duration,
) -> Vec<f64> {
    let mut s = model.scratch();
    s.step_times = Some(Vec::new());
    let mut out = vec![0f32; model.num_classes()];
    let x = &sample[..model.input_len()];
    for _ in 0..min_runs.clamp(1, 20) {
        model.run(x, 1, &mut s, &mut out);
    }
    let mut runs: Vec<Vec<f64>> = Vec::new();
    let start = Instant::now();
    while (runs.len() < min_runs || start.elapsed() < min_time) && runs.len() < 20_000 {
        model.run(x, 1, &mut s, &mut out);
        std::hint::black_box(&out);
        runs.push(s.step_times.clone().unwrap_or_default());
    }
    let steps = runs.first().map_or(0, Vec::len);
    (0..steps)
        .map(|i| LatencyStats::of(runs.iter().map(|r| r[i] * 1e6).collect()).median_us)
        .collect()
}
