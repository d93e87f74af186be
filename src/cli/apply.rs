//! `squeeze apply`: compress a model as a recipe says and write the packed model.

use std::path::{Path, PathBuf};

use super::common::{ModelArgs, prepare};
use super::eval::prepare_model;
use super::recipe_args::RecipeArgs;
use crate::files::{self, OutputCheck, Sealed};
use crate::units;

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Where to write the compressed model (safetensors with packed tensors; the architecture
    /// and the recipe in its metadata).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    /// Also write the dequantized weights as dense f32 with the original tensor names (zeros
    /// where pruned), for going back to PyTorch. With --out, the two files are a pair: each is
    /// either left as it was or replaced whole (both are complete on disk before either is
    /// renamed into place), and each records its partner's SHA-256 (metadata
    /// `squeeze.partner`), so a pair whose files come from different runs — a run stopped
    /// between the two renames, or one file replaced later — is reported when either is loaded.
    #[arg(long, value_name = "FILE")]
    pub dense_out: Option<PathBuf>,
    /// Samples for activation calibration, when the recipe quantizes activations.
    #[arg(long, value_name = "PATH")]
    pub calibration_data: Option<PathBuf>,
}

/// Writes a packed model to `out` and, when given, its dequantized dense weights beside it: a
/// pair written together, each recording the other's SHA-256.
pub(super) fn write_packed(
    out: &Path,
    mut compressed: Sealed,
    dense: Option<(&Path, Sealed)>,
) -> anyhow::Result<()> {
    let serialize = |file: &Sealed, path: &Path| {
        file.to_bytes()
            .map_err(|e| anyhow::anyhow!("{}: cannot serialize: {e}", path.display()))
    };
    match dense {
        None => files::write_atomic(out, &serialize(&compressed, out)?)?,
        Some((dense_path, mut dense)) => {
            let (c, d) = (compressed.digest().to_string(), dense.digest().to_string());
            compressed.set_partner(out, dense_path, &d);
            dense.set_partner(dense_path, out, &c);
            files::write_all_atomic(&[
                (out, &serialize(&compressed, out)?),
                (dense_path, &serialize(&dense, dense_path)?),
            ])?;
        }
    }
    Ok(())
}

pub fn run(args: ApplyArgs) -> anyhow::Result<()> {
    check_paths(&args)?;
    if args.recipe.recipe()?.is_none() {
        anyhow::bail!(
            "give a recipe: --recipe FILE, or quick flags such as --sparsity 0.5 --bits 8"
        );
    }
    let prepared = prepare_model(&args.model, &args.recipe, |m, count| {
        let Some(path) = args.calibration_data.as_ref() else {
            let recipe = match &args.recipe.recipe {
                Some(r) => format!("{}: the recipe", r.display()),
                None => "the recipe".to_string(),
            };
            anyhow::bail!(
                "{recipe} quantizes activations ([activations]): give --calibration-data PATH (samples to calibrate on)"
            );
        };
        let set = crate::data::load(path, &super::eval::calibration_options(count, m))?;
        prepare(m, &set.truncated(count))
    })?;
    let recipe_text = prepared.recipe.as_ref().map(|r| r.to_toml());
    let cm = &prepared.compressed;
    let record: Vec<_> = prepared.pruning.iter().map(|r| r.metadata()).collect();
    let compressed = cm.sealed_with(
        recipe_text.as_deref(),
        &record
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect::<Vec<_>>(),
    );
    let dense = match &args.dense_out {
        None => None,
        Some(dense_path) => {
            let plan = prepared
                .plan
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("no plan to write densely"))?;
            let model = plan.try_dequantized_model()?;
            let dense = model.sealed(&[("squeeze.recipe", recipe_text.unwrap_or_default())])?;
            Some((dense_path.as_path(), dense))
        }
    };
    write_packed(&args.out, compressed, dense)?;
    let dense_bytes = crate::measure::dense_bytes(cm, prepared.pruning.as_ref());
    println!(
        "wrote {}: {} packed ({} bytes), dense f32 {}, ratio {:.1}×",
        args.out.display(),
        units::bytes(cm.size_bytes() as f64),
        cm.size_bytes(),
        units::bytes(dense_bytes as f64),
        dense_bytes as f64 / cm.size_bytes().max(1) as f64
    );
    if let Some(dense) = &args.dense_out {
        println!("wrote {} (dense f32, dequantized)", dense.display());
    }
    Ok(())
}

/// Refuses, before any work, outputs that would overwrite an input or each other, or that
/// cannot be written.
fn check_paths(args: &ApplyArgs) -> anyhow::Result<()> {
    let model = &args.model.model;
    let sidecar = crate::model::sidecar_path(model);
    let mut check = OutputCheck::new().input("--model", model);
    if let Some(arch) = &args.model.arch {
        check = check.input("--arch", arch);
    } else if sidecar.is_file() {
        check = check.input("the architecture beside the model", &sidecar);
    }
    if let Some(recipe) = &args.recipe.recipe {
        check = check.input("--recipe", recipe);
    }
    if let Some(data) = &args.calibration_data {
        let sources = crate::data::source_files(data, &Default::default());
        check = check.inputs("--calibration-data", sources.iter().map(PathBuf::as_path));
    }
    check = check.output("--out", &args.out);
    if let Some(dense) = &args.dense_out {
        check = check.output("--dense-out", dense);
    }
    check.check()?;
    Ok(())
}
