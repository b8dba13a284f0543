#!/usr/bin/env bash
# Builds llama.cpp's `llama-quantize` (CPU only, nothing else) from the llama.cpp source that
# node-llama-cpp ships in tests/reference (gitRelease.bundle), for regenerating the K-quant
# conformance files in tests/data (tests/data/README.md). CI does not run this: the quantised
# files are committed.
#   scripts/build_llama_quantize.sh [work-dir (/tmp/llama-quantize)] [jobs (2)]
# Prints the path of the built binary on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=tests/reference/node_modules/node-llama-cpp/llama/gitRelease.bundle
WORK=${1:-/tmp/llama-quantize}; JOBS=${2:-2}
[[ -f "$BUNDLE" ]] || { echo "missing $BUNDLE (run: cd tests/reference && npm ci --omit=optional)" >&2; exit 2; }
if [[ ! -d "$WORK/src/.git" ]]; then
  rm -rf "$WORK/src"
  git clone --quiet "$BUNDLE" "$WORK/src"
fi
echo "llama.cpp source: $(git -C "$WORK/src" rev-parse HEAD) (sha256 of bundle: $(sha256sum "$BUNDLE" | cut -c1-64))" >&2
cmake -S "$WORK/src" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_OPENMP=OFF -DGGML_NATIVE=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON >&2
cmake --build "$WORK/build" -j "$JOBS" --target llama-quantize >&2
echo "$WORK/build/bin/llama-quantize"
