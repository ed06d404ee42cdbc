#!/usr/bin/env bash
# FP32 latency, lowbit vs ONNX Runtime, side by side in one run (not a test). What is timed and
# on which inputs: fp32_vs_ort.py's docstring. Arguments go to it (--models, --threads, --rows).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=../scripts/setup-test-env.sh
source scripts/setup-test-env.sh
cargo build --release -p lowbit-cli --quiet
exec "$LOWBIT_PYTHON" bench/fp32_vs_ort.py --lowbit target/release/lowbit "$@"
