//! Neural-network ops: convolutions (`conv`), pooling (`pool`), normalizations and `LRN`
//! (`norm`), the softmax family (`softmax`), the recurrent layers `RNN`/`GRU`/`LSTM` (`rnn`),
//! ONNX's `Attention` and ONNX Runtime's fused `com.microsoft.Attention` (`attention`), and
//! `Dropout` (here, with the dtype and
//! sliding-window helpers they share).
//!
//! Everything computes in f32; f64, f16 and bf16 tensors are converted on the way in and the
//! results converted back ([`f32_data`], [`from_f32`]). `MaxPool` also takes int8/uint8
//! (exact through f32). Shapes and attributes are checked before any kernel runs, so bad
//! input is an [`crate::OpError`], never a panic. Spatial ops handle 1-D to 3-D.
//!
//! Opset differences handled here: `Softmax`/`LogSoftmax`/`Hardmax` before 13 flatten the
//! input to 2-D at `axis` (default 1), from 13 work along one axis (default -1);
//! `GroupNormalization` 18 takes per-group scale and bias, 21 per-channel.

mod attention;
mod conv;
mod norm;
mod pool;
mod rnn;
mod softmax;

use crate::bail;
use crate::error::OpResult;
use crate::op::{input, kernel, opt_input, BuildCtx, Kernel};
use crate::registry::Registry;
use lowbit_kernels::window::Window;
use lowbit_onnx::attr::Attrs;
use lowbit_tensor::{DType, Tensor, TensorData};
use std::borrow::Cow;

pub fn register(reg: &mut Registry) {
    reg.register("", "Conv", conv::build_conv);
    // The layout pass's channels-last `Conv` (`channels_last = 1`).
    reg.register(crate::fuse::LOWBIT_DOMAIN, "Conv", conv::build_conv);
    reg.register(crate::fuse::LOWBIT_DOMAIN, "FusedConv", conv::build_fused_conv);
    reg.register("", "ConvTranspose", conv::build_conv_transpose);
    reg.register("", "MaxPool", pool::build_max_pool);
    reg.register(crate::fuse::LOWBIT_DOMAIN, "MaxPool", pool::build_max_pool_channels_last);
    reg.register("", "AveragePool", pool::build_average_pool);
    reg.register("", "LpPool", pool::build_lp_pool);
    reg.register("", "GlobalAveragePool", pool::build_global_average_pool);
    reg.register(
        crate::fuse::LOWBIT_DOMAIN,
        "GlobalAveragePool",
        pool::build_global_average_pool_channels_last,
    );
    reg.register("", "GlobalMaxPool", pool::build_global_max_pool);
    reg.register("", "GlobalLpPool", pool::build_global_lp_pool);
    reg.register("", "BatchNormalization", norm::build_batch_norm);
    reg.register("", "InstanceNormalization", norm::build_instance_norm);
    reg.register("", "LayerNormalization", norm::build_layer_norm);
    reg.register("", "GroupNormalization", norm::build_group_norm);
    reg.register("", "MeanVarianceNormalization", norm::build_mvn);
    reg.register("", "LRN", norm::build_lrn);
    reg.register("", "Softmax", softmax::build_softmax);
    reg.register("", "LogSoftmax", softmax::build_log_softmax);
    reg.register("", "Hardmax", softmax::build_hardmax);
    reg.register("", "Dropout", build_dropout);
    // Recurrent layers.
    reg.register("", "RNN", rnn::build_rnn);
    reg.register("", "GRU", rnn::build_gru);
    reg.register("", "LSTM", rnn::build_lstm);
    reg.register("", "Attention", attention::build_attention);
    reg.register("com.microsoft", "Attention", attention::build_ort_attention);
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
