//! Budgeted search: per-layer sparsity and bits that maximise accuracy under a budget (size,
//! latency, flash, RAM, a device target), or that minimise size or latency within an accuracy
//! drop.
//!
//! It starts from measured sensitivity curves (each layer alone, pruned and quantized) and
//! the exact packed bytes of every per-layer option, allocates by a Lagrangian relaxation
//! (each layer takes the option minimising `drop + λ·cost`; λ is bisected until the predicted
//! cost meets the budget, then the slack is spent on the most accurate upgrades), and then
//! verifies and refines on measured points: a hill climb over one-step moves of one layer,
//! from the allocation and from a few seeded perturbations of the best point. Every
//! candidate is measured on the whole evaluation set; the best one measured is the answer,
//! whenever the search stops. The same seed and the same inputs give the same answer (a host
//! latency budget depends on timings and is the exception).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::config::{Config, LayerSetting, Permille};
use super::eval::{EvalError, Evaluator, Figures, Stage};
use super::jobs::WorkerMsg;
use super::sensitivity::{self, ProbeEvent, ProbeJob, SensitivityGrid};
use super::session::Keyer;
use super::targets::{Target, find};
use crate::compress::Bits;
use crate::compress::recipe::{GranularityKind, PruneMethod, Scheme};
use crate::units;

/// What a configuration must satisfy.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Budget {
    /// Packed bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<f64>,
    /// Single-sample latency in µs: measured on this machine, or estimated on the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<f64>,
    /// Flash for the packed model plus the target's code allowance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flash_bytes: Option<f64>,
    /// RAM for the peak activation arena.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram_bytes: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
}

/// A budget term that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "budget \"{0}\": write kind=value, e.g. size=27KB, latency=5us, flash=1MiB, ram=256KiB or target=cortex-m4"
    )]
    NoKind(String),
    #[error("budget \"{term}\": unknown kind \"{kind}\"; use size, latency, flash, ram or target")]
    UnknownKind { term: String, kind: String },
    #[error("\"{0}\" is not a size; write e.g. 100KiB, 1.5MiB or 20000")]
    NotASize(String),
    #[error("unknown size unit \"{0}\"; use B, KiB, MiB, GiB, kB, MB or GB")]
    SizeUnit(String),
    #[error("\"{0}\" is not a time; write e.g. 20us or 1.5ms")]
    NotATime(String),
    #[error("unknown time unit \"{0}\"; use ns, us, ms or s")]
    TimeUnit(String),
    #[error("\"{0}\": a budget must be positive")]
    NotPositive(String),
    #[error(transparent)]
    Target(#[from] super::targets::TargetError),
}

impl Budget {
    /// Adds `kind=value` terms (`size=27KB`, `latency=5us`, `flash=1MiB`, `ram=256KiB`,
    /// `target=cortex-m4`), comma-separated.
    pub fn add(&mut self, spec: &str, targets: &[Target]) -> Result<(), BudgetError> {
        for term in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (kind, value) = term
                .split_once('=')
                .ok_or_else(|| BudgetError::NoKind(term.to_string()))?;
            let value = value.trim();
            match kind.trim() {
                "size" => self.size_bytes = Some(parse_bytes(value)?),
                "flash" => self.flash_bytes = Some(parse_bytes(value)?),
                "ram" => self.ram_bytes = Some(parse_bytes(value)?),
                "latency" => self.latency_us = Some(parse_micros(value)?),
                "target" => {
                    let t = find(targets, value)?;
                    if !t.measured {
                        self.flash_bytes = t.flash_bytes.map(|f| f as f64).or(self.flash_bytes);
                    }
                    self.ram_bytes = t.ram_bytes.map(|r| r as f64).or(self.ram_bytes);
                    self.target = Some(t);
                }
                other => {
                    return Err(BudgetError::UnknownKind {
                        term: term.to_string(),
                        kind: other.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.size_bytes.is_none()
            && self.latency_us.is_none()
            && self.flash_bytes.is_none()
            && self.ram_bytes.is_none()
    }

    /// The code allowance counted against flash.
    fn allowance(&self) -> f64 {
        self.target
            .as_ref()
            .map_or(0.0, |t| t.code_allowance_bytes as f64)
    }

    /// Whether latency is estimated on a device rather than measured here.
    fn estimated_latency(&self) -> bool {
        self.target
            .as_ref()
            .is_some_and(|t| !t.measured && t.clock_hz.is_some())
    }

    /// The packed bytes a configuration may take (size budget, and flash minus allowance).
    fn bytes_limit(&self) -> Option<f64> {
        let flash = self.flash_bytes.map(|f| f - self.allowance());
        match (self.size_bytes, flash) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// `size ≤ 27.0 KiB, RAM ≤ 256 KiB (cortex-m4)`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = self.size_bytes {
            parts.push(format!("size ≤ {}", units::bytes(s)));
        }
        if let Some(f) = self.flash_bytes {
            parts.push(format!(
                "flash ≤ {} (model + {} code)",
                units::bytes(f),
                units::bytes(self.allowance())
            ));
        }
        if let Some(r) = self.ram_bytes {
            parts.push(format!("RAM ≤ {}", units::bytes(r)));
        }
        if let Some(l) = self.latency_us {
            let how = if self.estimated_latency() {
                "estimated on the target"
            } else {
                "measured here"
            };
            parts.push(format!("latency ≤ {} ({how})", units::micros(l)));
        }
        let mut s = parts.join(", ");
        if let Some(t) = &self.target {
            s.push_str(&format!(" [{}]", t.name));
        }
        s
    }
}

/// What the search optimises.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Objective {
    /// The most accurate configuration within the budget.
    Accuracy,
    /// The smallest configuration that loses at most `max_drop_pt` points of accuracy.
    Smallest { max_drop_pt: f64 },
}

/// A search to run.
#[derive(Debug, Clone)]
pub struct SearchJob {
    pub keyer: Keyer,
    pub budget: Budget,
    pub objective: Objective,
    pub seed: u64,
    /// Stops and answers with the best point measured so far after this long.
    pub time_limit: Duration,
    /// Perturbed restarts of the hill climb after it settles.
    pub restarts: usize,
    /// Full-set figures already known, by key (filled in by the session).
    pub cache: HashMap<u64, Figures>,
    /// The per-layer options: sensitivity grid sparsities and bit widths (plus dense).
    pub grid: SensitivityGrid,
}

impl PartialEq for SearchJob {
    fn eq(&self, other: &Self) -> bool {
        self.budget == other.budget
            && self.objective == other.objective
            && self.seed == other.seed
            && self.time_limit == other.time_limit
            && self.grid == other.grid
    }
}

impl SearchJob {
    pub fn new(keyer: Keyer, budget: Budget, objective: Objective, seed: u64) -> SearchJob {
        SearchJob {
            keyer,
            budget,
            objective,
            seed,
            time_limit: Duration::from_secs(60),
            restarts: 3,
            cache: HashMap::new(),
            grid: SensitivityGrid::default(),
        }
    }
}

/// How a measured point stands against one part of the budget.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// `size`, `flash`, `RAM`, `latency`.
    pub what: String,
    pub need: f64,
    pub limit: f64,
    /// What the figure is (`bytes`, `µs`).
    pub unit: String,
    /// The layer that contributes most to `need`.
    pub dominant_layer: Option<String>,
    /// That layer's share of `need`.
    pub dominant_share: Option<f64>,
}

impl Check {
    pub fn meets(&self) -> bool {
        self.need <= self.limit
    }

    /// How far over the limit, as a fraction of it (0 when within).
    pub fn excess(&self) -> f64 {
        ((self.need - self.limit) / self.limit.max(1e-9)).max(0.0)
    }

    fn amount(&self, v: f64) -> String {
        if self.unit == "µs" {
            units::micros(v)
        } else {
            units::bytes(v)
        }
    }

    /// `size 27.4 KiB > 27.0 KiB by 412 B (1.5 %); fc1 holds 71 % of it`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} {} {} {}",
            self.what,
            self.amount(self.need),
            if self.meets() { "≤" } else { ">" },
            self.amount(self.limit)
        );
        if !self.meets() {
            s += &format!(
                " by {} ({:.1} %)",
                self.amount(self.need - self.limit),
                self.excess() * 100.0
            );
            if let (Some(l), Some(share)) = (&self.dominant_layer, self.dominant_share) {
                s += &format!("; {l} holds {:.0} % of it", share * 100.0);
            }
        }
        s
    }
}

/// The search's answer: a measured configuration and how it stands against the budget.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    #[serde(skip)]
    pub key: u64,
    pub config: Config,
    pub figures: Figures,
    pub checks: Vec<Check>,
    pub meets_budget: bool,
}

impl Candidate {
    pub fn accuracy(&self) -> f64 {
        self.figures.accuracy.map_or(0.0, |a| a.value)
    }
}

/// How a search ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchOutcome {
    pub budget: String,
    pub objective: Objective,
    pub seed: u64,
    /// The best point measured; `meets_budget` says whether it is within the budget.
    pub best: Option<Candidate>,
    pub dense_accuracy: Option<f64>,
    /// Configurations measured on the whole set (cached ones included).
    pub evaluated: usize,
    pub elapsed_s: f64,
    pub stopped_by_time: bool,
    pub cancelled: bool,
    pub notes: Vec<String>,
}

impl SearchOutcome {
    /// One line for a status bar.
    pub fn summary(&self) -> String {
        match &self.best {
            Some(b) if b.meets_budget => format!(
                "search: {} at {} within {} ({} configurations measured; O loads it)",
                units::percent(b.accuracy()),
                units::bytes(b.figures.size_bytes.unwrap_or(0) as f64),
                self.budget,
                self.evaluated
            ),
            Some(b) => format!(
                "search: nothing meets {}; the closest misses it: {} (O loads it)",
                self.budget,
                b.checks
                    .iter()
                    .filter(|c| !c.meets())
                    .map(Check::describe)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            None if self.cancelled => "search cancelled before any point was measured".into(),
            None => format!("search found nothing to measure: {}", self.notes.join("; ")),
        }
    }
}

/// What a search reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchEvent {
    Measured {
        key: u64,
        config: Config,
        label: Option<String>,
        stage: Stage,
        figures: Box<Figures>,
    },
    Progress {
        done: usize,
        total: usize,
    },
}

impl SearchEvent {
    pub fn into_msg(self, sweep: u64) -> WorkerMsg {
        match self {
            SearchEvent::Measured {
                key,
                config,
                label,
                stage,
                figures,
            } => WorkerMsg::Measured {
                sweep,
                key,
                config,
                label,
                stage,
                figures: *figures,
            },
            SearchEvent::Progress { done, total } => WorkerMsg::Progress { sweep, done, total },
        }
    }
}

/// One per-layer choice: a sparsity (L1) and a weight width (symmetric, per channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Choice {
    sparsity: Permille,
    /// 32 stands for f32.
    bits: u8,
}

impl Choice {
    fn setting(self) -> LayerSetting {
        let mut s = LayerSetting::default();
        if self.sparsity > 0 {
            s.prune = PruneMethod::L1;
            s.sparsity = self.sparsity;
        }
        if self.bits < 32 {
            s.bits = Bits::Int(u32::from(self.bits));
            s.scheme = Scheme::Symmetric;
            s.granularity = GranularityKind::Channel;
        }
        s
    }
}

/// A layer's option with its predicted accuracy drop and exact cost.
#[derive(Debug, Clone, Copy)]
struct Option_ {
    choice: Choice,
    /// Predicted accuracy drop (fraction) when this layer alone takes the option.
    drop: f64,
    bytes: f64,
    /// Predicted latency contribution (µs), when a latency budget needs one.
    latency: f64,
}

/// The per-layer cost of one setting, measured on the layer alone.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LayerCost {
    pub size_bytes: u64,
    pub macs: u64,
    pub format: String,
    /// Single-sample time of the layer alone on this machine (µs), when asked for.
    pub latency_us: Option<f64>,
}

struct Search<'a, E: Evaluator + ?Sized> {
    evaluator: &'a E,
    job: &'a SearchJob,
    cancel: &'a AtomicBool,
    report: &'a (dyn Fn(SearchEvent) + Sync),
    start: Instant,
    /// Full-set figures known, by key (the job's cache and what this search measured).
    known: HashMap<u64, Figures>,
    latency: HashMap<u64, f64>,
    failed: HashMap<u64, String>,
    measured: usize,
    stopped_by_time: bool,
    notes: Vec<String>,
    dense: Option<Figures>,
    activation_bits: Option<u8>,
    /// The best candidate so far.
    best: Option<Candidate>,
}

/// Runs a search; always returns the best point measured (if any was).
pub fn run<E: Evaluator + ?Sized>(
    evaluator: &E,
    job: &SearchJob,
    cancel: &AtomicBool,
    report: &(dyn Fn(SearchEvent) + Sync),
) -> SearchOutcome {
    let mut s = Search {
        evaluator,
        job,
        cancel,
        report,
        start: Instant::now(),
        known: job.cache.clone(),
        latency: HashMap::new(),
        failed: HashMap::new(),
        measured: 0,
        stopped_by_time: false,
        notes: Vec::new(),
        dense: None,
        activation_bits: None,
        best: None,
    };
    if let Err(e) = s.search()
        && !e.is_cancelled()
    {
        s.notes.push(e.to_string());
    }
    s.finish()
}

impl<E: Evaluator + ?Sized> Search<'_, E> {
    fn layers(&self) -> usize {
        self.job.keyer.info.layers.len()
    }

    fn out_of_time(&mut self) -> bool {
        if self.start.elapsed() >= self.job.time_limit {
            self.stopped_by_time = true;
        }
        self.stopped_by_time || self.cancel.load(Ordering::Relaxed)
    }

    fn progress(&self, total: usize) {
        (self.report)(SearchEvent::Progress {
            done: self.measured,
            total: total.max(self.measured),
        });
    }

    /// Full-set figures of `config`, measured unless known.
    fn measure(&mut self, config: &Config, label: &str) -> Result<Option<Figures>, EvalError> {
        let key = self.job.keyer.key_of(config);
        if let Some(f) = self.known.get(&key) {
            return Ok(Some(f.clone()));
        }
        if self.failed.contains_key(&key) {
            return Ok(None);
        }
        if self.out_of_time() {
            return Err(EvalError::Cancelled);
        }
        match self.evaluator.evaluate(config, Stage::Full, self.cancel) {
            Ok(f) => {
                self.measured += 1;
                (self.report)(SearchEvent::Measured {
                    key,
                    config: config.clone(),
                    label: Some(label.to_string()),
                    stage: Stage::Full,
                    figures: Box::new(f.clone()),
                });
                self.known.insert(key, f.clone());
                Ok(Some(f))
            }
            Err(e) if e.is_cancelled() => Err(e),
            Err(e) => {
                self.failed.insert(key, e.to_string());
                Ok(None)
            }
        }
    }

    /// Single-sample latency measured here (cached per key).
    fn host_latency(&mut self, config: &Config) -> Result<Option<f64>, EvalError> {
        let key = self.job.keyer.key_of(config);
        if let Some(l) = self.latency.get(&key) {
            return Ok(Some(*l));
        }
        match self.evaluator.evaluate(config, Stage::Latency, self.cancel) {
            Ok(f) => {
                let l = f.latency_us;
                (self.report)(SearchEvent::Measured {
                    key,
                    config: config.clone(),
                    label: None,
                    stage: Stage::Latency,
                    figures: Box::new(f),
                });
                if let Some(l) = l {
                    self.latency.insert(key, l);
                }
                Ok(l)
            }
            Err(e) if e.is_cancelled() => Err(e),
            Err(_) => Ok(None),
        }
    }

    /// Checks a measured configuration against every part of the budget.
    fn checks(&mut self, config: &Config, f: &Figures) -> Result<Vec<Check>, EvalError> {
        let b = &self.job.budget;
        let info = &self.job.keyer.info;
        let size = f.size_bytes.unwrap_or(0) as f64;
        let (big_layer, big_share) = f
            .layers
            .iter()
            .zip(&info.layers)
            .max_by_key(|(l, _)| l.size_bytes)
            .map(|(l, i)| {
                (
                    Some(i.name.clone()),
                    Some(l.size_bytes as f64 / size.max(1.0)),
                )
            })
            .unwrap_or((None, None));
        let mut out = Vec::new();
        if let Some(limit) = b.size_bytes {
            out.push(Check {
                what: "size".into(),
                need: size,
                limit,
                unit: "bytes".into(),
                dominant_layer: big_layer.clone(),
                dominant_share: big_share,
            });
        }
        if let Some(limit) = b.flash_bytes {
            out.push(Check {
                what: "flash".into(),
                need: size + b.allowance(),
                limit,
                unit: "bytes".into(),
                dominant_layer: big_layer.clone(),
                dominant_share: big_share.map(|s| s * size / (size + b.allowance()).max(1.0)),
            });
        }
        if let Some(limit) = b.ram_bytes {
            out.push(Check {
                what: "RAM".into(),
                need: f.arena_bytes.unwrap_or(0) as f64,
                limit,
                unit: "bytes".into(),
                dominant_layer: f.arena_layer.clone(),
                dominant_share: Some(1.0),
            });
        }
        if let Some(limit) = b.latency_us {
            let (need, per_layer) = match &b.target {
                Some(t) if b.estimated_latency() => {
                    let per: Vec<f64> = f
                        .layers
                        .iter()
                        .map(|l| {
                            t.latency_estimate_us(std::slice::from_ref(l), config.activation_bits)
                                .unwrap_or(0.0)
                        })
                        .collect();
                    (per.iter().sum(), per)
                }
                _ => (
                    self.host_latency(config)?.unwrap_or(f64::INFINITY),
                    Vec::new(),
                ),
            };
            let dominant = per_layer
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, v)| (info.layers[i].name.clone(), v / need.max(1e-9)));
            out.push(Check {
                what: "latency".into(),
                need,
                limit,
                unit: "µs".into(),
                dominant_layer: dominant.as_ref().map(|d| d.0.clone()),
                dominant_share: dominant.map(|d| d.1),
            });
        }
        Ok(out)
    }

    /// Measures `config` as a candidate, keeping it if it is the best so far.
    fn candidate(&mut self, config: &Config, label: &str) -> Result<Option<Candidate>, EvalError> {
        let Some(f) = self.measure(config, label)? else {
            return Ok(None);
        };
        let checks = self.checks(config, &f)?;
        let candidate = Candidate {
            key: self.job.keyer.key_of(config),
            config: config.clone(),
            meets_budget: checks.iter().all(Check::meets),
            figures: f,
            checks,
        };
        if self.best.as_ref().is_none_or(|b| self.beats(&candidate, b)) {
            self.best = Some(candidate.clone());
        }
        Ok(Some(candidate))
    }

    /// Whether `c` beats `b`: within the budget beats outside it; within it, the objective
    /// decides (ties to the smaller, then to the lower key, so the order points are measured
    /// in does not matter); outside it, the smaller excess.
    fn beats(&self, c: &Candidate, b: &Candidate) -> bool {
        let size = |x: &Candidate| x.figures.size_bytes.unwrap_or(u64::MAX);
        let excess = |x: &Candidate| x.checks.iter().map(Check::excess).fold(0.0, f64::max);
        match (c.meets_budget, b.meets_budget) {
            (true, false) => true,
            (false, true) => false,
            (true, true) => match self.job.objective {
                Objective::Accuracy => c
                    .accuracy()
                    .total_cmp(&b.accuracy())
                    .then(size(b).cmp(&size(c)))
                    .then(b.key.cmp(&c.key))
                    .is_gt(),
                Objective::Smallest { .. } => {
                    let ok = |x: &Candidate| self.within_drop(x.accuracy());
                    match (ok(c), ok(b)) {
                        (true, false) => true,
                        (false, true) => false,
                        (true, true) => size(c)
                            .cmp(&size(b))
                            .then(b.accuracy().total_cmp(&c.accuracy()))
                            .then(c.key.cmp(&b.key))
                            .is_lt(),
                        (false, false) => c
                            .accuracy()
                            .total_cmp(&b.accuracy())
                            .then(b.key.cmp(&c.key))
                            .is_gt(),
                    }
                }
            },
            (false, false) => excess(c)
                .total_cmp(&excess(b))
                .then(b.accuracy().total_cmp(&c.accuracy()))
                .then(c.key.cmp(&b.key))
                .is_lt(),
        }
    }

    fn within_drop(&self, accuracy: f64) -> bool {
        match (self.job.objective, &self.dense) {
            (Objective::Smallest { max_drop_pt }, Some(d)) => {
                let dense = d.accuracy.map_or(0.0, |a| a.value);
                (dense - accuracy) * 100.0 <= max_drop_pt + 1e-9
            }
            _ => true,
        }
    }

    fn search(&mut self) -> Result<(), EvalError> {
        let n = self.layers();
        if n == 0 {
            self.notes.push("the model has no layer to compress".into());
            return Ok(());
        }
        // 1. The dense model, and whether activations must be quantized to fit RAM.
        let dense_config = Config::dense(n);
        let Some(dense) = self.measure(&dense_config, "dense")? else {
            self.notes
                .push("the dense model could not be measured".into());
            return Ok(());
        };
        self.dense = Some(dense.clone());
        if let (Some(ram), Some(arena)) = (self.job.budget.ram_bytes, dense.arena_bytes)
            && arena as f64 > ram
        {
            self.activation_bits = Some(8);
            self.notes.push(format!(
                "the f32 activation arena ({}) exceeds the RAM budget: activations quantized to 8 bits",
                units::bytes(arena as f64)
            ));
        }
        self.candidate(&dense_config, "dense")?;

        // 2. Sensitivity curves, measured (or found in the cache).
        let curves = self.curves()?;
        // 3. Per-layer options with exact bytes and predicted drops.
        let options = self.options(&curves, &dense)?;
        let model = Predictor::new(
            &options,
            &self.job.budget,
            &dense,
            self.dense_host_latency(),
        );
        let total_guess = 40;
        self.progress(total_guess);

        // 4. Allocation, then verification and refinement on measured points.
        let mut current = self.allocate(&options, &model);
        let here = self.candidate(&self.config_of(&current), "search: allocation")?;
        self.climb(&mut current, here, &options, &model)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.job.seed);
        for r in 0..self.job.restarts {
            if self.out_of_time() {
                break;
            }
            let Some(best) = self.best.as_ref().map(|b| b.config.clone()) else {
                break;
            };
            let mut choices = self.choices_of(&best, &options);
            // A few random one-step moves away from the best point, then climb again.
            for _ in 0..2 + r {
                let layer = rng.random_range(0..n);
                let moves = neighbours(&options[layer], choices[layer]);
                if let Some(m) = moves.choose(&mut rng) {
                    choices[layer] = *m;
                }
            }
            let here = self.candidate(&self.config_of(&choices), "search: restart")?;
            self.climb(&mut choices, here, &options, &model)?;
            self.progress(total_guess);
        }
        // 5. The answer's latency, measured here.
        if let Some(best) = self.best.clone()
            && !self.out_of_time()
        {
            self.host_latency(&best.config)?;
        }
        Ok(())
    }

    /// The dense model's latency measured here, when a host latency budget needs it.
    fn dense_host_latency(&mut self) -> Option<f64> {
        if self.job.budget.latency_us.is_none() || self.job.budget.estimated_latency() {
            return None;
        }
        self.host_latency(&Config::dense(self.layers()))
            .ok()
            .flatten()
    }

    /// Sensitivity probes for the grid: measured unless cached; returns accuracy by probe
    /// configuration key.
    fn curves(&mut self) -> Result<HashMap<u64, f64>, EvalError> {
        let info = &self.job.keyer.info;
        let grid = SensitivityGrid {
            method: PruneMethod::L1,
            ..self.job.grid.clone()
        };
        let probes = sensitivity::probes(info, &grid);
        let dense_acc = self
            .dense
            .as_ref()
            .and_then(|d| d.accuracy)
            .map(|a| a.value);
        let mut chains = Vec::new();
        for chain in sensitivity::chains(&probes) {
            let points: Vec<_> = chain
                .iter()
                .map(|p| {
                    let config = p.config(info.layers.len());
                    super::jobs::EvalRequest {
                        key: self.job.keyer.key_of(&config),
                        config,
                        stages: vec![Stage::Full],
                    }
                })
                .filter(|r| !self.known.contains_key(&r.key))
                .collect();
            if !points.is_empty() {
                chains.push(sensitivity::ProbeChain {
                    layer: chain[0].layer,
                    points,
                });
            }
        }
        if !chains.is_empty() {
            let job = ProbeJob {
                chains,
                dense: None,
                dense_accuracy: dense_acc,
                classes: info.classes(),
            };
            let got = std::sync::Mutex::new(Vec::new());
            self.evaluator.measure_probes(&job, self.cancel, &|e| {
                if let ProbeEvent::Measured { key, figures } = e
                    && let Ok(mut g) = got.lock()
                {
                    g.push((key, figures));
                }
            });
            if self.cancel.load(Ordering::Relaxed) {
                return Err(EvalError::Cancelled);
            }
            let got = got.into_inner().unwrap_or_default();
            let configs: HashMap<u64, Config> = job
                .chains
                .iter()
                .flat_map(|c| c.points.iter().map(|p| (p.key, p.config.clone())))
                .collect();
            for (key, figures) in got {
                self.measured += 1;
                (self.report)(SearchEvent::Measured {
                    key,
                    config: configs
                        .get(&key)
                        .cloned()
                        .unwrap_or_else(|| Config::dense(0)),
                    label: None,
                    stage: Stage::Full,
                    figures: Box::new(figures.clone()),
                });
                self.known.insert(key, figures);
            }
        }
        Ok(probes
            .iter()
            .filter_map(|p| {
                let key = self.job.keyer.key_of(&p.config(info.layers.len()));
                Some((key, self.known.get(&key)?.accuracy?.value))
            })
            .collect())
    }

    /// Every layer's options with predicted drop and exact cost.
    fn options(
        &mut self,
        curves: &HashMap<u64, f64>,
        dense: &Figures,
    ) -> Result<Vec<Vec<Option_>>, EvalError> {
        let info = self.job.keyer.info.clone();
        let n = info.layers.len();
        let dense_acc = dense.accuracy.map_or(0.0, |a| a.value);
        let chance = 1.0 / info.classes() as f64;
        let worst = (dense_acc - chance).max(0.0);
        let mut sparsities = vec![0];
        sparsities.extend(&self.job.grid.sparsities);
        let mut bits = vec![32u8];
        bits.extend(&self.job.grid.bits);
        let measured_drop = |config: Config| -> f64 {
            let key = self.job.keyer.key_of(&config);
            match curves.get(&key) {
                Some(a) => (dense_acc - a).max(0.0),
                // Not measured: its curve stopped after collapsing, or it failed.
                None => worst,
            }
        };
        let estimate_latency = self.job.budget.latency_us.is_some();
        let host_latency = estimate_latency && !self.job.budget.estimated_latency();
        let mut out = Vec::with_capacity(n);
        for layer in 0..n {
            let mut settings = Vec::new();
            let mut choices = Vec::new();
            for &s in &sparsities {
                for &b in &bits {
                    let c = Choice {
                        sparsity: s,
                        bits: b,
                    };
                    choices.push(c);
                    settings.push(c.setting());
                }
            }
            if self.out_of_time() {
                return Err(EvalError::Cancelled);
            }
            let costs = self
                .evaluator
                .layer_costs(&info, layer, &settings, host_latency)?;
            let mut opts = Vec::new();
            for (c, cost) in choices.into_iter().zip(costs) {
                let single = |s: Option<LayerSetting>| {
                    let mut config = Config::dense(n);
                    if let Some(s) = s {
                        config.layers[layer] = s;
                    }
                    config
                };
                let dp = if c.sparsity == 0 {
                    0.0
                } else {
                    measured_drop(single(Some(
                        Choice {
                            sparsity: c.sparsity,
                            bits: 32,
                        }
                        .setting(),
                    )))
                };
                let db = if c.bits == 32 {
                    0.0
                } else {
                    measured_drop(single(Some(
                        Choice {
                            sparsity: 0,
                            bits: c.bits,
                        }
                        .setting(),
                    )))
                };
                let latency = match (&self.job.budget.target, host_latency) {
                    (_, true) => cost.latency_us.unwrap_or(0.0),
                    (Some(t), false) => t
                        .latency_estimate_us(
                            &[super::eval::LayerFigures {
                                macs: cost.macs,
                                format: cost.format.clone(),
                                ..Default::default()
                            }],
                            self.activation_bits,
                        )
                        .unwrap_or(0.0),
                    _ => 0.0,
                };
                opts.push(Option_ {
                    choice: c,
                    drop: (dp + db).min(worst),
                    bytes: cost.size_bytes as f64,
                    latency,
                });
            }
            out.push(opts);
        }
        Ok(out)
    }

    /// The Lagrangian allocation: per layer, the option minimising `drop + λ·cost`, with the
    /// smallest λ whose predicted cost meets the limits; the slack is then spent on upgrades.
    /// With an accuracy-drop objective, the option minimising `cost + μ·drop` with the
    /// smallest μ whose predicted drop stays within the limit.
    fn allocate(&self, options: &[Vec<Option_>], model: &Predictor) -> Vec<Choice> {
        let argmin = |score: &dyn Fn(&Option_) -> f64| -> Vec<Choice> {
            options
                .iter()
                .map(|opts| {
                    opts.iter()
                        .min_by(|a, b| {
                            score(a)
                                .total_cmp(&score(b))
                                .then(model.cost(a).total_cmp(&model.cost(b)))
                                .then(a.choice.cmp(&b.choice))
                        })
                        .map_or(DENSE, |o| o.choice)
                })
                .collect()
        };
        let bisect = |ok: &dyn Fn(&[Choice]) -> bool, pick: &dyn Fn(f64) -> Vec<Choice>| {
            let (mut lo, mut hi) = (0.0f64, 1.0f64);
            while !ok(&pick(hi)) && hi < 1e15 {
                hi *= 4.0;
            }
            if !ok(&pick(hi)) {
                return pick(hi);
            }
            for _ in 0..60 {
                let mid = 0.5 * (lo + hi);
                if ok(&pick(mid)) {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            pick(hi)
        };
        match self.job.objective {
            Objective::Accuracy => {
                if !model.limited() {
                    return argmin(&|o| o.drop);
                }
                let fits = |p: &[Choice]| model.fits(p);
                let mut best = bisect(&fits, &|l| argmin(&|o| o.drop + l * model.cost(o)));
                self.spend_slack(&mut best, options, model);
                best
            }
            Objective::Smallest { max_drop_pt } => {
                let allowed = max_drop_pt / 100.0;
                let ok = |p: &[Choice]| model.drop(p) <= allowed && model.fits(p);
                bisect(&ok, &|mu| argmin(&|o| model.size_cost(o) + mu * o.drop))
            }
        }
    }

    /// Upgrades layers while the predicted cost still fits: each time the upgrade that
    /// lowers the predicted drop most.
    fn spend_slack(&self, pick: &mut [Choice], options: &[Vec<Option_>], model: &Predictor) {
        loop {
            let mut best: Option<(f64, usize, Choice)> = None;
            for (layer, opts) in options.iter().enumerate() {
                let now = model.option(layer, pick[layer]).map_or(0.0, |o| o.drop);
                for o in opts.iter().filter(|o| o.drop < now - 1e-12) {
                    let mut trial = pick.to_vec();
                    trial[layer] = o.choice;
                    if !model.fits(&trial) {
                        continue;
                    }
                    let gain = now - o.drop;
                    if best.is_none_or(|(g, l, c)| {
                        gain > g + 1e-12 || (gain >= g - 1e-12 && (layer, o.choice) < (l, c))
                    }) {
                        best = Some((gain, layer, o.choice));
                    }
                }
            }
            match best {
                Some((_, layer, choice)) => pick[layer] = choice,
                None => return,
            }
        }
    }

    fn config_of(&self, choices: &[Choice]) -> Config {
        let mut config = Config::dense(choices.len());
        for (l, c) in config.layers.iter_mut().zip(choices) {
            *l = c.setting();
        }
        config.activation_bits = self.activation_bits;
        config
    }

    fn choices_of(&self, config: &Config, options: &[Vec<Option_>]) -> Vec<Choice> {
        config
            .layers
            .iter()
            .zip(options)
            .map(|(l, opts)| {
                let c = Choice {
                    sparsity: if l.prune == PruneMethod::L1 {
                        l.sparsity
                    } else {
                        0
                    },
                    bits: match l.bits {
                        Bits::Int(b) => u8::try_from(b).unwrap_or(32),
                        _ => 32,
                    },
                };
                if opts.iter().any(|o| o.choice == c) {
                    c
                } else {
                    DENSE
                }
            })
            .collect()
    }

    /// Hill climb on measured points. The moves from the current point: one layer one step
    /// (sparsity or width), and the pairs of one layer up and another down that the model
    /// predicts best; moves the model says cannot fit are not measured while the current
    /// point fits. Each round measures its moves in a fixed order and goes to the best one if
    /// it beats the current point.
    fn climb(
        &mut self,
        current: &mut Vec<Choice>,
        mut here: Option<Candidate>,
        options: &[Vec<Option_>],
        model: &Predictor,
    ) -> Result<(), EvalError> {
        loop {
            if self.out_of_time() {
                return Ok(());
            }
            let fits_now = here.as_ref().is_some_and(|h| h.meets_budget);
            let mut singles = Vec::new();
            for (layer, opts) in options.iter().enumerate() {
                for m in neighbours(opts, current[layer]) {
                    let mut trial = current.clone();
                    trial[layer] = m;
                    singles.push(trial);
                }
            }
            let mut pairs: Vec<(f64, Vec<Choice>)> = Vec::new();
            for a in &singles {
                for b in &singles {
                    let mut trial = current.clone();
                    let mut changed = 0;
                    for l in 0..trial.len() {
                        if a[l] != current[l] {
                            trial[l] = a[l];
                            changed += 1;
                        }
                        if b[l] != current[l] && trial[l] == current[l] {
                            trial[l] = b[l];
                            changed += 1;
                        }
                    }
                    if changed == 2 && model.fits(&trial) {
                        pairs.push((model.drop(&trial), trial));
                    }
                }
            }
            pairs.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
            pairs.dedup_by(|x, y| x.1 == y.1);
            let mut moves: Vec<Vec<Choice>> = singles;
            moves.extend(pairs.into_iter().take(PAIR_MOVES).map(|p| p.1));
            moves.retain(|m| !fits_now || model.fits(m));
            moves.sort();
            moves.dedup();
            let mut best_move: Option<(Vec<Choice>, Candidate)> = None;
            for trial in moves {
                let config = self.config_of(&trial);
                let c = match self.candidate(&config, "search: candidate") {
                    Ok(Some(c)) => c,
                    Ok(None) => continue,
                    Err(e) if e.is_cancelled() => return Ok(()),
                    Err(e) => return Err(e),
                };
                let bar = best_move.as_ref().map(|b| &b.1).or(here.as_ref());
                if bar.is_none_or(|b| self.beats(&c, b)) {
                    best_move = Some((trial, c));
                }
            }
            match best_move {
                Some((t, c)) => {
                    *current = t;
                    here = Some(c);
                }
                None => return Ok(()),
            }
        }
    }

    fn finish(self) -> SearchOutcome {
        let mut notes = self.notes;
        if self.stopped_by_time {
            notes.push(format!(
                "stopped at the time limit ({:.0} s): the best point measured until then is the answer",
                self.job.time_limit.as_secs_f64()
            ));
        }
        if !self.failed.is_empty() {
            notes.push(format!(
                "{} configurations could not be measured (e.g. {})",
                self.failed.len(),
                self.failed.values().next().cloned().unwrap_or_default()
            ));
        }
        let mut best = self.best;
        if let Some(b) = &mut best
            && let Some(l) = self.latency.get(&b.key)
        {
            b.figures.latency_us = Some(*l);
        }
        SearchOutcome {
            budget: self.job.budget.describe(),
            objective: self.job.objective,
            seed: self.job.seed,
            best,
            dense_accuracy: self.dense.and_then(|d| d.accuracy).map(|a| a.value),
            evaluated: self.known.len(),
            elapsed_s: self.start.elapsed().as_secs_f64(),
            stopped_by_time: self.stopped_by_time,
            cancelled: self.cancel.load(Ordering::Relaxed),
            notes,
        }
    }
}

/// The dense choice of a layer.
const DENSE: Choice = Choice {
    sparsity: 0,
    bits: 32,
};

/// Pair moves (one layer up, another down) measured per round of the climb.
const PAIR_MOVES: usize = 6;

/// The additive model of a configuration's cost and accuracy drop built from the per-layer
/// options: exact bytes, predicted latency, predicted drop.
struct Predictor<'a> {
    options: &'a [Vec<Option_>],
    /// Bytes outside the compressible layers.
    other_bytes: f64,
    bytes_limit: Option<f64>,
    latency_limit: Option<f64>,
    /// Latency outside the compressible layers (host latency only).
    latency_offset: f64,
}

impl<'a> Predictor<'a> {
    fn new(
        options: &'a [Vec<Option_>],
        budget: &Budget,
        dense: &Figures,
        dense_host_latency: Option<f64>,
    ) -> Predictor<'a> {
        let other_bytes = (dense.size_bytes.unwrap_or(0) as f64
            - dense
                .layers
                .iter()
                .map(|l| l.size_bytes as f64)
                .sum::<f64>())
        .max(0.0);
        let dense_layers_latency: f64 = options
            .iter()
            .filter_map(|o| o.iter().find(|x| x.choice == DENSE))
            .map(|o| o.latency)
            .sum();
        Predictor {
            options,
            other_bytes,
            bytes_limit: budget.bytes_limit(),
            latency_limit: budget.latency_us,
            latency_offset: dense_host_latency.map_or(0.0, |d| (d - dense_layers_latency).max(0.0)),
        }
    }

    fn option(&self, layer: usize, c: Choice) -> Option<&Option_> {
        self.options.get(layer)?.iter().find(|o| o.choice == c)
    }

    fn chosen<'b>(&'b self, pick: &'b [Choice]) -> impl Iterator<Item = &'b Option_> + 'b {
        pick.iter()
            .enumerate()
            .filter_map(|(l, c)| self.option(l, *c))
    }

    fn limited(&self) -> bool {
        self.bytes_limit.is_some() || self.latency_limit.is_some()
    }

    fn bytes(&self, pick: &[Choice]) -> f64 {
        self.other_bytes + self.chosen(pick).map(|o| o.bytes).sum::<f64>()
    }

    fn latency(&self, pick: &[Choice]) -> f64 {
        self.latency_offset + self.chosen(pick).map(|o| o.latency).sum::<f64>()
    }

    fn drop(&self, pick: &[Choice]) -> f64 {
        self.chosen(pick).map(|o| o.drop).sum()
    }

    fn fits(&self, pick: &[Choice]) -> bool {
        self.bytes_limit.is_none_or(|b| self.bytes(pick) <= b)
            && self.latency_limit.is_none_or(|l| self.latency(pick) <= l)
    }

    /// An option's cost against the limits (each resource as a fraction of what it may use).
    fn cost(&self, o: &Option_) -> f64 {
        let mut c = 0.0;
        if let Some(b) = self.bytes_limit {
            c += o.bytes / (b - self.other_bytes).max(1.0);
        }
        if let Some(l) = self.latency_limit {
            c += o.latency / (l - self.latency_offset).max(1e-6);
        }
        c
    }

    /// What an accuracy-drop objective minimises: latency when only latency is limited, else
    /// bytes.
    fn size_cost(&self, o: &Option_) -> f64 {
        if self.latency_limit.is_some() && self.bytes_limit.is_none() {
            o.latency
        } else {
            o.bytes
        }
    }
}

/// The options one step away from `c`: the next sparsity up or down (same bits), the next
/// width up or down (same sparsity).
fn neighbours(options: &[Option_], c: Choice) -> Vec<Choice> {
    let mut sparsities: Vec<Permille> = options.iter().map(|o| o.choice.sparsity).collect();
    sparsities.sort_unstable();
    sparsities.dedup();
    let mut bits: Vec<u8> = options.iter().map(|o| o.choice.bits).collect();
    bits.sort_unstable();
    bits.dedup();
    let step = |v: &[u16], x: u16| -> Vec<u16> {
        let i = v.iter().position(|y| *y == x);
        match i {
            Some(i) => [i.checked_sub(1), (i + 1 < v.len()).then_some(i + 1)]
                .into_iter()
                .flatten()
                .map(|j| v[j])
                .collect(),
            None => Vec::new(),
        }
    };
    let bits16: Vec<u16> = bits.iter().map(|b| u16::from(*b)).collect();
    let mut out = Vec::new();
    for s in step(&sparsities, c.sparsity) {
        out.push(Choice {
            sparsity: s,
            bits: c.bits,
        });
    }
    for b in step(&bits16, u16::from(c.bits)) {
        out.push(Choice {
            sparsity: c.sparsity,
            bits: u8::try_from(b).unwrap_or(32),
        });
    }
    out.retain(|m| options.iter().any(|o| o.choice == *m));
    out
}

/// `27KB`, `27 KiB`, `1.5MiB`, `20000` → bytes (kB and MB are powers of ten, KiB and MiB of
/// two).
pub fn parse_bytes(s: &str) -> Result<f64, BudgetError> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| BudgetError::NotASize(s.to_string()))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1000.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "mb" => 1e6,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "gb" => 1e9,
        other => {
            return Err(BudgetError::SizeUnit(other.to_string()));
        }
    };
    if !(v > 0.0 && v.is_finite()) {
        return Err(BudgetError::NotPositive(s.to_string()));
    }
    Ok(v * mult)
}

/// `20us`, `20µs`, `1.5ms`, `0.002s`, `20` (µs) → microseconds.
pub fn parse_micros(s: &str) -> Result<f64, BudgetError> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| BudgetError::NotATime(s.to_string()))?;
    let mult = match unit.trim() {
        "" | "us" | "µs" => 1.0,
        "ns" => 1e-3,
        "ms" => 1e3,
        "s" => 1e6,
        other => {
            return Err(BudgetError::TimeUnit(other.to_string()));
        }
    };
    if !(v > 0.0 && v.is_finite()) {
        return Err(BudgetError::NotPositive(s.to_string()));
    }
    Ok(v * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse_with_units_and_targets() {
        let targets = super::super::targets::load(None).unwrap();
        let mut b = Budget::default();
        b.add("size=27KB, latency=5us", &targets).unwrap();
        assert_eq!(b.size_bytes, Some(27_000.0));
        assert_eq!(b.latency_us, Some(5.0));
        b.add("target=cortex-m4", &targets).unwrap();
        assert_eq!(b.flash_bytes, Some(1_048_576.0));
        assert_eq!(b.ram_bytes, Some(262_144.0));
        assert_eq!(b.bytes_limit(), Some(27_000.0));
        assert!(b.describe().contains("cortex-m4"));
        let err = Budget::default().add("speed=fast", &targets).unwrap_err();
        assert!(matches!(err, BudgetError::UnknownKind { .. }), "{err}");
        let err = Budget::default().add("27KB", &targets).unwrap_err();
        assert!(err.to_string().contains("kind=value"), "{err}");
        assert_eq!(parse_bytes("100KiB").ok(), Some(102_400.0));
        assert_eq!(parse_bytes("1.5 MiB").ok(), Some(1_572_864.0));
        assert!(matches!(
            parse_bytes("12 parsecs"),
            Err(BudgetError::SizeUnit(u)) if u == "parsecs"
        ));
        assert!(matches!(
            parse_bytes("-1"),
            Err(BudgetError::NotPositive(_))
        ));
        assert_eq!(parse_micros("1.5ms").ok(), Some(1500.0));
        assert_eq!(parse_micros("20µs").ok(), Some(20.0));
        assert!(parse_micros("fast").is_err());
    }

    #[test]
    fn moves_are_one_step() {
        let opt = |s, b| Option_ {
            choice: Choice {
                sparsity: s,
                bits: b,
            },
            drop: 0.0,
            bytes: 0.0,
            latency: 0.0,
        };
        let opts: Vec<Option_> = [0, 500, 900]
            .iter()
            .flat_map(|&s| [32, 8, 4].map(|b| opt(s, b)))
            .collect();
        let mut n = neighbours(
            &opts,
            Choice {
                sparsity: 500,
                bits: 8,
            },
        );
        n.sort();
        assert_eq!(
            n,
            vec![
                Choice {
                    sparsity: 0,
                    bits: 8
                },
                Choice {
                    sparsity: 500,
                    bits: 4
                },
                Choice {
                    sparsity: 500,
                    bits: 32
                },
                Choice {
                    sparsity: 900,
                    bits: 8
                },
            ]
        );
    }
}
