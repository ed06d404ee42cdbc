//! Calibrating a model on a [`Dataset`]: its samples streamed through an unfused session into a
//! [`Calibrator`], run by run, so memory does not grow with the number of samples. Runs take
//! [`Dataset::observed_batch`] samples: a model with a `*mask*` input gets one row per run, cut
//! to its real length (with `trim`), so padding never enters the statistics.

use super::{CalibrationTable, Calibrator, CalibratorOptions};
use crate::error::{QuantError, Result};
use lowbit_data::Dataset;
use lowbit_engine::Session;
use std::time::{Duration, Instant};

/// What a calibration saw.
pub struct CalibrationRun {
    pub table: CalibrationTable,
    /// Samples fed.
    pub samples: usize,
    /// Engine runs.
    pub runs: usize,
    pub elapsed: Duration,
}

/// Calibrates on every sample of `data` through `session` (planned unfused). Non-finite input
/// data is an error naming the input and the sample; `progress` is told how many samples each
/// run fed.
pub fn calibrate_dataset(
    session: &Session,
    data: &mut Dataset,
    opts: CalibratorOptions,
    trim: bool,
    progress: &mut dyn FnMut(usize),
) -> Result<CalibrationRun> {
    let ranges = data.ranges(data.observed_batch(trim));
    let mut cal = Calibrator::new(opts)?;
    let start = Instant::now();
    for (k, &(s, e)) in ranges.iter().enumerate() {
        let feeds = data.feeds(s, e, trim)?;
        data.check_finite(&feeds, s, k == 0).map_err(QuantError::NonFiniteInput)?;
        cal.run(session, feeds).map_err(|source| QuantError::CalibrationRun {
            samples: data.range_label(s, e),
            source: Box::new(source),
        })?;
        progress(e - s);
    }
    let elapsed = start.elapsed();
    Ok(CalibrationRun { table: cal.table()?, samples: data.samples, runs: ranges.len(), elapsed })
}
