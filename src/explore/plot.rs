//! What the explorer's charts show, as data for the plots the report module draws.

use serde::Serialize;

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
    /// How a fine-tuned point's model learnt (`distilled T=4 α=0.9`); `None` for
    /// a model compressed as it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tuned: Option<String>,
    /// A fine-tuned point's untuned twin, when measured: the charts join the two.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub untuned: Option<Box<PlotPoint>>,
    /// What reproduces the point: its cache key (as in the journal), recipe and how it was made
    /// (compressed, or fine-tuned with its settings). Absent from points drawn from elsewhere.
    #[serde(flatten)]
    pub origin: Option<Box<PointOrigin>>,
}

/// How to make a plotted point again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointOrigin {
    pub key: String,
    /// The recipe, as `squeeze apply --recipe` takes it.
    pub recipe: String,
    pub provenance: crate::explore::session::Provenance,
}

/// Everything the two charts show.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct PlotInput {
    pub title: String,
    /// The model and evaluation set the points were measured on (paths and SHA-256).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Box<crate::explore::results::Inputs>>,
    pub points: Vec<PlotPoint>,
    pub dense: Option<PlotPoint>,
    pub current: Option<PlotPoint>,
    /// The pinned configurations, labelled with their letter.
    pub pins: Vec<PlotPoint>,
    /// The accuracy range to show, in % (the explorer's zoom); `None`: every point.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy_range: Option<[f64; 2]>,
    pub budget_bytes: Option<f64>,
    pub budget_latency_us: Option<f64>,
    /// The size and latency ranges to show (bytes, µs: the explorer's x zoom); `None`: every
    /// point.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_range: Option<[f64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_range: Option<[f64; 2]>,
    /// The whole-model curves measured (`W`), each drawn as a line.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub curves: Vec<PlotCurve>,
}

/// One whole-model curve: a family of configurations and its measured points, in the order
/// the line joins them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlotCurve {
    pub family: crate::explore::sweep::CurveFamily,
    pub points: Vec<CurvePoint>,
}

/// A measured point of a whole-model curve.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CurvePoint {
    /// The family's parameter: overall sparsity in %, or bits.
    pub value: f64,
    /// Top-1 accuracy in [0, 1].
    pub accuracy: f64,
    pub size_bytes: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<f64>,
}
