//! Small ONNX graphs built by hand for the engine's integration tests: float input `x`,
//! initializers and nodes named in creation order.

// Each test binary uses part of this module.
#![allow(dead_code, unused_imports)]

pub use lowbit_onnx::build::{float_attr as float, int_attr as int, ints_attr as ints};
use lowbit_onnx::pb::{self, AttributeProto, ModelProto, NodeProto};
use lowbit_onnx::tensor_proto::tensor_to_proto;
use lowbit_tensor::Tensor;

/// A graph under construction.
pub struct Graph {
    pub nodes: Vec<NodeProto>,
    pub inits: Vec<pb::TensorProto>,
    n: usize,
}

impl Graph {
    pub fn new() -> Graph {
        Graph { nodes: Vec::new(), inits: Vec::new(), n: 0 }
    }

    /// A new value name: `p` and a counter.
    pub fn fresh(&mut self, p: &str) -> String {
        self.n += 1;
        format!("{p}{}", self.n)
    }

    /// An initializer holding `t`; returns its name.
    pub fn init(&mut self, t: Tensor) -> String {
        let name = self.fresh("c");
        self.inits.push(tensor_to_proto(&name, &t));
        name
    }

    /// A node of the default domain with one output; returns the output's name.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.op_in("", op, inputs, attrs)
    }

    /// A node of `domain` with one output; returns the output's name.
    pub fn op_in(
        &mut self,
        domain: &str,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.nodes.push(NodeProto {
            domain: domain.into(),
            attribute: attrs,
            ..lowbit_onnx::build::node(op, &out, inputs, &[&out])
        });
        out
    }

    /// The model: input `x` (float, of shape `x_shape` when given), float `outputs`, the
    /// opset of each domain in `opsets`.
    pub fn build(
        self,
        x_shape: Option<&[usize]>,
        outputs: &[&str],
        ir_version: i64,
        opsets: &[(&str, i64)],
    ) -> ModelProto {
        ModelProto {
            ir_version,
            opset_import: opsets
                .iter()
                .map(|&(domain, version)| pb::OperatorSetIdProto { domain: domain.into(), version })
                .collect(),
            graph: Some(pb::GraphProto {
                node: self.nodes,
                initializer: self.inits,
                input: vec![float_value("x", x_shape)],
                output: outputs.iter().map(|o| float_value(o, None)).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// A float tensor value, with its dims when given.
pub fn float_value(name: &str, dims: Option<&[usize]>) -> pb::ValueInfoProto {
    use lowbit_onnx::build::{tensor_value_info, unshaped_value_info, Dim};
    match dims {
        Some(d) => {
            let d: Vec<Dim> = d.iter().map(|&v| Dim::Fixed(v as i64)).collect();
            tensor_value_info(name, lowbit_tensor::DType::F32, &d)
        }
        None => unshaped_value_info(name, lowbit_tensor::DType::F32),
    }
}
