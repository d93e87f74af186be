//! AVX-512 building blocks shared by several kernels: lane masks, sums of four registers at
//! once, half-precision widening, 16 × 16 transposes, and the FMA chains the machine's peak is
//! measured with. Each function enables the features its `#[target_feature]` names; a caller
//! holds the `cpu` token that vouches for them.

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::*;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Lanes `0..n` (`n < 16`) of a 16-lane mask.
    #[inline(always)]
    pub(crate) fn low_lanes(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// Lanes `0..n` of 16, all of them when `n >= 16`.
    #[inline(always)]
    pub(crate) fn lanes_upto(n: usize) -> __mmask16 {
        if n >= 16 { 0xFFFF } else { low_lanes(n) }
    }

    /// Sums of four registers at once: `[Σ a[0], Σ a[1], Σ a[2], Σ a[3]]`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) fn hsum4(a: [__m512; 4]) -> [f32; 4] {
        // Within each 128-bit lane: rows 0/1 and 2/3 interleaved and halved, then the four rows
        // side by side; the four lanes are then added.
        let s01 = _mm512_add_ps(
            _mm512_unpacklo_ps(a[0], a[1]),
            _mm512_unpackhi_ps(a[0], a[1]),
        );
        let s23 = _mm512_add_ps(
            _mm512_unpacklo_ps(a[2], a[3]),
            _mm512_unpackhi_ps(a[2], a[3]),
        );
        let (d01, d23) = (_mm512_castps_pd(s01), _mm512_castps_pd(s23));
        let s = _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(d01, d23)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(d01, d23)),
        );
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(s)));
        let h = _mm256_add_ps(_mm512_castps512_ps256(s), hi);
        let q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
        let mut out = [0f32; 4];
        // SAFETY: `out` holds exactly 4 f32.
        unsafe { _mm_storeu_ps(out.as_mut_ptr(), q) };
        out
    }

    /// 16 half-precision values (IEEE f16, or bfloat16 when `BF`) widened to f32, exactly.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) fn widen_half<const BF: bool>(h: __m256i) -> __m512 {
        if BF {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        } else {
            _mm512_cvtph_ps(h)
        }
    }

    /// `steps` rounds of twelve independent 16-lane FMA chains (the machine's FMA peak, for
    /// `engine::fma_peak_gflops`); returns a sum of the chains so the work is kept.
    ///
    /// # Safety
    /// The CPU has AVX-512F (a `cpu::Avx512` token).
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn fma_chains(steps: usize) -> f32 {
        let mut acc = [_mm512_set1_ps(1.0); 12];
        let m = _mm512_set1_ps(std::hint::black_box(0.999_999));
        let c = _mm512_set1_ps(std::hint::black_box(1e-7));
        for _ in 0..steps {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, m, c);
            }
        }
        let sum = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a));
        _mm512_reduce_add_ps(sum)
    }

    /// `out (c × r) = xᵀ` for `x (r × c)` over the whole 16 × 16 blocks (rows and columns below
    /// `r / 16 · 16` and `c / 16 · 16`). The caller handles the ragged edges.
    ///
    /// # Safety
    /// The CPU has AVX-512F (a `cpu::Avx512` token); `x.len() ≥ r·c` and `out.len() ≥ r·c`.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn transpose_blocks16(x: &[f32], r: usize, c: usize, out: &mut [f32]) {
        assert!(x.len() >= r * c && out.len() >= r * c);
        let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
        for i0 in (0..r / 16 * 16).step_by(16) {
            for j0 in (0..c / 16 * 16).step_by(16) {
                // SAFETY: rows `i0..i0 + 16 ≤ r` and columns `j0..j0 + 16 ≤ c` of `x`, written to
                // rows `j0..j0 + 16` and columns `i0..i0 + 16` of `out`: all inside `r·c`.
                unsafe { transpose16(xp.add(i0 * c + j0), c, op.add(j0 * r + i0), r) };
            }
        }
    }

    /// One 16 × 16 block: `dst[j·ldd + i] = src[i·lds + j]` for `i, j < 16`, as 16 loads, an
    /// in-register transpose and 16 stores.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `src` is readable for rows `i·lds .. i·lds + 16` and `dst`
    /// writable for rows `j·ldd .. j·ldd + 16` (`i, j < 16`).
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) unsafe fn transpose16(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
        let mut v = [_mm512_setzero_ps(); 16];
        for (i, v) in v.iter_mut().enumerate() {
            // SAFETY: row `i < 16` of the block, readable by the contract.
            *v = unsafe { _mm512_loadu_ps(src.add(i * lds)) };
        }
        transpose16_regs(&mut v);
        for (j, v) in v.iter().enumerate() {
            // SAFETY: row `j < 16` of the destination block, writable by the contract.
            unsafe { _mm512_storeu_ps(dst.add(j * ldd), *v) };
        }
    }

    /// Transposes 16 registers seen as a 16 × 16 matrix (register `i`, lane `j` ↔ register
    /// `j`, lane `i`).
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) fn transpose16_regs(v: &mut [__m512; 16]) {
        // Interleaves pairs of lanes (`unpack*_ps`), then pairs of pairs (`unpack*_pd`), then
        // 128-bit quarters twice (`shuffle_f32x4`).
        #[inline]
        #[target_feature(enable = "avx512f")]
        fn lo_pd(a: __m512, b: __m512) -> __m512 {
            _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        fn hi_pd(a: __m512, b: __m512) -> __m512 {
            _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
        }
        let mut t = [_mm512_setzero_ps(); 16];
        for p in 0..8 {
            t[2 * p] = _mm512_unpacklo_ps(v[2 * p], v[2 * p + 1]);
            t[2 * p + 1] = _mm512_unpackhi_ps(v[2 * p], v[2 * p + 1]);
        }
        for q in 0..4 {
            let b = 4 * q;
            v[b] = lo_pd(t[b], t[b + 2]);
            v[b + 1] = hi_pd(t[b], t[b + 2]);
            v[b + 2] = lo_pd(t[b + 1], t[b + 3]);
            v[b + 3] = hi_pd(t[b + 1], t[b + 3]);
        }
        // v[4q + e] now holds, in each 128-bit quarter l, column 4l + e of rows 4q..4q + 4.
        for h in 0..2 {
            for e in 0..4 {
                let (a, b) = (v[8 * h + e], v[8 * h + 4 + e]);
                t[8 * h + e] = _mm512_shuffle_f32x4::<0x88>(a, b);
                t[8 * h + 4 + e] = _mm512_shuffle_f32x4::<0xdd>(a, b);
            }
        }
        for e in 0..8 {
            let (a, b) = (t[e], t[8 + e]);
            v[e] = _mm512_shuffle_f32x4::<0x88>(a, b);
            v[8 + e] = _mm512_shuffle_f32x4::<0xdd>(a, b);
        }
    }
}

/// A buffer of f32 values whose first value starts a 64-byte cache line: a kernel's 16-value
/// loads and stores from a multiple of 16 then never span two lines (a layer's output planes
/// of 16·k values each start lines of their own).
#[derive(Debug, Default, Clone)]
pub(crate) struct LineBuf {
    lines: Vec<Line>,
    len: usize,
}

/// One cache line of values.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

impl LineBuf {
    /// Holds `len` values: those already held keep their values, new lines are zero.
    pub(crate) fn resize(&mut self, len: usize) {
        let lines = len.div_ceil(16);
        if self.lines.len() < lines {
            self.lines.resize(lines, Line([0.0; 16]));
        }
        self.len = len;
    }
}

impl std::ops::Deref for LineBuf {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        // SAFETY: `Line` is 16 f32 with no padding (`repr(C)`, 64 bytes), so the lines are
        // `16 · lines.len() ≥ len` contiguous, initialised f32.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), self.len) }
    }
}

impl std::ops::DerefMut for LineBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), self.len) }
    }
}
