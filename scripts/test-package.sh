#!/usr/bin/env bash
# The amd64 Debian package, built and installed as a user does (CI runs this):
#   1. scripts/package.sh: release build, the .deb, lintian;
#   2. scripts/debian-root.sh: a Debian 12 root made by debootstrap (kept in
#      .runtime/debian-root/ between runs);
#   3. tests/deb_install.rs: the package installed into a copy of that root, printvigil
#      --version, check and demo run there, removed and purged, nothing left behind.
# Needs root. Prints how long each step took (lines starting with TIME) and the .deb's
# path last.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup-system.sh --test --package
source scripts/test-env.sh
step_start=0
step() { step_start=$(date +%s); echo "== $*" >&2; }
done_step() { echo "TIME $*: $(( $(date +%s) - step_start )) s" >&2; }

step "amd64 release build + package + lintian"
deb=$(scripts/package.sh --arch amd64)
done_step "amd64 release build + package + lintian"

step "Debian root (debootstrap, or the kept one)"
debroot=$(scripts/debian-root.sh)
done_step "Debian root (debootstrap, or the kept one)"

step "install test (tests/deb_install.rs)"
PVTEST_DEB=$deb PVTEST_DEBIAN_ROOT=$debroot cargo test --locked --test deb_install -- --nocapture
done_step "install test (tests/deb_install.rs)"
echo "$deb"
