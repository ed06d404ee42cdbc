#!/usr/bin/env bash
# Accuracy of lowbit's quantizer vs ONNX Runtime's on the corpus models, every file scored by the
# corpus's score.py (not a test; ~10 minutes on 2 cores). What is compared: accuracy_vs_ort.py's
# docstring. Arguments go to it (--only mnist|minilm, --json FILE).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
corpus="${LOWBIT_SHARED:-../shared}/corpus"
[ -d "$corpus" ] || corpus=/work/shared/corpus
if [ ! -f "$corpus/score.py" ]; then
    echo "skipped: the shared corpus (score.py) is not at $corpus" >&2
    exit 0
fi
# shellcheck source=../scripts/setup-test-env.sh
source scripts/setup-test-env.sh
cargo build --release -p lowbit-cli --quiet
exec "$LOWBIT_PYTHON" bench/accuracy_vs_ort.py --lowbit target/release/lowbit --corpus "$corpus" "$@"
