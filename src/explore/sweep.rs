//! Sweeps: the sets of configurations evaluated in one go.
//!
//! - sensitivity: each layer alone, pruned (L1) across sparsities and quantized across bit
//!   widths, everything else dense: how much each layer can take;
//! - uniform: every layer at the same sparsity × bits, over a grid.

use crate::compress::Bits;
use crate::compress::recipe::{GranularityKind, PruneMethod, Scheme};

use super::config::{Config, Permille, pct};

/// Sparsities a sensitivity sweep tries on each layer.
pub const SENSITIVITY_SPARSITIES: [Permille; 7] = [300, 500, 700, 800, 900, 950, 980];
/// Bit widths a sensitivity sweep tries on each layer (symmetric, per channel).
pub const SENSITIVITY_BITS: [u8; 6] = [8, 6, 5, 4, 3, 2];
/// The uniform grid.
pub const UNIFORM_SPARSITIES: [Permille; 6] = [0, 500, 700, 800, 900, 950];
pub const UNIFORM_BITS: [Bits; 5] = [
    Bits::F32,
    Bits::Int(8),
    Bits::Int(6),
    Bits::Int(4),
    Bits::Int(2),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepKind {
    Sensitivity,
    Uniform,
}

impl SweepKind {
    pub fn label(self) -> &'static str {
        match self {
            SweepKind::Sensitivity => "sensitivity sweep",
            SweepKind::Uniform => "uniform sweep",
        }
    }
}

/// What a sensitivity point measures: one layer alone at one setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub layer: usize,
    pub kind: ProbeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Prune(Permille),
    Bits(u8),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SweepPoint {
    pub config: Config,
    pub label: String,
    pub probe: Option<Probe>,
}

/// Each of `names.len()` layers alone across `SENSITIVITY_SPARSITIES` and `SENSITIVITY_BITS`.
pub fn sensitivity(names: &[String]) -> Vec<SweepPoint> {
    let n = names.len();
    let mut out = Vec::new();
    for (layer, name) in names.iter().enumerate() {
        for s in SENSITIVITY_SPARSITIES {
            let mut config = Config::dense(n);
            config.layers[layer].prune = PruneMethod::L1;
            config.layers[layer].sparsity = s;
            out.push(SweepPoint {
                config,
                label: format!("{name} alone: l1 {}", pct(s)),
                probe: Some(Probe {
                    layer,
                    kind: ProbeKind::Prune(s),
                }),
            });
        }
        for b in SENSITIVITY_BITS {
            let mut config = Config::dense(n);
            config.layers[layer].bits = Bits::Int(u32::from(b));
            config.layers[layer].scheme = Scheme::Symmetric;
            config.layers[layer].granularity = GranularityKind::Channel;
            out.push(SweepPoint {
                config,
                label: format!("{name} alone: int{b}"),
                probe: Some(Probe {
                    layer,
                    kind: ProbeKind::Bits(b),
                }),
            });
        }
    }
    out
}

/// All `n` layers at each sparsity (L1) × bits (symmetric, per channel) of the grid.
pub fn uniform(n: usize) -> Vec<SweepPoint> {
    let mut out = Vec::new();
    for s in UNIFORM_SPARSITIES {
        for bits in UNIFORM_BITS {
            let mut config = Config::dense(n);
            for l in &mut config.layers {
                if s > 0 {
                    l.prune = PruneMethod::L1;
                    l.sparsity = s;
                }
                l.bits = bits;
            }
            let b = match bits {
                Bits::F32 => "f32".to_string(),
                other => format!("int{other}"),
            };
            out.push(SweepPoint {
                config,
                label: format!("all layers: l1 {} {b}", pct(s)),
                probe: None,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_cover_their_grids() {
        let names: Vec<String> = ["fc1", "fc2"].iter().map(|s| s.to_string()).collect();
        let s = sensitivity(&names);
        assert_eq!(
            s.len(),
            2 * (SENSITIVITY_SPARSITIES.len() + SENSITIVITY_BITS.len())
        );
        // Only the probed layer changes.
        for p in &s {
            let probe = p.probe.unwrap();
            assert!(p.config.layers[1 - probe.layer].is_dense(), "{}", p.label);
            assert!(!p.config.layers[probe.layer].is_dense(), "{}", p.label);
        }
        let u = uniform(2);
        assert_eq!(u.len(), UNIFORM_SPARSITIES.len() * UNIFORM_BITS.len());
        assert!(u[0].config.is_dense());
    }
}
