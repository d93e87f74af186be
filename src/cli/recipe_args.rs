//! The recipe a command works with: a file, or quick flags for the common case.

use std::path::PathBuf;

use anyhow::Context;

use crate::compress::recipe::{GranularityKind, PruneMethod, Scheme};
use crate::compress::{Bits, Rank, Recipe};

#[derive(Debug, Clone, Default, clap::Args)]
pub struct RecipeArgs {
    /// Compression recipe (TOML or JSON): per-layer pruning and quantization.
    #[arg(long, short = 'r', value_name = "FILE")]
    pub recipe: Option<PathBuf>,
    /// Quick recipe: fraction of weights to prune in every linear/conv layer (L1 magnitude).
    #[arg(long, value_name = "FRACTION", conflicts_with = "recipe")]
    pub sparsity: Option<f64>,
    /// Quick recipe: rank all layers' weights together (global magnitude pruning).
    #[arg(long, requires = "sparsity", conflicts_with = "recipe")]
    pub global: bool,
    /// Quick recipe: pruning method (l1, random, structured, nm, std).
    #[arg(long, value_parser = ["none", "l1", "random", "structured", "nm", "std"], conflicts_with_all = ["recipe", "global"])]
    pub prune: Option<String>,
    /// Quick recipe: weight width: 32, 16, bf16, or 1 to 8 bits.
    #[arg(long, value_name = "BITS", conflicts_with = "recipe")]
    pub bits: Option<String>,
    /// Quick recipe: quantization scheme.
    #[arg(long, value_parser = ["symmetric", "asymmetric", "kmeans"], conflicts_with = "recipe")]
    pub scheme: Option<String>,
    /// Quick recipe: one scale per tensor, per output channel, or per group of inputs.
    #[arg(long, value_parser = ["tensor", "channel", "group"], conflicts_with = "recipe")]
    pub granularity: Option<String>,
    /// Quick recipe: inputs per group for `--granularity group`.
    #[arg(long, value_name = "N", conflicts_with = "recipe")]
    pub group_size: Option<usize>,
    /// Quick recipe: what pruning ranks in a layer followed by a batchnorm: its own weights
    /// (PyTorch's torch.nn.utils.prune) or the weights with the batchnorm folded in.
    #[arg(long, value_parser = ["weights", "folded"], conflicts_with = "recipe")]
    pub rank: Option<String>,
}

impl RecipeArgs {
    /// The recipe the flags describe; `None` when they describe none (dense).
    pub fn recipe(&self) -> anyhow::Result<Option<Recipe>> {
        if let Some(path) = &self.recipe {
            return Ok(Some(Recipe::from_path(path)?));
        }
        let quick = self.sparsity.is_some()
            || self.bits.is_some()
            || self.prune.is_some()
            || self.scheme.is_some()
            || self.granularity.is_some()
            || self.group_size.is_some()
            || self.rank.is_some();
        if !quick {
            return Ok(None);
        }
        // As a recipe file's `sparsity`: NaN or a negative fraction is a mistake, not 0.
        if let Some(s) = self.sparsity
            && !(0.0..1.0).contains(&s)
        {
            anyhow::bail!("--sparsity {s}: expected a fraction in [0, 1)");
        }
        if self.group_size == Some(0) {
            anyhow::bail!("--group-size 0: expected at least 1 input per group");
        }
        let bits = match self.bits.as_deref() {
            None | Some("32") => Bits::F32,
            Some("16") => Bits::F16,
            Some("bf16") => Bits::Bf16,
            Some(b) => Bits::Int(b.parse().with_context(|| {
                format!("--bits {b}: expected 32, 16, bf16 or a whole number from 1 to 8")
            })?),
        };
        let mut r = Recipe::quick(self.sparsity.unwrap_or(0.0), bits, self.global);
        if let Some(p) = &self.prune {
            r.default.prune = Some(match p.as_str() {
                "none" => PruneMethod::None,
                "l1" => PruneMethod::L1,
                "random" => PruneMethod::Random,
                "structured" => PruneMethod::Structured,
                "nm" => PruneMethod::Nm,
                _ => PruneMethod::Std,
            });
        }
        if let Some(s) = &self.scheme {
            r.default.scheme = Some(match s.as_str() {
                "symmetric" => Scheme::Symmetric,
                "asymmetric" => Scheme::Asymmetric,
                _ => Scheme::Kmeans,
            });
        }
        if let Some(g) = &self.granularity {
            r.default.granularity = Some(match g.as_str() {
                "tensor" => GranularityKind::Tensor,
                "channel" => GranularityKind::Channel,
                _ => GranularityKind::Group,
            });
        }
        r.default.group_size = self.group_size;
        r.rank = self.rank.as_deref().map(|k| match k {
            "folded" => Rank::Folded,
            _ => Rank::Weights,
        });
        Ok(Some(r))
    }
}
