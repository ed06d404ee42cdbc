//! Neural-network layers: convolutions and pools (the sliding-window output dims, symbolic
//! where a stride-1 "same" window keeps the dim), normalizations (with their optional
//! statistics outputs), softmax-like maps, recurrent layers, `Attention`, `Dropout`, and the
//! detection ops.

use lowbit_tensor::DType;

use super::{elementwise::unary, RuleFn};
use crate::infer::sym::{dim_mul, fmt_shape, Mono};
use crate::infer::{out, Cx, Out, Result, SymDim, ValueType};

pub(super) const RULES: &[(&str, RuleFn)] = &[
    ("Conv", conv),
    ("ConvTranspose", conv_transpose),
    ("MaxPool", pool),
    ("AveragePool", pool),
    ("LpPool", pool),
    ("GlobalAveragePool", global_pool),
    ("GlobalMaxPool", global_pool),
    ("GlobalLpPool", global_pool),
    ("BatchNormalization", batch_norm),
    ("LayerNormalization", layer_norm),
    ("InstanceNormalization", unary),
    ("GroupNormalization", unary),
    ("MeanVarianceNormalization", unary),
    ("LpNormalization", unary),
    ("RMSNormalization", unary),
    ("LRN", unary),
    ("Softmax", unary),
    ("LogSoftmax", unary),
    ("Hardmax", unary),
    ("RotaryEmbedding", unary),
    ("Dropout", dropout),
    ("LSTM", rnn),
    ("GRU", rnn),
    ("RNN", rnn),
    ("Attention", attention),
    ("GridSample", grid_sample),
    ("RoiAlign", roi_align),
    ("NonMaxSuppression", non_max_suppression),
];

/// The sliding window of a conv or pool over `n` spatial dims: kernel, strides, dilations,
/// pads (`n` begins, then `n` ends) and `auto_pad`.
struct Window {
    kernel: Vec<i64>,
    strides: Vec<i64>,
    dil: Vec<i64>,
    pads: Vec<i64>,
    auto: String,
}

fn conv(cx: &mut Cx) -> Result<Vec<Out>> {
    Ok(vec![out(cx.dtype(0), conv_shape(cx, 0, 1, false)?)])
}

fn conv_transpose(cx: &mut Cx) -> Result<Vec<Out>> {
    Ok(vec![out(cx.dtype(0), conv_shape(cx, 0, 1, true)?)])
}

/// Pooled values, and (`MaxPool`) the int64 indices of the maxima.
fn pool(cx: &mut Cx) -> Result<Vec<Out>> {
    let shape = pool_shape(cx)?;
    Ok(vec![out(cx.dtype(0), shape.clone()), out(Some(DType::I64), shape)])
}

fn global_pool(cx: &mut Cx) -> Result<Vec<Out>> {
    let shape = cx.shape(0).map(|s| {
        s.iter()
            .enumerate()
            .map(|(i, d)| if i < 2 { d.clone() } else { SymDim::Known(1) })
            .collect()
    });
    Ok(vec![out(cx.dtype(0), shape)])
}

/// The normalized input, and the running mean and variance in training mode.
fn batch_norm(cx: &mut Cx) -> Result<Vec<Out>> {
    let stat = || out(cx.dtype(3), cx.shape(3));
    Ok(vec![out(cx.dtype(0), cx.shape(0)), stat(), stat()])
}

/// The normalized input, then mean and inverse standard deviation (as `stash_type`), 1 from
/// `axis` on.
fn layer_norm(cx: &mut Cx) -> Result<Vec<Out>> {
    let x_shape = cx.shape(0);
    let axis = cx.attrs.int_or("axis", -1)?;
    let stat_shape = match &x_shape {
        Some(s) => {
            let a = cx.axis(axis, s.len())?;
            let mut st = s.clone();
            st[a..].iter_mut().for_each(|d| *d = SymDim::Known(1));
            Some(st)
        }
        None => None,
    };
    let stash = DType::from_onnx(cx.attrs.int_or("stash_type", 1)? as i32);
    Ok(vec![out(cx.dtype(0), x_shape), out(stash, stat_shape.clone()), out(stash, stat_shape)])
}

/// The input, and a bool mask of its shape.
fn dropout(cx: &mut Cx) -> Result<Vec<Out>> {
    let x_shape = cx.shape(0);
    let mask = out(Some(DType::Bool), x_shape.clone());
    Ok(vec![Out { ty: ValueType::new(cx.dtype(0), x_shape), val: None }, mask])
}

fn grid_sample(cx: &mut Cx) -> Result<Vec<Out>> {
    let shape = match (cx.shape(0), cx.shape(1)) {
        (Some(x), Some(g)) if x.len() == g.len() && x.len() >= 3 => {
            let mut s = vec![x[0].clone(), x[1].clone()];
            s.extend(g[1..g.len() - 1].iter().cloned());
            Some(s)
        }
        _ => None,
    };
    Ok(vec![out(cx.dtype(0), shape)])
}

fn roi_align(cx: &mut Cx) -> Result<Vec<Out>> {
    let oh = cx.attrs.int_or("output_height", 1)?;
    let ow = cx.attrs.int_or("output_width", 1)?;
    let rois = cx.shape(1).and_then(|s| s.first().cloned());
    let shape = match (cx.shape(0), rois) {
        (Some(x), Some(n)) if x.len() == 4 => {
            Some(vec![n, x[1].clone(), SymDim::Known(oh), SymDim::Known(ow)])
        }
        _ => None,
    };
    Ok(vec![out(cx.dtype(0), shape)])
}

/// `[selected, 3]` int64 triples; how many is known only at run time.
fn non_max_suppression(cx: &mut Cx) -> Result<Vec<Out>> {
    Ok(vec![out(Some(DType::I64), Some(vec![cx.fresh(), SymDim::Known(3)]))])
}

/// Input 0's shape, `[batch, channels, spatial…]` (an error with fewer dims), when known.
fn batch_channels_spatial(cx: &Cx, x: usize) -> Result<Option<Vec<SymDim>>> {
    match cx.shape(x) {
        Some(xs) if xs.len() < 3 => Err(cx.err(format!(
            "input {} must have a batch, a channel and spatial dims",
            fmt_shape(&xs)
        ))),
        xs => Ok(xs),
    }
}

/// The window attributes of a conv or pool with `kernel` over `n` spatial dims.
fn window(cx: &Cx, n: usize, kernel: Vec<i64>) -> Result<Window> {
    let strides = cx.attrs.ints_or("strides", &vec![1; n])?;
    let dil = cx.attrs.ints_or("dilations", &vec![1; n])?;
    let pads = cx.attrs.ints_or("pads", &vec![0; 2 * n])?;
    let auto = cx.attrs.string_or("auto_pad", "NOTSET")?;
    if strides.len() != n || dil.len() != n || pads.len() != 2 * n || kernel.len() != n {
        return Err(cx.err(format!(
            "kernel {kernel:?}, strides {strides:?}, dilations {dil:?}, pads {pads:?} do not fit \
             {n} spatial dims"
        )));
    }
    Ok(Window { kernel, strides, dil, pads, auto })
}

/// The output dims of a conv or pool over input spatial dims `xs`.
fn window_dims(cx: &mut Cx, xs: &[SymDim], w: &Window, ceil: bool) -> Result<Vec<SymDim>> {
    (0..xs.len()).map(|i| window_dim(cx, &xs[i], w, i, ceil)).collect()
}

/// Output spatial dim `i` of a conv or pool whose input dim is `d`.
fn window_dim(cx: &mut Cx, d: &SymDim, w: &Window, i: usize, ceil: bool) -> Result<SymDim> {
    let n = w.kernel.len();
    let (k, s, dil, pb, pe) = (w.kernel[i], w.strides[i], w.dil[i], w.pads[i], w.pads[i + n]);
    let auto = w.auto.as_str();
    let eff = dil * (k - 1) + 1;
    if s <= 0 {
        return Err(cx.err(format!("stride {s} must be positive")));
    }
    Ok(match (auto, d) {
        ("SAME_UPPER" | "SAME_LOWER", SymDim::Known(x)) => SymDim::Known((x + s - 1) / s),
        ("SAME_UPPER" | "SAME_LOWER", _) if s == 1 => d.clone(),
        ("VALID", SymDim::Known(x)) => SymDim::Known(((x - eff) / s + 1).max(0)),
        (_, SymDim::Known(x)) if auto != "SAME_UPPER" && auto != "SAME_LOWER" => {
            let (pb, pe) = if auto == "VALID" { (0, 0) } else { (pb, pe) };
            let span = x + pb + pe - eff;
            if span < 0 {
                return Err(cx.err(format!(
                    "window {eff} is larger than the padded input dim {}",
                    x + pb + pe
                )));
            }
            let mut o = if ceil { (span + s - 1) / s + 1 } else { span / s + 1 };
            // The last window must start inside the input or the begin padding.
            if ceil && (o - 1) * s >= x + pb {
                o -= 1;
            }
            SymDim::Known(o)
        }
        (_, SymDim::Sym(_))
            if s == 1
                && (auto == "VALID" && eff == 1 || auto == "NOTSET" && pb + pe == eff - 1) =>
        {
            d.clone()
        }
        // A named input dim gives a named output dim: the formula itself.
        // (`ceil_mode`'s last-window rule depends on the value: no formula for it.)
        (_, SymDim::Sym(name)) if !d.is_anonymous() && (!ceil || auto.starts_with("SAME")) => {
            let x = if name.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '.') {
                name.clone()
            } else {
                format!("({name})")
            };
            SymDim::Sym(match auto {
                "SAME_UPPER" | "SAME_LOWER" => format!("ceil({x}/{s})"),
                _ => {
                    let (pb, pe) = if auto == "VALID" { (0, 0) } else { (pb, pe) };
                    let c = pb + pe - eff;
                    if s == 1 {
                        if c + 1 == 0 {
                            name.clone()
                        } else {
                            format!("{x}{:+}", c + 1)
                        }
                    } else if c == 0 {
                        format!("floor({x}/{s})+1")
                    } else {
                        format!("floor(({x}{c:+})/{s})+1")
                    }
                }
            })
        }
        _ => cx.fresh(),
    })
}

/// The output shape of a convolution of input `x` by weight `w` (transposed: `ConvTranspose`,
/// with `output_shape`/`output_padding`); `None` when the input's shape is unknown.
pub(super) fn conv_shape(
    cx: &mut Cx,
    x: usize,
    w: usize,
    transpose: bool,
) -> Result<Option<Vec<SymDim>>> {
    let Some(xs) = batch_channels_spatial(cx, x)? else { return Ok(None) };
    let n = xs.len() - 2;
    let ws = cx.shape(w);
    let group = cx.attrs.int_or("group", 1)?;
    let kernel = match cx.attrs.ints("kernel_shape")? {
        Some(k) => Some(k),
        None => ws
            .as_ref()
            .and_then(|ws| ws.get(2..).and_then(|k| k.iter().map(SymDim::known).collect())),
    };
    let out_c = match &ws {
        Some(ws) if ws.len() == n + 2 => {
            if transpose {
                dim_mul(&ws[1], &SymDim::Known(group))
            } else {
                if let (Some(c), Some(wc)) = (xs[1].known(), ws[1].known()) {
                    if c != wc * group {
                        return Err(cx.err(format!(
                            "input has {c} channels but weight {} with group {group} expects {}",
                            fmt_shape(ws),
                            wc * group
                        )));
                    }
                }
                ws[0].clone()
            }
        }
        Some(ws) => {
            return Err(cx.err(format!(
                "weight {} does not fit input {}",
                fmt_shape(ws),
                fmt_shape(&xs)
            )))
        }
        None => cx.fresh(),
    };
    let mut shape = vec![xs[0].clone(), out_c];
    let Some(kernel) = kernel else {
        shape.extend((0..n).map(|_| cx.fresh.dim()));
        return Ok(Some(shape));
    };
    let win = window(cx, n, kernel)?;
    let Window { kernel, strides, dil, pads, auto } = &win;
    if transpose {
        let out_pad = cx.attrs.ints_or("output_padding", &vec![0; n])?;
        let explicit = cx.attrs.ints("output_shape")?;
        for i in 0..n {
            let d = match (&explicit, &xs[i + 2]) {
                (Some(o), _) if o.len() == n => SymDim::Known(o[i]),
                (Some(o), _) if o.len() == n + 2 => SymDim::Known(o[i + 2]),
                (_, SymDim::Known(x)) => {
                    if auto == "SAME_UPPER" || auto == "SAME_LOWER" {
                        SymDim::Known(x * strides[i])
                    } else {
                        let (pb, pe) =
                            if auto == "VALID" { (0, 0) } else { (pads[i], pads[i + n]) };
                        SymDim::Known(
                            strides[i] * (x - 1)
                                + out_pad.get(i).copied().unwrap_or(0)
                                + (kernel[i] - 1) * dil[i]
                                + 1
                                - pb
                                - pe,
                        )
                    }
                }
                _ => cx.fresh(),
            };
            shape.push(d);
        }
    } else {
        shape.extend(window_dims(cx, &xs[2..], &win, false)?);
    }
    Ok(Some(shape))
}

/// The output shape of a pool (`kernel_shape` is required).
fn pool_shape(cx: &mut Cx) -> Result<Option<Vec<SymDim>>> {
    let Some(xs) = batch_channels_spatial(cx, 0)? else { return Ok(None) };
    let kernel = cx
        .attrs
        .ints("kernel_shape")?
        .ok_or_else(|| cx.err("attribute 'kernel_shape' is required"))?;
    let win = window(cx, xs.len() - 2, kernel)?;
    let ceil = cx.attrs.int_or("ceil_mode", 0)? != 0;
    let mut shape = vec![xs[0].clone(), xs[1].clone()];
    shape.extend(window_dims(cx, &xs[2..], &win, ceil)?);
    Ok(Some(shape))
}

/// `LSTM`/`GRU`/`RNN`: all hidden states `Y`, then the last hidden (and cell) state, laid out
/// by `layout` (0: sequence first, 1: batch first).
fn rnn(cx: &mut Cx) -> Result<Vec<Out>> {
    let hidden = cx.attrs.int("hidden_size")?.map(SymDim::Known);
    let dirs = if cx.attrs.string_or("direction", "forward")? == "bidirectional" { 2 } else { 1 };
    let layout = cx.attrs.int_or("layout", 0)?;
    let dtype = cx.dtype(0);
    let Some(xs) = cx.shape(0).filter(|s| s.len() == 3) else {
        return Ok(vec![out(dtype, None), out(dtype, None), out(dtype, None)]);
    };
    let hidden = hidden.unwrap_or_else(|| cx.fresh());
    let (seq, batch) = if layout == 0 { (&xs[0], &xs[1]) } else { (&xs[1], &xs[0]) };
    let nd = SymDim::Known(dirs);
    let (y, h) = if layout == 0 {
        (
            vec![seq.clone(), nd.clone(), batch.clone(), hidden.clone()],
            vec![nd, batch.clone(), hidden],
        )
    } else {
        (
            vec![batch.clone(), seq.clone(), nd.clone(), hidden.clone()],
            vec![batch.clone(), nd, hidden],
        )
    };
    Ok(vec![out(dtype, Some(y)), out(dtype, Some(h.clone())), out(dtype, Some(h))])
}

/// ONNX `Attention`: `Y` (Q's type) `[B, Hq, Sq, Dv]`, or `[B, Sq, Hq·Dv]` for 3-D inputs;
/// `present_key`/`present_value` `[B, Hkv, past + T, D]`; `qk_matmul_output` `[B, Hq, Sq,
/// past + T]`. 3-D inputs are `[B, S, heads·D]`, split by `q_num_heads`/`kv_num_heads`.
fn attention(cx: &mut Cx) -> Result<Vec<Out>> {
    let (qt, kt, vt) = (cx.dtype(0), cx.dtype(1), cx.dtype(2));
    let unknown = vec![out(qt, None), out(kt, None), out(vt, None), out(qt, None)];
    let (Some(q), Some(k), Some(v)) = (cx.shape(0), cx.shape(1), cx.shape(2)) else {
        return Ok(unknown);
    };
    let heads = (cx.attrs.int("q_num_heads")?, cx.attrs.int("kv_num_heads")?);
    let div = |d: &SymDim, n: i64| Mono::from_dim(d).div(&Mono::int(n)).map(|m| m.to_dim());
    // [B, H, S, D] views of Q, K and V.
    let as_4d = |x: &[SymDim], h: Option<i64>| -> Option<Vec<SymDim>> {
        match (x.len(), h) {
            (4, _) => Some(x.to_vec()),
            (3, Some(h)) if h > 0 => {
                Some(vec![x[0].clone(), SymDim::Known(h), x[1].clone(), div(&x[2], h)?])
            }
            _ => None,
        }
    };
    let (Some(q4), Some(k4), Some(v4)) =
        (as_4d(&q, heads.0), as_4d(&k, heads.1), as_4d(&v, heads.1))
    else {
        return Ok(unknown);
    };
    let past = if cx.has_input(4) { cx.shape(4).and_then(|p| p.get(2).cloned()) } else { None };
    // past + T: a new name when the sum has no monomial form (two different symbols).
    let total = match past {
        Some(p) => Some(
            Mono::from_dim(&p)
                .add(&Mono::from_dim(&k4[2]))
                .map(|m| m.to_dim())
                .unwrap_or_else(|| cx.fresh()),
        ),
        None if cx.has_input(4) => None,
        None => Some(k4[2].clone()),
    };
    let y = if q.len() == 3 {
        vec![q4[0].clone(), q4[2].clone(), dim_mul(&q4[1], &v4[3])]
    } else {
        vec![q4[0].clone(), q4[1].clone(), q4[2].clone(), v4[3].clone()]
    };
    let Some(total) = total else {
        return Ok(vec![out(qt, Some(y)), out(kt, None), out(vt, None), out(qt, None)]);
    };
    let present = |x: &[SymDim]| vec![x[0].clone(), x[1].clone(), total.clone(), x[3].clone()];
    let qk = vec![q4[0].clone(), q4[1].clone(), q4[2].clone(), total.clone()];
    Ok(vec![
        out(qt, Some(y)),
        out(kt, Some(present(&k4))),
        out(vt, Some(present(&v4))),
        out(qt, Some(qk)),
    ])
}

/// ONNX Runtime's fused `com.microsoft.Attention`: output `[B, S, Hv]` (input's type), `Hv`
/// from `qkv_hidden_sizes` or a third of the weight's columns; `present`
/// `[2, B, num_heads, past + S, Dh]` when `past` is given.
pub(super) fn ort_attention(cx: &mut Cx) -> Result<Vec<Out>> {
    let dtype = cx.dtype(0);
    let heads = cx.attrs.int("num_heads")?.filter(|&h| h > 0);
    let sizes = cx.attrs.ints("qkv_hidden_sizes")?.filter(|v| v.len() == 3);
    let x = cx.shape(0).filter(|s| s.len() == 3);
    let cols = cx.shape(1).filter(|s| s.len() == 2).and_then(|w| w[1].known());
    let (hk, hv) = match (&sizes, cols) {
        (Some(v), _) => (Some(v[1]), Some(v[2])),
        (None, Some(n)) if n % 3 == 0 => (Some(n / 3), Some(n / 3)),
        _ => (None, None),
    };
    let y = x.as_ref().map(|x| {
        let last = hv.map(SymDim::Known).unwrap_or_else(|| cx.fresh());
        vec![x[0].clone(), x[1].clone(), last]
    });
    let present = match (cx.has_input(4).then(|| cx.shape(4)).flatten(), &x, heads, hk) {
        (Some(p), Some(x), Some(h), Some(hk)) if p.len() == 5 && hk % h == 0 => {
            let total = Mono::from_dim(&p[3]).add(&Mono::from_dim(&x[1])).map(|m| m.to_dim());
            let total = total.unwrap_or_else(|| cx.fresh());
            Some(vec![
                SymDim::Known(2),
                x[0].clone(),
                SymDim::Known(h),
                total,
                SymDim::Known(hk / h),
            ])
        }
        _ => None,
    };
    Ok(vec![out(dtype, y), out(dtype, present)])
}
