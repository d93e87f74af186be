//! Evaluation sets: readers for IDX (raw or gzip), safetensors, NPY/NPZ, CSV and image folders,
//! and the input scaling a model's `[input]` asks for. [`load`] picks the reader from the file name (or, when
//! the name says nothing, from the first bytes); each reader returns raw values and checked
//! class labels, and [`load`] then checks what every set must satisfy (not empty, consistent
//! lengths).

mod array;
mod csv;
mod idx;
mod images;
mod npy;
mod source;
mod tensors;

use std::io::Read;
use std::path::{Path, PathBuf};

use array::Array;

use crate::model::{InputSpec, Model};

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
    /// Reading the set would take more than the memory limit.
    #[error("{path}: {source}")]
    Memory {
        path: PathBuf,
        source: crate::limits::MemoryError,
    },
    /// Not a regular file, or not openable.
    #[error(transparent)]
    File(#[from] crate::files::FileError),
}

/// Options that say how to read a data path.
#[derive(Debug, Clone, Default)]
pub struct DataOptions {
    /// The labels file for an IDX image file or an `.npy` inputs file, when not found by the
    /// standard naming (`*-images-idx3-*` → `*-labels-idx1-*`; `x_test.npy` → `y_test.npy`,
    /// `foo_x.npy` → `foo_y.npy`, `images.npy` → `labels.npy`). Formats that hold their own
    /// labels (safetensors, NPZ, CSV) refuse it.
    pub labels: Option<PathBuf>,
    /// The CSV column holding the label (default `label`).
    pub label_column: Option<String>,
    /// Which split a directory holding several IDX pairs stands for (MNIST's folder holds
    /// `train-*` and `t10k-*`): evaluation reads the test split, training the training split.
    pub split: Split,
    /// Read only the first N samples: the readers stop there (a set is then checked as far
    /// as its headers tell, not to its last byte).
    pub limit: Option<usize>,
    /// The model input an image folder's images are resized to ([`DataOptions::for_model`]);
    /// an image folder refuses to load without it, other formats ignore it.
    pub image_input: Option<ImageInput>,
}

/// The input of the model an image folder is read for: its shape `[C, H, W]`, and the model's
/// file for messages.
#[derive(Debug, Clone)]
pub struct ImageInput {
    pub shape: Vec<usize>,
    pub model: PathBuf,
}

impl DataOptions {
    /// These options for reading a set to run on `model`: image folders are converted and
    /// resized to its input.
    pub fn for_model(self, model: &Model) -> DataOptions {
        DataOptions {
            image_input: Some(ImageInput {
                shape: model.input.shape.clone(),
                model: model.source.clone(),
            }),
            ..self
        }
    }
}

/// The part of a data set a command reads from a directory holding both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Split {
    /// `t10k-*` or `*test*` files: what evaluation reports on.
    #[default]
    Test,
    /// `train-*` files: what fine-tuning, distillation and calibration learn from.
    Train,
}

impl Split {
    /// Whether a file name belongs to this split.
    pub fn matches(self, file_name: &str) -> bool {
        let n = file_name.to_ascii_lowercase();
        match self {
            Split::Test => n.contains("t10k") || n.contains("test"),
            Split::Train => n.contains("train"),
        }
    }
}

/// Samples with their labels. Inputs are raw (unscaled) values, row-major, one sample after
/// another: `inputs.len() == labels.len() × sample_shape.product()`.
#[derive(Debug, Clone)]
pub struct EvalSet {
    pub source: PathBuf,
    pub inputs: Vec<f32>,
    pub sample_shape: Vec<usize>,
    pub labels: Vec<u32>,
    /// The class names by label, for sets that name them (an image folder's sub-folders);
    /// empty otherwise.
    pub classes: Vec<String>,
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

    /// [`EvalSet::prepare`] for `model`, with the token ids of every embedding that reads the
    /// input checked against its table (a bad id names the layer, the sample and the token).
    pub fn prepare_for(&self, model: &Model) -> Result<Vec<f32>, DataError> {
        let inputs = self.prepare(&model.input, model.num_classes())?;
        model
            .check_token_ids(&inputs)
            .map_err(|(layer, msg)| DataError::Mismatch {
                path: self.source.clone(),
                msg: format!("layer {layer}: {msg}"),
            })?;
        Ok(inputs)
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
        if want == 0 {
            return Err(mismatch(format!(
                "the model's input shape {:?} holds no values",
                input.shape
            )));
        }
        if self.sample_len() != want {
            return Err(mismatch(format!(
                "samples have shape {:?} ({} values); the model expects {:?} ({} values)",
                self.sample_shape,
                self.sample_len(),
                input.shape,
                want
            )));
        }
        if self.classes.len() > num_classes {
            let shown = match self.classes.as_slice() {
                [a, b, c, _, .., z] => format!("{a}, {b}, {c}, …, {z}"),
                all => all.join(", "),
            };
            return Err(mismatch(format!(
                "the set has {} classes ({shown}) but the model has {num_classes} outputs; expected at most {num_classes} classes",
                self.classes.len()
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
        let channels = input.shape.first().copied().unwrap_or(1).max(1);
        let per_channel = if input.shape.len() > 1 {
            want / channels
        } else {
            want
        };
        let mean = |c: usize| {
            input
                .mean
                .get(c)
                .or(input.mean.first())
                .copied()
                .unwrap_or(0.0)
        };
        let std = |c: usize| {
            input
                .std
                .get(c)
                .or(input.std.first())
                .copied()
                .unwrap_or(1.0)
        };
        let mut out = Vec::with_capacity(self.inputs.len());
        for sample in self.inputs.chunks_exact(want) {
            for (j, v) in sample.iter().enumerate() {
                // Image inputs have one mean/std per channel; vectors use the first for all.
                let c = if input.shape.len() > 1 {
                    j / per_channel
                } else {
                    0
                };
                out.push((v * input.scale - mean(c)) / std(c));
            }
        }
        Ok(out)
    }
}

/// The evaluation-set formats [`load`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    /// IDX images plus an IDX labels file (MNIST's format), raw or gzip-compressed.
    Idx,
    /// A safetensors file with tensors `inputs` and `labels`.
    Safetensors,
    /// An `.npy` inputs file plus an `.npy` labels file beside it.
    Npy,
    /// An `.npz` archive with arrays `x` and `y`.
    Npz,
    /// A CSV file with a header row and a `label` column.
    Csv,
    /// A directory with one sub-folder of PNG or JPEG images per class.
    ImageFolder,
}

/// What [`load`] accepts, for messages.
pub const ACCEPTED_FORMATS: &str = "IDX images (*-idx3-ubyte, raw or .gz, with the labels file \
     beside it or given with --labels; or a directory holding such a pair), .safetensors (tensors \
     'inputs' and 'labels'), .npy (inputs, with the labels in a sibling .npy such as \
     x_test.npy → y_test.npy), .npz (arrays 'x' and 'y'), .csv (a header row with a 'label' \
     column), a directory with one sub-folder of PNG/JPEG images per class (torchvision's \
     ImageFolder layout); .npy, .csv and .safetensors may also be gzip-compressed (.gz)";

impl DataFormat {
    /// The format of a file, from its name, or from its first bytes when the name says nothing.
    /// A directory is an IDX pair when it holds an `*idx3*` file, else an image folder.
    pub fn detect(path: &Path) -> Result<DataFormat, DataError> {
        let meta = std::fs::metadata(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if meta.is_dir() {
            return Ok(if idx::dir_holds_images(path) {
                DataFormat::Idx
            } else {
                DataFormat::ImageFolder
            });
        }
        // A device or FIFO would never end: refused here, whatever its name says.
        crate::files::open_regular(path)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let (base, gz) = match name.strip_suffix(".gz") {
            Some(b) => (b, true),
            None => (name.as_str(), false),
        };
        let ext = Path::new(base)
            .extension()
            .map(|e| e.to_string_lossy().into_owned());
        match ext.as_deref() {
            Some("safetensors") => return Ok(DataFormat::Safetensors),
            Some("npy") => return Ok(DataFormat::Npy),
            Some("npz") => return Ok(DataFormat::Npz),
            Some("csv") => return Ok(DataFormat::Csv),
            Some("idx") => return Ok(DataFormat::Idx),
            Some(e) if e.contains("idx") || e.contains("ubyte") => return Ok(DataFormat::Idx),
            _ => {}
        }
        if base.contains("-ubyte") || base.contains("idx3") || base.contains("idx1") {
            return Ok(DataFormat::Idx);
        }
        if gz && ext.is_none() {
            // A bare `.gz` has always meant gzip-compressed IDX.
            return Ok(DataFormat::Idx);
        }
        if ext.is_none()
            && let Some(format) = sniff(path)?
        {
            return Ok(format);
        }
        let shown = match &ext {
            Some(e) => format!("extension '.{e}'"),
            None => "no extension, and the first bytes match no known format".to_string(),
        };
        Err(format_err(
            path,
            format!("unknown evaluation-set format ({shown}); accepted: {ACCEPTED_FORMATS}"),
        ))
    }
}

/// Recognises a format from a file's first bytes.
fn sniff(path: &Path) -> Result<Option<DataFormat>, DataError> {
    let mut head = Vec::with_capacity(16);
    let (file, _) = crate::files::open_regular(path)?;
    file.take(16)
        .read_to_end(&mut head)
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(match head.as_slice() {
        [0x93, b'N', b'U', b'M', b'P', b'Y', ..] => Some(DataFormat::Npy),
        [b'P', b'K', 3, 4, ..] | [b'P', b'K', 5, 6, ..] => Some(DataFormat::Npz),
        [0x1f, 0x8b, ..] => Some(DataFormat::Idx),
        [0, 0, 0x08 | 0x09 | 0x0B | 0x0C | 0x0D | 0x0E, 1..=8, ..] => Some(DataFormat::Idx),
        [_, _, _, _, _, _, _, _, b'{', ..] => Some(DataFormat::Safetensors),
        _ => None,
    })
}

/// The training set that belongs with the evaluation set at `path`, when there is one: the
/// folder itself when it holds a `train-*` IDX pair beside the test pair (load it with
/// [`Split::Train`]), or the `train-*` file beside a `t10k-*`/`*test*` file. Calibration and
/// fine-tuning learn from it, so the set that reports accuracy is never the one learnt from.
pub fn training_set_beside(path: &Path) -> Option<PathBuf> {
    let holds_train = |dir: &Path| {
        std::fs::read_dir(dir).ok().is_some_and(|entries| {
            entries.filter_map(Result::ok).any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.contains("idx3") && Split::Train.matches(&n)
            })
        })
    };
    if path.is_dir() {
        return holds_train(path).then(|| path.to_path_buf());
    }
    let name = path.file_name()?.to_string_lossy().into_owned();
    let lower = name.to_ascii_lowercase();
    let test_part = ["t10k", "test"].into_iter().find(|t| lower.contains(t))?;
    let at = lower.find(test_part)?;
    let candidate = format!("{}train{}", &name[..at], &name[at + test_part.len()..]);
    let candidate = path.with_file_name(candidate);
    candidate.is_file().then_some(candidate)
}

/// The files [`load`] would read for `path`: the inputs file and, for IDX and NPY, the labels
/// file beside it (or `opts.labels`). A directory stands for the IDX pair it holds, or for
/// every image of an image folder. Paths that
/// cannot be resolved are left out (loading reports them). Commands protect these from being
/// overwritten by their outputs.
pub fn source_files(path: &Path, opts: &DataOptions) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    let Ok(format) = DataFormat::detect(path) else {
        return files;
    };
    if let Some(l) = &opts.labels {
        files.push(l.clone());
    }
    match format {
        DataFormat::Idx if opts.labels.is_none() => {
            let images = if path.is_dir() {
                idx::find_images_in_dir(path, opts.split).ok()
            } else {
                Some(path.to_path_buf())
            };
            if let Some(images) = images {
                files.extend(idx::labels_path_for(&images));
                files.push(images);
            }
        }
        DataFormat::Npy if opts.labels.is_none() => {
            files.extend(
                npy::labels_candidates(path)
                    .into_iter()
                    .find(|p| p.is_file()),
            );
        }
        DataFormat::ImageFolder => {
            if let Ok(listing) = images::list(path) {
                files.extend(listing.files.into_iter().map(|(p, _)| p));
            }
        }
        _ => {}
    }
    files
}

/// Reads an evaluation set, choosing the reader by extension (or an IDX pair in a directory,
/// or by content when the name has no extension). Every error names the file and what was
/// expected.
pub fn load(path: &Path, opts: &DataOptions) -> Result<EvalSet, DataError> {
    let set = match DataFormat::detect(path)? {
        DataFormat::Idx => idx::load(path, opts)?,
        DataFormat::Safetensors => tensors::load(path, opts)?,
        DataFormat::Npy => npy::load_pair(path, opts)?,
        DataFormat::Npz => npy::load_npz(path, opts)?,
        DataFormat::Csv => csv::load(path, opts)?,
        DataFormat::ImageFolder => images::load(path, opts)?,
    };
    check(match opts.limit {
        Some(n) => set.truncated(n),
        None => set,
    })
}

/// What every evaluation set must satisfy, whatever its format.
fn check(set: EvalSet) -> Result<EvalSet, DataError> {
    if set.is_empty() {
        return Err(DataError::Mismatch {
            msg: format!(
                "the evaluation set is empty (0 samples of shape {:?}); expected at least one sample",
                set.sample_shape
            ),
            path: set.source,
        });
    }
    if set.sample_len() == 0 {
        return Err(DataError::Mismatch {
            msg: format!(
                "samples have shape {:?}, which holds no values",
                set.sample_shape
            ),
            path: set.source,
        });
    }
    if set.labels.len().checked_mul(set.sample_len()) != Some(set.inputs.len()) {
        return Err(format_err(
            &set.source,
            format!(
                "{} input values do not make {} samples of shape {:?}",
                set.inputs.len(),
                set.labels.len(),
                set.sample_shape
            ),
        ));
    }
    Ok(set)
}

pub(crate) fn format_err(path: &Path, msg: impl Into<String>) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Formats that hold their own labels refuse a separate labels file rather than ignore it.
pub(crate) fn reject_labels_option(
    path: &Path,
    opts: &DataOptions,
    holds: &str,
) -> Result<(), DataError> {
    match &opts.labels {
        Some(l) => Err(format_err(
            path,
            format!(
                "--labels ({}) applies to IDX and NPY inputs only; this file holds its own labels ({holds})",
                l.display()
            ),
        )),
        None => Ok(()),
    }
}

/// One array of a set, with where it came from for messages.
pub(crate) struct Part<'p, 'a> {
    pub path: &'p Path,
    /// `tensor 'inputs'`, `array 'y'`, ...
    pub what: &'p str,
    pub array: &'p Array<'a>,
}

/// Builds a set from an inputs array `[N, ...sample shape]` and a labels array `[N]` (or
/// `[N, 1]`), checking shapes, counts and label values.
pub(crate) fn assemble(source: &Path, x: Part, y: Part) -> Result<EvalSet, DataError> {
    let Some((_, sample_shape)) = x.array.shape.split_first() else {
        return Err(format_err(
            x.path,
            format!(
                "{} is a scalar ({}); expected shape [N, ...sample shape], one row per sample",
                x.what,
                x.array.describe()
            ),
        ));
    };
    // Counts as the files state them: a set read only in part still has to be consistent.
    let n = x.array.file_rows;
    let labels_n = match y.array.shape.as_slice() {
        [_] | [_, 1] => y.array.file_rows,
        shape => {
            let hint = match shape {
                [_, c] if *c > 1 => " (one-hot labels? store labels.argmax(axis=1))",
                _ => "",
            };
            return Err(format_err(
                y.path,
                format!(
                    "{} has shape {shape:?}; expected [N]: one class index per sample{hint}",
                    y.what
                ),
            ));
        }
    };
    if labels_n != n {
        let inputs_file = if x.path == y.path {
            String::new()
        } else {
            format!(" in {}", x.path.display())
        };
        return Err(DataError::Mismatch {
            path: y.path.to_path_buf(),
            msg: format!(
                "{} holds {labels_n} labels but {} holds {n} samples{inputs_file}; expected one label per sample",
                y.what, x.what
            ),
        });
    }
    let labels = y
        .array
        .to_labels()
        .map_err(|m| format_err(y.path, format!("{} ({}): {m}", y.what, y.array.describe())))?;
    Ok(EvalSet {
        source: source.to_path_buf(),
        inputs: x.array.to_f32(),
        // A 1-D inputs array holds one value per sample.
        sample_shape: if sample_shape.is_empty() {
            vec![1]
        } else {
            sample_shape.to_vec()
        },
        labels,
        classes: Vec::new(),
    })
}
