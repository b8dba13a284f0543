#!/usr/bin/env python3
"""Document sessions through real processes (issue 14): CreateSession prefills a document once
and pins it on a decode worker; questions through the session (sequentially and in parallel)
give the greedy tokens of the same prompts asked one by one without a session, resume the whole
document (usage.cached_tokens), and the document's pages are held once. After close, expiry
and a decode worker's death mid-session, pages and checkpoints return to baseline.
Run: test_sessions.py --bin build/bin/latentserve
"""
import os
import random
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_serving as ts  # noqa: E402

PAGE = 32
FLAGS = ("--page-tokens", str(PAGE), "--prefix-cache-mib", "256", "--local-prefill-max-tokens", "64")


def decode_workers(cluster):
    return [w for w in cluster.info()["workers"] if w["role"] == "decode" and w["alive"]]


def session(cluster, verb, *args):
    done = subprocess.run([ts.BIN, "client", "session", verb, "--target", cluster.router, *args],
                          capture_output=True, text=True, timeout=120)
    return ts.parse_result(done.stdout, done.returncode)


def create(cluster, ids, *flags):
    path = os.path.join(cluster.dir, f"doc_{time.monotonic_ns()}.txt")
    with open(path, "w") as f:
        f.write(ts.ids_arg(ids))
    return session(cluster, "create", "--prompt-tokens-file", path, *flags)


def ask(cluster, session_id, suffix, max_tokens=6):
    return cluster.generate(suffix, max_tokens=max_tokens, extra=("--session", session_id))


def baseline_settled(cluster):
    def settled():
        workers = decode_workers(cluster)
        return workers and all(w["cache_pages_free"] == w["cache_pages_total"] and w["prefix_pages"] == 0 and
                               w["prefix_checkpoints"] == 0 and w["leases_active"] == 0 and
                               w["sequences_active"] == 0 for w in workers)
    ts.wait_for(settled, 15, "pages and checkpoints back to baseline")


class Sessions(unittest.TestCase):
    def test_questions_sequential_and_parallel(self):
        cluster = ts.Cluster("sessions", prefill=1, decode=1, worker_flags=FLAGS)
        try:
            rng = random.Random(1415)
            document = [rng.randrange(1, 300) for _ in range(300)]  # > local max: through the prefill worker
            created = create(cluster, document, "--pinned")
            self.assertEqual(created.get("error"), None, created)
            self.assertEqual(created["document_tokens"], 300)
            sid = created["session_id"]
            self.assertTrue(sid.startswith("sess-") and len(sid) == 5 + 32, sid)
            questions = [[rng.randrange(1, 300) for _ in range(rng.randrange(1, 12))] for _ in range(10)]
            expected = [ts.reference_greedy(document + q, 6) for q in questions]
            for q, want in zip(questions, expected):
                r = ask(cluster, sid, q)
                self.assertEqual(r.get("error"), None, r)
                self.assertEqual(r["token_ids"], want)
                self.assertEqual(r["usage"]["cached_tokens"], 300, r["usage"])
            procs = [cluster.generate(q, max_tokens=6, extra=("--session", sid), background=True) for q in questions]
            for proc, want in zip(procs, expected):
                out, _ = proc.communicate(timeout=120)
                r = ts.parse_result(out, proc.returncode)
                self.assertEqual(r["token_ids"], want)
                self.assertEqual(r["usage"]["cached_tokens"], 300, r["usage"])
            # The document's pages once: ceil(300 / 32) pages, one entry, one checkpoint.
            w = decode_workers(cluster)[0]
            ts.wait_for(lambda: decode_workers(cluster)[0]["sequences_active"] == 0, 15, "questions to end")
            w = decode_workers(cluster)[0]
            self.assertEqual((w["prefix_pages"], w["prefix_entries"], w["prefix_pinned_entries"]), (10, 1, 1), w)
            listed = session(cluster, "list")["sessions"]
            self.assertEqual([s["session_id"] for s in listed], [sid])
            self.assertEqual(listed[0]["requests"], 20)
            self.assertEqual(session(cluster, "close", "--session", sid).get("closed"), sid)
            self.assertEqual(session(cluster, "close", "--session", sid)["error"]["code"], "NOT_FOUND")
            self.assertEqual(ask(cluster, sid, [1, 2])["error"]["code"], "NOT_FOUND")
            baseline_settled(cluster)
        finally:
            cluster.stop()

    def test_expiry(self):
        cluster = ts.Cluster("sessions_expiry", prefill=1, decode=1, worker_flags=FLAGS,
                             router_flags=("--session-idle-ms", "1500"))
        try:
            created = create(cluster, list(range(1, 101)), "--pinned")
            self.assertEqual(created.get("error"), None, created)
            ts.wait_for(lambda: decode_workers(cluster)[0]["prefix_pinned_entries"] == 1, 10, "the pin")
            baseline_settled(cluster)  # the idle timeout ends it and the worker drops the document
            self.assertEqual(session(cluster, "list")["sessions"], [])
        finally:
            cluster.stop()

    def test_worker_lost_mid_session(self):
        cluster = ts.Cluster("sessions_lost", prefill=1, decode=2, worker_flags=FLAGS)
        try:
            rng = random.Random(7)
            document = [rng.randrange(1, 300) for _ in range(200)]
            created = create(cluster, document, "--pinned")
            self.assertEqual(created.get("error"), None, created)
            sid, first = created["session_id"], created["decode_worker"]
            cluster.kill(cluster.name_of(first))
            q = [5, 6, 7]
            ts.wait_for(lambda: len(decode_workers(cluster)) == 1, 30, "the router to see the worker gone")
            r = ask(cluster, sid, q)  # re-prefilled transparently from the router's tokens
            self.assertEqual(r.get("error"), None, r)
            self.assertEqual(r["token_ids"], ts.reference_greedy(document + q, 6))
            listed = session(cluster, "list")["sessions"][0]
            self.assertEqual(listed["reprefills"], 1)
            self.assertNotEqual(listed["decode_worker"], first)
            r = ask(cluster, sid, q)
            self.assertEqual(r["usage"]["cached_tokens"], 200, r["usage"])
            session(cluster, "close", "--session", sid)
            baseline_settled(cluster)
        finally:
            cluster.stop()


if __name__ == "__main__":
    ts.main()
