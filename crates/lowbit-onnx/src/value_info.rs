//! Human-readable descriptions of a model's graph inputs and outputs, read from its protobuf:
//! name, element type name (lowbit's, or ONNX's for types lowbit cannot hold) and declared
//! shape with symbolic dimensions by name.

use crate::pb;
use crate::tensor_proto::onnx_type_name;
use lowbit_tensor::spec::{shape_text, Dim};
use lowbit_tensor::DType;
use serde::Serialize;

/// lowbit's name of an ONNX element type (`float32`, `int64`, …), ONNX's for types lowbit
/// cannot hold (`complex64`).
pub fn dtype_name(id: i32) -> &'static str {
    DType::from_onnx(id).map_or_else(|| onnx_type_name(id), DType::name)
}

/// One dimension as declared: a size, a symbolic name, or unknown (`null` in JSON).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum DimInfo {
    Fixed(i64),
    Named(String),
    Unknown,
}

impl DimInfo {
    /// As the engine reads it: a negative size is unknown.
    fn to_dim(&self) -> Dim {
        match self {
            DimInfo::Fixed(n) => usize::try_from(*n).map_or(Dim::Unknown, Dim::Fixed),
            DimInfo::Named(s) => Dim::Symbolic(s.clone()),
            DimInfo::Unknown => Dim::Unknown,
        }
    }
}

/// A graph input or output: name, element type and declared shape.
#[derive(Clone, Debug, Serialize)]
pub struct ValueInfo {
    pub name: String,
    /// Element type name (`float32`, `int64`, …), or the kind of a non-tensor value.
    pub dtype: String,
    /// `None` when no shape is declared.
    pub shape: Option<Vec<DimInfo>>,
}

impl ValueInfo {
    pub fn from_proto(vi: &pb::ValueInfoProto) -> ValueInfo {
        use pb::tensor_shape_proto::dimension::Value as DV;
        use pb::type_proto::Value as TV;
        let (dtype, shape) = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(TV::TensorType(t)) => (
                dtype_name(t.elem_type).to_string(),
                t.shape.as_ref().map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(DV::DimValue(v)) => DimInfo::Fixed(*v),
                            Some(DV::DimParam(p)) if !p.is_empty() => DimInfo::Named(p.clone()),
                            _ => DimInfo::Unknown,
                        })
                        .collect()
                }),
            ),
            Some(TV::SequenceType(_)) => ("sequence".into(), None),
            Some(TV::MapType(_)) => ("map".into(), None),
            Some(TV::OptionalType(_)) => ("optional".into(), None),
            Some(TV::SparseTensorType(t)) => (format!("sparse {}", dtype_name(t.elem_type)), None),
            Some(TV::OpaqueType(_)) => ("opaque".into(), None),
            None => ("(no type)".into(), None),
        };
        ValueInfo { name: vi.name.clone(), dtype, shape }
    }

    /// `[batch_size, 3, ?]`, or `(any shape)`.
    pub fn shape_text(&self) -> String {
        let dims: Option<Vec<Dim>> =
            self.shape.as_ref().map(|d| d.iter().map(DimInfo::to_dim).collect());
        shape_text(dims.as_deref())
    }
}

/// `logits (float32 [batch, 10]), 461 (float32 [batch, 384])`, for messages.
pub fn list_text(values: &[ValueInfo]) -> String {
    let v: Vec<String> =
        values.iter().map(|o| format!("{} ({} {})", o.name, o.dtype, o.shape_text())).collect();
    v.join(", ")
}

/// The inputs a caller must feed: graph inputs that are not also initializers.
pub fn fed_inputs(graph: &pb::GraphProto) -> Vec<ValueInfo> {
    let inits: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    graph
        .input
        .iter()
        .filter(|vi| !inits.contains(vi.name.as_str()))
        .map(ValueInfo::from_proto)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::tensor_shape_proto::{dimension::Value as DV, Dimension};

    #[test]
    fn symbolic_dims_keep_their_names() {
        let dim = |v| Dimension { denotation: String::new(), value: v };
        let vi = pb::ValueInfoProto {
            name: "input_ids".into(),
            r#type: Some(pb::TypeProto {
                denotation: String::new(),
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: 7,
                    shape: Some(pb::TensorShapeProto {
                        dim: vec![
                            dim(Some(DV::DimParam("batch".into()))),
                            dim(None),
                            dim(Some(DV::DimValue(3))),
                        ],
                    }),
                })),
            }),
            ..Default::default()
        };
        let info = ValueInfo::from_proto(&vi);
        assert_eq!(info.dtype, "int64");
        assert_eq!(info.shape_text(), "[batch, ?, 3]");
        assert_eq!(serde_json::to_string(&info.shape).unwrap(), r#"["batch",null,3]"#);
    }
}
