//! Engine errors: every variant names the node, op type or input it is about.

use lowbit_onnx::attr::AttrError;
use lowbit_tensor::{DType, TensorError};

/// An error raised inside one op, before the session adds the node's name to it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OpError(pub String);

impl OpError {
    pub fn new(msg: impl Into<String>) -> Self {
        OpError(msg.into())
    }
}

impl From<TensorError> for OpError {
    fn from(e: TensorError) -> Self {
        OpError(e.to_string())
    }
}

impl From<AttrError> for OpError {
    fn from(e: AttrError) -> Self {
        OpError(e.msg.clone()).with_attr(&e.attr)
    }
}

impl From<lowbit_onnx::OnnxError> for OpError {
    fn from(e: lowbit_onnx::OnnxError) -> Self {
        OpError(e.to_string())
    }
}

impl OpError {
    fn with_attr(self, attr: &str) -> Self {
        OpError(format!("attribute '{attr}' {}", self.0))
    }
}

/// Shorthand for returning an [`OpError`] from a kernel.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::OpError::new(format!($($arg)*))) };
}

pub type OpResult<T> = std::result::Result<T, OpError>;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("node '{node}': op {op_type}{} is not supported by lowbit's engine", domain_suffix(.domain))]
    UnsupportedOp { node: String, op_type: String, domain: String },
    #[error("node '{node}' ({op_type}): {msg}")]
    Node { node: String, op_type: String, msg: String },
    #[error("missing input '{name}': the model needs {expected}")]
    MissingInput { name: String, expected: String },
    #[error("unknown input '{name}': the model's inputs are {known}")]
    UnknownInput { name: String, known: String },
    #[error("input '{name}': expected {expected}, got {actual}")]
    InputDType { name: String, expected: DType, actual: DType },
    #[error("input '{name}': expected shape {expected}, got {actual:?}")]
    InputShape { name: String, expected: String, actual: Vec<usize> },
    #[error("graph: {0}")]
    Graph(String),
    #[error(transparent)]
    Onnx(#[from] lowbit_onnx::OnnxError),
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

fn domain_suffix(domain: &str) -> String {
    if domain.is_empty() || domain == "ai.onnx" {
        String::new()
    } else {
        format!(" (domain {domain})")
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;
