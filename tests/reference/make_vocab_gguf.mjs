#!/usr/bin/env node
// Builds a vocab-only kimi-linear GGUF (no tensors) whose tokenizer is tiktoken's cl100k_base
// (or o200k_base) converted to a byte-level BPE vocabulary, plus Kimi's special tokens, with
// tokenizer.ggml.pre = "kimi-k2". llama.cpp loads it with vocabOnly: true, so both tokenizers
// can be compared token for token on a realistic 100K-200K vocabulary.
//
//   node make_vocab_gguf.mjs --out vocab.gguf [--encoding cl100k_base|o200k_base]
//
// Conversion (the usual tiktoken -> Hugging Face one): token id = tiktoken rank, text in the
// GPT-2 byte-to-unicode alphabet; every multi-byte token T gets one merge "A B" where A + B = T
// are tokens, choosing the split with the lowest max(rank(A), rank(B)) (then the lowest
// rank(A)); merges are ordered by rank(T).
import fs from "node:fs";
import { parseArgs, fail } from "./common.mjs";

const USAGE = "usage: node make_vocab_gguf.mjs --out F [--encoding cl100k_base|o200k_base]";
const args = parseArgs(process.argv.slice(2), { out: "string", encoding: "string" }, USAGE);
if (!args.out) fail(`--out is required\n${USAGE}`);
const encoding = args.encoding ?? "cl100k_base";
if (!["cl100k_base", "o200k_base"].includes(encoding)) fail(`unknown --encoding ${encoding}`);

const { Tiktoken } = await import("js-tiktoken/lite");
const ranks = (await import(`js-tiktoken/ranks/${encoding}`)).default;
const tiktoken = new Tiktoken(ranks);

// GPT-2 byte -> printable code point.
const byteToChar = new Array(256);
{
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    byteToChar[b] = String.fromCodePoint(printable ? b : 256 + extra++);
  }
}
const toAlphabet = (bytes) => Array.from(bytes, (b) => byteToChar[b]).join("");

let nRanks = 0;
for (const rank of tiktoken.textMap.keys()) nRanks = Math.max(nRanks, rank + 1);
const tokens = [];
const types = [];
const rankOf = new Map();  // byte key "1,2,3" -> rank
for (let rank = 0; rank < nRanks; rank++) {
  const bytes = tiktoken.textMap.get(rank);
  if (bytes === undefined) {  // a gap in the ranks: an unused placeholder
    tokens.push(`<|unused_rank_${rank}|>`);
    types.push(5);
    continue;
  }
  tokens.push(toAlphabet(bytes));
  types.push(1);
  rankOf.set(Array.from(bytes).join(","), rank);
}

const merges = [];
for (let rank = 0; rank < nRanks; rank++) {
  const bytes = tiktoken.textMap.get(rank);
  if (bytes === undefined || bytes.length < 2) continue;
  let best = null;
  for (let split = 1; split < bytes.length; split++) {
    const left = rankOf.get(Array.from(bytes.subarray(0, split)).join(","));
    const right = rankOf.get(Array.from(bytes.subarray(split)).join(","));
    if (left === undefined || right === undefined) continue;
    const key = [Math.max(left, right), left];
    if (best === null || key[0] < best.key[0] || (key[0] === best.key[0] && key[1] < best.key[1])) {
      best = { key, split };
    }
  }
  if (best === null) continue;
  merges.push(`${toAlphabet(bytes.subarray(0, best.split))} ${toAlphabet(bytes.subarray(best.split))}`);
}

// Kimi's special tokens in Kimi-K2's order (offsets from the first special id), all control.
const kimiSpecials = {
  0: "[BOS]", 1: "[EOS]", 2: "<|im_end|>", 3: "<|im_user|>", 4: "<|im_assistant|>",
  6: "<|start_header_id|>", 7: "<|end_header_id|>", 9: "[EOT]", 10: "<|im_system|>",
  11: "<|tool_calls_section_begin|>", 12: "<|tool_calls_section_end|>", 13: "<|tool_call_begin|>",
  14: "<|tool_call_argument_begin|>", 15: "<|tool_call_end|>", 17: "<|im_middle|>",
  254: "[UNK]", 255: "[PAD]",
};
const firstSpecial = tokens.length;
for (let k = 0; k < 256; k++) {
  tokens.push(kimiSpecials[k] ?? `<|reserved_token_${k}|>`);
  types.push(3);
}

// Minimal GGUF v3 writer (metadata only).
const GGUF = { UINT32: 4, INT32: 5, FLOAT32: 6, BOOL: 7, STRING: 8, ARRAY: 9 };
const chunks = [];
const u32 = (v) => { const b = Buffer.alloc(4); b.writeUInt32LE(v); chunks.push(b); };
const i32 = (v) => { const b = Buffer.alloc(4); b.writeInt32LE(v); chunks.push(b); };
const u64 = (v) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); chunks.push(b); };
const f32 = (v) => { const b = Buffer.alloc(4); b.writeFloatLE(v); chunks.push(b); };
const str = (s) => { const b = Buffer.from(s, "utf8"); u64(b.length); chunks.push(b); };
const kv = [];
const put = (key, type, value, elemType) => kv.push({ key, type, value, elemType });
const writeValue = (type, value) => {
  switch (type) {
    case GGUF.UINT32: u32(value); break;
    case GGUF.INT32: i32(value); break;
    case GGUF.FLOAT32: f32(value); break;
    case GGUF.BOOL: chunks.push(Buffer.from([value ? 1 : 0])); break;
    case GGUF.STRING: str(value); break;
    default: throw new Error(`type ${type}`);
  }
};

const arch = "kimi-linear";
const p = `${arch}.`;
const layers = 2;
put("general.architecture", GGUF.STRING, arch);
put("general.name", GGUF.STRING, `kimi-k2 vocab from ${encoding}`);
put(p + "block_count", GGUF.UINT32, layers);
put(p + "context_length", GGUF.UINT32, 4096);
put(p + "embedding_length", GGUF.UINT32, 64);
put(p + "feed_forward_length", GGUF.UINT32, 128);
put(p + "vocab_size", GGUF.UINT32, tokens.length);
put(p + "attention.head_count", GGUF.UINT32, 2);
put(p + "attention.head_count_kv", GGUF.ARRAY, [0, 1], GGUF.INT32);
put(p + "attention.layer_norm_rms_epsilon", GGUF.FLOAT32, 1e-5);
put(p + "attention.key_length", GGUF.UINT32, 32 + 16);
put(p + "attention.value_length", GGUF.UINT32, 32);
put(p + "attention.key_length_mla", GGUF.UINT32, 16 + 16);
put(p + "attention.value_length_mla", GGUF.UINT32, 16);
put(p + "attention.kv_lora_rank", GGUF.UINT32, 32);
put(p + "rope.dimension_count", GGUF.UINT32, 16);
put(p + "ssm.conv_kernel", GGUF.UINT32, 4);
put(p + "kda.head_dim", GGUF.UINT32, 32);
put(p + "expert_count", GGUF.UINT32, 4);
put(p + "expert_used_count", GGUF.UINT32, 2);
put(p + "expert_feed_forward_length", GGUF.UINT32, 32);
put(p + "expert_shared_count", GGUF.UINT32, 1);
put(p + "leading_dense_block_count", GGUF.UINT32, 1);
put(p + "expert_weights_scale", GGUF.FLOAT32, 2.446);
put(p + "expert_weights_norm", GGUF.BOOL, true);
put(p + "expert_gating_func", GGUF.UINT32, 2);
put("tokenizer.ggml.model", GGUF.STRING, "gpt2");
put("tokenizer.ggml.pre", GGUF.STRING, "kimi-k2");
put("tokenizer.ggml.tokens", GGUF.ARRAY, tokens, GGUF.STRING);
put("tokenizer.ggml.token_type", GGUF.ARRAY, types, GGUF.INT32);
put("tokenizer.ggml.merges", GGUF.ARRAY, merges, GGUF.STRING);
put("tokenizer.ggml.bos_token_id", GGUF.UINT32, firstSpecial + 0);
put("tokenizer.ggml.eos_token_id", GGUF.UINT32, firstSpecial + 1);
put("tokenizer.ggml.padding_token_id", GGUF.UINT32, firstSpecial + 255);
put("tokenizer.ggml.add_bos_token", GGUF.BOOL, false);
put("tokenizer.ggml.add_eos_token", GGUF.BOOL, false);

chunks.push(Buffer.from("GGUF", "ascii"));
u32(3);
u64(0);          // tensors
u64(kv.length);  // metadata entries
for (const { key, type, value, elemType } of kv) {
  str(key);
  u32(type);
  if (type === GGUF.ARRAY) {
    u32(elemType);
    u64(value.length);
    for (const v of value) writeValue(elemType, v);
  } else {
    writeValue(type, value);
  }
}
let size = chunks.reduce((n, b) => n + b.length, 0);
chunks.push(Buffer.alloc((32 - (size % 32)) % 32));  // alignment of the (empty) data section
fs.writeFileSync(args.out, Buffer.concat(chunks));
process.stderr.write(`${args.out}: ${tokens.length} tokens (${firstSpecial} from ${encoding}, ` +
  `256 special), ${merges.length} merges\n`);
