//! `lowbit tune MODEL -o OUT.onnx --data CALIB --eval-data EVAL [--labels FILE.npy |
//! --reference-only] [--metric ...] [--max-drop X] [--objective latency|size] ...`: chooses each
//! layer's precision under an accuracy budget with [`lowbit_eval::tune`], writes the chosen
//! model, and with `--json` (stdout), `--json-out FILE` / `--report` every configuration it
//! measured and the Pareto front.
//!
//! The data flags are the other commands' (`--preprocess`, `--tokenizer`, `--pair-fields`,
//! `--gold-field`); calibration is `lowbit calibrate`'s, done once. Outputs are checked before
//! any work and written atomically.

use crate::calibration::{calibrate_model, dataset_batches, CalibrationData};
use crate::cli::TuneArgs;
use crate::inputs::{data_format, keep_samples, load_dataset};
use crate::models::{load_model, new_session, new_unfused_session};
use crate::paths::OutputPaths;
use crate::progress::{advance, progress, Bars};
use crate::text::{human_bytes, print, print_json};
use crate::usage::usage_bail;
use anyhow::{bail, Context, Result};
use lowbit_data::labels::read_labels;
use lowbit_eval::metrics::argmax;
use lowbit_eval::report::render_tune_html;
use lowbit_eval::score::{choose_output, ScoredModel};
use lowbit_eval::tune::scorer::{Scorer, Truth};
use lowbit_eval::tune::search::Strategy;
use lowbit_eval::tune::{
    tune as run_tune, Metric, Objective, Precision, TuneInputs, TuneOptions, TuneReport,
};
use lowbit_quant::config::AdaRoundOptions;
use lowbit_quant::quantize::QuantizeConfig;
use lowbit_quant::samples::SampleSource;
use std::fmt::Write as _;
use std::time::Duration;

fn ladder(args: &TuneArgs, objective: Objective) -> Result<Vec<Precision>> {
    if args.candidates.is_empty() {
        return Ok(match objective {
            Objective::Latency => {
                vec![Precision::Int8, Precision::Int16, Precision::Fp16, Precision::Fp32]
            }
            Objective::Size => {
                vec![Precision::Int4, Precision::Int8, Precision::Fp16, Precision::Fp32]
            }
        });
    }
    let mut out = Vec::new();
    for c in &args.candidates {
        let p: Precision = match c.trim().parse() {
            Ok(p) => p,
            Err(e) => usage_bail!("--candidates: {e}"),
        };
        if out.contains(&p) {
            usage_bail!("--candidates lists {p} twice");
        }
        out.push(p);
    }
    Ok(out)
}

pub fn tune(args: TuneArgs, quiet: bool) -> Result<()> {
    let format = data_format(&args.format)?;
    let pre = format.preprocess.as_ref();
    let objective = if args.objective == "size" { Objective::Size } else { Objective::Latency };
    let ladder = ladder(&args, objective)?;
    if objective == Objective::Latency && args.latency == 0 {
        usage_bail!("--objective latency times each configuration: --latency must be at least 1");
    }
    if !(0.0..1.0).contains(&args.holdout) {
        usage_bail!(
            "--holdout must be in [0, 1) (the share of --eval-data held out), got {}",
            args.holdout
        );
    }
    if !args.max_drop.is_finite() || (args.max_drop < 0.0 && args.metric.as_deref() != Some("sqnr"))
    {
        usage_bail!("--max-drop must be a number >= 0, got {}", args.max_drop);
    }
    if !(args.confidence > 0.0 && args.confidence < 1.0) {
        usage_bail!("--confidence must be a probability in (0, 1), got {}", args.confidence);
    }
    if args.batch == 0 {
        usage_bail!("--batch must be at least 1");
    }
    let pairs = format.pair_fields().is_some();
    let metric = match args.metric.as_deref() {
        Some("spearman") => Metric::Spearman,
        Some("cosine") => Metric::Cosine,
        Some("sqnr") => Metric::Sqnr,
        Some(_) => Metric::Top1,
        None if pairs => Metric::Spearman,
        None => Metric::Top1,
    };
    if (metric == Metric::Spearman) != pairs {
        usage_bail!(
            "--metric spearman scores sentence pairs: give --eval-data as a text file with \
             --tokenizer, --pair-fields A,B and --gold-field NAME (and only then)"
        );
    }
    let mut outputs = OutputPaths::new(args.force, &[("the input model", args.model.as_path())]);
    outputs.file("-o", &args.output)?;
    if let Some(j) = &args.json_out {
        outputs.file("--json-out", j)?;
    }
    if let Some(r) = &args.report {
        outputs.file("--report", r)?;
    }

    let model = load_model(&args.model)?;
    let output = choose_output(&model, &args.model, args.output_name.as_deref())?;
    let session = new_session(&model, &args.model, args.threads.n)?;

    // Calibration, once.
    let cal_src = format.source(&args.data)?;
    let cal = CalibrationData {
        threads: args.threads.n,
        trim: !args.no_trim,
        quiet,
        ..CalibrationData::new(&cal_src, pre, args.samples)
    };
    let table = calibrate_model(&model, &args.model, &cal)?.table;
    // AdaRound replays the same calibration samples.
    let adaround = args.adaround.then(|| AdaRoundOptions {
        iterations: args.adaround_iters,
        // Each layer fitted on FP32 inputs, so its learned weights fit any mix.
        fp32_inputs: true,
        ..AdaRoundOptions::default()
    });
    if adaround.is_some() && !ladder.contains(&Precision::Int4) {
        usage_bail!("--adaround learns the int4 weights' rounding: list int4 in --candidates");
    }
    if args.adaround_iters == 0 {
        usage_bail!("--adaround-iters must be at least 1");
    }
    let mut ada_samples =
        adaround.is_some().then(|| dataset_batches(&model, &args.model, &cal)).transpose()?;
    let unfused = new_unfused_session(&model, &args.model, args.threads.n)?;
    let mut noise_data = load_dataset(&unfused, &cal_src, pre, true)?;
    keep_samples(&mut noise_data, Some(args.noise_samples.max(1)))?;

    // The eval data and what it is scored against.
    let eval_src =
        if pairs { format.side(&args.eval_data, 0)? } else { format.source(&args.eval_data)? };
    let mut data = load_dataset(&session, &eval_src, pre, quiet)?;
    let samples = data.samples;
    let trim = !args.no_trim;
    let (truth, against) = match metric {
        Metric::Spearman => {
            let b = load_dataset(&session, &format.side(&args.eval_data, 1)?, pre, true)?;
            let Some(gold) = data.gold() else {
                usage_bail!("--metric spearman: pass --gold-field NAME (each pair's gold score)");
            };
            (Truth::Pairs { b, gold }, format!("gold scores of {}", args.eval_data.display()))
        }
        Metric::Cosine | Metric::Sqnr => {
            let fp32 = ScoredModel {
                path: args.model.display().to_string(),
                bytes: 0,
                session: new_session(&model, &args.model, args.threads.n)?,
                output: output.clone(),
            };
            (Truth::Reference(fp32), "the FP32 model's outputs".to_string())
        }
        Metric::Top1 => {
            let labels = match (&args.labels, args.reference_only) {
                (_, true) => None,
                (Some(p), false) => {
                    Some((read_labels(p, samples, &args.eval_data)?, p.display().to_string()))
                }
                (None, false) => data
                    .labels()
                    .map(|l| (l, format!("{} (its own labels)", args.eval_data.display()))),
            };
            match labels {
                Some((l, name)) => {
                    let mut shifted = Vec::with_capacity(l.len());
                    for (i, &x) in l.iter().enumerate() {
                        let v = x as i64 + args.label_offset;
                        if v < 0 {
                            bail!(
                                "label {x} of sample {i} with --label-offset {} is negative",
                                args.label_offset
                            );
                        }
                        shifted.push(v as usize);
                    }
                    (Truth::Classes(shifted), format!("labels {name}"))
                }
                None => {
                    // Agreement: the FP32 model's own top-1 is the label.
                    let fp32 = ScoredModel {
                        path: args.model.display().to_string(),
                        bytes: 0,
                        session,
                        output: output.clone(),
                    };
                    let bar = progress(samples as u64, quiet, "FP32 top-1");
                    let mut classes = Vec::with_capacity(samples);
                    for (s, e) in data.ranges(args.batch) {
                        let t = fp32.run(&mut data, s, e, trim)?;
                        let o = t.as_f32()?;
                        let width = o.len() / (e - s);
                        classes.extend((0..e - s).map(|i| argmax(&o[i * width..(i + 1) * width])));
                        advance(&bar)(e - s);
                    }
                    bar.finish_and_clear();
                    (Truth::Classes(classes), "the FP32 model's top-1 (agreement)".to_string())
                }
            }
        }
    };
    let scorer = Scorer { metric, data, truth, trim };
    let opts = TuneOptions {
        base: QuantizeConfig {
            target: args.target.parse()?,
            quantize_embeddings: args.float_embeddings.then_some(false),
            ..QuantizeConfig::default()
        },
        ladder,
        max_drop: args.max_drop,
        confidence: args.confidence,
        objective,
        strategy: if args.strategy == "greedy" { Strategy::Greedy } else { Strategy::Bisect },
        held_out: args.holdout,
        batch: args.batch,
        latency_samples: args.latency,
        threads: args.threads.n,
        time_budget: args.time_budget.map(|m| Duration::from_secs_f64(m.max(0.0) * 60.0)),
        adaround,
    };
    let inputs = TuneInputs {
        fp32: &model,
        model_path: args.model.display().to_string(),
        table: &table,
        sensitivity_data: noise_data,
        calibration_samples: ada_samples.as_mut().map(|s| s as &mut dyn SampleSource),
        scorer,
        output,
        against,
    };
    let tuned = run_tune(inputs, &opts, &Bars::new(quiet)).context("tune")?;
    lowbit_onnx::save_model(&tuned.model, &args.output).context("cannot write the chosen model")?;
    let r = &tuned.report;
    if let Some(j) = &args.json_out {
        let text = serde_json::to_vec_pretty(r)?;
        lowbit_tensor::npy::write_atomic(j, &text)
            .with_context(|| format!("cannot write {}", j.display()))?;
    }
    if let Some(h) = &args.report {
        lowbit_tensor::npy::write_atomic(h, render_tune_html(r).as_bytes())
            .with_context(|| format!("cannot write {}", h.display()))?;
    }
    if args.json.on {
        return print_json(r);
    }
    let mut out = render(r);
    let _ = writeln!(out, "wrote {}", args.output.display());
    for p in args.json_out.iter().chain(&args.report) {
        let _ = writeln!(out, "wrote {}", p.display());
    }
    print(&out)
}

/// The text summary: the front, the choice and the held-out confirmation.
fn render(r: &TuneReport) -> String {
    let mut s = String::new();
    let ms = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.2} ms"));
    let _ = writeln!(
        s,
        "FP32: {:.2} on {} search samples ({:?} against {}); {} configurations in {:.0} s{}",
        r.reference_metric,
        r.search_samples,
        r.metric,
        r.against,
        r.evaluated.len(),
        r.seconds,
        if r.cut_short { " (cut short by --time-budget)" } else { "" }
    );
    if let Some(a) = &r.int4_rounding {
        let _ = writeln!(
            s,
            "int4 rounding learned once ({} layers, {:.0} s): {}",
            a.layers, a.seconds, a.summary
        );
    }
    let _ = writeln!(s, "Pareto front (search samples):");
    let _ = writeln!(
        s,
        "  {:>4}  {:>9}  {:>7}  {:>10}  {:>10}  configuration",
        "#", "metric", "drop", "size", "latency"
    );
    for &i in &r.pareto {
        let e = &r.evaluated[i];
        let mix: Vec<String> = e.precisions.iter().map(|(p, n)| format!("{n} {p}")).collect();
        let _ = writeln!(
            s,
            "  {:>4}  {:>9.2}  {:>7.2}  {:>10}  {:>10}  {} [{}]{}",
            e.id,
            e.metric,
            e.drop,
            human_bytes(e.bytes),
            ms(e.latency_ms),
            e.label,
            mix.join(", "),
            if r.chosen == Some(i) { "  <- chosen" } else { "" }
        );
    }
    match r.chosen {
        Some(c) => {
            let e = &r.evaluated[c];
            let _ = writeln!(s, "chosen: #{c} {} (drop {:.2} <= {})", e.label, e.drop, r.max_drop);
        }
        None => {
            let _ =
                writeln!(s, "warning: no configuration met the budget; the FP32 model is written");
        }
    }
    if !r.held_out.is_empty() {
        let _ = writeln!(s, "held out ({} samples):", r.held_out_samples);
        for h in &r.held_out {
            let hw = h.drop_interval.map_or(String::new(), |hw| format!(" ± {hw:.2}"));
            let _ = writeln!(
                s,
                "  #{} {}: {:.2} (drop {:.2}{hw})",
                h.id, r.evaluated[h.id].label, h.metric, h.drop
            );
        }
    }
    let _ = writeln!(s, "{}", r.confidence);
    s
}
