//! Depthwise convolutions (groups with one input channel each, as MobileNet's 3×3 layers),
//! computed directly, `LANES` channels at a time. A block's input planes are first copied
//! channels-last into a zero-padded image (`(h + 2·pad_h) × (w + 2·pad_w)` pixels of `LANES`
//! values, one transposed 16 × 16 tile at a time), so every tap of an output position is one
//! vector load; 16 output positions are summed in registers, then transposed back into the
//! output planes. The work per output is the same at every map size: the 4×4 maps of a
//! network's last stages run as well as its first 32×32 ones. Where each input value goes and
//! where each output position reads are worked out once, when the layer is prepared.
//!
//! Every weight format runs here:
//! - float inputs see the layer's dequantized weights;
//! - with quantized activations, uniform weight codes with one scale per channel are summed as
//!   centred codes times centred activation codes, then scaled per channel: the integer
//!   kernel's sums, exact in f32 since `kh·kw·255²` stays below 2²⁴ (`MAX_TAPS`);
//! - other weights with quantized activations see the inputs' quantized values.

use super::super::cpu::{Avx512, Isa};
use super::super::format::PackedLayer;
use super::super::ops::{Clamp, ConvShape};
use super::integer::{IntegerRows, centre_codes, fake_quantize};
use crate::compress::ActivationQuant;

/// Channels a block computes at once: one 16-lane register per pixel.
const LANES: usize = 16;

/// Most taps whose integer sums stay exact in f32 (`MAX_TAPS · 255² < 2²⁴`).
const MAX_TAPS: usize = 256;

/// How the layer reads its inputs.
#[derive(Debug, Clone)]
enum Input {
    /// As they are.
    Float,
    /// Their quantized values (`fake_quantize`).
    FakeQuant(ActivationQuant),
    /// Their centred codes; the sums are then scaled by channel (`scale[c]`, the weight's and
    /// the activation's scales combined) before the bias is added.
    Codes {
        act: ActivationQuant,
        scale: Vec<f32>,
    },
}

/// Where the values go and are read, in floats of the padded image, the same for every block.
#[derive(Debug, Clone)]
struct Geometry {
    /// Input value `y·w + x` of a plane goes to the pixel at `pixel[y·w + x]`.
    pixel: Vec<usize>,
    /// Output position `o`'s first tap is at `first[o]`; past the last position (up to a
    /// whole number of `LANES`), the last position's.
    first: Vec<usize>,
    /// Whether the four positions from `4g` lie in one output row (`in_row[g]`).
    in_row: Vec<bool>,
    /// Where tap `(i, j)` (at `i·kw + j`) reads, relative to its position's first tap.
    tap_at: Vec<usize>,
    /// Floats of one padded image row.
    row: usize,
    /// One past the last float of the last input pixel.
    pixel_end: usize,
    /// Input plane of each output channel, as an offset into a sample.
    plane: Vec<usize>,
}

impl Geometry {
    fn new(s: &ConvShape) -> Geometry {
        let wp = s.w + 2 * s.pad.1;
        let row = wp * LANES;
        let pixel: Vec<usize> = (0..s.h * s.w)
            .map(|f| ((f / s.w + s.pad.0) * wp + f % s.w + s.pad.1) * LANES)
            .collect();
        let positions = s.oh * s.ow;
        let at = |o: usize| (o / s.ow) * s.stride.0 * row + (o % s.ow) * s.stride.1 * LANES;
        let first = (0..positions.next_multiple_of(LANES))
            .map(|o| at(o.min(positions.saturating_sub(1))))
            .collect();
        let in_row = (0..positions.next_multiple_of(LANES))
            .step_by(4)
            .map(|o| o + 4 <= positions && o % s.ow + 4 <= s.ow)
            .collect();
        let tap_at = (0..s.kh)
            .flat_map(|i| (0..s.kw).map(move |j| i * s.dil.0 * row + j * s.dil.1 * LANES))
            .collect();
        let per_input = s.cout / s.groups;
        let plane = (0..s.cout).map(|c| c / per_input * s.h * s.w).collect();
        let pixel_end = pixel.iter().max().map_or(0, |p| p + LANES);
        Geometry {
            pixel,
            pixel_end,
            first,
            in_row,
            tap_at,
            row,
            plane,
        }
    }

    /// Floats of the padded image: every tap of every output position is inside.
    fn image_len(&self, s: &ConvShape) -> usize {
        (s.h + 2 * s.pad.0) * self.row
    }

    /// Zeroes the padding around the image's interior, which `fill` leaves as it is.
    fn zero_border(&self, s: &ConvShape, image: &mut [f32]) {
        let (top, left) = (s.pad.0 * self.row, s.pad.1 * LANES);
        let right = (s.pad.1 + s.w) * LANES;
        let bottom = (s.pad.0 + s.h) * self.row;
        image[..top].fill(0.0);
        image[bottom..self.image_len(s)].fill(0.0);
        for r in image[top..bottom].chunks_exact_mut(self.row) {
            r[..left].fill(0.0);
            r[right..].fill(0.0);
        }
    }
}

/// A depthwise layer's taps and bias by block of channels, with its geometry.
#[derive(Debug, Clone)]
pub(crate) struct Depthwise {
    shape: ConvShape,
    /// Tap `t` of block `b`: `taps[(b·kk + t)·LANES ..][..LANES]`, channel `b·LANES + l` in
    /// lane `l`, zero past the last channel.
    taps: Vec<f32>,
    /// Bias of channel `c` (zero without one), padded to whole blocks.
    bias: Vec<f32>,
    input: Input,
    geometry: Geometry,
    avx512: Option<Avx512>,
}

impl Depthwise {
    /// The kernel for `layer` when it is a depthwise convolution (one input channel per group);
    /// `None` otherwise.
    pub(crate) fn new(layer: &PackedLayer, shape: &ConvShape) -> Option<Self> {
        let s = shape;
        let kk = s.kh * s.kw;
        let depthwise = s.groups > 1
            && s.cin == s.groups
            && s.cout.is_multiple_of(s.groups)
            && layer.rows == s.cout
            && layer.cols == kk
            && kk <= MAX_TAPS
            && s.stride.0 > 0
            && s.stride.1 > 0;
        if !depthwise {
            return None;
        }
        let blocks = s.cout.div_ceil(LANES);
        let codes = layer
            .activation
            .and_then(|act| Some((act, IntegerRows::new(layer, act)?.per_row(kk)?)));
        let (weights, input) = match (codes, layer.activation) {
            (Some((act, (weights, mut scale))), _) => {
                scale.resize(blocks * LANES, 0.0);
                (weights, Input::Codes { act, scale })
            }
            (None, Some(act)) => (layer.dequantized(), Input::FakeQuant(act)),
            (None, None) => (layer.dequantized(), Input::Float),
        };
        let mut taps = vec![0f32; blocks * kk * LANES];
        for (c, w) in weights.chunks_exact(kk).enumerate() {
            let (b, l) = (c / LANES, c % LANES);
            for (t, &v) in w.iter().enumerate() {
                taps[(b * kk + t) * LANES + l] = v;
            }
        }
        let mut bias = layer.bias.clone().unwrap_or_default();
        bias.resize(blocks * LANES, 0.0);
        Some(Depthwise {
            shape: *s,
            taps,
            bias,
            input,
            geometry: Geometry::new(s),
            avx512: Isa::current().avx512,
        })
    }

    /// `y (cout × oh·ow) = bias + x ⊛ taps` for one sample `x` (`cin × h × w`); `image` and
    /// `codes` are scratch.
    pub(crate) fn run(
        &self,
        x: &[f32],
        y: &mut [f32],
        image: &mut Vec<f32>,
        codes: &mut Vec<f32>,
        clamp: Option<Clamp>,
    ) {
        let (s, g) = (&self.shape, &self.geometry);
        let x = &x[..s.cin * s.h * s.w];
        let (x, scale): (&[f32], _) = match &self.input {
            Input::Float => (x, None),
            Input::FakeQuant(a) => {
                codes.clear();
                codes.extend_from_slice(x);
                fake_quantize(codes, a.bits, a.scale, a.zero_point);
                (codes, None)
            }
            Input::Codes { act: a, scale } => {
                codes.clear();
                codes.extend_from_slice(x);
                centre_codes(codes, a.bits, a.scale, a.zero_point);
                (codes, Some(&scale[..]))
            }
        };
        let y = &mut y[..s.cout * s.oh * s.ow];
        // Every block writes the same interior pixels; the padding is zeroed once.
        let len = g.image_len(s);
        if image.len() < len + LANES {
            image.resize(len + LANES, 0.0);
        }
        // Pixels on cache lines of their own: a load never spans two lines.
        let start = image.as_ptr().align_offset(64).min(LANES);
        let image = &mut image[start..start + len];
        g.zero_border(s, image);
        let kk = g.tap_at.len();
        for b in 0..s.cout.div_ceil(LANES) {
            let c0 = b * LANES;
            let block = Block {
                s,
                g,
                c0,
                cn: (s.cout - c0).min(LANES),
                taps: &self.taps[b * kk * LANES..][..kk * LANES],
                bias: &self.bias[c0..][..LANES],
                scale: scale.map(|s| &s[c0..][..LANES]),
                clamp,
            };
            #[cfg(target_arch = "x86_64")]
            if self.avx512.is_some() {
                // SAFETY: the `Avx512` token vouches for AVX-512F; `fill` and `sums` check the
                // lengths of what they read and write.
                unsafe {
                    x86::fill(&block, x, image);
                    x86::sums(&block, image, y);
                }
                continue;
            }
            block.fill(x, image);
            block.sums(image, y);
        }
    }
}

/// One block of `cn ≤ LANES` output channels from `c0`, with its taps, biases and scales.
struct Block<'a> {
    s: &'a ConvShape,
    g: &'a Geometry,
    c0: usize,
    cn: usize,
    taps: &'a [f32],
    bias: &'a [f32],
    scale: Option<&'a [f32]>,
    /// Bounds of the outputs, applied in registers.
    clamp: Option<Clamp>,
}

impl Block<'_> {
    /// Copies the block's input planes into the interior of the padded image.
    fn fill(&self, x: &[f32], image: &mut [f32]) {
        let hw = self.s.h * self.s.w;
        for (l, &plane) in self.g.plane[self.c0..][..self.cn].iter().enumerate() {
            for (&v, &px) in x[plane..][..hw].iter().zip(&self.g.pixel) {
                image[px + l] = v;
            }
        }
    }

    /// The block's output planes from the filled image.
    fn sums(&self, image: &[f32], y: &mut [f32]) {
        let positions = self.s.oh * self.s.ow;
        for (o, &at) in self.g.first[..positions].iter().enumerate() {
            let mut acc = [0f32; LANES];
            if self.scale.is_none() {
                acc.copy_from_slice(self.bias);
            }
            for (t, &off) in self.g.tap_at.iter().enumerate() {
                let w = &self.taps[t * LANES..][..LANES];
                let px = &image[at + off..][..LANES];
                for ((a, &w), &v) in acc.iter_mut().zip(w).zip(px) {
                    *a = w.mul_add(v, *a);
                }
            }
            if let Some(scale) = self.scale {
                for ((a, &m), &b) in acc.iter_mut().zip(scale).zip(self.bias) {
                    *a = a.mul_add(m, b);
                }
            }
            if let Some(c) = self.clamp {
                c.apply(&mut acc);
            }
            for (l, &a) in acc[..self.cn].iter().enumerate() {
                y[(self.c0 + l) * positions + o] = a;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Block, LANES};
    use crate::engine::simd::{lanes_upto, transpose16_regs};
    use std::arch::x86_64::*;

    /// `Block::fill`, 16 values of 16 planes at a time: loaded, transposed, stored as 16
    /// pixels.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fill(b: &Block, x: &[f32], image: &mut [f32]) {
        let (s, g) = (b.s, b.g);
        let hw = s.h * s.w;
        let planes = &g.plane[b.c0..][..b.cn];
        assert!(planes.iter().all(|&p| p + hw <= x.len()) && g.pixel.len() == hw);
        assert!(g.pixel_end <= image.len());
        let (xp, ip) = (x.as_ptr(), image.as_mut_ptr());
        for (f0, pixels) in (0..hw).step_by(LANES).zip(g.pixel.chunks(LANES)) {
            let m = lanes_upto(pixels.len());
            let mut v = [_mm512_setzero_ps(); LANES];
            for (v, &p) in v.iter_mut().zip(planes) {
                // SAFETY: values `f0 .. f0 + pixels.len() ≤ hw` of a plane inside `x`
                // (asserted).
                *v = unsafe { _mm512_maskz_loadu_ps(m, xp.add(p + f0)) };
            }
            transpose16_regs(&mut v);
            for (v, &px) in v.iter().zip(pixels) {
                // SAFETY: an input value's pixel, inside the image (asserted).
                unsafe { _mm512_storeu_ps(ip.add(px), *v) };
            }
        }
    }

    /// `Block::sums`, 16 output positions at a time in registers, transposed into the output
    /// planes.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn sums(b: &Block, image: &[f32], y: &mut [f32]) {
        let (s, g) = (b.s, b.g);
        let positions = s.oh * s.ow;
        let kk = g.tap_at.len();
        // Every position's taps, those of the four-in-a-row loads included, lie inside the
        // image: the last position's reach the farthest.
        let reach = g.first.iter().max().copied().unwrap_or(0)
            + g.tap_at.iter().max().copied().unwrap_or(0);
        assert!(image.len() >= reach + LANES && b.taps.len() >= kk * LANES);
        assert!(y.len() >= (b.c0 + b.cn) * positions && g.first.len() >= positions);
        let (ip, yp, tp) = (image.as_ptr(), y.as_mut_ptr(), b.taps.as_ptr());
        assert!(b.bias.len() >= LANES && b.scale.is_none_or(|m| m.len() >= LANES));
        // SAFETY: `bias` holds `LANES` values (asserted).
        let bias = unsafe { _mm512_loadu_ps(b.bias.as_ptr()) };
        // SAFETY: as `bias`.
        let scale = b.scale.map(|m| unsafe { _mm512_loadu_ps(m.as_ptr()) });
        let bounds = b
            .clamp
            .map(|c| (_mm512_set1_ps(c.lo), _mm512_set1_ps(c.hi)));
        let init = if scale.is_some() {
            _mm512_setzero_ps()
        } else {
            bias
        };
        let three = s.kh == 3 && s.kw == 3 && s.dil == (1, 1);
        let mut w3 = [_mm512_setzero_ps(); 9];
        if three {
            for (t, w) in w3.iter_mut().enumerate() {
                // SAFETY: tap `t < 9 = kk` of the block (asserted above).
                *w = unsafe { _mm512_loadu_ps(tp.add(t * LANES)) };
            }
        }
        let row = g.row;
        let tiles = g
            .first
            .chunks_exact(LANES)
            .zip(g.in_row.chunks_exact(LANES / 4));
        for (o0, (first, in_row)) in (0..positions).step_by(LANES).zip(tiles) {
            let mut acc = [init; LANES];
            // Four positions at a time: four independent chains of FMAs.
            for ((acc, at), &in_row) in acc
                .chunks_exact_mut(4)
                .zip(first.chunks_exact(4))
                .zip(in_row)
            {
                let mut a = [init; 4];
                // SAFETY: every read is a tap of an output position, inside the image
                // (`reach`, asserted); four positions in a row read the pixels between theirs.
                unsafe {
                    match (three, in_row, s.stride.1) {
                        (true, true, 1) => four_in_row::<1>(&w3, ip.add(at[0]), row, &mut a),
                        (true, true, 2) => four_in_row::<2>(&w3, ip.add(at[0]), row, &mut a),
                        (true, ..) => {
                            for i in 0..3 {
                                for j in 0..3 {
                                    let w = w3[3 * i + j];
                                    for (a, &p) in a.iter_mut().zip(at) {
                                        let v = _mm512_loadu_ps(ip.add(p + i * row + j * LANES));
                                        *a = _mm512_fmadd_ps(w, v, *a);
                                    }
                                }
                            }
                        }
                        _ => {
                            for (t, &off) in g.tap_at.iter().enumerate() {
                                let w = _mm512_loadu_ps(tp.add(t * LANES));
                                for (a, &p) in a.iter_mut().zip(at) {
                                    *a = _mm512_fmadd_ps(w, _mm512_loadu_ps(ip.add(p + off)), *a);
                                }
                            }
                        }
                    }
                }
                acc.copy_from_slice(&a);
            }
            if let Some(m) = scale {
                for a in acc.iter_mut() {
                    *a = _mm512_fmadd_ps(*a, m, bias);
                }
            }
            if let Some((lo, hi)) = bounds {
                for a in acc.iter_mut() {
                    *a = _mm512_min_ps(_mm512_max_ps(*a, lo), hi);
                }
            }
            transpose16_regs(&mut acc);
            let m = lanes_upto(positions - o0);
            for (l, a) in acc[..b.cn].iter().enumerate() {
                // SAFETY: positions `o0 ..` of channel `c0 + l`, the mask stopping at
                // `positions`: inside `y` (asserted).
                unsafe { _mm512_mask_storeu_ps(yp.add((b.c0 + l) * positions + o0), m, *a) };
            }
        }
    }

    /// Four consecutive output positions of one row under a 3×3 window at column stride `S`:
    /// each of the window's rows loads the `3·S + 3` pixels the four positions share once.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `p` (the first position's first tap) is readable for three rows
    /// `row` floats apart of `3·S + 3` pixels.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn four_in_row<const S: usize>(
        w: &[__m512; 9],
        p: *const f32,
        row: usize,
        a: &mut [__m512; 4],
    ) {
        for i in 0..3 {
            let mut px = [_mm512_setzero_ps(); 9];
            for (q, px) in px[..3 * S + 3].iter_mut().enumerate() {
                // SAFETY: pixel `q < 3·S + 3` of window row `i < 3`, readable by the contract.
                *px = unsafe { _mm512_loadu_ps(p.add(i * row + q * LANES)) };
            }
            for (k, a) in a.iter_mut().enumerate() {
                for j in 0..3 {
                    *a = _mm512_fmadd_ps(w[3 * i + j], px[k * S + j], *a);
                }
            }
        }
    }
}
