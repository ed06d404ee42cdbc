//! Control flow: `If` (each output typed as the then-branch declares it), `Loop` and `Scan`
//! (loop-carried and state outputs keep their input's dtype, scan outputs the body output's
//! dtype; their shapes can change per iteration, so they are left to the value infos).

use super::RuleFn;
use crate::infer::{out, Cx, Out, Result, ValueType};
use crate::pb::GraphProto;
use lowbit_tensor::DType;

pub(super) const RULES: &[(&str, RuleFn)] = &[("If", if_), ("Loop", loop_), ("Scan", scan)];

fn body<'a>(cx: &Cx<'a>, name: &str) -> Option<&'a GraphProto> {
    cx.attrs.get(name).and_then(|a| a.g.as_ref())
}

/// The dtype body output `i` declares.
fn declared_dtype(g: &GraphProto, i: usize) -> Option<DType> {
    let t = g.output.get(i)?.r#type.as_ref()?;
    match t.value.as_ref()? {
        crate::pb::type_proto::Value::TensorType(tt) => DType::from_onnx(tt.elem_type),
        _ => None,
    }
}

fn if_(cx: &mut Cx) -> Result<Vec<Out>> {
    let Some(g) = body(cx, "then_branch") else { return Ok(Vec::new()) };
    Ok(g.output
        .iter()
        .map(|o| {
            let ty = o.r#type.as_ref().map(|t| ValueType::from_proto(t, cx.fresh));
            ty.map_or_else(|| out(None, None), |ty| Out { ty, val: None })
        })
        .collect())
}

fn loop_(cx: &mut Cx) -> Result<Vec<Out>> {
    let Some(g) = body(cx, "body") else { return Ok(Vec::new()) };
    let carried = cx.node.input.len().saturating_sub(2);
    let mut outs: Vec<Out> = (0..carried).map(|i| out(cx.dtype(2 + i), None)).collect();
    for i in 1 + carried..g.output.len() {
        outs.push(out(declared_dtype(g, i), None));
    }
    Ok(outs)
}

fn scan(cx: &mut Cx) -> Result<Vec<Out>> {
    let Some(g) = body(cx, "body") else { return Ok(Vec::new()) };
    let first = usize::from(cx.opset < 9);
    let m = cx.attrs.int_or("num_scan_inputs", 0)?.max(0) as usize;
    let states = cx.node.input.len().saturating_sub(first + m);
    let mut outs: Vec<Out> = (0..states).map(|i| out(cx.dtype(first + i), None)).collect();
    for i in states..g.output.len() {
        outs.push(out(declared_dtype(g, i), None));
    }
    Ok(outs)
}
