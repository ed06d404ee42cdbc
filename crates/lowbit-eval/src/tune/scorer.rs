//! The task metric of one model on a part of the eval data, streamed batch by batch: only one
//! number per sample (or pair) is kept, never an output.

use super::{Metric, TuneError};
use crate::metrics::{self, NoiseAccumulator};
use crate::score::ScoredModel;
use lowbit_data::Dataset;

/// What the model's outputs are scored against.
pub enum Truth {
    /// A class per sample: the labels, or the FP32 model's own top-1 (agreement).
    Classes(Vec<usize>),
    /// The FP32 model, run on the same batches (cosine, SQNR).
    Reference(ScoredModel),
    /// Sentence pairs: side b's data and the gold similarity of each pair.
    Pairs { b: Dataset, gold: Vec<f64> },
}

/// Scores models on the eval data with one [`Metric`].
pub struct Scorer {
    pub metric: Metric,
    /// The eval data (side a for sentence pairs).
    pub data: Dataset,
    pub truth: Truth,
    /// Cut each batch to its `*mask*` input's longest real length.
    pub trim: bool,
}

/// A model's metric on some samples.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitScore {
    /// The metric (higher is better): % for top-1 and cosine×100, Spearman×100, dB.
    pub value: f64,
    /// Samples (pairs) scored.
    pub samples: usize,
    /// Each sample's share of `value` (top-1: 0 or 100, cosine×100) when the metric is a mean
    /// over samples; empty for Spearman and SQNR.
    pub per_sample: Vec<f64>,
}

impl Scorer {
    /// `model` on the samples of `ranges`; `progress` is told of each run's samples.
    pub fn score(
        &mut self,
        model: &ScoredModel,
        ranges: &[(usize, usize)],
        progress: &mut dyn FnMut(usize),
    ) -> Result<SplitScore, TuneError> {
        let mut per_sample = Vec::new();
        let mut noise = NoiseAccumulator::new();
        let mut sims = Vec::new();
        let mut gold_kept = Vec::new();
        for &(s, e) in ranges {
            let out = model.run(&mut self.data, s, e, self.trim)?;
            let o = out.as_f32()?;
            let width = o.len() / (e - s);
            let row = |i: usize| &o[i * width..(i + 1) * width];
            match &mut self.truth {
                Truth::Classes(classes) => {
                    for i in 0..e - s {
                        let hit = metrics::argmax(row(i)) == classes[s + i];
                        per_sample.push(if hit { 100.0 } else { 0.0 });
                    }
                }
                Truth::Reference(r) => {
                    let rt = r.run(&mut self.data, s, e, self.trim)?;
                    let ro = rt.as_f32()?;
                    if ro.len() != o.len() {
                        return Err(TuneError::Config(format!(
                            "output '{}': the FP32 model gives {} values on {} but the \
                             quantized one {}",
                            model.output,
                            ro.len(),
                            self.data.range_label(s, e),
                            o.len()
                        )));
                    }
                    match self.metric {
                        Metric::Sqnr => noise.add(ro, o),
                        _ => {
                            for i in 0..e - s {
                                let rr = &ro[i * width..(i + 1) * width];
                                per_sample.push(100.0 * metrics::cosine(rr, row(i)));
                            }
                        }
                    }
                }
                Truth::Pairs { b, gold } => {
                    let ob = model.run(b, s, e, self.trim)?;
                    let ob = ob.as_f32()?;
                    if ob.len() != o.len() {
                        return Err(TuneError::Config(format!(
                            "output '{}': side a gives {} values per run and side b {}: the \
                             scored output must be one vector per sentence",
                            model.output,
                            o.len(),
                            ob.len()
                        )));
                    }
                    for i in 0..e - s {
                        sims.push(metrics::cosine(row(i), &ob[i * width..(i + 1) * width]));
                        gold_kept.push(gold[s + i]);
                    }
                }
            }
            progress(e - s);
        }
        let samples = ranges.iter().map(|(s, e)| e - s).sum();
        let value = match (&self.truth, self.metric) {
            (Truth::Pairs { .. }, _) => 100.0 * metrics::spearman(&sims, &gold_kept),
            (_, Metric::Sqnr) => noise.noise().map_or(f64::NAN, |n| n.sqnr_db),
            _ => per_sample.iter().sum::<f64>() / per_sample.len().max(1) as f64,
        };
        Ok(SplitScore { value, samples, per_sample })
    }
}

/// Runs of samples, `(start, end)` each.
pub type Runs = Vec<(usize, usize)>;

/// The eval data's runs split into a search part and a held-out part: runs of `chunk`
/// samples, every run in turn going to the held-out part in the proportion `held_out`
/// (deterministic, spread evenly over the data).
pub fn split_runs(runs: &[(usize, usize)], held_out: f64) -> (Runs, Runs) {
    let (mut search, mut held) = (Vec::new(), Vec::new());
    for (k, &r) in runs.iter().enumerate() {
        let taken = |k: usize| (k as f64 * held_out).floor();
        if taken(k + 1) > taken(k) {
            held.push(r);
        } else {
            search.push(r);
        }
    }
    (search, held)
}

/// Mean and standard error of the paired differences `reference − model` (the metric's drop
/// measured on the same samples), `None` without per-sample values.
pub fn paired_se(reference: &[f64], model: &[f64]) -> Option<(f64, f64)> {
    if reference.len() != model.len() || reference.len() < 2 {
        return None;
    }
    let d: Vec<f64> = reference.iter().zip(model).map(|(r, m)| r - m).collect();
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    Some((mean, (var / n).sqrt()))
}

/// Mean and half-width of the 95 % interval of the paired differences `reference − model`
/// (the metric's drop), `None` without per-sample values.
pub fn paired_drop(reference: &[f64], model: &[f64]) -> Option<(f64, f64)> {
    paired_se(reference, model).map(|(m, se)| (m, 1.96 * se))
}

/// The probability that the true value is at least `floor` when `measured` is a mean with
/// standard error `se` (normal approximation of the paired mean); without an error (`None`, or
/// every sample agreeing) 1 or 0 by the measured value itself.
pub fn within_probability(measured: f64, floor: f64, se: Option<f64>) -> f64 {
    match se {
        Some(se) if se > 0.0 => {
            let z = (measured - floor) / se;
            0.5 * (1.0
                + lowbit_engine::ops::elementwise::num::erf_f64(z / std::f64::consts::SQRT_2))
        }
        _ if measured >= floor => 1.0,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_spreads_the_held_out_runs_evenly_and_is_deterministic() {
        let runs: Vec<(usize, usize)> = (0..9).map(|k| (k * 8, k * 8 + 8)).collect();
        let (s, h) = split_runs(&runs, 2.0 / 3.0);
        assert_eq!(s.len(), 3);
        assert_eq!(h.len(), 6);
        assert_eq!(s, vec![(0, 8), (24, 32), (48, 56)]);
        assert_eq!(split_runs(&runs, 2.0 / 3.0), (s, h));
        let (s, h) = split_runs(&runs, 0.0);
        assert_eq!((s.len(), h.len()), (9, 0));
    }

    #[test]
    fn paired_drop_is_the_mean_difference_with_its_interval() {
        // One flip in 4 samples: drop 25 pt.
        let (m, hw) = paired_drop(&[100.0, 100.0, 0.0, 100.0], &[100.0, 0.0, 0.0, 100.0]).unwrap();
        assert!((m - 25.0).abs() < 1e-12);
        // sd of (0, 100, 0, 0) = 50; 1.96 · 50 / 2.
        assert!((hw - 49.0).abs() < 1e-9, "{hw}");
        assert!(paired_drop(&[1.0], &[1.0]).is_none());
    }

    #[test]
    fn within_probability_is_the_normal_tail_of_the_margin() {
        // On the floor: even odds; one standard error above it: Φ(1); two below: Φ(−2).
        assert!((within_probability(79.0, 79.0, Some(0.5)) - 0.5).abs() < 1e-12);
        assert!((within_probability(80.0, 79.0, Some(1.0)) - 0.841_344_746).abs() < 1e-8);
        assert!((within_probability(77.0, 79.0, Some(1.0)) - 0.022_750_132).abs() < 1e-8);
        // No spread: the measured value decides.
        assert_eq!(within_probability(79.0, 79.0, Some(0.0)), 1.0);
        assert_eq!(within_probability(78.9, 79.0, None), 0.0);
    }
}
