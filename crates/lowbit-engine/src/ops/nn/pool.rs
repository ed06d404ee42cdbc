//! Pooling: `MaxPool` (with indices; int8/uint8 too; lowbit's channels-last form),
//! `AveragePool`, `LpPool`, and their global forms (`GlobalAveragePool` channels-last too).

use super::{f32_data, float_input, from_f32, kernel_attr, nc_spatial, SpatialAttrs};
use crate::bail;
use crate::error::OpResult;
use crate::op::{input, kernel, BuildCtx, Kernel};
use crate::ops::util::channels_last_attr;
use lowbit_kernels::pool::{max_pool_channels_last, pool, PoolKind};
use lowbit_tensor::tensor::numel;
use lowbit_tensor::{DType, Tensor, TensorData};

struct PoolKernel {
    spatial: SpatialAttrs,
    kernel: Vec<usize>,
    kind: PoolKind,
    storage_order: i64,
    op: &'static str,
}

fn build_pool(ctx: &BuildCtx, kind: PoolKind, op: &'static str) -> OpResult<Box<dyn Kernel>> {
    let spatial = SpatialAttrs::read(&ctx.attrs)?;
    let kernel = kernel_attr(&spatial, op)?;
    let storage_order = ctx.attrs.int_or("storage_order", 0)?;
    Ok(Box::new(PoolKernel { spatial, kernel, kind, storage_order, op }))
}

pub(super) fn build_max_pool(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    build_pool(ctx, PoolKind::Max, "MaxPool")
}

/// `ai.lowbit` `MaxPool` with `channels_last = 1`: 8-bit codes `[N, spatial..., C]` (what
/// [`crate::layout`] makes of a `MaxPool` between integer convs), one output.
struct MaxPoolChannelsLast {
    spatial: SpatialAttrs,
    kernel: Vec<usize>,
}

pub(super) fn build_max_pool_channels_last(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    if !channels_last_attr(&ctx.attrs)? {
        return Err(ctx
            .attrs
            .invalid("channels_last", "must be 1 (lowbit's MaxPool is NHWC)")
            .into());
    }
    if ctx.node.output.iter().skip(1).any(|o| !o.is_empty()) {
        bail!("the channels-last MaxPool has no Indices output");
    }
    let spatial = SpatialAttrs::read(&ctx.attrs)?;
    let kernel = kernel_attr(&spatial, "MaxPool")?;
    Ok(Box::new(MaxPoolChannelsLast { spatial, kernel }))
}

impl Kernel for MaxPoolChannelsLast {
    fn run(&self, inputs: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        let x = input(inputs, 0)?;
        let s = x.shape();
        if s.len() < 3 {
            bail!("input must be [N, spatial..., C], got {s:?}");
        }
        let (n, c) = (s[0], s[s.len() - 1]);
        let win = self.spatial.window(&s[1..s.len() - 1], &self.kernel, true)?;
        let shape: Vec<usize> = [&[n], &win.output[5 - s.len()..], &[c][..]].concat();
        let data = match x.data() {
            TensorData::U8(v) => {
                let mut y = vec![0u8; numel(&shape)];
                max_pool_channels_last(&win, n, c, v, u8::MIN, &mut y);
                TensorData::U8(y)
            }
            TensorData::I8(v) => {
                let mut y = vec![0i8; numel(&shape)];
                max_pool_channels_last(&win, n, c, v, i8::MIN, &mut y);
                TensorData::I8(y)
            }
            _ if x.dtype().is_float() => {
                // Float models' channels-last chains (the layout pass's float mode).
                let mut y = vec![0f32; numel(&shape)];
                max_pool_channels_last(&win, n, c, &f32_data(x)?, f32::NEG_INFINITY, &mut y);
                return Ok(vec![from_f32(x.dtype(), shape, y)?]);
            }
            _ => bail!(
                "the channels-last MaxPool takes uint8/int8 codes or floats, got {}",
                x.dtype()
            ),
        };
        Ok(vec![Tensor::new(shape, data)?])
    }
}

pub(super) fn build_average_pool(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    let cip = ctx.attrs.int_or("count_include_pad", 0)? != 0;
    build_pool(ctx, PoolKind::Average { count_include_pad: cip }, "AveragePool")
}

pub(super) fn build_lp_pool(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    let p = ctx.attrs.int_or("p", 2)?;
    if p < 1 {
        return Err(ctx.attrs.invalid("p", format!("must be positive, got {p}")).into());
    }
    build_pool(ctx, PoolKind::Lp(p as f32), "LpPool")
}

/// Converts within-plane row-major positions to column-major ones (`storage_order = 1`).
fn column_major_index(flat: i64, plane: usize, dims: &[usize]) -> i64 {
    let p = flat as usize / plane;
    let mut rem = flat as usize % plane;
    let mut coords = vec![0; dims.len()];
    for d in (0..dims.len()).rev() {
        coords[d] = rem % dims[d];
        rem /= dims[d];
    }
    let mut idx = 0;
    let mut stride = 1;
    for d in 0..dims.len() {
        idx += coords[d] * stride;
        stride *= dims[d];
    }
    (p * plane + idx) as i64
}

impl Kernel for PoolKernel {
    fn run(&self, inputs: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        let x = input(inputs, 0)?;
        let dtype = x.dtype();
        let int_ok = self.kind == PoolKind::Max && matches!(dtype, DType::I8 | DType::U8);
        if !int_ok {
            float_input(x)?;
        }
        let (n, c, in_sp) = nc_spatial(x)?;
        let win = self.spatial.window(&in_sp, &self.kernel, true)?;
        let xv = f32_data(x)?;
        let mut shape = vec![n, c];
        shape.extend(&win.output[3 - in_sp.len()..]);
        let total = numel(&shape);
        let mut y = vec![0f32; total];
        let want_idx = self.kind == PoolKind::Max;
        let mut idx = if want_idx { vec![0i64; total] } else { Vec::new() };
        pool(self.kind, &win, n * c, &xv, &mut y, want_idx.then_some(&mut idx[..]));
        let yt = from_f32(dtype, shape.clone(), y)?;
        if !want_idx {
            return Ok(vec![yt]);
        }
        if self.storage_order == 1 {
            let plane = numel(&in_sp);
            idx.iter_mut().for_each(|i| *i = column_major_index(*i, plane, &in_sp));
        }
        let _ = self.op;
        Ok(vec![yt, Tensor::from_vec(shape, idx)?])
    }
}

#[derive(Clone, Copy)]
enum GlobalKind {
    Average,
    Max,
    Lp(f32),
}

fn global_pool(x: &Tensor, kind: GlobalKind) -> OpResult<Tensor> {
    let dtype = float_input(x)?;
    let (n, c, sp) = nc_spatial(x)?;
    let plane = numel(&sp);
    let xv = f32_data(x)?;
    let y: Vec<f32> = (0..n * c)
        .map(|i| {
            let p = &xv[i * plane..(i + 1) * plane];
            match kind {
                GlobalKind::Average => {
                    (p.iter().map(|&v| v as f64).sum::<f64>() / plane.max(1) as f64) as f32
                }
                GlobalKind::Max => p.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                GlobalKind::Lp(e) => {
                    let s: f64 = p.iter().map(|&v| (v.abs() as f64).powf(e as f64)).sum();
                    s.powf(1.0 / e as f64) as f32
                }
            }
        })
        .collect();
    let mut shape = vec![n, c];
    shape.extend(std::iter::repeat_n(1, sp.len()));
    from_f32(dtype, shape, y)
}

pub(super) fn build_global_average_pool(_ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    kernel(|i| Ok(vec![global_pool(input(i, 0)?, GlobalKind::Average)?]))
}

/// `ai.lowbit` `GlobalAveragePool` with `channels_last = 1`: a float `[N, spatial..., C]` to
/// `[N, 1..., C]` (the layout pass's float mode: the mean of each channel's pixels, summed as
/// rows of channels).
pub(super) fn build_global_average_pool_channels_last(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    if !channels_last_attr(&ctx.attrs)? {
        let msg = "must be 1 (lowbit's GlobalAveragePool is NHWC)";
        return Err(ctx.attrs.invalid("channels_last", msg).into());
    }
    kernel(|i| {
        let x = input(i, 0)?;
        let dtype = float_input(x)?;
        let s = x.shape();
        if s.len() < 3 {
            bail!("input must be [N, spatial..., C], got {s:?}");
        }
        let (n, c) = (s[0], s[s.len() - 1]);
        let pixels = numel(&s[1..s.len() - 1]);
        let xv = f32_data(x)?;
        let mut y = vec![0f32; n * c];
        for (img, out) in xv.chunks_exact((pixels * c).max(1)).zip(y.chunks_exact_mut(c.max(1))) {
            for px in img.chunks_exact(c) {
                out.iter_mut().zip(px).for_each(|(o, &v)| *o += v);
            }
            out.iter_mut().for_each(|o| *o /= pixels as f32);
        }
        let mut shape = vec![1; s.len()];
        (shape[0], shape[s.len() - 1]) = (n, c);
        Ok(vec![from_f32(dtype, shape, y)?])
    })
}

pub(super) fn build_global_max_pool(_ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    kernel(|i| Ok(vec![global_pool(input(i, 0)?, GlobalKind::Max)?]))
}

pub(super) fn build_global_lp_pool(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    let p = ctx.attrs.int_or("p", 2)?;
    if p < 1 {
        return Err(ctx.attrs.invalid("p", format!("must be positive, got {p}")).into());
    }
    kernel(move |i| Ok(vec![global_pool(input(i, 0)?, GlobalKind::Lp(p as f32))?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_major_indices() {
        // 2x3 plane: row-major 4 is (1, 1) -> column-major 1 + 1 * 2 = 3.
        assert_eq!(column_major_index(4, 6, &[2, 3]), 3);
        assert_eq!(column_major_index(6 + 2, 6, &[2, 3]), 6 + 4);
    }
}
