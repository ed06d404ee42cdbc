//! `eval(...)` and `compare(...)`: the command line's `lowbit eval` and `lowbit compare`, for
//! Python, returning the JSON report (`docs/json.md`) as a string the Python side parses.
//! Both read `data=` as `--data` reads it ([`crate::data`]).

use crate::data::{load, DataOptions};
use crate::errors::{to_py, with_context};
use lowbit_data::labels::read_labels;
use lowbit_data::DEFAULT_BATCH;
use lowbit_engine::{Session, SessionOptions};
use lowbit_eval::compare::{compare_dataset, CompareOptions};
use lowbit_eval::latency::time_runs;
use lowbit_eval::score::{
    choose_output, load_with_size, pair_scores, score_side, EvalReport, ScoredModel, SentencePairs,
    Side, Tally,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::path::{Path, PathBuf};

fn scored(path: &Path, output: Option<&str>, threads: usize) -> PyResult<ScoredModel> {
    let (proto, bytes) = load_with_size(path).map_err(to_py)?;
    let output = choose_output(&proto, path, output).map_err(to_py)?;
    let session = Session::new(&proto, &SessionOptions::with_threads(threads)).map_err(|e| {
        with_context(&format!("{}: lowbit's engine cannot run this model", path.display()), e)
    })?;
    Ok(ScoredModel { path: path.display().to_string(), bytes, session, output })
}

/// Scores `model` on `data`: top-1/top-5 with `labels` (a `.npy` file, or the photo folder's
/// own), Spearman of sentence pairs (`pair_fields` and `gold_field` of a text file), latency
/// on `latency` samples. Returns the `lowbit-eval/1` JSON report.
#[pyfunction]
#[pyo3(signature = (
    model, data, *, labels = None, output = None, preprocess = None, tokenizer = None,
    text_field = None, pair_fields = None, gold_field = None, limit = None, batch = None,
    threads = 0, latency = 0, trim = true,
))]
#[allow(clippy::too_many_arguments)]
pub fn eval(
    py: Python<'_>,
    model: PathBuf,
    data: PathBuf,
    labels: Option<PathBuf>,
    output: Option<String>,
    preprocess: Option<String>,
    tokenizer: Option<PathBuf>,
    text_field: Option<String>,
    pair_fields: Option<String>,
    gold_field: Option<String>,
    limit: Option<usize>,
    batch: Option<usize>,
    threads: usize,
    latency: usize,
    trim: bool,
) -> PyResult<String> {
    let opts = DataOptions { preprocess, tokenizer, text_field, pair_fields, gold_field };
    let format = opts.format()?;
    if format.pair_fields().is_some() && format.gold_field().is_none() {
        return Err(PyValueError::new_err("pair_fields: pass gold_field (each pair's gold score)"));
    }
    py.detach(|| {
        let m = scored(&model, output.as_deref(), threads)?;
        let (side_a, side_b) = match format.pair_fields() {
            Some(_) => (format.side(&data, 0), Some(format.side(&data, 1))),
            None => (format.source(&data), None),
        };
        let load_side =
            |src: Result<lowbit_data::FeedSource, lowbit_data::DataError>| -> PyResult<_> {
                let src = src.map_err(to_py)?;
                let mut d = lowbit_data::Dataset::load(
                    &m.session.inputs(),
                    &src,
                    format.preprocess.as_ref(),
                )
                .map_err(to_py)?;
                if let Some(n) = limit {
                    d.limit(n).map_err(to_py)?;
                }
                Ok(d)
            };
        let mut a = load_side(side_a)?;
        let mut b = side_b.map(load_side).transpose()?;
        let samples = a.samples;
        let label_values = match &labels {
            Some(p) => Some(read_labels(p, samples, &data).map_err(to_py)?),
            None => a.labels(),
        };
        let labels_path = labels.clone().unwrap_or_else(|| data.clone());
        let run_batch = a.fixed_batch.unwrap_or(batch.unwrap_or(DEFAULT_BATCH));
        let mut tally = Tally::default();
        let side = Side {
            ranges: a.ranges(run_batch),
            data: &mut a,
            reference: None,
            labels: label_values.as_deref(),
            labels_path: &labels_path,
            keep: b.is_some(),
        };
        let (emb_a, _) =
            score_side(&m, None, side, trim, &mut tally, &mut |_| {}).map_err(to_py)?;
        let mut sentence_pairs = None;
        if let Some(b) = &mut b {
            let gold = a.gold().unwrap_or_default();
            let side = Side {
                ranges: b.ranges(run_batch),
                data: b,
                reference: None,
                labels: None,
                labels_path: Path::new(""),
                keep: true,
            };
            let (emb_b, _) =
                score_side(&m, None, side, trim, &mut tally, &mut |_| {}).map_err(to_py)?;
            let (spearman, pearson) = pair_scores(&emb_a, &emb_b, &gold).map_err(to_py)?;
            let (fa, fb) = format.pair_fields().unwrap_or_default();
            sentence_pairs = Some(SentencePairs {
                data_b: format!("{} field '{fb}' (side a: '{fa}')", data.display()),
                gold: format!("{} field '{}'", data.display(), format.gold_field().unwrap_or("")),
                pairs: samples,
                spearman_x100: spearman,
                pearson_x100: pearson,
            });
        }
        let classification = label_values
            .as_ref()
            .map(|_| tally.classification(labels_path.display().to_string(), samples));
        let timed = time_runs(&m, &mut a, latency, trim, &mut |_| {}).map_err(to_py)?;
        let task = match (&classification, &sentence_pairs) {
            (Some(_), _) => "classification",
            (None, Some(_)) => "sentence_pairs",
            (None, None) => "latency",
        };
        let report = EvalReport {
            format: "lowbit-eval/1",
            model: m.path.clone(),
            model_bytes: m.bytes,
            data: data.display().to_string(),
            samples,
            output: m.output.clone(),
            output_values: tally.values,
            task,
            threads: m.session.threads(),
            batch: run_batch,
            trimmed: trim && a.mask_name().is_some(),
            classification,
            sentence_pairs,
            reference: None,
            latency: timed,
            adaptive: None,
        };
        serde_json::to_string(&report).map_err(to_py)
    })
}

/// Per-layer quantization noise of `quant` against `fp32` on the first `samples` samples of
/// `data`; returns the `lowbit-compare` JSON report.
#[pyfunction]
#[pyo3(signature = (
    fp32, quant, data, *, samples = 100, preprocess = None, tokenizer = None, text_field = None,
    threads = 0, trim = true,
))]
#[allow(clippy::too_many_arguments)]
pub fn compare(
    py: Python<'_>,
    fp32: PathBuf,
    quant: PathBuf,
    data: PathBuf,
    samples: usize,
    preprocess: Option<String>,
    tokenizer: Option<PathBuf>,
    text_field: Option<String>,
    threads: usize,
    trim: bool,
) -> PyResult<String> {
    let opts = DataOptions { preprocess, tokenizer, text_field, ..DataOptions::default() };
    let format = opts.format()?;
    py.detach(|| {
        let (a, _) = load_with_size(&fp32).map_err(to_py)?;
        let (b, _) = load_with_size(&quant).map_err(to_py)?;
        let session = crate::data::unfused_session(&a, &fp32, threads)?;
        let mut d = load(&session, &format, &data, Some(samples.max(1)))?;
        drop(session);
        let copts = CompareOptions {
            threads,
            fp32_model: fp32.display().to_string(),
            quant_model: quant.display().to_string(),
        };
        let report = compare_dataset(&a, &b, &mut d, trim, &copts, &mut |_| {}).map_err(|e| {
            with_context(&format!("cannot compare {} with {}", quant.display(), fp32.display()), e)
        })?;
        serde_json::to_string(&report).map_err(to_py)
    })
}
