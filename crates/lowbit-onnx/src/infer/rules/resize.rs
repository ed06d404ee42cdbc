//! `Resize` (and its predecessor `Upsample`): the output dims from `sizes` (with
//! `keep_aspect_ratio_policy`) or from `scales` (`floor(dim · scale)`), over all axes or the
//! `axes` attribute; inputs moved between opsets (scales are input 1 before opset 11).

use super::RuleFn;
use crate::infer::fold::Elem;
use crate::infer::{out, Cx, Out, Result, SymDim};

pub(super) const RULES: &[(&str, RuleFn)] = &[("Resize", resize), ("Upsample", resize)];

fn resize(cx: &mut Cx) -> Result<Vec<Out>> {
    let dtype = cx.dtype(0);
    let Some(xs) = cx.shape(0) else { return Ok(vec![out(dtype, None)]) };
    let r = xs.len();
    let upsample = cx.node.op_type == "Upsample";
    let (scales_in, sizes_in) = if upsample || cx.opset < 11 { (1, usize::MAX) } else { (2, 3) };
    let axes = match cx.attrs.ints("axes")? {
        Some(a) => cx.axes(&a, r)?,
        None => (0..r).collect(),
    };
    let sizes =
        if cx.has_input(sizes_in) { cx.ints(sizes_in).filter(|s| !s.is_empty()) } else { None };
    let scales: Option<Vec<f64>> = match cx.attrs.floats("scales")? {
        Some(s) => Some(s.into_iter().map(f64::from).collect()),
        None if cx.has_input(scales_in) => cx
            .cval(scales_in)
            .and_then(|c| c.data.iter().map(Elem::num).collect::<Option<Vec<_>>>())
            .filter(|s| !s.is_empty()),
        None => None,
    };
    let mut shape = xs.clone();
    if let Some(sizes) = sizes {
        if sizes.len() != axes.len() {
            return Err(cx.err(format!("{} sizes for {} axes", sizes.len(), axes.len())));
        }
        let policy = cx.attrs.string_or("keep_aspect_ratio_policy", "stretch")?;
        if policy == "stretch" {
            for (k, &a) in axes.iter().enumerate() {
                shape[a] = SymDim::Known(sizes[k]);
            }
        } else {
            let ratios: Option<Vec<f64>> = axes
                .iter()
                .enumerate()
                .map(|(k, &a)| xs[a].known().map(|d| sizes[k] as f64 / d as f64))
                .collect();
            let Some(ratios) = ratios else {
                return Ok(vec![out(dtype, Some(xs.iter().map(|_| cx.fresh.dim()).collect()))]);
            };
            let s = if policy == "not_larger" {
                ratios.iter().cloned().fold(f64::INFINITY, f64::min)
            } else {
                ratios.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
            };
            for &a in &axes {
                let d = xs[a].known().unwrap_or(0) as f64;
                shape[a] = SymDim::Known((d * s + 0.5).floor() as i64);
            }
        }
    } else if let Some(scales) = scales {
        if scales.len() != axes.len() {
            return Err(cx.err(format!("{} scales for {} axes", scales.len(), axes.len())));
        }
        for (k, &a) in axes.iter().enumerate() {
            shape[a] = match xs[a].known() {
                _ if scales[k] == 1.0 => xs[a].clone(),
                Some(d) => SymDim::Known((d as f64 * scales[k]).floor() as i64),
                None => cx.fresh(),
            };
        }
    } else {
        shape = xs.iter().map(|_| cx.fresh()).collect();
    }
    Ok(vec![out(dtype, Some(shape))])
}
