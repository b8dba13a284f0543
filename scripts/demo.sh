#!/usr/bin/env bash
# latentserve demo: router, prefill and decode as separate processes; a >= 32K-token
# document is prefilled on one worker, its compressed cache streamed to another, and the
# answer streamed back. Prints TTFT, decode speed, cache bytes moved and what a standard
# MHA cache of the same model would need.
#
#   scripts/demo.sh            # defaults: 32768-token document, 32 answer tokens
#   DEMO_TOKENS=65536 DEMO_THREADS=2 scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

TOKENS=${DEMO_TOKENS:-32768}
ANSWER=${DEMO_ANSWER_TOKENS:-32}
THREADS=${DEMO_THREADS:-2}
BUILD=${BUILD_DIR:-build}
WORK=$(mktemp -d /tmp/latentserve-demo.XXXXXX)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# 1. Dependencies and build, the first time only: a configured build directory skips apt, npm
#    and cmake (DEMO_SETUP=1 forces them); ninja then only rebuilds what changed.
if [[ ! -f $BUILD/build.ninja || ${DEMO_SETUP:-0} == 1 ]]; then
  if [[ -x scripts/install_deps.sh ]]; then scripts/install_deps.sh; fi
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null  # same as scripts/test.sh: no rebuild between them
fi
ninja -C "$BUILD" latentserve
LS=$BUILD/bin/latentserve

# 2. A small kimi-linear model: 2 layers (KDA + MLA), latent width 48 + 16 = 64, so a 32K
#    prefill takes well under a minute or two on 2 CPU cores.
MODEL=$WORK/demo.gguf
"$LS" make-test-model --out "$MODEL" --context $((TOKENS + 4096)) --layers 2 --mla-layers 1 --heads 2 \
  --hidden 64 --kv-lora-rank 48 --qk-rope 16 --seed 1

# 3. Router, prefill worker and decode worker, each its own process on a free port.
wait_port() {  # file pid
  for _ in $(seq 1 300); do
    [[ -s $1 ]] && return 0
    kill -0 "$2" 2>/dev/null || { echo "demo: process $2 exited; log:"; cat "$1.log" || true; exit 1; }
    sleep 0.1
  done
  echo "demo: timed out waiting for $1"; exit 1
}
CACHE_TOKENS=$((TOKENS + ANSWER + 1024))
"$LS" router --listen 127.0.0.1:0 --port-file "$WORK/router.port" >"$WORK/router.port.log" 2>&1 &
PIDS+=($!); wait_port "$WORK/router.port" $!
ROUTER=$(cat "$WORK/router.port")
common=(--router "$ROUTER" --model "$MODEL" --threads "$THREADS" --cache-tokens "$CACHE_TOKENS" --chunk 2048)
"$LS" prefill --listen 127.0.0.1:0 --port-file "$WORK/prefill.port" "${common[@]}" >"$WORK/prefill.port.log" 2>&1 &
PIDS+=($!); wait_port "$WORK/prefill.port" $!
"$LS" decode --listen 127.0.0.1:0 --port-file "$WORK/decode.port" "${common[@]}" >"$WORK/decode.port.log" 2>&1 &
PIDS+=($!); wait_port "$WORK/decode.port" $!
for _ in $(seq 1 100); do
  "$LS" client info --target "$ROUTER" | grep -q '"role":"decode","alive":true' &&
    "$LS" client info --target "$ROUTER" | grep -q '"role":"prefill","alive":true' && break
  sleep 0.1
done
echo "router $ROUTER, prefill $(cat "$WORK/prefill.port"), decode $(cat "$WORK/decode.port")"

# 4. A long document as token ids (the demo model's vocabulary is random, so text would not
#    read as text anyway), then the question, streamed.
python3 -c "import sys; n=int(sys.argv[1]); print(','.join(str((i*31 + i//97 + 7) % 300) for i in range(n)))" \
  "$TOKENS" >"$WORK/document.txt"
echo "sending a $TOKENS-token document; prefill progress below, then the answer's tokens:"
"$LS" client generate --target "$ROUTER" --prompt-tokens-file "$WORK/document.txt" --max-tokens "$ANSWER" \
  --ignore-eos --summary-file "$WORK/result.json"

# 5. Summary.
"$LS" plan --model "$MODEL" --context "$TOKENS" >"$WORK/plan.json"
python3 - "$WORK/result.json" "$WORK/plan.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); p = json.load(open(sys.argv[2]))
u, t = r["usage"], r["timing"]
mib = lambda b: b / 1048576
print("\n=== latentserve demo summary ===")
print(f"prompt tokens            {u['prompt_tokens']}")
print(f"completion tokens        {u['completion_tokens']} ({r['finish_reason']})")
print(f"time to first token      {t['ttft_ms']:.0f} ms (prefill compute {t['prefill_ms']:.0f} ms)")
print(f"transfer after prefill   {t['transfer_tail_ms']:.1f} ms ({100*t['transfer_tail_ms']/max(t['ttft_ms'],1e-9):.2f}% of TTFT)")
print(f"decode speed             {t['decode_tokens_per_s']:.1f} tokens/s")
print(f"cache bytes moved        {u['cache_bytes_transferred']} ({mib(u['cache_bytes_transferred']):.2f} MiB: latent rows + KDA state)")
print(f"latent cache (plan)      {p['latent_cache_bytes']} ({mib(p['latent_cache_bytes']):.2f} MiB)")
print(f"standard MHA cache, f16  {p['mha_cache_bytes_f16']} ({mib(p['mha_cache_bytes_f16']):.2f} MiB, "
      f"{p['mha_cache_bytes_f16']/max(p['latent_cache_bytes'],1):.1f}x the latent cache)")
PY
