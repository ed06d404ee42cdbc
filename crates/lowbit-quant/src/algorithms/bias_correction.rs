//! Bias correction (placeholder: the algorithm is being written; the driver already calls
//! [`bias_correction`] with its final signature).

use super::{StepContext, StepReport};
use crate::calibrate::CalibrationTable;
use crate::config::BiasCorrection;
use crate::error::{QuantError, Result};
use lowbit_onnx::graph::Graph;

/// Removes the per-channel mean shift quantization adds to each layer's output of `q` (the QDQ
/// graph made from `fp32`), measured on `ctx.samples` (empirical) or derived from the weights'
/// rounding error and the input's calibrated statistics (analytic).
pub fn bias_correction(
    _fp32: &Graph,
    _q: &mut Graph,
    _kind: BiasCorrection,
    _table: &CalibrationTable,
    _ctx: &mut StepContext,
) -> Result<StepReport> {
    Err(QuantError::Config("--bias-correction is not available yet".into()))
}
