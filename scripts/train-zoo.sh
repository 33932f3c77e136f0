#!/usr/bin/env bash
# Trains the whole toy zoo from scratch in dependency order (toy-target,
# toy-draft, the diffusion models adapted from toy-target, toy-dllm's
# Learn2PD filter, toy-target's EAGLE head, its consistency-trained
# CLLM, the DEER drafter aligned to it and the TiDAR model), measures toy-draft as sps's
# drafter at draft length 4, and prints the summary of reports/zoo: wall
# time per model and in all, size, and the test-split scores of every
# training record.
#
# usage: scripts/train-zoo.sh [OUT_ROOT]   (default models/toy, in place)
# env:   AGAINST=DIR  also check each model against the zoo in DIR
#                     (same test scores within 2 points)
#        ZOO_MODELS="toy-eagle toy-cllm"  train only these (the others
#                     must be in OUT_ROOT already)
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-models/toy}
cargo build --release --locked -q
bin=${CARGO_TARGET_DIR:-target}/release/pdbench
mkdir -p "$root"
start=$(date +%s.%N)
for name in ${ZOO_MODELS:-toy-target toy-draft toy-dllm toy-bdllm toy-learn2pd toy-eagle toy-cllm toy-deer toy-tidar}; do
  args=(train --recipe "$name" --out "$root/$name")
  if [ "$root" != models/toy ]; then
    # Models adapted from (or drafting for, or filtering) another zoo
    # model use this zoo's.
    init=$(sed -n 's/^init *= *"\(.*\)"/\1/p' "recipes/$name.toml")
    if [ -n "$init" ]; then
      args+=(--init "$root/$(basename "$init")")
    fi
    target=$(sed -n 's/^target *= *"\(.*\)"/\1/p' "recipes/$name.toml")
    if [ -n "$target" ]; then
      args+=(--target "$root/$(basename "$target")")
    fi
  fi
  "$bin" "${args[@]}"
done
end=$(date +%s.%N)
wall_s=$(python3 -c "print(round($end - $start, 1))")

# toy-draft's bar: τ (tokens per target forward) of sps at draft length 4.
run_id=zoo-sps-$(date -u +%Y%m%dT%H%M%S)
"$bin" run --suite toy --model "$root/toy-target" --draft "$root/toy-draft" \
  --method sps --set sps.draft_len=4 --results-dir results --run-id "$run_id" --no-report
"$bin" report "results/$run_id" --out "results/$run_id/report" > /dev/null
tau=$(python3 -c "import csv,sys; print([r for r in csv.DictReader(open(sys.argv[1])) if r['method']=='sps'][0]['mean_accepted_tokens'])" "results/$run_id/report/report.csv")

python3 scripts/zoo_summary.py "$root" --wall-s "$wall_s" --sps-tau "$tau" \
  ${AGAINST:+--against "$AGAINST"}
