//! `squeeze apply`: compress a model as a recipe says and write the packed model.

use std::path::PathBuf;

use super::common::{ModelArgs, human_bytes};
use super::eval::{calibration_inputs, prepare_model};
use super::recipe_args::RecipeArgs;

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
    /// where pruned), for going back to PyTorch.
    #[arg(long, value_name = "FILE")]
    pub dense_out: Option<PathBuf>,
    /// Samples for activation calibration, when the recipe quantizes activations.
    #[arg(long, value_name = "PATH")]
    pub calibration_data: Option<PathBuf>,
}

pub fn run(args: ApplyArgs) -> anyhow::Result<()> {
    if args.recipe.recipe()?.is_none() {
        anyhow::bail!(
            "give a recipe: --recipe FILE, or quick flags such as --sparsity 0.5 --bits 8"
        );
    }
    let prepared = prepare_model(&args.model, &args.recipe, |m, count| {
        let Some(path) = args.calibration_data.as_ref() else {
            anyhow::bail!(
                "the recipe quantizes activations: give --calibration-data PATH (samples to calibrate on)"
            );
        };
        let set = crate::data::load(path, &Default::default())?;
        calibration_inputs(Some(path), &set, m, count)
    })?;
    let recipe_text = prepared.recipe.as_ref().map(|r| r.to_toml());
    prepared
        .compressed
        .save(&args.out, recipe_text.as_deref())?;
    let cm = &prepared.compressed;
    println!(
        "wrote {}: {} packed ({} bytes), dense f32 {}, ratio {:.1}×",
        args.out.display(),
        human_bytes(cm.size_bytes()),
        cm.size_bytes(),
        human_bytes(cm.dense_bytes()),
        cm.dense_bytes() as f64 / cm.size_bytes().max(1) as f64
    );
    if let Some(dense) = &args.dense_out {
        let plan = prepared
            .plan
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no plan to write densely"))?;
        let model = plan.try_dequantized_model()?;
        let recipe = recipe_text.unwrap_or_default();
        model.save(dense, &[("squeeze.recipe", recipe)])?;
        println!("wrote {} (dense f32, dequantized)", dense.display());
    }
    Ok(())
}
