#!/usr/bin/env bash
# Issue 13, on a machine with two GPUs of one host (device kind nvidia-h200-x2): prefill on GPU
# 0, decode on GPU 1, router beside them; the cache handed over by each transport that exists:
#   1. the peer-to-peer ceiling of this pair, measured in the same run: a device-to-device
#      copy GPU 0 -> GPU 1 (PyTorch on the device; NCCL's send/recv would be the other one)
#   2. scripts/device_transports.sh with PREFILL_DEVICE=0 DECODE_DEVICE=1: a small model and the
#      full-size shape (random q4_0 weights, f16 cache) at 131,072 tokens (LONG=1: also
#      1,048,576), --transport grpc and --transport cuda-ipc (peer copies): same greedy tokens,
#      every chunk's checksum verified by the decode worker, bytes through the host and device
#      to device, transfer exposed after the last chunk as a share of TTFT; then the kill tests
#      (prefill / decode SIGKILLed mid-transfer: status, survivors' pages and leases)
#   3. NCCL: test_nccl_two_gpu (rank 0 on GPU 0, rank 1 on GPU 1, real NCCL: a cache handed
#      over twice, verified on arrival, the communicator reused), when the devpack carries it.
# NCCL_NVLS_ENABLE=0 in every process. Expects .devpack/ (a CUDA + serving build).
#   LONG=1 scripts/device_two_gpu.sh
set -uo pipefail
export LD_LIBRARY_PATH=$PWD/.devpack/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
if ((gpus < 2)); then
  echo "device_two_gpu: needs two GPUs of one host, this machine has ${gpus:-0} (device kind nvidia-h200-x2)" >&2
  exit 2
fi
nvidia-smi topo -m | tee "$OUT/topology.txt"
echo "== peer copy GPU 0 -> GPU 1 (the ceiling of a cuda-ipc handoff)"
python3 - <<'PY' | tee "$OUT/peer_bandwidth.txt"
import torch
src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda:0")
dst = torch.empty(1 << 30, dtype=torch.uint8, device="cuda:1")
print("peer access 0->1:", torch.cuda.can_device_access_peer(0, 1))
for _ in range(3): dst.copy_(src, non_blocking=True)
torch.cuda.synchronize(0); torch.cuda.synchronize(1)
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record(torch.cuda.current_stream(0))
for _ in range(10): dst.copy_(src, non_blocking=True)
end.record(torch.cuda.current_stream(0)); end.synchronize()
print(f"GPU0 -> GPU1 copy: {10 * (1 << 30) / (start.elapsed_time(end) / 1e3) / 1e9:.1f} GB/s")
PY
echo "== transports, prefill on GPU 0, decode on GPU 1"
PREFILL_DEVICE=0 DECODE_DEVICE=1 FULL=1 KILL=1 LONG=${LONG:-0} OUT="$OUT/transports" scripts/device_transports.sh
status=$?
echo "== NCCL between GPU 0 and GPU 1 (test_nccl_two_gpu)"
if [[ -x .devpack/bin/test_nccl_two_gpu ]]; then
  .devpack/bin/test_nccl_two_gpu 2>&1 | tee "$OUT/nccl_two_gpu.txt" | tail -3
  [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
else
  echo "test_nccl_two_gpu is not in .devpack/bin (a CUDA build makes it): not run"
fi
exit $status
