#!/usr/bin/env bash
# Gentle degradation (reports/interference/degradation.md): prefill and
# decode speed (`pdbench bench`'s pp and tg tests) at 1 thread and at 2
# threads on candle's barrier pool and on pdbench's own, quiet and with
# one of the machine's cores taken by a busy loop, in alternating rounds
# so that drift in the host hits every configuration alike.
#
# Usage: scripts/degradation.sh [--rounds N] [--out FILE] [MODEL ...]
#   MODEL defaults to toy-target and qwen2.5-coder-0.5b.
# Run it on an otherwise idle 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3
out=reports/interference/degradation.md
models=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) models+=("$1"); shift ;;
  esac
done
[ ${#models[@]} -gt 0 ] || models=(toy-target qwen2.5-coder-0.5b)
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --quiet
bin=$target/release/pdbench
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; kill $(jobs -p) 2>/dev/null || true' EXIT

bench() {  # MODEL THREADS POOL FILE
  PDBENCH_POOL=$3 "$bin" bench --model "$1" --threads "$2" --prefill 32 --decode 32 --repeats 2 \
    --overhead false --out "$4" > /dev/null 2>&1
}

# (threads, pool): one thread runs no pool; two threads on candle's
# barrier pool (what pdbench's kernels used before) and on pdbench's own.
configs=("1 pdbench" "2 candle" "2 pdbench")
for m in "${models[@]}"; do
  "$bin" models show "$m" > /dev/null 2>&1 || "$bin" fetch "$m" > /dev/null
  for r in $(seq 1 "$rounds"); do
    for c in "${configs[@]}"; do
      read -r t pool <<< "$c"
      echo "== $m round $r, $t thread(s), $pool pool: quiet, then one core busy" >&2
      bench "$m" "$t" "$pool" "$tmp/$m-t$t-$pool-quiet-r$r"
      timeout 900 sh -c 'while :; do :; done' & hog=$!
      sleep 0.5
      bench "$m" "$t" "$pool" "$tmp/$m-t$t-$pool-busy-r$r"
      kill "$hog"; wait "$hog" 2>/dev/null || true
    done
  done
done

# End to end: the toy suite's ar over 60 prompts through `run` (prefill,
# decode, and the pauses between samples in which idle pool workers park).
for r in $(seq 1 "$rounds"); do
  for c in "${configs[@]}"; do
    read -r t pool <<< "$c"
    for state in quiet busy; do
      echo "== run: round $r, $t thread(s), $pool pool, $state" >&2
      [ "$state" = busy ] && { timeout 900 sh -c 'while :; do :; done' & hog=$!; sleep 0.5; }
      PDBENCH_POOL=$pool "$bin" run --method ar --limit 60 --threads "$t" --no-report \
        --results-dir "$tmp/runs" --run-id "run-t$t-$pool-$state-r$r" > /dev/null 2>&1
      [ "$state" = busy ] && { kill "$hog"; wait "$hog" 2>/dev/null || true; }
    done
  done
done

mkdir -p "$(dirname "$out")"
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)
python3 scripts/degradation_table.py "$tmp" "$rounds" "$cpu" "${models[@]}" > "$out"
cat "$out"
