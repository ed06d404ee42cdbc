//! `data=` arguments: a path read exactly as the command line's `--data` reads it (array
//! folders, `.npz`, photo folders, raw text through a tokenizer), loaded for a model's inputs.

use crate::errors::to_py;
use lowbit_data::{DataFormat, Dataset};
use lowbit_engine::{Session, SessionOptions};
use lowbit_onnx::pb::ModelProto;
use pyo3::PyResult;
use std::path::{Path, PathBuf};

/// The `--data` options, as keyword arguments give them.
#[derive(Clone, Debug, Default)]
pub struct DataOptions {
    pub preprocess: Option<String>,
    pub tokenizer: Option<PathBuf>,
    pub text_field: Option<String>,
    pub pair_fields: Option<String>,
    pub gold_field: Option<String>,
}

impl DataOptions {
    pub fn format(&self) -> PyResult<DataFormat> {
        DataFormat::new(
            self.preprocess.as_deref(),
            self.tokenizer.as_deref(),
            self.text_field.as_deref(),
            self.pair_fields.as_deref(),
            self.gold_field.as_deref(),
        )
        .map_err(to_py)
    }
}

/// A planned, unfused session for `model` (every value observable, as calibration needs).
pub fn unfused_session(model: &ModelProto, path: &Path, threads: usize) -> PyResult<Session> {
    Session::new(model, &SessionOptions::unfused(threads)).map_err(|e| {
        crate::errors::with_context(
            &format!("{}: lowbit's engine cannot run this model", path.display()),
            e,
        )
    })
}

/// The samples at `path` for `session`'s inputs, the first `samples` of them.
pub fn load(
    session: &Session,
    format: &DataFormat,
    path: &Path,
    samples: Option<usize>,
) -> PyResult<Dataset> {
    let src = format.source(path).map_err(to_py)?;
    let mut data =
        Dataset::load(&session.inputs(), &src, format.preprocess.as_ref()).map_err(to_py)?;
    if let Some(n) = samples {
        data.limit(n).map_err(to_py)?;
    }
    Ok(data)
}
