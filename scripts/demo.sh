#!/usr/bin/env bash
# The quick start's main job: builds printvigil, fetches ONNX Runtime if needed, and runs
# the bundled DEMO detector over the bundled frames of a print that goes wrong.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
ORT_DYLIB_PATH=$(scripts/fetch-onnxruntime.sh)
export ORT_DYLIB_PATH
cargo build --release --locked --quiet
# A print of 48 scored frames (one every 10 s in real life): 36 healthy, then strands.
frames=()
for _ in 1 2 3 4 5 6; do frames+=(models/frames/0[0-5]-healthy.jpg); done
for _ in 1 2 3; do frames+=(models/frames/0[6-9]-failing.jpg); done
exec target/release/printvigil predict --model models/demo.onnx --annotate target/demo-annotated "$@" "${frames[@]}"
