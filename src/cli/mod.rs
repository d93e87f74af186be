//! The command line: clap definitions and thin dispatch to the library.

mod apply;
mod bench;
pub mod common;
mod distill;
mod eval;
mod explore;
pub mod finetune;
mod headless;
mod import;
mod info;
pub mod recipe_args;
mod report;
mod search;
mod sensitivity;
mod sweep;
mod train;

use clap::{Parser, Subcommand};

/// Explore how far a neural network can be compressed before it stops being good enough.
#[derive(Debug, Parser)]
#[command(name = "squeeze", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The most memory a model, a run or a data set may ask for (e.g. 512M, 16G, 2T). Sizes
    /// read from files are checked against it before anything is allocated, and going over is
    /// an error giving the figure. Default: the machine's physical memory.
    #[arg(long, global = true, value_name = "SIZE", value_parser = crate::limits::parse_size)]
    pub memory_limit: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open the interactive explorer: tune pruning and quantization per layer and watch
    /// accuracy, size and latency move.
    Explore(explore::ExploreArgs),
    /// Convert an ONNX model (torch.onnx.export, tf2onnx) into a squeeze model.
    Import(import::ImportArgs),
    /// Show a model's layers, parameters, MACs, bytes and activation memory.
    Info(info::InfoArgs),
    /// Measure a model (dense, compressed by a recipe, or a compressed file): accuracy, size, latency.
    Eval(eval::EvalArgs),
    /// Compress a model as a recipe says and write the packed model (and optionally dense weights).
    Apply(apply::ApplyArgs),
    /// Measure dense and compressed variants in one run: accuracy, size, full-set time, latency.
    Bench(bench::BenchArgs),
    /// Train a model from an architecture file and write it as safetensors.
    Train(train::TrainArgs),
    /// Each layer alone across sparsities and bit widths: how much each layer can take.
    Sensitivity(sensitivity::SensitivityArgs),
    /// Measure a grid of recipes (or one shard of it), one JSON line per configuration.
    Sweep(sweep::SweepArgs),
    /// Join the result files of sweep shards, one line per configuration.
    Merge(sweep::MergeArgs),
    /// Find per-layer sparsity and bits that maximise accuracy under a budget (size, latency,
    /// flash, RAM, a device target).
    Search(search::SearchArgs),
    /// Compress a model by a recipe and train it compressed (masks held, gradual pruning,
    /// quantization-aware training, shared values, distillation); measure and write it packed.
    Finetune(finetune::FinetuneArgs),
    /// Train a smaller architecture from scratch on a teacher's softened outputs, beside the
    /// same run on labels alone.
    Distill(distill::DistillArgs),
    /// Write the handout of an exploration: one self-contained HTML file with the baseline,
    /// the pinned configurations, both charts, the sensitivity table and the pinned recipes.
    Report(report::ReportArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(limit) = cli.memory_limit {
        crate::limits::set_memory_limit(limit);
    }
    match cli.command {
        Some(Command::Explore(args)) => explore::run(args),
        Some(Command::Import(args)) => import::run(args),
        Some(Command::Info(args)) => info::run(args),
        Some(Command::Eval(args)) => eval::run(args),
        Some(Command::Apply(args)) => apply::run(args),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Train(args)) => train::run(args),
        Some(Command::Sensitivity(args)) => sensitivity::run(args),
        Some(Command::Sweep(args)) => sweep::run_sweep(args),
        Some(Command::Merge(args)) => sweep::run_merge(args),
        Some(Command::Search(args)) => search::run(args),
        Some(Command::Finetune(args)) => finetune::run(args),
        Some(Command::Distill(args)) => distill::run(args),
        Some(Command::Report(args)) => report::run(args),
        None => default_job(),
    }
}

/// `squeeze` with no arguments: the explorer on the bundled model and data when on a terminal;
/// otherwise (a pipe, CI) the same model's summary and evaluation, never waiting for keys.
fn default_job() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
        return explore::run(explore::ExploreArgs::default());
    }
    eprintln!(
        "squeeze: not on a terminal, so showing the bundled model's summary and evaluation; `squeeze explore` opens the explorer on a terminal, `squeeze --help` lists the headless commands"
    );
    let model = common::asset(common::DEFAULT_MODEL);
    let data = common::asset(common::DEFAULT_DATA);
    info::run(info::InfoArgs {
        model: common::ModelArgs {
            model: model.clone(),
            arch: None,
        },
        format: common::Format::Text,
        time: false,
    })?;
    println!();
    eval::run(eval::EvalArgs {
        model: common::ModelArgs { model, arch: None },
        data: common::DataArgs {
            data,
            labels: None,
            label_column: None,
            limit: None,
        },
        recipe: Default::default(),
        reference: None,
        calibration_data: None,
        no_timing: false,
        format: common::Format::Text,
    })
}

/// The error and its causes on one line, leaving out causes the message already quotes.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg = format!("{msg}: {c}");
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    //! Argument parsing alone (`Cli::try_parse_from`): defaults, short flags, and the values and
    //! combinations clap refuses before anything runs.

    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use clap::error::ErrorKind;
    use clap::{CommandFactory, Parser};

    use super::{Cli, Command, common::Format};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("squeeze").chain(args.iter().copied()))
    }

    /// The subcommand `args` parse to; panics with clap's message when they do not.
    fn command(args: &[&str]) -> Command {
        match parse(args) {
            Ok(cli) => cli.command.expect("a subcommand"),
            Err(e) => panic!("{args:?} was refused: {e}"),
        }
    }

    /// Asserts that clap refuses `args` with an error of `kind` that names `needle`.
    fn refused(args: &[&str], kind: ErrorKind, needle: &str) {
        match parse(args) {
            Ok(cli) => panic!("{args:?} was accepted: {cli:?}"),
            Err(e) => {
                let text = e.to_string();
                assert_eq!(e.kind(), kind, "{args:?}: {text}");
                assert!(text.contains(needle), "{args:?}: {text}");
            }
        }
    }

    #[test]
    fn the_definition_is_consistent() {
        // Conflicts and requirements name arguments that exist, no flag is defined twice.
        Cli::command().debug_assert();
    }

    #[test]
    fn no_arguments_is_the_default_job() {
        let cli = parse(&[]).expect("no arguments");
        assert!(cli.command.is_none());
        assert_eq!(cli.memory_limit, None);
    }

    #[test]
    fn explore_defaults() {
        let Command::Explore(a) = command(&["explore"]) else {
            panic!("not explore");
        };
        assert_eq!(a.session.model, None);
        assert_eq!(a.session.data, None);
        assert_eq!(a.session.session, None);
        assert!(!a.session.no_session);
        assert_eq!(
            a.session.quick_samples,
            crate::explore::model_evaluator::QUICK_SAMPLES
        );
        assert_eq!(a.session.threads, 0);
        assert_eq!(a.out_dir, PathBuf::from("squeeze-out"));
        assert_eq!(a.search_seconds, 30);
        assert!(!a.resume && !a.present);
        assert_eq!((a.budget_size, a.budget_latency), (None, None));
    }

    #[test]
    fn eval_defaults_and_short_flags() {
        let Command::Eval(a) = command(&["eval", "-m", "m.safetensors", "-d", "data"]) else {
            panic!("not eval");
        };
        assert_eq!(a.model.model, Path::new("m.safetensors"));
        assert_eq!(a.data.data, Path::new("data"));
        assert_eq!(a.data.limit, None);
        assert_eq!(a.format, Format::Text);
        assert!(!a.no_timing);
        assert!(a.recipe.recipe.is_none() && a.recipe.sparsity.is_none());
        assert!(
            a.recipe.recipe().expect("no recipe flags").is_none(),
            "dense"
        );
        let Command::Eval(b) = command(&[
            "eval",
            "--model",
            "m.safetensors",
            "--data",
            "data",
            "--recipe",
            "r.toml",
            "--format",
            "json",
        ]) else {
            panic!("not eval");
        };
        assert_eq!(b.model.model, a.model.model);
        assert_eq!(b.data.data, a.data.data);
        assert_eq!(b.recipe.recipe.as_deref(), Some(Path::new("r.toml")));
        assert_eq!(b.format, Format::Json);
    }

    #[test]
    fn the_memory_limit_is_global_and_takes_a_size() {
        let cli = parse(&["eval", "-m", "m", "-d", "d", "--memory-limit", "1.5G"]).expect("parse");
        assert_eq!(cli.memory_limit, Some(3 << 29));
        let cli = parse(&["--memory-limit", "512M", "info", "-m", "m"]).expect("parse");
        assert_eq!(cli.memory_limit, Some(512 << 20));
        refused(
            &["--memory-limit", "lots", "info", "-m", "m"],
            ErrorKind::ValueValidation,
            "lots",
        );
    }

    #[test]
    fn finetune_and_train_defaults() {
        let Command::Finetune(a) = command(&["finetune", "-m", "m", "-d", "d", "-o", "out"]) else {
            panic!("not finetune");
        };
        assert_eq!((a.run.epochs, a.run.lr, a.run.val_split), (8, 1e-3, 5000));
        assert_eq!(a.run.training.batch, 128);
        assert_eq!(a.run.training.seed, 0);
        assert_eq!(a.run.training.optimizer, super::train::OptimizerArg::Adamw);
        assert_eq!(a.run.training.lr_decay, super::train::LrDecayArg::Cosine);
        assert_eq!(a.schedule, super::finetune::ScheduleArg::Oneshot);
        assert_eq!((a.prune_end, a.rounds), (2.0 / 3.0, 3));
        assert!(!a.qat && !a.no_qat && !a.distill.distill);
        let d = crate::train::Distillation::default();
        assert_eq!(
            (a.distill.temperature, a.distill.alpha),
            (d.temperature, d.alpha)
        );

        let Command::Train(t) = command(&[
            "train", "--arch", "a.toml", "--data", "d", "--test", "t", "--out", "o",
        ]) else {
            panic!("not train");
        };
        assert_eq!((t.epochs, t.lr, t.limit), (10, 1e-3, None));
        assert_eq!(t.training.batch, 128);
    }

    #[test]
    fn headless_exploration_defaults() {
        let Command::Search(s) = command(&["search", "--budget", "size=40KB", "-o", "best.toml"])
        else {
            panic!("not search");
        };
        assert_eq!(s.budget, ["size=40KB"]);
        assert_eq!(s.time, Duration::from_secs(60));
        assert_eq!((s.restarts, s.seed), (3, 0));
        let Command::Sensitivity(s) = command(&["sensitivity"]) else {
            panic!("not sensitivity");
        };
        assert_eq!(s.sparsities.len(), 9);
        assert_eq!(s.bits, ["8", "6", "4", "3", "2"]);
        assert_eq!(s.method, super::sensitivity::Method::L1);
        let Command::Sweep(s) =
            command(&["sweep", "--grid", "g.toml", "-o", "o", "--shard", "2/4"])
        else {
            panic!("not sweep");
        };
        assert_eq!(s.shard, Some((2, 4)));
        assert!(!s.no_latency && !s.quiet.quiet);
        let Command::Bench(b) = command(&["bench", "-m", "m", "-d", "d"]) else {
            panic!("not bench");
        };
        assert_eq!(b.repeat, 5);
        assert!(b.recipe.is_empty() && !b.only);
        assert!(!b.quick && !b.reference && !b.quiet, "opt-in");
        let Command::Bench(b) = command(&["bench", "-m", "m", "-d", "d", "--quick", "--reference"])
        else {
            panic!("not bench");
        };
        assert!(b.quick && b.reference);
        let Command::Bench(b) = command(&["bench", "-m", "m", "-d", "d", "--repeat", "2", "-q"])
        else {
            panic!("not bench");
        };
        assert_eq!(b.repeat, 2);
        assert!(b.quiet && !b.quick);
    }

    #[test]
    fn unknown_values_are_refused() {
        let eval = ["eval", "-m", "m", "-d", "d"];
        let with = |extra: &[&'static str]| [&eval[..], extra].concat();
        refused(&with(&["--format", "xml"]), ErrorKind::InvalidValue, "xml");
        refused(
            &with(&["--prune", "magic"]),
            ErrorKind::InvalidValue,
            "magic",
        );
        refused(&with(&["--scheme", "log"]), ErrorKind::InvalidValue, "log");
        refused(
            &with(&["--granularity", "row"]),
            ErrorKind::InvalidValue,
            "row",
        );
        refused(
            &with(&["--limit", "many"]),
            ErrorKind::ValueValidation,
            "many",
        );
        refused(
            &with(&["--sparsity", "half"]),
            ErrorKind::ValueValidation,
            "half",
        );
        refused(&["frobnicate"], ErrorKind::InvalidSubcommand, "frobnicate");
        refused(
            &["sweep", "--grid", "g", "-o", "o", "--shard", "4/4"],
            ErrorKind::ValueValidation,
            "4/4",
        );
        refused(
            &[
                "search", "--budget", "size=1KB", "-o", "o", "--time", "forever",
            ],
            ErrorKind::ValueValidation,
            "forever",
        );
        refused(
            &["explore", "--budget-size", "12 parsecs"],
            ErrorKind::ValueValidation,
            "parsecs",
        );
    }

    #[test]
    fn conflicting_and_incomplete_flags_are_refused() {
        let eval = ["eval", "-m", "m", "-d", "d"];
        let with = |extra: &[&'static str]| [&eval[..], extra].concat();
        refused(
            &with(&["--recipe", "r.toml", "--sparsity", "0.5"]),
            ErrorKind::ArgumentConflict,
            "--sparsity",
        );
        refused(
            &with(&["--global"]),
            ErrorKind::MissingRequiredArgument,
            "--sparsity",
        );
        refused(
            &["eval", "-m", "m"],
            ErrorKind::MissingRequiredArgument,
            "--data",
        );
        refused(
            &["explore", "--session", "s.jsonl", "--no-session"],
            ErrorKind::ArgumentConflict,
            "--no-session",
        );
        refused(
            &[
                "finetune", "-m", "m", "-d", "d", "-o", "o", "--qat", "--no-qat",
            ],
            ErrorKind::ArgumentConflict,
            "--no-qat",
        );
        refused(
            &[
                "finetune",
                "-m",
                "m",
                "-d",
                "d",
                "-o",
                "o",
                "--teacher",
                "t",
            ],
            ErrorKind::MissingRequiredArgument,
            "--distill",
        );
        refused(
            &["bench", "-m", "m", "-d", "d", "--quick", "--repeat", "3"],
            ErrorKind::ArgumentConflict,
            "--repeat",
        );
        refused(
            &["merge", "-o", "o"],
            ErrorKind::MissingRequiredArgument,
            "FILE",
        );
    }

    #[test]
    fn a_sparsity_out_of_range_parses_but_makes_no_recipe() {
        // clap takes any number; the recipe the flags describe checks the range, as a recipe
        // file's `sparsity` is checked.
        for bad in ["1.5", "-0.1", "NaN", "1"] {
            let flag = format!("--sparsity={bad}");
            let Command::Eval(a) = command(&["eval", "-m", "m", "-d", "d", &flag]) else {
                panic!("not eval");
            };
            let err = a.recipe.recipe().expect_err(bad).to_string();
            assert!(
                err.contains("--sparsity") && err.contains("[0, 1)"),
                "{err}"
            );
        }
        let Command::Eval(a) = command(&["eval", "-m", "m", "-d", "d", "--sparsity", "0.9"]) else {
            panic!("not eval");
        };
        assert!(a.recipe.recipe().expect("0.9").is_some());
    }
}
