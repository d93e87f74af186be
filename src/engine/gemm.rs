//! The f32 matrix product behind batched linear layers and convolutions:
//! `Y (m × n) += A (m × k) · B (k × n)`, all row-major, single-threaded (callers parallelise
//! over batches).
//!
//! The layout follows the classic blocked design (Goto & van de Geijn):
//! - `A` (the weights) is stored once in *row panels* of `MR` rows, each panel `k`-major
//!   (`k × MR`), rows past `m` zero (`row_panels`), so the micro-kernel reads it sequentially;
//! - `B` (activations, im2col columns) is copied per call in blocks of at most `KC` steps of `k`
//!   into column panels of `NR` columns (`kc × NR`, columns past `n` zero), a panel small enough
//!   to stay in the L1 cache while every row panel of `A` streams past it;
//! - the micro-kernel keeps an `MR × NR` tile of `Y` in registers for the whole `k` block: per
//!   step two vector loads of `B`, `MR` broadcasts of `A` and `2·MR` FMAs.
//!
//! The AVX-512 micro-kernel runs where the caller holds the `cpu::Avx512` token (`gemm_acc`
//! asks `cpu::Isa::current()`); the portable one computes the same tile with plain loops (the
//! compiler vectorises it for the target).

use super::cpu::{Avx512, Isa};
#[cfg(target_arch = "x86_64")]
use super::simd;

/// Rows of `A` per panel and per register tile.
pub const MR: usize = 10;
/// Columns of `B` per panel (two 16-lane vectors).
pub const NR: usize = 32;
// `transpose_col_panels` fills panels 16 columns at a time.
const _: () = assert!(NR.is_multiple_of(16));
/// Largest block of the inner dimension: a `KC × NR` panel of `B` is 20 KiB, inside L1.
const KC: usize = 160;

/// Length of `A`'s panel layout for an `m × k` matrix.
pub fn row_panels_len(m: usize, k: usize) -> usize {
    m.div_ceil(MR) * MR * k
}

/// Writes `w` (`m × k`, row-major) into `out` as row panels: element `(r, c)` goes to
/// `(r / MR)·MR·k + c·MR + r % MR`; the rows of the last panel past `m` are zero.
pub fn row_panels(w: &[f32], m: usize, k: usize, out: &mut Vec<f32>) {
    out.clear();
    out.resize(row_panels_len(m, k), 0.0);
    for (r, row) in w[..m * k].chunks_exact(k.max(1)).enumerate().take(m) {
        let base = (r / MR) * MR * k + r % MR;
        for (c, &v) in row.iter().enumerate() {
            out[base + c * MR] = v;
        }
    }
}

/// `row_panels` for an `A` held transposed: row `c` of `at` holds column `c` of `A`
/// (`at[c·ld .. c·ld + m]`, `ld ≥ m`), as when a backward product multiplies by the transpose
/// of a row-major gradient or weight. Each panel row is then one contiguous copy.
pub fn row_panels_t(at: &[f32], ld: usize, m: usize, k: usize, out: &mut Vec<f32>) {
    out.clear();
    out.resize(row_panels_len(m, k), 0.0);
    for (rp, panel) in out.chunks_exact_mut(MR * k.max(1)).enumerate() {
        let r0 = rp * MR;
        let rows = MR.min(m - r0);
        for (c, dst) in panel.chunks_exact_mut(MR).enumerate().take(k) {
            dst[..rows].copy_from_slice(&at[c * ld + r0..c * ld + r0 + rows]);
        }
    }
}

/// Buffers `gemm_acc` reuses between calls.
#[derive(Debug, Default, Clone)]
pub struct GemmScratch {
    col_panels: Vec<f32>,
}

/// The right-hand operand of `gemm_acc`, `B (k × n)`, in one of two layouts.
#[derive(Debug, Clone, Copy)]
pub enum Rhs<'a> {
    /// `B` itself, row-major (`k × n`): feature-major activations, im2col columns.
    Rows(&'a [f32]),
    /// `Bᵀ`, row-major (`n × k`): sample-major activations, each sample's `k` inputs
    /// contiguous. Its column panels are filled by 16 × 16 register transposes, so a batch needs no
    /// transposed copy of its own.
    Cols(&'a [f32]),
}

/// `A (m × k)` in `row_panels`'s layout.
#[derive(Debug, Clone, Copy)]
pub struct Lhs<'a> {
    pub panels: &'a [f32],
    pub m: usize,
    pub k: usize,
}

/// `y (m × n) += A (m × k) · B (k × n)` with `a` in `row_panels`'s panel layout, on the
/// AVX-512 micro-kernel where the CPU has it.
///
/// # Panics
/// When a slice is shorter than its shape says.
pub fn gemm_acc(
    a: &[f32],
    m: usize,
    n: usize,
    k: usize,
    b: Rhs<'_>,
    y: &mut [f32],
    s: &mut GemmScratch,
) {
    let a = Lhs { panels: a, m, k };
    product(Isa::current().avx512, a, n, b, y, s);
}

/// `gemm_acc` on the AVX-512 micro-kernel when given the token, else on the portable one.
pub(crate) fn product(
    avx512: Option<Avx512>,
    a: Lhs<'_>,
    n: usize,
    b: Rhs<'_>,
    y: &mut [f32],
    s: &mut GemmScratch,
) {
    let Lhs { panels: a, m, k } = a;
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let (Rhs::Rows(bs) | Rhs::Cols(bs)) = b;
    assert!(
        a.len() >= row_panels_len(m, k) && bs.len() >= k * n && y.len() >= m * n,
        "gemm operands too short"
    );
    let blocks = k.div_ceil(KC);
    let kc_max = k.div_ceil(blocks);
    let panels = n.div_ceil(NR);
    let row_panel_count = m.div_ceil(MR);
    for kb in 0..blocks {
        let k0 = kb * kc_max;
        let k1 = (k0 + kc_max).min(k);
        let kc = k1 - k0;
        match b {
            Rhs::Rows(b) => copy_col_panels(&b[k0 * n..k1 * n], kc, n, &mut s.col_panels),
            Rhs::Cols(bt) => transpose_col_panels(avx512, bt, k, k0, kc, n, &mut s.col_panels),
        }
        for jp in 0..panels {
            let j0 = jp * NR;
            let cols = NR.min(n - j0);
            let bp = &s.col_panels[jp * kc * NR..(jp + 1) * kc * NR];
            for rp in 0..row_panel_count {
                let r0 = rp * MR;
                let rows = MR.min(m - r0);
                let ap = &a[rp * MR * k + k0 * MR..rp * MR * k + k1 * MR];
                let yt = &mut y[r0 * n + j0..];
                #[cfg(target_arch = "x86_64")]
                if avx512.is_some() {
                    // SAFETY: the `Avx512` token vouches for AVX-512F; `ap` holds `kc × MR` and
                    // `bp` `kc × NR` values (slices checked above); the tile writes rows
                    // `< rows` at stride `n` and columns `< cols`, all inside `yt` since
                    // `r0 + rows ≤ m` and `j0 + cols ≤ n`.
                    unsafe {
                        // A panel of at most 16 columns (a convolution over 4 × 4 positions,
                        // a narrow last panel) computes only the half that holds them.
                        if cols <= 16 {
                            x86::micro::<1>(kc, ap, bp, yt, n, rows, cols)
                        } else {
                            x86::micro::<2>(kc, ap, bp, yt, n, rows, cols)
                        }
                    };
                    continue;
                }
                micro_portable(kc, ap, bp, yt, n, rows, cols);
            }
        }
    }
}

/// Copies `b` (`kc × n`) into column panels of `NR` (`kc × NR` each, columns past `n` zero).
fn copy_col_panels(b: &[f32], kc: usize, n: usize, out: &mut Vec<f32>) {
    let panels = n.div_ceil(NR);
    // Grown, never shrunk: every value read is written below, so a later, larger call
    // need not zero what an earlier one left.
    if out.len() < panels * kc * NR {
        out.resize(panels * kc * NR, 0.0);
    }
    for jp in 0..panels {
        let j0 = jp * NR;
        let w = NR.min(n - j0);
        let dst = &mut out[jp * kc * NR..(jp + 1) * kc * NR];
        for (kk, d) in dst.chunks_exact_mut(NR).enumerate() {
            let src = &b[kk * n + j0..kk * n + j0 + w];
            if let (Ok(d), Ok(src)) = (
                <&mut [f32; NR]>::try_from(&mut *d),
                <&[f32; NR]>::try_from(src),
            ) {
                // A whole panel row: a fixed-size copy the compiler does in two vector moves.
                *d = *src;
            } else {
                d[..w].copy_from_slice(src);
                d[w..].fill(0.0);
            }
        }
    }
}

/// `copy_col_panels` for `Bᵀ` (`bt`, `n × k`): columns `k0 .. k0 + kc` of its rows into the same
/// panels, 16 × 16 blocks in registers given the `Avx512` token.
fn transpose_col_panels(
    avx512: Option<Avx512>,
    bt: &[f32],
    k: usize,
    k0: usize,
    kc: usize,
    n: usize,
    out: &mut Vec<f32>,
) {
    assert!(bt.len() >= n * k && k0 + kc <= k, "gemm operand too short");
    let panels = n.div_ceil(NR);
    if out.len() < panels * kc * NR {
        out.resize(panels * kc * NR, 0.0);
    }
    for jp in 0..panels {
        let dst = &mut out[jp * kc * NR..(jp + 1) * kc * NR];
        for h in 0..NR / 16 {
            // Samples `j0 .. j0 + 16` go to lanes `16h .. 16h + 16` of each panel row.
            let j0 = jp * NR + 16 * h;
            let mut kk = 0;
            #[cfg(target_arch = "x86_64")]
            if avx512.is_some() && j0 + 16 <= n {
                while kk + 16 <= kc {
                    // SAFETY: the `Avx512` token vouches for AVX-512F; the block reads rows
                    // `j0 .. j0 + 16 ≤ n` of `bt` at columns `k0 + kk .. + 16 ≤ k` (`bt.len() ≥
                    // n·k`, asserted above) and writes panel rows `kk .. kk + 16 ≤ kc`, lanes
                    // `16h .. 16h + 16 ≤ NR`, inside `dst` (`kc × NR`).
                    unsafe {
                        simd::transpose16(
                            bt.as_ptr().add(j0 * k + k0 + kk),
                            k,
                            dst.as_mut_ptr().add(kk * NR + 16 * h),
                            NR,
                        )
                    };
                    kk += 16;
                }
            }
            for kk in kk..kc {
                let row = &mut dst[kk * NR + 16 * h..kk * NR + 16 * h + 16];
                for (j, d) in row.iter_mut().enumerate() {
                    *d = if j0 + j < n {
                        bt[(j0 + j) * k + k0 + kk]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// Rows and columns of the portable kernel's sub-tile: 5 × 16 accumulators are ten 8-lane
/// registers, which with two loads of `B` and a broadcast of `A` fit the 16 an AVX2 core has;
/// the whole `MR × NR` tile does not, and the compiler then keeps it in memory, one scalar
/// FMA at a time.
const SUB_ROWS: usize = 5;
const SUB_COLS: usize = 16;
const _: () = assert!(MR.is_multiple_of(SUB_ROWS) && NR.is_multiple_of(SUB_COLS));

/// The portable `MR × NR` tile: `y[i·ldy + j] += Σ_kk a[kk·MR + i] · b[kk·NR + j]` for
/// `i < rows`, `j < cols`, one `SUB_ROWS × SUB_COLS` sub-tile at a time (sub-tiles wholly past
/// `rows` or `cols` skipped). Each value is one FMA chain over `kk` in order, as in the AVX-512
/// kernel.
fn micro_portable(
    kc: usize,
    a: &[f32],
    b: &[f32],
    y: &mut [f32],
    ldy: usize,
    rows: usize,
    cols: usize,
) {
    for r0 in (0..rows).step_by(SUB_ROWS) {
        for c0 in (0..cols).step_by(SUB_COLS) {
            let mut acc = [[0f32; SUB_COLS]; SUB_ROWS];
            for (av, bv) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kc) {
                let (av, bv) = (&av[r0..r0 + SUB_ROWS], &bv[c0..c0 + SUB_COLS]);
                for (acc_row, &ai) in acc.iter_mut().zip(av) {
                    for (v, &bj) in acc_row.iter_mut().zip(bv) {
                        *v = ai.mul_add(bj, *v);
                    }
                }
            }
            let width = SUB_COLS.min(cols - c0);
            for (i, row) in acc.iter().enumerate().take(rows - r0) {
                for (yv, &v) in y[(r0 + i) * ldy + c0..][..width].iter_mut().zip(row) {
                    *yv += v;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// The AVX-512 `MR × NR` tile, or its first `16·H` columns: `H·MR` accumulators held in
    /// registers across the `k` block.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `a.len() ≥ kc·MR`, `b.len() ≥ kc·NR`, and `y` holds
    /// `(rows − 1)·ldy + cols` values, `rows ≤ MR`, `cols ≤ 16·H ≤ NR`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn micro<const H: usize>(
        kc: usize,
        a: &[f32],
        b: &[f32],
        y: &mut [f32],
        ldy: usize,
        rows: usize,
        cols: usize,
    ) {
        const { assert!(H >= 1 && 16 * H <= NR) };
        assert!(a.len() >= kc * MR && b.len() >= kc * NR && rows <= MR && cols <= 16 * H);
        assert!(rows == 0 || y.len() >= (rows - 1) * ldy + cols);
        let (mut ap, mut bp) = (a.as_ptr(), b.as_ptr());
        let mut acc = [[_mm512_setzero_ps(); H]; MR];
        // SAFETY: for the whole block, step `kk < kc` reads `a[kk·MR .. kk·MR + MR]` and
        // `b[kk·NR .. kk·NR + NR]`, inside both slices (asserted above); the tile loads and
        // stores are masked to the `cols` columns of the `rows` rows that `y` holds.
        unsafe {
            for _ in 0..kc {
                let mut bv = [_mm512_setzero_ps(); H];
                for (h, v) in bv.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(bp.add(16 * h));
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*ap.add(i));
                    for (a, &b) in acc.iter_mut().zip(&bv) {
                        *a = _mm512_fmadd_ps(av, b, *a);
                    }
                }
                ap = ap.add(MR);
                bp = bp.add(NR);
            }
            let lanes = |c: usize| -> __mmask16 {
                if c >= 16 {
                    0xFFFF
                } else {
                    ((1u32 << c) - 1) as __mmask16
                }
            };
            let (m0, m1) = (lanes(cols), lanes(cols.saturating_sub(16)));
            let yp = y.as_mut_ptr();
            for (i, acc) in acc.iter().enumerate().take(rows) {
                let p0 = yp.add(i * ldy);
                let c0 = _mm512_maskz_loadu_ps(m0, p0);
                _mm512_mask_storeu_ps(p0, m0, _mm512_add_ps(c0, acc[0]));
                if let Some(&a1) = acc.get(1) {
                    let p1 = p0.wrapping_add(16);
                    let c1 = _mm512_maskz_loadu_ps(m1, p1);
                    _mm512_mask_storeu_ps(p1, m1, _mm512_add_ps(c1, a1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_panels_t_lays_out_the_transpose_as_row_panels() {
        let (m, k, ld) = (23, 7, 25);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 + 0.5).collect();
        let mut at = vec![-1f32; k * ld];
        for r in 0..m {
            for c in 0..k {
                at[c * ld + r] = a[r * k + c];
            }
        }
        let (mut want, mut got) = (Vec::new(), Vec::new());
        row_panels(&a, m, k, &mut want);
        row_panels_t(&at, ld, m, k, &mut got);
        assert_eq!(got, want);
    }
}
