//! Bias correction (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and
//! Bias Correction", §4.2 and appendix): quantization shifts the mean of a layer's output
//! channels (rounding errors of a channel's weights do not cancel); folding the opposite shift
//! into the bias removes it. Layers: every quantized `Conv`/`Gemm` (weight read through a
//! `DequantizeLinear` of an initializer) and every quantized `MatMul` followed by a bias `Add`.
//!
//! * **empirical**: `δ[c] = mean(L_q(x_q)[c] − L(x)[c])` over the samples, per output
//!   channel `c` (Conv: axis 1, Gemm/MatMul: the last): `L_q` is the layer as the quantized
//!   model computes it (quantized weight and bias) on its quantized input `x_q`, `L` the FP32
//!   layer on `x`, the same input **as the quantized model computes it** from the previous
//!   layers' outputs but without the activation quantizers in between (the paper's "the
//!   quantized model's own inputs"). One pass of the quantized model, each layer's FP32 twin
//!   beside it, measures every layer (memory: per-channel sums, whatever the number of
//!   samples). A layer so removes the shift it adds (its weights' rounding, the rounding and
//!   clipping of the activations it reads), not the one it inherits: the layers before it
//!   remove theirs, so no shift is corrected twice. A layer's own shift moves a little once
//!   the layers before it are corrected (`ΔW · δ_before`); a second pass measures what is left
//!   and removes it ([`EMPIRICAL_PASSES`]), which the paper's sequential variant (one pass per
//!   layer) reaches exactly. Left by both: what a nonlinearity makes of upstream noise
//!   (`E[relu(y + n)] ≠ E[relu(y)]`), which no bias of the layer after can see.
//! * **analytic** (no samples): `δ[c] = Σ_k ΔW[c, k] · E[x]`, `ΔW = W_q − W` the weights'
//!   rounding error, `E[x]` the **per-tensor** mean of the layer's input from the calibration
//!   histogram (bin centres). Exact for inputs whose channels share one mean and for which
//!   zero padding is negligible; blind to activation quantization. The paper derives a
//!   per-channel `E[x]` from the preceding BatchNormalization's β, γ, which is folded away by
//!   the time quantization runs.
//!
//! The shift is subtracted from the bias: an int32 bias (`DequantizeLinear`, scale
//! `s_in · s_w`) gets new codes on its own grid, a float bias a new value, and a layer without a
//! bias gets one (int32 when its input and weight are quantized, as ONNX Runtime's QDQ fusion
//! wants).

use super::{store_initializer, LayerChange, StepContext, StepReport};
use crate::calibrate::CalibrationTable;
use crate::config::BiasCorrection;
use crate::error::{QuantError, Result};
use crate::passes::{
    add_init, attr_f, attr_i, init_f32, init_tensor, int_attr, is_default_domain, make_node,
};
use crate::samples::{Progress, SampleSource};

/// A node's name (or `Op#index`), for the report.
fn node_name(g: &Graph, i: usize) -> String {
    crate::passes::label(&g.nodes()[i], i)
}
use lowbit_engine::{Session, SessionOptions};
use lowbit_kernels::quantize as core;
use lowbit_onnx::graph::Graph;
use lowbit_onnx::pb::ModelProto;
use lowbit_tensor::{DType, Tensor};
use std::collections::HashMap;

/// Passes of empirical correction: each measures what the corrections so far left (a layer's
/// own shift moves a little once the layers before it are corrected) and removes it.
pub const EMPIRICAL_PASSES: usize = 2;

/// A quantized layer whose output mean shift can be folded into a bias.
#[derive(Clone, Debug)]
struct Target {
    /// The layer node in the quantized graph (Conv, Gemm or MatMul).
    node: usize,
    /// The layer's output before its output quantizer (a MatMul's: its bias Add's output,
    /// the quantizer before the Add).
    out: String,
    /// Channel axis of `out` counted from the front (`None`: the last).
    axis: Option<usize>,
    channels: usize,
    bias: Bias,
}

#[derive(Clone, Debug)]
enum Bias {
    /// int32 codes through a DequantizeLinear node.
    Int32 { dq: usize },
    /// A float initializer read by `node` at input `slot`, multiplied by `factor` (Gemm beta).
    Float { node: usize, slot: usize, factor: f64 },
    /// No bias yet: slot 2 of the layer.
    Missing,
}

/// Removes the per-channel mean shift quantization adds to each layer's output of `q` (the QDQ
/// graph made from `fp32`), measured on `ctx.samples` (empirical) or derived from the weights'
/// rounding error and the input's calibrated statistics (analytic).
pub fn bias_correction(
    fp32: &Graph,
    q: &mut Graph,
    kind: BiasCorrection,
    table: &CalibrationTable,
    ctx: &mut StepContext,
) -> Result<StepReport> {
    q.topo_sort()?;
    let (targets, skipped) = find_targets(q)?;
    let mut report = StepReport { step: "bias-correction".into(), ..Default::default() };
    let metric = "mean |output channel mean shift| the layer adds (quantized - FP32), first \
                  pass -> last pass";
    let mut notes = skipped;
    match kind {
        BiasCorrection::Empirical => {
            let Some(samples) = ctx.samples.as_deref_mut() else {
                return Err(QuantError::Config(
                    "empirical bias correction runs on calibration samples: pass the data".into(),
                ));
            };
            let batches = samples.batches().unwrap_or(0) * EMPIRICAL_PASSES;
            ctx.progress.start("bias correction", batches as u64);
            // Per layer node: the shift the first pass measured, the one the last pass did.
            let mut shifts: Vec<(usize, f64, f64)> = Vec::new();
            for pass in 0..EMPIRICAL_PASSES {
                // Again each pass: a layer without bias has one after the first.
                let targets = if pass == 0 { targets.clone() } else { find_targets(q)?.0 };
                let mut pass_notes = Vec::new();
                let (model, diffs) = twin_model(fp32, q, &targets, &mut pass_notes)?;
                let probes: Vec<Probe> = targets
                    .iter()
                    .zip(&diffs)
                    .filter_map(|(t, d)| {
                        Some(Probe { value: d.clone()?, axis: t.axis, channels: t.channels })
                    })
                    .collect();
                let means = channel_means(&model, &probes, samples, ctx.threads, ctx.progress);
                let mut means = means.inspect_err(|_| ctx.progress.finish())?.into_iter();
                for (t, d) in targets.iter().zip(&diffs) {
                    if d.is_none() {
                        continue;
                    }
                    let delta = means.next().expect("one mean per probe");
                    match apply_shift(q, t, &delta)? {
                        Ok(_) => match shifts.iter_mut().find(|s| s.0 == t.node) {
                            Some(s) => s.2 = mean_abs(&delta),
                            None => shifts.push((t.node, mean_abs(&delta), mean_abs(&delta))),
                        },
                        Err(why) if pass == 0 => pass_notes.push(why),
                        Err(_) => {}
                    }
                }
                if pass == 0 {
                    notes.extend(pass_notes);
                }
            }
            ctx.progress.finish();
            for (node, first, last) in shifts {
                report.layers.push(LayerChange {
                    node: node_name(q, node),
                    metric: metric.into(),
                    before: first,
                    after: last,
                });
            }
        }
        BiasCorrection::Analytic => {
            for t in &targets {
                let shift = match analytic_shift(fp32, q, t, table)? {
                    Ok(s) => s,
                    Err(why) => {
                        notes.push(format!("{}: {why}", node_name(q, t.node)));
                        continue;
                    }
                };
                let label = node_name(q, t.node);
                match apply_shift(q, t, &shift)? {
                    Ok(left) => report.layers.push(LayerChange {
                        node: label,
                        metric: "mean |expected output channel mean shift| (ΔW · E[x])".into(),
                        before: mean_abs(&shift),
                        after: left,
                    }),
                    Err(why) => notes.push(why),
                }
            }
        }
    }
    q.topo_sort()?;
    let n = report.layers.len() as f64;
    let avg = |f: fn(&LayerChange) -> f64| report.layers.iter().map(f).sum::<f64>() / n.max(1.0);
    report.summary = format!(
        "{} biases corrected ({}; mean channel shift {:.3e} -> {:.3e}){}",
        report.layers.len(),
        match kind {
            BiasCorrection::Empirical => "empirical, each layer on its own inputs",
            BiasCorrection::Analytic => "analytic, ΔW · E[x]",
        },
        avg(|c| c.before),
        avg(|c| c.after),
        if notes.is_empty() { String::new() } else { format!("; {}", notes.join("; ")) }
    );
    Ok(report)
}

fn mean_abs(v: &[f64]) -> f64 {
    v.iter().map(|x| x.abs()).sum::<f64>() / v.len().max(1) as f64
}

/// The initializer a DequantizeLinear output `value` dequantizes, with the node's index.
fn dq_of_initializer(g: &Graph, value: &str) -> Option<usize> {
    let p = g.producer(value)?;
    let n = &g.nodes()[p];
    (n.op_type == "DequantizeLinear" && is_default_domain(n) && g.is_initializer(&n.input[0]))
        .then_some(p)
}

/// The quantized layers of `q`, in topological order, and notes on the ones left alone.
fn find_targets(q: &Graph) -> Result<(Vec<Target>, Vec<String>)> {
    let mut targets = Vec::new();
    let mut notes = Vec::new();
    for (i, n) in q.nodes().iter().enumerate() {
        let op = n.op_type.as_str();
        if !is_default_domain(n) || !matches!(op, "Conv" | "Gemm" | "MatMul") || n.output.len() != 1
        {
            continue;
        }
        let Some(wdq) = n.input.get(1).and_then(|w| dq_of_initializer(q, w)) else { continue };
        let wshape = q.initializer(&q.nodes()[wdq].input[0]).map(|p| p.dims.clone());
        let Some(wshape) = wshape.map(|d| d.iter().map(|&x| x as usize).collect::<Vec<_>>()) else {
            continue;
        };
        let target = match op {
            "Conv" if wshape.len() >= 3 => conv_gemm_target(q, i, 1, wshape[0])?,
            "Gemm" if wshape.len() == 2 => {
                let trans_b = attr_i(n, "transB").unwrap_or(0) != 0;
                let c = if trans_b { wshape[0] } else { wshape[1] };
                conv_gemm_target(q, i, 0, c)?
            }
            "MatMul" if wshape.len() >= 2 => matmul_target(q, i, wshape[wshape.len() - 1])?,
            _ => None,
        };
        match target {
            Some(t) => targets.push(t),
            None => notes.push(format!("{}: bias layout not understood", node_name(q, i))),
        }
    }
    Ok((targets, notes))
}

/// A Conv (`axis` 1) or Gemm (`axis` 0 → the last) target.
fn conv_gemm_target(q: &Graph, i: usize, axis: usize, channels: usize) -> Result<Option<Target>> {
    let n = &q.nodes()[i];
    let out = n.output[0].clone();
    let axis = (axis > 0).then_some(axis);
    let bias = match n.input.get(2).filter(|s| !s.is_empty()) {
        None => Bias::Missing,
        Some(b) => match dq_of_initializer(q, b) {
            Some(dq) => {
                let codes = &q.nodes()[dq].input[0];
                let ok = init_tensor(q, codes)?
                    .is_some_and(|t| t.dtype() == DType::I32 && t.len() == channels);
                if !ok {
                    return Ok(None);
                }
                Bias::Int32 { dq }
            }
            None => {
                let Some(t) = init_f32(q, b)? else { return Ok(None) };
                if t.len() != channels || t.shape().iter().filter(|&&d| d != 1).count() > 1 {
                    return Ok(None);
                }
                let factor =
                    if n.op_type == "Gemm" { attr_f(n, "beta").unwrap_or(1.0) } else { 1.0 };
                if factor == 0.0 {
                    return Ok(None);
                }
                Bias::Float { node: i, slot: 2, factor: factor as f64 }
            }
        },
    };
    Ok(Some(Target { node: i, out, axis, channels, bias }))
}

/// A MatMul whose output (possibly through its own QuantizeLinear → DequantizeLinear) feeds
/// only an `Add` of a float initializer of `channels` values: the Add is its bias.
fn matmul_target(q: &Graph, i: usize, channels: usize) -> Result<Option<Target>> {
    let mut value = q.nodes()[i].output[0].clone();
    for _ in 0..3 {
        let [c] = q.consumers(&value) else { return Ok(None) };
        let n = &q.nodes()[*c];
        match n.op_type.as_str() {
            "QuantizeLinear" | "DequantizeLinear" if !q.is_graph_output(&value) => {
                value = n.output[0].clone();
            }
            "Add" if n.input.len() == 2 && n.input.contains(&value) => {
                let slot = if n.input[0] == value { 1 } else { 0 };
                let Some(t) = init_f32(q, &n.input[slot])? else { return Ok(None) };
                if t.len() != channels || t.shape().last() != Some(&channels) {
                    return Ok(None);
                }
                let bias = Bias::Float { node: *c, slot, factor: 1.0 };
                let out = n.output[0].clone();
                return Ok(Some(Target { node: i, out, axis: None, channels, bias }));
            }
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// A value whose per-channel mean a pass measures.
struct Probe {
    value: String,
    /// Channel axis (`None`: the last).
    axis: Option<usize>,
    channels: usize,
}

/// The quantized model with, beside each target layer, its FP32 twin: the FP32 weight and
/// bias applied to the layer's input as the quantized model computes it without activation
/// quantizers since the previous layers ([`FloatValues`]).
/// Returns the model and, per target, the value holding `layer − twin` (`None` where the twin
/// cannot be built; `notes` says why). Each difference feeds a scalar `ReduceMean` graph
/// output so that it is computed, seen by the observer, and freed at once.
fn twin_model(
    fp32: &Graph,
    q: &Graph,
    targets: &[Target],
    notes: &mut Vec<String>,
) -> Result<(ModelProto, Vec<Option<String>>)> {
    let mut aux = q.clone();
    let mut diffs = Vec::new();
    let stops = targets.iter().map(|t| t.out.clone()).collect();
    let mut float = FloatValues { q, stops, done: HashMap::new() };
    for t in targets {
        let qn = &q.nodes()[t.node];
        let label = node_name(q, t.node);
        let fp = fp32.producer_node(&qn.output[0]).filter(|n| n.op_type == qn.op_type);
        // A MatMul's bias is the Add after it (its output quantizer between): the twin gets
        // the FP32 Add too.
        let fp_add = (t.out != qn.output[0]).then(|| fp32.producer_node(&t.out)).flatten();
        let (Some(fp), true) = (fp, fp_add.is_some() == (t.out != qn.output[0])) else {
            notes.push(format!("{label}: no FP32 counterpart"));
            diffs.push(None);
            continue;
        };
        let bias = fp.input.get(2).filter(|b| !b.is_empty() && qn.op_type != "MatMul");
        let params: Vec<&String> = std::iter::once(&fp.input[1]).chain(bias).collect();
        let mut inputs = vec![float.of(&mut aux, &qn.input[0], 0)];
        for p in params {
            match init_tensor(fp32, p)? {
                Some(v) => inputs.push(add_init(&mut aux, &format!("{label}_twin_{p}"), &v)),
                None => break,
            }
        }
        if inputs.len() < 2 + usize::from(bias.is_some()) {
            notes.push(format!("{label}: FP32 weight or bias is not an initializer"));
            diffs.push(None);
            continue;
        }
        let mut out = aux.unique_name(&format!("{label}_twin"));
        let mut twin = fp.clone();
        twin.name = aux.unique_name(&format!("{label}_twin"));
        twin.input = inputs;
        twin.output = vec![out.clone()];
        aux.push_node(twin);
        if let Some(add) = fp_add {
            let mut twin = add.clone();
            for i in twin.input.iter_mut() {
                if *i == fp.output[0] {
                    i.clone_from(&out);
                } else if let Some(b) = init_tensor(fp32, i)? {
                    *i = add_init(&mut aux, &format!("{label}_twin_{i}"), &b);
                }
            }
            out = aux.unique_name(&format!("{label}_twin_add"));
            twin.name = aux.unique_name(&format!("{label}_twin_add"));
            twin.output = vec![out.clone()];
            aux.push_node(twin);
        }
        let d = aux.unique_name(&format!("{label}_bias_shift"));
        let sub = aux.unique_name(&format!("{label}_bias_shift_Sub"));
        aux.push_node(make_node("Sub", sub, vec![t.out.clone(), out], vec![d.clone()], vec![]));
        let sink = aux.unique_name(&format!("{label}_bias_shift_mean"));
        let red = aux.unique_name(&format!("{label}_bias_shift_ReduceMean"));
        let keep = vec![int_attr("keepdims", 0)];
        aux.push_node(make_node("ReduceMean", red, vec![d.clone()], vec![sink.clone()], keep));
        aux.proto_mut()
            .output
            .push(lowbit_onnx::pb::ValueInfoProto { name: sink, ..Default::default() });
        diffs.push(Some(d));
    }
    Ok((aux.into_model(), diffs))
}

/// Rebuilds, beside the quantized graph, the values its layers read as the quantized model
/// computes them *without* activation quantizers back to the nearest layer outputs: an
/// activation `DequantizeLinear(QuantizeLinear(v))` stands for `v`, and the ops between
/// (activations, pools, reshapes, residual Adds) are cloned onto those float values. A
/// layer's twin reads them, so the rounding of the activations it reads counts as that
/// layer's error.
struct FloatValues<'a> {
    q: &'a Graph,
    /// Outputs of quantized layers: float already, where the walk stops.
    stops: std::collections::HashSet<String>,
    done: HashMap<String, String>,
}

/// How far back [`FloatValues::of`] walks before it gives up (the value then stays quantized).
const MAX_WALK: usize = 256;

impl FloatValues<'_> {
    /// The float version of `value`, cloning the ops it needs into `aux`.
    fn of(&mut self, aux: &mut Graph, value: &str, depth: usize) -> String {
        if let Some(v) = self.done.get(value) {
            return v.clone();
        }
        let q = self.q;
        let node = match q.producer(value) {
            Some(p) if depth < MAX_WALK && !self.stops.contains(value) => &q.nodes()[p],
            _ => return value.to_string(),
        };
        let result = if node.op_type == "DequantizeLinear" {
            match q.producer_node(&node.input[0]).filter(|n| n.op_type == "QuantizeLinear") {
                Some(qz) => self.of(aux, &qz.input[0], depth + 1),
                None => value.to_string(),
            }
        } else if node.op_type == "QuantizeLinear" || !is_default_domain(node) {
            value.to_string()
        } else {
            let inputs: Vec<String> = node
                .input
                .iter()
                .map(|i| if i.is_empty() { i.clone() } else { self.of(aux, i, depth + 1) })
                .collect();
            if inputs == node.input {
                value.to_string()
            } else {
                let mut twin = node.clone();
                twin.name = aux.unique_name(&format!("{}_float", node.name));
                twin.input = inputs;
                for o in twin.output.iter_mut().filter(|o| !o.is_empty()) {
                    let renamed = aux.unique_name(&format!("{o}_float"));
                    self.done.insert(o.clone(), renamed.clone());
                    *o = renamed;
                }
                aux.push_node(twin);
                self.done.get(value).cloned().unwrap_or_else(|| value.to_string())
            }
        };
        self.done.insert(value.to_string(), result.clone());
        result
    }
}

/// The scales of the int32 bias dequantized by node `dq`.
fn bias_scale(q: &Graph, dq: usize) -> Result<Vec<f32>> {
    let n = &q.nodes()[dq];
    let scale = init_f32(q, &n.input[1])?.ok_or_else(|| QuantError::Node {
        node: node_name(q, dq),
        op_type: n.op_type.clone(),
        msg: "bias scale is not a float initializer".into(),
    })?;
    Ok(scale.as_f32()?.to_vec())
}

/// The codes of an integer tensor, as i32.
fn int_codes(t: &Tensor) -> Result<Vec<i32>> {
    core::int_values(t.data()).ok_or_else(|| {
        QuantError::Recovery(format!("bias correction: {} is not an integer bias", t.dtype()))
    })
}

/// Per probe, the mean of each channel over one pass of `samples` through `model` (unfused,
/// so every value is seen); sums in f64 per channel.
fn channel_means(
    model: &ModelProto,
    probes: &[Probe],
    samples: &mut dyn SampleSource,
    threads: usize,
    progress: &dyn Progress,
) -> Result<Vec<Vec<f64>>> {
    let session = Session::new(model, &SessionOptions::unfused(threads))?;
    let index: HashMap<&str, usize> =
        probes.iter().enumerate().map(|(k, p)| (p.value.as_str(), k)).collect();
    let mut sums: Vec<Vec<f64>> = probes.iter().map(|p| vec![0.0; p.channels]).collect();
    let mut counts = vec![0u64; probes.len()];
    let mut err: Option<QuantError> = None;
    samples.replay(&mut |feeds| {
        session.run_observed(feeds, &mut |name, t| {
            let Some(&k) = index.get(name) else { return };
            if err.is_some() {
                return;
            }
            match add_channel_sums(t, probes[k].axis, &mut sums[k]) {
                Ok(n) => counts[k] += n,
                Err(e) => err = Some(e),
            }
        })?;
        progress.advance(1, None);
        Ok(())
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    for (k, p) in probes.iter().enumerate() {
        if counts[k] == 0 {
            return Err(QuantError::Recovery(format!(
                "bias correction: the samples never produced '{}'",
                p.value
            )));
        }
        for s in &mut sums[k] {
            *s /= counts[k] as f64;
        }
    }
    Ok(sums)
}

/// Adds each channel's values of `t` to `sums`; returns the values per channel added.
fn add_channel_sums(t: &Tensor, axis: Option<usize>, sums: &mut [f64]) -> Result<u64> {
    let shape = t.shape();
    let axis = axis.unwrap_or(shape.len().saturating_sub(1));
    let c = sums.len();
    if shape.get(axis) != Some(&c) {
        return Err(QuantError::Recovery(format!(
            "bias correction: a layer output of shape {shape:?} has no {c} channels on axis {axis}"
        )));
    }
    let inner: usize = shape[axis + 1..].iter().product();
    let v = t.as_f32()?;
    for (j, chunk) in v.chunks(inner.max(1)).enumerate() {
        sums[j % c] += chunk.iter().map(|&x| x as f64).sum::<f64>();
    }
    Ok((v.len() / c) as u64)
}

/// `ΔW · E[x]` per output channel (see the module docs), or why it cannot be computed.
fn analytic_shift(
    fp32: &Graph,
    q: &Graph,
    t: &Target,
    table: &CalibrationTable,
) -> Result<std::result::Result<Vec<f64>, String>> {
    let qn = &q.nodes()[t.node];
    let Some(fp) = fp32.producer_node(&qn.output[0]).filter(|n| n.op_type == qn.op_type) else {
        return Ok(Err("no FP32 counterpart".into()));
    };
    let Some(w) = init_f32(fp32, &fp.input[1])? else {
        return Ok(Err("FP32 weight is not an initializer".into()));
    };
    let Some(mean) = table
        .tensors
        .get(&fp.input[0])
        .and_then(|c| c.histogram())
        .and_then(|h| histogram_mean(&h))
    else {
        return Ok(Err(format!("no calibration histogram for input '{}'", fp.input[0])));
    };
    let wq = dequantized_weight(q, &qn.input[1])?;
    if wq.len() != w.len() {
        return Ok(Err("quantized and FP32 weights differ in size".into()));
    }
    let c = t.channels;
    let trans_b = attr_i(qn, "transB").unwrap_or(0) != 0;
    let channel_of = |i: usize| -> usize {
        match qn.op_type.as_str() {
            "Conv" => i / (w.len() / c),
            "Gemm" if trans_b => i / (w.len() / c),
            _ => i % c,
        }
    };
    let mut shift = vec![0f64; c];
    for (i, (&a, &b)) in wq.iter().zip(w.as_f32()?).enumerate() {
        shift[channel_of(i)] += (a - b) as f64 * mean;
    }
    Ok(Ok(shift))
}

/// The mean of the values a histogram saw, each standing for its bin's centre.
fn histogram_mean(h: &crate::calibrate::Histogram) -> Option<f64> {
    let total = h.total();
    if total == 0 {
        return None;
    }
    let w = h.bin_width();
    let sum: f64 =
        h.counts().iter().enumerate().map(|(i, &n)| n as f64 * (h.edge(i) + w / 2.0)).sum();
    Some(sum / total as f64)
}

/// The values the DequantizeLinear producing `value` (of an initializer) yields.
fn dequantized_weight(q: &Graph, value: &str) -> Result<Vec<f32>> {
    let dq = dq_of_initializer(q, value).expect("targets read a dequantized initializer");
    let n = &q.nodes()[dq];
    let codes = init_tensor(q, &n.input[0])?.expect("checked initializer");
    let scale = init_f32(q, &n.input[1])?.ok_or_else(|| QuantError::Node {
        node: node_name(q, dq),
        op_type: n.op_type.clone(),
        msg: "scale is not a float initializer".into(),
    })?;
    let zp = match n.input.get(2).filter(|s| !s.is_empty()) {
        Some(z) => init_tensor(q, z)?,
        None => None,
    };
    let shape = codes.shape().to_vec();
    let map = if scale.len() == 1 {
        core::ParamMap::per_tensor()
    } else {
        let rank = shape.len() as i64;
        let a = attr_i(n, "axis").unwrap_or(1);
        let axis = if a < 0 { a + rank } else { a } as usize;
        match attr_i(n, "block_size") {
            Some(b) if b > 0 => core::ParamMap::blocked(&shape, axis, b as usize),
            _ => core::ParamMap::per_axis(&shape, axis),
        }
    };
    Ok(core::dequantize(codes.data(), scale.as_f32()?, zp.as_ref().map(|z| z.data()), &map)?)
}

/// Subtracts `delta` (per channel) from the target's bias in `q`; returns the mean |part| the
/// bias grid could not take (int32 rounding). `Ok(Err(note))` when the bias cannot take it at
/// all (an int32 code would overflow).
fn apply_shift(
    q: &mut Graph,
    t: &Target,
    delta: &[f64],
) -> Result<std::result::Result<f64, String>> {
    match t.bias {
        Bias::Int32 { dq } => {
            let n = q.nodes()[dq].clone();
            let codes = init_tensor(q, &n.input[0])?.expect("checked initializer");
            let s = bias_scale(q, dq)?;
            let scale_of = |c: usize| s[if s.len() == 1 { 0 } else { c }];
            let want: Vec<f64> = int_codes(&codes)?
                .iter()
                .enumerate()
                .map(|(c, &k)| core::dequantize_one(k, scale_of(c), 0) as f64 - delta[c])
                .collect();
            let bias: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            // The bias scales are already `s_in · s_w`: requantize on that grid (in_scale 1).
            let new = match core::quantize_bias(&bias, 1.0, &s) {
                Ok(v) => v,
                Err(o) => {
                    return Ok(Err(format!(
                        "{}: corrected bias channel {} ({}) overflows int32 at scale {:e}; left \
                         uncorrected",
                        node_name(q, t.node),
                        o.channel,
                        o.bias,
                        o.scale
                    )))
                }
            };
            let left: Vec<f64> = new
                .iter()
                .enumerate()
                .map(|(c, &k)| core::dequantize_one(k, scale_of(c), 0) as f64 - want[c])
                .collect();
            let t = Tensor::from_vec(codes.shape().to_vec(), new)?;
            let name = store_initializer(q, &n.input[0], dq, t);
            q.node_mut(dq).expect("dq index").input[0] = name;
            Ok(Ok(mean_abs(&left)))
        }
        Bias::Float { node, slot, factor } => {
            let name = q.nodes()[node].input[slot].clone();
            let b = init_f32(q, &name)?.expect("checked float initializer");
            let nb: Vec<f32> = b
                .as_f32()?
                .iter()
                .zip(delta)
                .map(|(&v, &d)| (v as f64 - d / factor) as f32)
                .collect();
            let new = store_initializer(q, &name, node, Tensor::from_vec(b.shape().to_vec(), nb)?);
            q.node_mut(node).expect("bias reader").input[slot] = new;
            Ok(Ok(0.0))
        }
        Bias::Missing => {
            let layer = q.nodes()[t.node].clone();
            let label = node_name(q, t.node);
            let neg: Vec<f32> = delta.iter().map(|&d| -d as f32).collect();
            let scales = bias_scales_of(q, &layer)?;
            let int32 = scales.and_then(|(s_in, ws)| {
                let codes = core::quantize_bias(&neg, s_in, &ws).ok()?;
                Some((codes, core::bias_scales(s_in, &ws)))
            });
            let (input, left) = match int32 {
                Some((codes, scales)) => {
                    let scale_of = |c: usize| scales[if scales.len() == 1 { 0 } else { c }];
                    let left: Vec<f64> = codes
                        .iter()
                        .enumerate()
                        .map(|(c, &k)| core::dequantize_one(k, scale_of(c), 0) as f64 + delta[c])
                        .collect();
                    let per_channel = scales.len() > 1;
                    let sshape = if per_channel { vec![scales.len()] } else { vec![] };
                    let qt = Tensor::from_vec(vec![t.channels], codes)?;
                    let qn = add_init(q, &format!("{label}_bias_quantized"), &qt);
                    let st = Tensor::from_vec(sshape, scales)?;
                    let sn = add_init(q, &format!("{label}_bias_scale"), &st);
                    let out = q.unique_name(&format!("{label}_bias_dequantized"));
                    let name = q.unique_name(&format!("{label}_bias_DequantizeLinear"));
                    let attrs = if per_channel { vec![int_attr("axis", 0)] } else { vec![] };
                    let dq =
                        make_node("DequantizeLinear", name, vec![qn, sn], vec![out.clone()], attrs);
                    q.push_node(dq);
                    (out, mean_abs(&left))
                }
                None => {
                    let bt = Tensor::from_vec(vec![t.channels], neg)?;
                    (add_init(q, &format!("{label}_bias"), &bt), 0.0)
                }
            };
            let n = q.node_mut(t.node).expect("layer index");
            n.input.resize(2, String::new());
            n.input.push(input);
            Ok(Ok(left))
        }
    }
}

/// `(s_in, s_w)` of a layer whose input and weight are both dequantized with float scales
/// (per-tensor input), and whose Gemm attributes allow an int32 bias.
fn bias_scales_of(
    q: &Graph,
    layer: &lowbit_onnx::pb::NodeProto,
) -> Result<Option<(f32, Vec<f32>)>> {
    if layer.op_type == "Gemm"
        && (attr_f(layer, "alpha").unwrap_or(1.0) != 1.0
            || attr_f(layer, "beta").unwrap_or(1.0) != 1.0)
    {
        return Ok(None);
    }
    let scale_of = |value: &str| -> Result<Option<Vec<f32>>> {
        let Some(p) = q.producer_node(value) else { return Ok(None) };
        if p.op_type != "DequantizeLinear" || p.input.len() < 2 {
            return Ok(None);
        }
        Ok(init_f32(q, &p.input[1])?.map(|t| t.as_f32().map(|v| v.to_vec())).transpose()?)
    };
    let (Some(s_in), Some(ws)) = (scale_of(&layer.input[0])?, scale_of(&layer.input[1])?) else {
        return Ok(None);
    };
    Ok((s_in.len() == 1).then(|| (s_in[0], ws)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms::test_graphs::{int, ints, uneven_weights, uniform, Builder};
    use crate::config::Algorithms;
    use crate::quantize::{quantize_run, QuantPlan, QuantizeConfig, QuantizeInputs};
    use crate::samples::{Feeds, NoProgress};

    /// Float slack on a shift the bias grid should cancel: f32 outputs summed in f64.
    const SUM_SLACK: f64 = 1e-5;

    const SHAPE: [usize; 4] = [2, 4, 6, 6];

    /// conv1 (3x3, pad 1, 4 → 8, channel ranges over 10^±1.5) → `act` → conv3 (1x1, 8 → 6,
    /// no bias): per-tensor 8-bit weights round the small channels coarsely.
    fn chain(act: &str) -> ModelProto {
        let mut b = Builder::default();
        let w1 = b.f32("w1", &[8, 4, 3, 3], uneven_weights(41, 8, 36, 1.5));
        let b1 = b.f32("b1", &[8], uniform(42, 8, -0.5, 0.5));
        let w3 = b.f32("w3", &[6, 8, 1, 1], uneven_weights(43, 6, 8, 1.5));
        let c1 = b.op("Conv", &["x", &w1, &b1], vec![ints("pads", &[1, 1, 1, 1])]);
        let r = b.op(act, &[&c1], vec![]);
        let c3 = b.op("Conv", &[&r, &w3], vec![int("group", 1)]);
        b.model(&SHAPE, &[&c3])
    }

    /// Inputs whose channels share one distribution (uniform on [0, 2]), as the analytic
    /// variant assumes.
    fn samples(n: usize) -> Vec<Feeds> {
        let len: usize = SHAPE.iter().product();
        (0..n)
            .map(|k| {
                let x = Tensor::from_vec(SHAPE.to_vec(), uniform(50 + k as u64, len, 0.0, 2.0));
                vec![("x".to_string(), x.unwrap())]
            })
            .collect()
    }

    fn quantize(m: &ModelProto, bc: Option<BiasCorrection>, data: &mut Vec<Feeds>) -> ModelProto {
        let cfg = QuantizeConfig {
            target: "lowbit".parse().unwrap(),
            per_channel: false,
            min_activation_sqnr: None,
            algorithms: Algorithms { bias_correction: bc, ..Default::default() },
            ..Default::default()
        };
        let plan = QuantPlan::resolve(&cfg).unwrap();
        let inputs =
            QuantizeInputs { table: None, samples: Some(data), threads: 1, progress: &NoProgress };
        quantize_run(m.clone(), &plan, inputs).unwrap().0
    }

    /// Per layer output, the per-channel mean of (quantized − FP32) over `data`.
    fn measured_shift(fp: &ModelProto, q: &ModelProto, data: &mut Vec<Feeds>) -> Vec<Vec<f64>> {
        let probes = [("conv1", 8), ("conv3", 6)].map(|(v, c)| Probe {
            value: v.into(),
            axis: Some(1),
            channels: c,
        });
        let a = channel_means(q, &probes, data, 1, &NoProgress).unwrap();
        let b = channel_means(fp, &probes, data, 1, &NoProgress).unwrap();
        a.iter().zip(&b).map(|(x, y)| x.iter().zip(y).map(|(u, v)| u - v).collect()).collect()
    }

    /// The measured shift of conv1 and conv3 with and without empirical correction, and the
    /// corrected model.
    fn empirical(act: &str) -> ([f64; 4], Vec<Vec<f64>>, Graph) {
        let m = chain(act);
        let mut data = samples(4);
        let plain = quantize(&m, None, &mut data);
        let fixed = quantize(&m, Some(BiasCorrection::Empirical), &mut data);
        let before = measured_shift(&m, &plain, &mut data);
        let after = measured_shift(&m, &fixed, &mut data);
        let s = [&before[0], &after[0], &before[1], &after[1]].map(|v| mean_abs(v));
        assert!(s[0] > 1e-2 && s[2] > 1e-2, "the test needs a shift to remove: {s:?}");
        (s, after, Graph::new(fixed).unwrap())
    }

    #[test]
    fn empirical_correction_zeroes_the_mean_shift_it_measures() {
        let ([b1, a1, b3, a3], after, g) = empirical("Identity");
        // conv1 reads the graph input, the same in both models: what is left of its shift is
        // what the int32 bias grid cannot express, at most half a step per channel.
        let conv1 = g.producer_node("conv1").unwrap();
        let step = bias_scale(&g, g.producer(&conv1.input[2]).unwrap()).unwrap()[0] as f64;
        for (c, a) in after[0].iter().enumerate() {
            assert!(a.abs() <= step / 2.0 + SUM_SLACK, "conv1 channel {c}: {a} (step {step})");
        }
        // conv3 reads conv1 (quantized): conv1's own correction cancels what it passes on.
        assert!(a1 < b1 / 10.0 && a3 < b3 / 10.0, "conv1 {b1} -> {a1}, conv3 {b3} -> {a3}");
        // conv3 had no bias: it gets an int32 one, as ONNX Runtime's QDQ fusion wants.
        let conv3 = g.producer_node("conv3").unwrap();
        let dq = g.producer_node(&conv3.input[2]).unwrap();
        assert_eq!(dq.op_type, "DequantizeLinear");
        assert_eq!(init_tensor(&g, &dq.input[0]).unwrap().unwrap().dtype(), DType::I32);
    }

    #[test]
    fn after_a_relu_the_correction_leaves_what_the_relu_bends() {
        let ([b1, a1, b3, a3], ..) = empirical("Relu");
        assert!(a1 < b1 / 10.0, "conv1 {b1} -> {a1}");
        // relu(y + n) has a larger mean than relu(y) for zero-mean noise n: conv1's rounding
        // noise, invisible to a one-pass correction, leaves part of conv3's shift.
        assert!(a3 < b3 / 3.0, "conv3 {b3} -> {a3}");
    }

    #[test]
    fn analytic_correction_reduces_the_mean_shift_without_data() {
        let m = chain("Relu");
        let mut data = samples(4);
        let plain = quantize(&m, None, &mut data);
        let fixed = quantize(&m, Some(BiasCorrection::Analytic), &mut data);
        let before = measured_shift(&m, &plain, &mut data);
        let after = measured_shift(&m, &fixed, &mut data);
        let (b1, a1) = (mean_abs(&before[0]), mean_abs(&after[0]));
        // E[x] is right for conv1 (every channel has mean 1) but for the zero padding.
        assert!(a1 < 0.5 * b1, "conv1: {b1} -> {a1}");
        let (b, a) = (before.concat(), after.concat());
        assert!(mean_abs(&a) < mean_abs(&b), "{} -> {}", mean_abs(&b), mean_abs(&a));
    }

    #[test]
    fn a_matmul_bias_add_is_corrected() {
        let mut b = Builder::default();
        let w = b.f32("w", &[8, 6], uneven_weights(61, 8, 6, 1.5));
        let bias = b.f32("bias", &[6], uniform(62, 6, -0.5, 0.5));
        let mm = b.op("MatMul", &["x", &w], vec![]);
        let out = b.op("Add", &[&mm, &bias], vec![]);
        let m = b.model(&[8, 8], &[&out]);
        let mut data: Vec<Feeds> = (0..16)
            .map(|k| {
                let x = Tensor::from_vec(vec![8, 8], uniform(70 + k, 64, 0.0, 2.0)).unwrap();
                vec![("x".to_string(), x)]
            })
            .collect();
        let fixed = quantize(&m, Some(BiasCorrection::Empirical), &mut data);
        let plain = quantize(&m, None, &mut data);
        let probe = [Probe { value: out.clone(), axis: None, channels: 6 }];
        let fp = channel_means(&m, &probe, &mut data, 1, &NoProgress).unwrap();
        let shift = |q: &ModelProto, data: &mut Vec<Feeds>| {
            let v = channel_means(q, &probe, data, 1, &NoProgress).unwrap();
            mean_abs(&v[0].iter().zip(&fp[0]).map(|(a, b)| a - b).collect::<Vec<_>>())
        };
        let (before, after) = (shift(&plain, &mut data), shift(&fixed, &mut data));
        assert!(before > 1e-2 && after <= before / 10.0, "{before} -> {after}");
    }
}
