//! The training ops (`squeeze::train::ops`: linear, conv2d, max pooling, ReLU, cross-entropy):
//! values and gradients against naive f64 loops and against candle's own ops, and the
//! train-mode forward of LeNet-5 against the inference path.
//!
//! Tolerances are relative to the largest magnitude in the reference tensor (1e-5), since the
//! new path sums in a different order than candle's.

// clippy.toml lets #[test] functions unwrap; this file's helpers do too.
#![allow(clippy::unwrap_used)]

use candle_core::{D, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use squeeze::model::Conv2dGeometry;
use squeeze::train::ops as train_ops;

mod common;
use common::{NaiveConv, assert_close_scaled, rand_vec};

fn rand_tensor(rng: &mut StdRng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec(rand_vec(rng, n), shape, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The naive conv2d of `common` on tensors, with its gradients for the loss `sum(y · r)`.
fn naive_conv(x: &Tensor, w: &Tensor, b: &Tensor, r: &Tensor, g: Conv2dGeometry) -> NaiveConv {
    let (n, c, h, wd) = x.dims4().unwrap();
    let (o, cg, kh, kw) = w.dims4().unwrap();
    let conv = common::naive_conv(
        &values(x),
        [n, c, h, wd],
        &values(w),
        [o, cg, kh, kw],
        &values(b),
        g,
        &values(r),
    );
    assert_eq!(r.dims4().unwrap(), (n, o, conv.out_hw.0, conv.out_hw.1));
    conv
}

/// Value and gradients of `f(x, w, b)` for the loss `sum(y · r)`.
#[allow(clippy::type_complexity)]
fn with_grads(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    r: Option<&Tensor>,
    f: impl Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> (Tensor, Vec<f32>, Vec<f32>, Vec<f32>) {
    let (xv, wv, bv) = (
        Var::from_tensor(x).unwrap(),
        Var::from_tensor(w).unwrap(),
        Var::from_tensor(b).unwrap(),
    );
    let y = f(xv.as_tensor(), wv.as_tensor(), bv.as_tensor()).unwrap();
    let r = match r {
        Some(r) => r.clone(),
        None => y.ones_like().unwrap(),
    };
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g = |v: &Var| values(grads.get(v).unwrap());
    (y, g(&xv), g(&wv), g(&bv))
}

fn geometry(
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
    groups: usize,
) -> Conv2dGeometry {
    Conv2dGeometry {
        stride,
        padding,
        dilation,
        groups,
    }
}

/// candle's conv2d on the zero-padded input (equal stride and dilation only), one call per group
/// (candle's conv2d backward does not support groups).
fn candle_conv(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    g: Conv2dGeometry,
) -> candle_core::Result<Tensor> {
    let x = x
        .pad_with_zeros(D::Minus2, g.padding.0, g.padding.0)?
        .pad_with_zeros(D::Minus1, g.padding.1, g.padding.1)?;
    let (cg, og) = (w.dim(1)?, w.dim(0)? / g.groups);
    let parts = (0..g.groups)
        .map(|i| {
            x.narrow(1, i * cg, cg)?.conv2d(
                &w.narrow(0, i * og, og)?,
                0,
                g.stride.0,
                g.dilation.0,
                1,
            )
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&parts, 1)?.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)
}

/// n, c, h, w, o, k, stride, padding, dilation, groups
type ConvCase = (
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    (usize, usize),
    (usize, usize),
    (usize, usize),
    usize,
);

const CASES: &[ConvCase] = &[
    // n, c, h, w, o, k, stride, padding, dilation, groups
    (3, 1, 12, 12, 4, 5, (1, 1), (0, 0), (1, 1), 1),
    (2, 3, 11, 9, 6, 3, (2, 2), (1, 1), (1, 1), 1),
    (2, 3, 11, 11, 6, 3, (2, 2), (1, 1), (1, 1), 1),
    (2, 6, 10, 10, 6, 3, (3, 3), (1, 1), (2, 2), 3),
    (2, 4, 13, 13, 4, 3, (1, 1), (2, 2), (2, 2), 2),
    (2, 6, 10, 12, 6, 3, (3, 3), (1, 2), (2, 2), 3),
    (1, 4, 7, 7, 8, 1, (2, 2), (0, 0), (1, 1), 4),
    (2, 2, 9, 10, 3, 3, (1, 2), (2, 0), (1, 2), 1),
    // Batches whose weight gradient is summed over several tasks of 16 samples, the last one
    // short: plain, grouped and padded, pointwise grouped.
    (37, 2, 12, 12, 4, 5, (1, 1), (0, 0), (1, 1), 1),
    (19, 4, 24, 24, 4, 3, (1, 1), (1, 1), (1, 1), 2),
    (21, 4, 6, 6, 8, 1, (1, 1), (0, 0), (1, 1), 2),
];

#[test]
fn conv2d_values_and_gradients_match_naive_loops() {
    let mut rng = StdRng::seed_from_u64(7);
    for &(n, c, h, w, o, k, stride, padding, dilation, groups) in CASES {
        let g = geometry(stride, padding, dilation, groups);
        let x = rand_tensor(&mut rng, &[n, c, h, w]);
        let wt = rand_tensor(&mut rng, &[o, c / groups, k, k]);
        let b = rand_tensor(&mut rng, &[o]);
        let (y, dx, dw, db) = with_grads(&x, &wt, &b, None, |x, w, b| {
            train_ops::conv2d(x, w, Some(b), g)
        });
        let r = rand_tensor(&mut rng, y.dims());
        let (y, dx2, dw2, db2) = with_grads(&x, &wt, &b, Some(&r), |x, w, b| {
            train_ops::conv2d(x, w, Some(b), g)
        });
        let want = naive_conv(&x, &wt, &b, &r, g);
        let case = format!("{:?}", (n, c, h, w, o, k, g));
        assert_close_scaled(&values(&y), &want.y, 1e-5, &format!("y {case}"));
        assert_close_scaled(&dx2, &want.dx, 1e-5, &format!("dx {case}"));
        assert_close_scaled(&dw2, &want.dw, 1e-5, &format!("dw {case}"));
        assert_close_scaled(&db2, &want.db, 1e-5, &format!("db {case}"));
        // The all-ones loss too (dx then counts how often each input is read).
        assert!(dx.iter().chain(&dw).chain(&db).all(|v| v.is_finite()));
    }
}

#[test]
fn conv2d_values_and_gradients_match_candle() {
    let mut rng = StdRng::seed_from_u64(8);
    for &(n, c, h, w, o, k, stride, padding, dilation, groups) in CASES {
        // candle's conv2d takes one stride and one dilation, and its backward takes the
        // transposed convolution's output padding from the height alone: it fails when the
        // padded input is not square.
        if stride.0 != stride.1
            || dilation.0 != dilation.1
            || h + 2 * padding.0 != w + 2 * padding.1
        {
            continue;
        }
        let g = geometry(stride, padding, dilation, groups);
        let x = rand_tensor(&mut rng, &[n, c, h, w]);
        let wt = rand_tensor(&mut rng, &[o, c / groups, k, k]);
        let b = rand_tensor(&mut rng, &[o]);
        let probe = train_ops::conv2d(&x, &wt, Some(&b), g).unwrap();
        let r = rand_tensor(&mut rng, probe.dims());
        let (y, dx, dw, db) = with_grads(&x, &wt, &b, Some(&r), |x, w, b| {
            train_ops::conv2d(x, w, Some(b), g)
        });
        let (cy, cdx, cdw, cdb) =
            with_grads(&x, &wt, &b, Some(&r), |x, w, b| candle_conv(x, w, b, g));
        let case = format!("{:?}", (n, c, h, w, o, k, g));
        assert_eq!(y.dims(), cy.dims(), "{case}");
        assert_close_scaled(&values(&y), &values(&cy), 1e-5, &format!("y {case}"));
        assert_close_scaled(&dx, &cdx, 1e-5, &format!("dx {case}"));
        assert_close_scaled(&dw, &cdw, 1e-5, &format!("dw {case}"));
        assert_close_scaled(&db, &cdb, 1e-5, &format!("db {case}"));
    }
}

/// The values and gradients of a convolution do not depend on the number of threads: the
/// same bytes on 1, 2 and 3 threads, for batches whose weight gradient is summed over several
/// tasks.
#[test]
fn conv2d_gives_the_same_bytes_on_any_number_of_threads() {
    let mut rng = StdRng::seed_from_u64(9);
    for &(n, c, h, w, o, k, stride, padding, dilation, groups) in &CASES[CASES.len() - 3..] {
        let g = geometry(stride, padding, dilation, groups);
        let x = rand_tensor(&mut rng, &[n, c, h, w]);
        let wt = rand_tensor(&mut rng, &[o, c / groups, k, k]);
        let b = rand_tensor(&mut rng, &[o]);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let (y, dx, dw, db) = with_grads(&x, &wt, &b, None, |x, w, b| {
                    train_ops::conv2d(x, w, Some(b), g)
                });
                (values(&y), dx, dw, db)
            })
        };
        let one = run(1);
        assert_eq!(one, run(2), "{n} samples, 2 threads");
        assert_eq!(one, run(3), "{n} samples, 3 threads");
    }
}

#[test]
fn conv2d_without_bias_and_with_a_constant_input() {
    let mut rng = StdRng::seed_from_u64(9);
    let x = rand_tensor(&mut rng, &[2, 3, 8, 8]);
    let w = Var::from_tensor(&rand_tensor(&mut rng, &[5, 3, 3, 3])).unwrap();
    let g = geometry((1, 1), (1, 1), (1, 1), 1);
    // The input is not a variable: only the weight gets a gradient.
    let y = train_ops::conv2d(&x, w.as_tensor(), None, g).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&x).is_none());
    let b = Tensor::zeros(5, candle_core::DType::F32, &Device::Cpu).unwrap();
    let r = y.ones_like().unwrap();
    let want = naive_conv(&x, w.as_tensor(), &b, &r, g);
    assert_close_scaled(&values(&y), &want.y, 1e-5, "y");
    assert_close_scaled(&values(grads.get(&w).unwrap()), &want.dw, 1e-5, "dw");
}

/// Naive max pooling (padding = −∞) and its gradient for `sum(y · r)`: each window's first
/// maximum in row-major order takes the output's gradient.
fn naive_pool(
    x: &Tensor,
    r: &Tensor,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
) -> (Vec<f32>, Vec<f32>) {
    let (n, c, h, w) = x.dims4().unwrap();
    let (_, _, oh, ow) = r.dims4().unwrap();
    let (xv, rv) = (values(x), values(r));
    let mut y = vec![f32::NEG_INFINITY; n * c * oh * ow];
    let mut dx = vec![0f32; xv.len()];
    for p in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best: Option<usize> = None;
                for i in 0..kernel.0 {
                    for j in 0..kernel.1 {
                        let iy = (oy * stride.0 + i) as isize - padding.0 as isize;
                        let ix = (ox * stride.1 + j) as isize - padding.1 as isize;
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        let at = p * h * w + iy as usize * w + ix as usize;
                        if best.is_none_or(|b| xv[at] > xv[b]) {
                            best = Some(at);
                        }
                    }
                }
                let yi = (p * oh + oy) * ow + ox;
                if let Some(b) = best {
                    y[yi] = xv[b];
                    dx[b] += rv[yi];
                }
            }
        }
    }
    (y, dx)
}

/// (n, c, h, w), kernel, stride, padding
type PoolCase = (
    (usize, usize, usize, usize),
    (usize, usize),
    (usize, usize),
    (usize, usize),
);

const POOLS: &[PoolCase] = &[
    // (n, c, h, w), kernel, stride, padding
    ((3, 4, 24, 24), (2, 2), (2, 2), (0, 0)),
    ((2, 3, 9, 11), (3, 3), (2, 2), (1, 1)),
    ((2, 2, 8, 9), (3, 2), (1, 2), (1, 0)),
    ((1, 2, 7, 7), (2, 2), (2, 2), (0, 0)),
];

#[test]
fn max_pool_values_and_gradients_match_naive_loops_and_candle_values() {
    let mut rng = StdRng::seed_from_u64(11);
    for &((n, c, h, w), kernel, stride, padding) in POOLS {
        let x = rand_tensor(&mut rng, &[n, c, h, w]);
        // Ties, as ReLU leaves them: the first maximum wins.
        let x = x.relu().unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        let y = train_ops::max_pool2d(xv.as_tensor(), kernel, stride, padding).unwrap();
        let r = rand_tensor(&mut rng, y.dims());
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let (ny, ndx) = naive_pool(&x, &r, kernel, stride, padding);
        let case = format!("{:?}", (n, c, h, w, kernel, stride, padding));
        assert_eq!(values(&y), ny, "y {case}");
        assert_close_scaled(
            &values(grads.get(&xv).unwrap()),
            &ndx,
            1e-6,
            &format!("dx {case}"),
        );

        // candle's forward on the −∞-padded input gives the same values.
        let mut padded = x.clone();
        for (dim, p) in [(2usize, padding.0), (3usize, padding.1)] {
            if p > 0 {
                let mut shape = padded.dims().to_vec();
                shape[dim] = p;
                let fill = Tensor::full(f32::NEG_INFINITY, shape, &Device::Cpu).unwrap();
                padded = Tensor::cat(&[&fill, &padded, &fill], dim).unwrap();
            }
        }
        let cy = padded.max_pool2d_with_stride(kernel, stride).unwrap();
        assert_eq!(values(&y), values(&cy), "candle y {case}");
    }
}

/// candle 0.11's max-pool backward (stride = kernel only) multiplies each window's gradient by
/// `maxima / (kh·kw)`: with one maximum per window, it is the true gradient over kh·kw. The
/// train path gives the true gradient; this pins the relation so a candle fix is noticed.
#[test]
fn candle_max_pool_gradient_is_the_true_one_over_the_window_size() {
    let mut rng = StdRng::seed_from_u64(12);
    let x = rand_tensor(&mut rng, &[2, 3, 8, 8]); // continuous values: no ties
    let xv = Var::from_tensor(&x).unwrap();
    let r = rand_tensor(&mut rng, &[2, 3, 4, 4]);
    let ours = train_ops::max_pool2d(xv.as_tensor(), (2, 2), (2, 2), (0, 0)).unwrap();
    let ours = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let theirs = xv.as_tensor().max_pool2d(2).unwrap();
    let theirs = (&theirs * &r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let ours = values(ours.get(&xv).unwrap());
    let theirs: Vec<f32> = values(theirs.get(&xv).unwrap())
        .iter()
        .map(|v| v * 4.0)
        .collect();
    assert_close_scaled(&ours, &theirs, 1e-6, "dx");
}

#[test]
fn relu_matches_candle_including_zeros() {
    let mut rng = StdRng::seed_from_u64(14);
    // Whole numbers in −3..3: exact zeros, where candle's gradient passes (x ≥ 0).
    let v: Vec<f32> = (0..3000)
        .map(|_| rng.random_range(-3i32..3) as f32)
        .collect();
    let x = Var::from_vec(v, (3, 10, 100), &Device::Cpu).unwrap();
    let r = rand_tensor(&mut rng, &[3, 10, 100]);
    let ours = train_ops::relu(x.as_tensor()).unwrap();
    let theirs = x.as_tensor().relu().unwrap();
    assert_eq!(values(&ours), values(&theirs));
    let g = |y: &Tensor| {
        let grads = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        values(grads.get(&x).unwrap())
    };
    assert_eq!(g(&ours), g(&theirs));
}

/// LeNet-5 as `squeeze train` builds it: the train-mode forward (new ops) gives the inference
/// path's logits, the fc gradients agree, and the conv gradients are the inference path's
/// times 4 (conv2, one 2×2 max pool) and 16 (conv1, two) — candle's max-pool scaling above.
#[test]
fn lenet5_train_mode_matches_the_inference_path() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/arch/lenet5.toml");
    let spec = squeeze::train::read_arch(&path).unwrap();
    let tm = squeeze::train::init_model(&spec, &path, 3).unwrap();
    let mut rng = StdRng::seed_from_u64(13);
    let x = rand_tensor(&mut rng, &[6, 1, 28, 28]);
    let labels = Tensor::new(&[0u32, 1, 2, 3, 4, 5], &Device::Cpu).unwrap();
    let run = |train: bool| {
        let logits = if train {
            tm.model
                .forward_with(&x, &squeeze::train::TrainOps::default(), |_, _| Ok(()))
                .unwrap()
        } else {
            tm.model.forward(&x).unwrap()
        };
        let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
        let grads = loss.backward().unwrap();
        let g: Vec<Vec<f32>> = tm
            .vars
            .iter()
            .map(|v| values(grads.get(v).unwrap()))
            .collect();
        (values(&logits), g)
    };
    let (y_train, g_train) = run(true);
    let (y_ref, g_ref) = run(false);
    assert_close_scaled(&y_train, &y_ref, 1e-5, "logits");
    // vars: conv1 w, b, conv2 w, b, fc1 w, b, fc2 w, b
    let factors = [16.0f32, 16.0, 4.0, 4.0, 1.0, 1.0, 1.0, 1.0];
    assert_eq!(g_train.len(), factors.len());
    for (i, ((gt, gr), f)) in g_train.iter().zip(&g_ref).zip(factors).enumerate() {
        let scaled: Vec<f32> = gr.iter().map(|v| v * f).collect();
        assert_close_scaled(gt, &scaled, 1e-4, &format!("grad of var {i}"));
    }
    // Same inputs, same bytes.
    let (y_again, g_again) = run(true);
    assert_eq!(y_train, y_again);
    assert_eq!(g_train, g_again);
}

#[test]
fn linear_values_and_gradients_match_candle_matmul() {
    let mut rng = StdRng::seed_from_u64(15);
    // (n, in, out): tiny, around the GEMM's panel sizes, and LeNet-300-100's fc1 at batch 128.
    for (n, inputs, out) in [(1, 1, 1), (3, 7, 5), (13, 33, 11), (128, 784, 300)] {
        let x = rand_tensor(&mut rng, &[n, inputs]);
        let w = rand_tensor(&mut rng, &[out, inputs]);
        let b = rand_tensor(&mut rng, &[out]);
        let r = rand_tensor(&mut rng, &[n, out]);
        let (y, dx, dw, db) = with_grads(&x, &w, &b, Some(&r), |x, w, b| {
            train_ops::linear(x, w, Some(b))
        });
        let (cy, cdx, cdw, cdb) = with_grads(&x, &w, &b, Some(&r), |x, w, b| {
            x.matmul(&w.t()?)?.broadcast_add(b)
        });
        let case = format!("{:?}", (n, inputs, out));
        assert_eq!(y.dims(), cy.dims(), "{case}");
        assert_close_scaled(&values(&y), &values(&cy), 1e-5, &format!("y {case}"));
        assert_close_scaled(&dx, &cdx, 1e-5, &format!("dx {case}"));
        assert_close_scaled(&dw, &cdw, 1e-5, &format!("dw {case}"));
        assert_close_scaled(&db, &cdb, 1e-5, &format!("db {case}"));
    }
}

#[test]
fn linear_without_bias_and_with_a_constant_input() {
    let mut rng = StdRng::seed_from_u64(16);
    let x = rand_tensor(&mut rng, &[4, 9]);
    let w = Var::from_tensor(&rand_tensor(&mut rng, &[6, 9])).unwrap();
    let y = train_ops::linear(&x, w.as_tensor(), None).unwrap();
    let want = x.matmul(&w.as_tensor().t().unwrap()).unwrap();
    assert_close_scaled(&values(&y), &values(&want), 1e-6, "y");
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&x).is_none());
    // d/dw Σ x·wᵀ = column sums of x, for every output row.
    let sums = values(&x.sum(0).unwrap());
    let dw = values(grads.get(&w).unwrap());
    for row in dw.chunks(9) {
        assert_close_scaled(row, &sums, 1e-6, "dw");
    }
    assert!(train_ops::linear(&x, &rand_tensor(&mut rng, &[6, 8]), None).is_err());
}

#[test]
fn cross_entropy_value_and_gradient_match_candle_nn() {
    let mut rng = StdRng::seed_from_u64(17);
    for (n, classes) in [(1, 2), (7, 10), (128, 10)] {
        let z = Var::from_tensor(&(rand_tensor(&mut rng, &[n, classes]) * 8.0).unwrap()).unwrap();
        let y: Vec<u32> = (0..n)
            .map(|_| rng.random_range(0..classes as u32))
            .collect();
        let y = Tensor::new(y.as_slice(), &Device::Cpu).unwrap();
        let ours = train_ops::cross_entropy(z.as_tensor(), &y).unwrap();
        let theirs = candle_nn::loss::cross_entropy(z.as_tensor(), &y).unwrap();
        let (a, b) = (
            ours.to_scalar::<f32>().unwrap(),
            theirs.to_scalar::<f32>().unwrap(),
        );
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
            "{n}×{classes}: {a} vs {b}"
        );
        // A scaled loss scales the gradient.
        let g = |l: &Tensor| {
            values(
                l.affine(3.0, 0.0)
                    .unwrap()
                    .backward()
                    .unwrap()
                    .get(&z)
                    .unwrap(),
            )
        };
        assert_close_scaled(&g(&ours), &g(&theirs), 1e-5, &format!("dz {n}×{classes}"));
    }
    let z = rand_tensor(&mut rng, &[2, 3]);
    let bad = Tensor::new(&[0u32, 3], &Device::Cpu).unwrap();
    let err = train_ops::cross_entropy(&z, &bad).unwrap_err().to_string();
    assert!(err.contains("label 3 out of range for 3 classes"), "{err}");
}

/// `TrainOps` joins a ReLU and a max pooling to the conv node before them (the pooling's
/// backward then applies the ReLU's in the same pass: the 2×2 window on even and odd sizes, and
/// a general window). When the conv's output is also used elsewhere, both uses still
/// back-propagate: the gradients equal those of the same graph built from separate nodes.
#[test]
fn fused_stages_give_the_gradients_of_separate_nodes() {
    use squeeze::model::{Activation, ForwardOps, Pool2d};
    let mut rng = StdRng::seed_from_u64(18);
    let g = geometry((1, 1), (0, 0), (1, 1), 1);
    // input side, pool kernel, stride, padding; the conv (3×3) makes it side − 2.
    for (side, k, st, pad) in [(10, 2, 2, 0), (11, 2, 2, 0), (10, 3, 2, 1)] {
        let x = rand_tensor(&mut rng, &[3, 2, side, side]);
        let w = Var::from_tensor(&rand_tensor(&mut rng, &[4, 2, 3, 3])).unwrap();
        let b = Var::from_tensor(&rand_tensor(&mut rng, &[4])).unwrap();
        let pool = Pool2d {
            kernel: (k, k),
            stride: (st, st),
            padding: (pad, pad),
        };
        let conv = side - 2;
        let pooled = (conv + 2 * pad - k) / st + 1;
        let r1 = rand_tensor(&mut rng, &[3, 4, pooled, pooled]);
        let r2 = rand_tensor(&mut rng, &[3, 4, conv, conv]);
        let run = |fused: bool, also_conv: bool| {
            let (y, z) = if fused {
                let ops = squeeze::train::TrainOps::default();
                let y = ops
                    .conv2d(&x, w.as_tensor(), Some(b.as_tensor()), &g)
                    .unwrap();
                let r = ops.activation(&y, Activation::Relu).unwrap();
                (y, ops.max_pool2d(&r, &pool).unwrap())
            } else {
                let y = train_ops::conv2d(&x, w.as_tensor(), Some(b.as_tensor()), g).unwrap();
                let r = train_ops::relu(&y).unwrap();
                (
                    y,
                    train_ops::max_pool2d(&r, (k, k), (st, st), (pad, pad)).unwrap(),
                )
            };
            let mut loss = (&z * &r1).unwrap().sum_all().unwrap();
            if also_conv {
                loss = (loss + (&y * &r2).unwrap().sum_all().unwrap()).unwrap();
            }
            let grads = loss.backward().unwrap();
            (
                values(&z),
                values(grads.get(&w).unwrap()),
                values(grads.get(&b).unwrap()),
            )
        };
        for also_conv in [false, true] {
            let case = format!("side {side}, pool {k}/{st}/{pad}, also_conv {also_conv}");
            let (z, dw, db) = run(true, also_conv);
            let (z2, dw2, db2) = run(false, also_conv);
            assert_eq!(z, z2, "{case}");
            assert_close_scaled(&dw, &dw2, 1e-6, &format!("dw {case}"));
            assert_close_scaled(&db, &db2, 1e-6, &format!("db {case}"));
        }
    }
}
