//! AdaRound (placeholder: the algorithm is being written; the driver already calls
//! [`adaround`] with its final signature).

use super::{StepContext, StepReport};
use crate::config::{AdaRoundOptions, QuantPlan};
use crate::error::{QuantError, Result};
use lowbit_onnx::graph::Graph;

/// Chooses the rounding of every quantized weight of `q` (the QDQ graph made from `fp32`) to
/// minimize each layer's output error on `ctx.samples`.
pub fn adaround(
    _fp32: &Graph,
    _q: &mut Graph,
    _plan: &QuantPlan,
    _opts: &AdaRoundOptions,
    _ctx: &mut StepContext,
) -> Result<StepReport> {
    Err(QuantError::Config("--adaround is not available yet".into()))
}
