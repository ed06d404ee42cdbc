//! Numbers that say how far a quantized result is from its reference, computed streaming (a
//! [`NoiseAccumulator`] holds five sums, whatever the number of samples), plus the task metrics
//! `lowbit eval` reports: top-k accuracy and Spearman rank correlation (STS-B's metric), and
//! the median and percentiles of timings.

use serde::{Deserialize, Serialize};

/// Noise of a test signal against its reference.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Noise {
    /// 10·log10(Σ ref² / Σ (ref − test)²); `f64::INFINITY` when identical, reported as `null`
    /// in JSON.
    #[serde(with = "finite_or_null")]
    pub sqnr_db: f64,
    /// Mean squared error.
    pub mse: f64,
    /// Cosine similarity of the flattened signals (1 when both are zero).
    pub cosine: f64,
    /// Largest |ref − test|.
    pub max_abs: f64,
    /// Values compared.
    pub count: u64,
}

/// Streaming sums behind [`Noise`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NoiseAccumulator {
    ref_sq: f64,
    test_sq: f64,
    dot: f64,
    err_sq: f64,
    max_abs: f64,
    count: u64,
}

impl NoiseAccumulator {
    pub fn new() -> NoiseAccumulator {
        NoiseAccumulator::default()
    }

    /// Adds one pair of equally long slices.
    pub fn add(&mut self, reference: &[f32], test: &[f32]) {
        debug_assert_eq!(reference.len(), test.len());
        for (&r, &t) in reference.iter().zip(test) {
            let (r, t) = (r as f64, t as f64);
            let e = r - t;
            self.ref_sq += r * r;
            self.test_sq += t * t;
            self.dot += r * t;
            self.err_sq += e * e;
            self.max_abs = self.max_abs.max(e.abs());
        }
        self.count += reference.len().min(test.len()) as u64;
    }

    /// Merges another accumulator (e.g. from another thread).
    pub fn merge(&mut self, other: &NoiseAccumulator) {
        self.ref_sq += other.ref_sq;
        self.test_sq += other.test_sq;
        self.dot += other.dot;
        self.err_sq += other.err_sq;
        self.max_abs = self.max_abs.max(other.max_abs);
        self.count += other.count;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The figures so far; `None` before any value.
    pub fn noise(&self) -> Option<Noise> {
        if self.count == 0 {
            return None;
        }
        let sqnr_db = if self.err_sq == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (self.ref_sq / self.err_sq).log10()
        };
        let norms = (self.ref_sq * self.test_sq).sqrt();
        let cosine = if norms == 0.0 {
            if self.ref_sq == self.test_sq {
                1.0
            } else {
                0.0
            }
        } else {
            self.dot / norms
        };
        Some(Noise {
            sqnr_db,
            mse: self.err_sq / self.count as f64,
            cosine,
            max_abs: self.max_abs,
            count: self.count,
        })
    }
}

/// [`Noise`] of one pair of slices.
pub fn noise(reference: &[f32], test: &[f32]) -> Option<Noise> {
    let mut a = NoiseAccumulator::new();
    a.add(reference, test);
    a.noise()
}

/// Cosine similarity of two vectors (1 when both are zero, 0 when one is).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    noise(a, b).map_or(1.0, |n| n.cosine)
}

/// Whether `label` is among the `k` largest of `scores` (ties broken by lower index, like a
/// stable descending sort).
pub fn in_top_k(scores: &[f32], label: usize, k: usize) -> bool {
    let Some(&s) = scores.get(label) else { return false };
    if s.is_nan() {
        return false;
    }
    let better =
        scores.iter().enumerate().filter(|&(i, &v)| v > s || (v == s && i < label)).count();
    better < k
}

/// Index of the largest score (the first on ties).
pub fn argmax(scores: &[f32]) -> usize {
    // NaN never wins (and a leading NaN does not either).
    let mut best: Option<usize> = None;
    for (i, &v) in scores.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|b| v > scores[b]) {
            best = Some(i);
        }
    }
    best.unwrap_or(0)
}

/// The median of sorted values: the middle one, or the mean of the middle two (NaN when empty).
pub fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if !n.is_multiple_of(2) => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The nearest-rank `p`-th percentile of sorted values (NaN when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Ranks 1..=n with ties sharing their average rank (as scipy's `rankdata`).
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            ranks[o] = r;
        }
        i = j + 1;
    }
    ranks
}

/// Pearson correlation; 0 when either side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n == 0 {
        return 0.0;
    }
    let mx = x[..n].iter().sum::<f64>() / n as f64;
    let my = y[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x[..n].iter().zip(&y[..n]) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// Spearman rank correlation (Pearson of average ranks), as STS-B is scored.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&average_ranks(x), &average_ranks(y))
}

/// `f64` fields that may be infinite: JSON has no infinity, so they are written as `null`.
pub(crate) mod finite_or_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles_of_sorted_values() {
        assert_eq!(median(&[1.0, 2.0, 4.0, 8.0]), 3.0);
        assert_eq!(median(&[1.0, 2.0, 4.0]), 2.0);
        assert!(median(&[]).is_nan());
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(median(&v), 5.5);
        assert_eq!(percentile(&v, 90.0), 9.0);
        assert_eq!(percentile(&[3.0], 90.0), 3.0);
    }

    #[test]
    fn noise_of_a_known_perturbation() {
        let r = [1.0f32, -2.0, 3.0, -4.0];
        let t = [1.1f32, -2.0, 3.0, -4.0];
        let n = noise(&r, &t).unwrap();
        // Σ r² = 30, Σ e² = 0.01 → 10·log10(3000) = 34.77 dB.
        assert!((n.sqnr_db - 34.771).abs() < 1e-2, "{n:?}");
        assert!((n.mse - 0.0025).abs() < 1e-7);
        assert!((n.max_abs - 0.1).abs() < 1e-6);
        assert!(n.cosine > 0.9998 && n.cosine < 1.0);
        assert_eq!(n.count, 4);
        assert_eq!(noise(&r, &r).unwrap().sqnr_db, f64::INFINITY);
        let json = serde_json::to_string(&noise(&r, &r).unwrap()).unwrap();
        assert!(json.contains("\"sqnr_db\":null"), "{json}");
        let back: Noise = serde_json::from_str(&json).unwrap();
        assert_eq!(back.sqnr_db, f64::INFINITY);
    }

    #[test]
    fn accumulating_in_pieces_equals_one_pass() {
        let r: Vec<f32> = (0..100).map(|i| (i as f32 * 0.3).sin()).collect();
        let t: Vec<f32> = r.iter().map(|v| v + 0.01 * (v * 7.0).cos()).collect();
        let mut a = NoiseAccumulator::new();
        a.add(&r[..37], &t[..37]);
        let mut b = NoiseAccumulator::new();
        b.add(&r[37..], &t[37..]);
        a.merge(&b);
        let (x, y) = (a.noise().unwrap(), noise(&r, &t).unwrap());
        assert!((x.sqnr_db - y.sqnr_db).abs() < 1e-9 && x.count == y.count);
    }

    #[test]
    fn top_k_and_argmax() {
        let s = [0.1f32, 0.5, 0.5, 0.2];
        assert_eq!(argmax(&s), 1);
        assert!(in_top_k(&s, 1, 1));
        assert!(!in_top_k(&s, 2, 1));
        assert!(in_top_k(&s, 2, 2));
        assert!(!in_top_k(&s, 0, 3));
        assert!(!in_top_k(&s, 9, 4));
        let n = [f32::NAN, 0.2, 0.7];
        assert_eq!(argmax(&n), 2);
        assert!(!in_top_k(&n, 0, 3));
    }

    #[test]
    fn spearman_matches_scipy_on_ties() {
        // Pearson of the average ranks [1, 2.5, 2.5, 4, 5] and [2, 1, 3.5, 3.5, 5] (numpy) = 0.7631578947368421
        let x = [1.0, 2.0, 2.0, 3.0, 5.0];
        let y = [2.0, 1.0, 4.0, 4.0, 9.0];
        assert!((spearman(&x, &y) - 0.763_157_894_736_842_1).abs() < 1e-12);
        assert_eq!(average_ranks(&[3.0, 1.0, 3.0]), vec![2.5, 1.0, 2.5]);
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[1.0, 1.0, 1.0]), 0.0);
    }
}
