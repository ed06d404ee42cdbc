//! A streaming histogram with a fixed number of bins, and the ranges read from it:
//! percentile, entropy (KL divergence, TensorRT-style) and MSE.
//!
//! ```
//! use lowbit_quant::calibrate::{Histogram, Observer};
//! let mut h = Histogram::new(2048);
//! h.observe_finite(&[0.0, 1.0, 2.0, 3.0]);
//! h.observe_finite(&[-40.0]); // outside: bins merge in pairs until it fits
//! assert_eq!(h.total(), 5);
//! assert_eq!(h.memory_bytes(), Histogram::new(2048).memory_bytes());
//! let r = h.percentile_range(100.0).unwrap();
//! assert_eq!((r.min, r.max), (-40.0, 3.0));
//! ```
//!
//! **Grid.** Bin `i` covers `[(i − z)·w, (i − z + 1)·w)`: 0 is always a bin edge (the edge of
//! bin `z`), so the grid covers `[min(min, 0), max(max, 0)]`, the range qparams use. A value
//! `x` goes to bin `z + floor(x · (1/w))` (in f64; the reciprocal of `w · 2^k` is exactly
//! `(1/w) · 2^−k`). The first batch with a non-zero value
//! sets `w = (hi − lo) / (bins − 2)`; spare bins are split between the negative and the
//! positive side in proportion to what each side uses (an all-positive ReLU output gets `z = 0`).
//! Before that, zeros wait in bin 0 with `w = 0`.
//!
//! **Growth (the merge rule).** When a batch falls outside the grid, `w` doubles (as often as
//! needed, `w' = w · 2^k`) and `z` is chosen again by the same rule; old bin `i` moves to bin
//! `z' + floor((i − z) / 2^k)`. Because `w'` is `w` times a power of two, `floor(x / w') =
//! floor(floor(x / w) / 2^k)` exactly in floating point: merging is exact (no count is split
//! or guessed), and every value sits where direct binning at width `w'` would put it. The bin
//! count never changes, so memory is independent of the number of samples; counts are
//! integers, so parallel counting is exact and results do not depend on the thread count.
//!
//! **Percentile** `p`: the lower bound is the lower edge of the bin where the cumulative count
//! first reaches `(100 − p) / 200` of the total, the upper bound the upper edge of the bin
//! where it first reaches `1 − (100 − p) / 200` (ONNX Runtime's two-sided cut); both are
//! clamped to the observed `[min, max]`.
//!
//! **Entropy** (TensorRT's calibrator, as in NVIDIA's pytorch-quantization
//! `_compute_amax_entropy`): the histogram is folded onto magnitudes `|x|` (bins `z + j` and
//! `z − 1 − j` add into magnitude bin `j`), trimmed after its last non-empty bin. For every
//! candidate threshold of `i` bins, `levels ≤ i ≤ len` (`levels` = 128 for int8: the positive
//! half of the grid), the reference `P` is bins `0..i` with all counts beyond added to the
//! last one; the candidate `Q` merges bins `0..i` into `levels` groups (bin `j` into group
//! `⌊j · levels / i⌋`, exact integers) and spreads each group's count evenly over its
//! non-empty bins (empty bins stay 0). The threshold `T = i · w` with the smallest `KL(P‖Q)`
//! wins (the largest on ties; `Q = 0` where `P > 0` counts as infinite), and the range is
//! `[max(min, −T), min(max, T)]`.
//!
//! **MSE**: candidate clip ranges `α · [min(min, 0), max(max, 0)]` for `α = k / 200`,
//! `k = 1..=200`. The expected squared error of each is estimated from the bins, each standing
//! for its centre (clamped to `[min, max]`): a value inside the range costs `Δ² / 12` (uniform
//! rounding noise, `Δ = range / (levels − 1)`, 256 levels for 8 bits), one outside costs its
//! squared distance to the range. The smallest error wins (the widest range on ties); the range
//! is clamped to `[min, max]`.

use super::{min_max, Observer, Range, PAR_CHUNK};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// A fixed-size histogram over a grid that grows by exact pairwise merging.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    counts: Vec<u64>,
    /// Bin width; 0 until a non-zero value arrives.
    width: f64,
    /// Bin whose lower edge is 0.
    zero_bin: usize,
    min: f32,
    max: f32,
    total: u64,
}

/// A histogram as stored in `ranges.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistogramSummary {
    pub bins: usize,
    pub bin_width: f64,
    /// Bin whose lower edge is 0.
    pub zero_bin: usize,
    /// Lower edge of the first bin, upper edge of the last.
    pub range: [f64; 2],
    pub counts: Vec<u64>,
}

/// `floor(v)` as an integer, inlined: `f64::floor` is a libm call on baseline x86-64 (no
/// SSE4.1 `roundsd`), and was a fifth of calibration time. Exact for |v| < 2^63 (truncate,
/// then step down when truncation went up); larger magnitudes are clamped first.
#[inline(always)]
fn floor_i64(v: f64) -> i64 {
    // Far beyond any grid: clamped so truncation cannot saturate and the step down cannot
    // overflow (values this large only ever mean "outside").
    let v = v.clamp(-4.0e18, 4.0e18);
    let t = v as i64;
    t - i64::from((t as f64) > v)
}

fn floor_div(a: i64, b: i64) -> i64 {
    a.div_euclid(b)
}

impl Histogram {
    /// An empty histogram of `bins` bins (at least 4).
    pub fn new(bins: usize) -> Histogram {
        Histogram {
            counts: vec![0; bins.max(4)],
            width: 0.0,
            zero_bin: 0,
            min: 0.0,
            max: 0.0,
            total: 0,
        }
    }

    /// Rebuilds a histogram from a saved summary and the tensor's extremes (so methods can be
    /// re-run with other settings without the data).
    pub fn from_summary(s: &HistogramSummary, min: f32, max: f32) -> Option<Histogram> {
        let ok = s.bins >= 4
            && s.counts.len() == s.bins
            && s.zero_bin <= s.bins
            && s.bin_width >= 0.0
            && s.bin_width.is_finite()
            && min <= max;
        ok.then(|| Histogram {
            counts: s.counts.clone(),
            width: s.bin_width,
            zero_bin: s.zero_bin,
            min,
            max,
            total: s.counts.iter().sum(),
        })
    }

    pub fn summary(&self) -> HistogramSummary {
        HistogramSummary {
            bins: self.counts.len(),
            bin_width: self.width,
            zero_bin: self.zero_bin,
            range: [self.edge(0), self.edge(self.counts.len())],
            counts: self.counts.clone(),
        }
    }

    pub fn bins(&self) -> usize {
        self.counts.len()
    }

    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    pub fn bin_width(&self) -> f64 {
        self.width
    }

    /// Values observed.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Lower edge of bin `i` (upper edge of bin `i − 1`).
    pub fn edge(&self, i: usize) -> f64 {
        (i as i64 - self.zero_bin as i64) as f64 * self.width
    }

    /// Bins needed for `[lo, hi]` (lo ≤ 0 ≤ hi) at width `w`, and the bins left of zero.
    fn need(lo: f64, hi: f64, w: f64) -> (i64, i64) {
        let neg = -floor_i64(lo * (1.0 / w));
        let pos = floor_i64(hi * (1.0 / w)) + 1;
        (neg + pos, neg)
    }

    fn fits(&self, lo: f64, hi: f64) -> bool {
        let z = self.zero_bin as i64;
        let inv = 1.0 / self.width;
        self.width > 0.0
            && z + floor_i64(lo * inv) >= 0
            && z + floor_i64(hi * inv) < self.counts.len() as i64
    }

    /// Makes the grid cover `[lo, hi]` (lo ≤ 0 ≤ hi, not both 0), merging bins exactly.
    fn regrid(&mut self, lo: f64, hi: f64) {
        let n = self.counts.len();
        let w = if self.width == 0.0 { (hi - lo) / (n - 2) as f64 } else { self.width * 2.0 };
        (self.counts, self.width, self.zero_bin) = self.merged(n, lo, hi, w);
    }

    /// The counts on a grid of `n` bins covering `[lo, hi]` at width `w · 2^k` (the smallest
    /// k that fits), by the merge rule: `(counts, width, zero_bin)`.
    fn merged(&self, n: usize, lo: f64, hi: f64, mut w: f64) -> (Vec<u64>, f64, usize) {
        let n = n as i64;
        while Histogram::need(lo, hi, w).0 > n {
            w *= 2.0;
        }
        let (m, neg) = Histogram::need(lo, hi, w);
        let z = (neg + (n - m) * neg / m) as usize;
        let mut counts = vec![0u64; n as usize];
        // Only bin 0 can hold anything while the width is 0 (zeros), and it maps to bin z.
        let ratio = if self.width == 0.0 { 1 } else { (w / self.width) as i64 };
        for (i, &c) in self.counts.iter().enumerate().filter(|(_, &c)| c > 0) {
            let o = i as i64 - self.zero_bin as i64;
            let j = (z as i64 + floor_div(o, ratio)).clamp(0, n - 1);
            counts[j as usize] += c;
        }
        (counts, w, z)
    }

    /// The same values on at most `bins` bins (at least 4): neighbouring bins merged by the
    /// merge rule, so every count stays exact. A compact copy to store.
    pub fn coarsened(&self, bins: usize) -> Histogram {
        let bins = bins.max(4);
        let (lo, hi) = (self.min.min(0.0) as f64, self.max.max(0.0) as f64);
        let mut h = Histogram { counts: vec![0; bins], ..self.clone() };
        if self.width == 0.0 {
            // Zeros only (or nothing): they stay in the zero bin.
            h.zero_bin = 0;
            h.counts[0] = self.total;
        } else if bins < self.counts.len() {
            (h.counts, h.width, h.zero_bin) = self.merged(bins, lo, hi, self.width);
        } else {
            h.counts[..self.counts.len()].copy_from_slice(&self.counts);
        }
        h
    }

    /// An empty histogram on this one's grid, for [`Histogram::observe_on_grid`].
    pub fn empty_on_grid(&self) -> Histogram {
        Histogram { counts: vec![0; self.counts.len()], min: 0.0, max: 0.0, total: 0, ..*self }
    }

    /// Adds finite values on the current grid without growing it: values beyond it count in
    /// the first or last bin (comparisons with another data set need one grid). A grid of
    /// width 0 counts everything in the zero bin.
    pub fn observe_on_grid(&mut self, x: &[f32]) {
        let Some((lo, hi)) = min_max(x) else { return };
        if self.total == 0 {
            (self.min, self.max) = (lo, hi);
        } else {
            (self.min, self.max) = (self.min.min(lo), self.max.max(hi));
        }
        self.total += x.len() as u64;
        if self.width == 0.0 {
            let z = self.zero_bin.min(self.counts.len() - 1);
            self.counts[z] += x.len() as u64;
            return;
        }
        let (w, z) = (self.width, self.zero_bin as i64);
        for ch in x.chunks(PAR_CHUNK) {
            Histogram::count_into(&mut self.counts, ch, w, z);
        }
    }

    /// Adds `n` copies of the finite value `x` on the current grid, as
    /// [`Histogram::observe_on_grid`] would (a tally of integer codes, each standing for one
    /// dequantized value).
    pub fn observe_repeated_on_grid(&mut self, x: f32, n: u64) {
        if n == 0 || !x.is_finite() {
            return;
        }
        if self.total == 0 {
            (self.min, self.max) = (x, x);
        } else {
            (self.min, self.max) = (self.min.min(x), self.max.max(x));
        }
        self.total += n;
        let last = self.counts.len() as i64 - 1;
        let bin = if self.width == 0.0 {
            self.zero_bin as i64
        } else {
            self.zero_bin as i64 + floor_i64(x as f64 * (1.0 / self.width))
        };
        self.counts[bin.clamp(0, last) as usize] += n;
    }

    /// The same values clamped to `[lo, hi]`: the counts of bins wholly outside move to the
    /// bin holding the bound, as a quantizer's clipping moves the values (to compare with
    /// values that were quantized, e.g. an integer tensor's dequantized codes).
    pub fn clamped(&self, lo: f32, hi: f32) -> Histogram {
        let mut h = self.clone();
        if self.width == 0.0 || lo > hi {
            return h;
        }
        let last = self.counts.len() as i64 - 1;
        let bin = |x: f32| {
            (self.zero_bin as i64 + floor_i64(x as f64 * (1.0 / self.width))).clamp(0, last)
                as usize
        };
        let (blo, bhi) = (bin(lo), bin(hi));
        for i in (0..blo).chain(bhi + 1..self.counts.len()) {
            let c = std::mem::take(&mut h.counts[i]);
            h.counts[if i < blo { blo } else { bhi }] += c;
        }
        (h.min, h.max) = (self.min.clamp(lo, hi), self.max.clamp(lo, hi));
        h
    }

    /// The share of the observed values outside `range`, each bin's count taken as spread
    /// evenly over the part of the bin inside the observed `[min, max]`.
    pub fn fraction_outside(&self, range: Range) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let (fmin, fmax) = (self.min as f64, self.max as f64);
        let (a, b) = (range.min as f64, range.max as f64);
        let mut outside = 0.0;
        for (i, &c) in self.counts.iter().enumerate().filter(|(_, &c)| c > 0) {
            let (l, r) = if self.width == 0.0 {
                (fmin, fmax)
            } else {
                (self.edge(i).max(fmin), self.edge(i + 1).min(fmax))
            };
            let share = if r <= l {
                // A single point (or a bin the extremes cut to nothing).
                f64::from(l < a || l > b)
            } else {
                ((a.min(r) - l).max(0.0) + (r - b.max(l)).max(0.0)) / (r - l)
            };
            outside += c as f64 * share;
        }
        outside / self.total as f64
    }

    /// Adds `x` into `counts` at width `w`. Values are binned as `floor(x · (1/w))`: the
    /// reciprocal of `w · 2^k` is exactly `(1/w) · 2^−k`, so the merge rule stays exact, and a
    /// multiply is several times cheaper than a divide. Four interleaved tallies keep runs of
    /// equal bins (most activations crowd a few) from serializing on one counter.
    fn count_into(counts: &mut [u64], x: &[f32], w: f64, z: i64) {
        const BLOCK: usize = 256;
        let n = counts.len();
        let inv = 1.0 / w;
        // Every value of the batch lies inside the grid (the caller regrids first), so
        // `x · inv` is within `[−z, n − z]`; clamping there keeps the i32 conversion in range.
        let (lo, hi) = (-(z as f64), (n as i64 - z) as f64);
        let (z, last) = (z as i32, n as i32 - 1);
        let bins_of = |block: &[f32], idx: &mut [u16]| {
            for (i, &v) in idx.iter_mut().zip(block) {
                let a = (v as f64 * inv).clamp(lo, hi);
                let t = a as i32;
                let floor = t - i32::from(t as f64 > a);
                *i = (floor + z).clamp(0, last) as u16;
            }
        };
        let mut idx = [0u16; BLOCK];
        debug_assert!(x.len() <= u32::MAX as usize, "callers pass at most PAR_CHUNK values");
        debug_assert!(n <= u16::MAX as usize);
        if x.len() < 8 * n {
            // A short batch (calibration feeds one sentence per run): zeroing and folding four
            // tallies of `n` bins would cost more than the counting.
            for block in x.chunks(BLOCK) {
                bins_of(block, &mut idx);
                for &i in &idx[..block.len()] {
                    counts[i as usize] += 1;
                }
            }
            return;
        }
        let mut lanes = vec![0u32; 4 * n];
        let (l0, rest) = lanes.split_at_mut(n);
        let (l1, rest) = rest.split_at_mut(n);
        let (l2, l3) = rest.split_at_mut(n);
        for block in x.chunks(BLOCK) {
            // Pass 1 (vectorizes): bin indices.
            bins_of(block, &mut idx);
            // Pass 2: four interleaved tallies, so runs of one bin do not serialize.
            let ids = &idx[..block.len()];
            let quads = ids.chunks_exact(4);
            for &i in quads.remainder() {
                l0[i as usize] += 1;
            }
            for q in quads {
                l0[q[0] as usize] += 1;
                l1[q[1] as usize] += 1;
                l2[q[2] as usize] += 1;
                l3[q[3] as usize] += 1;
            }
        }
        for (j, c) in counts.iter_mut().enumerate() {
            *c += l0[j] as u64 + l1[j] as u64 + l2[j] as u64 + l3[j] as u64;
        }
    }

    /// The extremes observed, `None` before any value.
    pub fn min_max(&self) -> Option<Range> {
        (self.total > 0).then(|| Range::new(self.min, self.max))
    }

    /// The range keeping `percentile` % of the values (see module docs).
    pub fn percentile_range(&self, percentile: f64) -> Option<Range> {
        let full = self.min_max()?;
        if self.width == 0.0 {
            return Some(full);
        }
        let cut = ((100.0 - percentile) / 200.0).clamp(0.0, 0.5);
        let total = self.total as f64;
        let mut cum = 0u64;
        let (mut lo_bin, mut hi_bin) = (None, None);
        for (i, &c) in self.counts.iter().enumerate() {
            cum += c;
            let f = cum as f64 / total;
            if lo_bin.is_none() && f >= cut && cum > 0 {
                lo_bin = Some(i);
            }
            if hi_bin.is_none() && f >= 1.0 - cut && cum > 0 {
                hi_bin = Some(i);
                break;
            }
        }
        let lo = lo_bin.map_or(full.min, |i| (self.edge(i) as f32).max(full.min));
        let hi = hi_bin.map_or(full.max, |i| (self.edge(i + 1) as f32).min(full.max));
        Some(Range::new(lo.min(hi), hi))
    }

    /// Magnitude histogram: bin `j` counts `|x|` in `[j·w, (j+1)·w]`, trimmed after the last
    /// non-empty bin.
    fn magnitudes(&self) -> Vec<u64> {
        let n = self.counts.len();
        let z = self.zero_bin;
        let len = z.max(n - z);
        let mut mag: Vec<u64> = (0..len)
            .map(|j| {
                let pos = if z + j < n { self.counts[z + j] } else { 0 };
                let neg = if j < z { self.counts[z - 1 - j] } else { 0 };
                pos + neg
            })
            .collect();
        while mag.last() == Some(&0) {
            mag.pop();
        }
        mag
    }

    /// TensorRT's entropy (KL divergence) threshold over `levels` quantized bins (see module
    /// docs).
    pub fn entropy_range(&self, levels: usize) -> Option<Range> {
        let full = self.min_max()?;
        if self.width == 0.0 {
            return Some(full);
        }
        let mag = self.magnitudes();
        let len = mag.len();
        let levels = levels.max(1);
        let best_bins = if len <= levels {
            len
        } else {
            let kl = KlTerms::new(&mag);
            let mut best = (f64::INFINITY, len);
            for i in levels..=len {
                let d = kl.divergence(i, levels);
                if d <= best.0 {
                    best = (d, i);
                }
            }
            best.1
        };
        let t = (best_bins as f64 * self.width) as f32;
        Some(Range::new((-t).max(full.min).min(full.max), t.min(full.max).max(full.min)))
    }

    /// Bin centres (clamped to the observed range) with their counts, empty bins left out.
    fn centres(&self, full: Range) -> Vec<(f64, f64)> {
        let (fmin, fmax) = (full.min as f64, full.max as f64);
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| ((self.edge(i) + 0.5 * self.width).clamp(fmin, fmax), c as f64))
            .collect()
    }

    /// The clip range minimizing expected quantization MSE on a `levels`-level grid (see
    /// module docs).
    pub fn mse_range(&self, levels: usize) -> Option<Range> {
        const STEPS: u32 = 200;
        let full = self.min_max()?;
        if self.width == 0.0 {
            return Some(full);
        }
        let bins = self.centres(full);
        let (lo, hi) = ((full.min as f64).min(0.0), (full.max as f64).max(0.0));
        let mut best = (f64::INFINITY, 1.0);
        for k in (1..=STEPS).rev() {
            let alpha = k as f64 / STEPS as f64;
            let err = expected_error(&bins, alpha * lo, alpha * hi, levels);
            if err < best.0 {
                best = (err, alpha);
            }
        }
        let (a, b) = ((best.1 * lo) as f32, (best.1 * hi) as f32);
        Some(Range::new(a.max(full.min).min(full.max), b.min(full.max).max(full.min)))
    }

    /// The signal-to-quantization-noise ratio (dB) expected when the observed values are
    /// quantized on a `levels`-level grid over `range`, by the error model of
    /// [`Histogram::mse_range`]: a low figure means most values share few levels (outliers
    /// stretch the range), whatever the clip. `None` for an empty or all-zero histogram.
    pub fn expected_sqnr_db(&self, range: Range, levels: usize) -> Option<f64> {
        let full = self.min_max()?;
        if self.width == 0.0 {
            return None;
        }
        let bins = self.centres(full);
        let signal: f64 = bins.iter().map(|&(c, n)| n * c * c).sum();
        let (lo, hi) = ((range.min as f64).min(0.0), (range.max as f64).max(0.0));
        let noise = expected_error(&bins, lo, hi, levels);
        (signal > 0.0).then(|| 10.0 * (signal / noise.max(f64::MIN_POSITIVE)).log10())
    }
}

/// Expected total squared error of quantizing `bins` (centre, count) on a `levels`-level grid
/// over `[a, b]`: `Δ²/12` inside, the squared distance to the range outside.
fn expected_error(bins: &[(f64, f64)], a: f64, b: f64, levels: usize) -> f64 {
    let step = (b - a) / (levels.max(2) - 1) as f64;
    let noise = step * step / 12.0;
    bins.iter()
        .map(|&(c, n)| {
            let d = if c < a {
                (a - c) * (a - c)
            } else if c > b {
                (c - b) * (c - b)
            } else {
                noise
            };
            n * d
        })
        .sum()
}

/// Prefix sums over a magnitude histogram that give `KL(P‖Q)` for any threshold in
/// O(levels) instead of O(bins): within a merged group `Q` is constant, so
/// `KL = Σ_j p_j ln p_j − Σ_k P_k ln q_k`, and every sum is a difference of prefix sums.
struct KlTerms<'a> {
    bins: &'a [u64],
    /// `count[j]` = Σ bins[..j].
    count: Vec<u64>,
    /// `nonzero[j]` = number of non-empty bins in bins[..j].
    nonzero: Vec<u64>,
    /// `clnc[j]` = Σ c ln c over bins[..j].
    clnc: Vec<f64>,
}

fn c_ln_c(c: u64) -> f64 {
    if c == 0 {
        0.0
    } else {
        c as f64 * (c as f64).ln()
    }
}

impl<'a> KlTerms<'a> {
    fn new(bins: &'a [u64]) -> KlTerms<'a> {
        let n = bins.len();
        let (mut count, mut nonzero, mut clnc) =
            (vec![0u64; n + 1], vec![0u64; n + 1], vec![0f64; n + 1]);
        for (j, &c) in bins.iter().enumerate() {
            count[j + 1] = count[j] + c;
            nonzero[j + 1] = nonzero[j] + u64::from(c > 0);
            clnc[j + 1] = clnc[j] + c_ln_c(c);
        }
        KlTerms { bins, count, nonzero, clnc }
    }

    /// `KL(P‖Q)` for the threshold at `i` bins: `P` is bins `0..i` with everything beyond
    /// added to bin `i − 1`; `Q` merges them into `levels` groups (bin `j` into group
    /// `⌊j · levels / i⌋`) spread evenly over each group's non-empty bins. Infinite where
    /// `P > 0` and `Q = 0`.
    fn divergence(&self, i: usize, levels: usize) -> f64 {
        let n = self.bins.len();
        let outliers = self.count[n] - self.count[i];
        let last = self.bins[i - 1];
        if last == 0 && outliers > 0 {
            return f64::INFINITY;
        }
        let q_total = self.count[i];
        let p_total = q_total + outliers;
        if q_total == 0 {
            return f64::INFINITY;
        }
        let (pt, qt) = (p_total as f64, q_total as f64);
        // Σ_j p_j ln p_j with p_j = c'_j / pt and Σ p = 1.
        let sum_plnp = (self.clnc[i - 1] + c_ln_c(last + outliers)) / pt - pt.ln();
        // Σ_k P_k ln q_k over the groups; group k is bins [⌈k·i/L⌉, ⌈(k+1)·i/L⌉).
        let mut sum_plnq = 0.0;
        let group_start = |k: usize| (k * i).div_ceil(levels);
        let mut lo = 0;
        for k in 0..levels {
            let hi = group_start(k + 1);
            if hi > lo {
                let c = self.count[hi] - self.count[lo];
                if c > 0 {
                    let nz = (self.nonzero[hi] - self.nonzero[lo]) as f64;
                    let p = c + if hi == i { outliers } else { 0 };
                    let q = c as f64 / nz / qt;
                    sum_plnq += p as f64 / pt * q.ln();
                }
            }
            lo = hi;
        }
        sum_plnp - sum_plnq
    }
}

impl Observer for Histogram {
    fn observe_finite(&mut self, x: &[f32]) {
        if let Some((lo, hi)) = min_max(x) {
            self.observe_with_extremes(x, lo, hi);
        }
    }

    fn observe_with_extremes(&mut self, x: &[f32], blo: f32, bhi: f32) {
        if self.total == 0 {
            (self.min, self.max) = (blo, bhi);
        } else {
            (self.min, self.max) = (self.min.min(blo), self.max.max(bhi));
        }
        self.total += x.len() as u64;
        let (lo, hi) = (self.min.min(0.0) as f64, self.max.max(0.0) as f64);
        if lo == 0.0 && hi == 0.0 {
            // Only zeros so far: they wait in bin 0 until a grid exists.
            self.counts[self.zero_bin] += x.len() as u64;
            return;
        }
        if !self.fits(lo, hi) {
            self.regrid(lo, hi);
        }
        let (w, z) = (self.width, self.zero_bin as i64);
        if x.len() > PAR_CHUNK {
            let n = self.counts.len();
            let local = x
                .par_chunks(PAR_CHUNK)
                .map(|ch| {
                    let mut c = vec![0u64; n];
                    Histogram::count_into(&mut c, ch, w, z);
                    c
                })
                .reduce(
                    || vec![0u64; n],
                    |mut a, b| {
                        a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                        a
                    },
                );
            self.counts.iter_mut().zip(local).for_each(|(a, b)| *a += b);
        } else {
            Histogram::count_into(&mut self.counts, x, w, z);
        }
    }

    /// The full observed range; the methods below give the narrower ones.
    fn range(&self) -> Option<Range> {
        self.min_max()
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.counts.len() * std::mem::size_of::<u64>()
    }
}

macro_rules! histogram_observer {
    ($(#[$doc:meta])* $name:ident, $param:ident: $t:ty = $default:expr, $method:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct $name {
            pub histogram: Histogram,
            pub $param: $t,
        }

        impl $name {
            pub fn new(bins: usize, $param: $t) -> $name {
                $name { histogram: Histogram::new(bins), $param }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name::new(2048, $default)
            }
        }

        impl Observer for $name {
            fn observe_finite(&mut self, x: &[f32]) {
                self.histogram.observe_finite(x)
            }
            fn range(&self) -> Option<Range> {
                self.histogram.$method(self.$param)
            }
            fn memory_bytes(&self) -> usize {
                self.histogram.memory_bytes()
            }
        }
    };
}

histogram_observer!(
    /// Percentile range over a [`Histogram`] (default 99.999 over 2048 bins).
    Percentile, percentile: f64 = 99.999, percentile_range
);
histogram_observer!(
    /// TensorRT-style entropy range over a [`Histogram`] (default 128 levels, 2048 bins).
    Entropy, levels: usize = 128, entropy_range
);
histogram_observer!(
    /// Minimum-MSE clip range over a [`Histogram`] (default 256 levels, 2048 bins).
    Mse, levels: usize = 256, mse_range
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Uniform values in [0, 1) the tests can regenerate.
    fn noise(seed: u64, n: usize) -> Vec<f32> {
        crate::algorithms::test_graphs::uniform(seed, n, 0.0, 1.0)
    }

    /// Approximately normal values (sum of uniforms), mean 0, std ≈ `std`.
    fn gaussian(seed: u64, n: usize, std: f32) -> Vec<f32> {
        let u = noise(seed, n * 12);
        u.chunks(12).map(|c| (c.iter().sum::<f32>() - 6.0) * std).collect()
    }

    #[test]
    fn zero_is_a_bin_edge_and_relu_outputs_use_every_bin() {
        let mut h = Histogram::new(64);
        h.observe_finite(&[0.0, 0.5, 6.2]);
        assert_eq!(h.zero_bin, 0);
        assert_eq!(h.edge(0), 0.0);
        assert!(h.edge(64) >= 6.2);
        let mut s = Histogram::new(64);
        s.observe_finite(&[-1.0, 1.0]);
        assert_eq!(s.edge(s.zero_bin), 0.0);
        // 31 bins left of zero, 32 right of it, the spare one split in proportion.
        assert_eq!(s.zero_bin, 31);
    }

    #[test]
    fn zeros_before_the_first_nonzero_value_are_kept() {
        let mut h = Histogram::new(16);
        h.observe_finite(&[0.0; 5]);
        assert_eq!(h.bin_width(), 0.0);
        assert_eq!(h.percentile_range(99.0), Some(Range::new(0.0, 0.0)));
        h.observe_finite(&[-2.0, 3.0]);
        assert_eq!(h.total(), 7);
        assert_eq!(h.counts()[h.zero_bin], 5);
        assert_eq!(h.counts().iter().sum::<u64>(), 7);
    }

    #[test]
    fn growth_merges_bins_exactly_like_direct_binning() {
        // Bin the same data in one batch and in growing batches: identical histograms once
        // both have the same grid.
        let data: Vec<f32> = noise(7, 5000).iter().map(|v| (v - 0.3) * 10.0).collect();
        let mut grown = Histogram::new(128);
        grown.observe_finite(&data[..10]);
        let before = grown.bin_width();
        grown.observe_finite(&[100.0]);
        grown.observe_finite(&data[10..]);
        assert!(grown.bin_width() >= before * 4.0);
        let mut direct = grown.clone();
        direct.counts.fill(0);
        let mut all = data.clone();
        all.push(100.0);
        Histogram::count_into(&mut direct.counts, &all, direct.width, direct.zero_bin as i64);
        assert_eq!(grown.counts, direct.counts);
        assert_eq!(grown.total(), 5001);
    }

    #[test]
    fn memory_does_not_grow_with_samples() {
        let mut h = Histogram::new(2048);
        let m0 = h.memory_bytes();
        for seed in 1..50 {
            h.observe_finite(&gaussian(seed, 1000, seed as f32));
        }
        assert_eq!(h.memory_bytes(), m0);
        assert_eq!(h.bins(), 2048);
    }

    #[test]
    fn parallel_counting_equals_sequential() {
        let data = gaussian(3, 3 * PAR_CHUNK, 2.0);
        let mut par = Histogram::new(2048);
        par.observe_finite(&data);
        // The same grid, counted sequentially.
        let mut seq2 = par.clone();
        seq2.counts.fill(0);
        Histogram::count_into(&mut seq2.counts, &data, par.width, par.zero_bin as i64);
        assert_eq!(par.counts, seq2.counts);
    }

    #[test]
    fn percentile_cuts_outliers() {
        let mut h = Histogram::new(2048);
        let mut data = noise(11, 100_000);
        data.push(10.0);
        h.observe_finite(&data);
        let r = h.percentile_range(99.9).unwrap();
        assert!(r.max < 1.02 && r.max > 0.99, "{r:?}");
        assert!(r.min >= 0.0);
        assert_eq!(h.percentile_range(100.0).unwrap(), Range::new(h.min, 10.0));
    }

    #[test]
    fn entropy_clips_a_long_tail_but_keeps_the_bulk() {
        let mut h = Histogram::new(2048);
        let mut data = gaussian(5, 200_000, 1.0);
        data.extend([12.0, -10.0]);
        h.observe_finite(&data);
        let r = h.entropy_range(128).unwrap();
        assert!(r.max > 2.0 && r.max < 8.0, "{r:?}");
        assert!(r.min < -2.0 && r.min > -8.0, "{r:?}");
        assert_eq!(-r.min, r.max, "entropy thresholds are symmetric inside the data range");
    }

    #[test]
    fn entropy_of_a_narrow_histogram_keeps_everything() {
        let mut h = Histogram::new(2048);
        h.observe_finite(&[0.0, 1.0, 2.0]);
        h.observe_finite(&[5000.0]);
        // Few occupied bins: fewer than 128 magnitude bins, nothing to clip.
        let r = h.entropy_range(128).unwrap();
        assert_eq!(r, Range::new(0.0, 5000.0));
    }

    #[test]
    fn mse_prefers_clipping_rare_outliers() {
        let mut h = Histogram::new(2048);
        // One outlier at 50 over a million values in [0, 1): the noise a full range adds to
        // every value outweighs clipping the one (optimum near 100 / (2 + 10^6 / (6 * 255^2))).
        let mut data: Vec<f32> = noise(9, 1_000_000);
        data.push(50.0);
        h.observe_finite(&data);
        let r = h.mse_range(256).unwrap();
        assert!(r.max < 30.0 && r.max > 15.0, "{r:?}");
        // Without outliers nothing is clipped much.
        let mut u = Histogram::new(2048);
        u.observe_finite(&noise(9, 100_000));
        let r = u.mse_range(256).unwrap();
        assert!(r.max > 0.95, "{r:?}");
    }

    /// The definition, bin by bin: the reference for [`KlTerms::divergence`].
    fn kl_by_definition(mag: &[u64], i: usize, levels: usize) -> f64 {
        let outliers: u64 = mag[i..].iter().sum();
        let bins = &mag[..i];
        let (mut sum, mut nz) = (vec![0u64; levels], vec![0u64; levels]);
        for (j, &c) in bins.iter().enumerate() {
            if c > 0 {
                sum[j * levels / i] += c;
                nz[j * levels / i] += 1;
            }
        }
        let qt: u64 = sum.iter().sum();
        let pt = (qt + outliers) as f64;
        let mut kl = 0.0;
        for (j, &c) in bins.iter().enumerate() {
            let p = c + if j == i - 1 { outliers } else { 0 };
            if p == 0 {
                continue;
            }
            if c == 0 {
                return f64::INFINITY;
            }
            let k = j * levels / i;
            let (p, q) = (p as f64 / pt, sum[k] as f64 / nz[k] as f64 / qt as f64);
            kl += p * (p / q).ln();
        }
        kl
    }

    #[test]
    fn kl_from_prefix_sums_equals_the_definition() {
        let u = noise(11, 4000);
        for (t, chunk) in u.chunks(400).enumerate() {
            // Sparse, bursty magnitude histograms with empty bins and a long tail.
            let mag: Vec<u64> = chunk
                .iter()
                .enumerate()
                .map(
                    |(j, &r)| if r < 0.3 { 0 } else { ((r * 50.0) as u64) * (400 - j as u64) / 40 },
                )
                .collect();
            let levels = 16 + 8 * (t % 3);
            let terms = KlTerms::new(&mag);
            for i in levels..=mag.len() {
                let (a, b) = (terms.divergence(i, levels), kl_by_definition(&mag, i, levels));
                if b.is_infinite() {
                    assert!(a.is_infinite(), "i {i}: {a} vs inf");
                } else {
                    assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()), "i {i}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn short_and_long_batches_count_alike() {
        let x = gaussian(5, 40_000, 3.0);
        let (w, z, n) = (0.01, 1024i64, 2048);
        let mut long = vec![0u64; n];
        Histogram::count_into(&mut long, &x, w, z); // four tallies
        let mut short = vec![0u64; n];
        for c in x.chunks(1000) {
            Histogram::count_into(&mut short, c, w, z); // straight counting
        }
        assert_eq!(long, short);
        assert_eq!(long.iter().sum::<u64>(), 40_000);
    }

    #[test]
    fn floor_i64_is_floor() {
        for v in
            [-2.5, -2.0, -1e-300, -0.0, 0.0, 1e-300, 0.999_999, 1.0, 2.5, -7.000_001, 1e15 + 0.5]
        {
            assert_eq!(floor_i64(v), v.floor() as i64, "{v}");
        }
    }

    #[test]
    fn expected_sqnr_falls_when_outliers_stretch_the_range() {
        let bulk = gaussian(7, 20_000, 1.0);
        let mut h = Histogram::new(2048);
        h.observe_finite(&bulk);
        let full = h.min_max().unwrap();
        let clean = h.expected_sqnr_db(full, 256).unwrap();
        // Uniform noise at 256 levels over ±4σ: about 10·log10(12·255²/8²) ≈ 40.9 dB.
        assert!((36.0..44.0).contains(&clean), "{clean}");
        // A few far outliers: the range grows ~20x, so the bulk's noise grows ~26 dB while
        // the outliers add some signal of their own.
        h.observe_finite(&[200.0, 190.0, 185.0]);
        let stretched = h.expected_sqnr_db(h.min_max().unwrap(), 256).unwrap();
        assert!(stretched < clean - 15.0, "{stretched} vs {clean}");
        // 16-bit levels over the same stretched range are fine again.
        let wide = h.expected_sqnr_db(h.min_max().unwrap(), 65536).unwrap();
        assert!(wide > clean + 20.0, "{wide} vs {clean}");
    }

    #[test]
    fn summaries_round_trip() {
        let mut h = Histogram::new(256);
        h.observe_finite(&gaussian(2, 1000, 3.0));
        let s = h.summary();
        let back = Histogram::from_summary(&s, h.min, h.max).unwrap();
        assert_eq!(back, h);
        assert_eq!(s.range[0], h.edge(0));
    }

    proptest! {
        #[test]
        fn every_method_stays_inside_min_max(
            batches in proptest::collection::vec(
                proptest::collection::vec(-1e3f32..1e3, 0..200), 1..6),
            scale in prop_oneof![Just(1e-30f32), Just(1.0f32), Just(1e30f32)],
        ) {
            let mut h = Histogram::new(64);
            let mut mm = super::super::MinMax::default();
            for b in &batches {
                let b: Vec<f32> = b.iter().map(|v| v * scale).collect();
                h.observe_finite(&b);
                mm.observe_finite(&b);
            }
            prop_assert_eq!(h.counts().iter().sum::<u64>(), h.total());
            prop_assert_eq!(h.min_max(), mm.range());
            if let Some(full) = mm.range() {
                for r in [h.percentile_range(99.0), h.entropy_range(8), h.mse_range(16)] {
                    let r = r.unwrap();
                    prop_assert!(full.contains(&r), "{:?} not in {:?}", r, full);
                    prop_assert!(r.min <= r.max);
                }
                // Every value lies inside the bin it was counted in.
                let g = h.edge(0);
                let top = h.edge(h.bins());
                prop_assert!(g <= full.min.min(0.0) as f64 && top >= full.max.max(0.0) as f64);
            }
        }
    }
}
