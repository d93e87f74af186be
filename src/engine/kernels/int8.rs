//! Integer kernels for layers whose weights are uniform codes and whose inputs are quantized
//! (static activation quantization): unsigned 8-bit activation codes times signed 8-bit weights,
//! four products summed per 32-bit lane (`vpdpbusd`, AVX-512 VNNI), so one instruction does 64
//! multiply-adds where an f32 FMA does 16.
//!
//! For activation codes `q` (zero point `z_a`, scale `s_a`) and weights `w = code − z_w` with one
//! scale `s_w[r]` per row (per-tensor or per-channel granularity):
//!
//! `y[r] = bias[r] + (s_w[r] · s_a) · (Σ_c w[r][c] · q[c] − z_a · Σ_c w[r][c])`
//!
//! The integer sum is exact (bounded when the layer is prepared), and the float steps are the
//! ones of the generic integer kernel (`integer::IntegerRows`: one product, one addition), so
//! both give identical outputs.
//!
//! Layout: the weights in panels of `LANES` rows, each `k`-quad-major: panel `p`, quad `t` holds
//! rows `16p..16p+16` × columns `4t..4t+4` as 64 bytes (row-major within), so one vector load
//! feeds 16 rows and one broadcast of a sample's four codes feeds all of them. Columns are padded
//! to a multiple of 4 and rows to a multiple of 16 with zero weights.

use super::super::format::{PackedLayer, ValueStore};
use super::super::pack;
use crate::compress::{ActivationQuant, Granularity};
use crate::engine::cpu::{Avx512, Isa, Vnni};

/// Rows per panel: the 16 lanes of a vector of 32-bit sums.
const LANES: usize = 16;
/// Samples per batched tile: 24 accumulators, one per sample, each holding 16 rows.
const NR: usize = 24;

/// A layer's weights as signed 8-bit integers in the panel layout, with what turns the integer
/// sums back into outputs, and its inputs' quantization.
#[derive(Debug, Clone)]
pub(crate) struct Int8Layer {
    pub(super) rows: usize,
    /// Columns padded to a multiple of 4.
    pub(crate) kp: usize,
    /// The inputs' quantization.
    pub(crate) act: ActivationQuant,
    panels: Vec<i8>,
    /// `Σ_c w[r][c]` per row (padded to whole panels with 0).
    row_sums: Vec<i32>,
    /// The weight scale of each row (padded with 0).
    scales: Vec<f32>,
    /// The bias of each row (padded with 0).
    bias: Vec<f32>,
    /// Vector quantization of the inputs.
    avx512: Option<Avx512>,
    /// The VNNI kernel.
    vnni: Option<Vnni>,
}

impl Int8Layer {
    /// The integer form of `layer`, or `None` when its inputs are not quantized to at most 8
    /// bits with a zero point among the codes, its values are not uniform codes with one scale
    /// per row whose centred values fit in `i8`, or a sum could overflow `i32`. One
    /// instruction does 64 products, where the generic integer kernel does one per kept weight,
    /// so a pruned layer runs here too, zeros where pruned.
    pub(super) fn new(layer: &PackedLayer, isa: Isa) -> Option<Int8Layer> {
        let act = layer.activation?;
        if act.bits > 8 || !(0..1i32 << act.bits).contains(&act.zero_point) {
            return None;
        }
        let ValueStore::Uniform {
            bits,
            codes,
            scales,
            zero_points,
            granularity,
        } = &layer.values
        else {
            return None;
        };
        if !matches!(granularity, Granularity::Tensor | Granularity::Channel) {
            return None;
        }
        let (rows, cols) = (layer.rows, layer.cols);
        let kp = cols.div_ceil(4) * 4;
        let prow = rows.div_ceil(LANES) * LANES;
        let mut panels = vec![0i8; prow * kp];
        let mut row_sums = vec![0i32; prow];
        let mut row_scales = vec![0f32; prow];
        let mut bias = vec![0f32; prow];
        let mut buf = Vec::new();
        let mut cols_of = Vec::new();
        for r in 0..rows {
            let g = granularity.group_of(r, 0, cols);
            let z = zero_points.get(g, *bits);
            let range = layer.row_entries(r);
            buf.resize(range.len(), 0);
            pack::unpack_codes(codes, *bits, range.start, &mut buf);
            if layer.is_dense() {
                cols_of.clear();
                cols_of.extend(0..cols as u32);
            } else {
                layer.row_columns(r, &mut cols_of);
            }
            let (mut sum, mut abs) = (0i64, 0i64);
            for (&code, &c) in buf.iter().zip(&cols_of) {
                let w = code as i32 - z;
                let w8 = i8::try_from(w).ok()?;
                let c = c as usize;
                // Padding entries of CSR rows hold the zero code and add nothing.
                let at = (r / LANES) * LANES * kp + (c / 4) * LANES * 4 + (r % LANES) * 4 + c % 4;
                panels[at] = panels[at].checked_add(w8)?;
                sum += w as i64;
                abs += (w as i64).abs();
            }
            // |Σ w·q| ≤ Σ|w| · 255, and the zero-point term is at most as large.
            if abs * 255 * 2 > i32::MAX as i64 {
                return None;
            }
            row_sums[r] = sum as i32;
            row_scales[r] = scales[g];
            bias[r] = layer.bias.as_ref().map_or(0.0, |b| b[r]);
        }
        Some(Int8Layer {
            rows,
            kp,
            act,
            panels,
            row_sums,
            scales: row_scales,
            bias,
            avx512: isa.avx512,
            vnni: isa.vnni,
        })
    }

    /// `y (n × rows, sample-major) = W · q` for `n` samples of activation codes `q` (`n × kp`
    /// codes in `layout`; codes past `cols` are ignored, their weights being zero).
    pub(crate) fn run(&self, q: &[u8], n: usize, layout: Layout, y: &mut [f32]) {
        let (m, kp) = (self.rows, self.kp);
        assert!(
            q.len() >= n * kp && y.len() >= n * m,
            "int8 operands too short"
        );
        let (za, a_scale) = (self.act.zero_point, self.act.scale);
        // Byte offset of sample `j`'s quad `t`: `j·sample + t·quad`.
        let codes = match layout {
            Layout::Samples => Codes {
                q,
                n,
                sample: kp,
                quad: 4,
            },
            Layout::Quads => Codes {
                q,
                n,
                sample: 4,
                quad: 4 * n,
            },
        };
        #[cfg(target_arch = "x86_64")]
        if self.vnni.is_some() {
            // SAFETY: the `Vnni` token vouches for AVX-512F/BW/VNNI; `q` holds `n × kp` codes
            // (asserted above), so every `j·sample + t·quad + 4 ≤ n·kp` for `j < n`, `t < kp/4`
            // in either layout; the kernel bounds every other access by `rows`, `kp` and `n`.
            unsafe { x86::run(self, codes, y) };
            return;
        }
        for j in 0..n {
            for r in 0..m {
                let base = (r / LANES) * LANES * kp + (r % LANES) * 4;
                let mut acc = 0i32;
                for t in 0..kp / 4 {
                    let w = &self.panels[base + t * LANES * 4..base + t * LANES * 4 + 4];
                    let at = j * codes.sample + t * codes.quad;
                    for (&wv, &qv) in w.iter().zip(&q[at..at + 4]) {
                        acc += wv as i32 * qv as i32;
                    }
                }
                y[j * m + r] = self.finish(r, acc, za, a_scale);
            }
        }
    }

    /// Quantizes one sample's inputs to the kernel's unsigned codes, padding `out` past
    /// `x.len()` with zeros (`quantize_u8`).
    pub(crate) fn quantize(&self, x: &[f32], out: &mut [u8]) {
        quantize_u8(self.avx512, x, &self.act, out);
    }

    /// The output of row `r` from its integer sum `Σ w·q`.
    #[inline]
    fn finish(&self, r: usize, acc: i32, za: i32, a_scale: f32) -> f32 {
        let centred = acc - za * self.row_sums[r];
        self.bias[r] + (self.scales[r] * a_scale) * centred as f32
    }
}

/// `n` samples of activation codes, sample `j`'s columns `4t .. 4t + 4` at byte `j·sample +
/// t·quad` of `q`.
#[derive(Debug, Clone, Copy)]
struct Codes<'a> {
    q: &'a [u8],
    n: usize,
    sample: usize,
    quad: usize,
}

/// How `Int8Layer::run` finds the codes of sample `j`, columns `4t .. 4t + 4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Sample-major: sample `j`'s `kp` codes back to back.
    Samples,
    /// Quad-major: for each quad `t`, every sample's four codes (`interleave_quads`).
    Quads,
}

/// Interleaves a feature-major code matrix (`rows × n`, `rows` a multiple of 4) into the
/// `Layout::Quads` layout: `out[(t·n + j)·4 + i] = codes[(4t + i)·n + j]`.
pub(crate) fn interleave_quads(codes: &[u8], n: usize, out: &mut [u8]) {
    for (t, quad) in codes.chunks_exact(4 * n).enumerate() {
        let (r0, rest) = quad.split_at(n);
        let (r1, rest) = rest.split_at(n);
        let (r2, r3) = rest.split_at(n);
        let o = &mut out[t * 4 * n..(t + 1) * 4 * n];
        for (j, o) in o.chunks_exact_mut(4).enumerate() {
            o.copy_from_slice(&[r0[j], r1[j], r2[j], r3[j]]);
        }
    }
}

/// Quantizes one sample's inputs to unsigned activation codes
/// (`clamp(round_half_even(x / scale) + zero_point, 0, 2^bits − 1)`, as `quantize_centered`
/// before centring), padding `out` past `x.len()` with zeros; 16 at a time given the `Avx512`
/// token.
fn quantize_u8(avx512: Option<Avx512>, x: &[f32], a: &ActivationQuant, out: &mut [u8]) {
    let top = ((1i32 << a.bits) - 1) as f32;
    let z = a.zero_point as f32;
    let done = x.len().min(out.len());
    let mut k = 0;
    #[cfg(target_arch = "x86_64")]
    if avx512.is_some() {
        // SAFETY: the `Avx512` token vouches for AVX-512F/BW; both slices hold `done` values.
        k = unsafe { x86::quantize_u8(&x[..done], a.scale, z, top, &mut out[..done]) };
    }
    for (o, &v) in out[k..].iter_mut().zip(&x[k..done]) {
        *o = ((v / a.scale).round_ties_even() + z).clamp(0.0, top) as u8;
    }
    out[done..].fill(0);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Codes, Int8Layer, LANES, NR};

    /// `quantize_u8` over the whole 16-value steps of `x`, the same operations in the same
    /// order (so the same codes); returns how many values it wrote.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW; `out.len() ≥ x.len()`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_u8(
        x: &[f32],
        scale: f32,
        z: f32,
        top: f32,
        out: &mut [u8],
    ) -> usize {
        assert!(out.len() >= x.len());
        let (s, zv, lo, hi) = (
            _mm512_set1_ps(scale),
            _mm512_set1_ps(z),
            _mm512_setzero_ps(),
            _mm512_set1_ps(top),
        );
        let mut k = 0;
        while k + 16 <= x.len() {
            // SAFETY: values `k .. k + 16 ≤ x.len() ≤ out.len()` of both slices.
            unsafe {
                let v = _mm512_div_ps(_mm512_loadu_ps(x.as_ptr().add(k)), s);
                let r =
                    _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                let c = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(r, zv), lo), hi);
                let q = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(c));
                _mm_storeu_si128(out.as_mut_ptr().add(k).cast(), q);
            }
            k += 16;
        }
        k
    }

    /// `Int8Layer::run` on VNNI: 24 samples at a time against each panel of 16 rows, a
    /// remainder of 4 or more in one narrower tile (16, 8 or 4: a convolution over a 4 × 4 map
    /// has 16 positions, and one at a time it would read the weights 16 times), then the last
    /// few samples one at a time, four panels per pass.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VNNI (a `cpu::Vnni` token); `codes.q` holds `codes.n × l.kp`
    /// codes with sample `j`'s quad `t` at `j·sample + t·quad`, and `y` holds `n × l.rows`
    /// values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn run(l: &Int8Layer, codes: Codes<'_>, y: &mut [f32]) {
        let Codes {
            q,
            n,
            sample: sj,
            quad: st,
        } = codes;
        let (a_scale, za) = (l.act.scale, l.act.zero_point);
        let (m, kp) = (l.rows, l.kp);
        let quads = kp / 4;
        let panels = m.div_ceil(LANES);
        let mut j0 = 0;
        // SAFETY: the tiles read samples `j0 .. j0 + W ≤ n` (the caller's contract covers
        // them) and write their outputs; see `tile`. Below, panel `p` spans
        // `panels[p·16·kp .. (p+1)·16·kp]` (`quads` steps of 64 bytes); sample `j < n` reads
        // four bytes at `j·sj + t·st` for `t < quads`, inside `q` by the caller's contract; the
        // output stores are masked to the rows `< m` of samples `< n`.
        unsafe {
            while j0 + NR <= n {
                tile::<NR>(l, codes, j0, y);
                j0 += NR;
            }
            match n - j0 {
                16.. => j0 += tile::<16>(l, codes, j0, y),
                8.. => j0 += tile::<8>(l, codes, j0, y),
                4.. => j0 += tile::<4>(l, codes, j0, y),
                _ => {}
            }
            // Remaining samples one at a time, four panels per pass so four sums are in flight.
            for j in j0..n {
                let qs = q.as_ptr().add(j * sj);
                let mut p = 0;
                while p < panels {
                    let count = (panels - p).min(4);
                    let mut acc = [_mm512_setzero_si512(); 4];
                    for t in 0..quads {
                        let b = _mm512_set1_epi32(qs.add(t * st).cast::<i32>().read_unaligned());
                        for (i, acc) in acc.iter_mut().enumerate().take(count) {
                            let w = _mm512_loadu_si512(
                                l.panels.as_ptr().add((p + i) * LANES * kp + t * 64).cast(),
                            );
                            *acc = _mm512_dpbusd_epi32(*acc, b, w);
                        }
                    }
                    for (i, acc) in acc.iter().enumerate().take(count) {
                        store(l, p + i, *acc, a_scale, za, y.as_mut_ptr().add(j * m));
                    }
                    p += count;
                }
            }
        }
    }

    /// Samples `j0 .. j0 + W` against every panel of 16 rows: `W` accumulators, each quad of
    /// weights loaded once for all of them. Returns `W`.
    ///
    /// # Safety
    /// As `run`, and `j0 + W ≤ codes.n`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const W: usize>(
        l: &Int8Layer,
        codes: Codes<'_>,
        j0: usize,
        y: &mut [f32],
    ) -> usize {
        let Codes {
            q,
            n,
            sample: sj,
            quad: st,
        } = codes;
        assert!(j0 + W <= n && y.len() >= n * l.rows);
        let (a_scale, za) = (l.act.scale, l.act.zero_point);
        let (m, kp) = (l.rows, l.kp);
        // SAFETY: panel `p` spans `panels[p·16·kp .. (p+1)·16·kp]` (`kp / 4` steps of 64
        // bytes); sample `j0 + j < n` reads four bytes at `(j0 + j)·sj + t·st` for `t < kp / 4`,
        // inside `q` by the caller's contract; the stores are masked to the rows `< m` of
        // samples `j0 + j < n`, inside `y` (asserted).
        unsafe {
            for p in 0..m.div_ceil(LANES) {
                let wp = l.panels.as_ptr().add(p * LANES * kp);
                let mut acc = [_mm512_setzero_si512(); W];
                for t in 0..kp / 4 {
                    let w = _mm512_loadu_si512(wp.add(t * 64).cast());
                    for (j, acc) in acc.iter_mut().enumerate() {
                        let qp = q.as_ptr().add((j0 + j) * sj + t * st);
                        let b = _mm512_set1_epi32(qp.cast::<i32>().read_unaligned());
                        *acc = _mm512_dpbusd_epi32(*acc, b, w);
                    }
                }
                for (j, acc) in acc.iter().enumerate() {
                    store(l, p, *acc, a_scale, za, y.as_mut_ptr().add((j0 + j) * m));
                }
            }
        }
        W
    }

    /// Writes panel `p`'s 16 rows of one sample (`yrow` is that sample's output row):
    /// `bias + (s_w · s_a) · (acc − z_a · Σw)`, a product then a sum as in the scalar path.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `yrow` holds `l.rows` values.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn store(l: &Int8Layer, p: usize, acc: __m512i, a_scale: f32, za: i32, yrow: *mut f32) {
        let r0 = p * LANES;
        let left = l.rows - r0;
        let mask: __mmask16 = if left >= LANES {
            0xFFFF
        } else {
            ((1u32 << left) - 1) as __mmask16
        };
        // SAFETY: the row vectors are padded to whole panels; the store is masked to rows < m.
        unsafe {
            let sums = _mm512_loadu_si512(l.row_sums.as_ptr().add(r0).cast());
            let centred = _mm512_sub_epi32(acc, _mm512_mullo_epi32(_mm512_set1_epi32(za), sums));
            let f = _mm512_mul_ps(
                _mm512_loadu_ps(l.scales.as_ptr().add(r0)),
                _mm512_set1_ps(a_scale),
            );
            let out = _mm512_add_ps(
                _mm512_loadu_ps(l.bias.as_ptr().add(r0)),
                _mm512_mul_ps(f, _mm512_cvtepi32_ps(centred)),
            );
            _mm512_mask_storeu_ps(yrow.add(r0), mask, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_codes_are_the_same_on_both_paths_at_ties_and_out_of_range() {
        let a = ActivationQuant {
            bits: 8,
            scale: 0.5,
            zero_point: 3,
        };
        // Exact ties (x / scale = k + 0.5), values past both ends, NaN and infinities, and a
        // length that leaves a ragged tail.
        let mut x: Vec<f32> = (-40..40).map(|k| k as f32 * 0.25).collect();
        x.extend([
            1e9,
            -1e9,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            126.25,
            126.75,
        ]);
        let want: Vec<u8> = x
            .iter()
            .map(|&v| ((v / a.scale).round_ties_even() + 3.0).clamp(0.0, 255.0) as u8)
            .chain([0; 5])
            .collect();
        for avx512 in [Isa::current().avx512, None] {
            let mut out = vec![7u8; x.len() + 5];
            quantize_u8(avx512, &x, &a, &mut out);
            assert_eq!(out, want, "AVX-512 = {}", avx512.is_some());
        }
    }
}
