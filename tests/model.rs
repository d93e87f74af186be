//! The dense forward pass against naive hand-written loops, batchnorm folding, residual adds,
//! and loading errors.

use std::collections::HashMap;

use rand::{SeedableRng, rngs::StdRng};
use squeeze::model::{self, ArchSpec, Conv2dGeometry, LoadError, to_safetensors_bytes};

mod common;
use common::{Named, assert_close_rel, forward, naive_conv, rand_vec, write_model};

/// The same geometry along both axes.
fn square(stride: usize, padding: usize, dilation: usize, groups: usize) -> Conv2dGeometry {
    Conv2dGeometry {
        stride: (stride, stride),
        padding: (padding, padding),
        dilation: (dilation, dilation),
        groups,
    }
}

#[test]
fn linear_relu_matches_naive_loops() {
    let mut rng = StdRng::seed_from_u64(1);
    let dir = tempfile::tempdir().expect("tmp");
    let (i, h, o) = (7, 5, 3);
    let w1 = rand_vec(&mut rng, h * i);
    let b1 = rand_vec(&mut rng, h);
    let w2 = rand_vec(&mut rng, o * h);
    let arch = r#"
[input]
shape = [7]
[[layer]]
op = "linear"
weight = "a.weight"
bias = "a.bias"
[[layer]]
op = "relu"
[[layer]]
op = "linear"
weight = "b.weight"
"#;
    let path = write_model(
        &dir,
        "m.safetensors",
        arch,
        &[
            ("a.weight".into(), vec![h, i], w1.clone()),
            ("a.bias".into(), vec![h], b1.clone()),
            ("b.weight".into(), vec![o, h], w2.clone()),
        ],
    );
    let m = model::load(&path).expect("load").model;
    let n = 4;
    let x = rand_vec(&mut rng, n * i);
    let got = forward(&m, &x, n);
    let mut want = Vec::new();
    for s in 0..n {
        let xs = &x[s * i..(s + 1) * i];
        let hid: Vec<f32> = (0..h)
            .map(|r| (b1[r] + (0..i).map(|c| w1[r * i + c] * xs[c]).sum::<f32>()).max(0.0))
            .collect();
        want.extend((0..o).map(|r| (0..h).map(|c| w2[r * h + c] * hid[c]).sum::<f32>()));
    }
    assert_close_rel(&got, &want, 1e-5, "linear + relu");
}

#[test]
fn conv2d_stride_padding_dilation_groups_match_naive_loops() {
    let mut rng = StdRng::seed_from_u64(2);
    let dir = tempfile::tempdir().expect("tmp");
    for (stride, pad, dil, groups, c, o) in [
        (1, 0, 1, 1, 3, 4),
        (2, 1, 1, 1, 2, 3),
        (1, 2, 2, 1, 2, 2),
        (1, 1, 1, 2, 4, 6),
        (2, 1, 1, 4, 4, 4), // depthwise
    ] {
        let (h, w, k) = (9, 8, 3);
        let wt = rand_vec(&mut rng, o * (c / groups) * k * k);
        let b = rand_vec(&mut rng, o);
        let arch = format!(
            "[input]\nshape = [{c}, {h}, {w}]\n[[layer]]\nop = \"conv2d\"\nweight = \"c.weight\"\nbias = \"c.bias\"\nstride = {stride}\npadding = {pad}\ndilation = {dil}\ngroups = {groups}\n[[layer]]\nop = \"flatten\"\n"
        );
        let path = write_model(
            &dir,
            "conv.safetensors",
            &arch,
            &[
                ("c.weight".into(), vec![o, c / groups, k, k], wt.clone()),
                ("c.bias".into(), vec![o], b.clone()),
            ],
        );
        let m = model::load(&path).expect("load").model;
        let x = rand_vec(&mut rng, 2 * c * h * w);
        let got = forward(&m, &x, 2);
        let want = naive_conv(
            &x,
            [2, c, h, w],
            &wt,
            [o, c / groups, k, k],
            &b,
            square(stride, pad, dil, groups),
            &[],
        );
        let (oh, ow) = want.out_hw;
        assert_eq!(m.layers[0].out_shape, vec![o, oh, ow]);
        assert_close_rel(&got, &want.y, 1e-4, "conv2d");
    }
}

#[test]
fn pooling_with_padding_matches_naive_loops() {
    let mut rng = StdRng::seed_from_u64(3);
    let dir = tempfile::tempdir().expect("tmp");
    let (c, h, w) = (2, 7, 6);
    for (op, k, s, p) in [
        ("maxpool2d", 2, 2, 0),
        ("maxpool2d", 3, 2, 1),
        ("avgpool2d", 3, 2, 1),
        ("avgpool2d", 2, 1, 0),
    ] {
        let arch = format!(
            "[input]\nshape = [{c}, {h}, {w}]\n[[layer]]\nop = \"{op}\"\nkernel = {k}\nstride = {s}\npadding = {p}\n[[layer]]\nop = \"flatten\"\n"
        );
        let path = write_model(&dir, "pool.safetensors", &arch, &[]);
        let m = model::load(&path).expect("load").model;
        let x: Vec<f32> = rand_vec(&mut rng, c * h * w)
            .iter()
            .map(|v| v - 2.0)
            .collect();
        let got = forward(&m, &x, 1);
        let oh = (h + 2 * p - k) / s + 1;
        let ow = (w + 2 * p - k) / s + 1;
        let mut want = Vec::new();
        for ch in 0..c {
            for y in 0..oh {
                for xx in 0..ow {
                    let mut vals = Vec::new();
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (y * s + ky) as isize - p as isize;
                            let ix = (xx * s + kx) as isize - p as isize;
                            let inside = iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize;
                            if inside {
                                vals.push(x[ch * h * w + iy as usize * w + ix as usize]);
                            } else if op == "avgpool2d" {
                                vals.push(0.0); // count_include_pad
                            }
                        }
                    }
                    want.push(if op == "maxpool2d" {
                        vals.iter().copied().fold(f32::NEG_INFINITY, f32::max)
                    } else {
                        vals.iter().sum::<f32>() / (k * k) as f32
                    });
                }
            }
        }
        assert_close_rel(&got, &want, 1e-5, "pooling");
    }
}

#[test]
fn batchnorm_is_folded_and_matches_unfolded_math() {
    let mut rng = StdRng::seed_from_u64(4);
    let dir = tempfile::tempdir().expect("tmp");
    let (c, h, w, o) = (2, 5, 5, 3);
    let wt = rand_vec(&mut rng, o * c * 9);
    let gamma = rand_vec(&mut rng, o);
    let beta = rand_vec(&mut rng, o);
    let mean = rand_vec(&mut rng, o);
    let var: Vec<f32> = rand_vec(&mut rng, o)
        .iter()
        .map(|v| v.abs() + 0.5)
        .collect();
    let arch = format!(
        "[input]\nshape = [{c}, {h}, {w}]\n[[layer]]\nop = \"conv2d\"\nweight = \"c.weight\"\npadding = 1\n[[layer]]\nop = \"batchnorm\"\nweight = \"bn.weight\"\nbias = \"bn.bias\"\nrunning_mean = \"bn.running_mean\"\nrunning_var = \"bn.running_var\"\n[[layer]]\nop = \"global_avgpool\"\n"
    );
    let path = write_model(
        &dir,
        "bn.safetensors",
        &arch,
        &[
            ("c.weight".into(), vec![o, c, 3, 3], wt.clone()),
            ("bn.weight".into(), vec![o], gamma.clone()),
            ("bn.bias".into(), vec![o], beta.clone()),
            ("bn.running_mean".into(), vec![o], mean.clone()),
            ("bn.running_var".into(), vec![o], var.clone()),
        ],
    );
    let m = model::load(&path).expect("load").model;
    assert_eq!(m.layers.len(), 2, "batchnorm folded into the conv");
    let x = rand_vec(&mut rng, c * h * w);
    let got = forward(&m, &x, 1);
    let conv = naive_conv(
        &x,
        [1, c, h, w],
        &wt,
        [o, c, 3, 3],
        &[0.0; 3],
        square(1, 1, 1, 1),
        &[],
    );
    let (y, (oh, ow)) = (conv.y, conv.out_hw);
    let want: Vec<f32> = (0..o)
        .map(|k| {
            let s: f32 = y[k * oh * ow..(k + 1) * oh * ow]
                .iter()
                .map(|v| (v - mean[k]) / (var[k] + 1e-5).sqrt() * gamma[k] + beta[k])
                .sum();
            s / (oh * ow) as f32
        })
        .collect();
    assert_close_rel(&got, &want, 1e-4, "folded batchnorm");
}

#[test]
fn residual_add_adds_the_named_output() {
    let mut rng = StdRng::seed_from_u64(5);
    let dir = tempfile::tempdir().expect("tmp");
    let n = 4;
    let w1 = rand_vec(&mut rng, n * n);
    let w2 = rand_vec(&mut rng, n * n);
    let arch = r#"
[input]
shape = [4]
[[layer]]
op = "linear"
name = "a"
weight = "a.weight"
[[layer]]
op = "relu"
name = "r"
[[layer]]
op = "linear"
weight = "b.weight"
[[layer]]
op = "add"
from = "r"
"#;
    let path = write_model(
        &dir,
        "res.safetensors",
        arch,
        &[
            ("a.weight".into(), vec![n, n], w1.clone()),
            ("b.weight".into(), vec![n, n], w2.clone()),
        ],
    );
    let m = model::load(&path).expect("load").model;
    let x = rand_vec(&mut rng, n);
    let got = forward(&m, &x, 1);
    let r: Vec<f32> = (0..n)
        .map(|i| (0..n).map(|j| w1[i * n + j] * x[j]).sum::<f32>().max(0.0))
        .collect();
    let want: Vec<f32> = (0..n)
        .map(|i| (0..n).map(|j| w2[i * n + j] * r[j]).sum::<f32>() + r[i])
        .collect();
    assert_close_rel(&got, &want, 1e-5, "residual add");
}

#[test]
fn loading_errors_name_the_problem() {
    let dir = tempfile::tempdir().expect("tmp");
    let arch = "[input]\nshape = [4]\n[[layer]]\nop = \"linear\"\nweight = \"a.weight\"\nbias = \"a.bias\"\n";
    // Wrong shape.
    let p = write_model(
        &dir,
        "shape.safetensors",
        arch,
        &[
            ("a.weight".into(), vec![3, 5], vec![0.0; 15]),
            ("a.bias".into(), vec![3], vec![0.0; 3]),
        ],
    );
    let e = model::load(&p).expect_err("wrong shape");
    assert!(matches!(e, LoadError::WrongShape { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("a.weight") && msg.contains("[3, 5]") && msg.contains("[_, 4]"),
        "{msg}"
    );
    // Missing tensor.
    let p = write_model(
        &dir,
        "missing.safetensors",
        arch,
        &[("a.weight".into(), vec![3, 4], vec![0.0; 12])],
    );
    let msg = model::load(&p).expect_err("missing").to_string();
    assert!(
        msg.contains("a.bias") && msg.contains("not in the file"),
        "{msg}"
    );
    // Truncated file.
    let bytes = std::fs::read(&p).expect("read");
    let t = dir.path().join("trunc.safetensors");
    std::fs::write(&t, &bytes[..bytes.len() - 7]).expect("write");
    let msg = model::load(&t).expect_err("truncated").to_string();
    assert!(
        msg.contains("trunc.safetensors") && msg.contains("safetensors"),
        "{msg}"
    );
    // Unknown op in a sidecar.
    let side = dir.path().join("missing.arch.toml");
    std::fs::write(&side, "[input]\nshape = [4]\n[[layer]]\nop = \"lstm\"\n").expect("write");
    let msg = model::load(&p).expect_err("unknown op").to_string();
    assert!(
        msg.contains("lstm") && msg.contains("missing.arch.toml"),
        "{msg}"
    );
    // Bad TOML.
    std::fs::write(&side, "[input\nshape = ").expect("write");
    let msg = model::load(&p).expect_err("bad toml").to_string();
    assert!(
        msg.contains("missing.arch.toml") && msg.contains("invalid architecture"),
        "{msg}"
    );
}

#[test]
fn wrong_dtype_is_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = vec![0u8; 12];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::I8, vec![3, 4], &data)
        .expect("view");
    let spec = ArchSpec::from_toml(
        "[input]\nshape = [4]\n[[layer]]\nop = \"linear\"\nweight = \"a.weight\"\n",
    )
    .expect("arch");
    let mut meta = HashMap::new();
    meta.insert("squeeze.arch".to_string(), spec.to_json());
    let bytes = safetensors::serialize(vec![("a.weight", view)], Some(meta)).expect("ser");
    let p = dir.path().join("i8.safetensors");
    std::fs::write(&p, bytes).expect("write");
    let msg = model::load(&p).expect_err("dtype").to_string();
    assert!(
        msg.contains("a.weight") && msg.contains("I8") && msg.contains("F32"),
        "{msg}"
    );
}

#[test]
fn an_mlp_state_dict_without_description_is_inferred() {
    let dir = tempfile::tempdir().expect("tmp");
    let tensors: Named = vec![
        ("0.weight".into(), vec![5, 6], vec![0.1; 30]),
        ("0.bias".into(), vec![5], vec![0.0; 5]),
        ("2.weight".into(), vec![3, 5], vec![0.1; 15]),
        ("extra".into(), vec![2], vec![0.0; 2]),
    ];
    let p = dir.path().join("mlp.safetensors");
    std::fs::write(
        &p,
        to_safetensors_bytes(&tensors[..3], &HashMap::new()).expect("ser"),
    )
    .expect("write");
    let loaded = model::load(&p).expect("inferred");
    assert_eq!(loaded.arch_source, model::ArchSource::InferredMlp);
    assert_eq!(loaded.model.num_classes(), 3);
    assert!(
        loaded.warnings.iter().any(|w| w.contains("6-5-3")),
        "{:?}",
        loaded.warnings
    );
    // Something that is not an MLP: a clear error saying what to add.
    let p2 = dir.path().join("other.safetensors");
    std::fs::write(
        &p2,
        to_safetensors_bytes(&tensors, &HashMap::new()).expect("ser"),
    )
    .expect("write");
    let msg = model::load(&p2).expect_err("no arch").to_string();
    assert!(
        msg.contains("--arch") && msg.contains("other.arch.toml") && msg.contains("extra"),
        "{msg}"
    );
}

#[test]
fn save_and_reload_round_trips() {
    let mut rng = StdRng::seed_from_u64(6);
    let dir = tempfile::tempdir().expect("tmp");
    let arch = "[input]\nshape = [1, 6, 6]\nscale = 0.5\n[[layer]]\nop = \"conv2d\"\nweight = \"c.weight\"\n[[layer]]\nop = \"batchnorm\"\nweight = \"bn.weight\"\nbias = \"bn.bias\"\nrunning_mean = \"bn.m\"\nrunning_var = \"bn.v\"\n[[layer]]\nop = \"flatten\"\n";
    let p = write_model(
        &dir,
        "a.safetensors",
        arch,
        &[
            ("c.weight".into(), vec![2, 1, 3, 3], rand_vec(&mut rng, 18)),
            ("bn.weight".into(), vec![2], vec![1.5, 0.5]),
            ("bn.bias".into(), vec![2], vec![0.1, -0.1]),
            ("bn.m".into(), vec![2], vec![0.2, 0.3]),
            ("bn.v".into(), vec![2], vec![2.0, 1.0]),
        ],
    );
    let m = model::load(&p).expect("load").model;
    let out = dir.path().join("b.safetensors");
    m.save(&out, &[]).expect("save");
    let back = model::load(&out).expect("reload");
    assert!(back.warnings.is_empty(), "{:?}", back.warnings);
    let x = rand_vec(&mut rng, 36);
    assert_eq!(forward(&m, &x, 1), forward(&back.model, &x, 1));
    assert_eq!(back.model.input.scale, 0.5);
}

#[test]
fn an_unfolded_batchnorm_survives_save_and_reload() {
    let mut rng = StdRng::seed_from_u64(7);
    let dir = tempfile::tempdir().expect("tmp");
    let arch = "[input]\nshape = [3]\n[[layer]]\nop = \"linear\"\nweight = \"a.weight\"\n[[layer]]\nop = \"relu\"\n[[layer]]\nop = \"batchnorm\"\nweight = \"bn.weight\"\nbias = \"bn.bias\"\nrunning_mean = \"bn.m\"\nrunning_var = \"bn.v\"\neps = 0.001\n";
    let p = write_model(
        &dir,
        "u.safetensors",
        arch,
        &[
            ("a.weight".into(), vec![2, 3], rand_vec(&mut rng, 6)),
            ("bn.weight".into(), vec![2], vec![1.5, 0.5]),
            ("bn.bias".into(), vec![2], vec![0.1, -0.1]),
            ("bn.m".into(), vec![2], vec![0.2, 0.3]),
            ("bn.v".into(), vec![2], vec![2.0, 1.0]),
        ],
    );
    let m = model::load(&p).expect("load").model;
    assert_eq!(
        m.layers[2].op.name(),
        "batchnorm",
        "not foldable after relu"
    );
    let out = dir.path().join("u2.safetensors");
    m.save(&out, &[]).expect("save");
    let back = model::load(&out).expect("reload");
    assert!(back.warnings.is_empty(), "{:?}", back.warnings);
    let x = rand_vec(&mut rng, 3);
    assert_close_rel(
        &forward(&back.model, &x, 1),
        &forward(&m, &x, 1),
        1e-6,
        "reloaded batchnorm",
    );
}

#[test]
fn batchnorm_step_counters_are_not_unused_tensors() {
    // A PyTorch state_dict carries `num_batches_tracked` (int64) beside each BatchNorm's
    // tensors; no op reads it. It loads without a warning; a tensor nothing reads still warns.
    let dir = tempfile::tempdir().expect("tmp");
    let arch = "[input]\nshape = [1, 4, 4]\n[[layer]]\nop = \"conv2d\"\nname = \"features.0.0\"\nweight = \"features.0.0.weight\"\n[[layer]]\nop = \"batchnorm\"\nweight = \"features.0.1.weight\"\nbias = \"features.0.1.bias\"\nrunning_mean = \"features.0.1.running_mean\"\nrunning_var = \"features.0.1.running_var\"\n[[layer]]\nop = \"global_avgpool\"\n";
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let conv = f32s(&[0.5; 2 * 9]);
    let (ones, zeros) = (f32s(&[1.0; 2]), f32s(&[0.0; 2]));
    let extra = f32s(&[0.0; 3]);
    let steps = 7i64.to_le_bytes();
    let write = |name: &str, with_extra: bool| {
        use safetensors::{Dtype, tensor::TensorView};
        fn f(shape: Vec<usize>, data: &[u8]) -> TensorView<'_> {
            TensorView::new(Dtype::F32, shape, data).expect("view")
        }
        let mut views = vec![
            ("features.0.0.weight", f(vec![2, 1, 3, 3], &conv)),
            ("features.0.1.weight", f(vec![2], &ones)),
            ("features.0.1.bias", f(vec![2], &zeros)),
            ("features.0.1.running_mean", f(vec![2], &zeros)),
            ("features.0.1.running_var", f(vec![2], &ones)),
            (
                "features.0.1.num_batches_tracked",
                TensorView::new(Dtype::I64, vec![], &steps).expect("view"),
            ),
        ];
        if with_extra {
            views.push(("classifier.extra", f(vec![3], &extra)));
        }
        let spec = ArchSpec::from_toml(arch).expect("arch");
        let meta = HashMap::from([("squeeze.arch".to_string(), spec.to_json())]);
        let p = dir.path().join(name);
        std::fs::write(&p, safetensors::serialize(views, Some(meta)).expect("ser")).expect("write");
        p
    };
    let loaded = model::load(&write("bn.safetensors", false)).expect("load");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let loaded = model::load(&write("extra.safetensors", true)).expect("load");
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    let w = &loaded.warnings[0];
    assert!(
        w.contains("1 tensor(s) not used") && w.contains("classifier.extra"),
        "{w}"
    );
    assert!(!w.contains("num_batches_tracked"), "{w}");
}
