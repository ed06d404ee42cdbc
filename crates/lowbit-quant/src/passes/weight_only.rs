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
//! Conv weights are left alone.

use super::qdq::{insert_weight_dq, weight_axis, weight_scheme};
use super::{attr_i, ensure_ir, ensure_opset, init_dtype, is_default_domain};
use crate::error::Result;
use crate::quantize::{QuantizeConfig, QuantizeSummary};
use crate::scheme::IntType;
use lowbit_onnx::graph::Graph;
use lowbit_tensor::DType;
use std::collections::HashMap;

pub fn quantize_weights(
    g: &mut Graph,
    config: &QuantizeConfig,
    summary: &mut QuantizeSummary,
) -> Result<()> {
    let block = config.resolved_block_size();
    let four_bit = matches!(config.weights, IntType::Int4 | IntType::Uint4);
    let opset = if block > 0 || four_bit {
        21
    } else if config.per_channel {
        13
    } else {
        10
    };
    if let Some((a, b)) = ensure_opset(g, opset)? {
        summary.notes.push(format!("default-domain opset raised from {a} to {b}"));
    }
    if opset >= 21 {
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
        if let Some(r) = config.exclude.reason(&node) {
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
        let Some(ch_axis) = weight_axis(op, trans_b, rank) else {
            summary.leave(&node, idx, format!("weight of rank {rank} not understood"));
            continue;
        };
        let scheme = weight_scheme(config, config.weights);
        let scheme = if block > 0 {
            let k_axis = match op {
                "Gemm" if trans_b => 1,
                "Gemm" => 0,
                _ => rank as i64 - 2,
            };
            scheme.per_block(k_axis, block)
        } else if config.per_channel {
            scheme.per_channel(ch_axis)
        } else {
            scheme.per_tensor()
        };
        if let Some((dq, _)) = insert_weight_dq(g, &w, &scheme, &mut cache, &mut new_nodes)? {
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
