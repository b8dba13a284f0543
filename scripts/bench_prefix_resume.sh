#!/usr/bin/env bash
# A long question about a cached document, measured with and without the prefill worker's
# prefix read (docs/benchmarks-serving.md "A long rest after a cached prefix"). Split mode on
# loopback: router + prefill + decode (CPU, DEMO_THREADS threads each, default 2) over the
# needle model. A needle document (DEMO_TOKENS, default 32768) becomes a pinned session; then
# QUESTIONS (default 2) questions of ~QUESTION_TOKENS (default 3072, above the decode worker's
# --local-prefill-max-tokens 2048) ask about it, so each rest goes through the prefill worker.
# Run 1: the prefill worker reads the document from the decode worker (DecodeWorker.ReadPrefix)
# and computes only the question. Run 2: the same with --prefix-read-max-mib 0 (no read: the
# prefill worker computes document + question). Prints TTFT, cached_tokens and the prefill
# worker's prefill_done fields per question, and the two runs' mean TTFT.
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENS=${DEMO_TOKENS:-32768}
THREADS=${DEMO_THREADS:-2}
QUESTION_TOKENS=${QUESTION_TOKENS:-3072}
QUESTIONS=${QUESTIONS:-2}
BUILD=${BUILD_DIR:-build}
LS=$BUILD/bin/latentserve
WORK=$(mktemp -d /tmp/latentserve-resume.XXXXXX)
PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done; PIDS=(); }
cleanup() { stop_all; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
"$LS" make-test-model --preset needle --weight-type q4_0 --out "$WORK/needle.gguf" --context $((TOKENS + QUESTION_TOKENS + 4096))
python3 scripts/needle_text.py --tokens "$TOKENS" --depth 0.5 --seed 11 >"$WORK/needle.json"
wait_port() { for _ in $(seq 1 600); do [[ -s $1 ]] && return 0; sleep 0.1; done; echo "no port in $1" >&2; return 1; }
run() {  # $1: label, $2...: extra prefill flags
  local label=$1; shift
  local cache=$((TOKENS + QUESTION_TOKENS + 8192))
  rm -f "$WORK"/*.port
  "$LS" router --listen 127.0.0.1:0 --port-file "$WORK/router.port" --model "$WORK/needle.gguf" >"$WORK/router-$label.log" 2>&1 &
  PIDS+=($!)
  wait_port "$WORK/router.port"
  local router; router=$(cat "$WORK/router.port")
  "$LS" decode --listen 127.0.0.1:0 --port-file "$WORK/decode.port" --router "$router" --model "$WORK/needle.gguf" \
    --threads "$THREADS" --cache-tokens "$cache" --chunk 2048 --prefix-cache-mib 1024 >"$WORK/decode-$label.log" 2>&1 &
  PIDS+=($!)
  "$LS" prefill --listen 127.0.0.1:0 --port-file "$WORK/prefill.port" --router "$router" --model "$WORK/needle.gguf" \
    --threads "$THREADS" --cache-tokens "$cache" --chunk 2048 "$@" >"$WORK/prefill-$label.log" 2>&1 &
  PIDS+=($!)
  wait_port "$WORK/decode.port"; wait_port "$WORK/prefill.port"
  python3 - "$LS" "$router" "$WORK" "$label" "$QUESTION_TOKENS" "$QUESTIONS" <<'PY'
import json, subprocess, sys, time
ls, target, work, label, question_tokens, questions = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
d = json.load(open(f"{work}/needle.json"))
document = d["prompt"][: len(d["prompt"]) - len(d["question"])].rstrip(" ")
open(f"{work}/document.txt", "w").write(document)
def client(*args):
    out = subprocess.run([ls, "client", *args, "--target", target], capture_output=True, text=True, check=True).stdout
    return json.loads([l for l in out.splitlines() if l.startswith("{")][-1])
for _ in range(300):  # both workers registered
    if sum(1 for w in client("info")["workers"] if w["alive"]) == 2: break
    time.sleep(0.1)
created = client("session", "create", "--prompt-file", f"{work}/document.txt", "--pinned")
sid = created["session_id"]
print(f"[{label}] document {created['document_tokens']} tokens, read {created['prefill_ms']:.1f} ms")
ttfts = []
for i in range(questions):
    # ~question_tokens of filler words (one needle-vocabulary token each), then the question.
    question = (" the" * (question_tokens - 32 + i)) + " " + d["question"]
    r = client("session", "ask", "--session", sid, "--prompt", question, "--max-tokens", "8", "--json", "--ignore-eos")
    ttfts.append(r["timing"]["ttft_ms"])
    print(f"[{label}] question {i + 1}: prompt {r['usage']['prompt_tokens']} tokens, cached_tokens {r['usage']['cached_tokens']}, "
          f"ttft {r['timing']['ttft_ms']:.1f} ms, prefill_ms {r['timing']['prefill_ms']:.1f}, "
          f"transfer_tail_ms {r['timing']['transfer_tail_ms']:.1f}, cache_bytes {r['usage']['cache_bytes_transferred']}")
client("session", "close", "--session", sid)
print(f"[{label}] mean ttft {sum(ttfts) / len(ttfts):.1f} ms over {len(ttfts)} questions")
PY
  grep -o '"event":"prefill_done".*' "$WORK/prefill-$label.log" | tail -n "$QUESTIONS" |
    grep -o '"prompt_tokens":[0-9]*\|"prefill_ms":[0-9.]*\|"resumed_tokens":[0-9]*\|"prefix_read_ms":[0-9.]*' | paste -sd' ' | sed "s/^/[$label] prefill worker: /"
  stop_all
}
run resume
run no-resume --prefix-read-max-mib 0
