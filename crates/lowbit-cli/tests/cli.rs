//! End-to-end tests of the `lowbit` binary: every command on the built-in example model, and
//! every kind of bad input (corrupt, truncated or non-ONNX files, wrong input names, dtypes and
//! shapes, unsupported ops, usage errors) giving one clear message, a non-zero exit and no panic.

use lowbit_onnx::pb;
use lowbit_tensor::{npy, Tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn lowbit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lowbit"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the lowbit binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh, empty folder for one test.
fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lowbit-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts a failed run: exit `code`, one `error:` message containing every `needle`, no panic.
fn assert_fails(o: &Output, code: i32, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}\nstdout: {}", stdout(o));
    assert!(!err.contains("panicked"), "{err}");
    if code == 1 {
        assert!(err.starts_with("error: "), "{err}");
    }
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in: {err}");
    }
}

/// Writes the example model into a fresh folder and returns the folder.
fn example(name: &str) -> PathBuf {
    let dir = tmp(name);
    let o = lowbit(&["example-model", s(&dir), "--samples", "40"]);
    assert!(o.status.success(), "{}", stderr(&o));
    dir
}

fn value_info(name: &str, elem_type: i32, dims: &[i64]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            denotation: String::new(),
                            value: Some(if d < 0 {
                                Value::DimParam("N".into())
                            } else {
                                Value::DimValue(d)
                            }),
                        })
                        .collect(),
                }),
            })),
        }),
        ..Default::default()
    }
}

/// A one-node float model `op(x) -> out_name`, x of `dims` (-1: a free dim named N).
fn one_node_model(dir: &Path, op: &str, domain: &str, dims: &[i64], out_name: &str) -> PathBuf {
    let mut opset_import = vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }];
    if !domain.is_empty() {
        opset_import.push(pb::OperatorSetIdProto { domain: domain.into(), version: 1 });
    }
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import,
        producer_name: "lowbit-cli tests".into(),
        graph: Some(pb::GraphProto {
            name: "one_node".into(),
            node: vec![pb::NodeProto {
                name: "the_node".into(),
                op_type: op.into(),
                domain: domain.into(),
                input: vec!["x".into()],
                output: vec![out_name.into()],
                ..Default::default()
            }],
            input: vec![value_info("x", 1, dims)],
            output: vec![value_info(out_name, 1, dims)],
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = dir.join(format!("{op}.onnx"));
    lowbit_onnx::save_model(&model, &path).unwrap();
    path
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.as_f32()
        .unwrap()
        .iter()
        .zip(b.as_f32().unwrap())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

// ---------------------------------------------------------------------------------------------
// Commands on good input

#[test]
fn version_names_the_package_version() {
    let o = lowbit(&["--version"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o).trim(), format!("lowbit {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn example_model_runs_and_matches_its_reference_outputs() {
    let dir = example("run-example");
    let out = dir.join("out");
    let o = lowbit(&[
        "run",
        s(&dir.join("model.onnx")),
        "--data",
        s(&dir.join("data")),
        "-o",
        s(&out),
        "--batch",
        "16",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("ran 40 samples in 3 runs"), "{}", stdout(&o));
    let got = npy::read_npy(&out.join("probs.npy")).unwrap();
    let want = npy::read_npy(&dir.join("expected/probs.npy")).unwrap();
    assert_eq!(got.shape(), &[40, 10]);
    assert!(max_abs_diff(&got, &want) < 1e-5, "max diff {}", max_abs_diff(&got, &want));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("outputs.json")).unwrap()).unwrap();
    assert_eq!(manifest["outputs"][0]["name"], "probs");
    assert_eq!(manifest["outputs"][0]["file"], "probs.npy");
}

#[test]
fn run_takes_named_input_files_and_a_sample_limit() {
    let dir = example("run-input");
    let out = dir.join("out");
    let x = format!("x={}", s(&dir.join("data/x.npy")));
    let o = lowbit(&["run", s(&dir.join("model.onnx")), "-i", &x, "-o", s(&out), "--limit", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(npy::read_npy(&out.join("probs.npy")).unwrap().shape(), &[5, 10]);
}

#[test]
fn run_reads_inputs_from_an_npz() {
    let dir = example("run-npz");
    let x = npy::read_npy(&dir.join("data/x.npy")).unwrap();
    let npz = dir.join("inputs.npz");
    npy::write_npz(&npz, &[("x".to_string(), x)]).unwrap();
    let out = dir.join("out");
    let o = lowbit(&["run", s(&dir.join("model.onnx")), "--data", s(&npz), "-o", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(npy::read_npy(&out.join("probs.npy")).unwrap().shape(), &[40, 10]);
}

#[test]
fn fixed_batch_models_are_fed_row_by_row_and_output_names_are_sanitized() {
    let dir = tmp("fixed-batch");
    let model = one_node_model(&dir, "Relu", "", &[1, 3], "onnx::Relu/out:0");
    let x = Tensor::from_vec(vec![4, 3], (0..12).map(|i| i as f32 - 6.0).collect()).unwrap();
    npy::write_npy(&dir.join("x.npy"), &x).unwrap();
    let out = dir.join("out");
    let o = lowbit(&["run", s(&model), "--data", s(&dir), "-o", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("in 4 runs (batch 1"), "{}", stdout(&o));
    let y = npy::read_npy(&out.join("onnx__Relu_out_0.npy")).unwrap();
    let want: Vec<f32> = (0..12).map(|i| (i as f32 - 6.0).max(0.0)).collect();
    assert_eq!(y, Tensor::from_vec(vec![4, 3], want).unwrap());
}

#[test]
fn inspect_lists_io_ops_and_parameters() {
    let dir = example("inspect");
    let model = dir.join("model.onnx");
    let o = lowbit(&["inspect", s(&model)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for needle in
        ["producer     lowbit", "ai.onnx 17", "x  float32 [batch, 16]", "MatMul", "Softmax"]
    {
        assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
    }
    let o = lowbit(&["inspect", s(&model), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["nodes"], 6);
    assert_eq!(j["parameters"], 16 * 32 + 32 + 32 * 10 + 10);
    assert_eq!(j["parameter_bytes"], 4 * (16 * 32 + 32 + 32 * 10 + 10));
    assert_eq!(j["inputs"][0]["shape"], serde_json::json!(["batch", 16]));
    assert_eq!(j["ops"][0]["op_type"], "Add");
    assert_eq!(j["ops"][0]["count"], 2);
}

#[test]
fn inspect_names_unsupported_ops() {
    let dir = tmp("inspect-unsupported");
    let model = one_node_model(&dir, "FrobnicateV9", "com.example", &[-1, 4], "y");
    let o = lowbit(&["inspect", s(&model), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["unsupported_ops"], serde_json::json!(["com.example.FrobnicateV9"]));
    assert_eq!(j["inputs"][0]["shape"], serde_json::json!(["N", 4]));
}

#[test]
fn bench_json_reports_latency_from_synthetic_inputs() {
    let dir = example("bench");
    let o = lowbit(&[
        "bench",
        s(&dir.join("model.onnx")),
        "--runs",
        "5",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(j["median_ms"].as_f64().unwrap() > 0.0, "{j}");
    assert!(j["p90_ms"].as_f64().unwrap() >= j["median_ms"].as_f64().unwrap(), "{j}");
    assert_eq!(j["runs"], 5);
    assert_eq!(j["threads"], 1);
    assert_eq!(j["batch"], 1);
}

#[test]
fn bench_with_data_runs_once_per_sample() {
    let dir = example("bench-data");
    let o = lowbit(&[
        "bench",
        s(&dir.join("model.onnx")),
        "--data",
        s(&dir.join("data")),
        "--limit",
        "7",
        "--warmup",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("runs         7 (+0 warm-up)"), "{}", stdout(&o));
}

/// Everything lowbit writes must load in ONNX Runtime: the example model, checked against the
/// reference outputs, through the venv `scripts/setup-test-env.sh` makes.
#[test]
fn example_model_runs_in_onnx_runtime() {
    let Some(python) = std::env::var_os("LOWBIT_PYTHON") else {
        eprintln!("skipped: LOWBIT_PYTHON is not set (source scripts/setup-test-env.sh)");
        return;
    };
    let dir = example("ort");
    let script = r#"
import sys, numpy as np, onnxruntime as ort
d = sys.argv[1]
s = ort.InferenceSession(d + "/model.onnx", providers=["CPUExecutionProvider"])
y = s.run(None, {"x": np.load(d + "/data/x.npy")})[0]
want = np.load(d + "/expected/probs.npy")
err = float(np.abs(y - want).max())
assert err < 1e-5, err
print("ok", err)
"#;
    let o = Command::new(python).args(["-c", script, s(&dir)]).output().unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
}

// ---------------------------------------------------------------------------------------------
// Bad input: one clear message, non-zero exit, no panic

#[test]
fn missing_model_file_is_named() {
    let dir = tmp("missing-model");
    let path = dir.join("nope.onnx");
    assert_fails(&lowbit(&["inspect", s(&path)]), 1, &["nope.onnx"]);
}

#[test]
fn corrupt_file_is_a_clear_error() {
    let dir = tmp("corrupt");
    let path = dir.join("garbage.onnx");
    let bytes: Vec<u8> =
        (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&path, bytes).unwrap();
    for cmd in ["inspect", "bench"] {
        assert_fails(&lowbit(&[cmd, s(&path)]), 1, &["garbage.onnx", "cannot load the model"]);
    }
}

#[test]
fn truncated_model_is_a_clear_error() {
    let dir = example("truncated");
    let bytes = std::fs::read(dir.join("model.onnx")).unwrap();
    let path = dir.join("cut.onnx");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let out = dir.join("out");
    let o = lowbit(&["run", s(&path), "--data", s(&dir.join("data")), "-o", s(&out)]);
    assert_fails(&o, 1, &["cut.onnx"]);
    assert!(!out.exists(), "no output folder after a failed load");
}

#[test]
fn non_onnx_file_is_a_clear_error() {
    let dir = example("not-onnx");
    let text = dir.join("notes.txt");
    std::fs::write(&text, "this is not a model\n").unwrap();
    assert_fails(&lowbit(&["inspect", s(&text)]), 1, &["notes.txt"]);
    // A .npy file (valid data, wrong kind of file).
    let npy_file = dir.join("data/x.npy");
    assert_fails(&lowbit(&["inspect", s(&npy_file)]), 1, &["x.npy"]);
}

#[test]
fn unknown_input_name_lists_the_models_inputs() {
    let dir = example("unknown-input");
    let arg = format!("pixels={}", s(&dir.join("data/x.npy")));
    let o = lowbit(&["run", s(&dir.join("model.onnx")), "-i", &arg, "-o", s(&dir.join("o"))]);
    assert_fails(&o, 1, &["unknown input 'pixels'", "inputs are x"]);
}

#[test]
fn missing_input_file_names_the_input_and_folder() {
    let dir = example("missing-input");
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o =
        lowbit(&["run", s(&dir.join("model.onnx")), "--data", s(&empty), "-o", s(&dir.join("o"))]);
    assert_fails(&o, 1, &["missing input 'x'", "float32 [batch, 16]", "empty"]);
}

#[test]
fn wrong_dtype_names_input_file_and_types() {
    let dir = example("wrong-dtype");
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    npy::write_npy(&bad.join("x.npy"), &Tensor::from_vec(vec![2, 16], vec![0f64; 32]).unwrap())
        .unwrap();
    let o =
        lowbit(&["run", s(&dir.join("model.onnx")), "--data", s(&bad), "-o", s(&dir.join("o"))]);
    assert_fails(&o, 1, &["input 'x'", "x.npy", "float32", "float64"]);
}

#[test]
fn wrong_shape_names_input_file_and_shapes() {
    let dir = example("wrong-shape");
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    npy::write_npy(&bad.join("x.npy"), &Tensor::from_vec(vec![2, 7], vec![0f32; 14]).unwrap())
        .unwrap();
    let o = lowbit(&["bench", s(&dir.join("model.onnx")), "--data", s(&bad)]);
    assert_fails(&o, 1, &["input 'x'", "x.npy", "[batch, 16]", "[2, 7]"]);
}

#[test]
fn unsupported_op_names_node_and_op() {
    let dir = tmp("unsupported");
    let model = one_node_model(&dir, "FrobnicateV9", "com.example", &[-1, 4], "y");
    npy::write_npy(&dir.join("x.npy"), &Tensor::from_vec(vec![2, 4], vec![0f32; 8]).unwrap())
        .unwrap();
    let o = lowbit(&["run", s(&model), "--data", s(&dir), "-o", s(&dir.join("o"))]);
    assert_fails(&o, 1, &["FrobnicateV9.onnx", "the_node", "FrobnicateV9", "not supported"]);
    assert_fails(&lowbit(&["bench", s(&model)]), 1, &["FrobnicateV9", "not supported"]);
}

#[test]
fn usage_errors_exit_2() {
    let dir = example("usage");
    let model = dir.join("model.onnx");
    let data = dir.join("data");
    // No output folder.
    assert_fails(&lowbit(&["run", s(&model), "--data", s(&data)]), 2, &["--output"]);
    // Neither --input nor --data, and both.
    assert_fails(&lowbit(&["run", s(&model), "-o", "o"]), 2, &[]);
    let x = format!("x={}", s(&data.join("x.npy")));
    assert_fails(&lowbit(&["run", s(&model), "-i", &x, "--data", s(&data), "-o", "o"]), 2, &[]);
    // --input without NAME=.
    assert_fails(&lowbit(&["run", s(&model), "-i", "x.npy", "-o", "o"]), 2, &["NAME=FILE.npy"]);
    // Zero batch, unknown command.
    assert_fails(
        &lowbit(&["run", s(&model), "--data", s(&data), "-o", "o", "--batch", "0"]),
        2,
        &[],
    );
    assert_fails(&lowbit(&["frobnicate"]), 2, &[]);
}

#[test]
fn broken_pipe_is_a_clean_exit() {
    let dir = example("pipe");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lowbit"))
        .args(["inspect", s(&dir.join("model.onnx")), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before lowbit writes
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{:?} {}", o.status, stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

// ---------------------------------------------------------------------------------------------
// calibrate and quantize

/// The example model with its default 64 samples.
fn example64(name: &str) -> PathBuf {
    let dir = tmp(name);
    let o = lowbit(&["example-model", s(&dir)]);
    assert!(o.status.success(), "{}", stderr(&o));
    dir
}

/// Row-wise argmax of a `[N, C]` float tensor.
fn argmax_rows(t: &Tensor) -> Vec<usize> {
    let c = *t.shape().last().unwrap();
    let v = t.to_f64_vec().unwrap();
    v.chunks(c)
        .map(|r| r.iter().enumerate().fold(0, |b, (i, x)| if *x > r[b] { i } else { b }))
        .collect()
}

/// `lowbit run MODEL --data DATA` into `out`; returns output file `name`.
fn run_model(model: &Path, data: &Path, out: &Path, name: &str) -> Tensor {
    let o = lowbit(&["run", s(model), "--data", s(data), "-o", s(out)]);
    assert!(o.status.success(), "run {}: {}", model.display(), stderr(&o));
    npy::read_npy(&out.join(name)).unwrap()
}

/// Fraction of rows whose argmax agrees.
fn agreement(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let (x, y) = (argmax_rows(a), argmax_rows(b));
    x.iter().zip(&y).filter(|(p, q)| p == q).count() as f64 / x.len() as f64
}

#[test]
fn calibrate_writes_a_table_that_quantize_ranges_accepts() {
    let dir = example64("calibrate-ranges");
    let model = dir.join("model.onnx");
    let ranges = dir.join("ranges.json");
    let o = lowbit(&["calibrate", s(&model), "--data", s(&dir.join("data")), "-o", s(&ranges)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("on 64 samples"), "{}", stdout(&o));
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ranges).unwrap()).unwrap();
    assert!(table["tensors"].as_object().is_some_and(|t| !t.is_empty()), "{table}");
    let q = dir.join("q.onnx");
    let o = lowbit(&["quantize", s(&model), "-o", s(&q), "--ranges", s(&ranges)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("MatMul"), "{}", stdout(&o));
    run_model(&q, &dir.join("data"), &dir.join("out"), "probs.npy");
}

#[test]
fn static_quantization_with_data_agrees_with_fp32() {
    let dir = example64("quantize-static");
    let model = dir.join("model.onnx");
    let q = dir.join("q.onnx");
    let o = lowbit(&[
        "quantize",
        s(&model),
        "-o",
        s(&q),
        "--mode",
        "static",
        "--data",
        s(&dir.join("data")),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("quantized:") && text.contains("initializers:"), "{text}");
    let fp32 = run_model(&model, &dir.join("data"), &dir.join("out32"), "probs.npy");
    let int8 = run_model(&q, &dir.join("data"), &dir.join("out8"), "probs.npy");
    assert_eq!(int8.shape(), &[64, 10]);
    let agree = agreement(&fp32, &int8);
    assert!(agree >= 0.95, "argmax agreement {agree}");
}

#[test]
fn dynamic_weight_only_and_fp16_models_run() {
    let dir = example64("quantize-modes");
    let model = dir.join("model.onnx");
    let fp32 = run_model(&model, &dir.join("data"), &dir.join("out32"), "probs.npy");
    for mode in ["dynamic", "weight-only", "fp16"] {
        let q = dir.join(format!("{mode}.onnx"));
        let o = lowbit(&["quantize", s(&model), "-o", s(&q), "--mode", mode]);
        assert!(o.status.success(), "{mode}: {}", stderr(&o));
        let got = run_model(&q, &dir.join("data"), &dir.join(format!("out-{mode}")), "probs.npy");
        let agree = agreement(&fp32, &got);
        assert!(agree >= 0.9, "{mode}: argmax agreement {agree}");
    }
}

#[test]
fn quantize_never_overwrites_its_input() {
    let dir = example64("quantize-input");
    let model = dir.join("model.onnx");
    let before = std::fs::read(&model).unwrap();
    let o = lowbit(&["quantize", s(&model), "-o", s(&model), "--mode", "dynamic", "--force"]);
    assert_fails(&o, 1, &["input model", "never overwrites"]);
    // The same file by another spelling.
    let other = dir.join("data/../model.onnx");
    let o = lowbit(&["quantize", s(&model), "-o", s(&other), "--mode", "dynamic", "--force"]);
    assert_fails(&o, 1, &["never overwrites"]);
    assert_eq!(std::fs::read(&model).unwrap(), before);
}

#[test]
fn quantize_replaces_an_existing_output_only_with_force() {
    let dir = example64("quantize-force");
    let model = dir.join("model.onnx");
    let q = dir.join("q.onnx");
    std::fs::write(&q, b"keep me").unwrap();
    let o = lowbit(&["quantize", s(&model), "-o", s(&q), "--mode", "dynamic"]);
    assert_fails(&o, 1, &["already exists", "--force"]);
    assert_eq!(std::fs::read(&q).unwrap(), b"keep me");
    let o = lowbit(&["quantize", s(&model), "-o", s(&q), "--mode", "dynamic", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(lowbit_onnx::load_model(&q).is_ok());
}

#[test]
fn static_quantization_without_data_says_what_it_needs() {
    let dir = example64("quantize-nodata");
    let q = dir.join("q.onnx");
    let o = lowbit(&["quantize", s(&dir.join("model.onnx")), "-o", s(&q)]);
    assert_ne!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("--data") && err.contains("--ranges"), "{err}");
    assert!(!q.exists());
}

#[test]
fn nan_in_calibration_data_names_the_input_and_row() {
    let dir = example64("calibrate-nan");
    let x = npy::read_npy(&dir.join("data/x.npy")).unwrap();
    let mut v = x.as_f32().unwrap().to_vec();
    v[7 * 16 + 3] = f32::NAN;
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    npy::write_npy(&bad.join("x.npy"), &Tensor::from_vec(x.shape().to_vec(), v).unwrap()).unwrap();
    let ranges = dir.join("ranges.json");
    let o = lowbit(&["calibrate", s(&dir.join("model.onnx")), "--data", s(&bad), "-o", s(&ranges)]);
    assert_fails(&o, 1, &["'x'", "row 7", "NaN"]);
    assert!(!ranges.exists());
    let q = dir.join("q.onnx");
    let o = lowbit(&["quantize", s(&dir.join("model.onnx")), "-o", s(&q), "--data", s(&bad)]);
    assert_fails(&o, 1, &["'x'", "row 7"]);
    assert!(!q.exists());
}

fn shared_dir() -> PathBuf {
    std::env::var_os("LOWBIT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

/// MNIST images `start..end` as float32 `[N, 1, 28, 28]` in `dir/Input3.npy`.
fn mnist_data(images: &Tensor, start: usize, end: usize, dir: &Path) {
    let per: usize = images.shape()[1..].iter().product();
    assert_eq!(per, 784);
    let v = images.to_f64_vec().unwrap();
    let rows: Vec<f32> = v[start * per..end * per].iter().map(|&x| x as f32).collect();
    std::fs::create_dir_all(dir).unwrap();
    let t = Tensor::from_vec(vec![end - start, 1, 28, 28], rows).unwrap();
    npy::write_npy(&dir.join("Input3.npy"), &t).unwrap();
}

#[test]
fn mnist_static_int8_agrees_with_fp32() {
    let corpus = shared_dir().join("corpus/dev");
    let model = corpus.join("models/mnist-8_cntk.onnx");
    let images = corpus.join("data/mnist_test_0-4999/images.npy");
    if !model.is_file() || !images.is_file() {
        eprintln!("skipped: {} not found (set LOWBIT_SHARED)", model.display());
        return;
    }
    let dir = tmp("mnist-static");
    let images = npy::read_npy(&images).unwrap();
    mnist_data(&images, 0, 50, &dir.join("calib"));
    mnist_data(&images, 1000, 1200, &dir.join("eval"));
    let q = dir.join("mnist.int8.onnx");
    let o = lowbit(&["quantize", s(&model), "-o", s(&q), "--data", s(&dir.join("calib"))]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Conv"), "{}", stdout(&o));
    let out = "Plus214_Output_0.npy";
    let fp32 = run_model(&model, &dir.join("eval"), &dir.join("out32"), out);
    let int8 = run_model(&q, &dir.join("eval"), &dir.join("out8"), out);
    assert_eq!(int8.shape()[0], 200);
    let agree =
        agreement(&fp32.reshape(vec![200, 10]).unwrap(), &int8.reshape(vec![200, 10]).unwrap());
    assert!(agree >= 0.97, "argmax agreement {agree}");
}

// ---------------------------------------------------------------------------------------------
// Data layouts: per-sample .npz files of different lengths, --preprocess

/// A value info with named free dimensions (`None` dims are free, named from `names`).
fn named_value_info(name: &str, elem_type: i32, dims: &[Option<i64>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let mut v = value_info(name, elem_type, &[]);
    let Some(pb::type_proto::Value::TensorType(t)) =
        v.r#type.as_mut().and_then(|t| t.value.as_mut())
    else {
        unreachable!()
    };
    t.shape = Some(pb::TensorShapeProto {
        dim: dims
            .iter()
            .enumerate()
            .map(|(i, d)| Dimension {
                denotation: String::new(),
                value: Some(match d {
                    Some(n) => Value::DimValue(*n),
                    None => Value::DimParam(["batch", "seq"][i.min(1)].into()),
                }),
            })
            .collect(),
    });
    v
}

/// `input_ids` int64 `[batch, seq]` → `f` = float(input_ids) `[batch, seq]` and
/// `total` = sum of `f` over axis 1 `[batch]`.
fn sequence_model(dir: &Path) -> PathBuf {
    let node = |op: &str, inputs: &[&str], output: &str| pb::NodeProto {
        name: format!("{op}_node"),
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    };
    let mut cast = node("Cast", &["input_ids"], "f");
    cast.attribute = vec![pb::AttributeProto {
        name: "to".into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: 1,
        ..Default::default()
    }];
    let mut sum = node("ReduceSum", &["f", "axes"], "total");
    sum.attribute = vec![pb::AttributeProto {
        name: "keepdims".into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: 0,
        ..Default::default()
    }];
    let axes = pb::TensorProto {
        name: "axes".into(),
        dims: vec![1],
        data_type: 7,
        int64_data: vec![1],
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        producer_name: "lowbit-cli tests".into(),
        graph: Some(pb::GraphProto {
            name: "sequence".into(),
            node: vec![cast, sum],
            initializer: vec![axes],
            input: vec![named_value_info("input_ids", 7, &[None, None])],
            output: vec![
                named_value_info("total", 1, &[None]),
                named_value_info("f", 1, &[None, None]),
            ],
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = dir.join("sequence.onnx");
    lowbit_onnx::save_model(&model, &path).unwrap();
    path
}

fn ids(shape: Vec<usize>, v: &[i64]) -> Tensor {
    Tensor::from_vec(shape, v.to_vec()).unwrap()
}

/// Four per-sample files, sorted s0..s3: lengths 3, 3 (no batch axis), 5 (no batch axis), 2.
fn sentence_files(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let files = [
        ("s0.npz", ids(vec![1, 3], &[1, 2, 3])),
        ("s1.npz", ids(vec![3], &[4, 5, 6])),
        ("s2.npz", ids(vec![5], &[10, 20, 30, 40, 50])),
        ("s3.npz", ids(vec![1, 2], &[7, 8])),
    ];
    for (name, t) in files {
        npy::write_npz(&dir.join(name), &[("input_ids".to_string(), t)]).unwrap();
    }
    // Not data: ignored.
    std::fs::write(dir.join("README.txt"), "sentences\n").unwrap();
}

#[test]
fn per_sample_npz_files_of_different_lengths_run_as_they_are() {
    let dir = tmp("per-sample-run");
    let model = sequence_model(&dir);
    sentence_files(&dir.join("data"));
    let out = dir.join("out");
    let o = lowbit(&["run", s(&model), "--data", s(&dir.join("data")), "-o", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    // s0 and s1 share a length and are batched together; s2 and s3 run alone.
    assert!(stdout(&o).contains("ran 4 samples in 3 runs"), "{}", stdout(&o));
    let total = npy::read_npy(&out.join("total.npy")).unwrap();
    assert_eq!(total, Tensor::from_vec(vec![4], vec![6f32, 15.0, 150.0, 15.0]).unwrap());
    // Outputs of different lengths are zero-padded to the longest.
    let f = npy::read_npy(&out.join("f.npy")).unwrap();
    #[rustfmt::skip]
    let want = vec![
        1f32, 2., 3., 0., 0.,
        4., 5., 6., 0., 0.,
        10., 20., 30., 40., 50.,
        7., 8., 0., 0., 0.,
    ];
    assert_eq!(f, Tensor::from_vec(vec![4, 5], want).unwrap());
    // --batch 1: one run per file; --limit 3 stops after s2.
    let o = lowbit(&[
        "run",
        s(&model),
        "--data",
        s(&dir.join("data")),
        "-o",
        s(&out),
        "--batch",
        "1",
        "--limit",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("ran 3 samples in 3 runs"), "{}", stdout(&o));
    let total = npy::read_npy(&out.join("total.npy")).unwrap();
    assert_eq!(total, Tensor::from_vec(vec![3], vec![6f32, 15.0, 150.0]).unwrap());
    // bench feeds one sample per run.
    let o =
        lowbit(&["bench", s(&model), "--data", s(&dir.join("data")), "--warmup", "0", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!((j["runs"].as_u64(), j["batch"].as_u64()), (Some(4), Some(1)), "{j}");
}

#[test]
fn per_sample_npz_files_of_different_lengths_calibrate() {
    let dir = tmp("per-sample-calibrate");
    let model = sequence_model(&dir);
    sentence_files(&dir.join("data"));
    let ranges = dir.join("ranges.json");
    let o = lowbit(&["calibrate", s(&model), "--data", s(&dir.join("data")), "-o", s(&ranges)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("on 4 samples (3 runs)"), "{}", stdout(&o));
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ranges).unwrap()).unwrap();
    assert_eq!(table["batches"], 3, "{table}");
    let t = &table["tensors"];
    // f: every token of every file (3 + 3 + 5 + 2 values); total: one value per sample.
    assert_eq!((t["f"]["min"].as_f64(), t["f"]["max"].as_f64()), (Some(1.0), Some(50.0)), "{t}");
    assert_eq!(t["f"]["count"], 13, "{t}");
    let total = &t["total"];
    assert_eq!((total["min"].as_f64(), total["max"].as_f64()), (Some(6.0), Some(150.0)), "{t}");
    assert_eq!(total["count"], 4, "{t}");
    // --samples 2: s0 and s1 only.
    let o = lowbit(&[
        "calibrate",
        s(&model),
        "--data",
        s(&dir.join("data")),
        "--samples",
        "2",
        "-o",
        s(&ranges),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ranges).unwrap()).unwrap();
    assert_eq!(table["tensors"]["f"]["max"].as_f64(), Some(6.0), "{table}");
    assert_eq!(table["tensors"]["total"]["count"], 2, "{table}");
}

#[test]
fn a_per_sample_file_missing_an_input_is_named() {
    let dir = tmp("per-sample-missing");
    let model = sequence_model(&dir);
    let data = dir.join("data");
    sentence_files(&data);
    npy::write_npz(&data.join("s2.npz"), &[("ids".to_string(), ids(vec![2], &[1, 2]))]).unwrap();
    for cmd in ["run", "calibrate"] {
        let o = lowbit(&[cmd, s(&model), "--data", s(&data), "-o", s(&dir.join("o"))]);
        assert_fails(&o, 1, &["s2.npz", "'input_ids'"]);
        assert!(!stderr(&o).contains("s1.npz"), "{}", stderr(&o));
    }
}

#[test]
fn nan_in_a_per_sample_file_names_the_input_and_the_file() {
    let dir = tmp("per-sample-nan");
    let model = one_node_model(&dir, "Relu", "", &[-1, 4], "y");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let x = |v: Vec<f32>| Tensor::from_vec(vec![4], v).unwrap();
    npy::write_npz(&data.join("a.npz"), &[("x".into(), x(vec![1., 2., 3., 4.]))]).unwrap();
    npy::write_npz(&data.join("b.npz"), &[("x".into(), x(vec![1., f32::INFINITY, 3., 4.]))])
        .unwrap();
    let ranges = dir.join("ranges.json");
    let o = lowbit(&["calibrate", s(&model), "--data", s(&data), "-o", s(&ranges)]);
    assert_fails(&o, 1, &["input 'x'", "sample 1", "b.npz", "inf at element 1"]);
    assert!(!ranges.exists());
}

/// Runs `op(x)` for a float `x` of `dims` on `--data data --preprocess spec`; returns `y`.
fn run_preprocessed(dir: &Path, model: &Path, spec: &str) -> (Tensor, String) {
    let out = dir.join("out");
    let o = lowbit(&[
        "run",
        s(model),
        "--data",
        s(&dir.join("data")),
        "--preprocess",
        spec,
        "-o",
        s(&out),
    ]);
    assert!(o.status.success(), "{spec}: {}", stderr(&o));
    (npy::read_npy(&out.join("y.npy")).unwrap(), stderr(&o))
}

#[test]
fn preprocess_spec_from_json_or_inline_converts_uint8_images() {
    let dir = tmp("preprocess");
    let model = one_node_model(&dir, "Identity", "", &[-1, 1, 2, 2], "y");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let images = Tensor::from_vec(vec![2, 2, 2], vec![0u8, 51, 102, 255, 10, 20, 30, 40]).unwrap();
    npy::write_npy(&data.join("x.npy"), &images).unwrap();
    let json = dir.join("spec.json");
    std::fs::write(
        &json,
        r#"{"task": "classification", "input": "x", "layout": "NCHW",
            "scale": 0.00392156862745098, "mean": 0.5, "std": 0.25, "batch": 256}"#,
    )
    .unwrap();
    let want: Vec<f32> = [0u8, 51, 102, 255, 10, 20, 30, 40]
        .iter()
        .map(|&v| ((v as f64 / 255.0 - 0.5) / 0.25) as f32)
        .collect();
    let want = Tensor::from_vec(vec![2, 1, 2, 2], want).unwrap();
    let (y, err) = run_preprocessed(&dir, &model, s(&json));
    assert!(max_abs_diff(&y, &want) < 1e-6, "{y:?}");
    assert_eq!(y.as_f32().unwrap()[0], -2.0);
    assert!(err.contains("uint8 [2, 2, 2] -> float32 [2, 1, 2, 2]"), "{err}");
    let (y, _) =
        run_preprocessed(&dir, &model, "scale=0.00392156862745098,mean=0.5,std=0.25,layout=NCHW");
    assert!(max_abs_diff(&y, &want) < 1e-6, "{y:?}");
    // The same through calibrate: the input's range is the converted one.
    let ranges = dir.join("ranges.json");
    let o = lowbit(&[
        "calibrate",
        s(&model),
        "--data",
        s(&data),
        "--preprocess",
        s(&json),
        "-o",
        s(&ranges),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ranges).unwrap()).unwrap();
    let x = &table["tensors"]["x"];
    assert_eq!((x["min"].as_f64(), x["max"].as_f64()), (Some(-2.0), Some(2.0)), "{table}");
    // Float data is fed as it is, with a note.
    let floats = Tensor::from_vec(vec![1, 1, 2, 2], vec![0.5f32, 1.0, 1.5, 2.0]).unwrap();
    npy::write_npy(&data.join("x.npy"), &floats).unwrap();
    let (y, err) = run_preprocessed(&dir, &model, s(&json));
    assert_eq!(y, floats);
    assert!(err.contains("note: --preprocess: input 'x' holds float32 data already"), "{err}");
}

#[test]
fn preprocess_transposes_nhwc_images_with_per_channel_values() {
    let dir = tmp("preprocess-nhwc");
    let model = one_node_model(&dir, "Identity", "", &[-1, 3, 1, 2], "y");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    // NHWC [1, 1, 2, 3]: pixel 0 = (1, 2, 3), pixel 1 = (4, 5, 6).
    let images = Tensor::from_vec(vec![1, 1, 2, 3], vec![1u8, 2, 3, 4, 5, 6]).unwrap();
    npy::write_npy(&data.join("x.npy"), &images).unwrap();
    let (y, _) = run_preprocessed(&dir, &model, "layout=NHWC,mean=[0,10,20],std=[1,2,4]");
    let want = vec![1f32, 4.0, (2.0 - 10.0) / 2.0, (5.0 - 10.0) / 2.0, (3.0 - 20.0) / 4.0, -3.5];
    assert_eq!(y, Tensor::from_vec(vec![1, 3, 1, 2], want).unwrap());
}

#[test]
fn bad_preprocess_specs_are_usage_errors_naming_the_key() {
    let dir = tmp("preprocess-bad");
    let model = one_node_model(&dir, "Identity", "", &[-1, 1, 2, 2], "y");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    npy::write_npy(&data.join("x.npy"), &Tensor::from_vec(vec![1, 2, 2], vec![0u8; 4]).unwrap())
        .unwrap();
    let json = dir.join("bad.json");
    std::fs::write(&json, r#"{"scale": 0.1, "std": 0}"#).unwrap();
    let o = lowbit(&["run", s(&model), "--data", s(&data), "--preprocess", "scael=2", "-o", "o"]);
    assert_fails(&o, 2, &["unknown key 'scael'"]);
    let o =
        lowbit(&["calibrate", s(&model), "--data", s(&data), "--preprocess", s(&json), "-o", "r"]);
    assert_fails(&o, 2, &["'std'", "bad.json"]);
    let o = lowbit(&["bench", s(&model), "--data", s(&data), "--preprocess", "layout=NCWH"]);
    assert_fails(&o, 2, &["'layout'"]);
    let q = dir.join("q.onnx");
    let o =
        lowbit(&["quantize", s(&model), "-o", s(&q), "--data", s(&data), "--preprocess", "mean=x"]);
    assert_fails(&o, 2, &["'mean'"]);
    // Three means for one channel: an error naming the input and the key.
    let o =
        lowbit(&["run", s(&model), "--data", s(&data), "--preprocess", "mean=[1,2,3]", "-o", "o"]);
    assert_fails(&o, 1, &["input 'x'", "'mean' has 3 values"]);
    // Without --preprocess, uint8 for a float input says how to convert it.
    let o = lowbit(&["run", s(&model), "--data", s(&data), "-o", "o"]);
    assert_fails(&o, 1, &["input 'x'", "uint8", "--preprocess"]);
    assert!(!q.exists());
}

#[test]
fn mnist_resnet_on_uint8_images_with_the_sidecar_preprocessing() {
    let corpus = shared_dir().join("corpus/dev");
    let model = corpus.join("models/mnist_resnet.onnx");
    let spec = corpus.join("models/mnist_resnet.json");
    let images = corpus.join("data/mnist_test_0-4999/images.npy");
    let labels = corpus.join("data/mnist_test_0-4999/labels.npy");
    if !model.is_file() || !images.is_file() || !spec.is_file() {
        eprintln!("skipped: {} not found (set LOWBIT_SHARED)", model.display());
        return;
    }
    // The model's input is named `input`; the data folder names the file images.npy.
    let dir = tmp("mnist-preprocess");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::symlink(&images, data.join("input.npy")).unwrap();
    let ranges = dir.join("ranges.json");
    let o = lowbit(&[
        "calibrate",
        s(&model),
        "--data",
        s(&data),
        "--preprocess",
        s(&spec),
        "--samples",
        "100",
        "-o",
        s(&ranges),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("on 100 samples"), "{}", stdout(&o));
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ranges).unwrap()).unwrap();
    // (0/255 - 0.1307)/0.3081 and (255/255 - 0.1307)/0.3081.
    let x = &table["tensors"]["input"];
    assert!((x["min"].as_f64().unwrap() + 0.424_212).abs() < 1e-4, "{x}");
    assert!((x["max"].as_f64().unwrap() - 2.821_487).abs() < 1e-4, "{x}");
    let out = dir.join("out");
    let o = lowbit(&[
        "run",
        s(&model),
        "--data",
        s(&data),
        "--preprocess",
        s(&spec),
        "--limit",
        "100",
        "-o",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let logits = npy::read_npy(&out.join("logits.npy")).unwrap();
    assert_eq!(logits.shape(), &[100, 10]);
    let labels = npy::read_npy(&labels).unwrap().to_f64_vec().unwrap();
    let pred = argmax_rows(&logits);
    let correct = pred.iter().zip(&labels).filter(|(p, l)| **p as f64 == **l).count();
    assert!(correct >= 97, "{correct}/100 correct");
}

// ---------------------------------------------------------------------------------------------
// lowbit demo

/// The README's first command: builds, calibrates, quantizes and evaluates on its own model,
/// prints the comparison, and leaves files that ONNX Runtime agrees with.
#[test]
fn demo_quantizes_its_own_model_and_reports_what_it_cost() {
    let dir = tmp("demo");
    let o = lowbit(&["demo", "-o", s(&dir), "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let field = |label: &str| -> f64 {
        let line = out.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("{out}"));
        let last =
            line.split_whitespace().rev().find(|w| w.parse::<f64>().is_ok() || w.ends_with('%'));
        last.unwrap().trim_end_matches('%').parse().unwrap()
    };
    let agree = field("top-1 agreement with FP32");
    let cos = field("mean cosine to FP32 logits");
    assert!((95.0..=100.0).contains(&agree), "{out}");
    assert!(cos > 0.999 && cos <= 1.0 + 1e-9, "{out}");
    let len = |f: &str| std::fs::metadata(dir.join(f)).unwrap().len();
    assert!(len("model.int8.onnx") * 3 < len("model.onnx"), "{out}");
    for f in ["ranges.json", "calibration/x.npy", "eval/x.npy"] {
        assert!(dir.join(f).exists(), "{f} missing: {out}");
    }

    // The steps it prints work by hand and give the same file.
    let again = dir.join("again.int8.onnx");
    let q = lowbit(&[
        "quantize",
        s(&dir.join("model.onnx")),
        "--ranges",
        s(&dir.join("ranges.json")),
        "-o",
        s(&again),
    ]);
    assert!(q.status.success(), "{}", stderr(&q));
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(dir.join("model.int8.onnx")).unwrap());

    let Some(python) = std::env::var_os("LOWBIT_PYTHON") else {
        eprintln!("skipped the ONNX Runtime check: LOWBIT_PYTHON is not set");
        return;
    };
    let script = r#"
import sys, numpy as np, onnxruntime as ort
d = sys.argv[1]
x = np.load(d + "/eval/x.npy")
o = ort.SessionOptions(); o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
f = ort.InferenceSession(d + "/model.onnx", providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
q = ort.InferenceSession(d + "/model.int8.onnx", o, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
agree = float((f.argmax(1) == q.argmax(1)).mean())
assert agree > 0.95, agree
print("ok", agree)
"#;
    let o = Command::new(python).args(["-c", script, s(&dir)]).output().unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
}
