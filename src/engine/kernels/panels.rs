//! Many input columns through a layer as one blocked matrix product (`gemm.rs`): the layer is
//! decoded once, when it is prepared, into the product's row panels, whatever its storage
//! format (zeros where pruned), so batches and convolution positions run at the product's
//! speed. It costs `rows × cols × 4` bytes of memory at run time, never stored bytes.

use super::super::format::PackedLayer;
use super::super::gemm::{self, Lhs, Rhs};
use super::common::{KernelScratch, fill_bias};
use crate::engine::cpu::Avx512;

/// Stored entries per weight from which a sparse layer's batches run as a dense matrix product
/// over its decoded panels rather than one axpy per kept weight (`gathered::GatheredBatch`):
/// the sparse kernel reloads `p` inputs from memory per kept weight, the product keeps its tile
/// in registers. Measured with `squeeze bench` on LeNet-300-100's 10k set: at 50 % (2:4 + f16)
/// the product takes 31–36 ms where the sparse kernel took 49 ms; at 10 % (l1 90 %) the sparse
/// kernel takes 11–15 ms against the product's 31–36 ms. The threshold sits between the two.
pub(super) const SPARSE_GEMM_DENSITY: f64 = 0.3;

/// The layer in the matrix product's row panels, with its bias.
#[derive(Debug, Clone)]
pub(super) struct GemmPanels {
    rows: usize,
    cols: usize,
    panels: Vec<f32>,
    bias: Option<Vec<f32>>,
    avx512: Option<Avx512>,
}

impl GemmPanels {
    pub(super) fn new(layer: &PackedLayer, avx512: Option<Avx512>) -> Self {
        let mut panels = Vec::new();
        gemm::row_panels(&layer.dequantized(), layer.rows, layer.cols, &mut panels);
        GemmPanels {
            rows: layer.rows,
            cols: layer.cols,
            panels,
            bias: layer.bias.clone(),
            avx512,
        }
    }

    /// `y (rows × p) = bias + W · b` for `b` feature-major (`cols × p`).
    pub(super) fn run(&self, b: &[f32], p: usize, y: &mut [f32], s: &mut KernelScratch) {
        self.product(Rhs::Rows(b), p, y, s);
    }

    /// `y (rows × p) = bias + W · xᵀ` for `x` sample-major (`p × cols`): the product copies `x`
    /// into its column panels itself, so the caller needs no transposed copy.
    pub(super) fn run_samples(&self, x: &[f32], p: usize, y: &mut [f32], s: &mut KernelScratch) {
        self.product(Rhs::Cols(x), p, y, s);
    }

    fn product(&self, b: Rhs<'_>, p: usize, y: &mut [f32], s: &mut KernelScratch) {
        fill_bias(&self.bias, 0..self.rows, p, y);
        let a = Lhs {
            panels: &self.panels,
            m: self.rows,
            k: self.cols,
        };
        gemm::product(self.avx512, a, p, b, y, &mut s.gemm);
    }
}
