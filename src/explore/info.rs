//! What the explorer shows about a model that never changes: its linear/conv layers with
//! shapes, sizes, the histogram of their dense weights and the residual connections that
//! couple them.

use crate::model::{Model, Op, Source};

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
    /// When the layer's output meets others in an `add` or `mul`: the other compressible
    /// layers there (empty when it meets only the block's input), whose channels structured
    /// pruning removes together with this one's. `None`: not coupled.
    pub coupled: Option<Vec<String>>,
    /// Why structured pruning cannot remove this layer's outputs (it produces the class
    /// scores, its channels are tied to the model input, ...), as the recipe check says; `None`
    /// when it can (with the other layers of its channel group).
    pub no_structured: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// A short name for titles (the model file's stem).
    pub name: String,
    /// The evaluation set's file name and size.
    pub data_name: String,
    pub samples: usize,
    /// Samples the quick estimate measures: a fixed random subset, or the whole set when it
    /// is no larger than the subset would be.
    pub quick_samples: usize,
    pub layers: Vec<LayerInfo>,
    /// Classes the model outputs.
    pub classes: usize,
}

impl ModelInfo {
    pub fn from_model(model: &Model, data_name: &str, samples: usize) -> ModelInfo {
        let coupling = coupling(model);
        let channels = crate::compress::groups::ChannelGraph::analyze(model);
        let layers = model
            .compressible()
            .filter_map(|(index, layer)| {
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
                    coupled: coupling.get(&index).map(|others| {
                        others
                            .iter()
                            .map(|&j| model.layers[j].name.clone())
                            .collect()
                    }),
                    no_structured: crate::compress::prune::structured_check(
                        model, &channels, index,
                    )
                    .err()
                    .map(|e| e.to_string()),
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
            quick_samples: samples,
            layers,
            classes: model.num_classes(),
        }
    }

    /// A model description without a model, for tests and fakes.
    pub fn for_tests(layers: Vec<LayerInfo>) -> ModelInfo {
        ModelInfo {
            name: "test-model".into(),
            data_name: "test-data".into(),
            samples: 10_000,
            quick_samples: 1_000,
            layers,
            classes: 10,
        }
    }

    pub fn dense_bytes(&self) -> usize {
        self.layers.iter().map(|l| l.dense_bytes).sum()
    }

    /// Classes the model outputs (at least 1).
    pub fn classes(&self) -> usize {
        self.classes.max(1)
    }
}

/// For each compressible layer (by model index) whose output meets others in an element-wise
/// join (`add`, `mul`), the other compressible layers there. Values flow from a layer through
/// single-input operations (activations, pooling, batchnorm, flatten) unchanged in who
/// produced them; a join merges its inputs' producers and its output carries them all on (a
/// `concat` without coupling them: its inputs' channels stay apart).
pub fn coupling(model: &Model) -> std::collections::BTreeMap<usize, Vec<usize>> {
    // The compressible layers whose outputs make up layer i's output.
    let mut producers: Vec<Vec<usize>> = Vec::with_capacity(model.layers.len());
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, layer) in model.layers.iter().enumerate() {
        let of = |s: Source| -> Vec<usize> {
            match s {
                Source::Input => Vec::new(),
                Source::Layer(k) => producers.get(k).cloned().unwrap_or_default(),
            }
        };
        let mine = match &layer.op {
            Op::Linear(_) | Op::Conv2d(..) => vec![i],
            Op::Add { .. } | Op::Mul { .. } | Op::Concat { .. } => {
                let mut all: Vec<usize> = model.reads(i).into_iter().flat_map(of).collect();
                all.sort_unstable();
                all.dedup();
                // Element-wise joins tie channel c of each side together; a concat keeps
                // its inputs' channels apart.
                if !matches!(layer.op, Op::Concat { .. }) {
                    groups.push(all.clone());
                }
                all
            }
            _ => of(model.input_of(i)),
        };
        producers.push(mine);
    }
    let mut out: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for g in groups {
        for &a in &g {
            let others = out.entry(a).or_default();
            others.extend(g.iter().copied().filter(|b| *b != a));
            others.sort_unstable();
            others.dedup();
        }
    }
    out
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
pub(crate) mod tests {
    use super::*;

    /// LeNet-300-100's three layers, without weights.
    pub(crate) fn lenet300() -> ModelInfo {
        let layer = |name: &str, rows: usize, cols: usize| LayerInfo {
            name: name.into(),
            op: "linear".into(),
            shape: vec![rows, cols],
            params: rows * cols + rows,
            macs: rows * cols,
            dense_bytes: (rows * cols + rows) * 4,
            cols,
            hist_range: (-1.0, 1.0),
            hist_before: vec![],
            coupled: None,
            no_structured: (name == "fc3").then(|| "fc3 produces the model's output".into()),
        };
        ModelInfo::for_tests(vec![
            layer("fc1", 300, 784),
            layer("fc2", 100, 300),
            layer("fc3", 10, 100),
        ])
    }

    #[test]
    fn histogram_puts_edges_in_end_bins() {
        let h = histogram([-1.0, -0.5, 0.0, 0.5, 1.0, 7.0].into_iter(), (-1.0, 1.0), 4);
        assert_eq!(h, vec![1, 1, 1, 3]);
        assert_eq!(h.iter().sum::<u32>(), 6);
        assert_eq!(value_range(&[2.0, 2.0]), (1.5, 2.5));
        assert_eq!(value_range(&[]), (-1.0, 1.0));
    }
}
