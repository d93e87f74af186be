//! Options and loading shared by several commands.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::data::{DataOptions, EvalSet};
use crate::model::{Loaded, Model};

/// The bundled default model and evaluation set, relative to the crate root.
pub const DEFAULT_MODEL: &str = "assets/models/lenet-300-100.safetensors";
pub const DEFAULT_DATA: &str = "assets/data/mnist/t10k-images-idx3-ubyte.gz";

/// Finds a bundled asset: relative to the working directory first, then to the crate root the
/// binary was built from (so `cargo run` works from anywhere in the tree).
pub fn asset(rel: &str) -> PathBuf {
    let here = PathBuf::from(rel);
    if here.exists() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model file (safetensors).
    #[arg(long, short = 'm', value_name = "FILE")]
    pub model: PathBuf,
    /// Architecture description (TOML or JSON), when neither a sidecar `NAME.arch.toml` nor the
    /// file's metadata has one.
    #[arg(long, value_name = "FILE")]
    pub arch: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// Evaluation set: IDX (.gz or raw, or a directory with one IDX pair), safetensors
    /// (`inputs`, `labels`), NPY (x with a y beside it), NPZ (`x`, `y`), CSV (a `label` column),
    /// or a directory with one sub-folder of PNG/JPEG images per class (resized and
    /// centre-cropped to the model's input).
    #[arg(long, short = 'd', value_name = "PATH")]
    pub data: PathBuf,
    /// Labels file for IDX or NPY inputs, when not found by the standard naming.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// CSV column holding the label.
    #[arg(long, value_name = "NAME")]
    pub label_column: Option<String>,
    /// Use only the first N samples.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

impl DataArgs {
    /// Reads the set to run on `model` (whose input an image folder is resized to).
    pub fn load(&self, model: &Model) -> anyhow::Result<EvalSet> {
        if self.limit == Some(0) {
            anyhow::bail!("--limit must be at least 1");
        }
        let opts = DataOptions {
            labels: self.labels.clone(),
            label_column: self.label_column.clone(),
            limit: self.limit,
            ..Default::default()
        }
        .for_model(model);
        Ok(crate::data::load(&self.data, &opts)?)
    }
}

/// Loads a model and prints the loader's warnings on stderr.
pub fn load_model(path: &Path, arch: Option<&Path>) -> anyhow::Result<Loaded> {
    let loaded = crate::model::load_with_arch(path, arch)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    Ok(loaded)
}

/// Refuses an evaluation of `set` on `model` that would not fit the memory limit, before its
/// inputs are prepared.
pub fn check_evaluation_memory(model: &Model, set: &EvalSet) -> anyhow::Result<()> {
    let need = crate::model::shape::evaluation_bytes(model, set.len(), crate::measure::EVAL_BATCH);
    crate::limits::check_memory(
        &format!(
            "{}: evaluating its {} samples on {}",
            set.source.display(),
            set.len(),
            model.source.display()
        ),
        Some(need),
    )
    .map_err(anyhow::Error::msg)
}

/// Loads the evaluation set and prepares it for `model`: scaled inputs (token ids checked
/// against the embedding tables that read them) and the labels.
pub fn prepare(model: &Model, set: &EvalSet) -> anyhow::Result<Vec<f32>> {
    let context = || {
        format!(
            "evaluation set does not fit model {}",
            model.source.display()
        )
    };
    set.prepare_for(model).with_context(context)
}

/// A count with thousands separators.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The width of a text column headed `header` holding `cells`: the longest of them, in
/// characters (what `{:<width$}` pads to), so long layer names keep the columns aligned.
pub fn column_width<'a>(header: &str, cells: impl IntoIterator<Item = &'a str>) -> usize {
    cells
        .into_iter()
        .map(|c| c.chars().count())
        .fold(header.chars().count(), usize::max)
}
