//! The softmax family: `Softmax`, `LogSoftmax`, `Hardmax` (along one axis from opset 13; on the
//! input flattened to 2-D at `axis` before).

use super::{f32_data, float_input, from_f32};
use crate::error::OpResult;
use crate::op::{input, kernel, BuildCtx, Kernel};
use crate::ops::util::normalize_axis;
use lowbit_kernels::norm::{log_softmax_rows, softmax_rows};
use lowbit_tensor::tensor::numel;

#[derive(Clone, Copy, PartialEq)]
enum SoftKind {
    Softmax,
    LogSoftmax,
    Hardmax,
}

fn hardmax_rows(x: &mut [f32], n: usize) {
    if n == 0 {
        return;
    }
    for row in x.chunks_exact_mut(n) {
        let mut best = 0;
        for (i, &v) in row.iter().enumerate() {
            if v > row[best] {
                best = i;
            }
        }
        row.fill(0.0);
        row[best] = 1.0;
    }
}

fn apply_rows(kind: SoftKind, x: &mut [f32], n: usize) {
    match kind {
        SoftKind::Softmax => softmax_rows(x, n),
        SoftKind::LogSoftmax => log_softmax_rows(x, n),
        SoftKind::Hardmax => hardmax_rows(x, n),
    }
}

fn build_soft(ctx: &BuildCtx, kind: SoftKind) -> OpResult<Box<dyn Kernel>> {
    let legacy = ctx.opset < 13;
    let axis = ctx.attrs.int_or("axis", if legacy { 1 } else { -1 })?;
    kernel(move |inputs| {
        let x = input(inputs, 0)?;
        let dtype = float_input(x)?;
        let shape = x.shape().to_vec();
        let mut v = f32_data(x)?.into_owned();
        if shape.is_empty() {
            apply_rows(kind, &mut v, 1);
            return Ok(vec![from_f32(dtype, shape, v)?]);
        }
        let ax = normalize_axis(axis, shape.len())?;
        let (n, inner) =
            if legacy { (numel(&shape[ax..]), 1) } else { (shape[ax], numel(&shape[ax + 1..])) };
        if inner == 1 {
            apply_rows(kind, &mut v, n);
        } else if n > 0 {
            let mut buf = vec![0f32; n];
            let outer = v.len() / (n * inner);
            for o in 0..outer {
                for i in 0..inner {
                    let base = o * n * inner + i;
                    for j in 0..n {
                        buf[j] = v[base + j * inner];
                    }
                    apply_rows(kind, &mut buf, n);
                    for j in 0..n {
                        v[base + j * inner] = buf[j];
                    }
                }
            }
        }
        Ok(vec![from_f32(dtype, shape, v)?])
    })
}

pub(super) fn build_softmax(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    build_soft(ctx, SoftKind::Softmax)
}

pub(super) fn build_log_softmax(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    build_soft(ctx, SoftKind::LogSoftmax)
}

pub(super) fn build_hardmax(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    build_soft(ctx, SoftKind::Hardmax)
}
