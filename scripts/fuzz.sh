#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ (cargo-fuzz, libFuzzer) one after the other, each seeded
# from its committed corpus (fuzz/corpus/<target>/) and crash reproducers
# (fuzz/regressions/<target>/), with a 512 MB RSS limit and a 10 s limit per input.
# Installs cargo-fuzz (crates.io) and the nightly toolchain when they are missing.
#
#   scripts/fuzz.sh [--smoke] [--time SECS | --runs N] [--sanitizer S] [TARGET...]
#   scripts/fuzz.sh --update-corpus [TARGET...]
#
#   TARGET           mjpeg, jpeg, moonraker, server, config (default: all of them)
#   --smoke          half a minute per target (CI)
#   --time SECS      fuzz each target for SECS seconds (default 300)
#   --runs N         fuzz each target for N executions instead (e.g. 10000000)
#   --sanitizer S    address (default), none (faster, catches less), memory, thread, leak
#   --update-corpus  adds what the last runs found (fuzz/work/<target>/) to the committed
#                    corpus, keeping only inputs that add coverage (libFuzzer -merge=1),
#                    and checks the size cap (100 files, 2 MB a target)
#
# New inputs go to fuzz/work/<target>/, crashes to fuzz/artifacts/<target>/ and logs to
# fuzz/logs/ (all git-ignored). A crash is reproduced with
#   cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...
# and, once fixed, its input is committed under fuzz/regressions/TARGET/ (then
# tests/fuzz_regressions.rs replays it in every `cargo test`).
# Prints one line per target: executions, executions per second, and the outcome; exits
# non-zero if any target crashed, ran out of memory or timed out.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

all_targets=(mjpeg jpeg moonraker server config bambu)
mode=time secs=300 runs= sanitizer=address update=0 targets=()
while [ $# -gt 0 ]; do
  case $1 in
    --smoke) mode=time secs=30 ;;
    --time) mode=time secs=$2; shift ;;
    --runs) mode=runs runs=$2; shift ;;
    --sanitizer) sanitizer=$2; shift ;;
    --update-corpus) update=1 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1") ;;
  esac
  shift
done
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
  case " ${all_targets[*]} " in *" $t "*) ;; *) echo "fuzz.sh: no target $t (${all_targets[*]})" >&2; exit 2 ;; esac
done

# Largest input per target: text for the parsers of messages and settings, a frame or a
# stretch of stream for the camera ones.
max_len() {
  case $1 in
    mjpeg|jpeg) echo 262144 ;;
    *) echo 65536 ;;
  esac
}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing the nightly toolchain (cargo-fuzz needs it)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz from crates.io"
  cargo +nightly install cargo-fuzz --locked
fi

fuzz=(cargo +nightly fuzz)
build=(--sanitizer "$sanitizer")
mkdir -p fuzz/logs
echo "fuzz.sh: building the fuzz targets (log: fuzz/logs/build.log)"
if ! "${fuzz[@]}" build "${build[@]}" >fuzz/logs/build.log 2>&1; then
  tail -n 30 fuzz/logs/build.log >&2
  exit 1
fi

if [ "$update" = 1 ]; then
  for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/work/$t"
    "${fuzz[@]}" run "${build[@]}" "$t" -- -merge=1 -max_len="$(max_len "$t")" -rss_limit_mb=512 -timeout=10 \
      "fuzz/corpus/$t" "fuzz/work/$t" >"fuzz/logs/$t-merge.log" 2>&1
    files=$(find "fuzz/corpus/$t" -type f | wc -l)
    kib=$(du -sk "fuzz/corpus/$t" | cut -f1)
    echo "corpus $t: $files files, $kib KiB"
    if [ "$files" -gt 100 ] || [ "$kib" -gt 2048 ]; then
      echo "fuzz.sh: fuzz/corpus/$t is over the cap (100 files, 2 MB): minimise it (cargo +nightly fuzz cmin $t) or drop large inputs" >&2
    fi
  done
  exit 0
fi

failed=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/work/$t" "fuzz/corpus/$t"
  seeds=("fuzz/corpus/$t")
  [ -d "fuzz/regressions/$t" ] && seeds+=("fuzz/regressions/$t")
  if [ "$mode" = runs ]; then limit=(-runs="$runs"); else limit=(-max_total_time="$secs"); fi
  log=fuzz/logs/$t.log
  rc=0
  "${fuzz[@]}" run "${build[@]}" "$t" "fuzz/work/$t" "${seeds[@]}" -- \
    -rss_limit_mb=512 -timeout=10 -max_len="$(max_len "$t")" -print_final_stats=1 "${limit[@]}" \
    >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  secs_run=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  peak=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n 1)
  if [ "$rc" = 0 ]; then
    outcome=ok
  else
    failed=1
    outcome=$(grep -m1 -oE 'ERROR: libFuzzer: [a-z-]+|deadly signal|panicked at [^ ]+' "$log" || echo "exit $rc")
    outcome="FAILED ($outcome; see $log and fuzz/artifacts/$t/)"
  fi
  echo "fuzz $t: ${execs:-?} execs in ${secs_run:-?} s, ${rate:-?} exec/s, peak RSS ${peak:-?} MB: $outcome"
done
exit "$failed"
