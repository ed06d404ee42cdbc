//! Inputs made up from a model's declared shapes, for timing without data: free dimensions are
//! 1 on axis 0 and 16 elsewhere; floats are N(0, 1) from the caller's generator; integer inputs
//! named like `*mask*` are 1, `*type*` / `*segment*` 0, `*position*` 0, 1, 2, … along the last
//! axis, other `*id*` inputs small token ids in 1..1000, anything else 0; bools are true.

use crate::error::{invalid_bail, Result};
use crate::rng::Rng;
use lowbit_tensor::{DType, Dim, InputSpec, Tensor};

/// One synthetic tensor for a declared input (see the module docs).
pub fn synth_input(spec: &InputSpec, rng: &mut Rng) -> Result<Tensor> {
    let Some(dims) = &spec.dims else {
        invalid_bail!("input '{}' declares no shape: pass real inputs with --data", spec.name);
    };
    let shape: Vec<usize> = dims
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            Dim::Fixed(n) => *n,
            _ if i == 0 => 1,
            _ => 16,
        })
        .collect();
    let n: usize = shape.iter().product();
    let dtype = spec.dtype.unwrap_or(DType::F32);
    let name = spec.name.to_ascii_lowercase();
    let t = if dtype.is_float() {
        Tensor::from_vec(shape, rng.normals(n, 1.0))?.cast(dtype)?
    } else if dtype == DType::Bool {
        Tensor::from_vec(shape, vec![true; n])?
    } else if dtype.is_integer() {
        let last = shape.last().copied().unwrap_or(1).max(1);
        let v: Vec<i64> = if name.contains("mask") {
            vec![1; n]
        } else if name.contains("type") || name.contains("segment") {
            vec![0; n]
        } else if name.contains("position") {
            (0..n).map(|i| (i % last) as i64).collect()
        } else if name.contains("id") {
            (0..n).map(|_| 1 + (rng.next_u64() % 999) as i64).collect()
        } else {
            vec![0; n]
        };
        Tensor::from_vec(shape, v)?.cast(dtype)?
    } else {
        invalid_bail!("input '{}' is {dtype}: pass real inputs with --data", spec.name);
    };
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_inputs_follow_names_and_shapes() {
        let spec = |name: &str, dtype, dims| InputSpec {
            name: name.into(),
            dtype: Some(dtype),
            dims: Some(dims),
        };
        let free = || vec![Dim::Symbolic("batch".into()), Dim::Symbolic("seq".into())];
        let mut rng = Rng::new(1);
        let mask = synth_input(&spec("attention_mask", DType::I64, free()), &mut rng).unwrap();
        assert_eq!(mask.shape(), &[1, 16]);
        assert!(mask.as_i64().unwrap().iter().all(|&v| v == 1));
        let ids = synth_input(&spec("input_ids", DType::I64, free()), &mut rng).unwrap();
        assert!(ids.as_i64().unwrap().iter().all(|&v| (1..1000).contains(&v)));
        let x = synth_input(&spec("x", DType::F32, vec![Dim::Fixed(1), Dim::Fixed(3)]), &mut rng)
            .unwrap();
        assert_eq!(x.shape(), &[1, 3]);
    }
}
