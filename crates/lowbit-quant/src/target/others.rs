//! Runtimes other than ONNX Runtime: OpenVINO's CPU plugin, TensorRT, and lowbit's own engine.
//!
//! * OpenVINO turns QDQ pairs into FakeQuantize and runs u8/i8 (VNNI or AVX2 with its own
//!   overflow handling): full 8-bit weights.
//! * TensorRT runs int8 only, symmetric (zero point 0) for activations and weights; uint8 QDQ
//!   is rejected.
//! * lowbit's engine is exact for full-range weights on every ISA (AVX2 widens to `vpmaddwd`
//!   where a pair could saturate).

use super::{Target, TargetRules, ALL_8_16, ALL_WEIGHTS};
use crate::scheme::IntType;

pub(super) fn rules(t: Target) -> TargetRules {
    match t {
        Target::TensorRt => TargetRules {
            reduce_range_weights: false,
            weight_reason: "8-bit weights: TensorRT int8 kernels accumulate in int32",
            activation_types: &[IntType::Int8],
            symmetric_activations: true,
            weight_types: &[IntType::Int8, IntType::Int4],
            type_reason: Some(
                "TensorRT runs symmetric signed quantization only (zero point 0, no uint8)",
            ),
        },
        Target::OpenVino => TargetRules {
            reduce_range_weights: false,
            weight_reason: "8-bit weights: OpenVINO's CPU plugin handles full-range int8",
            activation_types: &[IntType::Uint8, IntType::Int8],
            symmetric_activations: false,
            weight_types: &[IntType::Int8, IntType::Uint8, IntType::Int4, IntType::Uint4],
            type_reason: Some(
                "OpenVINO's CPU plugin runs 8-bit activations (16-bit QDQ stays float)",
            ),
        },
        _ => TargetRules {
            reduce_range_weights: false,
            weight_reason:
                "8-bit weights: lowbit's kernels are exact for full-range weights on every ISA",
            activation_types: ALL_8_16,
            symmetric_activations: false,
            weight_types: ALL_WEIGHTS,
            type_reason: None,
        },
    }
}
