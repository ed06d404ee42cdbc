//! ONNX model files for lowbit: the protobuf messages ([`pb`]), loading and saving with external
//! data ([`io`]), and conversion between `TensorProto` and lowbit tensors ([`tensor_proto`]).

pub mod error;
pub mod graph;
pub mod infer;
pub mod io;
pub mod pb;
pub mod tensor_proto;
pub mod value_info;

pub use error::OnnxError;
pub use io::{load_model, load_model_bytes, save_model, save_model_with_external_data};
pub use tensor_proto::{dtype_from_onnx, tensor_from_proto, tensor_to_proto};
pub mod attr;
pub mod build;
