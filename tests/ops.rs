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
    common::safetensors_f32(&fixture_path(), name)
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
    // Token ids take no gradient: an embedding model's reaches its table instead.
    let mut m = m.clone();
    let table = m.layers.iter_mut().find_map(|l| match &mut l.op {
        model::Op::Embedding(p) => {
            let v = candle_core::Var::from_tensor(&p.weight).expect("var");
            p.weight = v.as_tensor().clone();
            Some(v)
        }
        _ => None,
    });
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
        .get(table.as_ref().unwrap_or(&var).as_tensor())
        .expect("input gradient")
        .flatten_all()
        .and_then(|g| g.to_vec1())
        .expect("values");
    assert!(
        g.iter().all(|v| v.is_finite()),
        "{case}: gradient not finite"
    );
    // Token 0 of `tokens_sel` is the class token, which no input changes.
    let reaches = g.iter().any(|v| *v != 0.0);
    assert_eq!(
        reaches,
        case != "tokens_sel",
        "{case}: the input's gradient"
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

/// `nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Upsample(scale_factor, mode="bilinear",
/// align_corners))` at scales 2 and 3, both align_corners, on 4×5 and 3×2 maps.
#[test]
fn bilinear_upsampling_follows_pytorch() {
    let mut worst = Vec::new();
    for (case, scale, align) in [
        ("up_bl_a", 2, false),
        ("up_bl_b", 3, true),
        ("up_bl_c", 3, false),
        ("up_bl_d", 2, true),
    ] {
        let layers = format!(
            "[[layer]]\nop = \"conv2d\"\nweight = \"{case}.0.weight\"\nbias = \"{case}.0.bias\"\npadding = 1\n\
             [[layer]]\nop = \"upsample\"\nscale = {scale}\nmode = \"bilinear\"\nalign_corners = {align}\n"
        );
        worst.push(check_case(case, &layers));
        // The schema writes the mode and align_corners back (align_corners only when set).
        let m = case_model(case, &layers);
        let text = toml::to_string(&m.layer_spec(1)).expect("toml");
        assert!(text.contains("mode = \"bilinear\""), "{text}");
        assert_eq!(text.contains("align_corners = true"), align, "{text}");
    }
    let worst: Vec<String> = worst.iter().map(|d| format!("{d:.2e}")).collect();
    println!(
        "bilinear upsampling max |Δ| vs PyTorch: {}",
        worst.join(", ")
    );
    // align_corners belongs to bilinear, as in PyTorch.
    let spec = ArchSpec::from_toml(
        "[input]\nshape = [1, 2, 2]\n[[layer]]\nop = \"upsample\"\nscale = 2\nalign_corners = true\n",
    )
    .expect("arch");
    let empty = model::to_safetensors_bytes(&[], &Default::default()).expect("bytes");
    let e = model::load_bytes_with_spec(Path::new("nearest"), &empty, spec).unwrap_err();
    assert!(e.to_string().contains("align_corners"), "{e}");
}

/// The layers of the tiny text classifier: `nn.Embedding(10, 6)`, a linear layer per token,
/// the mean over tokens.
const TEXT: &str = "[[layer]]\nop = \"embedding\"\nweight = \"text.emb.weight\"\n\
     [[layer]]\nop = \"linear\"\nweight = \"text.fc.weight\"\nbias = \"text.fc.bias\"\n\
     [[layer]]\nop = \"mean\"\ndim = 1\n";

#[test]
fn an_embedding_text_classifier_follows_pytorch() {
    let d = check_case("text", TEXT);
    println!("embedding → linear per token → mean max |Δ| vs PyTorch: {d:.2e}");
    let m = case_model("text", TEXT);
    let shapes: Vec<Vec<usize>> = m.layers.iter().map(|l| l.out_shape.clone()).collect();
    assert_eq!(shapes, [vec![7, 6], vec![7, 4], vec![4], vec![4]]);
    // The table is compressed as a linear layer's weight is, row by row.
    assert_eq!(m.compressible().count(), 2);
    let text = toml::to_string(&m.layer_spec(0)).expect("toml");
    assert!(
        text.contains("op = \"embedding\"") && text.contains("num_embeddings = 10"),
        "{text}"
    );
    let r = Recipe::from_toml_str("[default]\nbits = 4\n").expect("recipe");
    let plan = compress::apply(&m, &r, None).expect("apply");
    let cm = CompressedModel::build(&plan).expect("build");
    assert!(
        cm.size_bytes() < cm.dense_bytes(),
        "4-bit table and weights"
    );
}

#[test]
fn a_token_id_that_is_not_a_row_is_named_with_its_layer() {
    let m = case_model("text", TEXT);
    let (_, x) = fixture("text.x");
    let plan = compress::apply(
        &m,
        &Recipe::from_toml_str("[default]\nbits = 8\n").expect("recipe"),
        None,
    )
    .expect("apply");
    let cm = CompressedModel::build(&plan).expect("build");
    for (bad, want) in [
        (
            2.5f32,
            "token id 2.5 (sample 1, token 3) is not a whole number in [0, 10)",
        ),
        (
            10.0,
            "token id 10 (sample 1, token 3) is not a whole number in [0, 10)",
        ),
        (-1.0, "token id -1 (sample 1, token 3)"),
    ] {
        let mut ids = x.clone();
        ids[7 + 3] = bad;
        let t = Tensor::from_slice(&ids, (3, 7), &Device::Cpu).expect("x");
        let e = m.forward(&t).expect_err("reference").to_string();
        assert!(e.contains("layer text.emb: ") && e.contains(want), "{e}");
        let e = cm.check_inputs(&ids).expect_err("engine").to_string();
        assert!(e.contains("layer text.emb: ") && e.contains(want), "{e}");
        // Every command prepares its sets through the same check, naming the file.
        let set = squeeze::data::EvalSet {
            source: "ids.npy".into(),
            inputs: ids.clone(),
            sample_shape: vec![7],
            labels: vec![0; 3],
            classes: Vec::new(),
        };
        let e = set.prepare_for(&m).expect_err("set").to_string();
        assert!(
            e.starts_with("ids.npy: layer text.emb: ") && e.contains(want),
            "{e}"
        );
        // A run cannot fail: unchecked, the bad token's row is NaN, the others' are not.
        let y = cm.logits(&ids, 3);
        assert!(y[4..8].iter().all(|v| v.is_nan()), "{y:?}");
        assert!(y[..4].iter().chain(&y[8..]).all(|v| v.is_finite()), "{y:?}");
    }
    assert!(cm.check_inputs(&x).is_ok());
}

/// A token model's patch embedding, as a ViT: conv → flatten(2) (or a reshape) → transpose(1, 2)
/// → the class token first → the position embedding added → token 0, or a per-feature scale
/// and the mean over tokens.
#[test]
fn token_reshapes_params_select_and_mean_follow_pytorch() {
    let patch = |case: &str| {
        format!(
            "[[layer]]\nop = \"conv2d\"\nname = \"patch\"\nweight = \"{case}.patch.weight\"\nbias = \"{case}.patch.bias\"\nstride = 2\n"
        )
    };
    let embed = |case: &str| {
        format!(
            "[[layer]]\nop = \"concat\"\nparam = \"{case}.cls_token\"\n[[layer]]\nop = \"add\"\nparam = \"{case}.pos_embed\"\n"
        )
    };
    let a = check_case(
        "tokens_sel",
        &format!(
            "{}[[layer]]\nop = \"flatten\"\nstart_dim = 2\n[[layer]]\nop = \"transpose\"\ndims = [1, 2]\n{}[[layer]]\nop = \"select\"\ndim = 1\nindex = 0\n",
            patch("tokens_sel"),
            embed("tokens_sel")
        ),
    );
    let b = check_case(
        "tokens_mean",
        &format!(
            "{}[[layer]]\nop = \"reshape\"\nshape = [4, -1]\n[[layer]]\nop = \"transpose\"\ndims = [-1, -2]\n{}[[layer]]\nop = \"mul\"\nparam = \"tokens_mean.gamma\"\n[[layer]]\nop = \"mean\"\ndim = 1\n",
            patch("tokens_mean"),
            embed("tokens_mean")
        ),
    );
    let c = check_case(
        "tok_linear",
        "[[layer]]\nop = \"linear\"\nweight = \"tok_linear.weight\"\nbias = \"tok_linear.bias\"\n",
    );
    println!("tokens max |Δ| vs PyTorch: select {a:.2e}, mean {b:.2e}, linear per token {c:.2e}");
    // Shapes, and what does not fit named at its layer.
    let m = case_model(
        "tokens_sel",
        &format!(
            "{}[[layer]]\nop = \"flatten\"\nstart_dim = 2\n[[layer]]\nop = \"transpose\"\ndims = [1, 2]\n{}",
            patch("tokens_sel"),
            embed("tokens_sel")
        ),
    );
    let shapes: Vec<Vec<usize>> = m.layers.iter().map(|l| l.out_shape.clone()).collect();
    assert_eq!(
        shapes,
        [
            vec![4, 2, 2],
            vec![4, 4],
            vec![4, 4],
            vec![5, 4],
            vec![5, 4],
            vec![20]
        ]
    );
    let bytes = std::fs::read(fixture_path()).expect("fixture");
    for (layer, want) in [
        (
            "op = \"transpose\"\ndims = [0, 1]",
            "dims = 0 is not a dimension",
        ),
        (
            "op = \"select\"\ndim = 1\nindex = 5",
            "index 5 of dimension 1",
        ),
        (
            "op = \"reshape\"\nshape = [3, -1]",
            "does not hold the 16 values",
        ),
        (
            "op = \"add\"\nparam = \"tokens_sel.pos_embed\"",
            "does not broadcast",
        ),
        ("op = \"attention\"\nheads = 4", "queries, keys and values"),
    ] {
        let spec = ArchSpec::from_toml(&format!(
            "[input]\nshape = [4, 4]\n[[layer]]\n{layer}\n[[layer]]\nop = \"flatten\"\n"
        ))
        .expect("arch");
        let e = model::load_bytes_with_spec(Path::new("bad"), &bytes, spec).unwrap_err();
        assert!(e.to_string().contains(want), "{layer}: {e}");
    }
}

/// `nn.MultiheadAttention(8, 2, batch_first=True)` as its two projections (linear layers the
/// compression sees) around the attention.
#[test]
fn multihead_attention_follows_pytorch() {
    let d = check_case(
        "mha",
        "[[layer]]\nop = \"linear\"\nname = \"in_proj\"\nweight = \"mha.attn.in_proj_weight\"\nbias = \"mha.attn.in_proj_bias\"\n\
         [[layer]]\nop = \"attention\"\nheads = 2\n\
         [[layer]]\nop = \"linear\"\nname = \"out_proj\"\nweight = \"mha.attn.out_proj.weight\"\nbias = \"mha.attn.out_proj.bias\"\n",
    );
    println!("attention max |Δ| vs PyTorch: {d:.2e}");
}

fn torch_available() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import torch, safetensors"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |best, (i, x)| if *x > v[best] { i } else { best })
}

/// A ViT built with plain `torch.nn` (`benches/peers/torch_vit.py`: patch conv, class token,
/// position embedding, 2 pre-norm blocks of multi-head attention and GELU MLP, head on the class
/// token) loaded from its state_dict as is: the reference and the engine give PyTorch's logits,
/// and int8 keeps its top-1. Skipped (passing, with a message) where torch is missing.
#[test]
fn a_vit_built_with_torch_nn_gives_pytorchs_logits() {
    if !torch_available() {
        eprintln!("skipped: python3 cannot import torch and safetensors");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new("python3")
        .arg(common::root().join("benches/peers/torch_vit.py"))
        .arg("--out")
        .arg(dir.path())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "torch_vit.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let loaded = model::load(&dir.path().join("vit.safetensors")).expect("load");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let m = loaded.model;
    let bytes = std::fs::read(dir.path().join("vit.logits.safetensors")).expect("logits");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let f32s = |name: &str| -> (Vec<usize>, Vec<f32>) {
        let t = st.tensor(name).expect(name);
        let v = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (t.shape().to_vec(), v)
    };
    let ((shape, want), (_, x)) = (f32s("logits"), f32s("inputs"));
    let (n, classes) = (shape[0], shape[1]);
    let reference = forward(&m, &x, n);
    let dense = compress::apply(
        &m,
        &Recipe::from_toml_str("[default]\nbits = 32\n").expect("r"),
        None,
    )
    .expect("apply");
    let engine = CompressedModel::build(&dense).expect("build").logits(&x, n);
    let int8 = compress::apply(
        &m,
        &Recipe::from_toml_str("[default]\nbits = 8\n").expect("r"),
        None,
    )
    .expect("apply");
    let packed = CompressedModel::build(&int8).expect("build");
    let path = dir.path().join("vit.int8.safetensors");
    packed.save(&path, None).expect("save");
    let quantized = engine::load_compressed(&path)
        .expect("reload")
        .logits(&x, n);
    let agree = |got: &[f32]| {
        want.chunks(classes)
            .zip(got.chunks(classes))
            .filter(|(w, g)| argmax(w) == argmax(g))
            .count()
    };
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (dr, de, dq) = (
        max_abs_diff(&reference, &want),
        max_abs_diff(&engine, &want),
        max_abs_diff(&quantized, &want),
    );
    println!(
        "vit: max |Δ| reference {dr:.2e}, engine {de:.2e} (largest |logit| {scale:.3}); top-1 agreement engine {}/{n}, int8 {}/{n} (max |Δ| {dq:.2e})",
        agree(&engine),
        agree(&quantized)
    );
    assert!(dr <= 1e-5 * scale.max(1.0), "reference differs by {dr}");
    assert!(de <= 1e-5 * scale.max(1.0), "engine differs by {de}");
    assert_eq!(agree(&engine), n);
    assert!(
        agree(&quantized) * 10 >= n * 9,
        "int8 keeps under 90 % of top-1"
    );
}
