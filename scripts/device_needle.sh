#!/usr/bin/env bash
# On the GPU machine (device tool, carry .devpack; builds nothing): the needle model
# (docs/needle.md) at the full Kimi-Linear-48B-A3B size with q4_0 weights, a 1,048,576-token
# readable document with one fact at each of DEPTHS, through router + prefill + decode
# processes (--backend cuda, the cache handed over by gRPC on loopback). Per depth: the
# answer, whether it is right, prefill time and TTFT. Results under $OUT; a table last.
#
#   DEPTHS=0.1 scripts/device_needle.sh          # one depth per call (the device's calls stop
#   DEPTHS=0.5 scripts/device_needle.sh          # at 10 minutes; three depths take ~14 min)
#   DEPTHS=0.9 scripts/device_needle.sh
# Knobs: TOKENS (1048576), DEPTHS ("0.1 0.5 0.9"), EXPERTS (256), CACHE_TYPE (f16), CHUNK
# (8192), MODEL (/tmp/needle-48b-<experts>.gguf, reused while the machine stays warm),
# BACKEND (cuda), CONFIG (kimi-linear-48b-a3b; empty: the small test shape), LS (binary),
# WORKER_FLAGS (added to prefill and decode, e.g. a transport other than gRPC once one exists).
#
# Expected time on one H200, per call: writing the model 1-3 min for 256 experts (27 GB of
# q4_0, nearly all zeros: ~20 s of CPU on 16 threads, the rest is the disk; here 650 MB took
# 23 s) or ~30 s for EXPERTS=32 (4.5 GB); loading it into the prefill and the decode process
# ~1 min; then per depth ~3 min: the 1M-token prefill (167 s for the random 256-expert model,
# README; the needle's zero experts route every token to the same 8, same FLOPs), the 7.9 GiB
# f16 latent hand-off over loopback gRPC (mostly during the prefill), a few decode steps.
# So ~5-7 min for one depth; with EXPERTS=32 (experts add nothing to the answer) two depths
# fit one call (~8 min). Checked on the CPU with CONFIG= BACKEND=cpu TOKENS=4096.
set -uo pipefail
export LD_LIBRARY_PATH=$PWD/.devpack/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
LS=${LS:-$PWD/.devpack/bin/latentserve}
OUT=${OUT:-/tmp/out}
TOKENS=${TOKENS:-1048576}
DEPTHS=${DEPTHS:-0.1 0.5 0.9}
EXPERTS=${EXPERTS:-256}
CACHE_TYPE=${CACHE_TYPE:-f16}
CHUNK=${CHUNK:-8192}
BACKEND=${BACKEND:-cuda}
CONFIG=${CONFIG-kimi-linear-48b-a3b}
MODEL=${MODEL:-/tmp/needle-48b-${EXPERTS}.gguf}
THREADS=${THREADS:-$(nproc)}
WORK=$(mktemp -d /tmp/needle-run.XXXXXX)
mkdir -p "$OUT"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  cp "$WORK"/*.log "$OUT/" 2>/dev/null; rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
[[ $BACKEND == cuda ]] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
step_start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - step_start )) s"; }

# 1. The model: hand-built weights, context for the document plus the answer.
if [[ ! -s $MODEL ]]; then
  echo "== writing $MODEL"
  shape=(--preset needle --weight-type q4_0 --context $((TOKENS + 4096)) --threads "$THREADS")
  [[ -n $CONFIG ]] && shape+=(--config "$CONFIG" --experts "$EXPERTS")
  "$LS" make-test-model "${shape[@]}" --out "$MODEL" 2>&1 | tee "$OUT/make_model.txt" || exit 1
  echo "written in $(elapsed)"
fi

# 2. Router, prefill worker and decode worker, each its own process on a free port.
wait_port() {  # file pid
  for _ in $(seq 1 3000); do
    [[ -s $1 ]] && return 0
    kill -0 "$2" 2>/dev/null || { echo "process $2 exited:"; tail -20 "$1.log"; exit 1; }
    sleep 0.1
  done
  echo "timed out waiting for $1"; exit 1
}
"$LS" router --listen 127.0.0.1:0 --port-file "$WORK/router.port" >"$WORK/router.port.log" 2>&1 &
PIDS+=($!); wait_port "$WORK/router.port" $!
ROUTER=$(cat "$WORK/router.port")
common=(--router "$ROUTER" --model "$MODEL" --backend "$BACKEND" --cache-tokens $((TOKENS + 4096))
        --cache-type "$CACHE_TYPE" --chunk "$CHUNK" --threads "$THREADS" ${WORKER_FLAGS:-})
"$LS" prefill --listen 127.0.0.1:0 --port-file "$WORK/prefill.port" "${common[@]}" >"$WORK/prefill.port.log" 2>&1 &
PIDS+=($!); wait_port "$WORK/prefill.port" $!
"$LS" decode --listen 127.0.0.1:0 --port-file "$WORK/decode.port" "${common[@]}" >"$WORK/decode.port.log" 2>&1 &
PIDS+=($!); wait_port "$WORK/decode.port" $!
for _ in $(seq 1 600); do
  info=$("$LS" client info --target "$ROUTER" 2>/dev/null)
  [[ $info == *'"role":"decode","alive":true'* && $info == *'"role":"prefill","alive":true'* ]] && break
  sleep 0.1
done
echo "== workers up after $(elapsed)"

# 3. One document per depth; the answer must be the fact's value, word for word.
: >"$OUT/table.txt"
status=0
seed=7
for depth in $DEPTHS; do
  seed=$((seed + 1))  # a different vault and code per depth
  python3 scripts/needle_text.py --tokens "$TOKENS" --depth "$depth" --seed "$seed" >"$WORK/doc.json"
  python3 -c "import json,sys; open(sys.argv[2],'w').write(json.load(open(sys.argv[1]))['prompt'])" \
    "$WORK/doc.json" "$WORK/prompt.txt"
  echo "== depth $depth: sending $TOKENS tokens"
  "$LS" client generate --target "$ROUTER" --prompt-file "$WORK/prompt.txt" --max-tokens 12 --json \
    >"$OUT/needle_$depth.json" 2>"$OUT/needle_$depth.err"
  python3 - "$OUT/needle_$depth.json" "$WORK/doc.json" "$depth" <<'PY' | tee -a "$OUT/table.txt" || status=1
import json, sys
lines = [l for l in open(sys.argv[1]).read().splitlines() if l.startswith("{")]
d = json.load(open(sys.argv[2]))
if not lines:
    print(f"depth {sys.argv[3]}: no result"); sys.exit(1)
r = json.loads(lines[-1])
if "text" not in r:
    print(f"depth {sys.argv[3]}: error {r}"); sys.exit(1)
right = r["text"] == d["expected"]
t, u = r["timing"], r["usage"]
print(f"depth {sys.argv[3]:>4} (fact at token {d['needle_token']:>7}): {'RIGHT' if right else 'WRONG'} "
      f"{r['text'].strip()!r} (want {d['expected'].strip()!r}), prompt {u['prompt_tokens']} tokens, "
      f"prefill {t['prefill_ms']/1000:.1f} s, TTFT {t['ttft_ms']/1000:.1f} s, transfer tail {t['transfer_tail_ms']:.0f} ms, "
      f"cache moved {u['cache_bytes_transferred']/2**30:.2f} GiB, decode {t['decode_tokens_per_s']:.1f} tok/s")
sys.exit(0 if right else 1)
PY
  echo "   done after $(elapsed)"
done
echo "== summary ($BACKEND, $CACHE_TYPE cache, chunk $CHUNK, ${CONFIG:-small} needle model, q4_0 weights)"
cat "$OUT/table.txt"
exit $status
