//! Errors of quantization-aware training: each names the node, tensor or setting at fault.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TrainError {
    /// An op the autodiff has no backward pass for (or a form of it that it does not support).
    #[error("node '{node}' ({op_type}): {msg}")]
    Node { node: String, op_type: String, msg: String },
    /// A value the graph reads that nothing produces.
    #[error("value '{0}' is read but neither fed, an initializer nor produced by a node")]
    MissingValue(String),
    #[error("invalid QAT setting: {0}")]
    Config(String),
    #[error("training diverged: the loss became {0} (try a smaller --lr)")]
    Diverged(f32),
    #[error(transparent)]
    Quant(#[from] lowbit_quant::QuantError),
    #[error(transparent)]
    Onnx(#[from] lowbit_onnx::OnnxError),
    #[error(transparent)]
    Graph(#[from] lowbit_onnx::graph::GraphError),
    #[error(transparent)]
    Tensor(#[from] lowbit_tensor::TensorError),
    #[error(transparent)]
    Engine(#[from] lowbit_engine::EngineError),
}

pub type Result<T> = std::result::Result<T, TrainError>;
