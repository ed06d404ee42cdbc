//! `Resize` (and opset 10's form of it): nearest, linear and cubic interpolation along each
//! resized axis in turn, with every ONNX coordinate transformation mode, `antialias`,
//! `exclude_outside`, `keep_aspect_ratio_policy` and `tf_crop_and_resize`'s extrapolation.
//!
//! Each axis is resized as a weighted sum of input rows ([`Taps`]), computed in f64 and cast
//! back to the input's type once, as the ONNX reference does.

use crate::bail;
use crate::error::OpResult;
use crate::op::{input, kernel, opt_input, BuildCtx, KernelResult};
use crate::ops::util::normalize_axes;
use crate::registry::Registry;
use lowbit_tensor::tensor::numel;
use lowbit_tensor::{DType, Tensor};

pub fn register(reg: &mut Registry) {
    reg.register("", "Resize", build_resize);
}

#[derive(Clone, Copy, PartialEq)]
enum ResizeMode {
    Nearest,
    Linear,
    Cubic,
}

#[derive(Clone, Copy, PartialEq)]
enum Coord {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfCropAndResize,
}

#[derive(Clone, Copy, PartialEq)]
enum Nearest {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

#[derive(Clone)]
struct ResizeAttrs {
    mode: ResizeMode,
    coord: Coord,
    nearest: Nearest,
    cubic_a: f64,
    exclude_outside: bool,
    extrapolation: f64,
    antialias: bool,
    axes: Option<Vec<i64>>,
    policy: String,
    opset: i64,
}

/// Where output coordinate `o` of one axis reads from: a weighted set of input indices, or
/// the extrapolation value.
enum Taps {
    Extrapolate,
    Weights(Vec<(usize, f64)>),
}

impl ResizeAttrs {
    /// The taps of every output position of an axis of size `len_in` resized to `len_out` with
    /// factor `scale` and region of interest `roi` (`[start, end]` in normalized coordinates).
    fn taps(&self, len_in: usize, len_out: usize, scale: f64, roi: (f64, f64)) -> Vec<Taps> {
        let inw = len_in as f64;
        let outw = scale * inw;
        (0..len_out)
            .map(|o| {
                let x = o as f64;
                let xo = match self.coord {
                    Coord::AlignCorners => {
                        if outw == 1.0 {
                            0.0
                        } else {
                            x * (inw - 1.0) / (outw - 1.0)
                        }
                    }
                    Coord::Asymmetric => x / scale,
                    Coord::TfCropAndResize => {
                        let v = if outw == 1.0 {
                            (roi.1 - roi.0) * (inw - 1.0) / 2.0
                        } else {
                            x * (roi.1 - roi.0) * (inw - 1.0) / (outw - 1.0)
                        };
                        let v = v + roi.0 * (inw - 1.0);
                        if v < 0.0 || v > inw - 1.0 {
                            return Taps::Extrapolate;
                        }
                        v
                    }
                    Coord::PytorchHalfPixel => {
                        if outw == 1.0 {
                            -0.5
                        } else {
                            (x + 0.5) / scale - 0.5
                        }
                    }
                    Coord::HalfPixel => (x + 0.5) / scale - 0.5,
                    Coord::HalfPixelSymmetric => {
                        let adjustment = len_out as f64 / outw;
                        let center = inw / 2.0;
                        center * (1.0 - adjustment) + (x + 0.5) / scale - 0.5
                    }
                };
                Taps::Weights(self.weights(xo, len_in, scale))
            })
            .collect()
    }

    fn weights(&self, xo: f64, len_in: usize, scale: f64) -> Vec<(usize, f64)> {
        let last = len_in as i64 - 1;
        let clamp = |i: i64| i.clamp(0, last.max(0)) as usize;
        // Neighbors start at ceil(xo) - n/2; `ratio` is in (0, 1].
        let ceil = xo.ceil();
        let ratio = xo - (ceil - 1.0);
        if self.mode == ResizeMode::Nearest {
            let fl = xo.floor();
            let frac = xo - fl;
            let pick = if frac == 0.0 {
                fl
            } else {
                match self.nearest {
                    Nearest::RoundPreferFloor => {
                        if frac <= 0.5 {
                            fl
                        } else {
                            fl + 1.0
                        }
                    }
                    Nearest::RoundPreferCeil => {
                        if frac < 0.5 {
                            fl
                        } else {
                            fl + 1.0
                        }
                    }
                    Nearest::Floor => fl,
                    Nearest::Ceil => fl + 1.0,
                }
            };
            return vec![(clamp(pick as i64), 1.0)];
        }
        let coeffs: Vec<f64> = match (self.mode, self.antialias) {
            (ResizeMode::Linear, false) => vec![1.0 - ratio, ratio],
            (ResizeMode::Linear, true) => {
                let s = scale.min(1.0);
                let start = (-1.0 / s).floor() as i64 + 1;
                let n = 2 - 2 * start;
                let c: Vec<f64> = (start..start + n)
                    .map(|i| (1.0 - ((i as f64 - ratio) * s).abs()).clamp(0.0, 1.0))
                    .collect();
                let sum: f64 = c.iter().sum();
                c.into_iter().map(|v| v / sum).collect()
            }
            (_, false) => {
                let a = self.cubic_a;
                let r = ratio;
                let q = 1.0 - r;
                vec![
                    ((a * (r + 1.0) - 5.0 * a) * (r + 1.0) + 8.0 * a) * (r + 1.0) - 4.0 * a,
                    ((a + 2.0) * r - (a + 3.0)) * r * r + 1.0,
                    ((a + 2.0) * q - (a + 3.0)) * q * q + 1.0,
                    ((a * (q + 1.0) - 5.0 * a) * (q + 1.0) + 8.0 * a) * (q + 1.0) - 4.0 * a,
                ]
            }
            (_, true) => {
                let a = self.cubic_a;
                let s = scale.min(1.0);
                let f = |x: f64| {
                    let x = x.abs();
                    let (x2, x3) = (x * x, x * x * x);
                    if x <= 1.0 {
                        (a + 2.0) * x3 - (a + 3.0) * x2 + 1.0
                    } else if x < 2.0 {
                        a * x3 - 5.0 * a * x2 + 8.0 * a * x - 4.0 * a
                    } else {
                        0.0
                    }
                };
                let start = (-2.0 / s).floor() as i64 + 1;
                let end = 2 - start;
                let c: Vec<f64> = (start..end).map(|i| f(s * (i as f64 - ratio))).collect();
                let sum: f64 = c.iter().sum();
                c.into_iter().map(|v| v / sum).collect()
            }
        };
        let n = coeffs.len() as i64;
        // The reference pads the input by ceil(n/2) edge values and takes the n nearest.
        let pad = (n + 1) / 2;
        let mut first = ceil as i64 - n / 2;
        first = first.max(-pad).min(last + pad + 1 - n);
        let mut taps: Vec<(i64, f64)> = (0..n).map(|j| (first + j, coeffs[j as usize])).collect();
        if self.exclude_outside {
            for t in taps.iter_mut() {
                if t.0 < 0 || t.0 > last {
                    t.1 = 0.0;
                }
            }
            let sum: f64 = taps.iter().map(|t| t.1).sum();
            if sum != 0.0 {
                for t in taps.iter_mut() {
                    t.1 /= sum;
                }
            }
        }
        taps.into_iter().map(|(i, w)| (clamp(i), w)).collect()
    }
}

fn build_resize(ctx: &BuildCtx) -> KernelResult {
    let a = &ctx.attrs;
    let mode = match a.string_or("mode", "nearest")?.as_str() {
        "nearest" => ResizeMode::Nearest,
        "linear" | "bilinear" | "trilinear" => ResizeMode::Linear,
        "cubic" | "bicubic" => ResizeMode::Cubic,
        m => bail!("unknown Resize mode '{m}'"),
    };
    let default_coord = if ctx.opset < 11 { "asymmetric" } else { "half_pixel" };
    let coord = match a.string_or("coordinate_transformation_mode", default_coord)?.as_str() {
        "half_pixel" => Coord::HalfPixel,
        "half_pixel_symmetric" => Coord::HalfPixelSymmetric,
        "pytorch_half_pixel" => Coord::PytorchHalfPixel,
        "align_corners" => Coord::AlignCorners,
        "asymmetric" => Coord::Asymmetric,
        "tf_crop_and_resize" => Coord::TfCropAndResize,
        m => bail!("unknown coordinate_transformation_mode '{m}'"),
    };
    let default_nearest = if ctx.opset < 11 { "floor" } else { "round_prefer_floor" };
    let nearest = match a.string_or("nearest_mode", default_nearest)?.as_str() {
        "round_prefer_floor" => Nearest::RoundPreferFloor,
        "round_prefer_ceil" => Nearest::RoundPreferCeil,
        "floor" => Nearest::Floor,
        "ceil" => Nearest::Ceil,
        m => bail!("unknown nearest_mode '{m}'"),
    };
    let attrs = ResizeAttrs {
        mode,
        coord,
        nearest,
        cubic_a: a.float_or("cubic_coeff_a", -0.75)? as f64,
        exclude_outside: a.int_or("exclude_outside", 0)? != 0,
        extrapolation: a.float_or("extrapolation_value", 0.0)? as f64,
        antialias: a.int_or("antialias", 0)? != 0,
        axes: a.ints("axes")?,
        policy: a.string_or("keep_aspect_ratio_policy", "stretch")?,
        opset: ctx.opset,
    };
    if attrs.antialias && mode == ResizeMode::Nearest {
        bail!("antialias is not supported with mode nearest");
    }
    kernel(move |ins| resize(&attrs, ins))
}

fn nonempty(t: Option<&Tensor>) -> Option<&Tensor> {
    t.filter(|t| !t.is_empty())
}

fn resize(at: &ResizeAttrs, ins: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
    let x = input(ins, 0)?;
    let r = x.rank();
    let (roi, scales, sizes) = if at.opset < 11 {
        (None, nonempty(opt_input(ins, 1)), None)
    } else {
        (nonempty(opt_input(ins, 1)), nonempty(opt_input(ins, 2)), nonempty(opt_input(ins, 3)))
    };
    let axes = match &at.axes {
        Some(a) => normalize_axes(a, r)?,
        None => (0..r).collect(),
    };
    let k = axes.len();
    let in_shape = x.shape().to_vec();
    // Per-axis scale, output size and roi over all r axes.
    let mut scale = vec![1f64; r];
    let mut size = in_shape.clone();
    let mut rois = vec![(0f64, 1f64); r];
    if let Some(roi) = roi {
        let v = roi.to_f64_vec()?;
        if v.len() != 2 * k {
            bail!("roi has {} values, expected {}", v.len(), 2 * k);
        }
        for (i, &ax) in axes.iter().enumerate() {
            rois[ax] = (v[i], v[k + i]);
        }
    }
    match (scales, sizes) {
        (Some(s), None) => {
            let v: Vec<f64> = s.to_f32_vec()?.into_iter().map(|v| v as f64).collect();
            if v.len() != k || v.iter().any(|&v| v <= 0.0) {
                bail!("scales {v:?} must be {k} positive values");
            }
            for (i, &ax) in axes.iter().enumerate() {
                scale[ax] = v[i];
                size[ax] = (v[i] * in_shape[ax] as f64) as usize;
            }
        }
        (None, Some(s)) => {
            let v = s.to_i64_vec()?;
            if v.len() != k || v.iter().any(|&v| v < 0) {
                bail!("sizes {v:?} must be {k} non-negative values");
            }
            for (i, &ax) in axes.iter().enumerate() {
                size[ax] = v[i] as usize;
                scale[ax] = v[i] as f64 / in_shape[ax] as f64;
            }
            if at.policy != "stretch" {
                let it = axes.iter().map(|&ax| scale[ax]);
                let s = match at.policy.as_str() {
                    "not_larger" => it.fold(f64::INFINITY, f64::min),
                    "not_smaller" => it.fold(f64::NEG_INFINITY, f64::max),
                    p => bail!("unknown keep_aspect_ratio_policy '{p}'"),
                };
                for &ax in &axes {
                    scale[ax] = s;
                    size[ax] = (s * in_shape[ax] as f64 + 0.5) as usize;
                }
            }
        }
        (Some(_), Some(_)) => bail!("only one of scales and sizes may be given"),
        (None, None) => bail!("one of scales and sizes is required"),
    }
    let mut shape = in_shape.clone();
    let mut data = x.to_f64_vec()?;
    for ax in (0..r).rev() {
        let identity = size[ax] == in_shape[ax]
            && scale[ax] == 1.0
            && (at.coord != Coord::TfCropAndResize || rois[ax] == (0.0, 1.0));
        if identity {
            continue;
        }
        let taps = at.taps(in_shape[ax], size[ax], scale[ax], rois[ax]);
        let outer = numel(&shape[..ax]);
        let inner = numel(&shape[ax + 1..]);
        let len_in = shape[ax];
        let mut next = vec![0f64; outer * size[ax] * inner];
        for o in 0..outer {
            for (j, t) in taps.iter().enumerate() {
                let dst = &mut next[(o * size[ax] + j) * inner..(o * size[ax] + j + 1) * inner];
                match t {
                    Taps::Extrapolate => dst.iter_mut().for_each(|v| *v = at.extrapolation),
                    Taps::Weights(w) => {
                        for &(i, c) in w {
                            let src = &data[(o * len_in + i) * inner..(o * len_in + i + 1) * inner];
                            for (d, s) in dst.iter_mut().zip(src) {
                                *d += c * s;
                            }
                        }
                    }
                }
            }
        }
        shape[ax] = size[ax];
        data = next;
    }
    let y = Tensor::from_vec(shape, data)?;
    Ok(vec![if x.dtype() == DType::F64 { y } else { y.cast(x.dtype())? }])
}
