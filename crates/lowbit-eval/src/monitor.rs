//! Drift monitoring: new inputs through a quantized model, each quantized activation (the
//! input of a `QuantizeLinear`) compared with what calibration saw of it.
//!
//! Per tensor, streaming (memory independent of the number of samples):
//!
//! * **clip rate**: the share of values beyond the quantization range by more than half a step
//!   (they lose more than rounding), against the share calibration itself clipped;
//! * **observed range**: the extremes seen;
//! * **drift (PSI)**: the population stability index of the values' histogram against the
//!   calibration histogram, on the calibration histogram's grid (values beyond it count in the
//!   end bins): `PSI = Σ_i (a_i − e_i) · ln(a_i / e_i)`, with `e_i` and `a_i` the calibration's
//!   and the new data's shares in bin `i`, each at least [`PSI_FLOOR`] (an empty bin would
//!   make it infinite). Read as usual: below 0.1 stable, 0.1–0.25 a moderate shift, above 0.25
//!   a significant one;
//! * **samples clipping**: samples whose own clip rate in this tensor passes the clip
//!   threshold.
//!
//! A tensor drifts when its PSI passes [`MonitorOptions::psi`] or its clip rate exceeds the
//! calibration's by more than [`MonitorOptions::clip_rate`] (only where calibration clipped
//! less than that: a range that clipped more on the calibration data was cut on purpose, e.g. a
//! conv output quantized over the range of the ReLU6 after it); the data drifts when any
//! tensor does. With a reference (the FP32 model), the first float output's top-1 agreement, cosine
//! and SQNR against it are tallied too.

use crate::metrics::{argmax, cosine, Noise, NoiseAccumulator};
use lowbit_engine::adaptive::{quantized_activations, QuantizedActivation};
use lowbit_onnx::pb::ModelProto;
use lowbit_quant::calibrate::{CalibrationRecord, Histogram};
use lowbit_tensor::Tensor;
use serde::Serialize;
use std::collections::HashMap;

/// The smallest bin share PSI uses (empty bins would give an infinite index).
pub const PSI_FLOOR: f64 = 1e-4;

/// When a tensor counts as drifted.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MonitorOptions {
    /// PSI above which a tensor drifts [default 0.25, the usual "significant shift"].
    pub psi: f64,
    /// Clip rate above the calibration's clip rate at which a tensor drifts, and a sample
    /// counts as clipping [default 0.01: one value in a hundred].
    pub clip_rate: f64,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        MonitorOptions { psi: 0.25, clip_rate: 0.01 }
    }
}

/// The population stability index of `actual` against `expected` (bin counts on one grid;
/// see the module docs). `None` when either is empty or the lengths differ.
pub fn psi(expected: &[u64], actual: &[u64]) -> Option<f64> {
    let (te, ta) = (expected.iter().sum::<u64>(), actual.iter().sum::<u64>());
    if te == 0 || ta == 0 || expected.len() != actual.len() {
        return None;
    }
    Some(
        expected
            .iter()
            .zip(actual)
            .map(|(&e, &a)| {
                let e = (e as f64 / te as f64).max(PSI_FLOOR);
                let a = (a as f64 / ta as f64).max(PSI_FLOOR);
                (a - e) * (a / e).ln()
            })
            .sum(),
    )
}

/// What calibration saw of one tensor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Calibrated {
    pub min: f32,
    pub max: f32,
    pub clip_rate: f64,
}

/// One quantized tensor over the monitored data.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorDrift {
    pub tensor: String,
    /// The float range the quantized type represents.
    pub range: [f32; 2],
    /// `None` when the model carries no calibration record for it (and no `--ranges`).
    pub calibrated: Option<Calibrated>,
    /// Extremes seen; `None` when the tensor was never produced.
    pub observed: Option<[f32; 2]>,
    pub values: u64,
    pub clip_rate: f64,
    pub psi: Option<f64>,
    pub samples_clipping: u64,
    pub drift: bool,
    /// Why it drifted, in words.
    pub reasons: Vec<String>,
}

/// The model's output against the FP32 reference on the monitored data.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Agreement {
    pub output: String,
    pub samples: u64,
    pub top1_agreement: f64,
    pub cosine_mean: f64,
    pub noise: Option<Noise>,
}

/// The whole monitoring result (`lowbit monitor --json`, docs/json.md).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MonitorReport {
    pub samples: u64,
    pub thresholds: MonitorOptions,
    /// Whether the calibration statistics came from the model (`model`), a table (`ranges`)
    /// or are missing (`none`: only clip rates against the ranges in the model).
    pub calibration: String,
    pub drift: bool,
    /// The tensors that drifted, worst PSI first.
    pub drifted: Vec<String>,
    /// Every watched tensor, drifted first, then by PSI.
    pub tensors: Vec<TensorDrift>,
    pub reference: Option<Agreement>,
}

struct Watched {
    act: QuantizedActivation,
    calibration: Option<(Histogram, Calibrated)>,
    observed: Option<Histogram>,
    min: f32,
    max: f32,
    values: u64,
    clipped: u64,
    samples_clipping: u64,
}

/// Accumulates the statistics of every quantized activation of a model (see the module docs).
pub struct Monitor {
    watched: Vec<Watched>,
    by_name: HashMap<String, usize>,
    opts: MonitorOptions,
    calibration: String,
    samples: u64,
    agreement: Option<(String, u64, u64, f64, NoiseAccumulator)>,
}

impl Monitor {
    /// A monitor of `model`'s quantized activations against `record` (the model's own, or one
    /// made from a calibration table; `source` says which).
    pub fn new(
        model: &ModelProto,
        record: Option<&CalibrationRecord>,
        source: &str,
        opts: MonitorOptions,
    ) -> Monitor {
        let watched: Vec<Watched> = quantized_activations(model)
            .into_iter()
            .map(|act| {
                let calibration = record.and_then(|r| r.tensors.get(&act.tensor)).and_then(|t| {
                    let h = t.histogram()?;
                    Some((h, Calibrated { min: t.min, max: t.max, clip_rate: t.clip_rate }))
                });
                let observed = calibration.as_ref().map(|(h, _)| h.empty_on_grid());
                Watched {
                    act,
                    calibration,
                    observed,
                    min: f32::INFINITY,
                    max: f32::NEG_INFINITY,
                    values: 0,
                    clipped: 0,
                    samples_clipping: 0,
                }
            })
            .collect();
        let by_name = watched.iter().enumerate().map(|(i, w)| (w.act.tensor.clone(), i)).collect();
        let calibration = if record.is_some() { source } else { "none" }.to_string();
        Monitor { watched, by_name, opts, calibration, samples: 0, agreement: None }
    }

    /// Quantized activations watched.
    pub fn len(&self) -> usize {
        self.watched.len()
    }

    pub fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }

    /// Whether `name` is watched (an observer can skip the rest).
    pub fn watches(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Adds one batch's value of tensor `name` (`rows` samples along axis 0); others and
    /// non-float32 tensors are ignored.
    pub fn observe(&mut self, name: &str, t: &Tensor, rows: usize) {
        let Some(&i) = self.by_name.get(name) else { return };
        let Ok(v) = t.as_f32() else { return };
        if v.is_empty() {
            return;
        }
        let opts = self.opts;
        let w = &mut self.watched[i];
        let (lo, hi) = w.act.clip_bounds();
        let baseline = w.calibration.as_ref().map_or(0.0, |(_, c)| c.clip_rate);
        let per_row = rows > 1 && t.shape().first() == Some(&rows);
        let chunk = if per_row { v.len() / rows } else { v.len() };
        for c in v.chunks(chunk.max(1)) {
            let clipped = c.iter().filter(|&&x| x < lo || x > hi).count() as u64;
            w.clipped += clipped;
            if clipped as f64 / c.len() as f64 - baseline > opts.clip_rate {
                w.samples_clipping += if per_row { 1 } else { rows as u64 };
            }
            for &x in c {
                w.min = w.min.min(x);
                w.max = w.max.max(x);
            }
        }
        w.values += v.len() as u64;
        if let Some(h) = w.observed.as_mut() {
            h.observe_on_grid(v);
        }
    }

    /// Closes a batch of `rows` samples.
    pub fn end_batch(&mut self, rows: usize) {
        self.samples += rows as u64;
    }

    /// Adds one batch of the model's output `test` and the reference's `reference` (output
    /// `name`, one row per sample along axis 0).
    pub fn compare_outputs(&mut self, name: &str, reference: &Tensor, test: &Tensor) {
        let (Ok(r), Ok(t)) = (reference.as_f32(), test.as_f32()) else { return };
        let rows = test.shape().first().copied().unwrap_or(1).max(1);
        if r.len() != t.len() || t.len() % rows != 0 {
            return;
        }
        let width = t.len() / rows;
        let a = self
            .agreement
            .get_or_insert_with(|| (name.to_string(), 0, 0, 0.0, NoiseAccumulator::new()));
        for (rr, tr) in r.chunks(width.max(1)).zip(t.chunks(width.max(1))) {
            a.1 += 1;
            a.2 += u64::from(argmax(rr) == argmax(tr));
            a.3 += cosine(rr, tr);
        }
        a.4.add(r, t);
    }

    /// The report so far.
    pub fn report(&self) -> MonitorReport {
        let opts = self.opts;
        let mut tensors: Vec<TensorDrift> = self
            .watched
            .iter()
            .map(|w| {
                let clip_rate =
                    if w.values == 0 { 0.0 } else { w.clipped as f64 / w.values as f64 };
                let psi = match (&w.calibration, &w.observed) {
                    (Some((c, _)), Some(o)) => psi(c.counts(), o.counts()),
                    _ => None,
                };
                let calibrated = w.calibration.as_ref().map(|(_, c)| c.clone());
                let mut reasons = Vec::new();
                if let Some(p) = psi.filter(|&p| p > opts.psi) {
                    reasons.push(format!("PSI {p:.3} > {}", opts.psi));
                }
                // A range calibration itself clipped past the threshold was cut on purpose
                // (an activation folded into it: a conv output quantized over its ReLU6's
                // range); only PSI speaks for it.
                let base = calibrated.as_ref().map_or(0.0, |c| c.clip_rate);
                if base < opts.clip_rate && clip_rate - base > opts.clip_rate {
                    reasons.push(format!(
                        "clip rate {:.2} % > calibration's {:.2} % + {:.2} %",
                        100.0 * clip_rate,
                        100.0 * base,
                        100.0 * opts.clip_rate
                    ));
                }
                let (lo, hi) = w.act.range();
                TensorDrift {
                    tensor: w.act.tensor.clone(),
                    range: [lo, hi],
                    calibrated,
                    observed: (w.values > 0).then_some([w.min, w.max]),
                    values: w.values,
                    clip_rate,
                    psi,
                    samples_clipping: w.samples_clipping,
                    drift: !reasons.is_empty(),
                    reasons,
                }
            })
            .collect();
        let key = |t: &TensorDrift| (!t.drift, -t.psi.unwrap_or(0.0), -t.clip_rate);
        tensors.sort_by(|a, b| key(a).partial_cmp(&key(b)).unwrap_or(std::cmp::Ordering::Equal));
        let drifted: Vec<String> =
            tensors.iter().filter(|t| t.drift).map(|t| t.tensor.clone()).collect();
        let reference = self.agreement.as_ref().map(|(name, n, agree, cos, noise)| Agreement {
            output: name.clone(),
            samples: *n,
            top1_agreement: *agree as f64 / (*n).max(1) as f64,
            cosine_mean: cos / (*n).max(1) as f64,
            noise: noise.noise(),
        });
        MonitorReport {
            samples: self.samples,
            thresholds: opts,
            calibration: self.calibration.clone(),
            drift: !drifted.is_empty(),
            drifted,
            tensors,
            reference,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_is_zero_for_equal_shares_and_grows_with_the_shift() {
        assert_eq!(psi(&[10, 20, 30], &[1, 2, 3]), Some(0.0));
        let small = psi(&[50, 50, 0, 0], &[45, 55, 0, 0]).unwrap();
        let large = psi(&[50, 50, 0, 0], &[0, 10, 40, 50]).unwrap();
        assert!(small > 0.0 && small < 0.1, "{small}");
        assert!(large > 0.25, "{large}");
        // By hand: shares (0.5, 0.5) → (0.45, 0.55).
        let by_hand =
            (0.45f64 - 0.5) * (0.45f64 / 0.5).ln() + (0.55f64 - 0.5) * (0.55f64 / 0.5).ln();
        assert!((small - by_hand).abs() < 1e-12);
        assert_eq!(psi(&[0, 0], &[1, 2]), None);
        assert_eq!(psi(&[1], &[1, 2]), None);
    }
}
