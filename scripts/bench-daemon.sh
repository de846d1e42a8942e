#!/usr/bin/env bash
# Daemon benchmarks (tests/daemon_bench.rs): the release `printvigil run` against real
# Moonraker + Klipper. Prints figures (lines starting with BENCH); never timed assertions.
# Set PVBENCH_FULL_MODEL to the full-size stand-in model to include it, e.g.
#   .runtime/venv-tools/bin/python models/generate.py full target/full.onnx
#   PVBENCH_FULL_MODEL=target/full.onnx scripts/bench-daemon.sh
# Extra arguments go to the test binary (e.g. a benchmark name: idle_cpu).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup-system.sh --test
source scripts/test-env.sh
if [ -n "${PVBENCH_FULL_MODEL:-}" ]; then
  PVBENCH_FULL_MODEL=$(realpath "$PVBENCH_FULL_MODEL")
  export PVBENCH_FULL_MODEL
fi
cargo test --locked --release --test daemon_bench -- --ignored --nocapture --test-threads=1 "$@"
