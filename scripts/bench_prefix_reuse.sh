#!/usr/bin/env bash
# Prefix reuse, measured (docs/benchmarks-serving.md "Document questions"): one needle document
# (DEMO_TOKENS, default 32768) read once, then 10 questions about it through `serve` with a
# prefix cache. Read 0 is the document alone (max_tokens 1: what a session's creation does;
# the end-of-prompt checkpoint then sits at the document's end), then questions 1-10, each the
# document plus a question, resume there. Prints each TTFT, cached_tokens and answer, and the
# questions' TTFT as a share of the document read's.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/needle_serve.sh
source scripts/lib/needle_serve.sh latentserve-reuse
python3 - "$LS" "$TARGET" "$WORK" <<'PY'
import json, subprocess, sys
ls, target, work = sys.argv[1:4]
d = json.load(open(f"{work}/needle.json"))
assert d["prompt"].endswith(d["question"])
# The question field has no leading space: cut the document before the space, so that its last
# token (".") is also a token of every question prompt (a lone trailing " " would not be).
document = d["prompt"][: len(d["prompt"]) - len(d["question"])].rstrip(" ")
def ask(text, max_tokens):
    path = f"{work}/prompt.txt"
    open(path, "w").write(text)
    out = subprocess.run([ls, "client", "generate", "--target", target, "--prompt-file", path, "--max-tokens",
                          str(max_tokens), "--json", "--ignore-eos"], capture_output=True, text=True, check=True).stdout
    return json.loads([l for l in out.splitlines() if l.startswith("{")][-1])
read = ask(document, 1)
print(f"document read: ttft {read['timing']['ttft_ms']:9.1f} ms  prompt {read['usage']['prompt_tokens']}  "
      f"cached_tokens {read['usage']['cached_tokens']}")
rows = []
for i in range(10):
    # Each question is one token per item (needle vocabulary): the document's tokens stay a prefix.
    question = " the" * i + " " + d["question"]
    r = ask(document + question, 8)
    rows.append(r)
    print(f"question {i + 1:2d}: ttft {r['timing']['ttft_ms']:9.1f} ms  cached_tokens {r['usage']['cached_tokens']:6d}  "
          f"prompt {r['usage']['prompt_tokens']}  answer {r['text'].strip()!r} ({'RIGHT' if r['text'].startswith(d['expected']) else 'WRONG'}: expected {d['expected']!r})")
first = read["timing"]["ttft_ms"]
later = [r["timing"]["ttft_ms"] for r in rows]
print(f"document read {first:.1f} ms; questions 1-10: mean {sum(later) / len(later):.1f} ms, max {max(later):.1f} ms "
      f"= {100 * max(later) / first:.2f}% of the read")
PY
