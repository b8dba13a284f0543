#!/usr/bin/env python3
"""Prefix reuse through real processes (issue 14): the exactness guard end to end.

A decode worker with a prefix cache (--prefix-cache-mib) keeps finished prompts and KDA
checkpoints; prompts sharing prefixes of random lengths with earlier ones (mid-page, at page
boundaries, at and between checkpoints, past several intervals) must give the greedy tokens of
a fresh single-process run (`latentserve logits --greedy`), in `serve` and in split mode, and
report usage.cached_tokens. Afterwards only the prefix cache holds pages.
Run: test_prefix_reuse.py --bin build/bin/latentserve
"""
import os
import random
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_serving as ts  # noqa: E402

PAGE = 32
INTERVAL = 48
LOCAL_MAX = 160
FLAGS = ("--page-tokens", str(PAGE), "--prefix-cache-mib", "512", "--checkpoint-interval", str(INTERVAL),
         "--local-prefill-max-tokens", str(LOCAL_MAX))


def decode_workers(cluster):
    return [w for w in cluster.info()["workers"] if w["role"] == "decode" and w["alive"]]


class Reuse:
    """The shared body: one document through a prefill worker, then prompts sharing its prefixes."""

    def run_exactness(self, cluster):
        rng = random.Random(1414)
        document = [rng.randrange(1, 300) for _ in range(260)]  # > LOCAL_MAX: the first goes through a prefill worker
        first = cluster.generate(document, max_tokens=6)
        self.assertEqual(first.get("error"), None, first)
        self.assertEqual(first["token_ids"], ts.reference_greedy(document, 6))
        self.assertEqual(first["usage"]["cached_tokens"], 0)
        # Shared lengths: mid-page, page boundaries, at / between checkpoints, the whole document.
        shared_lengths = [5, 31, 32, 47, 48, 64, 95, 96, 97, 150, 200, 259, 260, 260]
        shared_lengths += [rng.randrange(1, 261) for _ in range(6)]
        hits = 0
        for shared in shared_lengths:
            question = [rng.randrange(1, 300) for _ in range(rng.randrange(1, 30))]
            ids = document[:shared] + question
            r = cluster.generate(ids, max_tokens=6)
            with self.subTest(shared=shared):
                self.assertEqual(r.get("error"), None, r)
                self.assertEqual(r["token_ids"], ts.reference_greedy(ids, 6), f"shared {shared}: {r['usage']}")
                self.assertLessEqual(r["usage"]["cached_tokens"], min(shared, len(ids) - 1))
                if shared == 260:  # the document's end checkpoint
                    self.assertEqual(r["usage"]["cached_tokens"], 260, (r["usage"], decode_workers(cluster)))
            hits += r["usage"]["cached_tokens"] > 0
        self.assertGreaterEqual(hits, len(shared_lengths) // 2)
        # A document read alone with max_tokens 1 (Decode never runs) is kept too: a question then
        # resumes at its end.
        document2 = [rng.randrange(1, 300) for _ in range(200)]
        self.assertEqual(cluster.generate(document2, max_tokens=1)["token_ids"], ts.reference_greedy(document2, 1))
        ids = document2 + [7, 8, 9]
        r = cluster.generate(ids, max_tokens=6)
        self.assertEqual(r["usage"]["cached_tokens"], 200, r["usage"])
        self.assertEqual(r["token_ids"], ts.reference_greedy(ids, 6))

        def settled():
            workers = decode_workers(cluster)
            return workers and all(w["cache_pages_free"] + w["prefix_pages"] == w["cache_pages_total"] and
                                   w["leases_active"] == 0 and w["sequences_active"] == 0 for w in workers)
        ts.wait_for(settled, 15, "only the prefix cache to hold pages")
        w = decode_workers(cluster)[0]
        self.assertGreater(w["prefix_hits"], 0)
        self.assertGreater(w["prefix_checkpoints"], 0)


class ServeReuse(unittest.TestCase, Reuse):
    def test_serve(self):
        cluster = ts.Cluster("serve_reuse", serve=True, worker_flags=FLAGS)
        try:
            self.run_exactness(cluster)
        finally:
            cluster.stop()


class SplitReuse(unittest.TestCase, Reuse):
    def test_split(self):
        cluster = ts.Cluster("split_reuse", prefill=1, decode=1, worker_flags=FLAGS)
        try:
            self.run_exactness(cluster)
        finally:
            cluster.stop()


class PrefixAwarePlacement(unittest.TestCase):
    """Two decode workers: a prompt that extends one held in a worker's prefix cache goes to that
    worker (its polled prefix index), not to the one the load order would pick next."""

    def test_longest_prefix_wins(self):
        cluster = ts.Cluster("prefix_placement", prefill=1, decode=2, worker_flags=FLAGS)
        try:
            rng = random.Random(77)
            documents = [[rng.randrange(1, 300) for _ in range(256)] for _ in range(2)]
            for i, document in enumerate(documents):
                r = cluster.generate(document, max_tokens=2)
                self.assertEqual(r.get("error"), None, r)
            # Wait until both documents are in some worker's prefix cache and polled.
            ts.wait_for(lambda: sum(w["prefix_entries"] for w in decode_workers(cluster)) >= 2, 15,
                        "both documents kept")
            time.sleep(1.0)  # the router polls worker stats every 250 ms
            # Three questions in a row about each document: by load alone (fewest placed, then most
            # free cache) the second would go to the other worker, whose cache holds fewer pages.
            for i, document in enumerate(documents):
                for round_ in range(3):
                    ids = document + [rng.randrange(1, 300) for _ in range(5)]
                    r = cluster.generate(ids, max_tokens=2)
                    with self.subTest(document=i, round=round_):
                        self.assertEqual(r.get("error"), None, r)
                        # Without placement by prefix the least recently placed worker alternates,
                        # so every other question would land where its document is not.
                        self.assertGreaterEqual(r["usage"]["cached_tokens"], 224, r["usage"])
                        self.assertEqual(r["token_ids"], ts.reference_greedy(ids, 2))
        finally:
            cluster.stop()


if __name__ == "__main__":
    ts.main()
