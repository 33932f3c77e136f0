#!/usr/bin/env bash
# The benchmark of reports/drafters: the diffusion-side drafters on the toy
# world (the toy suite's 300 test items, greedy, CPU).
#   1. toy-target with ar, eagle (toy-eagle), deer (toy-deer) and DiffuSpec
#      with its ablation (methods/diffuspec-ablation.toml, toy-dllm
#      drafting): accepted lengths, τ and speedup against ar.
#   2. deer with toy-dllm (the drafter before DEER's alignment).
#   3. toy-tidar with ar and tidar: TiDAR's tokens per forward and speedup
#      against AR on the same model (whose tokens it emits).
#
# usage: scripts/diffusion-drafters.sh [OUT_DIR]     (default reports/drafters)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-reports/drafters}
cargo build --release --locked -q
bin=${CARGO_TARGET_DIR:-target}/release/pdbench
stamp=$(date -u +%Y%m%dT%H%M%S)
methods=$(mktemp)
trap 'rm -f "$methods"' EXIT
{ printf '[ar]\n\n[eagle]\n\n[deer]\n\n'; cat methods/diffuspec-ablation.toml; } > "$methods"
"$bin" run --suite toy --model toy-target --methods-file "$methods" \
  --results-dir results --run-id "drafters-$stamp" --no-report
"$bin" run --suite toy --model toy-target --method ar --method deer --dllm-drafter toy-dllm \
  --results-dir results --run-id "deer-init-$stamp" --no-report
"$bin" run --suite toy --model toy-tidar --method ar --method tidar \
  --results-dir results --run-id "tidar-$stamp" --no-report
mkdir -p "$out/drafters" "$out/deer-init" "$out/tidar"
"$bin" report "results/drafters-$stamp" --out "$out/drafters"
"$bin" report "results/deer-init-$stamp" --out "$out/deer-init"
"$bin" report "results/tidar-$stamp" --out "$out/tidar"
cp "results/drafters-$stamp/manifest.json" "$out/drafters/manifest.json"
cp "results/deer-init-$stamp/manifest.json" "$out/deer-init/manifest.json"
cp "results/tidar-$stamp/manifest.json" "$out/tidar/manifest.json"
python3 scripts/drafter_steps.py "results/drafters-$stamp" "results/deer-init-$stamp" \
  "results/tidar-$stamp" > "$out/steps.md"
echo "runs: results/drafters-$stamp results/deer-init-$stamp results/tidar-$stamp"
