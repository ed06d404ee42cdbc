//! `lowbit quantize MODEL -o OUT [--mode static|dynamic|weight-only|fp16|bf16] ...`: quantizes a
//! model with [`lowbit_quant::quantize::quantize_model`] and prints what it did (nodes per op
//! type, excluded nodes, sizes before and after).
//!
//! Static mode needs calibration ranges: `--ranges` (a table from `lowbit calibrate`) or
//! `--data` (calibrated here, by the same code as `lowbit calibrate`). Every output is checked
//! before any work ([`crate::paths`]): the input is never overwritten, an existing output only
//! with `--force`; outputs are written atomically.

use crate::calibration::{calibrate_model, CalibrationData};
use crate::cli::QuantizeArgs;
use crate::inputs::preprocess_arg;
use crate::models::load_model;
use crate::noise_report::{noise_report, render_text, NoiseReportRequest, DEFAULT_SAMPLES};
use crate::paths::OutputPaths;
use crate::text::{human_bytes, plural, print};
use crate::usage::usage_bail;
use anyhow::{Context, Result};
use lowbit_quant::calibrate::{CalibrationTable, Method};
use lowbit_quant::passes::Exclusions;
use lowbit_quant::quantize::{parse_int_type, quantize_model, QuantMode, QuantizeConfig};
use std::fmt::Write as _;

/// The quantizer's settings from the command line (clap has already checked the names).
fn config(args: &QuantizeArgs) -> Result<QuantizeConfig> {
    let mode: QuantMode = args.mode.parse()?;
    let method: Method = args.method.parse()?;
    let mut exclude = Exclusions::default();
    for p in &args.exclude {
        if let Some(op) = p.strip_prefix("op:") {
            exclude.op_types.push(op.to_string());
        } else if p.contains(['*', '?']) {
            exclude.patterns.push(p.clone());
        } else {
            exclude.node_names.push(p.clone());
        }
    }
    let cfg = QuantizeConfig {
        mode,
        method,
        activations: parse_int_type(&args.activations)?,
        weights: parse_int_type(&args.weights)?,
        per_channel: !args.per_tensor,
        block_size: args.block_size,
        reduce_range: !args.no_reduce_range,
        min_activation_sqnr: (args.min_sqnr > 0.0).then_some(args.min_sqnr),
        exclude,
        ..QuantizeConfig::default()
    };
    if let Err(e) = cfg.validate() {
        usage_bail!("{e}");
    }
    Ok(cfg)
}

pub fn quantize(args: QuantizeArgs, quiet: bool) -> Result<()> {
    let cfg = config(&args)?;
    let preprocess = preprocess_arg(&args.pre)?;
    if cfg.mode == QuantMode::Static && args.data.is_none() && args.ranges.is_none() {
        usage_bail!(
            "static quantization needs calibration data: pass --data DIR (one <input>.npy per \
             graph input) or --ranges ranges.json (from `lowbit calibrate`), or choose \
             --mode dynamic, weight-only or fp16, which need none"
        );
    }
    let report_data = args.report_data.as_ref().or(args.data.as_ref());
    if let (Some(r), None) = (&args.report, report_data) {
        usage_bail!(
            "--report {} needs samples to compare on: pass --report-data DIR (or --data)",
            r.display()
        );
    }
    let mut inputs = vec![("the input model", args.model.as_path())];
    if let Some(r) = &args.ranges {
        inputs.push(("the calibration table", r.as_path()));
    }
    let mut outputs = OutputPaths::new(args.force, &inputs);
    outputs.file("-o", &args.output)?;
    if let Some(r) = &args.report {
        outputs.file("--report", r)?;
    }
    if cfg.mode != QuantMode::Static && !quiet && (args.data.is_some() || args.ranges.is_some()) {
        eprintln!("note: --mode {} needs no calibration; ignoring --data/--ranges", cfg.mode);
    }
    if preprocess.is_some() && args.data.is_none() && !quiet {
        eprintln!("note: --preprocess applies to --data only; ignoring it");
    }

    let model = load_model(&args.model)?;
    let file_before = std::fs::metadata(&args.model).map(|m| m.len()).ok();
    let mut out = String::new();
    let table = match (cfg.mode, &args.ranges, &args.data) {
        (QuantMode::Static, Some(r), _) => Some(CalibrationTable::load(r)?),
        (QuantMode::Static, None, Some(d)) => {
            let opts = CalibrationData {
                threads: args.threads,
                trim: !args.no_trim,
                quiet,
                ..CalibrationData::new(d, preprocess.as_ref(), args.samples)
            };
            let run = calibrate_model(&model, &args.model, &opts)?;
            let _ = writeln!(
                out,
                "calibrated {} tensors on {} sample{} in {:.2} s",
                run.table.tensors.len(),
                run.samples,
                plural(run.samples),
                run.elapsed.as_secs_f64()
            );
            Some(run.table)
        }
        _ => None,
    };
    let (q, summary) = quantize_model(model, &cfg, table.as_ref())
        .with_context(|| format!("cannot quantize {}", args.model.display()))?;
    lowbit_onnx::save_model(&q, &args.output).context("cannot write the quantized model")?;
    let file_after = std::fs::metadata(&args.output).map(|m| m.len()).ok();

    out.push_str(&summary.to_string());
    if let (Some(b), Some(a)) = (file_before, file_after) {
        let _ = writeln!(out, "file: {} -> {}", human_bytes(b), human_bytes(a));
    }
    let _ = writeln!(out, "wrote {}", args.output.display());
    if let (Some(html), Some(data)) = (&args.report, report_data) {
        if args.report_data.is_none() && !quiet {
            eprintln!("note: --report compares on the calibration samples (--data); pass --report-data DIR for held-out ones");
        }
        let req = NoiseReportRequest {
            fp32_path: &args.model,
            quant_path: &args.output,
            data,
            preprocess: preprocess.as_ref(),
            samples: args.samples.map_or(DEFAULT_SAMPLES, |n| n as usize),
            labels: args.report_labels.as_deref(),
            threads: args.threads,
            trim: !args.no_trim,
            html: Some(html),
            quiet,
        };
        let report = noise_report(&req)?;
        out.push('\n');
        out.push_str(&render_text(&report, 5));
        let _ = writeln!(out, "wrote report {}", html.display());
    }
    print(&out)
}
