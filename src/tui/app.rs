//! The explorer's view state and its update logic. `App` views a `Session` (what has been
//! measured, the configuration being edited, pins, budgets, sweeps) and keeps only what
//! belongs to the screen: the selected layer, the view, the zoom, the prompt, the messages
//! and the chart series derived from the session. It changes only through `handle_key`,
//! `handle_mouse`, `handle_worker` and `resize`; each returns the work it wants done as
//! `Request`s, which the event loop carries out (or a test inspects). Derived chart series
//! are recomputed here when points change, never while drawing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{
    KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseButton, MouseEvent, MouseEventKind,
};
use ratatui::layout::{Position, Rect};

use crate::compress::recipe::PruneMethod;
use crate::explore::config::{
    self, Config, MAX_SPARSITY, SCHEME_CYCLE, next_granularity, next_in, next_prune, step_bits,
};
use crate::explore::info::ModelInfo;
use crate::explore::jobs::WorkerMsg;
use crate::explore::journal::{Record, key_hex};
use crate::explore::pareto;
use crate::explore::plot::PlotInput;
use crate::explore::search::{Budget, Objective, SearchJob};
use crate::explore::sensitivity::SensitivityGrid;
use crate::explore::session::{Notice, PIN_NAMES, Point, Provenance, Session};
use crate::explore::sweep::CurveFamily;
use crate::units;

pub use crate::explore::session::{LayerSensitivity, Request, SweepState};

use super::keymap::{Action, lookup};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Main,
    Help,
    Detail,
    /// Every message of this run, newest last.
    Messages,
    /// The pinned configurations side by side.
    Compare,
}

/// How long a message stays on screen unless a newer one replaces it.
pub const MESSAGE_SECONDS: u64 = 10;
/// Errors stay longer: they are worth reading to the end.
pub const ERROR_SECONDS: u64 = 30;
/// Messages the log keeps.
const MESSAGE_LOG: usize = 500;

/// One line the explorer said (the log keeps them all; the screen shows the newest while fresh).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub text: String,
    pub error: bool,
    pub at: Instant,
}

/// Settings of the screen from the command line.
#[derive(Debug, Clone)]
pub struct AppOptions {
    /// Where exports and plots go (one subdirectory per export).
    pub out_dir: PathBuf,
    /// The journal, when journaling (shown on quitting).
    pub session: Option<PathBuf>,
    /// Seconds a search (`o`) may take.
    pub search_seconds: u64,
    /// The devices `t` cycles through.
    pub targets: Vec<crate::explore::targets::Target>,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            out_dir: PathBuf::from("squeeze-out"),
            session: None,
            search_seconds: 30,
            targets: Vec::new(),
        }
    }
}

/// A chart's x axis is logarithmic when its points span more than this factor (as the slides').
pub const LOG_SPAN: f64 = 10.0;

/// One chart's data, as columns computed once per change.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChartSeries {
    /// Every evaluated configuration: (x, accuracy %). `x` is log10(bytes) when `log_x`.
    pub all: Vec<(f64, f64)>,
    /// The key of each point of `all`, for the mouse.
    pub keys: Vec<u64>,
    /// The whole-model curves (`W`): each family's measured points in the order the line
    /// joins them.
    pub curves: Vec<(CurveFamily, Vec<(f64, f64)>)>,
    /// The configurations that fit the target, when one is chosen (a subset of `all`).
    pub fitting: Vec<(f64, f64)>,
    pub frontier: Vec<(f64, f64)>,
    pub dense: Option<(f64, f64)>,
    pub current: Option<(f64, f64)>,
    /// Every pinned configuration that is measured.
    pub pinned: Vec<(f64, f64)>,
    /// The point the cursor (`[`, `]`) is on.
    pub cursor: Option<(f64, f64)>,
    /// Fine-tuned points, and a line from each to its untuned twin.
    pub tuned: Vec<(f64, f64)>,
    pub tuned_links: Vec<[(f64, f64); 2]>,
    /// A vertical line at the budget.
    pub budget: Option<[(f64, f64); 2]>,
    pub log_x: bool,
    pub x_bounds: [f64; 2],
    pub y_bounds: [f64; 2],
    /// Points below the visible accuracy range (when zoomed).
    pub hidden_below: usize,
}

/// The explorer: a session and how it is shown.
pub struct App {
    pub session: Session,
    pub options: AppOptions,
    pub selected: usize,
    pub view: View,
    pub zoom: bool,
    /// The presentation layout (`--present`, `P`): big figures, charts, the edited layer.
    pub present: bool,
    /// Everything said so far, oldest first.
    pub messages: Vec<Message>,
    /// Messages before this index were superseded by an edit: none of them is shown.
    dismissed: usize,
    /// The time messages are aged against (the event loop's clock; tests move it by hand).
    pub now: Instant,
    pub size_chart: ChartSeries,
    pub latency_chart: ChartSeries,
    /// The chart point the cursor is on (`[`, `]`; Enter loads it), by key.
    pub cursor: Option<u64>,
    /// The export directory being typed (after `e`), when the prompt is open.
    pub prompt: Option<String>,
    /// Terminal size, for mouse hit-testing (drawing gets its area from the frame).
    pub area: Rect,
    pub should_quit: bool,
}

impl App {
    pub fn new(session: Session, options: AppOptions) -> App {
        let mut app = App {
            session,
            options,
            selected: 0,
            view: View::Main,
            zoom: false,
            present: false,
            messages: Vec::new(),
            dismissed: 0,
            now: Instant::now(),
            size_chart: ChartSeries::default(),
            latency_chart: ChartSeries::default(),
            cursor: None,
            prompt: None,
            area: Rect::new(0, 0, 120, 40),
            should_quit: false,
        };
        app.refresh();
        app
    }

    /// The model the session explores.
    pub fn info(&self) -> &ModelInfo {
        &self.session.info
    }

    /// Takes back a journaled session: its points, pinned and current configurations.
    pub fn restore(&mut self, records: Vec<Record>) {
        self.session.restore(records);
        self.absorb();
        self.refresh();
    }

    /// Sets the starting configuration (from `--recipe`) before `start`.
    pub fn set_initial(&mut self, config: Config) {
        self.session.set_initial(config);
        self.refresh();
    }

    /// The first requests: the dense baseline and the current configuration.
    pub fn start(&mut self) -> Vec<Request> {
        let out = self.session.start();
        self.absorb();
        self.refresh();
        out
    }

    /// Says something on the message line (and in the log).
    pub fn say(&mut self, text: impl Into<String>) {
        self.push_message(text.into(), false);
    }

    /// Reports an error on the message line (and in the log).
    pub fn warn(&mut self, text: impl Into<String>) {
        self.push_message(text.into(), true);
    }

    fn push_message(&mut self, text: String, error: bool) {
        self.messages.push(Message {
            text,
            error,
            at: self.now,
        });
        if self.messages.len() > MESSAGE_LOG {
            let cut = self.messages.len() - MESSAGE_LOG;
            self.messages.drain(..cut);
            self.dismissed = self.dismissed.saturating_sub(cut);
        }
    }

    /// The message on screen: the newest one, while it is fresh and no edit came after it.
    pub fn message(&self) -> Option<&Message> {
        let m = self.messages.last()?;
        let life = Duration::from_secs(if m.error {
            ERROR_SECONDS
        } else {
            MESSAGE_SECONDS
        });
        (self.messages.len() > self.dismissed && self.now.saturating_duration_since(m.at) < life)
            .then_some(m)
    }

    /// The text on screen, if any (for tests and the title).
    pub fn message_text(&self) -> Option<&str> {
        self.message().map(|m| m.text.as_str())
    }

    /// An edit made whatever was said before it old news.
    fn dismiss(&mut self) {
        self.dismissed = self.messages.len();
    }

    /// Moves the clock messages age by (the event loop calls it before every frame).
    pub fn tick(&mut self, now: Instant) {
        self.now = now;
    }

    /// Takes the session's notices into the message line.
    fn absorb(&mut self) {
        for n in self.session.take_notices() {
            match n {
                Notice::Info(t) => self.say(t),
                Notice::Error(t) => self.warn(t),
            }
        }
    }

    /// Runs a session change, then takes its notices and refreshes the charts.
    fn with_session(&mut self, f: impl FnOnce(&mut Session) -> Vec<Request>) -> Vec<Request> {
        let out = f(&mut self.session);
        self.absorb();
        self.refresh();
        out
    }

    // ----- queries used by drawing -----

    pub fn current(&self) -> Option<&Point> {
        self.session.current()
    }

    pub fn dense(&self) -> Option<&Point> {
        self.session.dense()
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
        let action = lookup(&key);
        if self.view == View::Compare && key.code == KeyCode::Char('x') {
            self.export_comparison();
            return Vec::new();
        }
        if matches!(self.view, View::Help | View::Messages | View::Compare) {
            // An overlay takes every key: quitting still quits, anything else only closes it.
            if action == Some(Action::Quit) {
                return self.act(Action::Quit);
            }
            self.view = View::Main;
            return Vec::new();
        }
        match action {
            Some(action) => self.act(action),
            None => Vec::new(),
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
                    self.say("export cancelled: no directory given");
                    return Vec::new();
                }
                self.with_session(|s| s.export(dir))
            }
            KeyCode::Esc => {
                self.prompt = None;
                self.say("export cancelled");
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
        crate::explore::session::free_dir(&self.options.out_dir.join(format!(
            "{}-{}",
            self.session.info.name,
            &key_hex(self.session.current_key)[..8]
        )))
    }

    pub fn handle_mouse(&mut self, ev: MouseEvent) -> Vec<Request> {
        match ev.kind {
            MouseEventKind::ScrollUp => self.act(Action::Up),
            MouseEventKind::ScrollDown => self.act(Action::Down),
            MouseEventKind::Down(MouseButton::Left) => {
                let (table, charts) = if self.present {
                    let a = super::present::layout(self.area, self);
                    (a.layer, [a.size_chart, a.latency_chart])
                } else {
                    let a = super::render::layout(self.area, self);
                    (a.table, [a.size_chart, a.latency_chart])
                };
                let at = Position::new(ev.column, ev.row);
                if self.view == View::Main
                    && let Some(key) = self.point_at(at, charts)
                {
                    // A second click on the cursor's point loads it, as Enter does.
                    if self.cursor == Some(key) {
                        return self.load_cursor();
                    }
                    self.cursor = Some(key);
                    self.refresh();
                    return Vec::new();
                }
                if let Some(table) = table
                    && table.contains(at)
                {
                    let first = super::render::table_first_row(table, self);
                    // Border and header take the first two rows.
                    let row = usize::from(ev.row.saturating_sub(table.y + 2));
                    if ev.row >= table.y + 2 && first + row < self.session.info.layers.len() {
                        self.selected = first + row;
                    }
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// The chart point nearest a click at `at`, when it falls between a chart's axes
    /// (`charts`: the size and the latency chart's areas).
    fn point_at(&self, at: Position, charts: [Rect; 2]) -> Option<u64> {
        let pairs = [
            (charts[0], &self.size_chart, true),
            (charts[1], &self.latency_chart, false),
        ];
        let (graph, series) = pairs.into_iter().find_map(|(area, series, is_size)| {
            let graph = super::render::chart_graph_area(area, series, is_size)?;
            graph.contains(at).then_some((graph, series))
        })?;
        let [x0, x1] = series.x_bounds;
        let [y0, y1] = series.y_bounds;
        let (w, h) = (
            f64::from(graph.width.max(2) - 1),
            f64::from(graph.height.max(2) - 1),
        );
        let (cx, cy) = (f64::from(at.x - graph.x), f64::from(at.y - graph.y));
        series
            .all
            .iter()
            .zip(&series.keys)
            .filter(|((x, y), _)| (x0..=x1).contains(x) && (y0..=y1).contains(y))
            .map(|(&(x, y), key)| {
                let col = (x - x0) / (x1 - x0).max(f64::MIN_POSITIVE) * w;
                let row = (y1 - y) / (y1 - y0).max(f64::MIN_POSITIVE) * h;
                // A cell is about twice as tall as it is wide.
                let d = (col - cx).powi(2) + (2.0 * (row - cy)).powi(2);
                (d, *key)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, key)| key)
    }

    /// Carries out one action.
    pub fn act(&mut self, action: Action) -> Vec<Request> {
        let n = self.session.info.layers.len();
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
            Action::Messages => {
                self.view = if self.view == View::Messages {
                    View::Main
                } else {
                    View::Messages
                };
                Vec::new()
            }
            Action::Compare => {
                self.view = View::Compare;
                Vec::new()
            }
            Action::PointPrev | Action::PointNext => {
                self.move_cursor(action == Action::PointNext);
                Vec::new()
            }
            Action::Detail if self.cursor.is_some() => self.load_cursor(),
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
            Action::Present => {
                self.present = !self.present;
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
            Action::CyclePrune => {
                let Some(layer) = self.session.info.layers.get(sel).cloned() else {
                    return Vec::new();
                };
                self.edit(|c| {
                    if let Some(l) = c.layers.get_mut(sel) {
                        l.prune = next_prune(l.prune, &layer);
                        if matches!(
                            l.prune,
                            PruneMethod::L1 | PruneMethod::Random | PruneMethod::Structured
                        ) && l.sparsity == 0
                        {
                            l.sparsity = 500;
                        }
                    }
                })
            }
            Action::CycleScheme => {
                if self
                    .session
                    .config
                    .layers
                    .get(sel)
                    .is_some_and(|l| l.int_bits().is_none())
                {
                    self.say("the scheme applies to integer widths: press − to go below 16 bits");
                    return Vec::new();
                }
                self.edit(|c| {
                    if let Some(l) = c.layers.get_mut(sel) {
                        l.scheme = next_in(&SCHEME_CYCLE, l.scheme);
                    }
                })
            }
            Action::CycleGranularity => {
                let cols = self.session.info.layers.get(sel).map_or(1, |l| l.cols);
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
                let Some(setting) = self.session.config.layers.get(sel).copied() else {
                    return Vec::new();
                };
                let layers = self.session.info.layers.clone();
                let out = self.edit(|c| {
                    for (l, info) in c.layers.iter_mut().zip(&layers) {
                        *l = setting.fitted(info);
                    }
                });
                let kept: Vec<&str> = layers
                    .iter()
                    .filter(|l| setting.fitted(l).prune != setting.prune)
                    .map(|l| l.name.as_str())
                    .collect();
                if !kept.is_empty() {
                    self.say(format!(
                        "applied to all layers; {} keeps its outputs (structured pruning cannot remove them)",
                        kept.join(", ")
                    ));
                }
                out
            }
            Action::ToggleGlobal => {
                let start = self
                    .session
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
            Action::Undo => match self.with_option(Session::undo) {
                Some(out) => out,
                None => {
                    self.say("nothing to undo");
                    Vec::new()
                }
            },
            Action::Redo => match self.with_option(Session::redo) {
                Some(out) => out,
                None => {
                    self.say("nothing to redo");
                    Vec::new()
                }
            },
            Action::Reset => {
                self.dismiss();
                self.with_session(Session::reset)
            }
            Action::NextPreset | Action::PrevPreset => {
                let len = self.session.presets.len().max(1);
                let i = match (self.session.preset, action) {
                    (Some(i), Action::NextPreset) => (i + 1) % len,
                    (Some(i), _) => (i + len - 1) % len,
                    (None, Action::NextPreset) => 0,
                    (None, _) => len - 1,
                };
                self.with_session(|s| s.load_preset(i))
            }
            Action::Preset(i) => self.with_session(|s| s.load_preset(i)),
            Action::Pin => {
                if let Some(slot) = self.session.pin_slot(self.session.current_key) {
                    self.say(format!("already pinned as {}", PIN_NAMES[slot]));
                    return Vec::new();
                }
                match self.session.pins.iter().position(Option::is_none) {
                    Some(slot) => self.with_session(|s| s.pin(slot)),
                    None => {
                        self.say("all four pins are taken: C unpins the last one");
                        Vec::new()
                    }
                }
            }
            Action::Unpin => match self.session.pins.iter().rposition(Option::is_some) {
                Some(slot) => {
                    self.say(format!("unpinned {}", PIN_NAMES[slot]));
                    self.with_session(|s| s.unpin(slot))
                }
                None => {
                    self.say("nothing is pinned");
                    Vec::new()
                }
            },
            Action::SensitivitySweep => {
                self.with_session(|s| s.sensitivity_sweep(&SensitivityGrid::default()))
            }
            Action::UniformSweep => self.with_session(Session::uniform_sweep),
            Action::ModelCurves => self.with_session(Session::model_curves),
            Action::Finetune => self.with_session(Session::finetune),
            Action::TuneSettings => self.with_session(Session::cycle_distillation),
            Action::Search => self.search(),
            Action::LoadSearch => {
                let Some(best) = self.session.search.as_ref().and_then(|o| o.best.clone()) else {
                    self.say("no search answer yet: o searches under the budget lines");
                    return Vec::new();
                };
                self.say("loaded the search's answer (u goes back)");
                let out = self.session.load(best.config);
                self.absorb();
                self.refresh();
                out
            }
            Action::CycleTarget => {
                let targets = &self.options.targets;
                let now = self
                    .session
                    .target
                    .as_ref()
                    .and_then(|t| targets.iter().position(|x| x.name == t.name));
                let next = match now {
                    None => targets.first(),
                    Some(i) => targets.get(i + 1),
                };
                self.session.target = next.cloned();
                self.say(match &self.session.target {
                    Some(t) => format!("target: {}", t.description),
                    None => "no device target".into(),
                });
                self.refresh();
                Vec::new()
            }
            Action::Cancel => {
                if self.cursor.take().is_some() {
                    self.refresh();
                    return Vec::new();
                }
                if self.view != View::Main {
                    self.view = View::Main;
                    return Vec::new();
                }
                self.with_session(Session::cancel_work)
            }
            Action::Export => {
                self.prompt = Some(self.default_export_dir().display().to_string());
                self.view = View::Main;
                Vec::new()
            }
            Action::Plot => {
                let dir = self.options.out_dir.clone();
                self.say(format!("writing plots to {} …", dir.display()));
                vec![Request::Plot {
                    input: Box::new(self.plot_input()),
                    dir,
                }]
            }
            Action::Budget => {
                if self.session.budget_bytes.is_some() {
                    self.session.budget_bytes = None;
                } else if let Some(size) = self.current().and_then(Point::size_bytes) {
                    self.session.budget_bytes = Some(size as f64);
                    self.say(format!("size budget: {}", units::bytes(size as f64)));
                } else {
                    self.say("no size measured yet for a budget");
                }
                self.refresh();
                Vec::new()
            }
        }
    }

    /// The points the cursor visits, smallest first (the size chart's order, left to right).
    fn cursor_points(&self) -> Vec<u64> {
        let mut pts: Vec<(u64, u64)> = self
            .session
            .measured()
            .filter_map(|p| Some((p.size_bytes()?, p.key)))
            .collect();
        pts.sort_unstable();
        pts.into_iter().map(|(_, k)| k).collect()
    }

    /// Moves the point cursor one point to the right (`next`) or left; it starts at the
    /// current configuration.
    fn move_cursor(&mut self, next: bool) {
        let pts = self.cursor_points();
        if pts.is_empty() {
            self.say("no point measured yet");
            return;
        }
        let from = self.cursor.unwrap_or(self.session.current_key);
        let i = match pts.iter().position(|k| *k == from) {
            Some(i) if self.cursor.is_none() => i,
            Some(i) if next => (i + 1).min(pts.len() - 1),
            Some(i) => i.saturating_sub(1),
            None => 0,
        };
        self.cursor = Some(pts[i]);
        self.refresh();
    }

    /// What the cursor's point is, for the message line: its label, accuracy, size, latency.
    pub fn cursor_text(&self) -> Option<String> {
        let p = self.session.point(self.cursor?)?;
        let pin = self
            .session
            .pin_slot(p.key)
            .map(|i| format!("{} · ", PIN_NAMES[i]));
        let name = p
            .label
            .clone()
            .unwrap_or_else(|| crate::explore::compare::summary(&p.config, &self.session.info));
        let mut figures = Vec::new();
        if let Some(a) = p.accuracy() {
            figures.push(units::percent(a.value));
        }
        if let Some(b) = p.size_bytes() {
            figures.push(units::bytes(b as f64));
        }
        if let Some(l) = p.latency_us() {
            figures.push(units::micros(l));
        }
        Some(format!(
            "◆ {}{name}: {} (Enter or a click loads it, Esc leaves the cursor)",
            pin.unwrap_or_default(),
            figures.join(" · ")
        ))
    }

    /// Loads the cursor's point for editing (undoable); a fine-tuned point becomes the
    /// current one itself, so that it can be pinned and exported.
    fn load_cursor(&mut self) -> Vec<Request> {
        let Some(p) = self.cursor.take().and_then(|k| self.session.point(k)) else {
            return Vec::new();
        };
        let key = p.key;
        let name = crate::explore::compare::point_summary(&p.config, Some(p), &self.session.info);
        let before = self.session.generation;
        let out = self.with_session(|s| s.load_point(key));
        // Between a tuned point and its twin the configuration stays: no edit to undo.
        if self.session.generation != before {
            self.say(format!("loaded {name} (u goes back)"));
        } else {
            self.say(format!("loaded {name}"));
        }
        out
    }

    /// Writes the comparison of pinned configurations as Markdown and CSV into the output
    /// directory.
    fn export_comparison(&mut self) {
        let rows = crate::explore::compare::rows(&self.session);
        let layers: Vec<String> = self
            .session
            .info
            .layers
            .iter()
            .map(|l| l.name.clone())
            .collect();
        match crate::report::write_comparison(&rows, &layers, &self.options.out_dir) {
            Ok(paths) => self.say(format!(
                "comparison: wrote {}",
                crate::explore::session::paths_text(&paths)
            )),
            Err(e) => self.warn(format!("comparison failed: {e}")),
        }
    }

    /// Searches for the most accurate configuration under the budget lines (size, latency)
    /// and the target's flash and RAM.
    fn search(&mut self) -> Vec<Request> {
        let mut budget = Budget {
            size_bytes: self.session.budget_bytes,
            latency_us: self.session.budget_latency_us,
            ..Budget::default()
        };
        if let Some(t) = &self.session.target {
            if !t.measured {
                budget.flash_bytes = t.flash_bytes.map(|f| f as f64);
            }
            budget.ram_bytes = t.ram_bytes.map(|r| r as f64);
            budget.target = Some(t.clone());
        }
        if budget.is_empty() {
            self.say(
                "no budget to search under: b sets a size budget at the current size (or start with --budget-size or --target)",
            );
            return Vec::new();
        }
        self.say(format!(
            "searching under {} (up to {} s; Esc cancels) …",
            budget.describe(),
            self.options.search_seconds
        ));
        let mut job = SearchJob::new(self.session.keyer(), budget, Objective::Accuracy, 0);
        job.time_limit = std::time::Duration::from_secs(self.options.search_seconds);
        let out = self.session.start_search(job);
        self.refresh();
        out
    }

    fn with_option(
        &mut self,
        f: impl FnOnce(&mut Session) -> Option<Vec<Request>>,
    ) -> Option<Vec<Request>> {
        let out = f(&mut self.session);
        if out.is_some() {
            self.dismiss();
        }
        self.absorb();
        self.refresh();
        out
    }

    /// An edit of the configuration (one undoable step).
    fn edit(&mut self, f: impl FnOnce(&mut Config)) -> Vec<Request> {
        let before = self.session.generation;
        let out = self.session.edit(f);
        if self.session.generation != before {
            self.dismiss();
        }
        self.absorb();
        self.refresh();
        out
    }

    fn step_sparsity(&mut self, delta: i32) -> Vec<Request> {
        let sel = self.selected;
        let clamp = |v: i32| v.clamp(0, i32::from(MAX_SPARSITY)) as u16;
        if let Some(g) = self.session.config.global {
            return self.edit(|c| c.global = Some(clamp(i32::from(g) + delta)));
        }
        let Some(layer) = self.session.config.layers.get(sel).copied() else {
            return Vec::new();
        };
        match layer.prune {
            PruneMethod::Nm => {
                self.say("2:4 pruning removes exactly half: press m for another method");
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

    // ----- worker messages -----

    pub fn handle_worker(&mut self, msg: WorkerMsg) -> Vec<Request> {
        self.with_session(|s| s.handle(msg))
    }

    // ----- derived data -----

    /// Recomputes the chart series after points, the current or pinned configuration, the
    /// budget or the zoom changed.
    pub fn refresh(&mut self) {
        let dense_acc = self
            .dense()
            .and_then(Point::accuracy)
            .map(|a| a.value * 100.0);
        let pinned_keys: Vec<u64> = self
            .session
            .pins
            .iter()
            .flatten()
            .map(|p| self.session.pin_key(p))
            .collect();
        let size = |p: &Point| p.size_bytes().map(|s| s as f64);
        let latency = |p: &Point| p.latency_us();
        self.size_chart = self.series(&size, dense_acc, &pinned_keys, self.session.size_limit());
        self.latency_chart = self.series(
            &latency,
            dense_acc,
            &pinned_keys,
            self.session.budget_latency_us,
        );
    }

    fn series(
        &self,
        x_of: &dyn Fn(&Point) -> Option<f64>,
        dense_acc: Option<f64>,
        pinned_keys: &[u64],
        budget: Option<f64>,
    ) -> ChartSeries {
        let target = self.session.target.as_ref();
        let raw: Vec<(u64, f64, f64, bool)> = self
            .session
            .measured()
            .filter_map(|p| {
                let fits = target.is_some_and(|t| p.fit(t).is_some_and(|f| f.fits()));
                Some((p.key, x_of(p)?, p.accuracy()?.value * 100.0, fits))
            })
            .filter(|(_, x, _, _)| *x > 0.0 && x.is_finite())
            .collect();
        let mut s = ChartSeries::default();
        if raw.is_empty() {
            s.x_bounds = [0.0, 1.0];
            s.y_bounds = [0.0, 100.0];
            return s;
        }
        // The accuracy range first: zoomed, it also narrows the x range to what stays visible.
        let (ylo, yhi) = raw
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                (lo.min(p.2), hi.max(p.2))
            });
        let mut yb = [ylo, yhi];
        if self.zoom
            && let Some(d) = dense_acc
        {
            yb = [(d - 5.0).max(ylo.min(d - 0.5)), yhi.max(d)];
            s.hidden_below = raw.iter().filter(|p| p.2 < yb[0]).count();
        }
        let x_range = |min_y: f64| {
            raw.iter()
                .filter(|p| p.2 >= min_y)
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                    (lo.min(p.1), hi.max(p.1))
                })
        };
        let (lo, hi) = match x_range(yb[0]) {
            (lo, hi) if lo <= hi => (lo, hi),
            _ => x_range(f64::NEG_INFINITY),
        };
        s.log_x = hi / lo > LOG_SPAN;
        let tx = |x: f64| if s.log_x { x.log10() } else { x };
        let pts: Vec<(f64, f64)> = raw.iter().map(|&(_, x, y, _)| (tx(x), y)).collect();
        let find = |key: u64| raw.iter().position(|r| r.0 == key).map(|i| pts[i]);
        s.frontier = pareto::frontier(&pts).into_iter().map(|i| pts[i]).collect();
        s.fitting = raw
            .iter()
            .zip(&pts)
            .filter(|(r, _)| r.3)
            .map(|(_, p)| *p)
            .collect();
        s.dense = find(self.session.dense_key);
        s.current = find(self.session.current_key);
        s.pinned = pinned_keys.iter().filter_map(|k| find(*k)).collect();
        s.cursor = self.cursor.and_then(find);
        s.curves = self
            .session
            .curves()
            .into_iter()
            .map(|(family, pts)| {
                (
                    family,
                    pts.iter().filter_map(|(_, p)| find(p.key)).collect(),
                )
            })
            .filter(|(_, line): &(CurveFamily, Vec<(f64, f64)>)| !line.is_empty())
            .collect();
        for p in self.session.measured() {
            let Provenance::FineTuned { from, .. } = &p.provenance else {
                continue;
            };
            let Some(at) = find(p.key) else { continue };
            s.tuned.push(at);
            if let Some(twin) = crate::explore::journal::parse_key(from).and_then(find) {
                s.tuned_links.push([twin, at]);
            }
        }

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
        let ypad = ((yb[1] - yb[0]) * 0.05).max(0.1);
        s.y_bounds = [(yb[0] - ypad).max(0.0), (yb[1] + ypad).min(100.0)];
        if let Some(b) = budget.filter(|b| *b > 0.0) {
            let bx = tx(b);
            xb[0] = xb[0].min(bx);
            xb[1] = xb[1].max(bx);
            s.budget = Some([(bx, s.y_bounds[0]), (bx, s.y_bounds[1])]);
        }
        s.x_bounds = xb;
        s.keys = raw.iter().map(|r| r.0).collect();
        s.all = pts;
        s
    }

    /// What the plots (`p`) draw: every point with its size, latency and accuracy.
    pub fn plot_input(&self) -> PlotInput {
        let mut input = self.session.plot_input();
        if self.zoom {
            // The slides show the band the explorer is zoomed on, and the sizes and latencies
            // of the points in it.
            input.accuracy_range = Some(self.size_chart.y_bounds);
            let data = |s: &ChartSeries| {
                let [a, b] = s.x_bounds;
                let range = if s.log_x {
                    [10f64.powf(a), 10f64.powf(b)]
                } else {
                    [a, b]
                };
                (!s.all.is_empty() && range[1] > range[0]).then_some(range)
            };
            input.size_range = data(&self.size_chart);
            input.latency_range = data(&self.latency_chart);
        }
        input
    }

    /// The selected layer's setting, for the detail view and the status bar.
    pub fn selected_setting(&self) -> Option<&config::LayerSetting> {
        self.session.config.layers.get(self.selected)
    }
}
