//! Reductions over axes (`Reduce*` with axes from an attribute or an input, `ArgMax`/`ArgMin`,
//! `TopK`), and the cumulative scans that keep their input's shape.

use lowbit_tensor::DType;

use super::{elementwise::unary, RuleFn};
use crate::infer::{out, Cx, Out, Result, SymDim};

pub(super) const RULES: &[(&str, RuleFn)] = &[
    ("ReduceSum", reduce),
    ("ReduceMean", reduce),
    ("ReduceMax", reduce),
    ("ReduceMin", reduce),
    ("ReduceProd", reduce),
    ("ReduceL1", reduce),
    ("ReduceL2", reduce),
    ("ReduceLogSum", reduce),
    ("ReduceLogSumExp", reduce),
    ("ReduceSumSquare", reduce),
    ("ArgMax", arg_extreme),
    ("ArgMin", arg_extreme),
    ("TopK", top_k),
    ("CumSum", unary),
    ("CumProd", unary),
];

/// `Reduce*`: the reduced axes kept as 1 or dropped; no axes means all of them, or none with
/// `noop_with_empty_axes`.
fn reduce(cx: &mut Cx) -> Result<Vec<Out>> {
    let dtype = cx.dtype(0);
    let keep = cx.attrs.int_or("keepdims", 1)? != 0;
    let noop = cx.attrs.int_or("noop_with_empty_axes", 0)? != 0;
    let Some(xs) = cx.shape(0) else { return Ok(vec![out(dtype, None)]) };
    let Some(axes) = cx.axes_arg(1)? else {
        let shape = if keep { Some(xs.iter().map(|_| cx.fresh()).collect()) } else { None };
        return Ok(vec![out(dtype, shape)]);
    };
    let axes = match axes {
        Some(a) if !a.is_empty() => cx.axes(&a, xs.len())?,
        _ if noop => return Ok(vec![out(dtype, Some(xs))]),
        _ => (0..xs.len()).collect(),
    };
    let shape = xs
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match (axes.contains(&i), keep) {
            (false, _) => Some(d.clone()),
            (true, true) => Some(SymDim::Known(1)),
            (true, false) => None,
        })
        .collect();
    Ok(vec![out(dtype, Some(shape))])
}

/// `ArgMax`/`ArgMin`: int64 indices along one axis, kept as 1 or dropped.
fn arg_extreme(cx: &mut Cx) -> Result<Vec<Out>> {
    let axis = cx.attrs.int_or("axis", 0)?;
    let keep = cx.attrs.int_or("keepdims", 1)? != 0;
    let shape = match cx.shape(0) {
        Some(mut s) => {
            let a = cx.axis(axis, s.len())?;
            if keep {
                s[a] = SymDim::Known(1);
            } else {
                s.remove(a);
            }
            Some(s)
        }
        None => None,
    };
    Ok(vec![out(Some(DType::I64), shape)])
}

/// `TopK`: values and int64 indices, `k` long along the axis (`k` from input 1, or the
/// attribute before opset 10).
fn top_k(cx: &mut Cx) -> Result<Vec<Out>> {
    let k = if cx.has_input(1) { cx.int_scalar(1) } else { cx.attrs.int("k")? };
    let axis = cx.attrs.int_or("axis", -1)?;
    let shape = match cx.shape(0) {
        Some(mut s) => {
            let a = cx.axis(axis, s.len())?;
            s[a] = k.map(SymDim::Known).unwrap_or_else(|| cx.fresh());
            Some(s)
        }
        None => None,
    };
    Ok(vec![out(cx.dtype(0), shape.clone()), out(Some(DType::I64), shape)])
}
