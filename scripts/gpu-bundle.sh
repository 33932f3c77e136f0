#!/usr/bin/env bash
# Packs what a GPU run needs into dist/gpu/ (ignored, carried with the
# device tool's `carry`), and checks that each carry fits the device
# tool's 64 MiB limit together with the tracked tree (which holds the toy
# zoo, models/toy).
#
#   dist/gpu/bin/pdbench-cuda.xz   the CUDA binary (scripts/build-cuda.sh)
#   dist/gpu/smollm2/partNN        SmolLM2-135M Q4_1 GGUF in parts sized to what
#                                  a carry leaves beside the tracked tree; carry
#                                  them one call at a time while the lent machine
#                                  stays warm (30 s; ignored files there survive
#                                  between calls)
#   dist/gpu/SHA256SUMS            every file above; scripts/gpu-run.sh checks it
#
# usage: scripts/gpu-bundle.sh            build the CUDA binary, then pack
#        scripts/gpu-bundle.sh --dry-run  pack the CPU binary under the same name
#                                         (tests packing and the size checks here)
set -euo pipefail
cd "$(dirname "$0")/.."
dry=false
[ "${1:-}" = "--dry-run" ] && dry=true
limit=$((64 * 1024 * 1024))
out=dist/gpu
rm -rf "$out"
mkdir -p "$out/bin" "$out/smollm2"

if $dry; then
  cargo build --release --locked -q --bin pdbench
  # Stripped, as build-cuda.sh strips the CUDA binary.
  strip -o "$out/bin/pdbench-cuda" "${CARGO_TARGET_DIR:-target}/release/pdbench"
  xz -9 -T0 "$out/bin/pdbench-cuda"
else
  scripts/build-cuda.sh
  cp dist/pdbench-cuda.xz "$out/bin/"
fi

# The first carry takes the binary (and the toy zoo in the tracked tree);
# later ones a model part each, sized to fill what the tracked tree leaves
# of a carry (with 2 MiB to spare). The machine stays warm only 30 s
# between calls, so few, full parts beat many small ones.
tracked=$(git ls-files -z | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
bin=$(stat -c %s "$out/bin/pdbench-cuda.xz")
if [ $((tracked + bin)) -gt "$limit" ]; then
  echo "error: the tracked tree ($((tracked >> 20)) MiB) and the binary ($((bin >> 20)) MiB) exceed a 64 MiB carry" >&2
  exit 1
fi
part_size=$(( (limit - tracked - 2 * 1024 * 1024) / 1048576 * 1048576 ))
if [ "$part_size" -lt $((4 * 1024 * 1024)) ]; then
  echo "error: the tracked tree ($((tracked >> 20)) MiB) leaves under 4 MiB of a 64 MiB carry" >&2
  exit 1
fi
home=${PDBENCH_HOME:-$HOME/.cache/pdbench/home}
gguf=$home/models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$gguf" ]; then
  split -b "$part_size" -d -a 2 "$gguf" "$out/smollm2/part"
  sha256sum "$gguf" | awk '{print $1"  smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}' > "$out/smollm2/WHOLE.sha256"
else
  echo "note: $gguf not fetched (pdbench fetch smollm2-135m); the bundle holds the toy zoo only"
fi
( cd "$out" && find . -type f ! -name SHA256SUMS | sort | xargs sha256sum > SHA256SUMS )

# What travels per call: the tracked tree with the binary (first call) or
# with one model part (later calls).
largest_part=$(find "$out/smollm2" -name 'part*' -printf '%s\n' 2>/dev/null | sort -n | tail -1)
largest_part=${largest_part:-0}
printf 'tracked tree %d MiB; first call + binary %d MiB = %d MiB; later calls + one model part (largest %d MiB) = %d MiB (limit 64 MiB)\n' \
  $((tracked >> 20)) $((bin >> 20)) $(((tracked + bin) >> 20)) $((largest_part >> 20)) $(((tracked + largest_part) >> 20))
if [ $((tracked + largest_part)) -gt "$limit" ]; then
  echo "error: a carry of the tracked tree and one model part exceeds 64 MiB" >&2
  exit 1
fi
echo "bundle: $out ($(du -sh "$out" | cut -f1)); parts: $(ls "$out/smollm2" | grep -c part || true)"
