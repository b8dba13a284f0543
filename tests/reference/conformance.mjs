#!/usr/bin/env node
// Conformance of `latentserve logits` against llama.cpp (node-llama-cpp 3.22.1, CPU) on small
// random kimi-linear GGUFs of several shapes and weight types.
//
// For each model config: `latentserve make-test-model` writes the GGUF; for each prompt
// (seeded random ids, several lengths up to 1000) llama_logits.mjs gives the reference
// per-position logits and an 8-token greedy continuation; `latentserve logits` runs the same
// tokens once per prefill chunk size. Per run we report the normalised MSE per position
// (sum((ours-ref)^2) / sum(ref^2) over the vocabulary; mean and max over positions), top-1
// agreement, and greedy agreement. Thresholds and why: README.md in this folder.
//
//   node conformance.mjs --latentserve build/bin/latentserve [--threads 2] [--configs a,b]
//        [--max-tokens N] [--json-out F] [--keep]
// Exit status: 0 all passed, 1 a check failed, 2 bad usage or a tool could not run at all.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { parseArgs, fail, argmax, rng } from "./common.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const USAGE = `usage: node conformance.mjs --latentserve PATH [--threads N (2)] [--configs NAME,...]
       [--max-tokens N] [--chunks 64,256] [--json-out FILE] [--keep] [--list]`;

// Pass/fail limits per weight type (reasons: README.md). NMSE is per position,
// sum((ours-ref)^2) / sum(ref^2) over the vocabulary.
//   median:   per run, the median NMSE over its positions (the typical error);
//   mean:     pooled over every position of a config (all prompts and chunk sizes);
//   outlier/outlierFraction: at most this fraction of a config's positions above `outlier`
//             (random MoE models flip an expert choice at a few near-tied positions);
//   argmax:   pooled top-1 agreement over prompt positions and greedy steps.
const THRESHOLDS = {
  f32: { median: 1e-4, mean: 1e-3, outlier: 1e-2, outlierFraction: 0.02, argmax: 0.98 },
  f16: { median: 1e-3, mean: 1e-2, outlier: 1e-1, outlierFraction: 0.02, argmax: 0.95 },
  q8_0: { median: 5e-2, mean: 1e-1, outlier: 3e-1, outlierFraction: 0.02, argmax: 0.70 },
  q4_0: { median: 5e-2, mean: 1e-1, outlier: 3e-1, outlierFraction: 0.02, argmax: 0.70 },
};

// Shapes differ in every dimension the kernels tile over; MLA layers sit first, in the
// middle, last, and several together; quantised configs keep every ne[0] a multiple of 32.
// q4_0-bighead uses every expert: with top-1 of 4, activation rounding alone flips the
// single chosen expert at ~10% of positions (measured), which tests luck, not kernels.
const CONFIGS = [
  {
    name: "f32-base", weightType: "f32", seed: 11, prompts: [1, 100, 1000],
    shape: { layers: 4, hidden: 64, heads: 4, "kda-head-dim": 16, "kv-lora-rank": 32, "qk-nope": 16,
      "qk-rope": 8, "v-head": 16, experts: 8, "experts-used": 2, "expert-ffn": 32, ffn: 96,
      "shared-experts": 1, "dense-layers": 1, "mla-layers": "1,3", vocab: 512, context: 2048 },
  },
  {
    name: "f32-no-dense", weightType: "f32", seed: 12, prompts: [2, 129, 640],
    shape: { layers: 3, hidden: 48, heads: 3, "kda-head-dim": 16, "kv-lora-rank": 16, "qk-nope": 8,
      "qk-rope": 8, "v-head": 8, experts: 6, "experts-used": 3, "expert-ffn": 16, ffn: 64,
      "shared-experts": 1, "dense-layers": 0, "mla-layers": "1,2", vocab: 300, context: 2048 },
  },
  {
    name: "f16-wide", weightType: "f16", seed: 13, prompts: [7, 300, 1000],
    shape: { layers: 5, hidden: 128, heads: 8, "kda-head-dim": 32, "kv-lora-rank": 64, "qk-nope": 32,
      "qk-rope": 16, "v-head": 32, experts: 16, "experts-used": 4, "expert-ffn": 64, ffn: 256,
      "shared-experts": 1, "dense-layers": 1, "mla-layers": "0,2,4", vocab: 1024, context: 2048 },
  },
  {
    name: "q8_0-deep", weightType: "q8_0", seed: 14, prompts: [64, 513, 1000],
    shape: { layers: 8, hidden: 96, heads: 6, "kda-head-dim": 32, "kv-lora-rank": 64, "qk-nope": 32,
      "qk-rope": 32, "v-head": 32, experts: 32, "experts-used": 8, "expert-ffn": 32, ffn: 192,
      "shared-experts": 2, "dense-layers": 2, "mla-layers": "3,7", vocab: 768, context: 2048 },
  },
  {
    name: "q4_0-bighead", weightType: "q4_0", seed: 15, prompts: [33, 256, 1000],
    shape: { layers: 6, hidden: 128, heads: 2, "kda-head-dim": 64, "kv-lora-rank": 128, "qk-nope": 64,
      "qk-rope": 64, "v-head": 64, experts: 4, "experts-used": 4, "expert-ffn": 64, ffn: 128,
      "shared-experts": 1, "dense-layers": 1, "mla-layers": "5", vocab: 640, context: 2048 },
  },
];
const GREEDY_TOKENS = 8;
const DEFAULT_CHUNKS = [64, 256];
const RUN_TIMEOUT_MS = 300_000;

const args = parseArgs(process.argv.slice(2), {
  latentserve: "string", threads: "int", configs: "string", "max-tokens": "int", chunks: "string",
  "json-out": "string", keep: "bool", list: "bool",
}, USAGE);
if (args.list) {
  for (const c of CONFIGS) console.log(`${c.name}  ${c.weightType}  prompts ${c.prompts.join(",")}`);
  process.exit(0);
}
if (!args.latentserve) fail(`--latentserve is required\n${USAGE}`);
const latentserve = path.resolve(args.latentserve);
if (!fs.existsSync(latentserve)) fail(`no such binary: ${latentserve}`);
const threads = args.threads ?? 2;
const chunks = args.chunks ? args.chunks.split(",").map((s) => Number.parseInt(s, 10)) : DEFAULT_CHUNKS;
if (chunks.some((c) => !(c > 0))) fail("--chunks wants positive integers");
let configs = CONFIGS;
if (args.configs) {
  const wanted = args.configs.split(",");
  for (const w of wanted) if (!CONFIGS.some((c) => c.name === w)) fail(`unknown config '${w}' (see --list)`);
  configs = CONFIGS.filter((c) => wanted.includes(c.name));
}
const workDir = fs.mkdtempSync(path.join(os.tmpdir(), "latentserve-conformance-"));

function randomPrompt(seed, length, vocab) {
  const random = rng(seed);
  return Array.from({ length }, () => Math.floor(random() * vocab));
}

function run(command, argv, what) {
  const started = Date.now();
  const result = spawnSync(command, argv, {
    cwd: HERE, encoding: "utf8", maxBuffer: 1 << 30, timeout: RUN_TIMEOUT_MS,
  });
  const seconds = (Date.now() - started) / 1000;
  if (result.error || result.status !== 0) {
    const why = result.error ? String(result.error) : `exit ${result.status ?? result.signal}`;
    const tail = (result.stderr || "").trim().split("\n").slice(-15).join("\n");
    return { ok: false, seconds, error: `${what}: ${why}\n  $ ${command} ${argv.join(" ")}\n${tail}` };
  }
  return { ok: true, seconds, stdout: result.stdout };
}

function runLogits(command, prefixArgv, model, tokensFile, extra, what) {
  const r = run(command, [...prefixArgv, "--model", model, "--tokens-file", tokensFile,
    "--threads", String(threads), ...extra], what);
  if (!r.ok) return r;
  try {
    const parsed = JSON.parse(r.stdout);
    if (!Array.isArray(parsed.logits) || !Array.isArray(parsed.greedy)) throw new Error("missing logits/greedy");
    return { ok: true, seconds: r.seconds, logits: parsed.logits, greedy: parsed.greedy };
  } catch (e) {
    return { ok: false, seconds: r.seconds, error: `${what}: output is not the logits JSON (${e.message})` };
  }
}

function referenceLogits(model, tokensFile, greedy) {
  return runLogits(process.execPath, [path.join(HERE, "llama_logits.mjs")], model, tokensFile,
    ["--greedy", String(greedy)], "llama.cpp");
}

function rms(values) {
  let s = 0;
  for (const v of values) s += v * v;
  return Math.sqrt(s / values.length);
}

function median(values) {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((x, y) => x - y);
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

// A top-1 disagreement is a near-tie when the reference scores our pick within this much of
// its own best: an error at the typical (median) limit can flip such a pair.
function tieTolerance(refRow, limits) {
  return 4 * Math.sqrt(limits.median) * rms(refRow);
}

// Per-position NMSE and top-1 agreement of `ours` against `ref` (rows of vocab logits).
function compare(ours, ref, vocab, limits) {
  if (ours.length !== ref.length) return { problem: `${ours.length} logit rows, expected ${ref.length}` };
  const nmse = [];
  let agree = 0, nearTies = 0;
  for (let i = 0; i < ref.length; i++) {
    const a = ours[i], b = ref[i];
    if (a.length !== vocab || b.length !== vocab) {
      return { problem: `row ${i} has ${a.length} logits (reference ${b.length}), vocab ${vocab}` };
    }
    let num = 0, den = 0;
    for (let j = 0; j < vocab; j++) {
      const x = a[j], y = b[j];
      if (x === null || y === null || !Number.isFinite(x)) { num = Infinity; break; }
      num += (x - y) * (x - y);
      den += y * y;
    }
    nmse.push(den > 0 ? num / den : (num > 0 ? Infinity : 0));
    const pickOurs = argmax(a), pickRef = argmax(b);
    if (pickOurs === pickRef) agree++;
    else if (b[pickRef] - b[pickOurs] <= tieTolerance(b, limits)) nearTies++;
  }
  let max = 0, maxAt = 0;
  nmse.forEach((v, i) => { if (!(v <= max)) { max = v; maxAt = i; } });
  return { nmse, positions: nmse.length, median: median(nmse), max, maxAt, agree, nearTies };
}

// Our greedy picks judged by llama.cpp: when the continuations differ, llama.cpp evaluates
// prompt + our continuation (teacher forcing) and each of our picks is checked against its
// argmax at that step. Returns the per-step agreement for the pooled top-1 rate.
function checkGreedy(oursGreedy, refGreedy, model, prompt, limits, tag) {
  let same = 0;
  while (same < refGreedy.length && oursGreedy[same] === refGreedy[same]) same++;
  const steps = refGreedy.length;
  if (same === steps && oursGreedy.length === steps) return { text: `${steps}/${steps}`, steps, agree: steps, nearTies: 0 };
  if (oursGreedy.length !== steps) return { text: `${oursGreedy.length}/${steps} tokens`, steps, agree: 0, nearTies: 0, error: "wrong number of greedy tokens" };
  const file = path.join(workDir, `${tag}-forced.txt`);
  fs.writeFileSync(file, [...prompt, ...oursGreedy.slice(0, steps - 1)].join(",") + "\n");
  const r = referenceLogits(model, file, 0);
  if (!r.ok) return { text: `${same}/${steps}`, steps, agree: 0, nearTies: 0, error: r.error };
  let agree = 0, nearTies = 0;
  for (let j = 0; j < steps; j++) {
    const row = r.logits[prompt.length - 1 + j];
    const best = argmax(row);
    if (best === oursGreedy[j]) agree++;
    else if (row[best] - row[oursGreedy[j]] <= tieTolerance(row, limits)) nearTies++;
  }
  return { text: `${same}/${steps} (${agree} ok)`, steps, agree, nearTies };
}

const fmt = (x) => (Number.isFinite(x) ? x.toExponential(2) : String(x));
const pct = (x) => `${(100 * x).toFixed(1)}%`;
const rows = [];
const failures = [];
let toolFailure = false;

for (const config of configs) {
  const limits = THRESHOLDS[config.weightType];
  const model = path.join(workDir, `${config.name}.gguf`);
  const shapeArgs = Object.entries(config.shape).flatMap(([k, v]) => [`--${k}`, String(v)]);
  const made = run(latentserve, ["make-test-model", "--out", model, "--seed", String(config.seed),
    ...shapeArgs, "--weight-type", config.weightType], "make-test-model");
  if (!made.ok) {
    failures.push(`${config.name}: ${made.error}`);
    toolFailure = true;
    continue;
  }
  const vocab = config.shape.vocab;
  const pool = { nmse: [], agree: 0, positions: 0, nearTies: 0 };
  for (const fullLength of config.prompts) {
    const length = Math.min(fullLength, args["max-tokens"] ?? fullLength);
    const prompt = randomPrompt(config.seed * 7919 + length, length, vocab);
    const tag = `${config.name}-${length}`;
    const tokensFile = path.join(workDir, `${tag}.txt`);
    fs.writeFileSync(tokensFile, prompt.join(",") + "\n");
    const ref = referenceLogits(model, tokensFile, GREEDY_TOKENS);
    if (!ref.ok) {
      failures.push(`${tag}: ${ref.error}`);
      toolFailure = true;
      continue;
    }
    let firstOurs = null;
    for (const chunk of chunks) {
      const row = { config: config.name, weightType: config.weightType, tokens: length, chunk, refSeconds: ref.seconds };
      rows.push(row);
      const ours = runLogits(latentserve, ["logits"], model, tokensFile,
        ["--cache-type", "f16", "--chunk", String(chunk), "--greedy", String(GREEDY_TOKENS)], "latentserve logits");
      row.seconds = ours.seconds;
      if (!ours.ok) {
        row.result = "ERROR";
        failures.push(`${tag} chunk ${chunk}: ${ours.error}`);
        continue;
      }
      const why = [];
      const c = compare(ours.logits, ref.logits, vocab, limits);
      if (c.problem) {
        why.push(c.problem);
      } else {
        Object.assign(row, { median: c.median, max: c.max, maxAt: c.maxAt, agree: c.agree, positions: c.positions });
        pool.nmse.push(...c.nmse);
        pool.agree += c.agree;
        pool.positions += c.positions;
        pool.nearTies += c.nearTies;
        if (!(c.median < limits.median)) why.push(`median NMSE ${fmt(c.median)} >= ${fmt(limits.median)}`);
        // Chunk sizes must not matter beyond rounding: report how far ours moves between them.
        if (firstOurs === null) firstOurs = ours.logits;
        else row.chunkDelta = compare(ours.logits, firstOurs, vocab, limits).max;
      }
      const g = checkGreedy(ours.greedy, ref.greedy, model, prompt, limits, `${tag}-${chunk}`);
      row.greedy = g.text;
      pool.agree += g.agree;
      pool.positions += g.steps;
      pool.nearTies += g.nearTies;
      if (g.error) why.push(g.error);
      row.result = why.length ? "FAIL" : "ok";
      for (const w of why) failures.push(`${tag} chunk ${chunk}: ${w}`);
    }
  }
  if (pool.positions > 0) {
    const mean = pool.nmse.reduce((x, y) => x + y, 0) / Math.max(1, pool.nmse.length);
    const outliers = pool.nmse.filter((v) => !(v <= limits.outlier)).length / Math.max(1, pool.nmse.length);
    const rate = pool.agree / pool.positions;
    const why = [];
    if (!(mean < limits.mean)) why.push(`mean NMSE ${fmt(mean)} >= ${fmt(limits.mean)}`);
    if (outliers > limits.outlierFraction) {
      why.push(`${pct(outliers)} of positions have NMSE > ${fmt(limits.outlier)} (limit ${pct(limits.outlierFraction)})`);
    }
    if (rate < limits.argmax) why.push(`top-1 agreement ${pct(rate)} < ${pct(limits.argmax)}`);
    rows.push({ config: config.name, weightType: config.weightType, summary: true, mean, outliers,
      max: Math.max(...pool.nmse), rate, nearTies: pool.nearTies, positions: pool.positions,
      result: why.length ? "FAIL" : "ok" });
    for (const w of why) failures.push(`${config.name} (all runs): ${w}`);
  }
}

// The table: one line per (config, prompt length, chunk), then a pooled line per config.
const header = ["config", "weights", "tokens", "chunk", "nmse median", "nmse max", "top-1", "greedy", "chunk Δ", "ours s", "ref s", "result"];
const table = rows.map((r) => r.summary
  ? [r.config, r.weightType, "all", "", `mean ${fmt(r.mean)}`, fmt(r.max), pct(r.rate), "", `>outl ${pct(r.outliers)}`, "", "", r.result]
  : [r.config, r.weightType, String(r.tokens), String(r.chunk), r.median === undefined ? "-" : fmt(r.median),
    r.max === undefined ? "-" : fmt(r.max), r.agree === undefined ? "-" : `${r.agree}/${r.positions}`,
    r.greedy ?? "-", r.chunkDelta === undefined ? "" : fmt(r.chunkDelta),
    r.seconds === undefined ? "" : r.seconds.toFixed(1), r.refSeconds === undefined ? "" : r.refSeconds.toFixed(1),
    r.result]);
const widths = header.map((h, i) => Math.max(h.length, ...table.map((t) => t[i].length)));
const line = (cells) => cells.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd();
console.log(line(header));
console.log(widths.map((w) => "-".repeat(w)).join("  "));
for (const t of table) console.log(line(t));
console.log("\nlimits: median NMSE per run / pooled mean NMSE / outliers (NMSE > x) at most / pooled top-1");
for (const [type, l] of Object.entries(THRESHOLDS)) {
  console.log(`  ${type.padEnd(5)} ${fmt(l.median)} / ${fmt(l.mean)} / ${pct(l.outlierFraction)} > ${fmt(l.outlier)} / ${pct(l.argmax)}`);
}

if (args["json-out"]) {
  fs.writeFileSync(args["json-out"], JSON.stringify({ thresholds: THRESHOLDS, rows, failures }, null, 2) + "\n");
}
if (args.keep) console.log(`\nkept models and prompts in ${workDir}`);
else fs.rmSync(workDir, { recursive: true, force: true });

if (failures.length) {
  console.log(`\nFAILED (${failures.length}):`);
  for (const f of failures) console.log(`  ${f.replace(/\n/g, "\n    ")}`);
  process.exit(toolFailure && rows.length === 0 ? 2 : 1);
}
console.log(`\nPASSED: ${rows.filter((r) => !r.summary).length} runs over ${configs.length} configs`);
