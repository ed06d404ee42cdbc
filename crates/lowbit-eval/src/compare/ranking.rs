//! The worst-first ranking of quantized compute nodes, each with a concrete hint.

use super::matching::{ActPlan, WeightPlan};
use super::measure::ActStats;
use super::model::RankedLayer;
use super::view::{label, View};
use lowbit_tensor::DType;
use std::collections::HashMap;

/// Ops whose quantized activation inputs make them a ranked layer (with a quantized weight, any
/// op is). Ops that only move, select or clamp values (Relu, MaxPool, Reshape, Concat…) add no
/// noise of their own and are not ranked.
const COMPUTE: &[&str] = &[
    "Conv",
    "ConvTranspose",
    "MatMul",
    "Gemm",
    "Einsum",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Sum",
    "Softmax",
    "LayerNormalization",
    "InstanceNormalization",
    "BatchNormalization",
];

/// Isolated SQNR (dB) from which a layer needs nothing (about 5 effective bits): an 8-bit grid
/// over a well-used range gives 35–50 dB, and 7-bit per-channel weights 35–40 dB.
const FINE_DB: f64 = 30.0;
/// Clip rate, or share of the isolated squared error coming from saturated values, from which
/// an activation counts as clipped.
const CLIPPED_RATE: f64 = 1e-3;
const CLIPPED_ERROR_SHARE: f64 = 0.5;

/// What limits a ranked layer.
enum Culprit<'a> {
    Activation(&'a ActPlan, &'a ActStats),
    Weight(&'a WeightPlan),
}

fn hint(node: &str, sqnr_db: f64, culprit: &Culprit) -> String {
    let exclude = format!("--exclude '{node}'");
    if let Culprit::Weight(w) = culprit {
        if w.depthwise && w.per_tensor() {
            // Structural: per-tensor scales on depthwise weights waste levels on every
            // channel whose range is smaller than the largest one.
            return "depthwise conv with per-tensor weights: use per-channel weights (--per-channel)"
                .into();
        }
    }
    if sqnr_db >= FINE_DB {
        return format!("fine ({sqnr_db:.0} dB): nothing to do");
    }
    match culprit {
        Culprit::Weight(w) => {
            if w.per_tensor() {
                "per-tensor weights: use per-channel weights (--per-channel)".to_string()
            } else if matches!(w.dtype, DType::I4 | DType::U4) {
                format!("4-bit weights: use int8 (--weights int8), a smaller --block-size, or {exclude}")
            } else {
                format!("weight outliers even per channel: keep this layer in float ({exclude})")
            }
        }
        Culprit::Activation(p, st) => {
            let rate = st.clip_rate();
            if rate >= CLIPPED_RATE || st.clip_error_share() >= CLIPPED_ERROR_SHARE {
                format!(
                    "clipped activation '{}' ({:.2} % of values saturate): use --method minmax or a \
                     wider range",
                    p.tensor,
                    100.0 * rate
                )
            } else {
                format!(
                    "activation outliers in '{}': try --method percentile/entropy/mse or keep this \
                     layer in float ({exclude})",
                    p.tensor
                )
            }
        }
    }
}

/// Scores every quantized compute node of `q` by its worst quantized input, worst first.
pub(super) fn rank(
    q: &View,
    f: &View,
    acts: &[ActPlan],
    stats: &[ActStats],
    weights: &[WeightPlan],
) -> Vec<RankedLayer> {
    let act_of: HashMap<&str, usize> =
        acts.iter().enumerate().map(|(k, p)| (p.dq_out.as_str(), k)).collect();
    let weight_of: HashMap<&str, usize> =
        weights.iter().enumerate().map(|(k, w)| (w.dq_out.as_str(), k)).collect();
    let mut ranked: Vec<(f64, usize, RankedLayer)> = Vec::new();
    for &i in &q.order {
        let n = q.node(i);
        if matches!(n.op_type.as_str(), "QuantizeLinear" | "DequantizeLinear") {
            continue;
        }
        let bias_slot = matches!(n.op_type.as_str(), "Conv" | "ConvTranspose" | "Gemm");
        let mut worst: Option<(f64, String, Culprit)> = None;
        let mut has_weight = false;
        let mut has_act = false;
        for (slot, x) in n.input.iter().enumerate() {
            let cand = if let Some(&k) = act_of.get(x.as_str()) {
                has_act = true;
                let db = stats[k].isolated_sqnr();
                (db, acts[k].tensor.clone(), Culprit::Activation(&acts[k], &stats[k]))
            } else if let Some(&k) = weight_of.get(x.as_str()) {
                // Biases (int32 with scale = input scale × weight scale) err by far less than
                // the layer's own rounding step; they are reported, not ranked.
                if (bias_slot && slot == 2) || weights[k].dtype == DType::I32 {
                    continue;
                }
                has_weight = true;
                let w = &weights[k];
                (w.worst_channel_db, w.report.weight.clone(), Culprit::Weight(w))
            } else {
                continue;
            };
            if worst.as_ref().is_none_or(|(db, _, _)| cand.0 < *db) {
                worst = Some(cand);
            }
        }
        let op = n.op_type.as_str();
        let ranked_op = has_weight || (has_act && COMPUTE.contains(&op));
        let Some((db, tensor, culprit)) = worst.filter(|_| ranked_op) else { continue };
        let (node, op_type) = match f.matching_node(q, i) {
            Some(j) => (label(f.node(j), j), f.node(j).op_type.clone()),
            None => (label(n, i), n.op_type.clone()),
        };
        let hint = hint(&node, db, &culprit);
        ranked.push((db, q.position[i], RankedLayer { node, op_type, tensor, sqnr_db: db, hint }));
    }
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    ranked.into_iter().map(|(_, _, r)| r).collect()
}
