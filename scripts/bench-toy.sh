#!/usr/bin/env bash
# The toy-world benchmark of reports/toy: the embedded default run (the
# toy suite's 300 test items on toy-target, every method the zoo supports,
# greedy, CPU), reported with τ, the cost-aware figures and speedup vs ar.
#
# usage: scripts/bench-toy.sh [OUT_DIR]     (default reports/toy)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-reports/toy}
cargo build --release --locked -q
bin=${CARGO_TARGET_DIR:-target}/release/pdbench
run_id=toy-$(date -u +%Y%m%dT%H%M%S)
"$bin" run --results-dir results --run-id "$run_id" --no-report
mkdir -p "$out"
"$bin" report "results/$run_id" --out "$out"
cp "results/$run_id/manifest.json" "$out/manifest.json"
echo "run: results/$run_id"
