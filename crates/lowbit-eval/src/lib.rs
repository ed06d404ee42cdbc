//! What quantization cost, measured: [`metrics`] (noise between a reference and a test tensor,
//! top-k accuracy, Spearman correlation), [`compare`] (per-layer quantization noise between an
//! FP32 model and its quantized version, accumulated and isolated, ranked with hints), [`report`]
//! (that comparison as one self-contained HTML file with inline SVG charts), [`validate`] (the
//! gate a quantized model must pass before lowbit writes it).

pub mod compare;
pub mod metrics;
pub mod report;
pub mod validate;
