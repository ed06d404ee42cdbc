//! The quantization driver: a [`QuantizeConfig`] in the user's words, and [`quantize_model`],
//! which runs the [passes](crate::passes) for the chosen mode and says what it did in a
//! [`QuantizeSummary`].
//!
//! ```no_run
//! use lowbit_quant::calibrate::CalibrationTable;
//! use lowbit_quant::quantize::{quantize_model, QuantMode, QuantizeConfig};
//! let model = lowbit_onnx::load_model("model.onnx")?;
//! let table = CalibrationTable::load("ranges.json".as_ref())?;
//! let (q, summary) = quantize_model(model, &QuantizeConfig::default(), Some(&table))?;
//! lowbit_onnx::save_model(&q, "model.int8.onnx")?;
//! println!("{summary}");
//! // Weight-only int4 in blocks of 32, no calibration needed.
//! let cfg = QuantizeConfig::weight_only_int4(32);
//! assert_eq!(cfg.mode, QuantMode::WeightOnly);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! | mode | what is written | needs |
//! |---|---|---|
//! | `static` | BN folded; QDQ around Conv/MatMul/Gemm (+ pass-through ops), int8/int4 weights, int32 bias | a calibration table |
//! | `dynamic` | MatMul/Gemm → DynamicQuantizeLinear + MatMulInteger; LSTM/GRU/RNN weights int8 + DequantizeLinear; Conv stays float | — |
//! | `weight-only` | int8 (per channel) or int4 (blocked along K) weights + DequantizeLinear before MatMul/Gemm/LSTM/GRU/RNN | — |
//!
//! The static, dynamic and weight-only passes also rewrite the bodies of `If`/`Loop`/`Scan`
//! nodes (weights that are the body's own initializers or outer-scope ones; static ranges from
//! the scoped names calibration gives subgraph values).
//! | `fp16` / `bf16` | float32 initializers and compute in float16/bfloat16, float32 I/O kept by default | — |
//!
//! In `static`, `dynamic` and `weight-only` mode embedding tables (`Gather` on a float32
//! initializer) also become int8 with a scale per row ([`passes::embeddings`]) unless
//! [`QuantizeConfig::quantize_embeddings`] says otherwise.

pub use crate::config::{
    parse_int_type, QuantMode, QuantPlan, QuantizeConfig, DEFAULT_MIN_ACTIVATION_SQNR,
};

use crate::algorithms::{self, StepContext, StepReport};
use crate::calibrate::{calibrate_samples, CalibrationRecord, CalibrationTable, CalibratorOptions};
use crate::error::{QuantError, Result};
use crate::passes;
use crate::samples::{NoProgress, Progress, SampleSource};
use lowbit_engine::normalize::Normalized;
use lowbit_onnx::graph::{subgraphs, Graph};
use lowbit_onnx::pb::{GraphProto, ModelProto};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Instant;

/// A node a pass left alone, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeNote {
    pub node: String,
    pub op_type: String,
    pub reason: String,
}

/// A `Conv`/`MatMul`/`Gemm` static quantization considered, and the precision it got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerPrecision {
    /// Its name, or `Op#index` when it has none (the key of per-node precision).
    pub node: String,
    pub op_type: String,
    /// Values in its weight initializer (0 when both inputs are activations).
    pub weight_values: u64,
    /// In words: the weight and activation schemes, or `fp32` / `fp16` for a node kept float.
    pub precision: String,
}

/// What [`quantize_model`] did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuantizeSummary {
    pub mode: Option<QuantMode>,
    /// The deployment target the plan was resolved for.
    #[serde(default)]
    pub target: Option<String>,
    /// Why each target-dependent choice was made.
    #[serde(default)]
    pub decisions: Vec<String>,
    /// Nodes quantized (or converted), per op type.
    pub quantized: BTreeMap<String, usize>,
    /// Nodes the user excluded.
    pub excluded: Vec<NodeNote>,
    /// Candidate nodes a pass left in float, with the reason.
    pub left_float: Vec<NodeNote>,
    /// BatchNormalization nodes folded away.
    pub folded_batch_norms: usize,
    /// Default-domain opset before and after.
    pub opset_before: i64,
    pub opset_after: i64,
    /// Bytes of initializer data before and after.
    pub size_before: u64,
    pub size_after: u64,
    /// Free-form remarks (mode limitations, opset rewrites).
    pub notes: Vec<String>,
    /// Settings that probably do not do what the user meant (an exclusion matching nothing).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// What each accuracy-recovery step did, in the order they ran.
    #[serde(default)]
    pub steps: Vec<StepReport>,
    /// Calibration done inside the run (after a graph-transforming step): batches, seconds.
    #[serde(default)]
    pub calibrated: Option<(u64, f64)>,
    /// What load-time normalization turned into initializers (weights stored as `Constant`
    /// nodes or computed from constants).
    #[serde(default)]
    pub normalized: Normalized,
    /// Nodes of the [`WEIGHTED_OPS`] per op type (after normalization), control-flow bodies
    /// included.
    #[serde(default)]
    pub weighted: BTreeMap<String, usize>,
    /// Of those, nodes inside control-flow subgraphs (If/Loop/Scan bodies, any depth), which
    /// the static, dynamic and weight-only passes rewrite like the main graph.
    #[serde(default)]
    pub weighted_in_subgraphs: usize,
    /// Static: every `Conv`/`MatMul`/`Gemm` quantized or kept float by the per-node plan, in
    /// graph order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerPrecision>,
}

/// The ops that carry a model's weights and most of its compute: what "how much of the model
/// was quantized" counts. `Attention` is ONNX Runtime's fused `com.microsoft.Attention` (packed
/// QKV weight); ONNX's own `Attention` has no weight and is not counted.
pub const WEIGHTED_OPS: &[&str] =
    &["Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "LSTM", "GRU", "RNN", "Attention"];

/// Whether `n` is one of the [`WEIGHTED_OPS`].
fn is_weighted(n: &lowbit_onnx::pb::NodeProto) -> bool {
    if passes::is_default_domain(n) {
        n.op_type != "Attention" && WEIGHTED_OPS.contains(&n.op_type.as_str())
    } else {
        passes::recurrent::CONTRIB_WEIGHTED
            .iter()
            .any(|(d, o, _)| *d == n.domain && *o == n.op_type)
    }
}

/// Below this share of weighted nodes quantized, a run is refused as partial (see
/// [`QuantizeSummary::coverage`]) unless the caller allows it.
pub const MIN_COVERAGE: f64 = 0.10;

/// How much of a model a run quantized, and why the rest was not.
#[derive(Clone, Debug, PartialEq)]
pub struct Coverage {
    /// Weighted nodes the user did not exclude (main graph and subgraphs).
    pub weighted: usize,
    /// Of those, quantized.
    pub quantized: usize,
    /// One line per cause, most frequent first: (nodes, cause).
    pub causes: Vec<(usize, String)>,
}

impl Coverage {
    pub fn share(&self) -> f64 {
        if self.weighted == 0 {
            1.0
        } else {
            self.quantized as f64 / self.weighted as f64
        }
    }

    /// Fewer than [`MIN_COVERAGE`] of the weighted nodes quantized: the written model would be
    /// (almost) the input model.
    pub fn is_partial(&self) -> bool {
        self.weighted > 0 && self.share() < MIN_COVERAGE
    }
}

impl fmt::Display for Coverage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} weighted nodes quantized ({:.0} %)",
            self.quantized,
            self.weighted,
            self.share() * 100.0
        )?;
        for (n, cause) in &self.causes {
            write!(f, "\n  {n} not: {cause}")?;
        }
        Ok(())
    }
}

impl QuantizeSummary {
    pub(crate) fn count(&mut self, op_type: &str) {
        *self.quantized.entry(op_type.to_string()).or_default() += 1;
    }

    pub(crate) fn exclude(
        &mut self,
        node: &lowbit_onnx::pb::NodeProto,
        idx: usize,
        reason: String,
    ) {
        self.excluded.push(NodeNote {
            node: passes::label(node, idx),
            op_type: node.op_type.clone(),
            reason,
        });
    }

    pub(crate) fn leave(
        &mut self,
        node: &lowbit_onnx::pb::NodeProto,
        idx: usize,
        reason: impl Into<String>,
    ) {
        self.left_float.push(NodeNote {
            node: passes::label(node, idx),
            op_type: node.op_type.clone(),
            reason: reason.into(),
        });
    }

    /// What the calibration done inside the run covered, when there was one.
    pub fn calibration_line(&self) -> Option<String> {
        let (batches, secs) = self.calibrated?;
        // Equalization and SmoothQuant change the graph before calibration; bias correction
        // alone calibrates here only because it runs on the samples anyway.
        let transformed =
            self.steps.iter().any(|s| matches!(s.step.as_str(), "equalize" | "smooth-quant"));
        let what = if transformed { "the transformed FP32 graph" } else { "the FP32 graph" };
        Some(format!("calibrated {what}: {batches} batches in {secs:.1} s"))
    }

    /// Total nodes quantized.
    pub fn total_quantized(&self) -> usize {
        self.quantized.values().sum()
    }

    /// How many of the weighted nodes were quantized and, grouped by cause, why not the others.
    pub fn coverage(&self) -> Coverage {
        let weighted_op = |op: &str| WEIGHTED_OPS.contains(&op);
        let count = |notes: &[NodeNote], op: &str| notes.iter().filter(|n| n.op_type == op).count();
        let mut causes: BTreeMap<String, usize> = BTreeMap::new();
        for n in self.left_float.iter().filter(|n| weighted_op(&n.op_type)) {
            *causes.entry(format!("{} ({})", n.reason, n.op_type)).or_default() += 1;
        }
        let mut weighted = 0;
        let mut quantized = 0;
        let mode = self.mode.map(|m| m.name()).unwrap_or("this");
        for (op, &total) in &self.weighted {
            let q = self.quantized.get(op).copied().unwrap_or(0).min(total);
            let excluded = count(&self.excluded, op);
            let accounted = q + excluded + count(&self.left_float, op);
            if total > accounted {
                // The ops whose weights only dynamic and weight-only modes store in int8.
                let elsewhere = passes::recurrent::RECURRENT.contains(&op.as_str())
                    || passes::recurrent::CONTRIB_WEIGHTED.iter().any(|c| c.1 == op);
                let hint = if elsewhere && self.mode == Some(QuantMode::Static) {
                    " (--mode dynamic or weight-only stores its weights in int8)"
                } else {
                    ""
                };
                causes
                    .insert(format!("{mode} mode does not quantize {op}{hint}"), total - accounted);
            }
            weighted += total.saturating_sub(excluded);
            quantized += q;
        }
        let mut causes: Vec<(usize, String)> = causes.into_iter().map(|(c, n)| (n, c)).collect();
        causes.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        Coverage { weighted, quantized, causes }
    }
}

impl fmt::Display for QuantizeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = self.mode.map(|m| m.name()).unwrap_or("?");
        writeln!(f, "mode: {mode}")?;
        for d in &self.decisions {
            writeln!(f, "plan: {d}")?;
        }
        let per_op: Vec<String> = self.quantized.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(f, "quantized: {} nodes ({})", self.total_quantized(), per_op.join(", "))?;
        if !self.weighted.is_empty() {
            writeln!(f, "coverage: {}", self.coverage())?;
        }
        if !self.normalized.is_empty() {
            writeln!(f, "normalized: {}", self.normalized)?;
        }
        if self.folded_batch_norms > 0 {
            writeln!(f, "folded BatchNormalization: {}", self.folded_batch_norms)?;
        }
        if !self.excluded.is_empty() {
            writeln!(f, "excluded: {}", self.excluded.len())?;
            for n in &self.excluded {
                writeln!(f, "  {} ({}): {}", n.node, n.op_type, n.reason)?;
            }
        }
        if !self.left_float.is_empty() {
            writeln!(f, "left in float: {}", self.left_float.len())?;
            for n in self.left_float.iter().take(20) {
                writeln!(f, "  {} ({}): {}", n.node, n.op_type, n.reason)?;
            }
        }
        if self.opset_before != self.opset_after {
            writeln!(f, "opset: {} -> {}", self.opset_before, self.opset_after)?;
        }
        let ratio = self.size_after as f64 / self.size_before.max(1) as f64;
        writeln!(
            f,
            "initializers: {} -> {} bytes ({:.1} %)",
            self.size_before,
            self.size_after,
            ratio * 100.0
        )?;
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        if let Some(line) = self.calibration_line() {
            writeln!(f, "{line}")?;
        }
        for st in &self.steps {
            writeln!(f, "{}: {} ({:.1} s)", st.step, st.summary, st.seconds)?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

/// Quantizes `model` as `config` says: resolves the [`QuantPlan`] (against the config's target)
/// and runs [`quantize_with_plan`].
pub fn quantize_model(
    model: ModelProto,
    config: &QuantizeConfig,
    calibration: Option<&CalibrationTable>,
) -> Result<(ModelProto, QuantizeSummary)> {
    quantize_with_plan(model, &QuantPlan::resolve(config)?, calibration)
}

/// What a quantization run reads besides the model and the plan.
pub struct QuantizeInputs<'a> {
    /// A calibration table made on the FP32 model (static), used as is unless a step transforms
    /// the FP32 graph first.
    pub table: Option<&'a CalibrationTable>,
    /// Calibration samples: calibration when there is no (usable) table, and the data-driven
    /// steps.
    pub samples: Option<&'a mut dyn SampleSource>,
    /// Engine worker threads for the runs on samples (0: one per core).
    pub threads: usize,
    pub progress: &'a dyn Progress,
}

impl<'a> QuantizeInputs<'a> {
    /// A calibration table only.
    pub fn table(table: Option<&'a CalibrationTable>) -> QuantizeInputs<'a> {
        QuantizeInputs { table, samples: None, threads: 0, progress: &NoProgress }
    }
}

/// [`quantize_run`] with a calibration table only.
pub fn quantize_with_plan(
    model: ModelProto,
    plan: &QuantPlan,
    calibration: Option<&CalibrationTable>,
) -> Result<(ModelProto, QuantizeSummary)> {
    quantize_run(model, plan, QuantizeInputs::table(calibration))
}

/// Ops that only a quantized model holds: quantizing it again would stack a second grid on
/// the first (or, in fp16 mode, give DequantizeLinear float16 scales ONNX Runtime refuses).
const QUANTIZED_OPS: &[&str] = &[
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "QGemm",
    "QLinearAdd",
    "QLinearMul",
    "QLinearGlobalAveragePool",
    "MatMulIntegerToFloat",
    "MatMulNBits",
    "DynamicQuantizeMatMul",
];

/// Static quantization with the plan's accuracy-recovery steps (see [`algorithms`] for the order).
fn static_run(
    g: &mut Graph,
    plan: &QuantPlan,
    inputs: QuantizeInputs,
    summary: &mut QuantizeSummary,
) -> Result<()> {
    let alg = &plan.algorithms;
    let QuantizeInputs { table, mut samples, threads, progress } = inputs;
    if samples.is_none() && (alg.needs_samples() || alg.transforms_fp32()) {
        return Err(QuantError::Config(
            "equalization, SmoothQuant, AdaRound and empirical bias correction run on calibration \
             samples (the FP32 graph is calibrated again after equalization): pass the data, not \
             only a calibration table"
                .into(),
        ));
    }
    if table.is_none() && samples.is_none() {
        return Err(QuantError::Config(
            "static quantization needs calibration ranges or samples (calibrate the model first)"
                .into(),
        ));
    }
    if plan.fold_batch_norm {
        summary.folded_batch_norms = passes::bn_fold::fold_batch_norms(g)?;
    }
    // The end layers are named on the graph the passes see (after BN folding).
    let with_ends;
    let plan = if plan.ends.is_some() {
        with_ends = plan.with_end_layers(g);
        summary.decisions.extend(with_ends.decisions[plan.decisions.len()..].iter().cloned());
        &with_ends
    } else {
        plan
    };
    let timed = |r: Result<StepReport>, start: Instant| {
        r.map(|mut s| {
            s.seconds = start.elapsed().as_secs_f64();
            s
        })
    };
    if alg.equalize {
        let t = Instant::now();
        summary.steps.push(timed(algorithms::equalize::equalize(g), t)?);
    }
    if let Some(a) = alg.smooth_quant {
        let t = Instant::now();
        let mut ctx = StepContext { samples: reborrow(&mut samples), threads, progress };
        summary.steps.push(timed(algorithms::smooth_quant::smooth_quant(g, a, &mut ctx), t)?);
    }
    let table: Cow<CalibrationTable> = match (table, reborrow(&mut samples)) {
        (Some(t), _) if !alg.transforms_fp32() => Cow::Borrowed(t),
        (_, Some(src)) => {
            let t = Instant::now();
            let opts = CalibratorOptions::for_plan(&plan.activations.calibration);
            let table = calibrate_samples(g.model(), src, opts, threads, progress)?;
            summary.calibrated = Some((table.batches, t.elapsed().as_secs_f64()));
            Cow::Owned(table)
        }
        (None, None) => unreachable!("checked above"),
        (Some(_), None) => unreachable!("transforming steps need samples, checked above"),
    };
    let fp32 = (alg.adaround.is_some() || alg.bias_correction.is_some()).then(|| g.clone());
    passes::qdq::quantize_static(g, plan, &table, summary)?;
    passes::fp16::half_weights(g, plan, summary)?;
    // What calibration saw of each quantized activation, for `monitor` and adaptive runs.
    CalibrationRecord::new(g.model(), &table).store(g.model_mut());
    if let (Some(opts), Some(fp32)) = (&alg.adaround, &fp32) {
        let t = Instant::now();
        let mut ctx = StepContext { samples: reborrow(&mut samples), threads, progress };
        let r = algorithms::adaround::adaround(fp32, g, plan, opts, &mut ctx);
        summary.steps.push(timed(r, t)?);
    }
    if let (Some(kind), Some(fp32)) = (alg.bias_correction, &fp32) {
        let t = Instant::now();
        let mut ctx = StepContext { samples: reborrow(&mut samples), threads, progress };
        let r = algorithms::bias_correction::bias_correction(fp32, g, kind, &table, &mut ctx);
        summary.steps.push(timed(r, t)?);
    }
    Ok(())
}

/// A shorter-lived borrow of the samples (the trait object's lifetime shrinks with it, which
/// `Option::as_deref_mut` cannot do).
fn reborrow<'r>(s: &'r mut Option<&mut dyn SampleSource>) -> Option<&'r mut dyn SampleSource> {
    match s {
        Some(s) => Some(&mut **s),
        None => None,
    }
}

/// An error when `g` is already quantized, counting the quantized ops it holds.
fn refuse_quantized(g: &Graph) -> Result<()> {
    let mut found: BTreeMap<&str, usize> = BTreeMap::new();
    for n in g.nodes() {
        if let Some(op) = QUANTIZED_OPS.iter().find(|&&o| o == n.op_type) {
            *found.entry(op).or_default() += 1;
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = found.iter().map(|(op, n)| format!("{n} {op}")).collect();
    Err(QuantError::AlreadyQuantized(list.join(", ")))
}

/// Quantizes `model` with a resolved `plan`. Static mode needs a calibration table made on this
/// FP32 model or samples to calibrate on (always samples when a step transforms the FP32 graph
/// or runs on data); the other modes need neither. Graph input and output names are kept. An
/// already quantized model is refused ([`QuantError::AlreadyQuantized`]).
pub fn quantize_run(
    model: ModelProto,
    plan: &QuantPlan,
    inputs: QuantizeInputs,
) -> Result<(ModelProto, QuantizeSummary)> {
    let mut summary = QuantizeSummary {
        mode: Some(plan.mode),
        target: Some(plan.target.to_string()),
        decisions: plan.decisions.clone(),
        warnings: plan.warnings.clone(),
        size_before: passes::initializer_bytes(&model),
        opset_before: lowbit_onnx::graph::opset_version(&model, "").unwrap_or(1),
        ..Default::default()
    };
    let mut g = Graph::new(model)?;
    refuse_quantized(&g)?;
    g.topo_sort()?;
    summary.normalized = lowbit_engine::normalize::normalize(g.model_mut())?;
    // Weights that were Constant nodes count as the model's weights.
    summary.size_before = passes::initializer_bytes(g.model());
    (summary.weighted, summary.weighted_in_subgraphs) = weighted_nodes(g.proto());
    for p in plan.exclude.unmatched(g.nodes()) {
        summary.warnings.push(format!("--exclude {p} matches no node of this model"));
    }
    match plan.mode {
        QuantMode::Static => static_run(&mut g, plan, inputs, &mut summary)?,
        QuantMode::Dynamic => passes::dynamic::quantize_dynamic(&mut g, plan, &mut summary)?,
        QuantMode::WeightOnly => passes::weight_only::quantize_weights(&mut g, plan, &mut summary)?,
        QuantMode::Fp16 | QuantMode::Bf16 => {
            passes::fp16::convert_float(&mut g, plan, &mut summary)?
        }
    }
    if plan.quantize_embeddings {
        passes::embeddings::quantize_embeddings(&mut g, plan, &mut summary)?;
    }
    g.remove_unused_initializers();
    g.topo_sort()?;
    let mut model = g.into_model();
    summary.size_after = passes::initializer_bytes(&model);
    summary.opset_after = lowbit_onnx::graph::opset_version(&model, "").unwrap_or(1);
    record_summary(&mut model, &summary);
    Ok((model, summary))
}

/// Which weighted nodes static quantization with `plan` would quantize, and why not the
/// others, without calibration data: the node selection of a real run, after the same
/// load-time normalization, with every float activation taken as quantizable (a run may still
/// leave one whose range is poor, with `min_sqnr`). `inspect` reports it. An already quantized
/// model is refused ([`QuantError::AlreadyQuantized`]), as by a run.
pub fn static_coverage(model: ModelProto, plan: &QuantPlan) -> Result<Coverage> {
    let mut summary = QuantizeSummary { mode: Some(QuantMode::Static), ..Default::default() };
    let mut g = Graph::new(model)?;
    refuse_quantized(&g)?;
    g.topo_sort()?;
    summary.normalized = lowbit_engine::normalize::normalize(g.model_mut())?;
    (summary.weighted, summary.weighted_in_subgraphs) = weighted_nodes(g.proto());
    passes::qdq::select_without_ranges(&mut g, plan, &mut summary)?;
    Ok(summary.coverage())
}

/// Nodes of the [`WEIGHTED_OPS`] in `g` per op type, control-flow bodies included (any depth),
/// and how many of them sit inside those bodies.
fn weighted_nodes(g: &GraphProto) -> (BTreeMap<String, usize>, usize) {
    fn walk(g: &GraphProto, depth: usize, per_op: &mut BTreeMap<String, usize>, inner: &mut usize) {
        for n in &g.node {
            if is_weighted(n) {
                *per_op.entry(n.op_type.clone()).or_default() += 1;
                if depth > 0 {
                    *inner += 1;
                }
            }
            for b in subgraphs(n) {
                walk(b, depth + 1, per_op, inner);
            }
        }
    }
    let (mut per_op, mut inner) = (BTreeMap::new(), 0);
    walk(g, 0, &mut per_op, &mut inner);
    (per_op, inner)
}

/// The model metadata key under which the quantized model carries its [`QuantizeSummary`]
/// (JSON), so `compare` and the report can say what each step did.
pub const SUMMARY_METADATA_KEY: &str = "lowbit.quantize";

fn record_summary(model: &mut ModelProto, summary: &QuantizeSummary) {
    model.metadata_props.retain(|p| p.key != SUMMARY_METADATA_KEY);
    model.metadata_props.push(lowbit_onnx::pb::StringStringEntryProto {
        key: SUMMARY_METADATA_KEY.into(),
        value: serde_json::to_string(summary).expect("summaries serialize"),
    });
}

/// The [`QuantizeSummary`] a model quantized by lowbit carries, if any.
pub fn recorded_summary(model: &ModelProto) -> Option<QuantizeSummary> {
    let p = model.metadata_props.iter().find(|p| p.key == SUMMARY_METADATA_KEY)?;
    serde_json::from_str(&p.value).ok()
}

/// The FP32 graph whose values a quantized model's activations stand for, when a recorded
/// step transformed the FP32 graph before calibration (equalization scales the channels
/// between layers): `fp32` topologically sorted, BatchNormalization folded when the summary
/// folded any, and equalized, as [`quantize_run`] does. `None` when no step transformed it.
pub fn transformed_fp32(
    fp32: &ModelProto,
    summary: &QuantizeSummary,
) -> Result<Option<ModelProto>> {
    if !summary.steps.iter().any(|s| s.step == "equalize") {
        return Ok(None);
    }
    let mut g = Graph::new(fp32.clone())?;
    g.topo_sort()?;
    lowbit_engine::normalize::normalize(g.model_mut())?;
    if summary.folded_batch_norms > 0 {
        passes::bn_fold::fold_batch_norms(&mut g)?;
    }
    algorithms::equalize::equalize(&mut g)?;
    Ok(Some(g.into_model()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowbit_onnx::pb::{GraphProto, NodeProto, ValueInfoProto};

    fn model(ops: &[&str]) -> ModelProto {
        let node = |i: usize, op: &str| NodeProto {
            op_type: op.into(),
            name: format!("n{i}"),
            input: vec![format!("v{i}")],
            output: vec![format!("v{}", i + 1)],
            ..Default::default()
        };
        ModelProto {
            ir_version: 8,
            graph: Some(GraphProto {
                node: ops.iter().enumerate().map(|(i, op)| node(i, op)).collect(),
                input: vec![ValueInfoProto { name: "v0".into(), ..Default::default() }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_already_quantized_model_is_refused_in_every_mode() {
        let q = model(&["QuantizeLinear", "DequantizeLinear", "Relu", "DequantizeLinear"]);
        for mode in QuantMode::ALL {
            let cfg = QuantizeConfig { mode, ..Default::default() };
            let e = quantize_model(q.clone(), &cfg, None).unwrap_err();
            assert!(matches!(e, QuantError::AlreadyQuantized(_)), "{mode}: {e}");
            let msg = e.to_string();
            assert!(msg.contains("2 DequantizeLinear, 1 QuantizeLinear"), "{msg}");
            assert!(msg.contains("FP32 original"), "{msg}");
        }
    }

    #[test]
    fn the_written_model_carries_its_summary() {
        let (m, s) =
            quantize_model(model(&["Relu"]), &QuantizeConfig::weight_only_int8(), None).unwrap();
        assert_eq!(recorded_summary(&m), Some(s));
    }

    #[test]
    fn exclusions_matching_no_node_are_warned_about() {
        let mut cfg = QuantizeConfig::weight_only_int8();
        cfg.exclude.patterns.push("/encoder/*".into());
        cfg.exclude.node_names.push("n0".into());
        let (_, s) = quantize_model(model(&["Relu"]), &cfg, None).unwrap();
        assert_eq!(s.warnings, vec!["--exclude '/encoder/*' matches no node of this model"]);
        assert!(s.to_string().contains("warning: --exclude '/encoder/*'"), "{s}");
    }

    #[test]
    fn per_node_precision_sets_each_layer_apart() {
        use crate::algorithms::test_graphs::{max_rel_diff, run, uniform, Builder};
        use crate::calibrate::{calibrate_samples, CalibratorOptions};
        use crate::config::Precision;
        use crate::target::{Target, TargetChoice};
        use lowbit_tensor::{DType, Tensor};
        // x [4, 8] -> (MatMul -> Relu) x 4: matmul1, matmul3, matmul5, matmul7.
        let mut b = Builder::default();
        let mut cur = "x".to_string();
        for i in 0..4u64 {
            let w = b.f32(&format!("w{i}"), &[8, 8], uniform(i + 1, 64, -1.0, 1.0));
            let m = b.op("MatMul", &[&cur, &w], vec![]);
            cur = b.op("Relu", &[&m], vec![]);
        }
        let model = b.model(&[4, 8], &[&cur]);
        let x = uniform(99, 32, -1.0, 1.0);
        let mut samples =
            vec![vec![("x".to_string(), Tensor::from_vec(vec![4, 8], x.clone()).unwrap())]];
        let table =
            calibrate_samples(&model, &mut samples, CalibratorOptions::default(), 1, &NoProgress)
                .unwrap();
        let node_precision = [
            ("matmul1", Precision::Int4),
            ("matmul3", Precision::Int16),
            ("matmul5", Precision::Fp16),
            ("matmul7", Precision::Fp32),
        ]
        .into_iter()
        .map(|(n, p)| (n.to_string(), p))
        .collect();
        let cfg = QuantizeConfig {
            target: TargetChoice::Named(Target::Lowbit),
            node_precision,
            ..Default::default()
        };
        let (q, summary) = quantize_model(model.clone(), &cfg, Some(&table)).unwrap();
        let layers: Vec<(&str, &str)> =
            summary.layers.iter().map(|l| (l.node.as_str(), l.precision.as_str())).collect();
        assert_eq!(layers.len(), 4, "{layers:?}");
        assert!(layers[0].1.starts_with("int4 "), "{layers:?}");
        assert!(
            layers[1].1.starts_with("int16 ") && layers[1].1.contains("int16 asym"),
            "{layers:?}"
        );
        assert_eq!(layers[2], ("matmul5", "fp16"));
        assert_eq!(layers[3], ("matmul7", "fp32"));
        assert!(summary.layers.iter().all(|l| l.weight_values == 64));

        let g = q.graph.as_ref().unwrap();
        let producer = |v: &str| g.node.iter().find(|n| n.output.iter().any(|o| o == v)).unwrap();
        let init_type = |name: &str| {
            let t = g.initializer.iter().find(|t| t.name == name).unwrap();
            DType::from_onnx(t.data_type).unwrap()
        };
        let node = |name: &str| g.node.iter().find(|n| n.name == name).unwrap();
        // int4 weights behind a DequantizeLinear.
        let dq = producer(&node("matmul1").input[1]);
        assert_eq!((dq.op_type.as_str(), init_type(&dq.input[0])), ("DequantizeLinear", DType::I4));
        // int16 activations: the input's Q/DQ pair has an int16 zero point.
        let dq = producer(&node("matmul3").input[0]);
        assert_eq!(
            (dq.op_type.as_str(), init_type(&dq.input[2])),
            ("DequantizeLinear", DType::I16)
        );
        // fp16: a float16 weight cast back to float32; the activation stays float.
        let cast = producer(&node("matmul5").input[1]);
        assert_eq!((cast.op_type.as_str(), init_type(&cast.input[0])), ("Cast", DType::F16));
        // fp32: the original weight.
        assert_eq!(node("matmul7").input[1], "w3");
        assert!(lowbit_onnx::graph::opset_version(&q, "").unwrap() >= 21);
        let (a, b) = (run(&model, &[4, 8], &x), run(&q, &[4, 8], &x));
        assert!(max_rel_diff(&a, &b) < 0.1, "{}", max_rel_diff(&a, &b));

        // Per-node precision is static only, and a target that cannot run it refuses it.
        let dynamic = QuantizeConfig { mode: QuantMode::Dynamic, ..cfg.clone() };
        assert!(QuantPlan::resolve(&dynamic).is_err());
        let openvino = QuantizeConfig { target: TargetChoice::Named(Target::OpenVino), ..cfg };
        let e = QuantPlan::resolve(&openvino).unwrap_err().to_string();
        assert!(e.contains("matmul3") && e.contains("int16"), "{e}");
    }

    #[test]
    fn four_bit_weights_keep_the_first_and_last_layers_int8_unless_asked() {
        use crate::algorithms::test_graphs::{uniform, Builder};
        use crate::config::{AdaRoundOptions, Algorithms, Precision};
        use crate::scheme::IntType;
        use lowbit_tensor::{DType, Tensor};
        // x [4, 8] -> (MatMul -> Relu) x 4, and a side MatMul on the first Relu that no output
        // reads (not an end layer).
        let mut b = Builder::default();
        let mut cur = "x".to_string();
        let mut relus = Vec::new();
        for i in 0..4u64 {
            let w = b.f32(&format!("w{i}"), &[8, 8], uniform(i + 1, 64, -1.0, 1.0));
            let m = b.op("MatMul", &[&cur, &w], vec![]);
            cur = b.op("Relu", &[&m], vec![]);
            relus.push(cur.clone());
        }
        let w = b.f32("side_w", &[8, 8], uniform(9, 64, -1.0, 1.0));
        b.op("MatMul", &[&relus[0], &w], vec![]);
        let model = b.model(&[4, 8], &[&cur]);
        let samples = || {
            let batch = |i: u64| {
                let x = uniform(99 + i, 32, -1.0, 1.0);
                vec![("x".to_string(), Tensor::from_vec(vec![4, 8], x).unwrap())]
            };
            (0..4).map(batch).collect::<Vec<_>>()
        };
        let codes = |q: &ModelProto, node: &str| {
            let g = q.graph.as_ref().unwrap();
            let n = g.node.iter().find(|n| n.name == node).unwrap();
            let dq = g.node.iter().find(|d| d.output[0] == n.input[1]).unwrap();
            let t = g.initializer.iter().find(|t| t.name == dq.input[0]).unwrap();
            let t = lowbit_onnx::tensor_from_proto(t).unwrap();
            let widest =
                t.cast(DType::I64).unwrap().as_i64().unwrap().iter().map(|v| v.abs()).max();
            (t.dtype(), widest.unwrap())
        };
        let run = |cfg: &QuantizeConfig| {
            let plan = QuantPlan::resolve(cfg).unwrap();
            let mut s = samples();
            let inputs = QuantizeInputs { samples: Some(&mut s), ..QuantizeInputs::table(None) };
            quantize_run(model.clone(), &plan, inputs).unwrap()
        };
        let int4 = QuantizeConfig { weights: IntType::Int4, ..Default::default() };

        // matmul1 (reads x) and matmul7 (feeds the output) keep int8; the others are 4-bit.
        let (q, summary) = run(&int4);
        assert_eq!(codes(&q, "matmul1").0, DType::I8);
        assert_eq!(codes(&q, "matmul7").0, DType::I8);
        for n in ["matmul3", "matmul5", "matmul9"] {
            assert_eq!(codes(&q, n).0, DType::I4, "{n}");
        }
        assert!(
            summary.decisions.iter().any(|d| d.contains("(matmul1, matmul7)")),
            "{:?}",
            summary.decisions
        );

        // AdaRound learns each layer's rounding on its own grid: the int8 ends keep int8 codes.
        let adaround = QuantizeConfig {
            algorithms: Algorithms {
                adaround: Some(AdaRoundOptions { iterations: 20, ..Default::default() }),
                ..Default::default()
            },
            ..int4.clone()
        };
        let (q, _) = run(&adaround);
        for n in ["matmul1", "matmul7"] {
            let (t, widest) = codes(&q, n);
            assert!(t == DType::I8 && widest > 7, "{n}: {t} codes up to {widest}");
        }
        assert_eq!(codes(&q, "matmul3").0, DType::I4);

        // Asked otherwise: every layer 4-bit, or a node's own precision wins.
        let all = QuantizeConfig { int8_ends: Some(false), ..int4.clone() };
        let (q, summary) = run(&all);
        assert_eq!(codes(&q, "matmul1").0, DType::I4);
        assert_eq!(codes(&q, "matmul7").0, DType::I4);
        assert!(!summary.decisions.iter().any(|d| d.contains("first and last")));
        let own = QuantizeConfig {
            node_precision: [("matmul7".to_string(), Precision::Int4)].into_iter().collect(),
            ..int4.clone()
        };
        let (q, _) = run(&own);
        assert_eq!(codes(&q, "matmul1").0, DType::I8);
        assert_eq!(codes(&q, "matmul7").0, DType::I4);
        // An excluded end stays float and is not named.
        let mut excluded = int4;
        excluded.exclude.node_names.push("matmul7".into());
        let (q, summary) = run(&excluded);
        assert_eq!(codes(&q, "matmul1").0, DType::I8);
        assert!(
            summary.decisions.iter().any(|d| d.contains("(matmul1)")),
            "{:?}",
            summary.decisions
        );
    }
}
