//! Row-wise normalizations: softmax, log-softmax, layer norm, the mean / inverse standard
//! deviation helper the other normalizations share, and the arithmetic that folds an
//! inference-mode batch norm into the weights and bias of the product before it
//! ([`ChannelAffine`], shared by the quantizer's BN-folding pass and the engine's load-time
//! fusion so both fold identically).
//!
//! Rows are contiguous runs of `n` elements. Softmax subtracts the row max first (so large
//! inputs do not overflow) and uses a vectorizable `exp` accurate to a few ulp ([`exp_fast`]),
//! with an AVX2+FMA build of the loop picked at run time. A row of all `-inf` gives NaN, as in
//! ONNX Runtime. Layer norm uses the biased variance, `1 / sqrt(var + eps)`, in f32 as
//! ONNX's `stash_type = 1` asks. `*_ref` functions are the plain scalar references.
//!
//! ```
//! use lowbit_kernels::norm::softmax_rows;
//! let mut x = [1.0f32, 1.0, 2.0, 2.0];
//! softmax_rows(&mut x, 2);
//! assert!((x[0] - 0.5).abs() < 1e-6 && (x[3] - 0.5).abs() < 1e-6);
//! ```

use crate::cpu::{self, Isa};

/// `e^x` with range reduction and a degree-6 polynomial; relative error below 1e-6 on
/// `-87.3..=88`, 0 below, `e^88` on `88..88.72` then +inf, NaN for NaN. Written with plain arithmetic
/// so loops over it vectorize.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer.
    let xc = x.clamp(-87.3, 88.0);
    let kf = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - kf * LN2_HI - kf * LN2_LO;
    // Taylor coefficients of e^r on |r| <= ln2 / 2.
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let scale = f32::from_bits(((kf as i32 + 127) as u32) << 23);
    let v = p * scale;
    if x < -87.3 {
        0.0
    } else if x > 88.722_84 {
        f32::INFINITY
    } else {
        // NaN falls through here: `p` is NaN.
        v
    }
}

#[inline(always)]
fn max_of(row: &[f32]) -> f32 {
    // Eight lanes so the reduction vectorizes; NaN propagates through `f32::max` only if all
    // are NaN, so check it separately.
    let mut m = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            m[i] = m[i].max(c[i]);
        }
    }
    let mut best = m.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &v in chunks.remainder() {
        best = best.max(v);
    }
    best
}

#[inline(always)]
fn exp_sub_sum(row: &mut [f32], max: f32) -> f32 {
    let mut s = [0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for i in 0..8 {
            let e = exp_fast(c[i] - max);
            c[i] = e;
            s[i] += e;
        }
    }
    let mut sum: f32 = s.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp_fast(*v - max);
        sum += *v;
    }
    sum
}

#[inline(always)]
fn softmax_rows_body(x: &mut [f32], n: usize, log: bool) {
    if n == 0 {
        return;
    }
    for row in x.chunks_exact_mut(n) {
        let has_nan = row.iter().any(|v| v.is_nan());
        let max = if has_nan { f32::NAN } else { max_of(row) };
        if log {
            let mut sum = 0f32;
            for v in row.iter() {
                sum += exp_fast(*v - max);
            }
            let shift = max + sum.ln();
            row.iter_mut().for_each(|v| *v -= shift);
        } else {
            let sum = exp_sub_sum(row, max);
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

fn softmax_dispatch(x: &mut [f32], n: usize, log: bool) {
    #[cfg(target_arch = "x86_64")]
    if cpu::best().softmax >= Isa::Avx2 {
        // SAFETY: the CPU supports the features the function is compiled for.
        unsafe { x86_64::softmax_rows(x, n, log) };
        return;
    }
    softmax_rows_body(x, n, log)
}

/// Softmax in place over each row of `n` elements (`x.len()` a multiple of `n`).
pub fn softmax_rows(x: &mut [f32], n: usize) {
    softmax_dispatch(x, n, false)
}

/// Log-softmax in place over each row of `n` elements.
pub fn log_softmax_rows(x: &mut [f32], n: usize) {
    softmax_dispatch(x, n, true)
}

/// Scalar reference for [`softmax_rows`] / [`log_softmax_rows`] (f64, libm `exp`).
pub fn softmax_rows_ref(x: &mut [f32], n: usize, log: bool) {
    if n == 0 {
        return;
    }
    for row in x.chunks_exact_mut(n) {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        for v in row.iter_mut() {
            let d = *v as f64 - max;
            *v = if log { (d - sum.ln()) as f32 } else { (d.exp() / sum) as f32 };
        }
    }
}

/// Mean and `1 / sqrt(biased variance + eps)` of `x`, accumulated in f64 for stability.
pub fn mean_inv_std(x: &[f32], eps: f32) -> (f32, f32) {
    if x.is_empty() {
        return (0.0, 1.0 / eps.sqrt());
    }
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
}

/// Layer norm over each row of `n` elements: `y = (x - mean) * inv_std * scale + bias`.
/// `scale` and `bias` have `n` elements. With `stats`, writes each row's mean and inv_std.
///
/// # Panics
/// When `y`, `scale`, `bias` or `stats` are shorter than `x` and `n` require.
pub fn layer_norm_rows(
    x: &[f32],
    y: &mut [f32],
    n: usize,
    scale: &[f32],
    bias: Option<&[f32]>,
    eps: f32,
    mut stats: Option<(&mut [f32], &mut [f32])>,
) {
    if n == 0 {
        return;
    }
    assert!(y.len() >= x.len() && scale.len() >= n && bias.is_none_or(|b| b.len() >= n));
    for (r, (xr, yr)) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)).enumerate() {
        let (mean, inv) = mean_inv_std(xr, eps);
        if let Some((m, s)) = stats.as_mut() {
            m[r] = mean;
            s[r] = inv;
        }
        match bias {
            Some(b) => {
                for i in 0..n {
                    yr[i] = (xr[i] - mean) * inv * scale[i] + b[i];
                }
            }
            None => {
                for i in 0..n {
                    yr[i] = (xr[i] - mean) * inv * scale[i];
                }
            }
        }
    }
}

/// A per-channel affine map `y[c] = x[c] · scale[c] + shift[c]`, in f64: what an
/// inference-mode `BatchNormalization` computes, in the form that folds into a product.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelAffine {
    pub scale: Vec<f64>,
    pub shift: Vec<f64>,
}

impl ChannelAffine {
    /// `scale = gamma / sqrt(var + eps)`, `shift = beta − mean · scale`; `None` when the four
    /// parameter vectors differ in length.
    pub fn batch_norm(
        gamma: &[f32],
        beta: &[f32],
        mean: &[f32],
        var: &[f32],
        eps: f32,
    ) -> Option<ChannelAffine> {
        let c = gamma.len();
        if beta.len() != c || mean.len() != c || var.len() != c {
            return None;
        }
        let eps = eps as f64;
        let scale: Vec<f64> =
            (0..c).map(|k| gamma[k] as f64 / (var[k] as f64 + eps).sqrt()).collect();
        let shift = (0..c).map(|k| beta[k] as f64 - mean[k] as f64 * scale[k]).collect();
        Some(ChannelAffine { scale, shift })
    }

    pub fn channels(&self) -> usize {
        self.scale.len()
    }

    /// Weights of the folded product: `w'[i] = w[i] · alpha · scale[channel_of(i)]`, where
    /// `channel_of` maps a flat weight index to its output channel and `alpha` is a factor the
    /// product already applies (Gemm's `alpha`; 1 for Conv).
    pub fn fold_weight(
        &self,
        w: &[f32],
        alpha: f64,
        channel_of: impl Fn(usize) -> usize,
    ) -> Vec<f32> {
        w.iter()
            .enumerate()
            .map(|(i, &v)| (v as f64 * alpha * self.scale[channel_of(i)]) as f32)
            .collect()
    }

    /// Bias of the folded product: `b'[c] = b[c] · beta · scale[c] + shift[c]` (`beta` as in
    /// Gemm; 1 for Conv). `bias` is per channel, one value for all, or absent (zero); `None`
    /// for any other length.
    pub fn fold_bias(&self, bias: Option<&[f32]>, beta: f64) -> Option<Vec<f32>> {
        let c = self.channels();
        let b = |k: usize| -> f64 {
            match bias {
                Some(b) if b.len() == 1 => b[0] as f64,
                Some(b) => b[k] as f64,
                None => 0.0,
            }
        };
        if bias.is_some_and(|b| b.len() != c && b.len() != 1) {
            return None;
        }
        Some((0..c).map(|k| (b(k) * beta * self.scale[k] + self.shift[k]) as f32).collect())
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_64 {
    /// [`super::softmax_rows_body`] compiled for AVX2 and FMA (its loops vectorize 8 wide).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax_rows(x: &mut [f32], n: usize, log: bool) {
        super::softmax_rows_body(x, n, log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exp_fast_is_accurate() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, r) = (exp_fast(x), (x as f64).exp());
            assert!(((a as f64 - r) / r).abs() < 1e-6, "{x}: {a} vs {r}");
            x += 0.0137;
        }
        assert_eq!(exp_fast(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_fast(100.0), f32::INFINITY);
        assert!(exp_fast(f32::NAN).is_nan());
    }

    #[test]
    fn softmax_of_masked_row() {
        let mut x = [0.0, f32::NEG_INFINITY, 0.0, 0.0];
        softmax_rows(&mut x, 4);
        assert_eq!(x[1], 0.0);
        assert!((x[0] - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn batch_norm_folds_into_weights_and_bias() {
        // One input, two output channels: y = bn(w · x + b) must equal w' · x + b'.
        let bn =
            ChannelAffine::batch_norm(&[2.0, 0.5], &[1.0, -1.0], &[3.0, 0.0], &[3.0, 15.0], 1.0)
                .unwrap();
        assert_eq!(bn.scale, [1.0, 0.125]);
        assert_eq!(bn.shift, [-2.0, -1.0]);
        let (w, b) = ([4.0f32, 8.0], [1.0f32, 2.0]);
        let wf = bn.fold_weight(&w, 1.0, |i| i);
        let bf = bn.fold_bias(Some(&b), 1.0).unwrap();
        for x in [-1.5f32, 0.0, 2.0] {
            for c in 0..2 {
                let want = (w[c] * x + b[c]) as f64 * bn.scale[c] + bn.shift[c];
                assert!(((wf[c] * x + bf[c]) as f64 - want).abs() < 1e-6);
            }
        }
        assert_eq!(bn.fold_bias(None, 1.0).unwrap(), [-2.0, -1.0]);
        assert_eq!(bn.fold_bias(Some(&[1.0]), 2.0).unwrap(), [0.0, -0.75]);
        assert!(bn.fold_bias(Some(&[1.0, 2.0, 3.0]), 1.0).is_none());
        assert!(ChannelAffine::batch_norm(&[1.0], &[], &[0.0], &[1.0], 1e-5).is_none());
    }

    proptest! {
        #[test]
        fn softmax_matches_reference(
            rows in 1usize..4, n in 1usize..40, log in any::<bool>(),
            v in prop::collection::vec(-50f32..50.0, 160),
        ) {
            let mut a: Vec<f32> = v.iter().cycle().take(rows * n).copied().collect();
            let mut r = a.clone();
            if log { log_softmax_rows(&mut a, n) } else { softmax_rows(&mut a, n) }
            softmax_rows_ref(&mut r, n, log);
            for (x, y) in a.iter().zip(&r) {
                prop_assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }

        #[test]
        fn layer_norm_rows_normalizes(n in 2usize..50, v in prop::collection::vec(-5f32..5.0, 100)) {
            let x: Vec<f32> = v[..n].to_vec();
            let mut y = vec![0.0; n];
            let (mut m, mut s) = ([0.0], [0.0]);
            layer_norm_rows(&x, &mut y, n, &vec![1.0; n], None, 1e-5, Some((&mut m, &mut s)));
            let mean: f32 = y.iter().sum::<f32>() / n as f32;
            prop_assert!(mean.abs() < 1e-4);
            let (rm, rs) = mean_inv_std(&x, 1e-5);
            prop_assert!((m[0] - rm).abs() < 1e-6 && (s[0] - rs).abs() < 1e-6 * rs);
        }
    }
}
