//! Configurations side by side: the dense baseline, the pinned configurations (A–D) and the one
//! being edited, each with its accuracy, size, latency and per-layer stored formats, and the
//! changes against dense. The explorer draws these rows; the report module writes them as
//! Markdown or CSV.

use super::config::{Config, pct};
use super::info::ModelInfo;
use super::session::{PIN_NAMES, Point, Session};

/// One configuration of the comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct ComparisonRow {
    /// `dense`, `A` … `D`, or `current`.
    pub name: String,
    /// What the configuration is, in a few words (`fc1 l1 90% u4/channel · a8`), after how its
    /// model learnt when it was fine-tuned (`distilled T=4 α=0.9 · `).
    pub summary: String,
    /// Top-1 accuracy in [0, 1], when measured.
    pub accuracy: Option<f64>,
    /// Accuracy change against dense, in points.
    pub delta_points: Option<f64>,
    pub size_bytes: Option<u64>,
    /// Dense size ÷ this size.
    pub ratio: Option<f64>,
    pub latency_us: Option<f64>,
    /// Dense latency ÷ this latency.
    pub speedup: Option<f64>,
    /// Each compressible layer's stored format, in model order (`dense+f32`, `csr8+u4/channel`).
    pub formats: Vec<String>,
    /// Why it could not be measured, when it could not.
    pub error: Option<String>,
}

/// The rows: dense, every pinned configuration, and the current one unless it is one of them.
pub fn rows(session: &Session) -> Vec<ComparisonRow> {
    let dense = session.dense();
    let mut out = Vec::new();
    let mut row = |name: String, config: &Config, point: Option<&Point>| {
        out.push(row_of(&session.info, name, config, point, dense));
    };
    let dense_config = Config::dense(session.info.layers.len());
    row("dense".into(), &dense_config, dense);
    let mut current_shown = session.current_key == session.dense_key;
    for (slot, pin) in session.pins.iter().enumerate() {
        let Some(pin) = pin else { continue };
        let key = session.pin_key(pin);
        current_shown |= key == session.current_key;
        row(PIN_NAMES[slot].to_string(), &pin.config, session.point(key));
    }
    if !current_shown {
        row("current".into(), &session.config, session.current());
    }
    out
}

fn row_of(
    info: &ModelInfo,
    name: String,
    config: &Config,
    point: Option<&Point>,
    dense: Option<&Point>,
) -> ComparisonRow {
    let accuracy = point.and_then(Point::accuracy).map(|a| a.value);
    let dense_acc = dense.and_then(Point::accuracy).map(|a| a.value);
    let size = point.and_then(Point::size_bytes);
    let dense_size = dense.and_then(Point::size_bytes);
    let latency = point.and_then(Point::latency_us);
    let dense_latency = dense.and_then(Point::latency_us);
    let ratio = |d: Option<f64>, x: Option<f64>| match (d, x) {
        (Some(d), Some(x)) if x > 0.0 => Some(d / x),
        _ => None,
    };
    ComparisonRow {
        name,
        summary: point_summary(config, point, info),
        accuracy,
        delta_points: accuracy.zip(dense_acc).map(|(a, d)| (a - d) * 100.0),
        size_bytes: size,
        ratio: ratio(dense_size.map(|s| s as f64), size.map(|s| s as f64)),
        latency_us: latency,
        speedup: ratio(dense_latency, latency),
        formats: point
            .map(|p| p.layers().iter().map(|l| l.format.clone()).collect())
            .unwrap_or_default(),
        error: point
            .filter(|p| p.accuracy().is_none())
            .and_then(|p| p.error.clone()),
    }
}

/// A point in a few words: how its model learnt when it was fine-tuned, first (what sets it
/// apart from its untuned twin, and what a narrow column keeps), then its configuration's
/// summary (`distilled T=4 α=0.9 · fc1 l1 90%`).
pub fn point_summary(config: &Config, point: Option<&Point>, info: &ModelInfo) -> String {
    let what = summary(config, info);
    match point.and_then(|p| p.provenance.describe()) {
        Some(how) => format!("{how} · {what}"),
        None => what,
    }
}

/// A configuration in a few words: `fc1 l1 90% u4/channel · fc2 u8/channel · a8`; `all:` when
/// every layer has the same setting; `dense` when nothing is compressed.
pub fn summary(config: &Config, info: &ModelInfo) -> String {
    let mut parts = Vec::new();
    if let Some(g) = config.global.filter(|g| *g > 0) {
        parts.push(format!("global {}", pct(g)));
    }
    let describe = |s: &super::config::LayerSetting| {
        let mut words = Vec::new();
        if config.global.is_none() && s.prune != crate::compress::recipe::PruneMethod::None {
            words.push(s.prune_label());
        }
        if s.bits != crate::compress::Bits::F32 {
            words.push(s.quant_label());
        }
        words.join(" ")
    };
    let first = config.layers.first();
    let uniform = config.layers.len() > 1 && config.layers.iter().all(|l| Some(l) == first);
    match first {
        Some(s) if uniform => {
            let d = describe(s);
            if !d.is_empty() {
                parts.push(format!("all {d}"));
            }
        }
        _ => {
            for (s, l) in config.layers.iter().zip(&info.layers) {
                let d = describe(s);
                if !d.is_empty() {
                    parts.push(format!("{} {d}", l.name));
                }
            }
        }
    }
    if let Some(b) = config.activation_bits {
        parts.push(format!("a{b}"));
    }
    if parts.is_empty() {
        "dense".into()
    } else {
        parts.join(" · ")
    }
}
