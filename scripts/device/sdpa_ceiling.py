#!/usr/bin/env python3
"""Same-call ceiling for the MLA prefill kernel: PyTorch's fused attention on Kimi-Linear's
MHA-form shape (32 heads, q/k 192, v 128, bf16), cuDNN backend (the flash backend refuses
unequal head dims). Prints one JSON line per shape: ms and TFLOP/s (causal FLOPs counted as
the pairs a causal mask keeps). Run on the device: python3 scripts/device/sdpa_ceiling.py"""
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def bench(q_len, k_len, causal, backend, repeats=10):
    torch.manual_seed(0)
    q = torch.randn(1, 32, q_len, 192, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 32, k_len, 192, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, 32, k_len, 128, device="cuda", dtype=torch.bfloat16)
    with sdpa_kernel([backend]):
        for _ in range(2):
            F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    ms = sorted(times)[len(times) // 2]
    pairs = q_len * k_len / 2 if causal else q_len * k_len
    flops = 2.0 * 32 * pairs * (192 + 128)
    return ms, flops / (ms / 1e3) / 1e12


def main():
    shapes = [(32768, 32768, True), (8192, 131072, False), (8192, 1048576, False)]
    for q_len, k_len, causal in shapes:
        for name, backend in [("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
            try:
                ms, tflops = bench(q_len, k_len, causal, backend)
                print(json.dumps({"sdpa": name, "q": q_len, "k": k_len, "causal": causal, "ms": round(ms, 3),
                                  "TFLOPs": round(tflops, 1)}))
            except Exception as e:  # a backend that refuses the shape
                print(json.dumps({"sdpa": name, "q": q_len, "k": k_len, "causal": causal,
                                  "error": str(e).splitlines()[0][:200]}))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
