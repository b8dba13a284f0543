#!/usr/bin/env bash
# On the GPU machine (issue 12): router + prefill + decode as three processes on one GPU, the
# same prompt handed off once with --transport grpc and once with --transport cuda-ipc; checks
# the router chose what was asked (usage.cache_transport), identical greedy tokens, and prints
# the cache bytes, the bytes written device to device and the transfer exposed after the last
# prefill chunk (transfer_tail_ms, also as % of TTFT), and for CUDA IPC the device-to-device
# rate (device_bytes / device_copy_ms from prefill_done). Every chunk's checksum is verified by
# the decode worker (gRPC: XXH64 of the received bytes; CUDA IPC: per-row XXH64s hashed on its
# GPU over its own pages, then XXH64 of those), so an admitted handoff is byte-identical to the
# prefill worker's cache.
#   scripts/device_transports.sh              # small test model, 3000-token prompt
#   FULL=1 scripts/device_transports.sh       # + kimi-linear-48b-a3b random q4_0 weights, 131072 tokens
#   KILL=1 scripts/device_transports.sh       # + CUDA IPC with the prefill / decode worker SIGKILLed mid-transfer
#   LONG=1 scripts/device_transports.sh       # + the full-size shape at 1,048,576 tokens
# PREFILL_DEVICE / DECODE_DEVICE (default 0): the CUDA device of each worker (two GPUs of one
# host: scripts/device_two_gpu.sh).
# Expects .devpack/ binaries; builds nothing.
set -uo pipefail
export LD_LIBRARY_PATH=$PWD/.devpack/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0  # NVLink multicast stays off in everything we start
LS=$PWD/.devpack/bin/latentserve
OUT=${OUT:-/tmp/out}
WORK=$(mktemp -d)
mkdir -p "$OUT"
status=0
"$LS" make-test-model --out "$WORK/m.gguf" --seed 4 --layers 4 --hidden 128 --heads 4 --kda-head-dim 32 \
  --kv-lora-rank 64 --qk-nope 32 --qk-rope 32 --v-head 32 --experts 8 --experts-used 2 --expert-ffn 64 --ffn 256 \
  --mla-layers 1,3 --weight-type f32 2>/dev/null

wait_port() { for _ in $(seq 1 3000); do [[ -s $1 ]] && return 0; sleep 0.1; done; return 1; }

# run NAME TRANSPORT PROMPT_TOKENS MODEL_FLAGS... : one split deployment, one request.
run() {
  local name=$1 transport=$2 tokens=$3; shift 3
  local dir=$WORK/$name
  mkdir -p "$dir"
  python3 -c "import random; random.seed(7); print(','.join(str(random.randrange(250)) for _ in range($tokens)))" \
    > "$dir/prompt"
  "$LS" router --listen 127.0.0.1:0 --port-file "$dir/router.port" --request-timeout-ms 1800000 \
    > "$OUT/$name.router.log" 2>&1 &
  local pids=($!)
  wait_port "$dir/router.port" || return 1
  local router
  router=$(cat "$dir/router.port")
  local common=(--router "$router" --backend cuda --transport "$transport" "$@")
  "$LS" prefill --listen 127.0.0.1:0 --port-file "$dir/prefill.port" --device "${PREFILL_DEVICE:-0}" "${common[@]}" \
    > "$OUT/$name.prefill.log" 2>&1 &
  pids+=($!)
  "$LS" decode --listen 127.0.0.1:0 --port-file "$dir/decode.port" --device "${DECODE_DEVICE:-0}" "${common[@]}" \
    > "$OUT/$name.decode.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 6000); do
    info=$("$LS" client info --target "$router" 2>/dev/null)
    grep -q '"role":"decode","alive":true' <<<"$info" && grep -q '"role":"prefill","alive":true' <<<"$info" && break
    sleep 0.1
  done
  timeout 1800 "$LS" client generate --target "$router" --prompt-tokens-file "$dir/prompt" --max-tokens 16 \
    --temperature 0 --ignore-eos --json > "$OUT/$name.client.txt" 2>&1
  local rc=$?
  sleep "${INFO_DELAY_S:-0}"  # the kill runs: let the survivors' stats (polled by the router) settle
  "$LS" client info --target "$router" > "$OUT/$name.info.txt" 2>&1
  kill -TERM "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null
  return $rc
}

report() {
  python3 - "$OUT/$1.client.txt" "$OUT/$1.prefill.log" "$2" <<'PY'
import json, re, sys
out = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
done = [l for l in open(sys.argv[2]) if 'prefill_done' in l]
def field(name):
    m = re.search('"%s":([0-9.]+)' % name, done[-1]) if done else None
    return m.group(1) if m else None
ttft = out["timing"]["ttft_ms"]
tail = out["timing"].get("transfer_tail_ms", 0)
print(f"{sys.argv[3]:>9}: transport={out['usage'].get('cache_transport')} tokens={out['token_ids']}")
print(f"           cache_bytes={out['usage']['cache_bytes_transferred']} device_bytes={field('device_bytes')} "
      f"host_bytes={field('host_bytes')} prefill_ms={out['timing'].get('prefill_ms')} ttft_ms={ttft:.1f} "
      f"transfer_tail_ms={tail:.2f} ({100 * tail / ttft:.3f}% of TTFT)")
print(f"           device-to-device: {field('device_bytes')} bytes in {field('device_copy_ms')} ms of copies "
      f"= {field('device_gbps')} GB/s (prefill_done; rows hashed on the GPU on both sides)")
PY
}

same_tokens() {
  python3 - "$OUT/$1.client.txt" "$OUT/$2.client.txt" <<'PY'
import json, sys
a, b = (json.loads(open(p).read().strip().splitlines()[-1]) for p in sys.argv[1:3])
ok = a["token_ids"] == b["token_ids"] and b["usage"].get("cache_transport") == "cuda-ipc" \
     and a["usage"].get("cache_transport") == "grpc"
print("same tokens over gRPC and CUDA IPC, transports as asked:", ok)
sys.exit(0 if ok else 1)
PY
}

# compare NAME TOKENS MODEL_FLAGS...: the same prompt over grpc and over cuda-ipc, reported, same tokens.
compare() {
  local name=$1 tokens=$2; shift 2
  run "${name}_grpc" grpc "$tokens" "$@" || status=1
  run "${name}_ipc" cuda-ipc "$tokens" "$@" || status=1
  report "${name}_grpc" grpc; report "${name}_ipc" cuda-ipc
  same_tokens "${name}_grpc" "${name}_ipc" || status=1
}

compare small 3000 --model "$WORK/m.gguf" --chunk 256 --cache-tokens 8192
full_size=(--random-weights kimi-linear-48b-a3b --weight-type q4_0 --chunk 8192)
[[ ${FULL:-0} == 1 ]] && compare full 131072 "${full_size[@]}" --cache-tokens 139264
[[ ${LONG:-0} == 1 ]] && compare long 1048576 "${full_size[@]}" --cache-tokens 1056768

if [[ ${KILL:-0} == 1 ]]; then
  # A 3000-token prefill of the small model takes well under a second: a 200,000-token prompt in
  # 512-token chunks gives the kill a window mid-transfer. The request must end with a status (no hang), the survivors'
  # pages back to baseline (client info: cache_pages_free == cache_pages_total, no leases).
  for victim in prefill decode; do
    INFO_DELAY_S=2 run "kill_$victim" cuda-ipc 200000 --model "$WORK/m.gguf" --chunk 512 --cache-tokens 204800 &
    runner=$!
    # Mid-transfer: once the decode worker holds the request's lease, the prefill is running and
    # its chunks are being written into the decode worker's pages.
    for _ in $(seq 1 600); do
      [[ -s $WORK/kill_$victim/router.port ]] &&
        "$LS" client info --target "$(cat "$WORK/kill_$victim/router.port")" 2>/dev/null | grep -q '"leases_active":1' && break
      sleep 0.05
    done
    sleep "${KILL_AFTER_S:-0.3}"
    pid=$(pgrep -n -f "latentserve $victim .*kill_$victim/" || true)
    echo "killing $victim (pid ${pid:-none}) mid-transfer"
    [[ -n $pid ]] && kill -KILL "$pid"
    wait $runner; echo "kill $victim mid-transfer: client exit $? ($(tail -1 "$OUT/kill_$victim.client.txt"))"
    python3 - "$OUT/kill_$victim.info.txt" <<'PY' || status=1
import json, sys
workers = json.load(open(sys.argv[1]))["workers"]
ok = True
for w in workers:
    back = w["cache_pages_free"] == w["cache_pages_total"] and w["leases_active"] == 0
    print(f"  {w['role']:>7} alive={w['alive']}: pages free {w['cache_pages_free']}/{w['cache_pages_total']}, "
          f"leases {w['leases_active']}" + ("" if not w["alive"] else (" (baseline)" if back else " (NOT baseline)")))
    ok = ok and (back or not w["alive"])
sys.exit(0 if ok else 1)
PY
  done
fi
echo "device_transports status $status"
exit $status
