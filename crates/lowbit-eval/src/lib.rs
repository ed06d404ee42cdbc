//! What quantization cost, measured: [`metrics`] (noise between a reference and a test tensor,
//! top-k accuracy, Spearman correlation, medians), [`score`] (a model's output scored on a data
//! set: accuracy, sentence-pair Spearman, agreement with a reference), [`latency`] (timing
//! `Session::run` on spread samples), [`bench`] (what `lowbit bench` measures: latency
//! statistics, a per-op profile, ONNX Runtime on the same feeds), [`compare`] (per-layer quantization noise between an
//! FP32 model and its quantized version, accumulated and isolated, ranked with hints), [`report`]
//! (that comparison as one self-contained HTML file with inline SVG charts), [`summary`] (the
//! sizes, latency and accuracy at its top), [`tune`] (hybrid precision chosen per layer under an
//! accuracy budget, with the measured Pareto front) and [`validate`] (the gate a quantized model must
//! pass before lowbit writes it).

pub mod bench;
pub mod compare;
pub mod latency;
pub mod metrics;
pub mod monitor;
pub mod report;
pub mod score;
pub mod summary;
pub mod tune;
pub mod validate;
