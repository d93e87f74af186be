//! squeeze: explore how far a neural network can be compressed. Load a model and an evaluation
//! set, compress it per layer (pruning, quantization, weight sharing) into real packed formats,
//! run it on kernels made for those formats, and measure accuracy, size and latency.

pub mod cli;
pub mod compress;
pub mod data;
pub mod engine;
pub mod explore;
pub mod files;
pub mod limits;
pub mod measure;
pub mod model;
pub mod report;
pub mod train;
pub mod tui;
pub mod units;
