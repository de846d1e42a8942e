#!/usr/bin/env bash
# The quick start's main job: installs the missing system packages the build needs
# (scripts/setup-system.sh), builds printvigil, fetches ONNX Runtime if needed, and runs
# `printvigil demo`: a simulated printer, the bundled frames as its camera, the bundled
# DEMO detector and a stand-in server; the print goes wrong, printvigil warns and pauses.
# Extra arguments go to `printvigil demo` (e.g. --dir DIR, --cadence SECS).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup-system.sh
ORT_DYLIB_PATH=$(scripts/fetch-onnxruntime.sh)
export ORT_DYLIB_PATH
cargo build --release --locked --quiet
exec target/release/printvigil demo --dir target/demo "$@"
