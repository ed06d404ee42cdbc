//! Inference through whole graphs: symbolic dims kept through shape arithmetic, constant
//! folding, errors naming the node, and `value_info` filling gaps.

use super::*;
use crate::build::{int_attr as int, ints_attr as ints, string_attr as string};
use crate::pb::{AttributeProto, GraphProto, TensorProto};

/// A tensor type; dims that parse as numbers are fixed, others are names.
fn tt(dtype: DType, dims: &[&str]) -> TypeProto {
    let dims = dims
        .iter()
        .map(|d| match d.parse::<i64>() {
            Ok(k) => SymDim::Known(k),
            Err(_) => SymDim::sym(d),
        })
        .collect();
    ValueType::new(Some(dtype), Some(dims)).to_proto().unwrap()
}

fn input(name: &str, dtype: DType, dims: &[&str]) -> ValueInfoProto {
    ValueInfoProto { name: name.into(), r#type: Some(tt(dtype, dims)), ..Default::default() }
}

fn node(op: &str, ins: &[&str], outs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        name: format!("{op}_{}", outs[0]),
        op_type: op.into(),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn init(name: &str, dtype: DType, dims: &[i64], vals: &[i64]) -> TensorProto {
    let mut t = TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: dtype.onnx_id(),
        ..Default::default()
    };
    match dtype {
        DType::I64 => t.int64_data = vals.to_vec(),
        DType::F32 => t.float_data = vals.iter().map(|&v| v as f32).collect(),
        _ => t.int32_data = vals.iter().map(|&v| v as i32).collect(),
    }
    t
}

fn model(
    inputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
    nodes: Vec<NodeProto>,
) -> ModelProto {
    ModelProto {
        opset_import: vec![crate::pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(GraphProto {
            node: nodes,
            input: inputs,
            initializer: inits,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn shape_of(types: &HashMap<String, ValueType>, name: &str) -> String {
    types[name].to_string()
}

#[test]
fn bert_shape_arithmetic_keeps_symbolic_dims() {
    let m = model(
        vec![input("x", DType::F32, &["batch", "seq", "384"])],
        vec![
            init("i0", DType::I64, &[], &[0]),
            init("i1", DType::I64, &[], &[1]),
            init("ax0", DType::I64, &[1], &[0]),
            init("c12", DType::I64, &[1], &[12]),
            init("c32", DType::I64, &[1], &[32]),
            init("flat", DType::I64, &[2], &[-1, 384]),
            init("w", DType::F32, &[384, 1536], &[]),
        ],
        vec![
            node("Shape", &["x"], &["s"], vec![]),
            node("Gather", &["s", "i0"], &["b"], vec![]),
            node("Gather", &["s", "i1"], &["q"], vec![]),
            node("Unsqueeze", &["b", "ax0"], &["ub"], vec![]),
            node("Unsqueeze", &["q", "ax0"], &["uq"], vec![]),
            node("Concat", &["ub", "uq", "c12", "c32"], &["target"], vec![int("axis", 0)]),
            node("Reshape", &["x", "target"], &["heads"], vec![]),
            node("Transpose", &["heads"], &["t"], vec![ints("perm", &[0, 2, 1, 3])]),
            node("Transpose", &["heads"], &["kt"], vec![ints("perm", &[0, 2, 3, 1])]),
            node("MatMul", &["t", "kt"], &["scores"], vec![]),
            node("Reshape", &["x", "flat"], &["x2d"], vec![]),
            node("MatMul", &["x", "w"], &["ff"], vec![]),
            node("Mul", &["b", "q"], &["n_tokens"], vec![]),
            node("Unsqueeze", &["n_tokens", "ax0"], &["nt1"], vec![]),
            node("ConstantOfShape", &["nt1"], &["zeros"], vec![]),
            node("Softmax", &["scores"], &["probs"], vec![int("axis", -1)]),
        ],
    );
    let t = infer_shapes(&m).unwrap();
    assert_eq!(shape_of(&t, "target"), "int64[4]");
    assert_eq!(shape_of(&t, "heads"), "float32[batch, seq, 12, 32]");
    assert_eq!(shape_of(&t, "scores"), "float32[batch, 12, seq, seq]");
    assert_eq!(shape_of(&t, "probs"), "float32[batch, 12, seq, seq]");
    assert_eq!(shape_of(&t, "x2d"), "float32[batch*seq, 384]");
    assert_eq!(shape_of(&t, "ff"), "float32[batch, seq, 1536]");
    assert_eq!(shape_of(&t, "zeros"), "float32[batch*seq]");
}

#[test]
fn broadcasting_comparisons_and_where() {
    let m = model(
        vec![
            input("mask", DType::F32, &["batch", "1", "1", "seq"]),
            input("scores", DType::F32, &["batch", "12", "seq", "seq"]),
            input("v", DType::F32, &["3"]),
            input("u", DType::F32, &["4"]),
        ],
        vec![],
        vec![
            node("Add", &["scores", "mask"], &["masked"], vec![]),
            node("Less", &["mask", "scores"], &["lt"], vec![]),
            node("Where", &["lt", "mask", "scores"], &["w"], vec![]),
            node("Cast", &["lt"], &["lt_i"], vec![int("to", 7)]),
            node("Erf", &["masked"], &["e"], vec![]),
        ],
    );
    let t = infer_shapes(&m).unwrap();
    assert_eq!(shape_of(&t, "masked"), "float32[batch, 12, seq, seq]");
    assert_eq!(shape_of(&t, "lt"), "bool[batch, 12, seq, seq]");
    assert_eq!(shape_of(&t, "w"), "float32[batch, 12, seq, seq]");
    assert_eq!(shape_of(&t, "lt_i"), "int64[batch, 12, seq, seq]");
    assert_eq!(shape_of(&t, "e"), "float32[batch, 12, seq, seq]");

    let mut bad = m.clone();
    bad.graph.as_mut().unwrap().node.push(node("Add", &["v", "u"], &["bad"], vec![]));
    let e = infer_shapes(&bad).unwrap_err().to_string();
    assert!(
        e.contains("Add_bad") && e.contains("Add") && e.contains("[3]") && e.contains("[4]"),
        "{e}"
    );
}

#[test]
fn conv_and_pool_windows() {
    let m = model(
        vec![
            input("x", DType::F32, &["1", "3", "32", "33"]),
            input("y", DType::F32, &["n", "3", "h", "w"]),
        ],
        vec![init("w", DType::F32, &[8, 3, 3, 3], &[]), init("wt", DType::F32, &[8, 4, 2, 2], &[])],
        vec![
            node(
                "Conv",
                &["x", "w"],
                &["c1"],
                vec![ints("pads", &[1, 1, 1, 1]), ints("strides", &[2, 2])],
            ),
            node(
                "Conv",
                &["x", "w"],
                &["c2"],
                vec![string("auto_pad", "SAME_UPPER"), ints("strides", &[2, 2])],
            ),
            node("Conv", &["x", "w"], &["c3"], vec![ints("dilations", &[2, 2])]),
            node("Conv", &["y", "w"], &["c4"], vec![ints("pads", &[1, 1, 1, 1])]),
            node(
                "MaxPool",
                &["c3"],
                &["p1"],
                vec![ints("kernel_shape", &[3, 3]), ints("strides", &[2, 2]), int("ceil_mode", 1)],
            ),
            node(
                "AveragePool",
                &["c3"],
                &["p2"],
                vec![ints("kernel_shape", &[3, 3]), ints("strides", &[2, 2])],
            ),
            node("GlobalAveragePool", &["c4"], &["g"], vec![]),
            node("ConvTranspose", &["c1", "wt"], &["ct"], vec![ints("strides", &[2, 2])]),
            node("Flatten", &["g"], &["f"], vec![]),
        ],
    );
    let t = infer_shapes(&m).unwrap();
    assert_eq!(shape_of(&t, "c1"), "float32[1, 8, 16, 17]");
    assert_eq!(shape_of(&t, "c2"), "float32[1, 8, 16, 17]");
    assert_eq!(shape_of(&t, "c3"), "float32[1, 8, 28, 29]");
    assert_eq!(shape_of(&t, "c4"), "float32[n, 8, h, w]");
    assert_eq!(shape_of(&t, "p1"), "float32[1, 8, 14, 14]");
    assert_eq!(shape_of(&t, "p2"), "float32[1, 8, 13, 14]");
    assert_eq!(shape_of(&t, "g"), "float32[n, 8, 1, 1]");
    assert_eq!(shape_of(&t, "f"), "float32[n, 8]");
    assert_eq!(shape_of(&t, "ct"), "float32[1, 4, 32, 34]");

    let mut bad = m.clone();
    bad.graph.as_mut().unwrap().node.push(node("Conv", &["c1", "w"], &["bad"], vec![]));
    let e = infer_shapes(&bad).unwrap_err().to_string();
    assert!(e.contains("Conv_bad") && e.contains("8 channels"), "{e}");
}

#[test]
fn unnamed_input_dims_get_names_and_windows_over_names_get_formulas() {
    // As paddle2onnx writes it: batch -1, height and width both "?".
    let mut x = input("x", DType::F32, &["n", "3", "h", "w"]);
    let Some(crate::pb::type_proto::Value::TensorType(tt)) =
        x.r#type.as_mut().and_then(|t| t.value.as_mut())
    else {
        unreachable!()
    };
    let dims = &mut tt.shape.as_mut().unwrap().dim;
    dims[0].value = Some(dimension::Value::DimValue(-1));
    dims[2].value = Some(dimension::Value::DimParam("?".into()));
    dims[3].value = Some(dimension::Value::DimParam("?".into()));
    let m = model(
        vec![x],
        vec![init("w", DType::F32, &[8, 3, 3, 3], &[])],
        vec![
            node(
                "Conv",
                &["x", "w"],
                &["c1"],
                vec![ints("pads", &[1, 1, 1, 1]), ints("strides", &[2, 2])],
            ),
            node("Conv", &["x", "w"], &["c2"], vec![]),
            node(
                "Conv",
                &["x", "w"],
                &["c3"],
                vec![string("auto_pad", "SAME_UPPER"), ints("strides", &[2, 2])],
            ),
            node(
                "MaxPool",
                &["c1"],
                &["p"],
                vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
            ),
            node(
                "MaxPool",
                &["c1"],
                &["pc"],
                vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2]), int("ceil_mode", 1)],
            ),
        ],
    );
    let t = infer_shapes(&m).unwrap();
    // The two "?" are different dims.
    assert_eq!(shape_of(&t, "x"), "float32[x_dim0, 3, x_dim2, x_dim3]");
    assert_eq!(
        shape_of(&t, "c1"),
        "float32[x_dim0, 8, floor((x_dim2-1)/2)+1, floor((x_dim3-1)/2)+1]"
    );
    assert_eq!(shape_of(&t, "c2"), "float32[x_dim0, 8, x_dim2-2, x_dim3-2]");
    assert_eq!(shape_of(&t, "c3"), "float32[x_dim0, 8, ceil(x_dim2/2), ceil(x_dim3/2)]");
    assert_eq!(
        shape_of(&t, "p").split(", ").nth(2).unwrap(),
        "floor(((floor((x_dim2-1)/2)+1)-2)/2)+1"
    );
    // ceil_mode's last-window rule depends on the value: no formula.
    assert!(t["pc"].shape.as_ref().unwrap()[2].is_anonymous());
}

#[test]
fn quantization_ops_take_dtypes_from_zero_points() {
    let m = model(
        vec![input("x", DType::F32, &["b", "16"])],
        vec![
            init("s", DType::F32, &[], &[1]),
            init("zp8", DType::I8, &[], &[0]),
            init("wq", DType::I8, &[16, 4], &[]),
        ],
        vec![
            node("QuantizeLinear", &["x", "s", "zp8"], &["q_i8"], vec![]),
            node("QuantizeLinear", &["x", "s"], &["q_u8"], vec![]),
            node("QuantizeLinear", &["x", "s"], &["q_i4"], vec![int("output_dtype", 22)]),
            node("DequantizeLinear", &["q_i8", "s", "zp8"], &["dq"], vec![]),
            node("DynamicQuantizeLinear", &["x"], &["dy", "dy_s", "dy_zp"], vec![]),
            node("MatMulInteger", &["dy", "wq", "dy_zp"], &["acc"], vec![]),
        ],
    );
    let t = infer_shapes(&m).unwrap();
    assert_eq!(shape_of(&t, "q_i8"), "int8[b, 16]");
    assert_eq!(shape_of(&t, "q_u8"), "uint8[b, 16]");
    assert_eq!(shape_of(&t, "q_i4"), "int4[b, 16]");
    assert_eq!(shape_of(&t, "dq"), "float32[b, 16]");
    assert_eq!(shape_of(&t, "dy"), "uint8[b, 16]");
    assert_eq!(shape_of(&t, "dy_s"), "float32[]");
    assert_eq!(shape_of(&t, "acc"), "int32[b, 4]");
}

#[test]
fn shape_ops_with_constant_arguments() {
    let m = model(
        vec![input("x", DType::F32, &["b", "6", "1", "4"])],
        vec![
            init("starts", DType::I64, &[2], &[1, -2]),
            init("ends", DType::I64, &[2], &[i64::MAX, i64::MAX]),
            init("axes", DType::I64, &[2], &[1, 3]),
            init("split", DType::I64, &[2], &[2, 4]),
            init("sq", DType::I64, &[1], &[2]),
            init("reps", DType::I64, &[4], &[1, 2, 3, 1]),
            init("idx", DType::I64, &[2, 3], &[0, 1, 2, 3, 4, 5]),
            init("rax", DType::I64, &[1], &[-1]),
        ],
        vec![
            node("Slice", &["x", "starts", "ends", "axes"], &["sl"], vec![]),
            node("Split", &["x", "split"], &["sp0", "sp1"], vec![int("axis", 1)]),
            node("Split", &["x"], &["h0", "h1"], vec![int("axis", 3)]),
            node("Squeeze", &["x", "sq"], &["sqz"], vec![]),
            node("Unsqueeze", &["x"], &["usq"], vec![ints("axes", &[0, -1])]),
            node("Tile", &["x", "reps"], &["tile"], vec![]),
            node("Gather", &["x", "idx"], &["g"], vec![int("axis", 1)]),
            node("ReduceSum", &["x", "rax"], &["rs"], vec![int("keepdims", 0)]),
            node("ReduceMean", &["x"], &["rm"], vec![ints("axes", &[1])]),
            node("ArgMax", &["x"], &["am"], vec![int("axis", 1), int("keepdims", 0)]),
            node("Concat", &["x", "x"], &["cat"], vec![int("axis", 0)]),
            node("Pad", &["x"], &["pad"], vec![ints("pads", &[0, 1, 0, 0, 0, 2, 0, 0])]),
            node("TopK", &["x"], &["tv", "ti"], vec![int("k", 2)]),
            node("Transpose", &["x"], &["tr"], vec![]),
        ],
    );
    let mut m = m;
    m.opset_import[0].version = 9; // TopK's `k` and Pad's `pads` attributes
    let t = infer_shapes(&m).unwrap();
    assert_eq!(shape_of(&t, "sl"), "float32[b, 5, 1, 2]");
    assert_eq!(shape_of(&t, "sp0"), "float32[b, 2, 1, 4]");
    assert_eq!(shape_of(&t, "sp1"), "float32[b, 4, 1, 4]");
    assert_eq!(shape_of(&t, "h1"), "float32[b, 6, 1, 2]");
    assert_eq!(shape_of(&t, "sqz"), "float32[b, 6, 4]");
    assert_eq!(shape_of(&t, "usq"), "float32[1, b, 6, 1, 4, 1]");
    assert_eq!(shape_of(&t, "tile"), "float32[b, 12, 3, 4]");
    assert_eq!(shape_of(&t, "g"), "float32[b, 2, 3, 1, 4]");
    assert_eq!(shape_of(&t, "rs"), "float32[b, 6, 1]");
    assert_eq!(shape_of(&t, "rm"), "float32[b, 1, 1, 4]");
    assert_eq!(shape_of(&t, "am"), "int64[b, 1, 4]");
    assert_eq!(shape_of(&t, "cat"), "float32[2*b, 6, 1, 4]");
    assert_eq!(shape_of(&t, "pad"), "float32[b, 9, 1, 4]");
    assert_eq!(shape_of(&t, "ti"), "int64[b, 6, 1, 2]");
    assert_eq!(shape_of(&t, "tr"), "float32[4, 1, 6, b]");
}

#[test]
fn reshape_errors_name_the_node() {
    let m = model(
        vec![input("x", DType::F32, &["2", "6"])],
        vec![init("t", DType::I64, &[2], &[5, -1])],
        vec![node("Reshape", &["x", "t"], &["y"], vec![])],
    );
    let e = infer_shapes(&m).unwrap_err().to_string();
    assert!(e.contains("Reshape_y") && e.contains("[2, 6]") && e.contains("[5, -1]"), "{e}");

    let m = model(
        vec![input("a", DType::F32, &["b", "3"]), input("c", DType::F32, &["4", "5"])],
        vec![],
        vec![node("MatMul", &["a", "c"], &["y"], vec![])],
    );
    let e = infer_shapes(&m).unwrap_err().to_string();
    assert!(e.contains("MatMul_y") && e.contains("inner dims"), "{e}");
}

#[test]
fn unknown_ops_give_unknown_types_and_value_info_fills_gaps() {
    let mut m = model(
        vec![input("x", DType::F32, &["b", "8"])],
        vec![],
        vec![
            node("FancyOp", &["x"], &["f"], vec![]),
            node("Relu", &["f"], &["r"], vec![]),
            node("NonZero", &["x"], &["nz"], vec![]),
        ],
    );
    let t = infer_shapes(&m).unwrap();
    assert_eq!(t["f"], ValueType::default());
    assert_eq!(t["r"], ValueType::default());
    assert!(t["nz"].shape.as_ref().unwrap()[1].is_anonymous());

    let g = m.graph.as_mut().unwrap();
    g.value_info.push(input("f", DType::F16, &["b", "8"]));
    g.value_info.push(input("nz", DType::I64, &["2", "n_nonzero"]));
    let t = infer_shapes(&m).unwrap();
    assert_eq!(shape_of(&t, "r"), "float16[b, 8]");
    assert_eq!(shape_of(&t, "nz"), "int64[2, n_nonzero]");
}

#[test]
fn annotate_writes_value_info_for_node_outputs() {
    let mut m = model(
        vec![input("x", DType::F32, &["b", "8"])],
        vec![init("w", DType::F32, &[8, 4], &[])],
        vec![
            node("MatMul", &["x", "w"], &["h"], vec![]),
            node("Relu", &["h"], &["y"], vec![]),
            node("FancyOp", &["y"], &["z"], vec![]),
        ],
    );
    m.graph
        .as_mut()
        .unwrap()
        .output
        .push(ValueInfoProto { name: "y".into(), ..Default::default() });
    let n = annotate_value_info(&mut m).unwrap();
    assert_eq!(n, 2); // `h` into value_info, `y` as the graph output; `z` stays unknown
    let g = m.graph.as_ref().unwrap();
    assert_eq!(g.value_info.len(), 1);
    assert_eq!(g.value_info[0].r#type, Some(tt(DType::F32, &["b", "4"])));
    assert_eq!(g.output[0].r#type, Some(tt(DType::F32, &["b", "4"])));
    // Idempotent: a second run replaces instead of duplicating.
    annotate_value_info(&mut m).unwrap();
    assert_eq!(m.graph.as_ref().unwrap().value_info.len(), 1);
}

#[test]
fn attention_keeps_symbolic_batch_and_sequence() {
    let mut ort = node(
        "Attention",
        &["x", "w", "", "", "past"],
        &["ctx", "present"],
        vec![int("num_heads", 4)],
    );
    ort.domain = "com.microsoft".into();
    let m = model(
        vec![
            input("x", DType::F32, &["batch", "5", "16"]),
            input("past", DType::F32, &["2", "batch", "4", "3", "4"]),
            input("q3", DType::F16, &["batch", "seq", "72"]),
            input("kv3", DType::F16, &["batch", "6", "24"]),
            input("pk", DType::F16, &["batch", "3", "12", "8"]),
        ],
        vec![init("w", DType::F32, &[16, 48], &[])],
        vec![
            ort,
            node(
                "Attention",
                &["q3", "kv3", "kv3", "", "pk", "pk"],
                &["y", "present_k", "present_v", "qk"],
                vec![int("q_num_heads", 9), int("kv_num_heads", 3)],
            ),
        ],
    );
    let t = infer_shapes(&m).unwrap();
    assert_eq!(shape_of(&t, "ctx"), "float32[batch, 5, 16]");
    assert_eq!(shape_of(&t, "present"), "float32[2, batch, 4, 8, 4]");
    // 3-D: 9 query heads of 8 over 3 KV heads (grouped-query), 12 past keys + 6 new.
    assert_eq!(shape_of(&t, "y"), "float16[batch, seq, 72]");
    assert_eq!(shape_of(&t, "present_k"), "float16[batch, 3, 18, 8]");
    assert_eq!(shape_of(&t, "qk"), "float16[batch, 9, seq, 18]");
}
