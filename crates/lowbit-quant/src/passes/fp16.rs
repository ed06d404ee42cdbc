//! float16 / bfloat16 conversion: float32 initializers, `Constant`/`ConstantOfShape` values,
//! `Cast(to=float)` targets and every float32 value computed by a converted node become the
//! target type. Nodes the user excludes stay float32, with `Cast`s around them (one per value
//! and direction, shared). With `keep_float_io` (the default) graph inputs and outputs keep
//! float32: a `Cast` follows each float32 input and the producer of each float32 output
//! writes `<name>_fp16` (or `_bf16`), cast back to the original name. Values are converted
//! round-half-to-even; finite values beyond the target's range saturate to its largest finite
//! value (no new infinities). Inputs that must stay float32 by the op's definition (`Resize`
//! roi/scales) are left alone.
//!
//! ONNX Runtime's CPU provider runs fp16 graphs: where it has no fp16 kernel it inserts casts
//! itself (checked for the ops of the corpus models). Its bf16 coverage is thin; bf16 files are
//! standard ONNX but may not run there.

use super::{
    attr, int_attr, is_default_domain, make_node, set_attr, set_value_info_dtype, tensor_attr,
    value_dtypes,
};
use crate::config::{QuantMode, QuantPlan};
use crate::error::Result;
use crate::quantize::QuantizeSummary;
use lowbit_onnx::graph::Graph;
use lowbit_onnx::pb::TensorProto;
use lowbit_onnx::{tensor_from_proto, tensor_to_proto};
use lowbit_tensor::{DType, Tensor};
use std::collections::{HashMap, HashSet};

/// Input slots that stay float32 whatever the node's type.
fn f32_param_slot(op: &str, slot: usize) -> bool {
    matches!((op, slot), ("Resize", 1) | ("Resize", 2) | ("Upsample", 1))
}

/// Input slots that accept any type (no cast needed).
fn any_type_slot(op: &str, slot: usize) -> bool {
    matches!((op, slot), ("Cast", 0) | ("Shape", 0) | ("Size", 0) | ("CastLike", 0))
}

fn convert_tensor(t: &Tensor, to: DType) -> Result<Tensor> {
    let max = match to {
        DType::BF16 => lowbit_tensor::bf16::MAX.to_f32(),
        _ => lowbit_tensor::f16::MAX.to_f32(),
    };
    let v: Vec<f32> =
        t.as_f32()?.iter().map(|&x| if x.is_finite() { x.clamp(-max, max) } else { x }).collect();
    Ok(Tensor::from_vec(t.shape().to_vec(), v)?.cast(to)?)
}

fn convert_proto(p: &TensorProto, to: DType) -> Result<TensorProto> {
    let t = tensor_from_proto(p)?;
    Ok(tensor_to_proto(&p.name, &convert_tensor(&t, to)?))
}

/// Hybrid static plans: the weight (input 1) of each node the plan keeps at
/// [`NodePlan::Float16`](crate::config::NodePlan::Float16) stored as float16 and cast back to
/// float32 before the node (compute stays float32). A weight other nodes also read is left
/// float32, noted in `summary`.
pub fn half_weights(g: &mut Graph, plan: &QuantPlan, summary: &mut QuantizeSummary) -> Result<()> {
    let mut casts = Vec::new();
    for idx in 0..g.num_nodes() {
        let node = &g.nodes()[idx];
        if !matches!(plan.node_plan(node, idx), Some(crate::config::NodePlan::Float16)) {
            continue;
        }
        let Some(w) = node.input.get(1).filter(|w| g.initializer(w).is_some()).cloned() else {
            continue;
        };
        if g.consumers(&w).len() != 1 {
            summary.notes.push(format!(
                "weight '{w}' of {} stays float32: other nodes read it too",
                super::label(node, idx)
            ));
            continue;
        }
        let Some(t) = super::init_f32(g, &w)? else { continue };
        let half = super::add_init(g, &format!("{w}_fp16"), &convert_tensor(&t, DType::F16)?);
        let out = g.unique_name(&format!("{w}_fp16_cast"));
        let name = g.unique_name(&format!("{w}_Cast"));
        let to = int_attr("to", DType::F32.onnx_id() as i64);
        casts.push(make_node("Cast", name, vec![half], vec![out.clone()], vec![to]));
        g.node_mut(idx).expect("node index").input[1] = out;
    }
    for n in casts {
        let at = g.num_nodes();
        g.insert_node(at, n)?;
    }
    Ok(())
}

pub fn convert_float(g: &mut Graph, plan: &QuantPlan, summary: &mut QuantizeSummary) -> Result<()> {
    let to = if plan.mode == QuantMode::Bf16 { DType::BF16 } else { DType::F16 };
    let suffix = if to == DType::BF16 { "bf16" } else { "fp16" };
    let dtypes = value_dtypes(g);
    let f32v = |v: &str| dtypes.get(v) == Some(&DType::F32);

    // Which nodes convert.
    let mut convert: HashSet<usize> = HashSet::new();
    for (i, n) in g.nodes().iter().enumerate() {
        let touches = n.input.iter().chain(&n.output).any(|v| f32v(v))
            || (n.op_type == "Constant"
                && attr(n, "value").and_then(|a| a.t.as_ref()).is_some_and(|t| t.data_type == 1));
        if !touches || !is_default_domain(n) {
            continue;
        }
        if let Some(r) = plan.exclude.reason(n) {
            summary.exclude(n, i, r);
            continue;
        }
        convert.insert(i);
    }
    // New type of every float32 value.
    let mut newty: HashMap<String, DType> = HashMap::new();
    for (i, n) in g.nodes().iter().enumerate() {
        for o in &n.output {
            if f32v(o) || (convert.contains(&i) && n.op_type == "Constant") {
                newty.insert(o.clone(), if convert.contains(&i) { to } else { DType::F32 });
            }
        }
    }
    let inits: Vec<String> = g
        .proto()
        .initializer
        .iter()
        .filter(|t| t.data_type == DType::F32.onnx_id())
        .map(|t| t.name.clone())
        .collect();
    for name in inits {
        let used_by_converted = g.consumers(&name).iter().any(|&c| {
            let n = &g.nodes()[c];
            convert.contains(&c)
                && n.input
                    .iter()
                    .enumerate()
                    .any(|(s, v)| *v == name && !f32_param_slot(&n.op_type, s))
        });
        if used_by_converted && !g.is_graph_input(&name) {
            let p = convert_proto(g.initializer(&name).expect("listed"), to)?;
            g.add_initializer(p);
            newty.insert(name, to);
        } else {
            newty.insert(name, DType::F32);
        }
    }
    let inputs: Vec<String> = g.runtime_inputs().iter().map(|v| v.name.clone()).collect();
    for name in inputs.iter().filter(|n| f32v(n)) {
        if plan.keep_float_io {
            newty.insert(name.clone(), DType::F32);
        } else {
            newty.insert(name.clone(), to);
            let gp = g.proto_mut();
            if let Some(v) = gp.input.iter_mut().find(|v| v.name == *name) {
                set_value_info_dtype(v, to);
            }
        }
    }

    // Rewrite converted nodes' type attributes and constant values.
    for &i in &convert {
        let n = g.nodes()[i].clone();
        let mut n2 = n.clone();
        match n.op_type.as_str() {
            "Cast" if attr(&n, "to").map(|a| a.i) == Some(1) => {
                set_attr(&mut n2, int_attr("to", to.onnx_id() as i64))
            }
            "Constant" | "ConstantOfShape" => {
                if let Some(t) = attr(&n, "value").and_then(|a| a.t.as_ref()) {
                    if t.data_type == 1 {
                        set_attr(&mut n2, tensor_attr("value", convert_proto(t, to)?));
                    }
                }
            }
            _ => {}
        }
        if n2 != n {
            *g.node_mut(i).expect("index") = n2;
        }
        summary.count(&n.op_type);
    }

    // Graph outputs keep float32: the producer writes `<name>_fp16`, cast back.
    let mut new_nodes = Vec::new();
    let outputs: Vec<String> = g.proto().output.iter().map(|v| v.name.clone()).collect();
    for o in outputs {
        if newty.get(&o) != Some(&to) {
            continue;
        }
        if !plan.keep_float_io {
            let gp = g.proto_mut();
            if let Some(v) = gp.output.iter_mut().find(|v| v.name == o) {
                set_value_info_dtype(v, to);
            }
            continue;
        }
        let inner = g.unique_name(&format!("{o}_{suffix}"));
        if let Some(p) = g.producer(&o) {
            for out in &mut g.node_mut(p).expect("producer").output {
                if *out == o {
                    *out = inner.clone();
                }
            }
        }
        g.replace_uses(&o, &inner);
        newty.insert(inner.clone(), to);
        newty.insert(o.clone(), DType::F32);
        let name = g.unique_name(&format!("{o}_Cast"));
        new_nodes.push(make_node("Cast", name, vec![inner], vec![o], vec![int_attr("to", 1)]));
    }

    // Casts where a node needs the other type.
    let mut casts: HashMap<(String, i32), String> = HashMap::new();
    for i in 0..g.num_nodes() {
        let n = g.nodes()[i].clone();
        let conv = convert.contains(&i);
        let mut n2 = n.clone();
        for (s, v) in n.input.iter().enumerate() {
            let Some(&have) = newty.get(v) else { continue };
            if any_type_slot(&n.op_type, s) {
                continue;
            }
            let want = if conv && !f32_param_slot(&n.op_type, s) { to } else { DType::F32 };
            if have == want {
                continue;
            }
            let key = (v.clone(), want.onnx_id());
            let out = match casts.get(&key) {
                Some(o) => o.clone(),
                None => {
                    let tag = if want == DType::F32 { "fp32" } else { suffix };
                    let out = g.unique_name(&format!("{v}_{tag}"));
                    let name = g.unique_name(&format!("{v}_Cast_{tag}"));
                    new_nodes.push(make_node(
                        "Cast",
                        name,
                        vec![v.clone()],
                        vec![out.clone()],
                        vec![int_attr("to", want.onnx_id() as i64)],
                    ));
                    casts.insert(key, out.clone());
                    out
                }
            };
            n2.input[s] = out;
        }
        if n2 != n {
            *g.node_mut(i).expect("index") = n2;
        }
    }
    for n in new_nodes {
        let at = g.num_nodes();
        g.insert_node(at, n)?;
    }
    // Declared types of intermediate values follow.
    let gp = g.proto_mut();
    for v in &mut gp.value_info {
        if let Some(&d) = newty.get(&v.name) {
            set_value_info_dtype(v, d);
        }
    }
    if to == DType::BF16 {
        summary.notes.push(
            "bfloat16: standard ONNX, but ONNX Runtime's CPU provider has few bf16 kernels".into(),
        );
    }
    Ok(())
}
