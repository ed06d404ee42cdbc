//! Folds `BatchNormalization` (inference mode) into the `Conv` or `Gemm` that produces its
//! input, when that output feeds nothing else:
//!
//! `s = gamma / sqrt(var + eps)`, `W'[c] = W[c] · s[c]`, `b'[c] = (b[c] − mean[c]) · s[c] + beta[c]`
//!
//! (computed in f64, stored as f32, by [`ChannelAffine`], which the engine's load-time fusion
//! shares). The folded weight and bias are **new** initializers; the
//! originals are never edited, so initializers shared between nodes (mnist_resnet's
//! BatchNormalization nodes share a bias) stay correct. The producer takes over the
//! BatchNormalization's output name, so calibration ranges of the FP32 model still apply.
//! `Gemm` output channels are axis 1 (`transB=1`: rows of B, else columns); `alpha`/`beta` are
//! folded in and reset to 1.

use super::{add_init, attr_f, attr_i, init_f32, int_attr, remove_attr, set_attr};
use crate::error::Result;
use lowbit_kernels::norm::ChannelAffine;
use lowbit_onnx::graph::Graph;
use lowbit_tensor::Tensor;

/// Folds every foldable BatchNormalization; returns how many.
pub fn fold_batch_norms(g: &mut Graph) -> Result<usize> {
    let mut folded = 0;
    loop {
        let mut done = false;
        for i in 0..g.num_nodes() {
            if try_fold(g, i)? {
                folded += 1;
                done = true;
                break;
            }
        }
        if !done {
            return Ok(folded);
        }
    }
}

/// The per-channel affine map of a BatchNormalization whose parameters are initializers.
fn bn_affine(g: &Graph, bn: usize) -> Result<Option<ChannelAffine>> {
    let node = &g.nodes()[bn];
    if node.input.len() < 5 || attr_i(node, "training_mode").unwrap_or(0) != 0 {
        return Ok(None);
    }
    if node.output.iter().skip(1).any(|o| !o.is_empty()) {
        return Ok(None);
    }
    let eps = attr_f(node, "epsilon").unwrap_or(1e-5);
    let mut p = Vec::new();
    for name in &node.input[1..5] {
        match init_f32(g, name)? {
            Some(t) => p.push(t),
            None => return Ok(None),
        }
    }
    let [gamma, beta, mean, var] = [&p[0], &p[1], &p[2], &p[3]];
    Ok(ChannelAffine::batch_norm(
        gamma.as_f32()?,
        beta.as_f32()?,
        mean.as_f32()?,
        var.as_f32()?,
        eps,
    ))
}

fn try_fold(g: &mut Graph, bn: usize) -> Result<bool> {
    let node = g.nodes()[bn].clone();
    if node.op_type != "BatchNormalization" || !super::is_default_domain(&node) {
        return Ok(false);
    }
    let x = &node.input[0];
    let Some(p) = g.producer(x) else { return Ok(false) };
    let prod = g.nodes()[p].clone();
    if !matches!(prod.op_type.as_str(), "Conv" | "Gemm") || !super::is_default_domain(&prod) {
        return Ok(false);
    }
    if g.consumers(x) != [bn] || g.is_graph_output(x) || prod.output.len() != 1 {
        return Ok(false);
    }
    let Some(bn_map) = bn_affine(g, bn)? else { return Ok(false) };
    let c = bn_map.channels();
    let Some(w) = prod.input.get(1).map(|s| s.as_str()) else { return Ok(false) };
    let Some(wt) = init_f32(g, w)? else { return Ok(false) };
    let bias = match prod.input.get(2).filter(|s| !s.is_empty()) {
        Some(b) => match init_f32(g, b)? {
            Some(t) => Some(t),
            None => return Ok(false),
        },
        None => None,
    };
    let shape = wt.shape().to_vec();
    let wv = wt.as_f32()?;
    let mut new_prod = prod.clone();
    let (new_w, new_b): (Vec<f32>, Vec<f32>) = if prod.op_type == "Conv" {
        if shape.is_empty()
            || shape[0] != c
            || c == 0
            || bias.as_ref().is_some_and(|b| b.len() != c)
        {
            return Ok(false);
        }
        let inner = wv.len() / c;
        let nw = bn_map.fold_weight(wv, 1.0, |i| i / inner);
        let Some(nb) = bn_map.fold_bias(bias.as_ref().map(|b| b.as_f32()).transpose()?, 1.0) else {
            return Ok(false);
        };
        (nw, nb)
    } else {
        if shape.len() != 2 || attr_i(&prod, "transA").unwrap_or(0) != 0 {
            return Ok(false);
        }
        let trans_b = attr_i(&prod, "transB").unwrap_or(0) != 0;
        let n = if trans_b { shape[0] } else { shape[1] };
        if n != c {
            return Ok(false);
        }
        let alpha = attr_f(&prod, "alpha").unwrap_or(1.0) as f64;
        let beta = attr_f(&prod, "beta").unwrap_or(1.0) as f64;
        let cols = shape[1];
        let nw = bn_map.fold_weight(wv, alpha, |k| if trans_b { k / cols } else { k % cols });
        let Some(nb) = bn_map.fold_bias(bias.as_ref().map(|b| b.as_f32()).transpose()?, beta)
        else {
            return Ok(false);
        };
        remove_attr(&mut new_prod, "alpha");
        set_attr(&mut new_prod, int_attr("transB", trans_b as i64));
        remove_attr(&mut new_prod, "beta");
        (nw, nb)
    };
    let wname = add_init(g, &format!("{w}_bn_folded"), &Tensor::from_vec(shape, new_w)?);
    let bprefix = format!("{}_bias_bn_folded", if prod.name.is_empty() { w } else { &prod.name });
    let bname = add_init(g, &bprefix, &Tensor::from_vec(vec![c], new_b)?);
    new_prod.input[1] = wname;
    if new_prod.input.len() > 2 {
        new_prod.input[2] = bname;
    } else {
        new_prod.input.push(bname);
    }
    new_prod.output[0] = node.output[0].clone();
    *g.node_mut(p).expect("producer index") = new_prod;
    g.remove_node(bn)?;
    g.remove_unused_initializers();
    Ok(true)
}
