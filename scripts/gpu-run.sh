#!/usr/bin/env bash
# Runs on the lent GPU machine (no Rust, no internet), from the repository
# root, after scripts/gpu-bundle.sh's dist/gpu/ was carried there; writes
# everything under $OUT (the device tool brings it back) or out/gpu.
#
#   1. unpacks the binary, checks SHA256SUMS, finds the CUDA 13 libraries;
#   2. records the GPU (nvidia-smi);
#   3. `pdbench check` on cuda:0 against the CPU: the toy zoo in f32 and in
#      bf16 (what `run` uses there), logits within tolerance and every
#      lossless method equal to ar (exit 1 is recorded, not fatal);
#   4. the toy suite with every zoo method on cuda:0, and the report;
#   5. the AR backbone's prefill/decode speed on the toy target in f32 and
#      bf16 with a per-phase profile (bench --profile), and PyTorch/
#      transformers eager on the same weights and dtype (scripts/torch_decode.py);
#   6. with the SmolLM2 parts present (reassembled and sha256-checked), its
#      check (quantized), bench, its export to the HF layout benched against
#      PyTorch as in 5, and ar and pld on the smoke suite.
#
# usage: scripts/gpu-run.sh [--dry-run]   --dry-run: CPU, 5 prompts (tests the
#                                          script on a machine without a GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
dry=false
[ "${1:-}" = "--dry-run" ] && dry=true
out=${OUT:-out/gpu}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
( cd dist/gpu && sha256sum -c --quiet SHA256SUMS )
xz -dc dist/gpu/bin/pdbench-cuda.xz > "$work/pdbench"
chmod +x "$work/pdbench"
bin=$work/pdbench
export PDBENCH_HOME=$work/home

if $dry; then
  device=cpu
  limit=(--limit 5)
else
  device=cuda:0
  limit=()
  lib=$(find / -name 'libcublas.so.13*' -not -path '*/proc/*' 2>/dev/null | head -1 || true)
  [ -n "$lib" ] && export LD_LIBRARY_PATH=$(dirname "$lib"):${LD_LIBRARY_PATH:-}
  nvidia-smi --query-gpu=name,uuid,driver_version,power.limit,clocks.sm,clocks.mem \
    --format=csv > "$out/nvidia-smi.csv" 2>&1 || true
fi

# A failed check is a finding to bring back, not a reason to stop.
check() {
  local name=$1; shift
  "$bin" check --device "$device" --out "$out/check-$name.json" "$@" > "$out/check-$name.md" 2> "$out/check-$name.log" \
    || echo "check $name: exit $? (see check-$name.md)" | tee -a "$out/errors.txt"
  tail -3 "$out/check-$name.md"
}
check toy-f32 --dtype f32 --prompts 8 --tokens 32
check toy-bf16 --dtype bf16 --prompts 8 --tokens 32

"$bin" run --device "$device" "${limit[@]}" --results-dir "$work/results" --run-id toy --no-report \
  2>&1 | tail -5
"$bin" report "$work/results/toy" --out "$out/toy" > /dev/null
cp "$work/results/toy/manifest.json" "$out/toy/"
# ar's backbone against the peer, PyTorch/transformers eager (where torch
# imports), on the same weights in the same dtype; --profile says where a
# decoded token's time goes.  usage: versus NAME MODEL_DIR PREFILL DECODE
versus() {
  local name=$1 dir=$2 pp=$3 tg=$4 dt torch_dt
  for dt in f32 bf16; do
    "$bin" bench --device "$device" --dtype "$dt" --threads 1 --prefill "$pp" --decode "$tg" --profile \
      --model "$dir" --out "$out/bench-$name-$dt" \
      2>&1 | tail -3 || echo "bench on $name ($dt) failed" | tee -a "$out/errors.txt"
    torch_dt=$([ "$dt" = bf16 ] && echo bfloat16 || echo float32)
    if python3 -c "import torch, transformers" 2> /dev/null; then
      python3 scripts/torch_decode.py "$dir" --device "${device%%:*}" --dtype "$torch_dt" \
        --prefill "$pp" --decode "$tg" --out "$out/torch-$name-$dt.json" > /dev/null \
        || echo "torch peer on $name ($dt) failed" | tee -a "$out/errors.txt"
    else
      echo "torch/transformers not importable here: no peer figure ($name, $dt)" | tee -a "$out/errors.txt"
    fi
  done
}
versus toy models/toy/toy-target 16 32

parts=(dist/gpu/smollm2/part*)
if [ -e "${parts[0]}" ]; then
  mkdir -p "$work/smollm2"
  cat "${parts[@]}" > "$work/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  whole=$(cut -d' ' -f1 dist/gpu/smollm2/WHOLE.sha256)
  echo "$whole  $work/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c --quiet
  gguf=$work/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  check smollm2-q4_1 --model "$gguf" --prompts 4 --tokens 32
  # The same weights dequantized in the HF layout: the real-model peer figure.
  if "$bin" models export "$gguf" --out "$work/smollm2-hf" --dtype f32 > "$out/smollm2-export.json"; then
    if $dry; then versus smollm2-hf "$work/smollm2-hf" 16 16; else versus smollm2-hf "$work/smollm2-hf" 64 128; fi
  else
    echo "models export of SmolLM2 failed" | tee -a "$out/errors.txt"
  fi
  "$bin" bench --device "$device" --threads 1 --profile --model "$gguf" --out "$out/bench-smollm2" 2>&1 | tail -3 || true
  "$bin" run --device "$device" --model "$gguf" --suite smoke \
    --method ar --method pld --results-dir "$work/results" --run-id smollm2 --no-report 2>&1 | tail -3 || true
  [ -d "$work/results/smollm2" ] && "$bin" report "$work/results/smollm2" --out "$out/smollm2" > /dev/null
fi
echo "wrote $out"
