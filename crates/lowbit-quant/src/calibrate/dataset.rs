//! Calibrating a model on a [`Dataset`]: its samples streamed through an unfused session into a
//! [`Calibrator`], run by run, so memory does not grow with the number of samples. Runs take
//! [`Dataset::observed_batch`] samples: a model with a `*mask*` input gets one row per run, cut
//! to its real length (with `trim`), so padding never enters the statistics. [`DatasetBatches`]
//! replays the same runs for the quantizer's passes ([`SampleSource`]).

use super::{CalibrationTable, Calibrator, CalibratorOptions};
use crate::error::{QuantError, Result};
use crate::samples::{Feeds, SampleSource};
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

/// A data set cut into the runs calibration feeds, replayable: the [`SampleSource`] the
/// quantizer's passes (calibration after a transform, SmoothQuant, AdaRound, bias correction,
/// validation) read. Inputs are checked finite as they are fed; a pass that fails is reported
/// with the samples it was fed.
pub struct DatasetBatches {
    pub data: Dataset,
    pub ranges: Vec<(usize, usize)>,
    pub trim: bool,
}

impl DatasetBatches {
    /// Every sample of `data`, in calibration runs.
    pub fn new(data: Dataset, trim: bool) -> DatasetBatches {
        let ranges = data.ranges(data.observed_batch(trim));
        DatasetBatches { data, ranges, trim }
    }

    /// Up to `n` samples for validating a model calibrated on the first `calibrated` samples:
    /// the ones after them, or, when there are none, the last calibration ones. Also says
    /// whether they were held back from calibration.
    pub fn validation(data: Dataset, trim: bool, calibrated: usize, n: usize) -> (Self, bool) {
        let all = DatasetBatches::new(data, trim);
        let held_back = calibrated < all.data.samples;
        let mut rows = 0;
        let within = |&(s, e): &(usize, usize)| {
            let take = rows < n;
            rows += e - s;
            take
        };
        // Whole batches up to n rows, the batch that crosses n cut to it: `--validate 8` on
        // batches of 32 runs 8 samples.
        let ranges: Vec<(usize, usize)> = if held_back {
            let mut first: Vec<(usize, usize)> = all
                .ranges
                .iter()
                .copied()
                .filter(|&(s, _)| s >= calibrated)
                .take_while(within)
                .collect();
            let extra = first.iter().map(|(s, e)| e - s).sum::<usize>().saturating_sub(n);
            if let Some(r) = first.last_mut() {
                r.1 -= extra;
            }
            first
        } else {
            let mut last: Vec<_> = all.ranges.iter().rev().copied().take_while(within).collect();
            last.reverse();
            let extra = last.iter().map(|(s, e)| e - s).sum::<usize>().saturating_sub(n);
            if let Some(r) = last.first_mut() {
                r.0 += extra;
            }
            last
        };
        (DatasetBatches { ranges, ..all }, held_back)
    }

    /// Samples in the runs.
    pub fn samples(&self) -> usize {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }
}

impl SampleSource for DatasetBatches {
    fn batches(&self) -> Option<usize> {
        Some(self.ranges.len())
    }

    fn replay(&mut self, f: &mut dyn FnMut(Feeds) -> Result<()>) -> Result<()> {
        for (k, &(s, e)) in self.ranges.iter().enumerate() {
            let feeds = self.data.feeds(s, e, self.trim)?;
            self.data.check_finite(&feeds, s, k == 0).map_err(QuantError::NonFiniteInput)?;
            f(feeds).map_err(|source| QuantError::CalibrationRun {
                samples: self.data.range_label(s, e),
                source: Box::new(source),
            })?;
        }
        Ok(())
    }
}
