//! ONNX's own backend node tests, run against every op the registry claims.
//!
//! A case is in scope when every op of its graph (subgraphs included) is registered. In-scope
//! cases that ONNX Runtime itself passes (or could not run only because its Python API lacks
//! the dtype) must pass here; the rest are reported, not required. The test fails if any
//! claimed op has a failing required case, and prints pass counts per op family and per op
//! (passed / in scope / cases whose graph uses the op).
//!
//! `LOWBIT_NODE_FILTER=test_conv` runs only the cases whose name contains the string.

use lowbit_engine::{Registry, Session, SessionOptions};
use lowbit_onnx::pb::{GraphProto, ModelProto, TensorProto};
use lowbit_onnx::tensor_proto::tensor_from_proto;
use lowbit_tensor::{DType, Tensor};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn shared_dir() -> PathBuf {
    std::env::var_os("LOWBIT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

fn elem_type(v: &lowbit_onnx::pb::ValueInfoProto) -> Option<i32> {
    match v.r#type.as_ref()?.value.as_ref()? {
        lowbit_onnx::pb::type_proto::Value::TensorType(t) => Some(t.elem_type),
        _ => None,
    }
}

/// ONNX element-type numbers a graph mentions: its I/O, initializers and dtype attributes.
fn collect_types(g: &GraphProto, out: &mut BTreeSet<i32>) {
    out.extend(g.input.iter().chain(&g.output).filter_map(elem_type));
    out.extend(g.initializer.iter().map(|t| t.data_type));
    for n in &g.node {
        for a in &n.attribute {
            if matches!(a.name.as_str(), "to" | "output_dtype" | "dtype") && a.i != 0 {
                out.insert(a.i as i32);
            }
            if let Some(sg) = &a.g {
                collect_types(sg, out);
            }
        }
    }
}

fn collect_ops(g: &GraphProto, out: &mut BTreeSet<(String, String)>) {
    for n in &g.node {
        out.insert((n.domain.clone(), n.op_type.clone()));
        for a in &n.attribute {
            if let Some(sg) = &a.g {
                collect_ops(sg, out);
            }
            for sg in &a.graphs {
                collect_ops(sg, out);
            }
        }
    }
}

/// Whether `actual` matches `expected` as ONNX's backend test compares (rtol 1e-3, with an
/// absolute floor for float results near zero; exact for integers and bools).
fn compare(expected: &Tensor, actual: &Tensor) -> Result<(), String> {
    if expected.dtype() != actual.dtype() {
        return Err(format!("dtype {} != expected {}", actual.dtype(), expected.dtype()));
    }
    if expected.shape() != actual.shape() {
        return Err(format!("shape {:?} != expected {:?}", actual.shape(), expected.shape()));
    }
    if expected.dtype() == DType::String {
        return if expected == actual { Ok(()) } else { Err("strings differ".into()) };
    }
    let e = expected.to_f64_vec().map_err(|e| e.to_string())?;
    let a = actual.to_f64_vec().map_err(|e| e.to_string())?;
    let (rtol, atol) = match expected.dtype() {
        DType::F32 | DType::F64 => (1e-3, 1e-5),
        DType::F16 | DType::BF16 | DType::F8E4M3FN | DType::F8E5M2 => (1e-2, 1e-3),
        _ => (0.0, 0.0),
    };
    let mut worst = (0.0f64, 0usize);
    for (i, (&x, &y)) in e.iter().zip(&a).enumerate() {
        let ok = (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= atol + rtol * x.abs();
        if !ok {
            let d = if (x - y).is_nan() { f64::INFINITY } else { (x - y).abs() };
            if d >= worst.0 {
                worst = (d, i);
            }
        }
    }
    if worst.0 > 0.0 {
        return Err(format!(
            "max abs diff {:.3e} at flat index {} (expected {}, got {})",
            worst.0, worst.1, e[worst.1], a[worst.1]
        ));
    }
    Ok(())
}

fn read_tensor(path: &Path) -> Result<Tensor, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let tp = TensorProto::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
    tensor_from_proto(&tp).map_err(|e| e.to_string())
}

enum Outcome {
    Pass,
    Fail(String),
    /// Test data this harness cannot read (sequences, optionals).
    Unreadable(String),
}

fn run_case(dir: &Path, model: &ModelProto) -> Outcome {
    let session = match Session::new(model, &SessionOptions::with_threads(1)) {
        Ok(s) => s,
        Err(e) => return Outcome::Fail(format!("load: {e}")),
    };
    let graph = model.graph.as_ref().expect("graph");
    let init: BTreeSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let input_names: Vec<&str> =
        graph.input.iter().map(|i| i.name.as_str()).filter(|n| !init.contains(n)).collect();
    let output_names: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("case dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir() && p.file_name().unwrap().to_string_lossy().starts_with("test_data_set")
        })
        .collect();
    sets.sort();
    for set in sets {
        let mut feeds = Vec::new();
        for (i, name) in input_names.iter().enumerate() {
            let p = set.join(format!("input_{i}.pb"));
            if !p.exists() {
                continue; // optional input left out by the test
            }
            match read_tensor(&p) {
                Ok(t) => feeds.push((name.to_string(), t)),
                Err(e) => return Outcome::Unreadable(format!("{}: {e}", p.display())),
            }
        }
        let mut expected = Vec::new();
        for i in 0..output_names.len() {
            match read_tensor(&set.join(format!("output_{i}.pb"))) {
                Ok(t) => expected.push(t),
                Err(e) => return Outcome::Unreadable(format!("output_{i}: {e}")),
            }
        }
        let outs = match session.run(feeds) {
            Ok(o) => o,
            Err(e) => return Outcome::Fail(format!("run: {e}")),
        };
        for ((name, got), want) in outs.iter().zip(&expected) {
            if let Err(e) = compare(want, got) {
                return Outcome::Fail(format!("output '{name}': {e}"));
            }
        }
    }
    Outcome::Pass
}

#[test]
fn onnx_node_tests_pass_for_every_claimed_op() {
    let root = shared_dir().join("onnx-node-tests");
    let index = std::fs::read_to_string(root.join("index.tsv")).unwrap_or_else(|e| {
        panic!("{}: {e} (set LOWBIT_SHARED to the shared folder)", root.display())
    });
    let ort_status: BTreeMap<String, String> = index
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Some((f.first()?.to_string(), f.get(6)?.to_string()))
        })
        .collect();
    let filter = std::env::var("LOWBIT_NODE_FILTER").unwrap_or_default();
    let reg = Registry::with_all_ops();

    // family -> (passed, failed) over required cases
    let mut per_family: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    // op -> (passed, in scope, cases)
    let mut per_op: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut informational = Vec::new();
    let (mut in_scope, mut passed, mut unreadable, mut out_of_scope) = (0, 0, 0, 0);
    let mut cases: Vec<PathBuf> = std::fs::read_dir(root.join("node"))
        .expect("node dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(filter.as_str()))
        .collect();
    cases.sort();
    for dir in cases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let Ok(model) = lowbit_onnx::load_model(dir.join("model.onnx")) else {
            failures.push(format!("{name}: model does not load"));
            continue;
        };
        let mut ops = BTreeSet::new();
        collect_ops(model.graph.as_ref().expect("graph"), &mut ops);
        let mut types = BTreeSet::new();
        collect_types(model.graph.as_ref().expect("graph"), &mut types);
        // Element types lowbit does not represent (FNUZ float8, int2, float4, complex, …)
        // put a case out of scope like an unclaimed op does.
        let foreign_types = types.iter().any(|&t| t != 0 && DType::from_onnx(t).is_none());
        // "Attention", "com.microsoft.Attention": one name per (domain, op).
        let names: Vec<String> = ops
            .iter()
            .map(|(d, o)| if d.is_empty() { o.clone() } else { format!("{d}.{o}") })
            .collect();
        for o in &names {
            per_op.entry(o.clone()).or_default().2 += 1;
        }
        if !ops.iter().all(|(d, o)| reg.supports(d, o)) || foreign_types {
            out_of_scope += 1;
            continue;
        }
        for o in &names {
            per_op.entry(o.clone()).or_default().1 += 1;
        }
        let families: BTreeSet<&str> =
            ops.iter().filter_map(|(d, o)| reg.family_of(d, o)).collect();
        let status = ort_status.get(&name).map(String::as_str).unwrap_or("");
        let required = status == "pass" || status.starts_with("skip (ml_dtypes");
        in_scope += 1;
        let outcome = run_case(&dir, &model);
        let op_list = ops.iter().map(|(_, o)| o.as_str()).collect::<Vec<_>>().join(",");
        match outcome {
            Outcome::Pass => {
                passed += 1;
                for o in &names {
                    per_op.entry(o.clone()).or_default().0 += 1;
                }
                for f in &families {
                    per_family.entry(f).or_default().0 += 1;
                }
            }
            Outcome::Unreadable(msg) => {
                unreadable += 1;
                informational.push(format!("{name} [{op_list}]: unreadable test data: {msg}"));
            }
            Outcome::Fail(msg) if required => {
                for f in &families {
                    per_family.entry(f).or_default().1 += 1;
                }
                failures.push(format!("{name} [{op_list}]: {msg}"));
            }
            Outcome::Fail(msg) => {
                informational.push(format!("{name} [{op_list}] (ONNX Runtime: {status}): {msg}"))
            }
        }
    }
    eprintln!("ONNX node tests: {passed} passed of {in_scope} in scope ({unreadable} with unreadable data, {out_of_scope} use ops or element types lowbit does not claim)");
    for (f, (p, x)) in &per_family {
        eprintln!("  {f:12} {p:4} passed {x:4} failed");
    }
    let claimed: Vec<String> = per_op
        .iter()
        .filter(|(_, c)| c.1 > 0)
        .map(|(o, (p, s, n))| format!("{o} {p}/{s}/{n}"))
        .collect();
    eprintln!("  per op (passed/in scope/cases): {}", claimed.join(", "));
    for i in &informational {
        eprintln!("  not required: {i}");
    }
    for f in &failures {
        eprintln!("  FAILED: {f}");
    }
    assert!(
        failures.is_empty(),
        "{} required node-test cases failed (listed above)",
        failures.len()
    );
}

/// The integer ops' node tests again, with every input but the first (the activation) turned
/// into an initializer, as in a real model: that is what sends `QLinearConv`, `QLinearMatMul`,
/// `ConvInteger` and `MatMulInteger` to the packed int8 kernels (weights packed at load), so
/// ONNX's expected outputs check the fast paths too, not only the reference loops.
#[test]
fn integer_op_node_tests_pass_with_constant_weights() {
    let root = shared_dir().join("onnx-node-tests").join("node");
    let prefixes =
        ["test_qlinearconv", "test_qlinearmatmul", "test_convinteger", "test_matmulinteger"];
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            prefixes.iter().any(|pre| n.starts_with(pre))
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "expected the integer op cases, found {}", cases.len());
    let mut checked = 0;
    for dir in cases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let model = lowbit_onnx::load_model(dir.join("model.onnx")).expect("model loads");
        let graph = model.graph.as_ref().expect("graph");
        let inputs: Vec<String> = graph.input.iter().map(|i| i.name.clone()).collect();
        let set = dir.join("test_data_set_0");
        let mut constant = model.clone();
        let g = constant.graph.as_mut().expect("graph");
        for (i, input) in inputs.iter().enumerate().skip(1) {
            let p = set.join(format!("input_{i}.pb"));
            let bytes = std::fs::read(&p).expect("input data");
            let mut tp = TensorProto::decode(bytes.as_slice()).expect("tensor");
            tp.name = input.clone();
            g.initializer.push(tp);
        }
        g.input.truncate(1);
        let session = Session::new(&constant, &SessionOptions::with_threads(1)).expect("plans");
        let x = read_tensor(&set.join("input_0.pb")).expect("input 0");
        let outs = session.run(vec![(inputs[0].clone(), x)]).expect("runs");
        let want = read_tensor(&set.join("output_0.pb")).expect("output");
        if let Err(e) = compare(&want, &outs[0].1) {
            panic!("{name} with constant weights: {e}");
        }
        checked += 1;
    }
    eprintln!("integer op node tests with constant weights: {checked} passed");
}
