//! Max, average and Lp pooling over 1-D to 3-D planes (NCHW), with dilations and padding.
//!
//! `x` holds `planes` input planes (`N * C`) of [`Window::input`] shape; `y` gets the same
//! number of output planes. Padding never wins a max. Average divides by the window positions
//! inside the input, or with `count_include_pad` by those inside the padded input
//! (`-pad_begin .. input + pad_end`), as ONNX Runtime does. Max-pool indices are flat
//! row-major offsets into the whole `x` (plane offset included), ONNX's `storage_order = 0`.
//! [`pool_ref`] is the scalar reference.
//!
//! ```
//! use lowbit_kernels::pool::{pool, PoolKind};
//! use lowbit_kernels::window::Window;
//! let win = Window::new(&[4], &[2], &[2], &[1], &[0], &[0], &[2]).unwrap();
//! let mut y = [0.0; 2];
//! pool(PoolKind::Max, &win, 1, &[1.0, 3.0, 2.0, 0.0], &mut y, None);
//! assert_eq!(y, [3.0, 2.0]);
//! ```

use crate::window::Window;

/// What a pooling window computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PoolKind {
    Max,
    Average {
        count_include_pad: bool,
    },
    /// `(sum |x|^p)^(1/p)`.
    Lp(f32),
}

fn check(win: &Window, planes: usize, x: &[f32], y: &[f32], idx: Option<&[i64]>) {
    assert!(x.len() >= planes * win.input_size(), "pool: x too short");
    assert!(y.len() >= planes * win.output_size(), "pool: y too short");
    assert!(idx.is_none_or(|i| i.len() >= planes * win.output_size()), "pool: indices too short");
}

/// Count of window positions in dim `d` for output `o` that fall inside `lo..hi` (input coords).
fn count_in(win: &Window, d: usize, o: usize, lo: isize, hi: isize) -> usize {
    (0..win.kernel[d]).filter(|&k| (lo..hi).contains(&win.tap_position(d, o, k))).count()
}

/// Pools `planes` planes of `x` into `y`; with `indices`, also writes each max's flat position.
///
/// # Panics
/// When the buffers are shorter than `win` and `planes` say.
pub fn pool(
    kind: PoolKind,
    win: &Window,
    planes: usize,
    x: &[f32],
    y: &mut [f32],
    mut indices: Option<&mut [i64]>,
) {
    check(win, planes, x, y, indices.as_deref());
    let (in_sz, out_sz) = (win.input_size(), win.output_size());
    let [od, oh, ow] = win.output;
    let [_, ih, iw] = win.input;
    // Per dim and output position: the kernel taps that land inside the input.
    let taps: Vec<Vec<Vec<usize>>> = (0..3)
        .map(|d| {
            let n_out = win.output[d];
            (0..n_out).map(|o| win.taps_inside(d, o)).collect()
        })
        .collect();
    // Average divisors per dim and output position.
    let divisors: Vec<Vec<usize>> = match kind {
        PoolKind::Average { count_include_pad: true } => (0..3)
            .map(|d| {
                let hi = (win.input[d] + win.pads_end[d]) as isize;
                (0..win.output[d])
                    .map(|o| count_in(win, d, o, -(win.pads_begin[d] as isize), hi))
                    .collect()
            })
            .collect(),
        _ => (0..3).map(|d| taps[d].iter().map(|t| t.len()).collect()).collect(),
    };
    for p in 0..planes {
        let xp = &x[p * in_sz..(p + 1) * in_sz];
        let yp = &mut y[p * out_sz..(p + 1) * out_sz];
        for oz in 0..od {
            for oy in 0..oh {
                for ox in 0..ow {
                    let o = (oz * oh + oy) * ow + ox;
                    let (tz, ty, tx) = (&taps[0][oz], &taps[1][oy], &taps[2][ox]);
                    match kind {
                        PoolKind::Max => {
                            let mut best = f32::NEG_INFINITY;
                            let mut at = usize::MAX;
                            for &iz in tz {
                                for &iy in ty {
                                    let row = (iz * ih + iy) * iw;
                                    for &ix in tx {
                                        let v = xp[row + ix];
                                        if v > best || at == usize::MAX {
                                            best = v;
                                            at = row + ix;
                                        }
                                    }
                                }
                            }
                            if at == usize::MAX {
                                // A window entirely in the padding.
                                at = 0;
                            }
                            yp[o] = best;
                            if let Some(idx) = indices.as_deref_mut() {
                                idx[p * out_sz + o] = (p * in_sz + at) as i64;
                            }
                        }
                        PoolKind::Average { .. } => {
                            let mut sum = 0f32;
                            for &iz in tz {
                                for &iy in ty {
                                    let row = &xp[(iz * ih + iy) * iw..];
                                    for &ix in tx {
                                        sum += row[ix];
                                    }
                                }
                            }
                            let n = divisors[0][oz] * divisors[1][oy] * divisors[2][ox];
                            yp[o] = if n == 0 { 0.0 } else { sum / n as f32 };
                        }
                        PoolKind::Lp(pw) => {
                            let mut sum = 0f32;
                            for &iz in tz {
                                for &iy in ty {
                                    let row = &xp[(iz * ih + iy) * iw..];
                                    for &ix in tx {
                                        sum += lp_term(row[ix], pw);
                                    }
                                }
                            }
                            yp[o] = lp_root(sum, pw);
                        }
                    }
                }
            }
        }
    }
}

#[inline]
fn lp_term(v: f32, p: f32) -> f32 {
    if p == 2.0 {
        v * v
    } else if p == 1.0 {
        v.abs()
    } else {
        v.abs().powf(p)
    }
}

#[inline]
fn lp_root(sum: f32, p: f32) -> f32 {
    if p == 2.0 {
        sum.sqrt()
    } else if p == 1.0 {
        sum
    } else {
        sum.powf(1.0 / p)
    }
}

/// The larger of two values, for [`max_pool_channels_last`]'s element types (8-bit codes, and
/// f32 where a NaN loses, as `f32::max` has it).
pub trait MaxOf: Copy {
    fn max_of(self, other: Self) -> Self;
}

impl MaxOf for u8 {
    fn max_of(self, other: u8) -> u8 {
        self.max(other)
    }
}

impl MaxOf for i8 {
    fn max_of(self, other: i8) -> i8 {
        self.max(other)
    }
}

impl MaxOf for f32 {
    fn max_of(self, other: f32) -> f32 {
        self.max(other)
    }
}

/// Max pooling of `batch` channels-last images (`[batch, input..., c]`, 1-D to 3-D) into
/// `[batch, output..., c]`: each output pixel is the elementwise max of its window's in-bounds
/// pixels, `c` lanes at a time (8-bit codes between integer convolutions; any `Ord` type). A
/// window entirely in the padding gives `lowest`, as [`pool`]'s `-inf` would.
///
/// # Panics
/// When `x` or `y` is shorter than the window and `c` say.
pub fn max_pool_channels_last<T: MaxOf>(
    win: &Window,
    batch: usize,
    c: usize,
    x: &[T],
    lowest: T,
    y: &mut [T],
) {
    let (in_sz, out_sz) = (win.input_size(), win.output_size());
    assert!(x.len() >= batch * in_sz * c, "max_pool_channels_last: x too short");
    assert!(y.len() >= batch * out_sz * c, "max_pool_channels_last: y too short");
    let [od, oh, ow] = win.output;
    let [_, ih, iw] = win.input;
    let tx: Vec<Vec<usize>> = (0..ow).map(|o| win.taps_inside(2, o)).collect();
    for b in 0..batch {
        let xb = &x[b * in_sz * c..][..in_sz * c];
        let yb = &mut y[b * out_sz * c..][..out_sz * c];
        for oz in 0..od {
            let tz = win.taps_inside(0, oz);
            for oy in 0..oh {
                let ty = win.taps_inside(1, oy);
                for (ox, tx) in tx.iter().enumerate() {
                    let dst = &mut yb[((oz * oh + oy) * ow + ox) * c..][..c];
                    dst.fill(lowest);
                    let mut first = true;
                    for &iz in &tz {
                        for &iy in &ty {
                            for &ix in tx {
                                let src = &xb[((iz * ih + iy) * iw + ix) * c..][..c];
                                if first {
                                    dst.copy_from_slice(src);
                                    first = false;
                                } else {
                                    for (d, &v) in dst.iter_mut().zip(src) {
                                        *d = d.max_of(v);
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

/// Scalar reference for [`pool`]: visits every window position and tests it against the
/// input bounds.
pub fn pool_ref(
    kind: PoolKind,
    win: &Window,
    planes: usize,
    x: &[f32],
    y: &mut [f32],
    mut indices: Option<&mut [i64]>,
) {
    check(win, planes, x, y, indices.as_deref());
    let (in_sz, out_sz) = (win.input_size(), win.output_size());
    let [od, oh, ow] = win.output;
    let [id, ih, iw] = win.input;
    let [kd, kh, kw] = win.kernel;
    for p in 0..planes {
        for oz in 0..od {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut best = f32::NEG_INFINITY;
                    let mut at = None;
                    let mut sum = 0f64;
                    let (mut inside, mut padded) = (0usize, 0usize);
                    for kz in 0..kd {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let i = [
                                    win.tap_position(0, oz, kz),
                                    win.tap_position(1, oy, ky),
                                    win.tap_position(2, ox, kx),
                                ];
                                let in_pad = (0..3).all(|d| {
                                    i[d] >= -(win.pads_begin[d] as isize)
                                        && i[d] < (win.input[d] + win.pads_end[d]) as isize
                                });
                                padded += in_pad as usize;
                                let dims = [id, ih, iw];
                                if !(0..3).all(|d| i[d] >= 0 && i[d] < dims[d] as isize) {
                                    continue;
                                }
                                inside += 1;
                                let pos =
                                    ((i[0] as usize * ih) + i[1] as usize) * iw + i[2] as usize;
                                let v = x[p * in_sz + pos];
                                if at.is_none() || v > best {
                                    best = v;
                                    at = Some(pos);
                                }
                                sum += match kind {
                                    PoolKind::Lp(pw) => (v.abs() as f64).powf(pw as f64),
                                    _ => v as f64,
                                };
                            }
                        }
                    }
                    let o = p * out_sz + (oz * oh + oy) * ow + ox;
                    y[o] = match kind {
                        PoolKind::Max => best,
                        PoolKind::Average { count_include_pad } => {
                            let n = if count_include_pad { padded } else { inside };
                            if n == 0 {
                                0.0
                            } else {
                                (sum / n as f64) as f32
                            }
                        }
                        PoolKind::Lp(pw) => sum.powf(1.0 / pw as f64) as f32,
                    };
                    if let Some(idx) = indices.as_deref_mut() {
                        idx[o] = (p * in_sz + at.unwrap_or(0)) as i64;
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
        crate::test_data::levels(n, seed, 23, 7.0, 1.5)
    }

    /// Per spatial dim: (input base, kernel, stride, dilation, pad begin, pad end).
    type Dims = [(usize, usize, usize, usize, usize, usize)];

    /// A valid pooling window from generated dims: pads smaller than the kernel span, as ONNX
    /// requires.
    fn window(dims: &Dims, ceil: bool) -> Window {
        let input: Vec<usize> = dims.iter().map(|d| d.0 + d.1 * d.3).collect();
        let kernel: Vec<usize> = dims.iter().map(|d| d.1).collect();
        let strides: Vec<usize> = dims.iter().map(|d| d.2).collect();
        let dil: Vec<usize> = dims.iter().map(|d| d.3).collect();
        let pb: Vec<usize> = dims.iter().map(|d| d.4.min(d.1 - 1)).collect();
        let pe: Vec<usize> = dims.iter().map(|d| d.5.min(d.1 - 1)).collect();
        let output: Vec<usize> = (0..dims.len())
            .map(|i| {
                let span = dil[i] * (kernel[i] - 1) + 1;
                let total = input[i] + pb[i] + pe[i] - span;
                if ceil {
                    total.div_ceil(strides[i]) + 1
                } else {
                    total / strides[i] + 1
                }
            })
            .collect();
        Window::new(&input, &kernel, &strides, &dil, &pb, &pe, &output).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn pool_matches_reference(
            dims in prop::collection::vec((1usize..9, 1usize..4, 1usize..3, 1usize..3, 0usize..3, 0usize..3), 1..=3),
            planes in 1usize..4, kind in 0usize..4, ceil in any::<bool>(), seed in any::<u32>(),
        ) {
            let win = window(&dims, ceil);
            let kind = [
                PoolKind::Max,
                PoolKind::Average { count_include_pad: false },
                PoolKind::Average { count_include_pad: true },
                PoolKind::Lp(2.0),
            ][kind];
            let x = fill(planes * win.input_size(), seed);
            let n = planes * win.output_size();
            let (mut y1, mut y2) = (vec![f32::NAN; n], vec![0.0; n]);
            let (mut i1, mut i2) = (vec![-1i64; n], vec![0i64; n]);
            pool(kind, &win, planes, &x, &mut y1, Some(&mut i1));
            pool_ref(kind, &win, planes, &x, &mut y2, Some(&mut i2));
            for (a, r) in y1.iter().zip(&y2) {
                prop_assert!(a == r || (a - r).abs() <= 1e-4 * (1.0 + r.abs()), "{a} vs {r}");
            }
            if kind == PoolKind::Max {
                prop_assert_eq!(i1, i2);
            }
        }

        /// The channels-last 8-bit max pool equals the NCHW float one on the same codes.
        #[test]
        fn channels_last_max_pool_matches_pool(
            dims in prop::collection::vec((1usize..9, 1usize..4, 1usize..3, 1usize..3, 0usize..3, 0usize..3), 1..=3),
            batch in 1usize..3, c in 1usize..20, ceil in any::<bool>(), seed in any::<u32>(),
        ) {
            let win = window(&dims, ceil);
            let (isz, osz) = (win.input_size(), win.output_size());
            let codes: Vec<u8> = (0..batch * c * isz)
                .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 24) as u8)
                .collect();
            // NCHW float reference; the same codes channels-last for the byte kernel.
            let xf: Vec<f32> = codes.iter().map(|&v| v as f32).collect();
            let mut want = vec![0f32; batch * c * osz];
            pool(PoolKind::Max, &win, batch * c, &xf, &mut want, None);
            let mut xl = vec![0u8; codes.len()];
            for b in 0..batch { for ch in 0..c { for p in 0..isz {
                xl[(b * isz + p) * c + ch] = codes[(b * c + ch) * isz + p];
            } } }
            let mut got = vec![0u8; batch * c * osz];
            max_pool_channels_last(&win, batch, c, &xl, 0, &mut got);
            for b in 0..batch { for ch in 0..c { for p in 0..osz {
                let w = want[(b * c + ch) * osz + p].max(0.0);
                prop_assert_eq!(got[(b * osz + p) * c + ch] as f32, w);
            } } }
        }
    }
}
