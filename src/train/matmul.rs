//! The matrix products of training (forward and backward of linear and conv layers) on the
//! engine's blocked GEMM, split over rayon by blocks of output rows.
//!
//! Every output element is summed by one thread, over the inner dimension in the GEMM's fixed
//! order, whichever block it falls in: the result does not depend on the number of threads.

use std::cell::Cell;

use rayon::prelude::*;

use crate::engine::gemm::{self, GemmScratch, MR, Rhs};

/// The left-hand operand `A (m × k)` of [`matmul_acc`].
#[derive(Debug, Clone, Copy)]
pub enum Lhs<'a> {
    /// `A` itself, row-major (`m × k`).
    Rows(&'a [f32]),
    /// `Aᵀ`, row-major (`k × m`): a gradient or weight whose transpose is multiplied.
    Cols(&'a [f32]),
}

/// Buffers a thread reuses between products.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    pub(crate) a_panels: Vec<f32>,
    pub(crate) gemm: GemmScratch,
    /// Per-sample buffers of the convolution kernels (im2col columns and their gradient).
    pub(crate) cols: Vec<f32>,
    pub(crate) dcols: Vec<f32>,
}

thread_local! {
    static SCRATCH: Cell<Scratch> = Cell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch buffers (taken out for the call, so a nested call on the
/// same thread gets fresh ones instead of a borrow conflict).
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    let mut s = SCRATCH.with(Cell::take);
    let r = f(&mut s);
    SCRATCH.with(|c| c.set(s));
    r
}

/// Below this many multiply-adds a product runs on the calling thread: splitting it costs more
/// than it saves.
const PARALLEL_MIN: usize = 1 << 16;

/// `y (m × n) += A (m × k) · B (k × n)`, rows of `y` split into blocks across rayon's threads.
///
/// # Panics
/// When an operand is shorter than its shape says.
pub fn matmul_acc(a: Lhs<'_>, m: usize, n: usize, k: usize, b: Rhs<'_>, y: &mut [f32]) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let (Lhs::Rows(av) | Lhs::Cols(av)) = a;
    assert!(
        av.len() >= m * k && y.len() >= m * n,
        "matmul operands too short"
    );
    let panels = m.div_ceil(MR);
    let tasks = if m * n * k < PARALLEL_MIN {
        1
    } else {
        rayon::current_num_threads().min(panels)
    };
    let rows = panels.div_ceil(tasks) * MR;
    let block = |(i, yb): (usize, &mut [f32])| {
        let r0 = i * rows;
        let mr = yb.len() / n;
        with_scratch(|s| {
            match a {
                Lhs::Rows(a) => gemm::row_panels(&a[r0 * k..], mr, k, &mut s.a_panels),
                Lhs::Cols(at) => gemm::row_panels_t(&at[r0..], m, mr, k, &mut s.a_panels),
            }
            gemm::gemm_acc(&s.a_panels, mr, n, k, b, yb, &mut s.gemm);
        });
    };
    let y = &mut y[..m * n];
    if tasks == 1 {
        block((0, y));
    } else {
        y.par_chunks_mut(rows * n).enumerate().for_each(block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    y[i * n + j] += a[i * k + p] as f64 * b[p * n + j] as f64;
                }
            }
        }
        y
    }

    fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut t = vec![0f32; a.len()];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = a[r * cols + c];
            }
        }
        t
    }

    #[test]
    fn every_operand_layout_gives_the_product() {
        // Shapes around the panel sizes, and one large enough to be split across threads.
        for (m, n, k) in [(1, 1, 1), (13, 33, 7), (10, 32, 161), (128, 300, 97)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 * 0.25).collect();
            let want = naive(&a, &b, m, n, k);
            let (at, bt) = (transpose(&a, m, k), transpose(&b, k, n));
            for (lhs, rhs) in [
                (Lhs::Rows(&a), Rhs::Rows(&b)),
                (Lhs::Cols(&at), Rhs::Rows(&b)),
                (Lhs::Rows(&a), Rhs::Cols(&bt)),
                (Lhs::Cols(&at), Rhs::Cols(&bt)),
            ] {
                let mut y = vec![1f32; m * n];
                matmul_acc(lhs, m, n, k, rhs, &mut y);
                for (g, w) in y.iter().zip(&want) {
                    // Small integers and quarters: exact in f32.
                    assert_eq!(*g as f64, w + 1.0, "{m}×{n}×{k}");
                }
            }
        }
    }
}
