//! One input column through a dense layer of uniform codes or a codebook, the codes read as
//! stored: 8-bit codes widened in registers (`ByteRows`) and 4-bit codes two per byte
//! (`NibbleRows`), both four rows at a time with one scale per row; 4-bit codebooks looked up
//! nibble by nibble in a register (`BookNibbleRows`); other widths, groups and codebooks
//! unpacked in registers (`UnpackedRows`, VBMI); and, without those, one row at a time with
//! codes converted in registers (`RowDots`, the portable fallback and AVX-512 without VBMI).

use super::super::format::{PackedLayer, ValueStore};
use super::super::pack;
use super::common::{KernelScratch, bias_of, hsum64, split_even_odd, sum_f64};
#[cfg(target_arch = "x86_64")]
use super::common::{by_four_rows, nibble_inputs};
#[cfg(target_arch = "x86_64")]
use super::unpack::{self, Levels, Width, book_table};
use crate::compress::Granularity;
use crate::engine::cpu::Avx512;
#[cfg(target_arch = "x86_64")]
use crate::engine::cpu::Vbmi;

#[cfg(target_arch = "x86_64")]
pub(super) use x86::rows4_nibbles;

/// A dense layer of uniform codes with one scale per row (per tensor or per channel): the
/// stored codes with each row's scale and zero point.
#[derive(Debug, Clone)]
pub(super) struct ScaledRows {
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) bits: u8,
    /// The stored bit-packed codes, row after row.
    pub(super) codes: Vec<u8>,
    pub(super) scale: Vec<f32>,
    pub(super) zero: Vec<i32>,
    pub(super) bias: Option<Vec<f32>>,
}

impl ScaledRows {
    /// `None` unless the layer is dense with uniform codes and one scale per row.
    pub(super) fn new(layer: &PackedLayer) -> Option<Self> {
        let ValueStore::Uniform {
            bits,
            codes,
            scales,
            zero_points,
            granularity: granularity @ (Granularity::Tensor | Granularity::Channel),
        } = &layer.values
        else {
            return None;
        };
        if !layer.is_dense() {
            return None;
        }
        let group = |r: usize| granularity.group_of(r, 0, layer.cols);
        Some(ScaledRows {
            rows: layer.rows,
            cols: layer.cols,
            bits: *bits,
            codes: codes.clone(),
            scale: (0..layer.rows).map(|r| scales[group(r)]).collect(),
            zero: (0..layer.rows)
                .map(|r| zero_points.get(group(r), *bits))
                .collect(),
            bias: layer.bias.clone(),
        })
    }

    /// Row `r`'s output from its raw code sum `d = Σ code·x`: `scale · (d − z · Σ x)`, `Σ x` in
    /// f64 so the correction adds no rounding of its own.
    #[inline]
    pub(super) fn finish(&self, r: usize, d: f32, sum_x: f64) -> f32 {
        self.scale[r] * (d - (self.zero[r] as f64 * sum_x) as f32)
    }
}

/// 8-bit codes, four rows per pass, converted in registers straight into the FMA; the zero
/// point and scale applied to each row's sum. Made only by `new`, which takes the `Avx512`
/// token.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone)]
pub(super) struct ByteRows(ScaledRows);

#[cfg(target_arch = "x86_64")]
impl ByteRows {
    pub(super) fn new(rows: &ScaledRows, _: Avx512) -> Option<Self> {
        (rows.bits == 8).then(|| ByteRows(rows.clone()))
    }

    pub(super) fn run(&self, x: &[f32], y: &mut [f32]) {
        let l = &self.0;
        let cols = l.cols;
        let sum_x = sum_f64(&x[..cols]);
        by_four_rows(l.rows, &l.bias, y, |ks| {
            let w = ks.map(|r| &l.codes[r * cols..(r + 1) * cols]);
            // SAFETY: a `ByteRows` exists only where an `Avx512` token vouched for AVX-512
            // F/BW/VL, the features the kernel enables; it bounds its loads by the slices.
            let d = unsafe { x86::rows4_codes(w, x) };
            [0, 1, 2, 3].map(|k| l.finish(ks[k], d[k], sum_x))
        });
    }
}

/// 4-bit codes two per byte (rows of even length), four rows per pass, against the input split
/// once per sample into `ea = x_even − x_odd / 16` and `ob = x_odd / 16`, so that `lo·x_even +
/// hi·x_odd = lo·ea + byte·ob`: the low nibble becomes a float by one permute, the whole byte
/// by one conversion. Made only by `new`, which takes the `Avx512` token.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone)]
pub(super) struct NibbleRows(ScaledRows);

#[cfg(target_arch = "x86_64")]
impl NibbleRows {
    pub(super) fn new(rows: &ScaledRows, _: Avx512) -> Option<Self> {
        (rows.bits == 4 && rows.cols.is_multiple_of(2)).then(|| NibbleRows(rows.clone()))
    }

    pub(super) fn run(&self, x: &[f32], y: &mut [f32], s: &mut KernelScratch) {
        let l = &self.0;
        let x = &x[..l.cols];
        let sum_x = sum_f64(x);
        nibble_inputs(x, &mut s.xe, &mut s.xo);
        let (ea, ob) = (&s.xe, &s.xo);
        let half = l.cols / 2;
        by_four_rows(l.rows, &l.bias, y, |ks| {
            let w = ks.map(|r| &l.codes[r * half..(r + 1) * half]);
            // SAFETY: a `NibbleRows` exists only where an `Avx512` token vouched for AVX-512
            // F/BW/VL, the features the kernel enables; it bounds its loads by the slices.
            let d = unsafe { x86::rows4_nibbles(w, ea, ob) };
            [0, 1, 2, 3].map(|k| l.finish(ks[k], d[k], sum_x))
        });
    }
}

/// Uniform codes with one scale per row, one row at a time: 8-bit codes and (rows of even
/// length) 4-bit codes two per byte read as stored, other widths unpacked into a buffer first;
/// each row's codes converted in registers, its zero point and scale applied to the sum. The
/// portable path of every width, and AVX-512's for widths no other kernel takes without VBMI.
#[derive(Debug, Clone)]
pub(super) struct RowDots {
    rows: ScaledRows,
    avx512: Option<Avx512>,
}

impl RowDots {
    pub(super) fn new(rows: &ScaledRows, avx512: Option<Avx512>) -> Self {
        RowDots {
            rows: rows.clone(),
            avx512,
        }
    }

    pub(super) fn run(&self, x: &[f32], y: &mut [f32], s: &mut KernelScratch) {
        let l = &self.rows;
        let (cols, bits) = (l.cols, l.bits);
        let x = &x[..cols];
        let nibbles = bits == 4 && cols.is_multiple_of(2);
        // Σ x once per call: the vector kernels subtract `z · Σ x` per row instead of `z` per
        // code (in f64, so the correction adds no rounding of its own).
        let sum_x = sum_f64(x);
        if nibbles {
            split_even_odd(x, &mut s.xe, &mut s.xo);
        }
        for (r, yr) in y.iter_mut().enumerate().take(l.rows) {
            let z = l.zero[r];
            let d = if bits == 8 {
                self.codes_dot(&l.codes[r * cols..(r + 1) * cols], z, x, sum_x)
            } else if nibbles {
                let half = cols / 2;
                let bytes = &l.codes[r * half..(r + 1) * half];
                self.nibbles_dot(bytes, z, &s.xe, &s.xo, sum_x)
            } else {
                s.codes.resize(cols, 0);
                pack::unpack_codes(&l.codes, bits, r * cols, &mut s.codes);
                self.codes_dot(&s.codes, z, x, sum_x)
            };
            *yr = l.scale[r] * d + bias_of(&l.bias, r);
        }
    }

    /// `Σ (codes[i] − z) · x[i]` (`sum_x` = Σ x, for the vector kernel's zero-point
    /// correction).
    #[inline]
    fn codes_dot(&self, codes: &[u8], z: i32, x: &[f32], sum_x: f64) -> f32 {
        match self.avx512 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the `Avx512` token vouches for AVX-512 F/BW, the features the kernel
            // enables; it bounds its loads by the slices.
            Some(_) => unsafe { x86::dot_codes(codes, (z as f64 * sum_x) as f32, x) },
            _ => dot_codes(codes, z, x),
        }
    }

    /// 4-bit codes two per byte against the even / odd inputs (`sum_x` = Σ xe + Σ xo, for the
    /// vector kernel's zero-point correction).
    #[inline]
    fn nibbles_dot(&self, bytes: &[u8], z: i32, xe: &[f32], xo: &[f32], sum_x: f64) -> f32 {
        match self.avx512 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the `Avx512` token vouches for AVX-512 F/BW, the features the kernel
            // enables; it bounds its loads by the slices.
            Some(_) => unsafe { x86::dot_nibbles(bytes, (z as f64 * sum_x) as f32, xe, xo) },
            _ => dot_nibbles(bytes, z, xe, xo),
        }
    }
}

/// A dense 4-bit codebook of up to 16 entries (rows of even length): codes two per byte, like
/// 4-bit uniform codes, each nibble looked up with one permute of the codebook held in a
/// register, four rows per pass. Made only by `new`, which takes the `Avx512` token.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone)]
pub(super) struct BookNibbleRows {
    rows: usize,
    cols: usize,
    codes: Vec<u8>,
    book: [f32; 16],
    bias: Option<Vec<f32>>,
}

#[cfg(target_arch = "x86_64")]
impl BookNibbleRows {
    pub(super) fn new(layer: &PackedLayer, _: Avx512) -> Option<Self> {
        let ValueStore::Codebook {
            bits: 4,
            codes,
            codebook,
        } = &layer.values
        else {
            return None;
        };
        (layer.is_dense() && layer.cols.is_multiple_of(2) && codebook.len() <= 16).then(|| {
            BookNibbleRows {
                rows: layer.rows,
                cols: layer.cols,
                codes: codes.clone(),
                book: std::array::from_fn(|i| codebook.get(i).copied().unwrap_or(0.0)),
                bias: layer.bias.clone(),
            }
        })
    }

    pub(super) fn run(&self, x: &[f32], y: &mut [f32], s: &mut KernelScratch) {
        split_even_odd(&x[..self.cols], &mut s.xe, &mut s.xo);
        let (xe, xo, half) = (&s.xe, &s.xo, self.cols / 2);
        by_four_rows(self.rows, &self.bias, y, |ks| {
            let w = ks.map(|r| &self.codes[r * half..(r + 1) * half]);
            // SAFETY: a `BookNibbleRows` exists only where an `Avx512` token vouched for
            // AVX-512 F/BW/VL, the features the kernel enables; it bounds its loads by the
            // slices.
            unsafe { x86::rows4_book_nibbles(w, xe, xo, &self.book) }
        });
    }
}

/// How `UnpackedRows` turns codes into weights.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone)]
enum UnpackedLevels {
    /// A codebook repeated over 256 entries (`book_table`).
    Book(Box<[f32; 256]>),
    /// `scale · (code − zero)` per segment of `seg` codes of a row (the whole row, or groups
    /// whose size keeps every boundary on a 16-code step): every group's scale and zero point,
    /// `per` of them per row from the row's first group.
    Affine {
        seg: usize,
        per: usize,
        first: Vec<usize>,
        scales: Vec<f32>,
        zeros: Vec<f32>,
    },
}

/// Dense bit-packed codes of any width — codebooks, and uniform codes per tensor, channel or
/// group — unpacked in registers and turned into weights there (`unpack.rs`), four rows per
/// pass. Made only by `new`, which takes the `Vbmi` token.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone)]
pub(super) struct UnpackedRows {
    rows: usize,
    cols: usize,
    width: Width,
    codes: Vec<u8>,
    levels: UnpackedLevels,
    bias: Option<Vec<f32>>,
}

#[cfg(target_arch = "x86_64")]
impl UnpackedRows {
    /// `None` unless the layer is dense with 1- to 8-bit codes, and, for uniform codes in
    /// groups, groups whose size is a multiple of 16 or spans the row.
    pub(super) fn new(layer: &PackedLayer, _: Vbmi) -> Option<Self> {
        if !layer.is_dense() {
            return None;
        }
        let cols = layer.cols;
        let (bits, codes, levels) = match &layer.values {
            ValueStore::Codebook {
                bits,
                codes,
                codebook,
            } => (
                *bits,
                codes,
                UnpackedLevels::Book(Box::new(book_table(*bits, codebook))),
            ),
            ValueStore::Uniform {
                bits,
                codes,
                scales,
                zero_points,
                granularity,
            } => {
                let (seg, per) = match granularity {
                    Granularity::Group { size } if size.is_multiple_of(16) || *size >= cols => {
                        (*size, cols.div_ceil(*size))
                    }
                    Granularity::Group { .. } => return None,
                    _ => (usize::MAX, 1),
                };
                let groups = granularity.group_count(layer.rows, cols);
                let levels = UnpackedLevels::Affine {
                    seg,
                    per,
                    first: (0..layer.rows)
                        .map(|r| granularity.group_of(r, 0, cols))
                        .collect(),
                    scales: scales.clone(),
                    zeros: (0..groups)
                        .map(|g| zero_points.get(g, *bits) as f32)
                        .collect(),
                };
                (*bits, codes, levels)
            }
            _ => return None,
        };
        Some(UnpackedRows {
            rows: layer.rows,
            cols,
            width: Width::new(bits)?,
            codes: codes.clone(),
            levels,
            bias: layer.bias.clone(),
        })
    }

    pub(super) fn run(&self, x: &[f32], y: &mut [f32]) {
        let (cols, width, codes) = (self.cols, self.width, &self.codes);
        let x = &x[..cols];
        by_four_rows(self.rows, &self.bias, y, |ks| {
            let levels = match &self.levels {
                UnpackedLevels::Book(book) => Levels::Book(book),
                UnpackedLevels::Affine {
                    seg,
                    per,
                    first,
                    scales,
                    zeros,
                } => {
                    let g0 = ks.map(|r| first[r]);
                    Levels::Affine {
                        seg: *seg,
                        scales: g0.map(|g| &scales[g..g + per]),
                        zeros: g0.map(|g| &zeros[g..g + per]),
                    }
                }
            };
            // SAFETY: an `UnpackedRows` exists only where a `Vbmi` token vouched for AVX-512
            // F/BW/VL/VBMI, the features the kernel enables; every row has `per = ceil(cols /
            // seg)` scales and zero points from its first group (`new`); the kernel bounds its
            // loads by the slices.
            unsafe { unpack::packed_rows4(width, codes, ks.map(|r| r * cols), cols, levels, x) }
        });
    }
}

/// Σ (codes[i] − z) · x[i], the conversion done in vector registers. One flat array of 64
/// accumulators: LLVM keeps it in four vector registers.
#[inline]
fn dot_codes(codes: &[u8], z: i32, x: &[f32]) -> f32 {
    const L: usize = 64;
    let n = codes.len().min(x.len());
    let (codes, x) = (&codes[..n], &x[..n]);
    let mut acc = [0f32; L];
    let mut cc = codes.chunks_exact(L);
    let mut cx = x.chunks_exact(L);
    for (c, xv) in (&mut cc).zip(&mut cx) {
        for i in 0..L {
            acc[i] = ((c[i] as i32 - z) as f32).mul_add(xv[i], acc[i]);
        }
    }
    let (rc, rx) = (cc.remainder(), cx.remainder());
    let mut cc = rc.chunks_exact(16);
    let mut cx = rx.chunks_exact(16);
    for (c, xv) in (&mut cc).zip(&mut cx) {
        for i in 0..16 {
            acc[i] = ((c[i] as i32 - z) as f32).mul_add(xv[i], acc[i]);
        }
    }
    let mut t = 0f32;
    for (&c, &xv) in cc.remainder().iter().zip(cx.remainder()) {
        t = ((c as i32 - z) as f32).mul_add(xv, t);
    }
    hsum64(&acc) + t
}

/// Σ over bytes j of (lo_j − z)·xe[j] + (hi_j − z)·xo[j]: 4-bit codes two per byte against
/// the even and odd inputs, split once per call, so the nibbles never leave vector registers.
#[inline]
fn dot_nibbles(bytes: &[u8], z: i32, xe: &[f32], xo: &[f32]) -> f32 {
    const L: usize = 32;
    let n = bytes.len().min(xe.len()).min(xo.len());
    let (bytes, xe, xo) = (&bytes[..n], &xe[..n], &xo[..n]);
    let mut lo = [0f32; L];
    let mut hi = [0f32; L];
    let mut cb = bytes.chunks_exact(L);
    let mut ce = xe.chunks_exact(L);
    let mut co = xo.chunks_exact(L);
    for ((b, e), o) in (&mut cb).zip(&mut ce).zip(&mut co) {
        for i in 0..L {
            let v = b[i] as i32;
            lo[i] = (((v & 0xF) - z) as f32).mul_add(e[i], lo[i]);
            hi[i] = (((v >> 4) - z) as f32).mul_add(o[i], hi[i]);
        }
    }
    let mut t = 0f32;
    for ((&b, &e), &o) in cb
        .remainder()
        .iter()
        .zip(ce.remainder())
        .zip(co.remainder())
    {
        let v = b as i32;
        t = (((v & 0xF) - z) as f32).mul_add(e, t);
        t = (((v >> 4) - z) as f32).mul_add(o, t);
    }
    let mut both = [0f32; 64];
    both[..L].copy_from_slice(&lo);
    both[L..].copy_from_slice(&hi);
    hsum64(&both) + t
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::engine::simd::{hsum4, lanes_upto, low_lanes};

    /// `Σ (codes[i] − z) · x[i]`, computed as `Σ codes[i] · x[i] − z_sum` with `z_sum = z · Σ x`
    /// given by the caller (one sum per input vector, not per row): each 16 codes then take a
    /// widening load, a conversion and an FMA, with no integer subtraction.
    ///
    /// # Safety
    /// The CPU has AVX-512F and BW (a `cpu::Avx512` token).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn dot_codes(codes: &[u8], z_sum: f32, x: &[f32]) -> f32 {
        let n = codes.len().min(x.len());
        let (cp, xp) = (codes.as_ptr(), x.as_ptr());
        let mut a0 = _mm512_setzero_ps();
        let mut a1 = _mm512_setzero_ps();
        let mut k = 0;
        // SAFETY: for the whole block, every 16-byte code load and 64-byte `x` load ends at or
        // before `n`, within both slices.
        unsafe {
            while k + 32 <= n {
                let c0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(cp.add(k).cast()));
                let c1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(cp.add(k + 16).cast()));
                let f0 = _mm512_cvtepi32_ps(c0);
                let f1 = _mm512_cvtepi32_ps(c1);
                a0 = _mm512_fmadd_ps(f0, _mm512_loadu_ps(xp.add(k)), a0);
                a1 = _mm512_fmadd_ps(f1, _mm512_loadu_ps(xp.add(k + 16)), a1);
                k += 32;
            }
            if k + 16 <= n {
                let c0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(cp.add(k).cast()));
                let f0 = _mm512_cvtepi32_ps(c0);
                a0 = _mm512_fmadd_ps(f0, _mm512_loadu_ps(xp.add(k)), a0);
                k += 16;
            }
        }
        if k < n {
            // The tail with masked loads (masked-off lanes read nothing and hold zero), so it
            // costs one vector step instead of a chain of dependent scalar FMAs.
            let m = low_lanes(n - k);
            // SAFETY: the mask admits only lanes `k..n`, inside both slices.
            unsafe {
                let c0 = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, cp.add(k).cast()));
                let f0 = _mm512_cvtepi32_ps(c0);
                a1 = _mm512_fmadd_ps(f0, _mm512_maskz_loadu_ps(m, xp.add(k)), a1);
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) - z_sum
    }

    /// `Σ_j (lo_j − z) · xe[j] + (hi_j − z) · xo[j]` over 4-bit codes two per byte (low nibble
    /// first) against the even and odd inputs: one byte load feeds 32 codes. Computed as
    /// `Σ lo·xe + hi·xo − z_sum` with `z_sum = z · (Σ xe + Σ xo)` given by the caller.
    ///
    /// # Safety
    /// The CPU has AVX-512F and BW (a `cpu::Avx512` token).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn dot_nibbles(bytes: &[u8], z_sum: f32, xe: &[f32], xo: &[f32]) -> f32 {
        let n = bytes.len().min(xe.len()).min(xo.len());
        let (bp, ep, op) = (bytes.as_ptr(), xe.as_ptr(), xo.as_ptr());
        let lo_mask = _mm512_set1_epi32(0xF);
        let mut a0 = _mm512_setzero_ps();
        let mut a1 = _mm512_setzero_ps();
        let mut k = 0;
        // SAFETY: for the whole block, every 16-byte load of `bytes` and 64-byte load of `xe`/`xo`
        // ends at or before `n`, within all three slices.
        unsafe {
            while k + 16 <= n {
                let b = _mm512_cvtepu8_epi32(_mm_loadu_si128(bp.add(k).cast()));
                let lo = _mm512_and_si512(b, lo_mask);
                let hi = _mm512_srli_epi32::<4>(b);
                a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), _mm512_loadu_ps(ep.add(k)), a0);
                a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), _mm512_loadu_ps(op.add(k)), a1);
                k += 16;
            }
        }
        if k < n {
            // The tail with masked loads: masked-off lanes read nothing and their input is 0.
            let m = low_lanes(n - k);
            // SAFETY: the mask admits only lanes `k..n`, inside all three slices.
            unsafe {
                let b = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, bp.add(k).cast()));
                let lo = _mm512_and_si512(b, lo_mask);
                let hi = _mm512_srli_epi32::<4>(b);
                let e = _mm512_maskz_loadu_ps(m, ep.add(k));
                let o = _mm512_maskz_loadu_ps(m, op.add(k));
                a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), e, a0);
                a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), o, a1);
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) - z_sum
    }

    /// `[Σ_i codes_k[i] · x[i]]` for four rows of 8-bit codes against one input (zero points and
    /// scales are the caller's): each `x` load serves four rows, and the four independent
    /// accumulator chains keep the FMA unit busy instead of waiting on one chain's latency.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL (a `cpu::Avx512` token).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn rows4_codes(rows: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
        let n = rows.iter().fold(x.len(), |n, r| n.min(r.len()));
        let rp = rows.map(|r| r.as_ptr());
        let xp = x.as_ptr();
        // Two accumulators per row (eight chains), for two 16-code steps per iteration.
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut acc2 = [_mm512_setzero_ps(); 4];
        let mut k = 0;
        // SAFETY: for the whole block, every unmasked load ends at or before `n`, within all five
        // slices; the masked tail admits only lanes `k..n`.
        unsafe {
            while k + 32 <= n {
                let xv = _mm512_loadu_ps(xp.add(k));
                let xv2 = _mm512_loadu_ps(xp.add(k + 16));
                for r in 0..4 {
                    let c = _mm512_cvtepu8_epi32(_mm_loadu_si128(rp[r].add(k).cast()));
                    let c2 = _mm512_cvtepu8_epi32(_mm_loadu_si128(rp[r].add(k + 16).cast()));
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), xv, acc[r]);
                    acc2[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c2), xv2, acc2[r]);
                }
                k += 32;
            }
            while k < n {
                let m = lanes_upto(n - k);
                let xv = _mm512_maskz_loadu_ps(m, xp.add(k));
                for (a, p) in acc.iter_mut().zip(rp) {
                    let c = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, p.add(k).cast()));
                    *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), xv, *a);
                }
                k += 16;
            }
        }
        hsum4([0, 1, 2, 3].map(|r| _mm512_add_ps(acc[r], acc2[r])))
    }

    /// `[Σ_j lo_kj · xe[j] + hi_kj · xo[j]]` for four rows of 4-bit codes two per byte (low
    /// nibble first), given `ea = xe − xo / 16` and `ob = xo / 16` (`nibble_inputs`; zero points
    /// and scales are the caller's). Since the byte read as a number is `lo + 16 · hi`, the sum
    /// is `Σ lo · ea + byte · ob`: the low nibble becomes a float by one permute (which reads
    /// only each lane's low four bits) and the whole byte by one conversion, so 32 codes cost
    /// one widening load, two conversions and two FMAs, as many operations as 32 8-bit codes
    /// (`rows4_codes`).
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL (a `cpu::Avx512` token).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(in crate::engine::kernels) unsafe fn rows4_nibbles(
        rows: [&[u8]; 4],
        ea: &[f32],
        ob: &[f32],
    ) -> [f32; 4] {
        let levels: [f32; 16] = std::array::from_fn(|i| i as f32);
        // SAFETY: forwarded contract.
        unsafe { rows4_nibble_pairs::<false>(rows, ea, ob, &levels) }
    }

    /// `[Σ_j book[lo_kj] · xe[j] + book[hi_kj] · xo[j]]` for four rows of 4-bit codebook
    /// indices two per byte (low nibble first) against the even and odd inputs: each nibble
    /// looked up with one permute of the 16-entry codebook held in a register.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL (a `cpu::Avx512` token).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn rows4_book_nibbles(
        rows: [&[u8]; 4],
        xe: &[f32],
        xo: &[f32],
        book: &[f32; 16],
    ) -> [f32; 4] {
        // SAFETY: forwarded contract.
        unsafe { rows4_nibble_pairs::<true>(rows, xe, xo, book) }
    }

    /// The loop of `rows4_nibbles` (`BOOK` false: `table` holds 0..15 and the high half is the
    /// whole byte against `b`) and `rows4_book_nibbles` (`BOOK`: both nibbles looked up in
    /// `table`): eight independent accumulator chains, each load of `a`/`b` serving four rows.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL (a `cpu::Avx512` token).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    pub(super) unsafe fn rows4_nibble_pairs<const BOOK: bool>(
        rows: [&[u8]; 4],
        a: &[f32],
        b: &[f32],
        table: &[f32; 16],
    ) -> [f32; 4] {
        let n = rows
            .iter()
            .fold(a.len().min(b.len()), |n, r| n.min(r.len()));
        let rp = rows.map(|r| r.as_ptr());
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        // SAFETY: `table` holds 16 f32.
        let table = unsafe { _mm512_loadu_ps(table.as_ptr()) };
        let mut lo = [_mm512_setzero_ps(); 4];
        let mut hi = [_mm512_setzero_ps(); 4];
        let mut k = 0;
        // SAFETY: for the whole block, every unmasked load ends at or before `n`, within all six
        // slices; the masked tail admits only lanes `k..n`.
        unsafe {
            let step = |raw: [__m128i; 4],
                        va: __m512,
                        vb: __m512,
                        lo: &mut [__m512; 4],
                        hi: &mut [__m512; 4]| {
                for r in 0..4 {
                    let byte = _mm512_cvtepu8_epi32(raw[r]);
                    let h = if BOOK {
                        _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(byte), table)
                    } else {
                        _mm512_cvtepi32_ps(byte)
                    };
                    lo[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(byte, table), va, lo[r]);
                    hi[r] = _mm512_fmadd_ps(h, vb, hi[r]);
                }
            };
            while k + 16 <= n {
                let raw = rp.map(|p| _mm_loadu_si128(p.add(k).cast()));
                let (va, vb) = (_mm512_loadu_ps(ap.add(k)), _mm512_loadu_ps(bp.add(k)));
                step(raw, va, vb, &mut lo, &mut hi);
                k += 16;
            }
            if k < n {
                let m = lanes_upto(n - k);
                let raw = rp.map(|p| _mm_maskz_loadu_epi8(m, p.add(k).cast()));
                let va = _mm512_maskz_loadu_ps(m, ap.add(k));
                let vb = _mm512_maskz_loadu_ps(m, bp.add(k));
                step(raw, va, vb, &mut lo, &mut hi);
            }
        }
        hsum4([0, 1, 2, 3].map(|r| _mm512_add_ps(lo[r], hi[r])))
    }
}
