//! `Conv` (and lowbit's `FusedConv`, a `Conv` with its activation fused), `ConvTranspose`.

use super::{f32_data, float_input, from_f32, nc_spatial, positive, AutoPad, SpatialAttrs};
use crate::bail;
use crate::error::OpResult;
use crate::op::{input, opt_input, BuildCtx, Kernel};
use crate::ops::shape::transposed;
use crate::ops::util::{channels_last_attr, fused_activation};
use lowbit_kernels::conv::{
    conv, conv_packed_uninit, conv_transpose, Activation, ConvParams, ConvWeights,
};
use lowbit_kernels::conv_nhwc::{conv_channels_last, ChannelsLastWeights};
use lowbit_kernels::window::Window;
use lowbit_onnx::attr::Attrs;
use lowbit_tensor::tensor::numel;
use lowbit_tensor::{DType, Tensor};
use std::borrow::Cow;

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
        Self::read_as(inputs, false)
    }

    /// `channels_last`: `x` is `[n, in_sp…, c_in]`.
    fn read_as(inputs: &[Option<&'t Tensor>], channels_last: bool) -> OpResult<Self> {
        let x = input(inputs, 0)?;
        let (w, b) = (input(inputs, 1)?, opt_input(inputs, 2));
        let dtype = float_input(x)?;
        let (n, c_in, in_sp) = if channels_last {
            let s = x.shape();
            if s.len() < 3 {
                bail!("expected an input of shape [N, spatial..., C], got {s:?}");
            }
            (s[0], s[s.len() - 1], s[1..s.len() - 1].to_vec())
        } else {
            nc_spatial(x)?
        };
        Ok(ConvOperands { x, w, b, dtype, n, c_in, in_sp })
    }
}

/// `Conv`, and lowbit's `FusedConv` (a `Conv` with an activation in its output stage, made by
/// [`crate::fuse_float`]). A constant weight is packed once at load, a constant bias converted
/// once. With `channels_last = 1` (lowbit's layout pass, [`crate::layout`]) input and output
/// are `[N, spatial..., C]`.
struct ConvKernel {
    spatial: SpatialAttrs,
    group: usize,
    act: Activation,
    weights: Option<ConvWeights>,
    bias: Option<Vec<f32>>,
    /// `Some` when channels-last: the weights prepared for it, when constant and the conv is
    /// not grouped (group 1 or depthwise); others run channels-first between transposes.
    channels_last: Option<Option<ChannelsLastWeights>>,
}

fn group_attr(a: &Attrs) -> OpResult<usize> {
    let g = a.int_or("group", 1)?;
    if g < 1 {
        return Err(a.invalid("group", format!("must be positive, got {g}")).into());
    }
    Ok(g as usize)
}

pub(super) fn build_conv(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    build_conv_with(ctx, Activation::None)
}

pub(super) fn build_fused_conv(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    build_conv_with(ctx, fused_activation(&ctx.attrs)?)
}

fn build_conv_with(ctx: &BuildCtx, act: Activation) -> OpResult<Box<dyn Kernel>> {
    let group = group_attr(&ctx.attrs)?;
    let float_weight = ctx.constant(1).filter(|w| w.rank() >= 3 && w.dtype().is_float());
    let channels_last = if channels_last_attr(&ctx.attrs)? {
        Some(match float_weight {
            Some(w) => {
                let ws = w.shape();
                let (c_out, k_sz) = (ws[0], numel(&ws[2..]));
                ChannelsLastWeights::new(c_out, ws[1] * group, group, k_sz, &f32_data(w)?)
            }
            None => None,
        })
    } else {
        None
    };
    // Shapes the weight cannot serve are left to `run`, which reports them.
    let weights = match float_weight {
        Some(w) if w.shape()[0] % group == 0 && !matches!(channels_last, Some(Some(_))) => {
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
    let spatial = SpatialAttrs::read(&ctx.attrs)?;
    Ok(Box::new(ConvKernel { spatial, group, act, weights, bias, channels_last }))
}

impl Kernel for ConvKernel {
    fn run(&self, inputs: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        let prepared = match &self.channels_last {
            None => return self.convolve(inputs, None),
            Some(p) => p.as_ref(),
        };
        let x = input(inputs, 0)?;
        match prepared {
            Some(w) if x.rank() >= 3 => self.convolve(inputs, Some(w)),
            // A grouped or non-constant weight: the channels-first kernel between transposes
            // (as `QLinearConv`'s channels-last form does).
            _ => {
                let r = x.rank();
                if r < 3 {
                    bail!("expected an input of shape [N, spatial..., C], got {:?}", x.shape());
                }
                let to_first: Vec<usize> = [0, r - 1].into_iter().chain(1..r - 1).collect();
                let to_last: Vec<usize> = [0].into_iter().chain(2..r).chain([1]).collect();
                let xf = transposed(x, &to_first)?;
                let mut args = inputs.to_vec();
                args[0] = Some(&xf);
                let y = self.convolve(&args, None)?;
                Ok(vec![transposed(&y[0], &to_last)?])
            }
        }
    }
}

impl ConvKernel {
    /// The convolution of `inputs`: channels-last with `prepared` weights (input and output
    /// `[N, spatial..., C]`), else channels-first.
    fn convolve(
        &self,
        inputs: &[Option<&Tensor>],
        prepared: Option<&ChannelsLastWeights>,
    ) -> OpResult<Vec<Tensor>> {
        let last = prepared.is_some();
        let ConvOperands { x, w, b, dtype, n, c_in, in_sp } = ConvOperands::read_as(inputs, last)?;
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
        let out_sp = &p.window.output[3 - in_sp.len()..];
        let n_out = n * c_out * numel(out_sp);
        if let Some(pw) = prepared {
            if !pw.fits(&p) {
                bail!("input {:?} does not fit the weight {ws:?}", x.shape());
            }
            let out_shape = [&[n], out_sp, &[c_out]].concat();
            let mut y = Vec::with_capacity(n_out);
            conv_channels_last(&p, &xv, pw, bias.as_deref(), self.act, y.spare_capacity_mut());
            // SAFETY: `conv_channels_last` wrote all `n_out` elements of `p`'s output.
            unsafe { y.set_len(n_out) };
            return Ok(vec![from_f32(dtype, out_shape, y)?]);
        }
        let mut out_shape = vec![n, c_out];
        out_shape.extend(out_sp);
        let y = match self.weights.as_ref().filter(|w| w.fits(&p)) {
            Some(pw) => {
                // A fresh buffer, not zeroed first: the kernel writes every element.
                let mut y = Vec::with_capacity(n_out);
                conv_packed_uninit(&p, &xv, pw, bias.as_deref(), self.act, y.spare_capacity_mut());
                // SAFETY: `conv_packed_uninit` wrote all `n_out` elements of `p`'s output.
                unsafe { y.set_len(n_out) };
                y
            }
            None => {
                let mut y = vec![0f32; n_out];
                conv(&p, &xv, &f32_data(w)?, bias.as_deref(), self.act, &mut y);
                y
            }
        };
        Ok(vec![from_f32(dtype, out_shape, y)?])
    }
}

struct ConvTransposeKernel {
    spatial: SpatialAttrs,
    group: usize,
    output_padding: Option<Vec<i64>>,
    output_shape: Option<Vec<i64>>,
}

pub(super) fn build_conv_transpose(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
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
