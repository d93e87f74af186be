//! Static activation quantization: run calibration inputs through the (weight-compressed,
//! dequantized) model, observe every linear/conv layer's input range (min-max, or a percentile
//! of the observed values), and turn each range into an asymmetric `ActivationQuant`.

use candle_core::{Device, Tensor};

use super::recipe::{ActivationSettings, Observer};
use super::{ActivationQuant, CompressError};
use crate::model::Model;

/// Samples per forward pass while calibrating.
const BATCH: usize = 64;

/// Asymmetric quantization of the range `[lo, hi]` (extended to include 0) to `bits`:
/// `scale = (hi − lo) / (2^b − 1)`, integer zero point `round(−lo/scale)` so 0.0 is a level
/// exactly. An empty range (only zeros seen) gets scale 1 and zero point 0.
pub fn activation_quant(lo: f32, hi: f32, bits: u8) -> ActivationQuant {
    let bits = bits.clamp(2, 8);
    let qmax = (1i32 << bits) - 1;
    let lo = lo.min(0.0);
    let hi = hi.max(0.0);
    let scale = (hi - lo) / qmax as f32;
    if !(scale.is_finite() && scale > 0.0) {
        return ActivationQuant {
            bits,
            scale: 1.0,
            zero_point: 0,
        };
    }
    let zero_point = ((-lo / scale).round_ties_even() as i32).clamp(0, qmax);
    ActivationQuant {
        bits,
        scale,
        zero_point,
    }
}

/// The range a percentile observer reports: the `p`-th percentile (nearest rank) of `values`
/// as the top and the `(100 − p)`-th as the bottom.
pub fn percentile_range(values: &mut [f32], p: f64) -> (f32, f32) {
    let n = values.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    // The small slack keeps 99.99 % of 10 000 at rank 9 999 despite binary fractions.
    let hi_rank = ((p / 100.0 * n as f64 - 1e-9).ceil() as usize).clamp(1, n) - 1;
    let lo_rank = n - 1 - hi_rank;
    let (_, hi, _) = values.select_nth_unstable_by(hi_rank, f32::total_cmp);
    let hi = *hi;
    let (_, lo, _) = values.select_nth_unstable_by(lo_rank, f32::total_cmp);
    (*lo, hi)
}

/// Observes the inputs of `layers` (indices into `model.layers`) over the first
/// `min(count, settings.calibration_samples)` samples of `data` (`count` scaled samples,
/// back to back) and returns one `ActivationQuant` per entry of `layers`.
pub(crate) fn calibrate(
    model: &Model,
    layers: &[usize],
    settings: &ActivationSettings,
    data: &[f32],
    count: usize,
) -> Result<Vec<ActivationQuant>, CompressError> {
    let len = model.input_len();
    if count == 0 {
        return Err(CompressError::Calibration(
            "activation quantization needs at least one calibration sample".into(),
        ));
    }
    if data.len() != count * len {
        return Err(CompressError::Calibration(format!(
            "{count} samples of {len} values need {} values, got {}",
            count * len,
            data.len()
        )));
    }
    let n = count.min(settings.calibration_samples);
    let mut slot = vec![usize::MAX; model.layers.len()];
    for (k, &l) in layers.iter().enumerate() {
        slot[l] = k;
    }
    let mut lo = vec![f32::INFINITY; layers.len()];
    let mut hi = vec![f32::NEG_INFINITY; layers.len()];
    let mut seen: Vec<Vec<f32>> = vec![Vec::new(); layers.len()];
    let percentile = settings.observer == Observer::Percentile;
    let terr = |source| CompressError::Tensor {
        layer: "calibration".into(),
        source,
    };
    let mut start = 0;
    while start < n {
        let b = BATCH.min(n - start);
        let mut shape = vec![b];
        shape.extend_from_slice(&model.input.shape);
        let x = Tensor::from_slice(&data[start * len..(start + b) * len], shape, &Device::Cpu)
            .map_err(terr)?;
        model
            .forward_with(&x, &crate::model::Reference, |i, input| {
                let k = slot[i];
                if k == usize::MAX {
                    return Ok(());
                }
                let v = input.flatten_all()?.to_vec1::<f32>()?;
                if percentile {
                    seen[k].extend_from_slice(&v);
                } else {
                    for x in v {
                        lo[k] = lo[k].min(x);
                        hi[k] = hi[k].max(x);
                    }
                }
                Ok(())
            })
            .map_err(terr)?;
        start += b;
    }
    Ok((0..layers.len())
        .map(|k| {
            let (l, h) = if percentile {
                percentile_range(&mut seen[k], settings.percentile)
            } else {
                (lo[k], hi[k])
            };
            activation_quant(l, h, settings.bits)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_exact_and_range_is_covered() {
        let q = activation_quant(-1.0, 3.0, 8);
        assert_eq!(q.zero_point, 64);
        assert!((q.scale - 4.0 / 255.0).abs() < 1e-7);
        let q = activation_quant(0.5, 2.0, 8);
        assert_eq!(q.zero_point, 0);
        assert_eq!(activation_quant(0.0, 0.0, 4).scale, 1.0);
    }

    #[test]
    fn percentile_nearest_rank() {
        let mut v: Vec<f32> = (1..=10000).map(|i| i as f32).collect();
        assert_eq!(percentile_range(&mut v, 99.99), (2.0, 9999.0));
        let mut v: Vec<f32> = (1..=100).map(|i| i as f32).collect();
        assert_eq!(percentile_range(&mut v, 100.0), (1.0, 100.0));
    }
}
