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
use lowbit_tensor::{DType, Tensor, TensorData};

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
        let d = usize::try_from(d)
            .map_err(|_| OnnxError::tensor(&t.name, format!("negative dim in shape {:?}", t.dims)))?;
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
        TensorData::I4(v) => pack_nibbles(v.iter().map(|&x| x as u8), v.len()),
        TensorData::U4(v) => pack_nibbles(v.iter().copied(), v.len()),
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

/// Packs 4-bit values two per byte, first element in the low nibble.
fn pack_nibbles(v: impl Iterator<Item = u8>, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n.div_ceil(2)];
    for (i, x) in v.enumerate() {
        out[i / 2] |= (x & 0x0f) << (4 * (i % 2));
    }
    out
}

/// The `i`-th 4-bit value of nibble-packed bytes.
fn nibble(bytes: &[u8], i: usize) -> u8 {
    (bytes[i / 2] >> (4 * (i % 2))) & 0x0f
}

/// Sign-extends a 4-bit two's-complement value.
fn sext4(x: u8) -> i8 {
    ((x << 4) as i8) >> 4
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
        DType::I4 => TensorData::I4((0..n).map(|i| sext4(nibble(raw, i))).collect()),
        DType::U4 => TensorData::U4((0..n).map(|i| nibble(raw, i)).collect()),
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
                TensorData::I4(nibbles.into_iter().map(sext4).collect())
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
        Ok((0..n).map(|i| nibble(&bytes, i)).collect())
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
