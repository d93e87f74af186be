//! Many input columns through a layer as one blocked matrix product (`gemm.rs`): the layer is
//! decoded once, when it is prepared, into the product's row panels, whatever its storage
//! format (zeros where pruned), so batches and convolution positions run at the product's
//! speed. It costs `rows × cols × 4` bytes of memory at run time, never stored bytes.

use super::super::format::PackedLayer;
use super::super::gemm::{self, ConvRhs, Lhs, Rhs, Start};
use super::super::ops::Clamp;
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
    /// Instead of `panels`, the weights in tall panels (`gemm::tall_panels`), with the token
    /// of the CPU that runs them.
    tall: Option<(Vec<f32>, Avx512)>,
    bias: Option<Vec<f32>>,
    avx512: Option<Avx512>,
}

impl GemmPanels {
    /// The layer in row panels, or in tall panels (`gemm::tall_panels`, only those: a second
    /// copy of the weights would double the bytes each sample streams) for a convolution that
    /// runs on them (`tall`) where the CPU has AVX-512.
    pub(super) fn new(layer: &PackedLayer, avx512: Option<Avx512>, tall: bool) -> Self {
        let (mut panels, w) = (Vec::new(), layer.dequantized());
        let tall = match avx512 {
            Some(avx512) if tall => Some((gemm::tall_panels(&w, layer.rows, layer.cols), avx512)),
            _ => {
                gemm::row_panels(&w, layer.rows, layer.cols, &mut panels);
                None
            }
        };
        GemmPanels {
            rows: layer.rows,
            cols: layer.cols,
            panels,
            tall,
            bias: layer.bias.clone(),
            avx512,
        }
    }

    /// `y (rows × p) = bias + W · b` for `b` feature-major (`cols × p`), bounded by `clamp`.
    pub(super) fn run(
        &self,
        b: &[f32],
        p: usize,
        y: &mut [f32],
        s: &mut KernelScratch,
        clamp: Option<Clamp>,
    ) {
        self.product(Rhs::Rows(b), p, y, s, clamp);
    }

    /// `y (rows × p) = bias + W · xᵀ` for `x` sample-major (`p × cols`): the product copies `x`
    /// into its column panels itself, so the caller needs no transposed copy.
    pub(super) fn run_samples(&self, x: &[f32], p: usize, y: &mut [f32], s: &mut KernelScratch) {
        self.product(Rhs::Cols(x), p, y, s, None);
    }

    /// `y (rows × p) = bias + W · B` for `B` a convolution's im2col matrix, packed from its
    /// input planes by the product itself, bounded by `clamp`.
    /// On tall panels, one sample of a wide map or any samples of a narrow one run as a direct
    /// convolution (`gemm::product_direct`, `gemm::runs_direct`), without their im2col matrix.
    pub(super) fn run_conv(
        &self,
        c: ConvRhs<'_>,
        y: &mut [f32],
        s: &mut KernelScratch,
        clamp: Option<Clamp>,
    ) {
        let p = c.samples * c.shape.positions();
        match &self.tall {
            Some((tall, avx512)) if gemm::runs_direct(c.shape, c.samples) => {
                let a = Lhs {
                    panels: tall,
                    m: self.rows,
                    k: self.cols,
                };
                let bias = self.bias.as_deref();
                gemm::product_direct(*avx512, a, c, y, &mut s.gemm, bias, clamp);
            }
            _ => self.product(Rhs::Conv(c), p, y, s, clamp),
        }
    }

    /// Whether the layer runs on tall panels (`run_conv` runs one sample of a convolution at
    /// least `gemm::DIRECT_MIN_WIDTH` wide as a direct one).
    pub(super) fn direct(&self) -> bool {
        self.tall.is_some()
    }

    /// The product on tall panels bounds its outputs after it (its sums finish in `y`); on
    /// row panels, as it stores them.
    fn product(
        &self,
        b: Rhs<'_>,
        p: usize,
        y: &mut [f32],
        s: &mut KernelScratch,
        clamp: Option<Clamp>,
    ) {
        let (m, k) = (self.rows, self.cols);
        match &self.tall {
            Some((tall, avx512)) => {
                fill_bias(&self.bias, 0..self.rows, p, y);
                let a = Lhs { panels: tall, m, k };
                gemm::product_tall(*avx512, a, p, b, y, &mut s.gemm);
                if let Some(c) = clamp {
                    c.apply(&mut y[..m * p]);
                }
            }
            None => {
                let (a, bias) = (
                    Lhs {
                        panels: &self.panels,
                        m,
                        k,
                    },
                    self.bias.as_deref(),
                );
                let start = Start::Bias(bias);
                gemm::product(self.avx512, a, p, b, y, &mut s.gemm, start, clamp)
            }
        }
    }
}
