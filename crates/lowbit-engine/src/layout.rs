//! Channels-last (NHWC) activations between fused integer ops.
//!
//! ONNX convolutions are NCHW, but an integer conv's GEMM produces `pixels × channels` rows
//! and reads its patches channels-last. Converting every conv's input and output between the
//! two layouts cost more than the multiply-adds on MobileNet-style models (scattered byte
//! stores at a stride of one plane). So after [`crate::fuse`], every 2-D `QLinearConv` runs
//! channels-last (`ai.lowbit` `QLinearConv`, `channels_last = 1`) between two `Transpose`
//! nodes, and the transposes are pushed through the ops that do not care about the layout:
//!
//! - elementwise ops on 8-bit codes (`QLinearLookup`; `QLinearAdd`/`QLinearMul` whose two
//!   data inputs are both channels-last: permuting both operands of a broadcast permutes
//!   its result the same way);
//! - `QLinearGlobalAveragePool`, which has a `channels_last` attribute;
//! - `MaxPool` (one output) on 8-bit codes, as `ai.lowbit` `MaxPool` with `channels_last`.
//!
//! Only values produced by a converted op are channels-last, so a `MaxPool` or elementwise op
//! converts only when its inputs are already 8-bit codes from the integer pipeline.
//!
//! A `Transpose` to NCHW followed by one back to NHWC cancels, so a chain of convs, residual
//! adds and activations stays NHWC from the first conv to the pooling, and transposes remain
//! only where an op needs NCHW (the graph's input, `MaxPool`, `Flatten`, outputs). Values keep
//! their names and shapes wherever something other than the rewritten ops reads them.
//!
//! Float graphs get the same treatment after float fusion ([`Mode::Float`]): every 2-D `Conv`
//! and `FusedConv` with a constant weight runs channels-last (`lowbit-kernels`' `conv_nhwc`:
//! pointwise convs are a GEMM of pixels with the packed weights, depthwise convs have the
//! channels in the vector lanes), and the transposes move through float elementwise ops
//! (activations; `Add`/`Sub`/`Mul`/`Div` of two channels-last operands), `MaxPool` and
//! `GlobalAveragePool`.

use crate::fuse::LOWBIT_DOMAIN;
use crate::registry::canonical_domain;
use lowbit_onnx::pb::{attribute_proto, AttributeProto, NodeProto};
use std::collections::{HashMap, HashSet};

/// NCHW → NHWC.
const TO_LAST: [i64; 4] = [0, 2, 3, 1];
/// NHWC → NCHW.
const TO_FIRST: [i64; 4] = [0, 3, 1, 2];

/// Which convs and followers a [`channels_last`] pass converts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `QLinearConv` and the ops on 8-bit codes after it.
    Integer,
    /// f32 `Conv` / `FusedConv` and the float elementwise ops after them.
    Float,
}

/// `nodes` (topologically ordered, after fusion) with the 2-D convs of `mode` channels-last,
/// and how many convs were converted. `rank_of` gives a constant's rank (conv weights), `keep`
/// the values that must stay as they are (graph outputs).
pub fn channels_last(
    nodes: Vec<NodeProto>,
    rank_of: impl Fn(&str) -> Option<usize>,
    keep: &HashSet<&str>,
    mode: Mode,
) -> (Vec<NodeProto>, usize) {
    let mut out: Vec<NodeProto> = Vec::with_capacity(nodes.len());
    // NCHW value → the NHWC value it was transposed from (or to).
    let mut nhwc: HashMap<String, String> = HashMap::new();
    let mut converted = 0;
    for mut n in nodes {
        let data = data_inputs(&n, &rank_of, mode);
        if data.is_empty() {
            out.push(n);
            continue;
        }
        let is_conv = matches!(n.op_type.as_str(), "QLinearConv" | "Conv" | "FusedConv");
        // Elementwise ops and the pooling only follow when every data input is NHWC already;
        // a conv always converts, transposing its input if it must.
        if !is_conv && !data.iter().all(|&i| nhwc.contains_key(&n.input[i])) {
            out.push(n);
            continue;
        }
        for &i in &data {
            let x = n.input[i].clone();
            let z = match nhwc.get(&x) {
                Some(z) => z.clone(),
                None => {
                    let z = format!("{x}::nhwc");
                    out.push(transpose(&x, &z, TO_LAST));
                    nhwc.insert(x, z.clone());
                    z
                }
            };
            n.input[i] = z;
        }
        if is_conv {
            converted += 1;
            if n.op_type == "QLinearConv" && n.input.len() < 9 {
                n.input.resize(9, String::new());
            }
        }
        // Elementwise ops need no flag; convs and pools run their channels-last kernels.
        let flagged = [
            "QLinearConv",
            "MaxPool",
            "QLinearGlobalAveragePool",
            "Conv",
            "FusedConv",
            "GlobalAveragePool",
        ];
        if flagged.contains(&n.op_type.as_str()) {
            if n.op_type != "QLinearGlobalAveragePool" {
                n.domain = LOWBIT_DOMAIN.to_string();
            }
            n.attribute.retain(|a| a.name != "channels_last");
            n.attribute.push(AttributeProto {
                name: "channels_last".into(),
                r#type: attribute_proto::AttributeType::Int as i32,
                i: 1,
                ..Default::default()
            });
        }
        let y = n.output[0].clone();
        let z = format!("{y}::nhwc");
        n.output[0] = z.clone();
        out.push(n);
        out.push(transpose(&z, &y, TO_FIRST));
        nhwc.insert(y, z);
    }
    (drop_unread_transposes(out, keep), converted)
}

/// The inputs of `n` that carry activations it could read channels-last; empty when `n` is not
/// such an op.
fn data_inputs(n: &NodeProto, rank_of: &impl Fn(&str) -> Option<usize>, mode: Mode) -> Vec<usize> {
    let has = |i: usize| n.input.get(i).is_some_and(|x| !x.is_empty());
    let set = n.attribute.iter().any(|a| a.name == "channels_last" && a.i != 0);
    if set || n.output.len() != 1 {
        return vec![];
    }
    let op = (canonical_domain(&n.domain), n.op_type.as_str());
    if mode == Mode::Float {
        return match op {
            ("", "Conv") | (LOWBIT_DOMAIN, "FusedConv")
                if has(1) && rank_of(&n.input[1]) == Some(4) =>
            {
                vec![0]
            }
            ("", "Add" | "Sub" | "Mul" | "Div") if has(0) && has(1) => vec![0, 1],
            ("", "MaxPool" | "GlobalAveragePool") if has(0) => vec![0],
            ("", u) if crate::fuse::UNARY.contains(&u) && has(0) => vec![0],
            _ => vec![],
        };
    }
    match op {
        ("" | LOWBIT_DOMAIN, "QLinearConv") if has(3) && rank_of(&n.input[3]) == Some(4) => {
            vec![0]
        }
        (LOWBIT_DOMAIN, "QLinearLookup") if has(0) => vec![0],
        ("com.microsoft", "QLinearAdd" | "QLinearMul") if has(0) && has(3) => vec![0, 3],
        ("com.microsoft", "QLinearGlobalAveragePool") if has(0) => vec![0],
        // One output: the Indices output would need NCHW positions.
        ("", "MaxPool") if has(0) && n.output.len() == 1 => vec![0],
        _ => vec![],
    }
}

fn transpose(x: &str, y: &str, perm: [i64; 4]) -> NodeProto {
    NodeProto {
        name: format!("{y}::transpose"),
        op_type: "Transpose".into(),
        input: vec![x.to_string()],
        output: vec![y.to_string()],
        attribute: vec![AttributeProto {
            name: "perm".into(),
            r#type: attribute_proto::AttributeType::Ints as i32,
            ints: perm.to_vec(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Removes the inserted transposes nobody reads (repeatedly: one can feed only another).
fn drop_unread_transposes(mut nodes: Vec<NodeProto>, keep: &HashSet<&str>) -> Vec<NodeProto> {
    loop {
        let read: HashSet<&str> =
            nodes.iter().flat_map(|n| n.input.iter().map(|s| s.as_str())).collect();
        let dead: Vec<bool> = nodes
            .iter()
            .map(|n| {
                n.op_type == "Transpose"
                    && n.name.ends_with("::transpose")
                    && !read.contains(n.output[0].as_str())
                    && !keep.contains(n.output[0].as_str())
            })
            .collect();
        if !dead.contains(&true) {
            return nodes;
        }
        let mut d = dead.into_iter();
        nodes.retain(|_| !d.next().unwrap_or(false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, domain: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            name: output.into(),
            op_type: op.into(),
            domain: domain.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    fn conv(x: &str, w: &str, y: &str) -> NodeProto {
        node("QLinearConv", "", &[x, "s", "z", w, "ws", "wz", "ys", "yz"], y)
    }

    fn ops(nodes: &[NodeProto]) -> Vec<String> {
        nodes.iter().map(|n| format!("{}({})->{}", n.op_type, n.input[0], n.output[0])).collect()
    }

    /// conv → relu table → conv → add(residual) → max pool → average pool → flatten: one
    /// transpose in, one out.
    #[test]
    fn a_residual_block_runs_channels_last_between_two_transposes() {
        let nodes = vec![
            conv("x", "w4", "a"),
            node("QLinearLookup", LOWBIT_DOMAIN, &["a", "t"], "b"),
            conv("b", "w4", "c"),
            node("QLinearAdd", "com.microsoft", &["c", "s", "z", "b", "s", "z", "s", "z"], "d"),
            node("MaxPool", "", &["d"], "m"),
            node("QLinearGlobalAveragePool", "com.microsoft", &["m", "s", "z", "s", "z"], "e"),
            node("Flatten", "", &["e"], "f"),
        ];
        let rank = |w: &str| (w == "w4").then_some(4);
        let (got, n) = channels_last(nodes, rank, &HashSet::from(["f"]), Mode::Integer);
        assert_eq!(n, 2);
        assert_eq!(
            ops(&got),
            [
                "Transpose(x)->x::nhwc",
                "QLinearConv(x::nhwc)->a::nhwc",
                "QLinearLookup(a::nhwc)->b::nhwc",
                "QLinearConv(b::nhwc)->c::nhwc",
                "QLinearAdd(c::nhwc)->d::nhwc",
                "MaxPool(d::nhwc)->m::nhwc",
                "QLinearGlobalAveragePool(m::nhwc)->e::nhwc",
                "Transpose(e::nhwc)->e",
                "Flatten(e)->f",
            ]
        );
        assert_eq!(got[4].input[3], "b::nhwc");
        let flagged: Vec<bool> = got
            .iter()
            .map(|n| n.attribute.iter().any(|a| a.name == "channels_last" && a.i == 1))
            .collect();
        assert_eq!(flagged, [false, true, false, true, false, true, true, false, false]);
        assert_eq!((got[1].domain.as_str(), got[1].input.len()), (LOWBIT_DOMAIN, 9));
        assert_eq!(got[5].domain, LOWBIT_DOMAIN);
    }

    /// A value also read by an NCHW op keeps its transpose back; 1-D convs and adds with an
    /// NCHW operand stay as they are.
    #[test]
    fn values_read_elsewhere_keep_their_nchw_form() {
        let mut pool = node("MaxPool", "", &["a"], "p");
        pool.output.push("indices".into());
        let nodes = vec![
            conv("x", "w4", "a"),
            pool,
            conv("p", "w3", "q"),
            node("QLinearAdd", "com.microsoft", &["a", "s", "z", "q", "s", "z", "s", "z"], "r"),
        ];
        let rank = |w: &str| Some(if w == "w4" { 4 } else { 3 });
        let (got, n) = channels_last(nodes, rank, &HashSet::from(["r"]), Mode::Integer);
        assert_eq!(n, 1);
        assert_eq!(
            ops(&got),
            [
                "Transpose(x)->x::nhwc",
                "QLinearConv(x::nhwc)->a::nhwc",
                "Transpose(a::nhwc)->a",
                "MaxPool(a)->p",
                "QLinearConv(p)->q",
                "QLinearAdd(a)->r",
            ]
        );
    }

    /// A float MobileNet block: stem conv, fused depthwise, project conv, residual add, clip,
    /// pooling. The convs, the elementwise ops between them and the pools run channels-last;
    /// a `Mul` by a constant reads the NCHW form back.
    #[test]
    fn float_convs_and_their_elementwise_followers_run_channels_last() {
        let fused = |x: &str, y: &str| node("FusedConv", LOWBIT_DOMAIN, &[x, "w4", "b"], y);
        let nodes = vec![
            node("Conv", "", &["x", "w4", "b"], "a"),
            fused("a", "b1"),
            node("Conv", "", &["b1", "w4"], "c"),
            node("Add", "", &["c", "a"], "d"),
            node("Clip", "", &["d", "", "six"], "e"),
            node("Mul", "", &["e", "half"], "h"),
            node("MaxPool", "", &["e"], "m"),
            node("GlobalAveragePool", "", &["e"], "g"),
        ];
        let rank = |w: &str| (w == "w4").then_some(4);
        let (got, n) = channels_last(nodes, rank, &HashSet::from(["g", "h", "m"]), Mode::Float);
        assert_eq!(n, 3);
        assert_eq!(
            ops(&got),
            [
                "Transpose(x)->x::nhwc",
                "Conv(x::nhwc)->a::nhwc",
                "FusedConv(a::nhwc)->b1::nhwc",
                "Conv(b1::nhwc)->c::nhwc",
                "Add(c::nhwc)->d::nhwc",
                "Clip(d::nhwc)->e::nhwc",
                "Transpose(e::nhwc)->e",
                "Mul(e)->h",
                "MaxPool(e::nhwc)->m::nhwc",
                "Transpose(m::nhwc)->m",
                "GlobalAveragePool(e::nhwc)->g::nhwc",
                "Transpose(g::nhwc)->g",
            ]
        );
        assert_eq!(got[4].input[1], "a::nhwc");
        for conv in &got[1..4] {
            assert_eq!(conv.domain, LOWBIT_DOMAIN);
            assert!(conv.attribute.iter().any(|a| a.name == "channels_last" && a.i == 1));
            assert!(conv.input.len() <= 3, "float convs keep their inputs");
        }
        // The integer mode leaves float graphs alone.
        let float = vec![node("Conv", "", &["x", "w4", "b"], "a")];
        let (same, n) = channels_last(float.clone(), rank, &HashSet::from(["a"]), Mode::Integer);
        assert_eq!((same, n), (float, 0));
    }
}
