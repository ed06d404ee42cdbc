//! Dtype-generic row handling: slicing samples along axis 0 and joining per-batch arrays back
//! into one (zero-padding trailing axes that differ).

use crate::error::{invalid_bail, Result};
use lowbit_tensor::{DType, Tensor, TensorData};

/// Rows `start..end` along axis 0 of a tensor of rank ≥ 1.
pub fn slice_rows(t: &Tensor, start: usize, end: usize) -> Result<Tensor> {
    let shape = t.shape();
    if shape.is_empty() || start > end || end > shape[0] {
        invalid_bail!("cannot take rows {start}..{end} of a tensor of shape {shape:?}");
    }
    let row: usize = shape[1..].iter().product();
    if start == 0 && end == shape[0] {
        return Ok(t.clone());
    }
    let idx: Vec<usize> = (start * row..end * row).collect();
    let mut s = shape.to_vec();
    s[0] = end - start;
    Ok(Tensor::new(s, t.data().gather(&idx))?)
}

/// Concatenates storages of one dtype.
fn concat_data(dtype: DType, parts: Vec<TensorData>) -> Result<TensorData> {
    macro_rules! join {
        ($($v:ident),*) => {{
            let mut it = parts.into_iter();
            let Some(first) = it.next() else { return Ok(TensorData::zeros(dtype, 0)) };
            match first {
                $(TensorData::$v(mut acc) => {
                    for p in it {
                        match p {
                            TensorData::$v(v) => acc.extend(v),
                            other => invalid_bail!("cannot join {} with {}", dtype, other.dtype()),
                        }
                    }
                    TensorData::$v(acc)
                })*
            }
        }};
    }
    Ok(join!(
        F32, F64, F16, BF16, F8E4M3FN, F8E5M2, I64, I32, I16, I8, U64, U32, U16, U8, I4, U4, Bool,
        String
    ))
}

/// Pads the trailing axes (all but axis 0) of `t` with zeros up to `target`.
fn pad_trailing(t: Tensor, target: &[usize]) -> Result<Tensor> {
    let shape = t.shape().to_vec();
    if shape[1..] == *target {
        return Ok(t);
    }
    let n = shape[0];
    let total = t.len();
    let dtype = t.dtype();
    // Gather from the data plus one trailing zero that every padded position points at.
    let data = concat_data(dtype, vec![t.into_data(), TensorData::zeros(dtype, 1)])?;
    let out_shape: Vec<usize> = std::iter::once(n).chain(target.iter().copied()).collect();
    let out_len: usize = out_shape.iter().product();
    let mut idx = Vec::with_capacity(out_len);
    let mut coord = vec![0usize; out_shape.len()];
    for _ in 0..out_len {
        let inside = coord.iter().zip(&shape).all(|(c, s)| c < s);
        idx.push(if inside {
            coord.iter().zip(&shape).fold(0, |acc, (c, s)| acc * s + c)
        } else {
            total
        });
        for ax in (0..coord.len()).rev() {
            coord[ax] += 1;
            if coord[ax] < out_shape[ax] {
                break;
            }
            coord[ax] = 0;
        }
    }
    Ok(Tensor::new(out_shape, data.gather(&idx))?)
}

/// Joins per-batch outputs along axis 0. When their trailing dims differ (batches trimmed to
/// different lengths), each is zero-padded to the largest first.
pub fn concat_rows(parts: Vec<Tensor>) -> Result<Tensor> {
    let Some(first) = parts.first() else { invalid_bail!("no outputs to join") };
    let (rank, dtype) = (first.rank(), first.dtype());
    if rank == 0 {
        invalid_bail!("cannot join scalars along axis 0");
    }
    let mut target = first.shape()[1..].to_vec();
    for p in &parts {
        if p.rank() != rank || p.dtype() != dtype {
            invalid_bail!(
                "batches disagree: {} {:?} vs {} {:?}",
                dtype,
                first.shape(),
                p.dtype(),
                p.shape()
            );
        }
        for (t, &d) in target.iter_mut().zip(&p.shape()[1..]) {
            *t = (*t).max(d);
        }
    }
    let mut rows = 0;
    let mut datas = Vec::with_capacity(parts.len());
    for p in parts {
        rows += p.shape()[0];
        datas.push(pad_trailing(p, &target)?.into_data());
    }
    let shape: Vec<usize> = std::iter::once(rows).chain(target).collect();
    Ok(Tensor::new(shape, concat_data(dtype, datas)?)?)
}

/// Stacks equal-shaped tensors along a new axis 0 (like `np.stack`).
pub fn stack_new_axis(parts: Vec<Tensor>) -> Result<Tensor> {
    let Some(first) = parts.first() else { invalid_bail!("no outputs to stack") };
    let shape = first.shape().to_vec();
    let dtype = first.dtype();
    if let Some(p) = parts.iter().find(|p| p.shape() != shape || p.dtype() != dtype) {
        invalid_bail!("runs disagree: {} {:?} vs {} {:?}", dtype, shape, p.dtype(), p.shape());
    }
    let out_shape: Vec<usize> = std::iter::once(parts.len()).chain(shape).collect();
    let data = concat_data(dtype, parts.into_iter().map(Tensor::into_data).collect())?;
    Ok(Tensor::new(out_shape, data)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: Vec<usize>, v: Vec<f32>) -> Tensor {
        Tensor::from_vec(shape, v).unwrap()
    }

    #[test]
    fn slice_rows_takes_samples() {
        let x = t(vec![3, 2], vec![0., 1., 2., 3., 4., 5.]);
        assert_eq!(slice_rows(&x, 1, 3).unwrap(), t(vec![2, 2], vec![2., 3., 4., 5.]));
        assert!(slice_rows(&x, 2, 4).is_err());
    }

    #[test]
    fn concat_rows_pads_shorter_batches_with_zeros() {
        let a = t(vec![1, 2, 1], vec![1., 2.]);
        let b = t(vec![2, 1, 1], vec![3., 4.]);
        let c = concat_rows(vec![a, b]).unwrap();
        assert_eq!(c, t(vec![3, 2, 1], vec![1., 2., 3., 0., 4., 0.]));
    }

    #[test]
    fn stack_new_axis_adds_a_leading_axis() {
        let a = Tensor::from_vec(vec![2], vec![1i32, 2]).unwrap();
        let b = Tensor::from_vec(vec![2], vec![3i32, 4]).unwrap();
        let s = stack_new_axis(vec![a, b]).unwrap();
        assert_eq!(s, Tensor::from_vec(vec![2, 2], vec![1i32, 2, 3, 4]).unwrap());
    }
}
