//! Adaptive precision: a quantized (QDQ) model runs on integer kernels while the saturation of
//! each quantized activation is counted per sample; a sample whose saturation exceeds what
//! calibration saw by more than a threshold is run again on the float path of the same graph,
//! and counted.
//!
//! **Saturation** of a quantized activation in one sample: the share of its codes at the ends
//! of the integer range (`qmin` or `qmax`), i.e. values at or beyond the calibrated range. The
//! integer kernels never materialize the float value, so a value clipped by the range and one
//! that sits exactly on its bound look alike; hence the comparison with the share calibration
//! saw (`baseline`, recorded by the quantizer per tensor; 0 when unknown): a sample is re-run
//! when `saturation − baseline > threshold` for any watched tensor.
//!
//! **Float path** ([`float_path`]): the QDQ graph with every activation `QuantizeLinear →
//! DequantizeLinear` pair skipped (readers of the dequantized value read the float value), the
//! weights still dequantized from their stored integers. It is what the quantized model
//! computes without activation rounding and clipping, at float speed.
//!
//! Decisions are per sample where the run's inputs and outputs are batched along axis 0 (every
//! feed and the watched tensor share the batch size); only the flagged rows are re-run and
//! written back into float32 outputs. Otherwise the whole run is re-run.

use crate::error::Result;
use crate::session::{Plan, Session, SessionOptions};
use lowbit_onnx::pb::{ModelProto, NodeProto};
use lowbit_onnx::tensor_proto::tensor_from_proto;
use lowbit_tensor::{DType, Tensor, TensorData};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

/// Saturation above the calibrated share that sends a sample to the float path, by default:
/// one value in twenty pinned at a range end beyond what calibration saw.
pub const DEFAULT_THRESHOLD: f64 = 0.05;

/// An activation a `QuantizeLinear` node quantizes with one scale and zero point.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedActivation {
    /// The float tensor quantized (the node's input).
    pub tensor: String,
    /// The integer tensor (the node's output).
    pub quantized: String,
    pub scale: f32,
    pub zero_point: i32,
    /// The integer type's range.
    pub qmin: i32,
    pub qmax: i32,
}

impl QuantizedActivation {
    /// The float values the integer range represents: `[(qmin − zp)·s, (qmax − zp)·s]`.
    pub fn range(&self) -> (f32, f32) {
        let s = self.scale;
        ((self.qmin - self.zero_point) as f32 * s, (self.qmax - self.zero_point) as f32 * s)
    }

    /// Values outside this interval round beyond the integer range and are clipped:
    /// the representable range widened by half a step on each side.
    pub fn clip_bounds(&self) -> (f32, f32) {
        let (lo, hi) = self.range();
        (lo - 0.5 * self.scale, hi + 0.5 * self.scale)
    }

    /// The end codes that count as saturated: `qmin` and `qmax`, except an end that stands
    /// for 0 (a non-negative tensor's lower end holds its zeros, not clipped values).
    pub fn saturating_codes(&self) -> (Option<i32>, Option<i32>) {
        (
            (self.zero_point != self.qmin).then_some(self.qmin),
            (self.zero_point != self.qmax).then_some(self.qmax),
        )
    }

    /// Values outside this interval quantize to a [saturating
    /// code](QuantizedActivation::saturating_codes): the representable range narrowed by half
    /// a step on each side (unbounded on a side whose end stands for 0).
    pub fn saturation_bounds(&self) -> (f32, f32) {
        let (lo, hi) = self.range();
        let (a, b) = self.saturating_codes();
        (
            a.map_or(f32::NEG_INFINITY, |_| lo + 0.5 * self.scale),
            b.map_or(f32::INFINITY, |_| hi - 0.5 * self.scale),
        )
    }
}

/// The integer range of a `QuantizeLinear` output type lowbit watches (8- and 16-bit).
fn int_range(dtype: DType) -> Option<(i32, i32)> {
    Some(match dtype {
        DType::I8 => (-128, 127),
        DType::U8 => (0, 255),
        DType::I16 => (-32768, 32767),
        DType::U16 => (0, 65535),
        _ => return None,
    })
}

/// The activations of `model`'s main graph quantized per tensor with constant parameters
/// (one entry per quantized tensor, graph order); weights (constant inputs) are left out.
pub fn quantized_activations(model: &ModelProto) -> Vec<QuantizedActivation> {
    let Some(g) = model.graph.as_ref() else { return Vec::new() };
    let mut constants: HashMap<&str, &lowbit_onnx::pb::TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    for n in g.node.iter().filter(|n| n.op_type == "Constant") {
        if let (Some(o), Some(a)) =
            (n.output.first(), n.attribute.iter().find(|a| a.name == "value"))
        {
            if let Some(t) = a.t.as_ref() {
                constants.insert(o.as_str(), t);
            }
        }
    }
    let scalar = |name: Option<&String>| -> Option<Tensor> {
        let t = tensor_from_proto(constants.get(name?.as_str())?).ok()?;
        (t.len() == 1).then_some(t)
    };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for n in g.node.iter().filter(|n| n.op_type == "QuantizeLinear" && n.domain.is_empty()) {
        let (Some(x), Some(y)) = (n.input.first(), n.output.first()) else { continue };
        if constants.contains_key(x.as_str()) || !seen.insert(x.clone()) {
            continue;
        }
        let Some(scale) = scalar(n.input.get(1)).and_then(|t| t.to_f32_vec().ok()) else {
            continue;
        };
        // No zero point: uint8 with zero point 0 (the ONNX default).
        let zp = scalar(n.input.get(2).filter(|z| !z.is_empty()));
        let dtype = zp.as_ref().map_or(DType::U8, |z| z.dtype());
        let zero_point = match &zp {
            Some(z) => z.to_i64_vec().ok().and_then(|v| v.first().copied()).unwrap_or(0) as i32,
            None => 0,
        };
        let Some((qmin, qmax)) = int_range(dtype) else { continue };
        if !(scale[0].is_finite() && scale[0] > 0.0) {
            continue;
        }
        out.push(QuantizedActivation {
            tensor: x.clone(),
            quantized: y.clone(),
            scale: scale[0],
            zero_point,
            qmin,
            qmax,
        });
    }
    out
}

/// `model` with every activation `QuantizeLinear → DequantizeLinear` pair skipped (see the
/// module docs). A quantized value read by anything but a `DequantizeLinear` keeps its
/// `QuantizeLinear`.
pub fn float_path(model: &ModelProto) -> ModelProto {
    let mut m = model.clone();
    let activations = quantized_activations(model);
    let Some(g) = m.graph.as_mut() else { return m };
    let outputs: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
    // Dequantized value → the float value it stands for.
    let mut float_of: HashMap<String, String> = HashMap::new();
    let mut drop_nodes: HashSet<usize> = HashSet::new();
    for a in &activations {
        let readers: Vec<usize> =
            (0..g.node.len()).filter(|&i| g.node[i].input.contains(&a.quantized)).collect();
        let all_dq = readers.iter().all(|&i| {
            g.node[i].op_type == "DequantizeLinear"
                && g.node[i].input.first() == Some(&a.quantized)
                && !outputs.contains(&g.node[i].output[0])
        });
        if readers.is_empty() || !all_dq || outputs.contains(&a.quantized) {
            continue;
        }
        for &i in &readers {
            float_of.insert(g.node[i].output[0].clone(), a.tensor.clone());
            drop_nodes.insert(i);
        }
        if let Some(q) = g
            .node
            .iter()
            .position(|n| n.op_type == "QuantizeLinear" && n.output.first() == Some(&a.quantized))
        {
            drop_nodes.insert(q);
        }
    }
    let nodes: Vec<NodeProto> = std::mem::take(&mut g.node)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !drop_nodes.contains(i))
        .map(|(_, mut n)| {
            for v in n.input.iter_mut() {
                if let Some(f) = float_of.get(v) {
                    *v = f.clone();
                }
            }
            n
        })
        .collect();
    g.node = nodes;
    m
}

/// What adaptive runs did so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AdaptiveStats {
    /// Samples run (rows of axis 0 where runs are batched, else runs).
    pub samples: u64,
    /// Of those, saturated beyond the threshold.
    pub flagged: u64,
    /// Of those, re-run on the float path (all flagged ones unless [`AdaptiveOptions::rerun`]
    /// is off).
    pub rerun: u64,
    /// Per quantized tensor, the samples whose saturation it found too high.
    pub triggers: BTreeMap<String, u64>,
    /// Per watched tensor, values seen and values at a saturating code (all runs).
    pub saturation: BTreeMap<String, Saturation>,
    /// With [`AdaptiveOptions::code_counts`]: per watched tensor, how often each integer code
    /// occurred (index `code − qmin`), for drift against calibration.
    #[serde(skip)]
    pub codes: BTreeMap<String, Vec<u64>>,
}

/// Values of one quantized tensor, and those at a saturating code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Saturation {
    pub values: u64,
    pub saturated: u64,
}

/// How a session runs adaptively.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptiveOptions {
    /// Saturation above the baseline (a share, 0..1) that re-runs a sample.
    pub threshold: f64,
    /// The share of each tensor's calibration values that saturated, by float tensor name
    /// ([`QuantizedActivation::tensor`]); 0 for tensors not listed.
    pub baseline: HashMap<String, f64>,
    /// The model flagged samples re-run on, with the same inputs and outputs (e.g. the FP32
    /// original, when the quantized weights are what costs accuracy); `None`: the quantized
    /// model's [`float_path`].
    pub fallback: Option<ModelProto>,
    /// Re-run flagged samples (on by default); off, they are only counted (`serve` without
    /// `--adaptive` still reports saturation).
    pub rerun: bool,
    /// Count every integer code of the watched tensors ([`AdaptiveStats::codes`]).
    pub code_counts: bool,
}

impl Default for AdaptiveOptions {
    fn default() -> Self {
        AdaptiveOptions {
            threshold: DEFAULT_THRESHOLD,
            baseline: HashMap::new(),
            fallback: None,
            rerun: true,
            code_counts: false,
        }
    }
}

/// A watched integer tensor of the plan.
pub(crate) struct Watch {
    name: String,
    qmin: i32,
    qmax: i32,
    /// The saturating codes (an end that stands for 0 never matches: `i32::MIN`).
    lo: i32,
    hi: i32,
    baseline: f64,
}

/// The float path and what is watched, owned by a [`Session`] planned with
/// [`SessionOptions::adaptive`].
pub(crate) struct Adaptive {
    /// Where flagged samples re-run; `None` when only watching.
    float: Option<Session>,
    /// Watch index per slot of the integer plan.
    pub(crate) watch_of: Vec<Option<usize>>,
    watches: Vec<Watch>,
    threshold: f64,
    rerun: bool,
    code_counts: bool,
    stats: Mutex<AdaptiveStats>,
}

/// Per-run bookkeeping: which samples were flagged, and by which tensors.
pub(crate) struct RunWatch {
    rows: usize,
    flagged: Vec<bool>,
    triggers: Vec<(usize, u64)>,
    /// (watch, values, saturated values) per watched tensor produced.
    seen: Vec<(usize, u64, u64)>,
    codes: Vec<(usize, Vec<u64>)>,
}

impl Adaptive {
    /// Plans the float path of `model` and the watches over the integer `plan`'s values.
    pub(crate) fn new(
        model: &ModelProto,
        opts: &SessionOptions,
        a: &AdaptiveOptions,
        plan: &Plan,
    ) -> Result<Adaptive> {
        let slot_names = plan.slot_names();
        let produced = plan.produced_slots();
        let float_opts = SessionOptions { adaptive: None, ..opts.clone() };
        // Watching only: no second session to plan.
        let float = match (&a.fallback, a.rerun) {
            (_, false) => None,
            (Some(f), true) => Some(Session::new(f, &float_opts)?),
            (None, true) => Some(Session::new(&float_path(model), &float_opts)?),
        };
        let slot: HashMap<&str, usize> =
            slot_names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        let mut watch_of = vec![None; slot_names.len()];
        let mut watches = Vec::new();
        for q in quantized_activations(model) {
            let Some(&s) = slot.get(q.quantized.as_str()) else { continue };
            if !produced.contains(&s) {
                continue;
            }
            let (lo, hi) = q.saturating_codes();
            if lo.is_none() && hi.is_none() {
                continue;
            }
            watch_of[s] = Some(watches.len());
            watches.push(Watch {
                qmin: q.qmin,
                qmax: q.qmax,
                baseline: a.baseline.get(&q.tensor).copied().unwrap_or(0.0),
                name: q.tensor,
                lo: lo.unwrap_or(i32::MIN),
                hi: hi.unwrap_or(i32::MIN),
            });
        }
        Ok(Adaptive {
            float,
            watch_of,
            watches,
            threshold: a.threshold,
            rerun: a.rerun,
            code_counts: a.code_counts,
            stats: Mutex::new(AdaptiveStats::default()),
        })
    }

    /// Names of the watched tensors (float names), in plan order.
    pub(crate) fn watched(&self) -> Vec<&str> {
        self.watches.iter().map(|w| w.name.as_str()).collect()
    }

    pub(crate) fn stats(&self) -> AdaptiveStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// A run's bookkeeping: per sample when every feed is batched along axis 0.
    pub(crate) fn start(&self, feeds: &[(String, Tensor)]) -> RunWatch {
        let first = feeds.first().and_then(|(_, t)| t.shape().first().copied());
        let rows = match first {
            Some(r) if r > 0 && feeds.iter().all(|(_, t)| t.shape().first() == Some(&r)) => r,
            _ => 1,
        };
        RunWatch {
            rows,
            flagged: vec![false; rows],
            triggers: Vec::new(),
            seen: Vec::new(),
            codes: Vec::new(),
        }
    }

    /// Counts the saturated codes of watched tensor `w` (per row where it is batched).
    pub(crate) fn check(&self, w: usize, t: &Tensor, run: &mut RunWatch) {
        let watch = &self.watches[w];
        let per_row = run.rows > 1 && t.shape().first() == Some(&run.rows);
        let chunk = if per_row { t.len() / run.rows } else { t.len() };
        if chunk == 0 {
            return;
        }
        let (lo, hi) = (watch.lo, watch.hi);
        let mut hits = 0u64;
        let mut saturated = 0u64;
        let mut flag = |i: usize, ends: usize| {
            saturated += ends as u64;
            if ends as f64 / chunk as f64 - watch.baseline > self.threshold {
                if per_row {
                    run.flagged[i] = true;
                } else {
                    run.flagged.iter_mut().for_each(|f| *f = true);
                }
                hits += if per_row { 1 } else { run.rows as u64 };
            }
        };
        // Counting stays a byte compare the compiler vectorizes.
        match t.data() {
            TensorData::U8(v) => v.chunks(chunk).enumerate().for_each(|(i, c)| {
                flag(i, c.iter().filter(|&&x| x as i32 == lo || x as i32 == hi).count())
            }),
            TensorData::I8(v) => v.chunks(chunk).enumerate().for_each(|(i, c)| {
                flag(i, c.iter().filter(|&&x| x as i32 == lo || x as i32 == hi).count())
            }),
            TensorData::U16(v) => v.chunks(chunk).enumerate().for_each(|(i, c)| {
                flag(i, c.iter().filter(|&&x| x as i32 == lo || x as i32 == hi).count())
            }),
            TensorData::I16(v) => v.chunks(chunk).enumerate().for_each(|(i, c)| {
                flag(i, c.iter().filter(|&&x| x as i32 == lo || x as i32 == hi).count())
            }),
            _ => {}
        }
        if hits > 0 {
            run.triggers.push((w, hits));
        }
        run.seen.push((w, t.len() as u64, saturated));
        if self.code_counts {
            let mut counts = vec![0u64; (watch.qmax - watch.qmin + 1) as usize];
            let q = watch.qmin;
            match t.data() {
                TensorData::U8(v) => v.iter().for_each(|&x| counts[(x as i32 - q) as usize] += 1),
                TensorData::I8(v) => v.iter().for_each(|&x| counts[(x as i32 - q) as usize] += 1),
                TensorData::U16(v) => v.iter().for_each(|&x| counts[(x as i32 - q) as usize] += 1),
                TensorData::I16(v) => v.iter().for_each(|&x| counts[(x as i32 - q) as usize] += 1),
                _ => {}
            }
            run.codes.push((w, counts));
        }
    }

    /// Ends a run: flagged samples go through the float path and replace their rows of
    /// `outputs`. `feeds` are the run's inputs.
    pub(crate) fn finish(
        &self,
        run: RunWatch,
        feeds: Vec<(String, Tensor)>,
        outputs: Vec<(String, Tensor)>,
    ) -> Result<Vec<(String, Tensor)>> {
        let rows: Vec<usize> = (0..run.rows).filter(|&i| run.flagged[i]).collect();
        if let Ok(mut s) = self.stats.lock() {
            s.samples += run.rows as u64;
            s.flagged += rows.len() as u64;
            if self.rerun {
                s.rerun += rows.len() as u64;
            }
            for (w, n) in &run.triggers {
                *s.triggers.entry(self.watches[*w].name.clone()).or_default() += n;
            }
            for &(w, values, saturated) in &run.seen {
                let e = s.saturation.entry(self.watches[w].name.clone()).or_default();
                e.values += values;
                e.saturated += saturated;
            }
            for (w, counts) in run.codes {
                let e = s.codes.entry(self.watches[w].name.clone()).or_default();
                e.resize(counts.len(), 0);
                e.iter_mut().zip(counts).for_each(|(a, b)| *a += b);
            }
        }
        let Some(float) = self.float.as_ref().filter(|_| !rows.is_empty()) else {
            return Ok(outputs);
        };
        let batched = |t: &Tensor| t.shape().first() == Some(&run.rows);
        let row_wise = rows.len() < run.rows
            && outputs.iter().all(|(_, t)| batched(t) && t.dtype() == DType::F32);
        if !row_wise {
            return float.run(feeds);
        }
        let sub: Vec<(String, Tensor)> = feeds
            .into_iter()
            .map(|(n, t)| Ok((n, take_rows(&t, &rows)?)))
            .collect::<Result<_>>()?;
        let redone = float.run(sub)?;
        let mut outputs = outputs;
        for ((_, out), (_, new)) in outputs.iter_mut().zip(redone) {
            let width = out.len() / run.rows;
            if new.len() != width * rows.len() || new.dtype() != DType::F32 {
                // The float path disagrees on shapes: trust neither row mapping.
                return Err(crate::EngineError::Graph(
                    "adaptive: the float path's outputs do not match the integer path's".into(),
                ));
            }
            let src = new.as_f32()?;
            let dst = out.as_slice_mut::<f32>()?;
            for (k, &r) in rows.iter().enumerate() {
                dst[r * width..(r + 1) * width].copy_from_slice(&src[k * width..(k + 1) * width]);
            }
        }
        Ok(outputs)
    }
}

/// Rows `rows` (axis 0) of `t`.
fn take_rows(t: &Tensor, rows: &[usize]) -> Result<Tensor> {
    let n = t.shape()[0];
    let width = t.len().checked_div(n).unwrap_or(0);
    let idx: Vec<usize> = rows.iter().flat_map(|&r| r * width..(r + 1) * width).collect();
    let mut shape = t.shape().to_vec();
    shape[0] = rows.len();
    Ok(Tensor::new(shape, t.data().gather(&idx))?)
}
