//! Layout and indexing: ops that move elements (`Reshape`, `Transpose`, `Concat`, `Slice`,
//! `Gather`, `Pad`, …) and ops that make tensors (`Shape`, `Constant`, `ConstantOfShape`,
//! `Range`, the random generators). These carry the shape arithmetic exporters emit, so most of
//! them also fold known values.

use lowbit_tensor::DType;

use super::{elementwise::unary, RuleFn};
use crate::infer::fold::{pick_indices, Const, Elem};
use crate::infer::sym::{dim_mul, dims_product, fmt_shape, Mono};
use crate::infer::{out, Cx, Out, Result, SymDim, ValueType, MAX_CONST_ELEMS};

pub(super) const RULES: &[(&str, RuleFn)] = &[
    ("Reshape", reshape),
    ("Flatten", flatten),
    ("Transpose", transpose),
    ("Squeeze", squeeze),
    ("Unsqueeze", unsqueeze),
    ("Concat", concat),
    ("Split", split),
    ("Slice", slice),
    ("Gather", gather),
    ("GatherElements", gather_elements),
    ("GatherND", gather_nd),
    ("Expand", expand),
    ("Tile", tile),
    ("Pad", pad),
    ("DepthToSpace", depth_to_space),
    ("SpaceToDepth", depth_to_space),
    ("OneHot", one_hot),
    ("NonZero", non_zero),
    ("Compress", compress),
    ("Identity", unary),
    ("Trilu", unary),
    ("ReverseSequence", unary),
    ("Scatter", unary),
    ("ScatterND", unary),
    ("ScatterElements", unary),
    ("Shape", shape_op),
    ("Size", size_op),
    ("Constant", constant),
    ("ConstantOfShape", constant_of_shape),
    ("Range", range),
    ("EyeLike", like),
    ("RandomNormalLike", like),
    ("RandomUniformLike", like),
    ("Bernoulli", like),
    ("RandomNormal", random),
    ("RandomUniform", random),
];

fn reshape(cx: &mut Cx) -> Result<Vec<Out>> {
    let dtype = cx.dtype(0);
    let xs = cx.shape(0);
    let allow_zero = cx.attrs.int_or("allowzero", 0)? != 0;
    let target: Option<Vec<SymDim>> = if cx.has_input(1) {
        cx.cval(1).and_then(Const::dims)
    } else {
        cx.attrs.ints("shape")?.map(|v| v.into_iter().map(SymDim::Known).collect())
    };
    let Some(target) = target else {
        let rank = cx.shape(1).and_then(|s| s.first().and_then(SymDim::known));
        let shape = rank.map(|r| (0..r).map(|_| cx.fresh()).collect());
        return Ok(vec![out(dtype, shape)]);
    };
    let mut shape = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, t) in target.iter().enumerate() {
        match t {
            SymDim::Known(0) if !allow_zero => match xs.as_ref().and_then(|s| s.get(i)) {
                Some(d) => shape.push(d.clone()),
                None if xs.is_some() => {
                    return Err(cx.err(format!(
                        "target dim {i} is 0 (copy) but the input has rank {}",
                        xs.as_ref().map_or(0, |s| s.len())
                    )))
                }
                None => shape.push(cx.fresh()),
            },
            SymDim::Known(-1) => {
                if infer_at.replace(i).is_some() {
                    return Err(
                        cx.err(format!("target shape {} has more than one -1", fmt_shape(&target)))
                    );
                }
                shape.push(SymDim::Known(-1));
            }
            SymDim::Known(k) if *k < -1 => {
                return Err(
                    cx.err(format!("target shape {} has a negative dim", fmt_shape(&target)))
                )
            }
            d => shape.push(d.clone()),
        }
    }
    let total = xs.as_ref().map(|s| Mono::from_dim(&dims_product(s)));
    if let Some(i) = infer_at {
        let rest: Vec<SymDim> =
            shape.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, d)| d.clone()).collect();
        let rest = Mono::from_dim(&dims_product(&rest));
        shape[i] = match total.as_ref().map(|t| (t, t.div(&rest))) {
            Some((_, Some(q))) => q.to_dim(),
            Some((t, None)) if t.as_int().is_some() && rest.as_int().is_some() => {
                return Err(cx.err(format!(
                    "cannot reshape {} to {}",
                    fmt_shape(xs.as_deref().unwrap_or_default()),
                    fmt_shape(&target)
                )))
            }
            _ => cx.fresh(),
        };
    } else if let (Some(t), Some(n)) =
        (total.as_ref().and_then(Mono::as_int), Mono::from_dim(&dims_product(&shape)).as_int())
    {
        if t != n {
            return Err(cx.err(format!(
                "cannot reshape {} ({t} elements) to {} ({n} elements)",
                fmt_shape(xs.as_deref().unwrap_or_default()),
                fmt_shape(&target)
            )));
        }
    }
    let val = cx.cval(0).and_then(|c| c.reshaped(&shape));
    Ok(vec![Out { ty: ValueType::new(dtype, Some(shape)), val }])
}

fn squeeze(cx: &mut Cx) -> Result<Vec<Out>> {
    let dtype = cx.dtype(0);
    let (Some(xs), Some(axes)) = (cx.shape(0), cx.axes_arg(1)?) else {
        return Ok(vec![out(dtype, None)]);
    };
    let shape: Vec<SymDim> = match axes {
        Some(a) => {
            let a = cx.axes(&a, xs.len())?;
            for &i in &a {
                if let Some(k) = xs[i].known().filter(|&k| k != 1) {
                    return Err(cx.err(format!("cannot squeeze axis {i} of size {k}")));
                }
            }
            xs.iter().enumerate().filter(|(i, _)| !a.contains(i)).map(|(_, d)| d.clone()).collect()
        }
        None => xs.iter().filter(|d| **d != SymDim::Known(1)).cloned().collect(),
    };
    let val = cx.cval(0).and_then(|c| c.reshaped(&shape));
    Ok(vec![Out { ty: ValueType::new(dtype, Some(shape)), val }])
}

fn unsqueeze(cx: &mut Cx) -> Result<Vec<Out>> {
    let dtype = cx.dtype(0);
    let (Some(xs), Some(Some(axes))) = (cx.shape(0), cx.axes_arg(1)?) else {
        return Ok(vec![out(dtype, None)]);
    };
    let r = xs.len() + axes.len();
    let mut a = cx.axes(&axes, r)?;
    a.sort_unstable();
    let mut it = xs.into_iter();
    let shape: Vec<SymDim> =
        (0..r)
            .map(|i| {
                if a.contains(&i) {
                    SymDim::Known(1)
                } else {
                    it.next().unwrap_or(SymDim::Known(1))
                }
            })
            .collect();
    let val = cx.cval(0).and_then(|c| c.reshaped(&shape));
    Ok(vec![Out { ty: ValueType::new(dtype, Some(shape)), val }])
}

fn concat(cx: &mut Cx) -> Result<Vec<Out>> {
    let axis = cx.attrs.req_int("axis")?;
    let dtype = (0..cx.node.input.len()).find_map(|i| cx.dtype(i));
    let shapes: Option<Vec<Vec<SymDim>>> = (0..cx.node.input.len()).map(|i| cx.shape(i)).collect();
    let Some(shapes) = shapes else {
        let rank = (0..cx.node.input.len()).find_map(|i| cx.rank(i));
        return Ok(vec![out(dtype, rank.map(|r| (0..r).map(|_| cx.fresh()).collect()))]);
    };
    let Some(first) = shapes.first() else { return Ok(vec![out(dtype, None)]) };
    let r = first.len();
    if let Some(s) = shapes.iter().find(|s| s.len() != r) {
        return Err(cx.err(format!(
            "inputs have different ranks: {} and {}",
            fmt_shape(first),
            fmt_shape(s)
        )));
    }
    let a = cx.axis(axis, r)?;
    let mut shape = Vec::with_capacity(r);
    for i in 0..r {
        if i == a {
            let sum =
                shapes.iter().try_fold(Mono::int(0), |acc, s| acc.add(&Mono::from_dim(&s[i])));
            shape.push(sum.map(|m| m.to_dim()).unwrap_or_else(|| cx.fresh()));
        } else {
            let col: Vec<Vec<SymDim>> = shapes.iter().map(|s| vec![s[i].clone()]).collect();
            // Non-axis dims must agree; merge them as broadcasting would (it errors on a
            // known mismatch) but without letting 1 stretch.
            let known: Vec<i64> = col.iter().filter_map(|c| c[0].known()).collect();
            if known.iter().any(|&k| k != known[0]) {
                let shown: Vec<String> = shapes.iter().map(|s| fmt_shape(s)).collect();
                return Err(cx.err(format!("inputs {} differ outside axis {a}", shown.join(", "))));
            }
            let d = match known.first() {
                Some(&k) => SymDim::Known(k),
                None => cx.broadcast(&col)?.remove(0),
            };
            shape.push(d);
        }
    }
    let val = cx.fold_concat(a, &shape);
    Ok(vec![Out { ty: ValueType::new(dtype, Some(shape)), val }])
}

fn split(cx: &mut Cx) -> Result<Vec<Out>> {
    let n_out = cx.node.output.len();
    let dtype = cx.dtype(0);
    let Some(xs) = cx.shape(0) else {
        return Ok((0..n_out).map(|_| out(dtype, None)).collect());
    };
    let a = cx.axis(cx.attrs.int_or("axis", 0)?, xs.len())?;
    let sizes: Option<Vec<i64>> = if let Some(s) = cx.attrs.ints("split")? {
        Some(s)
    } else if cx.has_input(1) {
        cx.ints(1)
    } else {
        let parts = cx.attrs.int("num_outputs")?.map_or(n_out as i64, |k| k);
        match xs[a].known() {
            Some(d) if parts > 0 => {
                let chunk = (d + parts - 1) / parts;
                Some((0..parts).map(|i| chunk.min(d - i * chunk).max(0)).collect())
            }
            _ => {
                let each = Mono::from_dim(&xs[a]).div(&Mono::int(parts.max(1))).map(|m| m.to_dim());
                return Ok((0..n_out)
                    .map(|_| {
                        let mut s = xs.clone();
                        s[a] = each.clone().unwrap_or_else(|| cx.fresh());
                        out(dtype, Some(s))
                    })
                    .collect());
            }
        }
    };
    let Some(sizes) = sizes else {
        return Ok((0..n_out)
            .map(|_| {
                let mut s = xs.clone();
                s[a] = cx.fresh();
                out(dtype, Some(s))
            })
            .collect());
    };
    if sizes.len() != n_out {
        return Err(cx.err(format!("{} split sizes for {n_out} outputs", sizes.len())));
    }
    if let Some(d) = xs[a].known() {
        if sizes.iter().sum::<i64>() != d {
            return Err(cx.err(format!(
                "split sizes {sizes:?} do not add up to dim {d} of {}",
                fmt_shape(&xs)
            )));
        }
    }
    Ok(sizes
        .iter()
        .map(|&k| {
            let mut s = xs.clone();
            s[a] = SymDim::Known(k);
            out(dtype, Some(s))
        })
        .collect())
}

fn slice(cx: &mut Cx) -> Result<Vec<Out>> {
    let dtype = cx.dtype(0);
    let Some(xs) = cx.shape(0) else { return Ok(vec![out(dtype, None)]) };
    let r = xs.len();
    let known = |v: Vec<i64>| v.into_iter().map(SymDim::Known).collect::<Vec<_>>();
    let (starts, ends, axes, steps) = if let Some(starts) = cx.attrs.ints("starts")? {
        let ends = cx.attrs.ints("ends")?.ok_or_else(|| cx.err("attribute 'ends' is required"))?;
        (Some(known(starts)), Some(known(ends)), Some(cx.attrs.ints("axes")?), Some(None))
    } else {
        let opt = |i: usize| if cx.has_input(i) { cx.ints(i).map(Some) } else { Some(None) };
        let dims = |i: usize| cx.cval(i).and_then(Const::dims);
        (dims(1), dims(2), opt(3), opt(4))
    };
    // Without constant starts/ends/axes/steps only the rank is known.
    let (Some(starts), Some(ends), Some(axes), Some(steps)) = (starts, ends, axes, steps) else {
        let shape = xs.iter().map(|_| cx.fresh()).collect();
        return Ok(vec![out(dtype, Some(shape))]);
    };
    let n = starts.len();
    let axes = axes.filter(|a| !a.is_empty()).unwrap_or_else(|| (0..n as i64).collect());
    let steps = steps.filter(|s| !s.is_empty()).unwrap_or_else(|| vec![1; n]);
    if ends.len() != n || axes.len() != n || steps.len() != n {
        return Err(cx.err(format!(
            "starts {}, ends {}, axes {axes:?}, steps {steps:?} differ in length",
            fmt_shape(&starts),
            fmt_shape(&ends)
        )));
    }
    let axes = cx.axes(&axes, r)?;
    let mut shape = xs.clone();
    let mut picks: Option<Vec<Vec<usize>>> =
        cx.cval(0).map(|c| c.shape.iter().map(|&n| (0..n).collect()).collect());
    for (k, &a) in axes.iter().enumerate() {
        let step = steps[k];
        if step == 0 {
            return Err(cx.err("slice step is 0"));
        }
        let big = |e: &SymDim| e.known().is_some_and(|e| e >= i32::MAX as i64);
        shape[a] = match (xs[a].known(), starts[k].known(), ends[k].known()) {
            (Some(d), Some(start), Some(end)) => {
                let (first, count) = slice_span(start, end, step, d);
                if let Some(p) = picks.as_mut() {
                    p[a] = (0..count).map(|i| (first + i * step) as usize).collect();
                }
                SymDim::Known(count)
            }
            (None, Some(0), _) if step == 1 && (big(&ends[k]) || ends[k] == xs[a]) => xs[a].clone(),
            (None, Some(start), _) if step == 1 && start < 0 && big(&ends[k]) => {
                SymDim::Known(-start)
            }
            // `x[:n]` with a symbolic `n` (positions up to the sequence length): assumes
            // `n` fits the dim, as exporters emitting it do.
            (_, Some(0), None) if step == 1 => ends[k].clone(),
            _ => {
                picks = None;
                cx.fresh()
            }
        };
    }
    let val = match (cx.cval(0), picks) {
        (Some(c), Some(p)) => {
            let idx = pick_indices(&c.shape, &p);
            Some(Const {
                shape: p.iter().map(Vec::len).collect(),
                data: idx.iter().map(|&i| c.data[i].clone()).collect(),
            })
        }
        _ => None,
    };
    Ok(vec![Out { ty: ValueType::new(dtype, Some(shape)), val }])
}

fn gather(cx: &mut Cx) -> Result<Vec<Out>> {
    let dtype = cx.dtype(0);
    let (Some(xs), Some(is)) = (cx.shape(0), cx.shape(1)) else {
        return Ok(vec![out(dtype, None)]);
    };
    let a = cx.axis(cx.attrs.int_or("axis", 0)?, xs.len())?;
    let mut shape = xs[..a].to_vec();
    shape.extend(is.iter().cloned());
    shape.extend(xs[a + 1..].iter().cloned());
    let val = match (cx.cval(0), cx.ints(1)) {
        (Some(c), Some(idx)) => {
            let n = c.shape[a] as i64;
            let outer: usize = c.shape[..a].iter().product();
            let inner: usize = c.shape[a + 1..].iter().product();
            let mut data = Vec::new();
            let mut ok = true;
            for o in 0..outer {
                for &i in &idx {
                    let i = if i < 0 { i + n } else { i };
                    if i < 0 || i >= n {
                        ok = false;
                        break;
                    }
                    let base = (o * c.shape[a] + i as usize) * inner;
                    data.extend_from_slice(&c.data[base..base + inner]);
                }
            }
            let out_shape: Option<Vec<usize>> =
                shape.iter().map(|d| d.known().map(|k| k as usize)).collect();
            match out_shape {
                Some(s) if ok && s.iter().product::<usize>() == data.len() => {
                    Some(Const { shape: s, data })
                }
                _ => None,
            }
        }
        _ => None,
    };
    Ok(vec![Out { ty: ValueType::new(dtype, Some(shape)), val }])
}

fn constant(cx: &mut Cx) -> Result<Vec<Out>> {
    let a = &cx.attrs;
    if let Some(t) = a.tensor("value")? {
        let ty = ValueType {
            dtype: DType::from_onnx(t.data_type),
            shape: Some(t.dims.iter().map(|&d| SymDim::Known(d)).collect()),
        };
        return Ok(vec![Out { ty, val: Const::from_proto(t) }]);
    }
    if let Some(f) = a.float("value_float")? {
        let val = Const { shape: vec![], data: vec![Elem::F(f as f64)] };
        return Ok(vec![Out { ty: ValueType::known(DType::F32, &[]), val: Some(val) }]);
    }
    if let Some(v) = a.floats("value_floats")? {
        let ty = ValueType::known(DType::F32, &[v.len() as i64]);
        let val = Const {
            shape: vec![v.len()],
            data: v.into_iter().map(|f| Elem::F(f as f64)).collect(),
        };
        return Ok(vec![Out { ty, val: Some(val) }]);
    }
    if let Some(k) = a.int("value_int")? {
        let val = Const { shape: vec![], data: vec![Elem::I(Mono::int(k))] };
        return Ok(vec![Out { ty: ValueType::known(DType::I64, &[]), val: Some(val) }]);
    }
    if let Some(v) = a.ints("value_ints")? {
        let ty = ValueType::known(DType::I64, &[v.len() as i64]);
        let val = Const {
            shape: vec![v.len()],
            data: v.into_iter().map(|k| Elem::I(Mono::int(k))).collect(),
        };
        return Ok(vec![Out { ty, val: Some(val) }]);
    }
    if a.has("value_string") {
        return Ok(vec![out(Some(DType::String), Some(vec![]))]);
    }
    if let Some(v) = a.strings("value_strings")? {
        return Ok(vec![out(Some(DType::String), Some(vec![SymDim::Known(v.len() as i64)]))]);
    }
    if let Some(s) = a.get("sparse_value").and_then(|a| a.sparse_tensor.as_ref()) {
        let dtype = s.values.as_ref().and_then(|v| DType::from_onnx(v.data_type));
        return Ok(vec![out(dtype, Some(s.dims.iter().map(|&d| SymDim::Known(d)).collect()))]);
    }
    Ok(Vec::new())
}

fn pad(cx: &mut Cx) -> Result<Vec<Out>> {
    let dtype = cx.dtype(0);
    let Some(xs) = cx.shape(0) else { return Ok(vec![out(dtype, None)]) };
    let r = xs.len();
    let pads = if let Some(p) = cx.attrs.ints("pads")? { Some(p) } else { cx.ints(1) };
    let axes: Vec<usize> = if cx.has_input(3) {
        match cx.ints(3) {
            Some(a) => cx.axes(&a, r)?,
            None => return Ok(vec![out(dtype, Some(xs.iter().map(|_| cx.fresh()).collect()))]),
        }
    } else {
        (0..r).collect()
    };
    let Some(pads) = pads else {
        return Ok(vec![out(dtype, Some(xs.iter().map(|_| cx.fresh()).collect()))]);
    };
    let n = axes.len();
    if pads.len() != 2 * n {
        return Err(cx.err(format!(
            "{} pads for {n} axes of input {}",
            pads.len(),
            fmt_shape(&xs)
        )));
    }
    let mut shape = xs.clone();
    for (k, &a) in axes.iter().enumerate() {
        let add = pads[k] + pads[k + n];
        shape[a] = Mono::from_dim(&xs[a])
            .add(&Mono::int(add))
            .map(|m| m.to_dim())
            .unwrap_or_else(|| cx.fresh());
        if let Some(v) = shape[a].known().filter(|&v| v < 0) {
            return Err(
                cx.err(format!("pads {pads:?} make dim {a} of {} negative ({v})", fmt_shape(&xs)))
            );
        }
    }
    Ok(vec![out(dtype, Some(shape))])
}

fn flatten(cx: &mut Cx) -> Result<Vec<Out>> {
    let x_dtype = cx.dtype(0);
    let Some(s) = cx.shape(0) else { return Ok(vec![out(x_dtype, None)]) };
    let axis = cx.attrs.int_or("axis", 1)?;
    let a = if axis == s.len() as i64 { s.len() } else { cx.axis(axis, s.len())? };
    let shape = vec![dims_product(&s[..a]), dims_product(&s[a..])];
    let val = cx.cval(0).and_then(|c| c.reshaped(&shape));
    Ok(vec![Out { ty: ValueType::new(x_dtype, Some(shape)), val }])
}

fn transpose(cx: &mut Cx) -> Result<Vec<Out>> {
    let x_dtype = cx.dtype(0);
    let Some(s) = cx.shape(0) else { return Ok(vec![out(x_dtype, None)]) };
    let perm = cx.attrs.ints("perm")?.unwrap_or_else(|| (0..s.len() as i64).rev().collect());
    if perm.len() != s.len() {
        return Err(cx.err(format!("perm {perm:?} does not fit input shape {}", fmt_shape(&s))));
    }
    let perm = cx.axes(&perm, s.len())?;
    Ok(vec![out(x_dtype, Some(perm.iter().map(|&p| s[p].clone()).collect()))])
}

fn gather_elements(cx: &mut Cx) -> Result<Vec<Out>> {
    Ok(vec![out(cx.dtype(0), cx.shape(1))])
}

fn gather_nd(cx: &mut Cx) -> Result<Vec<Out>> {
    let shape = match (cx.shape(0), cx.shape(1)) {
        (Some(d), Some(ix)) if !ix.is_empty() => match ix[ix.len() - 1].known() {
            Some(k) => {
                let b = cx.attrs.int_or("batch_dims", 0)? as usize;
                let mut s = ix[..ix.len() - 1].to_vec();
                s.extend(d.iter().skip(b + k as usize).cloned());
                Some(s)
            }
            None => None,
        },
        _ => None,
    };
    Ok(vec![out(cx.dtype(0), shape)])
}

fn expand(cx: &mut Cx) -> Result<Vec<Out>> {
    let shape = match (cx.shape(0), cx.cval(1).and_then(Const::dims)) {
        (Some(s), Some(t)) => Some(cx.broadcast(&[s, t])?),
        (None, Some(t)) => Some(
            t.iter().map(|d| if *d == SymDim::Known(1) { cx.fresh() } else { d.clone() }).collect(),
        ),
        (Some(_), None) => {
            let r = cx.shape(1).and_then(|s| s.first().and_then(SymDim::known));
            let r = r.map(|r| r.max(cx.rank(0).unwrap_or(0) as i64));
            r.map(|r| (0..r).map(|_| cx.fresh()).collect())
        }
        _ => None,
    };
    Ok(vec![out(cx.dtype(0), shape)])
}

fn tile(cx: &mut Cx) -> Result<Vec<Out>> {
    let shape = match (cx.shape(0), cx.cval(1).and_then(Const::dims)) {
        (Some(s), Some(r)) if r.len() == s.len() => {
            Some(s.iter().zip(&r).map(|(d, k)| dim_mul(d, k)).collect())
        }
        (Some(s), None) => Some(s.iter().map(|_| cx.fresh()).collect()),
        _ => None,
    };
    Ok(vec![out(cx.dtype(0), shape)])
}

/// `DepthToSpace` and `SpaceToDepth`: channels divided (multiplied) by `blocksize²`, height
/// and width multiplied (divided) by it.
fn depth_to_space(cx: &mut Cx) -> Result<Vec<Out>> {
    let b = SymDim::Known(cx.attrs.req_int("blocksize")?);
    let bb = dim_mul(&b, &b);
    let shape = match cx.shape(0) {
        Some(s) if s.len() == 4 => {
            let div = |d: &SymDim, k: &SymDim, cx: &mut Cx| {
                Mono::from_dim(d)
                    .div(&Mono::from_dim(k))
                    .map(|m| m.to_dim())
                    .unwrap_or_else(|| cx.fresh())
            };
            Some(if cx.node.op_type == "DepthToSpace" {
                vec![s[0].clone(), div(&s[1], &bb, cx), dim_mul(&s[2], &b), dim_mul(&s[3], &b)]
            } else {
                vec![s[0].clone(), dim_mul(&s[1], &bb), div(&s[2], &b, cx), div(&s[3], &b, cx)]
            })
        }
        _ => None,
    };
    Ok(vec![out(cx.dtype(0), shape)])
}

fn one_hot(cx: &mut Cx) -> Result<Vec<Out>> {
    let depth = cx.num_scalar(1).map(|d| SymDim::Known(d as i64));
    let axis = cx.attrs.int_or("axis", -1)?;
    let shape = match cx.shape(0) {
        Some(mut s) => {
            let a = cx.axis(axis, s.len() + 1)?;
            let d = depth.unwrap_or_else(|| cx.fresh());
            s.insert(a, d);
            Some(s)
        }
        None => None,
    };
    Ok(vec![out(cx.dtype(2), shape)])
}

/// `[rank, nonzeros]` int64 coordinates; how many is known only at run time.
fn non_zero(cx: &mut Cx) -> Result<Vec<Out>> {
    let shape = cx.rank(0).map(|r| vec![SymDim::Known(r as i64), cx.fresh()]);
    Ok(vec![out(Some(DType::I64), shape)])
}

fn compress(cx: &mut Cx) -> Result<Vec<Out>> {
    let shape = match cx.attrs.int("axis")? {
        None => Some(vec![cx.fresh()]),
        Some(axis) => match cx.shape(0) {
            Some(mut s) => {
                let a = cx.axis(axis, s.len())?;
                s[a] = cx.fresh();
                Some(s)
            }
            None => None,
        },
    };
    Ok(vec![out(cx.dtype(0), shape)])
}

/// The shape of the input as an int64 vector whose elements are its (possibly symbolic) dims.
fn shape_op(cx: &mut Cx) -> Result<Vec<Out>> {
    let start = cx.attrs.int_or("start", 0)?;
    let end = cx.attrs.int("end")?;
    match cx.shape(0) {
        Some(s) => {
            let r = s.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let (a, b) = (clamp(start), clamp(end.unwrap_or(r)));
            let dims: Vec<SymDim> = if a < b { s[a..b].to_vec() } else { Vec::new() };
            let val = Const {
                shape: vec![dims.len()],
                data: dims.iter().map(|d| Elem::I(Mono::from_dim(d))).collect(),
            };
            Ok(vec![Out { ty: ValueType::known(DType::I64, &[dims.len() as i64]), val: Some(val) }])
        }
        None => Ok(vec![out(Some(DType::I64), Some(vec![cx.fresh()]))]),
    }
}

fn size_op(cx: &mut Cx) -> Result<Vec<Out>> {
    let val = cx
        .shape(0)
        .map(|s| Const { shape: vec![], data: vec![Elem::I(Mono::from_dim(&dims_product(&s)))] });
    Ok(vec![Out { ty: ValueType::known(DType::I64, &[]), val }])
}

fn constant_of_shape(cx: &mut Cx) -> Result<Vec<Out>> {
    let value = cx.attrs.tensor("value")?;
    let dtype = value.map_or(Some(DType::F32), |t| DType::from_onnx(t.data_type));
    let fill = match value {
        Some(t) => Const::from_proto(t).and_then(|c| c.data.first().cloned()),
        None => Some(Elem::F(0.0)),
    };
    let dims = cx.cval(0).and_then(Const::dims);
    let shape = match (&dims, cx.shape(0)) {
        (Some(d), _) => Some(d.clone()),
        (None, Some(s)) => {
            s.first().and_then(SymDim::known).map(|n| (0..n).map(|_| cx.fresh()).collect())
        }
        _ => None,
    };
    let val = match (&shape, fill) {
        (Some(s), Some(f)) => {
            let n: Option<Vec<usize>> = s.iter().map(|d| d.known().map(|k| k as usize)).collect();
            n.filter(|n| n.iter().product::<usize>() <= MAX_CONST_ELEMS)
                .map(|n| Const { data: vec![f; n.iter().product()], shape: n })
        }
        _ => None,
    };
    Ok(vec![Out { ty: ValueType::new(dtype, shape), val }])
}

fn range(cx: &mut Cx) -> Result<Vec<Out>> {
    let x_dtype = cx.dtype(0);
    let (s, l, d) = (cx.num_scalar(0), cx.num_scalar(1), cx.num_scalar(2));
    match (s, l, d) {
        (Some(s), Some(l), Some(d)) if d != 0.0 => {
            let n = ((l - s) / d).ceil().max(0.0) as usize;
            let is_float = x_dtype.is_some_and(DType::is_float);
            let val = (n <= MAX_CONST_ELEMS).then(|| Const {
                shape: vec![n],
                data: (0..n)
                    .map(|i| {
                        let v = s + d * i as f64;
                        if is_float {
                            Elem::F(v)
                        } else {
                            Elem::I(Mono::int(v as i64))
                        }
                    })
                    .collect(),
            });
            Ok(vec![Out { ty: ValueType::new(x_dtype, Some(vec![SymDim::Known(n as i64)])), val }])
        }
        _ => Ok(vec![out(x_dtype, Some(vec![cx.fresh()]))]),
    }
}

/// `EyeLike`, `Random*Like`, `Bernoulli`: the input's shape, as `dtype` when given.
fn like(cx: &mut Cx) -> Result<Vec<Out>> {
    let dtype = match cx.attrs.int("dtype")? {
        Some(d) => DType::from_onnx(d as i32),
        None => cx.dtype(0),
    };
    Ok(vec![out(dtype, cx.shape(0))])
}

/// `RandomNormal`, `RandomUniform`: the `shape` attribute, as `dtype` (float by default).
fn random(cx: &mut Cx) -> Result<Vec<Out>> {
    let dtype = DType::from_onnx(cx.attrs.int_or("dtype", 1)? as i32);
    let shape = cx.attrs.ints("shape")?.map(|s| s.into_iter().map(SymDim::Known).collect());
    Ok(vec![out(dtype, shape)])
}

/// The first index and the number of elements ONNX `Slice` picks from a dim of size `d`.
fn slice_span(start: i64, end: i64, step: i64, d: i64) -> (i64, i64) {
    let norm = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
    let (s, e) = (norm(start), norm(end));
    if step > 0 {
        let (s, e) = (s.clamp(0, d), e.clamp(0, d));
        (s, if e > s { (e - s + step - 1) / step } else { 0 })
    } else {
        let (s, e) = (s.clamp(-1, d - 1), e.clamp(-1, d - 1));
        (s, if s > e { (s - e + (-step) - 1) / (-step) } else { 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_spans_clamp_as_onnx_does() {
        assert_eq!(slice_span(0, i64::MAX, 1, 5), (0, 5));
        assert_eq!(slice_span(-1, i64::MIN, -1, 5), (4, 5));
        assert_eq!(slice_span(1, 100, 3, 10), (1, 3));
    }
}
