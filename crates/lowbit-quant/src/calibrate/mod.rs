//! Streaming calibration: observers that see activations batch by batch and hold memory
//! independent of the number of samples, and the [`Calibrator`] that drives them through the
//! engine's observer hook into a [`CalibrationTable`] (`ranges.json`).
//!
//! ```
//! use lowbit_quant::calibrate::{MinMax, Observer};
//! use lowbit_tensor::Tensor;
//! let mut obs = MinMax::default();
//! obs.observe(&Tensor::from_vec(vec![3], vec![-1.0f32, 0.5, 2.0]).unwrap()).unwrap();
//! obs.observe(&Tensor::from_vec(vec![1], vec![3.0f32]).unwrap()).unwrap();
//! let r = obs.range().unwrap();
//! assert_eq!((r.min, r.max), (-1.0, 3.0));
//! ```
//!
//! | observer | range it gives |
//! |---|---|
//! | [`MinMax`] | the smallest and largest value ever seen |
//! | [`MovingAverageMinMax`] | per-batch min/max smoothed: `m += c · (batch_m − m)`, c = 0.01 (ONNX Runtime's `averaging_constant`) |
//! | [`Histogram`] | 2048 bins, grown by merging bin pairs; the three below read it |
//! | [`Percentile`] | cuts `(100 − p) / 2` % of the values off each tail (p = 99.999) |
//! | [`Entropy`] | TensorRT's KL-divergence threshold over the magnitude histogram, 128 levels |
//! | [`Mse`] | the clip range minimizing expected 8-bit quantization MSE |
//!
//! Conventions: one `observe` call is one batch; every observer rejects NaN and ±inf with
//! [`QuantError::NonFiniteData`] (the calibrator names the tensor and sample); ranges are raw
//! data ranges (the qparams step widens them to include 0 and symmetrizes). Results are
//! deterministic: the calibrator sees tensors in the session's fixed order, parallel reductions
//! are exact (min/max, integer bin counts), and float sums run in a fixed order.

pub mod dataset;
mod histogram;
mod minmax;
pub mod record;
mod table;

pub use histogram::{Entropy, Histogram, HistogramSummary, Mse, Percentile};
pub use minmax::{MinMax, MovingAverageMinMax};
pub use record::{CalibrationRecord, TensorRecord, CALIBRATION_METADATA_KEY};
pub use table::{
    CalibrationSettings, CalibrationTable, MethodRanges, RangeChoice, TensorCalibration,
    METHOD_GUARD_DB,
};

use crate::error::{QuantError, Result};
use crate::samples::{Progress, SampleSource};
use lowbit_engine::Session;
use lowbit_tensor::{DType, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A float range `[min, max]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Range {
    pub min: f32,
    pub max: f32,
}

impl Range {
    pub fn new(min: f32, max: f32) -> Range {
        Range { min, max }
    }

    /// Whether `other` lies inside this range.
    pub fn contains(&self, other: &Range) -> bool {
        self.min <= other.min && other.max <= self.max
    }
}

/// Something that sees a tensor's values batch by batch and proposes a range for them.
pub trait Observer: Send {
    /// Adds one batch (f32 only). NaN or ±inf is an error and leaves the observer unchanged.
    fn observe(&mut self, x: &Tensor) -> Result<()> {
        let v = x.as_f32()?;
        check_finite(v)?;
        self.observe_finite(v);
        Ok(())
    }

    /// Adds one batch already checked to be finite.
    fn observe_finite(&mut self, x: &[f32]);

    /// [`Observer::observe_finite`] when the batch's extremes are already known (one scan
    /// of the data serves every observer).
    fn observe_with_extremes(&mut self, x: &[f32], _lo: f32, _hi: f32) {
        self.observe_finite(x);
    }

    /// The range so far, `None` before any value.
    fn range(&self) -> Option<Range>;

    /// Bytes of state held: fixed at construction, whatever the number of batches.
    fn memory_bytes(&self) -> usize;
}

/// Slices longer than this are scanned in parallel chunks of this size.
pub(crate) const PAR_CHUNK: usize = 1 << 16;

/// The first NaN or ±inf, as an error (the tensor name is filled in by the caller).
pub fn check_finite(x: &[f32]) -> Result<()> {
    let bad = if x.len() > PAR_CHUNK {
        x.par_chunks(PAR_CHUNK).enumerate().find_map_first(|(c, ch)| {
            ch.iter().position(|v| !v.is_finite()).map(|i| c * PAR_CHUNK + i)
        })
    } else {
        x.iter().position(|v| !v.is_finite())
    };
    match bad {
        None => Ok(()),
        Some(index) => Err(QuantError::NonFiniteData {
            tensor: String::new(),
            sample: None,
            index,
            value: x[index],
        }),
    }
}

/// `(min, max)` of a non-empty slice in one pass, or `None` when it is empty or holds a NaN
/// or an infinity (then [`check_finite`] names it).
pub(crate) fn finite_extremes(x: &[f32]) -> Option<(f32, f32)> {
    // Eight independent lanes of compare-and-select (exactly `minps`/`maxps`) and an exponent
    // test the compiler vectorizes; `f32::min` and `is_finite` on their own do not.
    fn fold(x: &[f32]) -> (f32, f32, bool) {
        const EXP: u32 = 0x7f80_0000;
        let (mut lo, mut hi, mut bad) = ([f32::INFINITY; 8], [f32::NEG_INFINITY; 8], [0u32; 8]);
        let chunks = x.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for k in 0..8 {
                let v = c[k];
                lo[k] = if v < lo[k] { v } else { lo[k] };
                hi[k] = if v > hi[k] { v } else { hi[k] };
                bad[k] |= u32::from(v.to_bits() & EXP == EXP);
            }
        }
        for &v in rest {
            lo[0] = if v < lo[0] { v } else { lo[0] };
            hi[0] = if v > hi[0] { v } else { hi[0] };
            bad[0] |= u32::from(v.to_bits() & EXP == EXP);
        }
        let lo = lo.iter().fold(f32::INFINITY, |a, &b| a.min(b));
        let hi = hi.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        (lo, hi, bad.iter().all(|&b| b == 0))
    }
    if x.is_empty() {
        return None;
    }
    let (lo, hi, ok) = if x.len() > PAR_CHUNK {
        x.par_chunks(PAR_CHUNK).map(fold).reduce(
            || (f32::INFINITY, f32::NEG_INFINITY, true),
            |a, b| (a.0.min(b.0), a.1.max(b.1), a.2 & b.2),
        )
    } else {
        fold(x)
    };
    ok.then_some((lo, hi))
}

/// `(min, max)` of a non-empty finite slice (exact, so parallel chunking cannot change it).
pub(crate) fn min_max(x: &[f32]) -> Option<(f32, f32)> {
    fn fold(x: &[f32]) -> (f32, f32) {
        x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
    }
    if x.is_empty() {
        return None;
    }
    Some(if x.len() > PAR_CHUNK {
        x.par_chunks(PAR_CHUNK)
            .map(fold)
            .reduce(|| (f32::INFINITY, f32::NEG_INFINITY), |a, b| (a.0.min(b.0), a.1.max(b.1)))
    } else {
        fold(x)
    })
}

/// A calibration method: which observer's range a quantizer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    #[serde(rename = "minmax")]
    MinMax,
    MovingAverage,
    Percentile,
    Entropy,
    Mse,
}

impl Method {
    pub const ALL: [Method; 5] =
        [Method::MinMax, Method::MovingAverage, Method::Percentile, Method::Entropy, Method::Mse];

    /// The name used on the command line and in `ranges.json`.
    pub fn name(self) -> &'static str {
        match self {
            Method::MinMax => "minmax",
            Method::MovingAverage => "moving-average",
            Method::Percentile => "percentile",
            Method::Entropy => "entropy",
            Method::Mse => "mse",
        }
    }
}

display_and_parse_by_name!(Method, Scheme, "calibration method");

/// Calibration settings. The defaults: 2048 bins, percentile 99.999, momentum 0.01, entropy
/// over 128 levels, MSE for a 256-level grid.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibratorOptions {
    /// Histogram bins per tensor (at least 16).
    pub bins: usize,
    /// Percentile kept by [`Method::Percentile`], in (0, 100].
    pub percentile: f64,
    /// [`MovingAverageMinMax`]'s averaging constant, in [0, 1].
    pub momentum: f32,
    /// Quantized levels per side in the entropy search (128 for int8).
    pub entropy_levels: usize,
    /// Grid levels the MSE search assumes (256 for 8 bits).
    pub mse_levels: usize,
}

impl Default for CalibratorOptions {
    fn default() -> Self {
        CalibratorOptions {
            bins: 2048,
            percentile: 99.999,
            momentum: 0.01,
            entropy_levels: 128,
            mse_levels: 256,
        }
    }
}

impl CalibratorOptions {
    /// The defaults, with entropy and MSE searching for the grid `plan` aims at.
    pub fn for_plan(plan: &crate::config::CalibrationPlan) -> CalibratorOptions {
        CalibratorOptions {
            entropy_levels: (plan.levels / 2).max(2),
            mse_levels: plan.levels.max(2),
            ..Default::default()
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(QuantError::Scheme(m));
        if !(16..=65_535).contains(&self.bins) {
            // The binning loop keeps bin indices in u16.
            return bad(format!("histogram bins must be 16..=65535, got {}", self.bins));
        }
        if !(self.percentile > 0.0 && self.percentile <= 100.0) {
            return bad(format!("percentile must be in (0, 100], got {}", self.percentile));
        }
        if !(0.0..=1.0).contains(&self.momentum) {
            return bad(format!("momentum must be in [0, 1], got {}", self.momentum));
        }
        if self.entropy_levels < 2 || self.mse_levels < 2 {
            return bad("entropy and MSE levels must be at least 2".into());
        }
        Ok(())
    }
}

/// Per-tensor state: exact extremes and a histogram (one), a moving average (the other).
struct TensorStats {
    moving: MovingAverageMinMax,
    hist: Histogram,
}

type NameFilter = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Owns one set of observers per tensor name and feeds them from [`Session::run_observed`].
///
/// ```no_run
/// use lowbit_quant::calibrate::{Calibrator, CalibratorOptions, Method};
/// # fn feeds() -> Vec<Vec<(String, lowbit_tensor::Tensor)>> { vec![] }
/// let model = lowbit_onnx::load_model("model.onnx")?;
/// // Unfused, so the observer sees every value the model names.
/// let session = lowbit_engine::Session::new(&model, &lowbit_engine::SessionOptions::unfused(0))?;
/// let mut cal = Calibrator::new(CalibratorOptions::default())?;
/// for batch in feeds() {
///     cal.run(&session, batch)?;
/// }
/// let table = cal.table()?;
/// table.save("ranges.json".as_ref())?;
/// let r = table.range("conv1_out", Method::Entropy);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Calibrator {
    opts: CalibratorOptions,
    filter: Option<NameFilter>,
    stats: BTreeMap<String, TensorStats>,
    batches: u64,
}

impl Calibrator {
    /// A calibrator observing every float32 tensor.
    pub fn new(opts: CalibratorOptions) -> Result<Calibrator> {
        opts.validate()?;
        Ok(Calibrator { opts, filter: None, stats: BTreeMap::new(), batches: 0 })
    }

    /// Observes only the named tensors.
    pub fn only<I, S>(self, names: I) -> Calibrator
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let set: std::collections::HashSet<String> = names.into_iter().map(Into::into).collect();
        self.with_filter(move |n| set.contains(n))
    }

    /// Observes only tensors whose name passes `f`.
    pub fn with_filter(mut self, f: impl Fn(&str) -> bool + Send + Sync + 'static) -> Calibrator {
        self.filter = Some(Box::new(f));
        self
    }

    pub fn options(&self) -> &CalibratorOptions {
        &self.opts
    }

    /// Batches (session runs) seen so far.
    pub fn batches(&self) -> u64 {
        self.batches
    }

    /// Names of the tensors observed so far, sorted.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.stats.keys().map(String::as_str)
    }

    /// Bytes of observer state: grows with the number of tensors, never with the samples.
    pub fn memory_bytes(&self) -> usize {
        self.stats
            .iter()
            .map(|(k, s)| k.len() + s.moving.memory_bytes() + s.hist.memory_bytes())
            .sum()
    }

    /// Whether `name` (of element type `dtype`) is calibrated.
    pub fn wants(&self, name: &str, dtype: DType) -> bool {
        dtype == DType::F32 && self.filter.as_ref().is_none_or(|f| f(name))
    }

    /// Shows the calibrator one tensor of the current batch. Tensors that are not float32 or
    /// not selected are ignored. Call [`Calibrator::end_batch`] after each batch.
    pub fn observe(&mut self, name: &str, x: &Tensor) -> Result<()> {
        if !self.wants(name, x.dtype()) {
            return Ok(());
        }
        let v = x.as_f32()?;
        if v.is_empty() {
            return Ok(());
        }
        let Some((lo, hi)) = finite_extremes(v) else {
            // Not empty, so a value is not finite: name it.
            return check_finite(v).map_err(|e| e.in_tensor(name, self.batches));
        };
        let opts = &self.opts;
        let s = self.stats.entry(name.to_string()).or_insert_with(|| TensorStats {
            moving: MovingAverageMinMax::new(opts.momentum),
            hist: Histogram::new(opts.bins),
        });
        s.moving.observe_with_extremes(v, lo, hi);
        s.hist.observe_with_extremes(v, lo, hi);
        Ok(())
    }

    /// Closes a batch fed through [`Calibrator::observe`].
    pub fn end_batch(&mut self) {
        self.batches += 1;
    }

    /// Runs `session` on one batch of `feeds`, observing every selected tensor, and returns the
    /// graph outputs. The first non-finite value aborts with an error naming tensor and sample.
    pub fn run(
        &mut self,
        session: &Session,
        feeds: Vec<(String, Tensor)>,
    ) -> Result<Vec<(String, Tensor)>> {
        // A fused session never produces the values fusion removed: their ranges would be
        // silently missing from the table.
        if !session.fused_ops().is_empty() {
            let kinds: Vec<&str> = session.fused_ops().keys().map(String::as_str).collect();
            return Err(QuantError::FusedSession(kinds.join(", ")));
        }
        let mut err: Option<QuantError> = None;
        let out = session.run_observed(feeds, &mut |name, t| {
            if err.is_none() {
                if let Err(e) = self.observe(name, t) {
                    err = Some(e);
                }
            }
        })?;
        self.end_batch();
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// The calibration table: per tensor, extremes, histogram summary and every method's range.
    /// Tensors are finished in parallel; the result does not depend on the thread count.
    pub fn table(&self) -> Result<CalibrationTable> {
        if self.stats.is_empty() {
            return Err(QuantError::NoData(if self.batches == 0 {
                ": no batch was run".into()
            } else {
                ": no selected float32 tensor was produced".into()
            }));
        }
        let opts = self.opts;
        let entries: Vec<(&String, &TensorStats)> = self.stats.iter().collect();
        let tensors: Vec<(String, TensorCalibration)> = entries
            .par_iter()
            .map(|(name, s)| {
                ((*name).clone(), table::tensor_calibration(&s.hist, &s.moving, &opts))
            })
            .collect();
        Ok(CalibrationTable::new(opts, self.batches, tensors.into_iter().collect()))
    }
}

/// Calibrates `model` on one pass over `samples` (an unfused session with `threads` workers)
/// and returns its table.
pub fn calibrate_samples(
    model: &lowbit_onnx::pb::ModelProto,
    samples: &mut dyn SampleSource,
    opts: CalibratorOptions,
    threads: usize,
    progress: &dyn Progress,
) -> Result<CalibrationTable> {
    let session = Session::new(model, &lowbit_engine::SessionOptions::unfused(threads))?;
    let mut cal = Calibrator::new(opts)?;
    progress.start("calibrate", samples.batches().unwrap_or(0) as u64);
    let pass = samples.replay(&mut |feeds| {
        cal.run(&session, feeds)?;
        progress.advance(1, None);
        Ok(())
    });
    progress.finish();
    pass?;
    cal.table()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_vec(vec![v.len()], v.to_vec()).unwrap()
    }

    #[test]
    fn non_finite_data_names_tensor_and_sample() {
        let mut c = Calibrator::new(CalibratorOptions::default()).unwrap();
        c.observe("a", &t(&[1.0, 2.0])).unwrap();
        c.end_batch();
        let e = c.observe("a", &t(&[1.0, f32::NAN])).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("'a'") && msg.contains("sample 1") && msg.contains("element 1"),
            "{msg}"
        );
        let e = c.observe("b", &t(&[f32::NEG_INFINITY])).unwrap_err();
        assert!(matches!(e, QuantError::NonFiniteData { ref tensor, .. } if tensor == "b"));
    }

    #[test]
    fn filter_selects_float32_tensors_by_name() {
        let mut c = Calibrator::new(CalibratorOptions::default()).unwrap().only(["x"]);
        c.observe("x", &t(&[1.0])).unwrap();
        c.observe("y", &t(&[1.0])).unwrap();
        c.observe("x", &Tensor::from_vec(vec![1], vec![3i64]).unwrap()).unwrap();
        c.end_batch();
        assert_eq!(c.tensor_names().collect::<Vec<_>>(), vec!["x"]);
        let table = c.table().unwrap();
        assert_eq!(table.range("x", Method::MinMax), Some(Range::new(1.0, 1.0)));
    }

    #[test]
    fn empty_calibration_is_an_error() {
        let c = Calibrator::new(CalibratorOptions::default()).unwrap();
        assert!(matches!(c.table(), Err(QuantError::NoData(_))));
        let bad = CalibratorOptions { percentile: 0.0, ..Default::default() };
        assert!(Calibrator::new(bad).is_err());
    }

    #[test]
    fn methods_parse_by_name() {
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>().unwrap(), m);
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{}\"", m.name()));
        }
        assert!("kl".parse::<Method>().is_err());
    }

    #[test]
    fn parallel_scans_find_the_first_bad_value() {
        let mut v = vec![0.5f32; 3 * PAR_CHUNK + 7];
        v[2 * PAR_CHUNK + 3] = f32::INFINITY;
        v[3 * PAR_CHUNK] = f32::NAN;
        let e = check_finite(&v).unwrap_err();
        assert!(matches!(e, QuantError::NonFiniteData { index, .. } if index == 2 * PAR_CHUNK + 3));
        v[2 * PAR_CHUNK + 3] = -7.0;
        v[3 * PAR_CHUNK] = 9.0;
        assert_eq!(min_max(&v), Some((-7.0, 9.0)));
    }
}
