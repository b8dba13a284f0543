#!/usr/bin/env python3
"""KDA checkpoints inside prompts that arrive by handoff (issue 14), through real processes.

Split mode (router + prefill + decode on loopback). A long document (several checkpoint
intervals) is read through the prefill worker, as a plain request and as a pinned session; the
decode worker asks for a checkpoint every --checkpoint-interval tokens, the prefill worker hands
off the KDA state there, and the decode worker keeps them with the document. Later prompts
sharing random prefixes of the document (at and between checkpoints, mid-page, at page
boundaries, past its end; short rests prefilled on the decode worker, long ones through the
prefill worker's prefix read) must report usage.cached_tokens = the largest checkpoint at or
before the shared prefix (never the prompt's last token) and give the greedy tokens of a fresh
single-process run. Afterwards only the prefix cache holds pages; after the session closes its
document's checkpoints are gone.
Run: test_handoff_checkpoints.py --bin build/bin/latentserve
"""
import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_serving as ts  # noqa: E402
import test_sessions as sessions  # noqa: E402

PAGE = 32
INTERVAL = 48  # not a multiple of the page: checkpoints fall mid-page
LOCAL_MAX = 40
DOCUMENT = 400  # > 8 intervals
FLAGS = ("--page-tokens", str(PAGE), "--prefix-cache-mib", "512", "--checkpoint-interval", str(INTERVAL),
         "--local-prefill-max-tokens", str(LOCAL_MAX))


def decode_worker(cluster):
    workers = [w for w in cluster.info()["workers"] if w["role"] == "decode" and w["alive"]]
    assert len(workers) == 1, workers
    return workers[0]


def settled_with_prefixes(cluster):
    def settled():
        w = decode_worker(cluster)
        return (w["cache_pages_free"] + w["prefix_pages"] == w["cache_pages_total"] and w["leases_active"] == 0 and
                w["sequences_active"] == 0)
    ts.wait_for(settled, 15, "only the prefix cache to hold pages")


def checkpoints_become(cluster, count, what):
    # The router's view of the worker is a poll old (250 ms): wait for it to show the count.
    ts.wait_for(lambda: decode_worker(cluster)["prefix_checkpoints"] == count, 15, what)


def expected_resume(shared, prompt_len, ends):
    """The furthest checkpoint at or before the shared prefix, never at the prompt's last token:
    every INTERVAL multiple inside the document (handed off), or a kept prompt's end."""
    limit = min(shared, prompt_len - 1)
    return max([end for end in ends if end <= limit] + [limit // INTERVAL * INTERVAL])


def interior(resumed, length):
    """Checkpoints a kept prompt of `length` tokens that resumed at `resumed` adds (and its end)."""
    return (length - 1) // INTERVAL - resumed // INTERVAL + 1


class HandoffCheckpoints(unittest.TestCase):
    def shared_lengths(self, rng):
        # At checkpoints, between them, mid-page, page boundaries, just before and past the end, random.
        fixed = [5, 47, 48, 64, 96, 100, 150, 200, 287, 288, DOCUMENT - 1, DOCUMENT]
        return fixed + [rng.randrange(1, DOCUMENT + 1) for _ in range(4)]

    def ask_prefixes(self, cluster, document, rng):
        """Prompts sharing prefixes of the document; returns what each kept prompt adds in checkpoints."""
        added = 0
        for i, shared in enumerate(self.shared_lengths(rng)):
            # Short rests are prefilled on the decode worker, long ones read the prefix on the prefill worker.
            rest = rng.randrange(3, LOCAL_MAX - 10) if i % 2 == 0 else rng.randrange(LOCAL_MAX + 10, LOCAL_MAX + 90)
            ids = document[:shared] + [rng.randrange(1, 300) for _ in range(rest)]
            cached = expected_resume(shared, len(ids), [len(document)])
            r = cluster.generate(ids, max_tokens=6)
            with self.subTest(shared=shared, rest=rest):
                self.assertEqual(r.get("error"), None, r)
                self.assertEqual(r["usage"]["cached_tokens"], cached, r["usage"])
                self.assertEqual(r["token_ids"], ts.reference_greedy(ids, 6), r["usage"])
            added += interior(cached, len(ids))
        return added

    def test_plain_document_then_partial_prefixes(self):
        cluster = ts.Cluster("handoff_checkpoints", prefill=1, decode=1, worker_flags=FLAGS)
        try:
            rng = random.Random(1420)
            document = [rng.randrange(1, 300) for _ in range(DOCUMENT)]
            first = cluster.generate(document, max_tokens=1)  # through the prefill worker: a handoff
            self.assertEqual(first.get("error"), None, first)
            self.assertEqual(first["token_ids"], ts.reference_greedy(document, 1), first)
            settled_with_prefixes(cluster)
            # Every interval inside the document and its end arrived with the handoff.
            checkpoints_become(cluster, interior(0, DOCUMENT), "every interval and the end of the document kept")
            added = self.ask_prefixes(cluster, document, rng)
            settled_with_prefixes(cluster)
            checkpoints_become(cluster, interior(0, DOCUMENT) + added, "the prompts' checkpoints kept too")
        finally:
            cluster.stop()

    def test_session_document_then_partial_prefixes_then_close(self):
        cluster = ts.Cluster("handoff_checkpoints_session", prefill=1, decode=1, worker_flags=FLAGS)
        try:
            rng = random.Random(1421)
            document = [rng.randrange(1, 300) for _ in range(DOCUMENT)]
            created = sessions.create(cluster, document, "--pinned")
            self.assertEqual(created.get("error"), None, created)
            session_id = created["session_id"]
            checkpoints_become(cluster, interior(0, DOCUMENT), "every interval and the end of the document kept")
            question = [rng.randrange(1, 300) for _ in range(20)]
            r = sessions.ask(cluster, session_id, question)
            self.assertEqual(r.get("error"), None, r)
            self.assertEqual(r["usage"]["cached_tokens"], DOCUMENT, r["usage"])
            self.assertEqual(r["token_ids"], ts.reference_greedy(document + question, 6), r["usage"])
            added = self.ask_prefixes(cluster, document, rng)
            closed = sessions.session(cluster, "close", "--session", session_id)
            self.assertEqual(closed.get("error"), None, closed)
            # The document's entry (its pages and every checkpoint it brought) goes with the session;
            # the plain prompts asked meanwhile stay kept with theirs.
            checkpoints_become(cluster, added, "the document's checkpoints to go with the session")
            settled_with_prefixes(cluster)
        finally:
            cluster.stop()


if __name__ == "__main__":
    ts.main()
