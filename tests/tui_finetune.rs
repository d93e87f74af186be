//! `f` in the explorer on the bundled LeNet-300-100 and MNIST: a short fine-tune (a few hundred
//! training images, one epoch) becomes its own point, marked fine-tuned, joined to its untuned
//! twin, journaled and exportable as the tuned packed model; a cancelled one leaves the
//! session, the journal and the output folder as they were.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use squeeze::compress::recipe::PruneMethod;
use squeeze::explore::finetune::tuned_model_name;
use squeeze::explore::jobs::{Executor, Runner, WorkerMsg};
use squeeze::explore::journal::{models_dir, parse_key};
use squeeze::explore::session::{Provenance, Request, SessionOptions};
use squeeze::explore::setup::{JournalChoice, Setup, SetupOptions};
use squeeze::tui::app::{App, AppOptions};

mod common;
mod tui_support;
use common::asset;

fn setup(journal: &Path) -> Setup {
    Setup::open(&SetupOptions {
        model: asset("models/lenet-300-100.safetensors"),
        arch: None,
        data: asset("data/mnist"),
        labels: None,
        label_column: None,
        limit: Some(2000),
        train: None,
        quick_samples: 200,
        journal: JournalChoice::File(journal.to_path_buf()),
        also_reads: Vec::new(),
    })
    .expect("setup")
}

/// A short run: 500 training images, 100 of them for validation, one epoch.
fn shorten(session: &mut squeeze::explore::Session) {
    session.tune_spec.settings.train.epochs = 1;
    session.tune_spec.limit = Some(600);
    session.tune_spec.val_split = 100;
}

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

/// An app on the real evaluator, at 90 % L1 sparsity everywhere, measured.
struct Rig {
    app: App,
    runner: Runner,
    journal: Option<squeeze::explore::journal::JournalWriter>,
    rx: crossbeam_channel::Receiver<WorkerMsg>,
}

impl Rig {
    fn new(setup: &Setup, out_dir: PathBuf) -> Rig {
        let mut session = setup.session(SessionOptions::default());
        shorten(&mut session);
        let app = App::new(
            session,
            AppOptions {
                out_dir,
                ..AppOptions::default()
            },
        );
        let runner = Runner::new(setup.evaluator.clone(), 2).expect("runner");
        let journal = setup.journal_writer(runner.sender()).expect("journal");
        let rx = runner.messages();
        let mut rig = Rig {
            app,
            runner,
            journal,
            rx,
        };
        let r = rig.app.start();
        rig.run(r);
        let r = rig.app.session.edit(|c| {
            for l in &mut c.layers {
                l.prune = PruneMethod::L1;
                l.sparsity = 900;
            }
        });
        rig.run(r);
        rig.until(|_, app| app.session.idle());
        rig
    }

    fn run(&mut self, requests: Vec<Request>) {
        Executor {
            runner: &mut self.runner,
            journal: self.journal.as_ref(),
            plot: None,
        }
        .run(requests);
    }

    /// Hands worker messages to the app until `done` holds (after a message) or a minute
    /// passes.
    fn until(&mut self, done: impl Fn(&WorkerMsg, &App) -> bool) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            let Ok(msg) = self.rx.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            let r = self.app.handle_worker(msg.clone());
            self.run(r);
            if done(&msg, &self.app) {
                return;
            }
        }
        panic!("timed out waiting for the workers");
    }

    fn press(&mut self, k: KeyEvent) {
        let r = self.app.handle_key(k);
        self.run(r);
    }

    fn close_journal(&mut self) {
        self.journal = None;
    }
}

fn screen(app: &App) -> String {
    tui_support::screen(&tui_support::draw(app, 160, 48))
}

#[test]
fn a_short_finetune_is_a_point_joined_to_its_twin() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.jsonl");
    let setup = setup(&journal);
    let mut rig = Rig::new(&setup, dir.path().join("out"));
    let twin = rig.app.session.current_key;
    let untuned = rig.app.current().and_then(|p| p.accuracy()).unwrap().value;

    rig.press(key('f'));
    assert!(rig.app.session.tune.is_some());
    // One at a time.
    rig.press(key('f'));
    assert!(
        rig.app
            .message_text()
            .is_some_and(|m| m.contains("a fine-tune is running")),
        "{:?}",
        rig.app.message_text()
    );
    // The status says what it is doing once an epoch has started.
    rig.until(|m, _| matches!(m, WorkerMsg::TuneProgress { .. }));
    let text = screen(&rig.app);
    assert!(text.contains("fine-tuning: "), "{text}");
    assert!(text.contains("Esc cancels"), "{text}");

    rig.until(|m, _| matches!(m, WorkerMsg::TuneDone { .. }));
    let s = &rig.app.session;
    assert!(s.tune.is_none(), "{:?}", last_error(&rig.app));
    let tuned = s.current().expect("the tuned point is current").clone();
    assert_ne!(tuned.key, twin);
    let Provenance::FineTuned { from, settings } = &tuned.provenance else {
        panic!("not marked fine-tuned: {:?}", tuned.provenance);
    };
    assert_eq!(parse_key(from), Some(twin));
    assert!(settings.contains("\"epochs\":1") && settings.contains("\"data\""));
    // Its key holds its provenance: the same configuration, another key.
    assert_eq!(tuned.config, s.point(twin).unwrap().config);
    assert_eq!(s.key_with(&tuned.config, &tuned.provenance), tuned.key);
    let after = tuned.accuracy().unwrap().value;
    assert!(
        after > untuned + 0.05,
        "fine-tuning did not recover: {untuned} → {after}"
    );
    assert!(tuned.latency_us().is_some() && tuned.size_bytes().is_some());
    // Both charts: a fine-tuned marker and a line to the twin.
    assert_eq!(rig.app.size_chart.tuned.len(), 1);
    assert_eq!(rig.app.size_chart.tuned_links.len(), 1);
    assert_eq!(rig.app.latency_chart.tuned_links.len(), 1);
    let text = screen(&rig.app);
    assert!(text.contains("current, fine-tuned"), "{text}");
    assert!(text.contains("fine-tuned in"), "{text}");

    // Pressing f again on the tuned point does not train again.
    rig.press(key('f'));
    assert!(rig.app.session.tune.is_none());

    // Export writes the tuned packed model.
    let out = dir.path().join("export");
    let r = rig.app.session.export(out.clone());
    assert!(matches!(r.as_slice(), [Request::ExportTuned { .. }]));
    rig.run(r);
    rig.until(|m, _| matches!(m, WorkerMsg::TaskDone { .. }));
    assert!(last_error(&rig.app).is_none(), "{:?}", last_error(&rig.app));
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(64 * 1024)]);
    assert!(head.contains("squeeze.finetune"));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("measurement.json")).unwrap()).unwrap();
    let exported = m["accuracy"].as_f64().unwrap();
    assert!((exported - after).abs() < 1e-9, "{exported} vs {after}");

    // Saved beside the journal under its SHA-256, which the journal line names: the bytes
    // the export wrote.
    let sha256 = tuned.model.clone().expect("the tuned model is kept");
    let saved = models_dir(&journal).join(tuned_model_name(&sha256));
    assert_eq!(std::fs::read(&saved).unwrap(), bytes);
    assert_eq!(squeeze::files::sha256(&bytes), sha256);
    let tuned_key = tuned.key;

    // Distillation is one key away: the same configuration distilled is another point.
    rig.press(key('F'));
    let r = rig.app.session.load_point(twin);
    rig.run(r);
    rig.press(key('f'));
    rig.until(|m, _| matches!(m, WorkerMsg::TuneDone { .. }));
    assert!(last_error(&rig.app).is_none(), "{:?}", last_error(&rig.app));
    let distilled = rig.app.current().expect("the distilled point").clone();
    assert!(distilled.key != tuned_key && distilled.key != twin);
    assert_eq!(distilled.label.as_deref(), Some("distilled T=4 α=0.9"));
    let bytes = std::fs::read(
        models_dir(&journal).join(tuned_model_name(distilled.model.as_deref().unwrap())),
    )
    .unwrap();
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(64 * 1024)]);
    assert!(
        head.contains(r#"\"distill\":{\"alpha\":0.9,\"temperature\":4.0}"#),
        "the saved model's metadata does not record the distillation"
    );

    // Journaled: a resumed session knows the tuned point and its twin, and exports the
    // tuned model from the saved file, measured as before.
    rig.close_journal();
    // A fine-tune killed while saving left a temporary of a process that is gone: reopening
    // sweeps it away.
    let stale = models_dir(&journal).join(".tuned.safetensors.squeeze-999999999-0.tmp");
    std::fs::write(&stale, b"half a model").unwrap();
    let again = Setup::open(&SetupOptions {
        limit: Some(2000),
        ..reopen(&journal)
    })
    .unwrap();
    assert!(!stale.exists(), "a stale temporary survived the reopening");
    let mut session = again.session(SessionOptions::default());
    session.restore(again.journal_records.clone());
    // The distilled point was current at the close: it is current again, not its twin.
    assert_eq!(session.current_key, distilled.key);
    assert!(!session.current().unwrap().provenance.is_compressed());
    let p = session.point(tuned_key).expect("journaled").clone();
    assert!(!p.provenance.is_compressed());
    assert_eq!(p.accuracy().unwrap().value, after);
    assert_eq!(p.model.as_deref(), Some(sha256.as_str()));
    let r = session.load_point(tuned_key);
    assert!(r.iter().all(|r| !matches!(r, Request::Finetune(_))));
    let out = dir.path().join("export-after-resume");
    let r = session.export(out.clone());
    assert!(
        matches!(r.as_slice(), [Request::ExportTuned { .. }]),
        "{r:?}"
    );
    let mut runner = Runner::new(again.evaluator.clone(), 2).expect("runner");
    let rx = runner.messages();
    Executor {
        runner: &mut runner,
        journal: None,
        plot: None,
    }
    .run(r);
    let msg = rx.recv_timeout(Duration::from_secs(60)).expect("export");
    let WorkerMsg::TaskDone { result, .. } = msg else {
        panic!("{msg:?}");
    };
    result.expect("export after resume");
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        std::fs::read(&saved).unwrap()
    );
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("measurement.json")).unwrap()).unwrap();
    assert!(
        (m["accuracy"].as_f64().unwrap() - after).abs() < 1e-9,
        "{m}"
    );

    // A saved model that is gone: the point stays, and f tunes it again.
    std::fs::remove_file(&saved).unwrap();
    let again = Setup::open(&SetupOptions {
        limit: Some(2000),
        ..reopen(&journal)
    })
    .unwrap();
    assert!(
        again
            .notes
            .iter()
            .any(|n| n.contains("1 fine-tuned model(s) are missing")),
        "{:?}",
        again.notes
    );
    let mut session = again.session(SessionOptions::default());
    shorten(&mut session);
    session.restore(again.journal_records.clone());
    assert_eq!(session.point(tuned_key).unwrap().model, None);
    let _ = session.load_point(twin);
    assert!(matches!(
        session.finetune().as_slice(),
        [Request::Finetune(_)]
    ));
    let _ = session.cancel_finetune();
    // The distilled one is still there: f with its settings takes it from the cache.
    session.tune_spec.settings.distill = squeeze::explore::finetune::DISTILL_CYCLE[1];
    let _ = session.load_point(twin);
    assert!(
        session
            .finetune()
            .iter()
            .all(|r| !matches!(r, Request::Finetune(_)))
    );
    assert_eq!(session.current_key, distilled.key);
}

fn reopen(journal: &Path) -> SetupOptions {
    SetupOptions {
        model: asset("models/lenet-300-100.safetensors"),
        arch: None,
        data: asset("data/mnist"),
        labels: None,
        label_column: None,
        limit: None,
        train: None,
        quick_samples: 200,
        journal: JournalChoice::File(journal.to_path_buf()),
        also_reads: Vec::new(),
    }
}

#[test]
fn a_cancelled_finetune_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.jsonl");
    let setup = setup(&journal);
    let out = dir.path().join("out");
    let mut rig = Rig::new(&setup, out.clone());
    let keys: Vec<u64> = rig.app.session.order.clone();
    let current = rig.app.session.current_key;

    rig.press(key('f'));
    rig.until(|m, _| matches!(m, WorkerMsg::TuneProgress { .. }));
    rig.press(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
    assert!(rig.app.session.tune.is_none());
    assert!(
        rig.app
            .message_text()
            .is_some_and(|m| m.contains("cancelled")),
        "{:?}",
        rig.app.message_text()
    );
    // The worker stops and says so; nothing it sends is kept.
    rig.until(|m, _| matches!(m, WorkerMsg::TuneDone { .. }));
    let s = &rig.app.session;
    assert_eq!(s.order, keys);
    assert_eq!(s.current_key, current);
    assert!(s.points.values().all(|p| p.provenance.is_compressed()));
    assert!(rig.app.size_chart.tuned.is_empty());
    rig.close_journal();
    let text = std::fs::read_to_string(&journal).unwrap();
    assert!(!text.contains("fine_tuned"), "{text}");
    assert!(!out.exists());
    // No tuned model was saved either.
    let saved = std::fs::read_dir(models_dir(&journal)).map_or(0, |d| d.count());
    assert_eq!(saved, 0);
}

/// The newest error the explorer has shown, if any.
fn last_error(app: &squeeze::tui::App) -> Option<&str> {
    app.messages
        .iter()
        .rev()
        .find(|m| m.error)
        .map(|m| m.text.as_str())
}
