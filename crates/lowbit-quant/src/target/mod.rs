//! Deployment targets: the runtime and CPU a quantized file is made for, and the rules each one
//! imposes on the quantizer's defaults. One file per target family holds its rules and the
//! reason for each; [`Target::rules`] is the only place the quantizer asks.
//!
//! | target | runtime and CPU | 8-bit weights |
//! |---|---|---|
//! | `ort-avx2` | ONNX Runtime, x86 with AVX2 but no VNNI | 7 bits (`vpmaddubsw` pair sums saturate) |
//! | `ort-vnni` | ONNX Runtime, x86 with AVX-512 VNNI / AVX-VNNI | 8 bits |
//! | `arm` | ONNX Runtime on ARM (`sdot`/`udot`) | 8 bits |
//! | `openvino` | OpenVINO CPU plugin | 8 bits |
//! | `tensorrt` | TensorRT (symmetric int8 only) | 8 bits, symmetric int8 activations |
//! | `lowbit` | lowbit's own engine (exact on every ISA) | 8 bits |
//!
//! `auto` is this CPU under ONNX Runtime ([`Target::detect`]).
//!
//! Beyond weight widths and activation types, each target's [`TargetRules`] say which ops it
//! runs on integer codes, whether weights must be symmetric, where Q/DQ must stand for its
//! fusions (TensorRT's residual `Add`; one grid on a `Concat`'s inputs for TensorRT and
//! OpenVINO), the opset its parser needs, and how it takes dynamic and operator-format
//! quantization. `quantize` obeys them ([`crate::config::QuantPlan::resolve`] and the QDQ
//! pass); [`check`] lints any QDQ model against them.

pub mod check;
mod onnxruntime;
mod others;

use crate::error::{QuantError, Result};
use crate::scheme::IntType;
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// The 8- and 16-bit integer types, for activations (and weights) of targets that take all.
const ALL_8_16: &[IntType] = &[IntType::Uint8, IntType::Int8, IntType::Uint16, IntType::Int16];
/// Every weight type lowbit writes, for targets that take all.
const ALL_WEIGHTS: &[IntType] = &[
    IntType::Int8,
    IntType::Uint8,
    IntType::Int4,
    IntType::Uint4,
    IntType::Int16,
    IntType::Uint16,
];

/// A deployment target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    OrtAvx2,
    OrtVnni,
    Arm,
    #[serde(rename = "openvino")]
    OpenVino,
    #[serde(rename = "tensorrt")]
    TensorRt,
    Lowbit,
}

/// How a runtime takes one kind of quantized graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    Yes,
    /// Runs, but slower than its FP32 model or without integer kernels: said, not refused.
    Slow(&'static str),
    /// The runtime refuses it (its parser or builder fails).
    No(&'static str),
}

/// Ops every runtime here runs on 8-bit codes when Q/DQ stands around them: weighted layers,
/// joins, pools and ops that only move or clamp values.
pub const COMMON_INT8_OPS: &[&str] = &[
    "Conv",
    "ConvTranspose",
    "MatMul",
    "Gemm",
    "Add",
    "Mul",
    "Concat",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Relu",
    "Clip",
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Resize",
];

/// The default-domain opset a `QuantizeLinear`/`DequantizeLinear` of `value` needs (ONNX's
/// operator versions): 10 per tensor, 13 with an `axis` (per channel), 21 for blocked scales
/// and for 4- and 16-bit types.
pub fn qdq_min_opset(value: IntType, per_axis: bool, blocked: bool) -> i64 {
    let narrow_or_wide = !matches!(value, IntType::Int8 | IntType::Uint8);
    if blocked || narrow_or_wide {
        21
    } else if per_axis {
        13
    } else {
        10
    }
}

/// What a target requires of a quantized model, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetRules {
    /// 8-bit weights of integer kernels use 7 bits (ONNX Runtime's `reduce_range`).
    pub reduce_range_weights: bool,
    /// Why the weights have the bit width they have on this target.
    pub weight_reason: &'static str,
    /// Activation types the target runs quantized; the first is the default.
    pub activation_types: &'static [IntType],
    /// Activations must be symmetric (zero point 0).
    pub symmetric_activations: bool,
    /// Weight types the target runs in integer kernels.
    pub weight_types: &'static [IntType],
    /// Why the activation/weight types are restricted, where they are.
    pub type_reason: Option<&'static str>,
    /// Weights must be symmetric (zero point 0) whatever their type.
    pub symmetric_weights: bool,
    /// A file that breaks the type, zero-point or axis rules is refused by the runtime (its
    /// builder fails), not merely run in float: `check` reports such breaks as errors.
    pub strict: bool,
    /// Ops the runtime runs on integer codes when Q/DQ stands around them besides
    /// [`COMMON_INT8_OPS`] (see [`TargetRules::runs_on_codes`]).
    pub extra_int8_ops: &'static [&'static str],
    /// Ops whose float activation inputs must all be quantized for the runtime to fuse them
    /// into the quantized layer before (TensorRT's residual `Add`).
    pub quantize_all_inputs: &'static [&'static str],
    /// Ops whose quantized inputs must share one scale and zero point to stay in integers.
    pub shared_grid_inputs: &'static [&'static str],
    /// Why Q/DQ must stand where the two lists above say.
    pub placement_reason: Option<&'static str>,
    /// Dynamic quantization (`DynamicQuantizeLinear` + `MatMulInteger`/`ConvInteger`).
    pub dynamic: Support,
    /// Operator-format quantized ops (`QLinearConv`, `QLinearMatMul`, `MatMulInteger`, ...)
    /// and `com.microsoft` quantized ops (`QGemm`, `QLinearAdd`, `MatMulNBits`, ...).
    pub operator_format: Support,
    /// The lowest default-domain opset whose Q/DQ the runtime parses.
    pub min_opset: i64,
}

impl TargetRules {
    /// Whether the runtime runs `op` on integer codes when Q/DQ stands around it; a Q/DQ group
    /// around any other op only adds conversions.
    pub fn runs_on_codes(&self, op: &str) -> bool {
        COMMON_INT8_OPS.contains(&op) || self.extra_int8_ops.contains(&op)
    }
}

impl Target {
    pub const ALL: [Target; 6] = [
        Target::OrtAvx2,
        Target::OrtVnni,
        Target::Arm,
        Target::OpenVino,
        Target::TensorRt,
        Target::Lowbit,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Target::OrtAvx2 => "ort-avx2",
            Target::OrtVnni => "ort-vnni",
            Target::Arm => "arm",
            Target::OpenVino => "openvino",
            Target::TensorRt => "tensorrt",
            Target::Lowbit => "lowbit",
        }
    }

    /// This CPU under ONNX Runtime, and what was detected.
    pub fn detect() -> (Target, &'static str) {
        use lowbit_kernels::cpu::Isa;
        if cfg!(target_arch = "aarch64") {
            return (Target::Arm, "this CPU is ARM");
        }
        let isa = Isa::detect();
        if isa == Isa::Avx512Vnni {
            (Target::OrtVnni, "this CPU has AVX-512 VNNI")
        } else if isa == Isa::Avx2 && lowbit_kernels::cpu::has_feature("avxvnni") {
            // ONNX Runtime's MLAS has AVX-VNNI kernels (vpdpbusd on 256 bits): no saturation.
            (Target::OrtVnni, "this CPU has AVX-VNNI (256-bit vpdpbusd)")
        } else if isa == Isa::Avx2 {
            (Target::OrtAvx2, "this CPU has AVX2 without VNNI")
        } else {
            // Without AVX2, ORT's u8×s8 kernels are SSE4.1 `pmaddubsw`: the same saturation.
            (Target::OrtAvx2, "this x86 CPU has neither VNNI nor AVX2 (ONNX Runtime's SSE path saturates like AVX2)")
        }
    }

    /// The rules this target imposes.
    pub fn rules(self) -> TargetRules {
        match self {
            Target::OrtAvx2 | Target::OrtVnni | Target::Arm => onnxruntime::rules(self),
            Target::OpenVino | Target::TensorRt | Target::Lowbit => others::rules(self),
        }
    }
}

display_and_parse_by_name!(Target, Config, "target", also "auto");

/// The user's choice: a named target or `auto` (this CPU).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetChoice {
    #[default]
    Auto,
    #[serde(untagged)]
    Named(Target),
}

impl TargetChoice {
    /// The target and why it was chosen.
    pub fn resolve(self) -> (Target, String) {
        match self {
            TargetChoice::Auto => {
                let (t, why) = Target::detect();
                (t, format!("auto: {why}"))
            }
            TargetChoice::Named(t) => (t, "--target".to_string()),
        }
    }
}

impl FromStr for TargetChoice {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<TargetChoice> {
        if s == "auto" {
            Ok(TargetChoice::Auto)
        } else {
            s.parse().map(TargetChoice::Named)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_by_name_and_auto_resolves_to_one() {
        for t in Target::ALL {
            assert_eq!(t.name().parse::<Target>().unwrap(), t);
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{}\"", t.name()));
        }
        assert!("ort".parse::<Target>().is_err());
        assert_eq!("auto".parse::<TargetChoice>().unwrap(), TargetChoice::Auto);
        let (t, why) = TargetChoice::Auto.resolve();
        assert!(Target::ALL.contains(&t) && why.starts_with("auto: "));
    }

    #[test]
    fn only_ort_on_avx2_reduces_weight_range() {
        for t in Target::ALL {
            assert_eq!(t.rules().reduce_range_weights, t == Target::OrtAvx2, "{t}");
        }
    }

    #[test]
    fn int8_ops_and_the_opset_each_qdq_needs() {
        for t in Target::ALL {
            assert!(t.rules().runs_on_codes("Conv") && t.rules().runs_on_codes("Concat"), "{t}");
        }
        assert!(Target::OrtVnni.rules().runs_on_codes("Softmax"));
        assert!(Target::Lowbit.rules().runs_on_codes("Sigmoid"));
        assert!(!Target::TensorRt.rules().runs_on_codes("Softmax"));
        assert!(!Target::OpenVino.rules().runs_on_codes("LayerNormalization"));
        assert_eq!(qdq_min_opset(IntType::Uint8, false, false), 10);
        assert_eq!(qdq_min_opset(IntType::Int8, true, false), 13);
        assert_eq!(qdq_min_opset(IntType::Int8, true, true), 21);
        assert_eq!(qdq_min_opset(IntType::Int4, false, false), 21);
        assert_eq!(qdq_min_opset(IntType::Uint16, false, false), 21);
        assert_eq!(Target::TensorRt.rules().min_opset, 13);
    }

    #[test]
    fn tensorrt_runs_symmetric_int8_only() {
        let r = Target::TensorRt.rules();
        assert!(r.symmetric_activations && r.symmetric_weights && r.strict);
        assert!(matches!(r.dynamic, Support::No(_)) && matches!(r.operator_format, Support::No(_)));
        assert!(matches!(Target::OpenVino.rules().dynamic, Support::Slow(_)));
        assert_eq!(r.activation_types, &[IntType::Int8]);
        assert!(r.type_reason.is_some());
    }
}
