#!/usr/bin/env bash
# On the GPU machine (device tool, carry the packed .devpack): one call that re-checks what the
# CUDA build claims after a round of merges. Builds nothing; expects .devpack/bin/{latentserve,
# test_backend_ops, test_cuda_transfer, test_nccl_comm, test_nccl_two_gpu}. Steps (STEPS,
# default all), results under $OUT, a summary last:
#   ops        test_backend_ops (every CUDA op against the CPU), test_cuda_transfer, the NCCL tests
#              (test_nccl_two_gpu skips on one GPU: NCCL forms no two-rank communicator there)
#   sanitize   compute-sanitizer memcheck over the MoE (both grouped kernels) and MLA op tests
#   bench      bench-ops at --prefill-tokens 16384 (MoE pre-dequantised by default there) with the
#              handoff copy rows and the MLA rows at 131,072 keys
#   sessions   scripts/device_sessions.sh exact + split (greedy tokens with reuse = without)
#   transports scripts/device_transports.sh FULL=1 and KILL=1 (CUDA IPC vs gRPC, kills)
#   chunk      a 131,072-token prompt, full-size random q4_0 model, --chunk 16384 against 65536
set -uo pipefail
export LD_LIBRARY_PATH=$PWD/.devpack/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
BIN=$PWD/.devpack/bin
OUT=${OUT:-/tmp/out}
STEPS=${STEPS:-ops sanitize bench sessions transports chunk}
mkdir -p "$OUT"
has() { [[ " $STEPS " == *" $1 "* ]]; }
summary=()
note() { summary+=("$1"); echo "$1"; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"

if has ops; then
  for t in test_backend_ops test_cuda_transfer test_nccl_comm test_nccl_two_gpu; do
    "$BIN/$t" > "$OUT/$t.txt" 2>&1
    note "$t: exit $? $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$OUT/$t.txt" | tr '\n' ' ')"
  done
  grep -E "Failure|actual" "$OUT/test_backend_ops.txt" | head -10
fi
if has sanitize; then
  compute-sanitizer --tool memcheck --error-exitcode 9 "$BIN/test_backend_ops" \
    --gtest_filter='Predequant/MoeGroupedPredequant.AgainstCpu/0:Predequant/MoeGroupedPredequant.AgainstCpu/5:Wgmma/*/0:Shapes/MlaHeads.*/4:Shapes/MlaHeads.*/8' \
    > "$OUT/sanitize.txt" 2>&1
  note "memcheck: exit $? $(grep -E 'ERROR SUMMARY' "$OUT/sanitize.txt" | tail -1)"
fi
if has bench; then
  "$BIN/latentserve" bench-ops --backend cuda --repeats 5 --prefill-tokens 16384 --mha-contexts 131072 \
    --moe-kernels wgmma,predequant > "$OUT/bench_ops.jsonl" 2> "$OUT/bench_ops.txt"
  note "bench-ops: exit $?"
  grep -E "^(copy|gemm_bf16|handoff_copy|prefill_moe|prefill_kda |prefill_mla_mha_tma)" "$OUT/bench_ops.txt"
fi
if has sessions; then
  STEPS="exact split" OUT=$OUT/sessions scripts/device_sessions.sh > "$OUT/sessions.txt" 2>&1
  note "sessions: exit $? $(grep -E '^exactness' "$OUT/sessions.txt" | tr '\n' ' ')"
fi
if has transports; then
  FULL=1 KILL=1 OUT=$OUT/transports timeout 400 scripts/device_transports.sh > "$OUT/transports.txt" 2>&1
  note "transports: exit $?"
  grep -E "device-to-device|same tokens|transfer_tail|kill|pages|UNAVAILABLE|RESOURCE|hang" "$OUT/transports.txt" | head -30
fi
if has chunk; then
  python3 -c "import random; random.seed(3); print(','.join(str(random.randrange(163840)) for _ in range(131072)))" \
    > /tmp/prompt_131072.txt
  for chunk in 16384 65536; do
    "$BIN/latentserve" generate --random-weights kimi-linear-48b-a3b --weight-type q4_0 --backend cuda \
      --prompt-tokens-file /tmp/prompt_131072.txt --max-tokens 32 --chunk "$chunk" --cache-type f16 \
      > "$OUT/chunk_$chunk.txt" 2>&1
    note "131072 tokens, --chunk $chunk: $(grep -E '^prompt ' "$OUT/chunk_$chunk.txt") $(grep -o '"peak_bytes":[0-9]*' "$OUT/chunk_$chunk.txt")"
  done
fi
echo "== summary"
printf '%s\n' "${summary[@]}"
