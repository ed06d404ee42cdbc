//! Dynamic post-training quantization: weights quantized offline, activations at run time,
//! written only in op forms ONNX Runtime's CPU provider runs:
//!
//! ```text
//! A ─ DynamicQuantizeLinear ─┬ A_q (uint8) ─┐
//!                            ├ A_scale      │   MatMulInteger(A_q, W_q int8 [K,N], A_zp[, W_zp])
//!                            └ A_zp ────────┘        │ int32
//!                                            Cast(float) ─ Mul(A_scale · W_scale[N]) ─ Add(bias) ─ Y
//! ```
//!
//! One `DynamicQuantizeLinear` per activation tensor, shared by all its consumers. `MatMul`
//! with a 2-D initializer weight `[K,N]` and `Gemm` with `transA=0` (`transB=1` weights are
//! transposed offline to `[K,N]`; `alpha` is folded into the scale, `beta·C` into the bias) are
//! rewritten; the last node writes the original output name. Weights: int8 symmetric (or uint8
//! asymmetric), per output column or per tensor. `Conv` stays float: `ConvInteger` is not
//! reliably supported by ONNX Runtime's CPU provider (a note says so in the summary).

use super::subgraphs::rewrite_everywhere;
use super::{
    add_init, attr_f, attr_i, constant_values, init_f32, int_attr, is_default_domain, make_node,
    raise_opset, value_dtypes,
};
use crate::config::QuantPlan;
use crate::error::Result;
use crate::qparams::quantize_tensor;
use crate::quantize::QuantizeSummary;
use lowbit_onnx::graph::Graph;
use lowbit_onnx::pb::NodeProto;
use lowbit_tensor::{DType, Tensor};
use std::collections::HashMap;

/// Dynamic quantization of `g` and of its control-flow bodies.
pub fn quantize_dynamic(
    g: &mut Graph,
    plan: &QuantPlan,
    summary: &mut QuantizeSummary,
) -> Result<()> {
    rewrite_everywhere(g, summary, &mut |sg, s| {
        dynamic_graph_gemm(sg, plan, s)?;
        super::recurrent::quantize_recurrent(sg, plan, s)
    })
}

fn dynamic_graph_gemm(
    g: &mut Graph,
    plan: &QuantPlan,
    summary: &mut QuantizeSummary,
) -> Result<()> {
    raise_opset(g, plan, summary)?;
    let consts = constant_values(g);
    let dtypes = value_dtypes(g);
    let mut dql: HashMap<String, [String; 3]> = HashMap::new();
    let mut convs = 0usize;
    let mut new_nodes: Vec<NodeProto> = Vec::new();
    let mut remove: Vec<usize> = Vec::new();
    let n = g.num_nodes();
    for idx in 0..n {
        let node = g.nodes()[idx].clone();
        let op = node.op_type.as_str();
        if !is_default_domain(&node) {
            continue;
        }
        if op == "Conv" {
            convs += 1;
            summary.leave(&node, idx, "dynamic mode keeps Conv in float (ConvInteger is not reliably supported by ONNX Runtime's CPU provider)");
            continue;
        }
        if !matches!(op, "MatMul" | "Gemm") {
            continue;
        }
        if let Some(r) = plan.exclude.reason(&node) {
            summary.exclude(&node, idx, r);
            continue;
        }
        let a = node.input[0].clone();
        let w = node.input.get(1).cloned().unwrap_or_default();
        if consts.contains(&a) || dtypes.get(&a).is_some_and(|d| *d != DType::F32) {
            summary.leave(&node, idx, "input A is a constant or not float32");
            continue;
        }
        let Some(wt) = init_f32(g, &w)? else {
            summary.leave(&node, idx, "weight is not a float32 initializer");
            continue;
        };
        if wt.shape().len() != 2 {
            summary.leave(&node, idx, "weight is not 2-D");
            continue;
        }
        let (mut alpha, mut beta, mut trans_b) = (1.0f32, 1.0f32, false);
        if op == "Gemm" {
            if attr_i(&node, "transA").unwrap_or(0) != 0 {
                summary.leave(&node, idx, "Gemm with transA=1");
                continue;
            }
            alpha = attr_f(&node, "alpha").unwrap_or(1.0);
            beta = attr_f(&node, "beta").unwrap_or(1.0);
            trans_b = attr_i(&node, "transB").unwrap_or(0) != 0;
        }
        // Weight as [K, N].
        let (r, c) = (wt.shape()[0], wt.shape()[1]);
        let wkn = if trans_b {
            let v = wt.as_f32()?;
            let mut t = vec![0f32; r * c];
            for i in 0..r {
                for j in 0..c {
                    t[j * r + i] = v[i * c + j];
                }
            }
            Tensor::from_vec(vec![c, r], t)?
        } else {
            wt.clone()
        };
        let nout = wkn.shape()[1];
        // The weight is now a MatMul `[K, N]`: its output channels are axis 1.
        let scheme = plan.weights.scheme_for("MatMul", false, 2).expect("2-D MatMul weight");
        let q = quantize_tensor(&wkn, &scheme)?;
        let label = if node.name.is_empty() { w.clone() } else { node.name.clone() };
        let wq = add_init(g, &format!("{w}_quantized"), &q.values);
        let scales: Vec<f32> = q.params.scales().iter().map(|s| s * alpha).collect();
        let sshape = q.params.scale.shape().to_vec();
        let ws = add_init(g, &format!("{w}_scale"), &Tensor::from_vec(sshape, scales)?);
        let zps_zero = q.params.zero_points().iter().all(|&z| z == 0);
        let wz = (!zps_zero).then(|| add_init(g, &format!("{w}_zero_point"), &q.params.zero_point));

        let [aq, ascale, azp] = match dql.get(&a) {
            Some(v) => v.clone(),
            None => {
                let outs = [
                    g.unique_name(&format!("{a}_quantized")),
                    g.unique_name(&format!("{a}_scale")),
                    g.unique_name(&format!("{a}_zero_point")),
                ];
                let name = g.unique_name(&format!("{a}_DynamicQuantizeLinear"));
                new_nodes.push(make_node(
                    "DynamicQuantizeLinear",
                    name,
                    vec![a.clone()],
                    outs.to_vec(),
                    vec![],
                ));
                dql.insert(a.clone(), outs.clone());
                outs
            }
        };
        let mut mm_in = vec![aq, wq, azp];
        if let Some(z) = wz {
            mm_in.push(z);
        }
        let acc = g.unique_name(&format!("{label}_MatMulInteger_output"));
        let name = g.unique_name(&format!("{label}_MatMulInteger"));
        new_nodes.push(make_node("MatMulInteger", name, mm_in, vec![acc.clone()], vec![]));
        let accf = g.unique_name(&format!("{label}_cast_output"));
        let name = g.unique_name(&format!("{label}_Cast"));
        new_nodes.push(make_node(
            "Cast",
            name,
            vec![acc],
            vec![accf.clone()],
            vec![int_attr("to", 1)],
        ));
        let scale = g.unique_name(&format!("{label}_scale"));
        let name = g.unique_name(&format!("{label}_scale_Mul"));
        new_nodes.push(make_node("Mul", name, vec![ascale, ws], vec![scale.clone()], vec![]));
        let y = node.output[0].clone();
        let bias = match node.input.get(2).filter(|b| !b.is_empty() && op == "Gemm") {
            None => None,
            Some(b) => match init_f32(g, b)? {
                Some(bt) if beta == 1.0 => Some(b.clone()).filter(|_| !bt.is_empty()),
                Some(bt) => {
                    let v: Vec<f32> = bt.as_f32()?.iter().map(|x| x * beta).collect();
                    Some(add_init(
                        g,
                        &format!("{b}_beta"),
                        &Tensor::from_vec(bt.shape().to_vec(), v)?,
                    ))
                }
                None if beta == 1.0 => Some(b.clone()),
                None => {
                    let bn = add_init(g, &format!("{label}_beta"), &Tensor::scalar(beta));
                    let out = g.unique_name(&format!("{b}_scaled"));
                    let name = g.unique_name(&format!("{label}_beta_Mul"));
                    new_nodes.push(make_node(
                        "Mul",
                        name,
                        vec![b.clone(), bn],
                        vec![out.clone()],
                        vec![],
                    ));
                    Some(out)
                }
            },
        };
        let name = g.unique_name(&format!("{label}_output_Mul"));
        match bias {
            None => new_nodes.push(make_node("Mul", name, vec![accf, scale], vec![y], vec![])),
            Some(b) => {
                let mid = g.unique_name(&format!("{label}_output_unbiased"));
                new_nodes.push(make_node(
                    "Mul",
                    name,
                    vec![accf, scale],
                    vec![mid.clone()],
                    vec![],
                ));
                let name = g.unique_name(&format!("{label}_bias_Add"));
                new_nodes.push(make_node("Add", name, vec![mid, b], vec![y], vec![]));
            }
        }
        let _ = nout;
        remove.push(idx);
        summary.count(op);
    }
    for idx in remove.into_iter().rev() {
        g.remove_node(idx)?;
    }
    for n in new_nodes {
        let at = g.num_nodes();
        g.insert_node(at, n)?;
    }
    if convs > 0 {
        summary.notes.push(format!(
            "{convs} Conv node(s) left in float: dynamic mode does not write ConvInteger, which ONNX Runtime's CPU provider does not reliably run; use static mode for convolutions"
        ));
    }
    Ok(())
}
