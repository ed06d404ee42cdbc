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

/// Which step size each element of a tensor uses (ONNX DequantizeLinear's `axis` and
/// `block_size`): the tensor is `[outer, axis_len, inner]` around the axis; per channel, element
/// `(o, k, r)` uses step `k`; in blocks of `b` along the axis, step `(o, k / b, r)` of a
/// `[outer, ⌈axis_len / b⌉, inner]` scale tensor. Per tensor: one axis of length 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleMap {
    pub axis_len: usize,
    pub inner: usize,
    pub block: Option<usize>,
}

impl ScaleMap {
    pub const PER_TENSOR: ScaleMap = ScaleMap { axis_len: 1, inner: 1, block: None };

    /// One step per index along an axis of `axis_len`, `inner` values after it.
    pub fn per_channel(axis_len: usize, inner: usize) -> ScaleMap {
        ScaleMap { axis_len: axis_len.max(1), inner: inner.max(1), block: None }
    }

    /// One step per `block` consecutive values along an axis of `axis_len`.
    pub fn blocked(axis_len: usize, inner: usize, block: usize) -> ScaleMap {
        ScaleMap { axis_len: axis_len.max(1), inner: inner.max(1), block: Some(block.max(1)) }
    }

    /// The step index of element `i`.
    #[inline]
    pub fn index(&self, i: usize) -> usize {
        let k = (i / self.inner) % self.axis_len;
        match self.block {
            None => k,
            Some(b) => {
                let o = i / (self.inner * self.axis_len);
                (o * self.axis_len.div_ceil(b) + k / b) * self.inner + i % self.inner
            }
        }
    }

    /// Number of steps for a tensor of `len` values.
    pub fn steps(&self, len: usize) -> usize {
        match self.block {
            None => self.axis_len,
            Some(b) => {
                (len / (self.inner * self.axis_len)) * self.axis_len.div_ceil(b) * self.inner
            }
        }
    }
}

/// The grid of step `j`: `grid` with zero point `zero_points[j]` (asymmetric per-channel
/// weights), or `grid` itself when `zero_points` is empty.
#[inline]
fn grid_at(grid: &Grid, zero_points: &[i32], j: usize) -> Grid {
    match zero_points.get(j) {
        Some(&z) => Grid { zero_point: z, ..*grid },
        None => *grid,
    }
}

/// Fake-quantizes `x`, element `i` with step `scales[map.index(i)]` (and that step's zero
/// point, where `zero_points` has one per step).
pub fn fake_quant(
    x: &[f32],
    scales: &[f32],
    zero_points: &[i32],
    map: &ScaleMap,
    grid: &Grid,
) -> Vec<f32> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let j = map.index(i);
            grid_at(grid, zero_points, j).fake(v, scales[j])
        })
        .collect()
}

/// The backward pass of [`fake_quant`]: (∂L/∂x, ∂L/∂scales), the latter before LSQ's scale.
pub fn fake_quant_backward(
    x: &[f32],
    scales: &[f32],
    zero_points: &[i32],
    map: &ScaleMap,
    grid: &Grid,
    gy: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let mut gs = vec![0.0f32; scales.len()];
    let gx = x
        .iter()
        .zip(gy)
        .enumerate()
        .map(|(i, (&v, &g))| {
            let j = map.index(i);
            let (dx, ds) = grid_at(grid, zero_points, j).partials(v, scales[j]);
            gs[j] += g * ds;
            g * dx
        })
        .collect();
    (gx, gs)
}

/// LSQ's initial step size `2·mean|x| / √Q_P` (per channel), the paper's rule for weights.
pub fn lsq_init(x: &[f32], map: &ScaleMap, grid: &Grid) -> Vec<f32> {
    let channels = map.steps(x.len());
    let mut sum = vec![0.0f64; channels];
    let mut cnt = vec![0usize; channels];
    for (i, &v) in x.iter().enumerate() {
        let ch = map.index(i);
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
pub fn mse_scales(x: &[f32], map: &ScaleMap, grid: &Grid) -> Vec<f32> {
    let channels = map.steps(x.len());
    let init = lsq_init(x, map, grid);
    let mut best: Vec<(f64, f32)> = init.iter().map(|&s| (f64::INFINITY, s)).collect();
    for step in 1..=60 {
        let f = step as f32 * 0.05;
        let mut err = vec![0.0f64; channels];
        for (i, &v) in x.iter().enumerate() {
            let ch = map.index(i);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_is_the_quantizers_fake_quantize() {
        use lowbit_quant::qparams::{fake_quantize, QParams};
        use lowbit_quant::QuantScheme;
        let p = QParams::from_range(&QuantScheme::uint8(), -1.0, 3.0).unwrap();
        let (s, z) = (p.scales()[0], p.zero_points()[0]);
        let x: Vec<f32> = (-50..50).map(|i| i as f32 * 0.093).collect();
        let t = lowbit_tensor::Tensor::from_vec(vec![x.len()], x.clone()).unwrap();
        let want = fake_quantize(&t, &p).unwrap();
        let got = fake_quant(&x, &[s], &[], &ScaleMap::PER_TENSOR, &Grid::new(z, 0, 255));
        assert_eq!(want.as_f32().unwrap(), got.as_slice());
    }

    #[test]
    fn ste_and_lsq_gradients() {
        let g = Grid::new(10, 0, 255);
        // Inside: x/s = 2.3 → v = 12.3, code 12: ∂x = 1, ∂s = 12 − 10 − 2.3 = −0.3.
        let (dx, ds) = g.partials(0.23, 0.1);
        assert_eq!(dx, 1.0);
        assert!((ds + 0.3).abs() < 1e-5, "{ds}");
        // Below the grid: v = −20 + 10 < 0: ∂x = 0, ∂s = qmin − z.
        assert_eq!(g.partials(-2.0, 0.1), (0.0, -10.0));
        // Above: ∂s = qmax − z.
        assert_eq!(g.partials(100.0, 0.1), (0.0, 245.0));
        // Ternary: codes −1/0/1 only.
        let t = Grid::new(0, -1, 1);
        let y = fake_quant(&[-3.0, -0.4, 0.2, 0.6, 5.0], &[1.0], &[], &ScaleMap::PER_TENSOR, &t);
        assert_eq!(y, vec![-1.0, 0.0, 0.0, 1.0, 1.0]);
        // Binary: a·sign(x); ∂x passes inside [−a, a]; ∂a = sign(x).
        let b = Grid::binary();
        assert_eq!(
            fake_quant(&[-0.1, 0.0, 2.0], &[0.5], &[], &ScaleMap::PER_TENSOR, &b),
            vec![-0.5, 0.5, 0.5]
        );
        assert_eq!(b.partials(-0.1, 0.5), (1.0, -1.0));
        assert_eq!(b.partials(2.0, 0.5), (0.0, 1.0));
    }

    #[test]
    fn per_channel_backward_sums_each_channels_scale_gradient() {
        let g = Grid::new(0, -8, 7);
        // Two channels of three values each (axis 0, inner 3).
        let x = [0.12, -0.31, 0.05, 1.0, -2.0, 0.7];
        let s = [0.1, 0.5];
        let gy = [1.0; 6];
        let (gx, gs) = fake_quant_backward(&x, &s, &[], &ScaleMap::per_channel(2, 3), &g, &gy);
        assert_eq!(gx, vec![1.0; 6]);
        let want0: f32 = x[..3].iter().map(|&v| g.partials(v, 0.1).1).sum();
        let want1: f32 = x[3..].iter().map(|&v| g.partials(v, 0.5).1).sum();
        assert!((gs[0] - want0).abs() < 1e-6 && (gs[1] - want1).abs() < 1e-6);
    }

    #[test]
    fn mse_scales_beat_lsq_init_for_ternary() {
        let x: Vec<f32> = (0..200).map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0).collect();
        let t = Grid::new(0, -1, 1);
        let err = |s: f32| x.iter().map(|&v| (v - t.fake(v, s)).powi(2)).sum::<f32>();
        let one = ScaleMap::per_channel(1, 200);
        let init = lsq_init(&x, &one, &t)[0];
        let best = mse_scales(&x, &one, &t)[0];
        assert!(err(best) <= err(init));
        assert!(lsq_grad_scale(100, &t) > 0.0);
    }

    #[test]
    fn blocked_map_matches_onnx_block_layout() {
        // A [2, 5, 3] tensor in blocks of 2 along axis 1: scales [2, 3, 3]; element (o, k, r)
        // uses scale (o, k / 2, r), as DequantizeLinear with block_size reads them.
        let m = ScaleMap::blocked(5, 3, 2);
        assert_eq!(m.steps(30), 18);
        for o in 0..2 {
            for k in 0..5 {
                for r in 0..3 {
                    let i = (o * 5 + k) * 3 + r;
                    assert_eq!(m.index(i), (o * 3 + k / 2) * 3 + r, "element ({o}, {k}, {r})");
                }
            }
        }
        // Per channel along axis 0 of [4, 6]: step = row.
        let c = ScaleMap::per_channel(4, 6);
        assert_eq!((0..24).map(|i| c.index(i)).collect::<Vec<_>>()[6..12], [1; 6]);
        assert_eq!(c.steps(24), 4);
        assert_eq!(ScaleMap::PER_TENSOR.index(17), 0);
        // Each block's step gradient sums its own elements only.
        let g = Grid::new(0, -8, 7);
        let x: Vec<f32> = (0..30).map(|i| (i as f32 * 0.37).sin()).collect();
        let s: Vec<f32> = (0..18).map(|j| 0.05 + 0.01 * j as f32).collect();
        let (_, gs) = fake_quant_backward(&x, &s, &[], &m, &g, &[1.0; 30]);
        for (j, got) in gs.iter().enumerate() {
            let want: f32 =
                (0..30).filter(|&i| m.index(i) == j).map(|i| g.partials(x[i], s[j]).1).sum();
            assert!((got - want).abs() < 1e-6, "block {j}: {got} vs {want}");
        }
    }

    #[test]
    fn per_channel_zero_points_shift_each_channels_grid() {
        // Asymmetric int4 per channel: channel 1 has zero point 3, so its codes span [-8, 7]
        // around 3 (values from -11·s to 4·s).
        let g = Grid::new(0, -8, 7);
        let m = ScaleMap::per_channel(2, 2);
        let y = fake_quant(&[1.0, -1.0, 1.0, -1.0], &[0.1, 0.1], &[0, 3], &m, &g);
        assert_eq!(y, vec![0.7, -0.8, 0.4, -1.0]);
        let (gx, _) =
            fake_quant_backward(&[1.0, -1.0, 0.3, -1.0], &[0.1, 0.1], &[0, 3], &m, &g, &[1.0; 4]);
        // Clipped on channel 0 (both), inside on channel 1 for 0.3 and -1.0 (v = 6 and -7).
        assert_eq!(gx, vec![0.0, 0.0, 1.0, 1.0]);
    }
}
