//! Inference speed of the engine on the bundled models, dense and compressed, in one run:
//! single-sample latency (one thread) and a full 10,000-sample evaluation (batches of 1000 on
//! rayon) for LeNet-300-100 and LeNet-5 under dense f32, 90 % / 95 % unstructured sparsity
//! (CSR), 8-bit and 4-bit weights; and fc1 of LeNet-300-100 alone (300×784) at 90 / 95 %
//! sparsity, CSR against dense, batch 1 and batch 256 (batch 1 also on the portable kernels);
//! and the blocked matrix product at fc1's shape over one 128-sample chunk, from feature-major
//! and from sample-major inputs, in FLOP/s (criterion's elements/s), with the machine's FMA
//! peak printed beside it.
//! `SQUEEZE_PORTABLE_KERNELS=1` forces the portable kernels everywhere.
//!
//! `cargo bench --bench inference`. Falls back to randomly initialised models of the same
//! shapes when `assets/models/*.safetensors` are missing (and says so).

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use rand::{Rng, SeedableRng, rngs::StdRng};
use squeeze::compress::{self, Plan, Recipe};
use squeeze::engine::{self, CompressedModel};
use squeeze::model::{self, Model};

const RECIPES: &[(&str, &str)] = &[
    ("dense-f32", ""),
    ("sparse90", "[default]\nprune = \"l1\"\nsparsity = 0.9\n"),
    ("sparse95", "[default]\nprune = \"l1\"\nsparsity = 0.95\n"),
    (
        "int8",
        "[default]\nbits = 8\nscheme = \"symmetric\"\ngranularity = \"channel\"\n",
    ),
    (
        "int4",
        "[default]\nbits = 4\nscheme = \"symmetric\"\ngranularity = \"channel\"\n",
    ),
];

/// The bundled model, or a random one of the same architecture.
fn load_model(name: &str, shapes: &[(&str, &[usize])]) -> Model {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = root.join(format!("assets/models/{name}.safetensors"));
    let arch = root.join(format!("assets/arch/{name}.toml"));
    if file.exists() {
        match model::load(&file).or_else(|_| model::load_with_arch(&file, Some(&arch))) {
            Ok(l) => return l.model,
            Err(e) => eprintln!("{e}; benchmarking a random {name} instead"),
        }
    } else {
        eprintln!(
            "{} is missing: benchmarking a randomly initialised {name}",
            file.display()
        );
    }
    let mut rng = StdRng::seed_from_u64(1);
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = shapes
        .iter()
        .map(|(n, s)| {
            let count: usize = s.iter().product();
            let fan_in: usize = s[1..].iter().product::<usize>().max(1);
            let a = (1.0 / fan_in as f32).sqrt();
            (
                n.to_string(),
                s.to_vec(),
                (0..count).map(|_| rng.random_range(-a..a)).collect(),
            )
        })
        .collect();
    let bytes = model::to_safetensors_bytes(&tensors, &HashMap::new()).expect("serialize");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format!("{name}.safetensors"));
    std::fs::write(&path, bytes).expect("write");
    model::load_with_arch(&path, Some(&arch))
        .expect("random model loads")
        .model
}

fn lenet300() -> Model {
    load_model(
        "lenet-300-100",
        &[
            ("fc1.weight", &[300, 784]),
            ("fc1.bias", &[300]),
            ("fc2.weight", &[100, 300]),
            ("fc2.bias", &[100]),
            ("fc3.weight", &[10, 100]),
            ("fc3.bias", &[10]),
        ],
    )
}

fn lenet5() -> Model {
    load_model(
        "lenet5",
        &[
            ("conv1.weight", &[20, 1, 5, 5]),
            ("conv1.bias", &[20]),
            ("conv2.weight", &[50, 20, 5, 5]),
            ("conv2.bias", &[50]),
            ("fc1.weight", &[500, 800]),
            ("fc1.bias", &[500]),
            ("fc2.weight", &[10, 500]),
            ("fc2.bias", &[10]),
        ],
    )
}

fn plan(m: &Model, recipe: &str) -> Plan {
    let r = Recipe::from_toml_str(recipe).expect("recipe parses");
    compress::apply(m, &r, None).expect("recipe applies")
}

/// MNIST-like inputs: values in the scaled range of the bundled models.
fn inputs(m: &Model, n: usize) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(2);
    (0..n * m.input_len())
        .map(|_| {
            if rng.random_bool(0.8) {
                -0.42
            } else {
                rng.random_range(-0.42f32..2.8)
            }
        })
        .collect()
}

fn bench_model(c: &mut Criterion, name: &str, m: &Model) {
    let x = inputs(m, 10_000);
    let il = m.input_len();
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_millis(300));
    for (label, recipe) in RECIPES {
        let cm = CompressedModel::build(&plan(m, recipe)).expect("build");
        eprintln!(
            "{name}/{label}: {} bytes (dense {}), layers: {}",
            cm.size_bytes(),
            cm.dense_bytes(),
            cm.packed_layers()
                .map(|(_, p)| p.format_name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let l = engine::latency(&cm, &x[..il]);
        eprintln!(
            "{name}/{label}: engine::latency median {:.2} µs, p90 {:.2} µs over {} runs",
            l.median_us, l.p90_us, l.runs
        );
        let mut s = cm.scratch();
        let mut out = vec![0f32; cm.num_classes()];
        g.measurement_time(Duration::from_millis(1500));
        g.sample_size(50);
        g.bench_function(format!("single/{label}"), |b| {
            b.iter(|| cm.run(black_box(&x[..il]), 1, &mut s, &mut out))
        });
        g.measurement_time(Duration::from_secs(3));
        g.sample_size(10);
        g.bench_function(format!("10k/{label}"), |b| {
            b.iter(|| {
                for chunk in x.chunks(1000 * il) {
                    black_box(cm.logits(chunk, chunk.len() / il));
                }
            })
        });
    }
    g.finish();
}

fn bench_fc1(c: &mut Criterion, m: &Model) {
    let Some((i, _)) = m.compressible().next() else {
        return;
    };
    // fc1 alone: a one-layer model over the same input.
    let mut one = m.clone();
    one.layers.truncate(i + 1);
    let x = inputs(&one, 256);
    let il = one.input_len();
    let mut g = c.benchmark_group("fc1");
    g.warm_up_time(Duration::from_millis(300));
    g.measurement_time(Duration::from_secs(1));
    g.sample_size(30);
    for (label, recipe) in [RECIPES[0], RECIPES[1], RECIPES[2]] {
        let cm = CompressedModel::build(&plan(&one, recipe)).expect("build");
        let mut s = cm.scratch();
        let mut out = vec![0f32; cm.num_classes() * 256];
        let l = engine::latency(&cm, &x[..il]);
        eprintln!("fc1/{label}: engine::latency median {:.2} µs", l.median_us);
        g.bench_function(format!("b1/{label}"), |b| {
            b.iter(|| cm.run(black_box(&x[..il]), 1, &mut s, &mut out))
        });
        g.bench_function(format!("b256/{label}"), |b| {
            b.iter(|| cm.run(black_box(&x), 256, &mut s, &mut out))
        });
        // The same single sample on the portable kernels (the fallback on CPUs without
        // AVX-512), to keep its cost visible: the model prepared with them.
        engine::force_portable(true);
        let portable = CompressedModel::build(&plan(&one, recipe)).expect("build");
        engine::force_portable(false);
        g.bench_function(format!("b1-portable/{label}"), |b| {
            b.iter(|| portable.run(black_box(&x[..il]), 1, &mut s, &mut out))
        });
    }
    g.finish();
}

/// One LeNet-300-100 sample at every weight width, uniform per channel (1 bit asymmetric, the
/// others symmetric) and k-means: the latency a per-layer bit-width sweep walks through.
fn bench_widths(c: &mut Criterion, m: &Model) {
    let x = inputs(m, 1);
    let mut g = c.benchmark_group("widths");
    g.warm_up_time(Duration::from_millis(300));
    g.measurement_time(Duration::from_secs(1));
    g.sample_size(30);
    let mut cases: Vec<(String, String)> = (1..=8)
        .map(|b| {
            let scheme = if b == 1 { "asymmetric" } else { "symmetric" };
            (
                format!("u{b}"),
                format!("[default]\nbits = {b}\nscheme = \"{scheme}\"\n"),
            )
        })
        .collect();
    for b in [4, 5] {
        cases.push((
            format!("kmeans{b}"),
            format!("[default]\nbits = {b}\nscheme = \"kmeans\"\n"),
        ));
    }
    for (label, recipe) in cases {
        let cm = CompressedModel::build(&plan(m, &recipe)).expect("build");
        let mut s = cm.scratch();
        let mut out = vec![0f32; cm.num_classes()];
        g.bench_function(label, |b| {
            b.iter(|| cm.run(black_box(&x), 1, &mut s, &mut out))
        });
    }
    g.finish();
}

/// `gemm_acc` at fc1's shape (300 × 784 weights, 128 samples), both input layouts; and at the
/// shapes of ResNet-18's convolutions on 32 × 32 inputs for one sample (`im2col` columns as
/// `B`): 64 filters over 1,024 positions, and 512 filters over 16 positions, whose 9.4 MB of
/// weights are the stream (`cold`: five copies used in turn, 47 MB, so none is in L2).
fn bench_gemm(c: &mut Criterion) {
    use engine::gemm::{self, Rhs};
    let peak = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map(|p| p.install(|| engine::fma_peak_gflops(Duration::from_millis(500))));
    if let Ok(peak) = peak {
        eprintln!("gemm: FMA peak of one core, measured now: {peak:.1} GFLOP/s");
    }
    let mut g = c.benchmark_group("gemm");
    g.warm_up_time(Duration::from_millis(300));
    g.measurement_time(Duration::from_secs(1));
    let shapes = [
        ("fc1x128", 300, 784, 128, 1),
        ("conv64x576x1024", 64, 576, 1024, 1),
        ("conv512x4608x16", 512, 4608, 16, 1),
        ("conv512x4608x16/cold", 512, 4608, 16, 5),
        ("conv512x4608x16/colder", 512, 4608, 16, 12),
        ("l1-32x256x12", 32, 256, 12, 1),
    ];
    for (name, m, k, n, copies) in shapes {
        let mut rng = StdRng::seed_from_u64(3);
        let a: Vec<Vec<f32>> = (0..copies)
            .map(|_| {
                let w: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
                let mut a = Vec::new();
                gemm::row_panels(&w, m, k, &mut a);
                a
            })
            .collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut y = vec![0f32; m * n];
        let mut s = gemm::GemmScratch::default();
        g.throughput(criterion::Throughput::Elements((2 * m * k * n) as u64));
        let mut turn = 0;
        g.bench_function(format!("{name}/feature-major"), |bch| {
            bch.iter(|| {
                turn = (turn + 1) % copies;
                gemm::gemm_acc(&a[turn], m, n, k, Rhs::Rows(black_box(&b)), &mut y, &mut s)
            })
        });
        if n <= gemm::FEW {
            let tall: Vec<Vec<f32>> = (0..copies)
                .map(|_| {
                    let w: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
                    gemm::tall_panels(&w, m, k)
                })
                .collect();
            g.bench_function(format!("{name}/tall"), |bch| {
                bch.iter(|| {
                    turn = (turn + 1) % copies;
                    gemm::gemm_tall_acc(&tall[turn], m, n, k, black_box(&b), &mut y, &mut s)
                })
            });
        }
        if name == "fc1x128" {
            g.bench_function(format!("{name}/sample-major"), |bch| {
                bch.iter(|| {
                    gemm::gemm_acc(&a[0], m, n, k, Rhs::Cols(black_box(&b)), &mut y, &mut s)
                })
            });
        }
    }
    // ResNet-18's first stage for one sample: 64 → 64 channels, 3 × 3, padding 1, 32 × 32;
    // im2col packed into row panels (`gemm_acc` on `Rhs::Conv`'s path) against the direct
    // tall-panel kernel.
    let shape = engine::ConvShape {
        cin: 64,
        h: 32,
        w: 32,
        cout: 64,
        kh: 3,
        kw: 3,
        stride: (1, 1),
        pad: (1, 1),
        dil: (1, 1),
        groups: 1,
        oh: 32,
        ow: 32,
    };
    let (m, k, n) = (64, shape.k(), shape.positions());
    let mut rng = StdRng::seed_from_u64(5);
    let w: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let x: Vec<f32> = (0..64 * 32 * 32)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let (mut rows, tall) = (Vec::new(), gemm::tall_panels(&w, m, k));
    gemm::row_panels(&w, m, k, &mut rows);
    let mut y = vec![0f32; m * n];
    let mut s = gemm::GemmScratch::default();
    let mut col = vec![0f32; k * n];
    g.throughput(criterion::Throughput::Elements((2 * m * k * n) as u64));
    g.bench_function("conv3x3-64x32x32/im2col+row-panels", |bch| {
        bch.iter(|| {
            engine::im2col(black_box(&x), &shape, 0, &mut col);
            gemm::gemm_acc(&rows, m, n, k, Rhs::Rows(&col), &mut y, &mut s)
        })
    });
    g.bench_function("conv3x3-64x32x32/direct", |bch| {
        bch.iter(|| gemm::conv_direct(&tall, &shape, black_box(&x), &mut y, &mut s))
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    bench_gemm(c);
    let l300 = lenet300();
    bench_model(c, "lenet-300-100", &l300);
    bench_fc1(c, &l300);
    bench_widths(c, &l300);
    bench_model(c, "lenet5", &lenet5());
}

criterion_group!(inference, benches);
criterion_main!(inference);
