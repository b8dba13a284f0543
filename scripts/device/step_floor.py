#!/usr/bin/env python3
"""Byte floor of one batched decode step: the bytes a step of --streams tokens (one per
sequence, each at --context tokens) must move, over the device's copy bandwidth.

  weights   every tensor of the GGUF (sizes from its tensor table), except: routed experts
            (*_exps) count the experts the step touches, expected E * (1 - (1 - k/E)^S) of E
            per layer for S tokens picking k each (all E once S * k >= 4 E); the token
            embedding counts S rows
  latent    S * context * latent_bytes_per_token (MLA layers, cache type) read
  kda       S * kda_state_bytes read and written (recurrent state and conv tails)
The last two come from `latentserve plan --model` (--plan, its JSON): the engine's own layouts.
Bandwidth: --bandwidth B/s, or measured (--measure cuda: a 2 GiB PyTorch copy; cpu: one
thread's 256 MiB memcpy), counted as bytes read + written per second; when PyTorch is missing
on cuda, 4.2e12 (an H200's measured copy). Prints one JSON line."""
import argparse
import json
import os
import struct
import sys
import time

SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_tensor_table(path):
    """{name: bytes} of a GGUF's tensors (from offset differences, alignment padding included)
    and its metadata without the tokenizer arrays."""
    with open(path, "rb") as f:
        def rd(fmt):
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))

        def rstr():
            (n,) = rd("Q")
            return f.read(n).decode("utf-8", "replace")

        def rval(kind):
            if kind == 8:
                return rstr()
            if kind == 9:
                elem, n = rd("IQ")
                return [rval(elem) for _ in range(n)]
            return rd(SCALARS[kind])[0]

        if f.read(4) != b"GGUF":
            raise SystemExit(f"{path}: not a GGUF file")
        _, n_tensors, n_kv = rd("IQQ")
        meta = {}
        for _ in range(n_kv):
            key = rstr()
            (kind,) = rd("I")
            value = rval(kind)
            if not key.startswith("tokenizer."):
                meta[key] = value
        infos = []
        for _ in range(n_tensors):
            name = rstr()
            (dims,) = rd("I")
            rd("Q" * dims)
            _, offset = rd("IQ")
            infos.append((offset, name))
        align = int(meta.get("general.alignment", 32))
        data_start = (f.tell() + align - 1) // align * align
    end = os.path.getsize(path) - data_start
    infos.sort()
    sizes = {}
    for i, (offset, name) in enumerate(infos):
        sizes[name] = (infos[i + 1][0] if i + 1 < len(infos) else end) - offset
    return sizes, meta


def copy_bandwidth(where):
    if where == "cuda":
        try:
            import torch
        except ImportError:
            return 4.2e12, "assumed (no PyTorch): 4.2e12 B/s"
        n = 2 << 30
        x = torch.empty(n, dtype=torch.uint8, device="cuda")
        y = torch.empty_like(x)
        y.copy_(x)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        repeats = 10
        start.record()
        for _ in range(repeats):
            y.copy_(x)
        end.record()
        end.synchronize()
        return 2 * n * repeats / (start.elapsed_time(end) / 1e3), "measured: PyTorch copy of 2 GiB on the GPU"
    n = 256 << 20
    src, dst = bytearray(n), bytearray(n)
    dst[:] = src
    start = time.perf_counter()
    for _ in range(4):
        dst[:] = src
    return 2 * n * 4 / (time.perf_counter() - start), "measured: one CPU thread's memcpy of 256 MiB (a low bound)"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", required=True)
    p.add_argument("--plan", required=True, help="`latentserve plan --model GGUF --cache-type T` JSON file")
    p.add_argument("--streams", type=int, required=True)
    p.add_argument("--context", type=float, required=True, help="mean tokens in each sequence's cache")
    p.add_argument("--bandwidth", type=float, default=0.0, help="B/s; 0: measure")
    p.add_argument("--measure", choices=("cuda", "cpu"), default="cuda")
    args = p.parse_args()
    sizes, meta = read_tensor_table(args.gguf)
    with open(args.plan) as f:
        plan = json.load(f)
    arch = meta.get("general.architecture", "")
    n_experts = int(meta[f"{arch}.expert_count"])
    used = int(meta[f"{arch}.expert_used_count"])
    vocab = int(meta.get(f"{arch}.vocab_size", 0))
    s = args.streams
    if s * used >= 4 * n_experts:
        touched = float(n_experts)
    else:
        touched = n_experts * (1 - (1 - used / n_experts) ** s)
    experts_all = sum(b for name, b in sizes.items() if "_exps." in name)
    embed = sizes.get("token_embd.weight", 0)
    embed_rows = embed * min(s, vocab) / vocab if vocab else embed
    other = sum(sizes.values()) - experts_all - embed
    experts = experts_all * touched / n_experts
    latent = s * args.context * plan["latent_bytes_per_token"]
    kda = s * plan["kda_state_bytes"] * 2
    total = experts + embed_rows + other + latent + kda
    if args.bandwidth > 0:
        bandwidth, source = args.bandwidth, "given"
    else:
        bandwidth, source = copy_bandwidth(args.measure)
    step_s = total / bandwidth
    print(json.dumps({
        "streams": s, "context": args.context, "experts_touched_per_layer": touched, "n_experts": n_experts,
        "experts_used": used, "bytes": {"routed_experts": experts, "other_weights": other, "embedding_rows": embed_rows,
                                        "latent_read": latent, "kda_read_write": kda, "total": total},
        "bandwidth_bytes_per_s": bandwidth, "bandwidth_source": source, "step_ms": step_s * 1e3,
        "tok_s": s / step_s}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
