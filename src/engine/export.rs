//! Writing and reading compressed models: a safetensors file whose tensors are the packed
//! buffers themselves (so `size_bytes` is the file size minus the header), with the
//! architecture, a per-layer format descriptor and the recipe in the metadata.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use safetensors::{Dtype, SafeTensors};

use super::desc::{FormatDesc, IndexDesc, LayerDesc, ValuesDesc};
use super::error::EngineError;
use super::format::{Indexing, PackedLayer, RowPtr, ValueStore, ZeroPoints, bitmask_row_start};
use super::model::{CompressedModel, Step};
use crate::compress::{ActivationQuant, Granularity};
use crate::files::{Sealed, TensorBytes};
use crate::model::shape::element_count;
use crate::model::spec::tensor_prefix;
use crate::model::{
    ARCH_METADATA_KEY, ArchSpec, Layer, MODEL_INPUT, Model, Op, OpSpec, ParamJoin, ParamValue,
    Params, Source, out_shape,
};

pub const FORMAT_KEY: &str = "squeeze.format";
pub const FORMAT_VALUE: &str = "compressed";
pub const LAYERS_KEY: &str = "squeeze.layers";
pub const RECIPE_KEY: &str = "squeeze.recipe";
pub const INPUT_KEY: &str = "squeeze.input";

/// Why the layer descriptors of a compressed file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DescError {
    #[error(transparent)]
    List(#[from] serde_json::Error),
    #[error("layer {layer}: {e}")]
    Json { layer: usize, e: serde_json::Error },
    #[error("layer {layer}: {e}")]
    Upgrade {
        layer: usize,
        e: super::legacy::UpgradeError,
    },
}

impl LayerDesc {
    /// Reads the layers of the metadata key `squeeze.layers`, in either encoding: the schema's
    /// (`"spec"`) or the one with `"kind"`-tagged ops of files written before it.
    pub fn read_all(json: &str) -> Result<Vec<LayerDesc>, DescError> {
        let values: Vec<serde_json::Value> = serde_json::from_str(json)?;
        let mut descs: Vec<LayerDesc> = Vec::with_capacity(values.len());
        for (layer, v) in values.into_iter().enumerate() {
            let d = if v.get("spec").is_some() {
                serde_json::from_value(v).map_err(|e| DescError::Json { layer, e })?
            } else {
                let old: super::legacy::OldLayerDesc =
                    serde_json::from_value(v).map_err(|e| DescError::Json { layer, e })?;
                old.upgrade(&descs)
                    .map_err(|e| DescError::Upgrade { layer, e })?
            };
            descs.push(d);
        }
        Ok(descs)
    }
}

impl PackedLayer {
    /// The format descriptor written to the metadata.
    pub fn descriptor(&self) -> FormatDesc {
        FormatDesc {
            rows: self.rows,
            cols: self.cols,
            entries: self.entries,
            index: match &self.index {
                Indexing::Dense => IndexDesc::Dense,
                Indexing::Csr {
                    gap_bits, row_ptr, ..
                } => IndexDesc::Csr {
                    gap_bits: *gap_bits,
                    row_ptr_bits: row_ptr.bits(),
                },
                Indexing::Bitmask { .. } => IndexDesc::Bitmask,
            },
            values: match &self.values {
                ValueStore::F32(_) => ValuesDesc::F32,
                ValueStore::F16(_) => ValuesDesc::F16,
                ValueStore::Bf16(_) => ValuesDesc::Bf16,
                ValueStore::Uniform {
                    bits,
                    granularity,
                    zero_points,
                    ..
                } => ValuesDesc::Uniform {
                    bits: *bits,
                    granularity: *granularity,
                    zero_points: match zero_points {
                        ZeroPoints::Midpoint => "midpoint",
                        ZeroPoints::U8(_) => "u8",
                        ZeroPoints::I32(_) => "i32",
                    }
                    .into(),
                },
                ValueStore::Codebook { bits, codebook, .. } => ValuesDesc::Codebook {
                    bits: *bits,
                    size: codebook.len(),
                },
            },
            bias: self.bias.is_some(),
            activation_bits: self.activation.map(|a| a.bits),
            entropy_bytes: self.entropy_bytes,
        }
    }

    /// The layer's tensors: (suffix, dtype, shape, little-endian bytes).
    pub fn tensors(&self) -> Vec<(&'static str, Dtype, Vec<usize>, Vec<u8>)> {
        let mut out = Vec::new();
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let u16s = |v: &[u16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        match &self.values {
            ValueStore::F32(v) => out.push(("values", Dtype::F32, vec![v.len()], f32s(v))),
            ValueStore::F16(v) => out.push(("values", Dtype::F16, vec![v.len()], u16s(v))),
            ValueStore::Bf16(v) => out.push(("values", Dtype::BF16, vec![v.len()], u16s(v))),
            ValueStore::Uniform {
                codes,
                scales,
                zero_points,
                ..
            } => {
                out.push(("values", Dtype::U8, vec![codes.len()], codes.clone()));
                out.push(("scales", Dtype::F32, vec![scales.len()], f32s(scales)));
                match zero_points {
                    ZeroPoints::Midpoint => {}
                    ZeroPoints::U8(z) => {
                        out.push(("zero_points", Dtype::U8, vec![z.len()], z.clone()))
                    }
                    ZeroPoints::I32(z) => out.push((
                        "zero_points",
                        Dtype::I32,
                        vec![z.len()],
                        z.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    )),
                }
            }
            ValueStore::Codebook {
                codes, codebook, ..
            } => {
                out.push(("values", Dtype::U8, vec![codes.len()], codes.clone()));
                out.push(("codebook", Dtype::F32, vec![codebook.len()], f32s(codebook)));
            }
        }
        match &self.index {
            Indexing::Dense => {}
            Indexing::Csr {
                gap_bits,
                gaps,
                row_ptr,
            } => {
                if *gap_bits == 16 {
                    out.push(("gaps", Dtype::U16, vec![gaps.len() / 2], gaps.clone()));
                } else {
                    out.push(("gaps", Dtype::U8, vec![gaps.len()], gaps.clone()));
                }
                match row_ptr {
                    RowPtr::U16(v) => out.push(("row_ptr", Dtype::U16, vec![v.len()], u16s(v))),
                    RowPtr::U32(v) => out.push((
                        "row_ptr",
                        Dtype::U32,
                        vec![v.len()],
                        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    )),
                }
            }
            Indexing::Bitmask { mask, .. } => {
                out.push(("mask", Dtype::U8, vec![mask.len()], mask.clone()))
            }
        }
        if let Some(b) = &self.bias {
            out.push(("bias", Dtype::F32, vec![b.len()], f32s(b)));
        }
        if let Some(a) = &self.activation {
            out.push((
                "act_scale",
                Dtype::F32,
                vec![1],
                a.scale.to_le_bytes().to_vec(),
            ));
            out.push((
                "act_zero_point",
                Dtype::I32,
                vec![1],
                a.zero_point.to_le_bytes().to_vec(),
            ));
        }
        out
    }
}

impl CompressedModel {
    /// The per-layer descriptors written to the metadata key `squeeze.layers`.
    pub fn descriptors(&self) -> Vec<LayerDesc> {
        self.model
            .layers
            .iter()
            .zip(&self.steps)
            .enumerate()
            .map(|(i, (l, s))| LayerDesc {
                name: l.name.clone(),
                in_shape: l.in_shape.clone(),
                out_shape: l.out_shape.clone(),
                inputs: self.model.layer_spec(i).inputs,
                spec: self.model.op_spec(l),
                format: s.packed().map(PackedLayer::descriptor),
            })
            .collect()
    }

    /// The compressed model as a sealed safetensors file: the packed buffers as tensors, the
    /// architecture, layer formats, input scaling and recipe in the metadata, and the checksum
    /// record.
    pub fn sealed(&self, recipe_text: Option<&str>) -> Sealed {
        self.sealed_with(recipe_text, &[])
    }

    /// `sealed` with `extra` metadata entries besides the architecture, formats and recipe
    /// (fine-tuning records its settings and the hashes of its inputs this way).
    pub fn sealed_with(&self, recipe_text: Option<&str>, extra: &[(&str, String)]) -> Sealed {
        let mut tensors: Vec<TensorBytes> = Vec::new();
        for (layer, step) in self.model.layers.iter().zip(&self.steps) {
            if let Some(p) = step.packed() {
                for (suffix, dt, shape, bytes) in p.tensors() {
                    tensors.push((format!("{}.{suffix}", layer.name), dt, shape, bytes));
                }
            }
            match step {
                Step::LayerNorm {
                    weight,
                    bias,
                    stored,
                    ..
                } => {
                    let kept = [("weight", weight, stored.0), ("bias", bias, stored.1)];
                    for (suffix, v, _) in kept.into_iter().filter(|k| k.2) {
                        tensors.push((
                            format!("{}.{suffix}", layer.name),
                            Dtype::F32,
                            vec![v.len()],
                            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                        ));
                    }
                }
                Step::ParamJoin { .. } | Step::ParamConcat(_) => {
                    if let Op::Param { param, .. } = &layer.op {
                        let v: Vec<f32> = param
                            .stored
                            .flatten_all()
                            .and_then(|t| t.to_vec1())
                            .unwrap_or_default();
                        tensors.push((
                            format!("{}.param", layer.name),
                            Dtype::F32,
                            param.stored.dims().to_vec(),
                            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                        ));
                    }
                }
                Step::ChannelAffine { scale, shift, .. } => {
                    for (suffix, v) in [("scale", scale), ("shift", shift)] {
                        tensors.push((
                            format!("{}.{suffix}", layer.name),
                            Dtype::F32,
                            vec![v.len()],
                            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                        ));
                    }
                }
                _ => {}
            }
        }
        let mut meta = BTreeMap::new();
        meta.insert(
            ARCH_METADATA_KEY.to_string(),
            self.model.folded_spec().to_json(),
        );
        meta.insert(FORMAT_KEY.to_string(), FORMAT_VALUE.to_string());
        meta.insert(
            LAYERS_KEY.to_string(),
            serde_json::to_string(&self.descriptors()).unwrap_or_default(),
        );
        meta.insert(
            INPUT_KEY.to_string(),
            serde_json::to_string(&self.model.input).unwrap_or_default(),
        );
        if let Some(r) = recipe_text {
            meta.insert(RECIPE_KEY.to_string(), r.to_string());
        }
        for (k, v) in extra {
            meta.insert(k.to_string(), v.clone());
        }
        Sealed::new(tensors, meta)
    }

    /// The safetensors bytes of the compressed model (the same model and recipe always give
    /// the same bytes).
    pub fn to_bytes(&self, recipe_text: Option<&str>) -> Result<Vec<u8>, EngineError> {
        self.sealed(recipe_text)
            .to_bytes()
            .map_err(EngineError::Serialize)
    }

    /// Writes the compressed model to `path` atomically (temporary file, then rename).
    pub fn save(&self, path: &Path, recipe_text: Option<&str>) -> Result<(), EngineError> {
        let bytes = self.to_bytes(recipe_text)?;
        crate::files::write_atomic(path, &bytes).map_err(EngineError::File)
    }
}

/// `true` when `path` is a safetensors file written by `CompressedModel::save` (reading only
/// its header).
pub fn is_compressed_file(path: &Path) -> bool {
    crate::files::read_metadata(path)
        .is_ok_and(|m| m.get(FORMAT_KEY).map(String::as_str) == Some(FORMAT_VALUE))
}

/// Loads a file written by `CompressedModel::save`.
pub fn load_compressed(path: &Path) -> Result<CompressedModel, EngineError> {
    let bytes = crate::files::map(path)?;
    let corrupt = |tensor: &str, msg: String| EngineError::Corrupt {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        msg,
    };
    let (_, meta) =
        SafeTensors::read_metadata(&bytes).map_err(|e| corrupt("(header)", e.to_string()))?;
    let metadata: BTreeMap<String, String> = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    if metadata.get(FORMAT_KEY).map(String::as_str) != Some(FORMAT_VALUE) {
        return Err(corrupt(
            "(header)",
            format!(
                "not a compressed squeeze model (metadata \"{FORMAT_KEY}\" is not \"{FORMAT_VALUE}\")"
            ),
        ));
    }
    let st = SafeTensors::deserialize(&bytes).map_err(|e| corrupt("(header)", e.to_string()))?;
    crate::files::verify_checksum(path, &st, &metadata)?;
    let meta_json = |key: &str| {
        metadata
            .get(key)
            .ok_or_else(|| corrupt("(header)", format!("metadata key \"{key}\" is missing")))
    };
    let spec = ArchSpec::from_json(meta_json(ARCH_METADATA_KEY)?)
        .map_err(|e| corrupt("(header)", format!("metadata \"{ARCH_METADATA_KEY}\": {e}")))?;
    let descs = LayerDesc::read_all(meta_json(LAYERS_KEY)?)
        .map_err(|e| corrupt("(header)", format!("metadata \"{LAYERS_KEY}\": {e}")))?;
    let input = match metadata.get(INPUT_KEY) {
        Some(j) => serde_json::from_str(j)
            .map_err(|e| corrupt("(header)", format!("metadata \"squeeze.input\": {e}")))?,
        None => spec.input.clone(),
    };
    crate::model::check_input(&input)
        .map_err(|m| corrupt("(header)", format!("metadata \"{INPUT_KEY}\": {m}")))?;
    let mut reader = Reader {
        st: &st,
        path,
        used: 0,
    };
    let mut layers = Vec::with_capacity(descs.len());
    let mut packed = Vec::with_capacity(descs.len());
    for d in &descs {
        let reads = sources(d, &layers).map_err(|msg| corrupt(&d.name, msg))?;
        let main = reads[0];
        let previous = layers
            .len()
            .checked_sub(1)
            .map_or(Source::Input, Source::Layer);
        let shape_of = |s: Source| match s {
            Source::Input => &input.shape[..],
            Source::Layer(j) => &layers[j].out_shape[..],
        };
        let expect = shape_of(main);
        if d.in_shape != expect {
            return Err(corrupt(
                &d.name,
                format!(
                    "input shape {:?}, but the value it reads has shape {expect:?}",
                    d.in_shape
                ),
            ));
        }
        let shapes: Vec<&[usize]> = reads.iter().map(|s| shape_of(*s)).collect();
        let (op, p) = read_op(d, &reads, &shapes, &mut reader)?;
        layers.push(Layer {
            name: d.name.clone(),
            op,
            input: (main != previous).then_some(main),
            in_shape: d.in_shape.clone(),
            out_shape: d.out_shape.clone(),
            stored_bytes: p.as_ref().map_or(0, |p: &PackedLayer| p.size_bytes()),
        });
        packed.push(p);
    }
    if layers.is_empty() {
        return Err(corrupt("(header)", "no layers".into()));
    }
    if reader.used != st.len() {
        return Err(corrupt(
            "(header)",
            format!(
                "{} tensors in the file, {} described by the layers",
                st.len(),
                reader.used
            ),
        ));
    }
    // Running needs each layer's activations; refuse a graph too large for memory before
    // any buffer is sized from it.
    crate::limits::check_memory(
        "one sample through this model",
        Some(crate::model::shape::sample_activation_bytes(&layers)),
    )
    .map_err(|e| corrupt("(graph)", e.to_string()))?;
    let model = Model {
        spec,
        input,
        layers,
        source: path.to_path_buf(),
    };
    CompressedModel::assemble(model, packed).map_err(|e| corrupt("(graph)", e.to_string()))
}

/// The values layer `d` reads, resolved among the layers before it: its input (the previous
/// layer's output unless it names one), then a join's other operands.
fn sources(d: &LayerDesc, earlier: &[Layer]) -> Result<Vec<Source>, String> {
    let find = |n: &str| {
        if n == MODEL_INPUT {
            Ok(Source::Input)
        } else {
            earlier
                .iter()
                .position(|l| l.name == n)
                .map(Source::Layer)
                .ok_or_else(|| format!("reads \"{n}\", not an earlier layer"))
        }
    };
    let mut reads = Vec::new();
    if d.inputs.is_empty() {
        reads.push(
            earlier
                .len()
                .checked_sub(1)
                .map_or(Source::Input, Source::Layer),
        );
    }
    for n in d
        .inputs
        .iter()
        .map(String::as_str)
        .chain(d.spec.from_name())
    {
        reads.push(find(n)?);
    }
    Ok(reads)
}

/// Layer `d`'s op with its tensors read (a linear/conv layer's packed weights apart, its graph
/// weight a placeholder of the right shape), given the values it reads and their shapes. Its
/// output for its inputs must be the recorded one (the kernels' buffers are sized by these
/// shapes), checked before any size from its format is used.
fn read_op(
    d: &LayerDesc,
    reads: &[Source],
    shapes: &[&[usize]],
    reader: &mut Reader,
) -> Result<(Op, Option<PackedLayer>), EngineError> {
    let path = reader.path;
    let corrupt = |msg: String| EngineError::Corrupt {
        path: path.to_path_buf(),
        tensor: d.name.clone(),
        msg,
    };
    let check = |op: Op| match out_shape(&op, shapes) {
        Ok(out) if out == d.out_shape => Ok(op),
        Ok(out) => Err(corrupt(format!(
            "output shape {:?}, but the op gives {out:?} for {:?}",
            d.out_shape, d.in_shape
        ))),
        Err(e) => Err(corrupt(e.to_string())),
    };
    let dev = Device::Cpu;
    Ok(match &d.spec {
        OpSpec::Linear { weight, .. }
        | OpSpec::Conv2d { weight, .. }
        | OpSpec::Conv1d { weight, .. }
        | OpSpec::Embedding { weight, .. } => {
            let Some(format) = &d.format else {
                return Err(corrupt(format!(
                    "a {} layer without its storage format",
                    d.spec.op_name()
                )));
            };
            let weight_shape = match &d.spec {
                OpSpec::Conv2d {
                    out_channels: Some(out),
                    kernel: Some(k),
                    groups,
                    ..
                } => {
                    let (kh, kw) = k.hw();
                    let cin = match d.in_shape.first() {
                        Some(c) if *groups > 0 => c / groups,
                        _ => 0,
                    };
                    vec![*out, cin, kh, kw]
                }
                OpSpec::Conv1d {
                    out_channels: Some(out),
                    kernel: Some(k),
                    groups,
                    ..
                } => {
                    let cin = match d.in_shape.first() {
                        Some(c) if *groups > 0 => c / groups,
                        _ => 0,
                    };
                    vec![*out, cin, *k]
                }
                OpSpec::Conv2d { .. } | OpSpec::Conv1d { .. } => {
                    return Err(corrupt(format!(
                        "a {} layer without `out_channels` and `kernel`",
                        d.spec.op_name()
                    )));
                }
                _ => vec![format.rows, format.cols],
            };
            if element_count(&weight_shape) != format.rows.checked_mul(format.cols) {
                return Err(corrupt(format!(
                    "weight shape {weight_shape:?} does not match {}×{}",
                    format.rows, format.cols
                )));
            }
            // The weights live in the packed layer; the graph keeps only their shape, as a
            // broadcast zero that allocates nothing whatever the shape.
            let placeholder = Tensor::zeros((), candle_core::DType::F32, &dev)
                .and_then(|z| z.broadcast_as(weight_shape))
                .map_err(|e| corrupt(e.to_string()))?;
            let params = Params {
                weight: placeholder,
                bias: None,
                weight_name: weight.clone(),
                bias_name: d
                    .spec
                    .bias()
                    .map_or_else(|| format!("{}.bias", tensor_prefix(weight)), str::to_string),
                folded: None,
            };
            let op = check(Op::with_params(&d.spec, params))?;
            (op, Some(reader.packed(&d.name, format)?))
        }
        OpSpec::Batchnorm { .. } => {
            let c = d.in_shape.first().copied().unwrap_or(0);
            let scale = reader.f32s(&format!("{}.scale", d.name), c)?;
            let shift = reader.f32s(&format!("{}.shift", d.name), c)?;
            let t = |v: Vec<f32>| Tensor::from_vec(v, c, &dev).map_err(|e| corrupt(e.to_string()));
            let op = Op::ChannelAffine {
                scale: t(scale)?,
                shift: t(shift)?,
            };
            (check(op)?, None)
        }
        OpSpec::LayerNorm { weight, bias, eps } => {
            let n = d.in_shape.last().copied().unwrap_or(0);
            if !(eps.is_finite() && *eps > 0.0) {
                return Err(corrupt(format!("eps = {eps} must be positive and finite")));
            }
            let mut read = |stored: bool, suffix: &str, fill: f32| {
                if stored {
                    reader.f32s(&format!("{}.{suffix}", d.name), n)
                } else {
                    Ok(vec![fill; n])
                }
            };
            let w = read(weight.is_some(), "weight", 1.0)?;
            let b = read(bias.is_some(), "bias", 0.0)?;
            let t = |v: Vec<f32>| Tensor::from_vec(v, n, &dev).map_err(|e| corrupt(e.to_string()));
            let op = Op::LayerNorm(crate::model::NormParams {
                weight: t(w)?,
                bias: t(b)?,
                eps: *eps,
                weight_name: weight.clone(),
                bias_name: bias.clone(),
            });
            (check(op)?, None)
        }
        OpSpec::Add { param: Some(t), .. }
        | OpSpec::Mul { param: Some(t), .. }
        | OpSpec::Concat { param: Some(t) }
            if reads.len() == 1 =>
        {
            let join = match &d.spec {
                OpSpec::Add { .. } => ParamJoin::Add,
                OpSpec::Mul { .. } => ParamJoin::Mul,
                _ => ParamJoin::Concat,
            };
            let name = format!("{}.param", d.name);
            let (shape, v) = reader.f32s_any(&name)?;
            let stored = Tensor::from_vec(v, shape, &dev).map_err(|e| corrupt(e.to_string()))?;
            let param = ParamValue::new(join, stored, t, &d.in_shape).map_err(corrupt)?;
            (check(Op::Param { join, param })?, None)
        }
        OpSpec::Add { .. } | OpSpec::Mul { .. } if reads.len() == 2 => {
            let from = reads[1];
            let op = if matches!(d.spec, OpSpec::Mul { .. }) {
                Op::Mul { from }
            } else {
                Op::Add { from }
            };
            (check(op)?, None)
        }
        OpSpec::Concat { .. } if reads.len() >= 2 => (
            check(Op::Concat {
                from: reads[1..].to_vec(),
            })?,
            None,
        ),
        OpSpec::Add { .. } | OpSpec::Mul { .. } | OpSpec::Concat { .. } => {
            return Err(corrupt(format!(
                "{} reads {} value(s)",
                d.spec.op_name(),
                reads.len()
            )));
        }
        other => (
            check(Op::for_input(other, &d.in_shape).map_err(|e| corrupt(e.to_string()))?)?,
            None,
        ),
    })
}

struct Reader<'a> {
    st: &'a SafeTensors<'a>,
    path: &'a Path,
    used: usize,
}

impl Reader<'_> {
    fn err(&self, tensor: &str, msg: String) -> EngineError {
        EngineError::Corrupt {
            path: self.path.to_path_buf(),
            tensor: tensor.to_string(),
            msg,
        }
    }

    /// The bytes of `name`, checking its dtype and element count.
    fn raw(
        &mut self,
        name: &str,
        dtypes: &[Dtype],
        len: usize,
    ) -> Result<(Dtype, Vec<u8>), EngineError> {
        let v = self
            .st
            .tensor(name)
            .map_err(|_| self.err(name, "tensor is missing".into()))?;
        if !dtypes.contains(&v.dtype()) {
            return Err(self.err(
                name,
                format!("dtype {:?}, expected one of {dtypes:?}", v.dtype()),
            ));
        }
        let n: usize = v.shape().iter().product();
        if n != len || v.shape().len() != 1 {
            return Err(self.err(name, format!("shape {:?}, expected [{len}]", v.shape())));
        }
        self.used += 1;
        Ok((v.dtype(), v.data().to_vec()))
    }

    fn f32s(&mut self, name: &str, len: usize) -> Result<Vec<f32>, EngineError> {
        let (_, b) = self.raw(name, &[Dtype::F32], len)?;
        let v: Vec<f32> = b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(self.err(name, format!("non-finite value at {i}")));
        }
        Ok(v)
    }

    /// An f32 tensor of any shape: its shape and values.
    fn f32s_any(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>), EngineError> {
        let shape = self
            .st
            .tensor(name)
            .map_err(|_| self.err(name, "tensor is missing".into()))?
            .shape()
            .to_vec();
        let len = element_count(&shape).ok_or_else(|| self.err(name, "too large".into()))?;
        let v = self
            .st
            .tensor(name)
            .map_err(|_| self.err(name, "tensor is missing".into()))?;
        if v.dtype() != Dtype::F32 {
            return Err(self.err(name, format!("dtype {:?}, expected F32", v.dtype())));
        }
        let values: Vec<f32> = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if values.len() != len {
            return Err(self.err(name, format!("{} values for shape {shape:?}", values.len())));
        }
        if let Some(i) = values.iter().position(|x| !x.is_finite()) {
            return Err(self.err(name, format!("non-finite value at {i}")));
        }
        self.used += 1;
        Ok((shape, values))
    }

    fn u16s(&mut self, name: &str, dt: Dtype, len: usize) -> Result<Vec<u16>, EngineError> {
        let (_, b) = self.raw(name, &[dt], len)?;
        Ok(b.chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect())
    }

    fn packed(&mut self, layer: &str, f: &FormatDesc) -> Result<PackedLayer, EngineError> {
        let t = |s: &str| format!("{layer}.{s}");
        // Every entry is a position of the rows × cols matrix; with that bound the sizes
        // computed from these fields below (bits per entry, mask bits) cannot overflow.
        let positions = f
            .rows
            .checked_mul(f.cols)
            .filter(|n| n.checked_mul(8).is_some());
        if positions.is_none_or(|n| f.entries > n) {
            return Err(self.err(
                &t("values"),
                format!("{} entries in a {}×{} layer", f.entries, f.rows, f.cols),
            ));
        }
        let values = match &f.values {
            ValuesDesc::F32 => ValueStore::F32(self.f32s(&t("values"), f.entries)?),
            ValuesDesc::F16 => ValueStore::F16(self.u16s(&t("values"), Dtype::F16, f.entries)?),
            ValuesDesc::Bf16 => {
                ValueStore::Bf16(self.u16s(&t("values"), Dtype::BF16, f.entries)?)
            }
            ValuesDesc::Uniform {
                bits,
                granularity,
                zero_points,
            } => {
                if !(1..=8).contains(bits) {
                    return Err(self.err(&t("values"), format!("{bits}-bit codes")));
                }
                if let Granularity::Group { size: 0 } = granularity {
                    return Err(self.err(&t("scales"), "group size 0".into()));
                }
                let codes = self
                    .raw(
                        &t("values"),
                        &[Dtype::U8],
                        super::pack::packed_len(f.entries, *bits),
                    )?
                    .1;
                let groups = granularity.group_count(f.rows, f.cols);
                let scales = self.f32s(&t("scales"), groups)?;
                let zp = match zero_points.as_str() {
                    "midpoint" => ZeroPoints::Midpoint,
                    "u8" => ZeroPoints::U8(self.raw(&t("zero_points"), &[Dtype::U8], groups)?.1),
                    "i32" => ZeroPoints::I32(
                        self.raw(&t("zero_points"), &[Dtype::I32], groups)?
                            .1
                            .chunks_exact(4)
                            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect(),
                    ),
                    other => {
                        return Err(self.err(
                            &t("zero_points"),
                            format!("unknown zero point storage \"{other}\""),
                        ));
                    }
                };
                // Every level `scale × (code − zero point)` must be a finite f32.
                let levels = (1u32 << bits) as f32;
                if let Some(g) = scales
                    .iter()
                    .position(|s| *s < 0.0 || !(s * levels).is_finite())
                {
                    return Err(self.err(
                        &t("scales"),
                        format!(
                            "scale {} of group {g} is out of range for {bits}-bit codes",
                            scales[g]
                        ),
                    ));
                }
                let top = (1i64 << bits) - 1;
                let bad_zero = match &zp {
                    ZeroPoints::Midpoint => None,
                    ZeroPoints::U8(v) => v.iter().position(|z| i64::from(*z) > top),
                    ZeroPoints::I32(v) => {
                        v.iter().position(|z| !(0..=top).contains(&i64::from(*z)))
                    }
                };
                if let Some(g) = bad_zero {
                    return Err(self.err(
                        &t("zero_points"),
                        format!(
                            "zero point of group {g} is outside 0..={top} for {bits}-bit codes"
                        ),
                    ));
                }
                ValueStore::Uniform {
                    bits: *bits,
                    codes,
                    scales,
                    zero_points: zp,
                    granularity: *granularity,
                }
            }
            ValuesDesc::Codebook { bits, size } => {
                if !(1..=8).contains(bits) {
                    return Err(self.err(&t("values"), format!("{bits}-bit codes")));
                }
                let codes = self
                    .raw(
                        &t("values"),
                        &[Dtype::U8],
                        super::pack::packed_len(f.entries, *bits),
                    )?
                    .1;
                ValueStore::Codebook {
                    bits: *bits,
                    codes,
                    codebook: self.f32s(&t("codebook"), *size)?,
                }
            }
        };
        let index = match f.index {
            IndexDesc::Dense => Indexing::Dense,
            IndexDesc::Csr {
                gap_bits,
                row_ptr_bits,
            } => {
                if ![4, 8, 16].contains(&gap_bits) {
                    return Err(self.err(&t("gaps"), format!("{gap_bits}-bit gaps")));
                }
                let gaps = if gap_bits == 16 {
                    self.raw(&t("gaps"), &[Dtype::U16], f.entries)?.1
                } else {
                    self.raw(
                        &t("gaps"),
                        &[Dtype::U8],
                        super::pack::packed_len(f.entries, gap_bits),
                    )?
                    .1
                };
                let row_ptr = match row_ptr_bits {
                    16 => RowPtr::U16(self.u16s(&t("row_ptr"), Dtype::U16, f.rows + 1)?),
                    32 => RowPtr::U32(
                        self.raw(&t("row_ptr"), &[Dtype::U32], f.rows + 1)?
                            .1
                            .chunks_exact(4)
                            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect(),
                    ),
                    b => return Err(self.err(&t("row_ptr"), format!("{b}-bit row pointers"))),
                };
                Indexing::Csr {
                    gap_bits,
                    gaps,
                    row_ptr,
                }
            }
            IndexDesc::Bitmask => {
                let mask = self
                    .raw(&t("mask"), &[Dtype::U8], (f.rows * f.cols).div_ceil(8))?
                    .1;
                let row_start = bitmask_row_start(&mask, f.rows, f.cols);
                Indexing::Bitmask { mask, row_start }
            }
        };
        let bias = if f.bias {
            Some(self.f32s(&t("bias"), f.rows)?)
        } else {
            None
        };
        let activation = match f.activation_bits {
            Some(bits) => {
                let scale = self.f32s(&t("act_scale"), 1)?[0];
                let zp = self.raw(&t("act_zero_point"), &[Dtype::I32], 1)?.1;
                let zero_point = i32::from_le_bytes([zp[0], zp[1], zp[2], zp[3]]);
                if !(1..=8).contains(&bits)
                    || scale <= 0.0
                    || !(scale * 256.0).is_finite()
                    || !(0..1i32 << bits).contains(&zero_point)
                {
                    return Err(self.err(
                        &t("act_scale"),
                        format!(
                            "{bits}-bit activations with scale {scale} and zero point {zero_point}"
                        ),
                    ));
                }
                Some(ActivationQuant {
                    bits,
                    scale,
                    zero_point,
                })
            }
            None => None,
        };
        let p = PackedLayer {
            rows: f.rows,
            cols: f.cols,
            entries: f.entries,
            index,
            values,
            bias,
            activation,
            entropy_bytes: f.entropy_bytes,
        };
        p.check()
            .map_err(|e| self.err(&t("values"), e.to_string()))?;
        Ok(p)
    }
}
