//! Fake quantization with the straight-through estimator and learnable step sizes (LSQ, Esser
//! et al. 2020, "Learned Step Size Quantization").
//!
//! Forward: `ŷ = (clamp(round(x/s) + z, qmin, qmax) − z) · s`, through the core's
//! [`quantize_one`]/[`dequantize_one`] (the rounding and saturation the engine and ONNX Runtime
//! run). Backward, with `v = x/s + z`:
//! * `∂ŷ/∂x = 1` inside the grid (`qmin ≤ v ≤ qmax`), 0 outside (the STE);
//! * `∂ŷ/∂s = round(v) − v` inside (the rounding error in steps; the `z` terms cancel),
//!   `qmin − z` or `qmax − z` outside; scaled by LSQ's `g = 1/√(N·qmax)` so the step size
//!   learns at the pace of the weights ([`lsq_grad_scale`]).
//!
//! Binary weights ({−a, +a}) have no zero level: `ŷ = a·sign(x)` (sign(0) = +1), `∂ŷ/∂x = 1`
//! for `|x| ≤ a`, `∂ŷ/∂a = sign(x)`.

use lowbit_kernels::quantize::{dequantize_one, quantize_one};

/// The integer grid of one quantized tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    pub zero_point: i32,
    pub qmin: i32,
    pub qmax: i32,
    /// {−1, +1} codes (binary weights) instead of round-to-nearest.
    pub binary: bool,
}

impl Grid {
    pub fn new(zero_point: i32, qmin: i32, qmax: i32) -> Grid {
        Grid { zero_point, qmin, qmax, binary: false }
    }

    pub fn binary() -> Grid {
        Grid { zero_point: 0, qmin: -1, qmax: 1, binary: true }
    }

    /// The integer code of `x` with step `s`.
    #[inline]
    pub fn code(&self, x: f32, s: f32) -> i32 {
        if self.binary {
            if x >= 0.0 {
                1
            } else {
                -1
            }
        } else {
            quantize_one(x, s, self.zero_point, self.qmin, self.qmax)
        }
    }

    #[inline]
    pub fn fake(&self, x: f32, s: f32) -> f32 {
        dequantize_one(self.code(x, s), s, self.zero_point)
    }

    /// (∂ŷ/∂x, ∂ŷ/∂s) at `x` (before LSQ's gradient scale).
    #[inline]
    pub fn partials(&self, x: f32, s: f32) -> (f32, f32) {
        if self.binary {
            let sign = if x >= 0.0 { 1.0 } else { -1.0 };
            return ((x.abs() <= s) as u8 as f32, sign);
        }
        let v = x / s + self.zero_point as f32;
        if v < self.qmin as f32 {
            (0.0, (self.qmin - self.zero_point) as f32)
        } else if v > self.qmax as f32 {
            (0.0, (self.qmax - self.zero_point) as f32)
        } else {
            let q = self.code(x, s);
            (1.0, (q - self.zero_point) as f32 - x / s)
        }
    }

    /// The largest positive code distance from the zero point (LSQ's `Q_P`).
    pub fn q_positive(&self) -> f32 {
        ((self.qmax - self.zero_point).max(self.zero_point - self.qmin)).max(1) as f32
    }
}

/// LSQ's gradient scale for a step size shared by `n` values.
pub fn lsq_grad_scale(n: usize, grid: &Grid) -> f32 {
    1.0 / ((n.max(1) as f32) * grid.q_positive()).sqrt()
}

/// Fake-quantizes `x` with one step per channel: element `i` uses `scales[channel(i)]`, where
/// `channel(i) = (i / inner) % scales.len()` (per-tensor when one scale).
pub fn fake_quant(x: &[f32], scales: &[f32], inner: usize, grid: &Grid) -> Vec<f32> {
    let c = scales.len();
    x.iter().enumerate().map(|(i, &v)| grid.fake(v, scales[(i / inner.max(1)) % c])).collect()
}

/// The backward pass of [`fake_quant`]: (∂L/∂x, ∂L/∂scales), the latter before LSQ's scale.
pub fn fake_quant_backward(x: &[f32], scales: &[f32], inner: usize, grid: &Grid, gy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let c = scales.len();
    let mut gs = vec![0.0f32; c];
    let gx = x
        .iter()
        .zip(gy)
        .enumerate()
        .map(|(i, (&v, &g))| {
            let ch = (i / inner.max(1)) % c;
            let (dx, ds) = grid.partials(v, scales[ch]);
            gs[ch] += g * ds;
            g * dx
        })
        .collect();
    (gx, gs)
}

/// LSQ's initial step size `2·mean|x| / √Q_P` (per channel), the paper's rule for weights.
pub fn lsq_init(x: &[f32], channels: usize, inner: usize, grid: &Grid) -> Vec<f32> {
    let mut sum = vec![0.0f64; channels];
    let mut cnt = vec![0usize; channels];
    for (i, &v) in x.iter().enumerate() {
        let ch = (i / inner.max(1)) % channels;
        sum[ch] += v.abs() as f64;
        cnt[ch] += 1;
    }
    sum.iter()
        .zip(&cnt)
        .map(|(&s, &n)| ((2.0 * s / n.max(1) as f64) as f32 / grid.q_positive().sqrt()).max(1e-8))
        .collect()
}

/// The step size per channel with the lowest squared error `‖x − fake(x)‖²` among multiples of
/// LSQ's initial step (0.25× to 3×): the post-training choice for ternary and binary weights,
/// whose min-max step would round almost every weight to zero.
pub fn mse_scales(x: &[f32], channels: usize, inner: usize, grid: &Grid) -> Vec<f32> {
    let init = lsq_init(x, channels, inner, grid);
    let mut best: Vec<(f64, f32)> = init.iter().map(|&s| (f64::INFINITY, s)).collect();
    for step in 1..=60 {
        let f = step as f32 * 0.05;
        let mut err = vec![0.0f64; channels];
        for (i, &v) in x.iter().enumerate() {
            let ch = (i / inner.max(1)) % channels;
            let d = (v - grid.fake(v, init[ch] * f)) as f64;
            err[ch] += d * d;
        }
        for ch in 0..channels {
            if err[ch] < best[ch].0 {
                best[ch] = (err[ch], init[ch] * f);
            }
        }
    }
    best.into_iter().map(|(_, s)| s).collect()
}
