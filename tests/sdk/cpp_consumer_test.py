#!/usr/bin/env python3
"""The installable C++ client as a user gets it: `cmake --install` of the build into a
fresh prefix, a separate CMake project (cpp_consumer/) that finds it with
find_package(latentserve) and links latentserve::client, and that program streaming an
answer from a real `serve`, equal to the in-tree client's.

Usage: cpp_consumer_test.py BUILD_DIR LATENTSERVE_BIN WORK_DIR
"""
import json
import os
import shutil
import subprocess
import sys
import time

build, bin_path, work = sys.argv[1:4]
here = os.path.dirname(os.path.abspath(__file__))
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
prefix = os.path.join(work, "prefix")


def run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=900, **kw)


run("cmake", "--install", build, "--prefix", prefix)
installed = sorted(os.path.relpath(os.path.join(d, f), prefix) for d, _, fs in os.walk(prefix) for f in fs)
assert "include/latentserve/client.h" in installed and "lib/cmake/latentserve/latentserveConfig.cmake" in installed, \
    installed
assert not any("worker" in f for f in installed), f"internal API installed: {installed}"
consumer_build = os.path.join(work, "consumer")
run("cmake", "-S", os.path.join(here, "cpp_consumer"), "-B", consumer_build, "-G", "Ninja",
    f"-DCMAKE_PREFIX_PATH={prefix}", "-DCMAKE_BUILD_TYPE=Release")
run("cmake", "--build", consumer_build, "-j", "2")

model = os.path.join(work, "m.gguf")
run(bin_path, "make-test-model", "--out", model, "--context", "4096", "--seed", "7")
port_file = os.path.join(work, "port")
with open(os.path.join(work, "serve.log"), "w") as log:
    serve = subprocess.Popen([bin_path, "serve", "--listen", "127.0.0.1:0", "--port-file", port_file, "--model", model,
                              "--threads", "1"], stdout=log, stderr=subprocess.STDOUT)
try:
    deadline = time.monotonic() + 60
    while not os.path.exists(port_file):
        assert serve.poll() is None and time.monotonic() < deadline, "serve did not start"
        time.sleep(0.02)
    target = open(port_file).read().strip()
    out = run(os.path.join(consumer_build, "consumer"), target, "Hello world").stdout
    reference = json.loads(run(bin_path, "client", "generate", "--target", target, "--prompt", "Hello world",
                               "--max-tokens", "8", "--ignore-eos", "--json").stdout.strip().splitlines()[-1])
    expected = f"ids={','.join(map(str, reference['token_ids']))} completion_tokens=8"
    assert out.startswith(expected), (out, expected)
    print("ok:", out.strip())
finally:
    serve.kill()
    serve.wait(10)
