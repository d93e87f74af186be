//! `squeeze report`: the handout of an exploration as one self-contained HTML file — model and
//! data with their hashes, the dense baseline, the pinned configurations side by side, both
//! charts, the sensitivity table and each pinned recipe — from the journal the explorer and
//! the headless commands write.

use std::path::PathBuf;

use super::explore::SessionArgs;
use super::headless::{Headless, Quiet};
use crate::explore::compare;
use crate::explore::sensitivity::SensitivityGrid;
use crate::explore::session::{PIN_NAMES, SessionOptions};

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub session: SessionArgs,
    /// The HTML file to write (never replaced: an existing one is refused).
    #[arg(
        long,
        short = 'o',
        value_name = "FILE",
        default_value = "squeeze-report.html"
    )]
    pub out: PathBuf,
    /// Measure the whole-model curves first (global L1 pruning at 10–95 % overall sparsity,
    /// every layer at 8 down to 2 bits; what the explorer's `W` measures), those the journal
    /// lacks, so the report has its "Whole-model curves" section.
    #[arg(long)]
    pub curves: bool,
    #[command(flatten)]
    pub quiet: Quiet,
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    if args.out.exists() {
        anyhow::bail!(
            "{}: exists; the report does not replace a file (give another --out)",
            args.out.display()
        );
    }
    let mut h = Headless::open(&args.session, SessionOptions::default(), args.quiet.quiet)?;
    let records = h.setup.journal_records.clone();
    h.session.restore(records);
    // The dense baseline and the configuration last edited, measured if the journal lacks them.
    let start = h.session.start();
    h.run("dense baseline", start);
    if args.curves {
        let curves = h.session.model_curves();
        h.run("model curves", curves);
    }
    let s = &h.session;
    let title = format!(
        "{} on {}: how far it compresses",
        s.info.name, s.info.data_name
    );
    let table = s.sensitivity_table(&SensitivityGrid::default());
    let measured = table
        .layers
        .iter()
        .any(|l| l.prune.iter().chain(&l.bits).any(|c| c.accuracy.is_some()));
    let handout = crate::report::html::Handout {
        title,
        inputs: h.setup.inputs.clone(),
        comparison: compare::rows(s),
        layers: s.info.layers.iter().map(|l| l.name.clone()).collect(),
        plot: s.plot_input(),
        sensitivity: measured.then_some(table),
        recipes: s
            .pins
            .iter()
            .zip(PIN_NAMES)
            .filter_map(|(p, name)| {
                let p = p.as_ref()?;
                let point = s.point(s.pin_key(p));
                Some((
                    format!(
                        "{name}: {}",
                        compare::point_summary(&p.config, point, &s.info)
                    ),
                    p.config.to_recipe(&s.info).to_toml(),
                ))
            })
            .collect(),
    };
    let html = crate::report::html::render(&handout);
    crate::files::OutputCheck::new()
        .inputs(
            "input",
            [h.setup.model_path.as_path(), h.setup.data_path.as_path()],
        )
        .output("report", &args.out)
        .check()?;
    crate::files::write_atomic(&args.out, html.as_bytes())?;
    if !args.quiet.quiet {
        eprintln!("wrote {}", args.out.display());
    }
    Ok(())
}
