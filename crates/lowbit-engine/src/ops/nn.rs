//! Neural-network ops: convolutions, pooling, normalizations, softmax family, `LRN`, `Dropout`.
//!
//! Everything computes in f32; f64, f16 and bf16 tensors are converted on the way in and the
//! results converted back ([`f32_data`], [`from_f32`]). `MaxPool` also takes int8/uint8
//! (exact through f32). Shapes and attributes are checked before any kernel runs, so bad
//! input is an [`crate::OpError`], never a panic. Spatial ops handle 1-D to 3-D.
//!
//! Opset differences handled here: `Softmax`/`LogSoftmax`/`Hardmax` before 13 flatten the
//! input to 2-D at `axis` (default 1), from 13 work along one axis (default -1);
//! `GroupNormalization` 18 takes per-group scale and bias, 21 per-channel.

use crate::bail;
use crate::error::OpResult;
use crate::op::{input, kernel, opt_input, BuildCtx, Kernel};
use crate::ops::util::{channels_last_attr, fused_activation, normalize_axis};
use crate::registry::Registry;
use lowbit_kernels::conv::{
    conv, conv_packed, conv_transpose, Activation, ConvParams, ConvWeights,
};
use lowbit_kernels::norm::{layer_norm_rows, log_softmax_rows, mean_inv_std, softmax_rows};
use lowbit_kernels::pool::{max_pool_channels_last, pool, PoolKind};
use lowbit_kernels::window::Window;
use lowbit_onnx::attr::Attrs;
use lowbit_tensor::tensor::numel;
use lowbit_tensor::{DType, Tensor, TensorData};
use std::borrow::Cow;

pub fn register(reg: &mut Registry) {
    reg.register("", "Conv", build_conv);
    reg.register(crate::fuse::LOWBIT_DOMAIN, "FusedConv", build_fused_conv);
    reg.register("", "ConvTranspose", build_conv_transpose);
    reg.register("", "MaxPool", build_max_pool);
    reg.register(crate::fuse::LOWBIT_DOMAIN, "MaxPool", build_max_pool_channels_last);
    reg.register("", "AveragePool", build_average_pool);
    reg.register("", "LpPool", build_lp_pool);
    reg.register("", "GlobalAveragePool", build_global_average_pool);
    reg.register("", "GlobalMaxPool", build_global_max_pool);
    reg.register("", "GlobalLpPool", build_global_lp_pool);
    reg.register("", "BatchNormalization", build_batch_norm);
    reg.register("", "InstanceNormalization", build_instance_norm);
    reg.register("", "LayerNormalization", build_layer_norm);
    reg.register("", "GroupNormalization", build_group_norm);
    reg.register("", "MeanVarianceNormalization", build_mvn);
    reg.register("", "Softmax", build_softmax);
    reg.register("", "LogSoftmax", build_log_softmax);
    reg.register("", "Hardmax", build_hardmax);
    reg.register("", "LRN", build_lrn);
    reg.register("", "Dropout", build_dropout);
}

// ---------------------------------------------------------------------------------------------
// dtype helpers, shared with `linalg`

/// The common float dtype of `ts`, or an error naming the odd one.
pub(crate) fn same_float_dtype(ts: &[&Tensor]) -> OpResult<DType> {
    let d = ts.first().map_or(DType::F32, |t| t.dtype());
    if !matches!(d, DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
        bail!("expected a float tensor (f32, f64, f16 or bf16), got {d}");
    }
    if let Some(t) = ts.iter().find(|t| t.dtype() != d) {
        bail!("inputs must share one dtype, got {d} and {}", t.dtype());
    }
    Ok(d)
}

/// The elements as f32: borrowed for f32, converted for other float and small integer types.
pub(crate) fn f32_data(t: &Tensor) -> OpResult<Cow<'_, [f32]>> {
    Ok(match t.data() {
        TensorData::F32(v) => Cow::Borrowed(v.as_slice()),
        TensorData::F16(v) => Cow::Owned(v.iter().map(|x| x.to_f32()).collect()),
        TensorData::BF16(v) => Cow::Owned(v.iter().map(|x| x.to_f32()).collect()),
        TensorData::F64(v) => Cow::Owned(v.iter().map(|&x| x as f32).collect()),
        TensorData::I8(v) => Cow::Owned(v.iter().map(|&x| x as f32).collect()),
        TensorData::U8(v) => Cow::Owned(v.iter().map(|&x| x as f32).collect()),
        other => bail!("unsupported dtype {} (lowbit computes this op in f32)", other.dtype()),
    })
}

/// A tensor of `dtype` from f32 results.
pub(crate) fn from_f32(dtype: DType, shape: Vec<usize>, v: Vec<f32>) -> OpResult<Tensor> {
    let t = Tensor::from_vec(shape, v)?;
    Ok(if dtype == DType::F32 { t } else { t.cast(dtype)? })
}

fn float_input(t: &Tensor) -> OpResult<DType> {
    same_float_dtype(&[t])
}

// ---------------------------------------------------------------------------------------------
// sliding-window attributes

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum AutoPad {
    NotSet,
    SameUpper,
    SameLower,
    Valid,
}

/// The attributes conv and pool share, as written on the node.
#[derive(Clone, Debug)]
pub(crate) struct SpatialAttrs {
    pub(crate) auto_pad: AutoPad,
    pub(crate) kernel: Option<Vec<i64>>,
    pub(crate) strides: Option<Vec<i64>>,
    pub(crate) dilations: Option<Vec<i64>>,
    pub(crate) pads: Option<Vec<i64>>,
    pub(crate) ceil_mode: bool,
}

fn positive(name: &str, v: &Option<Vec<i64>>, rank: usize, default: usize) -> OpResult<Vec<usize>> {
    match v {
        None => Ok(vec![default; rank]),
        Some(v) if v.len() != rank => {
            bail!("attribute '{name}' has {} values, the input has {rank} spatial dims", v.len())
        }
        Some(v) => v
            .iter()
            .map(|&x| {
                if x < 1 {
                    bail!("attribute '{name}' must be positive, got {v:?}")
                }
                Ok(x as usize)
            })
            .collect(),
    }
}

impl SpatialAttrs {
    pub(crate) fn read(a: &Attrs) -> OpResult<SpatialAttrs> {
        let auto_pad = match a.string_or("auto_pad", "NOTSET")?.as_str() {
            "NOTSET" | "" => AutoPad::NotSet,
            "SAME_UPPER" => AutoPad::SameUpper,
            "SAME_LOWER" => AutoPad::SameLower,
            "VALID" => AutoPad::Valid,
            other => {
                return Err(a.invalid("auto_pad", format!("has unknown value '{other}'")).into())
            }
        };
        Ok(SpatialAttrs {
            auto_pad,
            kernel: a.ints("kernel_shape")?,
            strides: a.ints("strides")?,
            dilations: a.ints("dilations")?,
            pads: a.ints("pads")?,
            ceil_mode: a.int_or("ceil_mode", 0)? != 0,
        })
    }

    /// The window over `input` (spatial dims) with `kernel`; pooling applies `ceil_mode`.
    pub(crate) fn window(
        &self,
        input: &[usize],
        kernel: &[usize],
        pooling: bool,
    ) -> OpResult<Window> {
        let r = input.len();
        if r == 0 || r > 3 {
            bail!("only 1-D to 3-D spatial inputs are supported, got {r} spatial dims");
        }
        if kernel.len() != r {
            bail!("kernel has {} dims, the input has {r} spatial dims", kernel.len());
        }
        if kernel.contains(&0) {
            bail!("kernel dims must be positive, got {kernel:?}");
        }
        let strides = positive("strides", &self.strides, r, 1)?;
        let dil = positive("dilations", &self.dilations, r, 1)?;
        let mut pb = vec![0usize; r];
        let mut pe = vec![0usize; r];
        let mut out = vec![0usize; r];
        for i in 0..r {
            let span = dil[i] * (kernel[i] - 1) + 1;
            match self.auto_pad {
                AutoPad::SameUpper | AutoPad::SameLower => {
                    let o = input[i].div_ceil(strides[i]);
                    let total = ((o.max(1) - 1) * strides[i] + span).saturating_sub(input[i]);
                    let small = total / 2;
                    if self.auto_pad == AutoPad::SameUpper {
                        (pb[i], pe[i]) = (small, total - small);
                    } else {
                        (pb[i], pe[i]) = (total - small, small);
                    }
                    out[i] = o;
                    continue;
                }
                AutoPad::Valid => {}
                AutoPad::NotSet => {
                    if let Some(p) = &self.pads {
                        if p.len() != 2 * r {
                            bail!("attribute 'pads' has {} values, expected {}", p.len(), 2 * r);
                        }
                        if p.iter().any(|&v| v < 0) {
                            bail!("negative pads are not supported, got {p:?}");
                        }
                        (pb[i], pe[i]) = (p[i] as usize, p[i + r] as usize);
                    }
                }
            }
            let total = input[i] + pb[i] + pe[i];
            if total < span {
                bail!(
                    "kernel span {span} exceeds padded input {total} in spatial dim {i} (input {:?})",
                    input
                );
            }
            let o = if pooling && self.ceil_mode {
                let mut o = (total - span).div_ceil(strides[i]) + 1;
                // The last window must start inside the input or its begin padding.
                if (o - 1) * strides[i] >= input[i] + pb[i] {
                    o -= 1;
                }
                o
            } else {
                (total - span) / strides[i] + 1
            };
            out[i] = o;
        }
        Window::new(input, kernel, &strides, &dil, &pb, &pe, &out)
            .ok_or_else(|| crate::OpError::new("invalid window geometry"))
    }
}

fn kernel_attr(sa: &SpatialAttrs, what: &str) -> OpResult<Vec<usize>> {
    match &sa.kernel {
        Some(k) => k
            .iter()
            .map(|&v| {
                if v < 1 {
                    bail!("kernel_shape must be positive, got {k:?}")
                } else {
                    Ok(v as usize)
                }
            })
            .collect(),
        None => bail!("{what} needs attribute 'kernel_shape'"),
    }
}

/// `[N, C, spatial...]` split, with a check that there is at least one spatial dim.
fn nc_spatial(x: &Tensor) -> OpResult<(usize, usize, Vec<usize>)> {
    let s = x.shape();
    if s.len() < 3 {
        bail!("expected an input of shape [N, C, spatial...], got {s:?}");
    }
    Ok((s[0], s[1], s[2..].to_vec()))
}

// ---------------------------------------------------------------------------------------------
// Conv, ConvTranspose

/// A float convolution's inputs: `x` (`[n, c_in, in_sp…]`, of float type `dtype`), weight `w`
/// and optional bias `b`.
struct ConvOperands<'t> {
    x: &'t Tensor,
    w: &'t Tensor,
    b: Option<&'t Tensor>,
    dtype: DType,
    n: usize,
    c_in: usize,
    in_sp: Vec<usize>,
}

impl<'t> ConvOperands<'t> {
    fn read(inputs: &[Option<&'t Tensor>]) -> OpResult<Self> {
        let x = input(inputs, 0)?;
        let (w, b) = (input(inputs, 1)?, opt_input(inputs, 2));
        let dtype = float_input(x)?;
        let (n, c_in, in_sp) = nc_spatial(x)?;
        Ok(ConvOperands { x, w, b, dtype, n, c_in, in_sp })
    }
}

/// `Conv`, and lowbit's `FusedConv` (a `Conv` with an activation in its output stage, made by
/// [`crate::fuse_float`]). A constant weight is packed once at load, a constant bias converted
/// once.
struct ConvKernel {
    spatial: SpatialAttrs,
    group: usize,
    act: Activation,
    weights: Option<ConvWeights>,
    bias: Option<Vec<f32>>,
}

fn group_attr(a: &Attrs) -> OpResult<usize> {
    let g = a.int_or("group", 1)?;
    if g < 1 {
        return Err(a.invalid("group", format!("must be positive, got {g}")).into());
    }
    Ok(g as usize)
}

fn build_conv(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    build_conv_with(ctx, Activation::None)
}

fn build_fused_conv(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    build_conv_with(ctx, fused_activation(&ctx.attrs)?)
}

fn build_conv_with(ctx: &BuildCtx, act: Activation) -> OpResult<Box<dyn Kernel>> {
    let group = group_attr(&ctx.attrs)?;
    // Shapes the weight cannot serve are left to `run`, which reports them.
    let weights = match ctx.constant(1) {
        Some(w) if w.rank() >= 3 && w.dtype().is_float() && w.shape()[0] % group == 0 => {
            let ws = w.shape();
            let c_out = ws[0];
            let kdim = numel(&ws[1..]);
            let depthwise = ws[1] == 1 && c_out == group && group > 1;
            Some(ConvWeights::new(c_out, group, kdim, depthwise, &f32_data(w)?))
        }
        _ => None,
    };
    let bias = match ctx.constant(2) {
        Some(b) if b.dtype().is_float() => Some(f32_data(b)?.into_owned()),
        _ => None,
    };
    Ok(Box::new(ConvKernel { spatial: SpatialAttrs::read(&ctx.attrs)?, group, act, weights, bias }))
}

impl Kernel for ConvKernel {
    fn run(&self, inputs: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        let ConvOperands { x, w, b, dtype, n, c_in, in_sp } = ConvOperands::read(inputs)?;
        let ws = w.shape();
        if ws.len() != x.rank() {
            bail!("weight shape {ws:?} does not match input rank {} ({:?})", x.rank(), x.shape());
        }
        let g = self.group;
        let c_out = ws[0];
        if c_in % g != 0 || c_out % g != 0 || ws[1] * g != c_in {
            bail!("input {:?}, weight {ws:?} and group {g} disagree on channels", x.shape());
        }
        let kernel = ws[2..].to_vec();
        if let Some(k) = &self.spatial.kernel {
            if k.iter().map(|&v| v as usize).ne(kernel.iter().copied()) {
                bail!("kernel_shape {k:?} does not match weight shape {ws:?}");
            }
        }
        let win = self.spatial.window(&in_sp, &kernel, false)?;
        let p = ConvParams { batch: n, c_in, c_out, group: g, window: win };
        let bias = match b {
            Some(b) => {
                if b.len() != c_out {
                    bail!("bias has {} elements, expected {c_out}", b.len());
                }
                match &self.bias {
                    Some(v) => Some(Cow::Borrowed(v.as_slice())),
                    None => Some(f32_data(b)?),
                }
            }
            None => None,
        };
        let xv = f32_data(x)?;
        let mut out_shape = vec![n, c_out];
        out_shape.extend(&p.window.output[3 - in_sp.len()..]);
        let mut y = vec![0f32; numel(&out_shape)];
        match self.weights.as_ref().filter(|w| w.fits(&p)) {
            Some(pw) => conv_packed(&p, &xv, pw, bias.as_deref(), self.act, &mut y),
            None => conv(&p, &xv, &f32_data(w)?, bias.as_deref(), self.act, &mut y),
        }
        Ok(vec![from_f32(dtype, out_shape, y)?])
    }
}

struct ConvTransposeKernel {
    spatial: SpatialAttrs,
    group: usize,
    output_padding: Option<Vec<i64>>,
    output_shape: Option<Vec<i64>>,
}

fn build_conv_transpose(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    let a = &ctx.attrs;
    Ok(Box::new(ConvTransposeKernel {
        spatial: SpatialAttrs::read(a)?,
        group: group_attr(a)?,
        output_padding: a.ints("output_padding")?,
        output_shape: a.ints("output_shape")?,
    }))
}

impl ConvTransposeKernel {
    /// Output spatial dims and begin/end pads.
    fn geometry(
        &self,
        input: &[usize],
        kernel: &[usize],
        strides: &[usize],
        dil: &[usize],
    ) -> OpResult<(Vec<usize>, Vec<usize>, Vec<usize>)> {
        let r = input.len();
        let adj: Vec<usize> = match &self.output_padding {
            None => vec![0; r],
            Some(v) if v.len() == r && v.iter().all(|&x| x >= 0) => {
                v.iter().map(|&x| x as usize).collect()
            }
            Some(v) => bail!("attribute 'output_padding' {v:?} does not fit {r} spatial dims"),
        };
        let full: Vec<usize> = (0..r)
            .map(|i| strides[i] * (input[i].max(1) - 1) + adj[i] + dil[i] * (kernel[i] - 1) + 1)
            .collect();
        let mut pb = vec![0; r];
        let mut pe = vec![0; r];
        let mut out = vec![0; r];
        if let Some(os) = &self.output_shape {
            if os.len() < r || os.iter().any(|&v| v < 0) {
                bail!("attribute 'output_shape' {os:?} does not fit {r} spatial dims");
            }
            let os = &os[os.len() - r..];
            for i in 0..r {
                out[i] = os[i] as usize;
                let total = full[i].saturating_sub(out[i]);
                let small = total / 2;
                if self.spatial.auto_pad == AutoPad::SameUpper {
                    (pb[i], pe[i]) = (total - small, small);
                } else {
                    (pb[i], pe[i]) = (small, total - small);
                }
            }
            return Ok((out, pb, pe));
        }
        for i in 0..r {
            match self.spatial.auto_pad {
                AutoPad::SameUpper | AutoPad::SameLower => {
                    out[i] = input[i] * strides[i];
                    let total = full[i].saturating_sub(out[i]);
                    let small = total / 2;
                    if self.spatial.auto_pad == AutoPad::SameUpper {
                        (pb[i], pe[i]) = (small, total - small);
                    } else {
                        (pb[i], pe[i]) = (total - small, small);
                    }
                }
                AutoPad::Valid | AutoPad::NotSet => {
                    if let (AutoPad::NotSet, Some(p)) = (self.spatial.auto_pad, &self.spatial.pads)
                    {
                        if p.len() != 2 * r || p.iter().any(|&v| v < 0) {
                            bail!("attribute 'pads' {p:?} does not fit {r} spatial dims");
                        }
                        (pb[i], pe[i]) = (p[i] as usize, p[i + r] as usize);
                    }
                    if full[i] < pb[i] + pe[i] {
                        bail!(
                            "pads {:?} exceed the output size in spatial dim {i}",
                            self.spatial.pads
                        );
                    }
                    out[i] = full[i] - pb[i] - pe[i];
                }
            }
        }
        Ok((out, pb, pe))
    }
}

impl Kernel for ConvTransposeKernel {
    fn run(&self, inputs: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        let ConvOperands { x, w, b, dtype, n, c_in, in_sp } = ConvOperands::read(inputs)?;
        let r = in_sp.len();
        if r > 3 {
            bail!("only 1-D to 3-D spatial inputs are supported, got {r} spatial dims");
        }
        let ws = w.shape();
        let g = self.group;
        if ws.len() != x.rank() || ws[0] != c_in || c_in % g != 0 {
            bail!("input {:?}, weight {ws:?} and group {g} disagree", x.shape());
        }
        let c_out = ws[1] * g;
        let kernel = ws[2..].to_vec();
        if kernel.contains(&0) {
            bail!("weight shape {ws:?} has an empty kernel");
        }
        let strides = positive("strides", &self.spatial.strides, r, 1)?;
        let dil = positive("dilations", &self.spatial.dilations, r, 1)?;
        let (out, pb, pe) = self.geometry(&in_sp, &kernel, &strides, &dil)?;
        // The forward convolution that maps the output back onto x.
        let win = Window::new(&out, &kernel, &strides, &dil, &pb, &pe, &in_sp)
            .ok_or_else(|| crate::OpError::new("invalid window geometry"))?;
        let bias = match b {
            Some(b) if b.len() != c_out => bail!("bias has {} elements, expected {c_out}", b.len()),
            Some(b) => Some(f32_data(b)?),
            None => None,
        };
        let p = ConvParams { batch: n, c_in, c_out, group: g, window: win };
        let xv = f32_data(x)?;
        let wv = f32_data(w)?;
        let mut shape = vec![n, c_out];
        shape.extend(&out);
        let mut y = vec![0f32; numel(&shape)];
        conv_transpose(&p, &xv, &wv, bias.as_deref(), &mut y);
        Ok(vec![from_f32(dtype, shape, y)?])
    }
}

// ---------------------------------------------------------------------------------------------
// Pooling

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

fn build_max_pool(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    build_pool(ctx, PoolKind::Max, "MaxPool")
}

/// `ai.lowbit` `MaxPool` with `channels_last = 1`: 8-bit codes `[N, spatial..., C]` (what
/// [`crate::layout`] makes of a `MaxPool` between integer convs), one output.
struct MaxPoolChannelsLast {
    spatial: SpatialAttrs,
    kernel: Vec<usize>,
}

fn build_max_pool_channels_last(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
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
            _ => bail!("the channels-last MaxPool takes uint8/int8 codes, got {}", x.dtype()),
        };
        Ok(vec![Tensor::new(shape, data)?])
    }
}

fn build_average_pool(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    let cip = ctx.attrs.int_or("count_include_pad", 0)? != 0;
    build_pool(ctx, PoolKind::Average { count_include_pad: cip }, "AveragePool")
}

fn build_lp_pool(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
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

fn build_global_average_pool(_ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    kernel(|i| Ok(vec![global_pool(input(i, 0)?, GlobalKind::Average)?]))
}

fn build_global_max_pool(_ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    kernel(|i| Ok(vec![global_pool(input(i, 0)?, GlobalKind::Max)?]))
}

fn build_global_lp_pool(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    let p = ctx.attrs.int_or("p", 2)?;
    if p < 1 {
        return Err(ctx.attrs.invalid("p", format!("must be positive, got {p}")).into());
    }
    kernel(move |i| Ok(vec![global_pool(input(i, 0)?, GlobalKind::Lp(p as f32))?]))
}

// ---------------------------------------------------------------------------------------------
// Normalizations

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

fn build_batch_norm(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
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

fn build_instance_norm(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
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

fn build_layer_norm(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
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

fn build_group_norm(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
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

fn build_mvn(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
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

// ---------------------------------------------------------------------------------------------
// Softmax family

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

fn build_softmax(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    build_soft(ctx, SoftKind::Softmax)
}

fn build_log_softmax(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    build_soft(ctx, SoftKind::LogSoftmax)
}

fn build_hardmax(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    build_soft(ctx, SoftKind::Hardmax)
}

// ---------------------------------------------------------------------------------------------
// LRN, Dropout

fn build_lrn(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
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

fn build_dropout(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    let opset = ctx.opset;
    let attr_ratio = ctx.attrs.float_or("ratio", 0.5)?;
    let is_test = ctx.attrs.int_or("is_test", 0)? != 0;
    kernel(move |inputs| {
        let x = input(inputs, 0)?;
        let training = if opset >= 12 {
            match opt_input(inputs, 2) {
                Some(t) => match t.data() {
                    TensorData::Bool(v) if v.len() == 1 => v[0],
                    _ => bail!(
                        "training_mode must be a bool scalar, got {} {:?}",
                        t.dtype(),
                        t.shape()
                    ),
                },
                None => false,
            }
        } else {
            // Before opset 7, `is_test = 0` meant training; later versions are inference-only.
            opset < 7 && !is_test
        };
        let ratio = if opset >= 12 {
            match opt_input(inputs, 1) {
                Some(r) => {
                    *r.to_f32_vec()?.first().ok_or_else(|| crate::OpError::new("ratio is empty"))?
                }
                None => 0.5,
            }
        } else {
            attr_ratio
        };
        if training && ratio != 0.0 {
            bail!(
                "Dropout in training mode with ratio {ratio} is random; lowbit runs inference only"
            );
        }
        let mask = Tensor::new(x.shape().to_vec(), TensorData::Bool(vec![true; x.len()]))?;
        Ok(vec![x.clone(), mask])
    })
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

    #[test]
    fn expand_broadcasts_scale() {
        assert_eq!(
            expand_to(&[1.0, 2.0], &[2], &[3, 2]).unwrap(),
            vec![1.0, 2.0, 1.0, 2.0, 1.0, 2.0]
        );
        assert!(expand_to(&[1.0, 2.0], &[2], &[3]).is_none());
    }
}
