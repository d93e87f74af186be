//! The command line as a user meets it: the real binary on good and bad input.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use squeeze::model::ArchSpec;

mod common;
use common::{linear_toml, root, squeeze, write_model};

/// A 4-input, 3-class linear model that predicts the class of its largest input among the first
/// three.
fn tiny_model(dir: &Path) -> PathBuf {
    let w = vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0];
    write_model(
        dir,
        "tiny.safetensors",
        &format!("[input]\nshape = [4]\n{}", linear_toml("fc")),
        &[
            ("fc.weight".into(), vec![3, 4], w),
            ("fc.bias".into(), vec![3], vec![0.0; 3]),
        ],
    )
}

/// Runs a command that must succeed and parses its stdout as JSON.
fn json_of(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.assert().success().get_output().stdout.clone();
    serde_json::from_slice(&out).expect("json")
}

fn csv(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write");
    p
}

#[test]
fn help_lists_the_commands() {
    squeeze()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("info").and(predicate::str::contains("eval")))
        .stdout(predicate::str::contains("train"));
}

#[test]
fn eval_on_a_csv_reports_accuracy_as_json() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_model(dir.path());
    let data = csv(
        dir.path(),
        "d.csv",
        "a,b,c,d,label\n1,0,0,0,0\n0,2,0,0,1\n0,0,3,0,2\n0,5,0,0,0\n",
    );
    let v = json_of(
        squeeze()
            .args(["eval", "--format", "json", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg("--reference")
            .arg(&model),
    );
    assert_eq!(v["samples"], 4);
    assert!((v["accuracy"].as_f64().expect("accuracy") - 0.75).abs() < 1e-9);
    assert_eq!(v["agreement"], 1.0);
    assert!(v["kl"].as_f64().expect("kl").abs() < 1e-9);
    assert!(v["loss"].as_f64().is_some() && v["top5"].as_f64().is_some());
}

#[test]
fn info_reports_layers_and_totals() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_model(dir.path());
    let v = json_of(
        squeeze()
            .args(["info", "--format", "json", "--model"])
            .arg(&model),
    );
    assert_eq!(v["layers"][0]["name"], "fc");
    assert_eq!(v["layers"][0]["params"], 15);
    assert_eq!(v["layers"][0]["macs"], 12);
    assert_eq!(v["bytes"], 60);
    assert_eq!(v["peak_activation_bytes"], 28);
    // 15 parameters and 4 + 3 activation values, as f32.
    assert_eq!(v["memory_bytes"], 88);
    let v = json_of(
        squeeze()
            .args([
                "info",
                "--memory-limit",
                "1M",
                "--format",
                "json",
                "--model",
            ])
            .arg(&model),
    );
    assert_eq!(v["memory_limit_bytes"], 1 << 20);
}

#[test]
fn an_evaluation_over_the_memory_limit_is_refused_with_the_figure() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_model(dir.path());
    let data = csv(
        dir.path(),
        "d.csv",
        "a,b,c,d,label\n1,0,0,0,0\n0,2,0,0,1\n0,0,3,0,2\n0,5,0,0,0\n",
    );
    // 88 bytes of model, 4 samples: 64 of inputs, 96 of outputs, 112 of activations.
    let run = |limit: &str| {
        let mut c = squeeze();
        c.args(["eval", "--no-timing", "--memory-limit", limit, "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data);
        c.assert()
    };
    run("360").success();
    run("359").failure().stderr(
        predicate::str::contains("d.csv: evaluating its 4 samples on").and(
            predicate::str::contains("needs 360 B, more than the memory limit of 359 B"),
        ),
    );
}

#[test]
fn bad_inputs_are_answers_not_crashes() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_model(dir.path());
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            csv(dir.path(), "range.csv", "a,b,c,d,label\n1,0,0,0,7\n"),
            "label 7",
        ),
        (
            csv(dir.path(), "size.csv", "a,b,c,label\n1,0,0,1\n"),
            "the model expects",
        ),
        (csv(dir.path(), "empty.csv", "a,b,c,d,label\n"), "empty.csv"),
        (
            csv(dir.path(), "nan.csv", "a,b,c,d,label\nNaN,0,0,0,1\n"),
            "nan.csv",
        ),
    ];
    for (data, expect) in cases {
        squeeze()
            .args(["eval", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .assert()
            .failure()
            .stderr(predicate::str::contains(expect))
            .stderr(predicate::str::contains("panicked").not());
    }
    // A file that is not a model.
    let junk = csv(dir.path(), "junk.safetensors", "not a model");
    squeeze()
        .args(["info", "--model"])
        .arg(&junk)
        .assert()
        .failure()
        .stderr(predicate::str::contains("junk.safetensors"));
    // A missing model file.
    squeeze()
        .args(["info", "--model", "/nonexistent/m.safetensors"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("/nonexistent/m.safetensors"));
}

#[test]
fn bundled_models_reach_their_stated_accuracy() {
    let data = root().join("assets/data/mnist/t10k-images-idx3-ubyte.gz");
    for (model, floor) in [
        ("assets/models/lenet-300-100.safetensors", 0.980),
        ("assets/models/lenet5.safetensors", 0.990),
    ] {
        let v = json_of(
            squeeze()
                .args(["eval", "--format", "json", "--model"])
                .arg(root().join(model))
                .arg("--data")
                .arg(&data),
        );
        assert_eq!(v["samples"], 10_000);
        let acc = v["accuracy"].as_f64().expect("accuracy");
        assert!(acc >= floor, "{model}: {acc} < {floor}");
    }
}

fn eval_json(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    json_of(squeeze().args(args))
}

#[test]
fn apply_then_eval_reproduces_accuracy_and_size() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = root().join("assets/models/lenet-300-100.safetensors");
    let data = root().join("assets/data/mnist/t10k-images-idx3-ubyte.gz");
    let recipe = dir.path().join("r.toml");
    std::fs::write(
        &recipe,
        "[default]\nprune = \"l1\"\nsparsity = 0.8\nbits = 5\n\n[layer.fc3]\nsparsity = 0.3\nbits = 8\n",
    )
    .expect("write");
    let out = dir.path().join("c.safetensors");
    let dense = dir.path().join("d.safetensors");
    squeeze()
        .args(["apply", "--model"])
        .arg(&model)
        .arg("--recipe")
        .arg(&recipe)
        .arg("--out")
        .arg(&out)
        .arg("--dense-out")
        .arg(&dense)
        .assert()
        .success();
    let limit = std::ffi::OsStr::new("2000");
    let direct = eval_json(&[
        "eval".as_ref(),
        "--no-timing".as_ref(),
        "--format".as_ref(),
        "json".as_ref(),
        "--limit".as_ref(),
        limit,
        "--model".as_ref(),
        model.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--recipe".as_ref(),
        recipe.as_os_str(),
    ]);
    let reloaded = eval_json(&[
        "eval".as_ref(),
        "--no-timing".as_ref(),
        "--format".as_ref(),
        "json".as_ref(),
        "--limit".as_ref(),
        limit,
        "--model".as_ref(),
        out.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
    ]);
    assert_eq!(direct["accuracy"], reloaded["accuracy"]);
    assert_eq!(direct["loss"], reloaded["loss"]);
    assert_eq!(direct["size_bytes"], reloaded["size_bytes"]);
    // size_bytes is the file minus its safetensors header.
    let bytes = std::fs::read(&out).expect("read");
    let header = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    assert_eq!(
        direct["size_bytes"].as_u64().expect("size") as usize,
        bytes.len() - 8 - header
    );
    // The dense export is a plain model with the original names and the same predictions.
    let dense_eval = eval_json(&[
        "eval".as_ref(),
        "--no-timing".as_ref(),
        "--format".as_ref(),
        "json".as_ref(),
        "--limit".as_ref(),
        limit,
        "--model".as_ref(),
        dense.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
    ]);
    let d = dense_eval["accuracy"].as_f64().expect("acc");
    let c = direct["accuracy"].as_f64().expect("acc");
    assert!((d - c).abs() <= 0.001, "dense export {d} vs compressed {c}");
    assert!(direct["sparsity"].as_f64().expect("sparsity") > 0.75);
    assert!(direct["ratio"].as_f64().expect("ratio") > 10.0);
}

/// Sparsity has one meaning — the pruned fraction of the original weights — whether the model is
/// compressed by a recipe in the run, reloaded from its export, or described by `info`: int8
/// rounding weights to zero does not make it sparse, and structured pruning's removed rows
/// count although the file no longer holds them. A file written without the record says so.
#[test]
fn sparsity_is_the_same_from_a_recipe_an_export_and_info() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = root().join("assets/models/lenet-300-100.safetensors");
    let data = root().join("assets/data/mnist/t10k-images-idx3-ubyte.gz");
    let eval = |extra: &[&std::ffi::OsStr]| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "eval".as_ref(),
            "--no-timing".as_ref(),
            "--format".as_ref(),
            "json".as_ref(),
            "--limit".as_ref(),
            "300".as_ref(),
            "--data".as_ref(),
            data.as_os_str(),
        ];
        args.extend(extra);
        eval_json(&args)
    };
    let structured = dir.path().join("structured.toml");
    std::fs::write(
        &structured,
        "[default]\nprune = \"structured\"\nsparsity = 0.5\nbits = 8\n",
    )
    .expect("write");
    let int8 = dir.path().join("int8.toml");
    std::fs::write(&int8, "[default]\nbits = 8\n").expect("write");
    for (recipe, expected) in [(&int8, 0.0..=0.0), (&structured, 0.4..=0.6)] {
        let out = dir.path().join("exported.safetensors");
        let _ = std::fs::remove_file(&out);
        squeeze()
            .args(["apply", "--model"])
            .arg(&model)
            .arg("--recipe")
            .arg(recipe)
            .arg("--out")
            .arg(&out)
            .assert()
            .success();
        let direct = eval(&[
            "--model".as_ref(),
            model.as_os_str(),
            "--recipe".as_ref(),
            recipe.as_os_str(),
        ]);
        let reloaded = eval(&["--model".as_ref(), out.as_os_str()]);
        let sparsity = direct["sparsity"].as_f64().expect("sparsity");
        assert!(expected.contains(&sparsity), "{recipe:?}: {sparsity}");
        for key in ["sparsity", "zeros", "dense_bytes", "sparsity_basis"] {
            assert_eq!(direct[key], reloaded[key], "{recipe:?}: {key}");
        }
        assert_eq!(reloaded["sparsity_basis"], "pruning");
        // int8 rounds some weights to exactly zero: shown apart, never as sparsity.
        assert!(reloaded["zeros"].as_f64().expect("zeros") > sparsity);
        let info = json_of(
            squeeze()
                .args(["info", "--format", "json", "--model"])
                .arg(&out),
        );
        assert_eq!(info["sparsity"], direct["sparsity"], "{recipe:?}: info");
        for (l, m) in info["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .filter(|l| l.get("sparsity").is_some())
            .zip(direct["layers"].as_array().expect("layers"))
        {
            assert_eq!(l["sparsity"], m["sparsity"], "{recipe:?}: {}", m["name"]);
        }
    }
    // A file written before the record: the stored zeros, and the reason, on screen.
    let out = dir.path().join("exported.safetensors");
    rewrite(&out, |meta, _| {
        meta.remove("squeeze.pruning");
    });
    let old = eval(&["--model".as_ref(), out.as_os_str()]);
    assert_eq!(old["sparsity_basis"], "stored_zeros");
    squeeze()
        .args(["eval", "--no-timing", "--limit", "100", "--model"])
        .arg(&out)
        .arg("--data")
        .arg(&data)
        .assert()
        .success()
        .stdout(predicate::str::contains("no pruning record"));
}

#[test]
fn recipe_errors_name_the_problem() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = root().join("assets/models/lenet-300-100.safetensors");
    let data = root().join("assets/data/mnist/t10k-images-idx3-ubyte.gz");
    for (text, expect) in [
        ("[layer.fc9]\nbits = 4\n", "fc1"),
        ("[default]\nprune = \"l1\"\nsparsity = 1.5\n", "sparsity"),
        ("[default]\nbits = 12\n", "bits"),
        ("[default]\nbitz = 4\n", "bitz"),
    ] {
        let recipe = dir.path().join("bad.toml");
        std::fs::write(&recipe, text).expect("write");
        squeeze()
            .args(["eval", "--no-timing", "--limit", "10", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg("--recipe")
            .arg(&recipe)
            .assert()
            .failure()
            .stderr(predicate::str::contains(expect))
            .stderr(predicate::str::contains("bad.toml"))
            .stderr(predicate::str::contains("panicked").not());
    }
    // A failed apply leaves nothing behind.
    let out = dir.path().join("never.safetensors");
    squeeze()
        .args(["apply", "--bits", "12", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(&out)
        .assert()
        .failure();
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
}

// ---- No command destroys an input ----------------------------------------------------------

/// `squeeze apply` on the tiny model with a quick recipe and the extra arguments.
fn apply_tiny(model: &Path, extra: &[&std::ffi::OsStr]) -> assert_cmd::assert::Assert {
    squeeze()
        .args(["apply", "--bits", "8", "--model"])
        .arg(model)
        .args(extra)
        .assert()
}

fn os<P: AsRef<std::ffi::OsStr> + ?Sized>(p: &P) -> &std::ffi::OsStr {
    p.as_ref()
}

#[test]
fn apply_never_overwrites_its_model_however_spelled() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_model(dir.path());
    let before = std::fs::read(&model).expect("read");
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).expect("mkdir");
    let respelled = sub.join("..").join("tiny.safetensors");
    let linked = dir.path().join("link.safetensors");
    std::fs::hard_link(&model, &linked).expect("hard link");
    #[cfg(unix)]
    let symlinked = {
        let s = dir.path().join("sym.safetensors");
        std::os::unix::fs::symlink(&model, &s).expect("symlink");
        s
    };
    #[cfg(not(unix))]
    let symlinked = model.clone();
    let other = dir.path().join("other.safetensors");
    for (flag, target) in [
        ("--out", &model),
        ("--out", &respelled),
        ("--out", &linked),
        ("--out", &symlinked),
    ] {
        apply_tiny(&model, &[os(flag), os(target)])
            .failure()
            .stderr(predicate::str::contains("same file as --model"))
            .stderr(predicate::str::contains(target.display().to_string()));
    }
    // --dense-out naming the model (the lossy dequantized weights would replace it).
    apply_tiny(
        &model,
        &[os("--out"), os(&other), os("--dense-out"), os(&respelled)],
    )
    .failure()
    .stderr(predicate::str::contains("--dense-out"))
    .stderr(predicate::str::contains("same file as --model"));
    assert_eq!(std::fs::read(&model).expect("read"), before);
    assert!(!other.exists(), "nothing is written when a check fails");
}

#[test]
fn apply_outputs_may_not_name_the_recipe_or_each_other() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_model(dir.path());
    let recipe = dir.path().join("r.toml");
    std::fs::write(&recipe, "[default]\nbits = 8\n").expect("write");
    squeeze()
        .args(["apply", "--model"])
        .arg(&model)
        .arg("--recipe")
        .arg(&recipe)
        .arg("--out")
        .arg(dir.path().join(".").join("r.toml"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("same file as --recipe"));
    assert_eq!(
        std::fs::read_to_string(&recipe).expect("read"),
        "[default]\nbits = 8\n"
    );
    let out = dir.path().join("c.safetensors");
    let same = dir.path().join("sub/../c.safetensors");
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    apply_tiny(
        &model,
        &[os("--out"), os(&out), os("--dense-out"), os(&same)],
    )
    .failure()
    .stderr(predicate::str::contains("--dense-out"))
    .stderr(predicate::str::contains("same file as --out"));
    assert!(!out.exists());
}

#[test]
fn apply_refuses_to_replace_what_is_not_a_regular_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_model(dir.path());
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).expect("mkdir");
    apply_tiny(&model, &[os("--out"), os(&folder)])
        .failure()
        .stderr(predicate::str::contains("is a directory"));
    #[cfg(unix)]
    {
        apply_tiny(&model, &[os("--out"), os("/dev/null")])
            .failure()
            .stderr(predicate::str::contains("character device"));
        use std::os::unix::fs::FileTypeExt;
        assert!(
            std::fs::metadata("/dev/null")
                .expect("/dev/null")
                .file_type()
                .is_char_device()
        );
        let fifo = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            apply_tiny(&model, &[os("--out"), os(&fifo)])
                .failure()
                .stderr(predicate::str::contains("FIFO"));
            assert!(
                std::fs::symlink_metadata(&fifo)
                    .expect("fifo")
                    .file_type()
                    .is_fifo()
            );
        }
    }
    // A missing directory is reported before any work.
    apply_tiny(
        &model,
        &[os("--out"), os(&dir.path().join("nope/c.safetensors"))],
    )
    .failure()
    .stderr(predicate::str::contains("does not exist"));
}

/// The pid of a process that has exited.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_squeeze"))
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    child.wait().expect("wait");
    pid
}

#[test]
fn apply_removes_temporaries_left_by_killed_runs() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_model(dir.path());
    let pid = dead_pid();
    let stale = dir
        .path()
        .join(format!(".c.safetensors.squeeze-{pid}-0.tmp"));
    std::fs::write(&stale, b"half a file").expect("write");
    let foreign = dir.path().join(".notes.tmp");
    std::fs::write(&foreign, b"not ours").expect("write");
    let out = dir.path().join("c.safetensors");
    apply_tiny(&model, &[os("--out"), os(&out)]).success();
    assert!(!stale.exists(), "a temporary of a dead run is removed");
    assert!(foreign.exists(), "files of other naming are left alone");
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".squeeze-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn an_apply_pair_records_its_partner_and_a_mismatch_is_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_model(dir.path());
    let out = dir.path().join("c.safetensors");
    let dense = dir.path().join("d.safetensors");
    let data = csv(dir.path(), "d.csv", "a,b,c,d,label\n1,0,0,0,0\n0,2,0,0,1\n");
    apply_tiny(
        &model,
        &[os("--out"), os(&out), os("--dense-out"), os(&dense)],
    )
    .success();
    let meta = |p: &Path| squeeze::files::read_metadata(p).expect("metadata");
    let (mc, md) = (meta(&out), meta(&dense));
    let partner = |m: &std::collections::BTreeMap<String, String>| {
        squeeze::files::Partner::of(m).expect("partner record")
    };
    assert_eq!(partner(&mc).file, "d.safetensors");
    assert_eq!(
        Some(partner(&mc).sha256),
        squeeze::files::content_digest(&md)
    );
    assert_eq!(
        Some(partner(&md).sha256),
        squeeze::files::content_digest(&mc)
    );
    // A matching pair loads quietly.
    squeeze()
        .args(["eval", "--no-timing", "--model"])
        .arg(&out)
        .arg("--data")
        .arg(&data)
        .assert()
        .success()
        .stderr(predicate::str::contains("pair").not());
    // Replace the dense file by one of another run (as a run stopped between the two renames
    // would leave it): both files now say so.
    let old = dir.path().join("old");
    std::fs::create_dir(&old).expect("mkdir");
    squeeze()
        .args(["apply", "--bits", "4", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(old.join("c.safetensors"))
        .arg("--dense-out")
        .arg(old.join("d.safetensors"))
        .assert()
        .success();
    std::fs::copy(old.join("d.safetensors"), &dense).expect("copy");
    for file in [&out, &dense] {
        squeeze()
            .args(["eval", "--no-timing", "--model"])
            .arg(file)
            .arg("--data")
            .arg(&data)
            .assert()
            .success()
            .stderr(predicate::str::contains("the pair no longer matches"));
    }
}

#[test]
fn apply_writes_the_same_bytes_for_the_same_inputs() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = root().join("assets/models/lenet-300-100.safetensors");
    let mut files = Vec::new();
    for name in ["a.safetensors", "b.safetensors"] {
        let out = dir.path().join(name);
        squeeze()
            .args(["apply", "--sparsity", "0.5", "--bits", "4", "--model"])
            .arg(&model)
            .arg("--out")
            .arg(&out)
            .assert()
            .success();
        files.push(std::fs::read(&out).expect("read"));
    }
    assert!(files[0] == files[1], "two runs wrote different bytes");
}

#[test]
fn train_checks_its_output_before_training() {
    let dir = tempfile::tempdir().expect("tmp");
    let arch = dir.path().join("a.toml");
    std::fs::write(
        &arch,
        "[input]\nshape = [4]\n[[layer]]\nop = \"linear\"\nweight = \"fc.weight\"\nout_features = 3\n",
    )
    .expect("write");
    let body = "a,b,c,d,label\n1,0,0,0,0\n0,2,0,0,1\n0,0,3,0,2\n";
    let data = csv(dir.path(), "d.csv", body);
    let train = |out: &Path| {
        let mut c = squeeze();
        c.args(["train", "--epochs", "1", "--arch"])
            .arg(&arch)
            .arg("--data")
            .arg(&data)
            .arg("--test")
            .arg(&data)
            .arg("--out")
            .arg(out);
        c
    };
    train(&data)
        .assert()
        .failure()
        .stderr(predicate::str::contains("same file as --data"))
        .stderr(predicate::str::contains("training").not());
    assert_eq!(std::fs::read_to_string(&data).expect("read"), body);
    train(&arch)
        .assert()
        .failure()
        .stderr(predicate::str::contains("same file as --arch"));
    train(&dir.path().join("missing/m.safetensors"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("does not exist"))
        .stderr(predicate::str::contains("training").not());
}

#[test]
fn the_explorer_export_never_replaces_its_model_or_data() {
    use squeeze::explore::eval::Evaluator;
    let dir = tempfile::tempdir().expect("tmp");
    let model_path = dir.path().join("model.safetensors");
    std::fs::rename(tiny_model(dir.path()), &model_path).expect("rename");
    let before = std::fs::read(&model_path).expect("read");
    let body = "a,b,c,d,label\n1,0,0,0,0\n0,2,0,0,1\n";
    let data = csv(dir.path(), "d.csv", body);
    let model = squeeze::model::load(&model_path).expect("load").model;
    let set = squeeze::data::load(&data, &Default::default()).expect("data");
    let inputs = set
        .prepare(&model.input, model.num_classes())
        .expect("prepare");
    let info = squeeze::explore::info::ModelInfo::from_model(&model, "d", set.len());
    let config = squeeze::explore::config::Config::dense(info.layers.len());
    let ev =
        squeeze::explore::model_evaluator::ModelEvaluator::new(model, info, inputs, set.labels, 2);
    // Exporting into the model's own folder would replace model.safetensors.
    let err = ev
        .export(&config, dir.path())
        .expect_err("the model is in the folder")
        .to_string();
    assert!(err.contains("same file as input"), "{err}");
    assert!(err.contains("model.safetensors"), "{err}");
    assert_eq!(std::fs::read(&model_path).expect("read"), before);
    assert!(
        !dir.path().join("recipe.toml").exists(),
        "nothing is written"
    );
    // Another input named like an exported file is protected too.
    let out = dir.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    let named = csv(&out, "measurement.json", body);
    let ev = ev.with_inputs(vec![named.clone()]);
    let err = ev
        .export(&config, &out)
        .expect_err("an input in the folder")
        .to_string();
    assert!(err.contains("measurement.json"), "{err}");
    assert_eq!(std::fs::read_to_string(&named).expect("read"), body);
    // Elsewhere the export goes through.
    let fine = dir.path().join("fine");
    let written = ev.export(&config, &fine).expect("export");
    assert_eq!(written.len(), 3);
}

// ---- Absurd or corrupted input is an answer --------------------------------------------------

type Meta = std::collections::BTreeMap<String, String>;

/// Rewrites a safetensors file as another program would (no checksum record): `edit` changes
/// its metadata and tensors (name → dtype, shape, bytes).
fn rewrite(path: &Path, edit: impl FnOnce(&mut Meta, &mut Vec<squeeze::files::TensorBytes>)) {
    let bytes = std::fs::read(path).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut meta = squeeze::files::read_metadata(path).expect("metadata");
    let mut tensors: Vec<squeeze::files::TensorBytes> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    meta.remove(squeeze::files::CHECKSUM_KEY);
    edit(&mut meta, &mut tensors);
    let out = squeeze::files::serialize(&tensors, &meta).expect("serialize");
    std::fs::write(path, out).expect("write");
}

/// The tiny model compressed to 4 bits, asymmetric (u8 zero points), with an f32 copy.
fn tiny_compressed(dir: &Path) -> PathBuf {
    let model = tiny_model(dir);
    let out = dir.join("c.safetensors");
    squeeze()
        .args(["apply", "--bits", "4", "--scheme", "asymmetric", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    out
}

/// Runs `squeeze eval` on `model` and expects a one-line error containing every `expect`.
fn eval_fails(model: &Path, data: &Path, expect: &[&str]) {
    let out = squeeze()
        .args(["eval", "--no-timing", "--model"])
        .arg(model)
        .arg("--data")
        .arg(data)
        .assert()
        .failure()
        .code(1)
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    for e in expect {
        assert!(err.contains(e), "expected '{e}' in: {err}");
    }
}

#[test]
fn a_flipped_bit_in_a_squeeze_file_is_reported_as_corruption() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = csv(dir.path(), "d.csv", "a,b,c,d,label\n1,0,0,0,0\n0,2,0,0,1\n");
    let c = tiny_compressed(dir.path());
    let good = std::fs::read(&c).expect("read");
    let header = u64::from_le_bytes(good[..8].try_into().expect("8")) as usize;
    let json: serde_json::Value = serde_json::from_slice(&good[8..8 + header]).expect("json");
    let start = json["fc.scales"]["data_offsets"][0]
        .as_u64()
        .expect("offset") as usize;
    let mut bad = good.clone();
    bad[8 + header + start + 1] ^= 0x04;
    std::fs::write(&c, &bad).expect("write");
    eval_fails(
        &c,
        &data,
        &[
            "c.safetensors",
            "file is corrupt (checksum mismatch in fc.scales)",
        ],
    );
    // A metadata edit is caught as well.
    let mut bad = good.clone();
    let at = good
        .windows(8)
        .position(|w| w == b"bits = 4")
        .expect("the recipe in the header");
    bad[at + 7] = b'5';
    std::fs::write(&c, &bad).expect("write");
    eval_fails(&c, &data, &["checksum mismatch in the metadata"]);
    // The dense files squeeze writes carry one too.
    let model = tiny_model(dir.path());
    let d = dir.path().join("d.safetensors");
    apply_tiny(&model, &[os("--out"), os(&c), os("--dense-out"), os(&d)]).success();
    let mut bytes = std::fs::read(&d).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&d, &bytes).expect("write");
    eval_fails(&d, &data, &["file is corrupt (checksum mismatch in fc."]);
}

#[test]
fn metadata_out_of_range_is_refused_at_load() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = csv(dir.path(), "d.csv", "a,b,c,d,label\n1,0,0,0,0\n0,2,0,0,1\n");
    let c = tiny_compressed(dir.path());
    let good = std::fs::read(&c).expect("read");
    type Edit = Box<dyn Fn(&mut Meta, &mut Vec<squeeze::files::TensorBytes>)>;
    let cases: Vec<(Edit, &[&str])> = vec![
        (
            Box::new(|m, _| {
                let v = m["squeeze.input"].replace("\"std\":[1.0]", "\"std\":[0.0]");
                m.insert("squeeze.input".into(), v);
            }),
            &["squeeze.input", "std non-zero"],
        ),
        (
            Box::new(|m, _| {
                let v = m["squeeze.layers"].replace("\"cols\":4", "\"cols\":1099511627776");
                m.insert("squeeze.layers".into(), v);
            }),
            &["c.safetensors", "fc"],
        ),
        (
            Box::new(|_, t| {
                let s = t.iter_mut().find(|t| t.0 == "fc.scales").expect("scales");
                s.3[..4].copy_from_slice(&3e38f32.to_le_bytes());
            }),
            &["fc.scales", "out of range"],
        ),
        (
            Box::new(|_, t| {
                let z = t
                    .iter_mut()
                    .find(|t| t.0 == "fc.zero_points")
                    .expect("zero points");
                z.3[0] = 255;
            }),
            &["fc.zero_points", "outside 0..=15"],
        ),
    ];
    for (edit, expect) in cases {
        std::fs::write(&c, &good).expect("write");
        rewrite(&c, edit);
        eval_fails(&c, &data, expect);
    }
    // Without the checksum record (as another program would write it) an intact file loads.
    std::fs::write(&c, &good).expect("write");
    rewrite(&c, |_, _| {});
    squeeze()
        .args(["eval", "--no-timing", "--model"])
        .arg(&c)
        .arg("--data")
        .arg(&data)
        .assert()
        .success();
}

fn arch_model(dir: &Path, arch: &str, tensors: &[(&str, Vec<usize>)]) -> PathBuf {
    let named: Vec<_> = tensors
        .iter()
        .map(|(n, s)| {
            let len = s.iter().product();
            (n.to_string(), s.clone(), vec![0.5f32; len])
        })
        .collect();
    write_model(dir, "arch.safetensors", arch, &named)
}

#[test]
fn absurd_shapes_are_refused_with_the_figure() {
    let dir = tempfile::tempdir().expect("tmp");
    let conv = |input: &str, padding: &str| {
        format!(
            "[input]\nshape = {input}\n[[layer]]\nop = \"conv2d\"\nname = \"c\"\nweight = \"c.weight\"\npadding = {padding}\n[[layer]]\nop = \"global_avgpool\"\n"
        )
    };
    // A padding of 2^62 used to wrap to an output of 9223372036854775832.
    let m = arch_model(
        dir.path(),
        &conv("[1, 8, 8]", "4611686018427387904"),
        &[("c.weight", vec![2, 1, 3, 3])],
    );
    squeeze()
        .args(["info", "--model"])
        .arg(&m)
        .assert()
        .failure()
        .code(1)
        .stderr(predicate::str::contains("too large"))
        .stderr(predicate::str::contains("9223372036854775832").not());
    // A million by a million input with a consistent graph.
    let m = arch_model(
        dir.path(),
        &conv("[1, 1000000, 1000000]", "0"),
        &[("c.weight", vec![2, 1, 3, 3])],
    );
    squeeze()
        .args(["info", "--model"])
        .arg(&m)
        .assert()
        .failure()
        .code(1)
        .stderr(predicate::str::contains("TiB, more than the memory limit"));
    // The limit is a flag: low enough, it refuses even the bundled model; high enough, a large
    // one passes the check.
    let bundled = root().join("assets/models/lenet-300-100.safetensors");
    squeeze()
        .args(["info", "--memory-limit", "64K", "--model"])
        .arg(&bundled)
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "more than the memory limit of 64.0 KiB",
        ));
    squeeze()
        .args(["info", "--memory-limit", "1T", "--model"])
        .arg(&bundled)
        .assert()
        .success();
}

#[test]
fn train_refuses_huge_layers_before_allocating() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = csv(dir.path(), "d.csv", "a,b,c,d,label\n1,0,0,0,0\n0,2,0,0,1\n");
    for (layer, expect) in [
        (
            "op = \"linear\"\nweight = \"fc.weight\"\nout_features = 1000000000\n",
            "needs",
        ),
        (
            "op = \"linear\"\nweight = \"fc.weight\"\nout_features = 4611686018427387904\n",
            "needs",
        ),
    ] {
        let arch = dir.path().join("a.toml");
        std::fs::write(&arch, format!("[input]\nshape = [4]\n[[layer]]\n{layer}")).expect("write");
        squeeze()
            .args(["train", "--memory-limit", "16G", "--epochs", "1", "--arch"])
            .arg(&arch)
            .arg("--data")
            .arg(&data)
            .arg("--test")
            .arg(&data)
            .arg("--out")
            .arg(dir.path().join("m.safetensors"))
            .timeout(std::time::Duration::from_secs(60))
            .assert()
            .failure()
            .code(1)
            .stderr(predicate::str::contains(expect))
            .stderr(predicate::str::contains("memory limit"));
    }
    // Huge conv widths likewise.
    let arch = dir.path().join("c.toml");
    std::fs::write(
        &arch,
        "[input]\nshape = [1, 2, 2]\n[[layer]]\nop = \"conv2d\"\nweight = \"c.weight\"\nout_channels = 1000\nkernel = 2\n[[layer]]\nop = \"conv2d\"\nweight = \"d.weight\"\nout_channels = 100000000\nkernel = 1\n[[layer]]\nop = \"flatten\"\n",
    )
    .expect("write");
    squeeze()
        .args(["train", "--memory-limit", "16G", "--epochs", "1", "--arch"])
        .arg(&arch)
        .arg("--data")
        .arg(&data)
        .arg("--test")
        .arg(&data)
        .arg("--out")
        .arg(dir.path().join("m.safetensors"))
        .timeout(std::time::Duration::from_secs(60))
        .assert()
        .failure()
        .stderr(predicate::str::contains("memory limit"));
}

#[test]
fn quick_flags_out_of_range_are_refused_like_a_recipe() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_model(dir.path());
    let data = csv(dir.path(), "d.csv", "a,b,c,d,label\n1,0,0,0,0\n0,2,0,0,1\n");
    for s in ["NaN", "-0.5", "1.5", "inf"] {
        squeeze()
            .args(["eval", "--no-timing", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg(format!("--sparsity={s}"))
            .assert()
            .failure()
            .stderr(predicate::str::contains("--sparsity"))
            .stderr(predicate::str::contains("[0, 1)"));
    }
}

#[test]
fn non_finite_parameters_are_refused_once_at_load() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = csv(dir.path(), "d.csv", "a,b,c,d,label\n1,0,0,0,0\n0,2,0,0,1\n");
    // A NaN slope given in a sidecar description (JSON metadata cannot even hold one).
    let arch = "[input]\nshape = [4]\n[[layer]]\nop = \"linear\"\nweight = \"fc.weight\"\n[[layer]]\nop = \"leaky_relu\"\n";
    let leaky = arch_model(dir.path(), arch, &[("fc.weight", vec![3, 4])]);
    std::fs::write(
        dir.path().join("arch.arch.toml"),
        format!("{arch}slope = nan\n"),
    )
    .expect("write");
    eval_fails(&leaky, &data, &["slope", "finite"]);
    let out = dir.path().join("never.safetensors");
    apply_tiny(&leaky, &[os("--out"), os(&out)]).failure();
    assert!(!out.exists());
    // A negative running variance folds to NaN.
    let p = write_model(
        &dir,
        "bn.safetensors",
        "[input]\nshape = [4]\n[[layer]]\nop = \"linear\"\nweight = \"fc.weight\"\n[[layer]]\nop = \"batchnorm\"\nweight = \"bn.weight\"\nbias = \"bn.bias\"\nrunning_mean = \"bn.running_mean\"\nrunning_var = \"bn.running_var\"\n",
        &[
            ("fc.weight".into(), vec![3, 4], vec![0.5; 12]),
            ("bn.weight".into(), vec![3], vec![1.0; 3]),
            ("bn.bias".into(), vec![3], vec![0.0; 3]),
            ("bn.running_mean".into(), vec![3], vec![0.0; 3]),
            ("bn.running_var".into(), vec![3], vec![1.0, -2.0, 1.0]),
        ],
    );
    eval_fails(&p, &data, &["bn", "channel 1"]);
}

/// Writes `body` gzip-compressed (fast: the test data is runs of zeros).
fn gzip(path: &Path, header: &[u8], zeros: usize) {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(path).expect("create"),
        flate2::Compression::fast(),
    );
    gz.write_all(header).expect("gzip");
    let block = vec![0u8; 1 << 20];
    let mut left = zeros;
    while left > 0 {
        let n = left.min(block.len());
        gz.write_all(&block[..n]).expect("gzip");
        left -= n;
    }
    gz.finish().expect("gzip");
}

/// An IDX header: unsigned bytes of the given dimensions.
fn idx_header(dims: &[u32]) -> Vec<u8> {
    let mut h = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        h.extend(d.to_be_bytes());
    }
    h
}

/// The error line of a command that must fail within `secs` seconds.
fn fails_quickly(cmd: &mut Command, secs: u64) -> String {
    let out = cmd
        .timeout(std::time::Duration::from_secs(secs))
        .assert()
        .failure()
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

#[cfg(unix)]
#[test]
fn endless_and_special_inputs_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_model(dir.path());
    let fifo = dir.path().join("pipe.csv");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    for (what, data) in [
        ("character device", Path::new("/dev/zero")),
        ("FIFO", &fifo),
    ] {
        let err = fails_quickly(
            squeeze()
                .args(["eval", "--model"])
                .arg(&model)
                .arg("--data")
                .arg(data),
            20,
        );
        assert!(
            err.contains(&data.display().to_string()) && err.contains(what),
            "{err}"
        );
    }
    let data = csv(dir.path(), "d.csv", "a,b,c,d,label\n1,0,0,0,0\n");
    for args in [
        vec!["info"],
        vec!["eval", "--data", data.to_str().expect("utf-8")],
    ] {
        let err = fails_quickly(squeeze().args(&args).args(["--model", "/dev/zero"]), 20);
        assert!(
            err.contains("/dev/zero") && err.contains("character device"),
            "{err}"
        );
    }
}

#[test]
fn a_gzip_bomb_is_refused_with_the_figure_or_read_only_as_far_as_limit() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_model(dir.path());
    // 100 MB of samples (400 MB as f32) and 25 MB of labels in well under a megabyte.
    let n = 25_000_000u32;
    let images = dir.path().join("bomb-images-idx3-ubyte.gz");
    gzip(&images, &idx_header(&[n, 4]), n as usize * 4);
    gzip(
        &dir.path().join("bomb-labels-idx1-ubyte.gz"),
        &idx_header(&[n]),
        n as usize,
    );
    assert!(std::fs::metadata(&images).expect("size").len() < 1 << 20);
    let eval = || {
        let mut c = squeeze();
        c.args([
            "eval",
            "--memory-limit",
            "64M",
            "--format",
            "json",
            "--model",
        ])
        .arg(&model)
        .arg("--data")
        .arg(&images);
        c
    };
    let err = fails_quickly(&mut eval(), 60);
    assert!(
        err.contains("bomb-images-idx3-ubyte.gz")
            && err.contains("381 MiB")
            && err.contains("memory limit of 64.0 MiB"),
        "{err}"
    );
    // Read as a stream, the first samples cost what they hold.
    let v = json_of(
        eval()
            .args(["--limit", "3"])
            .timeout(std::time::Duration::from_secs(60)),
    );
    assert_eq!(v["samples"], 3);
    // A header claiming more than deflate can expand the file to.
    let liar = dir.path().join("liar-images-idx3-ubyte.gz");
    gzip(&liar, &idx_header(&[1 << 31, 4]), 0);
    gzip(
        &dir.path().join("liar-labels-idx1-ubyte.gz"),
        &idx_header(&[1 << 31]),
        0,
    );
    let err = fails_quickly(
        squeeze()
            .args(["eval", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&liar),
        20,
    );
    assert!(
        err.contains("liar-images-idx3-ubyte.gz")
            && err.contains("more than this gzip data can hold"),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn a_model_larger_than_memory_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().expect("tmp");
    // A linear layer of 2^32 outputs: 64 GiB of weights in a sparse file that takes no disk.
    let rows: u64 = 1 << 32;
    let spec = ArchSpec::from_toml(
        "[input]\nshape = [4]\n[[layer]]\nop = \"linear\"\nname = \"fc\"\nweight = \"fc.weight\"\nbias = \"fc.bias\"\n",
    )
    .expect("arch");
    let w_bytes = rows * 4 * 4;
    let header = serde_json::json!({
        "__metadata__": {"squeeze.arch": spec.to_json()},
        "fc.bias": {"dtype": "F32", "shape": [rows], "data_offsets": [0, rows * 4]},
        "fc.weight": {"dtype": "F32", "shape": [rows, 4], "data_offsets": [rows * 4, rows * 4 + w_bytes]},
    });
    let mut json = serde_json::to_vec(&header).expect("json");
    json.resize(json.len().next_multiple_of(8), b' ');
    let path = dir.path().join("huge.safetensors");
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend(&json);
    std::fs::write(&path, &bytes).expect("write");
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open");
    f.set_len(bytes.len() as u64 + rows * 4 + w_bytes)
        .expect("sparse");
    let err = fails_quickly(
        squeeze()
            .args(["info", "--memory-limit", "1G", "--model"])
            .arg(&path),
        60,
    );
    assert!(
        err.contains("huge.safetensors") && err.contains("memory limit of 1.00 GiB"),
        "{err}"
    );
}
