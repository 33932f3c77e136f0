#!/usr/bin/env bash
# The real-pair benchmark of reports/cpu-sps-pair: Qwen2.5-Coder-0.5B
# drafting for Qwen2.5-Coder-1.5B (Q4_K_M) on the first 20 HumanEval
# prompts, greedy, 128 new tokens, CPU, 2 threads; `ar`, `sps` at draft
# lengths 3 and 5, and `pld` (no drafter) in one run.
#
# usage: scripts/bench-sps-pair.sh [OUT_DIR]     (default reports/cpu-sps-pair)
# env:   LIMIT=20  THREADS=2
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-reports/cpu-sps-pair}
limit=${LIMIT:-20}
threads=${THREADS:-2}
cargo build --release --locked -q
bin=${CARGO_TARGET_DIR:-target}/release/pdbench
run_id=sps-pair-$(date -u +%Y%m%dT%H%M%S)
"$bin" run --suite humaneval --model qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods-file methods/speculative-cpu.toml --limit "$limit" --threads "$threads" \
  --warmup 1 --results-dir results --run-id "$run_id" --no-report
mkdir -p "$out"
"$bin" report "results/$run_id" --out "$out"
cp "results/$run_id/manifest.json" "$out/manifest.json"
echo "run: results/$run_id"
