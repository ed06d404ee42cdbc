//! Sliding-window geometry shared by convolution and pooling.
//!
//! Every spatial rank (1-D, 2-D, 3-D) is handled as 3-D: missing leading dims have size 1,
//! kernel 1, stride 1, dilation 1 and no padding, so one loop nest serves all ranks. Output
//! position `o` of a dim reads input positions `o * stride - pad_begin + k * dilation` for
//! `k` in `0..kernel`; positions outside `0..input` are padding.
//!
//! ```
//! use lowbit_kernels::window::Window;
//! // A 2-D 3x3 window, stride 1, pad 1 over a 5x5 image: output is 5x5.
//! let w = Window::new(&[5, 5], &[3, 3], &[1, 1], &[1, 1], &[1, 1], &[1, 1], &[5, 5]).unwrap();
//! assert_eq!(w.output, [1, 5, 5]);
//! assert_eq!(w.kernel_size(), 9);
//! ```

/// One kernel tap: its input offset per dim ([`Window::tap_offset`]) and, per dim, the output
/// positions `lo..hi` whose input it reads inside the input ([`Window::valid_range`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tap {
    pub off: [isize; 3],
    pub lo: [usize; 3],
    pub hi: [usize; 3],
}

/// The last two dims of a window, unpacked: the whole window for 1-D and 2-D windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plane {
    /// Input height and width.
    pub ih: usize,
    pub iw: usize,
    /// Kernel height and width.
    pub kh: usize,
    pub kw: usize,
    /// Output height and width.
    pub oh: usize,
    pub ow: usize,
    /// Strides, dilations and begin pads along y and x.
    pub sy: usize,
    pub sx: usize,
    pub dy: usize,
    pub dx: usize,
    pub pt: usize,
    pub pl: usize,
}

/// Geometry of a sliding window over up to 3 spatial dims (padded to 3 with leading 1s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub input: [usize; 3],
    pub kernel: [usize; 3],
    pub output: [usize; 3],
    pub strides: [usize; 3],
    pub dilations: [usize; 3],
    pub pads_begin: [usize; 3],
    pub pads_end: [usize; 3],
}

fn pad3(v: &[usize], fill: usize) -> Option<[usize; 3]> {
    if v.len() > 3 {
        return None;
    }
    let mut out = [fill; 3];
    out[3 - v.len()..].copy_from_slice(v);
    Some(out)
}

impl Window {
    /// A window from per-dim slices (all the same length, 1 to 3). `pads` holds the begin pads
    /// then the end pads, as ONNX writes them. Returns `None` on a rank mismatch, a rank above
    /// 3, or a zero stride, dilation or kernel dim.
    pub fn new(
        input: &[usize],
        kernel: &[usize],
        strides: &[usize],
        dilations: &[usize],
        pads_begin: &[usize],
        pads_end: &[usize],
        output: &[usize],
    ) -> Option<Window> {
        let r = input.len();
        let same =
            [kernel, strides, dilations, pads_begin, pads_end, output].iter().all(|s| s.len() == r);
        if !same || r > 3 {
            return None;
        }
        if strides.contains(&0) || dilations.contains(&0) || kernel.contains(&0) {
            return None;
        }
        Some(Window {
            input: pad3(input, 1)?,
            kernel: pad3(kernel, 1)?,
            output: pad3(output, 1)?,
            strides: pad3(strides, 1)?,
            dilations: pad3(dilations, 1)?,
            pads_begin: pad3(pads_begin, 0)?,
            pads_end: pad3(pads_end, 0)?,
        })
    }

    /// Elements of one input plane (all spatial dims).
    pub fn input_size(&self) -> usize {
        self.input.iter().product()
    }

    /// Elements of one output plane.
    pub fn output_size(&self) -> usize {
        self.output.iter().product()
    }

    /// Elements of one kernel window.
    pub fn kernel_size(&self) -> usize {
        self.kernel.iter().product()
    }

    /// Whether the window is a plain 1x1 read: kernel 1, stride 1, no padding, output = input.
    pub fn is_pointwise(&self) -> bool {
        self.kernel == [1; 3]
            && self.strides == [1; 3]
            && self.pads_begin == [0; 3]
            && self.input == self.output
    }

    /// Offset (input position minus `o * stride`) of kernel tap `k` in dim `d`.
    #[inline]
    pub fn tap_offset(&self, d: usize, k: usize) -> isize {
        (k * self.dilations[d]) as isize - self.pads_begin[d] as isize
    }

    /// The last two dims ([`Plane`]).
    pub fn plane(&self) -> Plane {
        Plane {
            ih: self.input[1],
            iw: self.input[2],
            kh: self.kernel[1],
            kw: self.kernel[2],
            oh: self.output[1],
            ow: self.output[2],
            sy: self.strides[1],
            sx: self.strides[2],
            dy: self.dilations[1],
            dx: self.dilations[2],
            pt: self.pads_begin[1],
            pl: self.pads_begin[2],
        }
    }

    /// Every kernel tap, `z` outermost and `x` innermost (the row order of im2col).
    pub fn taps(&self) -> impl Iterator<Item = Tap> + '_ {
        let [kd, kh, kw] = self.kernel;
        (0..kd).flat_map(move |kz| {
            (0..kh).flat_map(move |ky| {
                (0..kw).map(move |kx| {
                    let off =
                        [self.tap_offset(0, kz), self.tap_offset(1, ky), self.tap_offset(2, kx)];
                    let range = |d: usize| self.valid_range(d, off[d]);
                    let (r0, r1, r2) = (range(0), range(1), range(2));
                    Tap { off, lo: [r0.0, r1.0, r2.0], hi: [r0.1, r1.1, r2.1] }
                })
            })
        })
    }

    /// The input position kernel tap `k` of output position `o` reads in dim `d` (outside
    /// `0..input[d]` when it falls in the padding).
    #[inline]
    pub fn tap_position(&self, d: usize, o: usize, k: usize) -> isize {
        (o * self.strides[d]) as isize + self.tap_offset(d, k)
    }

    /// [`Self::tap_position`] when it lies inside the input.
    #[inline]
    pub fn tap_input(&self, d: usize, o: usize, k: usize) -> Option<usize> {
        let i = self.tap_position(d, o, k);
        (0..self.input[d] as isize).contains(&i).then_some(i as usize)
    }

    /// The input positions output position `o` of dim `d` reads (its taps that are not padding).
    pub fn taps_inside(&self, d: usize, o: usize) -> Vec<usize> {
        (0..self.kernel[d]).filter_map(|k| self.tap_input(d, o, k)).collect()
    }

    /// Output positions `lo..hi` of dim `d` whose input `o * stride + off` is inside the input.
    #[inline]
    pub fn valid_range(&self, d: usize, off: isize) -> (usize, usize) {
        valid_range(self.output[d], self.strides[d], off, self.input[d])
    }
}

/// Output positions `lo..hi` (within `0..out_len`) with `0 <= o * stride + off < in_len`.
#[inline]
pub fn valid_range(out_len: usize, stride: usize, off: isize, in_len: usize) -> (usize, usize) {
    let s = stride as isize;
    let lo = if off >= 0 { 0 } else { ((-off) + s - 1) / s };
    let room = in_len as isize - off;
    let hi = if room <= 0 { 0 } else { (room + s - 1) / s };
    let lo = (lo as usize).min(out_len);
    let hi = (hi as usize).min(out_len);
    (lo, hi.max(lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_range_matches_brute_force() {
        for out_len in 0..7 {
            for stride in 1..4 {
                for off in -6..6isize {
                    for in_len in 0..7 {
                        let (lo, hi) = valid_range(out_len, stride, off, in_len);
                        let brute: Vec<usize> = (0..out_len)
                            .filter(|&o| {
                                let i = (o * stride) as isize + off;
                                i >= 0 && i < in_len as isize
                            })
                            .collect();
                        let got: Vec<usize> = (lo..hi).collect();
                        assert_eq!(got, brute, "{out_len} {stride} {off} {in_len}");
                    }
                }
            }
        }
    }
}
