//! Linear and conv layers with a batchnorm folded into them, as PyTorch sees them: magnitude
//! pruning ranks the layer's own weights by default (`rank = "folded"` ranks the folded ones,
//! what the layer computes with), and a dense file is written as the original module — the
//! layer's own weights and bias, then the batchnorm's four tensors — so it loads back into the
//! PyTorch module it came from.

use rand::{SeedableRng, rngs::StdRng};
use squeeze::compress::prune::{global_masks, l1_mask, nm_mask, shrink_structured};
use squeeze::compress::recipe::Norm;
use squeeze::compress::{self, Rank, Recipe};
use squeeze::model::{self, ArchSpec, Model};

mod common;
use common::{assert_close_rel, forward, rand_vec, written_model};

fn bn_toml(name: &str) -> String {
    format!(
        "[[layer]]\nop = \"batchnorm\"\nname = \"{name}\"\nweight = \"{name}.weight\"\n\
         bias = \"{name}.bias\"\nrunning_mean = \"{name}.running_mean\"\n\
         running_var = \"{name}.running_var\"\n"
    )
}

/// conv c1 (no bias) → bn1 → relu → conv c2 (bias) → bn2 → pool → linear fc1 → bn3 → relu →
/// linear fc: 3×6×6 in, 3 classes out.
fn arch() -> String {
    [
        "[input]\nshape = [3, 6, 6]\n".to_string(),
        "[[layer]]\nop = \"conv2d\"\nname = \"c1\"\nweight = \"c1.weight\"\npadding = 1\n".into(),
        bn_toml("bn1"),
        "[[layer]]\nop = \"relu\"\n".into(),
        "[[layer]]\nop = \"conv2d\"\nname = \"c2\"\nweight = \"c2.weight\"\nbias = \"c2.bias\"\n"
            .into(),
        bn_toml("bn2"),
        "[[layer]]\nop = \"global_avgpool\"\n".into(),
        common::linear_toml("fc1"),
        bn_toml("bn3"),
        "[[layer]]\nop = \"relu\"\n".into(),
        common::linear_toml("fc"),
    ]
    .concat()
}

type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// The state_dict: batchnorm scales spread over two orders of magnitude, so that ranking the
/// folded weights and ranking the layer's own weights disagree. With `dead`, one channel of
/// bn2 has gamma = 0 (the fold loses its row of c2).
fn state_dict(dead: bool) -> Tensors {
    let mut rng = StdRng::seed_from_u64(11);
    let mut t: Tensors = Vec::new();
    let bn = |t: &mut Tensors, rng: &mut StdRng, name: &str, c: usize| {
        let gamma: Vec<f32> = (0..c)
            .map(|j| 0.05 * 3f32.powi((j % 5) as i32) * if j % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let var: Vec<f32> = rand_vec(rng, c).iter().map(|v| v.abs() + 0.3).collect();
        t.push((format!("{name}.weight"), vec![c], gamma));
        t.push((format!("{name}.bias"), vec![c], rand_vec(rng, c)));
        t.push((format!("{name}.running_mean"), vec![c], rand_vec(rng, c)));
        t.push((format!("{name}.running_var"), vec![c], var));
    };
    t.push((
        "c1.weight".into(),
        vec![6, 3, 3, 3],
        rand_vec(&mut rng, 162),
    ));
    bn(&mut t, &mut rng, "bn1", 6);
    t.push((
        "c2.weight".into(),
        vec![8, 6, 3, 3],
        rand_vec(&mut rng, 432),
    ));
    t.push(("c2.bias".into(), vec![8], rand_vec(&mut rng, 8)));
    bn(&mut t, &mut rng, "bn2", 8);
    if dead {
        t.iter_mut().find(|x| x.0 == "bn2.weight").expect("bn2").2[3] = 0.0;
    }
    t.push(("fc1.weight".into(), vec![5, 8], rand_vec(&mut rng, 40)));
    t.push(("fc1.bias".into(), vec![5], rand_vec(&mut rng, 5)));
    bn(&mut t, &mut rng, "bn3", 5);
    t.push(("fc.weight".into(), vec![3, 5], rand_vec(&mut rng, 15)));
    t.push(("fc.bias".into(), vec![3], rand_vec(&mut rng, 3)));
    t
}

fn tensor<'a>(t: &'a Tensors, name: &str) -> &'a [f32] {
    &t.iter().find(|x| x.0 == name).expect(name).2
}

fn loaded(dir: &tempfile::TempDir, dead: bool) -> (Model, Tensors) {
    let t = state_dict(dead);
    (written_model(dir, &arch(), &t), t)
}

/// The weights layer `name` computes with (batchnorm folded in).
fn folded(m: &Model, name: &str) -> Vec<f32> {
    let l = m.layers.iter().find(|l| l.name == name).expect(name);
    let p = l.params().expect("params");
    p.weight
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("weights")
}

/// The kept flags `recipe` gives layer `name`.
fn kept(m: &Model, recipe: &str, name: &str) -> Vec<bool> {
    let recipe = Recipe::from_toml_str(recipe).expect("recipe");
    let plan = compress::apply(m, &recipe, None).expect("apply");
    let l = plan
        .layers
        .iter()
        .find(|q| plan.model.layers[q.layer].name == name)
        .expect(name);
    l.kept.clone()
}

#[test]
fn magnitude_pruning_ranks_the_layers_own_weights_by_default() {
    let dir = tempfile::tempdir().expect("tmp");
    let (m, t) = loaded(&dir, false);
    for (name, weight) in [
        ("c1", "c1.weight"),
        ("c2", "c2.weight"),
        ("fc1", "fc1.weight"),
    ] {
        let own = tensor(&t, weight);
        let fold = folded(&m, name);
        // PyTorch's semantics: prune.l1_unstructured on the conv before its BatchNorm.
        let l1 = kept(&m, "[default]\nprune = \"l1\"\nsparsity = 0.5\n", name);
        assert_eq!(l1, l1_mask(own, 0.5), "{name}: l1 ranks its own weights");
        let by_folded = kept(
            &m,
            "rank = \"folded\"\n[default]\nprune = \"l1\"\nsparsity = 0.5\n",
            name,
        );
        assert_eq!(by_folded, l1_mask(&fold, 0.5), "{name}: rank = folded");
        assert_ne!(
            l1, by_folded,
            "{name}: the test wants the two rankings to differ"
        );
    }
    // 2:4 along fc1's 8 inputs (a batchnorm scales whole rows, so either ranking keeps these).
    let nm = kept(&m, "[layer.fc1]\nprune = \"nm\"\n", "fc1");
    assert_eq!(
        nm,
        nm_mask(tensor(&t, "fc1.weight"), 8, 2, 4),
        "2:4 ranks fc1's own weights"
    );
    // One ranking over every layer: the own weights of each, fc's as they are.
    let names = ["c1", "c2", "fc1", "fc"];
    let own: Vec<&[f32]> = ["c1.weight", "c2.weight", "fc1.weight", "fc.weight"]
        .iter()
        .map(|w| tensor(&t, w))
        .collect();
    let want = global_masks(&own, 0.6);
    for (name, want) in names.iter().zip(want) {
        assert_eq!(
            kept(&m, "[global]\nsparsity = 0.6\n", name),
            want,
            "{name}: global"
        );
    }
}

/// The rows structured pruning keeps of one layer, ranked by the L1 norm of `w`'s rows.
fn strongest_rows(w: &[f32], cols: usize, keep: usize) -> Vec<usize> {
    let mut rows: Vec<(f32, usize)> = w
        .chunks(cols)
        .map(|r| r.iter().map(|v| v.abs()).sum())
        .zip(0..)
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut kept: Vec<usize> = rows[..keep].iter().map(|r| r.1).collect();
    kept.sort_unstable();
    kept
}

#[test]
fn structured_pruning_ranks_the_layers_own_filters_by_default() {
    let dir = tempfile::tempdir().expect("tmp");
    let (m, t) = loaded(&dir, false);
    let ask = [(0, 0.5, Norm::L1)];
    let rows = |rank| {
        let (_, kept) = shrink_structured(&m, &ask, rank).expect("shrinks");
        kept.into_iter().find(|k| k.0 == 0).expect("c1").1
    };
    let own = rows(Rank::Weights);
    assert_eq!(own, strongest_rows(tensor(&t, "c1.weight"), 27, 3));
    let by_folded = rows(Rank::Folded);
    assert_eq!(by_folded, strongest_rows(&folded(&m, "c1"), 27, 3));
    assert_ne!(own, by_folded, "the test wants the two rankings to differ");
}

/// Tensors of a written file, by name.
fn file_tensors(bytes: &[u8]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let st = safetensors::SafeTensors::deserialize(bytes).expect("safetensors");
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let values = v
                .data()
                .chunks(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, v.shape().to_vec(), values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn written(m: &Model) -> Vec<u8> {
    m.sealed(&[]).expect("seal").to_bytes().expect("bytes")
}

fn reloaded(dir: &tempfile::TempDir, bytes: &[u8]) -> Model {
    let path = dir.path().join("dense.safetensors");
    std::fs::write(&path, bytes).expect("write");
    model::load(&path).expect("reload").model
}

#[test]
fn a_dense_file_is_the_original_module() {
    let dir = tempfile::tempdir().expect("tmp");
    for dead in [false, true] {
        let (m, t) = loaded(&dir, dead);
        let bytes = written(&m);
        let got = file_tensors(&bytes);
        let mut want = t.clone();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        // The same names and shapes (no bias for c1, which had none), the same values.
        let names = |v: &Tensors| -> Vec<(String, Vec<usize>)> {
            v.iter().map(|x| (x.0.clone(), x.1.clone())).collect()
        };
        assert_eq!(names(&got), names(&want), "dead = {dead}");
        for ((name, _, g), (_, _, w)) in got.iter().zip(&want) {
            if dead && (name == "c2.weight" || name == "c2.bias") {
                // The dead channel's row and bias are lost in the fold; the rest is kept.
                continue;
            }
            assert_close_rel(g, w, 1e-6, name);
        }
        let meta = safetensors::SafeTensors::read_metadata(&bytes)
            .expect("meta")
            .1;
        let arch_json =
            meta.metadata().as_ref().expect("metadata")[model::ARCH_METADATA_KEY].clone();
        let spec = ArchSpec::from_json(&arch_json).expect("arch");
        assert_eq!(
            spec,
            ArchSpec::from_toml(&arch()).expect("arch"),
            "the original architecture"
        );
        let back = reloaded(&dir, &bytes);
        let x = rand_vec(&mut StdRng::seed_from_u64(3), 4 * 108);
        assert_close_rel(
            &forward(&back, &x, 4),
            &forward(&m, &x, 4),
            1e-5,
            "reloaded",
        );
    }
}

#[test]
fn a_compressed_dense_file_reloads_to_the_same_outputs() {
    let dir = tempfile::tempdir().expect("tmp");
    let (m, _) = loaded(&dir, true);
    let recipe = Recipe::from_toml_str(
        "[default]\nprune = \"l1\"\nsparsity = 0.5\nbits = 8\n\
         [layer.c1]\nprune = \"structured\"\nsparsity = 0.5\n",
    )
    .expect("recipe");
    let plan = compress::apply(&m, &recipe, None).expect("apply");
    let dense = plan.try_dequantized_model().expect("dense");
    let bytes = written(&dense);
    let got = file_tensors(&bytes);
    let shape = |name: &str| got.iter().find(|x| x.0 == name).expect(name).1.clone();
    assert_eq!(
        shape("c1.weight"),
        vec![3, 3, 3, 3],
        "c1 lost half its filters"
    );
    assert_eq!(
        shape("bn1.running_var"),
        vec![3],
        "and bn1 the same channels"
    );
    assert_eq!(
        shape("c2.weight"),
        vec![8, 3, 3, 3],
        "c2 lost the matching inputs"
    );
    let back = reloaded(&dir, &bytes);
    let x = rand_vec(&mut StdRng::seed_from_u64(5), 6 * 108);
    assert_close_rel(
        &forward(&back, &x, 6),
        &forward(&dense, &x, 6),
        1e-5,
        "reloaded",
    );
}
