#!/usr/bin/env bash
# The whole test suite. Installs what the tests need into .runtime/ (idempotent), then runs
# cargo test. Extra arguments go to cargo test (e.g. a test name filter).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source scripts/test-env.sh
cargo test --locked "$@"
