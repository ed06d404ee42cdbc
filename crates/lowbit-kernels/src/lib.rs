//! Hot loops only, no graph knowledge. Each kernel has a portable reference; SIMD paths are
//! chosen at run time by CPU feature detection.
//!
//! | module | computes |
//! |---|---|
//! | [`gemm`] | f32 `C = alpha * op(A) * op(B) + beta * C` |
//! | [`conv`] | N-d convolution (im2col + GEMM, direct depthwise), transposed convolution |
//! | [`pool`] | max / average / Lp pooling |
//! | [`norm`] | softmax, log-softmax, layer norm rows |
//! | [`window`] | the sliding-window geometry conv and pool share |

pub mod conv;
pub mod gemm;
pub mod norm;
pub mod pool;
pub mod quantize;
pub mod window;
