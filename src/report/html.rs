//! The workshop handout: one self-contained HTML file — the model and data with their hashes,
//! the dense baseline, the pinned configurations side by side, both charts as inline SVG, the
//! sensitivity table and every pinned recipe in full. No script, no font, no image is fetched:
//! it opens the same in a browser with no network.

use plotters::prelude::*;

use super::{Axis, SLIDE, comparison_cells, draw_chart, draw_compression};
use crate::explore::compare::ComparisonRow;
use crate::explore::plot::PlotInput;
use crate::explore::results::Inputs;
use crate::explore::sensitivity::{CellStatus, SensitivityTable};

/// Everything the handout shows.
#[derive(Debug, Clone)]
pub struct Handout {
    pub title: String,
    pub inputs: Inputs,
    pub comparison: Vec<ComparisonRow>,
    /// Layer names, in model order (the comparison's format columns).
    pub layers: Vec<String>,
    pub plot: PlotInput,
    pub sensitivity: Option<SensitivityTable>,
    /// (pin letter, recipe TOML) of every pinned configuration.
    pub recipes: Vec<(String, String)>,
}

/// Text as HTML: `&`, `<`, `>` and quotes escaped.
pub fn escape(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&#39;"),
            c => s.push(c),
        }
    }
    s
}

/// One chart as an SVG element (empty when it has no point).
fn chart_svg(plot: &PlotInput, axis: Axis) -> String {
    slide_svg(plot, Some(axis))
}

/// One slide as an SVG element: a chart, or (`None`) the whole-model curves against their
/// parameters; empty when it has no point.
fn slide_svg(plot: &PlotInput, axis: Option<Axis>) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SLIDE).into_drawing_area();
        let drawn = match axis {
            Some(axis) => draw_chart(&root, plot, axis),
            None => draw_compression(&root, plot),
        };
        if drawn.is_err() || root.present().is_err() {
            return String::new();
        }
    }
    // The XML declaration is not allowed inside HTML; the element scales to the page.
    let start = svg.find("<svg").unwrap_or(0);
    svg[start..].replacen(
        "<svg ",
        &format!(
            "<svg viewBox=\"0 0 {} {}\" style=\"width:100%;height:auto\" ",
            SLIDE.0, SLIDE.1
        ),
        1,
    )
}

const STYLE: &str = "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}\
td:first-child,th:first-child{text-align:left}pre{background:#f6f6f6;padding:1em;overflow:auto}\
.dim{color:#888}figure{margin:1em 0}";

/// The handout as one HTML document.
pub fn render(h: &Handout) -> String {
    let mut s = String::new();
    s += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
    s += &format!("<title>{}</title>\n", escape(&h.title));
    s += &format!("<style>{STYLE}</style>\n</head>\n<body>\n");
    s += &format!("<h1>{}</h1>\n", escape(&h.title));

    s += "<h2 id=\"inputs\">Model and data</h2>\n<table>\n";
    s += "<tr><th>file</th><th>SHA-256</th></tr>\n";
    for d in std::iter::once(&h.inputs.model).chain(&h.inputs.data) {
        s += &format!(
            "<tr><td>{}</td><td><code>{}</code></td></tr>\n",
            escape(&d.path),
            escape(&d.sha256)
        );
    }
    s += "</table>\n";
    s += &format!(
        "<p>{} samples evaluated; squeeze {}.</p>\n",
        h.inputs.samples,
        escape(&h.inputs.squeeze_version)
    );

    s += "<h2 id=\"configurations\">Dense baseline and pinned configurations</h2>\n<table>\n<tr>";
    for head in [
        "configuration",
        "what",
        "top-1",
        "Δ vs dense",
        "size",
        "ratio",
        "latency",
        "speed-up",
    ]
    .iter()
    .map(|x| x.to_string())
    .chain(h.layers.iter().cloned())
    {
        s += &format!("<th>{}</th>", escape(&head));
    }
    s += "</tr>\n";
    for r in &h.comparison {
        s += "<tr>";
        for c in comparison_cells(r, h.layers.len(), true) {
            s += &format!("<td>{}</td>", escape(&c));
        }
        s += "</tr>\n";
    }
    s += "</table>\n";

    s += "<h2 id=\"charts\">Accuracy against size and latency</h2>\n";
    for axis in [Axis::Size, Axis::Latency] {
        let svg = chart_svg(&h.plot, axis);
        if !svg.is_empty() {
            s += &format!("<figure>\n{svg}\n</figure>\n");
        }
    }

    if h.plot.curves.iter().any(|c| !c.points.is_empty()) {
        s += &curves_section(&h.plot);
    }

    s += "<h2 id=\"sensitivity\">Sensitivity: each layer alone</h2>\n";
    match &h.sensitivity {
        Some(t) if !t.layers.is_empty() => s += &sensitivity_table(t),
        _ => s += "<p class=\"dim\">not measured (the explorer's S, or squeeze sensitivity)</p>\n",
    }

    s += "<h2 id=\"recipes\">Pinned recipes</h2>\n";
    if h.recipes.is_empty() {
        s += "<p class=\"dim\">nothing pinned</p>\n";
    }
    for (name, toml) in &h.recipes {
        s += &format!("<h3>{}</h3>\n<pre>{}</pre>\n", escape(name), escape(toml));
    }
    s += "</body>\n</html>\n";
    s
}

/// Layers × grid, each cell the accuracy change against dense in points.
fn sensitivity_table(t: &SensitivityTable) -> String {
    let Some(first) = t.layers.first() else {
        return String::new();
    };
    let mut s = String::from("<table>\n<tr><th>layer</th>");
    for c in &first.prune {
        s += &format!("<th>{} {:.0}%</th>", escape(&t.method), c.value * 100.0);
    }
    for c in &first.bits {
        s += &format!("<th>{} bits</th>", c.value);
    }
    s += "</tr>\n";
    for l in &t.layers {
        let name = if l.coupled {
            format!("{} (coupled)", l.name)
        } else {
            l.name.clone()
        };
        s += &format!("<tr><td>{}</td>", escape(&name));
        for c in l.prune.iter().chain(&l.bits) {
            let text = match (c.status, c.delta_pt) {
                (CellStatus::Measured, Some(d)) => format!("{d:+.2}"),
                (CellStatus::Stopped, _) => "stopped".into(),
                (CellStatus::Failed, _) => "failed".into(),
                _ => "".into(),
            };
            s += &format!("<td>{}</td>", escape(&text));
        }
        s += "</tr>\n";
    }
    s += "</table>\n<p class=\"dim\">accuracy change against dense, in points</p>\n";
    s
}

/// The whole-model curves: the plot against their parameters, and per family a table of
/// parameter, accuracy, size and latency along the line.
fn curves_section(plot: &PlotInput) -> String {
    let mut s = String::from("<h2 id=\"curves\">Whole-model curves</h2>\n");
    s += "<p>Every layer compressed alike: global L1 pruning across overall sparsities (weights \
          kept f32), and every layer quantized to one width (symmetric, per channel, nothing \
          pruned).</p>\n";
    let svg = slide_svg(plot, None);
    if !svg.is_empty() {
        s += &format!("<figure>\n{svg}\n</figure>\n");
    }
    for c in plot.curves.iter().filter(|c| !c.points.is_empty()) {
        s += &format!(
            "<h3>{}</h3>\n<table class=\"curve\" id=\"curve-{}\">\n",
            escape(c.family.name()),
            match c.family {
                crate::explore::sweep::CurveFamily::GlobalL1 => "global-l1",
                crate::explore::sweep::CurveFamily::UniformBits => "uniform-bits",
            }
        );
        s += &format!(
            "<tr><th>{}</th><th>top-1</th><th>size</th><th>latency</th></tr>\n",
            escape(c.family.parameter())
        );
        for p in &c.points {
            s += &format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                escape(&c.family.parameter_text(p.value)),
                escape(&crate::units::percent(p.accuracy)),
                escape(&crate::units::bytes(p.size_bytes)),
                escape(
                    &p.latency_us
                        .map_or_else(|| "—".to_string(), crate::units::micros)
                ),
            );
        }
        s += "</table>\n";
    }
    s
}
