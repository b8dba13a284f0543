#!/usr/bin/env python3
"""Concurrent `latentserve client generate` streams against one router, and the aggregate decode
throughput of the window where every stream decodes (issue 10, criterion 3).

Each stream has its own random prompt (no shared prefix). With --warm (the default of
scripts/device_batched.sh) the prompts are first run once with one output token: the prefill
worker computes them one after another and the decode worker keeps each in its prefix cache.
The measured pass then sends every prompt plus --extra fresh tokens: the decode worker resumes
each from its kept prompt, prefills the few extra tokens itself, and all streams decode together
at their full context. Without the warm pass the prefill worker serialises the prompts, and
early streams finish before late ones start (the window may then be empty: said so).

Window: from the moment the last stream got its first token until the first stream got its
last token. Aggregate tok/s = tokens (of every stream) that arrived inside the window / its
length, on the client's clock (client generate --token-times). With --metrics, the decode
worker's own counters give the mean batch of a step in the window (tokens / steps).
Writes DIR/streams.json; prints a few lines and, last, one JSON line."""
import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.request


def write_prompt(path, ids):
    with open(path, "w") as f:
        f.write(",".join(map(str, ids)))


def run_streams(args, prompts, max_tokens, tag):
    """Starts one client per prompt at once; returns their summaries (None for a failure)."""
    procs = []
    for i, ids in enumerate(prompts):
        prompt_file = os.path.join(args.prompt_dir or args.dir, f"{tag}_prompt{i}.txt")
        write_prompt(prompt_file, ids)
        summary = os.path.join(args.dir, f"{tag}_summary{i}.json")
        if os.path.exists(summary):
            os.remove(summary)
        cmd = [args.bin, "client", "generate", "--target", args.target, "--prompt-tokens-file", prompt_file,
               "--max-tokens", str(max_tokens), "--ignore-eos", "--temperature", "0", "--json", "--token-times",
               "--summary-file", summary]
        log = open(os.path.join(args.dir, f"{tag}_client{i}.log"), "w")
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), summary, log))
    results = []
    for proc, summary, log in procs:
        rc = proc.wait()
        log.close()
        if rc != 0 or not os.path.exists(summary):
            # The log's last lines say why (the lent machine's logs do not outlive the call).
            with open(log.name, errors="replace") as f:
                tail = " | ".join(line.strip() for line in f.readlines()[-3:])
            print(f"{tag}: a client failed (rc {rc}); {log.name} ends: {tail[-600:]}", file=sys.stderr)
            results.append(None)
            continue
        with open(summary) as f:
            results.append(json.load(f))
    return results


class MetricsSampler:
    """Samples the decode worker's step and token counters every `period` seconds."""

    def __init__(self, url, period=0.05):
        self.url, self.period, self.samples = url, period, []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def scrape(self):
        with urllib.request.urlopen(self.url, timeout=2) as response:
            text = response.read().decode()
        values = {}
        for line in text.splitlines():
            if line.startswith("#") or not line:
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in ("latentserve_decode_steps_total", "latentserve_decode_tokens_total",
                        "latentserve_decode_sequences_active"):
                values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return values

    def loop(self):
        while not self.stop_event.is_set():
            try:
                values = self.scrape()
                self.samples.append((time.time() * 1e3, values))
            except OSError:
                pass
            self.stop_event.wait(self.period)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join()


def window_of(results):
    """Per-stream absolute token times (ms) and the all-decoding window."""
    streams = []
    for r in results:
        start = r["timing"]["client_start_unix_ms"]
        times = [start + t for t in r["token_times_ms"]]
        streams.append({"times": times, "start": start, "end": start + r["timing"]["client_end_ms"],
                        "ttft_ms": r["timing"]["client_first_token_ms"], "tokens": len(times),
                        "cached_tokens": r["usage"]["cached_tokens"], "prompt_tokens": r["usage"]["prompt_tokens"],
                        "server_decode_tok_s": r["timing"]["decode_tokens_per_s"]})
    t0 = max(s["times"][0] for s in streams)   # the last stream's first token
    t1 = min(s["times"][-1] for s in streams)  # the first stream's last token
    in_window = sum(sum(1 for t in s["times"] if t0 < t <= t1) for s in streams)
    for s in streams:
        span = s["times"][-1] - s["times"][0]
        s["decode_tok_s"] = (len(s["times"]) - 1) / span * 1e3 if span > 0 else 0.0
    return streams, t0, t1, in_window


def metrics_in(samples, t0, t1):
    inside = [(t, v) for t, v in samples if t0 <= t <= t1 and "latentserve_decode_steps_total" in v]
    if len(inside) < 2:
        return None
    (ta, a), (tb, b) = inside[0], inside[-1]
    steps = b["latentserve_decode_steps_total"] - a["latentserve_decode_steps_total"]
    tokens = b["latentserve_decode_tokens_total"] - a["latentserve_decode_tokens_total"]
    active = [v.get("latentserve_decode_sequences_active", 0) for _, v in inside]
    return {"steps": steps, "tokens": tokens, "ms": tb - ta, "mean_batch": tokens / steps if steps else 0.0,
            "steps_per_s": steps / (tb - ta) * 1e3 if tb > ta else 0.0, "sequences_active_min": min(active),
            "sequences_active_max": max(active)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", required=True, help="latentserve binary")
    p.add_argument("--target", required=True, help="router HOST:PORT")
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--prompt", type=int, default=32768, help="prompt tokens of each stream")
    p.add_argument("--answer", type=int, default=256, help="tokens generated by each stream")
    p.add_argument("--extra", type=int, default=16, help="fresh tokens after the kept prompt (warm pass)")
    p.add_argument("--vocab", type=int, required=True, help="random ids are drawn below this")
    p.add_argument("--no-warm", action="store_true", help="one cold pass (prefill and decode overlap)")
    p.add_argument("--metrics", default="", help="serve's /metrics URL (decode step counters)")
    p.add_argument("--dir", required=True, help="summaries and client logs go here")
    p.add_argument("--prompt-dir", default="", help="prompt files (default: --dir)")
    p.add_argument("--seed", type=int, default=11)
    args = p.parse_args()
    usage = subprocess.run([args.bin, "client", "--help"], capture_output=True, text=True).stdout
    if "--token-times" not in usage:
        print(f"{args.bin} has no `client generate --token-times` (added on branch batched-bench): rebuild it")
        return 2
    os.makedirs(args.dir, exist_ok=True)
    if args.prompt_dir:
        os.makedirs(args.prompt_dir, exist_ok=True)
    rng = random.Random(args.seed)
    # Ids from 16 up: the low ids of a test vocabulary are control tokens.
    prompts = [[rng.randrange(16, args.vocab) for _ in range(args.prompt)] for _ in range(args.streams)]
    out = {"streams": args.streams, "prompt": args.prompt, "answer": args.answer, "warm": not args.no_warm}
    if not args.no_warm:
        begin = time.time()
        cold = run_streams(args, prompts, 1, "warm")
        elapsed = time.time() - begin
        if any(r is None for r in cold):
            print(json.dumps({"error": "warm pass failed", **out}))
            return 1
        ttfts = sorted(r["timing"]["client_first_token_ms"] for r in cold)
        out["warm_pass"] = {"seconds": elapsed, "prefill_tok_s": args.streams * args.prompt / elapsed,
                            "ttft_ms_first": ttfts[0], "ttft_ms_last": ttfts[-1]}
        print(f"warm pass (prefill worker, {args.streams} x {args.prompt} tokens, one output token each): "
              f"{elapsed:.1f} s, {out['warm_pass']['prefill_tok_s']:.0f} prompt tok/s, "
              f"first token after {ttfts[0]:.0f} .. {ttfts[-1]:.0f} ms")
        prompts = [ids + [rng.randrange(16, args.vocab) for _ in range(args.extra)] for ids in prompts]
    with MetricsSampler(args.metrics) if args.metrics else contextlib.nullcontext() as sampler:
        results = run_streams(args, prompts, args.answer, "run")
    if any(r is None for r in results):
        print(json.dumps({"error": "a measured stream failed", **out}))
        return 1
    streams, t0, t1, in_window = window_of(results)
    out["per_stream"] = [{k: s[k] for k in ("ttft_ms", "tokens", "decode_tok_s", "server_decode_tok_s",
                                              "cached_tokens", "prompt_tokens")} for s in streams]
    total_tokens = sum(s["tokens"] for s in streams)
    span = max(s["times"][-1] for s in streams) - min(s["start"] for s in streams)
    out["all_tokens_tok_s"] = total_tokens / span * 1e3
    if t1 > t0:
        out["window"] = {"ms": t1 - t0, "tokens": in_window, "tok_s": in_window / (t1 - t0) * 1e3}
    else:
        out["window"] = {"ms": t1 - t0, "tokens": 0, "tok_s": 0.0,
                         "why_empty": "a stream finished before the last one got its first token (raise --answer: ANSWER in device_batched.sh)"}
    if sampler:
        out["decode_worker"] = metrics_in(sampler.samples, t0, t1) if t1 > t0 else None
    with open(os.path.join(args.dir, "streams.json"), "w") as f:
        json.dump(out, f, indent=1)
    ttft = sorted(s["ttft_ms"] for s in streams)
    rates = sorted(s["decode_tok_s"] for s in streams)
    cached = sorted(s["cached_tokens"] for s in streams)
    print(f"measured pass: {args.streams} streams, prompts of {streams[0]['prompt_tokens']} tokens "
          f"(cached {cached[0]} .. {cached[-1]}), {args.answer} tokens each")
    print(f"  time to first token {ttft[0]:.0f} .. {ttft[-1]:.0f} ms; per-stream decode {rates[0]:.1f} .. "
          f"{rates[-1]:.1f} tok/s (median {rates[len(rates) // 2]:.1f})")
    if out["warm"] and cached[0] < args.prompt:
        print(f"  WARNING: a stream resumed only {cached[0]} of its {args.prompt} warm tokens from the prefix cache "
              f"(evicted?): its prompt was prefilled again while others decoded")
    w = out["window"]
    if w["tokens"]:
        print(f"  all {args.streams} decoding for {w['ms']:.0f} ms: {w['tokens']} tokens, {w['tok_s']:.1f} tok/s aggregate")
    else:
        print(f"  no window: {w['why_empty']}; all tokens over the whole pass: {out['all_tokens_tok_s']:.1f} tok/s")
    dw = out.get("decode_worker")
    if dw:
        print(f"  decode worker in the window: {dw['steps']:.0f} steps, {dw['tokens']:.0f} tokens, mean batch "
              f"{dw['mean_batch']:.2f}, {dw['steps_per_s']:.1f} steps/s, sequences_active "
              f"{dw['sequences_active_min']:.0f}..{dw['sequences_active_max']:.0f}")
    elif args.metrics:
        print("  decode worker: too few metric samples inside the window")
    print(json.dumps({k: v for k, v in out.items() if k != "per_stream"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
