//! f32 convolution on channels-last activations (`x` `[N, in..., C_in]`, `y` `[N, out...,
//! C_out]`): what the engine runs for a float `Conv` once its layout pass has moved a chain of
//! convolutions to NHWC (lowbit-engine's `layout`), so that no conv converts its own layout.
//!
//! - A pointwise conv is one GEMM of the pixels (rows, read in place) with the packed weights:
//!   no im2col, no repacking of activations, each output pixel's channels stored as a row.
//! - Other convs gather a block of pixels' patches into rows (taps `kz, ky, kx` then channels:
//!   along x, a run of neighbouring pixels is one copy) and run the same GEMM.
//! - A depthwise conv runs a direct kernel with the channels in the vector lanes
//!   (`depthwise::depthwise_channels_last`).
//!
//! Bias and activation are applied as each tile is stored. Blocks of pixels run in parallel.

use crate::conv::{with_scratch, ConvParams};
use crate::gemm::{sgemm_rows_packed_raw, Activation, Epilogue, PackedB, Ptr, Trans};
use crate::window::Window;
use std::mem::MaybeUninit;

/// Floats of a block's patches (or pixels, for a pointwise conv): kept in L2 while every
/// panel of the weights passes over it.
const BLOCK_FLOATS: usize = 32 * 1024;

/// A constant weight prepared for [`conv_channels_last`].
#[derive(Clone, Debug)]
pub struct ChannelsLastWeights {
    c_out: usize,
    c_in: usize,
    group: usize,
    k_sz: usize,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    /// `K x C_out` with `K = (tap, c_in)`, taps outermost.
    Gemm(PackedB),
    /// `[tap][C]`.
    Depthwise(Vec<f32>),
}

impl ChannelsLastWeights {
    /// Prepares `w` (`[C_out, C_in / group, k...]`, `k_sz` taps); `None` for a grouped conv
    /// that is not depthwise (those run channels-first).
    ///
    /// # Panics
    /// When `w` is shorter than `c_out · c_in / group · k_sz`.
    pub fn new(
        c_out: usize,
        c_in: usize,
        group: usize,
        k_sz: usize,
        w: &[f32],
    ) -> Option<ChannelsLastWeights> {
        let depthwise = group > 1 && group == c_in && group == c_out;
        let kind = if depthwise {
            Kind::Depthwise(crate::depthwise::taps_channel_fastest(c_out, k_sz, w))
        } else if group == 1 {
            assert!(w.len() >= c_out * c_in * k_sz, "conv weights: w too short");
            let k = c_in * k_sz;
            let mut b = vec![0.0; k * c_out];
            for (co, wc) in w[..c_out * k].chunks_exact(k).enumerate() {
                for (ci, taps) in wc.chunks_exact(k_sz).enumerate() {
                    taps.iter().enumerate().for_each(|(t, &v)| b[(t * c_in + ci) * c_out + co] = v);
                }
            }
            Kind::Gemm(PackedB::pack(Trans::No, k, c_out, &b, c_out))
        } else {
            return None;
        };
        Some(ChannelsLastWeights { c_out, c_in, group, k_sz, kind })
    }

    /// Whether these weights serve the convolution `p`.
    pub fn fits(&self, p: &ConvParams) -> bool {
        (self.c_out, self.c_in, self.group, self.k_sz)
            == (p.c_out, p.c_in, p.group, p.window.kernel_size())
    }
}

/// `y = act(conv(x, w) + bias)` on channels-last `x` (`[N, in..., C_in]`) into `y` (`[N, out...,
/// C_out]`, need not be initialized: every element of `y[..p.sizes().2]` is written).
///
/// # Panics
/// When a buffer is shorter than `p` says, or `w` was prepared for another convolution.
pub fn conv_channels_last(
    p: &ConvParams,
    x: &[f32],
    w: &ChannelsLastWeights,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [MaybeUninit<f32>],
) {
    assert!(w.fits(p), "conv_channels_last: weights prepared for another convolution");
    p.check_io(x, y.len(), bias);
    let b = match &w.kind {
        Kind::Depthwise(taps) => {
            let isa = crate::cpu::best().depthwise_f32;
            crate::depthwise::depthwise_channels_last(isa, p, x, taps, bias, act, y);
            return;
        }
        Kind::Gemm(b) => b,
    };
    let win = &p.window;
    let (c_in, c_out) = (p.c_in, p.c_out);
    let out_sz = win.output_size();
    let rows = p.batch * out_sz;
    if rows == 0 || c_out == 0 {
        return;
    }
    let k = b.k();
    let pointwise = win.is_pointwise();
    let threads = rayon::current_num_threads();
    // Blocks of whole micro-kernel rows, small enough to stay cached, and enough to share out.
    const MR: usize = crate::gemm::MR;
    let mut block = (BLOCK_FLOATS / k.max(1)).clamp(8 * MR, 1024);
    if threads > 1 && rows * k * c_out >= 1 << 17 {
        block = block.min(rows.div_ceil(4 * threads));
    }
    let block = block.div_ceil(MR) * MR;
    let blocks = rows.div_ceil(block);
    let epi = Epilogue { row_bias: None, col_bias: bias, act: Some(act) };
    let out = Ptr(y.as_mut_ptr().cast::<f32>());
    let in_sz = win.input_size();
    let run = |bi: usize| {
        let r0 = bi * block;
        let m = block.min(rows - r0);
        let share = blocks == 1;
        // SAFETY: rows `r0..r0 + m` of `y` (`c_out` each) lie inside it (checked above), and
        // blocks write disjoint rows.
        let c = unsafe { out.get().add(r0 * c_out) };
        if pointwise {
            // SAFETY: as above.
            unsafe { sgemm_rows_packed_raw(m, &x[r0 * c_in..], c_in, b, c, c_out, &epi, share) };
        } else {
            with_scratch(m * k, |patches| {
                for (i, row) in patches.chunks_exact_mut(k).enumerate() {
                    let (n, pix) = ((r0 + i) / out_sz, (r0 + i) % out_sz);
                    patch_row(win, c_in, &x[n * in_sz * c_in..][..in_sz * c_in], pix, row);
                }
                // SAFETY: as above.
                unsafe { sgemm_rows_packed_raw(m, patches, k, b, c, c_out, &epi, share) };
            });
        }
    };
    if blocks > 1 && threads > 1 {
        use rayon::prelude::*;
        (0..blocks).into_par_iter().for_each(run);
    } else {
        (0..blocks).for_each(run);
    }
}

/// The patch of output pixel `pix` (flat over the output's spatial dims) of channels-last
/// image `x` (`c` channels): taps `kz, ky, kx` outermost, `c` values each, zeros outside.
fn patch_row(win: &Window, c: usize, x: &[f32], pix: usize, dst: &mut [f32]) {
    let [_, oh, ow] = win.output;
    let [_, ih, iw] = win.input;
    let [kd, kh, kw] = win.kernel;
    let (oz, oy, ox) = (pix / (oh * ow), pix / ow % oh, pix % ow);
    let mut runs = dst.chunks_exact_mut(kw * c);
    for kz in 0..kd {
        let iz = win.tap_input(0, oz, kz);
        for ky in 0..kh {
            let run = runs.next().expect("patch row holds every tap");
            let (Some(iz), Some(iy)) = (iz, win.tap_input(1, oy, ky)) else {
                run.fill(0.0);
                continue;
            };
            let base = (iz * ih + iy) * iw;
            if win.dilations[2] == 1 {
                // The taps inside are one run of neighbouring input pixels.
                let x0 = win.tap_position(2, ox, 0);
                let lo = (-x0).clamp(0, kw as isize) as usize;
                let hi = (iw as isize - x0).clamp(lo as isize, kw as isize) as usize;
                run[..lo * c].fill(0.0);
                run[hi * c..].fill(0.0);
                if hi > lo {
                    let from = (base + (x0 + lo as isize) as usize) * c;
                    run[lo * c..hi * c].copy_from_slice(&x[from..from + (hi - lo) * c]);
                }
            } else {
                for (kx, d) in run.chunks_exact_mut(c).enumerate() {
                    match win.tap_input(2, ox, kx) {
                        Some(ix) => d.copy_from_slice(&x[(base + ix) * c..][..c]),
                        None => d.fill(0.0),
                    }
                }
            }
        }
    }
}

/// `[N, C, spatial...]` → `[N, spatial..., C]` (the tests' layout change).
#[cfg(test)]
pub(crate) fn to_channels_last(batch: usize, c: usize, plane: usize, x: &[f32], y: &mut [f32]) {
    for n in 0..batch {
        let (xs, ys) = (&x[n * c * plane..][..c * plane], &mut y[n * c * plane..][..c * plane]);
        for (ch, src) in xs.chunks_exact(plane).enumerate() {
            src.iter().enumerate().for_each(|(i, &v)| ys[i * c + ch] = v);
        }
    }
}

/// `[N, spatial..., C]` → `[N, C, spatial...]`.
#[cfg(test)]
pub(crate) fn to_channels_first(batch: usize, c: usize, plane: usize, x: &[f32], y: &mut [f32]) {
    for n in 0..batch {
        let (xs, ys) = (&x[n * c * plane..][..c * plane], &mut y[n * c * plane..][..c * plane]);
        for (i, px) in xs.chunks_exact(c).enumerate() {
            px.iter().enumerate().for_each(|(ch, &v)| ys[ch * plane + i] = v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::conv_ref;
    use proptest::prelude::*;

    fn fill(n: usize, seed: u32) -> Vec<f32> {
        crate::test_data::levels(n, seed, 19, 9.0, 1.0)
    }

    use crate::test_data::{out_len, square_window};

    /// Runs `p` channels-last on `pool` and checks it against the channels-first reference.
    fn check(p: &ConvParams, seed: u32, bias: bool, act: Activation, pool: &rayon::ThreadPool) {
        let (nx, nw, ny) = p.sizes();
        let (in_sz, out_sz) = (p.window.input_size(), p.window.output_size());
        let (x, w, b) = (fill(nx, seed), fill(nw, seed ^ 3), fill(p.c_out, seed ^ 9));
        let bias = bias.then_some(&b[..]);
        let mut want = vec![0.0; ny];
        conv_ref(p, &x, &w, bias, act, &mut want);
        let weights =
            ChannelsLastWeights::new(p.c_out, p.c_in, p.group, p.window.kernel_size(), &w)
                .expect("group 1 or depthwise");
        let mut xl = vec![0.0; nx];
        to_channels_last(p.batch, p.c_in, in_sz, &x, &mut xl);
        let mut yl = vec![f32::NAN; ny];
        pool.install(|| {
            conv_channels_last(p, &xl, &weights, bias, act, crate::conv::as_uninit(&mut yl))
        });
        let mut got = vec![0.0; ny];
        to_channels_first(p.batch, p.c_out, out_sz, &yl, &mut got);
        for (i, (a, r)) in got.iter().zip(&want).enumerate() {
            assert!((a - r).abs() <= 1e-4 * (1.0 + r.abs()), "{p:?} at {i}: {a} vs {r}");
        }
    }

    /// EfficientNet-Lite0's shapes (stem, 1×1 expand and project, 3×3 and 5×5 depthwise at
    /// strides 1 and 2), sized down, on one and two threads with every activation.
    #[test]
    fn efficientnet_shapes_match_the_reference_on_one_and_two_threads() {
        let pools: Vec<_> = [1, 2]
            .iter()
            .map(|&t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap())
            .collect();
        let acts = [Activation::None, Activation::Relu, Activation::Clip(0.0, 6.0)];
        // (c_in, c_out, group, size, kernel, stride, pad)
        for (c_in, c_out, group, size, k, s, pad) in [
            (3, 32, 1, 37, 3, 2, 1),
            (16, 96, 1, 30, 1, 1, 0),
            (1152, 320, 1, 7, 1, 1, 0),
            (96, 96, 96, 28, 3, 2, 1),
            (144, 144, 144, 14, 5, 2, 2),
            (1152, 1152, 1152, 7, 5, 1, 2),
            (40, 20, 1, 9, 3, 1, 1),
        ] {
            let window = square_window(size, k, s, pad);
            let p = ConvParams { batch: 2, c_in, c_out, group, window };
            for (i, act) in acts.into_iter().enumerate() {
                check(&p, 7 + i as u32, i != 1, act, &pools[i % 2]);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Any 1-D to 3-D geometry (strides, dilations, uneven pads), group 1 or depthwise,
        /// against the reference, on this CPU's kernels.
        #[test]
        fn channels_last_conv_matches_reference(
            batch in 1usize..3,
            dims in prop::collection::vec(
                (1usize..9, 1usize..4, 1usize..3, 1usize..3, 0usize..3, 0usize..3), 1..=3),
            depthwise in any::<bool>(),
            c_in in 1usize..40,
            c_out in 1usize..40,
            has_bias in any::<bool>(),
            relu in any::<bool>(),
            seed in any::<u32>(),
        ) {
            let input: Vec<usize> = dims.iter().map(|d| d.0 + d.1 * d.3).collect();
            let kernel: Vec<usize> = dims.iter().map(|d| d.1).collect();
            let strides: Vec<usize> = dims.iter().map(|d| d.2).collect();
            let dil: Vec<usize> = dims.iter().map(|d| d.3).collect();
            let pb: Vec<usize> = dims.iter().map(|d| d.4).collect();
            let pe: Vec<usize> = dims.iter().map(|d| d.5).collect();
            let output: Vec<usize> = (0..dims.len())
                .map(|i| out_len(input[i], kernel[i], strides[i], dil[i], pb[i], pe[i]))
                .collect();
            let window = Window::new(&input, &kernel, &strides, &dil, &pb, &pe, &output).unwrap();
            let (c_out, group) = if depthwise { (c_in.max(2), c_in.max(2)) } else { (c_out, 1) };
            let c_in = if depthwise { c_out } else { c_in };
            let p = ConvParams { batch, c_in, c_out, group, window };
            let act = if relu { Activation::Relu } else { Activation::None };
            let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            check(&p, seed, has_bias, act, &pool);
        }
    }
}
