//! Quantized inputs: activation codes (`quantize_centered`), the values a float layer sees
//! under activation quantization (`fake_quantize`), and the integer kernel for uniform weight
//! codes of any width, granularity and index (`IntegerRows`):
//! `y = bias + Σ_groups scale_w[g] · scale_a · Σ_{c in g} (code − zp_w[g]) · q[c]`, the inner
//! sums exact in i32. The 8-bit kernel (`int8.rs`) gives the same outputs faster where it
//! applies.

use super::super::format::{PackedLayer, ValueStore};
use super::super::pack;
use super::common::{KernelScratch, fill_bias};
use crate::compress::{ActivationQuant, Granularity};

/// Quantizes `x` to activation codes centred on the zero point: `q − zero_point`, with
/// `q = clamp(round_half_even(x / scale) + zero_point, 0, 2^bits − 1)`.
pub fn quantize_centered(x: &[f32], bits: u8, scale: f32, zero_point: i32, out: &mut [i16]) {
    let top = ((1i32 << bits) - 1) as f32;
    let z = zero_point as f32;
    for (o, &v) in out.iter_mut().zip(x) {
        let q = ((v / scale).round_ties_even() + z).clamp(0.0, top);
        *o = (q - z) as i16;
    }
}

/// The value the layer sees for `x` under activation quantization: `scale × (q − zero_point)`.
pub fn fake_quantize(x: &mut [f32], bits: u8, scale: f32, zero_point: i32) {
    centre_codes(x, bits, scale, zero_point);
    x.iter_mut().for_each(|v| *v *= scale);
}

/// Centred activation codes as values: `q − zero_point` for each of `x`, the codes of
/// `quantize_centered` (exact in f32).
pub fn centre_codes(x: &mut [f32], bits: u8, scale: f32, zero_point: i32) {
    let top = ((1i32 << bits) - 1) as f32;
    let z = zero_point as f32;
    for v in x.iter_mut() {
        *v = ((*v / scale).round_ties_even() + z).clamp(0.0, top) - z;
    }
}

/// A layer of uniform weight codes with quantized inputs, prepared for the integer kernel:
/// every entry's centred weight (`code − zero point`), its column for sparse layers, and each
/// row's runs of entries sharing one scale group with their combined scale
/// `scale_w[g] · scale_a`.
#[derive(Debug, Clone)]
pub(crate) struct IntegerRows {
    rows: usize,
    /// Centred weight of every entry.
    weights: Vec<i16>,
    /// Column of every entry; `None` for dense layers (entry `k` of a row is column `k`).
    columns: Option<Vec<u32>>,
    /// Row `r`'s entries are `starts[r] .. starts[r + 1]`.
    starts: Vec<usize>,
    /// Runs of a row's entries sharing one scale group: (first, end) relative to the row's
    /// first entry, and the combined scale; row `r`'s are `runs[run_starts[r] ..
    /// run_starts[r + 1]]`.
    runs: Vec<(usize, usize, f32)>,
    run_starts: Vec<usize>,
    bias: Option<Vec<f32>>,
}

impl IntegerRows {
    /// `None` unless the layer's values are uniform codes.
    pub(super) fn new(layer: &PackedLayer, act: ActivationQuant) -> Option<Self> {
        let ValueStore::Uniform {
            bits,
            codes: packed,
            scales,
            zero_points,
            granularity,
        } = &layer.values
        else {
            return None;
        };
        let (rows, cols) = (layer.rows, layer.cols);
        let dense = layer.is_dense();
        let groups_per_row = match granularity {
            Granularity::Group { size } => cols.div_ceil(*size),
            _ => 1,
        };
        let mut weights = Vec::with_capacity(layer.entries);
        let mut columns = Vec::new();
        let mut starts = vec![0];
        let (mut runs, mut run_starts) = (Vec::new(), vec![0]);
        let (mut idx, mut codes) = (Vec::new(), Vec::new());
        for r in 0..rows {
            let range = layer.row_entries(r);
            let n = range.len();
            if !dense {
                layer.row_columns(r, &mut idx);
                columns.extend_from_slice(&idx);
            }
            codes.resize(n, 0);
            pack::unpack_codes(packed, *bits, range.start, &mut codes);
            let col = |k: usize| if dense { k } else { idx[k] as usize };
            // Runs of entries sharing one scale group: (start, end, group).
            let first = runs.len();
            match granularity {
                Granularity::Tensor | Granularity::Channel => {
                    runs.push((0, n, granularity.group_of(r, 0, cols)))
                }
                Granularity::Group { size } => {
                    let mut start = 0;
                    while start < n {
                        let g = col(start) / size;
                        let mut end = start + 1;
                        while end < n && col(end) / size == g {
                            end += 1;
                        }
                        runs.push((start, end, r * groups_per_row + g));
                        start = end;
                    }
                }
            }
            for &(a, e, g) in &runs[first..] {
                let z = zero_points.get(g, *bits);
                weights.extend(codes[a..e].iter().map(|&c| (c as i32 - z) as i16));
            }
            starts.push(weights.len());
            run_starts.push(runs.len());
        }
        let runs = runs
            .into_iter()
            .map(|(a, e, g)| (a, e, scales[g] * act.scale))
            .collect();
        Some(IntegerRows {
            rows,
            weights,
            columns: (!dense).then_some(columns),
            starts,
            runs,
            run_starts,
            bias: layer.bias.clone(),
        })
    }

    /// The layer as a dense `rows × cols` matrix of centred weights, with each row's combined
    /// scale, when every row has one scale (`None` for groups smaller than a row).
    pub(super) fn per_row(&self, cols: usize) -> Option<(Vec<f32>, Vec<f32>)> {
        let mut dense = vec![0f32; self.rows * cols];
        let mut scales = Vec::with_capacity(self.rows);
        for r in 0..self.rows {
            let scale = match &self.runs[self.run_starts[r]..self.run_starts[r + 1]] {
                [] => 0.0,
                [(_, _, f)] => *f,
                _ => return None,
            };
            scales.push(scale);
            let (e0, e1) = (self.starts[r], self.starts[r + 1]);
            for (k, &w) in self.weights[e0..e1].iter().enumerate() {
                let c = self.columns.as_ref().map_or(k, |c| c[e0 + k] as usize);
                dense[r * cols + c] = w as f32;
            }
        }
        Some((dense, scales))
    }

    /// `y (rows × p) = bias + W · q` for `q` (`cols × p`, feature-major) of centred activation
    /// codes (`quantize_centered`).
    pub(crate) fn run(&self, q: &[i16], p: usize, y: &mut [f32], s: &mut KernelScratch) {
        fill_bias(&self.bias, 0..self.rows, p, y);
        for r in 0..self.rows {
            let (e0, e1) = (self.starts[r], self.starts[r + 1]);
            let wi = &self.weights[e0..e1];
            let idx = self.columns.as_ref().map(|c| &c[e0..e1]);
            let yr = &mut y[r * p..(r + 1) * p];
            for &(a, e, f) in &self.runs[self.run_starts[r]..self.run_starts[r + 1]] {
                if p == 1 {
                    let acc: i32 = match idx {
                        None => wi[a..e]
                            .iter()
                            .zip(&q[a..e])
                            .map(|(&w, &q)| w as i32 * q as i32)
                            .sum(),
                        Some(idx) => wi[a..e]
                            .iter()
                            .zip(&idx[a..e])
                            .map(|(&w, &c)| w as i32 * q[c as usize] as i32)
                            .sum(),
                    };
                    yr[0] += f * acc as f32;
                } else {
                    s.acci.clear();
                    s.acci.resize(p, 0);
                    for k in a..e {
                        let c = idx.map_or(k, |idx| idx[k] as usize);
                        let w = wi[k] as i32;
                        if w == 0 {
                            continue;
                        }
                        for (acc, &qv) in s.acci.iter_mut().zip(&q[c * p..(c + 1) * p]) {
                            *acc += w * qv as i32;
                        }
                    }
                    for (yv, &acc) in yr.iter_mut().zip(&s.acci) {
                        *yv += f * acc as f32;
                    }
                }
            }
        }
    }
}
