//! Per-layer quantization noise between an FP32 model and its quantized (QDQ) version.
//!
//! The data model below is what `lowbit compare` prints as JSON (documented in
//! `docs/compare-json.md`) and what the HTML report draws. [`compare_models`] fills it,
//! streaming: each sample runs through both models once and only running sums are kept, so
//! memory does not grow with the number of samples.
//!
//! Tensors are matched **by name**, which is what makes this work on QDQ files from any tool
//! (lowbit's `X_quantized`/`X_dequantized`, ONNX Runtime's `X_QuantizeLinear_Output`/
//! `X_DequantizeLinear_Output`):
//!
//! * a **quantized activation** is a `QuantizeLinear` of the quantized model whose input `X` is
//!   neither an initializer nor a constant and also exists in the FP32 model; its dequantized
//!   counterpart is the output of the `DequantizeLinear` reading the `QuantizeLinear`'s output.
//!   (ONNX Runtime quantizes a graph output `Y` by renaming its producer's output to
//!   `Y_QuantizeLinear_Input` and giving `Y` to the `DequantizeLinear`: then `Y` is the FP32
//!   tensor.)
//!   *Accumulated* noise compares `X` in the FP32 run with that counterpart in the quantized
//!   run; *isolated* noise compares `X` with `X` through its own quantize/dequantize (the shared
//!   math core, [`lowbit_kernels::quantize`]). When every reader of the counterpart is one
//!   `Relu`/`Clip` (a quantizer gives a tensor the range of the clamp that follows it), noise and
//!   clip rate are measured after that clamp: saturation the clamp undoes costs nothing.
//! * a **quantized weight** is a `DequantizeLinear` reading an initializer (or a `Constant`);
//!   its reference is the FP32 initializer in the same input slot of the same node (matched by
//!   name, else by position among nodes of its op type). When the quantized model folded a
//!   `BatchNormalization` into that node, the reference is the FP32 weight folded the same way
//!   ([`lowbit_quant::passes::bn_fold`]).
//! * the **ranking** scores every quantized compute node (a node reading a quantized weight, or
//!   a Conv/MatMul/Gemm/Add/Mul… reading a quantized activation) by the lowest isolated SQNR
//!   among its quantized inputs — for a weight, the SQNR of its worst output channel — and says
//!   what to try.
//!
//! ```no_run
//! use lowbit_eval::compare::{compare_models, CompareOptions};
//! let fp32 = lowbit_onnx::load_model("model.onnx")?;
//! let quant = lowbit_onnx::load_model("model.int8.onnx")?;
//! let x = lowbit_tensor::Tensor::from_vec(vec![1, 4], vec![0f32; 4])?;
//! let samples = vec![vec![("input".to_string(), x)]];
//! let opts = CompareOptions { fp32_model: "model.onnx".into(), ..Default::default() };
//! let report = compare_models(&fp32, &quant, samples, &opts)?;
//! for r in report.ranking.iter().take(5) {
//!     println!("{} ({}): {:.1} dB, {}", r.node, r.op_type, r.sqnr_db, r.hint);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::metrics::{Noise, NoiseAccumulator};
use lowbit_engine::{EngineError, Session, SessionOptions};
use lowbit_kernels::quantize::{self as core, ParamMap};
use lowbit_onnx::attr::Attrs;
use lowbit_onnx::pb::{GraphProto, ModelProto, NodeProto, TensorProto};
use lowbit_onnx::tensor_proto::tensor_from_proto;
use lowbit_tensor::{DType, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// The report's `format` value.
pub const FORMAT: &str = "lowbit-compare/1";

/// Bins of each activation's histogram.
pub const HISTOGRAM_BINS: usize = 64;

/// Everything `lowbit compare` measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompareReport {
    /// `"lowbit-compare/1"`.
    pub format: String,
    pub fp32_model: String,
    pub quant_model: String,
    /// Samples (runs) compared.
    pub samples: usize,
    /// Graph outputs: noise of the quantized model's outputs against FP32's.
    pub outputs: Vec<TensorNoise>,
    /// Every quantized activation, in graph (topological) order of the FP32 model.
    pub activations: Vec<ActivationNoise>,
    /// Every quantized weight.
    pub weights: Vec<WeightNoise>,
    /// The worst layers first, each with a hint.
    pub ranking: Vec<RankedLayer>,
}

/// Noise of one graph output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorNoise {
    pub name: String,
    pub noise: Noise,
}

/// One quantized activation tensor (matched by name between the two models).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivationNoise {
    /// The FP32 tensor's name.
    pub tensor: String,
    /// The node that produces it in the FP32 model, and its op type ("" for graph inputs).
    pub producer: String,
    pub producer_op: String,
    /// Position in the FP32 model's topological order (for charts in graph order): 0 for a
    /// graph input, `1 + i` for the output of the `i`-th node.
    pub order: usize,
    /// The quantized model's parameters for it (per-tensor scale and zero point, value type).
    pub scale: f32,
    pub zero_point: i32,
    pub value_type: String,
    /// Running the whole quantized model: FP32 tensor vs its dequantized counterpart.
    pub accumulated: Noise,
    /// Only this tensor quantized (the FP32 activation through its own Q/DQ).
    pub isolated: Noise,
    /// Fraction of FP32 values outside the representable range `[(qmin − zp)·s, (qmax −
    /// zp)·s]` (saturated), 0..1. Values within half a step of the range round onto its end
    /// code anyway and are not counted (integer types). For a tensor read only by a
    /// Relu/Clip, counted after that clamp (see the [module docs](self)), like both noises.
    pub clip_rate: f64,
    /// FP32 values observed (before any clamp): extremes and a histogram for the report. The
    /// histogram's window is the representable range widened by half its width on each side;
    /// values beyond the window are counted in the end bins.
    pub min: f32,
    pub max: f32,
    pub histogram: Histogram,
}

/// A fixed-bin histogram over `[lo, hi]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub lo: f32,
    pub hi: f32,
    pub counts: Vec<u64>,
}

/// One quantized weight (an initializer behind a DequantizeLinear in the quantized model).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightNoise {
    /// The FP32 initializer's name.
    pub weight: String,
    /// The node consuming it and its op type (e.g. "Conv"), and for Conv the group count
    /// (depthwise when it equals the channel count).
    pub node: String,
    pub op_type: String,
    pub group: i64,
    /// Quantization axis (`None`: per tensor) and the value type.
    pub axis: Option<i64>,
    pub value_type: String,
    pub noise: Noise,
    /// Per output channel (axis 0 for Conv and Gemm `transB=1`, axis 1 for Gemm `transB=0`,
    /// the last axis for MatMul, the quantization axis otherwise): min and max of the FP32
    /// weights (BatchNormalization folded in when the quantized model folded it), for the
    /// report's range chart.
    pub channel_min: Vec<f32>,
    pub channel_max: Vec<f32>,
}

/// A layer in the worst-first ranking.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankedLayer {
    /// The FP32 node's name and op type.
    pub node: String,
    pub op_type: String,
    /// The tensor whose noise ranks it (the node's quantized input activation or output).
    pub tensor: String,
    /// Isolated SQNR (dB) of what this layer adds: the lower of its quantized activation
    /// inputs' isolated SQNR and its weight's SQNR in its worst output channel (per-tensor
    /// scales starve small channels, which the weight's pooled `noise` hides).
    #[serde(with = "crate::metrics::finite_or_null")]
    pub sqnr_db: f64,
    /// A concrete suggestion, e.g. "depthwise conv with per-tensor weights: use per-channel".
    pub hint: String,
}

// ------------------------------------------------------------------------------------------
// The computation

/// How [`compare_models`] runs.
#[derive(Clone, Debug, Default)]
pub struct CompareOptions {
    /// Engine worker threads for both models (0: one per core). The report does not depend on
    /// it.
    pub threads: usize,
    /// Written to the report's `fp32_model` and `quant_model` (typically the file paths).
    pub fp32_model: String,
    pub quant_model: String,
}

/// Why a comparison could not be made; every variant names the tensor or node concerned.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// A model without a graph, or with a cycle.
    #[error("{model} model: {msg}")]
    Model { model: &'static str, msg: String },
    /// A tensor the quantized model quantizes (or outputs) is not in the FP32 model.
    #[error(
        "tensor '{tensor}' ({node} in the quantized model) does not exist in the FP32 model: \
         were both made from the same FP32 file?"
    )]
    MissingInFp32 { tensor: String, node: String },
    #[error(
        "no quantized tensor found: no QuantizeLinear of the quantized model reads an FP32 \
         activation and no DequantizeLinear reads an initializer (is it a QDQ model?)"
    )]
    NoQuantizedTensor,
    /// A Q/DQ node whose parameters cannot be read (not constant, or a layout not handled).
    #[error("node '{node}' ({op_type}) of the quantized model: {msg}")]
    QuantNode { node: String, op_type: String, msg: String },
    /// A quantized weight without a matching FP32 initializer, or of another size.
    #[error("weight '{weight}' (input {slot} of node '{node}'): {msg}")]
    Weight { weight: String, node: String, slot: usize, msg: String },
    /// A tensor that cannot be compared (not numeric, sizes differ, never produced).
    #[error("tensor '{tensor}': {msg}")]
    Tensor { tensor: String, msg: String },
    /// The engine failed to load or run one of the models (the error names the node).
    #[error("{model} model: {source}")]
    Engine {
        model: &'static str,
        #[source]
        source: EngineError,
    },
    #[error("no samples to compare")]
    NoSamples,
}

type Result<T> = std::result::Result<T, CompareError>;

/// Ops whose quantized activation inputs make them a ranked layer (with a quantized weight, any
/// op is). Ops that only move, select or clamp values (Relu, MaxPool, Reshape, Concat…) add no
/// noise of their own and are not ranked.
const COMPUTE: &[&str] = &[
    "Conv",
    "ConvTranspose",
    "MatMul",
    "Gemm",
    "Einsum",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Sum",
    "Softmax",
    "LayerNormalization",
    "InstanceNormalization",
    "BatchNormalization",
];

/// Isolated SQNR (dB) from which a layer needs nothing (about 5 effective bits): an 8-bit grid
/// over a well-used range gives 35–50 dB, and 7-bit per-channel weights 35–40 dB.
const FINE_DB: f64 = 30.0;
/// Clip rate, or share of the isolated squared error coming from saturated values, from which
/// an activation counts as clipped.
const CLIPPED_RATE: f64 = 1e-3;
const CLIPPED_ERROR_SHARE: f64 = 0.5;

fn is_default_domain(n: &NodeProto) -> bool {
    n.domain.is_empty() || n.domain == "ai.onnx"
}

/// A node's name, or `Op#index` for an unnamed one.
fn label(n: &NodeProto, idx: usize) -> String {
    if n.name.is_empty() {
        format!("{}#{idx}", n.op_type)
    } else {
        n.name.clone()
    }
}

/// One model's graph with the indices the matching needs.
struct View<'a> {
    what: &'static str,
    graph: &'a GraphProto,
    /// Node indices in topological order.
    order: Vec<usize>,
    /// Topological position of each node index.
    position: Vec<usize>,
    producer: HashMap<&'a str, usize>,
    consumers: HashMap<&'a str, Vec<usize>>,
    /// Named nodes by (name, op type).
    by_name: HashMap<(&'a str, &'a str), usize>,
    inputs: HashSet<&'a str>,
    inits: HashMap<&'a str, &'a TensorProto>,
    /// Default-domain opset.
    opset: i64,
}

impl<'a> View<'a> {
    fn new(model: &'a ModelProto, what: &'static str) -> Result<View<'a>> {
        let graph = model.graph.as_ref().ok_or_else(|| CompareError::Model {
            model: what,
            msg: "the model has no graph".into(),
        })?;
        let order = lowbit_onnx::graph::topo_order(graph)
            .map_err(|e| CompareError::Model { model: what, msg: e.to_string() })?;
        let mut position = vec![0; graph.node.len()];
        for (p, &i) in order.iter().enumerate() {
            position[i] = p;
        }
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut by_name = HashMap::new();
        for (i, n) in graph.node.iter().enumerate() {
            if !n.name.is_empty() {
                by_name.entry((n.name.as_str(), n.op_type.as_str())).or_insert(i);
            }
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                producer.entry(o.as_str()).or_insert(i);
            }
            for x in n.input.iter().filter(|x| !x.is_empty()) {
                let c = consumers.entry(x.as_str()).or_default();
                if c.last() != Some(&i) {
                    c.push(i);
                }
            }
        }
        let inits: HashMap<&str, &TensorProto> =
            graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        let inputs = graph
            .input
            .iter()
            .map(|v| v.name.as_str())
            .filter(|n| !inits.contains_key(n))
            .collect();
        let opset = model
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map_or(1, |o| o.version);
        Ok(View {
            what,
            graph,
            order,
            position,
            producer,
            consumers,
            by_name,
            inputs,
            inits,
            opset,
        })
    }

    fn node(&self, i: usize) -> &'a NodeProto {
        &self.graph.node[i]
    }

    /// A value computed at run time (graph input or node output, not a constant).
    fn is_runtime_value(&self, name: &str) -> bool {
        self.inputs.contains(name)
            || self.producer.get(name).is_some_and(|&p| self.node(p).op_type != "Constant")
    }

    fn is_constant(&self, name: &str) -> bool {
        self.inits.contains_key(name)
            || self.producer.get(name).is_some_and(|&p| self.node(p).op_type == "Constant")
    }

    /// The value of an initializer or `Constant` output; `Ok(None)` for anything else.
    fn constant(&self, name: &str) -> std::result::Result<Option<Tensor>, String> {
        if let Some(t) = self.inits.get(name) {
            return tensor_from_proto(t).map(Some).map_err(|e| e.to_string());
        }
        let Some(&p) = self.producer.get(name) else { return Ok(None) };
        let n = self.node(p);
        if n.op_type != "Constant" {
            return Ok(None);
        }
        let a = Attrs::new(n);
        let err = |e: lowbit_onnx::attr::AttrError| e.msg;
        if let Some(t) = a.tensor("value").map_err(err)? {
            return tensor_from_proto(t).map(Some).map_err(|e| e.to_string());
        }
        if let Some(v) = a.float("value_float").map_err(err)? {
            return Ok(Some(Tensor::scalar(v)));
        }
        if let Some(v) = a.floats("value_floats").map_err(err)? {
            return Tensor::from_vec(vec![v.len()], v).map(Some).map_err(|e| e.to_string());
        }
        if let Some(v) = a.int("value_int").map_err(err)? {
            return Ok(Some(Tensor::scalar(v)));
        }
        if let Some(v) = a.ints("value_ints").map_err(err)? {
            return Tensor::from_vec(vec![v.len()], v).map(Some).map_err(|e| e.to_string());
        }
        Err(format!("Constant node '{}' has no value this tool reads", label(n, p)))
    }

    /// Position of node `i` among the nodes of its op type, in topological order.
    fn op_position(&self, i: usize) -> usize {
        let op = &self.node(i).op_type;
        let p = self.position[i];
        self.order[..p].iter().filter(|&&j| self.node(j).op_type == *op).count()
    }

    /// The node standing for `other`'s node `i`: same name and op type, else the same position
    /// among nodes of that op type.
    fn matching_node(&self, other: &View, i: usize) -> Option<usize> {
        let n = other.node(i);
        if let Some(&j) = self.by_name.get(&(n.name.as_str(), n.op_type.as_str())) {
            return Some(j);
        }
        let k = other.op_position(i);
        self.order.iter().copied().filter(|&j| self.node(j).op_type == n.op_type).nth(k)
    }

    /// `order` of [`ActivationNoise`]: 0 for a graph input, 1 + the producer's position.
    fn value_order(&self, name: &str) -> usize {
        self.producer.get(name).map_or(0, |&p| self.position[p] + 1)
    }
}

/// A clamp `[lo, hi]` applied by the only reader of a dequantized tensor.
#[derive(Clone, Copy, Debug)]
struct Clamp {
    lo: f32,
    hi: f32,
}

impl Clamp {
    fn apply(&self, v: f32) -> f32 {
        if v < self.lo {
            self.lo
        } else if v > self.hi {
            self.hi
        } else {
            v
        }
    }
}

/// A quantized activation as the quantized model defines it.
struct ActPlan {
    tensor: String,
    dq_out: String,
    scale: f32,
    zero_point: Option<TensorData>,
    zp_report: i32,
    dtype: DType,
    saturate: bool,
    /// The representable range, and how far beyond it a value still rounds onto the end code
    /// (half a step for integer types).
    lo: f32,
    hi: f32,
    margin: f32,
    clamp: Option<Clamp>,
    producer: String,
    producer_op: String,
    order: usize,
}

/// Running statistics of one quantized activation.
struct ActStats {
    accumulated: NoiseAccumulator,
    isolated: NoiseAccumulator,
    clipped: u64,
    seen: u64,
    err_sq: f64,
    clip_err_sq: f64,
    min: f32,
    max: f32,
    counts: Vec<u64>,
}

impl ActStats {
    fn new() -> ActStats {
        ActStats {
            accumulated: NoiseAccumulator::new(),
            isolated: NoiseAccumulator::new(),
            clipped: 0,
            seen: 0,
            err_sq: 0.0,
            clip_err_sq: 0.0,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            counts: vec![0; HISTOGRAM_BINS],
        }
    }

    fn clip_rate(&self) -> f64 {
        if self.seen == 0 {
            0.0
        } else {
            self.clipped as f64 / self.seen as f64
        }
    }

    fn clip_error_share(&self) -> f64 {
        if self.err_sq == 0.0 {
            0.0
        } else {
            self.clip_err_sq / self.err_sq
        }
    }
}

/// The histogram window of an activation: its representable range widened by half on each side.
fn histogram_window(lo: f32, hi: f32) -> (f32, f32) {
    let w = if hi > lo { hi - lo } else { lo.abs().max(1.0) };
    (lo - 0.5 * w, hi + 0.5 * w)
}

fn core_err(tensor: &str) -> impl Fn(core::QuantizeError) -> CompareError + '_ {
    move |e| CompareError::Tensor { tensor: tensor.to_string(), msg: e.0 }
}

impl ActPlan {
    /// The FP32 activation through this plan's own quantize/dequantize (the shared core).
    fn fake_quant(&self, x: &[f32]) -> Result<Vec<f32>> {
        let map = ParamMap::per_tensor();
        let zp = self.zero_point.as_ref();
        let q = core::quantize(x, &[self.scale], zp, &map, self.dtype, self.saturate)
            .map_err(core_err(&self.tensor))?;
        core::dequantize(&q, &[self.scale], zp, &map).map_err(core_err(&self.tensor))
    }

    /// Isolated noise, clip rate, extremes and histogram of one FP32 batch of this tensor.
    fn observe_fp32(&self, st: &mut ActStats, x: &[f32]) -> Result<()> {
        let dq = self.fake_quant(x)?;
        let (wlo, whi) = histogram_window(self.lo, self.hi);
        let bins = HISTOGRAM_BINS as f64;
        let inv = bins / (whi as f64 - wlo as f64);
        let mut xc = Vec::new();
        let mut dc = Vec::new();
        if self.clamp.is_some() {
            xc.reserve(x.len());
            dc.reserve(x.len());
        }
        for (&v, &d) in x.iter().zip(&dq) {
            if v.is_nan() {
                continue;
            }
            st.min = st.min.min(v);
            st.max = st.max.max(v);
            let b = ((v as f64 - wlo as f64) * inv).floor().clamp(0.0, bins - 1.0) as usize;
            st.counts[b] += 1;
            let (v, d) = match &self.clamp {
                Some(c) => {
                    let (v, d) = (c.apply(v), c.apply(d));
                    xc.push(v);
                    dc.push(d);
                    (v, d)
                }
                None => (v, d),
            };
            let e = (v as f64 - d as f64).powi(2);
            st.err_sq += e;
            if v < self.lo - self.margin || v > self.hi + self.margin {
                st.clipped += 1;
                st.clip_err_sq += e;
            }
        }
        st.seen += x.len() as u64;
        if self.clamp.is_some() {
            st.isolated.add(&xc, &dc);
        } else {
            st.isolated.add(x, &dq);
        }
        Ok(())
    }

    /// Accumulated noise: the FP32 tensor against the quantized model's dequantized copy.
    fn observe_quant(&self, st: &mut ActStats, fp32: &[f32], quant: &[f32]) {
        match &self.clamp {
            Some(c) => {
                let a: Vec<f32> = fp32.iter().map(|&v| c.apply(v)).collect();
                let b: Vec<f32> = quant.iter().map(|&v| c.apply(v)).collect();
                st.accumulated.add(&a, &b);
            }
            None => st.accumulated.add(fp32, quant),
        }
    }
}

/// A quantized weight, its reference and what the ranking needs to know of it.
struct WeightPlan {
    report: WeightNoise,
    /// SQNR (dB) of the worst output channel: the weight's score in the ranking.
    worst_channel_db: f64,
    dq_out: String,
    per_tensor: bool,
    depthwise: bool,
    dtype: DType,
}

fn qnode_err(n: &NodeProto, idx: usize, msg: impl Into<String>) -> CompareError {
    CompareError::QuantNode { node: label(n, idx), op_type: n.op_type.clone(), msg: msg.into() }
}

fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    (a >= 0 && (a as usize) < rank.max(1)).then_some(a as usize)
}

/// How a `DequantizeLinear`'s `scale` maps onto its input (as the engine reads ONNX's rules):
/// the layout, and the axis and block size for the report.
fn param_layout(
    x: &[usize],
    scale: &Tensor,
    axis: i64,
    block: i64,
) -> std::result::Result<(ParamMap, Option<i64>), String> {
    if block > 0 {
        let a = normalize_axis(axis, x.len()).ok_or(format!("axis {axis} out of range"))?;
        return Ok((ParamMap::blocked(x, a, block as usize), Some(a as i64)));
    }
    if scale.len() == 1 {
        return Ok((ParamMap::per_tensor(), None));
    }
    if scale.rank() == 1 {
        let a = normalize_axis(axis, x.len()).ok_or(format!("axis {axis} out of range"))?;
        if scale.len() == x[a] {
            return Ok((ParamMap::per_axis(x, a), Some(a as i64)));
        }
    }
    Err(format!("scale of shape {:?} does not fit an input of shape {x:?}", scale.shape()))
}

/// The axis along which a weight's per-channel ranges are reported.
fn channel_axis(
    op: &str,
    slot: usize,
    trans_b: bool,
    rank: usize,
    quant_axis: Option<i64>,
) -> usize {
    let by_op = match (op, slot) {
        ("Conv", 1) if rank >= 1 => Some(0),
        ("ConvTranspose", 1) if rank >= 2 => Some(1),
        ("Gemm", 1) if rank == 2 => Some(if trans_b { 0 } else { 1 }),
        ("MatMul", 1) if rank >= 2 => Some(rank - 1),
        _ => None,
    };
    by_op
        .or_else(|| quant_axis.and_then(|a| normalize_axis(a, rank)))
        .unwrap_or(0)
        .min(rank.saturating_sub(1))
}

fn channel_ranges(v: &[f32], shape: &[usize], axis: usize) -> (Vec<f32>, Vec<f32>) {
    if shape.is_empty() || v.is_empty() {
        let (lo, hi) =
            v.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        return (vec![lo], vec![hi]);
    }
    let dim = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let mut lo = vec![f32::INFINITY; dim];
    let mut hi = vec![f32::NEG_INFINITY; dim];
    for (i, &x) in v.iter().enumerate() {
        let c = (i / inner.max(1)) % dim.max(1);
        lo[c] = lo[c].min(x);
        hi[c] = hi[c].max(x);
    }
    (lo, hi)
}

/// The lowest SQNR (dB) among the output channels of a weight (along `axis`) that are not all
/// zero: a per-tensor scale starves the channels with the smallest range, which the pooled SQNR
/// hides, while each output channel is a feature of its own downstream (in a depthwise conv it
/// is computed from that channel's weights alone).
fn worst_channel_sqnr(reference: &[f32], test: &[f32], shape: &[usize], axis: usize) -> f64 {
    let (dim, inner) = match shape.get(axis) {
        Some(&d) => (d.max(1), shape[axis + 1..].iter().product::<usize>().max(1)),
        None => (1, 1),
    };
    let mut signal = vec![0f64; dim];
    let mut noise = vec![0f64; dim];
    for (i, (&r, &t)) in reference.iter().zip(test).enumerate() {
        let c = (i / inner) % dim;
        signal[c] += (r as f64) * (r as f64);
        noise[c] += (r as f64 - t as f64) * (r as f64 - t as f64);
    }
    signal
        .iter()
        .zip(&noise)
        .filter(|(s, _)| **s > 0.0)
        .map(|(s, n)| if *n == 0.0 { f64::INFINITY } else { 10.0 * (s / n).log10() })
        .fold(f64::INFINITY, f64::min)
}

fn f32_values(t: &Tensor, name: &str) -> Result<Vec<f32>> {
    match t.data() {
        TensorData::F32(v) => Ok(v.clone()),
        _ => t.to_f32_vec().map_err(|e| CompareError::Tensor {
            tensor: name.to_string(),
            msg: format!("cannot be compared as numbers: {e}"),
        }),
    }
}

/// The clamp of a Relu or Clip node, when its bounds are constants.
fn clamp_of(v: &View, idx: usize) -> Option<Clamp> {
    let n = v.node(idx);
    if !is_default_domain(n) {
        return None;
    }
    match n.op_type.as_str() {
        "Relu" => Some(Clamp { lo: 0.0, hi: f32::INFINITY }),
        "Clip" if v.opset < 11 => {
            let a = Attrs::new(n);
            let lo = a.float("min").ok()?.unwrap_or(f32::NEG_INFINITY);
            let hi = a.float("max").ok()?.unwrap_or(f32::INFINITY);
            Some(Clamp { lo, hi })
        }
        "Clip" => {
            let bound = |k: usize, default: f32| -> Option<f32> {
                match n.input.get(k).filter(|s| !s.is_empty()) {
                    None => Some(default),
                    Some(s) => v.constant(s).ok()??.to_f32_vec().ok()?.first().copied(),
                }
            };
            Some(Clamp { lo: bound(1, f32::NEG_INFINITY)?, hi: bound(2, f32::INFINITY)? })
        }
        _ => None,
    }
}

/// Every quantized activation of `q` (in `q`'s topological order).
fn activation_plans(q: &View, f: &View) -> Result<Vec<ActPlan>> {
    let mut plans = Vec::new();
    for &i in &q.order {
        let n = q.node(i);
        if n.op_type != "QuantizeLinear" || !is_default_domain(n) {
            continue;
        }
        let x = n.input.first().map(String::as_str).unwrap_or("");
        if x.is_empty() || q.is_constant(x) {
            continue;
        }
        let qout = n.output.first().map(String::as_str).unwrap_or("");
        let dq = q.consumers.get(qout).into_iter().flatten().copied().find(|&c| {
            let m = q.node(c);
            m.op_type == "DequantizeLinear" && m.input.first().map(String::as_str) == Some(qout)
        });
        let Some(dq) = dq else {
            return Err(qnode_err(
                n,
                i,
                format!("its output '{qout}' is not read by a DequantizeLinear (only QDQ models are compared)"),
            ));
        };
        let dq_out = q.node(dq).output.first().cloned().unwrap_or_default();
        // ONNX Runtime quantizes a graph output `Y` by renaming its producer's output
        // (`Y_QuantizeLinear_Input`) and giving `Y` to the DequantizeLinear.
        let x: String = if f.is_runtime_value(x) {
            x.to_string()
        } else if f.is_runtime_value(&dq_out) {
            dq_out.clone()
        } else {
            return Err(CompareError::MissingInFp32 {
                tensor: x.to_string(),
                node: format!("input of QuantizeLinear '{}'", label(n, i)),
            });
        };
        let param = |k: usize| -> Result<Option<Tensor>> {
            match n.input.get(k).filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(s) => match q.constant(s).map_err(|m| qnode_err(n, i, m))? {
                    Some(t) => Ok(Some(t)),
                    None => Err(qnode_err(n, i, format!("input '{s}' is not a constant"))),
                },
            }
        };
        let scale = param(1)?.ok_or_else(|| qnode_err(n, i, "no scale"))?;
        let zp = param(2)?;
        let a = Attrs::new(n);
        let attr_err = |e: lowbit_onnx::attr::AttrError| qnode_err(n, i, e.msg);
        if a.int_or("block_size", 0).map_err(attr_err)? > 0 || scale.len() != 1 {
            return Err(qnode_err(
                n,
                i,
                format!(
                    "activation '{x}' is quantized per axis or in blocks (scale shape {:?}); only \
                     per-tensor activations are compared",
                    scale.shape()
                ),
            ));
        }
        let out_dtype =
            match a.int("output_dtype").map_err(attr_err)? {
                None | Some(0) => None,
                Some(id) => Some(DType::from_onnx(id as i32).ok_or_else(|| {
                    qnode_err(n, i, format!("output_dtype {id} is not supported"))
                })?),
            };
        let dtype = out_dtype.or(zp.as_ref().map(|z| z.dtype())).unwrap_or(DType::U8);
        let saturate = a.int_or("saturate", 1).map_err(attr_err)? != 0;
        let s = scale.to_f32_vec().map_err(|e| qnode_err(n, i, e.to_string()))?[0];
        let zero_point = zp.map(|z| z.into_data());
        let zp_report = zero_point
            .as_ref()
            .and_then(core::int_values)
            .and_then(|v| v.first().copied())
            .unwrap_or(0);
        // The representable range: the extreme codes, found through the same core.
        let map = ParamMap::per_tensor();
        let ends =
            core::quantize(&[f32::MIN, f32::MAX], &[s], zero_point.as_ref(), &map, dtype, true)
                .and_then(|qv| core::dequantize(&qv, &[s], zero_point.as_ref(), &map))
                .map_err(|e| qnode_err(n, i, e.0))?;
        let readers: Vec<usize> = q.consumers.get(dq_out.as_str()).cloned().unwrap_or_default();
        let clamp = if readers.len() == 1 && !q.graph.output.iter().any(|o| o.name == dq_out) {
            clamp_of(q, readers[0])
        } else {
            None
        };
        let (producer, producer_op) = match f.producer.get(x.as_str()) {
            Some(&p) => (label(f.node(p), p), f.node(p).op_type.clone()),
            None => (String::new(), String::new()),
        };
        let order = f.value_order(&x);
        plans.push(ActPlan {
            tensor: x,
            dq_out,
            scale: s,
            zero_point,
            zp_report,
            dtype,
            saturate,
            lo: ends[0],
            hi: ends[1],
            margin: if core::int_range(dtype).is_some() { 0.5 * s.abs() } else { 0.0 },
            clamp,
            producer,
            producer_op,
            order,
        });
    }
    Ok(plans)
}

/// Every quantized weight of `q` with its FP32 reference, looked up in `refs` (the FP32 model,
/// then the FP32 model with BatchNormalization folded, when it has any).
fn weight_plans(q: &View, refs: &[View]) -> Result<Vec<WeightPlan>> {
    let mut plans = Vec::new();
    for &i in &q.order {
        let n = q.node(i);
        if n.op_type != "DequantizeLinear" || !is_default_domain(n) {
            continue;
        }
        let w = n.input.first().map(String::as_str).unwrap_or("");
        if w.is_empty() || !q.is_constant(w) {
            continue;
        }
        let out = n.output.first().cloned().unwrap_or_default();
        // The node that reads the dequantized weight, and in which slot.
        let Some((c, slot)) = q
            .consumers
            .get(out.as_str())
            .into_iter()
            .flatten()
            .find_map(|&c| q.node(c).input.iter().position(|s| *s == out).map(|k| (c, k)))
        else {
            continue;
        };
        let cn = q.node(c);
        let get = |s: &str| -> Result<Tensor> {
            q.constant(s)
                .map_err(|m| qnode_err(n, i, m))?
                .ok_or_else(|| qnode_err(n, i, format!("input '{s}' is not a constant")))
        };
        let qt = get(w)?;
        let scale_name = n.input.get(1).map(String::as_str).unwrap_or("");
        if scale_name.is_empty() {
            return Err(qnode_err(n, i, "no scale"));
        }
        let scale = get(scale_name)?;
        let zp = match n.input.get(2).filter(|s| !s.is_empty()) {
            Some(s) => Some(get(s)?),
            None => None,
        };
        let a = Attrs::new(n);
        let attr_err = |e: lowbit_onnx::attr::AttrError| qnode_err(n, i, e.msg);
        let axis = if q.opset >= 13 { a.int_or("axis", 1).map_err(attr_err)? } else { 1 };
        let block = a.int_or("block_size", 0).map_err(attr_err)?;
        let (map, qaxis) =
            param_layout(qt.shape(), &scale, axis, block).map_err(|m| qnode_err(n, i, m))?;
        let sv = scale.to_f32_vec().map_err(|e| qnode_err(n, i, e.to_string()))?;
        let dq = core::dequantize(qt.data(), &sv, zp.as_ref().map(|z| z.data()), &map)
            .map_err(|e| qnode_err(n, i, e.0))?;

        // The FP32 reference: the matching node's input in the same slot, in the FP32 model
        // or in its BatchNormalization-folded copy, whichever is closer to the dequantized
        // weight (quantization error is far smaller than a BatchNormalization scale; other
        // tools fold and rename differently, so names alone cannot tell).
        let weight_err = |msg: String| CompareError::Weight {
            weight: w.to_string(),
            node: label(cn, c),
            slot,
            msg,
        };
        let mut found: Option<(usize, usize, String, Tensor, Vec<f32>, Noise)> = None;
        let mut mismatch: Option<String> = None;
        for (ri, r) in refs.iter().enumerate() {
            let Some(j) = r.matching_node(q, c) else { continue };
            let Some(name) = r.node(j).input.get(slot).filter(|s| !s.is_empty()) else {
                continue;
            };
            let Some(rt) = r.constant(name).map_err(weight_err)? else { continue };
            let rv = f32_values(&rt, name)?;
            if rv.len() != dq.len() {
                mismatch = Some(format!(
                    "FP32 '{name}' has shape {:?}, the quantized weight {:?}",
                    rt.shape(),
                    qt.shape()
                ));
                continue;
            }
            let noise = crate::metrics::noise(&rv, &dq).unwrap_or(Noise {
                sqnr_db: f64::INFINITY,
                mse: 0.0,
                cosine: 1.0,
                max_abs: 0.0,
                count: 0,
            });
            if found.as_ref().is_none_or(|f| noise.sqnr_db > f.5.sqnr_db) {
                found = Some((ri, j, name.clone(), rt, rv, noise));
            }
        }
        let Some((ri, j, ref_name, rt, rv, noise)) = found else {
            return Err(weight_err(mismatch.unwrap_or_else(|| {
                format!("no FP32 initializer in input {slot} of a matching {} node", cn.op_type)
            })));
        };
        let r = &refs[ri];
        // Name the weight as the FP32 file does (the folded copy only exists here).
        let rn = r.node(j);
        let (node_name, weight_name) = match refs[0].matching_node(q, c) {
            Some(k) if ri > 0 => {
                let n0 = refs[0].node(k);
                (label(n0, k), n0.input.get(slot).cloned().unwrap_or(ref_name.clone()))
            }
            _ => (label(rn, j), ref_name.clone()),
        };
        let ca = Attrs::new(cn);
        let group = if cn.op_type == "Conv" { ca.int_or("group", 1).unwrap_or(1) } else { 1 };
        let trans_b = ca.int_or("transB", 0).unwrap_or(0) != 0;
        let axis = channel_axis(&cn.op_type, slot, trans_b, rt.rank(), qaxis);
        let (channel_min, channel_max) = channel_ranges(&rv, rt.shape(), axis);
        // Per-channel scores need channels of several values; 1-D parameters (biases,
        // normalization parameters) are scored as a whole.
        let worst_channel_db = if rt.rank() >= 2 && rv.len() > rt.shape()[axis] {
            worst_channel_sqnr(&rv, &dq, rt.shape(), axis)
        } else {
            noise.sqnr_db
        };
        let depthwise =
            cn.op_type == "Conv" && slot == 1 && group > 1 && qt.shape().get(1) == Some(&1);
        plans.push(WeightPlan {
            report: WeightNoise {
                weight: weight_name,
                node: node_name,
                op_type: cn.op_type.clone(),
                group,
                axis: qaxis,
                value_type: qt.dtype().name().to_string(),
                noise,
                channel_min,
                channel_max,
            },
            worst_channel_db,
            dq_out: out,
            per_tensor: qaxis.is_none(),
            depthwise,
            dtype: qt.dtype(),
        });
    }
    Ok(plans)
}

/// Folds BatchNormalization into Conv/Gemm as lowbit's quantizer does; `None` when the model
/// has none to fold.
fn bn_folded(fp32: &ModelProto) -> Option<ModelProto> {
    let has_bn = fp32
        .graph
        .as_ref()
        .is_some_and(|g| g.node.iter().any(|n| n.op_type == "BatchNormalization"));
    if !has_bn {
        return None;
    }
    let mut g = lowbit_onnx::graph::Graph::new(fp32.clone()).ok()?;
    match lowbit_quant::passes::bn_fold::fold_batch_norms(&mut g) {
        Ok(n) if n > 0 => Some(g.into_model()),
        _ => None,
    }
}

/// What limits a ranked layer.
enum Culprit<'a> {
    Activation(&'a ActPlan, &'a ActStats),
    Weight(&'a WeightPlan),
}

fn hint(node: &str, sqnr_db: f64, culprit: &Culprit) -> String {
    let exclude = format!("--exclude '{node}'");
    if let Culprit::Weight(w) = culprit {
        if w.depthwise && w.per_tensor {
            // Structural: per-tensor scales on depthwise weights waste levels on every
            // channel whose range is smaller than the largest one.
            return "depthwise conv with per-tensor weights: use per-channel weights (--per-channel)"
                .into();
        }
    }
    if sqnr_db >= FINE_DB {
        return format!("fine ({sqnr_db:.0} dB): nothing to do");
    }
    match culprit {
        Culprit::Weight(w) => {
            if w.per_tensor {
                "per-tensor weights: use per-channel weights (--per-channel)".to_string()
            } else if matches!(w.dtype, DType::I4 | DType::U4) {
                format!("4-bit weights: use int8 (--weights int8), a smaller --block-size, or {exclude}")
            } else {
                format!("weight outliers even per channel: keep this layer in float ({exclude})")
            }
        }
        Culprit::Activation(p, st) => {
            let rate = st.clip_rate();
            if rate >= CLIPPED_RATE || st.clip_error_share() >= CLIPPED_ERROR_SHARE {
                format!(
                    "clipped activation '{}' ({:.2} % of values saturate): use --method minmax or a \
                     wider range",
                    p.tensor,
                    100.0 * rate
                )
            } else {
                format!(
                    "activation outliers in '{}': try --method percentile/entropy/mse or keep this \
                     layer in float ({exclude})",
                    p.tensor
                )
            }
        }
    }
}

/// Per-layer quantization noise of `quant` (a QDQ model) against `fp32` (the model it was made
/// from) over `samples` (one feed list per run, the same for both models). Streaming: one
/// sample's activations are held at a time. See the [module docs](self) for how tensors are
/// matched and measured.
pub fn compare_models(
    fp32: &ModelProto,
    quant: &ModelProto,
    samples: impl IntoIterator<Item = Vec<(String, Tensor)>>,
    opts: &CompareOptions,
) -> Result<CompareReport> {
    let q = View::new(quant, "quantized")?;
    let folded = bn_folded(fp32);
    let mut refs = vec![View::new(fp32, "FP32")?];
    if let Some(m) = &folded {
        refs.push(View::new(m, "FP32 (BatchNormalization folded)")?);
    }
    let f = &refs[0];

    let acts = activation_plans(&q, f)?;
    let weights = weight_plans(&q, &refs)?;
    if acts.is_empty() && weights.is_empty() {
        return Err(CompareError::NoQuantizedTensor);
    }
    let out_names: Vec<String> = q.graph.output.iter().map(|o| o.name.clone()).collect();
    for o in &out_names {
        if !f.is_runtime_value(o) && !f.is_constant(o) {
            return Err(CompareError::MissingInFp32 {
                tensor: o.clone(),
                node: "graph output".into(),
            });
        }
    }

    // Unfused: the quantized model's intermediate float values are what is compared.
    let so = SessionOptions::unfused(opts.threads);
    let s32 =
        Session::new(fp32, &so).map_err(|e| CompareError::Engine { model: f.what, source: e })?;
    let sq =
        Session::new(quant, &so).map_err(|e| CompareError::Engine { model: q.what, source: e })?;

    let mut by_tensor: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut by_dq: HashMap<&str, Vec<usize>> = HashMap::new();
    for (k, p) in acts.iter().enumerate() {
        by_tensor.entry(p.tensor.as_str()).or_default().push(k);
        by_dq.entry(p.dq_out.as_str()).or_default().push(k);
    }
    let keep: HashSet<&str> =
        by_tensor.keys().copied().chain(out_names.iter().map(String::as_str)).collect();
    let mut stats: Vec<ActStats> = acts.iter().map(|_| ActStats::new()).collect();
    let mut outputs: Vec<NoiseAccumulator> =
        out_names.iter().map(|_| NoiseAccumulator::new()).collect();
    let mut runs = 0usize;

    for feeds in samples {
        runs += 1;
        // FP32: isolated noise as each tensor appears; keep this sample's values for the
        // quantized run.
        let mut fp32_values: HashMap<String, Vec<f32>> = HashMap::new();
        let mut failure: Option<CompareError> = None;
        {
            let mut observe = |name: &str, t: &Tensor| {
                if failure.is_some() || !keep.contains(name) || fp32_values.contains_key(name) {
                    return;
                }
                let x = match f32_values(t, name) {
                    Ok(x) => x,
                    Err(e) => return failure = Some(e),
                };
                for &k in by_tensor.get(name).into_iter().flatten() {
                    if let Err(e) = acts[k].observe_fp32(&mut stats[k], &x) {
                        return failure = Some(e);
                    }
                }
                fp32_values.insert(name.to_string(), x);
            };
            s32.run_observed(feeds.clone(), &mut observe)
                .map_err(|e| CompareError::Engine { model: f.what, source: e })?;
        }
        if let Some(e) = failure {
            return Err(e);
        }
        // Quantized: accumulated noise of each dequantized copy.
        let outs = {
            let mut observe = |name: &str, t: &Tensor| {
                if failure.is_some() {
                    return;
                }
                let Some(ks) = by_dq.get(name) else { return };
                let y = match f32_values(t, name) {
                    Ok(y) => y,
                    Err(e) => return failure = Some(e),
                };
                for &k in ks {
                    let p = &acts[k];
                    let Some(x) = fp32_values.get(&p.tensor) else {
                        return failure = Some(CompareError::Tensor {
                            tensor: p.tensor.clone(),
                            msg: "the FP32 model did not produce it".into(),
                        });
                    };
                    if x.len() != y.len() {
                        return failure = Some(CompareError::Tensor {
                            tensor: p.tensor.clone(),
                            msg: format!(
                                "{} values in the FP32 model, {} in its dequantized copy '{}'",
                                x.len(),
                                y.len(),
                                p.dq_out
                            ),
                        });
                    }
                    p.observe_quant(&mut stats[k], x, &y);
                }
            };
            sq.run_observed(feeds, &mut observe)
                .map_err(|e| CompareError::Engine { model: q.what, source: e })?
        };
        if let Some(e) = failure {
            return Err(e);
        }
        for (acc, name) in outputs.iter_mut().zip(&out_names) {
            let y = outs.iter().find(|(n, _)| n == name).map(|(_, t)| t);
            let (Some(y), Some(x)) = (y, fp32_values.get(name)) else {
                return Err(CompareError::Tensor {
                    tensor: name.clone(),
                    msg: "graph output not produced by both models".into(),
                });
            };
            let y = f32_values(y, name)?;
            if x.len() != y.len() {
                return Err(CompareError::Tensor {
                    tensor: name.clone(),
                    msg: format!(
                        "{} values in the FP32 model, {} in the quantized one",
                        x.len(),
                        y.len()
                    ),
                });
            }
            acc.add(x, &y);
        }
    }
    if runs == 0 {
        return Err(CompareError::NoSamples);
    }

    // Assemble.
    let mut activations = Vec::with_capacity(acts.len());
    for (p, st) in acts.iter().zip(&stats) {
        let never =
            |what: &str| CompareError::Tensor { tensor: p.tensor.clone(), msg: what.into() };
        let isolated =
            st.isolated.noise().ok_or_else(|| never("never produced by the FP32 model"))?;
        let accumulated = st.accumulated.noise().ok_or_else(|| {
            never(&format!(
                "its dequantized copy '{}' was never produced by the quantized model",
                p.dq_out
            ))
        })?;
        let (lo, hi) = histogram_window(p.lo, p.hi);
        activations.push(ActivationNoise {
            tensor: p.tensor.clone(),
            producer: p.producer.clone(),
            producer_op: p.producer_op.clone(),
            order: p.order,
            scale: p.scale,
            zero_point: p.zp_report,
            value_type: p.dtype.name().to_string(),
            accumulated,
            isolated,
            clip_rate: st.clip_rate(),
            min: st.min,
            max: st.max,
            histogram: Histogram { lo, hi, counts: st.counts.clone() },
        });
    }

    let ranking = rank(&q, f, &acts, &stats, &weights);

    let mut order: Vec<usize> = (0..activations.len()).collect();
    order.sort_by(|&a, &b| {
        (activations[a].order, &activations[a].tensor)
            .cmp(&(activations[b].order, &activations[b].tensor))
    });
    let activations = order.into_iter().map(|k| activations[k].clone()).collect();
    let outputs = outputs
        .iter()
        .zip(out_names)
        // An output with no elements (e.g. zero detections) has no noise to report.
        .filter_map(|(acc, name)| acc.noise().map(|noise| TensorNoise { noise, name }))
        .collect();
    Ok(CompareReport {
        format: FORMAT.into(),
        fp32_model: opts.fp32_model.clone(),
        quant_model: opts.quant_model.clone(),
        samples: runs,
        outputs,
        activations,
        weights: weights.into_iter().map(|w| w.report).collect(),
        ranking,
    })
}

/// Scores every quantized compute node of `q` by its worst quantized input, worst first.
fn rank(
    q: &View,
    f: &View,
    acts: &[ActPlan],
    stats: &[ActStats],
    weights: &[WeightPlan],
) -> Vec<RankedLayer> {
    let act_of: HashMap<&str, usize> =
        acts.iter().enumerate().map(|(k, p)| (p.dq_out.as_str(), k)).collect();
    let weight_of: HashMap<&str, usize> =
        weights.iter().enumerate().map(|(k, w)| (w.dq_out.as_str(), k)).collect();
    let mut ranked: Vec<(f64, usize, RankedLayer)> = Vec::new();
    for &i in &q.order {
        let n = q.node(i);
        if matches!(n.op_type.as_str(), "QuantizeLinear" | "DequantizeLinear") {
            continue;
        }
        let bias_slot = matches!(n.op_type.as_str(), "Conv" | "ConvTranspose" | "Gemm");
        let mut worst: Option<(f64, String, Culprit)> = None;
        let mut has_weight = false;
        let mut has_act = false;
        for (slot, x) in n.input.iter().enumerate() {
            let cand = if let Some(&k) = act_of.get(x.as_str()) {
                has_act = true;
                let db = stats[k].isolated.noise().map_or(f64::INFINITY, |n| n.sqnr_db);
                (db, acts[k].tensor.clone(), Culprit::Activation(&acts[k], &stats[k]))
            } else if let Some(&k) = weight_of.get(x.as_str()) {
                // Biases (int32 with scale = input scale × weight scale) err by far less than
                // the layer's own rounding step; they are reported, not ranked.
                if (bias_slot && slot == 2) || weights[k].dtype == DType::I32 {
                    continue;
                }
                has_weight = true;
                let w = &weights[k];
                (w.worst_channel_db, w.report.weight.clone(), Culprit::Weight(w))
            } else {
                continue;
            };
            if worst.as_ref().is_none_or(|(db, _, _)| cand.0 < *db) {
                worst = Some(cand);
            }
        }
        let op = n.op_type.as_str();
        let ranked_op = has_weight || (has_act && COMPUTE.contains(&op));
        let Some((db, tensor, culprit)) = worst.filter(|_| ranked_op) else { continue };
        let (node, op_type) = match f.matching_node(q, i) {
            Some(j) => (label(f.node(j), j), f.node(j).op_type.clone()),
            None => (label(n, i), n.op_type.clone()),
        };
        let hint = hint(&node, db, &culprit);
        ranked.push((db, q.position[i], RankedLayer { node, op_type, tensor, sqnr_db: db, hint }));
    }
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    ranked.into_iter().map(|(_, _, r)| r).collect()
}
