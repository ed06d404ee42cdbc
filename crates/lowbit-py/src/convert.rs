//! numpy arrays to lowbit tensors and back. Arrays coming in are copied once into the tensor's
//! own storage (lowbit's tensors own their data); tensors going out hand their storage to numpy
//! without a copy. Anything else numpy can turn into an array (lists, scalars, other
//! libraries' arrays) goes through `numpy.asarray` first.

use half::f16;
use lowbit_tensor::{DType, Tensor, TensorData};
use numpy::{Element, PyArray1, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Copies a typed numpy array into a tensor, in row-major order.
fn copy_array<T: Element + Copy>(a: &Bound<'_, PyArrayDyn<T>>) -> Vec<T> {
    let ro = a.readonly();
    // `as_slice` also accepts Fortran-ordered memory, which is column-major: only a C-ordered
    // array is the tensor's layout as it lies.
    match ro.as_slice() {
        Ok(s) if a.is_c_contiguous() => s.to_vec(),
        _ => ro.as_array().iter().copied().collect(),
    }
}

/// `obj` (a numpy array, or anything `numpy.asarray` accepts) as a tensor; `what` names it in
/// errors.
pub fn to_tensor(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Tensor> {
    let py = obj.py();
    let arr = if obj.is_instance_of::<numpy::PyUntypedArray>() {
        obj.clone()
    } else {
        py.import("numpy")?.call_method1("asarray", (obj,))?
    };
    let untyped = arr.cast::<numpy::PyUntypedArray>()?;
    let shape = untyped.shape().to_vec();
    macro_rules! try_types {
        ($($t:ty),*) => {
            $(
                if let Ok(a) = arr.cast::<PyArrayDyn<$t>>() {
                    return Tensor::from_vec(shape, copy_array(a))
                        .map_err(|e| PyTypeError::new_err(format!("{what}: {e}")));
                }
            )*
        };
    }
    try_types!(f32, f64, f16, i64, i32, i16, i8, u8, u16, u32, u64, bool);
    Err(PyTypeError::new_err(format!(
        "{what}: numpy dtype {} is not supported (use float32, float16, float64, an integer type \
         or bool)",
        untyped.dtype()
    )))
}

/// One run's feeds from a dict of input name → array.
pub fn feeds_from_dict(d: &Bound<'_, PyDict>) -> PyResult<Vec<(String, Tensor)>> {
    d.iter()
        .map(|(k, v)| {
            let name: String = k.extract().map_err(|_| {
                PyTypeError::new_err(format!("feed keys must be input names (str), got {k}"))
            })?;
            let t = to_tensor(&v, &format!("input '{name}'"))?;
            Ok((name, t))
        })
        .collect()
}

fn numpy_from<'py, T: Element>(
    py: Python<'py>,
    v: Vec<T>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyAny>> {
    Ok(PyArray1::from_vec(py, v).reshape(shape.to_vec())?.into_any())
}

/// A tensor as a numpy array, handing over its storage. bfloat16 and float8 values, which numpy
/// has no type for, become float32; 4-bit integers one byte each.
pub fn to_numpy(py: Python<'_>, t: Tensor) -> PyResult<Bound<'_, PyAny>> {
    let widen = matches!(t.dtype(), DType::BF16 | DType::F8E4M3FN | DType::F8E5M2);
    let t = if widen {
        t.cast(DType::F32).map_err(|e| PyTypeError::new_err(e.to_string()))?
    } else {
        t
    };
    let (shape, data) = t.into_parts();
    match data {
        TensorData::F32(v) => numpy_from(py, v, &shape),
        TensorData::F64(v) => numpy_from(py, v, &shape),
        TensorData::F16(v) => numpy_from(py, v, &shape),
        TensorData::I64(v) => numpy_from(py, v, &shape),
        TensorData::I32(v) => numpy_from(py, v, &shape),
        TensorData::I16(v) => numpy_from(py, v, &shape),
        TensorData::I8(v) | TensorData::I4(v) => numpy_from(py, v, &shape),
        TensorData::U64(v) => numpy_from(py, v, &shape),
        TensorData::U32(v) => numpy_from(py, v, &shape),
        TensorData::U16(v) => numpy_from(py, v, &shape),
        TensorData::U8(v) | TensorData::U4(v) => numpy_from(py, v, &shape),
        TensorData::Bool(v) => numpy_from(py, v, &shape),
        TensorData::String(v) => {
            let list = pyo3::types::PyList::new(py, v)?;
            Ok(py
                .import("numpy")?
                .call_method1("array", (list,))?
                .call_method1("reshape", (shape,))?)
        }
        other => Err(PyTypeError::new_err(format!("cannot return {} values", other.dtype()))),
    }
}
