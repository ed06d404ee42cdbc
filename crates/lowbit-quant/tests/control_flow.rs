//! Networks inside control-flow bodies, as some exporters write them (a voice-activity
//! detector whose whole network sits in an `If` branch, a recurrent cell as a `Loop` body that
//! reads its weights from the main graph): calibrated through the engine's scoped observer
//! names, quantized inside the subgraphs, run by lowbit's engine and by ONNX Runtime, and
//! compared with FP32.

use lowbit_engine::{Session, SessionOptions};
use lowbit_onnx::build::{model, node, tensor_value_info, unshaped_value_info, Dim};
use lowbit_onnx::pb::{self, attribute_proto::AttributeType, AttributeProto, GraphProto};
use lowbit_onnx::tensor_proto::tensor_to_proto;
use lowbit_quant::calibrate::{Calibrator, CalibratorOptions};
use lowbit_quant::quantize::{quantize_model, static_coverage, QuantPlan, QuantizeConfig};
use lowbit_tensor::{DType, Tensor};

mod common;
use common::{ort_run, output, run_all, sqnr, Rng};
use lowbit_onnx::build::{graph_attr, ints_attr as ints};

fn with_attr(mut n: pb::NodeProto, a: AttributeProto) -> pb::NodeProto {
    n.attribute.push(a);
    n
}

fn init(name: &str, t: &Tensor) -> pb::TensorProto {
    tensor_to_proto(name, t)
}

/// Conv(3→8) → Relu → Conv(8→8) → Relu → GlobalAveragePool → Flatten → MatMul(8→10), reading
/// the weights named `w`: `[conv1, bias1, conv2, fc]`; writes `out`.
fn convnet(p: &str, x: &str, w: [&str; 4], out: &str) -> Vec<pb::NodeProto> {
    let pads = || ints("pads", &[1, 1, 1, 1]);
    let v = |s: &str| format!("{p}{s}");
    let (c1, r1, c2, r2, gp, fl) = (v("c1"), v("r1"), v("c2"), v("r2"), v("gap"), v("flat"));
    vec![
        with_attr(node("Conv", &v("conv1"), &[x, w[0], w[1]], &[&c1]), pads()),
        node("Relu", &v("relu1"), &[&c1], &[&r1]),
        with_attr(node("Conv", &v("conv2"), &[&r1, w[2]], &[&c2]), pads()),
        node("Relu", &v("relu2"), &[&c2], &[&r2]),
        node("GlobalAveragePool", &v("pool"), &[&r2], &[&gp]),
        node("Flatten", &v("flatten"), &[&gp], &[&fl]),
        node("MatMul", &v("fc"), &[&fl, w[3]], &[out]),
    ]
}

/// `y = If(cond) { convnet with its own weights (one stored as a Constant node) } else {
/// convnet reading the main graph's weights }`: the whole network sits in the branches.
fn if_model() -> pb::ModelProto {
    let mut r = Rng(0x9e3779b97f4a7c15);
    let mut weights = |p: &str| {
        vec![
            init(&format!("{p}w1"), &r.tensor(&[8, 3, 3, 3], 0.4)),
            init(&format!("{p}b1"), &r.tensor(&[8], 0.2)),
            init(&format!("{p}w2"), &r.tensor(&[8, 8, 3, 3], 0.2)),
            init(&format!("{p}wfc"), &r.tensor(&[8, 10], 0.5)),
        ]
    };
    let then_w = weights("t_");
    let outer_w = weights("o_");
    // The then branch stores its classifier weight as a Constant node (paddle2onnx style).
    let mut then_nodes = vec![with_attr(
        node("Constant", "t_wfc_const", &[], &["t_wfc"]),
        AttributeProto {
            name: "value".into(),
            r#type: AttributeType::Tensor as i32,
            t: Some(then_w[3].clone()),
            ..Default::default()
        },
    )];
    then_nodes.extend(convnet("t_", "x", ["t_w1", "t_b1", "t_w2", "t_wfc"], "t_out"));
    let then_branch = GraphProto {
        name: "then".into(),
        node: then_nodes,
        initializer: then_w[..3].to_vec(),
        output: vec![unshaped_value_info("t_out", DType::F32)],
        ..Default::default()
    };
    let else_branch = GraphProto {
        name: "else".into(),
        node: convnet("e_", "x", ["o_w1", "o_b1", "o_w2", "o_wfc"], "e_out"),
        output: vec![unshaped_value_info("e_out", DType::F32)],
        ..Default::default()
    };
    let iff = with_attr(
        with_attr(node("If", "branch", &["cond"], &["y"]), graph_attr("then_branch", then_branch)),
        graph_attr("else_branch", else_branch),
    );
    let g = GraphProto {
        name: "if_net".into(),
        node: vec![iff],
        initializer: outer_w,
        input: vec![
            tensor_value_info(
                "x",
                DType::F32,
                &[Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(8), Dim::Fixed(8)],
            ),
            tensor_value_info("cond", DType::Bool, &[]),
        ],
        output: vec![tensor_value_info("y", DType::F32, &[Dim::Fixed(1), Dim::Fixed(10)])],
        ..Default::default()
    };
    model(g, 17)
}

/// `h = x; 3 times: h = Tanh(h · W + b); y = h · W_out`: the Loop body reads `W` and `b` from
/// the main graph.
fn loop_model() -> pb::ModelProto {
    let mut r = Rng(0x2545f4914f6cdd1d);
    let body = GraphProto {
        name: "cell".into(),
        node: vec![
            node("Identity", "keep_going", &["cond_in"], &["cond_out"]),
            node("MatMul", "cell_mm", &["h_in", "w"], &["mm"]),
            node("Add", "cell_bias", &["mm", "b"], &["pre"]),
            node("Tanh", "cell_tanh", &["pre"], &["h_out"]),
        ],
        input: vec![
            tensor_value_info("i", DType::I64, &[]),
            tensor_value_info("cond_in", DType::Bool, &[]),
            tensor_value_info("h_in", DType::F32, &[Dim::Fixed(1), Dim::Fixed(16)]),
        ],
        output: vec![
            tensor_value_info("cond_out", DType::Bool, &[]),
            tensor_value_info("h_out", DType::F32, &[Dim::Fixed(1), Dim::Fixed(16)]),
        ],
        ..Default::default()
    };
    let lp =
        with_attr(node("Loop", "recur", &["trips", "", "x"], &["h"]), graph_attr("body", body));
    let g = GraphProto {
        name: "loop_net".into(),
        node: vec![lp, node("MatMul", "head", &["h", "w_out"], &["y"])],
        initializer: vec![
            init("trips", &Tensor::scalar(3i64)),
            init("w", &r.tensor(&[16, 16], 0.45)),
            init("b", &r.tensor(&[16], 0.1)),
            init("w_out", &r.tensor(&[16, 4], 0.5)),
        ],
        input: vec![tensor_value_info("x", DType::F32, &[Dim::Fixed(1), Dim::Fixed(16)])],
        output: vec![tensor_value_info("y", DType::F32, &[Dim::Fixed(1), Dim::Fixed(4)])],
        ..Default::default()
    };
    model(g, 17)
}

/// Calibrates on `calib`, quantizes static int8, and checks engine and ONNX Runtime outputs on
/// `eval` against FP32: returns the quantized model.
fn quantize_and_check(
    m: &pb::ModelProto,
    calib: &[Vec<(String, Tensor)>],
    eval: &[Vec<(String, Tensor)>],
    min_db: f64,
    tag: &str,
) -> (pb::ModelProto, lowbit_quant::quantize::QuantizeSummary) {
    let session = Session::new(m, &SessionOptions::unfused(1)).unwrap();
    let mut cal = Calibrator::new(CalibratorOptions::default()).unwrap();
    for f in calib {
        cal.run(&session, f.clone()).unwrap();
    }
    let table = cal.table().unwrap();
    let (q, summary) = quantize_model(m.clone(), &QuantizeConfig::default(), Some(&table)).unwrap();
    println!("{summary}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{tag}.onnx"));
    lowbit_onnx::save_model(&q, &path).unwrap();
    let q = lowbit_onnx::load_model(&path).unwrap();

    let fp32 = run_all(m, eval);
    let ours = run_all(&q, eval);
    let ours_db = sqnr(&ours, &fp32);
    println!("{tag}: int8 vs FP32 on lowbit's engine: SQNR {ours_db:.1} dB");
    assert!(ours_db >= min_db, "{tag}: engine int8 output SQNR {ours_db:.1} dB < {min_db}");
    if let Some(ort) = ort_run(&path, eval) {
        let theirs: Vec<Vec<f32>> =
            ort.iter().map(|o| output(o, "y").to_f32_vec().unwrap()).collect();
        let ort_db = sqnr(&theirs, &fp32);
        println!("{tag}: int8 vs FP32 in ONNX Runtime: SQNR {ort_db:.1} dB");
        assert!(ort_db >= min_db, "{tag}: ORT int8 output SQNR {ort_db:.1} dB < {min_db}");
    }
    (q, summary)
}

fn subgraph<'a>(m: &'a pb::ModelProto, node: &str, attr: &str) -> &'a GraphProto {
    let n = m.graph.as_ref().unwrap().node.iter().find(|n| n.name == node).unwrap();
    n.attribute.iter().find(|a| a.name == attr).and_then(|a| a.g.as_ref()).unwrap()
}

fn count_ops(g: &GraphProto, op: &str) -> usize {
    g.node.iter().filter(|n| n.op_type == op).count()
}

/// int8 weight tensors (not the scalar zero points of activations).
fn int8_inits(g: &GraphProto) -> usize {
    g.initializer.iter().filter(|t| t.data_type == DType::I8.onnx_id() && t.dims.len() >= 2).count()
}

// The output goes through three int8 layers (two Conv, one MatMul) whose weights are per
// channel and whose activations are per tensor: each rounding alone keeps about 35-40 dB on
// these smooth random signals, a few such stages compose to about 30 dB. 25 dB leaves room
// for the extra error that stacking them can add, and fails if a tensor sits on a wrong grid
// (a missing range or scope shows up as 0-10 dB).
const MIN_SQNR_DB: f64 = 25.0;

#[test]
fn a_network_in_an_if_branch_is_calibrated_and_quantized_inside_it() {
    let m = if_model();
    let mut r = Rng(7);
    let feeds = |r: &mut Rng, n: usize| -> Vec<Vec<(String, Tensor)>> {
        (0..n)
            .map(|i| {
                vec![
                    ("x".to_string(), r.tensor(&[1, 3, 8, 8], 1.0)),
                    ("cond".to_string(), Tensor::scalar(i % 2 == 0)),
                ]
            })
            .collect()
    };
    let calib = feeds(&mut r, 32);
    let eval = feeds(&mut r, 16);

    // inspect's dry run sees the six weighted nodes and would quantize them all.
    let cov = static_coverage(m.clone(), &QuantPlan::resolve(&QuantizeConfig::default()).unwrap())
        .unwrap();
    assert_eq!((cov.weighted, cov.quantized), (6, 6), "{cov}");

    let (q, summary) = quantize_and_check(&m, &calib, &eval, MIN_SQNR_DB, "if-net");
    assert_eq!(summary.quantized.get("Conv"), Some(&4), "{summary}");
    assert_eq!(summary.quantized.get("MatMul"), Some(&2), "{summary}");
    assert_eq!(summary.weighted_in_subgraphs, 6);
    // Sizes count the branches' weights (the then branch's three, the Constant-node one
    // included, and the main graph's four lent to the else branch): about 4× smaller.
    assert!(summary.size_after * 3 < summary.size_before, "{summary}");
    let cov = summary.coverage();
    assert_eq!((cov.weighted, cov.quantized), (6, 6), "{cov}");
    for (attr, prefix) in [("then_branch", "t_"), ("else_branch", "e_")] {
        let b = subgraph(&q, "branch", attr);
        // Q/DQ on the activations inside the branch; both convolutions, the classifier and
        // their weights in int8 (the then branch's Constant-node weight included).
        assert!(count_ops(b, "QuantizeLinear") >= 4, "{attr}: {:?}", b.node);
        assert_eq!(int8_inits(b), 3, "{attr}: int8 weights inside the branch");
        for conv in b.node.iter().filter(|n| n.op_type == "Conv" || n.op_type == "MatMul") {
            assert!(conv.name.starts_with(prefix));
            let w = &conv.input[1];
            assert!(w.ends_with("_dequantized"), "{} reads {w}", conv.name);
        }
    }
    // The float weights the else branch read from the main graph are gone from it.
    let main = q.graph.as_ref().unwrap();
    assert!(
        main.initializer.iter().all(|t| !t.name.starts_with("o_w")),
        "{:?}",
        main.initializer.iter().map(|t| &t.name).collect::<Vec<_>>()
    );
}

#[test]
fn a_loop_body_reading_outer_weights_is_quantized_inside_the_loop() {
    let m = loop_model();
    let mut r = Rng(11);
    let feeds = |r: &mut Rng, n: usize| -> Vec<Vec<(String, Tensor)>> {
        (0..n).map(|_| vec![("x".to_string(), r.tensor(&[1, 16], 1.0))]).collect()
    };
    let calib = feeds(&mut r, 32);
    let eval = feeds(&mut r, 16);
    let (q, summary) = quantize_and_check(&m, &calib, &eval, MIN_SQNR_DB, "loop-net");
    assert_eq!(summary.quantized.get("MatMul"), Some(&2), "{summary}");
    let body = subgraph(&q, "recur", "body");
    assert!(count_ops(body, "QuantizeLinear") >= 2, "{:?}", body.node);
    assert_eq!(int8_inits(body), 1, "the cell's weight, quantized inside the body");
    let mm = body.node.iter().find(|n| n.name == "cell_mm").unwrap();
    assert!(mm.input.iter().all(|i| i.ends_with("_dequantized")), "{:?}", mm.input);
    // `w` is read by nothing else: its float copy left the main graph; the bias, left float,
    // is still read from there.
    let main = q.graph.as_ref().unwrap();
    let names: Vec<&str> = main.initializer.iter().map(|t| t.name.as_str()).collect();
    assert!(!names.contains(&"w") && names.contains(&"b"), "{names:?}");
}
