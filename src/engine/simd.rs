//! AVX-512 versions of the single-sample hot loops, chosen at run time when the CPU has
//! AVX-512F. The portable loops in `kernels.rs` stay the fallback (other CPUs, other
//! architectures) and can be forced with `force_portable`, so tests cover both paths.

use std::sync::atomic::{AtomicBool, Ordering};

static PORTABLE: AtomicBool = AtomicBool::new(false);

/// Makes the kernels take their portable paths even on AVX-512 CPUs (`false` restores the
/// run-time choice). Both paths compute the same sums; this exists so tests and benchmarks can
/// exercise and compare the fallback.
pub fn force_portable(on: bool) {
    PORTABLE.store(on, Ordering::Relaxed);
}

/// Whether the AVX-512 kernels run: the CPU has AVX-512F, `SQUEEZE_PORTABLE_KERNELS` is unset
/// in the environment (read once, to compare the paths from the command line), and
/// `force_portable` is off.
#[inline]
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let usable = *USABLE.get_or_init(|| {
            std::is_x86_feature_detected!("avx512f")
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

    /// Lanes `0..n` (`n < 16`) of a 16-lane mask.
    #[inline(always)]
    fn low_lanes(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// `Σ vals[k] · x[cols[k]]` with 16-lane gathers.
    ///
    /// # Safety
    /// The CPU has AVX-512F (`avx512()`), and every `cols[k]` for `k < min(len)` is
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

    /// `Σ (codes[i] − z) · x[i]`: bytes widened and converted in registers, fused with the FMA.
    ///
    /// # Safety
    /// The CPU has AVX-512F (`avx512()`).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_codes(codes: &[u8], z: i32, x: &[f32]) -> f32 {
        let n = codes.len().min(x.len());
        let (cp, xp) = (codes.as_ptr(), x.as_ptr());
        let zv = _mm512_set1_epi32(z);
        let mut a0 = _mm512_setzero_ps();
        let mut a1 = _mm512_setzero_ps();
        let mut k = 0;
        // SAFETY (whole block): every 16-byte code load and 64-byte `x` load ends at or before
        // `n`, within both slices.
        unsafe {
            while k + 32 <= n {
                let c0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(cp.add(k).cast()));
                let c1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(cp.add(k + 16).cast()));
                let f0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(c0, zv));
                let f1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(c1, zv));
                a0 = _mm512_fmadd_ps(f0, _mm512_loadu_ps(xp.add(k)), a0);
                a1 = _mm512_fmadd_ps(f1, _mm512_loadu_ps(xp.add(k + 16)), a1);
                k += 32;
            }
            if k + 16 <= n {
                let c0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(cp.add(k).cast()));
                let f0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(c0, zv));
                a0 = _mm512_fmadd_ps(f0, _mm512_loadu_ps(xp.add(k)), a0);
                k += 16;
            }
        }
        let mut t = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        for (&c, &xv) in codes[k..n].iter().zip(&x[k..n]) {
            t = ((c as i32 - z) as f32).mul_add(xv, t);
        }
        t
    }

    /// `Σ_j (lo_j − z) · xe[j] + (hi_j − z) · xo[j]` over 4-bit codes two per byte (low nibble
    /// first) against the even and odd inputs: one byte load feeds 32 codes.
    ///
    /// # Safety
    /// The CPU has AVX-512F (`avx512()`).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_nibbles(bytes: &[u8], z: i32, xe: &[f32], xo: &[f32]) -> f32 {
        let n = bytes.len().min(xe.len()).min(xo.len());
        let (bp, ep, op) = (bytes.as_ptr(), xe.as_ptr(), xo.as_ptr());
        let zv = _mm512_set1_epi32(z);
        let lo_mask = _mm512_set1_epi32(0xF);
        let mut a0 = _mm512_setzero_ps();
        let mut a1 = _mm512_setzero_ps();
        let mut k = 0;
        // SAFETY (whole block): every 16-byte load of `bytes` and 64-byte load of `xe`/`xo`
        // ends at or before `n`, within all three slices.
        unsafe {
            while k + 16 <= n {
                let b = _mm512_cvtepu8_epi32(_mm_loadu_si128(bp.add(k).cast()));
                let lo = _mm512_sub_epi32(_mm512_and_si512(b, lo_mask), zv);
                let hi = _mm512_sub_epi32(_mm512_srli_epi32::<4>(b), zv);
                a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), _mm512_loadu_ps(ep.add(k)), a0);
                a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), _mm512_loadu_ps(op.add(k)), a1);
                k += 16;
            }
        }
        let mut t = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        for ((&b, &e), &o) in bytes[k..n].iter().zip(&xe[k..n]).zip(&xo[k..n]) {
            let v = b as i32;
            t = (((v & 0xF) - z) as f32).mul_add(e, t);
            t = (((v >> 4) - z) as f32).mul_add(o, t);
        }
        t
    }
}
