//! SmoothQuant (Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training
//! Quantization for Large Language Models"): the input X of a MatMul/Gemm with a constant
//! weight W is divided per channel j (its last axis) by
//!
//! `s_j = max|X_j|^α / max|W_j|^(1−α)`
//!
//! and W's row j is multiplied by s_j, so `(X / s) · (diag(s) W) = X W`: the few outlier
//! channels that set a per-tensor activation range hand part of their range to the weights
//! (which are quantized per output channel). max|X_j| is measured on the calibration samples in
//! one streaming pass (memory: one float per channel); max|W_j| is taken over every weight that
//! reads X, since consumers of one input share one s.
//!
//! Where the division by s goes:
//!
//! | X is made by | and X feeds | the division becomes |
//! |---|---|---|
//! | `LayerNormalization` (last axis) | only smoothed consumers | gamma / s, beta / s |
//! | `Mul` / `Div` by a constant (GELU's `· 0.5`) | only smoothed consumers | the constant, per channel |
//! | `MatMul` / `Gemm` with a constant weight | only smoothed consumers | its weight columns (and Gemm's bias) / s |
//! | `Add` of a constant to one of the above | only smoothed consumers | the constant / s, and the above |
//! | anything else, or X feeds other nodes too (a residual `Add`) | | an inserted `Mul` by 1/s in front of the smoothed consumers; the others read X unchanged |
//!
//! The FP32 function is unchanged up to float rounding.

use super::{LayerChange, StepContext, StepReport};
use crate::calibrate::check_finite;
use crate::error::{QuantError, Result};
use crate::passes::{add_init, attr_i, const_f32, constant_values, init_f32, is_default_domain};
use crate::passes::{label, make_node};
use lowbit_engine::{Session, SessionOptions};
use lowbit_onnx::graph::Graph;
use lowbit_tensor::{DType, Tensor};
use std::collections::HashMap;

/// A MatMul/Gemm whose weight rows take the smoothing factors.
struct Consumer {
    node: usize,
    /// The weight's axis that runs over the input's channels (K).
    k_axis: usize,
}

/// One activation and the consumers that share its smoothing.
struct Group {
    input: String,
    channels: usize,
    consumers: Vec<Consumer>,
}

/// A constant input of a node replaced by a new value: (node, input slot, value).
type Edit = (usize, usize, Tensor);

/// Migrates activation outliers of MatMul/Gemm inputs into their weights with strength
/// `alpha`, measuring per-channel activation maxima on `ctx.samples`; the graph's function is
/// unchanged.
pub fn smooth_quant(g: &mut Graph, alpha: f32, ctx: &mut StepContext) -> Result<StepReport> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(QuantError::Config(format!(
            "SmoothQuant's alpha must be in [0, 1], got {alpha}"
        )));
    }
    let groups = smoothable_inputs(g);
    let observed = channel_maxima(g, &groups, ctx)?;
    let mut report = StepReport { step: "smooth-quant".into(), ..Default::default() };
    let (mut folded, mut inserted, mut layers) = (0usize, 0usize, 0usize);
    let mut ratios: Vec<(f64, f64)> = Vec::new();
    for (group, seen) in groups.iter().zip(observed) {
        let Some((x_max, rank)) = seen else { continue };
        let mut w_rows: Vec<Vec<f32>> = Vec::with_capacity(group.consumers.len());
        for c in &group.consumers {
            let w = &g.nodes()[c.node].input[1];
            let t = init_f32(g, w)?.ok_or_else(|| {
                QuantError::Config(format!(
                    "SmoothQuant: weight '{w}' is no longer a float32 initializer"
                ))
            })?;
            w_rows.push(row_maxima(&t, c.k_axis));
        }
        let w_max: Vec<f32> =
            (0..group.channels).map(|j| w_rows.iter().map(|r| r[j]).fold(0.0, f32::max)).collect();
        let s = smoothing_factors(&x_max, &w_max, alpha);
        let x_after: Vec<f32> = x_max.iter().zip(&s).map(|(x, s)| x / s).collect();
        let (before, after) = (max_over_median(&x_max), max_over_median(&x_after));
        ratios.push((before, after));
        for (c, rows) in group.consumers.iter().zip(&w_rows) {
            let node = label(&g.nodes()[c.node], c.node);
            let rows_after: Vec<f32> = rows.iter().zip(&s).map(|(w, s)| w * s).collect();
            report.layers.push(LayerChange {
                node: node.clone(),
                metric: "input max/median channel max|x|".into(),
                before,
                after,
            });
            report.layers.push(LayerChange {
                node,
                metric: "weight max/median input-row max|w|".into(),
                before: max_over_median(rows),
                after: max_over_median(&rows_after),
            });
        }
        scale_weight_rows(g, group, &s)?;
        let inv: Vec<f32> = s.iter().map(|s| 1.0 / s).collect();
        match fold_plan(g, group, &inv, rank)? {
            Some(edits) => {
                apply(g, edits);
                folded += 1;
            }
            None => {
                insert_mul(g, group, inv)?;
                inserted += 1;
            }
        }
        layers += group.consumers.len();
    }
    g.topo_sort()?;
    let mut b: Vec<f64> = ratios.iter().map(|r| r.0).collect();
    let mut a: Vec<f64> = ratios.iter().map(|r| r.1).collect();
    report.summary = format!(
        "alpha {alpha}: smoothed {layers} MatMul/Gemm on {} inputs ({folded} scales folded into \
         the producer, {inserted} by an inserted Mul); input max/median channel ratio, median \
         over inputs, {:.1} -> {:.1}",
        ratios.len(),
        median(&mut b),
        median(&mut a)
    );
    Ok(report)
}

/// The factors `s_j = x_j^α / w_j^(1−α)`; 1 where a channel is all zero in X or W (no
/// information, and dividing by 0 would not be undone).
pub fn smoothing_factors(x_max: &[f32], w_max: &[f32], alpha: f32) -> Vec<f32> {
    x_max
        .iter()
        .zip(w_max)
        .map(|(&x, &w)| {
            if !(x > 0.0 && w > 0.0) {
                return 1.0;
            }
            let s = (x as f64).powf(alpha as f64) / (w as f64).powf(1.0 - alpha as f64);
            let s = s as f32;
            if s.is_normal() {
                s
            } else {
                1.0
            }
        })
        .collect()
}

/// Inputs of MatMul/Gemm nodes with a float32 weight initializer, grouped by input.
fn smoothable_inputs(g: &Graph) -> Vec<Group> {
    let consts = constant_values(g);
    let mut groups: Vec<Group> = Vec::new();
    let mut at: HashMap<&str, usize> = HashMap::new();
    for (idx, n) in g.nodes().iter().enumerate() {
        let op = n.op_type.as_str();
        if !is_default_domain(n) || !matches!(op, "MatMul" | "Gemm") || n.input.len() < 2 {
            continue;
        }
        let (x, w) = (n.input[0].as_str(), n.input[1].as_str());
        let Some(wp) = g.initializer(w) else { continue };
        if x.is_empty() || consts.contains(x) || DType::from_onnx(wp.data_type) != Some(DType::F32)
        {
            continue;
        }
        let rank = wp.dims.len();
        let k_axis = match op {
            "MatMul" if rank >= 2 => rank - 2,
            // transA would put X's channels on its first axis.
            "Gemm" if rank == 2 && attr_i(n, "transA").unwrap_or(0) == 0 => {
                usize::from(attr_i(n, "transB").unwrap_or(0) != 0)
            }
            _ => continue,
        };
        let channels = wp.dims[k_axis] as usize;
        let c = Consumer { node: idx, k_axis };
        match at.get(x) {
            Some(&i) if groups[i].channels == channels => groups[i].consumers.push(c),
            Some(_) => {}
            None => {
                at.insert(x, groups.len());
                groups.push(Group { input: x.to_string(), channels, consumers: vec![c] });
            }
        }
    }
    groups
}

/// One group's max|X_j| per channel and X's rank.
type Maxima = (Vec<f32>, usize);

/// Per group, max|X_j| over every sample and X's rank, from one pass over `ctx.samples`;
/// `None` for an input never produced as float32 with `channels` on its last axis.
fn channel_maxima(
    g: &Graph,
    groups: &[Group],
    ctx: &mut StepContext,
) -> Result<Vec<Option<Maxima>>> {
    let mut seen: Vec<Option<Maxima>> = vec![None; groups.len()];
    if groups.is_empty() {
        return Ok(seen);
    }
    let Some(samples) = ctx.samples.as_mut() else {
        return Err(QuantError::Config(
            "SmoothQuant measures activations on calibration samples: none were given".into(),
        ));
    };
    let session = Session::new(g.model(), &SessionOptions::unfused(ctx.threads))?;
    let index: HashMap<&str, usize> =
        groups.iter().enumerate().map(|(i, gr)| (gr.input.as_str(), i)).collect();
    let progress = ctx.progress;
    progress.start("smooth-quant", samples.batches().unwrap_or(0) as u64);
    let mut batch = 0u64;
    let pass = samples.replay(&mut |feeds| {
        let mut err: Option<QuantError> = None;
        session.run_observed(feeds, &mut |name, t| {
            let Some(&i) = index.get(name) else { return };
            if err.is_some() || t.dtype() != DType::F32 {
                return;
            }
            let k = groups[i].channels;
            if t.shape().last() != Some(&k) {
                return;
            }
            let v = t.as_f32().expect("checked float32");
            if let Err(e) = check_finite(v) {
                err = Some(e.in_tensor(name, batch));
                return;
            }
            let (m, rank) = seen[i].get_or_insert_with(|| (vec![0.0; k], t.rank()));
            *rank = t.rank();
            for row in v.chunks_exact(k) {
                for (a, &x) in m.iter_mut().zip(row) {
                    *a = a.max(x.abs());
                }
            }
        })?;
        batch += 1;
        progress.advance(1, None);
        err.map_or(Ok(()), Err)
    });
    progress.finish();
    pass?;
    Ok(seen)
}

/// max|w| over each index of axis `k_axis`.
fn row_maxima(w: &Tensor, k_axis: usize) -> Vec<f32> {
    let shape = w.shape();
    let k = shape[k_axis];
    let inner: usize = shape[k_axis + 1..].iter().product();
    let mut m = vec![0f32; k];
    for (i, &x) in w.as_f32().unwrap_or(&[]).iter().enumerate() {
        let j = (i / inner.max(1)) % k.max(1);
        m[j] = m[j].max(x.abs());
    }
    m
}

/// `t` with every element multiplied by `f[j]`, j its index along `axis`.
fn scale_along(t: &Tensor, axis: usize, f: &[f32]) -> Result<Tensor> {
    let shape = t.shape().to_vec();
    let inner: usize = shape[axis + 1..].iter().product();
    let n = shape[axis];
    let v: Vec<f32> =
        t.as_f32()?.iter().enumerate().map(|(i, &x)| x * f[(i / inner.max(1)) % n]).collect();
    Ok(Tensor::from_vec(shape, v)?)
}

/// Multiplies the rows of every consumer's weight by `s` (a new initializer per weight, read
/// by this group's consumers only: the original may be shared with other nodes).
fn scale_weight_rows(g: &mut Graph, group: &Group, s: &[f32]) -> Result<()> {
    let mut done: HashMap<String, String> = HashMap::new();
    for c in &group.consumers {
        let w = g.nodes()[c.node].input[1].clone();
        let name = match done.get(&w) {
            Some(n) => n.clone(),
            None => {
                let t = init_f32(g, &w)?.expect("checked when grouping");
                let n = add_init(g, &format!("{w}_smoothed"), &scale_along(&t, c.k_axis, s)?);
                done.insert(w, n.clone());
                n
            }
        };
        g.node_mut(c.node).expect("consumer index").input[1] = name;
    }
    Ok(())
}

/// A constant `c` that broadcasts along X's last axis only (a scalar, or `[.., 1, K]`),
/// as `[K]`-per-channel values times `f` (keeping `c`'s shape when it already is per channel).
fn per_channel_times(c: &Tensor, f: &[f32]) -> Result<Option<Tensor>> {
    let k = f.len();
    let v = c.as_f32()?;
    let shape = c.shape();
    let per_channel = shape.last() == Some(&k) && v.len() == k;
    if v.len() != 1 && !per_channel {
        return Ok(None);
    }
    let out: Vec<f32> = (0..k).map(|j| v[if v.len() == 1 { 0 } else { j }] * f[j]).collect();
    let shape = if per_channel { shape.to_vec() } else { vec![k] };
    Ok(Some(Tensor::from_vec(shape, out)?))
}

/// The edits that divide `x` by `s` (`inv` = 1/s, per channel of its last axis) inside its
/// producer, when every reader of `x` is one of `readers` and the producer can take it (see
/// the module table); `None` otherwise.
fn fold_plan(g: &Graph, group: &Group, inv: &[f32], rank: usize) -> Result<Option<Vec<Edit>>> {
    let readers: Vec<usize> = group.consumers.iter().map(|c| c.node).collect();
    producer_edits(g, &group.input, &readers, inv, rank)
}

fn producer_edits(
    g: &Graph,
    x: &str,
    readers: &[usize],
    inv: &[f32],
    rank: usize,
) -> Result<Option<Vec<Edit>>> {
    if g.is_graph_output(x) || g.consumers(x).iter().any(|c| !readers.contains(c)) {
        return Ok(None);
    }
    let Some(p) = g.producer(x) else { return Ok(None) };
    let n = &g.nodes()[p];
    if !is_default_domain(n) || n.output.first().map(String::as_str) != Some(x) {
        return Ok(None);
    }
    let consts = constant_values(g);
    // The one constant input of a binary op, and the other (activation) input.
    let binary = || -> Option<(usize, &str)> {
        if n.input.len() != 2 {
            return None;
        }
        match (consts.contains(&n.input[0]), consts.contains(&n.input[1])) {
            (false, true) => Some((1, n.input[0].as_str())),
            (true, false) => Some((0, n.input[1].as_str())),
            _ => None,
        }
    };
    let k = inv.len();
    let mut edits: Vec<Edit> = Vec::new();
    match n.op_type.as_str() {
        "LayerNormalization" => {
            let axis = attr_i(n, "axis").unwrap_or(-1);
            if axis != -1 && axis != rank as i64 - 1 {
                return Ok(None);
            }
            for slot in [1, 2] {
                let Some(name) = n.input.get(slot).filter(|s| !s.is_empty()) else { continue };
                let Some(c) = const_f32(g, name)? else { return Ok(None) };
                if c.shape() != [k] {
                    return Ok(None);
                }
                edits.push((p, slot, scale_along(&c, 0, inv)?));
            }
        }
        "Mul" | "Div" => {
            let Some((slot, _)) = binary() else { return Ok(None) };
            if n.op_type == "Div" && slot != 1 {
                return Ok(None);
            }
            let Some(c) = const_f32(g, &n.input[slot])? else { return Ok(None) };
            let f: Vec<f32> = if n.op_type == "Div" {
                inv.iter().map(|v| 1.0 / v).collect()
            } else {
                inv.to_vec()
            };
            let Some(t) = per_channel_times(&c, &f)? else { return Ok(None) };
            edits.push((p, slot, t));
        }
        "Add" => {
            let Some((slot, y)) = binary() else { return Ok(None) };
            let Some(c) = const_f32(g, &n.input[slot])? else { return Ok(None) };
            let Some(t) = per_channel_times(&c, inv)? else { return Ok(None) };
            let Some(inner) = producer_edits(g, y, &[p], inv, rank)? else { return Ok(None) };
            edits.push((p, slot, t));
            edits.extend(inner);
        }
        "MatMul" | "Gemm" => {
            if n.input.len() < 2 || consts.contains(&n.input[0]) {
                return Ok(None);
            }
            let Some(w) = init_f32(g, &n.input[1])? else { return Ok(None) };
            let r = w.rank();
            let n_axis = match n.op_type.as_str() {
                "MatMul" if r >= 2 => r - 1,
                "Gemm" if r == 2 => usize::from(attr_i(n, "transB").unwrap_or(0) == 0),
                _ => return Ok(None),
            };
            if w.shape()[n_axis] != k {
                return Ok(None);
            }
            edits.push((p, 1, scale_along(&w, n_axis, inv)?));
            if let Some(b) = n.input.get(2).filter(|s| !s.is_empty()) {
                let Some(c) = const_f32(g, b)? else { return Ok(None) };
                let Some(t) = per_channel_times(&c, inv)? else { return Ok(None) };
                edits.push((p, 2, t));
            }
        }
        _ => return Ok(None),
    }
    Ok(Some(edits))
}

/// Writes each edit as a new initializer read by its node only.
fn apply(g: &mut Graph, edits: Vec<Edit>) {
    for (node, slot, t) in edits {
        let old = g.nodes()[node].input[slot].clone();
        let name = add_init(g, &format!("{old}_smoothed"), &t);
        g.node_mut(node).expect("producer index").input[slot] = name;
    }
}

/// `X · (1/s)` as a new `Mul`, read by the group's consumers in place of X.
fn insert_mul(g: &mut Graph, group: &Group, inv: Vec<f32>) -> Result<()> {
    let x = group.input.clone();
    let scale = add_init(g, &format!("{x}_smooth_scale"), &Tensor::from_vec(vec![inv.len()], inv)?);
    let out = g.unique_name(&format!("{x}_smoothed"));
    let name = g.unique_name(&format!("{x}_SmoothQuant"));
    g.push_node(make_node("Mul", name, vec![x.clone(), scale], vec![out.clone()], vec![]));
    for c in &group.consumers {
        g.replace_input(c.node, &x, &out)?;
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The largest channel maximum over the median one: how far outliers stretch a per-tensor
/// range (1: every channel alike).
fn max_over_median(m: &[f32]) -> f64 {
    let mut v: Vec<f64> = m.iter().map(|&x| x as f64).collect();
    let max = v.iter().copied().fold(0.0, f64::max);
    let med = median(&mut v);
    if med > 0.0 {
        max / med
    } else {
        f64::INFINITY
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::{Feeds, NoProgress};
    use lowbit_onnx::pb::{self, ModelProto, NodeProto};
    use lowbit_onnx::tensor_to_proto;

    fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<pb::AttributeProto>) -> NodeProto {
        let ins = inputs.iter().map(|s| s.to_string()).collect();
        make_node(op, format!("{op}_{output}"), ins, vec![output.into()], attrs)
    }

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn init(name: &str, shape: &[usize], v: Vec<f32>) -> pb::TensorProto {
        tensor_to_proto(name, &Tensor::from_vec(shape.to_vec(), v).unwrap())
    }

    /// Every producer the pass knows, on 8 channels:
    /// `ln = LayerNorm(x)` → MatMul `a`, MatMul `c` (fold into gamma/beta);
    /// `h = (a + b1) · 0.5` (a Constant) → MatMul `o1` (fold into the 0.5);
    /// `d = b2 + c` → Gemm `o2` (transB; fold into b2 and c's weight columns);
    /// `e = Relu(x)` → MatMul `o3`, and the residual `o4 = e + x` (an inserted Mul).
    fn model() -> ModelProto {
        let mut gamma = vec![1.0f32; 8];
        gamma[3] = 20.0;
        gamma[6] = -8.0;
        let half = pb::AttributeProto {
            name: "value".into(),
            r#type: pb::attribute_proto::AttributeType::Tensor as i32,
            t: Some(tensor_to_proto("", &Tensor::scalar(0.5f32))),
            ..Default::default()
        };
        let trans_b = crate::passes::int_attr("transB", 1);
        let nodes = vec![
            node("LayerNormalization", &["x", "gamma", "beta"], "ln", vec![]),
            node("MatMul", &["ln", "w1"], "a", vec![]),
            node("Add", &["a", "b1"], "ab", vec![]),
            node("Constant", &[], "half", vec![half]),
            node("Mul", &["ab", "half"], "h", vec![]),
            node("MatMul", &["h", "w3"], "o1", vec![]),
            node("MatMul", &["ln", "w2"], "c", vec![]),
            node("Add", &["b2", "c"], "d", vec![]),
            node("Gemm", &["d", "w4", "bias4"], "o2", vec![trans_b]),
            node("Relu", &["x"], "e", vec![]),
            node("MatMul", &["e", "w5"], "o3", vec![]),
            node("Add", &["e", "x"], "o4", vec![]),
        ];
        let inits = vec![
            init("gamma", &[8], gamma),
            init("beta", &[8], values(8, 1)),
            init("w1", &[8, 8], values(64, 2)),
            init("b1", &[8], values(8, 3)),
            init("w3", &[8, 4], values(32, 4)),
            init("w2", &[8, 8], values(64, 5)),
            init("b2", &[8], values(8, 6)),
            init("w4", &[5, 8], values(40, 7)),
            init("bias4", &[5], values(5, 8)),
            init("w5", &[8, 3], values(24, 9)),
        ];
        let vi = |name: &str| pb::ValueInfoProto { name: name.into(), ..Default::default() };
        ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
            graph: Some(pb::GraphProto {
                node: nodes,
                initializer: inits,
                input: vec![vi("x")],
                output: ["o1", "o2", "o3", "o4"].iter().map(|o| vi(o)).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Three batches of 4 rows; channel 1 ten times the others.
    fn samples() -> Vec<Feeds> {
        (0..3)
            .map(|b| {
                let mut v = values(32, 100 + b);
                for r in 0..4 {
                    v[r * 8 + 1] *= 10.0;
                }
                vec![("x".to_string(), Tensor::from_vec(vec![4, 8], v).unwrap())]
            })
            .collect()
    }

    fn run(m: &ModelProto, samples: &[Feeds]) -> Vec<Vec<f32>> {
        let s = Session::new(m, &SessionOptions::unfused(1)).unwrap();
        samples
            .iter()
            .flat_map(|f| s.run(f.clone()).unwrap())
            .map(|(_, t)| t.to_f32_vec().unwrap())
            .collect()
    }

    fn smooth(m: &ModelProto, alpha: f32) -> (ModelProto, StepReport) {
        let mut g = Graph::new(m.clone()).unwrap();
        let mut data = samples();
        let mut ctx = StepContext { samples: Some(&mut data), threads: 1, progress: &NoProgress };
        let r = smooth_quant(&mut g, alpha, &mut ctx).unwrap();
        g.remove_unused_initializers();
        (g.into_model(), r)
    }

    #[test]
    fn factors_follow_the_paper_and_leave_empty_channels_alone() {
        let s = smoothing_factors(&[4.0, 1.0, 0.0, 2.0], &[1.0, 4.0, 1.0, 0.0], 0.5);
        assert_eq!(s, vec![2.0, 0.5, 1.0, 1.0]);
        // α = 1 moves the whole activation range: every channel's maximum becomes 1.
        assert_eq!(smoothing_factors(&[4.0, 0.25], &[3.0, 7.0], 1.0), vec![4.0, 0.25]);
    }

    #[test]
    fn the_fp32_function_is_preserved() {
        let m = model();
        let data = samples();
        let before = run(&m, &data);
        for alpha in [0.5, 0.85] {
            let (s, _) = smooth(&m, alpha);
            let after = run(&s, &data);
            for (b, a) in before.iter().zip(&after) {
                let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                let diff = b.iter().zip(a).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(diff <= 1e-4 * scale, "alpha {alpha}: max diff {diff} (max {scale})");
            }
        }
    }

    #[test]
    fn scales_fold_into_producers_and_a_mul_serves_a_shared_input() {
        let (s, r) = smooth(&model(), 0.5);
        assert!(r.summary.contains("on 4 inputs"), "{}", r.summary);
        assert!(r.summary.contains("3 scales folded"), "{}", r.summary);
        assert!(r.summary.contains("1 by an inserted Mul"), "{}", r.summary);
        let g = Graph::new(s).unwrap();
        let muls: Vec<&NodeProto> =
            g.nodes().iter().filter(|n| n.name.ends_with("_SmoothQuant")).collect();
        assert_eq!(muls.len(), 1);
        assert_eq!(muls[0].input[0], "e");
        // The smoothed MatMul reads the Mul; the residual Add still reads `e` itself.
        let reads = |out: &str| g.producer_node(out).unwrap().input.clone();
        assert_eq!(reads("o3")[0], muls[0].output[0]);
        assert_eq!(reads("o4"), vec!["e", "x"]);
        // Folded: LayerNorm's gamma and beta, the GELU-like constant, b2 and c's weight.
        assert_ne!(reads("ln")[1], "gamma");
        assert_ne!(reads("ln")[2], "beta");
        assert_ne!(reads("h")[1], "half");
        assert_ne!(reads("d")[0], "b2");
        for (out, w) in [("a", "w1"), ("c", "w2"), ("o1", "w3"), ("o2", "w4"), ("o3", "w5")] {
            assert!(reads(out)[1].starts_with(&format!("{w}_smoothed")), "{out}: {:?}", reads(out));
        }
        // Two entries (input and weight ratios) per smoothed MatMul/Gemm.
        assert_eq!(r.layers.len(), 2 * 5);
    }

    #[test]
    fn the_outlier_ratio_drops_and_alpha_one_flattens_it() {
        let (_, r) = smooth(&model(), 0.5);
        let ln = r.layers.iter().find(|l| l.node == "MatMul_a" && l.metric.starts_with("input"));
        let ln = ln.unwrap();
        assert!(ln.before > 5.0 && ln.after < ln.before / 2.0, "{ln:?}");
        let (_, r) = smooth(&model(), 1.0);
        for l in r.layers.iter().filter(|l| l.metric.starts_with("input")) {
            assert!((l.after - 1.0).abs() < 1e-6, "{l:?}");
        }
    }

    #[test]
    fn without_samples_it_says_what_it_needs() {
        let mut g = Graph::new(model()).unwrap();
        let mut ctx = StepContext { samples: None, threads: 1, progress: &NoProgress };
        let e = smooth_quant(&mut g, 0.5, &mut ctx).unwrap_err();
        assert!(e.to_string().contains("calibration samples"), "{e}");
        assert!(smooth_quant(&mut g, 1.5, &mut ctx).is_err());
    }

    #[test]
    fn static_quantization_smooths_before_it_calibrates() {
        use crate::config::{Algorithms, QuantPlan, QuantizeConfig};
        use crate::quantize::{quantize_run, QuantizeInputs};
        use crate::target::{Target, TargetChoice};
        let cfg = QuantizeConfig {
            target: TargetChoice::Named(Target::Lowbit),
            min_activation_sqnr: None,
            algorithms: Algorithms { smooth_quant: Some(0.5), ..Default::default() },
            ..Default::default()
        };
        let plan = QuantPlan::resolve(&cfg).unwrap();
        let mut data = samples();
        let inputs = QuantizeInputs {
            table: None,
            samples: Some(&mut data),
            threads: 1,
            progress: &NoProgress,
        };
        let (q, summary) = quantize_run(model(), &plan, inputs).unwrap();
        assert_eq!(summary.steps.len(), 1);
        assert_eq!(summary.steps[0].step, "smooth-quant");
        assert!(summary.calibrated.is_some(), "calibrated after smoothing");
        assert_eq!(summary.quantized.get("MatMul"), Some(&4), "{summary}");
        assert_eq!(summary.quantized.get("Gemm"), Some(&1), "{summary}");
        assert_eq!(run(&q, &samples()).len(), 12);
    }
}
