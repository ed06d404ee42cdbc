//! `lowbit quantize MODEL -o OUT [--mode static|dynamic|weight-only|fp16|bf16] ...`: quantizes a
//! model with [`lowbit_quant::quantize::quantize_model`] and prints what it did (nodes per op
//! type, excluded nodes, sizes before and after).
//!
//! Static mode needs calibration ranges: `--ranges` (a table from `lowbit calibrate`) or
//! `--data` (calibrated here, by the same code as `lowbit calibrate`). The input is never
//! overwritten; an existing output only with `--force`; the output is written atomically.

use super::calibrate::{calibrate_model, calibration_samples, same_file, CalibrationData};
use super::compare::{
    check_outputs, noise_report, render_text, NoiseReportRequest, DEFAULT_SAMPLES,
};
use super::new_unfused_session;
use super::{human_bytes, load_model, preprocess_arg, print};
use crate::cli::QuantizeArgs;
use crate::samples::Bars;
use crate::usage::usage_bail;
use anyhow::{bail, Context, Result};
use lowbit_quant::calibrate::{CalibrationTable, Method};
use lowbit_quant::config::{AdaRoundOptions, Algorithms, BiasCorrection};
use lowbit_quant::passes::Exclusions;
use lowbit_quant::quantize::{
    parse_int_type, quantize_run, QuantMode, QuantPlan, QuantizeConfig, QuantizeInputs,
};
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
        target: args.target.parse()?,
        activations: args.activations.as_deref().map(parse_int_type).transpose()?,
        weights: parse_int_type(&args.weights)?,
        per_channel: !args.per_tensor,
        block_size: args.block_size,
        reduce_range: match (args.reduce_range, args.no_reduce_range) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        min_activation_sqnr: (args.min_sqnr > 0.0).then_some(args.min_sqnr),
        quantize_embeddings: args.float_embeddings.then_some(false),
        exclude,
        algorithms: Algorithms {
            equalize: args.equalize,
            smooth_quant: args.smooth_quant,
            adaround: args.adaround.then(|| AdaRoundOptions {
                iterations: args.adaround_iters,
                time_budget_s: args.time_budget.map(|m| m * 60.0),
                ..AdaRoundOptions::default()
            }),
            bias_correction: match args.bias_correction.as_deref() {
                None => None,
                Some("analytic") => Some(BiasCorrection::Analytic),
                Some(_) => Some(BiasCorrection::Empirical),
            },
        },
        ..QuantizeConfig::default()
    };
    if let Err(e) = cfg.validate() {
        usage_bail!("{e}");
    }
    Ok(cfg)
}

pub fn quantize(args: QuantizeArgs, quiet: bool) -> Result<()> {
    let cfg = config(&args)?;
    let preprocess = preprocess_arg(args.preprocess.as_deref())?;
    if cfg.mode == QuantMode::Static && args.data.is_none() && args.ranges.is_none() {
        usage_bail!(
            "static quantization needs calibration data: pass --data DIR (one <input>.npy per \
             graph input) or --ranges ranges.json (from `lowbit calibrate`), or choose \
             --mode dynamic, weight-only or fp16, which need none"
        );
    }
    if same_file(&args.model, &args.output) {
        bail!(
            "-o {} is the input model: lowbit never overwrites its input; choose another \
             output file",
            args.output.display()
        );
    }
    if args.output.exists() && !args.force {
        bail!("{} already exists; pass --force to replace it", args.output.display());
    }
    if cfg.mode != QuantMode::Static && !quiet && (args.data.is_some() || args.ranges.is_some()) {
        eprintln!("note: --mode {} needs no calibration; ignoring --data/--ranges", cfg.mode);
    }
    let report_data = args.report_data.as_ref().or(args.data.as_ref());
    if let Some(r) = &args.report {
        if report_data.is_none() {
            usage_bail!(
                "--report {} needs samples to compare on: pass --report-data DIR (or --data)",
                r.display()
            );
        }
        check_outputs(&[r], &[&args.model, &args.output])?;
    }
    if preprocess.is_some() && args.data.is_none() && !quiet {
        eprintln!("note: --preprocess applies to --data only; ignoring it");
    }

    let plan = QuantPlan::resolve(&cfg)?;
    let alg = &plan.algorithms;
    if (alg.needs_samples() || alg.transforms_fp32()) && args.data.is_none() {
        usage_bail!(
            "--equalize, --smooth-quant, --adaround and --bias-correction empirical run on \
             calibration samples: pass --data DIR"
        );
    }
    let model = load_model(&args.model)?;
    let file_before = std::fs::metadata(&args.model).map(|m| m.len()).ok();
    let mut out = String::new();
    let cal_opts = |d| CalibrationData {
        data: d,
        preprocess: preprocess.as_ref(),
        samples: args.samples.map(|n| n as usize),
        threads: args.threads,
        trim: !args.no_trim,
        quiet,
    };
    let bars = Bars::new(quiet);
    let (q, summary) = if alg.any() {
        // The steps calibrate (again, after a transform) and run on the samples themselves.
        let data = args.data.as_ref().expect("checked above");
        let session = new_unfused_session(&model, &args.model, args.threads)?;
        let mut samples = calibration_samples(&session, &cal_opts(data))?;
        drop(session);
        let table = args.ranges.as_ref().map(|r| CalibrationTable::load(r)).transpose()?;
        let inputs = QuantizeInputs {
            table: table.as_ref(),
            samples: Some(&mut samples),
            threads: args.threads,
            progress: &bars,
        };
        quantize_run(model, &plan, inputs)
    } else {
        let table = match (cfg.mode, &args.ranges, &args.data) {
            (QuantMode::Static, Some(r), _) => Some(CalibrationTable::load(r)?),
            (QuantMode::Static, None, Some(d)) => {
                let run = calibrate_model(&model, &args.model, &cal_opts(d))?;
                let _ = writeln!(
                    out,
                    "calibrated {} tensors on {} sample{} in {:.2} s",
                    run.table.tensors.len(),
                    run.samples,
                    if run.samples == 1 { "" } else { "s" },
                    run.elapsed.as_secs_f64()
                );
                Some(run.table)
            }
            _ => None,
        };
        quantize_run(model, &plan, QuantizeInputs::table(table.as_ref()))
    }
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
            json: None,
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
