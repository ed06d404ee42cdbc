//! The quantizer's one error type: every variant says which scheme, range or tensor it is about.

use lowbit_kernels::quantize::QuantizeError;

/// Everything that can go wrong inside `lowbit-quant`.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// A scheme that cannot be used as asked (bad axis, block size 0, asymmetric float8…).
    #[error("quantization scheme: {0}")]
    Scheme(String),
    /// A range bound that is NaN or infinite: no finite scale can represent it.
    #[error("{what}: range [{min}, {max}] is not finite")]
    NonFiniteRange { what: String, min: f32, max: f32 },
    /// NaN or ±inf in observed data. `tensor` is empty until the calibrator names it.
    #[error("tensor '{tensor}'{}: {value} at element {index}; calibration data must be finite", sample_text(.sample))]
    NonFiniteData { tensor: String, sample: Option<u64>, index: usize, value: f32 },
    /// Parameters that do not fit a tensor, or a type the math core does not handle.
    #[error("quantize: {0}")]
    Quantize(#[from] QuantizeError),
    #[error(transparent)]
    Tensor(#[from] lowbit_tensor::TensorError),
    #[error(transparent)]
    Engine(#[from] lowbit_engine::EngineError),
    /// A calibration table that cannot be written, read or parsed.
    #[error("calibration table {path}: {msg}")]
    Table { path: String, msg: String },
    /// Finishing a calibration that never saw any data.
    #[error("calibration saw no data{0}")]
    NoData(String),
    /// A graph edit failed (the error names the node or value).
    #[error(transparent)]
    Graph(#[from] lowbit_onnx::graph::GraphError),
    /// An initializer or model that cannot be decoded or encoded.
    #[error(transparent)]
    Onnx(#[from] lowbit_onnx::OnnxError),
    /// A node a quantization pass cannot handle as asked.
    #[error("node {node} ({op_type}): {msg}")]
    Node { node: String, op_type: String, msg: String },
    /// Static quantization needs a range for a tensor the calibration table does not hold.
    #[error("tensor '{tensor}' has no range in the calibration table: calibrate this model (the FP32 original) again")]
    MissingRange { tensor: String },
    /// Options that contradict each other or the model.
    #[error("calibration needs every value the model computes, but this session fused {0} at load: plan it with SessionOptions::unfused")]
    FusedSession(String),

    /// Calibration data the pipeline cannot feed (its error names the file, input or sample).
    #[error(transparent)]
    Data(#[from] lowbit_data::DataError),
    /// NaN or ±inf in the data fed to calibration.
    #[error("calibration data: {0}; calibration data must be finite")]
    NonFiniteInput(lowbit_data::DataError),
    /// An engine run during calibration failed; `samples` names what it was fed.
    #[error("calibration run on {samples} failed")]
    CalibrationRun {
        samples: String,
        #[source]
        source: Box<QuantError>,
    },

    #[error("quantize config: {0}")]
    Config(String),
    /// The input model is already quantized (the quantized ops it holds, counted).
    #[error("the model is already quantized ({0}): quantize its FP32 original instead")]
    AlreadyQuantized(String),
}

fn sample_text(s: &Option<u64>) -> String {
    s.map(|s| format!(" (sample {s})")).unwrap_or_default()
}

impl QuantError {
    /// Names the tensor (and the sample) a [`QuantError::NonFiniteData`] was found in.
    pub fn in_tensor(self, name: &str, sample: u64) -> QuantError {
        match self {
            QuantError::NonFiniteData { index, value, .. } => QuantError::NonFiniteData {
                tensor: name.to_string(),
                sample: Some(sample),
                index,
                value,
            },
            other => other,
        }
    }
}

pub type Result<T> = std::result::Result<T, QuantError>;
