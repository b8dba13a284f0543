#!/usr/bin/env python3
"""A long rest after a cached prefix, through a prefill worker that reads the prefix (issue 14).

Split mode (router + prefill + decode processes on loopback). A decode worker keeps finished
prompts (--prefix-cache-mib); a later prompt whose uncached rest is longer than
--local-prefill-max-tokens goes through the prefill worker, which reads the cached prefix from
the decode worker (DecodeWorker.ReadPrefix), computes only the rest and hands off only its rows.
Greedy tokens must equal a fresh single-process run (`latentserve logits --greedy`), and
usage.cached_tokens reports the prefix read. Prefix lengths: mid-page, at page boundaries, at
and between checkpoints, longer than the checkpoint interval, random. Faults: a prefill worker
that may not read (--prefix-read-max-mib 0) and a prefix evicted before the request computes
the whole prompt with the same answer. Afterwards leases and sequences are gone and only the
prefix cache holds pages; after a session closes, nothing does.
Run: test_prefix_resume.py --bin build/bin/latentserve
"""
import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_serving as ts  # noqa: E402
import test_sessions as sessions  # noqa: E402

PAGE = 32
INTERVAL = 48
LOCAL_MAX = 40
FLAGS = ("--page-tokens", str(PAGE), "--prefix-cache-mib", "512", "--checkpoint-interval", str(INTERVAL),
         "--local-prefill-max-tokens", str(LOCAL_MAX))


def decode_workers(cluster):
    return [w for w in cluster.info()["workers"] if w["role"] == "decode" and w["alive"]]


def settled_with_prefixes(cluster):
    def settled():
        workers = decode_workers(cluster)
        return workers and all(w["cache_pages_free"] + w["prefix_pages"] == w["cache_pages_total"] and
                               w["leases_active"] == 0 and w["sequences_active"] == 0 for w in workers)
    ts.wait_for(settled, 15, "only the prefix cache to hold pages")


def expected_resume(shared, prompt_len, ends):
    """The furthest checkpoint at or before the shared prefix, never at the prompt's last token:
    every INTERVAL multiple inside a kept prompt (handed off or prefilled here), or a kept prompt's end."""
    limit = min(shared, prompt_len - 1)
    return max([end for end in ends if end <= limit] + [limit // INTERVAL * INTERVAL])


def long_question(rng):
    return [rng.randrange(1, 300) for _ in range(rng.randrange(LOCAL_MAX + 20, LOCAL_MAX + 110))]


class LongRest(unittest.TestCase):
    def check(self, cluster, ids, cached, what):
        r = cluster.generate(ids, max_tokens=6)
        with self.subTest(what=what):
            self.assertEqual(r.get("error"), None, r)
            self.assertEqual(r["token_ids"], ts.reference_greedy(ids, 6), f"{what}: {r['usage']}")
            if cached is not None:
                self.assertEqual(r["usage"]["cached_tokens"], cached, f"{what}: {r['usage']}")
        return r

    def test_documents_then_long_questions(self):
        cluster = ts.Cluster("prefix_resume", prefill=1, decode=1, worker_flags=FLAGS)
        try:
            rng = random.Random(1416)
            # Document lengths: mid-page, page boundary, interval multiple, past several intervals, random.
            lengths = [77, 96, 144, 300] + [rng.randrange(LOCAL_MAX + 2, 400) for _ in range(3)]
            for length in lengths:
                document = [rng.randrange(1, 300) for _ in range(length)]
                first = cluster.generate(document, max_tokens=1)  # read alone: kept with its end checkpoint
                self.assertEqual(first["token_ids"], ts.reference_greedy(document, 1), first)
                ids = document + long_question(rng)
                self.check(cluster, ids, length, f"document {length} + long question")
                # Sharing less than the document: it resumes at the last interval checkpoint the
                # handoff brought at or before the cut (none before the first interval).
                cut = rng.randrange(1, length)
                partial = document[:cut] + long_question(rng)
                self.check(cluster, partial, expected_resume(cut, len(partial), [length]), f"{cut} of document {length}")
                # A prompt extending the previous one (document + question) resumes at its end,
                # and one stopping between its checkpoints resumes at the earlier one.
                extended = ids + long_question(rng)
                self.check(cluster, extended, len(ids), f"extension of {len(ids)}")
                between = extended[:len(ids) + 7] + long_question(rng)
                self.check(cluster, between, expected_resume(len(ids) + 7, len(between), [length, len(ids)]),
                           f"between checkpoints {len(ids)} and {len(extended)}")
            settled_with_prefixes(cluster)
            self.assertGreater(decode_workers(cluster)[0]["prefix_hits"], 0)
        finally:
            cluster.stop()

    def test_session_long_questions_then_baseline(self):
        cluster = ts.Cluster("prefix_resume_session", prefill=1, decode=1, worker_flags=FLAGS)
        try:
            rng = random.Random(1417)
            document = [rng.randrange(1, 300) for _ in range(250)]
            created = sessions.create(cluster, document, "--pinned")
            self.assertEqual(created.get("error"), None, created)
            session_id = created["session_id"]
            for i in range(3):
                question = long_question(rng)
                r = sessions.ask(cluster, session_id, question)
                with self.subTest(question=i):
                    self.assertEqual(r.get("error"), None, r)
                    self.assertEqual(r["token_ids"], ts.reference_greedy(document + question, 6), r["usage"])
                    self.assertEqual(r["usage"]["cached_tokens"], len(document), r["usage"])
            closed = sessions.session(cluster, "close", "--session", session_id)
            self.assertEqual(closed.get("error"), None, closed)
            sessions.baseline_settled(cluster)
            # Fault: the prefix is gone (evicted with the session) although the router's view may
            # still place by it: the prompt is computed whole, same answer.
            ids = document + long_question(rng)
            self.check(cluster, ids, 0, "document evicted before the request")
        finally:
            cluster.stop()

    def test_serve_reads_over_loopback(self):
        # `serve`: the prefill side reads the prefix from its own process's decode service.
        cluster = ts.Cluster("prefix_resume_serve", serve=True, worker_flags=FLAGS)
        try:
            rng = random.Random(1419)
            document = [rng.randrange(1, 300) for _ in range(130)]
            self.assertEqual(cluster.generate(document, max_tokens=1)["token_ids"], ts.reference_greedy(document, 1))
            self.check(cluster, document + long_question(rng), len(document), "serve: document + long question")
            settled_with_prefixes(cluster)
        finally:
            cluster.stop()

    def test_read_refused_falls_back(self):
        cluster = ts.Cluster("prefix_resume_refused", prefill=0, decode=1, worker_flags=FLAGS)
        try:
            # The only prefill worker may not read prefixes.
            cluster._start("prefill1", ["prefill", "--listen", "127.0.0.1:0", "--router", cluster.router,
                                        "--model", ts.MODEL, "--chunk", ts.CHUNK, "--threads", ts.THREADS, *FLAGS,
                                        "--prefix-read-max-mib", "0"])
            ts.wait_for(lambda: any(w["role"] == "prefill" and w["alive"] and
                                    w["address"] == cluster.procs["prefill1"].address
                                    for w in cluster.info()["workers"]), 30, "the prefill worker to register")
            rng = random.Random(1418)
            document = [rng.randrange(1, 300) for _ in range(180)]
            self.assertEqual(cluster.generate(document, max_tokens=1)["token_ids"], ts.reference_greedy(document, 1))
            for i in range(2):
                # The decode worker still resumes its own pages; the prefill worker computes all of it.
                self.check(cluster, document + long_question(rng), 0, f"read refused {i}")
            settled_with_prefixes(cluster)
        finally:
            cluster.stop()


if __name__ == "__main__":
    ts.main()
