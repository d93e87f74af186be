//! Depthwise convolutions (groups with one input channel each, as MobileNet's 3×3 layers):
//! each output channel computed directly from its input plane, without im2col and without a
//! one-row matrix product per channel. The plane is first copied, zero-padded, with its columns
//! split into `stride` phases (column `x` of the padded row goes to phase `x % stride`, index
//! `x / stride`), so the inputs of every kernel tap for `LANES` consecutive output positions are
//! contiguous; those positions are then summed tap by tap in registers, bias first.
//!
//! The weights are the layer's dequantized values whatever its storage format (a depthwise
//! layer holds `kh × kw` weights per channel), so every weight-only format runs here; layers
//! with quantized activations keep the matrix kernels.

use super::super::cpu::{Avx512, Isa};
use super::super::format::PackedLayer;
use super::super::ops::{Cell, ConvShape};

/// Output positions summed at once: one 16-lane register of accumulators.
const LANES: usize = 16;

/// A depthwise layer's taps and bias, with its geometry.
#[derive(Debug, Clone)]
pub(crate) struct Depthwise {
    shape: ConvShape,
    /// `cout × kh·kw`, PyTorch's order.
    taps: Vec<f32>,
    bias: Option<Vec<f32>>,
    /// Values per phase of a padded row: its columns over the stride, plus room past the last
    /// output for a whole `LANES` read from its step's start.
    phase: usize,
    /// Where tap `(i, j)` (at `i·kw + j`) reads for output position 0 of a row, relative to the
    /// row's first padded input row.
    tap_at: Vec<usize>,
    avx512: Option<Avx512>,
}

impl Depthwise {
    /// The kernel for `layer` when it is a depthwise convolution (one input channel per group)
    /// on float inputs; `None` otherwise.
    pub(crate) fn new(layer: &PackedLayer, shape: &ConvShape) -> Option<Self> {
        let s = shape;
        let depthwise = s.groups > 1
            && s.cin == s.groups
            && s.cout.is_multiple_of(s.groups)
            && layer.rows == s.cout
            && layer.cols == s.kh * s.kw
            && s.stride.0 > 0
            && s.stride.1 > 0;
        if !depthwise || layer.activation.is_some() {
            return None;
        }
        let sx = s.stride.1;
        let phase = (s.w + 2 * s.pad.1).div_ceil(sx) + LANES;
        let at = |p: usize| (p % sx) * phase + p / sx;
        let row_len = sx * phase;
        let tap_at = (0..s.kh)
            .flat_map(|i| (0..s.kw).map(move |j| i * s.dil.0 * row_len + at(j * s.dil.1)))
            .collect();
        Some(Depthwise {
            shape: *s,
            taps: layer.dequantized(),
            bias: layer.bias.clone(),
            phase,
            tap_at,
            avx512: Isa::current().avx512,
        })
    }

    /// Splits a padded input row into the layer's `stride` phases: `row[p·phase + t] =
    /// padded[t·stride + p]`; for stride 2, 32 values at a time with two permutes given the
    /// `Avx512` token.
    fn split_phases(&self, padded: &[f32], row: &mut [f32]) {
        let (sx, phase) = (self.shape.stride.1, self.phase);
        #[cfg(target_arch = "x86_64")]
        if sx == 2 && self.avx512.is_some() {
            // SAFETY: the `Avx512` token vouches for AVX-512F; `deinterleave` checks its
            // slices' lengths.
            unsafe { x86::deinterleave(padded, row, phase) };
            return;
        }
        for p in 0..sx {
            let dst = &mut row[p * phase..(p + 1) * phase];
            for (d, &v) in dst.iter_mut().zip(padded.iter().skip(p).step_by(sx)) {
                *d = v;
            }
        }
    }

    /// `y (cout × oh·ow) = bias + x ⊛ taps` for one sample `x` (`cin × h × w`); `buf` is
    /// scratch.
    pub(crate) fn run(&self, x: &[f32], y: &mut [f32], buf: &mut Vec<f32>) {
        let s = &self.shape;
        let (kh, kw) = (s.kh, s.kw);
        let row_len = s.stride.1 * self.phase;
        let per_input = s.cout / s.groups;
        let (plane_len, out_len) = (s.h * s.w, s.oh * s.ow);
        // Zero once: every channel writes the same interior positions, the padding stays 0.
        // Past the planes, for a strided layer, one input row with its padding (zeros on both
        // sides, up to a whole number of 32-value blocks), split into phases from there.
        let planes_len = (s.h + 2 * s.pad.0) * row_len;
        let padded_len = (s.w + 2 * s.pad.1).next_multiple_of(32);
        buf.clear();
        buf.resize(planes_len + padded_len, 0.0);
        let (buf, padded) = buf.split_at_mut(planes_len);
        for (c, out) in y[..s.cout * out_len]
            .chunks_exact_mut(out_len.max(1))
            .enumerate()
        {
            if c.is_multiple_of(per_input) {
                let ic = c / per_input;
                let plane = &x[ic * plane_len..(ic + 1) * plane_len];
                for (iy, src) in plane.chunks_exact(s.w.max(1)).enumerate() {
                    let row = &mut buf[(iy + s.pad.0) * row_len..(iy + s.pad.0 + 1) * row_len];
                    // Short rows copied with vector moves rather than a library call each.
                    if s.stride.1 == 1 {
                        f32::copy_row(&mut row[s.pad.1..s.pad.1 + s.w], src, self.avx512);
                    } else {
                        f32::copy_row(&mut padded[s.pad.1..s.pad.1 + s.w], src, self.avx512);
                        self.split_phases(padded, row);
                    }
                }
            }
            let taps = &self.taps[c * kh * kw..(c + 1) * kh * kw];
            let b = self.bias.as_ref().map_or(0.0, |b| b[c]);
            let step = s.stride.0 * row_len;
            let ow = s.ow.max(1);
            for (block, rows) in out.chunks_mut(ROWS * ow).enumerate() {
                let start = block * ROWS * step;
                #[cfg(target_arch = "x86_64")]
                if self.avx512.is_some() {
                    // SAFETY: the `Avx512` token vouches for AVX-512F; `out_rows` checks that
                    // every read it makes is inside `buf`.
                    unsafe {
                        if rows.len() == ROWS * ow {
                            x86::out_rows::<ROWS>(buf, start, step, &self.tap_at, taps, b, rows)
                        } else {
                            for (r, row) in rows.chunks_exact_mut(ow).enumerate() {
                                let at = start + r * step;
                                x86::out_rows::<1>(buf, at, step, &self.tap_at, taps, b, row)
                            }
                        }
                    };
                    continue;
                }
                for (r, row) in rows.chunks_exact_mut(ow).enumerate() {
                    out_row(buf, start + r * step, &self.tap_at, taps, b, row);
                }
            }
        }
    }
}

/// Output rows computed together (independent chains of FMAs).
const ROWS: usize = 4;

/// One output row: `orow[x] = b + Σ_t taps[t] · buf[start + tap_at[t] + x]`, `LANES` positions
/// at a time.
fn out_row(buf: &[f32], start: usize, tap_at: &[usize], taps: &[f32], b: f32, orow: &mut [f32]) {
    for x0 in (0..orow.len()).step_by(LANES) {
        let mut acc = [b; LANES];
        for (&at, &t) in tap_at.iter().zip(taps) {
            let src = &buf[start + at + x0..start + at + x0 + LANES];
            for (a, &v) in acc.iter_mut().zip(src) {
                *a = t.mul_add(v, *a);
            }
        }
        let n = LANES.min(orow.len() - x0);
        orow[x0..x0 + n].copy_from_slice(&acc[..n]);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `row[t] = padded[2t]` and `row[phase + t] = padded[2t + 1]` for every whole 32-value
    /// block of `padded`: two loads, two permutes, two stores a block.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn deinterleave(padded: &[f32], row: &mut [f32], phase: usize) {
        let blocks = padded.len() / 32;
        assert!(16 * blocks <= phase && row.len() >= 2 * phase);
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let (src, dst) = (padded.as_ptr(), row.as_mut_ptr());
        // SAFETY: block `b < blocks` reads `padded[32b .. 32b + 32]` (inside `padded`) and
        // writes `row[16b .. 16b + 16]` and `row[phase + 16b ..][..16]`, inside `row` since
        // `16·blocks ≤ phase` and `row.len() ≥ 2·phase` (asserted).
        unsafe {
            for b in 0..blocks {
                let lo = _mm512_loadu_ps(src.add(32 * b));
                let hi = _mm512_loadu_ps(src.add(32 * b + 16));
                _mm512_storeu_ps(dst.add(16 * b), _mm512_permutex2var_ps(lo, even, hi));
                _mm512_storeu_ps(dst.add(phase + 16 * b), _mm512_permutex2var_ps(lo, odd, hi));
            }
        }
    }

    use super::LANES;
    use crate::engine::simd::lanes_upto;

    /// `R` consecutive output rows of `super::out_row` (`out` holds them back to back, row `r`
    /// reading from `start + r·step`) in 16-lane registers, the last step of each row masked.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn out_rows<const R: usize>(
        buf: &[f32],
        start: usize,
        step: usize,
        tap_at: &[usize],
        taps: &[f32],
        b: f32,
        out: &mut [f32],
    ) {
        let ow = out.len() / R;
        let last = ow.div_ceil(LANES).saturating_sub(1) * LANES;
        let reach =
            start + (R - 1) * step + tap_at.iter().max().copied().unwrap_or(0) + last + LANES;
        assert!(buf.len() >= reach && taps.len() >= tap_at.len());
        let (bp, op) = (buf.as_ptr(), out.as_mut_ptr());
        // SAFETY: every load reads `buf[start + r·step + at + x0 ..][..LANES]` with `r < R`,
        // `at ≤ max tap_at`, `x0 ≤ last`: below `reach ≤ buf.len()` (asserted); the stores
        // write lanes `x0 .. min(x0 + LANES, ow)` of row `r < R` of `out` (`R·ow` values).
        unsafe {
            let bias = _mm512_set1_ps(b);
            for x0 in (0..ow).step_by(LANES) {
                let mut acc = [bias; R];
                for (&at, &t) in tap_at.iter().zip(taps) {
                    let tv = _mm512_set1_ps(t);
                    let p = bp.add(start + at + x0);
                    for (r, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(tv, _mm512_loadu_ps(p.add(r * step)), *a);
                    }
                }
                let m = lanes_upto(ow - x0);
                for (r, a) in acc.iter().enumerate() {
                    _mm512_mask_storeu_ps(op.add(r * ow + x0), m, *a);
                }
            }
        }
    }
}
