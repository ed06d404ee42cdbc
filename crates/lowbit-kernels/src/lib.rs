//! Hot loops only, no graph knowledge. Each kernel has a portable reference; SIMD paths are
//! chosen at run time by CPU feature detection.
//!
//! | module | computes |
//! |---|---|
//! | [`gemm`] | f32 `C = alpha * op(A) * op(B) + beta * C` |
//! | [`qconv`] | u8 × i8 convolution (patches × packed weights, direct depthwise) |
//! | [`qgemm`] | u8 × i8 → i32 GEMM with fused requantize / dequantize output stages |
//! | [`conv`] | N-d convolution (im2col + GEMM, direct depthwise), transposed convolution |
//! | [`pool`] | max / average / Lp pooling |
//! | [`norm`] | softmax, log-softmax, layer norm rows |
//! | [`wgemm`] | f32 × int8/int4 weight-only GEMM, dequantizing inside the product |
//! | [`window`] | the sliding-window geometry conv and pool share |

pub mod conv;
pub mod gemm;
pub mod norm;
pub mod pool;
pub mod qconv;
pub mod qgemm;
pub mod quantize;
pub mod wgemm;
pub mod window;
