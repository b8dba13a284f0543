#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang + ASan/UBSan in build-fuzz/ and runs
# each one for SECONDS (default 20) on a scratch copy of its seed corpus, JOBS at a time.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
#   (targets: fuzz_gguf fuzz_tokenizer fuzz_int_list fuzz_handoff fuzz_request)
# Environment: JOBS (default 2) build parallelism and targets run at once; FUZZ_OUT (default
# build-fuzz/fuzz-out) where the grown corpora, logs and any crash-* / timeout-* / oom-*
# reproducers land; FUZZ_ALSO_BUILD more build-fuzz targets to build with them (scripts/test.sh:
# sanitize_tests); FUZZ_BUILD_ONLY=1 builds and runs nothing.
# Exit status: non-zero when a target finds a crash, leak, timeout or sanitizer report.
# Reproduce a finding: build-fuzz/bin/<target> <reproducer file>
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-20}
shift || true
JOBS=${JOBS:-2}
OUT=${FUZZ_OUT:-build-fuzz/fuzz-out}
ALL_TARGETS=(fuzz_gguf fuzz_tokenizer fuzz_int_list fuzz_handoff fuzz_request)
TARGETS=("$@")
if ((${#TARGETS[@]} == 0)); then TARGETS=("${ALL_TARGETS[@]}"); fi

# clang >= 15: common/dtype.cc uses _Float16, which clang 14 rejects on x86-64.
for v in 19 18 17 16 15; do
  if command -v clang++-$v >/dev/null 2>&1; then : "${CLANG:=clang-$v}" "${CLANGXX:=clang++-$v}"; break; fi
done
CLANG=${CLANG:-clang}
CLANGXX=${CLANGXX:-clang++}
if ! command -v "$CLANGXX" >/dev/null 2>&1; then
  echo "fuzz.sh: $CLANGXX not found (apt-get install clang-16 libclang-rt-16-dev)" >&2
  exit 1
fi

echo "== build-fuzz/ (clang, libFuzzer, ASan + UBSan)"
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER="$CLANG" -DCMAKE_CXX_COMPILER="$CLANGXX" \
  -DLATENTSERVE_FUZZ=ON -DLATENTSERVE_SANITIZE=ON -DLATENTSERVE_SERVING=ON >/dev/null
read -ra ALSO_BUILD <<<"${FUZZ_ALSO_BUILD:-}"
cmake --build build-fuzz -j "$JOBS" --target "${TARGETS[@]}" ${ALSO_BUILD[@]+"${ALSO_BUILD[@]}"}
if [[ "${FUZZ_BUILD_ONLY:-0}" == 1 ]]; then exit 0; fi

mkdir -p "$OUT"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# Runs one target for SECONDS_PER_TARGET; its exit status says whether it found anything.
run_target() {
  local target=$1
  local corpus=$OUT/$target/corpus artifacts=$OUT/$target/artifacts log=$OUT/$target/fuzz.log
  mkdir -p "$corpus" "$artifacts"
  # Seeds are read-only inputs: new inputs go to the scratch corpus (first directory).
  build-fuzz/bin/"$target" "$corpus" "tests/fuzz/corpus/${target#fuzz_}" \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1
}

# Reports one finished target (its status in $2); adds it to `failed` on a finding.
report_target() {
  local target=$1 status=$2 log=$OUT/$1/fuzz.log
  if ((status == 0)); then
    echo "== $target: ${SECONDS_PER_TARGET}s: $(grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb|stat::new_units_added)' "$log" | tr '\n' ' ' || true)"
  else
    echo "FAILED: $target (log: $log)"
    grep -E 'ERROR|SUMMARY|Test unit written|runtime error' "$log" | head -20 || true
    failed+=("$target")
  fi
}

# JOBS targets at a time (each libFuzzer run uses one core).
failed=()
pending=("${TARGETS[@]}")
while ((${#pending[@]})); do
  batch=("${pending[@]:0:JOBS}")
  pending=("${pending[@]:JOBS}")
  pids=()
  for target in "${batch[@]}"; do
    run_target "$target" &
    pids+=($!)
  done
  for i in "${!batch[@]}"; do
    status=0
    wait "${pids[$i]}" || status=$?
    report_target "${batch[$i]}" "$status"
  done
done
if ((${#failed[@]})); then
  echo "fuzz.sh: findings in ${failed[*]}" >&2
  exit 1
fi
echo "== fuzz: no findings"
