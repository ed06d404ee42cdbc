//! What the integration tests share: the shared corpus and the Python with ONNX Runtime (each
//! skipped with a note when missing), and STS-B sentences as feeds.

// Each test file uses only some of these.
#![allow(dead_code)]

use lowbit_engine::{Session, SessionOptions};
use lowbit_onnx::pb;
use lowbit_tensor::Tensor;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The shared data folder (`$LOWBIT_SHARED`, else `<crate>/../../../shared`) when it holds the
/// corpus model `corpus/dev/models/{model}`; otherwise `None`, after saying the test skips.
pub fn shared(model: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("LOWBIT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let ok = dir.join("corpus/dev/models").join(model).exists();
    if !ok {
        eprintln!("skipping: shared corpus not found at {} (set LOWBIT_SHARED)", dir.display());
    }
    ok.then_some(dir)
}

/// The Python with onnxruntime: `$LOWBIT_PYTHON`, else `<workspace>/.venv/bin/python`;
/// otherwise `None`, after saying the ONNX Runtime checks skip.
pub fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LOWBIT_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipping ONNX Runtime checks: no LOWBIT_PYTHON and no .venv \
             (source scripts/setup-test-env.sh)"
        );
        None
    }
}

/// Rows `0..rows` of STS-B dev side `side` (`a` or `b`) under the corpus folder `dev`, as
/// `[1, n]` feeds cut to their length.
pub fn stsb_sentences(dev: &Path, side: &str, rows: usize) -> Vec<Vec<(String, Tensor)>> {
    let read = |f: &str| {
        lowbit_tensor::npy::read_npy(&dev.join(format!("data/stsb_dev/{f}_{side}.npy"))).unwrap()
    };
    let (ids, mask) = (read("input_ids"), read("attention_mask"));
    let l = ids.shape()[1];
    let (iv, mv) = (ids.as_slice::<i64>().unwrap(), mask.as_slice::<i64>().unwrap());
    (0..rows)
        .map(|r| {
            let n = mv[r * l..(r + 1) * l].iter().filter(|&&v| v != 0).count();
            let row =
                |v: &[i64]| Tensor::from_vec(vec![1, n], v[r * l..r * l + n].to_vec()).unwrap();
            vec![("input_ids".to_string(), row(iv)), ("attention_mask".to_string(), row(mv))]
        })
        .collect()
}

pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lowbit-export-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `model_path` in ONNX Runtime on each sample; returns outputs by name per sample.
/// `None` when no Python is available.
pub fn ort_run(
    model_path: &Path,
    samples: &[Vec<(String, Tensor)>],
) -> Option<Vec<Vec<(String, Tensor)>>> {
    ort_run_opt(model_path, samples, true)
}

/// [`ort_run`], with ORT's graph optimizations (integer-kernel fusion) on or off.
pub fn ort_run_opt(
    model_path: &Path,
    samples: &[Vec<(String, Tensor)>],
    optimize: bool,
) -> Option<Vec<Vec<(String, Tensor)>>> {
    let py = python()?;
    let dir = tmpdir(&format!("ort-{}", model_path.file_stem().unwrap().to_string_lossy()));
    let mut spec = Vec::new();
    for (s, feeds) in samples.iter().enumerate() {
        let mut entry = Vec::new();
        for (k, (name, t)) in feeds.iter().enumerate() {
            let f = format!("in_{s}_{k}.npy");
            lowbit_tensor::npy::write_npy(&dir.join(&f), t).unwrap();
            entry.push(serde_json::json!([name, f]));
        }
        spec.push(entry);
    }
    std::fs::write(dir.join("inputs.json"), serde_json::json!({ "samples": spec }).to_string())
        .unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ort_run.py");
    let mut cmd = Command::new(py);
    cmd.arg(&script).arg(model_path).arg(&dir);
    if !optimize {
        cmd.arg("--no-optimize");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "ONNX Runtime failed on {}:\n{}",
        model_path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let names: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("outputs.json")).unwrap()).unwrap();
    let names: Vec<String> =
        names["outputs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
    let res = (0..samples.len())
        .map(|s| {
            names
                .iter()
                .enumerate()
                .map(|(k, n)| {
                    let t = lowbit_tensor::npy::read_npy(&dir.join(format!("out_{s}_{k}.npy")));
                    (n.clone(), t.unwrap())
                })
                .collect()
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    Some(res)
}

pub fn output<'a>(outs: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &outs.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no output {name}")).1
}

/// Output SQNR (dB) of `got` against `want`, over all samples.
pub fn sqnr(got: &[Vec<f32>], want: &[Vec<f32>]) -> f64 {
    let (mut s, mut e) = (0f64, 0f64);
    for (a, b) in got.iter().zip(want) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            s += (*y as f64).powi(2);
            e += ((x - y) as f64).powi(2);
        }
    }
    10.0 * (s / e.max(1e-30)).log10()
}

/// Output `y` of `m` (lowbit's engine, 1 thread) for each feed.
pub fn run_all(m: &pb::ModelProto, feeds: &[Vec<(String, Tensor)>]) -> Vec<Vec<f32>> {
    let s = Session::new(m, &SessionOptions::with_threads(1)).unwrap();
    feeds.iter().map(|f| output(&s.run(f.clone()).unwrap(), "y").to_f32_vec().unwrap()).collect()
}

/// Saves `q` as `file` and loads it back (what a user runs), then checks its output `y` on
/// `eval` against `fp32`: SQNR ≥ `min_db` in lowbit's engine and, where a Python with it is
/// found, in ONNX Runtime.
pub fn check_saved_sqnr(
    q: &pb::ModelProto,
    file: &str,
    eval: &[Vec<(String, Tensor)>],
    fp32: &[Vec<f32>],
    min_db: f64,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file);
    lowbit_onnx::save_model(q, &path).unwrap();
    let q = lowbit_onnx::load_model(&path).unwrap();
    let ours = sqnr(&run_all(&q, eval), fp32);
    println!("{file}: int8 vs FP32 on lowbit's engine: SQNR {ours:.1} dB");
    assert!(ours >= min_db, "{file}: engine SQNR {ours:.1} dB");
    if let Some(ort) = ort_run(&path, eval) {
        let theirs: Vec<Vec<f32>> =
            ort.iter().map(|o| output(o, "y").to_f32_vec().unwrap()).collect();
        let db = sqnr(&theirs, fp32);
        println!("{file}: int8 vs FP32 in ONNX Runtime: SQNR {db:.1} dB");
        assert!(db >= min_db, "{file}: ORT SQNR {db:.1} dB");
    }
}

/// Deterministic values in [-1, 1) (xorshift), so the tests need no data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn tensor(&mut self, shape: &[usize], scale: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(shape.to_vec(), (0..n).map(|_| self.next() * scale).collect()).unwrap()
    }
}
