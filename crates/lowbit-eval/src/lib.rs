//! What quantization cost, measured: [`metrics`] (noise between a reference and a test tensor,
//! top-k accuracy, Spearman correlation), [`compare`] (per-layer quantization noise between an
//! FP32 model and its quantized version, accumulated and isolated, ranked with hints).

pub mod compare;
pub mod metrics;
