#!/usr/bin/env bash
# The full test suite, exactly as CI runs it (.ci/run calls this and nothing else):
# the ONNX Runtime reference environment (scripts/setup-test-env.sh), then every crate's tests,
# then the Python module: `pip install ./crates/lowbit-py` (through maturin, a dev-profile
# build) into the venv and its pytest tests.
# Extra arguments go to `cargo test` (e.g. `./scripts/test.sh -p lowbit-cli`) and skip the
# Python module.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/setup-test-env.sh
source scripts/setup-test-env.sh

log="$(mktemp -t lowbit-test.XXXXXX)"
trap 'rm -f "$log"' EXIT

# [profile.test] is optimized (opt-level 3), so no --release is needed. --no-fail-fast runs every
# test binary even after a failure, so the summary below covers the whole workspace.
status=0
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?

if [ "$#" -eq 0 ]; then
    echo "building the Python module (pip install ./crates/lowbit-py)" >&2
    py_start=$SECONDS
    # The dev profile (dependencies optimized, our crates at opt-level 1): a quick build for
    # tests. Not `--profile test`: for `cargo rustc` (what maturin runs) that name means a test
    # harness, not the extension module.
    # The build backend runs the `maturin` executable by name: the venv's bin must be on PATH.
    if PATH="$(cd "$(dirname "$LOWBIT_PYTHON")" && pwd):$PATH" MATURIN_PEP517_ARGS="--profile dev" \
        "$LOWBIT_PYTHON" -m pip install --quiet \
        --disable-pip-version-check --no-build-isolation --no-deps --force-reinstall \
        ./crates/lowbit-py; then
        echo "python module built in $((SECONDS - py_start)) s" >&2
        "$LOWBIT_PYTHON" -m pytest -q -p no:cacheprovider crates/lowbit-py/tests 2>&1 | tee -a "$log" ||
            status=1
    else
        echo "pip install ./crates/lowbit-py failed" | tee -a "$log"
        status=1
    fi
fi

# One closing line over all test binaries (cargo prints one `test result:` line per binary).
# pytest's closing line ("12 passed, 2 skipped in 9.1s") is counted too.
awk '/^[0-9]+ (passed|failed|skipped|error)/ && / in [0-9.]+s/ {
        for (i = 1; i < NF; i++) {
            w = $(i + 1); sub(/,$/, "", w)
            if (w == "passed") p += $i
            if (w == "failed" || w == "errors" || w == "error") f += $i
            if (w == "skipped") s += $i
        }
        n++
     }
     /^test result:/ {
        for (i = 1; i < NF; i++) {
            if ($(i + 1) ~ /^passed;?$/) p += $i
            if ($(i + 1) ~ /^failed;?$/) f += $i
            if ($(i + 1) ~ /^ignored;?$/) s += $i
        }
        n++
     }
     END { printf "\n%d test binaries\nsummary: %d passed, %d failed, %d skipped\n", n, p, f, s }' "$log"
exit "$status"
