//! Measurements: accuracy figures from logits (top-1, top-5, cross-entropy, per-class accuracy,
//! confusion matrix, agreement and KL divergence against a reference), running the dense
//! reference model over an evaluation set in batches, and the activation memory a model needs
//! (the arena: what a device must hold besides the weights). `bench` measures variants of a model
//! side by side (`squeeze bench`); `describe` is what `squeeze info` reports of a model.

pub mod bench;
pub mod describe;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::compress::{Plan, entropy_bytes};
use crate::engine::{self, CompressedModel, Step};
use crate::model::{Model, Op, Source};

/// Samples per batch for dense evaluation.
pub const EVAL_BATCH: usize = 1000;

/// How well a model's outputs match the labels (and a reference model's outputs).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Accuracy {
    /// Top-1 accuracy in [0, 1].
    pub accuracy: f64,
    pub top5: f64,
    /// Mean cross-entropy (natural log).
    pub loss: f64,
    pub samples: usize,
    /// Per class: (correct, total).
    pub per_class: Vec<(u32, u32)>,
    /// `confusion[label][predicted]`.
    pub confusion: Vec<Vec<u32>>,
    /// Fraction of samples where top-1 equals the reference's top-1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreement: Option<f64>,
    /// Mean KL(reference ‖ model) of the softmax distributions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
}

/// Everything measured for one compressed model on one evaluation set: what `squeeze eval
/// --format json` prints and what the explorer charts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Measurement {
    #[serde(flatten)]
    pub accuracy: Accuracy,
    /// Exact bytes of the packed model (the serialized tensors).
    pub size_bytes: usize,
    /// Bytes of the same model stored dense f32.
    pub dense_bytes: usize,
    /// `dense_bytes / size_bytes`.
    pub ratio: f64,
    /// Size after Huffman-coding the quantized values and index gaps.
    pub entropy_bytes: usize,
    /// The pruned fraction of the original linear/conv weights (weights removed by structured
    /// pruning count as pruned); see `sparsity_basis`.
    pub sparsity: f64,
    /// Where `sparsity` comes from: the pruning itself (`pruning`), or, for a compressed file
    /// written without a pruning record, the exact zeros among its stored weights
    /// (`stored_zeros`), which also counts weights quantized to zero and misses removed ones.
    pub sparsity_basis: SparsityBasis,
    /// The fraction of the original weights that are exactly zero in the stored model: pruned,
    /// removed, or quantized to zero (at least `sparsity`).
    pub zeros: f64,
    /// Median single-sample latency on one thread, microseconds.
    pub latency_us: f64,
    pub latency_p90_us: f64,
    /// Samples per second at batch 256 on all threads.
    pub throughput: f64,
    /// Wall time of the evaluation, seconds.
    pub wall_s: f64,
    pub layers: Vec<LayerMeasurement>,
}

/// One linear/conv layer of a measured model.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LayerMeasurement {
    pub name: String,
    pub op: String,
    /// The storage format the engine chose, in its names (e.g. `dense+f32`, `csr8+u4/channel`,
    /// `bitmask+codebook6 ×a8`).
    pub format: String,
    pub params: usize,
    /// The pruned fraction of the layer's original weights.
    pub sparsity: f64,
    /// The fraction of the layer's original weights that are exactly zero as stored.
    pub zeros: f64,
    pub size_bytes: usize,
    pub dense_bytes: usize,
    pub entropy_bytes: usize,
}

/// Metadata key of a compressed file's [`PruningRecord`].
pub const PRUNING_METADATA_KEY: &str = "squeeze.pruning";

/// What pruning left of each linear/conv layer of the original model. Sparsity has one
/// definition, the pruned fraction of the original weights (`Plan::sparsity_against`: weights
/// removed by structured pruning count as pruned); an exported model carries this record in
/// its metadata, so the reloaded file reports the sparsity and dense size its export reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruningRecord {
    pub layers: Vec<LayerPruning>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerPruning {
    pub name: String,
    /// Weights of the original layer.
    pub weights: usize,
    /// Weights that pruning kept (stored, whatever their quantized value).
    pub kept: usize,
    /// Parameters of the original layer, weights and bias (its dense f32 size is 4× this).
    pub params: usize,
}

impl LayerPruning {
    pub fn sparsity(&self) -> f64 {
        fraction(self.weights.saturating_sub(self.kept), self.weights)
    }
}

fn fraction(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

impl PruningRecord {
    /// The record of `plan`, made from `original`.
    pub fn of(plan: &Plan, original: &Model) -> PruningRecord {
        let sparsity = plan.sparsity_against(original);
        let layers = sparsity
            .layers
            .iter()
            .map(|l| LayerPruning {
                name: l.name.clone(),
                weights: l.total,
                kept: l.total - l.pruned,
                params: original
                    .layer_index(&l.name)
                    .map_or(l.total, |i| original.layers[i].param_count()),
            })
            .collect();
        PruningRecord { layers }
    }

    /// The metadata entry that records it in a compressed file.
    pub fn metadata(&self) -> (&'static str, String) {
        (
            PRUNING_METADATA_KEY,
            serde_json::to_string(self).unwrap_or_default(),
        )
    }

    /// The record in a compressed file's metadata; `None` for a file written without one.
    pub fn from_metadata(
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Result<Option<PruningRecord>, PruningRecordError> {
        metadata
            .get(PRUNING_METADATA_KEY)
            .map(|j| serde_json::from_str(j).map_err(PruningRecordError::Json))
            .transpose()
    }

    /// The record in the compressed file at `path`; `None` for a file written without one.
    pub fn read(path: &std::path::Path) -> Result<Option<PruningRecord>, PruningRecordError> {
        let metadata = crate::files::read_metadata(path)?;
        Self::from_metadata(&metadata).map_err(|e| match e {
            PruningRecordError::Json(source) => PruningRecordError::JsonIn {
                path: path.to_path_buf(),
                source,
            },
            e => e,
        })
    }

    fn layer(&self, name: &str) -> Option<&LayerPruning> {
        self.layers.iter().find(|l| l.name == name)
    }
}

/// Why a file's pruning record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PruningRecordError {
    #[error(transparent)]
    Read(#[from] crate::files::MetadataError),
    #[error("metadata \"{PRUNING_METADATA_KEY}\": {0}")]
    Json(serde_json::Error),
    #[error("{}: metadata \"{PRUNING_METADATA_KEY}\": {source}", path.display())]
    JsonIn {
        path: std::path::PathBuf,
        source: serde_json::Error,
    },
}

/// Where a measurement's sparsity comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SparsityBasis {
    /// The pruning record: the pruned fraction of the original weights.
    Pruning,
    /// No record (a file exported before models carried one): the exact zeros among the
    /// stored weights.
    StoredZeros,
}

/// The sparsity of one packed layer, against the original layer as `record` describes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoredSparsity {
    /// The pruned fraction of the original weights (without a record: the stored zeros).
    pub sparsity: f64,
    /// The fraction of the original weights that are exactly zero as stored.
    pub zeros: f64,
    /// Weights of the original layer.
    pub weights: usize,
    /// Parameters (weights and bias) of the original layer.
    pub params: usize,
}

/// `StoredSparsity` of the packed layer `name` (`stored_params` parameters as stored).
pub fn stored_sparsity(
    name: &str,
    packed: &engine::PackedLayer,
    stored_params: usize,
    record: Option<&PruningRecord>,
) -> StoredSparsity {
    let nonzero = packed.dequantized().iter().filter(|v| **v != 0.0).count();
    let stored = packed.rows * packed.cols;
    let zeros = fraction(stored - nonzero.min(stored), stored);
    let as_stored = |sparsity| StoredSparsity {
        sparsity,
        zeros,
        weights: stored,
        params: stored_params,
    };
    match record.map(|r| r.layer(name)) {
        Some(Some(l)) => StoredSparsity {
            sparsity: l.sparsity(),
            zeros: fraction(l.weights.saturating_sub(nonzero), l.weights),
            weights: l.weights,
            params: l.params,
        },
        // A layer the record leaves out was not pruned.
        Some(None) => as_stored(0.0),
        None => as_stored(zeros),
    }
}

/// Bytes of the original model stored dense f32: `compressed`'s dense size with each packed
/// layer counted as `record` says it was before pruning removed rows or channels.
pub fn dense_bytes(compressed: &CompressedModel, record: Option<&PruningRecord>) -> usize {
    let mut bytes = compressed.dense_bytes();
    for (i, packed) in compressed.packed_layers() {
        let layer = &compressed.model.layers[i];
        if let Some(l) = record.and_then(|r| r.layer(&layer.name)) {
            let stored = packed.rows * packed.cols + packed.bias.as_ref().map_or(0, Vec::len);
            bytes = bytes + l.params * 4 - (stored * 4).min(bytes);
        }
    }
    bytes
}

/// How a model's outputs are to be read: raw logits, or probabilities when it ends in softmax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Logits,
    Probabilities,
}

impl OutputKind {
    pub fn of(model: &Model) -> Self {
        match model.layers.last().map(|l| &l.op) {
            Some(Op::Softmax) => OutputKind::Probabilities,
            _ => OutputKind::Logits,
        }
    }
}

/// Log-softmax of one row (or the log of probabilities when the model already outputs them).
fn log_probs(row: &[f32], kind: OutputKind, out: &mut Vec<f64>) {
    out.clear();
    match kind {
        OutputKind::Probabilities => {
            out.extend(row.iter().map(|&p| (p as f64).max(1e-30).ln()));
        }
        OutputKind::Logits => {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            let lse = max + sum.ln();
            out.extend(row.iter().map(|&v| v as f64 - lse));
        }
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Scores `outputs` (`labels.len() × classes`, row-major) against the labels, and against a
/// reference model's outputs when given.
pub fn score(
    outputs: &[f32],
    classes: usize,
    labels: &[u32],
    kind: OutputKind,
    reference: Option<(&[f32], OutputKind)>,
) -> Accuracy {
    let n = labels.len();
    let mut top1 = 0usize;
    let mut top5 = 0usize;
    let mut loss = 0.0f64;
    let mut agree = 0usize;
    let mut kl = 0.0f64;
    let mut per_class = vec![(0u32, 0u32); classes];
    let mut confusion = vec![vec![0u32; classes]; classes];
    let (mut lp, mut lq) = (Vec::new(), Vec::new());
    for (i, &label) in labels.iter().enumerate() {
        let row = &outputs[i * classes..(i + 1) * classes];
        let label = label as usize;
        let pred = argmax(row);
        let correct = pred == label;
        top1 += usize::from(correct);
        // Top-5: the label is among the five largest when fewer than five values beat it.
        let beaten_by = row.iter().filter(|&&v| v > row[label]).count();
        top5 += usize::from(beaten_by < 5);
        log_probs(row, kind, &mut lp);
        loss -= lp[label];
        if let Some(pc) = per_class.get_mut(label) {
            pc.0 += u32::from(correct);
            pc.1 += 1;
        }
        if let Some(r) = confusion.get_mut(label) {
            r[pred] += 1;
        }
        if let Some((refs, rkind)) = reference {
            let rrow = &refs[i * classes..(i + 1) * classes];
            agree += usize::from(argmax(rrow) == pred);
            log_probs(rrow, rkind, &mut lq);
            kl += lq
                .iter()
                .zip(&lp)
                .map(|(q, p)| {
                    if q.is_finite() {
                        q.exp() * (q - p)
                    } else {
                        0.0
                    }
                })
                .sum::<f64>();
        }
    }
    let nf = n.max(1) as f64;
    Accuracy {
        accuracy: top1 as f64 / nf,
        top5: top5 as f64 / nf,
        loss: loss / nf,
        samples: n,
        per_class,
        confusion,
        agreement: reference.map(|_| agree as f64 / nf),
        kl: reference.map(|_| kl / nf),
    }
}

/// Runs the dense reference model (candle) over `n` prepared samples in batches and returns the
/// outputs, `n × classes`.
pub fn dense_outputs(model: &Model, inputs: &[f32], n: usize) -> candle_core::Result<Vec<f32>> {
    let sample = model.input_len();
    let mut out = Vec::with_capacity(n * model.num_classes());
    let mut shape = vec![0];
    shape.extend(&model.input.shape);
    for start in (0..n).step_by(EVAL_BATCH) {
        let len = EVAL_BATCH.min(n - start);
        shape[0] = len;
        let x = Tensor::from_slice(
            &inputs[start * sample..(start + len) * sample],
            shape.as_slice(),
            &Device::Cpu,
        )?;
        let y = model.forward(&x)?;
        out.extend(y.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// What `measure` times besides accuracy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Single-sample latency on one thread.
    pub latency: bool,
    /// Samples per second at batch 256 on all threads.
    pub throughput: bool,
}

/// One compressed model in, one measurement out: runs `inputs` (`labels.len()` prepared
/// samples) through the engine, scores them, and reports sizes and, as asked, latency and
/// throughput. `plan` (when the model was compressed in this process) gives the Huffman figure;
/// `pruning` the sparsity and dense size against the original model (without it, a file's
/// exact zeros stand for its sparsity, and its stored shapes for the original's).
pub fn measure(
    compressed: &CompressedModel,
    plan: Option<&Plan>,
    pruning: Option<&PruningRecord>,
    inputs: &[f32],
    labels: &[u32],
    reference: Option<(&[f32], OutputKind)>,
    timing: Timing,
) -> Measurement {
    let n = labels.len();
    let start = std::time::Instant::now();
    let outputs = compressed.logits(inputs, n);
    let wall_s = start.elapsed().as_secs_f64();
    let kind = OutputKind::of(&compressed.model);
    let accuracy = score(&outputs, compressed.num_classes(), labels, kind, reference);

    let mut layers = Vec::new();
    // Pruned and all original weights, exactly-zero ones, for the overall figures.
    let (mut pruned, mut zeros, mut all_weights) = (0.0f64, 0.0f64, 0usize);
    for (i, packed) in compressed.packed_layers() {
        let layer = &compressed.model.layers[i];
        let q = plan.and_then(|p| p.layers.iter().find(|q| q.layer == i));
        let stored = stored_sparsity(&layer.name, packed, layer.param_count(), pruning);
        pruned += stored.sparsity * stored.weights as f64;
        zeros += stored.zeros * stored.weights as f64;
        all_weights += stored.weights;
        layers.push(LayerMeasurement {
            name: layer.name.clone(),
            op: layer.op.name().to_string(),
            format: packed.format_name(),
            params: layer.param_count(),
            sparsity: stored.sparsity,
            zeros: stored.zeros,
            size_bytes: packed.size_bytes(),
            dense_bytes: stored.params * 4,
            entropy_bytes: packed
                .entropy_bytes
                .or_else(|| q.map(entropy_bytes))
                .unwrap_or(packed.size_bytes()),
        });
    }
    // Parameters outside linear/conv layers (unfolded batchnorm) are stored as they are.
    let other_bytes: usize = compressed
        .steps
        .iter()
        .map(|s| match s {
            Step::ChannelAffine { scale, shift, .. } => (scale.len() + shift.len()) * 4,
            _ => 0,
        })
        .sum();
    let size_bytes = compressed.size_bytes();
    let dense_bytes = layers.iter().map(|l| l.dense_bytes).sum::<usize>() + other_bytes;
    let (latency_us, latency_p90_us) = if timing.latency && n > 0 {
        let stats = engine::latency(compressed, &inputs[..compressed.input_len()]);
        (stats.median_us, stats.p90_us)
    } else {
        (0.0, 0.0)
    };
    let throughput = if timing.throughput && n > 0 {
        engine::throughput(compressed, inputs, n)
    } else {
        0.0
    };
    Measurement {
        accuracy,
        size_bytes,
        dense_bytes,
        ratio: dense_bytes as f64 / size_bytes.max(1) as f64,
        entropy_bytes: layers.iter().map(|l| l.entropy_bytes).sum::<usize>() + other_bytes,
        sparsity: pruned / all_weights.max(1) as f64,
        sparsity_basis: if pruning.is_some() {
            SparsityBasis::Pruning
        } else {
            SparsityBasis::StoredZeros
        },
        zeros: zeros / all_weights.max(1) as f64,
        latency_us,
        latency_p90_us,
        throughput,
        wall_s,
        layers,
    }
}

/// The activation memory one layer needs while it runs, for one sample.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LayerArena {
    pub name: String,
    pub op: &'static str,
    pub input_bytes: usize,
    /// 0 for operations that work in place (activations, batchnorm, flatten, softmax, add).
    pub output_bytes: usize,
    /// Outputs of earlier layers kept for a residual `add` after this one.
    pub saved_bytes: usize,
    /// Kernel scratch: a convolution's im2col matrix (`in/groups × kh × kw` values per output
    /// position; none for a 1×1, stride-1, unpadded one).
    pub scratch_bytes: usize,
    pub total_bytes: usize,
}

/// Peak activation memory of one sample through a model, layer by layer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Arena {
    /// Bytes per activation value (4 for f32, 1 for quantized activations).
    pub value_bytes: usize,
    pub layers: Vec<LayerArena>,
    pub peak_bytes: usize,
    /// The layer that sets the peak (the first of equals).
    pub peak_layer: String,
}

/// Bytes per activation value: 4 in f32, 1 when activations are quantized to 8 bits or fewer.
pub fn activation_value_bytes(activation_bits: Option<u8>) -> usize {
    match activation_bits {
        Some(b) if b <= 8 => 1,
        _ => 4,
    }
}

/// The activation arena of `model` with activations of `value_bytes` each: for every layer,
/// its input and output buffers (one when it works in place), the outputs saved for later
/// residual additions, and its kernel scratch; the peak is the largest such sum.
pub fn arena(model: &Model, value_bytes: usize) -> Arena {
    let values = |shape: &[usize]| shape.iter().product::<usize>();
    // Last layer index that reads each kept output (a layer's output read beyond the next
    // layer; the model input is the caller's buffer).
    let keep = model.kept_values();
    let mut last_use = vec![None; model.layers.len()];
    for i in 0..model.layers.len() {
        for s in model.reads(i) {
            if let Source::Layer(j) = s
                && keep[j + 1]
                && let Some(u) = last_use.get_mut(j)
            {
                *u = Some(i);
            }
        }
    }
    let mut layers = Vec::with_capacity(model.layers.len());
    for (i, l) in model.layers.iter().enumerate() {
        let input = values(&l.in_shape);
        let in_place = matches!(
            l.op,
            Op::Activation(_)
                | Op::ChannelAffine { .. }
                | Op::Flatten
                | Op::Dropout(_)
                | Op::Softmax
        ) || (matches!(l.op, Op::Add { .. } | Op::Mul { .. })
            && l.in_shape == l.out_shape);
        let output = if in_place { 0 } else { values(&l.out_shape) };
        let saved: usize = (0..i)
            .filter(|&j| last_use[j].is_some_and(|u| u > i))
            .map(|j| values(&model.layers[j].out_shape))
            .sum();
        let scratch = match &l.op {
            Op::Conv2d(p, g) => {
                let dims = p.weight.dims();
                let pointwise = dims.get(2..4) == Some(&[1, 1][..])
                    && g.stride == (1, 1)
                    && g.padding == (0, 0);
                if pointwise {
                    0
                } else {
                    let positions: usize = l.out_shape.iter().skip(1).product();
                    dims[1..].iter().product::<usize>() * positions
                }
            }
            _ => 0,
        };
        let b = |v: usize| v * value_bytes;
        layers.push(LayerArena {
            name: l.name.clone(),
            op: l.op.name(),
            input_bytes: b(input),
            output_bytes: b(output),
            saved_bytes: b(saved),
            scratch_bytes: b(scratch),
            total_bytes: b(input + output + saved + scratch),
        });
    }
    let (peak_bytes, peak_layer) = layers.iter().fold((0, String::new()), |(best, name), l| {
        if l.total_bytes > best {
            (l.total_bytes, l.name.clone())
        } else {
            (best, name)
        }
    });
    Arena {
        value_bytes,
        layers,
        peak_bytes,
        peak_layer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_simple_outputs() {
        // Three samples, three classes.
        let outputs = [
            2.0, 1.0, 0.0, // predicts 0
            0.0, 3.0, 1.0, // predicts 1
            1.0, 0.0, 0.5, // predicts 0
        ];
        let labels = [0, 1, 2];
        let a = score(&outputs, 3, &labels, OutputKind::Logits, None);
        assert!((a.accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(a.top5, 1.0);
        assert_eq!(a.confusion[2][0], 1);
        assert_eq!(a.per_class[2], (0, 1));
        // Cross-entropy of the first row: −log softmax(2,1,0)[0].
        let lse = (2f64.exp() + 1f64.exp() + 1.0).ln();
        let first = lse - 2.0;
        assert!(a.loss > first / 3.0);
        let same = score(
            &outputs,
            3,
            &labels,
            OutputKind::Logits,
            Some((&outputs, OutputKind::Logits)),
        );
        assert_eq!(same.agreement, Some(1.0));
        assert!(same.kl.unwrap_or(1.0).abs() < 1e-12);
    }

    #[test]
    fn top5_counts_ties_kindly() {
        let outputs = [0.0; 10];
        let a = score(&outputs, 10, &[7], OutputKind::Logits, None);
        assert_eq!(a.top5, 1.0);
        assert_eq!(a.accuracy, 0.0);
    }
}
