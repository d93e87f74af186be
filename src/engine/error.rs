//! The engine's errors.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("layer {layer}: {msg}")]
    Invalid { layer: String, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: tensor \"{tensor}\": {msg}")]
    Corrupt {
        path: PathBuf,
        tensor: String,
        msg: String,
    },
    #[error("cannot serialize the compressed model: {0}")]
    Serialize(#[from] crate::files::SerializeError),
    #[error(transparent)]
    File(#[from] crate::files::FileError),
}
