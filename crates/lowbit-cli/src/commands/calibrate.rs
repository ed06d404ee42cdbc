//! `lowbit calibrate MODEL --data DIR [--samples N] [--preprocess SPEC] -o ranges.json`: streams the
//! samples through lowbit's engine into a [`Calibrator`] and writes the calibration table
//! (every float32 tensor's extremes, histogram summary and the range each method gives), which
//! `lowbit quantize --ranges` reuses.
//!
//! Samples are fed as `run` feeds them (see [`lowbit_data::dataset`]): batches of [`DEFAULT_BATCH`]
//! where the model's first dimension is free, the fixed batch (row by row for batch 1) where it
//! is not; a model with a `*mask*` input gets one row per run, cut to its real length (unless
//! `--no-trim`), so padding never enters the statistics. Per-sample `.npz` files are read as
//! their turn comes, and `--preprocess` converts each batch as it is fed. Memory does not grow
//! with the number of samples. `quantize --data` runs the same code ([`calibrate_model`]).

use super::run::{progress, DEFAULT_BATCH};
use super::{load_model, new_unfused_session, preprocess_arg, print, print_notes};
use crate::cli::CalibrateArgs;
use crate::usage::usage_bail;
use anyhow::{bail, Context, Result};
use lowbit_data::{Dataset, FeedSource, Preprocess};
use lowbit_onnx::pb::ModelProto;
use lowbit_quant::calibrate::{CalibrationTable, Calibrator, CalibratorOptions};
use lowbit_tensor::Tensor;
use std::path::Path;
use std::time::{Duration, Instant};

/// What a calibration saw, for the messages.
pub struct CalibrationRun {
    pub table: CalibrationTable,
    pub samples: usize,
    pub runs: usize,
    pub elapsed: Duration,
}

/// Where the calibration samples come from and how they are fed.
pub struct CalibrationData<'a> {
    /// The `--data` folder (or `.npz` file).
    pub data: &'a Path,
    /// `--preprocess`.
    pub preprocess: Option<&'a Preprocess>,
    /// Only the first N samples.
    pub samples: Option<usize>,
    pub threads: usize,
    /// Cut each batch to its `*mask*` input's longest real length.
    pub trim: bool,
    pub quiet: bool,
}

/// Calibrates `model` (read from `path`) on the samples `opts` names. Non-finite input data is
/// an error naming the input and the sample (row, or file for per-sample files).
pub fn calibrate_model(
    model: &ModelProto,
    path: &Path,
    opts: &CalibrationData,
) -> Result<CalibrationRun> {
    let session = new_unfused_session(model, path, opts.threads)?;
    let src = FeedSource::Data(opts.data.to_path_buf());
    let mut dataset = Dataset::load(&session.inputs(), &src, opts.preprocess)?;
    print_notes(&dataset, opts.quiet);
    if let Some(n) = opts.samples {
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

    // With a mask input each row is fed alone, cut to its real length: rows batched together
    // are padded to the longest, and the padded positions' activations (which deployment never
    // computes) would enter the statistics. Measured on MiniLM, entropy ranges from padded
    // batches of 32 gave a mean cosine to FP32 of 0.896, row by row 0.960, at the same speed.
    let batch = match dataset.fixed_batch {
        Some(b) => b,
        None if opts.trim && dataset.mask_name().is_some() => 1,
        None => DEFAULT_BATCH,
    };
    let ranges = dataset.ranges(batch);
    let mut cal = Calibrator::new(CalibratorOptions::default())?;
    let bar = progress(dataset.samples as u64, opts.quiet, "calibrate");
    let start = Instant::now();
    for (k, &(s, e)) in ranges.iter().enumerate() {
        let feeds = dataset.feeds(s, e, opts.trim)?;
        check_finite(&dataset, &feeds, s, k == 0)?;
        cal.run(&session, feeds).with_context(|| {
            format!("{}: calibration run on {} failed", path.display(), dataset.range_label(s, e))
        })?;
        bar.inc((e - s) as u64);
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let table = cal.table().context("cannot finish the calibration")?;
    Ok(CalibrationRun { table, samples: dataset.samples, runs: ranges.len(), elapsed })
}

/// The first NaN or ±inf in the float feeds of the run starting at sample `start`, as an error
/// naming the input and the sample. Inputs fed whole are checked on the `first` run only.
fn check_finite(
    data: &Dataset,
    feeds: &[(String, Tensor)],
    start: usize,
    first: bool,
) -> Result<()> {
    for (i, (name, t)) in feeds.iter().enumerate() {
        let batched = data.batched(i);
        if !t.dtype().is_float() || (!batched && !first) {
            continue;
        }
        let values = t.to_f64_vec()?;
        let Some(at) = values.iter().position(|v| !v.is_finite()) else { continue };
        if batched && t.shape()[0] > 0 {
            let per_row = (values.len() / t.shape()[0]).max(1);
            bail!(
                "calibration data: input '{name}', {}: {} at element {} of the row; \
                 calibration data must be finite",
                data.row_label(start + at / per_row),
                values[at],
                at % per_row
            );
        }
        bail!(
            "calibration data: input '{name}': {} at element {at}; calibration data must be \
             finite",
            values[at]
        );
    }
    Ok(())
}

pub fn calibrate(args: CalibrateArgs, quiet: bool) -> Result<()> {
    if same_file(&args.model, &args.output) {
        bail!("-o {} is the model itself; choose another output file", args.output.display());
    }
    let preprocess = preprocess_arg(args.preprocess.as_deref())?;
    let model = load_model(&args.model)?;
    let opts = CalibrationData {
        data: &args.data,
        preprocess: preprocess.as_ref(),
        samples: args.samples.map(|n| n as usize),
        threads: args.threads,
        trim: !args.no_trim,
        quiet,
    };
    let run = calibrate_model(&model, &args.model, &opts)?;
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
