//! Session planning and running, on small graphs built here with a test-only op registry, so
//! these tests depend on no op family.

use lowbit_engine::op::FnKernel;
use lowbit_engine::{BuildCtx, EngineError, Kernel, OpError, Registry, Session, SessionOptions};
use lowbit_onnx::pb::{self, ModelProto, NodeProto, ValueInfoProto};
use lowbit_onnx::tensor_proto::tensor_to_proto;
use lowbit_tensor::Tensor;

/// `Inc`: adds 1 to every f32 element.
fn inc(_: &BuildCtx) -> Result<Box<dyn Kernel>, OpError> {
    Ok(Box::new(FnKernel(|inputs: &[Option<&Tensor>]| {
        let x = inputs[0].ok_or_else(|| OpError::new("missing"))?;
        let v: Vec<f32> = x.as_f32()?.iter().map(|v| v + 1.0).collect();
        Ok(vec![Tensor::from_vec(x.shape().to_vec(), v)?])
    })))
}

/// `Plus`: a + b, with b repeated along a's rows (a row-vector broadcast).
fn plus(_: &BuildCtx) -> Result<Box<dyn Kernel>, OpError> {
    Ok(Box::new(FnKernel(|inputs: &[Option<&Tensor>]| {
        let (a, b) = (inputs[0].unwrap().as_f32()?, inputs[1].unwrap().as_f32()?);
        let v = a.iter().enumerate().map(|(i, x)| x + b[i % b.len()]).collect();
        Ok(vec![Tensor::from_vec(inputs[0].unwrap().shape().to_vec(), v)?])
    })))
}

fn registry() -> Registry {
    let mut r = Registry::empty();
    r.register("", "Inc", inc);
    r.register("", "Plus", plus);
    r
}

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: format!("{op}_{output}"),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => Value::DimValue(*v),
                None => Value::DimParam("batch".into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// x → Inc → a ; (a, w+1) → Plus → y, with the nodes listed out of order and `w` constant.
fn model() -> ModelProto {
    let w = Tensor::from_vec(vec![2], vec![10f32, 20.0]).unwrap();
    ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(pb::GraphProto {
            node: vec![
                node("Plus", &["a", "w1"], "y"),
                node("Inc", &["x"], "a"),
                node("Inc", &["w"], "w1"),
            ],
            initializer: vec![tensor_to_proto("w", &w)],
            input: vec![value_info("x", &[None, Some(2)])],
            output: vec![value_info("y", &[None, Some(2)])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn x(rows: usize) -> Tensor {
    Tensor::from_vec(vec![rows, 2], (0..rows * 2).map(|v| v as f32).collect()).unwrap()
}

#[test]
fn runs_nodes_given_out_of_order() {
    let s = Session::with_registry(&model(), &SessionOptions::default(), &registry()).unwrap();
    let out = s.run(vec![("x".into(), x(2))]).unwrap();
    assert_eq!(out[0].0, "y");
    assert_eq!(out[0].1.as_f32().unwrap(), &[12.0, 23.0, 14.0, 25.0]);
}

#[test]
fn observer_sees_every_tensor_by_name_in_production_order() {
    let s = Session::with_registry(&model(), &SessionOptions::default(), &registry()).unwrap();
    let mut seen = Vec::new();
    let plain = s.run(vec![("x".into(), x(1))]).unwrap();
    let observed = s
        .run_observed(vec![("x".into(), x(1))], &mut |name, t| {
            seen.push((name.to_string(), t.as_f32().unwrap().to_vec()))
        })
        .unwrap();
    assert_eq!(plain, observed);
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    // Graph input, then the constant-folded `w1`, then runtime nodes in dependency order.
    assert_eq!(names, ["x", "w1", "a", "y"]);
    assert_eq!(seen[1].1, vec![11.0, 21.0]);
    assert_eq!(seen[2].1, vec![1.0, 2.0]);
}

#[test]
fn free_batch_dimension_accepts_any_size() {
    let s =
        Session::with_registry(&model(), &SessionOptions::with_threads(2), &registry()).unwrap();
    assert_eq!(s.threads(), 2);
    for rows in [1, 3, 7] {
        assert_eq!(s.run(vec![("x".into(), x(rows))]).unwrap()[0].1.shape(), &[rows, 2]);
    }
}

#[test]
fn input_errors_name_the_input() {
    let s = Session::with_registry(&model(), &SessionOptions::default(), &registry()).unwrap();
    let e = s.run(vec![]).unwrap_err();
    assert!(matches!(e, EngineError::MissingInput { .. }) && e.to_string().contains("'x'"), "{e}");
    let e = s.run(vec![("x".into(), x(1)), ("z".into(), x(1))]).unwrap_err();
    assert!(e.to_string().contains("unknown input 'z'") && e.to_string().contains("x"), "{e}");
    let e = s.run(vec![("x".into(), x(1).cast(lowbit_tensor::DType::I64).unwrap())]).unwrap_err();
    assert!(e.to_string().contains("'x'") && e.to_string().contains("int64"), "{e}");
    let e = s
        .run(vec![("x".into(), Tensor::from_vec(vec![1, 3], vec![0f32; 3]).unwrap())])
        .unwrap_err();
    assert!(e.to_string().contains("[batch, 2]") && e.to_string().contains("[1, 3]"), "{e}");
}

#[test]
fn unsupported_ops_are_named_before_anything_runs() {
    let mut m = model();
    m.graph.as_mut().unwrap().node.push(node("Frobnicate", &["y"], "z"));
    let e = Session::with_registry(&m, &SessionOptions::default(), &registry()).err().unwrap();
    let msg = e.to_string();
    assert!(msg.contains("Frobnicate") && msg.contains("not supported"), "{msg}");
}

#[test]
fn dangling_value_and_cycle_are_graph_errors() {
    let mut m = model();
    m.graph.as_mut().unwrap().node[0].input[1] = "nowhere".into();
    let e = Session::with_registry(&m, &SessionOptions::default(), &registry()).err().unwrap();
    assert!(e.to_string().contains("'nowhere'"), "{e}");

    let mut m = model();
    m.graph.as_mut().unwrap().node[1].input[0] = "y".into();
    let e = Session::with_registry(&m, &SessionOptions::default(), &registry()).err().unwrap();
    assert!(e.to_string().contains("cycle"), "{e}");
}
