#!/usr/bin/env bash
# Checks the systemd files in systemd/:
#   - `systemd-analyze verify` on the unit (no warnings allowed),
#   - `systemd-analyze security --offline=true`: the overall exposure must be 2.0 or lower,
#   - `systemd-sysusers` on the sysusers file, in an empty root: the user exists and is in
#     the video and dialout groups.
# Needs systemd-analyze and systemd-sysusers (Debian: apt-get install systemd); systemd
# need not be running.
#
#   scripts/check-unit.sh [UNIT]     # default: systemd/printvigil.service
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
unit=${1:-$root/systemd/printvigil.service}
sysusers=$root/systemd/printvigil.sysusers
max_exposure=2.0
for tool in systemd-analyze systemd-sysusers; do
  if ! command -v "$tool" >/dev/null; then
    echo "check-unit: $tool not found; install systemd (Debian: apt-get install systemd)" >&2
    exit 1
  fi
done
[ -f "$unit" ] || { echo "check-unit: no unit file at $unit" >&2; exit 1; }
name=$(basename "$unit")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0

# verify: it refuses a unit whose ExecStart binary does not exist. When printvigil is not
# installed, a copy of the unit runs `true` instead (in ExecStart and the ExecCondition
# lines); everything else is verified as is.
exec_path=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit" | head -n1)
if [ -x "$exec_path" ]; then
  to_verify=$unit
else
  stand_in=$(type -P true)
  echo "check-unit: $exec_path is not installed; verifying a copy whose ExecStart runs $stand_in"
  to_verify=$work/$name
  sed -E "s|^(Exec[A-Za-z]+=[-+!@:]*)$exec_path|\\1$stand_in|" "$unit" > "$to_verify"
fi
if out=$(systemd-analyze verify --man=no "$to_verify" 2>&1) && [ -z "$out" ]; then
  echo "ok    systemd-analyze verify $name"
else
  echo "FAIL  systemd-analyze verify $name:"
  printf '%s\n' "$out" | sed "s|$work/||; s/^/      /"
  failed=1
fi

# security: the score line is "→ Overall exposure level for NAME: 1.5 OK 🙂".
report=$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1) || {
  printf '%s\n' "$report"
  echo "FAIL  systemd-analyze security could not rate $name" >&2
  exit 1
}
line=$(printf '%s\n' "$report" | grep 'Overall exposure level' || true)
score=$(printf '%s\n' "$line" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9][0-9.]*\).*/\1/p')
if [ -z "$score" ]; then
  printf '%s\n' "$report"
  echo "FAIL  no overall exposure level in the output of systemd-analyze security" >&2
  exit 1
fi
echo "${line#→ }"
if awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }'; then
  echo "ok    exposure $score <= $max_exposure"
else
  printf '%s\n' "$report" | grep '✗'
  echo "FAIL  exposure $score is above $max_exposure: the lines marked ✗ above add to it"
  failed=1
fi

# sysusers: apply it to an empty root and read back what it made.
mkdir -p "$work/root/etc"
if out=$(systemd-sysusers --root="$work/root" "$sysusers" 2>&1) \
  && grep -q '^printvigil:' "$work/root/etc/passwd" \
  && grep -Eq '^video:[^:]*:[^:]*:(.*,)?printvigil(,|$)' "$work/root/etc/group" \
  && grep -Eq '^dialout:[^:]*:[^:]*:(.*,)?printvigil(,|$)' "$work/root/etc/group"; then
  echo "ok    systemd-sysusers $(basename "$sysusers"): user printvigil in groups video, dialout"
else
  echo "FAIL  systemd-sysusers $(basename "$sysusers"):"
  printf '%s\n' "$out" | sed 's/^/      /'
  failed=1
fi
exit "$failed"
