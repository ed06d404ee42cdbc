//! Pooling over 2-D planes (`N×C×H×W`; 1-D pools read as `H = 1`). Own loops rather than
//! lowbit_kernels' pooling: the max pool's backward needs the position of each window's
//! maximum, which the engine's kernel does not report.

use crate::arr::Arr;

#[derive(Clone, Debug, PartialEq)]
pub struct PoolAttrs {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub pads: Vec<usize>,
    pub dilations: Vec<usize>,
    pub ceil_mode: bool,
    pub auto_pad: String,
    pub count_include_pad: bool,
}

struct Plane {
    n: usize,
    c: usize,
    ih: usize,
    iw: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    dh: usize,
    dw: usize,
    pt: usize,
    pl: usize,
    /// Padded extent (bottom/right), for `count_include_pad`.
    ph_end: usize,
    pw_end: usize,
}

fn plane(p: &PoolAttrs, x: &Arr) -> Result<Plane, String> {
    let (sp, two) = match x.rank() {
        3 => (1, false),
        4 => (2, true),
        _ => return Err(format!("pooling of a rank-{} input is not supported", x.rank())),
    };
    if p.kernel.len() != sp {
        return Err(format!("kernel_shape {:?} for input {:?}", p.kernel, x.shape));
    }
    let get = |v: &[usize], i: usize, d: usize| if v.is_empty() { d } else { v[i] };
    let (n, c) = (x.shape[0], x.shape[1]);
    let (ih, iw) = if two { (x.shape[2], x.shape[3]) } else { (1, x.shape[2]) };
    let lift = |v: &[usize]| -> Vec<usize> {
        if two || v.is_empty() {
            v.to_vec()
        } else {
            vec![1, v[0]]
        }
    };
    let kernel = lift(&p.kernel);
    let strides = lift(&p.strides);
    let dil = lift(&p.dilations);
    let pads: Vec<usize> =
        if two || p.pads.is_empty() { p.pads.clone() } else { vec![0, p.pads[0], 0, p.pads[1]] };
    let (kh, kw) = (kernel[0], kernel[1]);
    let (sh, sw) = (get(&strides, 0, 1), get(&strides, 1, 1));
    let (dh, dw) = (get(&dil, 0, 1), get(&dil, 1, 1));
    let (mut pt, mut pl, mut pb, mut pr) =
        (get(&pads, 0, 0), get(&pads, 1, 0), get(&pads, 2, 0), get(&pads, 3, 0));
    let span = |k: usize, d: usize| (k - 1) * d + 1;
    if p.auto_pad.starts_with("SAME") {
        let need = |i: usize, s: usize, k: usize, d: usize| {
            ((i.div_ceil(s) - 1) * s + span(k, d)).saturating_sub(i)
        };
        let (nh, nw) = (need(ih, sh, kh, dh), need(iw, sw, kw, dw));
        if p.auto_pad == "SAME_UPPER" {
            (pt, pb, pl, pr) = (nh / 2, nh - nh / 2, nw / 2, nw - nw / 2);
        } else {
            (pt, pb, pl, pr) = (nh - nh / 2, nh / 2, nw - nw / 2, nw / 2);
        }
    } else if p.auto_pad == "VALID" {
        (pt, pb, pl, pr) = (0, 0, 0, 0);
    }
    let out =
        |i: usize, lo: usize, hi: usize, k: usize, d: usize, s: usize| -> Result<usize, String> {
            let padded = i + lo + hi;
            if padded < span(k, d) {
                return Err(format!(
                    "pool kernel {:?} larger than the padded input {:?}",
                    p.kernel, x.shape
                ));
            }
            let r = padded - span(k, d);
            Ok(if p.ceil_mode { r.div_ceil(s) + 1 } else { r / s + 1 })
        };
    let oh = out(ih, pt, pb, kh, dh, sh)?;
    let ow = out(iw, pl, pr, kw, dw, sw)?;
    Ok(Plane {
        n,
        c,
        ih,
        iw,
        oh,
        ow,
        kh,
        kw,
        sh,
        sw,
        dh,
        dw,
        pt,
        pl,
        ph_end: ih + pb,
        pw_end: iw + pr,
    })
}

fn out_shape(x: &Arr, pl: &Plane) -> Vec<usize> {
    if x.rank() == 4 {
        vec![pl.n, pl.c, pl.oh, pl.ow]
    } else {
        vec![pl.n, pl.c, pl.ow]
    }
}

/// The input positions (flat in the plane) of output `(oy, ox)`'s window, and how many padded
/// positions the window covers (for `count_include_pad`).
fn window(pl: &Plane, oy: usize, ox: usize, taps: &mut Vec<usize>) -> usize {
    taps.clear();
    let mut padded = 0;
    for ky in 0..pl.kh {
        let y = (oy * pl.sh + ky * pl.dh) as isize - pl.pt as isize;
        for kx in 0..pl.kw {
            let x = (ox * pl.sw + kx * pl.dw) as isize - pl.pl as isize;
            let inside_pad = y < (pl.ph_end as isize) && x < (pl.pw_end as isize);
            if y >= 0 && x >= 0 && (y as usize) < pl.ih && (x as usize) < pl.iw {
                taps.push(y as usize * pl.iw + x as usize);
                padded += 1;
            } else if inside_pad {
                padded += 1;
            }
        }
    }
    padded
}

/// Visits every output position of every plane in order: `f(plane, output, taps, padded)` with
/// `plane` the `n·c` index, `output` the flat position in the output plane and `taps`/`padded`
/// as [`window`] gives them. The one walk the four pooling passes share.
fn each_window(pl: &Plane, mut f: impl FnMut(usize, usize, &[usize], usize)) {
    let mut taps = Vec::new();
    for nc in 0..pl.n * pl.c {
        for oy in 0..pl.oh {
            for ox in 0..pl.ow {
                let padded = window(pl, oy, ox, &mut taps);
                f(nc, oy * pl.ow + ox, &taps, padded);
            }
        }
    }
}

pub fn max_pool_forward(p: &PoolAttrs, x: &Arr) -> Result<Arr, String> {
    let pl = plane(p, x)?;
    let (isz, osz) = (pl.ih * pl.iw, pl.oh * pl.ow);
    let mut y = vec![0.0; pl.n * pl.c * osz];
    each_window(&pl, |nc, o, taps, _| {
        let xs = &x.data[nc * isz..(nc + 1) * isz];
        y[nc * osz + o] = taps.iter().map(|&t| xs[t]).fold(f32::NEG_INFINITY, f32::max);
    });
    Ok(Arr::new(out_shape(x, &pl), y))
}

/// The gradient goes to the first maximum of each window (ties: the first tap in scan order).
pub fn max_pool_backward(p: &PoolAttrs, x: &Arr, gy: &Arr) -> Result<Arr, String> {
    let pl = plane(p, x)?;
    let (isz, osz) = (pl.ih * pl.iw, pl.oh * pl.ow);
    let mut gx = vec![0.0; x.len()];
    each_window(&pl, |nc, o, taps, _| {
        let xs = &x.data[nc * isz..(nc + 1) * isz];
        let mut best: Option<usize> = None;
        for &t in taps {
            if best.is_none_or(|b| xs[t] > xs[b]) {
                best = Some(t);
            }
        }
        if let Some(b) = best {
            gx[nc * isz + b] += gy.data[nc * osz + o];
        }
    });
    Ok(Arr::new(x.shape.clone(), gx))
}

fn avg_divisor(p: &PoolAttrs, taps: usize, padded: usize) -> f32 {
    (if p.count_include_pad { padded } else { taps }).max(1) as f32
}

pub fn avg_pool_forward(p: &PoolAttrs, x: &Arr) -> Result<Arr, String> {
    let pl = plane(p, x)?;
    let (isz, osz) = (pl.ih * pl.iw, pl.oh * pl.ow);
    let mut y = vec![0.0; pl.n * pl.c * osz];
    each_window(&pl, |nc, o, taps, padded| {
        let xs = &x.data[nc * isz..(nc + 1) * isz];
        let s: f32 = taps.iter().map(|&t| xs[t]).sum();
        y[nc * osz + o] = s / avg_divisor(p, taps.len(), padded);
    });
    Ok(Arr::new(out_shape(x, &pl), y))
}

pub fn avg_pool_backward(p: &PoolAttrs, x: &Arr, gy: &Arr) -> Result<Arr, String> {
    let pl = plane(p, x)?;
    let (isz, osz) = (pl.ih * pl.iw, pl.oh * pl.ow);
    let mut gx = vec![0.0; x.len()];
    each_window(&pl, |nc, o, taps, padded| {
        let g = gy.data[nc * osz + o] / avg_divisor(p, taps.len(), padded);
        for &t in taps {
            gx[nc * isz + t] += g;
        }
    });
    Ok(Arr::new(x.shape.clone(), gx))
}

/// Mean over every axis after the first two.
pub fn global_avg_forward(x: &Arr) -> Result<Arr, String> {
    if x.rank() < 3 {
        return Err(format!("GlobalAveragePool of a rank-{} input", x.rank()));
    }
    let nc = x.shape[0] * x.shape[1];
    let sz = x.len() / nc.max(1);
    let y = (0..nc).map(|i| x.data[i * sz..(i + 1) * sz].iter().sum::<f32>() / sz as f32).collect();
    let mut shape = x.shape.clone();
    shape[2..].iter_mut().for_each(|d| *d = 1);
    Ok(Arr::new(shape, y))
}

pub fn global_avg_backward(x: &Arr, gy: &Arr) -> Arr {
    let nc = x.shape[0] * x.shape[1];
    let sz = x.len() / nc.max(1);
    let mut gx = vec![0.0; x.len()];
    for i in 0..nc {
        gx[i * sz..(i + 1) * sz].fill(gy.data[i] / sz as f32);
    }
    Arr::new(x.shape.clone(), gx)
}
