//! Quantization-aware training (QAT) on the ONNX graph itself: no training framework and no
//! training code, only the ONNX file and some samples.
//!
//! The model is first quantized by lowbit's static QDQ pass (BatchNormalization folded, ranges
//! from lowbit's calibration). That QDQ graph becomes a differentiable [`program::Program`]:
//! every quantize/dequantize pair is a fake-quant step with a learnable step size (LSQ), every
//! quantized weight a float tensor fake-quantized per channel, trained by reverse-mode autodiff
//! ([`tape`]) to match the FP32 model's outputs ([`loss`]). The learned weights, step sizes and
//! biases are written back into the same QDQ graph, which ONNX Runtime and lowbit's engine run.
//!
//! | module | holds |
//! |---|---|
//! | [`arr`] | the f32 array the tape holds |
//! | [`ops`] | forward and backward pass of every op (gradients checked by finite differences) |
//! | [`fake_quant`] | fake quantization with the straight-through estimator, LSQ step-size gradients, ternary/binary grids |
//! | [`program`] | a QDQ graph as trainable steps, parameters and their export |
//! | [`tape`] | reverse-mode autodiff over a program, one sample at a time |
//! | [`loss`] | KL / cosine / MSE distillation, cross-entropy |
//! | [`optim`] | Adam, SGD, cosine schedule |
//! | [`qat`] | the driver: prepare, train with early stopping and a time budget, export |

pub mod arr;
pub mod error;
pub mod fake_quant;
pub mod loss;
pub mod ops;
pub mod optim;
pub mod program;
pub mod qat;
pub mod tape;

pub use error::{Result, TrainError};
pub use qat::{train, QatOptions, QatOutcome, Sample, WeightBits};
