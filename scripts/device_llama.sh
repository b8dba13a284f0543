#!/usr/bin/env bash
# On the GPU machine: llama.cpp (the version bundled in tests/reference's node-llama-cpp) against
# latentserve on ONE GGUF, full Kimi-Linear-48B-A3B dimensions with 32 experts and q4_0 weights
# (the largest model both load that fits a quick generator run), in two device calls:
#   STEP=build    clone the bundle, build llama-bench + llama-batched-bench for sm_90 (~5 min on
#                 16 cores) and generate the GGUF, all under /tmp (kept while the machine is warm);
#                 carry tests/reference/node_modules/node-llama-cpp/llama/gitRelease.bundle
#   STEP=compare  prefill of PREFILL tokens (default 131072) by both engines, and decode at each
#                 of DEPTHS (both engines: ours decodes 64 tokens after a prompt of that length),
#                 started right after the build call; carry .devpack
# WT picks the weight type of the GGUF (default q4_0; q4_k_m / q5_k_m / q6_k for the K-quant mixes).
# Prints a short table last; logs under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
LCPP=/tmp/lcpp
WT=${WT:-q4_0}
MODEL=/tmp/kimi48b-e32-$WT.gguf
export LD_LIBRARY_PATH=$PWD/.devpack/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
case "${STEP:-compare}" in
  build)
    BUNDLE=tests/reference/node_modules/node-llama-cpp/llama/gitRelease.bundle
    [[ -d $LCPP ]] || git clone -q "$BUNDLE" "$LCPP"
    (cd "$LCPP" && git log --oneline -1 && cmake -S . -B build -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DCMAKE_BUILD_TYPE=Release > "$OUT/lcpp_cmake.txt" 2>&1 &&
      cmake --build build -j16 --target llama-bench llama-batched-bench > "$OUT/lcpp_build.txt" 2>&1)
    echo "llama.cpp build: exit $?"; ls -la "$LCPP/build/bin" 2>/dev/null | tail -3
    if [[ -x .devpack/bin/latentserve && ! -f $MODEL ]]; then
      .devpack/bin/latentserve make-test-model --config kimi-linear-48b-a3b --experts 32 --weight-type "$WT" \
        --threads 16 --out "$MODEL" > "$OUT/make_model.txt" 2>&1
      echo "model: exit $?"; ls -la "$MODEL"
    fi
    ;;
  compare)
    N=${PREFILL:-131072}
    [[ -f $MODEL ]] || .devpack/bin/latentserve make-test-model --config kimi-linear-48b-a3b --experts 32 \
      --weight-type "$WT" --threads 16 --out "$MODEL" > "$OUT/make_model.txt" 2>&1
    python3 -c "import random; random.seed(3); print(','.join(str(random.randrange(163840)) for _ in range($N)))" > /tmp/prompt_lc.txt
    echo "== latentserve prefill $N (same GGUF)"
    .devpack/bin/latentserve generate --model "$MODEL" --backend cuda --prompt-tokens-file /tmp/prompt_lc.txt \
      --max-tokens 64 --chunk ${CHUNK:-8192} --cache-type f16 > "$OUT/ours_$N.txt" 2>&1
    echo "exit $?"; grep -E "prompt|decode" "$OUT/ours_$N.txt" | tail -2
    echo "== llama.cpp prefill $N"
    "$LCPP/build/bin/llama-bench" -m "$MODEL" -ngl 99 -fa 1 -p "$N" -n 0 -b 8192 -ub 4096 -r 1 -o md \
      > "$OUT/lcpp_pp$N.txt" 2>&1
    echo "exit $?"; grep -E "pp$N|model" "$OUT/lcpp_pp$N.txt" | tail -2
    if [[ -n ${DEPTHS:-} ]]; then
      for d in $DEPTHS; do
        python3 -c "import random; random.seed(5); print(','.join(str(random.randrange(163840)) for _ in range($d)))" > /tmp/prompt_d.txt
        .devpack/bin/latentserve generate --model "$MODEL" --backend cuda --prompt-tokens-file /tmp/prompt_d.txt \
          --max-tokens 64 --ignore-eos --chunk ${CHUNK:-8192} --cache-type f16 > "$OUT/ours_d$d.txt" 2>&1
        echo "ours depth $d: $(grep -o 'decode [0-9.]* tok/s' "$OUT/ours_d$d.txt" | tail -1)"
        "$LCPP/build/bin/llama-bench" -m "$MODEL" -ngl 99 -fa 1 -p 0 -n 64 -d "$d" -b 4096 -ub 4096 -r 1 -o md \
          > "$OUT/lcpp_tg_d$d.txt" 2>&1
        grep -E "tg64" "$OUT/lcpp_tg_d$d.txt" | tail -1
      done
    fi
    ;;
esac
