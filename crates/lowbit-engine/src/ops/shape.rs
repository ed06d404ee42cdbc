//! Layout and indexing ops: they move elements without computing on them, so each is written
//! once for every dtype.
//!
//! Most ops here reduce to "output element `i` is input element `idx[i]`" (an index list,
//! compressed into contiguous runs so copies become `memcpy`s) or to a list of `(source, start,
//! len)` runs (`Concat`, `Split`, `Gather`). `Transpose` first drops size-1 axes and merges axes
//! that stay adjacent, so the BERT attention patterns (`[1,s,12,64]→[1,12,s,64]` and
//! `→[1,12,64,s]`) become row copies or one tiled 2-D transpose.
//!
//! Semantics follow ONNX (opset 1–25) and ONNX Runtime: negative axes and indices count from the
//! end, `Slice` clamps starts/ends per the spec (negative steps included), out-of-range indices
//! are errors, not panics.

use crate::bail;
use crate::error::{OpError, OpResult};
use crate::op::{input, kernel, opt_input, BuildCtx, KernelResult};
use crate::ops::util::{broadcast_shapes, normalize_axes, normalize_axis, strides};
use crate::registry::Registry;
use lowbit_onnx::tensor_proto::tensor_from_proto;
use lowbit_tensor::tensor::numel;
use lowbit_tensor::{DType, Tensor, TensorData};

/// Applies `$body` (generic over the element type, bound to the vector `$v`) to any variant and
/// wraps the resulting vector back into the same variant.
macro_rules! map_same {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::F32($v) => TensorData::F32($body),
            TensorData::F64($v) => TensorData::F64($body),
            TensorData::F16($v) => TensorData::F16($body),
            TensorData::BF16($v) => TensorData::BF16($body),
            TensorData::F8E4M3FN($v) => TensorData::F8E4M3FN($body),
            TensorData::F8E5M2($v) => TensorData::F8E5M2($body),
            TensorData::I64($v) => TensorData::I64($body),
            TensorData::I32($v) => TensorData::I32($body),
            TensorData::I16($v) => TensorData::I16($body),
            TensorData::I8($v) => TensorData::I8($body),
            TensorData::U64($v) => TensorData::U64($body),
            TensorData::U32($v) => TensorData::U32($body),
            TensorData::U16($v) => TensorData::U16($body),
            TensorData::U8($v) => TensorData::U8($body),
            TensorData::I4($v) => TensorData::I4($body),
            TensorData::U4($v) => TensorData::U4($body),
            TensorData::Bool($v) => TensorData::Bool($body),
            TensorData::String($v) => TensorData::String($body),
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Element movement primitives.

/// Copies `(part, start, len)` runs out of `parts` (all of one dtype) into one storage.
fn gather_runs_multi(
    parts: &[&TensorData],
    runs: &[(usize, usize, usize)],
) -> OpResult<TensorData> {
    let total: usize = runs.iter().map(|r| r.2).sum();
    for &(p, s, l) in runs {
        if p >= parts.len() || s + l > parts[p].len() {
            bail!("internal: run ({p}, {s}, {l}) out of range");
        }
    }
    macro_rules! go {
        ($($V:ident),*) => {
            match parts[0] {
                $(TensorData::$V(_) => {
                    let srcs = parts
                        .iter()
                        .map(|p| match p {
                            TensorData::$V(v) => Ok(v.as_slice()),
                            o => Err(OpError::new(format!(
                                "inputs mix {} and {}",
                                parts[0].dtype(),
                                o.dtype()
                            ))),
                        })
                        .collect::<OpResult<Vec<_>>>()?;
                    let mut out = Vec::with_capacity(total);
                    for &(p, s, l) in runs {
                        out.extend_from_slice(&srcs[p][s..s + l]);
                    }
                    TensorData::$V(out)
                })*
            }
        };
    }
    Ok(go!(
        F32, F64, F16, BF16, F8E4M3FN, F8E5M2, I64, I32, I16, I8, U64, U32, U16, U8, I4, U4, Bool,
        String
    ))
}

/// Output element `i` is element `idx[i]` of the concatenation of `parts`; consecutive indices
/// become one run.
fn gather_idx_multi(parts: &[&TensorData], idx: &[usize]) -> OpResult<TensorData> {
    let mut bounds = Vec::with_capacity(parts.len());
    let mut acc = 0;
    for p in parts {
        bounds.push(acc);
        acc += p.len();
    }
    let locate = |g: usize| -> OpResult<(usize, usize)> {
        let p = bounds.partition_point(|&b| b <= g).saturating_sub(1);
        if g >= acc {
            bail!("internal: index {g} out of range {acc}");
        }
        Ok((p, g - bounds[p]))
    };
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    let mut i = 0;
    while i < idx.len() {
        let (p, s) = locate(idx[i])?;
        let end = bounds.get(p + 1).copied().unwrap_or(acc);
        let mut l = 1;
        while i + l < idx.len() && idx[i + l] == idx[i] + l && idx[i] + l < end {
            l += 1;
        }
        runs.push((p, s, l));
        i += l;
    }
    gather_runs_multi(parts, &runs)
}

/// The sub-tensor at index `i` of `axis`, that axis dropped (a `Scan` input's slice).
pub(crate) fn take_index(t: &Tensor, axis: usize, i: usize) -> OpResult<Tensor> {
    let s = t.shape();
    if axis >= s.len() || i >= s[axis] {
        bail!("index {i} of axis {axis} is outside shape {s:?}");
    }
    let (pre, d, post) = (numel(&s[..axis]), s[axis], numel(&s[axis + 1..]));
    let runs: Vec<(usize, usize, usize)> =
        (0..pre).map(|o| (0, (o * d + i) * post, post)).filter(|r| r.2 > 0).collect();
    let mut shape = s.to_vec();
    shape.remove(axis);
    Ok(Tensor::new(shape, gather_runs_multi(&[t.data()], &runs)?)?)
}

/// Tensors of one shape and dtype stacked along a new axis `axis` (a `Loop`'s or `Scan`'s
/// scan outputs).
pub(crate) fn stack(parts: &[Tensor], axis: usize) -> OpResult<Tensor> {
    let Some(first) = parts.first() else { bail!("nothing to stack") };
    let s = first.shape();
    if axis > s.len() {
        bail!("axis {axis} is outside 0..={}", s.len());
    }
    if let Some(p) = parts.iter().find(|p| p.shape() != s) {
        bail!("iterations produced shapes {s:?} and {:?}; they must agree", p.shape());
    }
    let (pre, post) = (numel(&s[..axis]), numel(&s[axis..]));
    let mut runs = Vec::with_capacity(pre * parts.len());
    for o in 0..pre {
        for p in 0..parts.len() {
            if post > 0 {
                runs.push((p, o * post, post));
            }
        }
    }
    let mut shape = s.to_vec();
    shape.insert(axis, parts.len());
    let datas: Vec<&TensorData> = parts.iter().map(|p| p.data()).collect();
    Ok(Tensor::new(shape, gather_runs_multi(&datas, &runs)?)?)
}

fn gather_idx(data: &TensorData, idx: &[usize]) -> OpResult<TensorData> {
    gather_idx_multi(&[data], idx)
}

/// Marks an output position that takes the fill value in [`axis_maps_index`].
const FILL: usize = usize::MAX;

/// Flat input indices for an output whose coordinate `o` on axis `a` reads input coordinate
/// `maps[a][o]` (or [`FILL`]); `fill` is the index that fill positions get.
fn axis_maps_index(in_shape: &[usize], maps: &[Vec<usize>], fill: usize) -> Vec<usize> {
    let st = strides(in_shape);
    let mut cur = vec![0usize];
    for (a, m) in maps.iter().enumerate() {
        let mut next = Vec::with_capacity(cur.len() * m.len());
        for &p in &cur {
            for &c in m {
                next.push(if p == FILL || c == FILL { FILL } else { p + c * st[a] });
            }
        }
        cur = next;
    }
    for v in cur.iter_mut() {
        if *v == FILL {
            *v = fill;
        }
    }
    cur
}

/// Elements of `src` (shape `in_shape`) permuted by `perm`, odometer order, row copies when the
/// last axis stays last. Also the transpose of lowbit-train's tape.
pub fn permute<T: Clone>(src: &[T], in_shape: &[usize], perm: &[usize]) -> Vec<T> {
    let r = in_shape.len();
    let n = src.len();
    if r <= 1 || n == 0 {
        return src.to_vec();
    }
    let in_st = strides(in_shape);
    let out_shape: Vec<usize> = perm.iter().map(|&p| in_shape[p]).collect();
    let st: Vec<usize> = perm.iter().map(|&p| in_st[p]).collect();
    // A batch of 2-D transposes: tile it so both sides stay in cache.
    if r >= 2 && perm[..r - 2].iter().enumerate().all(|(i, &p)| p == i) && perm[r - 1] == r - 2 {
        let rows = in_shape[r - 2];
        let cols = in_shape[r - 1];
        let mut out = src.to_vec();
        const T: usize = 32;
        for b in 0..n / (rows * cols) {
            let s = &src[b * rows * cols..(b + 1) * rows * cols];
            let o = &mut out[b * rows * cols..(b + 1) * rows * cols];
            for i0 in (0..rows).step_by(T) {
                for j0 in (0..cols).step_by(T) {
                    for i in i0..(i0 + T).min(rows) {
                        for j in j0..(j0 + T).min(cols) {
                            o[j * rows + i] = s[i * cols + j].clone();
                        }
                    }
                }
            }
        }
        return out;
    }
    let last = out_shape[r - 1];
    let ls = st[r - 1];
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; r - 1];
    let mut base = 0usize;
    loop {
        if ls == 1 {
            out.extend_from_slice(&src[base..base + last]);
        } else {
            out.extend((0..last).map(|j| src[base + j * ls].clone()));
        }
        let mut d = r - 1;
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            idx[d] += 1;
            base += st[d];
            if idx[d] < out_shape[d] {
                break;
            }
            base -= st[d] * out_shape[d];
            idx[d] = 0;
        }
    }
}

/// Transposes storage of shape `shape` by `perm` after dropping size-1 axes and merging axes
/// that stay adjacent.
fn transpose_data(data: &TensorData, shape: &[usize], perm: &[usize]) -> TensorData {
    // Compact: axes of size > 1, in input order, and the output order over them.
    let kept: Vec<usize> = (0..shape.len()).filter(|&a| shape[a] != 1).collect();
    let pos = |a: usize| kept.iter().position(|&k| k == a).unwrap_or(0);
    let cperm: Vec<usize> = perm.iter().copied().filter(|&a| shape[a] != 1).map(pos).collect();
    // Merge runs of consecutive input axes that stay consecutive in the output.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &p in &cperm {
        match groups.last_mut() {
            Some(g) if *g.last().unwrap_or(&usize::MAX) + 1 == p => g.push(p),
            _ => groups.push(vec![p]),
        }
    }
    let mut by_input: Vec<usize> = (0..groups.len()).collect();
    by_input.sort_by_key(|&g| groups[g][0]);
    let mshape: Vec<usize> =
        by_input.iter().map(|&g| groups[g].iter().map(|&c| shape[kept[c]]).product()).collect();
    let mperm: Vec<usize> =
        (0..groups.len()).map(|g| by_input.iter().position(|&x| x == g).unwrap_or(0)).collect();
    map_same!(data, v => permute(v, &mshape, &mperm))
}

fn ints(t: &Tensor) -> OpResult<Vec<i64>> {
    Ok(t.to_i64_vec()?)
}

fn out(shape: Vec<usize>, data: TensorData) -> OpResult<Vec<Tensor>> {
    Ok(vec![Tensor::new(shape, data)?])
}

/// Index `i` along a dim of size `dim`, negative counting from the end.
fn fix_index(i: i64, dim: usize) -> OpResult<usize> {
    let d = dim as i64;
    let j = if i < 0 { i + d } else { i };
    if j < 0 || j >= d {
        bail!("index {i} is out of bounds for a dimension of size {dim}");
    }
    Ok(j as usize)
}

// ---------------------------------------------------------------------------------------------
// Constants and shapes.

fn build_constant(ctx: &BuildCtx) -> KernelResult {
    let a = &ctx.attrs;
    let t = if let Some(p) = a.tensor("value")? {
        tensor_from_proto(p)?
    } else if let Some(v) = a.float("value_float")? {
        Tensor::scalar(v)
    } else if let Some(v) = a.floats("value_floats")? {
        Tensor::from_vec(vec![v.len()], v)?
    } else if let Some(v) = a.int("value_int")? {
        Tensor::scalar(v)
    } else if let Some(v) = a.ints("value_ints")? {
        Tensor::from_vec(vec![v.len()], v)?
    } else if let Some(v) = a.string("value_string")? {
        Tensor::new(vec![], TensorData::String(vec![v]))?
    } else if let Some(v) = a.strings("value_strings")? {
        Tensor::new(vec![v.len()], TensorData::String(v))?
    } else {
        bail!("Constant needs one of value, value_float(s), value_int(s), value_string(s)");
    };
    kernel(move |_| Ok(vec![t.clone()]))
}

fn build_constant_of_shape(ctx: &BuildCtx) -> KernelResult {
    let value = match ctx.attrs.tensor("value")? {
        Some(p) => tensor_from_proto(p)?,
        None => Tensor::scalar(0f32),
    };
    if value.len() != 1 {
        bail!("ConstantOfShape value must hold one element, it has {}", value.len());
    }
    kernel(move |ins| {
        let shape: Vec<usize> = ints(input(ins, 0)?)?
            .into_iter()
            .map(|d| usize::try_from(d).map_err(|_| OpError::new(format!("negative dim {d}"))))
            .collect::<OpResult<_>>()?;
        let n = numel(&shape);
        out(shape, value.data().gather(&vec![0; n]))
    })
}

fn build_identity(_ctx: &BuildCtx) -> KernelResult {
    kernel(|ins| Ok(vec![input(ins, 0)?.clone()]))
}

fn build_shape(ctx: &BuildCtx) -> KernelResult {
    let start = ctx.attrs.int_or("start", 0)?;
    let end = ctx.attrs.int("end")?;
    kernel(move |ins| {
        let s = input(ins, 0)?.shape();
        let r = s.len() as i64;
        let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
        let a = clamp(start);
        let b = clamp(end.unwrap_or(r));
        let dims: Vec<i64> =
            if a < b { s[a..b].iter().map(|&d| d as i64).collect() } else { vec![] };
        Ok(vec![Tensor::from_vec(vec![dims.len()], dims)?])
    })
}

fn build_size(_ctx: &BuildCtx) -> KernelResult {
    kernel(|ins| Ok(vec![Tensor::scalar(input(ins, 0)?.len() as i64)]))
}

/// ONNX Reshape's output shape: `0` copies the input dim (unless `allowzero`), one `-1` is
/// inferred. Also QAT's Reshape (lowbit-train).
pub fn reshape_target(in_shape: &[usize], spec: &[i64], allowzero: bool) -> OpResult<Vec<usize>> {
    let mut shape = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                shape.push(1);
            }
            0 if !allowzero => match in_shape.get(i) {
                Some(&v) => shape.push(v),
                None => bail!("shape {spec:?} copies dim {i}, which the input {in_shape:?} lacks"),
            },
            d if d >= 0 => shape.push(d as usize),
            _ => bail!("invalid shape {spec:?}"),
        }
    }
    let n = numel(in_shape);
    if let Some(i) = infer {
        let rest = numel(&shape);
        if rest == 0 || !n.is_multiple_of(rest) {
            bail!("cannot reshape {in_shape:?} into {spec:?}");
        }
        shape[i] = n / rest;
    }
    if numel(&shape) != n {
        bail!("cannot reshape {in_shape:?} ({n} elements) into {spec:?}");
    }
    Ok(shape)
}

fn build_reshape(ctx: &BuildCtx) -> KernelResult {
    let allowzero = ctx.attrs.int_or("allowzero", 0)? != 0;
    let attr_shape = if ctx.opset < 5 { ctx.attrs.ints("shape")? } else { None };
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let spec = match &attr_shape {
            Some(s) => s.clone(),
            None => ints(input(ins, 1)?)?,
        };
        let shape = reshape_target(x.shape(), &spec, allowzero)?;
        Ok(vec![x.clone().reshape(shape)?])
    })
}

fn build_flatten(ctx: &BuildCtx) -> KernelResult {
    let axis = ctx.attrs.int_or("axis", 1)?;
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let r = x.rank() as i64;
        let a = if axis < 0 { axis + r } else { axis };
        if a < 0 || a > r {
            bail!("axis {axis} is out of range for rank {r}");
        }
        let a = a as usize;
        let shape = vec![numel(&x.shape()[..a]), numel(&x.shape()[a..])];
        Ok(vec![x.clone().reshape(shape)?])
    })
}

fn build_squeeze(ctx: &BuildCtx) -> KernelResult {
    let attr_axes = if ctx.opset < 13 { ctx.attrs.ints("axes")? } else { None };
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let axes = match (&attr_axes, opt_input(ins, 1)) {
            (Some(a), _) => Some(a.clone()),
            (None, Some(t)) => Some(ints(t)?),
            (None, None) => None,
        };
        let s = x.shape();
        let shape: Vec<usize> = match axes {
            None => s.iter().copied().filter(|&d| d != 1).collect(),
            Some(axes) => {
                let axes = normalize_axes(&axes, s.len())?;
                for &a in &axes {
                    if s[a] != 1 {
                        bail!("cannot squeeze axis {a} of size {}", s[a]);
                    }
                }
                (0..s.len()).filter(|a| !axes.contains(a)).map(|a| s[a]).collect()
            }
        };
        Ok(vec![x.clone().reshape(shape)?])
    })
}

fn build_unsqueeze(ctx: &BuildCtx) -> KernelResult {
    let attr_axes = if ctx.opset < 13 { ctx.attrs.ints("axes")? } else { None };
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let axes = match &attr_axes {
            Some(a) => a.clone(),
            None => ints(input(ins, 1)?)?,
        };
        let r = x.rank() + axes.len();
        let axes = normalize_axes(&axes, r)?;
        let mut src = x.shape().iter();
        let shape: Vec<usize> = (0..r)
            .map(|a| if axes.contains(&a) { 1 } else { src.next().copied().unwrap_or(1) })
            .collect();
        Ok(vec![x.clone().reshape(shape)?])
    })
}

// ---------------------------------------------------------------------------------------------
// Reordering.

fn build_transpose(ctx: &BuildCtx) -> KernelResult {
    let perm = ctx.attrs.ints("perm")?;
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let r = x.rank();
        let perm: Vec<usize> = match &perm {
            Some(p) => {
                if p.len() != r {
                    bail!("perm {p:?} does not match rank {r}");
                }
                normalize_axes(p, r)?
            }
            None => (0..r).rev().collect(),
        };
        let shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
        out(shape, transpose_data(x.data(), x.shape(), &perm))
    })
}

/// `x` with its axes permuted by `perm` (a valid permutation of its rank).
pub(crate) fn transposed(x: &Tensor, perm: &[usize]) -> OpResult<Tensor> {
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    Ok(Tensor::new(shape, transpose_data(x.data(), x.shape(), perm))?)
}

/// Depth/space rearrangement as reshape → transpose → reshape.
fn rearrange(
    x: &Tensor,
    six: [usize; 6],
    perm: [usize; 6],
    shape: Vec<usize>,
) -> OpResult<Vec<Tensor>> {
    out(shape, transpose_data(x.data(), &six, &perm))
}

fn build_depth_to_space(ctx: &BuildCtx) -> KernelResult {
    let b = ctx.attrs.req_int("blocksize")?.max(1) as usize;
    let crd = ctx.attrs.string_or("mode", "DCR")? == "CRD";
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let &[n, c, h, w] = x.shape() else { bail!("DepthToSpace needs a 4-D input") };
        if c % (b * b) != 0 {
            bail!("channels {c} are not divisible by blocksize² {}", b * b);
        }
        let c2 = c / (b * b);
        let shape = vec![n, c2, h * b, w * b];
        if crd {
            rearrange(x, [n, c2, b, b, h, w], [0, 1, 4, 2, 5, 3], shape)
        } else {
            rearrange(x, [n, b, b, c2, h, w], [0, 3, 4, 1, 5, 2], shape)
        }
    })
}

fn build_space_to_depth(ctx: &BuildCtx) -> KernelResult {
    let b = ctx.attrs.req_int("blocksize")?.max(1) as usize;
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let &[n, c, h, w] = x.shape() else { bail!("SpaceToDepth needs a 4-D input") };
        if h % b != 0 || w % b != 0 {
            bail!("spatial dims {h}x{w} are not divisible by blocksize {b}");
        }
        rearrange(
            x,
            [n, c, h / b, b, w / b, b],
            [0, 3, 5, 1, 2, 4],
            vec![n, c * b * b, h / b, w / b],
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Joining and splitting.

fn build_concat(ctx: &BuildCtx) -> KernelResult {
    let axis = ctx.attrs.req_int("axis")?;
    kernel(move |ins| {
        let xs: Vec<&Tensor> = ins.iter().flatten().copied().collect();
        let Some(first) = xs.first() else { bail!("Concat needs at least one input") };
        let a = normalize_axis(axis, first.rank())?;
        Ok(vec![concat(&xs, a)?])
    })
}

/// `xs` (one dtype, equal shapes but for `axis`) joined along `axis`: `Concat`, and the
/// key/value caches of `Attention`.
pub(crate) fn concat(xs: &[&Tensor], a: usize) -> OpResult<Tensor> {
    let Some(first) = xs.first() else { bail!("nothing to concatenate") };
    let r = first.rank();
    if a >= r {
        bail!("axis {a} is out of range for rank {r}");
    }
    let mut shape = first.shape().to_vec();
    shape[a] = 0;
    for x in xs {
        let s = x.shape();
        if s.len() != r || (0..r).any(|i| i != a && s[i] != first.shape()[i]) {
            bail!("cannot concatenate {:?} and {s:?} along axis {a}", first.shape());
        }
        shape[a] += s[a];
    }
    let outer = numel(&shape[..a]);
    let inner = numel(&shape[a + 1..]);
    let mut runs = Vec::with_capacity(outer * xs.len());
    for o in 0..outer {
        for (p, x) in xs.iter().enumerate() {
            let chunk = x.shape()[a] * inner;
            if chunk > 0 {
                runs.push((p, o * chunk, chunk));
            }
        }
    }
    let parts: Vec<&TensorData> = xs.iter().map(|x| x.data()).collect();
    Ok(Tensor::new(shape, gather_runs_multi(&parts, &runs)?)?)
}

fn build_split(ctx: &BuildCtx) -> KernelResult {
    let axis = ctx.attrs.int_or("axis", 0)?;
    let attr_split = if ctx.opset < 13 { ctx.attrs.ints("split")? } else { None };
    let n_out = ctx.node.output.len();
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let a = normalize_axis(axis, x.rank())?;
        let dim = x.shape()[a];
        let split: Vec<usize> = match (&attr_split, opt_input(ins, 1)) {
            (Some(s), _) => s.iter().map(|&v| v.max(0) as usize).collect(),
            (None, Some(t)) => ints(t)?.into_iter().map(|v| v.max(0) as usize).collect(),
            _ => {
                let chunk = dim.div_ceil(n_out.max(1));
                (0..n_out).map(|i| chunk.min(dim.saturating_sub(i * chunk))).collect()
            }
        };
        if split.len() != n_out || split.iter().sum::<usize>() != dim {
            bail!("split {split:?} does not divide dim {dim} into {n_out} outputs");
        }
        let outer = numel(&x.shape()[..a]);
        let inner = numel(&x.shape()[a + 1..]);
        let mut outs = Vec::with_capacity(n_out);
        let mut off = 0;
        for &s in &split {
            let runs: Vec<(usize, usize, usize)> = (0..outer)
                .filter(|_| s * inner > 0)
                .map(|o| (0, (o * dim + off) * inner, s * inner))
                .collect();
            let mut shape = x.shape().to_vec();
            shape[a] = s;
            outs.push(Tensor::new(shape, gather_runs_multi(&[x.data()], &runs)?)?);
            off += s;
        }
        Ok(outs)
    })
}

// ---------------------------------------------------------------------------------------------
// Slicing and indexing.

/// The coordinates `Slice` picks along one axis of size `dim`.
fn slice_axis(dim: usize, start: i64, end: i64, step: i64) -> OpResult<Vec<usize>> {
    if step == 0 {
        bail!("slice step cannot be 0");
    }
    let d = dim as i64;
    let fix = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
    let (s, e) = if step > 0 {
        (fix(start).clamp(0, d), fix(end).clamp(0, d))
    } else {
        (fix(start).clamp(0, d - 1), fix(end).clamp(-1, d - 1))
    };
    let mut v = Vec::new();
    let mut i = s;
    while (step > 0 && i < e) || (step < 0 && i > e) {
        v.push(i as usize);
        i += step;
    }
    Ok(v)
}

fn build_slice(ctx: &BuildCtx) -> KernelResult {
    let attrs = if ctx.opset < 10 {
        Some((
            ctx.attrs.ints_or("starts", &[])?,
            ctx.attrs.ints_or("ends", &[])?,
            ctx.attrs.ints("axes")?,
        ))
    } else {
        None
    };
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let (starts, ends, axes, steps) = match &attrs {
            Some((s, e, a)) => (s.clone(), e.clone(), a.clone(), None),
            None => (
                ints(input(ins, 1)?)?,
                ints(input(ins, 2)?)?,
                opt_input(ins, 3).map(ints).transpose()?,
                opt_input(ins, 4).map(ints).transpose()?,
            ),
        };
        let r = x.rank();
        let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
        let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
        if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
            bail!("starts, ends, axes and steps must have the same length");
        }
        let axes = normalize_axes(&axes, r)?;
        let mut maps: Vec<Vec<usize>> = x.shape().iter().map(|&d| (0..d).collect()).collect();
        for (i, &a) in axes.iter().enumerate() {
            maps[a] = slice_axis(x.shape()[a], starts[i], ends[i], steps[i])?;
        }
        let shape: Vec<usize> = maps.iter().map(|m| m.len()).collect();
        let idx = axis_maps_index(x.shape(), &maps, 0);
        out(shape, gather_idx(x.data(), &idx)?)
    })
}

fn build_gather(ctx: &BuildCtx) -> KernelResult {
    let axis = ctx.attrs.int_or("axis", 0)?;
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let ind = input(ins, 1)?;
        let a = normalize_axis(axis, x.rank())?;
        let dim = x.shape()[a];
        let outer = numel(&x.shape()[..a]);
        let inner = numel(&x.shape()[a + 1..]);
        let idx: Vec<usize> =
            ints(ind)?.into_iter().map(|i| fix_index(i, dim)).collect::<OpResult<_>>()?;
        let mut runs = Vec::with_capacity(outer * idx.len());
        if inner > 0 {
            for o in 0..outer {
                for &i in &idx {
                    runs.push((0, (o * dim + i) * inner, inner));
                }
            }
        }
        let mut shape = x.shape()[..a].to_vec();
        shape.extend_from_slice(ind.shape());
        shape.extend_from_slice(&x.shape()[a + 1..]);
        out(shape, gather_runs_multi(&[x.data()], &runs)?)
    })
}

/// For each position of an `ind_shape` index tensor whose values address axis `a` of `shape`,
/// the flat index into `shape` (`ScatterElements`/`GatherElements` addressing).
fn element_targets(
    shape: &[usize],
    ind_shape: &[usize],
    ind: &[i64],
    a: usize,
) -> OpResult<Vec<usize>> {
    if ind_shape.len() != shape.len() {
        bail!("indices {ind_shape:?} must have the rank of the data {shape:?}");
    }
    let st = strides(shape);
    let ist = strides(ind_shape);
    let mut outv = Vec::with_capacity(ind.len());
    for (i, &v) in ind.iter().enumerate() {
        let mut off = 0;
        for d in 0..shape.len() {
            let c = (i / ist[d]) % ind_shape[d].max(1);
            let c = if d == a {
                fix_index(v, shape[d])?
            } else if c < shape[d] {
                c
            } else {
                bail!("indices {ind_shape:?} exceed the data {shape:?} on axis {d}");
            };
            off += c * st[d];
        }
        outv.push(off);
    }
    Ok(outv)
}

fn build_gather_elements(ctx: &BuildCtx) -> KernelResult {
    let axis = ctx.attrs.int_or("axis", 0)?;
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let ind = input(ins, 1)?;
        let a = normalize_axis(axis, x.rank())?;
        let idx = element_targets(x.shape(), ind.shape(), &ints(ind)?, a)?;
        out(ind.shape().to_vec(), gather_idx(x.data(), &idx)?)
    })
}

/// For `GatherND`/`ScatterND`: the start offset and the length of each addressed slice.
fn nd_slices(
    shape: &[usize],
    ind_shape: &[usize],
    ind: &[i64],
    b: usize,
) -> OpResult<(Vec<usize>, usize)> {
    let Some(&k) = ind_shape.last() else { bail!("indices must have rank >= 1") };
    if b + k > shape.len() || b >= ind_shape.len() {
        bail!("indices {ind_shape:?} with batch_dims {b} do not fit data {shape:?}");
    }
    if ind_shape[..b] != shape[..b] {
        bail!("batch dims of indices {ind_shape:?} and data {shape:?} differ");
    }
    let st = strides(shape);
    let slice_len = numel(&shape[b + k..]);
    let batch_size = numel(&shape[b..]);
    let per_batch = numel(&ind_shape[b..ind_shape.len() - 1]);
    let mut starts = Vec::with_capacity(ind.len() / k.max(1));
    let tuples = numel(&ind_shape[..ind_shape.len() - 1]);
    for t in 0..tuples {
        let batch = t.checked_div(per_batch).unwrap_or(0);
        let mut off = batch * batch_size;
        for j in 0..k {
            off += fix_index(ind[t * k + j], shape[b + j])? * st[b + j];
        }
        starts.push(off);
    }
    Ok((starts, slice_len))
}

fn build_gather_nd(ctx: &BuildCtx) -> KernelResult {
    let b = ctx.attrs.int_or("batch_dims", 0)?.max(0) as usize;
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let ind = input(ins, 1)?;
        let (starts, len) = nd_slices(x.shape(), ind.shape(), &ints(ind)?, b)?;
        let k = ind.shape()[ind.rank() - 1];
        let runs: Vec<_> = starts.iter().filter(|_| len > 0).map(|&s| (0, s, len)).collect();
        let mut shape = ind.shape()[..ind.rank() - 1].to_vec();
        shape.extend_from_slice(&x.shape()[b + k..]);
        out(shape, gather_runs_multi(&[x.data()], &runs)?)
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Reduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

fn reduction(ctx: &BuildCtx) -> OpResult<Reduction> {
    Ok(match ctx.attrs.string_or("reduction", "none")?.as_str() {
        "none" => Reduction::None,
        "add" => Reduction::Add,
        "mul" => Reduction::Mul,
        "max" => Reduction::Max,
        "min" => Reduction::Min,
        other => bail!("unknown reduction '{other}'"),
    })
}

/// Arithmetic that scatter reductions need.
trait Combine: Copy + PartialOrd {
    fn add(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
}

macro_rules! combine_int {
    ($($t:ty),*) => {$(
        impl Combine for $t {
            fn add(self, o: Self) -> Self { self.wrapping_add(o) }
            fn mul(self, o: Self) -> Self { self.wrapping_mul(o) }
        }
    )*};
}
combine_int!(i8, i16, i32, i64, u8, u16, u32, u64);

macro_rules! combine_float {
    ($($t:ty),*) => {$(
        impl Combine for $t {
            fn add(self, o: Self) -> Self { self + o }
            fn mul(self, o: Self) -> Self { self * o }
        }
    )*};
}
combine_float!(f32, f64, half::f16, half::bf16);

fn reduce_into<T: Combine>(dst: &mut [T], src: &[T], pairs: &[(usize, usize)], r: Reduction) {
    for &(d, s) in pairs {
        let (a, b) = (dst[d], src[s]);
        dst[d] = match r {
            Reduction::Add => a.add(b),
            Reduction::Mul => a.mul(b),
            Reduction::Max => {
                if b > a {
                    b
                } else {
                    a
                }
            }
            Reduction::Min => {
                if b < a {
                    b
                } else {
                    a
                }
            }
            Reduction::None => b,
        };
    }
}

/// `data` with element `d` replaced by (or reduced with) element `s` of `updates` for each
/// `(d, s)` pair, in order.
fn scatter(
    data: &TensorData,
    updates: &TensorData,
    pairs: &[(usize, usize)],
    r: Reduction,
) -> OpResult<TensorData> {
    if data.dtype() != updates.dtype() {
        bail!("updates are {}, data is {}", updates.dtype(), data.dtype());
    }
    let mut outd = data.clone();
    if r == Reduction::None {
        macro_rules! assign {
            ($($V:ident),*) => {
                match (&mut outd, updates) {
                    $((TensorData::$V(o), TensorData::$V(u)) => {
                        for &(d, s) in pairs {
                            o[d] = u[s].clone();
                        }
                    })*
                    _ => bail!("internal: dtype mismatch"),
                }
            };
        }
        assign!(
            F32, F64, F16, BF16, F8E4M3FN, F8E5M2, I64, I32, I16, I8, U64, U32, U16, U8, I4, U4,
            Bool, String
        );
        return Ok(outd);
    }
    macro_rules! red {
        ($($V:ident),*) => {
            match (&mut outd, updates) {
                $((TensorData::$V(o), TensorData::$V(u)) => reduce_into(o, u, pairs, r),)*
                _ => bail!("reduction is not supported for {}", data.dtype()),
            }
        };
    }
    red!(F32, F64, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8);
    Ok(outd)
}

fn build_scatter_nd(ctx: &BuildCtx) -> KernelResult {
    let r = reduction(ctx)?;
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let ind = input(ins, 1)?;
        let upd = input(ins, 2)?;
        let (starts, len) = nd_slices(x.shape(), ind.shape(), &ints(ind)?, 0)?;
        if upd.len() != starts.len() * len {
            bail!("updates {:?} do not match indices {:?}", upd.shape(), ind.shape());
        }
        let pairs: Vec<(usize, usize)> = starts
            .iter()
            .enumerate()
            .flat_map(|(t, &s)| (0..len).map(move |j| (s + j, t * len + j)))
            .collect();
        out(x.shape().to_vec(), scatter(x.data(), upd.data(), &pairs, r)?)
    })
}

fn build_scatter_elements(ctx: &BuildCtx) -> KernelResult {
    let axis = ctx.attrs.int_or("axis", 0)?;
    let r = reduction(ctx)?;
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let ind = input(ins, 1)?;
        let upd = input(ins, 2)?;
        if upd.shape() != ind.shape() {
            bail!("updates {:?} must have the shape of indices {:?}", upd.shape(), ind.shape());
        }
        let a = normalize_axis(axis, x.rank())?;
        let dst = element_targets(x.shape(), ind.shape(), &ints(ind)?, a)?;
        let pairs: Vec<(usize, usize)> = dst.into_iter().enumerate().map(|(s, d)| (d, s)).collect();
        out(x.shape().to_vec(), scatter(x.data(), upd.data(), &pairs, r)?)
    })
}

// ---------------------------------------------------------------------------------------------
// Broadcasting, tiling, padding.

fn build_expand(_ctx: &BuildCtx) -> KernelResult {
    kernel(|ins| {
        let x = input(ins, 0)?;
        let spec: Vec<usize> = ints(input(ins, 1)?)?
            .into_iter()
            .map(|d| usize::try_from(d).map_err(|_| OpError::new(format!("negative dim {d}"))))
            .collect::<OpResult<_>>()?;
        let shape = broadcast_shapes(x.shape(), &spec)?;
        let mut in_shape = vec![1; shape.len() - x.rank()];
        in_shape.extend_from_slice(x.shape());
        let maps: Vec<Vec<usize>> = shape
            .iter()
            .zip(&in_shape)
            .map(|(&o, &i)| if i == 1 { vec![0; o] } else { (0..o).collect() })
            .collect();
        let idx = axis_maps_index(&in_shape, &maps, 0);
        out(shape, gather_idx(x.data(), &idx)?)
    })
}

fn build_tile(_ctx: &BuildCtx) -> KernelResult {
    kernel(|ins| {
        let x = input(ins, 0)?;
        let reps = ints(input(ins, 1)?)?;
        if reps.len() != x.rank() || reps.iter().any(|&r| r < 0) {
            bail!("repeats {reps:?} do not fit rank {}", x.rank());
        }
        let maps: Vec<Vec<usize>> = x
            .shape()
            .iter()
            .zip(&reps)
            .map(|(&d, &r)| (0..d * r as usize).map(|o| o % d.max(1)).collect())
            .collect();
        let shape: Vec<usize> = maps.iter().map(|m| m.len()).collect();
        let idx = axis_maps_index(x.shape(), &maps, 0);
        out(shape, gather_idx(x.data(), &idx)?)
    })
}

#[derive(Clone, Copy, PartialEq)]
enum PadMode {
    Constant,
    Reflect,
    Edge,
    Wrap,
}

/// Input coordinate for output coordinate `o` of an axis of size `dim` padded by `before`.
fn pad_coord(o: usize, before: i64, dim: usize, mode: PadMode) -> usize {
    let d = dim as i64;
    let c = o as i64 - before;
    if (0..d).contains(&c) {
        return c as usize;
    }
    match mode {
        PadMode::Constant => FILL,
        PadMode::Edge => c.clamp(0, d - 1) as usize,
        PadMode::Wrap => c.rem_euclid(d) as usize,
        PadMode::Reflect => {
            if d == 1 {
                return 0;
            }
            let period = 2 * (d - 1);
            let m = c.rem_euclid(period);
            (if m < d { m } else { period - m }) as usize
        }
    }
}

fn build_pad(ctx: &BuildCtx) -> KernelResult {
    let mode = match ctx.attrs.string_or("mode", "constant")?.as_str() {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        "wrap" => PadMode::Wrap,
        m => bail!("unknown pad mode '{m}'"),
    };
    let attrs = if ctx.opset < 11 {
        Some((
            ctx.attrs.ints("pads")?.or(ctx.attrs.ints("paddings")?).unwrap_or_default(),
            ctx.attrs.float_or("value", 0.0)?,
        ))
    } else {
        None
    };
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let r = x.rank();
        let (pads, value, axes) = match &attrs {
            Some((p, v)) => (p.clone(), Some(Tensor::scalar(*v as f64).cast(x.dtype())?), None),
            None => (
                ints(input(ins, 1)?)?,
                opt_input(ins, 2).cloned(),
                opt_input(ins, 3).map(ints).transpose()?,
            ),
        };
        let axes = match axes {
            Some(a) => normalize_axes(&a, r)?,
            None => (0..r).collect(),
        };
        if pads.len() != 2 * axes.len() {
            bail!("pads {pads:?} need two values per padded axis ({})", axes.len());
        }
        let mut before = vec![0i64; r];
        let mut after = vec![0i64; r];
        for (i, &a) in axes.iter().enumerate() {
            before[a] = pads[i];
            after[a] = pads[i + axes.len()];
        }
        let mut maps = Vec::with_capacity(r);
        for a in 0..r {
            let d = x.shape()[a];
            let n = d as i64 + before[a] + after[a];
            if n < 0 {
                bail!("pads {pads:?} remove more than axis {a} holds");
            }
            if d == 0 && n > 0 && mode != PadMode::Constant {
                bail!("cannot {mode} pad an empty axis", mode = "non-constant");
            }
            maps.push((0..n as usize).map(|o| pad_coord(o, before[a], d, mode)).collect());
        }
        let shape: Vec<usize> = maps.iter().map(|m: &Vec<usize>| m.len()).collect();
        let idx = axis_maps_index(x.shape(), &maps, x.len());
        let fill = match value {
            Some(v) if v.len() == 1 => v.into_data(),
            Some(v) if v.is_empty() => TensorData::zeros(x.dtype(), 1),
            Some(_) => bail!("constant_value must be a scalar"),
            None => TensorData::zeros(x.dtype(), 1),
        };
        out(shape, gather_idx_multi(&[x.data(), &fill], &idx)?)
    })
}

// ---------------------------------------------------------------------------------------------
// Generators.

fn build_range(_ctx: &BuildCtx) -> KernelResult {
    kernel(|ins| {
        let (s, l, d) = (input(ins, 0)?, input(ins, 1)?, input(ins, 2)?);
        let dt = s.dtype();
        let f = |t: &Tensor| -> OpResult<f64> {
            if t.len() != 1 {
                bail!("Range inputs must be scalars");
            }
            Ok(t.to_f64_vec()?[0])
        };
        let (start, limit, delta) = (f(s)?, f(l)?, f(d)?);
        if delta == 0.0 {
            bail!("Range delta cannot be 0");
        }
        let n = ((limit - start) / delta).ceil().max(0.0) as usize;
        let data = match dt {
            DType::F64 => {
                let mut v = Vec::with_capacity(n);
                let mut x = start;
                for _ in 0..n {
                    v.push(x);
                    x += delta;
                }
                TensorData::F64(v)
            }
            DType::I64 | DType::I32 | DType::I16 => {
                let (st, de) = (ints(s)?[0], ints(d)?[0]);
                let v: Vec<i64> = (0..n as i64).map(|i| st + i * de).collect();
                lowbit_tensor::cast::cast(&TensorData::I64(v), dt)?
            }
            _ => {
                let (st, de) = (start as f32, delta as f32);
                let mut v = Vec::with_capacity(n);
                let mut x = st;
                for _ in 0..n {
                    v.push(x);
                    x += de;
                }
                lowbit_tensor::cast::cast(&TensorData::F32(v), dt)?
            }
        };
        out(vec![n], data)
    })
}

fn build_eye_like(ctx: &BuildCtx) -> KernelResult {
    let dtype = ctx.attrs.int("dtype")?;
    let k = ctx.attrs.int_or("k", 0)?;
    let dtype = match dtype {
        Some(id) => Some(
            DType::from_onnx(id as i32)
                .ok_or_else(|| OpError::new(format!("unsupported dtype {id}")))?,
        ),
        None => None,
    };
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let &[rows, cols] = x.shape() else { bail!("EyeLike needs a 2-D input") };
        let mut v = vec![0f64; rows * cols];
        for (i, row) in v.chunks_mut(cols.max(1)).enumerate().take(rows) {
            let j = i as i64 + k;
            if (0..cols as i64).contains(&j) {
                row[j as usize] = 1.0;
            }
        }
        let dt = dtype.unwrap_or(x.dtype());
        out(vec![rows, cols], lowbit_tensor::cast::cast(&TensorData::F64(v), dt)?)
    })
}

fn build_one_hot(ctx: &BuildCtx) -> KernelResult {
    let axis = ctx.attrs.int_or("axis", -1)?;
    kernel(move |ins| {
        let ind = input(ins, 0)?;
        let depth = input(ins, 1)?;
        let values = input(ins, 2)?;
        if values.len() != 2 {
            bail!("OneHot values must hold [off, on]");
        }
        let Some(&depth) = depth.to_f64_vec()?.first() else { bail!("depth is empty") };
        let depth = depth as i64;
        if depth < 1 {
            bail!("depth must be positive, got {depth}");
        }
        let r = ind.rank() as i64 + 1;
        let a = if axis < 0 { axis + r } else { axis };
        if a < 0 || a >= r {
            bail!("axis {axis} is out of range for rank {r}");
        }
        let a = a as usize;
        let mut shape = ind.shape().to_vec();
        shape.insert(a, depth as usize);
        let outer = numel(&ind.shape()[..a]);
        let inner = numel(&ind.shape()[a..]);
        let iv: Vec<i64> = ind.to_f64_vec()?.into_iter().map(|v| v as i64).collect();
        let mut idx = vec![0usize; numel(&shape)];
        for o in 0..outer {
            for i in 0..inner {
                let mut v = iv[o * inner + i];
                if v < 0 {
                    v += depth;
                }
                if (0..depth).contains(&v) {
                    idx[(o * depth as usize + v as usize) * inner + i] = 1;
                }
            }
        }
        out(shape, values.data().gather(&idx))
    })
}

fn build_trilu(ctx: &BuildCtx) -> KernelResult {
    let upper = ctx.attrs.int_or("upper", 1)? != 0;
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let k = match opt_input(ins, 1) {
            Some(t) => *ints(t)?.first().ok_or_else(|| OpError::new("k is empty"))?,
            None => 0,
        };
        if x.rank() < 2 {
            bail!("Trilu needs rank >= 2");
        }
        let r = x.rank();
        let (rows, cols) = (x.shape()[r - 2], x.shape()[r - 1]);
        let n = x.len();
        let idx: Vec<usize> = (0..n)
            .map(|e| {
                let i = ((e / cols.max(1)) % rows.max(1)) as i64;
                let j = (e % cols.max(1)) as i64;
                let keep = if upper { j - i >= k } else { j - i <= k };
                if keep {
                    e
                } else {
                    n
                }
            })
            .collect();
        let zero = TensorData::zeros(x.dtype(), 1);
        out(x.shape().to_vec(), gather_idx_multi(&[x.data(), &zero], &idx)?)
    })
}

// ---------------------------------------------------------------------------------------------
// Selection.

fn truthy(t: &Tensor) -> OpResult<Vec<bool>> {
    Ok(match t.data() {
        TensorData::Bool(v) => v.clone(),
        TensorData::String(v) => v.iter().map(|s| !s.is_empty()).collect(),
        _ => t.to_f64_vec()?.into_iter().map(|v| v != 0.0).collect(),
    })
}

fn build_non_zero(_ctx: &BuildCtx) -> KernelResult {
    kernel(|ins| {
        let x = input(ins, 0)?;
        let nz: Vec<usize> =
            truthy(x)?.iter().enumerate().filter(|(_, &b)| b).map(|(i, _)| i).collect();
        let r = x.rank().max(1);
        let shape = if x.rank() == 0 { vec![1usize] } else { x.shape().to_vec() };
        let st = strides(&shape);
        let mut v = vec![0i64; r * nz.len()];
        for (j, &e) in nz.iter().enumerate() {
            for d in 0..r {
                v[d * nz.len() + j] = ((e / st[d]) % shape[d]) as i64;
            }
        }
        Ok(vec![Tensor::from_vec(vec![r, nz.len()], v)?])
    })
}

fn build_compress(ctx: &BuildCtx) -> KernelResult {
    let axis = ctx.attrs.int("axis")?;
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let cond = truthy(input(ins, 1)?)?;
        match axis {
            None => {
                let idx: Vec<usize> = (0..x.len().min(cond.len())).filter(|&i| cond[i]).collect();
                out(vec![idx.len()], gather_idx(x.data(), &idx)?)
            }
            Some(axis) => {
                let a = normalize_axis(axis, x.rank())?;
                let d = x.shape()[a];
                let keep: Vec<usize> = (0..d.min(cond.len())).filter(|&i| cond[i]).collect();
                let mut maps: Vec<Vec<usize>> =
                    x.shape().iter().map(|&d| (0..d).collect()).collect();
                maps[a] = keep;
                let shape: Vec<usize> = maps.iter().map(|m| m.len()).collect();
                let idx = axis_maps_index(x.shape(), &maps, 0);
                out(shape, gather_idx(x.data(), &idx)?)
            }
        }
    })
}

fn build_reverse_sequence(ctx: &BuildCtx) -> KernelResult {
    let batch_axis = ctx.attrs.int_or("batch_axis", 1)?;
    let time_axis = ctx.attrs.int_or("time_axis", 0)?;
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let lens = ints(input(ins, 1)?)?;
        let ba = normalize_axis(batch_axis, x.rank())?;
        let ta = normalize_axis(time_axis, x.rank())?;
        let s = x.shape();
        if ba == ta || lens.len() != s[ba] {
            bail!("sequence_lens {lens:?} do not fit batch axis {ba} of {s:?}");
        }
        let st = strides(s);
        let idx: Vec<usize> = (0..x.len())
            .map(|e| {
                let b = (e / st[ba]) % s[ba];
                let t = (e / st[ta]) % s[ta];
                let l = lens[b].clamp(0, s[ta] as i64) as usize;
                if t < l {
                    e - t * st[ta] + (l - 1 - t) * st[ta]
                } else {
                    e
                }
            })
            .collect();
        out(s.to_vec(), gather_idx(x.data(), &idx)?)
    })
}

pub fn register(reg: &mut Registry) {
    reg.register("", "Constant", build_constant);
    reg.register("", "ConstantOfShape", build_constant_of_shape);
    reg.register("", "Identity", build_identity);
    reg.register("", "Shape", build_shape);
    reg.register("", "Size", build_size);
    reg.register("", "Reshape", build_reshape);
    reg.register("", "Flatten", build_flatten);
    reg.register("", "Squeeze", build_squeeze);
    reg.register("", "Unsqueeze", build_unsqueeze);
    reg.register("", "Transpose", build_transpose);
    reg.register("", "DepthToSpace", build_depth_to_space);
    reg.register("", "SpaceToDepth", build_space_to_depth);
    reg.register("", "Concat", build_concat);
    reg.register("", "Split", build_split);
    reg.register("", "Slice", build_slice);
    reg.register("", "Gather", build_gather);
    reg.register("", "GatherElements", build_gather_elements);
    reg.register("", "GatherND", build_gather_nd);
    reg.register("", "ScatterND", build_scatter_nd);
    reg.register("", "ScatterElements", build_scatter_elements);
    reg.register("", "Scatter", build_scatter_elements);
    reg.register("", "Expand", build_expand);
    reg.register("", "Tile", build_tile);
    reg.register("", "Pad", build_pad);
    reg.register("", "Range", build_range);
    reg.register("", "EyeLike", build_eye_like);
    reg.register("", "OneHot", build_one_hot);
    reg.register("", "Trilu", build_trilu);
    reg.register("", "NonZero", build_non_zero);
    reg.register("", "Compress", build_compress);
    reg.register("", "ReverseSequence", build_reverse_sequence);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(shape: &[usize]) -> Tensor {
        let n = numel(shape);
        Tensor::from_vec(shape.to_vec(), (0..n).map(|i| i as f32).collect()).unwrap()
    }

    /// Reference transpose by coordinates.
    fn naive_transpose(x: &Tensor, perm: &[usize]) -> Vec<f32> {
        let s = x.shape();
        let os: Vec<usize> = perm.iter().map(|&p| s[p]).collect();
        let ist = strides(s);
        let ost = strides(&os);
        let v = x.as_f32().unwrap();
        (0..x.len())
            .map(|o| {
                let mut off = 0;
                for (d, &p) in perm.iter().enumerate() {
                    off += ((o / ost[d]) % os[d]) * ist[p];
                }
                v[off]
            })
            .collect()
    }

    #[test]
    fn transpose_matches_coordinates_on_attention_patterns() {
        for (shape, perm) in [
            (vec![1, 5, 3, 4], vec![0, 2, 1, 3]),
            (vec![1, 5, 3, 4], vec![0, 2, 3, 1]),
            (vec![2, 3, 4], vec![2, 0, 1]),
            (vec![2, 1, 3, 1, 4], vec![4, 3, 2, 1, 0]),
            (vec![37, 45], vec![1, 0]),
        ] {
            let x = f32s(&shape);
            let got = transpose_data(x.data(), &shape, &perm);
            assert_eq!(got, TensorData::F32(naive_transpose(&x, &perm)), "{shape:?} {perm:?}");
        }
    }

    #[test]
    fn slice_clamps_and_steps_backwards() {
        assert_eq!(slice_axis(5, 0, i64::MAX, 2).unwrap(), vec![0, 2, 4]);
        assert_eq!(slice_axis(5, -1, i64::MIN, -1).unwrap(), vec![4, 3, 2, 1, 0]);
        assert_eq!(slice_axis(5, 10, 1, -2).unwrap(), vec![4, 2]);
        assert!(slice_axis(5, 3, 1, 1).unwrap().is_empty());
    }

    #[test]
    fn reflect_pad_mirrors_without_repeating_the_edge() {
        let c: Vec<usize> = (0..7).map(|o| pad_coord(o, 2, 3, PadMode::Reflect)).collect();
        assert_eq!(c, vec![2, 1, 0, 1, 2, 1, 0]);
        let c: Vec<usize> = (0..7).map(|o| pad_coord(o, 2, 3, PadMode::Wrap)).collect();
        assert_eq!(c, vec![1, 2, 0, 1, 2, 0, 1]);
    }

    #[test]
    fn reshape_copies_zero_dims_and_infers_minus_one() {
        assert_eq!(reshape_target(&[2, 3, 4], &[0, -1], false).unwrap(), vec![2, 12]);
        assert!(reshape_target(&[2, 3, 4], &[0, -1], true).is_err());
        assert_eq!(reshape_target(&[0, 3], &[3, 0], true).unwrap(), vec![3, 0]);
    }
}
