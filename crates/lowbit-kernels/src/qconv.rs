//! Integer convolution (NCHW, u8 input × i8 weights → exact i32 sums), with the same fused
//! output stages as [`crate::qgemm`].
//!
//! A grouped convolution is one GEMM per image and group: the input is turned channels-last
//! once, its patches laid out as rows (`pixels × kernel·cg_in`, one contiguous copy per tap;
//! padded positions hold the input zero point so they add nothing once it is subtracted;
//! a 1×1 stride-1 convolution multiplies the channels-last input itself), times the group's
//! packed weights (reordered to taps × channels at load), written straight into the NCHW
//! output through a transposed store. A depthwise convolution (one input channel per
//! group, one output channel per group) has too little reuse for a GEMM and runs directly:
//! for each kernel tap, a whole output row accumulates in i32 (contiguous for stride 1, so
//! it vectorizes). [`qconv_ref`] is the loop both are tested against.
//!
//! With [`Layout::ChannelsLast`] (NHWC, 1-D and 2-D windows) input and output stay
//! channels-last: the GEMM reads a pointwise conv's input in place, writes its natural
//! `pixels × c_out` output rows directly, and no transposes happen at all. The engine keeps
//! activations channels-last between integer convs for this reason.

use crate::cpu::{self, Isa};
use crate::gemm::{Ptr, Trans};
use crate::qgemm::{qgemm, requantize_into, Output, PackedI8, Stage};
use crate::quantize::requantize_one;
use crate::window::{Plane, Window};
use rayon::prelude::*;

/// The weights of an integer convolution, prepared once at load.
#[derive(Clone, Debug)]
pub struct PackedConv {
    c_out: usize,
    cg_in: usize,
    groups: usize,
    kernel_size: usize,
    /// The depthwise kernels' level (the GEMM's is in its [`PackedI8`]s).
    depthwise_isa: Isa,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    /// One packed `(cg_in·kernel) × cg_out` operand per group.
    Gemm(Vec<PackedI8>),
    /// Weights minus their zero point, `c_out × kernel`, and channels-last (`kernel × c_out`,
    /// i16) for the 2-D kernel, plus that in [`dw_pairs`] order when `c_out` is a multiple of 16.
    Depthwise(Vec<i32>, Vec<i16>, Vec<i16>),
}

impl PackedConv {
    /// `w` is `[c_out, c_in / groups, kernel...]` (row-major, `kernel_size` taps per filter);
    /// `zero_points` holds one value or one per output channel. `isa` is the CPU level whose
    /// kernels will run: [`Isa::detect`] for this CPU (tests pack for each of
    /// [`Isa::available`]).
    ///
    /// # Panics
    /// When `w`'s length or `zero_points` disagree with the dims (caller bugs).
    pub fn pack(
        isa: Isa,
        w: &[i8],
        c_out: usize,
        cg_in: usize,
        kernel_size: usize,
        groups: usize,
        zero_points: &[i32],
    ) -> PackedConv {
        let kernels = cpu::Kernels::at(isa);
        assert_eq!(w.len(), c_out * cg_in * kernel_size, "PackedConv: weight length");
        assert!(groups >= 1 && c_out.is_multiple_of(groups), "PackedConv: groups");
        assert!(zero_points.len() == 1 || zero_points.len() == c_out, "PackedConv: zero points");
        let zp = |c: usize| if zero_points.len() == 1 { zero_points[0] } else { zero_points[c] };
        let cg_out = c_out / groups;
        let kind = if cg_in == 1 && cg_out == 1 {
            let wc: Vec<i32> =
                w.iter().enumerate().map(|(i, &v)| v as i32 - zp(i / kernel_size)).collect();
            let mut wl = vec![0i16; wc.len()];
            for c in 0..c_out {
                for t in 0..kernel_size {
                    wl[t * c_out + c] = wc[c * kernel_size + t] as i16;
                }
            }
            let wide = kernels.depthwise_i8 >= Isa::Avx512Vnni;
            let wp = if c_out.is_multiple_of(16) {
                dw_pairs(&wl, c_out, kernel_size, wide)
            } else {
                vec![]
            };
            Kind::Depthwise(wc, wl, wp)
        } else {
            let kk = cg_in * kernel_size;
            Kind::Gemm(
                (0..groups)
                    .map(|g| {
                        let wg = &w[g * cg_out * kk..(g + 1) * cg_out * kk];
                        // Reordered to the patches' order (taps outer, channels inner).
                        let mut wl = vec![0i8; wg.len()];
                        for o in 0..cg_out {
                            for c in 0..cg_in {
                                for t in 0..kernel_size {
                                    wl[o * kk + t * cg_in + c] = wg[o * kk + c * kernel_size + t];
                                }
                            }
                        }
                        let zps: Vec<i32> = (0..cg_out).map(|c| zp(g * cg_out + c)).collect();
                        // Stored `cg_out × kk`: the GEMM's `kk × cg_out` operand transposed.
                        PackedI8::pack_for(kernels.qgemm, Trans::Yes, kk, cg_out, &wl, kk, &zps)
                    })
                    .collect(),
            )
        };
        PackedConv { c_out, cg_in, groups, kernel_size, depthwise_isa: kernels.depthwise_i8, kind }
    }

    pub fn c_out(&self) -> usize {
        self.c_out
    }

    pub fn c_in(&self) -> usize {
        self.cg_in * self.groups
    }

    pub fn groups(&self) -> usize {
        self.groups
    }

    pub fn is_depthwise(&self) -> bool {
        matches!(self.kind, Kind::Depthwise(..))
    }
}

/// What happens to each output channel's exact sums.
pub enum ConvStage<'a> {
    I32 {
        out: &'a mut [i32],
    },
    /// As [`Stage::Requantize`], with `bias` and `multiplier` per output channel (multiplier
    /// may be one value).
    Requantize {
        bias: Option<&'a [i32]>,
        multiplier: &'a [f32],
        zero_point: i32,
        qmin: i32,
        qmax: i32,
        out: &'a mut [u8],
    },
}

/// How a batch of images is laid out in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[batch, channels, spatial...]` (ONNX's NCHW).
    ChannelsFirst,
    /// `[batch, spatial..., channels]` (NHWC); 1-D and 2-D windows only.
    ChannelsLast,
}

/// Where the channels-last rows of one group's input come from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// `cg_in` planes of `plane` pixels.
    Planes(&'a [u8]),
    /// Pixels of `stride` channels, of which the group's start at `first`.
    Pixels { x: &'a [u8], stride: usize, first: usize },
}

impl Source<'_> {
    /// Writes input row `iy` (`iw` pixels × `cg_in` channels, channels-last) into `dst`.
    #[inline]
    fn row(&self, iy: usize, iw: usize, plane: usize, cg_in: usize, dst: &mut [u8]) {
        match *self {
            Source::Planes(x) => {
                for c in 0..cg_in {
                    let src = &x[c * plane + iy * iw..][..iw];
                    for (ix, &v) in src.iter().enumerate() {
                        dst[ix * cg_in + c] = v;
                    }
                }
            }
            Source::Pixels { x, stride, first } if stride == cg_in => {
                dst[..iw * cg_in].copy_from_slice(&x[iy * iw * stride + first..][..iw * cg_in]);
            }
            Source::Pixels { x, stride, first } => {
                for ix in 0..iw {
                    let src = &x[(iy * iw + ix) * stride + first..][..cg_in];
                    copy_short(src, &mut dst[ix * cg_in..(ix + 1) * cg_in]);
                }
            }
        }
    }
}

/// `cg_in` planes of `plane` bytes, channels-last: `out[p · cg_in + c] = x[c · plane + p]`.
fn to_channels_last(x: &[u8], cg_in: usize, plane: usize, out: &mut [u8]) {
    if cg_in == 1 {
        out[..plane].copy_from_slice(&x[..plane]);
        return;
    }
    // Blocks of 8 pixels keep reads and writes within a few cache lines.
    const B: usize = 8;
    for p0 in (0..plane).step_by(B) {
        let pn = B.min(plane - p0);
        for c in 0..cg_in {
            let src = &x[c * plane + p0..][..pn];
            for (j, &v) in src.iter().enumerate() {
                out[(p0 + j) * cg_in + c] = v;
            }
        }
    }
}

/// `dst.copy_from_slice(src)` for the short runs of patches: whole 8-byte words inline (a
/// `memcpy` call per tap of a few channels cost more than the copy).
#[inline(always)]
fn copy_short(src: &[u8], dst: &mut [u8]) {
    let n = src.len();
    if n > 64 {
        dst.copy_from_slice(src);
        return;
    }
    let words = n / 8;
    for w in 0..words {
        let v: [u8; 8] = src[w * 8..w * 8 + 8].try_into().expect("8 bytes");
        dst[w * 8..w * 8 + 8].copy_from_slice(&v);
    }
    for (d, &v) in dst[words * 8..n].iter_mut().zip(&src[words * 8..n]) {
        *d = v;
    }
}

/// Rows and columns of a 2-D window's input plane padded so every tap of every output pixel
/// lands inside it (the leading padding included).
fn padded_plane(win: &Window) -> [usize; 2] {
    let extent = |d: usize| {
        let span = (win.output[d].max(1) - 1) * win.strides[d]
            + (win.kernel[d] - 1) * win.dilations[d]
            + 1;
        span.max(win.pads_begin[d] + win.input[d])
    };
    [extent(1), extent(2)]
}

/// [`patches`] for 1-D and 2-D windows, without a bounds check per tap: the input goes
/// channels-last into a buffer padded with the zero point (`xpad`, reused), so each kernel row
/// of a patch is one contiguous run of `kw · cg_in` bytes (dilation 1) or `kw` runs of `cg_in`.
fn patches_2d(win: &Window, cg_in: usize, x: Source, pad: u8, xpad: &mut Vec<u8>, rows: &mut [u8]) {
    let Plane { ih, iw, kh, kw, oh, ow, sy, sx, dy, dx, pt, pl } = win.plane();
    let [ph, pw] = padded_plane(win);
    xpad.clear();
    xpad.resize(ph * pw * cg_in, pad);
    let plane = ih * iw;
    // Row by row, so the writes of one input row (all channels) stay in L1.
    for iy in 0..ih {
        x.row(iy, iw, plane, cg_in, &mut xpad[((iy + pt) * pw + pl) * cg_in..][..iw * cg_in]);
    }
    let kk = kh * kw * cg_in;
    let run = kw * cg_in;
    for oy in 0..oh {
        for ox in 0..ow {
            let row = &mut rows[(oy * ow + ox) * kk..][..kk];
            for ky in 0..kh {
                let src = ((oy * sy + ky * dy) * pw + ox * sx) * cg_in;
                let dst = &mut row[ky * run..(ky + 1) * run];
                if dx == 1 {
                    copy_short(&xpad[src..src + run], dst);
                } else {
                    for kx in 0..kw {
                        let s = src + kx * dx * cg_in;
                        copy_short(&xpad[s..s + cg_in], &mut dst[kx * cg_in..(kx + 1) * cg_in]);
                    }
                }
            }
        }
    }
}

/// Fills `rows` (`pixels × kernel·cg_in`, taps outer, channels inner) with the patches of the
/// channels-last input `xl`: one contiguous copy of `cg_in` bytes per tap.
fn patches(win: &Window, cg_in: usize, xl: &[u8], pad: u8, rows: &mut [u8]) {
    let [id, ih, iw] = win.input;
    let [kd, kh, kw] = win.kernel;
    let [od, oh, ow] = win.output;
    let kk = cg_in * kd * kh * kw;
    let mut pix = 0;
    for oz in 0..od {
        for oy in 0..oh {
            for ox in 0..ow {
                let row = &mut rows[pix * kk..(pix + 1) * kk];
                let mut t = 0;
                for kz in 0..kd {
                    let iz = (oz * win.strides[0]) as isize + win.tap_offset(0, kz);
                    for ky in 0..kh {
                        let iy = (oy * win.strides[1]) as isize + win.tap_offset(1, ky);
                        let inside = iz >= 0 && iz < id as isize && iy >= 0 && iy < ih as isize;
                        let base = (iz.max(0) as usize * ih + iy.max(0) as usize) * iw;
                        for kx in 0..kw {
                            let ix = (ox * win.strides[2]) as isize + win.tap_offset(2, kx);
                            let ok = inside && ix >= 0 && ix < iw as isize;
                            if cg_in == 1 {
                                // One byte: a copy call per tap would cost more than the tap.
                                row[t] = if ok { xl[base + ix as usize] } else { pad };
                            } else {
                                let dst = &mut row[t..t + cg_in];
                                if ok {
                                    let src = (base + ix as usize) * cg_in;
                                    copy_short(&xl[src..src + cg_in], dst);
                                } else {
                                    dst.fill(pad);
                                }
                            }
                            t += cg_in;
                        }
                    }
                }
                pix += 1;
            }
        }
    }
}

/// Convolves `batch` images `x` (u8, zero point `x_zp`, laid out as `layout` says) with `w`
/// over the window `win`; the output has the same layout, through `stage`.
///
/// # Panics
/// When `x` or the output is too short, `x_zp` is not a u8 value, or a channels-last window
/// is 3-D (caller bugs).
pub fn qconv(
    win: &Window,
    batch: usize,
    x: &[u8],
    x_zp: i32,
    w: &PackedConv,
    stage: ConvStage<'_>,
    layout: Layout,
) {
    let (c_in, c_out, g) = (w.c_in(), w.c_out, w.groups);
    let (plane_in, plane_out) = (win.input_size(), win.output_size());
    assert!(x.len() >= batch * c_in * plane_in, "qconv: x is too short");
    assert!((0..=255).contains(&x_zp), "qconv: x zero point {x_zp}");
    assert_eq!(win.kernel_size(), w.kernel_size, "qconv: kernel size");
    let flat = win.input[0] == 1 && win.kernel[0] == 1;
    let last = layout == Layout::ChannelsLast;
    assert!(flat || !last, "qconv: channels-last needs a 1-D or 2-D window");
    let cg_out = c_out / g;
    let out_len = batch * c_out * plane_out;
    match (&w.kind, stage) {
        (Kind::Gemm(packed), stage) => {
            let kk = w.cg_in * w.kernel_size;
            let pointwise = win.is_pointwise();
            let padded = !pointwise && flat;
            // Channels-last pointwise input is the GEMM's operand as it is.
            let in_place = pointwise && last;
            let mut xl =
                if padded || in_place { Vec::new() } else { vec![0u8; plane_in * w.cg_in] };
            let mut rows = if pointwise { Vec::new() } else { vec![0u8; plane_out * kk] };
            let mut stage = stage;
            for b in 0..batch {
                let xb = &x[b * c_in * plane_in..][..c_in * plane_in];
                for (gi, pw) in packed.iter().enumerate() {
                    let src = match layout {
                        Layout::ChannelsFirst => {
                            Source::Planes(&xb[gi * w.cg_in * plane_in..][..w.cg_in * plane_in])
                        }
                        Layout::ChannelsLast => {
                            Source::Pixels { x: xb, stride: c_in, first: gi * w.cg_in }
                        }
                    };
                    if padded {
                        patches_2d(win, w.cg_in, src, x_zp as u8, &mut xl, &mut rows);
                    } else if !in_place {
                        match src {
                            Source::Planes(xg) => to_channels_last(xg, w.cg_in, plane_in, &mut xl),
                            // Only 1-D/2-D windows are channels-last: one "row" of all pixels.
                            Source::Pixels { .. } => {
                                src.row(0, plane_in, plane_in, w.cg_in, &mut xl)
                            }
                        }
                        if !pointwise {
                            patches(win, w.cg_in, &xl, x_zp as u8, &mut rows);
                        }
                    }
                    let (off, row_stride, col_stride) = match layout {
                        Layout::ChannelsFirst => {
                            ((b * c_out + gi * cg_out) * plane_out, 1, plane_out)
                        }
                        Layout::ChannelsLast => (b * c_out * plane_out + gi * cg_out, c_out, 1),
                    };
                    let per = |v: &[f32]| {
                        if v.len() == 1 {
                            (0, 1)
                        } else {
                            (gi * cg_out, cg_out)
                        }
                    };
                    let st = match &mut stage {
                        ConvStage::I32 { out } => {
                            assert!(out.len() >= out_len, "qconv: output is too short");
                            Stage::I32 { out: &mut out[off..] }
                        }
                        ConvStage::Requantize { bias, multiplier, zero_point, qmin, qmax, out } => {
                            assert!(out.len() >= out_len, "qconv: output is too short");
                            let (m0, mn) = per(multiplier);
                            Stage::Requantize {
                                bias: bias.map(|b| &b[gi * cg_out..(gi + 1) * cg_out]),
                                multiplier: &multiplier[m0..m0 + mn],
                                zero_point: *zero_point,
                                qmin: *qmin,
                                qmax: *qmax,
                                out: &mut out[off..],
                            }
                        }
                    };
                    let o = Output { stage: st, row_stride, col_stride };
                    if in_place {
                        qgemm(plane_out, &xb[gi * w.cg_in..], c_in, x_zp, pw, o);
                    } else {
                        qgemm(plane_out, if pointwise { &xl } else { &rows }, kk, x_zp, pw, o);
                    }
                }
            }
        }
        (Kind::Depthwise(_, wl, wp), stage) if flat => {
            let isa = w.depthwise_isa;
            let sink = match stage {
                ConvStage::I32 { out } => {
                    assert!(out.len() >= out_len, "qconv: output is too short");
                    DwSink::I32(Ptr(out.as_mut_ptr()))
                }
                ConvStage::Requantize { bias, multiplier, zero_point, qmin, qmax, out } => {
                    assert!(out.len() >= out_len, "qconv: output is too short");
                    let m: Vec<f32> = (0..c_out)
                        .map(|c| if multiplier.len() == 1 { multiplier[0] } else { multiplier[c] })
                        .collect();
                    let bv: Vec<i32> = (0..c_out).map(|c| bias.map_or(0, |b| b[c])).collect();
                    DwSink::Requantize {
                        bias: bv,
                        mult: m,
                        zero_point,
                        qmin,
                        qmax,
                        out: Ptr(out.as_mut_ptr()),
                    }
                }
            };
            for b in 0..batch {
                let xb = &x[b * c_in * plane_in..(b + 1) * c_in * plane_in];
                let w = DwWeights { taps: wl, pairs: wp };
                let base = b * c_out * plane_out;
                let img = DwImage { win, c: c_out, x: xb, x_zp, w, sink: &sink, base };
                depthwise_2d(&img, layout, isa);
            }
        }
        (Kind::Depthwise(wc, ..), ConvStage::I32 { out }) => {
            assert!(out.len() >= out_len, "qconv: output is too short");
            out[..out_len].par_chunks_mut(plane_out).enumerate().for_each(|(bc, y)| {
                let c = bc % c_out;
                let xc = &x[bc * plane_in..(bc + 1) * plane_in];
                depthwise_plane(
                    win,
                    xc,
                    x_zp,
                    &wc[c * w.kernel_size..][..w.kernel_size],
                    |_, row, acc| y[row * win.output[2]..][..acc.len()].copy_from_slice(acc),
                );
            });
        }
        (
            Kind::Depthwise(wc, ..),
            ConvStage::Requantize { bias, multiplier, zero_point, qmin, qmax, out },
        ) => {
            assert!(out.len() >= out_len, "qconv: output is too short");
            out[..out_len].par_chunks_mut(plane_out).enumerate().for_each(|(bc, y)| {
                let c = bc % c_out;
                let xc = &x[bc * plane_in..(bc + 1) * plane_in];
                let m = if multiplier.len() == 1 { multiplier[0] } else { multiplier[c] };
                let bv = bias.map_or(0, |b| b[c]);
                depthwise_plane(
                    win,
                    xc,
                    x_zp,
                    &wc[c * w.kernel_size..][..w.kernel_size],
                    |_, row, acc| {
                        let dst = &mut y[row * win.output[2]..][..acc.len()];
                        for (d, &v) in dst.iter_mut().zip(acc) {
                            *d =
                                requantize_one(v.wrapping_add(bv), m, zero_point, qmin, qmax) as u8;
                        }
                    },
                );
            });
        }
    }
}

/// A depthwise convolution's weights as the 2-D kernel reads them.
#[derive(Clone, Copy)]
struct DwWeights<'a> {
    /// `kernel × c` (channels-last), minus the zero points.
    taps: &'a [i16],
    /// [`dw_pairs`] of `taps`, or empty.
    pairs: &'a [i16],
}

/// Depthwise weights (`taps × c`, `c` a multiple of 16) in the order of the row kernels
/// (`x86_64::dw_row`): for each pair of taps `(2p, 2p + 1)` (a zero tap past the end) and
/// block of 16 channels, the 16 `(w[2p][ch], w[2p+1][ch])` pairs of channels `0-3, 8-11` then
/// of `4-7, 12-15` — what `vpunpcklwd` / `vpunpckhwd` make of the two taps' inputs, ready for
/// `vpmaddwd`. `wide` (the AVX-512 kernel) takes whole 32-channel blocks first, each as the
/// unpacks of zmm registers order them: the first halves of its two 16-channel blocks, then
/// the second halves.
fn dw_pairs(wl: &[i16], c: usize, taps: usize, wide: bool) -> Vec<i16> {
    let mut out = Vec::with_capacity(taps.div_ceil(2) * c * 2);
    let w = |t: usize, ch: usize| if t < taps { wl[t * c + ch] } else { 0 };
    let wide_blocks = if wide { c / 32 } else { 0 };
    for p in 0..taps.div_ceil(2) {
        let mut quarter = |base: usize, half: usize| {
            for lane in [0, 8] {
                for j in 0..4 {
                    let ch = base + lane + half + j;
                    out.extend([w(2 * p, ch), w(2 * p + 1, ch)]);
                }
            }
        };
        for b in 0..wide_blocks {
            for half in [0, 4] {
                for sub in [0, 16] {
                    quarter(b * 32 + sub, half);
                }
            }
        }
        for b in wide_blocks * 2..c / 16 {
            for half in [0, 4] {
                quarter(b * 16, half);
            }
        }
    }
    out
}

/// Taps of the largest kernel the SIMD depthwise kernels take (7×7), rounded up to pairs.
const DW_MAX_TAPS: usize = 50;

#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use crate::qgemm::x86_64::{pack16, requantize8};
    use std::arch::x86_64::*;

    /// One output row of a channels-last depthwise convolution, as the row kernels read it.
    pub(super) struct DwRow<'a> {
        /// The `kh` input rows under the kernel (`iw · c` bytes each; a row of zero points
        /// where the kernel hangs over the top or bottom edge).
        pub rows: &'a [*const u8],
        /// `c` zero-point bytes: what a tap left or right of the input reads.
        pub zp_pixel: *const u8,
        pub iw: usize,
        pub ow: usize,
        pub kw: usize,
        pub sx: usize,
        pub dx: usize,
        pub pl: usize,
        pub c: usize,
        /// [`super::dw_pairs`] of the weights.
        pub pairs: *const i16,
        /// Added to each channel's raw sum: `bias - x_zp · Σ_t w[t]` (`c` values).
        pub adj: *const i32,
    }

    /// Where a row kernel's `ow · c` sums go.
    pub(super) enum DwOut {
        I32(*mut i32),
        Requantize { mult: *const f32, zero_point: i32, qmin: i32, qmax: i32, out: *mut u8 },
    }

    /// `$lo += madd(unpacklo(x0, x1), w)` and `$hi += madd(unpackhi(x0, x1), w + $half)` for
    /// the inputs `x0`, `x1` of tap pair `$p` at channel `$off`, widened to i16: one step of
    /// the row kernels, for the register width whose intrinsics are listed.
    macro_rules! madd_tap_pair {
        ($lo:ident, $hi:ident, $ptrs:expr, $p:expr, $off:expr, $w:expr, $half:expr,
         [$xload:ident, $widen:ident, $wload:ident, $add:ident, $madd:ident, $unlo:ident,
          $unhi:ident]) => {
            // SAFETY: per the kernels' contract: each tap readable for `c` bytes, `$w` inside
            // the pairs.
            unsafe {
                let x0 = $widen($xload($ptrs[2 * $p].add($off) as *const _));
                let x1 = $widen($xload($ptrs[2 * $p + 1].add($off) as *const _));
                let (wlo, whi) = ($wload($w as *const _), $wload($w.add($half) as *const _));
                $lo = $add($lo, $madd($unlo(x0, x1), wlo));
                $hi = $add($hi, $madd($unhi(x0, x1), whi));
            }
        };
    }

    /// Points `$ptrs[t]` at the `c` input bytes of tap `t` of output pixel `$ox` (the pixel
    /// of zero points for taps left or right of the input).
    macro_rules! tap_pointers {
        ($r:expr, $ptrs:expr, $ox:expr) => {{
            let (lo_ix, hi_ix) = ($r.pl as isize, ($r.iw + $r.pl) as isize);
            let x0 = ($ox * $r.sx) as isize;
            for (ky, &row) in $r.rows.iter().enumerate() {
                for kx in 0..$r.kw {
                    let ix = x0 + (kx * $r.dx) as isize;
                    $ptrs[ky * $r.kw + kx] = if ix >= lo_ix && ix < hi_ix {
                        // SAFETY: inside the row.
                        unsafe { row.add((ix - lo_ix) as usize * $r.c) }
                    } else {
                        $r.zp_pixel
                    };
                }
            }
        }};
    }

    /// The 16 channels from `$ch0` of output pixel `$ox` on ymm registers (weights of that
    /// block at `pairs + p · 2c + $ch0 · 2` for tap pair `p`, in [`super::dw_pairs`]' 16-channel
    /// order).
    macro_rules! block16 {
        ($r:expr, $out:expr, $ptrs:expr, $npairs:expr, $ox:expr, $ch0:expr) => {{
            let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for p in 0..$npairs {
                let w = $r.pairs.wrapping_add(p * 2 * $r.c + 2 * $ch0);
                madd_tap_pair!(
                    lo,
                    hi,
                    $ptrs,
                    p,
                    $ch0,
                    w,
                    16,
                    [
                        _mm_loadu_si128,
                        _mm256_cvtepu8_epi16,
                        _mm256_loadu_si256,
                        _mm256_add_epi32,
                        _mm256_madd_epi16,
                        _mm256_unpacklo_epi16,
                        _mm256_unpackhi_epi16
                    ]
                );
            }
            // lo holds channels 0-3 | 8-11, hi 4-7 | 12-15.
            let ch = $ox * $r.c + $ch0;
            // SAFETY: 16 lanes of adj, mult and the output per the contract.
            unsafe {
                let adj = $r.adj.add($ch0) as *const __m256i;
                let v0 = _mm256_add_epi32(
                    _mm256_permute2x128_si256(lo, hi, 0x20),
                    _mm256_loadu_si256(adj),
                );
                let v1 = _mm256_add_epi32(
                    _mm256_permute2x128_si256(lo, hi, 0x31),
                    _mm256_loadu_si256(adj.add(1)),
                );
                match *$out {
                    DwOut::I32(o) => {
                        let o = o.add(ch) as *mut __m256i;
                        _mm256_storeu_si256(o, v0);
                        _mm256_storeu_si256(o.add(1), v1);
                    }
                    DwOut::Requantize { mult, zero_point, qmin, qmax, out } => {
                        let zp = _mm256_set1_epi32(zero_point);
                        let (lo, hi) = (_mm256_set1_epi32(qmin), _mm256_set1_epi32(qmax));
                        let m = mult.add($ch0);
                        let q0 = requantize8!(v0, _mm256_loadu_ps(m), zp, lo, hi);
                        let q1 = requantize8!(v1, _mm256_loadu_ps(m.add(8)), zp, lo, hi);
                        _mm_storeu_si128(out.add(ch) as *mut __m128i, pack16!(q0, q1, qmin));
                    }
                }
            }
        }};
    }

    /// One output row: `Σ_t x_t[ch] · w[t][ch] + adj[ch]` per pixel and channel (raw u8
    /// inputs, the zero point folded into `adj`: a tap in the padding reads zero points, so it
    /// adds `x_zp · w` that `adj` takes away again), two taps per `vpmaddwd`, 16 channels at a
    /// time, requantized in registers when `out` says so.
    ///
    /// # Safety
    /// AVX2; `c` a multiple of 16; `rows.len() · kw ≤ DW_MAX_TAPS`; every row readable for
    /// `iw · c` bytes and `zp_pixel` for `c`; `pairs` holds [`super::dw_pairs`] (16-channel
    /// blocks) of the `(rows.len() · kw).div_ceil(2)` tap pairs; `adj` (and `mult`) `c`
    /// values; `out` writable for `ow · c`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dw_row(r: &DwRow, out: &DwOut) {
        let npairs = (r.rows.len() * r.kw).div_ceil(2);
        // The pad tap past an odd count reads zero points against zero weights.
        let mut ptrs = [r.zp_pixel; super::DW_MAX_TAPS];
        for ox in 0..r.ow {
            tap_pointers!(r, ptrs, ox);
            for b in 0..r.c / 16 {
                block16!(r, out, ptrs, npairs, ox, b * 16);
            }
        }
    }

    /// [`dw_row`] with 32 channels per zmm register (AVX-512 BW), the last 16 (when `c` is an
    /// odd multiple of 16) on ymm.
    ///
    /// # Safety
    /// As [`dw_row`], with AVX-512 F/BW/VL and `pairs` in [`super::dw_pairs`]' 32-channel
    /// order.
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn dw_row_avx512(r: &DwRow, out: &DwOut) {
        let npairs = (r.rows.len() * r.kw).div_ceil(2);
        let mut ptrs = [r.zp_pixel; super::DW_MAX_TAPS];
        let wide = r.c / 32;
        // Output lanes from lo = [0-3 | 8-11 | 16-19 | 24-27], hi = [4-7 | 12-15 | 20-23 | 28-31]
        // (in 4-lane units: lo = 0, 2, 4, 6 and hi = 1, 3, 5, 7).
        let first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
        let second =
            _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
        let (fmin, fmax) = (_mm512_set1_ps(-1_073_741_824.0), _mm512_set1_ps(1_073_741_824.0));
        for ox in 0..r.ow {
            tap_pointers!(r, ptrs, ox);
            for b in 0..wide {
                let (mut lo, mut hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                for p in 0..npairs {
                    let w = r.pairs.wrapping_add(p * 2 * r.c + b * 64);
                    madd_tap_pair!(
                        lo,
                        hi,
                        ptrs,
                        p,
                        b * 32,
                        w,
                        32,
                        [
                            _mm256_loadu_si256,
                            _mm512_cvtepu8_epi16,
                            _mm512_loadu_si512,
                            _mm512_add_epi32,
                            _mm512_madd_epi16,
                            _mm512_unpacklo_epi16,
                            _mm512_unpackhi_epi16
                        ]
                    );
                }
                let ch = ox * r.c + b * 32;
                for (h, idx) in [first, second].into_iter().enumerate() {
                    // SAFETY: 16 lanes of adj, mult and the output per the contract.
                    unsafe {
                        let v = _mm512_add_epi32(
                            _mm512_permutex2var_epi32(lo, idx, hi),
                            _mm512_loadu_si512(r.adj.add(b * 32 + 16 * h) as *const _),
                        );
                        match *out {
                            DwOut::I32(o) => _mm512_storeu_si512(o.add(ch + 16 * h) as *mut _, v),
                            DwOut::Requantize { mult, zero_point, qmin, qmax, out } => {
                                // requantize_one's rule, as in the GEMM's VNNI epilogue.
                                let m = _mm512_loadu_ps(mult.add(b * 32 + 16 * h));
                                let x = _mm512_mul_ps(_mm512_cvtepi32_ps(v), m);
                                let x = _mm512_min_ps(_mm512_max_ps(x, fmin), fmax);
                                let q = _mm512_add_epi32(
                                    _mm512_cvtps_epi32(x),
                                    _mm512_set1_epi32(zero_point),
                                );
                                let q = _mm512_min_epi32(
                                    _mm512_max_epi32(q, _mm512_set1_epi32(qmin)),
                                    _mm512_set1_epi32(qmax),
                                );
                                let bytes = if qmin >= 0 {
                                    _mm512_cvtusepi32_epi8(q)
                                } else {
                                    _mm512_cvtsepi32_epi8(q)
                                };
                                _mm_storeu_si128(out.add(ch + 16 * h) as *mut __m128i, bytes);
                            }
                        }
                    }
                }
            }
            if !r.c.is_multiple_of(32) {
                block16!(r, out, ptrs, npairs, ox, wide * 32);
            }
        }
    }
}

enum DwSink {
    I32(Ptr<i32>),
    Requantize {
        bias: Vec<i32>,
        mult: Vec<f32>,
        zero_point: i32,
        qmin: i32,
        qmax: i32,
        out: Ptr<u8>,
    },
}

/// One image of a 2-D depthwise convolution: `c` channels of input `x` (zero point `x_zp`),
/// its output starting at `base` in the sink.
#[derive(Clone, Copy)]
struct DwImage<'a> {
    win: &'a Window,
    c: usize,
    x: &'a [u8],
    x_zp: i32,
    w: DwWeights<'a>,
    sink: &'a DwSink,
    base: usize,
}

/// A 2-D depthwise convolution of one image, channels-last inside, so every tap of every
/// output pixel is one multiply-add over a contiguous run of `c` channels (SIMD over channels;
/// a plane-at-a-time loop spends its time on row edges when planes are 7×7). Channels-last
/// input with whole blocks of 16 channels takes the SIMD row kernels; otherwise channels-first
/// input is padded with zeros (after subtracting its zero point) into a `rows × cols × c` i16
/// buffer first. Output pixel `p` of channel `ch` goes to `base + ch · pixels + p` (channels
/// first) or `base + p · c + ch` (channels last).
fn depthwise_2d(img: &DwImage, layout: Layout, isa: Isa) {
    let DwImage { win, c, x, x_zp, w, sink, base } = *img;
    let wl = w.taps;
    let Plane { ih, iw, kh, kw, oh, ow, sy, sx, dy, dx, pt, pl } = win.plane();
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2
        && layout == Layout::ChannelsLast
        && !w.pairs.is_empty()
        && kh * kw <= DW_MAX_TAPS
    {
        return depthwise_2d_simd(img, isa);
    }
    let _ = isa;
    let [rows, cols] = padded_plane(win);
    let plane = ih * iw;
    // Channels-first input is made channels-last once, padded (zero after subtracting the
    // zero point), so taps need no bounds checks; channels-last input is read in place and
    // taps that fall in the padding are skipped.
    let mut xp = Vec::new();
    if layout == Layout::ChannelsFirst {
        xp = vec![0i16; rows * cols * c];
        // Row by row, so the writes of one input row (all channels) stay in L1.
        for iy in 0..ih {
            let dst = &mut xp[((iy + pt) * cols + pl) * c..][..iw * c];
            for ch in 0..c {
                let src = &x[ch * plane + iy * iw..][..iw];
                for (ix, &v) in src.iter().enumerate() {
                    dst[ix * c + ch] = v as i16 - x_zp as i16;
                }
            }
        }
    }
    let pixels = oh * ow;
    let row = |oy: usize| {
        let mut acc = vec![0i32; ow * c];
        for ox in 0..ow {
            let a = &mut acc[ox * c..(ox + 1) * c];
            for ky in 0..kh {
                let iy = (oy * sy + ky * dy) as isize - pt as isize;
                if layout == Layout::ChannelsLast && !(0..ih as isize).contains(&iy) {
                    continue;
                }
                for kx in 0..kw {
                    let wt = &wl[(ky * kw + kx) * c..][..c];
                    if layout == Layout::ChannelsFirst {
                        let src = &xp[((oy * sy + ky * dy) * cols + ox * sx + kx * dx) * c..][..c];
                        for ((a, &v), &w) in a.iter_mut().zip(src).zip(wt) {
                            *a = a.wrapping_add(v as i32 * w as i32);
                        }
                        continue;
                    }
                    let ix = (ox * sx + kx * dx) as isize - pl as isize;
                    if !(0..iw as isize).contains(&ix) {
                        continue;
                    }
                    let src = &x[(iy as usize * iw + ix as usize) * c..][..c];
                    for ((a, &v), &w) in a.iter_mut().zip(src).zip(wt) {
                        *a = a.wrapping_add((v as i32 - x_zp) * w as i32);
                    }
                }
            }
        }
        let p0 = oy * ow;
        // SAFETY: every index below lies in this image's output (asserted by the caller);
        // rows write disjoint pixels.
        unsafe {
            match (sink, layout) {
                (DwSink::I32(out), Layout::ChannelsFirst) => {
                    for (ox, a) in acc.chunks(c).enumerate() {
                        for (ch, &v) in a.iter().enumerate() {
                            *out.get().add(base + p0 + ox + ch * pixels) = v;
                        }
                    }
                }
                (DwSink::I32(out), Layout::ChannelsLast) => {
                    let dst = out.get().add(base + p0 * c);
                    std::ptr::copy_nonoverlapping(acc.as_ptr(), dst, acc.len());
                }
                (DwSink::Requantize { bias, mult, zero_point, qmin, qmax, out }, _) => {
                    let mut q = vec![0u8; c];
                    for (ox, a) in acc.chunks(c).enumerate() {
                        if layout == Layout::ChannelsLast {
                            let dst = std::slice::from_raw_parts_mut(
                                out.get().add(base + (p0 + ox) * c),
                                c,
                            );
                            requantize_into(a, bias, mult, *zero_point, *qmin, *qmax, dst);
                            continue;
                        }
                        requantize_into(a, bias, mult, *zero_point, *qmin, *qmax, &mut q);
                        for (ch, &v) in q.iter().enumerate() {
                            *out.get().add(base + p0 + ox + ch * pixels) = v;
                        }
                    }
                }
            }
        }
    };
    if rayon::current_num_threads() > 1 && pixels * c * kh * kw >= 1 << 17 {
        (0..oh).into_par_iter().for_each(row);
    } else {
        (0..oh).for_each(row);
    }
}

/// [`depthwise_2d`] on channels-last input and output with `c` a multiple of 16: one
/// [`x86_64::dw_row`] (AVX2) or [`x86_64::dw_row_avx512`] call per output row, reading the
/// input in place (rows above or below it read a row of zero points).
#[cfg(target_arch = "x86_64")]
fn depthwise_2d_simd(img: &DwImage, isa: Isa) {
    let DwImage { win, c, x, x_zp, w, sink, base } = *img;
    let Plane { ih, iw, kh, kw, oh, ow, sy, sx, dy, dx, pt, pl } = win.plane();
    assert!(x.len() >= ih * iw * c && w.pairs.len() >= (kh * kw).div_ceil(2) * c * 2);
    // Raw u8 products: the zero point's share, x_zp · Σ_t w[t][ch], comes off once here.
    let mut adj = match sink {
        DwSink::Requantize { bias, .. } => bias.clone(),
        DwSink::I32(_) => vec![0i32; c],
    };
    for t in w.taps.chunks_exact(c) {
        for (a, &wv) in adj.iter_mut().zip(t) {
            *a = a.wrapping_sub(x_zp.wrapping_mul(wv as i32));
        }
    }
    let zp_row = vec![x_zp as u8; iw.max(1) * c];
    let row = |oy: usize| {
        let mut rows = [zp_row.as_ptr(); DW_MAX_TAPS];
        for (ky, r) in rows.iter_mut().enumerate().take(kh) {
            let iy = (oy * sy + ky * dy) as isize - pt as isize;
            if (0..ih as isize).contains(&iy) {
                *r = x[iy as usize * iw * c..][..iw * c].as_ptr();
            }
        }
        let r = x86_64::DwRow {
            rows: &rows[..kh],
            zp_pixel: zp_row.as_ptr(),
            iw,
            ow,
            kw,
            sx,
            dx,
            pl,
            c,
            pairs: w.pairs.as_ptr(),
            adj: adj.as_ptr(),
        };
        // SAFETY: the caller asserted the output holds this image's `oh · ow · c` values;
        // rows write disjoint pixels.
        let out = unsafe {
            match sink {
                DwSink::I32(o) => x86_64::DwOut::I32(o.get().add(base + oy * ow * c)),
                DwSink::Requantize { mult, zero_point, qmin, qmax, out, .. } => {
                    x86_64::DwOut::Requantize {
                        mult: mult.as_ptr(),
                        zero_point: *zero_point,
                        qmin: *qmin,
                        qmax: *qmax,
                        out: out.get().add(base + oy * ow * c),
                    }
                }
            }
        };
        // SAFETY: the caller checked the level (and packed the pairs for it); `c` is a
        // multiple of 16 (pairs exist); at most DW_MAX_TAPS taps; rows and zp_row hold
        // `iw · c` bytes; adj and mult `c` values.
        unsafe {
            if isa >= Isa::Avx512Vnni {
                x86_64::dw_row_avx512(&r, &out)
            } else {
                x86_64::dw_row(&r, &out)
            }
        };
    };
    if rayon::current_num_threads() > 1 && oh * ow * c * kh * kw >= 1 << 17 {
        (0..oh).into_par_iter().for_each(row);
    } else {
        (0..oh).for_each(row);
    }
}

/// One channel of a depthwise convolution; `emit(z, row, sums)` receives each output row
/// (`row` counts rows across the depth dim).
fn depthwise_plane(
    win: &Window,
    x: &[u8],
    x_zp: i32,
    w: &[i32],
    mut emit: impl FnMut(usize, usize, &[i32]),
) {
    let [id, ih, iw] = win.input;
    let [kd, kh, kw] = win.kernel;
    let [od, oh, ow] = win.output;
    let sx = win.strides[2];
    let mut acc = vec![0i32; ow];
    // x - zp once per plane, so the inner loop is a multiply-add on i32 lanes.
    let xc: Vec<i32> = x[..id * ih * iw].iter().map(|&v| v as i32 - x_zp).collect();
    for oz in 0..od {
        for oy in 0..oh {
            acc.fill(0);
            for kz in 0..kd {
                let iz = (oz * win.strides[0]) as isize + win.tap_offset(0, kz);
                if iz < 0 || iz >= id as isize {
                    continue;
                }
                for ky in 0..kh {
                    let iy = (oy * win.strides[1]) as isize + win.tap_offset(1, ky);
                    if iy < 0 || iy >= ih as isize {
                        continue;
                    }
                    let xrow = &xc[(iz as usize * ih + iy as usize) * iw..][..iw];
                    for kx in 0..kw {
                        let wv = w[(kz * kh + ky) * kw + kx];
                        let off = win.tap_offset(2, kx);
                        let (lo, hi) = win.valid_range(2, off);
                        if lo >= hi {
                            continue;
                        }
                        let start = (lo * sx) as isize + off;
                        if sx == 1 {
                            let src = &xrow[start as usize..start as usize + (hi - lo)];
                            for (a, &v) in acc[lo..hi].iter_mut().zip(src) {
                                *a = a.wrapping_add(v.wrapping_mul(wv));
                            }
                        } else {
                            for (j, a) in acc[lo..hi].iter_mut().enumerate() {
                                let v = xrow[start as usize + j * sx];
                                *a = a.wrapping_add(v.wrapping_mul(wv));
                            }
                        }
                    }
                }
            }
            emit(oz, oz * oh + oy, &acc);
        }
    }
}

/// The textbook loop: `[batch, c_out, output...]` exact sums of
/// `(x - x_zp) · (w - w_zp[c])` (padding contributes nothing).
#[allow(clippy::too_many_arguments)]
pub fn qconv_ref(
    win: &Window,
    batch: usize,
    c_in: usize,
    x: &[u8],
    x_zp: i32,
    w: &[i8],
    c_out: usize,
    groups: usize,
    w_zp: &[i32],
) -> Vec<i32> {
    let [id, ih, iw] = win.input;
    let [kd, kh, kw] = win.kernel;
    let [od, oh, ow] = win.output;
    let (cg_in, cg_out) = (c_in / groups, c_out / groups);
    let mut y = Vec::with_capacity(batch * c_out * od * oh * ow);
    for b in 0..batch {
        for co in 0..c_out {
            let zw = if w_zp.len() == 1 { w_zp[0] } else { w_zp[co] };
            for oz in 0..od {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0i32;
                        for ci in 0..cg_in {
                            let c = (co / cg_out) * cg_in + ci;
                            for kz in 0..kd {
                                for ky in 0..kh {
                                    for kx in 0..kw {
                                        let iz =
                                            (oz * win.strides[0]) as isize + win.tap_offset(0, kz);
                                        let iy =
                                            (oy * win.strides[1]) as isize + win.tap_offset(1, ky);
                                        let ix =
                                            (ox * win.strides[2]) as isize + win.tap_offset(2, kx);
                                        if iz < 0 || iy < 0 || ix < 0 {
                                            continue;
                                        }
                                        let (iz, iy, ix) = (iz as usize, iy as usize, ix as usize);
                                        if iz >= id || iy >= ih || ix >= iw {
                                            continue;
                                        }
                                        let xv =
                                            x[(((b * c_in + c) * id + iz) * ih + iy) * iw + ix];
                                        let wv =
                                            w[(((co * cg_in + ci) * kd + kz) * kh + ky) * kw + kx];
                                        acc += (xv as i32 - x_zp) * (wv as i32 - zw);
                                    }
                                }
                            }
                        }
                        y.push(acc);
                    }
                }
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `[n, c, plane]` → `[n, plane, c]`.
    fn nhwc<T: Copy>(x: &[T], n: usize, c: usize, plane: usize) -> Vec<T> {
        let mut y = x.to_vec();
        for b in 0..n {
            for ch in 0..c {
                for p in 0..plane {
                    y[(b * plane + p) * c + ch] = x[(b * c + ch) * plane + p];
                }
            }
        }
        y
    }

    /// `[n, plane, c]` → `[n, c, plane]`.
    fn nchw<T: Copy>(x: &[T], n: usize, c: usize, plane: usize) -> Vec<T> {
        let mut y = x.to_vec();
        for b in 0..n {
            for ch in 0..c {
                for p in 0..plane {
                    y[(b * c + ch) * plane + p] = x[(b * plane + p) * c + ch];
                }
            }
        }
        y
    }

    fn geometry(
    ) -> impl Strategy<Value = (usize, usize, usize, [usize; 2], [usize; 2], usize, usize, usize)>
    {
        // (batch, groups, channels per group in, (h, w), (kh, kw), stride, pad, dilation)
        (
            1usize..3,
            1usize..4,
            1usize..4,
            [1usize..11, 1usize..11],
            [1usize..6, 1usize..6],
            1usize..3,
            0usize..3,
            1usize..3,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(150))]

        /// GEMM, grouped and depthwise convolutions equal the textbook loop exactly, and the
        /// requantize stage equals the scalar rule on those sums.
        #[test]
        fn integer_conv_matches_the_reference(
            (batch, groups, cg_in, hw, kern, stride, pad, dil) in geometry(),
            depthwise in any::<bool>(),
            cg_out in 1usize..5,
            seed in any::<u64>(),
            x_zp in 0i32..256,
            per_channel in any::<bool>(),
            channels_last in any::<bool>(),
            wide in any::<bool>(),
        ) {
            let (cg_in, cg_out) = if depthwise { (1, 1) } else { (cg_in, cg_out) };
            // 16, 32 or 48 depthwise channels take the AVX2 kernel (whole blocks of 16).
            let groups = if depthwise && wide { groups * 16 } else { groups };
            let (c_in, c_out) = (cg_in * groups, cg_out * groups);
            let ext = |i: usize| (kern[i] - 1) * dil + 1;
            prop_assume!(hw[0] + 2 * pad >= ext(0) && hw[1] + 2 * pad >= ext(1));
            let out = [(hw[0] + 2 * pad - ext(0)) / stride + 1, (hw[1] + 2 * pad - ext(1)) / stride + 1];
            let win = Window::new(&hw, &kern, &[stride; 2], &[dil; 2], &[pad; 2], &[pad; 2], &out).unwrap();
            let mut s = seed | 1;
            let mut next = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
            let x: Vec<u8> = (0..batch * c_in * hw[0] * hw[1]).map(|_| next() as u8).collect();
            let ks = kern[0] * kern[1];
            let w: Vec<i8> = (0..c_out * cg_in * ks).map(|_| next() as i8).collect();
            let w_zp: Vec<i32> = if per_channel { (0..c_out).map(|_| (next() % 9) as i32 - 4).collect() } else { vec![0] };
            let want = qconv_ref(&win, batch, c_in, &x, x_zp, &w, c_out, groups, &w_zp);
            let plane = out[0] * out[1];
            // Channels-last runs take and give NHWC; compared in NCHW order.
            let (layout, xs) = if channels_last {
                (Layout::ChannelsLast, nhwc(&x, batch, c_in, hw[0] * hw[1]))
            } else {
                (Layout::ChannelsFirst, x.clone())
            };
            let back = |y: &[i32]| if channels_last { nchw(y, batch, c_out, plane) } else { y.to_vec() };
            let bias: Vec<i32> = (0..c_out).map(|c| c as i32 * 37 - 50).collect();
            let mult: Vec<f32> = (0..c_out).map(|c| 0.001 + c as f32 * 0.0003).collect();
            for isa in Isa::available() {
                let packed = PackedConv::pack(isa, &w, c_out, cg_in, ks, groups, &w_zp);
                prop_assert_eq!(packed.is_depthwise(), cg_in == 1 && cg_out == 1);
                let mut got = vec![0i32; want.len()];
                qconv(&win, batch, &xs, x_zp, &packed, ConvStage::I32 { out: &mut got }, layout);
                prop_assert_eq!(&back(&got), &want, "{:?}", isa);
                let mut q = vec![0u8; want.len()];
                qconv(&win, batch, &xs, x_zp, &packed, ConvStage::Requantize {
                    bias: Some(&bias), multiplier: &mult, zero_point: 7, qmin: 0, qmax: 255, out: &mut q,
                }, layout);
                let q: Vec<i32> = back(&q.iter().map(|&v| v as i32).collect::<Vec<_>>());
                for (i, (&qv, &acc)) in q.iter().zip(&want).enumerate() {
                    let c = (i / plane) % c_out;
                    prop_assert_eq!(qv, requantize_one(acc + bias[c], mult[c], 7, 0, 255), "{:?}", isa);
                }
            }
        }
    }
}
