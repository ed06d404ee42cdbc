//! The data options commands share: `--input`/`--data` into a feed source, `--preprocess`
//! parsed, a data set loaded for a session with its notes on stderr (unless `--quiet`).

use crate::cli::PreprocessArg;
use crate::usage::usage_bail;
use anyhow::Result;
use lowbit_data::{Dataset, FeedSource, Preprocess};
use lowbit_engine::Session;
use std::path::{Path, PathBuf};

/// Validates `--input NAME=FILE` / `--data` as given on the command line.
pub fn feed_source(inputs: &[String], data: Option<&Path>) -> Result<FeedSource> {
    if let Some(d) = data {
        return Ok(FeedSource::Data(d.to_path_buf()));
    }
    let mut pairs = Vec::new();
    for spec in inputs {
        let Some((name, file)) =
            spec.split_once('=').filter(|(n, f)| !n.is_empty() && !f.is_empty())
        else {
            usage_bail!("--input '{spec}': expected NAME=FILE.npy");
        };
        if pairs.iter().any(|(n, _)| n == name) {
            usage_bail!("--input '{name}' is given twice");
        }
        pairs.push((name.to_string(), PathBuf::from(file)));
    }
    Ok(FeedSource::Files(pairs))
}

/// Parses `--preprocess SPEC` (bad keys are usage errors).
pub fn preprocess_arg(arg: &PreprocessArg) -> Result<Option<Preprocess>> {
    Ok(arg.preprocess.as_deref().map(Preprocess::parse).transpose()?)
}

/// The data set `src` (a `--data` path, or a feed source) holds for `session`'s inputs; its
/// notes go to stderr unless `quiet`.
pub fn load_dataset(
    session: &Session,
    src: impl Into<FeedSource>,
    pre: Option<&Preprocess>,
    quiet: bool,
) -> Result<Dataset> {
    let data = Dataset::load(&session.inputs(), &src.into(), pre)?;
    if !quiet {
        for n in data.notes() {
            eprintln!("note: {n}");
        }
    }
    Ok(data)
}

/// `--samples N`: keeps the first `n` samples, a multiple of a fixed batch.
pub fn keep_samples(data: &mut Dataset, n: Option<usize>) -> Result<()> {
    let Some(n) = n else { return Ok(()) };
    if n == 0 {
        usage_bail!("--samples must be at least 1");
    }
    if let Some(b) = data.fixed_batch {
        if n < data.samples && !n.is_multiple_of(b) {
            usage_bail!("--samples {n}: the model's fixed batch is {b}; use a multiple of it");
        }
    }
    Ok(data.limit(n)?)
}
