//! Graph passes of the quantizer, each over a [`Graph`] (lossless ONNX IR):
//!
//! | pass | does |
//! |---|---|
//! | [`bn_fold`] | folds `BatchNormalization` into the `Conv`/`Gemm` before it (new initializers) |
//! | [`qdq`] | static PTQ: `QuantizeLinear`/`DequantizeLinear` pairs (QDQ format) |
//! | [`dynamic`] | dynamic PTQ: `DynamicQuantizeLinear` + `MatMulInteger` |
//! | [`weight_only`] | int8/int4 weights + `DequantizeLinear` before `MatMul`/`Gemm` |
//! | [`recurrent`] | `LSTM`/`GRU`/`RNN` weights and `com.microsoft.Attention`'s packed QKV weight + `DequantizeLinear` (dynamic and weight-only modes) |
//! | [`embeddings`] | int8 per-row `Gather` tables, dequantized after the gather (every integer mode) |
//! | [`fp16`] | float16 / bfloat16 conversion, optionally keeping float32 inputs/outputs |
//! | [`reuse`] | one QDQ model's quantized weights (a learned rounding) copied into another |
//!
//! `qdq`, `dynamic` and `weight_only` also rewrite control-flow bodies (`If`/`Loop`/`Scan`
//! subgraphs), through `subgraphs`.
//!
//! Shared here: node exclusion rules, attribute and initializer helpers, and the opset
//! upgrade ([`ensure_opset`]) the quantized formats need (13 for per-axis
//! `DequantizeLinear`, 21 for int4/int16 and blocked quantization).
//!
//! Every quantized value goes through [`crate::qparams`] and so through
//! [`lowbit_kernels::quantize`]: round half to even, saturation as ONNX defines it.

pub mod bn_fold;
pub mod dynamic;
pub mod embeddings;
pub mod fp16;
pub mod qdq;
pub mod recurrent;
pub mod reuse;
pub(crate) mod subgraphs;
pub mod weight_only;

use crate::config::QuantPlan;
use crate::error::{QuantError, Result};
use crate::quantize::QuantizeSummary;
pub(crate) use lowbit_onnx::build::{int_attr, tensor_attr};
use lowbit_onnx::graph::Graph;
use lowbit_onnx::pb::{AttributeProto, ModelProto, NodeProto};
use lowbit_onnx::tensor_proto::{raw_len, shape_from_proto};
use lowbit_onnx::{tensor_from_proto, tensor_to_proto};
use lowbit_tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// Nodes left as they are (manual hybrid precision): by exact node name, by op type, or by a
/// node-name pattern where `*` matches any run of characters and `?` one character.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exclusions {
    pub node_names: Vec<String>,
    pub op_types: Vec<String>,
    pub patterns: Vec<String>,
}

impl Exclusions {
    /// Exclusions as a person writes them (`--exclude`): `op:TYPE` for an op type, a name with
    /// `*` or `?` for a pattern, anything else a node name.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Exclusions {
        let mut e = Exclusions::default();
        for p in items.iter().map(AsRef::as_ref) {
            if let Some(op) = p.strip_prefix("op:") {
                e.op_types.push(op.to_string());
            } else if p.contains(['*', '?']) {
                e.patterns.push(p.to_string());
            } else {
                e.node_names.push(p.to_string());
            }
        }
        e
    }

    pub fn is_empty(&self) -> bool {
        self.node_names.is_empty() && self.op_types.is_empty() && self.patterns.is_empty()
    }

    /// The exclusions (names, `op:Type`, patterns as given) that match none of `nodes`.
    pub fn unmatched(&self, nodes: &[NodeProto]) -> Vec<String> {
        let names = self.node_names.iter().filter(|n| !nodes.iter().any(|x| &x.name == *n));
        let ops = self
            .op_types
            .iter()
            .filter(|o| !nodes.iter().any(|x| x.op_type.eq_ignore_ascii_case(o)));
        let pats = self.patterns.iter().filter(|p| !nodes.iter().any(|x| glob(p, &x.name)));
        names
            .map(|n| format!("'{n}'"))
            .chain(ops.map(|o| format!("'op:{o}'")))
            .chain(pats.map(|p| format!("'{p}'")))
            .collect()
    }

    /// Why `node` is excluded, or `None`.
    pub fn reason(&self, node: &NodeProto) -> Option<String> {
        if !node.name.is_empty() && self.node_names.contains(&node.name) {
            return Some("excluded by name".into());
        }
        if self.op_types.iter().any(|o| o.eq_ignore_ascii_case(&node.op_type)) {
            return Some(format!("op type {} excluded", node.op_type));
        }
        self.patterns
            .iter()
            .find(|p| glob(p, &node.name))
            .map(|p| format!("name matches excluded pattern '{p}'"))
    }
}

/// `*` / `?` wildcard match of the whole `text`.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// The first and last weighted layers of `g` (topologically sorted), by index: each
/// `Conv`/`MatMul`/`Gemm` with an initializer weight that a graph input reaches, or that reaches
/// a graph output, without passing another one (a CNN's stem and classifier).
pub fn end_layers(g: &Graph) -> Vec<usize> {
    let weighted = |n: &NodeProto| {
        is_default_domain(n)
            && matches!(n.op_type.as_str(), "Conv" | "MatMul" | "Gemm")
            && n.input.get(1).is_some_and(|w| g.is_initializer(w))
    };
    let mut ends = Vec::new();
    let mut reached: HashSet<&str> = g.runtime_inputs().iter().map(|v| v.name.as_str()).collect();
    for (i, n) in g.nodes().iter().enumerate() {
        if n.input.iter().any(|x| reached.contains(x.as_str())) {
            if weighted(n) {
                ends.push(i);
            } else {
                reached.extend(n.output.iter().map(String::as_str));
            }
        }
    }
    let mut needed: HashSet<&str> = g.proto().output.iter().map(|v| v.name.as_str()).collect();
    for (i, n) in g.nodes().iter().enumerate().rev() {
        if n.output.iter().any(|y| needed.contains(y.as_str())) {
            if weighted(n) {
                ends.push(i);
            } else {
                needed.extend(n.input.iter().map(String::as_str));
            }
        }
    }
    ends.sort_unstable();
    ends.dedup();
    ends
}

/// `'name'` or `Op#index`, for messages and summaries.
pub(crate) fn label(node: &NodeProto, index: usize) -> String {
    if node.name.is_empty() {
        format!("{}#{index}", node.op_type)
    } else {
        node.name.clone()
    }
}

pub(crate) fn is_default_domain(node: &NodeProto) -> bool {
    node.domain.is_empty() || node.domain == "ai.onnx"
}

pub(crate) fn node_err(node: &NodeProto, index: usize, msg: impl Into<String>) -> QuantError {
    QuantError::Node { node: label(node, index), op_type: node.op_type.clone(), msg: msg.into() }
}

pub(crate) fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

pub(crate) fn attr_i(node: &NodeProto, name: &str) -> Option<i64> {
    attr(node, name).map(|a| a.i)
}

pub(crate) fn attr_f(node: &NodeProto, name: &str) -> Option<f32> {
    attr(node, name).map(|a| a.f)
}

/// Sets (or adds) attribute `a` on `node`.
pub(crate) fn set_attr(node: &mut NodeProto, a: AttributeProto) {
    match node.attribute.iter_mut().find(|x| x.name == a.name) {
        Some(slot) => *slot = a,
        None => node.attribute.push(a),
    }
}

pub(crate) fn remove_attr(node: &mut NodeProto, name: &str) -> Option<AttributeProto> {
    let pos = node.attribute.iter().position(|a| a.name == name)?;
    Some(node.attribute.remove(pos))
}

/// A new default-domain node.
pub(crate) fn make_node(
    op: &str,
    name: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name,
        input: inputs,
        output: outputs,
        attribute: attrs,
        ..Default::default()
    }
}

/// The initializer `name` decoded, or `None` when `name` is not an initializer.
pub(crate) fn init_tensor(g: &Graph, name: &str) -> Result<Option<Tensor>> {
    match g.initializer(name) {
        None => Ok(None),
        Some(p) => Ok(Some(tensor_from_proto(p)?)),
    }
}

/// The initializer `name` as f32 values with its shape (`None` if not a float initializer).
pub(crate) fn init_f32(g: &Graph, name: &str) -> Result<Option<Tensor>> {
    Ok(match init_tensor(g, name)? {
        Some(t) if t.dtype() == DType::F32 => Some(t),
        _ => None,
    })
}

/// The float32 value of `name` when it is known at load time: an initializer, or the output
/// of a `Constant` node (`value` or `value_float`).
pub(crate) fn const_f32(g: &Graph, name: &str) -> Result<Option<Tensor>> {
    if g.is_initializer(name) {
        return init_f32(g, name);
    }
    let Some(n) = g.producer_node(name).filter(|n| n.op_type == "Constant" && is_default_domain(n))
    else {
        return Ok(None);
    };
    let t = if let Some(t) = attr(n, "value").and_then(|a| a.t.as_ref()) {
        tensor_from_proto(t)?
    } else if let Some(a) = attr(n, "value_float") {
        Tensor::scalar(a.f)
    } else {
        return Ok(None);
    };
    Ok((t.dtype() == DType::F32).then_some(t))
}

/// Adds `t` as a new initializer named after `prefix` (made unique); returns the name.
pub(crate) fn add_init(g: &mut Graph, prefix: &str, t: &Tensor) -> String {
    let name = g.unique_name(prefix);
    g.add_initializer(tensor_to_proto(&name, t));
    name
}

/// Element type id of an initializer, without decoding it.
pub(crate) fn init_dtype(g: &Graph, name: &str) -> Option<DType> {
    g.initializer(name).and_then(|t| DType::from_onnx(t.data_type))
}

/// Names of values known at load time: initializers and `Constant` node outputs.
pub(crate) fn constant_values(g: &Graph) -> HashSet<String> {
    let mut s: HashSet<String> = g.proto().initializer.iter().map(|t| t.name.clone()).collect();
    for n in g.nodes() {
        if n.op_type == "Constant" && is_default_domain(n) {
            s.extend(n.output.iter().cloned());
        }
    }
    s
}

/// Bytes of all initializers' element data (4-bit types two per byte), control-flow bodies'
/// included.
pub fn initializer_bytes(model: &ModelProto) -> u64 {
    fn graph_bytes(g: &lowbit_onnx::pb::GraphProto) -> u64 {
        let own: u64 = g
            .initializer
            .iter()
            .map(|t| {
                let n = shape_from_proto(t).map(|(_, n)| n).unwrap_or(0);
                match DType::from_onnx(t.data_type).and_then(|d| raw_len(d, n)) {
                    Some(b) => b as u64,
                    None => t.raw_data.len() as u64,
                }
            })
            .sum();
        let inner: u64 =
            g.node.iter().flat_map(lowbit_onnx::graph::subgraphs).map(graph_bytes).sum();
        own + inner
    }
    model.graph.as_ref().map(graph_bytes).unwrap_or(0)
}

/// Element types of the model's values, as far as shape inference knows them (initializers
/// always).
pub(crate) fn value_dtypes(g: &Graph) -> HashMap<String, DType> {
    let mut out: HashMap<String, DType> = lowbit_onnx::infer::infer_shapes(g.model())
        .map(|m| m.into_iter().filter_map(|(k, v)| v.dtype.map(|d| (k, d))).collect())
        .unwrap_or_default();
    for t in &g.proto().initializer {
        if let Some(d) = DType::from_onnx(t.data_type) {
            out.insert(t.name.clone(), d);
        }
    }
    for v in g.proto().input.iter().chain(&g.proto().output).chain(&g.proto().value_info) {
        if let Some(d) = value_info_dtype(v) {
            out.entry(v.name.clone()).or_insert(d);
        }
    }
    out
}

pub(crate) fn value_info_dtype(v: &lowbit_onnx::pb::ValueInfoProto) -> Option<DType> {
    use lowbit_onnx::pb::type_proto::Value;
    match v.r#type.as_ref()?.value.as_ref()? {
        Value::TensorType(t) => DType::from_onnx(t.elem_type),
        _ => None,
    }
}

pub(crate) fn set_value_info_dtype(v: &mut lowbit_onnx::pb::ValueInfoProto, d: DType) {
    use lowbit_onnx::pb::type_proto::Value;
    if let Some(Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        t.elem_type = d.onnx_id();
    }
}

/// The smallest IR version that can carry a default-domain opset.
fn ir_for_opset(opset: i64) -> i64 {
    match opset {
        ..=9 => 5,
        10 => 5,
        11 => 6,
        12..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

/// [`ensure_opset`] to the plan's `min_opset`, noting the change in `summary`.
pub fn raise_opset(g: &mut Graph, plan: &QuantPlan, summary: &mut QuantizeSummary) -> Result<()> {
    if let Some((a, b)) = ensure_opset(g, plan.min_opset)? {
        summary.notes.push(format!("default-domain opset raised from {a} to {b}"));
    }
    Ok(())
}

/// Raises the default-domain opset to at least `min` (and the IR version with it), rewriting
/// the nodes whose signature changed on the way. Handled: `Squeeze`/`Unsqueeze`/`ReduceSum`/
/// `Split` (13: attribute → input), `Clip`/`Pad` (11: attributes → inputs), the other `Reduce*`
/// ops (18: `axes` → input), `Softmax`/`LogSoftmax`/`Hardmax` below 13 when the reduced axis is
/// the last one (same result), `Dropout` (12) and `BatchNormalization` (9) attribute clean-up.
/// Other ops whose signature changed (`Slice`/`TopK` < 10, `Upsample`, `GroupNormalization`
/// < 21, …) are an error naming the node. Subgraphs are not rewritten. Returns the old and new
/// versions when it changed anything.
pub fn ensure_opset(g: &mut Graph, min: i64) -> Result<Option<(i64, i64)>> {
    let old = g.opset_version("").unwrap_or(1);
    if old >= min {
        return Ok(None);
    }
    let ranks: HashMap<String, usize> = lowbit_onnx::infer::infer_shapes(g.model())
        .map(|m| m.into_iter().filter_map(|(k, v)| v.rank().map(|r| (k, r))).collect())
        .unwrap_or_default();
    let crosses = |v: i64| old < v && min >= v;
    let n = g.num_nodes();
    for i in 0..n {
        let node = g.nodes()[i].clone();
        if !is_default_domain(&node) {
            continue;
        }
        let mut node2 = node.clone();
        let mut new_inits: Vec<(usize, String, Tensor)> = Vec::new(); // (input slot, prefix, value)
        let op = node.op_type.as_str();
        remove_attr(&mut node2, "consumed_inputs");
        let axes_to_input = |node2: &mut NodeProto,
                             new_inits: &mut Vec<(usize, String, Tensor)>,
                             attr_name: &str,
                             slot: usize|
         -> Result<()> {
            if let Some(a) = remove_attr(node2, attr_name) {
                let t = Tensor::from_vec(vec![a.ints.len()], a.ints.clone())?;
                new_inits.push((slot, format!("{}_{attr_name}", label(&node, i)), t));
            }
            Ok(())
        };
        match op {
            "Squeeze" | "Unsqueeze" if crosses(13) => {
                axes_to_input(&mut node2, &mut new_inits, "axes", 1)?
            }
            "ReduceSum" if crosses(13) => axes_to_input(&mut node2, &mut new_inits, "axes", 1)?,
            "Split" if crosses(13) => axes_to_input(&mut node2, &mut new_inits, "split", 1)?,
            "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1" | "ReduceL2"
            | "ReduceLogSum" | "ReduceLogSumExp" | "ReduceSumSquare"
                if crosses(18) =>
            {
                axes_to_input(&mut node2, &mut new_inits, "axes", 1)?
            }
            "Clip" if crosses(11) => {
                let lo = remove_attr(&mut node2, "min").map(|a| a.f).unwrap_or(f32::MIN);
                let hi = remove_attr(&mut node2, "max").map(|a| a.f).unwrap_or(f32::MAX);
                new_inits.push((1, format!("{}_min", label(&node, i)), Tensor::scalar(lo)));
                new_inits.push((2, format!("{}_max", label(&node, i)), Tensor::scalar(hi)));
            }
            "Pad" if crosses(11) => {
                let pads = remove_attr(&mut node2, "pads").map(|a| a.ints).unwrap_or_default();
                let value = remove_attr(&mut node2, "value").map(|a| a.f).unwrap_or(0.0);
                let t = Tensor::from_vec(vec![pads.len()], pads)?;
                new_inits.push((1, format!("{}_pads", label(&node, i)), t));
                new_inits.push((2, format!("{}_value", label(&node, i)), Tensor::scalar(value)));
            }
            "Softmax" | "LogSoftmax" | "Hardmax" if crosses(13) => {
                let axis = attr_i(&node, "axis").unwrap_or(1);
                let rank = node.input.first().and_then(|x| ranks.get(x)).copied();
                let last = matches!(rank, Some(r) if axis == r as i64 - 1 || axis == -1);
                if !last {
                    return Err(node_err(
                        &node,
                        i,
                        format!("cannot raise the opset from {old} to {min}: {op} before opset 13 flattens the input at axis {axis}, which only equals the new meaning on the last axis (input rank {rank:?})"),
                    ));
                }
            }
            "Dropout" if crosses(12) => {
                remove_attr(&mut node2, "ratio");
                remove_attr(&mut node2, "is_test");
            }
            "BatchNormalization" if crosses(9) => {
                let spatial = remove_attr(&mut node2, "spatial").map(|a| a.i).unwrap_or(1);
                remove_attr(&mut node2, "is_test");
                if spatial != 1 {
                    return Err(node_err(&node, i, "spatial=0 BatchNormalization cannot be raised to opset 9+"));
                }
            }
            "Slice" | "TopK" if crosses(10) => {
                return Err(node_err(&node, i, format!("cannot raise the opset from {old} to {min}: {op} changed signature at opset 10")))
            }
            "Upsample" | "Scatter" if min >= 10 => {
                return Err(node_err(&node, i, format!("{op} does not exist at opset {min}")))
            }
            "GroupNormalization" if crosses(21) => {
                return Err(node_err(&node, i, format!("cannot raise the opset from {old} to {min}: GroupNormalization changed meaning at opset 21")))
            }
            "Resize" if crosses(11) => {
                return Err(node_err(&node, i, format!("cannot raise the opset from {old} to {min}: Resize changed signature at opset 11")))
            }
            _ => {}
        }
        for (slot, prefix, t) in new_inits {
            let name = add_init(g, &prefix, &t);
            while node2.input.len() < slot {
                node2.input.push(String::new());
            }
            if node2.input.len() == slot {
                node2.input.push(name);
            } else {
                node2.input[slot] = name;
            }
        }
        if node2 != node {
            *g.node_mut(i).expect("index in range") = node2;
        }
    }
    let m = g.model_mut();
    match m.opset_import.iter_mut().find(|o| o.domain.is_empty() || o.domain == "ai.onnx") {
        Some(o) => o.version = min,
        None => m
            .opset_import
            .push(lowbit_onnx::pb::OperatorSetIdProto { domain: String::new(), version: min }),
    }
    m.ir_version = m.ir_version.max(ir_for_opset(min));
    Ok(Some((old, min)))
}

/// Raises the IR version alone when the model stores types that need it (int4: IR 10).
pub(crate) fn ensure_ir(g: &mut Graph, ir: i64) {
    if g.model().ir_version < ir {
        g.model_mut().ir_version = ir;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_whole_names() {
        assert!(glob("/layer1/*", "/layer1/conv/Conv"));
        assert!(glob("*Conv", "/a/Conv"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "abbc"));
        assert!(!glob("/layer1/*", "/layer2/x"));
        assert!(glob("*", ""));
    }

    #[test]
    fn exclusions_say_why() {
        let e = Exclusions {
            node_names: vec!["n1".into()],
            op_types: vec!["gemm".into()],
            patterns: vec!["/fc*".into()],
        };
        let n = |name: &str, op: &str| NodeProto {
            name: name.into(),
            op_type: op.into(),
            ..Default::default()
        };
        assert!(e.reason(&n("n1", "Conv")).unwrap().contains("name"));
        assert!(e.reason(&n("x", "Gemm")).unwrap().contains("Gemm"));
        assert!(e.reason(&n("/fc1/MatMul", "MatMul")).unwrap().contains("/fc*"));
        assert!(e.reason(&n("x", "MatMul")).is_none());
    }

    #[test]
    fn exclusions_that_match_nothing_are_named() {
        let e = Exclusions {
            node_names: vec!["n1".into(), "ghost".into()],
            op_types: vec!["gemm".into(), "LSTM".into()],
            patterns: vec!["/fc*".into(), "/nowhere/*".into()],
        };
        let nodes = [
            NodeProto { name: "n1".into(), op_type: "Gemm".into(), ..Default::default() },
            NodeProto {
                name: "/fc1/MatMul".into(),
                op_type: "MatMul".into(),
                ..Default::default()
            },
        ];
        assert_eq!(e.unmatched(&nodes), vec!["'ghost'", "'op:LSTM'", "'/nowhere/*'"]);
    }
}
