//! `lowbit serve` over real HTTP on loopback (a plain HTTP/1.1 client on `std::net`): the
//! example model quantized with its calibration record, JSON and .npy requests answered with
//! the engine's own outputs, bad requests answered 400 with a message naming the input, and
//! `/metrics` in Prometheus text format whose per-tensor counters see saturation and drift;
//! with `--adaptive`, saturating samples re-run on the float path come out closer to FP32.

use lowbit_engine::{Session, SessionOptions};
use lowbit_tensor::{npy, Tensor};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

mod common;
use common::{ok, s};

/// A running `lowbit serve`, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lowbit"))
            .args(["serve", s(model), "--port", "0", "-t", "1"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("first line: {line:?}"))
            .to_string();
        Server { child, addr }
    }

    /// One request (`Connection: close`); the status and the body.
    fn request(&self, method: &str, path: &str, ctype: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut c = TcpStream::connect(&self.addr).unwrap();
        write!(
            c,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {ctype}\r\nContent-Length: \
             {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        )
        .unwrap();
        c.write_all(body).unwrap();
        let mut raw = Vec::new();
        c.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header");
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = raw[split + 4..].to_vec();
        // The server answers with a length, never chunked, for these bodies.
        assert!(!head.to_ascii_lowercase().contains("chunked"), "{head}");
        (status, body)
    }

    fn post_json(&self, v: &serde_json::Value) -> (u16, serde_json::Value) {
        let (code, body) =
            self.request("POST", "/v1/run", "application/json", v.to_string().as_bytes());
        (code, serde_json::from_slice(&body).unwrap())
    }

    fn metrics(&self) -> String {
        let (code, body) = self.request("GET", "/metrics", "text/plain", b"");
        assert_eq!(code, 200);
        String::from_utf8(body).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the sample line `series` (name with labels) in Prometheus text.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .parse()
        .unwrap()
}

fn rows_json(x: &[f32], width: usize) -> serde_json::Value {
    serde_json::json!(x.chunks(width).map(|r| r.to_vec()).collect::<Vec<_>>())
}

fn outputs(v: &serde_json::Value, name: &str) -> (Vec<usize>, Vec<f32>) {
    let o = &v["outputs"][name];
    let shape = o["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize);
    let data = o["data"].as_array().unwrap().iter().map(|d| d.as_f64().unwrap() as f32);
    (shape.collect(), data.collect())
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn engine(model: &Path, x: &Tensor) -> Vec<f32> {
    let m = lowbit_onnx::load_model(model).unwrap();
    let sess = Session::new(&m, &SessionOptions::with_threads(1)).unwrap();
    let out = sess.run(vec![("x".into(), x.clone())]).unwrap();
    out[0].1.as_f32().unwrap().to_vec()
}

fn scratch() -> (tempfile::TempDir, PathBuf, PathBuf, Tensor) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    ok(&["example-model", s(&d), "--samples", "64"]);
    let fp32 = d.join("model.onnx");
    let q = d.join("model.int8.onnx");
    ok(&["quantize", s(&fp32), "-o", s(&q), "--data", s(&d.join("data")), "-q"]);
    let x = npy::read_npy(&d.join("data/x.npy")).unwrap();
    (dir, fp32, q, x)
}

#[test]
fn serve_answers_json_and_npy_rejects_bad_inputs_and_exports_metrics() {
    let (_dir, _fp32, q, x) = scratch();
    let server = Server::start(&q, &[]);
    let xs = x.as_f32().unwrap();

    // JSON, nested rows: the engine's own outputs.
    let two = Tensor::from_vec(vec![2, 16], xs[..32].to_vec()).unwrap();
    let (code, v) =
        server.post_json(&serde_json::json!({ "inputs": { "x": rows_json(&xs[..32], 16) } }));
    assert_eq!(code, 200, "{v}");
    let (shape, probs) = outputs(&v, "probs");
    assert_eq!(shape, vec![2, 10]);
    assert_eq!(v["outputs"]["probs"]["dtype"], "float32");
    assert!(max_diff(&probs, &engine(&q, &two)) < 1e-6);
    assert_eq!(v["samples"], 2);

    // JSON, shape and flat data; and a .npy body for the only input.
    let (code, v) = server.post_json(
        &serde_json::json!({ "inputs": { "x": { "shape": [2, 16], "data": xs[..32].to_vec() } } }),
    );
    assert_eq!(code, 200, "{v}");
    assert!(max_diff(&outputs(&v, "probs").1, &probs) < 1e-6);
    let (code, body) =
        server.request("POST", "/v1/run", "application/x-npy", &npy::encode_npy(&x).unwrap());
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(code, 200, "{v}");
    let (shape, all) = outputs(&v, "probs");
    assert_eq!(shape, vec![64, 10]);
    assert!(max_diff(&all, &engine(&q, &x)) < 1e-6);

    // Bad requests: 400 with a message naming what is wrong.
    let (code, v) = server.post_json(&serde_json::json!({ "inputs": { "nope": [[1.0]] } }));
    assert_eq!(code, 400);
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("'nope'") && e.contains('x'), "{e}");
    let (code, v) = server.post_json(&serde_json::json!({ "inputs": { "x": [[1.0, 2.0, 3.0]] } }));
    assert_eq!(code, 400);
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("'x'") && e.contains("[1, 3]"), "{e}");
    let (code, v) =
        server.post_json(&serde_json::json!({ "inputs": { "x": [[1.0], [2.0, 3.0]] } }));
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().contains("ragged"), "{v}");
    let (code, body) = server.request("POST", "/v1/run", "application/json", b"{not json");
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&body));
    let (code, _) = server.request("POST", "/v1/run", "application/x-npy", b"garbage");
    assert_eq!(code, 400);

    // Metrics: the requests, the latency histogram, and the watched tensors without drift on
    // the calibration rows themselves.
    let m = server.metrics();
    assert_eq!(sample(&m, "lowbit_requests_total{code=\"200\"}"), 3.0);
    assert_eq!(sample(&m, "lowbit_requests_total{code=\"400\"}"), 5.0);
    assert_eq!(sample(&m, "lowbit_run_duration_seconds_count"), 3.0);
    assert_eq!(sample(&m, "lowbit_run_duration_seconds_bucket{le=\"+Inf\"}"), 3.0);
    assert_eq!(sample(&m, "lowbit_samples_total"), 68.0);
    assert!(sample(&m, "lowbit_tensor_values_total{tensor=\"x\"}") >= 68.0 * 16.0);
    assert!(m.contains("# TYPE lowbit_tensor_psi gauge"), "{m}");
    assert!(sample(&m, "lowbit_tensor_psi{tensor=\"x\"}") < 0.1, "{m}");
    assert_eq!(sample(&m, "lowbit_drift"), 0.0, "{m}");

    // Inputs ten times larger than calibration's: the input's codes pin at the ends, its
    // samples are flagged (not re-run: no --adaptive), and it drifts.
    let big: Vec<f32> = xs.iter().map(|v| v * 10.0).collect();
    let (code, v) =
        server.post_json(&serde_json::json!({ "inputs": { "x": rows_json(&big, 16) } }));
    assert_eq!(code, 200);
    assert_eq!((v["flagged"].as_u64().unwrap() > 32, v["rerun"].as_u64()), (true, Some(0)), "{v}");
    let m = server.metrics();
    assert!(sample(&m, "lowbit_tensor_flagged_samples_total{tensor=\"x\"}") > 32.0, "{m}");
    assert!(sample(&m, "lowbit_tensor_saturated_values_total{tensor=\"x\"}") > 0.0);
    assert_eq!(sample(&m, "lowbit_tensor_drift{tensor=\"x\"}"), 1.0, "{m}");
    assert_eq!(sample(&m, "lowbit_drift"), 1.0);
    assert_eq!(sample(&m, "lowbit_rerun_samples_total"), 0.0);
}

#[test]
fn serve_adaptive_reruns_saturating_samples_closer_to_fp32() {
    let (_dir, fp32, q, x) = scratch();
    let big: Vec<f32> = x.as_f32().unwrap().iter().map(|v| v * 10.0).collect();
    let big_t = Tensor::from_vec(vec![64, 16], big.clone()).unwrap();
    let want = engine(&fp32, &big_t);
    let plain = engine(&q, &big_t);

    let server = Server::start(&q, &["--adaptive"]);
    let (code, v) =
        server.post_json(&serde_json::json!({ "inputs": { "x": rows_json(&big, 16) } }));
    assert_eq!(code, 200, "{v}");
    let rerun = v["rerun"].as_u64().unwrap();
    assert!(rerun > 32, "{v}");
    let got = outputs(&v, "probs").1;
    let (d_adaptive, d_plain) = (max_diff(&got, &want), max_diff(&plain, &want));
    assert!(d_adaptive < 0.5 * d_plain, "vs FP32: adaptive {d_adaptive}, int8 {d_plain}");
    let m = server.metrics();
    assert_eq!(sample(&m, "lowbit_rerun_samples_total"), rerun as f64);
}
