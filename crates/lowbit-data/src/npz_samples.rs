//! Per-sample `.npz` files: every file holds every input that has no `.npy`, one sample or
//! several along axis 0 (an array without the batch axis is one sample). The files' samples are
//! taken in order as if concatenated, but a batch ends where the arrays' shapes beyond axis 0
//! (or their types) change, so files of different lengths run as they are while consecutive
//! files of equal shapes are batched together exactly as one array would be. Only the headers
//! are read up front; each file is read when its samples' turn comes, so memory does not grow
//! with the number of files. Inputs fed whole may come from `.npy` files; when the files hold
//! one, a batch never spans two files.

use crate::check::{check_array, common_rows, lacks_batch_axis};
use crate::dataset::{Input, SampleSource};
use crate::error::{invalid_bail, DataError, Result};
use crate::folder::Stored;
use crate::preprocess::Preprocess;
use crate::rows::{concat_rows, slice_rows};
use lowbit_tensor::{npy, DType, Tensor};
use std::path::PathBuf;

/// One per-sample `.npz` file, as its headers describe it.
struct SampleFile {
    path: PathBuf,
    /// Index of its first sample among all files' samples.
    start: usize,
    rows: usize,
    /// Per input the files hold: element type and shape, batch axis included.
    arrays: Vec<Stored>,
}

fn stored_shape(s: &Stored) -> Option<&[usize]> {
    s.as_ref().map(|(_, shape)| shape.as_slice())
}

impl SampleFile {
    /// What must agree for two files' samples to share a batch: types and shapes beyond
    /// axis 0.
    fn key(&self) -> Vec<Option<(DType, &[usize])>> {
        self.arrays.iter().map(|a| a.as_ref().map(|(d, s)| (*d, &s[1..]))).collect()
    }
}

/// Per-sample `.npz` files, read when their samples are fed.
pub(crate) struct SampleFiles {
    files: Vec<SampleFile>,
    /// Per input: its name and whether its samples lie along axis 0.
    inputs: Vec<(String, bool)>,
    /// Per input: the array fed whole to every run when it comes from a `.npy` file (`None` for
    /// the inputs the files hold).
    whole: Vec<Option<Tensor>>,
    /// Batches never span files (the files hold an input that is fed whole).
    split: bool,
    /// Samples kept (all the files', or fewer after `truncate`).
    samples: usize,
    /// The last file read: its index and its arrays per input (`None` for `whole` inputs).
    cache: Option<(usize, Vec<Option<Tensor>>)>,
}

impl SampleFiles {
    /// Checks every file's arrays (`listed`, from the headers) against `inputs`; `whole` holds
    /// the arrays that came from `.npy` files instead.
    pub(crate) fn new(
        inputs: &[Input],
        whole: Vec<Option<Tensor>>,
        listed: Vec<(PathBuf, Vec<Stored>)>,
        pre: Option<&Preprocess>,
    ) -> Result<SampleFiles> {
        let split = inputs.iter().zip(&whole).any(|(a, w)| w.is_none() && !a.batched);
        let mut files = Vec::with_capacity(listed.len());
        let mut start = 0;
        for (path, stored) in listed {
            let mut shapes = Vec::with_capacity(stored.len());
            for (a, s) in inputs.iter().zip(stored) {
                let Some((dtype, mut shape)) = s else {
                    shapes.push(None);
                    continue;
                };
                if lacks_batch_axis(&a.spec, dtype, shape.len(), pre) {
                    shape.insert(0, 1);
                }
                let source = format!("{}:{}", path.display(), a.spec.name);
                check_array(&a.spec, dtype, &shape, &source, pre)?;
                shapes.push(Some((dtype, shape)));
            }
            let place = format!("{}: ", path.display());
            let rows = common_rows(inputs, shapes.iter().map(stored_shape), &place)?;
            files.push(SampleFile { path, start, rows, arrays: shapes });
            start += rows;
        }
        let inputs = inputs.iter().map(|a| (a.spec.name.clone(), a.batched)).collect();
        Ok(SampleFiles { files, inputs, whole, split, samples: start, cache: None })
    }

    /// The per-sample file holding sample `row`.
    fn file_of(&self, row: usize) -> usize {
        self.files.partition_point(|x| x.start <= row).saturating_sub(1)
    }

    /// The arrays of file `k` per input (`None` for inputs fed whole from `.npy`), read once
    /// and kept until another file is read.
    fn read(&mut self, k: usize) -> Result<&[Option<Tensor>]> {
        if self.cache.as_ref().is_none_or(|(c, _)| *c != k) {
            self.cache = None;
            let file = &self.files[k];
            let mut arrays = npy::read_npz(&file.path).map_err(|source| DataError::File {
                what: "cannot read a sample file".into(),
                source,
            })?;
            let mut out = Vec::with_capacity(self.inputs.len());
            for ((name, _), listed) in self.inputs.iter().zip(&file.arrays) {
                let Some((dtype, shape)) = listed else {
                    out.push(None);
                    continue;
                };
                let Some(i) = arrays.iter().position(|(n, _)| n == name) else {
                    invalid_bail!("{}: no array '{name}' any more", file.path.display());
                };
                let (_, t) = arrays.swap_remove(i);
                if t.dtype() != *dtype || t.len() != shape.iter().product::<usize>() {
                    invalid_bail!(
                        "{}:{name}: changed while being read ({} {:?}, was {dtype} {shape:?})",
                        file.path.display(),
                        t.dtype(),
                        t.shape()
                    );
                }
                out.push(Some(t.reshape(shape.clone())?));
            }
            self.cache = Some((k, out));
        }
        Ok(&self.cache.as_ref().expect("filled above").1)
    }
}

impl SampleSource for SampleFiles {
    fn len(&self) -> usize {
        self.samples
    }

    fn stored_form(&self, i: usize) -> Option<(DType, Vec<usize>)> {
        match (&self.files.first()?.arrays[i], &self.whole[i]) {
            (Some((d, s)), _) => Some((*d, s.clone())),
            (None, Some(t)) => Some((t.dtype(), t.shape().to_vec())),
            (None, None) => None,
        }
    }

    fn per_sample(&self, i: usize) -> bool {
        self.whole[i].is_none()
    }

    fn ranges(&self, batch: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut open: Option<usize> = None;
        let mut key = None;
        let mut end = 0;
        for file in &self.files {
            if file.start >= self.samples {
                break;
            }
            end = (file.start + file.rows).min(self.samples);
            let k = file.key();
            if let Some(s) = open {
                if self.split || key.as_ref() != Some(&k) {
                    out.push((s, file.start));
                    open = None;
                }
            }
            key = Some(k);
            let mut pos = file.start;
            while pos < end {
                let s = open.unwrap_or(pos);
                let e = (s + batch).min(end);
                if e - s == batch {
                    out.push((s, e));
                    open = None;
                } else {
                    open = Some(s);
                }
                pos = e;
            }
        }
        if let Some(s) = open {
            out.push((s, end));
        }
        out
    }

    fn row_label(&self, row: usize) -> String {
        let file = &self.files[self.file_of(row)];
        if file.rows == 1 {
            format!("sample {row} ({})", file.path.display())
        } else {
            format!("sample {row} ({}, row {})", file.path.display(), row - file.start)
        }
    }

    fn range_label(&self, start: usize, end: usize) -> String {
        let (a, b) = (self.file_of(start), self.file_of(end.max(1) - 1));
        if a == b {
            format!("samples {start}..{end} ({})", self.files[a].path.display())
        } else {
            format!(
                "samples {start}..{end} ({} to {})",
                self.files[a].path.display(),
                self.files[b].path.display()
            )
        }
    }

    fn rows(&mut self, start: usize, end: usize) -> Result<Vec<Tensor>> {
        let mut parts: Vec<Vec<Tensor>> = vec![Vec::new(); self.inputs.len()];
        let mut k = self.file_of(start);
        while k < self.files.len() && self.files[k].start < end {
            let (first, rows) = (self.files[k].start, self.files[k].rows);
            let s = start.max(first) - first;
            let e = end.min(first + rows) - first;
            let batched: Vec<bool> = self.inputs.iter().map(|(_, b)| *b).collect();
            let arrays = self.read(k)?;
            for (i, (batched, t)) in batched.into_iter().zip(arrays).enumerate() {
                let Some(t) = t else { continue };
                if !batched {
                    if parts[i].is_empty() {
                        parts[i].push(t.clone());
                    }
                } else {
                    parts[i].push(slice_rows(t, s, e)?);
                }
            }
            k += 1;
        }
        parts
            .into_iter()
            .enumerate()
            .map(|(i, p)| match &self.whole[i] {
                Some(t) => Ok(t.clone()),
                None if p.len() == 1 => Ok(p.into_iter().next().expect("one part")),
                None => concat_rows(p),
            })
            .collect()
    }

    fn truncate(&mut self, n: usize) -> Result<()> {
        let keep = self.files.iter().take_while(|x| x.start < n).count();
        self.files.truncate(keep);
        self.samples = n;
        Ok(())
    }
}
