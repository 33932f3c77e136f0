#!/usr/bin/env bash
# Runs on the lent GPU machine (no Rust, no internet), from the repository
# root, after scripts/gpu-bundle.sh's dist/gpu/ was carried there. The
# device tool brings back at most 8 files from $OUT, so each phase packs
# its results into $OUT/gpu-PHASE.tar.xz and writes $OUT/gpu-PHASE.md (the
# summary); without $OUT they go to out/gpu.
#
# Phase `toy` (the first call: the binary and the toy zoo in the tracked tree):
#   1. unpacks the binary, checks its sum, finds the CUDA 13 libraries,
#      records nvidia-smi;
#   2. `pdbench check` on cuda:0 against the CPU: the toy zoo in f32 and in
#      bf16 (what `run` uses there); a failed check is recorded, not fatal;
#   3. the toy suite with every zoo method on cuda:0 (speedups, energy per
#      token from NVML, peak GPU memory), and its report;
#   4. ar's backbone on the toy target in f32 and bf16 with a per-phase
#      profile (bench --profile), beside PyTorch/transformers eager on the
#      same weights and dtype (scripts/torch_decode.py).
# Phase `smollm2` (the call that carries the last model part): reassembles
# SmolLM2-135M Q4_1 (sha256 checked), checks it on cuda:0 (quantized),
# exports it to the HF layout and benches that against PyTorch as in 4,
# benches the GGUF, and runs ar and pld on the smoke suite.
#
# usage: scripts/gpu-run.sh [toy|smollm2|all] [--dry-run]
#        --dry-run: CPU and 5 prompts (tests the script without a GPU)
# env:   PYTHON: the interpreter with torch and transformers (default
#        python3; a dry run here can point it at a venv that has them)
set -euo pipefail
# Resolved before the cd below, so a relative PYTHON means what it said.
python=${PYTHON:-python3}
[[ $python == */* ]] && python=$(realpath -s "$python")  # -s: a venv's python is a symlink
cd "$(dirname "$0")/.."
phase=all
dry=false
for a in "$@"; do
  case $a in
    toy|smollm2|all) phase=$a ;;
    --dry-run) dry=true ;;
    *) echo "usage: scripts/gpu-run.sh [toy|smollm2|all] [--dry-run]" >&2; exit 2 ;;
  esac
done
final=${OUT:-out/gpu}
mkdir -p "$final"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Only the files at hand are checked: the model parts arrive in later calls.
( cd dist/gpu && sha256sum -c --quiet --ignore-missing SHA256SUMS )
xz -dc dist/gpu/bin/pdbench-cuda.xz > "$work/pdbench"
chmod +x "$work/pdbench"
bin=$work/pdbench
export PDBENCH_HOME=$work/home

if $dry; then
  device=cpu
  limit=(--limit 5)
  small=true
else
  device=cuda:0
  limit=()
  small=false
  lib=$(find / -name 'libcublas.so.13*' -not -path '*/proc/*' 2>/dev/null | head -1 || true)
  [ -n "$lib" ] && export LD_LIBRARY_PATH=$(dirname "$lib"):${LD_LIBRARY_PATH:-}
fi

# A failed step is a finding to bring back, not a reason to stop.
note() { echo "$*" | tee -a "$out/errors.txt"; }

check() {
  local name=$1; shift
  "$bin" check --device "$device" --out "$out/check-$name.json" "$@" > "$out/check-$name.md" 2> "$out/check-$name.log" \
    || note "check $name: exit $? (see check-$name.md)"
  tail -3 "$out/check-$name.md"
}

# ar's backbone against the peer, PyTorch/transformers eager (where torch
# imports), on the same weights in the same dtype; --profile says where a
# decoded token's time goes.  usage: versus NAME MODEL_DIR PREFILL DECODE
versus() {
  local name=$1 dir=$2 pp=$3 tg=$4 dt torch_dt
  for dt in f32 bf16; do
    "$bin" bench --device "$device" --dtype "$dt" --threads 1 --prefill "$pp" --decode "$tg" --profile \
      --model "$dir" --out "$out/bench-$name-$dt" 2>&1 | tail -3 \
      || note "bench on $name ($dt) failed"
    torch_dt=$([ "$dt" = bf16 ] && echo bfloat16 || echo float32)
    if "$python" -c "import torch, transformers" 2> /dev/null; then
      "$python" scripts/torch_decode.py "$dir" --device "${device%%:*}" --dtype "$torch_dt" \
        --prefill "$pp" --decode "$tg" --out "$out/torch-$name-$dt.json" > /dev/null \
        || note "torch peer on $name ($dt) failed"
    else
      note "torch/transformers not importable with $python: no peer figure ($name, $dt)"
    fi
  done
}

# Packs a phase's folder into one archive and a summary beside it.
finish() {
  local name=$1
  {
    echo "# gpu-run.sh $name ($(date -u +%FT%TZ), device $device)"
    for f in "$out"/check-*.md "$out"/bench-*.md; do
      [ -e "$f" ] || continue
      echo; echo "## $(basename "$f")"; echo; cat "$f"
    done
    for f in "$out"/torch-*.json; do
      [ -e "$f" ] || continue
      echo; echo "## $(basename "$f")"; echo; cat "$f"
    done
    if [ -e "$out/errors.txt" ]; then echo; echo "## errors"; echo; cat "$out/errors.txt"; fi
  } > "$final/gpu-$name.md"
  tar -C "$out" -cJf "$final/gpu-$name.tar.xz" .
  echo "wrote $final/gpu-$name.tar.xz and $final/gpu-$name.md"
}

run_toy() {
  out=$work/out-toy
  mkdir -p "$out"
  if ! $dry; then
    nvidia-smi --query-gpu=name,uuid,driver_version,power.limit,clocks.sm,clocks.mem \
      --format=csv > "$out/nvidia-smi.csv" 2>&1 || true
  fi
  check toy-f32 --dtype f32 --prompts 8 --tokens 32
  check toy-bf16 --dtype bf16 --prompts 8 --tokens 32
  if "$bin" run --device "$device" "${limit[@]}" --results-dir "$work/results" --run-id toy --no-report \
    > "$out/run-toy.log" 2>&1; then
    "$bin" report "$work/results/toy" --out "$out/toy" > /dev/null || note "toy report failed"
    cp "$work/results/toy/manifest.json" "$work/results/toy/samples.jsonl" "$out/toy/"
  else
    note "toy run failed (see run-toy.log)"
  fi
  versus toy models/toy/toy-target 16 32
  finish toy
}

run_smollm2() {
  out=$work/out-smollm2
  mkdir -p "$out"
  local parts=(dist/gpu/smollm2/part*)
  if [ ! -e "${parts[0]}" ]; then
    note "no SmolLM2 parts in dist/gpu/smollm2"
    finish smollm2
    return
  fi
  ( cd dist/gpu && grep ' ./smollm2/part' SHA256SUMS | sha256sum -c --quiet )
  mkdir -p "$work/smollm2"
  local gguf=$work/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  cat "${parts[@]}" > "$gguf"
  echo "$(cut -d' ' -f1 dist/gpu/smollm2/WHOLE.sha256)  $gguf" | sha256sum -c --quiet
  check smollm2-q4_1 --model "$gguf" --prompts 4 --tokens 32
  # The same weights dequantized in the HF layout: the real-model peer figure.
  if "$bin" models export "$gguf" --out "$work/smollm2-hf" --dtype f32 > "$out/smollm2-export.json"; then
    if $small; then versus smollm2-hf "$work/smollm2-hf" 16 16; else versus smollm2-hf "$work/smollm2-hf" 64 128; fi
  else
    note "models export of SmolLM2 failed"
  fi
  "$bin" bench --device "$device" --threads 1 --profile --model "$gguf" --out "$out/bench-smollm2" 2>&1 | tail -3 \
    || note "bench on the SmolLM2 GGUF failed"
  if "$bin" run --device "$device" --model "$gguf" --suite smoke --method ar --method pld \
    --results-dir "$work/results" --run-id smollm2 --no-report > "$out/run-smollm2.log" 2>&1; then
    "$bin" report "$work/results/smollm2" --out "$out/smollm2" > /dev/null || note "smollm2 report failed"
    cp "$work/results/smollm2/manifest.json" "$work/results/smollm2/samples.jsonl" "$out/smollm2/"
  else
    note "SmolLM2 run failed (see run-smollm2.log)"
  fi
  finish smollm2
}

case $phase in
  toy) run_toy ;;
  smollm2) run_smollm2 ;;
  all) run_toy; run_smollm2 ;;
esac
