//! [`Arr`]: the dense f32 array the tape holds. Integer values the graph computes with (shapes,
//! indices, slice bounds) are held as f32 too: they are exact up to 2^24, far beyond any shape
//! or vocabulary index of the models QAT trains, and one element type keeps every op simple.

use lowbit_tensor::{DType, Tensor, TensorData};
// The engine's shape helpers: QAT's ops index exactly as the ops they train for.
pub use lowbit_engine::ops::util::strides;

#[derive(Clone, Debug, PartialEq)]
pub struct Arr {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Arr {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Arr {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len(), "shape {shape:?}");
        Arr { shape, data }
    }

    pub fn zeros(shape: &[usize]) -> Arr {
        Arr { shape: shape.to_vec(), data: vec![0.0; shape.iter().product()] }
    }

    pub fn scalar(v: f32) -> Arr {
        Arr { shape: vec![], data: vec![v] }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The values as integers (shapes, axes, indices), rounded.
    pub fn ints(&self) -> Vec<i64> {
        self.data.iter().map(|&v| v.round() as i64).collect()
    }

    /// Any tensor's values as f32 (integers and booleans converted).
    pub fn from_tensor(t: &Tensor) -> Option<Arr> {
        let data: Vec<f32> = match t.data() {
            TensorData::F32(v) => v.clone(),
            TensorData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect(),
            d => lowbit_kernels::quantize::int_values(d)?.into_iter().map(|x| x as f32).collect(),
        };
        Some(Arr { shape: t.shape().to_vec(), data })
    }

    pub fn to_tensor(&self) -> Tensor {
        Tensor::from_vec(self.shape.clone(), self.data.clone()).expect("shape matches data")
    }

    /// As a tensor of `dtype` (f32, or i64 for integer graph outputs).
    pub fn to_tensor_as(&self, dtype: DType) -> Tensor {
        match dtype {
            DType::I64 => Tensor::from_vec(
                self.shape.clone(),
                self.data.iter().map(|&v| v.round() as i64).collect::<Vec<i64>>(),
            )
            .expect("shape matches data"),
            _ => self.to_tensor(),
        }
    }

    /// `self += other` (same size).
    pub fn add_assign(&mut self, other: &Arr) {
        debug_assert_eq!(self.data.len(), other.data.len());
        for (a, b) in self.data.iter_mut().zip(&other.data) {
            *a += b;
        }
    }
}

/// A negative ONNX axis resolved against `rank`, or `None` when out of range.
pub fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    (0..rank as i64).contains(&a).then_some(a as usize)
}
