//! What the explorer shows about a model that never changes: its linear/conv layers with
//! shapes, sizes and the histogram of their dense weights.

use crate::model::Model;

/// Bins of the weight histograms (before and after compression use the same edges).
pub const HIST_BINS: usize = 41;

#[derive(Debug, Clone, PartialEq)]
pub struct LayerInfo {
    pub name: String,
    pub op: String,
    /// The weight tensor's shape (`[out, in]`, `[out, in/groups, kh, kw]`).
    pub shape: Vec<usize>,
    /// Weights and biases.
    pub params: usize,
    pub macs: usize,
    /// f32 bytes of the weights and biases.
    pub dense_bytes: usize,
    /// Inputs per output (the row length compression works on).
    pub cols: usize,
    /// Edges of the weight histograms: the dense weights' (min, max).
    pub hist_range: (f32, f32),
    pub hist_before: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// A short name for titles (the model file's stem).
    pub name: String,
    /// The evaluation set's file name and size.
    pub data_name: String,
    pub samples: usize,
    pub layers: Vec<LayerInfo>,
}

impl ModelInfo {
    pub fn from_model(model: &Model, data_name: &str, samples: usize) -> ModelInfo {
        let layers = model
            .compressible()
            .filter_map(|(_, layer)| {
                let p = layer.params()?;
                let shape = p.weight.dims().to_vec();
                let weights: Vec<f32> = p
                    .weight
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .unwrap_or_default();
                let range = value_range(&weights);
                Some(LayerInfo {
                    name: layer.name.clone(),
                    op: layer.op.name().to_string(),
                    cols: shape[1..].iter().product(),
                    shape,
                    params: layer.param_count(),
                    macs: layer.macs(),
                    dense_bytes: layer.param_count() * 4,
                    hist_range: range,
                    hist_before: histogram(weights.iter().copied(), range, HIST_BINS),
                })
            })
            .collect();
        let name = model
            .source
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        ModelInfo {
            name,
            data_name: data_name.to_string(),
            samples,
            layers,
        }
    }

    /// A model description without a model, for tests and fakes.
    pub fn for_tests(layers: Vec<LayerInfo>) -> ModelInfo {
        ModelInfo {
            name: "test-model".into(),
            data_name: "test-data".into(),
            samples: 10_000,
            layers,
        }
    }

    pub fn dense_bytes(&self) -> usize {
        self.layers.iter().map(|l| l.dense_bytes).sum()
    }
}

/// (min, max) of the finite values, widened when they are all equal.
pub fn value_range(values: &[f32]) -> (f32, f32) {
    let (lo, hi) = values
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if !(lo.is_finite() && hi.is_finite()) {
        return (-1.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    (lo, hi)
}

/// Counts of `values` in `bins` equal bins over `range` (values outside go to the end bins).
pub fn histogram(values: impl Iterator<Item = f32>, range: (f32, f32), bins: usize) -> Vec<u32> {
    let mut counts = vec![0u32; bins];
    if bins == 0 {
        return counts;
    }
    let (lo, hi) = range;
    let width = (hi - lo) / bins as f32;
    for v in values.filter(|v| v.is_finite()) {
        let i = ((v - lo) / width).floor();
        let i = if i < 0.0 {
            0
        } else {
            (i as usize).min(bins - 1)
        };
        counts[i] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_puts_edges_in_end_bins() {
        let h = histogram([-1.0, -0.5, 0.0, 0.5, 1.0, 7.0].into_iter(), (-1.0, 1.0), 4);
        assert_eq!(h, vec![1, 1, 1, 3]);
        assert_eq!(h.iter().sum::<u32>(), 6);
        assert_eq!(value_range(&[2.0, 2.0]), (1.5, 2.5));
        assert_eq!(value_range(&[]), (-1.0, 1.0));
    }
}
