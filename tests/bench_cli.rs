//! `squeeze bench` and the layer tables through the real binary: the candle reference only when
//! asked for, `--quick` saying how many samples it measured, JSON on stdout with the progress
//! on stderr, and columns that stay aligned under long layer names.

// clippy.toml lets #[test] functions unwrap; this file's helpers do too.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

mod common;
use common::{asset, squeeze, write_model};

/// The bundled LeNet-300-100 and its MNIST test set (10,000 samples).
fn assets() -> (PathBuf, PathBuf) {
    (
        asset("models/lenet-300-100.safetensors"),
        asset("data/mnist/t10k-images-idx3-ubyte.gz"),
    )
}

/// Runs `squeeze ARGS` that must succeed: (stdout, stderr).
fn run(args: &[&str]) -> (String, String) {
    let out = squeeze().args(args).assert().success().get_output().clone();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn bench_measures_the_candle_reference_only_when_asked() {
    let (model, data) = assets();
    let base = [
        "bench",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--limit",
        "200",
        "--only",
        "--repeat",
        "1",
    ];
    let (text, err) = run(&base);
    assert!(text.contains("dense f32"), "{text}");
    assert!(!text.contains("candle"), "{text}");
    assert!(text.contains("on 200 samples of"), "{text}");
    // Off a terminal: one line per variant as it starts, and the total.
    assert!(err.contains("bench [1/1] dense f32"), "{err}");
    assert!(err.contains("bench: measured in"), "{err}");

    let (text, err) = run(&[&base[..], &["--reference"]].concat());
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("dense f32"))
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(
        rows[0].starts_with("dense f32 (candle reference)"),
        "{text}"
    );
    assert!(
        err.contains("bench [2/2] dense f32 (candle reference)"),
        "{err}"
    );

    // JSON: stdout is the rows alone, whatever stderr says.
    let (json, _) = run(&[&base[..], &["--reference", "--format", "json"]].concat());
    let v: serde_json::Value = serde_json::from_str(&json).expect("stdout is JSON");
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dense f32 (candle reference)", "dense f32"]);
    // --quiet: nothing on stderr.
    let (_, err) = run(&[&base[..], &["--quiet"]].concat());
    assert!(err.is_empty(), "{err}");
}

#[test]
fn bench_quick_says_how_many_samples_it_measured() {
    let (model, data) = assets();
    let args = [
        "bench",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--only",
        "--quick",
    ];
    let (text, _) = run(&args);
    assert!(text.contains("on 256 of 10000 samples of"), "{text}");
    assert!(text.contains("--quick"), "{text}");
    assert!(!text.contains("candle"), "{text}");
    let (json, _) = run(&[&args[..], &["--format", "json"]].concat());
    let v: serde_json::Value = serde_json::from_str(&json).expect("stdout is JSON");
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0]["samples"], 256, "{v}");
    // Fewer samples than the subset: all of them, and the line says so.
    let (text, _) = run(&[&args[..], &["--limit", "100"]].concat());
    assert!(text.contains("on 100 samples of"), "{text}");
}

/// Character offset of `needle` in `line` (panics when absent).
fn col(line: &str, needle: &str) -> usize {
    let at = line
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in {line:?}"));
    line[..at].chars().count()
}

/// A 4-input MLP whose first layer has a MobileNetV2-style long name, and a CSV set for it.
fn long_named(dir: &Path) -> (PathBuf, PathBuf) {
    let arch = "[input]\nshape = [4]\n[[layer]]\nop = \"linear\"\nname = \"features.10.conv.0.0\"\nweight = \"features.10.conv.0.0.weight\"\nbias = \"features.10.conv.0.0.bias\"\n[[layer]]\nop = \"relu\"\n[[layer]]\nop = \"linear\"\nname = \"fc\"\nweight = \"fc.weight\"\nbias = \"fc.bias\"\n";
    let eye: Vec<f32> = (0..16)
        .map(|i| if i % 5 == 0 { 1.0 } else { 0.0 })
        .collect();
    let model = write_model(
        dir,
        "long.safetensors",
        arch,
        &[
            ("features.10.conv.0.0.weight".into(), vec![4, 4], eye),
            ("features.10.conv.0.0.bias".into(), vec![4], vec![0.0; 4]),
            (
                "fc.weight".into(),
                vec![3, 4],
                (0..12)
                    .map(|i| if i % 5 == 0 { 1.0 } else { 0.0 })
                    .collect(),
            ),
            ("fc.bias".into(), vec![3], vec![0.0; 3]),
        ],
    );
    let data = dir.join("d.csv");
    std::fs::write(
        &data,
        "a,b,c,d,label\n1,0,0,0,0\n0,2,0,0,1\n0,0,3,0,2\n0,5,0,0,0\n",
    )
    .unwrap();
    (model, data)
}

#[test]
fn info_and_bench_columns_line_up_under_long_layer_names() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = long_named(dir.path());
    let (text, _) = run(&["info", "--model", s(&model)]);
    let lines: Vec<&str> = text.lines().collect();
    let header = lines.iter().find(|l| l.starts_with("layer")).unwrap();
    let rows: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("features.") || l.starts_with("fc "))
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    for row in &rows {
        // The op column starts where its header does, and so does the output shape.
        assert_eq!(col(row, "linear"), col(header, "op"), "{text}");
        assert_eq!(col(row, "["), col(header, "output"), "{text}");
    }
    // The total line's parameter count ends where the header's `params` does.
    let total = lines.iter().find(|l| l.starts_with("total")).unwrap();
    assert_eq!(
        col(total, "35") + 2,
        col(header, "params") + "params".len(),
        "{text}"
    );

    // A compressed file's per-layer list in bench.
    let packed = dir.path().join("packed.safetensors");
    run(&[
        "apply",
        "--model",
        s(&model),
        "--bits",
        "8",
        "--out",
        s(&packed),
    ]);
    let (text, _) = run(&[
        "bench",
        "--model",
        s(&packed),
        "--data",
        s(&data),
        "--repeat",
        "1",
    ]);
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .find(|l| l.trim_start().starts_with("layer"))
        .unwrap_or_else(|| panic!("{text}"));
    let rows: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.trim_start().starts_with("features.") || l.trim_start().starts_with("fc "))
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    for row in &rows {
        assert_eq!(col(row, "dense+"), col(header, "stored as"), "{text}");
    }
}

#[test]
fn sensitivity_off_a_terminal_reports_progress_in_lines() {
    let (model, data) = assets();
    let args = [
        "sensitivity",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--limit",
        "100",
        "--no-session",
        "--sparsities",
        "0.5,0.9",
        "--bits",
        "none",
    ];
    let (text, err) = run(&args);
    assert!(text.contains("dense top-1"), "{text}");
    let n = "sensitivity: ".len();
    let last = err
        .lines()
        .rfind(|l| l.starts_with("sensitivity: ") && l.contains(" points, "))
        .unwrap_or_else(|| panic!("no progress line: {err}"));
    let (done, total) = last[n..]
        .split_once(' ')
        .unwrap()
        .0
        .split_once('/')
        .unwrap();
    assert_eq!(done, total, "the last line is the end: {err}");
    let (_, err) = run(&[&args[..], &["--quiet"]].concat());
    assert!(!err.contains(" points, "), "{err}");
}
