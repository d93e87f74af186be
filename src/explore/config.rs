//! The explorer's edit state: one explicit setting per linear/conv layer, plus optional global
//! pruning and activation quantization. It converts to and from `compress::Recipe`, so what
//! the TUI exports is a recipe file every command reads.

use serde::{Deserialize, Serialize};

use crate::compress::recipe::{
    ActivationRecipe, GlobalRecipe, GranularityKind, PruneMethod, Scheme,
};
use crate::compress::{Bits, LayerRecipe, Pruning, Recipe, WeightFormat};

use super::info::{LayerInfo, ModelInfo};

/// Sparsity in thousandths (0..=990): exact, hashable, and what the arrow keys step through.
pub type Permille = u16;

/// The largest sparsity the keys reach (99 %).
pub const MAX_SPARSITY: Permille = 990;

/// The weight widths `+`/`−` step through, widest first.
pub const BITS_LADDER: [Bits; 10] = [
    Bits::F32,
    Bits::F16,
    Bits::Int(8),
    Bits::Int(7),
    Bits::Int(6),
    Bits::Int(5),
    Bits::Int(4),
    Bits::Int(3),
    Bits::Int(2),
    Bits::Int(1),
];

/// Prune methods in the order the cycle key visits them.
pub const PRUNE_CYCLE: [PruneMethod; 6] = [
    PruneMethod::None,
    PruneMethod::L1,
    PruneMethod::Random,
    PruneMethod::Structured,
    PruneMethod::Nm,
    PruneMethod::Std,
];

pub const SCHEME_CYCLE: [Scheme; 3] = [Scheme::Symmetric, Scheme::Asymmetric, Scheme::Kmeans];

/// One layer's compression, every field explicit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerSetting {
    pub prune: PruneMethod,
    /// Fraction removed by l1, random and structured pruning, in thousandths.
    pub sparsity: Permille,
    /// Han et al.'s `std` threshold multiplier, in hundredths.
    pub quality: u16,
    pub bits: Bits,
    pub scheme: Scheme,
    pub granularity: GranularityKind,
    /// Inputs per group when `granularity` is `group`.
    pub group_size: usize,
}

impl Default for LayerSetting {
    fn default() -> Self {
        LayerSetting {
            prune: PruneMethod::None,
            sparsity: 0,
            quality: 100,
            bits: Bits::F32,
            scheme: Scheme::Symmetric,
            granularity: GranularityKind::Channel,
            group_size: 64,
        }
    }
}

impl LayerSetting {
    pub fn is_dense(&self) -> bool {
        self.prune_is_noop() && self.bits == Bits::F32
    }

    fn prune_is_noop(&self) -> bool {
        match self.prune {
            PruneMethod::None => true,
            PruneMethod::L1 | PruneMethod::Random | PruneMethod::Structured => self.sparsity == 0,
            PruneMethod::Nm | PruneMethod::Std => false,
        }
    }

    /// Integer widths quantize; 32 and 16 are float storage.
    pub fn int_bits(&self) -> Option<u8> {
        match self.bits {
            Bits::Int(b) => u8::try_from(b).ok(),
            _ => None,
        }
    }

    /// This setting as `layer` can take it — the one rule `m` and "apply to all" follow:
    /// structured pruning where the layer cannot lose outputs (the output layer, channels tied
    /// to the model input) becomes no pruning, and group scales whose size does not divide the layer's
    /// rows become per-channel scales.
    pub fn fitted(mut self, layer: &LayerInfo) -> LayerSetting {
        if self.prune == PruneMethod::Structured && layer.no_structured.is_some() {
            self.prune = PruneMethod::None;
            self.sparsity = 0;
        }
        if self.granularity == GranularityKind::Group && !layer.cols.is_multiple_of(self.group_size)
        {
            self.granularity = GranularityKind::Channel;
        }
        self
    }

    /// Short text for the prune column, e.g. `l1 90%`, `2:4`, `std q1.00`, `—`.
    pub fn prune_label(&self) -> String {
        match self.prune {
            PruneMethod::None => "—".into(),
            PruneMethod::L1 => format!("l1 {}", pct(self.sparsity)),
            PruneMethod::Random => format!("rand {}", pct(self.sparsity)),
            PruneMethod::Structured => format!("struct {}", pct(self.sparsity)),
            PruneMethod::Nm => "2:4".into(),
            PruneMethod::Std => format!("std q{:.2}", f64::from(self.quality) / 100.0),
        }
    }

    /// The stored values this setting asks for, in the engine's names for stored formats
    /// (the part after `+` in `csr8+u4/channel`): `f32`, `f16`, `bf16`, `u8/channel`,
    /// `u4/group64`, `codebook5`. Asymmetric codes (stored with zero points) add ` asym`.
    pub fn quant_label(&self) -> String {
        match self.bits {
            Bits::F32 => "f32".into(),
            Bits::F16 => "f16".into(),
            Bits::Bf16 => "bf16".into(),
            Bits::Int(b) => match self.scheme {
                Scheme::Kmeans => format!("codebook{b}"),
                Scheme::Symmetric | Scheme::Asymmetric => {
                    let g = match self.granularity {
                        GranularityKind::Tensor => "tensor".to_string(),
                        GranularityKind::Channel => "channel".to_string(),
                        GranularityKind::Group => format!("group{}", self.group_size),
                    };
                    let asym = if self.scheme == Scheme::Asymmetric {
                        " asym"
                    } else {
                        ""
                    };
                    format!("u{b}/{g}{asym}")
                }
            },
        }
    }

    fn to_layer_recipe(self) -> LayerRecipe {
        let mut r = LayerRecipe::default();
        match self.prune {
            PruneMethod::None => {}
            PruneMethod::L1 | PruneMethod::Random | PruneMethod::Structured => {
                if self.sparsity > 0 {
                    r.prune = Some(self.prune);
                    r.sparsity = Some(f64::from(self.sparsity) / 1000.0);
                }
            }
            PruneMethod::Nm => r.prune = Some(PruneMethod::Nm),
            PruneMethod::Std => {
                r.prune = Some(PruneMethod::Std);
                r.quality = Some(f64::from(self.quality) / 100.0);
            }
        }
        if self.bits != Bits::F32 {
            r.bits = Some(self.bits);
        }
        if let Bits::Int(_) = self.bits {
            r.scheme = Some(self.scheme);
            if self.scheme != Scheme::Kmeans {
                r.granularity = Some(self.granularity);
                if self.granularity == GranularityKind::Group {
                    r.group_size = Some(self.group_size);
                }
            }
        }
        r
    }
}

/// Formats thousandths as a percentage: `900` → `90%`, `925` → `92.5%`.
pub fn pct(permille: Permille) -> String {
    if permille.is_multiple_of(10) {
        format!("{}%", permille / 10)
    } else {
        format!("{:.1}%", f64::from(permille) / 10.0)
    }
}

/// A whole configuration: what one point on the charts is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// One per linear/conv layer, in model order.
    pub layers: Vec<LayerSetting>,
    /// Global magnitude pruning over all linear/conv layers (thousandths); when set, it
    /// replaces the layers' own prune settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<Permille>,
    /// Static activation quantization width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_bits: Option<u8>,
}

impl Config {
    /// The uncompressed model with `n` compressible layers.
    pub fn dense(n: usize) -> Config {
        Config {
            layers: vec![LayerSetting::default(); n],
            global: None,
            activation_bits: None,
        }
    }

    pub fn is_dense(&self) -> bool {
        self.layers.iter().all(LayerSetting::is_dense)
            && self.global.is_none_or(|g| g == 0)
            && self.activation_bits.is_none()
    }

    /// The canonical text hashed into cache keys (field order is fixed by the struct).
    pub fn canonical(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The recipe this configuration stands for. Layers the configuration leaves dense are
    /// not written, so the file says only what changes.
    pub fn to_recipe(&self, info: &ModelInfo) -> Recipe {
        let mut recipe = Recipe::default();
        if let Some(g) = self.global.filter(|&g| g > 0) {
            recipe.global = Some(GlobalRecipe {
                sparsity: f64::from(g) / 1000.0,
                layers: None,
            });
        }
        if let Some(bits) = self.activation_bits {
            recipe.activations = Some(ActivationRecipe {
                bits,
                ..ActivationRecipe::default()
            });
        }
        for (setting, layer) in self.layers.iter().zip(&info.layers) {
            let mut s = *setting;
            if recipe.global.is_some() {
                // A layer in the global ranking may not also name its own method.
                s.prune = PruneMethod::None;
            }
            let r = s.to_layer_recipe();
            if !r.is_empty() {
                recipe.layers.insert(layer.name.clone(), r);
            }
        }
        recipe
    }

    /// Reads a recipe back into explicit per-layer settings. Settings the explorer cannot
    /// edit (a random seed, an N:M other than 2:4, an L2 norm) fall back to its defaults; the
    /// returned notes say which.
    pub fn from_recipe(
        recipe: &Recipe,
        model: &crate::model::Model,
    ) -> Result<(Config, Vec<String>), crate::compress::RecipeError> {
        let resolved = recipe.validate(model)?;
        let mut notes = Vec::new();
        let mut config = Config::dense(resolved.layers.len());
        config.global = resolved
            .global
            .as_ref()
            .map(|(s, _)| (s * 1000.0).round() as Permille);
        if let Some((_, layers)) = &resolved.global {
            let all = model.compressible().count();
            if layers.len() != all {
                notes.push(
                    "[global] over a subset of layers: the explorer ranks all layers together"
                        .into(),
                );
            }
        }
        config.activation_bits = resolved.activations.map(|a| a.bits);
        for (setting, plan) in config.layers.iter_mut().zip(&resolved.layers) {
            let permille = |s: f64| ((s * 1000.0).round() as Permille).min(MAX_SPARSITY);
            match plan.prune {
                Pruning::None | Pruning::Global { .. } => {}
                Pruning::L1 { sparsity } => {
                    setting.prune = PruneMethod::L1;
                    setting.sparsity = permille(sparsity);
                }
                Pruning::Random { sparsity, seed } => {
                    setting.prune = PruneMethod::Random;
                    setting.sparsity = permille(sparsity);
                    if seed != 0 {
                        notes.push(format!("{}: random seed {seed} replaced by 0", plan.name));
                    }
                }
                Pruning::Structured { sparsity, norm } => {
                    setting.prune = PruneMethod::Structured;
                    setting.sparsity = permille(sparsity);
                    if norm != crate::compress::recipe::Norm::L1 {
                        notes.push(format!("{}: structured norm L2 replaced by L1", plan.name));
                    }
                }
                Pruning::NM { n, m } => {
                    setting.prune = PruneMethod::Nm;
                    if (n, m) != (2, 4) {
                        notes.push(format!("{}: N:M {n}:{m} replaced by 2:4", plan.name));
                    }
                }
                Pruning::Std { quality } => {
                    setting.prune = PruneMethod::Std;
                    setting.quality = (quality * 100.0).round().clamp(0.0, 1000.0) as u16;
                }
            }
            match plan.weights {
                WeightFormat::Float(storage) => {
                    setting.bits = match storage {
                        crate::compress::FloatStorage::F32 => Bits::F32,
                        crate::compress::FloatStorage::F16 => Bits::F16,
                        crate::compress::FloatStorage::Bf16 => Bits::Bf16,
                    };
                }
                WeightFormat::Uniform {
                    bits,
                    symmetric,
                    granularity,
                } => {
                    setting.bits = Bits::Int(u32::from(bits));
                    setting.scheme = if symmetric {
                        Scheme::Symmetric
                    } else {
                        Scheme::Asymmetric
                    };
                    match granularity {
                        crate::compress::Granularity::Tensor => {
                            setting.granularity = GranularityKind::Tensor;
                        }
                        crate::compress::Granularity::Channel => {
                            setting.granularity = GranularityKind::Channel;
                        }
                        crate::compress::Granularity::Group { size } => {
                            setting.granularity = GranularityKind::Group;
                            setting.group_size = size;
                        }
                    }
                }
                WeightFormat::KMeans { bits } => {
                    setting.bits = Bits::Int(u32::from(bits));
                    setting.scheme = Scheme::Kmeans;
                }
            }
        }
        Ok((config, notes))
    }
}

/// The next item of `cycle` after `current` (wrapping), or the first when absent.
pub fn next_in<T: PartialEq + Copy>(cycle: &[T], current: T) -> T {
    let i = cycle.iter().position(|c| *c == current);
    match i {
        Some(i) => cycle[(i + 1) % cycle.len()],
        None => cycle[0],
    }
}

/// The prune method `m` moves `layer` to after `current`: the cycle, leaving out structured
/// pruning where the layer cannot lose outputs (`LayerSetting::fitted`).
pub fn next_prune(current: PruneMethod, layer: &LayerInfo) -> PruneMethod {
    let next = next_in(&PRUNE_CYCLE, current);
    if next == PruneMethod::Structured && layer.no_structured.is_some() {
        next_in(&PRUNE_CYCLE, next)
    } else {
        next
    }
}

/// One step along the bits ladder: `wider` toward 32, else toward 1.
pub fn step_bits(bits: Bits, wider: bool) -> Bits {
    let i = BITS_LADDER.iter().position(|b| *b == bits).unwrap_or(0);
    let j = if wider {
        i.saturating_sub(1)
    } else {
        (i + 1).min(BITS_LADDER.len() - 1)
    };
    BITS_LADDER[j]
}

/// The next granularity for a layer with `cols` inputs per output: tensor → channel → group
/// (the largest usual group size dividing `cols`, skipped when none does) → tensor.
pub fn next_granularity(kind: GranularityKind, cols: usize) -> (GranularityKind, Option<usize>) {
    match kind {
        GranularityKind::Tensor => (GranularityKind::Channel, None),
        GranularityKind::Channel => match group_size_for(cols) {
            Some(g) => (GranularityKind::Group, Some(g)),
            None => (GranularityKind::Tensor, None),
        },
        GranularityKind::Group => (GranularityKind::Tensor, None),
    }
}

/// The largest of 128, 64, 32, 16, 8 that divides `cols` and leaves at least two groups.
pub fn group_size_for(cols: usize) -> Option<usize> {
    [128, 64, 32, 16, 8]
        .into_iter()
        .find(|g| cols.is_multiple_of(*g) && cols / g >= 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explore::info::{LayerInfo, ModelInfo};

    fn info() -> ModelInfo {
        let layer = |name: &str, cols: usize| LayerInfo {
            name: name.into(),
            op: "linear".into(),
            shape: vec![10, cols],
            params: 10 * cols + 10,
            macs: 10 * cols,
            dense_bytes: (10 * cols + 10) * 4,
            cols,
            hist_range: (-1.0, 1.0),
            hist_before: vec![],
            coupled: None,
            no_structured: None,
        };
        ModelInfo::for_tests(vec![layer("fc1", 784), layer("fc2", 300)])
    }

    #[test]
    fn dense_config_is_an_empty_recipe() {
        let c = Config::dense(2);
        assert!(c.is_dense());
        assert_eq!(c.to_recipe(&info()), Recipe::default());
    }

    #[test]
    fn recipe_names_only_changed_layers() {
        let mut c = Config::dense(2);
        c.layers[1].prune = PruneMethod::L1;
        c.layers[1].sparsity = 900;
        c.layers[1].bits = Bits::Int(6);
        c.layers[1].scheme = Scheme::Kmeans;
        let r = c.to_recipe(&info());
        assert_eq!(r.layers.len(), 1);
        let fc2 = &r.layers["fc2"];
        assert_eq!(fc2.prune, Some(PruneMethod::L1));
        assert_eq!(fc2.sparsity, Some(0.9));
        assert_eq!(fc2.bits, Some(Bits::Int(6)));
        assert_eq!(fc2.granularity, None);
        let text = r.to_toml();
        assert!(text.contains("[layer.fc2]"), "{text}");
        assert_eq!(Recipe::from_toml_str(&text).ok(), Some(r));
    }

    #[test]
    fn global_pruning_drops_layer_methods() {
        let mut c = Config::dense(2);
        c.layers[0].prune = PruneMethod::L1;
        c.layers[0].sparsity = 500;
        c.global = Some(700);
        let r = c.to_recipe(&info());
        assert_eq!(r.global.as_ref().map(|g| g.sparsity), Some(0.7));
        assert!(r.layers.is_empty());
    }

    #[test]
    fn bits_ladder_and_cycles() {
        assert_eq!(step_bits(Bits::F32, false), Bits::F16);
        assert_eq!(step_bits(Bits::F32, true), Bits::F32);
        assert_eq!(step_bits(Bits::Int(8), true), Bits::F16);
        assert_eq!(step_bits(Bits::Int(1), false), Bits::Int(1));
        assert_eq!(next_in(&PRUNE_CYCLE, PruneMethod::Std), PruneMethod::None);
        assert_eq!(group_size_for(784), Some(16));
        assert_eq!(group_size_for(100), None);
        assert_eq!(
            next_granularity(GranularityKind::Channel, 100),
            (GranularityKind::Tensor, None)
        );
        assert_eq!(pct(925), "92.5%");
    }

    #[test]
    fn one_rule_keeps_structured_off_layers_that_cannot_lose_outputs() {
        let mut out = info().layers[1].clone();
        out.no_structured = Some("fc2 produces the model's output".into());
        let free = info().layers[0].clone();
        let mut s = LayerSetting {
            prune: PruneMethod::Structured,
            sparsity: 500,
            bits: Bits::Int(4),
            ..LayerSetting::default()
        };
        assert_eq!(s.fitted(&free), s);
        let kept = s.fitted(&out);
        assert_eq!(
            (kept.prune, kept.sparsity, kept.bits),
            (PruneMethod::None, 0, Bits::Int(4))
        );
        assert_eq!(
            next_prune(PruneMethod::Random, &free),
            PruneMethod::Structured
        );
        assert_eq!(next_prune(PruneMethod::Random, &out), PruneMethod::Nm);
        s.granularity = GranularityKind::Group;
        s.group_size = 112;
        assert_eq!(s.fitted(&free).granularity, GranularityKind::Group);
        assert_eq!(s.fitted(&out).granularity, GranularityKind::Channel);
    }

    #[test]
    fn weights_are_named_as_the_engine_stores_them() {
        let mut s = LayerSetting {
            bits: Bits::Int(4),
            ..LayerSetting::default()
        };
        assert_eq!(s.quant_label(), "u4/channel");
        s.granularity = GranularityKind::Group;
        assert_eq!(s.quant_label(), "u4/group64");
        s.scheme = Scheme::Asymmetric;
        s.granularity = GranularityKind::Tensor;
        assert_eq!(s.quant_label(), "u4/tensor asym");
        s.scheme = Scheme::Kmeans;
        assert_eq!(s.quant_label(), "codebook4");
    }
}
