//! One input column through a dense layer of uniform codes with one scale per row, of the
//! widths without a kernel of their own (1–3 bits, and 5–7 bits on rows of even length), as
//! bit planes rearranged from the stored bits when the layer is prepared: since `Σ code·x =
//! Σ_b 2^b · Σ_{bit b set} x`, each plane adds the inputs under its mask, one masked add per
//! plane and 16 weights, no unpacking. Codes of 5 to 7 bits keep their low four bits as nibble
//! pairs (run by the 4-bit kernel) and only the bits above as planes.

use super::super::pack;
use super::codes::{ScaledRows, rows4_nibbles};
use super::common::{KernelScratch, by_four_rows, nibble_inputs, sum_f64};
use crate::engine::cpu::Avx512;

/// The codes as bit planes: for row `r` and each run of 16 columns `j`, `planes` 16-bit masks,
/// mask `b` holding bit `b` of those 16 codes (bit `i` of the mask for column `16·j + i`;
/// columns past the row's end are 0), and for codes of 5 to 7 bits the low four bits of every
/// code two per byte. It holds exactly the stored bits, rearranged (plus padding of each row to
/// 16 columns). Made only by `new`, which takes the `Avx512` token.
#[derive(Debug, Clone)]
pub(super) struct PlaneRows {
    /// The per-row scales and zero points (their stored codes are not kept).
    rows: ScaledRows,
    /// Planes per run: the code width, or the width − 4 when `nibbles` holds the low bits; 1
    /// to 3.
    planes: usize,
    /// Masks per row: `ceil(cols / 16) · planes`.
    per_row: usize,
    masks: Vec<u16>,
    /// The low four bits of every code, two per byte (low nibble first), `cols / 2` bytes per
    /// row; empty for codes of 1 to 3 bits.
    nibbles: Vec<u8>,
}

impl PlaneRows {
    /// `None` for widths with a kernel of their own (4 and 8 bits) and for 5- to 7-bit codes
    /// on rows of odd length.
    pub(super) fn new(rows: &ScaledRows, _: Avx512) -> Option<Self> {
        let cols = rows.cols;
        let split = match rows.bits {
            1..=3 => false,
            5..=7 if cols.is_multiple_of(2) => true,
            _ => return None,
        };
        let low = if split { 4 } else { 0 };
        let planes = rows.bits as usize - low;
        let per_row = cols.div_ceil(16) * planes;
        let mut masks = vec![0u16; rows.rows * per_row];
        let mut nibbles = vec![0u8; if split { rows.rows * cols / 2 } else { 0 }];
        let mut row = vec![0u8; cols];
        for (r, out) in masks.chunks_exact_mut(per_row.max(1)).enumerate() {
            pack::unpack_codes(&rows.codes, rows.bits, r * cols, &mut row);
            for (run, m) in row.chunks(16).zip(out.chunks_exact_mut(planes)) {
                for (i, &c) in run.iter().enumerate() {
                    for (plane, mask) in m.iter_mut().enumerate() {
                        *mask |= u16::from((c >> (low + plane)) & 1) << i;
                    }
                }
            }
            if split {
                let half = cols / 2;
                for (b, pair) in nibbles[r * half..(r + 1) * half]
                    .iter_mut()
                    .zip(row.chunks_exact(2))
                {
                    *b = (pair[0] & 0xF) | (pair[1] & 0xF) << 4;
                }
            }
        }
        Some(PlaneRows {
            rows: ScaledRows {
                codes: Vec::new(),
                ..rows.clone()
            },
            planes,
            per_row,
            masks,
            nibbles,
        })
    }

    /// Row `r`'s masks, run after run.
    fn row(&self, r: usize) -> &[u16] {
        &self.masks[r * self.per_row..(r + 1) * self.per_row]
    }

    pub(super) fn run(&self, x: &[f32], y: &mut [f32], s: &mut KernelScratch) {
        let l = &self.rows;
        let x = &x[..l.cols];
        let sum_x = sum_f64(x);
        let split = !self.nibbles.is_empty();
        if split {
            nibble_inputs(x, &mut s.xe, &mut s.xo);
        }
        let (ea, ob, half) = (&s.xe, &s.xo, l.cols / 2);
        by_four_rows(l.rows, &l.bias, y, |ks| {
            let rows = ks.map(|r| self.row(r));
            // SAFETY: a `PlaneRows` exists only where an `Avx512` token vouched for AVX-512 F,
            // the feature the kernel enables; it bounds its loads by the slices.
            let mut d = unsafe {
                match self.planes {
                    1 => x86::rows4_planes::<1>(rows, x),
                    2 => x86::rows4_planes::<2>(rows, x),
                    // `new` makes 1 to 3 planes: what is left is 3.
                    _ => x86::rows4_planes::<3>(rows, x),
                }
            };
            if split {
                let w = ks.map(|r| &self.nibbles[r * half..(r + 1) * half]);
                // SAFETY: as above, for AVX-512 F/BW/VL.
                let lo = unsafe { rows4_nibbles(w, ea, ob) };
                d = [0, 1, 2, 3].map(|k| lo[k] + 16.0 * d[k]);
            }
            [0, 1, 2, 3].map(|k| l.finish(ks[k], d[k], sum_x))
        });
    }
}

mod x86 {
    use std::arch::x86_64::*;

    use crate::engine::simd::{hsum4, low_lanes};

    /// `[Σ_i code_k[i] · x[i]]` for four rows of `B`-bit codes held as bit planes (`BitPlanes`:
    /// per run of 16 columns, `B` masks; zero points and scales are the caller's): every plane
    /// adds the run's inputs under its mask into its own accumulator, and the planes are
    /// combined as `Σ_b 2^b · acc_b` at the end (exact doublings). One masked add per plane and
    /// 16 weights, no unpacking.
    ///
    /// # Safety
    /// The CPU has AVX-512F (a `cpu::Avx512` token).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rows4_planes<const B: usize>(rows: [&[u16]; 4], x: &[f32]) -> [f32; 4] {
        let runs = rows
            .iter()
            .fold(x.len().div_ceil(16), |n, r| n.min(r.len() / B));
        let rp = rows.map(|r| r.as_ptr());
        let xp = x.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); B]; 4];
        for j in 0..runs {
            let at = 16 * j;
            // SAFETY: `at < x.len()`; a short last run loads only lanes `at..x.len()`. Each
            // row has `runs · B` masks, so mask `j·B + b` is in bounds.
            unsafe {
                let xv = if at + 16 <= x.len() {
                    _mm512_loadu_ps(xp.add(at))
                } else {
                    _mm512_maskz_loadu_ps(low_lanes(x.len() - at), xp.add(at))
                };
                for k in 0..4 {
                    for (b, a) in acc[k].iter_mut().enumerate() {
                        let m: __mmask16 = *rp[k].add(j * B + b);
                        *a = _mm512_mask_add_ps(*a, m, *a, xv);
                    }
                }
            }
        }
        let two = _mm512_set1_ps(2.0);
        hsum4(acc.map(|planes| {
            planes[..B - 1]
                .iter()
                .rev()
                .fold(planes[B - 1], |t, &a| _mm512_fmadd_ps(t, two, a))
        }))
    }
}
