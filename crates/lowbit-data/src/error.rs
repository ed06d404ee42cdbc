//! The data pipeline's one error type: every variant names the file, the input or the sample
//! it is about.

use lowbit_tensor::TensorError;

/// Everything that can go wrong reading, checking and feeding data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Arguments that make no sense (a bad `--preprocess` key, `--limit 0`): the caller's
    /// mistake, not the files'. See [`DataError::is_usage`].
    #[error("{0}")]
    Usage(String),
    /// An array that does not fit the input it feeds; `at` names the file (and array).
    #[error("input '{input}'{}: {msg}", at_text(.at))]
    Input { input: String, at: Option<String>, msg: String },
    /// A required input no file holds.
    #[error("missing input '{input}': {needs}; {hint}")]
    MissingInput { input: String, needs: String, hint: String },
    /// NaN or ±inf in a float input of sample `sample`.
    #[error("input '{input}'{}: {value} at element {index}{}", in_sample(.sample), of_row(.sample))]
    NonFinite { input: String, sample: Option<String>, value: f64, index: usize },
    /// Data that cannot be used as it is (the message names the file or input).
    #[error("{0}")]
    Invalid(String),
    /// A file that cannot be read or written; `what` says which and why it was wanted.
    #[error("{what}")]
    File {
        what: String,
        #[source]
        source: TensorError,
    },
    /// A folder or file the system refuses.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file that does not parse.
    #[error("{what}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

fn at_text(at: &Option<String>) -> String {
    at.as_ref().map(|a| format!(" ({a})")).unwrap_or_default()
}

fn in_sample(sample: &Option<String>) -> String {
    sample.as_ref().map(|s| format!(", {s}")).unwrap_or_default()
}

fn of_row(sample: &Option<String>) -> &'static str {
    if sample.is_some() {
        " of the row"
    } else {
        ""
    }
}

impl DataError {
    /// Whether the error is in how the pipeline was called (a command line exits 2 on it).
    pub fn is_usage(&self) -> bool {
        matches!(self, DataError::Usage(_))
    }
}

pub type Result<T> = std::result::Result<T, DataError>;

/// Returns early with [`DataError::Usage`].
macro_rules! usage_bail {
    ($($arg:tt)*) => {
        return Err($crate::error::DataError::Usage(format!($($arg)*)))
    };
}

/// Returns early with [`DataError::Invalid`].
macro_rules! invalid_bail {
    ($($arg:tt)*) => {
        return Err($crate::error::DataError::Invalid(format!($($arg)*)))
    };
}

pub(crate) use {invalid_bail, usage_bail};
