//! Reports: the explorer's charts and the sensitivity curves as PNG and SVG (plotters), and the
//! measured points as JSON. The only module that draws with plotters.

pub mod html;

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;

use crate::explore::compare::ComparisonRow;
use crate::explore::pareto;
pub use crate::explore::plot::{PlotInput, PlotPoint};
use crate::explore::sweep::CurveFamily;
use crate::files;
use crate::units;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: cannot draw the chart: {msg}", path.display())]
    Draw { path: PathBuf, msg: String },
    #[error("nothing to plot yet: no configuration has both an accuracy and a {what}")]
    Empty { what: &'static str },
    #[error(transparent)]
    File(#[from] files::FileError),
}

/// Why a chart was not drawn.
#[derive(Debug, thiserror::Error)]
pub enum DrawError<E: std::error::Error + Send + Sync> {
    /// No point has both an accuracy and a figure on the chart's axis.
    #[error("no points")]
    NoPoints,
    /// The backend (bitmap, SVG) refused.
    #[error(transparent)]
    Backend(#[from] DrawingAreaErrorKind<E>),
}

/// Which chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    Size,
    Latency,
}

impl Axis {
    fn file_stem(self) -> &'static str {
        match self {
            Axis::Size => "accuracy-vs-size",
            Axis::Latency => "accuracy-vs-latency",
        }
    }

    fn x_of(self, p: &PlotPoint) -> Option<f64> {
        let x = match self {
            Axis::Size => Some(p.size_bytes),
            Axis::Latency => p.latency_us,
        }?;
        (x > 0.0 && x.is_finite()).then_some(x)
    }
}

/// One slide `write_plots` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slide {
    Chart(Axis),
    /// Accuracy against the whole-model curves' parameters (`draw_compression`).
    Compression,
}

impl Slide {
    fn file_stem(self) -> &'static str {
        match self {
            Slide::Chart(axis) => axis.file_stem(),
            Slide::Compression => "accuracy-vs-compression",
        }
    }

    fn draw<DB: DrawingBackend>(
        self,
        root: &DrawingArea<DB, Shift>,
        input: &PlotInput,
    ) -> Result<(), DrawError<DB::ErrorType>> {
        match self {
            Slide::Chart(axis) => draw_chart(root, input, axis),
            Slide::Compression => draw_compression(root, input),
        }
    }
}

/// Writes `accuracy-vs-size` and `accuracy-vs-latency` (and, when the whole-model curves are
/// measured, `accuracy-vs-compression`) as PNG and SVG, and `points.json`, into
/// `dir` (created if missing), each atomically through [`crate::files`]. A chart with no points
/// is skipped; it is an error only when both are empty. Nothing is written when one of the
/// files would be one of `inputs` (the session's model, data, ...).
pub fn write_plots(
    input: &PlotInput,
    dir: &Path,
    inputs: &[PathBuf],
) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let axes: Vec<Axis> = [Axis::Size, Axis::Latency]
        .into_iter()
        .filter(|axis| input.points.iter().any(|p| axis.x_of(p).is_some()))
        .collect();
    if axes.is_empty() {
        return Err(ReportError::Empty { what: "size" });
    }
    // The slides: one per chart with points, and the whole-model curves when measured.
    let mut slides: Vec<Slide> = axes.into_iter().map(Slide::Chart).collect();
    if input.curves.iter().any(|c| !c.points.is_empty()) {
        slides.push(Slide::Compression);
    }
    // The first numbered set of names none of whose files exist: plots never replace plots.
    let names = |n: usize| {
        let suffix = if n == 1 {
            String::new()
        } else {
            format!("-{n}")
        };
        let mut v: Vec<PathBuf> = slides
            .iter()
            .flat_map(|slide| {
                ["png", "svg"].map(|ext| dir.join(format!("{}{suffix}.{ext}", slide.file_stem())))
            })
            .collect();
        v.push(dir.join(format!("points{suffix}.json")));
        v
    };
    let paths = (1..)
        .map(names)
        .find(|v| v.iter().all(|p| !p.exists()))
        .unwrap_or_default();
    let Some(json_path) = paths.last().cloned() else {
        return Err(ReportError::Empty { what: "size" });
    };
    let mut check = files::OutputCheck::new().inputs("input", inputs.iter().map(PathBuf::as_path));
    for p in &paths[..paths.len() - 1] {
        check = check.output("plot", p);
    }
    check.output("plot", &json_path).check()?;
    let mut written = Vec::new();
    for (i, slide) in slides.into_iter().enumerate() {
        let png = paths[2 * i].clone();
        files::write_atomic_with(&png, |tmp| {
            let root = BitMapBackend::new(tmp, SLIDE).into_drawing_area();
            slide.draw(&root, input)?;
            root.present().map_err(DrawError::from)
        })?;
        written.push(png);

        let svg_path = paths[2 * i + 1].clone();
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, SLIDE).into_drawing_area();
            slide
                .draw(&root, input)
                .and_then(|()| root.present().map_err(DrawError::from))
                .map_err(|e| ReportError::Draw {
                    path: svg_path.clone(),
                    msg: e.to_string(),
                })?;
        }
        files::write_atomic(&svg_path, svg.as_bytes())?;
        written.push(svg_path);
    }
    files::write_atomic(&json_path, points_json(input).as_bytes())?;
    written.push(json_path);
    Ok(written)
}

/// The points as JSON, each marked with whether it is on the size frontier.
pub fn points_json(input: &PlotInput) -> String {
    #[derive(Serialize)]
    struct Out<'a> {
        title: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        inputs: Option<&'a crate::explore::results::Inputs>,
        dense: &'a Option<PlotPoint>,
        current: &'a Option<PlotPoint>,
        pins: &'a [PlotPoint],
        points: Vec<Marked<'a>>,
    }
    #[derive(Serialize)]
    struct Marked<'a> {
        #[serde(flatten)]
        point: &'a PlotPoint,
        pareto_size: bool,
        pareto_latency: bool,
    }
    let on = |axis: Axis| {
        let coords: Vec<(f64, f64)> = input
            .points
            .iter()
            .map(|p| (axis.x_of(p).unwrap_or(f64::NAN), p.accuracy))
            .collect();
        let mut flags = vec![false; coords.len()];
        for i in pareto::frontier(&coords) {
            flags[i] = true;
        }
        flags
    };
    let (fs, fl) = (on(Axis::Size), on(Axis::Latency));
    let out = Out {
        title: &input.title,
        inputs: input.inputs.as_deref(),
        dense: &input.dense,
        current: &input.current,
        pins: &input.pins,
        points: input
            .points
            .iter()
            .enumerate()
            .map(|(i, point)| Marked {
                point,
                pareto_size: fs[i],
                pareto_latency: fl[i],
            })
            .collect(),
    };
    serde_json::to_string_pretty(&out).unwrap_or_default()
}

/// How one chart item is drawn in the legend strip.
enum Key {
    Dot(RGBColor),
    Line(RGBColor),
    Triangle(RGBColor),
    /// A line ending in a dot: a fine-tuned point joined to its untuned twin.
    Tuned(RGBColor),
}

/// A fine-tuned point and, when it is measured, its untuned twin.
type TunedMark = (Option<(f64, f64)>, (f64, f64));

/// A named point: (legend name, colour, marker size, point, text beside the point).
type Mark = (String, RGBColor, i32, (f64, f64), Option<String>);

/// The series of one chart in data units, ready for any x coordinate.
struct Series {
    points: Vec<(f64, f64)>,
    /// The Pareto points, by increasing x, with their labels.
    frontier: Vec<(f64, f64, Option<String>)>,
    budget: Option<f64>,
    marks: Vec<Mark>,
    /// Fine-tuned points, each with its untuned twin when that is measured.
    tuned: Vec<TunedMark>,
    /// The whole-model curves: colour and points in the order the line joins them.
    curves: Vec<(RGBColor, Vec<(f64, f64)>)>,
    y_range: std::ops::Range<f64>,
}

/// The face every plot's text is drawn in (DejaVu Sans, whose licence is beside it in
/// `assets/fonts/`), compiled in: slides look the same on every machine, fonts installed or not.
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Makes `FONT` the `sans-serif` that every plot names (bold falls back to it).
fn embed_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // `FONT` is a valid TrueType file (a test draws with it); were it not, every text draw
        // would fail with plotters' own error, which the callers report.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

const GREY: RGBColor = RGBColor(150, 150, 150);
const BLUE: RGBColor = RGBColor(31, 119, 180);
const RED: RGBColor = RGBColor(214, 39, 40);
const PIN_GREEN: RGBColor = RGBColor(44, 160, 44);
const TUNED_TEAL: RGBColor = RGBColor(23, 160, 180);
const CURVE_ORANGE: RGBColor = RGBColor(230, 97, 1);
const CURVE_PURPLE: RGBColor = RGBColor(117, 82, 179);

/// The colour a whole-model curve is drawn in on every slide.
fn curve_colour(family: CurveFamily) -> RGBColor {
    match family {
        CurveFamily::GlobalL1 => CURVE_ORANGE,
        CurveFamily::UniformBits => CURVE_PURPLE,
    }
}

/// The slides' size: a full-HD projector frame, drawn without editing.
pub const SLIDE: (u32, u32) = (1920, 1080);
/// Text sizes at that size, in plotters' units (drawn at 0.8 of them in pixels): tick labels
/// and the legend 25 px, the title 38 px.
const TITLE_PX: u32 = 48;
const LABEL_PX: u32 = 32;
const DESC_PX: u32 = 34;
const LEGEND_PX: u32 = 32;
/// Width of the legend strip right of the plot.
const LEGEND_W: u32 = 400;
/// Frontier points get a label when there are at most this many (more would be a blur).
const MAX_FRONTIER_LABELS: usize = 8;

/// Units a log axis is ticked in: bytes in binary units, times in decimal ones.
pub const BYTE_UNITS: [(f64, &str); 4] = [
    (1.0, "B"),
    (1024.0, "KiB"),
    (1024.0 * 1024.0, "MiB"),
    (1024.0 * 1024.0 * 1024.0, "GiB"),
];
pub const TIME_UNITS: [(f64, &str); 4] = [(0.001, "ns"), (1.0, "µs"), (1000.0, "ms"), (1e6, "s")];

/// Log-axis ticks within `[lo, hi]` at 1, 2 and 5 × 1, 10, 100 of each unit (`10 KiB`,
/// `20 KiB`, `50 KiB`, `100 KiB` …), labelled in that unit; only the 1s when that gives too
/// many.
pub fn ticks_125(lo: f64, hi: f64, units: &[(f64, &str)]) -> Vec<(f64, String)> {
    if !(lo > 0.0 && hi >= lo && hi.is_finite()) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, (unit, name)) in units.iter().enumerate() {
        let next = units.get(i + 1).map_or(f64::INFINITY, |u| u.0);
        for k in [1.0, 10.0, 100.0] {
            for m in [1.0, 2.0, 5.0] {
                let v = unit * m * k;
                if v < next && v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9) {
                    out.push((v, format!("{} {name}", m * k)));
                }
            }
        }
    }
    if out.len() > 12 {
        out.retain(|(_, l)| l.starts_with('1'));
    }
    out
}

/// Draws one chart on any plotters backend: all points, the Pareto frontier as a staircase
/// (no line suggesting configurations between its points), the dense baseline, the pinned
/// and current configurations with their names, and the budget, with the legend in a strip of
/// its own so it never hides a point. An axis spanning more than 10× is logarithmic, ticked
/// at 1-2-5 steps; the accuracy range follows the explorer's zoom when it is zoomed.
pub fn draw_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    input: &PlotInput,
    axis: Axis,
) -> Result<(), DrawError<DB::ErrorType>> {
    embed_font();
    root.fill(&WHITE)?;
    // The explorer's zoom: the x range it shows (sizes or latencies of the points in its
    // accuracy band) and that band. Points outside them are left out, not drawn on the border.
    let x_zoom = match axis {
        Axis::Size => input.size_range,
        Axis::Latency => input.latency_range,
    }
    .filter(|[a, b]| b > a && *a >= 0.0 && b.is_finite());
    let y_zoom = input.accuracy_range.filter(|[a, b]| b > a);
    let visible = |(x, y): (f64, f64)| {
        x_zoom.is_none_or(|[a, b]| x >= a && x <= b) && y_zoom.is_none_or(|[a, b]| y >= a && y <= b)
    };
    let xy = |p: &PlotPoint| Some((axis.x_of(p)?, p.accuracy * 100.0)).filter(|&at| visible(at));
    let labelled: Vec<((f64, f64), Option<String>)> = input
        .points
        .iter()
        .filter_map(|p| Some((xy(p)?, p.label.clone())))
        .collect();
    let pts: Vec<(f64, f64)> = labelled.iter().map(|l| l.0).collect();
    if pts.is_empty() {
        return Err(DrawError::NoPoints);
    }
    let budget = match axis {
        Axis::Size => input.budget_bytes,
        Axis::Latency => input.budget_latency_us,
    }
    .filter(|b| *b > 0.0)
    .filter(|b| x_zoom.is_none_or(|[lo, hi]| *b >= lo && *b <= hi));
    let (xlo, xhi) = match x_zoom {
        Some([a, b]) => (a, b),
        None => pts
            .iter()
            .map(|p| p.0)
            .chain(budget)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                (lo.min(x), hi.max(x))
            }),
    };
    let curves: Vec<(RGBColor, Vec<(f64, f64)>)> = input
        .curves
        .iter()
        .map(|c| {
            let line = c
                .points
                .iter()
                .filter_map(|p| {
                    let x = match axis {
                        Axis::Size => Some(p.size_bytes),
                        Axis::Latency => p.latency_us,
                    }?;
                    Some((x, p.accuracy * 100.0)).filter(|&at| x > 0.0 && visible(at))
                })
                .collect();
            (curve_colour(c.family), line)
        })
        .collect();
    let (ylo, yhi) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    let ypad = ((yhi - ylo) * 0.06).max(0.2);
    let y_range = match y_zoom {
        Some([a, b]) => a..b,
        None => (ylo - ypad).max(0.0)..(yhi + ypad).min(100.5),
    };
    // A frontier point on a whole-model curve is named by the curve's legend entry: its own
    // label would crowd the line's run of neighbours.
    let on_curve = |at: (f64, f64)| curves.iter().any(|(_, line)| line.contains(&at));
    let mut frontier: Vec<(f64, f64, Option<String>)> = pareto::frontier(&pts)
        .into_iter()
        .map(|i| {
            let label = labelled[i].1.clone().filter(|_| !on_curve(pts[i]));
            (pts[i].0, pts[i].1, label)
        })
        .collect();
    frontier.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut marks = Vec::new();
    for (p, name, color, size) in [
        (&input.dense, "dense baseline", RGBColor(255, 127, 14), 14),
        (&input.current, "current", RGBColor(200, 30, 160), 16),
    ] {
        if let Some(at) = p.as_ref().and_then(xy) {
            marks.push((name.to_string(), color, size, at, None));
        }
    }
    for p in &input.pins {
        if let Some(at) = xy(p) {
            let name = p.label.clone().unwrap_or_else(|| "pin".into());
            marks.push((format!("pinned {name}"), PIN_GREEN, 14, at, Some(name)));
        }
    }
    let tuned = input
        .points
        .iter()
        .filter(|p| p.tuned.is_some())
        .filter_map(|p| Some((p.untuned.as_deref().and_then(xy), xy(p)?)))
        .collect();
    let series = Series {
        points: pts,
        frontier,
        budget,
        marks,
        tuned,
        curves,
        y_range,
    };

    let (w, _) = root.dim_in_pixel();
    let (plot, legend) = root.split_horizontally(w.saturating_sub(LEGEND_W));
    let what = match axis {
        Axis::Size => "size",
        Axis::Latency => "latency",
    };
    let mut builder = ChartBuilder::on(&plot);
    builder
        .caption(
            format!("Accuracy vs {what} — {}", input.title),
            ("sans-serif", TITLE_PX),
        )
        .margin(30)
        .x_label_area_size(110)
        .y_label_area_size(120);
    let log = xlo > 0.0 && xhi / xlo > 10.0;
    let label_style = ("sans-serif", LABEL_PX);
    if log {
        // log10 of the value on a linear axis, with our own 1-2-5 ticks below it.
        let (l0, l1) = match x_zoom {
            Some(_) => (xlo.log10(), xhi.log10()),
            None => (xlo.log10() - 0.08, xhi.log10() + 0.08),
        };
        let mut chart = builder.build_cartesian_2d(l0..l1, series.y_range.clone())?;
        let x_desc = match axis {
            Axis::Size => "compressed size (log scale)",
            Axis::Latency => "single-sample latency, median (log scale)",
        };
        chart
            .configure_mesh()
            .x_labels(0)
            .x_desc(x_desc)
            .y_desc("top-1 accuracy (%)")
            .y_label_formatter(&|v| format!("{v:.1}"))
            .label_style(label_style)
            .axis_desc_style(("sans-serif", DESC_PX))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        let y0 = series.y_range.start;
        let y1 = series.y_range.end;
        let units = match axis {
            Axis::Size => &BYTE_UNITS,
            Axis::Latency => &TIME_UNITS,
        };
        for (t, text) in ticks_125(10f64.powf(l0), 10f64.powf(l1), units) {
            let x = t.log10();
            chart.draw_series(LineSeries::new(
                [(x, y0), (x, y1)],
                RGBColor(225, 225, 225).stroke_width(1),
            ))?;
            let (px, py) = chart.backend_coord(&(x, y0));
            root.draw(&Text::new(
                text,
                (px, py + 10),
                TextStyle::from(label_style.into_font()).pos(Pos::new(HPos::Center, VPos::Top)),
            ))?;
        }
        draw_series(&mut chart, &series, &|x: f64| x.log10())?;
    } else {
        // Plain numbers in one unit give round ticks (200, 400 KiB) instead of odd bytes.
        let (scale, unit) = match axis {
            Axis::Size if xhi >= 10.0 * 1024.0 * 1024.0 => (1024.0 * 1024.0, "MiB"),
            Axis::Size if xhi >= 10.0 * 1024.0 => (1024.0, "KiB"),
            Axis::Size => (1.0, "bytes"),
            Axis::Latency if xhi >= 10_000.0 => (1000.0, "ms"),
            Axis::Latency => (1.0, "µs"),
        };
        let pad = match x_zoom {
            Some(_) => 0.0,
            None => ((xhi - xlo) * 0.06).max(xhi * 0.02),
        };
        let range = ((xlo - pad).max(0.0) / scale)..((xhi + pad) / scale);
        let mut chart = builder.build_cartesian_2d(range, series.y_range.clone())?;
        let x_desc = match axis {
            Axis::Size => format!("compressed size ({unit})"),
            Axis::Latency => format!("single-sample latency, median ({unit})"),
        };
        chart
            .configure_mesh()
            .x_desc(&x_desc)
            .y_desc("top-1 accuracy (%)")
            .x_label_formatter(&|v| format!("{v}"))
            .y_label_formatter(&|v| format!("{v:.1}"))
            .label_style(label_style)
            .axis_desc_style(("sans-serif", DESC_PX))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        draw_series(&mut chart, &series, &|x: f64| x / scale)?;
    }

    let mut keys = vec![
        ("configurations".to_string(), Key::Dot(GREY)),
        ("Pareto frontier".to_string(), Key::Line(BLUE)),
    ];
    if let Some(b) = budget {
        let text = match axis {
            Axis::Size => units::bytes(b),
            Axis::Latency => units::micros(b),
        };
        keys.push((format!("budget {text}"), Key::Line(RED)));
    }
    if !series.tuned.is_empty() {
        keys.push(("fine-tuned ← untuned".to_string(), Key::Tuned(TUNED_TEAL)));
    }
    for c in &input.curves {
        if series
            .curves
            .iter()
            .any(|(colour, line)| *colour == curve_colour(c.family) && !line.is_empty())
        {
            keys.push((
                c.family.name().to_string(),
                Key::Tuned(curve_colour(c.family)),
            ));
        }
    }
    for (name, color, _, _, _) in &series.marks {
        keys.push((name.clone(), Key::Triangle(*color)));
    }
    for (i, (name, key)) in keys.iter().enumerate() {
        let y = 140 + 48 * i as i32;
        match key {
            Key::Dot(c) => legend.draw(&Circle::new((24, y), 8, c.filled())),
            Key::Line(c) => {
                legend.draw(&PathElement::new(vec![(8, y), (40, y)], c.stroke_width(4)))
            }
            Key::Triangle(c) => legend.draw(&TriangleMarker::new((24, y), 13, c.filled())),
            Key::Tuned(c) => legend
                .draw(&PathElement::new(vec![(8, y), (40, y)], c.stroke_width(4)))
                .and_then(|()| legend.draw(&Circle::new((40, y), 9, c.filled()))),
        }?;
        legend.draw(&Text::new(
            name.clone(),
            (54, y),
            TextStyle::from(("sans-serif", LEGEND_PX).into_font())
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    Ok(())
}

/// The whole-model curves against their parameters, one panel per family: accuracy against
/// overall sparsity (%) for global L1 pruning, against bits per weight (8 down to 2, so
/// compression grows to the right in both) for uniform quantization, the dense accuracy as a
/// dashed line across both.
pub fn draw_compression<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    input: &PlotInput,
) -> Result<(), DrawError<DB::ErrorType>> {
    embed_font();
    root.fill(&WHITE)?;
    let curves: Vec<&crate::explore::plot::PlotCurve> = input
        .curves
        .iter()
        .filter(|c| !c.points.is_empty())
        .collect();
    if curves.is_empty() {
        return Err(DrawError::NoPoints);
    }
    let dense = input.dense.as_ref().map(|d| d.accuracy * 100.0);
    let (ylo, yhi) = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.accuracy * 100.0))
        .chain(dense)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
            (lo.min(y), hi.max(y))
        });
    let ypad = ((yhi - ylo) * 0.06).max(0.2);
    let y_range = (ylo - ypad).max(0.0)..(yhi + ypad).min(100.5);
    let titled = root.margin(16, 0, 0, 0).titled(
        &format!("Accuracy vs compression — {}", input.title),
        ("sans-serif", TITLE_PX),
    )?;
    let panels = titled.split_evenly((1, 2));
    for (family, panel) in CurveFamily::ALL.into_iter().zip(panels.iter()) {
        let colour = curve_colour(family);
        let points: Vec<(f64, f64)> = curves
            .iter()
            .filter(|c| c.family == family)
            .flat_map(|c| c.points.iter())
            .map(|p| (p.value, p.accuracy * 100.0))
            .collect();
        // Bits run from 8 down to 2: drawn at −bits, labelled as bits.
        let bits = family == CurveFamily::UniformBits;
        let x_range = if bits { -8.5..-1.5 } else { 0.0..100.0 };
        let tx = |v: f64| if bits { -v } else { v };
        let label = |v: &f64| format!("{:.0}", tx(*v));
        let mut chart = ChartBuilder::on(panel)
            .caption(family.name(), ("sans-serif", DESC_PX))
            .margin(30)
            .x_label_area_size(110)
            .y_label_area_size(120)
            .build_cartesian_2d(x_range.clone(), y_range.clone())?;
        chart
            .configure_mesh()
            .x_desc(family.parameter())
            .y_desc("top-1 accuracy (%)")
            .x_labels(8)
            .x_label_formatter(&label)
            .y_label_formatter(&|v| format!("{v:.1}"))
            .label_style(("sans-serif", LABEL_PX))
            .axis_desc_style(("sans-serif", DESC_PX))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        if let Some(d) = dense {
            chart.draw_series(DashedLineSeries::new(
                [(x_range.start, d), (x_range.end, d)],
                12,
                8,
                RGBColor(255, 127, 14).stroke_width(3),
            ))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("dense {d:.2}%"),
                (x_range.start + (x_range.end - x_range.start) * 0.02, d),
                TextStyle::from(("sans-serif", LABEL_PX).into_font())
                    .color(&RGBColor(200, 90, 0))
                    .pos(Pos::new(HPos::Left, VPos::Bottom)),
            )))?;
        }
        if points.is_empty() {
            chart.draw_series(std::iter::once(Text::new(
                "not measured (W in the explorer, or squeeze report --curves)".to_string(),
                (x_range.start, (y_range.start + y_range.end) / 2.0),
                TextStyle::from(("sans-serif", LABEL_PX).into_font()).color(&GREY),
            )))?;
            continue;
        }
        chart.draw_series(LineSeries::new(
            points.iter().map(|&(x, y)| (tx(x), y)),
            colour.stroke_width(4),
        ))?;
        chart.draw_series(
            points
                .iter()
                .map(|&(x, y)| Circle::new((tx(x), y), 9, colour.filled())),
        )?;
    }
    Ok(())
}

/// Draws the series on a chart whose x coordinate is `tx(data)`.
fn draw_series<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    s: &Series,
    tx: &dyn Fn(f64) -> f64,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart.draw_series(
        s.points
            .iter()
            .map(|&(x, y)| Circle::new((tx(x), y), 6, GREY.filled())),
    )?;
    // The staircase: each frontier accuracy holds until the next, larger point improves it.
    let mut steps = Vec::new();
    for (i, &(x, y, _)) in s.frontier.iter().enumerate() {
        if i > 0 {
            steps.push((tx(x), s.frontier[i - 1].1));
        }
        steps.push((tx(x), y));
    }
    chart.draw_series(LineSeries::new(steps, BLUE.stroke_width(3)))?;
    chart.draw_series(
        s.frontier
            .iter()
            .map(|&(x, y, _)| Circle::new((tx(x), y), 8, BLUE.filled())),
    )?;
    let label_font = TextStyle::from(("sans-serif", LABEL_PX).into_font())
        .pos(Pos::new(HPos::Left, VPos::Bottom));
    if s.frontier.len() <= MAX_FRONTIER_LABELS {
        for (x, y, label) in &s.frontier {
            if let Some(l) = label {
                let l: String = l.chars().take(28).collect();
                chart.draw_series(std::iter::once(Text::new(
                    l,
                    (tx(*x), *y),
                    label_font.clone(),
                )))?;
            }
        }
    }
    // The whole-model curves over the scatter: a line through each family's points in the
    // order of its parameter.
    for (colour, line) in &s.curves {
        chart.draw_series(LineSeries::new(
            line.iter().map(|&(x, y)| (tx(x), y)),
            colour.stroke_width(4),
        ))?;
        chart.draw_series(
            line.iter()
                .map(|&(x, y)| Circle::new((tx(x), y), 7, colour.filled())),
        )?;
    }
    // Fine-tuned points over the frontier, each joined to its untuned twin.
    for (twin, at) in &s.tuned {
        if let Some(twin) = twin {
            chart.draw_series(LineSeries::new(
                [(tx(twin.0), twin.1), (tx(at.0), at.1)],
                TUNED_TEAL.stroke_width(3),
            ))?;
        }
        chart.draw_series(std::iter::once(Circle::new(
            (tx(at.0), at.1),
            10,
            TUNED_TEAL.filled(),
        )))?;
    }
    if let Some(b) = s.budget {
        chart.draw_series(LineSeries::new(
            [(tx(b), s.y_range.start), (tx(b), s.y_range.end)],
            RED.stroke_width(3),
        ))?;
    }
    for (_, color, size, (x, y), text) in &s.marks {
        chart.draw_series(std::iter::once(TriangleMarker::new(
            (tx(*x), *y),
            *size,
            color.filled(),
        )))?;
        if let Some(t) = text {
            chart.draw_series(std::iter::once(Text::new(
                t.clone(),
                (tx(*x), *y),
                TextStyle::from(("sans-serif", LABEL_PX).into_font().style(FontStyle::Bold))
                    .color(color)
                    .pos(Pos::new(HPos::Right, VPos::Bottom)),
            )))?;
        }
    }
    Ok(())
}

/// The comparison of pinned configurations as a Markdown table: one row per configuration,
/// one column per figure and per layer's stored format.
pub fn comparison_markdown(rows: &[ComparisonRow], layers: &[String]) -> String {
    let mut head = vec![
        "configuration",
        "what",
        "top-1",
        "Δ vs dense",
        "size",
        "ratio",
        "latency",
        "speed-up",
    ]
    .into_iter()
    .map(str::to_string)
    .collect::<Vec<_>>();
    head.extend(layers.iter().cloned());
    let mut s = format!("| {} |\n", head.join(" | "));
    s += &format!("|{}\n", "---|".repeat(head.len()));
    for r in rows {
        let cells = comparison_cells(r, layers.len(), true);
        s += &format!("| {} |\n", cells.join(" | ").replace('\n', " "));
    }
    s
}

/// The same comparison as CSV (plain numbers: accuracy in %, bytes, µs).
pub fn comparison_csv(rows: &[ComparisonRow], layers: &[String]) -> String {
    let quote = |c: &str| {
        if c.contains([',', '"', '\n']) {
            format!("\"{}\"", c.replace('"', "\"\""))
        } else {
            c.to_string()
        }
    };
    let mut head: Vec<String> = [
        "configuration",
        "what",
        "top1_percent",
        "delta_points",
        "size_bytes",
        "ratio",
        "latency_us",
        "speedup",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    head.extend(layers.iter().map(|l| format!("{l}_format")));
    let mut s = head.iter().map(|c| quote(c)).collect::<Vec<_>>().join(",") + "\n";
    for r in rows {
        let cells = comparison_cells(r, layers.len(), false);
        s += &(cells.iter().map(|c| quote(c)).collect::<Vec<_>>().join(",") + "\n");
    }
    s
}

/// One row's cells, for people (`human`: units and signs) or for machines.
fn comparison_cells(r: &ComparisonRow, layers: usize, human: bool) -> Vec<String> {
    let opt = |v: Option<String>| v.unwrap_or_default();
    let mut c = vec![r.name.clone(), r.summary.clone()];
    if human {
        c.push(opt(r.accuracy.map(units::percent)).to_string());
        c.push(opt(r.delta_points.map(|d| units::points_delta(d / 100.0))));
        c.push(opt(r.size_bytes.map(|b| units::bytes(b as f64))));
        c.push(opt(r.ratio.map(|x| format!("{x:.2}×"))));
        c.push(opt(r.latency_us.map(units::micros)));
        c.push(opt(r.speedup.map(|x| format!("{x:.2}×"))));
    } else {
        c.push(opt(r.accuracy.map(|a| format!("{:.4}", a * 100.0))));
        c.push(opt(r.delta_points.map(|d| format!("{d:.4}"))));
        c.push(opt(r.size_bytes.map(|b| b.to_string())));
        c.push(opt(r.ratio.map(|x| format!("{x:.4}"))));
        c.push(opt(r.latency_us.map(|x| format!("{x:.3}"))));
        c.push(opt(r.speedup.map(|x| format!("{x:.4}"))));
    }
    if let Some(e) = &r.error {
        c[2] = format!("failed: {e}");
    }
    for i in 0..layers {
        c.push(r.formats.get(i).cloned().unwrap_or_default());
    }
    c
}

/// Writes the comparison as `pins.md` and `pins.csv` in `dir` (numbered `pins-2.md`, … when
/// those exist: a comparison never replaces another).
pub fn write_comparison(
    rows: &[ComparisonRow],
    layers: &[String],
    dir: &Path,
) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let pair = |n: usize| {
        let suffix = if n == 1 {
            String::new()
        } else {
            format!("-{n}")
        };
        [
            dir.join(format!("pins{suffix}.md")),
            dir.join(format!("pins{suffix}.csv")),
        ]
    };
    let [md, csv] = (1..)
        .map(pair)
        .find(|p| p.iter().all(|p| !p.exists()))
        .unwrap_or_else(|| pair(1));
    files::write_atomic(&md, comparison_markdown(rows, layers).as_bytes())?;
    files::write_atomic(&csv, comparison_csv(rows, layers).as_bytes())?;
    Ok(vec![md, csv])
}

/// Refuses a plot path whose extension says neither PNG nor SVG, before any work.
pub fn check_plot_path(path: &Path) -> Result<(), ReportError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("png") || e.eq_ignore_ascii_case("svg") => Ok(()),
        _ => Err(ReportError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other("a plot is written as .png or .svg"),
        }),
    }
}

/// Colours of the layers' curves (matplotlib's first ten).
const CURVE_COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Draws the sensitivity curves — accuracy vs sparsity and accuracy vs bits, one curve per
/// layer, the dense accuracy as a line — into `path` (.png or .svg), written to a temporary
/// name and renamed.
pub fn write_sensitivity_plot(
    table: &crate::explore::sensitivity::SensitivityTable,
    grid: &crate::explore::sensitivity::SensitivityGrid,
    title: &str,
    path: &Path,
) -> Result<PathBuf, ReportError> {
    check_plot_path(path)?;
    let draw_err = |msg: String| ReportError::Draw {
        path: path.to_path_buf(),
        msg,
    };
    let size = (1600, 700);
    let svg = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    if svg {
        let mut text = String::new();
        {
            let root = SVGBackend::with_string(&mut text, size).into_drawing_area();
            draw_sensitivity(&root, table, grid, title)
                .and_then(|()| root.present())
                .map_err(|e| draw_err(e.to_string()))?;
        }
        files::write_atomic(path, text.as_bytes())?;
    } else {
        files::write_atomic_with(path, |tmp| {
            let root = BitMapBackend::new(tmp, size).into_drawing_area();
            draw_sensitivity(&root, table, grid, title).and_then(|()| root.present())
        })?;
    }
    Ok(path.to_path_buf())
}

fn draw_sensitivity<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    table: &crate::explore::sensitivity::SensitivityTable,
    grid: &crate::explore::sensitivity::SensitivityGrid,
    title: &str,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    embed_font();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("Sensitivity: each layer alone — {title}"),
        ("sans-serif", 26),
    )?;
    let (left, right) = root.split_horizontally(root.dim_in_pixel().0 / 2);
    let dense = table.dense_accuracy.map(|d| d * 100.0);
    let all: Vec<f64> = table
        .layers
        .iter()
        .flat_map(|l| l.prune.iter().chain(&l.bits))
        .filter_map(|c| c.accuracy)
        .map(|a| a * 100.0)
        .chain(dense)
        .collect();
    let lo = all.iter().copied().fold(100.0f64, f64::min);
    let hi = all.iter().copied().fold(0.0f64, f64::max);
    let y = (lo - 2.0).max(0.0)..(hi + 1.0).min(100.5);
    for (area, prune) in [(&left, true), (&right, false)] {
        let (x0, x1, what) = if prune {
            (0.0, 100.0, format!("sparsity (%), {}", table.method))
        } else {
            let b = grid.bits.iter().copied().min().unwrap_or(1).min(8);
            (
                f64::from(b) - 0.5,
                8.5,
                "bits per weight (symmetric, per channel)".to_string(),
            )
        };
        if (prune && grid.sparsities.is_empty()) || (!prune && grid.bits.is_empty()) {
            continue;
        }
        let mut chart = ChartBuilder::on(area)
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y.clone())?;
        chart
            .configure_mesh()
            .x_desc(what)
            .y_desc("top-1 accuracy (%)")
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        if let Some(d) = dense {
            chart
                .draw_series(LineSeries::new([(x0, d), (x1, d)], BLACK.stroke_width(1)))?
                .label("dense")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        }
        for (i, l) in table.layers.iter().enumerate() {
            let color = CURVE_COLORS[i % CURVE_COLORS.len()];
            let cells = if prune { &l.prune } else { &l.bits };
            let mut pts: Vec<(f64, f64)> = cells
                .iter()
                .filter_map(|c| {
                    let x = if prune { c.value * 100.0 } else { c.value };
                    Some((x, c.accuracy? * 100.0))
                })
                .collect();
            if prune && let Some(d) = dense {
                pts.insert(0, (0.0, d));
            }
            if pts.is_empty() {
                continue;
            }
            let name = if l.coupled {
                format!("{} (coupled)", l.name)
            } else {
                l.name.clone()
            };
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> PlotInput {
        let p = |size: f64, lat: f64, acc: f64| PlotPoint {
            size_bytes: size,
            latency_us: Some(lat),
            accuracy: acc,
            label: None,
            tuned: None,
            untuned: None,
            origin: None,
        };
        let points = vec![
            p(1_066_440.0, 40.0, 0.981),
            p(266_610.0, 25.0, 0.980),
            p(133_000.0, 18.0, 0.978),
            p(60_000.0, 12.0, 0.97),
            p(30_000.0, 9.0, 0.93),
            p(200_000.0, 30.0, 0.96),
        ];
        PlotInput {
            title: "test".into(),
            inputs: None,
            dense: Some(points[0].clone()),
            current: Some(points[3].clone()),
            pins: Vec::new(),
            accuracy_range: None,
            budget_bytes: Some(100_000.0),
            budget_latency_us: None,
            size_range: None,
            latency_range: None,
            curves: Vec::new(),
            points,
        }
    }

    #[test]
    fn writes_png_svg_and_json() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_plots(&input(), dir.path(), &[]).unwrap();
        assert_eq!(files.len(), 5, "{files:?}");
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() > 100, "{}", f.display());
        }
        let svg = std::fs::read_to_string(dir.path().join("accuracy-vs-size.svg")).unwrap();
        assert!(svg.contains("Pareto frontier"));
        assert!(
            svg.contains("budget 97.7 KiB"),
            "the budget is in the legend"
        );
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("points.json")).unwrap())
                .unwrap();
        let flags: Vec<bool> = json["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pareto_size"].as_bool().unwrap())
            .collect();
        assert_eq!(flags, vec![true, true, true, true, true, false]);
        // No temporary files left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains("tmp")), "{names:?}");
        // Plotting again numbers the new files rather than replacing these.
        let before = std::fs::read(dir.path().join("accuracy-vs-size.png")).unwrap();
        let again = write_plots(&input(), dir.path(), &[]).unwrap();
        assert!(
            again
                .iter()
                .all(|p| p.file_name().unwrap().to_string_lossy().contains("-2.")),
            "{again:?}"
        );
        assert_eq!(
            std::fs::read(dir.path().join("accuracy-vs-size.png")).unwrap(),
            before
        );
    }

    /// The title is drawn with the compiled-in face: dark pixels where it goes, whatever fonts
    /// the machine has.
    #[test]
    fn slide_text_is_drawn_with_the_bundled_face() {
        let (w, h) = SLIDE;
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, SLIDE).into_drawing_area();
            draw_chart(&root, &input(), Axis::Size).unwrap();
            root.present().unwrap();
        }
        let dark_in_title = rgb[..(w * 70 * 3) as usize]
            .chunks(3)
            .filter(|p| p.iter().all(|c| *c < 100))
            .count();
        assert!(dark_in_title > 1000, "{dark_in_title} dark title pixels");
    }

    /// A fine-tuned point is drawn in its own colour, joined by a line to its untuned twin,
    /// and named in the legend; its JSON says how it learnt.
    #[test]
    fn fine_tuned_points_are_marked_and_joined_to_their_twins() {
        let teal = "#17A0B4";
        let plain = input();
        let mut tuned = input();
        let twin = tuned.points[4].clone();
        tuned.points.push(PlotPoint {
            accuracy: 0.975,
            label: Some("fine-tuned".into()),
            tuned: Some("distilled T=4 α=0.9".into()),
            untuned: Some(Box::new(twin)),
            ..tuned.points[4].clone()
        });
        let dir = tempfile::tempdir().unwrap();
        write_plots(&plain, dir.path(), &[]).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("accuracy-vs-size.svg")).unwrap();
        assert!(!svg.contains(teal) && !svg.contains("fine-tuned"));
        let dir = tempfile::tempdir().unwrap();
        write_plots(&tuned, dir.path(), &[]).unwrap();
        for chart in ["accuracy-vs-size.svg", "accuracy-vs-latency.svg"] {
            let svg = std::fs::read_to_string(dir.path().join(chart)).unwrap();
            assert!(svg.contains("fine-tuned ← untuned"), "{chart}: no legend");
            // The twin line (a polyline of two points), the point and the legend's sample.
            let lines = svg
                .lines()
                .filter(|l| l.contains("<polyline") && l.contains(teal))
                .count();
            assert!(lines >= 2, "{chart}: {lines} teal lines");
            assert!(
                svg.lines()
                    .any(|l| l.contains("<circle") && l.contains(teal)),
                "{chart}: no teal point"
            );
        }
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("points.json")).unwrap())
                .unwrap();
        let last = &json["points"][6];
        assert_eq!(last["tuned"], "distilled T=4 α=0.9");
        assert_eq!(last["untuned"]["accuracy"], 0.93);
    }

    #[test]
    fn wide_size_ranges_use_a_log_axis() {
        let mut input = input();
        input.points.push(PlotPoint {
            size_bytes: 9_000.0,
            latency_us: Some(5.0),
            accuracy: 0.6,
            label: None,
            tuned: None,
            untuned: None,
            origin: None,
        });
        let dir = tempfile::tempdir().unwrap();
        write_plots(&input, dir.path(), &[]).unwrap();
        if let Ok(out) = std::env::var("SQUEEZE_PLOT_OUT") {
            write_plots(&input, Path::new(&out), &[]).unwrap();
        }
        let svg = std::fs::read_to_string(dir.path().join("accuracy-vs-size.svg")).unwrap();
        assert!(svg.contains("log scale"));
        // Ticks at 1-2-5 steps, never at odd values such as 22.6 or 45.3 KiB.
        for tick in [
            "10 KiB", "20 KiB", "50 KiB", "100 KiB", "200 KiB", "500 KiB", "1 MiB",
        ] {
            assert!(svg.contains(&format!(">\n{tick}\n<")), "no {tick} tick");
        }
        assert!(svg.contains("width=\"1920\"") && svg.contains("height=\"1080\""));
        // Every text at least 24 px.
        for size in svg.split("font-size=\"").skip(1) {
            let px: f64 = size[..size.find('"').unwrap()].parse().unwrap();
            assert!(px >= 24.0, "text of {px} px");
        }
    }

    fn with_curves() -> PlotInput {
        use crate::explore::plot::{CurvePoint, PlotCurve};
        let mut input = input();
        let c = |value: f64, accuracy: f64, size_bytes: f64| CurvePoint {
            value,
            accuracy,
            size_bytes,
            latency_us: Some(size_bytes / 20_000.0),
        };
        input.curves = vec![
            PlotCurve {
                family: CurveFamily::GlobalL1,
                points: vec![
                    c(50.0, 0.980, 600_000.0),
                    c(90.0, 0.975, 150_000.0),
                    c(95.0, 0.95, 90_000.0),
                ],
            },
            PlotCurve {
                family: CurveFamily::UniformBits,
                points: vec![
                    c(8.0, 0.981, 267_000.0),
                    c(4.0, 0.978, 134_000.0),
                    c(2.0, 0.90, 67_000.0),
                ],
            },
        ];
        input
    }

    /// The curves are lines on both charts, named in the legend, and get a slide of their own
    /// against sparsity and bits.
    #[test]
    fn whole_model_curves_are_drawn_as_lines_and_on_their_own_slide() {
        let dir = tempfile::tempdir().unwrap();
        let plain = write_plots(&input(), dir.path(), &[]).unwrap();
        assert_eq!(plain.len(), 5);
        let svg = std::fs::read_to_string(dir.path().join("accuracy-vs-size.svg")).unwrap();
        assert!(!svg.contains("global L1") && !svg.contains("#E66101"));
        let dir = tempfile::tempdir().unwrap();
        let files = write_plots(&with_curves(), dir.path(), &[]).unwrap();
        assert_eq!(files.len(), 7, "{files:?}");
        for chart in ["accuracy-vs-size.svg", "accuracy-vs-latency.svg"] {
            let svg = std::fs::read_to_string(dir.path().join(chart)).unwrap();
            assert!(
                svg.contains("global L1") && svg.contains("uniform bits"),
                "{chart}"
            );
            for colour in ["#E66101", "#7552B3"] {
                let lines = svg
                    .lines()
                    .filter(|l| l.contains("<polyline") && l.contains(colour))
                    .count();
                // The curve and the legend's sample.
                assert!(lines >= 2, "{chart}: {lines} lines in {colour}");
            }
        }
        let svg = std::fs::read_to_string(dir.path().join("accuracy-vs-compression.svg")).unwrap();
        assert!(svg.contains("Accuracy vs compression"));
        assert!(svg.contains("overall sparsity (%)") && svg.contains("bits per weight"));
        assert!(svg.contains("dense 98.10%"));
        // The bits axis runs from 8 down to 2.
        let eight = svg.find(">\n8\n<").expect("an 8-bit tick");
        let two = svg.find(">\n2\n<").expect("a 2-bit tick");
        assert!(eight < two, "bits descend left to right");
        for size in svg.split("font-size=\"").skip(1) {
            let px: f64 = size[..size.find('"').unwrap()].parse().unwrap();
            assert!(px >= 24.0, "text of {px} px");
        }
        if let Ok(out) = std::env::var("SQUEEZE_PLOT_OUT") {
            write_plots(&with_curves(), Path::new(&out), &[]).unwrap();
        }
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("points.json")).unwrap())
                .unwrap_or_default();
        assert!(json.is_object());
    }

    /// Zoomed, the slides show the explorer's x range: points outside it are left out and the
    /// axis spans the range.
    #[test]
    fn slides_follow_the_x_zoom() {
        let grey = "#969696";
        let count = |input: &PlotInput| {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, SLIDE).into_drawing_area();
                draw_chart(&root, input, Axis::Size).unwrap();
                root.present().unwrap();
            }
            let n = svg
                .lines()
                .filter(|l| l.contains("<circle") && l.contains(grey))
                .count();
            (n, svg)
        };
        let (all, svg) = count(&input());
        // Six points and the legend's sample.
        assert_eq!(all, 7);
        assert!(svg.contains("log scale"));
        let mut zoomed = input();
        zoomed.size_range = Some([50_000.0, 300_000.0]);
        let (n, svg) = count(&zoomed);
        assert_eq!(n, 5, "four points in the range and the legend's sample");
        assert!(!svg.contains("log scale"), "a 6× range is linear");
        assert!(svg.contains("compressed size (KiB)"));
    }

    #[test]
    fn ticks_fall_on_1_2_5_steps() {
        let labels = |lo, hi, u: &[(f64, &str)]| -> Vec<String> {
            ticks_125(lo, hi, u).into_iter().map(|t| t.1).collect()
        };
        assert_eq!(
            labels(8_000.0, 300_000.0, &BYTE_UNITS),
            ["10 KiB", "20 KiB", "50 KiB", "100 KiB", "200 KiB"]
        );
        assert_eq!(
            labels(3.0, 60.0, &TIME_UNITS),
            ["5 µs", "10 µs", "20 µs", "50 µs"]
        );
        assert_eq!(
            labels(100.0, 3e6, &BYTE_UNITS),
            ["100 B", "1 KiB", "10 KiB", "100 KiB", "1 MiB"],
            "the 1s alone"
        );
        assert!(ticks_125(0.0, 10.0, &BYTE_UNITS).is_empty());
    }

    #[test]
    fn empty_input_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_plots(&PlotInput::default(), dir.path(), &[]).unwrap_err();
        assert!(err.to_string().contains("nothing to plot"));
    }
}
