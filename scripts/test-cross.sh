#!/usr/bin/env bash
# The Raspberry Pi builds, proved on this machine (CI runs this):
#   1. aarch64 (64-bit Pi OS): release cross build (Debian's aarch64-linux-gnu gcc/g++),
#      its Debian package (scripts/package.sh --arch arm64, lintian);
#   2. armv7 (32-bit Pi OS, no inference): debug cross build (arm-linux-gnueabihf);
#   3. tests/cross.rs under qemu-user: the aarch64 build scores the bundled frames as the
#      x86_64 build does, no binary needs a glibc newer than Bookworm's, the armv7 build
#      runs all but inference and says so.
# Prints how long each step took (lines starting with TIME).
#
#   scripts/test-cross.sh [--host-bin PATH]   # the x86_64 reference (default: the test's build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
host_bin=""
while [ $# -gt 0 ]; do
  case "$1" in
    --host-bin) host_bin=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "test-cross: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
scripts/setup-system.sh --test --package
source scripts/test-env.sh
step_start=0
step() { step_start=$(date +%s); echo "== $*" >&2; }
done_step() { echo "TIME $*: $(( $(date +%s) - step_start )) s" >&2; }

step "rustup targets"
rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf >&2
done_step "rustup targets"

step "aarch64 release build"
cargo build --locked --release --target aarch64-unknown-linux-gnu >&2
done_step "aarch64 release build"

step "arm64 package + lintian"
deb=$(scripts/package.sh --arch arm64 --binary target/aarch64-unknown-linux-gnu/release/printvigil)
done_step "arm64 package + lintian"

step "armv7 debug build"
cargo build --locked --target armv7-unknown-linux-gnueabihf >&2
done_step "armv7 debug build"

step "qemu tests (tests/cross.rs)"
PVTEST_AARCH64_BIN=$root/target/aarch64-unknown-linux-gnu/release/printvigil \
PVTEST_AARCH64_ORT=$(scripts/fetch-onnxruntime.sh --arch aarch64) \
PVTEST_ARMV7_BIN=$root/target/armv7-unknown-linux-gnueabihf/debug/printvigil \
PVTEST_HOST_BIN=$host_bin \
  cargo test --locked --test cross -- --nocapture --test-threads 1
done_step "qemu tests (tests/cross.rs)"
echo "test-cross: $(basename "$deb") $(du -k "$deb" | cut -f1) KiB" >&2
