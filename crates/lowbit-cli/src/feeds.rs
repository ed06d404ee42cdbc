//! Graph inputs from files: reading `--input NAME=FILE.npy` or `--data DIR`, checking them
//! against the model's declared inputs, and cutting them into the batches that runs are fed.
//!
//! Conventions (documented in the README):
//! - Samples lie along axis 0 of every input whose declared rank equals the file's rank. Such
//!   inputs are fed in batches: `--batch` rows at a time where the model's first dimension is
//!   free, and exactly that many rows where it is fixed (a model fixed at batch 1 gets each row
//!   as a `[1, ...]` slice). Inputs declared without a shape, and scalars, are fed whole to
//!   every run.
//! - `--data DIR` holds `<input-name>.npy` per graph input (names with characters outside
//!   `[A-Za-z0-9._-]` may also use the sanitized file name, as outputs do), or one or more
//!   `.npz` files holding arrays named after the inputs; `--data FILE.npz` works too. Other
//!   files in DIR are ignored.
//! - Trimming: when an integer or bool input named like `*mask*` has shape `[N, L]`, a run may
//!   cut every batched input whose axis 1 also has length `L` (and is free in the model) to the
//!   longest real length in the batch (last non-zero mask position + 1).

use crate::outputs::file_stem;
use crate::stack::{slice_rows, trim_axis1};
use crate::usage::usage_bail;
use anyhow::{bail, Context, Result};
use lowbit_engine::session::Dim;
use lowbit_engine::InputSpec;
use lowbit_tensor::{npy, DType, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where the input arrays come from.
pub enum FeedSource {
    /// `--input NAME=FILE` pairs.
    Files(Vec<(String, PathBuf)>),
    /// `--data DIR` (or a `.npz` file).
    Data(PathBuf),
}

impl FeedSource {
    /// Validates `--input` / `--data` as given on the command line.
    pub fn from_args(inputs: &[String], data: Option<&Path>) -> Result<FeedSource> {
        if let Some(d) = data {
            return Ok(FeedSource::Data(d.to_path_buf()));
        }
        let mut pairs = Vec::new();
        for spec in inputs {
            let Some((name, file)) = spec.split_once('=') else {
                usage_bail!("--input '{spec}': expected NAME=FILE.npy");
            };
            if name.is_empty() || file.is_empty() {
                usage_bail!("--input '{spec}': expected NAME=FILE.npy");
            }
            if pairs.iter().any(|(n, _)| n == name) {
                usage_bail!("--input '{name}' is given twice");
            }
            pairs.push((name.to_string(), PathBuf::from(file)));
        }
        Ok(FeedSource::Files(pairs))
    }
}

/// One graph input's array.
pub struct InputArray {
    pub spec: InputSpec,
    pub tensor: Tensor,
    /// Samples lie along axis 0.
    pub batched: bool,
}

/// All graph inputs, checked against the model and ready to be cut into batches.
pub struct Dataset {
    pub arrays: Vec<InputArray>,
    /// Rows along axis 0 of the batched inputs (1 when nothing is batched).
    pub samples: usize,
    /// The model's fixed first dimension, when a batched input declares one.
    pub fixed_batch: Option<usize>,
    /// Index of the `*mask*` input used for trimming.
    mask: Option<usize>,
}

/// Reads input `name` from a `.npy` file (the tensor crate's errors name the file).
fn read_array(path: &Path, name: &str) -> Result<Tensor> {
    npy::read_npy(path).with_context(|| format!("cannot read input '{name}'"))
}

/// Reads the arrays for `inputs` from `src`, keyed by input name, with their file labels.
fn read_sources(inputs: &[&InputSpec], src: &FeedSource) -> Result<Vec<(Tensor, String)>> {
    match src {
        FeedSource::Files(pairs) => {
            let known: Vec<&str> = inputs.iter().map(|s| s.name.as_str()).collect();
            for (name, file) in pairs {
                if !known.contains(&name.as_str()) {
                    bail!(
                        "unknown input '{name}' (--input {name}={}): the model's inputs are {}",
                        file.display(),
                        known.join(", ")
                    );
                }
            }
            inputs
                .iter()
                .map(|spec| {
                    let Some((_, file)) = pairs.iter().find(|(n, _)| *n == spec.name) else {
                        bail!(
                            "missing input '{}': the model needs {} {}; pass --input {}=FILE.npy",
                            spec.name,
                            spec.dtype.map_or("a tensor".into(), |d| d.to_string()),
                            spec.shape_text(),
                            spec.name
                        );
                    };
                    Ok((read_array(file, &spec.name)?, file.display().to_string()))
                })
                .collect()
        }
        FeedSource::Data(path) => {
            let meta = std::fs::metadata(path)
                .with_context(|| format!("cannot read the data folder {}", path.display()))?;
            let is_npz = |p: &Path| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("npz"));
            let npz_files: Vec<PathBuf> = if meta.is_file() {
                if !is_npz(path) {
                    bail!("--data {}: expected a folder or a .npz file", path.display());
                }
                vec![path.clone()]
            } else {
                let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                    .with_context(|| format!("cannot list {}", path.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file() && is_npz(p))
                    .collect();
                v.sort();
                v
            };
            let mut npz: HashMap<String, (Tensor, String)> = HashMap::new();
            let mut read_npz = false;
            let mut out = Vec::new();
            for spec in inputs {
                if meta.is_dir() {
                    let candidates =
                        [format!("{}.npy", spec.name), format!("{}.npy", file_stem(&spec.name))];
                    if let Some(p) = candidates.iter().map(|c| path.join(c)).find(|p| p.is_file()) {
                        out.push((read_array(&p, &spec.name)?, p.display().to_string()));
                        continue;
                    }
                }
                if !read_npz {
                    read_npz = true;
                    for f in &npz_files {
                        let arrays =
                            npy::read_npz(f).context("cannot read the inputs' .npz file")?;
                        for (name, t) in arrays {
                            let label = format!("{}:{name}", f.display());
                            npz.entry(name).or_insert((t, label));
                        }
                    }
                }
                match npz.remove(&spec.name) {
                    Some(found) => out.push(found),
                    None => bail!(
                        "missing input '{}': the model needs {} {}; {} has no {}.npy{}",
                        spec.name,
                        spec.dtype.map_or("a tensor".into(), |d| d.to_string()),
                        spec.shape_text(),
                        path.display(),
                        spec.name,
                        if npz_files.is_empty() {
                            String::new()
                        } else {
                            format!(" and no .npz there holds an array '{}'", spec.name)
                        }
                    ),
                }
            }
            Ok(out)
        }
    }
}

/// Checks `t` against the declared input; returns whether its samples lie along axis 0.
fn check_array(spec: &InputSpec, t: &Tensor, source: &str) -> Result<bool> {
    let expected = || {
        format!("{} {}", spec.dtype.map_or("a tensor".into(), |d| d.to_string()), spec.shape_text())
    };
    if let Some(dt) = spec.dtype {
        if dt != t.dtype() {
            bail!(
                "input '{}' ({source}): the model expects {}, the file holds {} {:?}{}",
                spec.name,
                expected(),
                t.dtype(),
                t.shape(),
                if dt.is_float() == t.dtype().is_float() {
                    format!(" (convert it, e.g. numpy's .astype('{}'))", numpy_name(dt))
                } else {
                    String::new()
                }
            );
        }
    }
    let Some(dims) = &spec.dims else { return Ok(false) };
    if dims.is_empty() {
        if t.rank() != 0 {
            bail!(
                "input '{}' ({source}): the model expects a scalar {}, the file holds shape {:?}",
                spec.name,
                expected(),
                t.shape()
            );
        }
        return Ok(false);
    }
    let shape = t.shape();
    let mismatch = shape.len() != dims.len()
        || dims[1..].iter().zip(&shape[1..]).any(|(d, &n)| matches!(d, Dim::Fixed(f) if *f != n));
    if mismatch {
        bail!(
            "input '{}' ({source}): the model expects {} with samples along axis 0, the file \
             holds shape {:?}",
            spec.name,
            expected(),
            shape
        );
    }
    if shape[0] == 0 {
        bail!("input '{}' ({source}): the file holds no samples (shape {shape:?})", spec.name);
    }
    if let Dim::Fixed(b) = dims[0] {
        if b == 0 || !shape[0].is_multiple_of(b) {
            bail!(
                "input '{}' ({source}): the model's first dimension is fixed at {b}, but the \
                 file holds {} rows, not a multiple of {b}",
                spec.name,
                shape[0]
            );
        }
    }
    Ok(true)
}

fn numpy_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F64 => "float64",
        DType::F16 => "float16",
        DType::I64 => "int64",
        DType::I32 => "int32",
        DType::I16 => "int16",
        DType::I8 => "int8",
        DType::U64 => "uint64",
        DType::U32 => "uint32",
        DType::U16 => "uint16",
        DType::U8 => "uint8",
        DType::Bool => "bool",
        other => other.name(),
    }
}

impl Dataset {
    /// Reads and checks every input the model needs.
    pub fn load(inputs: &[&InputSpec], src: &FeedSource) -> Result<Dataset> {
        let arrays_raw = read_sources(inputs, src)?;
        let mut arrays = Vec::with_capacity(inputs.len());
        for (spec, (tensor, source)) in inputs.iter().zip(arrays_raw) {
            let batched = check_array(spec, &tensor, &source)?;
            arrays.push(InputArray { spec: (*spec).clone(), tensor, batched });
        }
        let mut samples: Option<(usize, &str)> = None;
        let mut fixed_batch: Option<(usize, &str)> = None;
        for a in arrays.iter().filter(|a| a.batched) {
            let rows = a.tensor.shape()[0];
            match samples {
                Some((n, other)) if n != rows => bail!(
                    "inputs disagree on the number of samples (axis 0): '{other}' has {n}, '{}' \
                     has {rows}",
                    a.spec.name
                ),
                _ => samples = Some((rows, &a.spec.name)),
            }
            if let Some(Dim::Fixed(b)) = a.spec.dims.as_ref().and_then(|d| d.first()) {
                match fixed_batch {
                    Some((fb, other)) if fb != *b => bail!(
                        "the model fixes the first dimension of '{other}' at {fb} and of '{}' \
                         at {b}: lowbit cannot batch it",
                        a.spec.name
                    ),
                    _ => fixed_batch = Some((*b, &a.spec.name)),
                }
            }
        }
        let samples = samples.map_or(1, |(n, _)| n);
        let fixed_batch = fixed_batch.map(|(b, _)| b);
        let mask = arrays.iter().position(|a| {
            a.batched
                && a.tensor.rank() == 2
                && a.spec.name.to_ascii_lowercase().contains("mask")
                && (a.tensor.dtype().is_integer() || a.tensor.dtype() == DType::Bool)
        });
        Ok(Dataset { arrays, samples, fixed_batch, mask })
    }

    /// Keeps the first `n` samples.
    pub fn limit(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            usage_bail!("--limit must be at least 1");
        }
        if n >= self.samples || !self.arrays.iter().any(|a| a.batched) {
            return Ok(());
        }
        if let Some(b) = self.fixed_batch {
            if !n.is_multiple_of(b) {
                usage_bail!("--limit {n}: the model's fixed batch is {b}; use a multiple of it");
            }
        }
        for a in self.arrays.iter_mut().filter(|a| a.batched) {
            a.tensor = slice_rows(&a.tensor, 0, n)?;
        }
        self.samples = n;
        Ok(())
    }

    /// Whether [`Dataset::feeds`] can trim padding (a `*mask*` input exists).
    pub fn mask_name(&self) -> Option<&str> {
        self.mask.map(|i| self.arrays[i].spec.name.as_str())
    }

    /// `(start, end)` sample ranges of `batch` rows (the last may be shorter); one range when
    /// nothing is batched.
    pub fn ranges(&self, batch: usize) -> Vec<(usize, usize)> {
        let batch = batch.max(1);
        (0..self.samples).step_by(batch).map(|s| (s, (s + batch).min(self.samples))).collect()
    }

    /// The real length of rows `start..end`: last non-zero mask position + 1, at least 1.
    fn real_length(&self, start: usize, end: usize) -> Result<Option<usize>> {
        let Some(m) = self.mask else { return Ok(None) };
        let mask = slice_rows(&self.arrays[m].tensor, start, end)?;
        let width = mask.shape()[1];
        let vals = mask.to_f64_vec()?;
        let len = vals
            .chunks(width.max(1))
            .map(|row| row.iter().rposition(|&v| v != 0.0).map_or(0, |p| p + 1))
            .max()
            .unwrap_or(0);
        Ok(Some(len.max(1).min(width)))
    }

    /// The feeds of one run over samples `start..end`; with `trim`, padding is cut (see the
    /// module docs).
    pub fn feeds(&self, start: usize, end: usize, trim: bool) -> Result<Vec<(String, Tensor)>> {
        let cut = if trim { self.real_length(start, end)? } else { None };
        let width = self.mask.map(|m| self.arrays[m].tensor.shape()[1]);
        self.arrays
            .iter()
            .map(|a| {
                if !a.batched {
                    return Ok((a.spec.name.clone(), a.tensor.clone()));
                }
                let mut t = slice_rows(&a.tensor, start, end)?;
                if let (Some(len), Some(w)) = (cut, width) {
                    let axis1_free = a
                        .spec
                        .dims
                        .as_ref()
                        .and_then(|d| d.get(1))
                        .is_some_and(|d| !matches!(d, Dim::Fixed(_)));
                    if t.rank() >= 2 && t.shape()[1] == w && axis1_free {
                        t = trim_axis1(&t, len)?;
                    }
                }
                Ok((a.spec.name.clone(), t))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: DType, dims: Vec<Dim>) -> InputSpec {
        InputSpec { name: name.into(), dtype: Some(dtype), dims: Some(dims) }
    }

    fn dataset(arrays: Vec<(InputSpec, Tensor)>) -> Result<Dataset> {
        let dir = std::env::temp_dir().join(format!(
            "lowbit-feeds-{}-{}",
            std::process::id(),
            arrays[0].0.name
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for (s, t) in &arrays {
            npy::write_npy(&dir.join(format!("{}.npy", s.name)), t).unwrap();
        }
        let specs: Vec<&InputSpec> = arrays.iter().map(|(s, _)| s).collect();
        let d = Dataset::load(&specs, &FeedSource::Data(dir.clone()));
        std::fs::remove_dir_all(&dir).unwrap();
        d
    }

    #[test]
    fn mask_trims_each_batch_to_its_longest_row() {
        let ids = Tensor::from_vec(vec![2, 4], vec![101i64, 7, 102, 0, 101, 102, 0, 0]).unwrap();
        let mask = Tensor::from_vec(vec![2, 4], vec![1i64, 1, 1, 0, 1, 1, 0, 0]).unwrap();
        let free = || vec![Dim::Symbolic("batch".into()), Dim::Symbolic("seq".into())];
        let d = dataset(vec![
            (spec("input_ids", DType::I64, free()), ids),
            (spec("attention_mask", DType::I64, free()), mask),
        ])
        .unwrap();
        assert_eq!(d.mask_name(), Some("attention_mask"));
        let f = d.feeds(1, 2, true).unwrap();
        assert_eq!(f[0].1, Tensor::from_vec(vec![1, 2], vec![101i64, 102]).unwrap());
        let f = d.feeds(0, 2, true).unwrap();
        assert_eq!(f[1].1.shape(), &[2, 3]);
        assert_eq!(d.feeds(0, 1, false).unwrap()[0].1.shape(), &[1, 4]);
    }

    #[test]
    fn fixed_batch_one_feeds_row_by_row() {
        let x = Tensor::from_vec(vec![3, 2], vec![0f32; 6]).unwrap();
        let d =
            dataset(vec![(spec("x", DType::F32, vec![Dim::Fixed(1), Dim::Fixed(2)]), x)]).unwrap();
        assert_eq!((d.samples, d.fixed_batch), (3, Some(1)));
        assert_eq!(d.ranges(1), vec![(0, 1), (1, 2), (2, 3)]);
        assert_eq!(d.feeds(2, 3, false).unwrap()[0].1.shape(), &[1, 2]);
    }

    #[test]
    fn wrong_dtype_and_shape_name_the_input_and_file() {
        let x = Tensor::from_vec(vec![3, 2], vec![0f64; 6]).unwrap();
        let e = dataset(vec![(spec("x", DType::F32, vec![Dim::Unknown, Dim::Fixed(2)]), x)])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("'x'") && e.contains("x.npy") && e.contains("float64"), "{e}");
        let x = Tensor::from_vec(vec![3, 5], vec![0f32; 15]).unwrap();
        let e = dataset(vec![(spec("x", DType::F32, vec![Dim::Unknown, Dim::Fixed(2)]), x)])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("[3, 5]") && e.contains("[?, 2]"), "{e}");
    }
}
