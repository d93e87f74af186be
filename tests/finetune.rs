//! Recovering what compression costs: fine-tuning under masks (one-shot and gradual),
//! quantization-aware training, shared values, distillation; on small slices of the bundled
//! MNIST so the whole file stays quick.

// clippy.toml lets #[test] functions unwrap; this file's helpers do too.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor, Var};
use predicates::prelude::*;
use squeeze::compress::prune::prune_count;
use squeeze::compress::{self, Held, HeldCodebook, Recipe, WeightValues};
use squeeze::data::{DataOptions, EvalSet, Split};
use squeeze::model::Model;
use squeeze::train::{
    Distillation, FinetuneError, FinetuneEvent, FinetuneSets, FinetuneSettings, LrDecay,
    OptimizerKind, PruneSchedule, TrainConfig, distillation_loss, fake_quant,
};

mod common;
use common::{root, squeeze};

fn lenet300() -> Model {
    squeeze::model::load(&root().join("assets/models/lenet-300-100.safetensors"))
        .unwrap()
        .model
}

fn mnist(split: Split) -> &'static EvalSet {
    static TRAIN: OnceLock<EvalSet> = OnceLock::new();
    static TEST: OnceLock<EvalSet> = OnceLock::new();
    let cell = match split {
        Split::Train => &TRAIN,
        Split::Test => &TEST,
    };
    cell.get_or_init(|| {
        let opts = DataOptions {
            split,
            ..Default::default()
        };
        squeeze::data::load(&root().join("assets/data/mnist"), &opts).unwrap()
    })
}

/// Samples `from..to` of a set.
fn slice(set: &EvalSet, from: usize, to: usize) -> EvalSet {
    let per = set.sample_len();
    EvalSet {
        source: set.source.clone(),
        inputs: set.inputs[from * per..to * per].to_vec(),
        sample_shape: set.sample_shape.clone(),
        labels: set.labels[from..to].to_vec(),
        classes: set.classes.clone(),
    }
}

fn config(epochs: usize, batch: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        lr: 5e-4,
        batch,
        seed: 3,
        optimizer: OptimizerKind::AdamW,
        momentum: 0.9,
        weight_decay: 0.0,
        lr_decay: LrDecay::Cosine,
    }
}

#[test]
fn a_short_finetune_recovers_accuracy_lost_to_pruning() {
    let model = lenet300();
    let recipe = Recipe::from_toml_str("[default]\nprune = \"l1\"\nsparsity = 0.9\n").unwrap();
    let train = slice(mnist(Split::Train), 0, 5000);
    let val = slice(mnist(Split::Train), 59000, 60000);
    let test = slice(mnist(Split::Test), 0, 2000);
    let mut cfg = config(1, 50);
    cfg.lr = 1e-3;
    let settings = FinetuneSettings::new(cfg);
    let cancel = AtomicBool::new(false);
    let r = squeeze::train::finetune(
        &model,
        &recipe,
        FinetuneSets {
            train: &train,
            validation: Some(&val),
            test: Some(&test),
        },
        &settings,
        None,
        &cancel,
        &mut |_| {},
    )
    .unwrap();
    let before = r.report.untuned_test_accuracy.unwrap();
    let after = r.report.test_accuracy.unwrap();
    assert!(before < 0.7, "pruning alone should cost accuracy: {before}");
    assert!(
        after > before + 0.25 && after > 0.88,
        "one short epoch should recover most of it: {before} → {after}"
    );
    // The figure is the engine's, on the packed model, at the recipe's sparsity.
    let m = r.test.as_ref().unwrap();
    assert_eq!(m.accuracy.accuracy, after);
    assert!((m.sparsity - 0.9).abs() < 1e-3, "{}", m.sparsity);
    assert_eq!(m.size_bytes, r.compressed.size_bytes());
    for q in &r.plan.layers {
        let w = q.dequantized();
        assert_eq!(
            q.kept_count(),
            q.kept.len() - prune_count(0.9, q.kept.len())
        );
        assert!(w.iter().zip(&q.kept).all(|(v, k)| *k || *v == 0.0));
    }
}

#[test]
fn agp_follows_zhu_and_gupta_at_every_step() {
    let model = lenet300();
    let s_f = 0.8;
    let recipe =
        Recipe::from_toml_str(&format!("[default]\nprune = \"l1\"\nsparsity = {s_f}\n")).unwrap();
    let train = slice(mnist(Split::Train), 0, 1000);
    let (batch, epochs, interval, end) = (50, 2, 3usize, 0.5);
    let mut settings = FinetuneSettings::new(config(epochs, batch));
    settings.schedule = PruneSchedule::Agp {
        interval: Some(interval),
        end,
    };
    settings.measure_untuned = false;
    let steps = epochs * 1000 / batch;
    // t0 = 0, Δt = 3, nΔt ≤ half the steps.
    let n = (steps as f64 * end).round() as usize / interval;
    let sizes: Vec<usize> = model
        .compressible()
        .map(|(_, l)| l.params().unwrap().weight.elem_count())
        .collect();
    let total: usize = sizes.iter().sum();
    let mut seen = Vec::new();
    squeeze::train::finetune(
        &model,
        &recipe,
        FinetuneSets {
            train: &train,
            validation: None,
            test: None,
        },
        &settings,
        None,
        &AtomicBool::new(false),
        &mut |e| {
            if let FinetuneEvent::Step { sparsity, .. } = e {
                seen.push(*sparsity);
            }
        },
    )
    .unwrap();
    assert_eq!(seen.len(), steps);
    for (t, got) in seen.iter().enumerate() {
        // s_t = s_f + (s_i − s_f)(1 − (t_k − t0)/(nΔt))³ at the last update t_k ≤ t, s_i = 0.
        let tk = (t / interval).min(n) * interval;
        let s_t = s_f + (0.0 - s_f) * (1.0 - tk as f64 / (n * interval) as f64).powi(3);
        let want: usize = sizes.iter().map(|&w| prune_count(s_t, w)).sum();
        assert_eq!(
            *got,
            want as f64 / total as f64,
            "step {t}: sparsity {got}, the formula gives {s_t}"
        );
    }
    assert_eq!(seen[0], 0.0);
    assert!((seen[n * interval] - s_f).abs() < 1e-6);
    assert!((seen[steps - 1] - s_f).abs() < 1e-6);
}

#[test]
fn distillation_loss_matches_the_formula_and_its_gradient_finite_differences() {
    let s = [[1.0f32, 2.0, 0.5], [-1.0, 0.0, 3.0]];
    let t = [[0.5f32, 2.5, -1.0], [0.0, 1.0, 2.0]];
    let y = [1u32, 2];
    let d = Distillation {
        temperature: 2.0,
        alpha: 0.7,
    };
    // By hand, in f64: α·T²·mean KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α)·mean CE(s, y).
    let softmax = |v: &[f32], temp: f64| -> Vec<f64> {
        let e: Vec<f64> = v.iter().map(|x| (*x as f64 / temp).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|x| x / z).collect()
    };
    let hand = |s: &[[f32; 3]; 2]| -> f64 {
        let mut kl = 0.0;
        let mut ce = 0.0;
        for i in 0..2 {
            let (ps, pt) = (softmax(&s[i], 2.0), softmax(&t[i], 2.0));
            kl += pt
                .iter()
                .zip(&ps)
                .map(|(q, p)| q * (q.ln() - p.ln()))
                .sum::<f64>();
            ce -= softmax(&s[i], 1.0)[y[i] as usize].ln();
        }
        0.7 * 4.0 * kl / 2.0 + 0.3 * ce / 2.0
    };
    let flat: Vec<f32> = s.iter().flatten().copied().collect();
    let student = Var::from_vec(flat.clone(), (2, 3), &Device::Cpu).unwrap();
    let teacher =
        Tensor::from_vec(t.iter().flatten().copied().collect(), (2, 3), &Device::Cpu).unwrap();
    let labels = Tensor::from_vec(y.to_vec(), 2, &Device::Cpu).unwrap();
    let loss = distillation_loss(student.as_tensor(), &teacher, &labels, d).unwrap();
    let value = loss.to_scalar::<f32>().unwrap() as f64;
    assert!((value - hand(&s)).abs() < 1e-5, "{value} vs {}", hand(&s));

    let grads = loss.backward().unwrap();
    let g = grads
        .get(&student)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let h = 1e-3f32;
    for k in 0..6 {
        let (mut plus, mut minus) = (s, s);
        plus[k / 3][k % 3] += h;
        minus[k / 3][k % 3] -= h;
        let fd = (hand(&plus) - hand(&minus)) / (2.0 * h as f64);
        assert!(
            (g[k] as f64 - fd).abs() < 1e-3,
            "∂loss/∂s[{k}]: autograd {} vs finite differences {fd}",
            g[k]
        );
    }
}

#[test]
fn the_straight_through_gradient_is_the_identity_inside_the_range_and_zero_outside() {
    // 4 bits, scale 0.1, zero point 8: levels −0.8 … 0.7.
    let x = Var::from_vec(
        vec![-3.0f32, -0.84, -0.4, 0.0, 0.26, 0.74, 0.76, 5.0],
        8,
        &Device::Cpu,
    )
    .unwrap();
    let y = fake_quant::fake_quantize(x.as_tensor(), 4, 0.1, 8).unwrap();
    let v = y.to_vec1::<f32>().unwrap();
    let want = [-0.8, -0.8, -0.4, 0.0, 0.3, 0.7, 0.7, 0.7];
    for (a, b) in v.iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{v:?}");
    }
    let c = Tensor::from_vec(
        vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
        8,
        &Device::Cpu,
    )
    .unwrap();
    let g = (y * c)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
        .get(&x)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    // −0.84 rounds to level −8 + 8 = 0 (inside); 0.74 rounds to 7 + 8 = 15 (inside); 0.76 to
    // 16 and −3, 5 far outside.
    assert_eq!(g, vec![0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0]);
}

#[test]
fn fake_quantized_weights_equal_what_the_recipe_stores() {
    let model = lenet300();
    let recipe = Recipe::from_toml_str(
        "[default]\nprune = \"l1\"\nsparsity = 0.5\nbits = 3\ngranularity = \"channel\"\n",
    )
    .unwrap();
    let plan = compress::apply(&model, &recipe, None).unwrap();
    for q in &plan.layers {
        let p = model.layers[q.layer].params().unwrap();
        let mask: Vec<f32> = q.kept.iter().map(|k| f32::from(u8::from(*k))).collect();
        let mask = Tensor::from_vec(mask, p.weight.shape(), &Device::Cpu).unwrap();
        let w = p.weight.mul(&mask).unwrap();
        let fq = fake_quant::fake_quantize_weights(
            &w,
            q.rows,
            q.cols,
            3,
            true,
            compress::Granularity::Channel,
        )
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
        assert_eq!(fq, q.dequantized(), "layer {}", q.layer);
    }
}

#[test]
fn shared_values_train_with_their_assignments_fixed() {
    let model = lenet300();
    let recipe = Recipe::from_toml_str(
        "[default]\nprune = \"l1\"\nsparsity = 0.9\nbits = 4\nscheme = \"kmeans\"\n",
    )
    .unwrap();
    let train = slice(mnist(Split::Train), 0, 2000);
    // One epoch, all of it on the shared values: clustering happens on the input weights
    // under the one-shot masks, exactly as the recipe alone clusters them.
    let mut settings = FinetuneSettings::new(config(1, 50));
    settings.shared_epochs = Some(1);
    settings.shared_lr = Some(1e-3);
    settings.measure_untuned = false;
    let r = squeeze::train::finetune(
        &model,
        &recipe,
        FinetuneSets {
            train: &train,
            validation: None,
            test: None,
        },
        &settings,
        None,
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    assert!(r.report.qat);
    assert_eq!(r.report.shared_epochs, 1);
    for (tuned, untuned) in r.plan.layers.iter().zip(&r.untuned.layers) {
        let (
            WeightValues::Codebook {
                codes: a,
                codebook: ca,
                ..
            },
            WeightValues::Codebook {
                codes: b,
                codebook: cb,
                ..
            },
        ) = (&tuned.values, &untuned.values)
        else {
            panic!("not codebooks")
        };
        assert_eq!(tuned.kept, untuned.kept, "layer {}", tuned.layer);
        assert_eq!(a, b, "layer {}: assignments changed", tuned.layer);
        assert_eq!(ca.len(), cb.len());
        assert_eq!(
            ca[0], 0.0,
            "the pruned weights' shared value stays exactly zero"
        );
        let moved = ca.iter().zip(cb).filter(|(x, y)| x != y).count();
        assert!(
            moved + 1 >= ca.len(),
            "layer {}: {ca:?} vs {cb:?}",
            tuned.layer
        );
    }
}

#[test]
fn held_masks_and_codebooks_are_kept_as_given() {
    let model = lenet300();
    let recipe = Recipe::from_toml_str(
        "[default]\nprune = \"l1\"\nsparsity = 0.5\nbits = 2\nscheme = \"kmeans\"\n",
    )
    .unwrap();
    let fc3 = model.layer_index("fc3").unwrap();
    let n = 1000;
    // Keep every other weight, two shared values besides zero, assigned by position.
    let kept: Vec<bool> = (0..n).map(|i| i % 2 == 0).collect();
    let codes: Vec<u8> = (0..n)
        .map(|i| {
            if i % 2 == 1 {
                0
            } else {
                1 + (i % 4 == 0) as u8
            }
        })
        .collect();
    let held = Held {
        shrunk: false,
        masks: [(fc3, kept.clone())].into(),
        codebooks: [(
            fc3,
            HeldCodebook {
                codes: codes.clone(),
                codebook: vec![0.0, -0.25, 0.5],
            },
        )]
        .into(),
    };
    let plan = compress::apply_held(&model, &recipe, None, &held).unwrap();
    let q = plan.layers.iter().find(|q| q.layer == fc3).unwrap();
    assert_eq!(q.kept, kept);
    let WeightValues::Codebook {
        codes: c, codebook, ..
    } = &q.values
    else {
        panic!("not a codebook")
    };
    assert_eq!((c, codebook), (&codes, &vec![0.0, -0.25, 0.5]));

    // A held decision that does not fit is an error naming the layer.
    let mut bad = held.clone();
    bad.codebooks.get_mut(&fc3).unwrap().codebook = vec![0.0; 5];
    let e = compress::apply_held(&model, &recipe, None, &bad).unwrap_err();
    assert!(e.to_string().contains("fc3"), "{e}");
    let mut bad = held;
    bad.masks.insert(fc3, vec![true; 3]);
    let e = compress::apply_held(&model, &recipe, None, &bad).unwrap_err();
    assert!(e.to_string().contains("3 flags for 1000 weights"), "{e}");
}

#[test]
fn a_finetune_on_a_worker_thread_reports_progress_and_stops_when_cancelled() {
    let cancel = std::sync::Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    // The worker waits after each step until the test has seen it, so the flag is set at a
    // known point.
    let (ack_tx, ack_rx) = std::sync::mpsc::channel::<()>();
    let flag = cancel.clone();
    let worker = std::thread::spawn(move || {
        let model = lenet300();
        let recipe = Recipe::from_toml_str("[default]\nprune = \"l1\"\nsparsity = 0.5\n").unwrap();
        let train = slice(mnist(Split::Train), 0, 2000);
        let mut settings = FinetuneSettings::new(config(3, 50));
        settings.measure_untuned = false;
        squeeze::train::finetune(
            &model,
            &recipe,
            FinetuneSets {
                train: &train,
                validation: None,
                test: None,
            },
            &settings,
            None,
            &flag,
            &mut |e| {
                let _ = tx.send(e.clone());
                if let FinetuneEvent::Step { .. } = e {
                    let _ = ack_rx.recv();
                }
            },
        )
    });
    // The first step's event, then Esc.
    loop {
        let e = rx.recv().unwrap();
        if let FinetuneEvent::Step { .. } = e {
            cancel.store(true, Ordering::Relaxed);
            drop(ack_tx);
            break;
        }
    }
    let r = worker.join().unwrap();
    assert!(matches!(r, Err(FinetuneError::Cancelled)), "{:?}", r.err());
    let more = rx
        .try_iter()
        .filter(|e| matches!(e, FinetuneEvent::Step { .. }))
        .count();
    assert_eq!(more, 0, "steps ran after the flag was set");
}

/// A finetune command of `model` on a slice of the bundled MNIST; options in `extra` replace
/// or add to the quick defaults.
fn finetune_model(model: &Path, out: &Path, extra: &[&str]) -> assert_cmd::Command {
    let mut cmd = squeeze();
    cmd.current_dir(root())
        .arg("finetune")
        .arg("-m")
        .arg(model)
        .args(["-d", "assets/data/mnist", "--quiet"])
        .arg("--out")
        .arg(out);
    for (flag, value) in [
        ("--limit", "1200"),
        ("--val-split", "200"),
        ("--batch", "100"),
    ] {
        if !extra.contains(&flag) {
            cmd.args([flag, value]);
        }
    }
    cmd.args(extra);
    cmd
}

/// A finetune command of the bundled LeNet-300-100.
fn finetune_cmd(out: &Path, extra: &[&str]) -> assert_cmd::Command {
    finetune_model(
        Path::new("assets/models/lenet-300-100.safetensors"),
        out,
        extra,
    )
}

fn metadata(path: &Path) -> std::collections::HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap_or_default()
}

#[test]
fn the_same_seed_gives_the_same_bytes_and_the_file_runs() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("r.toml");
    std::fs::write(
        &recipe,
        "[default]\nprune = \"l1\"\nsparsity = 0.8\nbits = 4\nscheme = \"kmeans\"\n",
    )
    .unwrap();
    let run = |name: &str, seed: &str| {
        let out = dir.path().join(name);
        finetune_cmd(&out, &["--epochs", "2", "--seed", seed, "--recipe"])
            .arg(&recipe)
            .assert()
            .success()
            .stdout(predicate::str::contains("fine-tuned"));
        out
    };
    let (a, b, c) = (
        run("a.safetensors", "1"),
        run("b.safetensors", "1"),
        run("c.safetensors", "2"),
    );
    let (ba, bb, bc) = (
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        std::fs::read(&c).unwrap(),
    );
    assert!(ba == bb, "same seed, different files");
    assert!(ba != bc, "different seeds, same file");

    let meta = metadata(&a);
    assert!(meta["squeeze.recipe"].contains("kmeans"));
    let ft: serde_json::Value = serde_json::from_str(&meta["squeeze.finetune"]).unwrap();
    assert_eq!(ft["qat"], true);
    assert_eq!(ft["shared_epochs"], 1);
    assert_eq!(ft["model"]["file"], "lenet-300-100.safetensors");
    assert_eq!(ft["model"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(ft["data"][0]["file"], "train-images-idx3-ubyte.gz");
    assert_eq!(ft["data"][1]["file"], "train-labels-idx1-ubyte.gz");
    let meta_text = serde_json::to_string(&meta).unwrap();
    assert!(!meta_text.contains("/tmp/") && !meta_text.contains(env!("CARGO_MANIFEST_DIR")));

    // The file is a packed model every command runs as it is, at the figure training reported.
    let assert = squeeze()
        .current_dir(root())
        .args([
            "eval",
            "-d",
            "assets/data/mnist",
            "--no-timing",
            "--format",
            "json",
            "-m",
        ])
        .arg(&a)
        .assert()
        .success();
    let eval: serde_json::Value = serde_json::from_slice(&assert.get_output().stdout).unwrap();
    assert_eq!(eval["accuracy"], ft["test_accuracy"]);
    assert!(
        eval["layers"][0]["format"]
            .as_str()
            .unwrap()
            .contains("codebook4")
    );
    // `info` describes it as stored: its layers' bytes are the packed ones.
    let assert = squeeze()
        .args(["info", "--format", "json", "-m"])
        .arg(&a)
        .assert()
        .success();
    let info: serde_json::Value = serde_json::from_slice(&assert.get_output().stdout).unwrap();
    assert_eq!(info["bytes"], eval["size_bytes"]);
}

#[test]
fn bad_requests_are_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let fails = |mut cmd: assert_cmd::Command, out: &Path, needle: &str| {
        cmd.assert().failure().stderr(
            predicate::str::contains(needle).and(predicate::str::contains("panicked").not()),
        );
        assert!(!out.exists(), "{} was written", out.display());
    };
    let out = dir.path().join("never.safetensors");
    let nowhere = dir.path().join("missing/x.safetensors");
    fails(
        finetune_cmd(&nowhere, &["--sparsity", "0.5"]),
        &nowhere,
        "does not exist",
    );
    fails(finetune_cmd(&out, &[]), &out, "give a recipe");
    fails(
        finetune_cmd(&out, &["--sparsity", "0.5", "--val-split", "1200"]),
        &out,
        "--val-split 1200 leaves no training samples",
    );
    fails(
        finetune_cmd(
            &out,
            &[
                "--sparsity",
                "0.5",
                "--schedule",
                "iterative",
                "--epochs",
                "2",
            ],
        ),
        &out,
        "3 rounds need at least 3 epochs",
    );
    fails(
        finetune_cmd(&out, &["--sparsity", "0.5", "--lr", "0"]),
        &out,
        "--lr must be a positive number",
    );
    fails(
        finetune_cmd(&out, &["--sparsity", "0.5", "--distill", "--alpha", "2"]),
        &out,
        "--alpha must be in [0, 1]",
    );
    // The output may not overwrite an input.
    let model = dir.path().join("m.safetensors");
    std::fs::copy(
        root().join("assets/models/lenet-300-100.safetensors"),
        &model,
    )
    .unwrap();
    let before = std::fs::read(&model).unwrap();
    finetune_model(&model, &model, &["--sparsity", "0.5"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("is the same file as --model"));
    assert_eq!(std::fs::read(&model).unwrap(), before);
}
