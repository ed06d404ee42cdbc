//! Collecting a model's outputs over many runs and writing them as `.npy` files.
//!
//! File names: each output is written as `<name>.npy` where every character of the ONNX name
//! outside `[A-Za-z0-9._-]` becomes `_` (`onnx::Shape_422` → `onnx__Shape_422.npy`), a leading
//! `.` gets a `_` in front, and a name that clashes with an earlier one (case-insensitively)
//! gets `_2`, `_3`, …. `outputs.json` beside them maps every ONNX name to its file.
//!
//! Joining runs: when every run's output has the run's sample count as its first dimension, the
//! runs are concatenated along axis 0 (zero-padding trailing axes that differ, which only
//! happens with `--trim-padding`); otherwise a single run's output is written as it is, and
//! several runs' outputs are stacked along a new axis 0.

use crate::error::{DataError, Result};
use crate::rows::{concat_rows, stack_new_axis};
use lowbit_tensor::{npy, Tensor};
use serde::Serialize;
use std::collections::HashSet;
use std::path::Path;

/// The file stem for an ONNX value name (see the module docs).
pub fn file_stem(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("_{s}")
    } else {
        s
    }
}

/// Distinct file names (`<stem>.npy`) for `names`, in order.
pub fn file_names(names: &[&str]) -> Vec<String> {
    let mut taken = HashSet::new();
    names
        .iter()
        .map(|n| {
            let stem = file_stem(n);
            let mut candidate = stem.clone();
            let mut k = 1;
            while !taken.insert(candidate.to_ascii_lowercase()) {
                k += 1;
                candidate = format!("{stem}_{k}");
            }
            format!("{candidate}.npy")
        })
        .collect()
}

/// Per-output results of every run, with each run's sample count.
pub struct Collector {
    names: Vec<String>,
    parts: Vec<Vec<Tensor>>,
    rows: Vec<usize>,
}

/// One written output, as listed in `outputs.json`.
#[derive(Serialize)]
pub struct Written {
    pub name: String,
    pub file: String,
    pub dtype: String,
    pub shape: Vec<usize>,
}

impl Collector {
    pub fn new(names: Vec<String>) -> Collector {
        let parts = names.iter().map(|_| Vec::new()).collect();
        Collector { names, parts, rows: Vec::new() }
    }

    /// Adds one run's outputs (in graph order) over `rows` samples.
    pub fn push(&mut self, rows: usize, outputs: Vec<(String, Tensor)>) {
        self.rows.push(rows);
        for (slot, (_, t)) in self.parts.iter_mut().zip(outputs) {
            slot.push(t);
        }
    }

    fn join(rows: &[usize], parts: Vec<Tensor>) -> Result<Tensor> {
        let per_sample = parts.iter().zip(rows).all(|(t, &r)| t.rank() >= 1 && t.shape()[0] == r);
        if per_sample {
            concat_rows(parts)
        } else if parts.len() == 1 {
            Ok(parts.into_iter().next().expect("one part"))
        } else {
            stack_new_axis(parts)
        }
    }

    /// Writes every output and `outputs.json` into `dir` (created if needed), atomically.
    pub fn write(self, dir: &Path) -> Result<Vec<Written>> {
        std::fs::create_dir_all(dir).map_err(|source| DataError::Io {
            what: format!("cannot create the output folder {}", dir.display()),
            source,
        })?;
        let name_refs: Vec<&str> = self.names.iter().map(String::as_str).collect();
        let files = file_names(&name_refs);
        let mut written = Vec::new();
        for ((name, parts), file) in self.names.iter().zip(self.parts).zip(files) {
            let t = Self::join(&self.rows, parts).map_err(|e| {
                DataError::Invalid(format!("output '{name}': cannot join the runs' results: {e}"))
            })?;
            let path = dir.join(&file);
            npy::write_npy(&path, &t)
                .map_err(|source| DataError::File { what: format!("output '{name}'"), source })?;
            written.push(Written {
                name: name.clone(),
                file,
                dtype: t.dtype().to_string(),
                shape: t.shape().to_vec(),
            });
        }
        let manifest = serde_json::json!({ "outputs": &written });
        let text = serde_json::to_string_pretty(&manifest)
            .map_err(|source| DataError::Json { what: "outputs.json".into(), source })?
            + "\n";
        npy::write_atomic(&dir.join("outputs.json"), text.as_bytes())?;
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_separators_become_safe_file_names() {
        assert_eq!(file_stem("onnx::Shape_422"), "onnx__Shape_422");
        assert_eq!(file_stem("encoder/layer.0/out:0"), "encoder_layer.0_out_0");
        assert_eq!(file_stem(".."), "_..");
        assert_eq!(file_stem(""), "_");
        assert_eq!(file_names(&["a/b", "a:b", "A_b"]), vec!["a_b.npy", "a_b_2.npy", "A_b_3.npy"]);
    }

    #[test]
    fn runs_are_concatenated_when_outputs_are_per_sample() {
        let mut c = Collector::new(vec!["y".into()]);
        for r in 0..3 {
            c.push(1, vec![("y".into(), Tensor::from_vec(vec![1, 2], vec![r as f32; 2]).unwrap())]);
        }
        let joined = Collector::join(&c.rows, c.parts.remove(0)).unwrap();
        assert_eq!(joined.shape(), &[3, 2]);
    }
}
