//! The engine's convolution kernels against the reference forward pass (candle): depthwise
//! layers of every geometry the direct kernel handles (odd sizes, strides 1–3, padding 0–2,
//! dilation, 5×5 windows, two outputs per input channel, channel counts across and between
//! blocks of 16), dense and compressed, with float and quantized activations, one sample and
//! batches.

use rand::{SeedableRng, rngs::StdRng};
use squeeze::compress::{self, ActivationQuant, Recipe};
use squeeze::engine::{self, CompressedModel};
use squeeze::model::Model;

mod common;
use common::{Named, assert_close_rel, fake_quant_forward, forward, rand_vec, written_model};

/// One depthwise layer `dwI` (a conv2d with `groups = cin`): kernel, stride, padding,
/// dilation, output channels per input channel.
struct Dw {
    k: usize,
    stride: usize,
    pad: usize,
    dil: usize,
    mult: usize,
}

/// A chain of depthwise layers over `[c, h, w]` inputs, each followed by a BatchNorm (folded
/// into it when compressed) and a ReLU6, then a linear layer to 5 classes.
fn chain(dir: &tempfile::TempDir, c: usize, h: usize, w: usize, dws: &[Dw], seed: u64) -> Model {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut arch = format!("[input]\nshape = [{c}, {h}, {w}]\n");
    let mut t: Named = Vec::new();
    let (mut c, mut h, mut w) = (c, h, w);
    for (i, d) in dws.iter().enumerate() {
        let name = format!("dw{i}");
        arch += &format!(
            "[[layer]]\nop = \"conv2d\"\nname = \"{name}\"\nweight = \"{name}.weight\"\n\
             bias = \"{name}.bias\"\nstride = {}\npadding = {}\ndilation = {}\ngroups = {c}\n\
             [[layer]]\nop = \"batchnorm\"\nname = \"{name}.bn\"\nweight = \"{name}.bn.weight\"\n\
             bias = \"{name}.bn.bias\"\nrunning_mean = \"{name}.bn.mean\"\n\
             running_var = \"{name}.bn.var\"\n[[layer]]\nop = \"relu6\"\n",
            d.stride, d.pad, d.dil
        );
        let cout = c * d.mult;
        t.push((
            format!("{name}.weight"),
            vec![cout, 1, d.k, d.k],
            rand_vec(&mut rng, cout * d.k * d.k),
        ));
        t.push((format!("{name}.bias"), vec![cout], rand_vec(&mut rng, cout)));
        t.push((
            format!("{name}.bn.weight"),
            vec![cout],
            rand_vec(&mut rng, cout)
                .iter()
                .map(|v| 1.0 + 0.5 * v)
                .collect(),
        ));
        t.push((
            format!("{name}.bn.bias"),
            vec![cout],
            rand_vec(&mut rng, cout),
        ));
        t.push((
            format!("{name}.bn.mean"),
            vec![cout],
            rand_vec(&mut rng, cout),
        ));
        t.push((
            format!("{name}.bn.var"),
            vec![cout],
            rand_vec(&mut rng, cout)
                .iter()
                .map(|v| v.abs() + 0.5)
                .collect(),
        ));
        let span = d.dil * (d.k - 1) + 1;
        h = (h + 2 * d.pad - span) / d.stride + 1;
        w = (w + 2 * d.pad - span) / d.stride + 1;
        c = cout;
    }
    arch += "[[layer]]\nop = \"flatten\"\n[[layer]]\nop = \"linear\"\nname = \"fc\"\n\
             weight = \"fc.weight\"\nbias = \"fc.bias\"\n";
    let feats = c * h * w;
    t.push((
        "fc.weight".into(),
        vec![5, feats],
        rand_vec(&mut rng, 5 * feats),
    ));
    t.push(("fc.bias".into(), vec![5], rand_vec(&mut rng, 5)));
    written_model(dir, &arch, &t)
}

/// Tests that force the portable kernels hold this while they run (the switch is global).
static KERNEL_PATH: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The engine against the reference on `m`, dense and under weight-only recipes, for batches
/// of 1 and 7, on the vector kernels and on the portable ones.
fn check(m: &Model, what: &str) {
    let _guard = KERNEL_PATH.lock().unwrap_or_else(|e| e.into_inner());
    for portable in [false, true] {
        engine::force_portable(portable);
        check_path(m, &format!("{what}, portable {portable}"));
    }
    engine::force_portable(false);
}

fn check_path(m: &Model, what: &str) {
    let x = rand_vec(&mut StdRng::seed_from_u64(99), 7 * m.input_len());
    for recipe in [
        "",
        "[default]\nbits = 8\n",
        "[default]\nprune = \"l1\"\nsparsity = 0.9\n",
        "[default]\nbits = 4\nscheme = \"kmeans\"\n",
        "[default]\nbits = 16\n",
    ] {
        let r = Recipe::from_toml_str(recipe).expect("recipe");
        let plan = compress::apply(m, &r, None).expect("apply");
        let cm = CompressedModel::build(&plan).expect("build");
        let reference = plan.dequantized_model();
        for n in [1, 7] {
            let want = forward(&reference, &x[..n * m.input_len()], n);
            let got = cm.logits(&x[..n * m.input_len()], n);
            assert_close_rel(&got, &want, 2e-4, &format!("{what}, {recipe:?}, batch {n}"));
        }
    }
}

#[test]
fn depthwise_3x3_matches_the_reference_at_odd_sizes_and_strides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dw = |k, stride, pad| Dw {
        k,
        stride,
        pad,
        dil: 1,
        mult: 1,
    };
    // 13×11 → 13×11 (stride 1, pad 1) → 7×6 (stride 2, pad 1) → 3×2 (stride 2, no padding)
    let m = chain(&dir, 5, 13, 11, &[dw(3, 1, 1), dw(3, 2, 1), dw(3, 2, 0)], 1);
    check(&m, "3×3 chain");
    // Wider than one 16-lane step (37 columns: two whole steps and a partial one).
    let m = chain(&dir, 3, 9, 37, &[dw(3, 1, 1), dw(3, 2, 1)], 2);
    check(&m, "37 columns");
}

#[test]
fn depthwise_other_windows_match_the_reference() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = chain(
        &dir,
        4,
        15,
        14,
        &[
            // 5×5 padding 2, stride 1; dilation 2; stride 3 padding 2; two outputs per channel.
            Dw {
                k: 5,
                stride: 1,
                pad: 2,
                dil: 1,
                mult: 1,
            },
            Dw {
                k: 3,
                stride: 1,
                pad: 1,
                dil: 2,
                mult: 1,
            },
            Dw {
                k: 3,
                stride: 3,
                pad: 2,
                dil: 1,
                mult: 1,
            },
            Dw {
                k: 3,
                stride: 1,
                pad: 1,
                dil: 1,
                mult: 2,
            },
        ],
        3,
    );
    check(&m, "other windows");
}

#[test]
fn depthwise_over_several_blocks_of_channels_matches_the_reference() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dw = |stride, mult| Dw {
        k: 3,
        stride,
        pad: 1,
        dil: 1,
        mult,
    };
    // 37 channels (two whole blocks of 16 and five), then 74 (two outputs per input).
    let m = chain(&dir, 37, 9, 7, &[dw(1, 1), dw(2, 2), dw(1, 1)], 4);
    check(&m, "37 channels");
}

/// Depthwise layers with quantized activations: centred codes summed as integers (uniform
/// weights, one scale per channel) and quantized values (k-means weights; uniform weights with
/// groups smaller than a channel), against the reference with every planned layer's inputs
/// fake-quantized.
#[test]
fn depthwise_with_quantized_activations_matches_the_fake_quantized_reference() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dw = |stride| Dw {
        k: 3,
        stride,
        pad: 1,
        dil: 1,
        mult: 1,
    };
    let m = chain(&dir, 21, 11, 10, &[dw(1), dw(2), dw(1)], 5);
    check_quantized(&m, "depthwise", 3);
}

/// The engine against the reference with every planned layer's inputs fake-quantized, under
/// recipes that reach the integer kernels (uniform weights, one scale per channel) and the
/// quantized values (k-means weights; groups smaller than a channel; pruned and quantized),
/// for 3 samples, on the vector kernels and on the portable ones. `group` divides every layer's
/// inputs.
fn check_quantized(m: &Model, what: &str, group: usize) {
    let _guard = KERNEL_PATH.lock().unwrap_or_else(|e| e.into_inner());
    let x = rand_vec(&mut StdRng::seed_from_u64(98), 3 * m.input_len());
    for portable in [false, true] {
        engine::force_portable(portable);
        for (recipe, bits) in [
            ("[default]\nbits = 8\ngranularity = \"channel\"\n", 8),
            ("[default]\nbits = 4\n", 6),
            ("[default]\nbits = 4\nscheme = \"kmeans\"\n", 8),
            (
                &format!("[default]\nbits = 8\ngranularity = \"group\"\ngroup_size = {group}\n"),
                8,
            ),
            ("[default]\nprune = \"l1\"\nsparsity = 0.5\nbits = 8\n", 8),
        ] {
            let r = Recipe::from_toml_str(recipe).expect("recipe");
            let mut plan = compress::apply(m, &r, None).expect("apply");
            for q in &mut plan.layers {
                q.activation = Some(ActivationQuant {
                    bits,
                    scale: 0.03,
                    zero_point: (1 << (bits - 1)) - 3,
                });
            }
            let cm = CompressedModel::build(&plan).expect("build");
            let want = fake_quant_forward(&plan.dequantized_model(), &plan, &x, 3);
            assert_close_rel(
                &cm.logits(&x, 3),
                &want,
                1e-3,
                &format!("{what}, {recipe:?}, activations {bits} bits, portable {portable}"),
            );
        }
    }
    engine::force_portable(false);
}

/// Convolutions followed by a ReLU or ReLU6 (directly or through a folded batchnorm) apply it
/// in their kernels: im2col product, direct 3×3, 1×1, grouped, few positions; pruned, the
/// sparse direct convolution over 18 × 18 maps (a whole tile of columns and rows and a partial
/// one of each; dilated, and without an activation, in `pre`). Where a branch
/// reads the convolution's own output (`side` reads `c4`), the activation keeps its pass.
/// A residual `add` after a convolution, then a ReLU (`c1r`, direct over 18 × 18), and a
/// `mul` with none (`tail`, an im2col product over 5 × 5), are joined by the convolution too;
/// pruned, `tail` (800 inputs a filter) sums four filters side by side.
#[test]
fn activations_after_convolutions_match_the_reference_on_every_kernel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = StdRng::seed_from_u64(6);
    let mut arch = String::from("[input]\nshape = [6, 18, 18]\n");
    let mut t: Named = Vec::new();
    // name, cin, cout, window, stride, dilation, groups, activation (`pre` has none)
    let convs = [
        ("pre", 6, 6, 3, 1, 2, 1, ""),
        ("c0", 6, 12, 3, 1, 1, 1, "relu6"),
        ("c1", 12, 16, 3, 1, 1, 1, "relu"),
        ("c2", 16, 24, 1, 1, 1, 1, "relu6"),
        ("c3", 24, 16, 3, 2, 1, 4, "relu"),
        ("c4", 16, 32, 3, 2, 1, 1, "relu"),
    ];
    for (name, cin, cout, k, stride, dil, groups, act) in convs {
        arch += &format!(
            "[[layer]]\nop = \"conv2d\"\nname = \"{name}\"\nweight = \"{name}.weight\"\n\
             bias = \"{name}.bias\"\nstride = {stride}\npadding = {}\ndilation = {dil}\n\
             groups = {groups}\n",
            dil * (k / 2)
        );
        let n = cout * cin / groups * k * k;
        let scale = (2.0 / (cin / groups * k * k) as f32).sqrt();
        let w = rand_vec(&mut rng, n).iter().map(|v| v * scale).collect();
        t.push((format!("{name}.weight"), vec![cout, cin / groups, k, k], w));
        t.push((format!("{name}.bias"), vec![cout], rand_vec(&mut rng, cout)));
        if name == "c0" {
            arch += "[[layer]]\nop = \"batchnorm\"\nname = \"c0.bn\"\nweight = \"c0.bn.weight\"\n\
                     bias = \"c0.bn.bias\"\nrunning_mean = \"c0.bn.mean\"\n\
                     running_var = \"c0.bn.var\"\n";
            for (p, v) in [("weight", 1.0), ("bias", 0.0), ("mean", 0.0), ("var", 1.5)] {
                let vals = rand_vec(&mut rng, cout)
                    .iter()
                    .map(|r| v + 0.3 * r)
                    .collect();
                t.push((format!("c0.bn.{p}"), vec![cout], vals));
            }
        }
        if !act.is_empty() {
            arch += &format!("[[layer]]\nop = \"{act}\"\nname = \"{name}.act\"\n");
        }
        if name == "c1" {
            // A residual block's second half: conv, add of the block input, ReLU.
            arch += "[[layer]]\nop = \"conv2d\"\nname = \"c1r\"\nweight = \"c1r.weight\"\n\
                     bias = \"c1r.bias\"\npadding = 1\n[[layer]]\nop = \"add\"\n\
                     name = \"c1r.add\"\nfrom = \"c1.act\"\n[[layer]]\nop = \"relu\"\n";
            let w = rand_vec(&mut rng, 16 * 16 * 9)
                .iter()
                .map(|v| v * 0.1)
                .collect();
            t.push(("c1r.weight".into(), vec![16, 16, 3, 3], w));
            t.push(("c1r.bias".into(), vec![16], rand_vec(&mut rng, 16)));
        }
    }
    arch += "[[layer]]\nop = \"conv2d\"\nname = \"side\"\ninput = \"c4\"\n\
             weight = \"side.weight\"\n[[layer]]\nop = \"add\"\nname = \"res\"\n\
             inputs = [\"c4.act\", \"side\"]\n[[layer]]\nop = \"conv2d\"\n\
             name = \"tail\"\nweight = \"tail.weight\"\npadding = 2\n[[layer]]\n\
             op = \"mul\"\nfrom = \"res\"\n[[layer]]\nop = \"flatten\"\n\
             [[layer]]\nop = \"linear\"\nname = \"fc\"\nweight = \"fc.weight\"\n\
             bias = \"fc.bias\"\n";
    t.push((
        "side.weight".into(),
        vec![32, 32, 1, 1],
        rand_vec(&mut rng, 32 * 32),
    ));
    let w = rand_vec(&mut rng, 32 * 32 * 25)
        .iter()
        .map(|v| v * 0.01)
        .collect();
    t.push(("tail.weight".into(), vec![32, 32, 5, 5], w));
    t.push((
        "fc.weight".into(),
        vec![5, 32 * 25],
        rand_vec(&mut rng, 5 * 32 * 25),
    ));
    t.push(("fc.bias".into(), vec![5], rand_vec(&mut rng, 5)));
    let m = written_model(&dir, &arch, &t);
    check(&m, "activations after convolutions");
    check_quantized(&m, "activations after convolutions", 2);
}

/// Convolutions whose output maps are `gemm::DIRECT_NARROW` wide (a ResNet's last stage) run
/// direct across the samples of a batch, two whole output rows a tile: 3×3 at stride 2 and 1
/// over 3 × 4 outputs (an odd row count, so the last tile is one row; at most `gemm::FEW`
/// positions, so on tall panels), 40 filters (a partial panel of 32), and a 1×1 stride-2
/// projection of the block input joined by `add`.
#[test]
fn narrow_maps_over_several_samples_match_the_reference() {
    use squeeze::engine::{ConvShape, gemm};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = StdRng::seed_from_u64(14);
    // name, input, cin, cout, window, stride, padding
    let convs = [
        ("n0", "", 64, 32, 3, 2, 1),
        ("n1", "", 32, 40, 3, 1, 1),
        ("proj", "input", 64, 40, 1, 2, 0),
    ];
    let mut arch = String::from("[input]\nshape = [64, 6, 8]\n");
    let mut t: Named = Vec::new();
    for (name, input, cin, cout, k, stride, pad) in convs {
        let shape = ConvShape {
            cin,
            h: if name == "n1" { 3 } else { 6 },
            w: if name == "n1" { 4 } else { 8 },
            cout,
            kh: k,
            kw: k,
            stride: (stride, stride),
            pad: (pad, pad),
            dil: (1, 1),
            groups: 1,
            oh: 3,
            ow: 4,
        };
        assert!(
            gemm::runs_direct(&shape, 7) && !gemm::runs_direct(&shape, 1),
            "{name} must run direct over several samples only"
        );
        let from = if input.is_empty() {
            String::new()
        } else {
            format!("input = \"{input}\"\n")
        };
        arch += &format!(
            "[[layer]]\nop = \"conv2d\"\nname = \"{name}\"\n{from}weight = \"{name}.weight\"\n\
             bias = \"{name}.bias\"\nstride = {stride}\npadding = {pad}\n"
        );
        if name == "n0" {
            arch += "[[layer]]\nop = \"relu\"\nname = \"n0.act\"\n";
        }
        let scale = (2.0 / (cin * k * k) as f32).sqrt();
        let w = rand_vec(&mut rng, cout * cin * k * k)
            .iter()
            .map(|v| v * scale)
            .collect();
        t.push((format!("{name}.weight"), vec![cout, cin, k, k], w));
        t.push((format!("{name}.bias"), vec![cout], rand_vec(&mut rng, cout)));
    }
    arch += "[[layer]]\nop = \"add\"\nname = \"join\"\ninputs = [\"n1\", \"proj\"]\n\
             [[layer]]\nop = \"relu\"\n[[layer]]\nop = \"flatten\"\n[[layer]]\nop = \"linear\"\n\
             name = \"fc\"\nweight = \"fc.weight\"\nbias = \"fc.bias\"\n";
    t.push((
        "fc.weight".into(),
        vec![5, 40 * 12],
        rand_vec(&mut rng, 5 * 40 * 12),
    ));
    t.push(("fc.bias".into(), vec![5], rand_vec(&mut rng, 5)));
    let m = written_model(&dir, &arch, &t);
    check(&m, "narrow maps");
}
