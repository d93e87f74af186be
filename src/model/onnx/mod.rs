//! Importing ONNX graphs (what `torch.onnx.export`, `tf2onnx` and most frameworks write) as
//! squeeze models: the weights as f32 tensors under their initializer names and the graph as an
//! architecture description, which loading then checks and folds (batchnorm into the conv
//! before it) as for any model.
//!
//! Each ONNX node becomes one layer, or is absorbed: `Identity` and `Dropout` pass their input
//! on, `Constant` feeds the attributes of the nodes that read it, and a `MatMul` by a constant
//! matrix followed by the `Add` of a constant vector becomes one linear layer with a bias.
//! Nodes whose inputs are all constants (the shape arithmetic of `Shape`, `Gather`, `Concat`
//! ... that exporters write) are evaluated. Data movement that squeeze cannot express as a
//! layer (a transpose of the batch axis, attention's head split) is followed element by element
//! ([`view`]) until it ends in a layer squeeze has: `nn.MultiheadAttention`'s products and
//! softmax become one `attention` layer, the projections around it token-wise linear layers. A
//! node squeeze cannot express is a problem; every problem in the graph is reported in one run,
//! each with its node's name and operator.

mod array;
mod proto;
mod view;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use prost::Message;

use self::array::Arr;
use self::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, data_type};
use self::view::{Kind, View};
use super::load::NamedTensor;
use super::spec::{ArchSpec, InputSpec, LayerSpec, MODEL_INPUT, OpSpec, Pair, UpsampleMode};

pub use self::proto::ModelProto as OnnxModel;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: not an ONNX model (protobuf decoding failed: {msg})")]
    Decode { path: PathBuf, msg: String },
    #[error("{path}: the ONNX model has no graph")]
    NoGraph { path: PathBuf },
    #[error("{path}: the imported input: {source}")]
    Input {
        path: PathBuf,
        source: super::load::InputError,
    },
    #[error("{path}: cannot serialize the imported model: {msg}")]
    Serialize { path: PathBuf, msg: String },
    /// The imported architecture does not load (a shape the graph's nodes disagree on).
    #[error(transparent)]
    Load(#[from] super::load::LoadError),
    /// Everything in the graph that cannot be imported, in graph order.
    #[error("{path}: {} problem(s) importing the graph: {}", problems.len(), numbered(problems))]
    Problems {
        path: PathBuf,
        problems: Vec<String>,
    },
}

fn numbered(problems: &[String]) -> String {
    problems
        .iter()
        .enumerate()
        .map(|(i, p)| format!("({}) {p}", i + 1))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What an import produced: the architecture and the tensors it names.
#[derive(Debug, Clone)]
pub struct Imported {
    pub spec: ArchSpec,
    pub tensors: Vec<NamedTensor>,
    /// Shape facts the graph relied on that only the loaded model can confirm (a reshape's
    /// feature count, a concat's axis): checked by [`Imported::check`].
    pub checks: Vec<Check>,
    /// ONNX nodes that needed no layer (identities, dropouts, constants, fused bias adds).
    pub absorbed: usize,
    /// The graph's producer as the file names it (`pytorch 2.15.0`).
    pub producer: String,
}

/// A condition on the loaded model's shapes (see [`Imported::checks`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// The layer (a flatten) must give `features` values per sample: ONNX's `Reshape` to
    /// `[batch, features]`.
    Features {
        layer: String,
        node: String,
        features: usize,
    },
    /// The layer (a flatten) must read a value whose dimensions after the first are all 1:
    /// ONNX's `Squeeze` of the spatial axes after global pooling.
    Squeezed { layer: String, node: String },
    /// The layer (a concat) joins along ONNX axis `axis` (negative: from the end) of
    /// batch-first values; squeeze joins along a sample's first dimension.
    ConcatAxis {
        layer: String,
        node: String,
        axis: i64,
    },
}

/// Decodes an ONNX file's bytes and converts its graph.
pub fn import(path: &Path, bytes: &[u8]) -> Result<Imported, ImportError> {
    let model = ModelProto::decode(bytes).map_err(|e| ImportError::Decode {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    convert(path, &model)
}

/// Converts a decoded ONNX model.
pub fn convert(path: &Path, model: &ModelProto) -> Result<Imported, ImportError> {
    let graph = model.graph.as_ref().ok_or_else(|| ImportError::NoGraph {
        path: path.to_path_buf(),
    })?;
    let (loaded, mut problems) = external_data(path, graph);
    let mut g = Graph::new(path, graph, loaded);
    g.problems.append(&mut problems);
    let input = g.model_input();
    for (i, node) in graph.node.iter().enumerate() {
        if !g.fused.contains(&i) {
            g.node(i, node);
        }
    }
    g.output();
    if !g.problems.is_empty() {
        return Err(ImportError::Problems {
            path: path.to_path_buf(),
            problems: g.problems,
        });
    }
    let producer = [
        model.producer_name.as_str(),
        model.producer_version.as_str(),
    ]
    .join(" ")
    .trim()
    .to_string();
    Ok(Imported {
        spec: ArchSpec {
            input: input.unwrap_or_else(|| InputSpec {
                shape: Vec::new(),
                scale: 1.0,
                mean: vec![0.0],
                std: vec![1.0],
            }),
            layers: g.layers,
        },
        tensors: g.tensors,
        checks: g.checks,
        absorbed: g.absorbed,
        producer,
    })
}

impl Imported {
    /// The model as a sealed safetensors file (the architecture in the metadata, `source`
    /// named as where it came from), loaded back — which checks every shape and folds
    /// batchnorm — and checked against [`Imported::checks`]. `path` names the ONNX file in
    /// messages.
    pub fn build(&self, path: &Path) -> Result<(super::Model, Vec<u8>), ImportError> {
        super::load::check_input(&self.spec.input).map_err(|source| ImportError::Input {
            path: path.to_path_buf(),
            source,
        })?;
        let mut meta = std::collections::BTreeMap::new();
        meta.insert(
            super::load::ARCH_METADATA_KEY.to_string(),
            self.spec.to_json(),
        );
        if let Some(name) = path.file_name() {
            meta.insert(
                "squeeze.imported_from".to_string(),
                name.to_string_lossy().into_owned(),
            );
        }
        let bytes = crate::files::Sealed::new(super::load::f32_tensor_bytes(&self.tensors), meta)
            .to_bytes()
            .map_err(|e| ImportError::Serialize {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        let model = super::load::load_bytes_with_spec(path, &bytes, self.spec.clone())?;
        let problems = self.check(&model);
        if !problems.is_empty() {
            return Err(ImportError::Problems {
                path: path.to_path_buf(),
                problems,
            });
        }
        Ok((model, bytes))
    }

    /// The parameters as PyTorch counts them: every tensor but batchnorm's running statistics.
    pub fn parameters(&self) -> usize {
        let stats: HashSet<&str> = self
            .spec
            .layers
            .iter()
            .filter_map(|l| match &l.op {
                OpSpec::Batchnorm {
                    running_mean,
                    running_var,
                    ..
                } => Some([running_mean.as_str(), running_var.as_str()]),
                _ => None,
            })
            .flatten()
            .collect();
        self.tensors
            .iter()
            .filter(|(name, _, _)| !stats.contains(name.as_str()))
            .map(|(_, _, v)| v.len())
            .sum()
    }

    /// The problems [`Imported::checks`] finds in the loaded `model`, one line each.
    pub fn check(&self, model: &super::Model) -> Vec<String> {
        let find = |name: &str| model.layers.iter().position(|l| l.name == name);
        let mut problems = Vec::new();
        for c in &self.checks {
            let (layer, node) = match c {
                Check::Features { layer, node, .. }
                | Check::Squeezed { layer, node }
                | Check::ConcatAxis { layer, node, .. } => (layer, node),
            };
            let Some(i) = find(layer) else { continue };
            let input = model.shape_of(model.input_of(i));
            let out = &model.layers[i].out_shape;
            let problem = match c {
                Check::Features { features, .. } => (out.iter().product::<usize>() != *features)
                    .then(|| {
                        format!(
                            "reshapes {input:?} to {features} features per sample; only flattening is supported"
                        )
                    }),
                Check::Squeezed { .. } => input.iter().skip(1).any(|&d| d != 1).then(|| {
                    format!("squeezes {input:?}; only the unit axes after global pooling can be removed")
                }),
                Check::ConcatAxis { axis, .. } => {
                    let rank = input.len() as i64 + 1;
                    let at = if *axis < 0 { axis + rank } else { *axis };
                    (at != 1).then(|| {
                        format!(
                            "joins along axis {axis} of rank-{rank} values; only the channel axis (1) is supported"
                        )
                    })
                }
            };
            if let Some(p) = problem {
                problems.push(format!("node \"{node}\": {p}"));
            }
        }
        problems
    }
}

/// The conversion's state while walking the nodes in order.
struct Graph<'g> {
    path: &'g Path,
    graph: &'g GraphProto,
    /// Initializers and `Constant` nodes' values by name.
    consts: HashMap<&'g str, Cow<'g, TensorProto>>,
    /// Values passed through unchanged (Identity, Dropout, a fused node's output) → the value
    /// they stand for.
    alias: HashMap<&'g str, &'g str>,
    /// Value name → the layer (or [`MODEL_INPUT`]) that computes it.
    producer: HashMap<&'g str, String>,
    /// Value name → the nodes reading it.
    readers: HashMap<&'g str, Vec<usize>>,
    /// Nodes already converted with an earlier one.
    fused: HashSet<usize>,
    /// Values of nodes that could not be converted: their readers are not judged again.
    failed: HashSet<&'g str>,
    /// Values that are a layer's output rearranged (attention's heads), by name.
    views: HashMap<&'g str, View>,
    /// The batch size shapes are worked out for: the graph's, 2 when it is symbolic (so a
    /// rearrangement mixing samples shows).
    batch: usize,
    /// The model input's sample shape.
    input_shape: Vec<usize>,
    /// Every layer's sample shape, for the first `.0` layers (worked out when a node asks).
    shapes: Option<(usize, HashMap<String, Vec<usize>>)>,
    layers: Vec<LayerSpec>,
    names: HashSet<String>,
    tensors: Vec<NamedTensor>,
    written: HashMap<String, Vec<usize>>,
    checks: Vec<Check>,
    problems: Vec<String>,
    absorbed: usize,
}

/// A node's problem, in its own words; the node is named by the caller.
type NodeResult<T> = Result<T, String>;

/// A reshape to `[N, C, 1, 1]`: passed through as the `[C]` vector add and mul broadcast.
const UNIT_AXES: &str = "unit axes";

/// A reshape that is not a flatten to `[batch, features]`: judged with the input's shape.
const OTHER_SHAPE: &str = "another shape";

/// The problem of a node reading a value whose node failed: already reported.
const FAILED_INPUT: &str = "reads a node that failed";

impl<'g> Graph<'g> {
    /// `loaded`: the initializers whose values were read from external data files.
    fn new(
        path: &'g Path,
        graph: &'g GraphProto,
        mut loaded: HashMap<&'g str, TensorProto>,
    ) -> Graph<'g> {
        let consts = graph
            .initializer
            .iter()
            .map(|t| {
                let name = t.name.as_str();
                match loaded.remove(name) {
                    Some(l) => (name, Cow::Owned(l)),
                    None => (name, Cow::Borrowed(t)),
                }
            })
            .collect();
        let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in graph.node.iter().enumerate() {
            for v in n.input.iter().filter(|v| !v.is_empty()) {
                readers.entry(v.as_str()).or_default().push(i);
            }
        }
        Graph {
            path,
            graph,
            consts,
            alias: HashMap::new(),
            producer: HashMap::new(),
            readers,
            fused: HashSet::new(),
            failed: HashSet::new(),
            views: HashMap::new(),
            batch: 1,
            input_shape: Vec::new(),
            shapes: None,
            layers: Vec::new(),
            names: HashSet::from([MODEL_INPUT.to_string()]),
            tensors: Vec::new(),
            written: HashMap::new(),
            checks: Vec::new(),
            problems: Vec::new(),
            absorbed: 0,
        }
    }

    /// The one graph input that is not an initializer, as the input spec (no scaling).
    fn model_input(&mut self) -> Option<InputSpec> {
        let inputs: Vec<_> = self
            .graph
            .input
            .iter()
            .filter(|v| !self.consts.contains_key(v.name.as_str()))
            .collect();
        let [input] = inputs[..] else {
            let names: Vec<_> = inputs.iter().map(|v| format!("\"{}\"", v.name)).collect();
            self.problems.push(format!(
                "the graph has {} inputs ({}); squeeze models read exactly one",
                inputs.len(),
                names.join(", ")
            ));
            return None;
        };
        let name = &input.name;
        self.producer
            .insert(input.name.as_str(), MODEL_INPUT.to_string());
        let Some(tensor) = input.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()) else {
            self.problems
                .push(format!("input \"{name}\": not a tensor"));
            return None;
        };
        // Integer inputs are token ids, which squeeze's data sets hold as values.
        let types = [data_type::FLOAT, data_type::INT64, data_type::INT32];
        if !types.contains(&tensor.elem_type) {
            self.problems.push(format!(
                "input \"{name}\": element type {}, expected FLOAT (or INT64, INT32 token ids)",
                data_type::name(tensor.elem_type)
            ));
        }
        let dims = tensor.shape.as_ref().map(|s| &s.dim[..]).unwrap_or(&[]);
        if dims.len() < 2 {
            self.problems.push(format!(
                "input \"{name}\": rank {}, expected a batch dimension then a sample's (e.g. [N, C, H, W])",
                dims.len()
            ));
            return None;
        }
        self.batch = match dims[0].dim_value {
            Some(v) if v > 0 => v as usize,
            _ => 2,
        };
        let mut shape = Vec::new();
        for (axis, d) in dims.iter().enumerate().skip(1) {
            match (d.dim_value, &d.dim_param) {
                (Some(v), _) if v > 0 => shape.push(v as usize),
                (_, Some(p)) if !p.is_empty() => {
                    self.problems.push(format!(
                        "input \"{name}\": dimension {axis} is symbolic (\"{p}\"); export with a fixed sample shape (only the batch dimension may vary)"
                    ));
                    return None;
                }
                (v, _) => {
                    self.problems.push(format!(
                        "input \"{name}\": dimension {axis} is {}, expected a positive size",
                        v.map_or("missing".to_string(), |v| v.to_string())
                    ));
                    return None;
                }
            }
        }
        self.input_shape = shape.clone();
        Some(InputSpec {
            shape,
            scale: 1.0,
            mean: vec![0.0],
            std: vec![1.0],
        })
    }

    /// The graph must have one output, computed by the last layer.
    fn output(&mut self) {
        let outputs = &self.graph.output;
        let [out] = &outputs[..] else {
            self.problems.push(format!(
                "the graph has {} outputs; squeeze models give exactly one",
                outputs.len()
            ));
            return;
        };
        let value = self.resolve(&out.name);
        if let Some(v) = self.views.get(value) {
            self.problems.push(format!(
                "output \"{}\" is {}; squeeze cannot express it as a layer",
                out.name,
                v.describe()
            ));
            return;
        }
        let last = self.layers.len().checked_sub(1).map(|i| self.layer_name(i));
        match (self.producer.get(value), last) {
            (Some(p), Some(last)) if *p == last => {}
            (Some(p), _) if self.problems.is_empty() => self.problems.push(format!(
                "output \"{}\" is computed by layer {p}, not by the last node; squeeze runs the graph's nodes in order and gives the last one's value",
                out.name
            )),
            (None, _) if self.problems.is_empty() => self.problems.push(format!(
                "output \"{}\" is not computed by any node",
                out.name
            )),
            _ => {}
        }
    }

    fn layer_name(&self, i: usize) -> String {
        self.layers[i].display_name(i)
    }

    fn resolve<'a>(&'a self, mut value: &'a str) -> &'a str {
        while let Some(v) = self.alias.get(value) {
            value = v;
        }
        value
    }

    fn node(&mut self, index: usize, node: &'g NodeProto) {
        if let Err(problem) = self.convert(index, node) {
            self.failed.extend(node.output.iter().map(String::as_str));
            if problem == FAILED_INPUT {
                return;
            }
            let name = if node.name.is_empty() {
                node.output.first().map_or("", String::as_str)
            } else {
                &node.name
            };
            self.problems
                .push(format!("node \"{name}\" ({}): {problem}", node.op_type));
        }
    }

    /// The value `name` names when it is computed (by a layer or the model input).
    fn computed(&self, name: &str) -> NodeResult<String> {
        let v = self.resolve(name);
        if let Some(p) = self.producer.get(v) {
            return Ok(p.clone());
        }
        if self.failed.contains(v) {
            return Err(FAILED_INPUT.into());
        }
        if self.consts.contains_key(v) {
            return Err(format!(
                "input \"{name}\" is a constant where squeeze needs a computed value"
            ));
        }
        Err(format!(
            "input \"{name}\" is not computed by an earlier node it could import"
        ))
    }

    fn constant(&self, name: &str) -> Option<&TensorProto> {
        self.consts.get(self.resolve(name)).map(|c| c.as_ref())
    }

    fn arg(node: &NodeProto, i: usize) -> Option<&str> {
        node.input
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    fn convert(&mut self, index: usize, node: &'g NodeProto) -> NodeResult<()> {
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            return Err(format!("operator from domain \"{}\"", node.domain));
        }
        if let Some(folded) = self.fold(node) {
            return folded;
        }
        let reads_view = node
            .input
            .iter()
            .any(|v| self.views.contains_key(self.resolve(v)));
        if reads_view || node.op_type == "Split" || node.op_type == "Slice" {
            return self.view_node(index, node);
        }
        let a = Attrs(&node.attribute);
        let x = || Self::arg(node, 0).ok_or("no input".to_string());
        let out = || node.output.first().map(String::as_str).unwrap_or("");
        // Extra outputs (a max-pool's indices, a dropout's mask) must go unread.
        if let Some(extra) = node
            .output
            .iter()
            .skip(1)
            .find(|o| !o.is_empty() && self.readers.contains_key(o.as_str()))
        {
            return Err(format!(
                "its output \"{extra}\" is read; only the first output can be"
            ));
        }
        let op = node.op_type.as_str();
        let simple = |spec: OpSpec| Ok::<_, String>(spec);
        let spec = match op {
            "Constant" => {
                let t = constant_node(node, &a)?;
                self.consts.insert(out(), Cow::Owned(t));
                self.absorbed += 1;
                return Ok(());
            }
            "Cast" => {
                let to = a.int("to", 0) as i32;
                let input = x()?;
                if let Some(t) = self.constant(input) {
                    let cast = cast(t, to).map_err(|e| format!("tensor \"{input}\": {e}"))?;
                    self.consts.insert(out(), Cow::Owned(cast));
                } else if to == data_type::FLOAT {
                    self.computed(input)?;
                    self.alias.insert(out(), input);
                } else {
                    return Err(format!(
                        "casts a computed value to {}; squeeze computes in FLOAT",
                        data_type::name(to)
                    ));
                }
                self.absorbed += 1;
                return Ok(());
            }
            "Identity" | "Dropout" => {
                self.check_dropout(node)?;
                self.alias.insert(out(), x()?);
                self.absorbed += 1;
                return Ok(());
            }
            "Unsqueeze" => {
                // Unit axes after a vector's features ([N, C] → [N, C, 1, 1]): squeeze's add and
                // mul broadcast a [C] value per channel as they are.
                let axes = self.axes(node, &a)?.unwrap_or_default();
                if axes.is_empty() || axes.iter().any(|&x| (0..2).contains(&x)) {
                    return Err(format!(
                        "axes = {axes:?}; only unit axes after the features (a per-channel vector for add or mul) are supported"
                    ));
                }
                self.computed(x()?)?;
                self.alias.insert(out(), x()?);
                self.absorbed += 1;
                return Ok(());
            }
            "Conv" => self.conv(node, &a)?,
            "Gemm" => self.gemm(node, &a)?,
            "MatMul" => self.matmul(index, node)?,
            "BatchNormalization" => {
                let names = (1..5)
                    .map(|i| self.weight(node, i, "a batchnorm's tensors"))
                    .collect::<NodeResult<Vec<_>>>()?;
                if a.int("training_mode", 0) != 0 {
                    return Err("training_mode = 1; export the model in eval mode".into());
                }
                OpSpec::Batchnorm {
                    weight: names[0].clone(),
                    bias: names[1].clone(),
                    running_mean: names[2].clone(),
                    running_var: names[3].clone(),
                    eps: f64::from(a.float("epsilon", 1e-5)),
                }
            }
            "LayerNormalization" => {
                if a.int("axis", -1) != -1 {
                    return Err(format!(
                        "axis = {}; squeeze normalizes over a sample's last dimension (axis = -1)",
                        a.int("axis", -1)
                    ));
                }
                let weight = Some(self.weight(node, 1, "the scale")?);
                let bias = match Self::arg(node, 2) {
                    Some(_) => Some(self.weight(node, 2, "the bias")?),
                    None => None,
                };
                OpSpec::LayerNorm {
                    weight,
                    bias,
                    eps: f64::from(a.float("epsilon", 1e-5)),
                }
            }
            "Relu" => simple(OpSpec::Relu {})?,
            "Sigmoid" => simple(OpSpec::Sigmoid {})?,
            "Tanh" => simple(OpSpec::Tanh {})?,
            "HardSwish" => simple(OpSpec::Hardswish {})?,
            "LeakyRelu" => OpSpec::LeakyRelu {
                slope: f64::from(a.float("alpha", 0.01)),
            },
            "HardSigmoid" => {
                let (alpha, beta) = (a.float("alpha", 0.2), a.float("beta", 0.5));
                if (alpha - 1.0 / 6.0).abs() > 1e-6 || (beta - 0.5).abs() > 1e-6 {
                    return Err(format!(
                        "alpha = {alpha}, beta = {beta}; squeeze's hardsigmoid is PyTorch's (alpha = 1/6, beta = 0.5)"
                    ));
                }
                OpSpec::Hardsigmoid {}
            }
            "Gelu" => match a.string("approximate").as_deref() {
                None | Some("none") => OpSpec::Gelu {},
                Some(other) => {
                    return Err(format!(
                        "approximate = \"{other}\"; squeeze's gelu is the exact (erf) one"
                    ));
                }
            },
            "Clip" => self.clip(node, &a)?,
            "Softmax" => {
                let axis = a.int("axis", -1);
                if axis != -1 && axis != 1 {
                    return Err(format!(
                        "axis = {axis}; squeeze's softmax runs over a vector's features"
                    ));
                }
                OpSpec::Softmax {}
            }
            "Flatten" => {
                let axis = a.int("axis", 1);
                if axis != 1 {
                    return Err(format!(
                        "axis = {axis}; only flattening each sample (axis = 1) is supported"
                    ));
                }
                OpSpec::Flatten {
                    start_dim: None,
                    end_dim: None,
                }
            }
            "Reshape" => match self.reshape(node) {
                Err(e) if e == UNIT_AXES => {
                    self.computed(x()?)?;
                    self.alias.insert(out(), x()?);
                    self.absorbed += 1;
                    return Ok(());
                }
                Err(e) if e == OTHER_SHAPE => match self.reshape_sample(node)? {
                    Some(spec) => spec,
                    None => return self.view_node(index, node),
                },
                r => r?,
            },
            "Transpose" => {
                let perm = &a.get("perm").ok_or("no perm")?.ints;
                let moved: Vec<usize> = (0..perm.len()).filter(|&i| perm[i] != i as i64).collect();
                match moved[..] {
                    [i, j] if i > 0 && perm[i] == j as i64 => OpSpec::Transpose {
                        dims: [i as i64, j as i64],
                    },
                    _ => return self.view_node(index, node),
                }
            }
            "Gather" if Self::arg(node, 0).is_some_and(|t| self.constant(t).is_none()) => {
                match self.select(node, &a)? {
                    Some(spec) => spec,
                    None => return self.view_node(index, node),
                }
            }
            "Squeeze" => {
                let axes = self.axes(node, &a)?;
                let layer = self.next_name(node);
                if axes.as_ref().is_some_and(|a| a.contains(&0)) {
                    return Err("squeezes the batch axis".into());
                }
                self.checks.push(Check::Squeezed {
                    layer,
                    node: node.name.clone(),
                });
                OpSpec::Flatten {
                    start_dim: None,
                    end_dim: None,
                }
            }
            "MaxPool" | "AveragePool" => self.pool(node, &a)?,
            "GlobalAveragePool" => OpSpec::AdaptiveAvgpool {
                size: Pair::Same(1),
            },
            "ReduceMean" => {
                let axes = self.axes(node, &a)?.unwrap_or_default();
                let mut sorted = axes.clone();
                sorted.sort_unstable();
                if sorted != [2, 3] && sorted != [-2, -1] {
                    return Err(format!(
                        "axes = {axes:?}; only the mean over a map's height and width (global average pooling) is supported"
                    ));
                }
                if a.int("keepdims", 1) == 0 {
                    OpSpec::GlobalAvgpool {}
                } else {
                    OpSpec::AdaptiveAvgpool {
                        size: Pair::Same(1),
                    }
                }
            }
            "Resize" | "Upsample" => self.resize(node, &a)?,
            "Gather" => return self.gather(node, &a),
            "Add" | "Mul" => return self.join(node),
            "Concat" if node.input.len() == 2 && self.constant(&node.input[0]).is_some() => {
                let axis = a.int("axis", 1);
                let rank = self.full_shape(&node.input[1])?.len();
                if array::axis(axis, rank)? != 1 {
                    return Err(format!(
                        "joins a constant along axis {axis}; squeeze puts a learned tensor before the tokens (axis 1)"
                    ));
                }
                // Under the initializer's name (the legacy exporter broadcasts it over the batch
                // with an `Expand`, whose output the importer reads as the initializer).
                let name = self.resolve(&node.input[0]).to_string();
                let param = self.weight_named(&name, "the joined tensor")?;
                let input = self.computed(&node.input[1])?;
                return self.push(
                    node,
                    OpSpec::Concat { param: Some(param) },
                    vec![input],
                    false,
                );
            }
            "Concat" => {
                let inputs = node
                    .input
                    .iter()
                    .map(|v| self.computed(v))
                    .collect::<NodeResult<Vec<_>>>()?;
                let layer = self.next_name(node);
                self.checks.push(Check::ConcatAxis {
                    layer,
                    node: node.name.clone(),
                    axis: a.int("axis", 1),
                });
                return self.push(node, OpSpec::Concat { param: None }, inputs, true);
            }
            other => return Err(unsupported(other)),
        };
        let input = self.computed(x()?)?;
        self.push(node, spec, vec![input], false)
    }

    /// Adds the layer computing `node`'s first output from `inputs` (written out unless it
    /// reads only the previous layer's value, or `join` says always).
    fn push(
        &mut self,
        node: &'g NodeProto,
        op: OpSpec,
        inputs: Vec<String>,
        join: bool,
    ) -> NodeResult<()> {
        let name = self.next_name(node);
        let previous = match self.layers.len() {
            0 => MODEL_INPUT.to_string(),
            n => self.layer_name(n - 1),
        };
        let inputs = if !join && inputs.len() == 1 && inputs[0] == previous {
            Vec::new()
        } else {
            inputs
        };
        self.names.insert(name.clone());
        if let Some(out) = node.output.first() {
            self.producer.insert(out.as_str(), name.clone());
        }
        self.layers.push(LayerSpec {
            name: Some(name),
            inputs,
            op,
        });
        Ok(())
    }

    /// The name the next layer, computing `node`, takes: its weight's prefix for layers with
    /// a weight named as PyTorch names them, else the node's scope (`/layer1/layer1.0/relu/Relu`
    /// → `layer1.0.relu`) or its output's name; made unique.
    fn next_name(&self, node: &NodeProto) -> String {
        let weight = match node.op_type.as_str() {
            "Conv" | "Gemm" | "MatMul" | "BatchNormalization" | "LayerNormalization" => {
                Self::arg(node, 1)
            }
            _ => None,
        };
        let base = weight
            .filter(|w| w.contains('.') && !w.starts_with("onnx::"))
            .map(|w| super::spec::tensor_prefix(w).to_string())
            .or_else(|| scope_name(&node.name))
            .or_else(|| node.output.first().map(|o| clean(o)))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| node.op_type.to_lowercase());
        let mut name = base.clone();
        let mut k = 1;
        while self.names.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        name
    }

    /// Records initializer `node.input[i]` as a written tensor (f32, its own shape) and
    /// returns its name.
    fn weight(&mut self, node: &NodeProto, i: usize, what: &str) -> NodeResult<String> {
        let name = Self::arg(node, i).ok_or_else(|| format!("{what} are missing"))?;
        self.weight_named(name, what)
    }

    /// Records constant `name` as a written tensor and returns its name.
    fn weight_named(&mut self, name: &str, what: &str) -> NodeResult<String> {
        let t = self
            .constant(name)
            .ok_or_else(|| format!("\"{name}\" ({what}) is not a constant"))?;
        let values = floats(t).map_err(|e| format!("tensor \"{name}\": {e}"))?;
        let shape = dims(t)?;
        self.write(name, shape, values)?;
        Ok(name.to_string())
    }

    /// Adds a tensor to the output; the same name twice must be the same tensor.
    fn write(&mut self, name: &str, shape: Vec<usize>, values: Vec<f32>) -> NodeResult<()> {
        match self.written.get(name) {
            Some(s) if *s == shape => Ok(()),
            Some(s) => Err(format!(
                "tensor \"{name}\" is used as {shape:?} here and as {s:?} by an earlier node"
            )),
            None => {
                self.written.insert(name.to_string(), shape.clone());
                self.tensors.push((name.to_string(), shape, values));
                Ok(())
            }
        }
    }

    fn conv(&mut self, node: &NodeProto, a: &Attrs) -> NodeResult<OpSpec> {
        let w = Self::arg(node, 1).ok_or("no weight")?;
        let rank = self.constant(w).map(|t| t.dims.len());
        if rank.is_some_and(|r| r != 3 && r != 4) {
            return Err(format!(
                "a weight of rank {}; squeeze runs 1-D and 2-D convolutions (rank 3 and 4)",
                rank.unwrap_or(0)
            ));
        }
        let groups = usize::try_from(a.int("group", 1))
            .ok()
            .filter(|&g| g > 0)
            .ok_or("group must be positive")?;
        if rank == Some(3) {
            let one = |name: &str, v: Option<&AttributeProto>| -> NodeResult<usize> {
                match v.map(|x| &x.ints[..]) {
                    None => Ok(usize::from(name != "pads")),
                    Some([v]) if *v > 0 => Ok(*v as usize),
                    Some([b, e]) if name == "pads" && b == e && *b >= 0 => Ok(*b as usize),
                    Some(v) => Err(format!(
                        "{name} = {v:?}, expected one value (symmetric pads)"
                    )),
                }
            };
            auto_pad(a)?;
            let stride = one("strides", a.get("strides"))?;
            let padding = one("pads", a.get("pads"))?;
            let dilation = one("dilations", a.get("dilations"))?;
            let weight = self.weight(node, 1, "the weight")?;
            let bias = match Self::arg(node, 2) {
                Some(_) => Some(self.weight(node, 2, "the bias")?),
                None => None,
            };
            return Ok(OpSpec::Conv1d {
                weight,
                bias,
                out_channels: None,
                kernel: None,
                stride,
                padding,
                dilation,
                groups,
            });
        }
        let weight = self.weight(node, 1, "the weight")?;
        let bias = match Self::arg(node, 2) {
            Some(_) => Some(self.weight(node, 2, "the bias")?),
            None => None,
        };
        let padding = pads(a)?;
        let stride = pair(a, "strides", 1)?;
        let dilation = pair(a, "dilations", 1)?;
        Ok(OpSpec::Conv2d {
            weight,
            bias,
            out_channels: None,
            kernel: None,
            stride,
            padding,
            dilation,
            groups,
        })
    }

    /// `Gemm(A, B, C) = alpha·A·B' + beta·C` with `B' = Bᵀ` under `transB`: a linear layer.
    fn gemm(&mut self, node: &NodeProto, a: &Attrs) -> NodeResult<OpSpec> {
        if a.int("transA", 0) != 0 {
            return Err("transA = 1 (the input transposed)".into());
        }
        let b = Self::arg(node, 1).ok_or("no weight")?;
        let t = self
            .constant(b)
            .ok_or_else(|| format!("\"{b}\" (the weight) is not a constant"))?;
        let (rows, cols, mut w) = matrix(b, t)?;
        let (alpha, beta) = (a.float("alpha", 1.0), a.float("beta", 1.0));
        let (out, inp) = if a.int("transB", 0) != 0 {
            (rows, cols)
        } else {
            w = transpose(&w, rows, cols);
            (cols, rows)
        };
        if alpha != 1.0 {
            w.iter_mut().for_each(|v| *v *= alpha);
        }
        self.write(b, vec![out, inp], w)?;
        let bias = match Self::arg(node, 2) {
            Some(c) => Some(self.bias(c, out, beta)?),
            None => None,
        };
        Ok(OpSpec::Linear {
            weight: b.to_string(),
            bias,
            out_features: None,
        })
    }

    /// A bias vector of `out` values (`[out]` or `[1, out]`), scaled by `beta`.
    fn bias(&mut self, name: &str, out: usize, beta: f32) -> NodeResult<String> {
        let t = self
            .constant(name)
            .ok_or_else(|| format!("\"{name}\" (the bias) is not a constant"))?;
        let mut v = floats(t).map_err(|e| format!("tensor \"{name}\": {e}"))?;
        if v.len() != out {
            return Err(format!(
                "bias \"{name}\" has shape {:?}, expected {out} values",
                t.dims
            ));
        }
        if beta != 1.0 {
            v.iter_mut().for_each(|x| *x *= beta);
        }
        self.write(name, vec![out], v)?;
        Ok(name.to_string())
    }

    /// `MatMul(X, W)` by a constant `[in, out]` matrix: a linear layer (weight `Wᵀ`), taking
    /// the bias of an `Add` of a constant vector that is its only reader.
    fn matmul(&mut self, index: usize, node: &'g NodeProto) -> NodeResult<OpSpec> {
        let b = Self::arg(node, 1).ok_or("no second operand")?;
        let Some(t) = self.constant(b) else {
            return Err(
                "a product of two computed values (as attention computes); squeeze multiplies by constant weights only"
                    .into(),
            );
        };
        let (rows, cols, w) = matrix(b, t)?;
        self.write(b, vec![cols, rows], transpose(&w, rows, cols))?;
        let out = node.output.first().map(String::as_str).unwrap_or("");
        let mut bias = None;
        if let Some(&[next]) = self.readers.get(out).map(Vec::as_slice) {
            let add = &self.graph.node[next];
            if add.op_type == "Add" && next > index {
                let other = add.input.iter().find(|v| v.as_str() != out);
                if let Some(c) = other.filter(|c| {
                    self.constant(c)
                        .is_some_and(|t| t.dims.iter().rev().skip(1).all(|&d| d == 1))
                }) {
                    bias = Some(self.bias(c, cols, 1.0)?);
                    self.fused.insert(next);
                    if let Some(sum) = add.output.first() {
                        self.alias.insert(sum.as_str(), out);
                    }
                    self.absorbed += 1;
                }
            }
        }
        Ok(OpSpec::Linear {
            weight: b.to_string(),
            bias,
            out_features: None,
        })
    }

    fn clip(&self, node: &NodeProto, a: &Attrs) -> NodeResult<OpSpec> {
        let bound = |i: usize, attr: &str| -> NodeResult<Option<f32>> {
            if let Some(name) = Self::arg(node, i) {
                let t = self
                    .constant(name)
                    .ok_or_else(|| format!("bound \"{name}\" is not a constant"))?;
                let v = floats(t).map_err(|e| format!("bound \"{name}\": {e}"))?;
                return Ok(v.first().copied());
            }
            Ok(a.get(attr).map(|x| x.f))
        };
        let (lo, hi) = (bound(1, "min")?, bound(2, "max")?);
        match (lo, hi) {
            (Some(l), Some(h)) if l == 0.0 && h == 6.0 => Ok(OpSpec::Relu6 {}),
            (Some(0.0), None) => Ok(OpSpec::Relu {}),
            (Some(l), Some(h)) if l == 0.0 && h.is_infinite() => Ok(OpSpec::Relu {}),
            _ => Err(format!(
                "clips to [{}, {}]; squeeze has relu ([0, ∞)) and relu6 ([0, 6])",
                lo.map_or("-∞".into(), |v| v.to_string()),
                hi.map_or("∞".into(), |v| v.to_string())
            )),
        }
    }

    fn reshape(&mut self, node: &NodeProto) -> NodeResult<OpSpec> {
        let s = Self::arg(node, 1).ok_or("no target shape")?;
        let t = self
            .constant(s)
            .ok_or("its target shape is computed; export with fixed shapes")?;
        let shape = ints(t).map_err(|e| format!("target shape \"{s}\": {e}"))?;
        match shape[..] {
            [b, f] if b == 0 || b == 1 || b == -1 => {
                if f > 0 {
                    let layer = self.next_name(node);
                    self.checks.push(Check::Features {
                        layer,
                        node: node.name.clone(),
                        features: f as usize,
                    });
                } else if b == -1 && f == -1 || f < -1 {
                    return Err(format!("target shape {shape:?} is not valid"));
                }
                Ok(OpSpec::Flatten {
                    start_dim: None,
                    end_dim: None,
                })
            }
            [b, _, 1, 1] if b == 0 || b == 1 || b == -1 => Err(UNIT_AXES.into()),
            _ => Err(OTHER_SHAPE.into()),
        }
    }

    /// The axes of a Squeeze or ReduceMean: an attribute before opset 13/18, an input after.
    fn axes(&self, node: &NodeProto, a: &Attrs) -> NodeResult<Option<Vec<i64>>> {
        if let Some(name) = Self::arg(node, 1) {
            let t = self
                .constant(name)
                .ok_or("its axes are computed; export with fixed shapes")?;
            return ints(t)
                .map(Some)
                .map_err(|e| format!("axes \"{name}\": {e}"));
        }
        Ok(a.get("axes").map(|x| x.ints.clone()))
    }

    fn pool(&self, node: &NodeProto, a: &Attrs) -> NodeResult<OpSpec> {
        let kernel = a
            .get("kernel_shape")
            .map(|x| to_pair("kernel_shape", &x.ints))
            .ok_or("no kernel_shape")??;
        if a.int("ceil_mode", 0) != 0 {
            return Err("ceil_mode = 1; squeeze pools with floor (PyTorch's default)".into());
        }
        if a.get("dilations")
            .is_some_and(|d| d.ints.iter().any(|&x| x != 1))
        {
            return Err("dilated pooling".into());
        }
        let stride = Some(pair(a, "strides", 1)?);
        let padding = pads(a)?;
        if node.op_type == "MaxPool" {
            return Ok(OpSpec::Maxpool2d {
                kernel,
                stride,
                padding,
            });
        }
        if padding != Pair::Same(0) && a.int("count_include_pad", 0) == 0 {
            return Err("averages without counting the padding (count_include_pad = 0); squeeze counts it, as PyTorch's default does".into());
        }
        Ok(OpSpec::Avgpool2d {
            kernel,
            stride,
            padding,
        })
    }

    /// `Gather` of rows of a constant table by computed ids: an embedding layer.
    fn gather(&mut self, node: &'g NodeProto, a: &Attrs) -> NodeResult<()> {
        let axis = a.int("axis", 0);
        if axis != 0 {
            return Err(format!(
                "axis = {axis}; squeeze gathers rows of a constant table (axis = 0, an embedding)"
            ));
        }
        let ids = self.computed(Self::arg(node, 1).ok_or("no indices")?)?;
        let weight = self.weight(node, 0, "the embedding table")?;
        let spec = OpSpec::Embedding {
            weight,
            num_embeddings: None,
            embedding_dim: None,
        };
        self.push(node, spec, vec![ids], false)
    }

    fn resize(&self, node: &NodeProto, a: &Attrs) -> NodeResult<OpSpec> {
        let (mode, align_corners) = resize_mode(node, a)?;
        // Resize: X, roi, scales, sizes; Upsample: X, scales.
        let at = if node.op_type == "Resize" { 2 } else { 1 };
        let scales = Self::arg(node, at)
            .and_then(|s| self.constant(s))
            .map(floats)
            .transpose()
            .map_err(|e| format!("scales: {e}"))?
            .filter(|s| !s.is_empty())
            .ok_or("no constant scales (resizing to given sizes is not supported)")?;
        let whole = |v: f32| (v >= 1.0 && v.fract() == 0.0).then_some(v as usize);
        match scales[..] {
            [n, c, h, w] if n == 1.0 && c == 1.0 => match (whole(h), whole(w)) {
                (Some(h), Some(w)) => Ok(OpSpec::Upsample {
                    scale: Pair::HW([h, w]),
                    mode,
                    align_corners,
                }),
                _ => Err(format!(
                    "scales {scales:?}; squeeze upsamples by whole factors"
                )),
            },
            _ => Err(format!(
                "scales {scales:?}; squeeze resizes a map's height and width"
            )),
        }
    }

    /// `Add`/`Mul` of two computed values; adding 0 or multiplying by 1 passes through.
    fn join(&mut self, node: &'g NodeProto) -> NodeResult<()> {
        let [l, r] = &node.input[..] else {
            return Err(format!("{} inputs, expected 2", node.input.len()));
        };
        let neutral = if node.op_type == "Add" { 0.0 } else { 1.0 };
        for (c, v) in [(l, r), (r, l)] {
            if let Some(t) = self.constant(c) {
                let values = floats(t).map_err(|e| format!("tensor \"{c}\": {e}"))?;
                if values.iter().all(|&x| x == neutral) {
                    self.computed(v)?;
                    if let Some(out) = node.output.first() {
                        self.alias.insert(out.as_str(), v.as_str());
                    }
                    self.absorbed += 1;
                    return Ok(());
                }
                let param = Some(self.weight_named(c, "the learned operand")?);
                let input = self.computed(v)?;
                let op = if node.op_type == "Add" {
                    OpSpec::Add { from: None, param }
                } else {
                    OpSpec::Mul { from: None, param }
                };
                return self.push(node, op, vec![input], false);
            }
        }
        let inputs = vec![self.computed(l)?, self.computed(r)?];
        let op = if node.op_type == "Add" {
            OpSpec::Add {
                from: None,
                param: None,
            }
        } else {
            OpSpec::Mul {
                from: None,
                param: None,
            }
        };
        self.push(node, op, inputs, true)
    }
}

/// Shapes, constant arithmetic and rearranged values.
impl<'g> Graph<'g> {
    /// A dropout must be in eval mode (its `training_mode` input unset or false).
    fn check_dropout(&self, node: &NodeProto) -> NodeResult<()> {
        if node.op_type != "Dropout" {
            return Ok(());
        }
        let Some(t) = Self::arg(node, 2) else {
            return Ok(());
        };
        let on = self
            .constant(t)
            .map(const_arr)
            .transpose()?
            .ok_or("its training_mode is computed")?;
        if on.0.data.iter().any(|&v| v != 0.0) {
            return Err("training_mode = true; export the model in eval mode".into());
        }
        Ok(())
    }

    /// The shape of value `name` with the batch first (the batch size is [`Graph::batch`]).
    fn full_shape(&mut self, name: &str) -> NodeResult<Vec<usize>> {
        let v = self.resolve(name);
        if let Some(view) = self.views.get(v) {
            return Ok(view.at.dims.clone());
        }
        if let Some(t) = self.constant(v) {
            return dims(t);
        }
        let layer = self.computed(v)?;
        let mut shape = vec![self.batch];
        if layer == MODEL_INPUT {
            shape.extend_from_slice(&self.input_shape);
            return Ok(shape);
        }
        if self
            .shapes
            .as_ref()
            .is_none_or(|(n, _)| *n != self.layers.len())
        {
            let spec = ArchSpec {
                input: InputSpec {
                    shape: self.input_shape.clone(),
                    scale: 1.0,
                    mean: vec![0.0],
                    std: vec![1.0],
                },
                layers: self.layers.clone(),
            };
            let shapes = super::load::layer_shapes(self.path, &spec, &self.tensors)
                .map_err(|e| format!("the layers before it do not load: {e}"))?;
            self.shapes = Some((self.layers.len(), shapes));
        }
        let sample = self
            .shapes
            .as_ref()
            .and_then(|(_, s)| s.get(&layer))
            .ok_or_else(|| format!("the shape of layer {layer} is not known"))?;
        shape.extend_from_slice(sample);
        Ok(shape)
    }

    /// A constant input's values as integers (a shape, axes, indices).
    fn int_input(&self, node: &NodeProto, i: usize, what: &str) -> NodeResult<Option<Vec<i64>>> {
        let Some(name) = Self::arg(node, i) else {
            return Ok(None);
        };
        let t = self
            .constant(name)
            .ok_or_else(|| format!("its {what} are computed; export with fixed shapes"))?;
        ints(t)
            .map(Some)
            .map_err(|e| format!("{what} \"{name}\": {e}"))
    }

    /// ONNX's data-movement operators applied to `x` (a constant's values or a value's
    /// positions); `Split` gives one array per output.
    fn movement<T: Copy>(&self, node: &NodeProto, x: &Arr<T>) -> NodeResult<Vec<Arr<T>>> {
        let a = Attrs(&node.attribute);
        let ints_of = |i: usize, attr: &str, what: &str| -> NodeResult<Option<Vec<i64>>> {
            match self.int_input(node, i, what)? {
                Some(v) => Ok(Some(v)),
                None => Ok(a.get(attr).map(|x| x.ints.clone())),
            }
        };
        let one = |r: Result<Arr<T>, String>| r.map(|v| vec![v]);
        match node.op_type.as_str() {
            "Transpose" => one(x.transpose(a.get("perm").map_or(&[][..], |p| &p.ints[..]))),
            "Reshape" => {
                let target = self
                    .int_input(node, 1, "target shape")?
                    .ok_or("no target shape")?;
                one(x.reshape(&target, a.int("allowzero", 0) != 0))
            }
            "Squeeze" => one(x.squeeze(ints_of(1, "axes", "axes")?.as_deref())),
            "Unsqueeze" => {
                let axes = ints_of(1, "axes", "axes")?.ok_or("no axes")?;
                one(x.unsqueeze(&axes))
            }
            "Gather" => {
                let name = Self::arg(node, 1).ok_or("no indices")?;
                let t = self
                    .constant(name)
                    .ok_or("its indices are computed; squeeze selects fixed indices")?;
                let idx = Arr::new(dims(t)?, ints(t).map_err(|e| format!("indices: {e}"))?)?;
                one(x.gather(a.int("axis", 0), &idx))
            }
            "Slice" => {
                let starts = ints_of(1, "starts", "starts")?.ok_or("no starts")?;
                let ends = ints_of(2, "ends", "ends")?.ok_or("no ends")?;
                let axes = ints_of(3, "axes", "axes")?;
                let steps = self.int_input(node, 4, "steps")?;
                if starts.len() != ends.len() {
                    return Err("starts and ends differ in length".into());
                }
                one(x.slice(&starts, &ends, axes.as_deref(), steps.as_deref()))
            }
            "Split" => {
                let ax = a.int("axis", 0);
                let size = x.dims[array::axis(ax, x.dims.len())?];
                let parts = node.output.len();
                let sizes = match ints_of(1, "split", "split sizes")? {
                    Some(s) => s
                        .iter()
                        .map(|&v| usize::try_from(v).map_err(|_| format!("split size {v}")))
                        .collect::<NodeResult<Vec<_>>>()?,
                    None if parts > 0 => {
                        let each = size.div_ceil(parts);
                        (0..parts)
                            .map(|i| each.min(size.saturating_sub(i * each)))
                            .collect()
                    }
                    None => return Err("no outputs".into()),
                };
                x.split(ax, &sizes)
            }
            other => Err(unsupported(other)),
        }
    }

    /// A node all of whose inputs are constants (the shape arithmetic exporters write),
    /// evaluated; `Shape` of a computed value reads its shape. `None`: not such a node.
    fn fold(&mut self, node: &'g NodeProto) -> Option<NodeResult<()>> {
        const FOLDED: &[&str] = &[
            "Shape",
            "Gather",
            "Slice",
            "Split",
            "Concat",
            "Unsqueeze",
            "Squeeze",
            "Reshape",
            "Transpose",
            "Expand",
            "Add",
            "Sub",
            "Mul",
            "Div",
            "Mod",
            "Neg",
            "Sqrt",
            "Equal",
            "Where",
            "ConstantOfShape",
        ];
        let op = node.op_type.as_str();
        if !FOLDED.contains(&op) {
            return None;
        }
        let all_constant = node
            .input
            .iter()
            .filter(|v| !v.is_empty())
            .all(|v| self.constant(v).is_some());
        if !(all_constant || op == "Shape") {
            return None;
        }
        let out = node.output.first().map(String::as_str).unwrap_or("");
        // `Expand` of a learned tensor over the batch (a class token) reads as the tensor.
        if op == "Expand"
            && let Some(x) = Self::arg(node, 0)
            && let Some(t) = self.constant(x)
            && let Ok(Some(shape)) = self.int_input(node, 1, "shape")
        {
            let from = dims(t).unwrap_or_default();
            let target: Vec<usize> = shape.iter().map(|&v| v.max(1) as usize).collect();
            let over_batch = from.first() == Some(&1)
                && array::broadcast(&from, &target)
                    .is_ok_and(|b| b.len() == from.len() && b[1..] == from[1..]);
            if over_batch {
                self.alias.insert(out, x);
                self.absorbed += 1;
                return Some(Ok(()));
            }
        }
        let result = self.fold_node(node);
        Some(result.map(|values| {
            for (name, v) in node.output.iter().zip(values) {
                self.consts.insert(name.as_str(), Cow::Owned(v));
            }
            self.absorbed += 1;
        }))
    }

    fn fold_node(&mut self, node: &'g NodeProto) -> NodeResult<Vec<TensorProto>> {
        let a = Attrs(&node.attribute);
        let op = node.op_type.as_str();
        let arg = |i: usize| -> NodeResult<(Arr<f64>, bool)> {
            let name = Self::arg(node, i).ok_or_else(|| format!("input {i} is missing"))?;
            let t = self
                .constant(name)
                .ok_or_else(|| format!("input \"{name}\" is not a constant"))?;
            const_arr(t).map_err(|e| format!("tensor \"{name}\": {e}"))
        };
        let binary = |f: &dyn Fn(f64, f64, bool) -> f64| -> NodeResult<Vec<TensorProto>> {
            let ((x, xf), (y, yf)) = (arg(0)?, arg(1)?);
            let float = xf || yf;
            let v = array::zip_with(&x, &y, |p, q| f(p, q, float))?;
            Ok(vec![const_proto(v, float)])
        };
        match op {
            "Shape" => {
                let x = Self::arg(node, 0).ok_or("no input")?;
                let shape = self.full_shape(x)?;
                let r = shape.len() as i64;
                let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let (s, e) = (clamp(a.int("start", 0)), clamp(a.int("end", r)));
                let v: Vec<f64> = shape[s..e.max(s)].iter().map(|&d| d as f64).collect();
                Ok(vec![const_proto(Arr::new(vec![v.len()], v)?, false)])
            }
            "Concat" => {
                let parts = (0..node.input.len())
                    .map(arg)
                    .collect::<NodeResult<Vec<_>>>()?;
                let float = parts.iter().any(|p| p.1);
                let arrs: Vec<Arr<f64>> = parts.into_iter().map(|p| p.0).collect();
                Ok(vec![const_proto(
                    Arr::concat(&arrs, a.int("axis", 0))?,
                    float,
                )])
            }
            "Expand" => {
                let (x, float) = arg(0)?;
                let shape: Vec<usize> = self
                    .int_input(node, 1, "shape")?
                    .ok_or("no shape")?
                    .iter()
                    .map(|&v| v.max(1) as usize)
                    .collect();
                let target = array::broadcast(&x.dims, &shape)?;
                Ok(vec![const_proto(x.expand(&target)?, float)])
            }
            "Add" => binary(&|p, q, _| p + q),
            "Sub" => binary(&|p, q, _| p - q),
            "Mul" => binary(&|p, q, _| p * q),
            "Div" => binary(&|p, q, float| {
                if float {
                    p / q
                } else if q == 0.0 {
                    0.0
                } else {
                    (p / q).trunc()
                }
            }),
            "Mod" => {
                let fmod = a.int("fmod", 0) != 0;
                binary(&|p, q, _| {
                    if q == 0.0 {
                        0.0
                    } else if fmod {
                        p % q
                    } else {
                        p - q * (p / q).floor()
                    }
                })
            }
            "Equal" => {
                let ((x, _), (y, _)) = (arg(0)?, arg(1)?);
                let v = array::zip_with(&x, &y, |p, q| f64::from(u8::from(p == q)))?;
                Ok(vec![const_proto(v, false)])
            }
            "Where" => {
                let ((c, _), (x, xf), (y, yf)) = (arg(0)?, arg(1)?, arg(2)?);
                let shape = array::broadcast(&array::broadcast(&c.dims, &x.dims)?, &y.dims)?;
                let (c, x, y) = (c.expand(&shape)?, x.expand(&shape)?, y.expand(&shape)?);
                let data = (0..c.data.len())
                    .map(|i| {
                        if c.data[i] != 0.0 {
                            x.data[i]
                        } else {
                            y.data[i]
                        }
                    })
                    .collect();
                Ok(vec![const_proto(Arr::new(shape, data)?, xf || yf)])
            }
            "Neg" | "Sqrt" => {
                let (x, float) = arg(0)?;
                let f = |v: f64| if op == "Neg" { -v } else { v.sqrt() };
                let data = x.data.iter().map(|&v| f(v)).collect();
                Ok(vec![const_proto(
                    Arr::new(x.dims, data)?,
                    float || op == "Sqrt",
                )])
            }
            "ConstantOfShape" => {
                let shape: Vec<usize> = arg(0)?.0.data.iter().map(|&v| v as usize).collect();
                let (value, float) = match a.get("value").and_then(|v| v.t.as_ref()) {
                    Some(t) => {
                        let (v, f) = const_arr(t)?;
                        (v.data.first().copied().unwrap_or(0.0), f)
                    }
                    None => (0.0, true),
                };
                let n = shape.iter().product();
                Ok(vec![const_proto(Arr::new(shape, vec![value; n])?, float)])
            }
            _ => {
                let (x, float) = arg(0)?;
                Ok(self
                    .movement(node, &x)?
                    .into_iter()
                    .map(|v| const_proto(v, float))
                    .collect())
            }
        }
    }

    /// `Reshape` of a computed value to a shape other than `[batch, features]`: a flatten
    /// of some of a sample's dimensions, or a reshape of each sample, when the batch stays
    /// first; `None` when it does not (the value is then followed as a rearrangement).
    fn reshape_sample(&mut self, node: &NodeProto) -> NodeResult<Option<OpSpec>> {
        let x = Self::arg(node, 0).ok_or("no input")?;
        let shape = self.full_shape(x)?;
        let positions = View::whole(String::new(), shape.clone())?;
        let target = self.movement(node, &positions.at)?.remove(0).dims;
        if target.first() != Some(&self.batch) || shape.first() != Some(&self.batch) {
            return Ok(None);
        }
        // Dimensions start..=end of the input joined, the rest as they were.
        let joined = (1..shape.len()).find_map(|start| {
            let k = shape.len() + 1 - target.len();
            let end = start + k - 1;
            (k >= 2
                && end < shape.len()
                && target[..start] == shape[..start]
                && target[start] == shape[start..=end].iter().product::<usize>()
                && target[start + 1..] == shape[end + 1..])
                .then_some((start, end))
        });
        Ok(Some(match joined {
            Some((start, end)) => OpSpec::Flatten {
                start_dim: Some(start as i64),
                end_dim: (end + 1 != shape.len()).then_some(end as i64),
            },
            None => OpSpec::Reshape {
                shape: target[1..].iter().map(|&d| d as i64).collect(),
            },
        }))
    }

    /// `Gather` of one fixed index along a sample's axis: a select layer; `None` otherwise.
    fn select(&mut self, node: &NodeProto, a: &Attrs) -> NodeResult<Option<OpSpec>> {
        let x = Self::arg(node, 0).ok_or("no input")?;
        let idx = Self::arg(node, 1)
            .and_then(|i| self.constant(i))
            .filter(|t| t.dims.is_empty())
            .map(ints)
            .transpose()?;
        let Some(&[i]) = idx.as_deref() else {
            return Ok(None);
        };
        let shape = self.full_shape(x)?;
        let dim = array::axis(a.int("axis", 0), shape.len())?;
        let size = shape[dim] as i64;
        let index = if i < 0 { i + size } else { i };
        if dim == 0 || !(0..size).contains(&index) {
            return Ok(None);
        }
        Ok(Some(OpSpec::Select {
            dim: dim as i64,
            index: index as usize,
        }))
    }

    /// The value `name` as a view: a rearranged value, or a computed one whole.
    fn view_of(&mut self, name: &str) -> NodeResult<View> {
        if let Some(v) = self.views.get(self.resolve(name)) {
            return Ok(v.clone());
        }
        let layer = self.computed(name)?;
        View::whole(layer, self.full_shape(name)?)
    }

    /// Records `out` as `view`: a layer's output when it is that output unchanged.
    fn set_view(&mut self, out: &'g str, view: View) {
        if view.is_whole() {
            self.producer.insert(out, view.layer);
        } else {
            self.producer.remove(out);
            self.views.insert(out, view);
        }
    }

    /// A node reading rearranged values (or starting to rearrange a computed one): data
    /// movement, scaling by a constant, token-wise linear layers, and attention's products
    /// and softmax.
    fn view_node(&mut self, index: usize, node: &'g NodeProto) -> NodeResult<()> {
        let a = Attrs(&node.attribute);
        let op = node.op_type.as_str();
        let out = node.output.first().map(String::as_str).unwrap_or("");
        let x = Self::arg(node, 0).ok_or("no input")?;
        match op {
            "Identity" | "Dropout" => {
                self.check_dropout(node)?;
                self.alias.insert(out, x);
                self.absorbed += 1;
                Ok(())
            }
            "Transpose" | "Reshape" | "Squeeze" | "Unsqueeze" | "Gather" | "Slice" | "Split" => {
                let v = self.view_of(x)?;
                if !matches!(v.kind, Kind::Values) {
                    return Err(format!("rearranges {}", v.describe()));
                }
                let parts = self.movement(node, &v.at)?;
                for (o, at) in node.output.iter().zip(parts) {
                    self.set_view(o.as_str(), v.with(at));
                }
                self.absorbed += 1;
                Ok(())
            }
            "Mul" | "Div" => {
                let [l, r] = &node.input[..] else {
                    return Err(format!("{} inputs, expected 2", node.input.len()));
                };
                let (v, c) = match (self.constant(l), self.constant(r)) {
                    (None, Some(c)) => (l, c),
                    (Some(c), None) if op == "Mul" => (r, c),
                    _ => {
                        let v = self.view_of(l).or_else(|_| self.view_of(r))?;
                        return Err(format!(
                            "{} {} by a computed value; squeeze scales attention by a constant",
                            if op == "Mul" { "multiplies" } else { "divides" },
                            v.describe()
                        ));
                    }
                };
                let (factor, _) = const_arr(c)?;
                let [f] = factor.data[..] else {
                    return Err(format!("scales by a constant of shape {:?}", factor.dims));
                };
                let mut view = self.view_of(v)?;
                if matches!(view.kind, Kind::Probs(_)) {
                    return Err(format!("scales {}", view.describe()));
                }
                view.scale *= if op == "Mul" { f } else { 1.0 / f };
                self.set_view(out, view);
                self.absorbed += 1;
                Ok(())
            }
            "MatMul" | "Gemm" if Self::arg(node, 1).is_some_and(|b| self.constant(b).is_some()) => {
                let v = self.view_of(x)?;
                v.token_rows()?;
                let spec = if op == "Gemm" {
                    self.gemm(node, &a)?
                } else {
                    self.matmul(index, node)?
                };
                let OpSpec::Linear { weight, .. } = &spec else {
                    return Err(unsupported(op));
                };
                let features = self.written.get(weight).and_then(|s| s.first().copied());
                let features = features.ok_or("its weight was not recorded")?;
                self.push(node, spec, vec![v.layer.clone()], false)?;
                let layer = self.layer_name(self.layers.len() - 1);
                self.set_view(out, v.after_linear(layer, features)?);
                Ok(())
            }
            "MatMul" => {
                let y = Self::arg(node, 1).ok_or("no second operand")?;
                let (l, r) = (self.view_of(x)?, self.view_of(y)?);
                match &l.kind {
                    Kind::Values => {
                        let heads = view::scores(&l, &r)?;
                        let mut dims = l.at.dims.clone();
                        if let Some(last) = dims.last_mut() {
                            *last = heads.tokens;
                        }
                        let scores = View {
                            at: Arr {
                                dims,
                                data: Vec::new(),
                            },
                            scale: l.scale * r.scale,
                            kind: Kind::Scores(heads),
                            ..l
                        };
                        self.views.insert(out, scores);
                        self.absorbed += 1;
                        Ok(())
                    }
                    Kind::Probs(heads) => {
                        let name = self.next_name(node);
                        let merged = view::weighted(heads, &r, &l.layer, name)?;
                        let op = OpSpec::Attention { heads: heads.heads };
                        self.push(node, op, vec![l.layer.clone()], false)?;
                        self.set_view(out, merged);
                        Ok(())
                    }
                    Kind::Scores(_) => Err(format!(
                        "multiplies {}; squeeze's attention takes a softmax of them",
                        l.describe()
                    )),
                }
            }
            "Softmax" => {
                let v = self.view_of(x)?;
                let Kind::Scores(heads) = &v.kind else {
                    return Err(format!("a softmax of {}", v.describe()));
                };
                let rank = v.at.dims.len();
                if array::axis(a.int("axis", -1), rank)? != rank - 1 {
                    return Err(format!(
                        "axis = {}; squeeze's attention normalizes over the keys (the last axis)",
                        a.int("axis", -1)
                    ));
                }
                let want = 1.0 / (heads.head_dim as f64).sqrt();
                if (v.scale / want - 1.0).abs() > 1e-5 {
                    return Err(format!(
                        "the scores are scaled by {}; squeeze's attention scales by 1/√{} = {want}",
                        v.scale, heads.head_dim
                    ));
                }
                let probs = View {
                    kind: Kind::Probs(heads.clone()),
                    scale: 1.0,
                    ..v
                };
                self.views.insert(out, probs);
                self.absorbed += 1;
                Ok(())
            }
            _ => {
                let read = node
                    .input
                    .iter()
                    .find_map(|v| self.views.get(self.resolve(v)))
                    .map(View::describe);
                Err(match read {
                    Some(d) => format!("reads {d}, which squeeze cannot express as a layer"),
                    None => unsupported(op),
                })
            }
        }
    }
}

/// A constant's values as f64, and whether they are floating-point.
fn const_arr(t: &TensorProto) -> NodeResult<(Arr<f64>, bool)> {
    let d = dims(t)?;
    let (data, float) = match t.data_type {
        data_type::INT64 | data_type::INT32 => {
            (ints(t)?.iter().map(|&v| v as f64).collect(), false)
        }
        data_type::BOOL => {
            let v: Vec<f64> = if t.raw_data.is_empty() {
                t.int32_data
                    .iter()
                    .map(|&v| f64::from(u8::from(v != 0)))
                    .collect()
            } else {
                t.raw_data
                    .iter()
                    .map(|&v| f64::from(u8::from(v != 0)))
                    .collect()
            };
            (v, false)
        }
        _ => (floats(t)?.iter().map(|&v| f64::from(v)).collect(), true),
    };
    Ok((Arr::new(d, data)?, float))
}

/// An evaluated constant as a FLOAT or INT64 tensor.
fn const_proto(v: Arr<f64>, float: bool) -> TensorProto {
    let dims = v.dims.iter().map(|&d| d as i64).collect();
    if float {
        TensorProto {
            dims,
            data_type: data_type::FLOAT,
            float_data: v.data.iter().map(|&x| x as f32).collect(),
            ..Default::default()
        }
    } else {
        TensorProto {
            dims,
            data_type: data_type::INT64,
            int64_data: v.data.iter().map(|&x| x as i64).collect(),
            ..Default::default()
        }
    }
}

fn unsupported(op: &str) -> String {
    format!("operator {op} is not supported")
}

/// `/layer1/layer1.0/conv1/Conv` → `layer1.0.conv1`: the module path of PyTorch's scoped node
/// names, each scope's name extending the one before.
fn scope_name(node: &str) -> Option<String> {
    let rest = node.strip_prefix('/')?;
    let mut parts: Vec<&str> = rest.split('/').collect();
    parts.pop();
    let mut name = String::new();
    for p in parts.iter().filter(|p| !p.is_empty()) {
        if name.is_empty() || p.starts_with(&format!("{name}.")) {
            name = p.to_string();
        } else {
            name = format!("{name}.{p}");
        }
    }
    (!name.is_empty()).then_some(name)
}

/// A value name made readable as a layer name: `/Relu_output_0` → `Relu`.
fn clean(value: &str) -> String {
    let v = value.trim_start_matches('/');
    let v = v.strip_suffix("_output_0").unwrap_or(v);
    v.replace('/', ".")
}

/// A node's attributes by name.
struct Attrs<'a>(&'a [AttributeProto]);

impl Attrs<'_> {
    fn get(&self, name: &str) -> Option<&AttributeProto> {
        self.0.iter().find(|a| a.name == name)
    }
    fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).map_or(default, |a| a.i)
    }
    fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).map_or(default, |a| a.f)
    }
    fn string(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }
}

/// A `Resize` (or `Upsample`) node's interpolation: nearest, or linear with the coordinates of
/// PyTorch's `align_corners = False` (`half_pixel`, `pytorch_half_pixel`: the same for the
/// whole-number scales squeeze takes) or `align_corners = True`. The legacy `Upsample` node
/// interpolates with `asymmetric` coordinates, which PyTorch's bilinear does not.
fn resize_mode(node: &NodeProto, a: &Attrs) -> NodeResult<(UpsampleMode, bool)> {
    let mode = a.string("mode").unwrap_or_else(|| "nearest".into());
    if mode == "nearest" {
        return Ok((UpsampleMode::Nearest, false));
    }
    if mode != "linear" {
        return Err(format!(
            "mode = \"{mode}\"; squeeze upsamples with nearest neighbours or linearly"
        ));
    }
    let coordinates = match node.op_type.as_str() {
        "Upsample" => "asymmetric".into(),
        _ => a
            .string("coordinate_transformation_mode")
            .unwrap_or_else(|| "half_pixel".into()),
    };
    match coordinates.as_str() {
        "half_pixel" | "pytorch_half_pixel" => Ok((UpsampleMode::Bilinear, false)),
        "align_corners" => Ok((UpsampleMode::Bilinear, true)),
        other => Err(format!(
            "linear resize with coordinate_transformation_mode = \"{other}\"; squeeze interpolates as PyTorch's bilinear (half_pixel, pytorch_half_pixel or align_corners)"
        )),
    }
}

/// A two-value spatial attribute (`strides`, `dilations`), `default` in both when absent.
fn pair(a: &Attrs, name: &str, default: usize) -> NodeResult<Pair> {
    match a.get(name) {
        None => Ok(Pair::Same(default)),
        Some(x) => to_pair(name, &x.ints),
    }
}

fn to_pair(name: &str, v: &[i64]) -> NodeResult<Pair> {
    match v {
        [h, w] if *h > 0 && *w > 0 => Ok(if h == w {
            Pair::Same(*h as usize)
        } else {
            Pair::HW([*h as usize, *w as usize])
        }),
        _ => Err(format!(
            "{name} = {v:?}, expected two positive values (a 2-D operation)"
        )),
    }
}

/// ONNX's `pads` (`[top, left, bottom, right]`) as squeeze's symmetric padding.
fn pads(a: &Attrs) -> NodeResult<Pair> {
    match a.string("auto_pad").as_deref() {
        None | Some("NOTSET") | Some("VALID") | Some("") => {}
        Some(other) => {
            return Err(format!("auto_pad = \"{other}\"; export with explicit pads"));
        }
    }
    let Some(p) = a.get("pads") else {
        return Ok(Pair::Same(0));
    };
    match p.ints[..] {
        [t, l, b, r] if t == b && l == r && t >= 0 && l >= 0 => Ok(if t == l {
            Pair::Same(t as usize)
        } else {
            Pair::HW([t as usize, l as usize])
        }),
        _ => Err(format!(
            "pads = {:?}; squeeze pads both sides of an axis alike",
            p.ints
        )),
    }
}

/// Only explicit pads (`auto_pad` unset or `VALID`) are read.
fn auto_pad(a: &Attrs) -> NodeResult<()> {
    match a.string("auto_pad").as_deref() {
        None | Some("NOTSET") | Some("VALID") | Some("") => Ok(()),
        Some(other) => Err(format!("auto_pad = \"{other}\"; export with explicit pads")),
    }
}

/// A `Constant` node's value: `value`, `value_float(s)` or `value_int(s)`.
fn constant_node(node: &NodeProto, a: &Attrs) -> NodeResult<TensorProto> {
    let tensor = |dims: Vec<i64>, data_type: i32| TensorProto {
        dims,
        data_type,
        ..Default::default()
    };
    if let Some(t) = a.get("value").and_then(|x| x.t.clone()) {
        return Ok(t);
    }
    if let Some(x) = a.get("value_float") {
        return Ok(TensorProto {
            float_data: vec![x.f],
            ..tensor(vec![], data_type::FLOAT)
        });
    }
    if let Some(x) = a.get("value_floats") {
        return Ok(TensorProto {
            float_data: x.floats.clone(),
            ..tensor(vec![x.floats.len() as i64], data_type::FLOAT)
        });
    }
    if let Some(x) = a.get("value_int") {
        return Ok(TensorProto {
            int64_data: vec![x.i],
            ..tensor(vec![], data_type::INT64)
        });
    }
    if let Some(x) = a.get("value_ints") {
        return Ok(TensorProto {
            int64_data: x.ints.clone(),
            ..tensor(vec![x.ints.len() as i64], data_type::INT64)
        });
    }
    let names: Vec<_> = node.attribute.iter().map(|x| x.name.as_str()).collect();
    Err(format!(
        "a constant given as {names:?}; squeeze reads value, value_float(s) and value_int(s)"
    ))
}

fn dims(t: &TensorProto) -> NodeResult<Vec<usize>> {
    t.dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("tensor \"{}\": dimension {d}", t.name)))
        .collect()
}

fn count(t: &TensorProto) -> Result<usize, String> {
    t.dims.iter().try_fold(1usize, |n, &d| {
        usize::try_from(d)
            .ok()
            .and_then(|d| n.checked_mul(d))
            .ok_or_else(|| format!("shape {:?} is not valid", t.dims))
    })
}

fn is_external(t: &TensorProto) -> bool {
    t.data_location == 1 || !t.external_data.is_empty()
}

fn external(t: &TensorProto) -> Result<(), String> {
    if is_external(t) {
        return Err("its data is in an external file that was not read".into());
    }
    Ok(())
}

/// The initializers stored outside the model file (`location`, `offset`, `length` relative to
/// the model's directory, as `torch.onnx.export` writes large models), read into `raw_data`;
/// and the problems reading them.
fn external_data<'g>(
    path: &Path,
    graph: &'g GraphProto,
) -> (HashMap<&'g str, TensorProto>, Vec<String>) {
    use std::io::{Read, Seek, SeekFrom};
    let dir = crate::files::directory_of(path);
    let mut loaded = HashMap::new();
    let mut problems = Vec::new();
    for t in graph.initializer.iter().filter(|t| is_external(t)) {
        let entry = |key: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == key)
                .map(|e| e.value.as_str())
        };
        let read = || -> Result<Vec<u8>, String> {
            let location = entry("location").ok_or("no location")?;
            let number = |key: &str| -> Result<Option<u64>, String> {
                entry(key)
                    .map(|v| v.parse::<u64>().map_err(|_| format!("{key} = \"{v}\"")))
                    .transpose()
            };
            let (offset, length) = (number("offset")?.unwrap_or(0), number("length")?);
            let relative = Path::new(location);
            if relative.is_absolute()
                || relative
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(format!(
                    "location \"{location}\" is outside the model's directory"
                ));
            }
            let file = dir.join(relative);
            let io = |e: std::io::Error| format!("{}: {e}", file.display());
            let (mut f, size) = crate::files::open_regular(&file).map_err(|e| e.to_string())?;
            let n = count(t)? as u64
                * match t.data_type {
                    data_type::DOUBLE | data_type::INT64 => 8,
                    data_type::FLOAT16 | data_type::BFLOAT16 => 2,
                    _ => 4,
                };
            let length = length.unwrap_or(n);
            if offset.checked_add(length).is_none_or(|end| end > size) {
                return Err(format!(
                    "{}: {length} bytes at offset {offset} go past its end ({size} bytes)",
                    file.display()
                ));
            }
            let len = usize::try_from(length).map_err(|_| format!("length {length}"))?;
            crate::limits::check_memory("an external tensor", Some(u128::from(length)))
                .map_err(|e| e.to_string())?;
            let mut raw = vec![0u8; len];
            f.seek(SeekFrom::Start(offset)).map_err(io)?;
            f.read_exact(&mut raw).map_err(io)?;
            Ok(raw)
        };
        match read() {
            Ok(raw) => {
                let mut owned = t.clone();
                owned.raw_data = raw;
                owned.external_data.clear();
                owned.data_location = 0;
                loaded.insert(t.name.as_str(), owned);
            }
            Err(e) => problems.push(format!("initializer \"{}\": external data: {e}", t.name)),
        }
    }
    (loaded, problems)
}

/// `raw` as `n` little-endian values of `N` bytes each, each read by `read`.
fn le_values<const N: usize, T>(
    raw: &[u8],
    n: usize,
    read: impl Fn([u8; N]) -> T,
) -> Result<Vec<T>, String> {
    if raw.len() != n * N {
        return Err(format!(
            "{} bytes of data for {n} values of {N} bytes",
            raw.len()
        ));
    }
    Ok(raw
        .chunks_exact(N)
        .map(|c| {
            let mut b = [0u8; N];
            b.copy_from_slice(c);
            read(b)
        })
        .collect())
}

/// A tensor's values as f32 (from FLOAT, FLOAT16, BFLOAT16 or DOUBLE data).
fn floats(t: &TensorProto) -> Result<Vec<f32>, String> {
    external(t)?;
    let n = count(t)?;
    let raw = &t.raw_data;
    let v: Vec<f32> = match t.data_type {
        data_type::FLOAT if !raw.is_empty() => le_values(raw, n, f32::from_le_bytes)?,
        data_type::FLOAT => t.float_data.clone(),
        data_type::DOUBLE if !raw.is_empty() => {
            le_values(raw, n, |b| f64::from_le_bytes(b) as f32)?
        }
        data_type::DOUBLE => t.double_data.iter().map(|&x| x as f32).collect(),
        data_type::FLOAT16 | data_type::BFLOAT16 => {
            let bits: Vec<u16> = if raw.is_empty() {
                t.int32_data.iter().map(|&x| x as u16).collect()
            } else {
                le_values(raw, n, u16::from_le_bytes)?
            };
            if t.data_type == data_type::FLOAT16 {
                bits.iter()
                    .map(|&b| half::f16::from_bits(b).to_f32())
                    .collect()
            } else {
                bits.iter()
                    .map(|&b| half::bf16::from_bits(b).to_f32())
                    .collect()
            }
        }
        data_type::INT64 | data_type::INT32 => ints(t)?.iter().map(|&x| x as f32).collect(),
        other => {
            return Err(format!(
                "element type {}, expected FLOAT, FLOAT16, BFLOAT16 or DOUBLE",
                data_type::name(other)
            ));
        }
    };
    if v.len() != n {
        return Err(format!("{} values for shape {:?}", v.len(), t.dims));
    }
    Ok(v)
}

/// A tensor's values as integers (INT64 or INT32 data).
fn ints(t: &TensorProto) -> Result<Vec<i64>, String> {
    external(t)?;
    let n = count(t)?;
    let raw = &t.raw_data;
    let v: Vec<i64> = match t.data_type {
        data_type::INT64 if !raw.is_empty() => le_values(raw, n, i64::from_le_bytes)?,
        data_type::INT64 => t.int64_data.clone(),
        data_type::INT32 if !raw.is_empty() => {
            le_values(raw, n, |b| i64::from(i32::from_le_bytes(b)))?
        }
        data_type::INT32 => t.int32_data.iter().map(|&x| i64::from(x)).collect(),
        other => {
            return Err(format!(
                "element type {}, expected INT64 or INT32",
                data_type::name(other)
            ));
        }
    };
    if v.len() != n {
        return Err(format!("{} values for shape {:?}", v.len(), t.dims));
    }
    Ok(v)
}

/// A constant converted to FLOAT or INT64 (a `Cast` of a constant).
fn cast(t: &TensorProto, to: i32) -> Result<TensorProto, String> {
    let base = TensorProto {
        dims: t.dims.clone(),
        data_type: to,
        name: t.name.clone(),
        ..Default::default()
    };
    match to {
        data_type::FLOAT => Ok(TensorProto {
            float_data: floats(t)?,
            ..base
        }),
        data_type::INT64 => Ok(TensorProto {
            int64_data: match t.data_type {
                data_type::INT64 | data_type::INT32 => ints(t)?,
                _ => floats(t)?.iter().map(|&v| v as i64).collect(),
            },
            ..base
        }),
        other => Err(format!(
            "cast to {}; squeeze reads FLOAT and INT64 constants",
            data_type::name(other)
        )),
    }
}

/// A constant 2-D matrix: rows, columns and row-major values.
fn matrix(name: &str, t: &TensorProto) -> NodeResult<(usize, usize, Vec<f32>)> {
    let d = dims(t)?;
    let [rows, cols] = d[..] else {
        return Err(format!(
            "weight \"{name}\" has shape {d:?}, expected a matrix"
        ));
    };
    let v = floats(t).map_err(|e| format!("tensor \"{name}\": {e}"))?;
    Ok((rows, cols, v))
}

/// The `rows × cols` row-major `m` transposed.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

/// Builders for ONNX graphs in tests: the messages squeeze reads, encoded as an exporter
/// would write them.
pub mod build {
    pub use super::proto::*;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_names_follow_the_module_path() {
        assert_eq!(
            scope_name("/layer1/layer1.0/conv1/Conv").as_deref(),
            Some("layer1.0.conv1")
        );
        assert_eq!(scope_name("/fc/Gemm").as_deref(), Some("fc"));
        assert_eq!(scope_name("/Relu"), None);
        assert_eq!(scope_name("node_relu"), None);
        assert_eq!(clean("/Relu_output_0"), "Relu");
    }

    #[test]
    fn transposes() {
        assert_eq!(
            transpose(&[1., 2., 3., 4., 5., 6.], 2, 3),
            vec![1., 4., 2., 5., 3., 6.]
        );
    }
}
