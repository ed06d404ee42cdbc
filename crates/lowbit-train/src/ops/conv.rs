//! Convolution (1-3 spatial dims, grouped and depthwise) as im2col + GEMM on lowbit_kernels'
//! `im2col`/`col2im_add` and f32 GEMM. The engine's conv kernel packs weights once and keeps no
//! unfolded input, which the backward pass needs; the unfolded input is recomputed in the
//! backward pass (cheap next to the GEMMs) instead of being kept on the tape.

use crate::arr::Arr;
use lowbit_kernels::conv::{col2im_add, im2col};
use lowbit_kernels::gemm::{sgemm_serial, Trans};
use lowbit_kernels::window::Window;

#[derive(Clone, Debug, PartialEq)]
pub struct ConvAttrs {
    pub group: usize,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    /// Begin pads then end pads, or empty for `auto_pad`.
    pub pads: Vec<usize>,
    /// `NOTSET`, `VALID`, `SAME_UPPER` or `SAME_LOWER`.
    pub auto_pad: String,
}

struct Geometry {
    n: usize,
    c_in: usize,
    c_out: usize,
    group: usize,
    win: Window,
    out_shape: Vec<usize>,
}

fn geometry(p: &ConvAttrs, x: &Arr, w: &Arr) -> Result<Geometry, String> {
    let r = x.rank();
    if !(3..=5).contains(&r) || w.rank() != r {
        return Err(format!(
            "Conv of input {:?} with weight {:?} is not supported",
            x.shape, w.shape
        ));
    }
    let sp = r - 2;
    let (n, c_in, c_out) = (x.shape[0], x.shape[1], w.shape[0]);
    let group = p.group.max(1);
    if c_in != w.shape[1] * group || c_out % group != 0 {
        return Err(format!(
            "Conv: input {:?}, weight {:?} and group {group} disagree",
            x.shape, w.shape
        ));
    }
    let input = &x.shape[2..];
    let kernel = &w.shape[2..];
    let or_ones = |v: &[usize]| if v.is_empty() { vec![1; sp] } else { v.to_vec() };
    let strides = or_ones(&p.strides);
    let dil = or_ones(&p.dilations);
    let (mut pb, mut pe) = (vec![0; sp], vec![0; sp]);
    match p.auto_pad.as_str() {
        "SAME_UPPER" | "SAME_LOWER" => {
            for i in 0..sp {
                let out = input[i].div_ceil(strides[i]);
                let need = ((out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1)
                    .saturating_sub(input[i]);
                let (lo, hi) = (need / 2, need - need / 2);
                (pb[i], pe[i]) = if p.auto_pad == "SAME_UPPER" { (lo, hi) } else { (hi, lo) };
            }
        }
        "VALID" => {}
        _ if p.pads.len() == 2 * sp => {
            pb.copy_from_slice(&p.pads[..sp]);
            pe.copy_from_slice(&p.pads[sp..]);
        }
        _ if p.pads.is_empty() => {}
        _ => return Err(format!("Conv: {} pads for {sp} spatial dims", p.pads.len())),
    }
    let mut output = Vec::with_capacity(sp);
    for i in 0..sp {
        let span = (kernel[i] - 1) * dil[i] + 1;
        let padded = input[i] + pb[i] + pe[i];
        if padded < span {
            return Err(format!("Conv: kernel {kernel:?} larger than the padded input {input:?}"));
        }
        output.push((padded - span) / strides[i] + 1);
    }
    let win = Window::new(input, kernel, &strides, &dil, &pb, &pe, &output)
        .ok_or_else(|| "Conv: window not understood".to_string())?;
    let mut out_shape = vec![n, c_out];
    out_shape.extend(&output);
    Ok(Geometry { n, c_in, c_out, group, win, out_shape })
}

pub fn conv_forward(p: &ConvAttrs, x: &Arr, w: &Arr, b: Option<&Arr>) -> Result<Arr, String> {
    let g = geometry(p, x, w)?;
    let (cig, cog) = (g.c_in / g.group, g.c_out / g.group);
    let (in_size, out_size) = (g.win.input_size(), g.win.output_size());
    let k = cig * g.win.kernel_size();
    let mut y = vec![0.0; g.out_shape.iter().product()];
    let mut col = vec![0.0; k * out_size];
    for n in 0..g.n {
        for gi in 0..g.group {
            let xs =
                &x.data[(n * g.c_in + gi * cig) * in_size..(n * g.c_in + (gi + 1) * cig) * in_size];
            im2col(&g.win, cig, xs, &mut col);
            let ys = &mut y
                [(n * g.c_out + gi * cog) * out_size..(n * g.c_out + (gi + 1) * cog) * out_size];
            let ws = &w.data[gi * cog * k..(gi + 1) * cog * k];
            sgemm_serial(
                Trans::No,
                Trans::No,
                cog,
                out_size,
                k,
                1.0,
                ws,
                k,
                &col,
                out_size,
                0.0,
                ys,
                out_size,
            );
        }
        if let Some(b) = b {
            for c in 0..g.c_out {
                let row = &mut y[(n * g.c_out + c) * out_size..(n * g.c_out + c + 1) * out_size];
                row.iter_mut().for_each(|v| *v += b.data[c]);
            }
        }
    }
    Ok(Arr::new(g.out_shape, y))
}

pub fn conv_backward(
    p: &ConvAttrs,
    x: &Arr,
    w: &Arr,
    b: Option<&Arr>,
    gy: &Arr,
) -> Result<Vec<Option<Arr>>, String> {
    let g = geometry(p, x, w)?;
    let (cig, cog) = (g.c_in / g.group, g.c_out / g.group);
    let (in_size, out_size) = (g.win.input_size(), g.win.output_size());
    let k = cig * g.win.kernel_size();
    let mut gx = vec![0.0; x.len()];
    let mut gw = vec![0.0; w.len()];
    let mut col = vec![0.0; k * out_size];
    let mut gcol = vec![0.0; k * out_size];
    for n in 0..g.n {
        for gi in 0..g.group {
            let xs =
                &x.data[(n * g.c_in + gi * cig) * in_size..(n * g.c_in + (gi + 1) * cig) * in_size];
            im2col(&g.win, cig, xs, &mut col);
            let gys = &gy.data
                [(n * g.c_out + gi * cog) * out_size..(n * g.c_out + (gi + 1) * cog) * out_size];
            let ws = &w.data[gi * cog * k..(gi + 1) * cog * k];
            // dW_g += dY_g · colᵀ
            let gws = &mut gw[gi * cog * k..(gi + 1) * cog * k];
            sgemm_serial(
                Trans::No,
                Trans::Yes,
                cog,
                k,
                out_size,
                1.0,
                gys,
                out_size,
                &col,
                out_size,
                1.0,
                gws,
                k,
            );
            // dcol = W_gᵀ · dY_g, folded back onto the input planes.
            sgemm_serial(
                Trans::Yes,
                Trans::No,
                k,
                out_size,
                cog,
                1.0,
                ws,
                k,
                gys,
                out_size,
                0.0,
                &mut gcol,
                out_size,
            );
            let gxs =
                &mut gx[(n * g.c_in + gi * cig) * in_size..(n * g.c_in + (gi + 1) * cig) * in_size];
            col2im_add(&g.win, cig, &gcol, gxs);
        }
    }
    let gb = b.map(|b| {
        let mut gb = vec![0.0; b.len()];
        for n in 0..g.n {
            for (c, v) in gb.iter_mut().enumerate() {
                *v += gy.data[(n * g.c_out + c) * out_size..(n * g.c_out + c + 1) * out_size]
                    .iter()
                    .sum::<f32>();
            }
        }
        Arr::new(b.shape.clone(), gb)
    });
    Ok(vec![Some(Arr::new(x.shape.clone(), gx)), Some(Arr::new(w.shape.clone(), gw)), gb])
}
