//! Why a comparison could not be made.

use lowbit_engine::EngineError;

/// Why a comparison could not be made; every variant names the tensor or node concerned.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// A model without a graph, or with a cycle.
    #[error("{model} model: {msg}")]
    Model { model: &'static str, msg: String },
    /// A tensor the quantized model quantizes (or outputs) is not in the FP32 model.
    #[error(
        "tensor '{tensor}' ({node} in the quantized model) does not exist in the FP32 model: \
         were both made from the same FP32 file?"
    )]
    MissingInFp32 { tensor: String, node: String },
    #[error(
        "no quantized tensor found: no QuantizeLinear of the quantized model reads an FP32 \
         activation and no DequantizeLinear reads an initializer (is it a QDQ model?)"
    )]
    NoQuantizedTensor,
    /// A Q/DQ node whose parameters cannot be read (not constant, or a layout not handled).
    #[error("node '{node}' ({op_type}) of the quantized model: {msg}")]
    QuantNode { node: String, op_type: String, msg: String },
    /// A quantized weight without a matching FP32 initializer, or of another size.
    #[error("weight '{weight}' (input {slot} of node '{node}'): {msg}")]
    Weight { weight: String, node: String, slot: usize, msg: String },
    /// A tensor that cannot be compared (not numeric, sizes differ, never produced).
    #[error("tensor '{tensor}': {msg}")]
    Tensor { tensor: String, msg: String },
    /// The engine failed to load or run one of the models (the error names the node).
    #[error("{model} model: {source}")]
    Engine {
        model: &'static str,
        #[source]
        source: EngineError,
    },
    /// The first model is quantized and the second is not: the FP32 model goes first.
    #[error("{}", swapped_message(.first, .second, *.nodes))]
    Swapped {
        /// The models' names as given (may be empty).
        first: String,
        second: String,
        /// Quantization nodes (QuantizeLinear, DequantizeLinear, QLinear…) in the first model.
        nodes: usize,
    },
    #[error("no samples to compare")]
    NoSamples,
}

fn swapped_message(first: &str, second: &str, nodes: usize) -> String {
    let named = |which: &str, name: &str| {
        if name.is_empty() {
            format!("the {which} model")
        } else {
            format!("the {which} model ('{name}')")
        }
    };
    format!(
        "the models are in the wrong order: {} has {nodes} quantization node{} and {} has none; \
         give the FP32 model first, then its quantized version",
        named("first", first),
        if nodes == 1 { "" } else { "s" },
        named("second", second)
    )
}

pub(super) type Result<T> = std::result::Result<T, CompareError>;
