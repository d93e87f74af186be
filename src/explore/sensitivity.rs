//! Sensitivity: each compressible layer alone, pruned across sparsities and quantized across
//! bit widths with every other layer dense — how much each layer can take.
//!
//! A probe is such a single-layer configuration; any configuration of that shape is recognised
//! as one (`probe_of`), whoever measured it, so the table fills from the cache. Probes of one
//! layer and one kind form a chain (ascending sparsity, descending bits) that stops once the
//! accuracy has collapsed: more pruning or fewer bits cannot bring it back, and the points
//! left out are reported as stopped, not as harmless.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use super::config::{Config, Permille, pct};
use super::eval::{Evaluator, Figures, Stage};
use super::info::ModelInfo;
use super::jobs::EvalRequest;
use crate::compress::Bits;
use crate::compress::recipe::{GranularityKind, PruneMethod, Scheme};

/// Sparsities a sensitivity sweep tries on each layer by default.
pub const DEFAULT_SPARSITIES: [Permille; 9] = [100, 300, 500, 600, 700, 800, 850, 900, 950];
/// Bit widths a sensitivity sweep tries on each layer by default (symmetric, per channel).
pub const DEFAULT_BITS: [u8; 5] = [8, 6, 4, 3, 2];

/// What a sensitivity sweep tries on each layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SensitivityGrid {
    /// Pruning method: l1, random or structured.
    pub method: PruneMethod,
    /// Sparsities in thousandths, ascending (written as fractions).
    #[serde(serialize_with = "as_fractions")]
    pub sparsities: Vec<Permille>,
    /// Bit widths, descending.
    pub bits: Vec<u8>,
}

fn as_fractions<S: serde::Serializer>(v: &[Permille], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|p| f64::from(*p) / 1000.0))
}

impl Default for SensitivityGrid {
    fn default() -> Self {
        SensitivityGrid {
            method: PruneMethod::L1,
            sparsities: DEFAULT_SPARSITIES.to_vec(),
            bits: DEFAULT_BITS.to_vec(),
        }
    }
}

/// A sensitivity grid no probe can be made of.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GridError {
    #[error("method {0:?}: sensitivity prunes by a sparsity; use l1, random or structured")]
    Method(PruneMethod),
    #[error("sparsity {}: each must be above 0 and at most 0.99", f64::from(*.0) / 1000.0)]
    Sparsity(Permille),
    #[error("bits {0}: each must be from 1 to 8")]
    Bits(u8),
}

impl SensitivityGrid {
    /// Sorts and deduplicates the grid and checks it holds what a probe can be.
    pub fn normalized(mut self) -> Result<Self, GridError> {
        if !matches!(
            self.method,
            PruneMethod::L1 | PruneMethod::Random | PruneMethod::Structured
        ) {
            return Err(GridError::Method(self.method));
        }
        self.sparsities.sort_unstable();
        self.sparsities.dedup();
        if let Some(s) = self.sparsities.iter().find(|s| **s == 0 || **s > 990) {
            return Err(GridError::Sparsity(*s));
        }
        self.bits.sort_unstable_by(|a, b| b.cmp(a));
        self.bits.dedup();
        if let Some(b) = self.bits.iter().find(|b| !(1..=8).contains(*b)) {
            return Err(GridError::Bits(*b));
        }
        Ok(self)
    }
}

/// One layer alone at one setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Index among the compressible layers.
    pub layer: usize,
    pub kind: ProbeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Prune(PruneMethod, Permille),
    /// Symmetric, per-channel integer weights.
    Bits(u8),
}

impl Probe {
    /// The configuration: every other layer dense.
    pub fn config(&self, layers: usize) -> Config {
        let mut config = Config::dense(layers);
        if let Some(l) = config.layers.get_mut(self.layer) {
            match self.kind {
                ProbeKind::Prune(method, s) => {
                    l.prune = method;
                    l.sparsity = s;
                }
                ProbeKind::Bits(b) => {
                    l.bits = Bits::Int(u32::from(b));
                    l.scheme = Scheme::Symmetric;
                    l.granularity = GranularityKind::Channel;
                }
            }
        }
        config
    }

    /// `fc1 alone: l1 90%`, `fc1 alone: int4`.
    pub fn label(&self, info: &ModelInfo) -> String {
        let name = info.layers.get(self.layer).map_or("?", |l| l.name.as_str());
        match self.kind {
            ProbeKind::Prune(method, s) => {
                let m = crate::explore::config::LayerSetting {
                    prune: method,
                    sparsity: s,
                    ..Default::default()
                };
                format!("{name} alone: {}", m.prune_label())
            }
            ProbeKind::Bits(b) => format!("{name} alone: int{b}"),
        }
    }
}

/// Every probe of `grid`, layer by layer.
pub fn probes(info: &ModelInfo, grid: &SensitivityGrid) -> Vec<Probe> {
    let mut out = Vec::new();
    for layer in 0..info.layers.len() {
        // The output layer's neurons are the classes: structured pruning leaves it whole.
        let skip_structured =
            grid.method == PruneMethod::Structured && layer + 1 == info.layers.len();
        if !skip_structured {
            for &s in &grid.sparsities {
                out.push(Probe {
                    layer,
                    kind: ProbeKind::Prune(grid.method, s),
                });
            }
        }
        for &b in &grid.bits {
            out.push(Probe {
                layer,
                kind: ProbeKind::Bits(b),
            });
        }
    }
    out
}

/// Probes grouped into chains: one layer and one kind each, in the order compression grows
/// (the order of `probes`).
pub fn chains(probes: &[Probe]) -> Vec<Vec<Probe>> {
    let mut out: Vec<Vec<Probe>> = Vec::new();
    for p in probes {
        let same = |q: &Probe| {
            q.layer == p.layer
                && matches!(
                    (q.kind, p.kind),
                    (ProbeKind::Prune(..), ProbeKind::Prune(..))
                        | (ProbeKind::Bits(_), ProbeKind::Bits(_))
                )
        };
        match out.last_mut() {
            Some(chain) if chain.last().is_some_and(same) => chain.push(*p),
            _ => out.push(vec![*p]),
        }
    }
    out
}

/// The probe a configuration stands for: exactly one layer compressed, by pruning to a
/// sparsity (f32 weights) or by symmetric per-channel integer weights (unpruned), with no
/// global pruning and float activations.
pub fn probe_of(config: &Config) -> Option<Probe> {
    if config.global.is_some_and(|g| g > 0) || config.activation_bits.is_some() {
        return None;
    }
    let mut changed = config
        .layers
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.is_dense());
    let (layer, l) = changed.next()?;
    if changed.next().is_some() {
        return None;
    }
    let kind = match (l.prune, l.bits) {
        (PruneMethod::L1 | PruneMethod::Random | PruneMethod::Structured, Bits::F32)
            if l.sparsity > 0 =>
        {
            ProbeKind::Prune(l.prune, l.sparsity)
        }
        (m, Bits::Int(b))
            if (m == PruneMethod::None
                || (matches!(
                    m,
                    PruneMethod::L1 | PruneMethod::Random | PruneMethod::Structured
                ) && l.sparsity == 0))
                && l.scheme == Scheme::Symmetric
                && l.granularity == GranularityKind::Channel =>
        {
            ProbeKind::Bits(u8::try_from(b).ok()?)
        }
        _ => return None,
    };
    Some(Probe { layer, kind })
}

/// Whether an accuracy has collapsed: it lost more than half of the way from the dense
/// model's accuracy down to chance (one class in `classes`).
pub fn collapsed(accuracy: f64, dense: f64, classes: usize) -> bool {
    let chance = 1.0 / classes.max(1) as f64;
    accuracy < chance + 0.5 * (dense - chance)
}

/// One chain of probes to measure in order.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeChain {
    pub layer: usize,
    pub points: Vec<EvalRequest>,
}

/// Sensitivity probes to measure on the whole evaluation set.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeJob {
    pub chains: Vec<ProbeChain>,
    /// The dense model, measured first when its accuracy is not known yet.
    pub dense: Option<EvalRequest>,
    pub dense_accuracy: Option<f64>,
    pub classes: usize,
}

impl ProbeJob {
    /// Points in the job (the dense one included).
    pub fn len(&self) -> usize {
        self.chains.iter().map(|c| c.points.len()).sum::<usize>()
            + usize::from(self.dense.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What measuring one probe gave.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeEvent {
    Measured {
        key: u64,
        figures: Figures,
    },
    Failed {
        key: u64,
        error: String,
    },
    /// Left out: an earlier point of its chain collapsed.
    Skipped {
        key: u64,
    },
}

/// Measures the job's dense model when it asks for it, reporting the figure or the failure;
/// returns the dense accuracy the chains are compared against (the job's own when the dense
/// model is not measured or fails), or `None` when cancelled.
pub fn measure_dense<E: Evaluator + ?Sized>(
    evaluator: &E,
    job: &ProbeJob,
    cancel: &AtomicBool,
    report: &(dyn Fn(ProbeEvent) + Sync),
) -> Option<Option<f64>> {
    let Some(d) = &job.dense else {
        return Some(job.dense_accuracy);
    };
    match evaluator.evaluate(&d.config, Stage::Full, cancel) {
        Ok(f) => {
            let accuracy = f.accuracy.map(|a| a.value);
            report(ProbeEvent::Measured {
                key: d.key,
                figures: f,
            });
            Some(accuracy)
        }
        Err(e) if e.is_cancelled() => None,
        Err(e) => {
            report(ProbeEvent::Failed {
                key: d.key,
                error: e.to_string(),
            });
            Some(job.dense_accuracy)
        }
    }
}

/// Measures a job one configuration at a time with `Evaluator::evaluate` (what evaluators
/// without a faster way do): the dense model first when needed, then each chain until it
/// collapses.
pub fn measure_each<E: Evaluator + ?Sized>(
    evaluator: &E,
    job: &ProbeJob,
    cancel: &AtomicBool,
    report: &(dyn Fn(ProbeEvent) + Sync),
) {
    let Some(dense) = measure_dense(evaluator, job, cancel, report) else {
        return;
    };
    for chain in &job.chains {
        run_chain(chain, dense, job.classes, cancel, report, &mut |p| {
            evaluator.evaluate(&p.config, Stage::Full, cancel)
        });
    }
}

/// Measures one chain with `measure`, stopping at a collapse (the rest reported skipped) or
/// when cancelled.
pub fn run_chain(
    chain: &ProbeChain,
    dense: Option<f64>,
    classes: usize,
    cancel: &AtomicBool,
    report: &(dyn Fn(ProbeEvent) + Sync),
    measure: &mut dyn FnMut(&EvalRequest) -> Result<Figures, super::eval::EvalError>,
) {
    let mut stopped = false;
    for p in &chain.points {
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        if stopped {
            report(ProbeEvent::Skipped { key: p.key });
            continue;
        }
        match measure(p) {
            Ok(f) => {
                let acc = f.accuracy.map(|a| a.value);
                stopped = matches!((acc, dense), (Some(a), Some(d)) if collapsed(a, d, classes));
                report(ProbeEvent::Measured {
                    key: p.key,
                    figures: f,
                });
            }
            Err(e) if e.is_cancelled() => return,
            Err(e) => report(ProbeEvent::Failed {
                key: p.key,
                error: e.to_string(),
            }),
        }
    }
}

/// One cell of a sensitivity table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    /// The sparsity (fraction) or the bit width.
    pub value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Accuracy change against the dense model, in percentage points.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_pt: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    pub status: CellStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CellStatus {
    Measured,
    /// Not measured: an earlier point of the curve had collapsed.
    Stopped,
    Failed,
    /// Not measured (the sweep was cancelled, or is still running).
    Missing,
}

/// One layer's row of a sensitivity table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerRow {
    pub name: String,
    /// Other layers whose outputs meet this one's in an `add` or `mul`: structured pruning
    /// removes their shared channels together (this row's structured probes prune them all);
    /// the other probes measure this layer alone, and compressing them together may cost more
    /// than the sum of their rows.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub coupled_with: Vec<String>,
    pub coupled: bool,
    pub prune: Vec<Cell>,
    pub bits: Vec<Cell>,
}

/// The sensitivity of every layer on one grid.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SensitivityTable {
    pub dense_accuracy: Option<f64>,
    pub method: String,
    pub layers: Vec<LayerRow>,
}

impl SensitivityTable {
    /// Whether some curve stopped early.
    pub fn stopped_early(&self) -> bool {
        self.layers.iter().any(|l| {
            l.prune
                .iter()
                .chain(&l.bits)
                .any(|c| c.status == CellStatus::Stopped)
        })
    }

    /// Whether every cell was measured or stopped (none failed, none missing).
    pub fn is_complete(&self) -> bool {
        self.layers.iter().all(|l| {
            l.prune
                .iter()
                .chain(&l.bits)
                .all(|c| matches!(c.status, CellStatus::Measured | CellStatus::Stopped))
        })
    }
}

/// Builds the table of `grid` from what `figures` knows (a configuration's full-set figures
/// and its failure, if any).
pub fn table(
    info: &ModelInfo,
    grid: &SensitivityGrid,
    dense_accuracy: Option<f64>,
    lookup: &dyn Fn(&Config) -> (Option<Figures>, bool),
) -> SensitivityTable {
    let classes = info.classes();
    let n = info.layers.len();
    let cell = |probe: Probe, value: f64, stopped: &mut bool| {
        let (figures, failed) = lookup(&probe.config(n));
        let accuracy = figures.as_ref().and_then(|f| f.accuracy).map(|a| a.value);
        let status = if accuracy.is_some() {
            CellStatus::Measured
        } else if failed {
            CellStatus::Failed
        } else if *stopped {
            CellStatus::Stopped
        } else {
            CellStatus::Missing
        };
        if let (Some(a), Some(d)) = (accuracy, dense_accuracy) {
            *stopped |= collapsed(a, d, classes);
        }
        Cell {
            value,
            accuracy,
            delta_pt: accuracy.zip(dense_accuracy).map(|(a, d)| (a - d) * 100.0),
            size_bytes: figures.and_then(|f| f.size_bytes),
            status,
        }
    };
    let layers = info
        .layers
        .iter()
        .enumerate()
        .map(|(layer, l)| {
            let last = layer + 1 == n;
            let mut stopped = false;
            let prune = if grid.method == PruneMethod::Structured && last {
                Vec::new()
            } else {
                grid.sparsities
                    .iter()
                    .map(|&s| {
                        cell(
                            Probe {
                                layer,
                                kind: ProbeKind::Prune(grid.method, s),
                            },
                            f64::from(s) / 1000.0,
                            &mut stopped,
                        )
                    })
                    .collect()
            };
            let mut stopped = false;
            let bits = grid
                .bits
                .iter()
                .map(|&b| {
                    cell(
                        Probe {
                            layer,
                            kind: ProbeKind::Bits(b),
                        },
                        f64::from(b),
                        &mut stopped,
                    )
                })
                .collect();
            LayerRow {
                name: l.name.clone(),
                coupled: l.coupled.is_some(),
                coupled_with: l.coupled.clone().unwrap_or_default(),
                prune,
                bits,
            }
        })
        .collect();
    SensitivityTable {
        dense_accuracy,
        method: format!("{:?}", grid.method).to_ascii_lowercase(),
        layers,
    }
}

/// The table as text: one row per layer, accuracy and Δ per grid value.
pub fn render_text(table: &SensitivityTable, grid: &SensitivityGrid) -> String {
    let mut s = String::new();
    let dense = table
        .dense_accuracy
        .map_or("not measured".to_string(), |d| format!("{:.2}%", d * 100.0));
    s += &format!("dense top-1 {dense}; each layer alone, every other layer dense\n\n");
    let cell = |c: &Cell| match (c.status, c.accuracy, c.delta_pt) {
        (CellStatus::Measured, Some(a), Some(d)) => format!("{:.2} ({:+.2})", a * 100.0, d),
        (CellStatus::Measured, Some(a), None) => format!("{:.2}", a * 100.0),
        (CellStatus::Stopped, ..) => "stopped".into(),
        (CellStatus::Failed, ..) => "failed".into(),
        _ => "—".into(),
    };
    let name_w = table
        .layers
        .iter()
        .map(|l| l.name.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let section = |title: String, heads: Vec<String>, rows: Vec<(String, Vec<String>)>| {
        let mut out = format!("{title}\n{:<name_w$}", "layer");
        for h in &heads {
            out += &format!(" {h:>15}");
        }
        out.push('\n');
        for (name, cells) in rows {
            out += &format!("{name:<name_w$}");
            for c in cells {
                out += &format!(" {c:>15}");
            }
            out.push('\n');
        }
        out
    };
    let flag = |l: &LayerRow| {
        if l.coupled {
            format!("{}*", l.name)
        } else {
            l.name.clone()
        }
    };
    if !grid.sparsities.is_empty() {
        s += &section(
            format!("top-1 % (Δ pt) when pruned ({})", table.method),
            grid.sparsities.iter().map(|p| pct(*p)).collect(),
            table
                .layers
                .iter()
                .filter(|l| !l.prune.is_empty())
                .map(|l| (flag(l), l.prune.iter().map(cell).collect()))
                .collect(),
        );
        s.push('\n');
    }
    if !grid.bits.is_empty() {
        s += &section(
            "top-1 % (Δ pt) when quantized (symmetric, per channel)".into(),
            grid.bits.iter().map(|b| format!("{b} bits")).collect(),
            table
                .layers
                .iter()
                .map(|l| (flag(l), l.bits.iter().map(cell).collect()))
                .collect(),
        );
        s.push('\n');
    }
    if table.stopped_early() {
        s += "stopped: the curve had collapsed (lost more than half of the way from dense to chance) at an earlier point, so the points after it were not measured\n";
    }
    for l in table.layers.iter().filter(|l| l.coupled) {
        let with = if l.coupled_with.is_empty() {
            "its block's input".to_string()
        } else {
            l.coupled_with.join(", ")
        };
        s += &format!(
            "{}*: coupled with {with} (their outputs meet in an add or mul): structured pruning removes their shared channels together, so its structured row prunes the whole group; every other probe compresses it alone, and compressing them together may cost more\n",
            l.name
        );
    }
    s
}

/// The table as CSV: one row per layer and grid value.
pub fn render_csv(table: &SensitivityTable) -> String {
    let mut s = String::from("layer,kind,value,accuracy,delta_pt,size_bytes,status,coupled\n");
    let f = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v}"));
    for l in &table.layers {
        for (kind, cells) in [("sparsity", &l.prune), ("bits", &l.bits)] {
            for c in cells {
                s += &format!(
                    "{},{kind},{},{},{},{},{},{}\n",
                    l.name,
                    c.value,
                    f(c.accuracy),
                    f(c.delta_pt),
                    c.size_bytes.map_or(String::new(), |b| b.to_string()),
                    serde_json::to_value(c.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    l.coupled
                );
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_recognised_and_chained() {
        let grid = SensitivityGrid::default();
        let info = crate::explore::info::tests::lenet300();
        let probes = probes(&info, &grid);
        assert_eq!(probes.len(), 3 * (9 + 5));
        for p in &probes {
            assert_eq!(probe_of(&p.config(3)), Some(*p));
        }
        let chains = chains(&probes);
        assert_eq!(chains.len(), 6);
        assert!(chains.iter().all(|c| c.len() == 9 || c.len() == 5));
        assert_eq!(probe_of(&Config::dense(3)), None);
        let mut two = probes[0].config(3);
        two.layers[1].bits = Bits::Int(8);
        assert_eq!(probe_of(&two), None);
    }

    #[test]
    fn collapse_is_half_way_to_chance() {
        assert!(!collapsed(0.60, 0.98, 10));
        assert!(collapsed(0.50, 0.98, 10));
    }

    #[test]
    fn grids_are_checked() {
        let g = SensitivityGrid {
            method: PruneMethod::Nm,
            ..Default::default()
        };
        let e = g.normalized().unwrap_err();
        assert_eq!(e, GridError::Method(PruneMethod::Nm));
        assert!(e.to_string().contains("l1, random or structured"), "{e}");
        let g = SensitivityGrid {
            sparsities: vec![900, 100, 900],
            bits: vec![2, 8],
            ..Default::default()
        };
        let g = g.normalized().unwrap();
        assert_eq!(g.sparsities, vec![100, 900]);
        assert_eq!(g.bits, vec![8, 2]);
    }
}
