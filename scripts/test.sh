#!/usr/bin/env bash
# The test command: dependencies, a RelWithDebInfo build with every test (unit, integration,
# llama.cpp reference), a compile of the CUDA backend, then an ASan/UBSan build of the
# sanitize-labelled tests and a short fuzz run.
# Environment: JOBS (default 2) build/test parallelism; SKIP_DEPS=1 skips install_deps.sh;
# SKIP_SANITIZE=1 skips the sanitizer build; SKIP_FUZZ=1 skips the short libFuzzer run
# (scripts/fuzz.sh, FUZZ_SECONDS per target, default 15); SKIP_CUDA=1 skips the CUDA compile
# check (run when /usr/local/cuda/bin/nvcc exists).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}

if [[ "${SKIP_DEPS:-0}" != 1 ]]; then
  scripts/install_deps.sh
fi

echo "== build/ (RelWithDebInfo)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j "$JOBS"
echo "== ctest (all labels)"
ctest --test-dir build --output-on-failure -j "$JOBS"

# The CUDA backend compiles here (nvcc, no GPU); its tests (label gpu) run on the device.
if [[ "${SKIP_CUDA:-0}" != 1 && -x /usr/local/cuda/bin/nvcc ]]; then
  echo "== build-cuda/ (sm_90 compile check: the binary and test_backend_ops)"
  cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLATENTSERVE_CUDA=ON \
    -DLATENTSERVE_SERVING=OFF
  cmake --build build-cuda -j "$JOBS" --target latentserve test_backend_ops
fi

if [[ "${SKIP_SANITIZE:-0}" != 1 ]]; then
  echo "== build-asan/ (ASan + UBSan, sanitize-labelled tests)"
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DLATENTSERVE_SANITIZE=ON -DLATENTSERVE_SERVING=OFF
  # Build only the executables of the tests labelled "sanitize": a test's command names its
  # executable, or (gtest_discover_tests before a build) the test is "<target>_NOT_BUILT".
  mapfile -t sanitize_targets < <(
    ctest --test-dir build-asan -L sanitize --show-only=json-v1 |
      node -e '
        const path = require("path");
        const j = JSON.parse(require("fs").readFileSync(0, "utf8"));
        const names = new Set();
        for (const t of j.tests || []) {
          const m = /^(.*)_NOT_BUILT$/.exec(t.name);
          if (m) names.add(m[1]);
          else if (t.command && t.command[0]) names.add(path.basename(t.command[0]));
        }
        for (const n of names) console.log(n);' |
      grep -Fxf <(ninja -C build-asan -t targets all | sed -n "s/^\([^:]*\): phony$/\1/p") || true)
  if ((${#sanitize_targets[@]})); then
    cmake --build build-asan -j "$JOBS" --target "${sanitize_targets[@]}"
  else
    cmake --build build-asan -j "$JOBS"
  fi
  if ctest --test-dir build-asan -L sanitize -N | grep -q "Total Tests: [1-9]"; then
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      ctest --test-dir build-asan -L sanitize --output-on-failure -j "$JOBS"
  else
    echo "no sanitize-labelled tests yet"
  fi
fi

if [[ "${SKIP_FUZZ:-0}" != 1 ]]; then
  echo "== fuzz (libFuzzer + ASan/UBSan, ${FUZZ_SECONDS:-15}s per target)"
  JOBS="$JOBS" scripts/fuzz.sh "${FUZZ_SECONDS:-15}"
fi
echo "== all tests passed"
