//! The headless exploration commands through the real binary on the bundled LeNet-300-100 (a
//! few hundred test images, to stay quick): sensitivity and its cache, a sharded sweep merged
//! against the whole sweep, figures equal to `squeeze eval`'s, a search whose answer `eval`
//! reads back within the budget, and a journal path that is a directory.

// clippy.toml lets #[test] functions unwrap; this file's helpers do too.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::{asset, squeeze};

/// The bundled LeNet-300-100 and its MNIST test set.
fn assets() -> (PathBuf, PathBuf) {
    (
        asset("models/lenet-300-100.safetensors"),
        asset("data/mnist/t10k-images-idx3-ubyte.gz"),
    )
}

/// `squeeze ARGS --model M --data D --session J` on 300 samples, quietly.
fn session(args: &[&str], model: &Path, data: &Path, journal: &Path) -> assert_cmd::Command {
    let mut cmd = squeeze();
    cmd.args(args)
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(data)
        .arg("--session")
        .arg(journal)
        .args(["--limit", "300", "--quiet"]);
    cmd
}

/// `squeeze eval` of `model` compressed by `recipe` on the first 300 samples, without timing:
/// its JSON report.
fn eval_json(model: &Path, data: &Path, recipe: &Path) -> serde_json::Value {
    let mut cmd = squeeze();
    cmd.args(["eval", "--format", "json", "--no-timing", "--limit", "300"])
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(data)
        .arg("--recipe")
        .arg(recipe);
    serde_json::from_str(&ok(&mut cmd)).expect("eval's report is JSON")
}

/// Runs a command that must succeed; its stdout.
fn ok(cmd: &mut assert_cmd::Command) -> String {
    String::from_utf8_lossy(&cmd.assert().success().get_output().stdout).into_owned()
}

/// Runs a command that must fail; its stderr.
fn fails(cmd: &mut assert_cmd::Command) -> String {
    String::from_utf8_lossy(&cmd.assert().failure().get_output().stderr).into_owned()
}

#[test]
fn sensitivity_is_measured_once_and_found_again() {
    let (model, data) = assets();
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
        serde_json::from_str(&ok(&mut session(&args, &model, &data, &journal))).unwrap();
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
        serde_json::from_str(&ok(&mut session(&args, &model, &data, &journal))).unwrap();
    assert_eq!(again["measured"], 0);
    assert_eq!(again["layers"], first["layers"]);
    let csv = ok(&mut session(
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
    let (model, data) = assets();
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let err = fails(&mut session(&["sensitivity"], &model, &data, dir.path()));
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
    let (model, data) = assets();
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
        ok(&mut session(
            &args,
            &model,
            &data,
            &dir.path().join(journal),
        ))
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
    let mut cmd = squeeze();
    cmd.arg("merge")
        .args(&shards)
        .arg(&shards[0])
        .arg("--out")
        .arg(&merged);
    let summary = ok(&mut cmd);
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
    let eval = eval_json(&model, &data, &recipe);
    assert_eq!(eval["accuracy"], point["accuracy"]);
    assert_eq!(eval["size_bytes"], point["size_bytes"]);
}

#[test]
fn search_writes_a_recipe_within_the_budget() {
    let (model, data) = assets();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("best.toml");
    let journal = dir.path().join("s.jsonl");
    let run = |seed: &str| {
        let text = ok(&mut session(
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
    let eval = eval_json(&model, &data, &out);
    assert_eq!(eval["size_bytes"].as_u64(), Some(size));
    assert_eq!(
        eval["accuracy"],
        first["best"]["figures"]["accuracy"]["value"]
    );
    // Same seed, same answer (now from the cache).
    let again = run("5");
    assert_eq!(again["best"]["config"], first["best"]["config"]);

    // An impossible budget: the closest point is written, marked, and the exit says so.
    let err = fails(&mut session(
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
    ));
    assert!(err.contains("misses it") && err.contains("holds"), "{err}");
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .contains("MISSES size")
    );
}

#[test]
fn info_and_bench_read_a_compressed_model() {
    let (model, data) = assets();
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("r.toml");
    std::fs::write(
        &recipe,
        "[default]\nbits = 8\n[layer.fc1]\nprune = \"l1\"\nsparsity = 0.9\nbits = 4\n",
    )
    .unwrap();
    let packed = dir.path().join("m.safetensors");
    let run = |args: &[&str]| ok(squeeze().args(args));
    run(&[
        "apply",
        "--model",
        model.to_str().unwrap(),
        "--recipe",
        recipe.to_str().unwrap(),
        "--out",
        packed.to_str().unwrap(),
    ]);
    let text = run(&["info", "--model", packed.to_str().unwrap()]);
    assert!(text.contains("stored as"), "{text}");
    assert!(text.contains("+u4/channel"), "{text}");
    assert!(text.contains("dense+u8/channel"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&run(&[
        "info",
        "--model",
        packed.to_str().unwrap(),
        "--format",
        "json",
    ]))
    .unwrap();
    let fc1 = &json["layers"][1];
    assert!(
        fc1["format"].as_str().unwrap().ends_with("+u4/channel"),
        "{fc1}"
    );
    assert!(fc1["bytes"].as_u64().unwrap() < 300 * 784 / 4, "{fc1}");
    let bench = run(&[
        "bench",
        "--model",
        packed.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--repeat",
        "1",
    ]);
    assert!(bench.contains("as stored"), "{bench}");
}

/// Checks that `html` nests its elements properly (void and self-closed elements aside) and
/// returns the names of the elements it opens, in order.
fn parse_html(html: &str) -> Vec<String> {
    const VOID: [&str; 6] = ["meta", "br", "img", "hr", "input", "link"];
    let mut stack: Vec<String> = Vec::new();
    let mut opened = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let end = rest.find('>').expect("an unclosed tag");
        let tag = &rest[..end];
        rest = &rest[end + 1..];
        if tag.starts_with('!') || tag.starts_with('?') {
            continue;
        }
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect::<String>()
            .to_ascii_lowercase();
        assert!(!name.is_empty(), "an empty tag <{tag}>");
        if tag.starts_with('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.as_str()),
                "</{name}> closes nothing open"
            );
        } else if !tag.ends_with('/') && !VOID.contains(&name.as_str()) {
            stack.push(name.clone());
            opened.push(name);
        } else {
            opened.push(name);
        }
    }
    assert!(stack.is_empty(), "left open: {stack:?}");
    opened
}

#[test]
fn the_report_is_one_self_contained_html_file() {
    let (model, data) = assets();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("s.jsonl");
    let out = dir.path().join("report.html");
    ok(&mut session(
        &["sensitivity", "--sparsities", "0.5,0.9", "--bits", "4"],
        &model,
        &data,
        &journal,
    ));
    ok(&mut session(
        &["report", "--out", out.to_str().unwrap()],
        &model,
        &data,
        &journal,
    ));
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    let elements = parse_html(&html);
    for e in ["html", "head", "title", "body", "table", "svg"] {
        assert!(elements.iter().any(|x| x == e), "no <{e}>");
    }
    for id in [
        "inputs",
        "configurations",
        "charts",
        "sensitivity",
        "recipes",
    ] {
        assert!(html.contains(&format!("id=\"{id}\"")), "no section {id}");
    }
    // Nothing is fetched: no external source, link or script.
    assert!(!html.contains(" src=") && !html.contains(" href=") && !html.contains("<script"));
    let digest = squeeze::files::sha256_file(&model).unwrap();
    assert!(html.contains(&digest), "the model's SHA-256 is missing");
    assert!(html.contains("fc1") && html.contains("dense"));
    // The report replaces nothing.
    fails(&mut session(
        &["report", "--out", out.to_str().unwrap()],
        &model,
        &data,
        &journal,
    ));
}

/// The rows of the table with id `id` in `html`: each row's cells as text.
fn table_rows(html: &str, id: &str) -> Vec<Vec<String>> {
    let start = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no table {id}"));
    let table = &html[start..start + html[start..].find("</table>").unwrap()];
    table
        .split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("<td>")
                .skip(1)
                .map(|c| c[..c.find("</td>").unwrap()].to_string())
                .collect::<Vec<String>>()
        })
        .filter(|cells| !cells.is_empty())
        .collect()
}

#[test]
fn report_curves_measures_the_whole_model_curves_and_tabulates_them() {
    let (model, data) = assets();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("s.jsonl");
    // Without --curves, and with nothing measured, there is no curves section.
    let plain = dir.path().join("plain.html");
    ok(&mut session(
        &["report", "--out", plain.to_str().unwrap()],
        &model,
        &data,
        &journal,
    ));
    let html = std::fs::read_to_string(&plain).unwrap();
    assert!(!html.contains("id=\"curves\""));

    let out = dir.path().join("report.html");
    ok(&mut session(
        &["report", "--curves", "--out", out.to_str().unwrap()],
        &model,
        &data,
        &journal,
    ));
    let html = std::fs::read_to_string(&out).unwrap();
    let elements = parse_html(&html);
    assert!(html.contains("<h2 id=\"curves\">Whole-model curves</h2>"));
    // The plot inlined in the section.
    let section =
        &html[html.find("id=\"curves\"").unwrap()..html.find("id=\"sensitivity\"").unwrap()];
    assert!(section.contains("<svg") && section.contains("Accuracy vs compression"));
    assert!(elements.iter().filter(|e| *e == "svg").count() >= 3);
    let global = table_rows(&html, "curve-global-l1");
    let bits = table_rows(&html, "curve-uniform-bits");
    let first: Vec<&str> = global.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        first,
        [
            "10%", "20%", "30%", "40%", "50%", "60%", "70%", "80%", "90%", "95%"
        ]
    );
    let first: Vec<&str> = bits.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        first,
        [
            "8 bits", "7 bits", "6 bits", "5 bits", "4 bits", "3 bits", "2 bits"
        ]
    );
    for row in global.iter().chain(&bits) {
        assert_eq!(row.len(), 4, "{row:?}");
        assert!(row[1].ends_with('%'), "accuracy {row:?}");
        assert!(row[2].ends_with('B'), "size {row:?}");
        assert!(row[3].ends_with('s'), "latency {row:?}");
    }
    // The points are journaled: a report without --curves now has them too.
    let again = dir.path().join("again.html");
    ok(&mut session(
        &["report", "--out", again.to_str().unwrap()],
        &model,
        &data,
        &journal,
    ));
    let html = std::fs::read_to_string(&again).unwrap();
    assert_eq!(table_rows(&html, "curve-global-l1").len(), 10);

    // The exact zeros after quantization, as journaled for the 2-bit point, are `squeeze
    // eval`'s for the same recipe: one definition. Nothing is pruned, yet weights are zero.
    use squeeze::explore::journal::Record;
    let (config, figures) = std::fs::read_to_string(&journal)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Record>(l).ok())
        .find_map(|r| match r {
            Record::Point {
                stage: squeeze::explore::eval::Stage::Full,
                config,
                figures,
                label: Some(label),
                ..
            } if label == "all layers: int2" => Some((config, figures)),
            _ => None,
        })
        .expect("the 2-bit point is journaled");
    let m = squeeze::model::load(&model).unwrap().model;
    let info = squeeze::explore::info::ModelInfo::from_model(&m, "mnist", 300);
    let recipe = dir.path().join("int2.toml");
    std::fs::write(&recipe, config.to_recipe(&info).to_toml()).unwrap();
    let eval = eval_json(&model, &data, &recipe);
    let zeros = figures.zeros.unwrap();
    assert_eq!(figures.sparsity, Some(0.0));
    assert!(zeros > 0.01, "{zeros}");
    assert!(
        (eval["zeros"].as_f64().unwrap() - zeros).abs() < 1e-12,
        "{eval}"
    );
}
