//! `squeeze train` end to end on a tiny synthetic problem: it learns, one seed gives one file,
//! and bad input is a clear error with no output written.

// clippy.toml lets #[test] functions unwrap; this file's helpers do too.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use predicates::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

mod common;
use common::squeeze;

/// Three well-separated 2-D blobs, written as an IDX pair (f32 samples, u8 labels).
fn write_blobs(dir: &Path, prefix: &str, n: usize, seed: u64) -> PathBuf {
    let centres = [(0.0f32, 4.0f32), (4.0, -2.0), (-4.0, -2.0)];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut x = Vec::new();
    let mut y = Vec::new();
    for i in 0..n {
        let c = i % centres.len();
        x.push(centres[c].0 + rng.random_range(-1.5f32..1.5));
        x.push(centres[c].1 + rng.random_range(-1.5f32..1.5));
        y.push(c as u8);
    }
    let images = dir.join(format!("{prefix}-images-idx3-ubyte"));
    let mut bytes = vec![0, 0, 0x0D, 2];
    bytes.extend((n as u32).to_be_bytes());
    bytes.extend(2u32.to_be_bytes());
    bytes.extend(x.iter().flat_map(|v| v.to_be_bytes()));
    std::fs::write(&images, bytes).unwrap();
    let mut bytes = vec![0, 0, 0x08, 1];
    bytes.extend((n as u32).to_be_bytes());
    bytes.extend(&y);
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), bytes).unwrap();
    images
}

const MLP: &str = r#"
[input]
shape = [2]

[[layer]]
op = "linear"
name = "fc1"
weight = "fc1.weight"
bias = "fc1.bias"
out_features = 16

[[layer]]
op = "relu"

[[layer]]
op = "linear"
name = "fc2"
weight = "fc2.weight"
bias = "fc2.bias"
out_features = 3
"#;

struct Fixture {
    dir: tempfile::TempDir,
    arch: PathBuf,
    train: PathBuf,
    test: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let arch = dir.path().join("mlp.toml");
    std::fs::write(&arch, MLP).unwrap();
    let train = write_blobs(dir.path(), "train", 600, 1);
    let test = write_blobs(dir.path(), "t10k", 300, 2);
    Fixture {
        dir,
        arch,
        train,
        test,
    }
}

impl Fixture {
    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A train command with quick defaults; options in `extra` replace or add to them.
    fn cmd(&self, out: &Path, extra: &[&str]) -> assert_cmd::Command {
        let mut cmd = squeeze();
        cmd.arg("train")
            .arg("--arch")
            .arg(&self.arch)
            .arg("--data")
            .arg(&self.train)
            .arg("--test")
            .arg(&self.test)
            .arg("--out")
            .arg(out);
        let defaults = [
            ("--epochs", "8"),
            ("--lr", "0.01"),
            ("--batch", "32"),
            ("--seed", "3"),
        ];
        for (flag, value) in defaults {
            if !extra.iter().any(|e| e.split('=').next() == Some(flag)) {
                cmd.args([flag, value]);
            }
        }
        cmd.args(extra);
        cmd
    }
}

fn metadata(path: &Path) -> std::collections::HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap_or_default()
}

#[test]
fn a_tiny_mlp_learns_separable_blobs() {
    let f = fixture();
    let out = f.out("mlp.safetensors");
    f.cmd(&out, &[])
        .assert()
        .success()
        .stderr(predicate::str::contains("epoch 8/8").and(predicate::str::contains("test")));

    let meta = metadata(&out);
    let train: serde_json::Value = serde_json::from_str(&meta["squeeze.train"]).unwrap();
    let acc = train["test_accuracy"].as_f64().unwrap();
    assert!(acc >= 0.97, "test accuracy {acc}");
    assert_eq!(train["optimizer"], "adamw");
    assert_eq!(train["epochs"], 8);

    // The file loads on its own (architecture from the metadata) with PyTorch names, and the
    // model it holds scores what training reported.
    let loaded = squeeze::model::load(&out).unwrap();
    assert_eq!(loaded.arch_source, squeeze::model::ArchSource::Metadata);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let names: Vec<&str> = loaded
        .model
        .layers
        .iter()
        .filter_map(|l| l.params())
        .flat_map(|p| [p.weight_name.as_str(), p.bias_name.as_str()])
        .collect();
    assert_eq!(names, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]);
    let set = squeeze::data::load(&f.test, &Default::default()).unwrap();
    let prepared = squeeze::train::PreparedSet::new(&set, &loaded.model).unwrap();
    let again = squeeze::train::accuracy(&loaded.model, &prepared, 64).unwrap();
    assert_eq!(again, acc);
}

#[test]
fn sgd_with_momentum_and_step_decay_also_learns() {
    let f = fixture();
    let out = f.out("sgd.safetensors");
    f.cmd(
        &out,
        &[
            "--optimizer",
            "sgd",
            "--lr",
            "0.05",
            "--momentum",
            "0.9",
            "--lr-decay",
            "step",
        ],
    )
    .assert()
    .success();
    let train: serde_json::Value = serde_json::from_str(&metadata(&out)["squeeze.train"]).unwrap();
    assert!(train["test_accuracy"].as_f64().unwrap() >= 0.97, "{train}");
    assert_eq!(train["optimizer"], "sgd");
    assert_eq!(train["lr_decay"], "step");
}

#[test]
fn the_same_seed_gives_the_same_bytes() {
    let f = fixture();
    let (a, b, c) = (
        f.out("a.safetensors"),
        f.out("b.safetensors"),
        f.out("c.safetensors"),
    );
    f.cmd(&a, &["--epochs", "2"]).assert().success();
    f.cmd(&b, &["--epochs", "2"]).assert().success();
    f.cmd(&c, &["--epochs", "2", "--seed", "4"])
        .assert()
        .success();
    let (a, b, c) = (
        std::fs::read(a).unwrap(),
        std::fs::read(b).unwrap(),
        std::fs::read(c).unwrap(),
    );
    assert!(a == b, "same seed, different files");
    assert!(a != c, "different seeds, same file");
}

#[test]
fn initial_weights_follow_pytorch_defaults() {
    let spec = squeeze::model::ArchSpec::from_toml(MLP).unwrap();
    let tm = squeeze::train::init_model(&spec, Path::new("mlp.toml"), 5).unwrap();
    assert_eq!(tm.vars.len(), 4);
    for layer in tm.model.layers.iter().filter_map(|l| l.params()) {
        let fan_in = layer.weight.dims()[1] as f32;
        let bound = 1.0 / fan_in.sqrt();
        for t in [Some(&layer.weight), layer.bias.as_ref()]
            .into_iter()
            .flatten()
        {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(v.iter().all(|x| x.abs() <= bound), "{}", layer.weight_name);
            // Spread over the interval, not stuck near zero.
            let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(max > bound * 0.5, "{}: max {max}", layer.weight_name);
        }
    }
}

/// Runs a command that must fail with `needle` in its message, no panic and no output file.
fn fails_with(mut cmd: assert_cmd::Command, out: &Path, needle: &str) {
    cmd.assert()
        .failure()
        .stderr(predicate::str::contains(needle).and(predicate::str::contains("panicked").not()));
    assert!(!out.exists(), "{} was written", out.display());
}

#[test]
fn bad_settings_are_refused_before_training() {
    let f = fixture();
    let out = f.out("never.safetensors");
    fails_with(
        f.cmd(&out, &["--lr", "0"]),
        &out,
        "--lr must be a positive number",
    );
    fails_with(
        f.cmd(&out, &["--lr=-0.1"]),
        &out,
        "--lr must be a positive number",
    );
    fails_with(
        f.cmd(&out, &["--epochs", "0"]),
        &out,
        "--epochs must be at least 1",
    );
    fails_with(
        f.cmd(&out, &["--batch", "0"]),
        &out,
        "--batch must be at least 1",
    );
    fails_with(
        f.cmd(&out, &["--limit", "0"]),
        &out,
        "--limit must be at least 1",
    );
    fails_with(f.cmd(&out, &["--momentum", "1.5"]), &out, "--momentum");
    fails_with(f.cmd(&out, &["--optimizer", "lbfgs"]), &out, "lbfgs");
    let nowhere = f.out("missing-dir/m.safetensors");
    fails_with(f.cmd(&nowhere, &[]), &nowhere, "does not exist");
}

#[test]
fn bad_files_are_clear_errors() {
    let mut f = fixture();
    let out = f.out("never.safetensors");

    let train = std::mem::replace(
        &mut f.train,
        PathBuf::from("/no/such/train-images-idx3-ubyte"),
    );
    fails_with(f.cmd(&out, &[]), &out, "/no/such/train-images-idx3-ubyte");
    f.train = train;

    std::fs::write(&f.arch, "[input]\nshape = [2]\n[[layer]]\nop = \"lstm\"\n").unwrap();
    fails_with(f.cmd(&out, &[]), &out, "lstm");

    // The data has 2 values per sample, the architecture wants 3.
    std::fs::write(&f.arch, MLP.replace("shape = [2]", "shape = [3]")).unwrap();
    fails_with(f.cmd(&out, &[]), &out, "the model expects [3]");

    std::fs::write(&f.arch, MLP.replace("out_features = 16\n", "")).unwrap();
    fails_with(f.cmd(&out, &[]), &out, "`out_features` is needed");

    let bn = MLP.replace(
        "[[layer]]\nop = \"relu\"",
        "[[layer]]\nop = \"batchnorm\"\nweight = \"bn.weight\"\nbias = \"bn.bias\"\nrunning_mean = \"bn.running_mean\"\nrunning_var = \"bn.running_var\"",
    );
    std::fs::write(&f.arch, bn).unwrap();
    fails_with(f.cmd(&out, &[]), &out, "batchnorm is not trainable");

    // Labels beyond the model's classes.
    std::fs::write(&f.arch, MLP.replace("out_features = 3", "out_features = 2")).unwrap();
    fails_with(f.cmd(&out, &[]), &out, "out of range");

    let missing_arch = f.out("nope.toml");
    let mut cmd = squeeze();
    cmd.args(["train", "--data", "x", "--test", "y", "--out"])
        .arg(&out)
        .arg("--arch")
        .arg(&missing_arch);
    fails_with(cmd, &out, "nope.toml");
}
