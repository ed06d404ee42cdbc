//! Cross-layer equalization (placeholder: the algorithm is being written; the driver already
//! calls [`equalize`] with its final signature).

use super::StepReport;
use crate::error::{QuantError, Result};
use lowbit_onnx::graph::Graph;

/// Equalizes the weight ranges of consecutive convolutions in the FP32 graph `g`
/// (BatchNormalization already folded); the graph's function is unchanged.
pub fn equalize(_g: &mut Graph) -> Result<StepReport> {
    Err(QuantError::Config("--equalize is not available yet".into()))
}
