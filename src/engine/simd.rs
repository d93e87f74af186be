//! AVX-512 versions of the single-sample hot loops, chosen at run time when the CPU has
//! AVX-512F/BW/VL. The portable loops in `kernels.rs` stay the fallback (other CPUs, other
//! architectures) and can be forced with `force_portable`, so tests cover both paths.

use std::sync::atomic::{AtomicBool, Ordering};

static PORTABLE: AtomicBool = AtomicBool::new(false);

/// Makes the kernels take their portable paths even on AVX-512 CPUs (`false` restores the
/// run-time choice). Both paths compute the same sums; this exists so tests and benchmarks can
/// exercise and compare the fallback.
pub fn force_portable(on: bool) {
    PORTABLE.store(on, Ordering::Relaxed);
}

/// Whether the AVX-512 kernels run: the CPU has AVX-512F, BW and VL, `SQUEEZE_PORTABLE_KERNELS` is unset
/// in the environment (read once, to compare the paths from the command line), and
/// `force_portable` is off.
#[inline]
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let usable = *USABLE.get_or_init(|| {
            std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vl")
                && std::env::var_os("SQUEEZE_PORTABLE_KERNELS").is_none()
        });
        usable && !PORTABLE.load(Ordering::Relaxed)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the kernels that unpack bit-packed codes in registers run: `avx512()` and the CPU
/// also has AVX-512 VBMI (byte permutations across the whole register).
#[inline]
pub fn avx512_vbmi() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static VBMI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        avx512() && *VBMI.get_or_init(|| std::is_x86_feature_detected!("avx512vbmi"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::*;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::format::{BlockValues, Lanes, RowBlocks};

    /// Lanes `0..n` (`n < 16`) of a 16-lane mask.
    #[inline(always)]
    fn low_lanes(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// `steps` rounds of twelve independent 16-lane FMA chains (the machine's FMA peak, for
    /// `engine::fma_peak_gflops`); returns a sum of the chains so the work is kept.
    ///
    /// # Safety
    /// The CPU has AVX-512F (`avx512()`).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma_chains(steps: usize) -> f32 {
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
    /// The CPU has AVX-512F (`avx512()`); `x.len() ≥ r·c` and `out.len() ≥ r·c`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn transpose_blocks16(x: &[f32], r: usize, c: usize, out: &mut [f32]) {
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
    pub unsafe fn transpose16(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
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
        let mut v = [_mm512_setzero_ps(); 16];
        for (i, v) in v.iter_mut().enumerate() {
            // SAFETY: row `i < 16` of the block, readable by the contract.
            *v = unsafe { _mm512_loadu_ps(src.add(i * lds)) };
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
        for (j, v) in v.iter().enumerate() {
            // SAFETY: row `j < 16` of the destination block, writable by the contract.
            unsafe { _mm512_storeu_ps(dst.add(j * ldd), *v) };
        }
    }

    /// `Σ vals[k] · x[cols[k]]` with 16-lane gathers.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL (`avx512()`), and every `cols[k]` for `k < min(len)` is
    /// `< x.len()` and `< 2^31`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn gather_dot(vals: &[f32], cols: &[u32], x: &[f32]) -> f32 {
        let n = vals.len().min(cols.len());
        let (vp, cp, xp) = (vals.as_ptr(), cols.as_ptr(), x.as_ptr());
        let mut a0 = _mm512_setzero_ps();
        let mut a1 = _mm512_setzero_ps();
        let mut k = 0;
        // SAFETY: for the whole block, loads stay below `n`, within both slices; gathered columns are
        // in `x` by the caller's contract; masked lanes are neither loaded nor gathered.
        unsafe {
            while k + 32 <= n {
                let i0 = _mm512_loadu_si512(cp.add(k).cast());
                let i1 = _mm512_loadu_si512(cp.add(k + 16).cast());
                let g0 = _mm512_i32gather_ps::<4>(i0, xp);
                let g1 = _mm512_i32gather_ps::<4>(i1, xp);
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(vp.add(k)), g0, a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(vp.add(k + 16)), g1, a1);
                k += 32;
            }
            if k + 16 <= n {
                let i0 = _mm512_loadu_si512(cp.add(k).cast());
                let g0 = _mm512_i32gather_ps::<4>(i0, xp);
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(vp.add(k)), g0, a0);
                k += 16;
            }
            if k < n {
                let m = low_lanes(n - k);
                let i1 = _mm512_maskz_loadu_epi32(m, cp.add(k).cast());
                let g1 = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m, i1, xp);
                a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, vp.add(k)), g1, a1);
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
    }

    /// `Σ (codes[i] − z) · x[i]`, computed as `Σ codes[i] · x[i] − z_sum` with `z_sum = z · Σ x`
    /// given by the caller (one sum per input vector, not per row): each 16 codes then take a
    /// widening load, a conversion and an FMA, with no integer subtraction.
    ///
    /// # Safety
    /// The CPU has AVX-512F and BW (`avx512()`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn dot_codes(codes: &[u8], z_sum: f32, x: &[f32]) -> f32 {
        let n = codes.len().min(x.len());
        let (cp, xp) = (codes.as_ptr(), x.as_ptr());
        let mut a0 = _mm512_setzero_ps();
        let mut a1 = _mm512_setzero_ps();
        let mut k = 0;
        // SAFETY: for the whole block, every 16-byte code load and 64-byte `x` load ends at or before
        // `n`, within both slices.
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
    /// The CPU has AVX-512F and BW (`avx512()`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn dot_nibbles(bytes: &[u8], z_sum: f32, xe: &[f32], xo: &[f32]) -> f32 {
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

    /// `y[r] = Σ_c W[r][c] · x[c]` for every row of a layer laid out as `RowBlocks`: per block
    /// of 16 rows and window of 32 columns, the window of `x` sits in two registers and each
    /// step picks every lane's input with one permutation (`vpermt2ps`), then one FMA serves 16
    /// rows (half-precision values widened first). `x` is the input zero-padded to whole
    /// windows (`xpad`, at least `32 ×` the windows the layer spans), so every window loads
    /// unmasked; `y` receives at most `y.len()` rows.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL (`avx512()`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn row_blocks_dot(rb: &RowBlocks, xpad: &[f32], y: &mut [f32]) {
        // SAFETY: forwarded contract; each pointer is the start of `len` steps of its type.
        unsafe {
            match &rb.values {
                BlockValues::F32(v) => {
                    row_blocks_kernel::<0>(rb, v.as_ptr().cast(), v.len(), &[], &[0.0; 32], xpad, y)
                }
                BlockValues::F16(v) => {
                    row_blocks_kernel::<1>(rb, v.as_ptr().cast(), v.len(), &[], &[0.0; 32], xpad, y)
                }
                BlockValues::Bf16(v) => {
                    row_blocks_kernel::<2>(rb, v.as_ptr().cast(), v.len(), &[], &[0.0; 32], xpad, y)
                }
                BlockValues::Codes { codes, scales } => {
                    let (p, n) = (codes.as_ptr().cast(), codes.len());
                    row_blocks_kernel::<3>(rb, p, n, scales, &[0.0; 32], xpad, y)
                }
                BlockValues::Book { codes, table } => {
                    let (p, n) = (codes.as_ptr().cast(), codes.len());
                    row_blocks_kernel::<4>(rb, p, n, &[], table, xpad, y)
                }
            }
        }
    }

    /// `row_blocks_dot` over `len` steps of values at `vp0`: f32 (`V = 0`), f16 (`1`) or
    /// bf16 (`2`) bits, centred i8 codes (`3`) whose block sums are multiplied by that
    /// block's `scales` (a block without scales gives zeros), or indices into `table` (`4`).
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL; `vp0` points at `len` steps of 16 values of the type `V`
    /// names.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn row_blocks_kernel<const V: u8>(
        rb: &RowBlocks,
        vp0: *const u8,
        len: usize,
        scales: &[Lanes],
        table: &[f32; 32],
        xpad: &[f32],
        y: &mut [f32],
    ) {
        // SAFETY: `table` holds 32 f32.
        let (t0, t1) = unsafe {
            (
                _mm512_loadu_ps(table.as_ptr()),
                _mm512_loadu_ps(table.as_ptr().add(16)),
            )
        };
        const L: usize = RowBlocks::LANES;
        const W: usize = RowBlocks::WINDOW;
        let size = match V {
            0 => 4,
            1 | 2 => 2,
            _ => 1,
        };
        let steps = (rb.offsets.len() / L).min(len);
        let (op0, xp0) = (rb.offsets.as_ptr(), xpad.as_ptr());
        for (b, span) in rb.block_windows.windows(2).enumerate() {
            let mut a0 = _mm512_setzero_ps();
            let mut a1 = _mm512_setzero_ps();
            let mut a2 = _mm512_setzero_ps();
            let mut a3 = _mm512_setzero_ps();
            let Some(wins) = rb.windows.get(span[0] as usize..span[1] as usize) else {
                continue;
            };
            for &(w, first, n) in wins {
                let (base, first, n) = (w as usize * W, first as usize, n as usize);
                // A window outside the padded input or steps outside the layout (a malformed
                // layout) is skipped rather than read.
                if base + W > xpad.len() || first + n > steps {
                    continue;
                }
                // SAFETY: the window `base .. base + 32` lies in `xpad` and steps
                // `first .. first + n` in both step arrays (checked just above); the
                // permutation uses only the low 5 bits of each offset, a register index.
                unsafe {
                    let x0 = _mm512_loadu_ps(xp0.add(base));
                    let x1 = _mm512_loadu_ps(xp0.add(base + L));
                    let (op, vp) = (op0.add(first * L), vp0.add(first * L * size));
                    let pick = |s: usize| {
                        let i = _mm512_cvtepu8_epi32(_mm_loadu_si128(op.add(s * L).cast()));
                        _mm512_permutex2var_ps(x0, i, x1)
                    };
                    let val = |s: usize| {
                        let p = vp.add(s * L * size);
                        match V {
                            0 => _mm512_loadu_ps(p.cast()),
                            1 => widen_half::<false>(_mm256_loadu_si256(p.cast())),
                            2 => widen_half::<true>(_mm256_loadu_si256(p.cast())),
                            3 => {
                                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast())))
                            }
                            // The permutation reads the low 5 bits of each index.
                            _ => _mm512_permutex2var_ps(
                                t0,
                                _mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast())),
                                t1,
                            ),
                        }
                    };
                    let mut s = 0;
                    while s + 4 <= n {
                        a0 = _mm512_fmadd_ps(val(s), pick(s), a0);
                        a1 = _mm512_fmadd_ps(val(s + 1), pick(s + 1), a1);
                        a2 = _mm512_fmadd_ps(val(s + 2), pick(s + 2), a2);
                        a3 = _mm512_fmadd_ps(val(s + 3), pick(s + 3), a3);
                        s += 4;
                    }
                    if s + 2 <= n {
                        a0 = _mm512_fmadd_ps(val(s), pick(s), a0);
                        a1 = _mm512_fmadd_ps(val(s + 1), pick(s + 1), a1);
                        s += 2;
                    }
                    if s < n {
                        a2 = _mm512_fmadd_ps(val(s), pick(s), a2);
                    }
                }
            }
            let mut sum = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
            if V == 3 {
                sum = match scales.get(b) {
                    // SAFETY: `sc` holds exactly 16 f32.
                    Some(sc) => _mm512_mul_ps(sum, unsafe { _mm512_loadu_ps(sc.0.as_ptr()) }),
                    None => _mm512_setzero_ps(),
                };
            }
            let mut out = [0f32; L];
            // SAFETY: `out` holds exactly 16 f32.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), sum) };
            let start = (b * L).min(y.len());
            let end = (b * L + L).min(y.len());
            y[start..end].copy_from_slice(&out[..end - start]);
        }
    }

    /// Sums of four registers at once: `[Σ a[0], Σ a[1], Σ a[2], Σ a[3]]`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn hsum4(a: [__m512; 4]) -> [f32; 4] {
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

    /// Lanes `0..n` of 16, all of them when `n >= 16`.
    #[inline(always)]
    fn lanes_upto(n: usize) -> __mmask16 {
        if n >= 16 { 0xFFFF } else { low_lanes(n) }
    }

    /// `[Σ_i codes_k[i] · x[i]]` for four rows of 8-bit codes against one input (zero points and
    /// scales are the caller's): each `x` load serves four rows, and the four independent
    /// accumulator chains keep the FMA unit busy instead of waiting on one chain's latency.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL (`avx512()`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn rows4_codes(rows: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
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
    /// The CPU has AVX-512F/BW/VL (`avx512()`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn rows4_nibbles(rows: [&[u8]; 4], ea: &[f32], ob: &[f32]) -> [f32; 4] {
        let levels: [f32; 16] = std::array::from_fn(|i| i as f32);
        // SAFETY: forwarded contract.
        unsafe { rows4_nibble_pairs::<false>(rows, ea, ob, &levels) }
    }

    /// `[Σ_j book[lo_kj] · xe[j] + book[hi_kj] · xo[j]]` for four rows of 4-bit codebook
    /// indices two per byte (low nibble first) against the even and odd inputs: each nibble
    /// looked up with one permute of the 16-entry codebook held in a register.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL (`avx512()`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn rows4_book_nibbles(
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
    /// The CPU has AVX-512F/BW/VL (`avx512()`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn rows4_nibble_pairs<const BOOK: bool>(
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

    /// `[Σ_i code_k[i] · x[i]]` for four rows of `B`-bit codes held as bit planes (`BitPlanes`:
    /// per run of 16 columns, `B` masks; zero points and scales are the caller's): every plane
    /// adds the run's inputs under its mask into its own accumulator, and the planes are
    /// combined as `Σ_b 2^b · acc_b` at the end (exact doublings). One masked add per plane and
    /// 16 weights, no unpacking.
    ///
    /// # Safety
    /// The CPU has AVX-512F (`avx512()`).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn rows4_planes<const B: usize>(rows: [&[u16]; 4], x: &[f32]) -> [f32; 4] {
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

    /// 16 half-precision values (IEEE f16, or bfloat16 when `BF`) widened to f32, exactly.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn widen_half<const BF: bool>(h: __m256i) -> __m512 {
        if BF {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        } else {
            _mm512_cvtph_ps(h)
        }
    }

    /// `[Σ_i w_k[i] · x[i]]` for four rows of half-precision weights (IEEE f16, or bfloat16 when
    /// `BF`), widened in registers.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL (`avx512()`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn rows4_half<const BF: bool>(rows: [&[u16]; 4], x: &[f32]) -> [f32; 4] {
        let n = rows.iter().fold(x.len(), |n, r| n.min(r.len()));
        let rp = rows.map(|r| r.as_ptr());
        let xp = x.as_ptr();
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut k = 0;
        // SAFETY: for the whole block, every unmasked load ends at or before `n`, within all five
        // slices; the masked tail admits only lanes `k..n`.
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

    /// `Σ w[k] · x[cols[k]]` over half-precision values (IEEE f16, or bfloat16 when `BF`)
    /// widened in registers, with 16-lane gathers.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL (`avx512()`), and every `cols[k]` for `k < min(len)` is
    /// `< x.len()` and `< 2^31`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn gather_half<const BF: bool>(vals: &[u16], cols: &[u32], x: &[f32]) -> f32 {
        let n = vals.len().min(cols.len());
        let (vp, cp, xp) = (vals.as_ptr(), cols.as_ptr(), x.as_ptr());
        let mut a0 = _mm512_setzero_ps();
        let mut a1 = _mm512_setzero_ps();
        let mut k = 0;
        // SAFETY: for the whole block, loads stay below `n`, within both slices; gathered columns are
        // in `x` by the caller's contract; masked lanes are neither loaded nor gathered.
        unsafe {
            while k + 32 <= n {
                let g0 = _mm512_i32gather_ps::<4>(_mm512_loadu_si512(cp.add(k).cast()), xp);
                let g1 = _mm512_i32gather_ps::<4>(_mm512_loadu_si512(cp.add(k + 16).cast()), xp);
                let w0 = widen_half::<BF>(_mm256_loadu_si256(vp.add(k).cast()));
                let w1 = widen_half::<BF>(_mm256_loadu_si256(vp.add(k + 16).cast()));
                a0 = _mm512_fmadd_ps(w0, g0, a0);
                a1 = _mm512_fmadd_ps(w1, g1, a1);
                k += 32;
            }
            while k < n {
                let m = lanes_upto(n - k);
                let i = _mm512_maskz_loadu_epi32(m, cp.add(k).cast());
                let g = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m, i, xp);
                let w = widen_half::<BF>(_mm256_maskz_loadu_epi16(m, vp.add(k).cast()));
                a0 = _mm512_fmadd_ps(w, g, a0);
                k += 16;
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
    }

    /// Bits `bit .. bit + 16` of an LSB-first bitmask (bits past its end read as 0).
    #[inline(always)]
    fn mask_bits16(mask: &[u8], bit: usize) -> u32 {
        let at = bit / 8;
        let word = match mask.get(at..at + 4) {
            Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
            _ => {
                let byte = |i: usize| mask.get(at + i).copied().unwrap_or(0) as u32;
                byte(0) | byte(1) << 8 | byte(2) << 16
            }
        };
        (word >> (bit % 8)) & 0xFFFF
    }

    /// `[Σ_c w_k[c] · x[c]]` for four rows of a bitmask layer with half-precision values
    /// (IEEE f16, or bfloat16 when `BF`): row `k`'s columns `0..n` are bits `bits[k] ..` of
    /// `mask`, its values `vals[k]` the set columns' in order. Per 16 columns, the row's next
    /// values are widened and expanded into the set lanes (`vexpandps`), then multiplied with
    /// the dense input: no gathers, so it pays off when many columns are kept.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL (`avx512()`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn rows4_mask_half<const BF: bool>(
        mask: &[u8],
        bits: [usize; 4],
        vals: [&[u16]; 4],
        n: usize,
        x: &[f32],
    ) -> [f32; 4] {
        let n = n.min(x.len());
        let xp = x.as_ptr();
        let mut at = [0usize; 4];
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut j = 0;
        while j < n {
            let lanes = lanes_upto(n - j);
            // SAFETY: the mask admits only lanes `j..n`, inside `x`.
            let xv = unsafe { _mm512_maskz_loadu_ps(lanes, xp.add(j)) };
            for k in 0..4 {
                let m = mask_bits16(mask, bits[k] + j) as __mmask16 & lanes;
                let left = vals[k].len().saturating_sub(at[k]);
                let p = vals[k].as_ptr().wrapping_add(at[k]);
                // SAFETY: 16 values are read only when `left >= 16` remain in `vals[k]`;
                // otherwise the mask admits only the `left` remaining (none when it is
                // exhausted, the pointer then never being dereferenced).
                let h = unsafe {
                    if left >= 16 {
                        _mm256_loadu_si256(p.cast())
                    } else {
                        _mm256_maskz_loadu_epi16(low_lanes(left), p.cast())
                    }
                };
                let w = _mm512_maskz_expand_ps(m, widen_half::<BF>(h));
                acc[k] = _mm512_fmadd_ps(w, xv, acc[k]);
                at[k] += m.count_ones() as usize;
            }
            j += 16;
        }
        hsum4(acc)
    }

    /// How the packed-code kernels turn `B`-bit codes into weights.
    #[derive(Debug, Clone, Copy)]
    pub enum Levels<'a> {
        /// `book[code]`, the table repeating the codebook with period `2^B` (entry `i` holds
        /// level `i mod 2^B`, 0 past the codebook), so a code lane holding stray bits above
        /// its low `B` still picks its level from an in-register table.
        Book(&'a [f32; 256]),
        /// `scales[k][s] · (code − zeros[k][s])` for row `k`'s entries `s·seg .. (s+1)·seg`
        /// (`seg` a multiple of 16, or at least the row's length).
        Affine {
            seg: usize,
            scales: [&'a [f32]; 4],
            zeros: [&'a [f32]; 4],
        },
    }

    /// One row's (or segment's) code → weight map held in registers: up to 64 table entries,
    /// or the scale and zero point for codes too wide for a table.
    #[derive(Clone, Copy)]
    struct Lut {
        t: [__m512; 4],
        s: __m512,
        z: __m512,
    }

    /// The `Lut` of `Levels::Book`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn book_lut(book: &[f32; 256]) -> Lut {
        let p = book.as_ptr();
        // SAFETY: the four loads read entries 0..64 of the 256.
        let t = [0, 1, 2, 3].map(|i| unsafe { _mm512_loadu_ps(p.add(16 * i)) });
        let z = _mm512_setzero_ps();
        Lut { t, s: z, z }
    }

    /// The `Lut` of `scale · (code − zero)`: the 32 levels `s · ((i mod 2^B) − z)` computed
    /// with the decoder's own operations, so each weight equals the decoded one exactly.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn affine_lut<const B: u32>(scale: f32, zero: f32) -> Lut {
        let (s, z) = (_mm512_set1_ps(scale), _mm512_set1_ps(zero));
        let top = _mm512_set1_epi32((1 << B) - 1);
        let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let level = |base: i32| {
            let i = _mm512_and_si512(_mm512_add_epi32(iota, _mm512_set1_epi32(base)), top);
            _mm512_mul_ps(s, _mm512_sub_ps(_mm512_cvtepi32_ps(i), z))
        };
        let (t0, t1) = (level(0), level(16));
        Lut {
            t: [t0, t1, t0, t1],
            s,
            z,
        }
    }

    /// The weights of 16 code lanes (each lane's low `B` bits are its code; higher bits are
    /// ignored): an in-register table lookup for codebooks up to 6 bits and affine codes up to 5,
    /// a gather from `book` for wider codebooks, the affine formula for wider affine codes.
    ///
    /// # Safety
    /// The CPU has AVX-512F; when `BOOK` and `B >= 7`, `book` points to 256 readable f32.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn weights<const B: u32, const BOOK: bool>(
        l: &Lut,
        idx: __m512i,
        book: *const f32,
    ) -> __m512 {
        let code = || _mm512_and_si512(idx, _mm512_set1_epi32((1 << B) - 1));
        if B <= 4 {
            _mm512_permutexvar_ps(idx, l.t[0])
        } else if B == 5 {
            _mm512_permutex2var_ps(l.t[0], idx, l.t[1])
        } else if BOOK && B == 6 {
            let lo = _mm512_permutex2var_ps(l.t[0], idx, l.t[1]);
            let hi = _mm512_permutex2var_ps(l.t[2], idx, l.t[3]);
            _mm512_mask_blend_ps(_mm512_test_epi32_mask(idx, _mm512_set1_epi32(32)), lo, hi)
        } else if BOOK {
            // SAFETY: the codes are masked to `< 2^B <= 256`, inside `book` by the contract.
            unsafe { _mm512_i32gather_ps::<4>(code(), book) }
        } else {
            _mm512_mul_ps(l.s, _mm512_sub_ps(_mm512_cvtepi32_ps(code()), l.z))
        }
    }

    /// Byte permutation and shifts that move 16 `B`-bit codes, the first at bit `o` (< 8) of a
    /// 16-byte window, into the low bits of 16 lanes: lane `j` takes the two bytes holding bits
    /// `o + j·B .. o + j·B + B` and shifts them down.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn unpack_setup<const B: u32>(o: u32) -> (__m512i, __m512i) {
        let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let pos = _mm512_add_epi32(
            _mm512_mullo_epi32(iota, _mm512_set1_epi32(B as i32)),
            _mm512_set1_epi32(o as i32),
        );
        let byte = _mm512_srli_epi32::<3>(pos);
        let next = _mm512_add_epi32(byte, _mm512_set1_epi32(1));
        let perm = _mm512_or_si512(byte, _mm512_slli_epi32::<8>(next));
        (perm, _mm512_and_si512(pos, _mm512_set1_epi32(7)))
    }

    /// 16 codes from the window at `p` (of which `avail` bytes may be read) in the low bits of
    /// 16 lanes, with `unpack_setup`'s permutation and shifts. Window bytes past `avail` read
    /// as zero.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL/VBMI; `p .. p + min(avail, 16)` is readable.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
    #[inline]
    unsafe fn unpack16(p: *const u8, avail: usize, (perm, shift): (__m512i, __m512i)) -> __m512i {
        // SAFETY: at most `min(avail, 16)` bytes from `p` are read, by the contract.
        let raw = unsafe {
            if avail >= 16 {
                _mm_loadu_si128(p.cast())
            } else {
                _mm_maskz_loadu_epi8(low_lanes(avail), p.cast())
            }
        };
        let spread = _mm512_permutexvar_epi8(perm, _mm512_zextsi128_si512(raw));
        _mm512_srlv_epi32(spread, shift)
    }

    /// `[Σ_i w_k[i] · x[i]]` for four rows of `n` bit-packed `B`-bit codes (row `k`'s codes are
    /// codes `starts[k] ..` of the stream `codes`), the weights given by `levels`: codes are
    /// unpacked and turned into weights in registers (see `weights`), each `x` load serving
    /// four rows.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL/VBMI (`avx512_vbmi()`); `1 <= B <= 8`; for `Levels::Affine`,
    /// every row has `ceil(n / seg)` scales and zero points (`seg >= 1`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
    pub unsafe fn rows4_packed<const B: u32>(
        codes: &[u8],
        starts: [usize; 4],
        n: usize,
        levels: Levels<'_>,
        x: &[f32],
    ) -> [f32; 4] {
        // SAFETY: forwarded contract.
        unsafe {
            match levels {
                Levels::Book(book) => {
                    let lut = book_lut(book);
                    rows4_packed_with::<B, true>(
                        codes,
                        starts,
                        n,
                        usize::MAX,
                        x,
                        book.as_ptr(),
                        |_, _| lut,
                    )
                }
                Levels::Affine { seg, scales, zeros } => rows4_packed_with::<B, false>(
                    codes,
                    starts,
                    n,
                    seg,
                    x,
                    std::ptr::null(),
                    |k, s| affine_lut::<B>(scales[k][s], zeros[k][s]),
                ),
            }
        }
    }

    /// `rows4_packed` with row `k`'s table for segment `s` given by `lut(k, s)`.
    ///
    /// # Safety
    /// As `rows4_packed`; `book` as `weights` requires.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
    #[inline]
    unsafe fn rows4_packed_with<const B: u32, const BOOK: bool>(
        codes: &[u8],
        starts: [usize; 4],
        n: usize,
        seg: usize,
        x: &[f32],
        book: *const f32,
        lut: impl Fn(usize, usize) -> Lut,
    ) -> [f32; 4] {
        let b = B as usize;
        let n = n.min(x.len());
        let seg = seg.max(1);
        let (cp, xp, len) = (codes.as_ptr(), x.as_ptr(), codes.len());
        let base = starts.map(|s| s * b / 8);
        let setup = starts.map(|s| unpack_setup::<B>((s * b % 8) as u32));
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut j = 0;
        while j < n {
            let end = j.saturating_add(seg).min(n);
            let luts = [0, 1, 2, 3].map(|k| lut(k, j / seg));
            while j < end {
                let m = lanes_upto(end - j);
                // SAFETY: the mask admits only lanes `j..end`, inside `x`.
                let xv = unsafe { _mm512_maskz_loadu_ps(m, xp.add(j)) };
                // 16 codes take exactly `2·B` bytes, so row `k`'s window moves by whole bytes.
                let off = j * b / 8;
                for k in 0..4 {
                    let at = base[k] + off;
                    // SAFETY: `unpack16` reads at most the `len − at` bytes left in `codes` (none
                    // when `at >= len`, the pointer then never being dereferenced); `weights`
                    // gets the caller's `book`.
                    let w = unsafe {
                        let idx = unpack16(cp.wrapping_add(at), len.saturating_sub(at), setup[k]);
                        weights::<B, BOOK>(&luts[k], idx, book)
                    };
                    acc[k] = _mm512_mask3_fmadd_ps(w, xv, acc[k], m);
                }
                j += 16;
            }
        }
        hsum4(acc)
    }

    /// `Σ_k w_k · x[cols[k]]` over the bit-packed `B`-bit codes `start .. start + cols.len()` of
    /// `codes`, the weights given by `levels` (`Levels::Affine` uses row 0's first segment for
    /// every entry), with 16-lane gathers.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL/VBMI (`avx512_vbmi()`); `1 <= B <= 8`; every `cols[k]` is
    /// `< x.len()` and `< 2^31`; for `Levels::Affine`, row 0 has a scale and a zero point.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
    pub unsafe fn gather_packed<const B: u32>(
        codes: &[u8],
        start: usize,
        cols: &[u32],
        levels: Levels<'_>,
        x: &[f32],
    ) -> f32 {
        // SAFETY: forwarded contract.
        unsafe {
            match levels {
                Levels::Book(book) => gather_packed_with::<B, true>(
                    codes,
                    start,
                    cols,
                    x,
                    book.as_ptr(),
                    book_lut(book),
                ),
                Levels::Affine { scales, zeros, .. } => {
                    let lut = affine_lut::<B>(scales[0][0], zeros[0][0]);
                    gather_packed_with::<B, false>(codes, start, cols, x, std::ptr::null(), lut)
                }
            }
        }
    }

    /// `gather_packed` with the table `lut`.
    ///
    /// # Safety
    /// As `gather_packed`; `book` as `weights` requires.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
    #[inline]
    unsafe fn gather_packed_with<const B: u32, const BOOK: bool>(
        codes: &[u8],
        start: usize,
        cols: &[u32],
        x: &[f32],
        book: *const f32,
        lut: Lut,
    ) -> f32 {
        let b = B as usize;
        let n = cols.len();
        let (cp, ip, xp, len) = (codes.as_ptr(), cols.as_ptr(), x.as_ptr(), codes.len());
        let base = start * b / 8;
        let setup = unpack_setup::<B>((start * b % 8) as u32);
        let mut a0 = _mm512_setzero_ps();
        let mut a1 = _mm512_setzero_ps();
        let mut j = 0;
        while j < n {
            let m = lanes_upto(n - j);
            let at = base + j * b / 8;
            // SAFETY: the index load and the gather admit only lanes `j..n` (columns in `x` by
            // the contract); `unpack16` reads at most the `len − at` bytes left in `codes`;
            // `weights` gets the caller's `book`.
            unsafe {
                let i = _mm512_maskz_loadu_epi32(m, ip.add(j).cast());
                let g = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m, i, xp);
                let idx = unpack16(cp.wrapping_add(at), len.saturating_sub(at), setup);
                let w = weights::<B, BOOK>(&lut, idx, book);
                a0 = _mm512_mask3_fmadd_ps(w, g, a0, m);
            }
            std::mem::swap(&mut a0, &mut a1);
            j += 16;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
    }
}
