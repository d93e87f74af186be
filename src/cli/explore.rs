//! `squeeze explore`: the interactive explorer on a model and an evaluation set. Parses the
//! options, sets the session up (`explore::Setup`), and hands over to the TUI. Without a
//! terminal it points to the headless commands and fails. `SessionArgs` are the options every
//! command that opens a session shares.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;

use super::common;
use crate::compress::Recipe;
use crate::explore::Evaluator;
use crate::explore::config::Config;
use crate::explore::jobs::Runner;
use crate::explore::model_evaluator::QUICK_SAMPLES;
use crate::explore::search::{parse_bytes, parse_micros};
use crate::explore::session::SessionOptions;
use crate::explore::setup::{JournalChoice, Setup, SetupOptions};
use crate::explore::targets;
use crate::tui::{self, App, AppOptions, RunOptions};

/// The model, the data and the journal a session works on: shared by `explore` and the
/// headless commands, so they open the same cache.
#[derive(Debug, Clone, clap::Args)]
pub struct SessionArgs {
    /// Model file (safetensors). Default: the bundled LeNet-300-100.
    #[arg(long, short = 'm', value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Architecture description, when neither a sidecar nor the file's metadata has one.
    #[arg(long, value_name = "FILE")]
    pub arch: Option<PathBuf>,
    /// Evaluation set. Default: the bundled MNIST test set.
    #[arg(long, short = 'd', value_name = "PATH")]
    pub data: Option<PathBuf>,
    /// Labels file for IDX or NPY inputs, when not found by the standard naming.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// CSV column holding the label.
    #[arg(long, value_name = "NAME")]
    pub label_column: Option<String>,
    /// Use only the first N samples.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Training set that calibrates quantized activations. Default: the training set beside
    /// the evaluation set (MNIST's folder holds both), else the evaluation set itself.
    #[arg(long, value_name = "PATH")]
    pub train: Option<PathBuf>,
    /// The journal of measurements (JSON lines), read as a cache and appended to. Default:
    /// one file per model and data set in the user's data directory (e.g.
    /// ~/.local/share/squeeze/sessions/).
    #[arg(long, value_name = "FILE")]
    pub session: Option<PathBuf>,
    /// Neither read nor write the journal.
    #[arg(long, conflicts_with = "session")]
    pub no_session: bool,
    /// Samples in the quick first estimate (a fixed random subset).
    #[arg(long, value_name = "N", default_value_t = QUICK_SAMPLES)]
    pub quick_samples: usize,
    /// Worker threads (default: one per core).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
}

impl Default for SessionArgs {
    /// The bundled model and data.
    fn default() -> Self {
        SessionArgs {
            model: None,
            arch: None,
            data: None,
            labels: None,
            label_column: None,
            limit: None,
            train: None,
            session: None,
            no_session: false,
            quick_samples: QUICK_SAMPLES,
            threads: 0,
        }
    }
}

impl SessionArgs {
    pub fn journal(&self) -> JournalChoice {
        if self.no_session {
            JournalChoice::Off
        } else {
            match &self.session {
                Some(p) => JournalChoice::File(p.clone()),
                None => JournalChoice::Default,
            }
        }
    }

    pub fn setup_options(&self) -> SetupOptions {
        SetupOptions {
            model: self
                .model
                .clone()
                .unwrap_or_else(|| common::asset(common::DEFAULT_MODEL)),
            arch: self.arch.clone(),
            data: self
                .data
                .clone()
                .unwrap_or_else(|| common::asset(common::DEFAULT_DATA)),
            labels: self.labels.clone(),
            label_column: self.label_column.clone(),
            limit: self.limit,
            train: self.train.clone(),
            quick_samples: self.quick_samples,
            journal: self.journal(),
            also_reads: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ExploreArgs {
    #[command(flatten)]
    pub session: SessionArgs,
    /// Start from this recipe (TOML or JSON).
    #[arg(long, short = 'r', value_name = "FILE")]
    pub recipe: Option<PathBuf>,
    /// Bring back the journaled session: every point measured before, the pins and the last
    /// configuration.
    #[arg(long, conflicts_with = "no_session")]
    pub resume: bool,
    /// Where exports (`e`) and plots (`p`) are written.
    #[arg(long, value_name = "DIR", default_value = "squeeze-out")]
    pub out_dir: PathBuf,
    /// A size budget drawn on the charts, e.g. 100KiB, 1.5MiB or 20000 (bytes).
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub budget_size: Option<f64>,
    /// A latency budget drawn on the charts, e.g. 20us or 1.5ms.
    #[arg(long, value_name = "TIME", value_parser = parse_micros)]
    pub budget_latency: Option<f64>,
    /// A device whose flash is drawn as a budget line and whose fit is marked on every point
    /// (cortex-m4, cortex-m7, esp32-s3, pi-zero-2w, host; `t` cycles through them).
    #[arg(long, value_name = "NAME")]
    pub target: Option<String>,
    /// The device targets file. Default: the bundled assets/targets.toml.
    #[arg(long, value_name = "FILE")]
    pub targets: Option<PathBuf>,
    /// Seconds a search (`o`) may take.
    #[arg(long, value_name = "S", default_value_t = 30)]
    pub search_seconds: u64,
    /// Log every frame's render time and every key's key-to-screen latency (µs) to FILE,
    /// with a summary at the end.
    #[arg(long, value_name = "FILE")]
    pub timings: Option<PathBuf>,
    /// Start in the presentation layout (for a projector; P switches): the headline figures
    /// in big digits, both charts, the edited layer, high-contrast colours.
    #[arg(long)]
    pub present: bool,
}

impl Default for ExploreArgs {
    /// The bundled model and data with every default: what `squeeze` alone opens.
    fn default() -> Self {
        ExploreArgs {
            session: SessionArgs::default(),
            recipe: None,
            resume: false,
            out_dir: PathBuf::from("squeeze-out"),
            budget_size: None,
            budget_latency: None,
            target: None,
            targets: None,
            search_seconds: 30,
            timings: None,
            present: false,
        }
    }
}

/// What to say when there is no terminal to draw on.
pub const NO_TERMINAL: &str = "squeeze explore is interactive and needs a terminal. \
Without one, use the headless commands: `squeeze info --model M` for the layers, \
`squeeze eval --model M --data D [--recipe R] --format json` for one measurement, \
`squeeze sensitivity`, `squeeze sweep` and `squeeze search` to explore.";

pub fn run(args: ExploreArgs) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        anyhow::bail!(NO_TERMINAL);
    }
    let mut options = args.session.setup_options();
    options.also_reads.extend(args.recipe.iter().cloned());
    eprintln!(
        "loading {} and {} …",
        options.model.display(),
        options.data.display()
    );
    let all_targets = targets::load(args.targets.as_deref())?;
    let target = match &args.target {
        Some(name) => Some(targets::find(&all_targets, name)?),
        None => None,
    };
    let setup = Setup::open(&options)?;
    if let Some(p) = &args.timings {
        let inputs = setup.evaluator.inputs();
        crate::files::OutputCheck::new()
            .inputs("input", inputs.iter().map(|p| p.as_path()))
            .inputs("--recipe", args.recipe.iter().map(|p| p.as_path()))
            .output("--timings", p)
            .check()?;
    }
    if args.resume {
        match &setup.journal_path {
            Some(p) if !p.exists() => anyhow::bail!(
                "{}: no session to resume (start one with `squeeze explore` first, or name it with --session)",
                p.display()
            ),
            None => anyhow::bail!("--resume needs a session file (--session FILE)"),
            Some(_) => {}
        }
    }
    let mut notes = setup.notes.clone();
    let initial = match &args.recipe {
        Some(path) => {
            let recipe = Recipe::from_path(path)?;
            let (config, n) = Config::from_recipe(&recipe, setup.evaluator.model())
                .with_context(|| format!("{} does not fit the model", path.display()))?;
            notes.extend(n);
            Some(config)
        }
        None => None,
    };

    let session = setup.session(SessionOptions {
        budget_bytes: args.budget_size,
        budget_latency_us: args.budget_latency,
        target,
        ..SessionOptions::default()
    });
    let runner = Runner::new(setup.evaluator.clone(), args.session.threads)?;
    let journal = setup.journal_writer(runner.sender())?;
    let mut app = App::new(
        session,
        AppOptions {
            out_dir: args.out_dir.clone(),
            session: setup.journal_path.clone(),
            search_seconds: args.search_seconds,
            targets: all_targets,
        },
    );
    app.present = args.present;
    if args.resume {
        app.restore(setup.journal_records.clone());
    }
    if let Some(c) = initial {
        app.set_initial(c);
    }
    if args.resume && notes.iter().all(|n| n.starts_with("quantized activations")) {
        app.say(format!(
            "resumed: {} points from {}",
            app.session.measured().count(),
            setup
                .journal_path
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        ));
    } else if !notes.is_empty() {
        app.say(notes.join("; "));
    }
    tui::run(
        app,
        runner,
        journal,
        RunOptions {
            timings: args.timings.clone(),
        },
    )?;
    if let Some(p) = &setup.journal_path {
        eprintln!(
            "session journaled to {}; `squeeze explore --resume` brings it back",
            p.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse_with_units() {
        assert_eq!(parse_bytes("100KiB").ok(), Some(102_400.0));
        assert_eq!(parse_bytes("1.5 MiB").ok(), Some(1_572_864.0));
        assert_eq!(parse_bytes("2000").ok(), Some(2000.0));
        assert!(
            parse_bytes("12 parsecs")
                .unwrap_err()
                .to_string()
                .contains("unknown size unit")
        );
        assert!(parse_bytes("-1").is_err());
        assert_eq!(parse_micros("20us").ok(), Some(20.0));
        assert_eq!(parse_micros("1.5ms").ok(), Some(1500.0));
        assert_eq!(parse_micros("20µs").ok(), Some(20.0));
        assert!(parse_micros("fast").is_err());
    }
}
