//! Integration tests of the graph IR and shape inference on real models from `../shared`: the
//! corpus models (MiniLM encoder with symbolic batch/sequence dims, MNIST CNNs, a third-party
//! int8 model, MobileNetV2) and every ONNX backend node test whose ops inference covers.

use std::collections::HashMap;
use std::path::PathBuf;

use lowbit_onnx::graph::Graph;
use lowbit_onnx::infer::{annotate_value_info, infer_shapes, is_supported_op, SymDim, ValueType};
use lowbit_onnx::load_model;
use lowbit_onnx::pb::{type_proto, ModelProto, ValueInfoProto};
use lowbit_tensor::DType;
use prost::Message;

mod common;
use common::{corpus_models, shared};

fn model(name: &str) -> ModelProto {
    load_model(shared().join("corpus/dev/models").join(name)).unwrap()
}

fn declared(v: &ValueInfoProto) -> (Option<DType>, Option<Vec<Option<i64>>>) {
    match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => {
            let shape = t.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(lowbit_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(
                            k,
                        )) => Some(k),
                        _ => None,
                    })
                    .collect()
            });
            (DType::from_onnx(t.elem_type), shape)
        }
        _ => (None, None),
    }
}

/// `Graph::new(m).into_model()` gives back `m`, byte for byte once encoded (NaN constants make
/// `==` on the messages unusable).
fn assert_round_trip(m: &ModelProto, name: &str) {
    let back = Graph::new(m.clone()).unwrap().into_model();
    assert!(back.encode_to_vec() == m.encode_to_vec(), "{name}: round trip changed the model");
}

fn fully_known(s: &Option<Vec<Option<i64>>>) -> Option<Vec<i64>> {
    s.as_ref()?.iter().copied().collect()
}

#[test]
fn minilm_keeps_symbolic_batch_and_sequence() {
    let m = model("paraphrase-MiniLM-L3-v2.onnx");
    let types = infer_shapes(&m).unwrap();
    let out = &types["461"];
    assert_eq!(out.dtype, Some(DType::F32), "{out}");
    let s = out.shape.as_ref().unwrap();
    assert_eq!(s.len(), 2, "{out}");
    assert_eq!(s[1], SymDim::Known(384), "{out}");
    assert!(matches!(&s[0], SymDim::Sym(n) if n.contains("batch")), "{out}");

    let tokens = &types["onnx::Shape_422"];
    let t = tokens.shape.as_ref().unwrap();
    assert!(t.len() == 3 && t[2] == SymDim::Known(384), "{tokens}");
    assert_eq!(t[0], s[0], "{tokens} vs {out}");

    // Every MatMul: known rank, last dim known, leading dims the input's symbols.
    let g = m.graph.as_ref().unwrap();
    let mut n_matmul = 0;
    for n in g.node.iter().filter(|n| n.op_type == "MatMul") {
        let ty = &types[&n.output[0]];
        let s = ty.shape.as_ref().unwrap_or_else(|| panic!("{}: {ty}", n.name));
        let last = s.last().and_then(SymDim::known);
        assert!(
            matches!(last, Some(384 | 1536 | 32)) || s.len() == 4,
            "MatMul {} gives {ty}",
            n.name
        );
        assert!(s.iter().all(|d| !d.is_anonymous()), "MatMul {} gives {ty}", n.name);
        n_matmul += 1;
    }
    assert!(n_matmul >= 18, "{n_matmul} MatMuls");
    // Attention reshapes resolve to [batch, seq, 12, 32].
    let heads = g
        .node
        .iter()
        .filter(|n| n.op_type == "Reshape")
        .filter_map(|n| types[&n.output[0]].shape.clone())
        .filter(|s| s.len() == 4 && s[2..] == [SymDim::Known(12), SymDim::Known(32)])
        .count();
    assert!(heads >= 9, "{heads} attention reshapes resolved");
}

#[test]
fn mnist_models_get_fully_known_shapes() {
    // Fixed batch: every value's shape is fully known.
    for (name, logits) in [("mnist-8_cntk.onnx", "Plus214_Output_0"), ("burn_mnist_bn.onnx", "")] {
        let m = model(name);
        let types = infer_shapes(&m).unwrap();
        let g = m.graph.as_ref().unwrap();
        for n in &g.node {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                let ty = &types[o];
                assert!(
                    ty.dtype.is_some() && ty.known_shape().is_some(),
                    "{name}: {} ({}) output {o}: {ty}",
                    n.name,
                    n.op_type
                );
            }
        }
        let out = if logits.is_empty() { g.output[0].name.as_str() } else { logits };
        assert_eq!(types[out], ValueType::known(DType::F32, &[1, 10]), "{name}");
    }
    // Symbolic batch: every other dim known, the batch name carried to the logits.
    for name in ["mnist_resnet.onnx", "mnist_mobilenetv2.onnx"] {
        let m = model(name);
        let types = infer_shapes(&m).unwrap();
        let g = m.graph.as_ref().unwrap();
        let batch = types[&g.input[0].name].shape.as_ref().unwrap()[0].clone();
        assert!(matches!(batch, SymDim::Sym(_)), "{name}: {batch}");
        for n in &g.node {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                let ty = &types[o];
                let s = ty.shape.as_ref().unwrap_or_else(|| panic!("{name}: {o}: {ty}"));
                assert!(ty.dtype.is_some(), "{name}: {o}: {ty}");
                assert!(s.iter().skip(1).all(|d| d.known().is_some()), "{name}: {o}: {ty}");
            }
        }
        let out = &types[&g.output[0].name];
        assert_eq!(out.shape.as_deref().unwrap(), &[batch, SymDim::Known(10)], "{name}");
    }
}

#[test]
fn corpus_models_agree_with_declared_outputs_and_round_trip() {
    for path in corpus_models() {
        let m = load_model(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_round_trip(&m, &name);
        let mut sorted = Graph::new(m.clone()).unwrap();
        sorted.topo_sort().unwrap();
        let types = infer_shapes(&m).unwrap_or_else(|e| panic!("{name}: {e}"));
        let g = m.graph.as_ref().unwrap();
        for o in &g.output {
            let (dtype, shape) = declared(o);
            let ty = &types[&o.name];
            assert_eq!(ty.dtype, dtype, "{name}: output {} inferred {ty}", o.name);
            if let (Some(want), Some(got)) = (fully_known(&shape), ty.known_shape()) {
                assert_eq!(got, want, "{name}: output {}", o.name);
            }
            if let Some(s) = &shape {
                assert_eq!(ty.rank(), Some(s.len()), "{name}: output {} inferred {ty}", o.name);
            }
        }
        let unknown = g
            .node
            .iter()
            .flat_map(|n| n.output.iter())
            .filter(|o| !o.is_empty() && types[*o].shape.is_none())
            .count();
        let anonymous: Vec<String> = g
            .node
            .iter()
            .flat_map(|n| n.output.iter())
            .filter(|o| !o.is_empty())
            .filter(|o| {
                types[*o].shape.as_ref().is_some_and(|s| s.iter().any(SymDim::is_anonymous))
            })
            .map(|o| format!("{o}: {}", types[o]))
            .collect();
        println!("{name}: {} nodes, {unknown} outputs of unknown shape", g.node.len());
        assert_eq!(unknown, 0, "{name}");
        assert!(anonymous.is_empty(), "{name}: dims inference could not name: {anonymous:#?}");

        // Annotating writes a type for every node output and keeps the model valid.
        let mut annotated = m.clone();
        let n = annotate_value_info(&mut annotated).unwrap();
        assert!(n > 0, "{name}");
        assert_eq!(infer_shapes(&annotated).unwrap().len(), types.len(), "{name}");
    }
}

/// Every node test whose ops inference covers: inferred graph-output dtypes must equal the
/// declared ones, and shapes too where both are fully known.
#[test]
fn node_tests_agree_with_declared_outputs() {
    let dir = shared().join("onnx-node-tests/node");
    let mut cases: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    cases.sort();
    let (mut covered, mut skipped) = (0, 0);
    let (mut dtype_ok, mut shape_ok, mut shape_unknown) = (0, 0, 0);
    let mut disagreements: Vec<String> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for case in &cases {
        let Ok(m) = load_model(case.join("model.onnx")) else { continue };
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        assert_round_trip(&m, &name);
        let g = m.graph.as_ref().unwrap();
        if let Some(n) = g.node.iter().find(|n| !is_supported_op(&n.domain, &n.op_type)) {
            if std::env::var_os("LOWBIT_VERBOSE").is_some() {
                println!("  unsupported: {name}: {} {}", n.domain, n.op_type);
            }
            skipped += 1;
            continue;
        }
        covered += 1;
        let types = match infer_shapes(&m) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{name}: {e}"));
                continue;
            }
        };
        for o in &g.output {
            let (dtype, shape) = declared(o);
            let ty = types.get(&o.name).cloned().unwrap_or_default();
            if dtype.is_some() && ty.dtype != dtype {
                disagreements
                    .push(format!("{name}: output {} dtype {ty}, declared {dtype:?}", o.name));
                continue;
            }
            dtype_ok += 1;
            match (fully_known(&shape), ty.known_shape()) {
                (Some(want), Some(got)) if want == got => shape_ok += 1,
                (Some(want), Some(got)) => disagreements
                    .push(format!("{name}: output {} shape {got:?}, declared {want:?}", o.name)),
                (Some(want), None) => {
                    shape_unknown += 1;
                    if std::env::var_os("LOWBIT_VERBOSE").is_some() {
                        println!(
                            "  not inferred: {name}: output {} {ty}, declared {want:?}",
                            o.name
                        );
                    }
                }
                _ => shape_unknown += 1,
            }
        }
    }
    println!(
        "node tests: {} cases, {covered} covered, {skipped} with unsupported ops; outputs: {dtype_ok} \
         dtype agree, {shape_ok} shape agree, {shape_unknown} shape not fully known on one side, \
         {} disagree, {} inference errors",
        cases.len(),
        disagreements.len(),
        errors.len()
    );
    for d in disagreements.iter().chain(&errors) {
        println!("  {d}");
    }
    assert!(covered > 900, "{covered} covered");
    assert!(disagreements.is_empty() && errors.is_empty(), "{disagreements:#?}\n{errors:#?}");
}

/// Lists inferred types of a model (debug aid: `LOWBIT_DUMP=model.onnx cargo test dump`).
#[test]
fn dump_types_when_asked() {
    let Some(path) = std::env::var_os("LOWBIT_DUMP") else { return };
    let m = load_model(shared().join("corpus/dev/models").join(path)).unwrap();
    let types: HashMap<String, ValueType> = infer_shapes(&m).unwrap();
    for n in &m.graph.as_ref().unwrap().node {
        let outs: Vec<String> = n
            .output
            .iter()
            .map(|o| format!("{o}: {}", types.get(o).cloned().unwrap_or_default()))
            .collect();
        println!("{} {} -> {}", n.op_type, n.name, outs.join(", "));
    }
}
