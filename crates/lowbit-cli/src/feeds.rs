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
//!   `[A-Za-z0-9._-]` may also use the sanitized file name, as outputs do); inputs without one
//!   come from the `.npz` files in DIR (arrays named after the inputs), taken in sorted name
//!   order. `--data FILE.npz` works too. Other files in DIR are ignored. The `.npz` files are
//!   read one of two ways:
//!   - **one data set** when no input is held by more than one file: a single `.npz` with every
//!     input, or inputs spread over files (one each). Samples lie along axis 0, as above.
//!   - **per-sample files** when some input is held by two or more files: then every file must
//!     hold every input that has no `.npy` (a missing one is an error naming the file and the
//!     input). Each file holds one sample, or several along axis 0; an array without the batch
//!     axis is one sample: rank one less than the input's (`[17]` for a `[batch, seq]` input),
//!     or two less for an integer image that `--preprocess` also gives a channel axis
//!     (`[28, 28]` for `[N, 1, 28, 28]`). The files' samples are taken in order as if
//!     concatenated, but a batch ends where the arrays' shapes beyond axis 0 (or their types)
//!     change: files of different lengths (sentences of 17 and 31 tokens) are each fed as they
//!     are, in runs of their own, while consecutive files of equal shapes are batched together
//!     exactly as one array would be. Only the files' `.npy` headers are read up front (to count
//!     and check the samples); each file is read when its samples' turn comes, so memory does
//!     not grow with the number of files. Outputs of different lengths are zero-padded to the
//!     longest when `run` stacks them. Inputs fed whole (no declared shape, scalars) may come
//!     from `.npy` files; when the `.npz` files hold one, a batch never spans two files. With a
//!     fixed batch dimension every file must hold a multiple of it.
//! - `--preprocess SPEC` converts integer arrays (uint8 images) for float inputs in every batch
//!   as it is fed (see [`crate::preprocess`]); float arrays are fed as they are (with a note).
//! - Trimming: when an integer or bool input named like `*mask*` has shape `[N, L]`, a run may
//!   cut every batched input whose axis 1 also has length `L` (and is free in the model) to the
//!   longest real length in the batch (last non-zero mask position + 1).

use crate::outputs::file_stem;
use crate::preprocess::Preprocess;
use crate::stack::{concat_rows, slice_rows, trim_axis1};
use crate::usage::usage_bail;
use anyhow::{bail, Context, Result};
use lowbit_engine::session::Dim;
use lowbit_engine::InputSpec;
use lowbit_tensor::{npy, DType, Tensor};
use std::collections::HashMap;
use std::io::Read;
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

/// One graph input as the data set feeds it.
struct Input {
    spec: InputSpec,
    /// Samples lie along axis 0.
    batched: bool,
}

/// Where the arrays are kept.
enum Store {
    /// Whole arrays in memory, as stored (`<input>.npy` files, one data set of `.npz`,
    /// `--input`), one per input.
    Arrays(Vec<Tensor>),
    /// Per-sample `.npz` files.
    Files(SampleFiles),
}

/// Per-sample `.npz` files, read when their samples are fed.
struct SampleFiles {
    files: Vec<SampleFile>,
    /// Per input: the array fed whole to every run when it comes from a `.npy` file (`None` for
    /// the inputs the files hold).
    whole: Vec<Option<Tensor>>,
    /// Batches never span files (the files hold an input that is fed whole).
    split: bool,
    /// The last file read: its index and its arrays per input (`None` for `whole` inputs).
    cache: Option<(usize, Vec<Option<Tensor>>)>,
}

/// One per-sample `.npz` file, as its headers describe it.
struct SampleFile {
    path: PathBuf,
    /// Index of its first sample among all files' samples.
    start: usize,
    rows: usize,
    /// Per input the files hold: element type and shape, batch axis included.
    arrays: Vec<Stored>,
}

impl SampleFile {
    /// What must agree for two files' samples to share a batch: types and shapes beyond
    /// axis 0.
    fn key(&self) -> Vec<Option<(DType, &[usize])>> {
        self.arrays.iter().map(|a| a.as_ref().map(|(d, s)| (*d, &s[1..]))).collect()
    }
}

/// All graph inputs, checked against the model and ready to be cut into batches.
pub struct Dataset {
    inputs: Vec<Input>,
    store: Store,
    /// Samples along axis 0 of the batched inputs (1 when nothing is batched).
    pub samples: usize,
    /// The model's fixed first dimension, when a batched input declares one.
    pub fixed_batch: Option<usize>,
    /// Index of the `*mask*` input used for trimming.
    mask: Option<usize>,
    preprocess: Option<Preprocess>,
    notes: Vec<String>,
}

/// Reads input `name` from a `.npy` file (the tensor crate's errors name the file).
fn read_array(path: &Path, name: &str) -> Result<Tensor> {
    npy::read_npy(path).with_context(|| format!("cannot read input '{name}'"))
}

/// Where one input's data was found.
enum Found {
    /// A whole array and its file label.
    Array(Tensor, String),
    /// In every per-sample `.npz` file.
    PerFile,
}

/// One input's array in a per-sample file: element type and shape (`None` for inputs the
/// files do not hold).
type Stored = Option<(DType, Vec<usize>)>;

/// What [`read_sources`] found: per input, its array or a mark that the per-sample files hold
/// it; and those files with, per input they hold, the element type and stored shape.
type Sources = (Vec<Found>, Vec<(PathBuf, Vec<Stored>)>);

/// `missing input 'x': the model needs float32 [N, 4]`.
fn needs(spec: &InputSpec) -> String {
    format!(
        "the model needs {} {}",
        spec.dtype.map_or("a tensor".into(), |d| d.to_string()),
        spec.shape_text()
    )
}

/// Reads the arrays for `inputs` from `src` (see the module docs for the layouts).
fn read_sources(inputs: &[&InputSpec], src: &FeedSource) -> Result<Sources> {
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
            let found = inputs
                .iter()
                .map(|spec| {
                    let Some((_, file)) = pairs.iter().find(|(n, _)| *n == spec.name) else {
                        bail!(
                            "missing input '{}': {}; pass --input {}=FILE.npy",
                            spec.name,
                            needs(spec),
                            spec.name
                        );
                    };
                    Ok(Found::Array(read_array(file, &spec.name)?, file.display().to_string()))
                })
                .collect::<Result<_>>()?;
            Ok((found, Vec::new()))
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
                npz_files.iter().map(|f| npz_members(f)).collect::<Result<_>>()?;
            let holders =
                |name: &str| members.iter().filter(|m| m.iter().any(|n| n == name)).count();
            let per_file =
                inputs.iter().zip(&found).any(|(spec, f)| f.is_none() && holders(&spec.name) >= 2);
            if per_file {
                let mut files = Vec::with_capacity(npz_files.len());
                for f in &npz_files {
                    let wanted: Vec<Option<&str>> = inputs
                        .iter()
                        .zip(&found)
                        .map(|(spec, hit)| hit.is_none().then_some(spec.name.as_str()))
                        .collect();
                    let arrays = peek_npz(f, &wanted).map_err(|e| match e {
                        Peek::Missing(i) => anyhow::anyhow!(
                            "{}: no array '{}' for input '{}' ({}); with several .npz files \
                             holding the same inputs, each file holds samples and must hold \
                             every input",
                            f.display(),
                            inputs[i].name,
                            inputs[i].name,
                            needs(inputs[i])
                        ),
                        Peek::Other(e) => e,
                    })?;
                    files.push((f.clone(), arrays));
                }
                let found = found.into_iter().map(|f| f.unwrap_or(Found::PerFile)).collect();
                return Ok((found, files));
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
                    bail!(
                        "missing input '{}': {}; {} has no {}.npy{}",
                        spec.name,
                        needs(spec),
                        path.display(),
                        spec.name,
                        if npz_files.is_empty() {
                            String::new()
                        } else {
                            format!(" and no .npz there holds an array '{}'", spec.name)
                        }
                    );
                };
                if let std::collections::hash_map::Entry::Vacant(e) = read.entry(k) {
                    let arrays = npy::read_npz(&npz_files[k])
                        .context("cannot read the inputs' .npz file")?;
                    e.insert(arrays);
                }
                let arrays = read.get_mut(&k).expect("read above");
                let i = arrays.iter().position(|(n, _)| *n == spec.name).with_context(|| {
                    format!("{}: no array '{}' any more", npz_files[k].display(), spec.name)
                })?;
                let (name, t) = arrays.swap_remove(i);
                out.push(Found::Array(t, format!("{}:{name}", npz_files[k].display())));
            }
            Ok((out, Vec::new()))
        }
    }
}

/// The array names in a `.npz` file (member names without `.npy`), from its directory only.
fn npz_members(path: &Path) -> Result<Vec<String>> {
    let zip = open_npz(path)?;
    Ok(zip.file_names().map(|n| n.trim_end_matches(".npy").to_string()).collect())
}

fn open_npz(path: &Path) -> Result<zip::ZipArchive<std::fs::File>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    zip::ZipArchive::new(file).with_context(|| format!("{}: not a .npz archive", path.display()))
}

/// Why [`peek_npz`] failed.
enum Peek {
    /// Wanted input `i` is not in the file.
    Missing(usize),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Peek {
    fn from(e: anyhow::Error) -> Peek {
        Peek::Other(e)
    }
}

/// Element type and shape of every wanted array of a `.npz` file, from the `.npy` headers only
/// (the data is checked again when it is read).
fn peek_npz(path: &Path, wanted: &[Option<&str>]) -> std::result::Result<Vec<Stored>, Peek> {
    let mut zip = open_npz(path)?;
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    let mut out = Vec::with_capacity(wanted.len());
    for (i, w) in wanted.iter().enumerate() {
        let Some(w) = w else {
            out.push(None);
            continue;
        };
        let Some(member) = names.iter().find(|n| n.trim_end_matches(".npy") == *w) else {
            return Err(Peek::Missing(i));
        };
        let label = format!("{}:{w}", path.display());
        let mut r = zip.by_name(member).with_context(|| format!("{label}: cannot read"))?;
        out.push(Some(npy_header(&mut r).with_context(|| format!("{label}: bad .npy header"))?));
    }
    Ok(out)
}

/// Element type and shape from the header of a `.npy` stream.
fn npy_header(r: &mut impl Read) -> Result<(DType, Vec<usize>)> {
    let mut head = [0u8; 10];
    r.read_exact(&mut head)?;
    if &head[..6] != b"\x93NUMPY" {
        bail!("not a .npy array (bad magic)");
    }
    let len = match head[6] {
        1 => u16::from_le_bytes([head[8], head[9]]) as usize,
        2 | 3 => {
            let mut more = [0u8; 2];
            r.read_exact(&mut more)?;
            u32::from_le_bytes([head[8], head[9], more[0], more[1]]) as usize
        }
        v => bail!("unsupported .npy version {v}"),
    };
    let mut header = vec![0u8; len];
    r.read_exact(&mut header)?;
    let header = String::from_utf8_lossy(&header);
    let field = |key: &str| -> Option<String> {
        let pat = format!("'{key}':");
        let rest = header[header.find(&pat)? + pat.len()..].trim_start();
        let end = if rest.starts_with('(') {
            rest.find(')')? + 1
        } else {
            rest.find([',', '}']).unwrap_or(rest.len())
        };
        Some(rest[..end].trim().to_string())
    };
    let descr = field("descr").context("no 'descr'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let dtype = match descr.get(1..) {
        Some("f4") => DType::F32,
        Some("f8") => DType::F64,
        Some("f2") => DType::F16,
        Some("i8") => DType::I64,
        Some("i4") => DType::I32,
        Some("i2") => DType::I16,
        Some("i1") => DType::I8,
        Some("u8") => DType::U64,
        Some("u4") => DType::U32,
        Some("u2") => DType::U16,
        Some("u1") => DType::U8,
        Some("b1") => DType::Bool,
        _ => bail!("unsupported dtype '{descr}'"),
    };
    if !matches!(descr.as_bytes().first(), Some(b'<' | b'|' | b'=')) {
        bail!("unsupported dtype '{descr}' (big-endian)");
    }
    let shape_txt = field("shape").context("no 'shape'")?;
    let shape = shape_txt
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().with_context(|| format!("bad shape {shape_txt}")))
        .collect::<Result<Vec<_>>>()?;
    Ok((dtype, shape))
}

/// Checks an array of `dtype` and `shape` (as stored) against the declared input, `pre`
/// converting it first where it applies; returns whether its samples lie along axis 0.
fn check_array(
    spec: &InputSpec,
    dtype: DType,
    shape: &[usize],
    source: &str,
    pre: Option<&Preprocess>,
) -> Result<bool> {
    let expected = || {
        format!("{} {}", spec.dtype.map_or("a tensor".into(), |d| d.to_string()), spec.shape_text())
    };
    let (dtype, shape) = match pre.and_then(|p| p.plan(spec, dtype, shape.len())) {
        Some(c) => {
            let fed = c.shape(shape);
            c.check_channels(&fed, &format!("input '{}' ({source})", spec.name))?;
            (c.dtype(), fed)
        }
        None => (dtype, shape.to_vec()),
    };
    if let Some(dt) = spec.dtype {
        if dt != dtype {
            let hint = if dt.is_float() == dtype.is_float() {
                format!(" (convert it, e.g. numpy's .astype('{}'))", numpy_name(dt))
            } else if dt.is_float() && dtype.is_integer() {
                " (pass --preprocess SPEC to convert integer images)".to_string()
            } else {
                String::new()
            };
            bail!(
                "input '{}' ({source}): the model expects {}, the file holds {} {:?}{hint}",
                spec.name,
                expected(),
                dtype,
                shape,
            );
        }
    }
    let Some(dims) = &spec.dims else { return Ok(false) };
    if dims.is_empty() {
        if !shape.is_empty() {
            bail!(
                "input '{}' ({source}): the model expects a scalar {}, the file holds shape {:?}",
                spec.name,
                expected(),
                shape
            );
        }
        return Ok(false);
    }
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

/// Whether an array of `dtype` and rank `rank` stored in a per-sample file lacks the batch
/// axis (see the module docs).
fn lacks_batch_axis(spec: &InputSpec, dtype: DType, rank: usize, pre: Option<&Preprocess>) -> bool {
    let Some(dims) = spec.dims.as_ref().filter(|d| !d.is_empty()) else { return false };
    let converted = pre.is_some() && spec.dtype.is_some_and(|d| d.is_float()) && dtype.is_integer();
    dims.len() == rank + 1 || (converted && dims.len() == rank + 2)
}

impl Dataset {
    /// Reads and checks every input the model needs; `preprocess` converts integer arrays for
    /// float inputs (see [`crate::preprocess`]).
    pub fn load(
        inputs: &[&InputSpec],
        src: &FeedSource,
        preprocess: Option<&Preprocess>,
    ) -> Result<Dataset> {
        let (found, files) = read_sources(inputs, src)?;
        let mut d = if files.is_empty() {
            Dataset::from_arrays(inputs, found, preprocess)?
        } else {
            Dataset::from_files(inputs, found, files, preprocess)?
        };
        d.preprocess = preprocess.cloned();
        d.note_preprocessing(inputs);
        Ok(d)
    }

    fn from_arrays(
        inputs: &[&InputSpec],
        found: Vec<Found>,
        pre: Option<&Preprocess>,
    ) -> Result<Dataset> {
        let mut arrays = Vec::with_capacity(inputs.len());
        let mut tensors = Vec::with_capacity(inputs.len());
        for (spec, f) in inputs.iter().zip(found) {
            let Found::Array(tensor, source) = f else { unreachable!("no per-sample files") };
            let batched = check_array(spec, tensor.dtype(), tensor.shape(), &source, pre)?;
            arrays.push(Input { spec: (*spec).clone(), batched });
            tensors.push(tensor);
        }
        let mut samples: Option<(usize, &str)> = None;
        for (a, t) in arrays.iter().zip(&tensors).filter(|(a, _)| a.batched) {
            let rows = t.shape()[0];
            match samples {
                Some((n, other)) if n != rows => bail!(
                    "inputs disagree on the number of samples (axis 0): '{other}' has {n}, '{}' \
                     has {rows}",
                    a.spec.name
                ),
                _ => samples = Some((rows, &a.spec.name)),
            }
        }
        let samples = samples.map_or(1, |(n, _)| n);
        let fixed_batch = fixed_batch(&arrays)?;
        let fed: Vec<(DType, Vec<usize>)> = arrays
            .iter()
            .zip(&tensors)
            .map(|(a, t)| fed_form(pre, &a.spec, t.dtype(), t.shape()))
            .collect();
        let mask = find_mask(&arrays, &fed);
        Ok(Dataset {
            inputs: arrays,
            store: Store::Arrays(tensors),
            samples,
            fixed_batch,
            mask,
            preprocess: None,
            notes: Vec::new(),
        })
    }

    fn from_files(
        inputs: &[&InputSpec],
        found: Vec<Found>,
        listed: Vec<(PathBuf, Vec<Stored>)>,
        pre: Option<&Preprocess>,
    ) -> Result<Dataset> {
        let mut arrays: Vec<Input> = Vec::with_capacity(inputs.len());
        let mut whole = Vec::with_capacity(inputs.len());
        for (spec, f) in inputs.iter().zip(found) {
            match f {
                Found::Array(t, source) => {
                    if check_array(spec, t.dtype(), t.shape(), &source, pre)? {
                        bail!(
                            "input '{}' comes from {source}, but the other inputs come from \
                             per-sample .npz files: put '{}' in those files too",
                            spec.name,
                            spec.name
                        );
                    }
                    arrays.push(Input { spec: (*spec).clone(), batched: false });
                    whole.push(Some(t));
                }
                Found::PerFile => {
                    let batched = spec.dims.as_ref().is_some_and(|d| !d.is_empty());
                    arrays.push(Input { spec: (*spec).clone(), batched });
                    whole.push(None);
                }
            }
        }
        let split = arrays.iter().zip(&whole).any(|(a, w)| w.is_none() && !a.batched);
        let mut files = Vec::with_capacity(listed.len());
        let mut start = 0;
        for (path, stored) in listed {
            let mut rows: Option<(usize, &str)> = None;
            let mut shapes = Vec::with_capacity(stored.len());
            for (a, s) in arrays.iter().zip(stored) {
                let Some((dtype, mut shape)) = s else {
                    shapes.push(None);
                    continue;
                };
                if lacks_batch_axis(&a.spec, dtype, shape.len(), pre) {
                    shape.insert(0, 1);
                }
                let source = format!("{}:{}", path.display(), a.spec.name);
                check_array(&a.spec, dtype, &shape, &source, pre)?;
                if a.batched {
                    match rows {
                        Some((n, other)) if n != shape[0] => bail!(
                            "{}: inputs disagree on the number of samples (axis 0): '{other}' \
                             has {n}, '{}' has {}",
                            path.display(),
                            a.spec.name,
                            shape[0]
                        ),
                        _ => rows = Some((shape[0], &a.spec.name)),
                    }
                }
                shapes.push(Some((dtype, shape)));
            }
            let rows = rows.map_or(1, |(n, _)| n);
            files.push(SampleFile { path, start, rows, arrays: shapes });
            start += rows;
        }
        let fixed_batch = fixed_batch(&arrays)?;
        let first = &files[0];
        let fed: Vec<(DType, Vec<usize>)> = arrays
            .iter()
            .enumerate()
            .map(|(i, a)| match (&first.arrays[i], &whole[i]) {
                (Some((dt, s)), _) => fed_form(pre, &a.spec, *dt, s),
                (None, Some(t)) => fed_form(pre, &a.spec, t.dtype(), t.shape()),
                (None, None) => unreachable!("every input has a source"),
            })
            .collect();
        let mask = find_mask(&arrays, &fed);
        Ok(Dataset {
            inputs: arrays,
            store: Store::Files(SampleFiles { files, whole, split, cache: None }),
            samples: start,
            fixed_batch,
            mask,
            preprocess: None,
            notes: Vec::new(),
        })
    }

    /// Notes on what `--preprocess` does to each input (shown unless `--quiet`).
    fn note_preprocessing(&mut self, inputs: &[&InputSpec]) {
        let Some(pre) = &self.preprocess else { return };
        let mut noted = false;
        for (i, spec) in inputs.iter().enumerate() {
            let Some((dtype, shape)) = self.stored_form(i) else { continue };
            let whence = match &self.store {
                Store::Files(f) if f.whole[i].is_none() => " (per-sample files)",
                _ => "",
            };
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

    /// Input `i`'s element type and shape as stored (in the first file for per-sample files).
    fn stored_form(&self, i: usize) -> Option<(DType, Vec<usize>)> {
        match &self.store {
            Store::Arrays(t) => Some((t[i].dtype(), t[i].shape().to_vec())),
            Store::Files(f) => match (&f.files.first()?.arrays[i], &f.whole[i]) {
                (Some((d, s)), _) => Some((*d, s.clone())),
                (None, Some(t)) => Some((t.dtype(), t.shape().to_vec())),
                (None, None) => None,
            },
        }
    }

    /// Notes for stderr (what `--preprocess` does), to show unless `--quiet`.
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
        match &mut self.store {
            Store::Arrays(tensors) => {
                for (a, t) in self.inputs.iter().zip(tensors.iter_mut()) {
                    if a.batched {
                        *t = slice_rows(t, 0, n)?;
                    }
                }
            }
            Store::Files(f) => {
                let keep = f.files.iter().take_while(|x| x.start < n).count();
                f.files.truncate(keep);
            }
        }
        self.samples = n;
        Ok(())
    }

    /// Whether [`Dataset::feeds`] can trim padding (a `*mask*` input exists).
    pub fn mask_name(&self) -> Option<&str> {
        self.mask.map(|i| self.inputs[i].spec.name.as_str())
    }

    /// Whether input `i` (in feed order) has its samples along axis 0.
    pub fn batched(&self, i: usize) -> bool {
        self.inputs[i].batched
    }

    /// `(start, end)` sample ranges of at most `batch` rows, one per run; one range when nothing
    /// is batched. Per-sample files also end a range where their shapes change (see the module
    /// docs).
    pub fn ranges(&self, batch: usize) -> Vec<(usize, usize)> {
        let batch = batch.max(1);
        let Store::Files(f) = &self.store else {
            return (0..self.samples)
                .step_by(batch)
                .map(|s| (s, (s + batch).min(self.samples)))
                .collect();
        };
        let mut out = Vec::new();
        let mut open: Option<usize> = None;
        let mut key = None;
        let mut end = 0;
        for file in &f.files {
            if file.start >= self.samples {
                break;
            }
            end = (file.start + file.rows).min(self.samples);
            let k = file.key();
            if let Some(s) = open {
                if f.split || key.as_ref() != Some(&k) {
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

    /// The per-sample file holding sample `row`.
    fn file_of(f: &SampleFiles, row: usize) -> usize {
        f.files.partition_point(|x| x.start <= row).saturating_sub(1)
    }

    /// Sample `row` in messages: `row 7`, or `sample 7 (DIR/s07.npz)` for per-sample files
    /// (with the row inside the file when it holds several).
    pub fn row_label(&self, row: usize) -> String {
        match &self.store {
            Store::Arrays(_) => format!("row {row}"),
            Store::Files(f) => {
                let file = &f.files[Dataset::file_of(f, row)];
                if file.rows == 1 {
                    format!("sample {row} ({})", file.path.display())
                } else {
                    format!("sample {row} ({}, row {})", file.path.display(), row - file.start)
                }
            }
        }
    }

    /// Samples `start..end` in messages, with the per-sample files they come from.
    pub fn range_label(&self, start: usize, end: usize) -> String {
        match &self.store {
            Store::Arrays(_) => format!("samples {start}..{end}"),
            Store::Files(f) => {
                let (a, b) = (Dataset::file_of(f, start), Dataset::file_of(f, end.max(1) - 1));
                if a == b {
                    format!("samples {start}..{end} ({})", f.files[a].path.display())
                } else {
                    format!(
                        "samples {start}..{end} ({} to {})",
                        f.files[a].path.display(),
                        f.files[b].path.display()
                    )
                }
            }
        }
    }

    /// Every input's rows `start..end` as stored (inputs fed whole: the whole array).
    fn stored_rows(&mut self, start: usize, end: usize) -> Result<Vec<Tensor>> {
        match &mut self.store {
            Store::Arrays(tensors) => self
                .inputs
                .iter()
                .zip(tensors.iter())
                .map(|(a, t)| if a.batched { slice_rows(t, start, end) } else { Ok(t.clone()) })
                .collect(),
            Store::Files(f) => {
                let mut parts: Vec<Vec<Tensor>> = vec![Vec::new(); self.inputs.len()];
                let mut k = Dataset::file_of(f, start);
                while k < f.files.len() && f.files[k].start < end {
                    let file = &f.files[k];
                    let s = start.max(file.start) - file.start;
                    let e = end.min(file.start + file.rows) - file.start;
                    let arrays = f.read(k, &self.inputs)?;
                    for (i, (a, t)) in self.inputs.iter().zip(arrays).enumerate() {
                        let Some(t) = t else { continue };
                        if !a.batched {
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
                    .map(|(i, p)| match &f.whole[i] {
                        Some(t) => Ok(t.clone()),
                        None if p.len() == 1 => Ok(p.into_iter().next().expect("one part")),
                        None => concat_rows(p),
                    })
                    .collect()
            }
        }
    }

    /// The feeds of one run over samples `start..end`: stored rows, converted by
    /// `--preprocess` where it applies; with `trim`, padding is cut (see the module docs).
    pub fn feeds(&mut self, start: usize, end: usize, trim: bool) -> Result<Vec<(String, Tensor)>> {
        let stored = self.stored_rows(start, end)?;
        let mut fed = Vec::with_capacity(stored.len());
        for (a, t) in self.inputs.iter().zip(stored) {
            let conv = self.preprocess.as_ref().and_then(|p| p.plan(&a.spec, t.dtype(), t.rank()));
            fed.push(match conv {
                Some(c) => c.apply(&t, &format!("input '{}'", a.spec.name))?,
                None => t,
            });
        }
        if let (true, Some(m)) = (trim, self.mask) {
            let width = fed[m].shape()[1];
            let vals = fed[m].to_f64_vec()?;
            let len = vals
                .chunks(width.max(1))
                .map(|row| row.iter().rposition(|&v| v != 0.0).map_or(0, |p| p + 1))
                .max()
                .unwrap_or(0)
                .max(1)
                .min(width);
            for (a, t) in self.inputs.iter().zip(fed.iter_mut()) {
                let axis1_free = a
                    .spec
                    .dims
                    .as_ref()
                    .and_then(|d| d.get(1))
                    .is_some_and(|d| !matches!(d, Dim::Fixed(_)));
                if a.batched && t.rank() >= 2 && t.shape()[1] == width && axis1_free {
                    *t = trim_axis1(t, len)?;
                }
            }
        }
        Ok(self.inputs.iter().map(|a| a.spec.name.clone()).zip(fed).collect())
    }
}

impl SampleFiles {
    /// The arrays of file `k` per input (`None` for inputs fed whole from `.npy`), read once
    /// and kept until another file is read.
    fn read(&mut self, k: usize, inputs: &[Input]) -> Result<&[Option<Tensor>]> {
        if self.cache.as_ref().is_none_or(|(c, _)| *c != k) {
            self.cache = None;
            let file = &self.files[k];
            let mut arrays = npy::read_npz(&file.path).context("cannot read a sample file")?;
            let mut out = Vec::with_capacity(inputs.len());
            for (a, listed) in inputs.iter().zip(&file.arrays) {
                let Some((dtype, shape)) = listed else {
                    out.push(None);
                    continue;
                };
                let i = arrays.iter().position(|(n, _)| *n == a.spec.name).with_context(|| {
                    format!("{}: no array '{}' any more", file.path.display(), a.spec.name)
                })?;
                let (_, t) = arrays.swap_remove(i);
                if t.dtype() != *dtype || t.len() != shape.iter().product::<usize>() {
                    bail!(
                        "{}:{}: changed while being read ({} {:?}, was {dtype} {shape:?})",
                        file.path.display(),
                        a.spec.name,
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

/// Element type and shape of an input as fed (after `--preprocess`), from its stored form.
fn fed_form(
    pre: Option<&Preprocess>,
    spec: &InputSpec,
    dtype: DType,
    shape: &[usize],
) -> (DType, Vec<usize>) {
    match pre.and_then(|p| p.plan(spec, dtype, shape.len())) {
        Some(c) => (c.dtype(), c.shape(shape)),
        None => (dtype, shape.to_vec()),
    }
}

/// The model's fixed first dimension, when a batched input declares one.
fn fixed_batch(arrays: &[Input]) -> Result<Option<usize>> {
    let mut fixed: Option<(usize, &str)> = None;
    for a in arrays.iter().filter(|a| a.batched) {
        if let Some(Dim::Fixed(b)) = a.spec.dims.as_ref().and_then(|d| d.first()) {
            match fixed {
                Some((fb, other)) if fb != *b => bail!(
                    "the model fixes the first dimension of '{other}' at {fb} and of '{}' at \
                     {b}: lowbit cannot batch it",
                    a.spec.name
                ),
                _ => fixed = Some((*b, &a.spec.name)),
            }
        }
    }
    Ok(fixed.map(|(b, _)| b))
}

/// The batched rank-2 integer or bool input named like `*mask*`, by its fed form.
fn find_mask(arrays: &[Input], fed: &[(DType, Vec<usize>)]) -> Option<usize> {
    arrays.iter().zip(fed).position(|(a, (dtype, shape))| {
        a.batched
            && shape.len() == 2
            && a.spec.name.to_ascii_lowercase().contains("mask")
            && (dtype.is_integer() || *dtype == DType::Bool)
    })
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
        let d = Dataset::load(&specs, &FeedSource::Data(dir.clone()), None);
        std::fs::remove_dir_all(&dir).unwrap();
        d
    }

    #[test]
    fn mask_trims_each_batch_to_its_longest_row() {
        let ids = Tensor::from_vec(vec![2, 4], vec![101i64, 7, 102, 0, 101, 102, 0, 0]).unwrap();
        let mask = Tensor::from_vec(vec![2, 4], vec![1i64, 1, 1, 0, 1, 1, 0, 0]).unwrap();
        let free = || vec![Dim::Symbolic("batch".into()), Dim::Symbolic("seq".into())];
        let mut d = dataset(vec![
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
        let mut d =
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

    /// A fresh folder for one test.
    fn folder(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lowbit-feeds-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn ids(v: &[i64]) -> Tensor {
        Tensor::from_vec(vec![v.len()], v.to_vec()).unwrap()
    }

    fn seq_inputs() -> Vec<InputSpec> {
        let free = || vec![Dim::Symbolic("batch".into()), Dim::Symbolic("seq".into())];
        vec![spec("input_ids", DType::I64, free()), spec("attention_mask", DType::I64, free())]
    }

    #[test]
    fn per_sample_files_of_different_lengths_are_fed_one_by_one() {
        let dir = folder("per-sample");
        // Sorted name order: a (3 tokens), b (3 tokens, stored with the batch axis), c (5).
        let b = Tensor::from_vec(vec![1, 3], vec![4i64, 5, 6]).unwrap();
        npy::write_npz(
            &dir.join("c.npz"),
            &[
                ("input_ids".into(), ids(&[7, 8, 9, 10, 11])),
                ("attention_mask".into(), ids(&[1; 5])),
            ],
        )
        .unwrap();
        npy::write_npz(
            &dir.join("a.npz"),
            &[("attention_mask".into(), ids(&[1, 1, 0])), ("input_ids".into(), ids(&[1, 2, 0]))],
        )
        .unwrap();
        let mask_b = Tensor::from_vec(vec![1, 3], vec![1i64, 1, 1]).unwrap();
        npy::write_npz(
            &dir.join("b.npz"),
            &[("input_ids".into(), b), ("attention_mask".into(), mask_b)],
        )
        .unwrap();
        let specs = seq_inputs();
        let refs: Vec<&InputSpec> = specs.iter().collect();
        let mut d = Dataset::load(&refs, &FeedSource::Data(dir.clone()), None).unwrap();
        assert_eq!(d.samples, 3);
        assert_eq!(d.mask_name(), Some("attention_mask"));
        // a and b share a shape and are batched together; c starts a new batch.
        assert_eq!(d.ranges(32), vec![(0, 2), (2, 3)]);
        assert_eq!(d.ranges(1), vec![(0, 1), (1, 2), (2, 3)]);
        let f = d.feeds(0, 2, false).unwrap();
        assert_eq!(f[0].0, "input_ids");
        assert_eq!(f[0].1, Tensor::from_vec(vec![2, 3], vec![1i64, 2, 0, 4, 5, 6]).unwrap());
        let f = d.feeds(2, 3, false).unwrap();
        assert_eq!(f[0].1, Tensor::from_vec(vec![1, 5], vec![7i64, 8, 9, 10, 11]).unwrap());
        // Trimming: a alone is cut to its 2 real tokens.
        let f = d.feeds(0, 1, true).unwrap();
        assert_eq!(f[0].1, Tensor::from_vec(vec![1, 2], vec![1i64, 2]).unwrap());
        assert_eq!(d.row_label(2), format!("sample 2 ({})", dir.join("c.npz").display()));
        assert!(d.range_label(0, 2).contains("a.npz to "), "{}", d.range_label(0, 2));
        // --limit keeps the first samples, across files.
        d.limit(2).unwrap();
        assert_eq!(d.ranges(32), vec![(0, 2)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn per_sample_files_with_several_rows_batch_across_files() {
        let dir = folder("shards");
        let x = |v: Vec<f32>| Tensor::from_vec(vec![v.len() / 2, 2], v).unwrap();
        npy::write_npz(&dir.join("0.npz"), &[("x".into(), x(vec![0., 1., 2., 3., 4., 5.]))])
            .unwrap();
        npy::write_npz(&dir.join("1.npz"), &[("x".into(), x(vec![6., 7.]))]).unwrap();
        npy::write_npz(&dir.join("2.npz"), &[("x".into(), x(vec![8., 9., 10., 11.]))]).unwrap();
        let s = spec("x", DType::F32, vec![Dim::Unknown, Dim::Fixed(2)]);
        let mut d = Dataset::load(&[&s], &FeedSource::Data(dir.clone()), None).unwrap();
        assert_eq!(d.samples, 6);
        assert_eq!(d.ranges(4), vec![(0, 4), (4, 6)]);
        let f = d.feeds(2, 5, false).unwrap();
        assert_eq!(f[0].1, x(vec![4., 5., 6., 7., 8., 9.]));
        assert_eq!(d.row_label(5), format!("sample 5 ({}, row 1)", dir.join("2.npz").display()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_per_sample_file_without_an_input_is_named() {
        let dir = folder("missing");
        npy::write_npz(
            &dir.join("s0.npz"),
            &[("input_ids".into(), ids(&[1, 2])), ("attention_mask".into(), ids(&[1, 1]))],
        )
        .unwrap();
        npy::write_npz(&dir.join("s1.npz"), &[("input_ids".into(), ids(&[3, 4, 5]))]).unwrap();
        let specs = seq_inputs();
        let refs: Vec<&InputSpec> = specs.iter().collect();
        let e =
            Dataset::load(&refs, &FeedSource::Data(dir.clone()), None).err().unwrap().to_string();
        assert!(e.contains("s1.npz") && e.contains("'attention_mask'"), "{e}");
        assert!(!e.contains("s0.npz"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn inputs_spread_over_npz_files_are_still_one_data_set() {
        let dir = folder("spread");
        let two = |v: Vec<i64>| Tensor::from_vec(vec![2, 2], v).unwrap();
        npy::write_npz(&dir.join("ids.npz"), &[("input_ids".into(), two(vec![1, 2, 3, 4]))])
            .unwrap();
        npy::write_npz(&dir.join("mask.npz"), &[("attention_mask".into(), two(vec![1, 1, 1, 0]))])
            .unwrap();
        let specs = seq_inputs();
        let refs: Vec<&InputSpec> = specs.iter().collect();
        let mut d = Dataset::load(&refs, &FeedSource::Data(dir.clone()), None).unwrap();
        assert_eq!((d.samples, d.ranges(32)), (2, vec![(0, 2)]));
        assert_eq!(d.feeds(0, 2, false).unwrap()[1].1, two(vec![1, 1, 1, 0]));
        assert_eq!(d.row_label(1), "row 1");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn preprocessing_converts_each_batch_of_uint8_images() {
        let dir = folder("pre");
        let images = Tensor::from_vec(vec![3, 2, 2], (0u8..12).collect()).unwrap();
        npy::write_npy(&dir.join("x.npy"), &images).unwrap();
        let s =
            spec("x", DType::F32, vec![Dim::Unknown, Dim::Fixed(1), Dim::Fixed(2), Dim::Fixed(2)]);
        let src = FeedSource::Data(dir.clone());
        // Without --preprocess the dtype error says how to convert.
        let e = Dataset::load(&[&s], &src, None).err().unwrap().to_string();
        assert!(e.contains("uint8") && e.contains("--preprocess"), "{e}");
        let pre = Preprocess::parse("scale=2,mean=1,std=4").unwrap();
        let mut d = Dataset::load(&[&s], &src, Some(&pre)).unwrap();
        assert_eq!(d.samples, 3);
        assert!(
            d.notes()[0].contains("uint8 [3, 2, 2] -> float32 [3, 1, 2, 2]"),
            "{:?}",
            d.notes()
        );
        let f = d.feeds(1, 3, false).unwrap();
        let want: Vec<f32> = (4..12).map(|v| (v as f32 * 2.0 - 1.0) / 4.0).collect();
        assert_eq!(f[0].1, Tensor::from_vec(vec![2, 1, 2, 2], want).unwrap());
        // Float data is left alone, with a note.
        let floats = Tensor::from_vec(vec![1, 1, 2, 2], vec![0.5f32; 4]).unwrap();
        npy::write_npy(&dir.join("x.npy"), &floats).unwrap();
        let mut d = Dataset::load(&[&s], &src, Some(&pre)).unwrap();
        assert!(d.notes()[0].contains("already"), "{:?}", d.notes());
        assert_eq!(d.feeds(0, 1, false).unwrap()[0].1, floats);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn per_sample_uint8_images_get_batch_and_channel_axes() {
        let dir = folder("pre-files");
        for (k, v) in [(0u8, [0u8, 1, 2, 3]), (1, [4, 5, 6, 7])] {
            let img = Tensor::from_vec(vec![2, 2], v.to_vec()).unwrap();
            npy::write_npz(&dir.join(format!("img{k}.npz")), &[("x".into(), img)]).unwrap();
        }
        let s =
            spec("x", DType::F32, vec![Dim::Unknown, Dim::Fixed(1), Dim::Fixed(2), Dim::Fixed(2)]);
        let pre = Preprocess::parse("scale=1,mean=1,std=2").unwrap();
        let mut d = Dataset::load(&[&s], &FeedSource::Data(dir.clone()), Some(&pre)).unwrap();
        assert_eq!((d.samples, d.ranges(32)), (2, vec![(0, 2)]));
        let want: Vec<f32> = (0..8).map(|v| (v as f32 - 1.0) / 2.0).collect();
        assert_eq!(
            d.feeds(0, 2, false).unwrap()[0].1,
            Tensor::from_vec(vec![2, 1, 2, 2], want).unwrap()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
