//! Exploration: the per-layer edit state (`Config`) and its recipe, evaluation behind the
//! `Evaluator` trait (the real one runs compress → engine → measure), background jobs
//! (latest-wins edits, queued cancellable sweeps), the cache key, Pareto frontiers, presets and
//! the append-only session journal. Nothing here knows whether a person is watching.

pub mod config;
pub mod eval;
pub mod info;
pub mod jobs;
pub mod journal;
pub mod pareto;
pub mod presets;
pub mod real;
pub mod sweep;
pub mod units;

pub use config::{Config, LayerSetting};
pub use eval::{Estimate, Evaluator, Figures, LayerFigures, Stage};
pub use info::{LayerInfo, ModelInfo};
pub use jobs::{EvalRequest, Origin, Runner, WorkerMsg};
