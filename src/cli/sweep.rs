//! `squeeze sweep` measures a grid of recipes (or one shard of it) and writes one JSON line per
//! point; `squeeze merge` joins the shards' files. A grid larger than one machine runs as a job
//! array on a scheduler (Slurm, a Kubernetes Indexed Job): each task runs its shard, a last
//! step merges — see `examples/cluster/`.

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use super::explore::SessionArgs;
use super::headless::{Headless, Quiet};
use crate::explore::Evaluator;
use crate::explore::config::Config;
use crate::explore::eval::Stage;
use crate::explore::session::SessionOptions;
use crate::explore::sweep::{self, ResultLine, SweepPoint};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum SummaryFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub session: SessionArgs,
    /// The grid: a recipe (TOML) whose fields may hold lists; one configuration per
    /// combination, e.g. `[default]` `prune = "l1"`, `sparsity = [0.5, 0.8, 0.9]`,
    /// `bits = [8, 4]`.
    #[arg(long, value_name = "FILE")]
    pub grid: PathBuf,
    /// Measure only shard i of n (0 ≤ i < n): the points whose grid index is i modulo n.
    #[arg(long, value_name = "I/N", value_parser = sweep::parse_shard)]
    pub shard: Option<(usize, usize)>,
    /// The result file: one JSON line per point (JSON lines), written when all are measured.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    /// Skip the single-sample latency (timings differ between machines of a cluster).
    #[arg(long)]
    pub no_latency: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: SummaryFormat,
    #[command(flatten)]
    pub quiet: Quiet,
}

#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// Result files of `squeeze sweep` (the shards).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The merged file.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    pub format: SummaryFormat,
}

#[derive(Serialize)]
struct Summary<'a> {
    out: String,
    points: usize,
    failed: usize,
    pareto: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicates: Option<usize>,
    frontier: Vec<&'a ResultLine>,
}

fn summary<'a>(
    out: &std::path::Path,
    lines: &'a [ResultLine],
    duplicates: Option<usize>,
) -> Summary<'a> {
    let frontier: Vec<&ResultLine> = lines.iter().filter(|l| l.pareto).collect();
    Summary {
        out: out.display().to_string(),
        points: lines.len(),
        failed: lines.iter().filter(|l| l.error.is_some()).count(),
        pareto: frontier.len(),
        duplicates,
        frontier,
    }
}

fn print_summary(s: &Summary, format: SummaryFormat) -> anyhow::Result<()> {
    match format {
        SummaryFormat::Json => println!("{}", serde_json::to_string_pretty(s)?),
        SummaryFormat::Text => {
            println!(
                "{}: {} points ({} failed){}; {} on the accuracy-vs-size frontier:",
                s.out,
                s.points,
                s.failed,
                s.duplicates
                    .map_or(String::new(), |d| format!(", {d} duplicates left out")),
                s.pareto
            );
            for l in &s.frontier {
                println!(
                    "  {:>7}  {:>10}  {}",
                    l.accuracy
                        .map_or("—".into(), |a| format!("{:.2}%", a * 100.0)),
                    l.size_bytes
                        .map_or("—".into(), |b| crate::units::bytes(b as f64)),
                    l.label
                );
            }
        }
    }
    Ok(())
}

pub fn run_sweep(args: SweepArgs) -> anyhow::Result<()> {
    let mut points = sweep::read_grid(&args.grid).map_err(anyhow::Error::msg)?;
    if let Some((i, n)) = args.shard {
        points = sweep::shard(points, i, n);
    }
    let mut h = Headless::open(&args.session, SessionOptions::default(), args.quiet.quiet)?;
    // The output may replace nothing the sweep reads; checked before any work.
    crate::files::OutputCheck::new()
        .inputs(
            "input",
            h.setup.evaluator.inputs().iter().map(PathBuf::as_path),
        )
        .input("--grid", &args.grid)
        .output("--out", &args.out)
        .check()?;
    // Every grid point as an explorer configuration, refused when the explorer's settings
    // cannot express it (the figures would belong to another recipe).
    let model = h.setup.evaluator.model();
    let mut configs = Vec::with_capacity(points.len());
    for p in &points {
        let (config, _) = Config::from_recipe(&p.recipe, model).with_context(|| {
            format!(
                "{}: grid point {} ({})",
                args.grid.display(),
                p.index,
                p.label
            )
        })?;
        let resolved =
            |r: &crate::compress::Recipe| r.validate(model).ok().map(sweep::without_noop_pruning);
        let same = resolved(&config.to_recipe(&h.session.info)) == resolved(&p.recipe);
        if !same {
            anyhow::bail!(
                "{}: grid point {} ({}) sets something the explorer's configurations cannot express (a random seed, an N:M other than 2:4, an L2 norm, activation observer settings or a [global] over some layers)",
                args.grid.display(),
                p.index,
                p.label
            );
        }
        configs.push(config);
    }
    let stages: &[Stage] = if args.no_latency {
        &[Stage::Full]
    } else {
        &[Stage::Full, Stage::Latency]
    };
    let sweep_points: Vec<SweepPoint> = points
        .iter()
        .zip(&configs)
        .map(|(p, c)| SweepPoint {
            config: c.clone(),
            label: format!("grid {}: {}", p.index, p.label),
        })
        .collect();
    let requests = h.session.sweep_stages("sweep", sweep_points, stages);
    h.run("sweep", requests);
    let mut lines: Vec<ResultLine> = points
        .iter()
        .zip(&configs)
        .map(|(p, c)| {
            let key = h.session.key_of(c);
            let point = h.session.point(key);
            ResultLine::new(
                p,
                key,
                point.and_then(|p| p.full.as_ref()),
                point.and_then(|p| p.latency.as_ref()),
                point.and_then(|p| p.error.clone()),
                &h.session.info,
                &h.setup.inputs,
            )
        })
        .collect();
    sweep::mark_pareto(&mut lines);
    crate::files::write_atomic(&args.out, sweep::to_jsonl(&lines).as_bytes())?;
    print_summary(&summary(&args.out, &lines, None), args.format)
}

pub fn run_merge(args: MergeArgs) -> anyhow::Result<()> {
    crate::files::OutputCheck::new()
        .inputs("a result file", args.files.iter().map(PathBuf::as_path))
        .output("--out", &args.out)
        .check()?;
    let mut files = Vec::with_capacity(args.files.len());
    for f in &args.files {
        let text = std::fs::read_to_string(f).with_context(|| format!("{}", f.display()))?;
        files.push((f.display().to_string(), text));
    }
    let (lines, duplicates) = sweep::merge(&files).map_err(anyhow::Error::msg)?;
    crate::files::write_atomic(&args.out, sweep::to_jsonl(&lines).as_bytes())?;
    print_summary(&summary(&args.out, &lines, Some(duplicates)), args.format)
}
