//! The real evaluator: a configuration becomes a recipe, `compress::apply` turns it into a
//! plan, `engine::CompressedModel` packs and runs it, and `measure` scores the outputs — the
//! same path `squeeze eval` takes, so the TUI's numbers are the CLI's.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;

use crate::compress::{self, Plan};
use crate::data::EvalSet;
use crate::engine::{self, CompressedModel};
use crate::measure::{self, Measurement, OutputKind};
use crate::model::Model;

use super::config::Config;
use super::eval::{CANCELLED, Estimate, Evaluator, Figures, Fnv, LayerFigures, Stage};
use super::info::{HIST_BINS, ModelInfo, histogram};

/// Samples in the quick estimate's fixed random subset.
pub const QUICK_SAMPLES: usize = 1000;
/// Samples scored between two looks at the cancel flag.
const BATCH: usize = 1000;
/// Built models kept for the next stages of the same configuration.
const BUILT_CACHE: usize = 6;

struct Built {
    canonical: String,
    plan: Plan,
    model: CompressedModel,
    /// Size figures and per-layer histograms, shared by every stage's answer.
    base: Figures,
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
    built: Mutex<Vec<Arc<Built>>>,
    /// Latency is a single-thread timing: one at a time, and while it runs our accuracy
    /// evaluations pause between batches (`quiet`), so they do not inflate it.
    latency_lock: Mutex<()>,
    quiet: AtomicBool,
    /// Accuracy batches running now.
    active: AtomicUsize,
    /// Files the session reads besides the model, protected from its exports.
    input_files: Vec<PathBuf>,
}

impl ModelEvaluator {
    /// `inputs` are the set's prepared (scaled) inputs. The quick subset is a fixed random
    /// choice of `quick` samples (the same every run, so cached estimates stay comparable).
    pub fn new(
        model: Model,
        info: ModelInfo,
        inputs: Vec<f32>,
        labels: Vec<u32>,
        quick: usize,
    ) -> Self {
        let il = model.input_len();
        let n = labels.len();
        let k = quick.min(n);
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
            built: Mutex::new(Vec::new()),
            latency_lock: Mutex::new(()),
            quiet: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            input_files: Vec::new(),
        }
    }

    /// Names the files the session reads (data, recipe, journal, ...) so that no export
    /// replaces one of them; the model's own file is always protected.
    pub fn with_inputs(mut self, inputs: Vec<PathBuf>) -> Self {
        self.input_files = inputs;
        self
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn build(&self, config: &Config) -> Result<Arc<Built>, String> {
        let canonical = config.canonical();
        if let Ok(cache) = self.built.lock()
            && let Some(b) = cache.iter().find(|b| b.canonical == canonical)
        {
            return Ok(Arc::clone(b));
        }
        let recipe = config.to_recipe(&self.info);
        let plan = compress::apply(
            &self.model,
            &recipe,
            Some((&self.inputs, self.labels.len())),
        )
        .map_err(|e| e.to_string())?;
        let model = CompressedModel::build(&plan).map_err(|e| e.to_string())?;
        let base = self.base_figures(&plan, &model);
        let built = Arc::new(Built {
            canonical,
            plan,
            model,
            base,
        });
        if let Ok(mut cache) = self.built.lock() {
            cache.insert(0, Arc::clone(&built));
            cache.truncate(BUILT_CACHE);
        }
        Ok(built)
    }

    fn base_figures(&self, plan: &Plan, model: &CompressedModel) -> Figures {
        let sparsity = plan.sparsity_against(&self.model);
        let packed: Vec<_> = model.packed_layers().collect();
        let layers = self
            .info
            .layers
            .iter()
            .map(|info| {
                let q = plan.layers.iter().find(|q| {
                    plan.model
                        .layers
                        .get(q.layer)
                        .is_some_and(|l| l.name == info.name)
                });
                let Some(q) = q else {
                    return LayerFigures::default();
                };
                let packed = packed.iter().find(|(i, _)| *i == q.layer).map(|(_, p)| *p);
                let values = q.dequantized();
                let kept = values
                    .iter()
                    .zip(&q.kept)
                    .filter(|(_, k)| **k)
                    .map(|(v, _)| *v);
                LayerFigures {
                    size_bytes: packed.map_or(0, |p| p.size_bytes() as u64),
                    sparsity: sparsity
                        .layers
                        .iter()
                        .find(|l| l.name == info.name)
                        .map_or(0.0, |l| l.fraction()),
                    format: packed.map(|p| p.format_name()).unwrap_or_default(),
                    hist_after: histogram(kept, info.hist_range, HIST_BINS),
                }
            })
            .collect();
        Figures {
            size_bytes: Some(model.size_bytes() as u64),
            dense_bytes: Some(self.info.dense_bytes() as u64),
            // Computed when the layers were packed.
            entropy_bytes: Some(
                model
                    .packed_layers()
                    .map(|(_, p)| p.entropy_bytes.unwrap_or(p.size_bytes()))
                    .sum::<usize>() as u64,
            ),
            sparsity: Some(sparsity.fraction()),
            layers,
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
    ) -> Result<measure::Accuracy, String> {
        let il = self.model.input_len();
        let classes = model.num_classes();
        let mut outputs = Vec::with_capacity(labels.len() * classes);
        for start in (0..labels.len()).step_by(BATCH) {
            if cancel.load(Ordering::Relaxed) {
                return Err(CANCELLED.into());
            }
            // Pause while a latency measurement runs (bounded: it takes well under a second).
            while self.quiet.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let n = BATCH.min(labels.len() - start);
            self.active.fetch_add(1, Ordering::AcqRel);
            outputs.extend(model.logits(&inputs[start * il..(start + n) * il], n));
            self.active.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(measure::score(&outputs, classes, labels, self.kind, None))
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
    pub fn measurement(&self, config: &Config) -> Result<Measurement, String> {
        let built = self.build(config)?;
        let timing = measure::Timing {
            latency: false,
            throughput: false,
        };
        let mut m = measure::measure(
            &built.model,
            Some(&built.plan),
            Some(&self.model),
            &self.inputs,
            &self.labels,
            None,
            timing,
        );
        let lat = self.latency(&built.model);
        m.latency_us = lat.median_us;
        m.latency_p90_us = lat.p90_us;
        m.throughput = engine::throughput(&built.model, &self.inputs, self.labels.len());
        Ok(m)
    }
}

impl Evaluator for ModelEvaluator {
    fn evaluate(
        &self,
        config: &Config,
        stage: Stage,
        cancel: &AtomicBool,
    ) -> Result<Figures, String> {
        if cancel.load(Ordering::Relaxed) {
            return Err(CANCELLED.into());
        }
        let built = self.build(config)?;
        let mut figures = built.base.clone();
        match stage {
            Stage::Quick => {
                let a =
                    self.accuracy(&built.model, &self.quick_inputs, &self.quick_labels, cancel)?;
                figures.accuracy = Some(Estimate::from_subset(
                    a.accuracy,
                    self.quick_labels.len(),
                    self.labels.len(),
                ));
            }
            Stage::Full => {
                let a = self.accuracy(&built.model, &self.inputs, &self.labels, cancel)?;
                figures.accuracy = Some(Estimate::from_subset(
                    a.accuracy,
                    self.labels.len(),
                    self.labels.len(),
                ));
            }
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

    fn export(&self, config: &Config, dir: &Path) -> Result<Vec<PathBuf>, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let recipe = config.to_recipe(&self.info).to_toml();
        let recipe_path = dir.join("recipe.toml");
        let model_path = dir.join("model.safetensors");
        let json_path = dir.join("measurement.json");
        crate::files::OutputCheck::new()
            .inputs("input", self.inputs().iter().map(PathBuf::as_path))
            .output("the exported recipe", &recipe_path)
            .output("the exported model", &model_path)
            .output("the exported measurement", &json_path)
            .check()
            .map_err(|e| e.to_string())?;
        let built = self.build(config)?;
        let measurement = self.measurement(config)?;
        let json = serde_json::to_string_pretty(&measurement).map_err(|e| e.to_string())?;
        let model = built
            .model
            .to_bytes(Some(&recipe))
            .map_err(|e| e.to_string())?;
        crate::files::write_all_atomic(&[
            (&recipe_path, recipe.as_bytes()),
            (&model_path, &model),
            (&json_path, json.as_bytes()),
        ])
        .map_err(|e| e.to_string())?;
        Ok(vec![recipe_path, model_path, json_path])
    }

    fn inputs(&self) -> Vec<PathBuf> {
        let mut all = vec![self.model.source.clone()];
        all.extend(self.input_files.iter().cloned());
        all
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
