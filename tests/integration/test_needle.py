#!/usr/bin/env python3
"""The needle model (docs/needle.md) through real processes on loopback: a readable document
with one fact, the question as text, and the answer must come back word for word.

`serve` with every cache type (f16, bf16, q8_0, q4_0) and the split deployment (router,
prefill, decode processes; the cache crosses gRPC), the fact from the first token to the last
page, documents of 1K to 64K tokens. Few long cases: CPU time grows with the square of the
length. Run: test_needle.py --bin build/bin/latentserve [unittest args].
"""
import json
import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_serving as ts  # noqa: E402  (the Cluster helper: processes, ports, baselines)

NEEDLE_TEXT = os.path.join(HERE, "..", "..", "scripts", "needle_text.py")
MODEL_4_LAYERS = None  # set in main(): KDA, MLA, KDA, MLA


def needle_prompt(tokens, depth=0.5, seed=1, needle_at=None):
    args = [sys.executable, NEEDLE_TEXT, "--tokens", str(tokens), "--depth", str(depth), "--seed", str(seed)]
    if needle_at is not None:
        args += ["--needle-at", str(needle_at)]
    return json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)


class NeedleCase(unittest.TestCase):
    def ask(self, cluster, doc, timeout=600):
        path = os.path.join(cluster.dir, f"prompt_{doc['prompt_tokens']}_{doc['needle_token']}.txt")
        with open(path, "w") as f:
            f.write(doc["prompt"])
        done = subprocess.run([ts.BIN, "client", "generate", "--target", cluster.router, "--prompt-file", path,
                               "--max-tokens", "12", "--json"], capture_output=True, text=True, timeout=timeout)
        result = ts.parse_result(done.stdout, done.returncode)
        where = f"{doc['prompt_tokens']} tokens, fact at token {doc['needle_token']}"
        self.assertEqual(result["rc"], 0, f"{where}: {done.stderr}")
        self.assertEqual(result["usage"]["prompt_tokens"], doc["prompt_tokens"],
                         "every word of the document should be one token of the needle vocabulary")
        self.assertEqual(result["text"], doc["expected"], where)
        self.assertEqual(result["finish_reason"], "stop_token", f"{where}: the model should end with EOS after '.'")
        return result


class ServeEveryCacheType(NeedleCase):
    # (cache type, [(prompt tokens, depth, needle_at)]): first token, last page, in between.
    CASES = [
        ("f16", [(1024, 0, 0), (16384, 0.43, None)]),
        ("bf16", [(4096, 0, -1), (2048, 0.7, None)]),
        ("q8_0", [(4096, 0.25, None), (1024, 0, -1)]),
        ("q4_0", [(1024, 0, 0), (8192, 0.9, None)]),
    ]

    def test_every_cache_type_every_depth(self):
        for cache_type, docs in self.CASES:
            ts.CHUNK = "2048"
            cluster = ts.Cluster(f"serve_{cache_type}", serve=True,
                                 worker_flags=["--cache-type", cache_type, "--cache-tokens", "20480"])
            try:
                for seed, (tokens, depth, needle_at) in enumerate(docs):
                    with self.subTest(cache=cache_type, tokens=tokens, depth=depth, needle_at=needle_at):
                        self.ask(cluster, needle_prompt(tokens, depth, seed + 3, needle_at))
                cluster.assert_baseline(self)
            finally:
                cluster.stop()


class SplitDeployment(NeedleCase):
    def test_split_q4_0_cache_and_64k_document(self):
        # The GPU's default chunk (8192) on the CPU: chunk boundaries inside a 64K document.
        ts.CHUNK = "8192"
        cluster = ts.Cluster("split_needle", prefill=1, decode=1,
                             worker_flags=["--cache-type", "q4_0", "--cache-tokens", "66560"])
        try:
            result = self.ask(cluster, needle_prompt(4096, 0.2, seed=11))
            self.assertGreater(result["usage"]["cache_bytes_transferred"], 0, "the cache should cross gRPC")
            self.ask(cluster, needle_prompt(65536, 0.61, seed=12), timeout=900)
            cluster.assert_baseline(self)
        finally:
            cluster.stop()

    def test_split_with_several_mla_and_kda_layers(self):
        # Layers KDA, MLA, KDA, MLA: the lookup is in layer 1, layer 3 is all zeros. Pages or
        # states of one layer handed over as another's would break the answer after its first
        # word (the first word comes from the prefill worker, the rest from the decode worker).
        ts.CHUNK = "1024"
        model, ts.MODEL = ts.MODEL, MODEL_4_LAYERS
        try:
            cluster = ts.Cluster("split_needle_4", prefill=1, decode=1,
                                 worker_flags=["--cache-type", "q8_0", "--cache-tokens", "8192"])
        finally:
            ts.MODEL = model
        try:
            self.ask(cluster, needle_prompt(6000, 0.35, seed=13))
            cluster.assert_baseline(self)
        finally:
            cluster.stop()


def main():
    def setup(args):
        global MODEL_4_LAYERS
        ts.THREADS = "2"
        MODEL_4_LAYERS = os.path.join(ts.WORK, "needle4.gguf")
        subprocess.run([ts.BIN, "make-test-model", "--preset", "needle", "--layers", "4", "--mla-layers", "1,3",
                        "--weight-type", "q8_0", "--out", MODEL_4_LAYERS], check=True, capture_output=True, timeout=120)
    ts.run_suite("latentserve-needle-", model_args=("--preset", "needle", "--weight-type", "q4_0"),
                 model_name="needle.gguf", setup=setup)

if __name__ == "__main__":
    main()
