//! One model's graph indexed for matching: topological positions, producers and consumers,
//! constant values, and the node standing for a node of the other model.

use super::error::{CompareError, Result};
use lowbit_onnx::attr::Attrs;
use lowbit_onnx::pb::{GraphProto, ModelProto, NodeProto, TensorProto};
use lowbit_onnx::tensor_proto::tensor_from_proto;
use lowbit_tensor::Tensor;
use std::collections::{HashMap, HashSet};

pub(super) fn is_default_domain(n: &NodeProto) -> bool {
    n.domain.is_empty() || n.domain == "ai.onnx"
}

/// A node's name, or `Op#index` for an unnamed one.
pub(super) fn label(n: &NodeProto, idx: usize) -> String {
    if n.name.is_empty() {
        format!("{}#{idx}", n.op_type)
    } else {
        n.name.clone()
    }
}

/// One model's graph with the indices the matching needs.
pub(super) struct View<'a> {
    pub(super) what: &'static str,
    pub(super) graph: &'a GraphProto,
    /// Node indices in topological order.
    pub(super) order: Vec<usize>,
    /// Topological position of each node index.
    pub(super) position: Vec<usize>,
    pub(super) producer: HashMap<&'a str, usize>,
    pub(super) consumers: HashMap<&'a str, Vec<usize>>,
    /// Named nodes by (name, op type).
    by_name: HashMap<(&'a str, &'a str), usize>,
    pub(super) inputs: HashSet<&'a str>,
    inits: HashMap<&'a str, &'a TensorProto>,
    /// Default-domain opset.
    pub(super) opset: i64,
}

impl<'a> View<'a> {
    pub(super) fn new(model: &'a ModelProto, what: &'static str) -> Result<View<'a>> {
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

    pub(super) fn node(&self, i: usize) -> &'a NodeProto {
        &self.graph.node[i]
    }

    /// A value computed at run time (graph input or node output, not a constant).
    pub(super) fn is_runtime_value(&self, name: &str) -> bool {
        self.inputs.contains(name)
            || self.producer.get(name).is_some_and(|&p| self.node(p).op_type != "Constant")
    }

    pub(super) fn is_constant(&self, name: &str) -> bool {
        self.inits.contains_key(name)
            || self.producer.get(name).is_some_and(|&p| self.node(p).op_type == "Constant")
    }

    /// The value of an initializer or `Constant` output; `Ok(None)` for anything else.
    pub(super) fn constant(&self, name: &str) -> std::result::Result<Option<Tensor>, String> {
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
    pub(super) fn matching_node(&self, other: &View, i: usize) -> Option<usize> {
        let n = other.node(i);
        if let Some(&j) = self.by_name.get(&(n.name.as_str(), n.op_type.as_str())) {
            return Some(j);
        }
        let k = other.op_position(i);
        self.order.iter().copied().filter(|&j| self.node(j).op_type == n.op_type).nth(k)
    }

    /// Nodes that quantize or compute on quantized values (QuantizeLinear, DequantizeLinear,
    /// DynamicQuantizeLinear, QLinear…, …Integer, MatMulNBits).
    pub(super) fn quantization_nodes(&self) -> usize {
        let quantizes = |op: &str| {
            matches!(
                op,
                "QuantizeLinear" | "DequantizeLinear" | "DynamicQuantizeLinear" | "MatMulNBits"
            ) || op.starts_with("QLinear")
                || op.ends_with("Integer")
        };
        self.graph.node.iter().filter(|n| quantizes(&n.op_type)).count()
    }

    /// `order` of [`ActivationNoise`](super::ActivationNoise): 0 for a graph input, 1 + the producer's position.
    pub(super) fn value_order(&self, name: &str) -> usize {
        self.producer.get(name).map_or(0, |&p| self.position[p] + 1)
    }
}
