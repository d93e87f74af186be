//! The exploration session without a screen: Pareto frontiers against brute force, the cache
//! (journaled measurements are not measured again, counted), budgeted search on a fake
//! evaluator (every answer within its budget, the closest miss reported, the same seed the
//! same answer), residual coupling, and device fit with an activation arena computed by hand
//! for LeNet-5.

mod common;
mod tui_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};

use squeeze::explore::eval::{Figures, Stage};
use squeeze::explore::jobs::{Executor, Runner, WorkerMsg, drive};
use squeeze::explore::journal::Record;
use squeeze::explore::pareto;
use squeeze::explore::search::{self, Budget, Objective, SearchJob, SearchOutcome};
use squeeze::explore::sensitivity::{self, SensitivityGrid};
use squeeze::explore::session::{Request, Session};
use squeeze::explore::targets;
use tui_support::*;

#[test]
fn pareto_frontier_equals_brute_force() {
    let mut rng = StdRng::seed_from_u64(7);
    for round in 0..200 {
        let n = rng.random_range(0..40);
        // Coarse values so that ties in cost and in accuracy occur.
        let pts: Vec<(f64, f64)> = (0..n)
            .map(|_| {
                (
                    f64::from(rng.random_range(1..20u32)),
                    f64::from(rng.random_range(0..10u32)) / 10.0,
                )
            })
            .collect();
        // On the frontier: no other point is at most as costly and at least as accurate
        // while strictly better in one of them; of equal points, the first.
        let mut brute: Vec<usize> = (0..n)
            .filter(|&i| {
                !(0..n).any(|j| {
                    let (a, b) = (pts[j], pts[i]);
                    j != i
                        && a.0 <= b.0
                        && a.1 >= b.1
                        && (a.0 < b.0 || a.1 > b.1 || (a == b && j < i))
                })
            })
            .collect();
        brute.sort_by(|&a, &b| pts[a].0.total_cmp(&pts[b].0));
        let mut fast = pareto::frontier(&pts);
        fast.sort_by(|&a, &b| pts[a].0.total_cmp(&pts[b].0));
        let coords = |v: &[usize]| v.iter().map(|&i| pts[i]).collect::<Vec<_>>();
        assert_eq!(coords(&fast), coords(&brute), "round {round}: {pts:?}");
    }
}

/// Runs a session's requests through a real worker pool on `evaluator` until idle.
fn run(session: &mut Session, evaluator: Arc<CountingEvaluator>, requests: Vec<Request>) {
    let mut runner = Runner::new(evaluator, 2).expect("runner");
    let mut exec = Executor {
        runner: &mut runner,
        journal: None,
        plot: None,
    };
    drive(session, &mut exec, requests, &mut |_, _| {}, &|| false);
}

fn counting() -> Arc<CountingEvaluator> {
    Arc::new(CountingEvaluator {
        info: info(),
        count: AtomicUsize::new(0),
    })
}

#[test]
fn cached_measurements_are_not_measured_again() {
    let grid = SensitivityGrid::default();
    let ev = counting();
    let mut s = session();
    let r = s.sensitivity_sweep(&grid);
    run(&mut s, ev.clone(), r);
    let first = ev.count.load(Ordering::SeqCst);
    // The dense model and every probe (the fake never collapses).
    assert_eq!(first, 1 + sensitivity::probes(&s.info, &grid).len());
    let table = s.sensitivity_table(&grid);
    assert!(table.is_complete());

    // The same sweep again: nothing to measure.
    assert!(s.sensitivity_sweep(&grid).is_empty());
    assert_eq!(ev.count.load(Ordering::SeqCst), first);

    // A new session on the journal of the first (what a rerun or the explorer reads): every
    // probe comes from the cache, and the table is the same.
    let records: Vec<Record> = s
        .points
        .values()
        .filter_map(|p| {
            Some(Record::Point {
                key: squeeze::explore::journal::key_hex(p.key),
                stage: Stage::Full,
                config: p.config.clone(),
                label: p.label.clone(),
                figures: Box::new(p.full.clone()?),
                provenance: p.provenance.clone(),
                calibration: None,
                model: None,
            })
        })
        .collect();
    let mut again = session();
    again.load_cache(&records);
    // Cached points are known but not drawn until asked for: only the dense baseline is.
    assert_eq!(again.measured().count(), 1);
    assert!(again.points.len() > 40);
    assert_eq!(again.sensitivity_table(&grid), table);
    assert!(again.sensitivity_sweep(&grid).is_empty());
    assert_eq!(again.measured().count(), again.points.len());
    // An edit onto a cached configuration asks for the stages the cache lacks only.
    let probe = sensitivity::probes(&again.info, &grid)[3];
    let r = again.load(probe.config(3));
    let asked: Vec<Stage> = r
        .iter()
        .find_map(|r| match r {
            Request::Evaluate { request, .. } => Some(request.stages.clone()),
            _ => None,
        })
        .expect("an evaluation of the latency");
    assert_eq!(asked, vec![Stage::Latency]);
}

#[test]
fn collapsed_curves_stop_and_say_so() {
    // A fake whose fc1 collapses at 80 % sparsity and beyond.
    struct Collapsing(squeeze::explore::info::ModelInfo, AtomicUsize);
    impl squeeze::explore::eval::Evaluator for Collapsing {
        fn evaluate(
            &self,
            config: &squeeze::explore::Config,
            stage: Stage,
            _: &AtomicBool,
        ) -> Result<Figures, squeeze::explore::EvalError> {
            self.1.fetch_add(1, Ordering::SeqCst);
            let mut f = figures(&self.0, config, stage);
            if config.layers[0].sparsity >= 800 && f.accuracy.is_some() {
                f.accuracy = Some(squeeze::explore::Estimate::from_subset(
                    0.11, 10_000, 10_000,
                ));
            }
            Ok(f)
        }
        fn export(
            &self,
            _: &squeeze::explore::Config,
            _: &std::path::Path,
        ) -> Result<Vec<std::path::PathBuf>, squeeze::explore::EvalError> {
            Ok(Vec::new())
        }
    }
    let ev = Arc::new(Collapsing(info(), AtomicUsize::new(0)));
    let grid = SensitivityGrid::default();
    let mut s = session();
    let r = s.sensitivity_sweep(&grid);
    let mut runner = Runner::new(ev.clone(), 2).expect("runner");
    let mut exec = Executor {
        runner: &mut runner,
        journal: None,
        plot: None,
    };
    drive(&mut s, &mut exec, r, &mut |_, _| {}, &|| false);
    let table = s.sensitivity_table(&grid);
    let fc1 = &table.layers[0].prune;
    let statuses: Vec<_> = fc1.iter().map(|c| c.status).collect();
    use sensitivity::CellStatus::{Measured, Stopped};
    // 10 … 80 % measured, 85 % … 95 % left out.
    assert_eq!(
        statuses,
        vec![
            Measured, Measured, Measured, Measured, Measured, Measured, Stopped, Stopped, Stopped
        ]
    );
    assert!(table.stopped_early());
    let text = sensitivity::render_text(&table, &grid);
    assert!(
        text.contains("stopped") && text.contains("collapsed"),
        "{text}"
    );
    assert_eq!(
        ev.1.load(Ordering::SeqCst),
        1 + sensitivity::probes(&s.info, &grid).len() - 3
    );
}

fn search_with(budget: Budget, objective: Objective, seed: u64) -> SearchOutcome {
    let s = session();
    let mut job = SearchJob::new(s.keyer(), budget, objective, seed);
    job.time_limit = Duration::from_secs(60);
    let ev = CountingEvaluator {
        info: info(),
        count: AtomicUsize::new(0),
    };
    search::run(&ev, &job, &AtomicBool::new(false), &|_| {})
}

#[test]
fn search_answers_meet_their_budgets() {
    let dense_bytes = info().dense_bytes() as f64;
    for fraction in [0.5, 0.2, 0.1, 0.05, 0.03] {
        let budget = Budget {
            size_bytes: Some(dense_bytes * fraction),
            ..Budget::default()
        };
        let out = search_with(budget.clone(), Objective::Accuracy, 1);
        let best = out.best.expect("an answer");
        assert!(best.meets_budget, "{fraction}: {:?}", best.checks);
        let size = best.figures.size_bytes.unwrap() as f64;
        assert!(
            size <= dense_bytes * fraction,
            "{size} > {fraction} of dense"
        );
        // Same seed, same answer.
        let again = search_with(budget, Objective::Accuracy, 1);
        assert_eq!(again.best.map(|b| b.config), Some(best.config));
    }
    // Within an accuracy drop: the smallest configuration that loses at most 0.5 points.
    let out = search_with(
        Budget::default(),
        Objective::Smallest { max_drop_pt: 0.5 },
        3,
    );
    let best = out.best.expect("an answer");
    let drop = (out.dense_accuracy.unwrap() - best.accuracy()) * 100.0;
    assert!(drop <= 0.5 + 1e-9, "{drop}");
    assert!(best.figures.size_bytes.unwrap() < info().dense_bytes() as u64 / 4);
}

#[test]
fn an_impossible_budget_returns_the_closest_point_marked_as_missing() {
    // 100 bytes: not even the biases fit.
    let budget = Budget {
        size_bytes: Some(100.0),
        ..Budget::default()
    };
    let out = search_with(budget, Objective::Accuracy, 0);
    let best = out.best.clone().expect("the closest point is returned");
    assert!(!best.meets_budget);
    let miss = best
        .checks
        .iter()
        .find(|c| !c.meets())
        .expect("a missed check");
    assert_eq!(miss.what, "size");
    assert!(miss.need > 100.0);
    // The largest layer dominates what is left.
    assert_eq!(miss.dominant_layer.as_deref(), Some("fc1"));
    let text = miss.describe();
    assert!(text.contains("by") && text.contains("fc1 holds"), "{text}");
    assert!(out.summary().contains("nothing meets"), "{}", out.summary());
}

#[test]
fn target_budgets_use_flash_ram_and_estimated_latency() {
    let all = targets::load(None).unwrap();
    let mut budget = Budget::default();
    budget.add("target=cortex-m4,latency=20ms", &all).unwrap();
    let out = search_with(budget, Objective::Accuracy, 0);
    let best = out.best.expect("an answer");
    let whats: Vec<&str> = best.checks.iter().map(|c| c.what.as_str()).collect();
    assert_eq!(whats, vec!["flash", "RAM", "latency"]);
    assert!(best.meets_budget, "{:?}", best.checks);
    let m4 = targets::find(&all, "cortex-m4").unwrap();
    let fit = m4.fit(
        best.figures.size_bytes.unwrap(),
        best.figures.arena_bytes.unwrap(),
        &best.figures.layers,
        best.config.activation_bits,
    );
    assert!(fit.fits());
    assert!(fit.latency_estimate_us.unwrap() <= 20_000.0);
}

#[test]
fn workers_report_search_results_to_the_session() {
    let mut s = session();
    let mut job = SearchJob::new(
        s.keyer(),
        Budget {
            size_bytes: Some(60_000.0),
            ..Budget::default()
        },
        Objective::Accuracy,
        0,
    );
    job.time_limit = Duration::from_secs(60);
    let r = s.start_search(job);
    let ev = counting();
    let mut seen_done = false;
    let mut runner = Runner::new(ev, 2).expect("runner");
    let mut exec = Executor {
        runner: &mut runner,
        journal: None,
        plot: None,
    };
    drive(
        &mut s,
        &mut exec,
        r,
        &mut |_, m| seen_done |= matches!(m, WorkerMsg::SearchDone { .. }),
        &|| false,
    );
    assert!(seen_done);
    let answer = s.search.clone().and_then(|o| o.best).expect("an answer");
    assert!(answer.meets_budget);
    // The answer is a point of the session, ready to load.
    let p = s.point(answer.key).expect("the answer's point");
    assert!(p.shown && p.full.is_some());
    let r = s.load(answer.config.clone());
    assert!(
        r.iter()
            .any(|r| matches!(r, Request::Journal(Record::Current { .. })))
    );
    assert_eq!(s.current_key, answer.key);
}

/// A tiny residual network on disk: conv a → relu → conv b → add(from a's input producer).
fn residual_model(dir: &std::path::Path) -> squeeze::model::Model {
    let arch = r#"
[input]
shape = [2, 6, 6]
[[layer]]
op = "conv2d"
name = "stem"
weight = "stem.weight"
padding = 1
[[layer]]
op = "relu"
name = "act"
[[layer]]
op = "conv2d"
name = "a"
weight = "a.weight"
padding = 1
[[layer]]
op = "relu"
[[layer]]
op = "conv2d"
name = "b"
weight = "b.weight"
padding = 1
[[layer]]
op = "add"
from = "act"
[[layer]]
op = "flatten"
[[layer]]
op = "linear"
name = "fc"
weight = "fc.weight"
"#;
    let w = |n: usize| {
        (0..n)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 10.0)
            .collect::<Vec<_>>()
    };
    let tensors = vec![
        ("stem.weight".to_string(), vec![4, 2, 3, 3], w(72)),
        ("a.weight".to_string(), vec![4, 4, 3, 3], w(144)),
        ("b.weight".to_string(), vec![4, 4, 3, 3], w(144)),
        ("fc.weight".to_string(), vec![3, 144], w(432)),
    ];
    common::written_model(dir, arch, &tensors)
}

#[test]
fn layers_meeting_in_a_residual_add_are_flagged_as_coupled() {
    let dir = tempfile::tempdir().unwrap();
    let model = residual_model(dir.path());
    let info = squeeze::explore::info::ModelInfo::from_model(&model, "d", 1);
    let coupled: Vec<(String, Option<Vec<String>>)> = info
        .layers
        .iter()
        .map(|l| (l.name.clone(), l.coupled.clone()))
        .collect();
    assert_eq!(
        coupled,
        vec![
            ("stem".into(), Some(vec!["b".into()])),
            ("a".into(), None),
            ("b".into(), Some(vec!["stem".into()])),
            ("fc".into(), None),
        ]
    );
    let grid = SensitivityGrid::default();
    let table = sensitivity::table(&info, &grid, Some(0.9), &|_| (None, false));
    assert!(table.layers[0].coupled && !table.layers[1].coupled);
    let text = sensitivity::render_text(&table, &grid);
    assert!(
        text.contains("stem*: coupled with b (their outputs meet in an add or mul)"),
        "{text}"
    );
}

#[test]
fn the_lenet5_arena_matches_a_hand_count() {
    let model = squeeze::model::load(&common::asset("models/lenet5.safetensors"))
        .unwrap()
        .model;
    let arena = squeeze::measure::arena(&model, 4);
    // By hand, one sample in f32:
    //   conv1: input 1×28×28 = 784, output 20×24×24 = 11,520, im2col 25 × 576 = 14,400
    //          → 26,704 values;
    //   pool1: 11,520 + 20×12×12 = 2,880 → 14,400;
    //   conv2: input 2,880, output 50×8×8 = 3,200, im2col (20×5×5 = 500) × 64 = 32,000
    //          → 38,080 values = 152,320 bytes, the peak;
    //   fc1: 800 + 500; fc2: 500 + 10; ReLU and flatten work in place.
    let by_name = |n: &str| {
        arena
            .layers
            .iter()
            .find(|l| l.name == n)
            .map(|l| l.total_bytes)
            .unwrap()
    };
    assert_eq!(by_name("conv1"), 26_704 * 4);
    assert_eq!(by_name("conv2"), 38_080 * 4);
    assert_eq!(by_name("fc1"), 1_300 * 4);
    assert_eq!(arena.peak_bytes, 152_320);
    assert_eq!(arena.peak_layer, "conv2");
    // 8-bit activations: a quarter.
    assert_eq!(squeeze::measure::arena(&model, 1).peak_bytes, 38_080);
    // It fits a Cortex-M4's 256 KiB with room to spare: 262,144 − 152,320 = 109,824.
    let m4 = targets::find(&targets::load(None).unwrap(), "cortex-m4").unwrap();
    let fit = m4.fit(1_724_336, arena.peak_bytes as u64, &[], None);
    assert_eq!(fit.ram.unwrap().spare(), 109_824);
    // The dense f32 model does not fit its 1 MiB flash.
    assert!(!fit.flash.unwrap().fits());
}
