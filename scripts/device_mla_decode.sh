#!/usr/bin/env bash
# On the GPU machine (device tool, carry .devpack): the paged MLA decode kernel alone, one call.
# Steps (STEPS, default "bench ncu"):
#   bench  bench-ops --sections mla (copy ceiling first) at each of CONTEXTS (default
#          "4096 131072 1048576") for each decode kernel in KERNELS (LATENTSERVE_MLA_DECODE=<k>;
#          default "paged"), alternating in the same call
#   ncu    nsight compute over one launch of each kernel:variant in NCU_KERNELS (default
#          "MlaDecodeWgmma:wgmma MlaDecodePaged:mma") at NCU_CONTEXT (default 1048576)
#   decode whole-model greedy decode (256-expert random q4_0, f16 cache) after PROMPTS tokens
#          (default "4096 131072"), DECODE_TOKENS tokens, with each of DECODE_KERNELS (default
#          "mma wgmma"): tok/s of each, and whether the token ids match
#   ops    test_backend_ops --gtest_filter=$OPS_FILTER (default *Mla*)
# Everything lands in $OUT/results.tgz; the printed lines are the summary.
set -uo pipefail
export LD_LIBRARY_PATH=$PWD/.devpack/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
BIN=$PWD/.devpack/bin
FINAL=${OUT:-/tmp/out}
OUT=/tmp/device_mla_decode
rm -rf "$OUT"; mkdir -p "$OUT" "$FINAL"
STEPS=${STEPS:-bench ncu}
has() { [[ " $STEPS " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
if has ops; then
  echo "== test_backend_ops ${OPS_FILTER:-*Mla*}"
  "$BIN/test_backend_ops" --gtest_filter="${OPS_FILTER:-*Mla*}" > "$OUT/ops.txt" 2>&1
  echo "exit $?"; grep -E "^\[  (PASSED|FAILED)|FAILED|Failure" "$OUT/ops.txt" | head -20
fi
if has bench; then
  for ctx in ${CONTEXTS:-4096 131072 1048576}; do
    for k in ${KERNELS:-wgmma}; do
      LATENTSERVE_MLA_DECODE=$k "$BIN/latentserve" bench-ops --backend cuda --repeats ${REPEATS:-5} --context "$ctx" \
        --sections mla > "$OUT/bench_${k}_$ctx.jsonl" 2> "$OUT/bench_${k}_$ctx.txt"
      echo "bench $k ctx $ctx exit $?: $(grep -E '"copy"|decode_mla' "$OUT/bench_${k}_$ctx.jsonl" | tr '\n' ' ')"
    done
  done
fi
if has ncu; then
  for entry in ${NCU_KERNELS:-MlaDecodeWgmma:wgmma MlaDecodePaged:mma}; do
    kernel=${entry%%:*} variant=${entry#*:}
    echo "== ncu $kernel ($variant) at ${NCU_CONTEXT:-1048576}"
    LATENTSERVE_MLA_DECODE=$variant ncu --kernel-name "regex:$kernel" --launch-skip 1 --launch-count 1 \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
      --section Occupancy --section LaunchStats --section InstructionStats \
      "$BIN/latentserve" bench-ops --backend cuda --repeats 2 --context ${NCU_CONTEXT:-1048576} --sections mla \
      > "$OUT/ncu_$variant.txt" 2>&1
    echo "exit $?"; grep -E "Duration|DRAM Throughput|Memory Throughput|Stall|Warp Cycles Per Issued|Issued Ipc|No Eligible|Registers Per|Dynamic Shared" "$OUT/ncu_$variant.txt" | head -24
  done
fi
if has decode; then
  # Whole-model decode with each MLA decode kernel, same binary and call: 256-expert random q4_0,
  # f16 cache, greedy; the token ids must match.
  MODEL=(--random-weights kimi-linear-48b-a3b --weight-type q4_0 --backend cuda --cache-type f16)
  for tokens in ${PROMPTS:-4096 131072}; do
    [[ -f /tmp/prompt_$tokens.txt ]] || python3 -c "import random; random.seed(3); print(','.join(str(random.randrange(163840)) for _ in range($tokens)))" > /tmp/prompt_$tokens.txt
    for k in ${DECODE_KERNELS:-mma wgmma}; do
      LATENTSERVE_MLA_DECODE=$k "$BIN/latentserve" generate "${MODEL[@]}" --prompt-tokens-file /tmp/prompt_$tokens.txt \
        --max-tokens ${DECODE_TOKENS:-128} --ids --temperature 0 --ignore-eos > "$OUT/generate_${tokens}_$k.txt" 2>&1
      echo "$tokens $k: exit $?; $(grep -E "tok/s" "$OUT/generate_${tokens}_$k.txt" | tr '\n' ' ')"
      grep -E "^[0-9]+(,[0-9]+)*$" "$OUT/generate_${tokens}_$k.txt" > "$OUT/ids_${tokens}_$k.txt"
    done
    if cmp -s "$OUT/ids_${tokens}_mma.txt" "$OUT/ids_${tokens}_wgmma.txt" && [[ -s "$OUT/ids_${tokens}_mma.txt" ]]; then
      echo "$tokens: identical tokens"; else echo "$tokens: TOKENS DIFFER"; fi
  done
fi
tar czf "$FINAL/results.tgz" -C /tmp device_mla_decode
