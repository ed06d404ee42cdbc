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
# - maturin and pytest in that venv: scripts/test.sh builds the Python module
#   (crates/lowbit-py) into it with `pip install` and runs its tests.
# - openvino (pinned) in that venv: the tests run lowbit's `--target openvino` files in it.
#
# - LOWBIT_CHROMIUM: a headless Chromium for the HTML report's screenshot test
#   (crates/lowbit-eval/tests/report.rs): an executable $LOWBIT_CHROMIUM is kept, else
#   `chromium` or `chromium-browser` on the PATH, else Debian's `chromium` package is installed
#   with apt-get (through `sudo -n` when not root). Where that cannot be done a note is printed
#   and the setup goes on.
#
# Tests that need ONNX Runtime or Chromium skip with a message when these variables are unset.
# LOWBIT_VENV overrides the venv location.

_lowbit_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_lowbit_venv="${LOWBIT_VENV:-$_lowbit_root/.venv}"
_lowbit_ort_version="1.32.0"
# onnx: ONNX Runtime's quantizer (onnxruntime.quantization) imports it; the benchmarks and the
# compare test quantize with it to check lowbit against ORT's own QDQ files.
_lowbit_onnx_version="1.23.2"
# pillow: the corpus' score.py decodes the photo folders with it; the tests score lowbit's files
# on the ImageNet photos through score.py and compare lowbit's JPEG decoding with Pillow's.

if ! "$_lowbit_venv/bin/python" -c "import numpy, onnx, onnxruntime, PIL, sys; sys.exit(onnxruntime.__version__ != '$_lowbit_ort_version' or onnx.__version__ != '$_lowbit_onnx_version')" 2>/dev/null; then
    echo "setup-test-env: installing onnxruntime==$_lowbit_ort_version, onnx==$_lowbit_onnx_version, numpy and pillow into $_lowbit_venv" >&2
    if [ ! -x "$_lowbit_venv/bin/python" ]; then
        python3 -m venv "$_lowbit_venv"
    fi
    "$_lowbit_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "onnxruntime==$_lowbit_ort_version" "onnx==$_lowbit_onnx_version" numpy pillow
fi

# The Python module's build backend and test runner (pyproject.toml asks for maturin >= 1.16).
if ! "$_lowbit_venv/bin/python" -c "import maturin, pytest" 2>/dev/null; then
    echo "setup-test-env: installing maturin and pytest into $_lowbit_venv" >&2
    "$_lowbit_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "maturin>=1.16,<2" "pytest>=7"
fi

# --- OpenVINO (issue 17): the runtime `--target openvino` files are checked in (the CLI tests
# run bench/openvino_int8.py). Installed like onnxruntime, kept while it holds the pinned
# version; where pip cannot get it, a note is printed and those tests skip.
_lowbit_openvino_version="2025.4.0"
if ! "$_lowbit_venv/bin/python" -c "import openvino, sys; sys.exit(not openvino.__version__.startswith('$_lowbit_openvino_version'))" 2>/dev/null; then
    echo "setup-test-env: installing openvino==$_lowbit_openvino_version into $_lowbit_venv" >&2
    if ! "$_lowbit_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "openvino==$_lowbit_openvino_version"; then
        echo "setup-test-env: note: openvino could not be installed; the OpenVINO tests will skip" >&2
    fi
fi
unset _lowbit_openvino_version
# --- end OpenVINO

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

_lowbit_chromium=""
if [ -n "${LOWBIT_CHROMIUM:-}" ] && [ -x "$LOWBIT_CHROMIUM" ]; then
    _lowbit_chromium="$LOWBIT_CHROMIUM"
else
    _lowbit_chromium="$(command -v chromium || command -v chromium-browser || true)"
fi
if [ -z "$_lowbit_chromium" ]; then
    _lowbit_skip="the report screenshot test will skip (set LOWBIT_CHROMIUM to a Chromium binary)"
    _lowbit_sudo=""
    if [ "$(id -u)" != 0 ]; then
        _lowbit_sudo="none"
        if command -v sudo >/dev/null 2>&1; then
            _lowbit_sudo="sudo -n"
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup-test-env: note: no chromium and no apt-get to install it; $_lowbit_skip" >&2
    elif [ "$_lowbit_sudo" = none ]; then
        echo "setup-test-env: note: no chromium, and neither root nor sudo to install it; $_lowbit_skip" >&2
    else
        echo "setup-test-env: installing chromium with apt-get (for the report screenshot test)" >&2
        _lowbit_apt() {
            # shellcheck disable=SC2086 # "sudo -n" or nothing
            $_lowbit_sudo env DEBIAN_FRONTEND=noninteractive apt-get -qq "$@" >&2
        }
        # Fresh images have no package lists: fetch them first when chromium is not known.
        if ! apt-cache policy chromium 2>/dev/null | grep -q 'Candidate: [0-9]'; then
            _lowbit_apt update || true
        fi
        if ! _lowbit_apt install -y --no-install-recommends chromium; then
            # Stale lists (a mirror dropped the version): refresh them and try once more.
            if ! { _lowbit_apt update && _lowbit_apt install -y --no-install-recommends chromium; }; then
                echo "setup-test-env: note: apt-get could not install chromium; $_lowbit_skip" >&2
            fi
        fi
        unset -f _lowbit_apt
        _lowbit_chromium="$(command -v chromium || command -v chromium-browser || true)"
    fi
fi
if [ -n "$_lowbit_chromium" ]; then
    export LOWBIT_CHROMIUM="$_lowbit_chromium"
    echo "setup-test-env: LOWBIT_CHROMIUM=$LOWBIT_CHROMIUM" >&2
fi
unset _lowbit_root _lowbit_venv _lowbit_ort_version _lowbit_lib _lowbit_chromium _lowbit_skip _lowbit_sudo
