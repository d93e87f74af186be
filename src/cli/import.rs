//! `squeeze import`: an ONNX model in, squeeze's safetensors model out (the weights under their
//! initializer names, the architecture in the metadata). The conversion is
//! `model::onnx`'s; this module reads, checks by loading the result, and writes it atomically.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::files::OutputCheck;
use crate::model::onnx;
use crate::units;

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The ONNX model, as `torch.onnx.export` or `tf2onnx` writes it (weights inside it, or in
    /// the external data file beside it).
    pub onnx: PathBuf,
    /// Where to write the squeeze model (safetensors).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Also write the architecture as TOML, to read or edit (load it with --arch).
    #[arg(long, value_name = "FILE.toml")]
    pub arch_out: Option<PathBuf>,
    /// Raw input values are multiplied by this before normalisation (e.g. 0.00392157 = 1/255
    /// for 8-bit images): `(raw × scale − mean[c]) / std[c]`. Data sets are read raw.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f32,
    /// The per-channel means subtracted after scaling, one value or one per channel
    /// (`0.485,0.456,0.406`).
    #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "0")]
    pub mean: Vec<f32>,
    /// The per-channel standard deviations divided by, one value or one per channel.
    #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "1")]
    pub std: Vec<f32>,
}

pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    let mut check = OutputCheck::new()
        .input("the ONNX model", &args.onnx)
        .output("--out", &args.out);
    if let Some(arch) = &args.arch_out {
        check = check.output("--arch-out", arch);
    }
    check.check()?;
    let bytes = crate::files::map(&args.onnx)?;
    let mut imported = onnx::import(&args.onnx, &bytes)?;
    let input = &mut imported.spec.input;
    input.scale = args.scale;
    input.mean = args.mean.clone();
    input.std = args.std.clone();
    let (model, out) = imported.build(&args.onnx)?;
    let toml = args.arch_out.as_ref().map(|p| (p, imported.spec.to_toml()));
    match &toml {
        Some((arch, text)) => crate::files::write_all_atomic(&[
            (args.out.as_path(), &out[..]),
            (arch.as_path(), text.as_bytes()),
        ])?,
        None => crate::files::write_atomic(&args.out, &out)?,
    }

    let params = imported.parameters();
    let folded = imported.spec.layers.len() - model.layers.len();
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    for l in &model.layers {
        *ops.entry(l.op.name()).or_default() += 1;
    }
    let ops: Vec<String> = ops.iter().map(|(op, n)| format!("{n} {op}")).collect();
    println!(
        "{}{}: {} layers ({}), {} parameters, input {:?}{}",
        args.onnx.display(),
        if imported.producer.is_empty() {
            String::new()
        } else {
            format!(" ({})", imported.producer)
        },
        model.layers.len(),
        ops.join(", "),
        units::count(params),
        model.input.shape,
        if folded > 0 {
            format!("; {folded} batchnorm(s) folded when loaded")
        } else {
            String::new()
        }
    );
    println!(
        "wrote {} ({})",
        args.out.display(),
        units::bytes(out.len() as f64)
    );
    if let Some((arch, _)) = &toml {
        println!("wrote {}", arch.display());
    }
    Ok(())
}
