//! Hot loops only, no graph knowledge. Each kernel family has portable code and x86-64 SIMD
//! code side by side in its file (plain functions, then a `mod x86_64` of `#[target_feature]`
//! functions); [`cpu`] detects the CPU once and says which one each family runs.
//!
//! | module | computes |
//! |---|---|
//! | [`cpu`] | the dispatch table: the CPU's instruction-set level, each family's implementation |
//! | [`gemm`] | f32 `C = alpha * op(A) * op(B) + beta * C` |
//! | [`qconv`] | u8 × i8 convolution (patches × packed weights, direct depthwise) |
//! | [`qgemm`] | u8 × i8 → i32 GEMM with fused requantize / dequantize output stages |
//! | [`conv`] | N-d convolution (im2col + GEMM), transposed convolution |
//! | [`conv_nhwc`] | f32 convolution on channels-last activations (pixels × packed weights, direct depthwise) |
//! | `depthwise` | f32 depthwise convolution (direct: over padded phases of each NCHW plane, or channels in the lanes for NHWC) |
//! | [`pool`] | max / average / Lp pooling |
//! | [`norm`] | softmax, log-softmax, layer norm rows |
//! | [`wgemm`] | f32 × int8/int4 weight-only GEMM, dequantizing inside the product |
//! | [`window`] | the sliding-window geometry conv and pool share |

pub mod conv;
pub mod conv_nhwc;
pub mod cpu;
mod depthwise;
pub mod gemm;
pub mod norm;
pub mod pool;
pub mod qconv;
pub mod qgemm;
pub mod quantize;
pub mod wgemm;
pub mod window;

/// Inputs the kernels' tests share.
#[cfg(test)]
mod test_data {
    /// Output length of a window: input `i`, kernel `k`, stride `s`, dilation `d`, pads `pb`
    /// and `pe` (0 when the kernel does not fit).
    pub(crate) fn out_len(i: usize, k: usize, s: usize, d: usize, pb: usize, pe: usize) -> usize {
        let span = d * (k - 1) + 1;
        if i + pb + pe < span {
            0
        } else {
            (i + pb + pe - span) / s + 1
        }
    }

    /// A square 2-D window: `size²` input, `k×k` kernel, stride `s`, the same pad everywhere.
    pub(crate) fn square_window(
        size: usize,
        k: usize,
        s: usize,
        pad: usize,
    ) -> crate::window::Window {
        let o = out_len(size, k, s, 1, pad, pad);
        crate::window::Window::new(
            &[size, size],
            &[k, k],
            &[s, s],
            &[1, 1],
            &[pad, pad],
            &[pad, pad],
            &[o, o],
        )
        .expect("a valid window")
    }

    /// `n` values `k / scale - offset` for `k` in `0..steps`, scattered by a multiplicative
    /// hash of the index and `seed`: deterministic, and every level repeats (ties included).
    pub(crate) fn levels(n: usize, seed: u32, steps: u32, scale: f32, offset: f32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let k = ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 16) % steps;
                k as f32 / scale - offset
            })
            .collect()
    }
}
