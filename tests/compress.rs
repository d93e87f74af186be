//! Compression: recipes, pruning, quantization, activation calibration and entropy sizes,
//! checked on small models built here (property tests keep case counts modest).

// clippy.toml lets #[test] functions unwrap; this file's helpers do too.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};

use candle_core::{Device, Tensor};
use proptest::prelude::*;
use squeeze::compress::prune::{
    global_masks, l1_mask, nm_mask, prune_count, random_mask, shrink_structured,
};
use squeeze::compress::quant::{dequantize, kmeans, lloyd_1d, quantize_uniform};
use squeeze::compress::recipe::{Norm, Pruning, Rank};
use squeeze::compress::{
    Bits, FloatStorage, Granularity, Plan, QuantizedLayer, Recipe, RecipeError, WeightValues,
    apply, entropy_bytes, entropy_size, huffman,
};
use squeeze::model::{Model, Op, load};

mod common;
use common::{Named as Tensors, assert_close_abs, forward, linear_toml, written_model};

// ---------------------------------------------------------------- helpers

struct Lcg(u64);

impl Lcg {
    fn next_f32(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next_f32()).collect()
    }
}

fn load_model(arch: &str, tensors: Tensors) -> Model {
    written_model(tempfile::tempdir().unwrap(), arch, &tensors)
}

fn param(rng: &mut Lcg, name: &str, shape: &[usize]) -> Tensors {
    let n: usize = shape.iter().product();
    vec![
        (format!("{name}.weight"), shape.to_vec(), rng.vec(n)),
        (format!("{name}.bias"), vec![shape[0]], rng.vec(shape[0])),
    ]
}

/// 12 → fc1 10 → relu → fc2 8 → relu → fc3 4.
fn mlp(seed: u64) -> Model {
    let mut rng = Lcg(seed);
    let arch = format!(
        "[input]\nshape = [12]\n{}[[layer]]\nop = \"relu\"\n{}[[layer]]\nop = \"relu\"\n{}",
        linear_toml("fc1"),
        linear_toml("fc2"),
        linear_toml("fc3")
    );
    let mut t = param(&mut rng, "fc1", &[10, 12]);
    t.extend(param(&mut rng, "fc2", &[8, 10]));
    t.extend(param(&mut rng, "fc3", &[4, 8]));
    load_model(&arch, t)
}

/// [2, 8, 8] → conv1 (4, pad 1) → relu → maxpool 2 → conv2 (6) → relu → flatten (24) → fc1 5
/// → relu → fc2 3.
fn cnn(seed: u64) -> Model {
    let mut rng = Lcg(seed);
    let arch = format!(
        r#"[input]
shape = [2, 8, 8]
[[layer]]
op = "conv2d"
name = "conv1"
weight = "conv1.weight"
bias = "conv1.bias"
padding = 1
[[layer]]
op = "relu"
[[layer]]
op = "maxpool2d"
kernel = 2
[[layer]]
op = "conv2d"
name = "conv2"
weight = "conv2.weight"
bias = "conv2.bias"
out_channels = 6
[[layer]]
op = "relu"
[[layer]]
op = "flatten"
{}[[layer]]
op = "relu"
{}"#,
        linear_toml("fc1"),
        linear_toml("fc2")
    );
    let mut t = param(&mut rng, "conv1", &[4, 2, 3, 3]);
    t.extend(param(&mut rng, "conv2", &[6, 4, 3, 3]));
    t.extend(param(&mut rng, "fc1", &[5, 24]));
    t.extend(param(&mut rng, "fc2", &[3, 5]));
    load_model(&arch, t)
}

/// 6 → fc1 8 → relu → batchnorm (unfolded) → sigmoid → fc2 3: a removed neuron still sends a
/// constant to fc2.
fn mlp_bn_sigmoid(seed: u64) -> Model {
    let mut rng = Lcg(seed);
    let arch = format!(
        r#"[input]
shape = [6]
{}[[layer]]
op = "relu"
[[layer]]
op = "batchnorm"
name = "bn"
weight = "bn.weight"
bias = "bn.bias"
running_mean = "bn.running_mean"
running_var = "bn.running_var"
[[layer]]
op = "sigmoid"
{}"#,
        linear_toml("fc1"),
        linear_toml("fc2")
    );
    let mut t = param(&mut rng, "fc1", &[8, 6]);
    t.push(("bn.weight".into(), vec![8], rng.vec(8)));
    t.push(("bn.bias".into(), vec![8], rng.vec(8)));
    t.push(("bn.running_mean".into(), vec![8], rng.vec(8)));
    let var: Vec<f32> = rng.vec(8).iter().map(|v| v.abs() + 0.5).collect();
    t.push(("bn.running_var".into(), vec![8], var));
    t.extend(param(&mut rng, "fc2", &[3, 8]));
    load_model(&arch, t)
}

/// 6 → fc0 8 → relu r0 → fc1 8 → add (from r0) → fc2 3.
fn residual(seed: u64) -> Model {
    let mut rng = Lcg(seed);
    let arch = format!(
        "[input]\nshape = [6]\n{}[[layer]]\nop = \"relu\"\nname = \"r0\"\n{}[[layer]]\nop = \"add\"\nname = \"skip\"\nfrom = \"r0\"\n{}",
        linear_toml("fc0"),
        linear_toml("fc1"),
        linear_toml("fc2")
    );
    let mut t = param(&mut rng, "fc0", &[8, 6]);
    t.extend(param(&mut rng, "fc1", &[8, 8]));
    t.extend(param(&mut rng, "fc2", &[3, 8]));
    load_model(&arch, t)
}

fn weights(model: &Model, name: &str) -> Vec<f32> {
    let i = model.layer_index(name).unwrap();
    let p = model.layers[i].params().unwrap();
    p.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// `model` with the rows (and bias entries) of `layer` outside `keep` set to zero.
fn mask_rows(model: &mut Model, layer: usize, keep: &[usize]) {
    let (Op::Linear(p) | Op::Conv2d(p, _)) = &mut model.layers[layer].op else {
        panic!("not linear/conv");
    };
    let dims = p.weight.dims().to_vec();
    let cols: usize = dims[1..].iter().product();
    let mut w = p.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut b = p.bias.as_ref().unwrap().to_vec1::<f32>().unwrap();
    for r in 0..dims[0] {
        if !keep.contains(&r) {
            w[r * cols..(r + 1) * cols]
                .iter_mut()
                .for_each(|v| *v = 0.0);
            b[r] = 0.0;
        }
    }
    p.bias = Some(Tensor::from_vec(b, dims[0], &Device::Cpu).unwrap());
    p.weight = Tensor::from_vec(w, dims, &Device::Cpu).unwrap();
}

fn recipe(text: &str) -> Recipe {
    Recipe::from_toml_str(text).unwrap()
}

fn err(model: &Model, text: &str) -> String {
    let r = Recipe::from_toml_str(text);
    match r {
        Err(e) => e.to_string(),
        Ok(r) => r.validate(model).unwrap_err().to_string(),
    }
}

// ---------------------------------------------------------------- recipes

#[test]
fn the_issue_example_parses_and_round_trips() {
    let text = r#"
[default]
prune = "none"
sparsity = 0.0
bits = 32
scheme = "symmetric"
granularity = "channel"
group_size = 64

[global]
sparsity = 0.2
layers = ["fc1", "fc2", "fc3"]

[activations]
bits = 8
calibration_samples = 512
observer = "minmax"

[layer.fc1]
prune = "l1"
sparsity = 0.92
bits = 6
scheme = "kmeans"
"#;
    let r = recipe(text);
    assert_eq!(r.layers["fc1"].bits, Some(Bits::Int(6)));
    assert_eq!(Recipe::from_toml_str(&r.to_toml()).unwrap(), r);
    assert_eq!(Recipe::from_json_str(&r.to_json()).unwrap(), r);
    // fc1 is both in [global] and prune = "l1": refused, naming both.
    let e = err(&mlp(1), text);
    assert!(
        e.contains("[layer.fc1] prune") && e.contains("[global]"),
        "{e}"
    );

    let bf = recipe("[default]\nbits = \"bf16\"\n[layer.fc2]\nbits = 16\n");
    assert_eq!(bf.default.bits, Some(Bits::Bf16));
    let resolved = bf.validate(&mlp(1)).unwrap();
    assert_eq!(
        resolved.layers[0].weights,
        squeeze::compress::WeightFormat::Float(FloatStorage::Bf16)
    );
    assert_eq!(
        resolved.layers[1].weights,
        squeeze::compress::WeightFormat::Float(FloatStorage::F16)
    );
    assert!(bf.to_toml().contains("bits = \"bf16\""));
}

#[test]
fn recipe_errors_name_the_problem() {
    let m = mlp(2);
    let e = err(&m, "[layer.fc9]\nbits = 8\n");
    assert!(
        e.contains("fc9") && e.contains("valid layers: fc1, fc2, fc3"),
        "{e}"
    );

    let e = err(&m, "[default]\nprune = \"l1\"\nsparsity = 1.0\n");
    assert!(
        e.contains("[default] sparsity") && e.contains("outside [0, 1)"),
        "{e}"
    );
    let e = err(&m, "[layer.fc2]\nprune = \"l1\"\nsparsity = -0.1\n");
    assert!(e.contains("[layer.fc2] sparsity"), "{e}");

    let e = err(&m, "[layer.fc1]\nbits = 12\n");
    assert!(
        e.contains("[layer.fc1] bits") && e.contains("12 is not allowed"),
        "{e}"
    );
    let e = err(&m, "[default]\nbits = \"int4\"\n");
    assert!(e.contains("int4"), "{e}");

    let e = err(
        &m,
        "[default]\nbits = 4\ngranularity = \"group\"\ngroup_size = 5\n",
    );
    assert!(
        e.contains("group_size = 5") && e.contains("fc1") && e.contains("12 inputs"),
        "{e}"
    );

    let e = err(&m, "[layer.fc1]\nprune = \"nm\"\nn = 4\nm = 4\n");
    assert!(e.contains("N < M") && e.contains("4:4"), "{e}");
    let e = err(&m, "[layer.fc3]\nprune = \"nm\"\nn = 2\nm = 16\n");
    assert!(e.contains("8 inputs, shorter than M = 16"), "{e}");

    let e = err(
        &m,
        "[global]\nsparsity = 0.5\nlayers = [\"fc1\", \"nope\"]\n",
    );
    assert!(
        e.contains("[global] layers") && e.contains("nope") && e.contains("fc1, fc2, fc3"),
        "{e}"
    );

    let e = err(&m, "[default]\nbits = 1\n");
    assert!(e.contains("1-bit symmetric") && e.contains("kmeans"), "{e}");

    let e = err(&m, "[default]\nprunning = \"l1\"\n");
    assert!(e.contains("prunning"), "{e}");
    let e = err(&m, "[layer.fc1]\nsparsity = 0.5\n");
    assert!(e.contains("no effect with prune = \"none\""), "{e}");

    let e = err(&m, "[activations]\nbits = 1\n");
    assert!(e.contains("[activations] bits"), "{e}");

    // The file path is part of every message about a recipe file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[layer.fc7]\nbits = 8\n").unwrap();
    let r = Recipe::from_path(&path).unwrap();
    let e = r.validate(&m).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}: ", path.display())), "{e}");
    std::fs::write(&path, "[default]\nbits = [\n").unwrap();
    let e = Recipe::from_path(&path).unwrap_err().to_string();
    assert!(e.contains("bad.toml") && e.contains("TOML"), "{e}");
    let json = dir.path().join("r.json");
    std::fs::write(&json, r#"{"default": {"bits": 8, "scheme": "asymmetric"}}"#).unwrap();
    assert_eq!(
        Recipe::from_path(&json).unwrap().default.bits,
        Some(Bits::Int(8))
    );
}

#[test]
fn structured_refusals() {
    let e = err(
        &mlp(3),
        "[layer.fc3]\nprune = \"structured\"\nsparsity = 0.5\n",
    );
    assert!(e.contains("fc3") && e.contains("class scores"), "{e}");
    // fc0 (through r0) and fc1 meet in the add "skip": one group, pruned together, so they
    // must ask the same.
    let r = residual(3);
    let e = err(
        &r,
        "[layer.fc1]\nprune = \"structured\"\nsparsity = 0.5\n[layer.fc0]\nprune = \"structured\"\nsparsity = 0.25\n",
    );
    assert!(
        e.contains("\"skip\"")
            && e.contains("fc1 (sparsity 0.5")
            && e.contains("fc0 (sparsity 0.25"),
        "{e}"
    );
    assert!(matches!(
        Recipe::from_toml_str("[layer.fc1]\nprune = \"structured\"\nsparsity = 0.5\n[layer.fc0]\nprune = \"structured\"\nsparsity = 0.25\n")
            .unwrap()
            .validate(&r),
        Err(RecipeError::Structured { .. })
    ));
    // Asked for fc1 alone, fc0 loses the same channels.
    let plan = apply(
        &r,
        &recipe("[layer.fc1]\nprune = \"structured\"\nsparsity = 0.5\n"),
        None,
    )
    .unwrap();
    for name in ["fc0", "fc1"] {
        let i = plan.model.layer_index(name).unwrap();
        assert_eq!(plan.model.layers[i].out_shape, vec![4], "{name}");
    }
}

/// `[default]` structured pruning (what `--prune structured` builds) prunes every layer but the
/// output one, which keeps its classes; the plan applies.
#[test]
fn default_structured_pruning_leaves_the_output_layer_whole() {
    let m = mlp(4);
    let r = recipe("[default]\nprune = \"structured\"\nsparsity = 0.5\n");
    let resolved = r.validate(&m).expect("validates");
    let by_name = |n: &str| {
        resolved
            .layers
            .iter()
            .find(|l| l.name == n)
            .map(|l| l.prune)
            .expect("layer")
    };
    assert!(matches!(by_name("fc1"), Pruning::Structured { .. }));
    assert!(matches!(by_name("fc2"), Pruning::Structured { .. }));
    assert!(matches!(by_name("fc3"), Pruning::None));
    let plan = apply(&m, &r, None).expect("applies");
    assert_eq!(plan.model.num_classes(), 4);
}

#[test]
fn quick_builds_the_same_recipe_as_the_file() {
    let q = Recipe::quick(0.5, Bits::Int(8), true);
    let f = recipe("[default]\nbits = 8\n[global]\nsparsity = 0.5\n");
    assert_eq!(q, f);
    let q = Recipe::quick(0.3, Bits::F32, false);
    assert_eq!(q, recipe("[default]\nprune = \"l1\"\nsparsity = 0.3\n"));
    let resolved = Recipe::quick(0.5, Bits::Int(4), true)
        .validate(&mlp(1))
        .unwrap();
    assert_eq!(resolved.global.unwrap().1.len(), 3);
}

#[test]
fn a_dense_recipe_changes_nothing() {
    for m in [mlp(4), cnn(4)] {
        let plan = apply(&m, &Recipe::default(), None).unwrap();
        assert_eq!(plan.layers.len(), m.compressible().count());
        for ql in &plan.layers {
            assert!(ql.kept.iter().all(|k| *k));
            assert!(matches!(
                ql.values,
                WeightValues::Float {
                    storage: FloatStorage::F32,
                    ..
                }
            ));
            assert_eq!(ql.dequantized(), weights(&m, &m.layers[ql.layer].name));
        }
        let x = Lcg(9).vec(3 * m.input_len());
        assert_eq!(
            forward(&plan.dequantized_model(), &x, 3),
            forward(&m, &x, 3)
        );
        assert_eq!(plan.achieved_sparsity().pruned, 0);
    }
}

// ---------------------------------------------------------------- pruning

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn l1_and_random_sparsity_is_exact(seed in any::<u64>(), s in 0.0f64..0.99, per_layer in any::<bool>()) {
        let m = mlp(seed);
        let method = if per_layer { "l1" } else { "random" };
        let r = recipe(&format!("[default]\nprune = \"{method}\"\nsparsity = {s}\nseed = {}\n", seed % 1000));
        let plan = apply(&m, &r, None).unwrap();
        let sp = plan.achieved_sparsity();
        for (ql, ls) in plan.layers.iter().zip(&sp.layers) {
            prop_assert_eq!(ls.pruned, prune_count(s, ql.kept.len()));
            // l1: every pruned |w| ≤ every kept |w|
            if per_layer {
                let w = weights(&m, &ls.name);
                let max_pruned = w.iter().zip(&ql.kept).filter(|(_, k)| !**k).map(|(v, _)| v.abs()).fold(0.0, f32::max);
                let min_kept = w.iter().zip(&ql.kept).filter(|(_, k)| **k).map(|(v, _)| v.abs()).fold(f32::INFINITY, f32::min);
                prop_assert!(max_pruned <= min_kept);
            }
            // pruned weights are exactly zero
            for (v, k) in ql.dequantized().iter().zip(&ql.kept) {
                if !k { prop_assert_eq!(*v, 0.0); }
            }
        }
    }

    #[test]
    fn global_sparsity_is_exact(seed in any::<u64>(), s in 0.0f64..0.99, two in any::<bool>()) {
        let m = mlp(seed);
        let layers = if two { "layers = [\"fc1\", \"fc3\"]\n" } else { "" };
        let r = recipe(&format!("[global]\nsparsity = {s}\n{layers}"));
        let plan = apply(&m, &r, None).unwrap();
        let sp = plan.achieved_sparsity();
        let members: Vec<_> = sp.layers.iter().filter(|l| !two || l.name != "fc2").collect();
        let total: usize = members.iter().map(|l| l.total).sum();
        let pruned: usize = members.iter().map(|l| l.pruned).sum();
        prop_assert_eq!(pruned, prune_count(s, total));
        if two { prop_assert_eq!(sp.layers[1].pruned, 0); }
        // one ranking: every pruned |w| ≤ every kept |w| across the members
        let mut max_pruned = 0f32;
        let mut min_kept = f32::INFINITY;
        for (ql, ls) in plan.layers.iter().zip(&sp.layers) {
            if two && ls.name == "fc2" { continue; }
            for (v, k) in weights(&m, &ls.name).iter().zip(&ql.kept) {
                if *k { min_kept = min_kept.min(v.abs()) } else { max_pruned = max_pruned.max(v.abs()) }
            }
        }
        prop_assert!(max_pruned <= min_kept);
    }

    #[test]
    fn mask_functions_are_exact(w in prop::collection::vec(-1.0f32..1.0, 1..300), s in 0.0f64..1.0, seed in any::<u64>()) {
        let k = prune_count(s, w.len());
        prop_assert_eq!(l1_mask(&w, s).iter().filter(|k| !**k).count(), k);
        prop_assert_eq!(random_mask(w.len(), s, seed).iter().filter(|k| !**k).count(), k);
        let half = w.len() / 2;
        let g = global_masks(&[&w[..half], &w[half..]], s);
        prop_assert_eq!(g.iter().flatten().filter(|k| !**k).count(), k);
    }

    #[test]
    fn nm_holds_in_every_group(seed in any::<u64>(), which in 0usize..4, rows in 1usize..6, groups in 1usize..6) {
        let (n, m) = [(2, 4), (1, 4), (4, 8), (1, 2)][which];
        let cols = groups * m;
        let w = Lcg(seed).vec(rows * cols);
        let mask = nm_mask(&w, cols, n, m);
        for g in mask.chunks(m) {
            prop_assert_eq!(g.iter().filter(|k| **k).count(), n);
        }
        // kept ones are the largest of their group
        for (gw, gm) in w.chunks(m).zip(mask.chunks(m)) {
            let min_kept = gw.iter().zip(gm).filter(|(_, k)| **k).map(|(v, _)| v.abs()).fold(f32::INFINITY, f32::min);
            let max_pruned = gw.iter().zip(gm).filter(|(_, k)| !**k).map(|(v, _)| v.abs()).fold(0.0, f32::max);
            prop_assert!(max_pruned <= min_kept);
        }
    }

    #[test]
    fn nm_on_conv_rows_through_apply(seed in any::<u64>()) {
        let m = cnn(seed);
        // conv2 rows are 4×3×3 = 36 inputs: nine 2:4 groups.
        let plan = apply(&m, &recipe("[layer.conv2]\nprune = \"nm\"\n"), None).unwrap();
        let ql = &plan.layers[1];
        prop_assert_eq!(ql.cols, 36);
        for g in ql.kept.chunks(4) {
            prop_assert_eq!(g.iter().filter(|k| **k).count(), 2);
        }
    }

    #[test]
    fn structured_shrink_matches_the_masked_model(seed in any::<u64>(), s in 0.0f64..0.9, pick in 0usize..5) {
        let (model, layers): (Model, Vec<&str>) = match pick {
            0 => (mlp(seed), vec!["fc1"]),
            1 => (mlp(seed), vec!["fc1", "fc2"]),
            2 => (cnn(seed), vec!["conv2"]),
            3 => (cnn(seed), vec!["conv1", "conv2", "fc1"]),
            _ => (mlp_bn_sigmoid(seed), vec!["fc1"]),
        };
        let spec: Vec<(usize, f64, Norm)> = layers
            .iter()
            .enumerate()
            .map(|(k, n)| (model.layer_index(n).unwrap(), s, if k % 2 == 0 { Norm::L1 } else { Norm::L2 }))
            .collect();
        let (shrunk, kept) = shrink_structured(&model, &spec, Rank::default()).unwrap();
        let mut masked = model.clone();
        for (layer, keep) in &kept {
            mask_rows(&mut masked, *layer, keep);
            let out = model.layers[*layer].params().unwrap().weight.dims()[0];
            let expect = out - prune_count(s, out).min(out - 1);
            prop_assert_eq!(keep.len(), expect);
            prop_assert_eq!(shrunk.layers[*layer].out_shape[0], expect);
            prop_assert_eq!(shrunk.layers[*layer].params().unwrap().weight.dims()[0], expect);
        }
        // shapes flow
        for w in shrunk.layers.windows(2) {
            prop_assert_eq!(&w[0].out_shape, &w[1].in_shape);
        }
        let x = Lcg(seed ^ 7).vec(4 * model.input_len());
        assert_close_abs(&forward(&shrunk, &x, 4), &forward(&masked, &x, 4), 1e-4, "shrunk");

        // apply does the same and reports the removed weights against the original model.
        let mut text = String::new();
        for (k, n) in layers.iter().enumerate() {
            let norm = if k % 2 == 0 { "l1" } else { "l2" };
            text.push_str(&format!("[layer.{n}]\nprune = \"structured\"\nsparsity = {s}\nnorm = \"{norm}\"\n"));
        }
        let plan = apply(&model, &recipe(&text), None).unwrap();
        assert_close_abs(&forward(&plan.dequantized_model(), &x, 4), &forward(&masked, &x, 4), 1e-4, "applied");
        let orig = plan.sparsity_against(&model);
        let total: usize = model.compressible().map(|(_, l)| l.params().unwrap().weight.elem_count()).sum();
        prop_assert_eq!(orig.total, total);
        let now: usize = plan.layers.iter().map(|l| l.kept.len()).sum();
        prop_assert_eq!(orig.pruned, total - now);
        prop_assert!(plan.model.layers.iter().zip(&model.layers).all(|(a, b)| a.stored_bytes <= b.stored_bytes));
    }
}

#[test]
fn structured_shrink_writes_and_reloads() {
    let m = cnn(11);
    let plan = apply(
        &m,
        &recipe("[layer.conv2]\nprune = \"structured\"\nsparsity = 0.5\n"),
        None,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.safetensors");
    plan.dequantized_model().save(&path, &[]).unwrap();
    let back = load(&path).unwrap().model;
    let i = back.layer_index("conv2").unwrap();
    assert_eq!(back.layers[i].out_shape, vec![3, 2, 2]);
    let x = Lcg(5).vec(2 * m.input_len());
    assert_eq!(forward(&back, &x, 2), forward(&plan.model, &x, 2));
}

// ---------------------------------------------------------------- quantization

fn groups_of(granularity: Granularity, rows: usize, cols: usize) -> Vec<usize> {
    (0..rows * cols)
        .map(|i| granularity.group_of(i / cols, i % cols, cols))
        .collect()
}

fn granularity_strategy() -> impl Strategy<Value = (usize, usize, Granularity)> {
    (1usize..6, 1usize..5, 1usize..5, 0usize..3).prop_map(|(rows, gs, ng, kind)| {
        let cols = gs * ng;
        let g = match kind {
            0 => Granularity::Tensor,
            1 => Granularity::Channel,
            _ => Granularity::Group { size: gs },
        };
        (rows, cols, g)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn uniform_error_is_at_most_half_a_step(
        (rows, cols, g) in granularity_strategy(),
        bits in 1u8..=8,
        symmetric in any::<bool>(),
        seed in any::<u64>(),
        s in 0.0f64..0.8,
        scale in 0.001f32..100.0,
    ) {
        let symmetric = symmetric && bits > 1;
        let mut w: Vec<f32> = Lcg(seed).vec(rows * cols).iter().map(|v| v * scale).collect();
        let kept = random_mask(w.len(), s, seed);
        for (v, k) in w.iter_mut().zip(&kept) { if !k { *v = 0.0; } }
        let q = quantize_uniform(&w, &kept, rows, cols, bits, symmetric, g);
        let d = dequantize(&q, rows, cols);
        let WeightValues::Uniform { codes, scales, zero_points, .. } = &q else { panic!() };
        let group = groups_of(g, rows, cols);
        for i in 0..w.len() {
            let st = scales[group[i]];
            prop_assert!(
                (w[i] - d[i]).abs() <= st / 2.0 + 1e-6 * scale,
                "w {} deq {} scale {}", w[i], d[i], st
            );
            prop_assert!((codes[i] as u32) < (1u32 << bits));
            if !kept[i] { prop_assert_eq!(d[i], 0.0); }
        }
        if symmetric {
            prop_assert!(zero_points.iter().all(|z| *z == 1 << (bits - 1)));
        }
        // ≤ 2^b distinct values per group
        let mut per_group: HashMap<usize, BTreeSet<u32>> = HashMap::new();
        for i in 0..w.len() { per_group.entry(group[i]).or_default().insert(d[i].to_bits()); }
        for set in per_group.values() { prop_assert!(set.len() <= 1 << bits); }
    }

    #[test]
    fn kmeans_codebook_is_small_converges_and_keeps_zeros(
        seed in any::<u64>(),
        n in 1usize..400,
        bits in 1u8..=6,
        s in 0.0f64..0.9,
    ) {
        let mut w = Lcg(seed).vec(n);
        let kept = random_mask(n, s, seed);
        for (v, k) in w.iter_mut().zip(&kept) { if !k { *v = 0.0; } }
        let km = kmeans(&w, &kept, bits);
        prop_assert!(km.converged);
        let WeightValues::Codebook { codebook, codes, .. } = &km.values else { panic!() };
        prop_assert!(codebook.len() <= 1 << bits);
        let d = dequantize(&km.values, 1, n);
        for i in 0..n {
            prop_assert!((codes[i] as usize) < codebook.len());
            if !kept[i] { prop_assert_eq!(d[i], 0.0); }
        }
        // Lloyd's fixed point: every kept weight is at its nearest shared value (among the
        // entries kept weights use), and every such entry is the mean of its weights.
        let first = usize::from(kept.iter().any(|k| !k));
        for i in (0..n).filter(|i| kept[*i]) {
            let best = codebook[first..].iter().map(|c| (c - w[i]).abs()).fold(f32::INFINITY, f32::min);
            prop_assert!((d[i] - w[i]).abs() <= best + 1e-6);
        }
        for (j, c) in codebook.iter().enumerate().skip(first) {
            let members: Vec<f32> = (0..n).filter(|i| kept[*i] && codes[*i] as usize == j).map(|i| w[i]).collect();
            prop_assert!(!members.is_empty());
            let mean = members.iter().map(|v| *v as f64).sum::<f64>() / members.len() as f64;
            prop_assert!((mean as f32 - c).abs() < 1e-5);
        }
    }

    #[test]
    fn pruned_weights_stay_zero_under_every_scheme(seed in any::<u64>(), s in 0.0f64..0.95, which in 0usize..7) {
        let m = cnn(seed);
        let weights_part = [
            "bits = 32", "bits = 16", "bits = \"bf16\"",
            "bits = 4\nscheme = \"symmetric\"",
            "bits = 3\nscheme = \"asymmetric\"\ngranularity = \"tensor\"",
            "bits = 2\nscheme = \"kmeans\"",
            "bits = 1\nscheme = \"asymmetric\"",
        ][which];
        let r = recipe(&format!("[default]\nprune = \"l1\"\nsparsity = {s}\n{weights_part}\n"));
        let plan = apply(&m, &r, None).unwrap();
        for ql in &plan.layers {
            let d = ql.dequantized();
            let raw = dequantize(&ql.values, ql.rows, ql.cols);
            for i in 0..d.len() {
                if !ql.kept[i] {
                    prop_assert_eq!(d[i], 0.0);
                    prop_assert_eq!(raw[i], 0.0);
                }
            }
        }
    }
}

#[test]
fn lloyd_linear_init_on_two_clusters() {
    let v = [0.0f32, 0.1, 0.2, 10.0, 10.1, 10.2];
    let (c, a, _, converged) = lloyd_1d(&v, 2);
    assert!(converged);
    assert_eq!(a, vec![0, 0, 0, 1, 1, 1]);
    assert!((c[0] - 0.1).abs() < 1e-6 && (c[1] - 10.1).abs() < 1e-5);
}

#[test]
fn float_storage_rounds_with_half() {
    let m = mlp(6);
    let plan = apply(&m, &recipe("[default]\nbits = 16\n"), None).unwrap();
    let w = weights(&m, "fc1");
    let d = plan.layers[0].dequantized();
    for (a, b) in w.iter().zip(&d) {
        assert_eq!(*b, half::f16::from_f32(*a).to_f32());
    }
}

// ---------------------------------------------------------------- activations

#[test]
fn activation_calibration_covers_the_observed_range() {
    let m = mlp(8);
    let n = 40;
    let x = Lcg(3).vec(n * m.input_len());
    let r = recipe("[default]\nbits = 8\n[activations]\nbits = 8\ncalibration_samples = 32\n");
    assert!(matches!(
        apply(&m, &r, None),
        Err(squeeze::compress::CompressError::Calibration(_))
    ));
    assert!(apply(&m, &r, Some((&x[..5], 1))).is_err());
    let plan = apply(&m, &r, Some((&x, n))).unwrap();
    let first = plan.layers[0].activation.unwrap();
    let used = &x[..32 * m.input_len()];
    let lo = used.iter().copied().fold(0.0f32, f32::min);
    let hi = used.iter().copied().fold(0.0f32, f32::max);
    let q_lo = first.scale * (0 - first.zero_point) as f32;
    let q_hi = first.scale * (255 - first.zero_point) as f32;
    assert!(q_lo <= lo + first.scale / 2.0 && q_hi >= hi - first.scale / 2.0);
    assert!((first.scale - (hi - lo) / 255.0).abs() < 1e-6);
    for ql in &plan.layers {
        let a = ql.activation.unwrap();
        assert_eq!(a.bits, 8);
        assert!(a.scale > 0.0 && (0..=255).contains(&a.zero_point));
    }
    // After relu, the inputs of fc2 are ≥ 0: zero point 0.
    assert_eq!(plan.layers[1].activation.unwrap().zero_point, 0);

    let p = recipe("[activations]\nbits = 4\nobserver = \"percentile\"\npercentile = 99.0\n");
    let plan_p = apply(&m, &p, Some((&x, n))).unwrap();
    let a = plan_p.layers[0].activation.unwrap();
    assert_eq!(a.bits, 4);
    assert!(a.scale * 15.0 <= hi - lo + 1e-6);
}

// ---------------------------------------------------------------- entropy coding

#[test]
fn entropy_size_of_a_known_layer() {
    let layer = QuantizedLayer {
        layer: 0,
        rows: 1,
        cols: 8,
        kept: vec![true, false, true, true, false, false, true, true],
        values: WeightValues::Uniform {
            bits: 2,
            codes: vec![1, 2, 1, 2, 2, 2, 1, 3],
            scales: vec![0.5],
            zero_points: vec![2],
            granularity: Granularity::Tensor,
        },
        bias: Some(vec![0.0]),
        activation: None,
    };
    let s = entropy_size(&layer);
    // codes of kept: 1,1,2,1,3 → lengths 1,2,2 → 7 bits; gaps 0,1,0,2,0 → 7 bits.
    assert_eq!(s.values, 1);
    assert_eq!(s.indices, 1);
    // Each table: counts for lengths 1 and 2, then three one-byte symbols.
    assert_eq!(s.tables, 5 + 5);
    assert_eq!(s.scales, 4);
    assert_eq!(s.bias, 4);
    assert_eq!(entropy_bytes(&layer), 20);

    let dense = QuantizedLayer {
        kept: vec![true; 8],
        values: WeightValues::Float {
            data: vec![1.0; 8],
            storage: FloatStorage::F16,
        },
        bias: None,
        ..layer.clone()
    };
    assert_eq!(entropy_bytes(&dense), 16);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn huffman_is_within_a_bit_of_entropy(freqs in prop::collection::vec(0u64..1000, 2..40)) {
        let total: u64 = freqs.iter().sum();
        prop_assume!(freqs.iter().filter(|f| **f > 0).count() >= 2);
        let lengths = huffman::code_lengths(&freqs);
        let bits = huffman::coded_bits(&freqs, &lengths) as f64;
        let h: f64 = freqs.iter().filter(|f| **f > 0).map(|&f| {
            let p = f as f64 / total as f64;
            -(f as f64) * p.log2()
        }).sum();
        prop_assert!(bits >= h - 1e-6 && bits <= h + total as f64 + 1e-6);
        // Kraft equality: a full prefix code
        let kraft: f64 = lengths.iter().filter(|l| **l > 0).map(|l| 0.5f64.powi(*l as i32)).sum();
        prop_assert!((kraft - 1.0).abs() < 1e-9);
        // canonical codes are prefix-free
        let codes = huffman::canonical_codes(&lengths);
        let used: Vec<usize> = (0..freqs.len()).filter(|s| lengths[*s] > 0).collect();
        for &a in &used {
            for &b in &used {
                if a != b && lengths[a] <= lengths[b] {
                    prop_assert_ne!(codes[b] >> (lengths[b] - lengths[a]), codes[a]);
                }
            }
        }
    }
}

#[test]
fn entropy_coding_is_smaller_than_fixed_width_on_a_pruned_plan() {
    let m = mlp(12);
    let plan: Plan = apply(
        &m,
        &recipe("[default]\nprune = \"l1\"\nsparsity = 0.8\nbits = 4\nscheme = \"kmeans\"\n"),
        None,
    )
    .unwrap();
    for ql in &plan.layers {
        let s = entropy_size(ql);
        let kept = ql.kept_count();
        assert!(s.values <= (kept * 4).div_ceil(8));
        assert_eq!(s.bias, ql.rows * 4);
        assert!(s.scales <= 16 * 4);
    }
}

#[test]
fn bundled_lenet_if_present() {
    let path = std::path::Path::new("assets/models/lenet-300-100.safetensors");
    let Ok(loaded) = load(path) else {
        return;
    };
    let m = loaded.model;
    let plan = apply(
        &m,
        &recipe("[default]\nbits = 6\nscheme = \"kmeans\"\n[global]\nsparsity = 0.9\n"),
        None,
    )
    .unwrap();
    let sp = plan.achieved_sparsity();
    assert_eq!(sp.pruned, prune_count(0.9, sp.total));
}
