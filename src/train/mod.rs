//! Training: the loop, its settings and events (here), the optimizers (`optim`), the
//! training-mode operations with fast backward passes (`ops`, their arithmetic in `kernels` and
//! `matmul`), and recovering what compression costs: fine-tuning under masks and fake
//! quantization (`finetune`), pruning schedules (`schedule`), fake quantization with
//! straight-through gradients (`fake_quant`) and distillation (`distill`).
//!
//! Training from scratch: PyTorch-default initialisation from a seeded RNG, shuffled mini-batch
//! training through the dense candle forward (AdamW, or SGD with momentum, as PyTorch computes
//! them), per-epoch learning-rate decay and test accuracy, and safetensors export with the
//! architecture embedded.
//!
//! Everything random comes from seeded RNGs, so one seed gives the same bytes on one machine.
//! The only exception is dropout, whose mask candle draws from its own unseeded RNG.

pub mod distill;
pub mod fake_quant;
pub mod finetune;
mod kernels;
mod matmul;
pub mod ops;
mod optim;
pub mod schedule;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::data::{DataError, EvalSet};
use crate::model::{ArchSpec, LoadError, Model, TensorSource};
pub use distill::{Distillation, distillation_loss};
pub use finetune::{
    EpochRecord, FinetuneError, FinetuneEvent, FinetuneReport, FinetuneSets, FinetuneSettings,
    Finetuned, Phase, Qat, finetune, split_validation,
};
pub use ops::TrainOps;
use optim::Optim;
pub use schedule::PruneSchedule;

/// The metadata key holding the training settings and result as JSON.
pub const TRAIN_METADATA_KEY: &str = "squeeze.train";

/// The metadata key holding a fine-tuned model's settings, inputs and figures (JSON), written
/// by `squeeze finetune` and by the explorer's export of a fine-tuned point.
pub const FINETUNE_METADATA_KEY: &str = "squeeze.finetune";

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting out of range (learning rate, epochs, batch size, ...).
    #[error("{0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The architecture cannot be built or trained from scratch.
    #[error("{path}: {msg}")]
    Arch { path: PathBuf, msg: String },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("training failed: {0}")]
    Candle(#[from] candle_core::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    AdamW,
    Sgd,
}

/// How the learning rate changes from one epoch to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LrDecay {
    /// `lr × ½(1 + cos(π·epoch/epochs))`: full rate in the first epoch, near zero in the last.
    Cosine,
    /// `lr × 0.1` from half-way and `lr × 0.01` from three quarters of the epochs.
    Step,
    None,
}

impl LrDecay {
    /// The learning rate for `epoch` (0-based) of `epochs`.
    pub fn rate(self, lr: f64, epoch: usize, epochs: usize) -> f64 {
        let e = epochs.max(1) as f64;
        let t = epoch as f64;
        match self {
            LrDecay::Cosine => lr * 0.5 * (1.0 + (std::f64::consts::PI * t / e).cos()),
            LrDecay::Step => {
                if t >= 0.75 * e {
                    lr * 0.01
                } else if t >= 0.5 * e {
                    lr * 0.1
                } else {
                    lr
                }
            }
            LrDecay::None => lr,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub lr: f64,
    pub batch: usize,
    pub seed: u64,
    pub optimizer: OptimizerKind,
    /// SGD only.
    pub momentum: f64,
    /// Decoupled (AdamW) or L2 (SGD, as PyTorch) weight decay.
    pub weight_decay: f64,
    pub lr_decay: LrDecay,
}

impl TrainConfig {
    /// Rejects settings that cannot train: checked before any data is read.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.epochs == 0 {
            return bad("--epochs must be at least 1".into());
        }
        if self.batch == 0 {
            return bad("--batch must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr must be a positive number, got {}", self.lr));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return bad(format!(
                "--momentum must be in [0, 1), got {}",
                self.momentum
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "--weight-decay must be zero or positive, got {}",
                self.weight_decay
            ));
        }
        Ok(())
    }
}

/// Reads an architecture file (TOML, or JSON when it ends in `.json`).
pub fn read_arch(path: &Path) -> Result<ArchSpec, TrainError> {
    let text = crate::files::read_text(path)?;
    let parsed = if path.extension().is_some_and(|e| e == "json") {
        ArchSpec::from_json(&text).map_err(|e| e.to_string())
    } else {
        ArchSpec::from_toml(&text).map_err(|e| e.to_string())
    };
    parsed.map_err(|msg| TrainError::Arch {
        path: path.to_path_buf(),
        msg: format!("invalid architecture description: {}", msg.trim()),
    })
}

/// A model whose linear and conv parameters are candle `Var`s, so a forward pass with
/// `Model::forward` builds a graph whose gradients reach them.
#[derive(Debug)]
pub struct TrainableModel {
    pub model: Model,
    /// Weights and biases in layer order (weight, then bias).
    pub vars: Vec<Var>,
}

impl TrainableModel {
    /// A copy of the model whose tensors are cut from the graph, for evaluation and export.
    pub fn detached(&self) -> Model {
        let mut m = self.model.clone();
        for layer in &mut m.layers {
            if let Some(p) = layer.op.params_mut() {
                p.weight = p.weight.detach();
                p.bias = p.bias.as_ref().map(Tensor::detach);
            }
        }
        m
    }
}

/// Builds `spec` with PyTorch's default initialisation (weights and biases drawn from
/// U(−1/√fan_in, 1/√fan_in)) from an RNG seeded with `seed`. `arch_path` names the
/// description in messages.
pub fn init_model(
    spec: &ArchSpec,
    arch_path: &Path,
    seed: u64,
) -> Result<TrainableModel, TrainError> {
    // The loader builds the graph, checking every shape; the tensors are drawn as it asks.
    let mut source = InitTensors {
        path: arch_path,
        rng: StdRng::seed_from_u64(seed),
        held: 0,
        fan_in: 1,
    };
    let mut model = crate::model::build(arch_path, spec.clone(), &mut source)?;
    let mut vars = Vec::new();
    for layer in &mut model.layers {
        if let Some(p) = layer.op.params_mut() {
            let w = Var::from_tensor(&p.weight)?;
            p.weight = w.as_tensor().clone();
            vars.push(w);
            if let Some(b) = &p.bias {
                let b = Var::from_tensor(b)?;
                p.bias = Some(b.as_tensor().clone());
                vars.push(b);
            }
        }
    }
    Ok(TrainableModel { model, vars })
}

/// New parameters for a model built from scratch, drawn in the order the loader asks for them
/// (each layer's weight, then its bias), a weight's shape fixed by its description.
struct InitTensors<'a> {
    path: &'a Path,
    rng: StdRng,
    /// Parameter values drawn so far.
    held: u128,
    /// The last weight's values per output.
    fan_in: usize,
}

impl TensorSource for InitTensors<'_> {
    /// Draws from U(−1/√fan_in, 1/√fan_in), fan_in being a weight's values per output (a bias
    /// takes its weight's). Refuses first when the parameters so far and this one would not fit
    /// the memory limit while training (each has a value, a gradient and two optimizer moments:
    /// 16 bytes).
    fn tensor(
        &mut self,
        layer: &str,
        op: &'static str,
        name: &str,
        expected: &[Option<usize>],
    ) -> Result<(Tensor, usize), LoadError> {
        let err = |msg: String| LoadError::Graph {
            path: self.path.to_path_buf(),
            layer: layer.to_string(),
            op,
            msg,
        };
        let shape: Vec<usize> = match (op, expected) {
            ("batchnorm", _) => {
                return Err(err(
                    "batchnorm is not trainable here (squeeze train keeps no batch statistics); remove it, or train in PyTorch and load the result".into(),
                ));
            }
            (_, [None, ..]) if op == "linear" => {
                return Err(err(
                    "`out_features` is needed to build it from scratch".into()
                ));
            }
            _ => expected
                .iter()
                .copied()
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    err("`out_channels` and `kernel` are needed to build it from scratch".into())
                })?,
        };
        if shape.contains(&0) {
            return Err(err(format!(
                "its output would be empty (\"{name}\" of shape {shape:?})"
            )));
        }
        let n = crate::model::shape::elements_u128(&shape);
        crate::limits::check_memory(
            &format!("training with parameter \"{name}\" {shape:?}"),
            Some(self.held.saturating_add(n).saturating_mul(16)),
        )
        .map_err(|e| err(e.to_string()))?;
        self.held = self.held.saturating_add(n);
        // A bias is drawn with its weight's fan-in, which the loader asked for just before.
        let fan_in = if shape.len() == 1 {
            self.fan_in
        } else {
            shape[1..].iter().product()
        };
        self.fan_in = fan_in;
        let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
        let values: Vec<f32> = (0..n as usize)
            .map(|_| self.rng.random_range(-bound..=bound))
            .collect();
        let bytes = values.len() * std::mem::size_of::<f32>();
        let t = Tensor::from_vec(values, shape, &Device::Cpu).map_err(|e| err(e.to_string()))?;
        Ok((t, bytes))
    }
}

/// A file removed when dropped (the standard library has no temporary files).
/// Inputs scaled for a model and held as tensors, ready to batch.
#[derive(Debug)]
pub struct PreparedSet {
    /// `[N, ...input shape]`, scaled.
    pub inputs: Tensor,
    pub labels: Vec<u32>,
    /// Values per sample.
    sample_len: usize,
    /// The same scaled values, for gathering shuffled batches without going through candle.
    flat: Vec<f32>,
}

impl PreparedSet {
    pub fn new(set: &EvalSet, model: &Model) -> Result<Self, TrainError> {
        let flat = set.prepare_for(model)?;
        let mut shape = vec![set.len()];
        shape.extend(&model.input.shape);
        let inputs = Tensor::from_slice(&flat, shape, &Device::Cpu)?;
        Ok(PreparedSet {
            inputs,
            labels: set.labels.clone(),
            sample_len: model.input_len(),
            flat,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The samples at `indices` as an input batch and a label tensor.
    fn batch(
        &self,
        indices: &[usize],
        sample_shape: &[usize],
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let mut x = Vec::with_capacity(indices.len() * self.sample_len);
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            x.extend_from_slice(&self.flat[i * self.sample_len..(i + 1) * self.sample_len]);
            y.push(self.labels[i]);
        }
        let mut shape = vec![indices.len()];
        shape.extend(sample_shape);
        Ok((
            Tensor::from_vec(x, shape, &Device::Cpu)?,
            Tensor::from_vec(y, indices.len(), &Device::Cpu)?,
        ))
    }
}

/// Top-1 accuracy of `model` on `set`, in batches of `batch`.
pub fn accuracy(model: &Model, set: &PreparedSet, batch: usize) -> Result<f64, TrainError> {
    if set.is_empty() {
        return Ok(0.0);
    }
    let mut correct = 0usize;
    let n = set.len();
    let mut start = 0;
    while start < n {
        let len = batch.max(1).min(n - start);
        let x = set.inputs.narrow(0, start, len)?;
        let pred = model.forward(&x)?.argmax(1)?.to_vec1::<u32>()?;
        correct += pred
            .iter()
            .zip(&set.labels[start..start + len])
            .filter(|(p, l)| p == l)
            .count();
        start += len;
    }
    Ok(correct as f64 / n as f64)
}

/// What training reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    EpochStarted {
        epoch: usize,
        epochs: usize,
        lr: f64,
        batches: usize,
    },
    /// After each optimizer step: `samples` seen in this epoch so far, the batch's loss.
    Step {
        epoch: usize,
        batch: usize,
        samples: usize,
        loss: f32,
    },
    EpochFinished(EpochSummary),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochSummary {
    pub epoch: usize,
    pub epochs: usize,
    pub lr: f64,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    pub test_accuracy: f64,
    /// Wall time of the epoch's training steps, without the test evaluation.
    pub train_seconds: f64,
    pub samples: usize,
}

/// The outcome of a training run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainReport {
    pub epochs: Vec<EpochSummary>,
    pub test_accuracy: f64,
}

/// Trains `tm` on `train` for `cfg.epochs` epochs, evaluating on `test` after each, and reports
/// progress through `on_event`. Shuffling uses an RNG seeded from `cfg.seed`.
pub fn train(
    tm: &mut TrainableModel,
    train: &PreparedSet,
    test: &PreparedSet,
    cfg: &TrainConfig,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainReport, TrainError> {
    cfg.validate()?;
    if train.is_empty() {
        return Err(TrainError::Config("the training set has no samples".into()));
    }
    let mut opt = Optim::new(&tm.vars, cfg)?;
    // A stream separate from initialisation's, so the batch order does not depend on how many
    // parameters the model has.
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x5EED_0F5A_FF1E);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let batches = train.len().div_ceil(cfg.batch);
    let sample_shape = tm.model.input.shape.clone();
    let mut summaries = Vec::new();
    let mut test_accuracy = 0.0;
    for epoch in 0..cfg.epochs {
        let lr = cfg.lr_decay.rate(cfg.lr, epoch, cfg.epochs);
        opt.set_lr(lr);
        on_event(&TrainEvent::EpochStarted {
            epoch,
            epochs: cfg.epochs,
            lr,
            batches,
        });
        order.shuffle(&mut rng);
        let started = Instant::now();
        let mut loss_sum = 0.0f64;
        let mut samples = 0usize;
        for (b, chunk) in order.chunks(cfg.batch).enumerate() {
            let (x, y) = train.batch(chunk, &sample_shape)?;
            let logits = tm
                .model
                .forward_with(&x, &TrainOps::default(), |_, _| Ok(()))?;
            let loss = ops::cross_entropy(&logits, &y)?;
            opt.backward_step(&loss)?;
            let loss = loss.to_scalar::<f32>()?;
            if !loss.is_finite() {
                return Err(TrainError::Config(format!(
                    "the loss became {loss} in epoch {} (batch {}): the learning rate {lr:e} is probably too high",
                    epoch + 1,
                    b + 1
                )));
            }
            loss_sum += loss as f64;
            samples += chunk.len();
            on_event(&TrainEvent::Step {
                epoch,
                batch: b,
                samples,
                loss,
            });
        }
        let train_seconds = started.elapsed().as_secs_f64();
        test_accuracy = accuracy(&tm.detached(), test, 500)?;
        let summary = EpochSummary {
            epoch,
            epochs: cfg.epochs,
            lr,
            train_loss: loss_sum / batches as f64,
            test_accuracy,
            train_seconds,
            samples,
        };
        on_event(&TrainEvent::EpochFinished(summary.clone()));
        summaries.push(summary);
    }
    Ok(TrainReport {
        epochs: summaries,
        test_accuracy,
    })
}

/// Writes `model` to `path` as safetensors with the architecture (`squeeze.arch`), `extra`
/// metadata and the checksum record, atomically: every tensor the model computes with, under
/// its state_dict name (see [`Model::sealed`]).
pub fn save(model: &Model, path: &Path, extra: &HashMap<String, String>) -> Result<(), TrainError> {
    let extra: Vec<(&str, String)> = extra.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let bytes = model
        .sealed(&extra)?
        .to_bytes()
        .map_err(|e| TrainError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
    crate::files::write_atomic(path, &bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_and_step_schedules() {
        assert_eq!(LrDecay::Cosine.rate(1.0, 0, 10), 1.0);
        assert!((LrDecay::Cosine.rate(1.0, 5, 10) - 0.5).abs() < 1e-12);
        assert_eq!(LrDecay::Step.rate(1.0, 4, 10), 1.0);
        assert!((LrDecay::Step.rate(1.0, 5, 10) - 0.1).abs() < 1e-12);
        assert!((LrDecay::Step.rate(1.0, 8, 10) - 0.01).abs() < 1e-12);
        assert_eq!(LrDecay::None.rate(0.3, 9, 10), 0.3);
    }
}
