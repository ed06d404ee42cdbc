//! What calibration saw of each quantized activation, kept in the quantized model (metadata
//! `lowbit.calibration`, compact JSON) so `lowbit monitor` can tell how far new inputs drift
//! from it and adaptive runs know each tensor's normal saturation.
//!
//! Per activation a `QuantizeLinear` quantizes (by its float tensor name): the calibrated
//! extremes, the quantization range the model holds, the share of calibration values that range
//! clips (`clip_rate`: beyond it by more than half a step) and saturates (`saturation`: quantized
//! to the end codes), both estimated from the full calibration histogram
//! ([`Histogram::fraction_outside`]), and that histogram merged down to [`RECORD_BINS`] bins
//! ([`Histogram::coarsened`], exact). About 0.5 KB per tensor.
//!
//! ```json
//! { "format": "lowbit-calibration-record/1", "batches": 4,
//!   "tensors": { "x": { "min": -1.0, "max": 1.0, "count": 15052800,
//!       "range": [-1.0, 0.99], "clip_rate": 0.0, "saturation": 0.012,
//!       "histogram": { "bins": 64, "bin_width": 0.0625, "zero_bin": 32,
//!                      "range": [-2.0, 2.0], "counts": [0, …] } } } }
//! ```

use super::histogram::{Histogram, HistogramSummary};
use super::{CalibrationTable, Range};
use lowbit_engine::adaptive::quantized_activations;
use lowbit_onnx::pb::{ModelProto, StringStringEntryProto};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The model metadata key holding the [`CalibrationRecord`] (JSON).
pub const CALIBRATION_METADATA_KEY: &str = "lowbit.calibration";

/// The record's format tag.
pub const RECORD_FORMAT: &str = "lowbit-calibration-record/1";

/// Bins kept per tensor: enough for drift (PSI) to see a shifted or widened distribution,
/// small next to the weights.
pub const RECORD_BINS: usize = 64;

/// One quantized activation as calibration saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorRecord {
    pub min: f32,
    pub max: f32,
    /// Values observed.
    pub count: u64,
    /// The float range the quantized type represents (from the model's scale and zero point).
    pub range: [f32; 2],
    /// Share of calibration values the range clips.
    pub clip_rate: f64,
    /// Share of calibration values quantized to the end codes.
    pub saturation: f64,
    pub histogram: HistogramSummary,
}

impl TensorRecord {
    /// The stored histogram (on its own grid, to compare new data with).
    pub fn histogram(&self) -> Option<Histogram> {
        Histogram::from_summary(&self.histogram, self.min, self.max)
    }
}

/// What calibration saw of every quantized activation of a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationRecord {
    pub format: String,
    /// Calibration batches (session runs).
    pub batches: u64,
    pub tensors: BTreeMap<String, TensorRecord>,
}

impl CalibrationRecord {
    /// The record of quantized `model`'s activations from the `table` it was calibrated with;
    /// tensors the table does not hold are left out.
    pub fn new(model: &ModelProto, table: &CalibrationTable) -> CalibrationRecord {
        let mut tensors = BTreeMap::new();
        for q in quantized_activations(model) {
            let Some(t) = table.tensors.get(&q.tensor) else { continue };
            let Some(hist) = t.histogram() else { continue };
            let (lo, hi) = q.range();
            let (clo, chi) = q.clip_bounds();
            let (slo, shi) = q.saturation_bounds();
            tensors.insert(
                q.tensor.clone(),
                TensorRecord {
                    min: t.min,
                    max: t.max,
                    count: t.count,
                    range: [lo, hi],
                    clip_rate: hist.fraction_outside(Range::new(clo, chi)),
                    saturation: hist.fraction_outside(Range::new(slo, shi)),
                    histogram: hist.coarsened(RECORD_BINS).summary(),
                },
            );
        }
        CalibrationRecord { format: RECORD_FORMAT.into(), batches: table.batches, tensors }
    }

    /// Stores the record in `model`'s metadata (replacing an older one).
    pub fn store(&self, model: &mut ModelProto) {
        model.metadata_props.retain(|p| p.key != CALIBRATION_METADATA_KEY);
        model.metadata_props.push(StringStringEntryProto {
            key: CALIBRATION_METADATA_KEY.into(),
            value: serde_json::to_string(self).expect("records serialize"),
        });
    }

    /// The record `model` carries: `None` when it has none, an error text when it is unreadable.
    pub fn stored(model: &ModelProto) -> Option<Result<CalibrationRecord, String>> {
        let p = model.metadata_props.iter().find(|p| p.key == CALIBRATION_METADATA_KEY)?;
        Some(
            serde_json::from_str::<CalibrationRecord>(&p.value)
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    if r.format == RECORD_FORMAT {
                        Ok(r)
                    } else {
                        Err(format!("format '{}' is not {RECORD_FORMAT}", r.format))
                    }
                }),
        )
    }

    /// Each tensor's calibration saturation share (the adaptive baseline).
    pub fn saturation(&self) -> HashMap<String, f64> {
        self.tensors.iter().map(|(k, t)| (k.clone(), t.saturation)).collect()
    }
}
