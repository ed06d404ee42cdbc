# shellcheck shell=bash
# Prepares what lowbit's tests need beyond cargo, then exports where it is. Source it:
#
#     source scripts/setup-test-env.sh
#
# - ./.venv (git-ignored): a Python venv with onnxruntime (the reference runtime the tests compare
#   lowbit against, and check that every model lowbit writes loads in) and numpy. Created once;
#   reused while it holds the pinned onnxruntime version.
# - ORT_DYLIB_PATH: ONNX Runtime's shared library inside that venv (for Rust tests using `ort`).
# - LOWBIT_PYTHON: the venv's python (tests that drive onnxruntime from Python use it).
#
# Tests that need ONNX Runtime skip with a message when these variables are unset.
# LOWBIT_VENV overrides the venv location.

_lowbit_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_lowbit_venv="${LOWBIT_VENV:-$_lowbit_root/.venv}"
_lowbit_ort_version="1.32.0"

if ! "$_lowbit_venv/bin/python" -c "import numpy, onnxruntime, sys; sys.exit(onnxruntime.__version__ != '$_lowbit_ort_version')" 2>/dev/null; then
    echo "setup-test-env: installing onnxruntime==$_lowbit_ort_version and numpy into $_lowbit_venv" >&2
    if [ ! -x "$_lowbit_venv/bin/python" ]; then
        python3 -m venv "$_lowbit_venv"
    fi
    "$_lowbit_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "onnxruntime==$_lowbit_ort_version" numpy
fi

# The library's exact file name varies between wheels (libonnxruntime.so.1.32.0, .so.1, .so):
# take the most specific one that exists.
ORT_DYLIB_PATH=""
for _lowbit_lib in "$_lowbit_venv"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*; do
    if [ -f "$_lowbit_lib" ] && [ "${#_lowbit_lib}" -gt "${#ORT_DYLIB_PATH}" ]; then
        ORT_DYLIB_PATH="$_lowbit_lib"
    fi
done
if [ -z "$ORT_DYLIB_PATH" ]; then
    echo "setup-test-env: libonnxruntime.so not found under $_lowbit_venv" >&2
    return 1 2>/dev/null || exit 1
fi
export ORT_DYLIB_PATH
export LOWBIT_PYTHON="$_lowbit_venv/bin/python"
echo "setup-test-env: ORT_DYLIB_PATH=$ORT_DYLIB_PATH" >&2
echo "setup-test-env: LOWBIT_PYTHON=$LOWBIT_PYTHON" >&2
unset _lowbit_root _lowbit_venv _lowbit_ort_version _lowbit_lib
