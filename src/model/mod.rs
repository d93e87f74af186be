//! Models: the architecture schema (`spec.rs`: one description of every operation), the loaded
//! layer graph (`graph.rs`), the shapes operations take and give (`shape.rs`), loading from
//! safetensors with shape checks and batchnorm folded (`load.rs`), writing (`save.rs`), and the
//! dense f32 forward pass on candle-core (`forward.rs`).

mod forward;
mod graph;
mod load;
pub mod onnx;
mod save;
pub mod shape;
pub mod spec;

pub(crate) use forward::activation;
pub use forward::{ForwardOps, Reference};
pub use graph::{
    Conv2dGeometry, FoldedNorm, Layer, Model, NormParams, Op, ParamJoin, ParamValue, Params,
    Pool2d, Source,
};
pub use load::{
    ARCH_METADATA_KEY, ArchSource, LoadError, Loaded, NamedTensor, TensorSource, build,
    check_input, f32_tensor_bytes, load, load_bytes_with_spec, load_with_arch, sidecar_path,
    tensor_to_f32, to_safetensors_bytes,
};
pub use shape::{LinearTap, ShapeError, adaptive_window, linear_taps, out_shape};
pub use spec::{
    Activation, ArchSpec, InputSpec, LayerSpec, MODEL_INPUT, OpSpec, Pair, UpsampleMode,
};
