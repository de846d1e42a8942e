#!/usr/bin/env bash
# The whole test suite. Installs the missing system packages the build and the tests' peers
# need (scripts/setup-system.sh --test), puts what the tests need into .runtime/ (both
# idempotent), then runs cargo test. Extra arguments go to cargo test (e.g. a test name filter).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup-system.sh --test
source scripts/test-env.sh
cargo test --locked "$@"
