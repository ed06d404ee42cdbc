//! `lowbit qat MODEL -o OUT.onnx --data DIR [--weights int8|int4|ternary|binary] ...`:
//! quantization-aware training with [`lowbit_train`]. The model is calibrated on --data (as
//! `quantize --data` does), quantized to QDQ, trained on the same samples to match the FP32
//! model's outputs (or --labels), and written as a QDQ model. With --eval-data the FP32,
//! post-training and QAT models are scored on lowbit's engine on samples never trained on.
//!
//! Every output is checked before any work ([`crate::paths`]); outputs are written atomically.

use crate::calibration::{calibrate_model, CalibrationData};
use crate::cli::QatArgs;
use crate::inputs::{data_format, keep_samples, load_dataset};
use crate::models::{load_model, new_session};
use crate::paths::OutputPaths;
use crate::progress::Bars;
use crate::text::{plural, print, print_json};
use crate::usage::usage_bail;
use anyhow::{Context, Result};
use lowbit_data::labels::read_labels;
use lowbit_data::{DataFormat, Dataset};
use lowbit_engine::{Session, SessionOptions};
use lowbit_onnx::pb::ModelProto;
use lowbit_quant::scheme::IntType;
use lowbit_tensor::Tensor;
use lowbit_train::program::WeightStart;
use lowbit_train::qat::{EpochReport, QatOptions, Sample, WeightBits};
use rayon::prelude::*;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

fn options(args: &QatArgs) -> Result<QatOptions> {
    let weights: WeightBits = args.weights.parse().map_err(anyhow::Error::msg)?;
    let activations = if args.activations == "int8" { IntType::Int8 } else { IntType::Uint8 };
    let opts = QatOptions {
        weights,
        activations,
        epochs: args.epochs,
        lr: args.lr,
        batch: args.batch as usize,
        optimizer: args.optimizer.parse().map_err(anyhow::Error::msg)?,
        objective: args.loss.as_deref().map(str::parse).transpose().map_err(anyhow::Error::msg)?,
        time_budget: args.time_budget.map(|m| Duration::from_secs_f64(m.max(0.0) * 60.0)),
        seed: args.seed,
        holdout: args.holdout,
        patience: args.patience.max(1),
        output: args.output_name.clone(),
        int8_ends: !args.int4_ends,
        block_size: args.block_size,
        init: match &args.init {
            Some(p) => Some(load_model(p).with_context(|| format!("--init {}", p.display()))?),
            None => None,
        },
        start: match args.init_weights.as_deref() {
            Some("fp32") => WeightStart::Fp32,
            Some(_) => WeightStart::Codes,
            None if args.init.is_some() => WeightStart::Codes,
            None => WeightStart::Fp32,
        },
    };
    if let Err(e) = opts.validate() {
        usage_bail!("{e}");
    }
    if opts.objective == Some(lowbit_train::loss::Objective::CrossEntropy) && args.labels.is_none()
    {
        usage_bail!("--loss ce needs --labels FILE.npy (one class per sample of --data)");
    }
    Ok(opts)
}

/// Each sample of `data` from `from` on as its own feeds.
fn rows(data: &mut Dataset, from: usize) -> Result<Vec<Vec<(String, Tensor)>>> {
    // Each sample cut to its *mask* input's real length (no padding to train on).
    (from..data.samples).map(|i| Ok(data.feeds(i, i + 1, true)?)).collect()
}

/// Class labels of a data folder: `--labels`, a photo folder's own, or its `labels.npy`.
fn labels_for(
    explicit: Option<&Path>,
    data: &Dataset,
    dir: &Path,
    total: usize,
) -> Result<Option<Vec<usize>>> {
    if let Some(p) = explicit {
        return Ok(Some(read_labels(p, total, dir)?));
    }
    if let Some(l) = data.labels() {
        return Ok(Some(l));
    }
    let npy = dir.join("labels.npy");
    Ok(if npy.is_file() { Some(read_labels(&npy, total, dir)?) } else { None })
}

#[derive(Serialize)]
struct Scored {
    model: &'static str,
    /// Top-1 accuracy (with labels).
    top1: Option<f64>,
    /// Top-1 agreement with the FP32 model.
    agreement: f64,
    /// Mean cosine of the outputs to the FP32 model's.
    cosine: f64,
}

#[derive(Serialize)]
struct Report<'a> {
    weights: String,
    activations: String,
    objective: String,
    train_samples: usize,
    holdout_samples: usize,
    trained_weights: usize,
    trained_scales: usize,
    holdout_loss_ptq: f32,
    holdout_loss_qat: f32,
    best_epoch: Option<usize>,
    stopped: &'a str,
    epochs: &'a [EpochReport],
    eval_samples: usize,
    eval: Vec<Scored>,
    seconds: f64,
    output: String,
}

/// Runs `model` on every sample (one per run, samples spread over the cores).
fn outputs(
    model: &ModelProto,
    samples: &[Vec<(String, Tensor)>],
    output: &str,
) -> Result<Vec<Vec<f32>>> {
    let session = Session::new(model, &SessionOptions::with_threads(1))
        .context("lowbit's engine cannot run the model")?;
    samples
        .par_iter()
        .map(|feeds| {
            let out = session.run(feeds.clone())?;
            let t = out
                .into_iter()
                .find(|(n, _)| n == output)
                .with_context(|| format!("no output '{output}'"))?
                .1;
            Ok(lowbit_train::arr::Arr::from_tensor(&t).map(|a| a.data).unwrap_or_default())
        })
        .collect()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
        .0
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (d, x, y) = a.iter().zip(b).fold((0.0, 0.0, 0.0), |(d, x, y), (&p, &q)| {
        (d + p as f64 * q as f64, x + p as f64 * p as f64, y + q as f64 * q as f64)
    });
    d / (x.sqrt() * y.sqrt()).max(1e-30)
}

fn score(
    name: &'static str,
    outs: &[Vec<f32>],
    reference: &[Vec<f32>],
    labels: Option<&[usize]>,
) -> Scored {
    let n = outs.len().max(1) as f64;
    let top1 =
        labels.map(|l| outs.iter().zip(l).filter(|(o, &y)| argmax(o) == y).count() as f64 / n);
    let agreement =
        outs.iter().zip(reference).filter(|(a, b)| argmax(a) == argmax(b)).count() as f64 / n;
    let cos = outs.iter().zip(reference).map(|(a, b)| cosine(a, b)).sum::<f64>() / n;
    Scored { model: name, top1, agreement, cosine: cos }
}

pub fn qat(args: QatArgs, quiet: bool) -> Result<()> {
    let opts = options(&args)?;
    let format: DataFormat = data_format(&args.format)?;
    let preprocess = format.preprocess.as_ref();
    let source = format.source(&args.data)?;
    let eval_source = args.eval_data.as_ref().map(|d| format.source(d)).transpose()?;
    let mut inputs = vec![("the input model", args.model.as_path())];
    if let Some(p) = &args.init {
        inputs.push(("the --init model", p.as_path()));
    }
    let mut outputs_ok = OutputPaths::new(args.force, &inputs);
    outputs_ok.file("-o", &args.output)?;
    if let Some(p) = &args.ptq_output {
        outputs_ok.file("--ptq-output", p)?;
    }
    let model = load_model(&args.model)?;
    // The whole command runs inside the pool (calibration, training, scoring), so its threads
    // get the main thread's stack size rather than rayon's 2 MiB default.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads.n)
        .stack_size(16 << 20)
        .build()
        .context("cannot start worker threads")?;
    pool.install(|| {
        // Calibration on the training samples, as `quantize --data` calibrates.
        let cal = CalibrationData {
            threads: args.threads.n,
            quiet,
            ..CalibrationData::new(&source, preprocess, args.samples)
        };
        let run = calibrate_model(&model, &args.model, &cal)?;

        let session = new_session(&model, &args.model, args.threads.n)?;
        let mut data = load_dataset(&session, &source, preprocess, true)?;
        let total = data.samples;
        let labels = match &args.labels {
            Some(p) => Some(read_labels(p, total, &args.data)?),
            None => None,
        };
        keep_samples(&mut data, args.samples.map(|n| n as usize))?;
        let samples: Vec<Sample> = rows(&mut data, 0)?
            .into_iter()
            .enumerate()
            .map(|(i, feeds)| Sample { feeds, label: labels.as_ref().map(|l| l[i]) })
            .collect();
        if samples.len() < 2 {
            usage_bail!(
                "--data holds {} sample{}: QAT needs at least 2",
                samples.len(),
                plural(samples.len())
            );
        }

        let bars = Bars::new(quiet);
        let outcome = lowbit_train::train(&model, &run.table, &samples, &opts, &bars)
            .with_context(|| format!("QAT of {} failed", args.model.display()))?;

        // Before/after on samples never trained on.
        let mut eval = Vec::new();
        let mut eval_samples = 0;
        if let (Some(src), Some(dir)) = (&eval_source, &args.eval_data) {
            let mut ed = load_dataset(&session, src, preprocess, true)?;
            let etotal = ed.samples;
            if args.eval_from >= etotal {
                usage_bail!(
                    "--eval-from {} skips all {etotal} samples of {}",
                    args.eval_from,
                    dir.display()
                );
            }
            let elabels = labels_for(args.eval_labels.as_deref(), &ed, dir, etotal)?;
            let feeds = rows(&mut ed, args.eval_from)?;
            eval_samples = feeds.len();
            let elabels = elabels.map(|l| l[args.eval_from..].to_vec());
            let out_name = match &args.output_name {
                Some(o) => o.clone(),
                None => model
                    .graph
                    .as_ref()
                    .and_then(lowbit_train::program::first_float_output)
                    .context("the model has no float output")?,
            };
            let fp32 = outputs(&model, &feeds, &out_name)?;
            let ptq = outputs(&outcome.ptq, &feeds, &out_name)?;
            let qat = outputs(&outcome.model, &feeds, &out_name)?;
            let l = elabels.as_deref();
            eval.push(score("FP32", &fp32, &fp32, l));
            eval.push(score("PTQ", &ptq, &fp32, l));
            eval.push(score("QAT", &qat, &fp32, l));
        }

        lowbit_onnx::save_model(&outcome.model, &args.output)
            .context("cannot write the trained model")?;
        if let Some(p) = &args.ptq_output {
            lowbit_onnx::save_model(&outcome.ptq, p)
                .context("cannot write the post-training model")?;
        }
        let report = Report {
            weights: opts.weights.to_string(),
            activations: args.activations.clone(),
            objective: outcome.objective.to_string(),
            train_samples: outcome.train_samples,
            holdout_samples: outcome.holdout_samples,
            trained_weights: outcome.trained_weights,
            trained_scales: outcome.trained_scales,
            holdout_loss_ptq: outcome.holdout_loss_before,
            holdout_loss_qat: outcome.holdout_loss_after,
            best_epoch: outcome.best_epoch,
            stopped: &outcome.stopped,
            epochs: &outcome.epochs,
            eval_samples,
            eval,
            seconds: outcome.elapsed.as_secs_f64(),
            output: args.output.display().to_string(),
        };
        if args.json.on {
            return print_json(&report);
        }
        print(&render(&report, &outcome.summary.to_string()))
    })
}

fn render(r: &Report, summary: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "QAT: {} weights, {} activations, {}; {} training sample{}, {} held out",
        r.weights,
        r.activations,
        r.objective,
        r.train_samples,
        plural(r.train_samples),
        r.holdout_samples
    );
    for line in summary.lines().take(3) {
        let _ = writeln!(out, "  {line}");
    }
    let _ =
        writeln!(out, "trained {} weights and {} step sizes", r.trained_weights, r.trained_scales);
    for e in r.epochs {
        let _ = writeln!(
            out,
            "  epoch {:>2}: train loss {:.5}, held-out loss {:.5}, {:.1} s",
            e.epoch, e.train_loss, e.holdout_loss, e.seconds
        );
    }
    let _ = writeln!(
        out,
        "held-out loss: post-training {:.5} -> QAT {:.5} ({}; {})",
        r.holdout_loss_ptq,
        r.holdout_loss_qat,
        r.best_epoch
            .map_or("kept the post-training model".to_string(), |e| format!("epoch {e} kept")),
        r.stopped
    );
    if !r.eval.is_empty() {
        let _ = writeln!(out, "on {} --eval-data samples:", r.eval_samples);
        for s in &r.eval {
            let top1 = s.top1.map_or(String::new(), |t| format!("top-1 {:.2} %, ", 100.0 * t));
            let _ = writeln!(
                out,
                "  {:<5} {top1}agreement with FP32 {:.2} %, output cosine {:.5}",
                s.model,
                100.0 * s.agreement,
                s.cosine
            );
        }
    }
    let _ = writeln!(out, "time: {:.1} s", r.seconds);
    let _ = writeln!(out, "wrote {}", r.output);
    out
}
