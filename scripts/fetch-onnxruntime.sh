#!/usr/bin/env bash
# Fetches ONNX Runtime's shared library from the `onnxruntime` wheel on PyPI and places it
# where printvigil looks for it. No other download is involved.
#
#   scripts/fetch-onnxruntime.sh                 # host architecture, into .runtime/onnxruntime/<arch>/
#   scripts/fetch-onnxruntime.sh --arch aarch64  # for a 64-bit Raspberry Pi
#   scripts/fetch-onnxruntime.sh --dest /usr/lib/printvigil
#
# ONNX Runtime's LICENSE and ThirdPartyNotices.txt from the same wheel go beside it (the
# Debian package ships them).
#
# armv7 (32-bit Pi OS): no onnxruntime wheel exists; printvigil runs there without inference.
set -euo pipefail
version=1.31.1
arch=$(uname -m)
dest=""
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=$2; shift 2 ;;
    --dest) dest=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$arch" in
  x86_64|amd64) arch=x86_64 ;;
  aarch64|arm64) arch=aarch64 ;;
  armv7*|armhf)
    echo "no ONNX Runtime wheel exists for armv7; use a 64-bit OS on the Pi, or run printvigil without inference" >&2
    exit 1 ;;
  *) echo "unsupported architecture: $arch" >&2; exit 1 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
[ -n "$dest" ] || dest="$root/.runtime/onnxruntime/$arch"
target="$dest/libonnxruntime.so"
if [ -s "$target" ] && [ -s "$dest/LICENSE" ] && [ "$(cat "$dest/VERSION" 2>/dev/null)" = "$version" ]; then
  echo "$target"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --platform "manylinux_2_28_$arch" --python-version 3.11 \
  "onnxruntime==$version" -d "$work" >&2
wheel=$(ls "$work"/onnxruntime-*.whl)
python3 - "$wheel" "$work/lib" "$version" <<'PY'
import sys, zipfile
wheel, out, version = sys.argv[1:]
members = {f"onnxruntime/capi/libonnxruntime.so.{version}": out,
           "onnxruntime/LICENSE": out + ".LICENSE",
           "onnxruntime/ThirdPartyNotices.txt": out + ".ThirdPartyNotices.txt"}
with zipfile.ZipFile(wheel) as z:
    for member, path in members.items():
        with z.open(member) as src, open(path, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
PY
mkdir -p "$dest"
install -m 0644 "$work/lib.LICENSE" "$dest/LICENSE"
install -m 0644 "$work/lib.ThirdPartyNotices.txt" "$dest/ThirdPartyNotices.txt"
install -m 0644 "$work/lib" "$target.tmp"
mv -f "$target.tmp" "$target"
echo "$version" > "$dest/VERSION"
echo "$target"
