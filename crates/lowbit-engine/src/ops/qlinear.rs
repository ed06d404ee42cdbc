//! Integer ops on the fast kernels: `QLinearConv`, `ConvInteger`, `QLinearMatMul`,
//! `MatMulInteger`, and the `com.microsoft` ops ONNX Runtime's quantizer (and lowbit's load-time
//! fusion, [`crate::fuse`]) emit: `QGemm`, `MatMulIntegerToFloat`, `QLinearAdd`, `QLinearMul`,
//! `QLinearGlobalAveragePool`, plus lowbit's `QLinearLookup` (any elementwise function of one
//! 8-bit tensor as a 256-entry table).
//!
//! Builders check at load time whether the fast path applies: 8-bit operands, constant weights
//! (packed once into [`PackedI8`] / [`PackedConv`]), constant scales and zero points, per-tensor
//! activations. Anything else (16-bit types, per-row activation zero points, runtime scales)
//! runs the reference loops in [`crate::ops::quant`], which define the semantics. Activations
//! in int8 are shifted to uint8 (`x + 128`, zero point + 128) since the kernels take u8 × i8;
//! uint8 weights are shifted to int8 (`w - 128`) the other way. Both shifts are exact.

use crate::bail;
use crate::error::{OpError, OpResult};
use crate::op::{input, opt_input, BuildCtx, Kernel, KernelResult};
use crate::ops::quant::{self as reference, ConvAttrs};
use crate::ops::util::{broadcast_shapes, channels_last_attr};
use crate::registry::Registry;
use lowbit_kernels::cpu::Isa;
use lowbit_kernels::gemm::Trans;
use lowbit_kernels::qconv::{qconv, ConvStage, Layout, PackedConv};
use lowbit_kernels::qgemm::{qgemm, Output, PackedI8, Stage};
use lowbit_kernels::quantize::{dequantize_one, int_range, quantize_bytes};
use lowbit_tensor::tensor::numel;
use lowbit_tensor::{DType, Tensor, TensorData};
use std::borrow::Cow;

// ---------------------------------------------------------------------------------------------
// Reading constant parameters

/// The values of a constant float tensor (scales).
fn const_floats(t: Option<&Tensor>) -> Option<Vec<f32>> {
    let t = t?;
    match t.data() {
        TensorData::F32(v) => Some(v.clone()),
        TensorData::F16(_) | TensorData::BF16(_) => t.to_f32_vec().ok(),
        _ => None,
    }
}

/// A constant 8-bit zero point's values and type; absent means uint8 zero.
fn const_zero_points(t: Option<&Tensor>) -> Option<(DType, Vec<i32>)> {
    match t {
        None => Some((DType::U8, vec![0])),
        Some(t) => match t.data() {
            TensorData::U8(v) => Some((DType::U8, v.iter().map(|&x| x as i32).collect())),
            TensorData::I8(v) => Some((DType::I8, v.iter().map(|&x| x as i32).collect())),
            _ => None,
        },
    }
}

/// 8-bit weights as i8 with their zero points (uint8 shifted by -128, exactly).
fn weights_i8(t: &Tensor, zps: &[i32]) -> Option<(Vec<i8>, Vec<i32>)> {
    match t.data() {
        TensorData::I8(v) => Some((v.clone(), zps.to_vec())),
        TensorData::U8(v) => Some((
            v.iter().map(|&x| (x as i32 - 128) as i8).collect(),
            zps.iter().map(|&z| z - 128).collect(),
        )),
        _ => None,
    }
}

/// An 8-bit activation as u8 with its zero point (int8 shifted by +128, exactly).
fn activation_u8<'t>(t: &'t Tensor, zp: i32) -> OpResult<(Cow<'t, [u8]>, i32)> {
    match t.data() {
        TensorData::U8(v) => Ok((Cow::Borrowed(v.as_slice()), zp)),
        TensorData::I8(v) => {
            Ok((Cow::Owned(v.iter().map(|&x| (x as u8) ^ 0x80).collect()), zp + 128))
        }
        _ => bail!("expected a uint8 or int8 input, got {}", t.dtype()),
    }
}

/// A runtime zero point: a one-value 8-bit tensor of the activation's type (or none: 0).
fn runtime_zero_point(zp: Option<&Tensor>, of: &Tensor) -> OpResult<i32> {
    let Some(z) = zp else { return Ok(0) };
    if z.len() != 1 {
        bail!("the fast path takes one activation zero point, got {}", z.len());
    }
    if z.dtype() != of.dtype() {
        bail!("zero point is {}, its input is {}", z.dtype(), of.dtype());
    }
    Ok(match z.data() {
        TensorData::U8(v) => v[0] as i32,
        TensorData::I8(v) => v[0] as i32,
        _ => bail!("zero point must be uint8 or int8, got {}", z.dtype()),
    })
}

/// Output type, zero point and range of a requantizing op.
struct OutQ {
    dtype: DType,
    zero_point: i32,
    qmin: i32,
    qmax: i32,
}

fn out_q(zps: (DType, Vec<i32>)) -> Option<OutQ> {
    let (dtype, z) = zps;
    if z.len() != 1 {
        return None;
    }
    let (qmin, qmax) = int_range(dtype)?;
    Some(OutQ { dtype, zero_point: z[0], qmin, qmax })
}

impl OutQ {
    /// Intersects the range with `[lo, hi]`; `false` (unchanged) when they do not meet.
    fn clamp(&mut self, lo: i32, hi: i32) -> bool {
        let (a, b) = (self.qmin.max(lo), self.qmax.min(hi));
        if a > b {
            return false;
        }
        (self.qmin, self.qmax) = (a, b);
        true
    }
}

/// Bytes from the requantizing kernels as a tensor of the output type.
fn wrap_bytes(dtype: DType, shape: Vec<usize>, q: Vec<u8>) -> OpResult<Tensor> {
    Ok(match dtype {
        DType::I8 => Tensor::from_vec(shape, q.into_iter().map(|v| v as i8).collect::<Vec<_>>())?,
        _ => Tensor::from_vec(shape, q)?,
    })
}

use lowbit_kernels::quantize::requantize_multipliers as multipliers;

fn finite(v: &[f32], what: &str) -> OpResult<()> {
    if v.iter().any(|s| !s.is_finite()) {
        bail!("{what} is not finite");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Convolutions

struct FastConv {
    attrs: ConvAttrs,
    kernel_shape: Vec<usize>,
    w: PackedConv,
    /// Requantizing conv: bias, multipliers, output params; `None` for `ConvInteger`.
    requant: Option<(Option<Vec<i32>>, Vec<f32>, OutQ)>,
    /// The input's zero point when constant (`QLinearConv`); `ConvInteger` reads input 2.
    x_zp: Option<i32>,
    x_dtype: Option<DType>,
    /// `ChannelsLast`: input and output are `[N, spatial..., C]` (lowbit's `channels_last`).
    layout: Layout,
}

impl Kernel for FastConv {
    fn clamp_output(&mut self, lo: i32, hi: i32) -> bool {
        self.requant.as_mut().is_some_and(|(_, _, q)| q.clamp(lo, hi))
    }

    fn run(&self, ins: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        let x = input(ins, 0)?;
        let xs = x.shape();
        if xs.len() != self.kernel_shape.len() + 2 {
            bail!("input {xs:?} and weights of {}-D kernel disagree", self.kernel_shape.len());
        }
        if let Some(dt) = self.x_dtype {
            if x.dtype() != dt {
                bail!("input is {}, its zero point is {dt}", x.dtype());
            }
        }
        let last = self.layout == Layout::ChannelsLast;
        let (c_in, spatial) =
            if last { (xs[xs.len() - 1], &xs[1..xs.len() - 1]) } else { (xs[1], &xs[2..]) };
        if c_in != self.w.c_in() {
            bail!("input {xs:?} has {c_in} channels, the weights expect {}", self.w.c_in());
        }
        let zp = match self.x_zp {
            Some(z) => z,
            None => runtime_zero_point(opt_input(ins, 2), x)?,
        };
        let (xu, zp) = activation_u8(x, zp)?;
        let win = self.attrs.window(spatial, &self.kernel_shape)?;
        let out_spatial = &win.output[3 - self.kernel_shape.len()..];
        let shape: Vec<usize> = if last {
            [&[xs[0]], out_spatial, &[self.w.c_out()]].concat()
        } else {
            [&[xs[0], self.w.c_out()], out_spatial].concat()
        };
        let n = numel(&shape);
        match &self.requant {
            None => {
                let mut y = vec![0i32; n];
                let stage = ConvStage::I32 { out: &mut y };
                qconv(&win, xs[0], &xu, zp, &self.w, stage, self.layout);
                Ok(vec![Tensor::from_vec(shape, y)?])
            }
            Some((bias, mult, q)) => {
                let mut y = vec![0u8; n];
                qconv(
                    &win,
                    xs[0],
                    &xu,
                    zp,
                    &self.w,
                    ConvStage::Requantize {
                        bias: bias.as_deref(),
                        multiplier: mult,
                        zero_point: q.zero_point,
                        qmin: q.qmin,
                        qmax: q.qmax,
                        out: &mut y,
                    },
                    self.layout,
                );
                Ok(vec![wrap_bytes(q.dtype, shape, y)?])
            }
        }
    }
}

/// Packs constant conv weights `w` (`[c_out, c_in/group, kernel...]`) with their zero points.
fn pack_conv(
    attrs: &ConvAttrs,
    w: &Tensor,
    w_zp: Option<&Tensor>,
) -> Option<(PackedConv, Vec<usize>)> {
    let ws = w.shape();
    if !(3..=5).contains(&ws.len()) {
        return None;
    }
    let (_, zps) = const_zero_points(w_zp)?;
    let c_out = ws[0];
    if zps.len() != 1 && zps.len() != c_out {
        return None;
    }
    let g = attrs.group;
    if !c_out.is_multiple_of(g) {
        return None;
    }
    let (wv, zps) = weights_i8(w, &zps)?;
    let ks = numel(&ws[2..]);
    Some((PackedConv::pack(Isa::detect(), &wv, c_out, ws[1], ks, g, &zps), ws[2..].to_vec()))
}

fn build_qlinear_conv(ctx: &BuildCtx) -> KernelResult {
    build_qlinear_conv_in(ctx, Layout::ChannelsFirst)
}

/// `QLinearConv` on `layout`: the fast kernel, or the reference loop (between transposes when
/// channels-last).
fn build_qlinear_conv_in(ctx: &BuildCtx, layout: Layout) -> KernelResult {
    let attrs = ConvAttrs::read(&ctx.attrs)?;
    let fast = || -> Option<FastConv> {
        let (x_dt, x_zp) = const_zero_points(ctx.constant(2).or(None))?;
        if ctx.num_inputs() > 2 && !ctx.node.input[2].is_empty() && ctx.constant(2).is_none() {
            return None;
        }
        if x_zp.len() != 1 {
            return None;
        }
        let (w, c) = pack_conv(&attrs, ctx.constant(3)?, ctx.constant(5))?;
        let x_scale = const_floats(ctx.constant(1))?;
        let w_scale = const_floats(ctx.constant(4))?;
        let y_scale = const_floats(ctx.constant(6))?;
        if x_scale.len() != 1 || y_scale.len() != 1 {
            return None;
        }
        if w_scale.len() != 1 && w_scale.len() != w.c_out() {
            return None;
        }
        if ctx.num_inputs() > 7 && !ctx.node.input[7].is_empty() && ctx.constant(7).is_none() {
            return None;
        }
        let q = out_q(const_zero_points(ctx.constant(7))?)?;
        let bias = match ctx.num_inputs() > 8 && !ctx.node.input[8].is_empty() {
            false => None,
            true => {
                let b = ctx.constant(8)?.as_slice::<i32>().ok()?.to_vec();
                if b.len() != w.c_out() {
                    return None;
                }
                Some(b)
            }
        };
        let mult = multipliers(x_scale[0], &w_scale, y_scale[0]);
        if mult.iter().any(|m| !m.is_finite()) {
            return None;
        }
        Some(FastConv {
            attrs: attrs.clone(),
            kernel_shape: c,
            w,
            requant: Some((bias, mult, q)),
            x_zp: Some(x_zp[0]),
            x_dtype: Some(x_dt),
            layout,
        })
    };
    match (fast(), layout) {
        (Some(k), Layout::ChannelsLast) if k.kernel_shape.len() > 2 => Ok(Box::new(ChannelsLast {
            inner: Box::new(FastConv { layout: Layout::ChannelsFirst, ..k }),
        })),
        (Some(k), _) => Ok(Box::new(k)),
        (None, Layout::ChannelsFirst) => reference::build_qlinear_conv(ctx),
        (None, Layout::ChannelsLast) => {
            Ok(Box::new(ChannelsLast { inner: reference::build_qlinear_conv(ctx)? }))
        }
    }
}

/// A channels-first kernel run on channels-last input 0, giving channels-last output 0: for
/// the cases the channels-last kernels do not cover (3-D windows, reference fallbacks).
struct ChannelsLast {
    inner: Box<dyn Kernel>,
}

impl Kernel for ChannelsLast {
    fn clamp_output(&mut self, lo: i32, hi: i32) -> bool {
        self.inner.clamp_output(lo, hi)
    }

    fn run(&self, ins: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        let x = input(ins, 0)?;
        let r = x.rank();
        if r < 3 {
            bail!("channels-last input must be [N, spatial..., C], got {:?}", x.shape());
        }
        let to_first: Vec<usize> = [0, r - 1].into_iter().chain(1..r - 1).collect();
        let to_last: Vec<usize> = [0].into_iter().chain(2..r).chain([1]).collect();
        let xf = crate::ops::shape::transposed(x, &to_first)?;
        let mut args = ins.to_vec();
        args[0] = Some(&xf);
        let mut out = self.inner.run(&args)?;
        out[0] = crate::ops::shape::transposed(&out[0], &to_last)?;
        Ok(out)
    }
}

fn build_conv_integer(ctx: &BuildCtx) -> KernelResult {
    let attrs = ConvAttrs::read(&ctx.attrs)?;
    let fast = || -> Option<FastConv> {
        let (w, c) = pack_conv(&attrs, ctx.constant(1)?, ctx.constant(3))?;
        Some(FastConv {
            attrs: attrs.clone(),
            kernel_shape: c,
            w,
            requant: None,
            x_zp: None,
            layout: Layout::ChannelsFirst,
            x_dtype: None,
        })
    };
    match fast() {
        Some(k) => Ok(Box::new(k)),
        None => reference::build_conv_integer(ctx),
    }
}

// ---------------------------------------------------------------------------------------------
// Matrix products

/// What a fast matmul does with its exact sums.
enum MatOut {
    I32,
    Requantize {
        bias: Option<Vec<i32>>,
        mult: Vec<f32>,
        q: OutQ,
    },
    /// `MatMulIntegerToFloat`: `acc · a_scale · b_scale[j] + bias[j]`; `a_scale` may be a
    /// runtime input.
    Float {
        a_scale: Option<f32>,
        b_scale: Vec<f32>,
        bias: Option<Vec<f32>>,
    },
}

/// `[.., M, K] × [K, N]` with the constant `K × N` operand packed once.
struct FastMatMul {
    b: PackedI8,
    out: MatOut,
    /// Input index of A's zero point when it is read at run time.
    a_zp_input: Option<usize>,
    a_zp: i32,
    a_scale_input: Option<usize>,
}

impl Kernel for FastMatMul {
    fn clamp_output(&mut self, lo: i32, hi: i32) -> bool {
        match &mut self.out {
            MatOut::Requantize { q, .. } => q.clamp(lo, hi),
            _ => false,
        }
    }

    fn run(&self, ins: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        let a = input(ins, 0)?;
        let (k, n) = (self.b.k(), self.b.n());
        let s = a.shape();
        if s.is_empty() || s[s.len() - 1] != k {
            bail!("cannot multiply {s:?} by [{k}, {n}]");
        }
        let zp = match self.a_zp_input {
            Some(i) => runtime_zero_point(opt_input(ins, i), a)?,
            None => self.a_zp,
        };
        let (au, zp) = activation_u8(a, zp)?;
        let m = numel(&s[..s.len() - 1]);
        let mut shape = s.to_vec();
        if s.len() == 1 {
            shape = vec![n];
        } else {
            *shape.last_mut().expect("rank >= 1") = n;
        }
        Ok(vec![match &self.out {
            MatOut::I32 => {
                let mut y = vec![0i32; m * n];
                let o = Output { stage: Stage::I32 { out: &mut y }, row_stride: n, col_stride: 1 };
                qgemm(m, &au, k, zp, &self.b, o);
                Tensor::from_vec(shape, y)?
            }
            MatOut::Requantize { bias, mult, q } => {
                let mut y = vec![0u8; m * n];
                let stage = Stage::Requantize {
                    bias: bias.as_deref(),
                    multiplier: mult,
                    zero_point: q.zero_point,
                    qmin: q.qmin,
                    qmax: q.qmax,
                    out: &mut y,
                };
                qgemm(m, &au, k, zp, &self.b, Output { stage, row_stride: n, col_stride: 1 });
                wrap_bytes(q.dtype, shape, y)?
            }
            MatOut::Float { a_scale, b_scale, bias } => {
                let sa = match (a_scale, self.a_scale_input) {
                    (Some(s), _) => *s,
                    (None, Some(i)) => {
                        let t = input(ins, i)?;
                        if t.len() != 1 {
                            bail!("a_scale must be one value, got {}", t.len());
                        }
                        t.to_f32_vec()?[0]
                    }
                    (None, None) => bail!("a_scale is missing"),
                };
                let scale: Vec<f32> = b_scale.iter().map(|&b| sa * b).collect();
                let mut y = vec![0f32; m * n];
                let stage = Stage::Dequantize { scale: &scale, bias: bias.as_deref(), out: &mut y };
                qgemm(m, &au, k, zp, &self.b, Output { stage, row_stride: n, col_stride: 1 });
                Tensor::from_vec(shape, y)?
            }
        }])
    }
}

/// Packs a constant 2-D 8-bit `b` (`k × n`, or `n × k` when `trans`) with per-tensor or
/// per-column zero points.
fn pack_b(b: &Tensor, b_zp: Option<&Tensor>, trans: bool) -> Option<PackedI8> {
    if b.rank() != 2 {
        return None;
    }
    let (k, n) = if trans { (b.shape()[1], b.shape()[0]) } else { (b.shape()[0], b.shape()[1]) };
    let (_, zps) = const_zero_points(b_zp)?;
    if zps.len() != 1 && zps.len() != n {
        return None;
    }
    let (bv, zps) = weights_i8(b, &zps)?;
    let (t, ld) = if trans { (Trans::Yes, k) } else { (Trans::No, n) };
    Some(PackedI8::pack(t, k, n, &bv, ld, &zps))
}

/// [`pack_b`] of constant input `b` with the zero points of input `zp`, or an error saying
/// what B must be.
fn required_b(ctx: &BuildCtx, b: usize, zp: usize, trans: bool) -> OpResult<PackedI8> {
    let t = ctx.constant(b).ok_or_else(|| OpError::new("B must be a constant 8-bit matrix"))?;
    pack_b(t, ctx.constant(zp), trans)
        .ok_or_else(|| OpError::new("B must be a 2-D uint8/int8 constant with 1 or N zero points"))
}

/// Whether input `i` is named and not constant (a runtime value).
fn runtime(ctx: &BuildCtx, i: usize) -> bool {
    ctx.num_inputs() > i && !ctx.node.input[i].is_empty() && ctx.constant(i).is_none()
}

fn build_qlinear_matmul(ctx: &BuildCtx) -> KernelResult {
    let fast = || -> Option<FastMatMul> {
        if runtime(ctx, 2) || runtime(ctx, 7) {
            return None;
        }
        let (_, a_zp) = const_zero_points(ctx.constant(2))?;
        if a_zp.len() != 1 {
            return None;
        }
        let b = pack_b(ctx.constant(3)?, ctx.constant(5), false)?;
        let a_scale = const_floats(ctx.constant(1))?;
        let b_scale = const_floats(ctx.constant(4))?;
        let y_scale = const_floats(ctx.constant(6))?;
        if a_scale.len() != 1
            || y_scale.len() != 1
            || (b_scale.len() != 1 && b_scale.len() != b.n())
        {
            return None;
        }
        let q = out_q(const_zero_points(ctx.constant(7))?)?;
        let mult = multipliers(a_scale[0], &b_scale, y_scale[0]);
        finite(&mult, "").ok()?;
        Some(FastMatMul {
            b,
            out: MatOut::Requantize { bias: None, mult, q },
            a_zp_input: None,
            a_zp: a_zp[0],
            a_scale_input: None,
        })
    };
    match fast() {
        Some(k) => Ok(Box::new(k)),
        None => Ok(Box::new(RuntimeQLinearMatMul)),
    }
}

/// `QLinearMatMul` whose B is a runtime value (attention scores × values): B is packed on
/// every call, one matrix per batch entry; shapes the fast path does not cover (broadcast
/// batches, per-row zero points, 16-bit types) run the reference.
struct RuntimeQLinearMatMul;

impl Kernel for RuntimeQLinearMatMul {
    fn run(&self, ins: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        match runtime_qlinear_matmul(ins)? {
            Some(t) => Ok(vec![t]),
            None => reference::qlinear_matmul(ins),
        }
    }
}

fn runtime_qlinear_matmul(ins: &[Option<&Tensor>]) -> OpResult<Option<Tensor>> {
    let a = input(ins, 0)?;
    let b = input(ins, 3)?;
    let (sa, sb) = (a.shape(), b.shape());
    let eight_bit = |t: &Tensor| matches!(t.dtype(), DType::U8 | DType::I8);
    if sa.len() < 2 || sa.len() != sb.len() || sa[..sa.len() - 2] != sb[..sb.len() - 2] {
        return Ok(None);
    }
    if !eight_bit(a) || !eight_bit(b) {
        return Ok(None);
    }
    // Scales and zero points (every input but the operands 0 and 3): one value each.
    let scalar = |i: usize| opt_input(ins, i).is_none_or(|t| t.len() == 1);
    if ![1, 2, 4, 5, 6, 7].into_iter().all(scalar) {
        return Ok(None);
    }
    let (m, k, n) = (sa[sa.len() - 2], sa[sa.len() - 1], sb[sb.len() - 1]);
    if sb[sb.len() - 2] != k {
        bail!("cannot multiply {sa:?} by {sb:?}");
    }
    let f = |i: usize| -> OpResult<f32> { Ok(input(ins, i)?.to_f32_vec()?[0]) };
    let mult = multipliers(f(1)?, &[f(4)?], f(6)?);
    finite(&mult, "a_scale · b_scale / y_scale")?;
    let a_zp = runtime_zero_point(opt_input(ins, 2), a)?;
    let b_zp = runtime_zero_point(opt_input(ins, 5), b)?;
    let q = match opt_input(ins, 7) {
        None => out_q((DType::U8, vec![0])),
        Some(z) => const_zero_points(Some(z)).and_then(out_q),
    }
    .ok_or_else(|| OpError::new("y_zero_point must be one uint8 or int8 value"))?;
    let (au, a_zp) = activation_u8(a, a_zp)?;
    let (bv, b_zp) = weights_i8(b, &[b_zp]).expect("8-bit checked");
    let batches = numel(&sa[..sa.len() - 2]);
    let mut y = vec![0u8; batches * m * n];
    for (bi, yb) in y.chunks_mut((m * n).max(1)).enumerate().take(batches) {
        let pb = PackedI8::pack(Trans::No, k, n, &bv[bi * k * n..(bi + 1) * k * n], n, &b_zp);
        let stage = Stage::Requantize {
            bias: None,
            multiplier: &mult,
            zero_point: q.zero_point,
            qmin: q.qmin,
            qmax: q.qmax,
            out: yb,
        };
        qgemm(m, &au[bi * m * k..], k, a_zp, &pb, Output { stage, row_stride: n, col_stride: 1 });
    }
    let mut shape = sa.to_vec();
    *shape.last_mut().expect("rank >= 2") = n;
    Ok(Some(wrap_bytes(q.dtype, shape, y)?))
}

fn build_matmul_integer(ctx: &BuildCtx) -> KernelResult {
    let fast = || -> Option<FastMatMul> {
        if runtime(ctx, 3) {
            return None;
        }
        let b = pack_b(ctx.constant(1)?, ctx.constant(3), false)?;
        let (a_zp, a_zp_input) = match ctx.constant(2) {
            Some(t) => {
                let (_, z) = const_zero_points(Some(t))?;
                (*z.first().filter(|_| z.len() == 1)?, None)
            }
            None => (0, runtime(ctx, 2).then_some(2)),
        };
        Some(FastMatMul { b, out: MatOut::I32, a_zp_input, a_zp, a_scale_input: None })
    };
    match fast() {
        Some(k) => Ok(Box::new(k)),
        None => reference::build_matmul_integer(ctx),
    }
}

/// `com.microsoft.MatMulIntegerToFloat(A, B, a_scale, b_scale, a_zp, b_zp, bias)`:
/// `(A - a_zp)(B - b_zp) · a_scale · b_scale + bias` in f32.
fn build_matmul_integer_to_float(ctx: &BuildCtx) -> KernelResult {
    if runtime(ctx, 5) {
        bail!("b_zero_point must be a constant");
    }
    let b = required_b(ctx, 1, 5, false)?;
    let b_scale =
        const_floats(ctx.constant(3)).ok_or_else(|| OpError::new("b_scale must be a constant"))?;
    if b_scale.len() != 1 && b_scale.len() != b.n() {
        bail!("b_scale has {} values for {} columns", b_scale.len(), b.n());
    }
    let bias = match ctx.num_inputs() > 6 && !ctx.node.input[6].is_empty() {
        false => None,
        true => Some(
            const_floats(ctx.constant(6)).ok_or_else(|| OpError::new("bias must be a constant"))?,
        ),
    };
    if bias.as_ref().is_some_and(|v| v.len() != b.n()) {
        bail!("bias must have {} values", b.n());
    }
    let a_scale = const_floats(ctx.constant(2)).and_then(|v| (v.len() == 1).then(|| v[0]));
    let (a_zp, a_zp_input) = match ctx.constant(4) {
        Some(t) => match const_zero_points(Some(t)) {
            Some((_, z)) if z.len() == 1 => (z[0], None),
            _ => bail!("a_zero_point must be one uint8/int8 value"),
        },
        None => (0, runtime(ctx, 4).then_some(4)),
    };
    let b_scale = if b_scale.len() == 1 && b.n() > 1 { vec![b_scale[0]; b.n()] } else { b_scale };
    Ok(Box::new(FastMatMul {
        b,
        out: MatOut::Float { a_scale, b_scale, bias },
        a_zp_input,
        a_zp,
        a_scale_input: Some(2),
    }))
}

/// `com.microsoft.QGemm(A, a_scale, a_zp, B, b_scale, b_zp, C, y_scale, y_zp)` with constant B
/// and int32 bias `C` (scale `a_scale · b_scale`); `transA = 0`, `alpha = 1`; without
/// `y_scale` the output is float.
fn build_qgemm(ctx: &BuildCtx) -> KernelResult {
    if ctx.attrs.int_or("transA", 0)? != 0 {
        bail!("transA is not supported");
    }
    if (ctx.attrs.float_or("alpha", 1.0)? - 1.0).abs() > 0.0 {
        bail!("alpha other than 1 is not supported");
    }
    let trans_b = ctx.attrs.int_or("transB", 0)? != 0;
    for i in [1, 2, 4, 5, 7, 8] {
        if runtime(ctx, i) {
            bail!("input {i} (a scale or zero point) must be a constant");
        }
    }
    let b = required_b(ctx, 3, 5, trans_b)?;
    let n = b.n();
    let a_scale = const_floats(ctx.constant(1)).filter(|v| v.len() == 1);
    let b_scale = const_floats(ctx.constant(4)).filter(|v| v.len() == 1 || v.len() == n);
    let (Some(a_scale), Some(b_scale)) = (a_scale, b_scale) else {
        bail!("a_scale must be one value and b_scale 1 or {n}");
    };
    let a_zp = const_zero_points(ctx.constant(2))
        .filter(|z| z.1.len() == 1)
        .ok_or_else(|| OpError::new("a_zero_point must be one 8-bit value"))?
        .1[0];
    let bias = match ctx.num_inputs() > 6 && !ctx.node.input[6].is_empty() {
        false => None,
        true => {
            let t = ctx.constant(6).ok_or_else(|| OpError::new("C must be a constant"))?;
            let v = t.as_slice::<i32>().map_err(|_| OpError::new("C must be int32"))?.to_vec();
            if v.len() != n {
                bail!("C has {} values, expected {n}", v.len());
            }
            Some(v)
        }
    };
    let out = if ctx.num_inputs() > 7 && !ctx.node.input[7].is_empty() {
        let y_scale = const_floats(ctx.constant(7))
            .filter(|v| v.len() == 1)
            .ok_or_else(|| OpError::new("y_scale must be one constant value"))?;
        let q = out_q(
            const_zero_points(ctx.constant(8)).ok_or_else(|| OpError::new("bad y_zero_point"))?,
        )
        .ok_or_else(|| OpError::new("y_zero_point must be one uint8/int8 value"))?;
        let mult = multipliers(a_scale[0], &b_scale, y_scale[0]);
        finite(&mult, "a_scale · b_scale / y_scale")?;
        MatOut::Requantize { bias, mult, q }
    } else {
        let scale: Vec<f32> = if b_scale.len() == 1 { vec![b_scale[0]; n] } else { b_scale };
        let fbias = bias
            .map(|b| b.iter().zip(&scale).map(|(&v, &s)| v as f32 * (a_scale[0] * s)).collect());
        MatOut::Float { a_scale: Some(a_scale[0]), b_scale: scale, bias: fbias }
    };
    Ok(Box::new(FastMatMul { b, out, a_zp_input: None, a_zp, a_scale_input: None }))
}

// ---------------------------------------------------------------------------------------------
// Elementwise on 8-bit tensors

/// Per-tensor 8-bit parameters of one operand: scale, zero point, type.
#[derive(Clone, Copy)]
struct Q8 {
    scale: f32,
    zp: i32,
    dtype: DType,
}

impl Q8 {
    fn read(ctx: &BuildCtx, scale: usize, zp: usize) -> OpResult<Q8> {
        if runtime(ctx, scale) || runtime(ctx, zp) {
            bail!("scales and zero points must be constants");
        }
        let s = const_floats(ctx.constant(scale))
            .filter(|v| v.len() == 1 && v[0].is_finite() && v[0] > 0.0)
            .ok_or_else(|| OpError::new(format!("input {scale} must be one positive scale")))?;
        let z = const_zero_points(ctx.constant(zp))
            .filter(|z| z.1.len() == 1)
            .ok_or_else(|| OpError::new(format!("input {zp} must be one 8-bit zero point")))?;
        Ok(Q8 { scale: s[0], zp: z.1[0], dtype: z.0 })
    }

    fn range(&self) -> (i32, i32) {
        int_range(self.dtype).expect("8-bit")
    }

    /// The dequantized value of every code, indexed by the code's byte.
    fn table(&self) -> [f32; 256] {
        let mut t = [0f32; 256];
        for (b, v) in t.iter_mut().enumerate() {
            *v = dequantize_one(self.code(b as u8), self.scale, self.zp);
        }
        t
    }

    fn code(&self, byte: u8) -> i32 {
        if self.dtype == DType::I8 {
            byte as i8 as i32
        } else {
            byte as i32
        }
    }
}

/// The bytes of an 8-bit tensor of the expected type.
fn bytes<'t>(t: &'t Tensor, q: &Q8, what: &str) -> OpResult<Cow<'t, [u8]>> {
    if t.dtype() != q.dtype {
        bail!("{what} is {}, its zero point is {}", t.dtype(), q.dtype);
    }
    Ok(match t.data() {
        TensorData::U8(v) => Cow::Borrowed(v.as_slice()),
        TensorData::I8(v) => Cow::Owned(v.iter().map(|&x| x as u8).collect()),
        _ => bail!("{what} must be uint8 or int8"),
    })
}

/// `QLinearAdd` / `QLinearMul`: `Q(DQ(a) ∘ DQ(b))` per element with numpy broadcasting, the
/// very f32 operations of the unfused DequantizeLinear → Add/Mul → QuantizeLinear (so the
/// fused graph is bit-identical). Two bytes in, one byte out: the result of every pair of
/// codes is computed once at load (a 64 KiB table, those f32 operations on all 65536 pairs),
/// and a run is one lookup per element.
struct QBinary {
    a: Q8,
    b: Q8,
    y: Q8,
    /// `table[a_byte << 8 | b_byte]`: the output byte.
    table: Vec<u8>,
}

impl Kernel for QBinary {
    fn run(&self, ins: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        let a = input(ins, 0)?;
        let b = input(ins, 3)?;
        let (ab, bb) = (bytes(a, &self.a, "A")?, bytes(b, &self.b, "B")?);
        let t: &[u8; 65536] = self.table.as_slice().try_into().expect("64 KiB table");
        let f = |x: u8, z: u8| t[(x as usize) << 8 | z as usize];
        let shape = broadcast_shapes(a.shape(), b.shape())?;
        let y: Vec<u8> = if a.shape() == b.shape() {
            ab.iter().zip(bb.iter()).map(|(&x, &z)| f(x, z)).collect()
        } else if b.len() == 1 {
            ab.iter().map(|&x| f(x, bb[0])).collect()
        } else if a.len() == 1 {
            bb.iter().map(|&z| f(ab[0], z)).collect()
        } else {
            let (oa, ob) = (offsets(a.shape(), &shape), offsets(b.shape(), &shape));
            oa.iter().zip(&ob).map(|(&i, &j)| f(ab[i], bb[j])).collect()
        };
        Ok(vec![wrap_bytes(self.y.dtype, shape, y)?])
    }
}

/// Offset of every element of `out` in a tensor of `shape` broadcast to it.
fn offsets(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let st = crate::ops::util::broadcast_strides(shape, out);
    let mut offs = Vec::with_capacity(numel(out));
    let mut idx = vec![0usize; out.len()];
    for _ in 0..numel(out) {
        offs.push(idx.iter().zip(&st).map(|(i, s)| i * s).sum());
        for d in (0..out.len()).rev() {
            idx[d] += 1;
            if idx[d] < out[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    offs
}

fn build_qlinear_binary(ctx: &BuildCtx, mul: bool) -> KernelResult {
    let (a, b, y) = (Q8::read(ctx, 1, 2)?, Q8::read(ctx, 4, 5)?, Q8::read(ctx, 6, 7)?);
    let (ta, tb) = (a.table(), b.table());
    // The float values of all pairs first, then one quantization pass: the same f32
    // operations as DQ → Add/Mul → Q.
    let v: Vec<f32> = (0..1usize << 16)
        .map(|i| {
            let (u, w) = (ta[i >> 8], tb[i & 0xff]);
            if mul {
                u * w
            } else {
                u + w
            }
        })
        .collect();
    let (lo, hi) = y.range();
    let mut table = vec![0u8; v.len()];
    quantize_bytes(&v, y.scale, y.zp, lo, hi, &mut table);
    Ok(Box::new(QBinary { a, b, y, table }))
}

fn build_qlinear_add(ctx: &BuildCtx) -> KernelResult {
    build_qlinear_binary(ctx, false)
}

fn build_qlinear_mul(ctx: &BuildCtx) -> KernelResult {
    build_qlinear_binary(ctx, true)
}

/// `lowbit.QLinearLookup(X, table)`: `Y[i] = table[X[i]]` (the table has 256 entries of the
/// output type, indexed by the input's byte: int8 codes by their two's-complement bits).
struct Lookup {
    table: Vec<u8>,
    out: DType,
}

impl Kernel for Lookup {
    fn run(&self, ins: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        let x = input(ins, 0)?;
        let y: Vec<u8> = match x.data() {
            TensorData::U8(v) => v.iter().map(|&b| self.table[b as usize]).collect(),
            TensorData::I8(v) => v.iter().map(|&b| self.table[b as u8 as usize]).collect(),
            _ => bail!("QLinearLookup takes uint8 or int8, got {}", x.dtype()),
        };
        Ok(vec![wrap_bytes(self.out, x.shape().to_vec(), y)?])
    }
}

fn build_lookup(ctx: &BuildCtx) -> KernelResult {
    let t = ctx.constant(1).ok_or_else(|| OpError::new("the table must be a constant"))?;
    if t.len() != 256 {
        bail!("the table has {} entries, expected 256", t.len());
    }
    let (table, out) = match t.data() {
        TensorData::U8(v) => (v.clone(), DType::U8),
        TensorData::I8(v) => (v.iter().map(|&x| x as u8).collect(), DType::I8),
        _ => bail!("the table must be uint8 or int8"),
    };
    Ok(Box::new(Lookup { table, out }))
}

/// `QLinearGlobalAveragePool(X, x_scale, x_zp, y_scale, y_zp)`, NCHW (`channels_last = 0`):
/// per channel, the exact integer sum of `x - x_zp`, then `sum · x_scale / (y_scale · count)`
/// requantized.
struct QGlobalAvg {
    x: Q8,
    y: Q8,
    /// `[N, spatial..., C]` in, `[N, 1..., C]` out.
    channels_last: bool,
}

impl Kernel for QGlobalAvg {
    fn run(&self, ins: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        let x = input(ins, 0)?;
        let s = x.shape();
        if s.len() < 3 {
            bail!("input must be [N, C, spatial...], got {s:?}");
        }
        let xb = bytes(x, &self.x, "X")?;
        let (lo, hi) = self.y.range();
        let requantize = |sum: i32, plane: usize| {
            let mult = self.x.scale / (self.y.scale * plane as f32);
            lowbit_kernels::quantize::requantize_one(sum, mult, self.y.zp, lo, hi) as u8
        };
        let ones = std::iter::repeat_n(1, s.len() - 2);
        if self.channels_last {
            let (n, c) = (s[0], s[s.len() - 1]);
            let plane = numel(&s[1..s.len() - 1]);
            let mut y = Vec::with_capacity(n * c);
            for img in xb.chunks(plane * c.max(1)).take(n) {
                let mut sums = vec![0i32; c];
                for px in img.chunks(c) {
                    for (a, &b) in sums.iter_mut().zip(px) {
                        *a += self.x.code(b) - self.x.zp;
                    }
                }
                y.extend(sums.into_iter().map(|v| requantize(v, plane.max(1))));
            }
            let shape: Vec<usize> = [n].into_iter().chain(ones).chain([c]).collect();
            return Ok(vec![wrap_bytes(self.y.dtype, shape, y)?]);
        }
        let plane = numel(&s[2..]).max(1);
        let y: Vec<u8> = xb
            .chunks(plane)
            .map(|c| requantize(c.iter().map(|&b| self.x.code(b) - self.x.zp).sum(), plane))
            .collect();
        let mut shape = s[..2].to_vec();
        shape.extend(ones);
        Ok(vec![wrap_bytes(self.y.dtype, shape, y)?])
    }
}

fn build_qlinear_global_average_pool(ctx: &BuildCtx) -> KernelResult {
    let channels_last = channels_last_attr(&ctx.attrs)?;
    Ok(Box::new(QGlobalAvg { x: Q8::read(ctx, 1, 2)?, y: Q8::read(ctx, 3, 4)?, channels_last }))
}

/// An integer op followed by a lookup table on its 8-bit output (see [`crate::fuse`]).
struct WithTable {
    inner: Box<dyn Kernel>,
    table: [u8; 256],
}

impl Kernel for WithTable {
    fn run(&self, ins: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        let mut out = self.inner.run(&ins[..ins.len() - 1])?;
        match out[0].data_mut() {
            TensorData::U8(v) => v.iter_mut().for_each(|b| *b = self.table[*b as usize]),
            TensorData::I8(v) => {
                v.iter_mut().for_each(|b| *b = self.table[*b as u8 as usize] as i8)
            }
            _ => bail!("a lookup needs 8-bit output"),
        }
        Ok(out)
    }
}

/// `ai.lowbit` `QLinearConv` / `QLinearMatMul` / `QGemm`: the standard op's inputs, then a
/// 256-entry table applied to its output, or folded into its output range when the table is a
/// clamp. `y_zp` is the input index of the op's output zero point (its code type).
fn build_with_table(
    ctx: &BuildCtx,
    inner: fn(&BuildCtx) -> KernelResult,
    domain: &str,
    y_zp: usize,
) -> KernelResult {
    let last = ctx.num_inputs().checked_sub(1).ok_or_else(|| OpError::new("no inputs"))?;
    let t = ctx.constant(last).ok_or_else(|| OpError::new("the table must be a constant"))?;
    let table: [u8; 256] = match t.data() {
        TensorData::U8(v) => v.as_slice().try_into().ok(),
        TensorData::I8(v) => v.iter().map(|&x| x as u8).collect::<Vec<_>>().try_into().ok(),
        _ => None,
    }
    .ok_or_else(|| OpError::new("the table must have 256 uint8/int8 entries"))?;
    let mut node = ctx.node.clone();
    node.input.truncate(last);
    node.domain = domain.to_string();
    let inner_ctx = BuildCtx {
        node: &node,
        attrs: lowbit_onnx::attr::Attrs::new(&node),
        opset: ctx.opset,
        constants: ctx.constants[..last].to_vec(),
        subgraphs: None,
    };
    let mut inner = inner(&inner_ctx)?;
    // Relu/Clip after a requantization whose parameters they share are clamps of the codes
    // (when the op's codes and the table's are the same type).
    let signed = t.dtype() == DType::I8;
    let same_type = ctx.constant(y_zp).map(|z| z.dtype()) == Some(t.dtype());
    if let Some((lo, hi)) = clamp_of(&table, signed).filter(|_| same_type) {
        if inner.clamp_output(lo, hi) {
            return Ok(inner);
        }
    }
    Ok(Box::new(WithTable { inner, table }))
}

/// `(lo, hi)` when `table` maps every code `c` to `clamp(c, lo, hi)` (codes in the order of the
/// 8-bit type: signed for int8, whose code `c` is entry `c as u8`).
fn clamp_of(table: &[u8; 256], signed: bool) -> Option<(i32, i32)> {
    let code = |b: u8| if signed { b as i8 as i32 } else { b as i32 };
    let (first, last) = if signed { (-128, 127) } else { (0, 255) };
    let (lo, hi) = (code(table[first as u8 as usize]), code(table[last as u8 as usize]));
    let ok = lo <= hi && (first..=last).all(|c| code(table[c as u8 as usize]) == c.clamp(lo, hi));
    ok.then_some((lo, hi))
}

/// `ai.lowbit` `QLinearConv`: the standard op's 9 inputs (empty names for absent ones), an
/// optional 10th, the table, and `channels_last` (0 or 1: input and output are
/// `[N, spatial..., C]`).
fn build_lowbit_conv(ctx: &BuildCtx) -> KernelResult {
    let layout =
        if channels_last_attr(&ctx.attrs)? { Layout::ChannelsLast } else { Layout::ChannelsFirst };
    let inner = match layout {
        Layout::ChannelsFirst => build_qlinear_conv,
        Layout::ChannelsLast => |ctx: &BuildCtx| build_qlinear_conv_in(ctx, Layout::ChannelsLast),
    };
    if ctx.num_inputs() > 9 {
        build_with_table(ctx, inner, "", 7)
    } else {
        inner(ctx)
    }
}

fn build_matmul_with_table(ctx: &BuildCtx) -> KernelResult {
    build_with_table(ctx, build_qlinear_matmul, "", 7)
}

fn build_qgemm_with_table(ctx: &BuildCtx) -> KernelResult {
    build_with_table(ctx, build_qgemm, "com.microsoft", 8)
}

pub fn register(reg: &mut Registry) {
    reg.register("", "QLinearConv", build_qlinear_conv);
    reg.register("", "ConvInteger", build_conv_integer);
    reg.register("", "QLinearMatMul", build_qlinear_matmul);
    reg.register("", "MatMulInteger", build_matmul_integer);
    reg.register("com.microsoft", "QGemm", build_qgemm);
    reg.register("com.microsoft", "MatMulIntegerToFloat", build_matmul_integer_to_float);
    reg.register("com.microsoft", "QLinearAdd", build_qlinear_add);
    reg.register("com.microsoft", "QLinearMul", build_qlinear_mul);
    reg.register("com.microsoft", "QLinearGlobalAveragePool", build_qlinear_global_average_pool);
    reg.register(crate::fuse::LOWBIT_DOMAIN, "QLinearLookup", build_lookup);
    reg.register(crate::fuse::LOWBIT_DOMAIN, "QLinearConv", build_lowbit_conv);
    reg.register(crate::fuse::LOWBIT_DOMAIN, "QLinearMatMul", build_matmul_with_table);
    reg.register(crate::fuse::LOWBIT_DOMAIN, "QGemm", build_qgemm_with_table);
}

#[cfg(test)]
mod tests {
    use super::{clamp_of, reference, runtime_qlinear_matmul};
    use lowbit_tensor::Tensor;

    /// Attention's activation × activation products (Q·Kᵀ, scores·V: both operands runtime
    /// tensors, scales and zero points one value each) take the packed int8 path, not the
    /// reference, and give the reference's codes, for u8 and i8 operands.
    #[test]
    fn runtime_qlinear_matmul_takes_the_fast_path_and_matches_the_reference() {
        let (heads, m, k, n) = (3, 5, 7, 6);
        let mut s = 7u32;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        };
        for signed in [false, true] {
            let bytes = |len: usize, next: &mut dyn FnMut() -> u32| -> Tensor {
                let v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if signed {
                    Tensor::from_vec(vec![len], v.into_iter().map(|b| b as i8).collect::<Vec<_>>())
                } else {
                    Tensor::from_vec(vec![len], v)
                }
                .unwrap()
            };
            let a = bytes(heads * m * k, &mut next).reshape(vec![1, heads, m, k]).unwrap();
            let b = bytes(heads * k * n, &mut next).reshape(vec![1, heads, k, n]).unwrap();
            let zp = |v: i32| {
                if signed {
                    Tensor::scalar((v - 100) as i8)
                } else {
                    Tensor::scalar(v as u8)
                }
            };
            let (a_s, b_s, y_s) =
                (Tensor::scalar(0.02f32), Tensor::scalar(0.03f32), Tensor::scalar(0.5f32));
            let (a_z, b_z, y_z) = (zp(120), zp(131), zp(128));
            let ins = [
                Some(&a),
                Some(&a_s),
                Some(&a_z),
                Some(&b),
                Some(&b_s),
                Some(&b_z),
                Some(&y_s),
                Some(&y_z),
            ];
            let fast = runtime_qlinear_matmul(&ins).unwrap().expect("the fast path takes it");
            let want = reference::qlinear_matmul(&ins).unwrap();
            assert_eq!(fast.shape(), [1, heads, m, n]);
            assert_eq!(fast, want[0], "signed {signed}");
        }
    }

    #[test]
    fn clamp_tables_are_recognized_in_the_codes_order() {
        let u: [u8; 256] = std::array::from_fn(|b| (b as u8).clamp(3, 200));
        assert_eq!(clamp_of(&u, false), Some((3, 200)));
        let id: [u8; 256] = std::array::from_fn(|b| b as u8);
        assert_eq!(clamp_of(&id, false), Some((0, 255)));
        assert_eq!(clamp_of(&id, true), Some((-128, 127)));
        // Relu on int8 codes with zero point -128 .. or 0: clamp(c, 0, 127), in signed order.
        let relu: [u8; 256] = std::array::from_fn(|b| (b as u8 as i8).max(0) as u8);
        assert_eq!(clamp_of(&relu, true), Some((0, 127)));
        assert_eq!(clamp_of(&relu, false), None);
        let mut bent = u;
        bent[100] = 101;
        assert_eq!(clamp_of(&bent, false), None);
    }
}
