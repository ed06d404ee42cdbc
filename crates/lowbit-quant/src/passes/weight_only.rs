//! Weight-only quantization: the weights of `MatMul` and `Gemm` become int8/int4 initializers
//! with a `DequantizeLinear` in front of the op; compute stays float (ONNX Runtime's CPU
//! provider fuses int4 blocked `DequantizeLinear → MatMul` into `MatMulNBits`).
//!
//! * blocked (opset 21 `block_size`, the default for int4: 32): blocks run along the reduction
//!   axis K: axis 0 of a MatMul `[K,N]` weight, Gemm axis 1 with `transB=1` else 0;
//! * otherwise per output channel (MatMul last axis, Gemm `transB=1` axis 0 else 1) or per
//!   tensor.
//!
//! int4 and blocked layouts raise the default-domain opset to 21 (IR 10), per channel to 13.
//! Conv weights are left alone. `LSTM`/`GRU`/`RNN` weights: [`super::recurrent`].

use super::qdq::insert_weight_dq;
use super::subgraphs::rewrite_everywhere;
use super::{attr_i, ensure_ir, init_dtype, is_default_domain, raise_opset};
use crate::config::QuantPlan;
use crate::error::Result;
use crate::quantize::QuantizeSummary;
use lowbit_onnx::graph::Graph;
use lowbit_tensor::DType;
use std::collections::HashMap;

/// Weight-only quantization of `g` and of its control-flow bodies.
pub fn quantize_weights(
    g: &mut Graph,
    plan: &QuantPlan,
    summary: &mut QuantizeSummary,
) -> Result<()> {
    rewrite_everywhere(g, summary, &mut |sg, s| {
        weights_graph_gemm(sg, plan, s)?;
        super::recurrent::quantize_recurrent(sg, plan, s)
    })
}

fn weights_graph_gemm(
    g: &mut Graph,
    plan: &QuantPlan,
    summary: &mut QuantizeSummary,
) -> Result<()> {
    raise_opset(g, plan, summary)?;
    if plan.min_opset >= 21 {
        ensure_ir(g, 10);
    }
    let mut cache = HashMap::new();
    let mut new_nodes = Vec::new();
    for idx in 0..g.num_nodes() {
        let node = g.nodes()[idx].clone();
        let op = node.op_type.as_str();
        if !is_default_domain(&node) || !matches!(op, "MatMul" | "Gemm") {
            continue;
        }
        if let Some(r) = plan.exclude.reason(&node) {
            summary.exclude(&node, idx, r);
            continue;
        }
        let Some(w) = node.input.get(1).cloned() else { continue };
        if init_dtype(g, &w) != Some(DType::F32) {
            summary.leave(&node, idx, "weight is not a float32 initializer");
            continue;
        }
        let rank = g.initializer(&w).map(|p| p.dims.len()).unwrap_or(0);
        let trans_b = attr_i(&node, "transB").unwrap_or(0) != 0;
        let Some(scheme) = plan.weights.scheme_for(op, trans_b, rank) else {
            summary.leave(&node, idx, format!("weight of rank {rank} not understood"));
            continue;
        };
        if let Some((dq, _)) = insert_weight_dq(g, &w, &scheme, None, &mut cache, &mut new_nodes)? {
            g.node_mut(idx).expect("node index").input[1] = dq;
            summary.count(op);
        }
    }
    for n in new_nodes {
        let at = g.num_nodes();
        g.insert_node(at, n)?;
    }
    Ok(())
}
