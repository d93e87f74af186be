//! Loading a model: find its architecture, read and check every tensor against the shapes that
//! flow through the graph, fold batchnorm into the linear/conv before it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use safetensors::{Dtype, SafeTensors};

use super::graph::{
    FoldedNorm, Layer, Model, NormParams, Op, ParamJoin, ParamValue, Params, Source,
};
use super::shape::{ShapeError, out_shape, weight_shape};
use super::spec::{ArchSpec, LayerSpec, MODEL_INPUT, OpSpec, tensor_prefix};

/// The metadata key holding the architecture as JSON inside squeeze's own files.
pub const ARCH_METADATA_KEY: &str = "squeeze.arch";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    #[error(
        "{path}: no architecture description found. Give one with --arch FILE.toml, put it beside the model as {sidecar}, or store it as JSON in the safetensors metadata key \"squeeze.arch\" ({why})"
    )]
    NoArch {
        path: PathBuf,
        sidecar: String,
        why: NotAnMlp,
    },
    #[error("{path}: invalid architecture description: {msg}")]
    Arch { path: PathBuf, msg: String },
    #[error("{path}: layer {layer} ({op}) needs tensor \"{tensor}\", which is not in the file")]
    MissingTensor {
        path: PathBuf,
        layer: String,
        op: &'static str,
        tensor: String,
    },
    #[error("{path}: tensor \"{tensor}\" (layer {layer}) has shape {found:?}, expected {expected}")]
    WrongShape {
        path: PathBuf,
        layer: String,
        tensor: String,
        found: Vec<usize>,
        expected: String,
    },
    #[error(
        "{path}: tensor \"{tensor}\" (layer {layer}) has dtype {found}, expected F32, F16 or BF16"
    )]
    WrongDtype {
        path: PathBuf,
        layer: String,
        tensor: String,
        found: String,
    },
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    /// Several layers' problems, each in its own words.
    #[error("{path}: {} problems in the architecture: {}", problems.len(), list_problems(path, problems))]
    Problems {
        path: PathBuf,
        problems: Vec<LoadError>,
    },
    #[error("{path}: layer {layer} ({op}): {msg}")]
    Graph {
        path: PathBuf,
        layer: String,
        op: &'static str,
        msg: String,
    },
}

/// The problems numbered, one after the other on one line (as every message is), without the
/// path the heading already gives.
fn list_problems(path: &Path, problems: &[LoadError]) -> String {
    let prefix = format!("{}: ", path.display());
    problems
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let text = p.to_string();
            format!(
                "({}) {}",
                i + 1,
                text.strip_prefix(&prefix).unwrap_or(&text)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Where the architecture came from, so commands can say so.
#[derive(Debug, Clone, PartialEq)]
pub enum ArchSource {
    File(PathBuf),
    Sidecar(PathBuf),
    Metadata,
    /// A chain of 2-D `weight`/`bias` tensors read as an MLP with ReLU between layers.
    InferredMlp,
}

/// A loaded model plus what the loader has to tell the user (unused tensors, inferred
/// architecture) as warnings.
#[derive(Debug)]
pub struct Loaded {
    pub model: Model,
    pub arch_source: ArchSource,
    pub warnings: Vec<String>,
    /// The safetensors metadata (`squeeze.*` keys carry squeeze's own information).
    pub metadata: BTreeMap<String, String>,
}

/// Loads `path`, finding the architecture beside it or in its metadata.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    load_with_arch(path, None)
}

/// Loads `path` with the architecture from `arch` (a TOML or JSON file) when given.
pub fn load_with_arch(path: &Path, arch: Option<&Path>) -> Result<Loaded, LoadError> {
    // Mapped, not read: a tensor's pages are read when it is converted, once.
    let bytes = crate::files::map(path)?;
    let st_err = |e: safetensors::SafeTensorError| LoadError::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    };
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(st_err)?;
    let metadata: BTreeMap<String, String> = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let tensors = SafeTensors::deserialize(&bytes).map_err(st_err)?;
    crate::files::verify_checksum(path, &tensors, &metadata)?;

    let sidecar = sidecar_path(path);
    let (spec, arch_source) = if let Some(arch) = arch {
        (read_arch_file(arch)?, ArchSource::File(arch.to_path_buf()))
    } else if sidecar.exists() {
        (
            read_arch_file(&sidecar)?,
            ArchSource::Sidecar(sidecar.clone()),
        )
    } else if let Some(json) = metadata.get(ARCH_METADATA_KEY) {
        let spec = ArchSpec::from_json(json).map_err(|e| LoadError::Arch {
            path: path.to_path_buf(),
            msg: format!("metadata key \"{ARCH_METADATA_KEY}\": {e}"),
        })?;
        (spec, ArchSource::Metadata)
    } else {
        match infer_mlp(&tensors) {
            Ok(spec) => (spec, ArchSource::InferredMlp),
            Err(why) => {
                return Err(LoadError::NoArch {
                    path: path.to_path_buf(),
                    sidecar: sidecar.display().to_string(),
                    why,
                });
            }
        }
    };

    let mut warnings: Vec<String> = crate::files::partner_warning(path, &metadata)
        .into_iter()
        .collect();
    if arch_source == ArchSource::InferredMlp {
        let dims: Vec<String> = std::iter::once(spec.input.shape[0])
            .chain(spec.layers.iter().filter_map(|l| match &l.op {
                OpSpec::Linear { weight, .. } => tensors.tensor(weight).ok().map(|t| t.shape()[0]),
                _ => None,
            }))
            .map(|d| d.to_string())
            .collect();
        warnings.push(format!(
            "{}: no architecture description; inferred an MLP {} with ReLU between layers and unscaled inputs (add {} to change this)",
            path.display(),
            dims.join("-"),
            sidecar.display()
        ));
    }
    let mut source = FileTensors::new(path, &tensors);
    let model = build(path, spec, &mut source)?;
    let used = source.used;
    // Buffers a PyTorch state_dict carries that no op reads (BatchNorm's step counter) are
    // expected there, not unused.
    let state_buffer = |n: &str| n == "num_batches_tracked" || n.ends_with(".num_batches_tracked");
    let unused: Vec<String> = tensors
        .names()
        .into_iter()
        .filter(|n| !used.contains(*n) && !state_buffer(n))
        .map(str::to_string)
        .collect();
    if !unused.is_empty() {
        let mut unused = unused;
        unused.sort();
        warnings.push(format!(
            "{}: {} tensor(s) not used by the architecture: {}",
            path.display(),
            unused.len(),
            unused.join(", ")
        ));
    }
    Ok(Loaded {
        model,
        arch_source,
        warnings,
        metadata,
    })
}

/// Builds a model from safetensors `bytes` held in memory and the architecture `spec`;
/// `path` names the model in messages.
pub fn load_bytes_with_spec(path: &Path, bytes: &[u8], spec: ArchSpec) -> Result<Model, LoadError> {
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| LoadError::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    build(path, spec, &mut FileTensors::new(path, &tensors))
}

/// `lenet.safetensors` → `lenet.arch.toml` in the same directory.
pub fn sidecar_path(model: &Path) -> PathBuf {
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    model.with_file_name(format!("{stem}.arch.toml"))
}

fn read_arch_file(path: &Path) -> Result<ArchSpec, LoadError> {
    let text = crate::files::read_text(path)?;
    let is_json = path.extension().is_some_and(|e| e == "json");
    let parsed = if is_json {
        ArchSpec::from_json(&text).map_err(|e| e.to_string())
    } else {
        ArchSpec::from_toml(&text).map_err(|e| e.to_string())
    };
    parsed.map_err(|msg| LoadError::Arch {
        path: path.to_path_buf(),
        msg: msg.trim().to_string(),
    })
}

/// Why a file without an architecture description is not read as an MLP.
#[derive(Debug, thiserror::Error)]
pub enum NotAnMlp {
    #[error(transparent)]
    Read(#[from] safetensors::SafeTensorError),
    #[error("tensor \"{name}\" is {dims}-D, not a linear weight")]
    NotMatrix { name: String, dims: usize },
    #[error("tensor \"{0}\" is not the bias of a linear layer")]
    NotBias(String),
    #[error("tensor \"{0}\" is not a linear layer's weight or bias")]
    NotLinear(String),
    #[error("the file has no tensors")]
    Empty,
    #[error("the linear layers do not form a chain")]
    NoChain,
    #[error("\"{from}.weight\" outputs {outputs} values but \"{to}.weight\" takes {takes}")]
    Sizes {
        from: String,
        outputs: usize,
        to: String,
        takes: usize,
    },
}

/// Reads a chain of 2-D linear layers (`N.weight` `[out, in]`, optional `N.bias` `[out]`) as an
/// MLP with ReLU between layers. Explains why not when the file is anything else.
fn infer_mlp(tensors: &SafeTensors) -> Result<ArchSpec, NotAnMlp> {
    let names = tensors.names();
    let mut weights: Vec<(String, Vec<usize>)> = Vec::new();
    for name in &names {
        let shape = tensors.tensor(name)?.shape().to_vec();
        if let Some(prefix) = name.strip_suffix(".weight") {
            if shape.len() != 2 {
                return Err(NotAnMlp::NotMatrix {
                    name: name.to_string(),
                    dims: shape.len(),
                });
            }
            weights.push((prefix.to_string(), shape));
        } else if let Some(prefix) = name.strip_suffix(".bias") {
            if !names.iter().any(|n| *n == format!("{prefix}.weight")) || shape.len() != 1 {
                return Err(NotAnMlp::NotBias(name.to_string()));
            }
        } else {
            return Err(NotAnMlp::NotLinear(name.to_string()));
        }
    }
    if weights.is_empty() {
        return Err(NotAnMlp::Empty);
    }
    // Order by chain: each layer's input size is the previous one's output size. Numeric
    // prefixes (nn.Sequential) give the order directly; otherwise follow the sizes.
    if weights.iter().all(|(p, _)| p.parse::<u64>().is_ok()) {
        weights.sort_by_key(|(p, _)| p.parse::<u64>().unwrap_or(0));
    } else {
        let mut ordered = Vec::new();
        let mut rest = weights.clone();
        let start = rest
            .iter()
            .position(|(_, s)| !weights.iter().any(|(_, o)| o[0] == s[1]))
            .ok_or(NotAnMlp::NoChain)?;
        ordered.push(rest.remove(start));
        while !rest.is_empty() {
            let out = ordered
                .last()
                .map_or(0, |(_, s): &(String, Vec<usize>)| s[0]);
            let next = rest
                .iter()
                .position(|(_, s)| s[1] == out)
                .ok_or(NotAnMlp::NoChain)?;
            ordered.push(rest.remove(next));
        }
        weights = ordered;
    }
    for pair in weights.windows(2) {
        if pair[1].1[1] != pair[0].1[0] {
            return Err(NotAnMlp::Sizes {
                from: pair[0].0.clone(),
                outputs: pair[0].1[0],
                to: pair[1].0.clone(),
                takes: pair[1].1[1],
            });
        }
    }
    let mut layers = Vec::new();
    for (i, (prefix, _)) in weights.iter().enumerate() {
        if i > 0 {
            layers.push(LayerSpec::unnamed(OpSpec::Relu {}));
        }
        let bias = format!("{prefix}.bias");
        layers.push(LayerSpec::unnamed(OpSpec::Linear {
            weight: format!("{prefix}.weight"),
            bias: names.iter().any(|n| *n == bias).then_some(bias),
            out_features: None,
        }));
    }
    Ok(ArchSpec {
        input: super::spec::InputSpec {
            shape: vec![weights[0].1[1]],
            scale: 1.0,
            mean: vec![0.0],
            std: vec![1.0],
        },
        layers,
    })
}

/// Converts a safetensors tensor (f32, f16 or bf16, little-endian) to f32 values.
pub fn tensor_to_f32(view: &safetensors::tensor::TensorView<'_>) -> Option<Vec<f32>> {
    let data = view.data();
    match view.dtype() {
        Dtype::F32 => Some(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        Dtype::F16 => Some(
            data.chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        Dtype::BF16 => Some(
            data.chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        _ => None,
    }
}

/// Where [`build`] takes a layer's tensors from: a file's (checked against the shapes the graph
/// expects), or new ones drawn when a model is built from scratch for training.
pub trait TensorSource {
    /// Tensor `name` of layer `layer` (op `op`), shaped as `expected` says (`None` for a
    /// dimension any size may take), with the bytes it takes as stored.
    fn tensor(
        &mut self,
        layer: &str,
        op: &'static str,
        name: &str,
        expected: &[Option<usize>],
    ) -> Result<(Tensor, usize), LoadError>;

    /// The shape of tensor `name` when the source holds it already (a file); `None` when it
    /// makes tensors in the shapes asked for.
    fn shape_of(&self, _name: &str) -> Option<Vec<usize>> {
        None
    }
}

/// A safetensors file's tensors, each checked and converted to f32 when a layer asks for it.
struct FileTensors<'a> {
    path: &'a Path,
    tensors: &'a SafeTensors<'a>,
    used: BTreeSet<String>,
    /// Bytes of parameters converted so far: each tensor is checked against the memory limit
    /// with what came before it, before it is converted (a mapped file costs nothing until
    /// then).
    converted: u128,
}

impl<'a> FileTensors<'a> {
    fn new(path: &'a Path, tensors: &'a SafeTensors<'a>) -> Self {
        FileTensors {
            path,
            tensors,
            used: BTreeSet::new(),
            converted: 0,
        }
    }
}

impl TensorSource for FileTensors<'_> {
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.tensor(name).ok().map(|v| v.shape().to_vec())
    }

    /// Reads `name` for `layer`, checking dtype and shape.
    fn tensor(
        &mut self,
        layer: &str,
        op: &'static str,
        name: &str,
        expected: &[Option<usize>],
    ) -> Result<(Tensor, usize), LoadError> {
        let view = self
            .tensors
            .tensor(name)
            .map_err(|_| LoadError::MissingTensor {
                path: self.path.to_path_buf(),
                layer: layer.to_string(),
                op,
                tensor: name.to_string(),
            })?;
        let shape = view.shape().to_vec();
        let fits = shape.len() == expected.len()
            && shape
                .iter()
                .zip(expected)
                .all(|(s, e)| e.is_none_or(|e| e == *s));
        if !fits {
            let exp: Vec<String> = expected
                .iter()
                .map(|e| e.map_or("_".to_string(), |v| v.to_string()))
                .collect();
            return Err(LoadError::WrongShape {
                path: self.path.to_path_buf(),
                layer: layer.to_string(),
                tensor: name.to_string(),
                found: shape,
                expected: format!("[{}]", exp.join(", ")),
            });
        }
        let bytes = self.converted.saturating_add(
            (view.shape().iter().map(|&d| d as u128).product::<u128>())
                .saturating_mul(std::mem::size_of::<f32>() as u128),
        );
        crate::limits::check_memory(
            &format!("tensor \"{name}\" (with the parameters before it)"),
            Some(bytes),
        )
        .map_err(|msg| LoadError::Graph {
            path: self.path.to_path_buf(),
            layer: layer.to_string(),
            op,
            msg: msg.to_string(),
        })?;
        self.converted = bytes;
        let values = tensor_to_f32(&view).ok_or_else(|| LoadError::WrongDtype {
            path: self.path.to_path_buf(),
            layer: layer.to_string(),
            tensor: name.to_string(),
            found: format!("{:?}", view.dtype()),
        })?;
        if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
            return Err(LoadError::Graph {
                path: self.path.to_path_buf(),
                layer: layer.to_string(),
                op,
                msg: format!("tensor \"{name}\" holds a non-finite value at index {bad}"),
            });
        }
        self.used.insert(name.to_string());
        let t = Tensor::from_vec(values, shape, &Device::Cpu).map_err(|e| LoadError::Graph {
            path: self.path.to_path_buf(),
            layer: layer.to_string(),
            op,
            msg: e.to_string(),
        })?;
        Ok((t, view.data().len()))
    }
}

/// An `[input]` table that no model can have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("[input] shape {0:?} must be non-empty with no zero dimension")]
    Shape(Vec<usize>),
    #[error("[input] {field} has {given} values; expected 1 or one per channel ({channels})")]
    Channels {
        field: &'static str,
        given: usize,
        channels: usize,
    },
    #[error("[input] scale, mean and std must be finite and std non-zero")]
    NotFinite,
}

/// What every model's `[input]` must satisfy: a non-empty shape without zero dimensions, one
/// mean and std (or one per channel), finite values and a non-zero std.
pub fn check_input(input: &super::spec::InputSpec) -> Result<(), InputError> {
    if input.shape.is_empty() || input.shape.contains(&0) {
        return Err(InputError::Shape(input.shape.clone()));
    }
    let channels = input.shape[0];
    for (field, v) in [("mean", &input.mean), ("std", &input.std)] {
        if v.len() != 1 && v.len() != channels {
            return Err(InputError::Channels {
                field,
                given: v.len(),
                channels,
            });
        }
    }
    if input.std.iter().any(|s| *s == 0.0 || !s.is_finite())
        || !input.scale.is_finite()
        || input.mean.iter().any(|m| !m.is_finite())
    {
        return Err(InputError::NotFinite);
    }
    Ok(())
}

/// Builds the layer graph from the description, taking each layer's tensors from `source`:
/// every op is resolved from its [`OpSpec`] with the values it reads, and its output shape is
/// [`out_shape`]'s. Every layer's problem is reported in one error (a layer that reads a
/// failed one is not judged). `path` names the model in messages.
pub fn build(
    path: &Path,
    spec: ArchSpec,
    source: &mut dyn TensorSource,
) -> Result<Model, LoadError> {
    let arch_err = |msg: String| LoadError::Arch {
        path: path.to_path_buf(),
        msg,
    };
    check_input(&spec.input).map_err(|e| arch_err(e.to_string()))?;
    if spec.layers.is_empty() {
        return Err(arch_err("no [[layer]] entries".into()));
    }
    let names = display_names(&spec);
    let layers = resolve_all(path, &spec, &names, source)?.layers;
    let out = layers.last().map_or(&spec.input.shape, |l| &l.out_shape);
    if out.len() != 1 {
        return Err(arch_err(format!(
            "the last layer outputs shape {out:?}; a classifier must end in a flat vector of class scores"
        )));
    }
    let need = super::shape::run_bytes(&layers);
    crate::limits::check_memory("running one sample of this model", Some(need))
        .map_err(|e| arch_err(e.to_string()))?;
    Ok(Model {
        input: spec.input.clone(),
        spec,
        layers,
        source: path.to_path_buf(),
    })
}

fn display_names(spec: &ArchSpec) -> Vec<String> {
    spec.layers
        .iter()
        .enumerate()
        .map(|(i, l)| l.display_name(i))
        .collect()
}

/// One sample's output shape of every layer of `spec` by its display name (a folded
/// batchnorm's is its conv's), for a description that may still be incomplete (the importer
/// asks while converting).
pub(crate) fn layer_shapes(
    path: &Path,
    spec: &ArchSpec,
    tensors: &[NamedTensor],
) -> Result<HashMap<String, Vec<usize>>, LoadError> {
    let bytes = to_safetensors_bytes(tensors, &HashMap::new()).map_err(|e| LoadError::Arch {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| LoadError::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let names = display_names(spec);
    let g = resolve_all(path, spec, &names, &mut FileTensors::new(path, &file))?;
    Ok(g.index_of
        .iter()
        .map(|(name, s)| (name.clone(), g.shape_of(*s).to_vec()))
        .collect())
}

/// Resolves every layer of `spec` in order; every layer's problem in one error.
fn resolve_all<'a>(
    path: &'a Path,
    spec: &'a ArchSpec,
    names: &'a [String],
    source: &mut dyn TensorSource,
) -> Result<Graph<'a>, LoadError> {
    let arch_err = |msg: String| LoadError::Arch {
        path: path.to_path_buf(),
        msg,
    };
    let mut g = Graph {
        path,
        spec,
        names,
        // Layers whose raw output another layer names: batchnorm is not folded into those.
        named: spec.layers.iter().flat_map(|l| l.named_inputs()).collect(),
        layers: Vec::new(),
        index_of: HashMap::from([(MODEL_INPUT.to_string(), Source::Input)]),
        failed: BTreeSet::new(),
        built: Vec::with_capacity(names.len()),
    };
    let mut problems: Vec<LoadError> = Vec::new();
    for (i, ls) in spec.layers.iter().enumerate() {
        let name = &names[i];
        let taken = name == MODEL_INPUT || g.index_of.contains_key(name) || g.failed.contains(name);
        let resolved = if taken {
            Err(Some(arch_err(if name == MODEL_INPUT {
                format!(
                    "layer {i} is named \"{MODEL_INPUT}\", the name of the model input; give it another `name`"
                )
            } else {
                format!("two layers are named \"{name}\"; give one a distinct `name`")
            })))
        } else {
            g.resolve(i, ls, source)
        };
        g.built.push(resolved.is_ok());
        match resolved {
            Ok(Built::Layer(layer)) => {
                g.index_of
                    .insert(name.clone(), Source::Layer(g.layers.len()));
                g.layers.push(layer);
            }
            // A batchnorm folded into the layer before it: its name reads that layer.
            Ok(Built::Folded {
                norm,
                shift,
                stored,
            }) => {
                let Some(prev) = g.layers.last_mut() else {
                    continue;
                };
                match fold_batchnorm(prev, norm, &shift) {
                    Ok(()) => {
                        prev.stored_bytes += stored;
                        g.index_of
                            .insert(name.clone(), Source::Layer(g.layers.len() - 1));
                    }
                    Err(e) => {
                        g.built[i] = false;
                        problems.push(LoadError::Graph {
                            path: path.to_path_buf(),
                            layer: name.clone(),
                            op: ls.op_name(),
                            msg: e.to_string(),
                        });
                        g.failed.insert(name.clone());
                    }
                }
            }
            Err(problem) => {
                problems.extend(problem);
                if !taken {
                    g.failed.insert(name.clone());
                }
            }
        }
    }
    match problems.len() {
        0 => {}
        1 => return Err(problems.remove(0)),
        _ => {
            return Err(LoadError::Problems {
                path: path.to_path_buf(),
                problems,
            });
        }
    }
    Ok(g)
}

/// One layer of the description as [`build`] resolves it.
enum Built {
    Layer(Layer),
    /// A batchnorm to fold into the linear/conv layer right before it.
    Folded {
        norm: FoldedNorm,
        shift: Vec<f32>,
        stored: usize,
    },
}

/// The graph as [`build`] resolves it, layer by layer.
struct Graph<'a> {
    path: &'a Path,
    spec: &'a ArchSpec,
    /// Every layer's display name, in order.
    names: &'a [String],
    /// The names later layers read in `input`, `inputs` or `from`.
    named: BTreeSet<&'a str>,
    layers: Vec<Layer>,
    /// Name → the value it reads ([`MODEL_INPUT`]; a folded batchnorm reads its linear/conv).
    index_of: HashMap<String, Source>,
    /// Layers that could not be built.
    failed: BTreeSet<String>,
    /// Whether each layer of the description was built (or folded), by position.
    built: Vec<bool>,
}

impl Graph<'_> {
    /// One sample's shape of a value built so far.
    fn shape_of(&self, s: Source) -> &[usize] {
        match s {
            Source::Input => &self.spec.input.shape,
            Source::Layer(j) => &self.layers[j].out_shape,
        }
    }

    /// Layer `i` built (or a batchnorm to fold into the layer before it), or its problem
    /// (`None`: it reads a layer that failed, so it cannot be judged).
    fn resolve(
        &self,
        i: usize,
        ls: &LayerSpec,
        source: &mut dyn TensorSource,
    ) -> Result<Built, Option<LoadError>> {
        let name = &self.names[i];
        let op_name = ls.op_name();
        let graph_err = |msg: String| {
            Some(LoadError::Graph {
                path: self.path.to_path_buf(),
                layer: name.clone(),
                op: op_name,
                msg,
            })
        };
        let shape_err = |e: ShapeError| graph_err(e.to_string());
        // The values it reads: those it names, else the previous layer's output, then `from`.
        let previous = i.checked_sub(1).map(|p| self.names[p].as_str());
        let mut operands: Vec<Source> = Vec::new();
        let implicit = ls
            .inputs
            .is_empty()
            .then_some(previous.unwrap_or(MODEL_INPUT));
        if implicit.is_some() && i > 0 && !self.built[i - 1] {
            return Err(None);
        }
        for n in implicit.into_iter().chain(ls.named_inputs()) {
            if self.failed.contains(n) {
                return Err(None);
            }
            match self.index_of.get(n) {
                Some(s) => operands.push(*s),
                None => {
                    let later = self.names[i..].iter().position(|x| x == n);
                    return Err(graph_err(match later {
                        Some(0) => format!("reads \"{n}\", its own output"),
                        Some(_) => format!(
                            "reads \"{n}\", a layer after it: layers run in the order written, so a layer reads only earlier ones (and the graph has no cycle)"
                        ),
                        None => format!(
                            "reads \"{n}\", which names no layer (earlier layers: {}; the model input is \"{MODEL_INPUT}\")",
                            self.names[..i].join(", ")
                        ),
                    }));
                }
            }
        }
        let with_param = ls.op.param().is_some();
        if with_param && ls.op.from_name().is_some() {
            return Err(graph_err(
                "give `from` (a layer) or `param` (a tensor) as the second operand, not both"
                    .into(),
            ));
        }
        let (given, wanted) = match &ls.op {
            _ if with_param => (operands.len(), "1"),
            OpSpec::Add { .. } | OpSpec::Mul { .. } => (operands.len(), "2"),
            OpSpec::Concat { .. } if ls.inputs.len() >= 2 => (operands.len(), ""),
            OpSpec::Concat { .. } => (ls.inputs.len(), "at least 2 in `inputs`"),
            _ => (operands.len(), "1"),
        };
        if !wanted.is_empty() && wanted.parse::<usize>() != Ok(given) {
            return Err(graph_err(format!(
                "{op_name} reads {wanted} value(s), given {given} ({})",
                if ls.op.from_name().is_some() {
                    "its input and `from`"
                } else {
                    "`inputs`, or the previous layer when none are named"
                }
            )));
        }
        let main = operands[0];
        let built = self.layers.len();
        let default = built.checked_sub(1).map_or(Source::Input, Source::Layer);
        let input = (main != default).then_some(main);
        let shape = self.shape_of(main).to_vec();
        let mut stored = 0usize;
        let op = match &ls.op {
            OpSpec::Linear { weight, .. }
            | OpSpec::Conv2d { weight, .. }
            | OpSpec::Conv1d { weight, .. }
            | OpSpec::Embedding { weight, .. } => {
                let expected = weight_shape(&ls.op, &shape)
                    .map_err(shape_err)?
                    .unwrap_or_default();
                let (w, bytes) = source.tensor(name, op_name, weight, &expected)?;
                stored += bytes;
                let out = w.dims()[0];
                let bias = ls.op.bias();
                let bias_t = match bias {
                    Some(bn) => {
                        let (t, bytes) = source.tensor(name, op_name, bn, &[Some(out)])?;
                        stored += bytes;
                        Some(t)
                    }
                    None => None,
                };
                let params = Params {
                    weight: w,
                    bias: bias_t,
                    weight_name: weight.clone(),
                    bias_name: bias
                        .map_or_else(|| format!("{}.bias", tensor_prefix(weight)), str::to_string),
                    folded: None,
                };
                Op::with_params(&ls.op, params)
            }
            OpSpec::Batchnorm {
                weight,
                bias,
                running_mean: running_mean_name,
                running_var: running_var_name,
                eps,
            } => {
                let Some(&c) = shape.first() else {
                    return Err(graph_err("batchnorm needs an input with channels".into()));
                };
                let mut bn = Vec::new();
                for t in [weight, bias, running_mean_name, running_var_name] {
                    let (v, bytes) = source.tensor(name, op_name, t, &[Some(c)])?;
                    stored += bytes;
                    bn.push(v.to_vec1::<f32>().map_err(|e| graph_err(e.to_string()))?);
                }
                // y = (x − mean) / sqrt(var + eps) × gamma + beta = x × s + (beta − mean × s)
                let scale: Vec<f32> = (0..c)
                    .map(|j| bn[0][j] / ((bn[3][j] as f64 + eps).sqrt() as f32))
                    .collect();
                let shift: Vec<f32> = (0..c).map(|j| bn[1][j] - bn[2][j] * scale[j]).collect();
                // A negative running variance or eps, or an overflow, folds to a non-finite
                // scale: refuse it here, once, rather than write a model that cannot reload.
                if let Some(j) = (0..c).find(|&j| !(scale[j].is_finite() && shift[j].is_finite())) {
                    return Err(graph_err(format!(
                        "channel {j} folds to scale {} and shift {} (running_var {} + eps {eps}); expected finite values",
                        scale[j], shift[j], bn[3][j]
                    )));
                }
                // Folded into the linear/conv right before it when that layer's raw output is
                // read by nothing else.
                let foldable = input.is_none()
                    && self.layers.last().is_some_and(|l| {
                        // A linear layer over tokens has its outputs along dimension 1.
                        (matches!(l.op, Op::Conv2d(..))
                            || matches!(l.op, Op::Linear(_)) && l.out_shape.len() == 1)
                            && previous == Some(l.name.as_str())
                            && !self.named.contains(l.name.as_str())
                    });
                if foldable {
                    let [gamma, beta, running_mean, running_var] =
                        <[Vec<f32>; 4]>::try_from(bn).unwrap_or_default();
                    let norm = FoldedNorm {
                        scale,
                        gamma,
                        beta,
                        running_mean,
                        running_var,
                        names: [weight, bias, running_mean_name, running_var_name]
                            .map(|n| n.clone()),
                        own_bias: false,
                    };
                    return Ok(Built::Folded {
                        norm,
                        shift,
                        stored,
                    });
                }
                let dev = Device::Cpu;
                let mk = |v: Vec<f32>| Tensor::from_vec(v, c, &dev);
                Op::ChannelAffine {
                    scale: mk(scale).map_err(|e| graph_err(e.to_string()))?,
                    shift: mk(shift).map_err(|e| graph_err(e.to_string()))?,
                }
            }
            OpSpec::LayerNorm { weight, bias, eps } => {
                let Some(&d) = shape.last() else {
                    return Err(graph_err("layer_norm needs a non-empty input".into()));
                };
                if !(eps.is_finite() && *eps > 0.0) {
                    return Err(graph_err(format!(
                        "eps = {eps} must be positive and finite"
                    )));
                }
                let mut read = |t: &Option<String>, fill: f32| match t {
                    Some(t) => {
                        let (v, bytes) = source.tensor(name, op_name, t, &[Some(d)])?;
                        stored += bytes;
                        Ok(v)
                    }
                    None => {
                        Tensor::full(fill, d, &Device::Cpu).map_err(|e| graph_err(e.to_string()))
                    }
                };
                let (w, b) = (read(weight, 1.0)?, read(bias, 0.0)?);
                Op::LayerNorm(NormParams {
                    weight: w,
                    bias: b,
                    eps: *eps,
                    weight_name: weight.clone(),
                    bias_name: bias.clone(),
                })
            }
            OpSpec::Add { param: Some(t), .. }
            | OpSpec::Mul { param: Some(t), .. }
            | OpSpec::Concat { param: Some(t) } => {
                let join = match &ls.op {
                    OpSpec::Add { .. } => ParamJoin::Add,
                    OpSpec::Mul { .. } => ParamJoin::Mul,
                    _ => ParamJoin::Concat,
                };
                // A tensor of any rank: as the file holds it, or, built from scratch, one
                // sample's shape with a batch dimension of 1 (one token for concat).
                let expected: Vec<Option<usize>> = match source.shape_of(t) {
                    Some(s) => s.into_iter().map(Some).collect(),
                    None => std::iter::once(1)
                        .chain(shape.iter().enumerate().map(|(k, d)| {
                            if k == 0 && join == ParamJoin::Concat {
                                1
                            } else {
                                *d
                            }
                        }))
                        .map(Some)
                        .collect(),
                };
                let (v, bytes) = source.tensor(name, op_name, t, &expected)?;
                stored += bytes;
                Op::Param {
                    join,
                    param: ParamValue::new(join, v, t, &shape).map_err(graph_err)?,
                }
            }
            OpSpec::Add { .. } => Op::Add { from: operands[1] },
            OpSpec::Mul { .. } => Op::Mul { from: operands[1] },
            OpSpec::Concat { .. } => Op::Concat {
                from: operands[1..].to_vec(),
            },
            other => Op::for_input(other, &shape).map_err(|e| graph_err(e.to_string()))?,
        };
        let shapes: Vec<&[usize]> = operands.iter().map(|s| self.shape_of(*s)).collect();
        let out = out_shape(&op, &shapes).map_err(|e| match e {
            e @ ShapeError::Join { .. } => {
                let read: Vec<&str> = operands
                    .iter()
                    .map(|s| match s {
                        Source::Input => MODEL_INPUT,
                        Source::Layer(j) => self.layers[*j].name.as_str(),
                    })
                    .collect();
                graph_err(format!("reading {}: {e}", read.join(" and ")))
            }
            e => shape_err(e),
        })?;
        Ok(Built::Layer(Layer {
            name: name.clone(),
            op,
            input,
            in_shape: shape,
            out_shape: out,
            stored_bytes: stored,
        }))
    }
}

/// Folds the batchnorm `norm` (per-channel `norm.scale` and `shift`) into the weights and bias
/// of `layer` (linear or conv), which keeps `norm` to unfold it again.
fn fold_batchnorm(
    layer: &mut Layer,
    mut norm: FoldedNorm,
    shift: &[f32],
) -> candle_core::Result<()> {
    let (Op::Linear(p) | Op::Conv2d(p, _)) = &mut layer.op else {
        return Ok(());
    };
    let scale = norm.scale.as_slice();
    let out = p.weight.dims()[0];
    let s = Tensor::from_slice(scale, out, &Device::Cpu)?;
    let mut bshape = vec![out];
    bshape.extend(std::iter::repeat_n(1, p.weight.rank() - 1));
    p.weight = p.weight.broadcast_mul(&s.reshape(bshape)?)?;
    let had_bias = p.bias.is_some();
    let bias = match &p.bias {
        Some(b) => b.to_vec1::<f32>()?,
        None => vec![0.0; out],
    };
    let folded: Vec<f32> = (0..out).map(|j| bias[j] * scale[j] + shift[j]).collect();
    let weights_finite = p
        .weight
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .all(|w| w.is_finite());
    if !weights_finite || folded.iter().any(|b| !b.is_finite()) {
        return Err(candle_core::Error::Msg(
            "folding the batchnorm into the layer before it overflows to a non-finite weight or bias"
                .into(),
        ));
    }
    p.bias = Some(Tensor::from_vec(folded, out, &Device::Cpu)?);
    norm.own_bias = had_bias;
    p.folded = Some(norm);
    Ok(())
}

/// A tensor by name: its state_dict name, shape and f32 values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// f32 tensors as safetensors tensor bytes (little-endian).
pub fn f32_tensor_bytes(tensors: &[NamedTensor]) -> Vec<crate::files::TensorBytes> {
    tensors
        .iter()
        .map(|(name, shape, v)| {
            (
                name.clone(),
                Dtype::F32,
                shape.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect()
}

/// Serializes f32 tensors and metadata to safetensors bytes, keys sorted so the same tensors
/// and metadata always give the same bytes. No checksum: files squeeze writes as its own go
/// through [`crate::files::Sealed`].
pub fn to_safetensors_bytes(
    tensors: &[NamedTensor],
    metadata: &HashMap<String, String>,
) -> Result<Vec<u8>, crate::files::SerializeError> {
    let metadata: BTreeMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    crate::files::serialize(&f32_tensor_bytes(tensors), &metadata)
}
