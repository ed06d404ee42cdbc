//! Helpers shared by op families: axis normalization, broadcasting, strides.

use crate::bail;
use crate::error::OpResult;

/// Maps a possibly negative ONNX axis into `0..rank`.
pub fn normalize_axis(axis: i64, rank: usize) -> OpResult<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) {
        bail!("axis {axis} is out of range for rank {rank}");
    }
    Ok(a as usize)
}

/// Maps an ONNX axis list into `0..rank`, rejecting repeated axes.
pub fn normalize_axes(axes: &[i64], rank: usize) -> OpResult<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = normalize_axis(a, rank)?;
        if out.contains(&n) {
            bail!("axis {a} is repeated");
        }
        out.push(n);
    }
    Ok(out)
}

/// Numpy-style broadcast of two shapes.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> OpResult<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
        let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => bail!("shapes {a:?} and {b:?} cannot be broadcast together"),
        };
    }
    Ok(out)
}

/// Row-major strides of a shape, in elements.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Strides to read a tensor of `shape` as if broadcast to `out` (0 on broadcast dims).
pub fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let s = strides(shape);
    let off = out.len() - shape.len();
    (0..out.len()).map(|i| if i < off || shape[i - off] == 1 { 0 } else { s[i - off] }).collect()
}

/// The output-stage activation of a fused op, written as ONNX Runtime's `FusedConv` writes it:
/// `activation` (`Relu`, `Clip`, `LeakyRelu`; absent: none) and `activation_params`
/// (`[min, max]` for `Clip`, `[alpha]` for `LeakyRelu`).
pub(crate) fn fused_activation(
    a: &lowbit_onnx::attr::Attrs,
) -> OpResult<lowbit_kernels::gemm::Activation> {
    use lowbit_kernels::gemm::Activation;
    let params = a.floats("activation_params")?.unwrap_or_default();
    let want = |n: usize, what: &str| -> OpResult<()> {
        if params.len() != n {
            bail!("activation {what} needs {n} activation_params, got {}", params.len());
        }
        Ok(())
    };
    Ok(match a.string("activation")?.as_deref() {
        None => Activation::None,
        Some("Relu") => Activation::Relu,
        Some("Clip") => {
            want(2, "Clip")?;
            Activation::Clip(params[0], params[1])
        }
        Some("LeakyRelu") => {
            want(1, "LeakyRelu")?;
            Activation::LeakyRelu(params[0])
        }
        Some(other) => bail!("unsupported fused activation '{other}'"),
    })
}

/// The `channels_last` attribute (0, the default, or 1) of the ops that read `[N, spatial..., C]`.
pub(crate) fn channels_last_attr(a: &lowbit_onnx::attr::Attrs) -> OpResult<bool> {
    match a.int_or("channels_last", 0)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(a.invalid("channels_last", format!("must be 0 or 1, got {v}")).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast_shapes(&[2, 1, 3], &[4, 1]).unwrap(), vec![2, 4, 3]);
        assert_eq!(broadcast_shapes(&[], &[5]).unwrap(), vec![5]);
        assert!(broadcast_shapes(&[2, 3], &[4]).is_err());
        assert_eq!(broadcast_strides(&[4, 1], &[2, 4, 3]), vec![0, 1, 0]);
    }

    #[test]
    fn negative_axes() {
        assert_eq!(normalize_axis(-1, 3).unwrap(), 2);
        assert!(normalize_axis(3, 3).is_err());
    }
}
