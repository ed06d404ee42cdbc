//! Target profiles end to end: a small convolutional block with a residual `Add` (whose second
//! input does not come from a quantized layer) and a `Concat` of two quantized tensors is
//! quantized for each target, and every file must pass `check` against its own target; files
//! made for one runtime break the rules of another, and hand-made breaks are found by name.

use lowbit_engine::{Session, SessionOptions};
use lowbit_onnx::build::{int_attr, ints_attr};
use lowbit_onnx::pb::{self, ModelProto};
use lowbit_onnx::tensor_to_proto;
use lowbit_quant::calibrate::{Calibrator, CalibratorOptions};
use lowbit_quant::quantize::{quantize_model, QuantizeConfig};
use lowbit_quant::target::check::{check_model, CheckReport, Severity};
use lowbit_quant::target::{Target, TargetChoice};
use lowbit_tensor::Tensor;

fn node(
    op: &str,
    name: &str,
    ins: &[&str],
    outs: &[&str],
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn float_io(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(Value::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn weights(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = lowbit_data::rng::Rng::new(seed);
    let n = shape.iter().product();
    Tensor::from_vec(shape.to_vec(), rng.normals(n, 0.3)).unwrap()
}

/// x[1,4,8,8] → Conv 3×3 → Relu (`a`) → Conv 1×1 (`b`); `b + tanh(x)` (`c`, the residual:
/// `tanh(x)` feeds no quantized layer); Concat(c, a) → Conv 1×1 → `y`.
fn block() -> ModelProto {
    let inits = vec![
        tensor_to_proto("w1", &weights(&[4, 4, 3, 3], 1)),
        tensor_to_proto("b1", &weights(&[4], 2)),
        tensor_to_proto("w2", &weights(&[4, 4, 1, 1], 3)),
        tensor_to_proto("b2", &weights(&[4], 4)),
        tensor_to_proto("w3", &weights(&[2, 8, 1, 1], 5)),
    ];
    let nodes = vec![
        node("Conv", "conv1", &["x", "w1", "b1"], &["a0"], vec![ints_attr("pads", &[1, 1, 1, 1])]),
        node("Relu", "relu1", &["a0"], &["a"], vec![]),
        node("Conv", "conv2", &["a", "w2", "b2"], &["b"], vec![]),
        node("Tanh", "tanh", &["x"], &["t"], vec![]),
        node("Add", "residual", &["b", "t"], &["c"], vec![]),
        node("Concat", "concat", &["c", "a"], &["d"], vec![int_attr("axis", 1)]),
        node("Conv", "conv3", &["d", "w3"], &["y"], vec![]),
    ];
    ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(pb::GraphProto {
            name: "block".into(),
            node: nodes,
            initializer: inits,
            input: vec![float_io("x", &[1, 4, 8, 8])],
            output: vec![float_io("y", &[1, 2, 8, 8])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn samples(n: usize) -> Vec<Tensor> {
    (0..n).map(|i| weights(&[1, 4, 8, 8], 100 + i as u64)).collect()
}

fn quantize_for(model: &ModelProto, target: Target) -> ModelProto {
    let session = Session::new(model, &SessionOptions::unfused(1)).unwrap();
    let mut cal = Calibrator::new(CalibratorOptions::default()).unwrap();
    for x in samples(8) {
        cal.run(&session, vec![("x".into(), x)]).unwrap();
    }
    let table = cal.table().unwrap();
    let cfg = QuantizeConfig {
        target: TargetChoice::Named(target),
        min_activation_sqnr: None,
        ..Default::default()
    };
    quantize_model(model.clone(), &cfg, Some(&table)).unwrap().0
}

fn rules_broken(r: &CheckReport, rule: &str) -> Vec<String> {
    r.findings.iter().filter(|f| f.rule == rule).map(|f| f.to_string()).collect()
}

/// The DequantizeLinear reading `tensor`'s quantized copy, by the tensor it dequantizes.
fn dq_params(m: &ModelProto, tensor: &str) -> Option<(Vec<f32>, Vec<f32>)> {
    let g = m.graph.as_ref().unwrap();
    let q = g.node.iter().find(|n| n.op_type == "QuantizeLinear" && n.input[0] == tensor)?;
    let value = |name: &str| {
        let t = g.initializer.iter().find(|t| t.name == name).unwrap();
        lowbit_onnx::tensor_from_proto(t).unwrap().to_f32_vec().unwrap()
    };
    Some((value(&q.input[1]), value(&q.input[2])))
}

#[test]
fn every_target_s_file_passes_its_own_check() {
    let model = block();
    for t in Target::ALL {
        let q = quantize_for(&model, t);
        let r = check_model(&q, t).unwrap();
        let lines: Vec<String> = r.findings.iter().map(|f| f.to_string()).collect();
        assert_eq!(r.errors, 0, "{t}: {lines:#?}");
        assert_eq!(r.quantized_layers, 3, "{t}: {lines:#?}");
        for rule in ["residual-input", "shared-grid", "activation-zero-point"] {
            assert!(rules_broken(&r, rule).is_empty(), "{t}: {lines:#?}");
        }
    }
}

#[test]
fn tensorrt_quantizes_the_residual_input_and_gives_concat_one_grid() {
    let model = block();
    let trt = quantize_for(&model, Target::TensorRt);
    // The residual's float input is quantized: TensorRT fuses the Add into conv2.
    assert!(dq_params(&trt, "t").is_some(), "tanh output not quantized for tensorrt");
    let (c, a, d) = (
        dq_params(&trt, "c").expect("c quantized"),
        dq_params(&trt, "a").expect("a quantized"),
        dq_params(&trt, "d").expect("concat output quantized"),
    );
    assert_eq!(c, a, "Concat inputs on different grids");
    assert_eq!(c, d, "Concat output on another grid than its inputs");
    assert!(c.1.iter().all(|&z| z == 0.0), "tensorrt zero point {:?}", c.1);
    // ONNX Runtime's layout leaves both as they are: ORT runs either grid.
    let ort = quantize_for(&model, Target::OrtVnni);
    assert!(dq_params(&ort, "t").is_none());
    assert_ne!(dq_params(&ort, "c"), dq_params(&ort, "a"));
    // The one grid costs little: the TensorRT file still computes the block.
    let run = |m: &ModelProto| -> Vec<f32> {
        let s = Session::new(m, &SessionOptions::with_threads(1)).unwrap();
        samples(4)
            .into_iter()
            .flat_map(|x| s.run(vec![("x".into(), x)]).unwrap().remove(0).1.to_f32_vec().unwrap())
            .collect()
    };
    let (f, q) = (run(&model), run(&trt));
    let err: f64 = f.iter().zip(&q).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let sig: f64 = f.iter().map(|a| (*a as f64).powi(2)).sum();
    let sqnr = 10.0 * (sig / err).log10();
    assert!(sqnr > 25.0, "tensorrt file output SQNR {sqnr:.1} dB");
}

#[test]
fn an_onnx_runtime_file_breaks_tensorrt_s_rules_by_name() {
    let ort = quantize_for(&block(), Target::OrtVnni);
    let r = check_model(&ort, Target::TensorRt).unwrap();
    assert!(!r.passes());
    let types = rules_broken(&r, "activation-type");
    // Every quantized activation is uint8: x, a0/a (one grid), b, c, d-less ORT layout.
    assert!(types.len() >= 3, "{types:#?}");
    assert!(types.iter().all(|l| l.starts_with("error [activation-type]") && l.contains("uint8")));
    assert!(types.iter().any(|l| l.contains("tensor 'x'")), "{types:#?}");
    assert!(r
        .findings
        .iter()
        .all(|f| f.severity == Severity::Error || f.rule != "activation-type"));
    // Placement: the residual's float input and the Concat's two grids are warned about.
    let res = rules_broken(&r, "residual-input");
    assert_eq!(res.len(), 1, "{res:#?}");
    assert!(res[0].contains("residual (Add)") && res[0].contains("tensor 't'"), "{}", res[0]);
    let grid = rules_broken(&r, "shared-grid");
    assert_eq!(grid.len(), 1, "{grid:#?}");
    assert!(grid[0].contains("concat (Concat)"), "{}", grid[0]);
    // The same file is fine for ONNX Runtime and OpenVINO (uint8 runs there).
    assert!(check_model(&ort, Target::OrtVnni).unwrap().passes());
    let ov = check_model(&ort, Target::OpenVino).unwrap();
    assert!(ov.passes() && rules_broken(&ov, "shared-grid").len() == 1);
}

/// conv1's weight DequantizeLinear with its per-channel scales moved onto the input-channel
/// axis (1): the break the weight-axis rule looks for.
fn w1_dequantize_on_axis_1(g: &mut pb::GraphProto) -> &mut pb::NodeProto {
    let dq = g
        .node
        .iter_mut()
        .find(|n| n.op_type == "DequantizeLinear" && n.input[0].starts_with("w1"))
        .unwrap();
    dq.attribute.retain(|a| a.name != "axis");
    dq.attribute.push(int_attr("axis", 1));
    dq
}

#[test]
fn hand_made_breaks_are_found_at_their_node() {
    let mut trt = quantize_for(&block(), Target::TensorRt);
    let g = trt.graph.as_mut().unwrap();
    // conv1's per-channel weight scales moved onto the input-channel axis.
    let dq = w1_dequantize_on_axis_1(g);
    let dq_name = dq.name.clone();
    let r = check_model(&trt, Target::TensorRt).unwrap();
    let axis = rules_broken(&r, "weight-axis");
    assert_eq!(axis.len(), 1, "{axis:#?}");
    assert!(axis[0].starts_with(&format!("error [weight-axis] {dq_name} (DequantizeLinear)")));
    assert!(axis[0].contains("axis 1") && axis[0].contains("axis 0"), "{}", axis[0]);
    // For ONNX Runtime the same break only costs the fusion: a warning.
    let ort = check_model(&trt, Target::OrtVnni).unwrap();
    assert!(ort.passes() && rules_broken(&ort, "weight-axis").len() == 1);

    // Per-axis Q/DQ below opset 13 is not valid ONNX, and TensorRT parses Q/DQ from 13.
    trt.opset_import[0].version = 12;
    let r = check_model(&trt, Target::TensorRt).unwrap();
    let opset = rules_broken(&r, "opset");
    assert!(opset.iter().any(|l| l.contains("needs opset 13")), "{opset:#?}");
    assert!(opset.iter().any(|l| l.contains("parses Q/DQ from opset 13")), "{opset:#?}");

    // NNCF writes weights as float + QuantizeLinear → DequantizeLinear: the axis is checked at
    // the QuantizeLinear, through its DequantizeLinear to the layer.
    let mut nncf = quantize_for(&block(), Target::TensorRt);
    let g = nncf.graph.as_mut().unwrap();
    let w1 = block().graph.unwrap().initializer.into_iter().find(|t| t.name == "w1").unwrap();
    g.initializer.push(pb::TensorProto { name: "w1_float".into(), ..w1 });
    let dq = w1_dequantize_on_axis_1(g);
    let (scale, zp) = (dq.input[1].clone(), dq.input[2].clone());
    dq.input[0] = "w1_codes".into();
    g.node.push(node(
        "QuantizeLinear",
        "w1_q",
        &["w1_float", &scale, &zp],
        &["w1_codes"],
        vec![int_attr("axis", 1)],
    ));
    let r = check_model(&nncf, Target::TensorRt).unwrap();
    let axis = rules_broken(&r, "weight-axis");
    assert!(axis.iter().any(|l| l.contains("w1_q (QuantizeLinear)")), "{axis:#?}");

    // A float model is not quantized, whatever the target.
    let r = check_model(&block(), Target::TensorRt).unwrap();
    assert!(r.passes() && rules_broken(&r, "not-quantized").len() == 1);
}
