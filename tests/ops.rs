//! Operations of small real models against PyTorch: `tests/fixtures/torch_ops.safetensors`
//! (written by `benches/peers/torch_ops.py`) holds, per case, a `torch.nn` module's parameters,
//! a fixed batch and PyTorch's output. Each case is loaded with a hand-written architecture; the
//! reference forward must give PyTorch's output, the engine the reference's (dense and
//! compressed, batches of 1 and 7), a compressed file and a dense file must read back to the
//! same outputs, and training's forward must pass gradients to the input.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use squeeze::compress::{self, Recipe};
use squeeze::engine::{self, CompressedModel};
use squeeze::model::{self, ArchSpec, Model};

mod common;
use common::{assert_close_rel, assert_close_scaled, forward};

fn fixture_path() -> PathBuf {
    common::root().join("tests/fixtures/torch_ops.safetensors")
}

/// Tensor `name` of the fixture: shape and values.
fn fixture(name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixture_path()).expect("fixture");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let t = st.tensor(name).expect(name);
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (t.shape().to_vec(), v)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// `v`'s samples of `len` values repeated in turn until there are `n`.
fn cycle(v: &[f32], len: usize, n: usize) -> Vec<f32> {
    v.chunks(len).cycle().take(n).flatten().copied().collect()
}

/// The model of `case`: `layers` (TOML) over samples shaped as the fixture's `x`, then a
/// flatten, reading its tensors from the fixture.
fn case_model(case: &str, layers: &str) -> Model {
    let (xs, _) = fixture(&format!("{case}.x"));
    let shape: Vec<String> = xs[1..].iter().map(ToString::to_string).collect();
    let text = format!(
        "[input]\nshape = [{}]\n{layers}\n[[layer]]\nop = \"flatten\"\n",
        shape.join(", ")
    );
    let spec = ArchSpec::from_toml(&text).expect("arch");
    let bytes = std::fs::read(fixture_path()).expect("fixture");
    model::load_bytes_with_spec(Path::new(case), &bytes, spec).expect("model")
}

/// Runs `case` everywhere: the reference against PyTorch (returns max |Δ|), the engine against
/// the reference dense and compressed in batches of 1 and 7, compressed and dense files read
/// back, and training's input gradient.
fn check_case(case: &str, layers: &str) -> f32 {
    let m = case_model(case, layers);
    let (xs, x) = fixture(&format!("{case}.x"));
    let (_, y) = fixture(&format!("{case}.y"));
    let n = xs[0];
    let (in_len, out_len) = (x.len() / n, y.len() / n);
    let reference = forward(&m, &x, n);
    let d = max_abs_diff(&reference, &y);
    assert_close_scaled(
        &reference,
        &y,
        1e-5,
        &format!("{case}: reference vs PyTorch"),
    );

    let x7 = cycle(&x, in_len, 7);
    let y7 = cycle(&reference, out_len, 7);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut recipes = vec!["[default]\nbits = 32\n"];
    if m.compressible().next().is_some() {
        recipes.push("[default]\nprune = \"l1\"\nsparsity = 0.5\nbits = 8\n");
        recipes.push("[default]\nbits = 4\ngranularity = \"channel\"\nscheme = \"asymmetric\"\n");
    }
    for recipe in recipes {
        let r = Recipe::from_toml_str(recipe).expect("recipe");
        let plan = compress::apply(&m, &r, None).expect("apply");
        let cm = CompressedModel::build(&plan).expect("build");
        let want = forward(&plan.dequantized_model(), &x7, 7);
        if recipe.contains("32") {
            assert_close_scaled(&want, &y7, 1e-6, &format!("{case}: dense plan"));
        }
        assert_close_scaled(
            &cm.logits(&x7, 7),
            &want,
            2e-5,
            &format!("{case}: {recipe}"),
        );
        for k in 0..7 {
            let one = cm.logits(&x7[k * in_len..(k + 1) * in_len], 1);
            let w = &want[k * out_len..(k + 1) * out_len];
            assert_close_scaled(&one, w, 2e-5, &format!("{case}: {recipe} sample {k}"));
        }
        let path = dir.path().join("c.safetensors");
        cm.save(&path, Some(recipe)).expect("save");
        let back = engine::load_compressed(&path).expect("reload");
        assert_eq!(
            back.logits(&x7, 7),
            cm.logits(&x7, 7),
            "{case}: {recipe} reloaded"
        );
    }

    let path = dir.path().join("dense.safetensors");
    m.save(&path, &[]).expect("save");
    let back = model::load(&path).expect("reload dense");
    assert!(back.warnings.is_empty(), "{case}: {:?}", back.warnings);
    assert_eq!(
        forward(&back.model, &x, n),
        reference,
        "{case}: dense reloaded"
    );

    let mut shape = vec![n];
    shape.extend(&m.input.shape);
    let t = Tensor::from_slice(&x, shape, &Device::Cpu).expect("x");
    let var = candle_core::Var::from_tensor(&t).expect("var");
    let out = m
        .forward_with(
            var.as_tensor(),
            &squeeze::train::TrainOps::default(),
            |_, _| Ok(()),
        )
        .expect("training forward");
    let trained: Vec<f32> = out.flatten_all().and_then(|o| o.to_vec1()).expect("values");
    assert_close_scaled(
        &trained,
        &reference,
        1e-5,
        &format!("{case}: training forward"),
    );
    // A weighted sum, so a normalization's gradient is not zero by symmetry.
    let r: Vec<f32> = (0..out.elem_count())
        .map(|i| (i % 5) as f32 - 2.0)
        .collect();
    let r = Tensor::from_vec(r, out.dims(), &Device::Cpu).expect("r");
    let grads = (out * r)
        .and_then(|p| p.sum_all())
        .and_then(|s| s.backward())
        .expect("backward");
    let g: Vec<f32> = grads
        .get(var.as_tensor())
        .expect("input gradient")
        .flatten_all()
        .and_then(|g| g.to_vec1())
        .expect("values");
    assert!(
        g.iter().all(|v| v.is_finite()),
        "{case}: gradient not finite"
    );
    assert!(
        g.iter().any(|v| *v != 0.0),
        "{case}: no gradient reaches the input"
    );
    d
}

#[test]
fn conv1d_follows_pytorch() {
    let a = check_case(
        "conv1d_a",
        "[[layer]]\nop = \"conv1d\"\nweight = \"conv1d_a.weight\"\nbias = \"conv1d_a.bias\"\nstride = 2\npadding = 1\n",
    );
    let b = check_case(
        "conv1d_b",
        "[[layer]]\nop = \"conv1d\"\nweight = \"conv1d_b.weight\"\npadding = 2\ndilation = 2\ngroups = 2\n",
    );
    println!("conv1d max |Δ| vs PyTorch: {a:.2e}, {b:.2e}");
    // The schema, shapes and files keep PyTorch's [out, in/groups, k].
    let m = case_model(
        "conv1d_b",
        "[[layer]]\nop = \"conv1d\"\nweight = \"conv1d_b.weight\"\npadding = 2\ndilation = 2\ngroups = 2\n",
    );
    assert_eq!(m.layers[0].out_shape, vec![6, 9]);
    assert_eq!(m.layers[0].op.name(), "conv1d");
    let tensors = m.named_tensors().expect("tensors");
    assert_eq!(tensors[0].0, "conv1d_b.weight");
    assert_eq!(tensors[0].1, vec![6, 2, 3]);
    let spec = m.layer_spec(0);
    let text = toml::to_string(&spec).expect("toml");
    assert!(
        text.contains("op = \"conv1d\"") && text.contains("kernel = 3"),
        "{text}"
    );
    // A wrong kernel or a 2-D input is named at its layer.
    let bytes = std::fs::read(fixture_path()).expect("fixture");
    let spec = ArchSpec::from_toml(
        "[input]\nshape = [4, 9]\n[[layer]]\nop = \"conv1d\"\nweight = \"conv1d_b.weight\"\nkernel = 5\ngroups = 2\n",
    )
    .expect("arch");
    let e = model::load_bytes_with_spec(Path::new("k"), &bytes, spec).unwrap_err();
    assert!(e.to_string().contains("expected [_, 2, 5]"), "{e}");
    let spec = ArchSpec::from_toml(
        "[input]\nshape = [4, 9, 9]\n[[layer]]\nop = \"conv1d\"\nweight = \"conv1d_b.weight\"\n",
    )
    .expect("arch");
    let e = model::load_bytes_with_spec(Path::new("r"), &bytes, spec).unwrap_err();
    assert!(e.to_string().contains("[channels, length]"), "{e}");
}

#[test]
fn layer_norm_follows_pytorch() {
    let a = check_case(
        "ln_vec",
        "[[layer]]\nop = \"layer_norm\"\nweight = \"ln_vec.weight\"\nbias = \"ln_vec.bias\"\n",
    );
    let b = check_case(
        "ln_tok",
        "[[layer]]\nop = \"layer_norm\"\nweight = \"ln_tok.weight\"\nbias = \"ln_tok.bias\"\n",
    );
    let c = check_case("ln_plain", "[[layer]]\nop = \"layer_norm\"\neps = 1e-3\n");
    println!("layer_norm max |Δ| vs PyTorch: {a:.2e}, {b:.2e}, {c:.2e}");
    // Hand-computed: [1, 2, 3, 4] has mean 2.5 and variance 1.25.
    let m = {
        let spec = ArchSpec::from_toml("[input]\nshape = [4]\n[[layer]]\nop = \"layer_norm\"\n")
            .expect("arch");
        let empty = model::to_safetensors_bytes(&[], &Default::default()).expect("bytes");
        model::load_bytes_with_spec(Path::new("hand"), &empty, spec).expect("model")
    };
    let y = forward(&m, &[1.0, 2.0, 3.0, 4.0], 1);
    let s = (1.25f32 + 1e-5).sqrt();
    assert_close_rel(&y, &[-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s], 1e-6, "by hand");
}
