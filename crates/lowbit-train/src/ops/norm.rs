//! Normalizations and reductions: BatchNormalization (inference form), LayerNormalization,
//! Softmax/LogSoftmax and ReduceMean.

use crate::arr::{norm_axis, Arr};

/// `(outer, dim, inner)` sizes around `axis`.
fn split(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

/// BatchNormalization as deployment runs it: running statistics, a per-channel affine map on
/// axis 1. Its parameters stay frozen (where it follows a Conv/Gemm it was folded into it).
pub fn batch_norm_coeffs(
    scale: &Arr,
    bias: &Arr,
    mean: &Arr,
    var: &Arr,
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = scale.data.iter().zip(&var.data).map(|(s, v)| s / (v + eps).sqrt()).collect();
    let b = bias.data.iter().zip(&mean.data).zip(&a).map(|((b, m), a)| b - m * a).collect();
    (a, b)
}

pub fn channel_affine(x: &Arr, a: &[f32], b: Option<&[f32]>) -> Result<Arr, String> {
    if x.rank() < 2 || x.shape[1] != a.len() {
        return Err(format!("{} channel parameters for input {:?}", a.len(), x.shape));
    }
    let (outer, c, inner) = split(&x.shape, 1);
    let mut y = x.data.clone();
    for o in 0..outer {
        for ch in 0..c {
            let row = &mut y[(o * c + ch) * inner..(o * c + ch + 1) * inner];
            let bb = b.map_or(0.0, |b| b[ch]);
            row.iter_mut().for_each(|v| *v = *v * a[ch] + bb);
        }
    }
    Ok(Arr::new(x.shape.clone(), y))
}

/// Softmax (or log-softmax) along `axis`; `coerce`: the opset < 13 form, every axis from
/// `axis` on flattened into one.
pub fn softmax_forward(x: &Arr, axis: i64, log: bool, coerce: bool) -> Result<Arr, String> {
    let (outer, dim, inner) = softmax_split(x, axis, coerce)?;
    let mut y = x.data.clone();
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * dim + j) * inner + i;
            let m = (0..dim).map(|j| x.data[at(j)]).fold(f32::NEG_INFINITY, f32::max);
            let s: f32 = (0..dim).map(|j| (x.data[at(j)] - m).exp()).sum();
            for j in 0..dim {
                y[at(j)] =
                    if log { x.data[at(j)] - m - s.ln() } else { (x.data[at(j)] - m).exp() / s };
            }
        }
    }
    Ok(Arr::new(x.shape.clone(), y))
}

fn softmax_split(x: &Arr, axis: i64, coerce: bool) -> Result<(usize, usize, usize), String> {
    let a =
        norm_axis(axis, x.rank()).ok_or_else(|| format!("axis {axis} for input {:?}", x.shape))?;
    Ok(if coerce {
        let outer: usize = x.shape[..a].iter().product();
        (outer, x.len() / outer.max(1), 1)
    } else {
        split(&x.shape, a)
    })
}

pub fn softmax_backward(
    x: &Arr,
    y: &Arr,
    gy: &Arr,
    axis: i64,
    log: bool,
    coerce: bool,
) -> Result<Arr, String> {
    let (outer, dim, inner) = softmax_split(x, axis, coerce)?;
    let mut gx = vec![0.0; x.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * dim + j) * inner + i;
            if log {
                // y = x − logsumexp: dx = dy − softmax · Σ dy
                let s: f32 = (0..dim).map(|j| gy.data[at(j)]).sum();
                for j in 0..dim {
                    gx[at(j)] = gy.data[at(j)] - y.data[at(j)].exp() * s;
                }
            } else {
                // dx = y · (dy − Σ dy·y)
                let s: f32 = (0..dim).map(|j| gy.data[at(j)] * y.data[at(j)]).sum();
                for j in 0..dim {
                    gx[at(j)] = y.data[at(j)] * (gy.data[at(j)] - s);
                }
            }
        }
    }
    Ok(Arr::new(x.shape.clone(), gx))
}

/// LayerNormalization over the axes from `axis` on, with `scale` and optional `bias` (of those
/// axes' shape, or broadcast to them).
pub fn layer_norm_forward(
    x: &Arr,
    scale: &Arr,
    bias: Option<&Arr>,
    axis: i64,
    eps: f32,
) -> Result<Arr, String> {
    let (rows, n) = ln_split(x, axis)?;
    let at = |p: &Arr, j: usize| if p.len() == 1 { p.data[0] } else { p.data[j] };
    check_param(scale, n)?;
    if let Some(b) = bias {
        check_param(b, n)?;
    }
    let mut y = vec![0.0; x.len()];
    for r in 0..rows {
        let xs = &x.data[r * n..(r + 1) * n];
        let (mean, inv) = mean_inv_std(xs, eps);
        for j in 0..n {
            y[r * n + j] = (xs[j] - mean) * inv * at(scale, j) + bias.map_or(0.0, |b| at(b, j));
        }
    }
    Ok(Arr::new(x.shape.clone(), y))
}

fn check_param(p: &Arr, n: usize) -> Result<(), String> {
    if p.len() == n || p.len() == 1 {
        Ok(())
    } else {
        Err(format!("LayerNormalization parameter of {} values for rows of {n}", p.len()))
    }
}

fn ln_split(x: &Arr, axis: i64) -> Result<(usize, usize), String> {
    let a =
        norm_axis(axis, x.rank()).ok_or_else(|| format!("axis {axis} for input {:?}", x.shape))?;
    let n: usize = x.shape[a..].iter().product();
    Ok((x.len() / n.max(1), n))
}

fn mean_inv_std(xs: &[f32], eps: f32) -> (f32, f32) {
    let n = xs.len() as f32;
    let mean = xs.iter().sum::<f32>() / n;
    let var = xs.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

pub fn layer_norm_backward(
    x: &Arr,
    scale: &Arr,
    bias: Option<&Arr>,
    gy: &Arr,
    axis: i64,
    eps: f32,
) -> Result<Vec<Option<Arr>>, String> {
    let (rows, n) = ln_split(x, axis)?;
    let at = |p: &Arr, j: usize| if p.len() == 1 { p.data[0] } else { p.data[j] };
    let idx = |p: &Arr, j: usize| if p.len() == 1 { 0 } else { j };
    let mut gx = vec![0.0; x.len()];
    let mut gs = vec![0.0; scale.len()];
    let mut gb = bias.map(|b| vec![0.0; b.len()]);
    let mut xhat = vec![0.0; n];
    let mut g = vec![0.0; n];
    for r in 0..rows {
        let xs = &x.data[r * n..(r + 1) * n];
        let gys = &gy.data[r * n..(r + 1) * n];
        let (mean, inv) = mean_inv_std(xs, eps);
        for j in 0..n {
            xhat[j] = (xs[j] - mean) * inv;
            g[j] = gys[j] * at(scale, j);
            gs[idx(scale, j)] += gys[j] * xhat[j];
            if let (Some(gb), Some(b)) = (gb.as_mut(), bias) {
                gb[idx(b, j)] += gys[j];
            }
        }
        // dx = inv · (g − mean(g) − x̂ · mean(g·x̂))
        let mg = g.iter().sum::<f32>() / n as f32;
        let mgx = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f32>() / n as f32;
        for j in 0..n {
            gx[r * n + j] = inv * (g[j] - mg - xhat[j] * mgx);
        }
    }
    Ok(vec![
        Some(Arr::new(x.shape.clone(), gx)),
        Some(Arr::new(scale.shape.clone(), gs)),
        bias.zip(gb).map(|(b, g)| Arr::new(b.shape.clone(), g)),
    ])
}

/// The axes a reduction runs over (all when `axes` is empty and `noop` is off), sorted.
pub fn reduce_axes(rank: usize, axes: &[i64], noop_with_empty: bool) -> Result<Vec<usize>, String> {
    if axes.is_empty() {
        return Ok(if noop_with_empty { vec![] } else { (0..rank).collect() });
    }
    let mut out = Vec::new();
    for &a in axes {
        out.push(norm_axis(a, rank).ok_or_else(|| format!("axis {a} for rank {rank}"))?);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// ReduceMean over `axes` (sorted); the output keeps them as 1s when `keepdims`.
pub fn reduce_mean_forward(x: &Arr, axes: &[usize], keepdims: bool) -> Arr {
    let kept: Vec<usize> =
        x.shape.iter().enumerate().map(|(i, &d)| if axes.contains(&i) { 1 } else { d }).collect();
    let count: usize = axes.iter().map(|&a| x.shape[a]).product();
    let mut y = super::elementwise::reduce_to(x, &kept);
    y.data.iter_mut().for_each(|v| *v /= count.max(1) as f32);
    if !keepdims {
        y.shape = x
            .shape
            .iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, &d)| d)
            .collect();
    }
    y
}

pub fn reduce_mean_backward(x: &Arr, axes: &[usize], gy: &Arr) -> Result<Arr, String> {
    let kept: Vec<usize> =
        x.shape.iter().enumerate().map(|(i, &d)| if axes.contains(&i) { 1 } else { d }).collect();
    let count: usize = axes.iter().map(|&a| x.shape[a]).product();
    let g = Arr::new(kept, gy.data.iter().map(|v| v / count.max(1) as f32).collect());
    let ones = Arr::new(x.shape.clone(), vec![1.0; x.len()]);
    super::elementwise::binary_forward(super::elementwise::Binary::Mul, &ones, &g)
}
