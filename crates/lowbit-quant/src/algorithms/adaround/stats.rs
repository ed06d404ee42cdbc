//! Streaming input statistics of one AdaRound layer: per weight group, the `k × k` sums
//! `Σ x̂ x̂ᵀ`, `Σ d x̂ᵀ` and `Σ d dᵀ` over every input row (`x̂` the layer's input in the
//! quantized model, `d = x − x̂` its difference to the FP32 model's), from which
//! [`GroupStats::objective`] builds the layer's exact reconstruction error
//! ([`super::optimize::Objective`]).
//!
//! Rows are im2col patches for a convolution (one set per group: a depthwise convolution has
//! one group per channel, `k = kh·kw`; at most [`MAX_PATCHES_PER_IMAGE`] per image), rows of
//! the input matrix for Gemm/MatMul. Memory is
//! fixed by the layer's shape, whatever the number of samples: at most `3·k²` f64 per group
//! ([`GroupStats::max_bytes`]). While a group has seen fewer than `k / 2` rows it keeps the rows
//! themselves instead (at most `k²` f32), which is cheaper to optimize on (a classifier seeing one
//! row per image).

use crate::error::{QuantError, Result};
use lowbit_kernels::gemm::{sgemm, Trans};
use lowbit_kernels::window::{Tap, Window};
use lowbit_tensor::Tensor;
use rayon::prelude::*;
use std::borrow::Cow;

use super::optimize::{Curvature, Objective};

/// Elements of the row blocks handed to one product (bounds the scratch memory of a batch).
const BLOCK_ELEMS: usize = 1 << 22;

/// Bounds of [`patches_per_image`].
pub(crate) const MAX_PATCHES_PER_IMAGE: usize = 256;
const MIN_PATCHES_PER_IMAGE: usize = 64;

/// What one group has seen.
enum Sums {
    /// Fewer than `k / 2` rows: `x̂` and `d`, row-major `n × k`.
    Rows { xh: Vec<f32>, d: Vec<f32> },
    /// `Σ x̂ x̂ᵀ`, `Σ d x̂ᵀ`, `Σ d dᵀ`, `k × k` each.
    Gram { a: Vec<f64>, dx: Vec<f64>, dd: Vec<f64> },
}

/// The statistics of one weight group (`k` inputs per output).
pub(crate) struct GroupStats {
    k: usize,
    n: usize,
    sums: Sums,
}

impl GroupStats {
    pub fn new(k: usize) -> GroupStats {
        GroupStats { k, n: 0, sums: Sums::Rows { xh: Vec::new(), d: Vec::new() } }
    }

    /// The most memory a group of `k` inputs ever holds.
    pub fn max_bytes(k: usize) -> usize {
        3 * k * k * std::mem::size_of::<f64>()
    }

    /// Adds `rows` rows of `x̂` and `d` (row-major `rows × k`).
    pub fn add(&mut self, xh: &[f32], d: &[f32], rows: usize) {
        let k = self.k;
        debug_assert!(xh.len() >= rows * k && d.len() >= rows * k);
        if rows == 0 {
            return;
        }
        if let Sums::Rows { xh: sx, d: sd } = &mut self.sums {
            if 2 * (self.n + rows) < k {
                sx.extend_from_slice(&xh[..rows * k]);
                sd.extend_from_slice(&d[..rows * k]);
                self.n += rows;
                return;
            }
            let (sx, sd) = (std::mem::take(sx), std::mem::take(sd));
            let mut gram =
                Sums::Gram { a: vec![0.0; k * k], dx: vec![0.0; k * k], dd: vec![0.0; k * k] };
            accumulate(&mut gram, k, &sx, &sd, self.n);
            self.sums = gram;
        }
        accumulate(&mut self.sums, k, xh, d, rows);
        self.n += rows;
    }

    /// Adds the rows `other` has seen (the same weight read by a second layer).
    pub fn merge(&mut self, other: GroupStats) {
        match other.sums {
            Sums::Rows { xh, d } => self.add(&xh, &d, other.n),
            Sums::Gram { a, dx, dd } => {
                if let Sums::Rows { .. } = self.sums {
                    // Any rows held are summed into a Gram form first.
                    let held = std::mem::replace(self, GroupStats::new(self.k));
                    self.sums = Sums::Gram {
                        a: vec![0.0; self.k * self.k],
                        dx: vec![0.0; self.k * self.k],
                        dd: vec![0.0; self.k * self.k],
                    };
                    if let Sums::Rows { xh, d } = held.sums {
                        accumulate(&mut self.sums, self.k, &xh, &d, held.n);
                    }
                    self.n = held.n;
                }
                let Sums::Gram { a: sa, dx: sdx, dd: sdd } = &mut self.sums else {
                    unreachable!("made Gram above")
                };
                for (acc, m) in [(sa, a), (sdx, dx), (sdd, dd)] {
                    acc.iter_mut().zip(m).for_each(|(s, v)| *s += v);
                }
                self.n += other.n;
            }
        }
    }

    /// The reconstruction error of the group's weights `w` (`o × k`, row-major) on these rows.
    pub fn objective(&self, w: &[f32]) -> Objective {
        let k = self.k;
        let o = w.len() / k.max(1);
        let mut q = vec![0f32; o * k];
        let (c0, curvature) = match &self.sums {
            Sums::Rows { xh, d } => {
                // T = W Dᵀ (o × n): Q = T X̂, c₀ = ‖T‖².
                let n = self.n;
                let mut t = vec![0f32; o * n];
                sgemm(Trans::No, Trans::Yes, o, n, k, 1.0, w, k, d, k, 0.0, &mut t, n);
                sgemm(Trans::No, Trans::No, o, k, n, 1.0, &t, n, xh, k, 0.0, &mut q, k);
                let c0 = t.iter().map(|&v| v as f64 * v as f64).sum();
                (c0, Curvature::Rows { n, x: xh.clone() })
            }
            Sums::Gram { a, dx, dd } => {
                let f32s = |m: &[f64]| m.iter().map(|&v| v as f32).collect::<Vec<f32>>();
                let dx = f32s(dx);
                sgemm(Trans::No, Trans::No, o, k, k, 1.0, w, k, &dx, k, 0.0, &mut q, k);
                // c₀ = Σ_o w_o Σdd w_oᵀ, in f64 (an o·k² product, once per layer).
                let c0 = w
                    .par_chunks(k)
                    .map(|wr| {
                        let mut s = 0f64;
                        for (i, &wi) in wr.iter().enumerate() {
                            let row = &dd[i * k..(i + 1) * k];
                            let inner: f64 =
                                row.iter().zip(wr).map(|(&m, &wj)| m * wj as f64).sum();
                            s += wi as f64 * inner;
                        }
                        s
                    })
                    .sum::<f64>()
                    .max(0.0);
                (c0, Curvature::Gram(f32s(a)))
            }
        };
        Objective { o, k, n: self.n as f64, curvature, q, c0 }
    }
}

/// Adds `rows` rows to Gram sums (f32 products of one block, summed in f64).
fn accumulate(sums: &mut Sums, k: usize, xh: &[f32], d: &[f32], rows: usize) {
    let Sums::Gram { a, dx, dd } = sums else { unreachable!("called on Gram sums") };
    if rows == 0 {
        return;
    }
    let mut tmp = vec![0f32; k * k];
    let add = |acc: &mut [f64], l: &[f32], r: &[f32], tmp: &mut [f32]| {
        sgemm(Trans::Yes, Trans::No, k, k, rows, 1.0, l, k, r, k, 0.0, tmp, k);
        acc.iter_mut().zip(tmp.iter()).for_each(|(s, &v)| *s += v as f64);
    };
    add(a, xh, xh, &mut tmp);
    add(dx, d, xh, &mut tmp);
    add(dd, d, d, &mut tmp);
}

/// How a layer reads its input: which rows its weight multiplies.
#[derive(Clone, Debug)]
pub(crate) enum Geometry {
    /// A convolution over `[N, C, spatial...]` (its groups are the statistics' groups).
    Conv {
        kernel: Vec<usize>,
        strides: Option<Vec<i64>>,
        dilations: Option<Vec<i64>>,
        pads: Option<Vec<i64>>,
        auto_pad: String,
    },
    /// A matrix product: the input's last axis (or, `transposed`, its first: Gemm `transA`)
    /// holds the `k` inputs of one row.
    Matrix { transposed: bool },
}

/// The window of a convolution over `input` (spatial dims): ONNX `pads`, `auto_pad`,
/// `strides`, `dilations`.
fn conv_window(
    input: &[usize],
    kernel: &[usize],
    strides: &Option<Vec<i64>>,
    dilations: &Option<Vec<i64>>,
    pads: &Option<Vec<i64>>,
    auto_pad: &str,
) -> Option<Window> {
    let r = input.len();
    let dims = |v: &Option<Vec<i64>>| -> Option<Vec<usize>> {
        match v {
            None => Some(vec![1; r]),
            Some(v) if v.len() == r && v.iter().all(|&x| x >= 1) => {
                Some(v.iter().map(|&x| x as usize).collect())
            }
            Some(_) => None,
        }
    };
    let (strides, dil) = (dims(strides)?, dims(dilations)?);
    if kernel.len() != r {
        return None;
    }
    let mut pb = vec![0usize; r];
    let mut pe = vec![0usize; r];
    let mut out = vec![0usize; r];
    for i in 0..r {
        let span = dil[i] * (kernel[i].max(1) - 1) + 1;
        match auto_pad {
            "SAME_UPPER" | "SAME_LOWER" => {
                let o = input[i].div_ceil(strides[i]);
                let total = ((o.max(1) - 1) * strides[i] + span).saturating_sub(input[i]);
                let small = total / 2;
                (pb[i], pe[i]) = if auto_pad == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
                out[i] = o;
                continue;
            }
            "VALID" => {}
            _ => {
                if let Some(p) = pads {
                    if p.len() != 2 * r || p.iter().any(|&v| v < 0) {
                        return None;
                    }
                    (pb[i], pe[i]) = (p[i] as usize, p[i + r] as usize);
                }
            }
        }
        let total = input[i] + pb[i] + pe[i];
        out[i] = total.checked_sub(span)? / strides[i] + 1;
    }
    Window::new(input, kernel, &strides, &dil, &pb, &pe, &out)
}

/// The statistics of one layer (one consumer of a weight): a [`GroupStats`] per weight group.
pub(crate) struct LayerStats {
    geometry: Geometry,
    k: usize,
    /// Images (convolution inputs) seen so far, which moves the patch subsampling's offset.
    images: usize,
    pub groups: Vec<GroupStats>,
    /// The layer's name, for errors.
    node: String,
}

impl LayerStats {
    pub fn new(node: &str, geometry: Geometry, groups: usize, k: usize) -> LayerStats {
        LayerStats {
            geometry,
            k,
            images: 0,
            groups: (0..groups).map(|_| GroupStats::new(k)).collect(),
            node: node.to_string(),
        }
    }

    fn bad(&self, msg: String) -> QuantError {
        QuantError::Node { node: self.node.clone(), op_type: "AdaRound".into(), msg }
    }

    /// Adds one batch: the layer's input `x` in the FP32 model and `xh` in the quantized one.
    pub fn add(&mut self, x: &Tensor, xh: &Tensor) -> Result<()> {
        let shape = xh.shape().to_vec();
        if x.shape() != shape.as_slice() {
            return Err(self.bad(format!(
                "its input has shape {:?} in the FP32 model but {shape:?} in the quantized one",
                x.shape()
            )));
        }
        let xh = floats(xh)?;
        let d: Vec<f32> = floats(x)?.iter().zip(xh.iter()).map(|(a, b)| a - b).collect();
        let k = self.k;
        match self.geometry.clone() {
            Geometry::Matrix { transposed: true } => {
                if shape.len() != 2 || shape[0] != k {
                    return Err(self.bad(format!("its input {shape:?} is not [{k}, M]")));
                }
                let m = shape[1];
                self.groups[0].add(&transpose(&xh, k, m), &transpose(&d, k, m), m);
            }
            Geometry::Matrix { transposed: false } => {
                if shape.last() != Some(&k) {
                    return Err(self.bad(format!("its input {shape:?} is not [..., {k}]")));
                }
                self.groups[0].add(&xh, &d, xh.len() / k.max(1));
            }
            Geometry::Conv { kernel, strides, dilations, pads, auto_pad, .. } => {
                let groups = self.groups.len();
                let taps: usize = kernel.iter().product();
                if shape.len() < 3
                    || !shape[1].is_multiple_of(groups)
                    || (shape[1] / groups) * taps != k
                {
                    return Err(self.bad(format!(
                        "its input {shape:?} does not match its weight ({groups} groups of {k} \
                         inputs)"
                    )));
                }
                let win = conv_window(&shape[2..], &kernel, &strides, &dilations, &pads, &auto_pad)
                    .ok_or_else(|| {
                        self.bad(format!("no convolution window over an input {shape:?}"))
                    })?;
                self.add_conv(&shape, &win, &xh, &d);
            }
        }
        Ok(())
    }

    /// Adds a batch of convolution inputs `[N, C, spatial...]`: patches per image and group,
    /// handed over as rows in blocks of whole images. Of each image's patches at most
    /// [`patches_per_image`] are kept, evenly strided from an offset that moves with the image,
    /// so every position is seen across images; only those are gathered.
    fn add_conv(&mut self, shape: &[usize], win: &Window, xh: &[f32], d: &[f32]) {
        let (images, c) = (shape[0], shape[1]);
        let k = self.k;
        let cg = c / self.groups.len();
        let (p, plane) = (win.output_size(), win.input_size());
        let stride = p.div_ceil(patches_per_image(k)).max(1);
        let seen = self.images;
        self.images += images;
        let kept = |image: usize| (0..p).skip((seen + image) % stride).step_by(stride);
        let rows_of = |image: usize| kept(image).count();
        let max_rows = p.div_ceil(stride);
        let per_block = (BLOCK_ELEMS / (max_rows * k).max(1)).clamp(1, images.max(1));
        let taps: Vec<Tap> = win.taps().collect();
        let [_, oh, ow] = win.output;
        let [_, ih, iw] = win.input;
        self.groups.par_iter_mut().enumerate().for_each(|(g, stats)| {
            let mut rx = vec![0f32; per_block * max_rows * k];
            let mut rd = vec![0f32; per_block * max_rows * k];
            for first in (0..images).step_by(per_block) {
                let count = per_block.min(images - first);
                let mut rows = 0;
                for j in first..first + count {
                    let at = (j * c + g * cg) * plane;
                    for (src, out) in [(xh, &mut rx), (d, &mut rd)] {
                        let src = &src[at..at + cg * plane];
                        for (r, pp) in kept(j).enumerate() {
                            let o = [pp / (oh * ow), (pp / ow) % oh, pp % ow];
                            let row = &mut out[(rows + r) * k..(rows + r + 1) * k];
                            gather_patch(win, &taps, o, [ih, iw], src, row);
                        }
                    }
                    rows += rows_of(j);
                }
                stats.add(&rx, &rd, rows);
            }
        });
    }
}

/// Convolution patches kept per image and group: early layers have ten thousand positions of a
/// few dozen inputs, far more rows than the `k × k` sums need, and summing them all would cost
/// more than the forward passes. A hundred rows per input and image is plenty for a depthwise
/// filter's 9 or 25 inputs (its hundreds of channels each need their own sums).
fn patches_per_image(k: usize) -> usize {
    (4 * k).clamp(MIN_PATCHES_PER_IMAGE, MAX_PATCHES_PER_IMAGE)
}

/// The patch of output position `o` (`[z, y, x]`) over the `C × plane` input `src`, in im2col's
/// order (channel-major, then kernel tap), zero where a tap falls in the padding.
fn gather_patch(
    win: &Window,
    taps: &[Tap],
    o: [usize; 3],
    [ih, iw]: [usize; 2],
    src: &[f32],
    row: &mut [f32],
) {
    let plane = win.input_size();
    let n = taps.len();
    for (t, tap) in taps.iter().enumerate() {
        let inside = (0..3).all(|d| (tap.lo[d]..tap.hi[d]).contains(&o[d]));
        if !inside {
            row.iter_mut().skip(t).step_by(n).for_each(|v| *v = 0.0);
            continue;
        }
        let pos = |d: usize| ((o[d] * win.strides[d]) as isize + tap.off[d]) as usize;
        let offset = (pos(0) * ih + pos(1)) * iw + pos(2);
        for (c, v) in row.iter_mut().skip(t).step_by(n).enumerate() {
            *v = src[c * plane + offset];
        }
    }
}

/// The values of `t` as f32, borrowed when they are.
fn floats(t: &Tensor) -> Result<Cow<'_, [f32]>> {
    Ok(match t.as_f32() {
        Ok(v) => Cow::Borrowed(v),
        Err(_) => Cow::Owned(t.to_f32_vec()?),
    })
}

/// `m` (`rows × cols`, row-major) transposed.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms::test_graphs::uniform;
    use lowbit_kernels::conv::im2col;

    /// `Σ x̂ x̂ᵀ` of one group of `layer`'s sums.
    fn gram_of(layer: &LayerStats, g: usize) -> Vec<f64> {
        let Sums::Gram { a, .. } = &layer.groups[g].sums else { panic!("not summed yet") };
        a.clone()
    }

    #[test]
    fn gathered_patches_are_the_im2col_rows() {
        // Two images of 4 channels 6×7, a 3×3 convolution of 2 groups, stride 2, pads 1 0 2 1:
        // 12 positions per image, all kept, some taps in the padding.
        let (n, c, h, w, groups) = (2usize, 4usize, 6usize, 7usize, 2usize);
        let shape = [n, c, h, w];
        let xh = uniform(3, n * c * h * w, -1.0, 1.0);
        let x = uniform(4, n * c * h * w, -1.0, 1.0);
        let geometry = Geometry::Conv {
            kernel: vec![3, 3],
            strides: Some(vec![2, 2]),
            dilations: None,
            pads: Some(vec![1, 0, 2, 1]),
            auto_pad: "NOTSET".into(),
        };
        let k = (c / groups) * 9;
        let mut layer = LayerStats::new("conv", geometry, groups, k);
        let t = |v: &[f32]| Tensor::from_vec(shape.to_vec(), v.to_vec()).unwrap();
        layer.add(&t(&x), &t(&xh)).unwrap();
        let win = conv_window(
            &[h, w],
            &[3, 3],
            &Some(vec![2, 2]),
            &None,
            &Some(vec![1, 0, 2, 1]),
            "NOTSET",
        )
        .unwrap();
        let (p, plane, cg) = (win.output_size(), win.input_size(), c / groups);
        assert_eq!(p, 12);
        for g in 0..groups {
            let mut want = vec![0f64; k * k];
            let mut col = vec![0f32; k * p];
            for img in 0..n {
                let at = (img * c + g * cg) * plane;
                im2col(&win, cg, &xh[at..at + cg * plane], &mut col);
                for pos in 0..p {
                    for i in 0..k {
                        for j in 0..k {
                            want[i * k + j] += (col[i * p + pos] * col[j * p + pos]) as f64;
                        }
                    }
                }
            }
            let got = gram_of(&layer, g);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "group {g}: {a} vs {b}");
            }
        }
    }
}
