//! `squeeze explore`: the interactive explorer on a model and an evaluation set. Loads both,
//! sets up the real evaluator, the worker pool and the session journal, and hands over to the
//! TUI. Without a terminal it points to the headless commands and fails.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use super::common::{self, DataArgs};
use crate::compress::Recipe;
use crate::explore::config::Config;
use crate::explore::info::ModelInfo;
use crate::explore::jobs::Runner;
use crate::explore::journal::{self, JOURNAL_VERSION, JournalWriter, Record};
use crate::explore::real::{self, ModelEvaluator};
use crate::tui::{self, App, AppOptions, RunOptions};

#[derive(Debug, Clone, clap::Args)]
pub struct ExploreArgs {
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
    /// Start from this recipe (TOML or JSON).
    #[arg(long, short = 'r', value_name = "FILE")]
    pub recipe: Option<PathBuf>,
    /// Bring back the journaled session: every point measured before and the last
    /// configuration.
    #[arg(long)]
    pub resume: bool,
    /// The session journal (JSON lines). Default: one file per model and data set in the
    /// user's data directory (e.g. ~/.local/share/squeeze/sessions/).
    #[arg(long, value_name = "FILE")]
    pub session: Option<PathBuf>,
    /// Do not journal this session.
    #[arg(long, conflicts_with_all = ["session", "resume"])]
    pub no_session: bool,
    /// Where exports (`e`) and plots (`p`) are written.
    #[arg(long, value_name = "DIR", default_value = "squeeze-out")]
    pub out_dir: PathBuf,
    /// A size budget drawn on the charts, e.g. 100KiB, 1.5MiB or 20000 (bytes).
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub budget_size: Option<f64>,
    /// A latency budget drawn on the charts, e.g. 20us or 1.5ms.
    #[arg(long, value_name = "TIME", value_parser = parse_micros)]
    pub budget_latency: Option<f64>,
    /// Samples in the quick first estimate (a fixed random subset).
    #[arg(long, value_name = "N", default_value_t = real::QUICK_SAMPLES)]
    pub quick_samples: usize,
    /// Worker threads (default: one per core).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
    /// Log every frame's render time and every key's key-to-screen latency (µs) to FILE,
    /// with a summary at the end.
    #[arg(long, value_name = "FILE")]
    pub timings: Option<PathBuf>,
}

impl Default for ExploreArgs {
    /// The bundled model and data with every default: what `squeeze` alone opens.
    fn default() -> Self {
        ExploreArgs {
            model: None,
            arch: None,
            data: None,
            labels: None,
            label_column: None,
            limit: None,
            recipe: None,
            resume: false,
            session: None,
            no_session: false,
            out_dir: PathBuf::from("squeeze-out"),
            budget_size: None,
            budget_latency: None,
            quick_samples: real::QUICK_SAMPLES,
            threads: 0,
            timings: None,
        }
    }
}

/// What to say when there is no terminal to draw on.
pub const NO_TERMINAL: &str = "squeeze explore is interactive and needs a terminal. \
Without one, use the headless commands: `squeeze info --model M` for the layers, \
`squeeze eval --model M --data D [--recipe R] --format json` for one measurement.";

pub fn run(args: ExploreArgs) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        anyhow::bail!(NO_TERMINAL);
    }
    let model_path = args
        .model
        .clone()
        .unwrap_or_else(|| common::asset(common::DEFAULT_MODEL));
    let data_path = args
        .data
        .clone()
        .unwrap_or_else(|| common::asset(common::DEFAULT_DATA));
    eprintln!(
        "loading {} and {} …",
        model_path.display(),
        data_path.display()
    );
    let loaded = common::load_model(&model_path, args.arch.as_deref())?;
    let model = loaded.model;
    let set = DataArgs {
        data: data_path.clone(),
        labels: args.labels.clone(),
        label_column: args.label_column.clone(),
        limit: args.limit,
    }
    .load()?;
    let inputs = common::prepare(&model, &set)?;
    if model.compressible().next().is_none() {
        anyhow::bail!(
            "{}: the model has no linear or conv layer to compress",
            model_path.display()
        );
    }
    let fingerprint = real::fingerprint(&model, &set);
    let data_name = data_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| data_path.display().to_string());
    let info = ModelInfo::from_model(&model, &data_name, set.len());

    let mut notes = Vec::new();
    let initial = match &args.recipe {
        Some(path) => {
            let recipe = Recipe::from_path(path)?;
            let (config, n) = Config::from_recipe(&recipe, &model)
                .with_context(|| format!("{} does not fit the model", path.display()))?;
            notes.extend(n);
            Some(config)
        }
        None => None,
    };

    let session = if args.no_session {
        None
    } else {
        match args
            .session
            .clone()
            .or_else(|| journal::default_path(&info.name, fingerprint))
        {
            Some(p) => Some(p),
            None => {
                notes.push("no data directory found: this session is not journaled".into());
                None
            }
        }
    };
    let mut restored = Vec::new();
    if args.resume {
        let path = session
            .as_ref()
            .context("--resume needs a session file (--session FILE)")?;
        if !path.exists() {
            anyhow::bail!(
                "{}: no session to resume (start one with `squeeze explore` first, or name it with --session)",
                path.display()
            );
        }
        let loaded = journal::read(path)?;
        journal::check_fingerprint(path, &loaded, fingerprint)?;
        if loaded.skipped > 0 {
            notes.push(format!(
                "{} unreadable line(s) of the journal were skipped",
                loaded.skipped
            ));
        }
        restored = loaded.records;
    }

    let evaluator = Arc::new(
        ModelEvaluator::new(
            model,
            info.clone(),
            inputs,
            set.labels,
            args.quick_samples.max(1),
        )
        .with_inputs(session_inputs(
            &args,
            &model_path,
            &data_path,
            session.as_deref(),
        )),
    );
    let runner = Runner::new(evaluator, args.threads)?;
    let journal = match &session {
        Some(path) => {
            let w = JournalWriter::open(path, runner.sender())?;
            w.append(Record::Session {
                version: JOURNAL_VERSION,
                model: model_path.display().to_string(),
                data: data_path.display().to_string(),
                fingerprint: journal::key_hex(fingerprint),
            });
            Some(w)
        }
        None => None,
    };

    let mut app = App::new(
        info,
        AppOptions {
            fingerprint,
            out_dir: args.out_dir.clone(),
            budget_bytes: args.budget_size,
            budget_latency_us: args.budget_latency,
            session: session.clone(),
        },
    );
    let resumed = !restored.is_empty();
    if resumed {
        app.restore(restored);
    }
    if let Some(c) = initial {
        app.set_initial(c);
    }
    if !notes.is_empty() {
        app.message = Some(notes.join("; "));
    } else if resumed {
        app.message = Some(format!(
            "resumed: {} points from {}",
            app.measured().count(),
            session
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        ));
    }
    tui::run(
        app,
        runner,
        journal,
        RunOptions {
            timings: args.timings.clone(),
        },
    )?;
    if let Some(p) = &session {
        eprintln!(
            "session journaled to {}; `squeeze explore --resume` brings it back",
            p.display()
        );
    }
    Ok(())
}

/// `100KiB`, `1.5 MiB`, `2MB`, `20000` → bytes.
pub fn parse_bytes(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("\"{s}\" is not a size; write e.g. 100KiB, 1.5MiB or 20000"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1000.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "mb" => 1e6,
        other => {
            return Err(format!(
                "unknown size unit \"{other}\"; use B, KiB, MiB, kB or MB"
            ));
        }
    };
    if !(v > 0.0 && v.is_finite()) {
        return Err(format!("\"{s}\": a budget must be positive"));
    }
    Ok(v * mult)
}

/// `20us`, `20µs`, `1.5ms`, `0.002s`, `20` (µs) → microseconds.
pub fn parse_micros(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("\"{s}\" is not a time; write e.g. 20us or 1.5ms"))?;
    let mult = match unit.trim() {
        "" | "us" | "µs" => 1.0,
        "ns" => 1e-3,
        "ms" => 1e3,
        "s" => 1e6,
        other => {
            return Err(format!(
                "unknown time unit \"{other}\"; use ns, us, ms or s"
            ));
        }
    };
    if !(v > 0.0 && v.is_finite()) {
        return Err(format!("\"{s}\": a budget must be positive"));
    }
    Ok(v * mult)
}

/// The files the session reads, which its exports and plots must not replace.
fn session_inputs(
    args: &ExploreArgs,
    model: &std::path::Path,
    data: &std::path::Path,
    journal: Option<&std::path::Path>,
) -> Vec<PathBuf> {
    let opts = crate::data::DataOptions {
        labels: args.labels.clone(),
        label_column: args.label_column.clone(),
        ..Default::default()
    };
    let mut inputs = crate::data::source_files(data, &opts);
    inputs.push(model.to_path_buf());
    inputs.push(crate::model::sidecar_path(model));
    inputs.extend(args.arch.iter().cloned());
    inputs.extend(args.recipe.iter().cloned());
    inputs.extend(journal.map(std::path::Path::to_path_buf));
    inputs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse_with_units() {
        assert_eq!(parse_bytes("100KiB"), Ok(102_400.0));
        assert_eq!(parse_bytes("1.5 MiB"), Ok(1_572_864.0));
        assert_eq!(parse_bytes("2000"), Ok(2000.0));
        assert!(
            parse_bytes("12 parsecs")
                .unwrap_err()
                .contains("unknown size unit")
        );
        assert!(parse_bytes("-1").is_err());
        assert_eq!(parse_micros("20us"), Ok(20.0));
        assert_eq!(parse_micros("1.5ms"), Ok(1500.0));
        assert_eq!(parse_micros("20µs"), Ok(20.0));
        assert!(parse_micros("fast").is_err());
    }
}
