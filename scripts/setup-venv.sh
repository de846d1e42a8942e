#!/usr/bin/env bash
# scripts/setup-venv.sh NAME REQUIREMENTS: makes .runtime/venv-NAME with the pinned
# requirements (reinstalls only when the requirements file changed). Prints the venv path.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
name=$1; req=$2
venv="$root/.runtime/venv-$name"
stamp="$venv/.requirements"
if [ -x "$venv/bin/python" ] && cmp -s "$root/$req" "$stamp"; then
  echo "$venv"; exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/$req" >&2
cp "$root/$req" "$stamp"
echo "$venv"
