#!/usr/bin/env bash
# Builds llama.cpp 0c1e570 (llama-cpp-python 0.3.36's vendored copy, as
# ../shared/peers/README.md describes) with GGML_NATIVE=ON into
# ${LLAMA_CPP:-$PDBENCH_CACHE/peer/llama.cpp}, once, and prints its path.
set -euo pipefail
cache=${PDBENCH_CACHE:-$HOME/.cache/pdbench}
llama=${LLAMA_CPP:-$cache/peer/llama.cpp}
if [ ! -x "$llama/build/bin/llama-bench" ] || [ ! -f "$llama/build/bin/libllama.so" ]; then
  echo "building llama.cpp 0c1e570 in $llama (about 25 minutes on 2 cores)" >&2
  mkdir -p "$cache/peer"
  pip download -q --no-deps --no-binary :all: --no-build-isolation llama-cpp-python==0.3.36 -d "$cache/peer" >&2
  tar xzf "$cache/peer/llama_cpp_python-0.3.36.tar.gz" -C "$cache/peer"
  rm -rf "$llama" && mv "$cache/peer/llama_cpp_python-0.3.36/vendor/llama.cpp" "$llama"
  cmake -S "$llama" -B "$llama/build" -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_OPENSSL=OFF >&2
  cmake --build "$llama/build" --target llama-bench llama-batched-bench llama-simple -j2 >&2
fi
echo "$llama"
