#!/usr/bin/env bash
# The diffusion benchmark of reports/diffusion: ParallelBench's
# quality-speed curve on the toy world. toy-dllm decodes the toy suite's
# 300 test items under every unmasking strategy at several degrees of
# parallelism (methods/dllm-curve.toml), beside Learn2PD with and without
# end-of-text prediction and ar on toy-target; the report gives score
# against tokens per step per task family, PBx and the Pareto plane.
#
# usage: scripts/diffusion-curve.sh [OUT_DIR]     (default reports/diffusion)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-reports/diffusion}
cargo build --release --locked -q
bin=${CARGO_TARGET_DIR:-target}/release/pdbench
run_id=diffusion-$(date -u +%Y%m%dT%H%M%S)
"$bin" run --suite toy --model toy-target --methods-file methods/dllm-curve.toml \
  --results-dir results --run-id "$run_id" --no-report
mkdir -p "$out"
"$bin" report "results/$run_id" --out "$out"
cp "results/$run_id/manifest.json" "$out/manifest.json"
echo "run: results/$run_id"
