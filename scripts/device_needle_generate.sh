#!/usr/bin/env bash
# On the GPU machine (device tool, carry .devpack from the CUDA build; builds nothing): the
# needle model (docs/needle.md) at the full Kimi-Linear-48B-A3B size with q4_0 weights and a
# TOKENS-token readable document per depth, answered by one `generate --backend cuda` process
# (chunked prefill + decode on the GPU; no router, no hand-off: scripts/device_needle.sh runs
# the three-process version and needs a CUDA build with serving). Prints, per depth, the answer,
# whether it is right, and the prefill and decode speeds.
#   EXPERTS=32 DEPTHS="0.5" scripts/device_needle_generate.sh
# Knobs: TOKENS (1048576), DEPTHS ("0.1 0.5 0.9"), EXPERTS (32), CACHE_TYPE (f16), CHUNK (8192).
set -uo pipefail
export LD_LIBRARY_PATH=$PWD/.devpack/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
LS=${LS:-$PWD/.devpack/bin/latentserve}
OUT=${OUT:-/tmp/out}
TOKENS=${TOKENS:-1048576}
DEPTHS=${DEPTHS:-0.1 0.5 0.9}
EXPERTS=${EXPERTS:-32}
MODEL=${MODEL:-/tmp/needle-48b-${EXPERTS}.gguf}
mkdir -p "$OUT"
if [[ ! -s $MODEL ]]; then
  "$LS" make-test-model --preset needle --weight-type q4_0 --context $((TOKENS + 4096)) --threads "$(nproc)" \
    --config kimi-linear-48b-a3b --experts "$EXPERTS" --out "$MODEL" > "$OUT/make_model.txt" 2>&1 || exit 1
fi
status=0
for depth in $DEPTHS; do
  python3 scripts/needle_text.py --tokens "$TOKENS" --depth "$depth" --seed 11 > /tmp/needle_doc.json
  python3 -c "import json,sys; open('/tmp/needle_prompt.txt','w').write(json.load(open('/tmp/needle_doc.json'))['prompt'])"
  "$LS" generate --model "$MODEL" --backend cuda --prompt-file /tmp/needle_prompt.txt --max-tokens 12 \
    --chunk "${CHUNK:-8192}" --cache-type "${CACHE_TYPE:-f16}" > "$OUT/needle_$depth.txt" 2> "$OUT/needle_$depth.err"
  echo "depth $depth: exit $?"; grep -E "^prompt|graphs" "$OUT/needle_$depth.err"
  python3 - "$OUT/needle_$depth.txt" <<'PY' || status=1
import json, sys
d = json.load(open("/tmp/needle_doc.json"))
text = open(sys.argv[1]).read().strip()
want = d["expected"].strip()
print(f"  answer {text!r}, want {want!r}: {'RIGHT' if text.startswith(want) else 'WRONG'} (fact at token {d['needle_token']} of {d['prompt_tokens']})")
sys.exit(0 if text.startswith(want) else 1)
PY
done
exit $status
