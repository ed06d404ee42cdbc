//! End-to-end tests of the `lowbit` binary: every command on the built-in example model, and
//! every kind of bad input (corrupt, truncated or non-ONNX files, wrong input names, dtypes and
//! shapes, unsupported ops, usage errors) giving one clear message, a non-zero exit and no panic.

use lowbit_onnx::build::{tensor_value_info, Dim};
use lowbit_onnx::pb;
use lowbit_tensor::{npy, DType, Tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;
use common::*;

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
fn example(name: &str) -> Scratch {
    let dir = tmp(name);
    ok(&["example-model", s(&dir), "--samples", "40"]);
    dir
}

/// A value of ONNX element type `elem_type` and shape `dims` (-1: a free dim named N).
fn value_info(name: &str, elem_type: i32, dims: &[i64]) -> pb::ValueInfoProto {
    let dims: Vec<Dim> =
        dims.iter().map(|&d| if d < 0 { Dim::Named("N") } else { Dim::Fixed(d) }).collect();
    tensor_value_info(name, DType::from_onnx(elem_type).unwrap(), &dims)
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
    let o = ok(&argv(
        "run {} --data {} -o {} --batch 16",
        &[&dir.join("model.onnx"), &dir.join("data"), &out],
    ));
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
    ok(&["run", s(&dir.join("model.onnx")), "-i", &x, "-o", s(&out), "--limit", "5"]);
    assert_eq!(npy::read_npy(&out.join("probs.npy")).unwrap().shape(), &[5, 10]);
}

#[test]
fn run_reads_inputs_from_an_npz() {
    let dir = example("run-npz");
    let x = npy::read_npy(&dir.join("data/x.npy")).unwrap();
    let npz = dir.join("inputs.npz");
    npy::write_npz(&npz, &[("x".to_string(), x)]).unwrap();
    let out = dir.join("out");
    ok(&["run", s(&dir.join("model.onnx")), "--data", s(&npz), "-o", s(&out)]);
    assert_eq!(npy::read_npy(&out.join("probs.npy")).unwrap().shape(), &[40, 10]);
}

#[test]
fn fixed_batch_models_are_fed_row_by_row_and_output_names_are_sanitized() {
    let dir = tmp("fixed-batch");
    let model = one_node_model(&dir, "Relu", "", &[1, 3], "onnx::Relu/out:0");
    let x = Tensor::from_vec(vec![4, 3], (0..12).map(|i| i as f32 - 6.0).collect()).unwrap();
    npy::write_npy(&dir.join("x.npy"), &x).unwrap();
    let out = dir.join("out");
    let o = ok(&["run", s(&model), "--data", s(&dir), "-o", s(&out)]);
    assert!(stdout(&o).contains("in 4 runs (batch 1"), "{}", stdout(&o));
    let y = npy::read_npy(&out.join("onnx__Relu_out_0.npy")).unwrap();
    let want: Vec<f32> = (0..12).map(|i| (i as f32 - 6.0).max(0.0)).collect();
    assert_eq!(y, Tensor::from_vec(vec![4, 3], want).unwrap());
}

#[test]
fn inspect_lists_io_ops_and_parameters() {
    let dir = example("inspect");
    let model = dir.join("model.onnx");
    let o = ok(&["inspect", s(&model)]);
    let text = stdout(&o);
    for needle in
        ["producer     lowbit", "ai.onnx 17", "x  float32 [batch, 16]", "MatMul", "Softmax"]
    {
        assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
    }
    let o = ok(&["inspect", s(&model), "--json"]);
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
    let o = ok(&["inspect", s(&model), "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["unsupported_ops"], serde_json::json!(["com.example.FrobnicateV9"]));
    assert_eq!(j["inputs"][0]["shape"], serde_json::json!(["N", 4]));
}

#[test]
fn bench_json_reports_latency_from_synthetic_inputs() {
    let dir = example("bench");
    let o =
        ok(&argv("bench {} --runs 5 --warmup 1 --threads 1 --json", &[&dir.join("model.onnx")]));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(j["median_ms"].as_f64().unwrap() > 0.0, "{j}");
    assert!(j["p90_ms"].as_f64().unwrap() >= j["median_ms"].as_f64().unwrap(), "{j}");
    assert_eq!(j["runs"], 5);
    assert_eq!(j["threads"], 1);
    assert_eq!(j["batch"], 1);
}

#[test]
fn bench_kernels_shapes_times_every_corpus_shape() {
    let o = ok(&argv("bench-kernels --shapes --json", &[]));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows.len(), 10);
    let first = &rows[0];
    assert_eq!(
        (first["m"].as_u64(), first["k"].as_u64(), first["n"].as_u64()),
        (Some(12544), Some(16), Some(96))
    );
    for r in &rows {
        let (m, k, n) =
            (r["m"].as_f64().unwrap(), r["k"].as_f64().unwrap(), r["n"].as_f64().unwrap());
        let us = r["us"].as_f64().unwrap();
        assert!(us > 0.0, "{r}");
        // GMAC/s is the product's multiply-adds over the time, not a number made up elsewhere.
        let g = r["gmacs"].as_f64().unwrap();
        assert!((g - m * k * n / us / 1e3).abs() <= 1e-6 * g, "{r}");
    }
    let e = expect(2, &argv("bench-kernels --shapes --weight-only", &[]));
    assert!(stderr(&e).contains("cannot be used with"), "{}", stderr(&e));
}

#[test]
fn bench_with_data_runs_once_per_sample() {
    let dir = example("bench-data");
    let o = ok(&argv(
        "bench {} --data {} --limit 7 --warmup 0",
        &[&dir.join("model.onnx"), &dir.join("data")],
    ));
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

/// `lowbit ARGS` with extra environment; also returns the process id, which names the temp
/// folder `bench --vs-ort` makes (`lowbit-bench-ort-<pid>-…`).
fn lowbit_env(args: &[&str], env: &[(&str, &str)]) -> (Output, u32) {
    let child = Command::new(env!("CARGO_BIN_EXE_lowbit"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the lowbit binary runs");
    let pid = child.id();
    (child.wait_with_output().unwrap(), pid)
}

/// Asserts that the run with process id `pid` left no `--vs-ort` temp folder behind.
fn assert_no_ort_temp_left(pid: u32) {
    let prefix = format!("lowbit-bench-ort-{pid}-");
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The `LOWBIT_PYTHON` tests with ONNX Runtime need, or `None` with a note (they skip).
fn ort_python() -> Option<String> {
    let python = std::env::var("LOWBIT_PYTHON").ok().filter(|p| !p.is_empty());
    if python.is_none() {
        eprintln!("skipped: LOWBIT_PYTHON is not set (source scripts/setup-test-env.sh)");
    }
    python
}

fn f64_at(j: &serde_json::Value, path: &[&str]) -> f64 {
    let v = path.iter().fold(j, |v, k| &v[*k]);
    v.as_f64().unwrap_or_else(|| panic!("{path:?} is not a number in {j}"))
}

#[test]
fn bench_vs_ort_reports_both_latencies_their_ratio_and_output_diffs() {
    let Some(python) = ort_python() else { return };
    let dir = example("bench-ort");
    let model = dir.join("model.onnx");
    let args = ["bench", s(&model), "--vs-ort", "--runs", "3", "--warmup", "1", "--json"];
    let (o, pid) = lowbit_env(&args, &[("LOWBIT_PYTHON", &python)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_no_ort_temp_left(pid);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ort = &j["ort"];
    for k in ["median_ms", "p90_ms", "min_ms", "mean_ms"] {
        assert!(f64_at(ort, &[k]) > 0.0, "{k}: {j}");
    }
    assert_eq!(ort["runs"], 3, "{j}");
    assert_eq!(ort["warmup"], 1, "{j}");
    assert_eq!(ort["intra_op_threads"], j["threads"], "{j}");
    assert_eq!(ort["inter_op_threads"], 1, "{j}");
    let want = f64_at(&j, &["median_ms"]) / f64_at(ort, &["median_ms"]);
    let ratio = f64_at(&j, &["ratio_median"]);
    assert!((ratio - want).abs() <= 1e-9 * want.abs(), "{ratio} vs {want}: {j}");
    let outs = ort["outputs"].as_array().unwrap();
    assert_eq!(outs.len(), 1, "{j}");
    assert_eq!(outs[0]["name"], "probs");
    assert!(f64_at(&outs[0], &["max_abs_diff"]) < 1e-4, "{j}");

    // --data: feed sets cycle (6 runs over 4 samples) in both runtimes; text output.
    let data = dir.join("data");
    let args = [
        "bench",
        s(&model),
        "--data",
        s(&data),
        "--limit",
        "4",
        "--runs",
        "6",
        "--warmup",
        "2",
        "--threads",
        "1",
        "--vs-ort",
        "--python",
        &python,
    ];
    let (o, pid) = lowbit_env(&args, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_no_ort_temp_left(pid);
    let out = stdout(&o);
    for needle in
        ["ORT latency  median", "intra-op threads 1,", "ratio        ", "max |diff|   probs"]
    {
        assert!(out.contains(needle), "expected {needle:?} in:\n{out}");
    }

    // Without --vs-ort the fields are there, null.
    let o = lowbit(&["bench", s(&model), "--runs", "2", "--warmup", "0", "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(j["ort"].is_null() && j["ratio_median"].is_null(), "{j}");
}

#[test]
fn bench_vs_ort_with_a_bad_python_is_a_clear_error() {
    let dir = example("bench-ort-bad-python");
    let model = dir.join("model.onnx");
    let missing = dir.join("no-such-python");
    let args = ["bench", s(&model), "--vs-ort", "--python", s(&missing), "--runs", "2"];
    let (o, pid) = lowbit_env(&args, &[]);
    assert_fails(
        &o,
        1,
        &["--vs-ort", s(&missing), "--python", "LOWBIT_PYTHON", "setup-test-env.sh"],
    );
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
    assert_no_ort_temp_left(pid);

    // --python alone is a usage error.
    let o = lowbit(&["bench", s(&model), "--python", s(&missing)]);
    assert_fails(&o, 2, &["--vs-ort"]);
}

#[test]
fn bench_vs_ort_without_onnxruntime_says_how_to_install_it() {
    let Some(python) = ort_python() else { return };
    let dir = example("bench-ort-no-ort");
    // A module that shadows the real package and fails to import, as a missing one does.
    let fake = dir.join("fake");
    std::fs::create_dir_all(&fake).unwrap();
    let raise = "raise ModuleNotFoundError(\"No module named 'onnxruntime'\")\n";
    std::fs::write(fake.join("onnxruntime.py"), raise).unwrap();
    let model = dir.join("model.onnx");
    let args = ["bench", s(&model), "--vs-ort", "--runs", "2"];
    let (o, pid) = lowbit_env(&args, &[("LOWBIT_PYTHON", &python), ("PYTHONPATH", s(&fake))]);
    assert_fails(
        &o,
        1,
        &["lacks onnxruntime", "No module named 'onnxruntime'", "pip install", "setup-test-env.sh"],
    );
    assert_no_ort_temp_left(pid);
}

#[test]
fn bench_vs_ort_shows_onnx_runtimes_message_when_it_cannot_load_the_model() {
    let Some(python) = ort_python() else { return };
    let dir = example("bench-ort-load");
    // lowbit runs any IR version; ONNX Runtime refuses one from the future.
    let mut model = lowbit_onnx::load_model(dir.join("model.onnx")).unwrap();
    model.ir_version = 99;
    let path = dir.join("ir99.onnx");
    lowbit_onnx::save_model(&model, &path).unwrap();
    let args = ["bench", s(&path), "--vs-ort", "--runs", "2", "--warmup", "0"];
    let (o, pid) = lowbit_env(&args, &[("LOWBIT_PYTHON", &python)]);
    assert_fails(&o, 1, &["ONNX Runtime", "cannot load", s(&path), "IR version"]);
    assert_no_ort_temp_left(pid);
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
fn example64(name: &str) -> Scratch {
    let dir = tmp(name);
    ok(&["example-model", s(&dir)]);
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
    let o = ok(&["calibrate", s(&model), "--data", s(&dir.join("data")), "-o", s(&ranges)]);
    assert!(stdout(&o).contains("on 64 samples"), "{}", stdout(&o));
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ranges).unwrap()).unwrap();
    assert!(table["tensors"].as_object().is_some_and(|t| !t.is_empty()), "{table}");
    let q = dir.join("q.onnx");
    let o = ok(&["quantize", s(&model), "-o", s(&q), "--ranges", s(&ranges)]);
    assert!(stdout(&o).contains("MatMul"), "{}", stdout(&o));
    run_model(&q, &dir.join("data"), &dir.join("out"), "probs.npy");
}

#[test]
fn static_quantization_with_data_agrees_with_fp32() {
    let dir = example64("quantize-static");
    let model = dir.join("model.onnx");
    let q = dir.join("q.onnx");
    let o =
        ok(&argv("quantize {} -o {} --mode static --data {}", &[&model, &q, &dir.join("data")]));
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
    ok(&["quantize", s(&model), "-o", s(&q), "--mode", "dynamic", "--force"]);
    assert!(lowbit_onnx::load_model(&q).is_ok());
}

#[test]
fn validation_below_the_floor_exits_4_without_a_file_unless_allowed() {
    let dir = example64("quantize-gate");
    let (model, data, q) = (dir.join("model.onnx"), dir.join("data"), dir.join("q.onnx"));
    // No int8 model keeps 200 dB of output SQNR: the floor must refuse it.
    let args = argv(
        "quantize {} -o {} --data {} --samples 32 --min-output-sqnr 200",
        &[&model, &q, &data],
    );
    let o = lowbit(&args);
    assert_fails(&o, 4, &["fails validation", "worst layers", "--allow-degraded"]);
    assert!(stdout(&o).contains("validation on 32 held-back samples"), "{}", stdout(&o));
    assert!(!q.exists(), "a model that failed validation was written");
    let mut allowed = args.clone();
    allowed.push("--allow-degraded".into());
    let o = ok(&allowed);
    assert!(stdout(&o).contains("written anyway (--allow-degraded)"), "{}", stdout(&o));
    assert!(lowbit_onnx::load_model(&q).is_ok());
    // The default floor passes this easy model and says what it measured.
    let o = ok(&argv("quantize {} -o {} --data {} --force", &[&model, &q, &data]));
    assert!(stdout(&o).contains("top-1 agreement"), "{}", stdout(&o));
}

#[test]
fn an_already_quantized_model_is_refused_and_unmatched_excludes_are_named() {
    let dir = example64("quantize-twice");
    let (model, data, q) = (dir.join("model.onnx"), dir.join("data"), dir.join("q.onnx"));
    let o = ok(&argv("quantize {} -o {} --data {} --exclude no_such_node", &[&model, &q, &data]));
    let text = format!("{}{}", stdout(&o), stderr(&o));
    assert!(text.contains("--exclude 'no_such_node' matches no node"), "{text}");
    // fp16 used to write a file ONNX Runtime refuses (DequantizeLinear with a float16 scale).
    let again = dir.join("again.onnx");
    for args in [
        argv("quantize {} -o {} --data {}", &[&q, &again, &data]),
        argv("quantize {} -o {} --mode fp16", &[&q, &again]),
    ] {
        let o = lowbit(&args);
        assert_fails(&o, 1, &["already quantized", "FP32 original"]);
        assert!(!again.exists());
    }
}

/// A model lowbit can quantize none of (its Conv weight is a graph input) is not written as a
/// "quantized" copy of itself: exit 5 with the cause counted, unless --allow-partial.
#[test]
fn a_run_that_quantizes_nothing_exits_5_naming_the_cause() {
    use lowbit_onnx::build::{model, node};
    let dir = tmp("quantize-partial");
    let dims = |d: &[i64]| d.iter().map(|&k| Dim::Fixed(k)).collect::<Vec<_>>();
    let graph = pb::GraphProto {
        name: "g".into(),
        node: vec![node("Conv", "conv", &["x", "w"], &["y"])],
        input: vec![
            tensor_value_info("x", DType::F32, &dims(&[1, 1, 6, 6])),
            tensor_value_info("w", DType::F32, &dims(&[1, 1, 3, 3])),
        ],
        output: vec![tensor_value_info("y", DType::F32, &dims(&[1, 1, 4, 4]))],
        ..Default::default()
    };
    let path = dir.join("conv.onnx");
    lowbit_onnx::save_model(&model(graph, 13), &path).unwrap();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let x: Vec<f32> = (0..8 * 36).map(|i| (i % 7) as f32 - 3.0).collect();
    npy::write_npy(&data.join("x.npy"), &Tensor::from_vec(vec![8, 1, 6, 6], x).unwrap()).unwrap();
    let w: Vec<f32> = (0..8 * 9).map(|i| (i % 5) as f32 * 0.1).collect();
    npy::write_npy(&data.join("w.npy"), &Tensor::from_vec(vec![8, 1, 3, 3], w).unwrap()).unwrap();
    // inspect says so before any data is needed.
    let o = ok(&["inspect", s(&path)]);
    let text = stdout(&o);
    assert!(text.contains("quantizable  0 of 1 weighted nodes"), "{text}");
    assert!(text.contains("1 not: weight is neither an initializer"), "{text}");
    let q = dir.join("q.onnx");
    let o = lowbit(&argv("quantize {} -o {} --data {}", &[&path, &q, &data]));
    assert_fails(
        &o,
        5,
        &["0 of 1 weighted nodes quantized", "weight is neither an initializer", "--allow-partial"],
    );
    assert!(!q.exists(), "a model with nothing quantized was written");
    let o = ok(&argv("quantize {} -o {} --data {} --allow-partial", &[&path, &q, &data]));
    assert!(stdout(&o).contains("written anyway (--allow-partial)"), "{}", stdout(&o));
    assert!(q.exists());
}

#[test]
fn block_size_0_gives_int4_weights_one_scale_per_channel() {
    let dir = example64("quantize-int4-channels");
    let model = dir.join("model.onnx");
    let scale_dims = |block: &str| {
        let q = dir.join(format!("q{block}.onnx"));
        ok(&argv(
            &format!(
                "quantize {{}} -o {{}} --mode weight-only --weights int4 --block-size {block}"
            ),
            &[&model, &q],
        ));
        let m = lowbit_onnx::load_model(&q).unwrap();
        let g = m.graph.unwrap();
        let dq =
            g.node.iter().find(|n| n.op_type == "DequantizeLinear").expect("a DequantizeLinear");
        let scale = g.initializer.iter().find(|t| t.name == dq.input[1]).expect("its scale");
        scale.dims.clone()
    };
    // The first MatMul's weight is [16, 32]: 32 output channels, 16 inputs (one block of 16).
    assert_eq!(scale_dims("0"), vec![32]);
    assert_eq!(scale_dims("16"), vec![1, 32]);
}

#[test]
fn the_target_sets_weight_bits_and_activation_type_and_says_why() {
    let dir = example64("quantize-targets");
    let (model, data) = (dir.join("model.onnx"), dir.join("data"));
    let summary = |target: &str| {
        let q = dir.join(format!("{target}.onnx"));
        let o = ok(&argv(
            &format!("quantize {{}} -o {{}} --data {{}} --target {target}"),
            &[&model, &q, &data],
        ));
        stdout(&o)
    };
    let avx2 = summary("ort-avx2");
    assert!(avx2.contains("ort-avx2") && avx2.contains("7-bit"), "{avx2}");
    let vnni = summary("ort-vnni");
    assert!(vnni.contains("ort-vnni") && !vnni.contains("7-bit"), "{vnni}");
    let trt = summary("tensorrt");
    assert!(trt.contains("tensorrt") && trt.contains("int8"), "{trt}");
    let q = dir.join("bad.onnx");
    let o = lowbit(&argv(
        "quantize {} -o {} --data {} --target tensorrt --activations uint8",
        &[&model, &q, &data],
    ));
    assert_fails(&o, 2, &["tensorrt"]);
}

#[test]
fn compare_with_the_models_swapped_says_so() {
    let dir = example64("compare-swapped");
    let (model, data, q) = (dir.join("model.onnx"), dir.join("data"), dir.join("q.onnx"));
    ok(&argv("quantize {} -o {} --data {}", &[&model, &q, &data]));
    let o = lowbit(&argv("compare {} {} --data {}", &[&q, &model, &data]));
    assert_fails(&o, 1, &["wrong order"]);
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

// ---------------------------------------------------------------------------------------------
// Outputs: checked before any work, replaced only with --force

#[test]
fn outputs_are_checked_before_calibration_and_a_folder_is_never_the_output_file() {
    let dir = example64("outputs-checked");
    let model = dir.join("model.onnx");
    // NaN data would fail calibration: the path errors come first, so they ran before it.
    let x = npy::read_npy(&dir.join("data/x.npy")).unwrap();
    let mut v = x.as_f32().unwrap().to_vec();
    v[0] = f32::NAN;
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    npy::write_npy(&bad.join("x.npy"), &Tensor::from_vec(x.shape().to_vec(), v).unwrap()).unwrap();
    let folder = format!("{}/", s(&dir.join("data")));
    for cmd in ["quantize", "calibrate"] {
        let o = lowbit(&[cmd, s(&model), "--data", s(&bad), "-o", &folder, "--force"]);
        assert_fails(&o, 1, &["-o", "is a folder", "name the file"]);
        assert!(!stderr(&o).contains("Is a directory"), "{}", stderr(&o));
        let missing = dir.join("no/such/out.onnx");
        let o = lowbit(&[cmd, s(&model), "--data", s(&bad), "-o", s(&missing)]);
        assert_fails(&o, 1, &["no/such", "does not exist"]);
        let o = lowbit(&[cmd, s(&model), "--data", s(&bad), "-o", s(&model), "--force"]);
        assert_fails(&o, 1, &["is the input model", "never overwrites"]);
    }
    // The report and the model written are two files.
    let q = dir.join("q.onnx");
    let args = ["quantize", s(&model), "-o", s(&q), "--data", s(&bad), "--report", s(&q)];
    assert_fails(&lowbit(&args), 1, &["--report", "is also -o"]);
    assert!(!q.exists());
}

#[test]
fn every_command_that_writes_replaces_only_with_force() {
    let dir = example64("force");
    let (model, data) = (dir.join("model.onnx"), dir.join("data"));
    let m = s(&model);
    let d = s(&data);
    let (out, ranges, q) = (dir.join("out"), dir.join("ranges.json"), dir.join("q.onnx"));
    let runs: [Vec<&str>; 4] = [
        vec!["run", m, "--data", d, "-o", s(&out)],
        vec!["calibrate", m, "--data", d, "-o", s(&ranges)],
        vec!["quantize", m, "--ranges", s(&ranges), "-o", s(&q)],
        vec!["example-model", s(&dir)],
    ];
    for args in &runs {
        if args[0] != "example-model" {
            let o = lowbit(args);
            assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        }
        assert_fails(&lowbit(args), 1, &["already exists", "--force"]);
        let mut forced = args.clone();
        forced.push("--force");
        let o = lowbit(&forced);
        assert!(o.status.success(), "{forced:?}: {}", stderr(&o));
    }
    // compare: --report replaced only with --force; --json prints one JSON object on stdout.
    let html = dir.join("report.html");
    std::fs::write(&html, "keep").unwrap();
    let compare = ["compare", m, s(&q), "--data", d, "--samples", "8", "--report", s(&html)];
    assert_fails(&lowbit(&compare), 1, &["report.html", "already exists", "--force"]);
    assert_eq!(std::fs::read_to_string(&html).unwrap(), "keep");
    let mut forced = compare.to_vec();
    forced.extend(["--force", "--json"]);
    let o = lowbit(&forced);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["format"], "lowbit-compare/1");
    assert!(std::fs::read_to_string(&html).unwrap().contains("<svg"));
    // run never writes into its data folder.
    assert_fails(&lowbit(&["run", m, "--data", d, "-o", d, "--force"]), 1, &["the data folder"]);
    // demo -o: a folder that holds files needs --force.
    let o = lowbit(&["demo", "-o", s(&dir), "-q"]);
    assert_fails(&o, 1, &["not empty", "--force"]);
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
    let Some(corpus) =
        corpus_with(&["models/mnist-8_cntk.onnx", "data/mnist_test_0-4999/images.npy"])
    else {
        return;
    };
    let model = corpus.join("models/mnist-8_cntk.onnx");
    let images = corpus.join("data/mnist_test_0-4999/images.npy");
    let dir = tmp("mnist-static");
    let images = npy::read_npy(&images).unwrap();
    mnist_data(&images, 0, 50, &dir.join("calib"));
    mnist_data(&images, 1000, 1200, &dir.join("eval"));
    let q = dir.join("mnist.int8.onnx");
    let o = ok(&["quantize", s(&model), "-o", s(&q), "--data", s(&dir.join("calib"))]);
    assert!(stdout(&o).contains("Conv"), "{}", stdout(&o));
    let out = "Plus214_Output_0.npy";
    let fp32 = run_model(&model, &dir.join("eval"), &dir.join("out32"), out);
    let int8 = run_model(&q, &dir.join("eval"), &dir.join("out8"), out);
    assert_eq!(int8.shape()[0], 200);
    let agree =
        agreement(&fp32.reshape(vec![200, 10]).unwrap(), &int8.reshape(vec![200, 10]).unwrap());
    assert!(agree >= 0.97, "argmax agreement {agree}");
}

/// Images `start..end` of the MNIST uint8 array `images`, as burn_mnist_bn reads them
/// (`(x / 255 - 0.1307) / 0.3081`, float32 `[N, 1, 28, 28]`), into `to/input.1.npy`.
fn write_mnist_inputs(images: &[f64], start: usize, end: usize, to: &Path) {
    let rows: Vec<f32> = images[start * 784..end * 784]
        .iter()
        .map(|&v| ((v / 255.0 - 0.1307) / 0.3081) as f32)
        .collect();
    std::fs::create_dir_all(to).unwrap();
    let t = Tensor::from_vec(vec![end - start, 1, 28, 28], rows).unwrap();
    npy::write_npy(&to.join("input.1.npy"), &t).unwrap();
}

/// What the `tune` tests on the corpus' MNIST CNN read: the model, and in a fresh folder MNIST
/// test images 0..64 (`calib`) and 400 from `eval_from` (`eval`).
struct MnistTune {
    dir: Scratch,
    model: PathBuf,
    calib: PathBuf,
    eval: PathBuf,
}

/// [`MnistTune`] in a folder tagged `tag`, or `None` without the corpus.
fn mnist_tune_inputs(tag: &str, eval_from: usize) -> Option<MnistTune> {
    let corpus = corpus_with(&["models/burn_mnist_bn.onnx", "data/mnist_test_0-4999/images.npy"])?;
    let images = corpus.join("data/mnist_test_0-4999/images.npy");
    let images = npy::read_npy(&images).unwrap().to_f64_vec().unwrap();
    let dir = tmp(tag);
    let (calib, eval) = (dir.join("calib"), dir.join("eval"));
    write_mnist_inputs(&images, 0, 64, &calib);
    write_mnist_inputs(&images, eval_from, eval_from + 400, &eval);
    Some(MnistTune { dir, model: corpus.join("models/burn_mnist_bn.onnx"), calib, eval })
}

/// The `tune` command line both MNIST tests run (model, -o, --data, --eval-data, --json-out
/// are `{}`), against FP32 by cosine within `max_drop`, then `tail`.
fn mnist_tune_command(max_drop: f64, tail: &str) -> String {
    format!(
        "tune {{}} -o {{}} --data {{}} --eval-data {{}} --reference-only --metric cosine \
         --max-drop {max_drop} --objective size --candidates int4,int8,fp32 --latency 0 \
         --batch 1 --threads 1 --json-out {{}} {tail}"
    )
    .trim_end()
    .to_string()
}

/// `lowbit tune` on the corpus' MNIST CNN (Conv + BatchNorm) without labels (cosine against
/// FP32): within seconds, the held-out part confirms the budget, the front has at least three
/// points, the JSON is the same twice, and the report draws the front and the precision map.
#[test]
fn tune_mnist_meets_its_budget_on_held_out_samples_with_a_front_and_the_same_json_twice() {
    let Some(MnistTune { dir, model, calib, eval }) = mnist_tune_inputs("tune-mnist", 1000) else {
        return;
    };
    let max_drop = 0.05;
    let tune = |tag: &str| -> (serde_json::Value, String, PathBuf) {
        let (out, json, html) = (
            dir.join(format!("{tag}.onnx")),
            dir.join(format!("{tag}.json")),
            dir.join(format!("{tag}.html")),
        );
        let o = ok(&argv(
            &mnist_tune_command(max_drop, "--report {}"),
            &[&model, &out, &calib, &eval, &json, &html],
        ));
        let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        (j, stdout(&o), out)
    };
    let (j, text, out) = tune("a");
    assert!(text.contains("Pareto front") && text.contains("held out (200 samples)"), "{text}");
    assert_eq!(
        (j["search_samples"].as_u64(), j["held_out_samples"].as_u64()),
        (Some(200), Some(200))
    );
    assert_eq!(j["metric"], "cosine");
    assert!(j["against"].as_str().unwrap().contains("FP32"), "{j}");
    // The front: at least three points, cheaper ones scoring lower.
    let front: Vec<usize> =
        j["pareto"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    assert!(front.len() >= 3, "{}", j["pareto"]);
    let ev = j["evaluated"].as_array().unwrap();
    for w in front.windows(2) {
        let (a, b) = (&ev[w[0]], &ev[w[1]]);
        assert!(f64_at(a, &["bytes"]) < f64_at(b, &["bytes"]), "{a} {b}");
        assert!(f64_at(a, &["metric"]) < f64_at(b, &["metric"]), "{a} {b}");
    }
    // The chosen point meets the budget on the search part and on the held-out part, and is
    // the file written.
    let c = j["chosen"].as_u64().expect("a configuration within budget") as usize;
    assert!(f64_at(&ev[c], &["drop"]) <= max_drop, "{}", ev[c]);
    let held = j["held_out"].as_array().unwrap().iter().find(|h| h["id"] == c).unwrap();
    assert!(f64_at(held, &["drop"]) <= max_drop, "held out: {held}");
    assert!(j["confidence"].as_str().unwrap().contains("within"), "{}", j["confidence"]);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), ev[c]["bytes"].as_u64().unwrap());
    // The cheapest candidate everywhere is not within budget here, so the search mixed
    // precisions: the chosen point is smaller than all int8 and every layer has a precision.
    let all = |p: &str| ev.iter().find(|e| e["label"] == format!("all {p}")).unwrap();
    assert!(!all("int4")["meets_budget"].as_bool().unwrap(), "{}", all("int4"));
    assert!(f64_at(&ev[c], &["bytes"]) < f64_at(all("int8"), &["bytes"]));
    assert_eq!(j["nodes"].as_array().unwrap().len(), 5);
    // Deterministic: the same configurations, metrics, sizes, front and choice again.
    let (again, ..) = tune("b");
    let key = |j: &serde_json::Value| {
        let ev: Vec<_> = j["evaluated"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["label"].clone(), e["metric"].clone(), e["bytes"].clone()))
            .collect();
        (ev, j["pareto"].clone(), j["chosen"].clone(), j["held_out"].clone(), j["nodes"].clone())
    };
    assert_eq!(key(&j), key(&again));
    let page = std::fs::read_to_string(dir.join("a.html")).unwrap();
    assert!(page.contains("<svg id=\"pareto-chart\"") && page.contains("id=\"precision-map\""));
    assert_eq!(page.matches("class=\"pt front\"").count(), front.len());
}

#[test]
fn tune_reuses_learned_int4_weights_and_decides_at_the_asked_confidence() {
    let Some(MnistTune { dir, model, calib, eval }) =
        mnist_tune_inputs("tune-mnist-adaround", 2000)
    else {
        return;
    };
    let tune = |tag: &str, extra: &str| -> serde_json::Value {
        let (out, json) = (dir.join(format!("{tag}.onnx")), dir.join(format!("{tag}.json")));
        let o = ok(&argv(&mnist_tune_command(0.05, extra), &[&model, &out, &calib, &eval, &json]));
        let text = stdout(&o);
        if extra.contains("--adaround") {
            assert!(text.contains("int4 rounding learned once"), "{text}");
        }
        assert!(text.contains("P(within budget)"), "{text}");
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
    };
    let plain = tune("plain", "");
    let learned = tune("learned", "--adaround --adaround-iters 40 --confidence 0.9");
    assert!(plain["int4_rounding"].is_null());
    // Every layer's int4 weights were learned once and reused.
    let r = &learned["int4_rounding"];
    assert_eq!(r["layers"].as_u64(), Some(learned["nodes"].as_array().unwrap().len() as u64));
    assert!(r["summary"].as_str().unwrap().contains("learned the rounding"), "{r}");
    // ... so the all-int4 configuration, the same file layout, is closer to FP32.
    let all4 = |j: &serde_json::Value| {
        let ev = j["evaluated"].as_array().unwrap();
        ev.iter().find(|e| e["label"] == "all int4").unwrap().clone()
    };
    assert_eq!(all4(&plain)["bytes"], all4(&learned)["bytes"]);
    assert!(
        f64_at(&all4(&learned), &["metric"]) > f64_at(&all4(&plain), &["metric"]),
        "{} vs {}",
        all4(&learned),
        all4(&plain)
    );
    // The decision: each configuration's probability of being within budget (from its paired
    // standard error) against the asked level; the held-out part reports its own.
    for (j, level) in [(&plain, 0.5), (&learned, 0.9)] {
        assert_eq!(f64_at(j, &["confidence_level"]), level);
        for e in j["evaluated"].as_array().unwrap() {
            let p = f64_at(e, &["p_within"]);
            assert!((0.0..=1.0).contains(&p), "{e}");
            assert_eq!(e["meets_budget"].as_bool().unwrap(), p >= level, "{e}");
            if e["id"] != 0 {
                assert!(f64_at(e, &["drop_se"]) >= 0.0, "{e}");
            }
        }
        let c = j["chosen"].as_u64().unwrap() as usize;
        assert!(f64_at(&j["evaluated"][c], &["p_within"]) >= level);
        let held = j["held_out"].as_array().unwrap().iter().find(|h| h["id"] == c).unwrap();
        assert!((0.0..=1.0).contains(&f64_at(held, &["p_within"])), "{held}");
        assert!(j["confidence"].as_str().unwrap().contains("P(within budget)"));
    }
    // A level outside (0, 1) is a usage error.
    let o = lowbit(&argv(
        "tune {} -o {} --data {} --eval-data {} --reference-only --confidence 1",
        &[&model, &dir.join("x.onnx"), &calib, &eval],
    ));
    assert!(!o.status.success() && stderr(&o).contains("--confidence"), "{}", stderr(&o));
}

// ---------------------------------------------------------------------------------------------
// Data layouts: per-sample .npz files of different lengths, --preprocess

/// A value info with named free dimensions (`None` dims are free, named from `names`).
fn named_value_info(name: &str, elem_type: i32, dims: &[Option<i64>]) -> pb::ValueInfoProto {
    let dims: Vec<Dim> = dims
        .iter()
        .enumerate()
        .map(|(i, d)| d.map_or(Dim::Named(["batch", "seq"][i.min(1)]), Dim::Fixed))
        .collect();
    tensor_value_info(name, DType::from_onnx(elem_type).unwrap(), &dims)
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

/// A fresh folder with the sequence model and, in `data/`, four per-sample files, sorted
/// s0..s3: lengths 3, 3 (no batch axis), 5 (no batch axis), 2. Returns the folder, the model
/// and the data folder.
fn sentences(name: &str) -> (Scratch, PathBuf, PathBuf) {
    let dir = tmp(name);
    let model = sequence_model(&dir);
    let data = dir.join("data");
    sentence_files(&data);
    (dir, model, data)
}

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
    let (dir, model, data) = sentences("per-sample-run");
    let out = dir.join("out");
    let o = ok(&["run", s(&model), "--data", s(&data), "-o", s(&out)]);
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
    // --batch 1: one run per file; --limit 3 stops after s2 (--force: `out` holds the first
    // run's files).
    let o = ok(&argv("run {} --data {} -o {} --force --batch 1 --limit 3", &[&model, &data, &out]));
    assert!(stdout(&o).contains("ran 3 samples in 3 runs"), "{}", stdout(&o));
    let total = npy::read_npy(&out.join("total.npy")).unwrap();
    assert_eq!(total, Tensor::from_vec(vec![3], vec![6f32, 15.0, 150.0]).unwrap());
    // bench feeds one sample per run.
    let o = ok(&["bench", s(&model), "--data", s(&data), "--warmup", "0", "--json"]);
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!((j["runs"].as_u64(), j["batch"].as_u64()), (Some(4), Some(1)), "{j}");
}

#[test]
fn per_sample_npz_files_of_different_lengths_calibrate() {
    let (dir, model, data) = sentences("per-sample-calibrate");
    let ranges = dir.join("ranges.json");
    let o = ok(&["calibrate", s(&model), "--data", s(&data), "-o", s(&ranges)]);
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
    ok(&argv("calibrate {} --data {} --samples 2 -o {} --force", &[&model, &data, &ranges]));
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ranges).unwrap()).unwrap();
    assert_eq!(table["tensors"]["f"]["max"].as_f64(), Some(6.0), "{table}");
    assert_eq!(table["tensors"]["total"]["count"], 2, "{table}");
}

#[test]
fn a_per_sample_file_missing_an_input_is_named() {
    let (dir, model, data) = sentences("per-sample-missing");
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
        "--force",
    ]);
    assert!(o.status.success(), "{spec}: {}", stderr(&o));
    (npy::read_npy(&out.join("y.npy")).unwrap(), stderr(&o))
}

/// A scratch folder `tag` with `Identity(x) -> y` (x of `dims`, -1 free) and an empty `data`
/// folder for the test's images.
fn identity_on_images(tag: &str, dims: &[i64]) -> (Scratch, PathBuf, PathBuf) {
    let dir = tmp(tag);
    let model = one_node_model(&dir, "Identity", "", dims, "y");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    (dir, model, data)
}

#[test]
fn preprocess_spec_from_json_or_inline_converts_uint8_images() {
    let (dir, model, data) = identity_on_images("preprocess", &[-1, 1, 2, 2]);
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
    ok(&["calibrate", s(&model), "--data", s(&data), "--preprocess", s(&json), "-o", s(&ranges)]);
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
    let (dir, model, data) = identity_on_images("preprocess-nhwc", &[-1, 3, 1, 2]);
    // NHWC [1, 1, 2, 3]: pixel 0 = (1, 2, 3), pixel 1 = (4, 5, 6).
    let images = Tensor::from_vec(vec![1, 1, 2, 3], vec![1u8, 2, 3, 4, 5, 6]).unwrap();
    npy::write_npy(&data.join("x.npy"), &images).unwrap();
    let (y, _) = run_preprocessed(&dir, &model, "layout=NHWC,mean=[0,10,20],std=[1,2,4]");
    let want = vec![1f32, 4.0, (2.0 - 10.0) / 2.0, (5.0 - 10.0) / 2.0, (3.0 - 20.0) / 4.0, -3.5];
    assert_eq!(y, Tensor::from_vec(vec![1, 3, 1, 2], want).unwrap());
}

#[test]
fn bad_preprocess_specs_are_usage_errors_naming_the_key() {
    let (dir, model, data) = identity_on_images("preprocess-bad", &[-1, 1, 2, 2]);
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

/// The corpus' mnist_resnet (uint8 images in), its sidecar preprocessing and the MNIST test
/// folder, or `None` (saying so) without them.
fn mnist_resnet() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let (model, spec, mnist) =
        ("models/mnist_resnet.onnx", "models/mnist_resnet.json", "data/mnist_test_0-4999");
    let corpus = corpus_with(&[model, spec, &format!("{mnist}/images.npy")])?;
    Some((corpus.join(model), corpus.join(spec), corpus.join(mnist)))
}

#[test]
fn mnist_resnet_on_uint8_images_with_the_sidecar_preprocessing() {
    let Some((model, spec, mnist)) = mnist_resnet() else { return };
    let (images, labels) = (mnist.join("images.npy"), mnist.join("labels.npy"));
    // The model's input is named `input`; the data folder names the file images.npy.
    let dir = tmp("mnist-preprocess");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::symlink(&images, data.join("input.npy")).unwrap();
    let ranges = dir.join("ranges.json");
    let o = ok(&argv(
        "calibrate {} --data {} --preprocess {} --samples 100 -o {}",
        &[&model, &data, &spec, &ranges],
    ));
    assert!(stdout(&o).contains("on 100 samples"), "{}", stdout(&o));
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ranges).unwrap()).unwrap();
    // (0/255 - 0.1307)/0.3081 and (255/255 - 0.1307)/0.3081.
    let x = &table["tensors"]["input"];
    assert!((x["min"].as_f64().unwrap() + 0.424_212).abs() < 1e-4, "{x}");
    assert!((x["max"].as_f64().unwrap() - 2.821_487).abs() < 1e-4, "{x}");
    let out = dir.join("out");
    ok(&argv("run {} --data {} --preprocess {} --limit 100 -o {}", &[&model, &data, &spec, &out]));
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
    let o = ok(&["demo", "-o", s(&dir), "-q"]);
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

    // The steps it prints run as printed (this binary by its path, outputs replaced with
    // --force) and give the same file.
    let int8 = std::fs::read(dir.join("model.int8.onnx")).unwrap();
    let steps: Vec<&str> =
        out.lines().skip_while(|l| *l != "same steps by hand:").skip(1).map(str::trim).collect();
    assert_eq!(steps.len(), 3, "{out}");
    for (step, cmd) in steps.iter().zip(["calibrate", "quantize", "bench"]) {
        let bin = env!("CARGO_BIN_EXE_lowbit");
        let by_path = step.starts_with(&format!("{bin} {cmd} "));
        assert!(by_path || step.starts_with(&format!("lowbit {cmd} ")), "{step}");
        let o = Command::new("sh").args(["-c", step]).stdin(Stdio::null()).output().unwrap();
        assert!(o.status.success(), "{step}: {}", stderr(&o));
    }
    assert_eq!(std::fs::read(dir.join("model.int8.onnx")).unwrap(), int8);
    let again = dir.join("again.int8.onnx");
    let q = lowbit(&argv(
        "quantize {} --ranges {} -o {}",
        &[&dir.join("model.onnx"), &dir.join("ranges.json"), &again],
    ));
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

// ---------------------------------------------------------------------------------------------
// lowbit eval

/// `lowbit eval ... --json`, parsed.
fn eval_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["eval"];
    all.extend_from_slice(args);
    all.push("--json");
    let o = lowbit(&all);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)))
}

/// `python score.py ARGS --json`, parsed; `None` (with a note) when LOWBIT_PYTHON is unset.
fn score_py(args: &[&str]) -> Option<serde_json::Value> {
    let Some(python) = std::env::var_os("LOWBIT_PYTHON") else {
        eprintln!("skipped the score.py comparison: LOWBIT_PYTHON is not set");
        return None;
    };
    let script = shared_dir().join("corpus/score.py");
    let o = Command::new(python).arg(&script).args(args).arg("--json").output().unwrap();
    assert!(o.status.success(), "score.py {args:?}: {}{}", stdout(&o), stderr(&o));
    Some(serde_json::from_str(stdout(&o).trim()).unwrap())
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Labels = the example model's own argmax (its expected outputs), so top-1 is 100 %.
fn example_labels(dir: &Path, rows: usize) -> PathBuf {
    let probs = npy::read_npy(&dir.join("expected/probs.npy")).unwrap();
    let labels: Vec<i64> = argmax_rows(&probs).into_iter().take(rows).map(|l| l as i64).collect();
    let path = dir.join("labels.npy");
    npy::write_npy(&path, &Tensor::from_vec(vec![labels.len()], labels).unwrap()).unwrap();
    path
}

#[test]
fn eval_scores_the_example_model_against_labels_and_itself() {
    let dir = example("eval-example");
    let (model, data) = (dir.join("model.onnx"), dir.join("data"));
    let labels = example_labels(&dir, 40);
    let r = eval_json(&[
        s(&model),
        "--data",
        s(&data),
        "--labels",
        s(&labels),
        "--reference",
        s(&model),
        "--latency",
        "7",
    ]);
    assert_eq!(r["format"], "lowbit-eval/1");
    assert_eq!(r["task"], "classification");
    assert_eq!((r["samples"].as_u64(), r["output"].as_str()), (Some(40), Some("probs")));
    assert_eq!(r["output_values"], 10);
    assert_eq!(r["model_bytes"].as_u64(), Some(std::fs::metadata(&model).unwrap().len()));
    let c = &r["classification"];
    assert_eq!((f(&c["top1"]), c["top1_correct"].as_u64(), f(&c["top5"])), (1.0, Some(40), 1.0));
    let rf = &r["reference"];
    assert_eq!((f(&rf["top1_agreement"]), f(&rf["top1"])), (1.0, 1.0));
    assert!((f(&rf["mean_cosine"]) - 1.0).abs() < 1e-9, "{rf}");
    // Identical outputs: infinite SQNR, written as null.
    assert!(rf["noise"]["sqnr_db"].is_null() && f(&rf["noise"]["mse"]) == 0.0, "{rf}");
    assert_eq!(rf["noise"]["count"], 400);
    let lat = &r["latency"];
    assert_eq!((lat["runs"].as_u64(), lat["batch"].as_u64()), (Some(7), Some(1)));
    assert!(f(&lat["median_ms"]) > 0.0 && lat["timed"].as_str().unwrap().contains("batch 1"));
    assert!(rf["latency"]["median_ms"].is_number(), "{rf}");

    // The text form, limited: a person's report.
    let o = ok(&["eval", s(&model), "--data", s(&data), "--labels", s(&labels), "--limit", "8"]);
    let out = stdout(&o);
    for want in ["top-1 100.00 % (8/8)", "the first 8 of 40", "'probs' (10 values", "median "] {
        assert!(out.contains(want), "{want:?} in:\n{out}");
    }
    // Nothing to score: latency and size only, said so.
    let o = lowbit(&["eval", s(&model), "--data", s(&data), "--latency", "3"]);
    assert!(o.status.success() && stdout(&o).contains("score  "), "{}", stdout(&o));

    // Quantized copies of every kind are scored the same way against the FP32 model.
    for mode in ["dynamic", "weight-only", "fp16", "bf16"] {
        let q = dir.join(format!("model.{mode}.onnx"));
        let o = lowbit(&["quantize", s(&model), "-o", s(&q), "--mode", mode]);
        assert!(o.status.success(), "{mode}: {}", stderr(&o));
        let r = eval_json(&[
            s(&q),
            "--data",
            s(&data),
            "--labels",
            s(&labels),
            "--reference",
            s(&model),
            "--latency",
            "2",
        ]);
        let rf = &r["reference"];
        assert!(f(&rf["top1_agreement"]) >= 0.9 && f(&r["classification"]["top1"]) >= 0.9, "{r}");
        assert!(f(&rf["mean_cosine"]) > 0.99 && f(&rf["noise"]["sqnr_db"]) > 20.0, "{mode}: {r}");
    }
}

#[test]
fn eval_errors_name_the_labels_output_and_reference() {
    let dir = example("eval-errors");
    let (model, data) = (dir.join("model.onnx"), dir.join("data"));
    let m = s(&model);
    let d = s(&data);
    // Labels for 39 of the 40 samples.
    let labels = example_labels(&dir, 39);
    let o = lowbit(&["eval", m, "--data", d, "--labels", s(&labels)]);
    assert_fails(&o, 1, &["--labels", "labels.npy", "39 labels", "40 samples"]);
    // Float labels, and a label that is no class of the output.
    let float = dir.join("float.npy");
    npy::write_npy(&float, &Tensor::from_vec(vec![40], vec![1.0f32; 40]).unwrap()).unwrap();
    let o = lowbit(&["eval", m, "--data", d, "--labels", s(&float)]);
    assert_fails(&o, 1, &["float.npy", "float32", "integer"]);
    let big = dir.join("big.npy");
    let mut v = vec![0i64; 40];
    v[5] = 12;
    npy::write_npy(&big, &Tensor::from_vec(vec![40], v).unwrap()).unwrap();
    let o = lowbit(&["eval", m, "--data", d, "--labels", s(&big)]);
    assert_fails(&o, 1, &["big.npy", "label 12", "row 5", "'probs'", "10 values"]);
    // An output the model does not have: the message lists the ones it has.
    let o = lowbit(&["eval", m, "--data", d, "--output", "logits"]);
    assert_fails(&o, 1, &["model.onnx", "no output 'logits'", "probs (float32 [batch, 10])"]);
    // A reference whose output has another shape: [N, 16] against the model's [N, 10].
    let other = tmp("eval-errors-ref");
    let identity = one_node_model(&other, "Identity", "", &[-1, 16], "probs");
    let o = lowbit(&["eval", m, "--data", d, "--reference", s(&identity)]);
    assert_fails(&o, 1, &["output 'probs'", "Identity.onnx", "[32, 16]", "[32, 10]", "shape"]);
    // A reference without the output scored.
    let relu = one_node_model(&other, "Relu", "", &[-1, 16], "y");
    let o = lowbit(&["eval", m, "--data", d, "--reference", s(&relu)]);
    assert_fails(&o, 1, &["reference", "Relu.onnx", "no output 'probs'", "y (float32"]);
    // Sentence pairs: side b with another sample count; gold scores of the wrong count.
    let b = dir.join("b");
    std::fs::create_dir_all(&b).unwrap();
    let x = npy::read_npy(&data.join("x.npy")).unwrap();
    let v = x.as_f32().unwrap()[..30 * 16].to_vec();
    npy::write_npy(&b.join("x.npy"), &Tensor::from_vec(vec![30, 16], v).unwrap()).unwrap();
    let gold = dir.join("gold.npy");
    npy::write_npy(&gold, &Tensor::from_vec(vec![40], vec![1.0f32; 40]).unwrap()).unwrap();
    let o = lowbit(&["eval", m, "--data", d, "--pairs", s(&b), "--gold", s(&gold)]);
    assert_fails(&o, 1, &["--pairs", "30 samples", "40"]);
    let o = lowbit(&["eval", m, "--data", d, "--pairs", d, "--gold", s(&labels)]);
    assert_fails(&o, 1, &["--gold", "labels.npy", "39 scores", "40 samples"]);
    // Usage errors: --pairs without --gold, --labels with --pairs, --limit 0.
    assert_fails(&lowbit(&["eval", m, "--data", d, "--pairs", d]), 2, &["--gold"]);
    let o =
        lowbit(&["eval", m, "--data", d, "--pairs", d, "--gold", s(&gold), "--labels", s(&gold)]);
    assert_fails(&o, 2, &["--labels"]);
    assert_fails(&lowbit(&["eval", m, "--data", d, "--limit", "0"]), 2, &["--limit"]);
}

/// MNIST through mnist_resnet (uint8 images and the sidecar preprocessing): top-1 equals
/// score.py's on the same rows; a static int8 copy made by `lowbit quantize` against FP32.
#[test]
fn eval_mnist_top1_matches_score_py_and_scores_a_static_copy_against_fp32() {
    let Some((model, spec, mnist)) = mnist_resnet() else { return };
    let dir = tmp("eval-mnist");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::symlink(mnist.join("images.npy"), data.join("input.npy")).unwrap();
    let labels = mnist.join("labels.npy");
    let common = [
        "--data",
        s(&data),
        "--preprocess",
        s(&spec),
        "--labels",
        s(&labels),
        "--limit",
        "500",
        "--latency",
        "20",
    ];
    let mut args = vec![s(&model)];
    args.extend_from_slice(&common);
    let r = eval_json(&args);
    let top1 = f(&r["classification"]["top1"]);
    assert_eq!((r["samples"].as_u64(), r["output"].as_str()), (Some(500), Some("logits")));
    assert!(top1 >= 0.98 && f(&r["classification"]["top5"]) >= top1, "{r}");

    let q = dir.join("resnet.int8.onnx");
    ok(&argv(
        "quantize {} -o {} --data {} --preprocess {} --samples 100",
        &[&model, &q, &data, &spec],
    ));
    let mut args = vec![s(&q)];
    args.extend_from_slice(&common);
    args.extend_from_slice(&["--reference", s(&model)]);
    let rq = eval_json(&args);
    let rf = &rq["reference"];
    let q_top1 = f(&rq["classification"]["top1"]);
    assert_eq!(f(&rf["top1"]), top1, "the reference's own top-1 is the FP32 run's: {rq}");
    assert!(f(&rf["top1_agreement"]) >= 0.98, "{rq}");
    assert!(f(&rf["mean_cosine"]) > 0.999 && f(&rf["noise"]["sqnr_db"]) > 25.0, "{rq}");
    assert!(rq["model_bytes"].as_u64().unwrap() * 2 < rf["model_bytes"].as_u64().unwrap());
    eprintln!(
        "lowbit eval: FP32 top-1 {top1}, int8 top-1 {q_top1}, agreement {}, mean cosine {}, \
         SQNR {} dB",
        rf["top1_agreement"], rf["mean_cosine"], rf["noise"]["sqnr_db"]
    );

    let Some(sp) = score_py(&[s(&model), s(&mnist), "--limit", "500"]) else { return };
    let want = f(&sp["top1"]);
    eprintln!("score.py: FP32 top-1 {want}");
    assert!((top1 - want).abs() <= 1e-4, "lowbit eval top-1 {top1}, score.py {want}");
    let spq = score_py(&[
        s(&q),
        s(&mnist),
        "--config",
        s(&spec),
        "--ref-model",
        s(&model),
        "--limit",
        "500",
    ])
    .unwrap();
    eprintln!("score.py on the int8 copy (ONNX Runtime): {spq}");
    // ONNX Runtime runs the QDQ graph with its own (fused integer) kernels: within a sample or two.
    assert!((q_top1 - f(&spq["top1"])).abs() <= 0.004, "{rq}\n{spq}");
    let cos = f(&spq["mean_output_cosine_with_ref"]);
    assert!((f(&rf["mean_cosine"]) - cos).abs() < 1e-3, "{rq}\n{spq}");
}

/// STS-B dev through paraphrase-MiniLM-L3-v2: Spearman×100 of lowbit eval's sentence-pair task
/// equals score.py's within 0.01 on the first 500 pairs (the full 1500 take about a minute on
/// two cores; that run gave 86.579022 on both sides). Without Python the check is against the
/// ONNX Runtime embeddings stored in the corpus (dev/ref), scored the same way.
#[test]
fn eval_sts_spearman_matches_score_py() {
    let Some(corpus) =
        corpus_with(&["models/paraphrase-MiniLM-L3-v2.onnx", "data/stsb_dev/scores.npy"])
    else {
        return;
    };
    let model = corpus.join("models/paraphrase-MiniLM-L3-v2.onnx");
    let sts = corpus.join("data/stsb_dev");
    const PAIRS: usize = 500;
    let dir = tmp("eval-sts");
    for side in ["a", "b"] {
        let d = dir.join(side);
        std::fs::create_dir_all(&d).unwrap();
        for name in ["input_ids", "attention_mask"] {
            let target = sts.join(format!("{name}_{side}.npy"));
            std::os::unix::fs::symlink(target, d.join(format!("{name}.npy"))).unwrap();
        }
    }
    let gold = sts.join("scores.npy");
    let r = eval_json(&[
        s(&model),
        "--data",
        s(&dir.join("a")),
        "--pairs",
        s(&dir.join("b")),
        "--gold",
        s(&gold),
        "--output",
        "461",
        "--limit",
        &PAIRS.to_string(),
        "--latency",
        "10",
    ]);
    assert_eq!(
        (r["task"].as_str(), r["output_values"].as_u64()),
        (Some("sentence_pairs"), Some(384))
    );
    assert_eq!(r["sentence_pairs"]["pairs"], PAIRS);
    assert_eq!(r["trimmed"], true);
    let got = f(&r["sentence_pairs"]["spearman_x100"]);

    // ONNX Runtime's FP32 embeddings (score.py --save-outputs): rows 0..1500 side a, then b.
    let emb = npy::read_npy(&corpus.join("ref/paraphrase-MiniLM-L3-v2__stsb_dev.emb.npy")).unwrap();
    let e = emb.as_f32().unwrap();
    let row = |i: usize| &e[i * 384..(i + 1) * 384];
    let sims: Vec<f64> =
        (0..PAIRS).map(|i| lowbit_eval::metrics::cosine(row(i), row(1500 + i))).collect();
    let g: Vec<f64> = npy::read_npy(&gold).unwrap().to_f64_vec().unwrap()[..PAIRS].to_vec();
    let stored = 100.0 * lowbit_eval::metrics::spearman(&sims, &g);
    eprintln!("lowbit eval Spearman×100 {got}; from the stored ORT embeddings {stored}");
    assert!((got - stored).abs() < 0.01, "lowbit eval {got}, stored ORT embeddings {stored}");

    let Some(sp) = score_py(&[s(&model), s(&sts), "--limit", &PAIRS.to_string()]) else { return };
    let want = f(&sp["spearman_x100"]);
    eprintln!("score.py Spearman×100 {want}");
    assert!((got - want).abs() < 0.01, "lowbit eval {got}, score.py {want}");
}

/// Calibrating padded rows with a mask input gives exactly the table of per-sample files at
/// their real lengths: padded positions never enter the statistics.
#[test]
fn padded_rows_with_a_mask_calibrate_like_their_real_lengths() {
    let Some((corpus, model)) = dev_model("paraphrase-MiniLM-L3-v2.onnx") else { return };
    let rows = 12;
    let dir = tmp("mask-calibration");
    let (padded, files) = (dir.join("padded"), dir.join("files"));
    std::fs::create_dir_all(&padded).unwrap();
    std::fs::create_dir_all(&files).unwrap();
    let read = |f: &str| npy::read_npy(&corpus.join("data/stsb_dev").join(f)).unwrap();
    let (ids, mask) = (read("input_ids_a.npy"), read("attention_mask_a.npy"));
    let l = ids.shape()[1];
    let (iv, mv) = (ids.as_slice::<i64>().unwrap(), mask.as_slice::<i64>().unwrap());
    let cut = |v: &[i64], r: usize, n: usize| v[r * l..r * l + n].to_vec();
    npy::write_npy(
        &padded.join("input_ids.npy"),
        &Tensor::from_vec(vec![rows, l], cut(iv, 0, rows * l)).unwrap(),
    )
    .unwrap();
    npy::write_npy(
        &padded.join("attention_mask.npy"),
        &Tensor::from_vec(vec![rows, l], cut(mv, 0, rows * l)).unwrap(),
    )
    .unwrap();
    for r in 0..rows {
        let n = mv[r * l..(r + 1) * l].iter().filter(|&&m| m != 0).count();
        let t = |v: &[i64]| Tensor::from_vec(vec![1, n], cut(v, r, n)).unwrap();
        let arrays = [("input_ids".to_string(), t(iv)), ("attention_mask".to_string(), t(mv))];
        npy::write_npz(&files.join(format!("s{r:02}.npz")), &arrays).unwrap();
    }
    let table = |data: &Path| -> serde_json::Value {
        let out = dir.join("ranges.json");
        ok(&["calibrate", s(&model), "--data", s(data), "-o", s(&out), "-q", "-t", "1", "--force"]);
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap()
    };
    let (a, b) = (table(&padded), table(&files));
    assert_eq!(a["batches"], rows, "one run per row");
    assert_eq!(a["tensors"], b["tensors"]);
}

// ---------------------------------------------------------------------------------------------
// lowbit compare and quantize --report

/// The dev corpus folder and its model `name`, or `None` (saying so) without the corpus.
fn dev_model(name: &str) -> Option<(PathBuf, PathBuf)> {
    let corpus = corpus_with(&[&format!("models/{name}")])?;
    let model = corpus.join("models").join(name);
    Some((corpus, model))
}

/// MNIST images `start..end` normalized as mnist_mobilenetv2's sidecar says, as float32
/// `[N, 1, 28, 28]` in `dir/input.npy`; returns `dir`.
fn mnist_normalized(corpus: &Path, dir: &Path, start: usize, end: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let images = npy::read_npy(&corpus.join("data/mnist_test_0-4999/images.npy")).unwrap();
    let v = images.to_f64_vec().unwrap();
    let rows: Vec<f32> =
        v[start * 784..end * 784].iter().map(|&p| ((p / 255.0 - 0.1307) / 0.3081) as f32).collect();
    let t = Tensor::from_vec(vec![end - start, 1, 28, 28], rows).unwrap();
    npy::write_npy(&dir.join("input.npy"), &t).unwrap();
    dir.to_path_buf()
}

/// MobileNetV2-style model with per-tensor weights: `compare` ranks depthwise convs first with
/// the per-channel hint, writes JSON with the documented format and an HTML report with its
/// charts; `quantize --report` writes the same report in one step.
#[test]
fn compare_ranks_depthwise_convs_of_a_per_tensor_mobilenet_first() {
    let Some((corpus, model)) = dev_model("mnist_mobilenetv2.onnx") else { return };
    let dir = tmp("compare");
    let data = |name: &str, start, end| mnist_normalized(&corpus, &dir.join(name), start, end);
    let (calib, eval) = (data("calib", 0, 100), data("eval", 1000, 1040));
    let quant = dir.join("per-tensor.onnx");
    let html = dir.join("quantize-report.html");
    let o = ok(&argv(
        "quantize {} -o {} --data {} --per-tensor --report {} --report-data {} -q",
        &[&model, &quant, &calib, &html, &eval],
    ));
    assert!(stdout(&o).contains("depthwise conv with per-tensor weights"), "{}", stdout(&o));
    let page = std::fs::read_to_string(&html).unwrap();
    for id in ["sqnr-chart", "hist-1", "weight-ranges"] {
        assert!(page.contains(&format!("id=\"{id}\"")), "no {id} in the report");
    }

    let o = ok(&["compare", s(&model), s(&quant), "--data", s(&eval), "--json", "-q"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["format"], "lowbit-compare/1");
    let ranking = r["ranking"].as_array().unwrap();
    let first = &ranking[0];
    assert_eq!(first["op_type"], "Conv", "{first}");
    assert!(first["hint"].as_str().unwrap().contains("per-channel"), "{first}");
    let weights = r["weights"].as_array().unwrap();
    // The top three are depthwise convs (group > 1).
    for l in &ranking[..3] {
        let w = weights.iter().find(|w| w["node"] == l["node"]).unwrap_or_else(|| panic!("{l}"));
        assert!(w["group"].as_i64().unwrap() > 1, "{l} / {w}");
    }
    let out_sqnr = r["outputs"][0]["noise"]["sqnr_db"].as_f64().unwrap();
    assert!((20.0..60.0).contains(&out_sqnr), "output SQNR {out_sqnr}");

    // Errors: a model that is not quantized, and a report path that is an input model.
    let o = lowbit(&["compare", s(&model), s(&model), "--data", s(&eval)]);
    assert_fails(&o, 1, &["no quantized tensor"]);
    let o = lowbit(&argv(
        "quantize {} -o {} --data {} --report {}",
        &[&model, &dir.join("x.onnx"), &calib, &model],
    ));
    assert_fails(&o, 1, &["input model"]);
}

// ---------------------------------------------------------------------------------------------
// Photo folders and raw text

#[test]
fn photo_folders_are_fed_resized_cropped_and_converted() {
    let dir = tmp("photos");
    let model = one_node_model(&dir, "Relu", "", &[-1, 3, 4, 4], "y");
    let photos = dir.join("photos");
    std::fs::create_dir(&photos).unwrap();
    // 6 wide, 4 high: no resize (the shorter side is the model's 4), columns 1..5 kept.
    let img = image::RgbImage::from_fn(6, 4, |x, y| image::Rgb([x as u8 * 40, y as u8 * 40, 200]));
    img.save(photos.join("a.png")).unwrap();
    std::fs::write(photos.join("labels.tsv"), "a.png\t0\n").unwrap();
    let out = dir.join("out");
    ok(&argv("run {} --data {} -o {} --preprocess mean=127,std=128", &[&model, &photos, &out]));
    let y = npy::read_npy(&out.join("y.npy")).unwrap();
    assert_eq!(y.shape(), &[1, 3, 4, 4]);
    let y = y.as_f32().unwrap();
    // NCHW: red of crop column 3 is source column 4 (160); blue is 200 everywhere.
    assert!((y[3] - (160.0 - 127.0) / 128.0).abs() < 1e-6, "{}", y[3]);
    assert!((y[32] - (200.0 - 127.0) / 128.0).abs() < 1e-6, "{}", y[32]);
    assert_eq!(y[0], 0.0, "red 40 maps below 0, through Relu");
}

#[test]
fn bad_photos_labels_and_tokenizers_are_named() {
    let dir = tmp("bad-inputs");
    let model = one_node_model(&dir, "Relu", "", &[-1, 3, 4, 4], "y");
    let photos = dir.join("photos");
    std::fs::create_dir(&photos).unwrap();
    image::RgbImage::new(4, 4).save(photos.join("a.png")).unwrap();
    std::fs::write(photos.join("b.jpg"), b"\xff\xd8\xff not a jpeg").unwrap();
    let labels = photos.join("labels.tsv");
    std::fs::write(&labels, "a.png\t0\nb.jpg\t1\n").unwrap();
    let out = dir.join("out");
    let run = |data: &Path, extra: &str| {
        let mut a = argv("-q run {} --data {} -o {}", &[&model, data, &out]);
        a.extend(extra.split(' ').filter(|w| !w.is_empty()).map(std::ffi::OsString::from));
        lowbit(&a)
    };
    assert_fails(&run(&photos, "--preprocess mean=127,std=128 --force"), 1, &["b.jpg", "decode"]);
    std::fs::write(&labels, "a.png\t0\nmissing.png\t1\n").unwrap();
    assert_fails(
        &run(&photos, "--preprocess mean=127,std=128 --force"),
        1,
        &["labels.tsv:2", "missing.png"],
    );
    std::fs::write(&labels, "a.png\n").unwrap();
    assert_fails(&run(&photos, "--preprocess mean=127,std=128 --force"), 1, &["labels.tsv:1"]);

    // Raw text through a file that is not a tokenizer.json.
    let text_model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(pb::GraphProto {
            name: "ids".into(),
            node: vec![pb::NodeProto {
                op_type: "Identity".into(),
                input: vec!["input_ids".into()],
                output: vec!["ids".into()],
                ..Default::default()
            }],
            input: vec![value_info("input_ids", 7, &[-1, -1])],
            output: vec![value_info("ids", 7, &[-1, -1])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let text_path = dir.join("ids.onnx");
    lowbit_onnx::save_model(&text_model, &text_path).unwrap();
    let sentences = dir.join("s.txt");
    std::fs::write(&sentences, "A man is dancing.\n").unwrap();
    let not_tokenizer = dir.join("not-a-tokenizer.json");
    std::fs::write(&not_tokenizer, "{\"vocab\": []}").unwrap();
    let o = lowbit(&argv(
        "run {} --data {} -o {} --tokenizer {}",
        &[&text_path, &sentences, &out, &not_tokenizer],
    ));
    assert_fails(&o, 1, &["not-a-tokenizer.json", "tokenizer"]);
    // Raw text without a tokenizer is a usage error.
    let o = lowbit(&argv("run {} --data {} -o {}", &[&text_path, &sentences, &out]));
    assert_fails(&o, 2, &["--tokenizer"]);
}

/// `--per-tensor --equalize --bias-correction` (7-bit weights) on a MobileNetV2 (depthwise
/// convs, ReLU6 as Clip): the summary lists both steps with the layers they changed, `compare`
/// measures the equalized model against the FP32 graph equalized the same way (its activations
/// are scaled per channel), and the output is closer to FP32 than with `--per-tensor` alone.
#[test]
fn equalization_and_bias_correction_bring_per_tensor_weights_closer_to_fp32() {
    let Some((corpus, model)) = dev_model("mnist_mobilenetv2.onnx") else { return };
    let dir = tmp("recovery");
    let calib = mnist_normalized(&corpus, &dir.join("calib"), 0, 100);
    let eval = mnist_normalized(&corpus, &dir.join("eval"), 1000, 1100);
    let output_sqnr = |quant: &Path| -> (f64, serde_json::Value) {
        let o = ok(&["compare", s(&model), s(quant), "--data", s(&eval), "--json", "-q"]);
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (r["outputs"][0]["noise"]["sqnr_db"].as_f64().unwrap(), r)
    };

    // 7-bit weights (--reduce-range): this MNIST model's channel ranges differ by 5x at most,
    // so only with the coarser grid do per-tensor scales starve its small channels (with 8
    // bits both land within 0.3 dB of each other).
    let plain = dir.join("per-tensor.onnx");
    ok(&argv(
        "quantize {} -o {} --data {} --per-tensor --reduce-range -q",
        &[&model, &plain, &calib],
    ));
    let (plain_sqnr, _) = output_sqnr(&plain);

    let recovered = dir.join("recovered.onnx");
    let o = ok(&argv(
        "quantize {} -o {} --data {} --per-tensor --reduce-range --equalize --bias-correction -q",
        &[&model, &recovered, &calib],
    ));
    let text = stdout(&o);
    // 9 inverted residual blocks: expand → depthwise → project chains, the stem and the head.
    assert!(text.contains("equalize: ") && !text.contains("equalize: 0 layer pairs"), "{text}");
    assert!(text.contains("bias-correction: ") && !text.contains(": 0 biases"), "{text}");
    let (sqnr, r) = output_sqnr(&recovered);
    assert!(sqnr > plain_sqnr, "output SQNR {sqnr:.1} dB, per-tensor alone {plain_sqnr:.1} dB");

    // The summary carried in the model: each step with per-layer before/after figures.
    let steps = r["quantization"]["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|st| st["step"].as_str().unwrap()).collect();
    assert_eq!(names, ["equalize", "bias-correction"]);
    for st in steps {
        let layers = st["layers"].as_array().unwrap();
        assert!(!layers.is_empty(), "{st}");
        let changed = layers.iter().filter(|l| l["before"] != l["after"]).count();
        assert!(changed * 2 > layers.len(), "most layers change: {st}");
    }
    // Equalization makes channel ranges more uniform; bias correction shrinks the shift.
    let mean = |st: &serde_json::Value, k: &str| {
        let l = st["layers"].as_array().unwrap();
        l.iter().map(|x| x[k].as_f64().unwrap()).sum::<f64>() / l.len() as f64
    };
    assert!(mean(&steps[0], "after") > mean(&steps[0], "before"), "{}", steps[0]);
    assert!(mean(&steps[1], "after") < mean(&steps[1], "before"), "{}", steps[1]);
    // Activations are matched with the equalized FP32 graph: none is far off.
    for a in r["activations"].as_array().unwrap() {
        let db = a["isolated"]["sqnr_db"].as_f64().unwrap_or(f64::INFINITY);
        assert!(db > 20.0, "{}: isolated SQNR {db}", a["tensor"]);
    }
}

/// MNIST labels `start..end` as int64 `[N]` in `dir/labels.npy`; returns the file.
fn mnist_labels(corpus: &Path, dir: &Path, start: usize, end: usize) -> PathBuf {
    let labels = npy::read_npy(&corpus.join("data/mnist_test_0-4999/labels.npy")).unwrap();
    let v: Vec<i64> = labels.to_f64_vec().unwrap()[start..end].iter().map(|&l| l as i64).collect();
    let path = dir.join("labels.npy");
    npy::write_npy(&path, &Tensor::from_vec(vec![v.len()], v).unwrap()).unwrap();
    path
}

/// Every calibration method on a MobileNetV2 (ReLU6 as Clip, depthwise convs): each keeps top-1
/// on 1000 held-back digits within 2 pt of FP32, or the validation gate refuses the file (exit
/// 4, nothing written). A method is never allowed to write a collapsed model and exit 0.
#[test]
fn every_calibration_method_keeps_top1_within_2_points_or_refuses() {
    let Some((corpus, model)) = dev_model("mnist_mobilenetv2.onnx") else { return };
    let dir = tmp("methods");
    let calib = mnist_normalized(&corpus, &dir.join("calib"), 0, 100);
    let eval = mnist_normalized(&corpus, &dir.join("eval"), 1000, 2000);
    let labels = mnist_labels(&corpus, &eval, 1000, 2000);
    let top1 = |m: &Path| -> f64 {
        let o = ok(&["eval", s(m), "--data", s(&eval), "--labels", s(&labels), "--json", "-q"]);
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        100.0 * r["classification"]["top1"].as_f64().unwrap()
    };
    let fp32 = top1(&model);
    assert!(fp32 > 90.0, "FP32 top-1 {fp32}");
    for method in ["minmax", "moving-average", "percentile", "entropy", "mse"] {
        let out = dir.join(format!("{method}.onnx"));
        let o = lowbit(&argv(
            &format!("quantize {{}} -o {{}} --data {{}} --method {method} -q"),
            &[&model, &out, &calib],
        ));
        match o.status.code() {
            Some(0) => {
                let q = top1(&out);
                eprintln!("--method {method}: top-1 {q:.2} (FP32 {fp32:.2})");
                assert!(q >= fp32 - 2.0, "--method {method}: top-1 {q:.2} vs FP32 {fp32:.2}");
            }
            Some(4) => {
                assert!(!out.exists(), "--method {method} refused but wrote {}", out.display());
                assert!(stderr(&o).contains("fails validation"), "{}", stderr(&o));
            }
            code => panic!("--method {method}: exit {code:?}: {}", stderr(&o)),
        }
    }
}

/// EfficientNet-Lite0 on real photos with `--method entropy`: entropy's KL search clips the
/// spike of saturated values at a ReLU6's 6 and once turned this model into a one-class
/// classifier (0.08 % top-1) while quantize exited 0. Those ranges now keep min-max and the
/// summary says so; the written model agrees with FP32 on photos it was not calibrated on, and
/// `--validate 8` validates 8 samples, not a whole batch.
#[test]
fn entropy_calibration_keeps_efficientnet_lite0_from_collapsing() {
    let Some((corpus, model)) = dev_model("efficientnet-lite0.onnx") else { return };
    let photos = corpus.join("data/imagenet_sample1000");
    if !photos.join("labels.tsv").is_file() {
        eprintln!("skipped: {} not found", photos.display());
        return;
    }
    let sidecar = corpus.join("models/efficientnet-lite0.json");
    let dir = tmp("entropy-efficientnet");
    let out = dir.join("entropy.onnx");
    let o = ok(&argv(
        "quantize {} -o {} --data {} --samples 16 --validate 8 --method entropy --preprocess {}",
        &[&model, &out, &photos, &sidecar],
    ));
    let text = stdout(&o);
    assert!(text.contains("kept the min-max range: the entropy range clipped too much"), "{text}");
    assert!(text.contains("validation on 8 held-back samples"), "{text}");
    let o = ok(&argv(
        "eval {} --data {} --preprocess {} --reference {} --limit 64 --latency 0 --json -q",
        &[&out, &photos, &sidecar, &model],
    ));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let agree = r["reference"]["top1_agreement"].as_f64().unwrap();
    let (q, f) =
        (r["classification"]["top1"].as_f64().unwrap(), r["reference"]["top1"].as_f64().unwrap());
    eprintln!("entropy: top-1 {q:.3} vs FP32 {f:.3}, agreement {agree:.3} on 64 photos");
    assert!(agree >= 0.9, "top-1 agreement with FP32 {agree}: {r}");
    assert!(q >= f - 0.05, "top-1 {q} vs FP32 {f}");
}

/// AdaRound on int4 per-channel weights (W4A8) of a corpus CNN: the summary reports the output
/// error it removed per layer, and the written model's output is closer to FP32 than
/// round-to-nearest's on digits it did not learn on.
#[test]
fn adaround_int4_weights_are_closer_to_fp32_than_round_to_nearest() {
    let Some((corpus, model)) = dev_model("mnist_mobilenetv2.onnx") else { return };
    let dir = tmp("adaround");
    let calib = mnist_normalized(&corpus, &dir.join("calib"), 0, 64);
    let eval = mnist_normalized(&corpus, &dir.join("eval"), 1000, 1200);
    let output_sqnr = |quant: &Path| -> f64 {
        let o = ok(&["compare", s(&model), s(quant), "--data", s(&eval), "--json", "-q"]);
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        r["outputs"][0]["noise"]["sqnr_db"].as_f64().unwrap()
    };
    let rtn = dir.join("rtn.onnx");
    ok(&argv(
        "quantize {} -o {} --data {} --weights int4 --block-size 0 --allow-degraded -q",
        &[&model, &rtn, &calib],
    ));
    let learned = dir.join("adaround.onnx");
    let o = ok(&argv(
        "quantize {} -o {} --data {} --weights int4 --block-size 0 --adaround --adaround-iters 300 \
         --allow-degraded",
        &[&model, &learned, &calib],
    ));
    let text = stdout(&o);
    let line =
        text.lines().find(|l| l.starts_with("adaround: ")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("output MSE"), "{line}");
    // The stem and the classifier keep int8 weights unless --int4-ends.
    assert!(text.contains("plan: int8 weights for the first and last weighted layers ("), "{text}");
    let (a, b) = (output_sqnr(&rtn), output_sqnr(&learned));
    eprintln!("W4A8 output SQNR: round-to-nearest {a:.2} dB, AdaRound {b:.2} dB");
    assert!(b > a + 3.0, "AdaRound {b:.2} dB vs round-to-nearest {a:.2} dB");
}

/// SmoothQuant on MiniLM static int8 (per-tensor activations): with α = 0.5 the sentence
/// embeddings of sentences it was not calibrated on are closer to FP32 than without it (the
/// FFN's GELU output and the attention inputs have outlier channels).
#[test]
fn smooth_quant_brings_minilm_static_int8_closer_to_fp32() {
    let Some((corpus, model)) = dev_model("paraphrase-MiniLM-L3-v2.onnx") else { return };
    let dir = tmp("smooth-quant");
    let read = |f: &str| npy::read_npy(&corpus.join("data/stsb_dev").join(f)).unwrap();
    let (ids, mask) = (read("input_ids_a.npy"), read("attention_mask_a.npy"));
    let l = ids.shape()[1];
    let rows = |name: &str, start: usize, end: usize| -> PathBuf {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (t, f) in [(&ids, "input_ids.npy"), (&mask, "attention_mask.npy")] {
            let v = t.as_slice::<i64>().unwrap()[start * l..end * l].to_vec();
            npy::write_npy(&d.join(f), &Tensor::from_vec(vec![end - start, l], v).unwrap())
                .unwrap();
        }
        d
    };
    let (calib, eval) = (rows("calib", 0, 100), rows("eval", 1000, 1200));
    let sqnr = |quant: &Path| -> (f64, f64) {
        let o = ok(&argv(
            "eval {} --data {} --reference {} --output 461 --latency 0 --json -q",
            &[quant, &eval, &model],
        ));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let rf = &r["reference"];
        (rf["noise"]["sqnr_db"].as_f64().unwrap(), rf["mean_cosine"].as_f64().unwrap())
    };
    let plain = dir.join("plain.onnx");
    ok(&argv("quantize {} -o {} --data {} -q", &[&model, &plain, &calib]));
    let smoothed = dir.join("smoothed.onnx");
    let o =
        ok(&argv("quantize {} -o {} --data {} --smooth-quant 0.5", &[&model, &smoothed, &calib]));
    let text = stdout(&o);
    assert!(text.contains("smooth-quant: alpha 0.5: smoothed "), "{text}");
    let ((a, ca), (b, cb)) = (sqnr(&plain), sqnr(&smoothed));
    eprintln!("MiniLM static int8 embedding SQNR: plain {a:.2} dB (cosine {ca:.4}), SmoothQuant 0.5 {b:.2} dB (cosine {cb:.4})");
    assert!(b > a + 1.5, "SmoothQuant {b:.2} dB vs plain {a:.2} dB");
    assert!(cb > 0.995, "mean cosine {cb}");
}

#[test]
fn tune_writes_the_chosen_model_its_json_and_report_and_refuses_bad_settings() {
    let dir = example("tune");
    let (model, data) = (dir.join("model.onnx"), dir.join("data"));
    let (out, json, html) = (dir.join("tuned.onnx"), dir.join("tune.json"), dir.join("tune.html"));
    let o = ok(&argv(
        "tune {} -o {} --data {} --eval-data {} --reference-only --max-drop 5 --objective size \
         --candidates int4,int8,fp32 --latency 0 --batch 4 --threads 1 --json-out {} --report {}",
        &[&model, &out, &data, &data, &json, &html],
    ));
    let text = stdout(&o);
    assert!(text.contains("Pareto front") && text.contains("held out"), "{text}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["format"], "lowbit-tune/1");
    assert_eq!(r["metric"], "top1");
    assert!(r["against"].as_str().unwrap().contains("agreement"));
    // Agreement with FP32: the FP32 model agrees with itself.
    assert_eq!(r["reference_metric"], 100.0);
    let c = r["chosen"].as_u64().expect("a configuration within budget") as usize;
    let chosen = &r["evaluated"][c];
    assert!(chosen["drop"].as_f64().unwrap() <= 5.0 && chosen["meets_budget"] == true);
    // The written model is the chosen one, and runs.
    assert_eq!(std::fs::metadata(&out).unwrap().len(), chosen["bytes"].as_u64().unwrap());
    ok(&argv("run {} --data {} -o {}", &[&out, &data, &dir.join("outs")]));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg id=\"pareto-chart\"") && page.contains("id=\"precision-map\""));

    // Bad settings are usage errors, before any work.
    let bad = lowbit(&argv(
        "tune {} -o {} --data {} --eval-data {} --candidates int8,int3",
        &[&model, &dir.join("x.onnx"), &data, &data],
    ));
    assert_fails(&bad, 2, &["int3"]);
    let again = lowbit(&argv(
        "tune {} -o {} --data {} --eval-data {} --reference-only",
        &[&model, &out, &data, &data],
    ));
    assert_fails(&again, 1, &["already exists", "--force"]);
    // `--json` prints the report on stdout instead of the text, as every command's `--json`.
    let printed = ok(&argv(
        "tune {} -o {} --data {} --eval-data {} --reference-only --max-drop 5 --objective size \
         --candidates int4,int8,fp32 --latency 0 --batch 4 --threads 1 --json --force",
        &[&model, &out, &data, &data],
    ));
    let p: serde_json::Value = serde_json::from_slice(&printed.stdout).unwrap();
    assert_eq!(p["format"], "lowbit-tune/1");
    assert_eq!(p["chosen"], r["chosen"]);
    assert_eq!(p["evaluated"].as_array().unwrap().len(), r["evaluated"].as_array().unwrap().len());
}

// ---------------------------------------------------------------------------------------------
// Deployment (issue 17): check against target profiles, doctor, OpenVINO

/// ONNX Runtime's `quantize_static` (QDQ, int8 weights per tensor, min-max) on the example
/// model, calibrated on its `data/x.npy`: with its default activation type (`None`; asymmetric
/// int8 in ORT 1.32) or the one named (`QUInt8`: uint8, the classic default).
fn ort_quantize_static(python: &str, model: &Path, data: &Path, out: &Path, act: Option<&str>) {
    let script = r#"
import sys, numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static
model, out, x, act = sys.argv[1], sys.argv[2], np.load(sys.argv[3]), sys.argv[4]
rows = iter([{"x": x[i:i + 8]} for i in range(0, len(x), 8)])
class Reader(CalibrationDataReader):
    def get_next(self):
        return next(rows, None)
kw = {} if act == "default" else {"activation_type": getattr(QuantType, act)}
quantize_static(model, out, Reader(), **kw)
"#;
    let o = Command::new(python)
        .args(["-c", script])
        .arg(model)
        .arg(out)
        .arg(data.join("x.npy"))
        .arg(act.unwrap_or("default"))
        .output()
        .unwrap();
    assert!(o.status.success(), "ORT quantize_static: {}", stderr(&o));
}

fn check_json(model: &Path, target: &str) -> (Option<i32>, serde_json::Value) {
    let o = lowbit(&["check", s(model), "--target", target, "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("check --json: {e}: {}{}", stdout(&o), stderr(&o)));
    (o.status.code(), j)
}

#[test]
fn check_flags_onnx_runtimes_uint8_qdq_for_tensorrt_and_passes_lowbits_own() {
    let dir = example64("check-trt");
    let (model, data) = (dir.join("model.onnx"), dir.join("data"));
    let ours = dir.join("trt.onnx");
    ok(&argv("quantize {} -o {} --data {} --target tensorrt", &[&model, &ours, &data]));
    let (code, j) = check_json(&ours, "tensorrt");
    assert_eq!(code, Some(0), "{j}");
    assert_eq!((j["errors"].as_u64(), j["target"].as_str()), (Some(0), Some("tensorrt")), "{j}");
    assert_eq!(j["quantized_layers"], j["weighted_layers"], "{j}");
    let text = stdout(&ok(&["check", s(&ours), "--target", "tensorrt"]));
    assert!(text.contains("target tensorrt (--target)") && text.contains("0 errors"), "{text}");

    let Some(python) = ort_python() else { return };
    // uint8 activations: one activation-type error per quantized activation, at its
    // QuantizeLinear, naming the tensor (the input x, the MatMul outputs, the Relu output).
    let uint8 = dir.join("ort-uint8.onnx");
    ort_quantize_static(&python, &model, &data, &uint8, Some("QUInt8"));
    let o = lowbit(&["check", s(&uint8), "--target", "tensorrt"]);
    assert_fails(&o, 6, &["error", "against target tensorrt's rules"]);
    let text = stdout(&o);
    let acts: Vec<&str> =
        text.lines().filter(|l| l.starts_with("error [activation-type]")).collect();
    assert!(acts.len() >= 4, "{text}");
    for l in &acts {
        assert!(l.contains("(QuantizeLinear) tensor '") && l.contains("uint8 activations"), "{l}");
        assert!(l.contains("no uint8"), "the reason is given: {l}");
    }
    for t in ["x", "hidden"] {
        assert!(acts.iter().any(|l| l.contains(&format!("tensor '{t}'"))), "{t}: {text}");
    }
    let (code, j) = check_json(&uint8, "tensorrt");
    assert_eq!(code, Some(6));
    assert!(j["errors"].as_u64().unwrap() >= acts.len() as u64, "{j}");
    // ORT's default today (asymmetric int8): the zero points break the rule instead.
    let default = dir.join("ort-default.onnx");
    ort_quantize_static(&python, &model, &data, &default, None);
    let (code, j) = check_json(&default, "tensorrt");
    assert_eq!(code, Some(6), "{j}");
    let rules: Vec<&str> =
        j["findings"].as_array().unwrap().iter().filter_map(|f| f["rule"].as_str()).collect();
    assert!(rules.iter().any(|r| *r == "activation-type" || *r == "activation-zero-point"), "{j}");
    // ORT's files are what ORT runs: no error for its own runtime.
    for f in [&uint8, &default] {
        let (code, j) = check_json(f, "ort-vnni");
        assert_eq!((code, j["errors"].as_u64()), (Some(0), Some(0)), "{j}");
    }
}

#[test]
fn dynamic_quantization_is_refused_for_tensorrt_and_warned_about_for_openvino() {
    let dir = example64("check-dynamic");
    let model = dir.join("model.onnx");
    let q = dir.join("dyn.onnx");
    let o = lowbit(&argv("quantize {} -o {} --mode dynamic --target tensorrt", &[&model, &q]));
    assert_fails(&o, 2, &["tensorrt", "DynamicQuantizeLinear"]);
    assert!(!q.exists());
    let o = ok(&argv("quantize {} -o {} --mode dynamic --target openvino", &[&model, &q]));
    let out = stdout(&o);
    assert!(out.contains("warning: target openvino") && out.contains("slower"), "{out}");
    let (code, j) = check_json(&q, "openvino");
    assert_eq!((code, j["errors"].as_u64()), (Some(0), Some(0)), "{j}");
    let findings = j["findings"].as_array().unwrap();
    assert!(findings.iter().any(|f| f["rule"] == "dynamic" && f["severity"] == "warning"), "{j}");
    let (code, j) = check_json(&q, "tensorrt");
    assert_eq!(code, Some(6));
    assert!(j["findings"].as_array().unwrap().iter().any(|f| f["rule"] == "dynamic"
        && f["severity"] == "error"
        && f["node"].as_str().is_some_and(|n| !n.is_empty())));
    // A float model checks clean but is said to be float.
    let (code, j) = check_json(&model, "tensorrt");
    assert_eq!(code, Some(0));
    assert_eq!(j["findings"][0]["rule"], "not-quantized", "{j}");
    assert_fails(&lowbit(&["check", s(&dir.join("none.onnx"))]), 1, &["none.onnx"]);
    assert_fails(&lowbit(&["check", s(&model), "--target", "tpu"]), 2, &["tpu"]);
}

#[test]
fn doctor_reports_the_isa_the_auto_target_and_a_measured_speedup() {
    let o = ok(&["doctor", "--size", "64", "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let auto = j["auto_target"].as_str().unwrap();
    assert!(["ort-avx2", "ort-vnni", "arm"].contains(&auto), "{j}");
    assert!(j["auto_reason"].as_str().unwrap().starts_with("auto: "), "{j}");
    let features = j["features"].as_array().unwrap();
    let has = |n: &str| features.iter().any(|f| f["name"] == n && f["present"] == true);
    if cfg!(target_arch = "x86_64") {
        assert!(features.iter().any(|f| f["name"] == "avx512vnni"), "{j}");
        // auto follows the ISA: VNNI of either width means 8-bit weights.
        assert_eq!(auto == "ort-vnni", has("avx512vnni") || has("avxvnni"), "{j}");
        assert_eq!(j["kernels"] == "Avx512Vnni", has("avx512vnni") && has("avx512bw"), "{j}");
    }
    let sp = &j["speedup"];
    assert_eq!((sp["size"].as_u64(), sp["threads"].as_u64()), (Some(64), Some(1)));
    for k in ["f32_gmacs", "int8_gmacs", "int8_7bit_gmacs", "int8_over_f32"] {
        assert!(f64_at(sp, &[k]) > 0.0, "{k}: {j}");
    }
    let text = stdout(&ok(&["doctor", "--size", "64"]));
    assert!(text.contains("--target auto: ") && text.contains("int8 speed-up here: "), "{text}");
}

/// OpenVINO (the `openvino` package in `LOWBIT_PYTHON`'s environment) runs lowbit's
/// `--target openvino` static int8 files for EfficientNet-Lite0 and MiniLM with their accuracy,
/// through `bench/openvino_int8.py`; int8 and FP32 latency in OpenVINO are measured and printed.
#[test]
fn openvino_runs_lowbits_static_int8_files_with_their_accuracy() {
    let Some(python) = ort_python() else { return };
    let has_ov = Command::new(&python).args(["-c", "import openvino"]).output();
    if !has_ov.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: openvino is not installed for {python} (scripts/setup-test-env.sh)");
        return;
    }
    if corpus_with(&["models/efficientnet-lite0.onnx"]).is_none() {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/openvino_int8.py");
    let o = Command::new(&python)
        .arg(&script)
        .args(["--lowbit", env!("CARGO_BIN_EXE_lowbit"), "--threads", "1"])
        .args(["--runs", "30", "--rounds", "3", "--limit-pairs", "500", "--json"])
        .env("LOWBIT_SHARED", shared_dir())
        .output()
        .unwrap();
    assert!(o.status.success(), "bench/openvino_int8.py: {}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let results = j["results"].as_array().unwrap();
    let eff = &results[0];
    let (f, q) = (f64_at(eff, &["fp32_top1"]), f64_at(eff, &["int8_top1"]));
    println!(
        "OpenVINO {}: EfficientNet-Lite0 on {} photos: top-1 FP32 {f:.2}, int8 {q:.2}; \
         latency FP32 {:.2} ms, int8 {:.2} ms ({:.2}x), 1 thread",
        j["openvino"],
        eff["photos"],
        f64_at(eff, &["fp32_ms"]),
        f64_at(eff, &["int8_ms"]),
        f64_at(eff, &["speedup"])
    );
    assert_eq!(eff["photos"].as_u64(), Some(900));
    assert!(f > 80.0, "FP32 top-1 {f} in OpenVINO");
    assert!(q >= f - 0.5, "int8 top-1 {q} vs FP32 {f} in OpenVINO");
    assert!(f64_at(eff, &["agreement"]) > 95.0, "{eff}");
    // MiniLM: OpenVINO 2025.4 cannot compile the corpus' FP32 file (its pooling head), so the
    // reference embeddings come from ONNX Runtime; lowbit's static file must compile and keep
    // the score.
    let lm = &results[1];
    let (f, s) = (f64_at(lm, &["fp32_ort_spearman"]), f64_at(lm, &["static_spearman"]));
    println!(
        "OpenVINO: MiniLM on {} STS-B pairs: Spearman FP32 (ONNX Runtime) {f:.2}, static int8 \
         {s:.2} (cosine {:.4}), {:.2} ms; FP32 in OpenVINO: {}; dynamic in OpenVINO: {}",
        lm["pairs"],
        f64_at(lm, &["static_cosine"]),
        f64_at(lm, &["static_ms"]),
        lm.get("fp32_error").map_or_else(|| format!("{} ms", lm["fp32_ms"]), |e| e.to_string()),
        lm.get("dynamic_error")
            .map_or_else(|| format!("{} ms", lm["dynamic_ms"]), |e| e.to_string()),
    );
    assert!(lm.get("static_error").is_none(), "{lm}");
    assert!(f > 80.0, "FP32 Spearman {f}");
    assert!(s >= f - 1.0, "static int8 Spearman {s} in OpenVINO vs FP32 {f}");
    assert!(f64_at(lm, &["static_cosine"]) > 0.98, "{lm}");
}

#[test]
fn qat_trains_the_example_model_and_writes_a_qdq_file() {
    let dir = tmp("qat");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    ok(&["example-model", &s(&dir), "--samples", "120"]);
    let (model, data, out, ptq) =
        (dir.join("model.onnx"), dir.join("data"), dir.join("qat.onnx"), dir.join("ptq.onnx"));
    let args = argv(
        "qat {} -o {} --data {} --weights int4 --epochs 3 --batch 16 --samples 80 --eval-data {} --eval-from 80 --ptq-output {} --json",
        &[&model, &out, &data, &data, &ptq],
    );
    let o = ok(&args);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("one JSON object");
    assert_eq!(v["weights"], "int4");
    assert_eq!(v["train_samples"].as_u64().unwrap() + v["holdout_samples"].as_u64().unwrap(), 80);
    assert_eq!(v["eval_samples"], 40);
    let eval = v["eval"].as_array().unwrap();
    assert_eq!(eval.len(), 3);
    assert!(v["holdout_loss_qat"].as_f64().unwrap() <= v["holdout_loss_ptq"].as_f64().unwrap());
    // Both files are QDQ models lowbit's engine runs.
    for f in [&out, &ptq] {
        let o = ok(&argv("run {} --data {} -o {} --force", &[f, &data, &dir.join("outs")]));
        assert!(o.status.success());
        let m = lowbit_onnx::load_model(f).unwrap();
        assert!(m.graph.unwrap().node.iter().any(|n| n.op_type == "DequantizeLinear"));
    }
    // The output is checked before any work: an existing file needs --force.
    let again = lowbit(&args);
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
}
