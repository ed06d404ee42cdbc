//! Checking arrays against the inputs they feed: element type (after `--preprocess`), rank,
//! fixed dimensions, samples along axis 0, and the model's fixed batch.

use crate::dataset::Input;
use crate::error::{DataError, Result};
use crate::preprocess::Preprocess;
use lowbit_tensor::{DType, Dim, InputSpec};

/// `the model needs float32 [N, 4]`.
pub(crate) fn needs(spec: &InputSpec) -> String {
    format!("the model needs {}", expected(spec))
}

/// `float32 [N, 4]`, or `a tensor (any shape)`.
fn expected(spec: &InputSpec) -> String {
    format!("{} {}", spec.dtype.map_or("a tensor".into(), |d| d.to_string()), spec.shape_text())
}

/// Checks an array of `dtype` and `shape` (as stored in `source`) against the declared input,
/// `pre` converting it first where it applies; returns whether its samples lie along axis 0.
pub(crate) fn check_array(
    spec: &InputSpec,
    dtype: DType,
    shape: &[usize],
    source: &str,
    pre: Option<&Preprocess>,
) -> Result<bool> {
    let fail = |msg: String| DataError::Input {
        input: spec.name.clone(),
        at: Some(source.to_string()),
        msg,
    };
    let (dtype, shape) = match pre.and_then(|p| p.plan(spec, dtype, shape.len())) {
        Some(c) => {
            let fed = c.shape(shape);
            c.check_channels(&fed, &format!("input '{}' ({source})", spec.name))?;
            (c.dtype(), fed)
        }
        None => (dtype, shape.to_vec()),
    };
    if let Some(dt) = spec.dtype {
        if dt != dtype {
            let hint = if dt.is_float() == dtype.is_float() {
                format!(" (convert it, e.g. numpy's .astype('{}'))", numpy_name(dt))
            } else if dt.is_float() && dtype.is_integer() {
                " (pass --preprocess SPEC to convert integer images)".to_string()
            } else {
                String::new()
            };
            return Err(fail(format!(
                "the model expects {}, the file holds {dtype} {shape:?}{hint}",
                expected(spec)
            )));
        }
    }
    let Some(dims) = &spec.dims else { return Ok(false) };
    if dims.is_empty() {
        if !shape.is_empty() {
            return Err(fail(format!(
                "the model expects a scalar {}, the file holds shape {shape:?}",
                expected(spec)
            )));
        }
        return Ok(false);
    }
    let mismatch = shape.len() != dims.len()
        || dims[1..].iter().zip(&shape[1..]).any(|(d, &n)| matches!(d, Dim::Fixed(f) if *f != n));
    if mismatch {
        return Err(fail(format!(
            "the model expects {} with samples along axis 0, the file holds shape {shape:?}",
            expected(spec)
        )));
    }
    if shape[0] == 0 {
        return Err(fail(format!("the file holds no samples (shape {shape:?})")));
    }
    if let Dim::Fixed(b) = dims[0] {
        if b == 0 || !shape[0].is_multiple_of(b) {
            return Err(fail(format!(
                "the model's first dimension is fixed at {b}, but the file holds {} rows, not \
                 a multiple of {b}",
                shape[0]
            )));
        }
    }
    Ok(true)
}

fn numpy_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F64 => "float64",
        DType::F16 => "float16",
        DType::I64 => "int64",
        DType::I32 => "int32",
        DType::I16 => "int16",
        DType::I8 => "int8",
        DType::U64 => "uint64",
        DType::U32 => "uint32",
        DType::U16 => "uint16",
        DType::U8 => "uint8",
        DType::Bool => "bool",
        other => other.name(),
    }
}

/// Whether an array of `dtype` and rank `rank` stored in a per-sample file lacks the batch
/// axis: its rank is one less than the input's, or two less for an integer image that `pre`
/// also gives a channel axis.
pub(crate) fn lacks_batch_axis(
    spec: &InputSpec,
    dtype: DType,
    rank: usize,
    pre: Option<&Preprocess>,
) -> bool {
    let Some(dims) = spec.dims.as_ref().filter(|d| !d.is_empty()) else { return false };
    let converted = pre.is_some() && spec.dtype.is_some_and(|d| d.is_float()) && dtype.is_integer();
    dims.len() == rank + 1 || (converted && dims.len() == rank + 2)
}

/// Element type and shape of an input as fed (after `--preprocess`), from its stored form.
pub(crate) fn fed_form(
    pre: Option<&Preprocess>,
    spec: &InputSpec,
    dtype: DType,
    shape: &[usize],
) -> (DType, Vec<usize>) {
    match pre.and_then(|p| p.plan(spec, dtype, shape.len())) {
        Some(c) => (c.dtype(), c.shape(shape)),
        None => (dtype, shape.to_vec()),
    }
}

/// The model's fixed first dimension, when a batched input declares one.
pub(crate) fn fixed_batch(inputs: &[Input]) -> Result<Option<usize>> {
    let mut fixed: Option<(usize, &str)> = None;
    for a in inputs.iter().filter(|a| a.batched) {
        if let Some(Dim::Fixed(b)) = a.spec.dims.as_ref().and_then(|d| d.first()) {
            match fixed {
                Some((fb, other)) if fb != *b => {
                    return Err(DataError::Invalid(format!(
                        "the model fixes the first dimension of '{other}' at {fb} and of '{}' \
                         at {b}: lowbit cannot batch it",
                        a.spec.name
                    )))
                }
                _ => fixed = Some((*b, &a.spec.name)),
            }
        }
    }
    Ok(fixed.map(|(b, _)| b))
}

/// The number of samples along axis 0 that every batched input agrees on (1 when nothing is
/// batched); `shapes` are the inputs' shapes, `place` prefixes the error (a file, or nothing).
pub(crate) fn common_rows<'a>(
    inputs: &[Input],
    shapes: impl Iterator<Item = Option<&'a [usize]>>,
    place: &str,
) -> Result<usize> {
    let mut rows: Option<(usize, &str)> = None;
    for (a, shape) in inputs.iter().zip(shapes) {
        let Some(shape) = shape.filter(|_| a.batched) else { continue };
        match rows {
            Some((n, other)) if n != shape[0] => {
                return Err(DataError::Invalid(format!(
                    "{place}inputs disagree on the number of samples (axis 0): '{other}' has \
                     {n}, '{}' has {}",
                    a.spec.name, shape[0]
                )))
            }
            _ => rows = Some((shape[0], &a.spec.name)),
        }
    }
    Ok(rows.map_or(1, |(n, _)| n))
}
