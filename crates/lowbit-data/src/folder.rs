//! Finding each input's arrays: `--input NAME=FILE.npy` pairs, or a `--data` folder holding
//! `<input-name>.npy` per graph input (names with characters outside `[A-Za-z0-9._-]` may also
//! use the sanitized file name, as outputs do) and `.npz` files for the inputs without one, or
//! a single `.npz` file. Other files in the folder are ignored.
//!
//! The `.npz` files (in sorted name order) are one data set when no input is held by more than
//! one of them (one file with every input, or inputs spread over files); when some input is
//! held by two or more, they are per-sample files ([`crate::npz_samples`]), and only their
//! headers are read here.

use crate::check::needs;
use crate::error::{invalid_bail, DataError, Result};
use crate::outputs::file_stem;
use lowbit_tensor::{npy, DType, InputSpec, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where the input arrays come from.
#[derive(Clone, Debug)]
pub enum FeedSource {
    /// `--input NAME=FILE` pairs.
    Files(Vec<(String, PathBuf)>),
    /// `--data DIR` (or a `.npz` file).
    Data(PathBuf),
}

impl From<&Path> for FeedSource {
    /// A `--data` folder or `.npz` file.
    fn from(path: &Path) -> FeedSource {
        FeedSource::Data(path.to_path_buf())
    }
}

/// Where one input's data was found.
pub(crate) enum Found {
    /// A whole array and its file label.
    Array(Tensor, String),
    /// In every per-sample `.npz` file.
    PerFile,
}

/// One input's array in a per-sample file: element type and shape (`None` for inputs the
/// files do not hold).
pub(crate) type Stored = Option<(DType, Vec<usize>)>;

/// What [`find_arrays`] found: per input, its array or a mark that the per-sample files hold
/// it; and those files with, per input they hold, the element type and stored shape.
pub(crate) type Sources = (Vec<Found>, Vec<(PathBuf, Vec<Stored>)>);

/// Reads input `name` from a `.npy` file (the tensor crate's errors name the file).
fn read_array(path: &Path, name: &str) -> Result<Tensor> {
    npy::read_npy(path)
        .map_err(|source| DataError::File { what: format!("cannot read input '{name}'"), source })
}

/// Reads the arrays for `inputs` from `src` (see the module docs for the layouts).
pub(crate) fn find_arrays(inputs: &[&InputSpec], src: &FeedSource) -> Result<Sources> {
    match src {
        FeedSource::Files(pairs) => from_pairs(inputs, pairs),
        FeedSource::Data(path) => from_data(inputs, path),
    }
}

fn from_pairs(inputs: &[&InputSpec], pairs: &[(String, PathBuf)]) -> Result<Sources> {
    let known: Vec<&str> = inputs.iter().map(|s| s.name.as_str()).collect();
    for (name, file) in pairs {
        if !known.contains(&name.as_str()) {
            invalid_bail!(
                "unknown input '{name}' (--input {name}={}): the model's inputs are {}",
                file.display(),
                known.join(", ")
            );
        }
    }
    let found = inputs
        .iter()
        .map(|spec| {
            let Some((_, file)) = pairs.iter().find(|(n, _)| *n == spec.name) else {
                return Err(DataError::MissingInput {
                    input: spec.name.clone(),
                    needs: needs(spec),
                    hint: format!("pass --input {}=FILE.npy", spec.name),
                });
            };
            Ok(Found::Array(read_array(file, &spec.name)?, file.display().to_string()))
        })
        .collect::<Result<_>>()?;
    Ok((found, Vec::new()))
}

fn from_data(inputs: &[&InputSpec], path: &Path) -> Result<Sources> {
    let io = |what: String| move |source| DataError::Io { what, source };
    let meta = std::fs::metadata(path)
        .map_err(io(format!("cannot read the data folder {}", path.display())))?;
    let is_npz = |p: &Path| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("npz"));
    let npz_files: Vec<PathBuf> = if meta.is_file() {
        if !is_npz(path) {
            invalid_bail!("--data {}: expected a folder or a .npz file", path.display());
        }
        vec![path.to_path_buf()]
    } else {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io(format!("cannot list {}", path.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_npz(p))
            .collect();
        v.sort();
        v
    };
    let mut found: Vec<Option<Found>> = Vec::with_capacity(inputs.len());
    for spec in inputs {
        let mut hit = None;
        if meta.is_dir() {
            let candidates =
                [format!("{}.npy", spec.name), format!("{}.npy", file_stem(&spec.name))];
            if let Some(p) = candidates.iter().map(|c| path.join(c)).find(|p| p.is_file()) {
                let label = p.display().to_string();
                hit = Some(Found::Array(read_array(&p, &spec.name)?, label));
            }
        }
        found.push(hit);
    }
    if found.iter().all(Option::is_some) {
        return Ok((found.into_iter().flatten().collect(), Vec::new()));
    }
    // Which .npz files hold which of the remaining inputs (names only).
    let members: Vec<Vec<String>> =
        npz_files.iter().map(|f| npy::npz_names(f)).collect::<std::result::Result<_, _>>()?;
    let holders = |name: &str| members.iter().filter(|m| m.iter().any(|n| n == name)).count();
    let per_file =
        inputs.iter().zip(&found).any(|(spec, f)| f.is_none() && holders(&spec.name) >= 2);
    if per_file {
        return per_sample_headers(inputs, found, &npz_files);
    }
    // One data set: each remaining input from the one file that holds it.
    let mut read: HashMap<usize, Vec<(String, Tensor)>> = HashMap::new();
    let mut out = Vec::with_capacity(inputs.len());
    for (spec, hit) in inputs.iter().zip(found) {
        if let Some(h) = hit {
            out.push(h);
            continue;
        }
        let Some(k) = members.iter().position(|m| m.contains(&spec.name)) else {
            return Err(DataError::MissingInput {
                input: spec.name.clone(),
                needs: needs(spec),
                hint: format!(
                    "{} has no {}.npy{}",
                    path.display(),
                    spec.name,
                    if npz_files.is_empty() {
                        String::new()
                    } else {
                        format!(" and no .npz there holds an array '{}'", spec.name)
                    }
                ),
            });
        };
        if let std::collections::hash_map::Entry::Vacant(e) = read.entry(k) {
            let arrays = npy::read_npz(&npz_files[k]).map_err(|source| DataError::File {
                what: "cannot read the inputs' .npz file".into(),
                source,
            })?;
            e.insert(arrays);
        }
        let arrays = read.get_mut(&k).expect("read above");
        let Some(i) = arrays.iter().position(|(n, _)| *n == spec.name) else {
            invalid_bail!("{}: no array '{}' any more", npz_files[k].display(), spec.name);
        };
        let (name, t) = arrays.swap_remove(i);
        out.push(Found::Array(t, format!("{}:{name}", npz_files[k].display())));
    }
    Ok((out, Vec::new()))
}

/// The headers of every per-sample file's arrays for the inputs not `found` in `.npy` files;
/// a file missing one is an error naming the file and the input.
fn per_sample_headers(
    inputs: &[&InputSpec],
    found: Vec<Option<Found>>,
    npz_files: &[PathBuf],
) -> Result<Sources> {
    let wanted: Vec<Option<&str>> = inputs
        .iter()
        .zip(&found)
        .map(|(spec, hit)| hit.is_none().then_some(spec.name.as_str()))
        .collect();
    let names: Vec<&str> = wanted.iter().flatten().copied().collect();
    let mut files = Vec::with_capacity(npz_files.len());
    for f in npz_files {
        let mut headers = npy::npz_headers(f, &names)?.into_iter();
        let mut arrays: Vec<Stored> = Vec::with_capacity(inputs.len());
        for (i, w) in wanted.iter().enumerate() {
            if w.is_none() {
                arrays.push(None);
                continue;
            }
            let Some(header) = headers.next().flatten() else {
                invalid_bail!(
                    "{}: no array '{}' for input '{}' ({}); with several .npz files holding the \
                     same inputs, each file holds samples and must hold every input",
                    f.display(),
                    inputs[i].name,
                    inputs[i].name,
                    needs(inputs[i])
                );
            };
            arrays.push(Some(header));
        }
        files.push((f.clone(), arrays));
    }
    let found = found.into_iter().map(|f| f.unwrap_or(Found::PerFile)).collect();
    Ok((found, files))
}
