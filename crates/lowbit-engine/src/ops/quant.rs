//! Quantization ops: `QuantizeLinear`, `DequantizeLinear`, `DynamicQuantizeLinear`, and the
//! integer products `MatMulInteger`, `QLinearMatMul`, `ConvInteger`, `QLinearConv`.
//!
//! The formulas live in [`lowbit_kernels::quantize`] (round half to even, saturation, the
//! per-tensor / per-axis / blocked parameter layouts); this file only reads ONNX's inputs and
//! attributes (opset 10 → 21 semantics: `axis`, `block_size`, `saturate`, `output_dtype`, a
//! uint8 default when no zero point is given) and shapes the results. Half-precision inputs and
//! scales are widened to f32 and results rounded once, as ONNX Runtime does.
//!
//! Integer products accumulate `(a - a_zero_point) * (b - b_zero_point)` exactly in i32;
//! `QLinear*` requantize with `multiplier = a_scale * b_scale / y_scale` in f32. Convolutions
//! are direct loops over the [`Window`] geometry (padding contributes zero after the zero point
//! is subtracted). These are the reference semantics: [`crate::ops::qlinear`] runs the same ops
//! on the packed int8 kernels when operands allow, and falls back to these builders.

use crate::bail;
use crate::error::{OpError, OpResult};
use crate::op::{input, kernel, opt_input, BuildCtx, KernelResult};
use crate::ops::nn::SpatialAttrs;
use crate::ops::util::{broadcast_shapes, broadcast_strides};
use crate::registry::Registry;
use lowbit_kernels::quantize::{
    dequantize, dynamic_qparams_u8, int_range, int_values, min_max, quantize, quantize_bytes,
    requantize_multipliers, requantize_one, ParamMap,
};
use lowbit_kernels::window::Window;
use lowbit_onnx::attr::Attrs;
use lowbit_tensor::tensor::numel;
use lowbit_tensor::{DType, Tensor, TensorData};

fn qerr(e: lowbit_kernels::quantize::QuantizeError) -> OpError {
    OpError::new(e.0)
}

fn floats(t: &Tensor) -> OpResult<std::borrow::Cow<'_, [f32]>> {
    match t.data() {
        TensorData::F32(v) => Ok(std::borrow::Cow::Borrowed(v)),
        TensorData::String(_) => bail!("expected numbers, got strings"),
        _ => Ok(std::borrow::Cow::Owned(t.to_f32_vec()?)),
    }
}

/// How `scale` (and its zero point) map onto `x`: per tensor, per axis, or blocked (the
/// core's reading of ONNX's rules).
fn param_map(x: &[usize], scale: &Tensor, axis: i64, block: i64) -> OpResult<ParamMap> {
    ParamMap::for_qdq(x, scale.shape(), axis, block).map_err(qerr)
}

fn dtype_attr(a: &Attrs, name: &str) -> OpResult<Option<DType>> {
    match a.int(name)? {
        None | Some(0) => Ok(None),
        Some(id) => Ok(Some(
            DType::from_onnx(id as i32)
                .ok_or_else(|| OpError::new(format!("{name} {id} is not a supported type")))?,
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear

fn build_quantize_linear(ctx: &BuildCtx) -> KernelResult {
    let axis = if ctx.opset >= 13 { ctx.attrs.int_or("axis", 1)? } else { 1 };
    let block = ctx.attrs.int_or("block_size", 0)?;
    let saturate = ctx.attrs.int_or("saturate", 1)? != 0;
    let out_dtype = dtype_attr(&ctx.attrs, "output_dtype")?;
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let scale = input(ins, 1)?;
        let zp = opt_input(ins, 2);
        let dtype = match (out_dtype, zp) {
            (Some(d), _) => d,
            (None, Some(z)) => z.dtype(),
            (None, None) => DType::U8,
        };
        if let (Some(z), Some(d)) = (zp, out_dtype) {
            if z.dtype() != d {
                bail!("zero point is {} but output_dtype is {d}", z.dtype());
            }
        }
        let map = param_map(x.shape(), scale, axis, block)?;
        let xv = floats(x)?;
        let sv = floats(scale)?;
        let q = quantize(&xv, &sv, zp.map(|z| z.data()), &map, dtype, saturate).map_err(qerr)?;
        Ok(vec![Tensor::new(x.shape().to_vec(), q)?])
    })
}

fn build_dequantize_linear(ctx: &BuildCtx) -> KernelResult {
    let axis = if ctx.opset >= 13 { ctx.attrs.int_or("axis", 1)? } else { 1 };
    let block = ctx.attrs.int_or("block_size", 0)?;
    let out_dtype = dtype_attr(&ctx.attrs, "output_dtype")?;
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let scale = input(ins, 1)?;
        let zp = opt_input(ins, 2);
        let map = param_map(x.shape(), scale, axis, block)?;
        let sv = floats(scale)?;
        let y = dequantize(x.data(), &sv, zp.map(|z| z.data()), &map).map_err(qerr)?;
        let y = Tensor::from_vec(x.shape().to_vec(), y)?;
        let dt = out_dtype.unwrap_or(scale.dtype());
        Ok(vec![if dt == DType::F32 { y } else { y.cast(dt)? }])
    })
}

fn build_dynamic_quantize_linear(_ctx: &BuildCtx) -> KernelResult {
    kernel(|ins| {
        let x = input(ins, 0)?;
        let xv = x.as_f32()?;
        let (lo, hi) = min_max(xv);
        let (scale, zp) = dynamic_qparams_u8(lo.min(0.0), hi.max(0.0));
        let mut q = vec![0u8; xv.len()];
        quantize_bytes(xv, scale, zp as i32, 0, 255, &mut q);
        Ok(vec![
            Tensor::from_vec(x.shape().to_vec(), q)?,
            Tensor::scalar(scale),
            Tensor::scalar(zp),
        ])
    })
}

// ---------------------------------------------------------------------------------------------
// Integer matrix products

/// Values of an 8-bit operand minus its zero point. `zp` may be a scalar, or one value per
/// `group` (row of A / column of B) as selected by `which`.
fn centered(
    t: &Tensor,
    zp: Option<&Tensor>,
    which: impl Fn(usize, usize) -> usize,
) -> OpResult<Vec<i32>> {
    let v = int_values(t.data())
        .ok_or_else(|| OpError::new(format!("{} is not an integer type", t.dtype())))?;
    let Some(z) = zp else { return Ok(v) };
    if z.dtype() != t.dtype() {
        bail!("zero point is {}, its input is {}", z.dtype(), t.dtype());
    }
    let zv = int_values(z.data()).ok_or_else(|| OpError::new("bad zero point"))?;
    if zv.len() == 1 {
        return Ok(v.iter().map(|&x| x - zv[0]).collect());
    }
    let mut out = Vec::with_capacity(v.len());
    for (i, &x) in v.iter().enumerate() {
        let p = which(i, zv.len());
        let Some(&zz) = zv.get(p) else { bail!("zero point of {} values does not fit", zv.len()) };
        out.push(x - zz);
    }
    Ok(out)
}

/// `[.., M, K] x [.., K, N]` with numpy batch broadcasting and ONNX's 1-D promotion rules.
struct MatDims {
    m: usize,
    k: usize,
    n: usize,
    a_shape: Vec<usize>,
    b_shape: Vec<usize>,
    out_shape: Vec<usize>,
}

fn mat_dims(a: &[usize], b: &[usize]) -> OpResult<MatDims> {
    if a.is_empty() || b.is_empty() {
        bail!("matmul inputs must have rank >= 1");
    }
    let a2: Vec<usize> = if a.len() == 1 { vec![1, a[0]] } else { a.to_vec() };
    let b2: Vec<usize> = if b.len() == 1 { vec![b[0], 1] } else { b.to_vec() };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != k2 {
        bail!("cannot multiply {a:?} by {b:?}");
    }
    let batch = broadcast_shapes(&a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
    let mut out_shape = batch;
    if a.len() > 1 {
        out_shape.push(m);
    }
    if b.len() > 1 {
        out_shape.push(n);
    }
    Ok(MatDims { m, k, n, a_shape: a2, b_shape: b2, out_shape })
}

/// Exact i32 batched product of centered operands.
fn matmul_i32(d: &MatDims, a: &[i32], b: &[i32]) -> Vec<i32> {
    let (m, k, n) = (d.m, d.k, d.n);
    let ab = &d.a_shape[..d.a_shape.len() - 2];
    let bb = &d.b_shape[..d.b_shape.len() - 2];
    let batch = broadcast_shapes(ab, bb).unwrap_or_default();
    // Strides in units of whole matrices.
    let mat_strides = |s: &[usize]| -> Vec<usize> {
        let counts: Vec<usize> = s.to_vec();
        broadcast_strides(&counts, &batch)
    };
    let sa = mat_strides(ab);
    let sb = mat_strides(bb);
    let nb = numel(&batch);
    let mut out = vec![0i32; nb * m * n];
    for bi in 0..nb {
        let (mut oa, mut ob, mut rem) = (0, 0, bi);
        for d in (0..batch.len()).rev() {
            let c = rem % batch[d];
            rem /= batch[d];
            oa += c * sa[d];
            ob += c * sb[d];
        }
        let am = &a[oa * m * k..(oa + 1) * m * k];
        let bm = &b[ob * k * n..(ob + 1) * k * n];
        let om = &mut out[bi * m * n..(bi + 1) * m * n];
        for i in 0..m {
            let row = &mut om[i * n..(i + 1) * n];
            for p in 0..k {
                let av = am[i * k + p];
                if av == 0 {
                    continue;
                }
                let brow = &bm[p * n..(p + 1) * n];
                for (o, &bv) in row.iter_mut().zip(brow) {
                    *o = o.wrapping_add(av.wrapping_mul(bv));
                }
            }
        }
    }
    out
}

/// Centers A (per-row zero points allowed) and B (per-column zero points allowed).
fn centered_operands(
    d: &MatDims,
    a: &Tensor,
    a_zp: Option<&Tensor>,
    b: &Tensor,
    b_zp: Option<&Tensor>,
) -> OpResult<(Vec<i32>, Vec<i32>)> {
    let (m, k, n) = (d.m, d.k, d.n);
    let av = centered(
        a,
        a_zp,
        |i, len| if len == m { (i / k.max(1)) % m.max(1) } else { i / k.max(1) },
    )?;
    let bv = centered(b, b_zp, |i, len| {
        if len == n {
            i % n.max(1)
        } else {
            (i / (k * n).max(1)) * n + i % n.max(1)
        }
    })?;
    Ok((av, bv))
}

pub(crate) fn build_matmul_integer(_ctx: &BuildCtx) -> KernelResult {
    kernel(|ins| {
        let a = input(ins, 0)?;
        let b = input(ins, 1)?;
        let d = mat_dims(a.shape(), b.shape())?;
        let (av, bv) = centered_operands(&d, a, opt_input(ins, 2), b, opt_input(ins, 3))?;
        let y = matmul_i32(&d, &av, &bv);
        Ok(vec![Tensor::from_vec(d.out_shape, y)?])
    })
}

/// One scale value, or one per output column/channel.
fn scale_values(t: &Tensor, what: &str, per: usize) -> OpResult<Vec<f32>> {
    let v = floats(t)?;
    if v.len() != 1 && v.len() != per {
        bail!("{what} has {} values, expected 1 or {per}", v.len());
    }
    Ok(v.into_owned())
}

/// `y_zero_point`'s value and the output type's range (uint8 when absent).
fn output_qparams(y_zp: Option<&Tensor>) -> OpResult<(DType, i32, i32, i32)> {
    let dt = y_zp.map(|z| z.dtype()).unwrap_or(DType::U8);
    let (qmin, qmax) =
        int_range(dt).ok_or_else(|| OpError::new(format!("cannot requantize to {dt}")))?;
    let zp = match y_zp {
        Some(z) => {
            let v = int_values(z.data()).ok_or_else(|| OpError::new("bad y_zero_point"))?;
            if v.len() != 1 {
                bail!("y_zero_point must be a scalar");
            }
            v[0]
        }
        None => 0,
    };
    Ok((dt, zp, qmin, qmax))
}

fn wrap_q(dt: DType, shape: Vec<usize>, q: Vec<i32>) -> OpResult<Tensor> {
    let data = match dt {
        DType::U8 => TensorData::U8(q.into_iter().map(|v| v as u8).collect()),
        DType::I8 => TensorData::I8(q.into_iter().map(|v| v as i8).collect()),
        DType::U16 => TensorData::U16(q.into_iter().map(|v| v as u16).collect()),
        DType::I16 => TensorData::I16(q.into_iter().map(|v| v as i16).collect()),
        DType::I32 => TensorData::I32(q),
        _ => bail!("cannot requantize to {dt}"),
    };
    Ok(Tensor::new(shape, data)?)
}

/// The reference `QLinearMatMul` (any 8/16-bit types, per-row and per-column parameters).
pub(crate) fn qlinear_matmul(ins: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
    {
        let a = input(ins, 0)?;
        let b = input(ins, 3)?;
        let d = mat_dims(a.shape(), b.shape())?;
        let (av, bv) = centered_operands(&d, a, opt_input(ins, 2), b, opt_input(ins, 5))?;
        let acc = matmul_i32(&d, &av, &bv);
        let a_scale = scale_values(input(ins, 1)?, "a_scale", 1)?[0];
        let b_scale = scale_values(input(ins, 4)?, "b_scale", d.n)?;
        let y_scale = scale_values(input(ins, 6)?, "y_scale", 1)?[0];
        let mult = requantize_multipliers(a_scale, &b_scale, y_scale);
        let (dt, zp, qmin, qmax) = output_qparams(opt_input(ins, 7))?;
        let n = d.n.max(1);
        let q: Vec<i32> = acc
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                requantize_one(v, mult[if mult.len() == 1 { 0 } else { i % n }], zp, qmin, qmax)
            })
            .collect();
        Ok(vec![wrap_q(dt, d.out_shape, q)?])
    }
}

// ---------------------------------------------------------------------------------------------
// Integer convolutions

/// Conv attributes, read once. The window geometry (auto_pad, pads, strides, dilations) is
/// the float Conv's, from `nn`.
#[derive(Clone)]
pub(crate) struct ConvAttrs {
    spatial: SpatialAttrs,
    pub(crate) group: usize,
}

impl ConvAttrs {
    pub(crate) fn read(a: &Attrs) -> OpResult<ConvAttrs> {
        let group = a.int_or("group", 1)?;
        if group < 1 {
            bail!("group must be positive, got {group}");
        }
        Ok(ConvAttrs { spatial: SpatialAttrs::read(a)?, group: group as usize })
    }

    pub(crate) fn window(&self, input: &[usize], kernel: &[usize]) -> OpResult<Window> {
        if let Some(k) = &self.spatial.kernel {
            if k.iter().map(|&v| v as usize).ne(kernel.iter().copied()) {
                bail!("kernel_shape {k:?} does not match the weights' {kernel:?}");
            }
        }
        self.spatial.window(input, kernel, false)
    }
}

/// Output shape and exact i32 accumulators of a grouped convolution over centered operands.
fn conv_i32(
    attrs: &ConvAttrs,
    xs: &[usize],
    x: &[i32],
    ws: &[usize],
    w: &[i32],
) -> OpResult<(Vec<usize>, Vec<i32>)> {
    if xs.len() < 3 || ws.len() != xs.len() {
        bail!("input {xs:?} and weights {ws:?} must be [N, C, spatial...] of one rank");
    }
    let (batch, c_in, c_out) = (xs[0], xs[1], ws[0]);
    let g = attrs.group;
    if c_in % g != 0 || c_out % g != 0 || ws[1] * g != c_in {
        bail!("input {xs:?}, weights {ws:?} and group {g} disagree on channels");
    }
    let win = attrs.window(&xs[2..], &ws[2..])?;
    let [od, oh, ow] = win.output;
    let [id, ih, iw] = win.input;
    let [kd, kh, kw] = win.kernel;
    let (cg_in, cg_out) = (c_in / g, c_out / g);
    let mut y = vec![0i32; batch * c_out * od * oh * ow];
    let mut yi = 0;
    for nb in 0..batch {
        for co in 0..c_out {
            let grp = co / cg_out;
            for oz in 0..od {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0i32;
                        for ci in 0..cg_in {
                            let c = grp * cg_in + ci;
                            for kz in 0..kd {
                                let iz = (oz * win.strides[0]) as isize + win.tap_offset(0, kz);
                                if !(0..id as isize).contains(&iz) {
                                    continue;
                                }
                                for ky in 0..kh {
                                    let iy = (oy * win.strides[1]) as isize + win.tap_offset(1, ky);
                                    if !(0..ih as isize).contains(&iy) {
                                        continue;
                                    }
                                    let xrow =
                                        ((nb * c_in + c) * id + iz as usize) * ih + iy as usize;
                                    let wrow = ((co * cg_in + ci) * kd + kz) * kh + ky;
                                    for kx in 0..kw {
                                        let ix =
                                            (ox * win.strides[2]) as isize + win.tap_offset(2, kx);
                                        if !(0..iw as isize).contains(&ix) {
                                            continue;
                                        }
                                        acc = acc.wrapping_add(
                                            x[xrow * iw + ix as usize]
                                                .wrapping_mul(w[wrow * kw + kx]),
                                        );
                                    }
                                }
                            }
                        }
                        y[yi] = acc;
                        yi += 1;
                    }
                }
            }
        }
    }
    let mut shape = vec![batch, c_out];
    shape.extend_from_slice(&win.output[3 - (xs.len() - 2)..]);
    Ok((shape, y))
}

/// Centered weights: `w_zp` is a scalar or one value per output channel.
fn centered_weights(w: &Tensor, w_zp: Option<&Tensor>) -> OpResult<Vec<i32>> {
    let per = numel(&w.shape()[1..]).max(1);
    centered(w, w_zp, |i, _| i / per)
}

fn centered_input(x: &Tensor, x_zp: Option<&Tensor>) -> OpResult<Vec<i32>> {
    if let Some(z) = x_zp {
        if z.len() != 1 {
            bail!("x_zero_point must be a scalar");
        }
    }
    centered(x, x_zp, |_, _| 0)
}

pub(crate) fn build_conv_integer(ctx: &BuildCtx) -> KernelResult {
    let attrs = ConvAttrs::read(&ctx.attrs)?;
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let w = input(ins, 1)?;
        let xv = centered_input(x, opt_input(ins, 2))?;
        let wv = centered_weights(w, opt_input(ins, 3))?;
        let (shape, y) = conv_i32(&attrs, x.shape(), &xv, w.shape(), &wv)?;
        Ok(vec![Tensor::from_vec(shape, y)?])
    })
}

pub(crate) fn build_qlinear_conv(ctx: &BuildCtx) -> KernelResult {
    let attrs = ConvAttrs::read(&ctx.attrs)?;
    kernel(move |ins| {
        let x = input(ins, 0)?;
        let w = input(ins, 3)?;
        let xv = centered_input(x, opt_input(ins, 2))?;
        let wv = centered_weights(w, opt_input(ins, 5))?;
        let (shape, mut acc) = conv_i32(&attrs, x.shape(), &xv, w.shape(), &wv)?;
        let c_out = shape[1];
        let plane = numel(&shape[2..]);
        if let Some(b) = opt_input(ins, 8) {
            let bv = b.as_slice::<i32>()?;
            if bv.len() != c_out {
                bail!("bias has {} values, expected {c_out}", bv.len());
            }
            for (i, v) in acc.iter_mut().enumerate() {
                *v = v.wrapping_add(bv[(i / plane.max(1)) % c_out]);
            }
        }
        let x_scale = scale_values(input(ins, 1)?, "x_scale", 1)?[0];
        let w_scale = scale_values(input(ins, 4)?, "w_scale", c_out)?;
        let y_scale = scale_values(input(ins, 6)?, "y_scale", 1)?[0];
        let mult = requantize_multipliers(x_scale, &w_scale, y_scale);
        let (dt, zp, qmin, qmax) = output_qparams(opt_input(ins, 7))?;
        let q: Vec<i32> = acc
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let m = if mult.len() == 1 { mult[0] } else { mult[(i / plane.max(1)) % c_out] };
                requantize_one(v, m, zp, qmin, qmax)
            })
            .collect();
        Ok(vec![wrap_q(dt, shape, q)?])
    })
}

pub fn register(reg: &mut Registry) {
    reg.register("", "QuantizeLinear", build_quantize_linear);
    reg.register("", "DequantizeLinear", build_dequantize_linear);
    reg.register("", "DynamicQuantizeLinear", build_dynamic_quantize_linear);
    // The integer products register in `qlinear` (fast kernels, falling back to the builders
    // here).
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::nn::AutoPad;

    #[test]
    fn matmul_integer_subtracts_zero_points() {
        let a = Tensor::from_vec(vec![2, 2], vec![3u8, 4, 5, 6]).unwrap();
        let b = Tensor::from_vec(vec![2, 1], vec![1u8, 2]).unwrap();
        let azp = Tensor::scalar(1u8);
        let d = mat_dims(a.shape(), b.shape()).unwrap();
        let (av, bv) = centered_operands(&d, &a, Some(&azp), &b, None).unwrap();
        assert_eq!(matmul_i32(&d, &av, &bv), vec![2 + 6, 4 + 10]);
    }

    #[test]
    fn conv_integer_pads_with_the_zero_point() {
        let attrs = ConvAttrs {
            spatial: SpatialAttrs {
                auto_pad: AutoPad::NotSet,
                kernel: None,
                strides: None,
                dilations: None,
                pads: Some(vec![1, 1, 1, 1]),
                ceil_mode: false,
            },
            group: 1,
        };
        // 1x1x1x1 input of value 1, 3x3 all-ones weights, pad 1: one output = 1.
        let (shape, y) = conv_i32(&attrs, &[1, 1, 1, 1], &[1], &[1, 1, 3, 3], &[1; 9]).unwrap();
        assert_eq!(shape, vec![1, 1, 1, 1]);
        assert_eq!(y, vec![1]);
    }
}
