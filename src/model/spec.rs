//! The architecture description: a small, readable schema (TOML in sidecar files, JSON inside
//! the safetensors metadata key `squeeze.arch`) that says how the state_dict's tensors are wired.

use serde::{Deserialize, Serialize};

/// A whole architecture: how raw inputs are scaled, then the layers in execution order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchSpec {
    pub input: InputSpec,
    #[serde(rename = "layer")]
    pub layers: Vec<LayerSpec>,
}

/// One sample's shape and the scaling applied to raw values: `(raw × scale − mean[c]) / std[c]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// One sample: `[C, H, W]` for images, `[features]` for vectors.
    pub shape: Vec<usize>,
    #[serde(default = "one")]
    pub scale: f32,
    /// One value per channel (or a single value for all).
    #[serde(default = "zero_vec")]
    pub mean: Vec<f32>,
    #[serde(default = "one_vec")]
    pub std: Vec<f32>,
}

fn one() -> f32 {
    1.0
}
fn zero_vec() -> Vec<f32> {
    vec![0.0]
}
fn one_vec() -> Vec<f32> {
    vec![1.0]
}

/// A value given as one number for both spatial dimensions or as `[h, w]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Pair {
    Same(usize),
    HW([usize; 2]),
}

impl Pair {
    pub fn hw(self) -> (usize, usize) {
        match self {
            Pair::Same(v) => (v, v),
            Pair::HW([h, w]) => (h, w),
        }
    }
}

impl Default for Pair {
    fn default() -> Self {
        Pair::Same(0)
    }
}

fn pair_one() -> Pair {
    Pair::Same(1)
}
fn default_groups() -> usize {
    1
}
fn default_eps() -> f64 {
    1e-5
}
fn default_slope() -> f64 {
    0.01
}

/// One layer of the architecture. `name` is optional everywhere: layers with parameters default
/// to their tensor prefix (`"0.weight"` → `"0"`), others to `op` plus their position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerSpec {
    Linear {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        weight: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bias: Option<String>,
        /// Output size. Optional when loading (the weight's shape says it; checked when given),
        /// needed to build the layer from scratch (`squeeze train`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        out_features: Option<usize>,
    },
    Conv2d {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        weight: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bias: Option<String>,
        /// Output channels and kernel size: optional when loading (checked when given), needed
        /// to build the layer from scratch (`squeeze train`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        out_channels: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kernel: Option<Pair>,
        #[serde(default = "pair_one")]
        stride: Pair,
        #[serde(default)]
        padding: Pair,
        #[serde(default = "pair_one")]
        dilation: Pair,
        #[serde(default = "default_groups")]
        groups: usize,
    },
    Batchnorm {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        weight: String,
        bias: String,
        running_mean: String,
        running_var: String,
        #[serde(default = "default_eps")]
        eps: f64,
    },
    Relu {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Relu6 {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    LeakyRelu {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default = "default_slope")]
        slope: f64,
    },
    Gelu {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Tanh {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Sigmoid {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Silu {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Maxpool2d {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        kernel: Pair,
        /// Defaults to the kernel size, as in PyTorch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<Pair>,
        #[serde(default)]
        padding: Pair,
    },
    Avgpool2d {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        kernel: Pair,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<Pair>,
        #[serde(default)]
        padding: Pair,
    },
    GlobalAvgpool {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Flatten {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Dropout {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        p: Option<f64>,
    },
    Softmax {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// Residual connection: adds the output of the layer named `from` to the current value.
    Add {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        from: String,
    },
}

impl LayerSpec {
    /// The op's name as written in the schema.
    pub fn op_name(&self) -> &'static str {
        match self {
            LayerSpec::Linear { .. } => "linear",
            LayerSpec::Conv2d { .. } => "conv2d",
            LayerSpec::Batchnorm { .. } => "batchnorm",
            LayerSpec::Relu { .. } => "relu",
            LayerSpec::Relu6 { .. } => "relu6",
            LayerSpec::LeakyRelu { .. } => "leaky_relu",
            LayerSpec::Gelu { .. } => "gelu",
            LayerSpec::Tanh { .. } => "tanh",
            LayerSpec::Sigmoid { .. } => "sigmoid",
            LayerSpec::Silu { .. } => "silu",
            LayerSpec::Maxpool2d { .. } => "maxpool2d",
            LayerSpec::Avgpool2d { .. } => "avgpool2d",
            LayerSpec::GlobalAvgpool { .. } => "global_avgpool",
            LayerSpec::Flatten { .. } => "flatten",
            LayerSpec::Dropout { .. } => "dropout",
            LayerSpec::Softmax { .. } => "softmax",
            LayerSpec::Add { .. } => "add",
        }
    }

    /// The explicit name, if the description gives one.
    pub fn explicit_name(&self) -> Option<&str> {
        match self {
            LayerSpec::Linear { name, .. }
            | LayerSpec::Conv2d { name, .. }
            | LayerSpec::Batchnorm { name, .. }
            | LayerSpec::Relu { name }
            | LayerSpec::Relu6 { name }
            | LayerSpec::LeakyRelu { name, .. }
            | LayerSpec::Gelu { name }
            | LayerSpec::Tanh { name }
            | LayerSpec::Sigmoid { name }
            | LayerSpec::Silu { name }
            | LayerSpec::Maxpool2d { name, .. }
            | LayerSpec::Avgpool2d { name, .. }
            | LayerSpec::GlobalAvgpool { name }
            | LayerSpec::Flatten { name }
            | LayerSpec::Dropout { name, .. }
            | LayerSpec::Softmax { name }
            | LayerSpec::Add { name, .. } => name.as_deref(),
        }
    }

    /// The display name: explicit, else the weight tensor's prefix, else `op` + position.
    pub fn display_name(&self, index: usize) -> String {
        if let Some(n) = self.explicit_name() {
            return n.to_string();
        }
        match self {
            LayerSpec::Linear { weight, .. }
            | LayerSpec::Conv2d { weight, .. }
            | LayerSpec::Batchnorm { weight, .. } => tensor_prefix(weight).to_string(),
            other => format!("{}{}", other.op_name(), index),
        }
    }
}

/// `"features.0.weight"` → `"features.0"`; a name without a dot is its own prefix.
pub fn tensor_prefix(tensor: &str) -> &str {
    tensor.rsplit_once('.').map_or(tensor, |(p, _)| p)
}

/// A TOML parse error on one line, as every error message is: `line 3, column 1: duplicate
/// key` (toml's own rendering quotes the source over several lines).
pub fn toml_error_line(text: &str, e: &toml::de::Error) -> String {
    let msg = e
        .message()
        .trim()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {msg}")
        }
        None => msg,
    }
}

impl ArchSpec {
    /// Parses a TOML description; the error is one line ([`toml_error_line`]).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| toml_error_line(text, &e))
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn to_json(&self) -> String {
        // Serializing plain data structs to JSON cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let text = r#"
[input]
shape = [1, 28, 28]
scale = 0.00392156862745098
mean = [0.0]
std = [1.0]

[[layer]]
op = "flatten"

[[layer]]
op = "linear"
name = "fc1"
weight = "0.weight"
bias = "0.bias"

[[layer]]
op = "conv2d"
weight = "c.weight"
stride = [2, 1]
padding = 1

[[layer]]
op = "relu"
"#;
        let spec = ArchSpec::from_toml(text).unwrap();
        assert_eq!(spec.layers.len(), 4);
        assert_eq!(spec.layers[1].display_name(1), "fc1");
        assert_eq!(spec.layers[2].display_name(2), "c");
        assert_eq!(spec.layers[3].display_name(3), "relu3");
        match &spec.layers[2] {
            LayerSpec::Conv2d {
                stride, padding, ..
            } => {
                assert_eq!(stride.hw(), (2, 1));
                assert_eq!(padding.hw(), (1, 1));
            }
            _ => panic!(),
        }
        let back = ArchSpec::from_json(&spec.to_json()).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn unknown_op_and_keys_are_rejected() {
        let e = ArchSpec::from_toml("[input]\nshape=[4]\n[[layer]]\nop = \"lstm\"\n").unwrap_err();
        assert!(e.to_string().contains("lstm"), "{e}");
        let e = ArchSpec::from_toml("[input]\nshape=[4]\n[[layer]]\nop = \"relu\"\nslope = 1\n")
            .unwrap_err();
        assert!(e.to_string().contains("slope"), "{e}");
    }
}
