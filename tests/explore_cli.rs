//! The headless exploration commands through the real binary on the bundled LeNet-300-100 (a
//! few hundred test images, to stay quick): sensitivity and its cache, a sharded sweep merged
//! against the whole sweep, figures equal to `squeeze eval`'s, a search whose answer `eval`
//! reads back within the budget, and a journal path that is a directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_squeeze");

fn assets() -> Option<(PathBuf, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = root.join("assets/models/lenet-300-100.safetensors");
    let data = root.join("assets/data/mnist/t10k-images-idx3-ubyte.gz");
    (model.exists() && data.exists()).then_some((model, data))
}

fn squeeze(args: &[&str], model: &Path, data: &Path, journal: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(data)
        .arg("--session")
        .arg(journal)
        .args(["--limit", "300", "--quiet"])
        .output()
        .expect("run squeeze")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sensitivity_is_measured_once_and_found_again() {
    let Some((model, data)) = assets() else {
        eprintln!("skipping: the bundled model or data is missing");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("s.jsonl");
    let plot = dir.path().join("sens.svg");
    let args = [
        "sensitivity",
        "--sparsities",
        "0.5,0.9",
        "--bits",
        "4",
        "--format",
        "json",
        "--plot",
        plot.to_str().unwrap(),
    ];
    let first: serde_json::Value =
        serde_json::from_str(&ok(&squeeze(&args, &model, &data, &journal))).unwrap();
    assert_eq!(first["measured"], 1 + 3 * 3, "{first}");
    assert_eq!(first["layers"].as_array().unwrap().len(), 3);
    assert_eq!(first["grid"]["sparsities"][1], 0.9);
    let fc1_90 = &first["layers"][0]["prune"][1];
    assert_eq!(fc1_90["status"], "measured");
    assert!(fc1_90["delta_pt"].as_f64().unwrap() < 0.0);
    assert_eq!(first["inputs"]["samples"], 300);
    assert_eq!(
        first["inputs"]["model"]["sha256"].as_str().unwrap().len(),
        64
    );
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.contains("fc1") && svg.contains("sparsity"),
        "the plot names its curves"
    );

    // The rerun finds every point in the journal: nothing measured, the same table.
    let again: serde_json::Value =
        serde_json::from_str(&ok(&squeeze(&args, &model, &data, &journal))).unwrap();
    assert_eq!(again["measured"], 0);
    assert_eq!(again["layers"], first["layers"]);
    let csv = ok(&squeeze(
        &[
            "sensitivity",
            "--sparsities",
            "0.5,0.9",
            "--bits",
            "4",
            "--format",
            "csv",
        ],
        &model,
        &data,
        &journal,
    ));
    assert!(csv.starts_with("layer,kind,value,accuracy"), "{csv}");
    assert_eq!(csv.lines().count(), 1 + 3 * 3);
}

#[test]
fn a_directory_given_as_the_journal_is_refused_at_once() {
    let Some((model, data)) = assets() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let out = squeeze(&["sensitivity"], &model, &data, dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is a directory"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(30));
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn sharded_sweeps_merge_into_the_whole_sweep() {
    let Some((model, data)) = assets() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let grid = dir.path().join("grid.toml");
    std::fs::write(
        &grid,
        "[default]\nprune = \"l1\"\nsparsity = [0.5, 0.9]\nbits = [8, 4]\n[layer.fc3]\nsparsity = [0.0, 0.5]\n",
    )
    .unwrap();
    let run = |journal: &str, out: &Path, shard: Option<&str>| {
        let mut args = vec![
            "sweep",
            "--grid",
            grid.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--no-latency",
        ];
        if let Some(s) = shard {
            args.extend(["--shard", s]);
        }
        ok(&squeeze(&args, &model, &data, &dir.path().join(journal)))
    };
    let whole = dir.path().join("whole.jsonl");
    run("a.jsonl", &whole, None);
    // Each shard on its own journal, as on separate machines.
    let mut shards = Vec::new();
    for i in 0..3 {
        let out = dir.path().join(format!("part{i}.jsonl"));
        run(&format!("j{i}.jsonl"), &out, Some(&format!("{i}/3")));
        shards.push(out);
    }
    let merged = dir.path().join("all.jsonl");
    let mut cmd = Command::new(BIN);
    cmd.arg("merge")
        .args(&shards)
        .arg(&shards[0])
        .arg("--out")
        .arg(&merged);
    let summary = ok(&cmd.output().unwrap());
    // The first shard given twice: its three points are left out once.
    assert!(
        summary.contains("8 points") && summary.contains("3 duplicates"),
        "{summary}"
    );
    let (a, b) = (lines(&whole), lines(&merged));
    assert_eq!(a.len(), 8);
    assert_eq!(a, b, "the merged shards are the whole sweep");
    assert!(a.iter().any(|l| l["pareto"] == true));
    assert!(
        a.iter()
            .all(|l| l["inputs"]["model"]["sha256"].as_str().is_some())
    );

    // A point's figures are `squeeze eval`'s for the same recipe.
    let point = &a[3];
    let recipe = dir.path().join("r.toml");
    let r: squeeze::compress::Recipe = serde_json::from_value(point["recipe"].clone()).unwrap();
    std::fs::write(&recipe, r.to_toml()).unwrap();
    let out = Command::new(BIN)
        .args([
            "eval",
            "--format",
            "json",
            "--no-timing",
            "--limit",
            "300",
            "--model",
        ])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .arg("--recipe")
        .arg(&recipe)
        .output()
        .unwrap();
    let eval: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(eval["accuracy"], point["accuracy"]);
    assert_eq!(eval["size_bytes"], point["size_bytes"]);
}

#[test]
fn search_writes_a_recipe_within_the_budget() {
    let Some((model, data)) = assets() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("best.toml");
    let journal = dir.path().join("s.jsonl");
    let run = |seed: &str| {
        let text = ok(&squeeze(
            &[
                "search",
                "--budget",
                "size=40KB",
                "--time",
                "60s",
                "--restarts",
                "0",
                "--seed",
                seed,
                "--format",
                "json",
                "--out",
                out.to_str().unwrap(),
            ],
            &model,
            &data,
            &journal,
        ));
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    let first = run("5");
    assert_eq!(first["best"]["meets_budget"], true, "{first}");
    let size = first["best"]["figures"]["size_bytes"].as_u64().unwrap();
    assert!(size <= 40_000, "{size}");
    let recipe = std::fs::read_to_string(&out).unwrap();
    assert!(recipe.starts_with("# squeeze"), "{recipe}");
    assert!(
        recipe.contains("sha256") && recipe.contains("seed 5"),
        "{recipe}"
    );
    // `squeeze eval` reads the answer as it is and measures the same size.
    let eval = Command::new(BIN)
        .args([
            "eval",
            "--format",
            "json",
            "--no-timing",
            "--limit",
            "300",
            "--model",
        ])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .arg("--recipe")
        .arg(&out)
        .output()
        .unwrap();
    let eval: serde_json::Value = serde_json::from_str(&ok(&eval)).unwrap();
    assert_eq!(eval["size_bytes"].as_u64(), Some(size));
    assert_eq!(
        eval["accuracy"],
        first["best"]["figures"]["accuracy"]["value"]
    );
    // Same seed, same answer (now from the cache).
    let again = run("5");
    assert_eq!(again["best"]["config"], first["best"]["config"]);

    // An impossible budget: the closest point is written, marked, and the exit says so.
    let bad = squeeze(
        &[
            "search",
            "--budget",
            "size=2KB",
            "--restarts",
            "0",
            "--out",
            out.to_str().unwrap(),
        ],
        &model,
        &data,
        &journal,
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("misses it") && err.contains("holds"), "{err}");
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .contains("MISSES size")
    );
}
