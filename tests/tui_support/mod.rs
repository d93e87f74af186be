//! Fakes for driving the explorer without a model: a LeNet-shaped `ModelInfo`, deterministic
//! figures for any configuration, and helpers that answer the app's requests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use squeeze::compress::Bits;
use squeeze::compress::recipe::PruneMethod;
use squeeze::explore::Config;
use squeeze::explore::eval::{Estimate, EvalError, Evaluator, Figures, LayerFigures, Stage};
use squeeze::explore::finetune::{TuneJob, TuneOutcome, TuneProgress};
use squeeze::explore::info::{HIST_BINS, LayerInfo, ModelInfo};
use squeeze::explore::jobs::{Origin, WorkerMsg};
use squeeze::explore::session::{Session, SessionOptions};
use squeeze::tui::{App, AppOptions, Request};

pub fn info() -> ModelInfo {
    let layer = |name: &str, rows: usize, cols: usize| {
        // A bell-shaped histogram, as trained weights have.
        let hist: Vec<u32> = (0..HIST_BINS)
            .map(|i| {
                let x = (i as f64 - (HIST_BINS / 2) as f64) / 6.0;
                ((-x * x).exp() * (rows * cols) as f64 / 15.0) as u32
            })
            .collect();
        LayerInfo {
            name: name.into(),
            op: "linear".into(),
            shape: vec![rows, cols],
            params: rows * cols + rows,
            macs: rows * cols,
            dense_bytes: (rows * cols + rows) * 4,
            cols,
            hist_range: (-0.25, 0.25),
            hist_before: hist,
            coupled: None,
            // As the recipe check says for a model's last linear layer.
            no_structured: (name == "fc3").then(|| {
                "fc3 produces the model's output (class scores); removing its outputs would remove classes".into()
            }),
        }
    };
    ModelInfo {
        name: "lenet-300-100".into(),
        data_name: "mnist".into(),
        samples: 10_000,
        quick_samples: 1_000,
        layers: vec![
            layer("fc1", 300, 784),
            layer("fc2", 100, 300),
            layer("fc3", 10, 100),
        ],
        classes: 10,
    }
}

pub fn session_options() -> SessionOptions {
    SessionOptions {
        fingerprint: 42,
        ..SessionOptions::default()
    }
}

pub fn options() -> AppOptions {
    AppOptions {
        out_dir: PathBuf::from("squeeze-out"),
        session: None,
        search_seconds: 30,
        targets: squeeze::explore::targets::load(None).expect("built-in targets"),
    }
}

pub fn session() -> Session {
    Session::new(info(), session_options())
}

pub fn app() -> App {
    let mut app = App::new(session(), options());
    app.resize(140, 45);
    app
}

/// Plausible, deterministic figures: size from bits and sparsity, accuracy falling with both.
pub fn figures(info: &ModelInfo, config: &Config, stage: Stage) -> Figures {
    let mut size = 0u64;
    let mut loss = 0.0;
    let mut layers = Vec::new();
    let mut pruned = 0.0;
    // Weights exactly zero after quantization: a tenth of the kept ones at 4 bits or fewer.
    let mut zeros = 0.0;
    let mut total = 0.0;
    for (l, s) in info.layers.iter().zip(&config.layers) {
        let weights = (l.params - l.shape[0]) as f64;
        let sparsity = match (config.global, s.prune) {
            (Some(g), _) => f64::from(g) / 1000.0,
            (None, PruneMethod::None) => 0.0,
            (None, PruneMethod::Nm) => 0.5,
            (None, PruneMethod::Std) => 0.6,
            (None, _) => f64::from(s.sparsity) / 1000.0,
        };
        let bits = match s.bits {
            Bits::F32 => 32.0,
            Bits::F16 | Bits::Bf16 => 16.0,
            Bits::Int(b) => f64::from(b),
        };
        let kept = weights * (1.0 - sparsity);
        let index = if sparsity > 0.0 { kept * 8.0 } else { 0.0 };
        let bytes = ((kept * bits + index) / 8.0) as u64 + l.shape[0] as u64 * 4;
        let macs = if sparsity > 0.0 {
            kept as u64
        } else {
            weights as u64
        };
        size += bytes;
        pruned += weights * sparsity;
        zeros += weights * sparsity + if bits <= 4.0 { kept * 0.1 } else { 0.0 };
        total += weights;
        loss += 0.02 * (sparsity / 0.99).powi(8) + 0.1 * (2f64).powf(-bits);
        let mut hist = l.hist_before.clone();
        for (i, h) in hist.iter_mut().enumerate() {
            *h = (f64::from(*h) * (1.0 - sparsity)) as u32;
            if bits < 9.0 && i % 3 != 0 {
                *h = 0;
            }
        }
        layers.push(LayerFigures {
            size_bytes: bytes,
            sparsity,
            // The engine's names: index, then the stored values as the setting names them.
            format: format!(
                "{}+{}",
                if sparsity > 0.0 { "csr8" } else { "dense" },
                s.quant_label().trim_end_matches(" asym")
            ),
            hist_after: hist,
            macs,
        });
    }
    let acc = (0.9812 - loss).max(0.1);
    let mut f = Figures {
        size_bytes: Some(size),
        dense_bytes: Some(info.dense_bytes() as u64),
        entropy_bytes: Some(size * 7 / 10),
        sparsity: Some(pruned / total),
        zeros: Some(zeros / total),
        layers,
        // One sample's largest pair of buffers: fc1's input and output, 4 or 1 byte each.
        arena_bytes: Some(
            (784 + 300)
                * if config.activation_bits.is_some() {
                    1
                } else {
                    4
                },
        ),
        arena_layer: Some("fc1".into()),
        ..Figures::default()
    };
    match stage {
        Stage::Quick => {
            // The subset's estimate is a little off, with its range.
            f.accuracy = Some(Estimate::from_subset(acc - 0.003, 1000, 10_000));
        }
        Stage::Full => f.accuracy = Some(Estimate::from_subset(acc, 10_000, 10_000)),
        Stage::Latency => {
            f.latency_us = Some(2.0 + size as f64 / 30_000.0);
            f.latency_p90_us = Some(2.5 + size as f64 / 28_000.0);
            f.layers.clear();
        }
    }
    f
}

/// The worker messages that answer `requests` completely (every stage of every evaluation).
pub fn answers(info: &ModelInfo, requests: &[Request]) -> Vec<WorkerMsg> {
    let mut out = Vec::new();
    for r in requests {
        match r {
            Request::Evaluate {
                generation,
                request,
            } => {
                for &stage in &request.stages {
                    out.push(WorkerMsg::Result {
                        origin: Origin::Interactive(*generation),
                        key: request.key,
                        stage,
                        figures: figures(info, &request.config, stage),
                    });
                }
            }
            Request::Probes { id, job } => {
                let total = job.len();
                let points = job
                    .dense
                    .iter()
                    .chain(job.chains.iter().flat_map(|c| &c.points));
                for (i, p) in points.enumerate() {
                    out.push(WorkerMsg::Result {
                        origin: Origin::Sweep(*id),
                        key: p.key,
                        stage: Stage::Full,
                        figures: figures(info, &p.config, Stage::Full),
                    });
                    out.push(WorkerMsg::Progress {
                        sweep: *id,
                        done: i + 1,
                        total,
                    });
                }
                out.push(WorkerMsg::SweepDone {
                    sweep: *id,
                    cancelled: false,
                });
            }
            Request::Sweep { id, points } => {
                for (i, p) in points.iter().enumerate() {
                    for &stage in &p.stages {
                        out.push(WorkerMsg::Result {
                            origin: Origin::Sweep(*id),
                            key: p.key,
                            stage,
                            figures: figures(info, &p.config, stage),
                        });
                    }
                    out.push(WorkerMsg::Progress {
                        sweep: *id,
                        done: i + 1,
                        total: points.len(),
                    });
                }
                out.push(WorkerMsg::SweepDone {
                    sweep: *id,
                    cancelled: false,
                });
            }
            Request::Finetune(job) => {
                out.push(WorkerMsg::TuneProgress {
                    id: job.id,
                    progress: TuneProgress::Epoch {
                        epoch: 1,
                        epochs: job.spec.epochs(),
                    },
                });
                out.push(WorkerMsg::TuneDone {
                    id: job.id,
                    result: Some(Ok(Box::new(tuned_outcome(info, job)))),
                });
            }
            _ => {}
        }
    }
    out
}

/// What a fake fine-tune gives: the configuration's figures with most of the accuracy lost to
/// compression back (a little more when distilling), and a model named by a made-up hash.
pub fn tuned_outcome(info: &ModelInfo, job: &TuneJob) -> TuneOutcome {
    let mut full = figures(info, &job.config, Stage::Full);
    let gain = if job.spec.settings.distill.is_some() {
        0.8
    } else {
        0.7
    };
    if let Some(a) = full.accuracy.as_mut() {
        a.value += (0.9812 - a.value) * gain;
    }
    TuneOutcome {
        full,
        latency: figures(info, &job.config, Stage::Latency),
        kept_epoch: 1,
        validation: Some(0.97),
        seconds: 1.0,
        model: Some(format!("{:064x}", job.key)),
        unsaved: None,
    }
}

/// Feeds every answer back, and the answers to whatever those cause, until quiet.
pub fn settle(app: &mut App, requests: Vec<Request>) {
    let info = app.session.info.clone();
    let mut pending = requests;
    while !pending.is_empty() {
        let msgs = answers(&info, &pending);
        pending = Vec::new();
        for m in msgs {
            pending.extend(app.handle_worker(m));
        }
    }
}

pub fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

pub fn code(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

/// Presses a key and answers all the work it asks for.
pub fn press(app: &mut App, k: KeyEvent) {
    let r = app.handle_key(k);
    settle(app, r);
}

/// Draws the app into a `width × height` test terminal.
pub fn draw(app: &App, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
    t.draw(|f| squeeze::tui::render::render(f, app))
        .expect("draw");
    t
}

/// The whole screen as text, one line per row.
pub fn screen(t: &Terminal<TestBackend>) -> String {
    let buf = t.backend().buffer();
    let mut s = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            s.push_str(buf[(x, y)].symbol());
        }
        s.push('\n');
    }
    s
}

/// A fake evaluator for runs through the real worker pool.
pub struct FakeEvaluator(pub ModelInfo);

impl Evaluator for FakeEvaluator {
    fn evaluate(
        &self,
        config: &Config,
        stage: Stage,
        _: &AtomicBool,
    ) -> Result<Figures, EvalError> {
        std::thread::sleep(std::time::Duration::from_millis(2));
        Ok(figures(&self.0, config, stage))
    }

    fn export(&self, config: &Config, dir: &Path) -> Result<Vec<PathBuf>, EvalError> {
        let io = |e: std::io::Error| EvalError::Other(e.to_string());
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join("recipe.toml");
        std::fs::write(&path, config.to_recipe(&self.0).to_toml()).map_err(io)?;
        Ok(vec![path])
    }
}

/// Counts the evaluations a fake answers, to show which ones the cache saves.
pub struct CountingEvaluator {
    pub info: ModelInfo,
    pub count: std::sync::atomic::AtomicUsize,
}

impl Evaluator for CountingEvaluator {
    fn evaluate(
        &self,
        config: &Config,
        stage: Stage,
        _: &AtomicBool,
    ) -> Result<Figures, EvalError> {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(figures(&self.info, config, stage))
    }

    fn export(&self, _: &Config, _: &Path) -> Result<Vec<PathBuf>, EvalError> {
        Ok(Vec::new())
    }
}
