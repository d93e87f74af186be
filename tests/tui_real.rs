//! The explorer's real evaluator on the bundled LeNet-300-100 and MNIST test set: stages give
//! consistent figures, cancellation stops work, and an export is a recipe `squeeze eval
//! --recipe` reads back to the same accuracy and size.

use std::sync::atomic::AtomicBool;

use squeeze::compress::Bits;
use squeeze::compress::recipe::{PruneMethod, Scheme};
use squeeze::data::DataOptions;
use squeeze::explore::config::Config;
use squeeze::explore::eval::{EvalError, Evaluator, Stage};
use squeeze::explore::info::ModelInfo;
use squeeze::explore::model_evaluator::{ModelEvaluator, fingerprint};

mod common;
use common::{asset, squeeze};

/// The explorer's evaluator on the bundled LeNet-300-100 and MNIST test set, and their
/// fingerprint.
fn evaluator() -> (ModelEvaluator, u64) {
    let model = squeeze::model::load(&asset("models/lenet-300-100.safetensors"))
        .expect("the bundled model loads")
        .model;
    let set = squeeze::data::load(
        &asset("data/mnist/t10k-images-idx3-ubyte.gz"),
        &DataOptions::default(),
    )
    .expect("the bundled data loads");
    let inputs = set
        .prepare(&model.input, model.num_classes())
        .expect("the data fits the model");
    let info = ModelInfo::from_model(&model, "t10k", set.len());
    let fp = fingerprint(&model, &set);
    (
        ModelEvaluator::new(model, info, inputs, set.labels, 1000),
        fp,
    )
}

fn tuned(n: usize) -> Config {
    let mut c = Config::dense(n);
    c.layers[0].prune = PruneMethod::L1;
    c.layers[0].sparsity = 900;
    c.layers[0].bits = Bits::Int(6);
    c.layers[0].scheme = Scheme::Kmeans;
    c.layers[1].bits = Bits::Int(8);
    c
}

#[test]
fn stages_agree_and_exports_reload_in_the_cli() {
    let (ev, fp) = evaluator();
    let n = ev.info().layers.len();
    let never = AtomicBool::new(false);

    let dense = ev.evaluate(&Config::dense(n), Stage::Full, &never).unwrap();
    let acc = dense.accuracy.unwrap();
    assert_eq!(acc.samples, 10_000);
    assert_eq!(acc.half_width, 0.0);
    assert!(acc.value > 0.97, "{}", acc.value);
    assert_eq!(dense.size_bytes, dense.dense_bytes);
    assert_eq!(dense.sparsity, Some(0.0));

    let config = tuned(n);
    let quick = ev.evaluate(&config, Stage::Quick, &never).unwrap();
    let full = ev.evaluate(&config, Stage::Full, &never).unwrap();
    let q = quick.accuracy.unwrap();
    let f = full.accuracy.unwrap();
    assert_eq!(q.samples, 1000);
    assert!(q.half_width > 0.0 && q.half_width < 0.03);
    // The subset's estimate is within a generous range of the exact figure.
    assert!(
        (q.value - f.value).abs() < 3.0 * q.half_width + 0.005,
        "{q:?} vs {f:?}"
    );
    assert_eq!(quick.size_bytes, full.size_bytes);
    assert!(full.size_bytes.unwrap() * 4 < dense.size_bytes.unwrap());
    let layers = &full.layers;
    assert_eq!(layers.len(), n);
    assert!((layers[0].sparsity - 0.9).abs() < 1e-3);
    // The histogram after compression counts the kept weights only.
    let kept: u32 = layers[0].hist_after.iter().sum();
    assert_eq!(kept as usize, 235_200 - 211_680);

    let latency = ev.evaluate(&config, Stage::Latency, &never).unwrap();
    assert!(latency.latency_us.unwrap() > 0.0);

    let cancelled = AtomicBool::new(true);
    assert!(matches!(
        ev.evaluate(&config, Stage::Full, &cancelled),
        Err(EvalError::Cancelled)
    ));

    // Export, then ask the CLI.
    let dir = tempfile::tempdir().unwrap();
    let files = ev.export(&config, dir.path()).unwrap();
    assert_eq!(files.len(), 3);
    let recipe = dir.path().join("recipe.toml");
    let text = std::fs::read_to_string(&recipe).unwrap();
    assert!(
        text.contains("[layer.fc1]") && text.contains("kmeans"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("measurement.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["accuracy"].as_f64(), Some(f.value));
    assert_eq!(json["size_bytes"].as_u64(), full.size_bytes);
    assert!(json["latency_us"].as_f64().unwrap() > 0.0);

    let out = squeeze()
        .args(["eval", "--model"])
        .arg(asset("models/lenet-300-100.safetensors"))
        .arg("--data")
        .arg(asset("data/mnist/t10k-images-idx3-ubyte.gz"))
        .arg("--recipe")
        .arg(&recipe)
        .args(["--format", "json"])
        .assert()
        .success();
    let cli: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(
        cli["accuracy"].as_f64(),
        Some(f.value),
        "the TUI's number is the CLI's"
    );
    assert_eq!(cli["size_bytes"].as_u64(), full.size_bytes);

    // The compressed model reloads in the CLI to the same accuracy.
    let out = squeeze()
        .args(["eval", "--model"])
        .arg(dir.path().join("model.safetensors"))
        .arg("--data")
        .arg(asset("data/mnist/t10k-images-idx3-ubyte.gz"))
        .args(["--format", "json"])
        .assert()
        .success();
    let reloaded: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(reloaded["accuracy"].as_f64(), Some(f.value));
    // One sparsity: the explorer's export, the recipe in the CLI and the reloaded file agree.
    assert_eq!(json["sparsity"], cli["sparsity"]);
    assert_eq!(reloaded["sparsity"], cli["sparsity"]);
    assert_eq!(reloaded["sparsity_basis"], "pruning");
    // The export names the dense baseline it is compared with, measured the same way.
    let dense = ev.measurement(&Config::dense(n)).unwrap();
    assert_eq!(
        json["dense"]["accuracy"].as_f64(),
        Some(dense.accuracy.accuracy)
    );
    assert_eq!(
        json["dense"]["size_bytes"].as_u64(),
        Some(dense.size_bytes as u64)
    );
    assert!(json["dense"]["latency_us"].as_f64().unwrap() > 0.0);

    // The fingerprint is stable for the same model and data.
    let (_, fp2) = evaluator();
    assert_eq!(fp, fp2);
}

#[test]
fn recipes_round_trip_through_the_edit_state() {
    let (ev, _) = evaluator();
    let model = squeeze::model::load(&asset("models/lenet-300-100.safetensors"))
        .unwrap()
        .model;
    let n = ev.info().layers.len();
    let mut config = tuned(n);
    config.activation_bits = Some(8);
    let recipe = config.to_recipe(ev.info());
    let (back, notes) = Config::from_recipe(&recipe, &model).unwrap();
    assert_eq!(back, config);
    assert!(notes.is_empty(), "{notes:?}");
    // Activation quantization goes through calibration on the evaluation set.
    let never = AtomicBool::new(false);
    let f = ev.evaluate(&config, Stage::Quick, &never).unwrap();
    assert!(f.accuracy.unwrap().value > 0.9);
}

/// The figures of a sensitivity probe are the same whichever path measured them: the whole
/// model (what an edit in the explorer asks for) or the probe path that reuses the dense
/// layers before the probed one (what `S` and `squeeze sensitivity` use) — every field, to the
/// last bit.
#[test]
fn probes_measure_what_a_whole_evaluation_measures() {
    use squeeze::explore::jobs::EvalRequest;
    use squeeze::explore::sensitivity::{self, ProbeChain, ProbeEvent, ProbeJob, SensitivityGrid};
    for (model_file, limit) in [
        ("lenet-300-100.safetensors", 2000),
        ("lenet5.safetensors", 500),
    ] {
        let model_path = asset(&format!("models/{model_file}"));
        let data_path = asset("data/mnist/t10k-images-idx3-ubyte.gz");
        let model = squeeze::model::load(&model_path).unwrap().model;
        let set = squeeze::data::load(&data_path, &DataOptions::default())
            .unwrap()
            .truncated(limit);
        let inputs = set.prepare(&model.input, model.num_classes()).unwrap();
        let info = ModelInfo::from_model(&model, "t10k", set.len());
        let n = info.layers.len();
        let ev = ModelEvaluator::new(model, info.clone(), inputs, set.labels, 100);
        let grid = SensitivityGrid {
            sparsities: vec![500, 900],
            bits: vec![4],
            ..SensitivityGrid::default()
        };
        let probes = sensitivity::probes(&info, &grid);
        let chains: Vec<ProbeChain> = sensitivity::chains(&probes)
            .into_iter()
            .map(|chain| ProbeChain {
                layer: chain[0].layer,
                points: chain
                    .iter()
                    .enumerate()
                    .map(|(i, p)| EvalRequest {
                        key: (p.layer * 100
                            + i
                            + usize::from(matches!(p.kind, sensitivity::ProbeKind::Bits(_))) * 50)
                            as u64,
                        config: p.config(n),
                        stages: vec![Stage::Full],
                    })
                    .collect(),
            })
            .collect();
        let job = ProbeJob {
            chains: chains.clone(),
            dense: None,
            // No collapse: every probe is measured.
            dense_accuracy: None,
            classes: 10,
        };
        let got = std::sync::Mutex::new(Vec::new());
        let never = AtomicBool::new(false);
        ev.measure_probes(&job, &never, &|e| got.lock().unwrap().push(e));
        let got = got.into_inner().unwrap();
        assert_eq!(got.len(), probes.len(), "{model_file}");
        for chain in &chains {
            for p in &chain.points {
                let fast = got
                    .iter()
                    .find_map(|e| match e {
                        ProbeEvent::Measured { key, figures } if *key == p.key => Some(figures),
                        _ => None,
                    })
                    .unwrap_or_else(|| panic!("{model_file}: probe {} not measured", p.key));
                let whole = ev.evaluate(&p.config, Stage::Full, &never).unwrap();
                assert_eq!(fast, &whole, "{model_file}: {:?}", p.config);
            }
        }
    }
}

#[test]
fn the_table_names_weights_as_the_engine_stores_them() {
    let (ev, _) = evaluator();
    let n = ev.info().layers.len();
    let never = AtomicBool::new(false);
    let mut c = Config::dense(n);
    c.layers[0].bits = Bits::Int(8);
    c.layers[1].bits = Bits::Int(4);
    c.layers[1].granularity = squeeze::compress::recipe::GranularityKind::Group;
    c.layers[1].group_size = 50;
    c.layers[2].bits = Bits::Int(5);
    c.layers[2].scheme = Scheme::Kmeans;
    let f = ev.evaluate(&c, Stage::Quick, &never).unwrap();
    for (setting, layer) in c.layers.iter().zip(&f.layers) {
        let stored = layer.format.split('+').nth(1).unwrap_or_default();
        assert_eq!(stored, setting.quant_label(), "{}", layer.format);
    }
}
