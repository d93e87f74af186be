//! Weight quantization: uniform integer levels (symmetric / asymmetric, per tensor, channel or
//! group), k-means weight sharing (Deep Compression), and f16/bf16 rounding. Every function
//! takes the layer's weights with pruned ones already zero and the keep mask, and keeps pruned
//! weights exactly zero.
//!
//! Rounding is to nearest with ties to even, as PyTorch's `quantize_per_tensor` /
//! `quantize_per_channel` (`nearbyint`) do.

use half::{bf16, f16};

use super::{FloatStorage, Granularity, WeightValues};

/// Uniform quantization to `bits` (1..=8; 1 only asymmetric — validation rejects 1-bit
/// symmetric, which has no level but 0).
///
/// - symmetric: `scale = max|w| / (2^(b−1) − 1)`, codes `round(w/scale) + 2^(b−1)` in
///   `1..2^b` (code 0 unused, so the levels are symmetric), zero point `2^(b−1)`;
/// - asymmetric: the range `[min, max]` of the kept weights extended to include 0,
///   `scale = (max − min) / (2^b − 1)`, integer zero point `round(−min/scale)` so 0.0 is exactly
///   a level; codes `round(w/scale) + zp` clamped to `0..2^b`. Rounding the zero point moves
///   the range by at most scale/2, so no kept weight is further than scale/2 from its level.
///
/// Statistics come from the kept weights only. A group with no non-zero kept weight gets scale
/// 0 and every code equal to its zero point. Pruned weights get the zero point's code.
pub fn quantize_uniform(
    weights: &[f32],
    kept: &[bool],
    rows: usize,
    cols: usize,
    bits: u8,
    symmetric: bool,
    granularity: Granularity,
) -> WeightValues {
    let bits = bits.clamp(1, 8);
    let groups = granularity.group_count(rows, cols);
    let mut lo = vec![0f32; groups];
    let mut hi = vec![0f32; groups];
    for r in 0..rows {
        for c in 0..cols {
            let i = r * cols + c;
            if kept[i] {
                let g = granularity.group_of(r, c, cols);
                lo[g] = lo[g].min(weights[i]);
                hi[g] = hi[g].max(weights[i]);
            }
        }
    }
    let (qmin, qmax) = if symmetric {
        (1i32, (1i32 << bits) - 1)
    } else {
        (0i32, (1i32 << bits) - 1)
    };
    let mut scales = vec![0f32; groups];
    let mut zero_points = vec![0i32; groups];
    for g in 0..groups {
        if symmetric {
            let half = (1i32 << (bits - 1)) - 1;
            let m = lo[g].abs().max(hi[g].abs());
            scales[g] = if half > 0 { m / half as f32 } else { 0.0 };
            zero_points[g] = 1i32 << (bits - 1);
        } else {
            let scale = (hi[g] - lo[g]) / qmax as f32;
            scales[g] = scale;
            zero_points[g] = if scale > 0.0 {
                ((-lo[g] / scale).round_ties_even() as i32).clamp(0, qmax)
            } else {
                0
            };
        }
        if !(scales[g].is_finite() && scales[g] > 0.0) {
            scales[g] = 0.0;
        }
    }
    let mut codes = vec![0u8; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let i = r * cols + c;
            let g = granularity.group_of(r, c, cols);
            let zp = zero_points[g];
            let code = if kept[i] && scales[g] > 0.0 {
                ((weights[i] / scales[g]).round_ties_even() as i32 + zp).clamp(qmin, qmax)
            } else {
                zp
            };
            // qmax ≤ 255 and codes are clamped to [0, qmax].
            codes[i] = code as u8;
        }
    }
    WeightValues::Uniform {
        bits,
        codes,
        scales,
        zero_points,
        granularity,
    }
}

/// The outcome of k-means weight sharing.
#[derive(Debug, Clone)]
pub struct KMeans {
    pub values: WeightValues,
    /// Lloyd iterations run.
    pub iterations: usize,
    /// `true` when the assignments stopped changing before the iteration cap.
    pub converged: bool,
}

/// The iteration cap for Lloyd's algorithm.
pub const KMEANS_MAX_ITERATIONS: usize = 300;

/// Deep Compression's weight sharing: at most `2^bits` shared values per layer.
///
/// Pruned weights are excluded from clustering. When the layer has any, codebook entry 0 is
/// reserved as exactly 0.0 (it counts against the `2^bits`) and every pruned weight points at
/// it, so a dense unpacking of the codes still gives exact zeros; the kept weights share the
/// other `2^bits − 1` entries. Centroids start linearly spaced between the kept weights' min
/// and max; Lloyd iterations run until no assignment changes (capped at
/// `KMEANS_MAX_ITERATIONS`); clusters left empty are dropped from the codebook.
pub fn kmeans(weights: &[f32], kept: &[bool], bits: u8) -> KMeans {
    let bits = bits.clamp(1, 8);
    let has_pruned = kept.iter().any(|k| !k);
    let reserved = usize::from(has_pruned);
    let k = (1usize << bits) - reserved;
    let values: Vec<f32> = weights
        .iter()
        .zip(kept)
        .filter(|(_, k)| **k)
        .map(|(w, _)| *w)
        .collect();
    let (centroids, assign, iterations, converged) = lloyd_1d(&values, k);
    let mut codebook = Vec::with_capacity(centroids.len() + reserved);
    if has_pruned {
        codebook.push(0.0);
    }
    codebook.extend_from_slice(&centroids);
    let mut codes = vec![0u8; weights.len()];
    let mut next = 0;
    for (i, code) in codes.iter_mut().enumerate() {
        if kept[i] {
            // At most 2^bits ≤ 256 entries, so the index fits a u8.
            *code = (assign[next] + reserved) as u8;
            next += 1;
        }
    }
    KMeans {
        values: WeightValues::Codebook {
            bits,
            codes,
            codebook,
        },
        iterations,
        converged,
    }
}

/// One-dimensional k-means with linear initialization. Returns the (ascending, non-empty)
/// centroids, each value's centroid index, the iterations run, and whether it converged.
pub fn lloyd_1d(values: &[f32], k: usize) -> (Vec<f32>, Vec<usize>, usize, bool) {
    if values.is_empty() || k == 0 {
        return (Vec::new(), vec![0; values.len()], 0, true);
    }
    let lo = values.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut c: Vec<f32> = if k == 1 {
        vec![(lo as f64 / 2.0 + hi as f64 / 2.0) as f32]
    } else {
        (0..k)
            .map(|j| (lo as f64 + (hi as f64 - lo as f64) * j as f64 / (k - 1) as f64) as f32)
            .collect()
    };
    let mut assign = vec![usize::MAX; values.len()];
    let mut iterations = 0;
    let mut converged = false;
    while iterations < KMEANS_MAX_ITERATIONS {
        // Nearest centroid; on a tie the lower one. Centroids are ascending, so compare with
        // the midpoints.
        let mids: Vec<f32> = c.windows(2).map(|p| p[0] + (p[1] - p[0]) / 2.0).collect();
        let mut changed = false;
        for (a, v) in assign.iter_mut().zip(values) {
            let j = mids.partition_point(|m| m < v);
            if *a != j {
                *a = j;
                changed = true;
            }
        }
        if !changed {
            converged = true;
            break;
        }
        iterations += 1;
        let mut sum = vec![0f64; c.len()];
        let mut count = vec![0usize; c.len()];
        for (a, v) in assign.iter().zip(values) {
            sum[*a] += *v as f64;
            count[*a] += 1;
        }
        for j in 0..c.len() {
            if count[j] > 0 {
                c[j] = (sum[j] / count[j] as f64) as f32;
            }
        }
        if c.windows(2).any(|p| p[0] > p[1]) {
            // An empty cluster kept its old centroid past a neighbour: reorder; the next
            // assignment pass recomputes everything.
            c.sort_by(f32::total_cmp);
            assign.iter_mut().for_each(|a| *a = usize::MAX);
        }
    }
    // Drop empty clusters and renumber.
    let mut count = vec![0usize; c.len()];
    for a in &assign {
        if *a < c.len() {
            count[*a] += 1;
        }
    }
    let mut remap = vec![0usize; c.len()];
    let mut kept_c = Vec::new();
    for j in 0..c.len() {
        remap[j] = kept_c.len();
        if count[j] > 0 {
            kept_c.push(c[j]);
        }
    }
    let assign = assign
        .iter()
        .map(|a| remap.get(*a).copied().unwrap_or(0))
        .collect();
    (kept_c, assign, iterations, converged)
}

/// Rounds weights to the storage precision (f16/bf16 round to nearest even via `half`).
/// Returns the index of the first weight that does not fit (overflows to infinity).
pub fn round_float(weights: &[f32], storage: FloatStorage) -> Result<Vec<f32>, usize> {
    let out: Vec<f32> = match storage {
        FloatStorage::F32 => weights.to_vec(),
        FloatStorage::F16 => weights.iter().map(|w| f16::from_f32(*w).to_f32()).collect(),
        FloatStorage::Bf16 => weights
            .iter()
            .map(|w| bf16::from_f32(*w).to_f32())
            .collect(),
    };
    match out.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(i),
        None => Ok(out),
    }
}

/// The value every weight takes (`rows × cols`, row-major).
pub fn dequantize(values: &WeightValues, rows: usize, cols: usize) -> Vec<f32> {
    match values {
        WeightValues::Float { data, .. } => data.clone(),
        WeightValues::Uniform {
            codes,
            scales,
            zero_points,
            granularity,
            ..
        } => {
            let mut out = Vec::with_capacity(rows * cols);
            for r in 0..rows {
                for c in 0..cols {
                    let g = granularity.group_of(r, c, cols);
                    let q = codes[r * cols + c] as i32 - zero_points[g];
                    out.push(scales[g] * q as f32);
                }
            }
            out
        }
        WeightValues::Codebook {
            codes, codebook, ..
        } => codes
            .iter()
            .map(|c| codebook.get(*c as usize).copied().unwrap_or(0.0))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_8bit_known_values() {
        let w = [1.27f32, -0.634, 0.0, 0.01];
        let q = quantize_uniform(&w, &[true; 4], 1, 4, 8, true, Granularity::Tensor);
        let WeightValues::Uniform {
            codes,
            scales,
            zero_points,
            ..
        } = &q
        else {
            panic!()
        };
        assert!((scales[0] - 0.01).abs() < 1e-7);
        assert_eq!(zero_points[0], 128);
        assert_eq!(codes, &vec![255, 128 - 63, 128, 129]);
    }

    #[test]
    fn asymmetric_makes_zero_exact_and_handles_all_zero_groups() {
        let w = [0.5f32, 1.5, 0.0, 0.0];
        let q = quantize_uniform(
            &w,
            &[true, true, true, false],
            2,
            2,
            2,
            false,
            Granularity::Channel,
        );
        let d = dequantize(&q, 2, 2);
        assert_eq!(d[2], 0.0);
        assert_eq!(d[3], 0.0);
        let WeightValues::Uniform {
            scales,
            zero_points,
            ..
        } = &q
        else {
            panic!()
        };
        assert_eq!(scales[1], 0.0);
        assert_eq!(zero_points[0], 0);
        assert!((d[0] - 0.5).abs() <= scales[0] / 2.0 + 1e-6);
    }

    #[test]
    fn kmeans_reserves_zero_for_pruned() {
        let w = [0.0f32, 1.0, 1.1, -2.0, -2.1, 0.0];
        let kept = [false, true, true, true, true, true];
        let k = kmeans(&w, &kept, 2);
        assert!(k.converged);
        let WeightValues::Codebook {
            codes, codebook, ..
        } = &k.values
        else {
            panic!()
        };
        assert!(codebook.len() <= 4);
        assert_eq!(codebook[codes[0] as usize], 0.0);
        let d = dequantize(&k.values, 1, 6);
        assert!((d[1] - 1.05).abs() < 1e-6 && (d[3] + 2.05).abs() < 1e-6);
    }

    #[test]
    fn half_rounding() {
        let r = round_float(&[1.0 / 3.0], FloatStorage::Bf16).unwrap();
        assert_eq!(r[0], bf16::from_f32(1.0 / 3.0).to_f32());
        assert_eq!(round_float(&[1e6], FloatStorage::F16), Err(0));
    }
}
