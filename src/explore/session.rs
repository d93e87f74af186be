//! The exploration session: every configuration measured on one model and evaluation set (the
//! cache, keyed by model and data, recipe and provenance, one entry per measurement stage), the
//! configuration being edited with its undo and redo, the pinned configurations, the budgets
//! and the device target, the sweeps under way and the per-layer sensitivity derived from the
//! cache. The explorer views it and headless commands drive it; both send the same requests to
//! the same workers and take their answers back through `handle`, so a figure is the same
//! whoever asked for it.
//!
//! Changes come in through methods that return the work they need (`Request`s) — the caller
//! carries it out (`jobs::Executor`) or, in tests, inspects it — and through `handle`, which
//! takes a worker's message. What a person should be told is queued as `Notice`s.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::config::{Config, Permille};
use super::eval::{Estimate, Figures, Fnv, LayerFigures, Stage, recipe_key};
use super::finetune::{TuneJob, TuneSpec, TuneState};
use super::info::ModelInfo;
use super::jobs::{EvalRequest, Origin, WorkerMsg};
use super::journal::{Record, key_hex};
use super::plot::{PlotInput, PlotPoint, PointOrigin};
use super::presets::{Preset, presets};
use super::search::{SearchJob, SearchOutcome};
use super::sensitivity::{self, Probe, ProbeJob, SensitivityGrid, SensitivityTable};
use super::sweep::{self, SweepPoint};
use super::targets::{Fit, Target};

/// Stages a sweep point is evaluated at.
pub const SWEEP_STAGES: [Stage; 2] = [Stage::Full, Stage::Latency];

/// How a measured model came about. The untuned and the fine-tuned model of one recipe are two
/// points, joined on the charts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Provenance {
    /// Compressed from the trained model as it is.
    #[default]
    Compressed,
    /// Trained again after compression, starting from its untuned twin (`from`, a key).
    FineTuned { from: String, settings: String },
}

impl Provenance {
    pub fn is_compressed(&self) -> bool {
        *self == Provenance::Compressed
    }

    /// How the model learnt, in a few words (`distilled T=4 α=0.9`); `None` when
    /// it was compressed as it is. Read from the settings recorded in the provenance.
    pub fn describe(&self) -> Option<String> {
        let Provenance::FineTuned { settings, .. } = self else {
            return None;
        };
        let spec: serde_json::Value = serde_json::from_str(settings).unwrap_or_default();
        let d = &spec["settings"]["distill"];
        let distill = match (d["temperature"].as_f64(), d["alpha"].as_f64()) {
            (Some(temperature), Some(alpha)) => {
                Some(crate::train::Distillation { temperature, alpha })
            }
            _ => None,
        };
        Some(super::finetune::tune_label(distill.as_ref()))
    }
}

/// A pinned point: its configuration and how its model came about, so that a pinned
/// fine-tuned point stays itself rather than its untuned twin.
#[derive(Debug, Clone, PartialEq)]
pub struct Pin {
    pub config: Config,
    pub provenance: Provenance,
}

/// Names of the pin slots.
pub const PIN_NAMES: [char; 4] = ['A', 'B', 'C', 'D'];

/// One configuration and everything measured about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub key: u64,
    pub config: Config,
    pub provenance: Provenance,
    /// How it came about (`fc1 alone: l1 90%`, a preset's name), when not by hand.
    pub label: Option<String>,
    pub quick: Option<Figures>,
    pub full: Option<Figures>,
    pub latency: Option<Figures>,
    pub error: Option<String>,
    /// Part of this exploration (drawn on the charts), rather than only known to the cache.
    pub shown: bool,
    /// A fine-tuned point's model: the SHA-256 of its packed bytes, which the evaluator keeps
    /// for export (`None`: not kept, so `f` tunes it again).
    pub model: Option<String>,
}

impl Point {
    fn new(key: u64, config: Config) -> Point {
        Point {
            key,
            config,
            provenance: Provenance::Compressed,
            label: None,
            quick: None,
            full: None,
            latency: None,
            error: None,
            shown: false,
            model: None,
        }
    }

    pub fn stage(&self, stage: Stage) -> Option<&Figures> {
        match stage {
            Stage::Quick => self.quick.as_ref(),
            Stage::Full => self.full.as_ref(),
            Stage::Latency => self.latency.as_ref(),
        }
    }

    pub(crate) fn set(&mut self, stage: Stage, figures: Figures) {
        let slot = match stage {
            Stage::Quick => &mut self.quick,
            Stage::Full => &mut self.full,
            Stage::Latency => &mut self.latency,
        };
        *slot = Some(figures);
    }

    /// Whether a stage's answer is known (the full set answers the quick question too).
    pub fn has(&self, stage: Stage) -> bool {
        match stage {
            Stage::Quick => self.quick.is_some() || self.full.is_some(),
            other => self.stage(other).is_some(),
        }
    }

    /// The best accuracy known: the full set's, else the quick estimate.
    pub fn accuracy(&self) -> Option<Estimate> {
        self.full
            .as_ref()
            .and_then(|f| f.accuracy)
            .or_else(|| self.quick.as_ref().and_then(|f| f.accuracy))
    }

    fn first<T>(&self, f: impl Fn(&Figures) -> Option<T>) -> Option<T> {
        [&self.full, &self.quick, &self.latency]
            .into_iter()
            .flatten()
            .find_map(f)
    }

    pub fn size_bytes(&self) -> Option<u64> {
        self.first(|f| f.size_bytes)
    }

    pub fn dense_bytes(&self) -> Option<u64> {
        self.first(|f| f.dense_bytes)
    }

    pub fn sparsity(&self) -> Option<f64> {
        self.first(|f| f.sparsity)
    }

    /// The fraction of the original weights exactly zero after quantization.
    pub fn zeros(&self) -> Option<f64> {
        self.first(|f| f.zeros)
    }

    pub fn latency_us(&self) -> Option<f64> {
        self.latency.as_ref().and_then(|f| f.latency_us)
    }

    /// Peak activation memory of one sample and the layer that sets it.
    pub fn arena(&self) -> Option<(u64, &str)> {
        [&self.full, &self.quick]
            .into_iter()
            .flatten()
            .find_map(|f| Some((f.arena_bytes?, f.arena_layer.as_deref()?)))
    }

    pub fn layers(&self) -> &[LayerFigures] {
        [&self.full, &self.quick]
            .into_iter()
            .flatten()
            .map(|f| f.layers.as_slice())
            .find(|l| !l.is_empty())
            .unwrap_or(&[])
    }

    /// Whether this point fits `target` (unknown until its size and per-layer figures are).
    pub fn fit(&self, target: &Target) -> Option<Fit> {
        let layers = self.layers();
        if layers.is_empty() {
            return None;
        }
        Some(target.fit(
            self.size_bytes()?,
            self.arena()?.0,
            layers,
            self.config.activation_bits,
        ))
    }
}

/// A running or queued sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepState {
    pub id: u64,
    pub label: String,
    pub done: usize,
    pub total: usize,
}

/// The per-layer sensitivity measured so far: accuracy when only that layer is compressed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LayerSensitivity {
    /// (sparsity ‰, accuracy), ascending sparsity.
    pub prune: Vec<(Permille, f64)>,
    /// (bits, accuracy), descending bits.
    pub bits: Vec<(u8, f64)>,
}

/// What a person should be told about a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Info(String),
    Error(String),
}

/// Work the session wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Evaluate the current configuration (latest wins).
    Evaluate {
        generation: u64,
        request: EvalRequest,
    },
    /// Stop the interactive evaluation: the current configuration is cached.
    CancelInteractive,
    /// Evaluate these configurations, queued after the sweeps before it.
    Sweep {
        id: u64,
        points: Vec<EvalRequest>,
    },
    /// Measure layers alone (sensitivity), queued like a sweep.
    Probes {
        id: u64,
        job: ProbeJob,
    },
    /// Search for the best configuration under a budget, queued like a sweep.
    Search {
        id: u64,
        job: Box<SearchJob>,
    },
    CancelSweeps,
    Export {
        config: Config,
        dir: PathBuf,
    },
    Plot {
        input: Box<PlotInput>,
        dir: PathBuf,
    },
    /// Fine-tune a configuration in the background (one at a time).
    Finetune(Box<TuneJob>),
    CancelFinetune,
    /// Export the fine-tuned model of a point: the one tuned in this run, else the saved
    /// file with SHA-256 `model`.
    ExportTuned {
        key: u64,
        config: Config,
        model: Option<String>,
        dir: PathBuf,
    },
    /// Delete the saved tuned model with this SHA-256: its fine-tune was cancelled.
    DiscardTuned(String),
    Journal(Record),
    Quit,
}

/// What a session is measured against, from the command line.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Hash of the model and the evaluation set: part of every cache key.
    pub fingerprint: u64,
    /// Hash of the inputs activations are calibrated on: part of the key of every
    /// configuration that quantizes activations (0: the evaluation set's own samples).
    pub calibration: u64,
    pub budget_bytes: Option<f64>,
    pub budget_latency_us: Option<f64>,
    pub target: Option<Target>,
    /// The model and evaluation set (paths and hashes), for what the session writes.
    pub inputs: Option<super::results::Inputs>,
}

/// The exploration state of one model on one evaluation set.
pub struct Session {
    pub info: ModelInfo,
    pub options: SessionOptions,
    pub presets: Vec<Preset>,
    pub config: Config,
    pub current_key: u64,
    pub dense_key: u64,
    pub preset: Option<usize>,
    /// Pinned points, A to D.
    pub pins: [Option<Pin>; 4],
    pub budget_bytes: Option<f64>,
    pub budget_latency_us: Option<f64>,
    pub target: Option<Target>,
    /// Every configuration known: measured now, or found in the journal.
    pub points: HashMap<u64, Point>,
    /// Keys in the order they were first seen, for stable drawing.
    pub order: Vec<u64>,
    /// Per-layer sensitivity (L1 pruning, symmetric per-channel bits), from every probe the
    /// cache holds.
    pub sensitivity: Vec<LayerSensitivity>,
    /// The edit generation: bumped on every change of the configuration.
    pub generation: u64,
    /// Stages of the current configuration still being evaluated.
    pub pending: Vec<Stage>,
    pub sweeps: Vec<SweepState>,
    /// The last search's answer, when one finished.
    pub search: Option<SearchOutcome>,
    /// The fine-tune under way (`f`).
    pub tune: Option<TuneState>,
    /// How `f` fine-tunes.
    pub tune_spec: TuneSpec,
    next_sweep: u64,
    undo: Vec<Config>,
    redo: Vec<Config>,
    notices: Vec<Notice>,
}

impl Session {
    pub fn new(info: ModelInfo, options: SessionOptions) -> Session {
        let dense = Config::dense(info.layers.len());
        let dense_key = recipe_key(options.fingerprint, &dense.to_recipe(&info));
        let mut session = Session {
            presets: presets(&info),
            sensitivity: vec![LayerSensitivity::default(); info.layers.len()],
            config: dense.clone(),
            current_key: dense_key,
            dense_key,
            preset: Some(0),
            pins: Default::default(),
            budget_bytes: options.budget_bytes,
            budget_latency_us: options.budget_latency_us,
            target: options.target.clone(),
            info,
            options,
            points: HashMap::new(),
            order: Vec::new(),
            generation: 0,
            pending: Vec::new(),
            sweeps: Vec::new(),
            search: None,
            tune: None,
            tune_spec: TuneSpec::default(),
            next_sweep: 1,
            undo: Vec::new(),
            redo: Vec::new(),
            notices: Vec::new(),
        };
        session.ensure_point(dense_key, &dense, Some("dense"), true);
        session
    }

    /// The cache key of a compressed configuration: its recipe's hash with the model and data,
    /// and the calibration inputs when it quantizes activations.
    pub fn key_of(&self, config: &Config) -> u64 {
        key_of(&self.info, &self.options, config)
    }

    /// The cache key of a point of any provenance.
    pub fn key_with(&self, config: &Config, provenance: &Provenance) -> u64 {
        let key = self.key_of(config);
        match provenance {
            Provenance::Compressed => key,
            Provenance::FineTuned { settings, .. } => Fnv::default()
                .write(&key.to_le_bytes())
                .write(b"fine-tuned")
                .write(settings.as_bytes())
                .finish(),
        }
    }

    /// A copy of what keys depend on, for jobs that compute keys on a worker.
    pub fn keyer(&self) -> Keyer {
        Keyer {
            info: self.info.clone(),
            options: self.options.clone(),
        }
    }

    // ----- the journal -----

    /// Takes in every measurement a journal holds, as a cache: the points are known but not
    /// part of this exploration until asked for. Records for another number of layers, or
    /// measured with other calibration inputs, are left out.
    pub fn load_cache(&mut self, records: &[Record]) {
        for record in records {
            self.take_record(record, false);
        }
        self.rebuild_sensitivity();
    }

    /// Takes a journaled session back: its points (all shown), the pinned configurations and
    /// the configuration being edited.
    pub fn restore(&mut self, records: Vec<Record>) {
        let n = self.info.layers.len();
        for record in &records {
            self.take_record(record, true);
        }
        for record in records {
            match record {
                Record::Current { config, provenance } if config.layers.len() == n => {
                    // A fine-tuned point is current again when the journal still holds it;
                    // otherwise its untuned twin is.
                    let tuned = self.key_with(&config, &provenance);
                    self.current_key = if self.points.contains_key(&tuned) {
                        tuned
                    } else {
                        self.key_of(&config)
                    };
                    self.config = config;
                    self.preset = None;
                }
                Record::Pin {
                    config,
                    slot,
                    provenance,
                } => {
                    if let Some(i) = PIN_NAMES.iter().position(|c| *c == slot) {
                        self.pins[i] = config
                            .filter(|c| c.layers.len() == n)
                            .map(|config| Pin { config, provenance });
                    }
                }
                _ => {}
            }
        }
        let config = self.config.clone();
        self.ensure_point(self.current_key, &config, None, true);
        self.rebuild_sensitivity();
    }

    fn take_record(&mut self, record: &Record, shown: bool) {
        let n = self.info.layers.len();
        match record {
            Record::Point {
                stage,
                config,
                label,
                figures,
                provenance,
                calibration,
                model,
                ..
            } if config.layers.len() == n => {
                if config.activation_bits.is_some()
                    && calibration.as_deref().and_then(super::journal::parse_key)
                        != Some(self.options.calibration)
                    && !(calibration.is_none() && self.options.calibration == 0)
                {
                    // Measured with other calibration inputs: not this configuration's figure.
                    return;
                }
                // Keys are recomputed from the configuration, not trusted from the file.
                let key = self.key_with(config, provenance);
                self.ensure_point(key, config, label.as_deref(), shown);
                if let Some(p) = self.points.get_mut(&key) {
                    p.provenance = provenance.clone();
                    p.set(*stage, (**figures).clone());
                    p.error = None;
                    if model.is_some() {
                        p.model = model.clone();
                    }
                }
            }
            Record::Failed { config, error, .. } if config.layers.len() == n => {
                let k = self.key_of(config);
                self.ensure_point(k, config, None, shown);
                if let Some(p) = self.points.get_mut(&k) {
                    p.error = Some(error.clone());
                }
            }
            _ => {}
        }
    }

    /// The journal line of one stage of a point.
    pub(super) fn point_record(&self, key: u64, stage: Stage, figures: Figures) -> Option<Record> {
        let p = self.points.get(&key)?;
        Some(Record::Point {
            key: key_hex(key),
            stage,
            config: p.config.clone(),
            label: p.label.clone(),
            figures: Box::new(figures),
            provenance: p.provenance.clone(),
            calibration: p
                .config
                .activation_bits
                .map(|_| key_hex(self.options.calibration)),
            model: p.model.clone(),
        })
    }

    /// Sets the starting configuration (from a recipe) before `start`.
    pub fn set_initial(&mut self, config: Config) {
        if config.layers.len() == self.info.layers.len() {
            self.current_key = self.key_of(&config);
            self.config = config;
            self.preset = None;
            let c = self.config.clone();
            self.ensure_point(self.current_key, &c, None, true);
        }
    }

    /// The first requests: the dense baseline and the current configuration.
    pub fn start(&mut self) -> Vec<Request> {
        let mut out = vec![self.current_record()];
        if self.current_key != self.dense_key {
            let dense = Config::dense(self.info.layers.len());
            let missing = self.missing(self.dense_key, &SWEEP_STAGES);
            if !missing.is_empty() {
                out.push(self.queue_sweep(
                    "dense baseline".into(),
                    vec![EvalRequest {
                        key: self.dense_key,
                        config: dense,
                        stages: missing,
                    }],
                ));
            }
        }
        out.extend(self.evaluate_current());
        out
    }

    // ----- queries -----

    /// The journal line of the configuration being edited, with the current point's
    /// provenance.
    pub(super) fn current_record(&self) -> Request {
        Request::Journal(Record::Current {
            config: self.config.clone(),
            provenance: self
                .current()
                .map(|p| p.provenance.clone())
                .unwrap_or_default(),
        })
    }

    pub fn current(&self) -> Option<&Point> {
        self.points.get(&self.current_key)
    }

    pub fn dense(&self) -> Option<&Point> {
        self.points.get(&self.dense_key)
    }

    pub fn point(&self, key: u64) -> Option<&Point> {
        self.points.get(&key)
    }

    /// The key of a pinned point.
    pub fn pin_key(&self, pin: &Pin) -> u64 {
        self.key_with(&pin.config, &pin.provenance)
    }

    /// The point of a pinned configuration (0 = A).
    pub fn pinned_point(&self, slot: usize) -> Option<&Point> {
        let pin = self.pins.get(slot)?.as_ref()?;
        self.points.get(&self.pin_key(pin))
    }

    /// The slot a point is pinned in, if it is.
    pub fn pin_slot(&self, key: u64) -> Option<usize> {
        self.pins
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| self.pin_key(p) == key))
    }

    pub fn any_pinned(&self) -> bool {
        self.pins.iter().any(Option::is_some)
    }

    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    pub fn preset_name(&self) -> Option<&str> {
        self.preset
            .and_then(|i| self.presets.get(i))
            .map(|p| p.name)
    }

    /// Points of this exploration with an accuracy, in the order they appeared.
    pub fn measured(&self) -> impl Iterator<Item = &Point> {
        self.order
            .iter()
            .filter_map(|k| self.points.get(k))
            .filter(|p| p.shown && p.accuracy().is_some())
    }

    /// Whether nothing is being measured or queued.
    pub fn idle(&self) -> bool {
        self.pending.is_empty() && self.sweeps.is_empty() && self.tune.is_none()
    }

    /// The size the charts draw as a budget: the size budget, or what the target's flash
    /// leaves for the model, whichever is smaller.
    pub fn size_limit(&self) -> Option<f64> {
        let flash = self.target.as_ref().and_then(Target::model_bytes_room);
        match (self.budget_bytes, flash) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Notices queued since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    pub(super) fn info(&mut self, text: impl Into<String>) {
        self.notices.push(Notice::Info(text.into()));
    }

    pub(super) fn error(&mut self, text: impl Into<String>) {
        self.notices.push(Notice::Error(text.into()));
    }

    // ----- edits -----

    /// Applies an edit to the configuration as one undoable step; nothing when it changes
    /// nothing.
    pub fn edit(&mut self, f: impl FnOnce(&mut Config)) -> Vec<Request> {
        let before = self.config.clone();
        f(&mut self.config);
        if self.config == before {
            return Vec::new();
        }
        self.undo.push(before);
        self.redo.clear();
        self.preset = None;
        self.config_changed()
    }

    /// Goes back one edit; `None` when there is nothing to undo.
    pub fn undo(&mut self) -> Option<Vec<Request>> {
        let prev = self.undo.pop()?;
        let now = std::mem::replace(&mut self.config, prev);
        self.redo.push(now);
        self.preset = None;
        Some(self.config_changed())
    }

    /// Goes forward one undone edit; `None` when there is nothing to redo.
    pub fn redo(&mut self) -> Option<Vec<Request>> {
        let next = self.redo.pop()?;
        let now = std::mem::replace(&mut self.config, next);
        self.undo.push(now);
        self.preset = None;
        Some(self.config_changed())
    }

    /// Back to the dense model (undoable).
    pub fn reset(&mut self) -> Vec<Request> {
        let dense = Config::dense(self.info.layers.len());
        let out = self.edit(|c| *c = dense);
        self.preset = Some(0);
        out
    }

    /// Loads preset `i` (undoable).
    pub fn load_preset(&mut self, i: usize) -> Vec<Request> {
        let Some(p) = self.presets.get(i) else {
            return Vec::new();
        };
        let (config, name) = (p.config.clone(), p.name);
        let out = self.edit(|c| *c = config);
        self.preset = Some(i);
        self.info(format!("preset: {name}"));
        if let Some(point) = self.points.get_mut(&self.current_key)
            && point.label.is_none()
        {
            point.label = Some(format!("preset: {name}"));
        }
        out
    }

    /// Loads a point for editing (undoable): its configuration, and the point itself as the
    /// current one when it is fine-tuned (editing goes on from its configuration).
    pub fn load_point(&mut self, key: u64) -> Vec<Request> {
        let Some(p) = self.points.get(&key) else {
            return Vec::new();
        };
        let (config, tuned) = (p.config.clone(), !p.provenance.is_compressed());
        let mut out = self.load(config);
        // Also when the configuration stays: from a fine-tuned point to its twin and back.
        self.current_key = key;
        if tuned {
            // Whatever the twin still waits for is not what the status shows now.
            self.pending.clear();
        }
        out.push(self.current_record());
        out
    }

    /// Loads any configuration for editing (undoable).
    pub fn load(&mut self, config: Config) -> Vec<Request> {
        if config.layers.len() != self.info.layers.len() {
            return Vec::new();
        }
        self.edit(|c| *c = config)
    }

    /// Pins the current point in `slot` (0 = A): a fine-tuned one as itself.
    pub fn pin(&mut self, slot: usize) -> Vec<Request> {
        let Some(name) = PIN_NAMES.get(slot) else {
            return Vec::new();
        };
        let provenance = self
            .current()
            .map(|p| p.provenance.clone())
            .unwrap_or_default();
        self.info(match provenance.describe() {
            Some(how) => format!("pinned as {name} ({how})"),
            None => format!("pinned as {name}"),
        });
        self.pins[slot] = Some(Pin {
            config: self.config.clone(),
            provenance: provenance.clone(),
        });
        vec![Request::Journal(Record::Pin {
            config: Some(self.config.clone()),
            slot: *name,
            provenance,
        })]
    }

    pub fn unpin(&mut self, slot: usize) -> Vec<Request> {
        let Some(name) = PIN_NAMES.get(slot) else {
            return Vec::new();
        };
        self.pins[slot] = None;
        vec![Request::Journal(Record::Pin {
            config: None,
            slot: *name,
            provenance: Provenance::Compressed,
        })]
    }

    /// After any change of `config`: a new generation, a journal line, and an evaluation of
    /// the stages not cached yet (none when returning to a known configuration).
    fn config_changed(&mut self) -> Vec<Request> {
        self.generation += 1;
        self.current_key = self.key_of(&self.config);
        let config = self.config.clone();
        self.ensure_point(self.current_key, &config, None, true);
        let mut out = vec![Request::Journal(Record::Current {
            config,
            provenance: Provenance::Compressed,
        })];
        out.extend(self.evaluate_current());
        out
    }

    fn evaluate_current(&mut self) -> Vec<Request> {
        let missing = self.missing(self.current_key, &Stage::ALL);
        self.pending = missing.clone();
        if missing.is_empty() {
            // Cached: whatever older edit is still running is no longer wanted.
            return vec![Request::CancelInteractive];
        }
        if let Some(p) = self.points.get_mut(&self.current_key) {
            p.error = None;
        }
        vec![Request::Evaluate {
            generation: self.generation,
            request: EvalRequest {
                key: self.current_key,
                config: self.config.clone(),
                stages: missing,
            },
        }]
    }

    /// The stages of `key` not in the cache.
    pub fn missing(&self, key: u64, stages: &[Stage]) -> Vec<Stage> {
        let point = self.points.get(&key);
        stages
            .iter()
            .copied()
            .filter(|&s| !point.is_some_and(|p| p.has(s)))
            .collect()
    }

    pub(super) fn ensure_point(
        &mut self,
        key: u64,
        config: &Config,
        label: Option<&str>,
        shown: bool,
    ) {
        let point = self.points.entry(key).or_insert_with(|| {
            self.order.push(key);
            Point::new(key, config.clone())
        });
        if point.label.is_none() {
            point.label = label.map(str::to_string);
        }
        point.shown |= shown;
    }

    // ----- sweeps -----

    /// Each layer alone across the grid: probes measured on the whole evaluation set, layers
    /// in parallel, each curve stopping once it has collapsed. Cached probes are not measured
    /// again; the dense baseline is measured first when it is missing.
    pub fn sensitivity_sweep(&mut self, grid: &SensitivityGrid) -> Vec<Request> {
        let probes = sensitivity::probes(&self.info, grid);
        let total = probes.len();
        let dense_accuracy = self
            .dense()
            .and_then(|p| p.full.as_ref())
            .and_then(|f| f.accuracy)
            .map(|a| a.value);
        let mut chains: Vec<sensitivity::ProbeChain> = Vec::new();
        let mut cached = 0;
        for chain in sensitivity::chains(&probes) {
            let mut points = Vec::new();
            let mut collapsed = false;
            for probe in &chain {
                let config = probe.config(self.info.layers.len());
                let key = self.key_of(&config);
                self.ensure_point(key, &config, Some(&probe.label(&self.info)), true);
                let known = self
                    .points
                    .get(&key)
                    .and_then(|p| p.full.as_ref())
                    .and_then(|f| f.accuracy);
                match known {
                    Some(a) => {
                        cached += 1;
                        collapsed |= dense_accuracy.is_some_and(|d| {
                            sensitivity::collapsed(a.value, d, self.info.classes())
                        });
                    }
                    // A cached collapse ends the chain: the points after it stay unmeasured.
                    None if !collapsed => points.push(EvalRequest {
                        key,
                        config,
                        stages: vec![Stage::Full],
                    }),
                    None => {}
                }
            }
            if !points.is_empty() {
                chains.push(sensitivity::ProbeChain {
                    layer: chain.first().map_or(0, |p| p.layer),
                    points,
                });
            }
        }
        self.rebuild_sensitivity();
        let label = "sensitivity sweep";
        if chains.is_empty() {
            self.info(format!("{label}: all {total} points are already measured"));
            return Vec::new();
        }
        if cached > 0 {
            self.info(format!(
                "{label}: {cached} of {total} points come from the cache"
            ));
        }
        let dense = (dense_accuracy.is_none()).then(|| EvalRequest {
            key: self.dense_key,
            config: Config::dense(self.info.layers.len()),
            stages: vec![Stage::Full],
        });
        let todo: usize =
            chains.iter().map(|c| c.points.len()).sum::<usize>() + usize::from(dense.is_some());
        let id = self.next_id();
        self.sweeps.push(SweepState {
            id,
            label: label.into(),
            done: 0,
            total: todo,
        });
        vec![Request::Probes {
            id,
            job: ProbeJob {
                chains,
                dense,
                dense_accuracy,
                classes: self.info.classes(),
            },
        }]
    }

    /// Every layer at the same sparsity × bits, over a grid.
    pub fn uniform_sweep(&mut self) -> Vec<Request> {
        self.sweep("uniform sweep", sweep::uniform(self.info.layers.len()))
    }

    /// The whole-model curves: global L1 pruning across overall sparsities and every layer at
    /// the same width, each point at the sweep stages (cached points are not measured again).
    pub fn model_curves(&mut self) -> Vec<Request> {
        self.sweep("model curves", sweep::model_curves(self.info.layers.len()))
    }

    /// The measured points of each whole-model curve, ordered along it (more compression
    /// further along); families without a measured point are left out.
    pub fn curves(&self) -> Vec<(sweep::CurveFamily, Vec<(f64, &Point)>)> {
        let mut out: Vec<(sweep::CurveFamily, Vec<(f64, &Point)>)> = Vec::new();
        for family in sweep::CurveFamily::ALL {
            let mut pts: Vec<(f64, &Point)> = self
                .measured()
                .filter(|p| p.provenance.is_compressed())
                .filter_map(|p| match sweep::curve_of(&p.config) {
                    Some((f, v)) if f == family => Some((v, p)),
                    _ => None,
                })
                .collect();
            match family {
                sweep::CurveFamily::GlobalL1 => pts.sort_by(|a, b| a.0.total_cmp(&b.0)),
                sweep::CurveFamily::UniformBits => pts.sort_by(|a, b| b.0.total_cmp(&a.0)),
            }
            if !pts.is_empty() {
                out.push((family, pts));
            }
        }
        out
    }

    /// Evaluates `points` at the sweep stages, leaving out what the cache holds.
    pub fn sweep(&mut self, label: &str, points: Vec<SweepPoint>) -> Vec<Request> {
        self.sweep_stages(label, points, &SWEEP_STAGES)
    }

    /// Evaluates `points` at `stages`, leaving out what the cache holds.
    pub fn sweep_stages(
        &mut self,
        label: &str,
        points: Vec<SweepPoint>,
        stages: &[Stage],
    ) -> Vec<Request> {
        let total = points.len();
        let mut requests = Vec::new();
        for p in points {
            let key = self.key_of(&p.config);
            self.ensure_point(key, &p.config, Some(&p.label), true);
            let stages = self.missing(key, stages);
            if !stages.is_empty() {
                requests.push(EvalRequest {
                    key,
                    config: p.config,
                    stages,
                });
            }
        }
        self.rebuild_sensitivity();
        let cached = total - requests.len();
        if requests.is_empty() {
            self.info(format!("{label}: all {total} points are already measured"));
            return Vec::new();
        }
        if cached > 0 {
            self.info(format!(
                "{label}: {cached} of {total} points come from the cache"
            ));
        }
        vec![self.queue_sweep(label.to_string(), requests)]
    }

    /// Searches under `job`'s budget in the background; the answer joins the charts.
    pub fn start_search(&mut self, mut job: SearchJob) -> Vec<Request> {
        job.cache = self.cached_full();
        let id = self.next_id();
        self.sweeps.push(SweepState {
            id,
            label: "search".into(),
            done: 0,
            total: 0,
        });
        vec![Request::Search {
            id,
            job: Box::new(job),
        }]
    }

    /// Full-set figures of every compressed configuration the cache holds, by key.
    pub fn cached_full(&self) -> HashMap<u64, Figures> {
        self.points
            .iter()
            .filter(|(_, p)| p.provenance.is_compressed())
            .filter_map(|(k, p)| Some((*k, p.full.clone()?)))
            .collect()
    }

    pub(super) fn next_id(&mut self) -> u64 {
        let id = self.next_sweep;
        self.next_sweep += 1;
        id
    }

    fn queue_sweep(&mut self, label: String, points: Vec<EvalRequest>) -> Request {
        let id = self.next_id();
        self.sweeps.push(SweepState {
            id,
            label,
            done: 0,
            total: points.len(),
        });
        Request::Sweep { id, points }
    }

    /// Cancels the sweeps and the current evaluation; says what was kept.
    pub fn cancel_work(&mut self) -> Vec<Request> {
        let mut out = self.cancel_finetune();
        if !self.sweeps.is_empty() {
            let done: usize = self.sweeps.iter().map(|s| s.done).sum();
            let total: usize = self.sweeps.iter().map(|s| s.total).sum();
            self.info(format!(
                "sweeps cancelled: {done} of {total} points were measured and kept"
            ));
            self.sweeps.clear();
            out.push(Request::CancelSweeps);
        }
        if !self.pending.is_empty() {
            self.pending.clear();
            out.push(Request::CancelInteractive);
        }
        out
    }

    /// Exports the current configuration into `dir`, or, when `dir` already holds files,
    /// into the first free `dir-2`, `dir-3`, …: an export never replaces another.
    pub fn export(&mut self, dir: PathBuf) -> Vec<Request> {
        let free = free_dir(&dir);
        if free != dir {
            self.info(format!(
                "{} is not empty: exporting to {} …",
                dir.display(),
                free.display()
            ));
        } else {
            self.info(format!("exporting to {} …", dir.display()));
        }
        let dir = free;
        if let Some(p) = self.current().filter(|p| !p.provenance.is_compressed()) {
            return vec![Request::ExportTuned {
                key: p.key,
                config: p.config.clone(),
                model: p.model.clone(),
                dir,
            }];
        }
        vec![Request::Export {
            config: self.config.clone(),
            dir,
        }]
    }

    // ----- worker messages -----

    /// Takes in a worker's message; returns the journal lines (and any work) it causes.
    pub fn handle(&mut self, msg: WorkerMsg) -> Vec<Request> {
        match msg {
            WorkerMsg::Result {
                origin,
                key,
                stage,
                figures,
            } => {
                let Some(point) = self.points.get_mut(&key) else {
                    return Vec::new();
                };
                point.set(stage, figures.clone());
                point.error = None;
                let probe = sensitivity::probe_of(&point.config).is_some();
                if origin == Origin::Interactive(self.generation) || key == self.current_key {
                    self.pending
                        .retain(|s| *s != stage && !(stage == Stage::Full && *s == Stage::Quick));
                }
                if probe || key == self.dense_key {
                    self.rebuild_sensitivity();
                }
                self.point_record(key, stage, figures)
                    .map(Request::Journal)
                    .into_iter()
                    .collect()
            }
            WorkerMsg::Measured {
                key,
                config,
                label,
                stage,
                figures,
                ..
            } => {
                // A point a job chose (a search) rather than one asked for.
                self.ensure_point(key, &config, label.as_deref(), true);
                self.handle(WorkerMsg::Result {
                    origin: Origin::Sweep(0),
                    key,
                    stage,
                    figures,
                })
            }
            WorkerMsg::Failed {
                origin,
                key,
                stage,
                error,
            } => {
                let Some(point) = self.points.get_mut(&key) else {
                    return Vec::new();
                };
                point.error = Some(error.clone());
                let what = point.label.clone();
                let record = Record::Failed {
                    key: key_hex(key),
                    stage,
                    config: point.config.clone(),
                    error: error.clone(),
                };
                let current =
                    origin == Origin::Interactive(self.generation) || key == self.current_key;
                if current {
                    self.pending.clear();
                    self.error(format!("{} failed: {error}", stage.label()));
                } else if let Origin::Sweep(_) = origin {
                    self.error(format!(
                        "a sweep point ({}) failed: {error}",
                        what.unwrap_or_else(|| "unnamed".into())
                    ));
                }
                vec![Request::Journal(record)]
            }
            WorkerMsg::Progress { sweep, done, total } => {
                if let Some(s) = self.sweeps.iter_mut().find(|s| s.id == sweep) {
                    s.done = done;
                    s.total = total;
                }
                Vec::new()
            }
            WorkerMsg::SweepDone { sweep, cancelled } => {
                if let Some(i) = self.sweeps.iter().position(|s| s.id == sweep) {
                    let s = self.sweeps.remove(i);
                    if !cancelled && s.label != "search" {
                        let points = if s.total == 1 { "point" } else { "points" };
                        self.info(format!("{} finished: {} {points}", s.label, s.total));
                    }
                }
                Vec::new()
            }
            WorkerMsg::SearchDone { outcome, .. } => {
                let text = outcome.summary();
                if let Some(best) = &outcome.best {
                    self.ensure_point(best.key, &best.config, Some("search answer"), true);
                }
                self.info(text);
                self.search = Some(*outcome);
                Vec::new()
            }
            WorkerMsg::TuneProgress { id, progress } => {
                if let Some(t) = self.tune.as_mut().filter(|t| t.id == id) {
                    t.apply(&progress);
                }
                Vec::new()
            }
            WorkerMsg::TuneDone { id, result } => self.finetune_done(id, result),
            WorkerMsg::TaskDone { task, result } => {
                match result {
                    Ok(paths) => self.info(format!("{task}: wrote {}", paths_text(&paths))),
                    Err(e) => self.error(format!("{task} failed: {e}")),
                }
                Vec::new()
            }
        }
    }

    // ----- derived data -----

    /// Recomputes the sensitivity table from every probe the cache holds.
    fn rebuild_sensitivity(&mut self) {
        let mut sens = vec![LayerSensitivity::default(); self.info.layers.len()];
        for p in self.points.values() {
            let Some(probe) = sensitivity::probe_of(&p.config) else {
                continue;
            };
            let Some(acc) = p.accuracy() else { continue };
            let Some(s) = sens.get_mut(probe.layer) else {
                continue;
            };
            match probe.kind {
                sensitivity::ProbeKind::Prune(crate::compress::recipe::PruneMethod::L1, p) => {
                    s.prune.push((p, acc.value))
                }
                sensitivity::ProbeKind::Bits(b) => s.bits.push((b, acc.value)),
                sensitivity::ProbeKind::Prune(..) => {}
            }
        }
        for s in &mut sens {
            s.prune.sort_by_key(|(p, _)| *p);
            s.bits.sort_by_key(|(b, _)| std::cmp::Reverse(*b));
        }
        self.sensitivity = sens;
    }

    /// The sensitivity table of `grid` from what the cache holds.
    pub fn sensitivity_table(&self, grid: &SensitivityGrid) -> SensitivityTable {
        let dense = self
            .dense()
            .and_then(|p| p.full.as_ref())
            .and_then(|f| f.accuracy)
            .map(|a| a.value);
        sensitivity::table(&self.info, grid, dense, &|config| {
            let p = self.points.get(&self.key_of(config));
            (
                p.and_then(|p| p.full.clone()),
                p.is_some_and(|p| p.error.is_some() && p.full.is_none()),
            )
        })
    }

    /// The probe a configuration stands for, if it is one.
    pub fn probe_of(&self, config: &Config) -> Option<Probe> {
        sensitivity::probe_of(config)
    }

    /// What the plots draw: every point with its size, latency and accuracy.
    pub fn plot_input(&self) -> PlotInput {
        let plot_point = |p: &Point| {
            Some(PlotPoint {
                size_bytes: p.size_bytes()? as f64,
                latency_us: p.latency_us(),
                accuracy: p.accuracy()?.value,
                label: p
                    .label
                    .clone()
                    .or_else(|| Some(super::compare::summary(&p.config, &self.info))),
                tuned: p.provenance.describe(),
                untuned: None,
                origin: Some(Box::new(PointOrigin {
                    key: super::journal::key_hex(p.key),
                    recipe: p.config.to_recipe(&self.info).to_toml(),
                    provenance: p.provenance.clone(),
                })),
            })
        };
        // A fine-tuned point carries its untuned twin, the other end of its line.
        let plot_point = |p: &Point| {
            let mut out = plot_point(p)?;
            if let Provenance::FineTuned { from, .. } = &p.provenance {
                out.untuned = super::journal::parse_key(from)
                    .and_then(|k| self.points.get(&k))
                    .and_then(plot_point)
                    .map(Box::new);
            }
            Some(out)
        };
        PlotInput {
            title: format!("{} on {}", self.info.name, self.info.data_name),
            inputs: self.options.inputs.clone().map(Box::new),
            points: self.measured().filter_map(plot_point).collect(),
            dense: self.dense().and_then(plot_point),
            current: self.current().and_then(plot_point),
            pins: (0..PIN_NAMES.len())
                .filter_map(|i| {
                    let mut p = self.pinned_point(i).and_then(plot_point)?;
                    p.label = Some(PIN_NAMES[i].to_string());
                    Some(p)
                })
                .collect(),
            accuracy_range: None,
            budget_bytes: self.size_limit(),
            budget_latency_us: self.budget_latency_us,
            size_range: None,
            latency_range: None,
            curves: self
                .curves()
                .into_iter()
                .map(|(family, pts)| super::plot::PlotCurve {
                    family,
                    points: pts
                        .into_iter()
                        .filter_map(|(value, p)| {
                            Some(super::plot::CurvePoint {
                                value,
                                accuracy: p.accuracy()?.value,
                                size_bytes: p.size_bytes()? as f64,
                                latency_us: p.latency_us(),
                            })
                        })
                        .collect(),
                })
                .filter(|c| !c.points.is_empty())
                .collect(),
        }
    }
}

/// `dir` when it is missing or empty, else the first of `dir-2`, `dir-3`, … that is.
pub fn free_dir(dir: &std::path::Path) -> PathBuf {
    let taken = |d: &std::path::Path| {
        std::fs::read_dir(d).is_ok_and(|mut entries| entries.next().is_some()) || d.is_file()
    };
    if !taken(dir) {
        return dir.to_path_buf();
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    (2..)
        .map(|n| dir.with_file_name(format!("{name}-{n}")))
        .find(|d| !taken(d))
        .unwrap_or_else(|| dir.to_path_buf())
}

/// Written files in few words: `dir/{a.png, b.svg}` for files of one directory, which is
/// shown relative to the working directory when it is inside it.
pub fn paths_text(paths: &[PathBuf]) -> String {
    let cwd = std::env::current_dir().ok();
    let short = |p: &std::path::Path| -> PathBuf {
        cwd.as_ref()
            .and_then(|c| p.strip_prefix(c).ok())
            .map_or_else(|| p.to_path_buf(), std::path::Path::to_path_buf)
    };
    let parents: Vec<Option<&std::path::Path>> = paths.iter().map(|p| p.parent()).collect();
    let names: Option<Vec<String>> = paths
        .iter()
        .map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    match (parents.first().copied().flatten(), names) {
        (Some(dir), Some(names)) if paths.len() > 1 && parents.iter().all(|p| *p == Some(dir)) => {
            let dir = short(dir);
            let sep = if dir.as_os_str().is_empty() { "" } else { "/" };
            format!("{}{sep}{{{}}}", dir.display(), names.join(", "))
        }
        _ => paths
            .iter()
            .map(|p| short(p).display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The cache key of a configuration (see `Session::key_of`).
pub fn key_of(info: &ModelInfo, options: &SessionOptions, config: &Config) -> u64 {
    let recipe = config.to_recipe(info);
    let fingerprint = if recipe.activations.is_some() && options.calibration != 0 {
        Fnv::default()
            .write(&options.fingerprint.to_le_bytes())
            .write(b"calibration")
            .write(&options.calibration.to_le_bytes())
            .finish()
    } else {
        options.fingerprint
    };
    recipe_key(fingerprint, &recipe)
}

/// What cache keys depend on, detached from a session for jobs running on workers.
#[derive(Debug, Clone)]
pub struct Keyer {
    pub info: ModelInfo,
    pub options: SessionOptions,
}

impl Keyer {
    pub fn key_of(&self, config: &Config) -> u64 {
        key_of(&self.info, &self.options, config)
    }
}
