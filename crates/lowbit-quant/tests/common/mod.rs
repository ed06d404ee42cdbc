//! What the integration tests share: the shared corpus and the Python with ONNX Runtime (each
//! skipped with a note when missing), and STS-B sentences as feeds.

// Each test file uses only some of these.
#![allow(dead_code)]

use lowbit_tensor::Tensor;
use std::path::{Path, PathBuf};

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
