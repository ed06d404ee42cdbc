//! `lowbit calibrate MODEL --data DIR [--samples N] [--preprocess SPEC] -o ranges.json`: streams
//! the samples through lowbit's engine into a calibrator and writes the calibration table
//! (every float32 tensor's extremes, histogram summary and the range each method gives), which
//! `lowbit quantize --ranges` reuses.
//!
//! Samples are fed as [`lowbit_quant::calibrate::dataset`] describes: the model's fixed batch,
//! or batches of 32, or one row per run cut to its real length for a model with a `*mask*`
//! input (unless `--no-trim`). Per-sample `.npz` files are read as their turn comes, and
//! `--preprocess` converts each batch as it is fed: memory does not grow with the number of
//! samples. `quantize --data` runs the same code ([`crate::calibration`]).

use crate::calibration::{calibrate_model, CalibrationData};
use crate::cli::CalibrateArgs;
use crate::inputs::data_format;
use crate::models::load_model;
use crate::paths::OutputPaths;
use crate::text::{plural, print};
use anyhow::{Context, Result};

pub fn calibrate(args: CalibrateArgs, quiet: bool) -> Result<()> {
    let format = data_format(&args.format)?;
    let source = format.source(&args.data)?;
    OutputPaths::new(args.force, &[("the input model", args.model.as_path())])
        .file("-o", &args.output)?;
    let model = load_model(&args.model)?;
    let opts = CalibrationData {
        threads: args.threads.n,
        trim: !args.no_trim,
        quiet,
        ..CalibrationData::new(&source, format.preprocess.as_ref(), args.samples)
    };
    let run = calibrate_model(&model, &args.model, &opts)?;
    run.table.save(&args.output).context("cannot write the calibration table")?;
    print(&format!(
        "calibrated {} tensors on {} sample{} ({} run{}) in {:.2} s -> {}\n",
        run.table.tensors.len(),
        run.samples,
        plural(run.samples),
        run.runs,
        plural(run.runs),
        run.elapsed.as_secs_f64(),
        args.output.display()
    ))
}
