#!/usr/bin/env bash
# ggml's own per-block kernel speed on this host, for reports/cpu/kernels-vs-ggml.md:
# llama.cpp 0c1e570's test-quantize-perf (vec_dot of one column against 8-bit
# activations, 65536 values, L2-resident), for the formats of the three GGUFs.
# Prints "format min-TSC-cycles-per-32-values TSC-MHz".
#
# usage: scripts/peer/ggml-kernels.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
llama=$(scripts/peer/build-llamacpp.sh)
if [ ! -x "$llama/build/bin/test-quantize-perf" ]; then
  cmake -S "$llama" -B "$llama/build" -DLLAMA_BUILD_TESTS=ON > /dev/null
  cmake --build "$llama/build" --target test-quantize-perf -j2 > /dev/null
fi
mhz=$(grep -m1 -o 'Detected [0-9.]* MHz' /proc/cpuinfo 2>/dev/null || grep -m1 'cpu MHz' /proc/cpuinfo | awk '{print $4}')
for t in q4_K q6_K q4_1 q5_0 q8_0; do
  c=$("$llama/build/bin/test-quantize-perf" --op vec_dot_q --type "$t" --size 65536 -i 200 \
      | awk '/min cycles\/32 vals/ {print $NF; exit}')
  echo "$t $c $mhz"
done
