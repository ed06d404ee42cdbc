//! `If`, `Loop` and `Scan` on hand-built graphs whose subgraphs read outer-scope values
//! (constants and computed values, two levels up), nested, with the observer seeing the
//! subgraphs' values under scoped names.

use lowbit_engine::{Session, SessionOptions};
use lowbit_onnx::build::graph_attr;
use lowbit_onnx::build::{model, node, tensor_value_info, unshaped_value_info, Dim};
use lowbit_onnx::pb::{self, attribute_proto::AttributeType, AttributeProto, GraphProto};
use lowbit_onnx::tensor_proto::tensor_to_proto;
use lowbit_tensor::{DType, Tensor};
use std::collections::BTreeMap;

fn f32s(name: &str) -> pb::ValueInfoProto {
    unshaped_value_info(name, DType::F32)
}

fn init(name: &str, t: Tensor) -> pb::TensorProto {
    tensor_to_proto(name, &t)
}

/// `out = If(cond) { Loop 3 times: acc += w; scan acc + y } else { y - w }` with
/// `y = x + x` and `w` an initializer: the loop body reads `w` and `y` from two scopes up.
fn nested_model() -> pb::ModelProto {
    let body = GraphProto {
        name: "body".into(),
        node: vec![
            node("Identity", "keep_going", &["cond_in"], &["cond_out"]),
            node("Add", "step", &["acc_in", "w"], &["acc_out"]),
            node("Add", "emit", &["acc_in", "y"], &["scan_out"]),
        ],
        input: vec![
            tensor_value_info("i", DType::I64, &[]),
            tensor_value_info("cond_in", DType::Bool, &[]),
            f32s("acc_in"),
        ],
        output: vec![
            unshaped_value_info("cond_out", DType::Bool),
            f32s("acc_out"),
            f32s("scan_out"),
        ],
        ..Default::default()
    };
    let mut lp = node("Loop", "loop", &["trips", "", "y"], &["acc", "scans"]);
    lp.attribute.push(graph_attr("body", body));
    let then_branch = GraphProto {
        name: "then".into(),
        node: vec![lp],
        initializer: vec![init("trips", Tensor::scalar(3i64))],
        output: vec![f32s("acc"), f32s("scans")],
        ..Default::default()
    };
    let else_branch = GraphProto {
        name: "else".into(),
        node: vec![
            node("Sub", "minus", &["y", "w"], &["diff"]),
            node("Identity", "copy", &["y"], &["y_copy"]),
        ],
        output: vec![f32s("diff"), f32s("y_copy")],
        ..Default::default()
    };
    let mut iff = node("If", "branch", &["cond"], &["out", "aux"]);
    iff.attribute.push(graph_attr("then_branch", then_branch));
    iff.attribute.push(graph_attr("else_branch", else_branch));
    let g = GraphProto {
        name: "main".into(),
        node: vec![node("Add", "double", &["x", "x"], &["y"]), iff],
        initializer: vec![init("w", Tensor::from_vec(vec![2], vec![10.0f32, 20.0]).unwrap())],
        input: vec![
            tensor_value_info("x", DType::F32, &[Dim::Fixed(2)]),
            tensor_value_info("cond", DType::Bool, &[]),
        ],
        output: vec![f32s("out"), f32s("aux")],
        ..Default::default()
    };
    model(g, 17)
}

fn feeds(cond: bool) -> Vec<(String, Tensor)> {
    vec![
        ("x".into(), Tensor::from_vec(vec![2], vec![1.0f32, 2.0]).unwrap()),
        ("cond".into(), Tensor::scalar(cond)),
    ]
}

#[test]
fn nested_loop_in_an_if_branch_reads_values_two_scopes_up() {
    let s = Session::new(&nested_model(), &SessionOptions::with_threads(1)).unwrap();
    // y = [2, 4]; three steps of acc += w; scans hold acc + y before each step.
    let out = s.run(feeds(true)).unwrap();
    assert_eq!(out[0].1.as_f32().unwrap(), &[32.0, 64.0]);
    assert_eq!(out[1].1.shape(), [3, 2]);
    assert_eq!(out[1].1.as_f32().unwrap(), &[4.0, 8.0, 14.0, 28.0, 24.0, 48.0]);
    let out = s.run(feeds(false)).unwrap();
    assert_eq!(out[0].1.as_f32().unwrap(), &[-8.0, -16.0]);
    assert_eq!(out[1].1.as_f32().unwrap(), &[2.0, 4.0]);
}

#[test]
fn observer_sees_subgraph_values_under_scoped_names() {
    let s = Session::new(&nested_model(), &SessionOptions::unfused(1)).unwrap();
    let mut seen: BTreeMap<String, Vec<Vec<f32>>> = BTreeMap::new();
    s.run_observed(feeds(true), &mut |name, t| {
        seen.entry(name.to_string()).or_default().push(t.to_f32_vec().unwrap_or_default());
    })
    .unwrap();
    let acc = &seen["branch/then_branch/loop/body/acc_out"];
    assert_eq!(acc, &vec![vec![12.0, 24.0], vec![22.0, 44.0], vec![32.0, 64.0]]);
    assert_eq!(seen["branch/then_branch/loop/body/acc_in"].len(), 3);
    assert_eq!(seen["branch/then_branch/acc"], vec![vec![32.0, 64.0]]);
    assert_eq!(seen["out"], vec![vec![32.0, 64.0]]);
    assert!(!seen.keys().any(|k| k.contains("else_branch")), "{:?}", seen.keys());
}

/// `Scan` with a state, a scan input read backwards, and a body weight from the outer scope.
#[test]
fn scan_reads_an_outer_weight_and_runs_backwards() {
    let body = GraphProto {
        name: "scan_body".into(),
        node: vec![
            node("Mul", "scale", &["x_t", "w"], &["wx"]),
            node("Add", "sum", &["s_in", "wx"], &["s_out"]),
            node("Identity", "emit", &["s_out"], &["y_t"]),
        ],
        input: vec![f32s("s_in"), f32s("x_t")],
        output: vec![f32s("s_out"), f32s("y_t")],
        ..Default::default()
    };
    let mut scan = node("Scan", "scan", &["s0", "xs"], &["s_final", "ys"]);
    scan.attribute.push(graph_attr("body", body));
    scan.attribute.push(AttributeProto {
        name: "num_scan_inputs".into(),
        r#type: AttributeType::Int as i32,
        i: 1,
        ..Default::default()
    });
    scan.attribute.push(AttributeProto {
        name: "scan_input_directions".into(),
        r#type: AttributeType::Ints as i32,
        ints: vec![1],
        ..Default::default()
    });
    let g = GraphProto {
        name: "main".into(),
        node: vec![scan],
        initializer: vec![
            init("w", Tensor::from_vec(vec![2], vec![1.0f32, -1.0]).unwrap()),
            init("s0", Tensor::from_vec(vec![2], vec![0.0f32, 0.0]).unwrap()),
        ],
        input: vec![tensor_value_info("xs", DType::F32, &[Dim::Fixed(3), Dim::Fixed(2)])],
        output: vec![f32s("s_final"), f32s("ys")],
        ..Default::default()
    };
    let s = Session::new(&model(g, 17), &SessionOptions::with_threads(1)).unwrap();
    let xs = Tensor::from_vec(vec![3, 2], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let out = s.run(vec![("xs".into(), xs)]).unwrap();
    assert_eq!(out[0].1.as_f32().unwrap(), &[9.0, -12.0]);
    // rows read 2, 1, 0: running sums [5,-6], [8,-10], [9,-12]
    assert_eq!(out[1].1.as_f32().unwrap(), &[5.0, -6.0, 8.0, -10.0, 9.0, -12.0]);
}

#[test]
fn a_subgraph_reading_an_unknown_value_is_an_error_naming_it() {
    let mut m = nested_model();
    let g = m.graph.as_mut().unwrap();
    let iff = g.node.iter_mut().find(|n| n.op_type == "If").unwrap();
    let else_g = iff.attribute[1].g.as_mut().unwrap();
    else_g.node[0].input[1] = "nowhere".into();
    let err = Session::new(&m, &SessionOptions::default()).err().expect("refused").to_string();
    assert!(err.contains("nowhere"), "{err}");
}
