//! Reports: the explorer's charts as PNG and SVG (plotters), and the measured points as JSON.
//! The only module that draws with plotters.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;

use crate::explore::pareto;
use crate::explore::units;

/// One evaluated configuration on a plot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlotPoint {
    pub size_bytes: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<f64>,
    /// Top-1 accuracy in [0, 1].
    pub accuracy: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Everything the two charts show.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct PlotInput {
    pub title: String,
    pub points: Vec<PlotPoint>,
    pub dense: Option<PlotPoint>,
    pub current: Option<PlotPoint>,
    pub pinned: Option<PlotPoint>,
    pub budget_bytes: Option<f64>,
    pub budget_latency_us: Option<f64>,
}

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
/// `dir` (created if missing). Each file is written to a temporary name and renamed. A chart
/// with no points is skipped; it is an error only when both are empty.
pub fn write_plots(input: &PlotInput, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut written = Vec::new();
    for axis in [Axis::Size, Axis::Latency] {
        if !input.points.iter().any(|p| axis.x_of(p).is_some()) {
            continue;
        }
        let png = dir.join(format!("{}.png", axis.file_stem()));
        let tmp = dir.join(format!(".{}.{}.tmp.png", axis.file_stem(), std::process::id()));
        let drawn = {
            let root = BitMapBackend::new(&tmp, SIZE).into_drawing_area();
            draw_chart(&root, input, axis)
                .and_then(|()| root.present().map_err(|e| e.to_string()))
        };
        if let Err(msg) = drawn {
            let _ = std::fs::remove_file(&tmp);
            return Err(ReportError::Draw { path: png, msg });
        }
        std::fs::rename(&tmp, &png).map_err(io(&png))?;
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
        crate::model::write_atomic(&svg_path, svg.as_bytes()).map_err(io(&svg_path))?;
        written.push(svg_path);
    }
    if written.is_empty() {
        return Err(ReportError::Empty { what: "size" });
    }
    let json_path = dir.join("points.json");
    crate::model::write_atomic(&json_path, points_json(input).as_bytes()).map_err(io(&json_path))?;
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

/// Draws one chart on any plotters backend.
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
    let (xlo, xhi) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.0), hi.max(p.0)));
    let budget = match axis {
        Axis::Size => input.budget_bytes,
        Axis::Latency => input.budget_latency_us,
    }
    .filter(|b| *b > 0.0);
    let (xlo, xhi) = match budget {
        Some(b) => (xlo.min(b), xhi.max(b)),
        None => (xlo, xhi),
    };
    // Sizes span orders of magnitude once pruning and low bits come in: log scale then.
    let log = axis == Axis::Size && xhi / xlo > 20.0;
    let tx = |x: f64| if log { x.log10() } else { x };
    let (x0, x1) = (tx(xlo), tx(xhi));
    let xpad = if x1 > x0 { (x1 - x0) * 0.06 } else { x0.abs().max(1.0) * 0.1 };
    let (ylo, yhi) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    let ypad = ((yhi - ylo) * 0.06).max(0.2);
    let x_range = if log { (x0 - xpad)..(x1 + xpad) } else { (x0 - xpad).max(0.0)..(x1 + xpad) };
    let y_range = (ylo - ypad).max(0.0)..(yhi + ypad).min(100.5);
    let (y_bottom, y_top) = (y_range.start, y_range.end);

    let what = match axis {
        Axis::Size => "size",
        Axis::Latency => "latency",
    };
    let mut chart = ChartBuilder::on(root)
        .caption(format!("Accuracy vs {what} — {}", input.title), ("sans-serif", 28))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(75)
        .build_cartesian_2d(x_range, y_range)
        .map_err(err)?;
    let x_fmt = |v: &f64| match axis {
        Axis::Size => units::bytes(if log { 10f64.powf(*v) } else { *v }),
        Axis::Latency => units::micros(*v),
    };
    let x_desc = match (axis, log) {
        (Axis::Size, true) => "compressed size (log scale)",
        (Axis::Size, false) => "compressed size",
        (Axis::Latency, _) => "single-sample latency (median)",
    };
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("top-1 accuracy (%)")
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(err)?;

    let grey = RGBColor(150, 150, 150);
    chart
        .draw_series(pts.iter().map(|&(x, y)| Circle::new((tx(x), y), 4, grey.filled())))
        .map_err(err)?
        .label("configurations")
        .legend(move |(x, y)| Circle::new((x + 10, y), 4, grey.filled()));

    let mut frontier: Vec<(f64, f64)> = pareto::frontier(&pts).into_iter().map(|i| pts[i]).collect();
    frontier.sort_by(|a, b| a.0.total_cmp(&b.0));
    let blue = RGBColor(31, 119, 180);
    chart
        .draw_series(LineSeries::new(
            frontier.iter().map(|&(x, y)| (tx(x), y)),
            blue.stroke_width(2),
        ))
        .map_err(err)?
        .label("Pareto frontier")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2)));
    chart
        .draw_series(frontier.iter().map(|&(x, y)| Circle::new((tx(x), y), 5, blue.filled())))
        .map_err(err)?;

    if let Some(b) = budget {
        let red = RGBColor(214, 39, 40);
        chart
            .draw_series(LineSeries::new(
                [(tx(b), y_bottom), (tx(b), y_top)],
                red.stroke_width(2),
            ))
            .map_err(err)?
            .label(format!("budget {}", x_fmt(&tx(b))))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red.stroke_width(2)));
    }

    let mut mark = |p: &Option<PlotPoint>, name: &str, color: RGBColor, size: i32| -> Result<(), String> {
        let Some((x, y)) = p.as_ref().and_then(|p| Some((axis.x_of(p)?, p.accuracy * 100.0))) else {
            return Ok(());
        };
        chart
            .draw_series(std::iter::once(TriangleMarker::new((tx(x), y), size, color.filled())))
            .map_err(err)?
            .label(name.to_string())
            .legend(move |(lx, ly)| TriangleMarker::new((lx + 10, ly), size, color.filled()));
        Ok(())
    };
    mark(&input.dense, "dense baseline", RGBColor(255, 127, 14), 9)?;
    mark(&input.pinned, "A (pinned)", RGBColor(44, 160, 44), 9)?;
    mark(&input.current, "current", RGBColor(200, 30, 160), 11)?;

    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(err)?;
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
        let files = write_plots(&input(), dir.path()).unwrap();
        assert_eq!(files.len(), 5, "{files:?}");
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() > 100, "{}", f.display());
        }
        let svg = std::fs::read_to_string(dir.path().join("accuracy-vs-size.svg")).unwrap();
        assert!(svg.contains("Pareto frontier"));
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
    fn empty_input_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_plots(&PlotInput::default(), dir.path()).unwrap_err();
        assert!(err.to_string().contains("nothing to plot"));
    }
}
