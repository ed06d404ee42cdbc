//! The small graphs lowbit writes itself (the demo's classifier, the example model), on top of
//! `lowbit_onnx::build`: float32 values with a free batch axis, an opset-17 model naming lowbit
//! as its producer.

pub use lowbit_onnx::build::int_attr;
use lowbit_onnx::build::{self, Dim};
use lowbit_onnx::pb;
use lowbit_tensor::DType;

/// A float32 value of shape `[batch, n]`.
pub fn batch_value(name: &str, n: usize) -> pb::ValueInfoProto {
    build::tensor_value_info(name, DType::F32, &[Dim::Named("batch"), Dim::Fixed(n as i64)])
}

/// A node of the default domain with one output.
pub fn node(op: &str, name: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
    build::node(op, name, inputs, &[output])
}

/// A model lowbit writes itself: IR 8, default-domain opset 17.
pub fn opset17_model(graph: pb::GraphProto) -> pb::ModelProto {
    pb::ModelProto {
        producer_name: "lowbit".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        ..build::model(graph, 17)
    }
}
