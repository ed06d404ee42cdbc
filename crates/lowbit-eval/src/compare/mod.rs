//! Per-layer quantization noise between an FP32 model and its quantized (QDQ) version.
//!
//! The data model ([`CompareReport`] and its parts) is what `lowbit compare` prints as JSON
//! (documented in `docs/json.md`) and what the HTML report draws. [`compare_models`] fills it,
//! streaming: each run (a batch of samples) goes through both models once and only running
//! sums are kept, so memory does not grow with the number of samples.
//!
//! Tensors are matched **by name**, which is what makes this work on QDQ files from any tool
//! (lowbit's `X_quantized`/`X_dequantized`, ONNX Runtime's `X_QuantizeLinear_Output`/
//! `X_DequantizeLinear_Output`):
//!
//! * a **quantized activation** is a `QuantizeLinear` of the quantized model whose input `X` is
//!   neither an initializer nor a constant and also exists in the FP32 model; its dequantized
//!   counterpart is the output of the `DequantizeLinear` reading the `QuantizeLinear`'s output.
//!   (ONNX Runtime quantizes a graph output `Y` by renaming its producer's output to
//!   `Y_QuantizeLinear_Input` and giving `Y` to the `DequantizeLinear`: then `Y` is the FP32
//!   tensor.)
//!   *Accumulated* noise compares `X` in the FP32 run with that counterpart in the quantized
//!   run; *isolated* noise compares `X` with `X` through its own quantize/dequantize (the shared
//!   math core, [`lowbit_kernels::quantize`]). When every reader of the counterpart is one
//!   `Relu`/`Clip` (a quantizer gives a tensor the range of the clamp that follows it), noise and
//!   clip rate are measured after that clamp: saturation the clamp undoes costs nothing.
//! * a **quantized weight** is a `DequantizeLinear` reading an initializer (or a `Constant`);
//!   its reference is the FP32 initializer in the same input slot of the same node (matched by
//!   name, else by position among nodes of its op type). When the quantized model folded a
//!   `BatchNormalization` into that node, the reference is the FP32 weight folded the same way
//!   ([`lowbit_quant::passes::bn_fold`]).
//! * the **ranking** scores every quantized compute node (a node reading a quantized weight, or
//!   a Conv/MatMul/Gemm/Add/Mul… reading a quantized activation) by the lowest isolated SQNR
//!   among its quantized inputs — for a weight, the SQNR of its worst output channel — and says
//!   what to try.
//!
//! ```no_run
//! use lowbit_eval::compare::{compare_models, CompareOptions};
//! let fp32 = lowbit_onnx::load_model("model.onnx")?;
//! let quant = lowbit_onnx::load_model("model.int8.onnx")?;
//! let x = lowbit_tensor::Tensor::from_vec(vec![1, 4], vec![0f32; 4])?;
//! let samples = vec![vec![("input".to_string(), x)]];
//! let opts = CompareOptions { fp32_model: "model.onnx".into(), ..Default::default() };
//! let report = compare_models(&fp32, &quant, samples, &opts)?;
//! for r in report.ranking.iter().take(5) {
//!     println!("{} ({}): {:.1} dB, {}", r.node, r.op_type, r.sqnr_db, r.hint);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod driver;
mod error;
mod matching;
mod measure;
mod model;
mod ranking;
mod view;

pub use driver::{compare_models, CompareOptions};
pub use error::CompareError;
pub use model::{
    ActivationNoise, CompareReport, Histogram, RankedLayer, TensorNoise, WeightNoise, FORMAT,
    HISTOGRAM_BINS,
};
