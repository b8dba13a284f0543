#!/usr/bin/env bash
# latentserve demo: router, prefill and decode as separate processes; a 32K-token readable
# document with one fact hidden at a random depth is prefilled on one worker, its compressed
# cache streamed to another, and the answer streamed back in words. The model is the
# hand-built needle model (docs/needle.md): its answer can be checked, and the summary says
# whether it is right, with TTFT, decode speed, cache bytes moved and what a standard MHA
# cache of the same model would need.
#
#   scripts/demo.sh            # defaults: 32768-token document, fact at a random depth
#   DEMO_TOKENS=65536 DEMO_DEPTH=0.9 DEMO_SEED=3 DEMO_CACHE_TYPE=q4_0 DEMO_THREADS=2 scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

TOKENS=${DEMO_TOKENS:-32768}
ANSWER=${DEMO_ANSWER_TOKENS:-16}
THREADS=${DEMO_THREADS:-2}
SEED=${DEMO_SEED:-$RANDOM}
DEPTH=${DEMO_DEPTH:-$(python3 -c "import random,sys; print(round(random.Random(int(sys.argv[1])).uniform(0.05, 0.95), 3))" "$SEED")}
CACHE_TYPE=${DEMO_CACHE_TYPE:-f16}
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

# 2. The needle model: hand-built kimi-linear weights that copy a key's value from any depth
#    (2 layers: KDA + MLA, hidden 192, latent 64 + 64), q4_0 weights, a word vocabulary.
MODEL=$WORK/needle.gguf
"$LS" make-test-model --preset needle --weight-type q4_0 --out "$MODEL" --context $((TOKENS + 4096))

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
common=(--router "$ROUTER" --model "$MODEL" --threads "$THREADS" --cache-tokens "$CACHE_TOKENS" --chunk 2048
        --cache-type "$CACHE_TYPE")
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

# 4. A readable document with one fact at depth $DEPTH, then the question; the answer streams.
python3 scripts/needle_text.py --tokens "$TOKENS" --depth "$DEPTH" --seed "$SEED" >"$WORK/needle.json"
python3 - "$WORK/needle.json" "$WORK/prompt.txt" <<'PY'
import json, sys, textwrap
d = json.load(open(sys.argv[1]))
open(sys.argv[2], "w").write(d["prompt"])
words = d["prompt"].split()
print("\n=== the document ({} tokens; excerpt) ===".format(d["document_tokens"]))
print(textwrap.fill(" ".join(words[:60]) + " ...", 100))
print("... somewhere inside, at token {} ({:.0%} deep): \"{}\"".format(
    d["needle_token"], d["needle_token"] / d["document_tokens"], d["fact"]))
print("\n=== the question (the prompt's end) ===\n" + d["question"])
PY
echo; echo "=== the answer, streamed (prefill progress first) ==="
"$LS" client generate --target "$ROUTER" --prompt-file "$WORK/prompt.txt" --max-tokens "$ANSWER" \
  --summary-file "$WORK/result.json"
echo

# 5. Summary.
"$LS" plan --model "$MODEL" --context "$TOKENS" --cache-type "$CACHE_TYPE" >"$WORK/plan.json"
"$LS" plan --config kimi-linear-48b-a3b --context "$TOKENS" --cache-type "$CACHE_TYPE" >"$WORK/plan_real.json"
python3 - "$WORK/result.json" "$WORK/plan.json" "$WORK/needle.json" "$WORK/plan_real.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); p = json.load(open(sys.argv[2])); d = json.load(open(sys.argv[3]))
real = json.load(open(sys.argv[4]))
u, t = r["usage"], r["timing"]
mib = lambda b: b / 1048576
right = r["text"] == d["expected"]
print("\n=== latentserve demo summary ===")
print(f"answer                   {r['text'].strip()!r}: {'RIGHT' if right else 'WRONG'} "
      f"(expected {d['expected'].strip()!r}, fact at token {d['needle_token']} of {d['document_tokens']})")
print(f"prompt tokens            {u['prompt_tokens']}")
print(f"completion tokens        {u['completion_tokens']} ({r['finish_reason']})")
print(f"time to first token      {t['ttft_ms']:.0f} ms (prefill compute {t['prefill_ms']:.0f} ms)")
print(f"transfer after prefill   {t['transfer_tail_ms']:.1f} ms ({100*t['transfer_tail_ms']/max(t['ttft_ms'],1e-9):.2f}% of TTFT)")
print(f"decode speed             {t['decode_tokens_per_s']:.1f} tokens/s")
print(f"cache bytes moved        {u['cache_bytes_transferred']} ({mib(u['cache_bytes_transferred']):.2f} MiB: latent rows + KDA state)")
print(f"latent cache (plan)      {p['latent_cache_bytes']} ({mib(p['latent_cache_bytes']):.2f} MiB)")
print(f"Kimi-Linear-48B-A3B, same length: latent cache {mib(real['latent_cache_bytes']):.0f} MiB, standard MHA "
      f"cache (f16) {mib(real['mha_cache_bytes_f16']):.0f} MiB ({real['mha_cache_bytes_f16']/max(real['latent_cache_bytes'],1):.0f}x)")
sys.exit(0 if right else 1)
PY
