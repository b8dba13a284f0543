#!/usr/bin/env bash
# On the GPU machine (carry .devpack): batched decode through the real decode worker (issue 10,
# criterion 3). STREAMS (default 32) sequences of PROMPT (32768) random tokens each, no shared
# prefix, ANSWER (1024) greedy tokens each, through `latentserve serve --backend cuda` on
# loopback, against llama.cpp's llama-batched-bench on the same GGUF and the byte floor of a step.
#   1. the GGUF of scripts/device_llama.sh (/tmp/kimi48b-e32-$WT.gguf; made here if missing)
#   2. serve with room for every sequence; a warm pass prefills each prompt once (the prefill
#      worker runs prompts one after another, so without it early streams finish before late ones
#      start); the measured pass sends each prompt plus EXTRA (16) fresh tokens: the decode worker
#      resumes it from its prefix cache and all streams decode together at full context.
#      Aggregate tok/s = tokens that arrived while all streams decoded / that window
#      (scripts/device/batched_streams.py); the decode worker's step counter gives its batch.
#      WARM=0: one cold pass instead (the window may be empty).
#   3. llama-batched-bench -npp PROMPT -ntg LCPP_TG (128) -npl STREAMS (skipped, and said so, when
#      /tmp/lcpp has no build: run STEP=build scripts/device_llama.sh in an earlier call)
#   4. the byte floor of one step (scripts/device/step_floor.py; device copy bandwidth by PyTorch)
#   5. engine (not in the default STEPS): the same batch with no servers, `generate --batch
#      STREAMS`, ENGINE_STEPS (128) steps (the prompt rotated per sequence, recorded steps): serve's overhead is the gap
#   6. ncu (not in the default): per-kernel time of one batched step, unrecorded, NCU_PROMPT
#      (1024) tokens a sequence; ncu --profile-from-start off with generate --profiler-range, so
#      only the decode steps are profiled (scripts/device/ncu_step_kernels.py sums the last)
# STEPS (default "ours lcpp floor") picks parts. Logs under $OUT; the table is printed last.
# ~6-8 min on an H200 at the defaults (OURS_TIMEOUT 300 s and LCPP_TIMEOUT 240 s bound the two
# long parts so that the call stays under 10 min).
# Locally: BACKEND=cpu LS=build/bin/latentserve STREAMS=4 PROMPT=256 ANSWER=512 (a tiny model).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
BACKEND=${BACKEND:-cuda}
STREAMS=${STREAMS:-32}
PROMPT=${PROMPT:-32768}
# 1024: at ~95 tok/s a stream, 256 tokens ended before the measured pass's last stream started
# (its first tokens came over up to 3.6 s), leaving no window where all decode (2026-12-03).
ANSWER=${ANSWER:-1024}
ENGINE_STEPS=${ENGINE_STEPS:-128}
EXTRA=${EXTRA:-16}
LCPP_TG=${LCPP_TG:-128}
CHUNK=${CHUNK:-8192}
WT=${WT:-q4_0}
LCPP=/tmp/lcpp
LS=${LS:-$PWD/.devpack/bin/latentserve}
HERE=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH=$PWD/.devpack/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
WORK=$(mktemp -d)
PAGE=256
STEPS=${STEPS:-ours lcpp floor}
has() { [[ " $STEPS " == *" $1 "* ]]; }
OURS=n/a
LCPP_TGS=n/a
SERVE=
cleanup() { [[ -n $SERVE ]] && kill -TERM "$SERVE" 2> /dev/null && wait "$SERVE"; }
trap cleanup EXIT

if [[ $BACKEND == cuda ]]; then
  MODEL=${MODEL:-/tmp/kimi48b-e32-$WT.gguf}
  [[ -f $MODEL ]] || "$LS" make-test-model --config kimi-linear-48b-a3b --experts 32 --weight-type "$WT" \
    --threads 16 --out "$MODEL" > "$OUT/make_model.txt" 2>&1
else
  MODEL=${MODEL:-$WORK/tiny.gguf}
  [[ -f $MODEL ]] || "$LS" make-test-model --out "$MODEL" --seed 1 > "$OUT/make_model.txt" 2>&1
fi
[[ -f $MODEL ]] || { echo "no model at $MODEL (see $OUT/make_model.txt)"; exit 1; }
echo "== model $MODEL ($(du -h "$MODEL" | cut -f1)), backend $BACKEND, $STREAMS streams x ($PROMPT + $EXTRA) prompt + $ANSWER answer"

# The engine's own sizes: latent bytes per token, KDA state bytes per sequence.
"$LS" plan --model "$MODEL" --context "$((PROMPT + EXTRA))" --cache-type f16 > "$WORK/plan.json" || exit 1
# Cache: every sequence's prompt + answer, rounded to pages, plus two pages each (the partial
# page a resumed prompt copies on write, and the next token's page).
PER_STREAM=$(((PROMPT + EXTRA + ANSWER + PAGE - 1) / PAGE * PAGE + 2 * PAGE))
CACHE_TOKENS=$((STREAMS * PER_STREAM))
# Prefix cache: the warm pass's prompts and the measured pass's (sharing pages), with a KDA
# checkpoint at each end.
PREFIX_MIB=$(python3 -c "import json; p = json.load(open('$WORK/plan.json'))
print(int(2 * $STREAMS * (p['latent_cache_bytes'] + p['kda_state_bytes']) / 2**20) + 64)")
[[ $STREAMS -gt 0 && $PROMPT -gt $EXTRA ]] || { echo "PROMPT must exceed EXTRA"; exit 1; }
# Serve on loopback, the two passes, serve stopped. --local-prefill-max-tokens EXTRA: warm
# prompts go through the prefill worker (the real handoff), the measured pass's extra tokens are
# prefilled by the decode worker. --decode-progress-timeout-ms 0: one decode worker, nothing to
# resume on.
# serve's /metrics (the decode step counter) is optional: on the lent GPU machine civetweb
# refused to start ("null context when constructing CivetServer", twice, a fixed free port and
# port 0; it starts here and in CI), so without it serve is started again with no metrics and
# the batch size of a step is not reported. METRICS=0 skips it.
start_serve() {
  local metrics=()
  if [[ $1 == 1 ]]; then
    metrics=(--metrics-listen "127.0.0.1:$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")")
  fi
  rm -f "$WORK/port"
  "$LS" serve --listen 127.0.0.1:0 --port-file "$WORK/port" --model "$MODEL" --backend "$BACKEND" \
    --chunk "$CHUNK" --cache-type f16 --page-tokens "$PAGE" --cache-tokens "$CACHE_TOKENS" --decode-pages upfront \
    --prefix-cache-mib "$PREFIX_MIB" --checkpoint-interval 0 --local-prefill-max-tokens "$EXTRA" \
    --decode-progress-timeout-ms 0 "${metrics[@]}" > "$OUT/batched_serve.log" 2>&1 &
  SERVE=$!
  for _ in $(seq 1 1200); do [[ -s $WORK/port ]] && break; kill -0 $SERVE 2> /dev/null || break; sleep 0.25; done
  [[ -s $WORK/port ]]
}
run_ours() {
  if ! start_serve "${METRICS:-1}"; then
    if [[ ${METRICS:-1} == 1 ]] && grep -q "cannot serve metrics" "$OUT/batched_serve.log"; then
      echo "serve could not serve /metrics ($(grep -o 'cannot serve metrics.*' "$OUT/batched_serve.log" | head -1)); again without"
      wait "$SERVE" 2> /dev/null
      start_serve 0 || { echo "serve did not start:"; tail -5 "$OUT/batched_serve.log"; return 1; }
    else
      echo "serve did not start:"; tail -5 "$OUT/batched_serve.log"; return 1
    fi
  fi
  local target metrics vocab
  target=$(cat "$WORK/port")
  "$LS" client health --target "$target" > /dev/null || { echo "serve is not healthy"; return 1; }
  metrics=$(grep -o 'metrics on http://[^ ]*' "$OUT/batched_serve.log" | head -1 | cut -d' ' -f3)
  vocab=$("$LS" client info --target "$target" | python3 -c "import json, sys; print(json.load(sys.stdin)['vocab_size'])")
  echo "serve on $target: cache $CACHE_TOKENS tokens, prefix cache $PREFIX_MIB MiB, vocab $vocab"
  local warm=()
  [[ ${WARM:-1} == 0 ]] && warm=(--no-warm)
  timeout "${OURS_TIMEOUT:-300}" python3 "$HERE/device/batched_streams.py" --bin "$LS" --target "$target" \
    --streams "$STREAMS" --prompt "$PROMPT" --answer "$ANSWER" --extra "$EXTRA" --vocab "$vocab" "${warm[@]}" \
    --metrics "$metrics" --dir "$OUT/batched_streams" --prompt-dir "$WORK/prompts" | tee "$WORK/streams.txt"
  echo "streams: exit ${PIPESTATUS[0]}"
  # The decode worker's own view (its decode_steps log lines) of the steps that ran all streams:
  # a step's forward (greedy tokens or logits on the host included) against its host sampling.
  grep '"event":"decode_steps"' "$OUT/batched_serve.log" | python3 -c "import json, sys
for line in sys.stdin:
  e = json.loads(line)
  if e['batch'] == $STREAMS:
    print('  decode worker, batch %d: %d steps in %.2f s, forward %.2f ms + sampling %.2f ms a step' % (
          e['batch'], e['steps'], e['seconds'], e['forward_ms_per_step'], e['sample_ms_per_step']))"
  OURS=$(tail -1 "$WORK/streams.txt" | python3 -c "import json, sys
try:
  w = json.loads(sys.stdin.read())['window']
  print('%.1f' % w['tok_s'] if w['tokens'] else 'n/a')
except Exception: print('n/a')")
  cleanup
  SERVE=
}
has ours && run_ours

# llama.cpp: the same GGUF, prompts of PROMPT tokens, LCPP_TG tokens generated by each of STREAMS
# sequences in one batch per step (its S_TG); -c holds every sequence (non-unified KV).
run_lcpp() {
  if [[ $BACKEND != cuda ]]; then
    echo "== llama-batched-bench: skipped (BACKEND=$BACKEND; the comparison is a GPU one)"; return
  fi
  if [[ ! -x $LCPP/build/bin/llama-batched-bench ]]; then
    echo "== llama-batched-bench: SKIPPED, $LCPP/build/bin/llama-batched-bench is missing (STEP=build scripts/device_llama.sh first)"
    return
  fi
  local ctx=$((STREAMS * ((PROMPT + LCPP_TG + 255) / 256 * 256)))
  echo "== llama-batched-bench -npp $PROMPT -ntg $LCPP_TG -npl $STREAMS -c $ctx"
  timeout "${LCPP_TIMEOUT:-240}" "$LCPP/build/bin/llama-batched-bench" -m "$MODEL" -ngl 99 -fa 1 -npp "$PROMPT" \
    -ntg "$LCPP_TG" -npl "$STREAMS" -c "$ctx" -b 4096 -ub 4096 --output-format jsonl > "$OUT/lcpp_batched.txt" 2>&1
  echo "exit $?"
  LCPP_TGS=$(python3 - "$OUT/lcpp_batched.txt" <<'PY'
import json, sys
for line in open(sys.argv[1], errors="replace"):
    if line.startswith('{"n_kv_max"'):
        row = json.loads(line)
        print("%.1f" % row["speed_tg"])
        print(f"llama.cpp: PP {row['speed_pp']:.0f} tok/s ({row['t_pp']:.1f} s), TG {row['speed_tg']:.1f} tok/s "
              f"({row['t_tg']:.1f} s)", file=sys.stderr)
        break
else:
    print("n/a")
PY
)
}
has lcpp && run_lcpp

# A prompt of N ids below the GGUF's vocabulary (random, seed 5).
engine_prompt() {
  python3 - "$MODEL" "$1" "$HERE/device" <<'PY'
import random, sys
sys.path.insert(0, sys.argv[3])
import step_floor
sizes, meta = step_floor.read_tensor_table(sys.argv[1])
vocab = int(meta.get(meta.get("general.architecture", "") + ".vocab_size", 0)) or 256
random.seed(5)
print(",".join(str(random.randrange(vocab)) for _ in range(int(sys.argv[2]))))
PY
}
run_engine() {
  engine_prompt "$PROMPT" > "$WORK/engine_prompt.txt" || return 1
  echo "== generate --batch $STREAMS, prompts of $PROMPT tokens, $ENGINE_STEPS steps (no servers)"
  timeout "${ENGINE_TIMEOUT:-200}" "$LS" generate --model "$MODEL" --backend "$BACKEND" --cache-type f16 \
    --batch "$STREAMS" --prompt-tokens-file "$WORK/engine_prompt.txt" --max-tokens "$((ENGINE_STEPS + 1))" \
    --ignore-eos > /dev/null 2> "$OUT/engine.txt"
  echo "exit $?"; grep -E "^batch" "$OUT/engine.txt"
}
has engine && run_engine
run_ncu() {
  if [[ $BACKEND != cuda ]]; then echo "== ncu: skipped (BACKEND=$BACKEND)"; return; fi
  engine_prompt "${NCU_PROMPT:-1024}" > "$WORK/ncu_prompt.txt" || return 1
  echo "== ncu over two unrecorded decode steps of $STREAMS sequences"
  LATENTSERVE_CUDA_GRAPHS=0 timeout "${NCU_TIMEOUT:-240}" /usr/local/cuda/bin/ncu --profile-from-start off \
    --cache-control none --clock-control none --metrics gpu__time_duration.sum --csv \
    "$LS" generate --model "$MODEL" --backend cuda --cache-type f16 --batch "$STREAMS" \
    --prompt-tokens-file "$WORK/ncu_prompt.txt" --max-tokens 3 --ignore-eos --profiler-range \
    > "$OUT/ncu_batch.csv" 2> "$OUT/ncu_batch.err"
  echo "ncu: exit $?"
  python3 "$HERE/device/ncu_step_kernels.py" "$OUT/ncu_batch.csv" | tee "$OUT/ncu_batch.txt"
}
has ncu && run_ncu

has floor || exit 0
# The floor at the window's mean context: prompt + extra + half the answer.
python3 "$HERE/device/step_floor.py" --gguf "$MODEL" --plan "$WORK/plan.json" --streams "$STREAMS" \
  --context "$((PROMPT + EXTRA + ANSWER / 2))" --measure "$BACKEND" > "$OUT/step_floor.json"
cat "$OUT/step_floor.json"
python3 - "$OUT/step_floor.json" "$OURS" "$LCPP_TGS" "$STREAMS" "$PROMPT" "$ANSWER" "$LCPP_TG" <<'PY' | tee "$OUT/batched_table.md"
import json, sys
floor = json.load(open(sys.argv[1]))
ours, lcpp = sys.argv[2], sys.argv[3]
streams, prompt, answer, tg = sys.argv[4:8]
f = floor["tok_s"]
def num(x):
    return float(x) if x not in ("n/a", "") else None
o, l = num(ours), num(lcpp)
fmt = lambda v: f"{v:.1f}" if v is not None else "n/a"
ratio = lambda a, b: f"{a / b:.3f}" if a is not None and b else "n/a"
print()
print(f"| {streams} streams x {prompt}-token context | tok/s | / floor |")
print("|---|---|---|")
print(f"| latentserve serve, all-decoding window ({answer} tokens each) | {fmt(o)} | {ratio(o, f)} |")
print(f"| llama.cpp batched-bench S_TG (ntg {tg}) | {fmt(l)} | {ratio(l, f)} |")
print(f"| byte floor: {floor['bytes']['total'] / 1e9:.2f} GB/step at {floor['bandwidth_bytes_per_s'] / 1e12:.2f} TB/s "
      f"= {floor['step_ms']:.2f} ms | {f:.1f} | 1.000 |")
print(f"latentserve / llama.cpp: {ratio(o, l)}; criterion 3 wants latentserve / floor >= 0.5")
PY
