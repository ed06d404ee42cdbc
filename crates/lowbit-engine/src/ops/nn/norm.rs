//! Normalizations: `BatchNormalization` (inference), `InstanceNormalization`,
//! `LayerNormalization`, `GroupNormalization`, `MeanVarianceNormalization`, and `LRN`.

use super::{f32_data, float_input, from_f32};
use crate::bail;
use crate::error::OpResult;
use crate::op::{input, kernel, opt_input, BuildCtx, Kernel};
use crate::ops::util::normalize_axis;
use lowbit_kernels::norm::{layer_norm_rows, mean_inv_std};
use lowbit_tensor::tensor::numel;
use lowbit_tensor::Tensor;
use std::borrow::Cow;

/// A per-channel parameter of exactly `c` elements, as f32.
fn per_channel<'t>(t: &'t Tensor, c: usize, what: &str) -> OpResult<Cow<'t, [f32]>> {
    if t.len() != c {
        bail!("{what} has shape {:?}, expected {c} elements (one per channel)", t.shape());
    }
    f32_data(t)
}

struct BatchNormKernel {
    eps: f32,
    momentum: f32,
    training: bool,
}

pub(super) fn build_batch_norm(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    let a = &ctx.attrs;
    Ok(Box::new(BatchNormKernel {
        eps: a.float_or("epsilon", 1e-5)?,
        momentum: a.float_or("momentum", 0.9)?,
        training: a.int_or("training_mode", 0)? != 0,
    }))
}

impl Kernel for BatchNormKernel {
    fn run(&self, inputs: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        let x = input(inputs, 0)?;
        let dtype = float_input(x)?;
        if x.rank() < 2 {
            bail!("BatchNormalization needs an input of shape [N, C, ...], got {:?}", x.shape());
        }
        let (n, c) = (x.shape()[0], x.shape()[1]);
        let plane = numel(&x.shape()[2..]);
        let scale = per_channel(input(inputs, 1)?, c, "scale")?;
        let bias = per_channel(input(inputs, 2)?, c, "B")?;
        let mean_t = input(inputs, 3)?;
        let var_t = input(inputs, 4)?;
        let in_mean = per_channel(mean_t, c, "input_mean")?;
        let in_var = per_channel(var_t, c, "input_var")?;
        let xv = f32_data(x)?;
        let (mean, var): (Vec<f32>, Vec<f32>) = if self.training {
            (0..c)
                .map(|ch| {
                    let vals = (0..n).flat_map(|b| xv[(b * c + ch) * plane..][..plane].iter());
                    let cnt = (n * plane).max(1) as f64;
                    let m = vals.clone().map(|&v| v as f64).sum::<f64>() / cnt;
                    let v = vals.map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / cnt;
                    (m as f32, v as f32)
                })
                .unzip()
        } else {
            (in_mean.to_vec(), in_var.to_vec())
        };
        // Built by `extend`, not zero-filled and then overwritten: one pass over memory.
        let mut y = Vec::with_capacity(xv.len());
        for b in 0..n {
            for ch in 0..c {
                let k = scale[ch] / (var[ch] + self.eps).sqrt();
                let off = bias[ch] - mean[ch] * k;
                let base = (b * c + ch) * plane;
                y.extend(xv[base..base + plane].iter().map(|&xi| xi * k + off));
            }
        }
        let mut outs = vec![from_f32(dtype, x.shape().to_vec(), y)?];
        if self.training {
            let mom = self.momentum;
            let rm: Vec<f32> = (0..c).map(|i| in_mean[i] * mom + mean[i] * (1.0 - mom)).collect();
            let rv: Vec<f32> = (0..c).map(|i| in_var[i] * mom + var[i] * (1.0 - mom)).collect();
            outs.push(from_f32(mean_t.dtype(), mean_t.shape().to_vec(), rm)?);
            outs.push(from_f32(var_t.dtype(), var_t.shape().to_vec(), rv)?);
        }
        Ok(outs)
    }
}

pub(super) fn build_instance_norm(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    let eps = ctx.attrs.float_or("epsilon", 1e-5)?;
    kernel(move |inputs| {
        let x = input(inputs, 0)?;
        let dtype = float_input(x)?;
        if x.rank() < 3 {
            bail!(
                "InstanceNormalization needs an input of shape [N, C, D...], got {:?}",
                x.shape()
            );
        }
        let (n, c) = (x.shape()[0], x.shape()[1]);
        let plane = numel(&x.shape()[2..]);
        let scale = per_channel(input(inputs, 1)?, c, "scale")?;
        let bias = per_channel(input(inputs, 2)?, c, "B")?;
        let xv = f32_data(x)?;
        let mut y = vec![0f32; xv.len()];
        for p in 0..n * c {
            let ch = p % c;
            let xs = &xv[p * plane..(p + 1) * plane];
            let (mean, inv) = mean_inv_std(xs, eps);
            let k = inv * scale[ch];
            for (yo, &xi) in y[p * plane..(p + 1) * plane].iter_mut().zip(xs) {
                *yo = (xi - mean) * k + bias[ch];
            }
        }
        Ok(vec![from_f32(dtype, x.shape().to_vec(), y)?])
    })
}

/// `t` broadcast (numpy, unidirectional) to `shape`, flattened; `None` when it does not fit.
fn expand_to(t: &[f32], t_shape: &[usize], shape: &[usize]) -> Option<Vec<f32>> {
    if t_shape == shape {
        return Some(t.to_vec());
    }
    if t_shape.len() > shape.len() {
        // Leading 1s may be dropped.
        let extra = t_shape.len() - shape.len();
        if t_shape[..extra].iter().any(|&d| d != 1) {
            return None;
        }
        return expand_to(t, &t_shape[extra..], shape);
    }
    let off = shape.len() - t_shape.len();
    if t_shape.iter().enumerate().any(|(i, &d)| d != 1 && d != shape[off + i]) {
        return None;
    }
    let st = crate::ops::util::broadcast_strides(t_shape, shape);
    let n = numel(shape);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (mut rem, mut src) = (i, 0);
        for d in (0..shape.len()).rev() {
            src += (rem % shape[d]) * st[d];
            rem /= shape[d];
        }
        out.push(t[src]);
    }
    Some(out)
}

pub(super) fn build_layer_norm(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    let a = &ctx.attrs;
    let axis = a.int_or("axis", -1)?;
    let eps = a.float_or("epsilon", 1e-5)?;
    let stash = a.int_or("stash_type", 1)?;
    if stash != 1 {
        return Err(a
            .invalid("stash_type", format!("{stash} is not supported (only 1, f32)"))
            .into());
    }
    kernel(move |inputs| {
        let x = input(inputs, 0)?;
        let dtype = float_input(x)?;
        let ax = normalize_axis(axis, x.rank())?;
        let norm_shape = &x.shape()[ax..];
        let n = numel(norm_shape);
        let rows = numel(&x.shape()[..ax]);
        let scale_t = input(inputs, 1)?;
        let scale =
            expand_to(&f32_data(scale_t)?, scale_t.shape(), norm_shape).ok_or_else(|| {
                crate::OpError::new(format!(
                    "Scale of shape {:?} does not broadcast to the normalized shape {norm_shape:?}",
                    scale_t.shape()
                ))
            })?;
        let bias = match opt_input(inputs, 2) {
            Some(b) => Some(expand_to(&f32_data(b)?, b.shape(), norm_shape).ok_or_else(|| {
                crate::OpError::new(format!(
                    "B of shape {:?} does not broadcast to the normalized shape {norm_shape:?}",
                    b.shape()
                ))
            })?),
            None => None,
        };
        let xv = f32_data(x)?;
        let mut y = vec![0f32; xv.len()];
        let mut mean = vec![0f32; rows];
        let mut inv = vec![0f32; rows];
        layer_norm_rows(&xv, &mut y, n, &scale, bias.as_deref(), eps, Some((&mut mean, &mut inv)));
        let mut stat_shape = x.shape()[..ax].to_vec();
        stat_shape.extend(std::iter::repeat_n(1, x.rank() - ax));
        Ok(vec![
            from_f32(dtype, x.shape().to_vec(), y)?,
            from_f32(dtype, stat_shape.clone(), mean)?,
            from_f32(dtype, stat_shape, inv)?,
        ])
    })
}

pub(super) fn build_group_norm(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    let a = &ctx.attrs;
    let eps = a.float_or("epsilon", 1e-5)?;
    let groups = a.req_int("num_groups")?;
    if groups < 1 {
        return Err(a.invalid("num_groups", format!("must be positive, got {groups}")).into());
    }
    let groups = groups as usize;
    let stash = a.int_or("stash_type", 1)?;
    if stash != 1 {
        return Err(a
            .invalid("stash_type", format!("{stash} is not supported (only 1, f32)"))
            .into());
    }
    let per_channel_params = ctx.opset >= 21;
    kernel(move |inputs| {
        let x = input(inputs, 0)?;
        let dtype = float_input(x)?;
        if x.rank() < 2 {
            bail!("GroupNormalization needs an input of shape [N, C, ...], got {:?}", x.shape());
        }
        let (n, c) = (x.shape()[0], x.shape()[1]);
        if c % groups != 0 {
            bail!("num_groups {groups} does not divide the {c} channels");
        }
        let plane = numel(&x.shape()[2..]);
        let cg = c / groups;
        let scale_t = input(inputs, 1)?;
        let bias_t = input(inputs, 2)?;
        let n_params = if per_channel_params { c } else { groups };
        let scale = per_channel(scale_t, n_params, "scale")?;
        let bias = per_channel(bias_t, n_params, "bias")?;
        let xv = f32_data(x)?;
        let mut y = vec![0f32; xv.len()];
        let group_len = cg * plane;
        for b in 0..n {
            for g in 0..groups {
                let base = (b * c + g * cg) * plane;
                let xs = &xv[base..base + group_len];
                let (mean, inv) = mean_inv_std(xs, eps);
                for ci in 0..cg {
                    let pi = if per_channel_params { g * cg + ci } else { g };
                    let (s, bb) = (scale[pi] * inv, bias[pi]);
                    let o = base + ci * plane;
                    for (yo, &xi) in y[o..o + plane].iter_mut().zip(&xv[o..o + plane]) {
                        *yo = (xi - mean) * s + bb;
                    }
                }
            }
        }
        Ok(vec![from_f32(dtype, x.shape().to_vec(), y)?])
    })
}

pub(super) fn build_mvn(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    let axes = ctx.attrs.ints_or("axes", &[0, 2, 3])?;
    kernel(move |inputs| {
        let x = input(inputs, 0)?;
        let dtype = float_input(x)?;
        let shape = x.shape().to_vec();
        let r = shape.len();
        let mut reduced = vec![false; r];
        for &a in &axes {
            reduced[normalize_axis(a, r)?] = true;
        }
        // Kept coordinates index the statistics.
        let kept_shape: Vec<usize> =
            shape.iter().zip(&reduced).map(|(&d, &red)| if red { 1 } else { d }).collect();
        let kst = crate::ops::util::broadcast_strides(&kept_shape, &shape);
        let total = numel(&shape);
        let key: Vec<usize> = (0..total)
            .map(|i| {
                let (mut rem, mut k) = (i, 0);
                for d in (0..r).rev() {
                    k += (rem % shape[d]) * kst[d];
                    rem /= shape[d];
                }
                k
            })
            .collect();
        let groups = numel(&kept_shape);
        let cnt = (total / groups.max(1)).max(1) as f64;
        let xv = f32_data(x)?;
        let mut sum = vec![0f64; groups];
        for (i, &v) in xv.iter().enumerate() {
            sum[key[i]] += v as f64;
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / cnt).collect();
        let mut var = vec![0f64; groups];
        for (i, &v) in xv.iter().enumerate() {
            var[key[i]] += (v as f64 - mean[key[i]]).powi(2);
        }
        let std: Vec<f64> = var.iter().map(|v| (v / cnt).sqrt() + 1e-9).collect();
        let y: Vec<f32> = xv
            .iter()
            .enumerate()
            .map(|(i, &v)| ((v as f64 - mean[key[i]]) / std[key[i]]) as f32)
            .collect();
        Ok(vec![from_f32(dtype, shape, y)?])
    })
}

pub(super) fn build_lrn(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    let a = &ctx.attrs;
    let alpha = a.float_or("alpha", 1e-4)?;
    let beta = a.float_or("beta", 0.75)?;
    let bias = a.float_or("bias", 1.0)?;
    let size = a.req_int("size")?;
    if size < 1 {
        return Err(a.invalid("size", format!("must be positive, got {size}")).into());
    }
    let size = size as usize;
    kernel(move |inputs| {
        let x = input(inputs, 0)?;
        let dtype = float_input(x)?;
        if x.rank() < 2 {
            bail!("LRN needs an input of shape [N, C, ...], got {:?}", x.shape());
        }
        let (n, c) = (x.shape()[0], x.shape()[1]);
        let plane = numel(&x.shape()[2..]);
        let xv = f32_data(x)?;
        let before = (size - 1) / 2;
        let after = size - 1 - before;
        let mut y = vec![0f32; xv.len()];
        for b in 0..n {
            for ch in 0..c {
                let lo = ch.saturating_sub(before);
                let hi = (ch + after).min(c - 1);
                for i in 0..plane {
                    let mut sq = 0f32;
                    for cc in lo..=hi {
                        let v = xv[(b * c + cc) * plane + i];
                        sq += v * v;
                    }
                    let at = (b * c + ch) * plane + i;
                    y[at] = xv[at] / (bias + alpha / size as f32 * sq).powf(beta);
                }
            }
        }
        Ok(vec![from_f32(dtype, x.shape().to_vec(), y)?])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_broadcasts_scale() {
        assert_eq!(
            expand_to(&[1.0, 2.0], &[2], &[3, 2]).unwrap(),
            vec![1.0, 2.0, 1.0, 2.0, 1.0, 2.0]
        );
        assert!(expand_to(&[1.0, 2.0], &[2], &[3]).is_none());
    }
}
