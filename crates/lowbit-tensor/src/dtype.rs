//! Element types, numbered as ONNX's `TensorProto.DataType` numbers them.

use std::fmt;

/// The element type of a [`crate::Tensor`]. The discriminant is the ONNX `DataType` number,
/// so conversion to and from the wire format is a cast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(i32)]
pub enum DType {
    F32 = 1,
    U8 = 2,
    I8 = 3,
    U16 = 4,
    I16 = 5,
    I32 = 6,
    I64 = 7,
    String = 8,
    Bool = 9,
    F16 = 10,
    F64 = 11,
    U32 = 12,
    U64 = 13,
    BF16 = 16,
    F8E4M3FN = 17,
    F8E5M2 = 19,
    U4 = 21,
    I4 = 22,
}

impl DType {
    /// All element types lowbit can hold.
    pub const ALL: [DType; 18] = [
        DType::F32,
        DType::U8,
        DType::I8,
        DType::U16,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::String,
        DType::Bool,
        DType::F16,
        DType::F64,
        DType::U32,
        DType::U64,
        DType::BF16,
        DType::F8E4M3FN,
        DType::F8E5M2,
        DType::U4,
        DType::I4,
    ];

    /// The ONNX `TensorProto.DataType` number.
    pub fn onnx_id(self) -> i32 {
        self as i32
    }

    /// The element type for an ONNX `DataType` number, `None` for types lowbit does not hold
    /// (complex, FNUZ float8, float4).
    pub fn from_onnx(id: i32) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.onnx_id() == id)
    }

    /// Bits one element takes in ONNX's packed `raw_data` (4 for int4/uint4, 0 for strings).
    pub fn bits(self) -> usize {
        match self {
            DType::U4 | DType::I4 => 4,
            DType::U8 | DType::I8 | DType::Bool | DType::F8E4M3FN | DType::F8E5M2 => 8,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 16,
            DType::F32 | DType::I32 | DType::U32 => 32,
            DType::F64 | DType::I64 | DType::U64 => 64,
            DType::String => 0,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(
            self,
            DType::F32 | DType::F64 | DType::F16 | DType::BF16 | DType::F8E4M3FN | DType::F8E5M2
        )
    }

    pub fn is_integer(self) -> bool {
        !self.is_float() && !matches!(self, DType::Bool | DType::String)
    }

    /// The ONNX spelling used in messages (`float`, `int8`, `float8e4m3fn`, …).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::U16 => "uint16",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::String => "string",
            DType::Bool => "bool",
            DType::F16 => "float16",
            DType::F64 => "float64",
            DType::U32 => "uint32",
            DType::U64 => "uint64",
            DType::BF16 => "bfloat16",
            DType::F8E4M3FN => "float8e4m3fn",
            DType::F8E5M2 => "float8e5m2",
            DType::U4 => "uint4",
            DType::I4 => "int4",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onnx_ids_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_onnx(d.onnx_id()), Some(d));
        }
        assert_eq!(DType::from_onnx(14), None);
    }
}
