//! `squeeze distill`: train a smaller architecture from scratch on a teacher's softened outputs
//! and the labels, beside the same run on labels alone, and write the student.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use serde::Serialize;

use super::common::{Format, load_model};
use super::finetune::{Progress, Provenance, RunArgs, summary_header, summary_row};
use super::train::{InputFile, check_training_memory, load_test_set, load_training_set};
use crate::compress::Recipe;
use crate::data::Split;
use crate::files::OutputCheck;
use crate::measure::Timing;
use crate::train::{
    self, Distillation, FinetuneSets, FinetuneSettings, Finetuned, TRAIN_METADATA_KEY,
};

#[derive(Debug, clap::Args)]
pub struct DistillArgs {
    /// The teacher model.
    #[arg(long, value_name = "FILE")]
    pub teacher: PathBuf,
    /// The student's architecture (TOML, or JSON when it ends in .json), built from scratch:
    /// linear layers give `out_features`, conv layers `out_channels` and `kernel`.
    #[arg(long, value_name = "FILE")]
    pub student: PathBuf,
    /// Training set: a folder holding MNIST's two splits gives its training pair (and its test
    /// pair is reported on); or any evaluation-set format.
    #[arg(long, short = 'd', value_name = "PATH")]
    pub data: PathBuf,
    /// Test set, only reported on. Default: the test pair of a --data folder holding both.
    #[arg(long, value_name = "PATH")]
    pub test: Option<PathBuf>,
    /// Where to write the distilled student (dense f32 safetensors, architecture embedded).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub run: RunArgs,
    /// Softmax temperature T.
    #[arg(long, default_value_t = Distillation::default().temperature)]
    pub temperature: f64,
    /// Weight α of the teacher's term, α·T²·KL(teacher ‖ student at T) + (1 − α)·cross-entropy.
    #[arg(long, default_value_t = Distillation::default().alpha)]
    pub alpha: f64,
    /// Skip the run on labels alone (same seed and epochs) that measures what distillation
    /// gains.
    #[arg(long)]
    pub no_baseline: bool,
}

#[derive(Serialize)]
struct Output<'a> {
    teacher: String,
    student: String,
    out: String,
    #[serde(flatten)]
    provenance: &'a Provenance<'a>,
    test: Option<&'a crate::measure::Measurement>,
    labels_only_test: Option<&'a crate::measure::Measurement>,
}

pub fn run(args: DistillArgs) -> anyhow::Result<()> {
    let mut settings =
        FinetuneSettings::new(args.run.training.config(args.run.epochs, args.run.lr));
    settings.distill = Some(Distillation {
        temperature: args.temperature,
        alpha: args.alpha,
    });
    settings.measure_untuned = false;
    settings.timing = Timing {
        latency: true,
        throughput: false,
    };
    settings.validate()?;
    if args.run.limit == Some(0) {
        anyhow::bail!("--limit must be at least 1");
    }
    let mut check = super::finetune::training_data_inputs(
        OutputCheck::new()
            .input("--teacher", &args.teacher)
            .input("--student", &args.student),
        &args.data,
    )
    .output("--out", &args.out);
    if let Some(t) = &args.test {
        check = check.input("--test", t);
    }
    check.check()?;

    let teacher = load_model(&args.teacher, None)?.model;
    let spec = train::read_arch(&args.student)?;
    let student = train::init_model(&spec, &args.student, settings.train.seed)?.detached();
    check_training_memory(&student, settings.train.batch)?;
    let full = load_training_set(&args.data, args.run.limit, &student)?;
    let (train_set, val_set) = train::split_validation(&full, args.run.val_split)?;
    let test_set = load_test_set(&args.data, args.test.as_deref(), &full, &student)?;
    let sets = FinetuneSets {
        train: &train_set,
        validation: val_set.as_ref(),
        test: test_set.as_ref(),
    };
    let quiet = args.run.quiet;
    if !quiet {
        let params: usize = student.layers.iter().map(|l| l.param_count()).sum();
        let teacher_params: usize = teacher.layers.iter().map(|l| l.param_count()).sum();
        eprintln!(
            "distilling {} ({teacher_params} parameters) into {} ({params} parameters): {} training samples, {} validation, {} test; {} epochs, T = {}, α = {}, {:?} lr {}, batch {}, seed {}",
            args.teacher.display(),
            args.student.display(),
            train_set.len(),
            val_set.as_ref().map_or(0, |v| v.len()),
            test_set.as_ref().map_or(0, |t| t.len()),
            settings.train.epochs,
            args.temperature,
            args.alpha,
            settings.train.optimizer,
            settings.train.lr,
            settings.train.batch,
            settings.train.seed,
        );
    }
    let cancel = AtomicBool::new(false);
    let dense = Recipe::default();
    let run_one = |settings: &FinetuneSettings, label: &str| -> anyhow::Result<Finetuned> {
        let mut progress = Progress::new(train_set.len(), quiet, label);
        let r = train::finetune(
            &student,
            &dense,
            sets,
            settings,
            Some(&teacher),
            &cancel,
            &mut |e| progress.event(e),
        );
        progress.finish();
        Ok(r?)
    };
    let result = run_one(&settings, "distilled")?;
    let baseline = if args.no_baseline {
        None
    } else {
        let mut plain = settings.clone();
        plain.distill = None;
        Some(run_one(&plain, "labels only")?)
    };

    let provenance = Provenance {
        settings: &settings,
        model: None,
        teacher: Some(InputFile::of(&args.teacher)?),
        data: InputFile::of_data(&args.data, Split::Train)?,
        test: match (&test_set, &args.test) {
            (None, _) => Vec::new(),
            (Some(_), Some(t)) => InputFile::of_data(t, Split::Test)?,
            (Some(_), None) => InputFile::of_data(&args.data, Split::Test)?,
        },
        limit: args.run.limit,
        val_split: args.run.val_split,
        report: &result.report,
        labels_only: baseline.as_ref().map(|b| &b.report),
    };
    let mut extra = std::collections::HashMap::new();
    extra.insert(
        TRAIN_METADATA_KEY.to_string(),
        serde_json::to_string(&provenance)?,
    );
    train::save(&result.dense, &args.out, &extra)?;

    match args.run.format {
        Format::Json => {
            let out = Output {
                teacher: args.teacher.display().to_string(),
                student: args.student.display().to_string(),
                out: args.out.display().to_string(),
                provenance: &provenance,
                test: result.test.as_ref(),
                labels_only_test: baseline.as_ref().and_then(|b| b.test.as_ref()),
            };
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Format::Text => {
            println!("{}", summary_header());
            if let Some(b) = &baseline {
                println!(
                    "{}",
                    summary_row(
                        "student, labels only",
                        b.report.test_accuracy,
                        b.report.validation_accuracy,
                        b.test.as_ref()
                    )
                );
            }
            println!(
                "{}",
                summary_row(
                    "student, distilled",
                    result.report.test_accuracy,
                    result.report.validation_accuracy,
                    result.test.as_ref()
                )
            );
            if let (Some(b), Some(a), Some(l)) = (
                &baseline,
                result.report.test_accuracy,
                baseline.as_ref().and_then(|b| b.report.test_accuracy),
            ) {
                let _ = b;
                println!(
                    "distillation gain on the test set: {:+.2} points",
                    (a - l) * 100.0
                );
            }
            println!(
                "kept the weights after epoch {} of {}; wrote {}",
                result.report.kept_epoch,
                result.report.epochs.len(),
                args.out.display()
            );
        }
    }
    Ok(())
}
