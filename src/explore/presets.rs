//! Ready-made configurations for workshops: the steps from dense to a Deep-Compression-like
//! recipe that a presenter walks through.

use crate::compress::Bits;
use crate::compress::recipe::{GranularityKind, PruneMethod, Scheme};

use super::config::Config;
use super::info::ModelInfo;

pub struct Preset {
    pub name: &'static str,
    pub config: Config,
}

/// The presets, in the order `next preset` steps through them.
pub fn presets(info: &ModelInfo) -> Vec<Preset> {
    let n = info.layers.len();
    let dense = Config::dense(n);

    let mut int8 = Config::dense(n);
    for l in &mut int8.layers {
        l.bits = Bits::Int(8);
        l.scheme = Scheme::Symmetric;
        l.granularity = GranularityKind::Channel;
    }

    let mut global = Config::dense(n);
    global.global = Some(500);

    // Han et al. (2016) pruned LeNet-300-100 to 8 %, 9 % and 26 % of its weights and shared
    // 6-bit values; conv layers keep more and take 8 bits. The same shape for any model: the
    // last layer (the classifier) is pruned least.
    let mut deep = Config::dense(n);
    for (i, (l, info)) in deep.layers.iter_mut().zip(&info.layers).enumerate() {
        let conv = info.op == "conv2d";
        l.prune = PruneMethod::L1;
        l.sparsity = match (conv, i + 1 == n, i) {
            (_, true, _) => 740,
            (true, false, 0) => 340,
            (true, false, _) => 880,
            (false, false, 0) => 920,
            (false, false, _) => 910,
        };
        l.bits = Bits::Int(if conv { 8 } else { 6 });
        l.scheme = Scheme::Kmeans;
    }

    vec![
        Preset {
            name: "dense",
            config: dense,
        },
        Preset {
            name: "int8 everywhere",
            config: int8,
        },
        Preset {
            name: "50% global pruning",
            config: global,
        },
        Preset {
            name: "Deep-Compression-like",
            config: deep,
        },
    ]
}
