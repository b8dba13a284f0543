#!/usr/bin/env node
// llama.cpp's tokenisation of a UTF-8 text file: {"ids": [...]}. With --special, special-token
// text such as "[BOS]" or "<|im_end|>" becomes its single control token (as a chat template
// needs); without it, that text is tokenised as ordinary bytes. No BOS is added either way.
import fs from "node:fs";
import { parseArgs, fail, loadLlama } from "./common.mjs";

const USAGE = "usage: node llama_tokenize.mjs --model M (--text-file F | --text T) [--special]";
const args = parseArgs(process.argv.slice(2),
  { model: "string", "text-file": "string", text: "string", special: "bool" }, USAGE);
if (!args.model) fail(`--model is required\n${USAGE}`);
if ((args.text === undefined) === (args["text-file"] === undefined)) {
  fail(`give exactly one of --text-file or --text\n${USAGE}`);
}
const text = args.text ?? fs.readFileSync(args["text-file"], "utf8");

const llama = await loadLlama(1);
const model = await llama.loadModel({ modelPath: args.model, vocabOnly: true });
const ids = model.tokenize(text, args.special === true);
process.stdout.write(JSON.stringify({ ids: Array.from(ids) }) + "\n");
await model.dispose();
await llama.dispose();
