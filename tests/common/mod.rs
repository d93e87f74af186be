//! Helpers shared by the integration tests: random weights, a model written to a temporary
//! safetensors file with its architecture, candle's forward pass as the reference, and a
//! relative comparison of outputs. Each test crate uses a subset.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use rand::{Rng, rngs::StdRng};
use squeeze::model::{self, ArchSpec, Model, to_safetensors_bytes};

/// Tensors by name: `(name, shape, values)`.
pub type Named = Vec<(String, Vec<usize>, Vec<f32>)>;

/// `n` values uniform in [−1, 1).
pub fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Writes `tensors` with the architecture `arch` (TOML) to `file` in `dir`; returns its path.
pub fn write_model(dir: &tempfile::TempDir, file: &str, arch: &str, tensors: &Named) -> PathBuf {
    let spec = ArchSpec::from_toml(arch).expect("test arch parses");
    let mut meta = HashMap::new();
    meta.insert("squeeze.arch".to_string(), spec.to_json());
    let bytes = to_safetensors_bytes(tensors, &meta).expect("serialize");
    let path = dir.path().join(file);
    std::fs::write(&path, bytes).expect("write");
    path
}

/// `write_model`, loaded back.
pub fn written_model(dir: &tempfile::TempDir, arch: &str, tensors: &Named) -> Model {
    let path = write_model(dir, "m.safetensors", arch, tensors);
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

/// `a` equals `b` within `tol · (1 + |b|)` at every index; `what` names the comparison.
pub fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}: index {i}: {x} vs {y}"
        );
    }
}
