//! [`Dataset`]: every graph input, checked against the model and cut into the batches runs
//! are fed, whatever [`SampleSource`] keeps the samples.
//!
//! Samples lie along axis 0 of every input whose declared rank equals the stored rank. Such
//! inputs are fed in batches: up to the caller's batch where the model's first dimension is
//! free, exactly the model's batch where it is fixed (a model fixed at batch 1 gets each row as
//! a `[1, ...]` slice). Inputs declared without a shape, and scalars, are fed whole to every
//! run. `--preprocess` converts integer arrays for float inputs batch by batch as they are fed
//! ([`crate::preprocess`]); float arrays are fed as they are (with a note). Trimming is
//! described in [`crate::trim`].

use crate::check::{check_array, common_rows, fed_form, fixed_batch};
use crate::error::{invalid_bail, usage_bail, DataError, Result};
use crate::folder::{find_arrays, FeedSource, Found, Stored};
use crate::npz_samples::SampleFiles;
use crate::preprocess::Preprocess;
use crate::rows::slice_rows;
use crate::trim::{find_mask, trim_to_mask};
use lowbit_tensor::{DType, InputSpec, Tensor};
use std::path::PathBuf;

/// Samples per run where the model's first dimension is free and the caller names no batch.
pub const DEFAULT_BATCH: usize = 32;

/// Where a data set's samples are kept, and how a run's rows are read: whole arrays in memory
/// or per-sample files today; photo folders and text files are further sources. A source
/// stores and reads; [`Dataset`] checks, converts and trims.
pub(crate) trait SampleSource: Send {
    /// Samples held (1 when no input is batched).
    fn len(&self) -> usize;
    /// Input `i`'s element type and shape as stored (in the first file for per-sample files).
    fn stored_form(&self, i: usize) -> Option<(DType, Vec<usize>)>;
    /// Whether input `i` is read sample by sample (for notes).
    fn per_sample(&self, i: usize) -> bool;
    /// `(start, end)` sample ranges of at most `batch` rows (`batch` ≥ 1), one per run.
    fn ranges(&self, batch: usize) -> Vec<(usize, usize)>;
    /// Sample `row` in messages.
    fn row_label(&self, row: usize) -> String;
    /// Samples `start..end` in messages.
    fn range_label(&self, start: usize, end: usize) -> String;
    /// Every input's rows `start..end` as stored (inputs fed whole: the whole array).
    fn rows(&mut self, start: usize, end: usize) -> Result<Vec<Tensor>>;
    /// Keeps the first `n` samples (`n` less than the samples held).
    fn truncate(&mut self, n: usize) -> Result<()>;
}

/// One graph input as the data set feeds it.
pub(crate) struct Input {
    pub(crate) spec: InputSpec,
    /// Samples lie along axis 0.
    pub(crate) batched: bool,
}

/// Whole arrays in memory, as stored (`<input>.npy` files, one data set of `.npz`, `--input`),
/// one per input.
struct Arrays {
    tensors: Vec<Tensor>,
    batched: Vec<bool>,
    samples: usize,
}

impl SampleSource for Arrays {
    fn len(&self) -> usize {
        self.samples
    }

    fn stored_form(&self, i: usize) -> Option<(DType, Vec<usize>)> {
        Some((self.tensors[i].dtype(), self.tensors[i].shape().to_vec()))
    }

    fn per_sample(&self, _: usize) -> bool {
        false
    }

    fn ranges(&self, batch: usize) -> Vec<(usize, usize)> {
        (0..self.samples).step_by(batch).map(|s| (s, (s + batch).min(self.samples))).collect()
    }

    fn row_label(&self, row: usize) -> String {
        format!("row {row}")
    }

    fn range_label(&self, start: usize, end: usize) -> String {
        format!("samples {start}..{end}")
    }

    fn rows(&mut self, start: usize, end: usize) -> Result<Vec<Tensor>> {
        self.tensors
            .iter()
            .zip(&self.batched)
            .map(|(t, &b)| if b { slice_rows(t, start, end) } else { Ok(t.clone()) })
            .collect()
    }

    fn truncate(&mut self, n: usize) -> Result<()> {
        for (t, &b) in self.tensors.iter_mut().zip(&self.batched) {
            if b {
                *t = slice_rows(t, 0, n)?;
            }
        }
        self.samples = n;
        Ok(())
    }
}

/// All graph inputs, checked against the model and ready to be cut into batches.
pub struct Dataset {
    inputs: Vec<Input>,
    source: Box<dyn SampleSource>,
    /// Samples along axis 0 of the batched inputs (1 when nothing is batched).
    pub samples: usize,
    /// The model's fixed first dimension, when a batched input declares one.
    pub fixed_batch: Option<usize>,
    /// Index of the `*mask*` input used for trimming.
    mask: Option<usize>,
    preprocess: Option<Preprocess>,
    notes: Vec<String>,
}

impl Dataset {
    /// Reads and checks every input the model needs from `src`; `preprocess` converts integer
    /// arrays for float inputs.
    pub fn load(
        inputs: &[&InputSpec],
        src: &FeedSource,
        preprocess: Option<&Preprocess>,
    ) -> Result<Dataset> {
        let (found, files) = find_arrays(inputs, src)?;
        let mut d = if files.is_empty() {
            Dataset::from_arrays(inputs, found, preprocess)?
        } else {
            Dataset::from_files(inputs, found, files, preprocess)?
        };
        d.note_preprocessing();
        Ok(d)
    }

    fn from_arrays(
        specs: &[&InputSpec],
        found: Vec<Found>,
        pre: Option<&Preprocess>,
    ) -> Result<Dataset> {
        let mut inputs = Vec::with_capacity(specs.len());
        let mut tensors = Vec::with_capacity(specs.len());
        for (spec, f) in specs.iter().zip(found) {
            let Found::Array(tensor, source) = f else { unreachable!("no per-sample files") };
            let batched = check_array(spec, tensor.dtype(), tensor.shape(), &source, pre)?;
            inputs.push(Input { spec: (*spec).clone(), batched });
            tensors.push(tensor);
        }
        let samples = common_rows(&inputs, tensors.iter().map(|t| Some(t.shape())), "")?;
        let batched = inputs.iter().map(|a| a.batched).collect();
        Dataset::new(inputs, Box::new(Arrays { tensors, batched, samples }), pre)
    }

    fn from_files(
        specs: &[&InputSpec],
        found: Vec<Found>,
        listed: Vec<(PathBuf, Vec<Stored>)>,
        pre: Option<&Preprocess>,
    ) -> Result<Dataset> {
        let mut inputs: Vec<Input> = Vec::with_capacity(specs.len());
        let mut whole = Vec::with_capacity(specs.len());
        for (spec, f) in specs.iter().zip(found) {
            match f {
                Found::Array(t, source) => {
                    if check_array(spec, t.dtype(), t.shape(), &source, pre)? {
                        invalid_bail!(
                            "input '{}' comes from {source}, but the other inputs come from \
                             per-sample .npz files: put '{}' in those files too",
                            spec.name,
                            spec.name
                        );
                    }
                    inputs.push(Input { spec: (*spec).clone(), batched: false });
                    whole.push(Some(t));
                }
                Found::PerFile => {
                    let batched = spec.dims.as_ref().is_some_and(|d| !d.is_empty());
                    inputs.push(Input { spec: (*spec).clone(), batched });
                    whole.push(None);
                }
            }
        }
        let files = SampleFiles::new(&inputs, whole, listed, pre)?;
        Dataset::new(inputs, Box::new(files), pre)
    }

    /// A data set over `source` (its samples checked against `inputs` already).
    fn new(
        inputs: Vec<Input>,
        source: Box<dyn SampleSource>,
        pre: Option<&Preprocess>,
    ) -> Result<Dataset> {
        let fixed_batch = fixed_batch(&inputs)?;
        let fed: Vec<(DType, Vec<usize>)> = (0..inputs.len())
            .map(|i| {
                let (dtype, shape) = source.stored_form(i).expect("every input has a source");
                fed_form(pre, &inputs[i].spec, dtype, &shape)
            })
            .collect();
        let mask = find_mask(&inputs, &fed);
        Ok(Dataset {
            inputs,
            samples: source.len(),
            source,
            fixed_batch,
            mask,
            preprocess: pre.cloned(),
            notes: Vec::new(),
        })
    }

    /// Notes on what `--preprocess` does to each input.
    fn note_preprocessing(&mut self) {
        let Some(pre) = &self.preprocess else { return };
        let mut noted = false;
        for (i, input) in self.inputs.iter().enumerate() {
            let spec = &input.spec;
            let Some((dtype, shape)) = self.source.stored_form(i) else { continue };
            let whence = if self.source.per_sample(i) { " (per-sample files)" } else { "" };
            if let Some(c) = pre.plan(spec, dtype, shape.len()) {
                noted = true;
                self.notes.push(format!(
                    "--preprocess: input '{}'{whence}: {dtype} {shape:?} -> {} {:?} ({})",
                    spec.name,
                    c.dtype(),
                    c.shape(&shape),
                    c.describe(dtype)
                ));
            } else if spec.dtype.is_some_and(|d| d.is_float()) && dtype.is_float() {
                noted = true;
                self.notes.push(format!(
                    "--preprocess: input '{}'{whence} holds {dtype} data already; it is fed as \
                     it is",
                    spec.name
                ));
            }
        }
        if !noted {
            self.notes.push(
                "--preprocess: no integer array feeds a float input; nothing is converted".into(),
            );
        }
    }

    /// Notes for a person (what `--preprocess` does); the caller shows them or not.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Keeps the first `n` samples.
    pub fn limit(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            usage_bail!("--limit must be at least 1");
        }
        if n >= self.samples || !self.inputs.iter().any(|a| a.batched) {
            return Ok(());
        }
        if let Some(b) = self.fixed_batch {
            if !n.is_multiple_of(b) {
                usage_bail!("--limit {n}: the model's fixed batch is {b}; use a multiple of it");
            }
        }
        self.source.truncate(n)?;
        self.samples = n;
        Ok(())
    }

    /// The `*mask*` input padding is measured by, when there is one.
    pub fn mask_name(&self) -> Option<&str> {
        self.mask.map(|i| self.inputs[i].spec.name.as_str())
    }

    /// Whether input `i` (in feed order) has its samples along axis 0.
    pub fn batched(&self, i: usize) -> bool {
        self.inputs[i].batched
    }

    /// `(start, end)` sample ranges of at most `batch` rows, one per run; one range when nothing
    /// is batched. Per-sample files also end a range where their shapes change.
    pub fn ranges(&self, batch: usize) -> Vec<(usize, usize)> {
        self.source.ranges(batch.max(1))
    }

    /// Samples per run when every value a run computes is observed (calibration, per-layer
    /// comparison): the model's fixed batch; with `trim` and a `*mask*` input one row per run,
    /// cut to its real length; otherwise [`DEFAULT_BATCH`].
    pub fn observed_batch(&self, trim: bool) -> usize {
        // Rows batched together are padded to the longest, and the padded positions'
        // activations (which deployment never computes) would enter the statistics. Measured
        // on MiniLM, entropy ranges from padded batches of 32 gave a mean cosine to FP32 of
        // 0.896, row by row 0.960, at the same speed.
        match self.fixed_batch {
            Some(b) => b,
            None if trim && self.mask.is_some() => 1,
            None => DEFAULT_BATCH,
        }
    }

    /// Sample `row` in messages: `row 7`, or `sample 7 (DIR/s07.npz)` for per-sample files
    /// (with the row inside the file when it holds several).
    pub fn row_label(&self, row: usize) -> String {
        self.source.row_label(row)
    }

    /// Samples `start..end` in messages, with the per-sample files they come from.
    pub fn range_label(&self, start: usize, end: usize) -> String {
        self.source.range_label(start, end)
    }

    /// The feeds of one run over samples `start..end`: stored rows, converted by
    /// `--preprocess` where it applies; with `trim`, padding is cut ([`crate::trim`]).
    pub fn feeds(&mut self, start: usize, end: usize, trim: bool) -> Result<Vec<(String, Tensor)>> {
        let stored = self.source.rows(start, end)?;
        let mut fed = Vec::with_capacity(stored.len());
        for (a, t) in self.inputs.iter().zip(stored) {
            let conv = self.preprocess.as_ref().and_then(|p| p.plan(&a.spec, t.dtype(), t.rank()));
            fed.push(match conv {
                Some(c) => c.apply(&t, &format!("input '{}'", a.spec.name))?,
                None => t,
            });
        }
        if let (true, Some(m)) = (trim, self.mask) {
            trim_to_mask(&self.inputs, &mut fed, m)?;
        }
        Ok(self.inputs.iter().map(|a| a.spec.name.clone()).zip(fed).collect())
    }

    /// The first NaN or ±inf in the float `feeds` of the run starting at sample `start`, as an
    /// error naming the input and the sample. Inputs fed whole are checked on the `first` run
    /// only.
    pub fn check_finite(
        &self,
        feeds: &[(String, Tensor)],
        start: usize,
        first: bool,
    ) -> Result<()> {
        for (i, (name, t)) in feeds.iter().enumerate() {
            let batched = self.batched(i);
            if !t.dtype().is_float() || (!batched && !first) {
                continue;
            }
            let values = t.to_f64_vec()?;
            let Some(at) = values.iter().position(|v| !v.is_finite()) else { continue };
            let (sample, index) = if batched && t.shape()[0] > 0 {
                let per_row = (values.len() / t.shape()[0]).max(1);
                (Some(self.row_label(start + at / per_row)), at % per_row)
            } else {
                (None, at)
            };
            return Err(DataError::NonFinite {
                input: name.clone(),
                sample,
                value: values[at],
                index,
            });
        }
        Ok(())
    }
}
