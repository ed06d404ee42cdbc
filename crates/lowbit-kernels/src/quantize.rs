//! The quantization math core: float ↔ integer/float8 with a scale and a zero point.
//!
//! Every quantize/dequantize in lowbit (the engine's `QuantizeLinear`/`DequantizeLinear`, the
//! quantizer's fake-quant and qparams) goes through this module, so there is exactly one
//! definition of the formulas:
//!
//! * quantize, integer targets: `q = saturate(round_half_even(x / scale) + zero_point)`.
//!   `x / scale` is computed in **f32** (as ONNX Runtime does), rounded half to even
//!   ([`f32::round_ties_even`]), the zero point is added, and the result is clamped to the target
//!   range (int8 `[-128, 127]`, uint8 `[0, 255]`, int16, uint16, int4 `[-8, 7]`, uint4 `[0, 15]`).
//!   A NaN input becomes 0 (ONNX leaves it undefined).
//! * quantize, float8 targets (E4M3FN, E5M2): `q = cast(x / scale + zero_point)` with round half to
//!   even and the ONNX `saturate` flag (see [`lowbit_tensor::float8`]).
//! * dequantize: `x = (q - zero_point) * scale`, the difference taken exactly in i32, the
//!   product in f32.
//! * requantize (integer matmul/conv output stage): `q = saturate(round_half_even(acc *
//!   multiplier) + zero_point)` with `multiplier = in_scale * w_scale / out_scale` in f32.
//!
//! Parameters are laid out per tensor, per axis, or in blocks along one axis (opset 21
//! `block_size`); [`ParamMap`] maps an element's flat index to its parameter's flat index, the
//! only place the three layouts differ.
//!
//! ```
//! use lowbit_kernels::quantize::{quantize_one, dequantize_one};
//! assert_eq!(quantize_one(2.5, 1.0, 0, -128, 127), 2); // ties go to even
//! assert_eq!(quantize_one(1000.0, 1.0, 0, -128, 127), 127); // saturates
//! assert_eq!(dequantize_one(130, 0.5, 128), 1.0);
//! ```

use lowbit_tensor::float8::{E4M3FN, E5M2};
use lowbit_tensor::{DType, TensorData};

/// Which parameter each element of a tensor uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamMap {
    kind: Layout,
    /// Product of the dims after the axis.
    inner: usize,
    /// Size of the quantization axis.
    dim: usize,
    /// Elements per block along the axis (blocked layout only).
    block: usize,
    /// Number of blocks along the axis (blocked layout only).
    blocks: usize,
    /// The quantization axis (per-axis and blocked layouts only).
    axis: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    PerTensor,
    PerAxis,
    Blocked,
}

impl ParamMap {
    /// One scale/zero point for the whole tensor.
    pub fn per_tensor() -> ParamMap {
        ParamMap { kind: Layout::PerTensor, inner: 1, dim: 1, block: 1, blocks: 1, axis: 0 }
    }

    /// Whether one scale/zero point serves every element.
    pub fn is_per_tensor(&self) -> bool {
        self.kind == Layout::PerTensor
    }

    /// One parameter per index along `axis` (parameters have shape `[shape[axis]]`).
    pub fn per_axis(shape: &[usize], axis: usize) -> ParamMap {
        let inner = shape[axis + 1..].iter().product();
        let dim = shape[axis];
        ParamMap { kind: Layout::PerAxis, inner, dim, block: 1, blocks: dim, axis }
    }

    /// One parameter per `block` consecutive elements along `axis`: parameters have the
    /// tensor's shape with `shape[axis]` replaced by `ceil(shape[axis] / block)`.
    pub fn blocked(shape: &[usize], axis: usize, block: usize) -> ParamMap {
        let inner = shape[axis + 1..].iter().product();
        let dim = shape[axis];
        let block = block.max(1);
        ParamMap { kind: Layout::Blocked, inner, dim, block, blocks: dim.div_ceil(block), axis }
    }

    /// The layout of a `QuantizeLinear`/`DequantizeLinear`'s scale (and zero point) of shape
    /// `scale_shape` over an input of shape `x_shape`, by ONNX's rules (opset 10 → 21):
    /// `block_size > 0` is blocked along `axis` (the scale has the input's shape with that
    /// dimension divided by the block size, rounded up); a single value is per tensor whatever
    /// `axis` says (ONNX Runtime writes `[1]` scales for biases with the default axis 1, which
    /// a 1-D bias does not have); a 1-D scale as long as the input's `axis` is per axis.
    /// A negative `axis` counts from the end.
    pub fn for_qdq(
        x_shape: &[usize],
        scale_shape: &[usize],
        axis: i64,
        block_size: i64,
    ) -> Result<ParamMap, QuantizeError> {
        let rank = x_shape.len();
        let resolve = |axis: i64| -> Result<usize, QuantizeError> {
            let a = if axis < 0 { axis + rank as i64 } else { axis };
            (a >= 0 && a < rank.max(1) as i64).then_some(a as usize).ok_or_else(|| {
                QuantizeError(format!("axis {axis} is out of range for rank {rank}"))
            })
        };
        let scale_len: usize = scale_shape.iter().product();
        if block_size > 0 {
            let a = resolve(axis)?;
            let mut want = x_shape.to_vec();
            if let Some(d) = want.get_mut(a) {
                *d = d.div_ceil(block_size as usize);
            }
            if scale_shape != want.as_slice() || rank == 0 {
                return Err(QuantizeError(format!(
                    "blocked scale shape {scale_shape:?} should be {want:?}"
                )));
            }
            return Ok(ParamMap::blocked(x_shape, a, block_size as usize));
        }
        if scale_shape.len() <= 1 && scale_len == 1 {
            return Ok(ParamMap::per_tensor());
        }
        if scale_shape.len() == 1 {
            if rank == 0 {
                return Err(QuantizeError("a 1-D scale needs an input of rank >= 1".into()));
            }
            let a = resolve(axis)?;
            if scale_len == x_shape[a] {
                return Ok(ParamMap::per_axis(x_shape, a));
            }
            return Err(QuantizeError(format!(
                "scale has {scale_len} values, axis {a} of {x_shape:?} has {}",
                x_shape[a]
            )));
        }
        Err(QuantizeError(format!(
            "scale shape {scale_shape:?} fits neither per-tensor nor per-axis quantization"
        )))
    }

    /// The quantization axis: `None` per tensor.
    pub fn axis(&self) -> Option<usize> {
        (self.kind != Layout::PerTensor).then_some(self.axis)
    }

    /// Number of parameters the layout expects for a tensor of `numel` elements.
    pub fn num_params(&self, numel: usize) -> usize {
        match self.kind {
            Layout::PerTensor => 1,
            Layout::PerAxis => self.dim,
            Layout::Blocked => {
                let outer = numel.checked_div(self.dim * self.inner).unwrap_or(0);
                outer * self.blocks * self.inner
            }
        }
    }

    /// The parameter index of element `i` (flat, row-major).
    #[inline]
    pub fn index(&self, i: usize) -> usize {
        match self.kind {
            Layout::PerTensor => 0,
            Layout::PerAxis => (i / self.inner) % self.dim,
            Layout::Blocked => {
                let inner_i = i % self.inner;
                let a = (i / self.inner) % self.dim;
                let outer = i / (self.inner * self.dim);
                (outer * self.blocks + a / self.block) * self.inner + inner_i
            }
        }
    }
}

/// The integer range `[min, max]` of an integer quantization type, `None` for other types.
pub fn int_range(dtype: DType) -> Option<(i32, i32)> {
    Some(match dtype {
        DType::I8 => (-128, 127),
        DType::U8 => (0, 255),
        DType::I16 => (-32768, 32767),
        DType::U16 => (0, 65535),
        DType::I4 => (-8, 7),
        DType::U4 => (0, 15),
        DType::I32 => (i32::MIN, i32::MAX),
        _ => return None,
    })
}

/// The output-channel axis of a weight of rank `rank` read by `op_type` (in the weight's
/// input slot), along which it is quantized per channel: 0 for Conv (`[M, C/group, k…]`), 1 for
/// ConvTranspose (`[C, M/group, k…]`), for Gemm 0 with `transB=1` (`[N, K]`) and 1 without
/// (`[K, N]`), the last axis for MatMul (`[…, K, N]`), 1 for the `W`/`R` weights of LSTM, GRU
/// and RNN (`[directions, gates·hidden, K]`: one row per gate unit). `None` for other ops and
/// ranks.
pub fn weight_channel_axis(op_type: &str, trans_b: bool, rank: usize) -> Option<usize> {
    match op_type {
        "LSTM" | "GRU" | "RNN" if rank == 3 => Some(1),
        "Conv" if rank >= 3 => Some(0),
        "ConvTranspose" if rank >= 3 => Some(1),
        "Gemm" if rank == 2 => Some(if trans_b { 0 } else { 1 }),
        "MatMul" if rank >= 2 => Some(rank - 1),
        _ => None,
    }
}

/// The real range `[lo, hi]` quantizing to `dtype` with one `scale` and zero point saturates
/// to: `[(qmin − zp)·scale, (qmax − zp)·scale]` for integer types, the largest finite values
/// times `scale` for float8 (what the extreme inputs quantize and dequantize to).
pub fn representable_range(
    dtype: DType,
    scale: f32,
    zero_point: Option<&TensorData>,
) -> Result<(f32, f32), QuantizeError> {
    let map = ParamMap::per_tensor();
    let q = quantize(&[f32::MIN, f32::MAX], &[scale], zero_point, &map, dtype, true)?;
    let ends = dequantize(&q, &[scale], zero_point, &map)?;
    Ok((ends[0], ends[1]))
}

/// Round half to even, as [`f32::round_ties_even`] but without its libm call (`rintf`: baseline
/// x86-64 has no SSE4.1 `roundss`; it was 7 % of running a static int8 model). Adding and
/// subtracting 2^23 to a magnitude below 2^23 leaves the nearest integer under the default
/// rounding mode, ties to even (the sum's ulp is 1); magnitudes from 2^23 up (and NaN) are
/// already integers and pass through. Branch-free, so loops over it vectorize: a branch to
/// the library call got if-converted and called `rintf` for every element.
#[inline(always)]
pub fn round_half_even(x: f32) -> f32 {
    const TWO_23: f32 = 8_388_608.0;
    let a = x.abs();
    let r = (a + TWO_23) - TWO_23;
    let r = if a < TWO_23 { r } else { a };
    r.copysign(x)
}

/// Quantizes one value: `saturate(round_half_even(x / scale) + zero_point)` into `[qmin, qmax]`.
#[inline]
pub fn quantize_one(x: f32, scale: f32, zero_point: i32, qmin: i32, qmax: i32) -> i32 {
    let v = round_half_even(x / scale) + zero_point as f32;
    // NaN compares false both ways and ends up as 0 through `as`.
    let v = if v < qmin as f32 {
        qmin as f32
    } else if v > qmax as f32 {
        qmax as f32
    } else {
        v
    };
    // `as` saturates at the i32 bounds, so the i32 range itself is safe.
    v as i32
}

/// Dequantizes one value: `(q - zero_point) * scale`.
#[inline]
pub fn dequantize_one(q: i32, scale: f32, zero_point: i32) -> f32 {
    (q.wrapping_sub(zero_point)) as f32 * scale
}

/// Requantizes an i32 accumulator: `saturate(round_half_even(acc * multiplier) + zero_point)`,
/// the output stage of integer matmul/conv (`multiplier = in_scale * w_scale / out_scale`,
/// computed by the caller in f32 in that order, as ONNX Runtime does).
#[inline]
pub fn requantize_one(acc: i32, multiplier: f32, zero_point: i32, qmin: i32, qmax: i32) -> i32 {
    let v = round_half_even(acc as f32 * multiplier) + zero_point as f32;
    if v < qmin as f32 {
        qmin
    } else if v > qmax as f32 {
        qmax
    } else {
        v as i32
    }
}

/// Per-channel requantize multipliers `in_scale · w_scale[c] / out_scale`, in that order of f32
/// operations (ONNX Runtime's), for [`requantize_one`] and the integer kernels' output stage.
pub fn requantize_multipliers(in_scale: f32, w_scales: &[f32], out_scale: f32) -> Vec<f32> {
    w_scales.iter().map(|&s| in_scale * s / out_scale).collect()
}

/// The scales of an int32 bias: `in_scale · w_scale[c]` (zero point 0), one per weight scale.
pub fn bias_scales(in_scale: f32, w_scales: &[f32]) -> Vec<f32> {
    w_scales.iter().map(|&s| in_scale * s).collect()
}

/// The largest bias code [`quantize_bias`] writes: half of the int32 range, so that adding the
/// accumulator (bounded by `K · 255 · 127`) cannot wrap in realistic layers.
pub const BIAS_CODE_LIMIT: f32 = (1u32 << 30) as f32;

/// A bias channel whose int32 code would exceed [`BIAS_CODE_LIMIT`] (its weight scale is tiny
/// next to the bias: the weights of that channel are all near zero).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BiasOverflow {
    pub channel: usize,
    pub bias: f32,
    pub scale: f32,
}

/// Quantizes a conv/matmul bias to int32 with `scale[c] = in_scale · w_scales[c]` (one weight
/// scale for all channels, or one per channel), zero point 0: `round_half_even(b / scale)`.
/// The one bias formula of lowbit: the quantizer writes it and the engine's fusion computes it
/// for float biases. A code beyond [`BIAS_CODE_LIMIT`] (or a non-finite one) is an error naming
/// the channel, for the caller to handle (the quantizer widens that channel's weight scale, the
/// engine keeps the op in float).
pub fn quantize_bias(
    bias: &[f32],
    in_scale: f32,
    w_scales: &[f32],
) -> Result<Vec<i32>, BiasOverflow> {
    let scale_of = |c: usize| in_scale * w_scales[if w_scales.len() == 1 { 0 } else { c }];
    bias.iter()
        .enumerate()
        .map(|(c, &b)| {
            let scale = scale_of(c);
            let q = round_half_even(b / scale);
            if q.is_finite() && q.abs() <= BIAS_CODE_LIMIT {
                Ok(q as i32)
            } else {
                Err(BiasOverflow { channel: c, bias: b, scale })
            }
        })
        .collect()
}

/// The smallest weight scale per channel that lets [`quantize_bias`] code `bias` with input
/// scale `in_scale` (ONNX Runtime's quantizer widens such weight scales too): the channels
/// whose weights are all near zero get a scale their bias fits under.
pub fn min_weight_scales_for_bias(bias: &[f32], in_scale: f32) -> Vec<f32> {
    // A little above the exact bound, so f32 rounding of s_in · s_w cannot push a code past it.
    bias.iter().map(|&b| b.abs() / (in_scale * BIAS_CODE_LIMIT) * (1.0 + 1e-5)).collect()
}

/// The integer values of an integer tensor's storage, widened to i32 (`None` for other types
/// or for 32/64-bit storage that would not fit).
pub fn int_values(d: &TensorData) -> Option<Vec<i32>> {
    Some(match d {
        TensorData::I8(v) | TensorData::I4(v) => v.iter().map(|&x| x as i32).collect(),
        TensorData::U8(v) | TensorData::U4(v) => v.iter().map(|&x| x as i32).collect(),
        TensorData::I16(v) => v.iter().map(|&x| x as i32).collect(),
        TensorData::U16(v) => v.iter().map(|&x| x as i32).collect(),
        TensorData::I32(v) => v.clone(),
        _ => return None,
    })
}

/// Wraps already-saturated i32 values as storage of `dtype` (an integer quantization type).
fn wrap_ints(q: Vec<i32>, dtype: DType) -> Option<TensorData> {
    Some(match dtype {
        DType::I8 => TensorData::I8(q.into_iter().map(|x| x as i8).collect()),
        DType::U8 => TensorData::U8(q.into_iter().map(|x| x as u8).collect()),
        DType::I16 => TensorData::I16(q.into_iter().map(|x| x as i16).collect()),
        DType::U16 => TensorData::U16(q.into_iter().map(|x| x as u16).collect()),
        DType::I4 => TensorData::I4(q.into_iter().map(|x| x as i8).collect()),
        DType::U4 => TensorData::U4(q.into_iter().map(|x| x as u8).collect()),
        DType::I32 => TensorData::I32(q),
        _ => return None,
    })
}

/// A failure of the quantization math: a type it does not handle or parameters that do not
/// match the layout.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeError(pub String);

impl std::fmt::Display for QuantizeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for QuantizeError {}

fn check_params(
    map: &ParamMap,
    n: usize,
    scale: usize,
    zp: Option<usize>,
) -> Result<(), QuantizeError> {
    let want = map.num_params(n);
    if n > 0 && scale != want {
        return Err(QuantizeError(format!("expected {want} scale values, got {scale}")));
    }
    if let Some(z) = zp {
        if n > 0 && z != want {
            return Err(QuantizeError(format!("expected {want} zero points, got {z}")));
        }
    }
    Ok(())
}

/// Quantizes `x` to `dtype` (int8/uint8/int16/uint16/int4/uint4/int32, or float8 E4M3FN/E5M2).
/// `zero_point` must be storage of `dtype` laid out like `scale`; `None` means zero.
/// `saturate` matters for float8 targets only.
pub fn quantize(
    x: &[f32],
    scale: &[f32],
    zero_point: Option<&TensorData>,
    map: &ParamMap,
    dtype: DType,
    saturate: bool,
) -> Result<TensorData, QuantizeError> {
    check_params(map, x.len(), scale.len(), zero_point.map(|z| z.len()))?;
    if let Some(z) = zero_point {
        if z.dtype() != dtype {
            return Err(QuantizeError(format!(
                "zero point is {}, expected the output type {dtype}",
                z.dtype()
            )));
        }
    }
    if let Some((qmin, qmax)) = int_range(dtype) {
        let zp = match zero_point {
            Some(z) => int_values(z).ok_or_else(|| QuantizeError("bad zero point".into()))?,
            None => vec![0; scale.len()],
        };
        if map.is_per_tensor() {
            // The common case, straight into the storage type (no index arithmetic, no i32
            // buffer): most of a QDQ model's run time in lowbit's engine was here.
            let (s, z) = (scale[0], zp[0]);
            match dtype {
                DType::U8 => {
                    let mut out = vec![0u8; x.len()];
                    quantize_bytes(x, s, z, qmin, qmax, &mut out);
                    return Ok(TensorData::U8(out));
                }
                DType::I8 => {
                    let mut out = vec![0u8; x.len()];
                    quantize_bytes(x, s, z, qmin, qmax, &mut out);
                    return Ok(TensorData::I8(out.into_iter().map(|b| b as i8).collect()));
                }
                _ => {}
            }
        }
        let q: Vec<i32> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let p = map.index(i);
                quantize_one(v, scale[p], zp[p], qmin, qmax)
            })
            .collect();
        return wrap_ints(q, dtype)
            .ok_or_else(|| QuantizeError(format!("cannot quantize to {dtype}")));
    }
    let fmt = match dtype {
        DType::F8E4M3FN => E4M3FN,
        DType::F8E5M2 => E5M2,
        _ => return Err(QuantizeError(format!("cannot quantize to {dtype}"))),
    };
    let zp: Vec<f32> = match zero_point {
        Some(TensorData::F8E4M3FN(z)) | Some(TensorData::F8E5M2(z)) => {
            z.iter().map(|&b| fmt.decode(b)).collect()
        }
        _ => vec![0.0; scale.len()],
    };
    let q: Vec<u8> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let p = map.index(i);
            let y = v / scale[p];
            let y = if zp[p] != 0.0 { y + zp[p] } else { y };
            fmt.encode(y, saturate)
        })
        .collect();
    Ok(if dtype == DType::F8E4M3FN { TensorData::F8E4M3FN(q) } else { TensorData::F8E5M2(q) })
}

/// Dequantizes integer or float8 storage: `(q - zero_point) * scale`, in f32.
/// `zero_point`, when present, must have `q`'s type and `scale`'s layout.
pub fn dequantize(
    q: &TensorData,
    scale: &[f32],
    zero_point: Option<&TensorData>,
    map: &ParamMap,
) -> Result<Vec<f32>, QuantizeError> {
    check_params(map, q.len(), scale.len(), zero_point.map(|z| z.len()))?;
    if let Some(z) = zero_point {
        if z.dtype() != q.dtype() {
            return Err(QuantizeError(format!(
                "zero point is {}, input is {}",
                z.dtype(),
                q.dtype()
            )));
        }
    }
    if map.is_per_tensor() {
        let z = match zero_point {
            Some(z) => int_values(z).and_then(|v| v.first().copied()),
            None => Some(0),
        };
        let s = scale[0];
        match (q, z) {
            (TensorData::U8(v), Some(z)) => {
                return Ok(v.iter().map(|&b| dequantize_one(b as i32, s, z)).collect())
            }
            (TensorData::I8(v), Some(z)) => {
                return Ok(v.iter().map(|&b| dequantize_one(b as i32, s, z)).collect())
            }
            _ => {}
        }
    }
    if let Some(qv) = int_values(q) {
        let zp = match zero_point {
            Some(z) => int_values(z).ok_or_else(|| QuantizeError("bad zero point".into()))?,
            None => vec![0; scale.len()],
        };
        return Ok(qv
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let p = map.index(i);
                dequantize_one(v, scale[p], zp[p])
            })
            .collect());
    }
    let (fmt, bits) = match q {
        TensorData::F8E4M3FN(b) => (E4M3FN, b),
        TensorData::F8E5M2(b) => (E5M2, b),
        other => return Err(QuantizeError(format!("cannot dequantize {}", other.dtype()))),
    };
    let zp: Vec<f32> = match zero_point {
        Some(TensorData::F8E4M3FN(z)) | Some(TensorData::F8E5M2(z)) => {
            z.iter().map(|&b| fmt.decode(b)).collect()
        }
        _ => vec![0.0; scale.len()],
    };
    Ok(bits
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let p = map.index(i);
            let v = fmt.decode(b);
            let v = if zp[p] != 0.0 { v - zp[p] } else { v };
            v * scale[p]
        })
        .collect())
}

/// [`quantize_one`] over a slice with one scale and zero point, into 8-bit storage (i8 results
/// as their two's-complement bytes). AVX2 when the CPU has it, bit for bit the scalar rule:
/// `vdivps`, then `vcvtps2dq` rounds half to even; the quotient is clamped to ±2^30 first (the
/// result saturates either way), NaN lanes give 0 as the scalar `as` conversion does.
pub fn quantize_bytes(
    x: &[f32],
    scale: f32,
    zero_point: i32,
    qmin: i32,
    qmax: i32,
    out: &mut [u8],
) {
    assert_eq!(x.len(), out.len(), "quantize_bytes: lengths");
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::best().quantize >= crate::cpu::Isa::Avx2 {
        // SAFETY: AVX2 is present; the function reads and writes whole 8-lane chunks only.
        done = unsafe { quantize_bytes_avx2(x, scale, zero_point, qmin, qmax, out) };
    }
    for (o, &v) in out[done..].iter_mut().zip(&x[done..]) {
        *o = quantize_one(v, scale, zero_point, qmin, qmax) as u8;
    }
}

/// The 8-lane body of [`quantize_bytes`]; returns how many elements it wrote.
///
/// # Safety
/// AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_bytes_avx2(
    x: &[f32],
    scale: f32,
    zero_point: i32,
    qmin: i32,
    qmax: i32,
    out: &mut [u8],
) -> usize {
    use std::arch::x86_64::*;
    let n = x.len() / 8 * 8;
    let s = _mm256_set1_ps(scale);
    let lim = _mm256_set1_ps(1_073_741_824.0);
    let nlim = _mm256_set1_ps(-1_073_741_824.0);
    let zp = _mm256_set1_epi32(zero_point);
    let lo = _mm256_set1_epi32(qmin);
    let hi = _mm256_set1_epi32(qmax);
    let mut lanes = [0i32; 8];
    for i in (0..n).step_by(8) {
        // SAFETY: i + 8 <= n <= x.len().
        let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) };
        let q = _mm256_div_ps(v, s);
        let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(q, q));
        let q = _mm256_min_ps(_mm256_max_ps(q, nlim), lim);
        let r = _mm256_add_epi32(_mm256_cvtps_epi32(q), zp);
        let r = _mm256_min_epi32(_mm256_max_epi32(r, lo), hi);
        let r = _mm256_andnot_si256(nan, r);
        // SAFETY: 8 i32 lanes into an 8-element array.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, r) };
        for (o, &l) in out[i..i + 8].iter_mut().zip(&lanes) {
            *o = l as u8;
        }
    }
    n
}

/// The smallest and largest finite-or-not value of `x` (NaN ignored; `(+inf, -inf)` when
/// empty), for `DynamicQuantizeLinear`'s range: 8 lanes at a time.
pub fn min_max(x: &[f32]) -> (f32, f32) {
    let mut lo = [f32::INFINITY; 8];
    let mut hi = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for j in 0..8 {
            // `<`/`>` on each lane: compiles to vminps/vmaxps, skips NaN like the scalar loop.
            lo[j] = if c[j] < lo[j] { c[j] } else { lo[j] };
            hi[j] = if c[j] > hi[j] { c[j] } else { hi[j] };
        }
    }
    let (mut l, mut h) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in lo.iter().chain(tail) {
        l = if v < l { v } else { l };
    }
    for &v in hi.iter().chain(tail) {
        h = if v > h { v } else { h };
    }
    (l, h)
}

/// ONNX `DynamicQuantizeLinear`'s uint8 parameters for data whose range is `[min, max]`: the
/// range is widened to include 0, `scale = (max - min) / 255` (1 when the range is empty), and
/// `zero_point = round_half_even(clamp(-min / scale, 0, 255))`, as ONNX Runtime computes them.
pub fn dynamic_qparams_u8(min: f32, max: f32) -> (f32, u8) {
    let min = min.min(0.0);
    let max = max.max(0.0);
    let scale = if max == min { 1.0 } else { (max - min) / 255.0 };
    let initial = 0.0 - min / scale;
    let zp = initial.clamp(0.0, 255.0).round_ties_even();
    (scale, zp as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_codes_use_the_input_times_weight_scale_and_refuse_overflow() {
        // Per channel: b / (s_in · s_w[c]), ties to even.
        assert_eq!(quantize_bias(&[1.0, -0.5, 0.0], 0.5, &[0.5, 0.25, 1.0]), Ok(vec![4, -4, 0]));
        assert_eq!(quantize_bias(&[0.625], 0.5, &[0.5]), Ok(vec![2])); // 2.5 → 2
                                                                       // One weight scale for every channel.
        assert_eq!(quantize_bias(&[1.0, 2.0], 1.0, &[0.5]), Ok(vec![2, 4]));
        assert_eq!(bias_scales(0.5, &[0.5, 0.25]), vec![0.25, 0.125]);
        // A near-zero weight scale would need a code beyond the accumulator's headroom.
        let e = quantize_bias(&[0.1, 3.0], 0.02, &[0.1, 1e-9]).unwrap_err();
        assert_eq!((e.channel, e.bias), (1, 3.0));
        assert!(quantize_bias(&[f32::NAN], 1.0, &[1.0]).is_err());
    }

    #[test]
    fn requantize_multipliers_follow_the_reference_operation_order() {
        let m = requantize_multipliers(0.1, &[0.3, 0.7], 0.9);
        assert_eq!(m, vec![0.1f32 * 0.3 / 0.9, 0.1f32 * 0.7 / 0.9]);
    }
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_half_even_is_round_ties_even(bits in any::<u32>()) {
            let x = f32::from_bits(bits);
            let (a, b) = (round_half_even(x), x.round_ties_even());
            prop_assert!(a == b || (a.is_nan() && b.is_nan()), "{x}: {a} vs {b}");
        }

        /// The SIMD slice path equals the scalar rule, NaN, infinities and huge values included.
        #[test]
        fn quantize_bytes_is_quantize_one(
            bits in proptest::collection::vec(any::<u32>(), 0..40),
            scale in 1e-3f32..10.0,
            zp in -128i32..256,
        ) {
            let mut x: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
            x.extend(bits.iter().map(|&b| (b % 2001) as f32 / 7.0 - 140.0));
            let (qmin, qmax) = if zp < 0 { (-128, 127) } else { (0, 255) };
            let zp = if zp < 0 { zp + 64 } else { zp };
            let mut out = vec![0u8; x.len()];
            quantize_bytes(&x, scale, zp, qmin, qmax, &mut out);
            for (&v, &o) in x.iter().zip(&out) {
                prop_assert_eq!(o, quantize_one(v, scale, zp, qmin, qmax) as u8, "{}", v);
            }
        }

        #[test]
        fn min_max_skips_nan(v in proptest::collection::vec(-1e6f32..1e6, 0..50), nan_at in 0usize..60) {
            let mut x = v.clone();
            if nan_at < x.len() {
                x[nan_at] = f32::NAN;
            }
            let finite: Vec<f32> = x.iter().copied().filter(|v| !v.is_nan()).collect();
            let want = (
                finite.iter().copied().fold(f32::INFINITY, f32::min),
                finite.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            );
            prop_assert_eq!(min_max(&x), want);
        }

        #[test]
        fn round_half_even_on_halves(n in -5_000_000i32..5_000_000) {
            let x = n as f32 + 0.5;
            prop_assert_eq!(round_half_even(x), x.round_ties_even());
        }
    }

    #[test]
    fn quantize_rounds_half_to_even_and_saturates() {
        let x = [0.5, 1.5, 2.5, -2.5, 300.0, -300.0, f32::NAN];
        let q = quantize(&x, &[1.0], None, &ParamMap::per_tensor(), DType::I8, true).unwrap();
        assert_eq!(q, TensorData::I8(vec![0, 2, 2, -2, 127, -128, 0]));
        let zp = TensorData::U8(vec![10]);
        let q =
            quantize(&x[..4], &[0.5], Some(&zp), &ParamMap::per_tensor(), DType::U8, true).unwrap();
        assert_eq!(q, TensorData::U8(vec![11, 13, 15, 5]));
    }

    #[test]
    fn four_bit_ranges_saturate() {
        let x = [-20.0, -8.0, 7.0, 20.0];
        let q = quantize(&x, &[1.0], None, &ParamMap::per_tensor(), DType::I4, true).unwrap();
        assert_eq!(q, TensorData::I4(vec![-8, -8, 7, 7]));
        let q = quantize(&x, &[1.0], None, &ParamMap::per_tensor(), DType::U4, true).unwrap();
        assert_eq!(q, TensorData::U4(vec![0, 0, 7, 15]));
    }

    #[test]
    fn per_axis_and_blocked_parameter_indices() {
        let m = ParamMap::per_axis(&[2, 3, 2], 1);
        let idx: Vec<usize> = (0..12).map(|i| m.index(i)).collect();
        assert_eq!(idx, vec![0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]);
        // [2, 4] blocked along axis 1 by 2: params [2, 2].
        let m = ParamMap::blocked(&[2, 4], 1, 2);
        assert_eq!(m.num_params(8), 4);
        let idx: Vec<usize> = (0..8).map(|i| m.index(i)).collect();
        assert_eq!(idx, vec![0, 0, 1, 1, 2, 2, 3, 3]);
        // [4, 2] blocked along axis 0 by 3: params [2, 2].
        let m = ParamMap::blocked(&[4, 2], 0, 3);
        let idx: Vec<usize> = (0..8).map(|i| m.index(i)).collect();
        assert_eq!(idx, vec![0, 1, 0, 1, 0, 1, 2, 3]);
    }

    #[test]
    fn qdq_layouts_follow_the_onnx_rules() {
        // Per tensor: a scalar or a single value, whatever the axis.
        assert!(ParamMap::for_qdq(&[2, 3], &[], 1, 0).unwrap().is_per_tensor());
        assert!(ParamMap::for_qdq(&[5], &[1], 1, 0).unwrap().is_per_tensor());
        assert_eq!(ParamMap::for_qdq(&[5], &[1], 1, 0).unwrap().axis(), None);
        // Per axis, a negative axis counted from the end.
        let m = ParamMap::for_qdq(&[2, 3, 2], &[3], -2, 0).unwrap();
        assert_eq!(m, ParamMap::per_axis(&[2, 3, 2], 1));
        assert_eq!(m.axis(), Some(1));
        // Blocked: the scale is the input's shape with the axis divided, rounded up.
        let m = ParamMap::for_qdq(&[4, 10], &[4, 3], 1, 4).unwrap();
        assert_eq!(m, ParamMap::blocked(&[4, 10], 1, 4));
        assert_eq!((m.axis(), m.num_params(40)), (Some(1), 12));
    }

    #[test]
    fn qdq_layouts_refuse_scales_that_do_not_fit() {
        let err = |x: &[usize], s: &[usize], axis, block| {
            ParamMap::for_qdq(x, s, axis, block).unwrap_err().0
        };
        // Blocked scales must have the blocked shape: not the per-axis one, not another count.
        assert_eq!(err(&[4, 10], &[4], 1, 4), "blocked scale shape [4] should be [4, 3]");
        assert_eq!(err(&[4, 10], &[4, 2], 1, 4), "blocked scale shape [4, 2] should be [4, 3]");
        assert_eq!(err(&[4, 10], &[3, 4], 0, 4), "blocked scale shape [3, 4] should be [1, 10]");
        assert_eq!(err(&[], &[], 0, 4), "blocked scale shape [] should be []");
        assert_eq!(err(&[4, 10], &[4, 3], 2, 4), "axis 2 is out of range for rank 2");
        assert_eq!(err(&[2, 3], &[4], 1, 0), "scale has 4 values, axis 1 of [2, 3] has 3");
        assert_eq!(err(&[2, 3], &[3], -3, 0), "axis -3 is out of range for rank 2");
        assert_eq!(err(&[], &[3], 0, 0), "a 1-D scale needs an input of rank >= 1");
        assert_eq!(
            err(&[2, 3], &[1, 1], 1, 0),
            "scale shape [1, 1] fits neither per-tensor nor per-axis quantization"
        );
    }

    #[test]
    fn weight_channel_axes() {
        assert_eq!(weight_channel_axis("Conv", false, 4), Some(0));
        assert_eq!(weight_channel_axis("Conv", false, 2), None);
        assert_eq!(weight_channel_axis("ConvTranspose", false, 4), Some(1));
        assert_eq!(weight_channel_axis("Gemm", true, 2), Some(0));
        assert_eq!(weight_channel_axis("Gemm", false, 2), Some(1));
        assert_eq!(weight_channel_axis("Gemm", false, 3), None);
        assert_eq!(weight_channel_axis("MatMul", false, 3), Some(2));
        assert_eq!(weight_channel_axis("MatMul", false, 1), None);
        assert_eq!(weight_channel_axis("Add", false, 2), None);
        assert_eq!(weight_channel_axis("LSTM", false, 3), Some(1));
        assert_eq!(weight_channel_axis("GRU", false, 2), None);
    }

    #[test]
    fn representable_ranges() {
        let zp = TensorData::U8(vec![100]);
        assert_eq!(representable_range(DType::U8, 0.5, Some(&zp)), Ok((-50.0, 77.5)));
        assert_eq!(representable_range(DType::I8, 0.5, None), Ok((-64.0, 63.5)));
        assert_eq!(representable_range(DType::I4, 1.0, None), Ok((-8.0, 7.0)));
        assert_eq!(representable_range(DType::F8E4M3FN, 2.0, None), Ok((-896.0, 896.0)));
        assert_eq!(representable_range(DType::F8E5M2, 1.0, None), Ok((-57344.0, 57344.0)));
        assert!(representable_range(DType::F16, 1.0, None).is_err());
    }

    #[test]
    fn dequantize_subtracts_zero_point_then_scales() {
        let q = TensorData::U8(vec![0, 128, 255]);
        let zp = TensorData::U8(vec![128]);
        let x = dequantize(&q, &[2.0], Some(&zp), &ParamMap::per_tensor()).unwrap();
        assert_eq!(x, vec![-256.0, 0.0, 254.0]);
    }

    #[test]
    fn float8_quantize_round_trips_exact_values() {
        let x = [1.0, -2.0, 448.0, 1000.0];
        let q = quantize(&x, &[1.0], None, &ParamMap::per_tensor(), DType::F8E4M3FN, true).unwrap();
        let back = dequantize(&q, &[1.0], None, &ParamMap::per_tensor()).unwrap();
        assert_eq!(back, vec![1.0, -2.0, 448.0, 448.0]);
    }

    #[test]
    fn dynamic_qparams_include_zero() {
        let (s, z) = dynamic_qparams_u8(1.0, 2.0);
        assert_eq!(s, 2.0 / 255.0);
        assert_eq!(z, 0);
        let (s, z) = dynamic_qparams_u8(-1.0, 3.0);
        assert_eq!(s, 4.0 / 255.0);
        assert_eq!(z, 64); // 63.75 rounds up
        assert_eq!(dynamic_qparams_u8(0.0, 0.0), (1.0, 0));
    }
}
