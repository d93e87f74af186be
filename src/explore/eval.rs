//! Evaluation as the explorer sees it: a configuration and a stage in, figures out, behind the
//! `Evaluator` trait so the TUI can be driven by fakes in tests and by the real
//! compress → engine → measure path in the binary.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use super::config::{Config, LayerSetting};
use super::info::ModelInfo;
use super::search::LayerCost;
use super::sensitivity::{ProbeEvent, ProbeJob};
use crate::compress::Recipe;

/// How much of the work one evaluation does. Results arrive in this order for one edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Accuracy on a fixed random subset (with a ± range) and the exact size: a first answer
    /// within a fraction of a second.
    Quick,
    /// Accuracy on the whole evaluation set.
    Full,
    /// Single-sample latency.
    Latency,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Quick, Stage::Full, Stage::Latency];

    pub fn label(self) -> &'static str {
        match self {
            Stage::Quick => "quick estimate",
            Stage::Full => "full set",
            Stage::Latency => "latency",
        }
    }
}

/// An accuracy with its 95 % range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Top-1 accuracy in [0, 1].
    pub value: f64,
    /// Half-width of the 95 % interval; 0 when measured on the whole set.
    pub half_width: f64,
    pub samples: usize,
}

impl Estimate {
    /// The 95 % normal-approximation interval of a proportion `p` measured on `n` of
    /// `population` samples drawn without replacement (finite-population corrected).
    pub fn from_subset(p: f64, n: usize, population: usize) -> Estimate {
        let half_width = if n == 0 || n >= population {
            0.0
        } else {
            let fpc = ((population - n) as f64 / (population.max(2) - 1) as f64).sqrt();
            1.96 * (p * (1.0 - p) / n as f64).sqrt() * fpc
        };
        Estimate {
            value: p,
            half_width,
            samples: n,
        }
    }
}

/// One layer of an evaluated configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LayerFigures {
    pub size_bytes: u64,
    /// Achieved fraction of removed weights.
    pub sparsity: f64,
    /// The storage format chosen, in the engine's names (e.g. `csr8+u4/channel`, `dense+f32`).
    pub format: String,
    /// Histogram of the surviving weights' values after compression, on the same edges as
    /// `LayerInfo::hist_before` (pruned weights are not counted here).
    pub hist_after: Vec<u32>,
    /// Multiply-adds the stored format performs for one sample (stored entries × output
    /// positions): what a device's latency estimate counts.
    #[serde(default)]
    pub macs: u64,
}

/// What one stage measured. Fields a stage does not measure are `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Figures {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<Estimate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy_bytes: Option<u64>,
    /// The pruned fraction of the original weights (`Plan::sparsity_against`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<f64>,
    /// The fraction of the original weights exactly zero after quantization
    /// (`Plan::zeros_against`): at least `sparsity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zeros: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p90_us: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerFigures>,
    /// Peak activation memory of one sample (the live buffers and kernel scratch of the layer
    /// that needs most), at the activations' precision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arena_bytes: Option<u64>,
    /// The layer that sets that peak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arena_layer: Option<String>,
}

/// Why an evaluation produced no figures.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The cancel flag was set: nobody wants the answer any more. Never shown as a failure.
    #[error("cancelled")]
    Cancelled,
    /// The configuration cannot be compressed (a recipe that does not fit the model, a
    /// calibration problem, a value that does not fit its storage).
    #[error(transparent)]
    Compress(#[from] crate::compress::CompressError),
    /// The engine cannot pack or build the compressed model.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// An output file could not be written.
    #[error("{}: {msg}", path.display())]
    Write { path: PathBuf, msg: String },
    /// Anything else, in words (evaluators outside this crate, fakes in tests).
    #[error("{0}")]
    Other(String),
}

impl EvalError {
    pub fn is_cancelled(&self) -> bool {
        matches!(self, EvalError::Cancelled)
    }
}

/// Measures configurations. Implementations check `cancel` between batches and return
/// `Err(EvalError::Cancelled)` when it is set.
pub trait Evaluator: Send + Sync {
    fn evaluate(
        &self,
        config: &Config,
        stage: Stage,
        cancel: &AtomicBool,
    ) -> Result<Figures, EvalError>;

    /// Writes the recipe (TOML), the compressed model (safetensors) and its measurement
    /// (JSON) into `dir`, atomically; returns the written paths.
    fn export(&self, config: &Config, dir: &Path) -> Result<Vec<PathBuf>, EvalError>;

    /// The files the session reads (model, data, recipe, ...), which nothing it writes may
    /// replace.
    /// Fine-tunes a configuration (`explore::finetune`); evaluators without a model and a
    /// training set cannot.
    fn finetune(
        &self,
        job: &super::finetune::TuneJob,
        cancel: &AtomicBool,
        report: &mut dyn FnMut(super::finetune::TuneProgress),
    ) -> Result<super::finetune::TuneOutcome, EvalError> {
        let _ = (job, cancel, report);
        Err(EvalError::Other(
            "fine-tuning needs a model and a training set".into(),
        ))
    }

    /// Exports the fine-tuned model of point `key` (of `config`), as `export` does a
    /// configuration: the model tuned in this run, else the saved one with SHA-256 `model`.
    fn export_tuned(
        &self,
        key: u64,
        config: &Config,
        model: Option<&str>,
        dir: &Path,
    ) -> Result<Vec<PathBuf>, EvalError> {
        let _ = (key, config, model, dir);
        Err(EvalError::Other(
            "the fine-tuned model is not in memory: it was tuned in an earlier run".into(),
        ))
    }

    /// Forgets the saved tuned model with SHA-256 `model` (its fine-tune was cancelled).
    fn discard_tuned(&self, model: &str) {
        let _ = model;
    }

    fn inputs(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Measures sensitivity probes on the whole evaluation set, reporting each as it is
    /// measured (from any thread). The figures must be those `evaluate(config, Full)` gives;
    /// an evaluator may get them faster (layers in parallel, reusing what the probes share).
    fn measure_probes(
        &self,
        job: &ProbeJob,
        cancel: &AtomicBool,
        report: &(dyn Fn(ProbeEvent) + Sync),
    ) {
        super::sensitivity::measure_each(self, job, cancel, report);
    }

    /// The packed bytes, multiply-adds and format of one layer under each of `settings`
    /// (every other layer dense), and with `latency` its single-sample time alone. The
    /// provided version evaluates each configuration's quick stage.
    fn layer_costs(
        &self,
        info: &ModelInfo,
        layer: usize,
        settings: &[LayerSetting],
        latency: bool,
    ) -> Result<Vec<LayerCost>, EvalError> {
        let _ = latency;
        let never = AtomicBool::new(false);
        settings
            .iter()
            .map(|s| {
                let mut config = Config::dense(info.layers.len());
                if let Some(l) = config.layers.get_mut(layer) {
                    *l = *s;
                }
                let f = self.evaluate(&config, Stage::Quick, &never)?;
                let l = f.layers.get(layer).cloned().unwrap_or_default();
                Ok(LayerCost {
                    size_bytes: l.size_bytes,
                    macs: l.macs,
                    format: l.format,
                    latency_us: None,
                })
            })
            .collect()
    }
}

/// A stable 64-bit FNV-1a hash: cache keys must mean the same thing in a resumed session, so
/// std's randomly keyed hashers will not do.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn write(&mut self, bytes: &[u8]) -> &mut Self {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator so ("ab", "c") and ("a", "bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        self
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// The cache key of a configuration: a hash of (model and data fingerprint, recipe). Edits
/// that leave the recipe unchanged (a scheme on an f32 layer, a layer's own method under
/// global pruning) keep the key. The stage (the evaluation subset) is the cache's second key.
pub fn recipe_key(fingerprint: u64, recipe: &Recipe) -> u64 {
    Fnv::default()
        .write(&fingerprint.to_le_bytes())
        .write(recipe.to_json().as_bytes())
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_distinct() {
        let a = Recipe::default();
        let b = Recipe::quick(0.5, crate::compress::Bits::F32, false);
        assert_eq!(recipe_key(1, &a), recipe_key(1, &a.clone()));
        assert_ne!(recipe_key(1, &a), recipe_key(1, &b));
        assert_ne!(recipe_key(1, &a), recipe_key(2, &a));
        // Pinned value: a changed hash would orphan every journaled session.
        assert_eq!(
            Fnv::default().write(b"squeeze").finish(),
            3_269_748_817_460_405_832
        );
    }

    #[test]
    fn subset_estimates_shrink_with_samples() {
        let a = Estimate::from_subset(0.9, 1000, 10_000);
        let b = Estimate::from_subset(0.9, 5000, 10_000);
        assert!(a.half_width > b.half_width && b.half_width > 0.0);
        assert_eq!(Estimate::from_subset(0.9, 10_000, 10_000).half_width, 0.0);
        // 1.96 × sqrt(0.09 / 1000) × sqrt(9000 / 9999) ≈ 0.01764
        assert!((a.half_width - 0.017_64).abs() < 1e-4, "{}", a.half_width);
    }
}
