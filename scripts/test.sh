#!/usr/bin/env bash
# The full test suite, exactly as CI runs it (.ci/run calls this and nothing else):
# the ONNX Runtime reference environment (scripts/setup-test-env.sh), then every crate's tests.
# Extra arguments go to `cargo test` (e.g. `./scripts/test.sh -p lowbit-cli`).
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

# One closing line over all test binaries (cargo prints one `test result:` line per binary).
awk '/^test result:/ {
        for (i = 1; i < NF; i++) {
            if ($(i + 1) ~ /^passed;?$/) p += $i
            if ($(i + 1) ~ /^failed;?$/) f += $i
            if ($(i + 1) ~ /^ignored;?$/) s += $i
        }
        n++
     }
     END { printf "\n%d test binaries\nsummary: %d passed, %d failed, %d skipped\n", n, p, f, s }' "$log"
exit "$status"
