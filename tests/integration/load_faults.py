#!/usr/bin/env python3
"""Load and fault suite: concurrent clients against router + 2 prefill + 2 decode workers on
loopback while workers are killed, restarted and a cache transfer stalls.

Bounded in requests and time. Clients mix prompt lengths, cancellations (after 2 tokens) and
tight deadlines. Faults, in order: one prefill worker stalls every transfer
(--fault-stall-transfer-ms, testing only) from the start; a decode worker is SIGKILLed and
restarted; a prefill worker is SIGKILLed. The report: requests sent / completed / failed by
status, requests that outlived their deadline (must be 0), p50/p99 TTFT and inter-token
latency of completed requests, and free pages / leases back to baseline on every live worker.

  load_faults.py --bin build-prod/bin/latentserve            # full run
  load_faults.py --bin build-prod/bin/latentserve --small    # the ctest version (< 60 s)
"""
import argparse
import collections
import json
import os
import random
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_serving as ts  # noqa: E402

# What a request may end with under these faults; anything else fails the suite.
EXPECTED = {"OK", "CANCELLED", "DEADLINE_EXCEEDED", "UNAVAILABLE", "RESOURCE_EXHAUSTED", "ABORTED"}
SLACK_S = 2.0  # client process start + exit on top of the deadline


def percentile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def run_request(cluster, rng, index, lengths):
    n = rng.choice(lengths)
    kind = rng.choices(["normal", "cancel", "deadline"], [0.7, 0.15, 0.15])[0]
    max_tokens = rng.choice([4, 8, 16, 32])
    timeout_ms = 30000 if kind != "deadline" else rng.choice([150, 300, 600])
    extra = ["--timeout-ms", str(timeout_ms)]
    if kind == "cancel":
        extra += ["--cancel-after-tokens", "2"]
    start = time.monotonic()
    try:
        r = cluster.generate(ts.prompt(n, salt=index), max_tokens=max_tokens, extra=extra,
                             timeout=timeout_ms / 1000 + 30)
    except Exception as e:  # noqa: BLE001  (a hung or crashed client is a result too)
        r = {"error": {"code": f"CLIENT:{type(e).__name__}"}}
    elapsed = time.monotonic() - start
    code = r["error"]["code"] if "error" in r else "OK"
    itl = None
    if code == "OK" and r["timing"]["decode_tokens_per_s"] > 0:
        itl = 1.0 / r["timing"]["decode_tokens_per_s"]
    return dict(kind=kind, prompt=n, code=code, elapsed=elapsed, hung=elapsed > timeout_ms / 1000 + SLACK_S,
                ttft=r["timing"]["ttft_ms"] / 1000 if code == "OK" else None, itl=itl)


def at_baseline(cluster):
    info = cluster.info()
    live = [w for w in info["workers"] if w["alive"]]
    ok = info["router_leases_active"] == 0 and all(
        w["cache_pages_free"] == w["cache_pages_total"] and w["leases_active"] == 0 and w["sequences_active"] == 0
        for w in live)
    return ok, info


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--small", action="store_true", help="the bounded ctest version")
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--stall-ms", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    clients = args.clients or (3 if args.small else 8)
    total = args.requests or (24 if args.small else 200)
    lengths = [16, 64, 256] if args.small else [16, 64, 256, 1024, 2048]

    import tempfile
    ts.BIN = os.path.abspath(args.bin)
    ts.WORK = tempfile.mkdtemp(prefix="latentserve-load-")
    ts.MODEL = os.path.join(ts.WORK, "model.gguf")
    subprocess.run([ts.BIN, "make-test-model", "--out", ts.MODEL, "--context", "65536", "--seed", "7"], check=True,
                   capture_output=True, timeout=120)
    wall = time.monotonic()
    cluster = ts.Cluster("load", prefill=1, decode=2, router_flags=["--lease-ttl-ms", "5000"])
    try:
        cluster.worker_flags = ["--fault-stall-transfer-ms", str(args.stall_ms)]
        cluster.add_worker("prefill", "prefill-stall")
        cluster.worker_flags = []
        ts.wait_for(lambda: cluster.alive_count() == 4, 30, "4 workers")

        results, lock = [], threading.Lock()
        next_index = iter(range(total))
        done_count = [0]

        def client_loop(seed):
            rng = random.Random(seed)
            for index in next_index:
                r = run_request(cluster, rng, index, lengths)
                with lock:
                    results.append(r)
                    done_count[0] += 1

        events = []

        def faults():
            def at(fraction):
                ts.wait_for(lambda: done_count[0] >= int(total * fraction), 600, f"{fraction:.0%} of requests")
            at(0.2)
            events.append((time.monotonic() - wall, "SIGKILL decode1"))
            cluster.kill("decode1")
            at(0.35)
            cluster.add_worker("decode", "decode1-restarted")
            events.append((time.monotonic() - wall, "restarted decode1 (new port)"))
            at(0.5)
            events.append((time.monotonic() - wall, "SIGKILL prefill0 (prefill-stall remains)"))
            cluster.kill("prefill0")

        threads = [threading.Thread(target=client_loop, args=(args.seed * 100 + i,)) for i in range(clients)]
        fault_thread = threading.Thread(target=faults)
        for t in threads + [fault_thread]:
            t.start()
        for t in threads + [fault_thread]:
            t.join()

        try:
            ts.wait_for(lambda: at_baseline(cluster)[0], 15, "pages and leases back to baseline")
            baseline_ok = True
        except AssertionError:
            baseline_ok = False
        _, info = at_baseline(cluster)
        codes = collections.Counter(r["code"] for r in results)
        ttft = [r["ttft"] for r in results if r["ttft"] is not None]
        itl = [r["itl"] for r in results if r["itl"] is not None]
        hung = [r for r in results if r["hung"]]
        report = {
            "clients": clients, "requests_sent": len(results), "completed_ok": codes.get("OK", 0),
            "by_status": dict(sorted(codes.items())),
            "by_kind": dict(collections.Counter(f'{r["kind"]}:{r["code"]}' for r in results)),
            "hung_past_deadline": len(hung),
            "ttft_ms": {"p50": round(percentile(ttft, 0.5) * 1e3, 1), "p99": round(percentile(ttft, 0.99) * 1e3, 1)},
            "inter_token_ms": {"p50": round(percentile(itl, 0.5) * 1e3, 3),
                               "p99": round(percentile(itl, 0.99) * 1e3, 3)},
            "faults": [f"{t:.1f}s {what}" for t, what in events],
            "baseline_ok": baseline_ok,
            "live_workers": [{k: w[k] for k in ("address", "role", "cache_pages_free", "cache_pages_total",
                                                "leases_active", "sequences_active")}
                             for w in info["workers"] if w["alive"]],
            "router_leases_active": info["router_leases_active"],
            "wall_s": round(time.monotonic() - wall, 1),
        }
        print(json.dumps(report, indent=1))
        unexpected = set(codes) - EXPECTED
        ok = baseline_ok and not hung and not unexpected and codes.get("OK", 0) > 0
        if unexpected:
            print("unexpected statuses:", unexpected, file=sys.stderr)
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        cluster.stop()
        if not os.environ.get("KEEP_WORK"):
            import shutil
            shutil.rmtree(ts.WORK, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
