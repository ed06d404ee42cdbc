#!/usr/bin/env bash
# FP32 latency, lowbit vs ONNX Runtime, side by side in one run (not a test). See README.md in
# this folder. Arguments go to fp32_vs_ort.py (--models, --threads, --rows, --corpus).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=../scripts/setup-test-env.sh
source scripts/setup-test-env.sh
cargo build --release -p lowbit-cli --quiet
exec "$LOWBIT_PYTHON" bench/fp32_vs_ort.py --lowbit target/release/lowbit "$@"
