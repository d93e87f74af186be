//! `squeeze search`: the per-layer sparsity and bits that maximise accuracy under a budget
//! (size, latency, flash, RAM, a device target), or the smallest configuration within an
//! accuracy drop. Writes the best configuration measured as a recipe with its measurement,
//! whether or not it meets the budget; when none does, says by how much the best one misses
//! and which layer dominates, and exits with an error.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::common::column_width;
use super::explore::SessionArgs;
use super::headless::{Headless, Quiet, parse_duration};
use super::sweep::SummaryFormat;
use crate::explore::Evaluator;
use crate::explore::results::Inputs;
use crate::explore::search::{Budget, Check, Objective, SearchJob, SearchOutcome};
use crate::explore::session::SessionOptions;
use crate::explore::targets;
use crate::units;

#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    #[command(flatten)]
    pub session: SessionArgs,
    /// What the answer must satisfy: size=27KB, latency=5us, flash=1MiB, ram=256KiB or
    /// target=NAME (its flash, with its code allowance, and its RAM; a latency budget is then
    /// estimated on it). Repeat or separate with commas. kB and MB are powers of ten, KiB and
    /// MiB of two.
    #[arg(long, value_name = "KIND=VALUE")]
    pub budget: Vec<String>,
    /// Instead of the most accurate configuration within the budget, the smallest one that
    /// loses at most this many points of accuracy.
    #[arg(long, value_name = "POINTS")]
    pub max_drop: Option<f64>,
    /// Stop after this long and answer with the best configuration measured until then.
    #[arg(long, value_name = "TIME", default_value = "60s", value_parser = parse_duration)]
    pub time: Duration,
    /// Seed of the search's random restarts: the same seed gives the same answer.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Perturbed restarts of the refinement after it settles.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub restarts: usize,
    /// The device targets file. Default: the bundled assets/targets.toml.
    #[arg(long, value_name = "FILE")]
    pub targets: Option<PathBuf>,
    /// The answer: a recipe (TOML) with its measurement in a comment header.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    pub format: SummaryFormat,
    #[command(flatten)]
    pub quiet: Quiet,
}

#[derive(Serialize)]
struct Report<'a> {
    out: String,
    inputs: &'a Inputs,
    samples: usize,
    #[serde(flatten)]
    outcome: &'a SearchOutcome,
}

pub fn run(args: SearchArgs) -> anyhow::Result<()> {
    let all = targets::load(args.targets.as_deref())?;
    let mut budget = Budget::default();
    for b in &args.budget {
        budget
            .add(b, &all)
            .map_err(|e| anyhow::anyhow!("--budget: {e}"))?;
    }
    let objective = match args.max_drop {
        Some(d) if d.is_finite() && d >= 0.0 => Objective::Smallest { max_drop_pt: d },
        Some(d) => anyhow::bail!("--max-drop: {d} is not a number of points ≥ 0"),
        None if budget.is_empty() => anyhow::bail!(
            "--budget: give what the answer must satisfy (e.g. --budget size=27KB), or --max-drop POINTS for the smallest configuration within an accuracy drop"
        ),
        None => Objective::Accuracy,
    };
    let mut h = Headless::open(&args.session, SessionOptions::default(), args.quiet.quiet)?;
    // The answer may replace nothing the search reads; checked before any work.
    crate::files::OutputCheck::new()
        .inputs(
            "input",
            h.setup.evaluator.inputs().iter().map(PathBuf::as_path),
        )
        .inputs("--targets", args.targets.iter().map(PathBuf::as_path))
        .output("--out", &args.out)
        .check()?;
    let mut job = SearchJob::new(h.session.keyer(), budget, objective, args.seed);
    job.time_limit = args.time;
    job.restarts = args.restarts;
    let requests = h.session.start_search(job);
    h.run("search", requests);
    let Some(outcome) = h.session.search.clone() else {
        anyhow::bail!("the search did not finish");
    };
    if let Some(best) = &outcome.best {
        let text = recipe_file(&outcome, best, &h.setup.inputs, &h.session);
        crate::files::write_atomic(&args.out, text.as_bytes())?;
    }
    match args.format {
        SummaryFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&Report {
                out: args.out.display().to_string(),
                inputs: &h.setup.inputs,
                samples: h.session.info.samples,
                outcome: &outcome,
            })?
        ),
        SummaryFormat::Text => print!("{}", render_text(&outcome, &h.session, &args.out)),
    }
    match &outcome.best {
        Some(b) if b.meets_budget => Ok(()),
        Some(b) => anyhow::bail!(
            "no configuration measured meets {}; the closest (written to {}) misses it: {}",
            outcome.budget,
            args.out.display(),
            misses(&b.checks)
        ),
        None => anyhow::bail!("the search measured nothing: {}", outcome.notes.join("; ")),
    }
}

fn misses(checks: &[Check]) -> String {
    checks
        .iter()
        .filter(|c| !c.meets())
        .map(Check::describe)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The answer as a recipe file: the measurement and what it was measured on in comments, so
/// `squeeze eval --recipe` reads it as it is.
fn recipe_file(
    outcome: &SearchOutcome,
    best: &crate::explore::search::Candidate,
    inputs: &Inputs,
    session: &crate::explore::session::Session,
) -> String {
    let f = &best.figures;
    let mut head = vec![
        format!(
            "squeeze {} search, seed {}: {}",
            inputs.squeeze_version, outcome.seed, outcome.budget
        ),
        format!(
            "model {} (sha256 {})",
            inputs.model.path, inputs.model.sha256
        ),
    ];
    for d in &inputs.data {
        head.push(format!("data {} (sha256 {})", d.path, d.sha256));
    }
    head.push(format!("samples {}", inputs.samples));
    if let Some(c) = &inputs.calibration {
        head.push(format!(
            "activations calibrated on the {} ({})",
            c.set, c.path
        ));
    }
    head.push(format!(
        "measured: top-1 {}{}, {} packed bytes{}",
        f.accuracy.map_or("—".into(), |a| units::percent(a.value)),
        outcome
            .dense_accuracy
            .zip(f.accuracy)
            .map_or(String::new(), |(d, a)| format!(
                " ({} vs dense)",
                units::points_delta(a.value - d)
            )),
        f.size_bytes.unwrap_or(0),
        f.latency_us.map_or(String::new(), |l| format!(
            ", single-sample latency {} here",
            units::micros(l)
        ))
    ));
    for c in &best.checks {
        head.push(format!(
            "{} {}",
            if c.meets() { "meets" } else { "MISSES" },
            c.describe()
        ));
    }
    let mut text: String = head.iter().map(|l| format!("# {l}\n")).collect();
    text.push('\n');
    text.push_str(&best.config.to_recipe(&session.info).to_toml());
    text
}

fn render_text(
    outcome: &SearchOutcome,
    session: &crate::explore::session::Session,
    out: &std::path::Path,
) -> String {
    let mut s = format!(
        "search under {} (seed {}): {} configurations measured in {:.1} s\n",
        outcome.budget, outcome.seed, outcome.evaluated, outcome.elapsed_s
    );
    for n in &outcome.notes {
        s += &format!("note: {n}\n");
    }
    let Some(b) = &outcome.best else {
        return s;
    };
    let f = &b.figures;
    s += &format!(
        "{}: top-1 {}{}, {} ({} bytes){}\n",
        if b.meets_budget {
            "best within the budget"
        } else {
            "nothing meets the budget; the closest"
        },
        f.accuracy.map_or("—".into(), |a| units::percent(a.value)),
        outcome
            .dense_accuracy
            .zip(f.accuracy)
            .map_or(String::new(), |(d, a)| format!(
                " ({})",
                units::points_delta(a.value - d)
            )),
        units::bytes(f.size_bytes.unwrap_or(0) as f64),
        f.size_bytes.unwrap_or(0),
        f.latency_us
            .map_or(String::new(), |l| format!(", {} here", units::micros(l)))
    );
    for c in &b.checks {
        s += &format!("  {}\n", c.describe());
    }
    let nw = column_width("", session.info.layers.iter().map(|l| l.name.as_str())).max(10);
    for (l, setting) in session.info.layers.iter().zip(&b.config.layers) {
        s += &format!(
            "  {:<nw$} {:<12} {}\n",
            l.name,
            setting.prune_label(),
            setting.quant_label()
        );
    }
    if let Some(a) = b.config.activation_bits {
        s += &format!("  activations int{a}\n");
    }
    s += &format!("written to {}\n", out.display());
    s
}
