#!/usr/bin/env bash
# The whole test suite. Installs what the tests need into .runtime/ (idempotent), then runs
# cargo test. Extra arguments go to cargo test (e.g. a test name filter).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
ORT_DYLIB_PATH=$(scripts/fetch-onnxruntime.sh)
export ORT_DYLIB_PATH
scripts/setup-venv.sh tools tests/peers/requirements-tools.txt >/dev/null
export PVTEST_TOOLS_PYTHON="$root/.runtime/venv-tools/bin/python"
# Real Moonraker and Klipper for tests/moonraker.rs (two venvs: their pins conflict).
PVTEST_MOONRAKER_PYTHON="$(scripts/setup-venv.sh moonraker tests/peers/requirements-moonraker.txt)/bin/python"
PVTEST_KLIPPY_PYTHON="$(scripts/setup-venv.sh klipper tests/peers/requirements-klipper.txt)/bin/python"
export PVTEST_MOONRAKER_PYTHON PVTEST_KLIPPY_PYTHON
cargo test --locked "$@"
