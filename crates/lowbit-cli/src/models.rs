//! Loading a model with a message that names the file, and planning it on lowbit's engine.

use anyhow::{Context, Result};
use lowbit_engine::{Session, SessionOptions};
use lowbit_onnx::pb::ModelProto;
use std::path::Path;

/// Reads an ONNX file (external data resolved beside it).
pub fn load_model(path: &Path) -> Result<ModelProto> {
    // lowbit-onnx's errors already name the file.
    lowbit_onnx::load_model(path).context("cannot load the model")
}

/// Plans `model` on lowbit's engine with `threads` workers (0: one per core).
pub fn new_session(model: &ModelProto, path: &Path, threads: usize) -> Result<Session> {
    session_with(model, path, &SessionOptions::with_threads(threads))
}

/// [`new_session`] without load-time fusion, for observers that need every value the model
/// names (calibration).
pub fn new_unfused_session(model: &ModelProto, path: &Path, threads: usize) -> Result<Session> {
    session_with(model, path, &SessionOptions::unfused(threads))
}

/// Plans `model` with `opts` (commands that set more than threads: `serve`).
pub fn session_with(model: &ModelProto, path: &Path, opts: &SessionOptions) -> Result<Session> {
    Session::new(model, opts)
        .with_context(|| format!("{}: lowbit's engine cannot run this model", path.display()))
}

// --- adaptive precision (issue 17) ---

/// [`new_session`], adaptive when `args.adaptive` ([`lowbit_engine::adaptive`]): the baseline
/// saturation comes from the calibration record the quantizer stored in the model (0 without
/// one, noted on stderr unless `quiet`).
pub fn new_session_adaptive(
    model: &ModelProto,
    path: &Path,
    threads: usize,
    args: &crate::cli::AdaptiveArgs,
    quiet: bool,
) -> Result<Session> {
    if !args.adaptive {
        return new_session(model, path, threads);
    }
    let adaptive = adaptive_options(model, path, args, quiet)?;
    let opts = SessionOptions { adaptive: Some(adaptive), ..SessionOptions::with_threads(threads) };
    let session = session_with(model, path, &opts)?;
    if session.adaptive_watched().is_some_and(|w| w.is_empty()) && !quiet {
        eprintln!(
            "note: --adaptive: {} has no quantized activation to watch; it runs as without",
            path.display()
        );
    }
    Ok(session)
}

/// The engine's adaptive options from the command line: threshold, the fallback model, and
/// each watched tensor's calibration saturation from the model's calibration record (none:
/// noted on stderr unless `quiet`, and any saturation counts).
pub fn adaptive_options(
    model: &ModelProto,
    path: &Path,
    args: &crate::cli::AdaptiveArgs,
    quiet: bool,
) -> Result<lowbit_engine::adaptive::AdaptiveOptions> {
    if !(args.adaptive_threshold >= 0.0 && args.adaptive_threshold <= 1.0) {
        crate::usage::usage_bail!(
            "--adaptive-threshold must be a share in [0, 1], got {}",
            args.adaptive_threshold
        );
    }
    use lowbit_quant::calibrate::CalibrationRecord;
    let baseline = match CalibrationRecord::stored(model) {
        Some(Ok(r)) => r.saturation(),
        Some(Err(e)) => anyhow::bail!(
            "{}: its calibration record (metadata '{}') is unreadable: {e}",
            path.display(),
            lowbit_quant::calibrate::CALIBRATION_METADATA_KEY
        ),
        None => {
            if !quiet {
                eprintln!(
                    "note: {} carries no calibration record (quantized by another tool or an \
                     older lowbit): any saturation counts against --adaptive-threshold",
                    path.display()
                );
            }
            Default::default()
        }
    };
    let fallback = match &args.adaptive_fallback {
        Some(p) => {
            Some(load_model(p).with_context(|| format!("--adaptive-fallback {}", p.display()))?)
        }
        None => None,
    };
    Ok(lowbit_engine::adaptive::AdaptiveOptions {
        threshold: args.adaptive_threshold,
        baseline,
        fallback,
        ..Default::default()
    })
}

/// One line on what an adaptive session did: samples re-run on the float path, and the
/// tensors that sent the most there.
pub fn adaptive_line(stats: &lowbit_engine::adaptive::AdaptiveStats) -> String {
    let mut worst: Vec<(&String, &u64)> = stats.triggers.iter().collect();
    worst.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let names: Vec<String> = worst.iter().take(3).map(|(n, c)| format!("{n} ({c})")).collect();
    let pct = 100.0 * stats.rerun as f64 / stats.samples.max(1) as f64;
    let mut s =
        format!("{} of {} samples re-run in float ({pct:.1} %)", stats.rerun, stats.samples);
    if !names.is_empty() {
        s.push_str(&format!("; saturating most: {}", names.join(", ")));
    }
    s
}
