//! Graph normalization before quantization: weights that other exporters store as `Constant`
//! nodes (paddle2onnx, older tf2onnx) or compute from constants (`Identity`, `Transpose`,
//! `Reshape`, `Cast`, ... of initializers) become initializers, so every pass that looks for "a
//! weight" finds one whatever the exporter wrote.
//!
//! Folding runs the engine's own kernels (one implementation of each op, the one the runtime
//! uses). `Identity` of a constant is resolved by renaming its readers, so a weight shared
//! through identities stays one initializer (quantized once). Graph input and output names are
//! kept: a node writing a graph output is never folded. A fold that would grow the file (a
//! `ConstantOfShape` or `Expand` of a small tensor into a big one) is not done. Only the main
//! graph is normalized; subgraphs of control-flow nodes are left as they are.

use std::collections::{HashMap, HashSet};

use lowbit_onnx::attr::Attrs;
use lowbit_onnx::graph::{node_reads, subgraphs};
use lowbit_onnx::pb::{ModelProto, NodeProto};
use lowbit_onnx::tensor_proto::{tensor_from_proto, tensor_to_proto};
use lowbit_tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::registry::{canonical_domain, Registry};
use crate::session::NOT_FOLDABLE;
use crate::{BuildCtx, EngineError};

/// What [`normalize`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Normalized {
    /// `Constant` nodes turned into initializers.
    pub constants: usize,
    /// Other nodes computed from constants, replaced by their result.
    pub folded: usize,
    /// `Identity` nodes of a constant removed (their readers read the constant).
    pub identities: usize,
}

impl Normalized {
    pub fn is_empty(&self) -> bool {
        self.constants + self.folded + self.identities == 0
    }
}

impl std::fmt::Display for Normalized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} Constant nodes and {} nodes computed from constants became initializers, {} \
             Identity nodes of constants removed",
            self.constants, self.folded, self.identities
        )
    }
}

/// A folded result may be this many elements even when its inputs are smaller.
const SMALL_RESULT: usize = 1 << 16;

/// Ops never folded: quantization ops (a QDQ weight stays as the exporter wrote it) and the
/// ones [`crate::Session`] does not fold either.
fn foldable(op: &str) -> bool {
    !NOT_FOLDABLE.contains(&op)
        && !matches!(op, "QuantizeLinear" | "DequantizeLinear" | "DynamicQuantizeLinear")
}

/// Normalizes `model`'s main graph in place (see the module docs). The nodes must be in
/// topological order. Errors name the node whose constant computation failed.
pub fn normalize(model: &mut ModelProto) -> Result<Normalized, EngineError> {
    let opsets: HashMap<String, i64> = model
        .opset_import
        .iter()
        .map(|o| (canonical_domain(&o.domain).to_string(), o.version))
        .collect();
    let Some(graph) = model.graph.as_mut() else {
        return Ok(Normalized::default());
    };
    let reg = Registry::with_all_ops();
    let outputs: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    // The model's own initializers, by name (their index), and their values decoded when a
    // fold first needs them.
    let initializers: HashMap<String, usize> =
        graph.initializer.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
    let mut values: HashMap<String, Tensor> = HashMap::new();
    let mut renamed: HashMap<String, String> = HashMap::new();
    let mut report = Normalized::default();
    let subgraph_reads: HashSet<String> =
        graph.node.iter().filter(|n| subgraphs(n).next().is_some()).flat_map(node_reads).collect();
    let mut kept: Vec<NodeProto> = Vec::with_capacity(graph.node.len());
    let mut new_inits = Vec::new();

    for (idx, mut node) in std::mem::take(&mut graph.node).into_iter().enumerate() {
        for i in node.input.iter_mut() {
            if let Some(r) = renamed.get(i) {
                *i = r.clone();
            }
        }
        let known = |name: &str| {
            name.is_empty() || initializers.contains_key(name) || values.contains_key(name)
        };
        let domain = canonical_domain(&node.domain);
        let eligible = domain.is_empty()
            && foldable(&node.op_type)
            && node.input.iter().all(|i| known(i))
            && !node.output.iter().any(|o| outputs.contains(o))
            && subgraphs(&node).next().is_none()
            && reg.supports(&node.domain, &node.op_type);
        if !eligible {
            kept.push(node);
            continue;
        }
        // Renaming reaches the main graph's readers only: with subgraphs about, an identity
        // is folded into its own initializer like any other node.
        if node.op_type == "Identity"
            && node.output.len() == 1
            && !subgraph_reads.contains(&node.output[0])
        {
            renamed.insert(node.output[0].clone(), node.input[0].clone());
            report.identities += 1;
            continue;
        }
        let undecoded: Vec<String> = node
            .input
            .iter()
            .filter(|n| !n.is_empty() && !values.contains_key(*n))
            .cloned()
            .collect();
        for name in undecoded {
            let proto = &graph.initializer[initializers[&name]];
            let t = tensor_from_proto(proto).map_err(|e| EngineError::Graph(e.to_string()))?;
            values.insert(name, t);
        }
        let label = crate::session::node_label(&node, idx);
        let node_err = |msg: String| EngineError::Node {
            node: label.clone(),
            op_type: node.op_type.clone(),
            msg,
        };
        let inputs: Vec<Option<&Tensor>> =
            node.input.iter().map(|n| (!n.is_empty()).then(|| &values[n])).collect();
        let ctx = BuildCtx {
            node: &node,
            attrs: Attrs::new(&node),
            opset: opsets.get(domain).copied().unwrap_or(1),
            constants: inputs.clone(),
            subgraphs: None,
        };
        let builder = reg.get(&node.domain, &node.op_type).expect("supported");
        let kernel = builder(&ctx).map_err(|e| node_err(e.0))?;
        let outs = kernel.run(&inputs).map_err(|e| node_err(e.0))?;
        let in_elems: usize = inputs.iter().flatten().map(|t| t.len()).sum();
        let out_elems: usize = outs.iter().map(|t| t.len()).sum();
        if node.op_type != "Constant" && out_elems > in_elems.max(SMALL_RESULT) {
            kept.push(node);
            continue;
        }
        for (name, t) in node.output.iter().zip(outs) {
            if !name.is_empty() {
                new_inits.push(tensor_to_proto(name, &t));
                values.insert(name.clone(), t);
            }
        }
        if node.op_type == "Constant" {
            report.constants += 1;
        } else {
            report.folded += 1;
        }
    }
    graph.node = kept;
    graph.initializer.extend(new_inits);
    // New initializers that nothing reads any more (a weight read only through a folded
    // Transpose) are dropped; subgraphs' outer-scope reads count as reads.
    let read: HashSet<String> = graph
        .node
        .iter()
        .flat_map(node_reads)
        .chain(graph.output.iter().map(|o| o.name.clone()))
        .collect();
    graph.initializer.retain(|t| read.contains(&t.name) || initializers.contains_key(&t.name));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Session, SessionOptions};
    use lowbit_onnx::build::Dim;
    use lowbit_onnx::build::{ints_attr, model, node, tensor_value_info};
    use lowbit_onnx::pb::{AttributeProto, GraphProto};
    use lowbit_tensor::DType;

    fn tensor_attr(name: &str, t: &Tensor) -> AttributeProto {
        lowbit_onnx::build::tensor_attr(name, tensor_to_proto("", t))
    }

    /// x[1,2] -> MatMul(x, Transpose(Identity(Constant W[3,2]))) -> y, and Add(y, Constant b),
    /// as an exporter writing weights as nodes would.
    fn constant_weight_model() -> ModelProto {
        let w = Tensor::from_vec(vec![3, 2], vec![1f32, 2., 3., 4., 5., 6.]).unwrap();
        let b = Tensor::from_vec(vec![3], vec![0.5f32, -1., 2.]).unwrap();
        let mut cw = node("Constant", "cw", &[], &["w"]);
        cw.attribute.push(tensor_attr("value", &w));
        let mut cb = node("Constant", "cb", &[], &["b"]);
        cb.attribute.push(tensor_attr("value", &b));
        let mut tr = node("Transpose", "tr", &["w_id"], &["wt"]);
        tr.attribute.push(ints_attr("perm", &[1, 0]));
        let graph = GraphProto {
            name: "g".into(),
            node: vec![
                cw,
                node("Identity", "id", &["w"], &["w_id"]),
                tr,
                cb,
                node("MatMul", "mm", &["x", "wt"], &["h"]),
                node("Add", "add", &["h", "b"], &["y"]),
            ],
            input: vec![tensor_value_info("x", DType::F32, &[Dim::Fixed(1), Dim::Fixed(2)])],
            output: vec![tensor_value_info("y", DType::F32, &[Dim::Fixed(1), Dim::Fixed(3)])],
            ..Default::default()
        };
        model(graph, 13)
    }

    fn run(m: &ModelProto) -> Vec<f32> {
        let s = Session::new(m, &SessionOptions::default()).unwrap();
        let x = Tensor::from_vec(vec![1, 2], vec![1f32, -2.]).unwrap();
        let out = s.run(vec![("x".into(), x)]).unwrap();
        out[0].1.as_f32().unwrap().to_vec()
    }

    #[test]
    fn constant_weights_become_initializers_and_the_outputs_stay() {
        let mut m = constant_weight_model();
        let before = run(&m);
        let r = normalize(&mut m).unwrap();
        assert_eq!(r, Normalized { constants: 2, folded: 1, identities: 1 });
        let g = m.graph.as_ref().unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["MatMul", "Add"]);
        let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        // The MatMul reads the transposed weight; the untransposed one is read by nothing.
        assert_eq!(inits, HashSet::from(["wt", "b"]));
        let wt = tensor_from_proto(g.initializer.iter().find(|t| t.name == "wt").unwrap()).unwrap();
        assert_eq!(wt.shape(), [2, 3]);
        assert_eq!(wt.as_f32().unwrap(), [1., 3., 5., 2., 4., 6.]);
        assert_eq!(run(&m), before);
        assert_eq!(before, [1. - 4. + 0.5, 3. - 8. - 1., 5. - 12. + 2.]);
    }

    #[test]
    fn graph_outputs_and_growing_folds_are_kept() {
        let shape = Tensor::from_vec(vec![2], vec![512i64, 512]).unwrap();
        let mut cs = node("Constant", "cs", &[], &["shape"]);
        cs.attribute.push(tensor_attr("value", &shape));
        let mut c1 = node("Constant", "c1", &[], &["one"]);
        c1.attribute.push(tensor_attr("value", &Tensor::scalar(1f32)));
        let graph = GraphProto {
            name: "g".into(),
            node: vec![
                cs,
                node("ConstantOfShape", "big", &["shape"], &["ones"]),
                c1,
                node("Identity", "out", &["one"], &["y"]),
                node("Add", "add", &["x", "ones"], &["z"]),
            ],
            input: vec![tensor_value_info("x", DType::F32, &[Dim::Fixed(512), Dim::Fixed(512)])],
            output: vec![
                tensor_value_info("y", DType::F32, &[]),
                tensor_value_info("z", DType::F32, &[Dim::Fixed(512), Dim::Fixed(512)]),
            ],
            ..Default::default()
        };
        let mut m = model(graph, 13);
        let r = normalize(&mut m).unwrap();
        assert_eq!(r, Normalized { constants: 2, folded: 0, identities: 0 });
        let ops: Vec<&str> =
            m.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["ConstantOfShape", "Identity", "Add"]);
        Session::new(&m, &SessionOptions::default()).unwrap();
    }

    #[test]
    fn constants_read_only_inside_a_subgraph_stay_available() {
        use lowbit_onnx::pb::attribute_proto::AttributeType;
        let mut c = node("Constant", "c", &[], &["k"]);
        c.attribute.push(tensor_attr("value", &Tensor::scalar(2f32)));
        let branch = |name: &str, op: &str| GraphProto {
            name: name.into(),
            node: vec![node(op, name, &["x", "k_id"], &[&format!("{name}_out")])],
            output: vec![tensor_value_info(&format!("{name}_out"), DType::F32, &[])],
            ..Default::default()
        };
        let mut iff = node("If", "if", &["cond"], &["y"]);
        for (attr, g) in
            [("then_branch", branch("then", "Mul")), ("else_branch", branch("else", "Add"))]
        {
            iff.attribute.push(AttributeProto {
                name: attr.into(),
                r#type: AttributeType::Graph as i32,
                g: Some(g),
                ..Default::default()
            });
        }
        let graph = GraphProto {
            name: "g".into(),
            node: vec![c, node("Identity", "id", &["k"], &["k_id"]), iff],
            input: vec![
                tensor_value_info("x", DType::F32, &[]),
                tensor_value_info("cond", DType::Bool, &[]),
            ],
            output: vec![tensor_value_info("y", DType::F32, &[])],
            ..Default::default()
        };
        let mut m = model(graph, 13);
        let r = normalize(&mut m).unwrap();
        // The identity read inside the branches is folded into an initializer, not renamed.
        assert_eq!(r, Normalized { constants: 1, folded: 1, identities: 0 });
        let g = m.graph.as_ref().unwrap();
        let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        assert!(inits.contains("k_id"), "{inits:?}");
        assert_eq!(g.node.len(), 1);
    }

    #[test]
    fn a_bad_constant_computation_names_its_node() {
        let mut m = constant_weight_model();
        let g = m.graph.as_mut().unwrap();
        g.node[2].attribute[0].ints = vec![0, 1, 2];
        let e = normalize(&mut m).unwrap_err().to_string();
        assert!(e.contains("tr") && e.contains("Transpose"), "{e}");
    }
}
