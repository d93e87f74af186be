//! The engine: what a compressed layer stores and how it runs, kept apart.
//!
//! - Stored (`format.rs`, `encode.rs`, `pack.rs`, `export.rs`): `PackedLayer`, a layer's exact
//!   bytes — how its kept positions are indexed (dense, CSR with narrow relative column gaps,
//!   bitmask) and how its values are stored (f32/f16/bf16, bit-packed uniform codes with scales
//!   and zero points, codebooks) — chosen as the smallest valid encoding, validated when read,
//!   exported to and reloaded from safetensors with each layer described in the architecture
//!   schema's words (`desc.rs`; `legacy.rs` reads the descriptors of older files).
//! - Run (`kernels/`, `gemm.rs`, `ops.rs`, `model.rs`): each layer prepared once, when the
//!   `CompressedModel` is assembled, into execution variants with layouts of their own (row
//!   blocks, bit planes, gathered columns, matrix panels, 8-bit panels) on kernels chosen for
//!   this CPU (`cpu.rs`), never stored.
//! - Timing (`timing.rs`): latency, throughput, FMA peak.
//!
//! Sizes are the exact bytes of the packed tensors; latency is measured on kernels that read
//! the packed data (or layouts derived from it), never on dense tensors with masks.

mod cpu;
mod desc;
mod encode;
mod error;
mod export;
mod format;
pub mod gemm;
pub mod kernels;
mod legacy;
mod model;
mod ops;
pub mod pack;
mod simd;
mod timing;

pub use cpu::force_portable;
pub use desc::{FormatDesc, IndexDesc, LayerDesc, ValuesDesc};
pub use error::EngineError;
pub use export::{
    FORMAT_KEY, FORMAT_VALUE, LAYERS_KEY, RECIPE_KEY, is_compressed_file, load_compressed,
};
pub use format::{IndexKind, Indexing, PackedLayer, RowPtr, SizeBreakdown, ValueStore, ZeroPoints};
pub use kernels::{KernelScratch, LayerKernels, Work, fake_quantize, quantize_centered};
pub use model::{CHUNK, CompressedModel, Prepared, Scratch, Step};
pub use ops::{ConvShape, PoolShape, im2col};
pub use timing::{
    LatencyStats, fma_peak_gflops, latency, latency_pair, latency_pair_with, latency_with,
    layer_times, throughput,
};
