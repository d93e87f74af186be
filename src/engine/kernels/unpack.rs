//! Bit-packed codes of any width unpacked in registers (AVX-512 VBMI): a byte permutation
//! spreads 16 codes over 16 lanes, a shift per lane aligns them, and a table in registers (or
//! the affine formula) turns them into weights, so no code is unpacked to memory. Dense rows
//! (`codes::UnpackedRows`) and sparse rows (`gathered`) of codebooks and uniform codes share
//! this machinery.

#[cfg(target_arch = "x86_64")]
pub(super) use x86::Levels;

/// A codebook as `Levels::Book` wants it: repeated with period `2^bits` over 256 entries, 0 past
/// its end.
#[cfg(target_arch = "x86_64")]
pub(super) fn book_table(bits: u8, codebook: &[f32]) -> [f32; 256] {
    let period = 1usize << bits.clamp(1, 8);
    std::array::from_fn(|i| codebook.get(i % period).copied().unwrap_or(0.0))
}

/// A code width the unpacking kernels compile a loop for: 1 to 8 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Width(u8);

impl Width {
    pub(super) fn new(bits: u8) -> Option<Width> {
        (1..=8).contains(&bits).then_some(Width(bits))
    }
}

/// `x86::$kernel::<B>(args)` for the code width `B` equal to `$width`: the kernels take the
/// width as a constant, so each width compiles to its own loop.
#[cfg(target_arch = "x86_64")]
macro_rules! by_width {
    ($width:expr, $kernel:ident, $($arg:expr),* $(,)?) => {
        match $width.0 {
            1 => x86::$kernel::<1>($($arg),*),
            2 => x86::$kernel::<2>($($arg),*),
            3 => x86::$kernel::<3>($($arg),*),
            4 => x86::$kernel::<4>($($arg),*),
            5 => x86::$kernel::<5>($($arg),*),
            6 => x86::$kernel::<6>($($arg),*),
            7 => x86::$kernel::<7>($($arg),*),
            // A `Width` holds 1 to 8 bits: what is left is 8.
            _ => x86::$kernel::<8>($($arg),*),
        }
    };
}

/// `x86::rows4_packed` for `width`-bit codes.
///
/// # Safety
/// As `x86::rows4_packed`: the CPU has AVX-512F/BW/VL/VBMI (a `cpu::Vbmi` token) and
/// `Levels::Affine` holds `ceil(n / seg)` scales and zero points per row.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn packed_rows4(
    width: Width,
    codes: &[u8],
    starts: [usize; 4],
    n: usize,
    levels: Levels<'_>,
    x: &[f32],
) -> [f32; 4] {
    // SAFETY: the caller's contract is the kernel's; the width is the kernel's constant.
    unsafe { by_width!(width, rows4_packed, codes, starts, n, levels, x) }
}

/// `x86::gather_packed` for `width`-bit codes.
///
/// # Safety
/// As `x86::gather_packed`: the CPU has AVX-512F/BW/VL/VBMI (a `cpu::Vbmi` token), every
/// `cols[k]` is `< x.len()` and `< 2^31`, and `Levels::Affine` holds row 0's scale and zero
/// point.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn packed_gather(
    width: Width,
    codes: &[u8],
    start: usize,
    cols: &[u32],
    levels: Levels<'_>,
    x: &[f32],
) -> f32 {
    // SAFETY: the caller's contract is the kernel's; the width is the kernel's constant.
    unsafe { by_width!(width, gather_packed, codes, start, cols, levels, x) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::engine::simd::{hsum4, lanes_upto, low_lanes};

    /// How the packed-code kernels turn `B`-bit codes into weights.
    #[derive(Debug, Clone, Copy)]
    pub(crate) enum Levels<'a> {
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
    /// The CPU has AVX-512F/BW/VL/VBMI (a `cpu::Vbmi` token); `1 <= B <= 8`; for `Levels::Affine`,
    /// every row has `ceil(n / seg)` scales and zero points (`seg >= 1`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
    pub(super) unsafe fn rows4_packed<const B: u32>(
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
    /// The CPU has AVX-512F/BW/VL/VBMI (a `cpu::Vbmi` token); `1 <= B <= 8`; every `cols[k]` is
    /// `< x.len()` and `< 2^31`; for `Levels::Affine`, row 0 has a scale and a zero point.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
    pub(super) unsafe fn gather_packed<const B: u32>(
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
