//! Building ONNX messages by hand (tests, the demo model, graph passes that add values): typed
//! value infos and nodes.
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
