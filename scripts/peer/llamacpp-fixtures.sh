#!/usr/bin/env bash
# The greedy-equality fixtures of tests/llamacpp.rs: llama.cpp's greedy ids
# (prompt fed one token at a time), each choice's margin and top-5 logits,
# for raw prompts on the three fetchable GGUFs, with this host's CPU.
#
# usage: scripts/peer/llamacpp-fixtures.sh [OUT_DIR]   (default tests/fixtures/llamacpp)
# env:   LLAMA_CPP=path to a llama.cpp source tree built as ../shared/peers/README.md
#        says (default: $PDBENCH_CACHE/peer/llama.cpp, built there if missing)
#        TOKENS=32
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-tests/fixtures/llamacpp}
tokens=${TOKENS:-32}
cache=${PDBENCH_CACHE:-$HOME/.cache/pdbench}
llama=$(scripts/peer/build-llamacpp.sh)
bin=$cache/peer/llama-greedy-ids
g++ -O2 -std=c++17 -I"$llama/include" -I"$llama/ggml/include" scripts/peer/llama_greedy_ids.cpp \
  -L"$llama/build/bin" -lllama -lggml -lggml-base -Wl,-rpath,"$llama/build/bin" -o "$bin"

cargo build --release --locked -q
pdbench=${CARGO_TARGET_DIR:-target}/release/pdbench
prompts=(
  "The capital of Australia is"
  "def fibonacci(n):"
  "Once upon a time, in a small village,"
  "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May? Answer:"
)
mkdir -p "$out"
for m in smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b; do
  path=$("$pdbench" fetch "$m" | tail -n 1)
  cases=$(mktemp)
  for p in "${prompts[@]}"; do "$bin" -m "$path" -n "$tokens" -t 1 "$p" >> "$cases"; done
  python3 - "$m" "$path" "$tokens" "$cases" "$(git -C "$llama" rev-parse --short HEAD 2>/dev/null || echo 0c1e570)" > "$out/$m.json" <<'PY'
import hashlib, json, platform, sys
model, path, tokens, cases, build = sys.argv[1:]
cpu = {}
for line in open("/proc/cpuinfo"):
    k, _, v = line.partition(":")
    k = k.strip()
    if k in ("model name", "flags") and k not in cpu:
        cpu[k] = v.strip()
simd = [f for f in cpu.get("flags", "").split() if f.startswith(("avx", "fma", "f16c", "amx"))]
print(json.dumps({
    "model": model,
    "gguf_sha256": hashlib.sha256(open(path, "rb").read()).hexdigest(),
    "peer": f"llama.cpp {build} (llama-cpp-python 0.3.36 vendored, GGML_NATIVE=ON), 1 thread",
    "command": f"scripts/peer/llamacpp-fixtures.sh (llama-greedy-ids -m {model}.gguf -n {tokens} -t 1 PROMPT)",
    "cpu_model": cpu.get("model name", "?"),
    "cpu_simd_flags": simd,
    "machine": platform.machine(),
    "cases": [json.loads(l) for l in open(cases)],
}, indent=1))
PY
  rm -f "$cases"
  echo "$out/$m.json"
done
