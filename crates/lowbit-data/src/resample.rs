//! Resizing 8-bit images exactly as Pillow's `Image.resize` does (its `Resample.c`), so that a
//! model scored here sees the pixels it sees under Python preprocessing: a separable
//! convolution, horizontal pass first, whose filter is widened by the scale factor when
//! shrinking (antialiasing), with Pillow's 22-bit fixed-point weights and rounding, and 8-bit
//! values between the passes.
//!
//! ```
//! use lowbit_data::resample::{resize, Filter};
//! // A 4×1 RGB row halved: each output pixel averages two inputs (bilinear support 2 when
//! // shrinking by 2).
//! let row = [0u8, 0, 0, 100, 100, 100, 200, 200, 200, 255, 255, 255];
//! let out = resize(&row, 4, 1, 3, 2, 1, Filter::Bilinear);
//! assert_eq!(out.len(), 6);
//! assert!(out[0] > 0 && out[0] < 100 && out[3] > 150);
//! ```

/// Pillow's interpolation filters (`Image.Resampling`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// `NEAREST`: the input pixel under each output pixel's centre.
    Nearest,
    /// `BILINEAR`: a triangle filter (antialiased when shrinking).
    Bilinear,
    /// `BICUBIC`: Keys' cubic with a = -0.5.
    Bicubic,
    /// `LANCZOS`: a 3-lobe windowed sinc.
    Lanczos,
}

impl Filter {
    /// The filter for an `interp=` name.
    pub fn parse(name: &str) -> Option<Filter> {
        Some(match name.to_ascii_lowercase().as_str() {
            "nearest" => Filter::Nearest,
            "bilinear" | "linear" | "triangle" => Filter::Bilinear,
            "bicubic" | "cubic" => Filter::Bicubic,
            "lanczos" | "antialias" => Filter::Lanczos,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Filter::Nearest => "nearest",
            Filter::Bilinear => "bilinear",
            Filter::Bicubic => "bicubic",
            Filter::Lanczos => "lanczos",
        }
    }

    /// Half-width of the filter at scale 1.
    fn support(self) -> f64 {
        match self {
            Filter::Nearest => 0.0,
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Nearest => 0.0,
            Filter::Bilinear => (1.0 - x).max(0.0),
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if x < 3.0 {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let px = x * std::f64::consts::PI;
        px.sin() / px
    }
}

/// Pillow's fixed-point precision for 8-bit images: `32 - 8 - 2` bits.
const PRECISION_BITS: u32 = 22;

/// For each output position along one axis: the first input position it reads, how many, and
/// their fixed-point weights (`ksize` per output position).
struct Coefficients {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`.
fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero; the values are clamped to [0, in_size].
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut total = 0.0;
        for (x, w) in k.iter_mut().enumerate().take(n) {
            *w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            total += *w;
        }
        let row = &mut weights[xx * ksize..(xx + 1) * ksize];
        for x in 0..n {
            let w = if total != 0.0 { k[x] / total } else { k[x] };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            row[x] = if w < 0.0 { (fixed - 0.5) as i32 } else { (fixed + 0.5) as i32 };
        }
        bounds.push((xmin, n));
    }
    Coefficients { bounds, ksize, weights }
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// `src` (`width × height` pixels of `channels` interleaved bytes, rows top to bottom) resized
/// to `new_width × new_height` with `filter`, as Pillow resizes an 8-bit image.
pub fn resize(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    new_width: usize,
    new_height: usize,
    filter: Filter,
) -> Vec<u8> {
    assert_eq!(src.len(), width * height * channels, "resize: buffer size");
    if (new_width, new_height) == (width, height) {
        return src.to_vec();
    }
    if filter == Filter::Nearest {
        return nearest(src, width, height, channels, new_width, new_height);
    }
    let horiz = coefficients(width, new_width, filter);
    let vert = coefficients(height, new_height, filter);
    // Only the input rows the vertical pass reads go through the horizontal one.
    let first_row = vert.bounds.first().map_or(0, |b| b.0);
    let last_row = vert.bounds.last().map_or(0, |b| b.0 + b.1);
    let (tmp, tmp_first, tmp_width) = if new_width != width {
        let rows = last_row - first_row;
        let mut tmp = vec![0u8; rows * new_width * channels];
        for (r, out_row) in tmp.chunks_exact_mut(new_width * channels).enumerate() {
            let in_row = &src[(first_row + r) * width * channels..][..width * channels];
            for (xx, &(xmin, n)) in horiz.bounds.iter().enumerate() {
                let k = &horiz.weights[xx * horiz.ksize..][..n];
                for c in 0..channels {
                    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                    for (x, &w) in k.iter().enumerate() {
                        acc += i64::from(in_row[(xmin + x) * channels + c]) * i64::from(w);
                    }
                    out_row[xx * channels + c] = clip8(acc);
                }
            }
        }
        (std::borrow::Cow::Owned(tmp), first_row, new_width)
    } else {
        (std::borrow::Cow::Borrowed(src), 0, width)
    };
    if new_height == height {
        return tmp.into_owned();
    }
    let row_len = tmp_width * channels;
    let mut out = vec![0u8; new_height * row_len];
    for (yy, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        let (ymin, n) = vert.bounds[yy];
        let k = &vert.weights[yy * vert.ksize..][..n];
        for (i, o) in out_row.iter_mut().enumerate() {
            let mut acc: i64 = 1 << (PRECISION_BITS - 1);
            for (y, &w) in k.iter().enumerate() {
                acc += i64::from(tmp[(ymin - tmp_first + y) * row_len + i]) * i64::from(w);
            }
            *o = clip8(acc);
        }
    }
    out
}

/// Pillow's `NEAREST`: input pixel `floor((x + 0.5) · scale)` for output pixel `x`.
fn nearest(src: &[u8], w: usize, h: usize, ch: usize, nw: usize, nh: usize) -> Vec<u8> {
    let pick = |i: usize, n_in: usize, n_out: usize| {
        (((i as f64 + 0.5) * n_in as f64 / n_out as f64) as usize).min(n_in - 1)
    };
    let xs: Vec<usize> = (0..nw).map(|x| pick(x, w, nw)).collect();
    let mut out = Vec::with_capacity(nw * nh * ch);
    for y in 0..nh {
        let row = &src[pick(y, h, nh) * w * ch..][..w * ch];
        for &x in &xs {
            out.extend_from_slice(&row[x * ch..(x + 1) * ch]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point_and_stay_in_bounds() {
        for (n_in, n_out) in [(341, 256), (256, 341), (500, 256), (10, 3), (3, 10)] {
            for f in [Filter::Bilinear, Filter::Bicubic, Filter::Lanczos] {
                let c = coefficients(n_in, n_out, f);
                for (i, &(start, n)) in c.bounds.iter().enumerate() {
                    assert!(start + n <= n_in && n > 0, "{f:?} {n_in}->{n_out} at {i}");
                    let sum: i64 = c.weights[i * c.ksize..][..n].iter().map(|&w| w as i64).sum();
                    assert!((sum - (1 << PRECISION_BITS)).abs() <= n as i64, "{sum}");
                }
            }
        }
    }

    #[test]
    fn a_constant_image_stays_constant_and_same_size_is_a_copy() {
        let img = vec![77u8; 13 * 9 * 3];
        for f in [Filter::Nearest, Filter::Bilinear, Filter::Bicubic, Filter::Lanczos] {
            for (w, h) in [(5, 4), (20, 30), (13, 4)] {
                let out = resize(&img, 13, 9, 3, w, h, f);
                assert_eq!(out.len(), w * h * 3);
                assert!(out.iter().all(|&v| v == 77), "{f:?} {w}x{h}");
            }
        }
        let ramp: Vec<u8> = (0..12u8).collect();
        assert_eq!(resize(&ramp, 4, 1, 3, 4, 1, Filter::Bilinear), ramp);
    }

    #[test]
    fn shrinking_by_two_averages_pairs_like_pillow() {
        // Pillow 13: Image.frombytes("L", (4, 1), bytes([0, 100, 200, 250]))
        // .resize((2, 1), Image.BILINEAR) gives [71, 207].
        let out = resize(&[0, 100, 200, 250], 4, 1, 1, 2, 1, Filter::Bilinear);
        // Output 0: centre 1.0, support 2: inputs 0..2 at distances 0.5, 0.5, 1.5 → weights
        // 0.75, 0.75, 0.25 (/1.75): (0·0.75 + 100·0.75 + 200·0.25) / 1.75 = 71.4.
        // Output 1: centre 3.0: inputs 1..3 at 1.5, 0.5, 0.5 → (25 + 150 + 187.5) / 1.75 = 207.1.
        assert_eq!(out, vec![71, 207]);
    }
}
