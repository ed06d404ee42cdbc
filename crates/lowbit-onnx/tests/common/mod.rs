//! What the integration tests share: where the shared test data lives.

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
