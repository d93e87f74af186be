//! Recipes: the per-layer compression plan a person reads and edits (TOML or JSON), and its
//! validation against a model into `ResolvedRecipe` (every linear/conv layer's effective
//! settings, `[default]` ← `[layer.NAME]`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{FloatStorage, Granularity};
use crate::model::Model;

/// A compression plan. `Recipe::default()` is dense: it changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// What magnitude pruning ranks in a layer that has a batchnorm folded into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<Rank>,
    /// Settings for every linear/conv layer unless a `[layer.NAME]` table overrides them.
    #[serde(default, skip_serializing_if = "LayerRecipe::is_empty")]
    pub default: LayerRecipe,
    /// One magnitude ranking across several layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalRecipe>,
    /// Static quantization of every linear/conv layer's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activations: Option<ActivationRecipe>,
    /// Per-layer overrides, keyed by layer name (`[layer.fc1]`, `[layer."features.0"]`).
    #[serde(default, rename = "layer", skip_serializing_if = "BTreeMap::is_empty")]
    pub layers: BTreeMap<String, LayerRecipe>,
    /// The file this recipe was read from, for messages.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// What pruning ranks in a linear/conv layer that has a batchnorm folded into it (elsewhere
/// both are the layer's weights).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rank {
    /// The layer's own weights, as `torch.nn.utils.prune` ranks a conv followed by a
    /// BatchNorm2d.
    #[default]
    Weights,
    /// The weights with the batchnorm's per-channel scale applied: what the layer computes
    /// with once folded.
    Folded,
}

/// One table of settings; every field is optional so a layer table only says what differs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerRecipe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<PruneMethod>,
    /// Fraction of weights (l1, random) or output neurons/filters (structured) removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<f64>,
    /// 32 (f32), 16 (f16), "bf16", or 8..1 (integer levels / codebook indices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bits: Option<Bits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<Scheme>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granularity: Option<GranularityKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_size: Option<usize>,
    /// N:M pruning: keep `n` of every `m` consecutive inputs (default 2:4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m: Option<usize>,
    /// Structured pruning: rank neurons/filters by this norm (default l1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm: Option<Norm>,
    /// std pruning: remove |w| < quality × std(w) (default 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<f64>,
    /// random pruning: the seed (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl LayerRecipe {
    pub fn is_empty(&self) -> bool {
        *self == LayerRecipe::default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalRecipe {
    pub sparsity: f64,
    /// Default: every linear/conv layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivationRecipe {
    #[serde(default = "default_act_bits")]
    pub bits: u8,
    #[serde(default = "default_calibration_samples")]
    pub calibration_samples: usize,
    #[serde(default)]
    pub observer: Observer,
    /// For `observer = "percentile"`: the percentile of the observed values taken as the
    /// range's top (and 100 − p as its bottom).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentile: Option<f64>,
}

impl Default for ActivationRecipe {
    fn default() -> Self {
        ActivationRecipe {
            bits: default_act_bits(),
            calibration_samples: default_calibration_samples(),
            observer: Observer::default(),
            percentile: None,
        }
    }
}

fn default_act_bits() -> u8 {
    8
}
fn default_calibration_samples() -> usize {
    512
}

/// The default percentile for `observer = "percentile"`.
pub const DEFAULT_PERCENTILE: f64 = 99.99;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Observer {
    #[default]
    Minmax,
    Percentile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PruneMethod {
    None,
    L1,
    Random,
    Structured,
    Nm,
    Std,
}

impl PruneMethod {
    fn as_str(self) -> &'static str {
        match self {
            PruneMethod::None => "none",
            PruneMethod::L1 => "l1",
            PruneMethod::Random => "random",
            PruneMethod::Structured => "structured",
            PruneMethod::Nm => "nm",
            PruneMethod::Std => "std",
        }
    }

    fn uses_sparsity(self) -> bool {
        matches!(
            self,
            PruneMethod::L1 | PruneMethod::Random | PruneMethod::Structured
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    Symmetric,
    Asymmetric,
    Kmeans,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GranularityKind {
    Tensor,
    Channel,
    Group,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    L1,
    L2,
}

/// A weight width: `32` (f32), `16` (f16), `"bf16"`, or an integer width (valid: 1..=8).
/// Written as a number, except bf16 which is the string `"bf16"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bits {
    F32,
    F16,
    Bf16,
    /// As written; validation allows 1..=8.
    Int(u32),
}

impl fmt::Display for Bits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bits::F32 => write!(f, "32"),
            Bits::F16 => write!(f, "16"),
            Bits::Bf16 => write!(f, "\"bf16\""),
            Bits::Int(b) => write!(f, "{b}"),
        }
    }
}

impl Serialize for Bits {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Bits::F32 => s.serialize_u32(32),
            Bits::F16 => s.serialize_u32(16),
            Bits::Bf16 => s.serialize_str("bf16"),
            Bits::Int(b) => s.serialize_u32(*b),
        }
    }
}

impl<'de> Deserialize<'de> for Bits {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u32),
            Name(String),
        }
        let raw = Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("bits must be 32, 16, \"bf16\" or an integer width 1..8")
        })?;
        match raw {
            Raw::Num(32) => Ok(Bits::F32),
            Raw::Num(16) => Ok(Bits::F16),
            Raw::Num(b) => Ok(Bits::Int(b)),
            Raw::Name(n) => match n.to_ascii_lowercase().as_str() {
                "bf16" | "bfloat16" => Ok(Bits::Bf16),
                "f16" | "fp16" | "float16" => Ok(Bits::F16),
                "f32" | "fp32" | "float32" => Ok(Bits::F32),
                _ => Err(serde::de::Error::custom(format!(
                    "bits = \"{n}\" is not a width; use 32, 16, \"bf16\" or 8..1"
                ))),
            },
        }
    }
}

/// A recipe checked against a model: what happens to each linear/conv layer.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedRecipe {
    /// One entry per linear/conv layer, in model order.
    pub layers: Vec<LayerPlan>,
    /// The layers (indices into `Model::layers`) ranked together by `[global]`, and the
    /// fraction of their weights removed.
    pub global: Option<(f64, Vec<usize>)>,
    pub activations: Option<ActivationSettings>,
    pub rank: Rank,
}

/// One layer's effective settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerPlan {
    /// Index into `Model::layers`.
    pub layer: usize,
    pub name: String,
    pub prune: Pruning,
    pub weights: WeightFormat,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pruning {
    None,
    L1 {
        sparsity: f64,
    },
    Random {
        sparsity: f64,
        seed: u64,
    },
    Structured {
        sparsity: f64,
        norm: Norm,
    },
    NM {
        n: usize,
        m: usize,
    },
    Std {
        quality: f64,
    },
    /// Ranked with the other `[global]` layers.
    Global {
        sparsity: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightFormat {
    Float(FloatStorage),
    Uniform {
        bits: u8,
        symmetric: bool,
        granularity: Granularity,
    },
    KMeans {
        bits: u8,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivationSettings {
    pub bits: u8,
    pub calibration_samples: usize,
    pub observer: Observer,
    /// Used with `Observer::Percentile`.
    pub percentile: f64,
}

/// A recipe that cannot be read or does not fit the model. Each message names the file (when
/// known), the table and field, and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{}: cannot read recipe: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    #[error("{at}invalid {format} recipe: {msg}")]
    Parse {
        at: String,
        format: &'static str,
        msg: String,
    },
    #[error(
        "{at}[layer.{name}]: the model has no linear/conv layer \"{name}\"; valid layers: {valid}"
    )]
    UnknownLayer {
        at: String,
        name: String,
        valid: String,
    },
    #[error(
        "{at}[global] layers: the model has no linear/conv layer \"{name}\"; valid layers: {valid}"
    )]
    UnknownGlobalLayer {
        at: String,
        name: String,
        valid: String,
    },
    #[error("{at}{field}: {msg}")]
    Invalid {
        at: String,
        /// Where the value was written, e.g. `[layer.fc1] bits` or `[default] group_size`.
        field: String,
        msg: String,
    },
    #[error("{at}layer {layer}: structured pruning is not possible: {msg}")]
    Structured {
        at: String,
        layer: String,
        msg: String,
    },
}

fn at(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!("{}: ", p.display()))
        .unwrap_or_default()
}

impl Recipe {
    /// Reads a recipe file: JSON when the extension is `.json`, TOML otherwise.
    pub fn from_path(path: &Path) -> Result<Recipe, RecipeError> {
        let text = crate::files::read_text(path)?;
        let src = Some(path.to_path_buf());
        let mut recipe = if path.extension().is_some_and(|e| e == "json") {
            Self::parse_json(&text, &src)?
        } else {
            Self::parse_toml(&text, &src)?
        };
        recipe.source = src;
        Ok(recipe)
    }

    pub fn from_toml_str(text: &str) -> Result<Recipe, RecipeError> {
        Self::parse_toml(text, &None)
    }

    pub fn from_json_str(text: &str) -> Result<Recipe, RecipeError> {
        Self::parse_json(text, &None)
    }

    fn parse_toml(text: &str, src: &Option<PathBuf>) -> Result<Recipe, RecipeError> {
        toml::from_str(text).map_err(|e| RecipeError::Parse {
            at: at(src),
            format: "TOML",
            msg: crate::model::spec::TomlError::new(text, &e).to_string(),
        })
    }

    fn parse_json(text: &str, src: &Option<PathBuf>) -> Result<Recipe, RecipeError> {
        serde_json::from_str(text).map_err(|e| RecipeError::Parse {
            at: at(src),
            format: "JSON",
            msg: e.to_string(),
        })
    }

    pub fn to_toml(&self) -> String {
        // Plain data with string keys: serialization cannot fail.
        toml::to_string_pretty(self).unwrap_or_default()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The recipe command-line flags describe: `sparsity` removed by per-layer L1 magnitude
    /// (or one global ranking over all linear/conv layers when `global`), weights stored at
    /// `bits` (symmetric per-channel for integer widths).
    pub fn quick(sparsity: f64, bits: Bits, global: bool) -> Recipe {
        let mut r = Recipe::default();
        if sparsity > 0.0 {
            if global {
                r.global = Some(GlobalRecipe {
                    sparsity,
                    layers: None,
                });
            } else {
                r.default.prune = Some(PruneMethod::L1);
                r.default.sparsity = Some(sparsity);
            }
        }
        if bits != Bits::F32 {
            r.default.bits = Some(bits);
        }
        r
    }

    /// Checks the recipe against `model` and resolves every linear/conv layer's settings.
    pub fn validate(&self, model: &Model) -> Result<ResolvedRecipe, RecipeError> {
        let at = at(&self.source);
        let compressible: Vec<(usize, &str)> = model
            .compressible()
            .map(|(i, l)| (i, l.name.as_str()))
            .collect();
        let valid = || {
            compressible
                .iter()
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        };
        for name in self.layers.keys() {
            if !compressible.iter().any(|(_, n)| n == name) {
                return Err(RecipeError::UnknownLayer {
                    at,
                    name: name.clone(),
                    valid: valid(),
                });
            }
        }
        let invalid = |field: String, msg: String| RecipeError::Invalid {
            at: at.clone(),
            field,
            msg,
        };

        // [default] alone: a sparsity its own prune method ignores is a mistake.
        check_sparsity_use(&self.default, "[default]", &invalid)?;

        let global = match &self.global {
            None => None,
            Some(g) => {
                if !(0.0..1.0).contains(&g.sparsity) {
                    return Err(invalid(
                        "[global] sparsity".into(),
                        format!("{} is outside [0, 1)", g.sparsity),
                    ));
                }
                let mut idx = Vec::new();
                match &g.layers {
                    None => idx.extend(compressible.iter().map(|(i, _)| *i)),
                    Some(names) => {
                        if names.is_empty() {
                            return Err(invalid(
                                "[global] layers".into(),
                                format!("is empty; list some of: {}", valid()),
                            ));
                        }
                        for name in names {
                            let Some((i, _)) = compressible.iter().find(|(_, n)| n == name) else {
                                return Err(RecipeError::UnknownGlobalLayer {
                                    at,
                                    name: name.clone(),
                                    valid: valid(),
                                });
                            };
                            if !idx.contains(i) {
                                idx.push(*i);
                            }
                        }
                        idx.sort_unstable();
                    }
                }
                Some((g.sparsity, idx))
            }
        };

        let graph = super::groups::ChannelGraph::analyze(model);
        let mut layers = Vec::new();
        for &(index, name) in &compressible {
            let over = self.layers.get(name);
            if let Some(o) = over {
                check_sparsity_use_layer(o, &self.default, name, &invalid)?;
            }
            let layer = &model.layers[index];
            let Some(params) = layer.params() else {
                continue;
            };
            let dims = params.weight.dims();
            let cols: usize = dims[1..].iter().product();
            let r = Resolver {
                default: &self.default,
                over,
                name,
            };

            let (method, method_at) = r.get(|t| t.prune, PruneMethod::None, "prune");
            let in_global = global.as_ref().is_some_and(|(_, g)| g.contains(&index));
            let prune = if in_global {
                if method != PruneMethod::None {
                    return Err(invalid(
                        method_at,
                        format!(
                            "layer {name} is ranked by [global] and also sets prune = \"{}\"; \
                             a layer is pruned one way: drop one of them",
                            method.as_str()
                        ),
                    ));
                }
                Pruning::Global {
                    sparsity: global.as_ref().map_or(0.0, |g| g.0),
                }
            } else {
                self.resolve_pruning(&r, method, cols, &invalid)?
            };
            // Structured pruning asked for by `[default]` leaves whole the layers that cannot
            // lose outputs (the output layer, whose outputs are the classes; layers whose
            // channels are tied to the model input). Named in its own `[layer.NAME]`, such a
            // layer is refused.
            let from_default = over.and_then(|o| o.prune).is_none();
            let prune = match prune {
                Pruning::Structured { .. } => {
                    match super::prune::structured_check(model, &graph, index) {
                        Ok(_) => prune,
                        Err(_) if from_default => Pruning::None,
                        Err(e) => {
                            return Err(RecipeError::Structured {
                                at: at.clone(),
                                layer: name.to_string(),
                                msg: e.to_string(),
                            });
                        }
                    }
                }
                p => p,
            };

            let weights = resolve_weights(&r, cols, &invalid)?;
            layers.push(LayerPlan {
                layer: index,
                name: name.to_string(),
                prune,
                weights,
            });
        }

        // Layers of one channel group lose the same channels: they must ask the same.
        let mut asked: Vec<(usize, (usize, f64, Norm))> = Vec::new();
        for lp in &layers {
            let Pruning::Structured { sparsity, norm } = lp.prune else {
                continue;
            };
            let Some(g) = graph.group_of(lp.layer).filter(|_| sparsity > 0.0) else {
                continue;
            };
            let this = (lp.layer, sparsity, norm);
            match asked.iter().find(|a| a.0 == g) {
                Some(&(_, first)) if first.1 != sparsity || first.2 != norm => {
                    return Err(RecipeError::Structured {
                        at: at.clone(),
                        layer: lp.name.clone(),
                        msg: super::prune::structured_conflict(model, &graph, g, first, this)
                            .to_string(),
                    });
                }
                Some(_) => {}
                None => asked.push((g, this)),
            }
        }

        let activations = match &self.activations {
            None => None,
            Some(a) => {
                if !(2..=8).contains(&a.bits) {
                    return Err(invalid(
                        "[activations] bits".into(),
                        format!("{} is not allowed; activations use 2..8 bits", a.bits),
                    ));
                }
                if a.calibration_samples == 0 {
                    return Err(invalid(
                        "[activations] calibration_samples".into(),
                        "must be at least 1".into(),
                    ));
                }
                let percentile = a.percentile.unwrap_or(DEFAULT_PERCENTILE);
                if !(percentile > 50.0 && percentile <= 100.0) {
                    return Err(invalid(
                        "[activations] percentile".into(),
                        format!("{percentile} must be in (50, 100]"),
                    ));
                }
                if a.percentile.is_some() && a.observer != Observer::Percentile {
                    return Err(invalid(
                        "[activations] percentile".into(),
                        "only applies with observer = \"percentile\"".into(),
                    ));
                }
                Some(ActivationSettings {
                    bits: a.bits,
                    calibration_samples: a.calibration_samples,
                    observer: a.observer,
                    percentile,
                })
            }
        };

        Ok(ResolvedRecipe {
            layers,
            global,
            activations,
            rank: self.rank.unwrap_or_default(),
        })
    }

    fn resolve_pruning(
        &self,
        r: &Resolver<'_>,
        method: PruneMethod,
        cols: usize,
        invalid: &dyn Fn(String, String) -> RecipeError,
    ) -> Result<Pruning, RecipeError> {
        let name = r.name;
        let sparsity = || -> Result<f64, RecipeError> {
            let (s, s_at) = r.get(|t| t.sparsity, 0.0, "sparsity");
            if !(0.0..1.0).contains(&s) {
                return Err(invalid(s_at, format!("{s} is outside [0, 1)")));
            }
            Ok(s)
        };
        Ok(match method {
            PruneMethod::None => Pruning::None,
            PruneMethod::L1 => Pruning::L1 {
                sparsity: sparsity()?,
            },
            PruneMethod::Random => Pruning::Random {
                sparsity: sparsity()?,
                seed: r.get(|t| t.seed, 0, "seed").0,
            },
            // At least one row is always kept, so any sparsity in [0, 1) is feasible.
            PruneMethod::Structured => Pruning::Structured {
                sparsity: sparsity()?,
                norm: r.get(|t| t.norm, Norm::L1, "norm").0,
            },
            PruneMethod::Nm => {
                let (n, n_at) = r.get(|t| t.n, 2, "n");
                let (m, m_at) = r.get(|t| t.m, 4, "m");
                if n == 0 || n >= m {
                    return Err(invalid(
                        n_at,
                        format!("N:M pruning needs 1 ≤ N < M; got {n}:{m}"),
                    ));
                }
                if cols < m {
                    return Err(invalid(
                        m_at,
                        format!("layer {name}'s rows have {cols} inputs, shorter than M = {m}"),
                    ));
                }
                Pruning::NM { n, m }
            }
            PruneMethod::Std => {
                let (q, q_at) = r.get(|t| t.quality, 1.0, "quality");
                if !(q.is_finite() && q >= 0.0) {
                    return Err(invalid(q_at, format!("{q} must be a finite number ≥ 0")));
                }
                Pruning::Std { quality: q }
            }
        })
    }
}

/// Looks a field up in the layer table, then `[default]`, and says where it was found.
struct Resolver<'a> {
    default: &'a LayerRecipe,
    over: Option<&'a LayerRecipe>,
    name: &'a str,
}

impl Resolver<'_> {
    fn get<T>(
        &self,
        f: impl Fn(&LayerRecipe) -> Option<T>,
        fallback: T,
        field: &str,
    ) -> (T, String) {
        if let Some(v) = self.over.and_then(&f) {
            return (v, format!("[layer.{}] {field}", self.name));
        }
        if let Some(v) = f(self.default) {
            return (v, format!("[default] {field} (for layer {})", self.name));
        }
        (
            fallback,
            format!("{field} (default, for layer {})", self.name),
        )
    }
}

fn check_sparsity_use(
    t: &LayerRecipe,
    table: &str,
    invalid: &dyn Fn(String, String) -> RecipeError,
) -> Result<(), RecipeError> {
    if let Some(s) = t.sparsity
        && s != 0.0
    {
        let method = t.prune.unwrap_or(PruneMethod::None);
        if !method.uses_sparsity() {
            return Err(invalid(
                format!("{table} sparsity"),
                format!(
                    "sparsity = {s} has no effect with prune = \"{}\"; set prune to l1, random or structured",
                    method.as_str()
                ),
            ));
        }
    }
    Ok(())
}

fn check_sparsity_use_layer(
    t: &LayerRecipe,
    default: &LayerRecipe,
    name: &str,
    invalid: &dyn Fn(String, String) -> RecipeError,
) -> Result<(), RecipeError> {
    if let Some(s) = t.sparsity
        && s != 0.0
    {
        let method = t.prune.or(default.prune).unwrap_or(PruneMethod::None);
        if !method.uses_sparsity() {
            return Err(invalid(
                format!("[layer.{name}] sparsity"),
                format!(
                    "sparsity = {s} has no effect with prune = \"{}\"; set prune to l1, random or structured",
                    method.as_str()
                ),
            ));
        }
    }
    Ok(())
}

fn resolve_weights(
    r: &Resolver<'_>,
    cols: usize,
    invalid: &dyn Fn(String, String) -> RecipeError,
) -> Result<WeightFormat, RecipeError> {
    let (bits, bits_at) = r.get(|t| t.bits, Bits::F32, "bits");
    let (scheme, scheme_at) = r.get(|t| t.scheme, Scheme::Symmetric, "scheme");
    let b = match bits {
        Bits::F32 => return Ok(WeightFormat::Float(FloatStorage::F32)),
        Bits::F16 => return Ok(WeightFormat::Float(FloatStorage::F16)),
        Bits::Bf16 => return Ok(WeightFormat::Float(FloatStorage::Bf16)),
        Bits::Int(b) if (1..=8).contains(&b) => b as u8,
        Bits::Int(b) => {
            return Err(invalid(
                bits_at,
                format!("bits = {b} is not allowed; use 32, 16, \"bf16\" or 8, 7, ..., 1"),
            ));
        }
    };
    match scheme {
        Scheme::Kmeans => Ok(WeightFormat::KMeans { bits: b }),
        Scheme::Symmetric | Scheme::Asymmetric => {
            let symmetric = scheme == Scheme::Symmetric;
            if symmetric && b == 1 {
                // Symmetric levels are ±(2^(b−1) − 1): at 1 bit that is only 0.
                return Err(invalid(
                    scheme_at,
                    "1-bit symmetric quantization has no level besides 0 (levels ±(2^0 − 1)); \
                     use scheme = \"kmeans\" or \"asymmetric\" for 1 bit"
                        .into(),
                ));
            }
            let (kind, _) = r.get(|t| t.granularity, GranularityKind::Channel, "granularity");
            let granularity = match kind {
                GranularityKind::Tensor => Granularity::Tensor,
                GranularityKind::Channel => Granularity::Channel,
                GranularityKind::Group => {
                    let (size, size_at) = r.get(|t| t.group_size, 64, "group_size");
                    if size == 0 || !cols.is_multiple_of(size) {
                        let divisors: Vec<String> = (2..=cols.min(256))
                            .filter(|d| cols.is_multiple_of(*d))
                            .map(|d| d.to_string())
                            .collect();
                        return Err(invalid(
                            size_at,
                            format!(
                                "group_size = {size} does not divide layer {}'s rows of {cols} inputs (sizes that do: {})",
                                r.name,
                                if divisors.is_empty() {
                                    cols.to_string()
                                } else {
                                    divisors.join(", ")
                                }
                            ),
                        ));
                    }
                    Granularity::Group { size }
                }
            };
            Ok(WeightFormat::Uniform {
                bits: b,
                symmetric,
                granularity,
            })
        }
    }
}
