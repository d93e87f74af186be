//! Models that are graphs, not chains: layers naming their inputs, a ResNet projection
//! shortcut, a squeeze-and-excite gate broadcast by `mul`, `concat` of branches and of the model
//! input, a branch's last reader passing the value on unchanged (a dropout). The reference
//! forward against hand-written loops, the engine against the reference
//! (dense and compressed), files written and read back, every loading problem in one run, and
//! structured pruning following branches, joins and gates.

use rand::{SeedableRng, rngs::StdRng};
use squeeze::compress::{self, Recipe};
use squeeze::engine::{self, CompressedModel};
use squeeze::model::{self, Conv2dGeometry, Model};

mod common;
use common::{Named, assert_close_rel, forward, naive_conv, rand_vec, write_model, written_model};

const GRAPH: &str = r#"
[input]
shape = [2, 6, 6]

[[layer]]
op = "conv2d"
name = "stem"
weight = "stem.weight"
bias = "stem.bias"
padding = 1
[[layer]]
op = "batchnorm"
name = "bn_stem"
weight = "bn.weight"
bias = "bn.bias"
running_mean = "bn.mean"
running_var = "bn.var"
[[layer]]
op = "relu"
name = "relu0"
[[layer]]
op = "conv2d"
name = "c1"
weight = "c1.weight"
bias = "c1.bias"
stride = 2
padding = 1
[[layer]]
op = "relu"
[[layer]]
op = "conv2d"
name = "c2"
weight = "c2.weight"
padding = 1
[[layer]]
op = "conv2d"
name = "down"
input = "bn_stem"
weight = "down.weight"
stride = 2
[[layer]]
op = "add"
name = "res"
inputs = ["c2", "down"]
[[layer]]
op = "relu"
name = "r2"
[[layer]]
op = "global_avgpool"
[[layer]]
op = "linear"
name = "se1"
weight = "se1.weight"
bias = "se1.bias"
[[layer]]
op = "relu"
[[layer]]
op = "linear"
name = "se2"
weight = "se2.weight"
bias = "se2.bias"
[[layer]]
op = "hardsigmoid"
name = "gate"
[[layer]]
op = "mul"
name = "scale"
inputs = ["r2", "gate"]
[[layer]]
op = "dropout"
name = "pass"
input = "r2"
[[layer]]
op = "conv2d"
name = "side"
weight = "side.weight"
bias = "side.bias"
[[layer]]
op = "avgpool2d"
name = "skip"
input = "input"
kernel = 2
[[layer]]
op = "concat"
name = "cat"
inputs = ["scale", "side", "skip"]
[[layer]]
op = "flatten"
[[layer]]
op = "linear"
name = "fc"
weight = "fc.weight"
bias = "fc.bias"
"#;

fn tensors(rng: &mut StdRng) -> Named {
    let mut t = |name: &str, shape: Vec<usize>| {
        let n = shape.iter().product();
        (name.to_string(), shape, rand_vec(rng, n))
    };
    let mut v = vec![
        t("stem.weight", vec![4, 2, 3, 3]),
        t("stem.bias", vec![4]),
        t("bn.weight", vec![4]),
        t("bn.bias", vec![4]),
        t("bn.mean", vec![4]),
        t("bn.var", vec![4]),
        t("c1.weight", vec![6, 4, 3, 3]),
        t("c1.bias", vec![6]),
        t("c2.weight", vec![6, 6, 3, 3]),
        t("down.weight", vec![6, 4, 1, 1]),
        t("se1.weight", vec![3, 6]),
        t("se1.bias", vec![3]),
        t("se2.weight", vec![6, 3]),
        t("se2.bias", vec![6]),
        t("side.weight", vec![2, 6, 1, 1]),
        t("side.bias", vec![2]),
        t("fc.weight", vec![5, 90]),
        t("fc.bias", vec![5]),
    ];
    for (name, _, values) in &mut v {
        if name == "bn.var" {
            values.iter_mut().for_each(|x| *x = x.abs() + 0.5);
        }
    }
    v
}

fn get<'a>(t: &'a Named, name: &str) -> &'a [f32] {
    &t.iter().find(|(n, _, _)| n == name).expect(name).2
}

fn geometry(stride: usize, padding: usize) -> Conv2dGeometry {
    Conv2dGeometry {
        stride: (stride, stride),
        padding: (padding, padding),
        dilation: (1, 1),
        groups: 1,
    }
}

/// One sample through the graph, written out by hand.
fn by_hand(t: &Named, x: &[f32]) -> Vec<f32> {
    let conv = |x: &[f32],
                c: usize,
                hw: usize,
                w: &str,
                o: usize,
                k: usize,
                b: Option<&str>,
                stride,
                pad| {
        let zeros = vec![0.0; o];
        let bias = b.map_or(&zeros[..], |b| get(t, b));
        naive_conv(
            x,
            [1, c, hw, hw],
            get(t, w),
            [o, c, k, k],
            bias,
            geometry(stride, pad),
            &[],
        )
        .y
    };
    let relu = |v: Vec<f32>| v.into_iter().map(|x| x.max(0.0)).collect::<Vec<_>>();
    let linear = |x: &[f32], w: &str, b: &str| {
        let (w, b) = (get(t, w), get(t, b));
        (0..b.len())
            .map(|o| b[o] + (0..x.len()).map(|i| w[o * x.len() + i] * x[i]).sum::<f32>())
            .collect::<Vec<_>>()
    };
    // stem + batchnorm (eval): 2×6×6 → 4×6×6
    let mut stem = conv(x, 2, 6, "stem.weight", 4, 3, Some("stem.bias"), 1, 1);
    let (g, b, m, v) = (
        get(t, "bn.weight"),
        get(t, "bn.bias"),
        get(t, "bn.mean"),
        get(t, "bn.var"),
    );
    for (i, s) in stem.iter_mut().enumerate() {
        let c = i / 36;
        *s = (*s - m[c]) / (v[c] + 1e-5).sqrt() * g[c] + b[c];
    }
    let r0 = relu(stem.clone());
    let c1 = relu(conv(&r0, 4, 6, "c1.weight", 6, 3, Some("c1.bias"), 2, 1));
    let c2 = conv(&c1, 6, 3, "c2.weight", 6, 3, None, 1, 1);
    let down = conv(&stem, 4, 6, "down.weight", 6, 1, None, 2, 0);
    let r2 = relu(c2.iter().zip(&down).map(|(a, b)| a + b).collect());
    let gap: Vec<f32> = r2.chunks(9).map(|c| c.iter().sum::<f32>() / 9.0).collect();
    let se = linear(
        &relu(linear(&gap, "se1.weight", "se1.bias")),
        "se2.weight",
        "se2.bias",
    );
    let gate: Vec<f32> = se.iter().map(|s| (s + 3.0).clamp(0.0, 6.0) / 6.0).collect();
    let scale: Vec<f32> = r2
        .iter()
        .enumerate()
        .map(|(i, v)| v * gate[i / 9])
        .collect();
    let side = conv(&r2, 6, 3, "side.weight", 2, 1, Some("side.bias"), 1, 0);
    let mut skip = vec![0f32; 2 * 9];
    for c in 0..2 {
        for oy in 0..3 {
            for ox in 0..3 {
                let at = |y: usize, x_: usize| x[c * 36 + (2 * oy + y) * 6 + 2 * ox + x_];
                skip[c * 9 + oy * 3 + ox] = (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)) / 4.0;
            }
        }
    }
    let cat: Vec<f32> = scale.into_iter().chain(side).chain(skip).collect();
    linear(&cat, "fc.weight", "fc.bias")
}

fn graph(dir: &tempfile::TempDir, seed: u64) -> (Model, Named) {
    let t = tensors(&mut StdRng::seed_from_u64(seed));
    (written_model(dir, GRAPH, &t), t)
}

#[test]
fn the_reference_forward_computes_the_graph_as_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (m, t) = graph(&dir, 1);
    // The batchnorm folds into the stem (its name is what the shortcut reads).
    assert!(m.layer_index("bn_stem").is_none());
    assert!(!m.is_chain());
    let names: Vec<&str> = m.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        m.input_of(names.iter().position(|n| *n == "down").expect("down")),
        model::Source::Layer(0)
    );
    let n = 3;
    let x = rand_vec(&mut StdRng::seed_from_u64(2), n * 72);
    let got = forward(&m, &x, n);
    let want: Vec<f32> = x.chunks(72).flat_map(|s| by_hand(&t, s)).collect();
    assert_close_rel(&got, &want, 1e-4, "graph forward");
}

#[test]
fn the_engine_runs_the_graph_dense_and_compressed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (m, _) = graph(&dir, 3);
    let n = 7;
    let x = rand_vec(&mut StdRng::seed_from_u64(4), n * 72);
    for recipe in [
        "[default]\nbits = 32\n",
        "[default]\nprune = \"l1\"\nsparsity = 0.5\nbits = 8\n",
        "[default]\nbits = 4\ngranularity = \"channel\"\nscheme = \"asymmetric\"\n",
    ] {
        let r = Recipe::from_toml_str(recipe).expect("recipe");
        let plan = compress::apply(&m, &r, None).expect("apply");
        let cm = CompressedModel::build(&plan).expect("build");
        let want = forward(&plan.dequantized_model(), &x, n);
        assert_close_rel(&cm.logits(&x, n), &want, 2e-4, recipe);
        let one = cm.logits(&x[..72], 1);
        assert_close_rel(&one, &want[..5], 2e-4, "one sample");
        // Written and read back: the same graph, the same outputs.
        let path = dir.path().join("c.safetensors");
        cm.save(&path, Some(recipe)).expect("save");
        let back = engine::load_compressed(&path).expect("reload");
        assert_eq!(back.logits(&x, n), cm.logits(&x, n), "{recipe}: reloaded");
    }
}

#[test]
fn a_dense_graph_model_written_back_reloads_to_the_same_outputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (m, _) = graph(&dir, 5);
    let path = dir.path().join("dense.safetensors");
    m.save(&path, &[]).expect("save");
    let back = model::load(&path).expect("reload").model;
    let x = rand_vec(&mut StdRng::seed_from_u64(6), 2 * 72);
    assert_close_rel(
        &forward(&back, &x, 2),
        &forward(&m, &x, 2),
        1e-6,
        "reloaded",
    );
    assert_eq!(back.layers.len(), m.layers.len());
}

#[test]
fn every_problem_of_a_graph_is_reported_at_its_layer_in_one_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = tensors(&mut StdRng::seed_from_u64(7));
    // Three branches broken at once: none of them stops the others from being judged.
    let broken = GRAPH
        .replace("input = \"r2\"", "input = \"r3\"")
        .replace("input = \"input\"", "input = \"fc\"")
        .replace(
            "inputs = [\"r2\", \"gate\"]",
            "inputs = [\"relu0\", \"gate\"]",
        );
    let path = write_model(&dir, "m.safetensors", &broken, &t);
    let e = model::load(&path).expect_err("broken graph").to_string();
    assert!(e.contains("3 problems"), "{e}");
    // An unknown name, with the names it could have meant.
    assert!(
        e.contains("layer pass (dropout): reads \"r3\", which names no layer (earlier layers: stem, bn_stem, relu0"),
        "{e}"
    );
    // A layer written later: no cycle can be described.
    assert!(
        e.contains("layer skip (avgpool2d): reads \"fc\", a layer after it"),
        "{e}"
    );
    // Shapes that do not meet at a join.
    assert!(
        e.contains("layer scale (mul): reading relu0 and gate: joins a value of shape [6] to a value of shape [4, 6, 6]"),
        "{e}"
    );
    // A layer reading a failed one is not judged.
    assert!(!e.contains("layer cat"), "{e}");

    // A field no op takes, at its own [[layer]]'s line, with every other such layer.
    let unknown = GRAPH
        .replace("name = \"c2\"", "name = \"c2\"\nstrides = 2")
        .replace("name = \"fc\"", "name = \"fc\"\nunits = 5");
    let arch = dir.path().join("a.arch.toml");
    std::fs::write(&arch, &unknown).expect("write arch");
    let e = model::load_with_arch(&path, Some(&arch))
        .expect_err("unknown fields")
        .to_string();
    let line_of = |needle: &str| {
        unknown[..unknown.find(needle).expect(needle)]
            .matches('\n')
            .count()
            + 1
    };
    assert!(e.contains("strides") && e.contains("units"), "{e}");
    let c2_table = unknown[..unknown.find("name = \"c2\"").expect("c2")]
        .rfind("[[layer]]")
        .expect("table");
    let c2_line = unknown[..c2_table].matches('\n').count() + 1;
    assert!(
        e.contains(&format!("line {c2_line}, ")) || e.contains(&format!("line {}, ", c2_line + 1)),
        "c2 at line {c2_line}: {e}"
    );
    assert!(line_of("units") > c2_line);

    // Too many inputs for a one-input op, and a layer named like the model input.
    let bad = GRAPH
        .replace("input = \"r2\"", "inputs = [\"r2\", \"c2\"]")
        .replace("name = \"skip\"", "name = \"input\"");
    let path = write_model(&dir, "m2.safetensors", &bad, &t);
    let e = model::load(&path).expect_err("bad inputs").to_string();
    assert!(
        e.contains("layer pass (dropout): dropout reads 1 value(s), given 2"),
        "{e}"
    );
    assert!(e.contains("named \"input\""), "{e}");
}

#[test]
fn structured_pruning_follows_the_graph_through_branches_joins_and_gates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (m, _) = graph(&dir, 9);
    let x = rand_vec(&mut StdRng::seed_from_u64(10), 3 * 72);
    let rows = |plan: &compress::Plan, name: &str| {
        let i = plan.model.layer_index(name).expect("layer");
        plan.model.layers[i].out_shape[0]
    };
    // The stem feeds c1 and the shortcut: both lose its removed channels as inputs.
    // se2's gate multiplies r2, the sum of c2 and the shortcut: all three lose the same
    // channels, and the concat's range for them shrinks (side's and the input's stay).
    for (recipe, shrunk) in [
        (
            "[layer.stem]\nprune = \"structured\"\nsparsity = 0.5\n",
            vec![("stem", 2)],
        ),
        (
            "[layer.se2]\nprune = \"structured\"\nsparsity = 0.5\n",
            vec![("se2", 3), ("c2", 3), ("down", 3), ("side", 2)],
        ),
        (
            "[default]\nprune = \"structured\"\nsparsity = 0.5\n",
            vec![("stem", 2), ("c1", 3), ("c2", 3), ("se1", 1), ("side", 1)],
        ),
    ] {
        let r = Recipe::from_toml_str(recipe).expect("recipe");
        let plan = compress::apply(&m, &r, None).expect(recipe);
        for (name, n) in shrunk {
            assert_eq!(rows(&plan, name), n, "{recipe}: {name}");
        }
        let cm = CompressedModel::build(&plan).expect("build");
        assert_close_rel(
            &cm.logits(&x, 3),
            &forward(&plan.dequantized_model(), &x, 3),
            2e-4,
            recipe,
        );
    }
    // The classifier's outputs are the classes.
    let out = Recipe::from_toml_str("[layer.fc]\nprune = \"structured\"\nsparsity = 0.5\n")
        .expect("recipe");
    let e = compress::apply(&m, &out, None)
        .expect_err("fc produces the classes")
        .to_string();
    assert!(e.contains("layer fc:") && e.contains("class scores"), "{e}");
}
