//! f32 convolution (1-D to 3-D, NCHW): im2col + [`crate::gemm`], a direct depthwise kernel,
//! and the transposed convolution (GEMM + col2im).
//!
//! Weights are `[C_out, C_in / group, k...]` for [`conv`] and `[C_in, C_out / group, k...]`
//! for [`conv_transpose`], as ONNX stores them, so no re-packing is needed. Bias and an
//! optional [`Activation`] are applied in the epilogue, while the output is hot in cache.
//! [`conv_ref`] is the direct scalar reference.
//!
//! ```
//! use lowbit_kernels::conv::{conv, Activation, ConvParams};
//! use lowbit_kernels::window::Window;
//! // 1 image, 1 channel 3x3, a 2x2 all-ones kernel: sums of 2x2 blocks.
//! let win = Window::new(&[3, 3], &[2, 2], &[1, 1], &[1, 1], &[0, 0], &[0, 0], &[2, 2]).unwrap();
//! let p = ConvParams { batch: 1, c_in: 1, c_out: 1, group: 1, window: win };
//! let x: Vec<f32> = (0..9).map(|v| v as f32).collect();
//! let mut y = vec![0.0; 4];
//! conv(&p, &x, &[1.0; 4], None, Activation::None, &mut y);
//! assert_eq!(y, [8.0, 12.0, 20.0, 24.0]);
//! ```

use crate::gemm::{sgemm, sgemm_packed_ab_raw, Epilogue, PackedA, PackedB, Trans, NR};
use crate::window::Window;
use std::cell::RefCell;
use std::mem::MaybeUninit;

pub use crate::gemm::Activation;

/// Shape of one convolution: channels, groups and the spatial window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvParams {
    pub batch: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub group: usize,
    pub window: Window,
}

impl ConvParams {
    /// Elements of `x`, `w` and `y` this convolution reads and writes.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let w = &self.window;
        let x = self.batch * self.c_in * w.input_size();
        let wt = self.c_out * (self.c_in / self.group.max(1)) * w.kernel_size();
        let y = self.batch * self.c_out * w.output_size();
        (x, wt, y)
    }

    fn check(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &[f32]) {
        assert!(
            self.group > 0
                && self.c_in.is_multiple_of(self.group)
                && self.c_out.is_multiple_of(self.group)
        );
        let (nx, nw, ny) = self.sizes();
        assert!(x.len() >= nx && w.len() >= nw && y.len() >= ny, "conv: buffer too short");
        assert!(bias.is_none_or(|b| b.len() >= self.c_out), "conv: bias too short");
    }

    /// Panics unless `x` and `y` (`y_len` elements) hold what this convolution reads and
    /// writes and `bias` (if any) one value per output channel.
    pub(crate) fn check_io(&self, x: &[f32], y_len: usize, bias: Option<&[f32]>) {
        let (nx, _, ny) = self.sizes();
        assert!(x.len() >= nx && y_len >= ny, "conv: buffer too short");
        assert!(bias.is_none_or(|b| b.len() >= self.c_out), "conv: bias too short");
    }

    /// Depthwise: one input channel per group, one output channel per group.
    pub fn is_depthwise(&self) -> bool {
        self.group == self.c_in && self.group == self.c_out && self.group > 1
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PACKED: RefCell<Option<PackedB>> = const { RefCell::new(None) };
}

/// Runs `f` with a thread-local scratch buffer of at least `n` elements (contents undefined).
pub(crate) fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < n {
                v.resize(n, 0.0);
            }
            f(&mut v[..n])
        }
        // Re-entered (a kernel called from inside another on this thread): use a fresh one.
        Err(_) => f(&mut vec![0.0; n]),
    })
}

/// Unfolds `channels` planes of `x` into `col`: row `(c, kz, ky, kx)`, column = output position.
pub fn im2col(win: &Window, channels: usize, x: &[f32], col: &mut [f32]) {
    let [od, oh, ow] = win.output;
    let [_, ih, iw] = win.input;
    let (out_size, in_size) = (win.output_size(), win.input_size());
    let mut row = 0;
    for c in 0..channels {
        let xc = &x[c * in_size..(c + 1) * in_size];
        for tap in win.taps() {
            let ([offz, offy, offx], [z_lo, y_lo, x_lo], [z_hi, y_hi, x_hi]) =
                (tap.off, tap.lo, tap.hi);
            let dst = &mut col[row * out_size..(row + 1) * out_size];
            row += 1;
            for oz in 0..od {
                let dz = &mut dst[oz * oh * ow..(oz + 1) * oh * ow];
                if oz < z_lo || oz >= z_hi {
                    dz.fill(0.0);
                    continue;
                }
                let iz = (oz * win.strides[0]) as isize + offz;
                let plane = &xc[iz as usize * ih * iw..(iz as usize + 1) * ih * iw];
                for oy in 0..oh {
                    let d = &mut dz[oy * ow..(oy + 1) * ow];
                    if oy < y_lo || oy >= y_hi {
                        d.fill(0.0);
                        continue;
                    }
                    let iy = ((oy * win.strides[1]) as isize + offy) as usize;
                    let src = &plane[iy * iw..(iy + 1) * iw];
                    d[..x_lo].fill(0.0);
                    d[x_hi..].fill(0.0);
                    let sx = win.strides[2];
                    if x_hi > x_lo {
                        let start = ((x_lo * sx) as isize + offx) as usize;
                        if sx == 1 {
                            d[x_lo..x_hi].copy_from_slice(&src[start..start + x_hi - x_lo]);
                        } else {
                            for (j, v) in d[x_lo..x_hi].iter_mut().enumerate() {
                                *v = src[start + j * sx];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Adds `col` (as produced by [`im2col`] for this window) back into `channels` planes of `y`:
/// the adjoint of [`im2col`], used by the transposed convolution.
pub fn col2im_add(win: &Window, channels: usize, col: &[f32], y: &mut [f32]) {
    let [_, oh, ow] = win.output;
    let [_, ih, iw] = win.input;
    let (out_size, in_size) = (win.output_size(), win.input_size());
    let mut row = 0;
    for c in 0..channels {
        let yc = &mut y[c * in_size..(c + 1) * in_size];
        for tap in win.taps() {
            let ([offz, offy, offx], [z_lo, y_lo, x_lo], [z_hi, y_hi, x_hi]) =
                (tap.off, tap.lo, tap.hi);
            let src = &col[row * out_size..(row + 1) * out_size];
            row += 1;
            if x_hi <= x_lo {
                continue;
            }
            let sx = win.strides[2];
            for oz in z_lo..z_hi {
                let iz = ((oz * win.strides[0]) as isize + offz) as usize;
                for oy in y_lo..y_hi {
                    let iy = ((oy * win.strides[1]) as isize + offy) as usize;
                    let s = &src[(oz * oh + oy) * ow..(oz * oh + oy + 1) * ow];
                    let d = &mut yc[(iz * ih + iy) * iw..(iz * ih + iy + 1) * iw];
                    let start = ((x_lo * sx) as isize + offx) as usize;
                    for (j, v) in s[x_lo..x_hi].iter().enumerate() {
                        d[start + j * sx] += v;
                    }
                }
            }
        }
    }
}

fn fill_bias(y: &mut [f32], channels: usize, plane: usize, bias: Option<&[f32]>) -> bool {
    match bias {
        Some(b) => {
            for (c, row) in y[..channels * plane].chunks_mut(plane.max(1)).enumerate() {
                row.fill(b[c]);
            }
            true
        }
        None => false,
    }
}

/// Convolution weights prepared once for [`conv_packed`]: per group, the `C_out / group x K`
/// weight matrix as a [`PackedA`]. Depthwise weights stay as stored (the direct kernel reads
/// each channel's taps).
#[derive(Clone, Debug)]
pub struct ConvWeights {
    c_out: usize,
    group: usize,
    kdim: usize,
    is_depthwise: bool,
    packed: Vec<PackedA>,
    depthwise: Vec<f32>,
}

impl ConvWeights {
    /// Prepares `w` (`[C_out, C_in / group, k...]`, `kdim = C_in / group · kernel size` values
    /// per output channel). `depthwise` says the conv has one input and one output channel per
    /// group ([`ConvParams::is_depthwise`]).
    ///
    /// # Panics
    /// When `w` is shorter than `c_out · kdim` or `group` does not divide `c_out`.
    pub fn new(c_out: usize, group: usize, kdim: usize, depthwise: bool, w: &[f32]) -> ConvWeights {
        assert!(group > 0 && c_out.is_multiple_of(group), "conv weights: bad group");
        assert!(w.len() >= c_out * kdim, "conv weights: w too short");
        let cg = c_out / group;
        let is_depthwise = depthwise;
        let (packed, depthwise) = if is_depthwise {
            (Vec::new(), w[..c_out * kdim].to_vec())
        } else {
            let g = (0..group).map(|g| PackedA::pack(cg, kdim, &w[g * cg * kdim..], kdim));
            (g.collect(), Vec::new())
        };
        ConvWeights { c_out, group, kdim, is_depthwise, packed, depthwise }
    }

    /// Whether these weights serve the convolution `p`.
    pub fn fits(&self, p: &ConvParams) -> bool {
        self.c_out == p.c_out
            && self.group == p.group
            && self.kdim == p.c_in / p.group.max(1) * p.window.kernel_size()
            && p.is_depthwise() == self.is_depthwise
    }
}

/// `y = act(conv(x, w) + bias)` for a whole batch. `x` is `[N, C_in, in...]`, `w` is
/// `[C_out, C_in / group, k...]`, `y` is `[N, C_out, out...]`. Packs `w` on every call: a
/// constant weight is better prepared once with [`ConvWeights`] for [`conv_packed`].
///
/// # Panics
/// When buffers are shorter than `p` says or `group` does not divide the channels.
pub fn conv(
    p: &ConvParams,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    p.check(x, w, bias, y);
    let kdim = p.c_in / p.group * p.window.kernel_size();
    conv_packed(p, x, &ConvWeights::new(p.c_out, p.group, kdim, p.is_depthwise(), w), bias, act, y);
}

/// Packed patches per column block: a block of B stays in L2 while every row block of the
/// weights passes over it.
const PATCH_BLOCK_FLOATS: usize = 48 * 1024;

/// [`conv`] with weights prepared by [`ConvWeights::new`]. Each group's product runs over
/// blocks of output positions: a block's patches are gathered straight into the packed layout
/// (no full im2col buffer), multiplied with the packed weights, and bias and activation are
/// applied as each tile is stored. Blocks run in parallel on the current rayon pool.
///
/// # Panics
/// When buffers are shorter than `p` says, or `w` was prepared for another shape.
pub fn conv_packed(
    p: &ConvParams,
    x: &[f32],
    w: &ConvWeights,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    conv_packed_uninit(p, x, w, bias, act, as_uninit(y));
}

/// `y` seen as memory to write (the same layout): what the `_uninit` kernels take.
pub(crate) fn as_uninit(y: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and the kernels given this slice only
    // write initialized values into it.
    unsafe { &mut *(y as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// [`conv_packed`] into memory that need not be initialized (a fresh output buffer): every
/// element of `y[..p.sizes().2]` is written.
///
/// # Panics
/// As [`conv_packed`].
pub fn conv_packed_uninit(
    p: &ConvParams,
    x: &[f32],
    w: &ConvWeights,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [MaybeUninit<f32>],
) {
    assert!(w.fits(p), "conv_packed: weights prepared for another convolution");
    p.check_io(x, y.len(), bias);
    if p.is_depthwise() {
        let isa = crate::cpu::best().depthwise_f32;
        crate::depthwise::depthwise(isa, p, x, &w.depthwise, bias, act, y);
        return;
    }
    let win = &p.window;
    let (in_sz, out_sz) = (win.input_size(), win.output_size());
    let cg_in = p.c_in / p.group;
    let cg_out = p.c_out / p.group;
    let kdim = w.kdim;
    if out_sz == 0 || cg_out == 0 {
        return;
    }
    let pointwise = win.is_pointwise();
    let threads = rayon::current_num_threads();
    // Blocks of whole NR panels, small enough to stay cached, and enough to share out.
    let cached = (PATCH_BLOCK_FLOATS / kdim.max(1)).max(16);
    let shared = if threads > 1 && cg_out * out_sz * kdim >= 1 << 17 {
        out_sz.div_ceil(2 * threads)
    } else {
        out_sz
    };
    // Whole pairs of NR panels: the widest micro-kernel (AVX-512) takes two at a time.
    let nc = cached.min(shared).div_ceil(2 * NR) * 2 * NR;
    let blocks = out_sz.div_ceil(nc);
    // Every element is written once (the first K block overwrites), before any read.
    let out = OutPtr(y.as_mut_ptr().cast::<f32>());
    for n in 0..p.batch {
        for g in 0..p.group {
            let xg = &x[(n * p.c_in + g * cg_in) * in_sz..][..cg_in * in_sz];
            let y0 = (n * p.c_out + g * cg_out) * out_sz;
            let epi = Epilogue {
                row_bias: bias.map(|b| &b[g * cg_out..(g + 1) * cg_out]),
                col_bias: None,
                act: Some(act),
            };
            let a = &w.packed[g];
            let block = |bi: usize, packed: &mut PackedB| {
                let j0 = bi * nc;
                let cols = nc.min(out_sz - j0);
                if pointwise {
                    packed.repack(Trans::No, kdim, cols, &xg[j0..], in_sz);
                } else {
                    packed.repack_rows(kdim, cols, |r, d| patch_row(win, xg, r, j0, d));
                }
                // SAFETY: rows `y0 + i * out_sz` for i < cg_out, columns `j0..j0 + cols` lie
                // inside `y` (checked above); blocks write disjoint columns.
                unsafe { sgemm_packed_ab_raw(a, packed, out.get().add(y0 + j0), out_sz, &epi) };
            };
            if blocks > 1 && threads > 1 && shared < out_sz {
                use rayon::prelude::*;
                // Each worker packs into its own thread's buffer, kept across runs.
                (0..blocks).into_par_iter().for_each(|bi| with_packed(|packed| block(bi, packed)));
            } else {
                with_packed(|packed| (0..blocks).for_each(|bi| block(bi, packed)));
            }
        }
    }
}

/// A raw output pointer shared by tasks that write disjoint column blocks.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks given an OutPtr write disjoint elements (one column block each).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Runs `f` with this thread's reusable packing buffer.
fn with_packed<R>(f: impl FnOnce(&mut PackedB) -> R) -> R {
    PACKED.with(|p| match p.try_borrow_mut() {
        Ok(mut slot) => f(slot.get_or_insert_with(|| PackedB::pack(Trans::No, 0, 0, &[], 0))),
        Err(_) => f(&mut PackedB::pack(Trans::No, 0, 0, &[], 0)),
    })
}

/// Row `r` of the im2col matrix of `channels` planes of `x` (row `(c, kz, ky, kx)`, as
/// [`im2col`] orders them), for output positions `j0..j0 + d.len()`.
fn patch_row(win: &Window, x: &[f32], r: usize, j0: usize, d: &mut [f32]) {
    let [od, oh, ow] = win.output;
    let [id, ih, iw] = win.input;
    let [_, kh, kw] = win.kernel;
    let k_sz = win.kernel_size();
    let (c, tap) = (r / k_sz, r % k_sz);
    let (kz, ky, kx) = (tap / (kh * kw), tap / kw % kh, tap % kw);
    let xc = &x[c * id * ih * iw..(c + 1) * id * ih * iw];
    let (offz, offy, offx) = (win.tap_offset(0, kz), win.tap_offset(1, ky), win.tap_offset(2, kx));
    let (z_lo, z_hi) = win.valid_range(0, offz);
    let (y_lo, y_hi) = win.valid_range(1, offy);
    let (x_lo, x_hi) = win.valid_range(2, offx);
    let sx = win.strides[2];
    let plane = oh * ow;
    let end = j0 + d.len();
    debug_assert!(end <= od * plane);
    // Walk the output rows the block covers: one run of `ow` positions (or less at the
    // block's ends) per row, each a gather from one input row.
    let (mut oz, mut oy, mut ox0) = (j0 / plane, j0 % plane / ow, j0 % ow);
    let mut j = j0;
    while j < end {
        let run = (ow - ox0).min(end - j);
        let dst = &mut d[j - j0..j - j0 + run];
        if oz < z_lo || oz >= z_hi || oy < y_lo || oy >= y_hi {
            dst.fill(0.0);
        } else {
            let iz = ((oz * win.strides[0]) as isize + offz) as usize;
            let iy = ((oy * win.strides[1]) as isize + offy) as usize;
            let src = &xc[(iz * ih + iy) * iw..][..iw];
            // Valid outputs of this run: [lo, hi) in run coordinates.
            let lo = x_lo.clamp(ox0, ox0 + run) - ox0;
            let hi = x_hi.clamp(ox0 + lo, ox0 + run) - ox0;
            dst[..lo].fill(0.0);
            dst[hi..].fill(0.0);
            let start = (((ox0 + lo) * sx) as isize + offx) as usize;
            if hi == lo {
            } else if sx == 1 {
                dst[lo..hi].copy_from_slice(&src[start..start + hi - lo]);
            } else {
                for (v, s) in dst[lo..hi].iter_mut().zip(src[start..].iter().step_by(sx)) {
                    *v = *s;
                }
            }
        }
        j += run;
        ox0 = 0;
        oy += 1;
        if oy == oh {
            oy = 0;
            oz += 1;
        }
    }
}

/// Transposed convolution: `x` is `[N, C_in, in...]`, `w` is `[C_in, C_out / group, k...]`,
/// `y` is `[N, C_out, out...]`. `p.window` describes the *forward* convolution that maps `y`
/// back to `x`: its `input` is the output spatial shape here and its `output` the input's.
///
/// # Panics
/// When buffers are shorter than `p` says or `group` does not divide the channels.
pub fn conv_transpose(p: &ConvParams, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    assert!(p.group > 0 && p.c_in.is_multiple_of(p.group) && p.c_out.is_multiple_of(p.group));
    let win = &p.window;
    // In forward terms: the forward input is `y` (c_out channels), its output is `x` (c_in).
    let (y_sz, x_sz, k_sz) = (win.input_size(), win.output_size(), win.kernel_size());
    let cg_in = p.c_in / p.group;
    let cg_out = p.c_out / p.group;
    assert!(x.len() >= p.batch * p.c_in * x_sz, "conv_transpose: x too short");
    assert!(w.len() >= p.c_in * cg_out * k_sz, "conv_transpose: w too short");
    assert!(y.len() >= p.batch * p.c_out * y_sz, "conv_transpose: y too short");
    assert!(bias.is_none_or(|b| b.len() >= p.c_out), "conv_transpose: bias too short");
    let rows = cg_out * k_sz;
    with_scratch(rows * x_sz, |col| {
        for n in 0..p.batch {
            for g in 0..p.group {
                let xg = &x[(n * p.c_in + g * cg_in) * x_sz..][..cg_in * x_sz];
                let wg = &w[g * cg_in * rows..][..cg_in * rows];
                let yg = &mut y[(n * p.c_out + g * cg_out) * y_sz..][..cg_out * y_sz];
                let bg = bias.map(|b| &b[g * cg_out..(g + 1) * cg_out]);
                if !fill_bias(yg, cg_out, y_sz, bg) {
                    yg.fill(0.0);
                }
                // col[rows, x_sz] = wg^T [rows, cg_in] * xg [cg_in, x_sz]
                sgemm(
                    Trans::Yes,
                    Trans::No,
                    rows,
                    x_sz,
                    cg_in,
                    1.0,
                    wg,
                    rows,
                    xg,
                    x_sz,
                    0.0,
                    col,
                    x_sz,
                );
                col2im_add(win, cg_out, col, yg);
            }
        }
    });
}

/// Direct scalar reference for [`conv`] (f64 accumulation).
pub fn conv_ref(
    p: &ConvParams,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    p.check(x, w, bias, y);
    let win = &p.window;
    let [od, oh, ow] = win.output;
    let [id, ih, iw] = win.input;
    let [kd, kh, kw] = win.kernel;
    let cg_in = p.c_in / p.group;
    let cg_out = p.c_out / p.group;
    for n in 0..p.batch {
        for co in 0..p.c_out {
            let g = co / cg_out;
            for oz in 0..od {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bias.map_or(0.0, |b| b[co] as f64);
                        for ci in 0..cg_in {
                            for kz in 0..kd {
                                let Some(iz) = win.tap_input(0, oz, kz) else { continue };
                                for ky in 0..kh {
                                    let Some(iy) = win.tap_input(1, oy, ky) else { continue };
                                    for kx in 0..kw {
                                        let Some(ix) = win.tap_input(2, ox, kx) else { continue };
                                        let c = g * cg_in + ci;
                                        let xi = (((n * p.c_in + c) * id + iz) * ih + iy) * iw + ix;
                                        let wi =
                                            (((co * cg_in + ci) * kd + kz) * kh + ky) * kw + kx;
                                        acc += x[xi] as f64 * w[wi] as f64;
                                    }
                                }
                            }
                        }
                        y[(((n * p.c_out + co) * od + oz) * oh + oy) * ow + ox] = acc as f32;
                    }
                }
            }
        }
    }
    act.apply(&mut y[..p.sizes().2]);
}

/// Scalar reference for [`conv_transpose`]: scatter every input element through the kernel.
pub fn conv_transpose_ref(
    p: &ConvParams,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let win = &p.window;
    let [od, oh, ow] = win.output; // x spatial
    let [id, ih, iw] = win.input; // y spatial
    let [kd, kh, kw] = win.kernel;
    let cg_in = p.c_in / p.group;
    let cg_out = p.c_out / p.group;
    let y_sz = id * ih * iw;
    for n in 0..p.batch {
        for co in 0..p.c_out {
            y[(n * p.c_out + co) * y_sz..][..y_sz].fill(bias.map_or(0.0, |b| b[co]));
        }
        for ci in 0..p.c_in {
            let g = ci / cg_in;
            for cl in 0..cg_out {
                let co = g * cg_out + cl;
                for oz in 0..od {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let xv = x[(((n * p.c_in + ci) * od + oz) * oh + oy) * ow + ox];
                            for kz in 0..kd {
                                let Some(iz) = win.tap_input(0, oz, kz) else { continue };
                                for ky in 0..kh {
                                    let Some(iy) = win.tap_input(1, oy, ky) else { continue };
                                    for kx in 0..kw {
                                        let Some(ix) = win.tap_input(2, ox, kx) else { continue };
                                        let wi =
                                            (((ci * cg_out + cl) * kd + kz) * kh + ky) * kw + kx;
                                        let yi =
                                            (((n * p.c_out + co) * id + iz) * ih + iy) * iw + ix;
                                        y[yi] += xv * w[wi];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fill(n: usize, seed: u32) -> Vec<f32> {
        crate::test_data::levels(n, seed, 19, 9.0, 1.0)
    }

    use crate::test_data::{out_len, square_window};

    #[allow(clippy::type_complexity)]
    fn params() -> impl Strategy<Value = (ConvParams, bool, u32)> {
        (
            1usize..=3,
            prop::collection::vec(
                (1usize..9, 1usize..4, 1usize..3, 1usize..3, 0usize..3, 0usize..3),
                1..=3,
            ),
            1usize..3,
            1usize..4,
            1usize..4,
            any::<bool>(),
            any::<u32>(),
            any::<bool>(),
        )
            .prop_map(|(batch, dims, group, cgi, cgo, dw, seed, bias)| {
                let (group, cgi, cgo) = if dw { (group + 1, 1, 1) } else { (group, cgi, cgo) };
                let input: Vec<usize> = dims.iter().map(|d| d.0 + d.1 * d.3).collect();
                let kernel: Vec<usize> = dims.iter().map(|d| d.1).collect();
                let strides: Vec<usize> = dims.iter().map(|d| d.2).collect();
                let dil: Vec<usize> = dims.iter().map(|d| d.3).collect();
                let pb: Vec<usize> = dims.iter().map(|d| d.4).collect();
                let pe: Vec<usize> = dims.iter().map(|d| d.5).collect();
                let output: Vec<usize> = (0..dims.len())
                    .map(|i| out_len(input[i], kernel[i], strides[i], dil[i], pb[i], pe[i]))
                    .collect();
                let window =
                    Window::new(&input, &kernel, &strides, &dil, &pb, &pe, &output).unwrap();
                (
                    ConvParams { batch, c_in: group * cgi, c_out: group * cgo, group, window },
                    bias,
                    seed,
                )
            })
    }

    /// Convolutions large enough for several K blocks (K > 256), several column blocks and
    /// both threads, with every activation, against the reference.
    #[test]
    fn blocked_parallel_conv_with_activations_matches_reference() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let acts = [
            Activation::None,
            Activation::Relu,
            Activation::Clip(-0.5, 0.75),
            Activation::LeakyRelu(0.1),
        ];
        // (c_in, c_out, group, size, kernel, stride, pad)
        for (c_in, c_out, group, size, k, s, pad) in [
            (40, 20, 1, 30, 3, 1, 1),
            (24, 36, 2, 17, 3, 2, 1),
            (64, 13, 1, 40, 1, 1, 0),
            (8, 8, 8, 21, 3, 1, 1),
        ] {
            let window = square_window(size, k, s, pad);
            let p = ConvParams { batch: 2, c_in, c_out, group, window };
            let (nx, nw, ny) = p.sizes();
            let (x, w, b) = (fill(nx, 1), fill(nw, 2), fill(c_out, 3));
            let kdim = c_in / group * k * k;
            let weights = ConvWeights::new(c_out, group, kdim, p.is_depthwise(), &w);
            for act in acts {
                let mut y1 = vec![f32::NAN; ny];
                let mut y2 = vec![0.0; ny];
                pool.install(|| conv_packed(&p, &x, &weights, Some(&b), act, &mut y1));
                conv_ref(&p, &x, &w, Some(&b), act, &mut y2);
                for (a, r) in y1.iter().zip(&y2) {
                    assert!(
                        (a - r).abs() <= 1e-4 * (1.0 + r.abs()),
                        "{act:?} {c_in}->{c_out}: {a} vs {r}"
                    );
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn conv_matches_reference((p, has_bias, seed) in params(), relu in any::<bool>()) {
            let (nx, nw, ny) = p.sizes();
            let x = fill(nx, seed);
            let w = fill(nw, seed ^ 3);
            let b = fill(p.c_out, seed ^ 9);
            let bias = has_bias.then_some(&b[..]);
            let act = if relu { Activation::Relu } else { Activation::None };
            let mut y1 = vec![f32::NAN; ny];
            let mut y2 = vec![0.0; ny];
            conv(&p, &x, &w, bias, act, &mut y1);
            conv_ref(&p, &x, &w, bias, act, &mut y2);
            for (a, r) in y1.iter().zip(&y2) {
                prop_assert!((a - r).abs() <= 1e-4 * (1.0 + r.abs()), "{a} vs {r}");
            }
        }

        #[test]
        fn depthwise3x3_matches_reference(
            batch in 1usize..3, ch in 2usize..5, ih in 1usize..12, iw in 1usize..40,
            stride in 1usize..3, pb in 0usize..2, pe in 0usize..2, has_bias in any::<bool>(),
            seed in any::<u32>(),
        ) {
            let (ih, iw) = (ih + 2 - pb.min(1) - pe.min(1), iw + 2 - pb.min(1) - pe.min(1));
            let (oh, ow) = (out_len(ih, 3, stride, 1, pb, pe), out_len(iw, 3, stride, 1, pb, pe));
            let window = Window::new(
                &[ih, iw], &[3, 3], &[stride, stride], &[1, 1], &[pb, pb], &[pe, pe], &[oh, ow],
            )
            .unwrap();
            let p = ConvParams { batch, c_in: ch, c_out: ch, group: ch, window };
            let (nx, nw, ny) = p.sizes();
            let x = fill(nx, seed);
            let w = fill(nw, seed ^ 3);
            let b = fill(ch, seed ^ 9);
            let bias = has_bias.then_some(&b[..]);
            let mut y1 = vec![f32::NAN; ny];
            let mut y2 = vec![0.0; ny];
            conv(&p, &x, &w, bias, Activation::None, &mut y1);
            conv_ref(&p, &x, &w, bias, Activation::None, &mut y2);
            for (a, r) in y1.iter().zip(&y2) {
                prop_assert!((a - r).abs() <= 1e-4 * (1.0 + r.abs()), "{a} vs {r}");
            }
        }

        #[test]
        fn conv_transpose_matches_reference((p, has_bias, seed) in params()) {
            // Reuse the forward geometry: y has the forward input's shape.
            let win = &p.window;
            let (nx, ny) = (p.batch * p.c_in * win.output_size(), p.batch * p.c_out * win.input_size());
            let nw = p.c_in * (p.c_out / p.group) * win.kernel_size();
            let x = fill(nx, seed);
            let w = fill(nw, seed ^ 3);
            let b = fill(p.c_out, seed ^ 9);
            let bias = has_bias.then_some(&b[..]);
            let mut y1 = vec![f32::NAN; ny];
            let mut y2 = vec![0.0; ny];
            conv_transpose(&p, &x, &w, bias, &mut y1);
            conv_transpose_ref(&p, &x, &w, bias, &mut y2);
            for (a, r) in y1.iter().zip(&y2) {
                prop_assert!((a - r).abs() <= 1e-4 * (1.0 + r.abs()), "{a} vs {r}");
            }
        }
    }
}
