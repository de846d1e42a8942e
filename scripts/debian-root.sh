#!/usr/bin/env bash
# Makes (once) a fresh Debian 12 root for the package install test and prints the path of
# its tar: `debootstrap --variant=minbase --include=systemd,ca-certificates bookworm`
# (systemd and ca-certificates: what a Pi has, and the package's dependencies beyond the
# base system, which the test's root cannot download). Kept in
# .runtime/debian-root/ between runs; each test unpacks its own copy.
#
#   scripts/debian-root.sh [--arch amd64] [--mirror URL]
#
# Needs root and debootstrap (scripts/setup-system.sh --package). The mirror defaults to
# the first Debian mirror in this machine's apt sources, else deb.debian.org.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
arch=amd64
suite=bookworm
mirror=""
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=$2; shift 2 ;;
    --mirror) mirror=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "debian-root: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$mirror" ]; then
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | grep -Eo 'https?://[^ ]*/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ' || true)
  mirror=${mirror:-http://deb.debian.org/debian}
fi
cache="$root/.runtime/debian-root"
tar_file="$cache/$suite-$arch-minbase-systemd-ca.tar"
if [ -s "$tar_file" ]; then
  echo "$tar_file"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debian-root: debootstrap not found (scripts/setup-system.sh --package)" >&2; exit 1; }
[ "$EUID" = 0 ] || { echo "debian-root: debootstrap needs root" >&2; exit 1; }
mkdir -p "$cache"
work=$(mktemp -d /var/tmp/printvigil-debootstrap.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "debian-root: debootstrap $suite ($arch) from $mirror ..." >&2
debootstrap --variant=minbase --include=systemd,ca-certificates --arch "$arch" "$suite" "$work/root" "$mirror" >"$work/log" 2>&1 || {
  tail -n 30 "$work/log" >&2
  exit 1
}
# What a test does not need: downloaded packages, apt lists.
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*_Packages 2>/dev/null || true
tar -C "$work/root" --numeric-owner -cf "$tar_file.tmp" .
mv -f "$tar_file.tmp" "$tar_file"
echo "$tar_file"
