//! lowbit's errors as Python exceptions. The message is the one `lowbit` prints after
//! `error:` (the error and its causes, `: `-separated); usage errors (arguments that make no
//! sense) are `ValueError`s, a model that fails validation a [`ValidationError`], everything
//! else a [`LowbitError`].

use lowbit_data::DataError;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::{create_exception, PyErr};

create_exception!(
    lowbit,
    LowbitError,
    PyException,
    "An error lowbit reports about a model or data (the message names the file, node or sample)."
);
create_exception!(
    lowbit,
    ValidationError,
    LowbitError,
    "The quantized model lost too much against FP32 on the validation samples; it was not written."
);

/// The error and its causes, skipping causes whose text is already shown.
pub fn message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause = Some(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = c.source();
    }
    parts.join(": ")
}

/// `e` as a Python exception (see the module docs).
pub fn to_py<E: std::error::Error + 'static>(e: E) -> PyErr {
    let mut usage = false;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(c) = cause {
        usage |= c.downcast_ref::<DataError>().is_some_and(DataError::is_usage);
        cause = c.source();
    }
    if usage {
        PyValueError::new_err(message(&e))
    } else {
        LowbitError::new_err(message(&e))
    }
}

/// `e` with `context` before it, as the command line's `--context: error` lines read.
pub fn with_context<E: std::error::Error + 'static>(context: &str, e: E) -> PyErr {
    let err = to_py(e);
    pyo3::Python::attach(|py| {
        let text = format!("{context}: {}", err.value(py));
        if err.is_instance_of::<PyValueError>(py) {
            PyValueError::new_err(text)
        } else {
            LowbitError::new_err(text)
        }
    })
}
