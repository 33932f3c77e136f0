#!/usr/bin/env bash
# The CPU speed benchmark of reports/cpu: pdbench's AR backbone beside
# llama.cpp's own llama-bench (built with GGML_NATIVE=ON, so the peer runs at
# its best on this host) on the same GGUF files and thread counts. Rounds
# alternate pdbench and llama.cpp per model, so drift in the machine hits
# both; the report takes the median of the rounds. The first round also
# times each weight format's kernel against a streaming read (bench
# --kernels) and the verification cost curve (bench --widths beside
# llama-bench -p k -d 64).
#
# usage: scripts/bench-cpu.sh [OUT_DIR]     (default reports/cpu)
# env:   MODELS="smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b"  THREADS=1,2
#        ROUNDS=3  REPEATS=3  DECODE=64  WIDTHS=1,2,4,8,16  LLAMA_CPP=a built llama.cpp tree
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-reports/cpu}
models=${MODELS:-"smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b"}
threads=${THREADS:-1,2}
rounds=${ROUNDS:-3}
repeats=${REPEATS:-3}
decode=${DECODE:-64}
widths=${WIDTHS:-1,2,4,8,16}
llama=$(scripts/peer/build-llamacpp.sh)
lb=$llama/build/bin/llama-bench

cargo build --release --locked -q
bin=${CARGO_TARGET_DIR:-target}/release/pdbench
raw=$out/rounds
rm -rf "$raw" && mkdir -p "$raw"
for m in $models; do
  path=$("$bin" fetch "$m" | tail -n 1)
  for r in $(seq 1 "$rounds"); do
    echo "$m round $r/$rounds" >&2
    first=()
    if [ "$r" = 1 ]; then first=(--kernels --widths "$widths" --overhead true); else first=(--overhead false); fi
    "$bin" bench --model "$m" --threads "$threads" --repeats "$repeats" --prefill 64 --decode "$decode" \
      "${first[@]}" --out "$raw/pdbench-$m-r$r" > /dev/null
    "$lb" -m "$path" -t "$threads" -p 64 -n "$decode" -r "$repeats" -o json > "$raw/llamacpp-$m-r$r.json" 2>/dev/null
    if [ "$r" = 1 ]; then
      "$lb" -m "$path" -t "$threads" -p "$widths" -d 64 -n 0 -r "$repeats" -o json \
        > "$raw/llamacpp-widths-$m.json" 2>/dev/null
    fi
  done
done
python3 scripts/compare_bench.py "$out" "$rounds" $models > "$out/README.md"
cat "$out/README.md"
