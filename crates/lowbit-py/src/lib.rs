//! `lowbit._native`, the Rust half of the `lowbit` Python module: quantization through
//! [`lowbit_quant::quantize::quantize_run`] with the validation gate of
//! [`lowbit_eval::validate`], scoring, per-layer comparison and an inference session, each the
//! library call the command line makes. The Python half (`python/lowbit/__init__.py`) takes
//! ONNX Runtime's argument names and passes lowbit's here.
//!
//! | module | holds |
//! |---|---|
//! | [`errors`] | lowbit's errors as Python exceptions, with the command line's messages |
//! | [`convert`] | numpy arrays to tensors and back |
//! | [`reader`] | a `CalibrationDataReader` (ONNX Runtime's protocol) as a replayable sample source |
//! | [`data`] | `data=` arguments: a path read as `--data` reads it, or a reader |
//! | [`quantize`] | `quantize(...)` |
//! | [`scoring`] | `eval(...)` and `compare(...)` |
//! | [`session`] | `Session`: a model run on numpy arrays |
//!
//! Every call releases the GIL while it works; a reader's `get_next()` takes it back for the
//! call.

use pyo3::prelude::*;

mod convert;
mod data;
mod errors;
mod quantize;
mod reader;
mod scoring;
mod session;

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("LowbitError", py.get_type::<errors::LowbitError>())?;
    m.add("ValidationError", py.get_type::<errors::ValidationError>())?;
    m.add_function(wrap_pyfunction!(quantize::quantize, m)?)?;
    m.add_function(wrap_pyfunction!(scoring::eval, m)?)?;
    m.add_function(wrap_pyfunction!(scoring::compare, m)?)?;
    m.add_class::<session::Session>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
