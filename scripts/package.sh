#!/usr/bin/env bash
# Builds printvigil's Debian package for amd64 or arm64 with dpkg-deb (no debhelper: the
# maintainer scripts in packaging/deb/ are what debhelper would write), then runs lintian.
#
#   scripts/package.sh                       # amd64: release build, then the .deb
#   scripts/package.sh --arch arm64          # cross-built (aarch64-linux-gnu-gcc, rustup target)
#   scripts/package.sh --binary PATH         # package this binary instead of building one
#   scripts/package.sh --out DIR             # where the .deb goes (default target/deb/)
#   scripts/package.sh --no-lintian
#
# Contents: /usr/bin/printvigil; /usr/lib/printvigil/libonnxruntime.so (from the PyPI wheel
# for the architecture, scripts/fetch-onnxruntime.sh); the systemd unit; sysusers and
# tmpfiles entries; /etc/printvigil/config.toml (a conffile, 0640 root:printvigil through
# dpkg-statoverride); copyright (the licences, the statically linked crates), changelog,
# README, a man page. Depends: computed from the ELF files (their NEEDED libraries, the newest glibc
# symbol version they use). Prints the .deb's path last.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
arch=amd64
binary=""
out="$root/target/deb"
lintian=1
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --no-lintian) lintian=0; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "package: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$arch" in
  amd64) triple=x86_64-unknown-linux-gnu; ort_arch=x86_64; readelf_machine="X86-64" ;;
  arm64) triple=aarch64-unknown-linux-gnu; ort_arch=aarch64; readelf_machine="AArch64" ;;
  *) echo "package: --arch amd64 or arm64 (armhf has no ONNX Runtime: see the README)" >&2; exit 2 ;;
esac
for tool in dpkg-deb readelf; do
  command -v "$tool" >/dev/null || { echo "package: $tool not found (scripts/setup-system.sh --package)" >&2; exit 1; }
done

if [ -z "$binary" ]; then
  if [ "$(uname -m)" = "$ort_arch" ]; then
    cargo build --locked --release >&2
    binary=target/release/printvigil
  else
    rustup target add "$triple" >&2
    cargo build --locked --release --target "$triple" >&2
    binary=target/$triple/release/printvigil
  fi
fi
case "$arch" in
  amd64) objcopy=objcopy ;;
  arm64) objcopy=aarch64-linux-gnu-objcopy ;;
esac
command -v "$objcopy" >/dev/null || { echo "package: $objcopy not found (scripts/setup-system.sh --package)" >&2; exit 1; }
machine=$(readelf -h "$binary" | sed -n 's/^ *Machine: *//p')
case "$machine" in
  *"$readelf_machine"*) ;;
  *) echo "package: $binary is for $machine, not $arch" >&2; exit 1 ;;
esac
ort_dir=$(dirname "$(scripts/fetch-onnxruntime.sh --arch "$ort_arch")")
ort_version=$(cat "$ort_dir/VERSION")

version=$(sed -n '1s/^printvigil (\([^)]*\)).*/\1/p' packaging/deb/changelog)
upstream=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
[ "${version%-*}" = "$upstream" ] || {
  echo "package: packaging/deb/changelog is at $version but Cargo.toml at $upstream: add a changelog entry" >&2
  exit 1
}
maintainer=$(sed -n 's/^ -- \(.*>\)  .*/\1/p' packaging/deb/changelog | head -n1)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg=$work/root
doc=$pkg/usr/share/doc/printvigil
install -d "$pkg/DEBIAN" "$doc/onnxruntime"
install -D -m 0755 "$binary" "$pkg/usr/bin/printvigil"
install -D -m 0644 "$ort_dir/libonnxruntime.so" "$pkg/usr/lib/printvigil/libonnxruntime.so"
install -D -m 0644 systemd/printvigil.service "$pkg/lib/systemd/system/printvigil.service"
install -D -m 0644 systemd/printvigil.sysusers "$pkg/usr/lib/sysusers.d/printvigil.conf"
install -D -m 0644 packaging/deb/tmpfiles.conf "$pkg/usr/lib/tmpfiles.d/printvigil.conf"
install -D -m 0644 config/printvigil.toml "$pkg/etc/printvigil/config.toml"
install -D -m 0644 packaging/deb/lintian-overrides "$pkg/usr/share/lintian/overrides/printvigil"
install -D -m 0644 packaging/deb/printvigil.1 "$pkg/usr/share/man/man1/printvigil.1"
gzip -9n "$pkg/usr/share/man/man1/printvigil.1"
gzip -9n < "$ort_dir/ThirdPartyNotices.txt" > "$doc/onnxruntime/ThirdPartyNotices.txt.gz"
gzip -9n < packaging/deb/changelog > "$doc/changelog.Debian.gz"
gzip -9n < README.md > "$doc/README.md.gz"
install -m 0644 packaging/deb/firstboot-example.toml "$doc/firstboot-example.toml"
chmod 0644 "$doc"/*.gz "$doc/onnxruntime"/*
# The compilers' version notes are of no use at run time.
"$objcopy" --remove-section=.comment "$pkg/usr/bin/printvigil"
"$objcopy" --remove-section=.comment "$pkg/usr/lib/printvigil/libonnxruntime.so"

# The copyright file: the licences, then every crate linked into the binary for this target.
crates=$(cargo metadata --locked --format-version 1 --filter-platform "$triple" | python3 -c '
import json, sys
m = json.load(sys.stdin)
pkgs = {p["id"]: p for p in m["packages"]}
# Normal (not build or dev) dependencies reachable from printvigil, default features.
nodes = {n["id"]: n for n in m["resolve"]["nodes"]}
root = m["resolve"]["root"]
seen, todo = set(), [root]
while todo:
    i = todo.pop()
    if i in seen:
        continue
    seen.add(i)
    for d in nodes[i]["deps"]:
        if any(k["kind"] is None for k in d["dep_kinds"]):
            todo.append(d["pkg"])
seen.discard(root)
for p in sorted((pkgs[i] for i in seen), key=lambda p: (p["name"], p["version"])):
    print(" %s %s: %s" % (p["name"], p["version"], p.get("license") or "see the crate"))
')
python3 - "$doc/copyright" "$ort_version" <<PY
import sys
path, ort = sys.argv[1:]
agpl = open("LICENSE").read().rstrip("\n").split("\n")
agpl = "\n".join(" " + l if l.strip() else " ." for l in agpl)
text = open("packaging/deb/copyright.in").read()
text = text.replace("@ORT_VERSION@", ort).replace("@AGPL@", agpl).replace("@CRATES@", """$crates""")
open(path, "w").write(text)
PY
chmod 0644 "$doc/copyright"

# Depends, from what the ELF files need: each NEEDED library maps to its Debian package,
# and libc6 gets the newest GLIBC_ symbol version used.
needed=$(for f in "$pkg/usr/bin/printvigil" "$pkg/usr/lib/printvigil/libonnxruntime.so"; do
  readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'
done | sort -u)
glibc=$(for f in "$pkg/usr/bin/printvigil" "$pkg/usr/lib/printvigil/libonnxruntime.so"; do
  readelf -V --wide "$f" | grep -o 'Name: GLIBC_[0-9.]*' | sed 's/Name: GLIBC_//'
done | sort -V | tail -n1)
depends=("libc6 (>= $glibc)")
for lib in $needed; do
  case "$lib" in
    libc.so.6|libm.so.6|libpthread.so.0|libdl.so.2|librt.so.1|ld-linux-*.so.*) ;;
    libgcc_s.so.1) depends+=("libgcc-s1") ;;
    libstdc++.so.6) depends+=("libstdc++6") ;;
    *) echo "package: no Debian package known for $lib (needed by the binaries): add it to scripts/package.sh" >&2; exit 1 ;;
  esac
done
# systemd-sysusers and systemd-tmpfiles run in postinst; deb-systemd-helper enables the unit;
# the HTTP client (server mirror, model download) needs the system's CA certificates.
depends+=("systemd | systemd-sysusers" "init-system-helpers (>= 1.54~)" "ca-certificates")
depends_line=$(IFS=,; echo "${depends[*]}" | sed 's/,/, /g')

installed_kib=$(du -sk --apparent-size --exclude=DEBIAN "$pkg" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@MAINTAINER@/$maintainer/" \
  -e "s/@INSTALLED_SIZE@/$installed_kib/" -e "s/@DEPENDS@/$depends_line/" \
  packaging/deb/control.in > "$pkg/DEBIAN/control"
echo /etc/printvigil/config.toml > "$pkg/DEBIAN/conffiles"
for s in postinst prerm postrm; do
  install -m 0755 "packaging/deb/$s" "$pkg/DEBIAN/$s"
done
(cd "$pkg" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) > "$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg/DEBIAN/control" "$pkg/DEBIAN/conffiles" "$pkg/DEBIAN/md5sums"
find "$pkg" -type d -exec chmod 0755 {} +

mkdir -p "$out"
deb="$out/printvigil_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >&2
echo "package: $(basename "$deb"): $(du -k "$deb" | cut -f1) KiB, installed $installed_kib KiB, Depends: $depends_line" >&2
if [ "$lintian" = 1 ]; then
  command -v lintian >/dev/null || { echo "package: lintian not found (scripts/setup-system.sh --package)" >&2; exit 1; }
  # Every tag at warning level or above fails; the overrides in
  # packaging/deb/lintian-overrides say why each remaining one is there.
  lintian --fail-on error,warning --display-info "$deb" >&2
  echo "package: lintian: clean (overrides: packaging/deb/lintian-overrides)" >&2
fi
echo "$deb"
