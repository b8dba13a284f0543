#!/usr/bin/env bash
# On the GPU machine (device tool, carry .devpack): everything the prefill work measures, in
# one call, before/after in the same call. Builds nothing. Steps (STEPS, default all):
#   ops        test_backend_ops (every CUDA op against the CPU reference)
#   sanitize   compute-sanitizer memcheck over the MLA/KDA/MoE op tests
#   bench      bench-ops --mha-contexts 131072,1048576 (ceilings + per-op rows)
#   sdpa       PyTorch fused attention on the same shapes (scripts/device/sdpa_ceiling.py)
#   model      full-size Kimi-Linear-48B-A3B (256 experts, random q4_0, f16 cache), PROMPTS
#              tokens (default 131072), chunk CHUNK (default 8192), MLA absorbed vs auto form
#   long       the same at LONG tokens (default 1048576), auto form, with --profile (LONG_PROFILE=0:
#              without, the time a user sees)
#   mhachunk   the MLA prefill attention op at a 1M context for chunks of MHA_CHUNKS queries
#              (default "16384 32768 65536"): the last wave's idle SMs against the chunk size
#   ncu        nsight compute on one launch of the MLA flash kernel (16,384 queries at a 131,072
#              context): throughput, warp stalls, pipe utilisation; NCU_KERNEL picks another
#   beforeafter  BA_PROMPTS (default "4096 131072") with this session's kernels switched off
#              (absorbed MLA prefill, MoE grouped on the host, KDA recurrence, gathered MLA
#              decode) and on, alternating, same binary and call; MAX_TOKENS decode tokens
#   graphs     decode with the step replayed as a CUDA graph and without (LATENTSERVE_CUDA_GRAPHS=0),
#              alternating, GRAPH_PROMPTS (default "4096 131072") tokens, GRAPH_TOKENS (default 128)
#              greedy decode tokens, GRAPH_ROUNDS rounds (default 2): the token ids must be
#              identical; decode tok/s of each
# Results under $OUT; a short table last.
set -uo pipefail
export LD_LIBRARY_PATH=$PWD/.devpack/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
BIN=$PWD/.devpack/bin
OUT=${OUT:-/tmp/out}
STEPS=${STEPS:-ops sanitize bench sdpa model}
CHUNK=${CHUNK:-8192}
mkdir -p "$OUT"
has() { [[ " $STEPS " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"

if has ops; then
  echo "== test_backend_ops"
  "$BIN/test_backend_ops" ${OPS_FILTER:+--gtest_filter=$OPS_FILTER} > "$OUT/test_backend_ops.txt" 2>&1
  echo "exit $?"; grep -E "^\[  (PASSED|FAILED)|FAILED|Failure|Expected|nmse" "$OUT/test_backend_ops.txt" | head -40
fi
if has sanitize; then
  echo "== compute-sanitizer memcheck"
  compute-sanitizer --tool memcheck --error-exitcode 9 "$BIN/test_backend_ops" \
    --gtest_filter="${SANITIZE_FILTER:-Shapes/MlaHeads.*/1:Shapes/MlaHeads.*/4:Shapes/MlaHeads.*/8}" \
    > "$OUT/sanitize.txt" 2>&1
  echo "exit $?"; tail -4 "$OUT/sanitize.txt"
fi
if has bench; then
  echo "== bench-ops"
  "$BIN/latentserve" bench-ops --backend cuda --repeats ${REPEATS:-5} --mha-contexts ${MHA_CONTEXTS:-131072,1048576} \
    > "$OUT/bench_ops.jsonl" 2> "$OUT/bench_ops.txt"
  echo "exit $?"; cat "$OUT/bench_ops.txt"
fi
if has sdpa; then
  echo "== PyTorch SDPA ceiling"
  python3 scripts/device/sdpa_ceiling.py 2>&1 | tee "$OUT/sdpa.jsonl"
fi
prompt_file() {
  python3 -c "import random; random.seed(3); print(','.join(str(random.randrange(163840)) for _ in range($1)))" > /tmp/prompt_$1.txt
}
generate() {  # tokens form tag [extra flags]
  local tokens=$1 form=$2 tag=$3; shift 3
  [[ -f /tmp/prompt_$tokens.txt ]] || prompt_file "$tokens"
  LATENTSERVE_MLA_FORM=$form /usr/bin/time -v "$BIN/latentserve" generate --random-weights kimi-linear-48b-a3b \
    --weight-type q4_0 --backend cuda --prompt-tokens-file /tmp/prompt_$tokens.txt --max-tokens ${MAX_TOKENS:-8} \
    --chunk "$CHUNK" --cache-type f16 "$@" > "$OUT/generate_${tag}.txt" 2>&1
  echo "$tag: exit $?"; grep -E "prefill|decode|memory|profile|MLA|KDA|MoE|Maximum resident" "$OUT/generate_${tag}.txt" | tail -12
}
if has model; then
  for tokens in ${PROMPTS:-131072}; do
    for form in ${FORMS:-absorbed auto}; do generate "$tokens" "$form" "${tokens}_${form}" ${PROFILE:+--profile}; done
  done
fi
if has long; then
  if [[ ${LONG_PROFILE:-1} == 0 ]]; then
    generate "${LONG:-1048576}" auto "${LONG:-1048576}_auto_noprofile"
  else
    generate "${LONG:-1048576}" auto "${LONG:-1048576}_auto" --profile
  fi
fi
if has mhachunk; then
  for n in ${MHA_CHUNKS:-16384 32768 65536}; do
    echo "== MLA prefill op, $n queries at a 1,048,576 context"
    "$BIN/latentserve" bench-ops --backend cuda --repeats ${REPEATS:-3} --sections mha --mla-kernels ${MLA_KERNELS:-tma} \
      --prefill-tokens "$n" --mha-contexts 1048576 > "$OUT/mhachunk_$n.jsonl" 2> "$OUT/mhachunk_$n.txt"
    echo "exit $?"; grep -E "prefill_mla|gemm_bf16" "$OUT/mhachunk_$n.txt"
  done
fi
if has ncu; then
  echo "== ncu ${NCU_KERNEL:-MlaFlashTma}"
  ncu --kernel-name "regex:${NCU_KERNEL:-MlaFlashTma}" --launch-skip 1 --launch-count 1 \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats \
    --section InstructionStats \
    "$BIN/latentserve" bench-ops --backend cuda --repeats 1 --sections mha --mla-kernels tma --prefill-tokens 16384 \
    --mha-contexts 131072 > "$OUT/ncu_mla.txt" 2>&1
  echo "exit $?"; grep -E "Duration|Throughput|Pipe|Stall|Warp Cycles|Issued|Eligible|Registers|Shared Memory|Achieved|No Eligible|One or More" "$OUT/ncu_mla.txt" | head -60
fi
if has beforeafter; then
  for tokens in ${BA_PROMPTS:-4096 131072}; do
    for round in $(seq 1 ${BA_ROUNDS:-2}); do
      LATENTSERVE_CUDA_MOE=host LATENTSERVE_KDA_FORM=recurrent LATENTSERVE_MLA_DECODE=gather \
        generate "$tokens" absorbed "${tokens}_before_$round"
      generate "$tokens" auto "${tokens}_after_$round"
    done
  done
fi
if has graphs; then
  for tokens in ${GRAPH_PROMPTS:-4096 131072}; do
    for round in $(seq 1 ${GRAPH_ROUNDS:-2}); do
      for graphs in 0 1; do
        tag="${tokens}_graphs${graphs}_$round"
        LATENTSERVE_CUDA_GRAPHS=$graphs MAX_TOKENS=${GRAPH_TOKENS:-128} generate "$tokens" auto "$tag" --ids --temperature 0
        grep -E "^[0-9]+(,[0-9]+)*$" "$OUT/generate_$tag.txt" > "$OUT/ids_$tag.txt"
      done
      if cmp -s "$OUT/ids_${tokens}_graphs0_$round.txt" "$OUT/ids_${tokens}_graphs1_$round.txt" && \
         [[ -s "$OUT/ids_${tokens}_graphs1_$round.txt" ]]; then
        echo "graphs $tokens round $round: identical tokens"
      else
        echo "graphs $tokens round $round: TOKENS DIFFER"; diff "$OUT/ids_${tokens}_graphs0_$round.txt" "$OUT/ids_${tokens}_graphs1_$round.txt" | head -4
      fi
    done
  done
fi
echo "== summary"
grep -h -E "prefill_mla|prefill_kda|prefill_moe|gemm_bf16|copy " "$OUT/bench_ops.txt" 2>/dev/null
grep -h TFLOPs "$OUT/sdpa.jsonl" 2>/dev/null
for f in "$OUT"/generate_*.txt; do [[ -f $f ]] && { echo "$(basename "$f"):"; grep -E "prefill" "$f" | tail -2; }; done
