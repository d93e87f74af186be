//! The terminal UI: app state and update (`app`), pure rendering (`render`), the key table
//! (`keymap`) and the event loop here. The UI thread owns the `App`; one input thread reads
//! terminal events, workers report on a channel, and the loop waits on both and a tick with
//! crossbeam `select!`, drains what is pending, updates, then draws. The only module that
//! uses ratatui or crossterm.

pub mod app;
pub mod keymap;
pub mod present;
pub mod render;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select, unbounded};
use ratatui::crossterm::event::{
    self, DisableMouseCapture, EnableMouseCapture, Event, KeyEventKind,
};
use ratatui::crossterm::execute;

use crate::explore::jobs::{Executor, Runner};
use crate::explore::journal::JournalWriter;
use crate::report;

pub use app::{App, AppOptions, Request, View};

/// How often the screen refreshes without events (progress, spinners).
const TICK: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Append per-frame render times and key-to-screen latencies here.
    pub timings: Option<PathBuf>,
}

/// Restores the terminal when dropped, also while unwinding from a panic (ratatui's own panic
/// hook restores the screen first; this undoes the mouse capture too).
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = execute!(std::io::stdout(), DisableMouseCapture);
        ratatui::restore();
    }
}

/// Draws the plots a `Request::Plot` asks for (the report module's job), replacing none of
/// the session's `inputs`.
pub fn write_plots(
    input: &crate::explore::plot::PlotInput,
    dir: &std::path::Path,
    inputs: &[PathBuf],
) -> Result<Vec<PathBuf>, crate::explore::jobs::TaskError> {
    Ok(report::write_plots(input, dir, inputs)?)
}

/// An executor for the explorer's requests: the runner, the journal, and plots by `report`.
pub fn executor<'a>(runner: &'a mut Runner, journal: Option<&'a JournalWriter>) -> Executor<'a> {
    Executor {
        runner,
        journal,
        plot: Some(write_plots),
    }
}

/// Timing samples, written to the `--timings` file as they come and summarized at the end.
struct Timings {
    file: Option<std::io::BufWriter<std::fs::File>>,
    render_us: Vec<f64>,
    frame_us: Vec<f64>,
    key_us: Vec<f64>,
}

impl Timings {
    fn open(path: Option<&PathBuf>) -> anyhow::Result<Timings> {
        let file = match path {
            Some(p) => Some(std::io::BufWriter::new(crate::files::open_stream(
                "--timings",
                p,
                false,
            )?)),
            None => None,
        };
        Ok(Timings {
            file,
            render_us: Vec::new(),
            frame_us: Vec::new(),
            key_us: Vec::new(),
        })
    }

    fn frame(&mut self, render: Duration, frame: Duration, app: &App) {
        let Some(f) = &mut self.file else { return };
        let (r, t) = (render.as_secs_f64() * 1e6, frame.as_secs_f64() * 1e6);
        self.render_us.push(r);
        self.frame_us.push(t);
        let _ = writeln!(
            f,
            "frame render_us={r:.0} draw_us={t:.0} points={} sweeps={}",
            app.session.points.len(),
            app.session.sweeps.len()
        );
    }

    fn key(&mut self, latency: Duration, app: &App) {
        let Some(f) = &mut self.file else { return };
        let us = latency.as_secs_f64() * 1e6;
        self.key_us.push(us);
        let _ = writeln!(
            f,
            "key key_to_screen_us={us:.0} sweeps={}",
            app.session.sweeps.len()
        );
    }

    fn summary(&mut self) {
        let Some(f) = &mut self.file else { return };
        for (name, v) in [
            ("render_us", &mut self.render_us),
            ("draw_us", &mut self.frame_us),
            ("key_to_screen_us", &mut self.key_us),
        ] {
            if v.is_empty() {
                continue;
            }
            v.sort_by(f64::total_cmp);
            let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
            let _ = writeln!(
                f,
                "summary {name} n={} p50={:.0} p95={:.0} p99={:.0} max={:.0}",
                v.len(),
                q(0.5),
                q(0.95),
                q(0.99),
                q(1.0)
            );
        }
        let _ = f.flush();
    }
}

/// Runs the explorer until the person quits. The terminal is restored on every way out.
pub fn run(
    mut app: App,
    mut runner: Runner,
    journal: Option<JournalWriter>,
    options: RunOptions,
) -> anyhow::Result<()> {
    let mut timings = Timings::open(options.timings.as_ref())?;
    let mut terminal =
        ratatui::try_init().map_err(|e| anyhow::anyhow!("cannot set up the terminal: {e}"))?;
    let _guard = TerminalGuard;
    let _ = execute!(std::io::stdout(), EnableMouseCapture);

    let (input_tx, input_rx) = unbounded::<(Instant, Event)>();
    let stop = Arc::new(AtomicBool::new(false));
    let input = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("squeeze-input".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match event::poll(Duration::from_millis(50)) {
                        Ok(true) => match event::read() {
                            Ok(ev) => {
                                if input_tx.send((Instant::now(), ev)).is_err() {
                                    return;
                                }
                            }
                            Err(_) => return,
                        },
                        Ok(false) => {}
                        Err(_) => return,
                    }
                }
            })?
    };
    let worker_rx: Receiver<_> = runner.messages();
    let ticker = crossbeam_channel::tick(TICK);

    let size = terminal.size()?;
    app.resize(size.width, size.height);
    let first = app.start();
    executor(&mut runner, journal.as_ref()).run(first);

    let mut keys_since_draw: Vec<Instant> = Vec::new();
    let result = loop {
        let t0 = Instant::now();
        app.tick(t0);
        let mut render_time = Duration::ZERO;
        if let Err(e) = terminal.draw(|f| {
            let r0 = Instant::now();
            render::render(f, &app);
            render_time = r0.elapsed();
        }) {
            break Err(anyhow::anyhow!("cannot draw: {e}"));
        }
        let drawn = Instant::now();
        timings.frame(render_time, drawn - t0, &app);
        for k in keys_since_draw.drain(..) {
            timings.key(drawn - k, &app);
        }
        if app.should_quit {
            break Ok(());
        }

        // Wait for anything, then take everything else already waiting, then draw once.
        let handle_input = |app: &mut App, at: Instant, ev: Event, keys: &mut Vec<Instant>| match ev
        {
            Event::Key(k) if k.kind != KeyEventKind::Release => {
                keys.push(at);
                app.handle_key(k)
            }
            Event::Mouse(m) => app.handle_mouse(m),
            Event::Resize(w, h) => {
                app.resize(w, h);
                Vec::new()
            }
            _ => Vec::new(),
        };
        let requests = select! {
            recv(input_rx) -> ev => match ev {
                Ok((at, ev)) => handle_input(&mut app, at, ev, &mut keys_since_draw),
                Err(_) => break Err(anyhow::anyhow!("the terminal input closed")),
            },
            recv(worker_rx) -> msg => match msg {
                Ok(m) => app.handle_worker(m),
                Err(_) => Vec::new(),
            },
            recv(ticker) -> _ => Vec::new(),
        };
        let mut exec = executor(&mut runner, journal.as_ref());
        exec.run(requests);
        // Bounded, so a flood of worker messages cannot starve the screen.
        for _ in 0..256 {
            let requests = if let Ok((at, ev)) = input_rx.try_recv() {
                handle_input(&mut app, at, ev, &mut keys_since_draw)
            } else if let Ok(m) = worker_rx.try_recv() {
                app.handle_worker(m)
            } else {
                break;
            };
            exec.run(requests);
        }
    };
    stop.store(true, Ordering::Relaxed);
    let _ = input.join();
    timings.summary();
    drop(runner);
    result
}
