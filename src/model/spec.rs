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
fn one_usize() -> usize {
    1
}
fn is_false(b: &bool) -> bool {
    !*b
}

/// The name by which a layer reads the model's (scaled) input in `input`, `inputs` and `from`.
pub const MODEL_INPUT: &str = "input";

/// One layer of the architecture: its name, what it reads and its operation. `name` is optional
/// everywhere: layers with parameters default to their tensor prefix (`"0.weight"` → `"0"`),
/// others to `op` plus their position. A layer reads the previous layer's output (the first
/// layer the model input) unless it names its input (`input = "stem"`) or inputs (`inputs =
/// ["a", "b"]` for the joins `add`, `mul` and `concat`); [`MODEL_INPUT`] names the model input.
/// Written flat, the operation's fields beside the name (`op = "conv2d"`, `name = "c1"`,
/// `input = "stem"`, `weight = ...`).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    pub name: Option<String>,
    /// The values the layer reads, in order; empty: the previous layer's output.
    pub inputs: Vec<String>,
    pub op: OpSpec,
}

/// What one layer computes, in the schema's words: the one description of an operation that
/// loading, training, export and the engine share. The shapes an operation takes and gives are
/// `shape::out_shape`'s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum OpSpec {
    Linear {
        weight: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bias: Option<String>,
        /// Output size. Optional when loading (the weight's shape says it; checked when given),
        /// needed to build the layer from scratch (`squeeze train`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        out_features: Option<usize>,
    },
    Conv2d {
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
    /// A 1-D convolution over `[channels, length]` samples, as PyTorch's `nn.Conv1d`: weight
    /// `[out, in/groups, kernel]`. Pruned and quantized per output channel, as conv2d.
    Conv1d {
        weight: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bias: Option<String>,
        /// Output channels and kernel size: optional when loading (checked when given), needed
        /// to build the layer from scratch (`squeeze train`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        out_channels: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kernel: Option<usize>,
        #[serde(default = "one_usize")]
        stride: usize,
        #[serde(default)]
        padding: usize,
        #[serde(default = "one_usize")]
        dilation: usize,
        #[serde(default = "default_groups")]
        groups: usize,
    },
    /// A lookup table, as PyTorch's `nn.Embedding(num_embeddings, embedding_dim)`: a sample of
    /// `[tokens]` ids (whole numbers in `[0, num_embeddings)`, given as values) becomes
    /// `[tokens, embedding_dim]`, row `id` of `weight` per token. The table is pruned and
    /// quantized per row, as a linear layer's weight.
    Embedding {
        weight: String,
        /// The table's rows and columns: optional when loading (checked when given), needed to
        /// build the layer from scratch (`squeeze train`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        num_embeddings: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        embedding_dim: Option<usize>,
    },
    Batchnorm {
        weight: String,
        bias: String,
        running_mean: String,
        running_var: String,
        #[serde(default = "default_eps")]
        eps: f64,
    },
    /// Normalization over the last dimension of a sample (`[features]`, `[tokens, d]`), as
    /// PyTorch's `nn.LayerNorm(d)`: `(x − mean) / √(var + eps) × weight + bias` with the biased
    /// variance; without `weight` and `bias`, as `elementwise_affine = False`.
    LayerNorm {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bias: Option<String>,
        #[serde(default = "default_eps")]
        eps: f64,
    },
    Relu {},
    Relu6 {},
    LeakyRelu {
        #[serde(default = "default_slope")]
        slope: f64,
    },
    Gelu {},
    Tanh {},
    Sigmoid {},
    Silu {},
    /// `x · relu6(x + 3) / 6`, as PyTorch's `nn.Hardswish`.
    Hardswish {},
    /// `relu6(x + 3) / 6`, as PyTorch's `nn.Hardsigmoid`.
    Hardsigmoid {},
    Maxpool2d {
        kernel: Pair,
        /// Defaults to the kernel size, as in PyTorch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<Pair>,
        #[serde(default)]
        padding: Pair,
    },
    Avgpool2d {
        kernel: Pair,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<Pair>,
        #[serde(default)]
        padding: Pair,
    },
    GlobalAvgpool {},
    /// Average pooling to an output of `size` (`N` or `[h, w]`) whatever the input's, as
    /// PyTorch's `nn.AdaptiveAvgPool2d`: output index `i` of `O` over an input of length `L`
    /// averages `[floor(i·L/O), ceil((i+1)·L/O))`. `size = 1` is `global_avgpool` keeping
    /// `[C, 1, 1]`.
    AdaptiveAvgpool {
        size: Pair,
    },
    /// Upsampling by integer factors `scale` (`N` or `[h, w]`), as PyTorch's
    /// `nn.Upsample(scale_factor = scale, mode = mode, align_corners = align_corners)`;
    /// `align_corners` only with `mode = "bilinear"`.
    Upsample {
        scale: Pair,
        #[serde(default)]
        mode: UpsampleMode,
        #[serde(default, skip_serializing_if = "is_false")]
        align_corners: bool,
    },
    /// Sample dimensions `start_dim ..= end_dim` joined into one, as `nn.Flatten(start_dim,
    /// end_dim)`: dimensions numbered as PyTorch numbers them on a batch (0 is the batch, 1 a
    /// sample's first; negative from the end). The default `start_dim = 1` flattens a sample
    /// into a vector.
    Flatten {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_dim: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        end_dim: Option<i64>,
    },
    /// A sample reshaped to `shape` (without the batch; one entry may be −1), as
    /// `x.reshape(N, *shape)`.
    Reshape {
        shape: Vec<i64>,
    },
    /// Two dimensions swapped, as `x.transpose(dims[0], dims[1])` (PyTorch's numbering).
    Transpose {
        dims: [i64; 2],
    },
    /// One index of a dimension, the dimension dropped, as `x.select(dim, index)` (`x[:, 0]`
    /// is `dim = 1`, `index = 0`: ViT's class token).
    Select {
        dim: i64,
        index: usize,
    },
    /// The mean over a dimension, dropped, as `x.mean(dim)` (the mean over tokens).
    Mean {
        dim: i64,
    },
    /// Scaled dot-product self-attention of `heads` heads over `[tokens, 3·d]` rows of queries,
    /// keys and values (the output of the `in_proj` linear layer of `nn.MultiheadAttention`),
    /// giving `[tokens, d]`: softmax(q·kᵀ / √(d/heads))·v per head, the heads side by side. With
    /// a linear layer before it (`in_proj_weight`, `in_proj_bias`) and one after it
    /// (`out_proj.weight`, `out_proj.bias`), it is `nn.MultiheadAttention(batch_first=True)`
    /// applied to `(x, x, x)`.
    Attention {
        heads: usize,
    },
    Dropout {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        p: Option<f64>,
    },
    Softmax {},
    /// Element-wise sum of two values: the layer's input and the layer named `from` (a
    /// residual connection), or the two layers of `inputs`. A `[C]` or `[C, 1, 1]` value is
    /// broadcast over a `[C, H, W]` one, channel by channel.
    Add {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// A learned tensor of the state_dict as the second operand (a ViT's position
        /// embedding), broadcast as PyTorch does: shaped as the input, with or without a
        /// leading batch dimension of 1, or as its last dimensions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        param: Option<String>,
    },
    /// Element-wise product of two values, broadcast as `add` (squeeze-and-excite: a feature
    /// map times its per-channel gate).
    Mul {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// A learned tensor as the second operand, as `add`'s.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        param: Option<String>,
    },
    /// The layers of `inputs` joined along the first dimension of a sample (channels of
    /// `[C, H, W]` maps of one size, features of vectors, tokens of `[tokens, d]`), as
    /// `torch.cat(dim=1)`. With `param`, a learned tensor of the state_dict goes first and the
    /// layer's input after it (a ViT's class token: `torch.cat([cls.expand(N, -1, -1), x],
    /// dim=1)`); the tensor may have a leading batch dimension of 1.
    Concat {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        param: Option<String>,
    },
}

/// How `upsample` fills its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpsampleMode {
    /// Each input value repeated `scale` times along each axis.
    #[default]
    Nearest,
    /// Each output value interpolated between the two nearest input values along each axis,
    /// as PyTorch's `mode = "bilinear"`: output `o` reads input position `(o + 0.5) / scale −
    /// 0.5` (at least 0), or `o · (in − 1) / (out − 1)` with `align_corners`.
    Bilinear,
}

impl UpsampleMode {
    pub fn name(self) -> &'static str {
        match self {
            UpsampleMode::Nearest => "nearest",
            UpsampleMode::Bilinear => "bilinear",
        }
    }
}

/// The element-wise functions among the operations, as the engine and the reference apply
/// them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Relu,
    Relu6,
    LeakyRelu(f64),
    Gelu,
    Tanh,
    Sigmoid,
    Silu,
    Hardswish,
    Hardsigmoid,
}

impl OpSpec {
    /// The op's name as written in the schema.
    pub fn op_name(&self) -> &'static str {
        match self {
            OpSpec::Linear { .. } => "linear",
            OpSpec::Conv2d { .. } => "conv2d",
            OpSpec::Conv1d { .. } => "conv1d",
            OpSpec::Embedding { .. } => "embedding",
            OpSpec::LayerNorm { .. } => "layer_norm",
            OpSpec::Batchnorm { .. } => "batchnorm",
            OpSpec::Relu {} => "relu",
            OpSpec::Relu6 {} => "relu6",
            OpSpec::LeakyRelu { .. } => "leaky_relu",
            OpSpec::Gelu {} => "gelu",
            OpSpec::Tanh {} => "tanh",
            OpSpec::Sigmoid {} => "sigmoid",
            OpSpec::Silu {} => "silu",
            OpSpec::Hardswish {} => "hardswish",
            OpSpec::Hardsigmoid {} => "hardsigmoid",
            OpSpec::Maxpool2d { .. } => "maxpool2d",
            OpSpec::Avgpool2d { .. } => "avgpool2d",
            OpSpec::GlobalAvgpool {} => "global_avgpool",
            OpSpec::AdaptiveAvgpool { .. } => "adaptive_avgpool",
            OpSpec::Upsample { .. } => "upsample",
            OpSpec::Flatten { .. } => "flatten",
            OpSpec::Reshape { .. } => "reshape",
            OpSpec::Transpose { .. } => "transpose",
            OpSpec::Select { .. } => "select",
            OpSpec::Mean { .. } => "mean",
            OpSpec::Attention { .. } => "attention",
            OpSpec::Dropout { .. } => "dropout",
            OpSpec::Softmax {} => "softmax",
            OpSpec::Add { .. } => "add",
            OpSpec::Mul { .. } => "mul",
            OpSpec::Concat { .. } => "concat",
        }
    }

    /// The element-wise function this op applies, if it is one.
    pub fn activation(&self) -> Option<Activation> {
        Some(match self {
            OpSpec::Relu {} => Activation::Relu,
            OpSpec::Relu6 {} => Activation::Relu6,
            OpSpec::LeakyRelu { slope } => Activation::LeakyRelu(*slope),
            OpSpec::Gelu {} => Activation::Gelu,
            OpSpec::Tanh {} => Activation::Tanh,
            OpSpec::Sigmoid {} => Activation::Sigmoid,
            OpSpec::Silu {} => Activation::Silu,
            OpSpec::Hardswish {} => Activation::Hardswish,
            OpSpec::Hardsigmoid {} => Activation::Hardsigmoid,
            _ => return None,
        })
    }

    /// A batchnorm over the tensors `<prefix>.weight`, `.bias`, `.running_mean` and
    /// `.running_var`, as PyTorch names them.
    pub fn batchnorm(prefix: &str) -> OpSpec {
        let t = |s: &str| format!("{prefix}.{s}");
        OpSpec::Batchnorm {
            weight: t("weight"),
            bias: t("bias"),
            running_mean: t("running_mean"),
            running_var: t("running_var"),
            eps: default_eps(),
        }
    }

    /// The layer besides its input that a join names in `from`.
    pub fn from_name(&self) -> Option<&str> {
        match self {
            OpSpec::Add { from, .. } | OpSpec::Mul { from, .. } => from.as_deref(),
            _ => None,
        }
    }

    /// The learned tensor a join takes as its second operand.
    pub fn param(&self) -> Option<&str> {
        match self {
            OpSpec::Add { param, .. } | OpSpec::Mul { param, .. } | OpSpec::Concat { param } => {
                param.as_deref()
            }
            _ => None,
        }
    }

    /// The state_dict tensor the layer's name defaults to the prefix of, for ops with weights.
    pub fn weight(&self) -> Option<&str> {
        match self {
            OpSpec::Linear { weight, .. }
            | OpSpec::Conv2d { weight, .. }
            | OpSpec::Conv1d { weight, .. }
            | OpSpec::Embedding { weight, .. }
            | OpSpec::Batchnorm { weight, .. } => Some(weight),
            OpSpec::LayerNorm { weight, .. } => weight.as_deref(),
            _ => None,
        }
    }

    /// The bias tensor of a linear or conv layer, when it has one.
    pub fn bias(&self) -> Option<&str> {
        match self {
            OpSpec::Linear { bias, .. }
            | OpSpec::Conv2d { bias, .. }
            | OpSpec::Conv1d { bias, .. } => bias.as_deref(),
            _ => None,
        }
    }
}

impl From<Activation> for OpSpec {
    fn from(a: Activation) -> OpSpec {
        match a {
            Activation::Relu => OpSpec::Relu {},
            Activation::Relu6 => OpSpec::Relu6 {},
            Activation::LeakyRelu(slope) => OpSpec::LeakyRelu { slope },
            Activation::Gelu => OpSpec::Gelu {},
            Activation::Tanh => OpSpec::Tanh {},
            Activation::Sigmoid => OpSpec::Sigmoid {},
            Activation::Silu => OpSpec::Silu {},
            Activation::Hardswish => OpSpec::Hardswish {},
            Activation::Hardsigmoid => OpSpec::Hardsigmoid {},
        }
    }
}

impl Activation {
    /// The function's name as written in the schema.
    pub fn name(self) -> &'static str {
        OpSpec::from(self).op_name()
    }
}

impl LayerSpec {
    /// A layer without an explicit name.
    pub fn unnamed(op: OpSpec) -> LayerSpec {
        LayerSpec {
            name: None,
            inputs: Vec::new(),
            op,
        }
    }

    /// Every value the layer names, in `inputs` then `from`.
    pub fn named_inputs(&self) -> impl Iterator<Item = &str> {
        self.inputs
            .iter()
            .map(String::as_str)
            .chain(self.op.from_name())
    }

    /// The op's name as written in the schema.
    pub fn op_name(&self) -> &'static str {
        self.op.op_name()
    }

    /// The explicit name, if the description gives one.
    pub fn explicit_name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The display name: explicit, else the weight tensor's prefix, else `op` + position.
    pub fn display_name(&self, index: usize) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        match self.op.weight() {
            Some(weight) => tensor_prefix(weight).to_string(),
            None => format!("{}{}", self.op_name(), index),
        }
    }
}

/// Written as the operation's own fields with `name` after the `op` tag, so a layer reads
/// `op = "linear"`, `name = "fc1"`, `weight = ...` in both TOML and JSON.
impl Serialize for LayerSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        // The derived form keeps the fields in declaration order; read back as an ordered list
        // of entries so `name` can go right after the tag.
        let text = serde_json::to_string(&self.op).map_err(S::Error::custom)?;
        let entries: OrderedEntries = serde_json::from_str(&text).map_err(S::Error::custom)?;
        let extra = usize::from(self.name.is_some()) + usize::from(!self.inputs.is_empty());
        let mut map = s.serialize_map(Some(entries.0.len() + extra))?;
        for (key, value) in &entries.0 {
            map.serialize_entry(key, value)?;
            if key == "op" {
                if let Some(name) = &self.name {
                    map.serialize_entry("name", name)?;
                }
                match &self.inputs[..] {
                    [] => {}
                    [one] => map.serialize_entry("input", one)?,
                    many => map.serialize_entry("inputs", many)?,
                }
            }
        }
        map.end()
    }
}

/// Read as a table whose `name`, `input` and `inputs` belong to the layer and whose other keys
/// to the operation
/// (so unknown keys are refused per operation). The table is held as TOML values, which keep
/// every float (a `nan` slope is refused by its check, not lost); a JSON `null` is an absent key.
impl<'de> Deserialize<'de> for LayerSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let entries = std::collections::BTreeMap::<String, Option<toml::Value>>::deserialize(d)?;
        let mut table: toml::Table = entries
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        let name = match table.remove("name") {
            None => None,
            Some(toml::Value::String(s)) => Some(s),
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "invalid type: {} for `name`, expected a string",
                    other.type_str()
                )));
            }
        };
        let mut inputs = Vec::new();
        for key in ["input", "inputs"] {
            let Some(value) = table.remove(key) else {
                continue;
            };
            if !inputs.is_empty() {
                return Err(D::Error::custom(
                    "give `input` (one layer) or `inputs` (a list), not both",
                ));
            }
            inputs = match value {
                toml::Value::String(s) if key == "input" => vec![s],
                toml::Value::Array(a) if key == "inputs" && !a.is_empty() => a
                    .into_iter()
                    .map(|v| match v {
                        toml::Value::String(s) => Ok(s),
                        other => Err(D::Error::custom(format!(
                            "invalid type: {} in `inputs`, expected layer names",
                            other.type_str()
                        ))),
                    })
                    .collect::<Result<_, _>>()?,
                other => {
                    return Err(D::Error::custom(format!(
                        "invalid value: {} for `{key}`, expected {}",
                        other.type_str(),
                        if key == "input" {
                            "a layer name"
                        } else {
                            "a non-empty list of layer names"
                        }
                    )));
                }
            };
        }
        // One line, as every message is (the value's error puts the key on a line of its own).
        let op = OpSpec::deserialize(toml::Value::Table(table)).map_err(|e| {
            let msg = e.to_string();
            D::Error::custom(msg.split_whitespace().collect::<Vec<_>>().join(" "))
        })?;
        Ok(LayerSpec { name, inputs, op })
    }
}

/// A JSON object's entries in the order written.
struct OrderedEntries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for OrderedEntries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = OrderedEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<OrderedEntries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(OrderedEntries(out))
            }
        }
        d.deserialize_map(Entries)
    }
}

/// `"features.0.weight"` → `"features.0"`; a name without a dot is its own prefix.
pub fn tensor_prefix(tensor: &str) -> &str {
    tensor.rsplit_once('.').map_or(tensor, |(p, _)| p)
}

/// A TOML parse error on one line, as every error message is: `line 3, column 1: duplicate
/// key` (toml's own rendering quotes the source over several lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TomlError {
    /// Line and column (from 1) where the parser stopped, when it says.
    pub at: Option<(usize, usize)>,
    /// toml's message, its lines joined by "; ".
    pub msg: String,
}

impl TomlError {
    pub fn new(text: &str, e: &toml::de::Error) -> TomlError {
        let msg = e
            .message()
            .trim()
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; ");
        let at = e.span().map(|span| {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (line, column)
        });
        TomlError { at, msg }
    }
}

impl std::fmt::Display for TomlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.at {
            Some((line, column)) => write!(f, "line {line}, column {column}: {}", self.msg),
            None => f.write_str(&self.msg),
        }
    }
}

impl std::error::Error for TomlError {}

/// Every problem of a TOML description, each at its own `[[layer]]`'s line, on one line
/// separated by "; " (as every message is one line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TomlErrors(pub Vec<TomlError>);

impl std::fmt::Display for TomlErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("; "))
    }
}

impl std::error::Error for TomlErrors {}

/// A description as TOML holds it, each layer a table read on its own (so a problem is
/// reported at its own layer, and every layer's problem in one run).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArch {
    input: InputSpec,
    #[serde(rename = "layer", default)]
    layers: Vec<toml::Spanned<toml::Table>>,
}

impl ArchSpec {
    /// Parses a TOML description, reporting every layer's problem at its line.
    pub fn from_toml(text: &str) -> Result<Self, TomlErrors> {
        let raw: RawArch =
            toml::from_str(text).map_err(|e| TomlErrors(vec![TomlError::new(text, &e)]))?;
        let mut layers = Vec::with_capacity(raw.layers.len());
        let mut problems = Vec::new();
        for table in raw.layers {
            let start = table.span().start;
            match LayerSpec::deserialize(toml::Value::Table(table.into_inner())) {
                Ok(l) => layers.push(l),
                Err(e) => {
                    let before = text.get(..start).unwrap_or(text);
                    let line = before.matches('\n').count() + 1;
                    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    problems.push(TomlError {
                        at: Some((line, column)),
                        msg: e
                            .to_string()
                            .split_whitespace()
                            .collect::<Vec<_>>()
                            .join(" "),
                    });
                }
            }
        }
        if problems.is_empty() {
            Ok(ArchSpec {
                input: raw.input,
                layers,
            })
        } else {
            Err(TomlErrors(problems))
        }
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
        match &spec.layers[2].op {
            OpSpec::Conv2d {
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
    fn a_layer_is_written_op_first_then_its_name_then_its_fields() {
        let text = "[input]\nshape = [4]\n[[layer]]\nname = \"fc1\"\nop = \"linear\"\nout_features = 3\nweight = \"0.weight\"\n[[layer]]\nop = \"relu\"\n";
        let spec = ArchSpec::from_toml(text).unwrap();
        assert_eq!(
            spec.to_json(),
            r#"{"input":{"shape":[4],"scale":1.0,"mean":[0.0],"std":[1.0]},"layer":[{"op":"linear","name":"fc1","weight":"0.weight","out_features":3},{"op":"relu"}]}"#
        );
        assert_eq!(ArchSpec::from_toml(&spec.to_toml()).unwrap(), spec);
        let e = ArchSpec::from_toml("[input]\nshape=[4]\n[[layer]]\nop = \"relu\"\nname = 3\n")
            .unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].at.map(|(line, _)| line), Some(3));
        assert!(e.0[0].msg.contains("name"), "{e}");
        assert!(e.to_string().starts_with("line 3, column "), "{e}");
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
