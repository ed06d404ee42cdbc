//! Hybrid precision chosen under an accuracy budget (`lowbit tune`): which precision each
//! `Conv`/`MatMul`/`Gemm` gets ([`Precision`]: int4, int8 per tensor or per channel, int16,
//! fp16, fp32) so the model is as small or as fast as possible while its task metric stays
//! within `max_drop` of the FP32 model's.
//!
//! * calibration is done once (the caller's table) and every configuration is the one
//!   quantizer's plan with per-node precision ([`QuantizeConfig::node_precision`]);
//! * nodes are ranked by their sensitivity on a few calibration samples, independent of the
//!   eval samples: `compare`'s isolated per-layer noise of the all-cheapest model is reported,
//!   and the output's SQNR with each layer alone at the cheapest rung orders the search (for
//!   the size objective per weight the layer holds); then [`search`] decides with the measured
//!   task metric ([`scorer`]) on the search part of the eval data;
//! * each configuration's cost is measured: its file size exactly, its latency on lowbit's
//!   engine ([`crate::latency`]);
//! * a held-out part of the eval data, never seen by the search, confirms the chosen point
//!   with a 95 % interval on the drop.

pub mod pareto;
pub mod scorer;
pub mod search;

use crate::compare::{compare_dataset, CompareError, CompareOptions};
use crate::latency::time_runs;
use crate::metrics::NoiseAccumulator;
use crate::score::{ScoreError, ScoredModel};
use lowbit_data::Dataset;
use lowbit_engine::{Session, SessionOptions};
use lowbit_onnx::pb::ModelProto;
use lowbit_quant::calibrate::CalibrationTable;
pub use lowbit_quant::config::Precision;
use lowbit_quant::config::{AdaRoundOptions, Algorithms};
use lowbit_quant::passes::reuse::QuantizedWeights;
use lowbit_quant::quantize::{
    quantize_run, quantize_with_plan, QuantPlan, QuantizeConfig, QuantizeInputs,
};
use lowbit_quant::samples::{Progress, SampleSource};
use lowbit_quant::QuantError;
use prost::Message;
use scorer::{paired_drop, paired_se, split_runs, within_probability, Scorer, SplitScore};
use search::{search, Evaluate, Measured, SearchSettings, Strategy};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The `format` of [`TuneReport`].
pub const FORMAT: &str = "lowbit-tune/1";

/// What can go wrong tuning.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// Settings or data that do not fit together (the message says how).
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error(transparent)]
    Score(#[from] ScoreError),
    #[error("sensitivity analysis: {0}")]
    Compare(#[from] CompareError),
    #[error("{what}: lowbit's engine cannot run it: {source}")]
    Engine {
        what: String,
        #[source]
        source: lowbit_engine::EngineError,
    },
    #[error(transparent)]
    Tensor(#[from] lowbit_tensor::TensorError),
}

/// The task metric (higher is better).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Top-1 accuracy against labels, or top-1 agreement with the FP32 model, in %.
    Top1,
    /// Mean cosine×100 of each output row with the FP32 model's.
    Cosine,
    /// Spearman×100 of sentence pairs' cosine against gold scores.
    Spearman,
    /// SQNR (dB) of all output values against the FP32 model's.
    Sqnr,
}

impl Metric {
    /// Whether the metric is a mean over samples (so a drop has a paired standard error).
    pub fn per_sample(self) -> bool {
        matches!(self, Metric::Top1 | Metric::Cosine)
    }
}

/// What the search makes as small as possible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Median latency of one sample on lowbit's engine.
    Latency,
    /// The model file's size.
    Size,
}

/// How to tune.
pub struct TuneOptions {
    /// Every setting but per-node precision (target, activation type, calibration method).
    pub base: QuantizeConfig,
    /// Candidate precisions, cheapest first.
    pub ladder: Vec<Precision>,
    /// Largest allowed drop of the metric from the FP32 model's (SQNR: the lowest dB allowed).
    pub max_drop: f64,
    /// How sure the search must be that a configuration's true drop is within `max_drop`,
    /// given the drop's paired standard error on the search samples (see
    /// [`SearchSettings::confidence`]).
    pub confidence: f64,
    pub objective: Objective,
    pub strategy: Strategy,
    /// Share of the eval runs held out to confirm the chosen point (0..1).
    pub held_out: f64,
    /// Samples per run of the eval data.
    pub batch: usize,
    /// Samples timed per configuration (0: none).
    pub latency_samples: usize,
    /// Engine threads (0: one per core).
    pub threads: usize,
    /// Stop searching after this long (the best configuration found so far is kept).
    pub time_budget: Option<Duration>,
    /// Learn the rounding (and scales) of the int4 weights with AdaRound, once, on the
    /// all-int4 model; every configuration then reuses each int4 layer's learned weights
    /// (set `fp32_inputs` so they fit whatever precision the earlier layers take).
    pub adaround: Option<AdaRoundOptions>,
}

/// What the tuning runs on besides the options.
pub struct TuneInputs<'a> {
    pub fp32: &'a ModelProto,
    /// The FP32 model's file, for messages and the report.
    pub model_path: String,
    /// Calibration ranges of the FP32 model (calibrated once, reused by every configuration).
    pub table: &'a CalibrationTable,
    /// Samples for the per-layer noise (a few dozen calibration samples).
    pub sensitivity_data: Dataset,
    /// The calibration samples, for AdaRound (needed with [`TuneOptions::adaround`]).
    pub calibration_samples: Option<&'a mut dyn SampleSource>,
    pub scorer: Scorer,
    /// The scored output.
    pub output: String,
    /// What `truth` is, in words (labels file, "agreement with FP32", gold scores).
    pub against: String,
}

/// One evaluated configuration in the report.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluated {
    pub id: usize,
    /// How the search reached it.
    pub label: String,
    /// Metric on the search samples and its drop from FP32's.
    pub metric: f64,
    pub drop: f64,
    /// Standard error of `drop`, paired over the search samples (`null`: no per-sample metric).
    pub drop_se: Option<f64>,
    /// Probability that the true drop is within budget (normal approximation of the paired
    /// mean); `meets_budget` is this reaching the report's `confidence_level`.
    pub p_within: f64,
    pub bytes: u64,
    pub latency_ms: Option<f64>,
    pub meets_budget: bool,
    /// Nodes per precision.
    pub precisions: BTreeMap<String, usize>,
}

/// A node and the precision chosen for it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeChoice {
    pub node: String,
    pub op_type: String,
    pub weight_values: u64,
    /// Isolated SQNR (dB) at the cheapest precision, compare's per-layer noise (`null`: not
    /// measured).
    #[serde(with = "crate::metrics::finite_or_null")]
    pub sqnr_db: f64,
    /// SQNR (dB) of the model's output with only this layer at the cheapest precision (the
    /// others one rung up): the sensitivity that orders the search.
    #[serde(with = "crate::metrics::finite_or_null")]
    pub output_sqnr_db: f64,
    /// Rank in the promotion order (0: noisiest).
    pub rank: usize,
    /// The chosen configuration's precision (the cheapest when none was chosen).
    pub precision: Precision,
}

/// The int4 weights' learned rounding, made once and reused by every configuration.
#[derive(Clone, Debug, Serialize)]
pub struct LearnedRounding {
    /// AdaRound's summary line on the all-int4 model.
    pub summary: String,
    /// Int4 layers whose learned weights the configurations reuse.
    pub layers: usize,
    pub seconds: f64,
}

/// A configuration scored on the held-out samples.
#[derive(Clone, Debug, Serialize)]
pub struct HeldOutScore {
    pub id: usize,
    pub metric: f64,
    pub drop: f64,
    /// Half-width of the 95 % interval of the drop (paired over samples), when the metric
    /// is a mean over samples.
    pub drop_interval: Option<f64>,
    /// Probability that the true drop is within budget, from the held-out samples alone.
    pub p_within: f64,
}

/// What `lowbit tune --json` writes (documented in `docs/json.md`).
#[derive(Clone, Debug, Serialize)]
pub struct TuneReport {
    pub format: &'static str,
    pub model: String,
    pub output: String,
    pub metric: Metric,
    pub against: String,
    pub objective: Objective,
    pub max_drop: f64,
    /// The probability of being within budget a configuration needed to count as within it.
    pub confidence_level: f64,
    pub candidates: Vec<Precision>,
    pub strategy: &'static str,
    pub threads: usize,
    pub search_samples: usize,
    pub held_out_samples: usize,
    /// The FP32 model's metric on the search samples.
    pub reference_metric: f64,
    /// Every configuration measured; id 0 is the FP32 model itself.
    pub evaluated: Vec<Evaluated>,
    /// Ids of the non-dominated configurations (cost against search metric), cheapest first.
    pub pareto: Vec<usize>,
    /// The int4 layers' learned rounding (`null`: round-to-nearest).
    pub int4_rounding: Option<LearnedRounding>,
    /// The cheapest configuration within budget on the search samples (`null`: none).
    pub chosen: Option<usize>,
    pub nodes: Vec<NodeChoice>,
    /// FP32, each rung on every node and the chosen configuration on the held-out samples.
    pub held_out: Vec<HeldOutScore>,
    /// How far the budget claim holds, in words.
    pub confidence: String,
    /// Whether the time budget cut the search short.
    pub cut_short: bool,
    pub seconds: f64,
}

/// The tuning's result: the report and the chosen model (the FP32 model when nothing met
/// the budget).
pub struct Tuned {
    pub report: TuneReport,
    pub model: ModelProto,
}

/// Builds and measures configurations.
struct Measurer<'a> {
    fp32: &'a ModelProto,
    base: &'a QuantizeConfig,
    table: &'a CalibrationTable,
    nodes: &'a [String],
    scorer: &'a mut Scorer,
    runs: &'a [(usize, usize)],
    output: &'a str,
    threads: usize,
    latency_samples: usize,
    /// The FP32 model's per-sample metric on `runs` (empty until it is measured), for each
    /// configuration's paired standard error.
    reference: Vec<f64>,
    /// Learned int4 weights, copied into every int4 layer of a configuration.
    learned: Option<&'a QuantizedWeights>,
}

/// The quantizer's settings for per-node precisions `p` of `nodes` on top of `base`.
fn config_for(base: &QuantizeConfig, nodes: &[String], p: &[Precision]) -> QuantizeConfig {
    let node_precision = nodes.iter().cloned().zip(p.iter().copied()).collect();
    QuantizeConfig { node_precision, ..base.clone() }
}

impl Measurer<'_> {
    fn build(&self, p: &[Precision]) -> Result<ModelProto, TuneError> {
        let plan = QuantPlan::resolve(&config_for(self.base, self.nodes, p))?;
        let mut model = quantize_with_plan(self.fp32.clone(), &plan, Some(self.table))?.0;
        if let Some(learned) = self.learned {
            // Only layers at the precision the rounding was learned for match (same codes
            // type and shape); the others keep the quantizer's own weights.
            learned.apply(&mut model)?;
        }
        Ok(model)
    }

    fn scored(&self, model: &ModelProto, what: &str) -> Result<ScoredModel, TuneError> {
        let session = Session::new(model, &SessionOptions::with_threads(self.threads))
            .map_err(|source| TuneError::Engine { what: what.to_string(), source })?;
        let bytes = model.encoded_len() as u64;
        Ok(ScoredModel { path: what.to_string(), bytes, session, output: self.output.into() })
    }

    fn measure(
        &mut self,
        model: &ModelProto,
        what: &str,
    ) -> Result<(Measured, SplitScore), TuneError> {
        let scored = self.scored(model, what)?;
        let score = self.scorer.score(&scored, self.runs, &mut |_| {})?;
        let trim = self.scorer.trim;
        let latency =
            time_runs(&scored, &mut self.scorer.data, self.latency_samples, trim, &mut |_| {})?;
        let measured = Measured {
            metric: score.value,
            bytes: scored.bytes,
            latency_ms: latency.map(|l| l.median_ms),
            drop_se: paired_se(&self.reference, &score.per_sample).map(|(_, se)| se),
        };
        Ok((measured, score))
    }
}

impl Evaluate for Measurer<'_> {
    fn evaluate(&mut self, p: &[Precision], what: &str) -> Result<Measured, TuneError> {
        let model = self.build(p)?;
        Ok(self.measure(&model, what)?.0)
    }
}

/// Nodes per precision.
fn counts(p: &[Precision]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for x in p {
        *m.entry(x.name().to_string()).or_default() += 1;
    }
    m
}

/// Tunes `inputs.fp32` (see the [module docs](self)); `progress` shows each stage.
pub fn tune(
    inputs: TuneInputs,
    opts: &TuneOptions,
    progress: &dyn Progress,
) -> Result<Tuned, TuneError> {
    let start = Instant::now();
    let TuneInputs {
        fp32,
        model_path,
        table,
        mut sensitivity_data,
        calibration_samples,
        mut scorer,
        output,
        against,
    } = inputs;
    let Some(&bottom) = opts.ladder.first() else {
        return Err(TuneError::Config("give at least one candidate precision".into()));
    };
    if !(0.0..1.0).contains(&opts.held_out) {
        return Err(TuneError::Config(format!(
            "the held-out share must be in [0, 1), got {}",
            opts.held_out
        )));
    }
    let runs = scorer.data.ranges(opts.batch.max(1));
    let (search_runs, held_runs) = split_runs(&runs, opts.held_out);
    if search_runs.is_empty() {
        return Err(TuneError::Config(format!(
            "{} eval samples leave none for the search: pass more --eval-data or a smaller \
             --holdout",
            scorer.data.samples
        )));
    }
    let base = QuantizeConfig { min_activation_sqnr: None, ..opts.base.clone() };

    // The tunable nodes: those a plain static run quantizes.
    let (plain, summary) =
        quantize_with_plan(fp32.clone(), &QuantPlan::resolve(&base)?, Some(table))?;
    drop(plain);
    let layers = summary.layers;
    let nodes: Vec<String> = layers.iter().map(|l| l.node.clone()).collect();
    if nodes.is_empty() {
        return Err(TuneError::Config(format!(
            "{model_path}: static quantization finds no Conv/MatMul/Gemm to tune"
        )));
    }
    // The int4 weights' rounding, learned once on the all-int4 model and reused by every
    // configuration (learning it per configuration would cost a full AdaRound each time).
    // The caller fits each layer on its FP32 inputs (`fp32_inputs`) so that what a layer
    // learned does not depend on the precision of the layers before it.
    let mut int4_rounding = None;
    let learned = match (opts.adaround, opts.ladder.contains(&Precision::Int4)) {
        (Some(ada), true) => {
            let Some(samples) = calibration_samples else {
                return Err(TuneError::Config(
                    "AdaRound on the int4 candidates runs on the calibration samples: none \
                     were given"
                        .into(),
                ));
            };
            let t = Instant::now();
            let cfg = QuantizeConfig {
                algorithms: Algorithms { adaround: Some(ada), ..Default::default() },
                ..config_for(&base, &nodes, &vec![Precision::Int4; nodes.len()])
            };
            let inputs = QuantizeInputs {
                table: Some(table),
                samples: Some(samples),
                threads: opts.threads,
                progress,
            };
            let (q, s) = quantize_run(fp32.clone(), &QuantPlan::resolve(&cfg)?, inputs)?;
            let learned = QuantizedWeights::of(&q);
            int4_rounding = Some(LearnedRounding {
                summary: s.steps.iter().map(|s| s.summary.clone()).collect::<Vec<_>>().join("; "),
                layers: learned.len(),
                seconds: t.elapsed().as_secs_f64(),
            });
            Some(learned)
        }
        _ => None,
    };
    if !(opts.confidence > 0.0 && opts.confidence < 1.0) {
        return Err(TuneError::Config(format!(
            "the confidence level must be in (0, 1), got {}",
            opts.confidence
        )));
    }
    let mut m = Measurer {
        reference: Vec::new(),
        learned: learned.as_ref(),
        fp32,
        base: &base,
        table,
        nodes: &nodes,
        scorer: &mut scorer,
        runs: &search_runs,
        output: &output,
        threads: opts.threads,
        latency_samples: opts.latency_samples,
    };

    // FP32: the reference metric and cost.
    progress.start("tune: FP32 model", 1);
    let (ref_measured, ref_score) = m.measure(fp32, "the FP32 model")?;
    m.reference = ref_score.per_sample.clone();
    progress.finish();
    let floor = match m.scorer.metric {
        Metric::Sqnr => opts.max_drop,
        _ => ref_score.value - opts.max_drop,
    };

    // Sensitivity, cheap first: compare's isolated per-layer noise of the all-cheapest model
    // (what each quantized tensor adds, reported per layer), then each layer alone at the
    // cheapest rung with every other one rung up, scored by the output's SQNR against FP32
    // on the same few samples. The second ranks the promotion: a weight's own noise says
    // little of how much the output cares (a late 1x1 conv's int4 noise is harmless, a
    // depthwise conv's is not).
    let cheapest = m.build(&vec![bottom; nodes.len()])?;
    progress.start("tune: per-layer noise", sensitivity_data.samples as u64);
    let copts = CompareOptions { threads: opts.threads, ..Default::default() };
    let noise =
        compare_dataset(fp32, &cheapest, &mut sensitivity_data, m.scorer.trim, &copts, &mut |n| {
            progress.advance(n as u64, None)
        })?;
    progress.finish();
    drop(cheapest);
    let sqnr: BTreeMap<&str, f64> =
        noise.ranking.iter().map(|r| (r.node.as_str(), r.sqnr_db)).collect();
    let isolated_db = |i: usize| sqnr.get(nodes[i].as_str()).copied().unwrap_or(f64::INFINITY);
    let alone = layer_sensitivity(&m, &opts.ladder, &mut sensitivity_data, opts.batch, progress)?;
    let db = |i: usize| alone[i];
    // Promotion order. Latency: the noisiest first. Size: the most output noise per weight
    // first (noise power over the bytes promoting the layer costs, in dB), so a small noisy
    // layer is promoted before a big one and a big quiet one is the first to go down.
    let key = |i: usize| match opts.objective {
        Objective::Latency => db(i),
        Objective::Size => db(i) + 10.0 * (layers[i].weight_values.max(1) as f64).log10(),
    };
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by(|&a, &b| key(a).total_cmp(&key(b)).then(a.cmp(&b)));

    let settings = SearchSettings {
        ladder: &opts.ladder,
        floor,
        confidence: opts.confidence,
        objective: opts.objective,
        strategy: opts.strategy,
        deadline: opts.time_budget.map(|d| start + d),
    };
    let outcome = search(&nodes, &order, &settings, &mut m, progress)?;

    // The report's configurations: FP32 first, then every trial.
    let drop_of = |metric: f64| match m.scorer.metric {
        Metric::Sqnr => f64::NAN,
        _ => ref_score.value - metric,
    };
    let mut evaluated = vec![Evaluated {
        id: 0,
        label: "FP32 model".into(),
        metric: ref_score.value,
        drop: 0.0,
        drop_se: m.scorer.metric.per_sample().then_some(0.0),
        p_within: 1.0,
        bytes: ref_measured.bytes,
        latency_ms: ref_measured.latency_ms,
        meets_budget: ref_score.value >= floor || m.scorer.metric == Metric::Sqnr,
        precisions: BTreeMap::from([("fp32 (original)".to_string(), nodes.len())]),
    }];
    for (i, t) in outcome.trials.iter().enumerate() {
        evaluated.push(Evaluated {
            id: i + 1,
            label: t.label.clone(),
            metric: t.measured.metric,
            drop: drop_of(t.measured.metric),
            drop_se: t.measured.drop_se,
            p_within: t.p_within,
            bytes: t.measured.bytes,
            latency_ms: t.measured.latency_ms,
            meets_budget: t.meets_budget,
            precisions: counts(&t.precisions),
        });
    }
    let cost = |e: &Evaluated| {
        let m =
            Measured { metric: e.metric, bytes: e.bytes, latency_ms: e.latency_ms, drop_se: None };
        m.cost(opts.objective)
    };
    let points: Vec<(f64, f64)> = evaluated.iter().map(|e| (cost(e), e.metric)).collect();
    let pareto = pareto::pareto_front(&points);
    let chosen = outcome.chosen.map(|i| i + 1);
    let chosen_p: Vec<Precision> = match outcome.chosen {
        Some(i) => outcome.trials[i].precisions.clone(),
        None => vec![bottom; nodes.len()],
    };
    let rank_of: BTreeMap<usize, usize> = order.iter().enumerate().map(|(r, &i)| (i, r)).collect();
    let node_choices = layers
        .iter()
        .enumerate()
        .map(|(i, l)| NodeChoice {
            node: l.node.clone(),
            op_type: l.op_type.clone(),
            weight_values: l.weight_values,
            sqnr_db: isolated_db(i),
            output_sqnr_db: db(i),
            rank: rank_of[&i],
            precision: chosen_p[i],
        })
        .collect();

    // Held out: FP32, the cheapest configuration and the chosen one.
    let mut held_out = Vec::new();
    let model = match outcome.chosen {
        Some(i) => m.build(&outcome.trials[i].precisions)?,
        None => fp32.clone(),
    };
    if !held_runs.is_empty() {
        let n: u64 = held_runs.iter().map(|(s, e)| (e - s) as u64).sum();
        // FP32, each rung on every node (the plain configurations a user compares with), and
        // the chosen one.
        let mut todo: Vec<(usize, Option<ModelProto>)> = vec![(0, None)];
        for (i, t) in outcome.trials.iter().enumerate() {
            let uniform = t.precisions.windows(2).all(|w| w[0] == w[1]);
            if uniform && chosen != Some(i + 1) {
                todo.push((i + 1, Some(m.build(&t.precisions)?)));
            }
        }
        if let Some(c) = chosen {
            todo.push((c, Some(model.clone())));
        }
        progress.start("tune: held-out samples", n * todo.len() as u64);
        let mut reference: Option<SplitScore> = None;
        for (id, model) in todo {
            let scored = m.scored(model.as_ref().unwrap_or(fp32), &evaluated[id].label)?;
            let s =
                m.scorer.score(&scored, &held_runs, &mut |k| progress.advance(k as u64, None))?;
            let r = reference.get_or_insert_with(|| s.clone());
            let interval = paired_drop(&r.per_sample, &s.per_sample);
            let held_floor = match m.scorer.metric {
                Metric::Sqnr => opts.max_drop,
                _ => r.value - opts.max_drop,
            };
            let se = paired_se(&r.per_sample, &s.per_sample).map(|(_, se)| se);
            held_out.push(HeldOutScore {
                id,
                metric: s.value,
                drop: if m.scorer.metric == Metric::Sqnr { f64::NAN } else { r.value - s.value },
                drop_interval: interval.map(|(_, hw)| hw),
                p_within: within_probability(s.value, held_floor, se),
            });
        }
        progress.finish();
    }
    let confidence = confidence(m.scorer.metric, opts.max_drop, chosen, &evaluated, &held_out);
    let report = TuneReport {
        format: FORMAT,
        model: model_path,
        output: output.clone(),
        metric: m.scorer.metric,
        against,
        objective: opts.objective,
        max_drop: opts.max_drop,
        confidence_level: opts.confidence,
        candidates: opts.ladder.clone(),
        strategy: match opts.strategy {
            Strategy::Bisect => "bisect",
            Strategy::Greedy => "greedy",
        },
        threads: opts.threads,
        search_samples: ref_score.samples,
        held_out_samples: held_runs.iter().map(|(s, e)| e - s).sum(),
        reference_metric: ref_score.value,
        evaluated,
        pareto,
        int4_rounding,
        chosen,
        nodes: node_choices,
        held_out,
        confidence,
        cut_short: outcome.cut_short,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok(Tuned { report, model })
}

/// Each node's sensitivity: the output SQNR (dB) against FP32 on `data` with only that node
/// at the cheapest rung of `ladder` and every other node one rung up. The FP32 outputs of
/// `data` (a few dozen calibration samples, a fixed count) are kept; nothing else is.
fn layer_sensitivity(
    m: &Measurer,
    ladder: &[Precision],
    data: &mut lowbit_data::Dataset,
    batch: usize,
    progress: &dyn Progress,
) -> Result<Vec<f64>, TuneError> {
    let n = m.nodes.len();
    let (bottom, rest) = (ladder[0], ladder.get(1).copied().unwrap_or(ladder[0]));
    let runs = data.ranges(batch.max(1));
    let reference = m.scored(m.fp32, "the FP32 model")?;
    let mut want = Vec::with_capacity(runs.len());
    for &(s, e) in &runs {
        want.push(reference.run(data, s, e, m.scorer.trim)?.as_f32()?.to_vec());
    }
    drop(reference);
    progress.start("tune: per-layer sensitivity", n as u64);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut p = vec![rest; n];
        p[i] = bottom;
        let what = format!("{} alone at {bottom}", m.nodes[i]);
        let scored = m.scored(&m.build(&p)?, &what)?;
        let mut acc = NoiseAccumulator::new();
        for (k, &(s, e)) in runs.iter().enumerate() {
            let t = scored.run(data, s, e, m.scorer.trim)?;
            let got = t.as_f32()?;
            if got.len() != want[k].len() {
                return Err(TuneError::Config(format!(
                    "{what}: output '{}' has {} values on {} but FP32's {}",
                    m.output,
                    got.len(),
                    data.range_label(s, e),
                    want[k].len()
                )));
            }
            acc.add(&want[k], got);
        }
        out.push(acc.noise().map_or(f64::INFINITY, |x| x.sqnr_db));
        progress.advance(1, Some(&what));
    }
    progress.finish();
    Ok(out)
}

/// The summary's sentence on how far the budget claim holds.
fn confidence(
    metric: Metric,
    max_drop: f64,
    chosen: Option<usize>,
    evaluated: &[Evaluated],
    held: &[HeldOutScore],
) -> String {
    let Some(c) = chosen else {
        return "no configuration met the budget on the search samples; the FP32 model is \
                written"
            .into();
    };
    let search_drop = evaluated[c].drop;
    let search =
        format!("search drop {search_drop:.2}, P(within budget) {:.2}", evaluated[c].p_within);
    let Some(h) = held.iter().find(|h| h.id == c) else {
        return format!(
            "within budget on the search samples only ({search}); no samples were \
             held out to confirm it"
        );
    };
    if metric == Metric::Sqnr {
        let ok = h.metric >= max_drop;
        return format!(
            "held-out output SQNR {:.1} dB {} the {max_drop} dB floor",
            h.metric,
            if ok { "meets" } else { "misses" }
        );
    }
    let held = match h.drop_interval {
        Some(hw) => format!(
            "held-out drop {:.2} (95 % interval {:.2} to {:.2}, P(within budget) {:.2})",
            h.drop,
            h.drop - hw,
            h.drop + hw,
            h.p_within
        ),
        None => format!("held-out drop {:.2} (no per-sample interval for this metric)", h.drop),
    };
    let verdict = match h.drop_interval {
        Some(hw) if h.drop + hw <= max_drop => "confident",
        _ if h.drop <= max_drop => "likely (more eval data would settle it)",
        _ => "not confirmed (tighten --max-drop, raise --confidence or give more eval data)",
    };
    format!("{verdict}: {held} against the {max_drop} budget; {search}")
}
