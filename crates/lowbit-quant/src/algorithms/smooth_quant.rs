//! SmoothQuant (placeholder: the algorithm is being written; the driver already calls
//! [`smooth_quant`] with its final signature).

use super::{StepContext, StepReport};
use crate::error::{QuantError, Result};
use lowbit_onnx::graph::Graph;

/// Migrates activation outliers of MatMul/Gemm inputs into their weights with strength
/// `alpha`, measuring per-channel activation maxima on `ctx.samples`; the graph's function is
/// unchanged.
pub fn smooth_quant(_g: &mut Graph, _alpha: f32, _ctx: &mut StepContext) -> Result<StepReport> {
    Err(QuantError::Config("--smooth-quant is not available yet".into()))
}
