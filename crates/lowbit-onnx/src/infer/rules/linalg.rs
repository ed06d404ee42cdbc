//! Matrix products: `MatMul` (numpy broadcasting of the batch dims, 1-D operands promoted and
//! their dim dropped again), `Gemm` (2-D, optional transposes), `Det`, `Einsum`.

use super::RuleFn;
use crate::infer::sym::fmt_shape;
use crate::infer::{out, Cx, Out, Result, SymDim};

pub(super) const RULES: &[(&str, RuleFn)] =
    &[("MatMul", matmul), ("Gemm", gemm), ("Det", det), ("Einsum", einsum)];

/// `Einsum`: the inputs' dtype; the shape when the output is explicit and no term has `...`
/// (each output letter takes its dim from an input that has it).
fn einsum(cx: &mut Cx) -> Result<Vec<Out>> {
    let eq: String = cx.attrs.string_or("equation", "")?.split_whitespace().collect();
    let shape = (|| {
        let (lhs, rhs) = eq.split_once("->")?;
        if eq.contains("...") {
            return None;
        }
        let terms: Vec<&str> = lhs.split(',').collect();
        let mut dims = Vec::new();
        for c in rhs.chars() {
            let found = terms.iter().enumerate().find_map(|(i, t)| {
                let axis = t.chars().position(|x| x == c)?;
                let s = cx.shape(i)?;
                (s.len() == t.len()).then(|| s[axis].clone())
            });
            dims.push(found?);
        }
        Some(dims)
    })();
    Ok(vec![out(cx.dtype(0), shape)])
}

fn matmul(cx: &mut Cx) -> Result<Vec<Out>> {
    Ok(vec![out(cx.dtype(0), matmul_shape(cx, 0, 1)?)])
}

/// The product's shape of inputs `a` and `b` (`None` when either is unknown).
pub(super) fn matmul_shape(cx: &mut Cx, a: usize, b: usize) -> Result<Option<Vec<SymDim>>> {
    let (Some(mut sa), Some(mut sb)) = (cx.shape(a), cx.shape(b)) else { return Ok(None) };
    if sa.is_empty() || sb.is_empty() {
        return Err(cx.err("MatMul inputs must not be scalars"));
    }
    let (va, vb) = (sa.len() == 1, sb.len() == 1);
    if va {
        sa.insert(0, SymDim::Known(1));
    }
    if vb {
        sb.push(SymDim::Known(1));
    }
    let (ka, kb) = (&sa[sa.len() - 1], &sb[sb.len() - 2]);
    if let (Some(x), Some(y)) = (ka.known(), kb.known()) {
        if x != y {
            return Err(cx.err(format!(
                "inner dims differ: {} x {}",
                fmt_shape(&cx.shape(a).unwrap_or_default()),
                fmt_shape(&cx.shape(b).unwrap_or_default())
            )));
        }
    }
    let mut shape = cx.broadcast(&[sa[..sa.len() - 2].to_vec(), sb[..sb.len() - 2].to_vec()])?;
    if !va {
        shape.push(sa[sa.len() - 2].clone());
    }
    if !vb {
        shape.push(sb[sb.len() - 1].clone());
    }
    Ok(Some(shape))
}

fn gemm(cx: &mut Cx) -> Result<Vec<Out>> {
    let ta = cx.attrs.int_or("transA", 0)? != 0;
    let tb = cx.attrs.int_or("transB", 0)? != 0;
    let shape = match (cx.shape(0), cx.shape(1)) {
        (Some(a), Some(b)) if a.len() == 2 && b.len() == 2 => {
            let (m, ka) = if ta { (&a[1], &a[0]) } else { (&a[0], &a[1]) };
            let (kb, n) = if tb { (&b[1], &b[0]) } else { (&b[0], &b[1]) };
            if let (Some(x), Some(y)) = (ka.known(), kb.known()) {
                if x != y {
                    return Err(cx.err(format!(
                        "inner dims differ: A {} (transA={}) and B {} (transB={})",
                        fmt_shape(&a),
                        ta as u8,
                        fmt_shape(&b),
                        tb as u8
                    )));
                }
            }
            Some(vec![m.clone(), n.clone()])
        }
        (Some(a), _) | (_, Some(a)) if a.len() != 2 => {
            return Err(cx.err(format!("Gemm inputs must be 2-D, got {}", fmt_shape(&a))))
        }
        _ => None,
    };
    Ok(vec![out(cx.dtype(0), shape)])
}

/// `Det`: one determinant per leading index.
fn det(cx: &mut Cx) -> Result<Vec<Out>> {
    Ok(vec![out(cx.dtype(0), cx.shape(0).map(|s| s[..s.len().saturating_sub(2)].to_vec()))])
}
