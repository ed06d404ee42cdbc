//! Ops that move values without arithmetic: Flatten/Reshape/Squeeze/Unsqueeze (a new shape),
//! Transpose, Concat, Slice and Gather. Their backward passes move the gradient back.

use crate::arr::{norm_axis, strides, Arr};

pub fn flatten_shape(shape: &[usize], axis: i64) -> Result<Vec<usize>, String> {
    let a = if axis < 0 { axis + shape.len() as i64 } else { axis };
    if !(0..=shape.len() as i64).contains(&a) {
        return Err(format!("Flatten axis {axis} for shape {shape:?}"));
    }
    let a = a as usize;
    Ok(vec![shape[..a].iter().product(), shape[a..].iter().product()])
}

/// ONNX Reshape's target: `0` copies the input dim (unless `allowzero`), `-1` is inferred (the
/// engine's rule).
pub fn reshape_shape(
    shape: &[usize],
    target: &[i64],
    allowzero: bool,
) -> Result<Vec<usize>, String> {
    lowbit_engine::ops::shape::reshape_target(shape, target, allowzero)
        .map_err(|e| format!("Reshape: {e}"))
}

pub fn squeeze_shape(shape: &[usize], axes: &[i64]) -> Result<Vec<usize>, String> {
    if axes.is_empty() {
        return Ok(shape.iter().copied().filter(|&d| d != 1).collect());
    }
    let mut drop = Vec::new();
    for &a in axes {
        let a =
            norm_axis(a, shape.len()).ok_or_else(|| format!("Squeeze axis {a} for {shape:?}"))?;
        if shape[a] != 1 {
            return Err(format!("Squeeze axis {a} of {shape:?} is not 1"));
        }
        drop.push(a);
    }
    Ok(shape.iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, &d)| d).collect())
}

pub fn unsqueeze_shape(shape: &[usize], axes: &[i64]) -> Result<Vec<usize>, String> {
    let r = shape.len() + axes.len();
    let mut ins = Vec::new();
    for &a in axes {
        ins.push(norm_axis(a, r).ok_or_else(|| format!("Unsqueeze axis {a} for {shape:?}"))?);
    }
    let mut src = shape.iter();
    Ok((0..r).map(|i| if ins.contains(&i) { 1 } else { *src.next().unwrap_or(&1) }).collect())
}

/// Transpose by `perm` (empty: reversed axes). `inverse` applies the inverse permutation.
pub fn transpose(x: &Arr, perm: &[usize], inverse: bool) -> Result<Arr, String> {
    let r = x.rank();
    let perm: Vec<usize> = if perm.is_empty() { (0..r).rev().collect() } else { perm.to_vec() };
    let mut sorted = perm.clone();
    sorted.sort_unstable();
    if sorted != (0..r).collect::<Vec<_>>() {
        return Err(format!("Transpose perm {perm:?} for shape {:?}", x.shape));
    }
    let perm = if inverse {
        let mut inv = vec![0; r];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        inv
    } else {
        perm
    };
    let out: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let y = lowbit_engine::ops::shape::permute(&x.data, &x.shape, &perm);
    Ok(Arr::new(out, y))
}

pub fn concat_forward(xs: &[&Arr], axis: i64) -> Result<Arr, String> {
    let first = xs.first().ok_or("Concat of nothing")?;
    let a = norm_axis(axis, first.rank())
        .ok_or_else(|| format!("Concat axis {axis} for {:?}", first.shape))?;
    let mut shape = first.shape.clone();
    shape[a] = 0;
    for x in xs {
        if x.rank() != first.rank()
            || x.shape[..a] != first.shape[..a]
            || x.shape[a + 1..] != first.shape[a + 1..]
        {
            return Err(format!("Concat of {:?} and {:?} on axis {a}", first.shape, x.shape));
        }
        shape[a] += x.shape[a];
    }
    let outer: usize = shape[..a].iter().product();
    let inner: usize = shape[a + 1..].iter().product();
    let mut y = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for x in xs {
            let n = x.shape[a] * inner;
            y.extend_from_slice(&x.data[o * n..(o + 1) * n]);
        }
    }
    Ok(Arr::new(shape, y))
}

pub fn concat_backward(xs: &[&Arr], axis: i64, gy: &Arr) -> Vec<Option<Arr>> {
    let a = norm_axis(axis, gy.rank()).expect("checked in forward");
    let outer: usize = gy.shape[..a].iter().product();
    let inner: usize = gy.shape[a + 1..].iter().product();
    let mut out: Vec<Vec<f32>> = xs.iter().map(|x| Vec::with_capacity(x.len())).collect();
    let mut off = 0;
    for _ in 0..outer {
        for (i, x) in xs.iter().enumerate() {
            let n = x.shape[a] * inner;
            out[i].extend_from_slice(&gy.data[off..off + n]);
            off += n;
        }
    }
    xs.iter().zip(out).map(|(x, g)| Some(Arr::new(x.shape.clone(), g))).collect()
}

/// Per axis of the input: (start, step, count) of the elements a Slice keeps.
pub fn slice_plan(
    shape: &[usize],
    starts: &[i64],
    ends: &[i64],
    axes: &[i64],
    steps: &[i64],
) -> Result<Vec<(i64, i64, usize)>, String> {
    let r = shape.len();
    let mut plan: Vec<(i64, i64, usize)> = shape.iter().map(|&d| (0, 1, d)).collect();
    for (i, &start) in starts.iter().enumerate() {
        let a = match axes.get(i) {
            Some(&a) => norm_axis(a, r).ok_or_else(|| format!("Slice axis {a} for {shape:?}"))?,
            None => i,
        };
        let d = shape[a] as i64;
        let step = *steps.get(i).unwrap_or(&1);
        if step == 0 {
            return Err("Slice step 0".into());
        }
        let clampi = |v: i64, lo: i64, hi: i64| v.max(lo).min(hi);
        let norm = |v: i64| if v < 0 { v + d } else { v };
        let (s, e) = (norm(start), norm(*ends.get(i).ok_or("Slice: fewer ends than starts")?));
        let (s, e) = if step > 0 {
            (clampi(s, 0, d), clampi(e, 0, d))
        } else {
            (clampi(s, 0, d - 1), clampi(e, -1, d - 1))
        };
        let count = if step > 0 {
            ((e - s).max(0) + step - 1) / step
        } else {
            ((s - e).max(0) + (-step) - 1) / (-step)
        };
        plan[a] = (s, step, count as usize);
    }
    Ok(plan)
}

/// Flat input offsets of the sliced elements, in output order.
fn slice_offsets(shape: &[usize], plan: &[(i64, i64, usize)]) -> Vec<usize> {
    let st = strides(shape);
    let mut offs = vec![0usize];
    for (d, &(s, step, count)) in plan.iter().enumerate() {
        let mut next = Vec::with_capacity(offs.len() * count);
        for &o in &offs {
            for k in 0..count as i64 {
                next.push(o + ((s + k * step) as usize) * st[d]);
            }
        }
        offs = next;
    }
    offs
}

pub fn slice_forward(x: &Arr, plan: &[(i64, i64, usize)]) -> Arr {
    let offs = slice_offsets(&x.shape, plan);
    Arr::new(plan.iter().map(|p| p.2).collect(), offs.iter().map(|&o| x.data[o]).collect())
}

pub fn slice_backward(x: &Arr, plan: &[(i64, i64, usize)], gy: &Arr) -> Arr {
    let mut gx = Arr::zeros(&x.shape);
    for (i, o) in slice_offsets(&x.shape, plan).into_iter().enumerate() {
        gx.data[o] += gy.data[i];
    }
    gx
}

fn gather_index(i: f32, d: usize) -> Result<usize, String> {
    let i = i.round() as i64;
    let j = if i < 0 { i + d as i64 } else { i };
    if (0..d as i64).contains(&j) {
        Ok(j as usize)
    } else {
        Err(format!("Gather index {i} out of range for {d}"))
    }
}

pub fn gather_forward(x: &Arr, idx: &Arr, axis: i64) -> Result<Arr, String> {
    let a =
        norm_axis(axis, x.rank()).ok_or_else(|| format!("Gather axis {axis} for {:?}", x.shape))?;
    let outer: usize = x.shape[..a].iter().product();
    let inner: usize = x.shape[a + 1..].iter().product();
    let d = x.shape[a];
    let mut shape = x.shape[..a].to_vec();
    shape.extend(&idx.shape);
    shape.extend(&x.shape[a + 1..]);
    let mut y = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for &i in &idx.data {
            let j = gather_index(i, d)?;
            y.extend_from_slice(&x.data[(o * d + j) * inner..(o * d + j + 1) * inner]);
        }
    }
    Ok(Arr::new(shape, y))
}

pub fn gather_backward(x: &Arr, idx: &Arr, axis: i64, gy: &Arr) -> Result<Arr, String> {
    let a = norm_axis(axis, x.rank()).ok_or_else(|| format!("Gather axis {axis}"))?;
    let outer: usize = x.shape[..a].iter().product();
    let inner: usize = x.shape[a + 1..].iter().product();
    let d = x.shape[a];
    let mut gx = Arr::zeros(&x.shape);
    let mut off = 0;
    for o in 0..outer {
        for &i in &idx.data {
            let j = gather_index(i, d)?;
            for (t, g) in gx.data[(o * d + j) * inner..(o * d + j + 1) * inner]
                .iter_mut()
                .zip(&gy.data[off..off + inner])
            {
                *t += g;
            }
            off += inner;
        }
    }
    Ok(gx)
}
