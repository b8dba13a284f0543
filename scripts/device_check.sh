#!/usr/bin/env bash
# On the GPU machine (see shared/DEVICE.md): runs the CUDA op tests against the CPU reference,
# compute-sanitizer memcheck on them, and the whole model's logits on CUDA vs CPU for
# generated models (OPS=0 / MEMCHECK=0 skip the first two). Expects the binaries in .devpack/ (../shared/tools/device-pack) and
# writes logs under $OUT. Builds nothing.
set -uo pipefail
export LD_LIBRARY_PATH=$PWD/.devpack/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
BIN=$PWD/.devpack/bin
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
status=0
if [ "${OPS:-1}" = 1 ]; then
  echo "== op tests (CUDA vs CPU)"
  "$BIN/test_backend_ops" --gtest_output=xml:"$OUT/ops.xml" > "$OUT/ops.log" 2>&1 || status=1
  grep -E "^\[  (PASSED|FAILED)|Failure|NMSE|Expected|Which is|MatMul|Kda|Mla|Moe" "$OUT/ops.log" | head -60
fi
if [ "${MEMCHECK:-1}" = 1 ] && command -v /usr/local/cuda/bin/compute-sanitizer >/dev/null; then
  echo "== compute-sanitizer memcheck on the op tests"
  /usr/local/cuda/bin/compute-sanitizer --tool memcheck --error-exitcode 9 "$BIN/test_backend_ops" > "$OUT/memcheck.log" 2>&1
  echo "memcheck exit $? ($(grep -c 'ERROR SUMMARY: 0 errors' "$OUT/memcheck.log") clean summaries)"; tail -3 "$OUT/memcheck.log"
fi
echo "== model logits: cuda vs cpu"
python3 - "$BIN/latentserve" "$OUT" <<'PY' || status=1
import json, subprocess, sys, random
import numpy as np
binary, out = sys.argv[1], sys.argv[2]
configs = [
  ("f32", "--weight-type f32 --qk-rope 32"),
  ("f16", "--layers 6 --hidden 128 --heads 4 --kda-head-dim 32 --kv-lora-rank 64 --qk-nope 32 --qk-rope 32 --v-head 32 --experts 16 --experts-used 4 --expert-ffn 64 --ffn 256 --mla-layers 2,5 --weight-type f16"),
  ("q8_0", "--layers 5 --hidden 256 --heads 8 --kda-head-dim 32 --kv-lora-rank 96 --qk-nope 32 --qk-rope 32 --v-head 32 --experts 32 --experts-used 4 --expert-ffn 64 --ffn 512 --mla-layers 1,4 --weight-type q8_0"),
  ("q4_0", "--layers 4 --hidden 128 --heads 4 --kda-head-dim 128 --kv-lora-rank 64 --qk-nope 32 --qk-rope 32 --v-head 64 --experts 8 --experts-used 4 --expert-ffn 64 --ffn 256 --mla-layers 1,3 --weight-type q4_0"),
  # Kimi-Linear's attention head shape (latent 512 + 64, no-position 128, value 128, KDA head
  # 128), small elsewhere: with 512-token chunks the 200- and 600-token prompts take the MHA
  # prefill (wgmma flash kernel), the chunked KDA, and decode the paged MLA kernel.
  ("f16_mla", "--layers 4 --hidden 256 --heads 16 --kda-head-dim 128 --kv-lora-rank 512 --qk-nope 128 --qk-rope 64 --v-head 128 --experts 16 --experts-used 4 --expert-ffn 64 --ffn 256 --mla-layers 1,3 --weight-type f16"),
]
chunk_of = {"f16_mla": "512"}
fail = False
rows = []
for name, flags in configs:
    path = f"/tmp/model_{name}.gguf"
    subprocess.run([binary, "make-test-model", "--out", path, "--seed", "5"] + flags.split(), check=True, capture_output=True)
    random.seed(1)
    # 40 tokens: one chunk of 9..64 columns, the batched-decode products (quant_mma.h).
    for n, cache in ((1, "f16"), (40, "f16"), (200, "f16"), (600, "q8_0")):
        toks = ",".join(str(random.randrange(264)) for _ in range(n))
        res = {}
        for backend in ("cpu", "cuda"):
            p = subprocess.run([binary, "logits", "--model", path, "--tokens", toks, "--chunk", chunk_of.get(name, "128"), "--greedy", "8",
                                "--cache-type", cache, "--backend", backend, "--threads", "8"], capture_output=True, text=True)
            if p.returncode != 0:
                print(name, backend, "failed:", p.stderr[-500:]); fail = True; break
            res[backend] = json.loads(p.stdout)
        if len(res) < 2: continue
        a, b = np.array(res["cuda"]["logits"]), np.array(res["cpu"]["logits"])
        nmse = ((a - b) ** 2).sum(1) / (b ** 2).sum(1)
        agree = (a.argmax(1) == b.argmax(1)).mean()
        greedy = res["cuda"]["greedy"] == res["cpu"]["greedy"]
        rows.append((name, n, cache, float(np.median(nmse)), float(nmse.max()), float(agree), greedy))
        # CUDA rounds prefill activations to 16 bits for 16-bit and quantised weights.
        # Prefill attention runs its GEMMs in f16 (queries, latent keys, probabilities).
        limit = 1e-4 if name == "f32" else 5e-2
        if np.median(nmse) > limit: fail = True
print(f"{'weights':8} {'tokens':>6} {'cache':6} {'median NMSE':>12} {'max NMSE':>10} {'top1':>6} greedy")
for r in rows: print(f"{r[0]:8} {r[1]:6d} {r[2]:6} {r[3]:12.3e} {r[4]:10.3e} {r[5]:6.3f} {r[6]}")
json.dump(rows, open(f"{out}/model_compare.json", "w"))
sys.exit(1 if fail else 0)
PY
echo "device_check status $status"
exit $status
