//! The presentation layout (`squeeze explore --present`, `P`): for a projector. The three
//! headline figures — accuracy, size, latency, each with its change against dense — in digits
//! as large as the terminal allows, the two charts, the layer table reduced to the edited layer,
//! high-contrast colours, and a footer with the keys that matter at this size.

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};

use super::app::App;
use super::keymap::{Action, KEYMAP, key_label};
use super::render;
use crate::explore::session::Point;
use crate::units;

/// Colours that survive a projector: white on the terminal's background, saturated accents.
pub const TEXT: Color = Color::White;
const ACCENT: Color = Color::LightCyan;
const BETTER: Color = Color::LightGreen;
const WORSE: Color = Color::LightRed;

/// Where each part of the presentation screen goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Areas {
    pub title: Rect,
    pub figures: [Rect; 3],
    pub size_chart: Rect,
    pub latency_chart: Rect,
    /// The edited layer's row of the layer table, when there is room for it.
    pub layer: Option<Rect>,
    pub message: Rect,
    pub keys: Rect,
    /// The digits' scale: each glyph is `3 × scale` columns by `⌈5 × scale / 2⌉` rows.
    pub scale: u16,
}

/// Charts below this height show too little to be worth their place: the layer row goes first.
const MIN_CHART_ROWS: u16 = 10;

/// The presentation layout of `area`: the digits take the largest scale whose figures fit
/// their boxes and leave the charts at least half of the screen.
pub fn layout(area: Rect, app: &App) -> Areas {
    let box_w = area.width / 3;
    let texts = headline_texts(app);
    let fits = |s: u16| {
        let rows = glyph_rows(s) + 3;
        rows <= area.height / 3
            && texts.iter().all(|(n, u, _)| {
                big_width(n, s) + (u.chars().count() as u16) < box_w.saturating_sub(2)
            })
    };
    let scale = (1..=6).rev().find(|s| fits(*s)).unwrap_or(1);
    let figures_h = glyph_rows(scale) + 3;
    let message_h = render::message_lines(app, area.width).len() as u16;
    // The layer row: a bordered table of its header and the edited layer.
    let fixed = 1 + figures_h + message_h + 1;
    let layer_h = if area.height >= fixed + 4 + MIN_CHART_ROWS {
        4
    } else {
        0
    };
    let [title, figures, charts, layer, message, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(figures_h),
        Constraint::Min(4),
        Constraint::Length(layer_h),
        Constraint::Length(message_h),
        Constraint::Length(1),
    ])
    .areas(area);
    let [a, s, l] = Layout::horizontal([Constraint::Ratio(1, 3); 3]).areas(figures);
    let [size_chart, latency_chart] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(charts);
    Areas {
        title,
        figures: [a, s, l],
        size_chart,
        latency_chart,
        layer: (layer_h > 0).then_some(layer),
        message,
        keys,
        scale,
    }
}

/// Draws the presentation screen (the overlays are drawn over it by `render::render`).
pub fn render(frame: &mut Frame, area: Rect, app: &App) {
    let a = layout(area, app);
    render::render_title(frame, a.title, app);
    let names = ["accuracy", "size", "latency"];
    for ((rect, name), (number, unit, delta)) in
        a.figures.iter().zip(names).zip(headline_texts(app))
    {
        render_figure(frame, *rect, name, &number, &unit, &delta, a.scale);
    }
    render::render_chart(
        frame,
        a.size_chart,
        app,
        &app.size_chart,
        "Accuracy vs size",
        true,
    );
    render::render_chart(
        frame,
        a.latency_chart,
        app,
        &app.latency_chart,
        "Accuracy vs latency",
        false,
    );
    if let Some(l) = a.layer {
        render::render_table(frame, l, app);
    }
    render::render_message(frame, a.message, app);
    render_keys(frame, a.keys);
}

/// A change against dense: its text and whether it is for the better (`None`: no change or
/// nothing to compare).
type Delta = (String, Option<bool>);

/// (number, unit, change against dense) of accuracy, size and latency.
fn headline_texts(app: &App) -> [(String, String, Delta); 3] {
    let cur = app.current();
    let dense = app.dense();
    let failed = cur.is_some_and(|p| p.error.is_some() && p.accuracy().is_none());
    let missing = || {
        (
            if failed { "—" } else { "…" }.to_string(),
            String::new(),
            (String::new(), None),
        )
    };
    let split = |text: String| match text.rsplit_once(' ') {
        Some((n, u)) => (n.to_string(), u.to_string()),
        None => (text, String::new()),
    };
    let acc = |p: Option<&Point>| p.and_then(Point::accuracy).map(|a| a.value);
    let accuracy = match acc(cur) {
        Some(a) => {
            let delta = acc(dense).map_or((String::new(), None), |d| {
                let better = (a - d).abs() >= 0.00005;
                (
                    format!("{} vs dense", units::points_delta(a - d)),
                    better.then_some(a > d),
                )
            });
            (format!("{:.2}", a * 100.0), "%".to_string(), delta)
        }
        None => missing(),
    };
    let ratio = |now: Option<f64>, then: Option<f64>, less: &str, more: &str| match (now, then) {
        (Some(n), Some(d)) if n > 0.0 && d > 0.0 => {
            let r = d / n;
            if (r - 1.0).abs() < 0.005 {
                ("same as dense".to_string(), None)
            } else if r > 1.0 {
                (format!("{r:.2}× {less} than dense"), Some(true))
            } else {
                (format!("{:.2}× {more} than dense", 1.0 / r), Some(false))
            }
        }
        _ => (String::new(), None),
    };
    let size_of = |p: Option<&Point>| p.and_then(Point::size_bytes).map(|s| s as f64);
    let size = match size_of(cur) {
        Some(s) => {
            let (n, u) = split(units::bytes(s));
            (n, u, ratio(Some(s), size_of(dense), "smaller", "larger"))
        }
        None => missing(),
    };
    let lat_of = |p: Option<&Point>| p.and_then(Point::latency_us);
    let latency = match lat_of(cur) {
        Some(l) => {
            let (n, u) = split(units::micros(l));
            (n, u, ratio(Some(l), lat_of(dense), "faster", "slower"))
        }
        None => missing(),
    };
    [accuracy, size, latency]
}

fn render_figure(
    frame: &mut Frame,
    area: Rect,
    name: &str,
    number: &str,
    unit: &str,
    delta: &Delta,
    scale: u16,
) {
    let block = Block::bordered()
        .title(Span::styled(
            format!(" {name} "),
            Style::new().fg(ACCENT).add_modifier(Modifier::BOLD),
        ))
        .border_style(Style::new().fg(TEXT));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if inner.height == 0 || inner.width == 0 {
        return;
    }
    let [digits, change] =
        Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(inner);
    let strong = Style::new().fg(TEXT).add_modifier(Modifier::BOLD);
    let mut lines: Vec<Line> = if number.chars().all(|c| glyph(c).is_some()) {
        big_lines(number, scale)
            .into_iter()
            .map(|l| Line::from(Span::styled(l, strong)))
            .collect()
    } else {
        vec![Line::from(Span::styled(number.to_string(), strong))]
    };
    // The unit beside the digits' last row.
    if let Some(last) = lines.last_mut() {
        last.spans.push(Span::styled(format!(" {unit}"), strong));
    }
    let pad = digits.height.saturating_sub(lines.len() as u16) / 2;
    let top = Rect {
        y: digits.y + pad,
        height: digits.height - pad,
        ..digits
    };
    // Every row as wide as the last, so centring keeps the digits in their columns.
    let width = lines.iter().map(Line::width).max().unwrap_or(0);
    for l in &mut lines {
        let w = l.width();
        if w < width {
            l.spans.push(Span::raw(" ".repeat(width - w)));
        }
    }
    frame.render_widget(Paragraph::new(lines).alignment(Alignment::Center), top);
    let colour = match delta.1 {
        Some(true) => BETTER,
        Some(false) => WORSE,
        None => TEXT,
    };
    frame.render_widget(
        Paragraph::new(Line::styled(delta.0.clone(), Style::new().fg(colour)))
            .alignment(Alignment::Center),
        change,
    );
}

/// The footer: the keys a presenter needs, as many as fit, the layout toggle and quit always.
fn render_keys(frame: &mut Frame, area: Rect) {
    const SHOWN: &[(Action, &str)] = &[
        (Action::Present, "normal view"),
        (Action::Down, "layer"),
        (Action::SparsityUp, "prune"),
        (Action::BitsDown, "bits"),
        (Action::NextPreset, "preset"),
        (Action::Pin, "pin"),
        (Action::PointNext, "points"),
        (Action::Compare, "compare"),
        (Action::Zoom, "zoom"),
        (Action::Help, "help"),
        (Action::Quit, "quit"),
    ];
    let badge = |k: String, hint: &str| {
        vec![
            Span::styled(format!(" {k} "), Style::new().fg(Color::Black).bg(TEXT)),
            Span::styled(format!(" {hint} "), Style::new().fg(TEXT)),
        ]
    };
    let label = |a: Action| {
        KEYMAP
            .iter()
            .find(|b| b.action == a)
            .and_then(|b| b.keys.first())
            .map(key_label)
            .unwrap_or_default()
    };
    let width = |k: &str, h: &str| k.chars().count() + h.chars().count() + 4;
    let always = [Action::Present, Action::Quit];
    let mut room = usize::from(area.width).saturating_sub(
        SHOWN
            .iter()
            .filter(|(a, _)| always.contains(a))
            .map(|(a, h)| width(&label(*a), h))
            .sum(),
    );
    let mut spans = Vec::new();
    for (a, h) in SHOWN {
        let k = label(*a);
        if !always.contains(a) {
            let w = width(&k, h);
            if w > room {
                continue;
            }
            room -= w;
        }
        spans.extend(badge(k, h));
    }
    frame.render_widget(Line::from(spans), area);
}

/// A 3×5 pixel glyph, one row per byte (bit 2 the left column); `.` is one column wide.
fn glyph(c: char) -> Option<(u16, [u8; 5])> {
    let rows = match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => return Some((1, [0, 0, 0, 0, 1])),
        '-' => [0, 0, 7, 0, 0],
        _ => return None,
    };
    Some((3, rows))
}

/// Text rows of the digits at `scale` (two pixel rows per text row).
pub fn glyph_rows(scale: u16) -> u16 {
    (5 * scale).div_ceil(2)
}

/// Columns `text` takes in big digits at `scale` (a normal-width fallback for other text).
pub fn big_width(text: &str, scale: u16) -> u16 {
    if !text.chars().all(|c| glyph(c).is_some()) {
        return text.chars().count() as u16;
    }
    let n = text.chars().count() as u16;
    let px: u16 = text.chars().filter_map(glyph).map(|g| g.0).sum();
    px * scale + n.saturating_sub(1) * scale
}

/// `text` in big digits at `scale`, drawn with half blocks (each text row two pixel rows).
pub fn big_lines(text: &str, scale: u16) -> Vec<String> {
    let s = usize::from(scale.max(1));
    let glyphs: Vec<(u16, [u8; 5])> = text.chars().filter_map(glyph).collect();
    // The pixel grid: 5·s rows, one bool per column.
    let mut grid: Vec<Vec<bool>> = vec![Vec::new(); 5 * s];
    for (i, (w, rows)) in glyphs.iter().enumerate() {
        if i > 0 {
            for r in grid.iter_mut() {
                r.extend(std::iter::repeat_n(false, s));
            }
        }
        for (py, r) in grid.iter_mut().enumerate() {
            let bits = rows[py / s];
            for x in 0..usize::from(*w) {
                let on = bits >> (usize::from(*w) - 1 - x) & 1 == 1;
                r.extend(std::iter::repeat_n(on, s));
            }
        }
    }
    grid.chunks(2)
        .map(|pair| {
            let top = &pair[0];
            let bottom = pair.get(1);
            top.iter()
                .enumerate()
                .map(|(x, t)| match (*t, bottom.is_some_and(|b| b[x])) {
                    (true, true) => '█',
                    (true, false) => '▀',
                    (false, true) => '▄',
                    (false, false) => ' ',
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_scale_and_keep_their_shape() {
        assert_eq!(big_lines("1", 1), vec!["▄█ ", " █ ", "▀▀▀"]);
        assert_eq!(big_lines("0.5", 1)[2], "▀▀▀ ▀ ▀▀▀");
        for s in 1..=4 {
            let lines = big_lines("97.85", s);
            assert_eq!(lines.len() as u16, glyph_rows(s));
            assert!(
                lines
                    .iter()
                    .all(|l| l.chars().count() as u16 == big_width("97.85", s))
            );
        }
    }
}
