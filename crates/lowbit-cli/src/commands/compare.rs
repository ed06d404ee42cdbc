//! `lowbit compare FP32 QUANT --data DIR [--samples N] [--json F] [--report F.html]`: per-layer
//! quantization noise ([`lowbit_eval::compare`]) between an FP32 model and a QDQ model made from
//! it (by lowbit or by another tool: tensors are matched by name), printed worst layers first
//! with a hint each, written as JSON (`docs/json.md`) and as a self-contained HTML report.
//!
//! `lowbit quantize … --report F.html` calls [`noise_report`] on the model it just wrote.
//!
//! Samples are fed as calibration feeds them: one row per run, cut to its real length, when
//! the model has a `*mask*` input; otherwise batches of [`DEFAULT_BATCH`] (the fixed batch for
//! fixed-batch models). The report's summary adds file sizes, batch-1 latency of both models
//! and, with `--labels`, top-1 accuracy of both.

use super::eval::{choose_output, load_data, load_sized, read_labels, time_runs, Scored};
use super::run::{progress, DEFAULT_BATCH};
use super::{new_session, preprocess_arg, print};
use crate::cli::CompareArgs;
use anyhow::{Context, Result};
use lowbit_data::{Dataset, Preprocess};
use lowbit_eval::compare::{compare_models, CompareOptions, CompareReport};
use lowbit_eval::metrics::argmax;
use lowbit_eval::report::{render_html, BeforeAfter, ReportSummary, SummaryMetric};
use lowbit_onnx::pb::ModelProto;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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
    pub json: Option<&'a Path>,
    pub html: Option<&'a Path>,
    pub quiet: bool,
}

/// Feeding order for a comparison (see the module docs).
fn batch_of(data: &Dataset, trim: bool) -> usize {
    match data.fixed_batch {
        Some(b) => b,
        None if trim && data.mask_name().is_some() => 1,
        None => DEFAULT_BATCH,
    }
}

/// Compares, then writes the JSON and HTML the request names; returns the report.
pub fn noise_report(req: &NoiseReportRequest) -> Result<CompareReport> {
    let (fp32, fp32_bytes) = load_sized(req.fp32_path)?;
    let (quant, quant_bytes) = load_sized(req.quant_path)?;
    let session = new_session(&fp32, req.fp32_path, req.threads)?;
    let mut data = load_data(&session, req.data, req.preprocess, req.quiet)?;
    data.limit(req.samples.min(data.samples))?;
    let ranges = data.ranges(batch_of(&data, req.trim));

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

    if let Some(path) = req.json {
        let text = serde_json::to_string_pretty(&report)?;
        lowbit_tensor::npy::write_atomic(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = req.html {
        let summary = summary(req, (fp32, fp32_bytes), (quant, quant_bytes), session, &mut data)?;
        let html = render_html(&report, Some(&summary));
        lowbit_tensor::npy::write_atomic(path, html.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(report)
}

/// Sizes, batch-1 latency and (with labels) top-1 of both models, for the report's summary.
fn summary(
    req: &NoiseReportRequest,
    (fp32, fp32_bytes): (ModelProto, u64),
    (quant, quant_bytes): (ModelProto, u64),
    fp32_session: lowbit_engine::Session,
    data: &mut Dataset,
) -> Result<ReportSummary> {
    let output = choose_output(&fp32, req.fp32_path, None)?;
    let quant_session = new_session(&quant, req.quant_path, req.threads)?;
    let scored = |path: &Path, bytes, session| Scored {
        path: path.display().to_string(),
        bytes,
        session,
        output: output.clone(),
    };
    let (a, b) = (
        scored(req.fp32_path, fp32_bytes, fp32_session),
        scored(req.quant_path, quant_bytes, quant_session),
    );
    let la = time_runs(&a, data, LATENCY_RUNS, req.trim, req.quiet)?;
    let lb = time_runs(&b, data, LATENCY_RUNS, req.trim, req.quiet)?;
    let latency_ms = match (la, lb) {
        (Some(x), Some(y)) => Some(BeforeAfter { fp32: x.median_ms, quant: y.median_ms }),
        _ => None,
    };
    let metric = match req.labels {
        Some(path) => {
            let labels = read_labels(path, data.samples, req.data)?;
            let ranges = data.ranges(batch_of(data, req.trim));
            let mut correct = [0usize; 2];
            for (s, e) in ranges {
                for (k, m) in [&a, &b].into_iter().enumerate() {
                    let out = m.run(data, s, e, req.trim)?;
                    let v = out.to_f32_vec()?;
                    let per = v.len() / (e - s).max(1);
                    for (i, row) in v.chunks(per.max(1)).enumerate() {
                        correct[k] += usize::from(argmax(row) == labels[s + i]);
                    }
                }
            }
            let pct = |c: usize| 100.0 * c as f64 / data.samples.max(1) as f64;
            Some(SummaryMetric {
                name: "top-1 %".into(),
                value: BeforeAfter { fp32: pct(correct[0]), quant: pct(correct[1]) },
            })
        }
        None => None,
    };
    Ok(ReportSummary {
        fp32_model: req.fp32_path.display().to_string(),
        quant_model: req.quant_path.display().to_string(),
        fp32_bytes: a.bytes,
        quant_bytes: b.bytes,
        metric,
        latency_ms,
    })
}

/// The text a person reads: outputs, then the worst layers with hints.
pub fn render_text(r: &CompareReport, top: usize) -> String {
    let mut out = String::new();
    let db = |v: f64| if v.is_finite() { format!("{v:.1} dB") } else { "exact".into() };
    let _ = writeln!(
        out,
        "compared over {} run{}: {} quantized activations, {} quantized weights",
        r.samples,
        if r.samples == 1 { "" } else { "s" },
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

pub fn compare(args: CompareArgs, quiet: bool) -> Result<()> {
    let preprocess = preprocess_arg(args.preprocess.as_deref())?;
    let req = NoiseReportRequest {
        fp32_path: &args.fp32,
        quant_path: &args.quant,
        data: &args.data,
        preprocess: preprocess.as_ref(),
        samples: args.samples.map_or(DEFAULT_SAMPLES, |n| n as usize),
        labels: args.labels.as_deref(),
        threads: args.threads,
        trim: !args.no_trim,
        json: args.json.as_deref(),
        html: args.report.as_deref(),
        quiet,
    };
    let report = noise_report(&req)?;
    let mut text = render_text(&report, 10);
    for (what, path) in [("JSON", &args.json), ("report", &args.report)] {
        if let Some(p) = path {
            let _ = writeln!(text, "wrote {what} {}", p.display());
        }
    }
    print(&text)
}

/// `--report` / `--json` paths must not be the models.
pub fn check_outputs(paths: &[&PathBuf], models: &[&Path]) -> Result<()> {
    for p in paths {
        for m in models {
            if super::calibrate::same_file(p, m) {
                anyhow::bail!("{} is an input model: choose another output file", p.display());
            }
        }
    }
    Ok(())
}
