//! Writing models: PyTorch state_dict names, the architecture in the metadata, a checksum of
//! every tensor, written atomically through [`crate::files`].

use std::collections::BTreeMap;
use std::path::Path;

use super::graph::{Model, Op};
use super::load::{ARCH_METADATA_KEY, NamedTensor, f32_tensor_bytes};
use super::spec::OpSpec;
use crate::files::Sealed;

impl Model {
    /// The model's tensors as f32 with their state_dict names. Folded batchnorm is carried by
    /// the linear/conv weights and biases; a batchnorm that could not be folded is written as
    /// its per-channel scale and shift (`weight` = scale, `bias` = shift, `running_mean` = 0,
    /// `running_var` = 1 − eps, so that `(x − 0) / √(1 − eps + eps) × scale + shift` reproduces it).
    pub fn named_tensors(&self) -> candle_core::Result<Vec<NamedTensor>> {
        let mut out = Vec::new();
        for layer in &self.layers {
            if let Op::ChannelAffine { scale, shift } = &layer.op {
                if let Some(OpSpec::Batchnorm {
                    weight,
                    bias,
                    running_mean,
                    running_var,
                    eps,
                }) = self.spec_of(&layer.name)
                {
                    let c = scale.elem_count();
                    out.push((weight.clone(), vec![c], scale.to_vec1::<f32>()?));
                    out.push((bias.clone(), vec![c], shift.to_vec1::<f32>()?));
                    out.push((running_mean.clone(), vec![c], vec![0.0; c]));
                    out.push((running_var.clone(), vec![c], vec![(1.0 - eps) as f32; c]));
                }
                continue;
            }
            if let Op::Param { param, .. } = &layer.op {
                out.push((
                    param.name.clone(),
                    param.stored.dims().to_vec(),
                    param.stored.flatten_all()?.to_vec1::<f32>()?,
                ));
                continue;
            }
            if let Op::LayerNorm(n) = &layer.op {
                for (name, t) in [(&n.weight_name, &n.weight), (&n.bias_name, &n.bias)] {
                    if let Some(name) = name {
                        out.push((name.clone(), t.dims().to_vec(), t.to_vec1::<f32>()?));
                    }
                }
                continue;
            }
            if let Some(p) = layer.params() {
                out.push((
                    p.weight_name.clone(),
                    p.weight.dims().to_vec(),
                    p.weight.flatten_all()?.to_vec1::<f32>()?,
                ));
                if let Some(b) = &p.bias {
                    out.push((p.bias_name.clone(), b.dims().to_vec(), b.to_vec1::<f32>()?));
                }
            }
        }
        Ok(out)
    }

    /// The architecture of the loaded graph (batchnorm folded away where it was folded), so a
    /// written model reloads to the same layers.
    pub fn folded_spec(&self) -> super::spec::ArchSpec {
        let mut spec = self.spec.clone();
        let names: std::collections::HashSet<&str> =
            self.layers.iter().map(|l| l.name.as_str()).collect();
        let mut kept: Vec<super::spec::LayerSpec> = Vec::new();
        // A folded batchnorm's name → the layer it was folded into, for the layers that read it.
        let mut renamed: std::collections::HashMap<String, String> = Default::default();
        for (i, l) in spec.layers.drain(..).enumerate() {
            let display = l.display_name(i);
            let folded =
                matches!(l.op, OpSpec::Batchnorm { .. }) && !names.contains(display.as_str());
            if folded {
                if let Some(into) = kept.last().and_then(|k| k.name.clone()) {
                    renamed.insert(display, into);
                }
            } else {
                // Pin the display name so positions shifting does not rename layers.
                kept.push(super::spec::LayerSpec {
                    name: Some(display),
                    ..l
                });
            }
        }
        let rename = |n: &mut String| {
            if let Some(to) = renamed.get(n.as_str()) {
                *n = to.clone();
            }
        };
        for l in &mut kept {
            l.inputs.iter_mut().for_each(rename);
            if let OpSpec::Add { from: Some(f), .. } | OpSpec::Mul { from: Some(f), .. } = &mut l.op
            {
                rename(f);
            }
        }
        for l in &mut kept {
            if let OpSpec::Linear { bias, weight, .. }
            | OpSpec::Conv2d { bias, weight, .. }
            | OpSpec::Conv1d { bias, weight, .. } = &mut l.op
            {
                let layer = self.layers.iter().find_map(|x| match &x.op {
                    Op::Linear(p) | Op::Conv2d(p, _) if &p.weight_name == weight => Some(p),
                    _ => None,
                });
                if let Some(p) = layer {
                    *bias = p.bias.as_ref().map(|_| p.bias_name.clone());
                }
            }
        }
        spec.layers = kept;
        spec
    }

    /// The model as a sealed safetensors file: f32 tensors, the architecture and `extra`
    /// metadata, with the checksum record.
    pub fn sealed(&self, extra: &[(&str, String)]) -> candle_core::Result<Sealed> {
        let tensors = self.named_tensors()?;
        let mut meta: BTreeMap<String, String> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        meta.insert(ARCH_METADATA_KEY.to_string(), self.folded_spec().to_json());
        Ok(Sealed::new(f32_tensor_bytes(&tensors), meta))
    }

    /// Writes the model as f32 safetensors with the architecture in the metadata, plus any
    /// `extra` metadata entries, atomically.
    pub fn save(&self, path: &Path, extra: &[(&str, String)]) -> anyhow::Result<()> {
        let bytes = self
            .sealed(extra)?
            .to_bytes()
            .map_err(|e| anyhow::anyhow!("{}: cannot serialize: {e}", path.display()))?;
        crate::files::write_atomic(path, &bytes)?;
        Ok(())
    }
}
