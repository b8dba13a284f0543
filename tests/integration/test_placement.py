#!/usr/bin/env python3
"""Placement against capacity and the lifetime of dead workers (issue 18, item 3).

Real router, prefill and decode processes on loopback. A prefill worker with a small cache
next to a default one: long prompts go to the one that holds them, and with only the small one
left the router answers FAILED_PRECONDITION naming --cache-tokens (a configuration problem, not
the client's). A dead worker is forgotten after --worker-evict-ms, in `client info` and in
/metrics. Run: test_placement.py --bin build/bin/latentserve
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_serving as ts  # noqa: E402
import test_security_metrics as tsm  # noqa: E402  (metrics_url, scrape)

SMALL_CACHE = 512
PROMPT = 900  # more than the small prefill worker's cache, well within the default one


class PrefillCapacity(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = ts.Cluster("placement", prefill=0, decode=1,
                                 router_flags=("--worker-evict-ms", "1000", "--metrics-listen", "127.0.0.1:0"))
        c = cls.cluster
        common = ["--router", c.router, "--model", ts.MODEL, "--chunk", ts.CHUNK, "--threads", ts.THREADS]
        c._start("prefill_small", ["prefill", "--listen", "127.0.0.1:0", "--cache-tokens", str(SMALL_CACHE), *common])
        c.big = c._start("prefill_big", ["prefill", "--listen", "127.0.0.1:0", *common])
        ts.wait_for(lambda: c.alive_count() == 3, 30, "both prefill workers to register")

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()

    def test_1_long_prompts_go_to_the_worker_whose_cache_holds_them(self):
        c = self.cluster
        runs = [c.generate(ts.prompt(PROMPT, salt=i), max_tokens=2, background=True) for i in range(3)]
        for proc in runs:
            stdout, _ = proc.communicate(timeout=120)
            result = ts.parse_result(stdout, proc.returncode)
            self.assertEqual(result["rc"], 0, result)
            self.assertEqual(result["prefill_worker"], c.big)
        short = c.generate(ts.prompt(16), max_tokens=2)
        self.assertEqual(short["rc"], 0, short)  # short prompts may use either
        c.assert_baseline(self)

    def test_2_without_a_large_enough_worker_the_configuration_is_named_and_the_dead_one_forgotten(self):
        c = self.cluster
        url = tsm.metrics_url(c, "router")
        self.assertIn(f'latentserve_router_worker_up{{worker="{c.big}",role="prefill"}}', tsm.scrape(url))
        c.kill("prefill_big")
        ts.wait_for(lambda: all(w["address"] != c.big for w in c.info()["workers"]), 30, "the dead worker's eviction")
        self.assertFalse([k for k in tsm.scrape(url) if c.big in k])  # its series went with it
        result = c.generate(ts.prompt(PROMPT), max_tokens=2)
        self.assertEqual(result["error"]["code"], "FAILED_PRECONDITION", result)
        self.assertIn(f"largest {SMALL_CACHE} tokens", result["error"]["message"])
        self.assertIn("--cache-tokens", result["error"]["message"])


class DecodePagesGrow(unittest.TestCase):
    """Pages for prompt + 256 tokens up front, the rest while decoding (--decode-pages grow, the
    default): four requests of 100 + 2000 tokens share a 2,304-token decode cache that held one
    at a time when max_tokens was reserved up front; as it fills, requests stop early with
    finish_reason length (counted, logged), and the last one runs to its max_tokens."""

    def test_concurrent_requests_share_the_cache_and_running_out_stops_one_early(self):
        c = ts.Cluster("grow", prefill=1, decode=1, worker_flags=("--cache-tokens", "2304", "--metrics-listen",
                                                                  "127.0.0.1:0"))
        try:
            runs = [c.generate(ts.prompt(100, salt=40 + i), max_tokens=2000, background=True) for i in range(4)]
            results = []
            for proc in runs:
                stdout, _ = proc.communicate(timeout=300)
                results.append(ts.parse_result(stdout, proc.returncode))
            for r in results:
                self.assertEqual(r["rc"], 0, r)
                self.assertEqual(r["finish_reason"], "length", r)
            lengths = sorted(r["usage"]["completion_tokens"] for r in results)
            # One sequence alone never runs out (100 + 2000 <= 2304): an early stop means the
            # requests decoded side by side in a cache that up-front reservation gave to one.
            self.assertLess(lengths[0], 2000, lengths)
            self.assertEqual(lengths[-1], 2000, lengths)  # the stopped ones' pages let the last finish
            counted = tsm.scrape(tsm.metrics_url(c, "decode0"))["latentserve_decode_cache_full_stops_total"]
            self.assertEqual(counted, sum(1 for n in lengths if n < 2000))
            with open(os.path.join(c.dir, "decode0.log")) as f:
                stops = [line for line in f if '"cache_full":true' in line]
            self.assertEqual(len(stops), sum(1 for n in lengths if n < 2000))
            self.assertTrue(all('"level":"warning"' in line for line in stops))
            c.assert_baseline(self)
        finally:
            c.stop()


def main():
    ts.run_suite("latentserve-placement-")

if __name__ == "__main__":
    main()
