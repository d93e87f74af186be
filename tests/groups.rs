//! Structured pruning of channel groups: layers whose channels meet in an `add`, a `mul` gate, a
//! `concat` or a depthwise convolution lose the same channels together. The shrunk model
//! computes what the masked dense model computes (every group member's removed rows and biases
//! set to zero, the model otherwise as it was), through the reference forward and the engine;
//! what cannot lose channels (tied to the model input or output, read by a grouped conv) is
//! refused by name, and left whole when asked for by `[default]`. The reference comparisons run
//! in f64, where the shrunk and the masked model agree to rounding (~1e-12; ~1e-8 where a bias
//! holds a folded constant, stored as f32).

use candle_core::{DType, Device, Tensor};
use rand::{SeedableRng, rngs::StdRng};
use squeeze::compress::prune::shrink_structured;
use squeeze::compress::{self, Pruning, Rank, Recipe};
use squeeze::engine::CompressedModel;
use squeeze::model::{self, Model, Op};

mod common;
use common::{Named, assert_close_scaled, forward, rand_vec, written_model};

/// An architecture and its tensors, written layer by layer.
struct Net {
    arch: String,
    tensors: Named,
    rng: StdRng,
}

impl Net {
    fn new(shape: &str, seed: u64) -> Net {
        Net {
            arch: format!("[input]\nshape = {shape}\n"),
            tensors: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn tensor(&mut self, name: String, shape: Vec<usize>) {
        let n = shape.iter().product();
        let v = rand_vec(&mut self.rng, n);
        self.tensors.push((name, shape, v));
    }

    /// `op` named `name` reading `inputs` (none: the previous layer), with extra TOML lines.
    fn op(&mut self, op: &str, name: &str, inputs: &[&str], extra: &str) -> &mut Net {
        self.arch += &format!("[[layer]]\nop = \"{op}\"\nname = \"{name}\"\n");
        match inputs {
            [] => {}
            [one] => self.arch += &format!("input = \"{one}\"\n"),
            many => self.arch += &format!("inputs = {many:?}\n"),
        }
        self.arch += extra;
        self
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        name: &str,
        input: &[&str],
        cin: usize,
        cout: usize,
        k: usize,
        pad: usize,
        stride: usize,
        groups: usize,
    ) -> &mut Net {
        let extra = format!(
            "weight = \"{name}.weight\"\nbias = \"{name}.bias\"\npadding = {pad}\nstride = {stride}\ngroups = {groups}\n"
        );
        self.op("conv2d", name, input, &extra);
        self.tensor(format!("{name}.weight"), vec![cout, cin / groups, k, k]);
        self.tensor(format!("{name}.bias"), vec![cout]);
        self
    }

    fn linear(&mut self, name: &str, input: &[&str], fin: usize, fout: usize) -> &mut Net {
        let extra = format!("weight = \"{name}.weight\"\nbias = \"{name}.bias\"\n");
        self.op("linear", name, input, &extra);
        self.tensor(format!("{name}.weight"), vec![fout, fin]);
        self.tensor(format!("{name}.bias"), vec![fout]);
        self
    }

    fn batchnorm(&mut self, name: &str, c: usize) -> &mut Net {
        let extra = format!(
            "weight = \"{name}.weight\"\nbias = \"{name}.bias\"\nrunning_mean = \"{name}.mean\"\nrunning_var = \"{name}.var\"\n"
        );
        self.op("batchnorm", name, &[], &extra);
        for t in ["weight", "bias", "mean"] {
            self.tensor(format!("{name}.{t}"), vec![c]);
        }
        let var: Vec<f32> = rand_vec(&mut self.rng, c)
            .iter()
            .map(|v| v.abs() + 0.5)
            .collect();
        self.tensors.push((format!("{name}.var"), vec![c], var));
        self
    }

    fn model(&self, dir: &tempfile::TempDir) -> Model {
        written_model(dir, &self.arch, &self.tensors)
    }
}

/// A stem, an identity residual block, then a block with a strided projection shortcut.
fn resnet(seed: u64) -> Net {
    let mut n = Net::new("[3, 8, 8]", seed);
    n.conv("stem", &[], 3, 4, 3, 1, 1, 1)
        .op("relu", "r0", &[], "")
        .conv("c1", &[], 4, 4, 3, 1, 1, 1)
        .op("relu", "c1_relu", &[], "")
        .conv("c2", &[], 4, 4, 3, 1, 1, 1)
        .op("add", "add1", &["c2", "r0"], "")
        .op("relu", "r1", &[], "")
        .conv("c3", &[], 4, 6, 3, 1, 2, 1)
        .op("relu", "c3_relu", &[], "")
        .conv("c4", &[], 6, 6, 3, 1, 1, 1)
        .conv("down", &["r1"], 4, 6, 1, 0, 2, 1)
        .op("add", "add2", &["c4", "down"], "")
        .op("relu", "r2", &[], "")
        .op("global_avgpool", "gap", &[], "")
        .linear("fc", &[], 6, 3);
    n
}

/// A squeeze-and-excite gate (`mul` of a map by its sigmoid gate), then a conv flattened into
/// the classifier.
fn se(seed: u64) -> Net {
    let mut n = Net::new("[3, 6, 6]", seed);
    n.conv("c0", &[], 3, 6, 3, 1, 1, 1)
        .op("relu", "x", &[], "")
        .op("global_avgpool", "gap", &[], "")
        .linear("fc1", &[], 6, 2)
        .op("relu", "fc1_relu", &[], "")
        .linear("fc2", &[], 2, 6)
        .op("sigmoid", "gate", &[], "")
        .op("mul", "scale", &["x", "gate"], "")
        .conv("c5", &[], 6, 4, 3, 1, 1, 1)
        .op("relu", "c5_relu", &[], "")
        .op("flatten", "flat", &[], "")
        .linear("fc", &[], 4 * 36, 3);
    n
}

/// Two branches concatenated, added to a third conv (whose channels split between them), then
/// concatenated with the model input.
fn concat(seed: u64) -> Net {
    let mut n = Net::new("[3, 6, 6]", seed);
    n.conv("a", &["input"], 3, 4, 3, 1, 1, 1)
        .op("relu", "ra", &[], "")
        .conv("b", &["input"], 3, 5, 3, 1, 1, 1)
        .op("relu", "rb", &[], "")
        .op("concat", "cat2", &["ra", "rb"], "")
        .conv("y", &["input"], 3, 9, 3, 1, 1, 1)
        .op("add", "sum", &["cat2", "y"], "")
        .op("relu", "rs", &[], "")
        .op("concat", "cat", &["rs", "input"], "")
        .conv("c", &[], 12, 4, 3, 1, 1, 1)
        .op("relu", "c_relu", &[], "")
        .op("global_avgpool", "gap", &[], "")
        .linear("fc", &[], 4, 3);
    n
}

/// A MobileNetV2 inverted residual (1×1 expand, depthwise 3×3, 1×1 project, add) with an
/// unfolded batchnorm after the add (its shift is what a removed channel carries on).
fn depthwise(seed: u64) -> Net {
    let mut n = Net::new("[3, 6, 6]", seed);
    n.conv("stem", &[], 3, 4, 3, 1, 1, 1)
        .op("relu6", "s", &[], "")
        .conv("expand", &[], 4, 8, 1, 0, 1, 1)
        .op("relu6", "e6", &[], "")
        .conv("dw", &[], 8, 8, 3, 1, 1, 8)
        .op("relu6", "d6", &[], "")
        .conv("project", &[], 8, 4, 1, 0, 1, 1)
        .op("add", "res", &["project", "s"], "")
        .batchnorm("bn", 4)
        .op("relu6", "b6", &[], "")
        .conv("head", &[], 4, 6, 1, 0, 1, 1)
        .op("relu6", "h6", &[], "")
        .op("global_avgpool", "gap", &[], "")
        .linear("fc", &[], 6, 3);
    n
}

/// `model` with the rows (and bias entries) of `layer` outside `keep` set to zero.
fn mask_rows(model: &mut Model, layer: usize, keep: &[usize]) {
    let (Op::Linear(p) | Op::Conv2d(p, _)) = &mut model.layers[layer].op else {
        panic!("not linear/conv");
    };
    let dims = p.weight.dims().to_vec();
    let cols: usize = dims[1..].iter().product();
    let mut w = p
        .weight
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("weights");
    for r in (0..dims[0]).filter(|r| !keep.contains(r)) {
        w[r * cols..(r + 1) * cols]
            .iter_mut()
            .for_each(|v| *v = 0.0);
    }
    if let Some(b) = &p.bias {
        let mut b = b.to_vec1::<f32>().expect("bias");
        for r in (0..dims[0]).filter(|r| !keep.contains(r)) {
            b[r] = 0.0;
        }
        p.bias = Some(Tensor::from_vec(b, dims[0], &Device::Cpu).expect("bias"));
    }
    p.weight = Tensor::from_vec(w, dims, &Device::Cpu).expect("weights");
}

/// `m`'s outputs for `n` samples `x`, computed in f64 (the reference forward with every tensor
/// widened): free of the rounding that summing in another order brings to f32, so a shrunk
/// model and its masked model agree to ~1e-12 however deep they are (~1e-8 where a removed
/// channel's constant was folded into an f32 bias).
fn forward64(m: &Model, x: &[f32], n: usize) -> Vec<f64> {
    let wide = |t: &Tensor| t.to_dtype(DType::F64).expect("f64");
    let mut m = m.clone();
    for l in &mut m.layers {
        match &mut l.op {
            Op::Linear(p) | Op::Conv2d(p, _) => {
                p.weight = wide(&p.weight);
                p.bias = p.bias.as_ref().map(wide);
            }
            Op::ChannelAffine { scale, shift } => {
                *scale = wide(scale);
                *shift = wide(shift);
            }
            Op::LayerNorm(p) => {
                p.weight = wide(&p.weight);
                p.bias = wide(&p.bias);
            }
            _ => {}
        }
    }
    let mut shape = vec![n];
    shape.extend(&m.input.shape);
    let xs: Vec<f64> = x.iter().map(|v| f64::from(*v)).collect();
    let t = Tensor::from_slice(&xs, shape, &Device::Cpu).expect("input");
    m.forward(&t)
        .and_then(|y| y.flatten_all())
        .and_then(|y| y.to_vec1::<f64>())
        .expect("forward")
}

fn assert_close64(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
            "{what}: index {i}: {g} vs {w}"
        );
    }
}

fn out_rows(m: &Model, name: &str) -> usize {
    let i = m
        .layer_index(name)
        .unwrap_or_else(|| panic!("no layer {name}"));
    m.layers[i].params().expect("params").weight.dims()[0]
}

/// Prunes `net` with `recipe` (structured), checks every listed layer's output rows, and that
/// the shrunk model, the plan and the engine (dense, then int8) compute the masked model.
fn check(net: &Net, recipe: &str, rows: &[(&str, usize)]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = net.model(&dir);
    let r = Recipe::from_toml_str(recipe).expect("recipe");
    let asked: Vec<_> = r
        .validate(&m)
        .expect("validates")
        .layers
        .iter()
        .filter_map(|l| match l.prune {
            Pruning::Structured { sparsity, norm } if sparsity > 0.0 => {
                Some((l.layer, sparsity, norm))
            }
            _ => None,
        })
        .collect();
    let (shrunk, kept) = shrink_structured(&m, &asked, Rank::default()).expect("shrinks");
    let mut masked = m.clone();
    for (layer, keep) in &kept {
        mask_rows(&mut masked, *layer, keep);
    }
    for (name, n) in rows {
        assert_eq!(out_rows(&shrunk, name), *n, "{name}'s rows");
    }
    for (i, l) in shrunk.layers.iter().enumerate() {
        assert_eq!(
            l.in_shape,
            shrunk.shape_of(shrunk.input_of(i)),
            "{}'s input",
            l.name
        );
    }
    assert!(
        shrunk.num_classes() == m.num_classes(),
        "the classes stay whole"
    );
    let n = 5;
    let x = rand_vec(&mut StdRng::seed_from_u64(77), n * m.input_len());
    let want = forward(&masked, &x, n);
    let want64 = forward64(&masked, &x, n);
    assert_close64(&forward64(&shrunk, &x, n), &want64, "shrunk vs masked");
    // The pruned channels mattered: the masked model is not the dense one.
    let dense = forward(&m, &x, n);
    assert!(
        dense.iter().zip(&want).any(|(a, b)| (a - b).abs() > 1e-3),
        "masking changed nothing"
    );

    let plan = compress::apply(&m, &r, None).expect("apply");
    assert_close64(
        &forward64(&plan.dequantized_model(), &x, n),
        &want64,
        "plan",
    );
    let cm = CompressedModel::build(&plan).expect("build");
    assert_close_scaled(&cm.logits(&x, n), &want, 1e-4, "engine, dense");

    let int8 = Recipe::from_toml_str(&format!("{recipe}bits = 8\n")).expect("recipe");
    let plan8 = compress::apply(&m, &int8, None).expect("apply int8");
    let cm8 = CompressedModel::build(&plan8).expect("build int8");
    assert_close_scaled(
        &cm8.logits(&x, n),
        &forward(&plan8.dequantized_model(), &x, n),
        1e-4,
        "engine, int8",
    );
    assert_eq!(out_rows(&plan8.model, rows[0].0), rows[0].1);

    // The shrunk model written and read back computes the same.
    let path = dir.path().join("small.safetensors");
    plan.dequantized_model().save(&path, &[]).expect("save");
    let back = model::load(&path).expect("reload").model;
    assert_close64(&forward64(&back, &x, n), &want64, "reloaded");
}

const HALF: &str = "[default]\nprune = \"structured\"\nsparsity = 0.5\n";

#[test]
fn a_resnet_block_loses_the_same_channels_on_both_sides_of_its_adds() {
    check(
        &resnet(1),
        HALF,
        &[
            ("stem", 2),
            ("c2", 2),
            ("c1", 2),
            ("c3", 3),
            ("c4", 3),
            ("down", 3),
            ("fc", 3),
        ],
    );
    // Asked for one member, the whole group goes (L2 ranking this time).
    check(
        &resnet(2),
        "[layer.c2]\nprune = \"structured\"\nsparsity = 0.25\nnorm = \"l2\"\n",
        &[("stem", 3), ("c2", 3), ("c1", 4), ("down", 6)],
    );
    // However high the sparsity, every group keeps a channel.
    check(
        &resnet(3),
        "[default]\nprune = \"structured\"\nsparsity = 0.99\n",
        &[
            ("stem", 1),
            ("c2", 1),
            ("c1", 1),
            ("c3", 1),
            ("c4", 1),
            ("down", 1),
        ],
    );
}

#[test]
fn a_squeeze_and_excite_gate_loses_the_channels_of_the_map_it_scales() {
    check(
        &se(3),
        HALF,
        &[("c0", 3), ("fc2", 3), ("fc1", 1), ("c5", 2), ("fc", 3)],
    );
}

#[test]
fn concatenated_branches_are_pruned_each_in_its_own_range() {
    // y's 9 channels split between a's 4 (2 go) and b's 5 (round(2.5) = 2 go); the model
    // input's channels in `cat` stay.
    check(
        &concat(4),
        HALF,
        &[("a", 2), ("b", 3), ("y", 5), ("c", 2), ("fc", 3)],
    );
}

#[test]
fn a_depthwise_convolution_loses_its_filters_with_its_channels() {
    let net = depthwise(5);
    check(
        &net,
        HALF,
        &[
            ("stem", 2),
            ("project", 2),
            ("expand", 4),
            ("dw", 4),
            ("head", 3),
        ],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let m = net.model(&dir);
    let plan =
        compress::apply(&m, &Recipe::from_toml_str(HALF).expect("recipe"), None).expect("apply");
    let dw = plan.model.layer_index("dw").expect("dw");
    match &plan.model.layers[dw].op {
        Op::Conv2d(p, g) => {
            assert_eq!(g.groups, 4);
            assert_eq!(p.weight.dims(), &[4, 1, 3, 3]);
        }
        _ => panic!("dw is a conv"),
    }
}

fn refusal(net: &Net, recipe: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = net.model(&dir);
    let r = Recipe::from_toml_str(recipe).expect("recipe");
    compress::apply(&m, &r, None)
        .expect_err("refused")
        .to_string()
}

#[test]
fn layers_of_one_group_asking_different_sparsities_are_refused_by_name() {
    let e = refusal(
        &resnet(6),
        "[layer.stem]\nprune = \"structured\"\nsparsity = 0.5\n[layer.c2]\nprune = \"structured\"\nsparsity = 0.25\n",
    );
    assert!(
        e.contains("stem (sparsity 0.5")
            && e.contains("c2 (sparsity 0.25")
            && e.contains("\"add1\""),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    let e = refusal(
        &resnet(6),
        "[default]\nprune = \"structured\"\nsparsity = 0.5\n[layer.down]\nnorm = \"l2\"\n",
    );
    assert!(
        e.contains("down") && e.contains("norm l2") && e.contains("\"add2\""),
        "{e}"
    );
}

#[test]
fn channels_tied_to_the_model_input_or_output_are_refused_and_left_whole_by_default() {
    // a's output is added to the model input.
    let mut n = Net::new("[3, 6, 6]", 7);
    n.conv("a", &[], 3, 3, 3, 1, 1, 1)
        .op("add", "skip", &["a", "input"], "")
        .op("relu", "r", &[], "")
        .conv("b", &[], 3, 4, 3, 1, 1, 1)
        .op("global_avgpool", "gap", &[], "")
        .linear("fc", &[], 4, 2);
    let e = refusal(&n, "[layer.a]\nprune = \"structured\"\nsparsity = 0.5\n");
    assert!(
        e.contains("layer a:") && e.contains("model input") && e.contains("\"skip\""),
        "{e}"
    );
    check(&n, HALF, &[("b", 2), ("a", 3), ("fc", 2)]);

    // fa and fb are summed into the class scores.
    let mut o = Net::new("[4]", 8);
    o.linear("f0", &[], 4, 6)
        .op("relu", "r", &[], "")
        .linear("fa", &["r"], 6, 3)
        .linear("fb", &["r"], 6, 3)
        .op("add", "out", &["fa", "fb"], "");
    let e = refusal(&o, "[layer.fa]\nprune = \"structured\"\nsparsity = 0.5\n");
    assert!(e.contains("layer fa:") && e.contains("\"out\""), "{e}");
    // f0 feeds both: it loses channels, and both readers their columns.
    check(&o, HALF, &[("f0", 3), ("fa", 3), ("fb", 3)]);
}

#[test]
fn a_grouped_convolution_keeps_its_channels() {
    let mut n = Net::new("[3, 6, 6]", 9);
    n.conv("a", &[], 3, 4, 3, 1, 1, 1)
        .op("relu", "r", &[], "")
        .conv("g", &[], 4, 4, 3, 1, 1, 2)
        .op("relu", "gr", &[], "")
        .conv("c", &[], 4, 4, 3, 1, 1, 1)
        .op("global_avgpool", "gap", &[], "")
        .linear("fc", &[], 4, 2);
    let e = refusal(&n, "[layer.a]\nprune = \"structured\"\nsparsity = 0.5\n");
    assert!(e.contains("\"g\"") && e.contains("groups = 2"), "{e}");
    let e = refusal(&n, "[layer.g]\nprune = \"structured\"\nsparsity = 0.5\n");
    assert!(
        e.contains("layer g:") && e.contains("grouped convolution"),
        "{e}"
    );
    check(&n, HALF, &[("c", 2), ("a", 4), ("g", 4)]);
}

#[test]
fn a_layer_norm_and_a_conv1d_keep_their_channels() {
    // a's channels reach a layer_norm, which normalizes over all of them.
    let mut n = Net::new("[3, 6, 6]", 10);
    n.conv("a", &[], 3, 4, 3, 1, 1, 1)
        .op("global_avgpool", "gap", &[], "")
        .op("layer_norm", "ln", &[], "")
        .linear("fc1", &[], 4, 5)
        .op("tanh", "t", &[], "")
        .linear("fc", &[], 5, 2);
    let e = refusal(&n, "[layer.a]\nprune = \"structured\"\nsparsity = 0.5\n");
    assert!(
        e.contains("layer a:") && e.contains("\"ln\"") && e.contains("normalizes"),
        "{e}"
    );
    check(&n, HALF, &[("fc1", 3), ("a", 4)]);

    let mut c = Net::new("[2, 8]", 11);
    c.op(
        "conv1d",
        "k",
        &[],
        "weight = \"k.weight\"\nbias = \"k.bias\"\npadding = 1\n",
    );
    c.tensor("k.weight".into(), vec![4, 2, 3]);
    c.tensor("k.bias".into(), vec![4]);
    c.op("relu", "r", &[], "")
        .op("flatten", "flat", &[], "")
        .linear("fc", &[], 32, 3);
    let e = refusal(&c, "[layer.k]\nprune = \"structured\"\nsparsity = 0.5\n");
    assert!(e.contains("layer k:") && e.contains("conv1d"), "{e}");
    let dir = tempfile::tempdir().expect("tempdir");
    let m = c.model(&dir);
    let plan = compress::apply(&m, &Recipe::from_toml_str(HALF).expect("recipe"), None)
        .expect("[default] leaves the conv1d whole");
    assert_eq!(out_rows(&plan.model, "k"), 4);
}

/// MobileNetV2 as torchvision builds it (a stem, 17 inverted residual blocks, a 1×1 head, the
/// classifier), at an eighth of its width: every layer but the classifier loses channels, and
/// the shrunk model computes the masked one.
#[test]
fn every_layer_of_a_mobilenet_v2_but_the_classifier_loses_channels() {
    let mut n = Net::new("[3, 16, 16]", 12);
    n.conv("features.0", &[], 3, 4, 3, 1, 2, 1)
        .op("relu6", "features.0.act", &[], "");
    let mut x = "features.0.act".to_string();
    let mut cin = 4;
    let mut i = 1;
    for (t, c, count, s) in [
        (1, 2, 1, 1),
        (6, 3, 2, 2),
        (6, 4, 3, 2),
        (6, 8, 4, 2),
        (6, 12, 3, 1),
        (6, 20, 3, 2),
        (6, 40, 1, 1),
    ] {
        for k in 0..count {
            let stride = if k == 0 { s } else { 1 };
            let hidden = cin * t;
            let p = format!("features.{i}");
            let block_in = x.clone();
            let mut read = vec![x.clone()];
            if t != 1 {
                n.conv(&format!("{p}.expand"), &[&x], cin, hidden, 1, 0, 1, 1)
                    .op("relu6", &format!("{p}.expand.act"), &[], "");
                read.clear();
            }
            let read: Vec<&str> = read.iter().map(String::as_str).collect();
            n.conv(
                &format!("{p}.dw"),
                &read,
                hidden,
                hidden,
                3,
                1,
                stride,
                hidden,
            )
            .op("relu6", &format!("{p}.dw.act"), &[], "")
            .conv(&format!("{p}.project"), &[], hidden, c, 1, 0, 1, 1);
            x = format!("{p}.project");
            if stride == 1 && cin == c {
                let add = format!("{p}.add");
                n.op("add", &add, &[&x, &block_in], "");
                x = add;
            }
            cin = c;
            i += 1;
        }
    }
    n.conv("features.18", &[&x], cin, 160, 1, 0, 1, 1)
        .op("relu6", "features.18.act", &[], "")
        .op("global_avgpool", "gap", &[], "")
        .op("dropout", "drop", &[], "p = 0.2\n")
        .linear("classifier", &[], 160, 10);
    let dir = tempfile::tempdir().expect("tempdir");
    let m = n.model(&dir);
    let plan =
        compress::apply(&m, &Recipe::from_toml_str(HALF).expect("recipe"), None).expect("apply");
    let layers: Vec<(&str, usize, usize)> = m
        .compressible()
        .map(|(_, l)| {
            let name = l.name.as_str();
            (name, out_rows(&m, name), out_rows(&plan.model, name))
        })
        .collect();
    assert_eq!(layers.len(), 53);
    let whole: Vec<&str> = layers
        .iter()
        .filter(|(_, before, after)| after == before)
        .map(|(name, ..)| *name)
        .collect();
    assert_eq!(whole, vec!["classifier"]);
    check(&n, HALF, &[("features.0", 2), ("features.1.dw", 2)]);
}
