//! AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training
//! Quantization"): the integer codes of every quantized Conv/Gemm/MatMul weight of the QDQ
//! graph become `⌊W/s⌋ + h(V)` with `h ∈ {0, 1}` learned per weight, layer by layer in graph
//! order, to minimize the layer's output error on the samples. Zero points stay; so do scales,
//! except that before learning, each per-channel weight row takes the fraction of its min-max
//! scale (1.00 down to 0.50) whose round-to-nearest codes give the lowest output error on the
//! same statistics ([`optimize::fit_scales`]; its int32 bias is recoded for it, never below the
//! scale the bias needs). On 4-bit grids this matters more than the rounding: a row's largest
//! weight otherwise sets a step too coarse for all the others.
//!
//! * **Loss** (per layer, [`optimize`]): `(1/n) Σ_r ‖W x_r − Ŵ(V) x̂_r‖² + λ Σ (1 − |2h − 1|^β)`
//!   with `x_r` the layer's input rows in the FP32 model and `x̂_r` in the quantized model,
//!   whose earlier layers are already rounded: the paper's asymmetric reconstruction, which
//!   also lets a layer absorb the error of the quantized layers and activations before it
//!   (with [`AdaRoundOptions::fp32_inputs`], `x̂_r = x_r`: the plain reconstruction). `h`
//!   is the rectified sigmoid (ζ = 1.1, γ = −0.1); β goes from 20 to 2 after a 20 % warm-up;
//!   Adam; `V` starts at round-to-nearest. Codes stay inside the plan's `[qmin, qmax]` and
//!   differ from round-to-nearest by at most one step.
//! * **Data** ([`stats`]): one pass over the samples per weight runs the FP32 and the quantized
//!   graphs up to the layer's input and sums `Σ x̂ x̂ᵀ`, `Σ d x̂ᵀ`, `Σ d dᵀ`
//!   (`d = x − x̂`) over im2col patch rows (convolutions per group, depthwise per channel; a
//!   fixed number per image, evenly strided) or input rows (Gemm/MatMul). These `k × k` sums
//!   define the loss exactly on those rows, so the optimizer needs no mini-batches and the
//!   result is deterministic. A pass starts where the last one stopped ([`stream`]): the values
//!   live there (the layer's input, a skip connection) are kept per sample, so the graphs run
//!   about once in all instead of once per layer.
//! * **Memory**: `3·k²` f64 per group of a weight, whatever the number of samples; a weight
//!   needing more than [`MAX_STATS_BYTES`] keeps round-to-nearest. EfficientNet-Lite0's largest
//!   is 32 MiB (1×1 convolutions with `k = 1152`). The kept values take at most
//!   [`MAX_KEPT_BYTES`] per graph, twice that while a pass replaces them; a cut that does not
//!   fit (many samples, a wide early layer) is skipped and the pass starts from an earlier one.
//! * A weight whose learned rounding is not better than round-to-nearest on its own data keeps
//!   round-to-nearest; so do weights not reached within the time budget.

mod optimize;
mod stats;
mod stream;
#[cfg(test)]
mod tests;

use super::{LayerChange, StepContext, StepReport};
use crate::config::{AdaRoundOptions, QuantPlan};
use crate::error::{QuantError, Result};
use crate::passes::{init_f32, init_tensor, is_default_domain, label};
use crate::qparams::int_storage;
use crate::samples::Feeds;
use lowbit_engine::SessionOptions;
use lowbit_kernels::quantize::{self as core_quant, int_values};
use lowbit_onnx::attr::Attrs;
use lowbit_onnx::graph::Graph;
use lowbit_onnx::pb::NodeProto;
use lowbit_onnx::tensor_proto::tensor_to_proto;
use lowbit_tensor::{DType, Tensor};
use optimize::{fit_scales, optimize, Grid, Schedule};
use rayon::prelude::*;
use stats::{Geometry, GroupStats, LayerStats};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use stream::Stream;

/// Input statistics one weight may hold (see the module docs).
pub const MAX_STATS_BYTES: usize = 256 << 20;

/// Bytes of one graph's cut kept between passes (see the module docs).
pub const MAX_KEPT_BYTES: usize = 96 << 20;

/// One layer that reads a weight.
struct Consumer {
    node: String,
    /// Its input in the FP32 graph and in the quantized graph.
    fp32_input: String,
    q_input: String,
    geometry: Geometry,
}

/// How a weight tensor reads as `groups` matrices of `o × k` (output rows × inputs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct View {
    groups: usize,
    o: usize,
    k: usize,
    /// Stored `[k, O]` (Gemm `transB = 0`, MatMul) rather than `[O, k...]`.
    transposed: bool,
}

impl View {
    /// Tensor index of row `r`, input `j` of group `g`.
    fn index(&self, g: usize, r: usize, j: usize) -> usize {
        let row = g * self.o + r;
        if self.transposed {
            j * self.groups * self.o + row
        } else {
            row * self.k + j
        }
    }

    fn gather<T: Copy>(&self, data: &[T], g: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(self.o * self.k);
        for r in 0..self.o {
            for j in 0..self.k {
                out.push(data[self.index(g, r, j)]);
            }
        }
        out
    }

    fn scatter<T: Copy>(&self, m: &[T], g: usize, data: &mut [T]) {
        for r in 0..self.o {
            for j in 0..self.k {
                data[self.index(g, r, j)] = m[r * self.k + j];
            }
        }
    }
}

/// A quantized weight of the QDQ graph and everything AdaRound needs about it.
struct Weight {
    label: String,
    /// The initializer holding its integer codes.
    codes_name: String,
    shape: Vec<usize>,
    dtype: DType,
    nearest: Vec<i32>,
    w: Vec<f32>,
    /// Scale and zero point per output row (all rows of all groups).
    scale: Vec<f32>,
    zero: Vec<i32>,
    qmin: i32,
    qmax: i32,
    view: View,
    consumers: Vec<Consumer>,
    /// Where its scales may be narrowed ([`optimize::fit_scales`]): the initializer holding one
    /// scale per output row, the smallest scale each row's bias allows, and that bias. `None`
    /// keeps the scales (one for the whole tensor, a weight two layers share, or a bias whose
    /// input scale is not known).
    rescale: Option<Rescale>,
}

/// What changes with a weight's scales.
struct Rescale {
    scale_name: String,
    floor: Vec<f32>,
    bias: Option<Int32Bias>,
}

/// A layer's int32 bias: `scale = s_in · s_w` per row, so it follows the weight's scales.
struct Int32Bias {
    codes_name: String,
    scale_name: String,
    in_scale: f32,
    /// Its float values (the FP32 model's, else the dequantized codes).
    values: Vec<f32>,
}

/// How a layer's bias relates to its weight's scales.
enum BiasLink {
    /// No bias, or a float one: free.
    Free,
    Int32(Int32Bias),
    /// Quantized in a way not understood: the scales stay.
    Unknown,
}

/// The bias input of `node` in the QDQ graph `q`; `fp32` is the bias of its FP32 counterpart
/// (recoding from it keeps the bias within half a step of its true value).
fn bias_link(q: &Graph, node: &NodeProto, fp32: Option<Tensor>) -> Result<BiasLink> {
    let Some(b) = node.input.get(2).filter(|b| !b.is_empty()) else { return Ok(BiasLink::Free) };
    let Some(dq) = q.producer_node(b).filter(|d| d.op_type == "DequantizeLinear") else {
        return Ok(BiasLink::Free);
    };
    let (Some(codes), Some(scales)) = (
        init_tensor(q, &dq.input[0])?,
        dq.input.get(1).map(|s| init_f32(q, s)).transpose()?.flatten(),
    ) else {
        return Ok(BiasLink::Unknown);
    };
    let x_dq = node.input.first().and_then(|x| q.producer_node(x));
    let in_scale = match x_dq.filter(|d| d.op_type == "DequantizeLinear") {
        Some(d) => d.input.get(1).map(|s| init_f32(q, s)).transpose()?.flatten(),
        None => None,
    };
    let (lowbit_tensor::TensorData::I32(c), Some(in_scale)) = (codes.data(), in_scale) else {
        return Ok(BiasLink::Unknown);
    };
    let (s, s_in) = (scales.as_f32()?, in_scale.as_f32()?);
    if s_in.len() != 1 || !(s.len() == 1 || s.len() == c.len()) {
        return Ok(BiasLink::Unknown);
    }
    let values = match fp32.as_ref().map(|t| t.as_f32()).transpose()? {
        Some(b) if b.len() == c.len() => b.to_vec(),
        _ => c
            .iter()
            .enumerate()
            .map(|(i, &v)| v as f32 * s[if s.len() == 1 { 0 } else { i }])
            .collect(),
    };
    Ok(BiasLink::Int32(Int32Bias {
        codes_name: dq.input[0].clone(),
        scale_name: dq.input[1].clone(),
        in_scale: s_in[0],
        values,
    }))
}

/// A weight left alone: its name and why.
type Skipped = (String, String);

/// The quantized weights AdaRound can optimize, in graph order, and the ones it leaves alone
/// with the reason.
fn find_weights(fp32: &Graph, q: &Graph, plan: &QuantPlan) -> Result<(Vec<Weight>, Vec<Skipped>)> {
    let mut weights: Vec<Weight> = Vec::new();
    let mut skipped: Vec<Skipped> = Vec::new();
    let mut by_codes: HashMap<String, usize> = HashMap::new();
    // Weights a second layer reads another way (another group count or layout): their
    // rounding cannot serve both, so they keep round-to-nearest.
    let mut conflicted: HashSet<String> = HashSet::new();
    for (idx, node) in q.nodes().iter().enumerate() {
        let op = node.op_type.as_str();
        if !is_default_domain(node) || !matches!(op, "Conv" | "Gemm" | "MatMul") {
            continue;
        }
        let Some(dq) = node.input.get(1).and_then(|w| q.producer_node(w)) else { continue };
        let codes_name = dq.input[0].clone();
        if dq.op_type != "DequantizeLinear" || !q.is_initializer(&codes_name) {
            continue;
        }
        let name = label(node, idx);
        match layer_of(fp32, q, node, &name, dq, plan)? {
            Err(why) => skipped.push((name, why)),
            Ok((weight, consumer)) => match by_codes.get(&codes_name) {
                Some(&i) if weights[i].view == weight.view => {
                    let w = &mut weights[i];
                    w.label = format!("{} + {}", w.label, name);
                    w.consumers.push(consumer);
                    // One scale cannot follow two layers' biases and inputs.
                    w.rescale = None;
                }
                Some(_) => {
                    conflicted.insert(codes_name);
                    skipped.push((
                        name,
                        "its weight is shared with a layer that reads it another way".into(),
                    ));
                }
                None => {
                    by_codes.insert(codes_name, weights.len());
                    weights.push(Weight { consumers: vec![consumer], ..weight });
                }
            },
        }
    }
    let (weights, shared): (Vec<Weight>, Vec<Weight>) =
        weights.into_iter().partition(|w| !conflicted.contains(&w.codes_name));
    for w in shared {
        skipped
            .push((w.label, "its weight is shared with a layer that reads it another way".into()));
    }
    Ok((weights, skipped))
}

/// The weight of `node` (fed by `dq`) and how `node` reads it, or why AdaRound leaves it.
fn layer_of(
    fp32: &Graph,
    q: &Graph,
    node: &NodeProto,
    name: &str,
    dq: &NodeProto,
    plan: &QuantPlan,
) -> Result<std::result::Result<(Weight, Consumer), String>> {
    let bad = |msg: String| QuantError::Node {
        node: name.to_string(),
        op_type: node.op_type.clone(),
        msg,
    };
    let op = node.op_type.as_str();
    let Some(fidx) = node.output.first().and_then(|o| fp32.producer(o)) else {
        return Ok(Err("no FP32 counterpart".into()));
    };
    let fnode = &fp32.nodes()[fidx];
    if fnode.op_type != op {
        return Ok(Err("no FP32 counterpart".into()));
    }
    let Some(w) = fnode.input.get(1).map(|w| init_f32(fp32, w)).transpose()?.flatten() else {
        return Ok(Err("its FP32 weight is not a float32 initializer".into()));
    };
    let codes = init_tensor(q, &dq.input[0])?.expect("checked to be an initializer");
    let shape = codes.shape().to_vec();
    if w.shape() != shape.as_slice() {
        return Ok(Err(format!("FP32 weight {:?} vs codes {shape:?}", w.shape())));
    }
    let Some(nearest) = int_values(codes.data()) else {
        return Ok(Err(format!("codes of type {} are not integers", codes.dtype())));
    };
    let attrs = Attrs::new(node);
    let attr_err = |e: lowbit_onnx::attr::AttrError| bad(e.to_string());
    let trans_b = attrs.int_or("transB", 0).map_err(attr_err)? != 0;
    // The FP32 graph is the one the plan's node names and indices refer to.
    let Some(weights) = plan.weights_of(fnode, fidx) else {
        return Ok(Err("kept float by the per-node plan".into()));
    };
    let Some(scheme) = weights.scheme_for(op, trans_b, shape.len()) else {
        return Ok(Err(format!("weight of rank {} not understood", shape.len())));
    };
    let (qmin, qmax) = scheme.qrange()?;
    let dq_attrs = Attrs::new(dq);
    if dq_attrs.has("block_size") {
        return Ok(Err("blocked weights are not supported".into()));
    }
    let (view, geometry) = match op {
        "Conv" => {
            let group = attrs.int_or("group", 1).map_err(attr_err)?.max(1) as usize;
            if shape.len() < 3 || shape[0] % group != 0 {
                return Ok(Err(format!("weight {shape:?} and group {group} disagree")));
            }
            let view = View {
                groups: group,
                o: shape[0] / group,
                k: shape[1..].iter().product(),
                transposed: false,
            };
            let geometry = Geometry::Conv {
                kernel: shape[2..].to_vec(),
                strides: attrs.ints("strides").map_err(attr_err)?,
                dilations: attrs.ints("dilations").map_err(attr_err)?,
                pads: attrs.ints("pads").map_err(attr_err)?,
                auto_pad: attrs.string_or("auto_pad", "NOTSET").map_err(attr_err)?,
            };
            (view, geometry)
        }
        _ if shape.len() != 2 => return Ok(Err(format!("weight of rank {}", shape.len()))),
        _ => {
            let trans_a = op == "Gemm" && attrs.int_or("transA", 0).map_err(attr_err)? != 0;
            let (o, k) = if trans_b { (shape[0], shape[1]) } else { (shape[1], shape[0]) };
            (
                View { groups: 1, o, k, transposed: !trans_b },
                Geometry::Matrix { transposed: trans_a },
            )
        }
    };
    // Scales and zero points per output row.
    let rows = view.groups * view.o;
    let scales =
        init_f32(q, &dq.input[1])?.ok_or_else(|| bad("weight scale is not float32".into()))?;
    let scales = scales.as_f32()?.to_vec();
    let zeros = match dq.input.get(2).filter(|z| !z.is_empty()) {
        Some(z) => init_tensor(q, z)?
            .and_then(|t| int_values(t.data()))
            .ok_or_else(|| bad("weight zero point is not an integer initializer".into()))?,
        None => vec![0; scales.len()],
    };
    let channel_axis = if view.transposed { 1 } else { 0 };
    let axis = dq_attrs.int_or("axis", 1).map_err(attr_err)?;
    let scales_per_row = scales.len() == rows;
    let (scale, zero) = match scales.len() {
        1 => (vec![scales[0]; rows], vec![zeros[0]; rows]),
        n if n == rows && zeros.len() == n && axis == channel_axis => (scales, zeros),
        n => return Ok(Err(format!("{n} scales along axis {axis} are not per output channel"))),
    };
    if scale.iter().any(|&s| s <= 0.0 || !s.is_finite()) {
        return Ok(Err("a weight scale is not positive".into()));
    }
    let rescale = if scales_per_row && rows > 1 {
        let fp32_bias = match fnode.input.get(2).filter(|b| !b.is_empty()) {
            Some(b) => init_f32(fp32, b)?,
            None => None,
        };
        match bias_link(q, node, fp32_bias)? {
            BiasLink::Free => Some(Rescale {
                scale_name: dq.input[1].clone(),
                floor: vec![0.0; rows],
                bias: None,
            }),
            BiasLink::Int32(b) if b.values.len() == rows => Some(Rescale {
                scale_name: dq.input[1].clone(),
                floor: core_quant::min_weight_scales_for_bias(&b.values, b.in_scale),
                bias: Some(b),
            }),
            _ => None,
        }
    } else {
        None
    };
    let consumer = Consumer {
        node: name.to_string(),
        fp32_input: fnode.input[0].clone(),
        q_input: node.input[0].clone(),
        geometry,
    };
    let weight = Weight {
        label: name.to_string(),
        codes_name: dq.input[0].clone(),
        shape,
        dtype: codes.dtype(),
        nearest,
        w: w.as_f32()?.to_vec(),
        scale,
        zero,
        qmin,
        qmax,
        view,
        consumers: Vec::new(),
        rescale,
    };
    Ok(Ok((weight, consumer)))
}

/// Rows (images) fed to the engine at a time. Batches of 25 EfficientNet images made
/// activations of 120 MB, each a fresh mapping the kernel had to fault in and clear (a third of
/// the time of a pass); a few rows keep them in memory the allocator reuses, and what AdaRound
/// holds does not grow with the caller's batch size.
const ROWS_PER_RUN: usize = 4;

/// `feeds` cut into runs of at most `rows` rows when every input is batched along its first
/// axis with the same size; otherwise as they are.
fn split_rows(feeds: Feeds, rows: usize) -> Vec<Feeds> {
    let batch = feeds.first().and_then(|(_, t)| t.shape().first().copied()).unwrap_or(0);
    let batched = feeds.iter().all(|(_, t)| t.shape().first() == Some(&batch));
    if !batched || batch <= rows || rows == 0 {
        return vec![feeds];
    }
    (0..batch)
        .step_by(rows)
        .map(|first| {
            let count = rows.min(batch - first);
            feeds
                .iter()
                .map(|(name, t)| {
                    let per_row = t.len() / batch;
                    let idx: Vec<usize> = (first * per_row..(first + count) * per_row).collect();
                    let mut shape = t.shape().to_vec();
                    shape[0] = count;
                    let part = Tensor::new(shape, t.data().gather(&idx)).expect("same row size");
                    (name.clone(), part)
                })
                .collect()
        })
        .collect()
}

/// The FP32 and the quantized graphs' streams (see [`stream`]).
struct Streams {
    fp32: Stream,
    q: Stream,
}

/// One pass over the samples: the statistics of every consumer of `w`, the weight at `index`
/// in AdaRound's order (those before it are rounded).
fn collect(
    fp32: &Graph,
    q: &Graph,
    w: &Weight,
    index: usize,
    fp32_inputs: bool,
    streams: &mut Streams,
    ctx: &mut StepContext,
) -> Result<Vec<LayerStats>> {
    let names = |f: fn(&Consumer) -> &String| -> Vec<String> {
        let mut v: Vec<String> = w.consumers.iter().map(|c| f(c).clone()).collect();
        v.dedup();
        v
    };
    let (fp_names, q_names) = (names(|c| &c.fp32_input), names(|c| &c.q_input));
    let opts = SessionOptions::unfused(ctx.threads);
    let mut fp_pass = streams.fp32.plan(fp32.model(), &fp_names, index, &opts)?;
    let mut q_pass = streams.q.plan(q.model(), &q_names, index, &opts)?;
    let mut stats: Vec<LayerStats> = w
        .consumers
        .iter()
        .map(|c| LayerStats::new(&c.node, c.geometry.clone(), w.view.groups, w.view.k))
        .collect();
    let samples = ctx.samples.as_deref_mut().ok_or_else(|| {
        QuantError::Config("AdaRound runs on calibration samples: none were given".into())
    })?;
    let (fs, qs) = (&streams.fp32, &streams.q);
    let mut run = 0usize;
    samples.replay(&mut |feeds| {
        for part in split_rows(feeds, ROWS_PER_RUN) {
            let xs = fs.run(&mut fp_pass, run, &part)?;
            let xhs = qs.run(&mut q_pass, run, &part)?;
            for (c, s) in w.consumers.iter().zip(stats.iter_mut()) {
                // Plain reconstruction: the quantized layer sees the FP32 input too.
                let xh = if fp32_inputs { &xs[&c.fp32_input] } else { &xhs[&c.q_input] };
                s.add(&xs[&c.fp32_input], xh)?;
            }
            run += 1;
        }
        Ok(())
    })?;
    streams.fp32.finish(fp_pass);
    streams.q.finish(q_pass);
    Ok(stats)
}

/// What AdaRound did to one weight.
struct Learned {
    codes: Vec<i32>,
    /// The fitted scales (all rows), when any differs from the quantizer's.
    scale: Option<Vec<f32>>,
    /// Output MSE with the quantizer's rounding, then with round-to-nearest on the fitted
    /// scales, then with the result.
    mse_nearest: f64,
    mse_fitted: f64,
    mse: f64,
    learned: bool,
    finished: bool,
    /// Fraction of `h(V)` not yet 0 or 1 at the last step.
    undecided: f64,
}

/// Learns the rounding of every group of `w` on `stats`.
fn learn(
    w: &Weight,
    stats: Vec<LayerStats>,
    sched: &Schedule,
    deadline: Option<Instant>,
) -> Learned {
    let view = w.view;
    // Every consumer's rows count: merge their statistics per group.
    let mut groups: Vec<GroupStats> = Vec::new();
    for s in stats {
        if groups.is_empty() {
            groups = s.groups;
        } else {
            for (acc, g) in groups.iter_mut().zip(s.groups) {
                acc.merge(g);
            }
        }
    }
    let solve = |(g, st): (usize, &GroupStats)| {
        let wg = view.gather(&w.w, g);
        let rtn = view.gather(&w.nearest, g);
        let rows = g * view.o..(g + 1) * view.o;
        let quantizer = Grid {
            w: &wg,
            scale: &w.scale[rows.clone()],
            zero: &w.zero[rows.clone()],
            qmin: w.qmin,
            qmax: w.qmax,
        };
        let obj = st.objective(&wg);
        let mse_rtn = obj.mse(&quantizer.delta(&rtn));
        let (scale, nearest) = match &w.rescale {
            Some(r) => fit_scales(&quantizer, &obj, &rtn, &r.floor[rows]),
            None => (quantizer.scale.to_vec(), rtn),
        };
        let grid = Grid { scale: &scale, ..quantizer };
        let out = optimize(&grid, &obj, &nearest, sched, deadline);
        // Squared-error sums, so groups add up.
        let weight = obj.n * view.o as f64;
        (g, out, weight, mse_rtn, scale)
    };
    let results: Vec<_> = if view.groups > 1 {
        groups.par_iter().enumerate().map(solve).collect()
    } else {
        groups.iter().enumerate().map(solve).collect()
    };
    let mut codes = w.nearest.clone();
    let mut scale = w.scale.clone();
    let (mut before, mut fitted_sum, mut after, mut total) = (0f64, 0f64, 0f64, 0f64);
    let finished = results.iter().all(|(_, o, ..)| o.finished);
    let learned = finished && results.iter().any(|(_, o, ..)| o.learned);
    for (g, out, weight, mse_rtn, fitted) in &results {
        before += mse_rtn * weight;
        fitted_sum += out.mse_nearest * weight;
        total += weight;
        if finished {
            view.scatter(&out.codes, *g, &mut codes);
            scale[g * view.o..(g + 1) * view.o].copy_from_slice(fitted);
            after += out.mse * weight;
        } else {
            after += mse_rtn * weight;
        }
    }
    let n: usize = results.len().max(1);
    let undecided = results.iter().map(|(_, o, ..)| o.undecided).sum::<f64>() / n as f64;
    let total = total.max(1.0);
    let scale = (scale != w.scale).then_some(scale);
    Learned {
        codes,
        scale,
        mse_nearest: before / total,
        mse_fitted: fitted_sum / total,
        mse: after / total,
        learned,
        finished,
        undecided,
    }
}

/// Writes a weight's fitted scales, and its bias recoded for them.
fn write_scales(q: &mut Graph, w: &Weight, scale: &[f32]) -> Result<()> {
    let Some(r) = &w.rescale else { return Ok(()) };
    let mut put = |name: &str, t: Tensor| {
        let proto = q.initializer_mut(name).expect("found in this graph");
        *proto = tensor_to_proto(name, &t);
    };
    put(&r.scale_name, Tensor::from_vec(vec![scale.len()], scale.to_vec())?);
    if let Some(b) = &r.bias {
        let codes = core_quant::quantize_bias(&b.values, b.in_scale, scale).map_err(|e| {
            QuantError::Config(format!(
                "{}: bias channel {} does not fit the fitted scale {:e}",
                w.label, e.channel, e.scale
            ))
        })?;
        put(&b.codes_name, Tensor::from_vec(vec![codes.len()], codes)?);
        let scales = core_quant::bias_scales(b.in_scale, scale);
        put(&b.scale_name, Tensor::from_vec(vec![scales.len()], scales)?);
    }
    Ok(())
}

/// Chooses the rounding of every quantized weight of `q` (the QDQ graph made from `fp32`) to
/// minimize each layer's output error on `ctx.samples` (see the module docs).
pub fn adaround(
    fp32: &Graph,
    q: &mut Graph,
    plan: &QuantPlan,
    opts: &AdaRoundOptions,
    ctx: &mut StepContext,
) -> Result<StepReport> {
    adaround_kept(fp32, q, plan, opts, ctx, MAX_KEPT_BYTES)
}

/// [`adaround`] keeping at most `cap` bytes of each graph's cut.
fn adaround_kept(
    fp32: &Graph,
    q: &mut Graph,
    plan: &QuantPlan,
    opts: &AdaRoundOptions,
    ctx: &mut StepContext,
    cap: usize,
) -> Result<StepReport> {
    let start = Instant::now();
    let deadline = opts.time_budget_s.map(|s| start + Duration::from_secs_f64(s.max(0.0)));
    let sched = Schedule::new(opts.iterations, opts.reg_weight);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(ctx.threads)
        .build()
        .map_err(|e| QuantError::Config(format!("cannot start worker threads: {e}")))?;
    let (weights, mut skipped) = find_weights(fp32, q, plan)?;
    // What each weight's pass may rewrite: its codes, scales and bias.
    let mut owned: Vec<(&str, usize)> = Vec::new();
    for (j, w) in weights.iter().enumerate() {
        owned.push((&w.codes_name, j));
        if let Some(r) = &w.rescale {
            owned.push((&r.scale_name, j));
            if let Some(b) = &r.bias {
                owned.push((&b.codes_name, j));
                owned.push((&b.scale_name, j));
            }
        }
    }
    let mut streams = Streams {
        fp32: Stream::new(fp32.proto(), &[], cap),
        q: Stream::new(q.proto(), &owned, cap),
    };
    let progress = ctx.progress;
    progress.start("adaround", weights.len() as u64);
    let mut report = StepReport { step: "adaround".into(), ..Default::default() };
    let (mut learned, mut no_gain, mut not_reached, mut rescaled) =
        (0usize, 0usize, 0usize, 0usize);
    let mut kept_peak = 0usize;
    for (index, w) in weights.iter().enumerate() {
        let groups = w.view.groups * w.consumers.len();
        let bytes = groups.saturating_mul(GroupStats::max_bytes(w.view.k));
        if bytes > MAX_STATS_BYTES {
            skipped.push((
                w.label.clone(),
                format!(
                    "its input statistics need {} MiB (cap {} MiB)",
                    bytes >> 20,
                    MAX_STATS_BYTES >> 20
                ),
            ));
            progress.advance(1, None);
            continue;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            not_reached += 1;
            progress.advance(1, None);
            continue;
        }
        let stats = collect(fp32, q, w, index, opts.fp32_inputs, &mut streams, ctx)?;
        kept_peak = kept_peak.max(streams.fp32.kept_bytes() + streams.q.kept_bytes());
        let out = pool.install(|| learn(w, stats, &sched, deadline));
        if !out.finished {
            not_reached += 1;
        } else if out.learned || out.scale.is_some() {
            learned += usize::from(out.learned);
            no_gain += usize::from(!out.learned);
            let t = Tensor::new(w.shape.clone(), int_storage(w.dtype, &out.codes)?)?;
            let proto = q.initializer_mut(&w.codes_name).expect("found in this graph");
            *proto = tensor_to_proto(&w.codes_name, &t);
            if let Some(scale) = &out.scale {
                rescaled += 1;
                write_scales(q, w, scale)?;
            }
        } else {
            no_gain += 1;
        }
        let msg = format!(
            "{}: MSE {:.3e} -> {:.3e} fitted scales -> {:.3e} ({:.1} % undecided)",
            w.label,
            out.mse_nearest,
            out.mse_fitted,
            out.mse,
            100.0 * out.undecided
        );
        progress.advance(1, Some(&msg));
        report.layers.push(LayerChange {
            node: w.label.clone(),
            metric: "output MSE (round-to-nearest -> learned)".into(),
            before: out.mse_nearest,
            after: out.mse,
        });
    }
    progress.finish();
    let (before, after) =
        report.layers.iter().fold((0.0, 0.0), |(b, a), l| (b + l.before, a + l.after));
    let mut summary = format!(
        "learned the rounding of {learned} of {} weights ({} steps, lambda {}); output MSE summed \
         over layers {before:.4e} -> {after:.4e}; kept up to {} MiB of activations between \
         passes",
        weights.len(),
        opts.iterations,
        opts.reg_weight,
        kept_peak >> 20
    );
    if rescaled > 0 {
        summary += &format!("; narrowed the scales of {rescaled} weights (output error fit)");
    }
    if no_gain > 0 {
        summary += &format!("; {no_gain} kept round-to-nearest (no gain)");
    }
    if not_reached > 0 {
        summary +=
            &format!("; {not_reached} not reached within the time budget (round-to-nearest)");
    }
    if !skipped.is_empty() {
        let first: Vec<String> = skipped.iter().take(3).map(|(n, w)| format!("{n}: {w}")).collect();
        summary += &format!("; {} left alone ({})", skipped.len(), first.join("; "));
    }
    report.summary = summary;
    Ok(report)
}
