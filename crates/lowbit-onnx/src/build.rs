//! Building ONNX messages by hand (tests, the demo model, graph passes that add values): typed
//! value infos, nodes and attributes.
//!
//! ```
//! use lowbit_onnx::build::{tensor_value_info, Dim};
//! use lowbit_tensor::DType;
//! let v = tensor_value_info("x", DType::F32, &[Dim::Named("N"), Dim::Fixed(4)]);
//! assert_eq!(v.name, "x");
//! ```

use crate::pb::{self, tensor_shape_proto::dimension::Value, tensor_shape_proto::Dimension};
use lowbit_tensor::DType;

/// One dimension of a declared shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim<'a> {
    Fixed(i64),
    /// A symbolic dimension (`dim_param`).
    Named(&'a str),
}

/// A tensor value of `dtype` and shape `dims`.
pub fn tensor_value_info(name: &str, dtype: DType, dims: &[Dim]) -> pb::ValueInfoProto {
    let dim = |d: &Dim| Dimension {
        denotation: String::new(),
        value: Some(match *d {
            Dim::Fixed(n) => Value::DimValue(n),
            Dim::Named(s) => Value::DimParam(s.to_string()),
        }),
    };
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: dtype.onnx_id(),
                shape: Some(pb::TensorShapeProto { dim: dims.iter().map(dim).collect() }),
            })),
        }),
        ..Default::default()
    }
}

/// A tensor value of `dtype` whose shape is not declared.
pub fn unshaped_value_info(name: &str, dtype: DType) -> pb::ValueInfoProto {
    let mut v = tensor_value_info(name, dtype, &[]);
    if let Some(pb::type_proto::Value::TensorType(t)) =
        v.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape = None;
    }
    v
}

/// A default-domain node.
pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A model of `graph` importing the default domain at `opset` (IR version to match).
pub fn model(graph: pb::GraphProto, opset: i64) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: if opset >= 21 { 10 } else { 8 },
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: opset }],
        graph: Some(graph),
        ..Default::default()
    }
}

/// An attribute `name` of type `ty`, its value left for the caller to set.
fn attr(name: &str, ty: pb::attribute_proto::AttributeType) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: ty as i32, ..Default::default() }
}

/// An `INT` attribute.
pub fn int_attr(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto { i: v, ..attr(name, pb::attribute_proto::AttributeType::Int) }
}

/// An `INTS` attribute.
pub fn ints_attr(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto { ints: v.to_vec(), ..attr(name, pb::attribute_proto::AttributeType::Ints) }
}

/// A `FLOAT` attribute.
pub fn float_attr(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto { f: v, ..attr(name, pb::attribute_proto::AttributeType::Float) }
}

/// A `STRING` attribute (UTF-8 bytes).
pub fn string_attr(name: &str, v: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        s: v.as_bytes().to_vec(),
        ..attr(name, pb::attribute_proto::AttributeType::String)
    }
}

/// A `TENSOR` attribute.
pub fn tensor_attr(name: &str, t: pb::TensorProto) -> pb::AttributeProto {
    pb::AttributeProto { t: Some(t), ..attr(name, pb::attribute_proto::AttributeType::Tensor) }
}

/// A `GRAPH` attribute (a control-flow body).
pub fn graph_attr(name: &str, g: pb::GraphProto) -> pb::AttributeProto {
    pb::AttributeProto { g: Some(g), ..attr(name, pb::attribute_proto::AttributeType::Graph) }
}
