//! The engine against independent references: every storage format's kernels against a naive
//! dense product of the dequantized weights, whole models against candle's forward pass,
//! export → reload, format choice, and corrupt files.

use candle_core::{Device, Tensor};
use proptest::prelude::*;
use rand::{SeedableRng, rngs::StdRng};
use squeeze::compress::{
    ActivationQuant, FloatStorage, Granularity, Plan, QuantizedLayer, WeightValues,
};
use squeeze::engine::kernels::{EntryColumns, RowBlocks};
use squeeze::engine::{
    self, CompressedModel, IndexKind, Indexing, KernelScratch, LayerKernels, PackedLayer, Work,
};
use squeeze::model::{self, ArchSpec, Model};

mod common;
use common::{
    Named, assert_close_rel, fake_quant_forward, forward, linear_toml, rand_vec, written_model,
};

/// How a test layer is quantized.
#[derive(Debug, Clone, Copy)]
enum Scheme {
    Float(FloatStorage),
    Uniform {
        bits: u8,
        granularity: Granularity,
        symmetric: bool,
    },
    Codebook {
        bits: u8,
        with_zero: bool,
    },
}

/// Prunes the smallest `sparsity` fraction by magnitude (`exact_zero_rows` rows emptied
/// entirely) and quantizes with `scheme`: an independent little quantizer for the tests.
fn quantize(
    w: &[f32],
    rows: usize,
    cols: usize,
    sparsity: f64,
    scheme: Scheme,
    bias: Option<Vec<f32>>,
) -> QuantizedLayer {
    let n = rows * cols;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| w[a].abs().total_cmp(&w[b].abs()));
    let mut kept = vec![true; n];
    for &i in &order[..(sparsity * n as f64).round() as usize] {
        kept[i] = false;
    }
    let wk: Vec<f32> = w
        .iter()
        .zip(&kept)
        .map(|(&v, &k)| if k { v } else { 0.0 })
        .collect();
    let values = match scheme {
        Scheme::Float(storage) => WeightValues::Float {
            data: wk
                .iter()
                .map(|&v| match storage {
                    FloatStorage::F32 => v,
                    FloatStorage::F16 => half::f16::from_f32(v).to_f32(),
                    FloatStorage::Bf16 => half::bf16::from_f32(v).to_f32(),
                })
                .collect(),
            storage,
        },
        Scheme::Uniform {
            bits,
            granularity,
            symmetric,
        } => {
            let groups = granularity.group_count(rows, cols);
            let mut lo = vec![0f32; groups];
            let mut hi = vec![0f32; groups];
            for r in 0..rows {
                for c in 0..cols {
                    let g = granularity.group_of(r, c, cols);
                    lo[g] = lo[g].min(wk[r * cols + c]);
                    hi[g] = hi[g].max(wk[r * cols + c]);
                }
            }
            let qmax = (1i32 << bits) - 1;
            let (scales, zps): (Vec<f32>, Vec<i32>) = (0..groups)
                .map(|g| {
                    if symmetric {
                        let m = lo[g].abs().max(hi[g]).max(1e-6);
                        let half = ((1i32 << (bits - 1)) - 1).max(1);
                        (m / half as f32, 1 << (bits - 1))
                    } else {
                        let s = ((hi[g] - lo[g]) / qmax as f32).max(1e-6);
                        (s, ((-lo[g] / s).round() as i32).clamp(0, qmax))
                    }
                })
                .unzip();
            let codes = (0..n)
                .map(|i| {
                    let g = granularity.group_of(i / cols, i % cols, cols);
                    if !kept[i] {
                        return zps[g] as u8;
                    }
                    ((wk[i] / scales[g]).round() as i32 + zps[g]).clamp(0, qmax) as u8
                })
                .collect();
            WeightValues::Uniform {
                bits,
                codes,
                scales,
                zero_points: zps,
                granularity,
            }
        }
        Scheme::Codebook { bits, with_zero } => {
            let k = 1usize << bits;
            let (lo, hi) = wk
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let mut book: Vec<f32> = (0..k)
                .map(|j| lo + (hi - lo) * (j as f32 + 0.5) / k as f32)
                .collect();
            if with_zero {
                book[0] = 0.0;
            }
            let codes = wk
                .iter()
                .map(|&v| {
                    (0..k)
                        .min_by(|&a, &b| (book[a] - v).abs().total_cmp(&(book[b] - v).abs()))
                        .unwrap_or(0) as u8
                })
                .collect();
            WeightValues::Codebook {
                bits,
                codes,
                codebook: book,
            }
        }
    };
    QuantizedLayer {
        layer: 0,
        rows,
        cols,
        kept,
        values,
        bias,
        activation: None,
    }
}

/// The test's own dequantization: exactly zero where pruned.
fn dequantize(q: &QuantizedLayer) -> Vec<f32> {
    (0..q.rows * q.cols)
        .map(|i| {
            if !q.kept[i] {
                return 0.0;
            }
            match &q.values {
                WeightValues::Float { data, .. } => data[i],
                WeightValues::Uniform {
                    codes,
                    scales,
                    zero_points,
                    granularity,
                    ..
                } => {
                    let g = granularity.group_of(i / q.cols, i % q.cols, q.cols);
                    scales[g] * (codes[i] as f32 - zero_points[g] as f32)
                }
                WeightValues::Codebook {
                    codes, codebook, ..
                } => codebook[codes[i] as usize],
            }
        })
        .collect()
}

/// Naive `y = W·B + bias` with `B` `cols × p`.
fn naive(
    w: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    cols: usize,
    b: &[f32],
    p: usize,
) -> Vec<f32> {
    let mut y = vec![0f32; rows * p];
    for r in 0..rows {
        for j in 0..p {
            let mut acc = 0f64;
            for c in 0..cols {
                acc += w[r * cols + c] as f64 * b[c * p + j] as f64;
            }
            y[r * p + j] = acc as f32 + bias.map_or(0.0, |b| b[r]);
        }
    }
    y
}

fn schemes() -> Vec<Scheme> {
    let mut s = vec![
        Scheme::Float(FloatStorage::F32),
        Scheme::Float(FloatStorage::F16),
        Scheme::Float(FloatStorage::Bf16),
        Scheme::Codebook {
            bits: 4,
            with_zero: true,
        },
        Scheme::Codebook {
            bits: 3,
            with_zero: false,
        },
    ];
    for bits in 1..=8u8 {
        for granularity in [
            Granularity::Tensor,
            Granularity::Channel,
            Granularity::Group { size: 16 },
        ] {
            s.push(Scheme::Uniform {
                bits,
                granularity,
                symmetric: bits % 2 == 0,
            });
        }
    }
    s
}

/// Every encoding of a `rows × cols` layer, at several sparsities and every value scheme,
/// against the naive product, at p = 1, 7 and 85 (the batch kernels' 64- and 16-column tiles
/// and a remainder) and on a row sub-range. Returns the format
/// names built.
fn check_every_format(rows: usize, cols: usize, seed: u64) -> std::collections::HashSet<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let w = rand_vec(&mut rng, rows * cols);
    let bias = rand_vec(&mut rng, rows);
    let mut seen = std::collections::HashSet::new();
    for sparsity in [0.0, 0.5, 0.9, 0.99] {
        for scheme in schemes() {
            let mut q = quantize(&w, rows, cols, sparsity, scheme, Some(bias.clone()));
            if sparsity > 0.0 {
                // An empty row and a row whose only weight is at the far end (long gaps).
                for c in 0..cols {
                    q.kept[2 * cols + c] = false;
                    q.kept[5 * cols + c] = c == cols - 1;
                }
                q = requantize_kept(q);
            }
            let deq = dequantize(&q);
            let cands = PackedLayer::encodings(&q, "t").expect("encodings");
            assert!(!cands.is_empty());
            for pl in &cands {
                let name = format!("{} {rows}×{cols}", pl.format_name());
                seen.insert(pl.format_name());
                assert_eq!(pl.dequantized(), deq, "{name} decode");
                let mut s = KernelScratch::default();
                let whole = LayerKernels::prepare(pl, Work::ALL);
                // A row sub-range as a layer of its own (as grouped convolutions use).
                let part = LayerKernels::prepare(&pl.row_slice(3..7), Work::ALL);
                for p in [1usize, 7, 85] {
                    let b = rand_vec(&mut rng, cols * p);
                    let want = naive(&deq, Some(&bias), rows, cols, &b, p);
                    let mut y = vec![0f32; rows * p];
                    whole.run(&b, p, &mut y, &mut s);
                    let what = format!("{name} p={p} s={sparsity} ({})", whole.describe());
                    assert_close_rel(&y, &want, 1e-4, &what);
                    let mut y2 = vec![0f32; 4 * p];
                    part.run(&b, p, &mut y2, &mut s);
                    assert_close_rel(&y2, &want[3 * p..7 * p], 1e-4, &format!("{what} rows 3..7"));
                }
            }
        }
    }
    seen
}

/// Serializes the tests that switch between the AVX-512 and the portable kernels (a global
/// switch), so each really runs the path it names.
static KERNEL_PATH: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `f` with the portable kernels forced (`true`) or the run-time choice (`false`).
fn with_kernel_path(portable: bool, f: impl FnOnce()) {
    let _guard = KERNEL_PATH.lock().unwrap_or_else(|e| e.into_inner());
    engine::force_portable(portable);
    f();
    engine::force_portable(false);
}

#[test]
fn every_format_matches_the_naive_product() {
    with_kernel_path(false, || {
        let seen = check_every_format(13, 301, 1);
        for want in ["csr4", "csr8", "csr16", "bitmask", "dense"] {
            assert!(
                seen.iter().any(|n| n.starts_with(want)),
                "{want} never built: {seen:?}"
            );
        }
    });
}

/// Sizes around the kernels' 16- and 32-lane blocks (odd and even, so the 4-bit nibble path and
/// the masked gather tails both run), on both kernel paths.
#[test]
fn vector_kernels_and_fallback_match_the_naive_product_at_odd_sizes() {
    for portable in [false, true] {
        with_kernel_path(portable, || {
            for (i, cols) in [8usize, 16, 17, 31, 32, 33, 48, 64, 70, 130]
                .into_iter()
                .enumerate()
            {
                check_every_format(9, cols, 10 + i as u64);
            }
            // Several 16-row blocks, the last one partial.
            check_every_format(37, 70, 30);
        });
    }
}

/// The derived column index of a sparse layer lists every entry's column in order.
#[test]
fn derived_entry_columns_match_the_stored_index() {
    let mut rng = StdRng::seed_from_u64(3);
    let (rows, cols) = (32, 700);
    let w = rand_vec(&mut rng, rows * cols);
    let uniform = |bits, granularity, symmetric| Scheme::Uniform {
        bits,
        granularity,
        symmetric,
    };
    for scheme in [
        Scheme::Float(FloatStorage::F32),
        Scheme::Float(FloatStorage::F16),
        Scheme::Float(FloatStorage::Bf16),
        uniform(4, Granularity::Channel, true),
        uniform(7, Granularity::Tensor, false),
        Scheme::Codebook {
            bits: 4,
            with_zero: false,
        },
        Scheme::Codebook {
            bits: 5,
            with_zero: true,
        },
    ] {
        let mut blocks = 0;
        let q = quantize(&w, rows, cols, 0.97, scheme, None);
        for pl in PackedLayer::encodings(&q, "t").expect("encodings") {
            let Some(ec) = EntryColumns::of(&pl) else {
                assert_eq!(pl.index_kind(), IndexKind::Dense);
                continue;
            };
            assert_eq!(ec.cols.len(), pl.entries, "{}", pl.format_name());
            let mut row = Vec::new();
            for r in 0..rows {
                pl.row_columns(r, &mut row);
                assert_eq!(
                    &ec.cols[pl.row_entries(r)],
                    &row[..],
                    "{}",
                    pl.format_name()
                );
            }
            assert!(
                ec.cols
                    .iter()
                    .all(|&c| (c as usize) < ec.bound && ec.bound <= cols)
            );
            // The row blocks hold every entry once, in its stored precision (codes times their row's
            // scale), plus zero padding.
            if let Some(rb) = RowBlocks::build(&pl) {
                blocks += 1;
                // Every entry's value as the layer decodes it (one scale per row for codes).
                let v = pl.dequantized();
                let mut got: Vec<f32> =
                    rb.slot_values().into_iter().filter(|&x| x != 0.0).collect();
                let mut want: Vec<f32> = v.iter().copied().filter(|&x| x != 0.0).collect();
                got.sort_by(f32::total_cmp);
                want.sort_by(f32::total_cmp);
                assert_eq!(got, want, "{}", pl.format_name());
            }
        }
        assert!(blocks > 0, "no row blocks for {scheme:?}");
    }
}

/// Keeps codes consistent after the test edits `kept` by hand: pruned weights take the value
/// zero (the zero point, 0.0, or the codebook's zero when it has one).
fn requantize_kept(mut q: QuantizedLayer) -> QuantizedLayer {
    let cols = q.cols;
    match &mut q.values {
        WeightValues::Float { data, .. } => {
            for (v, k) in data.iter_mut().zip(&q.kept) {
                if !k {
                    *v = 0.0;
                }
            }
        }
        WeightValues::Uniform {
            codes,
            zero_points,
            granularity,
            ..
        } => {
            for (i, (c, k)) in codes.iter_mut().zip(&q.kept).enumerate() {
                if !k {
                    *c = zero_points[granularity.group_of(i / cols, i % cols, cols)] as u8;
                }
            }
        }
        WeightValues::Codebook { .. } => {}
    }
    q
}

#[test]
fn sixteen_bit_gaps_pad_very_long_distances() {
    let (rows, cols) = (2, 70_000);
    let mut w = vec![0f32; rows * cols];
    w[cols - 1] = 0.5;
    w[cols + 3] = -2.0;
    let q = QuantizedLayer {
        kept: w.iter().map(|&v| v != 0.0).collect(),
        ..quantize(&w, rows, cols, 0.0, Scheme::Float(FloatStorage::F32), None)
    };
    let pl = PackedLayer::encode(&q, "t").expect("encode");
    let Indexing::Csr { gap_bits, .. } = pl.index else {
        panic!("expected CSR, got {}", pl.format_name());
    };
    assert_eq!(gap_bits, 16);
    // 69,999 = 65,535 + 1 + 4,463: one padding entry before the kept weight in row 0.
    assert_eq!(pl.entries, 3);
    let x: Vec<f32> = (0..cols).map(|i| (i % 7) as f32).collect();
    let mut y = vec![0f32; 2];
    LayerKernels::prepare(&pl, Work::ALL).run(&x, 1, &mut y, &mut KernelScratch::default());
    assert_eq!(y, vec![0.5 * x[cols - 1], -2.0 * x[3]]);
}

#[test]
fn format_choice_picks_the_smallest_encoding() {
    let mut rng = StdRng::seed_from_u64(2);
    let (rows, cols) = (40, 200);
    let w = rand_vec(&mut rng, rows * cols);
    let dense = quantize(&w, rows, cols, 0.0, Scheme::Float(FloatStorage::F32), None);
    let pl = PackedLayer::encode(&dense, "d").expect("encode");
    assert_eq!(pl.index_kind(), IndexKind::Dense);
    assert_eq!(pl.size_bytes(), rows * cols * 4);
    for sparsity in [0.3, 0.6, 0.9, 0.97] {
        for scheme in [
            Scheme::Float(FloatStorage::F32),
            Scheme::Uniform {
                bits: 4,
                granularity: Granularity::Channel,
                symmetric: true,
            },
        ] {
            let q = quantize(&w, rows, cols, sparsity, scheme, None);
            let cands = PackedLayer::encodings(&q, "t").expect("encodings");
            let best = PackedLayer::encode(&q, "t").expect("encode");
            let min = cands.iter().map(PackedLayer::size_bytes).min().unwrap_or(0);
            assert_eq!(best.size_bytes(), min, "s={sparsity} {scheme:?}");
            if sparsity >= 0.9 {
                assert_ne!(best.index_kind(), IndexKind::Dense, "s={sparsity}");
            }
        }
    }
    // 90 % sparse f32: CSR with 8-bit gaps beats a bitmask and dense.
    let q = quantize(&w, rows, cols, 0.9, Scheme::Float(FloatStorage::F32), None);
    let best = PackedLayer::encode(&q, "t").expect("encode");
    assert_eq!(best.index_kind(), IndexKind::Csr, "{}", best.format_name());
    let b = best.size_breakdown();
    assert_eq!(b.values, best.entries * 4);
    assert_eq!(b.bias + b.scales, 0);
}

#[test]
fn size_is_exact_for_uniform_codes() {
    let mut rng = StdRng::seed_from_u64(3);
    let (rows, cols) = (10, 30);
    let w = rand_vec(&mut rng, rows * cols);
    let q = quantize(
        &w,
        rows,
        cols,
        0.0,
        Scheme::Uniform {
            bits: 3,
            granularity: Granularity::Group { size: 8 },
            symmetric: false,
        },
        Some(vec![0.0; rows]),
    );
    let pl = PackedLayer::encode(&q, "t").expect("encode");
    let b = pl.size_breakdown();
    assert_eq!(b.values, (rows * cols * 3).div_ceil(8));
    // 4 groups per row: f32 scale + u8 zero point each.
    assert_eq!(b.scales, rows * 4 * 5);
    assert_eq!(b.bias, rows * 4);
    assert_eq!(b.indices, 0);
}

#[test]
fn codebook_without_zero_still_packs_sparse_layers() {
    let mut rng = StdRng::seed_from_u64(4);
    let (rows, cols) = (8, 64);
    let w = rand_vec(&mut rng, rows * cols);
    let q = quantize(
        &w,
        rows,
        cols,
        0.8,
        Scheme::Codebook {
            bits: 2,
            with_zero: false,
        },
        None,
    );
    // No code decodes to zero: only the bitmask can leave pruned weights out.
    let pl = PackedLayer::encode(&q, "t").expect("encode");
    assert_eq!(pl.index_kind(), IndexKind::Bitmask);
    assert_eq!(pl.dequantized(), dequantize(&q));
}

/// Naive layer with activation quantization: fake-quantized input, then the dense product.
#[test]
fn quantized_activations_use_integer_kernels() {
    let mut rng = StdRng::seed_from_u64(5);
    let (rows, cols) = (11, 90);
    let w = rand_vec(&mut rng, rows * cols);
    let bias = rand_vec(&mut rng, rows);
    let act = ActivationQuant {
        bits: 8,
        scale: 2.0 / 255.0,
        zero_point: 128,
    };
    for sparsity in [0.0, 0.7] {
        for scheme in [
            Scheme::Uniform {
                bits: 8,
                granularity: Granularity::Channel,
                symmetric: true,
            },
            Scheme::Uniform {
                bits: 4,
                granularity: Granularity::Group { size: 32 },
                symmetric: false,
            },
            Scheme::Float(FloatStorage::F32),
        ] {
            let mut q = quantize(&w, rows, cols, sparsity, scheme, Some(bias.clone()));
            q.activation = Some(act);
            let deq = dequantize(&q);
            for pl in PackedLayer::encodings(&q, "t").expect("encodings") {
                // The 8-bit kernel where it applies, and the generic integer kernel.
                for work in [
                    Work::ALL,
                    Work {
                        int8: false,
                        ..Work::ALL
                    },
                ] {
                    let k = LayerKernels::prepare(&pl, work);
                    // Every tile width of the 8-bit kernel (24, then 16, 8 or 4, then one at
                    // a time) and their mixes.
                    for p in [1usize, 5, 9, 16, 30, 45] {
                        let b = rand_vec(&mut rng, cols * p);
                        let mut bq = b.clone();
                        engine::fake_quantize(&mut bq, act.bits, act.scale, act.zero_point);
                        let want = naive(&deq, Some(&bias), rows, cols, &bq, p);
                        let mut y = vec![0f32; rows * p];
                        k.run(&b, p, &mut y, &mut KernelScratch::default());
                        let what = format!("{} p={p} ({})", pl.format_name(), k.describe());
                        assert_close_rel(&y, &want, 1e-4, &what);
                    }
                }
            }
        }
    }
}

/// 20 → fc1 64 → relu → fc2 32 → tanh → fc3 10 (no bias).
fn mlp(dir: &tempfile::TempDir, rng: &mut StdRng) -> Model {
    let arch = format!(
        "[input]\nshape = [20]\n{}[[layer]]\nop = \"relu\"\n{}[[layer]]\nop = \"tanh\"\n\
         [[layer]]\nop = \"linear\"\nname = \"fc3\"\nweight = \"fc3.weight\"\n",
        linear_toml("fc1"),
        linear_toml("fc2"),
    );
    let t: Named = vec![
        ("fc1.weight".into(), vec![64, 20], rand_vec(rng, 64 * 20)),
        ("fc1.bias".into(), vec![64], rand_vec(rng, 64)),
        ("fc2.weight".into(), vec![32, 64], rand_vec(rng, 32 * 64)),
        ("fc2.bias".into(), vec![32], rand_vec(rng, 32)),
        ("fc3.weight".into(), vec![10, 32], rand_vec(rng, 320)),
    ];
    written_model(dir, &arch, &t)
}

const CONVNET: &str = r#"
[input]
shape = [4, 12, 11]
[[layer]]
op = "conv2d"
name = "c1"
weight = "c1.weight"
bias = "c1.bias"
padding = 1
[[layer]]
op = "relu"
[[layer]]
op = "conv2d"
name = "dw"
weight = "dw.weight"
bias = "dw.bias"
stride = 2
padding = 1
groups = 8
[[layer]]
op = "batchnorm"
name = "bn"
weight = "bn.weight"
bias = "bn.bias"
running_mean = "bn.mean"
running_var = "bn.var"
[[layer]]
op = "add"
name = "res"
from = "dw"
[[layer]]
op = "maxpool2d"
kernel = 2
padding = 1
[[layer]]
op = "conv2d"
name = "g2"
weight = "g2.weight"
groups = 2
[[layer]]
op = "silu"
[[layer]]
op = "avgpool2d"
kernel = 2
stride = 1
[[layer]]
op = "flatten"
[[layer]]
op = "linear"
name = "fc"
weight = "fc.weight"
bias = "fc.bias"
[[layer]]
op = "softmax"
"#;

fn convnet(dir: &tempfile::TempDir, rng: &mut StdRng) -> Model {
    // c1: 4→8, 3×3 pad 1 → 12×11; dw: depthwise 3×3 stride 2 pad 1 → 6×6; bn stays unfolded
    // because dw feeds the add; maxpool 2 pad 1 → 4×4; g2: 8→6, 2×2, groups 2 → 3×3;
    // avgpool 2 stride 1 → 2×2; fc: 24 → 5.
    let t: Named = vec![
        (
            "c1.weight".into(),
            vec![8, 4, 3, 3],
            rand_vec(rng, 8 * 4 * 9),
        ),
        ("c1.bias".into(), vec![8], rand_vec(rng, 8)),
        ("dw.weight".into(), vec![8, 1, 3, 3], rand_vec(rng, 72)),
        ("dw.bias".into(), vec![8], rand_vec(rng, 8)),
        ("bn.weight".into(), vec![8], rand_vec(rng, 8)),
        ("bn.bias".into(), vec![8], rand_vec(rng, 8)),
        ("bn.mean".into(), vec![8], rand_vec(rng, 8)),
        (
            "bn.var".into(),
            vec![8],
            rand_vec(rng, 8).iter().map(|v| v.abs() + 0.5).collect(),
        ),
        ("g2.weight".into(), vec![6, 4, 2, 2], rand_vec(rng, 6 * 16)),
        ("fc.weight".into(), vec![5, 24], rand_vec(rng, 120)),
        ("fc.bias".into(), vec![5], rand_vec(rng, 5)),
    ];
    written_model(dir, CONVNET, &t)
}

/// Quantizes every linear/conv layer of `m` with the scheme `pick(i)` returns.
fn plan(m: &Model, sparsity: f64, pick: impl Fn(usize) -> Scheme) -> Plan {
    let layers = m
        .compressible()
        .enumerate()
        .map(|(k, (i, l))| {
            let p = l.params().expect("params");
            let dims = p.weight.dims();
            let (rows, cols) = (dims[0], dims[1..].iter().product());
            let w: Vec<f32> = p.weight.flatten_all().and_then(|t| t.to_vec1()).expect("w");
            let bias = p.bias.as_ref().map(|b| b.to_vec1().expect("bias"));
            let mut q = quantize(&w, rows, cols, sparsity, pick(k), bias);
            q.layer = i;
            q
        })
        .collect();
    Plan {
        model: m.clone(),
        layers,
    }
}

/// The test's own dequantized model: the plan's weights replaced by `dequantize`.
fn dequantized_model(plan: &Plan) -> Model {
    let mut m = plan.model.clone();
    for q in &plan.layers {
        let layer = &mut m.layers[q.layer];
        if let model::Op::Linear(p) | model::Op::Conv2d(p, _) = &mut layer.op {
            let dims = p.weight.dims().to_vec();
            p.weight = Tensor::from_vec(dequantize(q), dims, &Device::Cpu).expect("tensor");
        }
    }
    m
}

fn mixed(k: usize) -> Scheme {
    match k % 4 {
        0 => Scheme::Uniform {
            bits: 8,
            granularity: Granularity::Channel,
            symmetric: true,
        },
        1 => Scheme::Uniform {
            bits: 4,
            granularity: Granularity::Group { size: 8 },
            symmetric: false,
        },
        2 => Scheme::Codebook {
            bits: 5,
            with_zero: true,
        },
        _ => Scheme::Float(FloatStorage::F16),
    }
}

fn check_model(m: &Model, n: usize, rng: &mut StdRng) {
    let x = rand_vec(rng, n * m.input_len());
    for sparsity in [0.0, 0.6, 0.93] {
        for offset in 0..4 {
            let p = plan(m, sparsity, |k| mixed(k + offset));
            let cm = CompressedModel::build(&p).expect("build");
            let want = forward(&dequantized_model(&p), &x, n);
            let got = cm.logits(&x, n);
            assert_close_rel(
                &got,
                &want,
                2e-4,
                &format!("sparsity {sparsity} offset {offset}"),
            );
            // The engine's own dequantized model agrees with the test's.
            assert_close_rel(&forward(&cm.model, &x, n), &want, 1e-6, "cm.model");
            // One sample at a time gives the same as the batch.
            let one = cm.logits(&x[..m.input_len()], 1);
            assert_close_rel(&one, &got[..cm.num_classes()], 1e-5, "single sample");
        }
    }
    // No plan at all: dense f32 equals the original model.
    let cm = CompressedModel::build(&Plan {
        model: m.clone(),
        layers: vec![],
    })
    .expect("build");
    assert_close_rel(&cm.logits(&x, n), &forward(m, &x, n), 1e-4, "dense");
    let dense: usize = m.compressible().map(|(_, l)| l.param_count() * 4).sum();
    assert!(cm.size_bytes() >= dense);
}

#[test]
fn mlp_logits_match_candle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = StdRng::seed_from_u64(6);
    let m = mlp(&dir, &mut rng);
    // 300 samples: more than one rayon chunk.
    check_model(&m, 300, &mut rng);
}

#[test]
fn conv_net_logits_match_candle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = StdRng::seed_from_u64(7);
    let m = convnet(&dir, &mut rng);
    assert!(
        m.layers
            .iter()
            .any(|l| matches!(l.op, model::Op::ChannelAffine { .. })),
        "the test wants an unfolded batchnorm"
    );
    check_model(&m, 9, &mut rng);
}

/// Batches larger than one im2col block (several blocks, the last partial) and the
/// feature-major linear chain match candle too.
#[test]
fn conv_net_large_batches_match_candle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = StdRng::seed_from_u64(8);
    let m = convnet(&dir, &mut rng);
    check_model(&m, 37, &mut rng);
    let m = mlp(&dir, &mut rng);
    check_model(&m, 37, &mut rng);
}

/// A run that may be stopped gives `logits`' very bits when left alone, and nothing once
/// stopped.
#[test]
fn stoppable_runs_give_the_same_logits_or_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = StdRng::seed_from_u64(9);
    let m = convnet(&dir, &mut rng);
    let cm = CompressedModel::build(&plan(&m, 0.5, mixed)).expect("build");
    let n = 37;
    let x = rand_vec(&mut rng, n * m.input_len());
    let go = std::sync::atomic::AtomicBool::new(false);
    assert_eq!(cm.logits_until(&x, n, &go), Some(cm.logits(&x, n)));
    let stop = std::sync::atomic::AtomicBool::new(true);
    assert_eq!(cm.logits_until(&x, n, &stop), None);
}

#[test]
fn conv_with_quantized_activations_matches_fake_quantized_reference() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = StdRng::seed_from_u64(8);
    let m = convnet(&dir, &mut rng);
    let n = 3;
    let x = rand_vec(&mut rng, n * m.input_len());
    let mut p = plan(&m, 0.5, mixed);
    for q in &mut p.layers {
        q.activation = Some(ActivationQuant {
            bits: 8,
            scale: 0.02,
            zero_point: 120,
        });
    }
    let cm = CompressedModel::build(&p).expect("build");
    // Reference: each compressed layer's input fake-quantized, via a hand-rolled pass on
    // candle (the dense model with the inputs of linear/conv layers rounded).
    let want = fake_quant_forward(&dequantized_model(&p), &p, &x, n);
    assert_close_rel(
        &cm.logits(&x, n),
        &want,
        1e-3,
        "activation-quantized conv net",
    );
}

#[test]
fn export_reload_gives_identical_logits_and_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = StdRng::seed_from_u64(9);
    for (name, m) in [
        ("mlp", mlp(&dir, &mut rng)),
        ("conv", convnet(&dir, &mut rng)),
    ] {
        let n = 7;
        let x = rand_vec(&mut rng, n * m.input_len());
        for sparsity in [0.0, 0.9] {
            let mut p = plan(&m, sparsity, |k| mixed(k + 1));
            p.layers[0].activation = Some(ActivationQuant {
                bits: 6,
                scale: 0.05,
                zero_point: 30,
            });
            let cm = CompressedModel::build(&p).expect("build");
            let path = dir.path().join(format!("{name}-{sparsity}.safetensors"));
            cm.save(&path, Some("[default]\nbits = 4\n")).expect("save");
            assert!(engine::is_compressed_file(&path));
            let back = engine::load_compressed(&path).expect("reload");
            assert_eq!(
                back.logits(&x, n),
                cm.logits(&x, n),
                "{name}: logits differ"
            );
            assert_eq!(back.size_bytes(), cm.size_bytes());
            assert_eq!(back.size_breakdown(), cm.size_breakdown());
            // The Huffman-coded size travels in the metadata.
            let entropy = |m: &CompressedModel| -> Vec<Option<usize>> {
                m.packed_layers().map(|(_, p)| p.entropy_bytes).collect()
            };
            assert!(entropy(&cm).iter().all(Option::is_some), "{name}");
            assert_eq!(entropy(&back), entropy(&cm), "{name}: entropy sizes");
            let bytes = std::fs::read(&path).expect("read");
            let header = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
            assert_eq!(
                cm.size_bytes(),
                bytes.len() - 8 - header,
                "{name}: size = file − header"
            );
            // The reloaded architecture is the same graph.
            assert_eq!(back.model.layers.len(), cm.model.layers.len());
            assert_eq!(back.model.folded_spec(), cm.model.folded_spec());
            let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("meta");
            let meta = meta.metadata().clone().expect("metadata");
            assert_eq!(meta["squeeze.format"], "compressed");
            assert_eq!(meta["squeeze.recipe"], "[default]\nbits = 4\n");
            assert!(ArchSpec::from_json(&meta["squeeze.arch"]).is_ok());
        }
    }
    // A plain model file is not a compressed one.
    assert!(!engine::is_compressed_file(
        &dir.path().join("m.safetensors")
    ));
    assert!(!engine::is_compressed_file(
        &dir.path().join("missing.safetensors")
    ));
}

/// The shipped compressed models carry the layer descriptors of their day (ops tagged by
/// `"kind"`): they load, read as the same description today's export writes for them, and a
/// re-export stores the same tensors byte for byte and reloads to the same logits.
#[test]
fn shipped_compressed_models_load_and_re_export_the_same_tensors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = StdRng::seed_from_u64(12);
    for name in ["lenet-300-100", "lenet5"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("assets/models/{name}-deep-compression.safetensors"));
        let shipped = engine::load_compressed(&path).expect("the shipped file loads");
        let bytes = std::fs::read(&path).expect("read");
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("meta");
        let meta = meta.metadata().clone().expect("metadata");
        let layers = &meta[engine::LAYERS_KEY];
        assert!(layers.contains("\"kind\":\"conv2d\"") || layers.contains("\"kind\":\"linear\""));
        assert_eq!(
            engine::LayerDesc::read_all(layers).expect("old descriptors"),
            shipped.descriptors(),
            "{name}"
        );
        let again = dir.path().join(format!("{name}.safetensors"));
        shipped
            .save(&again, meta.get(engine::RECIPE_KEY).map(String::as_str))
            .expect("save");
        let back = engine::load_compressed(&again).expect("reload");
        let n = 5;
        let x = rand_vec(&mut rng, n * shipped.input_len());
        assert_eq!(back.logits(&x, n), shipped.logits(&x, n), "{name}");
        let new_bytes = std::fs::read(&again).expect("read");
        let (old_t, new_t) = (
            safetensors::SafeTensors::deserialize(&bytes).expect("old"),
            safetensors::SafeTensors::deserialize(&new_bytes).expect("new"),
        );
        let mut names = old_t.names();
        names.sort();
        let mut new_names = new_t.names();
        new_names.sort();
        assert_eq!(names, new_names, "{name}");
        for t in names {
            let (a, b) = (old_t.tensor(t).expect("old"), new_t.tensor(t).expect("new"));
            assert_eq!(
                (a.dtype(), a.shape(), a.data()),
                (b.dtype(), b.shape(), b.data()),
                "{name}: {t}"
            );
        }
    }
}

/// Hardswish and hardsigmoid as PyTorch defines them (`torch.nn.Hardswish`: 0 for x ≤ −3, x for
/// x ≥ 3, x·(x + 3)/6 between; `torch.nn.Hardsigmoid`: 0, 1, x/6 + 1/2), in the reference
/// forward, the engine and a compressed file's round trip, with the gradients training
/// differentiates through.
#[test]
fn hardswish_and_hardsigmoid_follow_pytorch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut xs: Vec<f32> = vec![
        -5.0, -3.0, -2.5, -1.0, -0.25, 0.0, 0.5, 1.0, 2.0, 2.999, 3.0, 4.5,
    ];
    let mut rng = StdRng::seed_from_u64(21);
    xs.extend(rand_vec(&mut rng, 20).iter().map(|v| v * 8.0));
    let n = xs.len();
    let hardswish = |x: f64| {
        if x <= -3.0 {
            0.0
        } else if x >= 3.0 {
            x
        } else {
            x * (x + 3.0) / 6.0
        }
    };
    let hardsigmoid = |x: f64| {
        if x <= -3.0 {
            0.0
        } else if x >= 3.0 {
            1.0
        } else {
            x / 6.0 + 0.5
        }
    };
    // The slopes away from the kinks at ±3.
    let hardswish_grad = |x: f64| match x {
        x if x < -3.0 => 0.0,
        x if x > 3.0 => 1.0,
        x => (2.0 * x + 3.0) / 6.0,
    };
    let hardsigmoid_grad = |x: f64| {
        if (-3.0..3.0).contains(&x) {
            1.0 / 6.0
        } else {
            0.0
        }
    };
    type Curve<'a> = &'a dyn Fn(f64) -> f64;
    let cases: [(&str, Curve, Curve); 2] = [
        ("hardswish", &hardswish, &hardswish_grad),
        ("hardsigmoid", &hardsigmoid, &hardsigmoid_grad),
    ];
    for (op, f, grad) in cases {
        let spec = ArchSpec::from_toml(&format!(
            "[input]\nshape = [{n}]\n[[layer]]\nop = \"{op}\"\n"
        ))
        .expect("arch");
        let empty = model::to_safetensors_bytes(&[], &Default::default()).expect("bytes");
        let m = model::load_bytes_with_spec(std::path::Path::new(op), &empty, spec).expect("model");
        let want: Vec<f32> = xs.iter().map(|&x| f(x as f64) as f32).collect();
        let x = Tensor::from_slice(&xs, (1, n), &Device::Cpu).expect("x");
        let reference: Vec<f32> = m
            .forward(&x)
            .and_then(|y| y.flatten_all()?.to_vec1())
            .expect("forward");
        assert_close_rel(&reference, &want, 1e-6, &format!("{op}: reference"));
        let cm = CompressedModel::build(&Plan {
            model: m.clone(),
            layers: Vec::new(),
        })
        .expect("engine");
        assert_eq!(
            cm.logits(&xs, 1),
            reference,
            "{op}: engine against the reference"
        );
        let path = dir.path().join(format!("{op}.safetensors"));
        cm.save(&path, None).expect("save");
        let back = engine::load_compressed(&path).expect("reload");
        assert_eq!(back.logits(&xs, 1), reference, "{op}: reloaded");
        // Training's forward pass differentiates through it.
        let g = input_gradient(&m, &x);
        for (i, &x) in xs.iter().enumerate() {
            if (x.abs() - 3.0).abs() > 1e-3 {
                let want = grad(x as f64) as f32;
                assert!(
                    (g[i] - want).abs() < 1e-6,
                    "{op}'({x}) = {}, expected {want}",
                    g[i]
                );
            }
        }
    }
}

#[test]
fn corrupt_files_give_errors_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = StdRng::seed_from_u64(10);
    let m = convnet(&dir, &mut rng);
    let p = plan(&m, 0.8, mixed);
    let cm = CompressedModel::build(&p).expect("build");
    let path = dir.path().join("c.safetensors");
    cm.save(&path, None).expect("save");
    let good = std::fs::read(&path).expect("read");
    let bad = dir.path().join("bad.safetensors");

    // Truncated.
    std::fs::write(&bad, &good[..good.len() - 10]).expect("write");
    let e = engine::load_compressed(&bad).expect_err("truncated");
    assert!(e.to_string().contains("bad.safetensors"), "{e}");

    // A plain model file.
    let e = engine::load_compressed(&dir.path().join("m.safetensors")).expect_err("plain");
    assert!(e.to_string().contains("compressed"), "{e}");

    // A tensor renamed: the error names the one missing.
    let mut bytes = good.clone();
    let at = good
        .windows(11)
        .position(|w| w == b"\"fc.values\"")
        .expect("tensor name in header");
    bytes[at + 9] = b'z';
    std::fs::write(&bad, &bytes).expect("write");
    let e = engine::load_compressed(&bad).expect_err("renamed");
    assert!(e.to_string().contains("fc.values"), "{e}");

    // Every byte of the data region flipped in turn (a sample of them): errors or a model,
    // never a panic; the header region likewise.
    let header = u64::from_le_bytes(good[..8].try_into().expect("8")) as usize;
    for pos in (0..good.len()).step_by(7) {
        let mut bytes = good.clone();
        bytes[pos] ^= if pos < 8 + header { 0x21 } else { 0xff };
        std::fs::write(&bad, &bytes).expect("write");
        if let Ok(cm) = engine::load_compressed(&bad) {
            let x = vec![0.5f32; cm.input_len()];
            let _ = cm.logits(&x, 1);
        }
    }
}

/// The byte range of tensor `name`'s data in the safetensors file `file`, and its dtype.
fn tensor_bytes(file: &[u8], name: &str) -> (std::ops::Range<usize>, String) {
    let n = u64::from_le_bytes(file[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&file[8..8 + n]).expect("header");
    let t = &header[name];
    let off = |i: usize| t["data_offsets"][i].as_u64().expect("offset") as usize + 8 + n;
    (
        off(0)..off(1),
        t["dtype"].as_str().expect("dtype").to_string(),
    )
}

/// `file` without its checksum record, as another program could write it: what the engine's
/// own checks must then catch.
fn unsealed(file: &[u8]) -> Vec<u8> {
    let n = u64::from_le_bytes(file[..8].try_into().expect("8 bytes")) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&file[8..8 + n]).expect("header");
    if let Some(meta) = header
        .get_mut("__metadata__")
        .and_then(|m| m.as_object_mut())
    {
        meta.remove(squeeze::files::CHECKSUM_KEY);
    }
    let json = serde_json::to_vec(&header).expect("json");
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&file[8 + n..]);
    out
}

/// A CSR row pointer past the entries is refused when the file loads, before any row is read
/// through it: LeNet-300-100 at 90 % sparsity and 4 bits, element 10 of `fc1.row_ptr` set to
/// 65535 (it used to panic reading row 9's gaps).
#[test]
fn a_row_pointer_past_the_entries_is_refused_before_any_row_is_read() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let m = model::load(&root.join("assets/models/lenet-300-100.safetensors"))
        .expect("bundled model")
        .model;
    let recipe = squeeze::compress::Recipe::from_toml_str(
        "[default]\nprune = \"l1\"\nsparsity = 0.9\nbits = 4\n",
    )
    .expect("recipe");
    let plan = squeeze::compress::apply(&m, &recipe, None).expect("plan");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.safetensors");
    CompressedModel::build(&plan)
        .expect("build")
        .save(&path, None)
        .expect("save");
    let mut bytes = unsealed(&std::fs::read(&path).expect("read"));
    let (range, dtype) = tensor_bytes(&bytes, "fc1.row_ptr");
    assert_eq!(dtype, "U16");
    bytes[range.start + 20..range.start + 22].copy_from_slice(&65535u16.to_le_bytes());
    std::fs::write(&path, &bytes).expect("write");
    let e = engine::load_compressed(&path).expect_err("a row pointer past the entries");
    let msg = e.to_string();
    assert!(
        msg.contains("x.safetensors") && msg.contains("fc1") && msg.contains("row_ptr"),
        "{msg}"
    );
}

/// Every index and value tensor of compressed layers in every index format (CSR with 4-, 8-
/// and 16-bit gaps, bitmasks, dense) and value store, overwritten at its ends and middle with
/// extreme values: the file is refused or loads and runs, never panics.
#[test]
fn no_index_or_value_tensor_of_a_loaded_file_is_read_out_of_bounds() {
    let wide_arch = format!("[input]\nshape = [70000]\n{}", linear_toml("wide"));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = StdRng::seed_from_u64(31);
    let conv = convnet(&dir, &mut rng);
    let conv_dir = tempfile::tempdir().expect("tempdir");
    let mlp_model = mlp(&conv_dir, &mut rng);
    // Two rows with one weight each at the far ends: 16-bit gaps and a padding entry.
    let wide_dir = tempfile::tempdir().expect("tempdir");
    let mut w = vec![0f32; 2 * 70_000];
    w[69_999] = 0.5;
    w[70_003] = -2.0;
    let wide = written_model(
        &wide_dir,
        &wide_arch,
        &[
            ("wide.weight".into(), vec![2, 70_000], w.clone()),
            ("wide.bias".into(), vec![2], vec![0.1, 0.2]),
        ],
    );
    let codebook = |k: usize| Scheme::Codebook {
        bits: 2 + k as u8,
        with_zero: true,
    };
    let asymmetric = |k: usize| Scheme::Uniform {
        bits: 3 + k as u8,
        granularity: Granularity::Group { size: 4 },
        symmetric: false,
    };
    let mut plans = vec![
        plan(&conv, 0.8, mixed),
        plan(&conv, 0.3, mixed),
        plan(&conv, 0.0, codebook),
        plan(&mlp_model, 0.9, |_| Scheme::Float(FloatStorage::F32)),
        plan(&mlp_model, 0.97, asymmetric),
        plan(&mlp_model, 0.6, codebook),
    ];
    let mut far = plan(&wide, 0.0, |_| Scheme::Float(FloatStorage::F32));
    far.layers[0].kept = w.iter().map(|&v| v != 0.0).collect();
    plans.push(far);
    let mut act = plan(&mlp_model, 0.5, |_| Scheme::Uniform {
        bits: 8,
        granularity: Granularity::Channel,
        symmetric: false,
    });
    for q in &mut act.layers {
        q.activation = Some(ActivationQuant {
            bits: 8,
            scale: 0.05,
            zero_point: 7,
        });
    }
    plans.push(act);
    let path = dir.path().join("c.safetensors");
    let bad = dir.path().join("bad.safetensors");
    let mut formats = std::collections::HashSet::new();
    for p in &plans {
        let cm = CompressedModel::build(p).expect("build");
        for (_, pl) in cm.packed_layers() {
            formats.insert(pl.format_name());
        }
        cm.save(&path, None).expect("save");
        let good = unsealed(&std::fs::read(&path).expect("read"));
        let n = u64::from_le_bytes(good[..8].try_into().expect("8 bytes")) as usize;
        let header: serde_json::Value = serde_json::from_slice(&good[8..8 + n]).expect("header");
        let names: Vec<String> = header
            .as_object()
            .expect("object")
            .keys()
            .filter(|k| *k != "__metadata__")
            .cloned()
            .collect();
        for name in names {
            let (range, dtype) = tensor_bytes(&good, &name);
            let width = match dtype.as_str() {
                "U8" => 1,
                "U16" | "F16" | "BF16" => 2,
                _ => 4,
            };
            let count = range.len() / width;
            for at in [
                0,
                1,
                count / 2,
                count.saturating_sub(2),
                count.saturating_sub(1),
            ] {
                if at >= count {
                    continue;
                }
                for fill in [0x00u8, 0xff, 0x7f, 0x80, 0x55] {
                    let mut bytes = good.clone();
                    let start = range.start + at * width;
                    bytes[start..start + width].fill(fill);
                    std::fs::write(&bad, &bytes).expect("write");
                    if let Ok(cm) = engine::load_compressed(&bad) {
                        let x = vec![0.5f32; 3 * cm.input_len()];
                        let _ = cm.logits(&x, 3);
                        let _ = cm.logits(&x, 1);
                    }
                }
            }
        }
    }
    for want in [
        "csr4", "csr8", "csr16", "bitmask", "dense", "codebook", "×a8",
    ] {
        assert!(
            formats.iter().any(|f| f.contains(want)),
            "{want} never built: {formats:?}"
        );
    }
}

#[test]
fn latency_and_throughput_report_sane_figures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = StdRng::seed_from_u64(11);
    let m = mlp(&dir, &mut rng);
    let cm = CompressedModel::build(&plan(&m, 0.9, |_| Scheme::Float(FloatStorage::F32)))
        .expect("build");
    let x = rand_vec(&mut rng, 10 * m.input_len());
    let l = engine::latency_with(&cm, &x, 50, std::time::Duration::from_millis(10));
    assert!(l.runs >= 50 && l.median_us > 0.0 && l.p90_us >= l.median_us);
    assert!(engine::throughput(&cm, &x, 10) > 0.0);
    assert!(engine::fma_peak_gflops(std::time::Duration::from_millis(20)) > 0.0);
}

/// The dense work of a model: every conv weight once per output position (a grouped conv's
/// weights span only their group's inputs), every linear weight once.
#[test]
fn dense_multiply_adds_count_every_weight_at_every_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = StdRng::seed_from_u64(12);
    let m = convnet(&dir, &mut rng);
    let cm = CompressedModel::build(&plan(&m, 0.5, |_| Scheme::Float(FloatStorage::F32)))
        .expect("build");
    // c1: 8 × (4·3·3) × 12·11; dw: 8 × 9 × 6·6; g2: 6 × (4·2·2) × 3·3; fc: 5 × 24.
    assert_eq!(
        cm.dense_macs(),
        8 * 36 * 132 + 8 * 9 * 36 + 6 * 16 * 9 + 5 * 24
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn packed_codes_round_trip(bits in 1u8..=8, codes in prop::collection::vec(any::<u8>(), 0..300), start in 0usize..40) {
        let codes: Vec<u8> = codes.iter().map(|c| c & ((1u16 << bits) - 1) as u8).collect();
        let packed = engine::pack::pack_codes(&codes, bits);
        prop_assert_eq!(packed.len(), (codes.len() * bits as usize).div_ceil(8));
        let start = start.min(codes.len());
        let mut out = vec![0u8; codes.len() - start];
        engine::pack::unpack_codes(&packed, bits, start, &mut out);
        prop_assert_eq!(&out[..], &codes[start..]);
    }

    #[test]
    fn every_encoding_decodes_to_the_dequantized_weights(
        rows in 1usize..6,
        cols in 1usize..90,
        sparsity in 0.0f64..1.0,
        bits in 1u8..=8,
        seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let w = rand_vec(&mut rng, rows * cols);
        for scheme in [
            Scheme::Float(FloatStorage::Bf16),
            Scheme::Uniform { bits, granularity: Granularity::Group { size: 7 }, symmetric: false },
            Scheme::Codebook { bits, with_zero: true },
        ] {
            let q = quantize(&w, rows, cols, sparsity, scheme, None);
            let deq = dequantize(&q);
            for pl in PackedLayer::encodings(&q, "p").expect("encodings") {
                prop_assert!(pl.check().is_ok(), "{}", pl.format_name());
                prop_assert_eq!(pl.dequantized(), deq.clone(), "{}", pl.format_name());
            }
        }
    }
}

/// The blocked matrix product against a plain triple loop, at shapes that leave partial row
/// panels, partial column panels and several inner blocks, on both kernel paths.
#[test]
fn matrix_product_matches_the_plain_product() {
    use squeeze::engine::gemm;
    let mut rng = StdRng::seed_from_u64(21);
    for portable in [false, true] {
        with_kernel_path(portable, || {
            for &(m, n, k) in &[
                (1, 1, 1),
                (12, 32, 160),
                (13, 33, 161),
                (7, 5, 3),
                (30, 70, 400),
                (25, 128, 784),
                (10, 47, 200),
            ] {
                let a = rand_vec(&mut rng, m * k);
                let b = rand_vec(&mut rng, k * n);
                let y0 = rand_vec(&mut rng, m * n);
                let mut packed = Vec::new();
                gemm::row_panels(&a, m, k, &mut packed);
                assert_eq!(packed.len(), gemm::row_panels_len(m, k));
                let mut y = y0.clone();
                gemm::gemm_acc(
                    &packed,
                    m,
                    n,
                    k,
                    gemm::Rhs::Rows(&b),
                    &mut y,
                    &mut Default::default(),
                );
                // The same product from Bᵀ (sample-major), packed by transposing blocks.
                let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
                let mut yt = y0.clone();
                gemm::gemm_acc(
                    &packed,
                    m,
                    n,
                    k,
                    gemm::Rhs::Cols(&bt),
                    &mut yt,
                    &mut Default::default(),
                );
                assert_eq!(y, yt, "{m}×{k}·{k}×{n} from Bᵀ, portable={portable}");
                let mut want = y0.clone();
                for r in 0..m {
                    for j in 0..n {
                        let s: f64 = (0..k).map(|c| (a[r * k + c] * b[c * n + j]) as f64).sum();
                        want[r * n + j] += s as f32;
                    }
                }
                assert_close_rel(
                    &y,
                    &want,
                    1e-5,
                    &format!("{m}×{k}·{k}×{n} portable={portable}"),
                );
            }
        });
    }
}

/// The 8-bit integer kernel a model runs for layers with quantized inputs and 8-bit weights
/// gives exactly the generic integer kernel's outputs: dense and pruned weights, row counts
/// that leave a partial panel, inputs not a multiple of four, one sample and batches with a
/// partial tile, on both kernel paths.
#[test]
fn eight_bit_integer_kernel_matches_the_generic_integer_kernel() {
    const ARCH: &str = r#"
[input]
shape = [90]
[[layer]]
op = "linear"
name = "fc"
weight = "fc.weight"
bias = "fc.bias"
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = StdRng::seed_from_u64(22);
    let (rows, cols) = (37, 90);
    let w = rand_vec(&mut rng, rows * cols);
    let bias = rand_vec(&mut rng, rows);
    let t: Named = vec![
        ("fc.weight".into(), vec![rows, cols], w.clone()),
        ("fc.bias".into(), vec![rows], bias.clone()),
    ];
    let m = written_model(&dir, ARCH, &t);
    let act = ActivationQuant {
        bits: 8,
        scale: 2.0 / 255.0,
        zero_point: 100,
    };
    for sparsity in [0.0, 0.7] {
        for granularity in [Granularity::Channel, Granularity::Tensor] {
            let scheme = Scheme::Uniform {
                bits: 8,
                granularity,
                symmetric: true,
            };
            let mut q = quantize(&w, rows, cols, sparsity, scheme, Some(bias.clone()));
            q.activation = Some(act);
            let p = Plan {
                model: m.clone(),
                layers: vec![q],
            };
            for portable in [false, true] {
                with_kernel_path(portable, || {
                    let cm = CompressedModel::build(&p).expect("build");
                    let Some((_, pl)) = cm.packed_layers().next() else {
                        panic!("one packed layer");
                    };
                    // The generic integer kernel: the same layer without the 8-bit one.
                    let work = Work {
                        int8: false,
                        ..Work::ALL
                    };
                    let generic = LayerKernels::prepare(pl, work);
                    assert_eq!(generic.describe(), "integer");
                    for n in [1usize, 30] {
                        let x: Vec<f32> = rand_vec(&mut rng, n * cols)
                            .iter()
                            .map(|v| v * 1.5)
                            .collect();
                        let got = cm.logits(&x, n);
                        // Feature-major in, feature-major out.
                        let xt: Vec<f32> =
                            (0..cols * n).map(|i| x[(i % n) * cols + i / n]).collect();
                        let mut y = vec![0f32; rows * n];
                        generic.run(&xt, n, &mut y, &mut KernelScratch::default());
                        for j in 0..n {
                            for r in 0..rows {
                                assert_eq!(
                                    got[j * rows + r].to_bits(),
                                    y[r * n + j].to_bits(),
                                    "sparsity {sparsity} {granularity:?} portable={portable} n={n} row {r} sample {j}"
                                );
                            }
                        }
                    }
                });
            }
        }
    }
}

/// The 8-bit integer kernel on convolutions: an input window count that is not a multiple of
/// four (3 × 3 × 3 = 27), zero padding (which must read as the activation zero point), a valid
/// convolution, and a batch, against the fake-quantized reference.
#[test]
fn eight_bit_convolutions_match_the_fake_quantized_reference() {
    const ARCH: &str = r#"
[input]
shape = [3, 7, 6]
[[layer]]
op = "conv2d"
name = "c1"
weight = "c1.weight"
bias = "c1.bias"
padding = 1
[[layer]]
op = "relu"
[[layer]]
op = "conv2d"
name = "c2"
weight = "c2.weight"
[[layer]]
op = "flatten"
[[layer]]
op = "linear"
name = "fc"
weight = "fc.weight"
bias = "fc.bias"
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = StdRng::seed_from_u64(23);
    let t: Named = vec![
        (
            "c1.weight".into(),
            vec![5, 3, 3, 3],
            rand_vec(&mut rng, 135),
        ),
        ("c1.bias".into(), vec![5], rand_vec(&mut rng, 5)),
        (
            "c2.weight".into(),
            vec![18, 5, 2, 3],
            rand_vec(&mut rng, 18 * 30),
        ),
        (
            "fc.weight".into(),
            vec![4, 18 * 6 * 4],
            rand_vec(&mut rng, 4 * 432),
        ),
        ("fc.bias".into(), vec![4], rand_vec(&mut rng, 4)),
    ];
    let m = written_model(&dir, ARCH, &t);
    let n = 3;
    let x = rand_vec(&mut rng, n * m.input_len());
    let mut p = plan(&m, 0.0, |_| Scheme::Uniform {
        bits: 8,
        granularity: Granularity::Channel,
        symmetric: true,
    });
    for q in &mut p.layers {
        q.activation = Some(ActivationQuant {
            bits: 8,
            scale: 0.01,
            zero_point: 90,
        });
    }
    let want = fake_quant_forward(&dequantized_model(&p), &p, &x, n);
    for portable in [false, true] {
        with_kernel_path(portable, || {
            let cm = CompressedModel::build(&p).expect("build");
            assert_close_rel(
                &cm.logits(&x, n),
                &want,
                1e-3,
                &format!("8-bit conv net, portable={portable}"),
            );
        });
    }
}

/// Every encoding of a `rows × cols` layer under each of `schemes`, at several sparsities,
/// against the naive product at p = 1 (the single-sample kernels), whole and on a row
/// sub-range.
fn check_single_sample(rows: usize, cols: usize, seed: u64, schemes: &[Scheme]) {
    let mut rng = StdRng::seed_from_u64(seed);
    let w = rand_vec(&mut rng, rows * cols);
    let bias = rand_vec(&mut rng, rows);
    for sparsity in [0.0, 0.5, 0.9] {
        for &scheme in schemes {
            let q = quantize(&w, rows, cols, sparsity, scheme, Some(bias.clone()));
            let deq = dequantize(&q);
            let cands = PackedLayer::encodings(&q, "t").expect("encodings");
            let mut s = KernelScratch::default();
            for pl in &cands {
                let name = format!("{} {rows}×{cols} s={sparsity}", pl.format_name());
                let b = rand_vec(&mut rng, cols);
                let want = naive(&deq, Some(&bias), rows, cols, &b, 1);
                let mut y = vec![0f32; rows];
                let k = LayerKernels::prepare(pl, Work::ALL);
                k.run(&b, 1, &mut y, &mut s);
                assert_close_rel(&y, &want, 1e-4, &format!("{name} ({})", k.describe()));
                let (a, e) = (1.min(rows), rows.min(6));
                let mut y2 = vec![0f32; e - a];
                let part = LayerKernels::prepare(&pl.row_slice(a..e), Work::ALL);
                part.run(&b, 1, &mut y2, &mut s);
                assert_close_rel(&y2, &want[a..e], 1e-4, &format!("{name} rows {a}..{e}"));
            }
        }
    }
}

/// Codebooks of every width (5 to 8 bits take the wider in-register tables and the memory
/// table), uniform codes of every width in groups on and off the 16-code steps, and half
/// precision, on both kernel paths, at sizes where rows start mid-byte and blocks of four rows
/// end short.
#[test]
fn single_sample_kernels_cover_every_code_width() {
    let mut schemes = vec![
        Scheme::Float(FloatStorage::F16),
        Scheme::Float(FloatStorage::Bf16),
    ];
    for bits in 1..=8u8 {
        for with_zero in [true, false] {
            schemes.push(Scheme::Codebook { bits, with_zero });
        }
        for size in [32usize, 48, 20] {
            schemes.push(Scheme::Uniform {
                bits,
                granularity: Granularity::Group { size },
                symmetric: bits % 2 == 1,
            });
        }
        schemes.push(Scheme::Uniform {
            bits,
            granularity: Granularity::Channel,
            symmetric: bits % 2 == 1,
        });
    }
    for portable in [false, true] {
        with_kernel_path(portable, || {
            for (i, (rows, cols)) in [(7usize, 101usize), (10, 64), (5, 17), (6, 250)]
                .into_iter()
                .enumerate()
            {
                check_single_sample(rows, cols, 50 + i as u64, &schemes);
            }
        });
    }
}

/// A layer shaped like LeNet-300-100's first (rows of 784 inputs), 2:4-like half-precision
/// bitmasks and 90 %-sparse codes among its encodings, on both kernel paths.
#[test]
fn single_sample_kernels_match_at_lenet_shapes() {
    let schemes = [
        Scheme::Float(FloatStorage::F16),
        Scheme::Float(FloatStorage::Bf16),
        Scheme::Uniform {
            bits: 8,
            granularity: Granularity::Channel,
            symmetric: true,
        },
        Scheme::Uniform {
            bits: 4,
            granularity: Granularity::Channel,
            symmetric: false,
        },
        Scheme::Codebook {
            bits: 5,
            with_zero: true,
        },
    ];
    for portable in [false, true] {
        with_kernel_path(portable, || check_single_sample(11, 784, 70, &schemes));
    }
}

#[test]
fn paired_latency_times_both_models_as_often() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = StdRng::seed_from_u64(17);
    let m = mlp(&dir, &mut rng);
    let dense = CompressedModel::build(&plan(&m, 0.0, |_| Scheme::Float(FloatStorage::F32)))
        .expect("dense");
    let sparse = CompressedModel::build(&plan(&m, 0.9, mixed)).expect("sparse");
    let x = rand_vec(&mut rng, dense.input_len());
    let (a, b) = engine::latency_pair(&dense, &sparse, &x);
    assert_eq!(
        a.runs, b.runs,
        "alternating bursts time both models equally often"
    );
    assert!(a.runs >= 200, "{} runs", a.runs);
    for s in [a, b] {
        assert!(s.median_us > 0.0 && s.p90_us >= s.median_us, "{s:?}");
    }
}

/// The class with the highest logit in each row of `logits` (`classes` per row).
fn top1(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks_exact(classes)
        .map(squeeze::measure::argmax)
        .collect()
}

/// Weight-only schemes change no prediction: on the bundled LeNet-300-100 and the bundled
/// test set, the engine's top-1 class, batched and one sample at a time, equals the dense f32
/// evaluation (candle) of the dequantized weights for every one of the 10,000 images.
#[test]
fn weight_only_formats_keep_every_top1_of_the_dequantized_model() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let m = model::load(&root.join("assets/models/lenet-300-100.safetensors"))
        .expect("bundled model")
        .model;
    let set = squeeze::data::load(
        &root.join("assets/data/mnist"),
        &squeeze::data::DataOptions::default(),
    )
    .expect("bundled test set");
    let x = squeeze::cli::common::prepare(&m, &set).expect("inputs");
    let (n, il) = (set.len(), m.input_len());
    let mut recipes: Vec<String> = (1..=8)
        .map(|b| {
            let scheme = if b == 1 { "asymmetric" } else { "symmetric" };
            format!("[default]\nbits = {b}\nscheme = \"{scheme}\"\n")
        })
        .collect();
    recipes.extend(
        [
            "[default]\nbits = 3\nscheme = \"asymmetric\"\n",
            "[default]\nbits = 4\ngranularity = \"group\"\ngroup_size = 4\n",
            "[default]\nbits = 4\nscheme = \"kmeans\"\n",
            "[default]\nbits = 5\nscheme = \"kmeans\"\n",
            "[default]\nbits = 16\n",
            "[default]\nprune = \"nm\"\nbits = 16\n",
            "[default]\nprune = \"l1\"\nsparsity = 0.9\nbits = 4\n",
            "[default]\nprune = \"l1\"\nsparsity = 0.5\n",
        ]
        .map(String::from),
    );
    for text in &recipes {
        let recipe = squeeze::compress::Recipe::from_toml_str(text).expect("recipe");
        let plan = squeeze::compress::apply(&m, &recipe, None).expect("plan");
        let reference = squeeze::measure::dense_outputs(&plan.dequantized_model(), &x, n)
            .expect("dense reference");
        let cm = CompressedModel::build(&plan).expect("build");
        let classes = cm.num_classes();
        let want = top1(&reference, classes);
        assert_eq!(top1(&cm.logits(&x, n), classes), want, "batched, {text}");
        let mut s = cm.scratch();
        let mut one = vec![0f32; classes];
        let mut single = Vec::with_capacity(n * classes);
        for sample in x.chunks_exact(il) {
            cm.run(sample, 1, &mut s, &mut one);
            single.extend_from_slice(&one);
        }
        assert_eq!(top1(&single, classes), want, "one sample at a time, {text}");
    }
}

/// One op's reference forward, engine, compressed file round trip and training gradient on
/// one `[C, H, W]` sample: returns the reference output (the engine and the reloaded file
/// must agree with it within 1e-6) and the gradient of the output's sum.
fn resample_everywhere(
    name: &str,
    shape: [usize; 3],
    layer: &str,
    xs: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let [c, h, w] = shape;
    let spec = ArchSpec::from_toml(&format!(
        "[input]\nshape = [{c}, {h}, {w}]\n[[layer]]\n{layer}\n[[layer]]\nop = \"flatten\"\n"
    ))
    .expect("arch");
    let empty = model::to_safetensors_bytes(&[], &Default::default()).expect("bytes");
    let m = model::load_bytes_with_spec(std::path::Path::new(name), &empty, spec).expect("model");
    let x = Tensor::from_slice(xs, (1, c, h, w), &Device::Cpu).expect("x");
    let reference: Vec<f32> = m
        .forward(&x)
        .and_then(|y| y.flatten_all()?.to_vec1())
        .expect("forward");
    let cm = CompressedModel::build(&Plan {
        model: m.clone(),
        layers: Vec::new(),
    })
    .expect("engine");
    assert_close_rel(
        &cm.logits(xs, 1),
        &reference,
        1e-6,
        &format!("{name}: engine"),
    );
    let path = dir.path().join(format!("{name}.safetensors"));
    cm.save(&path, None).expect("save");
    let back = engine::load_compressed(&path).expect("reload");
    assert_eq!(back.logits(xs, 1), cm.logits(xs, 1), "{name}: reloaded");
    let g = input_gradient(&m, &x);
    (reference, g)
}

/// PyTorch's `nn.AdaptiveAvgPool2d`: output `i` of `O` over length `L` averages `[floor(i·L/O),
/// ceil((i+1)·L/O))` — overlapping windows when `O` does not divide `L` (7 → 3), repeated ones
/// when `O > L` — in the reference, the engine, a compressed file and training's gradient.
#[test]
fn adaptive_avgpool_follows_pytorch() {
    // Hand-computed: 0..7 down a column to 3 rows: windows [0, 3), [2, 5), [4, 7).
    let col: Vec<f32> = (0..7).map(|v| v as f32).collect();
    let (y, g) = resample_everywhere(
        "col",
        [1, 7, 1],
        "op = \"adaptive_avgpool\"\nsize = [3, 1]",
        &col,
    );
    assert_eq!(y, vec![1.0, 3.0, 5.0]);
    // d(sum)/dx: 1/3 per window that holds x (rows 2 and 4 are in two).
    let third = 1.0f32 / 3.0;
    let want = [third, third, 2.0 * third, third, 2.0 * third, third, third];
    assert_close_rel(&g, &want, 1e-6, "7 → 3 gradient");

    let mut rng = StdRng::seed_from_u64(33);
    for (shape, size) in [
        ([2, 7, 5], (3, 2)),
        ([3, 6, 6], (3, 3)),
        ([2, 5, 4], (1, 1)),
        ([1, 3, 2], (5, 4)),
        ([2, 9, 7], (4, 7)),
    ] {
        let [c, h, w] = shape;
        let xs: Vec<f32> = rand_vec(&mut rng, c * h * w)
            .iter()
            .map(|v| v * 4.0 - 2.0)
            .collect();
        let (oh, ow) = size;
        let (y, _) = resample_everywhere(
            "adaptive",
            shape,
            &format!("op = \"adaptive_avgpool\"\nsize = [{oh}, {ow}]"),
            &xs,
        );
        let window = |i: usize, l: usize, o: usize| {
            let start = (i as f64 * l as f64 / o as f64).floor() as usize;
            let end = ((i + 1) as f64 * l as f64 / o as f64).ceil() as usize;
            start..end
        };
        let mut want = Vec::new();
        for ch in 0..c {
            for i in 0..oh {
                for j in 0..ow {
                    let (mut sum, mut n) = (0.0f64, 0.0f64);
                    for yy in window(i, h, oh) {
                        for xx in window(j, w, ow) {
                            sum += xs[ch * h * w + yy * w + xx] as f64;
                            n += 1.0;
                        }
                    }
                    want.push((sum / n) as f32);
                }
            }
        }
        assert_close_rel(&y, &want, 1e-5, &format!("{shape:?} → {size:?}"));
        if size == (1, 1) {
            // Global average pooling's values, kept as [C, 1, 1].
            assert_eq!(y.len(), c);
        }
    }
    // `size = N` is `[N, N]`.
    let xs = rand_vec(&mut rng, 2 * 7 * 7);
    let (n, _) = resample_everywhere("n", [2, 7, 7], "op = \"adaptive_avgpool\"\nsize = 3", &xs);
    let (hw, _) = resample_everywhere(
        "hw",
        [2, 7, 7],
        "op = \"adaptive_avgpool\"\nsize = [3, 3]",
        &xs,
    );
    assert_eq!(n, hw);
}

/// PyTorch's `nn.Upsample(scale_factor = s)` (nearest): output `(i, j)` is input `(i / sh, j /
/// sw)`; its gradient sums the `sh · sw` copies.
#[test]
fn upsample_nearest_follows_pytorch() {
    let xs = [1.0f32, 2.0, 3.0, 4.0];
    let (y, g) = resample_everywhere("up", [1, 2, 2], "op = \"upsample\"\nscale = 2", &xs);
    #[rustfmt::skip]
    let want = vec![
        1.0, 1.0, 2.0, 2.0,
        1.0, 1.0, 2.0, 2.0,
        3.0, 3.0, 4.0, 4.0,
        3.0, 3.0, 4.0, 4.0,
    ];
    assert_eq!(y, want);
    assert_eq!(g, vec![4.0; 4]);

    let mut rng = StdRng::seed_from_u64(34);
    let (c, h, w, sh, sw) = (2, 3, 4, 2, 3);
    let xs = rand_vec(&mut rng, c * h * w);
    let (y, g) = resample_everywhere(
        "up23",
        [c, h, w],
        "op = \"upsample\"\nscale = [2, 3]\nmode = \"nearest\"",
        &xs,
    );
    let mut want = Vec::new();
    for ch in 0..c {
        for i in 0..h * sh {
            for j in 0..w * sw {
                want.push(xs[ch * h * w + (i / sh) * w + j / sw]);
            }
        }
    }
    assert_eq!(y, want);
    assert_eq!(g, vec![(sh * sw) as f32; c * h * w]);
}

/// The gradient of the sum of `m`'s outputs with respect to its input `x`, through training's
/// forward pass.
fn input_gradient(m: &Model, x: &Tensor) -> Vec<f32> {
    let var = candle_core::Var::from_tensor(x).expect("var");
    let y = m
        .forward_with(
            var.as_tensor(),
            &squeeze::train::TrainOps::default(),
            |_, _| Ok(()),
        )
        .expect("training forward");
    let grads = y.sum_all().and_then(|s| s.backward()).expect("backward");
    grads
        .get(var.as_tensor())
        .expect("gradient")
        .flatten_all()
        .and_then(|g| g.to_vec1())
        .expect("values")
}
