//! One module per `lowbit` command, plus what they share: loading a model with a message that
//! names the file, building a session, printing to stdout.

pub mod bench;
pub mod bench_kernels;
pub mod calibrate;
pub mod compare;
pub mod demo;
pub mod eval;
pub mod example_model;
pub mod inspect;
pub mod quantize;
pub mod run;

use crate::cli::{Cli, Command};
use crate::usage::usage_bail;
use anyhow::{Context, Result};
use lowbit_data::{Dataset, FeedSource, Preprocess};
use lowbit_engine::{Session, SessionOptions};
use lowbit_onnx::pb::ModelProto;
use std::io::Write;
use std::path::Path;

/// Runs the command `cli` names.
pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo(a) => demo::demo(a, cli.quiet),
        Command::Inspect(a) => inspect::inspect(a),
        Command::Run(a) => run::run(a, cli.quiet),
        Command::Bench(a) => bench::bench(a, cli.quiet),
        Command::BenchKernels(a) => bench_kernels::bench_kernels(a),
        Command::ExampleModel(a) => example_model::example_model(a),
        Command::Calibrate(a) => calibrate::calibrate(a, cli.quiet),
        Command::Quantize(a) => quantize::quantize(a, cli.quiet),
        Command::Compare(a) => compare::compare(a, cli.quiet),
        Command::Eval(a) => eval::eval(a, cli.quiet),
    }
}

/// Reads an ONNX file (external data resolved beside it).
pub fn load_model(path: &Path) -> Result<ModelProto> {
    // lowbit-onnx's errors already name the file.
    lowbit_onnx::load_model(path).context("cannot load the model")
}

/// Plans `model` on lowbit's engine with `threads` workers (0: one per core).
pub fn new_session(model: &ModelProto, path: &Path, threads: usize) -> Result<Session> {
    session_with(model, path, &SessionOptions::with_threads(threads))
}

/// [`new_session`] without load-time fusion, for observers that need every value the model
/// names (calibration).
pub fn new_unfused_session(model: &ModelProto, path: &Path, threads: usize) -> Result<Session> {
    session_with(model, path, &SessionOptions::unfused(threads))
}

fn session_with(model: &ModelProto, path: &Path, opts: &SessionOptions) -> Result<Session> {
    Session::new(model, opts)
        .with_context(|| format!("{}: lowbit's engine cannot run this model", path.display()))
}

/// Parses `--preprocess SPEC` (bad keys are usage errors).
pub fn preprocess_arg(spec: Option<&str>) -> Result<Option<Preprocess>> {
    Ok(spec.map(Preprocess::parse).transpose()?)
}

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
        pairs.push((name.to_string(), std::path::PathBuf::from(file)));
    }
    Ok(FeedSource::Files(pairs))
}

/// Prints the data set's notes (what `--preprocess` does) on stderr unless `quiet`.
pub fn print_notes(data: &Dataset, quiet: bool) {
    if !quiet {
        for n in data.notes() {
            eprintln!("note: {n}");
        }
    }
}

/// Writes `text` to stdout; a closed pipe surfaces as an io error that `main` treats as done.
pub fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in decimal units, as the corpus manifest writes them (`1.531 MB`).
pub fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.3} GB", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.3} MB", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} kB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formatting() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(17_241_984), "17,241,984");
        assert_eq!(human_bytes(1_530_828), "1.531 MB");
        assert_eq!(human_bytes(512), "512 B");
    }
}
