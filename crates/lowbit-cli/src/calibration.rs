//! Calibrating for `calibrate` and `quantize --data`: the data set loaded and limited as the
//! command line asks, then [`calibrate_dataset`] on an unfused session with a progress bar.

use crate::inputs::{keep_samples, load_dataset};
use crate::models::new_unfused_session;
use crate::progress::{advance, progress};
use anyhow::{Context, Result};
use lowbit_data::{Dataset, FeedSource, Preprocess};
use lowbit_engine::Session;
use lowbit_onnx::pb::ModelProto;
use lowbit_quant::calibrate::dataset::{calibrate_dataset, CalibrationRun, DatasetBatches};
use lowbit_quant::calibrate::CalibratorOptions;
use lowbit_quant::QuantError;
use std::path::Path;

/// Where the calibration samples come from and how they are fed.
pub struct CalibrationData<'a> {
    /// `--data`: a folder, a `.npz` file, photos or raw text.
    pub data: &'a FeedSource,
    pub preprocess: Option<&'a Preprocess>,
    /// Only the first N samples.
    pub samples: Option<usize>,
    pub threads: usize,
    /// Cut each row to its `*mask*` input's real length.
    pub trim: bool,
    pub quiet: bool,
}

impl<'a> CalibrationData<'a> {
    /// The first `samples` (all with `None`) of `data`, trimmed, one thread per core, notes
    /// shown.
    pub fn new(
        data: &'a FeedSource,
        preprocess: Option<&'a Preprocess>,
        samples: Option<u64>,
    ) -> Self {
        let samples = samples.map(|n| n as usize);
        CalibrationData { data, preprocess, samples, threads: 0, trim: true, quiet: false }
    }

    /// An unfused session of `model` (read from `path`) and the samples these settings name.
    fn load(&self, model: &ModelProto, path: &Path) -> Result<(Session, Dataset)> {
        let session = new_unfused_session(model, path, self.threads)?;
        let mut data = load_dataset(&session, self.data, self.preprocess, self.quiet)?;
        keep_samples(&mut data, self.samples)?;
        Ok((session, data))
    }
}

/// Calibrates `model` (read from `path`) on the samples `opts` names.
pub fn calibrate_model(
    model: &ModelProto,
    path: &Path,
    opts: &CalibrationData,
) -> Result<CalibrationRun> {
    let (session, mut data) = opts.load(model, path)?;
    let bar = progress(data.samples as u64, opts.quiet, "calibrate");
    let run = calibrate_dataset(
        &session,
        &mut data,
        CalibratorOptions::default(),
        opts.trim,
        &mut advance(&bar),
    );
    bar.finish_and_clear();
    match run {
        Err(e @ QuantError::CalibrationRun { .. }) => Err(e).context(path.display().to_string()),
        other => Ok(other?),
    }
}

/// The samples `opts` names for `model` (read from `path`) as calibration runs, replayable by
/// the quantizer's passes.
pub fn dataset_batches(
    model: &ModelProto,
    path: &Path,
    opts: &CalibrationData,
) -> Result<DatasetBatches> {
    let (_, data) = opts.load(model, path)?;
    Ok(DatasetBatches::new(data, opts.trim))
}
