//! Whole-screen snapshots of the explorer (ratatui `TestBackend` + insta), driven by injected
//! keys and fake worker results: the main screen, help, layer detail, a sweep in progress, an
//! error, and terminals too small for the layout.

mod tui_support;

use ratatui::crossterm::event::KeyCode;

use squeeze::explore::eval::Stage;
use squeeze::explore::jobs::{Origin, WorkerMsg};
use squeeze::tui::Request;
use tui_support::*;

/// Dense measured, then fc1 at 90 % L1 and 6-bit k-means.
fn tuned() -> squeeze::tui::App {
    let mut app = app();
    let r = app.start();
    settle(&mut app, r);
    for _ in 0..18 {
        press(&mut app, code(KeyCode::Right));
    }
    for _ in 0..4 {
        press(&mut app, key('-'));
    }
    press(&mut app, key('s'));
    press(&mut app, key('s'));
    app
}

#[test]
fn main_screen() {
    let app = tuned();
    insta::assert_snapshot!(draw(&app, 140, 45).backend());
}

#[test]
fn main_screen_narrow() {
    let app = tuned();
    insta::assert_snapshot!(draw(&app, 80, 24).backend());
}

#[test]
fn main_screen_with_pin_budget_and_uniform_sweep() {
    let mut app = tuned();
    press(&mut app, key('c'));
    press(&mut app, key('4'));
    press(&mut app, key('b'));
    press(&mut app, key('w'));
    insta::assert_snapshot!(draw(&app, 140, 45).backend());
}

#[test]
fn help_screen() {
    let mut app = tuned();
    press(&mut app, key('?'));
    insta::assert_snapshot!(draw(&app, 140, 45).backend());
}

#[test]
fn layer_detail() {
    let mut app = tuned();
    press(&mut app, key('S'));
    press(&mut app, code(KeyCode::Enter));
    insta::assert_snapshot!(draw(&app, 140, 45).backend());
}

#[test]
fn sweep_in_progress() {
    let mut app = tuned();
    let r = app.handle_key(key('S'));
    // Half of the sweep's answers have arrived.
    let msgs = answers(&app.session.info, &r);
    let half = msgs.len() / 2;
    for m in msgs.into_iter().take(half) {
        app.handle_worker(m);
    }
    // And a new edit is being measured: its quick estimate is in.
    let r = app.handle_key(code(KeyCode::Right));
    let quick = answers(&app.session.info, &r).remove(0);
    app.handle_worker(quick);
    insta::assert_snapshot!(draw(&app, 140, 45).backend());
}

#[test]
fn error_is_shown_in_plain_words() {
    let mut app = tuned();
    let r = app.handle_key(key('a'));
    let Request::Evaluate {
        request,
        generation,
    } = r
        .iter()
        .find(|r| matches!(r, Request::Evaluate { .. }))
        .unwrap()
        .clone()
    else {
        unreachable!()
    };
    app.handle_worker(WorkerMsg::Failed {
        origin: Origin::Interactive(generation),
        key: request.key,
        stage: Stage::Quick,
        error: "activation calibration: fc1: the calibration inputs hold no finite value".into(),
    });
    insta::assert_snapshot!(draw(&app, 140, 45).backend());
}

#[test]
fn too_small_terminal_says_so() {
    let app = tuned();
    insta::assert_snapshot!(draw(&app, 60, 20).backend());
}

#[test]
fn tiny_terminals_do_not_panic() {
    let mut app = tuned();
    for view in ['?', '?', 'd'] {
        press(&mut app, key(view));
        for w in 0..=20 {
            for h in 0..=5 {
                draw(&app, w, h);
            }
        }
        // Just at and around the minimum size.
        for (w, h) in [
            (79, 24),
            (80, 23),
            (80, 24),
            (81, 25),
            (300, 100),
            (80, 200),
        ] {
            draw(&app, w, h);
        }
    }
}

#[test]
fn empty_app_before_any_result() {
    let mut app = app();
    let _ = app.start();
    insta::assert_snapshot!(draw(&app, 120, 36).backend());
}

/// A set no larger than the quick subset is measured whole in the first stage, and the status
/// line says so rather than promising a subset.
#[test]
fn the_first_stage_on_a_set_no_larger_than_the_subset_says_full_set() {
    let first_screen = |info| {
        let session = squeeze::explore::session::Session::new(info, session_options());
        let mut app = squeeze::tui::App::new(session, options());
        let _ = app.start();
        screen(&draw(&app, 120, 36))
    };
    let mut info = info();
    let text = first_screen(info.clone());
    assert!(
        text.contains("measuring: quick estimate on a subset"),
        "{text}"
    );
    info.quick_samples = info.samples;
    let text = first_screen(info);
    assert!(
        text.contains("measuring: accuracy on the full set"),
        "{text}"
    );
    assert!(!text.contains("on a subset"), "{text}");
}

#[test]
fn export_prompt() {
    let mut app = tuned();
    press(&mut app, key('e'));
    insta::assert_snapshot!(draw(&app, 140, 45).backend());
}

/// The presentation layout (`P`, or `--present`) as a laptop, a projector at 160×45 and a
/// large terminal show it: the three figures in big digits with their change against dense,
/// both charts, the edited layer's row, and the keys that fit.
fn presenting() -> squeeze::tui::App {
    let mut app = tuned();
    press(&mut app, key('P'));
    assert!(app.present);
    app
}

#[test]
fn presentation_80x24() {
    insta::assert_snapshot!(draw(&presenting(), 80, 24).backend());
}

#[test]
fn presentation_160x45() {
    insta::assert_snapshot!(draw(&presenting(), 160, 45).backend());
}

#[test]
fn presentation_220x60() {
    insta::assert_snapshot!(draw(&presenting(), 220, 60).backend());
}

#[test]
fn presentation_digits_grow_with_the_terminal_and_leave_the_charts_room() {
    use ratatui::layout::Rect;
    use squeeze::tui::present::layout;
    let app = presenting();
    let mut last = 0;
    for (w, h) in [(80, 24), (160, 45), (220, 60)] {
        let a = layout(Rect::new(0, 0, w, h), &app);
        assert!(a.scale >= last, "{w}×{h}: scale {} after {last}", a.scale);
        last = a.scale;
        assert!(a.size_chart.height >= h / 3, "{w}×{h}: {:?}", a.size_chart);
        assert!(a.layer.is_some(), "{w}×{h}: the edited layer has a row");
    }
    assert!(last >= 3, "220×60 draws digits at scale {last}");
    // P again: the normal layout.
    let mut app = app;
    press(&mut app, key('P'));
    assert!(!app.present);
    // Tiny and odd sizes draw without panicking, overlays included.
    let mut app = presenting();
    for view in ['?', '?', 'M', 'M', 'T'] {
        press(&mut app, key(view));
        for (w, h) in [
            (0, 0),
            (2, 2),
            (79, 24),
            (80, 24),
            (81, 25),
            (300, 100),
            (80, 200),
        ] {
            draw(&app, w, h);
        }
    }
}

#[test]
fn main_screen_with_a_distilled_point_pinned() {
    let mut app = tuned();
    app.session.options.calibration = 7;
    press(&mut app, key('F'));
    press(&mut app, key('f'));
    press(&mut app, key('c'));
    insta::assert_snapshot!(draw(&app, 140, 45).backend());
}
