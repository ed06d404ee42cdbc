//! The running statistics of a comparison: isolated noise, clip rate, extremes and histogram
//! of each quantized activation, and the per-channel figures of a weight.

use super::error::{CompareError, Result};
use super::matching::ActPlan;
use super::model::{ActivationNoise, Histogram, HISTOGRAM_BINS};
use crate::metrics::NoiseAccumulator;
use lowbit_kernels::quantize::{self as core, ParamMap};
use lowbit_tensor::{Tensor, TensorData};

/// A clamp `[lo, hi]` applied by the only reader of a dequantized tensor.
#[derive(Clone, Copy, Debug)]
pub(super) struct Clamp {
    pub(super) lo: f32,
    pub(super) hi: f32,
}

impl Clamp {
    fn apply(&self, v: f32) -> f32 {
        if v < self.lo {
            self.lo
        } else if v > self.hi {
            self.hi
        } else {
            v
        }
    }
}

/// Running statistics of one quantized activation.
pub(super) struct ActStats {
    accumulated: NoiseAccumulator,
    isolated: NoiseAccumulator,
    clipped: u64,
    seen: u64,
    err_sq: f64,
    clip_err_sq: f64,
    min: f32,
    max: f32,
    counts: Vec<u64>,
}

impl ActStats {
    pub(super) fn new() -> ActStats {
        ActStats {
            accumulated: NoiseAccumulator::new(),
            isolated: NoiseAccumulator::new(),
            clipped: 0,
            seen: 0,
            err_sq: 0.0,
            clip_err_sq: 0.0,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            counts: vec![0; HISTOGRAM_BINS],
        }
    }

    pub(super) fn clip_rate(&self) -> f64 {
        if self.seen == 0 {
            0.0
        } else {
            self.clipped as f64 / self.seen as f64
        }
    }

    /// Isolated SQNR (dB), infinite before any value.
    pub(super) fn isolated_sqnr(&self) -> f64 {
        self.isolated.noise().map_or(f64::INFINITY, |n| n.sqnr_db)
    }

    pub(super) fn clip_error_share(&self) -> f64 {
        if self.err_sq == 0.0 {
            0.0
        } else {
            self.clip_err_sq / self.err_sq
        }
    }
}

/// The histogram window of an activation: its representable range widened by half on each side.
fn histogram_window(lo: f32, hi: f32) -> (f32, f32) {
    let w = if hi > lo { hi - lo } else { lo.abs().max(1.0) };
    (lo - 0.5 * w, hi + 0.5 * w)
}

fn core_err(tensor: &str) -> impl Fn(core::QuantizeError) -> CompareError + '_ {
    move |e| CompareError::Tensor { tensor: tensor.to_string(), msg: e.0 }
}

impl ActPlan {
    /// The FP32 activation through this plan's own quantize/dequantize (the shared core).
    fn fake_quant(&self, x: &[f32]) -> Result<Vec<f32>> {
        let map = ParamMap::per_tensor();
        let zp = self.zero_point.as_ref();
        let q = core::quantize(x, &[self.scale], zp, &map, self.dtype, self.saturate)
            .map_err(core_err(&self.tensor))?;
        core::dequantize(&q, &[self.scale], zp, &map).map_err(core_err(&self.tensor))
    }

    /// Isolated noise, clip rate, extremes and histogram of one FP32 batch of this tensor.
    pub(super) fn observe_fp32(&self, st: &mut ActStats, x: &[f32]) -> Result<()> {
        let dq = self.fake_quant(x)?;
        let (wlo, whi) = histogram_window(self.lo, self.hi);
        let bins = HISTOGRAM_BINS as f64;
        let inv = bins / (whi as f64 - wlo as f64);
        let mut xc = Vec::new();
        let mut dc = Vec::new();
        if self.clamp.is_some() {
            xc.reserve(x.len());
            dc.reserve(x.len());
        }
        for (&v, &d) in x.iter().zip(&dq) {
            if v.is_nan() {
                continue;
            }
            st.min = st.min.min(v);
            st.max = st.max.max(v);
            let b = ((v as f64 - wlo as f64) * inv).floor().clamp(0.0, bins - 1.0) as usize;
            st.counts[b] += 1;
            let (v, d) = match &self.clamp {
                Some(c) => {
                    let (v, d) = (c.apply(v), c.apply(d));
                    xc.push(v);
                    dc.push(d);
                    (v, d)
                }
                None => (v, d),
            };
            let e = (v as f64 - d as f64).powi(2);
            st.err_sq += e;
            if v < self.lo - self.margin || v > self.hi + self.margin {
                st.clipped += 1;
                st.clip_err_sq += e;
            }
        }
        st.seen += x.len() as u64;
        if self.clamp.is_some() {
            st.isolated.add(&xc, &dc);
        } else {
            st.isolated.add(x, &dq);
        }
        Ok(())
    }

    /// What the report says of this activation, from its statistics.
    pub(super) fn report(&self, st: &ActStats) -> Result<ActivationNoise> {
        let never = |what: String| CompareError::Tensor { tensor: self.tensor.clone(), msg: what };
        let isolated =
            st.isolated.noise().ok_or_else(|| never("never produced by the FP32 model".into()))?;
        let accumulated = st.accumulated.noise().ok_or_else(|| {
            never(format!(
                "its dequantized copy '{}' was never produced by the quantized model",
                self.dq_out
            ))
        })?;
        let (lo, hi) = histogram_window(self.lo, self.hi);
        Ok(ActivationNoise {
            tensor: self.tensor.clone(),
            producer: self.producer.clone(),
            producer_op: self.producer_op.clone(),
            order: self.order,
            scale: self.scale,
            zero_point: self.zp_report,
            value_type: self.dtype.name().to_string(),
            accumulated,
            isolated,
            clip_rate: st.clip_rate(),
            min: st.min,
            max: st.max,
            histogram: Histogram { lo, hi, counts: st.counts.clone() },
        })
    }

    /// Accumulated noise: the FP32 tensor against the quantized model's dequantized copy.
    pub(super) fn observe_quant(&self, st: &mut ActStats, fp32: &[f32], quant: &[f32]) {
        match &self.clamp {
            Some(c) => {
                let a: Vec<f32> = fp32.iter().map(|&v| c.apply(v)).collect();
                let b: Vec<f32> = quant.iter().map(|&v| c.apply(v)).collect();
                st.accumulated.add(&a, &b);
            }
            None => st.accumulated.add(fp32, quant),
        }
    }
}

/// The per-channel layout of a weight along `axis` (one channel for a scalar) and the
/// channel count.
fn channel_map(shape: &[usize], axis: usize) -> (ParamMap, usize) {
    match shape.get(axis) {
        Some(&dim) => (ParamMap::per_axis(shape, axis), dim),
        None => (ParamMap::per_tensor(), 1),
    }
}

/// Min and max of a weight's values per channel along `axis` (one pair when it has no axis or
/// no values).
pub(super) fn channel_ranges(v: &[f32], shape: &[usize], axis: usize) -> (Vec<f32>, Vec<f32>) {
    let (map, dim) =
        if v.is_empty() { (ParamMap::per_tensor(), 1) } else { channel_map(shape, axis) };
    let mut lo = vec![f32::INFINITY; dim];
    let mut hi = vec![f32::NEG_INFINITY; dim];
    for (i, &x) in v.iter().enumerate() {
        let c = map.index(i);
        lo[c] = lo[c].min(x);
        hi[c] = hi[c].max(x);
    }
    (lo, hi)
}

/// Energy share of the strongest channel below which [`worst_channel_sqnr`] ignores a channel.
const NEGLIGIBLE_CHANNEL_ENERGY: f64 = 1e-6;

/// The lowest SQNR (dB) among the output channels of a weight (along `axis`) that carry signal
/// (not all zero, nor a millionth of the strongest channel's energy): a per-tensor scale starves
/// the channels with the smallest range, which the pooled SQNR hides, while each output channel
/// is a feature of its own downstream (in a depthwise conv it is computed from that channel's
/// weights alone).
pub(super) fn worst_channel_sqnr(
    reference: &[f32],
    test: &[f32],
    shape: &[usize],
    axis: usize,
) -> f64 {
    let (map, dim) = channel_map(shape, axis);
    let mut noise = vec![NoiseAccumulator::new(); dim];
    let mut energy = vec![0f64; dim];
    for (i, (&r, &t)) in reference.iter().zip(test).enumerate() {
        let c = map.index(i);
        noise[c].add(&[r], &[t]);
        energy[c] += f64::from(r) * f64::from(r);
    }
    // A channel a million times weaker than the strongest (BN folding leaves such dead
    // channels) adds nothing to the output, whatever its own SQNR.
    let floor = energy.iter().fold(0f64, |m, &e| m.max(e)) * NEGLIGIBLE_CHANNEL_ENERGY;
    noise
        .iter()
        .zip(&energy)
        .filter(|(_, &e)| e > floor)
        .filter_map(|(n, _)| n.noise())
        .fold(f64::INFINITY, |worst, n| worst.min(n.sqnr_db))
}

pub(super) fn f32_values(t: &Tensor, name: &str) -> Result<Vec<f32>> {
    match t.data() {
        TensorData::F32(v) => Ok(v.clone()),
        _ => t.to_f32_vec().map_err(|e| CompareError::Tensor {
            tensor: name.to_string(),
            msg: format!("cannot be compared as numbers: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_channel_ignores_dead_channels_but_not_weak_live_ones() {
        // [3 channels, 4 values]: channel 0 quantized well, channel 1 a thousand times weaker
        // and rounded coarsely, channel 2 a BN-dead 1e-9 channel rounded to zero.
        let reference = [1.0, -0.5, 0.25, 0.75, 1e-3, -1e-3, 5e-4, 2e-4, 1e-9, -1e-9, 1e-9, 0.0];
        let test = [1.0, -0.5, 0.25, 0.75, 1e-3, -1e-3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let db = worst_channel_sqnr(&reference, &test, &[3, 4], 0);
        let weak = crate::metrics::noise(&reference[4..8], &test[4..8]).unwrap().sqnr_db;
        assert!((db - weak).abs() < 1e-9, "{db} vs channel 1's {weak}");
        assert!(db > 5.0, "{db}");
        // Without the weak channel the dead one still does not count: the good one is worst.
        let (r, t) =
            ([&reference[..4], &reference[8..]].concat(), [&test[..4], &test[8..]].concat());
        let db = worst_channel_sqnr(&r, &t, &[2, 4], 0);
        assert!(db > 100.0, "{db}");
    }
}
