#!/usr/bin/env bash
# Builds pdbench with the `cuda` feature on a machine without a GPU (the
# recipe of ../shared/cuda/README.md): a CUDA 13 toolchain from PyPI wheels,
# link-time stubs for the driver and cuBLAS.
#
# usage: scripts/build-cuda.sh           dist/pdbench-cuda.xz (stripped, xz -9) to carry
#                                        to a GPU machine; portable CPU level (x86-64-v3)
#        scripts/build-cuda.sh --check   compile and link only (CI); it shares the CPU
#                                        build's target folder and flags, so only the
#                                        crates that change with the feature rebuild
# Caches: $PDBENCH_CACHE (default ~/.cache/pdbench) holds the wheels and the stubs,
# and the carry build's target folder.
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
# cudart is real (from the runtime wheel); the linker looks for the bare name.
ln -sf "$CUDA_ROOT/lib/libcudart.so.13" "$stubs/libcudart.so"
export PDBENCH_CUDA_STUBS=$stubs   # build.rs puts it on the link path

if $check; then
  cargo build --release --locked --features cuda --bin pdbench
  echo "CUDA build compiled and linked"
  # Both builds keep their own artifacts, but share target/release/pdbench:
  # put the CPU binary back there (cargo only re-links the fresh one), or
  # it would need libcuda.so.1 to start.
  env -u CUDA_ROOT -u CUDA_HOME -u CUDA_PATH -u NVCC -u PDBENCH_CUDA_STUBS \
    cargo build --release --locked -q --bin pdbench
  exit 0
fi

# The carried binary must run on another machine's CPU: a portable level,
# and a target folder of its own (.cargo/config.toml tunes the CPU build to
# this machine).
export CARGO_TARGET_DIR=${PDBENCH_CUDA_TARGET_DIR:-$cache/target-cuda}
export RUSTFLAGS="-C target-cpu=x86-64-v3"
cargo build --release --locked --features cuda --bin pdbench
mkdir -p dist
strip -o dist/pdbench-cuda "$CARGO_TARGET_DIR/release/pdbench"
xz -9 -f -T0 dist/pdbench-cuda
ls -l dist/pdbench-cuda.xz
