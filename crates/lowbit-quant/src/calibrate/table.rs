//! The calibration table (`ranges.json`): per tensor, the observed extremes, the histogram,
//! and the range every method gives, so one calibration serves many quantization runs.
//!
//! Format (JSON, tensors sorted by name):
//!
//! ```json
//! { "format": "lowbit-calibration/1",
//!   "settings": { "bins": 2048, "percentile": 99.999, "momentum": 0.01,
//!                 "entropy_levels": 128, "mse_levels": 256 },
//!   "batches": 200,
//!   "tensors": { "conv1": { "min": -3.5, "max": 12.0, "count": 1254400,
//!       "histogram": { "bins": 2048, "bin_width": 0.0075, "zero_bin": 460,
//!                      "range": [-3.45, 11.91], "counts": [0, 3, …] },
//!       "ranges": { "minmax": {"min": -3.5, "max": 12.0}, "moving-average": {…},
//!                   "percentile": {…}, "entropy": {…}, "mse": {…} } } } }
//! ```
//!
//! Files are written atomically (temporary file + rename).

use super::histogram::{Histogram, HistogramSummary};
use super::minmax::MovingAverageMinMax;
use super::{CalibratorOptions, Method, Observer, Range};
use crate::config::CalibrationPlan;
use crate::error::{QuantError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The format tag of `ranges.json`.
pub const FORMAT: &str = "lowbit-calibration/1";

/// How far (dB of expected SQNR) a method's range may fall below the min-max range's before
/// [`CalibrationTable::choose_range`] replaces it: a method may trade some rounding noise for
/// clipping, not clip what matters.
pub const METHOD_GUARD_DB: f64 = 6.0;

/// A tensor's range for a plan, and what it replaced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RangeChoice {
    pub range: Range,
    /// The method's own range and its expected SQNR against the min-max range's (dB), when the
    /// guard replaced it.
    pub replaced: Option<(Range, f64, f64)>,
}

/// The settings a table was computed with.
pub type CalibrationSettings = CalibratorOptions;

/// The range each calibration method gives one tensor.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodRanges {
    pub minmax: Range,
    #[serde(rename = "moving-average")]
    pub moving_average: Range,
    pub percentile: Range,
    pub entropy: Range,
    pub mse: Range,
}

impl MethodRanges {
    pub fn get(&self, m: Method) -> Range {
        match m {
            Method::MinMax => self.minmax,
            Method::MovingAverage => self.moving_average,
            Method::Percentile => self.percentile,
            Method::Entropy => self.entropy,
            Method::Mse => self.mse,
        }
    }
}

/// Everything calibration learned about one tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorCalibration {
    pub min: f32,
    pub max: f32,
    /// Values observed.
    pub count: u64,
    pub histogram: HistogramSummary,
    pub ranges: MethodRanges,
}

impl TensorCalibration {
    /// The histogram, to derive ranges again with other settings.
    pub fn histogram(&self) -> Option<Histogram> {
        Histogram::from_summary(&self.histogram, self.min, self.max)
    }
}

/// A calibration table, keyed by tensor name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationTable {
    pub format: String,
    pub settings: CalibrationSettings,
    /// Batches (session runs) observed.
    pub batches: u64,
    pub tensors: BTreeMap<String, TensorCalibration>,
}

pub(crate) fn tensor_calibration(
    hist: &Histogram,
    moving: &MovingAverageMinMax,
    opts: &CalibratorOptions,
) -> TensorCalibration {
    let full = hist.min_max().unwrap_or(Range::new(0.0, 0.0));
    let or_full = |r: Option<Range>| r.unwrap_or(full);
    TensorCalibration {
        min: full.min,
        max: full.max,
        count: hist.total(),
        histogram: hist.summary(),
        ranges: MethodRanges {
            minmax: full,
            moving_average: or_full(moving.range()),
            percentile: or_full(hist.percentile_range(opts.percentile)),
            entropy: or_full(hist.entropy_range(opts.entropy_levels)),
            mse: or_full(hist.mse_range(opts.mse_levels)),
        },
    }
}

impl CalibrationTable {
    pub(crate) fn new(
        settings: CalibrationSettings,
        batches: u64,
        tensors: BTreeMap<String, TensorCalibration>,
    ) -> CalibrationTable {
        CalibrationTable { format: FORMAT.to_string(), settings, batches, tensors }
    }

    /// The range `plan.method` gives `tensor` on a grid of `plan.levels`, if it was calibrated
    /// ([`CalibrationTable::choose_range`] without the reason).
    pub fn range_for(&self, tensor: &str, plan: &CalibrationPlan) -> Option<Range> {
        self.choose_range(tensor, plan).map(|c| c.range)
    }

    /// The range `plan.method` gives `tensor` on a grid of `plan.levels`, guarded:
    ///
    /// * entropy and MSE ranges depend on the grid: when the table was computed for another
    ///   one (8-bit by default, a 16-bit plan asks for 65536 levels), they are searched again
    ///   in the stored histogram;
    /// * a range that clips so much that its expected SQNR (rounding and clipping error, from
    ///   the histogram) falls more than [`METHOD_GUARD_DB`] below the min-max range's is
    ///   replaced by the min-max range. This is what keeps entropy calibration from clipping
    ///   the spike of a saturating activation (ReLU6 outputs: a fifth of the values sit at 6,
    ///   KL divergence barely sees them, and clipping them collapsed MobileNet-style models).
    pub fn choose_range(&self, tensor: &str, plan: &CalibrationPlan) -> Option<RangeChoice> {
        let t = self.tensors.get(tensor)?;
        let stored = t.ranges.get(plan.method);
        let hist = t.histogram();
        let again = match plan.method {
            Method::Entropy if plan.levels / 2 != self.settings.entropy_levels => {
                hist.as_ref().and_then(|h| h.entropy_range(plan.levels / 2))
            }
            Method::Mse if plan.levels != self.settings.mse_levels => {
                hist.as_ref().and_then(|h| h.mse_range(plan.levels))
            }
            _ => None,
        };
        let range = again.unwrap_or(stored);
        let minmax = t.ranges.minmax;
        if range == minmax {
            return Some(RangeChoice { range, replaced: None });
        }
        let sqnr = |r: Range| hist.as_ref().and_then(|h| h.expected_sqnr_db(r, plan.levels));
        match (sqnr(range), sqnr(minmax)) {
            (Some(own), Some(full)) if own < full - METHOD_GUARD_DB => {
                Some(RangeChoice { range: minmax, replaced: Some((range, own, full)) })
            }
            _ => Some(RangeChoice { range, replaced: None }),
        }
    }

    /// The range `method` gives `tensor`, if it was calibrated.
    pub fn range(&self, tensor: &str, method: Method) -> Option<Range> {
        self.tensors.get(tensor).map(|t| t.ranges.get(method))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("calibration tables serialize")
    }

    /// Parses a table; `origin` names the source in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<CalibrationTable> {
        let table: CalibrationTable = serde_json::from_str(text)
            .map_err(|e| QuantError::Table { path: origin.to_string(), msg: e.to_string() })?;
        if table.format != FORMAT {
            return Err(QuantError::Table {
                path: origin.to_string(),
                msg: format!("format '{}' is not {FORMAT}", table.format),
            });
        }
        Ok(table)
    }

    /// Writes the table atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        lowbit_tensor::npy::write_atomic(path, self.to_json().as_bytes())
            .map_err(|e| QuantError::Table { path: path.display().to_string(), msg: e.to_string() })
    }

    pub fn load(path: &Path) -> Result<CalibrationTable> {
        let text = std::fs::read_to_string(path).map_err(|e| QuantError::Table {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
        CalibrationTable::from_json(&text, &path.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Calibrator, CalibratorOptions};
    use super::*;
    use lowbit_tensor::Tensor;

    fn table() -> CalibrationTable {
        let mut c = Calibrator::new(CalibratorOptions { bins: 64, ..Default::default() }).unwrap();
        for b in 0..5 {
            let v: Vec<f32> = (0..100).map(|i| (i as f32 - 30.0) * (b + 1) as f32 * 0.1).collect();
            c.observe("act", &Tensor::from_vec(vec![100], v).unwrap()).unwrap();
            c.end_batch();
        }
        c.table().unwrap()
    }

    #[test]
    fn entropy_and_mse_ranges_are_searched_for_the_plan_grid() {
        // A heavy tail: 8-bit entropy clips it, a 16-bit grid has levels to spare for it.
        let mut c = Calibrator::new(CalibratorOptions::default()).unwrap();
        let mut v: Vec<f32> = (0..20_000).map(|i| ((i % 200) as f32 - 100.0) * 0.01).collect();
        v.extend([40.0, -35.0, 25.0]);
        c.observe("act", &Tensor::from_vec(vec![v.len()], v).unwrap()).unwrap();
        c.end_batch();
        let t = c.table().unwrap();
        for method in [Method::Entropy, Method::Mse] {
            let eight = t.range_for("act", &CalibrationPlan { method, levels: 256 }).unwrap();
            assert_eq!(Some(eight), t.range("act", method), "{method}: the stored 8-bit range");
            let sixteen = t.range_for("act", &CalibrationPlan { method, levels: 65536 }).unwrap();
            assert!(
                sixteen.max > eight.max && sixteen.max >= 25.0,
                "{method}: 16-bit range {sixteen:?} should keep the tail 8-bit {eight:?} clips"
            );
        }
        let mm = t.range_for("act", &CalibrationPlan { method: Method::MinMax, levels: 65536 });
        assert_eq!(mm, t.range("act", Method::MinMax));
    }

    #[test]
    fn a_range_that_clips_a_saturation_spike_falls_back_to_min_max() {
        // ReLU6 outputs: most values small, a fifth of them saturated at exactly 6. A
        // percentile of 50 cuts the spike off, as entropy did on EfficientNet-Lite0.
        let opts = CalibratorOptions { percentile: 50.0, ..Default::default() };
        let mut c = Calibrator::new(opts).unwrap();
        let mut v: Vec<f32> = (0..16_000).map(|i| (i % 400) as f32 * 0.005).collect();
        v.extend(std::iter::repeat_n(6.0f32, 4_000));
        c.observe("relu6", &Tensor::from_vec(vec![v.len()], v).unwrap()).unwrap();
        c.end_batch();
        let t = c.table().unwrap();
        let plan = CalibrationPlan { method: Method::Percentile, levels: 256 };
        let clipped = t.range("relu6", Method::Percentile).unwrap();
        assert!(clipped.max < 6.0, "the percentile range clips the spike: {clipped:?}");
        let c = t.choose_range("relu6", &plan).unwrap();
        assert_eq!(c.range, t.range("relu6", Method::MinMax).unwrap());
        let (own, db, full) = c.replaced.expect("the guard replaced the clipping range");
        assert_eq!(own, clipped);
        assert!(db < full - METHOD_GUARD_DB, "{db} vs {full}");
        // Min-max itself, and a method that keeps the spike, are left alone.
        for method in [Method::MinMax, Method::Mse] {
            let p = CalibrationPlan { method, levels: 256 };
            assert!(t.choose_range("relu6", &p).unwrap().replaced.is_none(), "{method}");
        }
    }

    #[test]
    fn tables_round_trip_through_ranges_json() {
        let t = table();
        let dir = std::env::temp_dir().join(format!("lowbit-quant-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ranges.json");
        t.save(&path).unwrap();
        let back = CalibrationTable::load(&path).unwrap();
        assert!(back == t, "ranges.json does not round-trip");
        assert_eq!(back.batches, 5);
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn table_lists_every_method() {
        let t = table();
        let a = &t.tensors["act"];
        assert_eq!((a.min, a.max), (-15.0, 34.5));
        assert_eq!(a.count, 500);
        assert_eq!(a.histogram.counts.len(), 64);
        for m in Method::ALL {
            let r = t.range("act", m).unwrap();
            assert!(r.min <= r.max, "{m}");
        }
        assert!(t.range("other", Method::MinMax).is_none());
        let json = t.to_json();
        assert!(json.contains("\"moving-average\"") && json.contains("\"minmax\""));
        // Methods can be re-derived from the stored histogram.
        let h = a.histogram().unwrap();
        assert_eq!(h.percentile_range(t.settings.percentile), Some(a.ranges.percentile));
    }

    #[test]
    fn bad_tables_are_rejected_with_their_origin() {
        let e = CalibrationTable::from_json("{}", "x.json").unwrap_err();
        assert!(e.to_string().contains("x.json"));
        let mut t = table();
        t.format = "other".into();
        let e = CalibrationTable::from_json(&t.to_json(), "y.json").unwrap_err();
        assert!(e.to_string().contains("lowbit-calibration/1"));
        assert!(CalibrationTable::load(Path::new("/nonexistent/ranges.json")).is_err());
    }
}
