//! Fine-tuning a compressed model: the recipe's masks held during training (reached at once or
//! gradually), quantization-aware training with fake-quantized weights and activations, the
//! shared values of k-means layers trained with their assignments fixed, and distillation from
//! a teacher. At the end the model is compressed by the recipe with the trained decisions held
//! (`compress::apply_held`) and measured on the engine's packed kernels, like every other
//! figure squeeze reports.
//!
//! [`finetune`] takes its inputs by reference, reports through a callback, checks a cancel flag
//! between batches and writes nothing, so the command line and a worker thread of the explorer
//! call it the same way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use super::distill::{Distillation, distillation_loss};
use super::fake_quant::{fake_quantize, fake_quantize_weights};
use super::optim::Optim;
use super::schedule::{Agp, PruneSchedule, iterative_sparsity};
use super::{PreparedSet, TrainConfig, TrainError, TrainOps};
use crate::compress::prune::{global_masks, l1_mask, random_mask, rank_values};
use crate::compress::{
    self, ActivationQuant, CompressError, FloatStorage, Held, HeldCodebook, Plan, Pruning, Recipe,
    ResolvedRecipe, WeightFormat,
};
use crate::data::EvalSet;
use crate::engine::{CompressedModel, EngineError};
use crate::measure::{self, Measurement, OutputKind, Timing};
use crate::model::{Activation, Conv2dGeometry, ForwardOps, Model, Params, Pool2d};

/// Why fine-tuning stopped without a result.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    /// The cancel flag was set; nothing was produced.
    #[error("fine-tuning was cancelled")]
    Cancelled,
    /// A setting that cannot work with this model, recipe or data.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Distill(#[from] super::distill::DistillError),
    #[error(transparent)]
    Train(Box<TrainError>),
    #[error(transparent)]
    Compress(Box<CompressError>),
    #[error(transparent)]
    Engine(Box<EngineError>),
    #[error(transparent)]
    Data(Box<crate::data::DataError>),
    #[error("fine-tuning failed: {0}")]
    Candle(#[from] candle_core::Error),
}

// Boxed: the errors they carry are large, and a run returns `Result` from every step.
impl From<TrainError> for FinetuneError {
    fn from(e: TrainError) -> Self {
        FinetuneError::Train(Box::new(e))
    }
}

impl From<CompressError> for FinetuneError {
    fn from(e: CompressError) -> Self {
        FinetuneError::Compress(Box::new(e))
    }
}

impl From<EngineError> for FinetuneError {
    fn from(e: EngineError) -> Self {
        FinetuneError::Engine(Box::new(e))
    }
}

impl From<crate::data::DataError> for FinetuneError {
    fn from(e: crate::data::DataError) -> Self {
        FinetuneError::Data(Box::new(e))
    }
}

/// Whether weights (and activations) are fake-quantized during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Qat {
    /// On when the recipe stores any weight or activation below 8 bits.
    #[default]
    Auto,
    On,
    Off,
}

/// Everything that shapes a fine-tuning run besides the model, recipe and data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FinetuneSettings {
    /// Epochs (in all), learning rate and decay, batch, seed, optimizer.
    #[serde(flatten)]
    pub train: TrainConfig,
    pub schedule: PruneSchedule,
    pub qat: Qat,
    /// Epochs, out of `train.epochs`, that train the shared values of k-means layers (with
    /// quantization-aware training only). Default: a quarter of the epochs, at least one.
    pub shared_epochs: Option<usize>,
    /// The learning rate of those epochs. Default: a tenth of `train.lr`.
    pub shared_lr: Option<f64>,
    pub distill: Option<Distillation>,
    /// Also compress and measure the input model as the recipe says, untrained, for the
    /// "before" figure (off for a student trained from scratch).
    pub measure_untuned: bool,
    /// What the final measurement times besides accuracy.
    #[serde(skip)]
    pub timing: Timing,
}

impl FinetuneSettings {
    /// One-shot masks, automatic QAT, no distillation, measuring the untuned model too.
    pub fn new(train: TrainConfig) -> Self {
        FinetuneSettings {
            train,
            schedule: PruneSchedule::OneShot,
            qat: Qat::Auto,
            shared_epochs: None,
            shared_lr: None,
            distill: None,
            measure_untuned: true,
            timing: NO_TIMING,
        }
    }

    /// Rejects settings that cannot work, before anything is read or trained.
    pub fn validate(&self) -> Result<(), FinetuneError> {
        self.train.validate()?;
        if let Some(d) = &self.distill {
            d.validate()?;
        }
        match self.schedule {
            PruneSchedule::Agp { interval, end } => {
                if interval == Some(0) {
                    return Err(FinetuneError::Config(
                        "--prune-interval must be at least 1 step".into(),
                    ));
                }
                if !(end > 0.0 && end <= 1.0) {
                    return Err(FinetuneError::Config(format!(
                        "--prune-end must be in (0, 1], got {end}"
                    )));
                }
            }
            PruneSchedule::Iterative { rounds: 0 } => {
                return Err(FinetuneError::Config("--rounds must be at least 1".into()));
            }
            _ => {}
        }
        if let Some(lr) = self.shared_lr
            && !(lr.is_finite() && lr > 0.0)
        {
            return Err(FinetuneError::Config(format!(
                "--shared-lr must be a positive number, got {lr}"
            )));
        }
        Ok(())
    }
}

/// The sets a run learns from, chooses checkpoints with, and reports on.
#[derive(Debug, Clone, Copy)]
pub struct FinetuneSets<'a> {
    pub train: &'a EvalSet,
    /// Chooses the checkpoint; without it the last epoch is kept.
    pub validation: Option<&'a EvalSet>,
    /// Only reported on.
    pub test: Option<&'a EvalSet>,
}

/// Splits the last `n` samples off `set` as a validation set. `n = 0` gives no validation set.
pub fn split_validation(
    set: &EvalSet,
    n: usize,
) -> Result<(EvalSet, Option<EvalSet>), FinetuneError> {
    if n == 0 {
        return Ok((set.clone(), None));
    }
    if n >= set.len() {
        return Err(FinetuneError::Config(format!(
            "{}: --val-split {n} leaves no training samples (the set holds {})",
            set.source.display(),
            set.len()
        )));
    }
    let keep = set.len() - n;
    let per = set.sample_len();
    let val = EvalSet {
        source: set.source.clone(),
        inputs: set.inputs[keep * per..].to_vec(),
        sample_shape: set.sample_shape.clone(),
        labels: set.labels[keep..].to_vec(),
        classes: set.classes.clone(),
    };
    Ok((set.clone().truncated(keep), Some(val)))
}

/// The part of a run an epoch belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    /// Weights trained under masks (round `round` of an iterative schedule).
    Pruning { round: Option<usize> },
    /// The shared values of k-means layers trained, assignments fixed.
    SharedValues,
}

impl Phase {
    pub fn label(self) -> String {
        match self {
            Phase::Pruning { round: Some(r) } => format!("round {r}"),
            Phase::Pruning { round: None } => "weights".into(),
            Phase::SharedValues => "shared values".into(),
        }
    }
}

/// What fine-tuning reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum FinetuneEvent {
    /// Before training: the recipe applied to the input model as it is (top-1 in [0, 1]).
    Untuned {
        validation: Option<f64>,
        test: Option<f64>,
    },
    EpochStarted {
        epoch: usize,
        epochs: usize,
        phase: Phase,
        lr: f64,
        batches: usize,
    },
    /// After each optimizer step: samples seen in this epoch, the batch's loss, and the
    /// fraction of masked weights pruned in that step.
    Step {
        epoch: usize,
        batch: usize,
        samples: usize,
        loss: f32,
        sparsity: f64,
    },
    EpochFinished(EpochRecord),
    /// Training is over: compressing with the trained decisions held and measuring.
    Compressing,
}

/// One epoch, as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochRecord {
    /// 0-based.
    pub epoch: usize,
    pub epochs: usize,
    #[serde(flatten)]
    pub phase: Phase,
    pub lr: f64,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Top-1 of the compressed model (engine) on the validation set after the epoch.
    pub validation_accuracy: Option<f64>,
    /// Fraction of the masked layers' weights pruned at the end of the epoch.
    pub sparsity: f64,
    /// Whether the epoch ended with the final masks (and shared values), so it may be kept.
    pub candidate: bool,
    /// Wall time of the epoch (training and validation).
    #[serde(skip)]
    pub seconds: f64,
    /// Estimated seconds left for the run.
    #[serde(skip)]
    pub eta_seconds: f64,
}

/// The outcome of a run, without the models: what the metadata and `--format json` record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FinetuneReport {
    pub epochs: Vec<EpochRecord>,
    /// The epoch whose weights were kept (after `kept_epoch` epochs; 0 = before training).
    pub kept_epoch: usize,
    /// Validation top-1 of the kept weights.
    pub kept_validation_accuracy: Option<f64>,
    /// Whether fake quantization was on.
    pub qat: bool,
    /// Epochs that trained shared values (0 without k-means layers or QAT).
    pub shared_epochs: usize,
    /// A schedule that has nothing to ramp (no magnitude pruning in the recipe) runs one-shot.
    pub schedule: PruneSchedule,
    pub train_samples: usize,
    pub validation_samples: usize,
    pub test_samples: usize,
    /// The validation and test top-1 of the recipe applied without training, when measured.
    pub untuned_validation_accuracy: Option<f64>,
    pub untuned_test_accuracy: Option<f64>,
    pub validation_accuracy: Option<f64>,
    pub test_accuracy: Option<f64>,
}

/// A fine-tuned, compressed model and its figures.
pub struct Finetuned {
    /// The plan `apply_held` made from the trained weights.
    pub plan: Plan,
    /// What the engine runs and `save` writes.
    pub compressed: CompressedModel,
    /// The trained weights as a dense model (dequantized, zeros where pruned).
    pub dense: Model,
    pub report: FinetuneReport,
    /// The recipe applied to the input model without training: its plan, and its measurement
    /// on the test set.
    pub untuned: Plan,
    pub untuned_test: Option<Measurement>,
    /// The fine-tuned compressed model measured on the test set.
    pub test: Option<Measurement>,
}

/// Accuracy only.
const NO_TIMING: Timing = Timing {
    latency: false,
    throughput: false,
};

/// Fine-tunes `model` compressed by `recipe` (see the module comment). `teacher` is the model
/// distilled from when `settings.distill` is set (default: `model` itself, uncompressed).
/// Returns [`FinetuneError::Cancelled`] as soon as `cancel` is seen set between batches.
pub fn finetune(
    model: &Model,
    recipe: &Recipe,
    sets: FinetuneSets<'_>,
    settings: &FinetuneSettings,
    teacher: Option<&Model>,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(&FinetuneEvent),
) -> Result<Finetuned, FinetuneError> {
    settings.validate()?;
    let resolved = recipe.validate(model).map_err(CompressError::from)?;
    let check_cancel = || {
        if cancel.load(Ordering::Relaxed) {
            Err(FinetuneError::Cancelled)
        } else {
            Ok(())
        }
    };

    // The recipe on the untouched model: the one-shot masks, the shrunk model, the "before".
    let train_set = PreparedSet::new(sets.train, model)?;
    if train_set.is_empty() {
        return Err(FinetuneError::Config(
            "the training set has no samples".into(),
        ));
    }
    let calibration = calibration_inputs(&resolved, &train_set);
    let calib = calibration.as_ref().map(|(v, n)| (v.as_slice(), *n));
    let untuned = compress::apply(model, recipe, calib)?;
    let validation = sets
        .validation
        .map(|v| PreparedSet::new(v, model))
        .transpose()?;
    let test = sets.test.map(|t| PreparedSet::new(t, model)).transpose()?;
    check_cancel()?;

    let (untuned_validation, untuned_test) = if settings.measure_untuned {
        let cm = CompressedModel::build(&untuned)?;
        let v = validation.as_ref().map(|v| top1(&cm, v));
        let t = test
            .as_ref()
            .map(|t| measure_on(&cm, &untuned, model, t, NO_TIMING));
        on_event(&FinetuneEvent::Untuned {
            validation: v,
            test: t.as_ref().map(|m| m.accuracy.accuracy),
        });
        (v, t)
    } else {
        (None, None)
    };

    let teacher_logits = match &settings.distill {
        Some(d) if d.alpha > 0.0 => {
            let t = teacher.unwrap_or(model);
            Some(teacher_outputs(t, sets.train, model.num_classes())?)
        }
        _ => None,
    };
    check_cancel()?;

    let mut run = Run::new(&untuned, &resolved, recipe, settings, calibration.as_ref())?;
    let report = run.train(
        &train_set,
        validation.as_ref(),
        teacher_logits.as_deref(),
        cancel,
        on_event,
    )?;

    on_event(&FinetuneEvent::Compressing);
    let (plan, dense) = run.compress()?;
    let compressed = CompressedModel::build(&plan)?;
    let validation_accuracy = validation.as_ref().map(|v| top1(&compressed, v));
    let tested = test
        .as_ref()
        .map(|t| measure_on(&compressed, &plan, model, t, settings.timing));
    let report = FinetuneReport {
        untuned_validation_accuracy: untuned_validation,
        untuned_test_accuracy: untuned_test.as_ref().map(|m| m.accuracy.accuracy),
        validation_accuracy,
        test_accuracy: tested.as_ref().map(|m| m.accuracy.accuracy),
        validation_samples: validation.as_ref().map_or(0, PreparedSet::len),
        test_samples: test.as_ref().map_or(0, PreparedSet::len),
        ..report
    };
    Ok(Finetuned {
        plan,
        compressed,
        dense,
        report,
        untuned,
        untuned_test,
        test: tested,
    })
}

/// The first samples of the training set, scaled, when the recipe quantizes activations:
/// calibration learns from training images, never from the set that reports.
fn calibration_inputs(resolved: &ResolvedRecipe, train: &PreparedSet) -> Option<(Vec<f32>, usize)> {
    let a = resolved.activations.as_ref()?;
    let n = a.calibration_samples.min(train.len());
    Some((train.flat[..n * train.sample_len].to_vec(), n))
}

/// Top-1 of the engine's model on a prepared set.
fn top1(cm: &CompressedModel, set: &PreparedSet) -> f64 {
    let out = cm.logits(&set.flat, set.len());
    let c = cm.num_classes().max(1);
    let right = out
        .chunks_exact(c)
        .zip(&set.labels)
        .filter(|(row, l)| measure::argmax(row) == **l as usize)
        .count();
    right as f64 / set.len().max(1) as f64
}

fn measure_on(
    cm: &CompressedModel,
    plan: &Plan,
    original: &Model,
    set: &PreparedSet,
    timing: Timing,
) -> Measurement {
    measure::measure(
        cm,
        Some(plan),
        Some(&measure::PruningRecord::of(plan, original)),
        &set.flat,
        &set.labels,
        None,
        timing,
    )
}

/// The teacher's logits for every training sample (`N × classes`), computed once: the teacher
/// is fixed and sees each sample as it is. A teacher ending in softmax gives log-probabilities,
/// which are logits up to a constant per sample.
fn teacher_outputs(
    teacher: &Model,
    train: &EvalSet,
    classes: usize,
) -> Result<Vec<f32>, FinetuneError> {
    if teacher.num_classes() != classes {
        return Err(FinetuneError::Config(format!(
            "{}: the teacher has {} outputs, the student {classes}",
            teacher.source.display(),
            teacher.num_classes()
        )));
    }
    let inputs = train.prepare_for(teacher)?;
    let mut out = measure::dense_outputs(teacher, &inputs, train.len())?;
    if OutputKind::of(teacher) == OutputKind::Probabilities {
        out.iter_mut().for_each(|p| *p = p.max(1e-30).ln());
    }
    Ok(out)
}

/// A k-means layer's shared values under training: `centroids` (without the reserved exact
/// zero) looked up by fixed assignments.
struct Shared {
    centroids: Var,
    /// Per weight: its centroid (0 for pruned weights, which the mask zeroes).
    ids: Tensor,
    /// The codes as stored: centroid + 1 when the layer reserves entry 0 for pruned weights.
    codes: Vec<u8>,
    reserved: bool,
}

impl Shared {
    fn codebook(&self) -> Result<Vec<f32>, candle_core::Error> {
        let mut book = Vec::new();
        if self.reserved {
            book.push(0.0);
        }
        book.extend(self.centroids.as_tensor().to_vec1::<f32>()?);
        Ok(book)
    }
}

/// One linear/conv layer under training.
struct Slot {
    /// Index into `Model::layers`.
    layer: usize,
    rows: usize,
    cols: usize,
    shape: Vec<usize>,
    weight: Var,
    bias: Option<Var>,
    prune: Pruning,
    format: WeightFormat,
    /// The final fraction this layer's magnitude ramp reaches (agp, iterative).
    target: f64,
    kept: Vec<bool>,
    /// `kept` as 0/1 weights; `None` while everything is kept.
    mask: Option<Tensor>,
    shared: Option<Shared>,
    activation: Option<ActivationQuant>,
}

impl Slot {
    fn set_kept(&mut self, kept: Vec<bool>) -> Result<(), candle_core::Error> {
        self.mask = if kept.iter().all(|k| *k) {
            None
        } else {
            let m: Vec<f32> = kept.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect();
            Some(Tensor::from_vec(m, self.shape.as_slice(), &Device::Cpu)?)
        };
        self.kept = kept;
        self.apply_mask()
    }

    /// Zeroes the pruned weights of the variable itself, so that they stay exactly zero
    /// whatever the optimizer's momentum or weight decay does to them.
    fn apply_mask(&self) -> Result<(), candle_core::Error> {
        if let Some(m) = &self.mask {
            self.weight.set(&self.weight.as_tensor().mul(m)?)?;
        }
        Ok(())
    }

    fn weights(&self) -> Result<Vec<f32>, candle_core::Error> {
        self.weight.as_tensor().flatten_all()?.to_vec1::<f32>()
    }

    /// The weight the layer computes with, as a plain tensor.
    fn effective(&self) -> Result<Tensor, candle_core::Error> {
        let w = match &self.shared {
            Some(s) => s
                .centroids
                .as_tensor()
                .index_select(&s.ids, 0)?
                .reshape(self.shape.as_slice())?,
            None => self.weight.as_tensor().clone(),
        };
        let w = match &self.mask {
            Some(m) => w.mul(m)?,
            None => w,
        };
        Ok(w.detach())
    }

    fn pruned(&self) -> usize {
        self.kept.iter().filter(|k| !**k).count()
    }
}

/// The forward pass of fine-tuning: `TrainOps`' kernels, with each layer's weight masked,
/// fake-quantized or looked up in its trained codebook, and inputs fake-quantized where the
/// recipe quantizes activations.
struct CompressOps<'a> {
    slots: &'a [Slot],
    /// `Model::layers` index → slot.
    slot_of: &'a [Option<usize>],
    qat: bool,
    /// The kernels, one value per forward pass (it fuses a layer with the ReLU or pooling
    /// that follows it).
    train: TrainOps,
}

impl CompressOps<'_> {
    fn slot(&self, layer: usize) -> Option<&Slot> {
        self.slot_of
            .get(layer)
            .copied()
            .flatten()
            .map(|s| &self.slots[s])
    }
}

impl ForwardOps for CompressOps<'_> {
    fn params(&self, layer: usize, p: &Params) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let Some(s) = self.slot(layer) else {
            return Ok((p.weight.clone(), p.bias.clone()));
        };
        let w = match &s.shared {
            Some(sh) => sh
                .centroids
                .as_tensor()
                .index_select(&sh.ids, 0)?
                .reshape(s.shape.as_slice())?,
            None => p.weight.clone(),
        };
        let w = match &s.mask {
            Some(m) => w.mul(m)?,
            None => w,
        };
        let w = match (self.qat && s.shared.is_none(), s.format) {
            (
                true,
                WeightFormat::Uniform {
                    bits,
                    symmetric,
                    granularity,
                },
            ) => fake_quantize_weights(&w, s.rows, s.cols, bits, symmetric, granularity)?,
            // Rounding through half precision; the cast's gradient is the identity.
            (true, WeightFormat::Float(FloatStorage::F16)) => {
                w.to_dtype(DType::F16)?.to_dtype(DType::F32)?
            }
            (true, WeightFormat::Float(FloatStorage::Bf16)) => {
                w.to_dtype(DType::BF16)?.to_dtype(DType::F32)?
            }
            _ => w,
        };
        Ok((w, p.bias.clone()))
    }

    fn layer_input(&self, layer: usize, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.slot(layer).and_then(|s| s.activation) {
            Some(a) if self.qat => fake_quantize(x, a.bits, a.scale, a.zero_point),
            _ => Ok(x.clone()),
        }
    }

    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> candle_core::Result<Tensor> {
        self.train.linear(x, w, b)
    }

    fn conv2d(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        g: &Conv2dGeometry,
    ) -> candle_core::Result<Tensor> {
        self.train.conv2d(x, w, b, g)
    }

    fn activation(&self, x: &Tensor, a: Activation) -> candle_core::Result<Tensor> {
        self.train.activation(x, a)
    }

    fn max_pool2d(&self, x: &Tensor, p: &Pool2d) -> candle_core::Result<Tensor> {
        self.train.max_pool2d(x, p)
    }

    fn dropout(&self, x: &Tensor, p: f64) -> candle_core::Result<Tensor> {
        self.train.dropout(x, p)
    }
}

/// What one epoch of the run does.
#[derive(Debug, Clone, Copy)]
struct EpochPlan {
    phase: Phase,
    /// Position within its learning-rate segment (an iterative round, the shared-value phase,
    /// or the whole pruning phase) and the segment's length.
    in_segment: usize,
    segment: usize,
    base_lr: f64,
}

/// The state of a run between steps.
struct Run<'a> {
    recipe: &'a Recipe,
    resolved: ResolvedRecipe,
    settings: &'a FinetuneSettings,
    calibration: Option<(&'a [f32], usize)>,
    /// The model being trained (shrunk when the recipe prunes structurally); its linear/conv
    /// weights are the slots' variables.
    model: Model,
    shrunk: bool,
    slots: Vec<Slot>,
    slot_of: Vec<Option<usize>>,
    qat: bool,
    schedule: PruneSchedule,
    plan: Vec<EpochPlan>,
    prune_epochs: usize,
    shared_epochs: usize,
}

/// The trainable values at one point of the run, to come back to.
struct Checkpoint {
    after_epoch: usize,
    accuracy: Option<f64>,
    values: Vec<Tensor>,
}

impl<'a> Run<'a> {
    fn new(
        untuned: &Plan,
        resolved: &ResolvedRecipe,
        recipe: &'a Recipe,
        settings: &'a FinetuneSettings,
        calibration: Option<&'a (Vec<f32>, usize)>,
    ) -> Result<Self, FinetuneError> {
        let cfg = &settings.train;
        // Structured pruning has shrunk the untuned plan's model: train the smaller layers.
        let shrunk = resolved
            .layers
            .iter()
            .any(|l| matches!(l.prune, Pruning::Structured { sparsity, .. } if sparsity > 0.0));
        let resolved = if shrunk {
            recipe
                .validate(&untuned.model)
                .map_err(CompressError::from)?
        } else {
            resolved.clone()
        };
        let mut model = untuned.model.clone();
        let mut slots = Vec::new();
        let mut slot_of = vec![None; model.layers.len()];
        let ramped = !matches!(settings.schedule, PruneSchedule::OneShot);
        for lp in &resolved.layers {
            let Some(q) = untuned.layers.iter().find(|q| q.layer == lp.layer) else {
                continue;
            };
            let Some(p) = model.layers[lp.layer].op.params_mut() else {
                continue;
            };
            let weight = Var::from_tensor(&p.weight)?;
            p.weight = weight.as_tensor().clone();
            let bias = match &p.bias {
                Some(b) => {
                    let v = Var::from_tensor(b)?;
                    p.bias = Some(v.as_tensor().clone());
                    Some(v)
                }
                None => None,
            };
            let pruned = q.kept.iter().filter(|k| !**k).count();
            let target = pruned as f64 / q.kept.len().max(1) as f64;
            slot_of[lp.layer] = Some(slots.len());
            let mut slot = Slot {
                layer: lp.layer,
                rows: q.rows,
                cols: q.cols,
                shape: p.weight.dims().to_vec(),
                weight,
                bias,
                prune: lp.prune,
                format: lp.weights,
                target,
                kept: vec![true; q.kept.len()],
                mask: None,
                shared: None,
                activation: q.activation,
            };
            // One-shot masks, and patterns no schedule ramps (N:M), are the recipe's own.
            if !ramped || !magnitude_ramped(lp.prune) {
                slot.set_kept(q.kept.clone())?;
            }
            slots.push(slot);
        }
        let has_ramp = slots
            .iter()
            .any(|s| magnitude_ramped(s.prune) && s.target > 0.0);
        let schedule = if has_ramp {
            settings.schedule
        } else {
            PruneSchedule::OneShot
        };

        let below_8 = |bits: u8| bits < 8;
        let low_bits = resolved.layers.iter().any(|l| match l.weights {
            WeightFormat::Uniform { bits, .. } | WeightFormat::KMeans { bits } => below_8(bits),
            WeightFormat::Float(_) => false,
        }) || resolved.activations.is_some_and(|a| below_8(a.bits));
        let qat = match settings.qat {
            Qat::On => true,
            Qat::Off => false,
            Qat::Auto => low_bits,
        };
        let has_kmeans = resolved
            .layers
            .iter()
            .any(|l| matches!(l.weights, WeightFormat::KMeans { .. }));
        let shared_epochs = if qat && has_kmeans {
            settings
                .shared_epochs
                .unwrap_or_else(|| (cfg.epochs / 4).max(1))
        } else {
            0
        };
        if shared_epochs > cfg.epochs {
            return Err(FinetuneError::Config(format!(
                "--shared-epochs {shared_epochs} is more than --epochs {}",
                cfg.epochs
            )));
        }
        let prune_epochs = cfg.epochs - shared_epochs;
        match schedule {
            PruneSchedule::Iterative { rounds } if prune_epochs < rounds => {
                return Err(FinetuneError::Config(format!(
                    "the iterative schedule's {rounds} rounds need at least {rounds} epochs of pruning; \
                     {prune_epochs} of the {} epochs are left after the {shared_epochs} that train shared values",
                    cfg.epochs
                )));
            }
            PruneSchedule::Agp { .. } if prune_epochs == 0 => {
                return Err(FinetuneError::Config(format!(
                    "gradual pruning needs at least one epoch before the {shared_epochs} that train shared values; raise --epochs"
                )));
            }
            _ => {}
        }
        let mut plan = Vec::with_capacity(cfg.epochs);
        match schedule {
            PruneSchedule::Iterative { rounds } => {
                let per = prune_epochs / rounds;
                for r in 0..rounds {
                    let len = if r + 1 == rounds {
                        prune_epochs - per * (rounds - 1)
                    } else {
                        per
                    };
                    for e in 0..len {
                        plan.push(EpochPlan {
                            phase: Phase::Pruning { round: Some(r + 1) },
                            in_segment: e,
                            segment: len,
                            base_lr: cfg.lr,
                        });
                    }
                }
            }
            _ => {
                for e in 0..prune_epochs {
                    plan.push(EpochPlan {
                        phase: Phase::Pruning { round: None },
                        in_segment: e,
                        segment: prune_epochs,
                        base_lr: cfg.lr,
                    });
                }
            }
        }
        for e in 0..shared_epochs {
            plan.push(EpochPlan {
                phase: Phase::SharedValues,
                in_segment: e,
                segment: shared_epochs,
                base_lr: settings.shared_lr.unwrap_or(cfg.lr / 10.0),
            });
        }
        Ok(Run {
            recipe,
            resolved,
            settings,
            calibration: calibration.map(|(v, n)| (v.as_slice(), *n)),
            model,
            shrunk,
            slots,
            slot_of,
            qat,
            schedule,
            plan,
            prune_epochs,
            shared_epochs,
        })
    }

    fn sparsity(&self) -> f64 {
        let (pruned, total) = self
            .slots
            .iter()
            .fold((0, 0), |(p, t), s| (p + s.pruned(), t + s.kept.len()));
        pruned as f64 / total.max(1) as f64
    }

    /// Recomputes the masks of magnitude-ramped layers at `sparsity_at(s_f)` for their final
    /// sparsity, ranking the current weights (pruned ones are zero, so they stay pruned while
    /// the sparsity grows).
    fn ramp_masks(&mut self, sparsity_at: &dyn Fn(f64) -> f64) -> Result<(), FinetuneError> {
        if let Some((s_f, members)) = self.resolved.global.clone() {
            let idx: Vec<usize> = members.iter().filter_map(|l| self.slot_of[*l]).collect();
            let weights = idx
                .iter()
                .map(|&i| self.ranked(&self.slots[i]))
                .collect::<Result<Vec<_>, _>>()?;
            let views: Vec<&[f32]> = weights.iter().map(Vec::as_slice).collect();
            let masks = global_masks(&views, sparsity_at(s_f));
            for (i, m) in idx.into_iter().zip(masks) {
                self.slots[i].set_kept(m)?;
            }
        }
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            let kept = match s.prune {
                Pruning::L1 { .. } | Pruning::Std { .. } => {
                    l1_mask(&self.ranked(s)?, sparsity_at(s.target))
                }
                Pruning::Random { seed, .. } => {
                    // Nested: a higher sparsity with the same seed removes a superset.
                    random_mask(s.kept.len(), sparsity_at(s.target), seed)
                }
                _ => continue,
            };
            self.slots[i].set_kept(kept)?;
        }
        Ok(())
    }

    /// What magnitude pruning ranks for slot `s`: its current weights, or its layer's own
    /// weights under a folded batchnorm (the recipe's `rank`).
    fn ranked(&self, s: &Slot) -> Result<Vec<f32>, candle_core::Error> {
        let w = s.weights()?;
        Ok(match self.model.layers[s.layer].params() {
            Some(p) => rank_values(p, &w, self.resolved.rank).into_owned(),
            None => w,
        })
    }

    /// Clusters every k-means layer's kept weights once (Deep Compression's weight sharing) and
    /// from then on trains the shared values instead of the weights.
    fn start_sharing(&mut self) -> Result<(), FinetuneError> {
        for s in &mut self.slots {
            let WeightFormat::KMeans { bits } = s.format else {
                continue;
            };
            let w = s.weights()?;
            let km = compress::quant::kmeans(&w, &s.kept, bits);
            let compress::WeightValues::Codebook {
                codes, codebook, ..
            } = km.values
            else {
                continue;
            };
            let reserved = s.kept.iter().any(|k| !k);
            let skip = usize::from(reserved);
            let ids: Vec<u32> = codes
                .iter()
                .zip(&s.kept)
                .map(|(&c, &k)| if k { c as u32 - skip as u32 } else { 0 })
                .collect();
            let centroids: Vec<f32> = codebook[skip..].to_vec();
            let centroids = if centroids.is_empty() {
                // Every weight pruned: one unused value keeps the lookup well-formed.
                vec![0.0]
            } else {
                centroids
            };
            let n = centroids.len();
            s.shared = Some(Shared {
                centroids: Var::from_vec(centroids, n, &Device::Cpu)?,
                ids: Tensor::from_vec(ids, codes.len(), &Device::Cpu)?,
                codes,
                reserved,
            });
        }
        Ok(())
    }

    /// The variables the optimizer updates: weights (or shared values) and biases.
    fn vars(&self) -> Vec<Var> {
        let mut v = Vec::new();
        for s in &self.slots {
            match &s.shared {
                Some(sh) => v.push(sh.centroids.clone()),
                None => v.push(s.weight.clone()),
            }
            v.extend(s.bias.clone());
        }
        v
    }

    fn checkpoint(
        &self,
        after_epoch: usize,
        accuracy: Option<f64>,
    ) -> Result<Checkpoint, FinetuneError> {
        Ok(Checkpoint {
            after_epoch,
            accuracy,
            // A copy has its own storage, so later steps do not change it.
            values: self
                .vars()
                .iter()
                .map(|v| v.as_tensor().copy())
                .collect::<Result<_, _>>()?,
        })
    }

    fn restore(&self, c: &Checkpoint) -> Result<(), FinetuneError> {
        for (v, t) in self.vars().iter().zip(&c.values) {
            v.set(t)?;
        }
        Ok(())
    }

    /// The decisions training fixed: masks, shared values, the shrunk shape.
    fn held(&self) -> Result<Held, FinetuneError> {
        let mut held = Held {
            shrunk: self.shrunk,
            ..Held::default()
        };
        for s in &self.slots {
            held.masks.insert(s.layer, s.kept.clone());
            if let Some(sh) = &s.shared {
                held.codebooks.insert(
                    s.layer,
                    HeldCodebook {
                        codes: sh.codes.clone(),
                        codebook: sh.codebook()?,
                    },
                );
            }
        }
        Ok(held)
    }

    /// The trained model as plain tensors (masked, shared values looked up).
    fn dense(&self) -> Result<Model, FinetuneError> {
        let mut m = self.model.clone();
        for s in &self.slots {
            if let Some(p) = m.layers[s.layer].op.params_mut() {
                p.weight = s.effective()?;
                p.bias = s.bias.as_ref().map(|b| b.as_tensor().detach());
            }
        }
        Ok(m)
    }

    /// Compresses the current weights by the recipe with the trained decisions held.
    fn compress(&self) -> Result<(Plan, Model), FinetuneError> {
        let dense = self.dense()?;
        let plan = compress::apply_held(&dense, self.recipe, self.calibration, &self.held()?)?;
        let dense = plan.try_dequantized_model()?;
        Ok((plan, dense))
    }

    /// The compressed model's validation top-1 now, and the activation ranges it calibrated
    /// (fake quantization uses them from here on).
    fn validate(&mut self, val: Option<&PreparedSet>) -> Result<Option<f64>, FinetuneError> {
        let needs_ranges = self.qat && self.resolved.activations.is_some();
        if val.is_none() && !needs_ranges {
            return Ok(None);
        }
        let (plan, _) = self.compress()?;
        for q in &plan.layers {
            if let Some(i) = self.slot_of.get(q.layer).copied().flatten() {
                self.slots[i].activation = q.activation;
            }
        }
        Ok(match val {
            Some(v) => Some(top1(&CompressedModel::build(&plan)?, v)),
            None => None,
        })
    }

    /// One optimizer step on a batch: forward through the compressed view, the loss (distilled
    /// when a teacher batch is given), backward, update, and the masks re-applied.
    fn step(
        &mut self,
        opt: &mut Optim,
        x: &Tensor,
        y: &Tensor,
        teacher: Option<&Tensor>,
    ) -> Result<f32, FinetuneError> {
        let ops = CompressOps {
            slots: &self.slots,
            slot_of: &self.slot_of,
            qat: self.qat,
            train: TrainOps::default(),
        };
        let out = self.model.forward_with(x, &ops, |_, _| Ok(()))?;
        let logits = match OutputKind::of(&self.model) {
            OutputKind::Logits => out,
            OutputKind::Probabilities => out.clamp(1e-30f32, 1f32)?.log()?,
        };
        let loss = match (teacher, &self.settings.distill) {
            (Some(t), Some(d)) => distillation_loss(&logits, t, y, *d)?,
            _ => super::ops::cross_entropy(&logits, y)?,
        };
        opt.backward_step(&loss)?;
        for s in &self.slots {
            if s.shared.is_none() {
                s.apply_mask()?;
            }
        }
        Ok(loss.to_scalar::<f32>()?)
    }

    fn train(
        &mut self,
        train: &PreparedSet,
        val: Option<&PreparedSet>,
        teacher: Option<&[f32]>,
        cancel: &AtomicBool,
        on_event: &mut dyn FnMut(&FinetuneEvent),
    ) -> Result<FinetuneReport, FinetuneError> {
        let cfg = self.settings.train.clone();
        let batches = train.len().div_ceil(cfg.batch);
        let prune_steps = self.prune_epochs * batches;
        let agp = match self.schedule {
            PruneSchedule::Agp { interval, end } => Some(Agp::over(
                prune_steps,
                interval.unwrap_or((batches / 4).max(1)),
                end,
            )),
            _ => None,
        };
        let classes = self.model.num_classes();
        let sample_shape = self.model.input.shape.clone();
        let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x5EED_0F5A_FF1E);
        let mut order: Vec<usize> = (0..train.len()).collect();

        let masks_final_from_start = agp.is_none()
            && !matches!(self.schedule, PruneSchedule::Iterative { rounds } if rounds > 1);
        // Weights as they come in: with one-shot masks (and no shared-value phase) they are a
        // checkpoint too, the recipe applied without training.
        let mut best: Option<Checkpoint> = None;
        let start_accuracy = self.validate(val)?;
        if masks_final_from_start && self.shared_epochs == 0 {
            best = Some(self.checkpoint(0, start_accuracy)?);
        }

        let mut records = Vec::with_capacity(self.plan.len());
        let mut opt: Option<Optim> = None;
        let mut step = 0usize;
        let started = Instant::now();
        let epochs = self.plan.len();
        for epoch in 0..epochs {
            let ep = self.plan[epoch];
            let lr = cfg.lr_decay.rate(ep.base_lr, ep.in_segment, ep.segment);
            let phase_start = epoch == 0 || self.plan[epoch - 1].phase != ep.phase;
            if phase_start {
                if let Phase::Pruning { round: Some(r) } = ep.phase {
                    let rounds = match self.schedule {
                        PruneSchedule::Iterative { rounds } => rounds,
                        _ => 1,
                    };
                    self.ramp_masks(&|s_f| iterative_sparsity(r, rounds, s_f))?;
                }
                if ep.phase == Phase::SharedValues {
                    if agp.is_some() || !masks_final_from_start {
                        self.ramp_masks(&|s_f| s_f)?;
                    }
                    self.start_sharing()?;
                    let accuracy = self.validate(val)?;
                    best = Some(self.checkpoint(epoch, accuracy)?);
                }
                opt = Some(Optim::new(&self.vars(), &cfg)?);
            }
            let Some(opt) = opt.as_mut() else {
                return Err(FinetuneError::Config("no optimizer".into()));
            };
            opt.set_lr(lr);
            on_event(&FinetuneEvent::EpochStarted {
                epoch,
                epochs,
                phase: ep.phase,
                lr,
                batches,
            });
            order.shuffle(&mut rng);
            let epoch_start = Instant::now();
            let mut loss_sum = 0f64;
            let mut samples = 0usize;
            for (b, chunk) in order.chunks(cfg.batch).enumerate() {
                if cancel.load(Ordering::Relaxed) {
                    return Err(FinetuneError::Cancelled);
                }
                if let Some(a) = &agp
                    && ep.phase != Phase::SharedValues
                    && a.updates_at(step)
                {
                    let t = step;
                    self.ramp_masks(&|s_f| a.sparsity(t, s_f))?;
                }
                let (x, y) = train.batch(chunk, &sample_shape)?;
                let teacher_batch = match teacher {
                    Some(t) => {
                        let mut tb = Vec::with_capacity(chunk.len() * classes);
                        for &i in chunk {
                            tb.extend_from_slice(&t[i * classes..(i + 1) * classes]);
                        }
                        Some(Tensor::from_vec(tb, (chunk.len(), classes), &Device::Cpu)?)
                    }
                    None => None,
                };
                let loss = self.step(opt, &x, &y, teacher_batch.as_ref())?;
                if !loss.is_finite() {
                    return Err(FinetuneError::Config(format!(
                        "the loss became {loss} in epoch {} (batch {}): the learning rate {lr:e} is probably too high",
                        epoch + 1,
                        b + 1
                    )));
                }
                loss_sum += loss as f64;
                samples += chunk.len();
                step += 1;
                on_event(&FinetuneEvent::Step {
                    epoch,
                    batch: b,
                    samples,
                    loss,
                    sparsity: self.sparsity(),
                });
            }
            if cancel.load(Ordering::Relaxed) {
                return Err(FinetuneError::Cancelled);
            }
            let accuracy = self.validate(val)?;
            let masks_final = match (&agp, self.schedule) {
                // The final update runs before step `end`.
                (Some(a), _) => step > a.end() || ep.phase == Phase::SharedValues,
                (None, PruneSchedule::Iterative { rounds }) => {
                    ep.phase == Phase::SharedValues
                        || ep.phase
                            == (Phase::Pruning {
                                round: Some(rounds),
                            })
                }
                _ => true,
            };
            let candidate =
                masks_final && (self.shared_epochs == 0 || ep.phase == Phase::SharedValues);
            if candidate {
                let better = match (&best, accuracy) {
                    (None, _) => true,
                    (Some(b), Some(a)) => b.accuracy.is_none_or(|ba| a >= ba),
                    // Without a validation set the latest epoch is kept.
                    (Some(_), None) => true,
                };
                if better {
                    best = Some(self.checkpoint(epoch + 1, accuracy)?);
                }
            }
            let seconds = epoch_start.elapsed().as_secs_f64();
            let done = epoch + 1;
            let eta_seconds =
                started.elapsed().as_secs_f64() / done as f64 * (epochs - done) as f64;
            let record = EpochRecord {
                epoch,
                epochs,
                phase: ep.phase,
                lr,
                train_loss: loss_sum / batches.max(1) as f64,
                validation_accuracy: accuracy,
                sparsity: self.sparsity(),
                candidate,
                seconds,
                eta_seconds,
            };
            on_event(&FinetuneEvent::EpochFinished(record.clone()));
            records.push(record);
        }
        let Some(best) = best else {
            return Err(FinetuneError::Config(
                "no epoch ended with the final masks; raise --epochs".into(),
            ));
        };
        self.restore(&best)?;
        for s in &self.slots {
            if s.shared.is_none() {
                s.apply_mask()?;
            }
        }
        Ok(FinetuneReport {
            epochs: records,
            kept_epoch: best.after_epoch,
            kept_validation_accuracy: best.accuracy,
            qat: self.qat,
            shared_epochs: self.shared_epochs,
            schedule: self.schedule,
            train_samples: train.len(),
            validation_samples: 0,
            test_samples: 0,
            untuned_validation_accuracy: None,
            untuned_test_accuracy: None,
            validation_accuracy: None,
            test_accuracy: None,
        })
    }
}

/// Pruning methods whose sparsity a schedule can ramp by magnitude (or by a nested random
/// order); N:M patterns and structured pruning hold from the start.
fn magnitude_ramped(p: Pruning) -> bool {
    matches!(
        p,
        Pruning::L1 { .. } | Pruning::Std { .. } | Pruning::Random { .. } | Pruning::Global { .. }
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::model::ArchSpec;

    const MLP: &str = r#"
[input]
shape = [8]

[[layer]]
op = "linear"
name = "fc1"
weight = "fc1.weight"
bias = "fc1.bias"
out_features = 12

[[layer]]
op = "relu"

[[layer]]
op = "linear"
name = "fc2"
weight = "fc2.weight"
bias = "fc2.bias"
out_features = 3
"#;

    fn tiny() -> Model {
        let spec = ArchSpec::from_toml(MLP).unwrap();
        crate::train::init_model(&spec, Path::new("tiny.toml"), 7)
            .unwrap()
            .detached()
    }

    fn batch(seed: u64) -> (Tensor, Tensor) {
        use rand::Rng;
        let mut rng = StdRng::seed_from_u64(seed);
        let x: Vec<f32> = (0..16 * 8).map(|_| rng.random_range(-1.0..1.0)).collect();
        let y: Vec<u32> = (0..16).map(|_| rng.random_range(0..3)).collect();
        (
            Tensor::from_vec(x, (16, 8), &Device::Cpu).unwrap(),
            Tensor::from_vec(y, 16, &Device::Cpu).unwrap(),
        )
    }

    /// Drives `steps` optimizer steps (masks ramped as AGP would) and calls `check` after each.
    fn drive(recipe: &str, schedule: PruneSchedule, steps: usize, check: impl Fn(&Run<'_>)) {
        let model = tiny();
        let recipe = Recipe::from_toml_str(recipe).unwrap();
        let mut settings = FinetuneSettings::new(TrainConfig {
            epochs: 1,
            lr: 0.05,
            batch: 16,
            seed: 1,
            optimizer: super::super::OptimizerKind::AdamW,
            momentum: 0.9,
            weight_decay: 0.01,
            lr_decay: super::super::LrDecay::None,
        });
        settings.schedule = schedule;
        let resolved = recipe.validate(&model).unwrap();
        let untuned = compress::apply(&model, &recipe, None).unwrap();
        let mut run = Run::new(&untuned, &resolved, &recipe, &settings, None).unwrap();
        let agp = Agp::over(steps, 3, 0.5);
        let mut opt = Optim::new(&run.vars(), &settings.train).unwrap();
        for t in 0..steps {
            if run.schedule != PruneSchedule::OneShot && agp.updates_at(t) {
                run.ramp_masks(&|s| agp.sparsity(t, s)).unwrap();
            }
            let (x, y) = batch(t as u64);
            run.step(&mut opt, &x, &y, None).unwrap();
            check(&run);
        }
    }

    fn pruned_are_zero(run: &Run<'_>) {
        for s in &run.slots {
            let w = s.weights().unwrap();
            for (i, (v, k)) in w.iter().zip(&s.kept).enumerate() {
                assert!(
                    *k || *v == 0.0,
                    "layer {}: pruned weight {i} is {v}",
                    s.layer
                );
            }
        }
    }

    #[test]
    fn pruned_weights_stay_exactly_zero_at_every_step() {
        drive(
            "[default]\nprune = \"l1\"\nsparsity = 0.6\n",
            PruneSchedule::OneShot,
            20,
            pruned_are_zero,
        );
        // Gradual: the masks grow while the weights train, and weight decay and Adam's momentum
        // would move a formerly kept weight off zero if the mask were not re-applied.
        drive(
            "[default]\nprune = \"l1\"\nsparsity = 0.75\n",
            PruneSchedule::AGP,
            20,
            |run| {
                pruned_are_zero(run);
                assert!(run.sparsity() <= 0.75 + 1e-9);
            },
        );
        drive(
            "[global]\nsparsity = 0.5\n",
            PruneSchedule::AGP,
            20,
            pruned_are_zero,
        );
    }

    #[test]
    fn n_m_patterns_stay_n_m() {
        drive(
            "[default]\nprune = \"nm\"\nn = 2\nm = 4\n",
            PruneSchedule::AGP,
            20,
            |run| {
                pruned_are_zero(run);
                for s in &run.slots {
                    let w = s.weights().unwrap();
                    for (g, group) in w.chunks(4).enumerate() {
                        let nonzero = group.iter().filter(|v| **v != 0.0).count();
                        let kept = s.kept[g * 4..g * 4 + group.len()]
                            .iter()
                            .filter(|k| **k)
                            .count();
                        assert_eq!(kept, 2, "layer {} group {g}", s.layer);
                        assert!(nonzero <= 2, "layer {} group {g}: {group:?}", s.layer);
                    }
                }
            },
        );
    }

    #[test]
    fn structured_pruning_trains_the_shrunk_layers() {
        drive(
            "[default]\nprune = \"structured\"\nsparsity = 0.5\n",
            PruneSchedule::OneShot,
            3,
            |run| {
                assert!(run.shrunk);
                let fc1 = &run.slots[0];
                assert_eq!(fc1.shape, vec![6, 8]);
                assert_eq!(run.slots[1].shape, vec![3, 6]);
                assert!(fc1.mask.is_none());
            },
        );
    }
}
