#!/usr/bin/env bash
# On the GPU machine (issue 14, criteria 1 and 2 on the H200): document sessions through
# `latentserve serve --backend cuda`. Expects .devpack/ binaries (latentserve built with
# -DLATENTSERVE_CUDA=ON and serving); builds nothing; writes logs under $OUT. About 2-3 minutes.
#
#   1. exactness: an f32 test model; sessions over documents of 37, 64, 100 and 257 tokens
#      (mid-page, at page boundaries, between and past 48-token checkpoints; pages of 16) get
#      questions whose greedy tokens must equal `latentserve logits --greedy --backend cuda` on
#      the whole prompt (no reuse); a plain request that repeats a prompt's prefix likewise.
#   2. the full-size shape (random q4_0 kimi-linear-48b-a3b, f16 cache): a DOC_TOKENS (131,072)
#      -token document of random ids as a pinned session, 10 questions of 32 random tokens,
#      each TTFT printed; question 1's tokens against a fresh `generate` of the whole prompt.
#
#   3. (step "split") the exactness of 1. through router + prefill + decode as three processes:
#      short questions prefilled on the decode worker, long ones (past --local-prefill-max-tokens
#      32) by the prefill worker resuming the cached document it reads from the decode worker.
#
#   DOC_TOKENS=131072 QUESTIONS=10 STEPS="exact split full" scripts/device_sessions.sh
set -uo pipefail
export LD_LIBRARY_PATH=$PWD/.devpack/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
LS=${LS:-$PWD/.devpack/bin/latentserve}
OUT=${OUT:-/tmp/out}
DOC_TOKENS=${DOC_TOKENS:-131072}
QUESTIONS=${QUESTIONS:-10}
STEPS=${STEPS:-exact split full}
# A dry run of the script's logic on a CPU: BACKEND=cpu DOC_TOKENS=4096 FULL_VOCAB=264
# FULL_WEIGHTS="--model small.gguf".
BACKEND=${BACKEND:-cuda}
FULL_VOCAB=${FULL_VOCAB:-163840}
WORK=$(mktemp -d)
mkdir -p "$OUT"
SERVE=
cleanup() { [[ -n $SERVE ]] && kill -TERM $SERVE 2>/dev/null && wait $SERVE 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
status=0

start_serve() {  # log, flags...
  local log=$1; shift
  rm -f "$WORK/port"
  "$LS" serve --listen 127.0.0.1:0 --port-file "$WORK/port" --backend "$BACKEND" "$@" > "$log" 2>&1 &
  SERVE=$!
  for _ in $(seq 1 1800); do
    [[ -s $WORK/port ]] && return 0
    kill -0 "$SERVE" 2>/dev/null || { echo "serve exited:"; tail -20 "$log"; return 1; }
    sleep 0.1
  done
  echo "serve did not listen in 180 s"; return 1
}
stop_serve() { kill -TERM $SERVE; wait $SERVE; SERVE=; }
# Router + prefill + decode, the router's port in $WORK/port; SERVE holds the three pids.
start_split() {  # log-prefix, model flags... -- decode-only flags...
  local log=$1; shift
  local model=() decode_only=()
  while (($#)) && [[ $1 != -- ]]; do model+=("$1"); shift; done
  (($#)) && shift
  decode_only=("$@")
  rm -f "$WORK/port" "$WORK/prefill.port" "$WORK/decode.port"
  "$LS" router --listen 127.0.0.1:0 --port-file "$WORK/port" > "$log.router.log" 2>&1 &
  SERVE=$!
  for _ in $(seq 1 600); do [[ -s $WORK/port ]] && break; sleep 0.1; done
  local router
  router=$(cat "$WORK/port")
  "$LS" prefill --listen 127.0.0.1:0 --port-file "$WORK/prefill.port" --router "$router" --backend "$BACKEND" \
    "${model[@]}" > "$log.prefill.log" 2>&1 &
  SERVE="$SERVE $!"
  "$LS" decode --listen 127.0.0.1:0 --port-file "$WORK/decode.port" --router "$router" --backend "$BACKEND" \
    "${model[@]}" "${decode_only[@]}" > "$log.decode.log" 2>&1 &
  SERVE="$SERVE $!"
  for _ in $(seq 1 1800); do
    info=$("$LS" client info --target "$router" 2>/dev/null)
    grep -q '"role":"decode","alive":true' <<<"$info" && grep -q '"role":"prefill","alive":true' <<<"$info" && return 0
    sleep 0.1
  done
  echo "split deployment not up in 180 s"; tail -5 "$log".*.log; return 1
}
[[ $BACKEND == cuda ]] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

make_exact_model() {
  [[ -f $WORK/m.gguf ]] && return 0
  "$LS" make-test-model --out "$WORK/m.gguf" --seed 4 --layers 5 --hidden 128 --heads 4 --kda-head-dim 32 \
    --kv-lora-rank 64 --qk-nope 32 --qk-rope 32 --v-head 32 --experts 8 --experts-used 2 --expert-ffn 64 --ffn 256 \
    --mla-layers 1,4 --weight-type f32 2>/dev/null
}
# Sessions and a plain prefix reuse against `logits --greedy` (no reuse); $1: serve | split.
exactness() {
  python3 - "$LS" "$(cat "$WORK/port")" "$WORK/m.gguf" "$WORK" "$BACKEND" "$1" <<'PY' | tee "$OUT/exact_$1.txt" || status=1
import json, random, subprocess, sys
ls, target, model, work, backend, mode = sys.argv[1:7]
rng = random.Random(14)
def run(*args):
    out = subprocess.run([ls, *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{args[:3]}: rc {out.returncode}: {out.stderr.strip()[-400:]}")
    return out.stdout
def last_json(text):
    return json.loads([l for l in text.splitlines() if l.startswith("{")][-1])
def ids(tokens):
    return ",".join(map(str, tokens))
def fresh(tokens, n):
    return json.loads(run("logits", "--model", model, "--tokens", ids(tokens), "--greedy", str(n), "--backend", backend,
                          "--chunk", "32", "--page-tokens", "16", "--cache-type", "f16"))["greedy"]
gen = ("--max-tokens", "12", "--temperature", "0", "--ignore-eos", "--json", "--target", target)
bad = 0
for doc_len in (37, 64, 100, 257):
    doc = [rng.randrange(1, 264) for _ in range(doc_len)]
    open(f"{work}/doc.txt", "w").write(ids(doc))
    sid = last_json(run("client", "session", "create", "--target", target, "--prompt-tokens-file", f"{work}/doc.txt",
                        "--pinned"))["session_id"]
    # split: questions past --local-prefill-max-tokens (32) go to the prefill worker, which resumes the document
    for q_len in ((1, 9, 40) if mode == "serve" else (9, 40, 77)):
        q = [rng.randrange(1, 264) for _ in range(q_len)]
        got = last_json(run("client", "session", "ask", "--session", sid, "--prompt-tokens", ids(q), *gen))
        want = fresh(doc + q, 12)
        same = got["token_ids"] == want
        bad += not same
        verdict = "identical" if same else f"DIFFER {got['token_ids']} vs {want}"
        print(f"session doc {doc_len:3d} + question {q_len:2d}: cached_tokens {got['usage']['cached_tokens']:3d}  "
              f"tokens {verdict}")
    run("client", "session", "close", "--session", sid, "--target", target)
# Plain requests: the second shares a prefix of the first (cut mid-page) and resumes it.
first = [rng.randrange(1, 264) for _ in range(150)]
second = first[:107] + [rng.randrange(1, 264) for _ in range(20)]
for prompt in (first, second):
    got = last_json(run("client", "generate", "--prompt-tokens", ids(prompt), *gen))
    want = fresh(prompt, 12)
    bad += got["token_ids"] != want
    print(f"plain {len(prompt)} tokens: cached_tokens {got['usage']['cached_tokens']:3d}  "
          f"tokens {'identical' if got['token_ids'] == want else 'DIFFER'}")
print(f"exactness ({mode}): {'PASS' if bad == 0 else f'FAIL ({bad} differ)'}")
sys.exit(1 if bad else 0)
PY
}
EXACT_FLAGS=(--chunk 32 --page-tokens 16)
EXACT_DECODE=(--cache-tokens 4096 --prefix-cache-mib 64 --checkpoint-interval 48)
if [[ " $STEPS " == *" exact "* ]]; then
  echo "== 1. exactness on $BACKEND: session / prefix reuse vs logits --greedy (no reuse), f32 test model"
  make_exact_model
  start_serve "$OUT/serve_exact.log" --model "$WORK/m.gguf" "${EXACT_FLAGS[@]}" "${EXACT_DECODE[@]}" || exit 1
  exactness serve
  stop_serve
fi
if [[ " $STEPS " == *" split "* ]]; then
  echo "== 3. exactness on $BACKEND in split mode (router + prefill + decode)"
  make_exact_model
  start_split "$OUT/split_exact" --model "$WORK/m.gguf" "${EXACT_FLAGS[@]}" -- "${EXACT_DECODE[@]}" \
    --local-prefill-max-tokens 32 || exit 1
  exactness split
  stop_serve
fi

if [[ " $STEPS " == *" full "* ]]; then
  echo "== 2. full size: a ${DOC_TOKENS}-token session, $QUESTIONS questions of 32 tokens"
  python3 -c "import random,sys; r=random.Random(3); print(','.join(str(r.randrange(1, int(sys.argv[2]))) for _ in range(int(sys.argv[1]))))" \
    "$DOC_TOKENS" "$FULL_VOCAB" > "$WORK/doc.txt"
  read -r -a FULL <<< "${FULL_WEIGHTS:---random-weights kimi-linear-48b-a3b --weight-type q4_0} --cache-type f16 --chunk 8192"
  t0=$(date +%s)
  start_serve "$OUT/serve_full.log" "${FULL[@]}" --cache-tokens $((2 * DOC_TOKENS + 8192)) --prefix-cache-mib 8192 || exit 1
  echo "serve up in $(( $(date +%s) - t0 )) s (two engines of random weights)"
  python3 - "$LS" "$(cat "$WORK/port")" "$WORK" "$QUESTIONS" "$FULL_VOCAB" <<'PY' | tee "$OUT/full.txt" || status=1
import json, random, subprocess, sys
ls, target, work, questions, vocab = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def client(*args):
    out = subprocess.run([ls, "client", *args, "--target", target], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"client {args[:2]}: rc {out.returncode}: {out.stderr.strip()[-400:]}")
    return json.loads([l for l in out.stdout.splitlines() if l.startswith("{")][-1])
created = client("session", "create", "--prompt-tokens-file", f"{work}/doc.txt", "--pinned")
sid, read = created["session_id"], created["prefill_ms"]
print(f"session {sid}: {created['document_tokens']} document tokens, read {read:.1f} ms")
rng = random.Random(5)
rows = []
for i in range(questions):
    q = [rng.randrange(1, vocab) for _ in range(32)]
    r = client("session", "ask", "--session", sid, "--prompt-tokens", ",".join(map(str, q)), "--max-tokens", "8",
               "--temperature", "0", "--ignore-eos", "--json")
    if i == 0:
        open(f"{work}/q1.txt", "w").write(open(f"{work}/doc.txt").read().strip() + "," + ",".join(map(str, q)))
        open(f"{work}/q1_tokens.json", "w").write(json.dumps(r["token_ids"]))
    rows.append(r)
    print(f"question {i + 1:2d}: ttft {r['timing']['ttft_ms']:8.1f} ms  cached_tokens {r['usage']['cached_tokens']}  "
          f"prompt {r['usage']['prompt_tokens']}")
client("session", "close", "--session", sid)
ttft = [r["timing"]["ttft_ms"] for r in rows]
later = ttft[1:] or ttft
print("\n| step | TTFT ms | share of the document read | share of question 1 |\n|---|---|---|---|")
print(f"| document read (CreateSession, {created['document_tokens']} tokens) | {read:.1f} | 100% | |")
print(f"| question 1 | {ttft[0]:.1f} | {100 * ttft[0] / read:.2f}% | 100% |")
print(f"| questions 2-{questions} mean / max | {sum(later) / len(later):.1f} / {max(later):.1f} | "
      f"{100 * max(later) / read:.2f}% (max) | {100 * max(later) / ttft[0]:.0f}% (max) |")
PY
  stop_serve
  # Exactness at full size: question 1 asked fresh (one process, no reuse; same 8192-token
  # chunks over the document, then the question as one chunk, as the session did).
  if [[ -s $WORK/q1.txt ]]; then
    "$LS" generate "${FULL[@]}" --backend "$BACKEND" --prompt-tokens-file "$WORK/q1.txt" --max-tokens 8 --ignore-eos --ids \
      > "$WORK/fresh.txt" 2> "$OUT/fresh.log" || status=1
    python3 - "$WORK/q1_tokens.json" "$WORK/fresh.txt" <<'PY' | tee -a "$OUT/full.txt" || status=1
import json, sys
session = json.load(open(sys.argv[1]))
fresh = [int(t) for t in open(sys.argv[2]).read().strip().split(",") if t]
print(f"full size, question 1: session {session} fresh {fresh}: "
      f"{'identical' if session == fresh else 'DIFFER (first token ' + ('same' if session[:1] == fresh[:1] else 'differs') + ')'}")
sys.exit(0 if session == fresh else 1)
PY
  fi
fi
echo "device_sessions status $status"
exit $status
