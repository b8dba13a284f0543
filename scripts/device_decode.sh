#!/usr/bin/env bash
# On the GPU machine (device tool, carry .devpack): the decode measurements of one call, with an
# optional baseline binary in .devpack/base/ (same call, alternating) so a kernel change is
# measured before/after on one machine. Builds nothing. Steps (STEPS, default "ops bench decode"):
#   ops      test_backend_ops (OPS_FILTER) with the new binary
#   bench    bench-ops decode rows (--context CONTEXTS each, --mha-contexts 8192; BENCH_SECTIONS
#            picks the groups of rows, default all), base then new
#   decode   full-size model (256 experts, random q4_0, f16 cache), PROMPTS tokens (default
#            "4096 131072"), DECODE_TOKENS greedy tokens (default 128), base then new, ROUNDS
#            rounds: decode tok/s of each and whether the token ids are identical
#   chunks   the last position's logits of a CHUNK_PROMPT-token prompt (default 131072) prefilled
#            in chunks of 4096 and of 65536: NMSE between them (issue 9: <= 1e-3)
#   graphs   criterion 4 of the decode issue: the new binary's GRAPH_PROMPT-token prompt (default
#            4096) decoded with the step replayed from a CUDA graph and without
#            (LATENTSERVE_CUDA_GRAPHS=0): the token ids must be identical
#   ncu      per-kernel time of one decode step (graphs off, ncu without cache flushes or clock
#            locking), NCU_PROMPT tokens (default 4096), parsed by scripts/device/ncu_step_kernels.py
# Everything lands in $OUT/results.tgz (the device tool brings back a few files only); the
# lines printed are the summary.
set -uo pipefail
export LD_LIBRARY_PATH=$PWD/.devpack/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
NEW=$PWD/.devpack/bin/latentserve
BASE=$PWD/.devpack/base/latentserve
FINAL=${OUT:-/tmp/out}
OUT=/tmp/device_decode
rm -rf "$OUT"
STEPS=${STEPS:-ops bench decode}
mkdir -p "$OUT" "$FINAL"
has() { [[ " $STEPS " == *" $1 "* ]]; }
binaries() { [[ -x $BASE ]] && echo "base:$BASE"; echo "new:$NEW"; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
prompt_file() {
  [[ -f /tmp/prompt_$1.txt ]] || python3 -c "import random; random.seed(3); print(','.join(str(random.randrange(163840)) for _ in range($1)))" > /tmp/prompt_$1.txt
}
MODEL=(--random-weights kimi-linear-48b-a3b --weight-type q4_0 --backend cuda --cache-type f16)

if has ops; then
  echo "== test_backend_ops"
  "$PWD/.devpack/bin/test_backend_ops" ${OPS_FILTER:+--gtest_filter=$OPS_FILTER} > "$OUT/test_backend_ops.txt" 2>&1
  echo "exit $?"; grep -E "^\[  (PASSED|FAILED)|FAILED|Failure" "$OUT/test_backend_ops.txt" | head -20
fi
if has bench; then
  for ctx in ${CONTEXTS:-4096 1048576}; do
    for entry in $(binaries); do
      tag=${entry%%:*} bin=${entry#*:}
      echo "== bench-ops $tag context $ctx"
      "$bin" bench-ops --backend cuda --repeats ${REPEATS:-3} --context "$ctx" --mha-contexts 8192 \
        ${BENCH_SECTIONS:+--sections "$BENCH_SECTIONS"} \
        > "$OUT/bench_${tag}_$ctx.jsonl" 2> "$OUT/bench_${tag}_$ctx.txt"
      echo "exit $?"; grep -E "copy |decode_" "$OUT/bench_${tag}_$ctx.txt"
    done
  done
fi
if has decode; then
  for tokens in ${PROMPTS:-4096 131072}; do
    prompt_file "$tokens"
    for round in $(seq 1 ${ROUNDS:-1}); do
      for entry in $(binaries); do
        tag=${entry%%:*} bin=${entry#*:}
        name="${tokens}_${tag}_$round"
        "$bin" generate "${MODEL[@]}" --prompt-tokens-file /tmp/prompt_$tokens.txt --chunk 8192 \
          --max-tokens ${DECODE_TOKENS:-128} --ids --temperature 0 > "$OUT/generate_$name.txt" 2>&1
        echo "$name: exit $?; $(grep -E "tok/s|decode graphs" "$OUT/generate_$name.txt" | tr '\n' ' ')"
        grep -E "^[0-9]+(,[0-9]+)*$" "$OUT/generate_$name.txt" > "$OUT/ids_$name.txt"
      done
      if [[ -x $BASE ]]; then
        if [[ -s "$OUT/ids_${tokens}_new_$round.txt" ]] && cmp -s "$OUT/ids_${tokens}_base_$round.txt" "$OUT/ids_${tokens}_new_$round.txt"; then
          echo "$tokens round $round: identical tokens"
        else
          echo "$tokens round $round: TOKENS DIFFER"
        fi
      fi
    done
  done
fi
if has chunks; then
  n=${CHUNK_PROMPT:-131072}
  prompt_file "$n"
  for chunk in 4096 65536; do
    "$NEW" logits "${MODEL[@]}" --tokens-file /tmp/prompt_$n.txt --chunk $chunk --last > "$OUT/logits_$chunk.json" 2> "$OUT/logits_$chunk.err"
    echo "logits chunk $chunk: exit $?"
  done
  python3 - "$OUT/logits_4096.json" "$OUT/logits_65536.json" <<'EOF' | tee "$OUT/chunks.txt"
import json, sys
a, b = (json.load(open(p))["logits"][-1] for p in sys.argv[1:3])
num = sum((x - y) ** 2 for x, y in zip(a, b)); den = sum(x * x for x in a)
print(f"chunk 4096 vs 65536, last-position logits over {len(a)} entries: NMSE {num / den:.3e}; "
      f"argmax {a.index(max(a))} vs {b.index(max(b))}")
EOF
fi
if has graphs; then
  n=${GRAPH_PROMPT:-4096}
  prompt_file "$n"
  for graphs in 0 1; do
    LATENTSERVE_CUDA_GRAPHS=$graphs "$NEW" generate "${MODEL[@]}" --prompt-tokens-file /tmp/prompt_$n.txt --chunk 8192 \
      --max-tokens ${DECODE_TOKENS:-128} --ids --temperature 0 > "$OUT/graphs_$graphs.txt" 2>&1
    echo "graphs=$graphs: exit $?; $(grep -E "tok/s|decode graphs" "$OUT/graphs_$graphs.txt" | tr '\n' ' ')"
    grep -E "^[0-9]+(,[0-9]+)*$" "$OUT/graphs_$graphs.txt" > "$OUT/graph_ids_$graphs.txt"
  done
  if [[ -s $OUT/graph_ids_1.txt ]] && cmp -s "$OUT/graph_ids_0.txt" "$OUT/graph_ids_1.txt"; then
    echo "graphs: replayed step and un-recorded step give identical tokens"
  else
    echo "graphs: TOKENS DIFFER between the replayed and the un-recorded step"
  fi
fi
if has ncu; then
  n=${NCU_PROMPT:-4096}
  prompt_file "$n"
  LATENTSERVE_CUDA_GRAPHS=0 ncu --cache-control none --clock-control none --metrics gpu__time_duration.sum --csv \
    "$NEW" generate "${MODEL[@]}" --prompt-tokens-file /tmp/prompt_$n.txt --chunk 8192 --max-tokens 2 \
    > "$OUT/ncu_step.csv" 2> "$OUT/ncu_step.err"
  echo "ncu: exit $?"
  python3 scripts/device/ncu_step_kernels.py "$OUT/ncu_step.csv" | tee "$OUT/ncu_step.txt"
fi
tar czf "$FINAL/results.tgz" -C /tmp device_decode
