#!/usr/bin/env bash
# On the GPU machine (carry .devpack.tar.xz or .devpack): one call that compares a change with a
# base binary, the shape of most kernel calls of issue 10. Pack the change with
# ../shared/tools/device-pack (bin/latentserve, bin/test_backend_ops) and put the base
# latentserve (main's build) at .devpack/base/latentserve.
#   1. the GGUF of scripts/device_llama.sh, made in the background (/tmp/kimi48b-e32-q4_0.gguf)
#   2. test_backend_ops of the change, filtered by TESTS (default: every test)
#   3. bench-ops rows (OPS, default batched_gemm) of both binaries, in graph
#   4. the batch-32 engine step at PROMPT (8192) tokens, base and change alternating ROUNDS (2)
#      times (scripts/device_batched.sh STEPS=engine)
#   5. MEMCHECK=1: compute-sanitizer memcheck on TESTS, if the call has time left
# Prints a short log; everything stays under /tmp/ab (the machine's $OUT gets nothing).
set -uo pipefail
export LD_LIBRARY_PATH=$PWD/.devpack/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
NEW=$PWD/.devpack/bin/latentserve
BASE=${BASE:-$PWD/.devpack/base/latentserve}
L=/tmp/ab
mkdir -p $L
MODEL=/tmp/kimi48b-e32-q4_0.gguf
[[ -x $BASE ]] || { echo "no base binary at $BASE"; exit 1; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
if [[ ! -f $MODEL ]]; then
  ("$NEW" make-test-model --config kimi-linear-48b-a3b --experts 32 --weight-type q4_0 --threads 8 --out "$MODEL" \
    > $L/make_model.txt 2>&1) &
fi
echo "== test_backend_ops ${TESTS:-(all)}"
timeout "${TEST_TIMEOUT:-240}" .devpack/bin/test_backend_ops --gtest_filter="${TESTS:-*}" > $L/tests.txt 2>&1
echo "exit $? at ${SECONDS}s"
grep -E "^\[  PASSED|^\[  FAILED|FAILED  \]" $L/tests.txt | head -20
grep -A8 "Failure" $L/tests.txt | head -40
for b in BASE NEW; do
  echo "== bench-ops ${OPS:-batched_gemm}: $b"
  timeout 120 "${!b}" bench-ops --backend cuda --sections "${SECTIONS:-decode}" --repeats 20 --ops "${OPS:-batched_gemm}" \
    > $L/bench_$b.txt 2>&1
  grep -vE '^\{' $L/bench_$b.txt | grep -E "in_graph|%" | head -30
done
wait
for ((i = 0; i < ${ROUNDS:-2}; i++)); do
  for b in BASE NEW; do
    echo "== engine, batch 32, ${PROMPT:-8192}-token prompts: $b"
    PROMPT=${PROMPT:-8192} STEPS=engine LS=${!b} OUT=$L/engine_$b scripts/device_batched.sh 2>&1 | grep -E "^batch|exit"
  done
done
if [[ ${MEMCHECK:-0} == 1 && $SECONDS -lt 420 ]]; then
  echo "== memcheck ${TESTS:-(all)}"
  timeout $((570 - SECONDS)) /usr/local/cuda/bin/compute-sanitizer --tool memcheck .devpack/bin/test_backend_ops \
    --gtest_filter="${TESTS:-*}" > $L/memcheck.txt 2>&1
  echo "exit $?"; grep -E "ERROR SUMMARY|PASSED|FAILED" $L/memcheck.txt | head -5
fi
echo "done at ${SECONDS}s"
