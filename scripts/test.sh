#!/usr/bin/env bash
# The test command: dependencies, a RelWithDebInfo build with every test (unit, integration,
# llama.cpp reference), a compile of the CUDA backend, then the sanitize-labelled tests under
# ASan/UBSan and a short fuzz run.
# Environment: JOBS (default 2) build/test parallelism; SKIP_DEPS=1 skips install_deps.sh;
# SKIP_SANITIZE=1 skips the sanitizer tests; SKIP_FUZZ=1 skips the short libFuzzer run
# (scripts/fuzz.sh, FUZZ_SECONDS per target, default 15); SKIP_CUDA=1 skips the CUDA compile
# check (run when /usr/local/cuda/bin/nvcc exists).
#
# Where the time goes (a 2-core machine): the build and ctest use both cores; ctest's long
# tests (COST in their CMakeLists) start first. The CUDA compile and the clang build of the
# sanitizer tests and fuzz targets (one build, build-fuzz/: they share every library) run in the
# background at nice 19 while ctest runs, on the CPU the tests leave idle, and finish after it.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}

if [[ "${SKIP_DEPS:-0}" != 1 ]]; then
  scripts/install_deps.sh
fi

echo "== build/ (RelWithDebInfo)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j "$JOBS"

# The CUDA backend compiles here (nvcc, no GPU); its tests (label gpu) run on the device.
cuda=0
if [[ "${SKIP_CUDA:-0}" != 1 && -x /usr/local/cuda/bin/nvcc ]]; then cuda=1; fi
# build-fuzz/ (clang, ASan + UBSan): the sanitize-labelled tests (target sanitize_tests) and
# the libFuzzer targets.
sanitizer_targets=()
if [[ "${SKIP_SANITIZE:-0}" != 1 ]]; then sanitizer_targets+=(sanitize_tests); fi
background_log=build/background-builds.log
(
  set -e
  if ((cuda)); then
    echo "== build-cuda/ (sm_90 compile check: the binary and test_backend_ops)"
    cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLATENTSERVE_CUDA=ON \
      -DLATENTSERVE_SERVING=OFF
    nice -n 19 cmake --build build-cuda -j "$JOBS" --target latentserve test_backend_ops
  fi
  if [[ "${SKIP_FUZZ:-0}" != 1 || ${#sanitizer_targets[@]} -gt 0 ]]; then
    FUZZ_BUILD_ONLY=1 FUZZ_ALSO_BUILD="${sanitizer_targets[*]:-}" JOBS="$JOBS" nice -n 19 scripts/fuzz.sh
  fi
) >"$background_log" 2>&1 &
background=$!
trap 'kill "$background" 2>/dev/null || true' EXIT

echo "== ctest (all labels; CUDA and sanitizer builds in the background: $background_log)"
ctest --test-dir build --output-on-failure -j "$JOBS"

echo "== waiting for the background builds"
if ! wait "$background"; then
  tail -n 60 "$background_log"
  echo "background builds failed (log: $background_log)" >&2
  exit 1
fi
trap - EXIT
grep -E '^== ' "$background_log" || true

if ((${#sanitizer_targets[@]})); then
  echo "== sanitize-labelled tests (build-fuzz/: clang, ASan + UBSan)"
  if ! ctest --test-dir build-fuzz -L sanitize -N | grep -q "Total Tests: [1-9]"; then
    echo "no sanitize-labelled tests were built (target sanitize_tests)" >&2
    exit 1
  fi
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-fuzz -L sanitize --output-on-failure -j "$JOBS"
fi

if [[ "${SKIP_FUZZ:-0}" != 1 ]]; then
  echo "== fuzz (libFuzzer + ASan/UBSan, ${FUZZ_SECONDS:-15}s per target, $JOBS at a time)"
  JOBS="$JOBS" scripts/fuzz.sh "${FUZZ_SECONDS:-15}"
fi
echo "== all tests passed"
