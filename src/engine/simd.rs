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

#[cfg(target_arch = "x86_64")]
pub use x86::*;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::format::RowBlocks;

    /// Lanes `0..n` (`n < 16`) of a 16-lane mask.
    #[inline(always)]
    fn low_lanes(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
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
        // SAFETY (whole block): loads stay below `n`, within both slices; gathered columns are
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
        // SAFETY (whole block): every 16-byte code load and 64-byte `x` load ends at or before
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
        // SAFETY (whole block): every 16-byte load of `bytes` and 64-byte load of `xe`/`xo`
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
    /// rows. Columns past `x.len()` read as zero; `y` receives at most `y.len()` rows.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VL (`avx512()`).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn row_blocks_dot(rb: &RowBlocks, x: &[f32], y: &mut [f32]) {
        const L: usize = RowBlocks::LANES;
        const W: usize = RowBlocks::WINDOW;
        let lanes = |n: usize| -> __mmask16 { if n >= L { 0xFFFF } else { low_lanes(n) } };
        for (b, span) in rb.block_windows.windows(2).enumerate() {
            let mut a0 = _mm512_setzero_ps();
            let mut a1 = _mm512_setzero_ps();
            let mut a2 = _mm512_setzero_ps();
            let mut a3 = _mm512_setzero_ps();
            let wins = &rb.windows[span[0] as usize..span[1] as usize];
            for &(w, first, n) in wins {
                let base = w as usize * W;
                let avail = x.len().saturating_sub(base);
                let (first, n) = (first as usize, n as usize);
                // Checked slicing: every load below stays inside these two slices.
                let offs = &rb.offsets[first * L..(first + n) * L];
                let vals = &rb.values[first * L..(first + n) * L];
                let (op, vp) = (offs.as_ptr(), vals.as_ptr());
                // SAFETY: the masks admit only lanes below `x.len() − base`, so the masked
                // loads read inside `x` (a zero mask reads nothing; the pointer is formed with
                // `wrapping_add` since it may then lie past the end); the offset and value loads
                // read step `s < n` of slices holding `n` steps of 16 lanes; the permutation
                // uses only the low 5 bits of each offset, a register index.
                unsafe {
                    let xp = x.as_ptr().wrapping_add(base);
                    let x0 = _mm512_maskz_loadu_ps(lanes(avail), xp);
                    let x1 =
                        _mm512_maskz_loadu_ps(lanes(avail.saturating_sub(L)), xp.wrapping_add(L));
                    let pick = |s: usize| {
                        let i = _mm512_cvtepu8_epi32(_mm_loadu_si128(op.add(s * L).cast()));
                        _mm512_permutex2var_ps(x0, i, x1)
                    };
                    let val = |s: usize| _mm512_loadu_ps(vp.add(s * L));
                    let mut s = 0;
                    while s + 4 <= n {
                        a0 = _mm512_fmadd_ps(val(s), pick(s), a0);
                        a1 = _mm512_fmadd_ps(val(s + 1), pick(s + 1), a1);
                        a2 = _mm512_fmadd_ps(val(s + 2), pick(s + 2), a2);
                        a3 = _mm512_fmadd_ps(val(s + 3), pick(s + 3), a3);
                        s += 4;
                    }
                    while s < n {
                        a0 = _mm512_fmadd_ps(val(s), pick(s), a0);
                        s += 1;
                    }
                }
            }
            let sum = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
            let mut out = [0f32; L];
            // SAFETY: `out` holds exactly 16 f32.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), sum) };
            let start = (b * L).min(y.len());
            let end = (b * L + L).min(y.len());
            y[start..end].copy_from_slice(&out[..end - start]);
        }
    }
}
