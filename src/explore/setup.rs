//! Setting up an exploration: the model and the evaluation set loaded and checked, the
//! activation-calibration set chosen (the training images beside the evaluation set when
//! there are some), the fingerprint every cache key starts from, the real evaluator, the
//! journal whose measurements are the cache, and the record of the input files (SHA-256)
//! that every result file carries. The explorer and the headless commands start the same
//! way, so they share the cache and measure the same figures.

use std::path::PathBuf;
use std::sync::Arc;

use crossbeam_channel::Sender;

use super::info::ModelInfo;
use super::jobs::WorkerMsg;
use super::journal::{self, JOURNAL_VERSION, JournalError, JournalWriter, Record};
use super::model_evaluator::{self, ModelEvaluator};
use super::results::{CalibrationSource, Inputs};
use super::session::{Session, SessionOptions};
use crate::data::{DataOptions, Split};
use crate::model::Model;

/// Where measurements are journaled (and looked up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalChoice {
    /// One file per model and evaluation set in the user's data directory.
    Default,
    File(PathBuf),
    /// Neither read nor written.
    Off,
}

/// What to set up.
#[derive(Debug, Clone)]
pub struct SetupOptions {
    pub model: PathBuf,
    pub arch: Option<PathBuf>,
    pub data: PathBuf,
    pub labels: Option<PathBuf>,
    pub label_column: Option<String>,
    pub limit: Option<usize>,
    /// Where activation calibration takes its inputs: `None` looks for the training set
    /// beside the evaluation set and falls back to the evaluation set itself.
    pub train: Option<PathBuf>,
    pub quick_samples: usize,
    pub journal: JournalChoice,
    /// Other files the session reads (a starting recipe): no export may replace them.
    pub also_reads: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Model(#[from] crate::model::LoadError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Memory(#[from] crate::limits::MemoryError),
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    #[error("--limit must be at least 1")]
    ZeroLimit,
    #[error("{}: the model has no linear or conv layer to compress", .0.display())]
    NothingToCompress(PathBuf),
}

/// Calibration samples kept from the training set (recipes take their first
/// `calibration_samples`, 512 by default).
const CALIBRATION_SAMPLES: usize = 4096;

/// A loaded model and evaluation set, ready to explore.
pub struct Setup {
    pub model_path: PathBuf,
    pub data_path: PathBuf,
    pub info: ModelInfo,
    pub fingerprint: u64,
    /// Hash of the calibration inputs (0: the evaluation set's own samples).
    pub calibration_tag: u64,
    pub evaluator: Arc<ModelEvaluator>,
    /// The journal file, when journaling.
    pub journal_path: Option<PathBuf>,
    /// What the journal held when the setup read it.
    pub journal_records: Vec<Record>,
    /// The input files and their hashes, for result files.
    pub inputs: Inputs,
    /// Things a person should know (loader warnings, the calibration set, skipped lines).
    pub notes: Vec<String>,
}

impl Setup {
    pub fn open(opts: &SetupOptions) -> Result<Setup, SetupError> {
        let (model, mut notes) = if crate::engine::is_compressed_file(&opts.model) {
            // A compressed model (apply, finetune) is explored from the values it holds: its
            // dequantized weights, pruned ones exactly zero, are the starting point.
            let cm = crate::engine::load_compressed(&opts.model)?;
            let note = format!(
                "{} is compressed ({} bytes packed): exploring its dequantized weights",
                opts.model.display(),
                cm.size_bytes()
            );
            (cm.model, vec![note])
        } else {
            let loaded = crate::model::load_with_arch(&opts.model, opts.arch.as_deref())?;
            let notes: Vec<String> = loaded
                .warnings
                .iter()
                .map(|w| format!("warning: {w}"))
                .collect();
            (loaded.model, notes)
        };
        if opts.limit == Some(0) {
            return Err(SetupError::ZeroLimit);
        }
        let data_opts = DataOptions {
            labels: opts.labels.clone(),
            label_column: opts.label_column.clone(),
            limit: opts.limit,
            ..Default::default()
        }
        .for_model(&model);
        let set = crate::data::load(&opts.data, &data_opts)?;
        crate::limits::check_memory(
            &format!(
                "{}: evaluating its {} samples on {}",
                set.source.display(),
                set.len(),
                model.source.display()
            ),
            Some(crate::model::shape::evaluation_bytes(
                &model,
                set.len(),
                crate::measure::EVAL_BATCH,
            )),
        )?;
        let inputs = set.prepare_for(&model)?;
        if model.compressible().next().is_none() {
            return Err(SetupError::NothingToCompress(opts.model.clone()));
        }
        let fingerprint = model_evaluator::fingerprint(&model, &set);
        let data_name = data_label(&opts.data);
        let info = ModelInfo::from_model(&model, &data_name, set.len());

        let (calibration, calibration_tag, loader) = calibration_set(opts, &model)?;
        if let Some(c) = &calibration {
            notes.push(format!(
                "quantized activations are calibrated on the {} ({})",
                c.set, c.path
            ));
        }
        let data_files = regular_files(crate::data::source_files(&opts.data, &data_opts));
        let provenance = Inputs::new(&opts.model, &data_files, set.len(), calibration)?;
        let journal_path = match &opts.journal {
            JournalChoice::Off => None,
            JournalChoice::File(p) => Some(p.clone()),
            JournalChoice::Default => {
                let p = journal::default_path(&info.name, fingerprint);
                if p.is_none() {
                    notes.push("no data directory found: measurements are not journaled".into());
                }
                p
            }
        };
        let mut journal_records = Vec::new();
        if let Some(path) = &journal_path
            && path.exists()
        {
            let loaded = journal::read(path)?;
            journal::check_fingerprint(path, &loaded, fingerprint)?;
            if loaded.skipped > 0 {
                notes.push(format!(
                    "{} unreadable line(s) of the journal were skipped",
                    loaded.skipped
                ));
            }
            journal_records = loaded.records;
        }
        let models_dir = journal_path.as_deref().map(journal::models_dir);
        if let Some(dir) = &models_dir {
            // A fine-tune killed while saving its model leaves a temporary behind.
            crate::files::remove_stale_temporaries(dir);
            let missing = forget_missing_models(&mut journal_records, dir);
            if missing > 0 {
                notes.push(format!(
                    "{missing} fine-tuned model(s) are missing from {}: f tunes them again",
                    dir.display()
                ));
            }
        }
        // What no export or plot may replace.
        let mut protected = data_files;
        protected.push(crate::model::sidecar_path(&opts.model));
        protected.extend(opts.arch.iter().cloned());
        protected.extend(opts.also_reads.iter().cloned());
        protected.extend(journal_path.iter().cloned());
        let mut evaluator =
            ModelEvaluator::new(model, info, inputs, set.labels, opts.quick_samples.max(1))
                .with_provenance(provenance.clone())
                .with_inputs(protected)
                .with_training(super::finetune::training_path(
                    opts.train.as_deref(),
                    &opts.data,
                ))
                .with_models_dir(models_dir);
        if let Some(l) = loader {
            evaluator = evaluator.with_calibration_loader(l);
        }
        Ok(Setup {
            model_path: opts.model.clone(),
            data_path: opts.data.clone(),
            // With the evaluator's quick subset size.
            info: evaluator.info().clone(),
            fingerprint,
            calibration_tag,
            evaluator: Arc::new(evaluator),
            journal_path,
            journal_records,
            inputs: provenance,
            notes,
        })
    }

    /// A session on this setup with the journal's measurements as its cache.
    pub fn session(&self, mut options: SessionOptions) -> Session {
        options.fingerprint = self.fingerprint;
        options.calibration = self.calibration_tag;
        options.inputs = Some(self.inputs.clone());
        let mut session = Session::new(self.info.clone(), options);
        session.load_cache(&self.journal_records);
        session
    }

    /// Opens the journal for appending (writing the session header), when journaling.
    pub fn journal_writer(
        &self,
        errors: Sender<WorkerMsg>,
    ) -> Result<Option<JournalWriter>, JournalError> {
        let Some(path) = &self.journal_path else {
            return Ok(None);
        };
        let w = JournalWriter::open(path, errors)?;
        w.append(Record::Session {
            version: JOURNAL_VERSION,
            model: self.model_path.display().to_string(),
            data: self.data_path.display().to_string(),
            fingerprint: journal::key_hex(self.fingerprint),
        });
        Ok(Some(w))
    }
}

/// Drops the model of every journaled fine-tuned point whose saved file is not in `dir` (the
/// point stays, and `f` tunes it again); returns how many models are missing.
fn forget_missing_models(records: &mut [Record], dir: &std::path::Path) -> usize {
    let mut missing: Vec<String> = Vec::new();
    for r in records {
        if let Record::Point { model, .. } = r
            && let Some(sha256) = model
            && !dir
                .join(super::finetune::tuned_model_name(sha256))
                .is_file()
        {
            if !missing.contains(sha256) {
                missing.push(sha256.clone());
            }
            *model = None;
        }
    }
    missing.len()
}

/// Loads the calibration inputs when first needed.
pub type CalibrationLoader =
    Box<dyn Fn() -> Result<Vec<f32>, crate::data::DataError> + Send + Sync>;

/// The calibration set: `--train`, else the training set beside the evaluation set, else
/// none (the evaluation set calibrates, as `squeeze eval` does without
/// `--calibration-data`). Its files are hashed now; its samples are read when a
/// configuration first quantizes activations.
fn calibration_set(
    opts: &SetupOptions,
    model: &Model,
) -> Result<(Option<CalibrationSource>, u64, Option<CalibrationLoader>), SetupError> {
    let (path, split) = match &opts.train {
        Some(p) => (p.clone(), Split::Train),
        None => match crate::data::training_set_beside(&opts.data) {
            Some(p) => (p, Split::Train),
            None => {
                return Ok((
                    Some(CalibrationSource {
                        set: "evaluation set (no training set found beside it; give --train)"
                            .into(),
                        path: opts.data.display().to_string(),
                        samples: 0,
                    }),
                    0,
                    None,
                ));
            }
        },
    };
    let data_opts = DataOptions {
        split,
        limit: Some(CALIBRATION_SAMPLES),
        ..Default::default()
    }
    .for_model(model);
    let files = regular_files(crate::data::source_files(&path, &data_opts));
    let mut tag = super::eval::Fnv::default();
    for f in &files {
        let digest = super::results::FileDigest::of(f)?;
        tag.write(digest.sha256.as_bytes());
    }
    tag.write(&(CALIBRATION_SAMPLES as u64).to_le_bytes());
    // The model's tensors are shared, not copied: the loader checks the set as every command
    // does (shape, classes, and token ids against the embedding tables).
    let model = model.clone();
    let shown = path.clone();
    let loader: CalibrationLoader = Box::new(move || {
        let set = crate::data::load(&shown, &data_opts)?.truncated(CALIBRATION_SAMPLES);
        set.prepare_for(&model)
    });
    Ok((
        Some(CalibrationSource {
            set: "training set".into(),
            path: path.display().to_string(),
            samples: CALIBRATION_SAMPLES,
        }),
        tag.finish(),
        Some(loader),
    ))
}

/// The regular files of a list (a data directory stands for the files in it, listed too).
fn regular_files(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = paths.into_iter().filter(|p| p.is_file()).collect();
    files.sort();
    files.dedup();
    files
}

/// What titles call an evaluation set: its folder's name (`mnist`, not
/// `t10k-images-idx3-ubyte.gz`), or the file's name when it lies in no named folder.
pub fn data_label(path: &std::path::Path) -> String {
    let folder = if path.is_dir() {
        Some(path)
    } else {
        path.parent()
    };
    folder
        .and_then(|f| f.file_name())
        .or_else(|| path.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
