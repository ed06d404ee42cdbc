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

fn session_with(model: &ModelProto, path: &Path, opts: &SessionOptions) -> Result<Session> {
    Session::new(model, opts)
        .with_context(|| format!("{}: lowbit's engine cannot run this model", path.display()))
}
