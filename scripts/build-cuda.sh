#!/usr/bin/env bash
# Builds pdbench with the `cuda` feature on a machine without a GPU (the
# recipe of ../shared/cuda/README.md): a CUDA 13 toolchain from PyPI wheels,
# link-time stubs for the driver and cuBLAS, and a portable CPU level.
#
# usage: scripts/build-cuda.sh [--check]
#   writes dist/pdbench-cuda.xz (stripped, xz -9), to carry to a GPU machine;
#   --check only builds (the CI compile check).
# Caches: $PDBENCH_CACHE (default ~/.cache/pdbench) holds the wheels, the
# stubs and the target folder, so a second build takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
check=false
[ "${1:-}" = "--check" ] && check=true

cache=${PDBENCH_CACHE:-$HOME/.cache/pdbench}
wheels=$cache/cuda13-wheels
if [ ! -x "$wheels/unpacked/nvidia/cu13/bin/nvcc" ]; then
  mkdir -p "$wheels"
  ( cd "$wheels"
    python3 -m pip download -q --no-deps --disable-pip-version-check \
      nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
    for w in *.whl; do python3 -m zipfile -e "$w" unpacked; done
    chmod +x unpacked/nvidia/cu13/bin/* unpacked/nvidia/cu13/nvvm/bin/* 2>/dev/null || true )
fi
export CUDA_ROOT=$wheels/unpacked/nvidia/cu13
export CUDA_HOME=$CUDA_ROOT CUDA_PATH=$CUDA_ROOT NVCC=$CUDA_ROOT/bin/nvcc PATH=$CUDA_ROOT/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

cargo fetch --locked -q
stubs=$cache/cuda-stubs
if [ ! -f "$stubs/libcuda.so" ]; then
  bash scripts/mkstub-cudalibs.sh "$stubs"
fi

# A separate target folder: the CPU build is tuned to this machine
# (.cargo/config.toml); the carried binary must run on another CPU.
export CARGO_TARGET_DIR=${PDBENCH_CUDA_TARGET_DIR:-$cache/target-cuda}
export RUSTFLAGS="-C target-cpu=x86-64-v3 -L $stubs"
cargo build --release --locked --features cuda --bin pdbench
bin=$CARGO_TARGET_DIR/release/pdbench
echo "built $bin"
$check && exit 0
mkdir -p dist
strip -o dist/pdbench-cuda "$bin"
xz -9 -f -T0 dist/pdbench-cuda
ls -l dist/pdbench-cuda.xz
