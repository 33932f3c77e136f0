#!/usr/bin/env bash
# The shared-machine experiment (reports/interference): the toy suite run
# quiet three times, with a bounded 15 s busy loop at the start, and with
# the loop throughout, in the default (interleaved) order and in
# `--order method`; then every disturbed run's speedups beside the quiet
# ones, the meter's figures, and what `compare` says of each against the
# first quiet run.
#
# Usage: scripts/interference.sh [--limit N] [--out DIR] [--threads N]
#   --threads N  pass a fixed thread count to every run (default: each run
#                chooses its own, as a user's run does)
#
# Run it on an otherwise idle machine: the quiet runs are the reference.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=60
out=reports/interference
threads=()
while [ $# -gt 0 ]; do
  case "$1" in
    --limit) limit=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --threads) threads=(--threads "$2"); shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --quiet
bin=$target/release/pdbench
runs=$(mktemp -d)
trap 'rm -rf "$runs"; kill $(jobs -p) 2>/dev/null || true' EXIT
mkdir -p "$out"

busy() { timeout "$1" sh -c 'while :; do :; done' & }

run() {  # run ID [ARGS...]
  local id=$1; shift
  echo "== $id" >&2
  "$bin" run --limit "$limit" --run-id "$id" --results-dir "$runs" --no-report "${threads[@]}" "$@" \
    2> "$runs/$id.log" || { tail -5 "$runs/$id.log" >&2; exit 1; }
  grep -E "^(threads|host interference|warning: disturbed)" "$runs/$id.log" >&2 || true
}

for order in interleaved method; do
  for i in 1 2 3; do run "quiet-$i-$order" --order "$order"; done
  busy 15; run "start-$order" --order "$order"
  busy 3600; hog=$!; run "throughout-$order" --order "$order"; kill "$hog" 2>/dev/null || true
  wait 2>/dev/null || true
done

for d in "$runs"/*/; do
  id=$(basename "$d")
  "$bin" report "$d" --out "$out/$id" > /dev/null
  cp "$d/manifest.json" "$out/$id/manifest.json"
  cp "$runs/$id.log" "$out/$id/run.log"
  # Only the tables and the manifest are kept; the figures are the
  # other reports' business.
  rm -f "$out/$id"/*.png "$out/$id"/*.svg "$out/$id"/report.parquet "$out/$id"/report.tex
done

# compare: each run against the first quiet run of its order.
: > "$out/compare.tsv"
for order in interleaved method; do
  for id in quiet-2 quiet-3 start throughout; do
    set +e
    "$bin" compare "$runs/quiet-1-$order" "$runs/$id-$order" > "$runs/cmp.md" 2> "$runs/cmp.err"
    code=$?
    set -e
    why=$(head -c 400 "$runs/cmp.err" | tr '\n\t' '  ')
    printf '%s\t%s\t%s\n' "$id-$order" "$code" "$why" >> "$out/compare.tsv"
  done
done

python3 scripts/interference_summary.py "$out" > "$out/summary.md"
cat "$out/summary.md"
