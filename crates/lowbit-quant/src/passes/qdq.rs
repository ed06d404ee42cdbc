//! Static post-training quantization in QDQ format, laid out the way ONNX Runtime's CPU
//! provider fuses it into integer kernels (QLinearConv, QLinearMatMul, QGemm, …):
//!
//! * **activations**: one `QuantizeLinear → DequantizeLinear` pair per tensor, shared by all
//!   its consumers, on every float input of a quantized `Conv`/`MatMul`/`Gemm` and on their
//!   outputs; the pairs spread through pass-through ops (`Relu`, `Clip`, `Min` of a constant,
//!   `MaxPool`, `Reshape`,
//!   `Transpose`, `Flatten`, `Squeeze`, `Unsqueeze`, `Identity`) and average pools next to
//!   quantized tensors, so the runtime sees complete QDQ groups. An `Add`/`Mul` of two
//!   quantized tensors (a residual join) gets its output quantized as well, so ORT runs it as
//!   `QLinearAdd`/`QLinearMul`. Graph inputs and outputs keep
//!   their names and float type; a graph output is never itself quantized (its consumers, if
//!   any, read the dequantized copy). Parameters come from the calibration table's range for
//!   the chosen method (per tensor, [`QParams::from_range`]).
//! * **shared parameters**: the output of `MaxPool`, `Reshape`, `Transpose`, `Flatten`,
//!   `Squeeze`, `Unsqueeze`, `Identity` uses its input's parameters (the op commutes with
//!   quantization, as ORT's fused kernels require); the input of a `Relu`/`Clip`/`Min` that feeds
//!   nothing else uses the activation's output range (quantizing with it then clamps exactly as
//!   the activation does).
//! * **weights**: int8 (or the configured type) initializers + `DequantizeLinear`; per
//!   channel on axis 0 for Conv, Gemm `transB=1` axis 0 else 1, MatMul the last axis.
//! * **bias** (Conv input 2, Gemm C with `alpha = beta = 1` and shape `[N]`): int32 with
//!   `scale = s_in · s_w` (per channel), zero point 0, + `DequantizeLinear`.
//! * **opset**: raised to 13 (per-axis `DequantizeLinear`), 21 for int16 activations or int4
//!   weights, or the target's minimum, see [`super::ensure_opset`].
//! * **target placement** ([`crate::target::TargetRules`]): where the target fuses an op only
//!   with every input quantized (TensorRT's residual `Add`), the float input beside a quantized
//!   layer's output is quantized too; where it needs one grid on an op's inputs (`Concat` for
//!   TensorRT and OpenVINO), a `Concat` of quantized tensors gets its output quantized and its
//!   inputs and output share the union of their ranges.

use super::subgraphs::{rewrite_subgraphs, scoped_table, Outer};
use super::{
    add_init, attr_f, attr_i, constant_values, ensure_ir, init_dtype, init_f32, int_attr,
    is_default_domain, make_node, raise_opset, value_dtypes,
};
use crate::calibrate::CalibrationTable;
use crate::config::{CalibrationPlan, NodePlan, QuantPlan, WeightGranularity, WeightPlan};
use crate::error::{QuantError, Result};
use crate::qparams::{
    quantize, tensor_qparams, tensor_qparams_with_min_scale, QParams, QuantizedTensor,
};
use crate::quantize::{LayerPrecision, QuantizeSummary};
use crate::scheme::{Granularity, IntType, QuantScheme};
use lowbit_kernels::quantize as core;
use lowbit_onnx::graph::Graph;
use lowbit_tensor::{DType, Tensor};
use std::collections::{BTreeSet, HashMap};

/// Ops whose output uses the input's quantization parameters.
const SAME_GRID: &[&str] =
    &["MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"];
/// Clamping activations: their input may take the output's parameters. `Min` with constant
/// bounds is the per-channel upper bound equalization gives a `Clip` (`Clip → Min`): one grid
/// for both, so the activation is rounded once.
const CLAMPS: &[&str] = &["Relu", "Clip", "Min"];
/// Ops with their own output parameters that ORT runs quantized when surrounded by QDQ.
const OWN_GRID: &[&str] = &["GlobalAveragePool", "AveragePool"];
/// Binary ops quantized where both inputs already are (ORT: QLinearAdd / QLinearMul).
const JOINS: &[&str] = &["Add", "Mul"];

/// Expected SQNR (dB) of `tensor` quantized with the range `method` gives it, from its
/// calibration histogram.
pub(crate) fn expected_sqnr(
    table: &CalibrationTable,
    tensor: &str,
    calibration: &CalibrationPlan,
) -> Option<f64> {
    let t = table.tensors.get(tensor)?;
    let range = table.range_for(tensor, calibration)?;
    t.histogram()?.expected_sqnr_db(range, calibration.levels)
}

/// The per-channel axis of a weight (the core's), or `None` when the layout is not understood.
pub(crate) fn weight_axis(op: &str, trans_b: bool, rank: usize) -> Option<i64> {
    lowbit_kernels::quantize::weight_channel_axis(op, trans_b, rank).map(|a| a as i64)
}

/// A weight quantized once and the DequantizeLinear output that stands for it. `min_scale`
/// (per output channel) widens channels whose scale is too small for their bias.
pub(crate) fn insert_weight_dq(
    g: &mut Graph,
    weight: &str,
    scheme: &QuantScheme,
    min_scale: Option<&[f32]>,
    cache: &mut HashMap<(String, String), (String, QParams)>,
    new_nodes: &mut Vec<lowbit_onnx::pb::NodeProto>,
) -> Result<Option<(String, QParams)>> {
    let Some(w) = init_f32(g, weight)? else { return Ok(None) };
    let mut params = tensor_qparams(&w, scheme)?;
    let widen = min_scale.filter(|m| {
        let s = params.scales();
        (s.len() == 1 || s.len() == m.len())
            && m.iter().enumerate().any(|(c, &f)| s[if s.len() == 1 { 0 } else { c }] < f)
    });
    if let Some(m) = widen {
        let m: Vec<f32> = if params.axis.is_none() {
            vec![m.iter().copied().fold(0.0, f32::max)]
        } else {
            m.to_vec()
        };
        params = tensor_qparams_with_min_scale(&w, scheme, Some(&m))?;
    }
    let key = (weight.to_string(), format!("{scheme} {:?}", widen.map(|_| params.scales())));
    if let Some(hit) = cache.get(&key) {
        return Ok(Some(hit.clone()));
    }
    let q = QuantizedTensor { values: quantize(&w, &params)?, params };
    let qname = add_init(g, &format!("{weight}_quantized"), &q.values);
    let sname = add_init(g, &format!("{weight}_scale"), &q.params.scale);
    let zname = add_init(g, &format!("{weight}_zero_point"), &q.params.zero_point);
    let out = g.unique_name(&format!("{weight}_dequantized"));
    let mut attrs = Vec::new();
    if let Some(a) = q.params.axis {
        attrs.push(int_attr("axis", a as i64));
    }
    if let Some(b) = q.params.block_size {
        attrs.push(int_attr("block_size", b as i64));
    }
    let name = g.unique_name(&format!("{weight}_DequantizeLinear"));
    new_nodes.push(make_node(
        "DequantizeLinear",
        name,
        vec![qname, sname, zname],
        vec![out.clone()],
        attrs,
    ));
    cache.insert(key, (out.clone(), q.params.clone()));
    Ok(Some((out, q.params)))
}

pub(crate) struct Target {
    idx: usize,
    /// Float activation inputs (slot, name).
    acts: Vec<(usize, String)>,
    /// Weight slot, initializer name and the scheme the plan gives it.
    weight: Option<(usize, String, QuantScheme)>,
    /// Bias slot and initializer name (quantized to int32 when possible).
    bias: Option<(usize, String)>,
    /// The scheme of its activations (inputs and output): the plan's, or the node's own.
    act: QuantScheme,
}

/// Step 1 of static quantization: the `Conv`/`MatMul`/`Gemm` nodes to quantize, each other
/// candidate recorded in `summary` with why it stays float. `is_act`: a float activation;
/// `low_sqnr`: why an activation's range is too poor to quantize, if it is.
pub(crate) fn select_targets(
    g: &Graph,
    plan: &QuantPlan,
    is_act: &dyn Fn(&str) -> bool,
    low_sqnr: &dyn Fn(&str) -> Option<String>,
    summary: &mut QuantizeSummary,
) -> Vec<Target> {
    let mut targets: Vec<Target> = Vec::new();
    for (idx, node) in g.nodes().iter().enumerate() {
        let op = node.op_type.as_str();
        if !is_default_domain(node) || !matches!(op, "Conv" | "MatMul" | "Gemm") {
            continue;
        }
        if let Some(r) = plan.exclude.reason(node) {
            summary.exclude(node, idx, r);
            continue;
        }
        let own = plan.node_plan(node, idx);
        let (weights, act) = match own {
            Some(NodePlan::Float32 | NodePlan::Float16) => {
                let kind = if matches!(own, Some(NodePlan::Float16)) { "fp16" } else { "fp32" };
                summary.exclude(node, idx, format!("{kind} by the per-node plan"));
                summary.layers.push(LayerPrecision {
                    node: super::label(node, idx),
                    op_type: op.to_string(),
                    weight_values: weight_values(g, node),
                    precision: kind.into(),
                });
                continue;
            }
            Some(NodePlan::Quantized { weights, activations }) => (weights, *activations),
            None => (&plan.weights, plan.activations.scheme),
        };
        let x = node.input.first().cloned().unwrap_or_default();
        if !is_act(&x) {
            summary.leave(node, idx, "first input is not a float activation");
            continue;
        }
        let w = node.input.get(1).cloned().unwrap_or_default();
        let mut t = Target { idx, acts: vec![(0, x)], weight: None, bias: None, act };
        if g.initializer(&w).is_some() {
            if init_dtype(g, &w) != Some(DType::F32) {
                summary.leave(node, idx, "weight is not float32");
                continue;
            }
            let rank = g.initializer(&w).map(|p| p.dims.len()).unwrap_or(0);
            let trans_b = attr_i(node, "transB").unwrap_or(0) != 0;
            // Blocks run along a MatMul/Gemm's K; a Conv keeps one scale per output channel.
            let scheme = weights.scheme_for(op, trans_b, rank).or_else(|| {
                let per_channel =
                    WeightPlan { granularity: WeightGranularity::PerChannel, ..*weights };
                matches!(weights.granularity, WeightGranularity::Blocked(_))
                    .then(|| per_channel.scheme_for(op, trans_b, rank))
                    .flatten()
            });
            let Some(scheme) = scheme else {
                summary.leave(node, idx, format!("weight of rank {rank} not understood"));
                continue;
            };
            t.weight = Some((1, w, scheme));
        } else if op == "MatMul" && is_act(&w) {
            t.acts.push((1, w));
        } else {
            summary.leave(node, idx, "weight is neither an initializer nor a float activation");
            continue;
        }
        // A node given its own precision was chosen knowing its noise.
        if let Some(why) = t.acts.iter().find_map(|(_, a)| low_sqnr(a)).filter(|_| own.is_none()) {
            summary.leave(node, idx, why);
            continue;
        }
        // An int32 bias needs one weight scale per output channel: blocked weights keep it float.
        let blocked = t
            .weight
            .as_ref()
            .is_some_and(|(_, _, s)| matches!(s.granularity, Granularity::PerBlock { .. }));
        if op != "MatMul" && !blocked {
            if let Some(b) = node.input.get(2).filter(|b| !b.is_empty()) {
                let gemm_ok = op == "Conv"
                    || (attr_f(node, "alpha").unwrap_or(1.0) == 1.0
                        && attr_f(node, "beta").unwrap_or(1.0) == 1.0
                        && g.initializer(b).is_some_and(|p| p.dims.len() == 1));
                if g.initializer(b).is_some() && init_dtype(g, b) == Some(DType::F32) && gemm_ok {
                    t.bias = Some((2, b.clone()));
                }
            }
        }
        targets.push(t);
    }
    targets
}

/// Values in `node`'s weight initializer (input 1), 0 when it has none.
fn weight_values(g: &Graph, node: &lowbit_onnx::pb::NodeProto) -> u64 {
    let w = node.input.get(1).and_then(|w| g.initializer(w));
    w.map_or(0, |p| p.dims.iter().map(|&d| d.max(0) as u64).product())
}

/// The nodes static quantization would quantize, counted in `summary` (and the others left,
/// with why), without calibration ranges: every float activation counts as quantizable.
/// Control-flow bodies included, as [`quantize_static`] does them.
pub(crate) fn select_without_ranges(
    g: &mut Graph,
    plan: &QuantPlan,
    summary: &mut QuantizeSummary,
) -> Result<()> {
    let root = Outer::root(g.model());
    rewrite_subgraphs(g, &root, None, summary, &mut |sg, _, s| {
        select_graph(sg, plan, s);
        Ok(())
    })?;
    select_graph(g, plan, summary);
    Ok(())
}

fn select_graph(g: &Graph, plan: &QuantPlan, summary: &mut QuantizeSummary) {
    let consts = constant_values(g);
    let dtypes = value_dtypes(g);
    let is_act = |name: &str| {
        !name.is_empty() && !consts.contains(name) && dtypes.get(name) == Some(&DType::F32)
    };
    for t in select_targets(g, plan, &is_act, &|_| None, summary) {
        let op = g.nodes()[t.idx].op_type.clone();
        summary.count(&op);
    }
}

/// Runs static QDQ quantization on `g` (BatchNormalization already folded in the main graph)
/// and inside its control-flow bodies ([`super::subgraphs`]: a body's BatchNormalization is
/// folded there, its ranges come from the scoped names calibration gave its values).
pub fn quantize_static(
    g: &mut Graph,
    plan: &QuantPlan,
    table: &CalibrationTable,
    summary: &mut QuantizeSummary,
) -> Result<()> {
    let root = Outer::root(g.model());
    rewrite_subgraphs(g, &root, Some(table), summary, &mut |sg, ctx, s| {
        if plan.fold_batch_norm {
            s.folded_batch_norms += super::bn_fold::fold_batch_norms(sg)?;
        }
        static_graph(sg, plan, &scoped_table(table, ctx), s)
    })?;
    static_graph(g, plan, table, summary)
}

/// Static QDQ quantization of one graph's own nodes.
fn static_graph(
    g: &mut Graph,
    plan: &QuantPlan,
    table: &CalibrationTable,
    summary: &mut QuantizeSummary,
) -> Result<()> {
    raise_opset(g, plan, summary)?;
    let four_bit =
        |w: &crate::config::WeightPlan| matches!(w.value, IntType::Int4 | IntType::Uint4);
    if four_bit(&plan.weights)
        || plan
            .nodes
            .values()
            .any(|n| matches!(n, NodePlan::Quantized { weights, .. } if four_bit(weights)))
    {
        ensure_ir(g, 10);
    }
    let act = &plan.activations;

    let consts = constant_values(g);
    let dtypes = value_dtypes(g);
    let is_float = |name: &str| -> bool {
        match dtypes.get(name) {
            Some(d) => *d == DType::F32,
            None => table.tensors.contains_key(name),
        }
    };
    let is_act = |name: &str| !name.is_empty() && !consts.contains(name) && is_float(name);

    // 1. Which nodes are quantized.
    let low_sqnr = |a: &str| -> Option<String> {
        let min_db = act.min_sqnr?;
        let db = expected_sqnr(table, a, &act.calibration)?;
        (db < min_db).then(|| {
            format!(
                "activation '{a}' would keep an expected {db:.1} dB SQNR with its {} range \
                 (< {min_db} dB): outliers or clipping",
                act.calibration.method
            )
        })
    };
    let targets = select_targets(g, plan, &is_act, &low_sqnr, summary);

    // 2. Which tensors get a Q/DQ pair, and the scheme of those a node with its own precision
    // reads or writes (the finer grid where two nodes disagree).
    let mut qset: BTreeSet<String> = BTreeSet::new();
    let mut own_scheme: HashMap<String, QuantScheme> = HashMap::new();
    let finer = |a: &QuantScheme, b: &QuantScheme| -> bool {
        let levels = |s: &QuantScheme| s.qrange().map_or(0, |(lo, hi)| hi - lo);
        levels(a) > levels(b)
    };
    for t in &targets {
        let node = &g.nodes()[t.idx];
        let mut touched: Vec<String> = t.acts.iter().map(|(_, a)| a.clone()).collect();
        for (_, a) in &t.acts {
            qset.insert(a.clone());
        }
        for o in node.output.iter().take(1) {
            if is_float(o) && !g.is_graph_output(o) {
                qset.insert(o.clone());
                touched.push(o.clone());
            }
        }
        if t.act != act.scheme {
            for v in touched {
                let keep = own_scheme.get(&v).is_some_and(|s| !finer(&t.act, s));
                if !keep {
                    own_scheme.insert(v, t.act);
                }
            }
        }
    }
    let pass_node = |n: &lowbit_onnx::pb::NodeProto| -> bool {
        let op = n.op_type.as_str();
        is_default_domain(n)
            && (SAME_GRID.contains(&op) || CLAMPS.contains(&op) || OWN_GRID.contains(&op))
            && n.output.iter().skip(1).all(|o| o.is_empty())
            && (op != "Clip" || n.input.iter().skip(1).all(|m| m.is_empty() || consts.contains(m)))
            && (op != "Min" || (n.input.len() == 2 && consts.contains(&n.input[1])))
    };
    // Element-wise Add/Mul joining two quantized branches (residual Adds) are quantized too:
    // ONNX Runtime then runs them as QLinearAdd/QLinearMul and the int8 flow is unbroken.
    // Others (e.g. a float bias Add after a MatMul, or a transformer's residual Add of a
    // LayerNorm output) stay float: quantizing them costs accuracy and saves nothing.
    let rules = plan.target.rules();
    let layer_outputs: BTreeSet<String> =
        targets.iter().filter_map(|t| g.nodes()[t.idx].output.first().cloned()).collect();
    let mut joins: Vec<usize> = Vec::new();
    let mut shared_grids: Vec<Vec<String>> = Vec::new();
    let mut grouped: Vec<usize> = Vec::new();
    loop {
        let mut changed = false;
        for (idx, n) in g.nodes().iter().enumerate() {
            let op = n.op_type.as_str();
            if !is_default_domain(n)
                || plan.exclude.reason(n).is_some()
                || n.input.len() < 2
                || !(rules.quantize_all_inputs.contains(&op)
                    || rules.shared_grid_inputs.contains(&op))
            {
                continue;
            }
            let acts: Vec<&String> = n.input.iter().filter(|i| is_act(i)).collect();
            let all_inputs = if rules.quantize_all_inputs.contains(&op) {
                acts.iter().any(|i| layer_outputs.contains(*i) && qset.contains(*i))
            } else {
                acts.iter().any(|i| qset.contains(*i))
            };
            if all_inputs {
                for i in &acts {
                    changed |= qset.insert((*i).clone());
                }
            }
            let Some(o) = n.output.first() else { continue };
            if rules.shared_grid_inputs.contains(&op)
                && !grouped.contains(&idx)
                && acts.len() == n.input.len()
                && acts.iter().all(|i| qset.contains(*i))
                && is_float(o)
                && !g.is_graph_output(o)
            {
                grouped.push(idx);
                qset.insert(o.clone());
                let mut group: Vec<String> = acts.iter().map(|i| (*i).clone()).collect();
                group.push(o.clone());
                shared_grids.push(group);
                summary.count(op);
                changed = true;
            }
        }
        for (idx, n) in g.nodes().iter().enumerate() {
            let op = n.op_type.as_str();
            if !is_default_domain(n)
                || !JOINS.contains(&op)
                || joins.contains(&idx)
                || n.input.len() != 2
                || plan.exclude.reason(n).is_some()
            {
                continue;
            }
            let o = &n.output[0];
            if n.input.iter().all(|i| is_act(i) && qset.contains(i))
                && is_float(o)
                && !g.is_graph_output(o)
            {
                qset.insert(o.clone());
                joins.push(idx);
                changed = true;
            }
        }
        for n in g.nodes() {
            if !pass_node(n) || plan.exclude.reason(n).is_some() {
                continue;
            }
            let (d, o) = (&n.input[0], &n.output[0]);
            if !is_act(d) || !is_float(o) || g.is_graph_output(o) {
                continue;
            }
            if qset.contains(d) != qset.contains(o) {
                qset.insert(d.clone());
                qset.insert(o.clone());
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }

    // 3. Where each tensor's range comes from.
    let mut src: HashMap<String, String> = HashMap::new();
    for n in g.nodes() {
        if pass_node(n) && CLAMPS.contains(&n.op_type.as_str()) {
            let (d, o) = (&n.input[0], &n.output[0]);
            if qset.contains(d)
                && qset.contains(o)
                && g.consumers(d).len() == 1
                && !g.is_graph_output(d)
            {
                src.insert(d.clone(), o.clone());
            }
        }
    }
    let resolve = |src: &HashMap<String, String>, t: &str| -> String {
        let mut cur = t.to_string();
        for _ in 0..64 {
            match src.get(&cur) {
                Some(n) if *n != cur => cur = n.clone(),
                _ => break,
            }
        }
        cur
    };
    for n in g.nodes() {
        if pass_node(n) && SAME_GRID.contains(&n.op_type.as_str()) {
            let (d, o) = (&n.input[0], &n.output[0]);
            if qset.contains(d) && qset.contains(o) {
                let r = resolve(&src, d);
                src.insert(o.clone(), r);
            }
        }
    }
    let mut ranges: HashMap<String, (f32, f32)> = HashMap::new();
    let mut guarded: Vec<(String, f64, f64)> = Vec::new();
    for t in &qset {
        let s = resolve(&src, t);
        let c = table
            .choose_range(&s, &act.calibration)
            .ok_or_else(|| QuantError::MissingRange { tensor: s.clone() })?;
        if let Some((_, own, full)) = c.replaced {
            if !guarded.iter().any(|(n, ..)| *n == s) {
                guarded.push((s.clone(), own, full));
            }
        }
        ranges.insert(t.clone(), (c.range.min, c.range.max));
    }
    // One grid per shared group: every tensor on the grid of a member (same source) takes the
    // union, repeated until groups that share a tensor agree.
    for _ in 0..=shared_grids.len() {
        let mut changed = false;
        for group in &shared_grids {
            let sources: BTreeSet<String> = group.iter().map(|t| resolve(&src, t)).collect();
            let members: Vec<&String> =
                qset.iter().filter(|t| sources.contains(&resolve(&src, t))).collect();
            let (lo, hi) = members.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), m| {
                let (a, b) = ranges[*m];
                (l.min(a), h.max(b))
            });
            // A node with its own precision on one member puts the whole group on its grid.
            let scheme = members
                .iter()
                .filter_map(|m| own_scheme.get(*m))
                .fold(None, |a, s| match a {
                    Some(a) if !finer(s, a) => Some(a),
                    _ => Some(s),
                })
                .copied();
            for m in members {
                if ranges[m] != (lo, hi) {
                    ranges.insert(m.clone(), (lo, hi));
                    changed = true;
                }
                if let Some(s) = scheme {
                    if own_scheme.get(m) != Some(&s) {
                        own_scheme.insert(m.clone(), s);
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut params: HashMap<String, QParams> = HashMap::new();
    for t in &qset {
        let (lo, hi) = ranges[t];
        let scheme = own_scheme.get(t).unwrap_or(&act.scheme);
        params.insert(t.clone(), QParams::from_range(scheme, lo, hi)?);
    }
    if !guarded.is_empty() {
        let (worst, own, full) =
            &guarded.iter().min_by(|a, b| a.1.total_cmp(&b.1)).expect("not empty");
        summary.notes.push(format!(
            "{} activation{} kept the min-max range: the {} range clipped too much (expected \
             SQNR more than {} dB below min-max's; worst '{worst}': {own:.1} dB vs {full:.1} dB)",
            guarded.len(),
            if guarded.len() == 1 { "" } else { "s" },
            act.calibration.method,
            crate::calibrate::METHOD_GUARD_DB
        ));
    }

    // 4. Activation Q/DQ pairs.
    let mut new_nodes = Vec::new();
    let mut dq_of: HashMap<String, String> = HashMap::new();
    let mut param_names: HashMap<String, (String, String)> = HashMap::new();
    for t in &qset {
        let p = &params[t];
        let key = format!("{:?}/{:?}", p.scale.as_f32()?, p.zero_points());
        let (sname, zname) = match param_names.get(&key) {
            Some(v) => v.clone(),
            None => {
                let v = (
                    add_init(g, &format!("{t}_scale"), &p.scale),
                    add_init(g, &format!("{t}_zero_point"), &p.zero_point),
                );
                param_names.insert(key, v.clone());
                v
            }
        };
        let qout = g.unique_name(&format!("{t}_quantized"));
        let dqout = g.unique_name(&format!("{t}_dequantized"));
        let qn = g.unique_name(&format!("{t}_QuantizeLinear"));
        let dqn = g.unique_name(&format!("{t}_DequantizeLinear"));
        new_nodes.push(make_node(
            "QuantizeLinear",
            qn,
            vec![t.clone(), sname.clone(), zname.clone()],
            vec![qout.clone()],
            vec![],
        ));
        new_nodes.push(make_node(
            "DequantizeLinear",
            dqn,
            vec![qout, sname, zname],
            vec![dqout.clone()],
            vec![],
        ));
        dq_of.insert(t.clone(), dqout);
    }
    for (t, dq) in &dq_of {
        let users: Vec<usize> = g.consumers(t).to_vec();
        for u in users {
            g.replace_input(u, t, dq)?;
        }
    }

    // 5. Weights and biases.
    let mut wcache = HashMap::new();
    for t in &targets {
        let node = g.nodes()[t.idx].clone();
        let mut wparams: Option<QParams> = None;
        if let Some((slot, w, scheme)) = &t.weight {
            // Channels whose weights are all near zero next to their bias (dead channels after
            // BN folding) get a weight scale the int32 bias code fits under.
            let floor = match &t.bias {
                Some((_, b)) => init_f32(g, b)?
                    .map(|b| -> Result<Vec<f32>> {
                        let s_in = params[&t.acts[0].1].scales()[0];
                        Ok(core::min_weight_scales_for_bias(b.as_f32()?, s_in))
                    })
                    .transpose()?,
                None => None,
            };
            let got =
                insert_weight_dq(g, w, scheme, floor.as_deref(), &mut wcache, &mut new_nodes)?;
            summary.layers.push(LayerPrecision {
                node: super::label(&node, t.idx),
                op_type: node.op_type.clone(),
                weight_values: init_f32(g, w)?.map_or(0, |w| w.len() as u64),
                precision: format!("{scheme} weights, {} activations", t.act),
            });
            if let Some((dq, p)) = got {
                g.node_mut(t.idx).expect("target index").input[*slot] = dq;
                wparams = Some(p);
            }
        }
        if t.weight.is_none() {
            summary.layers.push(LayerPrecision {
                node: super::label(&node, t.idx),
                op_type: node.op_type.clone(),
                weight_values: 0,
                precision: format!("{} activations", t.act),
            });
        }
        if let (Some((slot, b)), Some(wp)) = (&t.bias, &wparams) {
            let x = &t.acts[0].1;
            let s_in = params[x].scales()[0];
            match quantize_bias(g, b, s_in, wp, &mut new_nodes)? {
                Ok(Some(dq)) => g.node_mut(t.idx).expect("target index").input[*slot] = dq,
                Ok(None) => {}
                Err(o) => summary.notes.push(format!(
                    "bias of {} stays float: channel {} ({}) over scale {:e} needs more than \
                     the int32 accumulator's headroom (its weights are near zero)",
                    super::label(&node, t.idx),
                    o.channel,
                    o.bias,
                    o.scale
                )),
            }
        }
        summary.count(&node.op_type);
    }
    for &idx in &joins {
        let op = g.nodes()[idx].op_type.clone();
        summary.count(&op);
    }
    let position: HashMap<String, usize> =
        g.nodes().iter().enumerate().map(|(i, n)| (super::label(n, i), i)).collect();
    summary.layers.sort_by_key(|l| position.get(&l.node).copied().unwrap_or(usize::MAX));
    for n in new_nodes {
        let at = g.num_nodes();
        g.insert_node(at, n)?;
    }
    Ok(())
}

/// The bias as int32 with `scale = s_in · s_w` ([`core::quantize_bias`]) and a
/// DequantizeLinear, per channel exactly when the weight is. `Ok(None)` when the bias does not
/// match the weight's channels; `Err(overflow)` when a channel's code would not fit (its
/// weights are near zero next to its bias): the bias then stays float.
fn quantize_bias(
    g: &mut Graph,
    bias: &str,
    s_in: f32,
    wp: &QParams,
    new_nodes: &mut Vec<lowbit_onnx::pb::NodeProto>,
) -> Result<std::result::Result<Option<String>, core::BiasOverflow>> {
    let Some(b) = init_f32(g, bias)? else { return Ok(Ok(None)) };
    let bv = b.as_f32()?;
    let ws = wp.scales();
    let per_channel = wp.axis.is_some();
    if b.shape().len() != 1 || (per_channel && ws.len() != bv.len()) {
        return Ok(Ok(None));
    }
    let q = match core::quantize_bias(bv, s_in, ws) {
        Ok(q) => q,
        Err(e) => return Ok(Err(e)),
    };
    let scales = core::bias_scales(s_in, ws);
    let qt = Tensor::from_vec(b.shape().to_vec(), q)?;
    let sshape = if per_channel { vec![scales.len()] } else { vec![] };
    let qname = add_init(g, &format!("{bias}_quantized"), &qt);
    let sname = add_init(g, &format!("{bias}_scale"), &Tensor::from_vec(sshape, scales)?);
    let out = g.unique_name(&format!("{bias}_dequantized"));
    let name = g.unique_name(&format!("{bias}_DequantizeLinear"));
    let attrs = if per_channel { vec![int_attr("axis", 0)] } else { vec![] };
    new_nodes.push(make_node(
        "DequantizeLinear",
        name,
        vec![qname, sname],
        vec![out.clone()],
        attrs,
    ));
    Ok(Ok(Some(out)))
}
