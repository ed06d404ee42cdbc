//! The lowbit quantizer.
//!
//! | module | holds |
//! |---|---|
//! | [`scheme`] | [`QuantScheme`]: value type, symmetric/asymmetric, per-tensor/channel/block, reduce range |
//! | [`qparams`] | scale and zero point from ranges (ONNX Runtime's formulas), weight quantization |
//! | [`passes`] | graph passes: BN folding, static QDQ, dynamic, weight-only, fp16/bf16 |
//! | [`config`] | [`QuantizeConfig`](config::QuantizeConfig) (the user's settings) resolved once into the [`QuantPlan`](config::QuantPlan) every pass reads |
//! | [`target`] | deployment targets (ONNX Runtime AVX2/VNNI/ARM, OpenVINO, TensorRT, lowbit) and their rules |
//! | [`quantize`] | the [`quantize_model`](quantize::quantize_model) driver and its [`QuantizeSummary`](quantize::QuantizeSummary) |
//! | [`algorithms`] | accuracy recovery: cross-layer equalization, SmoothQuant, AdaRound, bias correction |
//! | [`samples`] | [`SampleSource`](samples::SampleSource): the replayable batches calibration and the algorithms run on; [`Progress`](samples::Progress) |
//! | [`calibrate`] | streaming observers (min-max, moving average, histogram → percentile, entropy, MSE), the [`Calibrator`](calibrate::Calibrator) and `ranges.json` |
//!
//! Every quantize/dequantize goes through [`lowbit_kernels::quantize`], the same functions the
//! engine's `QuantizeLinear`/`DequantizeLinear` run: round half to even, saturation as ONNX
//! defines it.
//!
//! ```
//! use lowbit_quant::{qparams, QuantScheme};
//! let p = qparams::QParams::from_range(&QuantScheme::uint8(), -1.0, 3.0)?;
//! assert_eq!(p.zero_points(), vec![64]);
//! # Ok::<(), lowbit_quant::QuantError>(())
//! ```

#[macro_use]
mod names;

pub mod algorithms;
pub mod calibrate;
pub mod config;
pub mod error;
pub mod passes;
pub mod qparams;
pub mod quantize;
pub mod samples;
pub mod scheme;
pub mod target;

pub use error::QuantError;
pub use scheme::{QuantScheme, RangeFit};
