//! Reports: the explorer's charts and the sensitivity curves as PNG and SVG (plotters), and the
//! measured points as JSON. The only module that draws with plotters.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde::Serialize;

use crate::explore::pareto;
pub use crate::explore::plot::{PlotInput, PlotPoint};
use crate::explore::units;
use crate::files;

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

const SIZE: (u32, u32) = (1200, 800);

/// Writes `accuracy-vs-size` and `accuracy-vs-latency` as PNG and SVG, and `points.json`, into
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
    let json_path = dir.join("points.json");
    let mut check = files::OutputCheck::new().inputs("input", inputs.iter().map(PathBuf::as_path));
    for axis in &axes {
        for ext in ["png", "svg"] {
            check = check.output("plot", &dir.join(format!("{}.{ext}", axis.file_stem())));
        }
    }
    check.output("plot", &json_path).check()?;
    let mut written = Vec::new();
    for axis in axes {
        let png = dir.join(format!("{}.png", axis.file_stem()));
        files::write_atomic_with(&png, |tmp| {
            let root = BitMapBackend::new(tmp, SIZE).into_drawing_area();
            draw_chart(&root, input, axis).and_then(|()| root.present().map_err(|e| e.to_string()))
        })?;
        written.push(png);

        let svg_path = dir.join(format!("{}.svg", axis.file_stem()));
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
            draw_chart(&root, input, axis)
                .and_then(|()| root.present().map_err(|e| e.to_string()))
                .map_err(|msg| ReportError::Draw {
                    path: svg_path.clone(),
                    msg,
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
        dense: &'a Option<PlotPoint>,
        current: &'a Option<PlotPoint>,
        pinned: &'a Option<PlotPoint>,
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
        dense: &input.dense,
        current: &input.current,
        pinned: &input.pinned,
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
}

/// The series of one chart in data units, ready for any x coordinate.
struct Series {
    points: Vec<(f64, f64)>,
    frontier: Vec<(f64, f64)>,
    budget: Option<f64>,
    marks: Vec<(String, RGBColor, i32, (f64, f64))>,
    y_range: std::ops::Range<f64>,
}

const GREY: RGBColor = RGBColor(150, 150, 150);
const BLUE: RGBColor = RGBColor(31, 119, 180);
const RED: RGBColor = RGBColor(214, 39, 40);
/// Width of the legend strip right of the plot.
const LEGEND_W: u32 = 230;

/// Draws one chart on any plotters backend: all points, the Pareto frontier, the dense
/// baseline, the pinned and current configurations, and the budget, with the legend in a
/// strip of its own so it never hides a point. Sizes spanning more than 20× use a log axis.
pub fn draw_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    input: &PlotInput,
    axis: Axis,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let pts: Vec<(f64, f64)> = input
        .points
        .iter()
        .filter_map(|p| Some((axis.x_of(p)?, p.accuracy * 100.0)))
        .collect();
    if pts.is_empty() {
        return Err("no points".into());
    }
    let budget = match axis {
        Axis::Size => input.budget_bytes,
        Axis::Latency => input.budget_latency_us,
    }
    .filter(|b| *b > 0.0);
    let (xlo, xhi) = pts
        .iter()
        .map(|p| p.0)
        .chain(budget)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
    let (ylo, yhi) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    let ypad = ((yhi - ylo) * 0.06).max(0.2);
    let mut frontier: Vec<(f64, f64)> =
        pareto::frontier(&pts).into_iter().map(|i| pts[i]).collect();
    frontier.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut marks = Vec::new();
    for (p, name, color, size) in [
        (&input.dense, "dense baseline", RGBColor(255, 127, 14), 9),
        (&input.pinned, "A (pinned)", RGBColor(44, 160, 44), 9),
        (&input.current, "current", RGBColor(200, 30, 160), 11),
    ] {
        if let Some(xy) = p
            .as_ref()
            .and_then(|p| Some((axis.x_of(p)?, p.accuracy * 100.0)))
        {
            marks.push((name.to_string(), color, size, xy));
        }
    }
    let series = Series {
        points: pts,
        frontier,
        budget,
        marks,
        y_range: (ylo - ypad).max(0.0)..(yhi + ypad).min(100.5),
    };

    let (w, _) = root.dim_in_pixel();
    let (plot, legend) = root.split_horizontally(w.saturating_sub(LEGEND_W));
    let what = match axis {
        Axis::Size => "size",
        Axis::Latency => "latency",
    };
    let caption = (
        format!("Accuracy vs {what} — {}", input.title),
        ("sans-serif", 26),
    );
    let mut builder = ChartBuilder::on(&plot);
    builder
        .caption(caption.0, caption.1)
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(75);
    let log = axis == Axis::Size && xhi / xlo > 20.0;
    let x_desc;
    if log {
        // log2 of bytes on a linear axis: ticks fall on powers of two (16 KiB, 32 KiB, ...).
        let (l0, l1) = (xlo.log2() - 0.3, xhi.log2() + 0.3);
        let mut chart = builder
            .build_cartesian_2d(l0..l1, series.y_range.clone())
            .map_err(err)?;
        x_desc = "compressed size (log scale)".to_string();
        chart
            .configure_mesh()
            .x_desc(&x_desc)
            .y_desc("top-1 accuracy (%)")
            .x_labels(12)
            .x_label_formatter(&|v| units::bytes(v.exp2()))
            .y_label_formatter(&|v| format!("{v:.1}"))
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(err)?;
        draw_series(&mut chart, &series, &|x: f64| x.log2()).map_err(err)?;
    } else {
        // Plain numbers in one unit give round ticks (200, 400 KiB) instead of odd bytes.
        let (scale, unit) = match axis {
            Axis::Size if xhi >= 10.0 * 1024.0 * 1024.0 => (1024.0 * 1024.0, "MiB"),
            Axis::Size if xhi >= 10.0 * 1024.0 => (1024.0, "KiB"),
            Axis::Size => (1.0, "bytes"),
            Axis::Latency if xhi >= 10_000.0 => (1000.0, "ms"),
            Axis::Latency => (1.0, "µs"),
        };
        let pad = ((xhi - xlo) * 0.06).max(xhi * 0.02);
        let range = ((xlo - pad).max(0.0) / scale)..((xhi + pad) / scale);
        let mut chart = builder
            .build_cartesian_2d(range, series.y_range.clone())
            .map_err(err)?;
        x_desc = match axis {
            Axis::Size => format!("compressed size ({unit})"),
            Axis::Latency => format!("single-sample latency, median ({unit})"),
        };
        chart
            .configure_mesh()
            .x_desc(&x_desc)
            .y_desc("top-1 accuracy (%)")
            .x_label_formatter(&|v| format!("{v}"))
            .y_label_formatter(&|v| format!("{v:.1}"))
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(err)?;
        draw_series(&mut chart, &series, &|x: f64| x / scale).map_err(err)?;
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
    for (name, color, _, _) in &series.marks {
        keys.push((name.clone(), Key::Triangle(*color)));
    }
    for (i, (name, key)) in keys.iter().enumerate() {
        let y = 90 + 30 * i as i32;
        match key {
            Key::Dot(c) => legend.draw(&Circle::new((20, y), 5, c.filled())),
            Key::Line(c) => {
                legend.draw(&PathElement::new(vec![(8, y), (32, y)], c.stroke_width(3)))
            }
            Key::Triangle(c) => legend.draw(&TriangleMarker::new((20, y), 9, c.filled())),
        }
        .map_err(err)?;
        legend
            .draw(&Text::new(name.clone(), (42, y - 9), ("sans-serif", 17)))
            .map_err(err)?;
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
            .map(|&(x, y)| Circle::new((tx(x), y), 4, GREY.filled())),
    )?;
    chart.draw_series(LineSeries::new(
        s.frontier.iter().map(|&(x, y)| (tx(x), y)),
        BLUE.stroke_width(2),
    ))?;
    chart.draw_series(
        s.frontier
            .iter()
            .map(|&(x, y)| Circle::new((tx(x), y), 5, BLUE.filled())),
    )?;
    if let Some(b) = s.budget {
        chart.draw_series(LineSeries::new(
            [(tx(b), s.y_range.start), (tx(b), s.y_range.end)],
            RED.stroke_width(2),
        ))?;
    }
    for (_, color, size, (x, y)) in &s.marks {
        chart.draw_series(std::iter::once(TriangleMarker::new(
            (tx(*x), *y),
            *size,
            color.filled(),
        )))?;
    }
    Ok(())
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
                .and_then(|()| root.present().map_err(|e| e.to_string()))
                .map_err(draw_err)?;
        }
        files::write_atomic(path, text.as_bytes())?;
    } else {
        files::write_atomic_with(path, |tmp| {
            let root = BitMapBackend::new(tmp, size).into_drawing_area();
            draw_sensitivity(&root, table, grid, title)
                .and_then(|()| root.present().map_err(|e| e.to_string()))
        })?;
    }
    Ok(path.to_path_buf())
}

fn draw_sensitivity<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    table: &crate::explore::sensitivity::SensitivityTable,
    grid: &crate::explore::sensitivity::SensitivityGrid,
    title: &str,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(
            &format!("Sensitivity: each layer alone — {title}"),
            ("sans-serif", 26),
        )
        .map_err(err)?;
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
            .build_cartesian_2d(x0..x1, y.clone())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(what)
            .y_desc("top-1 accuracy (%)")
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(err)?;
        if let Some(d) = dense {
            chart
                .draw_series(LineSeries::new([(x0, d), (x1, d)], BLACK.stroke_width(1)))
                .map_err(err)?
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
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()
            .map_err(err)?;
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
            dense: Some(points[0].clone()),
            current: Some(points[3].clone()),
            pinned: None,
            budget_bytes: Some(100_000.0),
            budget_latency_us: None,
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
    }

    #[test]
    fn wide_size_ranges_use_a_log_axis() {
        let mut input = input();
        input.points.push(PlotPoint {
            size_bytes: 9_000.0,
            latency_us: Some(5.0),
            accuracy: 0.6,
            label: None,
        });
        let dir = tempfile::tempdir().unwrap();
        write_plots(&input, dir.path(), &[]).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("accuracy-vs-size.svg")).unwrap();
        assert!(svg.contains("log scale"));
        // Ticks on powers of two.
        assert!(
            svg.contains("16.0 KiB") && svg.contains("64.0 KiB"),
            "no power-of-two ticks"
        );
        if let Ok(out) = std::env::var("SQUEEZE_PLOT_OUT") {
            write_plots(&input, Path::new(&out), &[]).unwrap();
        }
    }

    #[test]
    fn empty_input_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_plots(&PlotInput::default(), dir.path(), &[]).unwrap_err();
        assert!(err.to_string().contains("nothing to plot"));
    }
}
