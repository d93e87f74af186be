//! Evaluation sets: readers for IDX (raw or gzip), safetensors, NPY/NPZ and CSV, and the input
//! scaling a model's `[input]` asks for.

mod idx;

use std::path::{Path, PathBuf};

use crate::model::InputSpec;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not what its format says (bad magic, truncated, wrong dtype, ...).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// The data does not fit the model (shape, label range, NaN, empty).
    #[error("{path}: {msg}")]
    Mismatch { path: PathBuf, msg: String },
}

/// Options that say how to read a data path.
#[derive(Debug, Clone, Default)]
pub struct DataOptions {
    /// The labels file for an IDX image file, when not found by the standard naming.
    pub labels: Option<PathBuf>,
    /// The CSV column holding the label (default `label`).
    pub label_column: Option<String>,
}

/// Samples with their labels. Inputs are raw (unscaled) values, row-major, one sample after
/// another: `inputs.len() == labels.len() × sample_shape.product()`.
#[derive(Debug, Clone)]
pub struct EvalSet {
    pub source: PathBuf,
    pub inputs: Vec<f32>,
    pub sample_shape: Vec<usize>,
    pub labels: Vec<u32>,
}

impl EvalSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn sample_len(&self) -> usize {
        self.sample_shape.iter().product()
    }

    /// The first `n` samples (all when `n` is larger).
    pub fn truncated(mut self, n: usize) -> Self {
        let n = n.min(self.len());
        self.labels.truncate(n);
        self.inputs.truncate(n * self.sample_len());
        self
    }

    /// Checks the set against a model's input and classes and returns the scaled inputs
    /// `(raw × scale − mean[c]) / std[c]`, ready to run. A sample shape with the same number of
    /// values as the model's input (`[28, 28]` for `[1, 28, 28]` or `[784]`) is accepted.
    pub fn prepare(&self, input: &InputSpec, num_classes: usize) -> Result<Vec<f32>, DataError> {
        let mismatch = |msg: String| DataError::Mismatch {
            path: self.source.clone(),
            msg,
        };
        if self.is_empty() {
            return Err(mismatch("the evaluation set has no samples".into()));
        }
        let want: usize = input.shape.iter().product();
        if self.sample_len() != want {
            return Err(mismatch(format!(
                "samples have shape {:?} ({} values); the model expects {:?} ({} values)",
                self.sample_shape,
                self.sample_len(),
                input.shape,
                want
            )));
        }
        if let Some((i, l)) = self
            .labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l as usize >= num_classes)
        {
            return Err(mismatch(format!(
                "label {l} of sample {i} is out of range: the model has {num_classes} classes (0..={})",
                num_classes.saturating_sub(1)
            )));
        }
        if let Some(i) = self.inputs.iter().position(|v| !v.is_finite()) {
            return Err(mismatch(format!(
                "sample {} holds a non-finite value (NaN or infinity)",
                i / want
            )));
        }
        let channels = input.shape[0];
        let per_channel = if input.shape.len() > 1 { want / channels } else { want };
        let mean = |c: usize| input.mean.get(c).or(input.mean.first()).copied().unwrap_or(0.0);
        let std = |c: usize| input.std.get(c).or(input.std.first()).copied().unwrap_or(1.0);
        let mut out = Vec::with_capacity(self.inputs.len());
        for sample in self.inputs.chunks_exact(want) {
            for (j, v) in sample.iter().enumerate() {
                // Image inputs have one mean/std per channel; vectors use the first for all.
                let c = if input.shape.len() > 1 { j / per_channel } else { 0 };
                out.push((v * input.scale - mean(c)) / std(c));
            }
        }
        Ok(out)
    }
}

/// Reads an evaluation set, choosing the reader by extension (or an IDX pair in a directory).
pub fn load(path: &Path, opts: &DataOptions) -> Result<EvalSet, DataError> {
    idx::load(path, opts)
}
