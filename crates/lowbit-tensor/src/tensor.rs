//! The dense tensor type and its typed storage.

use crate::error::{Result, TensorError};
use crate::DType;
use half::{bf16, f16};

/// Typed storage, one variant per [`DType`]. Float8 values are kept as their bit patterns;
/// int4/uint4 as one value per byte (already sign-extended for int4).
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F8E4M3FN(Vec<u8>),
    F8E5M2(Vec<u8>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I16(Vec<i16>),
    I8(Vec<i8>),
    U64(Vec<u64>),
    U32(Vec<u32>),
    U16(Vec<u16>),
    U8(Vec<u8>),
    I4(Vec<i8>),
    U4(Vec<u8>),
    Bool(Vec<bool>),
    String(Vec<String>),
}

/// Applies `$body` to the vector inside any [`TensorData`] variant, bound as `$v`.
#[macro_export]
macro_rules! match_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::TensorData::F32($v) => $body,
            $crate::TensorData::F64($v) => $body,
            $crate::TensorData::F16($v) => $body,
            $crate::TensorData::BF16($v) => $body,
            $crate::TensorData::F8E4M3FN($v) => $body,
            $crate::TensorData::F8E5M2($v) => $body,
            $crate::TensorData::I64($v) => $body,
            $crate::TensorData::I32($v) => $body,
            $crate::TensorData::I16($v) => $body,
            $crate::TensorData::I8($v) => $body,
            $crate::TensorData::U64($v) => $body,
            $crate::TensorData::U32($v) => $body,
            $crate::TensorData::U16($v) => $body,
            $crate::TensorData::U8($v) => $body,
            $crate::TensorData::I4($v) => $body,
            $crate::TensorData::U4($v) => $body,
            $crate::TensorData::Bool($v) => $body,
            $crate::TensorData::String($v) => $body,
        }
    };
}

impl TensorData {
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::F64(_) => DType::F64,
            TensorData::F16(_) => DType::F16,
            TensorData::BF16(_) => DType::BF16,
            TensorData::F8E4M3FN(_) => DType::F8E4M3FN,
            TensorData::F8E5M2(_) => DType::F8E5M2,
            TensorData::I64(_) => DType::I64,
            TensorData::I32(_) => DType::I32,
            TensorData::I16(_) => DType::I16,
            TensorData::I8(_) => DType::I8,
            TensorData::U64(_) => DType::U64,
            TensorData::U32(_) => DType::U32,
            TensorData::U16(_) => DType::U16,
            TensorData::U8(_) => DType::U8,
            TensorData::I4(_) => DType::I4,
            TensorData::U4(_) => DType::U4,
            TensorData::Bool(_) => DType::Bool,
            TensorData::String(_) => DType::String,
        }
    }

    pub fn len(&self) -> usize {
        match_data!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` zero (false, empty string) elements of `dtype`.
    pub fn zeros(dtype: DType, n: usize) -> TensorData {
        // Every element type's `Default` is its zero (false, empty string).
        macro_rules! zeros {
            ($($v:ident)*) => {
                match dtype {
                    $(DType::$v => TensorData::$v(vec![Default::default(); n]),)*
                }
            };
        }
        zeros! { F32 F64 F16 BF16 F8E4M3FN F8E5M2 I64 I32 I16 I8 U64 U32 U16 U8 I4 U4 Bool String }
    }

    /// Elements picked by `idx` (a gather over the flat storage), same dtype.
    pub fn gather(&self, idx: &[usize]) -> TensorData {
        macro_rules! pick {
            ($variant:ident, $v:expr) => {
                TensorData::$variant(idx.iter().map(|&i| $v[i].clone()).collect())
            };
        }
        match self {
            TensorData::F32(v) => pick!(F32, v),
            TensorData::F64(v) => pick!(F64, v),
            TensorData::F16(v) => pick!(F16, v),
            TensorData::BF16(v) => pick!(BF16, v),
            TensorData::F8E4M3FN(v) => pick!(F8E4M3FN, v),
            TensorData::F8E5M2(v) => pick!(F8E5M2, v),
            TensorData::I64(v) => pick!(I64, v),
            TensorData::I32(v) => pick!(I32, v),
            TensorData::I16(v) => pick!(I16, v),
            TensorData::I8(v) => pick!(I8, v),
            TensorData::U64(v) => pick!(U64, v),
            TensorData::U32(v) => pick!(U32, v),
            TensorData::U16(v) => pick!(U16, v),
            TensorData::U8(v) => pick!(U8, v),
            TensorData::I4(v) => pick!(I4, v),
            TensorData::U4(v) => pick!(U4, v),
            TensorData::Bool(v) => pick!(Bool, v),
            TensorData::String(v) => pick!(String, v),
        }
    }
}

/// A Rust scalar type that is the in-memory element of one [`TensorData`] variant.
pub trait Element: Copy + PartialEq + std::fmt::Debug + Send + Sync + 'static {
    const DTYPE: DType;
    fn wrap(v: Vec<Self>) -> TensorData;
    fn slice(d: &TensorData) -> Option<&[Self]>;
    fn slice_mut(d: &mut TensorData) -> Option<&mut [Self]>;
    fn unwrap(d: TensorData) -> std::result::Result<Vec<Self>, TensorData>;
}

macro_rules! element {
    ($t:ty, $variant:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            fn wrap(v: Vec<Self>) -> TensorData {
                TensorData::$variant(v)
            }
            fn slice(d: &TensorData) -> Option<&[Self]> {
                match d {
                    TensorData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(d: &mut TensorData) -> Option<&mut [Self]> {
                match d {
                    TensorData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn unwrap(d: TensorData) -> std::result::Result<Vec<Self>, TensorData> {
                match d {
                    TensorData::$variant(v) => Ok(v),
                    other => Err(other),
                }
            }
        }
    };
}

macro_rules! elements {
    ($($t:ty => $variant:ident),*) => { $(element!($t, $variant);)* };
}
elements! { f32 => F32, f64 => F64, f16 => F16, bf16 => BF16, i64 => I64, i32 => I32, i16 => I16 }
elements! { i8 => I8, u64 => U64, u32 => U32, u16 => U16, u8 => U8, bool => Bool }

/// A dense row-major tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

/// Number of elements of a shape (1 for a scalar).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// A tensor from a shape and matching storage.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Tensor> {
        let expected = numel(&shape);
        if expected != data.len() {
            return Err(TensorError::ElementCount { shape, expected, actual: data.len() });
        }
        Ok(Tensor { shape, data })
    }

    /// A tensor from a typed vector.
    pub fn from_vec<T: Element>(shape: Vec<usize>, v: Vec<T>) -> Result<Tensor> {
        Tensor::new(shape, T::wrap(v))
    }

    /// A rank-0 tensor.
    pub fn scalar<T: Element>(v: T) -> Tensor {
        Tensor { shape: vec![], data: T::wrap(vec![v]) }
    }

    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Tensor {
        let n = numel(&shape);
        Tensor { shape, data: TensorData::zeros(dtype, n) }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut TensorData {
        &mut self.data
    }

    pub fn into_data(self) -> TensorData {
        self.data
    }

    pub fn into_parts(self) -> (Vec<usize>, TensorData) {
        (self.shape, self.data)
    }

    /// The same elements under another shape with the same element count.
    pub fn reshape(self, shape: Vec<usize>) -> Result<Tensor> {
        Tensor::new(shape, self.data)
    }

    /// Typed view of the elements; errors name both dtypes.
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        T::slice(&self.data).ok_or(TensorError::DType { expected: T::DTYPE, actual: self.dtype() })
    }

    pub fn as_slice_mut<T: Element>(&mut self) -> Result<&mut [T]> {
        let actual = self.dtype();
        T::slice_mut(&mut self.data).ok_or(TensorError::DType { expected: T::DTYPE, actual })
    }

    pub fn into_vec<T: Element>(self) -> Result<Vec<T>> {
        T::unwrap(self.data)
            .map_err(|d| TensorError::DType { expected: T::DTYPE, actual: d.dtype() })
    }

    pub fn as_f32(&self) -> Result<&[f32]> {
        self.as_slice::<f32>()
    }

    pub fn as_i64(&self) -> Result<&[i64]> {
        self.as_slice::<i64>()
    }

    /// Every element as f64 (bools as 0/1). Errors for strings. Used for shape arithmetic and
    /// comparisons, not hot loops.
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        crate::cast::to_f64_vec(&self.data)
    }

    /// Every element as f32 (lossy for 64-bit types).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        Ok(self.to_f64_vec()?.into_iter().map(|x| x as f32).collect())
    }

    /// Every element as i64 (floats truncated toward zero). Used for shape-like inputs.
    pub fn to_i64_vec(&self) -> Result<Vec<i64>> {
        match &self.data {
            TensorData::I64(v) => Ok(v.clone()),
            TensorData::I32(v) => Ok(v.iter().map(|&x| x as i64).collect()),
            _ => Ok(self.to_f64_vec()?.into_iter().map(|x| x as i64).collect()),
        }
    }

    /// The tensor converted to `dtype` with ONNX `Cast` semantics (float→int truncates
    /// toward zero and wraps like C++ static_cast on the target width; float→float8 saturates).
    pub fn cast(&self, dtype: DType) -> Result<Tensor> {
        Ok(Tensor { shape: self.shape.clone(), data: crate::cast::cast(&self.data, dtype)? })
    }
}
