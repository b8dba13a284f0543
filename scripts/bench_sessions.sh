#!/usr/bin/env bash
# A document session, measured (docs/benchmarks-serving.md "Document questions through a
# session"): one needle document (DEMO_TOKENS, default 32768) becomes a pinned session through
# the public API (`client session create`: the router prefills it once), then 10 questions
# about it through `client session ask` (the question text is the suffix; the router prepends
# the document's kept token ids). Prints the document read, each question's TTFT,
# cached_tokens and answer, and questions 2-10's TTFT as a share of question 1's and of the
# document read; then lists and closes the session.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/needle_serve.sh
source scripts/lib/needle_serve.sh latentserve-sessions
python3 - "$LS" "$TARGET" "$WORK" <<'PY'
import json, subprocess, sys
ls, target, work = sys.argv[1:4]
d = json.load(open(f"{work}/needle.json"))
assert d["prompt"].endswith(d["question"])
document = d["prompt"][: len(d["prompt"]) - len(d["question"])].rstrip(" ")
open(f"{work}/document.txt", "w").write(document)
def client(*args):
    out = subprocess.run([ls, "client", *args, "--target", target], capture_output=True, text=True, check=True).stdout
    return json.loads([l for l in out.splitlines() if l.startswith("{")][-1])
created = client("session", "create", "--prompt-file", f"{work}/document.txt", "--pinned")
sid = created["session_id"]
print(f"session {sid}: document {created['document_tokens']} tokens, read (prefill) {created['prefill_ms']:.1f} ms")
rows = []
for i in range(10):
    # The suffix is text without BOS; one extra needle-vocabulary token per question.
    question = " the" * i + " " + d["question"]
    r = client("session", "ask", "--session", sid, "--prompt", question, "--max-tokens", "8", "--json", "--ignore-eos")
    rows.append(r)
    print(f"question {i + 1:2d}: ttft {r['timing']['ttft_ms']:8.1f} ms  cached_tokens {r['usage']['cached_tokens']:6d}  "
          f"prompt {r['usage']['prompt_tokens']}  answer {r['text'].strip()!r} "
          f"({'RIGHT' if r['text'].startswith(d['expected']) else 'WRONG'}: expected {d['expected']!r})")
listed = client("session", "list")["sessions"]
print("session list:", [(s["session_id"], s["requests"], s["reprefills"]) for s in listed])
client("session", "close", "--session", sid)
read = created["prefill_ms"]
first = rows[0]["timing"]["ttft_ms"]
later = [r["timing"]["ttft_ms"] for r in rows[1:]]
print(f"document read {read:.1f} ms; question 1 ttft {first:.1f} ms = {100 * first / read:.2f}% of the read; "
      f"questions 2-10: mean {sum(later) / len(later):.1f} ms, max {max(later):.1f} ms "
      f"= {100 * max(later) / first:.1f}% of question 1, {100 * max(later) / read:.2f}% of the read")
PY
