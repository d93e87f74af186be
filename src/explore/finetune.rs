//! The explorer's fine-tune job: the current configuration trained again on the training set
//! (`train::finetune`, the path `squeeze finetune` takes, with its defaults), then measured by
//! the evaluator like every other point. The result is its own point — provenance
//! `FineTuned`, keyed by the training settings and the training data's hash besides the
//! configuration — joined to its untuned twin on the charts. Nothing is written while it runs:
//! the point, its journal lines and the tuned model (packed, saved beside the journal and named
//! there by its SHA-256, so it can be exported after a resume) exist only once it has finished,
//! and a cancelled run leaves nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::config::Config;
use super::eval::{EvalError, Figures, Stage};
use super::journal::key_hex;
use super::session::{Provenance, Request};
use crate::compress::Plan;
use crate::data::{DataOptions, Split};
use crate::engine::CompressedModel;
use crate::train::{
    self, Distillation, FinetuneEvent, FinetuneSets, FinetuneSettings, LrDecay, TrainConfig,
};

/// What `F` cycles through for the next `f`: labels alone, then distillation from the
/// uncompressed model at `squeeze finetune --distill`'s default (T = 4, α = 0.9) and at a
/// softer mix (T = 2, α = 0.5).
pub const DISTILL_CYCLE: [Option<Distillation>; 3] = [
    None,
    Some(Distillation {
        temperature: 4.0,
        alpha: 0.9,
    }),
    Some(Distillation {
        temperature: 2.0,
        alpha: 0.5,
    }),
];

/// How a tuned model learnt, in a few words: `fine-tuned` (from the labels alone), or
/// `distilled T=4 α=0.9` (fine-tuned learning from the uncompressed model too).
pub fn tune_label(distill: Option<&Distillation>) -> String {
    match distill {
        None => "fine-tuned".into(),
        Some(d) => distill_words(d),
    }
}

/// `distilled T=4 α=0.9`.
pub fn distill_words(d: &Distillation) -> String {
    format!("distilled T={} α={}", d.temperature, d.alpha)
}

/// How a fine-tune runs: `squeeze finetune`'s settings and data options.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TuneSpec {
    pub settings: FinetuneSettings,
    /// Training samples held out (the last N) to choose the kept epoch.
    pub val_split: usize,
    /// Only the first N training samples (before the split).
    pub limit: Option<usize>,
}

impl Default for TuneSpec {
    /// `squeeze finetune`'s defaults: 8 epochs one-shot, AdamW lr 1e-3 with cosine decay,
    /// batch 128, seed 0, 5,000 validation samples.
    fn default() -> Self {
        let train = TrainConfig {
            epochs: 8,
            lr: 1e-3,
            batch: 128,
            seed: 0,
            optimizer: train::OptimizerKind::AdamW,
            momentum: 0.9,
            weight_decay: 0.01,
            lr_decay: LrDecay::Cosine,
        };
        let mut settings = FinetuneSettings::new(train);
        // The untuned twin is the explorer's own point, measured already.
        settings.measure_untuned = false;
        TuneSpec {
            settings,
            val_split: 5000,
            limit: None,
        }
    }
}

impl TuneSpec {
    /// The provenance string of a point tuned this way on training data `data` (a hash of its
    /// files): part of the point's cache key, so other settings or data are another point.
    pub fn provenance(&self, data: u64) -> String {
        #[derive(Serialize)]
        struct P<'a> {
            #[serde(flatten)]
            spec: &'a TuneSpec,
            data: String,
        }
        serde_json::to_string(&P {
            spec: self,
            data: key_hex(data),
        })
        .unwrap_or_default()
    }

    pub fn epochs(&self) -> usize {
        self.settings.train.epochs
    }

    /// The label of a point tuned this way.
    pub fn label(&self) -> String {
        tune_label(self.settings.distill.as_ref())
    }
}

/// One fine-tune asked of a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneJob {
    pub id: u64,
    /// The untuned twin's key and the tuned point's key.
    pub from: u64,
    pub key: u64,
    pub config: Config,
    pub spec: TuneSpec,
    /// The provenance string (settings and data hash), recorded in the tuned model.
    pub provenance: String,
}

/// A running fine-tune, as the status shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneState {
    pub id: u64,
    pub from: u64,
    pub key: u64,
    pub config: Config,
    pub provenance: String,
    /// `fine-tuning`, or `distilling (T=4, α=0.9)`.
    pub what: String,
    /// 1-based epoch under way (0: loading the data), of `epochs`.
    pub epoch: usize,
    pub epochs: usize,
    /// The last batch's loss, and the last finished epoch's validation top-1.
    pub loss: Option<f64>,
    pub validation: Option<f64>,
    pub measuring: bool,
    pub started: Instant,
}

impl TuneState {
    pub fn new(job: &TuneJob) -> TuneState {
        TuneState {
            id: job.id,
            from: job.from,
            key: job.key,
            config: job.config.clone(),
            provenance: job.provenance.clone(),
            what: match &job.spec.settings.distill {
                None => "fine-tuning".into(),
                Some(d) => format!("distilling (T={}, α={})", d.temperature, d.alpha),
            },
            epoch: 0,
            epochs: job.spec.epochs(),
            loss: None,
            validation: None,
            measuring: false,
            started: Instant::now(),
        }
    }

    /// The status line: `fine-tuning: epoch 2/8 · loss 0.0648 · validation 98.58 % · 12 s`.
    pub fn status(&self) -> String {
        let what = &self.what;
        let mut s = if self.measuring {
            format!("{what}: measuring the tuned model")
        } else if self.epoch == 0 {
            format!("{what}: reading the training set")
        } else {
            format!("{what}: epoch {}/{}", self.epoch, self.epochs)
        };
        if let Some(l) = self.loss {
            s.push_str(&format!(" · loss {l:.4}"));
        }
        if let Some(v) = self.validation {
            s.push_str(&format!(" · validation {:.2} %", v * 100.0));
        }
        s.push_str(&format!(" · {} s", self.started.elapsed().as_secs()));
        s
    }

    pub fn apply(&mut self, p: &TuneProgress) {
        match *p {
            TuneProgress::Epoch { epoch, epochs } => {
                self.epoch = epoch;
                self.epochs = epochs;
            }
            TuneProgress::Loss(l) => self.loss = Some(l),
            TuneProgress::Validation(v) => self.validation = Some(v),
            TuneProgress::Measuring => self.measuring = true,
        }
    }
}

/// What a running fine-tune reports.
#[derive(Debug, Clone, PartialEq)]
pub enum TuneProgress {
    Epoch { epoch: usize, epochs: usize },
    Loss(f64),
    Validation(f64),
    Measuring,
}

/// A finished fine-tune's figures, measured by the evaluator like every point.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneOutcome {
    pub full: Figures,
    pub latency: Figures,
    /// Epoch kept and its validation top-1, for the message.
    pub kept_epoch: usize,
    pub validation: Option<f64>,
    pub seconds: f64,
    /// The SHA-256 of the tuned model's packed bytes, when the evaluator keeps the model for
    /// export (`tuned_model_name` names its file beside the journal).
    pub model: Option<String>,
    /// Why the tuned model could not be saved beside the journal, when it could not: it can
    /// be exported in this run only.
    pub unsaved: Option<String>,
}

/// A fine-tuned model kept in memory for export.
pub struct TunedModel {
    pub key: u64,
    pub recipe: crate::compress::Recipe,
    pub plan: Plan,
    pub compressed: CompressedModel,
    /// `squeeze.finetune` metadata (JSON).
    pub metadata: String,
}

impl TunedModel {
    /// The packed file, as `squeeze finetune` writes it: the recipe, the training settings and
    /// what pruning left of `original`'s layers in its metadata.
    pub fn to_bytes(&self, original: &crate::model::Model) -> Result<Vec<u8>, EvalError> {
        self.compressed
            .sealed_with(
                Some(&self.recipe.to_toml()),
                &[
                    (train::FINETUNE_METADATA_KEY, self.metadata.clone()),
                    crate::measure::PruningRecord::of(&self.plan, original).metadata(),
                ],
            )
            .to_bytes()
            .map_err(|e| EvalError::Engine(e.into()))
    }
}

/// The file name of the tuned model with SHA-256 `sha256`, in the folder beside the journal.
pub fn tuned_model_name(sha256: &str) -> String {
    let short: String = sha256.chars().take(16).collect();
    format!("tuned-{short}.safetensors")
}

/// The training set to fine-tune on: `--train`, else the one beside the evaluation set.
pub fn training_path(train: Option<&Path>, data: &Path) -> Option<PathBuf> {
    train
        .map(Path::to_path_buf)
        .or_else(|| crate::data::training_set_beside(data))
}

/// What a model evaluator lends a fine-tune: the model, and how to measure and keep the result.
pub trait TuneHost {
    fn model(&self) -> &crate::model::Model;
    fn recipe(&self, config: &Config) -> crate::compress::Recipe;
    /// Full-set and latency figures of a packed model, as every point is measured.
    fn measure_tuned(
        &self,
        plan: &Plan,
        compressed: &CompressedModel,
        activation_bits: Option<u8>,
        cancel: &AtomicBool,
    ) -> Result<(Figures, Figures), EvalError>;
}

/// Runs `job` on `train_path`: reads the training set, splits the validation samples off,
/// fine-tunes and measures. Progress goes to `report` (throttled to a few per second).
pub fn run(
    host: &dyn TuneHost,
    train_path: &Path,
    job: &TuneJob,
    cancel: &AtomicBool,
    report: &mut dyn FnMut(TuneProgress),
) -> Result<(TuneOutcome, Arc<TunedModel>), EvalError> {
    let start = Instant::now();
    let opts = DataOptions {
        split: Split::Train,
        ..Default::default()
    }
    .for_model(host.model());
    let set = crate::data::load(train_path, &opts).map_err(|e| {
        EvalError::Other(format!(
            "reading the training set {}: {e}",
            train_path.display()
        ))
    })?;
    let set = match job.spec.limit {
        Some(n) => set.truncated(n),
        None => set,
    };
    let (train_set, val_set) = train::split_validation(&set, job.spec.val_split).map_err(other)?;
    let sets = FinetuneSets {
        train: &train_set,
        validation: val_set.as_ref(),
        test: None,
    };
    let recipe = host.recipe(&job.config);
    let mut last_step = Instant::now();
    let tuned = train::finetune(
        host.model(),
        &recipe,
        sets,
        &job.spec.settings,
        None,
        cancel,
        &mut |e| match e {
            FinetuneEvent::EpochStarted { epoch, epochs, .. } => report(TuneProgress::Epoch {
                epoch: epoch + 1,
                epochs: *epochs,
            }),
            FinetuneEvent::Step { loss, .. } => {
                if last_step.elapsed() > Duration::from_millis(250) {
                    last_step = Instant::now();
                    report(TuneProgress::Loss(f64::from(*loss)));
                }
            }
            FinetuneEvent::EpochFinished(r) => {
                report(TuneProgress::Loss(r.train_loss));
                if let Some(v) = r.validation_accuracy {
                    report(TuneProgress::Validation(v));
                }
            }
            FinetuneEvent::Compressing => report(TuneProgress::Measuring),
            FinetuneEvent::Untuned { .. } => {}
        },
    )
    .map_err(|e| match e {
        train::FinetuneError::Cancelled => EvalError::Cancelled,
        e => other(e),
    })?;
    let (full, latency) = host.measure_tuned(
        &tuned.plan,
        &tuned.compressed,
        job.config.activation_bits,
        cancel,
    )?;
    #[derive(Serialize)]
    struct Meta<'a> {
        #[serde(flatten)]
        report: &'a train::FinetuneReport,
        provenance: serde_json::Value,
    }
    let metadata = serde_json::to_string(&Meta {
        report: &tuned.report,
        provenance: serde_json::from_str(&job.provenance).unwrap_or(serde_json::Value::Null),
    })
    .map_err(other)?;
    let outcome = TuneOutcome {
        full,
        latency,
        kept_epoch: tuned.report.kept_epoch,
        validation: tuned.report.kept_validation_accuracy,
        seconds: start.elapsed().as_secs_f64(),
        model: None,
        unsaved: None,
    };
    let model = Arc::new(TunedModel {
        key: job.key,
        recipe,
        plan: tuned.plan,
        compressed: tuned.compressed,
        metadata,
    });
    Ok((outcome, model))
}

fn other(e: impl std::fmt::Display) -> EvalError {
    EvalError::Other(e.to_string())
}

impl super::session::Session {
    /// Fine-tunes the current configuration in the background (`f`): one at a time; a tuned
    /// point the cache holds is shown at once instead.
    pub fn finetune(&mut self) -> Vec<Request> {
        if self.tune.is_some() {
            self.info("a fine-tune is running (Esc cancels it)");
            return Vec::new();
        }
        if self
            .current()
            .is_some_and(|p| !p.provenance.is_compressed())
        {
            self.info("this point is fine-tuned already");
            return Vec::new();
        }
        if self.options.calibration == 0 {
            self.error("no training set beside the evaluation set: give --train DATA");
            return Vec::new();
        }
        let from = self.key_of(&self.config);
        let provenance = self.tune_spec.provenance(self.options.calibration);
        let tuned = Provenance::FineTuned {
            from: key_hex(from),
            settings: provenance.clone(),
        };
        let key = self.key_with(&self.config, &tuned);
        // A cached point whose model was not kept (journaled before models were, or its file
        // is gone) is tuned again, so that it can be exported.
        if self
            .point(key)
            .is_some_and(|p| p.full.is_some() && p.model.is_some())
        {
            if let Some(p) = self.points.get_mut(&key) {
                p.shown = true;
            }
            self.current_key = key;
            self.info("fine-tuned before: its point comes from the cache");
            return vec![self.current_record()];
        }
        let job = TuneJob {
            id: self.next_id(),
            from,
            key,
            config: self.config.clone(),
            spec: self.tune_spec.clone(),
            provenance,
        };
        let state = TuneState::new(&job);
        self.info(format!(
            "{} {} epochs on the training set (Esc cancels; editing goes on)",
            state.what,
            job.spec.epochs()
        ));
        self.tune = Some(state);
        vec![Request::Finetune(Box::new(job))]
    }

    /// The next teacher setting of `f` (`F`): labels alone, or distillation at one of the
    /// `DISTILL_CYCLE` temperatures and weights. A running fine-tune keeps its own.
    pub fn cycle_distillation(&mut self) -> Vec<Request> {
        let now = DISTILL_CYCLE
            .iter()
            .position(|d| *d == self.tune_spec.settings.distill);
        let next = now.map_or(0, |i| (i + 1) % DISTILL_CYCLE.len());
        self.tune_spec.settings.distill = DISTILL_CYCLE[next];
        self.info(match &self.tune_spec.settings.distill {
            None => "the next fine-tune (f) learns from the labels alone (F: distillation)".into(),
            Some(d) => format!(
                "the next fine-tune (f) learns from the uncompressed model too: {} (F: next setting)",
                distill_words(d)
            ),
        });
        Vec::new()
    }

    /// Stops the fine-tune under way, keeping nothing of it.
    pub fn cancel_finetune(&mut self) -> Vec<Request> {
        if self.tune.take().is_none() {
            return Vec::new();
        }
        self.info("fine-tune cancelled: nothing was kept");
        vec![Request::CancelFinetune]
    }

    /// A fine-tune ended: its point joins the charts (and the journal), joined to its twin.
    pub(super) fn finetune_done(
        &mut self,
        id: u64,
        result: Option<Result<Box<TuneOutcome>, String>>,
    ) -> Vec<Request> {
        if self.tune.as_ref().is_none_or(|t| t.id != id) {
            // Cancelled: whatever it produced is not wanted, the saved model included (it
            // finished just as Esc was pressed) unless a point already holds the same bytes.
            let saved = match result {
                Some(Ok(o)) if o.unsaved.is_none() => o.model,
                _ => None,
            };
            return match saved {
                Some(model)
                    if !self
                        .points
                        .values()
                        .any(|p| p.model.as_ref() == Some(&model)) =>
                {
                    vec![Request::DiscardTuned(model)]
                }
                _ => Vec::new(),
            };
        }
        let Some(state) = self.tune.take() else {
            return Vec::new();
        };
        let outcome = match result {
            None => return Vec::new(),
            Some(Err(e)) => {
                self.error(format!("fine-tuning failed: {e}"));
                return Vec::new();
            }
            Some(Ok(o)) => o,
        };
        let key = state.key;
        let provenance = Provenance::FineTuned {
            from: key_hex(state.from),
            settings: state.provenance.clone(),
        };
        self.ensure_point(key, &state.config, provenance.describe().as_deref(), true);
        if let Some(p) = self.points.get_mut(&key) {
            p.provenance = provenance;
            p.set(Stage::Full, outcome.full.clone());
            p.set(Stage::Latency, outcome.latency.clone());
            p.model = outcome.model.clone();
            p.error = None;
        }
        let pct = |a: Option<f64>| a.map_or("–".into(), |a| format!("{:.2} %", a * 100.0));
        let before = self
            .point(state.from)
            .and_then(|p| p.full.as_ref())
            .and_then(|f| f.accuracy)
            .map(|a| a.value);
        let after = outcome.full.accuracy.map(|a| a.value);
        self.info(format!(
            "fine-tuned in {:.0} s: top-1 {} (untuned {}), kept epoch {} (validation {})",
            outcome.seconds,
            pct(after),
            pct(before),
            outcome.kept_epoch,
            pct(outcome.validation)
        ));
        // After the summary, so that the message line shows it.
        if let Some(why) = &outcome.unsaved {
            self.error(format!(
                "the tuned model could not be saved beside the journal ({why}): it can be exported in this run only"
            ));
        }
        let mut out: Vec<Request> = [
            (Stage::Full, outcome.full),
            (Stage::Latency, outcome.latency),
        ]
        .into_iter()
        .filter_map(|(stage, f)| self.point_record(key, stage, f))
        .map(Request::Journal)
        .collect();
        if self.config == state.config {
            // After the point's lines, so that a resumed journal finds the point it names.
            self.current_key = key;
            out.push(self.current_record());
        }
        out
    }
}
