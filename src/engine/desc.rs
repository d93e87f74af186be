//! The words a compressed file's metadata (`squeeze.layers`) describes each stored layer with:
//! its shapes, its op as the architecture schema writes it, and the storage format of a
//! linear/conv layer's packed weights.

use serde::{Deserialize, Serialize};

use crate::compress::Granularity;
use crate::model::OpSpec;

/// How one layer of the graph is stored: its shapes, its op in the architecture schema's words
/// and, for a linear/conv layer, the format of its packed weights. An unfolded batchnorm's
/// values are the tensors `<name>.scale` and `<name>.shift`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerDesc {
    pub name: String,
    pub in_shape: Vec<usize>,
    pub out_shape: Vec<usize>,
    /// The values the layer reads when not only the previous layer's output (the schema's
    /// `inputs`; `add` and `mul` name their second in the op's `from`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    pub spec: OpSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<FormatDesc>,
}

/// The storage format of one linear/conv layer; the buffers are tensors `<layer>.<part>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormatDesc {
    pub rows: usize,
    pub cols: usize,
    pub entries: usize,
    pub index: IndexDesc,
    pub values: ValuesDesc,
    pub bias: bool,
    /// Bits of the input activation quantization (`<layer>.act_scale`, `.act_zero_point`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_bits: Option<u8>,
    /// The layer's Huffman-coded size (`PackedLayer::entropy_bytes`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy_bytes: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IndexDesc {
    Dense,
    /// `<layer>.gaps` (4-bit packed or 8-bit as U8, 16-bit as U16) and `<layer>.row_ptr`.
    Csr {
        gap_bits: u8,
        row_ptr_bits: u8,
    },
    /// `<layer>.mask`, one bit per position.
    Bitmask,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ValuesDesc {
    F32,
    F16,
    Bf16,
    /// `<layer>.values` (bit-packed codes), `<layer>.scales`, `<layer>.zero_points` unless
    /// `zero_points` is `"midpoint"`.
    Uniform {
        bits: u8,
        granularity: Granularity,
        zero_points: String,
    },
    /// `<layer>.values` (bit-packed codes) and `<layer>.codebook`.
    Codebook {
        bits: u8,
        size: usize,
    },
}
