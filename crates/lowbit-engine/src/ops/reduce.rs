//! Reductions: `Reduce*`, `ArgMax`/`ArgMin`, `CumSum`/`CumProd`, `TopK`.
//!
//! `Reduce*` accumulate in f64 whatever the element type and round once to the input's type
//! (bool inputs of `ReduceMax`/`ReduceMin` as 0/1). Axes come from the `axes` attribute before
//! opset 18 (before 13 for `ReduceSum`) and from the optional second input after; empty axes
//! mean "all axes" unless `noop_with_empty_axes=1`, which makes the op an identity. Reducing an
//! empty set gives the operation's identity element (0 for sums, 1 for products, -inf for max
//! and log-sums, +inf for min).

use crate::bail;
use crate::error::OpResult;
use crate::op::{input, kernel, opt_input, BuildCtx, Kernel};
use crate::ops::elementwise::num::{dispatch_num, Num};
use crate::ops::util::normalize_axis;
use crate::registry::Registry;
use lowbit_tensor::tensor::numel;
use lowbit_tensor::{DType, Tensor};

/// How to walk a tensor with some axes reduced: dims of size 1 are dropped and neighbouring
/// dims of the same kind (reduced or kept) merged, then the input is visited in order with the
/// output offset of each element tracked incrementally.
struct ReducePlan {
    /// Merged dims: (size, output stride; 0 for reduced dims).
    dims: Vec<(usize, usize)>,
    n_in: usize,
    n_out: usize,
}

impl ReducePlan {
    fn new(shape: &[usize], reduced: &[bool]) -> ReducePlan {
        let mut merged: Vec<(usize, bool)> = Vec::new();
        for (&d, &r) in shape.iter().zip(reduced) {
            if d == 1 {
                continue;
            }
            match merged.last_mut() {
                Some((size, kind)) if *kind == r => *size *= d,
                _ => merged.push((d, r)),
            }
        }
        let mut dims = vec![(0, 0); merged.len()];
        let mut acc = 1;
        for (i, &(size, r)) in merged.iter().enumerate().rev() {
            dims[i] = (size, if r { 0 } else { acc });
            if !r {
                acc *= size;
            }
        }
        let n_out =
            shape.iter().zip(reduced).filter(|(_, &r)| !r).map(|(&d, _)| d).product::<usize>();
        ReducePlan { dims, n_in: numel(shape), n_out }
    }

    /// The row length when every output reduces one contiguous, non-empty run of the input
    /// (only the innermost merged dim is reduced).
    fn contiguous_rows(&self) -> Option<usize> {
        match self.dims[..] {
            [.., (len, 0)] if len > 0 && self.dims.iter().rev().skip(1).all(|d| d.1 != 0) => {
                Some(len)
            }
            _ => None,
        }
    }

    /// Calls `f(out_index, in_index)` for every input element, in input order.
    fn visit(&self, mut f: impl FnMut(usize, usize)) {
        if self.n_in == 0 {
            return;
        }
        let Some(&(inner, step)) = self.dims.last() else {
            f(0, 0);
            return;
        };
        let outer = &self.dims[..self.dims.len() - 1];
        let mut idx = vec![0usize; outer.len()];
        let (mut o, mut i) = (0usize, 0usize);
        loop {
            for j in 0..inner {
                f(o + j * step, i + j);
            }
            i += inner;
            let mut d = outer.len();
            loop {
                if d == 0 {
                    return;
                }
                d -= 1;
                idx[d] += 1;
                o += outer[d].1;
                if idx[d] < outer[d].0 {
                    break;
                }
                o -= outer[d].1 * outer[d].0;
                idx[d] = 0;
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reduction {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L1,
    L2,
    LogSum,
    LogSumExp,
    SumSquare,
}

/// Which axes to reduce; `None` means the op is an identity (`noop_with_empty_axes`).
fn reduced_axes(axes: &[i64], rank: usize, noop: bool) -> OpResult<Option<Vec<bool>>> {
    if axes.is_empty() {
        return Ok(if noop { None } else { Some(vec![true; rank]) });
    }
    let mut reduced = vec![false; rank];
    for &a in axes {
        reduced[normalize_axis(a, rank)?] = true;
    }
    Ok(Some(reduced))
}

fn reduce(x: &Tensor, op: Reduction, axes: &[i64], keepdims: bool, noop: bool) -> OpResult<Tensor> {
    let Some(reduced) = reduced_axes(axes, x.rank(), noop)? else {
        return Ok(x.clone());
    };
    if !(x.dtype().is_float() || x.dtype().is_integer() || x.dtype() == DType::Bool) {
        bail!("cannot reduce {} tensors", x.dtype());
    }
    let plan = ReducePlan::new(x.shape(), &reduced);
    let shape: Vec<usize> = x
        .shape()
        .iter()
        .zip(&reduced)
        .filter_map(|(&d, &r)| match (r, keepdims) {
            (false, _) => Some(d),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect();
    if let (Ok(v), Some(len)) = (x.as_f32(), plan.contiguous_rows()) {
        // The LayerNorm / softmax case: each output reduces one contiguous run of the input.
        let row = |r: &[f32]| -> f64 {
            match op {
                Reduction::Sum => r.iter().map(|&e| e as f64).sum(),
                Reduction::Mean => r.iter().map(|&e| e as f64).sum::<f64>() / len as f64,
                Reduction::SumSquare => r.iter().map(|&e| (e as f64) * (e as f64)).sum(),
                Reduction::Max => {
                    r.iter().fold(
                        f32::NEG_INFINITY,
                        |m, &e| {
                            if e > m || e.is_nan() {
                                e
                            } else {
                                m
                            }
                        },
                    ) as f64
                }
                _ => f64::NAN,
            }
        };
        if matches!(op, Reduction::Sum | Reduction::Mean | Reduction::SumSquare | Reduction::Max) {
            let out: Vec<f32> = v.chunks_exact(len).map(|r| row(r) as f32).collect();
            return Ok(Tensor::from_vec(shape, out)?);
        }
    }
    let v = x.to_f64_vec()?;
    let init = match op {
        Reduction::Max | Reduction::LogSumExp => f64::NEG_INFINITY,
        Reduction::Min => f64::INFINITY,
        Reduction::Prod => 1.0,
        _ => 0.0,
    };
    let mut acc = vec![init; plan.n_out];
    match op {
        Reduction::Sum | Reduction::Mean | Reduction::LogSum => {
            plan.visit(|o, i| acc[o] += v[i]);
        }
        Reduction::Max => plan.visit(|o, i| {
            if v[i] > acc[o] || v[i].is_nan() {
                acc[o] = v[i]
            }
        }),
        Reduction::Min => plan.visit(|o, i| {
            if v[i] < acc[o] || v[i].is_nan() {
                acc[o] = v[i]
            }
        }),
        Reduction::Prod => plan.visit(|o, i| acc[o] *= v[i]),
        Reduction::L1 => plan.visit(|o, i| acc[o] += v[i].abs()),
        Reduction::L2 | Reduction::SumSquare => plan.visit(|o, i| acc[o] += v[i] * v[i]),
        Reduction::LogSumExp => {
            plan.visit(|o, i| {
                if v[i] > acc[o] {
                    acc[o] = v[i]
                }
            });
            let max = std::mem::replace(&mut acc, vec![0.0; plan.n_out]);
            plan.visit(|o, i| {
                if max[o].is_finite() {
                    acc[o] += (v[i] - max[o]).exp()
                }
            });
            for (a, m) in acc.iter_mut().zip(&max) {
                *a = if m.is_finite() { m + a.ln() } else { *m };
            }
        }
    }
    let count = plan.n_in.checked_div(plan.n_out).unwrap_or(0);
    match op {
        Reduction::Mean => acc.iter_mut().for_each(|a| *a /= count as f64),
        Reduction::L2 => acc.iter_mut().for_each(|a| *a = a.sqrt()),
        Reduction::LogSum => acc.iter_mut().for_each(|a| *a = a.ln()),
        _ => {}
    }
    Ok(Tensor::from_vec(shape, acc)?.cast(x.dtype())?)
}

/// Builds a `Reduce*` kernel; `axes_input_from` is the opset where `axes` became an input.
fn build_reduce(ctx: &BuildCtx, op: Reduction, axes_input_from: i64) -> OpResult<Box<dyn Kernel>> {
    let keepdims = ctx.attrs.int_or("keepdims", 1)? != 0;
    let noop = ctx.attrs.int_or("noop_with_empty_axes", 0)? != 0;
    if ctx.opset < axes_input_from {
        let axes = ctx.attrs.ints_or("axes", &[])?;
        kernel(move |ins| Ok(vec![reduce(input(ins, 0)?, op, &axes, keepdims, false)?]))
    } else {
        kernel(move |ins| {
            let axes = match opt_input(ins, 1) {
                Some(a) => a.to_i64_vec()?,
                None => vec![],
            };
            Ok(vec![reduce(input(ins, 0)?, op, &axes, keepdims, noop)?])
        })
    }
}

/// `ArgMax`/`ArgMin` along one axis; ties go to the first (or, with `select_last_index`, the
/// last) occurrence.
fn arg_reduce(x: &Tensor, axis: i64, keepdims: bool, last: bool, max: bool) -> OpResult<Tensor> {
    let axis = normalize_axis(axis, x.rank())?;
    let shape = x.shape();
    let (outer, len, inner) =
        (numel(&shape[..axis]), shape.get(axis).copied().unwrap_or(1), numel(&shape[axis + 1..]));
    if len == 0 {
        bail!("cannot take ArgMax/ArgMin over an empty axis");
    }
    let v = x.to_f64_vec()?;
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for j in 0..inner {
            let base = o * len * inner + j;
            let (mut best, mut bi) = (v[base], 0usize);
            for k in 1..len {
                let e = v[base + k * inner];
                let better = if max { e > best } else { e < best };
                if better || (last && e == best) {
                    best = e;
                    bi = k;
                }
            }
            out.push(bi as i64);
        }
    }
    let mut out_shape = shape.to_vec();
    if x.rank() > 0 {
        if keepdims {
            out_shape[axis] = 1;
        } else {
            out_shape.remove(axis);
        }
    }
    Ok(Tensor::from_vec(out_shape, out)?)
}

fn build_arg(ctx: &BuildCtx, max: bool) -> OpResult<Box<dyn Kernel>> {
    let axis = ctx.attrs.int_or("axis", 0)?;
    let keepdims = ctx.attrs.int_or("keepdims", 1)? != 0;
    let last = ctx.attrs.int_or("select_last_index", 0)? != 0;
    kernel(move |ins| Ok(vec![arg_reduce(input(ins, 0)?, axis, keepdims, last, max)?]))
}

/// `CumSum`/`CumProd` on native element types (integer arithmetic wraps).
fn cumulative_typed<T: Num>(
    x: &[T],
    (outer, len, inner): (usize, usize, usize),
    exclusive: bool,
    reverse: bool,
    prod: bool,
) -> Vec<T> {
    let (init, op): (T, fn(T, T) -> T) =
        if prod { (T::one(), T::mul) } else { (T::zero(), T::add) };
    let mut out = vec![T::zero(); x.len()];
    for o in 0..outer {
        for j in 0..inner {
            let at = |k: usize| o * len * inner + k * inner + j;
            let mut acc = init;
            for step in 0..len {
                let k = if reverse { len - 1 - step } else { step };
                let v = x[at(k)];
                if exclusive {
                    out[at(k)] = acc;
                    acc = op(acc, v);
                } else {
                    acc = op(acc, v);
                    out[at(k)] = acc;
                }
            }
        }
    }
    out
}

fn cumulative(
    x: &Tensor,
    axis: &Tensor,
    exclusive: bool,
    reverse: bool,
    prod: bool,
) -> OpResult<Tensor> {
    let a = axis.to_i64_vec()?;
    let [a] = a[..] else { bail!("axis must be a scalar, got shape {:?}", axis.shape()) };
    let axis = normalize_axis(a, x.rank())?;
    let shape = x.shape();
    let (outer, len, inner) =
        (numel(&shape[..axis]), shape.get(axis).copied().unwrap_or(1), numel(&shape[axis + 1..]));
    dispatch_num!(x.dtype(), T => {
        let v = cumulative_typed(x.as_slice::<T>()?, (outer, len, inner), exclusive, reverse, prod);
        Ok(Tensor::from_vec(shape.to_vec(), v)?)
    }, _ => bail!("cumulative ops are not supported for {} tensors", x.dtype()))
}

/// `TopK` on native element types: the `k` largest (or smallest) along `axis`, equal values
/// in index order.
fn topk_typed<T: Num>(
    x: &[T],
    (outer, len, inner): (usize, usize, usize),
    k: usize,
    largest: bool,
) -> (Vec<T>, Vec<i64>) {
    let mut vals = vec![T::zero(); outer * k * inner];
    let mut idxs = vec![0i64; outer * k * inner];
    let mut order: Vec<usize> = Vec::with_capacity(len);
    for o in 0..outer {
        for j in 0..inner {
            order.clear();
            order.extend(0..len);
            let at = |i: usize| x[o * len * inner + i * inner + j];
            // NaN sorts as the largest value, as in ONNX Runtime.
            order.sort_by(|a, b| {
                let (va, vb) = (at(*a), at(*b));
                let ord = va.partial_cmp(&vb).unwrap_or_else(|| va.is_nan().cmp(&vb.is_nan()));
                if largest {
                    ord.reverse()
                } else {
                    ord
                }
            });
            for (r, &i) in order.iter().take(k).enumerate() {
                let dst = o * k * inner + r * inner + j;
                vals[dst] = at(i);
                idxs[dst] = i as i64;
            }
        }
    }
    (vals, idxs)
}

fn topk(x: &Tensor, k: &Tensor, axis: i64, largest: bool) -> OpResult<Vec<Tensor>> {
    let kv = k.to_i64_vec()?;
    let [k] = kv[..] else { bail!("K must hold one value, got shape {:?}", k.shape()) };
    let axis = normalize_axis(axis, x.rank())?;
    let shape = x.shape();
    let len = shape.get(axis).copied().unwrap_or(1);
    if k < 0 || k as usize > len {
        bail!("K={k} is out of range for an axis of length {len}");
    }
    let k = k as usize;
    let dims = (numel(&shape[..axis]), len, numel(&shape[axis + 1..]));
    let mut out_shape = shape.to_vec();
    if !out_shape.is_empty() {
        out_shape[axis] = k;
    }
    dispatch_num!(x.dtype(), T => {
        let (vals, idxs) = topk_typed(x.as_slice::<T>()?, dims, k, largest);
        Ok(vec![Tensor::from_vec(out_shape.clone(), vals)?, Tensor::from_vec(out_shape, idxs)?])
    }, _ => bail!("TopK is not supported for {} tensors", x.dtype()))
}

fn build_cumulative(ctx: &BuildCtx, prod: bool) -> OpResult<Box<dyn Kernel>> {
    let exclusive = ctx.attrs.int_or("exclusive", 0)? != 0;
    let reverse = ctx.attrs.int_or("reverse", 0)? != 0;
    kernel(move |ins| {
        Ok(vec![cumulative(input(ins, 0)?, input(ins, 1)?, exclusive, reverse, prod)?])
    })
}

pub fn register(reg: &mut Registry) {
    macro_rules! reduce_ops {
        ($($name:literal => $op:ident, $from:expr;)*) => {$(
            reg.register("", $name, |ctx| build_reduce(ctx, Reduction::$op, $from));
        )*};
    }
    reduce_ops!(
        "ReduceSum" => Sum, 13;
        "ReduceMean" => Mean, 18;
        "ReduceMax" => Max, 18;
        "ReduceMin" => Min, 18;
        "ReduceProd" => Prod, 18;
        "ReduceL1" => L1, 18;
        "ReduceL2" => L2, 18;
        "ReduceLogSum" => LogSum, 18;
        "ReduceLogSumExp" => LogSumExp, 18;
        "ReduceSumSquare" => SumSquare, 18;
    );
    reg.register("", "ArgMax", |ctx| build_arg(ctx, true));
    reg.register("", "ArgMin", |ctx| build_arg(ctx, false));
    reg.register("", "CumSum", |ctx| build_cumulative(ctx, false));
    reg.register("", "CumProd", |ctx| build_cumulative(ctx, true));
    reg.register("", "TopK", |ctx| {
        let axis = ctx.attrs.int_or("axis", -1)?;
        let largest = ctx.attrs.int_or("largest", 1)? != 0;
        if ctx.opset < 10 {
            let k = ctx.attrs.req_int("k")?;
            let k = Tensor::from_vec(vec![1], vec![k])?;
            return kernel(move |ins| topk(input(ins, 0)?, &k, axis, largest));
        }
        kernel(move |ins| topk(input(ins, 0)?, input(ins, 1)?, axis, largest))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::from_vec(shape.to_vec(), v).unwrap()
    }

    #[test]
    fn reduce_sum_over_middle_axis_keeps_dims() {
        let x = t(&[2, 3, 2], (0..12).map(|v| v as f32).collect());
        let y = reduce(&x, Reduction::Sum, &[1], true, false).unwrap();
        assert_eq!(y.shape(), &[2, 1, 2]);
        assert_eq!(y.as_f32().unwrap(), &[6.0, 9.0, 24.0, 27.0]);
        let y = reduce(&x, Reduction::Max, &[0, -1], false, false).unwrap();
        assert_eq!(y.shape(), &[3]);
        assert_eq!(y.as_f32().unwrap(), &[7.0, 9.0, 11.0]);
    }

    #[test]
    fn contiguous_fast_path_matches_general_path() {
        let x = t(&[2, 3, 4], (0..24).map(|v| (v as f32 * 0.37).sin()).collect());
        for op in [Reduction::Sum, Reduction::Mean, Reduction::SumSquare, Reduction::Max] {
            let fast = reduce(&x, op, &[2], true, false).unwrap();
            let general = reduce(&x.cast(DType::F64).unwrap(), op, &[2], true, false).unwrap();
            let g = general.cast(DType::F32).unwrap();
            assert_eq!(fast.shape(), g.shape());
            for (a, b) in fast.as_f32().unwrap().iter().zip(g.as_f32().unwrap()) {
                assert!((a - b).abs() < 1e-6, "{op:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn empty_axes_reduce_all_unless_noop() {
        let x = t(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let y = reduce(&x, Reduction::Mean, &[], false, false).unwrap();
        assert_eq!(y.shape(), &[] as &[usize]);
        assert_eq!(y.as_f32().unwrap(), &[2.5]);
        assert_eq!(reduce(&x, Reduction::Mean, &[], false, true).unwrap(), x);
    }

    #[test]
    fn empty_set_gives_identity_elements() {
        let x = Tensor::zeros(DType::F32, vec![2, 0, 4]);
        let y = reduce(&x, Reduction::Prod, &[1], true, false).unwrap();
        assert_eq!(y.shape(), &[2, 1, 4]);
        assert!(y.as_f32().unwrap().iter().all(|&v| v == 1.0));
        let y = reduce(&x, Reduction::LogSumExp, &[1], true, false).unwrap();
        assert!(y.as_f32().unwrap().iter().all(|&v| v == f32::NEG_INFINITY));
    }

    #[test]
    fn argmax_ties_and_last_index() {
        let x = t(&[2, 3], vec![1.0, 5.0, 5.0, 7.0, 0.0, 7.0]);
        let y = arg_reduce(&x, 1, false, false, true).unwrap();
        assert_eq!(y.as_i64().unwrap(), &[1, 0]);
        let y = arg_reduce(&x, 1, true, true, true).unwrap();
        assert_eq!(y.shape(), &[2, 1]);
        assert_eq!(y.as_i64().unwrap(), &[2, 2]);
    }

    #[test]
    fn cumsum_exclusive_reverse() {
        let x = t(&[4], vec![1.0, 2.0, 3.0, 4.0]);
        let axis = Tensor::scalar(0i64);
        let y = cumulative(&x, &axis, true, true, false).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[9.0, 7.0, 4.0, 0.0]);
        let y = cumulative(&x, &axis, false, false, true).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[1.0, 2.0, 6.0, 24.0]);
    }

    #[test]
    fn topk_largest_along_rows() {
        let x = t(&[2, 4], vec![1.0, 4.0, 4.0, 2.0, 0.0, -1.0, 3.0, 3.0]);
        let k = Tensor::from_vec(vec![1], vec![2i64]).unwrap();
        let out = topk(&x, &k, 1, true).unwrap();
        assert_eq!(out[0].as_f32().unwrap(), &[4.0, 4.0, 3.0, 3.0]);
        assert_eq!(out[1].as_i64().unwrap(), &[1, 2, 2, 3]);
    }
}
