//! `Session`: a model planned on lowbit's engine and run on numpy arrays, with ONNX Runtime's
//! `InferenceSession.run(output_names, input_feed)` signature.

use crate::convert::{feeds_from_dict, to_numpy};
use crate::errors::{to_py, with_context};
use lowbit_engine::SessionOptions;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::path::PathBuf;

/// A model loaded and planned on lowbit's engine.
#[pyclass(module = "lowbit", frozen)]
pub struct Session {
    inner: lowbit_engine::Session,
    path: String,
}

/// An input's name, element type and shape (`None`: free dimension), as ORT's `get_inputs()`.
type InputInfo = (String, Option<String>, Option<Vec<Option<usize>>>);

#[pymethods]
impl Session {
    /// Loads `path` (external data resolved beside it) and plans it with `threads` workers
    /// (0: one per core).
    #[new]
    #[pyo3(signature = (path, threads = 0))]
    fn new(py: Python<'_>, path: PathBuf, threads: usize) -> PyResult<Session> {
        py.detach(|| {
            let model = lowbit_onnx::load_model(&path)
                .map_err(|e| with_context("cannot load the model", e))?;
            let inner = lowbit_engine::Session::new(&model, &SessionOptions::with_threads(threads))
                .map_err(|e| {
                    with_context(
                        &format!("{}: lowbit's engine cannot run this model", path.display()),
                        e,
                    )
                })?;
            Ok(Session { inner, path: path.display().to_string() })
        })
    }

    /// The graph inputs: `(name, dtype, shape)` with `None` for free dimensions.
    #[getter]
    fn inputs(&self) -> Vec<InputInfo> {
        self.inner
            .inputs()
            .into_iter()
            .map(|s| {
                let dims = s.dims.as_ref().map(|d| {
                    d.iter()
                        .map(|x| match x {
                            lowbit_tensor::Dim::Fixed(n) => Some(*n),
                            _ => None,
                        })
                        .collect()
                });
                (s.name.clone(), s.dtype.map(|t| t.to_string()), dims)
            })
            .collect()
    }

    /// The graph output names, in order.
    #[getter]
    fn outputs(&self) -> Vec<String> {
        self.inner.output_names().into_iter().map(String::from).collect()
    }

    /// Runs the model on `input_feed` (input name → array) and returns the outputs named in
    /// `output_names` (all when `None`), as ONNX Runtime's `InferenceSession.run` does.
    #[pyo3(signature = (output_names, input_feed))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        output_names: Option<Vec<String>>,
        input_feed: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyList>> {
        let feeds = feeds_from_dict(input_feed)?;
        let outputs = py
            .detach(|| self.inner.run(feeds))
            .map_err(|e| with_context(&format!("{}: run failed", self.path), e))?;
        let wanted: Vec<String> = output_names.unwrap_or_else(|| self.outputs());
        let mut outputs = outputs;
        let mut list = Vec::with_capacity(wanted.len());
        for name in &wanted {
            let Some(i) = outputs.iter().position(|(n, _)| n == name) else {
                return Err(to_py(lowbit_data::DataError::Usage(format!(
                    "no output '{name}': the model's outputs are {}",
                    self.outputs().join(", ")
                ))));
            };
            let (_, t) = outputs.swap_remove(i);
            list.push(to_numpy(py, t)?);
        }
        PyList::new(py, list)
    }

    fn __repr__(&self) -> String {
        format!("lowbit.Session('{}')", self.path)
    }
}
