//! Conversion between ONNX `TensorProto` and lowbit's [`Tensor`].
//!
//! Reading accepts both encodings ONNX allows: `raw_data` (fixed-width little-endian; bool one
//! byte each; int4/uint4 two per byte, first element in the low nibble) and the typed fields
//! (`float_data`, `int32_data` for every type of 16 bits or less, with (b)float16 and float8 as
//! bit patterns and int4/uint4 packed two per entry, `int64_data`, `uint64_data` for
//! uint32/uint64, `double_data`, `string_data`). Writing always uses `raw_data` (strings:
//! `string_data`), which is what ONNX Runtime and the ONNX helpers read fastest.
//! The 4-bit packing lives here rather than in `lowbit-tensor` so this crate does not depend on
//! that crate's packing helpers, which are written in parallel.

use std::borrow::Cow;

use half::{bf16, f16};
use lowbit_tensor::{int4, DType, Tensor, TensorData};

use crate::error::{OnnxError, Result};
use crate::pb::tensor_proto::DataLocation;
use crate::pb::TensorProto;

/// The ONNX spelling of a `TensorProto.DataType` number, for messages (`"complex64"`).
pub fn onnx_type_name(id: i32) -> &'static str {
    match id {
        0 => "undefined",
        1 => "float",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "double",
        12 => "uint32",
        13 => "uint64",
        14 => "complex64",
        15 => "complex128",
        16 => "bfloat16",
        17 => "float8e4m3fn",
        18 => "float8e4m3fnuz",
        19 => "float8e5m2",
        20 => "float8e5m2fnuz",
        21 => "uint4",
        22 => "int4",
        23 => "float4e2m1",
        24 => "float8e8m0",
        25 => "uint2",
        26 => "int2",
        _ => "unknown",
    }
}

/// The lowbit element type for an ONNX `DataType` number; an error names the ONNX type when
/// lowbit cannot hold it (complex, FNUZ float8, float4, 2-bit, undefined).
pub fn dtype_from_onnx(id: i32) -> Result<DType> {
    DType::from_onnx(id).ok_or(OnnxError::UnsupportedDType { id, name: onnx_type_name(id) })
}

/// The shape of a tensor proto as `usize` dims, with its element count; errors on negative
/// dims or an element count that overflows.
pub fn shape_from_proto(t: &TensorProto) -> Result<(Vec<usize>, usize)> {
    let mut shape = Vec::with_capacity(t.dims.len());
    let mut n: usize = 1;
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| {
            OnnxError::tensor(&t.name, format!("negative dim in shape {:?}", t.dims))
        })?;
        n = n.checked_mul(d).ok_or_else(|| {
            OnnxError::tensor(&t.name, format!("shape {:?} has too many elements", t.dims))
        })?;
        shape.push(d);
    }
    Ok((shape, n))
}

/// Bytes `n` elements of `dtype` take in `raw_data` (`None` for strings, which have no raw
/// form, or on overflow).
pub fn raw_len(dtype: DType, n: usize) -> Option<usize> {
    match dtype {
        DType::String => None,
        DType::I4 | DType::U4 => Some(n.div_ceil(2)),
        _ => n.checked_mul(dtype.bits() / 8),
    }
}

/// Decodes a tensor proto held in memory (not `data_location = EXTERNAL`: `io::load_model`
/// resolves those while loading).
pub fn tensor_from_proto(t: &TensorProto) -> Result<Tensor> {
    let name = t.name.as_str();
    if t.data_location == DataLocation::External as i32 {
        return Err(OnnxError::ExternalDataWithoutDir { tensor: name.to_string() });
    }
    let dtype = dtype_from_onnx(t.data_type).map_err(|e| OnnxError::tensor(name, e.to_string()))?;
    let (shape, n) = shape_from_proto(t)?;
    let data = if dtype == DType::String {
        strings_from_proto(t, n)?
    } else if !t.raw_data.is_empty() {
        data_from_raw(name, dtype, n, &t.raw_data)?
    } else {
        data_from_typed(t, dtype, n)?
    };
    Tensor::new(shape, data).map_err(|e| OnnxError::tensor(name, e.to_string()))
}

/// Encodes a tensor as a proto named `name`, elements in `raw_data` (strings in `string_data`).
/// int4/uint4 values outside their range keep only their low 4 bits.
pub fn tensor_to_proto(name: &str, t: &Tensor) -> TensorProto {
    let mut p = TensorProto {
        name: name.to_string(),
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: t.dtype().onnx_id(),
        ..Default::default()
    };
    match t.data() {
        TensorData::String(v) => p.string_data = v.iter().map(|s| s.as_bytes().to_vec()).collect(),
        data => p.raw_data = raw_bytes(data).unwrap_or_default(),
    }
    p
}

/// The ONNX `raw_data` encoding of `data`; `None` for strings.
pub fn raw_bytes(data: &TensorData) -> Option<Vec<u8>> {
    fn le<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        let mut out = Vec::with_capacity(v.len() * N);
        for &x in v {
            out.extend_from_slice(&f(x));
        }
        out
    }
    Some(match data {
        TensorData::F32(v) => le(v, f32::to_le_bytes),
        TensorData::F64(v) => le(v, f64::to_le_bytes),
        TensorData::F16(v) => le(v, |x| x.to_bits().to_le_bytes()),
        TensorData::BF16(v) => le(v, |x| x.to_bits().to_le_bytes()),
        TensorData::F8E4M3FN(v) | TensorData::F8E5M2(v) | TensorData::U8(v) => v.clone(),
        TensorData::I64(v) => le(v, i64::to_le_bytes),
        TensorData::I32(v) => le(v, i32::to_le_bytes),
        TensorData::I16(v) => le(v, i16::to_le_bytes),
        TensorData::I8(v) => v.iter().map(|&x| x as u8).collect(),
        TensorData::U64(v) => le(v, u64::to_le_bytes),
        TensorData::U32(v) => le(v, u32::to_le_bytes),
        TensorData::U16(v) => le(v, u16::to_le_bytes),
        TensorData::I4(v) => int4::pack_nibbles(v.iter().map(|&x| x as u8)),
        TensorData::U4(v) => int4::pack_nibbles(v.iter().copied()),
        TensorData::Bool(v) => v.iter().map(|&b| b as u8).collect(),
        TensorData::String(_) => return None,
    })
}

/// The tensor's elements in `raw_data` form, borrowed when the proto already stores them so.
/// `Ok(None)` for strings and for types lowbit cannot decode from typed fields (the caller then
/// keeps the proto as it is).
pub(crate) fn proto_raw_bytes(t: &TensorProto) -> Result<Option<Cow<'_, [u8]>>> {
    if t.data_type == DType::String as i32 {
        return Ok(None);
    }
    if !t.raw_data.is_empty() {
        return Ok(Some(Cow::Borrowed(&t.raw_data)));
    }
    if DType::from_onnx(t.data_type).is_none() {
        return Ok(None);
    }
    let tensor = tensor_from_proto(t)?;
    Ok(raw_bytes(tensor.data()).map(Cow::Owned))
}

fn from_le<T, const N: usize>(raw: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    raw.chunks_exact(N)
        .map(|c| {
            let mut b = [0u8; N];
            b.copy_from_slice(c);
            f(b)
        })
        .collect()
}

fn data_from_raw(name: &str, dtype: DType, n: usize, raw: &[u8]) -> Result<TensorData> {
    let want = raw_len(dtype, n)
        .ok_or_else(|| OnnxError::tensor(name, format!("{n} {dtype} elements overflow")))?;
    if raw.len() != want {
        return Err(OnnxError::tensor(
            name,
            format!("raw_data holds {} bytes but {n} {dtype} elements need {want}", raw.len()),
        ));
    }
    Ok(match dtype {
        DType::F32 => TensorData::F32(from_le(raw, f32::from_le_bytes)),
        DType::F64 => TensorData::F64(from_le(raw, f64::from_le_bytes)),
        DType::F16 => TensorData::F16(from_le(raw, |b| f16::from_bits(u16::from_le_bytes(b)))),
        DType::BF16 => TensorData::BF16(from_le(raw, |b| bf16::from_bits(u16::from_le_bytes(b)))),
        DType::F8E4M3FN => TensorData::F8E4M3FN(raw.to_vec()),
        DType::F8E5M2 => TensorData::F8E5M2(raw.to_vec()),
        DType::I64 => TensorData::I64(from_le(raw, i64::from_le_bytes)),
        DType::I32 => TensorData::I32(from_le(raw, i32::from_le_bytes)),
        DType::I16 => TensorData::I16(from_le(raw, i16::from_le_bytes)),
        DType::I8 => TensorData::I8(raw.iter().map(|&b| b as i8).collect()),
        DType::U64 => TensorData::U64(from_le(raw, u64::from_le_bytes)),
        DType::U32 => TensorData::U32(from_le(raw, u32::from_le_bytes)),
        DType::U16 => TensorData::U16(from_le(raw, u16::from_le_bytes)),
        DType::U8 => TensorData::U8(raw.to_vec()),
        DType::I4 => TensorData::I4(int4::unpack_i4(raw, n)),
        DType::U4 => TensorData::U4(int4::unpack_u4(raw, n)),
        DType::Bool => TensorData::Bool(raw.iter().map(|&b| b != 0).collect()),
        DType::String => unreachable!("strings are decoded from string_data"),
    })
}

fn count_error(name: &str, field: &str, got: usize, n: usize, dtype: DType) -> OnnxError {
    OnnxError::tensor(name, format!("{field} holds {got} values but the shape needs {n} {dtype}"))
}

fn data_from_typed(t: &TensorProto, dtype: DType, n: usize) -> Result<TensorData> {
    let name = t.name.as_str();
    let check = |field: &str, got: usize| {
        if got == n {
            Ok(())
        } else {
            Err(count_error(name, field, got, n, dtype))
        }
    };
    // Every type of 16 bits or less travels in int32_data, one element per entry; narrowing
    // wraps like ONNX's own helpers (numpy astype) do.
    fn narrow<T>(t: &TensorProto, n: usize, dtype: DType, f: fn(i32) -> T) -> Result<Vec<T>> {
        if t.int32_data.len() != n {
            return Err(count_error(&t.name, "int32_data", t.int32_data.len(), n, dtype));
        }
        Ok(t.int32_data.iter().map(|&x| f(x)).collect())
    }
    Ok(match dtype {
        DType::F32 => {
            check("float_data", t.float_data.len())?;
            TensorData::F32(t.float_data.clone())
        }
        DType::F64 => {
            check("double_data", t.double_data.len())?;
            TensorData::F64(t.double_data.clone())
        }
        DType::I64 => {
            check("int64_data", t.int64_data.len())?;
            TensorData::I64(t.int64_data.clone())
        }
        DType::U64 => {
            check("uint64_data", t.uint64_data.len())?;
            TensorData::U64(t.uint64_data.clone())
        }
        DType::U32 => {
            check("uint64_data", t.uint64_data.len())?;
            let v: std::result::Result<Vec<u32>, _> =
                t.uint64_data.iter().map(|&x| u32::try_from(x)).collect();
            TensorData::U32(v.map_err(|_| {
                OnnxError::tensor(name, "uint64_data holds a value out of uint32 range")
            })?)
        }
        DType::I32 => {
            check("int32_data", t.int32_data.len())?;
            TensorData::I32(t.int32_data.clone())
        }
        DType::I16 => TensorData::I16(narrow(t, n, dtype, |x| x as i16)?),
        DType::U16 => TensorData::U16(narrow(t, n, dtype, |x| x as u16)?),
        DType::I8 => TensorData::I8(narrow(t, n, dtype, |x| x as i8)?),
        DType::U8 => TensorData::U8(narrow(t, n, dtype, |x| x as u8)?),
        DType::Bool => TensorData::Bool(narrow(t, n, dtype, |x| x != 0)?),
        DType::F16 => TensorData::F16(narrow(t, n, dtype, |x| f16::from_bits(x as u16))?),
        DType::BF16 => TensorData::BF16(narrow(t, n, dtype, |x| bf16::from_bits(x as u16))?),
        DType::F8E4M3FN => TensorData::F8E4M3FN(narrow(t, n, dtype, |x| x as u8)?),
        DType::F8E5M2 => TensorData::F8E5M2(narrow(t, n, dtype, |x| x as u8)?),
        DType::I4 | DType::U4 => {
            let nibbles = int4_from_int32_data(name, &t.int32_data, n, dtype)?;
            if dtype == DType::I4 {
                TensorData::I4(nibbles.into_iter().map(int4::sign_extend4).collect())
            } else {
                TensorData::U4(nibbles)
            }
        }
        DType::String => unreachable!("strings are decoded from string_data"),
    })
}

/// 4-bit values from `int32_data`: the spec packs two per entry (low nibble first); writers that
/// store one value per entry are accepted too when the count says so unambiguously.
fn int4_from_int32_data(name: &str, v: &[i32], n: usize, dtype: DType) -> Result<Vec<u8>> {
    if v.len() == n.div_ceil(2) {
        let bytes: Vec<u8> = v.iter().map(|&x| x as u8).collect();
        Ok(int4::unpack_u4(&bytes, n))
    } else if v.len() == n {
        Ok(v.iter().map(|&x| (x as u8) & 0x0f).collect())
    } else {
        Err(count_error(name, "int32_data", v.len(), n, dtype))
    }
}

fn strings_from_proto(t: &TensorProto, n: usize) -> Result<TensorData> {
    if t.string_data.len() != n {
        return Err(count_error(&t.name, "string_data", t.string_data.len(), n, DType::String));
    }
    let v: std::result::Result<Vec<String>, _> =
        t.string_data.iter().map(|b| String::from_utf8(b.clone())).collect();
    let v = v.map_err(|_| OnnxError::tensor(&t.name, "string_data holds invalid UTF-8"))?;
    Ok(TensorData::String(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::tensor_proto::DataType;
    use prost::Message;

    /// `n` varied elements of `dtype`, including each type's extremes.
    fn sample(dtype: DType, n: usize) -> Tensor {
        let i = || (0..n as i64).map(|i| i * 37 - 50);
        let data = match dtype {
            DType::F32 => TensorData::F32(
                [0.0, -0.0, 1.5, f32::INFINITY, f32::MIN_POSITIVE, -3.25e30]
                    .into_iter()
                    .cycle()
                    .take(n)
                    .collect(),
            ),
            DType::F64 => TensorData::F64(i().map(|x| x as f64 * 1e-3 - 1e300).collect()),
            DType::F16 => TensorData::F16(i().map(|x| f16::from_f32(x as f32 * 0.3)).collect()),
            DType::BF16 => TensorData::BF16(i().map(|x| bf16::from_f32(x as f32 * 0.3)).collect()),
            DType::F8E4M3FN => TensorData::F8E4M3FN(i().map(|x| (x * 7) as u8).collect()),
            DType::F8E5M2 => TensorData::F8E5M2(i().map(|x| (x * 11) as u8).collect()),
            DType::I64 => TensorData::I64(i().map(|x| x.wrapping_mul(i64::MAX / 97)).collect()),
            DType::I32 => TensorData::I32(i().map(|x| (x * 40_000_000) as i32).collect()),
            DType::I16 => TensorData::I16(i().map(|x| (x * 1000) as i16).collect()),
            DType::I8 => TensorData::I8(i().map(|x| x as i8).collect()),
            DType::U64 => {
                TensorData::U64(i().map(|x| (x as u64).wrapping_mul(u64::MAX / 3)).collect())
            }
            DType::U32 => TensorData::U32(i().map(|x| (x * 100_000_000) as u32).collect()),
            DType::U16 => TensorData::U16(i().map(|x| (x * 1000) as u16).collect()),
            DType::U8 => TensorData::U8(i().map(|x| x as u8).collect()),
            DType::I4 => TensorData::I4(i().map(|x| (x.rem_euclid(16) - 8) as i8).collect()),
            DType::U4 => TensorData::U4(i().map(|x| x.rem_euclid(16) as u8).collect()),
            DType::Bool => TensorData::Bool(i().map(|x| x % 3 == 0).collect()),
            DType::String => TensorData::String(i().map(|x| format!("s{x} é")).collect()),
        };
        Tensor::new(vec![n], data).unwrap()
    }

    fn through_wire(p: &TensorProto) -> TensorProto {
        TensorProto::decode(p.encode_to_vec().as_slice()).unwrap()
    }

    #[test]
    fn every_dtype_round_trips() {
        for dtype in DType::ALL {
            for n in [0, 1, 5, 6] {
                let t = sample(dtype, n);
                let p = tensor_to_proto("w", &t);
                assert_eq!(p.data_type, dtype.onnx_id());
                let back = tensor_from_proto(&through_wire(&p)).unwrap();
                assert_eq!(back, t, "{dtype} x{n}");
            }
            // Rank 0 and rank 3 shapes survive too.
            let s = Tensor::new(vec![], sample(dtype, 1).into_data()).unwrap();
            assert_eq!(tensor_from_proto(&tensor_to_proto("s", &s)).unwrap(), s);
            let m = sample(dtype, 6).reshape(vec![1, 2, 3]).unwrap();
            let p = tensor_to_proto("m", &m);
            assert_eq!(p.dims, vec![1, 2, 3]);
            assert_eq!(tensor_from_proto(&p).unwrap(), m);
        }
    }

    #[test]
    fn raw_layout_matches_onnx() {
        let t = Tensor::new(vec![3], TensorData::I4(vec![1, -2, 7])).unwrap();
        assert_eq!(tensor_to_proto("q", &t).raw_data, vec![0xe1, 0x07]);
        let t = Tensor::new(vec![2], TensorData::U4(vec![15, 3])).unwrap();
        assert_eq!(tensor_to_proto("q", &t).raw_data, vec![0x3f]);
        let t = Tensor::new(vec![2], TensorData::Bool(vec![true, false])).unwrap();
        assert_eq!(tensor_to_proto("b", &t).raw_data, vec![1, 0]);
        let t = Tensor::from_vec(vec![1], vec![1.0f32]).unwrap();
        assert_eq!(tensor_to_proto("f", &t).raw_data, vec![0, 0, 0x80, 0x3f]);
        let t = Tensor::from_vec(vec![1], vec![f16::ONE]).unwrap();
        assert_eq!(tensor_to_proto("h", &t).raw_data, vec![0x00, 0x3c]);
    }

    fn typed(dtype: DataType, dims: &[i64]) -> TensorProto {
        TensorProto {
            name: "t".into(),
            dims: dims.to_vec(),
            data_type: dtype as i32,
            ..Default::default()
        }
    }

    #[test]
    fn typed_fields_decode() {
        let mut p = typed(DataType::Float, &[2]);
        p.float_data = vec![1.5, -2.0];
        assert_eq!(tensor_from_proto(&p).unwrap().as_f32().unwrap(), &[1.5, -2.0]);

        let mut p = typed(DataType::Double, &[1]);
        p.double_data = vec![0.25];
        assert_eq!(tensor_from_proto(&p).unwrap().data(), &TensorData::F64(vec![0.25]));

        let mut p = typed(DataType::Int64, &[2]);
        p.int64_data = vec![i64::MIN, 7];
        assert_eq!(tensor_from_proto(&p).unwrap().data(), &TensorData::I64(vec![i64::MIN, 7]));

        let mut p = typed(DataType::Uint64, &[1]);
        p.uint64_data = vec![u64::MAX];
        assert_eq!(tensor_from_proto(&p).unwrap().data(), &TensorData::U64(vec![u64::MAX]));

        let mut p = typed(DataType::Uint32, &[1]);
        p.uint64_data = vec![u32::MAX as u64];
        assert_eq!(tensor_from_proto(&p).unwrap().data(), &TensorData::U32(vec![u32::MAX]));

        let cases: Vec<(DataType, Vec<i32>, TensorData)> = vec![
            (DataType::Int32, vec![-5, i32::MAX], TensorData::I32(vec![-5, i32::MAX])),
            (DataType::Int16, vec![-300, 32767], TensorData::I16(vec![-300, 32767])),
            (DataType::Uint16, vec![65535, 1], TensorData::U16(vec![65535, 1])),
            (DataType::Int8, vec![-128, 127], TensorData::I8(vec![-128, 127])),
            (DataType::Uint8, vec![255, 0], TensorData::U8(vec![255, 0])),
            (DataType::Bool, vec![1, 0], TensorData::Bool(vec![true, false])),
            (
                DataType::Float16,
                vec![0x3c00, 0xc000],
                TensorData::F16(vec![f16::ONE, f16::from_f32(-2.0)]),
            ),
            (DataType::Bfloat16, vec![0x3f80, 0], TensorData::BF16(vec![bf16::ONE, bf16::ZERO])),
            (DataType::Float8e4m3fn, vec![0x38, 0x7f], TensorData::F8E4M3FN(vec![0x38, 0x7f])),
            (DataType::Float8e5m2, vec![0x3c, 0x80], TensorData::F8E5M2(vec![0x3c, 0x80])),
        ];
        for (dt, int32_data, want) in cases {
            let mut p = typed(dt, &[2]);
            p.int32_data = int32_data;
            assert_eq!(tensor_from_proto(&through_wire(&p)).unwrap().data(), &want, "{dt:?}");
        }

        let mut p = typed(DataType::String, &[2]);
        p.string_data = vec![b"ab".to_vec(), "é".as_bytes().to_vec()];
        assert_eq!(
            tensor_from_proto(&p).unwrap().data(),
            &TensorData::String(vec!["ab".into(), "é".into()])
        );
    }

    #[test]
    fn int4_in_int32_data() {
        // The spec packs two 4-bit values per int32_data entry, first in the low nibble.
        let mut p = typed(DataType::Int4, &[3]);
        p.int32_data = vec![0xe1, 0x07];
        assert_eq!(tensor_from_proto(&p).unwrap().data(), &TensorData::I4(vec![1, -2, 7]));
        let mut p = typed(DataType::Uint4, &[4]);
        p.int32_data = vec![0x3f, 0x21];
        assert_eq!(tensor_from_proto(&p).unwrap().data(), &TensorData::U4(vec![15, 3, 1, 2]));
        // One value per entry, as some writers do, is accepted when the count is unambiguous.
        let mut p = typed(DataType::Int4, &[3]);
        p.int32_data = vec![1, -2, 7];
        assert_eq!(tensor_from_proto(&p).unwrap().data(), &TensorData::I4(vec![1, -2, 7]));
        let mut p = typed(DataType::Uint4, &[3]);
        p.int32_data = vec![1];
        assert!(tensor_from_proto(&p).is_err());
    }

    fn err(p: &TensorProto) -> String {
        tensor_from_proto(p).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_tensor() {
        let mut p = typed(DataType::Float, &[3]);
        p.name = "conv1.weight".into();
        p.raw_data = vec![0; 8];
        let e = err(&p);
        assert!(e.contains("conv1.weight") && e.contains("8 bytes") && e.contains("12"), "{e}");

        p.raw_data.clear();
        p.float_data = vec![1.0];
        assert!(err(&p).contains("float_data holds 1"), "{}", err(&p));

        let mut p = typed(DataType::Complex64, &[1]);
        p.name = "c".into();
        let e = err(&p);
        assert!(e.contains("'c'") && e.contains("complex64"), "{e}");

        let mut p = typed(DataType::Float, &[2, -1]);
        p.name = "neg".into();
        assert!(err(&p).contains("negative dim"));

        let mut p = typed(DataType::Float, &[i64::MAX, i64::MAX]);
        p.name = "huge".into();
        assert!(err(&p).contains("too many elements"));

        let mut p = typed(DataType::String, &[1]);
        p.string_data = vec![vec![0xff, 0xfe]];
        assert!(err(&p).contains("UTF-8"));

        let mut p = typed(DataType::Uint32, &[1]);
        p.uint64_data = vec![1 << 40];
        assert!(err(&p).contains("uint32 range"));

        let mut p = typed(DataType::Float, &[1]);
        p.name = "ext".into();
        p.data_location = DataLocation::External as i32;
        assert!(matches!(
            tensor_from_proto(&p),
            Err(OnnxError::ExternalDataWithoutDir { tensor }) if tensor == "ext"
        ));
    }

    #[test]
    fn dtype_names() {
        assert_eq!(dtype_from_onnx(1).unwrap(), DType::F32);
        assert_eq!(dtype_from_onnx(22).unwrap(), DType::I4);
        let e = dtype_from_onnx(18).unwrap_err().to_string();
        assert!(e.contains("float8e4m3fnuz"), "{e}");
        assert_eq!(onnx_type_name(999), "unknown");
    }

    #[test]
    fn raw_bytes_of_typed_proto() {
        let mut p = typed(DataType::Int8, &[2]);
        p.int32_data = vec![-1, 2];
        assert_eq!(proto_raw_bytes(&p).unwrap().unwrap().as_ref(), &[0xff, 2]);
        let p = typed(DataType::Complex64, &[0]);
        assert!(proto_raw_bytes(&p).unwrap().is_none());
    }
}
