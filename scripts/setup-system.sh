#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages printvigil's build (and, with --test, its tests)
# needs, and only those that are missing. Silent and quick when nothing is missing (one
# `dpkg-query`, no `apt-get update`). When something is missing it runs
#   apt-get update && apt-get install -y --no-install-recommends <missing>
# as root, through `sudo` when that is possible (without a password prompt, or with one on
# a terminal), and otherwise prints the one command to run and exits non-zero.
#
#   scripts/setup-system.sh          # what `scripts/demo.sh` needs: the build
#   scripts/setup-system.sh --test   # also what the tests' peers need (`scripts/test.sh`, CI)
#   scripts/setup-system.sh --package  # also what packaging and cross builds need (CI)
#
# Build: gcc, g++, libc6-dev, make, cmake and nasm build libjpeg-turbo (the turbojpeg crate);
# python3-pip fetches ONNX Runtime's wheel; python3-venv makes the test venvs.
# Tests: libusb-dev builds the Klipper peer's C helper, libsodium23 is loaded by Moonraker,
# systemd brings systemd-analyze for the unit checks, mosquitto is the MQTT broker peer,
# chromium (headless) loads the status page, tmux types into `printvigil setup` as a
# person does.
# Package: lintian checks the .deb, debootstrap makes the Debian root it is installed into,
# the cross compilers (C and C++: libjpeg-turbo, SQLite, aws-lc) build for 64- and 32-bit
# Pi OS, qemu-user runs those builds (scripts/package.sh, scripts/test-package.sh,
# scripts/test-cross.sh).
#
# PRINTVIGIL_SETUP_UID overrides the user id the script believes it runs as (tests).
set -euo pipefail

build=(gcc g++ libc6-dev make cmake nasm python3-pip python3-venv)
tests=(libusb-dev libsodium23 systemd mosquitto chromium tmux)
package=(lintian debootstrap gcc-aarch64-linux-gnu g++-aarch64-linux-gnu gcc-arm-linux-gnueabihf
  g++-arm-linux-gnueabihf qemu-user)

wanted=("${build[@]}")
for arg in "$@"; do
  case "$arg" in
    --test) wanted+=("${tests[@]}") ;;
    --package) wanted+=("${package[@]}") ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "setup-system: unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

if ! command -v dpkg-query >/dev/null; then
  # Not Debian or Ubuntu: check the build tools themselves, name the Debian packages.
  absent=()
  for tool in gcc g++ make cmake nasm python3; do
    command -v "$tool" >/dev/null || absent+=("$tool")
  done
  if [ ${#absent[@]} -gt 0 ]; then
    echo "setup-system: not found: ${absent[*]}; install them with your system's package manager" >&2
    echo "setup-system: (on Debian/Ubuntu the packages are: ${wanted[*]})" >&2
    exit 1
  fi
  exit 0
fi

# One query for all of them. A package dpkg never heard of is reported on stderr (and makes
# dpkg-query exit 1); a removed one shows a status other than "install ok installed".
installed=" "
while read -r name want eflag status; do
  if [ "$want $eflag $status" = "install ok installed" ]; then
    installed+="${name%%:*} "
  fi
done < <(dpkg-query -W -f='${Package} ${Status}\n' "${wanted[@]}" 2>/dev/null || true)

missing=()
for pkg in "${wanted[@]}"; do
  case "$installed" in
    *" $pkg "*) ;;
    *) missing+=("$pkg") ;;
  esac
done
[ ${#missing[@]} -eq 0 ] && exit 0

uid=${PRINTVIGIL_SETUP_UID:-$EUID}
if [ "$uid" = 0 ]; then
  as_root=(env)
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
elif command -v sudo >/dev/null && [ -t 0 ]; then
  as_root=(sudo)   # asks for the password on this terminal
else
  echo "setup-system: missing system packages: ${missing[*]}" >&2
  echo "setup-system: install them with this command (as root, without \`sudo\`), then run this again:" >&2
  echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
echo "setup-system: installing the missing system packages: ${missing[*]}" >&2
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
