//! The comparison's data model: what `lowbit compare --json` writes (`docs/json.md`) and what
//! the HTML report draws.

use crate::metrics::Noise;
use serde::{Deserialize, Serialize};

/// The report's `format` value.
pub const FORMAT: &str = "lowbit-compare/1";

/// Bins of each activation's histogram.
pub const HISTOGRAM_BINS: usize = 64;

/// Everything `lowbit compare` measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompareReport {
    /// `"lowbit-compare/1"`.
    pub format: String,
    pub fp32_model: String,
    pub quant_model: String,
    /// Samples compared: rows along axis 0 of the inputs the FP32 model declares with a shape
    /// (lowbit's batching convention), summed over the runs; one per run when no input has a
    /// declared shape.
    pub samples: usize,
    /// Runs of both models (a run feeds one batch of samples).
    #[serde(default)]
    pub runs: usize,
    /// Graph outputs: noise of the quantized model's outputs against FP32's.
    pub outputs: Vec<TensorNoise>,
    /// Every quantized activation, in graph (topological) order of the FP32 model.
    pub activations: Vec<ActivationNoise>,
    /// Every quantized weight.
    pub weights: Vec<WeightNoise>,
    /// The worst layers first, each with a hint.
    pub ranking: Vec<RankedLayer>,
    /// What lowbit did to make the quantized model (its plan and each accuracy-recovery
    /// step, per layer before → after), when lowbit made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<lowbit_quant::quantize::QuantizeSummary>,
}

/// Noise of one graph output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorNoise {
    pub name: String,
    pub noise: Noise,
}

/// One quantized activation tensor (matched by name between the two models).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivationNoise {
    /// The FP32 tensor's name.
    pub tensor: String,
    /// The node that produces it in the FP32 model, and its op type ("" for graph inputs).
    pub producer: String,
    pub producer_op: String,
    /// Position in the FP32 model's topological order (for charts in graph order): 0 for a
    /// graph input, `1 + i` for the output of the `i`-th node.
    pub order: usize,
    /// The quantized model's parameters for it (per-tensor scale and zero point, value type).
    pub scale: f32,
    pub zero_point: i32,
    pub value_type: String,
    /// Running the whole quantized model: FP32 tensor vs its dequantized counterpart.
    pub accumulated: Noise,
    /// Only this tensor quantized (the FP32 activation through its own Q/DQ).
    pub isolated: Noise,
    /// Fraction of FP32 values outside the representable range `[(qmin − zp)·s, (qmax −
    /// zp)·s]` (saturated), 0..1. Values within half a step of the range round onto its end
    /// code anyway and are not counted (integer types). For a tensor read only by a
    /// Relu/Clip, counted after that clamp (see the [module docs](super)), like both noises.
    pub clip_rate: f64,
    /// FP32 values observed (before any clamp): extremes and a histogram for the report. The
    /// histogram's window is the representable range widened by half its width on each side;
    /// values beyond the window are counted in the end bins.
    pub min: f32,
    pub max: f32,
    pub histogram: Histogram,
}

/// A fixed-bin histogram over `[lo, hi]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub lo: f32,
    pub hi: f32,
    pub counts: Vec<u64>,
}

/// One quantized weight (an initializer behind a DequantizeLinear in the quantized model).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightNoise {
    /// The FP32 initializer's name.
    pub weight: String,
    /// The node consuming it and its op type (e.g. "Conv"), and for Conv the group count
    /// (depthwise when it equals the channel count).
    pub node: String,
    pub op_type: String,
    pub group: i64,
    /// Quantization axis (`None`: per tensor) and the value type.
    pub axis: Option<i64>,
    pub value_type: String,
    pub noise: Noise,
    /// Per output channel (axis 0 for Conv and Gemm `transB=1`, axis 1 for Gemm `transB=0`,
    /// the last axis for MatMul, the quantization axis otherwise): min and max of the FP32
    /// weights (BatchNormalization folded in when the quantized model folded it), for the
    /// report's range chart.
    pub channel_min: Vec<f32>,
    pub channel_max: Vec<f32>,
}

/// A layer in the worst-first ranking.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankedLayer {
    /// The FP32 node's name and op type.
    pub node: String,
    pub op_type: String,
    /// The tensor whose noise ranks it (the node's quantized input activation or output).
    pub tensor: String,
    /// Isolated SQNR (dB) of what this layer adds: the lower of its quantized activation
    /// inputs' isolated SQNR and its weight's SQNR in its worst output channel (per-tensor
    /// scales starve small channels, which the weight's pooled `noise` hides).
    #[serde(with = "crate::metrics::finite_or_null")]
    pub sqnr_db: f64,
    /// A concrete suggestion, e.g. "depthwise conv with per-tensor weights: use per-channel".
    pub hint: String,
}
