//! Drawing: pure functions of `&App`. Nothing here changes state; the layout is computed from
//! the area and the app alone, so the mouse handler can ask where things are.

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Block, Cell, Chart, Clear, Dataset, GraphType, LegendPosition, LineGauge, Paragraph, Row,
    Sparkline, Table, TableState, Wrap,
};

use crate::compress::recipe::PruneMethod;
use crate::explore::config::pct;
use crate::explore::eval::Stage;
use crate::units;

use super::app::{App, ChartSeries, View};
use super::keymap::{Action, Group, KEYMAP, help_lines, key_label};
use crate::explore::session::Point;

/// The smallest terminal the full layout fits in.
pub const MIN_WIDTH: u16 = 80;
pub const MIN_HEIGHT: u16 = 24;

const ACCENT: Color = Color::Cyan;
const CURRENT: Color = Color::LightMagenta;
const DENSE: Color = Color::Yellow;
const PINNED: Color = Color::LightGreen;
const DIM: Color = Color::DarkGray;
const ERROR: Color = Color::LightRed;
const TUNED: Color = Color::LightBlue;
/// The whole-model curves: orange and violet, apart from every other colour here.
const GLOBAL_CURVE: Color = Color::Indexed(208);
const BITS_CURVE: Color = Color::Indexed(135);

/// The colour a whole-model curve is drawn in.
pub fn curve_colour(family: crate::explore::sweep::CurveFamily) -> Color {
    match family {
        crate::explore::sweep::CurveFamily::GlobalL1 => GLOBAL_CURVE,
        crate::explore::sweep::CurveFamily::UniformBits => BITS_CURVE,
    }
}

/// Where each part of the screen goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Areas {
    pub title: Rect,
    pub table: Option<Rect>,
    pub size_chart: Rect,
    pub latency_chart: Rect,
    pub status: Rect,
    pub detail: Option<Rect>,
    /// The message line (one to three rows as the text needs).
    pub message: Rect,
    pub keys: Rect,
}

pub fn too_small(area: Rect) -> bool {
    area.width < MIN_WIDTH || area.height < MIN_HEIGHT
}

/// The main screen's layout for `area` (also used for mouse hit-testing).
pub fn layout(area: Rect, app: &App) -> Areas {
    let layers = app.session.info.layers.len() as u16;
    let table_h = (layers + 3).min((area.height / 3).max(5));
    // One more status row for the device target.
    let status_h = 8 + u16::from(app.session.target.is_some());
    let message_h = message_lines(app, area.width).len().max(1) as u16;
    let [title, table, charts, bottom, message, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(table_h),
        Constraint::Min(4),
        Constraint::Length(status_h),
        Constraint::Length(message_h),
        Constraint::Length(1),
    ])
    .areas(area);
    let [size_chart, latency_chart] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(charts);
    let (status, detail) = if area.width >= 110 {
        let [s, d] = Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)])
            .areas(bottom);
        (s, Some(d))
    } else {
        (bottom, None)
    };
    Areas {
        title,
        table: Some(table),
        size_chart,
        latency_chart,
        status,
        detail,
        message,
        keys,
    }
}

/// Most rows the message line takes; the log (`M`) has every message whole.
const MESSAGE_ROWS: usize = 3;

/// What the message line says, wrapped to `width`: the newest message while it is fresh, else
/// why the current configuration failed, if it did. Never cut: text beyond three rows ends in
/// a pointer to the log.
pub fn message_lines(app: &App, width: u16) -> Vec<(String, bool)> {
    let (text, error) = match (app.message(), app.current().and_then(failure)) {
        _ if app.cursor.is_some() => (app.cursor_text().unwrap_or_default(), false),
        (Some(m), _) => (
            if m.error {
                format!("error: {}", m.text)
            } else {
                m.text.clone()
            },
            m.error,
        ),
        (None, Some(e)) => (format!("this configuration failed: {e}"), true),
        (None, None) => return Vec::new(),
    };
    let mut lines = wrap(&text, usize::from(width.max(10)));
    if lines.len() > MESSAGE_ROWS {
        lines.truncate(MESSAGE_ROWS);
        let more = " … (M: the whole message)";
        let last = &mut lines[MESSAGE_ROWS - 1];
        let keep = usize::from(width)
            .saturating_sub(more.chars().count())
            .min(last.chars().count());
        *last = last.chars().take(keep).collect::<String>() + more;
    }
    lines.into_iter().map(|l| (l, error)).collect()
}

/// Why a point has no figures: its error, when nothing was measured.
fn failure(p: &Point) -> Option<&str> {
    p.error.as_deref().filter(|_| p.accuracy().is_none())
}

/// Word-wraps `text` to `width` columns; words longer than a line are split.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        loop {
            let used = line.chars().count();
            let gap = usize::from(used > 0);
            if used + gap + word.len() <= width {
                if gap == 1 {
                    line.push(' ');
                }
                line.extend(word.iter());
                break;
            }
            if used > 0 {
                lines.push(std::mem::take(&mut line));
                continue;
            }
            let rest = word.split_off(width);
            lines.push(word.iter().collect());
            word = rest;
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// The first layer row shown in a table of `area`, keeping the selection visible.
pub fn table_first_row(area: Rect, app: &App) -> usize {
    let visible = usize::from(area.height.saturating_sub(3)).max(1);
    app.selected.saturating_sub(visible - 1)
}

/// Draws the whole screen.
pub fn render(frame: &mut Frame, app: &App) {
    let area = frame.area();
    if area.width == 0 || area.height == 0 {
        return;
    }
    if too_small(area) {
        render_too_small(frame, area);
        return;
    }
    match app.view {
        View::Detail => render_detail_screen(frame, area, app),
        View::Main | View::Help | View::Messages | View::Compare if app.present => {
            super::present::render(frame, area, app);
            render_overlays(frame, area, app);
        }
        View::Main | View::Help | View::Messages | View::Compare => {
            let a = layout(area, app);
            render_title(frame, a.title, app);
            if let Some(t) = a.table {
                render_table(frame, t, app);
            }
            render_chart(
                frame,
                a.size_chart,
                app,
                &app.size_chart,
                "Accuracy vs size",
                true,
            );
            render_chart(
                frame,
                a.latency_chart,
                app,
                &app.latency_chart,
                "Accuracy vs latency",
                false,
            );
            render_status(frame, a.status, app);
            if let Some(d) = a.detail {
                render_detail_pane(frame, d, app);
            }
            render_message(frame, a.message, app);
            render_keys(frame, a.keys);
            render_overlays(frame, area, app);
        }
    }
}

/// Help, the message log, the comparison and the export prompt, over either layout.
fn render_overlays(frame: &mut Frame, area: Rect, app: &App) {
    if app.view == View::Help {
        render_help(frame, area);
    }
    if app.view == View::Messages {
        render_log(frame, area, app);
    }
    if app.view == View::Compare {
        render_compare(frame, area, app);
    }
    if let Some(text) = &app.prompt {
        render_prompt(frame, area, text);
    }
}

fn render_too_small(frame: &mut Frame, area: Rect) {
    let text = format!(
        "squeeze needs a terminal of at least {MIN_WIDTH}×{MIN_HEIGHT}; this one is {}×{}. \
         Enlarge the window (q quits).",
        area.width, area.height
    );
    let p = Paragraph::new(text)
        .wrap(Wrap { trim: true })
        .alignment(Alignment::Center);
    let y = area.height / 2;
    let h = (area.height - y).min(3);
    frame.render_widget(
        p,
        Rect::new(area.x, area.y + y.saturating_sub(1), area.width, h.max(1)),
    );
}

pub(super) fn render_title(frame: &mut Frame, area: Rect, app: &App) {
    let info = &app.session.info;
    let right = format!(" {} points ", app.session.measured().count());
    let pins: String = app
        .session
        .pins
        .iter()
        .zip(crate::explore::session::PIN_NAMES)
        .filter(|(p, _)| p.is_some())
        .map(|(_, c)| c)
        .collect();
    let preset = app.session.preset_name();
    // From the most to the least said: the first that leaves the point count whole.
    let room = usize::from(area.width).saturating_sub(right.chars().count() + 9);
    let candidates = [
        (
            format!(
                " {} on {} ({} samples)",
                info.name, info.data_name, info.samples
            ),
            true,
        ),
        (format!(" {} on {}", info.name, info.data_name), true),
        (format!(" {} on {}", info.name, info.data_name), false),
        (format!(" {}", info.name), false),
    ];
    let extras = |full: bool| {
        let mut e = Vec::new();
        if let Some(p) = preset {
            e.push((
                if full {
                    format!("  preset: {p}")
                } else {
                    format!("  {p}")
                },
                ACCENT,
            ));
        }
        if !pins.is_empty() {
            e.push((format!("  pinned: {pins}"), PINNED));
        }
        e
    };
    let width = |t: &str, e: &[(String, Color)]| {
        t.chars().count() + e.iter().map(|x| x.0.chars().count()).sum::<usize>()
    };
    let (text, extra) = candidates
        .iter()
        .map(|(t, full)| (t.clone(), extras(*full)))
        .find(|(t, e)| width(t, e) <= room)
        .unwrap_or_else(|| {
            let t: String = format!(" {}", info.name).chars().take(room).collect();
            (t, Vec::new())
        });
    let mut spans = vec![
        Span::styled(" squeeze ", Style::new().bold().fg(Color::Black).bg(ACCENT)),
        Span::raw(text),
    ];
    for (t, c) in extra {
        spans.push(Span::styled(t, Style::new().fg(c)));
    }
    let used: usize = spans.iter().map(|s| s.content.chars().count()).sum();
    let pad = usize::from(area.width).saturating_sub(used + right.chars().count());
    spans.push(Span::raw(" ".repeat(pad)));
    spans.push(Span::styled(right, Style::new().fg(DIM)));
    frame.render_widget(Line::from(spans), area);
}

fn shape_label(shape: &[usize]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("×")
}

pub(super) fn render_table(frame: &mut Frame, area: Rect, app: &App) {
    let wide = area.width >= 118;
    let current = app.current();
    let figures = current.map(Point::layers).unwrap_or(&[]);
    let total: u64 = figures.iter().map(|l| l.size_bytes).sum();
    let failed = current.and_then(failure).is_some();
    let global = app.session.config.global;
    let mut rows = Vec::new();
    for (i, (info, setting)) in app
        .session
        .info
        .layers
        .iter()
        .zip(&app.session.config.layers)
        .enumerate()
    {
        let f = figures.get(i);
        let prune = match global {
            Some(g) => Cell::from(format!("global {}", pct(g))).style(Style::new().fg(ACCENT)),
            None => Cell::from(setting.prune_label()),
        };
        let waiting = if failed { "—" } else { "…" };
        let bytes = f.map_or(waiting.into(), |f| units::bytes(f.size_bytes as f64));
        let share = match f {
            Some(f) if total > 0 => format!("{:.0}%", f.size_bytes as f64 * 100.0 / total as f64),
            _ => waiting.into(),
        };
        let sens = sensitivity_label(app, i);
        let mut cells = vec![Cell::from(info.name.clone())];
        if wide {
            cells.push(Cell::from(info.op.clone()));
            cells.push(Cell::from(shape_label(&info.shape)));
        }
        cells.push(Cell::from(units::count(info.params)));
        if wide {
            cells.push(Cell::from(units::count(info.macs)));
        }
        cells.extend([
            prune,
            Cell::from(setting.quant_label()),
            Cell::from(bytes),
            Cell::from(share),
            Cell::from(sens),
        ]);
        rows.push(Row::new(cells));
    }
    let name_w = app
        .session
        .info
        .layers
        .iter()
        .map(|l| l.name.chars().count())
        .max()
        .unwrap_or(5);
    let mut header = vec!["layer"];
    let mut widths = vec![Constraint::Length(name_w.clamp(5, 24) as u16)];
    if wide {
        header.extend(["op", "shape"]);
        widths.extend([Constraint::Length(7), Constraint::Length(12)]);
    }
    header.push("params");
    widths.push(Constraint::Length(8));
    if wide {
        header.push("MACs");
        widths.push(Constraint::Length(8));
    }
    header.extend(["prune", "weights", "bytes", "share", "sens 90%/4b"]);
    widths.extend([
        Constraint::Length(12),
        Constraint::Length(15),
        Constraint::Length(11),
        Constraint::Length(5),
        Constraint::Fill(1),
    ]);
    let mut extra = Vec::new();
    if let Some(b) = app.session.config.activation_bits {
        extra.push(format!("activations int{b}"));
    }
    let title = if extra.is_empty() {
        " Layers ".to_string()
    } else {
        format!(" Layers · {} ", extra.join(" · "))
    };
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().bold().fg(ACCENT)))
        .block(Block::bordered().title(title))
        .row_highlight_style(
            Style::new()
                .bg(Color::Indexed(237))
                .add_modifier(Modifier::BOLD),
        )
        .highlight_symbol("▶ ");
    let mut state = TableState::default()
        .with_selected(Some(app.selected))
        .with_offset(table_first_row(area, app));
    frame.render_stateful_widget(table, area, &mut state);
}

/// `−0.4/−1.9`: accuracy change when only this layer is pruned to 90 % / quantized to 4 bits.
fn sensitivity_label(app: &App, layer: usize) -> String {
    let Some(s) = app.session.sensitivity.get(layer) else {
        return String::new();
    };
    let Some(dense) = app.dense().and_then(Point::accuracy) else {
        return "…".into();
    };
    let d = |acc: Option<f64>| {
        acc.map_or("·".to_string(), |a| {
            let pt = (a - dense.value) * 100.0;
            if pt.abs() < 0.05 {
                "0.0".into()
            } else if pt < 0.0 {
                format!("−{:.1}", -pt)
            } else {
                format!("+{pt:.1}")
            }
        })
    };
    let p = s.prune.iter().find(|(p, _)| *p == 900).map(|x| x.1);
    let b = s.bits.iter().find(|(b, _)| *b == 4).map(|x| x.1);
    if p.is_none() && b.is_none() {
        return "—".into();
    }
    format!("{}/{}", d(p), d(b))
}

pub(super) fn render_chart(
    frame: &mut Frame,
    area: Rect,
    app: &App,
    series: &ChartSeries,
    title: &str,
    is_size: bool,
) {
    let title = if series.log_x {
        format!(" {title} (log scale) ")
    } else {
        format!(" {title} ")
    };
    let block = Block::bordered().title(title);
    // The presentation layout's high contrast: white points and axes.
    let (points_colour, axis_colour) = if app.present {
        (Color::White, Color::White)
    } else {
        (Color::Gray, DIM)
    };
    if series.all.is_empty() {
        let what = if is_size { "size" } else { "latency" };
        let waiting = if app.session.pending.is_empty() && app.session.sweeps.is_empty() {
            format!("no {what} measured yet")
        } else {
            format!("waiting for the first {what} measurement …")
        };
        frame.render_widget(
            Paragraph::new(waiting)
                .style(Style::new().fg(DIM))
                .block(block),
            area,
        );
        return;
    }
    let one = |p: &Option<(f64, f64)>| p.map(|p| vec![p]).unwrap_or_default();
    let (dense, current, pinned, cursor) = (
        one(&series.dense),
        one(&series.current),
        series.pinned.clone(),
        one(&series.cursor),
    );
    let budget: Vec<(f64, f64)> = series.budget.map(|b| b.to_vec()).unwrap_or_default();
    let mut datasets = vec![
        // Points and the frontier share the braille grid, so the line runs through the dots.
        Dataset::default()
            .name("points")
            .marker(Marker::Braille)
            .graph_type(GraphType::Scatter)
            .style(Style::new().fg(points_colour))
            .data(&series.all),
        Dataset::default()
            .name("Pareto")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(ACCENT))
            .data(&series.frontier),
    ];
    for (family, line) in &series.curves {
        datasets.push(
            Dataset::default()
                .name(family.name())
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(curve_colour(*family)))
                .data(line),
        );
    }
    for link in &series.tuned_links {
        datasets.push(
            Dataset::default()
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(TUNED))
                .data(link),
        );
    }
    if !series.tuned.is_empty() {
        datasets.push(
            Dataset::default()
                .name("fine-tuned")
                .marker(Marker::Bar)
                .graph_type(GraphType::Scatter)
                .style(Style::new().fg(TUNED))
                .data(&series.tuned),
        );
    }
    if let Some(t) = &app.session.target {
        datasets.push(
            Dataset::default()
                .name(format!("fits {}", t.name))
                .marker(Marker::Braille)
                .graph_type(GraphType::Scatter)
                .style(Style::new().fg(PINNED))
                .data(&series.fitting),
        );
    }
    if !budget.is_empty() {
        datasets.push(
            Dataset::default()
                .name("budget")
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(ERROR))
                .data(&budget),
        );
    }
    if !dense.is_empty() {
        datasets.push(
            Dataset::default()
                .name("dense")
                .marker(Marker::Block)
                .graph_type(GraphType::Scatter)
                .style(Style::new().fg(DENSE))
                .data(&dense),
        );
    }
    if !pinned.is_empty() {
        datasets.push(
            Dataset::default()
                .name("pins")
                .marker(Marker::Block)
                .graph_type(GraphType::Scatter)
                .style(Style::new().fg(PINNED))
                .data(&pinned),
        );
    }
    if !current.is_empty() {
        datasets.push(
            Dataset::default()
                .name("current")
                .marker(Marker::Block)
                .graph_type(GraphType::Scatter)
                .style(Style::new().fg(CURRENT))
                .data(&current),
        );
    }
    if !cursor.is_empty() {
        datasets.push(
            Dataset::default()
                .name("cursor")
                .marker(Marker::Block)
                .graph_type(GraphType::Scatter)
                .style(Style::new().fg(Color::White))
                .data(&cursor),
        );
    }
    let (x_labels, y_labels) = chart_labels(series, is_size);
    let x_labels: Vec<Span> = x_labels.into_iter().map(Span::raw).collect();
    let y_labels: Vec<Span> = y_labels.into_iter().map(Span::raw).collect();
    let mut block = block;
    let mut used = 2;
    if series.hidden_below > 0 {
        let below = format!(" {} below (z) ", series.hidden_below);
        used += below.chars().count();
        block = block.title_bottom(Line::from(below).right_aligned());
    }
    // The legend lives on the border, where it can never cover a point.
    let mut items: Vec<(&str, String, Color)> = Vec::new();
    if !cursor.is_empty() {
        items.push(("■", "cursor".into(), Color::White));
    }
    if !current.is_empty() {
        items.push(("■", "current".into(), CURRENT));
    }
    if !dense.is_empty() {
        items.push(("■", "dense".into(), DENSE));
    }
    if !pinned.is_empty() {
        let names: String = app
            .session
            .pins
            .iter()
            .zip(crate::explore::session::PIN_NAMES)
            .filter(|(p, _)| p.is_some())
            .map(|(_, c)| c)
            .collect();
        items.push(("■", format!("pins {names}"), PINNED));
    }
    if !series.tuned.is_empty() {
        items.push(("■", "fine-tuned".into(), TUNED));
    }
    items.push(("─", "Pareto".into(), ACCENT));
    items.push(("·", "points".into(), points_colour));
    if !budget.is_empty() {
        items.push(("│", "budget".into(), ERROR));
    }
    for (family, _) in &series.curves {
        items.push(("─", family.name().into(), curve_colour(*family)));
    }
    if let Some(t) = &app.session.target {
        items.push(("·", format!("fits {}", t.name), PINNED));
    }
    let mut legend = vec![Span::raw(" ")];
    let mut room = usize::from(area.width).saturating_sub(used + 1);
    for (mark, name, color) in items {
        let w = mark.chars().count() + name.chars().count() + 2;
        if w > room {
            break;
        }
        room -= w;
        legend.push(Span::styled(mark, Style::new().fg(color)));
        legend.push(Span::raw(format!("{name}  ")));
    }
    block = block.title_bottom(Line::from(legend).left_aligned());
    let chart = Chart::new(datasets)
        .block(block)
        .legend_position(None)
        .x_axis(
            Axis::default()
                .bounds(series.x_bounds)
                .labels(x_labels)
                .style(Style::new().fg(axis_colour)),
        )
        .y_axis(
            Axis::default()
                .title("top-1")
                .bounds(series.y_bounds)
                .labels(y_labels)
                .style(Style::new().fg(axis_colour)),
        );
    frame.render_widget(chart, area);
}

/// A chart's axis labels: three on x (sizes or latencies), three on y (accuracy).
fn chart_labels(series: &ChartSeries, is_size: bool) -> (Vec<String>, Vec<String>) {
    let fmt_x = |x: f64| {
        let x = if series.log_x { 10f64.powf(x) } else { x };
        if is_size {
            units::bytes(x)
        } else {
            units::micros(x)
        }
    };
    let [x0, x1] = series.x_bounds;
    let [y0, y1] = series.y_bounds;
    (
        vec![fmt_x(x0), fmt_x((x0 + x1) / 2.0), fmt_x(x1)],
        vec![
            format!("{y0:.1}%"),
            format!("{:.1}%", (y0 + y1) / 2.0),
            format!("{y1:.1}%"),
        ],
    )
}

/// Where a chart drawn by `render_chart` in `area` puts its data: the cells between the axes,
/// as ratatui's `Chart` lays them out (inside the border, right of the y labels and axis,
/// above the x axis and its labels). `None` when the chart shows no points.
pub fn chart_graph_area(area: Rect, series: &ChartSeries, is_size: bool) -> Option<Rect> {
    if series.all.is_empty() {
        return None;
    }
    let inner = Block::bordered().inner(area);
    if inner.height < 4 || inner.width < 4 {
        return None;
    }
    let (x_labels, y_labels) = chart_labels(series, is_size);
    let width = |s: &String| Line::raw(s.as_str()).width() as u16;
    let y_w = y_labels.iter().map(width).max().unwrap_or(0);
    // The first x label is left-aligned under the y axis: all but its last character lie left.
    let first_x = x_labels.first().map_or(0, |l| width(l).saturating_sub(1));
    let left = y_w.max(first_x).min(inner.width / 3);
    // The y axis line takes a column, the x labels and the x axis line a row each.
    let x = inner.x + left + 1;
    let bottom = inner.bottom().saturating_sub(3);
    Some(Rect::new(
        x,
        inner.y,
        inner.right().saturating_sub(x),
        bottom.saturating_sub(inner.y) + 1,
    ))
}

/// Accuracy of a point as text: `97.85%`, `97.9% ±0.9 (1000)`, or what is happening.
fn accuracy_text(p: Option<&Point>) -> String {
    let Some(p) = p else {
        return "—".into();
    };
    match (p.accuracy(), &p.error) {
        (Some(a), _) if a.half_width > 0.0 => format!(
            "{:.1}% ±{:.1} (n={})",
            a.value * 100.0,
            a.half_width * 100.0,
            a.samples
        ),
        (Some(a), _) => units::percent(a.value),
        (None, Some(_)) => "failed".into(),
        (None, None) => "measuring …".into(),
    }
}

/// Sparsity (the pruned fraction) as a percentage, with the exact zeros after quantization
/// beside it when they read differently: `50.0% · 51.3% zeros`.
pub fn sparsity_and_zeros(sparsity: f64, zeros: Option<f64>) -> String {
    let s = format!("{:.1}%", sparsity * 100.0);
    match zeros.map(|z| format!("{:.1}%", z * 100.0)) {
        Some(z) if z != s => format!("{s} · {z} zeros"),
        _ => s,
    }
}

fn ratio_text(dense: Option<f64>, now: Option<f64>, less: &str, more: &str) -> String {
    match (dense, now) {
        (Some(d), Some(n)) if d > 0.0 && n > 0.0 => {
            let r = d / n;
            if (r - 1.0).abs() < 0.005 {
                "same".into()
            } else if r > 1.0 {
                format!("{r:.2}× {less}")
            } else {
                format!("{:.2}× {more}", 1.0 / r)
            }
        }
        _ => String::new(),
    }
}

fn render_status(frame: &mut Frame, area: Rect, app: &App) {
    let block = Block::bordered().title(" Status ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if inner.height == 0 {
        return;
    }
    let cur = app.current();
    let dense = app.dense();
    let pin = app.session.pinned_point(0);
    let acc = |p: Option<&Point>| p.and_then(Point::accuracy).map(|a| a.value);
    let size = |p: Option<&Point>| p.and_then(Point::size_bytes).map(|s| s as f64);
    let lat = |p: Option<&Point>| p.and_then(Point::latency_us);
    let delta = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => units::points_delta(a - b),
        _ => String::new(),
    };
    // A failed configuration has no figures, and waits for none.
    let missing = |p: Option<&Point>| {
        if p.and_then(failure).is_some() {
            "—".to_string()
        } else {
            "…".to_string()
        }
    };
    let size_text = |p: Option<&Point>| size(p).map_or_else(|| missing(p), units::bytes);
    let lat_text = |p: Option<&Point>| lat(p).map_or_else(|| missing(p), units::micros);
    let sparsity_text = |p: Option<&Point>| {
        p.and_then(Point::sparsity).map_or_else(
            || missing(p),
            |s| sparsity_and_zeros(s, p.and_then(Point::zeros)),
        )
    };
    // The pinned column is narrower: the pruned fraction alone.
    let pin_sparsity_text = |p: Option<&Point>| {
        p.and_then(Point::sparsity)
            .map_or_else(|| missing(p), |s| format!("{:.1}%", s * 100.0))
    };

    let current = if cur.is_some_and(|p| !p.provenance.is_compressed()) {
        "current, fine-tuned"
    } else {
        "current"
    };
    let mut header = vec!["", current, "vs dense"];
    let mut widths = vec![
        Constraint::Length(9),
        Constraint::Length(22),
        Constraint::Length(15),
    ];
    if app.session.pins[0].is_some() {
        header.extend(["A (pinned)", "current vs A"]);
        widths.extend([Constraint::Length(14), Constraint::Length(14)]);
    }
    let row = |name: &str, cells: Vec<String>| {
        let mut c = vec![Cell::from(name.to_string()).style(Style::new().fg(DIM))];
        c.extend(cells.into_iter().map(Cell::from));
        Row::new(c)
    };
    let with_pin = |mut v: Vec<String>, a: String, d: String| {
        if app.session.pins[0].is_some() {
            v.push(a);
            v.push(d);
        }
        v
    };
    let rows = vec![
        row(
            "accuracy",
            with_pin(
                vec![accuracy_text(cur), delta(acc(cur), acc(dense))],
                accuracy_text(pin),
                delta(acc(cur), acc(pin)),
            ),
        ),
        row(
            "size",
            with_pin(
                vec![
                    size_text(cur),
                    ratio_text(size(dense), size(cur), "smaller", "larger"),
                ],
                size_text(pin),
                ratio_text(size(pin), size(cur), "smaller", "larger"),
            ),
        ),
        row(
            "latency",
            with_pin(
                vec![
                    lat_text(cur),
                    ratio_text(lat(dense), lat(cur), "faster", "slower"),
                ],
                lat_text(pin),
                ratio_text(lat(pin), lat(cur), "faster", "slower"),
            ),
        ),
        row(
            "sparsity",
            with_pin(
                vec![sparsity_text(cur), String::new()],
                pin_sparsity_text(pin),
                String::new(),
            ),
        ),
    ];

    let table_h = (rows.len() as u16 + 1).min(inner.height);
    let device_h = u16::from(app.session.target.is_some());
    let [stats, device, work] = Layout::vertical([
        Constraint::Length(table_h),
        Constraint::Length(device_h),
        Constraint::Length(1),
    ])
    .areas(inner);
    frame.render_widget(
        Table::new(rows, widths).header(Row::new(header).style(Style::new().fg(ACCENT))),
        stats,
    );
    if let Some(t) = &app.session.target {
        frame.render_widget(fit_line(t, cur), device);
    }
    render_work(frame, work, app);
}

/// The message line: the newest message while it is fresh, or why the current configuration
/// failed.
pub(super) fn render_message(frame: &mut Frame, area: Rect, app: &App) {
    let lines: Vec<Line> = message_lines(app, area.width)
        .into_iter()
        .map(|(text, error)| {
            if error {
                Line::styled(text, Style::new().fg(ERROR))
            } else {
                Line::raw(text)
            }
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), area);
}

/// The pinned configurations side by side (`T`): figures, changes against dense and the
/// stored format of every layer.
fn render_compare(frame: &mut Frame, area: Rect, app: &App) {
    let rows = crate::explore::compare::rows(&app.session);
    let w = area.width.saturating_sub(2).min(200);
    let h = (rows.len() as u16 + 5).min(area.height.saturating_sub(2));
    let popup = Rect::new(area.x + (area.width - w) / 2, area.y + 2, w, h);
    frame.render_widget(Clear, popup);
    let block = Block::bordered()
        .title(" Pinned configurations (x saves Markdown and CSV; any other key closes) ")
        .border_style(Style::new().fg(ACCENT));
    let inner = block.inner(popup);
    frame.render_widget(block, popup);
    let opt = |v: Option<String>| v.unwrap_or_else(|| "…".into());
    let wide = inner.width >= 120;
    let mut header = vec![
        "", "top-1", "Δ", "size", "ratio", "latency", "speed-up", "what",
    ];
    if wide {
        header.push("stored formats");
    }
    let table_rows: Vec<Row> = rows
        .iter()
        .map(|r| {
            let mut cells = vec![
                Cell::from(r.name.clone()).style(Style::new().bold()),
                Cell::from(match (&r.error, r.accuracy) {
                    (Some(_), None) => "failed".to_string(),
                    (_, a) => opt(a.map(units::percent)),
                }),
                Cell::from(opt(r.delta_points.map(|d| units::points_delta(d / 100.0)))),
                Cell::from(opt(r.size_bytes.map(|b| units::bytes(b as f64)))),
                Cell::from(opt(r.ratio.map(|x| format!("{x:.2}×")))),
                Cell::from(opt(r.latency_us.map(units::micros))),
                Cell::from(opt(r.speedup.map(|x| format!("{x:.2}×")))),
                Cell::from(r.summary.clone()),
            ];
            if wide {
                cells.push(Cell::from(r.formats.join(" ")));
            }
            Row::new(cells)
        })
        .collect();
    let mut widths = vec![
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Fill(2),
    ];
    if wide {
        widths.push(Constraint::Fill(3));
    }
    let mut lines = inner;
    if app.session.pins.iter().all(Option::is_none) {
        frame.render_widget(
            Line::styled(
                "nothing pinned yet: c pins the current configuration (A, then B, C, D)",
                Style::new().fg(DIM),
            ),
            Rect::new(
                inner.x,
                inner.y + inner.height.saturating_sub(1),
                inner.width,
                1,
            ),
        );
        lines.height = lines.height.saturating_sub(1);
    }
    frame.render_widget(
        Table::new(table_rows, widths).header(Row::new(header).style(Style::new().fg(ACCENT))),
        lines,
    );
}

/// The message log (`M`): every message of this run, newest at the bottom, wrapped whole.
fn render_log(frame: &mut Frame, area: Rect, app: &App) {
    let w = area.width.saturating_sub(4).min(140);
    let h = area.height.saturating_sub(2);
    let popup = Rect::new(area.x + (area.width - w) / 2, area.y + 1, w, h);
    frame.render_widget(Clear, popup);
    let block = Block::bordered()
        .title(" Messages, newest last (any key closes) ")
        .border_style(Style::new().fg(ACCENT));
    let inner = block.inner(popup);
    frame.render_widget(block, popup);
    let width = usize::from(inner.width.saturating_sub(8)).max(10);
    let mut lines: Vec<Line> = Vec::new();
    for m in &app.messages {
        let age = app.now.saturating_duration_since(m.at).as_secs();
        let when = if age < 60 {
            format!("{age:>3}s ")
        } else {
            format!("{:>3}m ", age / 60)
        };
        let style = if m.error {
            Style::new().fg(ERROR)
        } else {
            Style::new()
        };
        for (i, l) in wrap(&m.text, width).into_iter().enumerate() {
            let head = if i == 0 { when.clone() } else { " ".repeat(5) };
            lines.push(Line::from(vec![
                Span::styled(head, Style::new().fg(DIM)),
                Span::styled(l, style),
            ]));
        }
    }
    if lines.is_empty() {
        lines.push(Line::styled("nothing said yet", Style::new().fg(DIM)));
    }
    // The newest messages stay in view.
    let skip = lines.len().saturating_sub(usize::from(inner.height));
    frame.render_widget(Paragraph::new(lines.split_off(skip)), inner);
}

/// The device line: whether the current configuration fits the target, and by what margin.
fn fit_line(target: &crate::explore::targets::Target, cur: Option<&Point>) -> Line<'static> {
    let name = Span::styled(format!("{} ", target.name), Style::new().fg(DIM));
    let Some(fit) = cur.and_then(|p| p.fit(target)) else {
        return Line::from(vec![name, Span::raw("…")]);
    };
    let margin = |m: &crate::explore::targets::Margin, what: &str| {
        let (mark, color) = if m.fits() {
            ("✓", PINNED)
        } else {
            ("✗", ERROR)
        };
        Span::styled(
            format!(
                "{what} {}/{} {mark}  ",
                units::bytes(m.need as f64),
                units::bytes(m.have as f64)
            ),
            Style::new().fg(color),
        )
    };
    let mut spans = vec![name];
    if let Some(m) = &fit.flash {
        spans.push(margin(m, "flash"));
    }
    if let Some(m) = &fit.ram {
        spans.push(margin(m, "RAM"));
        if let Some((_, layer)) = cur.and_then(Point::arena) {
            spans.push(Span::styled(
                format!("(peak {layer})  "),
                Style::new().fg(DIM),
            ));
        }
    }
    if let Some(l) = fit.latency_estimate_us {
        spans.push(Span::raw(format!("≈{} (estimate)", units::micros(l))));
    }
    Line::from(spans)
}

/// The progress line: a running sweep's gauge, or what the current edit is waiting for.
fn render_work(frame: &mut Frame, area: Rect, app: &App) {
    if let Some(t) = &app.session.tune {
        frame.render_widget(
            Line::styled(
                format!("{} · Esc cancels", t.status()),
                Style::new().fg(TUNED),
            ),
            area,
        );
    } else if let Some(s) = app.session.sweeps.first() {
        let queued = app.session.sweeps.len() - 1;
        let mut label = format!("{} {}/{}", s.label, s.done, s.total);
        if queued > 0 {
            label.push_str(&format!(" (+{queued} queued)"));
        }
        label.push_str(" · Esc cancels ");
        let ratio = if s.total > 0 {
            (s.done as f64 / s.total as f64).clamp(0.0, 1.0)
        } else {
            0.0
        };
        frame.render_widget(
            LineGauge::default()
                .ratio(ratio)
                .label(label)
                .filled_style(Style::new().fg(ACCENT))
                .unfilled_style(Style::new().fg(DIM)),
            area,
        );
    } else if let Some(stage) = app.session.pending.first() {
        let text = match stage {
            // A set no larger than the quick subset is measured whole at once.
            Stage::Quick if app.info().quick_samples >= app.info().samples => {
                "measuring: accuracy on the full set …"
            }
            Stage::Quick => "measuring: quick estimate on a subset …",
            Stage::Full => "measuring: accuracy on the full set …",
            Stage::Latency => "measuring: latency …",
        };
        frame.render_widget(Line::styled(text, Style::new().fg(ACCENT)), area);
    } else if app.current().and_then(failure).is_some() {
        frame.render_widget(
            Line::styled(
                "✗ this configuration cannot be measured (u undoes the edit)",
                Style::new().fg(ERROR),
            ),
            area,
        );
    } else {
        // The teacher setting of the next `f`, when it is not the labels alone.
        let idle = match &app.session.tune_spec.settings.distill {
            Some(d) => format!(
                "idle · f distils (T={}, α={}; F changes it)",
                d.temperature, d.alpha
            ),
            None => "idle".into(),
        };
        frame.render_widget(Line::styled(idle, Style::new().fg(DIM)), area);
    }
}

fn layer_title(app: &App) -> String {
    let Some(info) = app.session.info.layers.get(app.selected) else {
        return " Layer ".into();
    };
    let setting = app.selected_setting();
    let prune = match (app.session.config.global, setting) {
        (Some(g), _) => format!("global {}", pct(g)),
        (None, Some(s)) if s.prune != PruneMethod::None => s.prune_label(),
        _ => "not pruned".into(),
    };
    let quant = setting.map(|s| s.quant_label()).unwrap_or_default();
    format!(
        " {} · {} {} · {prune} · {quant} ",
        info.name,
        info.op,
        shape_label(&info.shape)
    )
}

/// The histograms of the selected layer: before, and after (kept weights only).
fn render_histograms(frame: &mut Frame, area: Rect, app: &App, rows_each: u16) {
    let Some(info) = app.session.info.layers.get(app.selected) else {
        return;
    };
    let after = app
        .current()
        .and_then(|p| p.layers().get(app.selected))
        .cloned();
    let [l1, h1, l2, h2, axis] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(rows_each),
        Constraint::Length(1),
        Constraint::Length(rows_each),
        Constraint::Length(1),
    ])
    .areas(area);
    let width = usize::from(area.width);
    let before: Vec<u64> = stretch(&info.hist_before, width);
    frame.render_widget(Line::styled("weights before", Style::new().fg(DIM)), l1);
    frame.render_widget(
        Sparkline::default()
            .data(&before)
            .style(Style::new().fg(DENSE)),
        h1,
    );
    match after {
        Some(f) if !f.hist_after.is_empty() => {
            let pruned = if f.sparsity > 0.0 {
                format!(" ({:.1}% pruned, not shown)", f.sparsity * 100.0)
            } else {
                String::new()
            };
            frame.render_widget(
                Line::styled(format!("after: {}{pruned}", f.format), Style::new().fg(DIM)),
                l2,
            );
            let data = stretch(&f.hist_after, width);
            frame.render_widget(
                Sparkline::default()
                    .data(&data)
                    .style(Style::new().fg(CURRENT)),
                h2,
            );
        }
        _ => {
            let text = if app.current().and_then(failure).is_some() {
                "after: — (the configuration failed)"
            } else {
                "after: measuring …"
            };
            frame.render_widget(Line::styled(text, Style::new().fg(DIM)), l2);
        }
    }
    let (lo, hi) = info.hist_range;
    let left = format!("{lo:.3}");
    let right = format!("{hi:.3}");
    let gap = width.saturating_sub(left.len() + right.len());
    frame.render_widget(
        Line::styled(
            format!("{left}{}{right}", " ".repeat(gap)),
            Style::new().fg(DIM),
        ),
        axis,
    );
}

/// Spreads `bins` over `width` columns (each bin repeated), so the histogram fills the area.
fn stretch(bins: &[u32], width: usize) -> Vec<u64> {
    if bins.is_empty() || width == 0 {
        return Vec::new();
    }
    (0..width)
        .map(|c| u64::from(bins[(c * bins.len() / width).min(bins.len() - 1)]))
        .collect()
}

/// The selected layer's sensitivity in a few words: accuracy change vs dense (points) when
/// only this layer is pruned or quantized; the detail view (Enter) draws the curves.
fn sensitivity_text(app: &App) -> Vec<Line<'static>> {
    let Some(s) = app.session.sensitivity.get(app.selected) else {
        return vec![];
    };
    if s.prune.is_empty() && s.bits.is_empty() {
        return vec![Line::styled(
            "sensitivity: not measured (S runs the sweep)",
            Style::new().fg(DIM),
        )];
    }
    let dense = app
        .dense()
        .and_then(Point::accuracy)
        .map_or(0.0, |a| a.value);
    let d = |a: f64| {
        let pt = (a - dense) * 100.0;
        if pt.abs() < 0.05 {
            "0.0".to_string()
        } else {
            format!("{pt:+.1}").replace('-', "−")
        }
    };
    let prune: Vec<String> = s
        .prune
        .iter()
        .filter(|(p, _)| [500, 800, 900, 950].contains(p))
        .map(|(p, a)| format!("{} {}", pct(*p), d(*a)))
        .collect();
    let bits: Vec<String> = s
        .bits
        .iter()
        .filter(|(b, _)| [8, 6, 4, 2].contains(b))
        .map(|(b, a)| format!("{b}b {}", d(*a)))
        .collect();
    vec![
        Line::styled("alone, Δ pt vs dense (Enter: curves)", Style::new().fg(DIM)),
        Line::from(format!("pruned {}", prune.join(" · "))),
        Line::from(format!("bits   {}", bits.join(" · "))),
    ]
}

fn render_detail_pane(frame: &mut Frame, area: Rect, app: &App) {
    let block = Block::bordered().title(layer_title(app));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if inner.height < 5 {
        return;
    }
    let sens = sensitivity_text(app);
    let sens_h = (sens.len() as u16).min(inner.height.saturating_sub(5));
    let hist_h = inner.height - sens_h;
    let [hist, text] =
        Layout::vertical([Constraint::Length(hist_h), Constraint::Length(sens_h)]).areas(inner);
    let rows_each = (hist_h.saturating_sub(3) / 2).max(1);
    render_histograms(frame, hist, app, rows_each);
    frame.render_widget(Paragraph::new(sens), text);
}

fn render_detail_screen(frame: &mut Frame, area: Rect, app: &App) {
    let layers = app.session.info.layers.len() as u16;
    let message_h = message_lines(app, area.width).len().max(1) as u16;
    let [title, table, body, status, message, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length((layers + 3).min(area.height / 4).max(4)),
        Constraint::Min(6),
        Constraint::Length(1),
        Constraint::Length(message_h),
        Constraint::Length(1),
    ])
    .areas(area);
    render_title(frame, title, app);
    render_table(frame, table, app);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(body);
    let block = Block::bordered().title(layer_title(app));
    let inner = block.inner(left);
    frame.render_widget(block, left);
    let rows_each = (inner.height.saturating_sub(3) / 2).max(1);
    render_histograms(frame, inner, app, rows_each);

    let [pc, bc] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(right);
    render_sensitivity_chart(frame, pc, app, true);
    render_sensitivity_chart(frame, bc, app, false);
    frame.render_widget(status_summary(app), status);
    render_message(frame, message, app);
    render_keys(frame, keys);
}

/// The status in one line, for screens without the status panel: accuracy, size and latency
/// of the current configuration with their change against dense, or what it waits for.
fn status_summary(app: &App) -> Line<'static> {
    let cur = app.current();
    let dense = app.dense();
    if cur.and_then(failure).is_some() {
        return Line::styled(
            " ✗ this configuration cannot be measured (u undoes the edit)",
            Style::new().fg(ERROR),
        );
    }
    let acc = |p: Option<&Point>| p.and_then(Point::accuracy).map(|a| a.value);
    let size = |p: Option<&Point>| p.and_then(Point::size_bytes).map(|s| s as f64);
    let lat = |p: Option<&Point>| p.and_then(Point::latency_us);
    let mut spans = vec![Span::styled(" accuracy ", Style::new().fg(DIM))];
    spans.push(Span::styled(accuracy_text(cur), Style::new().bold()));
    if let (Some(a), Some(d)) = (acc(cur), acc(dense)) {
        spans.push(Span::raw(format!(" ({})", units::points_delta(a - d))));
    }
    spans.push(Span::styled("  size ", Style::new().fg(DIM)));
    spans.push(Span::raw(size(cur).map_or("…".into(), units::bytes)));
    let r = ratio_text(size(dense), size(cur), "smaller", "larger");
    if !r.is_empty() {
        spans.push(Span::raw(format!(" ({r})")));
    }
    spans.push(Span::styled("  latency ", Style::new().fg(DIM)));
    spans.push(Span::raw(lat(cur).map_or("…".into(), units::micros)));
    let r = ratio_text(lat(dense), lat(cur), "faster", "slower");
    if !r.is_empty() {
        spans.push(Span::raw(format!(" ({r})")));
    }
    if !app.session.pending.is_empty() {
        spans.push(Span::styled("  measuring …", Style::new().fg(ACCENT)));
    }
    Line::from(spans)
}

/// Accuracy when only the selected layer is pruned (x: sparsity %) or quantized (x: bits).
fn render_sensitivity_chart(frame: &mut Frame, area: Rect, app: &App, prune: bool) {
    let name = app
        .session
        .info
        .layers
        .get(app.selected)
        .map_or("", |l| l.name.as_str());
    let title = if prune {
        format!(" {name} alone: accuracy vs sparsity (L1) ")
    } else {
        format!(" {name} alone: accuracy vs bits (symmetric, per channel) ")
    };
    let block = Block::bordered().title(title);
    let s = app.session.sensitivity.get(app.selected);
    let data: Vec<(f64, f64)> = match s {
        Some(s) if prune => s
            .prune
            .iter()
            .map(|(p, a)| (f64::from(*p) / 10.0, a * 100.0))
            .collect(),
        Some(s) => s
            .bits
            .iter()
            .map(|(b, a)| (f64::from(*b), a * 100.0))
            .collect(),
        None => Vec::new(),
    };
    if data.is_empty() {
        frame.render_widget(
            Paragraph::new("not measured yet: S runs the sensitivity sweep")
                .style(Style::new().fg(DIM))
                .block(block),
            area,
        );
        return;
    }
    let dense = app
        .dense()
        .and_then(Point::accuracy)
        .map(|a| a.value * 100.0);
    let (lo, hi) = data
        .iter()
        .map(|p| p.1)
        .chain(dense)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
            (lo.min(y), hi.max(y))
        });
    let pad = ((hi - lo) * 0.05).max(0.1);
    let (y0, y1) = ((lo - pad).max(0.0), (hi + pad).min(100.0));
    let (x0, x1) = if prune { (0.0, 100.0) } else { (1.0, 8.0) };
    let dense_line: Vec<(f64, f64)> = dense.map(|d| vec![(x0, d), (x1, d)]).unwrap_or_default();
    let mut datasets = vec![
        Dataset::default()
            .name("measured")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(CURRENT))
            .data(&data),
    ];
    if !dense_line.is_empty() {
        datasets.insert(
            0,
            Dataset::default()
                .name("dense")
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(DENSE))
                .data(&dense_line),
        );
    }
    let xl = |v: f64| {
        if prune {
            format!("{v:.0}%")
        } else {
            format!("{v:.0}b")
        }
    };
    let chart = Chart::new(datasets)
        .block(block)
        .legend_position(Some(LegendPosition::BottomLeft))
        .x_axis(
            Axis::default()
                .bounds([x0, x1])
                .labels(vec![
                    Span::raw(xl(x0)),
                    Span::raw(xl((x0 + x1) / 2.0)),
                    Span::raw(xl(x1)),
                ])
                .style(Style::new().fg(DIM)),
        )
        .y_axis(
            Axis::default()
                .bounds([y0, y1])
                .labels(vec![
                    Span::raw(format!("{y0:.1}%")),
                    Span::raw(format!("{y1:.1}%")),
                ])
                .style(Style::new().fg(DIM)),
        );
    frame.render_widget(chart, area);
}

/// The key hints, generated from the key table: as many as fit, always ending with help
/// and quit.
fn render_keys(frame: &mut Frame, area: Rect) {
    let badge = |k: &str, hint: &str| {
        [
            Span::styled(
                format!(" {k} "),
                Style::new().fg(Color::Black).bg(Color::Gray),
            ),
            Span::raw(format!(" {hint} ")),
        ]
    };
    let hints: Vec<(String, &str, Action)> = KEYMAP
        .iter()
        .filter_map(|b| Some((key_label(b.keys.first()?), b.hint?, b.action)))
        .collect();
    let width = |k: &str, h: &str| k.chars().count() + h.chars().count() + 4;
    let last: Vec<&(String, &str, Action)> = hints
        .iter()
        .filter(|h| matches!(h.2, Action::Help | Action::Quit))
        .collect();
    let mut room = usize::from(area.width)
        .saturating_sub(last.iter().map(|h| width(&h.0, h.1)).sum::<usize>());
    let mut spans = Vec::new();
    for (k, h, a) in &hints {
        if matches!(a, Action::Help | Action::Quit) {
            continue;
        }
        let w = width(k, h);
        if w > room {
            break;
        }
        room -= w;
        spans.extend(badge(k, h));
    }
    for (k, h, _) in last {
        spans.extend(badge(k, h));
    }
    frame.render_widget(Line::from(spans), area);
}

/// The export prompt: a one-line box over the bottom of the screen.
fn render_prompt(frame: &mut Frame, area: Rect, text: &str) {
    let w = area.width.saturating_sub(8).min(100);
    let popup = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + area.height.saturating_sub(7),
        w,
        3.min(area.height),
    );
    frame.render_widget(Clear, popup);
    let block = Block::bordered()
        .title(" Export recipe, compressed model and measurement to (Enter: export, Esc: cancel) ")
        .border_style(Style::new().fg(ACCENT));
    // Show the end of a long path, where the typing happens.
    let room = usize::from(w.saturating_sub(4));
    let chars: Vec<char> = text.chars().collect();
    let shown: String = chars[chars.len().saturating_sub(room)..].iter().collect();
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::raw(shown),
            Span::styled("█", Style::new().fg(ACCENT)),
        ]))
        .block(block),
        popup,
    );
}

/// The help overlay: every binding of the key table, by group, flowed into as many columns
/// as the screen needs (two at 80×24).
fn render_help(frame: &mut Frame, area: Rect) {
    let mut lines: Vec<Line> = Vec::new();
    let mut key_w = 0;
    let groups: Vec<(Group, Vec<(String, &str)>)> =
        Group::ALL.iter().map(|g| (*g, help_lines(*g))).collect();
    for (_, l) in &groups {
        for (k, _) in l {
            key_w = key_w.max(k.chars().count());
        }
    }
    for (g, entries) in &groups {
        if !lines.is_empty() {
            lines.push(Line::default());
        }
        lines.push(Line::styled(g.title(), Style::new().bold().fg(ACCENT)));
        for (k, help) in entries {
            lines.push(Line::from(vec![
                Span::styled(format!(" {k:<key_w$}  "), Style::new().bold()),
                Span::raw(*help),
            ]));
        }
    }
    let w = area.width.saturating_sub(2).min(140);
    let h = area.height.saturating_sub(2).max(3);
    let rows = usize::from(h.saturating_sub(2)).max(1);
    let ncols = lines.len().div_ceil(rows).max(1);
    let popup = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height.saturating_sub(h)) / 2,
        w,
        h.min(area.height),
    );
    frame.render_widget(Clear, popup);
    let block = Block::bordered()
        .title(" Keys (any key closes) ")
        .border_style(Style::new().fg(ACCENT));
    let inner = block.inner(popup);
    frame.render_widget(block, popup);
    let cols = Layout::horizontal(vec![Constraint::Ratio(1, ncols as u32); ncols]).split(inner);
    let mut rest = lines;
    for col in cols.iter() {
        let take = rows.min(rest.len());
        let tail = rest.split_off(take);
        frame.render_widget(Paragraph::new(std::mem::replace(&mut rest, tail)), *col);
    }
}
