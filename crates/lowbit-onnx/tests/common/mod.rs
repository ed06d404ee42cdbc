//! What the integration tests share: where the shared test data lives, and its corpus models.

use std::path::{Path, PathBuf};

/// The shared data folder: `$LOWBIT_SHARED`, else `shared/` beside the repository; it must
/// hold `corpus/` and `onnx-node-tests/`.
pub fn shared() -> PathBuf {
    let p = std::env::var_os("LOWBIT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    assert!(
        p.join("corpus").is_dir() && p.join("onnx-node-tests").is_dir(),
        "shared test data not found at {} (expected corpus/ and onnx-node-tests/ there; set \
         LOWBIT_SHARED to the folder that holds them)",
        p.display()
    );
    p
}

fn onnx_files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            onnx_files_under(&p, out);
        } else if p.extension().is_some_and(|e| e == "onnx") {
            out.push(p);
        }
    }
}

/// Every `.onnx` file of the corpus' dev models and of its models from other exporters
/// (`dev/other_exporters`), subfolders included.
pub fn corpus_models() -> Vec<PathBuf> {
    let mut v = Vec::new();
    onnx_files_under(&shared().join("corpus/dev/models"), &mut v);
    onnx_files_under(&shared().join("corpus/dev/other_exporters"), &mut v);
    assert!(v.len() >= 5, "expected the corpus models, found {v:?}");
    v
}
