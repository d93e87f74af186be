//! `squeeze eval`: accuracy (and, with a recipe, size and latency) of a model on a data set.

use std::time::Instant;

use serde::Serialize;

use super::common::{DataArgs, Format, ModelArgs, load_model, prepare};
use crate::measure::{self, Accuracy, OutputKind};

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Another model on the same data: report top-1 agreement with it and the mean KL
    /// divergence from its softmax.
    #[arg(long, value_name = "FILE")]
    pub reference: Option<std::path::PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Serialize)]
struct EvalReport<'a> {
    model: String,
    data: String,
    #[serde(flatten)]
    accuracy: &'a Accuracy,
    wall_s: f64,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let loaded = load_model(&args.model.model, args.model.arch.as_deref())?;
    let model = &loaded.model;
    let set = args.data.load()?;
    let inputs = prepare(model, &set)?;
    let reference = match &args.reference {
        Some(path) => {
            let r = load_model(path, None)?;
            if r.model.num_classes() != model.num_classes() {
                anyhow::bail!(
                    "{}: reference has {} outputs, the model has {}",
                    path.display(),
                    r.model.num_classes(),
                    model.num_classes()
                );
            }
            let rin = prepare(&r.model, &set)?;
            let out = measure::dense_outputs(&r.model, &rin, set.len())?;
            Some((out, OutputKind::of(&r.model)))
        }
        None => None,
    };
    let start = Instant::now();
    let outputs = measure::dense_outputs(model, &inputs, set.len())?;
    let wall_s = start.elapsed().as_secs_f64();
    let acc = measure::score(
        &outputs,
        model.num_classes(),
        &set.labels,
        OutputKind::of(model),
        reference.as_ref().map(|(o, k)| (o.as_slice(), *k)),
    );
    let report = EvalReport {
        model: args.model.model.display().to_string(),
        data: set.source.display().to_string(),
        accuracy: &acc,
        wall_s,
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => print!("{}", render_text(&report)),
    }
    Ok(())
}

fn render_text(r: &EvalReport) -> String {
    let a = r.accuracy;
    let mut s = format!(
        "model    {}\ndata     {}\nsamples  {}\ntop-1    {:.2} %\ntop-5    {:.2} %\nloss     {:.4}\n",
        r.model,
        r.data,
        a.samples,
        a.accuracy * 100.0,
        a.top5 * 100.0,
        a.loss
    );
    if let (Some(ag), Some(kl)) = (a.agreement, a.kl) {
        s += &format!(
            "agreement with reference  {:.2} %\nKL from reference  {kl:.5}\n",
            ag * 100.0
        );
    }
    s += &format!("wall     {:.1} ms\n\nper class\n", r.wall_s * 1e3);
    for (c, (ok, total)) in a.per_class.iter().enumerate() {
        if *total > 0 {
            s += &format!(
                "  {c:>3}  {:>6.2} %  ({ok}/{total})\n",
                *ok as f64 * 100.0 / *total as f64
            );
        }
    }
    if a.confusion.len() <= 20 {
        s += "\nconfusion (rows: label, columns: predicted)\n      ";
        for c in 0..a.confusion.len() {
            s += &format!("{c:>6}");
        }
        s += "\n";
        for (l, row) in a.confusion.iter().enumerate() {
            s += &format!("{l:>6}");
            for v in row {
                s += &format!("{v:>6}");
            }
            s += "\n";
        }
    }
    s
}
