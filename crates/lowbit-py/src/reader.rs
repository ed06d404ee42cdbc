//! ONNX Runtime's `CalibrationDataReader` protocol as the quantizer's replayable
//! [`SampleSource`]: any object whose `get_next()` returns a dict of input name → array, then
//! `None`.
//!
//! A reader can be read once, and the quantizer replays its samples (calibration, the
//! accuracy-recovery steps, validation). So the first pass keeps every batch it reads: in
//! memory up to a budget, then as `.npz` files in a temporary folder removed afterwards.
//! Memory stays bounded by the budget, disk grows with the data (as the reader's own source
//! does).

use crate::convert::feeds_from_dict;
use lowbit_data::DataError;
use lowbit_quant::error::{QuantError, Result};
use lowbit_quant::samples::{Feeds, SampleSource};
use lowbit_tensor::npy;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

/// Bytes of batches kept in memory before they go to disk.
pub const DEFAULT_MEMORY_BUDGET: usize = 1 << 30;

/// A batch kept for replaying.
enum Kept {
    Memory(Feeds),
    File(PathBuf),
}

/// A reader's batches, read on the first pass and replayed from what was kept.
pub struct ReaderSource {
    reader: Option<Py<PyAny>>,
    kept: Vec<Kept>,
    /// Rows (axis 0 of the first input) per kept batch.
    rows: Vec<usize>,
    held: usize,
    budget: usize,
    spill: Option<tempfile::TempDir>,
    /// The exception `get_next()` raised, re-raised as it is by the caller.
    pub error: Option<PyErr>,
}

fn bytes(feeds: &Feeds) -> usize {
    feeds.iter().map(|(_, t)| t.len() * t.dtype().bits().div_ceil(8)).sum()
}

impl ReaderSource {
    pub fn new(reader: Py<PyAny>, budget: usize) -> ReaderSource {
        ReaderSource {
            reader: Some(reader),
            kept: Vec::new(),
            rows: Vec::new(),
            held: 0,
            budget,
            spill: None,
            error: None,
        }
    }

    /// The reader's next batch (`None` once it returns `None`).
    fn next(&mut self) -> Result<Option<Feeds>> {
        let Some(reader) = &self.reader else { return Ok(None) };
        let got = Python::attach(|py| -> PyResult<Option<Feeds>> {
            let item = reader.bind(py).call_method0("get_next")?;
            if item.is_none() {
                return Ok(None);
            }
            let dict = item.cast::<PyDict>().map_err(|_| {
                pyo3::exceptions::PyTypeError::new_err(format!(
                    "calibration_data_reader.get_next() returned {}, not a dict of input name \
                     → array (or None at the end)",
                    item.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                ))
            })?;
            feeds_from_dict(dict).map(Some)
        });
        match got {
            Ok(Some(f)) => Ok(Some(f)),
            Ok(None) => {
                self.reader = None;
                Ok(None)
            }
            Err(e) => {
                let msg = Python::attach(|py| e.value(py).to_string());
                self.error = Some(e);
                self.reader = None;
                Err(QuantError::Data(DataError::Invalid(format!(
                    "calibration_data_reader.get_next() failed: {msg}"
                ))))
            }
        }
    }

    /// Keeps a batch for replaying.
    fn keep(&mut self, feeds: &Feeds) -> Result<()> {
        let size = bytes(feeds);
        self.rows.push(feeds.first().map_or(1, |(_, t)| t.shape().first().copied().unwrap_or(1)));
        if self.held + size <= self.budget {
            self.held += size;
            self.kept.push(Kept::Memory(feeds.clone()));
            return Ok(());
        }
        if self.spill.is_none() {
            let dir = tempfile::Builder::new().prefix("lowbit-reader-").tempdir().map_err(|e| {
                DataError::Io {
                    what: "cannot make a folder for the reader's batches".into(),
                    source: e,
                }
            })?;
            self.spill = Some(dir);
        }
        let dir = self.spill.as_ref().expect("made above").path();
        let path = dir.join(format!("batch{:06}.npz", self.kept.len()));
        npy::write_npz(&path, feeds).map_err(DataError::from)?;
        self.kept.push(Kept::File(path));
        Ok(())
    }

    fn load(&self, k: usize) -> Result<Feeds> {
        match &self.kept[k] {
            Kept::Memory(f) => Ok(f.clone()),
            Kept::File(p) => Ok(npy::read_npz(p).map_err(DataError::from)?),
        }
    }

    /// Reads what the reader still holds (keeping it).
    pub fn read_all(&mut self) -> Result<()> {
        while let Some(f) = self.next()? {
            self.keep(&f)?;
        }
        Ok(())
    }

    /// The last kept batches holding at least `n` rows (all when there are fewer), for
    /// validation: the reader has no samples the calibration did not see.
    pub fn tail(&mut self, n: usize) -> Tail<'_> {
        let mut from = self.kept.len();
        let mut rows = 0;
        while from > 0 && rows < n {
            from -= 1;
            rows += self.rows[from];
        }
        Tail { src: self, from }
    }
}

impl SampleSource for ReaderSource {
    fn batches(&self) -> Option<usize> {
        self.reader.is_none().then_some(self.kept.len())
    }

    fn replay(&mut self, f: &mut dyn FnMut(Feeds) -> Result<()>) -> Result<()> {
        for k in 0..self.kept.len() {
            f(self.load(k)?)?;
        }
        while let Some(feeds) = self.next()? {
            self.keep(&feeds)?;
            f(feeds)?;
        }
        if self.kept.is_empty() {
            return Err(QuantError::NoData(
                ": calibration_data_reader.get_next() returned None at once".into(),
            ));
        }
        Ok(())
    }
}

/// The last batches of a [`ReaderSource`], replayable.
pub struct Tail<'a> {
    src: &'a mut ReaderSource,
    from: usize,
}

impl SampleSource for Tail<'_> {
    fn batches(&self) -> Option<usize> {
        Some(self.src.kept.len() - self.from)
    }

    fn replay(&mut self, f: &mut dyn FnMut(Feeds) -> Result<()>) -> Result<()> {
        for k in self.from..self.src.kept.len() {
            f(self.src.load(k)?)?;
        }
        Ok(())
    }
}
