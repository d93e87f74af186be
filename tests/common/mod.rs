//! Helpers shared by the integration tests: the binary as an `assert_cmd` command, the bundled
//! assets, random weights, a model written to a temporary safetensors file with its
//! architecture, candle's forward pass as the reference, and three comparisons of outputs whose
//! tolerances differ on purpose (absolute, per-element relative, relative to the largest
//! reference value). Each test crate uses a subset.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::{Rng, rngs::StdRng};
use squeeze::model::{
    self, ARCH_METADATA_KEY, ArchSpec, Conv2dGeometry, Model, to_safetensors_bytes,
};

/// Tensors by name: `(name, shape, values)`.
pub type Named = Vec<(String, Vec<usize>, Vec<f32>)>;

/// The `squeeze` binary built for these tests, as a command to add arguments to.
pub fn squeeze() -> assert_cmd::Command {
    assert_cmd::cargo::cargo_bin_cmd!("squeeze")
}

/// The project's root directory (where `assets/` is).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file or directory under `assets/` (tracked in git, so its absence fails the test).
pub fn asset(relative: &str) -> PathBuf {
    let p = root().join("assets").join(relative);
    assert!(p.exists(), "{} is missing from the checkout", p.display());
    p
}

/// `n` values uniform in [−1, 1).
pub fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// A `[[layer]]` table for a linear layer `name` with weight and bias tensors named after it
/// (`name.weight`, `name.bias`), as an architecture file spells it.
pub fn linear_toml(name: &str) -> String {
    format!(
        "[[layer]]\nop = \"linear\"\nname = \"{name}\"\nweight = \"{name}.weight\"\nbias = \"{name}.bias\"\n"
    )
}

/// A safetensors file's bytes: `tensors` with the architecture `arch` (TOML) in the metadata.
pub fn model_bytes(arch: &str, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let spec = ArchSpec::from_toml(arch).expect("test arch parses");
    let meta = HashMap::from([(ARCH_METADATA_KEY.to_string(), spec.to_json())]);
    to_safetensors_bytes(tensors, &meta).expect("serialize")
}

/// Writes `tensors` with the architecture `arch` (TOML) to `file` in `dir`; returns its path.
pub fn write_model(
    dir: impl AsRef<Path>,
    file: &str,
    arch: &str,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> PathBuf {
    let path = dir.as_ref().join(file);
    std::fs::write(&path, model_bytes(arch, tensors)).expect("write");
    path
}

/// `write_model`, loaded back.
pub fn written_model(
    dir: impl AsRef<Path>,
    arch: &str,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Model {
    // By reference: a `TempDir` passed by value must outlive the load, not just the write.
    let path = write_model(dir.as_ref(), "m.safetensors", arch, tensors);
    model::load(&path).expect("load").model
}

/// The dense model's logits for `n` samples `x` (candle's forward pass).
pub fn forward(m: &Model, x: &[f32], n: usize) -> Vec<f32> {
    let mut shape = vec![n];
    shape.extend(&m.input.shape);
    let t = Tensor::from_slice(x, shape, &Device::Cpu).expect("input");
    m.forward(&t)
        .expect("forward")
        .flatten_all()
        .expect("flatten")
        .to_vec1()
        .expect("vec")
}

/// `got` equals `want` within `tol` at every index: for outputs of a known magnitude.
pub fn assert_close_abs(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}: index {i}: {g} vs {w}");
    }
}

/// `got` equals `want` within `tol · (1 + |want|)` at every index: relative for large values,
/// absolute near zero.
pub fn assert_close_rel(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: index {i}: {g} vs {w}"
        );
    }
}

/// `got` equals `want` within `tol` times the largest magnitude in `want` at every index: for
/// sums taken in another order, whose error scales with the tensor rather than the element.
pub fn assert_close_scaled(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * scale,
            "{what}: index {i}: {g} vs {w} (scale {scale})"
        );
    }
}

/// A naive conv2d's output and, for the loss `sum(y · r)`, its gradients.
pub struct NaiveConv {
    /// `[n, o, oh, ow]`, row-major.
    pub y: Vec<f32>,
    /// `(oh, ow)`.
    pub out_hw: (usize, usize),
    pub dx: Vec<f32>,
    pub dw: Vec<f32>,
    pub db: Vec<f32>,
}

/// Naive conv2d summed in f64: x `[n, c, h, w]`, weight `[o, c/groups, kh, kw]`, bias `[o]`.
/// `r`, shaped like the output (or empty: no gradients wanted), weighs the loss `sum(y · r)`
/// whose gradients are returned.
pub fn naive_conv(
    x: &[f32],
    [n, c, h, wd]: [usize; 4],
    w: &[f32],
    [o, cg, kh, kw]: [usize; 4],
    bias: &[f32],
    g: Conv2dGeometry,
    r: &[f32],
) -> NaiveConv {
    let out = |size: usize, k: usize, stride: usize, pad: usize, dil: usize| {
        (size + 2 * pad - dil * (k - 1) - 1) / stride + 1
    };
    let oh = out(h, kh, g.stride.0, g.padding.0, g.dilation.0);
    let ow = out(wd, kw, g.stride.1, g.padding.1, g.dilation.1);
    assert!(
        r.is_empty() || r.len() == n * o * oh * ow,
        "r is shaped like the output"
    );
    let og = o / g.groups;
    let mut y = vec![0f64; n * o * oh * ow];
    let mut dx = vec![0f64; x.len()];
    let mut dw = vec![0f64; w.len()];
    let mut db = vec![0f64; o];
    for ni in 0..n {
        for oi in 0..o {
            let grp = oi / og;
            for oy in 0..oh {
                for ox in 0..ow {
                    let yi = ((ni * o + oi) * oh + oy) * ow + ox;
                    let ri = r.get(yi).map_or(0.0, |&v| f64::from(v));
                    let mut acc = f64::from(bias[oi]);
                    db[oi] += ri;
                    for ci in 0..cg {
                        let ch = grp * cg + ci;
                        for i in 0..kh {
                            for j in 0..kw {
                                let iy = (oy * g.stride.0 + i * g.dilation.0) as isize
                                    - g.padding.0 as isize;
                                let ix = (ox * g.stride.1 + j * g.dilation.1) as isize
                                    - g.padding.1 as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xi = ((ni * c + ch) * h + iy as usize) * wd + ix as usize;
                                let wi = ((oi * cg + ci) * kh + i) * kw + j;
                                acc += f64::from(x[xi]) * f64::from(w[wi]);
                                dx[xi] += ri * f64::from(w[wi]);
                                dw[wi] += ri * f64::from(x[xi]);
                            }
                        }
                    }
                    y[yi] = acc;
                }
            }
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<_>>();
    NaiveConv {
        y: f(y),
        out_hw: (oh, ow),
        dx: f(dx),
        dw: f(dw),
        db: f(db),
    }
}

/// Tensor `name` of a safetensors file of f32 tensors (PyTorch's outputs written by the scripts
/// in `benches/peers/` and their fixtures): its shape and values.
pub fn safetensors_f32(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).expect("a readable safetensors file");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("a safetensors file");
    let t = st.tensor(name).expect(name);
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (t.shape().to_vec(), v)
}

/// Runs `m` layer by layer on candle, fake-quantizing the input of every planned layer
/// (branches and `add` joins of layers; no other joins).
pub fn fake_quant_forward(m: &Model, p: &squeeze::compress::Plan, x: &[f32], n: usize) -> Vec<f32> {
    let mut cur = x.to_vec();
    let mut outputs: Vec<Vec<f32>> = Vec::new();
    for (i, layer) in m.layers.iter().enumerate() {
        // A branch reads a kept value, not the previous layer's output.
        match layer.input {
            Some(model::Source::Input) => cur = x.to_vec(),
            Some(model::Source::Layer(j)) => cur = outputs[j].clone(),
            None => {}
        }
        let shape = layer.in_shape.clone();
        if let Some(a) = p
            .layers
            .iter()
            .find(|q| q.layer == i)
            .and_then(|q| q.activation)
        {
            squeeze::engine::fake_quantize(&mut cur, a.bits, a.scale, a.zero_point);
        }
        let one = Model {
            layers: vec![model::Layer {
                op: match &layer.op {
                    model::Op::Add { .. } | model::Op::Mul { .. } => model::Op::Flatten,
                    op => op.clone(),
                },
                input: None,
                ..layer.clone()
            }],
            input: model::InputSpec {
                shape: shape.clone(),
                ..m.input.clone()
            },
            ..m.clone()
        };
        let mut t_shape = vec![n];
        t_shape.extend(&shape);
        let t = Tensor::from_slice(&cur, t_shape, &Device::Cpu).expect("t");
        let mut y: Vec<f32> = one
            .forward(&t)
            .expect("forward")
            .flatten_all()
            .expect("flat")
            .to_vec1()
            .expect("vec");
        match layer.op {
            model::Op::Add {
                from: model::Source::Layer(from),
            } => y.iter_mut().zip(&outputs[from]).for_each(|(v, s)| *v += s),
            model::Op::Mul {
                from: model::Source::Layer(from),
            } => y.iter_mut().zip(&outputs[from]).for_each(|(v, s)| *v *= s),
            _ => {}
        }
        outputs.push(y.clone());
        cur = y;
    }
    cur
}
