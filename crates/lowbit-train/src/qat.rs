//! The QAT driver: the model quantized once by lowbit's static QDQ pass (calibrated ranges,
//! BN folded), that QDQ graph turned into a [`Program`], trained to match the FP32 model (or
//! the labels), and written back as a QDQ model.
//!
//! * **Data**: the samples are shuffled with the seed; a held-out share (default 10 %) is kept
//!   out of training to pick the best epoch and stop early.
//! * **Batches**: each batch is cut into [`CHUNKS`] fixed runs of consecutive samples, run on
//!   rayon's pool (one sample at a time per run); their gradients are summed in order, so a
//!   seed gives the same model on any number of cores.
//! * **Schedule**: cosine decay over the planned steps; Adam (or SGD with momentum). The
//!   rate is relative: each tensor moves by about `lr` times its mean magnitude per step (step
//!   sizes at `lr · SCALE_LR`).
//! * **Time budget**: training stops at the end of the batch that passes it.

use crate::arr::Arr;
use crate::error::{Result, TrainError};
use crate::loss::{loss_and_grad, Objective};
use crate::optim::{cosine_lr, Optimizer, OptimizerKind};
use crate::program::{ParamKind, Program, WeightGrid, WeightStart};
use crate::tape::{Base, Tape};
use lowbit_data::Rng;
use lowbit_engine::{Session, SessionOptions};
use lowbit_onnx::graph::Graph;
use lowbit_onnx::pb::ModelProto;
use lowbit_quant::calibrate::CalibrationTable;
use lowbit_quant::config::{NodePlan, WeightGranularity, WeightPlan};
use lowbit_quant::quantize::{
    quantize_run, QuantMode, QuantPlan, QuantizeConfig, QuantizeInputs, QuantizeSummary,
};
use lowbit_quant::samples::Progress;
use lowbit_quant::scheme::{IntType, Mode};
use lowbit_tensor::Tensor;
use rayon::prelude::*;
use std::time::{Duration, Instant};

/// Fixed runs per batch (see the module docs: results do not depend on the core count).
pub const CHUNKS: usize = 16;
/// Step sizes learn at this multiple of the learning rate.
pub const SCALE_LR: f32 = 1.0;

/// Weight grids QAT trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightBits {
    Int8,
    /// Per-channel int4 (symmetric, [-8, 7]).
    Int4,
    /// {−a, 0, +a} per channel, written as int8 QDQ with codes in {−1, 0, 1}.
    Ternary,
    /// {−a, +a} per channel, written as int8 QDQ with codes in {−1, 1}.
    Binary,
}

impl std::str::FromStr for WeightBits {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "int8" => WeightBits::Int8,
            "int4" => WeightBits::Int4,
            "ternary" => WeightBits::Ternary,
            "binary" => WeightBits::Binary,
            _ => return Err(format!("unknown weight type '{s}' (int8, int4, ternary, binary)")),
        })
    }
}

impl std::fmt::Display for WeightBits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightBits::Int8 => "int8",
            WeightBits::Int4 => "int4",
            WeightBits::Ternary => "ternary",
            WeightBits::Binary => "binary",
        })
    }
}

#[derive(Clone, Debug)]
pub struct QatOptions {
    pub weights: WeightBits,
    /// uint8 or int8 activations.
    pub activations: IntType,
    pub epochs: usize,
    pub lr: f32,
    pub batch: usize,
    pub optimizer: OptimizerKind,
    /// `None`: KL for a (log-)softmax or Gemm output, cross-entropy with labels, else cosine.
    pub objective: Option<Objective>,
    pub time_budget: Option<Duration>,
    pub seed: u64,
    /// Share of the samples held out for early stopping (0 to 0.5).
    pub holdout: f32,
    /// Epochs without a better held-out loss before stopping.
    pub patience: usize,
    /// The graph output the loss reads (default: the first float output).
    pub output: Option<String>,
    /// int4: keep the first and last weighted layers int8 (the quantizer's int8-ends rule).
    pub int8_ends: bool,
    /// Start from this QDQ model (e.g. `quantize --adaround`'s) instead of quantizing the FP32
    /// model with round-to-nearest: its codes, weight and activation scales.
    pub init: Option<ModelProto>,
    /// Where the trained float weights start.
    pub start: WeightStart,
    /// MatMul/Gemm weights in blocks of this many values along K (one step each; Conv stays
    /// per channel); `None`: per channel.
    pub block_size: Option<usize>,
}

impl Default for QatOptions {
    fn default() -> Self {
        QatOptions {
            weights: WeightBits::Int8,
            activations: IntType::Uint8,
            epochs: 10,
            lr: 1e-2,
            batch: 32,
            optimizer: OptimizerKind::Adam,
            objective: None,
            time_budget: None,
            seed: 0,
            holdout: 0.1,
            patience: 3,
            output: None,
            int8_ends: true,
            init: None,
            start: WeightStart::Fp32,
            block_size: None,
        }
    }
}

/// One training sample: the model's inputs and, with `--labels`, its class.
#[derive(Clone, Debug)]
pub struct Sample {
    pub feeds: Vec<(String, Tensor)>,
    pub label: Option<usize>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f32,
    pub holdout_loss: f32,
    pub lr: f32,
    pub seconds: f64,
}

#[derive(Debug)]
pub struct QatOutcome {
    /// The trained model (QDQ).
    pub model: ModelProto,
    /// Post-training quantization at the same bit width, for comparison.
    pub ptq: ModelProto,
    pub summary: QuantizeSummary,
    pub objective: Objective,
    pub epochs: Vec<EpochReport>,
    /// Held-out loss of the PTQ model (before training) and of the kept epoch.
    pub holdout_loss_before: f32,
    pub holdout_loss_after: f32,
    pub best_epoch: Option<usize>,
    pub stopped: String,
    pub train_samples: usize,
    pub holdout_samples: usize,
    pub trained_weights: usize,
    pub trained_scales: usize,
    pub elapsed: Duration,
}

impl QatOptions {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        if !matches!(self.activations, IntType::Uint8 | IntType::Int8) {
            return bad(format!(
                "activations must be uint8 or int8, not {}",
                self.activations.name()
            ));
        }
        if self.epochs == 0 || self.batch == 0 {
            return bad("epochs and batch must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("learning rate {} must be positive", self.lr));
        }
        if !(0.0..=0.5).contains(&self.holdout) {
            return bad(format!("held-out share {} must be within 0 to 0.5", self.holdout));
        }
        Ok(())
    }

    /// The static-quantization settings the QDQ graph is made with: symmetric per-channel
    /// weights (LSQ learns a symmetric step), ternary and binary on an int8 grid.
    pub fn quantize_config(&self) -> QuantizeConfig {
        QuantizeConfig {
            mode: QuantMode::Static,
            weights: if self.weights == WeightBits::Int4 { IntType::Int4 } else { IntType::Int8 },
            weight_mode: Some(Mode::Symmetric),
            activations: Some(self.activations),
            per_channel: true,
            block_size: self.block_size,
            reduce_range: Some(false),
            // Each layer trains on the grid of its own codes, so the int8 ends can stay.
            int8_ends: Some(self.int8_ends),
            ..QuantizeConfig::default()
        }
    }
}

/// The FP32 model with BatchNormalization folded as the quantizer folds it.
pub fn folded_fp32(fp32: &ModelProto) -> Result<ModelProto> {
    let mut g = Graph::new(fp32.clone())?;
    lowbit_quant::passes::bn_fold::fold_batch_norms(&mut g)?;
    Ok(g.into_model())
}

/// The QDQ model and the program for it, with the PTQ baseline the program starts from.
pub struct Prepared {
    pub qdq: ModelProto,
    pub program: Program,
    pub summary: QuantizeSummary,
}

pub fn prepare(fp32: &ModelProto, table: &CalibrationTable, opts: &QatOptions) -> Result<Prepared> {
    opts.validate()?;
    let cfg = opts.quantize_config();
    cfg.validate().map_err(|e| TrainError::Config(e.to_string()))?;
    let plan = QuantPlan::resolve(&cfg)?;
    let (qdq, summary) = quantize_run(fp32.clone(), &plan, QuantizeInputs::table(Some(table)))?;
    if summary.total_quantized() == 0 {
        return Err(TrainError::Config(
            "the static QDQ pass quantized no Conv/Gemm/MatMul: nothing to train".into(),
        ));
    }
    let qdq = match &opts.init {
        Some(init) => {
            let dq = |m: &ModelProto| {
                m.graph.as_ref().map_or(0, |g| {
                    g.node.iter().filter(|n| n.op_type == "DequantizeLinear").count()
                })
            };
            if dq(init) == 0 {
                return Err(TrainError::Config(
                    "the starting model (--init) has no DequantizeLinear: it is not a QDQ model"
                        .into(),
                ));
            }
            init.clone()
        }
        None => qdq,
    };
    let wgrid = match opts.weights {
        WeightBits::Ternary => WeightGrid::Ternary,
        WeightBits::Binary => WeightGrid::Binary,
        WeightBits::Int8 | WeightBits::Int4 => {
            // The plan's weights and, with 4 bits, its int8 ends: each layer trains on the
            // grid its codes are written in.
            let mut plans = vec![plan.weights];
            if let Some(NodePlan::Quantized { weights, .. }) = &plan.ends {
                plans.push(*weights);
            }
            let mut ranges = Vec::new();
            for w in plans {
                // The grid (not the granularity) is what a layer trains on.
                let per_channel = WeightPlan { granularity: WeightGranularity::PerChannel, ..w };
                let scheme = per_channel
                    .scheme_for("Conv", false, 4)
                    .ok_or_else(|| TrainError::Config("no weight scheme".into()))?;
                let (qmin, qmax) = scheme.qrange()?;
                ranges.push((scheme.dtype(), qmin, qmax));
            }
            WeightGrid::Int { ranges }
        }
    };
    let program =
        Program::build(&qdq, &folded_fp32(fp32)?, &wgrid, opts.start, opts.output.as_deref())?;
    Ok(Prepared { qdq, program, summary })
}

/// The FP32 model's output (the one the program trains) for each sample, on lowbit's engine.
pub fn teacher_outputs(fp32: &ModelProto, output: &str, samples: &[Sample]) -> Result<Vec<Arr>> {
    let session = Session::new(fp32, &SessionOptions::with_threads(1))?;
    samples
        .par_iter()
        .map(|s| {
            let out = session.run(s.feeds.clone())?;
            let t = out
                .into_iter()
                .find(|(n, _)| n == output)
                .ok_or_else(|| TrainError::MissingValue(output.to_string()))?
                .1;
            Arr::from_tensor(&t)
                .ok_or_else(|| TrainError::Config(format!("output '{output}' is not numeric")))
        })
        .collect()
}

fn feeds_of(s: &Sample) -> Vec<(String, Arr)> {
    s.feeds.iter().filter_map(|(n, t)| Arr::from_tensor(t).map(|a| (n.clone(), a))).collect()
}

/// The objective when none is asked: cross-entropy with labels; KL when the output comes from a
/// (log-)softmax or a Gemm (a classifier's head); cosine otherwise (embeddings).
pub fn default_objective(fp32: &ModelProto, output: &str, labels: bool) -> Objective {
    if labels {
        return Objective::CrossEntropy;
    }
    let classifier = fp32
        .graph
        .as_ref()
        .and_then(|g| g.node.iter().find(|n| n.output.iter().any(|o| o == output)))
        .is_some_and(|n| matches!(n.op_type.as_str(), "Softmax" | "LogSoftmax" | "Gemm"));
    if classifier {
        Objective::Kl
    } else {
        Objective::Cosine
    }
}

/// Mean loss over `idx`, and the summed leaf gradients when `grads`.
#[allow(clippy::too_many_arguments)] // the training state, passed as it is
fn run_batch(
    p: &Program,
    base: &Base,
    obj: Objective,
    samples: &[Sample],
    feeds: &[Vec<(String, Arr)>],
    teacher: &[Arr],
    idx: &[usize],
    grads: bool,
) -> Result<(f32, Vec<Option<Arr>>)> {
    let per = idx.len().div_ceil(CHUNKS).max(1);
    let parts: Vec<Result<(f64, Vec<Option<Arr>>)>> = idx
        .par_chunks(per)
        .map(|chunk| {
            let mut acc: Vec<Option<Arr>> = vec![None; p.leaves.len()];
            let mut loss = 0.0f64;
            for &i in chunk {
                let tape = Tape::forward(p, base, &feeds[i])?;
                let (l, g) = loss_and_grad(obj, tape.output(), teacher.get(i), samples[i].label)
                    .map_err(TrainError::Config)?;
                loss += l as f64;
                if grads {
                    tape.backward(g, &mut acc)?;
                }
            }
            Ok((loss, acc))
        })
        .collect();
    let mut total = 0.0f64;
    let mut acc: Vec<Option<Arr>> = vec![None; p.leaves.len()];
    for part in parts {
        let (l, a) = part?;
        total += l;
        for (t, g) in acc.iter_mut().zip(a) {
            match (t.as_mut(), g) {
                (Some(t), Some(g)) => t.add_assign(&g),
                (None, Some(g)) => *t = Some(g),
                _ => {}
            }
        }
    }
    let n = idx.len().max(1) as f32;
    for a in acc.iter_mut().flatten() {
        a.data.iter_mut().for_each(|v| *v /= n);
    }
    Ok(((total / n as f64) as f32, acc))
}

/// Quantization-aware training of `fp32` on `samples` (calibrated in `table`).
pub fn train(
    fp32: &ModelProto,
    table: &CalibrationTable,
    samples: &[Sample],
    opts: &QatOptions,
    progress: &dyn Progress,
) -> Result<QatOutcome> {
    let start = Instant::now();
    let Prepared { qdq, mut program, summary } = prepare(fp32, table, opts)?;
    let ptq = program.export(&qdq)?;
    if samples.len() < 2 {
        return Err(TrainError::Config(format!(
            "{} sample(s): QAT needs at least 2",
            samples.len()
        )));
    }
    let labels = samples.iter().all(|s| s.label.is_some());
    let obj =
        opts.objective.unwrap_or_else(|| default_objective(fp32, &program.output_name, labels));
    if obj == Objective::CrossEntropy && !labels {
        return Err(TrainError::Config(
            "cross-entropy needs a label for every sample (--labels)".into(),
        ));
    }
    let teacher = if obj == Objective::CrossEntropy {
        Vec::new()
    } else {
        progress.start("FP32 outputs", 1);
        let t = teacher_outputs(fp32, &program.output_name, samples)?;
        progress.finish();
        t
    };
    let feeds: Vec<Vec<(String, Arr)>> = samples.iter().map(feeds_of).collect();

    // Shuffled once; the held-out share is the tail.
    let mut rng = Rng::new(opts.seed);
    let mut order: Vec<usize> = (0..samples.len()).collect();
    shuffle(&mut order, &mut rng);
    let n_hold = ((samples.len() as f32 * opts.holdout).round() as usize).min(samples.len() - 1);
    let (train_idx, hold_idx) = order.split_at(samples.len() - n_hold);
    let mut train_idx = train_idx.to_vec();
    let hold_idx = if hold_idx.is_empty() { train_idx.clone() } else { hold_idx.to_vec() };

    let mut base = Base::new(&program);
    let eval = |p: &Program, b: &Base| {
        run_batch(p, b, obj, samples, &feeds, &teacher, &hold_idx, false).map(|r| r.0)
    };
    let before = eval(&program, &base)?;
    let steps_per_epoch = train_idx.len().div_ceil(opts.batch);
    let total_steps = steps_per_epoch * opts.epochs;
    let sizes: Vec<usize> = program.params.iter().map(|p| p.value.len()).collect();
    let mut optim = Optimizer::new(opts.optimizer, &sizes);
    // Adam's steps are about `lr` whatever the gradient's size, so each tensor's rate is scaled
    // by its mean magnitude: step sizes of 0.003 and weights of 0.3 both move by about `lr` of
    // themselves per step (LSQ's gradient scale alone cannot do that under Adam).
    let lr_mult: Vec<f32> = program
        .params
        .iter()
        .map(|p| {
            let mean = p.value.iter().map(|v| v.abs()).sum::<f32>() / p.value.len().max(1) as f32;
            let floor = if p.kind == ParamKind::Bias { 1e-3 } else { 1e-8 };
            let kind = match p.kind {
                ParamKind::WeightScale | ParamKind::ActScale => SCALE_LR,
                ParamKind::Weight | ParamKind::Bias => 1.0,
            };
            kind * mean.max(floor)
        })
        .collect();

    let mut best = (before, None::<usize>, snapshot(&program));
    let mut epochs = Vec::new();
    let mut stopped = format!("{} epochs done", opts.epochs);
    let mut step = 0usize;
    let mut since_best = 0usize;
    'outer: for epoch in 1..=opts.epochs {
        let t0 = Instant::now();
        shuffle(&mut train_idx, &mut rng);
        progress.start(&format!("QAT epoch {epoch}/{}", opts.epochs), train_idx.len() as u64);
        let mut sum = 0.0f64;
        let mut seen = 0usize;
        let mut out_of_time = false;
        for batch in train_idx.chunks(opts.batch) {
            let (loss, leaf_grads) =
                run_batch(&program, &base, obj, samples, &feeds, &teacher, batch, true)?;
            if !loss.is_finite() {
                progress.finish();
                return Err(TrainError::Diverged(loss));
            }
            let grads = program.param_grads(&leaf_grads);
            let lr = cosine_lr(opts.lr, step, total_steps);
            {
                let mut ps: Vec<&mut Vec<f32>> =
                    program.params.iter_mut().map(|p| &mut p.value).collect();
                optim.step(&mut ps, &grads, lr, &lr_mult);
            }
            program.project();
            base.refresh(&program);
            step += 1;
            sum += loss as f64 * batch.len() as f64;
            seen += batch.len();
            progress.advance(batch.len() as u64, Some(&format!("loss {:.4}", sum / seen as f64)));
            if opts.time_budget.is_some_and(|b| start.elapsed() >= b) {
                out_of_time = true;
                break;
            }
        }
        progress.finish();
        let hold = eval(&program, &base)?;
        epochs.push(EpochReport {
            epoch,
            train_loss: (sum / seen.max(1) as f64) as f32,
            holdout_loss: hold,
            lr: cosine_lr(opts.lr, step, total_steps),
            seconds: t0.elapsed().as_secs_f64(),
        });
        if hold < best.0 {
            best = (hold, Some(epoch), snapshot(&program));
            since_best = 0;
        } else {
            since_best += 1;
        }
        if out_of_time {
            stopped = format!("time budget reached in epoch {epoch}");
            break 'outer;
        }
        if since_best >= opts.patience {
            stopped = format!(
                "early stop after epoch {epoch}: no better held-out loss for {} epochs",
                opts.patience
            );
            break;
        }
    }
    restore(&mut program, &best.2);
    let model = program.export(&qdq)?;
    Ok(QatOutcome {
        model,
        ptq,
        summary,
        objective: obj,
        epochs,
        holdout_loss_before: before,
        holdout_loss_after: best.0,
        best_epoch: best.1,
        stopped,
        train_samples: train_idx.len(),
        holdout_samples: if n_hold == 0 { 0 } else { hold_idx.len() },
        trained_weights: program.count(ParamKind::Weight),
        trained_scales: program.count(ParamKind::WeightScale) + program.count(ParamKind::ActScale),
        elapsed: start.elapsed(),
    })
}

fn snapshot(p: &Program) -> Vec<Vec<f32>> {
    p.params.iter().map(|x| x.value.clone()).collect()
}

fn restore(p: &mut Program, s: &[Vec<f32>]) {
    for (x, v) in p.params.iter_mut().zip(s) {
        x.value.clone_from(v);
    }
}

/// Fisher-Yates with the seeded generator.
fn shuffle(v: &mut [usize], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}
