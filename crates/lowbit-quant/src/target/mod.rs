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

mod onnxruntime;
mod others;

use crate::error::{QuantError, Result};
use crate::scheme::IntType;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

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

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Target {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<Target> {
        Target::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
            QuantError::Config(format!("unknown target '{s}' (use auto, {})", names.join(", ")))
        })
    }
}

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
    fn tensorrt_runs_symmetric_int8_only() {
        let r = Target::TensorRt.rules();
        assert!(r.symmetric_activations);
        assert_eq!(r.activation_types, &[IntType::Int8]);
        assert!(r.type_reason.is_some());
    }
}
