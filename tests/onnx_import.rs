//! `squeeze import`: ONNX graphs to squeeze models. The checked-in fixtures
//! (`tests/fixtures/onnx/`, written by its `make.py` with PyTorch) are a small network exported
//! by both of PyTorch's exporters, its state_dict, a hand-written architecture and PyTorch's
//! logits: the imported model must equal the hand-written one and PyTorch; and a one-block
//! vision transformer (`nn.MultiheadAttention`) exported by both, against PyTorch's logits.
//! Graphs built here from ONNX's messages check the conversions one by one and the error
//! reports. Where PyTorch is installed, `benches/peers/onnx_import.py` exports seven networks
//! (MobileNetV2, a Conv1d keyword-spotting net and a small ViT among them) with both exporters
//! and the imported models' logits are compared with PyTorch's.

use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use squeeze::compress::{self, Recipe};
use squeeze::engine::CompressedModel;
use squeeze::model::onnx::{self, ImportError, build as pb};
use squeeze::model::{self, Model};

mod common;
use common::{assert_close_scaled, forward, safetensors_f32};

fn fixture(name: &str) -> PathBuf {
    common::root().join("tests/fixtures/onnx").join(name)
}

fn import(path: &Path) -> Result<Model, ImportError> {
    let bytes = std::fs::read(path).expect("test input");
    Ok(onnx::import(path, &bytes)?.build(path)?.0)
}

fn engine_logits(m: &Model, x: &[f32], n: usize) -> Vec<f32> {
    let dense = Recipe::from_toml_str("[default]\nbits = 32\n").expect("test input");
    let plan = compress::apply(m, &dense, None).expect("test input");
    CompressedModel::build(&plan)
        .expect("test input")
        .logits(x, n)
}

#[test]
fn pytorch_exports_import_to_the_hand_written_architecture() {
    let hand = model::load_with_arch(
        &fixture("tiny.safetensors"),
        Some(&fixture("tiny.arch.toml")),
    )
    .unwrap()
    .model;
    let (shape, torch) = safetensors_f32(&fixture("tiny.logits.safetensors"), "logits");
    let (_, x) = safetensors_f32(&fixture("tiny.logits.safetensors"), "inputs");
    let n = shape[0];
    let want = forward(&hand, &x, n);
    assert_close_scaled(&want, &torch, 1e-5, "hand-written vs PyTorch");
    // BatchNorm kept as nodes (legacy exporter, no constant folding) and folded by the
    // exporter with the weights in an external file (dynamo).
    for file in ["tiny.legacy.onnx", "tiny.dynamo.onnx"] {
        let m = import(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(m.input.shape, vec![3, 8, 8], "{file}");
        assert_eq!(m.layers.len(), hand.layers.len(), "{file}");
        for (a, b) in m.layers.iter().zip(&hand.layers) {
            assert_eq!(a.op.name(), b.op.name(), "{file}: {} vs {}", a.name, b.name);
            assert_eq!(a.out_shape, b.out_shape, "{file}: {}", a.name);
        }
        let got = forward(&m, &x, n);
        assert_close_scaled(&got, &want, 1e-5, &format!("{file}: reference"));
        assert_close_scaled(&engine_logits(&m, &x, n), &torch, 1e-5, file);
    }
}

#[test]
fn a_vision_transformer_imports_from_both_exporters_with_pytorchs_logits() {
    let logits = fixture("vit.logits.safetensors");
    let ((shape, torch), (_, x)) = (
        safetensors_f32(&logits, "logits"),
        safetensors_f32(&logits, "inputs"),
    );
    let n = shape[0];
    // Legacy: batch symbolic, reshapes computed from `Shape`; dynamo: fixed shapes.
    for file in ["vit.legacy.onnx", "vit.dynamo.onnx"] {
        let m = import(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let ops: Vec<_> = m.layers.iter().map(|l| l.op.name()).collect();
        let count = |op: &str| ops.iter().filter(|&&o| o == op).count();
        assert_eq!(
            (count("attention"), count("linear"), count("select")),
            (1, 5, 1),
            "{file}: {ops:?}"
        );
        let attention = m.layers.iter().find(|l| l.op.name() == "attention");
        assert_eq!(attention.map(|l| l.out_shape.clone()), Some(vec![5, 8]));
        assert_close_scaled(&forward(&m, &x, n), &torch, 1e-5, file);
        assert_close_scaled(&engine_logits(&m, &x, n), &torch, 1e-5, file);
    }
}

#[test]
fn the_command_writes_a_model_that_loads_and_refuses_to_overwrite_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.safetensors");
    let arch = dir.path().join("tiny.arch.toml");
    let ok = common::squeeze()
        .arg("import")
        .arg(fixture("tiny.legacy.onnx"))
        .args(["--scale", "2", "--mean", "0.5", "--out"])
        .arg(&out)
        .arg("--arch-out")
        .arg(&arch)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("18 layers"), "{stdout}");
    assert!(stdout.contains("2 batchnorm(s) folded"), "{stdout}");
    let loaded = model::load(&out).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.model.input.scale, 2.0);
    assert_eq!(loaded.model.input.mean, vec![0.5]);
    // The TOML written beside it describes the same model.
    let again = model::load_with_arch(&out, Some(&arch)).unwrap().model;
    assert_eq!(again.layers.len(), loaded.model.layers.len());

    // The input is never overwritten; a missing file is named.
    let onnx_copy = dir.path().join("m.onnx");
    std::fs::copy(fixture("tiny.legacy.onnx"), &onnx_copy).unwrap();
    let before = std::fs::read(&onnx_copy).unwrap();
    let same = common::squeeze()
        .arg("import")
        .arg(&onnx_copy)
        .arg("--out")
        .arg(&onnx_copy)
        .output()
        .unwrap();
    assert!(!same.status.success());
    assert_eq!(std::fs::read(&onnx_copy).unwrap(), before);
    let missing = common::squeeze()
        .args(["import", "no-such.onnx", "--out"])
        .arg(dir.path().join("x.safetensors"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no-such.onnx"));
    assert!(!dir.path().join("x.safetensors").exists());
}

// --- graphs built from ONNX's messages ---

fn tensor(name: &str, dims: &[i64], values: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

fn attr_i(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        i,
        r#type: 2,
        ..Default::default()
    }
}

fn attr_f(name: &str, f: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        f,
        r#type: 1,
        ..Default::default()
    }
}

fn value(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            tensor_type: Some(pb::TensorTypeProto {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| pb::Dimension {
                            dim_value: (d > 0).then_some(d),
                            dim_param: (d <= 0).then(|| "n".to_string()),
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

fn attr_s(name: &str, s: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        s: s.as_bytes().to_vec(),
        r#type: 3,
        ..Default::default()
    }
}

/// A graph from input `x` `[n, 4]` to `out` `[n, 3]`.
fn write_graph(
    dir: &Path,
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    out: &str,
) -> PathBuf {
    write_graph_io(dir, nodes, inits, value("x", &[0, 4]), value(out, &[0, 3]))
}

fn write_graph_io(
    dir: &Path,
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    input: pb::ValueInfoProto,
    output: pb::ValueInfoProto,
) -> PathBuf {
    let model = pb::ModelProto {
        ir_version: 8,
        graph: Some(pb::GraphProto {
            node: nodes,
            initializer: inits,
            input: vec![input],
            output: vec![output],
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = dir.join("g.onnx");
    std::fs::write(&path, model.encode_to_vec()).expect("test input");
    path
}

#[test]
fn matmul_add_and_gemm_become_linear_layers_with_pytorchs_arithmetic() {
    let dir = tempfile::tempdir().unwrap();
    // x[4] → MatMul by a [4, 5] matrix + bias (one linear) → Relu → Gemm with B as [5, 3]
    // (transB = 0), alpha = 2, beta = 0.5.
    let w1: Vec<f32> = (0..20).map(|i| (i as f32 - 9.5) / 10.0).collect();
    let b1: Vec<f32> = (0..5).map(|i| i as f32 / 4.0 - 0.5).collect();
    let w2: Vec<f32> = (0..15)
        .map(|i| ((i * 7) % 11) as f32 / 10.0 - 0.5)
        .collect();
    let b2 = [0.25f32, -0.5, 1.0];
    let mut gemm = node("Gemm", "head", &["h", "w2", "b2"], "y");
    gemm.attribute = vec![attr_f("alpha", 2.0), attr_f("beta", 0.5)];
    let path = write_graph(
        dir.path(),
        vec![
            node("MatMul", "mm", &["x", "w1"], "p"),
            node("Add", "bias", &["p", "b1"], "q"),
            node("Relu", "act", &["q"], "h"),
            gemm,
        ],
        vec![
            tensor("w1", &[4, 5], &w1),
            tensor("b1", &[5], &b1),
            tensor("w2", &[5, 3], &w2),
            tensor("b2", &[3], &b2),
        ],
        "y",
    );
    let m = import(&path).unwrap();
    let ops: Vec<_> = m.layers.iter().map(|l| l.op.name()).collect();
    assert_eq!(ops, ["linear", "relu", "linear"]);
    let x = [0.5f32, -1.0, 2.0, 0.25];
    let h: Vec<f32> = (0..5)
        .map(|j| (0..4).map(|i| x[i] * w1[i * 5 + j]).sum::<f32>() + b1[j])
        .map(|v| v.max(0.0))
        .collect();
    let want: Vec<f32> = (0..3)
        .map(|k| 2.0 * (0..5).map(|j| h[j] * w2[j * 3 + k]).sum::<f32>() + 0.5 * b2[k])
        .collect();
    assert_close_scaled(&forward(&m, &x, 1), &want, 1e-6, "reference");
    assert_close_scaled(&engine_logits(&m, &x, 1), &want, 1e-6, "engine");
}

/// `x` `[n, 1, 2, 2]` through a `Resize` by 2 with `mode` and `coordinates` (the
/// coordinate_transformation_mode), then flattened.
fn resize_graph(dir: &Path, mode: &str, coordinates: &str) -> PathBuf {
    let mut resize = node("Resize", "up", &["x", "", "scales"], "u");
    resize.attribute = vec![
        attr_s("mode", mode),
        attr_s("coordinate_transformation_mode", coordinates),
    ];
    write_graph_io(
        dir,
        vec![resize, node("Flatten", "flat", &["u"], "y")],
        vec![tensor("scales", &[4], &[1.0, 1.0, 2.0, 2.0])],
        value("x", &[0, 1, 2, 2]),
        value("y", &[0, 16]),
    )
}

#[test]
fn linear_resize_becomes_bilinear_upsampling_with_pytorchs_coordinates() {
    let dir = tempfile::tempdir().unwrap();
    // [[1, 2], [3, 4]] is 1 + 2·row + column, which bilinear interpolation keeps: output (i, j)
    // is 1 + 2·r[i] + r[j] for the source positions r of 4 outputs over 2 inputs.
    let x = [1.0f32, 2.0, 3.0, 4.0];
    let third = 1.0 / 3.0;
    for (coordinates, r, align) in [
        ("half_pixel", [0.0, 0.25, 0.75, 1.0], false),
        ("pytorch_half_pixel", [0.0, 0.25, 0.75, 1.0], false),
        ("align_corners", [0.0, third, 2.0 * third, 1.0], true),
    ] {
        let m = import(&resize_graph(dir.path(), "linear", coordinates)).unwrap();
        let spec = m.op_spec(&m.layers[0]);
        assert_eq!(
            spec,
            model::OpSpec::Upsample {
                scale: model::Pair::HW([2, 2]),
                mode: model::UpsampleMode::Bilinear,
                align_corners: align,
            },
            "{coordinates}"
        );
        let want: Vec<f32> = (0..16).map(|k| 1.0 + 2.0 * r[k / 4] + r[k % 4]).collect();
        assert_close_scaled(&forward(&m, &x, 1), &want, 1e-6, coordinates);
        assert_close_scaled(&engine_logits(&m, &x, 1), &want, 1e-6, coordinates);
    }
    for (mode, coordinates, why) in [
        (
            "linear",
            "asymmetric",
            "coordinate_transformation_mode = \"asymmetric\"",
        ),
        ("cubic", "half_pixel", "mode = \"cubic\""),
    ] {
        let err = import(&resize_graph(dir.path(), mode, coordinates))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("node \"up\" (Resize)") && err.contains(why),
            "{err}"
        );
    }
}

#[test]
fn gather_of_a_table_by_the_input_becomes_an_embedding() {
    let dir = tempfile::tempdir().unwrap();
    // Token ids [n, 3] (INT64, as PyTorch exports them) → rows of a [5, 2] table → flatten.
    let table: Vec<f32> = (0..10).map(|i| i as f32 / 4.0 - 1.0).collect();
    let mut ids = value("x", &[0, 3]);
    if let Some(t) = ids.r#type.as_mut().and_then(|t| t.tensor_type.as_mut()) {
        t.elem_type = 7;
    }
    let mut flatten = node("Flatten", "flat", &["e"], "y");
    flatten.attribute = vec![attr_i("axis", 1)];
    let graph = |axis: i64| {
        let mut gather = node("Gather", "emb", &["emb.weight", "x"], "e");
        gather.attribute = vec![attr_i("axis", axis)];
        write_graph_io(
            dir.path(),
            vec![gather, flatten.clone()],
            vec![tensor("emb.weight", &[5, 2], &table)],
            ids.clone(),
            value("y", &[0, 6]),
        )
    };
    let m = import(&graph(0)).unwrap();
    let ops: Vec<_> = m.layers.iter().map(|l| l.op.name()).collect();
    assert_eq!(ops, ["embedding", "flatten"]);
    assert_eq!(m.input.shape, vec![3]);
    let x = [4.0f32, 0.0, 2.0];
    let want: Vec<f32> = x
        .iter()
        .flat_map(|&id| table[id as usize * 2..id as usize * 2 + 2].to_vec())
        .collect();
    assert_eq!(forward(&m, &x, 1), want);
    assert_eq!(engine_logits(&m, &x, 1), want);
    let err = import(&graph(1)).unwrap_err().to_string();
    assert!(err.contains("node \"emb\" (Gather): axis = 1"), "{err}");
}

#[test]
fn every_unconvertible_node_is_reported_once_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let w: Vec<f32> = vec![0.1; 12];
    let mut clip = node("Clip", "clamp", &["a"], "b");
    clip.attribute = vec![attr_f("min", -1.0), attr_f("max", 1.0)];
    let path = write_graph(
        dir.path(),
        vec![
            node("Erf", "erf_1", &["x"], "a"),
            // Reads the failed node: not reported again.
            node("Relu", "after", &["a"], "a2"),
            clip,
            node("Gemm", "fc", &["x", "w"], "y"),
            node("LSTM", "rnn", &["y"], "z"),
        ],
        vec![tensor("w", &[4, 3], &w)],
        "z",
    );
    let err = import(&path).unwrap_err().to_string();
    assert!(err.contains("3 problem(s)"), "{err}");
    for want in [
        "node \"erf_1\" (Erf): operator Erf is not supported",
        "node \"rnn\" (LSTM): operator LSTM is not supported",
    ] {
        assert!(err.contains(want), "{want} in {err}");
    }
    assert!(err.contains("node \"clamp\" (Clip)"), "{err}");
    assert!(!err.contains("after"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
    // The command writes nothing.
    let out = dir.path().join("out.safetensors");
    let run = common::squeeze()
        .arg("import")
        .arg(&path)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(!out.exists());
}

#[test]
fn external_data_is_read_beside_the_model_and_named_when_missing() {
    let dir = tempfile::tempdir().unwrap();
    let w: Vec<f32> = (0..12).map(|i| i as f32 / 12.0).collect();
    let mut ext = tensor("fc.weight", &[3, 4], &[]);
    ext.raw_data.clear();
    ext.data_location = 1;
    ext.external_data = [
        ("location", "g.onnx.data"),
        ("offset", "8"),
        ("length", "48"),
    ]
    .iter()
    .map(|(k, v)| pb::StringStringEntryProto {
        key: k.to_string(),
        value: v.to_string(),
    })
    .collect();
    let mut gemm = node("Gemm", "fc", &["x", "fc.weight"], "y");
    gemm.attribute = vec![attr_i("transB", 1)];
    let path = write_graph(dir.path(), vec![gemm], vec![ext], "y");
    let err = import(&path).unwrap_err().to_string();
    assert!(err.contains("initializer \"fc.weight\""), "{err}");
    assert!(err.contains("g.onnx.data"), "{err}");

    let mut data = vec![0u8; 8];
    data.extend(w.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(dir.path().join("g.onnx.data"), &data).unwrap();
    let m = import(&path).unwrap();
    let x = [1.0f32, 0.0, -1.0, 2.0];
    let want: Vec<f32> = (0..3)
        .map(|o| (0..4).map(|i| w[o * 4 + i] * x[i]).sum())
        .collect();
    assert_close_scaled(&forward(&m, &x, 1), &want, 1e-6, "external weights");
}

#[test]
fn garbage_is_not_an_onnx_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.onnx");
    std::fs::write(&path, [0xffu8, 0xff, 0xff, 0x07, 0x01]).unwrap();
    let err = import(&path).unwrap_err().to_string();
    assert!(err.contains("bad.onnx"), "{err}");
    assert!(err.contains("not an ONNX model"), "{err}");
}

fn torch_available() -> bool {
    Command::new("python3")
        .args(["-c", "import torch, onnx, onnxscript, safetensors, numpy"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn torch_exported_networks_give_pytorchs_logits() {
    if !torch_available() {
        eprintln!(
            "skipped: python3 cannot import torch, onnx, onnxscript, safetensors and numpy \
             (pip install them to run benches/peers/onnx_import.py here)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let models = [
        "resnet",
        "se",
        "concat",
        "densenet",
        "mobilenetv2",
        "kws",
        "vit",
    ];
    let out = Command::new("python3")
        .arg(common::root().join("benches/peers/onnx_import.py"))
        .args(["--squeeze", env!("CARGO_BIN_EXE_squeeze"), "--n", "32"])
        .args(["--models", &models.join(","), "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "onnx_import.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in models {
        let logits = dir.path().join(format!("{name}.logits.safetensors"));
        let ((shape, want), (_, x)) = (
            safetensors_f32(&logits, "logits"),
            safetensors_f32(&logits, "inputs"),
        );
        for exporter in ["legacy", "dynamo"] {
            let file = dir.path().join(format!("{name}.{exporter}.safetensors"));
            let m = model::load(&file).unwrap().model;
            let what = format!("{name} ({exporter})");
            let got = forward(&m, &x, shape[0]);
            let worst = got
                .iter()
                .zip(&want)
                .fold(0f32, |d, (g, w)| d.max((g - w).abs()));
            println!("{what}: max |Δ logits| vs PyTorch {worst:.1e}");
            assert_close_scaled(&got, &want, 1e-5, &what);
            assert_close_scaled(&engine_logits(&m, &x, shape[0]), &want, 1e-5, &what);
        }
    }
}

fn ints(name: &str, values: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![values.len() as i64],
        data_type: 7,
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

fn attr_ints(name: &str, ints: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        ints: ints.to_vec(),
        r#type: 7,
        ..Default::default()
    }
}

/// Self-attention of one head over 2 tokens of queries, keys and values (x: `[n, 2, 6]`),
/// written as exporters write it: a split (and a slice), a transposed key, a scaling `Mul`, two
/// products and a softmax; then flatten and a linear layer to 3 classes. `mask` adds a
/// constant to the scores.
fn attention_graph(dir: &Path, scale: f32, mask: bool) -> PathBuf {
    let mut split = node("Split", "split", &["x", "sizes"], "q");
    split.output = vec!["q".into(), "k".into(), "v3".into()];
    split.attribute = vec![attr_i("axis", 2)];
    let mut kt = node("Transpose", "kt", &["k"], "kt");
    kt.attribute = vec![attr_ints("perm", &[0, 2, 1])];
    let mut gemm = node("Gemm", "head", &["flat", "w"], "y");
    gemm.attribute = vec![attr_i("transB", 1)];
    let mut nodes = vec![
        split,
        node("Slice", "v", &["v3", "s0", "s2", "axis2"], "v"),
        kt,
        node("Mul", "scale", &["q", "c"], "qs"),
        node("MatMul", "qk", &["qs", "kt"], "s"),
    ];
    if mask {
        nodes.push(node("Add", "mask", &["s", "m"], "sm"));
    }
    let mut softmax = node("Softmax", "softmax", &[if mask { "sm" } else { "s" }], "p");
    softmax.attribute = vec![attr_i("axis", -1)];
    nodes.extend([
        softmax,
        node("MatMul", "pv", &["p", "v"], "o"),
        node("Flatten", "flatten", &["o"], "flat"),
        gemm,
    ]);
    let w: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) / 6.0).collect();
    let model = pb::ModelProto {
        ir_version: 8,
        graph: Some(pb::GraphProto {
            node: nodes,
            initializer: vec![
                ints("sizes", &[2, 2, 2]),
                ints("s0", &[0]),
                ints("s2", &[2]),
                ints("axis2", &[2]),
                tensor("c", &[], &[scale]),
                tensor("m", &[2, 2], &[0.0, -1e9, 0.0, 0.0]),
                tensor("w", &[3, 4], &w),
            ],
            input: vec![value("x", &[0, 2, 6])],
            output: vec![value("y", &[0, 3])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = dir.join("attention.onnx");
    std::fs::write(&path, model.encode_to_vec()).expect("test input");
    path
}

#[test]
fn attention_written_as_products_and_softmax_becomes_an_attention_layer() {
    let dir = tempfile::tempdir().unwrap();
    let m = import(&attention_graph(dir.path(), 1.0 / 2f32.sqrt(), false)).unwrap();
    let ops: Vec<_> = m.layers.iter().map(|l| l.op.name()).collect();
    assert_eq!(ops, ["attention", "flatten", "linear"]);
    let x: Vec<f32> = (0..24).map(|i| ((i * 5) % 7) as f32 / 3.0 - 1.0).collect();
    let w: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) / 6.0).collect();
    let mut want = Vec::new();
    for s in x.chunks(12) {
        let at = |t: usize, c: usize| s[t * 6 + c];
        let mut o = [0f32; 4];
        for t in 0..2 {
            let scores: Vec<f32> = (0..2)
                .map(|u| (0..2).map(|j| at(t, j) * at(u, 2 + j)).sum::<f32>() / 2f32.sqrt())
                .collect();
            let top = scores[0].max(scores[1]);
            let e: Vec<f32> = scores.iter().map(|v| (v - top).exp()).collect();
            for j in 0..2 {
                o[t * 2 + j] = (0..2).map(|u| e[u] / (e[0] + e[1]) * at(u, 4 + j)).sum();
            }
        }
        want.extend((0..3).map(|k| (0..4).map(|i| w[k * 4 + i] * o[i]).sum::<f32>()));
    }
    assert_close_scaled(&forward(&m, &x, 2), &want, 1e-5, "reference");
    assert_close_scaled(&engine_logits(&m, &x, 2), &want, 1e-5, "engine");

    // Another scale, or a mask on the scores: refused, naming the node.
    let err = import(&attention_graph(dir.path(), 0.5, false))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("node \"softmax\" (Softmax): the scores are scaled by 0.5"),
        "{err}"
    );
    let err = import(&attention_graph(dir.path(), 1.0 / 2f32.sqrt(), true))
        .unwrap_err()
        .to_string();
    assert!(err.contains("1 problem(s)"), "{err}");
    assert!(
        err.contains("node \"mask\" (Add): reads attention scores"),
        "{err}"
    );
}
