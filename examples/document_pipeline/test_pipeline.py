#!/usr/bin/env python3
"""The document pipeline end to end: 5 generated documents x 4 questions against a real
`serve` (per-client stream limit 2 while the pipeline runs 4 at once, so RESOURCE_EXHAUSTED
retries happen for real) -> 20 well-formed answer lines and a matching summary.

Run with a Python that has the SDK installed: test_pipeline.py --bin build/bin/latentserve
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

import latentserve

HERE = os.path.dirname(os.path.abspath(__file__))
WORDS = ("cache latent prefill decode router token worker page stream model layer expert attention state "
         "request answer question document chunk batch").split()


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    bin_path = parser.parse_args().bin
    with tempfile.TemporaryDirectory(prefix="latentserve-pipeline-") as work:
        model = os.path.join(work, "m.gguf")
        subprocess.run([bin_path, "make-test-model", "--out", model, "--context", "8192", "--seed", "7"], check=True,
                       capture_output=True, timeout=120)
        docs = os.path.join(work, "docs")
        os.makedirs(docs)
        rng = random.Random(16)
        for i in range(5):
            with open(os.path.join(docs, f"doc{i}.txt"), "w") as f:
                f.write(" ".join(rng.choice(WORDS) for _ in range(150 + 40 * i)))
        with open(os.path.join(docs, "notes.bin"), "w") as f:
            f.write("not a document")  # skipped: only .txt / .md
        questions = os.path.join(work, "questions.txt")
        with open(questions, "w") as f:
            f.write("What is this about?\nWho routes requests?\n\nWhat moves the cache?\nSummarise it.\n")
        port_file = os.path.join(work, "port")
        log = open(os.path.join(work, "serve.log"), "w")
        serve = subprocess.Popen([bin_path, "serve", "--listen", "127.0.0.1:0", "--port-file", port_file, "--model",
                                  model, "--threads", "1", "--chunk", "128", "--max-streams-per-client", "2"],
                                 stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: os.path.exists(port_file) or serve.poll() is not None, 60, "serve to listen")
            target = open(port_file).read().strip()
            out = os.path.join(work, "answers.jsonl")
            run = subprocess.run([sys.executable, os.path.join(HERE, "pipeline.py"), "--target", target, "--docs",
                                  docs, "--questions", questions, "--out", out, "--concurrency", "4",
                                  "--max-tokens", "16", "--backoff", "0.05", "--retries", "40"],
                                 capture_output=True, text=True, timeout=600)
            # Four questions at once against a limit of two: a question can lose the race several
            # times in a row on a loaded machine, so retries are generous (the delay caps at 10 s).
            errors = [line for line in open(out) if '"error"' in line] if os.path.exists(out) else []
            assert run.returncode == 0, f"pipeline failed ({run.returncode}):\n{run.stdout}\n{run.stderr}\n{errors}"
            assert "documents 5/5" in run.stderr and "questions 20/20" in run.stderr, run.stderr
            summary = json.loads(run.stdout.strip().splitlines()[-1])
            lines = [json.loads(line) for line in open(out)]
            assert len(lines) == 20, len(lines)
            pairs = {(line["document"], line["question"]) for line in lines}
            assert len(pairs) == 20 and {d for d, _ in pairs} == {f"doc{i}.txt" for i in range(5)}
            for line in lines:
                assert "error" not in line, line
                assert isinstance(line["answer"], str) and line["finish_reason"] in ("length", "stop_token")
                usage = line["usage"]
                assert usage["prompt_tokens"] > 150 and 1 <= usage["completion_tokens"] <= 16, line
                assert usage["cached_tokens"] == 0 and line["attempts"] >= 1 and line["request_id"]
            assert summary["documents"] == 5 and summary["questions"] == 20 and summary["answered"] == 20
            assert summary["prompt_tokens"] == sum(line["usage"]["prompt_tokens"] for line in lines)
            assert summary["retries"] == sum(line["attempts"] - 1 for line in lines) > 0, summary
            # An answer is the model's greedy answer to that document and question.
            sample = lines[7]
            text = open(os.path.join(docs, sample["document"])).read()
            with latentserve.Client(target) as client:
                direct = client.chat([{"role": "system",
                                       "content": "Answer the question using only this document.\n\n" + text},
                                      {"role": "user", "content": sample["question"]}], max_tokens=16)
            assert direct.text == sample["answer"] and direct.usage.prompt_tokens == sample["usage"]["prompt_tokens"]
            print(f"ok: {summary}")
        finally:
            serve.kill()
            serve.wait(10)


if __name__ == "__main__":
    main()
