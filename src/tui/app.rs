//! The explorer's state and its update logic. `App` changes only through `handle_key`,
//! `handle_mouse`, `handle_worker` and `resize`; each returns the work it wants done as
//! `Request`s, which the event loop carries out (or a test inspects). Derived chart series
//! are recomputed here when points change, never while drawing.

use std::collections::HashMap;
use std::path::PathBuf;

use ratatui::crossterm::event::{
    KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseButton, MouseEvent, MouseEventKind,
};
use ratatui::layout::{Position, Rect};

use crate::compress::recipe::{GranularityKind, PruneMethod};
use crate::explore::config::{
    self, Config, MAX_SPARSITY, PRUNE_CYCLE, SCHEME_CYCLE, next_granularity, next_in, step_bits,
};
use crate::explore::eval::{Estimate, Figures, LayerFigures, Stage, recipe_key};
use crate::explore::info::ModelInfo;
use crate::explore::jobs::{EvalRequest, Origin, WorkerMsg};
use crate::explore::journal::{Record, key_hex};
use crate::explore::pareto;
use crate::explore::presets::{Preset, presets};
use crate::explore::sweep::{self, Probe, ProbeKind, SweepKind};
use crate::explore::units;
use crate::report::{PlotInput, PlotPoint};

use super::keymap::{Action, lookup};

/// Stages a sweep point is evaluated at.
const SWEEP_STAGES: [Stage; 2] = [Stage::Full, Stage::Latency];

/// What the event loop should do for the app.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Evaluate the current configuration (latest wins).
    Evaluate {
        generation: u64,
        request: EvalRequest,
    },
    /// Stop the interactive evaluation: the current configuration is cached.
    CancelInteractive,
    Sweep {
        id: u64,
        points: Vec<EvalRequest>,
    },
    CancelSweeps,
    Export {
        config: Config,
        dir: PathBuf,
    },
    Plot {
        input: PlotInput,
        dir: PathBuf,
    },
    Journal(Record),
    Quit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Main,
    Help,
    Detail,
}

/// Settings from the command line.
#[derive(Debug, Clone)]
pub struct AppOptions {
    /// Hash of the model and the evaluation set: part of every cache key.
    pub fingerprint: u64,
    /// Where exports and plots go (one subdirectory per export).
    pub out_dir: PathBuf,
    pub budget_bytes: Option<f64>,
    pub budget_latency_us: Option<f64>,
    /// Shown in the title, when journaling.
    pub session: Option<PathBuf>,
}

/// One configuration and everything measured about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub key: u64,
    pub config: Config,
    /// How it came about (`fc1 alone: l1 90%`, a preset's name), when not by hand.
    pub label: Option<String>,
    pub quick: Option<Figures>,
    pub full: Option<Figures>,
    pub latency: Option<Figures>,
    pub error: Option<String>,
}

impl Point {
    fn new(key: u64, config: Config) -> Point {
        Point {
            key,
            config,
            label: None,
            quick: None,
            full: None,
            latency: None,
            error: None,
        }
    }

    pub fn stage(&self, stage: Stage) -> Option<&Figures> {
        match stage {
            Stage::Quick => self.quick.as_ref(),
            Stage::Full => self.full.as_ref(),
            Stage::Latency => self.latency.as_ref(),
        }
    }

    fn set(&mut self, stage: Stage, figures: Figures) {
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

    pub fn latency_us(&self) -> Option<f64> {
        self.latency.as_ref().and_then(|f| f.latency_us)
    }

    pub fn layers(&self) -> &[LayerFigures] {
        [&self.full, &self.quick]
            .into_iter()
            .flatten()
            .map(|f| f.layers.as_slice())
            .find(|l| !l.is_empty())
            .unwrap_or(&[])
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

/// One chart's data, as columns computed once per change.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChartSeries {
    /// Every evaluated configuration: (x, accuracy %). `x` is log10(bytes) when `log_x`.
    pub all: Vec<(f64, f64)>,
    pub frontier: Vec<(f64, f64)>,
    pub dense: Option<(f64, f64)>,
    pub current: Option<(f64, f64)>,
    pub pinned: Option<(f64, f64)>,
    /// A vertical line at the budget.
    pub budget: Option<[(f64, f64); 2]>,
    pub log_x: bool,
    pub x_bounds: [f64; 2],
    pub y_bounds: [f64; 2],
    /// Points below the visible accuracy range (when zoomed).
    pub hidden_below: usize,
}

/// The per-layer sensitivity measured so far: accuracy when only that layer is compressed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LayerSensitivity {
    /// (sparsity ‰, accuracy), ascending sparsity.
    pub prune: Vec<(u16, f64)>,
    /// (bits, accuracy), descending bits.
    pub bits: Vec<(u8, f64)>,
}

/// The explorer's whole state, owned by the UI thread.
pub struct App {
    pub info: ModelInfo,
    pub options: AppOptions,
    pub presets: Vec<Preset>,
    pub config: Config,
    pub current_key: u64,
    pub dense_key: u64,
    pub selected: usize,
    pub view: View,
    pub zoom: bool,
    pub preset: Option<usize>,
    pub pinned: Option<Config>,
    pub budget_bytes: Option<f64>,
    pub points: HashMap<u64, Point>,
    /// Keys in the order they were first seen, for stable drawing.
    pub order: Vec<u64>,
    /// Sensitivity probes: which point measured which layer at which setting.
    pub probes: HashMap<u64, Probe>,
    pub sensitivity: Vec<LayerSensitivity>,
    /// The edit generation: bumped on every change of the configuration.
    pub generation: u64,
    /// Stages of the current configuration still being evaluated.
    pub pending: Vec<Stage>,
    pub sweeps: Vec<SweepState>,
    next_sweep: u64,
    undo: Vec<Config>,
    redo: Vec<Config>,
    pub last_error: Option<String>,
    pub message: Option<String>,
    pub size_chart: ChartSeries,
    pub latency_chart: ChartSeries,
    /// The export directory being typed (after `e`), when the prompt is open.
    pub prompt: Option<String>,
    /// Terminal size, for mouse hit-testing (drawing gets its area from the frame).
    pub area: Rect,
    pub should_quit: bool,
}

impl App {
    pub fn new(info: ModelInfo, options: AppOptions) -> App {
        let dense = Config::dense(info.layers.len());
        let dense_key = recipe_key(options.fingerprint, &dense.to_recipe(&info));
        let mut app = App {
            presets: presets(&info),
            sensitivity: vec![LayerSensitivity::default(); info.layers.len()],
            info,
            config: dense.clone(),
            current_key: dense_key,
            dense_key,
            selected: 0,
            view: View::Main,
            zoom: false,
            preset: Some(0),
            pinned: None,
            budget_bytes: options.budget_bytes,
            options,
            points: HashMap::new(),
            order: Vec::new(),
            probes: HashMap::new(),
            generation: 0,
            pending: Vec::new(),
            sweeps: Vec::new(),
            next_sweep: 1,
            undo: Vec::new(),
            redo: Vec::new(),
            last_error: None,
            message: None,
            size_chart: ChartSeries::default(),
            latency_chart: ChartSeries::default(),
            prompt: None,
            area: Rect::new(0, 0, 120, 40),
            should_quit: false,
        };
        app.ensure_point(dense_key, &dense, Some("dense"));
        app
    }

    /// Takes back a journaled session: its points, pinned and current configurations.
    /// Records for another number of layers are skipped.
    pub fn restore(&mut self, records: Vec<Record>) {
        let n = self.info.layers.len();
        for record in records {
            match record {
                Record::Point {
                    stage,
                    config,
                    label,
                    figures,
                    ..
                } if config.layers.len() == n => {
                    let key = self.key_of(&config);
                    self.ensure_point(key, &config, label.as_deref());
                    if let Some(p) = self.points.get_mut(&key) {
                        p.set(stage, figures);
                        p.error = None;
                    }
                }
                Record::Failed { config, error, .. } if config.layers.len() == n => {
                    // Keys are recomputed from the configuration, not trusted from the file.
                    let k = self.key_of(&config);
                    self.ensure_point(k, &config, None);
                    if let Some(p) = self.points.get_mut(&k) {
                        p.error = Some(error);
                    }
                }
                Record::Current { config } if config.layers.len() == n => {
                    self.current_key = self.key_of(&config);
                    self.config = config;
                    self.preset = None;
                }
                Record::Pin { config } => {
                    self.pinned = config.filter(|c| c.layers.len() == n);
                }
                _ => {}
            }
        }
        let config = self.config.clone();
        self.ensure_point(self.current_key, &config, None);
        self.rebuild_sensitivity_from_labels();
        self.refresh();
    }

    /// Sets the starting configuration (from `--recipe`) before `start`.
    pub fn set_initial(&mut self, config: Config) {
        if config.layers.len() == self.info.layers.len() {
            self.current_key = self.key_of(&config);
            self.config = config;
            self.preset = None;
            let c = self.config.clone();
            self.ensure_point(self.current_key, &c, None);
        }
    }

    /// The first requests: the dense baseline and the current configuration.
    pub fn start(&mut self) -> Vec<Request> {
        let mut out = vec![Request::Journal(Record::Current {
            config: self.config.clone(),
        })];
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
        self.refresh();
        out
    }

    /// The cache key of a configuration: its recipe's hash (with the model and data).
    pub fn key_of(&self, config: &Config) -> u64 {
        recipe_key(self.options.fingerprint, &config.to_recipe(&self.info))
    }

    // ----- queries used by drawing -----

    pub fn current(&self) -> Option<&Point> {
        self.points.get(&self.current_key)
    }

    pub fn dense(&self) -> Option<&Point> {
        self.points.get(&self.dense_key)
    }

    pub fn pinned_point(&self) -> Option<&Point> {
        let c = self.pinned.as_ref()?;
        self.points.get(&self.key_of(c))
    }

    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    pub fn preset_name(&self) -> Option<&str> {
        self.preset
            .and_then(|i| self.presets.get(i))
            .map(|p| p.name)
    }

    /// Points with an accuracy, in the order they appeared.
    pub fn measured(&self) -> impl Iterator<Item = &Point> {
        self.order
            .iter()
            .filter_map(|k| self.points.get(k))
            .filter(|p| p.accuracy().is_some())
    }

    // ----- input -----

    pub fn resize(&mut self, width: u16, height: u16) {
        self.area = Rect::new(0, 0, width, height);
    }

    pub fn handle_key(&mut self, key: KeyEvent) -> Vec<Request> {
        if key.kind == KeyEventKind::Release {
            return Vec::new();
        }
        if self.prompt.is_some() {
            return self.prompt_key(key);
        }
        match lookup(&key) {
            Some(action) => self.act(action),
            None => {
                if self.view == View::Help {
                    self.view = View::Main;
                }
                Vec::new()
            }
        }
    }

    /// Keys while the export prompt is open: text editing, Enter exports, Esc cancels.
    fn prompt_key(&mut self, key: KeyEvent) -> Vec<Request> {
        let Some(text) = self.prompt.as_mut() else {
            return Vec::new();
        };
        match key.code {
            KeyCode::Enter => {
                let dir = PathBuf::from(text.trim());
                self.prompt = None;
                if dir.as_os_str().is_empty() {
                    self.message = Some("export cancelled: no directory given".into());
                    return Vec::new();
                }
                self.message = Some(format!("exporting to {} …", dir.display()));
                vec![Request::Export {
                    config: self.config.clone(),
                    dir,
                }]
            }
            KeyCode::Esc => {
                self.prompt = None;
                self.message = Some("export cancelled".into());
                Vec::new()
            }
            KeyCode::Backspace => {
                text.pop();
                Vec::new()
            }
            KeyCode::Char('u') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                text.clear();
                Vec::new()
            }
            KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => {
                text.push(c);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// The directory an export goes to unless the person types another.
    pub fn default_export_dir(&self) -> PathBuf {
        self.options.out_dir.join(format!(
            "{}-{}",
            self.info.name,
            &key_hex(self.current_key)[..8]
        ))
    }

    pub fn handle_mouse(&mut self, ev: MouseEvent) -> Vec<Request> {
        match ev.kind {
            MouseEventKind::ScrollUp => self.act(Action::Up),
            MouseEventKind::ScrollDown => self.act(Action::Down),
            MouseEventKind::Down(MouseButton::Left) => {
                let areas = super::render::layout(self.area, self);
                let at = Position::new(ev.column, ev.row);
                if let Some(table) = areas.table
                    && table.contains(at)
                {
                    let first = super::render::table_first_row(table, self);
                    // Border and header take the first two rows.
                    let row = usize::from(ev.row.saturating_sub(table.y + 2));
                    if ev.row >= table.y + 2 && first + row < self.info.layers.len() {
                        self.selected = first + row;
                    }
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// Carries out one action.
    pub fn act(&mut self, action: Action) -> Vec<Request> {
        let n = self.info.layers.len();
        let sel = self.selected.min(n.saturating_sub(1));
        match action {
            Action::Quit => {
                self.should_quit = true;
                vec![Request::Quit]
            }
            Action::Help => {
                self.view = if self.view == View::Help {
                    View::Main
                } else {
                    View::Help
                };
                Vec::new()
            }
            Action::Detail => {
                self.view = if self.view == View::Detail {
                    View::Main
                } else {
                    View::Detail
                };
                Vec::new()
            }
            Action::Zoom => {
                self.zoom = !self.zoom;
                self.refresh();
                Vec::new()
            }
            Action::Up => {
                self.selected = sel.saturating_sub(1);
                Vec::new()
            }
            Action::Down => {
                self.selected = (sel + 1).min(n.saturating_sub(1));
                Vec::new()
            }
            Action::SparsityUp => self.step_sparsity(50),
            Action::SparsityDown => self.step_sparsity(-50),
            Action::SparsityUpFine => self.step_sparsity(10),
            Action::SparsityDownFine => self.step_sparsity(-10),
            Action::BitsUp | Action::BitsDown => {
                let wider = action == Action::BitsUp;
                self.edit(|c| {
                    if let Some(l) = c.layers.get_mut(sel) {
                        l.bits = step_bits(l.bits, wider);
                    }
                })
            }
            Action::CyclePrune => self.edit(|c| {
                if let Some(l) = c.layers.get_mut(sel) {
                    l.prune = next_in(&PRUNE_CYCLE, l.prune);
                    if matches!(
                        l.prune,
                        PruneMethod::L1 | PruneMethod::Random | PruneMethod::Structured
                    ) && l.sparsity == 0
                    {
                        l.sparsity = 500;
                    }
                }
            }),
            Action::CycleScheme => {
                if self
                    .config
                    .layers
                    .get(sel)
                    .is_some_and(|l| l.int_bits().is_none())
                {
                    self.message = Some(
                        "the scheme applies to integer widths: press − to go below 16 bits".into(),
                    );
                    return Vec::new();
                }
                self.edit(|c| {
                    if let Some(l) = c.layers.get_mut(sel) {
                        l.scheme = next_in(&SCHEME_CYCLE, l.scheme);
                    }
                })
            }
            Action::CycleGranularity => {
                let cols = self.info.layers.get(sel).map_or(1, |l| l.cols);
                self.edit(|c| {
                    if let Some(l) = c.layers.get_mut(sel) {
                        let (g, size) = next_granularity(l.granularity, cols);
                        l.granularity = g;
                        if let Some(s) = size {
                            l.group_size = s;
                        }
                    }
                })
            }
            Action::ApplyToAll => {
                let Some(setting) = self.config.layers.get(sel).copied() else {
                    return Vec::new();
                };
                let cols: Vec<usize> = self.info.layers.iter().map(|l| l.cols).collect();
                self.edit(|c| {
                    for (l, &cols) in c.layers.iter_mut().zip(&cols) {
                        *l = setting;
                        if l.granularity == GranularityKind::Group
                            && !cols.is_multiple_of(l.group_size)
                        {
                            // This layer's rows do not split into such groups.
                            l.granularity = GranularityKind::Channel;
                        }
                    }
                })
            }
            Action::ToggleGlobal => {
                let start = self
                    .config
                    .layers
                    .get(sel)
                    .map(|l| l.sparsity)
                    .filter(|&s| s > 0)
                    .unwrap_or(500);
                self.edit(|c| {
                    c.global = match c.global {
                        Some(_) => None,
                        None => Some(start),
                    }
                })
            }
            Action::CycleActivations => self.edit(|c| {
                c.activation_bits = match c.activation_bits {
                    None => Some(8),
                    Some(8) => Some(6),
                    Some(6) => Some(4),
                    Some(_) => None,
                }
            }),
            Action::Undo => match self.undo.pop() {
                Some(prev) => {
                    let now = std::mem::replace(&mut self.config, prev);
                    self.redo.push(now);
                    self.preset = None;
                    self.config_changed()
                }
                None => {
                    self.message = Some("nothing to undo".into());
                    Vec::new()
                }
            },
            Action::Redo => match self.redo.pop() {
                Some(next) => {
                    let now = std::mem::replace(&mut self.config, next);
                    self.undo.push(now);
                    self.preset = None;
                    self.config_changed()
                }
                None => {
                    self.message = Some("nothing to redo".into());
                    Vec::new()
                }
            },
            Action::Reset => {
                let dense = Config::dense(n);
                let out = self.edit(|c| *c = dense);
                self.preset = Some(0);
                out
            }
            Action::NextPreset | Action::PrevPreset => {
                let len = self.presets.len().max(1);
                let i = match (self.preset, action) {
                    (Some(i), Action::NextPreset) => (i + 1) % len,
                    (Some(i), _) => (i + len - 1) % len,
                    (None, Action::NextPreset) => 0,
                    (None, _) => len - 1,
                };
                self.load_preset(i)
            }
            Action::Preset(i) => self.load_preset(i),
            Action::Pin => {
                self.pinned = Some(self.config.clone());
                self.message = Some("pinned as A".into());
                self.refresh();
                vec![Request::Journal(Record::Pin {
                    config: self.pinned.clone(),
                })]
            }
            Action::Unpin => {
                self.pinned = None;
                self.refresh();
                vec![Request::Journal(Record::Pin { config: None })]
            }
            Action::SensitivitySweep => {
                let names: Vec<String> = self.info.layers.iter().map(|l| l.name.clone()).collect();
                self.start_sweep(SweepKind::Sensitivity, sweep::sensitivity(&names))
            }
            Action::UniformSweep => self.start_sweep(SweepKind::Uniform, sweep::uniform(n)),
            Action::Cancel => {
                if self.view != View::Main {
                    self.view = View::Main;
                    return Vec::new();
                }
                let mut out = Vec::new();
                if !self.sweeps.is_empty() {
                    let done: usize = self.sweeps.iter().map(|s| s.done).sum();
                    let total: usize = self.sweeps.iter().map(|s| s.total).sum();
                    self.message = Some(format!(
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
            Action::Export => {
                self.prompt = Some(self.default_export_dir().display().to_string());
                self.view = View::Main;
                Vec::new()
            }
            Action::Plot => {
                let dir = self.options.out_dir.clone();
                self.message = Some(format!("writing plots to {} …", dir.display()));
                vec![Request::Plot {
                    input: self.plot_input(),
                    dir,
                }]
            }
            Action::Budget => {
                if self.budget_bytes.is_some() {
                    self.budget_bytes = None;
                } else if let Some(size) = self.current().and_then(Point::size_bytes) {
                    self.budget_bytes = Some(size as f64);
                    self.message = Some(format!("size budget: {}", units::bytes(size as f64)));
                } else {
                    self.message = Some("no size measured yet for a budget".into());
                }
                self.refresh();
                Vec::new()
            }
        }
    }

    fn step_sparsity(&mut self, delta: i32) -> Vec<Request> {
        let sel = self.selected;
        let clamp = |v: i32| v.clamp(0, i32::from(MAX_SPARSITY)) as u16;
        if let Some(g) = self.config.global {
            return self.edit(|c| c.global = Some(clamp(i32::from(g) + delta)));
        }
        let Some(layer) = self.config.layers.get(sel).copied() else {
            return Vec::new();
        };
        match layer.prune {
            PruneMethod::Nm => {
                self.message =
                    Some("2:4 pruning removes exactly half: press m for another method".into());
                Vec::new()
            }
            PruneMethod::Std => self.edit(|c| {
                // The std threshold moves by 0.1 (0.02 finely) × std(w).
                let step = if delta.abs() >= 50 { 10 } else { 2 };
                let q = i32::from(layer.quality) + step * delta.signum();
                c.layers[sel].quality = q.clamp(0, 500) as u16;
            }),
            PruneMethod::None if delta <= 0 => Vec::new(),
            _ => self.edit(|c| {
                let l = &mut c.layers[sel];
                if l.prune == PruneMethod::None {
                    l.prune = PruneMethod::L1;
                }
                l.sparsity = clamp(i32::from(l.sparsity) + delta);
            }),
        }
    }

    fn load_preset(&mut self, i: usize) -> Vec<Request> {
        let Some(p) = self.presets.get(i) else {
            return Vec::new();
        };
        let (config, name) = (p.config.clone(), p.name);
        let out = self.edit(|c| *c = config);
        self.preset = Some(i);
        self.message = Some(format!("preset: {name}"));
        if let Some(point) = self.points.get_mut(&self.current_key)
            && point.label.is_none()
        {
            point.label = Some(format!("preset: {name}"));
        }
        out
    }

    /// Applies an edit to the configuration as one undoable step.
    fn edit(&mut self, f: impl FnOnce(&mut Config)) -> Vec<Request> {
        let before = self.config.clone();
        f(&mut self.config);
        if self.config == before {
            return Vec::new();
        }
        self.undo.push(before);
        self.redo.clear();
        self.preset = None;
        self.message = None;
        self.config_changed()
    }

    /// After any change of `config`: a new generation, a journal line, and an evaluation of
    /// the stages not cached yet (none when returning to a known configuration).
    fn config_changed(&mut self) -> Vec<Request> {
        self.generation += 1;
        self.current_key = self.key_of(&self.config);
        let config = self.config.clone();
        self.ensure_point(self.current_key, &config, None);
        let mut out = vec![Request::Journal(Record::Current { config })];
        out.extend(self.evaluate_current());
        self.refresh();
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
    fn missing(&self, key: u64, stages: &[Stage]) -> Vec<Stage> {
        let point = self.points.get(&key);
        stages
            .iter()
            .copied()
            .filter(|&s| !point.is_some_and(|p| p.has(s)))
            .collect()
    }

    fn ensure_point(&mut self, key: u64, config: &Config, label: Option<&str>) {
        let point = self.points.entry(key).or_insert_with(|| {
            self.order.push(key);
            Point::new(key, config.clone())
        });
        if point.label.is_none() {
            point.label = label.map(str::to_string);
        }
    }

    fn start_sweep(&mut self, kind: SweepKind, points: Vec<sweep::SweepPoint>) -> Vec<Request> {
        let total = points.len();
        let mut requests = Vec::new();
        for p in points {
            let key = self.key_of(&p.config);
            self.ensure_point(key, &p.config, Some(&p.label));
            if let Some(probe) = p.probe {
                self.probes.insert(key, probe);
            }
            let stages = self.missing(key, &SWEEP_STAGES);
            if !stages.is_empty() {
                requests.push(EvalRequest {
                    key,
                    config: p.config,
                    stages,
                });
            }
        }
        self.rebuild_sensitivity();
        self.refresh();
        let cached = total - requests.len();
        if requests.is_empty() {
            self.message = Some(format!(
                "{}: all {total} points are already measured",
                kind.label()
            ));
            return Vec::new();
        }
        self.message = (cached > 0).then(|| {
            format!(
                "{}: {cached} of {total} points come from the cache",
                kind.label()
            )
        });
        vec![self.queue_sweep(kind.label().to_string(), requests)]
    }

    fn queue_sweep(&mut self, label: String, points: Vec<EvalRequest>) -> Request {
        let id = self.next_sweep;
        self.next_sweep += 1;
        self.sweeps.push(SweepState {
            id,
            label,
            done: 0,
            total: points.len(),
        });
        Request::Sweep { id, points }
    }

    // ----- worker messages -----

    pub fn handle_worker(&mut self, msg: WorkerMsg) -> Vec<Request> {
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
                let record = Record::Point {
                    key: key_hex(key),
                    stage,
                    config: point.config.clone(),
                    label: point.label.clone(),
                    figures,
                };
                if origin == Origin::Interactive(self.generation) || key == self.current_key {
                    self.pending
                        .retain(|s| *s != stage && !(stage == Stage::Full && *s == Stage::Quick));
                }
                if self.probes.contains_key(&key) {
                    self.rebuild_sensitivity();
                }
                self.refresh();
                vec![Request::Journal(record)]
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
                    self.last_error = Some(format!("{} failed: {error}", stage.label()));
                } else if let Origin::Sweep(_) = origin {
                    self.last_error = Some(format!(
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
                    if !cancelled {
                        self.message = Some(format!("{} finished: {} points", s.label, s.total));
                    }
                }
                Vec::new()
            }
            WorkerMsg::TaskDone { task, result } => {
                match result {
                    Ok(paths) => {
                        let names: Vec<String> =
                            paths.iter().map(|p| p.display().to_string()).collect();
                        self.message = Some(format!("{task}: wrote {}", names.join(", ")));
                    }
                    Err(e) => self.last_error = Some(format!("{task} failed: {e}")),
                }
                Vec::new()
            }
        }
    }

    // ----- derived data -----

    fn rebuild_sensitivity_from_labels(&mut self) {
        // Probes are not journaled; find them again by regenerating the sweep's points.
        let names: Vec<String> = self.info.layers.iter().map(|l| l.name.clone()).collect();
        for p in sweep::sensitivity(&names) {
            let key = self.key_of(&p.config);
            if let (Some(probe), true) = (p.probe, self.points.contains_key(&key)) {
                self.probes.insert(key, probe);
            }
        }
        self.rebuild_sensitivity();
    }

    fn rebuild_sensitivity(&mut self) {
        let mut sens = vec![LayerSensitivity::default(); self.info.layers.len()];
        for (key, probe) in &self.probes {
            let Some(acc) = self.points.get(key).and_then(Point::accuracy) else {
                continue;
            };
            let Some(s) = sens.get_mut(probe.layer) else {
                continue;
            };
            match probe.kind {
                ProbeKind::Prune(p) => s.prune.push((p, acc.value)),
                ProbeKind::Bits(b) => s.bits.push((b, acc.value)),
            }
        }
        for s in &mut sens {
            s.prune.sort_by_key(|(p, _)| *p);
            s.bits.sort_by_key(|(b, _)| std::cmp::Reverse(*b));
        }
        self.sensitivity = sens;
    }

    /// Recomputes the chart series after points, the current or pinned configuration, the
    /// budget or the zoom changed.
    pub fn refresh(&mut self) {
        let dense_acc = self
            .dense()
            .and_then(Point::accuracy)
            .map(|a| a.value * 100.0);
        let pinned_key = self.pinned.as_ref().map(|c| self.key_of(c));
        let size = |p: &Point| p.size_bytes().map(|s| s as f64);
        let latency = |p: &Point| p.latency_us();
        self.size_chart = self.series(&size, dense_acc, pinned_key, self.budget_bytes, true);
        self.latency_chart = self.series(
            &latency,
            dense_acc,
            pinned_key,
            self.options.budget_latency_us,
            false,
        );
    }

    fn series(
        &self,
        x_of: &dyn Fn(&Point) -> Option<f64>,
        dense_acc: Option<f64>,
        pinned_key: Option<u64>,
        budget: Option<f64>,
        may_log: bool,
    ) -> ChartSeries {
        let raw: Vec<(u64, f64, f64)> = self
            .measured()
            .filter_map(|p| Some((p.key, x_of(p)?, p.accuracy()?.value * 100.0)))
            .filter(|(_, x, _)| *x > 0.0 && x.is_finite())
            .collect();
        let mut s = ChartSeries::default();
        if raw.is_empty() {
            s.x_bounds = [0.0, 1.0];
            s.y_bounds = [0.0, 100.0];
            return s;
        }
        let (lo, hi) = raw
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                (lo.min(p.1), hi.max(p.1))
            });
        s.log_x = may_log && hi / lo > 20.0;
        let tx = |x: f64| if s.log_x { x.log10() } else { x };
        let pts: Vec<(f64, f64)> = raw.iter().map(|&(_, x, y)| (tx(x), y)).collect();
        let find = |key: u64| raw.iter().position(|r| r.0 == key).map(|i| pts[i]);
        s.frontier = pareto::frontier(&pts).into_iter().map(|i| pts[i]).collect();
        s.dense = find(self.dense_key);
        s.current = find(self.current_key);
        s.pinned = pinned_key.and_then(find);

        let (x0, x1) = (tx(lo), tx(hi));
        let pad = if x1 > x0 {
            (x1 - x0) * 0.05
        } else {
            x0.abs().max(1.0) * 0.1
        };
        let mut xb = [x0 - pad, x1 + pad];
        if !s.log_x {
            xb[0] = xb[0].max(0.0);
        }
        let (ylo, yhi) = pts
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                (lo.min(p.1), hi.max(p.1))
            });
        let mut yb = [ylo, yhi];
        if self.zoom
            && let Some(d) = dense_acc
        {
            yb = [(d - 5.0).max(ylo.min(d - 0.5)), yhi.max(d)];
            s.hidden_below = pts.iter().filter(|p| p.1 < yb[0]).count();
        }
        let ypad = ((yb[1] - yb[0]) * 0.05).max(0.1);
        s.y_bounds = [(yb[0] - ypad).max(0.0), (yb[1] + ypad).min(100.0)];
        if let Some(b) = budget.filter(|b| *b > 0.0) {
            let bx = tx(b);
            xb[0] = xb[0].min(bx);
            xb[1] = xb[1].max(bx);
            s.budget = Some([(bx, s.y_bounds[0]), (bx, s.y_bounds[1])]);
        }
        s.x_bounds = xb;
        s.all = pts;
        s
    }

    /// What the plots (`p`) draw: every point with its size, latency and accuracy.
    pub fn plot_input(&self) -> PlotInput {
        let plot_point = |p: &Point| {
            Some(PlotPoint {
                size_bytes: p.size_bytes()? as f64,
                latency_us: p.latency_us(),
                accuracy: p.accuracy()?.value,
                label: p.label.clone(),
            })
        };
        PlotInput {
            title: format!("{} on {}", self.info.name, self.info.data_name),
            points: self.measured().filter_map(plot_point).collect(),
            dense: self.dense().and_then(plot_point),
            current: self.current().and_then(plot_point),
            pinned: self.pinned_point().and_then(plot_point),
            budget_bytes: self.budget_bytes,
            budget_latency_us: self.options.budget_latency_us,
        }
    }

    /// The selected layer's setting, for the detail view and the status bar.
    pub fn selected_setting(&self) -> Option<&config::LayerSetting> {
        self.config.layers.get(self.selected)
    }
}
