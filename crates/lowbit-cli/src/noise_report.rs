//! Per-layer noise for `compare` and `quantize --report`: the two models compared on the data
//! with a progress bar ([`lowbit_eval::compare`]), the HTML report written with its summary
//! ([`lowbit_eval::summary`]), and the text a person reads.
//!
//! Samples are fed as calibration feeds them ([`lowbit_data::Dataset::observed_batch`]): one
//! row per run, cut to its real length, when the model has a `*mask*` input; otherwise batches
//! of 32 (the fixed batch for fixed-batch models).

use crate::inputs::load_dataset;
use crate::models::new_session;
use crate::progress::{advance, progress};
use crate::text::plural;
use anyhow::{Context, Result};
use lowbit_data::labels::read_labels;
use lowbit_data::Preprocess;
use lowbit_eval::compare::{compare_models, CompareOptions, CompareReport};
use lowbit_eval::report::render_html;
use lowbit_eval::score::{choose_output, load_with_size, ScoredModel};
use lowbit_eval::summary::report_summary;
use std::fmt::Write as _;
use std::path::Path;

/// Samples compared by default (the comparison runs both models and every tensor's Q/DQ).
pub const DEFAULT_SAMPLES: usize = 100;
/// Batch-1 runs timed per model for the report's latency line.
const LATENCY_RUNS: usize = 50;

/// What [`noise_report`] needs besides the two models.
pub struct NoiseReportRequest<'a> {
    pub fp32_path: &'a Path,
    pub quant_path: &'a Path,
    pub data: &'a Path,
    pub preprocess: Option<&'a Preprocess>,
    pub samples: usize,
    pub labels: Option<&'a Path>,
    pub threads: usize,
    pub trim: bool,
    pub html: Option<&'a Path>,
    pub quiet: bool,
}

/// Compares, then writes the HTML report the request names; returns the comparison.
pub fn noise_report(req: &NoiseReportRequest) -> Result<CompareReport> {
    let (fp32, fp32_bytes) = load_with_size(req.fp32_path)?;
    let (quant, quant_bytes) = load_with_size(req.quant_path)?;
    let session = new_session(&fp32, req.fp32_path, req.threads)?;
    let mut data = load_dataset(&session, req.data, req.preprocess, req.quiet)?;
    data.limit(req.samples.min(data.samples))?;
    let ranges = data.ranges(data.observed_batch(req.trim));

    let bar = progress(data.samples as u64, req.quiet, "compare");
    let mut feed_error = None;
    let feeds = ranges.iter().map_while(|&(s, e)| match data.feeds(s, e, req.trim) {
        Ok(f) => {
            bar.inc((e - s) as u64);
            Some(f)
        }
        Err(err) => {
            feed_error = Some(err);
            None
        }
    });
    let opts = CompareOptions {
        threads: req.threads,
        fp32_model: req.fp32_path.display().to_string(),
        quant_model: req.quant_path.display().to_string(),
    };
    let report = compare_models(&fp32, &quant, feeds, &opts);
    bar.finish_and_clear();
    if let Some(e) = feed_error {
        return Err(e.into());
    }
    let report = report.with_context(|| {
        format!("cannot compare {} with {}", req.quant_path.display(), req.fp32_path.display())
    })?;

    if let Some(path) = req.html {
        let output = choose_output(&fp32, req.fp32_path, None)?;
        let scored = |path: &Path, bytes, session| ScoredModel {
            path: path.display().to_string(),
            bytes,
            session,
            output: output.clone(),
        };
        let quant_session = new_session(&quant, req.quant_path, req.threads)?;
        let a = scored(req.fp32_path, fp32_bytes, session);
        let b = scored(req.quant_path, quant_bytes, quant_session);
        let labels = match req.labels {
            Some(p) => Some(read_labels(p, data.samples, req.data)?),
            None => None,
        };
        let bar = progress(2 * LATENCY_RUNS as u64, req.quiet, "latency");
        let summary = report_summary(
            &a,
            &b,
            &mut data,
            labels.as_deref(),
            req.trim,
            LATENCY_RUNS,
            &mut advance(&bar),
        );
        bar.finish_and_clear();
        let html = render_html(&report, Some(&summary?));
        lowbit_tensor::npy::write_atomic(path, html.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(report)
}

/// The text a person reads: outputs, then the `top` worst layers with hints.
pub fn render_text(r: &CompareReport, top: usize) -> String {
    let mut out = String::new();
    let db = |v: f64| if v.is_finite() { format!("{v:.1} dB") } else { "exact".into() };
    let _ = writeln!(
        out,
        "compared over {} sample{} ({} run{}): {} quantized activations, {} quantized weights",
        r.samples,
        plural(r.samples),
        r.runs,
        plural(r.runs),
        r.activations.len(),
        r.weights.len()
    );
    for o in &r.outputs {
        let _ = writeln!(
            out,
            "output {}: SQNR {}, cosine {:.6}, max |error| {:.4}",
            o.name,
            db(o.noise.sqnr_db),
            o.noise.cosine,
            o.noise.max_abs
        );
    }
    let _ = writeln!(out, "\nworst layers (isolated SQNR: what each layer adds):");
    for (i, l) in r.ranking.iter().take(top).enumerate() {
        let _ =
            writeln!(out, "{:>3}. {} ({}) {}: {}", i + 1, l.node, l.op_type, db(l.sqnr_db), l.hint);
    }
    if r.ranking.len() > top {
        let _ = writeln!(out, "     … {} more in --json / --report", r.ranking.len() - top);
    }
    out
}
