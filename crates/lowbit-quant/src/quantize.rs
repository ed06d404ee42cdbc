//! The quantization driver: a [`QuantizeConfig`] in the user's words, and [`quantize_model`],
//! which runs the [passes](crate::passes) for the chosen mode and says what it did in a
//! [`QuantizeSummary`].
//!
//! ```no_run
//! use lowbit_quant::calibrate::CalibrationTable;
//! use lowbit_quant::quantize::{quantize_model, QuantMode, QuantizeConfig};
//! let model = lowbit_onnx::load_model("model.onnx")?;
//! let table = CalibrationTable::load("ranges.json".as_ref())?;
//! let (q, summary) = quantize_model(model, &QuantizeConfig::default(), Some(&table))?;
//! lowbit_onnx::save_model(&q, "model.int8.onnx")?;
//! println!("{summary}");
//! // Weight-only int4 in blocks of 32, no calibration needed.
//! let cfg = QuantizeConfig::weight_only_int4(32);
//! assert_eq!(cfg.mode, QuantMode::WeightOnly);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! | mode | what is written | needs |
//! |---|---|---|
//! | `static` | BN folded; QDQ around Conv/MatMul/Gemm (+ pass-through ops), int8/int4 weights, int32 bias | a calibration table |
//! | `dynamic` | MatMul/Gemm → DynamicQuantizeLinear + MatMulInteger; Conv stays float | — |
//! | `weight-only` | int8 (per channel) or int4 (blocked along K) weights + DequantizeLinear before MatMul/Gemm | — |
//! | `fp16` / `bf16` | float32 initializers and compute in float16/bfloat16, float32 I/O kept by default | — |

use crate::calibrate::{CalibrationTable, Method};
use crate::error::{QuantError, Result};
use crate::passes::{self, Exclusions};
use crate::scheme::{IntType, Mode};
use lowbit_onnx::graph::Graph;
use lowbit_onnx::pb::ModelProto;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// What kind of quantization [`quantize_model`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuantMode {
    /// Calibrated activations and weights, QDQ format.
    Static,
    /// Weights offline, activations quantized at run time.
    Dynamic,
    /// Weights only; compute stays float.
    WeightOnly,
    /// float16 weights and compute.
    Fp16,
    /// bfloat16 weights and compute (ONNX Runtime's CPU provider has few bf16 kernels).
    Bf16,
}

impl QuantMode {
    pub const ALL: [QuantMode; 5] = [
        QuantMode::Static,
        QuantMode::Dynamic,
        QuantMode::WeightOnly,
        QuantMode::Fp16,
        QuantMode::Bf16,
    ];

    pub fn name(self) -> &'static str {
        match self {
            QuantMode::Static => "static",
            QuantMode::Dynamic => "dynamic",
            QuantMode::WeightOnly => "weight-only",
            QuantMode::Fp16 => "fp16",
            QuantMode::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for QuantMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuantMode {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<QuantMode> {
        QuantMode::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            QuantError::Config(format!(
                "unknown mode '{s}' (use static, dynamic, weight-only, fp16 or bf16)"
            ))
        })
    }
}

/// Parses `int8`, `uint8`, `int16`, `uint16`, `int4`, `uint4`.
pub fn parse_int_type(s: &str) -> Result<IntType> {
    Ok(match s {
        "int8" => IntType::Int8,
        "uint8" => IntType::Uint8,
        "int16" => IntType::Int16,
        "uint16" => IntType::Uint16,
        "int4" => IntType::Int4,
        "uint4" => IntType::Uint4,
        _ => {
            return Err(QuantError::Config(format!(
                "unknown integer type '{s}' (use int8, uint8, int16, uint16, int4, uint4)"
            )))
        }
    })
}

/// The default floor (dB) on an activation's expected SQNR under static quantization. An 8-bit
/// grid over a Gaussian's ±4σ gives about 41 dB. Measured: the MNIST CNNs' activations sit at
/// 35–49 dB; MiniLM's at 25.5–42 dB except its first FFN output (GELU with outliers to 22.6
/// while most values are below 1: 20.7–22.0 dB depending on the calibration sentences), which
/// alone costs about 0.03 of mean cosine to FP32.
pub const DEFAULT_MIN_ACTIVATION_SQNR: f64 = 24.0;

/// Everything `lowbit quantize` can be asked. [`Default`]: static, uint8 asymmetric
/// activations, int8 symmetric per-channel weights, min-max ranges, BN folding on, float
/// inputs/outputs kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantizeConfig {
    pub mode: QuantMode,
    /// Activation type (static): uint8 (default), int8, int16, uint16.
    pub activations: IntType,
    /// Symmetric activation ranges (static). Default asymmetric.
    pub symmetric_activations: bool,
    /// Weight type: int8 (default), uint8, int4, uint4 (int16 also accepted in static mode).
    pub weights: IntType,
    /// Weight range mode; `None`: symmetric for int8/int16 (ORT's default), asymmetric for
    /// unsigned and 4-bit weights.
    pub weight_mode: Option<Mode>,
    /// One scale per output channel (Conv axis 0, Gemm transB=1 axis 0 else 1, MatMul last
    /// axis). Off: one scale per weight tensor.
    pub per_channel: bool,
    /// Blocked weight quantization along the reduction axis (weight-only; 0 = per channel or
    /// per tensor). int4 weight-only defaults to 32 when 0 is given.
    pub block_size: usize,
    /// ONNX Runtime's reduce_range: 8-bit integer weights use 7 bits (static and dynamic
    /// modes). On by default: ONNX Runtime's fused u8×s8 kernels on x86 CPUs without AVX-512
    /// VNNI (AVX2 `vpmaddubsw`) add pairs of products in saturating int16, which full-range
    /// weights overflow. Measured with score.py on this AVX2 machine: burn_mnist_bn loses
    /// 0.38 pt top-1 with 8-bit weights and 0.07 pt with 7-bit ones; MiniLM static keeps a mean
    /// cosine of 0.985 vs 0.995. Turn it off for VNNI or ARM deployments.
    pub reduce_range: bool,
    /// Which calibration range to use (static).
    pub method: Method,
    /// Static: leave in float any Conv/MatMul/Gemm whose activation input, quantized with its
    /// calibrated range, is expected to fall below this SQNR in dB (estimated from the
    /// calibration histogram). Catches activations whose outliers leave the bulk of values a
    /// handful of levels, e.g. a transformer's first FFN output. `None`: quantize everything.
    /// Default [`DEFAULT_MIN_ACTIVATION_SQNR`].
    pub min_activation_sqnr: Option<f64>,
    /// Nodes left in float32.
    pub exclude: Exclusions,
    /// Keep float32 graph inputs/outputs (fp16/bf16: Casts at the boundary). Quantized modes
    /// always keep float interfaces.
    pub keep_float_io: bool,
    /// Fold BatchNormalization into the preceding Conv/Gemm first (static).
    pub fold_batch_norm: bool,
}

impl Default for QuantizeConfig {
    fn default() -> Self {
        QuantizeConfig {
            mode: QuantMode::Static,
            activations: IntType::Uint8,
            symmetric_activations: false,
            weights: IntType::Int8,
            weight_mode: None,
            per_channel: true,
            block_size: 0,
            reduce_range: true,
            method: Method::MinMax,
            min_activation_sqnr: Some(DEFAULT_MIN_ACTIVATION_SQNR),
            exclude: Exclusions::default(),
            keep_float_io: true,
            fold_batch_norm: true,
        }
    }
}

impl QuantizeConfig {
    /// Static QDQ with the defaults.
    pub fn static_int8() -> QuantizeConfig {
        QuantizeConfig::default()
    }

    /// Dynamic int8 (per channel).
    pub fn dynamic_int8() -> QuantizeConfig {
        QuantizeConfig { mode: QuantMode::Dynamic, ..Default::default() }
    }

    /// Weight-only int8 per channel.
    pub fn weight_only_int8() -> QuantizeConfig {
        QuantizeConfig { mode: QuantMode::WeightOnly, ..Default::default() }
    }

    /// Weight-only int4, blocks of `block_size` along K.
    pub fn weight_only_int4(block_size: usize) -> QuantizeConfig {
        QuantizeConfig {
            mode: QuantMode::WeightOnly,
            weights: IntType::Int4,
            block_size,
            ..Default::default()
        }
    }

    /// float16 (or bfloat16 with `bf16`), float32 I/O kept.
    pub fn float16(bf16: bool) -> QuantizeConfig {
        QuantizeConfig {
            mode: if bf16 { QuantMode::Bf16 } else { QuantMode::Fp16 },
            ..Default::default()
        }
    }

    /// The weight range mode actually used.
    pub fn resolved_weight_mode(&self) -> Mode {
        self.weight_mode.unwrap_or(match self.weights {
            IntType::Int8 | IntType::Int16 => Mode::Symmetric,
            _ => Mode::Asymmetric,
        })
    }

    /// The block size actually used by weight-only quantization (0: none).
    pub fn resolved_block_size(&self) -> usize {
        match (self.block_size, self.weights) {
            (0, IntType::Int4 | IntType::Uint4) if self.mode == QuantMode::WeightOnly => 32,
            (b, _) => b,
        }
    }

    /// Rejects combinations the passes cannot write.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(QuantError::Config(m));
        match self.mode {
            QuantMode::Static => {
                if matches!(self.activations, IntType::Int4 | IntType::Uint4) {
                    return bad(
                        "4-bit activations are not supported (use uint8, int8, int16 or uint16)"
                            .into(),
                    );
                }
                if self.block_size != 0 {
                    return bad("--block-size applies to weight-only quantization".into());
                }
            }
            QuantMode::Dynamic => {
                if !matches!(self.weights, IntType::Int8 | IntType::Uint8) {
                    return bad(format!(
                        "dynamic quantization stores int8 or uint8 weights (MatMulInteger), not {}",
                        self.weights.name()
                    ));
                }
                if self.block_size != 0 {
                    return bad("--block-size applies to weight-only quantization".into());
                }
            }
            QuantMode::WeightOnly => {
                if matches!(self.weights, IntType::Int16 | IntType::Uint16) {
                    return bad("weight-only quantization writes 8- or 4-bit weights".into());
                }
                let b = self.resolved_block_size();
                if b != 0 && (b < 16 || !b.is_power_of_two()) {
                    return bad(format!("block size must be a power of two >= 16, got {b}"));
                }
            }
            QuantMode::Fp16 | QuantMode::Bf16 => {}
        }
        Ok(())
    }
}

/// A node a pass left alone, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeNote {
    pub node: String,
    pub op_type: String,
    pub reason: String,
}

/// What [`quantize_model`] did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuantizeSummary {
    pub mode: Option<QuantMode>,
    /// Nodes quantized (or converted), per op type.
    pub quantized: BTreeMap<String, usize>,
    /// Nodes the user excluded.
    pub excluded: Vec<NodeNote>,
    /// Candidate nodes a pass left in float, with the reason.
    pub left_float: Vec<NodeNote>,
    /// BatchNormalization nodes folded away.
    pub folded_batch_norms: usize,
    /// Default-domain opset before and after.
    pub opset_before: i64,
    pub opset_after: i64,
    /// Bytes of initializer data before and after.
    pub size_before: u64,
    pub size_after: u64,
    /// Free-form remarks (mode limitations, opset rewrites).
    pub notes: Vec<String>,
}

impl QuantizeSummary {
    pub(crate) fn count(&mut self, op_type: &str) {
        *self.quantized.entry(op_type.to_string()).or_default() += 1;
    }

    pub(crate) fn exclude(
        &mut self,
        node: &lowbit_onnx::pb::NodeProto,
        idx: usize,
        reason: String,
    ) {
        self.excluded.push(NodeNote {
            node: passes::label(node, idx),
            op_type: node.op_type.clone(),
            reason,
        });
    }

    pub(crate) fn leave(
        &mut self,
        node: &lowbit_onnx::pb::NodeProto,
        idx: usize,
        reason: impl Into<String>,
    ) {
        self.left_float.push(NodeNote {
            node: passes::label(node, idx),
            op_type: node.op_type.clone(),
            reason: reason.into(),
        });
    }

    /// Total nodes quantized.
    pub fn total_quantized(&self) -> usize {
        self.quantized.values().sum()
    }
}

impl fmt::Display for QuantizeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = self.mode.map(|m| m.name()).unwrap_or("?");
        writeln!(f, "mode: {mode}")?;
        let per_op: Vec<String> = self.quantized.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(f, "quantized: {} nodes ({})", self.total_quantized(), per_op.join(", "))?;
        if self.folded_batch_norms > 0 {
            writeln!(f, "folded BatchNormalization: {}", self.folded_batch_norms)?;
        }
        if !self.excluded.is_empty() {
            writeln!(f, "excluded: {}", self.excluded.len())?;
            for n in &self.excluded {
                writeln!(f, "  {} ({}): {}", n.node, n.op_type, n.reason)?;
            }
        }
        if !self.left_float.is_empty() {
            writeln!(f, "left in float: {}", self.left_float.len())?;
            for n in self.left_float.iter().take(20) {
                writeln!(f, "  {} ({}): {}", n.node, n.op_type, n.reason)?;
            }
        }
        if self.opset_before != self.opset_after {
            writeln!(f, "opset: {} -> {}", self.opset_before, self.opset_after)?;
        }
        let ratio = self.size_after as f64 / self.size_before.max(1) as f64;
        writeln!(
            f,
            "initializers: {} -> {} bytes ({:.1} %)",
            self.size_before,
            self.size_after,
            ratio * 100.0
        )?;
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

/// Quantizes `model` as `config` says. Static mode needs `calibration` (a table made on this
/// FP32 model); the others ignore it. Graph input and output names are kept.
pub fn quantize_model(
    model: ModelProto,
    config: &QuantizeConfig,
    calibration: Option<&CalibrationTable>,
) -> Result<(ModelProto, QuantizeSummary)> {
    config.validate()?;
    let mut summary = QuantizeSummary {
        mode: Some(config.mode),
        size_before: passes::initializer_bytes(&model),
        opset_before: lowbit_onnx::graph::opset_version(&model, "").unwrap_or(1),
        ..Default::default()
    };
    let mut g = Graph::new(model)?;
    g.topo_sort()?;
    match config.mode {
        QuantMode::Static => {
            let table = calibration.ok_or_else(|| {
                QuantError::Config(
                    "static quantization needs calibration ranges (calibrate the model first)"
                        .into(),
                )
            })?;
            if config.fold_batch_norm {
                summary.folded_batch_norms = passes::bn_fold::fold_batch_norms(&mut g)?;
            }
            passes::qdq::quantize_static(&mut g, config, table, &mut summary)?;
        }
        QuantMode::Dynamic => passes::dynamic::quantize_dynamic(&mut g, config, &mut summary)?,
        QuantMode::WeightOnly => {
            passes::weight_only::quantize_weights(&mut g, config, &mut summary)?
        }
        QuantMode::Fp16 | QuantMode::Bf16 => {
            passes::fp16::convert_float(&mut g, config, &mut summary)?
        }
    }
    let integer_matmuls = matches!(config.mode, QuantMode::Static | QuantMode::Dynamic);
    if integer_matmuls && config.weights == IntType::Int8 && !config.reduce_range {
        summary.notes.push(
            "full 8-bit weights: ONNX Runtime's fused u8×s8 kernels on x86 CPUs without AVX-512 \
             VNNI (AVX2 vpmaddubsw) saturate 16-bit pair sums and drift from the QDQ graph; \
             deploy this file on VNNI or ARM CPUs, or keep reduce_range on"
                .into(),
        );
    }
    g.remove_unused_initializers();
    g.topo_sort()?;
    let model = g.into_model();
    summary.size_after = passes::initializer_bytes(&model);
    summary.opset_after = lowbit_onnx::graph::opset_version(&model, "").unwrap_or(1);
    Ok((model, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_types_parse_by_name() {
        for m in QuantMode::ALL {
            assert_eq!(m.name().parse::<QuantMode>().unwrap(), m);
        }
        assert!("int8".parse::<QuantMode>().is_err());
        assert_eq!(parse_int_type("int4").unwrap(), IntType::Int4);
        assert!(parse_int_type("int3").is_err());
    }

    #[test]
    fn configs_are_validated() {
        assert!(QuantizeConfig::default().validate().is_ok());
        let c = QuantizeConfig { weights: IntType::Int4, ..QuantizeConfig::dynamic_int8() };
        assert!(c.validate().is_err());
        assert_eq!(QuantizeConfig::weight_only_int4(0).resolved_block_size(), 32);
        assert!(QuantizeConfig::weight_only_int4(48).validate().is_err());
        assert_eq!(QuantizeConfig::default().resolved_weight_mode(), Mode::Symmetric);
        assert_eq!(QuantizeConfig::weight_only_int4(64).resolved_weight_mode(), Mode::Asymmetric);
    }
}
