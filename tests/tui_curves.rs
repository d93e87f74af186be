//! The whole-model curves in the explorer (`W`): the configurations they measure, the lines the
//! charts draw through them, clicks on chart points, and the exact zeros beside sparsity.

mod tui_support;

use ratatui::crossterm::event::{KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
use ratatui::layout::Position;
use ratatui::style::Color;

use squeeze::compress::Bits;
use squeeze::explore::sweep::{CurveFamily, curve_of};
use squeeze::tui::Request;
use squeeze::tui::render::{chart_graph_area, curve_colour, layout};
use tui_support::*;

/// The explorer with the dense baseline measured.
fn started() -> squeeze::tui::App {
    let mut app = app();
    let r = app.start();
    settle(&mut app, r);
    app
}

/// Cells of the screen drawn in `colour` inside `area`.
fn cells_in(
    t: &ratatui::Terminal<ratatui::backend::TestBackend>,
    area: ratatui::layout::Rect,
    colour: Color,
) -> usize {
    let buf = t.backend().buffer();
    let mut n = 0;
    for y in area.top()..area.bottom() {
        for x in area.left()..area.right() {
            let c = &buf[(x, y)];
            if c.fg == colour && c.symbol().trim() != "" && c.symbol() != "─" {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn w_measures_both_curves_through_the_sweep_machinery() {
    let mut app = started();
    let r = app.handle_key(key('W'));
    let points: Vec<&squeeze::explore::EvalRequest> = r
        .iter()
        .flat_map(|r| match r {
            Request::Sweep { points, .. } => points.iter().collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(points.len(), 17, "10 global sparsities and 7 widths");
    let on: Vec<(CurveFamily, f64)> = points.iter().filter_map(|p| curve_of(&p.config)).collect();
    assert_eq!(on.len(), 17);
    assert_eq!(
        on.iter().filter(|c| c.0 == CurveFamily::GlobalL1).count(),
        10
    );
    settle(&mut app, r);
    // Measured once: a second W finds them all in the cache.
    assert!(
        !app.handle_key(key('W'))
            .iter()
            .any(|r| matches!(r, Request::Sweep { .. }))
    );
    // The uniform sweep's per-channel int8/6/4/2 points are the same configurations (and its
    // dense point is the baseline).
    let uniform = app.handle_key(key('w'));
    let measured_again: usize = uniform
        .iter()
        .map(|r| match r {
            Request::Sweep { points, .. } => points.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(measured_again, 30 - 4 - 1);
}

#[test]
fn the_charts_draw_each_curve_as_a_line_once_its_points_arrive() {
    let mut app = started();
    let before = draw(&app, 140, 45);
    let a = layout(app.area, &app);
    for family in CurveFamily::ALL {
        assert_eq!(cells_in(&before, a.size_chart, curve_colour(family)), 0);
    }
    assert!(app.size_chart.curves.is_empty());
    press(&mut app, key('W'));
    // Ordered along the family's parameter: size falls as sparsity grows and bits shrink.
    assert_eq!(app.size_chart.curves.len(), 2);
    for (family, line) in &app.size_chart.curves {
        let n = match family {
            CurveFamily::GlobalL1 => 10,
            CurveFamily::UniformBits => 7,
        };
        assert_eq!(line.len(), n, "{family:?}");
        assert!(
            line.windows(2).all(|w| w[1].0 < w[0].0),
            "{family:?} is not in parameter order: {line:?}"
        );
    }
    assert_eq!(app.latency_chart.curves.len(), 2);
    let after = draw(&app, 140, 45);
    let text = screen(&after);
    for family in CurveFamily::ALL {
        for chart in [a.size_chart, a.latency_chart] {
            let cells = cells_in(&after, chart, curve_colour(family));
            assert!(cells >= 5, "{family:?}: {cells} cells drawn");
        }
        assert!(
            text.contains(family.name()),
            "no legend entry {}",
            family.name()
        );
    }
    // 80×24 still draws the lines.
    let mut small = app;
    small.resize(80, 24);
    let t = draw(&small, 80, 24);
    let a = layout(small.area, &small);
    assert!(cells_in(&t, a.size_chart, curve_colour(CurveFamily::GlobalL1)) > 0);
}

#[test]
fn the_help_names_w_and_shift_w_on_one_line_at_80x24() {
    let mut app = started();
    app.resize(80, 24);
    press(&mut app, key('?'));
    let text = screen(&draw(&app, 80, 24));
    assert!(
        text.contains("w W") && text.contains("uniform sweep; W curves"),
        "{text}"
    );
}

/// A left click at the cell of a point.
fn click(at: Position) -> MouseEvent {
    MouseEvent {
        kind: MouseEventKind::Down(MouseButton::Left),
        column: at.x,
        row: at.y,
        modifiers: KeyModifiers::NONE,
    }
}

#[test]
fn a_click_selects_the_nearest_point_and_a_second_click_loads_it() {
    let mut app = started();
    press(&mut app, key('W'));
    // Render once, as the event loop does before any click.
    let _ = draw(&app, 140, 45);
    let a = layout(app.area, &app);
    let graph = chart_graph_area(a.size_chart, &app.size_chart, true).unwrap();
    // The global L1 90 % point: where on the screen it is drawn.
    let target = app
        .session
        .measured()
        .find(|p| curve_of(&p.config) == Some((CurveFamily::GlobalL1, 90.0)))
        .unwrap()
        .key;
    let s = app.size_chart.clone();
    let i = s.keys.iter().position(|k| *k == target).unwrap();
    let (x, y) = s.all[i];
    let col = (x - s.x_bounds[0]) / (s.x_bounds[1] - s.x_bounds[0]) * f64::from(graph.width - 1);
    let row = (s.y_bounds[1] - y) / (s.y_bounds[1] - s.y_bounds[0]) * f64::from(graph.height - 1);
    let at = Position::new(graph.x + col.round() as u16, graph.y + row.round() as u16);
    // A click beside the table's rows and outside the charts selects nothing.
    assert!(
        app.handle_mouse(click(Position::new(a.status.x + 2, a.status.y + 2)))
            .is_empty()
    );
    assert_eq!(app.cursor, None);
    let r = app.handle_mouse(click(at));
    assert!(r.is_empty(), "the first click only selects");
    let chosen = app.cursor.expect("the click selected a point");
    // The nearest point: within a cell of where it is drawn (the 90 % point itself unless
    // another is drawn in the same cell).
    let j = s.keys.iter().position(|k| *k == chosen).unwrap();
    let (cx, cy) = app.size_chart.all[j];
    let ccol = (cx - s.x_bounds[0]) / (s.x_bounds[1] - s.x_bounds[0]) * f64::from(graph.width - 1);
    let crow = (s.y_bounds[1] - cy) / (s.y_bounds[1] - s.y_bounds[0]) * f64::from(graph.height - 1);
    assert!((ccol - col).abs() <= 1.0 && (crow - row).abs() <= 1.0);
    assert!(app.size_chart.cursor.is_some());
    let text = screen(&draw(&app, 140, 45));
    assert!(text.contains("◆"), "the cursor's point is named");
    // The second click on the same point loads it, as Enter does.
    let config = app.session.point(chosen).unwrap().config.clone();
    let r = app.handle_mouse(click(at));
    assert_eq!(app.cursor, None);
    assert_eq!(app.session.config, config);
    assert_eq!(app.session.current_key, chosen);
    assert!(
        r.iter().any(|r| matches!(r, Request::Journal(_))),
        "loading is journaled"
    );
    // A click on the latency chart selects there too.
    let graph = chart_graph_area(a.latency_chart, &app.latency_chart, false).unwrap();
    app.handle_mouse(click(Position::new(
        graph.x + 1,
        graph.y + graph.height - 1,
    )));
    assert!(app.cursor.is_some());
}

#[test]
fn the_status_shows_exact_zeros_beside_sparsity_when_they_differ() {
    let mut app = started();
    // Unquantized pruning: zeros are the pruned weights, shown once.
    press(&mut app, key('l'));
    let text = screen(&draw(&app, 140, 45));
    assert!(!text.contains("zeros"), "{text}");
    // 2 bits on fc1: a tenth of its kept weights round to zero.
    for _ in 0..8 {
        press(&mut app, key('-'));
    }
    assert_eq!(app.session.config.layers[0].bits, Bits::Int(2));
    let p = app.current().unwrap();
    let (s, z) = (p.sparsity().unwrap(), p.zeros().unwrap());
    assert!(z > s);
    let text = screen(&draw(&app, 140, 45));
    let expected = format!("{:.1}% · {:.1}% zeros", s * 100.0, z * 100.0);
    assert!(text.contains(&expected), "no {expected:?} in\n{text}");
}

#[test]
fn zoomed_slides_take_the_explorers_x_ranges() {
    let mut app = started();
    press(&mut app, key('W'));
    let input = app.plot_input();
    assert_eq!((input.size_range, input.latency_range), (None, None));
    assert_eq!(input.curves.len(), 2, "the slides get both curves");
    press(&mut app, key('z'));
    let input = app.plot_input();
    let [lo, hi] = input.size_range.expect("a size range when zoomed");
    let s = &app.size_chart;
    let data = |x: f64| if s.log_x { 10f64.powf(x) } else { x };
    assert!((lo - data(s.x_bounds[0])).abs() < 1e-6 * hi);
    assert!((hi - data(s.x_bounds[1])).abs() < 1e-6 * hi);
    assert!(input.latency_range.is_some());
    assert_eq!(input.accuracy_range, Some(app.size_chart.y_bounds));
}
