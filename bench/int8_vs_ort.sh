#!/usr/bin/env bash
# INT8 latency, lowbit vs ONNX Runtime, side by side in one run (not a test): the corpus models in
# FP32 and quantized by `lowbit quantize` (static int8; MiniLM also dynamic int8, and ORT's own
# quantize_dynamic file), each timed by `lowbit bench --vs-ort` at 1 and 2 threads. What is timed
# and on which inputs: int8_vs_ort.py's docstring. Arguments go to it (--only mnist|minilm|speed,
# --threads 1,2, --runs-scale X, --json FILE). Takes several minutes at full length.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
corpus="${LOWBIT_SHARED:-../shared}/corpus"
[ -d "$corpus" ] || corpus=/work/shared/corpus
if [ ! -d "$corpus/dev/models" ] || [ ! -d "$corpus/dev/data" ]; then
    echo "int8_vs_ort: skipped: the shared corpus (dev/models, dev/data) is not at $corpus (set LOWBIT_SHARED)" >&2
    exit 0
fi
# shellcheck source=../scripts/setup-test-env.sh
source scripts/setup-test-env.sh
cargo build --release -p lowbit-cli --quiet
exec "$LOWBIT_PYTHON" bench/int8_vs_ort.py --lowbit target/release/lowbit --corpus "$corpus" "$@"
