//! Errors raised by tensor construction, casts and `.npy`/`.npz` I/O.

use crate::DType;

/// Everything that can go wrong inside `lowbit-tensor`.
#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    #[error("shape {shape:?} holds {expected} elements but {actual} were given")]
    ElementCount { shape: Vec<usize>, expected: usize, actual: usize },
    #[error("expected a {expected} tensor, found {actual}")]
    DType { expected: DType, actual: DType },
    #[error("unsupported element type {0}")]
    Unsupported(String),
    #[error("{path}: {msg}")]
    Npy { path: String, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, TensorError>;
