//! ONNX Runtime's CPU provider: QDQ groups fuse into its u8×s8 (and u8×u8) integer kernels
//! (MLAS). On x86 without VNNI, `vpmaddubsw` adds pairs of u8×s8 products in saturating int16:
//! full-range weights overflow it (255·127·2 > 32767), so weights use 7 bits there
//! (`reduce_range`, ORT's own advice). VNNI (`vpdpbusd`) and ARM `sdot`/`udot` accumulate in
//! int32 and need no such cut. Every type, zero point and format lowbit writes runs; besides
//! the common ops, ORT's QDQ selectors fuse lookups (`Sigmoid`, `LeakyRelu`, `Softmax`) and
//! the data movers (`Gather`, `Split`, `Pad`, `Where`).

use super::{Support, Target, TargetRules, ALL_8_16, ALL_WEIGHTS};

/// Ops ONNX Runtime's QDQ transformer runs on 8-bit codes besides the common ones.
const ORT_EXTRA_INT8_OPS: &[&str] = &[
    "Sigmoid",
    "LeakyRelu",
    "HardSigmoid",
    "Softmax",
    "Gather",
    "Split",
    "Pad",
    "Where",
    "ArgMax",
    "InstanceNormalization",
];

pub(super) fn rules(t: Target) -> TargetRules {
    let (reduce, why) = match t {
        Target::OrtAvx2 => (
            true,
            "7-bit weights: ONNX Runtime's AVX2 u8×s8 kernel (vpmaddubsw) saturates int16 pair sums of full-range weights",
        ),
        Target::Arm => (false, "8-bit weights: ARM sdot/udot accumulate in int32"),
        _ => (false, "8-bit weights: VNNI (vpdpbusd) accumulates in int32"),
    };
    TargetRules {
        reduce_range_weights: reduce,
        weight_reason: why,
        activation_types: ALL_8_16,
        symmetric_activations: false,
        weight_types: ALL_WEIGHTS,
        type_reason: None,
        symmetric_weights: false,
        strict: false,
        extra_int8_ops: ORT_EXTRA_INT8_OPS,
        quantize_all_inputs: &[],
        shared_grid_inputs: &[],
        placement_reason: None,
        dynamic: Support::Yes,
        operator_format: Support::Yes,
        min_opset: 10,
    }
}
