//! The weights of `LSTM`, `GRU` and `RNN` (inputs `W` and `R`, `[directions, gates·hidden, K]`)
//! as int8 initializers with a `DequantizeLinear` in front of the op, per gate unit (axis 1) or
//! as the plan's blocks along K; the bias and the recurrence stay float. ONNX Runtime's fused
//! `com.microsoft.Attention` gets the same treatment for its packed QKV weight `[K, Q+K+V]`,
//! laid out and quantized as a `MatMul` weight (per output column, blocks along K).
//!
//! Why this form, in dynamic and weight-only mode: ONNX has no integer recurrent op, and ONNX
//! Runtime's integer one (`com.microsoft.DynamicQuantizeLSTM`, LSTM only, weights transposed
//! to `[directions, K, 4·hidden]`) runs in ORT alone: lowbit's engine and other runtimes do not
//! have it. `DequantizeLinear → LSTM` is standard ONNX that every runtime (ORT included) and
//! lowbit's engine run, and it keeps the weights 4× smaller; where the gate GEMMs are the cost,
//! an integer kernel would be faster, which this form does not claim. Likewise for attention:
//! ORT's `QAttention` (what its own dynamic quantizer writes) is an ORT-only contrib op, while
//! `DequantizeLinear → Attention` runs in ORT and in lowbit's engine. Static mode leaves all
//! of these float (its coverage line names them).

use super::qdq::insert_weight_dq;
use super::{ensure_opset, init_dtype, is_default_domain};
use crate::config::QuantPlan;
use crate::error::Result;
use crate::quantize::QuantizeSummary;
use crate::scheme::Granularity;
use lowbit_onnx::graph::Graph;
use lowbit_onnx::pb::NodeProto;
use lowbit_tensor::DType;
use std::collections::HashMap;

/// Recurrent ops whose weights this pass quantizes.
pub const RECURRENT: &[&str] = &["LSTM", "GRU", "RNN"];

/// The ops outside the ONNX domain whose weight this pass quantizes: (domain, op, weight input).
pub const CONTRIB_WEIGHTED: &[(&str, &str, usize)] = &[("com.microsoft", "Attention", 1)];

/// The weight inputs of `n` this pass quantizes, and the op whose weight layout they follow.
fn weight_slots(n: &NodeProto) -> Option<(&'static [usize], &'static str)> {
    let op = n.op_type.as_str();
    if is_default_domain(n) {
        return RECURRENT.iter().find(|&&r| r == op).map(|&r| (&[1usize, 2][..], r));
    }
    CONTRIB_WEIGHTED
        .iter()
        .find(|(d, o, _)| *d == n.domain && *o == op)
        .map(|(_, _, slot)| (std::slice::from_ref(slot), "MatMul"))
}

/// Quantizes the `W` and `R` weights of every recurrent node of `g`, and the packed weight of
/// every `com.microsoft.Attention` (see the module docs).
pub(crate) fn quantize_recurrent(
    g: &mut Graph,
    plan: &QuantPlan,
    summary: &mut QuantizeSummary,
) -> Result<()> {
    let todo: Vec<usize> =
        (0..g.num_nodes()).filter(|&i| weight_slots(&g.nodes()[i]).is_some()).collect();
    if todo.is_empty() {
        return Ok(());
    }
    // Per-axis DequantizeLinear needs opset 13 (dynamic mode asks for 11 only); where the
    // graph cannot be raised, one scale per tensor instead.
    let mut per_axis_ok = true;
    if g.opset_version("").unwrap_or(1) < 13 {
        let mut trial = g.clone();
        match ensure_opset(&mut trial, 13) {
            Ok(changed) => {
                *g = trial;
                if let Some((a, b)) = changed {
                    summary.notes.push(format!(
                        "default-domain opset raised from {a} to {b} (per-row DequantizeLinear \
                         for recurrent and attention weights)"
                    ));
                }
            }
            Err(_) => per_axis_ok = false,
        }
    }
    let mut cache = HashMap::new();
    let mut new_nodes: Vec<NodeProto> = Vec::new();
    let (mut recurrent, mut attention) = (0usize, 0usize);
    for idx in todo {
        let node = g.nodes()[idx].clone();
        let op = node.op_type.as_str();
        let (slots, layout) = weight_slots(&node).expect("selected above");
        if let Some(r) = plan.exclude.reason(&node) {
            summary.exclude(&node, idx, r);
            continue;
        }
        let mut quantized = false;
        let mut why = None;
        for &slot in slots {
            let Some(w) = node.input.get(slot).filter(|w| !w.is_empty()).cloned() else {
                continue;
            };
            if init_dtype(g, &w) != Some(DType::F32) {
                why = Some(format!("weight '{w}' is not a float32 initializer"));
                continue;
            }
            let rank = g.initializer(&w).map(|p| p.dims.len()).unwrap_or(0);
            let Some(mut scheme) = plan.weights.scheme_for(layout, false, rank) else {
                why = Some(format!("weight '{w}' of rank {rank} not understood"));
                continue;
            };
            // The gates compute in float: the 7-bit grid integer kernels need buys nothing.
            scheme.reduce_range = false;
            if !per_axis_ok && !matches!(scheme.granularity, Granularity::PerTensor) {
                scheme = scheme.per_tensor();
            }
            if let Some((dq, _)) =
                insert_weight_dq(g, &w, &scheme, None, &mut cache, &mut new_nodes)?
            {
                g.node_mut(idx).expect("node index").input[slot] = dq;
                quantized = true;
            }
        }
        if quantized {
            summary.count(op);
            if layout == "MatMul" {
                attention += 1;
            } else {
                recurrent += 1;
            }
        } else {
            summary.leave(&node, idx, why.unwrap_or_else(|| "no weight to quantize".into()));
        }
    }
    for n in new_nodes {
        let at = g.num_nodes();
        g.insert_node(at, n)?;
    }
    let notes = [
        (
            recurrent,
            "LSTM/GRU/RNN: W and R stored in the weight type + DequantizeLinear (one scale per \
             gate row); the recurrence computes in float (ORT's integer DynamicQuantizeLSTM is \
             an ORT-only contrib op, not written)",
        ),
        (
            attention,
            "com.microsoft.Attention: the packed QKV weight stored in the weight type + \
             DequantizeLinear (one scale per output column); attention computes in float (ORT's \
             QAttention is an ORT-only contrib op, not written)",
        ),
    ];
    for (done, note) in notes {
        if done > 0 && !summary.notes.iter().any(|n| n == note) {
            summary.notes.push(note.into());
        }
    }
    Ok(())
}
