#!/usr/bin/env bash
# On the GPU machine: `latentserve serve --backend cuda` end to end (router + prefill + decode
# roles in one process, real gRPC on loopback), checked token for token against
# `latentserve logits --greedy` on the same backend, then a per-part profile of full-size
# decode. Expects .devpack/ binaries; builds nothing.
set -uo pipefail
export LD_LIBRARY_PATH=$PWD/.devpack/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
LS=$PWD/.devpack/bin/latentserve
OUT=${OUT:-/tmp/out}
WORK=$(mktemp -d)
mkdir -p "$OUT"
status=0
"$LS" make-test-model --out "$WORK/m.gguf" --seed 4 --layers 4 --hidden 128 --heads 4 --kda-head-dim 32 \
  --kv-lora-rank 64 --qk-nope 32 --qk-rope 32 --v-head 32 --experts 8 --experts-used 2 --expert-ffn 64 --ffn 256 \
  --mla-layers 1,3 --weight-type f32 2>/dev/null
TOKENS=$(python3 -c "import random; random.seed(7); print(','.join(str(random.randrange(264)) for _ in range(60)))")
"$LS" serve --listen 127.0.0.1:0 --port-file "$WORK/port" --model "$WORK/m.gguf" --backend cuda --chunk 32 \
  > "$OUT/serve.log" 2>&1 &
SERVE=$!
for _ in $(seq 1 300); do [[ -s $WORK/port ]] && break; sleep 0.1; done
"$LS" client generate --target "$(cat "$WORK/port")" --prompt-tokens "$TOKENS" --max-tokens 16 --temperature 0 \
  --ignore-eos --json > "$OUT/serve_client.txt" 2>&1 || status=1
"$LS" logits --model "$WORK/m.gguf" --tokens "$TOKENS" --greedy 16 --backend cuda --chunk 32 > "$WORK/logits.json" || status=1
kill -TERM $SERVE; wait $SERVE
python3 - "$OUT/serve_client.txt" "$WORK/logits.json" <<'PY' || status=1
import json, sys
served = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
want = json.load(open(sys.argv[2]))["greedy"]
print("serve --backend cuda:", served["token_ids"], "timing", served.get("timing"))
print("logits --greedy cuda:", want)
sys.exit(0 if served["token_ids"] == want else 1)
PY
echo "serve check status $status"
# Issue 11's handoff check: the in-process handoff of `serve` copies device to device (host
# bytes 0); split processes move the rows over gRPC through host memory (host bytes = cache bytes).
echo "serve (in-process handoff): $(grep -o '"cache_bytes":[0-9]*,"host_bytes":[0-9]*' "$OUT/serve.log" | tail -1)"
"$LS" router --listen 127.0.0.1:0 --port-file "$WORK/router.port" > "$OUT/router.log" 2>&1 &
PIDS=($!)
for _ in $(seq 1 300); do [[ -s $WORK/router.port ]] && break; sleep 0.1; done
ROUTER=$(cat "$WORK/router.port")
common=(--router "$ROUTER" --model "$WORK/m.gguf" --backend cuda --chunk 32)
"$LS" prefill --listen 127.0.0.1:0 --port-file "$WORK/prefill.port" "${common[@]}" > "$OUT/prefill.log" 2>&1 &
PIDS+=($!)
"$LS" decode --listen 127.0.0.1:0 --port-file "$WORK/decode.port" "${common[@]}" > "$OUT/decode.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 300); do
  "$LS" client info --target "$ROUTER" 2>/dev/null | grep -q '"role":"decode","alive":true' &&
    "$LS" client info --target "$ROUTER" | grep -q '"role":"prefill","alive":true' && break
  sleep 0.1
done
"$LS" client generate --target "$ROUTER" --prompt-tokens "$TOKENS" --max-tokens 16 --temperature 0 \
  --ignore-eos --json > "$OUT/split_client.txt" 2>&1 || status=1
kill -TERM "${PIDS[@]}"; wait "${PIDS[@]}"
echo "split processes (gRPC handoff): $(grep -o '"cache_bytes":[0-9]*,"host_bytes":[0-9]*' "$OUT/prefill.log" | tail -1)"
python3 - "$OUT/split_client.txt" "$WORK/logits.json" <<'PY' || status=1
import json, sys
served = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
want = json.load(open(sys.argv[2]))["greedy"]
print("split --backend cuda:", served["token_ids"], "same tokens as logits --greedy:", served["token_ids"] == want)
sys.exit(0 if served["token_ids"] == want else 1)
PY
python3 -c "import random; random.seed(3); print(','.join(str(random.randrange(163840)) for _ in range(2048)))" > "$WORK/p.txt"
"$LS" generate --random-weights kimi-linear-48b-a3b --weight-type q4_0 --backend cuda --prompt-tokens-file "$WORK/p.txt" \
  --max-tokens 32 --chunk 4096 --profile --ids > /dev/null 2> "$OUT/profile.txt"
tail -3 "$OUT/profile.txt"
exit $status
