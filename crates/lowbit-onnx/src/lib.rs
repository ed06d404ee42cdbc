//! ONNX I/O
