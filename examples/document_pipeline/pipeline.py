#!/usr/bin/env python3
"""Answers questions about a folder of documents with latentserve, as JSON lines.

Every document is asked every question (one chat request each: the document as context,
then the question), at most --concurrency requests at a time. A request refused with
UNAVAILABLE or RESOURCE_EXHAUSTED (no workers yet, no decode capacity, the per-client stream
limit) is retried with exponential backoff and jitter; other errors are written as error
lines. Progress (documents done, questions, prompt tokens prefilled) goes to stderr, one
summary JSON object to stdout at the end.

    pipeline.py --target 127.0.0.1:50051 --docs docs/ --questions questions.txt --out answers.jsonl

Needs the Python SDK (sdk/python). Exit status: 0 when every question was answered.
"""
import argparse
import asyncio
import json
import os
import random
import sys
import time

import latentserve


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, help="router or serve address, HOST:PORT")
    p.add_argument("--docs", required=True, help="folder of documents (*.txt, *.md)")
    p.add_argument("--questions", required=True, help="file with one question per line, asked of every document")
    p.add_argument("--out", required=True, help="JSON lines output, one answer per line")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at most")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--retries", type=int, default=6, help="retries of a retryable failure")
    p.add_argument("--backoff", type=float, default=0.2, help="first retry delay in seconds (doubles)")
    p.add_argument("--timeout", type=float, default=600, help="deadline of one request in seconds")
    p.add_argument("--max-document-bytes", type=int, default=4 << 20)
    p.add_argument("--token", default=None, help="bearer token (needs TLS)")
    p.add_argument("--ca", default=None, help="PEM roots: use TLS")
    args = p.parse_args(argv)
    if args.concurrency < 1 or args.retries < 0 or args.max_tokens < 1:
        p.error("--concurrency and --max-tokens must be >= 1, --retries >= 0")
    return args


def load_documents(folder, max_bytes):
    docs = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isfile(path) or not name.endswith((".txt", ".md")):
            continue
        if os.path.getsize(path) > max_bytes:
            raise SystemExit(f"{path} is larger than --max-document-bytes ({max_bytes})")
        with open(path, encoding="utf-8", errors="replace") as f:
            docs.append((name, f.read()))
    if not docs:
        raise SystemExit(f"no .txt or .md documents in {folder}")
    return docs


def load_questions(path):
    with open(path, encoding="utf-8") as f:
        questions = [line.strip() for line in f if line.strip()]
    if not questions:
        raise SystemExit(f"no questions in {path}")
    return questions


class Progress:
    """Counts, redrawn on stderr (one line per update when stderr is not a terminal)."""

    def __init__(self, documents, per_document):
        self.documents, self.per_document = documents, per_document
        self.answered = {}  # document -> questions finished
        self.prompt_tokens = self.completion_tokens = self.retries = self.errors = 0
        self.tty = sys.stderr.isatty()

    def finished(self, document, usage=None):
        self.answered[document] = self.answered.get(document, 0) + 1
        if usage:
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens
        docs_done = sum(1 for n in self.answered.values() if n == self.per_document)
        questions = sum(self.answered.values())
        width = 20
        bar = "#" * (width * questions // (self.documents * self.per_document))
        line = (f"[{bar:<{width}}] documents {docs_done}/{self.documents}  questions {questions}/"
                f"{self.documents * self.per_document}  prompt tokens prefilled {self.prompt_tokens}  "
                f"retries {self.retries}")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)


async def ask(client, args, document, text, question, progress):
    """One answer line (a dict), after retries of retryable failures."""
    messages = [{"role": "system", "content": "Answer the question using only this document.\n\n" + text},
                {"role": "user", "content": question}]
    delay = args.backoff
    for attempt in range(1, args.retries + 2):
        try:
            answer = await client.chat(messages, max_tokens=args.max_tokens, timeout=args.timeout)
            return {"document": document, "question": question, "answer": answer.text,
                    "finish_reason": answer.finish_reason,
                    "usage": {"prompt_tokens": answer.usage.prompt_tokens,
                              "completion_tokens": answer.usage.completion_tokens,
                              "cached_tokens": 0},  # no prefix reuse in latentserve yet
                    "ttft_ms": round(answer.timings.ttft_ms, 3), "attempts": attempt,
                    "request_id": answer.request_id}
        except latentserve.LatentserveError as error:
            if not error.retryable or attempt > args.retries:
                return {"document": document, "question": question, "attempts": attempt,
                        "error": {"code": error.code.name, "message": error.details}}
            progress.retries += 1
            await asyncio.sleep(delay * (0.5 + random.random()))  # jitter: retries do not march in step
            delay = min(delay * 2, 10.0)


async def run(args):
    docs = load_documents(args.docs, args.max_document_bytes)
    questions = load_questions(args.questions)
    progress = Progress(len(docs), len(questions))
    gate = asyncio.Semaphore(args.concurrency)
    start = time.monotonic()
    tls = {"root_certificates": args.ca} if args.ca else {}
    async with latentserve.AsyncClient(args.target, token=args.token, **tls) as client:
        async def one(name, text, question):
            async with gate:
                line = await ask(client, args, name, text, question, progress)
            progress.errors += "error" in line
            progress.finished(name, None if "error" in line else
                              latentserve.Usage(line["usage"]["prompt_tokens"], line["usage"]["completion_tokens"]))
            return line
        tasks = [asyncio.create_task(one(name, text, q)) for name, text in docs for q in questions]
        tmp = args.out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as out:
            for task in asyncio.as_completed(tasks):
                out.write(json.dumps(await task, ensure_ascii=False) + "\n")
        os.replace(tmp, args.out)  # a complete file or none
    if progress.tty:
        print(file=sys.stderr)
    summary = {"documents": len(docs), "questions": len(docs) * len(questions),
               "answered": len(docs) * len(questions) - progress.errors, "errors": progress.errors,
               "retries": progress.retries, "prompt_tokens": progress.prompt_tokens,
               "completion_tokens": progress.completion_tokens, "cached_tokens": 0,
               "wall_s": round(time.monotonic() - start, 3), "out": args.out}
    print(json.dumps(summary))
    return 0 if progress.errors == 0 else 1


def main(argv=None):
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
