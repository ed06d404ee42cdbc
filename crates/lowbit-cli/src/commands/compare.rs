//! `lowbit compare FP32 QUANT --data DIR [--samples N] [--report F.html] [--json]`: per-layer
//! quantization noise ([`lowbit_eval::compare`]) between an FP32 model and a QDQ model made from
//! it (by lowbit or by another tool: tensors are matched by name), printed worst layers first
//! with a hint each (or as one JSON object, `docs/json.md`), and written as a self-contained
//! HTML report whose summary adds file sizes, batch-1 latency of both models and, with
//! `--labels`, top-1 accuracy of both ([`crate::noise_report`]).

use crate::cli::CompareArgs;
use crate::inputs::data_format;
use crate::noise_report::{noise_report, render_text, NoiseReportRequest, DEFAULT_SAMPLES};
use crate::paths::OutputPaths;
use crate::text::{print, print_json};
use anyhow::Result;
use std::fmt::Write as _;

pub fn compare(args: CompareArgs, quiet: bool) -> Result<()> {
    let format = data_format(&args.format)?;
    let source = format.source(&args.data)?;
    let inputs = [("the FP32 model", args.fp32.as_path()), ("the quantized model", &args.quant)];
    if let Some(r) = &args.report {
        OutputPaths::new(args.force, &inputs).file("--report", r)?;
    }
    let req = NoiseReportRequest {
        fp32_path: &args.fp32,
        quant_path: &args.quant,
        data: &source,
        preprocess: format.preprocess.as_ref(),
        samples: args.samples.map_or(DEFAULT_SAMPLES, |n| n as usize),
        labels: args.labels.as_deref(),
        threads: args.threads.n,
        trim: !args.no_trim,
        html: args.report.as_deref(),
        quiet: quiet || args.json.on,
    };
    let report = noise_report(&req)?;
    if args.json.on {
        return print_json(&report);
    }
    let mut text = render_text(&report, 10);
    if let Some(p) = &args.report {
        let _ = writeln!(text, "wrote report {}", p.display());
    }
    print(&text)
}
