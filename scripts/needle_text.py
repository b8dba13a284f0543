#!/usr/bin/env python3
"""Documents for the needle model (docs/needle.md): readable filler with one fact hidden at a
chosen depth, then a question whose last token is the fact's key.

Every item written is one token of the needle vocabulary (a listed word with a leading space,
or one punctuation byte), so token positions are known here without a tokenizer; the tests
check that the server's count agrees.

  scripts/needle_text.py --tokens 32768 --depth 0.37 --seed 5 > prompt.json
JSON: prompt (text), expected (the right continuation), needle_token (index of the key),
document_tokens, prompt_tokens, name, digits, fact, question.
"""
import argparse
import json
import os
import random
import re
import sys

WORDS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "lib", "needle_words.inc")


def load_groups(path=WORDS_FILE):
    text = "\n".join(l for l in open(path, encoding="utf-8").read().splitlines() if not l.lstrip().startswith("//"))
    groups = {}
    for name, body in re.findall(r"NEEDLE_WORDS\((\w+),(.*?)\)", text, flags=re.S):
        groups[name] = re.findall(r'"([^"\\]*)"', body)
    return groups


def sentence(rng, g):
    w = lambda key: " " + rng.choice(g[key])
    form = rng.randrange(4)
    if form == 0:
        items = [w("kNeedleStarters"), w("kNeedleAdjectives"), w("kNeedleNouns"), w("kNeedleVerbs"), " the",
                 w("kNeedleNouns"), w("kNeedlePrepositions"), " the", w("kNeedleAdjectives"), w("kNeedleNouns")]
    elif form == 1:
        items = [w("kNeedleStarters"), w("kNeedleNouns"), w("kNeedleVerbs"), w("kNeedleAdverbs"),
                 w("kNeedlePrepositions"), " the", w("kNeedleNouns"), ",", " and", " the", w("kNeedleNouns"),
                 w("kNeedleVerbs"), " the", w("kNeedleNouns")]
    elif form == 2:
        items = [w("kNeedleStarters"), w("kNeedleAdjectives"), w("kNeedleNouns"), " was", w("kNeedleAdjectives"),
                 " when", " the", w("kNeedleNouns"), w("kNeedleVerbs"), " it"]
    else:
        items = [w("kNeedleStarters"), w("kNeedleNouns"), " of", " the", w("kNeedleNouns"), w("kNeedleVerbs"),
                 " a", w("kNeedleAdjectives"), w("kNeedleNouns"), w("kNeedleAdverbs")]
    return items + ["."]


def make(tokens, depth, seed, needle_at=None):
    g = load_groups()
    rng = random.Random(seed)
    name = rng.choice(g["kNeedleNames"])
    digits = rng.sample(g["kNeedleDigits"], 4)  # distinct: each digit is the key of the next
    answer = [" is"] + [" " + d for d in digits] + ["."]
    fact = [" The", " access", " code", " for", " the", " vault", " of", " " + name] + answer
    question = [" Question", ":", " what", " did", " the", " note", " say", " about", " the", " vault", "?",
                " Answer", ":", " The", " access", " code", " for", " the", " vault", " of", " " + name]
    filler_tokens = tokens - len(fact) - len(question)
    if filler_tokens < 0:
        sys.exit(f"needle_text: --tokens must be at least {len(fact) + len(question)}")
    filler = []
    while len(filler) < filler_tokens:
        filler += sentence(rng, g)
    filler = filler[:filler_tokens]
    if filler and filler[-1] != ".":
        filler[-1] = "."  # end on a sentence boundary before the question
    # Insert at the sentence boundary nearest the wanted depth (or exactly at needle_at).
    want = needle_at if needle_at is not None else int(depth * filler_tokens)
    want = max(0, min(filler_tokens, want if want >= 0 else filler_tokens))
    bounds = [0] + [i + 1 for i, t in enumerate(filler) if t == "."]
    at = want if needle_at is not None else min(bounds, key=lambda b: abs(b - want))
    document = filler[:at] + fact + filler[at:]
    items = document + question
    return {
        "prompt": "".join(items),
        "expected": "".join(answer),
        "needle_token": at + fact.index(" " + name),
        "document_tokens": len(document),
        "prompt_tokens": len(items),
        "name": name,
        "digits": digits,
        "fact": "".join(fact).strip(),
        "question": "".join(question).strip(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, required=True, help="prompt length in tokens")
    ap.add_argument("--depth", type=float, default=0.5, help="needle position as a fraction of the document")
    ap.add_argument("--needle-at", type=int, help="exact token index of the fact (-1: right before the question)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    json.dump(make(a.tokens, a.depth, a.seed, a.needle_at), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
