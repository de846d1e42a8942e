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
cargo test --locked "$@"
