//! `lowbit quantize MODEL -o OUT [--mode static|dynamic|weight-only|fp16|bf16] ...`: quantizes a
//! model with [`lowbit_quant::quantize::quantize_model`] and prints what it did (nodes per op
//! type, excluded nodes, sizes before and after).
//!
//! Static mode needs calibration ranges: `--ranges` (a table from `lowbit calibrate`) or
//! `--data` (calibrated here, by the same code as `lowbit calibrate`). Every output is checked
//! before any work ([`crate::paths`]): the input is never overwritten, an existing output only
//! with `--force`; outputs are written atomically.

use crate::calibration::{calibrate_model, dataset_batches, CalibrationData};
use crate::cli::QuantizeArgs;
use crate::inputs::data_format;
use crate::models::load_model;
use crate::noise_report::{noise_report, render_text, NoiseReportRequest, DEFAULT_SAMPLES};
use crate::paths::OutputPaths;
use crate::progress::Bars;
use crate::text::{human_bytes, plural, print};
use crate::usage::{usage_bail, PartialQuantization, ValidationFailed};
use anyhow::{Context, Result};
use lowbit_eval::validate::{validate_models, Floor};
use lowbit_onnx::pb::ModelProto;
use lowbit_quant::calibrate::dataset::DatasetBatches;
use lowbit_quant::calibrate::{CalibrationTable, Method};
use lowbit_quant::config::{AdaRoundOptions, Algorithms, BiasCorrection};
use lowbit_quant::passes::Exclusions;
use lowbit_quant::quantize::{
    parse_int_type, quantize_run, QuantMode, QuantPlan, QuantizeConfig, QuantizeInputs,
};
use lowbit_quant::RangeFit;
use std::fmt::Write as _;

/// The quantizer's settings from the command line (clap has already checked the names).
fn config(args: &QuantizeArgs) -> Result<QuantizeConfig> {
    let mode: QuantMode = args.mode.parse()?;
    let method: Method = args.method.parse()?;
    let exclude = Exclusions::parse(&args.exclude);
    let cfg = QuantizeConfig {
        mode,
        method,
        target: args.target.parse()?,
        activations: args.activations.as_deref().map(parse_int_type).transpose()?,
        weights: parse_int_type(&args.weights)?,
        per_channel: !args.per_tensor,
        weight_range: args.weight_range.as_deref().map(|r| match r {
            "mse" => RangeFit::Mse,
            _ => RangeFit::MinMax,
        }),
        block_size: args.block_size,
        int8_ends: args.int4_ends.then_some(false),
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
    let format = data_format(&args.format)?;
    let preprocess = format.preprocess.as_ref();
    if cfg.mode == QuantMode::Static && args.data.is_none() && args.ranges.is_none() {
        usage_bail!(
            "static quantization needs calibration data: pass --data DIR (one <input>.npy per \
             graph input) or --ranges ranges.json (from `lowbit calibrate`), or choose \
             --mode dynamic, weight-only or fp16, which need none"
        );
    }
    let source = args.data.as_ref().map(|d| format.source(d)).transpose()?;
    let report_data = match &args.report_data {
        Some(d) => Some(format.source(d)?),
        None => source.clone(),
    };
    if let (Some(r), None) = (&args.report, &report_data) {
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

    let plan = QuantPlan::resolve(&cfg)?;
    let alg = &plan.algorithms;
    if (alg.needs_samples() || alg.transforms_fp32()) && args.data.is_none() {
        usage_bail!(
            "--equalize, --smooth-quant, --adaround and --bias-correction empirical run on \
             calibration samples: pass --data DIR"
        );
    }
    let model = load_model(&args.model)?;
    let fp32 = (args.validate > 0 && args.data.is_some()).then(|| model.clone());
    let file_before = std::fs::metadata(&args.model).map(|m| m.len()).ok();
    let mut out = String::new();
    let cal_opts = |d| CalibrationData {
        threads: args.threads,
        trim: !args.no_trim,
        quiet,
        ..CalibrationData::new(d, preprocess, args.samples)
    };
    let bars = Bars::new(quiet);
    let (q, summary) = if alg.any() {
        // The steps calibrate (again, after a transform) and run on the samples themselves.
        let data = source.as_ref().expect("checked above");
        let mut samples = dataset_batches(&model, &args.model, &cal_opts(data))?;
        let table = args.ranges.as_ref().map(|r| CalibrationTable::load(r)).transpose()?;
        let inputs = QuantizeInputs {
            table: table.as_ref(),
            samples: Some(&mut samples),
            threads: args.threads,
            progress: &bars,
        };
        quantize_run(model, &plan, inputs)
    } else {
        let table = match (cfg.mode, &args.ranges, &source) {
            (QuantMode::Static, Some(r), _) => Some(CalibrationTable::load(r)?),
            (QuantMode::Static, None, Some(d)) => {
                let run = calibrate_model(&model, &args.model, &cal_opts(d))?;
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
        quantize_run(model, &plan, QuantizeInputs::table(table.as_ref()))
    }
    .with_context(|| format!("cannot quantize {}", args.model.display()))?;
    out.push_str(&summary.to_string());
    let coverage = summary.coverage();
    if coverage.is_partial() {
        if !args.allow_partial {
            print(&out)?;
            return Err(anyhow::Error::new(PartialQuantization(format!(
                "only {coverage}\nnot written: the file would be (almost) the FP32 model; \
                 pass --allow-partial to write it anyway"
            ))));
        }
        out.push_str("warning: fewer than 10 % of the weighted nodes quantized; written anyway (--allow-partial)\n");
    }
    match (&fp32, &source) {
        (Some(fp32), Some(data)) => {
            let opts = cal_opts(data);
            gate(fp32, &q, &args, &opts, &mut out)?;
        }
        _ if args.validate > 0 => out.push_str(
            "note: not validated: pass --data to compare the quantized model's outputs with \
             FP32 before it is written\n",
        ),
        _ => {}
    }
    lowbit_onnx::save_model(&q, &args.output).context("cannot write the quantized model")?;
    let file_after = std::fs::metadata(&args.output).map(|m| m.len()).ok();

    if let (Some(b), Some(a)) = (file_before, file_after) {
        let _ = writeln!(out, "file: {} -> {}", human_bytes(b), human_bytes(a));
    }
    let _ = writeln!(out, "wrote {}", args.output.display());
    if let (Some(html), Some(data)) = (&args.report, &report_data) {
        if args.report_data.is_none() && !quiet {
            eprintln!("note: --report compares on the calibration samples (--data); pass --report-data DIR for held-out ones");
        }
        let req = NoiseReportRequest {
            fp32_path: &args.model,
            quant_path: &args.output,
            data,
            preprocess,
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

/// The validation gate ([`validate_models`]): the quantized model as deployment runs it against
/// the FP32 one on held-back samples; below the floor it fails with [`ValidationFailed`],
/// naming the worst layers, unless `--allow-degraded`.
fn gate(
    fp32: &ModelProto,
    q: &ModelProto,
    args: &QuantizeArgs,
    opts: &CalibrationData,
    out: &mut String,
) -> Result<()> {
    let all = CalibrationData { samples: None, quiet: true, ..*opts };
    let all = dataset_batches(fp32, &args.model, &all)?;
    let calibrated = opts.samples.unwrap_or(all.data.samples);
    let (mut samples, held_back) =
        DatasetBatches::validation(all.data, all.trim, calibrated, args.validate);
    let floor = Floor { min_sqnr_db: args.min_output_sqnr, ..Floor::default() };
    let v = validate_models(fp32, q, &mut samples, floor, args.threads)
        .context("validation run failed")?;
    let which = if held_back { "held-back" } else { "calibration (no others in --data)" };
    let _ = writeln!(out, "validation on {} {which} samples:", v.samples);
    for l in v.lines() {
        let _ = writeln!(out, "  {l}");
    }
    if v.passed() {
        return Ok(());
    }
    let worst: Vec<String> = v
        .worst_layers
        .iter()
        .map(|l| format!("{} ({}): {:.1} dB, {}", l.node, l.op_type, l.sqnr_db, l.hint))
        .collect();
    let msg = format!(
        "the quantized model fails validation ({}); worst layers:\n  {}",
        v.failures.join("; "),
        worst.join("\n  ")
    );
    if args.allow_degraded {
        let _ = writeln!(out, "warning: {msg}\nwarning: written anyway (--allow-degraded)");
        return Ok(());
    }
    print(out)?;
    Err(anyhow::Error::new(ValidationFailed(format!(
        "{msg}\nnot written: try --per-channel, another --method, --exclude on those layers, or \
         pass --allow-degraded to write it anyway"
    ))))
}
