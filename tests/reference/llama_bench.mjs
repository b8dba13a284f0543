#!/usr/bin/env node
// llama.cpp CPU throughput on a GGUF, for comparison with `latentserve` at the same thread
// count: prefill = P tokens evaluated in one batch, decode = G single-token steps after it.
// Token ids are random (seeded) so any vocabulary works. Prints one JSON object.
import { parseArgs, fail, loadLlama, vocabularySize, rng } from "./common.mjs";

const USAGE = `usage: node llama_bench.mjs --model M [--threads N (2)] [--prompt-tokens P (512)]
       [--gen-tokens G (64)] [--repetitions R (1)] [--seed S (1)] [--flash-attention auto|on|off]`;
const args = parseArgs(process.argv.slice(2), {
  model: "string", threads: "int", "prompt-tokens": "int", "gen-tokens": "int",
  repetitions: "int", seed: "int", "flash-attention": "string",
}, USAGE);
if (!args.model) fail(`--model is required\n${USAGE}`);
const threads = args.threads ?? 2;
const promptTokens = args["prompt-tokens"] ?? 512;
const genTokens = args["gen-tokens"] ?? 64;
const repetitions = args.repetitions ?? 1;
if (threads < 1 || promptTokens < 1 || genTokens < 0 || repetitions < 1) fail("bad sizes");


const llama = await loadLlama(threads);
const model = await llama.loadModel({ modelPath: args.model });
const nVocab = vocabularySize(model);
const random = rng(args.seed ?? 1);
const contextOptions = {
  contextSize: promptTokens + genTokens + 1,
  batchSize: promptTokens,
  threads: { ideal: threads, min: threads },
  sequences: 1,
};
if (args["flash-attention"] !== undefined && args["flash-attention"] !== "auto") {
  contextOptions.flashAttention = args["flash-attention"] === "on";
}
const context = await model.createContext(contextOptions);
const sequence = context.getSequence();

const now = () => Number(process.hrtime.bigint()) / 1e9;
const runs = [];
for (let rep = 0; rep < repetitions; rep++) {
  await sequence.clearHistory();
  const prompt = Array.from({ length: promptTokens }, () => Math.floor(random() * nVocab));
  const prefillStart = now();
  // Only the last position needs logits; this is what a server's prefill does.
  await sequence.controlledEvaluate(prompt.map((t, i) =>
    i + 1 === prompt.length ? [t, { generateNext: { token: true } }] : t));
  const prefillSeconds = now() - prefillStart;

  const decodeStart = now();
  for (let step = 0; step < genTokens; step++) {
    const token = Math.floor(random() * nVocab);
    await sequence.controlledEvaluate([[token, { generateNext: { token: true } }]]);
  }
  const decodeSeconds = now() - decodeStart;
  runs.push({ prefillSeconds, decodeSeconds });
}

// Best of the repetitions: the least disturbed by other work on the machine.
const prefillSeconds = Math.min(...runs.map((r) => r.prefillSeconds));
const decodeSeconds = Math.min(...runs.map((r) => r.decodeSeconds));
process.stdout.write(JSON.stringify({
  engine: "llama.cpp (node-llama-cpp 3.22.1, CPU)",
  threads,
  flash_attention: context.flashAttention,
  prompt_tokens: promptTokens,
  gen_tokens: genTokens,
  repetitions,
  prefill_seconds: prefillSeconds,
  prefill_tokens_per_s: promptTokens / prefillSeconds,
  decode_seconds: decodeSeconds,
  decode_tokens_per_s: genTokens > 0 ? genTokens / decodeSeconds : null,
}) + "\n");
await context.dispose();
await model.dispose();
await llama.dispose();
