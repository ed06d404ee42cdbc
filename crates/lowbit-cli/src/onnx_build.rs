//! Building the small ONNX graphs lowbit writes itself (the demo's classifier, the example
//! model): nodes, float32 value infos, an opset-17 model.

use lowbit_onnx::pb::{self, tensor_shape_proto};
use lowbit_tensor::DType;

/// A float32 value info; each dim is a size (`Ok`) or a symbolic name (`Err`).
pub fn value_info(name: &str, dims: &[Result<i64, &str>]) -> pb::ValueInfoProto {
    use tensor_shape_proto::{dimension::Value, Dimension};
    let dim = |d: &Result<i64, &str>| Dimension {
        denotation: String::new(),
        value: Some(match d {
            Ok(n) => Value::DimValue(*n),
            Err(s) => Value::DimParam(s.to_string()),
        }),
    };
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: DType::F32.onnx_id(),
                shape: Some(pb::TensorShapeProto { dim: dims.iter().map(dim).collect() }),
            })),
        }),
        ..Default::default()
    }
}

/// A node of the default domain with one output.
pub fn node(op: &str, name: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

/// An integer attribute.
pub fn int_attr(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

/// A model lowbit writes itself: IR 8, default-domain opset 17.
pub fn opset17_model(graph: pb::GraphProto) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        producer_name: "lowbit".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        ..Default::default()
    }
}
