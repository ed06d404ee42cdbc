//! Accuracy-recovery algorithms, each a pass over the graph with calibration samples, run by
//! [`crate::quantize`] in this order (static mode):
//!
//! | step | module | when | paper |
//! |---|---|---|---|
//! | cross-layer equalization | [`equalize`] | FP32 graph, before calibration | Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction" |
//! | SmoothQuant | [`smooth_quant`] | FP32 graph, before calibration | Xiao et al. 2023, "SmoothQuant" |
//! | AdaRound | [`adaround`] | after Q/DQ insertion: weight codes | Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization" |
//! | bias correction | [`bias_correction`] | after AdaRound: biases | Nagel et al. 2019 (empirical and analytic) |
//!
//! Each returns a [`StepReport`] saying what it changed, per layer where it measures
//! something (before → after), which the summary and the compare report show.

pub mod adaround;
pub mod bias_correction;
pub mod equalize;
pub mod smooth_quant;
#[cfg(test)]
pub(crate) mod test_graphs;

use crate::samples::{Progress, SampleSource};
use serde::{Deserialize, Serialize};

/// What the data-driven steps run with.
pub struct StepContext<'a> {
    /// The samples (calibration data), replayed once per pass.
    pub samples: Option<&'a mut dyn SampleSource>,
    /// Engine worker threads (0: one per core).
    pub threads: usize,
    pub progress: &'a dyn Progress,
}

/// One layer's figure of merit before and after a step (e.g. output MSE, mean shift, weight
/// range ratio).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerChange {
    pub node: String,
    /// What `before`/`after` measure, with its unit.
    pub metric: String,
    pub before: f64,
    pub after: f64,
}

/// What one algorithm did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// The step's name (`equalize`, `smooth-quant`, `adaround`, `bias-correction`).
    pub step: String,
    pub seconds: f64,
    /// One line for the summary.
    pub summary: String,
    pub layers: Vec<LayerChange>,
}

/// Stores `t` as initializer `name` when node `reader` is its only reader (and it is no graph
/// input or output), else as a new initializer named after it, so another reader keeps the old
/// value; returns the name `reader` must read.
pub(crate) fn store_initializer(
    g: &mut lowbit_onnx::graph::Graph,
    name: &str,
    reader: usize,
    t: lowbit_tensor::Tensor,
) -> String {
    if g.consumers(name) == [reader] && !g.is_graph_output(name) && !g.is_graph_input(name) {
        g.add_initializer(lowbit_onnx::tensor_to_proto(name, &t));
        name.to_string()
    } else {
        crate::passes::add_init(g, &format!("{name}_rewritten"), &t)
    }
}
