//! What a tensor is quantized to, in the user's words: value type, symmetric or asymmetric,
//! per-tensor / per-channel / per-block, and reduced range.
//!
//! ```
//! use lowbit_quant::scheme::{Granularity, QuantScheme};
//! let w = QuantScheme::int8().symmetric().per_channel(0);
//! assert_eq!(w.granularity, Granularity::PerChannel { axis: 0 });
//! assert_eq!(w.qrange().unwrap(), (-127, 127)); // ORT's restricted symmetric int8 range
//! let a = QuantScheme::uint8(); // asymmetric per-tensor: the activation default
//! assert_eq!(a.qrange().unwrap(), (0, 255));
//! assert_eq!(QuantScheme::int4().per_block(1, 32).to_string(), "int4 asymmetric per-block(axis 1, 32)");
//! ```
//!
//! Conventions (those of ONNX Runtime's quantizer, `get_qmin_qmax_for_qType`):
//!
//! * the integer range `[qmin, qmax]` of a scheme is the type's full range, except
//!   - `reduce_range`: int8 `[-64, 64]`, uint8 `[0, 127]`, int16 `[-16384, 16384]`,
//!     uint16 `[0, 32767]`, int4 `[-4, 3]`, uint4 `[0, 7]` (one bit less, for CPUs whose int8
//!     dot products overflow without it);
//!   - symmetric int8 / int16 (without reduce_range): `[-127, 127]` / `[-32767, 32767]`, so
//!     the grid is symmetric around 0. Other types keep their full range when symmetric
//!     (uint8 symmetric has zero point 128, int4 symmetric `[-8, 7]` with zero point 0).
//! * Axes are ONNX axes: negative values count from the end and are resolved against the
//!   tensor's rank when parameters are computed ([`QuantScheme::resolve_axis`]).
//! * Float casts (fp16, bf16) carry no scale or zero point; they are a separate
//!   [`ValueType::Cast`] so no code can ask them for an integer range. Float8 types are
//!   quantization targets with a scale (zero point always 0, symmetric only).

use crate::error::{QuantError, Result};
use lowbit_tensor::DType;
use serde::{Deserialize, Serialize};
use std::fmt;

/// An integer quantization type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntType {
    Int8,
    Uint8,
    Int16,
    Uint16,
    Int4,
    Uint4,
}

impl IntType {
    /// The tensor element type quantized values are stored in.
    pub fn dtype(self) -> DType {
        match self {
            IntType::Int8 => DType::I8,
            IntType::Uint8 => DType::U8,
            IntType::Int16 => DType::I16,
            IntType::Uint16 => DType::U16,
            IntType::Int4 => DType::I4,
            IntType::Uint4 => DType::U4,
        }
    }

    pub fn is_signed(self) -> bool {
        matches!(self, IntType::Int8 | IntType::Int16 | IntType::Int4)
    }

    /// The type's full range `[min, max]`.
    pub fn full_range(self) -> (i32, i32) {
        lowbit_kernels::quantize::int_range(self.dtype()).expect("integer quantization type")
    }

    /// ONNX Runtime's reduced range (`ONNX_INT_TYPE_REDUCED_RANGE`).
    pub fn reduced_range(self) -> (i32, i32) {
        match self {
            IntType::Int8 => (-64, 64),
            IntType::Uint8 => (0, 127),
            IntType::Int16 => (-16384, 16384),
            IntType::Uint16 => (0, 32767),
            IntType::Int4 => (-4, 3),
            IntType::Uint4 => (0, 7),
        }
    }

    /// ONNX Runtime's symmetric range (`ONNX_INT_TYPE_SYMMETRIC_RANGE`), where it has one.
    pub fn symmetric_range(self) -> Option<(i32, i32)> {
        match self {
            IntType::Int8 => Some((-127, 127)),
            IntType::Int16 => Some((-32767, 32767)),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        self.dtype().name()
    }
}

/// A float target type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FloatType {
    Fp16,
    Bf16,
    /// Float8 E4M3FN (max 448), a scaled quantization target.
    Fp8E4m3fn,
    /// Float8 E5M2 (max 57344), a scaled quantization target.
    Fp8E5m2,
}

impl FloatType {
    pub fn dtype(self) -> DType {
        match self {
            FloatType::Fp16 => DType::F16,
            FloatType::Bf16 => DType::BF16,
            FloatType::Fp8E4m3fn => DType::F8E4M3FN,
            FloatType::Fp8E5m2 => DType::F8E5M2,
        }
    }

    /// Float8 types are quantized with a scale; fp16/bf16 are plain casts.
    pub fn is_float8(self) -> bool {
        matches!(self, FloatType::Fp8E4m3fn | FloatType::Fp8E5m2)
    }

    /// The largest finite value of the type.
    pub fn max_finite(self) -> f32 {
        use lowbit_tensor::float8::{E4M3FN, E5M2};
        match self {
            FloatType::Fp16 => lowbit_tensor::f16::MAX.to_f32(),
            FloatType::Bf16 => lowbit_tensor::bf16::MAX.to_f32(),
            // Saturating infinity gives the largest finite pattern.
            FloatType::Fp8E4m3fn => E4M3FN.decode(E4M3FN.encode(f32::INFINITY, true)),
            FloatType::Fp8E5m2 => E5M2.decode(E5M2.encode(f32::INFINITY, true)),
        }
    }

    pub fn name(self) -> &'static str {
        self.dtype().name()
    }
}

/// What values become.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// Integer quantization with a scale and a zero point.
    Int(IntType),
    /// A float type: fp16/bf16 are casts, float8 is scaled with zero point 0.
    Cast(FloatType),
}

impl ValueType {
    pub fn dtype(self) -> DType {
        match self {
            ValueType::Int(t) => t.dtype(),
            ValueType::Cast(f) => f.dtype(),
        }
    }
}

/// How the float range maps onto the integer grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The range is widened to `[-absmax, absmax]`; the zero point is the middle of the grid.
    Symmetric,
    /// `[min, max]` (widened to include 0) maps onto the whole grid; the zero point follows.
    Asymmetric,
}

/// How a tensor's own values (a weight's) choose the range its grid covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RangeFit {
    /// The values' min and max: nothing is clipped.
    #[default]
    MinMax,
    /// The range, narrowed from min/max, that minimizes the squared rounding-plus-clipping error
    /// of the values (a grid search per parameter): on 4-bit grids a few outliers otherwise
    /// make the step of every other value several times too coarse.
    Mse,
}

/// Which elements share one scale and zero point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Granularity {
    PerTensor,
    /// One parameter per index along `axis` (ONNX `axis`, may be negative).
    PerChannel {
        axis: i64,
    },
    /// One parameter per `block_size` consecutive elements along `axis` (opset 21).
    PerBlock {
        axis: i64,
        block_size: usize,
    },
}

/// A complete quantization scheme. Build it with the type constructors and the modifiers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QuantScheme {
    pub value: ValueType,
    pub mode: Mode,
    pub granularity: Granularity,
    pub reduce_range: bool,
    /// How a weight's range is chosen from its values (ranges given from outside, such as
    /// calibrated activation ranges, are used as they are).
    #[serde(default)]
    pub range_fit: RangeFit,
}

impl QuantScheme {
    /// A scheme for `value`: asymmetric, per-tensor, full range (float8: symmetric).
    pub fn new(value: ValueType) -> QuantScheme {
        let mode = match value {
            ValueType::Cast(_) => Mode::Symmetric,
            ValueType::Int(_) => Mode::Asymmetric,
        };
        QuantScheme {
            value,
            mode,
            granularity: Granularity::PerTensor,
            reduce_range: false,
            range_fit: RangeFit::MinMax,
        }
    }

    pub fn int8() -> QuantScheme {
        QuantScheme::new(ValueType::Int(IntType::Int8))
    }
    pub fn uint8() -> QuantScheme {
        QuantScheme::new(ValueType::Int(IntType::Uint8))
    }
    pub fn int16() -> QuantScheme {
        QuantScheme::new(ValueType::Int(IntType::Int16))
    }
    pub fn uint16() -> QuantScheme {
        QuantScheme::new(ValueType::Int(IntType::Uint16))
    }
    pub fn int4() -> QuantScheme {
        QuantScheme::new(ValueType::Int(IntType::Int4))
    }
    pub fn uint4() -> QuantScheme {
        QuantScheme::new(ValueType::Int(IntType::Uint4))
    }
    pub fn fp16() -> QuantScheme {
        QuantScheme::new(ValueType::Cast(FloatType::Fp16))
    }
    pub fn bf16() -> QuantScheme {
        QuantScheme::new(ValueType::Cast(FloatType::Bf16))
    }
    pub fn fp8_e4m3fn() -> QuantScheme {
        QuantScheme::new(ValueType::Cast(FloatType::Fp8E4m3fn))
    }
    pub fn fp8_e5m2() -> QuantScheme {
        QuantScheme::new(ValueType::Cast(FloatType::Fp8E5m2))
    }

    /// The scheme for an integer quantization [`DType`] (`None` for other types).
    pub fn for_dtype(dtype: DType) -> Option<QuantScheme> {
        let t = match dtype {
            DType::I8 => IntType::Int8,
            DType::U8 => IntType::Uint8,
            DType::I16 => IntType::Int16,
            DType::U16 => IntType::Uint16,
            DType::I4 => IntType::Int4,
            DType::U4 => IntType::Uint4,
            DType::F16 => return Some(QuantScheme::fp16()),
            DType::BF16 => return Some(QuantScheme::bf16()),
            DType::F8E4M3FN => return Some(QuantScheme::fp8_e4m3fn()),
            DType::F8E5M2 => return Some(QuantScheme::fp8_e5m2()),
            _ => return None,
        };
        Some(QuantScheme::new(ValueType::Int(t)))
    }

    pub fn symmetric(mut self) -> QuantScheme {
        self.mode = Mode::Symmetric;
        self
    }
    pub fn asymmetric(mut self) -> QuantScheme {
        self.mode = Mode::Asymmetric;
        self
    }
    pub fn with_mode(mut self, mode: Mode) -> QuantScheme {
        self.mode = mode;
        self
    }
    pub fn per_tensor(mut self) -> QuantScheme {
        self.granularity = Granularity::PerTensor;
        self
    }
    pub fn per_channel(mut self, axis: i64) -> QuantScheme {
        self.granularity = Granularity::PerChannel { axis };
        self
    }
    pub fn per_block(mut self, axis: i64, block_size: usize) -> QuantScheme {
        self.granularity = Granularity::PerBlock { axis, block_size };
        self
    }
    /// Halves the integer range (see the module docs for the exact ranges).
    pub fn reduce_range(self) -> QuantScheme {
        self.with_reduce_range(true)
    }
    pub fn with_reduce_range(mut self, on: bool) -> QuantScheme {
        self.reduce_range = on;
        self
    }
    pub fn with_range_fit(mut self, fit: RangeFit) -> QuantScheme {
        self.range_fit = fit;
        self
    }

    pub fn is_symmetric(&self) -> bool {
        self.mode == Mode::Symmetric
    }

    /// The element type quantized values are stored in.
    pub fn dtype(&self) -> DType {
        self.value.dtype()
    }

    /// `true` for fp16/bf16: a plain cast, no scale.
    pub fn is_cast(&self) -> bool {
        matches!(self.value, ValueType::Cast(f) if !f.is_float8())
    }

    /// The integer grid `[qmin, qmax]` (ONNX Runtime's `get_qmin_qmax_for_qType`); an error for
    /// float types.
    pub fn qrange(&self) -> Result<(i32, i32)> {
        match self.value {
            ValueType::Int(t) if self.reduce_range => Ok(t.reduced_range()),
            ValueType::Int(t) if self.is_symmetric() => {
                Ok(t.symmetric_range().unwrap_or(t.full_range()))
            }
            ValueType::Int(t) => Ok(t.full_range()),
            ValueType::Cast(f) => {
                Err(QuantError::Scheme(format!("{} has no integer range", f.name())))
            }
        }
    }

    /// Checks the combination: block size > 0, float8 symmetric, no reduce_range or
    /// granularity on plain casts.
    pub fn validate(&self) -> Result<()> {
        if let Granularity::PerBlock { block_size: 0, .. } = self.granularity {
            return Err(QuantError::Scheme("block size must be at least 1".into()));
        }
        if let ValueType::Cast(f) = self.value {
            if self.reduce_range {
                return Err(QuantError::Scheme(format!(
                    "reduce_range does not apply to {}",
                    f.name()
                )));
            }
            if self.mode == Mode::Asymmetric {
                return Err(QuantError::Scheme(format!(
                    "{} is symmetric only (ONNX float8 zero points are 0)",
                    f.name()
                )));
            }
            if !f.is_float8() && self.granularity != Granularity::PerTensor {
                return Err(QuantError::Scheme(format!(
                    "{} is a cast: it has no per-channel or per-block parameters",
                    f.name()
                )));
            }
        }
        Ok(())
    }

    /// The scheme's axis resolved against a tensor of `rank` (`None` per tensor).
    pub fn resolve_axis(&self, rank: usize) -> Result<Option<usize>> {
        let axis = match self.granularity {
            Granularity::PerTensor => return Ok(None),
            Granularity::PerChannel { axis } | Granularity::PerBlock { axis, .. } => axis,
        };
        let r = rank as i64;
        if axis < -r || axis >= r {
            return Err(QuantError::Scheme(format!(
                "axis {axis} is out of range for a tensor of rank {rank}"
            )));
        }
        Ok(Some(if axis < 0 { (axis + r) as usize } else { axis as usize }))
    }
}

impl fmt::Display for QuantScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.value {
            ValueType::Int(t) => t.name(),
            ValueType::Cast(t) => t.name(),
        };
        if self.is_cast() {
            return f.write_str(name);
        }
        let mode = match self.mode {
            Mode::Symmetric => "symmetric",
            Mode::Asymmetric => "asymmetric",
        };
        write!(f, "{name} {mode}")?;
        match self.granularity {
            Granularity::PerTensor => f.write_str(" per-tensor")?,
            Granularity::PerChannel { axis } => write!(f, " per-channel(axis {axis})")?,
            Granularity::PerBlock { axis, block_size } => {
                write!(f, " per-block(axis {axis}, {block_size})")?
            }
        }
        if self.reduce_range {
            f.write_str(" reduce-range")?;
        }
        if self.range_fit == RangeFit::Mse {
            f.write_str(" mse-range")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_reads_like_the_concept() {
        let s = QuantScheme::int8().symmetric().per_channel(0);
        assert_eq!(s.value, ValueType::Int(IntType::Int8));
        assert_eq!(s.mode, Mode::Symmetric);
        assert_eq!(s.granularity, Granularity::PerChannel { axis: 0 });
        assert!(!s.reduce_range);
        assert_eq!(s.to_string(), "int8 symmetric per-channel(axis 0)");
        assert_eq!(QuantScheme::fp16().to_string(), "float16");
    }

    #[test]
    fn integer_ranges_follow_onnx_runtime() {
        assert_eq!(QuantScheme::int8().qrange().unwrap(), (-128, 127));
        assert_eq!(QuantScheme::int8().symmetric().qrange().unwrap(), (-127, 127));
        assert_eq!(QuantScheme::uint8().symmetric().qrange().unwrap(), (0, 255));
        assert_eq!(QuantScheme::int16().symmetric().qrange().unwrap(), (-32767, 32767));
        assert_eq!(QuantScheme::int4().symmetric().qrange().unwrap(), (-8, 7));
        assert_eq!(QuantScheme::uint8().reduce_range().qrange().unwrap(), (0, 127));
        assert_eq!(QuantScheme::int8().symmetric().reduce_range().qrange().unwrap(), (-64, 64));
        assert_eq!(QuantScheme::uint4().reduce_range().qrange().unwrap(), (0, 7));
        assert!(QuantScheme::fp16().qrange().is_err());
    }

    #[test]
    fn invalid_combinations_are_rejected() {
        assert!(QuantScheme::int4().per_block(0, 0).validate().is_err());
        assert!(QuantScheme::fp8_e4m3fn().asymmetric().validate().is_err());
        assert!(QuantScheme::fp16().per_channel(0).validate().is_err());
        assert!(QuantScheme::bf16().reduce_range().validate().is_err());
        assert!(QuantScheme::fp8_e5m2().per_channel(1).validate().is_ok());
        assert!(QuantScheme::uint4().per_block(-1, 32).validate().is_ok());
    }

    #[test]
    fn axes_resolve_like_onnx() {
        let s = QuantScheme::int8().per_channel(-1);
        assert_eq!(s.resolve_axis(2).unwrap(), Some(1));
        assert!(s.resolve_axis(0).is_err());
        assert!(QuantScheme::int8().per_channel(2).resolve_axis(2).is_err());
        assert_eq!(QuantScheme::int8().resolve_axis(3).unwrap(), None);
    }

    #[test]
    fn float_types_know_their_limits() {
        assert_eq!(FloatType::Fp8E4m3fn.max_finite(), 448.0);
        assert_eq!(FloatType::Fp8E5m2.max_finite(), 57344.0);
        assert_eq!(FloatType::Fp16.max_finite(), 65504.0);
    }

    #[test]
    fn schemes_round_trip_through_json() {
        let s = QuantScheme::uint4().symmetric().per_block(1, 64).reduce_range();
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<QuantScheme>(&j).unwrap(), s);
    }
}
