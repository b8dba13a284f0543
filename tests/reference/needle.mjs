#!/usr/bin/env node
// The needle model (docs/needle.md) checked outside our engine: llama.cpp (node-llama-cpp
// 3.22.1, CPU) loads the same GGUF, tokenises the same document and greedily answers the same
// question; both answers must be the fact's value, word for word, and llama.cpp must stop with
// EOS where we do. This shows the retrieval is a property of the weights, not of latentserve.
//
//   node needle.mjs --latentserve build/bin/latentserve [--threads 2] [--tokens 3000]
// Exit status: 0 passed, 1 a check failed, 2 a tool could not run.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { parseArgs, fail, argmax, loadLlama, denseLogits, vocabularySize } from "./common.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const USAGE = "usage: node needle.mjs --latentserve PATH [--threads N (2)] [--tokens N (3000)] [--keep]";
const args = parseArgs(process.argv.slice(2),
  { latentserve: "string", threads: "int", tokens: "int", keep: "bool" }, USAGE);
if (!args.latentserve) fail(`--latentserve is required\n${USAGE}`);
const threads = args.threads ?? 2;
const promptTokens = args.tokens ?? 3000;
const MAX_ANSWER = 12;

function run(cmd, argv) {
  const r = spawnSync(cmd, argv, { encoding: "utf8", maxBuffer: 1 << 28 });
  if (r.status !== 0) fail(`${cmd} ${argv.join(" ")} failed (${r.status}):\n${r.stderr}`);
  return r.stdout;
}

const work = fs.mkdtempSync(path.join(os.tmpdir(), "needle-ref-"));
const modelPath = path.join(work, "needle.gguf");
run(args.latentserve, ["make-test-model", "--preset", "needle", "--weight-type", "q4_0", "--out", modelPath]);

const llama = await loadLlama(threads);
const model = await llama.loadModel({ modelPath });
const nVocab = vocabularySize(model);
const eos = model.tokens.eos;
let failures = 0;
const check = (ok, message) => {
  console.log(`${ok ? "ok  " : "FAIL"} ${message}`);
  if (!ok) failures++;
};

// Depths near the start, the middle and the end of the document.
for (const [depth, seed] of [[0.05, 21], [0.5, 22], [0.95, 23]]) {
  const doc = JSON.parse(run("python3", [path.join(HERE, "..", "..", "scripts", "needle_text.py"),
    "--tokens", String(promptTokens), "--depth", String(depth), "--seed", String(seed)]));
  const promptFile = path.join(work, `prompt_${seed}.txt`);
  fs.writeFileSync(promptFile, doc.prompt);
  const where = `${doc.prompt_tokens} tokens, fact at token ${doc.needle_token}`;

  const tokens = model.tokenize(doc.prompt);
  const ours = JSON.parse(run(args.latentserve, ["tokenize", "--model", modelPath, "--text-file", promptFile])).token_ids;
  check(tokens.length === doc.prompt_tokens && tokens.every((t, i) => t === ours[i]),
    `${where}: llama.cpp's tokens equal ours (${tokens.length})`);

  // llama.cpp: greedy until EOS.
  const context = await model.createContext({ contextSize: tokens.length + MAX_ANSWER + 16,
    batchSize: tokens.length, threads: { ideal: threads, min: threads }, sequences: 1 });
  const sequence = context.getSequence();
  const logitsOf = (out) => denseLogits(out.next.logits, nVocab);
  let last = logitsOf((await sequence.controlledEvaluate(
    tokens.map((t, i) => (i + 1 === tokens.length ? [t, { generateNext: { logits: true } }] : t))))[tokens.length - 1]);
  const answer = [];
  let next = argmax(last);
  while (next !== eos && answer.length < MAX_ANSWER) {
    answer.push(next);
    last = logitsOf((await sequence.controlledEvaluate([[next, { generateNext: { logits: true } }]]))[0]);
    next = argmax(last);
  }
  await context.dispose();
  const llamaText = model.detokenize(answer);
  check(llamaText === doc.expected && next === eos,
    `${where}: llama.cpp answers ${JSON.stringify(llamaText)} then ${next === eos ? "EOS" : "no EOS"} ` +
    `(expected ${JSON.stringify(doc.expected)})`);

  // latentserve on the same file and text.
  const ourText = run(args.latentserve, ["generate", "--model", modelPath, "--prompt-file", promptFile,
    "--max-tokens", String(MAX_ANSWER), "--threads", String(threads)]).split("\n")[0];
  check(ourText === doc.expected, `${where}: latentserve answers ${JSON.stringify(ourText)}`);
}

await model.dispose();
await llama.dispose();
if (!args.keep) fs.rmSync(work, { recursive: true, force: true });
console.log(failures ? `${failures} check(s) failed` : "needle: llama.cpp and latentserve give the same right answer");
process.exit(failures ? 1 : 0);
