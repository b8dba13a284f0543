#!/usr/bin/env node
// Per-position logits and a greedy continuation from llama.cpp, in the output format of
// `latentserve logits` (same flags), so the two can be compared position by position:
//   {"logits": [[vocab floats] per prompt position], "greedy": [K token ids]}
// logits[i] is the next-token distribution after tokens[0..i]. The greedy continuation
// starts from the last prompt position's argmax and feeds each argmax back in.
import { parseArgs, fail, tokensFromArgs, loadLlama, argmax, denseLogits, jsonNumber, vocabularySize } from "./common.mjs";

const USAGE = `usage: node llama_logits.mjs --model M (--tokens "1,2,3" | --tokens-file F)
       [--threads N (2)] [--greedy K (0)] [--ctx N] [--batch N] [--flash-attention auto|on|off]
       [--cache-type f16|f32|q8_0|q4_0]`;

const args = parseArgs(process.argv.slice(2), {
  model: "string", tokens: "string", "tokens-file": "string", threads: "int", greedy: "int",
  ctx: "int", batch: "int", "flash-attention": "string", "cache-type": "string",
}, USAGE);
if (!args.model) fail(`--model is required\n${USAGE}`);
const tokens = tokensFromArgs(args);
if (tokens.length === 0) fail("need at least one token");
const threads = args.threads ?? 2;
const greedy = args.greedy ?? 0;
if (threads < 1 || greedy < 0) fail("--threads must be >= 1 and --greedy >= 0");

const llama = await loadLlama(threads);
const model = await llama.loadModel({ modelPath: args.model });
const nVocab = vocabularySize(model);
for (const t of tokens) {
  if (!(t >= 0 && t < nVocab)) fail(`token id ${t} out of range [0, ${nVocab})`);
}

const needed = tokens.length + greedy;
const contextOptions = {
  contextSize: Math.max(args.ctx ?? 0, needed),
  // One batch for the whole prompt unless --batch asks for llama.cpp to split it.
  batchSize: args.batch ?? tokens.length,
  threads: { ideal: threads, min: threads },
  sequences: 1,
};
if (args["flash-attention"] !== undefined && args["flash-attention"] !== "auto") {
  contextOptions.flashAttention = args["flash-attention"] === "on";
}
if (args["cache-type"] !== undefined) {
  const type = args["cache-type"].toUpperCase();
  contextOptions.experimentalKvCacheKeyType = type;
  contextOptions.experimentalKvCacheValueType = type;
}
const context = await model.createContext(contextOptions);
const sequence = context.getSequence();

const logitsOf = (output) => {
  const map = output?.next?.logits;
  if (map === undefined) fail("llama.cpp returned no logits for a position");
  return denseLogits(map, nVocab);
};

const prompt = await sequence.controlledEvaluate(
  tokens.map((t) => [t, { generateNext: { logits: true } }]));
const rows = [];
for (let i = 0; i < tokens.length; i++) rows.push(logitsOf(prompt[i]));

const continuation = [];
let last = rows[rows.length - 1];
for (let step = 0; step < greedy; step++) {
  const next = argmax(last);
  continuation.push(next);
  if (step + 1 === greedy) break;
  const out = await sequence.controlledEvaluate([[next, { generateNext: { logits: true } }]]);
  last = logitsOf(out[0]);
}

// Hand-built JSON keeps large outputs fast and floats at full precision.
const parts = ['{"logits":['];
rows.forEach((row, i) => {
  parts.push((i ? "," : "") + "[" + row.map(jsonNumber).join(",") + "]");
});
parts.push('],"greedy":[' + continuation.join(",") + "]}\n");
process.stdout.write(parts.join(""));

await context.dispose();
await model.dispose();
await llama.dispose();
