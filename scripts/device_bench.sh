#!/usr/bin/env bash
# On the GPU machine: the CUDA baseline. Measures the device copy bandwidth and the cuBLAS
# bf16 rate, then per-op times at the real model's shapes as fractions of those ceilings
# (latentserve bench-ops), then a full-size Kimi-Linear-48B-A3B forward with random q4_0
# weights made in device memory (no file), with its memory breakdown. Builds nothing.
set -uo pipefail
export LD_LIBRARY_PATH=$PWD/.devpack/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
BIN=$PWD/.devpack/bin
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
echo "== bench-ops (cuda)"
"$BIN/latentserve" bench-ops --backend cuda --repeats ${REPEATS:-10} > "$OUT/bench_ops.jsonl" 2> "$OUT/bench_ops.txt"
cat "$OUT/bench_ops.txt"; head -1 "$OUT/bench_ops.jsonl"
echo "== full-size forward: kimi-linear-48b-a3b, random q4_0 weights, f16 cache"
for prompt in ${PROMPTS:-4096 16384}; do
  python3 -c "import random; random.seed(3); print(','.join(str(random.randrange(163840)) for _ in range($prompt)))" > /tmp/prompt.txt
  "$BIN/latentserve" generate --random-weights kimi-linear-48b-a3b --weight-type q4_0 --backend cuda \
    --prompt-tokens-file /tmp/prompt.txt --max-tokens 32 --chunk 4096 --cache-type f16 \
    > "$OUT/generate_$prompt.txt" 2>&1
  echo "prompt $prompt: exit $?"; tail -3 "$OUT/generate_$prompt.txt"
done
