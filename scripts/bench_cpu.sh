#!/usr/bin/env bash
# CPU prefill and decode tokens/s of latentserve against llama.cpp (node-llama-cpp 3.22.1, CPU
# build) on the same generated ~100M-parameter kimi-linear GGUF and the same thread count,
# alternating the two engines so background load hits both alike. Prints one table.
#   scripts/bench_cpu.sh [weight-type (q8_0)] [threads (2)] [rounds (3)]
# SHAPE overrides the make-test-model shape flags (K-quant mixes want the 128-wide rows of the
# real model: SHAPE_K below, used when the weight type is a K-quant).
set -euo pipefail
cd "$(dirname "$0")/.."
WT=${1:-q8_0}; THREADS=${2:-2}; ROUNDS=${3:-3}
LS=${LS:-build/bin/latentserve}
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
SHAPE_Q="--layers 6 --hidden 768 --heads 8 --kda-head-dim 64 --kv-lora-rank 192 --qk-nope 64 --qk-rope 64
  --v-head 64 --experts 16 --experts-used 4 --expert-ffn 384 --ffn 2048 --mla-layers 2,5 --vocab 8192"
SHAPE_K="--layers 6 --hidden 768 --heads 6 --kda-head-dim 128 --kv-lora-rank 256 --qk-nope 128 --qk-rope 64
  --v-head 128 --experts 16 --experts-used 4 --expert-ffn 512 --ffn 2048 --mla-layers 2,5 --vocab 8192"
case "$WT" in q4_k*|q5_k*|q6_k*) DEFAULT_SHAPE=$SHAPE_K ;; *) DEFAULT_SHAPE=$SHAPE_Q ;; esac
# shellcheck disable=SC2086  # the shape is a list of flags
"$LS" make-test-model --out "$WORK/m.gguf" --seed 9 ${SHAPE:-$DEFAULT_SHAPE} --weight-type "$WT" 2>&1 | tail -1
python3 -c "import random; random.seed(3); print(','.join(str(random.randrange(8192)) for _ in range(512)))" > "$WORK/p.txt"
for round in $(seq 1 "$ROUNDS"); do
  "$LS" generate --model "$WORK/m.gguf" --prompt-tokens-file "$WORK/p.txt" --max-tokens 65 --ignore-eos --ids \
    --threads "$THREADS" --chunk 512 2>&1 >/dev/null | grep -o 'prompt .*' | sed "s/^/ours  /"
  node tests/reference/llama_bench.mjs --model "$WORK/m.gguf" --threads "$THREADS" --prompt-tokens 512 --gen-tokens 64 |
    python3 -c "import json,sys; j=json.load(sys.stdin); print(f\"llama prompt 512 tokens: {j['prefill_tokens_per_s']:.1f} tok/s; decode {j['decode_tokens_per_s']:.1f} tok/s\")"
done
