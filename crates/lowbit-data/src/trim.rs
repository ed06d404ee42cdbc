//! Padding trim: when a batched integer or bool input named like `*mask*` has shape `[N, L]`,
//! a batch may be cut, for every batched input whose axis 1 also has length `L` (and is free in
//! the model), to the longest real length in the batch (last non-zero mask position + 1).

use crate::dataset::Input;
use crate::error::{invalid_bail, Result};
use lowbit_tensor::{DType, Dim, Tensor};

/// The batched rank-2 integer or bool input named like `*mask*`, by its fed form.
pub(crate) fn find_mask(inputs: &[Input], fed: &[(DType, Vec<usize>)]) -> Option<usize> {
    inputs.iter().zip(fed).position(|(a, (dtype, shape))| {
        a.batched
            && shape.len() == 2
            && a.spec.name.to_ascii_lowercase().contains("mask")
            && (dtype.is_integer() || *dtype == DType::Bool)
    })
}

/// Cuts the batch `fed` (one tensor per input) to the longest real length of mask input `mask`.
pub(crate) fn trim_to_mask(inputs: &[Input], fed: &mut [Tensor], mask: usize) -> Result<()> {
    let width = fed[mask].shape()[1];
    let vals = fed[mask].to_f64_vec()?;
    let len = vals
        .chunks(width.max(1))
        .map(|row| row.iter().rposition(|&v| v != 0.0).map_or(0, |p| p + 1))
        .max()
        .unwrap_or(0)
        .max(1)
        .min(width);
    for (a, t) in inputs.iter().zip(fed.iter_mut()) {
        let axis1_free = a
            .spec
            .dims
            .as_ref()
            .and_then(|d| d.get(1))
            .is_some_and(|d| !matches!(d, Dim::Fixed(_)));
        if a.batched && t.rank() >= 2 && t.shape()[1] == width && axis1_free {
            *t = trim_axis1(t, len)?;
        }
    }
    Ok(())
}

/// The first `len` entries along axis 1 of a tensor of rank ≥ 2.
pub fn trim_axis1(t: &Tensor, len: usize) -> Result<Tensor> {
    let shape = t.shape();
    if shape.len() < 2 || len > shape[1] {
        invalid_bail!("cannot trim axis 1 of shape {shape:?} to {len}");
    }
    if len == shape[1] {
        return Ok(t.clone());
    }
    let (n, m) = (shape[0], shape[1]);
    let inner: usize = shape[2..].iter().product();
    let mut idx = Vec::with_capacity(n * len * inner);
    for r in 0..n {
        for j in 0..len {
            let base = (r * m + j) * inner;
            idx.extend(base..base + inner);
        }
    }
    let mut s = shape.to_vec();
    s[1] = len;
    Ok(Tensor::new(s, t.data().gather(&idx))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_axis1_keeps_leading_positions() {
        let x = Tensor::from_vec(vec![2, 3], vec![1i64, 2, 0, 4, 5, 6]).unwrap();
        let y = trim_axis1(&x, 2).unwrap();
        assert_eq!(y, Tensor::from_vec(vec![2, 2], vec![1i64, 2, 4, 5]).unwrap());
    }
}
