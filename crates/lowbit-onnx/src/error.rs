//! The error type of `lowbit-onnx`: every variant names the file or tensor it is about.

use std::path::PathBuf;

/// Everything that can go wrong reading, writing or converting ONNX data.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The bytes are not a protobuf `ModelProto`. `path` is `<memory>` for in-memory input.
    #[error("{}: not a valid ONNX model: {source}", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: prost::DecodeError,
    },

    /// The bytes decoded (protobuf is lenient) but hold no graph: almost surely not ONNX.
    #[error("{}: no graph: not an ONNX model?", path.display())]
    NoGraph { path: PathBuf },

    /// A tensor stored outside the model points at a file that cannot be opened.
    #[error("tensor '{tensor}': external data file {} cannot be read: {source}", path.display())]
    ExternalDataMissing {
        tensor: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The external data file is shorter than the tensor's `offset` + `length` say.
    #[error(
        "tensor '{tensor}': external data file {} is truncated: needs bytes {offset}..{end}, \
         the file has {file_len}",
        path.display()
    )]
    ExternalDataTruncated { tensor: String, path: PathBuf, offset: u64, end: u64, file_len: u64 },

    /// The `external_data` entries are malformed (no location, bad number, unsafe path).
    #[error("tensor '{tensor}': bad external data reference: {msg}")]
    ExternalDataInvalid { tensor: String, msg: String },

    /// External data can only be resolved relative to a model file.
    #[error(
        "tensor '{tensor}' keeps its data in an external file: load the model from its path \
         (load_model) or call load_external_data with the model's directory"
    )]
    ExternalDataWithoutDir { tensor: String },

    /// A tensor's contents do not match its type and shape.
    #[error("tensor '{tensor}': {msg}")]
    Tensor { tensor: String, msg: String },

    /// An ONNX element type lowbit cannot hold.
    #[error("unsupported ONNX data type {name} ({id})")]
    UnsupportedDType { id: i32, name: &'static str },

    /// The model exceeds protobuf's 2 GiB limit even after moving tensors to external data.
    #[error(
        "{}: the model would be {size} bytes even with its weights in external data, over \
         protobuf's 2 GiB limit",
        path.display()
    )]
    TooLarge { path: PathBuf, size: u64 },

    /// A caller-supplied argument is unusable (e.g. a data file name with a directory in it).
    #[error("{0}")]
    InvalidArgument(String),
}

/// `Result` with [`OnnxError`].
pub type Result<T> = std::result::Result<T, OnnxError>;

impl OnnxError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> OnnxError {
        OnnxError::Io { path: path.into(), source }
    }

    pub(crate) fn tensor(tensor: &str, msg: impl Into<String>) -> OnnxError {
        OnnxError::Tensor { tensor: tensor.to_string(), msg: msg.into() }
    }
}
