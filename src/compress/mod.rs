//! Compression decisions: the recipe (a per-layer plan), pruning, quantization and weight
//! sharing. `apply` turns a model and a recipe into a `Plan`: for every linear/conv layer, which
//! weights survive and which value each one takes. How those values are stored (packed bits,
//! sparse indices) and executed is the engine's business (`crate::engine`).

mod apply;
mod calibrate;
pub mod groups;
pub mod huffman;
pub mod prune;
pub mod quant;
pub mod recipe;

pub use apply::{CompressError, Held, HeldCodebook, LayerSparsity, Sparsity, apply, apply_held};
pub use huffman::{EntropySize, entropy_bytes, entropy_size};
pub use recipe::{
    ActivationSettings, Bits, LayerPlan, LayerRecipe, Observer, Pruning, Rank, Recipe, RecipeError,
    ResolvedRecipe, WeightFormat,
};

use crate::model::Model;

/// How the surviving weights of one layer are represented.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightValues {
    /// Floating point, already rounded to the storage precision (f32, f16 or bf16); pruned
    /// weights are exactly 0.0.
    Float {
        data: Vec<f32>,
        storage: FloatStorage,
    },
    /// Uniform integer levels: weight `i` in group `g` is `scales[g] × (codes[i] − zero_points[g])`.
    /// Codes are in `0..2^bits`. Symmetric schemes use `zero_points[g] = 2^(bits−1)`.
    Uniform {
        bits: u8,
        codes: Vec<u8>,
        scales: Vec<f32>,
        zero_points: Vec<i32>,
        granularity: Granularity,
    },
    /// Weight sharing: weight `i` is `codebook[codes[i]]`, at most `2^bits` entries.
    Codebook {
        bits: u8,
        codes: Vec<u8>,
        codebook: Vec<f32>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FloatStorage {
    F32,
    F16,
    Bf16,
}

/// Which weights share one scale and zero point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Granularity {
    /// One for the whole tensor (group index 0).
    Tensor,
    /// One per output channel (group index = row).
    Channel,
    /// One per `size` consecutive inputs of a row (group index = row × ceil(cols/size) + col/size).
    Group { size: usize },
}

impl Granularity {
    /// The group of the weight at (`row`, `col`) in a `cols`-wide matrix.
    pub fn group_of(self, row: usize, col: usize, cols: usize) -> usize {
        match self {
            Granularity::Tensor => 0,
            Granularity::Channel => row,
            Granularity::Group { size } => row * cols.div_ceil(size) + col / size,
        }
    }

    pub fn group_count(self, rows: usize, cols: usize) -> usize {
        match self {
            Granularity::Tensor => 1,
            Granularity::Channel => rows,
            Granularity::Group { size } => rows * cols.div_ceil(size),
        }
    }
}

/// Static quantization of a layer's input activations (calibrated): the input is rounded to
/// `scale × (q − zero_point)` with `q` in `0..2^bits` before the layer runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivationQuant {
    pub bits: u8,
    pub scale: f32,
    pub zero_point: i32,
}

/// One linear/conv layer after pruning and quantization, viewed as a `rows × cols` matrix
/// (`rows` = output channels, `cols` = inputs per output: `in` for linear,
/// `in/groups × kh × kw` for conv2d, PyTorch's layout flattened).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedLayer {
    /// Index into `Plan::model.layers`.
    pub layer: usize,
    pub rows: usize,
    pub cols: usize,
    /// `true` for weights that survive pruning (row-major, `rows × cols`). A pruned weight is
    /// exactly zero; a kept weight may also quantize to zero.
    pub kept: Vec<bool>,
    /// One entry per weight (`rows × cols`), pruned ones included (they hold the code of zero
    /// or 0.0, and sparse formats skip them).
    pub values: WeightValues,
    /// Biases stay f32.
    pub bias: Option<Vec<f32>>,
    pub activation: Option<ActivationQuant>,
}

/// A model with every compressible layer's decisions made. `model` is the input model, or a
/// physically smaller one when structured pruning removed neurons or filters.
#[derive(Debug, Clone)]
pub struct Plan {
    pub model: Model,
    pub layers: Vec<QuantizedLayer>,
}

impl QuantizedLayer {
    /// Every weight's value (`rows × cols`, row-major), exactly 0.0 where pruned.
    pub fn dequantized(&self) -> Vec<f32> {
        let mut w = quant::dequantize(&self.values, self.rows, self.cols);
        for (v, k) in w.iter_mut().zip(&self.kept) {
            if !k {
                *v = 0.0;
            }
        }
        w
    }

    /// Number of weights that survive pruning.
    pub fn kept_count(&self) -> usize {
        self.kept.iter().filter(|k| **k).count()
    }
}
