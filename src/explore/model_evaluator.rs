//! `ModelEvaluator`, the evaluator of a real model on a real evaluation set: a configuration
//! becomes a recipe, `compress::apply` turns it into a plan, `engine::CompressedModel` packs
//! and runs it, and `measure` scores the outputs — the path `squeeze eval` takes, so the
//! explorer's numbers are the command line's.
//!
//! Sensitivity probes compress one layer with every other layer dense, so the layers before
//! the probed one compute the same activations for every probe of it: they are computed once
//! per sweep and each probe runs only from its layer on (`measure_probes`); the dense layers
//! from there are packed once per sweep, and a probe packs only the layer it compresses
//! (`CompressedModel::set_layer`). The figures are the ones the whole path gives (the tests
//! compare them).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rayon::prelude::*;
use serde::Serialize;

use crate::compress::recipe::PruneMethod;
use crate::compress::{self, Plan, QuantizedLayer, Recipe};
use crate::data::EvalSet;
use crate::engine::{self, CompressedModel, PackedLayer, Step};
use crate::measure::{self, Measurement, OutputKind};
use crate::model::{InputSpec, Model, Op, Source};

use super::config::{Config, LayerSetting};
use super::eval::{Estimate, EvalError, Evaluator, Figures, Fnv, LayerFigures, Stage};
use super::finetune::{TuneHost, TuneJob, TuneOutcome, TuneProgress, TunedModel};
use super::info::{HIST_BINS, ModelInfo, histogram};
use super::results::Inputs;
use super::search::LayerCost;
use super::sensitivity::{self, ProbeEvent, ProbeJob};
use super::setup::CalibrationLoader;

/// Samples in the quick estimate's fixed random subset.
pub const QUICK_SAMPLES: usize = 1000;
/// Samples scored between two looks at the cancel flag.
const BATCH: usize = 1000;
/// Built models kept for the next stages of the same configuration.
const BUILT_CACHE: usize = 6;

/// Where activation calibration takes its inputs.
enum Calibration {
    /// The evaluation set's own samples.
    Evaluation,
    Given(Vec<f32>),
    Lazy {
        loader: CalibrationLoader,
        loaded: OnceLock<Result<Vec<f32>, crate::data::DataError>>,
    },
}

/// The dense model's activations at each cut: (model index, the whole set's values there).
type Prefixes = Vec<(usize, Arc<Vec<f32>>)>;

struct Built {
    canonical: String,
    plan: Plan,
    model: CompressedModel,
    /// Size figures and per-layer histograms, shared by every stage's answer.
    base: Figures,
    /// Top-1 over the whole set, once measured: a quick stage whose subset is the whole set
    /// measures it, and the full stage after it reads it rather than running the set again.
    accuracy: OnceLock<f64>,
}

/// Evaluates configurations of one model on one prepared evaluation set.
pub struct ModelEvaluator {
    model: Model,
    info: ModelInfo,
    kind: OutputKind,
    /// Scaled inputs, `labels.len() × input_len`.
    inputs: Vec<f32>,
    labels: Vec<u32>,
    quick_inputs: Vec<f32>,
    quick_labels: Vec<u32>,
    /// Scaled inputs activation calibration observes (default: the evaluation inputs).
    calibration: Calibration,
    /// What the figures were measured on, recorded in exports.
    provenance: Option<Inputs>,
    /// Files the session reads besides the model, protected from its exports.
    input_files: Vec<PathBuf>,
    built: Mutex<Vec<Arc<Built>>>,
    /// Latency is a single-thread timing: one at a time, and while it runs our accuracy
    /// evaluations pause between batches (`quiet`), so they do not inflate it.
    latency_lock: Mutex<()>,
    quiet: AtomicBool,
    /// Accuracy batches running now.
    active: AtomicUsize,
    /// The training set `f` fine-tunes on, when there is one.
    training: Option<PathBuf>,
    /// Fine-tuned models of this run, for export.
    tuned: Mutex<Vec<Arc<TunedModel>>>,
    /// Where fine-tuned models are saved (beside the journal), when they are.
    models_dir: Option<PathBuf>,
    /// The dense model's figures, measured at the first export and written into every
    /// `measurement.json` beside the configuration's.
    dense_baseline: std::sync::OnceLock<DenseBaseline>,
}

impl ModelEvaluator {
    /// `inputs` are the set's prepared (scaled) inputs. The quick subset is a fixed random
    /// choice of `quick` samples (the same every run, so cached estimates stay comparable).
    pub fn new(
        model: Model,
        mut info: ModelInfo,
        inputs: Vec<f32>,
        labels: Vec<u32>,
        quick: usize,
    ) -> Self {
        let il = model.input_len();
        let n = labels.len();
        let k = quick.min(n);
        info.quick_samples = k;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_5a3e);
        let mut idx = rand::seq::index::sample(&mut rng, n, k).into_vec();
        idx.sort_unstable();
        let mut quick_inputs = Vec::with_capacity(k * il);
        let mut quick_labels = Vec::with_capacity(k);
        for i in idx {
            quick_inputs.extend_from_slice(&inputs[i * il..(i + 1) * il]);
            quick_labels.push(labels[i]);
        }
        ModelEvaluator {
            kind: OutputKind::of(&model),
            model,
            info,
            inputs,
            labels,
            quick_inputs,
            quick_labels,
            calibration: Calibration::Evaluation,
            provenance: None,
            input_files: Vec::new(),
            built: Mutex::new(Vec::new()),
            latency_lock: Mutex::new(()),
            quiet: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            dense_baseline: std::sync::OnceLock::new(),
            training: None,
            tuned: Mutex::new(Vec::new()),
            models_dir: None,
        }
    }

    /// Fine-tunes (`f`) on the training set at `path`.
    pub fn with_training(mut self, path: Option<PathBuf>) -> Self {
        self.training = path;
        self
    }

    /// Saves fine-tuned models into `dir` (beside the journal), so that a resumed session can
    /// export them.
    pub fn with_models_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.models_dir = dir;
        self
    }

    /// Writes a tuned model's packed bytes into the models folder (atomically) under its
    /// SHA-256; `Ok(None)` when models are not saved.
    fn save_tuned(
        &self,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<Option<PathBuf>, crate::files::FileError> {
        let Some(dir) = &self.models_dir else {
            return Ok(None);
        };
        std::fs::create_dir_all(dir).map_err(|source| crate::files::FileError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(super::finetune::tuned_model_name(sha256));
        crate::files::write_atomic(&path, bytes)?;
        Ok(Some(path))
    }

    /// Calibrates quantized activations on these prepared inputs (training images, so the
    /// set that reports accuracy is not the one calibration learns from).
    pub fn with_calibration(mut self, inputs: Vec<f32>) -> Self {
        if !inputs.is_empty() {
            self.calibration = Calibration::Given(inputs);
        }
        self
    }

    /// Calibrates on the prepared inputs `loader` gives, read the first time a configuration
    /// quantizes activations.
    pub fn with_calibration_loader(mut self, loader: CalibrationLoader) -> Self {
        self.calibration = Calibration::Lazy {
            loader,
            loaded: OnceLock::new(),
        };
        self
    }

    /// Names the files the session reads (data, recipe, journal, ...) so that no export
    /// replaces one of them; the model's own file is always protected.
    pub fn with_inputs(mut self, inputs: Vec<PathBuf>) -> Self {
        self.input_files = inputs;
        self
    }

    /// Records what the figures are measured on in every export.
    pub fn with_provenance(mut self, inputs: Inputs) -> Self {
        self.provenance = Some(inputs);
        self
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    fn calibration(&self) -> Result<(&[f32], usize), EvalError> {
        let data: &[f32] = match &self.calibration {
            Calibration::Evaluation => &self.inputs,
            Calibration::Given(v) => v,
            Calibration::Lazy { loader, loaded } => loaded
                .get_or_init(loader)
                .as_deref()
                .map_err(|e| EvalError::Other(format!("calibration set: {e}")))?,
        };
        Ok((data, data.len() / self.model.input_len().max(1)))
    }

    fn plan(&self, config: &Config) -> Result<Plan, EvalError> {
        let recipe = config.to_recipe(&self.info);
        let calibration = match recipe.activations {
            Some(_) => Some(self.calibration()?),
            None => None,
        };
        Ok(compress::apply(&self.model, &recipe, calibration)?)
    }

    fn build(&self, config: &Config) -> Result<Arc<Built>, EvalError> {
        let canonical = config.canonical();
        if let Ok(cache) = self.built.lock()
            && let Some(b) = cache.iter().find(|b| b.canonical == canonical)
        {
            return Ok(Arc::clone(b));
        }
        let plan = self.plan(config)?;
        let model = CompressedModel::build(&plan)?;
        let base = self.base_figures(
            &plan,
            &|i| packed_at(&model.steps, i),
            model.size_bytes() as u64,
            config.activation_bits,
        );
        let built = Arc::new(Built {
            canonical,
            plan,
            model,
            base,
            accuracy: OnceLock::new(),
        });
        if let Ok(mut cache) = self.built.lock() {
            cache.insert(0, Arc::clone(&built));
            cache.truncate(BUILT_CACHE);
        }
        Ok(built)
    }

    /// Size figures, per-layer figures and the activation arena of a plan whose packed layer
    /// at model index `i` is `packed(i)`.
    fn base_figures<'p>(
        &self,
        plan: &Plan,
        packed: &dyn Fn(usize) -> Option<&'p PackedLayer>,
        size_bytes: u64,
        activation_bits: Option<u8>,
    ) -> Figures {
        self.figures_reusing(plan, packed, size_bytes, activation_bits, None)
    }

    /// `base_figures`, with the per-layer figures of every layer but the `changed` model
    /// indexes taken from `reuse` (`(figures, changed)`: the figures of a plan that differs
    /// from this one only there).
    fn figures_reusing<'p>(
        &self,
        plan: &Plan,
        packed: &dyn Fn(usize) -> Option<&'p PackedLayer>,
        size_bytes: u64,
        activation_bits: Option<u8>,
        reuse: Option<(&Figures, &[usize])>,
    ) -> Figures {
        let sparsity = plan.sparsity_against(&self.model);
        // Computed when the layers were packed.
        let entropy: u64 = (0..plan.model.layers.len())
            .filter_map(packed)
            .map(|p| p.entropy_bytes.unwrap_or(p.size_bytes()) as u64)
            .sum();
        let layers = self
            .info
            .layers
            .iter()
            .enumerate()
            .map(|(k, info)| {
                let Some(q) = plan.layers.iter().find(|q| {
                    plan.model
                        .layers
                        .get(q.layer)
                        .is_some_and(|l| l.name == info.name)
                }) else {
                    return LayerFigures::default();
                };
                if let Some((base, changed)) = reuse
                    && !changed.contains(&q.layer)
                    && let Some(f) = base.layers.get(k)
                {
                    return f.clone();
                }
                let p = packed(q.layer);
                let positions = plan.model.layers.get(q.layer).map_or(1, |l| l.positions());
                let values = q.dequantized();
                let kept = values
                    .iter()
                    .zip(&q.kept)
                    .filter(|(_, k)| **k)
                    .map(|(v, _)| *v);
                LayerFigures {
                    size_bytes: p.map_or(0, |p| p.size_bytes() as u64),
                    sparsity: sparsity
                        .layers
                        .iter()
                        .find(|l| l.name == info.name)
                        .map_or(0.0, |l| l.fraction()),
                    format: p.map(|p| p.format_name()).unwrap_or_default(),
                    hist_after: histogram(kept, info.hist_range, HIST_BINS),
                    macs: p.map_or(0, |p| (p.entries * positions) as u64),
                }
            })
            .collect();
        let arena = measure::arena(
            &plan.model,
            measure::activation_value_bytes(activation_bits),
        );
        Figures {
            size_bytes: Some(size_bytes),
            dense_bytes: Some(self.info.dense_bytes() as u64),
            entropy_bytes: Some(entropy),
            sparsity: Some(sparsity.fraction()),
            zeros: Some(plan.zeros_against(&self.model)),
            layers,
            arena_bytes: Some(arena.peak_bytes as u64),
            arena_layer: Some(arena.peak_layer),
            ..Figures::default()
        }
    }

    /// Top-1 accuracy over `labels`, in batches, checking `cancel` between them.
    fn accuracy(
        &self,
        model: &CompressedModel,
        inputs: &[f32],
        labels: &[u32],
        cancel: &AtomicBool,
    ) -> Result<f64, EvalError> {
        let il = model.input_len();
        let classes = model.num_classes();
        let mut outputs = Vec::with_capacity(labels.len() * classes);
        for start in (0..labels.len()).step_by(BATCH) {
            if cancel.load(Ordering::Relaxed) {
                return Err(EvalError::Cancelled);
            }
            // Pause while a latency measurement runs (bounded: it takes well under a second).
            while self.quiet.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let n = BATCH.min(labels.len() - start);
            self.active.fetch_add(1, Ordering::AcqRel);
            let part = model.logits_until(&inputs[start * il..(start + n) * il], n, cancel);
            self.active.fetch_sub(1, Ordering::AcqRel);
            outputs.extend(part.ok_or(EvalError::Cancelled)?);
        }
        Ok(measure::score(&outputs, classes, labels, self.kind, None).accuracy)
    }

    /// Median single-sample latency, measured while our other evaluations pause. Waiting for
    /// them is bounded (a batch may be running on this very thread, under a stolen job), so
    /// this can never deadlock; at worst one batch overlaps the start of the timing.
    fn latency(&self, model: &CompressedModel) -> engine::LatencyStats {
        /// Lifts the pause however the timing ends (a panic included).
        struct Quiet<'a>(&'a AtomicBool);
        impl Drop for Quiet<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _one = self.latency_lock.lock();
        self.quiet.store(true, Ordering::Release);
        let _lift = Quiet(&self.quiet);
        let start = Instant::now();
        while self.active.load(Ordering::Acquire) > 0
            && start.elapsed() < Duration::from_millis(200)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        engine::latency(model, &self.inputs)
    }

    /// The full measurement of a configuration, as `squeeze eval --format json` reports it:
    /// `measure::measure` scores it; latency is timed with our other work paused, and
    /// throughput after it.
    pub fn measurement(&self, config: &Config) -> Result<Measurement, EvalError> {
        let built = self.build(config)?;
        Ok(self.measurement_of(&built.plan, &built.model))
    }

    /// `measurement` of a packed model and its plan.
    fn measurement_of(&self, plan: &Plan, model: &CompressedModel) -> Measurement {
        let pruning = measure::PruningRecord::of(plan, &self.model);
        self.measurement_with(Some(plan), Some(&pruning), model)
    }

    /// `measurement` of a packed model, with its plan when it was compressed in this process
    /// and what pruning left of the original layers when that is known.
    fn measurement_with(
        &self,
        plan: Option<&Plan>,
        pruning: Option<&measure::PruningRecord>,
        model: &CompressedModel,
    ) -> Measurement {
        let timing = measure::Timing {
            latency: false,
            throughput: false,
        };
        let mut m = measure::measure(
            model,
            plan,
            pruning,
            &self.inputs,
            &self.labels,
            None,
            timing,
        );
        let lat = self.latency(model);
        m.latency_us = lat.median_us;
        m.latency_p90_us = lat.p90_us;
        m.throughput = engine::throughput(model, &self.inputs, self.labels.len());
        m
    }

    /// The dense model's figures (measured once, at the first export).
    fn dense_baseline(&self) -> Result<DenseBaseline, EvalError> {
        if let Some(d) = self.dense_baseline.get() {
            return Ok(d.clone());
        }
        let m = self.measurement(&Config::dense(self.info.layers.len()))?;
        let d = DenseBaseline {
            accuracy: m.accuracy.accuracy,
            top5: m.accuracy.top5,
            loss: m.accuracy.loss,
            size_bytes: m.size_bytes,
            latency_us: m.latency_us,
            latency_p90_us: m.latency_p90_us,
            throughput: m.throughput,
        };
        Ok(self.dense_baseline.get_or_init(|| d).clone())
    }

    /// Writes `recipe.toml`, `model.safetensors` (`model`'s bytes) and `measurement.json`
    /// into `dir`, all or none.
    fn write_export(
        &self,
        recipe: &Recipe,
        dir: &Path,
        model: &dyn Fn() -> Result<(Vec<u8>, Measurement), EvalError>,
    ) -> Result<Vec<PathBuf>, EvalError> {
        let write = |path: &Path, e: &dyn std::fmt::Display| EvalError::Write {
            path: path.to_path_buf(),
            msg: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| write(dir, &e))?;
        let recipe_text = recipe.to_toml();
        let recipe_path = dir.join("recipe.toml");
        let model_path = dir.join("model.safetensors");
        let json_path = dir.join("measurement.json");
        crate::files::OutputCheck::new()
            .inputs("input", self.inputs().iter().map(PathBuf::as_path))
            .output("the exported recipe", &recipe_path)
            .output("the exported model", &model_path)
            .output("the exported measurement", &json_path)
            .check()
            .map_err(|e| write(dir, &e))?;
        let (bytes, measurement) = model()?;
        let dense = self.dense_baseline()?;
        let json = serde_json::to_string_pretty(&ExportedMeasurement {
            inputs: self.provenance.as_ref(),
            recipe,
            dense: &dense,
            measurement: &measurement,
        })
        .map_err(|e| write(&json_path, &e))?;
        crate::files::write_all_atomic(&[
            (&recipe_path, recipe_text.as_bytes()),
            (&model_path, &bytes),
            (&json_path, json.as_bytes()),
        ])
        .map_err(|e| write(dir, &e))?;
        Ok(vec![recipe_path, model_path, json_path])
    }

    /// The model index where a probe of compressible layer `layer` can start running, with
    /// the layers before it computed once: the latest index at or before the layer from which
    /// the model runs on the activations there alone — the layer itself in a chain, the start
    /// of its block inside a residual block (whose `add` reads the block's input), 0 (the
    /// whole model) when there is none.
    fn cut_for(&self, layer: usize) -> usize {
        let Some((index, _)) = self.model.compressible().nth(layer) else {
            return 0;
        };
        latest_cut(&self.model, index)
    }

    /// The dense model's activations at each cut (the inputs of that layer) for the whole
    /// set, computed layer range by layer range.
    fn prefix_activations(
        &self,
        cuts: &[usize],
        cancel: &AtomicBool,
    ) -> Result<Prefixes, EvalError> {
        let mut out: Vec<(usize, Arc<Vec<f32>>)> = Vec::new();
        let mut at = 0;
        let mut acts = Arc::new(self.inputs.clone());
        for &cut in cuts {
            if cut > at {
                let Some(part) = slice_model(&self.model, at..cut) else {
                    return Err(EvalError::Other(format!(
                        "cannot run layers {at}..{cut} on their own"
                    )));
                };
                let plan = compress::apply(&part, &Recipe::default(), None)?;
                let cm = CompressedModel::build(&plan)?;
                acts = Arc::new(batched_logits(&cm, &acts, self.labels.len(), cancel)?);
                at = cut;
            }
            out.push((cut, Arc::clone(&acts)));
        }
        Ok(out)
    }

    /// The dense model's layers from `cut` on, packed: what every probe from that cut runs,
    /// with its own layer packed anew (`probe`).
    fn suffix(&self, dense: &Built, cut: usize) -> Result<CompressedModel, EvalError> {
        let Some(part) = slice_plan(&dense.plan, cut) else {
            return Err(EvalError::Other(format!("cannot run from layer {cut} on")));
        };
        Ok(CompressedModel::build(&part)?)
    }

    /// The model indexes of the layers `config` compresses, when a probe of it can reuse the
    /// dense model's packed layers: each changed layer compressed on its own gives what the
    /// whole plan gives it (no global ranking, no activation quantization, no structured
    /// pruning, which reshapes the layers after it), and each lies at or after `cut`.
    fn changed_alone(&self, config: &Config, cut: usize) -> Option<Vec<usize>> {
        if config.global.is_some_and(|g| g > 0) || config.activation_bits.is_some() {
            return None;
        }
        let dense = LayerSetting::default();
        let mut changed = Vec::new();
        for ((index, layer), s) in self.model.compressible().zip(&config.layers) {
            if *s == dense {
                continue;
            }
            if s.prune == PruneMethod::Structured
                || index < cut
                || matches!(layer.op, Op::Embedding(_))
            {
                return None;
            }
            changed.push(index);
        }
        Some(changed)
    }

    /// One probe's full-set figures, running from `cut` on `acts` (the dense model's
    /// activations there). The layers before `cut` are `dense`'s. From it on: `work`, the dense
    /// layers from `cut` (`suffix`, packed) and the dense plan, with the probed layers packed
    /// anew in place — a chain's probes all compress the same layer, so each replaces it and
    /// nothing else is copied; or, where `changed_alone` says that would differ, the
    /// configuration's whole plan from `cut`.
    fn probe(
        &self,
        config: &Config,
        cut: usize,
        acts: &[f32],
        (dense, suffix): (&Built, &CompressedModel),
        work: &mut Option<ProbeWork>,
        cancel: &AtomicBool,
    ) -> Result<Figures, EvalError> {
        let whole;
        let (plan, cm, changed) = match self.changed_alone(config, cut) {
            Some(changed) => {
                let w = match work {
                    Some(w) => w,
                    None => work.insert(ProbeWork {
                        model: suffix.clone(),
                        plan: dense.plan.clone(),
                        changed: Vec::new(),
                    }),
                };
                let recipe = config.to_recipe(&self.info);
                let restore: Vec<usize> = w
                    .changed
                    .iter()
                    .copied()
                    .filter(|i| !changed.contains(i))
                    .collect();
                for index in restore {
                    let q = dense.plan.layers.iter().find(|l| l.layer == index);
                    let p = index
                        .checked_sub(cut)
                        .and_then(|i| packed_at(&suffix.steps, i));
                    let (Some(q), Some(p)) = (q, p) else {
                        return Err(EvalError::Other(format!(
                            "layer #{index} has no dense weights to put back"
                        )));
                    };
                    w.set(cut, q.clone(), p.clone())?;
                }
                w.changed.clear();
                for &index in &changed {
                    let name = &self.model.layers[index].name;
                    let missing = || EvalError::Other(format!("layer {name} was not planned"));
                    let alone = slice_model(&self.model, index..index + 1).ok_or_else(missing)?;
                    let mut q = compress::apply(&alone, &recipe, None)?
                        .layers
                        .pop()
                        .ok_or_else(missing)?;
                    q.layer = index;
                    let packed = PackedLayer::encode(&q, name)?;
                    // Listed first: a failed `set` leaves the layer for the next probe to
                    // restore.
                    w.changed.push(index);
                    w.set(cut, q, packed)?;
                }
                (&w.plan, &w.model, Some(changed))
            }
            None => {
                let plan = self.plan(config)?;
                let Some(part) = slice_plan(&plan, cut) else {
                    return Err(EvalError::Other(format!("cannot run from layer {cut} on")));
                };
                let cm = CompressedModel::build(&part)?;
                whole = (plan, cm);
                (&whole.0, &whole.1, None)
            }
        };
        let n = self.labels.len();
        let outputs = batched_logits(cm, acts, n, cancel)?;
        let acc =
            measure::score(&outputs, cm.num_classes(), &self.labels, self.kind, None).accuracy;
        let packed = |i: usize| {
            if i < cut {
                packed_at(&dense.model.steps, i)
            } else {
                packed_at(&cm.steps, i - cut)
            }
        };
        let size: usize = dense.model.steps[..cut]
            .iter()
            .map(step_bytes)
            .sum::<usize>()
            + cm.steps.iter().map(step_bytes).sum::<usize>();
        let reuse = changed.as_deref().map(|c| (&dense.base, c));
        let mut f = self.figures_reusing(plan, &packed, size as u64, config.activation_bits, reuse);
        f.accuracy = Some(Estimate::from_subset(acc, n, n));
        Ok(f)
    }
}

/// A chain of probes' working model: the dense layers from the chain's cut, packed, and the
/// dense plan, with the layers in `changed` replaced by the last probe's.
struct ProbeWork {
    model: CompressedModel,
    plan: Plan,
    changed: Vec<usize>,
}

impl ProbeWork {
    /// Model layer `q.layer` planned as `q` and packed as `packed`, in a model from `cut` on.
    fn set(&mut self, cut: usize, q: QuantizedLayer, packed: PackedLayer) -> Result<(), EvalError> {
        let index = q.layer;
        let Some(at) = index.checked_sub(cut) else {
            return Err(EvalError::Other(format!(
                "layer #{index} lies before the probe's first layer #{cut}"
            )));
        };
        self.model.set_layer(at, packed)?;
        match self.plan.layers.iter_mut().find(|l| l.layer == index) {
            Some(slot) => *slot = q,
            None => return Err(EvalError::Other(format!("layer #{index} was not planned"))),
        }
        Ok(())
    }
}

impl TuneHost for ModelEvaluator {
    fn model(&self) -> &Model {
        &self.model
    }

    fn recipe(&self, config: &Config) -> Recipe {
        config.to_recipe(&self.info)
    }

    fn measure_tuned(
        &self,
        plan: &Plan,
        compressed: &CompressedModel,
        activation_bits: Option<u8>,
        cancel: &AtomicBool,
    ) -> Result<(Figures, Figures), EvalError> {
        let base = self.base_figures(
            plan,
            &|i| packed_at(&compressed.steps, i),
            compressed.size_bytes() as u64,
            activation_bits,
        );
        let mut full = base.clone();
        let a = self.accuracy(compressed, &self.inputs, &self.labels, cancel)?;
        let n = self.labels.len();
        full.accuracy = Some(Estimate::from_subset(a, n, n));
        let mut latency = base;
        let lat = self.latency(compressed);
        latency.latency_us = Some(lat.median_us);
        latency.latency_p90_us = Some(lat.p90_us);
        latency.layers.clear();
        Ok((full, latency))
    }
}

/// Outputs of `n` samples in the batches `accuracy` uses, so that a run split at a layer
/// groups samples exactly as the whole run does; stops early with `Cancelled` when `cancel`
/// is set.
fn batched_logits(
    model: &CompressedModel,
    inputs: &[f32],
    n: usize,
    cancel: &AtomicBool,
) -> Result<Vec<f32>, EvalError> {
    let il = model.input_len();
    let mut out = Vec::with_capacity(n * model.num_classes());
    for start in (0..n).step_by(BATCH) {
        let len = BATCH.min(n - start);
        let part = model.logits_until(&inputs[start * il..(start + len) * il], len, cancel);
        out.extend(part.ok_or(EvalError::Cancelled)?);
    }
    Ok(out)
}

/// The packed layer of step `i`, if it is a linear or conv layer.
fn packed_at(steps: &[Step], i: usize) -> Option<&PackedLayer> {
    match steps.get(i)? {
        Step::Linear(p) | Step::TokenLinear(p, _) | Step::Conv(p, _) => Some(p),
        _ => None,
    }
}

/// Stored bytes of one step (as `CompressedModel::size_bytes` counts them).
fn step_bytes(step: &Step) -> usize {
    match step {
        Step::Linear(p) | Step::TokenLinear(p, _) | Step::Conv(p, _) => p.size_breakdown().total(),
        Step::ChannelAffine { scale, shift, .. } => (scale.len() + shift.len()) * 4,
        _ => 0,
    }
}

/// The latest index at or before `index` from which `model` runs on the activations there
/// alone (`cut_allowed`); 0, the whole model, when there is none.
fn latest_cut(model: &Model, index: usize) -> usize {
    (1..=index)
        .rev()
        .find(|&c| cut_allowed(model, c))
        .unwrap_or(0)
}

/// Whether a model can run from layer `cut` on given only the activations there (the previous
/// layer's output, which layer `cut` reads): no layer from it on reads any other value from
/// before it.
fn cut_allowed(model: &Model, cut: usize) -> bool {
    let before = cut.checked_sub(1).map_or(Source::Input, Source::Layer);
    (cut..model.layers.len()).all(|i| {
        model
            .reads(i)
            .iter()
            .all(|s| *s == before || matches!(s, Source::Layer(j) if *j >= cut))
    })
}

/// Layers `range` of a model as a model of their own: its input is the first layer's input
/// (already scaled, the output of the layer before the range), the values layers read
/// renumbered. `None` when a layer inside reads one outside (besides that input).
fn slice_model(model: &Model, range: Range<usize>) -> Option<Model> {
    let first = model.layers.get(range.start)?;
    let mut layers = Vec::with_capacity(range.len());
    let inside = |s: &mut Source| -> Option<()> {
        match s {
            Source::Layer(j) if *j + 1 == range.start => *s = Source::Input,
            Source::Layer(j) => *j = j.checked_sub(range.start)?,
            Source::Input if range.start == 0 => {}
            Source::Input => return None,
        }
        Some(())
    };
    for (k, l) in model.layers.get(range.clone())?.iter().enumerate() {
        let mut l = l.clone();
        if k == 0 {
            l.input = None;
        } else if let Some(s) = &mut l.input {
            inside(s)?;
        }
        match &mut l.op {
            Op::Add { from } | Op::Mul { from } => inside(from)?,
            Op::Concat { from } => from.iter_mut().try_for_each(inside)?,
            _ => {}
        }
        layers.push(l);
    }
    Some(Model {
        spec: model.spec.clone(),
        input: InputSpec {
            shape: first.in_shape.clone(),
            scale: 1.0,
            mean: vec![0.0],
            std: vec![1.0],
        },
        layers,
        source: model.source.clone(),
    })
}

/// A plan's layers from model index `from` on, as a plan of their own.
fn slice_plan(plan: &Plan, from: usize) -> Option<Plan> {
    let model = slice_model(&plan.model, from..plan.model.layers.len())?;
    let layers = plan
        .layers
        .iter()
        .filter(|q| q.layer >= from)
        .map(|q| {
            let mut q = q.clone();
            q.layer -= from;
            q
        })
        .collect();
    Some(Plan { model, layers })
}

/// The dense model measured as every configuration is (`squeeze eval` without a recipe).
#[derive(Debug, Clone, Serialize)]
struct DenseBaseline {
    accuracy: f64,
    top5: f64,
    loss: f64,
    size_bytes: usize,
    latency_us: f64,
    latency_p90_us: f64,
    throughput: f64,
}

/// What `measurement.json` holds: the measurement with what it was measured on and the
/// dense model's figures on the same set.
#[derive(Serialize)]
struct ExportedMeasurement<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    inputs: Option<&'a Inputs>,
    recipe: &'a Recipe,
    dense: &'a DenseBaseline,
    #[serde(flatten)]
    measurement: &'a Measurement,
}

impl Evaluator for ModelEvaluator {
    fn evaluate(
        &self,
        config: &Config,
        stage: Stage,
        cancel: &AtomicBool,
    ) -> Result<Figures, EvalError> {
        if cancel.load(Ordering::Relaxed) {
            return Err(EvalError::Cancelled);
        }
        let built = self.build(config)?;
        let mut figures = built.base.clone();
        let whole = || -> Result<Estimate, EvalError> {
            let a = match built.accuracy.get() {
                Some(a) => *a,
                None => {
                    let a = self.accuracy(&built.model, &self.inputs, &self.labels, cancel)?;
                    *built.accuracy.get_or_init(|| a)
                }
            };
            Ok(Estimate::from_subset(
                a,
                self.labels.len(),
                self.labels.len(),
            ))
        };
        match stage {
            // The quick subset is the whole set (`new` keeps the set's order): its answer is
            // the full one, which the full stage then reads.
            Stage::Quick if self.quick_labels.len() == self.labels.len() => {
                figures.accuracy = Some(whole()?);
            }
            Stage::Quick => {
                let a =
                    self.accuracy(&built.model, &self.quick_inputs, &self.quick_labels, cancel)?;
                figures.accuracy = Some(Estimate::from_subset(
                    a,
                    self.quick_labels.len(),
                    self.labels.len(),
                ));
            }
            Stage::Full => figures.accuracy = Some(whole()?),
            Stage::Latency => {
                let lat = self.latency(&built.model);
                figures.latency_us = Some(lat.median_us);
                figures.latency_p90_us = Some(lat.p90_us);
                // Latency answers carry no per-layer detail: the other stages have it.
                figures.layers.clear();
            }
        }
        Ok(figures)
    }

    fn export(&self, config: &Config, dir: &Path) -> Result<Vec<PathBuf>, EvalError> {
        let recipe = config.to_recipe(&self.info);
        let recipe_text = recipe.to_toml();
        self.write_export(&recipe, dir, &|| {
            let built = self.build(config)?;
            let bytes = built
                .model
                .sealed_with(
                    Some(&recipe_text),
                    &[measure::PruningRecord::of(&built.plan, &self.model).metadata()],
                )
                .to_bytes()
                .map_err(|e| EvalError::Engine(e.into()))?;
            Ok((bytes, self.measurement_of(&built.plan, &built.model)))
        })
    }

    fn finetune(
        &self,
        job: &TuneJob,
        cancel: &AtomicBool,
        report: &mut dyn FnMut(TuneProgress),
    ) -> Result<TuneOutcome, EvalError> {
        let Some(path) = &self.training else {
            return Err(EvalError::Other(
                "no training set beside the evaluation set: give --train DATA".into(),
            ));
        };
        let (mut outcome, model) = super::finetune::run(self, path, job, cancel, report)?;
        let bytes = model.to_bytes(&self.model)?;
        let sha256 = crate::files::sha256(&bytes);
        match self.save_tuned(&bytes, &sha256) {
            Ok(Some(saved)) if cancel.load(Ordering::Relaxed) => {
                // Esc came while it was being written: it leaves nothing behind.
                let _ = std::fs::remove_file(saved);
                return Err(EvalError::Cancelled);
            }
            Ok(_) => {}
            Err(e) => outcome.unsaved = Some(e.to_string()),
        }
        outcome.model = Some(sha256);
        if let Ok(mut tuned) = self.tuned.lock() {
            tuned.retain(|t| t.key != model.key);
            tuned.push(model);
        }
        Ok(outcome)
    }

    fn export_tuned(
        &self,
        key: u64,
        config: &Config,
        model: Option<&str>,
        dir: &Path,
    ) -> Result<Vec<PathBuf>, EvalError> {
        let found = self
            .tuned
            .lock()
            .ok()
            .and_then(|t| t.iter().find(|t| t.key == key).cloned());
        if let Some(t) = found {
            return self.write_export(&t.recipe, dir, &|| {
                Ok((
                    t.to_bytes(&self.model)?,
                    self.measurement_of(&t.plan, &t.compressed),
                ))
            });
        }
        // Tuned in an earlier run: the file saved beside the journal, checked against the
        // SHA-256 the journal recorded.
        let gone = |why: String| {
            EvalError::Other(format!(
                "the fine-tuned model of this point {why}: press f on its configuration to tune it again"
            ))
        };
        let (Some(sha256), Some(models)) = (model, &self.models_dir) else {
            return Err(gone("was not kept".into()));
        };
        let path = models.join(super::finetune::tuned_model_name(sha256));
        let bytes = std::fs::read(&path)
            .map_err(|e| gone(format!("cannot be read ({}: {e})", path.display())))?;
        if crate::files::sha256(&bytes) != sha256 {
            return Err(gone(format!(
                "is damaged ({} does not have the SHA-256 the journal recorded)",
                path.display()
            )));
        }
        let compressed = engine::load_compressed(&path)?;
        let pruning =
            measure::PruningRecord::read(&path).map_err(|e| EvalError::Other(e.to_string()))?;
        let recipe = config.to_recipe(&self.info);
        self.write_export(&recipe, dir, &|| {
            Ok((
                bytes.clone(),
                self.measurement_with(None, pruning.as_ref(), &compressed),
            ))
        })
    }

    fn discard_tuned(&self, model: &str) {
        if let Some(dir) = &self.models_dir {
            let _ = std::fs::remove_file(dir.join(super::finetune::tuned_model_name(model)));
        }
    }

    fn inputs(&self) -> Vec<PathBuf> {
        let mut all = vec![self.model.source.clone()];
        all.extend(self.input_files.iter().cloned());
        all
    }

    fn measure_probes(
        &self,
        job: &ProbeJob,
        cancel: &AtomicBool,
        report: &(dyn Fn(ProbeEvent) + Sync),
    ) {
        let Some(dense_accuracy) = super::sensitivity::measure_dense(self, job, cancel, report)
        else {
            return;
        };
        let fail_all = |error: String| {
            for c in &job.chains {
                for p in &c.points {
                    report(ProbeEvent::Failed {
                        key: p.key,
                        error: error.clone(),
                    });
                }
            }
        };
        let dense = match self.build(&Config::dense(self.info.layers.len())) {
            Ok(b) => b,
            Err(e) => return fail_all(e.to_string()),
        };
        let mut cuts: Vec<usize> = job.chains.iter().map(|c| self.cut_for(c.layer)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let prefixes = match self.prefix_activations(&cuts, cancel) {
            Ok(p) => p,
            Err(e) if e.is_cancelled() => return,
            Err(e) => return fail_all(e.to_string()),
        };
        let suffixes = match cuts
            .par_iter()
            .map(|&cut| match cancel.load(Ordering::Relaxed) {
                true => Err(EvalError::Cancelled),
                false => self.suffix(&dense, cut),
            })
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(s) => s,
            Err(e) if e.is_cancelled() => return,
            Err(e) => return fail_all(e.to_string()),
        };
        let classes = job.classes;
        // Layers in parallel; each chain in order, stopping where it collapses.
        job.chains.par_iter().for_each(|chain| {
            let cut = self.cut_for(chain.layer);
            let Some(at) = cuts.iter().position(|&c| c == cut) else {
                return;
            };
            let (acts, suffix) = (&prefixes[at].1, &suffixes[at]);
            let mut work = None;
            sensitivity::run_chain(chain, dense_accuracy, classes, cancel, report, &mut |p| {
                self.probe(&p.config, cut, acts, (&dense, suffix), &mut work, cancel)
            });
        });
    }

    fn layer_costs(
        &self,
        info: &ModelInfo,
        layer: usize,
        settings: &[LayerSetting],
        latency: bool,
    ) -> Result<Vec<LayerCost>, EvalError> {
        let Some((index, _)) = self.model.compressible().nth(layer) else {
            return Err(EvalError::Other(format!("no compressible layer {layer}")));
        };
        let Some(alone) = slice_model(&self.model, index..index + 1) else {
            return Err(EvalError::Other(format!("layer {layer} cannot run alone")));
        };
        let positions = alone.layers[0].positions();
        let sample = vec![1.0f32; alone.input_len()];
        settings
            .par_iter()
            .map(|s| {
                let mut config = Config::dense(info.layers.len());
                if let Some(l) = config.layers.get_mut(layer) {
                    *l = *s;
                }
                let recipe = config.to_recipe(info);
                let plan = compress::apply(&alone, &recipe, None)?;
                let cm = CompressedModel::build(&plan)?;
                let Some(p) = packed_at(&cm.steps, 0) else {
                    return Err(EvalError::Other(format!("layer {layer} was not packed")));
                };
                Ok(LayerCost {
                    size_bytes: p.size_bytes() as u64,
                    macs: (p.entries * positions) as u64,
                    format: p.format_name(),
                    latency_us: latency.then(|| {
                        engine::latency_with(&cm, &sample, 50, Duration::from_millis(20)).median_us
                    }),
                })
            })
            .collect()
    }
}

/// A hash of what the measurements depend on: the model's architecture and weights, and the
/// evaluation set's inputs and labels. Points journaled under another fingerprint do not apply.
pub fn fingerprint(model: &Model, set: &EvalSet) -> u64 {
    let mut h = Fnv::default();
    h.write(model.spec.to_json().as_bytes());
    if let Ok(tensors) = model.named_tensors() {
        for (name, shape, values) in tensors {
            h.write(name.as_bytes());
            h.write(
                &shape
                    .iter()
                    .flat_map(|d| (*d as u64).to_le_bytes())
                    .collect::<Vec<_>>(),
            );
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            h.write(&bytes);
        }
    }
    let labels: Vec<u8> = set.labels.iter().flat_map(|l| l.to_le_bytes()).collect();
    h.write(&labels);
    let inputs: Vec<u8> = set.inputs.iter().flat_map(|v| v.to_le_bytes()).collect();
    h.write(&inputs);
    h.finish()
}

/// A hash of prepared calibration inputs, mixed into the keys of configurations that
/// quantize activations.
pub fn calibration_tag(inputs: &[f32]) -> u64 {
    let bytes: Vec<u8> = inputs.iter().flat_map(|v| v.to_le_bytes()).collect();
    Fnv::default().write(b"calibration").write(&bytes).finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ArchSpec;

    /// A stem, then a residual block whose `add` reads the block's input (`act`), then a
    /// projection branch that reads the block's output, joined by a second `add`.
    const RESIDUAL: &str = r#"
[input]
shape = [2, 6, 6]
[[layer]]
op = "conv2d"
name = "stem"
weight = "stem.weight"
out_channels = 4
kernel = 3
padding = 1
[[layer]]
op = "relu"
name = "act"
[[layer]]
op = "conv2d"
name = "a"
weight = "a.weight"
out_channels = 4
kernel = 3
padding = 1
[[layer]]
op = "relu"
[[layer]]
op = "conv2d"
name = "b"
weight = "b.weight"
out_channels = 4
kernel = 3
padding = 1
[[layer]]
op = "add"
name = "res"
from = "act"
[[layer]]
op = "conv2d"
name = "c"
weight = "c.weight"
out_channels = 4
kernel = 1
[[layer]]
op = "conv2d"
name = "proj"
input = "res"
weight = "proj.weight"
out_channels = 4
kernel = 1
[[layer]]
op = "add"
name = "res2"
from = "c"
[[layer]]
op = "flatten"
[[layer]]
op = "linear"
name = "fc"
weight = "fc.weight"
out_features = 3
"#;

    /// Each compressible layer's cut is the latest point the model can be run from on the
    /// activations there alone, and running the prefix and then the rest from the cut gives
    /// the whole model's outputs.
    #[test]
    fn probes_start_at_the_block_around_their_layer_and_give_the_whole_models_outputs() {
        let spec = ArchSpec::from_toml(RESIDUAL).expect("arch");
        let model = crate::train::init_model(&spec, Path::new("residual.toml"), 3)
            .expect("model")
            .detached();
        let cut =
            |layer: usize| latest_cut(&model, model.compressible().nth(layer).expect("layer").0);
        // stem (0) runs from the start; a (2) and b (4) from the block's first layer, since
        // `res` reads `act`; c (6) from itself; proj (7), whose input is `res` (5), from c,
        // where `res` is the cut's input; fc from itself.
        let cuts: Vec<usize> = (0..model.compressible().count()).map(cut).collect();
        assert_eq!(cuts, vec![0, 2, 2, 6, 6, 10]);
        // No cut inside the block or at `proj` itself (it reads `res`, not `c`).
        assert!(!cut_allowed(&model, 3) && !cut_allowed(&model, 4) && !cut_allowed(&model, 7));
        let n = 3;
        let x: Vec<f32> = (0..n * model.input_len())
            .map(|i| ((i * 7919 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let run = |m: &Model, x: &[f32]| {
            let plan = compress::apply(m, &Recipe::default(), None).expect("plan");
            CompressedModel::build(&plan).expect("build").logits(x, n)
        };
        let whole = run(&model, &x);
        for c in [2, 6, 10] {
            let head = slice_model(&model, 0..c).expect("head");
            let tail = slice_model(&model, c..model.layers.len()).expect("tail");
            let got = run(&tail, &run(&head, &x));
            assert_eq!(got.len(), whole.len());
            for (g, w) in got.iter().zip(&whole) {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "cut {c}: {g} vs {w}"
                );
            }
        }
    }

    /// `RESIDUAL` with weights drawn from `seed`, its description, and `n` inputs with labels.
    fn residual_set(seed: u64, n: usize) -> (Model, ModelInfo, Vec<f32>, Vec<u32>) {
        let spec = ArchSpec::from_toml(RESIDUAL).expect("arch");
        let model = crate::train::init_model(&spec, Path::new("residual.toml"), seed)
            .expect("model")
            .detached();
        let inputs: Vec<f32> = (0..n * model.input_len())
            .map(|i| ((i * 7919 % 31) as f32 - 15.0) / 9.0)
            .collect();
        let labels: Vec<u32> = (0..n as u32).map(|i| (i * 7) % 3).collect();
        let info = ModelInfo::from_model(&model, "residual", n);
        (model, info, inputs, labels)
    }

    /// Probes inside and after a residual block, which start at the block's first layer and
    /// reuse the dense layers packed once, give every figure the whole model's evaluation
    /// gives, to the last bit.
    #[test]
    fn probes_from_a_cut_measure_what_the_whole_model_measures() {
        use crate::explore::jobs::EvalRequest;
        use crate::explore::sensitivity::{self, ProbeChain, ProbeKind, SensitivityGrid};
        let n = 40;
        let (model, info, inputs, labels) = residual_set(5, n);
        let layers = info.layers.len();
        let ev = ModelEvaluator::new(model, info.clone(), inputs, labels, n);
        let grid = SensitivityGrid {
            sparsities: vec![500, 900],
            bits: vec![3],
            ..SensitivityGrid::default()
        };
        let probes = sensitivity::probes(&info, &grid);
        let chains: Vec<ProbeChain> = sensitivity::chains(&probes)
            .into_iter()
            .enumerate()
            .map(|(c, chain)| ProbeChain {
                layer: chain[0].layer,
                points: chain
                    .iter()
                    .enumerate()
                    .map(|(i, p)| EvalRequest {
                        key: (c * 10 + i) as u64,
                        config: p.config(layers),
                        stages: vec![Stage::Full],
                    })
                    .collect(),
            })
            .collect();
        // A chain whose points compress different layers after the same cut (a, then b, then
        // a again): each probe puts back what the one before changed.
        let mut chains = chains;
        let mixed = [
            (1, ProbeKind::Prune(PruneMethod::L1, 700)),
            (2, ProbeKind::Bits(2)),
            (1, ProbeKind::Bits(4)),
        ];
        chains.push(ProbeChain {
            layer: 1,
            points: mixed
                .into_iter()
                .enumerate()
                .map(|(i, (layer, kind))| EvalRequest {
                    key: 1000 + i as u64,
                    config: sensitivity::Probe { layer, kind }.config(layers),
                    stages: vec![Stage::Full],
                })
                .collect(),
        });
        let job = ProbeJob {
            chains: chains.clone(),
            dense: None,
            dense_accuracy: None,
            classes: 3,
        };
        let got = Mutex::new(Vec::new());
        let never = AtomicBool::new(false);
        ev.measure_probes(&job, &never, &|e| {
            if let Ok(mut g) = got.lock() {
                g.push(e);
            }
        });
        let got = got.into_inner().expect("events");
        assert_eq!(got.len(), probes.len() + mixed.len());
        for p in chains.iter().flat_map(|c| &c.points) {
            let fast = got
                .iter()
                .find_map(|e| match e {
                    ProbeEvent::Measured { key, figures } if *key == p.key => Some(figures),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("probe {} not measured: {got:?}", p.key));
            let whole = ev.evaluate(&p.config, Stage::Full, &never).expect("whole");
            assert_eq!(fast, &whole, "{:?}", p.config);
        }
    }

    /// Where the quick subset is the whole set, the quick answer is the full one; where it is
    /// not, the full answer after a quick one is still measured on the whole set.
    #[test]
    fn a_quick_subset_as_large_as_the_set_answers_for_the_whole_set() {
        let n = 30;
        let (model, info, inputs, labels) = residual_set(7, n);
        let mut config = Config::dense(info.layers.len());
        config.layers[2].bits = crate::compress::Bits::Int(2);
        let never = AtomicBool::new(false);
        let eval = |quick: usize, stage: Stage| {
            let ev = ModelEvaluator::new(
                model.clone(),
                info.clone(),
                inputs.clone(),
                labels.clone(),
                quick,
            );
            let first = ev.evaluate(&config, Stage::Quick, &never).expect("quick");
            let then = ev.evaluate(&config, stage, &never).expect("stage");
            (first.accuracy.expect("a"), then.accuracy.expect("a"))
        };
        let (quick, full) = eval(n, Stage::Full);
        assert_eq!(quick, full);
        assert_eq!((quick.samples, quick.half_width), (n, 0.0));
        let (part, full_after_part) = eval(n / 3, Stage::Full);
        assert_eq!(part.samples, n / 3);
        assert_eq!(full_after_part, full);
    }
}
