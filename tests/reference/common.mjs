// Shared helpers for the llama.cpp reference scripts: argument parsing, token lists, and
// loading llama.cpp (node-llama-cpp's prebuilt CPU binary) the same way in every script.
import fs from "node:fs";

// Parses "--name value" and bare "--flag" arguments. `spec` maps a flag name to its kind:
// "string", "int", "bool". Unknown flags are an error, so typos do not pass silently.
export function parseArgs(argv, spec, usage) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--help" || arg === "-h") {
      process.stdout.write(usage + "\n");
      process.exit(0);
    }
    if (!arg.startsWith("--")) fail(`unexpected argument '${arg}'\n${usage}`);
    let name = arg.slice(2);
    let value;
    const eq = name.indexOf("=");
    if (eq >= 0) {
      value = name.slice(eq + 1);
      name = name.slice(0, eq);
    }
    const kind = spec[name];
    if (kind === undefined) fail(`unknown flag --${name}\n${usage}`);
    if (kind === "bool") {
      out[name] = value === undefined ? true : value !== "false" && value !== "0";
      continue;
    }
    if (value === undefined) {
      if (i + 1 >= argv.length) fail(`--${name} needs a value`);
      value = argv[++i];
    }
    if (kind === "int") {
      if (!/^-?\d+$/.test(value)) fail(`--${name} wants an integer, got '${value}'`);
      out[name] = Number.parseInt(value, 10);
    } else {
      out[name] = value;
    }
  }
  return out;
}

export function fail(message) {
  process.stderr.write(`error: ${message}\n`);
  process.exit(2);
}

// "1,2,3" (spaces and a trailing newline allowed) -> [1, 2, 3].
export function parseTokenList(text, what = "tokens") {
  const trimmed = text.trim();
  if (trimmed === "") return [];
  return trimmed.split(",").map((s) => {
    const t = s.trim();
    if (!/^\d+$/.test(t)) fail(`${what}: '${t}' is not a non-negative integer token id`);
    return Number.parseInt(t, 10);
  });
}

// --tokens "1,2,3" or --tokens-file F (one comma-separated line), exactly one of them.
export function tokensFromArgs(args) {
  if ((args.tokens === undefined) === (args["tokens-file"] === undefined)) {
    fail("give exactly one of --tokens or --tokens-file");
  }
  if (args.tokens !== undefined) return parseTokenList(args.tokens);
  return parseTokenList(fs.readFileSync(args["tokens-file"], "utf8"), args["tokens-file"]);
}

// llama.cpp on the CPU only, never compiled on the fly, quiet. `threads` also caps the
// Llama instance so its thread pool cannot oversubscribe the machine.
export async function loadLlama(threads) {
  const { getLlama, LlamaLogLevel } = await import("node-llama-cpp");
  const options = { gpu: false, build: "never", logLevel: LlamaLogLevel.error, progressLogs: false };
  if (threads !== undefined) options.maxThreads = threads;
  return getLlama(options);
}

export function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

// node-llama-cpp returns logits as a Map sorted by value; turn it into a dense array indexed
// by token id. Tokens it leaves out (none, for unfiltered logits) become -Infinity.
export function denseLogits(map, vocabSize) {
  const dense = new Array(vocabSize).fill(-Infinity);
  for (const [token, logit] of map) dense[token] = logit;
  return dense;
}

// JSON cannot hold -Infinity/NaN; print them as null so a diff flags them.
export function jsonNumber(x) {
  return Number.isFinite(x) ? x : null;
}

// Number of logits per position: the architecture's vocab_size key, else the token list.
export function vocabularySize(model) {
  const metadata = model.fileInfo.metadata;
  const arch = metadata?.general?.architecture;
  const fromKey = arch !== undefined ? metadata?.[arch]?.vocab_size : undefined;
  if (typeof fromKey === "number") return fromKey;
  const tokens = metadata?.tokenizer?.ggml?.tokens;
  if (Array.isArray(tokens)) return tokens.length;
  fail("cannot tell the vocabulary size from the GGUF metadata");
}

// Seeded uniform [0, 1) generator (mulberry32): reproducible prompts without dependencies.
export function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
