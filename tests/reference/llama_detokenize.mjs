#!/usr/bin/env node
// llama.cpp's detokenisation of token ids: {"text": "..."}. With --special, control tokens are
// rendered as their text; without it they render as nothing.
import { parseArgs, fail, tokensFromArgs, loadLlama, vocabularySize } from "./common.mjs";

const USAGE = 'usage: node llama_detokenize.mjs --model M (--tokens "1,2,3" | --tokens-file F) [--special]';
const args = parseArgs(process.argv.slice(2),
  { model: "string", tokens: "string", "tokens-file": "string", special: "bool" }, USAGE);
if (!args.model) fail(`--model is required\n${USAGE}`);
const tokens = tokensFromArgs(args);

const llama = await loadLlama(1);
const model = await llama.loadModel({ modelPath: args.model, vocabOnly: true });
const nVocab = vocabularySize(model);
for (const t of tokens) if (t >= nVocab) fail(`token id ${t} out of range [0, ${nVocab})`);
const text = model.detokenize(tokens, args.special === true);
process.stdout.write(JSON.stringify({ text }) + "\n");
await model.dispose();
await llama.dispose();
