//! f32 depthwise convolution (one input and one output channel per group, NCHW, 1-D to 3-D):
//! `y = act(bias + conv(x, w))` per channel plane, for any kernel, stride, dilation and padding.
//!
//! Each input plane is copied once into its zero-padded *phases*: for strides `s`, phase `r`
//! holds the padded positions `i * s + r`. In that layout every kernel tap reads its phase at
//! a fixed offset from the output's flat index `j = (oz * H + oy) * W + ox` (`H`, `W`: the
//! phase dims), so a plane is one contiguous sum of shifted vectors, `out[j] = bias +
//! Σ_t w[t] * phase_t[j + off_t]`: no bounds logic, no strided reads, and rows too short for a
//! vector share one. The columns (and rows, in 3-D) past the output are computed and dropped
//! when the plane is copied out.

use crate::conv::{with_scratch, ConvParams};
use crate::cpu::Isa;
use crate::gemm::Activation;
use crate::window::Window;
use std::mem::MaybeUninit;

/// Outputs per step of the widest kernel (4 AVX-512 vectors): the slack past each phase and
/// the output buffer that a step's reads and writes may run into.
const STEP: usize = 64;

/// The phase layout of one plane for a window, and each tap's read offset in it.
#[derive(Debug)]
struct Phases {
    strides: [usize; 3],
    /// Phase dims: output dims plus the kernel's reach past them, in phase units.
    dims: [usize; 3],
    /// Floats per phase, slack included.
    len: usize,
    /// Flat outputs computed per plane (through the last output row).
    flat: usize,
    /// Read offset of each tap in the phase buffer, in weight order (`z`, `y`, `x`).
    taps: Vec<usize>,
}

impl Phases {
    fn new(win: &Window) -> Phases {
        let (s, d, k, o) = (win.strides, win.dilations, win.kernel, win.output);
        let dims: [usize; 3] = std::array::from_fn(|i| o[i] + (k[i] - 1) * d[i] / s[i]);
        let [_, h, w] = dims;
        let len = dims.iter().product::<usize>() + STEP;
        let flat = ((o[0] - 1) * h + o[1] - 1) * w + o[2];
        let mut taps = Vec::with_capacity(win.kernel_size());
        for kz in 0..k[0] {
            for ky in 0..k[1] {
                for kx in 0..k[2] {
                    // Tap position `o * s + k * d` = `(o + k * d / s) * s + k * d % s`.
                    let t = [kz * d[0], ky * d[1], kx * d[2]];
                    let phase = ((t[0] % s[0]) * s[1] + t[1] % s[1]) * s[2] + t[2] % s[2];
                    let shift = ((t[0] / s[0]) * h + t[1] / s[1]) * w + t[2] / s[2];
                    taps.push(phase * len + shift);
                }
            }
        }
        Phases { strides: s, dims, len, flat, taps }
    }

    /// Floats of the phase buffer.
    fn buf_len(&self) -> usize {
        self.strides.iter().product::<usize>() * self.len
    }

    /// Floats of the flat output buffer.
    fn out_len(&self) -> usize {
        self.flat + STEP
    }

    /// Floats of one padded input row that the phases take (scratch for [`Self::split`]).
    fn row_len(&self) -> usize {
        self.dims[2] * self.strides[2]
    }

    /// Copies plane `x` into its zero-padded phases in `buf`; `row` holds [`Self::row_len`]
    /// floats of scratch.
    fn split(&self, isa: Isa, win: &Window, x: &[f32], buf: &mut [f32], row: &mut [f32]) {
        let [_, sy, sx] = self.strides;
        let [d, h, w] = self.dims;
        let [id, ih, iw] = win.input;
        let (pads, len) = (win.pads_begin, self.len);
        // The input index of phase row `a` of phase `r` in dim `i`, when it is inside.
        let inside = |i: usize, a: usize, r: usize, n: usize| {
            let p = (a * win.strides[i] + r) as isize - pads[i] as isize;
            (0..n as isize).contains(&p).then_some(p as usize)
        };
        // The padded row's columns `lo..hi` hold input columns `0..hi - lo`; the others are 0.
        let row = &mut row[..w * sx];
        let (lo, hi) = (pads[2].min(w * sx), (pads[2] + iw).min(w * sx));
        row[..lo].fill(0.0);
        row[hi..].fill(0.0);
        // The `sx` phases of one `(z, y)` phase pair lie one after another.
        for (zy, phases) in buf[..self.buf_len()].chunks_exact_mut(sx * len).enumerate() {
            let (rz, ry) = (zy / sy, zy % sy);
            for r in 0..d * h {
                let at = r * w;
                let Some(src) = inside(0, r / h, rz, id)
                    .zip(inside(1, r % h, ry, ih))
                    .map(|(z, yy)| &x[(z * ih + yy) * iw..][..hi - lo])
                else {
                    (0..sx).for_each(|rx| phases[rx * len + at..][..w].fill(0.0));
                    continue;
                };
                if sx == 1 {
                    let out = &mut phases[at..at + w];
                    out[..lo].fill(0.0);
                    out[lo..hi].copy_from_slice(src);
                    out[hi..].fill(0.0);
                    continue;
                }
                row[lo..hi].copy_from_slice(src);
                if sx == 2 {
                    let (p0, p1) = phases.split_at_mut(len);
                    deinterleave(isa, row, &mut p0[at..at + w], &mut p1[at..at + w]);
                } else {
                    for (b, v) in row.chunks_exact(sx).enumerate() {
                        v.iter().enumerate().for_each(|(rx, &v)| phases[rx * len + at + b] = v);
                    }
                }
            }
            (0..sx).for_each(|rx| phases[rx * len + d * h * w..(rx + 1) * len].fill(0.0));
        }
    }

    /// Copies the outputs out of the flat buffer `out` into plane `y`.
    fn gather(&self, win: &Window, out: &[f32], y: &mut [MaybeUninit<f32>]) {
        let [_, oh, ow] = win.output;
        let [_, h, w] = self.dims;
        for (r, dst) in y.chunks_exact_mut(ow).enumerate() {
            let (oz, oy) = (r / oh, r % oh);
            for (d, &v) in dst.iter_mut().zip(&out[(oz * h + oy) * w..][..ow]) {
                d.write(v);
            }
        }
    }
}

/// `y = act(conv(x, w) + bias)` for a depthwise `p` ([`ConvParams::is_depthwise`]); `w` holds
/// `C` kernels as ONNX stores them; `isa` picks the tap sums' code. Every output is written.
/// Planes run in parallel on the current rayon pool.
pub(crate) fn depthwise(
    isa: Isa,
    p: &ConvParams,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [MaybeUninit<f32>],
) {
    let win = &p.window;
    let (in_sz, out_sz, k_sz) = (win.input_size(), win.output_size(), win.kernel_size());
    let planes = p.batch * p.c_out;
    let y = &mut y[..planes * out_sz];
    if out_sz == 0 {
        return;
    }
    let ph = Phases::new(win);
    let (buf_len, out_len) = (ph.buf_len(), ph.out_len());
    let scratch = buf_len + out_len + ph.row_len();
    let run = |plane: usize, yp: &mut [MaybeUninit<f32>], scratch: &mut [f32]| {
        let c = plane % p.c_out;
        let (buf, rest) = scratch.split_at_mut(buf_len);
        let (out, row) = rest.split_at_mut(out_len);
        ph.split(isa, win, &x[plane * in_sz..(plane + 1) * in_sz], buf, row);
        let w = &w[c * k_sz..(c + 1) * k_sz];
        let taps = Taps { offsets: &ph.taps, w, bias: bias.map_or(0.0, |b| b[c]), act };
        tap_sums(isa, buf, taps, out, ph.flat);
        ph.gather(win, out, yp);
    };
    if rayon::current_num_threads() > 1 && planes * out_sz * k_sz >= 1 << 15 {
        use rayon::prelude::*;
        // Each worker uses its own thread's scratch, kept across runs.
        y.par_chunks_mut(out_sz)
            .enumerate()
            .for_each(|(i, yp)| with_scratch(scratch, |s| run(i, yp, s)));
    } else {
        with_scratch(scratch, |s| {
            y.chunks_mut(out_sz).enumerate().for_each(|(i, yp)| run(i, yp, s))
        });
    }
}

/// The taps of a depthwise `w` (`[C, 1, k...]`, as ONNX stores it) channel-fastest: `[tap][C]`,
/// what [`depthwise_channels_last`] reads (one vector of channels per tap).
pub(crate) fn taps_channel_fastest(c: usize, k_sz: usize, w: &[f32]) -> Vec<f32> {
    let mut t = vec![0.0; c * k_sz];
    for (ch, taps) in w[..c * k_sz].chunks_exact(k_sz).enumerate() {
        taps.iter().enumerate().for_each(|(i, &v)| t[i * c + ch] = v);
    }
    t
}

/// `y = act(conv(x, w) + bias)` for a depthwise `p` on channels-last activations: `x` is
/// `[N, in..., C]`, `y` `[N, out..., C]`, `w` the taps from [`taps_channel_fastest`]. The
/// channels are the vector lanes, so a small plane (EfficientNet's 7×7 with 1152 channels)
/// wastes no lane and needs no padded copy; each output pixel sums only its taps inside the
/// input. Rows of output pixels run in parallel on the current rayon pool.
pub(crate) fn depthwise_channels_last(
    isa: Isa,
    p: &ConvParams,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [MaybeUninit<f32>],
) {
    let win = &p.window;
    let c = p.c_out;
    let (in_sz, out_sz, k_sz) = (win.input_size(), win.output_size(), win.kernel_size());
    assert!(x.len() >= p.batch * in_sz * c, "depthwise: x too short");
    assert!(w.len() >= k_sz * c && bias.is_none_or(|b| b.len() >= c), "depthwise: w too short");
    let y = &mut y[..p.batch * out_sz * c];
    let [od, oh, ow] = win.output;
    let [_, ih, iw] = win.input;
    let [_, kh, kw] = win.kernel;
    if y.is_empty() {
        return;
    }
    let zeros;
    let bias = match bias {
        Some(b) => b,
        None => {
            zeros = vec![0.0; c];
            &zeros
        }
    };
    let (sx, dx, pl) = (win.strides[2], win.dilations[2], win.pads_begin[2]);
    // Output columns whose taps are all inside the input along x: `lo..hi`.
    let lo = pl.div_ceil(sx).min(ow);
    let reach = (kw - 1) * dx;
    let hi = if iw + pl > reach { ((iw + pl - reach - 1) / sx + 1).clamp(lo, ow) } else { lo };
    let row = |r: usize, yr: &mut [MaybeUninit<f32>]| {
        let (n, oz, oy) = (r / (od * oh), r / oh % od, r % oh);
        let xb = &x[n * in_sz * c..][..in_sz * c];
        // (input offset, weight offset) of each tap, in floats.
        let mut taps: Vec<(usize, usize)> = Vec::with_capacity(k_sz);
        let rows_inside = || {
            (0..win.kernel[0]).filter_map(|k| Some((k, win.tap_input(0, oz, k)?))).flat_map(
                |(kz, iz)| {
                    (0..kh).filter_map(move |k| {
                        Some((kz * kh + k, iz * ih + win.tap_input(1, oy, k)?))
                    })
                },
            )
        };
        // Border columns: only the taps inside, at absolute offsets.
        for ox in (0..lo).chain(hi..ow) {
            taps.clear();
            for (kzy, izy) in rows_inside() {
                for (kx, ix) in (0..kw).filter_map(|k| Some((k, win.tap_input(2, ox, k)?))) {
                    taps.push(((izy * iw + ix) * c, (kzy * kw + kx) * c));
                }
            }
            let yp = &mut yr[ox * c..(ox + 1) * c];
            pixels_channels_last(isa, xb, 0, 0, w, bias, act, &taps, yp);
        }
        // Inner columns: every tap of the rows inside, relative to the first pixel's column.
        if hi > lo {
            taps.clear();
            for (kzy, izy) in rows_inside() {
                taps.extend((0..kw).map(|kx| ((izy * iw + kx * dx) * c, (kzy * kw + kx) * c)));
            }
            let first = (lo * sx - pl) * c;
            let yp = &mut yr[lo * c..hi * c];
            pixels_channels_last(isa, xb, first, sx * c, w, bias, act, &taps, yp);
        }
    };
    let rows = p.batch * od * oh;
    if rayon::current_num_threads() > 1 && rows > 1 && y.len() * k_sz >= 1 << 15 {
        use rayon::prelude::*;
        y.par_chunks_mut(ow * c).enumerate().for_each(|(r, yr)| row(r, yr));
    } else {
        y.chunks_mut(ow * c).enumerate().for_each(|(r, yr)| row(r, yr));
    }
}

/// Output pixels of [`depthwise_channels_last`] that share their taps: pixel `j` (of
/// `y.len() / c`, `c = bias.len()`) reads `x` from `first + j * step`, and `y[j][ch] =
/// act(bias[ch] + Σ w[wo + ch] * x[first + j * step + xo + ch])` over `taps` `(xo, wo)`.
#[allow(clippy::too_many_arguments)]
fn pixels_channels_last(
    isa: Isa,
    x: &[f32],
    first: usize,
    step: usize,
    w: &[f32],
    bias: &[f32],
    act: Activation,
    taps: &[(usize, usize)],
    y: &mut [MaybeUninit<f32>],
) {
    let c = bias.len();
    let npix = y.len() / c;
    if npix == 0 {
        return;
    }
    let last = first + (npix - 1) * step;
    assert!(taps.iter().all(|&(xo, wo)| last + xo + c <= x.len() && wo + c <= w.len()));
    #[cfg(target_arch = "x86_64")]
    let done = {
        let (xp, wp, bp, yp) = (x.as_ptr(), w.as_ptr(), bias.as_ptr(), y.as_mut_ptr().cast());
        let g = x86_64::Pixels { x: xp, first, step, npix, w: wp, bias: bp, act, taps, c, y: yp };
        // SAFETY: the CPU has the level `isa` names (cpu::best); the assert above bounds every
        // read of `x` and `w`, `bias` holds `c` and `y` `npix * c`.
        match isa {
            Isa::Avx512Vnni => unsafe { x86_64::pixels_avx512(&g) },
            Isa::Avx2 => unsafe { x86_64::pixels_avx2(&g) },
            Isa::Generic => 0,
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = {
        let _ = isa;
        0
    };
    for (j, yp) in y.chunks_exact_mut(c).enumerate() {
        let xj = first + j * step;
        for ch in done..c {
            let s = taps.iter().fold(bias[ch], |s, &(xo, wo)| s + w[wo + ch] * x[xj + xo + ch]);
            yp[ch].write(act.of(s));
        }
    }
}

/// One channel's kernel as the tap sums read it: each tap's offset in the phase buffer and
/// weight, the bias and the activation.
#[derive(Clone, Copy)]
struct Taps<'a> {
    offsets: &'a [usize],
    w: &'a [f32],
    bias: f32,
    act: Activation,
}

/// `even[i] = row[2 * i]`, `odd[i] = row[2 * i + 1]` for `i < even.len()`.
///
/// # Panics
/// When `odd` or `row` is too short.
fn deinterleave(isa: Isa, row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let n = even.len();
    assert!(odd.len() >= n && row.len() >= 2 * n, "deinterleave: buffer too short");
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: the CPU has AVX2 (`isa` says so); the lengths are checked above.
        done =
            unsafe { x86_64::deinterleave(row.as_ptr(), even.as_mut_ptr(), odd.as_mut_ptr(), n) };
    }
    let _ = isa;
    for (i, v) in row[2 * done..2 * n].chunks_exact(2).enumerate() {
        (even[done + i], odd[done + i]) = (v[0], v[1]);
    }
}

/// `out[j] = act(bias + Σ_t w[t] * buf[offsets[t] + j])` for `j < n` (and up to the kernel's
/// step past it: `out` holds `n + STEP`).
///
/// # Panics
/// When `buf` does not hold `STEP` floats past every tap's last read, or `out` is too short.
fn tap_sums(isa: Isa, buf: &[f32], k: Taps, out: &mut [f32], n: usize) {
    assert!(k.w.len() >= k.offsets.len() && out.len() >= n + STEP, "depthwise: buffer too short");
    assert!(k.offsets.iter().all(|&t| t + n + STEP <= buf.len()), "depthwise: tap out of range");
    #[cfg(target_arch = "x86_64")]
    {
        let (b, o) = (buf.as_ptr(), out.as_mut_ptr());
        // SAFETY: the CPU has the level `isa` names (cpu::best); the asserts above bound every
        // read (`offsets[t] + j` for `j < n + STEP`) and write (`j < n + STEP`).
        match isa {
            Isa::Avx512Vnni => return unsafe { x86_64::tap_sums_avx512(b, k, o, n) },
            Isa::Avx2 => return unsafe { x86_64::tap_sums_avx2(b, k, o, n) },
            Isa::Generic => {}
        }
    }
    let _ = isa;
    // Blocks of outputs small enough to stay in L1 across the taps.
    for (bi, block) in out[..n].chunks_mut(512).enumerate() {
        let j0 = bi * 512;
        block.fill(k.bias);
        for (&t, &wt) in k.offsets.iter().zip(k.w) {
            for (d, s) in block.iter_mut().zip(&buf[t + j0..]) {
                *d += wt * s;
            }
        }
        k.act.apply(block);
    }
}

/// The AVX2 and AVX-512 tap sums: one body over a vector type.
#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use super::{Activation, Taps, STEP};
    use std::arch::x86_64::*;

    /// The operations the tap sums need on one vector of lanes.
    trait Lanes: Copy {
        const N: usize;
        unsafe fn splat(v: f32) -> Self;
        unsafe fn load(p: *const f32) -> Self;
        unsafe fn store(self, p: *mut f32);
        /// `a * b + self`.
        unsafe fn fma(self, a: Self, b: Self) -> Self;
        unsafe fn act(self, act: Activation) -> Self;
    }

    /// `impl Lanes` for one vector type from its intrinsics.
    macro_rules! lanes {
        ($v:ty, $n:literal, $set1:ident, $load:ident, $store:ident, $fma:ident, $act:path) => {
            impl Lanes for $v {
                const N: usize = $n;
                #[inline(always)]
                unsafe fn splat(v: f32) -> Self {
                    unsafe { $set1(v) }
                }
                #[inline(always)]
                unsafe fn load(p: *const f32) -> Self {
                    unsafe { $load(p) }
                }
                #[inline(always)]
                unsafe fn store(self, p: *mut f32) {
                    unsafe { $store(p, self) }
                }
                #[inline(always)]
                unsafe fn fma(self, a: Self, b: Self) -> Self {
                    unsafe { $fma(a, b, self) }
                }
                #[inline(always)]
                unsafe fn act(self, act: Activation) -> Self {
                    unsafe { $act(act, self) }
                }
            }
        };
    }
    use crate::gemm::{activation_avx2, activation_avx512};
    lanes!(
        __m256,
        8,
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_fmadd_ps,
        activation_avx2
    );
    lanes!(
        __m512,
        16,
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_fmadd_ps,
        activation_avx512
    );

    /// [`super::tap_sums`] on vectors `V`: 4 vectors of outputs per step while they last, then
    /// one (the last one runs past `n`, into the slack).
    ///
    /// # Safety
    /// The CPU must run `V`'s instructions; `buf` must be readable for `k.offsets[t] + n +
    /// STEP` floats, `out` writable for `n + STEP`; `k.w` must hold a weight per offset.
    #[inline(always)]
    unsafe fn tap_sums<V: Lanes>(buf: *const f32, k: Taps, out: *mut f32, n: usize) {
        debug_assert!(4 * V::N <= STEP);
        // SAFETY: every access below is at `j + i < n + STEP` past `out` or a tap's offset.
        unsafe {
            let (taps, w, act) = (k.offsets, k.w, k.act);
            let b = V::splat(k.bias);
            let mut j = 0;
            while j + 4 * V::N <= n {
                let mut acc = [b; 4];
                for (&t, &wt) in taps.iter().zip(w) {
                    let (wv, p) = (V::splat(wt), buf.add(t + j));
                    for (i, a) in acc.iter_mut().enumerate() {
                        *a = a.fma(wv, V::load(p.add(i * V::N)));
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    a.act(act).store(out.add(j + i * V::N));
                }
                j += 4 * V::N;
            }
            while j < n {
                let mut acc = b;
                for (&t, &wt) in taps.iter().zip(w) {
                    acc = acc.fma(V::splat(wt), V::load(buf.add(t + j)));
                }
                acc.act(act).store(out.add(j));
                j += V::N;
            }
        }
    }

    /// The operands of [`super::pixels_channels_last`] as raw pointers.
    pub(super) struct Pixels<'a> {
        pub x: *const f32,
        pub first: usize,
        pub step: usize,
        pub npix: usize,
        pub w: *const f32,
        pub bias: *const f32,
        pub act: Activation,
        pub taps: &'a [(usize, usize)],
        pub c: usize,
        pub y: *mut f32,
    }

    /// [`super::pixels_channels_last`] on vectors `V`, `P` pixels at a time (each tap's weights
    /// loaded once for all of them): 4 vectors of channels per step, then one; returns how
    /// many channels it wrote (the rest, under one vector, are the caller's).
    ///
    /// # Safety
    /// The CPU must run `V`'s instructions; every pixel's taps readable for `c` floats in `x`
    /// and `w`, `bias` for `c`, `y` writable for `npix * c`.
    #[inline(always)]
    unsafe fn pixels<V: Lanes, const P: usize>(g: &Pixels) -> usize {
        let mut c0 = 0;
        // SAFETY: forwarded; each block stays below `c`.
        unsafe {
            while c0 + 4 * V::N <= g.c {
                block::<V, P, 4>(g, c0);
                c0 += 4 * V::N;
            }
            while c0 + V::N <= g.c {
                block::<V, P, 1>(g, c0);
                c0 += V::N;
            }
        }
        c0
    }

    /// Channels `c0..c0 + B * V::N` of every pixel of `g`, `P` pixels at a time, then one.
    ///
    /// # Safety
    /// As [`pixels`], with `c0 + B * V::N <= c`.
    #[inline(always)]
    unsafe fn block<V: Lanes, const P: usize, const B: usize>(g: &Pixels, c0: usize) {
        // SAFETY: every access is at a channel below `c0 + B * V::N <= c` past a pixel's tap
        // or output, which the caller bounds.
        unsafe {
            let bias: [V; B] = std::array::from_fn(|i| V::load(g.bias.add(c0 + i * V::N)));
            let mut j = 0;
            while j + P <= g.npix {
                let mut acc = [bias; P];
                let x0 = g.x.add(g.first + j * g.step + c0);
                for &(xo, wo) in g.taps {
                    let wv: [V; B] = std::array::from_fn(|i| V::load(g.w.add(wo + c0 + i * V::N)));
                    for (p, a) in acc.iter_mut().enumerate() {
                        let xp = x0.add(p * g.step + xo);
                        for (i, v) in a.iter_mut().enumerate() {
                            *v = v.fma(wv[i], V::load(xp.add(i * V::N)));
                        }
                    }
                }
                for (p, a) in acc.iter().enumerate() {
                    for (i, v) in a.iter().enumerate() {
                        v.act(g.act).store(g.y.add((j + p) * g.c + c0 + i * V::N));
                    }
                }
                j += P;
            }
            while j < g.npix {
                let mut a = bias;
                let x0 = g.x.add(g.first + j * g.step + c0);
                for &(xo, wo) in g.taps {
                    for (i, v) in a.iter_mut().enumerate() {
                        let wv = V::load(g.w.add(wo + c0 + i * V::N));
                        *v = v.fma(wv, V::load(x0.add(xo + i * V::N)));
                    }
                }
                for (i, v) in a.iter().enumerate() {
                    v.act(g.act).store(g.y.add(j * g.c + c0 + i * V::N));
                }
                j += 1;
            }
        }
    }

    /// [`pixels`] on AVX2 vectors, two pixels at a time (16 registers).
    ///
    /// # Safety
    /// As [`pixels`]; the CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pixels_avx2(g: &Pixels) -> usize {
        // SAFETY: forwarded.
        unsafe { pixels::<__m256, 2>(g) }
    }

    /// [`pixels`] on AVX-512 vectors, four pixels at a time (32 registers).
    ///
    /// # Safety
    /// As [`pixels`]; the CPU must support AVX-512 F.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn pixels_avx512(g: &Pixels) -> usize {
        // SAFETY: forwarded.
        unsafe { pixels::<__m512, 4>(g) }
    }

    /// [`super::deinterleave`] of whole groups of 8 pairs: returns how many pairs it wrote.
    ///
    /// # Safety
    /// The CPU must support AVX2; `row` readable for `2 * n` floats, `even` and `odd` writable
    /// for `n`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn deinterleave(
        row: *const f32,
        even: *mut f32,
        odd: *mut f32,
        n: usize,
    ) -> usize {
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n pairs.
            unsafe {
                let a = _mm256_loadu_ps(row.add(2 * i));
                let b = _mm256_loadu_ps(row.add(2 * i + 8));
                // Within each 128-bit lane: a's then b's evens (odds); then the 64-bit
                // quarters back in order.
                let e = _mm256_castps_pd(_mm256_shuffle_ps::<0b10_00_10_00>(a, b));
                let o = _mm256_castps_pd(_mm256_shuffle_ps::<0b11_01_11_01>(a, b));
                let e = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(e));
                let o = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(o));
                _mm256_storeu_ps(even.add(i), e);
                _mm256_storeu_ps(odd.add(i), o);
            }
            i += 8;
        }
        i
    }

    /// [`tap_sums`] on AVX2 vectors.
    ///
    /// # Safety
    /// As [`tap_sums`]; the CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tap_sums_avx2(buf: *const f32, k: Taps, out: *mut f32, n: usize) {
        // SAFETY: forwarded.
        unsafe { tap_sums::<__m256>(buf, k, out, n) }
    }

    /// [`tap_sums`] on AVX-512 vectors.
    ///
    /// # Safety
    /// As [`tap_sums`]; the CPU must support AVX-512 F.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn tap_sums_avx512(buf: *const f32, k: Taps, out: *mut f32, n: usize) {
        // SAFETY: forwarded.
        unsafe { tap_sums::<__m512>(buf, k, out, n) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::conv_ref;
    use crate::cpu::levels;
    use proptest::prelude::*;

    const ACTS: [Activation; 4] = [
        Activation::None,
        Activation::Relu,
        Activation::Clip(0.0, 0.5),
        Activation::LeakyRelu(0.1),
    ];

    /// Checks every implementation of the depthwise family against [`conv_ref`].
    fn check(p: &ConvParams, seed: u32, bias: bool, act: Activation) -> Result<(), TestCaseError> {
        let (nx, nw, ny) = p.sizes();
        let fill = |n, s| crate::test_data::levels(n, s, 19, 9.0, 1.0);
        let (x, w, b) = (fill(nx, seed), fill(nw, seed ^ 3), fill(p.c_out, seed ^ 9));
        let bias = bias.then_some(&b[..]);
        let mut want = vec![0.0; ny];
        conv_ref(p, &x, &w, bias, act, &mut want);
        for isa in levels(|k| k.depthwise_f32) {
            let mut got = vec![f32::NAN; ny];
            depthwise(isa, p, &x, &w, bias, act, crate::conv::as_uninit(&mut got));
            for (i, (a, r)) in got.iter().zip(&want).enumerate() {
                prop_assert!((a - r).abs() <= 1e-4 * (1.0 + r.abs()), "{isa:?} y[{i}]: {a} vs {r}");
            }
        }
        Ok(())
    }

    /// One spatial dim: input size, kernel, stride, dilation, begin pad, end pad.
    type Dim = (usize, usize, usize, usize, usize, usize);

    /// A depthwise convolution over `input` with per-dim kernel, stride, dilation and pads; the
    /// output size follows from them.
    fn params(batch: usize, ch: usize, dims: &[Dim]) -> Option<ConvParams> {
        let field = |f: fn(&Dim) -> usize| dims.iter().map(f).collect::<Vec<_>>();
        let (input, kernel, strides) = (field(|d| d.0), field(|d| d.1), field(|d| d.2));
        let (dil, pb, pe) = (field(|d| d.3), field(|d| d.4), field(|d| d.5));
        let output = (0..dims.len())
            .map(|i| {
                let span = dil[i] * (kernel[i] - 1) + 1;
                (input[i] + pb[i] + pe[i]).checked_sub(span).map(|v| v / strides[i] + 1)
            })
            .collect::<Option<Vec<_>>>()?;
        let window = Window::new(&input, &kernel, &strides, &dil, &pb, &pe, &output)?;
        Some(ConvParams { batch, c_in: ch, c_out: ch, group: ch, window })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// The shapes of MobileNet / EfficientNet: 2-D 3x3 and 5x5 kernels, stride 1 and 2,
        /// pads up to half the kernel at each end (symmetric or TF-style), odd and even sizes.
        #[test]
        fn mobilenet_shapes_match_reference(
            batch in 1usize..3, ch in 2usize..6, h in 1usize..20, w in 1usize..40,
            k5 in any::<bool>(), stride in 1usize..3, pads in (0usize..3, 0usize..3),
            bias in any::<bool>(), act in 0usize..4, seed in any::<u32>(),
        ) {
            let k = if k5 { 5 } else { 3 };
            let (pb, pe) = (pads.0.min(k / 2), pads.1.min(k / 2));
            let dims = [(h, k, stride, 1, pb, pe), (w, k, stride, 1, pb, pe)];
            if let Some(p) = params(batch, ch, &dims) {
                check(&p, seed, bias, ACTS[act])?;
            }
        }

        /// Any 1-D to 3-D window: kernel, stride (up to 3), dilation and pads per dim.
        #[test]
        fn any_window_matches_reference(
            batch in 1usize..3, ch in 2usize..4,
            dims in prop::collection::vec((1usize..12, 1usize..6, 1usize..4, 1usize..3, 0usize..3, 0usize..3), 1..=3),
            bias in any::<bool>(), act in 0usize..4, seed in any::<u32>(),
        ) {
            if let Some(p) = params(batch, ch, &dims) {
                check(&p, seed, bias, ACTS[act])?;
            }
        }

        /// The channels-last kernel on every implementation: channel counts that fill four
        /// vectors, one, and leave a tail; any 1-D to 3-D window.
        #[test]
        fn channels_last_matches_reference(
            batch in 1usize..3, ch in 2usize..90,
            dims in prop::collection::vec((1usize..9, 1usize..6, 1usize..4, 1usize..3, 0usize..3, 0usize..3), 1..=3),
            bias in any::<bool>(), act in 0usize..4, seed in any::<u32>(),
        ) {
            let Some(p) = params(batch, ch, &dims) else { return Ok(()) };
            let (nx, nw, ny) = p.sizes();
            let (in_sz, out_sz) = (p.window.input_size(), p.window.output_size());
            let fill = |n, s| crate::test_data::levels(n, s, 19, 9.0, 1.0);
            let (x, w, b) = (fill(nx, seed), fill(nw, seed ^ 3), fill(ch, seed ^ 9));
            let bias = bias.then_some(&b[..]);
            let mut want = vec![0.0; ny];
            conv_ref(&p, &x, &w, bias, ACTS[act], &mut want);
            let mut xl = vec![0.0; nx];
            crate::conv_nhwc::to_channels_last(batch, ch, in_sz, &x, &mut xl);
            let taps = taps_channel_fastest(ch, p.window.kernel_size(), &w);
            for isa in levels(|k| k.depthwise_f32) {
                let mut yl = vec![f32::NAN; ny];
                depthwise_channels_last(isa, &p, &xl, &taps, bias, ACTS[act], crate::conv::as_uninit(&mut yl));
                let mut got = vec![0.0; ny];
                crate::conv_nhwc::to_channels_first(batch, ch, out_sz, &yl, &mut got);
                for (i, (a, r)) in got.iter().zip(&want).enumerate() {
                    prop_assert!((a - r).abs() <= 1e-4 * (1.0 + r.abs()), "{isa:?} y[{i}]: {a} vs {r}");
                }
            }
        }
    }

    /// Planes large enough for several full steps per row and both threads.
    #[test]
    fn large_planes_on_two_threads_match_reference() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for (size, k, s, pb, pe) in
            [(57, 3, 1, 1, 1), (56, 3, 2, 0, 1), (29, 5, 2, 1, 2), (14, 5, 1, 2, 2)]
        {
            let p = params(1, 8, &[(size, k, s, 1, pb, pe), (size + 3, k, s, 1, pb, pe)]).unwrap();
            pool.install(|| check(&p, 7, true, Activation::Clip(0.0, 6.0))).unwrap();
        }
    }
}
