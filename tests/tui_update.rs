//! The explorer's update logic without a terminal: keys → state → requested work,
//! latest-wins generations, cache hits, sweeps and their cancellation, journaling, resume.

mod tui_support;

use std::sync::Arc;
use std::time::Duration;

use ratatui::crossterm::event::{KeyCode, KeyModifiers, MouseButton, MouseEvent, MouseEventKind};

use squeeze::compress::Bits;
use squeeze::compress::recipe::{PruneMethod, Scheme};
use squeeze::explore::eval::Stage;
use squeeze::explore::jobs::{Origin, Runner, WorkerMsg};
use squeeze::explore::journal::Record;
use squeeze::explore::sensitivity;
use squeeze::explore::sweep;
use squeeze::tui::app::View;
use squeeze::tui::{Request, executor};
use tui_support::*;

fn evaluations(r: &[Request]) -> Vec<&squeeze::explore::EvalRequest> {
    r.iter()
        .filter_map(|r| match r {
            Request::Evaluate { request, .. } => Some(request),
            _ => None,
        })
        .collect()
}

#[test]
fn start_evaluates_dense_at_every_stage() {
    let mut app = app();
    let r = app.start();
    let ev = evaluations(&r);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].key, app.session.dense_key);
    assert_eq!(
        ev[0].stages,
        vec![Stage::Quick, Stage::Full, Stage::Latency]
    );
    assert!(
        r.iter()
            .any(|r| matches!(r, Request::Journal(Record::Current { .. })))
    );
    assert_eq!(app.session.pending.len(), 3);
    settle(&mut app, r);
    assert!(app.session.pending.is_empty());
    let dense = app.session.dense().unwrap();
    assert!(dense.full.is_some() && dense.latency.is_some());
}

#[test]
fn an_edit_requests_the_new_configuration() {
    let mut app = app();
    let r = app.start();
    settle(&mut app, r);
    let g0 = app.session.generation;
    let r = app.handle_key(code(KeyCode::Right));
    let ev = evaluations(&r);
    assert_eq!(ev.len(), 1);
    let layer = &ev[0].config.layers[0];
    assert_eq!((layer.prune, layer.sparsity), (PruneMethod::L1, 50));
    assert!(matches!(
        r[0],
        Request::Evaluate { .. } | Request::Journal(_)
    ));
    assert_eq!(app.session.generation, g0 + 1);
    assert!(
        r.iter()
            .any(|r| matches!(r, Request::Evaluate { generation, .. } if *generation == g0 + 1))
    );

    // Shift+→ and + act on the same layer: 5 % + 1 %, then f32 stays the widest.
    app.handle_key(ratatui::crossterm::event::KeyEvent::new(
        KeyCode::Right,
        KeyModifiers::SHIFT,
    ));
    assert_eq!(app.session.config.layers[0].sparsity, 60);
    assert!(app.handle_key(key('+')).is_empty());
    app.handle_key(key('-'));
    app.handle_key(key('-'));
    assert_eq!(app.session.config.layers[0].bits, Bits::Int(8));
    app.handle_key(key('s'));
    assert_eq!(app.session.config.layers[0].scheme, Scheme::Asymmetric);
    // ↓ moves to fc2; edits go there.
    app.handle_key(key('j'));
    app.handle_key(key('l'));
    assert_eq!(app.session.config.layers[1].sparsity, 50);
    assert_eq!(app.session.config.layers[0].sparsity, 60);
}

#[test]
fn stale_results_land_on_their_own_point_only() {
    let mut app = app();
    let r = app.start();
    settle(&mut app, r);
    let first = app.handle_key(code(KeyCode::Right));
    let second = app.handle_key(code(KeyCode::Right));
    let (k1, k2) = (evaluations(&first)[0].key, evaluations(&second)[0].key);
    assert_ne!(k1, k2);
    // The older request's quick answer arrives late (it was cancelled after one stage).
    let late = answers(&app.session.info, &first)
        .into_iter()
        .find(|m| {
            matches!(
                m,
                WorkerMsg::Result {
                    stage: Stage::Quick,
                    ..
                }
            )
        })
        .unwrap();
    app.handle_worker(late);
    assert!(app.session.points[&k1].quick.is_some());
    assert!(app.current().unwrap().quick.is_none());
    assert_eq!(
        app.session.pending,
        vec![Stage::Quick, Stage::Full, Stage::Latency]
    );
    settle(&mut app, second);
    assert!(app.session.pending.is_empty());
    assert_eq!(app.current().unwrap().key, k2);
}

#[test]
fn returning_to_a_configuration_is_a_cache_hit() {
    let mut app = app();
    let r = app.start();
    settle(&mut app, r);
    press(&mut app, code(KeyCode::Right));
    // Undo goes back to dense: measured already, so nothing is evaluated and the running
    // edit (none here) is cancelled.
    let r = app.handle_key(key('u'));
    assert!(evaluations(&r).is_empty());
    assert!(r.contains(&Request::CancelInteractive));
    assert!(app.session.pending.is_empty());
    assert_eq!(app.session.current_key, app.session.dense_key);
    // Redo: the 5 % point is cached too.
    let r = app.handle_key(key('U'));
    assert!(evaluations(&r).is_empty());
    assert_eq!(app.session.config.layers[0].sparsity, 50);
    // Undo past the start says so.
    app.handle_key(key('u'));
    assert!(app.handle_key(key('u')).is_empty());
    assert_eq!(app.message_text(), Some("nothing to undo"));
}

#[test]
fn partially_cached_configurations_ask_only_for_missing_stages() {
    let mut app = app();
    let r = app.start();
    settle(&mut app, r);
    let r = app.handle_key(code(KeyCode::Right));
    // Only the quick estimate arrives before we go back and forth.
    let quick = answers(&app.session.info, &r).remove(0);
    app.handle_worker(quick);
    app.handle_key(code(KeyCode::Left));
    let r = app.handle_key(code(KeyCode::Right));
    assert_eq!(evaluations(&r)[0].stages, vec![Stage::Full, Stage::Latency]);
}

#[test]
fn failures_show_in_plain_words_and_are_journaled() {
    let mut app = app();
    let r = app.start();
    settle(&mut app, r);
    let r = app.handle_key(key('a'));
    let ev = evaluations(&r)[0].clone();
    let out = app.handle_worker(WorkerMsg::Failed {
        origin: Origin::Interactive(app.session.generation),
        key: ev.key,
        stage: Stage::Quick,
        error: "activation calibration: no samples".into(),
    });
    assert!(
        matches!(&out[0], Request::Journal(Record::Failed { error, .. }) if error.contains("calibration"))
    );
    let m = app.message().unwrap();
    assert!(m.error);
    assert_eq!(
        m.text,
        "quick estimate failed: activation calibration: no samples"
    );
    assert!(app.session.pending.is_empty());
}

#[test]
fn sweeps_skip_cached_points_and_cancel_with_esc() {
    let mut app = app();
    let r = app.start();
    settle(&mut app, r);
    let r = app.handle_key(key('w'));
    let [Request::Sweep { id, points }] = r.as_slice() else {
        panic!("expected one sweep: {r:?}");
    };
    let grid = sweep::UNIFORM_SPARSITIES.len() * sweep::UNIFORM_BITS.len();
    // The dense corner of the grid is cached.
    assert_eq!(points.len(), grid - 1);
    assert_eq!(app.session.sweeps.len(), 1);
    let id = *id;
    app.handle_worker(WorkerMsg::Progress {
        sweep: id,
        done: 3,
        total: grid - 1,
    });
    assert_eq!(app.session.sweeps[0].done, 3);
    let r = app.handle_key(code(KeyCode::Esc));
    assert!(r.contains(&Request::CancelSweeps));
    assert!(app.session.sweeps.is_empty());
    assert!(app.message_text().unwrap().contains("3 of"));
    // The worker confirms later; nothing breaks.
    app.handle_worker(WorkerMsg::SweepDone {
        sweep: id,
        cancelled: true,
    });

    // A full sweep, then the same sweep again: everything is cached.
    let r = app.handle_key(key('S'));
    settle(&mut app, r);
    assert!(app.handle_key(key('S')).is_empty());
    assert!(app.message_text().unwrap().contains("already measured"));
    // Sensitivity curves are filled for every layer.
    for s in &app.session.sensitivity {
        assert_eq!(s.prune.len(), sensitivity::DEFAULT_SPARSITIES.len());
        assert_eq!(s.bits.len(), sensitivity::DEFAULT_BITS.len());
    }
}

#[test]
fn presets_global_pruning_and_apply_to_all() {
    let mut app = app();
    let r = app.start();
    settle(&mut app, r);
    app.handle_key(key('4'));
    assert_eq!(app.session.preset_name(), Some("Deep-Compression-like"));
    assert_eq!(app.session.config.layers[0].sparsity, 920);
    assert_eq!(app.session.config.layers[2].sparsity, 740);
    assert_eq!(app.session.config.layers[0].scheme, Scheme::Kmeans);
    app.handle_key(key('n'));
    assert_eq!(app.session.preset_name(), Some("dense"));
    app.handle_key(key('n'));
    assert_eq!(app.session.preset_name(), Some("int8 everywhere"));
    assert!(
        app.session
            .config
            .layers
            .iter()
            .all(|l| l.bits == Bits::Int(8))
    );
    // An edit leaves the preset.
    app.handle_key(key('-'));
    assert_eq!(app.session.preset_name(), None);
    app.handle_key(key('A'));
    assert!(
        app.session
            .config
            .layers
            .iter()
            .all(|l| l.bits == Bits::Int(7))
    );

    app.handle_key(key('r'));
    assert!(app.session.config.is_dense());
    app.handle_key(key('G'));
    assert_eq!(app.session.config.global, Some(500));
    app.handle_key(code(KeyCode::Right));
    assert_eq!(app.session.config.global, Some(550));
    assert!(app.session.config.layers.iter().all(|l| l.sparsity == 0));
    let recipe = app.session.config.to_recipe(&app.session.info);
    assert_eq!(recipe.global.map(|g| g.sparsity), Some(0.55));
}

#[test]
fn export_plot_pin_and_views() {
    let mut app = app();
    let r = app.start();
    settle(&mut app, r);
    press(&mut app, key('3'));
    // `e` asks where, prefilled with the default directory.
    assert!(app.handle_key(key('e')).is_empty());
    let default = app.prompt.clone().unwrap();
    assert!(default.starts_with("squeeze-out"), "{default}");
    assert!(default.contains("lenet-300-100-"));
    // Keys edit the path while the prompt is open (q does not quit).
    for _ in 0..default.len() {
        app.handle_key(code(KeyCode::Backspace));
    }
    for c in "exports/q".chars() {
        app.handle_key(key(c));
    }
    assert!(!app.should_quit);
    let r = app.handle_key(code(KeyCode::Enter));
    let [Request::Export { config, dir }] = r.as_slice() else {
        panic!("{r:?}");
    };
    assert_eq!(config.global, Some(500));
    assert_eq!(dir, &std::path::PathBuf::from("exports/q"));
    assert!(app.prompt.is_none());
    // Esc cancels an export.
    app.handle_key(key('e'));
    assert!(app.handle_key(code(KeyCode::Esc)).is_empty());
    assert!(app.prompt.is_none());
    assert_eq!(app.message_text(), Some("export cancelled"));
    app.handle_key(key('c'));
    assert!(app.session.pins[0].is_some());
    press(&mut app, key('1'));
    let r = app.handle_key(key('p'));
    let [Request::Plot { input, .. }] = r.as_slice() else {
        panic!("{r:?}");
    };
    assert_eq!(input.points.len(), 2);
    assert!(input.pins.len() == 1 && input.dense.is_some());
    app.handle_worker(WorkerMsg::TaskDone {
        task: "plots".into(),
        result: Ok(vec!["squeeze-out/accuracy-vs-size.png".into()]),
    });
    assert!(app.message_text().unwrap().contains("accuracy-vs-size.png"));

    app.handle_key(key('?'));
    assert_eq!(app.view, View::Help);
    app.handle_key(code(KeyCode::Esc));
    assert_eq!(app.view, View::Main);
    app.handle_key(code(KeyCode::Enter));
    assert_eq!(app.view, View::Detail);
    let r = app.handle_key(key('q'));
    assert_eq!(r, vec![Request::Quit]);
    assert!(app.should_quit);
}

#[test]
fn mouse_selects_rows_and_scrolls() {
    let mut app = app();
    let r = app.start();
    settle(&mut app, r);
    let click = |row| MouseEvent {
        kind: MouseEventKind::Down(MouseButton::Left),
        column: 10,
        row,
        modifiers: KeyModifiers::NONE,
    };
    // Title on row 0, table border on 1, header on 2: fc3 is on row 5.
    app.handle_mouse(click(5));
    assert_eq!(app.selected, 2);
    app.handle_mouse(click(2));
    assert_eq!(app.selected, 2);
    app.handle_mouse(MouseEvent {
        kind: MouseEventKind::ScrollUp,
        column: 0,
        row: 0,
        modifiers: KeyModifiers::NONE,
    });
    assert_eq!(app.selected, 1);
}

#[test]
fn resume_restores_points_pin_and_current() {
    let mut app = app();
    let mut journal = Vec::new();
    let run = |app: &mut squeeze::tui::App, r: Vec<Request>, journal: &mut Vec<Record>| {
        let mut pending = r;
        while !pending.is_empty() {
            for r in &pending {
                if let Request::Journal(rec) = r {
                    journal.push(rec.clone());
                }
            }
            let msgs = answers(&app.session.info, &pending);
            pending = msgs
                .into_iter()
                .flat_map(|m| app.handle_worker(m))
                .collect();
        }
    };
    let r = app.start();
    run(&mut app, r, &mut journal);
    for k in ['4', 'c', 'j', '-'] {
        let r = app.handle_key(key(k));
        run(&mut app, r, &mut journal);
    }
    let measured = app.session.measured().count();
    let config = app.session.config.clone();

    let mut again = tui_support::app();
    again.restore(journal);
    assert_eq!(again.session.measured().count(), measured);
    assert_eq!(again.session.config, config);
    assert!(again.session.pins[0].is_some());
    // Everything is cached: starting evaluates nothing.
    let r = again.start();
    assert!(evaluations(&r).is_empty());
}

#[test]
fn runs_through_the_real_worker_pool() {
    let mut app = app();
    let mut runner = Runner::new(Arc::new(FakeEvaluator(info())), 2).unwrap();
    let rx = runner.messages();
    let first = app.start();
    executor(&mut runner, None).run(first);
    let mut sweep_started = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if app.session.pending.is_empty() && !sweep_started {
            let r = app.handle_key(key('S'));
            executor(&mut runner, None).run(r);
            // An edit while the sweep runs is answered in between its points.
            let r = app.handle_key(code(KeyCode::Right));
            executor(&mut runner, None).run(r);
            sweep_started = true;
        }
        if sweep_started && app.session.sweeps.is_empty() && app.session.pending.is_empty() {
            break;
        }
        if let Ok(m) = rx.recv_timeout(Duration::from_secs(5)) {
            let r = app.handle_worker(m);
            executor(&mut runner, None).run(r);
        }
    }
    assert!(
        sweep_started && app.session.sweeps.is_empty(),
        "sweep did not finish"
    );
    assert!(app.current().unwrap().full.is_some());
    assert!(app.session.sensitivity.iter().all(|s| !s.prune.is_empty()));
}

#[test]
fn edits_that_keep_the_recipe_keep_the_cache() {
    let mut app = app();
    let r = app.start();
    settle(&mut app, r);
    // Granularity means nothing for an f32 layer: same recipe, same measurements.
    let r = app.handle_key(key('g'));
    assert!(evaluations(&r).is_empty(), "{r:?}");
    assert_eq!(app.session.current_key, app.session.dense_key);
    assert!(app.session.can_undo());
}

/// The current configuration fails at its first stage, as structured pruning on an output
/// layer or a calibration problem does.
fn fail_current(app: &mut squeeze::tui::App, r: &[Request], error: &str) {
    let ev = evaluations(r)[0].clone();
    let _ = app.handle_worker(WorkerMsg::Failed {
        origin: Origin::Interactive(app.session.generation),
        key: ev.key,
        stage: Stage::Quick,
        error: error.into(),
    });
}

#[test]
fn messages_age_newer_replace_older_and_the_log_keeps_them() {
    let mut app = app();
    let r = app.start();
    settle(&mut app, r);
    let r = app.handle_key(key('a'));
    fail_current(&mut app, &r, "activation calibration: no samples");
    assert!(app.message().unwrap().error);
    // A newer message replaces the error: a preset, a pin, an export all say so.
    press(&mut app, key('2'));
    assert_eq!(app.message_text(), Some("preset: int8 everywhere"));
    press(&mut app, key('c'));
    assert_eq!(app.message_text(), Some("pinned as A"));
    // A failed export, then one that worked: the newer one is shown.
    app.handle_worker(WorkerMsg::TaskDone {
        task: "export".into(),
        result: Err("squeeze-out/x/model.safetensors: File exists".into()),
    });
    assert!(app.message().unwrap().error);
    app.handle_worker(WorkerMsg::TaskDone {
        task: "export".into(),
        result: Ok(vec!["squeeze-out/y/recipe.toml".into()]),
    });
    let m = app.message().unwrap();
    assert!(!m.error && m.text.contains("recipe.toml"), "{m:?}");
    // Messages age.
    app.tick(app.now + Duration::from_secs(squeeze::tui::app::MESSAGE_SECONDS + 1));
    assert_eq!(app.message(), None);
    // The log keeps everything; while it is open keys only close it.
    let before = app.session.config.clone();
    app.handle_key(key('M'));
    assert_eq!(app.view, View::Messages);
    let screen = screen(&draw(&app, 100, 30));
    assert!(
        screen.contains("activation calibration: no samples"),
        "{screen}"
    );
    assert!(screen.contains("File exists"), "{screen}");
    assert!(app.handle_key(code(KeyCode::Right)).is_empty());
    assert_eq!(app.view, View::Main);
    assert_eq!(app.session.config, before);
}

#[test]
fn structured_pruning_never_reaches_the_output_layer() {
    let mut app = app();
    let r = app.start();
    settle(&mut app, r);
    // `m` on fc3 (the output layer) skips structured.
    app.handle_key(key('j'));
    app.handle_key(key('j'));
    for _ in 0..8 {
        app.handle_key(key('m'));
        assert_ne!(app.session.config.layers[2].prune, PruneMethod::Structured);
    }
    app.handle_key(key('r'));
    // On fc1 it is offered; `A` copies it everywhere it can go and leaves fc3 whole.
    app.handle_key(key('k'));
    app.handle_key(key('k'));
    for _ in 0..3 {
        app.handle_key(key('m'));
    }
    assert_eq!(app.session.config.layers[0].prune, PruneMethod::Structured);
    app.handle_key(key('-'));
    app.handle_key(key('A'));
    let layers = &app.session.config.layers;
    assert_eq!(layers[1].prune, PruneMethod::Structured);
    assert_eq!(layers[2].prune, PruneMethod::None);
    assert_eq!(
        layers[2].bits,
        Bits::F16,
        "the rest of the setting still applies"
    );
    assert!(app.message_text().unwrap().contains("fc3"));
}

#[test]
fn a_failed_configuration_is_one_clear_state() {
    let mut app = app();
    let r = app.start();
    settle(&mut app, r);
    let r = app.handle_key(key('a'));
    fail_current(&mut app, &r, "activation calibration: fc1: no finite value");
    for (w, h) in [(140, 45), (80, 24)] {
        let s = screen(&draw(&app, w, h));
        assert!(s.contains("failed"), "{s}");
        assert!(s.contains("cannot be measured"), "{s}");
        assert!(!s.contains("measuring"), "{s}");
        assert!(!s.contains("idle"), "{s}");
        assert!(!s.contains('…'), "{s}");
    }
    // Once the message has aged, the reason is still on screen: it is the state.
    app.tick(app.now + Duration::from_secs(squeeze::tui::app::ERROR_SECONDS + 1));
    let s = screen(&draw(&app, 140, 45));
    assert!(s.contains("no finite value"), "{s}");
}

#[test]
fn messages_wrap_and_shorten_paths_instead_of_cutting() {
    let mut app = app();
    let r = app.start();
    settle(&mut app, r);
    let cwd = std::env::current_dir().unwrap();
    let dir = cwd.join("squeeze-out/lenet-300-100-0123abcd");
    app.handle_worker(WorkerMsg::TaskDone {
        task: "export".into(),
        result: Ok(vec![
            dir.join("recipe.toml"),
            dir.join("model.safetensors"),
            dir.join("measurement.json"),
        ]),
    });
    assert_eq!(
        app.message_text(),
        Some(
            "export: wrote squeeze-out/lenet-300-100-0123abcd/{recipe.toml, model.safetensors, measurement.json}"
        )
    );
    let s = screen(&draw(&app, 80, 24));
    assert!(s.contains("measurement.json}"), "{s}");
    // A long error wraps over rows rather than ending mid-word.
    let long = "quick estimate failed: layer fc3: structured pruning is not possible: fc3 produces the model's output (class scores); removing its outputs would remove classes";
    app.warn(long);
    let s = screen(&draw(&app, 80, 24));
    // The message rows, above the key bar, hold the whole text.
    let rows: Vec<&str> = s.lines().collect();
    let joined = rows[rows.len() - 4..rows.len() - 1]
        .iter()
        .map(|r| r.trim())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(joined.contains(long), "{s}");
}

#[test]
fn the_header_keeps_the_point_count_at_80_columns() {
    let mut app = app();
    let r = app.start();
    settle(&mut app, r);
    press(&mut app, key('2'));
    press(&mut app, key('c'));
    let n = app.session.measured().count();
    for w in [80, 100, 140] {
        let s = screen(&draw(&app, w, 24));
        let first = s.lines().next().unwrap();
        assert!(
            first.trim_end().ends_with(&format!("{n} points")),
            "{w}: {first}"
        );
        assert!(first.contains("lenet-300-100"), "{first}");
    }
}

#[test]
fn legends_sit_on_the_border_at_every_size() {
    let mut app = app();
    let r = app.start();
    settle(&mut app, r);
    press(&mut app, key('w'));
    press(&mut app, key('4'));
    for (w, h) in [(220, 60), (100, 30), (80, 24)] {
        let s = screen(&draw(&app, w, h));
        // No legend box inside a chart; the legend is on the charts' lower border.
        assert!(!s.contains("│points"), "{s}");
        let border = s
            .lines()
            .find(|l| l.contains("Pareto") && l.contains('└'))
            .unwrap_or_else(|| panic!("{w}×{h}: no legend on a border:\n{s}"));
        assert!(border.contains("current"), "{border}");
    }
    assert!(
        app.messages.iter().all(|m| !m.text.contains("1 points")),
        "one point is a point"
    );
}

#[test]
fn help_swallows_keys_and_fits_80_by_24() {
    let mut app = app();
    let r = app.start();
    settle(&mut app, r);
    app.handle_key(key('?'));
    let s = screen(&draw(&app, 80, 24));
    for g in squeeze::tui::keymap::Group::ALL {
        for (_, help) in squeeze::tui::keymap::help_lines(g) {
            assert!(
                s.contains(help),
                "help line {help:?} missing at 80×24:\n{s}"
            );
        }
    }
    let before = app.session.config.clone();
    assert!(app.handle_key(code(KeyCode::Right)).is_empty());
    assert_eq!(app.session.config, before, "→ went through the help");
    assert_eq!(app.view, View::Main);
}

#[test]
fn the_detail_view_keeps_the_status_in_sight() {
    let mut app = app();
    let r = app.start();
    settle(&mut app, r);
    press(&mut app, code(KeyCode::Right));
    app.handle_key(key('d'));
    assert_eq!(app.view, View::Detail);
    let acc = format!(
        "{:.2}%",
        app.current().unwrap().accuracy().unwrap().value * 100.0
    );
    for (w, h) in [(80, 24), (140, 45)] {
        let s = screen(&draw(&app, w, h));
        assert!(s.contains("accuracy") && s.contains(&acc), "{s}");
    }
}

#[test]
fn exports_never_replace_an_earlier_export() {
    let mut app = app();
    let r = app.start();
    settle(&mut app, r);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("run");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("recipe.toml"), "x").unwrap();
    let r = app.session.export(target.clone());
    let [Request::Export { dir: to, .. }] = r.as_slice() else {
        panic!("{r:?}");
    };
    assert_eq!(to, &dir.path().join("run-2"));
    // An empty or missing directory is used as it is.
    let fresh = dir.path().join("fresh");
    let r = app.session.export(fresh.clone());
    assert!(matches!(r.as_slice(), [Request::Export { dir, .. }] if *dir == fresh));
}

/// Runs requests to the end on fake answers, keeping the journal lines they write.
fn run_journaled(app: &mut squeeze::tui::App, r: Vec<Request>, journal: &mut Vec<Record>) {
    let mut pending = r;
    while !pending.is_empty() {
        for r in &pending {
            if let Request::Journal(rec) = r {
                journal.push(rec.clone());
            }
        }
        let msgs = answers(&app.session.info, &pending);
        pending = msgs
            .into_iter()
            .flat_map(|m| app.handle_worker(m))
            .collect();
    }
}

/// `F` picks the teacher of the next `f`; a distilled and a plain fine-tune of one
/// configuration are two points, each labelled, pinnable as itself, in the comparison and the
/// plots, and a pinned tuned point comes back as itself from the journal.
#[test]
fn distillation_is_one_key_away_and_tuned_points_are_first_class() {
    let mut app = app();
    // A training set is known (its hash is part of a tuned point's key).
    app.session.options.calibration = 7;
    let mut journal = Vec::new();
    let r = app.start();
    run_journaled(&mut app, r, &mut journal);
    for k in ['4', 'F'] {
        let r = app.handle_key(key(k));
        run_journaled(&mut app, r, &mut journal);
    }
    let twin = app.session.current_key;
    assert!(
        app.message_text()
            .is_some_and(|m| m.contains("distilled T=4 α=0.9")),
        "{:?}",
        app.message_text()
    );
    assert!(screen(&draw(&app, 140, 45)).contains("idle · f distils (T=4, α=0.9; F changes it)"));
    let r = app.handle_key(key('f'));
    assert!(
        app.session
            .tune
            .as_ref()
            .is_some_and(|t| t.status().starts_with("distilling (T=4, α=0.9): ")),
    );
    run_journaled(&mut app, r, &mut journal);
    let distilled = app.session.current().unwrap().clone();
    assert_ne!(distilled.key, twin);
    assert_eq!(distilled.label.as_deref(), Some("distilled T=4 α=0.9"));
    assert!(distilled.model.is_some());

    // Back to labels alone (F cycles T=4 α=0.9 → T=2 α=0.5 → labels), from the twin.
    for _ in 0..2 {
        press(&mut app, key('F'));
    }
    assert_eq!(app.session.tune_spec.settings.distill, None);
    assert!(!screen(&draw(&app, 140, 45)).contains("f distils"));
    let r = app.session.load_point(twin);
    run_journaled(&mut app, r, &mut journal);
    assert_eq!(app.session.current_key, twin);
    let r = app.handle_key(key('f'));
    run_journaled(&mut app, r, &mut journal);
    let plain = app.session.current().unwrap().clone();
    assert!(plain.key != distilled.key && plain.key != twin);
    assert_eq!(plain.config, distilled.config);
    assert_eq!(plain.label.as_deref(), Some("fine-tuned"));
    assert_eq!(app.size_chart.tuned.len(), 2);
    assert_eq!(app.size_chart.tuned_links.len(), 2);

    // The cursor reaches the distilled point; Enter makes it current, c pins it as itself.
    // Points of one size are ordered by key, so the walk starts at the leftmost point.
    for _ in 0..20 {
        press(&mut app, key('['));
    }
    let mut steps = 0;
    while app.cursor != Some(distilled.key) && steps < 20 {
        press(&mut app, key(']'));
        steps += 1;
    }
    assert_eq!(app.cursor, Some(distilled.key));
    let r = app.handle_key(code(KeyCode::Enter));
    run_journaled(&mut app, r, &mut journal);
    assert_eq!(app.session.current_key, distilled.key);
    // The configuration stayed (its twin was current): nothing to undo.
    let said = app.message_text().unwrap_or_default();
    assert!(
        said.starts_with("loaded distilled T=4 α=0.9 · fc1 ") && !said.contains("u goes back"),
        "{said}"
    );
    let r = app.handle_key(key('c'));
    run_journaled(&mut app, r, &mut journal);
    assert_eq!(
        app.message_text(),
        Some("pinned as A (distilled T=4 α=0.9)")
    );
    assert_eq!(app.session.pinned_point(0).unwrap().key, distilled.key);
    assert_eq!(app.session.pin_slot(twin), None);
    assert_eq!(app.size_chart.pinned, vec![app.size_chart.tuned[0]]);
    // Pinning the same point again says so; its twin is another point.
    press(&mut app, key('c'));
    assert_eq!(app.message_text(), Some("already pinned as A"));

    // The comparison (T), the plots and the export know it as tuned.
    let rows = squeeze::explore::compare::rows(&app.session);
    let a = rows.iter().find(|r| r.name == "A").unwrap();
    assert!(
        a.summary.starts_with("distilled T=4 α=0.9 · fc1 "),
        "{}",
        a.summary
    );
    assert_eq!(
        a.accuracy,
        distilled.accuracy().map(|e| e.value),
        "the pin's figures are the tuned point's"
    );
    press(&mut app, key('T'));
    let text = screen(&draw(&app, 140, 45));
    assert!(text.contains("distilled T=4 α=0.9"), "{text}");
    press(&mut app, code(KeyCode::Esc));
    let input = app.plot_input();
    let tuned: Vec<_> = input.points.iter().filter(|p| p.tuned.is_some()).collect();
    assert_eq!(tuned.len(), 2);
    assert!(tuned.iter().all(|p| p.untuned.is_some()));
    assert!(input.pins[0].tuned.is_some());
    let r = app.session.export("out".into());
    let [Request::ExportTuned { key, model, .. }] = r.as_slice() else {
        panic!("{r:?}");
    };
    assert_eq!((*key, model), (distilled.key, &distilled.model));

    // From the journal: both tuned points, their models, and the pin as the tuned point.
    let mut again = tui_support::app();
    again.session.options.calibration = 7;
    again.restore(journal);
    let pinned = again.session.pinned_point(0).expect("pin restored");
    assert_eq!(pinned.key, distilled.key);
    assert_eq!(pinned.model, distilled.model);
    assert_eq!(pinned.label.as_deref(), Some("distilled T=4 α=0.9"));
    assert_eq!(again.size_chart.tuned.len(), 2);
}

/// Esc just as a fine-tune finished: its result is dropped and its saved model deleted.
#[test]
fn a_result_arriving_after_esc_is_discarded() {
    let mut app = app();
    app.session.options.calibration = 7;
    let r = app.start();
    settle(&mut app, r);
    press(&mut app, key('4'));
    let r = app.handle_key(key('f'));
    let [Request::Finetune(job)] = r.as_slice() else {
        panic!("{r:?}");
    };
    let done = answers(&app.session.info, &r);
    let r = app.handle_key(code(KeyCode::Esc));
    assert!(r.contains(&Request::CancelFinetune));
    let mut after = Vec::new();
    for m in done {
        after.extend(app.handle_worker(m));
    }
    assert_eq!(
        after,
        vec![Request::DiscardTuned(format!("{:064x}", job.key))]
    );
    assert!(
        app.session
            .points
            .values()
            .all(|p| p.provenance.is_compressed())
    );
}

/// `points.json` (`p`) carries what reproduces every point: its key, its recipe and how it was
/// made, beside the dense baseline and the model and data with their hashes.
#[test]
fn points_json_names_each_points_recipe_and_the_inputs() {
    let mut app = app();
    let r = app.start();
    settle(&mut app, r);
    press(&mut app, code(KeyCode::Right));
    press(&mut app, code(KeyCode::Right));
    press(&mut app, key('-'));
    let r = app.handle_key(key('w'));
    settle(&mut app, r);
    app.session.options.inputs = Some(squeeze::explore::results::Inputs {
        squeeze_version: "test".into(),
        model: squeeze::explore::results::FileDigest {
            path: "m.safetensors".into(),
            sha256: "ab".repeat(32),
        },
        data: Vec::new(),
        samples: 10,
        calibration: None,
    });
    let json: serde_json::Value =
        serde_json::from_str(&squeeze::report::points_json(&app.plot_input())).expect("json");
    assert_eq!(json["inputs"]["model"]["sha256"], "ab".repeat(32));
    assert_eq!(json["dense"]["provenance"]["kind"], "compressed");
    let points = json["points"].as_array().expect("points");
    assert!(points.len() > 2, "{points:?}");
    for p in points {
        let recipe = p["recipe"].as_str().expect("recipe");
        squeeze::compress::Recipe::from_toml_str(recipe).expect("a recipe squeeze reads");
        assert_eq!(p["key"].as_str().map(str::len), Some(16), "{p}");
    }
    // The current configuration's recipe is the one the explorer exports.
    let current = app.session.config.to_recipe(&app.session.info).to_toml();
    assert_eq!(json["current"]["recipe"], current);
}
