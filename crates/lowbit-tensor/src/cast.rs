//! Element-type conversions with ONNX `Cast` semantics.
//!
//! Float to float: IEEE round-half-to-even (via `half` for f16/bf16, [`crate::float8`] for fp8,
//! saturating). Float to integer: truncation toward zero, then wrap to the target width, which is
//! what ONNX Runtime's `static_cast` does; NaN becomes 0. Integer to float: nearest. Bool: nonzero
//! is true. Int4/uint4 targets wrap into their 4-bit range.

use crate::error::{Result, TensorError};
use crate::float8::{E4M3FN, E5M2};
use crate::{DType, TensorData};
use half::{bf16, f16};

/// Round half to even, the rounding ONNX uses everywhere (QuantizeLinear, Round, casts).
pub fn round_half_even_f64(x: f64) -> f64 {
    x.round_ties_even()
}

/// Round half to even on f32.
pub fn round_half_even(x: f32) -> f32 {
    x.round_ties_even()
}

/// A `match` on `d` mapping every element of the integer variants with `|x| e` (`x` of the
/// variant's own type) into a collection, then the caller's `{ arms }` for the others.
macro_rules! map_ints {
    ($d:expr, |$x:ident| $e:expr, { $($arm:tt)* }) => {
        match $d {
            TensorData::I64(v) => v.iter().map(|&$x| $e).collect(),
            TensorData::I32(v) => v.iter().map(|&$x| $e).collect(),
            TensorData::I16(v) => v.iter().map(|&$x| $e).collect(),
            TensorData::I8(v) | TensorData::I4(v) => v.iter().map(|&$x| $e).collect(),
            TensorData::U64(v) => v.iter().map(|&$x| $e).collect(),
            TensorData::U32(v) => v.iter().map(|&$x| $e).collect(),
            TensorData::U16(v) => v.iter().map(|&$x| $e).collect(),
            TensorData::U8(v) | TensorData::U4(v) => v.iter().map(|&$x| $e).collect(),
            $($arm)*
        }
    };
}

/// Every element as f64. Errors for strings.
pub fn to_f64_vec(d: &TensorData) -> Result<Vec<f64>> {
    Ok(map_ints!(d, |x| x as f64, {
        TensorData::F32(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::F64(v) => v.clone(),
        TensorData::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
        TensorData::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
        TensorData::F8E4M3FN(v) => v.iter().map(|&b| E4M3FN.decode(b) as f64).collect(),
        TensorData::F8E5M2(v) => v.iter().map(|&b| E5M2.decode(b) as f64).collect(),
        TensorData::Bool(v) => v.iter().map(|&x| x as u8 as f64).collect(),
        TensorData::String(_) => return Err(TensorError::Unsupported("string to number".into())),
    }))
}

fn is_int_source(d: &TensorData) -> bool {
    d.dtype().is_integer() || d.dtype() == DType::Bool
}

/// Integer sources go through i128 so 64-bit values convert exactly between integer types.
fn to_i128_vec(d: &TensorData) -> Vec<i128> {
    map_ints!(d, |x| x as i128, {
        TensorData::Bool(v) => v.iter().map(|&x| x as i128).collect(),
        _ => unreachable!("to_i128_vec on a non-integer source"),
    })
}

/// Converts storage to `to` with ONNX `Cast` semantics (float8 targets saturate).
pub fn cast(d: &TensorData, to: DType) -> Result<TensorData> {
    cast_with(d, to, true)
}

/// [`cast`] with the float8 `saturate` flag of ONNX `Cast` (opset 19).
pub fn cast_with(d: &TensorData, to: DType, saturate: bool) -> Result<TensorData> {
    if d.dtype() == to {
        return Ok(d.clone());
    }
    if to == DType::String || d.dtype() == DType::String {
        return Err(TensorError::Unsupported(format!("cast {} to {}", d.dtype(), to)));
    }
    // Integer → integer keeps full 64-bit precision.
    if is_int_source(d) && (to.is_integer() || to == DType::Bool) {
        let v = to_i128_vec(d);
        return Ok(from_ints(&v, to));
    }
    // f32 → f32-derived targets skip the f64 detour where that changes rounding (f16/bf16).
    if let TensorData::F32(v) = d {
        match to {
            DType::F16 => {
                return Ok(TensorData::F16(v.iter().map(|&x| f16::from_f32(x)).collect()))
            }
            DType::BF16 => {
                return Ok(TensorData::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()))
            }
            DType::F8E4M3FN => {
                return Ok(TensorData::F8E4M3FN(
                    v.iter().map(|&x| E4M3FN.encode(x, saturate)).collect(),
                ))
            }
            DType::F8E5M2 => {
                return Ok(TensorData::F8E5M2(
                    v.iter().map(|&x| E5M2.encode(x, saturate)).collect(),
                ))
            }
            _ => {}
        }
    }
    let v = to_f64_vec(d)?;
    Ok(match to {
        DType::F32 => TensorData::F32(v.iter().map(|&x| x as f32).collect()),
        DType::F64 => TensorData::F64(v),
        DType::F16 => TensorData::F16(v.iter().map(|&x| f16::from_f64(x)).collect()),
        DType::BF16 => TensorData::BF16(v.iter().map(|&x| bf16::from_f64(x)).collect()),
        DType::F8E4M3FN => {
            TensorData::F8E4M3FN(v.iter().map(|&x| E4M3FN.encode(x as f32, saturate)).collect())
        }
        DType::F8E5M2 => {
            TensorData::F8E5M2(v.iter().map(|&x| E5M2.encode(x as f32, saturate)).collect())
        }
        DType::Bool => TensorData::Bool(v.iter().map(|&x| x != 0.0).collect()),
        _ => {
            let ints: Vec<i128> =
                v.iter().map(|&x| if x.is_finite() { x.trunc() as i128 } else { 0 }).collect();
            from_ints(&ints, to)
        }
    })
}

/// Integer values (zero points, weight codes) as storage of the integer type `to`, wrapped
/// into its width as a cast does (values inside its range are kept); `None` when `to` is not an
/// integer type.
pub fn int_data(v: &[i32], to: DType) -> Option<TensorData> {
    to.is_integer().then(|| from_ints(v, to))
}

fn from_ints<T: Copy + Into<i128>>(v: &[T], to: DType) -> TensorData {
    let v = v.iter().map(|&x| -> i128 { x.into() });
    match to {
        DType::I64 => TensorData::I64(v.map(|x| x as i64).collect()),
        DType::I32 => TensorData::I32(v.map(|x| x as i32).collect()),
        DType::I16 => TensorData::I16(v.map(|x| x as i16).collect()),
        DType::I8 => TensorData::I8(v.map(|x| x as i8).collect()),
        DType::U64 => TensorData::U64(v.map(|x| x as u64).collect()),
        DType::U32 => TensorData::U32(v.map(|x| x as u32).collect()),
        DType::U16 => TensorData::U16(v.map(|x| x as u16).collect()),
        DType::U8 => TensorData::U8(v.map(|x| x as u8).collect()),
        // Wrap into 4 bits, sign-extending for int4.
        DType::I4 => TensorData::I4(v.map(|x| crate::int4::sign_extend4(x as u8)).collect()),
        DType::U4 => TensorData::U4(v.map(|x| (x as u8) & 0x0f).collect()),
        DType::Bool => TensorData::Bool(v.map(|x| x != 0).collect()),
        DType::F32 => TensorData::F32(v.map(|x| x as f32).collect()),
        DType::F64 => TensorData::F64(v.map(|x| x as f64).collect()),
        _ => unreachable!("from_ints to {to}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_to_int_truncates_toward_zero() {
        let d = TensorData::F32(vec![1.7, -1.7, 2.5, f32::NAN]);
        assert_eq!(cast(&d, DType::I32).unwrap(), TensorData::I32(vec![1, -1, 2, 0]));
    }

    #[test]
    fn int64_to_int32_wraps() {
        let d = TensorData::I64(vec![1 << 33 | 5, -1]);
        assert_eq!(cast(&d, DType::I32).unwrap(), TensorData::I32(vec![5, -1]));
    }

    #[test]
    fn round_half_even_ties() {
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(3.5), 4.0);
        assert_eq!(round_half_even(-2.5), -2.0);
    }

    #[test]
    fn f32_to_f16_round_trip() {
        let d = TensorData::F32(vec![1.0, 0.1, 65504.0]);
        let h = cast(&d, DType::F16).unwrap();
        let back = cast(&h, DType::F32).unwrap();
        let TensorData::F32(b) = back else { panic!() };
        assert_eq!(b[0], 1.0);
        assert!((b[1] - 0.1).abs() < 1e-4);
        assert_eq!(b[2], 65504.0);
    }
}
