#!/usr/bin/env bash
# The CPU speed benchmark of reports/cpu/: pdbench's AR backbone beside
# llama.cpp (llama-cpp-python, built from source with GGML_NATIVE) on the
# same GGUF files, thread counts and tests, one model after the other in one
# run, so both see the same machine state.
#
# usage: scripts/bench-cpu.sh [OUT_DIR]     (default reports/cpu)
# env:   MODELS="smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b"  THREADS=1,2  REPEATS=5
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-reports/cpu}
models=${MODELS:-"smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b"}
threads=${THREADS:-1,2}
repeats=${REPEATS:-5}
cache=${PDBENCH_CACHE:-$HOME/.cache/pdbench}
venv=$cache/peer-venv

cargo build --release --locked -q
bin=${CARGO_TARGET_DIR:-target}/release/pdbench
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  echo "installing llama-cpp-python into $venv (builds llama.cpp, ~15 minutes on 2 cores)"
  python3 -m venv "$venv"
  CMAKE_ARGS="-DGGML_NATIVE=ON" "$venv/bin/pip" install -q --disable-pip-version-check llama-cpp-python==0.3.36
fi

mkdir -p "$out"
for m in $models; do
  path=$("$bin" fetch "$m" | tail -n 1)
  "$bin" bench --model "$m" --threads "$threads" --repeats "$repeats" --out "$out/pdbench-$m" > /dev/null
  "$venv/bin/python" scripts/peer_llamacpp.py --model "$path" --threads "$threads" \
    --repeats "$repeats" > "$out/llamacpp-$m.json"
done
python3 scripts/compare_bench.py "$out" $models > "$out/README.md"
cat "$out/README.md"
