//! squeeze's graphs against real PyTorch modules: `benches/peers/torch_graph.py` builds a
//! ResNet with a projection shortcut, squeeze-and-excite blocks, Inception concats and a DenseNet
//! with `torch.nn`, writes their state_dicts, hand-written architectures, random inputs and
//! PyTorch's logits, and checks `squeeze eval`'s top-1 agreement; here the same files are loaded
//! and the reference forward and the engine's logits compared with PyTorch's. Skipped (passing,
//! with a message) where `python3` cannot import torch, safetensors and numpy.

use std::process::Command;

use squeeze::compress::{self, Recipe};
use squeeze::engine::{self, CompressedModel};
use squeeze::model;

mod common;
use common::{forward, safetensors_f32};

fn torch_available() -> bool {
    Command::new("python3")
        .args(["-c", "import torch, safetensors, numpy"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |best, (i, x)| if *x > v[best] { i } else { best })
}

#[test]
fn graphs_built_with_torch_nn_give_pytorchs_logits() {
    if !torch_available() {
        eprintln!(
            "skipped: python3 cannot import torch, safetensors and numpy \
             (pip install torch safetensors numpy to run benches/peers/torch_graph.py here)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let script = common::root().join("benches/peers/torch_graph.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([
            "--squeeze",
            env!("CARGO_BIN_EXE_squeeze"),
            "--n",
            "64",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "torch_graph.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dense = Recipe::from_toml_str("[default]\nbits = 32\n").expect("recipe");
    println!("model    max |Δ| reference  max |Δ| engine  top-1 agreement  largest |logit|");
    for name in ["resnet", "se", "concat", "densenet"] {
        let m = model::load(&dir.path().join(format!("{name}.safetensors")))
            .expect("load")
            .model;
        let (shape, want) = safetensors_f32(
            &dir.path().join(format!("{name}.logits.safetensors")),
            "logits",
        );
        let (_, x) = safetensors_f32(
            &dir.path().join(format!("{name}.logits.safetensors")),
            "inputs",
        );
        let n = shape[0];
        let reference = forward(&m, &x, n);
        let plan = compress::apply(&m, &dense, None).expect("apply");
        let engine = CompressedModel::build(&plan).expect("build").logits(&x, n);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (dr, de) = (
            max_abs_diff(&reference, &want),
            max_abs_diff(&engine, &want),
        );
        let agree = want
            .chunks(shape[1])
            .zip(engine.chunks(shape[1]))
            .filter(|(w, g)| argmax(w) == argmax(g))
            .count();
        println!("{name:8} {dr:>18.2e} {de:>15.2e} {agree:>13}/{n} {scale:>16.3}");
        assert!(
            dr <= 1e-5 * scale.max(1.0),
            "{name}: reference differs by {dr}"
        );
        assert!(
            de <= 1e-5 * scale.max(1.0),
            "{name}: engine differs by {de}"
        );
    }
    // Going back: the int8 file squeeze packed against PyTorch running its `--dense-out` twin.
    let packed =
        engine::load_compressed(&dir.path().join("resnet.int8.safetensors")).expect("load packed");
    let torch = dir.path().join("resnet.int8.logits.safetensors");
    let ((shape, want), (_, x)) = (
        safetensors_f32(&torch, "logits"),
        safetensors_f32(&torch, "inputs"),
    );
    let got = packed.logits(&x, shape[0]);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = max_abs_diff(&got, &want);
    println!(
        "resnet int8 packed vs torch on --dense-out: max |Δ| {d:.2e}, largest |logit| {scale:.3}"
    );
    assert!(d <= 1e-5 * scale.max(1.0), "int8 resnet differs by {d}");
}
