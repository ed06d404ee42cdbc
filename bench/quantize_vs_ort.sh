#!/usr/bin/env bash
# Static INT8 quantization of MiniLM, lowbit vs ONNX Runtime's quantize_static, side by side in one
# run (not a test): wall time, CPU time, peak RSS and cosine to FP32 of each, same calibration
# sentences. Table 1: each sentence at its real length (lowbit's default trimming, lowbit per-sample
# .npz files, ORT [1, len] feeds; ORT's Entropy crashes on those and falls back to padded feeds).
# Table 2: identical [*, 45] padded tensors for both. What is run and measured:
# quantize_vs_ort.py's docstring. Arguments go to it (--methods, --samples, --ort-threads,
# --no-extras, --json FILE, --keep DIR, --corpus DIR). Takes several minutes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
corpus="${LOWBIT_SHARED:-../shared}/corpus"
if [[ " $* " != *" --corpus"* && ! -f "$corpus/dev/models/paraphrase-MiniLM-L3-v2.onnx" ]]; then
    echo "quantize_vs_ort: skipped: $corpus/dev/models/paraphrase-MiniLM-L3-v2.onnx not found (set LOWBIT_SHARED or pass --corpus DIR)" >&2
    exit 0
fi
# shellcheck source=../scripts/setup-test-env.sh
source scripts/setup-test-env.sh
cargo build --release -p lowbit-cli --quiet
exec "$LOWBIT_PYTHON" bench/quantize_vs_ort.py --lowbit target/release/lowbit "$@"
