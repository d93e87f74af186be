//! One input column through a dense-indexed layer, rows read as stored: f32 rows four at a
//! time (`F32Rows`), f16/bf16 rows widened in registers (`HalfRows`, AVX-512), and every other
//! value store decoded row by row into a buffer, then dotted (`DecodedRows`, the portable
//! fallback).

use super::super::format::{PackedLayer, ValueStore};
#[cfg(target_arch = "x86_64")]
use super::common::by_four_rows;
use super::common::{AlignedRows, KernelScratch, bias_of, dot, hsum16};
#[cfg(target_arch = "x86_64")]
use crate::engine::cpu::Avx512;

/// A dense f32 layer's rows as stored, each on a 64-byte boundary.
#[derive(Debug, Clone)]
pub(super) struct F32Rows {
    rows: usize,
    cols: usize,
    w: AlignedRows<f32>,
    bias: Option<Vec<f32>>,
}

impl F32Rows {
    /// `None` unless the layer is dense with f32 values.
    pub(super) fn new(layer: &PackedLayer) -> Option<Self> {
        let ValueStore::F32(w) = &layer.values else {
            return None;
        };
        layer.is_dense().then(|| F32Rows {
            rows: layer.rows,
            cols: layer.cols,
            w: AlignedRows::new(w, layer.rows, layer.cols),
            bias: layer.bias.clone(),
        })
    }

    /// `y = W·x + bias`, four rows per pass while four remain.
    pub(super) fn run(&self, x: &[f32], y: &mut [f32]) {
        let (rows, w) = (self.rows, &self.w);
        let x = &x[..self.cols];
        let mut r = 0;
        while r + 4 <= rows {
            let d = dot4([w.row(r), w.row(r + 1), w.row(r + 2), w.row(r + 3)], x);
            for k in 0..4 {
                y[r + k] = d[k] + bias_of(&self.bias, r + k);
            }
            r += 4;
        }
        for (r, yr) in y.iter_mut().enumerate().take(rows).skip(r) {
            *yr = dot(w.row(r), x) + bias_of(&self.bias, r);
        }
    }
}

/// Four rows against one vector at once: `x` is loaded once for four rows.
#[inline]
fn dot4(w: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
    const L: usize = 16;
    let n = x.len().min(w.iter().map(|r| r.len()).min().unwrap_or(0));
    let full = n / L * L;
    let (x, xt) = x[..n].split_at(full);
    let mut a0 = [0f32; L];
    let mut a1 = [0f32; L];
    let mut a2 = [0f32; L];
    let mut a3 = [0f32; L];
    for ((((xv, w0), w1), w2), w3) in x
        .chunks_exact(L)
        .zip(w[0][..full].chunks_exact(L))
        .zip(w[1][..full].chunks_exact(L))
        .zip(w[2][..full].chunks_exact(L))
        .zip(w[3][..full].chunks_exact(L))
    {
        for i in 0..L {
            a0[i] = w0[i].mul_add(xv[i], a0[i]);
            a1[i] = w1[i].mul_add(xv[i], a1[i]);
            a2[i] = w2[i].mul_add(xv[i], a2[i]);
            a3[i] = w3[i].mul_add(xv[i], a3[i]);
        }
    }
    let mut out = [hsum16(&a0), hsum16(&a1), hsum16(&a2), hsum16(&a3)];
    for (r, o) in out.iter_mut().enumerate() {
        for (wv, xv) in w[r][full..n].iter().zip(xt) {
            *o = wv.mul_add(*xv, *o);
        }
    }
    out
}

/// A dense layer's f16 or bf16 rows as stored (each on a 64-byte boundary), widened to f32 in
/// registers four rows at a time.
/// Made only by `new`, which takes the `Avx512` token: holding one proves the CPU runs its
/// kernel.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone)]
pub(super) struct HalfRows {
    rows: usize,
    cols: usize,
    /// The stored bits.
    w: AlignedRows<u16>,
    /// bfloat16 (else IEEE half).
    bf: bool,
    bias: Option<Vec<f32>>,
}

#[cfg(target_arch = "x86_64")]
impl HalfRows {
    /// `None` unless the layer is dense with f16 or bf16 values.
    pub(super) fn new(layer: &PackedLayer, _: Avx512) -> Option<Self> {
        let (ValueStore::F16(w) | ValueStore::Bf16(w)) = &layer.values else {
            return None;
        };
        layer.is_dense().then(|| HalfRows {
            rows: layer.rows,
            cols: layer.cols,
            w: AlignedRows::new(w, layer.rows, layer.cols),
            bf: matches!(layer.values, ValueStore::Bf16(_)),
            bias: layer.bias.clone(),
        })
    }

    pub(super) fn run(&self, x: &[f32], y: &mut [f32]) {
        let x = &x[..self.cols];
        by_four_rows(self.rows, &self.bias, y, |ks| {
            let w = ks.map(|r| self.w.row(r));
            // SAFETY: a `HalfRows` exists only where an `Avx512` token vouched for AVX-512
            // F/BW/VL, the features the kernel enables; it bounds its loads by the slices.
            unsafe {
                if self.bf {
                    x86::rows4_half::<true>(w, x)
                } else {
                    x86::rows4_half::<false>(w, x)
                }
            }
        });
    }
}

/// A dense layer whose values have no kernel of their own here: each row decoded (codes
/// unpacked, scales applied per group, half precision widened) into a buffer, then dotted.
#[derive(Debug, Clone)]
pub(super) struct DecodedRows {
    layer: Box<PackedLayer>,
}

impl DecodedRows {
    /// For a dense-indexed layer.
    pub(super) fn new(layer: &PackedLayer) -> Self {
        DecodedRows {
            layer: Box::new(layer.clone()),
        }
    }

    pub(super) fn run(&self, x: &[f32], y: &mut [f32], s: &mut KernelScratch) {
        let l = &self.layer;
        s.vals.resize(l.cols, 0.0);
        for (r, yr) in y.iter_mut().enumerate().take(l.rows) {
            l.decode_values(l.row_entries(r), r, None, &mut s.codes, &mut s.vals);
            *yr = dot(&s.vals, x) + bias_of(&l.bias, r);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::engine::simd::{hsum4, low_lanes, widen_half};

    /// `[Σ_i w_k[i] · x[i]]` for four rows of half-precision weights (IEEE f16, or bfloat16 when
    /// `BF`), widened in registers.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL (a `cpu::Avx512` token).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn rows4_half<const BF: bool>(rows: [&[u16]; 4], x: &[f32]) -> [f32; 4] {
        let n = rows.iter().fold(x.len(), |n, r| n.min(r.len()));
        let rp = rows.map(|r| r.as_ptr());
        let xp = x.as_ptr();
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut k = 0;
        // SAFETY: for the whole block, every unmasked load ends at or before `n`, within all
        // five slices; the masked tail admits only lanes `k..n`.
        unsafe {
            while k + 16 <= n {
                let xv = _mm512_loadu_ps(xp.add(k));
                for (a, p) in acc.iter_mut().zip(rp) {
                    let w = widen_half::<BF>(_mm256_loadu_si256(p.add(k).cast()));
                    *a = _mm512_fmadd_ps(w, xv, *a);
                }
                k += 16;
            }
            if k < n {
                let m = low_lanes(n - k);
                let xv = _mm512_maskz_loadu_ps(m, xp.add(k));
                for (a, p) in acc.iter_mut().zip(rp) {
                    let w = widen_half::<BF>(_mm256_maskz_loadu_epi16(m, p.add(k).cast()));
                    *a = _mm512_fmadd_ps(w, xv, *a);
                }
            }
        }
        hsum4(acc)
    }
}
