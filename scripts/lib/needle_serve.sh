# Sourced by scripts/bench_prefix_reuse.sh and scripts/bench_sessions.sh (from the repository
# root): the needle model (DEMO_TOKENS, default 32768, + room) under `serve` with a prefix cache
# on DEMO_THREADS threads (default 2), its port in TARGET, the needle document in
# $WORK/needle.json; the server stops on exit (KEEP_LOG=FILE keeps its log). $1: the work
# directory's name prefix.
TOKENS=${DEMO_TOKENS:-32768}
THREADS=${DEMO_THREADS:-2}
BUILD=${BUILD_DIR:-build}
LS=$BUILD/bin/latentserve
WORK=$(mktemp -d "/tmp/$1.XXXXXX")
PID=
cleanup() { [[ -n $PID ]] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; [[ -n ${KEEP_LOG:-} ]] && cp "$WORK/serve.log" "$KEEP_LOG"; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
"$LS" make-test-model --preset needle --weight-type q4_0 --out "$WORK/needle.gguf" --context $((TOKENS + 4096))
"$LS" serve --listen 127.0.0.1:0 --port-file "$WORK/port" --model "$WORK/needle.gguf" --threads "$THREADS" \
  --cache-tokens $((TOKENS + 8192)) --chunk 2048 --prefix-cache-mib 1024 >"$WORK/serve.log" 2>&1 &
PID=$!
for _ in $(seq 1 600); do [[ -s $WORK/port ]] && break; sleep 0.1; done
TARGET=$(cat "$WORK/port")
python3 scripts/needle_text.py --tokens "$TOKENS" --depth 0.5 --seed 11 >"$WORK/needle.json"
