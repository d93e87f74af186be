//! Writing models: PyTorch state_dict names, the architecture in the metadata, a checksum of
//! every tensor, written atomically through [`crate::files`].

use std::collections::BTreeMap;
use std::path::Path;

use super::graph::{Model, Op};
use super::load::{ARCH_METADATA_KEY, NamedTensor, f32_tensor_bytes};
use super::spec::OpSpec;
use crate::files::Sealed;

impl Model {
    /// The model's tensors as f32 with their state_dict names, as the original module holds
    /// them: a linear/conv with a batchnorm folded into it is written unfolded (its own weights
    /// and bias, then the batchnorm's four tensors), so the file loads into the PyTorch module
    /// it came from; a batchnorm that could not be folded is written as
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
                let dims = p.weight.dims().to_vec();
                let w = p.weight.flatten_all()?.to_vec1::<f32>()?;
                let b = p.bias.as_ref().map(|b| b.to_vec1::<f32>()).transpose()?;
                let Some(norm) = &p.folded else {
                    out.push((p.weight_name.clone(), dims, w));
                    if let Some(b) = b {
                        out.push((p.bias_name.clone(), vec![b.len()], b));
                    }
                    continue;
                };
                // The module before the fold: its own weights and bias, then the batchnorm.
                let cols = dims[1..].iter().product();
                let (w, own_bias, beta) = norm.unfold(&w, b.as_deref(), cols);
                let c = beta.len();
                out.push((p.weight_name.clone(), dims, w));
                if let Some(b) = own_bias {
                    out.push((p.bias_name.clone(), vec![c], b));
                }
                let [gamma, bias, mean, var] = &norm.names;
                out.push((gamma.clone(), vec![c], norm.gamma.clone()));
                out.push((bias.clone(), vec![c], beta));
                out.push((mean.clone(), vec![c], norm.running_mean.clone()));
                out.push((var.clone(), vec![c], norm.running_var.clone()));
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
        self.name_biases(&mut kept, true);
        spec.layers = kept;
        spec
    }

    /// The architecture [`Model::named_tensors`] is written with: the description as loaded
    /// (batchnorm layers included), each linear/conv naming the bias it is written with.
    pub fn written_spec(&self) -> super::spec::ArchSpec {
        let mut spec = self.spec.clone();
        self.name_biases(&mut spec.layers, false);
        spec
    }

    /// Sets each linear/conv layer's `bias` to the bias it is written with: the folded bias
    /// when `folded`, else the layer's own (a batchnorm folded into a layer without a bias of
    /// its own carries it). Structured pruning can give a layer a bias it did not have.
    fn name_biases(&self, layers: &mut [super::spec::LayerSpec], folded: bool) {
        for l in layers {
            if let OpSpec::Linear { bias, weight, .. }
            | OpSpec::Conv2d { bias, weight, .. }
            | OpSpec::Conv1d { bias, weight, .. } = &mut l.op
            {
                let layer = self.layers.iter().find_map(|x| match &x.op {
                    Op::Linear(p) | Op::Conv2d(p, _) if &p.weight_name == weight => Some(p),
                    _ => None,
                });
                if let Some(p) = layer {
                    let has = match &p.folded {
                        Some(norm) if !folded => norm.own_bias,
                        _ => p.bias.is_some(),
                    };
                    *bias = has.then(|| p.bias_name.clone());
                }
            }
        }
    }

    /// The model as a sealed safetensors file: f32 tensors, the architecture and `extra`
    /// metadata, with the checksum record.
    pub fn sealed(&self, extra: &[(&str, String)]) -> candle_core::Result<Sealed> {
        let tensors = self.named_tensors()?;
        let mut meta: BTreeMap<String, String> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        meta.insert(ARCH_METADATA_KEY.to_string(), self.written_spec().to_json());
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
