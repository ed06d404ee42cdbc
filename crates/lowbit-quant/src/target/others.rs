//! Runtimes other than ONNX Runtime: OpenVINO's CPU plugin, TensorRT, and lowbit's own engine.
//!
//! * **OpenVINO** turns each QDQ pair into a `FakeQuantize` and its low-precision
//!   transformations move it onto the inputs of the ops it runs in u8/i8 (VNNI or AVX2 with
//!   its own overflow handling: full 8-bit weights). A `Concat` stays in integers only when its
//!   inputs share one grid (NNCF unifies their scales); 16-bit QDQ stays float. Dynamic
//!   quantization runs op by op in float: lowbit's dynamic MiniLM ran 2.5x slower than FP32.
//! * **TensorRT** runs int8 only, symmetric (zero point 0) for activations and weights, one
//!   scale per activation and per-channel weights on the output-channel axis only; uint8 QDQ
//!   is rejected, and so are the operator format and dynamic quantization (its ONNX parser
//!   reads Q/DQ from opset 13). It fuses a residual `Add` into the convolution before it only
//!   when the Add's other input is quantized too, and keeps a `Concat` in int8 only when its
//!   inputs share one scale.
//! * **lowbit**'s engine is exact for full-range weights on every ISA (AVX2 widens to
//!   `vpmaddwd` where a pair could saturate) and runs every format lowbit and ORT write.

use super::{Support, Target, TargetRules};
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
            symmetric_weights: true,
            strict: true,
            extra_int8_ops: &[],
            quantize_all_inputs: &["Add"],
            shared_grid_inputs: &["Concat"],
            placement_reason: Some(
                "TensorRT fuses a residual Add into the convolution before it only when the \
                 Add's other input is quantized too, and keeps a Concat in int8 only when its \
                 inputs share one scale",
            ),
            dynamic: Support::No(
                "TensorRT's ONNX parser has no DynamicQuantizeLinear/MatMulInteger/ConvInteger \
                 (use --mode static)",
            ),
            operator_format: Support::No(
                "TensorRT's ONNX parser reads the QDQ format only (QuantizeLinear/\
                 DequantizeLinear), not QLinear*/MatMulInteger or com.microsoft ops",
            ),
            min_opset: 13,
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
            symmetric_weights: false,
            strict: false,
            extra_int8_ops: &[],
            quantize_all_inputs: &[],
            shared_grid_inputs: &["Concat"],
            placement_reason: Some(
                "OpenVINO keeps a Concat in integers only when the FakeQuantize on each input \
                 has the same grid (NNCF unifies their scales)",
            ),
            dynamic: Support::Slow(
                "OpenVINO runs DynamicQuantizeLinear + MatMulInteger op by op in float: \
                 lowbit's dynamic MiniLM ran 2.5x slower than its FP32 model there (use --mode \
                 static, or --mode weight-only for smaller weights)",
            ),
            operator_format: Support::Slow(
                "OpenVINO converts QLinear*/MatMulInteger back to float ops with FakeQuantize; \
                 com.microsoft quantized ops may not load (write QDQ)",
            ),
            min_opset: 10,
        },
        // lowbit's engine runs all ONNX Runtime runs (and more), with full-range weights.
        _ => TargetRules {
            reduce_range_weights: false,
            weight_reason:
                "8-bit weights: lowbit's kernels are exact for full-range weights on every ISA",
            ..super::onnxruntime::rules(Target::OrtVnni)
        },
    }
}
