//! `lowbit calibrate MODEL --data DIR [--samples N] [--threads N] -o ranges.json`: streams the
//! samples through lowbit's engine into a [`Calibrator`] and writes the calibration table
//! (every float32 tensor's extremes, histogram summary and the range each method gives), which
//! `lowbit quantize --ranges` reuses.
//!
//! Samples are fed as `run` feeds them (see [`crate::feeds`]): batches of
//! [`DEFAULT_BATCH`] where the model's first dimension is free, the fixed batch (row by row for
//! batch 1) where it is not, each batch cut to its `*mask*` input's longest real length unless
//! `--no-trim`. Memory does not grow with the number of samples. `quantize --data` runs the
//! same code ([`calibrate_model`]).

use super::run::{progress, DEFAULT_BATCH};
use super::{load_model, new_session, print};
use crate::cli::CalibrateArgs;
use crate::feeds::{Dataset, FeedSource};
use crate::usage::usage_bail;
use anyhow::{bail, Context, Result};
use lowbit_onnx::pb::ModelProto;
use lowbit_quant::calibrate::{CalibrationTable, Calibrator, CalibratorOptions};
use std::path::Path;
use std::time::{Duration, Instant};

/// What a calibration saw, for the messages.
pub struct CalibrationRun {
    pub table: CalibrationTable,
    pub samples: usize,
    pub runs: usize,
    pub elapsed: Duration,
}

/// Calibrates `model` (read from `path`) on the samples in `data`: the first `samples` of them
/// when given. Non-finite input data is an error naming the input and the row.
pub fn calibrate_model(
    model: &ModelProto,
    path: &Path,
    data: &Path,
    samples: Option<usize>,
    threads: usize,
    trim: bool,
    quiet: bool,
) -> Result<CalibrationRun> {
    let session = new_session(model, path, threads)?;
    let mut dataset = Dataset::load(&session.inputs(), &FeedSource::Data(data.to_path_buf()))?;
    if let Some(n) = samples {
        if n == 0 {
            usage_bail!("--samples must be at least 1");
        }
        if let Some(b) = dataset.fixed_batch {
            if n < dataset.samples && !n.is_multiple_of(b) {
                usage_bail!("--samples {n}: the model's fixed batch is {b}; use a multiple of it");
            }
        }
        dataset.limit(n)?;
    }
    check_finite_inputs(&dataset)?;

    let batch = dataset.fixed_batch.unwrap_or(DEFAULT_BATCH);
    let ranges = dataset.ranges(batch);
    let mut cal = Calibrator::new(CalibratorOptions::default())?;
    let bar = progress(dataset.samples as u64, quiet, "calibrate");
    let start = Instant::now();
    for &(s, e) in &ranges {
        let feeds = dataset.feeds(s, e, trim)?;
        cal.run(&session, feeds).with_context(|| {
            format!("{}: calibration run on samples {s}..{e} failed", path.display())
        })?;
        bar.inc((e - s) as u64);
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let table = cal.table().context("cannot finish the calibration")?;
    Ok(CalibrationRun { table, samples: dataset.samples, runs: ranges.len(), elapsed })
}

/// The first NaN or ±inf in a float input, as an error naming the input and the row.
fn check_finite_inputs(data: &Dataset) -> Result<()> {
    for a in &data.arrays {
        if !a.tensor.dtype().is_float() {
            continue;
        }
        let values = a.tensor.to_f64_vec()?;
        let Some(i) = values.iter().position(|v| !v.is_finite()) else { continue };
        let (row, at) = if a.batched && a.tensor.shape()[0] > 0 {
            let per_row = values.len() / a.tensor.shape()[0];
            (Some(i / per_row.max(1)), i % per_row.max(1))
        } else {
            (None, i)
        };
        match row {
            Some(r) => bail!(
                "calibration data: input '{}', row {r}: {} at element {at} of the row; \
                 calibration data must be finite",
                a.spec.name,
                values[i]
            ),
            None => bail!(
                "calibration data: input '{}': {} at element {at}; calibration data must be \
                 finite",
                a.spec.name,
                values[i]
            ),
        }
    }
    Ok(())
}

pub fn calibrate(args: CalibrateArgs, quiet: bool) -> Result<()> {
    if same_file(&args.model, &args.output) {
        bail!("-o {} is the model itself; choose another output file", args.output.display());
    }
    let model = load_model(&args.model)?;
    let run = calibrate_model(
        &model,
        &args.model,
        &args.data,
        args.samples.map(|n| n as usize),
        args.threads,
        !args.no_trim,
        quiet,
    )?;
    run.table.save(&args.output).context("cannot write the calibration table")?;
    print(&format!(
        "calibrated {} tensors on {} sample{} ({} run{}) in {:.2} s -> {}\n",
        run.table.tensors.len(),
        run.samples,
        if run.samples == 1 { "" } else { "s" },
        run.runs,
        if run.runs == 1 { "" } else { "s" },
        run.elapsed.as_secs_f64(),
        args.output.display()
    ))
}

/// Whether `a` and `b` name the same file (an `b` that does not exist yet is compared by its
/// canonical folder and file name).
pub fn same_file(a: &Path, b: &Path) -> bool {
    fn canonical(p: &Path) -> Option<std::path::PathBuf> {
        if let Ok(c) = p.canonicalize() {
            return Some(c);
        }
        let name = p.file_name()?;
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        Some(parent.canonicalize().ok()?.join(name))
    }
    match (canonical(a), canonical(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}
