//! Exploration: the session (`Session`: the cache of measured configurations, the one being
//! edited with undo and redo, pins, budgets, sweeps; the explorer views it and headless
//! commands drive it), its set-up on a model and an evaluation set (`setup`), the per-layer
//! edit state (`Config`) and its recipe, evaluation behind the `Evaluator` trait (the
//! `ModelEvaluator` runs compress → engine → measure), background jobs (latest-wins edits,
//! queued cancellable sweeps), sensitivity, grid sweeps and their shards, budgeted search,
//! device targets, Pareto frontiers, presets and the append-only journal. Nothing here knows
//! whether a person is watching.

pub mod compare;
pub mod config;
pub mod eval;
pub mod finetune;
pub mod info;
pub mod jobs;
pub mod journal;
pub mod model_evaluator;
pub mod pareto;
pub mod plot;
pub mod presets;
pub mod results;
pub mod search;
pub mod sensitivity;
pub mod session;
pub mod setup;
pub mod sweep;
pub mod targets;

pub use config::{Config, LayerSetting};
pub use eval::{Estimate, EvalError, Evaluator, Figures, LayerFigures, Stage};
pub use info::{LayerInfo, ModelInfo};
pub use jobs::{EvalRequest, Executor, Origin, Runner, WorkerMsg, drive};
pub use session::{Point, Provenance, Request, Session, SessionOptions};
pub use setup::{JournalChoice, Setup, SetupOptions};
