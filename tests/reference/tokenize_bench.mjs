#!/usr/bin/env node
// Tokenizer throughput, llama.cpp (node-llama-cpp model.tokenize) vs latentserve (bench_tokenizer),
// on the same vocab-only GGUF and text file; also checks both produce identical ids.
//
//   node tokenize_bench.mjs --model vocab.gguf --text-file doc.txt --bench BIN/bench_tokenizer
//        --latentserve BIN/latentserve [--repeat 3]
import fs from "node:fs";
import { spawnSync } from "node:child_process";
import { parseArgs, fail, loadLlama } from "./common.mjs";

const USAGE = "usage: node tokenize_bench.mjs --model M --text-file F --bench B --latentserve L [--repeat N]";
const args = parseArgs(process.argv.slice(2), { model: "string", "text-file": "string",
  bench: "string", latentserve: "string", repeat: "int" }, USAGE);
for (const k of ["model", "text-file", "bench", "latentserve"]) if (!args[k]) fail(`--${k} is required\n${USAGE}`);
const repeat = args.repeat ?? 3;
// Valid UTF-8 only, so that both sides see the very same bytes.
const text = fs.readFileSync(args["text-file"], "utf8");
const utf8File = `${args["text-file"]}.utf8`;
fs.writeFileSync(utf8File, text);
const bytes = Buffer.byteLength(text, "utf8");

const llama = await loadLlama(1);
const model = await llama.loadModel({ modelPath: args.model, vocabOnly: true });
let best = Infinity, ids = null;
for (let r = 0; r < repeat; r++) {
  const t0 = process.hrtime.bigint();
  ids = model.tokenize(text, false);
  best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
}
const llamaResult = { bytes, tokens: ids.length, seconds: best, mb_per_s: bytes / 1e6 / best,
  tokens_per_s: ids.length / best };

const bench = spawnSync(args.bench, ["--model", args.model, "--text-file", utf8File,
  "--repeat", String(repeat)], { encoding: "utf8" });
if (bench.status !== 0) fail(`bench_tokenizer failed: ${bench.stderr}`);
const oursResult = JSON.parse(bench.stdout);

const ours = spawnSync(args.latentserve, ["tokenize", "--model", args.model, "--text-file", utf8File],
  { maxBuffer: 1 << 30, encoding: "utf8" });
const oursIds = JSON.parse(ours.stdout).token_ids;
const identical = oursIds.length === ids.length && oursIds.every((t, k) => t === ids[k]);
await model.dispose();
await llama.dispose();
const fmt = (r) => `${r.mb_per_s.toFixed(2)} MB/s, ${(r.tokens_per_s / 1e6).toFixed(2)}M tokens/s ` +
  `(${r.tokens} tokens in ${r.seconds.toFixed(3)} s)`;
process.stdout.write(`text: ${bytes} bytes\nllama.cpp:   ${fmt(llamaResult)}\n` +
  `latentserve: ${fmt(oursResult)}\nspeedup: ${(oursResult.mb_per_s / llamaResult.mb_per_s).toFixed(2)}x, ` +
  `ids identical: ${identical}\n`);
process.exit(identical ? 0 : 1);
