//! Background work: evaluations on a rayon pool that is not the caller's thread, reported as
//! small messages on a channel.
//!
//! Interactive evaluations are latest-wins: submitting one cancels the unfinished previous one
//! (its cancel flag is set; evaluators check it between batches). Sweeps, sensitivity probes
//! and searches are queued on a driver thread and run on the same pool, a few points at a
//! time, so an interactive request is never stuck behind a whole sweep; `cancel_sweeps` drops
//! the queue and stops the running one. `Executor` turns a session's requests into this work;
//! `drive` runs a session's requests to the end without a person watching.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, unbounded};
use rayon::prelude::*;

use super::config::Config;
use super::eval::{EvalError, Evaluator, Figures, Stage};
use super::finetune::{TuneJob, TuneOutcome, TuneProgress};
use super::journal::JournalWriter;
use super::plot::PlotInput;
use super::search::{self, SearchJob, SearchOutcome};
use super::sensitivity::{ProbeEvent, ProbeJob};
use super::session::{Request, Session};

/// Who asked for an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// An edit; the number is the app's edit generation.
    Interactive(u64),
    Sweep(u64),
}

/// What workers tell the UI.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerMsg {
    /// One stage of one configuration finished.
    Result {
        origin: Origin,
        key: u64,
        stage: Stage,
        figures: Figures,
    },
    /// One stage failed (not cancelled: cancellations are silent).
    Failed {
        origin: Origin,
        key: u64,
        stage: Stage,
        error: String,
    },
    /// A job measured a configuration it chose itself (a search's candidates).
    Measured {
        sweep: u64,
        key: u64,
        config: Config,
        label: Option<String>,
        stage: Stage,
        figures: Figures,
    },
    /// A sweep finished one more point.
    Progress {
        sweep: u64,
        done: usize,
        total: usize,
    },
    SweepDone {
        sweep: u64,
        cancelled: bool,
    },
    /// A search ended (before its `SweepDone`): the best configuration it found.
    SearchDone {
        sweep: u64,
        outcome: Box<SearchOutcome>,
    },
    /// A running fine-tune's progress.
    TuneProgress {
        id: u64,
        progress: TuneProgress,
    },
    /// A fine-tune ended: its figures, why it failed, or `None` when cancelled.
    TuneDone {
        id: u64,
        result: Option<Result<Box<TuneOutcome>, String>>,
    },
    /// A background task (export, plot) finished: what it wrote, or why it could not (in
    /// words, for the message line).
    TaskDone {
        task: String,
        result: Result<Vec<std::path::PathBuf>, String>,
    },
}

/// One configuration to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalRequest {
    pub key: u64,
    pub config: Config,
    /// In order; cached stages are left out by the caller.
    pub stages: Vec<Stage>,
}

/// What the sweep driver runs, in order.
enum Work {
    Points(Vec<EvalRequest>),
    Probes(ProbeJob),
    Search(Box<SearchJob>),
}

struct SweepJob {
    id: u64,
    work: Work,
    cancel: Arc<AtomicBool>,
}

/// Runs evaluations in the background and reports on `messages()`.
pub struct Runner {
    evaluator: Arc<dyn Evaluator>,
    pool: Arc<rayon::ThreadPool>,
    tx: Sender<WorkerMsg>,
    rx: Receiver<WorkerMsg>,
    interactive_cancel: Arc<AtomicBool>,
    sweep_tx: Option<Sender<SweepJob>>,
    sweep_cancels: Vec<Arc<AtomicBool>>,
    driver: Option<JoinHandle<()>>,
    /// The running fine-tune's cancel flag.
    tune_cancel: Option<Arc<AtomicBool>>,
}

/// Lowers the calling thread's scheduling priority (nice 10), so that the interface thread,
/// which shares the cores with the evaluation and fine-tuning workers, answers keys and redraws
/// first. A worker at lower priority still takes every cycle the interface leaves.
fn yield_to_the_interface() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority reads no memory; on Linux, `who = 0` with PRIO_PROCESS is the
        // calling thread (nice values are per thread), and a failure leaves the priority as is.
        let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    }
}

impl Runner {
    /// A runner with `threads` workers (0: one per core).
    pub fn new(evaluator: Arc<dyn Evaluator>, threads: usize) -> std::io::Result<Runner> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("squeeze-worker-{i}"))
            .start_handler(|_| yield_to_the_interface())
            .build()
            .map_err(std::io::Error::other)?;
        let pool = Arc::new(pool);
        let (tx, rx) = unbounded();
        let (sweep_tx, sweep_rx) = unbounded::<SweepJob>();
        let driver = {
            let pool = Arc::clone(&pool);
            let evaluator = Arc::clone(&evaluator);
            let tx = tx.clone();
            std::thread::Builder::new()
                .name("squeeze-sweeps".into())
                .spawn(move || {
                    for job in sweep_rx {
                        run_sweep(&pool, evaluator.as_ref(), &tx, job);
                    }
                })?
        };
        Ok(Runner {
            evaluator,
            pool,
            tx,
            rx,
            interactive_cancel: Arc::new(AtomicBool::new(false)),
            sweep_tx: Some(sweep_tx),
            sweep_cancels: Vec::new(),
            driver: Some(driver),
            tune_cancel: None,
        })
    }

    pub fn messages(&self) -> Receiver<WorkerMsg> {
        self.rx.clone()
    }

    /// A sender for the same channel, for other background helpers (the journal writer).
    pub fn sender(&self) -> Sender<WorkerMsg> {
        self.tx.clone()
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Evaluates `request` after cancelling the previous interactive request.
    pub fn evaluate_latest(&mut self, generation: u64, request: EvalRequest) {
        self.cancel_interactive();
        let cancel = Arc::clone(&self.interactive_cancel);
        let evaluator = Arc::clone(&self.evaluator);
        let tx = self.tx.clone();
        self.pool.spawn(move || {
            evaluate_stages(
                evaluator.as_ref(),
                &tx,
                Origin::Interactive(generation),
                &request,
                &cancel,
            );
        });
    }

    /// Stops the running interactive evaluation (if any) between batches.
    pub fn cancel_interactive(&mut self) {
        self.interactive_cancel.store(true, Ordering::Relaxed);
        self.interactive_cancel = Arc::new(AtomicBool::new(false));
    }

    /// Queues a sweep; it starts when the sweeps before it finish.
    pub fn start_sweep(&mut self, id: u64, points: Vec<EvalRequest>) {
        self.queue(id, Work::Points(points));
    }

    /// Queues sensitivity probes, like a sweep.
    pub fn start_probes(&mut self, id: u64, job: ProbeJob) {
        self.queue(id, Work::Probes(job));
    }

    /// Queues a search, like a sweep.
    pub fn start_search(&mut self, id: u64, job: Box<SearchJob>) {
        self.queue(id, Work::Search(job));
    }

    fn queue(&mut self, id: u64, work: Work) {
        let cancel = Arc::new(AtomicBool::new(false));
        self.sweep_cancels.retain(|c| !c.load(Ordering::Relaxed));
        self.sweep_cancels.push(Arc::clone(&cancel));
        let job = SweepJob { id, work, cancel };
        if let Some(tx) = &self.sweep_tx
            && let Err(e) = tx.send(job)
        {
            let _ = self.tx.send(WorkerMsg::SweepDone {
                sweep: e.0.id,
                cancelled: true,
            });
        }
    }

    /// Cancels the running sweep and every queued one.
    pub fn cancel_sweeps(&mut self) {
        for c in self.sweep_cancels.drain(..) {
            c.store(true, Ordering::Relaxed);
        }
    }

    /// Fine-tunes on a thread of its own (training is long; the pool stays free for edits),
    /// cancelling any fine-tune still running.
    pub fn start_finetune(&mut self, job: Box<TuneJob>) {
        self.cancel_finetune();
        let cancel = Arc::new(AtomicBool::new(false));
        self.tune_cancel = Some(Arc::clone(&cancel));
        let evaluator = Arc::clone(&self.evaluator);
        let tx = self.tx.clone();
        let id = job.id;
        let spawned = std::thread::Builder::new()
            .name("squeeze-finetune".into())
            .spawn(move || {
                yield_to_the_interface();
                let result = evaluator.finetune(&job, &cancel, &mut |progress| {
                    let _ = tx.send(WorkerMsg::TuneProgress { id, progress });
                });
                let result = match result {
                    Err(_) if cancel.load(Ordering::Relaxed) => None,
                    Err(EvalError::Cancelled) => None,
                    r => Some(r.map(Box::new).map_err(|e| e.to_string())),
                };
                let _ = tx.send(WorkerMsg::TuneDone { id, result });
            });
        if let Err(e) = spawned {
            let _ = self.tx.send(WorkerMsg::TuneDone {
                id,
                result: Some(Err(format!("cannot start a thread: {e}"))),
            });
        }
    }

    /// Stops the running fine-tune between batches; it reports nothing more.
    pub fn cancel_finetune(&mut self) {
        if let Some(c) = self.tune_cancel.take() {
            c.store(true, Ordering::Relaxed);
        }
    }

    /// Deletes a saved tuned model whose fine-tune was cancelled (a small file: done at once).
    pub fn discard_tuned(&self, model: &str) {
        self.evaluator.discard_tuned(model);
    }

    /// Runs `work` on the pool and reports its outcome as `TaskDone { task, .. }`.
    pub fn spawn_task<F>(&self, task: &str, work: F)
    where
        F: FnOnce(&dyn Evaluator) -> Result<Vec<std::path::PathBuf>, TaskError> + Send + 'static,
    {
        let evaluator = Arc::clone(&self.evaluator);
        let tx = self.tx.clone();
        let task = task.to_string();
        self.pool.spawn(move || {
            let result = work(evaluator.as_ref()).map_err(|e| e.to_string());
            let _ = tx.send(WorkerMsg::TaskDone { task, result });
        });
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.cancel_interactive();
        self.cancel_sweeps();
        self.cancel_finetune();
        // Closing the queue ends the driver after its (cancelled) current point.
        self.sweep_tx = None;
        if let Some(d) = self.driver.take() {
            let _ = d.join();
        }
    }
}

fn evaluate_stages(
    evaluator: &dyn Evaluator,
    tx: &Sender<WorkerMsg>,
    origin: Origin,
    request: &EvalRequest,
    cancel: &AtomicBool,
) {
    for &stage in &request.stages {
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        let msg = match evaluator.evaluate(&request.config, stage, cancel) {
            Ok(figures) => WorkerMsg::Result {
                origin,
                key: request.key,
                stage,
                figures,
            },
            Err(_) if cancel.load(Ordering::Relaxed) => return,
            Err(EvalError::Cancelled) => return,
            Err(error) => WorkerMsg::Failed {
                origin,
                key: request.key,
                stage,
                error: error.to_string(),
            },
        };
        let failed = matches!(msg, WorkerMsg::Failed { .. });
        // A closed channel means the UI is gone: nothing left to do.
        if tx.send(msg).is_err() || failed {
            return;
        }
    }
}

fn run_sweep(
    pool: &rayon::ThreadPool,
    evaluator: &dyn Evaluator,
    tx: &Sender<WorkerMsg>,
    job: SweepJob,
) {
    match &job.work {
        Work::Points(points) => run_points(pool, evaluator, tx, &job, points),
        Work::Probes(probes) => run_probes(pool, evaluator, tx, &job, probes),
        Work::Search(search) => {
            let id = job.id;
            let outcome = pool.install(|| {
                search::run(evaluator, search, &job.cancel, &|event| {
                    let _ = tx.send(event.into_msg(id));
                })
            });
            let _ = tx.send(WorkerMsg::SearchDone {
                sweep: id,
                outcome: Box::new(outcome),
            });
        }
    }
    let _ = tx.send(WorkerMsg::SweepDone {
        sweep: job.id,
        cancelled: job.cancel.load(Ordering::Relaxed),
    });
}

fn run_probes(
    pool: &rayon::ThreadPool,
    evaluator: &dyn Evaluator,
    tx: &Sender<WorkerMsg>,
    job: &SweepJob,
    probes: &ProbeJob,
) {
    let total = probes.len();
    let done = AtomicUsize::new(0);
    let origin = Origin::Sweep(job.id);
    pool.install(|| {
        evaluator.measure_probes(probes, &job.cancel, &|event| {
            let msg = match event {
                ProbeEvent::Measured { key, figures } => Some(WorkerMsg::Result {
                    origin,
                    key,
                    stage: Stage::Full,
                    figures,
                }),
                ProbeEvent::Failed { key, error } => Some(WorkerMsg::Failed {
                    origin,
                    key,
                    stage: Stage::Full,
                    error,
                }),
                ProbeEvent::Skipped { .. } => None,
            };
            if let Some(m) = msg {
                let _ = tx.send(m);
            }
            let done = done.fetch_add(1, Ordering::Relaxed) + 1;
            let _ = tx.send(WorkerMsg::Progress {
                sweep: job.id,
                done,
                total,
            });
        });
    });
}

fn run_points(
    pool: &rayon::ThreadPool,
    evaluator: &dyn Evaluator,
    tx: &Sender<WorkerMsg>,
    job: &SweepJob,
    points: &[EvalRequest],
) {
    let total = points.len();
    let done = AtomicUsize::new(0);
    // A few points at a time (one per worker): interactive requests queued on the pool run
    // between the chunks instead of after the whole sweep.
    let chunk = pool.current_num_threads().max(1);
    for points in points.chunks(chunk) {
        if job.cancel.load(Ordering::Relaxed) {
            break;
        }
        pool.install(|| {
            points.par_iter().for_each(|p| {
                evaluate_stages(evaluator, tx, Origin::Sweep(job.id), p, &job.cancel);
                if !job.cancel.load(Ordering::Relaxed) {
                    let done = done.fetch_add(1, Ordering::Relaxed) + 1;
                    let _ = tx.send(WorkerMsg::Progress {
                        sweep: job.id,
                        done,
                        total,
                    });
                }
            });
        });
    }
}

/// Why a background task (an export, plots) wrote nothing: an error of the evaluator or of
/// the module above that draws plots.
pub type TaskError = Box<dyn std::error::Error + Send + Sync>;

/// Draws plots for a `Request::Plot` into a directory, replacing none of the session's input
/// files (the report module's job; the explorer supplies it).
pub type PlotFn = fn(
    &PlotInput,
    &std::path::Path,
    &[std::path::PathBuf],
) -> Result<Vec<std::path::PathBuf>, TaskError>;

/// Carries out a session's requests on a runner and a journal.
pub struct Executor<'a> {
    pub runner: &'a mut Runner,
    pub journal: Option<&'a JournalWriter>,
    pub plot: Option<PlotFn>,
}

impl Executor<'_> {
    pub fn run(&mut self, requests: Vec<Request>) {
        for r in requests {
            match r {
                Request::Evaluate {
                    generation,
                    request,
                } => self.runner.evaluate_latest(generation, request),
                Request::CancelInteractive => self.runner.cancel_interactive(),
                Request::Sweep { id, points } => self.runner.start_sweep(id, points),
                Request::Probes { id, job } => self.runner.start_probes(id, job),
                Request::Search { id, job } => self.runner.start_search(id, job),
                Request::CancelSweeps => self.runner.cancel_sweeps(),
                Request::Export { config, dir } => {
                    self.runner.spawn_task("export", move |ev| {
                        ev.export(&config, &dir).map_err(TaskError::from)
                    });
                }
                Request::Finetune(job) => self.runner.start_finetune(job),
                Request::CancelFinetune => self.runner.cancel_finetune(),
                Request::ExportTuned {
                    key,
                    config,
                    model,
                    dir,
                } => {
                    self.runner.spawn_task("export", move |ev| {
                        ev.export_tuned(key, &config, model.as_deref(), &dir)
                            .map_err(TaskError::from)
                    });
                }
                Request::DiscardTuned(model) => self.runner.discard_tuned(&model),
                Request::Plot { input, dir } => {
                    if let Some(plot) = self.plot {
                        self.runner
                            .spawn_task("plots", move |ev| plot(&input, &dir, &ev.inputs()));
                    }
                }
                Request::Journal(record) => {
                    if let Some(j) = self.journal {
                        j.append(record);
                    }
                }
                Request::Quit => {}
            }
        }
    }
}

/// Runs `requests` and everything they lead to until the session is idle, handing every
/// worker message to the session and then to `watch` (a progress bar, a printer). Returns
/// early, with the work cancelled, when `stop` says so.
pub fn drive(
    session: &mut Session,
    exec: &mut Executor<'_>,
    requests: Vec<Request>,
    watch: &mut dyn FnMut(&Session, &WorkerMsg),
    stop: &dyn Fn() -> bool,
) {
    let rx = exec.runner.messages();
    exec.run(requests);
    while !session.idle() {
        if stop() {
            let r = session.cancel_work();
            exec.run(r);
            break;
        }
        let Ok(msg) = rx.recv_timeout(std::time::Duration::from_millis(200)) else {
            continue;
        };
        let requests = session.handle(msg.clone());
        exec.run(requests);
        watch(session, &msg);
    }
    // Messages that arrived with the last one (journal errors, late progress).
    while let Ok(msg) = rx.try_recv() {
        let requests = session.handle(msg.clone());
        exec.run(requests);
        watch(session, &msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    /// Sleeps in small slices, checking the cancel flag like a real evaluator between batches.
    struct Slow;

    impl Evaluator for Slow {
        fn evaluate(
            &self,
            config: &Config,
            stage: Stage,
            cancel: &AtomicBool,
        ) -> Result<Figures, EvalError> {
            for _ in 0..20 {
                if cancel.load(Ordering::Relaxed) {
                    return Err(EvalError::Cancelled);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if config.activation_bits == Some(1) {
                return Err(EvalError::Other(
                    "one-bit activations are not supported".into(),
                ));
            }
            Ok(Figures {
                size_bytes: Some(config.layers.len() as u64),
                latency_us: (stage == Stage::Latency).then_some(1.0),
                ..Figures::default()
            })
        }

        fn export(&self, _: &Config, _: &Path) -> Result<Vec<PathBuf>, EvalError> {
            Ok(vec![])
        }
    }

    fn request(key: u64) -> EvalRequest {
        EvalRequest {
            key,
            config: Config::dense(2),
            stages: vec![Stage::Quick, Stage::Full],
        }
    }

    fn drain(rx: &Receiver<WorkerMsg>, until: impl Fn(&WorkerMsg) -> bool) -> Vec<WorkerMsg> {
        let mut out = Vec::new();
        while let Ok(m) = rx.recv_timeout(Duration::from_secs(10)) {
            let stop = until(&m);
            out.push(m);
            if stop {
                break;
            }
        }
        out
    }

    #[test]
    fn newer_request_cancels_older() {
        let mut runner = Runner::new(Arc::new(Slow), 2).unwrap();
        let rx = runner.messages();
        runner.evaluate_latest(1, request(10));
        std::thread::sleep(Duration::from_millis(20));
        runner.evaluate_latest(2, request(20));
        let msgs = drain(&rx, |m| {
            matches!(
                m,
                WorkerMsg::Result {
                    key: 20,
                    stage: Stage::Full,
                    ..
                }
            )
        });
        // The first request never reached its full-set stage.
        assert!(!msgs.iter().any(|m| matches!(
            m,
            WorkerMsg::Result {
                key: 10,
                stage: Stage::Full,
                ..
            }
        )));
        assert!(msgs.iter().all(|m| !matches!(m, WorkerMsg::Failed { .. })));
    }

    #[test]
    fn failures_are_reported_and_stop_later_stages() {
        let mut runner = Runner::new(Arc::new(Slow), 1).unwrap();
        let rx = runner.messages();
        let mut r = request(5);
        r.config.activation_bits = Some(1);
        runner.evaluate_latest(1, r);
        let m = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(
            matches!(&m, WorkerMsg::Failed { key: 5, stage: Stage::Quick, error, .. }
            if error.contains("one-bit"))
        );
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    }

    #[test]
    fn sweeps_report_progress_and_cancel() {
        let mut runner = Runner::new(Arc::new(Slow), 2).unwrap();
        let rx = runner.messages();
        runner.start_sweep(1, (0..4).map(request).collect());
        let msgs = drain(&rx, |m| matches!(m, WorkerMsg::SweepDone { .. }));
        assert!(msgs.contains(&WorkerMsg::Progress {
            sweep: 1,
            done: 4,
            total: 4
        }));
        assert!(msgs.contains(&WorkerMsg::SweepDone {
            sweep: 1,
            cancelled: false
        }));

        runner.start_sweep(2, (0..40).map(request).collect());
        runner.start_sweep(3, (0..40).map(request).collect());
        std::thread::sleep(Duration::from_millis(30));
        runner.cancel_sweeps();
        let msgs = drain(&rx, |m| matches!(m, WorkerMsg::SweepDone { sweep: 3, .. }));
        assert!(msgs.contains(&WorkerMsg::SweepDone {
            sweep: 2,
            cancelled: true
        }));
        assert!(msgs.contains(&WorkerMsg::SweepDone {
            sweep: 3,
            cancelled: true
        }));
        let done = msgs
            .iter()
            .filter(|m| matches!(m, WorkerMsg::Progress { .. }))
            .count();
        assert!(done < 10, "{done} points finished after cancelling");
    }
}
