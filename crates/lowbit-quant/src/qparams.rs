//! Scale and zero point from a float range, per tensor, per channel or per block, computed
//! exactly as ONNX Runtime's quantizer does; and weight quantization built on them.
//!
//! ```
//! use lowbit_quant::qparams::{compute_scale_zp, quantize_tensor};
//! use lowbit_quant::QuantScheme;
//! use lowbit_tensor::Tensor;
//! // uint8 asymmetric: [-1, 3] onto [0, 255].
//! let p = compute_scale_zp(-1.0, 3.0, 0, 255, false).unwrap();
//! assert_eq!((p.scale, p.zero_point), (4.0 / 255.0, 64));
//! // A per-channel int8 weight.
//! let w = Tensor::from_vec(vec![2, 2], vec![1.0f32, -0.5, 0.25, 2.0]).unwrap();
//! let q = quantize_tensor(&w, &QuantScheme::int8().symmetric().per_channel(0)).unwrap();
//! assert_eq!(q.params.scale.as_f32().unwrap(), &[1.0 / 127.0, 2.0 / 127.0]);
//! assert_eq!(q.values.as_slice::<i8>().unwrap(), &[127, -64, 16, 127]);
//! ```
//!
//! The formulas (ONNX Runtime `quant_utils.compute_scale_zp`, ranges from
//! [`QuantScheme::qrange`]):
//!
//! 1. the range always includes 0: `rmin = min(rmin, 0)`, `rmax = max(rmax, 0)`;
//! 2. symmetric: `rmin = -absmax`, `rmax = absmax` with `absmax = max(|rmin|, |rmax|)`;
//! 3. `scale = (rmax - rmin) / (qmax - qmin)` in **f64**, stored as f32;
//! 4. zero point: symmetric `round((qmin + qmax) / 2)` (int8 0, uint8 128, int16 0,
//!    uint16 32768, int4 0, uint4 8), asymmetric `round(qmin - rmin / scale)` in f64 with the
//!    f64 scale; rounding is half to even, the result lies in `[qmin, qmax]`;
//! 5. degenerate ranges (an all-zero tensor, a range narrower than `f32::MIN_POSITIVE` per
//!    step): `scale = 1, zero_point = 0`. A NaN or infinite bound is an error
//!    ([`QuantError::NonFiniteRange`]). So a scale is never 0, inf or NaN.
//!
//! Per-block parameters follow ORT's `compute_scale_zp_blocked`, which differs in one detail:
//! the zero point is computed from the scale after it is rounded to f32.
//!
//! A weight scheme with [`RangeFit::Mse`] first narrows each parameter's min/max range to the
//! fraction of it (1.00 down to 0.20 in steps of 0.01) that minimizes the squared quantization
//! error of its elements; the formulas above then apply to the narrowed range.
//!
//! Float8 (E4M3FN, E5M2) targets: `scale = absmax / max_finite` (448 / 57344), zero point 0.
//! ONNX Runtime derives fp8 scales from the data's standard deviation instead; from a range
//! alone, max scaling is the choice that never saturates.
//!
//! Quantizing and dequantizing go through [`lowbit_kernels::quantize`], the one math core
//! (round half to even, saturation as ONNX `QuantizeLinear` defines it).

use crate::error::{QuantError, Result};
use crate::scheme::{Granularity, QuantScheme, RangeFit, ValueType};
use lowbit_kernels::quantize::{self as core, ParamMap};
use lowbit_tensor::{DType, Tensor, TensorData};

/// One scale and zero point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScaleZp {
    pub scale: f32,
    pub zero_point: i32,
}

/// ONNX Runtime's `compute_scale_zp` for the integer grid `[qmin, qmax]` (see module docs).
pub fn compute_scale_zp(
    rmin: f32,
    rmax: f32,
    qmin: i32,
    qmax: i32,
    symmetric: bool,
) -> Result<ScaleZp> {
    scale_zp(rmin, rmax, qmin, qmax, symmetric, false)
}

fn scale_zp(
    rmin: f32,
    rmax: f32,
    qmin: i32,
    qmax: i32,
    symmetric: bool,
    zp_from_stored_scale: bool,
) -> Result<ScaleZp> {
    if !rmin.is_finite() || !rmax.is_finite() {
        return Err(QuantError::NonFiniteRange { what: "qparams".into(), min: rmin, max: rmax });
    }
    if qmin > 0 || qmax < 0 || qmin >= qmax {
        return Err(QuantError::Scheme(format!(
            "integer range [{qmin}, {qmax}] must contain 0 and more than one value"
        )));
    }
    let mut lo = rmin.min(0.0) as f64;
    let mut hi = rmax.max(0.0) as f64;
    if symmetric {
        let absmax = lo.abs().max(hi.abs());
        lo = -absmax;
        hi = absmax;
    }
    let (qmin_f, qmax_f) = (qmin as f64, qmax as f64);
    let scale = (hi - lo) / (qmax_f - qmin_f);
    let stored = scale as f32;
    let degenerate = if zp_from_stored_scale {
        stored < f32::MIN_POSITIVE
    } else {
        scale < f32::MIN_POSITIVE as f64
    };
    if degenerate {
        return Ok(ScaleZp { scale: 1.0, zero_point: 0 });
    }
    let zp = if symmetric {
        ((qmin_f + qmax_f) / 2.0).round_ties_even()
    } else {
        let s = if zp_from_stored_scale { stored as f64 } else { scale };
        (qmin_f - lo / s).round_ties_even()
    };
    Ok(ScaleZp { scale: stored, zero_point: zp.clamp(qmin_f, qmax_f) as i32 })
}

/// Scale (zero point 0) for a float8 target: `absmax / max_finite`, 1 for an all-zero range.
fn float8_scale(rmin: f32, rmax: f32, max_finite: f32) -> Result<ScaleZp> {
    if !rmin.is_finite() || !rmax.is_finite() {
        return Err(QuantError::NonFiniteRange { what: "qparams".into(), min: rmin, max: rmax });
    }
    let absmax = (rmin as f64).abs().max((rmax as f64).abs());
    let scale = (absmax / max_finite as f64) as f32;
    Ok(ScaleZp { scale: if scale < f32::MIN_POSITIVE { 1.0 } else { scale }, zero_point: 0 })
}

/// The scale and zero point of `scheme` for values in `[rmin, rmax]` (the granularity is not
/// looked at: this is one parameter pair). Errors for plain casts (fp16/bf16).
pub fn range_qparams(scheme: &QuantScheme, rmin: f32, rmax: f32) -> Result<ScaleZp> {
    scheme.validate()?;
    range_qparams_unchecked(scheme, rmin, rmax, false)
}

fn range_qparams_unchecked(
    scheme: &QuantScheme,
    rmin: f32,
    rmax: f32,
    blocked: bool,
) -> Result<ScaleZp> {
    match scheme.value {
        ValueType::Int(_) => {
            let (qmin, qmax) = scheme.qrange()?;
            scale_zp(rmin, rmax, qmin, qmax, scheme.is_symmetric(), blocked)
        }
        ValueType::Cast(f) if f.is_float8() => float8_scale(rmin, rmax, f.max_finite()),
        ValueType::Cast(f) => {
            Err(QuantError::Scheme(format!("{} is a plain cast: it has no scale", f.name())))
        }
    }
}

/// Quantization parameters laid out for one tensor, ready to become the `scale` / `zero_point`
/// inputs (and `axis` / `block_size` attributes) of ONNX `QuantizeLinear`/`DequantizeLinear`.
#[derive(Clone, Debug, PartialEq)]
pub struct QParams {
    /// The quantized element type (also the zero point's type).
    pub dtype: DType,
    /// f32 scales: rank 0 per tensor, `[C]` per channel, the tensor's shape with
    /// `shape[axis] = ceil(shape[axis] / block_size)` per block.
    pub scale: Tensor,
    /// Zero points of `dtype`, shaped like `scale`.
    pub zero_point: Tensor,
    /// The resolved axis (per channel, per block).
    pub axis: Option<usize>,
    /// The block size (per block).
    pub block_size: Option<usize>,
}

impl QParams {
    /// Per-tensor parameters of `dtype`.
    pub fn per_tensor(dtype: DType, p: ScaleZp) -> Result<QParams> {
        Ok(QParams {
            dtype,
            scale: Tensor::scalar(p.scale),
            zero_point: Tensor::new(vec![], int_storage(dtype, &[p.zero_point])?)?,
            axis: None,
            block_size: None,
        })
    }

    /// The per-tensor parameters of `scheme` for values in `[rmin, rmax]` (an activation).
    pub fn from_range(scheme: &QuantScheme, rmin: f32, rmax: f32) -> Result<QParams> {
        QParams::per_tensor(scheme.dtype(), range_qparams(scheme, rmin, rmax)?)
    }

    /// The scales, flat.
    pub fn scales(&self) -> &[f32] {
        self.scale.as_f32().expect("scales are f32")
    }

    /// The zero points widened to i32, flat (float8 zero points are 0).
    pub fn zero_points(&self) -> Vec<i32> {
        core::int_values(self.zero_point.data()).unwrap_or_else(|| vec![0; self.scale.len()])
    }

    /// How the parameters map onto a tensor of `shape`.
    pub fn param_map(&self, shape: &[usize]) -> ParamMap {
        match (self.axis, self.block_size) {
            (Some(a), Some(b)) => ParamMap::blocked(shape, a, b),
            (Some(a), None) => ParamMap::per_axis(shape, a),
            _ => ParamMap::per_tensor(),
        }
    }
}

/// Integer values (zero points, weight codes) as storage of `dtype` (values already inside
/// its range).
pub(crate) fn int_storage(dtype: DType, zp: &[i32]) -> Result<TensorData> {
    Ok(match dtype {
        // 0.0 is the all-zero bit pattern in both float8 formats.
        DType::F8E4M3FN => TensorData::F8E4M3FN(vec![0; zp.len()]),
        DType::F8E5M2 => TensorData::F8E5M2(vec![0; zp.len()]),
        _ => lowbit_tensor::cast::int_data(zp, dtype)
            .ok_or_else(|| QuantError::Scheme(format!("{dtype} is not a quantized type")))?,
    })
}

/// Where a scheme puts the parameters of one tensor.
struct Layout {
    map: ParamMap,
    /// Shape of the scale / zero-point tensors.
    shape: Vec<usize>,
    axis: Option<usize>,
    block_size: Option<usize>,
}

/// The layout `scheme` gives a tensor of `shape`.
fn layout(scheme: &QuantScheme, shape: &[usize]) -> Result<Layout> {
    let axis = scheme.resolve_axis(shape.len())?;
    Ok(match (scheme.granularity, axis) {
        (Granularity::PerChannel { .. }, Some(a)) => Layout {
            map: ParamMap::per_axis(shape, a),
            shape: vec![shape[a]],
            axis,
            block_size: None,
        },
        (Granularity::PerBlock { block_size, .. }, Some(a)) => {
            let mut pshape = shape.to_vec();
            pshape[a] = shape[a].div_ceil(block_size);
            Layout {
                map: ParamMap::blocked(shape, a, block_size),
                shape: pshape,
                axis,
                block_size: Some(block_size),
            }
        }
        _ => Layout { map: ParamMap::per_tensor(), shape: vec![], axis: None, block_size: None },
    })
}

/// `(min, max)` of the elements sharing each parameter; both start at 0 (the range always
/// includes 0), so a parameter with no elements gets `[0, 0]`. NaN or ±inf is an error.
pub fn param_ranges(x: &[f32], map: &ParamMap, num_params: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut lo = vec![0f32; num_params];
    let mut hi = vec![0f32; num_params];
    for (i, &v) in x.iter().enumerate() {
        if !v.is_finite() {
            return Err(QuantError::NonFiniteData {
                tensor: String::new(),
                sample: None,
                index: i,
                value: v,
            });
        }
        let p = map.index(i);
        lo[p] = lo[p].min(v);
        hi[p] = hi[p].max(v);
    }
    Ok((lo, hi))
}

/// Fractions of the min/max range [`RangeFit::Mse`] tries: 1.00, 0.99, ... 0.20.
const MSE_FIT_STEPS: usize = 81;

/// Narrows each parameter's `[lo, hi]` to the fraction of it (both ends scaled alike) whose
/// grid gives the elements the smallest squared quantization error; ties keep the wider range.
/// The error is measured with the core's own quantize/dequantize, so what is minimized is
/// exactly what the model will see.
fn fit_ranges_mse(
    x: &[f32],
    map: &ParamMap,
    scheme: &QuantScheme,
    blocked: bool,
    lo: &mut [f32],
    hi: &mut [f32],
) -> Result<()> {
    use rayon::prelude::*;
    let (qmin, qmax) = scheme.qrange()?;
    let n = lo.len();
    // The elements of each parameter side by side (counting sort by parameter index).
    let mut start = vec![0usize; n + 1];
    for i in 0..x.len() {
        start[map.index(i) + 1] += 1;
    }
    for p in 0..n {
        start[p + 1] += start[p];
    }
    let mut fill = start.clone();
    let mut grouped = vec![0f32; x.len()];
    for (i, &v) in x.iter().enumerate() {
        let p = map.index(i);
        grouped[fill[p]] = v;
        fill[p] += 1;
    }
    let fitted: Vec<(f32, f32)> = (0..n)
        .into_par_iter()
        .map(|p| {
            let values = &grouped[start[p]..start[p + 1]];
            let error = |l: f32, h: f32| -> Result<f64> {
                let sz = range_qparams_unchecked(scheme, l, h, blocked)?;
                Ok(values
                    .iter()
                    .map(|&v| {
                        let q = core::quantize_one(v, sz.scale, sz.zero_point, qmin, qmax);
                        let d = (v - core::dequantize_one(q, sz.scale, sz.zero_point)) as f64;
                        d * d
                    })
                    .sum())
            };
            let mut best = (lo[p], hi[p]);
            let mut best_err = error(lo[p], hi[p])?;
            for step in 1..MSE_FIT_STEPS {
                let f = 1.0 - step as f32 * 0.01;
                let err = error(lo[p] * f, hi[p] * f)?;
                if err < best_err {
                    best = (lo[p] * f, hi[p] * f);
                    best_err = err;
                }
            }
            Ok(best)
        })
        .collect::<Result<_>>()?;
    for (p, (l, h)) in fitted.into_iter().enumerate() {
        lo[p] = l;
        hi[p] = h;
    }
    Ok(())
}

fn floats(x: &Tensor) -> Result<std::borrow::Cow<'_, [f32]>> {
    Ok(match x.data() {
        TensorData::F32(v) => std::borrow::Cow::Borrowed(v.as_slice()),
        _ => std::borrow::Cow::Owned(x.to_f32_vec()?),
    })
}

/// Parameters of `scheme` for the tensor `x` (a weight), from its own min/max per tensor,
/// channel or block.
pub fn tensor_qparams(x: &Tensor, scheme: &QuantScheme) -> Result<QParams> {
    tensor_qparams_with_min_scale(x, scheme, None)
}

/// [`tensor_qparams`] with a floor on each parameter's scale (one value per parameter, or one
/// for all): a parameter whose own range gives a smaller scale gets its range widened until
/// the scale reaches the floor (above its maximum for asymmetric grids, on both sides for
/// symmetric ones). Used where a bias must fit the weight scale
/// ([`lowbit_kernels::quantize::min_weight_scales_for_bias`]).
pub fn tensor_qparams_with_min_scale(
    x: &Tensor,
    scheme: &QuantScheme,
    min_scale: Option<&[f32]>,
) -> Result<QParams> {
    scheme.validate()?;
    let Layout { map, shape: pshape, axis, block_size } = layout(scheme, x.shape())?;
    let n: usize = pshape.iter().product();
    let xv = floats(x)?;
    let (mut lo, mut hi) = param_ranges(&xv, &map, n)?;
    let blocked = block_size.is_some();
    if scheme.range_fit == RangeFit::Mse && matches!(scheme.value, ValueType::Int(_)) {
        fit_ranges_mse(&xv, &map, scheme, blocked, &mut lo, &mut hi)?;
    }
    if let (Some(floor), ValueType::Int(_)) = (min_scale, scheme.value) {
        let (qmin, qmax) = scheme.qrange()?;
        let span = (qmax - qmin) as f32;
        for p in 0..n {
            let f = floor[if floor.len() == 1 { 0 } else { p }];
            if (hi[p] - lo[p]) / span >= f {
                continue;
            }
            if scheme.is_symmetric() {
                let half = f * span / 2.0;
                hi[p] = hi[p].max(half);
                lo[p] = lo[p].min(-half);
            } else {
                hi[p] = lo[p] + f * span;
            }
        }
    }
    let params = lo
        .iter()
        .zip(&hi)
        .map(|(&l, &h)| range_qparams_unchecked(scheme, l, h, blocked))
        .collect::<Result<Vec<_>>>()?;
    let scales: Vec<f32> = params.iter().map(|p| p.scale).collect();
    let zps: Vec<i32> = params.iter().map(|p| p.zero_point).collect();
    Ok(QParams {
        dtype: scheme.dtype(),
        scale: Tensor::from_vec(pshape.clone(), scales)?,
        zero_point: Tensor::new(pshape, int_storage(scheme.dtype(), &zps)?)?,
        axis,
        block_size,
    })
}

/// A quantized tensor and the parameters that dequantize it.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedTensor {
    pub values: Tensor,
    pub params: QParams,
}

/// Quantizes `x` with `params` (ONNX `QuantizeLinear`, saturating).
pub fn quantize(x: &Tensor, params: &QParams) -> Result<Tensor> {
    let xv = floats(x)?;
    let map = params.param_map(x.shape());
    let q = core::quantize(
        &xv,
        params.scales(),
        Some(params.zero_point.data()),
        &map,
        params.dtype,
        true,
    )?;
    Ok(Tensor::new(x.shape().to_vec(), q)?)
}

/// Dequantizes `q` with `params` (ONNX `DequantizeLinear`), to f32.
pub fn dequantize(q: &Tensor, params: &QParams) -> Result<Tensor> {
    let map = params.param_map(q.shape());
    let x = core::dequantize(q.data(), params.scales(), Some(params.zero_point.data()), &map)?;
    Ok(Tensor::from_vec(q.shape().to_vec(), x)?)
}

/// `dequantize(quantize(x))`: the values the quantized model will see.
pub fn fake_quantize(x: &Tensor, params: &QParams) -> Result<Tensor> {
    dequantize(&quantize(x, params)?, params)
}

/// Quantizes a weight with `scheme`, parameters from the weight's own ranges.
pub fn quantize_tensor(x: &Tensor, scheme: &QuantScheme) -> Result<QuantizedTensor> {
    let params = tensor_qparams(x, scheme)?;
    Ok(QuantizedTensor { values: quantize(x, &params)?, params })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowbit_engine::{Session, SessionOptions};
    use lowbit_onnx::pb;
    use lowbit_onnx::tensor_proto::tensor_to_proto;
    use proptest::prelude::*;

    #[test]
    fn symmetric_zero_points_are_the_middle_of_the_grid() {
        let z = |s: QuantScheme| range_qparams(&s.symmetric(), -1.0, 2.0).unwrap().zero_point;
        assert_eq!(z(QuantScheme::int8()), 0);
        assert_eq!(z(QuantScheme::uint8()), 128);
        assert_eq!(z(QuantScheme::int16()), 0);
        assert_eq!(z(QuantScheme::uint16()), 32768);
        assert_eq!(z(QuantScheme::int4()), 0);
        assert_eq!(z(QuantScheme::uint4()), 8);
        let p = range_qparams(&QuantScheme::int8().symmetric(), -1.0, 2.0).unwrap();
        assert_eq!(p.scale, (4.0f64 / 254.0) as f32);
    }

    #[test]
    fn asymmetric_ranges_include_zero() {
        // [1, 2] widens to [0, 2]: zero point at qmin.
        let p = range_qparams(&QuantScheme::uint8(), 1.0, 2.0).unwrap();
        assert_eq!(p, ScaleZp { scale: (2.0f64 / 255.0) as f32, zero_point: 0 });
        // [-3, -1] widens to [-3, 0]: zero point at qmax.
        let p = range_qparams(&QuantScheme::int8(), -3.0, -1.0).unwrap();
        assert_eq!(p, ScaleZp { scale: (3.0f64 / 255.0) as f32, zero_point: 127 });
        // Matches the runtime's DynamicQuantizeLinear for uint8.
        let (s, z) = core::dynamic_qparams_u8(-1.0, 3.0);
        let p = range_qparams(&QuantScheme::uint8(), -1.0, 3.0).unwrap();
        assert_eq!((p.scale, p.zero_point), (s, z as i32));
    }

    #[test]
    fn reduce_range_halves_the_grid() {
        let p = range_qparams(&QuantScheme::uint8().reduce_range(), 0.0, 127.0).unwrap();
        assert_eq!(p, ScaleZp { scale: 1.0, zero_point: 0 });
        let p = range_qparams(&QuantScheme::int8().symmetric().reduce_range(), -6.4, 3.0).unwrap();
        assert_eq!(p.scale, (12.8f64 / 128.0) as f32);
    }

    #[test]
    fn mse_range_fit_lowers_the_weight_error_and_never_widens() {
        // Two channels of 512 values in ±0.1 of a 4-bit per-channel weight; the first has one
        // value at 0.3, which min-max lets triple every step.
        let n = 512;
        let mut v: Vec<f32> =
            (0..2 * n).map(|i| ((i * 37 % n) as f32 / (n / 2) as f32 - 1.0) * 0.1).collect();
        v[5] = 0.3;
        let w = Tensor::from_vec(vec![2, n], v).unwrap();
        let sq_err = |s: &QuantScheme| {
            let p = tensor_qparams(&w, s).unwrap();
            let back = fake_quantize(&w, &p).unwrap();
            let e: Vec<f64> = (0..2)
                .map(|c| {
                    (c * n..(c + 1) * n)
                        .map(|i| (w.as_f32().unwrap()[i] - back.as_f32().unwrap()[i]) as f64)
                        .map(|d| d * d)
                        .sum()
                })
                .collect();
            (p.scales().to_vec(), e)
        };
        let minmax = QuantScheme::int4().symmetric().per_channel(0);
        let mse = minmax.with_range_fit(RangeFit::Mse);
        assert!(mse.to_string().ends_with("mse-range"), "{mse}");
        let ((s0, e0), (s1, e1)) = (sq_err(&minmax), sq_err(&mse));
        for c in 0..2 {
            assert!(
                s1[c] <= s0[c] && e1[c] <= e0[c],
                "channel {c}: {s0:?}/{e0:?} vs {s1:?}/{e1:?}"
            );
        }
        assert!(e1[0] < 0.7 * e0[0], "the outlier channel: {} -> {}", e0[0], e1[0]);
    }

    #[test]
    fn degenerate_ranges_give_safe_parameters() {
        for s in [QuantScheme::uint8(), QuantScheme::int8().symmetric(), QuantScheme::int4()] {
            assert_eq!(range_qparams(&s, 0.0, 0.0).unwrap(), ScaleZp { scale: 1.0, zero_point: 0 });
            let tiny = range_qparams(&s, 0.0, 1e-44).unwrap();
            assert_eq!(tiny, ScaleZp { scale: 1.0, zero_point: 0 });
            // A constant activation still gets a usable scale.
            let c = range_qparams(&s, 5.0, 5.0).unwrap();
            assert!(c.scale.is_finite() && c.scale > 0.0);
        }
        let huge = range_qparams(&QuantScheme::int4(), -f32::MAX, f32::MAX).unwrap();
        assert!(huge.scale.is_finite() && huge.scale > 0.0);
        for (a, b) in [(f32::NAN, 1.0), (0.0, f32::INFINITY), (f32::NEG_INFINITY, 0.0)] {
            let e = range_qparams(&QuantScheme::uint8(), a, b).unwrap_err();
            assert!(matches!(e, QuantError::NonFiniteRange { .. }), "{e}");
        }
        assert!(range_qparams(&QuantScheme::fp16(), 0.0, 1.0).is_err());
    }

    #[test]
    fn float8_scales_map_absmax_to_the_largest_value() {
        let p = range_qparams(&QuantScheme::fp8_e4m3fn(), -896.0, 10.0).unwrap();
        assert_eq!(p, ScaleZp { scale: 2.0, zero_point: 0 });
        let p = range_qparams(&QuantScheme::fp8_e5m2(), 0.0, 0.0).unwrap();
        assert_eq!(p.scale, 1.0);
        let x = Tensor::from_vec(vec![3], vec![-896.0f32, 1.0, 448.0]).unwrap();
        let q = quantize_tensor(&x, &QuantScheme::fp8_e4m3fn()).unwrap();
        let back = dequantize(&q.values, &q.params).unwrap();
        assert_eq!(back.as_f32().unwrap(), &[-896.0, 1.0, 448.0]);
    }

    #[test]
    fn per_channel_and_per_block_layouts() {
        let x = Tensor::from_vec(vec![2, 3], vec![1.0f32, -2.0, 3.0, 0.5, 0.25, -4.0]).unwrap();
        let p = tensor_qparams(&x, &QuantScheme::int8().symmetric().per_channel(1)).unwrap();
        assert_eq!(p.scale.shape(), &[3]);
        assert_eq!(p.scales(), &[1.0 / 127.0, 2.0 / 127.0, 4.0 / 127.0]);
        assert_eq!(p.axis, Some(1));
        let p = tensor_qparams(&x, &QuantScheme::uint4().per_block(-1, 2)).unwrap();
        assert_eq!(p.scale.shape(), &[2, 2]);
        assert_eq!(p.zero_point.dtype(), DType::U4);
        assert_eq!((p.axis, p.block_size), (Some(1), Some(2)));
        // Block [1, -2] → [-2, 1]: scale 3/15, zero point round(10) = 10.
        assert_eq!(p.scales()[0], 0.2);
        assert_eq!(p.zero_points()[0], 10);
        // Block [3] alone: [0, 3].
        assert_eq!(p.scales()[1], 0.2);
        assert_eq!(p.zero_points()[1], 0);
    }

    #[test]
    fn quantize_tensor_rejects_non_finite_weights() {
        let x = Tensor::from_vec(vec![2], vec![1.0f32, f32::NAN]).unwrap();
        let e = quantize_tensor(&x, &QuantScheme::int8()).unwrap_err();
        assert!(matches!(e, QuantError::NonFiniteData { index: 1, .. }), "{e}");
    }

    #[test]
    fn all_zero_weight_quantizes_to_zero_point() {
        let x = Tensor::zeros(DType::F32, vec![4, 2]);
        let q = quantize_tensor(&x, &QuantScheme::uint8().per_channel(0)).unwrap();
        assert!(q.params.scales().iter().all(|&s| s == 1.0));
        assert_eq!(q.values.as_slice::<u8>().unwrap(), &[0; 8]);
    }

    /// Runs one ONNX `QuantizeLinear` (opset 21) through lowbit's engine.
    fn engine_quantize(x: &Tensor, p: &QParams) -> Tensor {
        let mut attribute = Vec::new();
        let int_attr = |name: &str, i: i64| pb::AttributeProto {
            name: name.into(),
            r#type: pb::attribute_proto::AttributeType::Int as i32,
            i,
            ..Default::default()
        };
        if let Some(a) = p.axis {
            attribute.push(int_attr("axis", a as i64));
        }
        if let Some(b) = p.block_size {
            attribute.push(int_attr("block_size", b as i64));
        }
        let vi = |name: &str, elem_type: i32| pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type,
                    shape: None,
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let model = pb::ModelProto {
            ir_version: 10,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 21 }],
            graph: Some(pb::GraphProto {
                node: vec![pb::NodeProto {
                    op_type: "QuantizeLinear".into(),
                    name: "q".into(),
                    input: vec!["x".into(), "scale".into(), "zp".into()],
                    output: vec!["y".into()],
                    attribute,
                    ..Default::default()
                }],
                initializer: vec![
                    tensor_to_proto("scale", &p.scale),
                    tensor_to_proto("zp", &p.zero_point),
                ],
                input: vec![vi("x", 1)],
                output: vec![vi("y", p.dtype.onnx_id())],
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = Session::new(&model, &SessionOptions::with_threads(1)).unwrap();
        s.run(vec![("x".into(), x.clone())]).unwrap().remove(0).1
    }

    #[test]
    fn ties_round_to_even_exactly_like_the_engine() {
        // Values at exact half steps of scale 0.5 (zero point 3).
        let x: Vec<f32> = (-8..8).map(|k| k as f32 * 0.25).collect();
        let x = Tensor::from_vec(vec![16], x).unwrap();
        let p = QParams::per_tensor(DType::U8, ScaleZp { scale: 0.5, zero_point: 3 }).unwrap();
        let ours = quantize(&x, &p).unwrap();
        assert_eq!(ours, engine_quantize(&x, &p));
        assert_eq!(&ours.as_slice::<u8>().unwrap()[..6], &[0, 0, 0, 1, 1, 1]);
        let fp8 = tensor_qparams(&x, &QuantScheme::fp8_e5m2()).unwrap();
        assert_eq!(quantize(&x, &fp8).unwrap(), engine_quantize(&x, &fp8));
    }

    /// `(rmin, rmax, type, symmetric, reduce_range, scale bits, zero point)` from ONNX Runtime
    /// 1.32's `compute_scale_zp`, generated with (`.venv`, numpy float32 bounds):
    ///
    /// ```python
    /// for lo, hi in cases: for name, t in types: for sym in (False, True): for rr in (False, True):
    ///     qmin, qmax = get_qmin_qmax_for_qType(t, rr, sym)
    ///     zp, s = compute_scale_zp(np.float32(lo), np.float32(hi), qmin, qmax, sym)
    ///     print(lo, hi, name, sym, rr, hex(np.float32(s).view(np.uint32)), int(zp))
    /// ```
    #[rustfmt::skip]
    const ORT_SCALE_ZP: &[(f32, f32, &str, bool, bool, u32, i32)] = &[
    (-1.3, 2.7, "int8", false, false, 0x3c808081, -45),
    (-1.3, 2.7, "int8", false, true, 0x3d000000, -22),
    (-1.3, 2.7, "int8", true, false, 0x3cae291f, 0),
    (-1.3, 2.7, "int8", true, true, 0x3d2ccccd, 0),
    (-1.3, 2.7, "uint8", false, false, 0x3c808081, 83),
    (-1.3, 2.7, "uint8", false, true, 0x3d010204, 41),
    (-1.3, 2.7, "uint8", true, false, 0x3cad7a47, 128),
    (-1.3, 2.7, "uint8", true, true, 0x3d2e291f, 64),
    (-1.3, 2.7, "int16", false, false, 0x38800080, -11469),
    (-1.3, 2.7, "int16", false, true, 0x39000000, -5734),
    (-1.3, 2.7, "int16", true, false, 0x38acce27, 0),
    (-1.3, 2.7, "int16", true, true, 0x392ccccd, 0),
    (-1.3, 2.7, "uint16", false, false, 0x38800080, 21299),
    (-1.3, 2.7, "uint16", false, true, 0x39000100, 10649),
    (-1.3, 2.7, "uint16", true, false, 0x38accd7a, 32768),
    (-1.3, 2.7, "uint16", true, true, 0x392cce27, 16384),
    (-1.3, 2.7, "int4", false, false, 0x3e888889, -3),
    (-1.3, 2.7, "int4", false, true, 0x3f124925, -2),
    (-1.3, 2.7, "int4", true, false, 0x3eb851ec, 0),
    (-1.3, 2.7, "int4", true, true, 0x3f457c58, 0),
    (-1.3, 2.7, "uint4", false, false, 0x3e888889, 5),
    (-1.3, 2.7, "uint4", false, true, 0x3f124925, 2),
    (-1.3, 2.7, "uint4", true, false, 0x3eb851ec, 8),
    (-1.3, 2.7, "uint4", true, true, 0x3f457c58, 4),
    (0.1, 5.3, "int8", false, false, 0x3caa43de, -128),
    (0.1, 5.3, "int8", false, true, 0x3d29999a, -64),
    (0.1, 5.3, "int8", true, false, 0x3d2aef79, 0),
    (0.1, 5.3, "int8", true, true, 0x3da9999a, 0),
    (0.1, 5.3, "uint8", false, false, 0x3caa43de, 0),
    (0.1, 5.3, "uint8", false, true, 0x3d2aef79, 0),
    (0.1, 5.3, "uint8", true, false, 0x3d2a43de, 128),
    (0.1, 5.3, "uint8", true, true, 0x3daaef79, 64),
    (0.1, 5.3, "int16", false, false, 0x38a99a44, -32768),
    (0.1, 5.3, "int16", false, true, 0x3929999a, -16384),
    (0.1, 5.3, "int16", true, false, 0x39299aed, 0),
    (0.1, 5.3, "int16", true, true, 0x39a9999a, 0),
    (0.1, 5.3, "uint16", false, false, 0x38a99a44, 0),
    (0.1, 5.3, "uint16", false, true, 0x39299aed, 0),
    (0.1, 5.3, "uint16", true, false, 0x39299a44, 32768),
    (0.1, 5.3, "uint16", true, true, 0x39a99aed, 16384),
    (0.1, 5.3, "int4", false, false, 0x3eb4e81c, -8),
    (0.1, 5.3, "int4", false, true, 0x3f41d41e, -4),
    (0.1, 5.3, "int4", true, false, 0x3f34e81c, 0),
    (0.1, 5.3, "int4", true, true, 0x3fc1d41e, 0),
    (0.1, 5.3, "uint4", false, false, 0x3eb4e81c, 0),
    (0.1, 5.3, "uint4", false, true, 0x3f41d41e, 0),
    (0.1, 5.3, "uint4", true, false, 0x3f34e81c, 8),
    (0.1, 5.3, "uint4", true, true, 0x3fc1d41e, 4),
    (-7.77, -0.01, "int8", false, false, 0x3cf99d74, 127),
    (-7.77, -0.01, "int8", false, true, 0x3d78a3d7, 64),
    (-7.77, -0.01, "int8", true, false, 0x3d7a9909, 0),
    (-7.77, -0.01, "int8", true, true, 0x3df8a3d7, 0),
    (-7.77, -0.01, "uint8", false, false, 0x3cf99d74, 255),
    (-7.77, -0.01, "uint8", false, true, 0x3d7a9909, 127),
    (-7.77, -0.01, "uint8", true, false, 0x3d799d74, 128),
    (-7.77, -0.01, "uint8", true, true, 0x3dfa9909, 64),
    (-7.77, -0.01, "int16", false, false, 0x38f8a4d0, 32767),
    (-7.77, -0.01, "int16", false, true, 0x3978a3d7, 16384),
    (-7.77, -0.01, "int16", true, false, 0x3978a5c8, 0),
    (-7.77, -0.01, "int16", true, true, 0x39f8a3d7, 0),
    (-7.77, -0.01, "uint16", false, false, 0x38f8a4d0, 65535),
    (-7.77, -0.01, "uint16", false, true, 0x3978a5c8, 32767),
    (-7.77, -0.01, "uint16", true, false, 0x3978a4d0, 32768),
    (-7.77, -0.01, "uint16", true, true, 0x39f8a5c8, 16384),
    (-7.77, -0.01, "int4", false, false, 0x3f049ba6, 7),
    (-7.77, -0.01, "int4", false, true, 0x3f8e147b, 3),
    (-7.77, -0.01, "int4", true, false, 0x3f849ba6, 0),
    (-7.77, -0.01, "int4", true, true, 0x400e147b, 0),
    (-7.77, -0.01, "uint4", false, false, 0x3f049ba6, 15),
    (-7.77, -0.01, "uint4", false, true, 0x3f8e147b, 7),
    (-7.77, -0.01, "uint4", true, false, 0x3f849ba6, 8),
    (-7.77, -0.01, "uint4", true, true, 0x400e147b, 4),
    (-0.333, 0.0, "int8", false, false, 0x3aab2a24, 127),
    (-0.333, 0.0, "int8", false, true, 0x3b2a7efa, 64),
    (-0.333, 0.0, "int8", true, false, 0x3b2bd6a7, 0),
    (-0.333, 0.0, "int8", true, true, 0x3baa7efa, 0),
    (-0.333, 0.0, "uint8", false, false, 0x3aab2a24, 255),
    (-0.333, 0.0, "uint8", false, true, 0x3b2bd6a7, 127),
    (-0.333, 0.0, "uint8", true, false, 0x3b2b2a24, 128),
    (-0.333, 0.0, "uint8", true, true, 0x3babd6a7, 64),
    (-0.333, 0.0, "int16", false, false, 0x36aa7fa4, 32767),
    (-0.333, 0.0, "int16", false, true, 0x372a7efa, 16384),
    (-0.333, 0.0, "int16", true, false, 0x372a804f, 0),
    (-0.333, 0.0, "int16", true, true, 0x37aa7efa, 0),
    (-0.333, 0.0, "uint16", false, false, 0x36aa7fa4, 65535),
    (-0.333, 0.0, "uint16", false, true, 0x372a804f, 32767),
    (-0.333, 0.0, "uint16", true, false, 0x372a7fa4, 32768),
    (-0.333, 0.0, "uint16", true, true, 0x37aa804f, 16384),
    (-0.333, 0.0, "int4", false, false, 0x3cb5dcc6, 7),
    (-0.333, 0.0, "int4", false, true, 0x3d42da42, 3),
    (-0.333, 0.0, "int4", true, false, 0x3d35dcc6, 0),
    (-0.333, 0.0, "int4", true, true, 0x3dc2da42, 0),
    (-0.333, 0.0, "uint4", false, false, 0x3cb5dcc6, 15),
    (-0.333, 0.0, "uint4", false, true, 0x3d42da42, 7),
    (-0.333, 0.0, "uint4", true, false, 0x3d35dcc6, 8),
    (-0.333, 0.0, "uint4", true, true, 0x3dc2da42, 4),
    (-123.456, 0.001, "int8", false, false, 0x3ef7e1de, 127),
    (-123.456, 0.001, "int8", false, true, 0x3f76e9fc, 64),
    (-123.456, 0.001, "int8", true, false, 0x3f78db2f, 0),
    (-123.456, 0.001, "int8", true, true, 0x3ff6e979, 0),
    (-123.456, 0.001, "uint8", false, false, 0x3ef7e1de, 255),
    (-123.456, 0.001, "uint8", false, true, 0x3f78dbb3, 127),
    (-123.456, 0.001, "uint8", true, false, 0x3f77e15a, 128),
    (-123.456, 0.001, "uint8", true, true, 0x3ff8db2f, 64),
    (-123.456, 0.001, "int16", false, false, 0x3af6eaf3, 32766),
    (-123.456, 0.001, "int16", false, true, 0x3b76e9fc, 16384),
    (-123.456, 0.001, "int16", true, false, 0x3b76eb67, 0),
    (-123.456, 0.001, "int16", true, true, 0x3bf6e979, 0),
    (-123.456, 0.001, "uint16", false, false, 0x3af6eaf3, 65534),
    (-123.456, 0.001, "uint16", false, true, 0x3b76ebea, 32767),
    (-123.456, 0.001, "uint16", true, false, 0x3b76ea70, 32768),
    (-123.456, 0.001, "uint16", true, true, 0x3bf6eb67, 16384),
    (-123.456, 0.001, "int4", false, false, 0x4103affe, 7),
    (-123.456, 0.001, "int4", false, true, 0x418d17fe, 3),
    (-123.456, 0.001, "int4", true, false, 0x4183afb8, 0),
    (-123.456, 0.001, "int4", true, true, 0x420d17b3, 0),
    (-123.456, 0.001, "uint4", false, false, 0x4103affe, 15),
    (-123.456, 0.001, "uint4", false, true, 0x418d17fe, 7),
    (-123.456, 0.001, "uint4", true, false, 0x4183afb8, 8),
    (-123.456, 0.001, "uint4", true, true, 0x420d17b3, 4),
    (-0.001, 3e-07, "int8", false, false, 0x3683a020, 127),
    (-0.001, 3e-07, "int8", false, true, 0x37031c80, 64),
    (-0.001, 3e-07, "int8", true, false, 0x37041aa4, 0),
    (-0.001, 3e-07, "int8", true, true, 0x3783126f, 0),
    (-0.001, 3e-07, "uint8", false, false, 0x3683a020, 255),
    (-0.001, 3e-07, "uint8", false, true, 0x370424ca, 127),
    (-0.001, 3e-07, "uint8", true, false, 0x37039605, 128),
    (-0.001, 3e-07, "uint8", true, true, 0x37841aa4, 64),
    (-0.001, 3e-07, "int16", false, false, 0x32831d03, 32747),
    (-0.001, 3e-07, "int16", false, true, 0x33031c80, 16374),
    (-0.001, 3e-07, "int16", true, false, 0x33031375, 0),
    (-0.001, 3e-07, "int16", true, true, 0x3383126f, 0),
    (-0.001, 3e-07, "uint16", false, false, 0x32831d03, 65515),
    (-0.001, 3e-07, "uint16", false, true, 0x33031d86, 32757),
    (-0.001, 3e-07, "uint16", true, false, 0x330312f2, 32768),
    (-0.001, 3e-07, "uint16", true, true, 0x33831375, 16384),
    (-0.001, 3e-07, "int4", false, false, 0x388bda22, 7),
    (-0.001, 3e-07, "int4", false, true, 0x3915d76e, 3),
    (-0.001, 3e-07, "int4", true, false, 0x390bcf65, 0),
    (-0.001, 3e-07, "int4", true, true, 0x3995cbed, 0),
    (-0.001, 3e-07, "uint4", false, false, 0x388bda22, 15),
    (-0.001, 3e-07, "uint4", false, true, 0x3915d76e, 7),
    (-0.001, 3e-07, "uint4", true, false, 0x390bcf65, 8),
    (-0.001, 3e-07, "uint4", true, true, 0x3995cbed, 4),
    (-25000.0, 1700.0, "int8", false, false, 0x42d16969, 111),
    (-25000.0, 1700.0, "int8", false, true, 0x43509800, 56),
    (-25000.0, 1700.0, "int8", true, false, 0x4344d9b3, 0),
    (-25000.0, 1700.0, "int8", true, true, 0x43c35000, 0),
    (-25000.0, 1700.0, "uint8", false, false, 0x42d16969, 239),
    (-25000.0, 1700.0, "uint8", false, true, 0x43523c79, 119),
    (-25000.0, 1700.0, "uint8", true, false, 0x43441414, 128),
    (-25000.0, 1700.0, "uint8", true, true, 0x43c4d9b3, 64),
    (-25000.0, 1700.0, "int16", false, false, 0x3ed098d1, 28594),
    (-25000.0, 1700.0, "int16", false, true, 0x3f509800, 14298),
    (-25000.0, 1700.0, "int16", true, false, 0x3f435187, 0),
    (-25000.0, 1700.0, "int16", true, true, 0x3fc35000, 0),
    (-25000.0, 1700.0, "uint16", false, false, 0x3ed098d1, 61362),
    (-25000.0, 1700.0, "uint16", false, true, 0x3f5099a1, 30681),
    (-25000.0, 1700.0, "uint16", true, false, 0x3f4350c3, 32768),
    (-25000.0, 1700.0, "uint16", true, true, 0x3fc35187, 16384),
    (-25000.0, 1700.0, "int4", false, false, 0x44de8000, 6),
    (-25000.0, 1700.0, "int4", false, true, 0x456e6492, 3),
    (-25000.0, 1700.0, "int4", true, false, 0x45505555, 0),
    (-25000.0, 1700.0, "int4", true, true, 0x45df36db, 0),
    (-25000.0, 1700.0, "uint4", false, false, 0x44de8000, 14),
    (-25000.0, 1700.0, "uint4", false, true, 0x456e6492, 7),
    (-25000.0, 1700.0, "uint4", true, false, 0x45505555, 8),
    (-25000.0, 1700.0, "uint4", true, true, 0x45df36db, 4),
    ];

    #[test]
    fn scale_and_zero_point_match_onnx_runtime_bit_for_bit() {
        for &(lo, hi, ty, sym, rr, bits, zp) in ORT_SCALE_ZP {
            let s = match ty {
                "int8" => QuantScheme::int8(),
                "uint8" => QuantScheme::uint8(),
                "int16" => QuantScheme::int16(),
                "uint16" => QuantScheme::uint16(),
                "int4" => QuantScheme::int4(),
                _ => QuantScheme::uint4(),
            };
            let s = if sym { s.symmetric() } else { s }.with_reduce_range(rr);
            let p = range_qparams(&s, lo, hi).unwrap();
            assert_eq!((p.scale.to_bits(), p.zero_point), (bits, zp), "[{lo}, {hi}] {s}");
        }
    }

    fn int_scheme() -> impl Strategy<Value = QuantScheme> {
        (0usize..6, any::<bool>(), any::<bool>()).prop_map(|(t, sym, rr)| {
            let s = [
                QuantScheme::int8(),
                QuantScheme::uint8(),
                QuantScheme::int16(),
                QuantScheme::uint16(),
                QuantScheme::int4(),
                QuantScheme::uint4(),
            ][t];
            s.with_mode(if sym {
                crate::scheme::Mode::Symmetric
            } else {
                crate::scheme::Mode::Asymmetric
            })
            .with_reduce_range(rr)
        })
    }

    /// The range a scheme actually covers: `[rmin, rmax]` widened to 0, symmetrized.
    fn covered(s: &QuantScheme, a: f32, b: f32) -> (f32, f32) {
        let (lo, hi) = (a.min(b).min(0.0), a.max(b).max(0.0));
        if s.is_symmetric() {
            let m = lo.abs().max(hi);
            (-m, m)
        } else {
            (lo, hi)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn round_trip_error_is_at_most_half_a_step_inside_the_range(
            s in int_scheme(),
            a in -1e4f32..1e4,
            b in -1e4f32..1e4,
            t in proptest::collection::vec(0f32..=1.0, 1..64),
        ) {
            let (lo, hi) = covered(&s, a, b);
            let xs: Vec<f32> = t.iter().map(|&t| lo + (hi - lo) * t).collect();
            let x = Tensor::from_vec(vec![xs.len()], xs.clone()).unwrap();
            let q = quantize_tensor(&x, &s.per_tensor()).unwrap();
            let p = QParams::from_range(&s, a.min(b), a.max(b)).unwrap();
            let back = fake_quantize(&x, &p).unwrap();
            let scale = p.scales()[0];
            prop_assert!(scale.is_finite() && scale > 0.0);
            let tol = scale * 0.5 + 1e-5 * (hi - lo).max(scale);
            for (x, y) in xs.iter().zip(back.as_f32().unwrap()) {
                prop_assert!((x - y).abs() <= tol, "x {x} -> {y}, scale {scale}, {s}");
            }
            let qp = &q.params;
            prop_assert!(qp.scales()[0] > 0.0 && qp.scales()[0].is_finite());
        }

        #[test]
        fn values_outside_the_range_saturate(
            s in int_scheme(),
            a in -1e4f32..1e4,
            b in -1e4f32..1e4,
            beyond in 0f32..1e3,
        ) {
            let (lo, hi) = covered(&s, a, b);
            prop_assume!(hi - lo > 1e-3);
            let p = QParams::from_range(&s, a.min(b), a.max(b)).unwrap();
            // Further out than any grid is wide: ONNX saturates to the type's limits.
            let far = p.scales()[0] * (70000.0 + beyond);
            let x = Tensor::from_vec(vec![2], vec![lo - far, hi + far]).unwrap();
            let q = core::int_values(quantize(&x, &p).unwrap().data()).unwrap();
            let (tmin, tmax) = core::int_range(s.dtype()).unwrap();
            prop_assert_eq!(q, vec![tmin, tmax]);
        }

        #[test]
        fn weight_quantization_matches_the_engine_bit_for_bit(
            s in int_scheme(),
            dims in proptest::collection::vec(1usize..5, 1..4),
            gran in 0usize..3,
            axis_pick in 0usize..8,
            block in 1usize..4,
            seed in proptest::collection::vec(-100f32..100.0, 64),
        ) {
            let n: usize = dims.iter().product();
            let xs: Vec<f32> = (0..n).map(|i| seed[i % seed.len()] * (1.0 + i as f32 * 0.01)).collect();
            let x = Tensor::from_vec(dims.clone(), xs).unwrap();
            let axis = (axis_pick % dims.len()) as i64;
            let s = match gran {
                0 => s.per_tensor(),
                1 => s.per_channel(axis),
                _ => s.per_block(axis, block),
            };
            let q = quantize_tensor(&x, &s).unwrap();
            prop_assert_eq!(&q.values, &engine_quantize(&x, &q.params), "{}", s);
            // A uniformly scaled copy hits different rounding cases against the same params.
            let x2 = Tensor::from_vec(dims, x.as_f32().unwrap().iter().map(|v| v * 1.37).collect()).unwrap();
            prop_assert_eq!(quantize(&x2, &q.params).unwrap(), engine_quantize(&x2, &q.params));
        }
    }
}
