#!/usr/bin/env node
// Token-for-token conformance of `latentserve tokenize` with llama.cpp (node-llama-cpp 3.22.1)
// on a vocab-only kimi-k2 GGUF, plus exact round trips through `latentserve detokenize`.
//
//   node tokenize_conformance.mjs --latentserve build/bin/latentserve [--work-dir D]
//        [--model vocab.gguf] [--encoding cl100k_base|o200k_base] [--fuzz N]
//
// Each case is a byte string written to a file. llama.cpp is handed the same text as a JS
// string; node turns strings into UTF-8 without invalid bytes, so for the invalid-UTF-8 cases
// we hand it the text llama.cpp itself would decode those bytes to (each byte that does not
// start a well-formed sequence becomes U+FFFD; unicode_cpts_from_utf8). Those cases round-trip
// to that repaired text, all others to their exact bytes. Exits 1 on any mismatch.
import fs from "node:fs";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { parseArgs, fail, loadLlama } from "./common.mjs";

const USAGE = "usage: node tokenize_conformance.mjs --latentserve BIN [--work-dir D] " +
  "[--model GGUF] [--encoding E] [--fuzz N]";
const args = parseArgs(process.argv.slice(2), { latentserve: "string", "work-dir": "string",
  model: "string", encoding: "string", fuzz: "int", verbose: "bool" }, USAGE);
if (!args.latentserve) fail(`--latentserve is required\n${USAGE}`);
const here = path.dirname(fileURLToPath(import.meta.url));
const workDir = path.resolve(args["work-dir"] ?? fs.mkdtempSync("/tmp/tokconf-"));
fs.mkdirSync(path.join(workDir, "cases"), { recursive: true });

let model = args.model;
if (!model) {
  const encoding = args.encoding ?? "cl100k_base";
  model = path.join(workDir, `vocab_${encoding}.gguf`);
  if (!fs.existsSync(model)) {
    const r = spawnSync(process.execPath, [path.join(here, "make_vocab_gguf.mjs"), "--out", model,
      "--encoding", encoding], { stdio: "inherit" });
    if (r.status !== 0) fail("make_vocab_gguf.mjs failed");
  }
}

// ---- corpus -------------------------------------------------------------------------------
const cases = [];  // { name, bytes: Buffer }
const text = (name, s) => cases.push({ name, bytes: Buffer.from(s, "utf8") });
const raw = (name, bytes) => cases.push({ name, bytes: Buffer.from(bytes) });

text("english", "The quick brown fox jumps over the lazy dog. It's a test; we'll see, they've done it, I'd say I'm sure.");
text("contractions-case", "DON'T YOU'LL WE'RE THEY'VE I'M HE'D SHE'S it'S 'twas o'clock rock'n'roll");
text("code-python", "def fib(n: int) -> int:\n    \"\"\"Return n-th Fibonacci.\"\"\"\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\nif __name__ == '__main__':\n\tprint(fib(30))  # 832040\n");
text("code-cpp", "template <typename T>\nstd::vector<T> f(const T& x) {\n  return {x, x * 2};  // ok\n}\r\nint main(){int a[3]={1,2,3};return a[0]<<2|0xFF;}\n");
text("code-json-html", "{\"key\": [1, 2.5, -3e10, true, null], \"s\": \"a\\\"b\"}\n<div class=\"x\">&amp;&lt;</div><!-- c -->");
text("chinese", "我们的模型支持一百万个词元的上下文。今天天气很好，我们去公园散步吧！");
text("chinese-mixed-spaces", "中文 English 混合 text 中 文  中   文\t中\n中文123中文abc中文");
text("space-before-han", " 中文  中文 \u3000中文 a中 b 中");
text("japanese", "日本語のテキストです。カタカナとひらがな、そして漢字。ｶﾀｶﾅ（半角）も。");
text("korean", "안녕하세요, 세계! 한국어 텍스트입니다. 서울은 대한민국의 수도입니다.");
text("cyrillic-greek-arabic-hebrew", "Привет, мир! Ελληνικά κείμενα. مرحبا بالعالم. שלום עולם. हिन्दी पाठ। ไทย");
text("accents-nfc", "café naïve résumé São Paulo Zürich Ångström façade coöperate");
text("accents-nfd", "cafe\u0301 nai\u0308ve re\u0301sume\u0301 S\u0303ao e\u0301\u0301\u0301 \u0301start a\u0300b");
text("combining-only", "\u0301\u0302\u0303 x\u20DD \u0361 a\u0489");
text("emoji", "Hello 👋 world 🌍! 😀😃😄 🎉🎉 ✨ ❤️ ☺️ 🫨 🫎");
text("emoji-zwj", "👨‍👩‍👧‍👦 👩🏽‍💻 🏳️‍🌈 🧑‍🤝‍🧑 👁️‍🗨️ family:👨‍👩‍👧");
text("emoji-flags-skin", "🇺🇸🇯🇵🇨🇳🇫🇷 🇪🇺 👍🏻👍🏼👍🏽👍🏾👍🏿 🏴󠁧󠁢󠁳󠁣󠁴󠁿");
text("whitespace-runs", "a  b   c    d\t\te\n\nf\r\ng \r\n h\n\n\n   i   \t  \n  j");
text("whitespace-trailing", "trailing spaces   ");
text("whitespace-only", "     ");
text("whitespace-only-newlines", "\n\n \n\t\r\n  ");
text("whitespace-unicode", "a\u00A0b\u2003c\u3000d\u200Be\u2028f\u2029g\u0085h\u1680i\u202Fj");
text("leading-space", " leading single space");
text("leading-spaces", "   leading spaces");
text("numbers", "0 1 12 123 1234 12345 123456 1234567 12345678 123456789 1234567890 3.14159 -42 1e-10 0x1F 1,000,000");
text("numbers-long", "31415926535897932384626433832795028841971693993751058209749445923078164062862089986280348253421170679");
text("numbers-unicode", "٣٤٥ ۱۲۳ १२३ ①②③ ½ Ⅻ ²³ 一二三 ٠١٢٣٤٥٦٧٨٩");
text("punctuation", "!!! ??? ... --- ___ *** ### @@@ $$$ %%% ^^^ &&& ((( ))) [[[ ]]] {{{ }}} <<< >>> ||| \\\\ /// ~~~ ``` '''");
text("punct-newlines", "end.\n\nnext!\r\n\r\nmore?\n  -\n* item\n");
text("quotes", "\"double\" 'single' “curly” ‘curly’ «guillemets» „low“ 「括弧」 『二重』");
text("urls-email", "https://example.com/path?q=1&r=two#frag user.name+tag@example.co.uk ftp://x.y");
text("special-text", "<|im_user|>user<|im_middle|>Hello!<|im_end|><|im_assistant|>assistant<|im_middle|>");
text("special-glued", "x<|im_end|>y [BOS]a[EOS] [EOT][PAD][UNK] <|im_end|><|im_end|> <|im_end|x");
text("special-partial", "<|im_end| <|im_ <| |> < | > [BO S] <|reserved_token_7|> <|reserved_token_7");
text("special-chat", "<|im_system|>system<|im_middle|>You are helpful.<|im_end|><|im_user|>user<|im_middle|>中文 test 👋<|im_end|><|im_assistant|>assistant<|im_middle|>");
text("special-tools", "<|tool_calls_section_begin|><|tool_call_begin|>functions.get:0<|tool_call_argument_begin|>{\"a\":1}<|tool_call_end|><|tool_calls_section_end|>");
text("control-chars", "a\u0000b\u0001c\u0002\u0003\u0007\u0008\u000B\u000C\u000E\u001B[31m\u001F\u007F\u0080\u009F end");
text("format-chars", "zero\u200Bwidth\u200Cnon\u200Djoiner\u2060word\uFEFFbom\u00ADsoft\u202Ertl\u202C");
text("private-use-unassigned", "\uE000\uF8FF \u{F0000} \u0378\u0379 \u{1FFFE} \u{10FFFF} \u{2FFFF}");
text("unicode16-17", "\u{105C0}\u{105C1} \u{1E5D0}x \u{11380} \u{1CC00} \u{323B0}");
text("han-ext", "\u3400\u4DBF \u{20000}\u{2A6DF} \u{2B740} \u{2EBF0} \uF900\uFAFF \u{2F800} \u2E80\u2F00\u31C0\u3005\u3007");
text("math-symbols", "∀x∈ℝ: x²≥0 ⇒ √x ∑∫∂∇ ≤≥≠≈ ∞ ⊕⊗ →←↔ ℕℤℚ ∅");
text("mixed-scripts", "English中文日本語한국어Русскийالعربيةעבריתहिन्दीΕλληνικά🎉123abc");
text("apostrophes", "it's it’s 'quoted' l'homme rock'n'roll '90s ''");
text("long-word", "a".repeat(300) + " " + "ab".repeat(150) + " " + "x".repeat(70));
text("long-space-run", " ".repeat(200) + "x" + "\t".repeat(100) + "\n".repeat(50));
text("long-punct-run", "=".repeat(150) + "-".repeat(80) + "!?".repeat(60));
text("long-han-run", "中".repeat(120) + "文字".repeat(60));
text("long-number", "9".repeat(250));
text("single-char", "a");
text("single-space", " ");
text("single-newline", "\n");
text("single-han", "中");
text("single-emoji", "🎉");
text("markdown", "# Title\n\n## Sub\n\n- item 1\n- item 2\n\n```js\nconst x = 1;\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n> quote\n\n**bold** _it_ `code`");
text("latex", "\\frac{a}{b} + \\sqrt{x^2+y^2} = \\int_0^\\infty e^{-t} dt \\quad \\text{ok}");
raw("invalid-lone-bytes", [0x61, 0xff, 0x62, 0xfe, 0x63, 0x80, 0x64, 0xbf, 0x20, 0xf8, 0xfc]);
raw("invalid-truncated", [0xe4, 0xb8, 0x41, 0xe4, 0x20, 0xf0, 0x9f, 0x98, 0x20, 0xc3, 0x0a, 0xe4, 0xb8]);
raw("invalid-mixed-han", [...Buffer.from("中文"), 0xe4, ...Buffer.from("中 文"), 0xad, 0xad, ...Buffer.from("abc")]);
raw("invalid-overlong", [0x41, 0xc0, 0x80, 0x42, 0xc1, 0xbf, 0x43, 0xe0, 0x80, 0xaf, 0x44]);
raw("invalid-at-end", [...Buffer.from("hello "), 0xf0, 0x9f, 0x98]);
raw("invalid-special-adjacent", [...Buffer.from("<|im_end|>"), 0xff, ...Buffer.from("<|im_end|>x"), 0xc3]);

// Deterministic fuzz: random mixes of characters from many classes.
const pools = [
  "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", " ", "  \t\n\r",
  "'sStTdDmMlLrReEvV", ".,;:!?-_()[]{}<>/\\|@#$%^&*+=~`\"", "中文字漢語日本", "ひらがなカタカナ",
  "한국어", "éèêëñçüößÅ", "\u0301\u0308\u0300", "👋🎉🇺🇸👨‍👩‍👧\u200D\uFE0F", "٣४①½", "\u00A0\u3000\u2003",
  "\u0000\u0001\u001B\u007F", "<|im_end|>", "[EOS]",
];
let seed = 12345;
const rand = (n) => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n; };
const fuzzCount = args.fuzz ?? 100;
for (let i = 0; i < fuzzCount; i++) {
  let s = "";
  const len = 1 + rand(i % 10 === 0 ? 400 : 40);
  while ([...s].length < len) {
    const pool = [...pools[rand(pools.length)]];
    const runs = 1 + rand(4);
    for (let k = 0; k < runs; k++) s += pool[rand(pool.length)];
  }
  text(`fuzz-${i}`, s);
}

// The text llama.cpp decodes `bytes` to (src/unicode.cpp unicode_cpts_from_utf8), as a JS
// string. null when it contains code points a JS string cannot carry into llama.cpp.
function llamaText(bytes) {
  let out = "";
  const n = bytes.length;
  const cont = (k) => k < n && (bytes[k] & 0xc0) === 0x80;
  for (let i = 0; i < n;) {
    const b = bytes[i];
    let cp = 0xfffd, len = 1;
    if (b < 0x80) { cp = b; }
    else if ((b & 0xe0) === 0xc0 && cont(i + 1)) { cp = ((b & 0x1f) << 6) | (bytes[i + 1] & 0x3f); len = 2; }
    else if ((b & 0xf0) === 0xe0 && cont(i + 1) && cont(i + 2)) {
      cp = ((b & 0x0f) << 12) | ((bytes[i + 1] & 0x3f) << 6) | (bytes[i + 2] & 0x3f); len = 3;
    } else if ((b & 0xf8) === 0xf0 && cont(i + 1) && cont(i + 2) && cont(i + 3)) {
      cp = ((b & 0x07) << 18) | ((bytes[i + 1] & 0x3f) << 12) | ((bytes[i + 2] & 0x3f) << 6) | (bytes[i + 3] & 0x3f);
      len = 4;
    }
    if ((cp >= 0xd800 && cp < 0xe000) || cp > 0x10ffff) return null;
    out += String.fromCodePoint(cp);
    i += len;
  }
  return out;
}

// ---- run ----------------------------------------------------------------------------------
const llama = await loadLlama(1);
const llamaModel = await llama.loadModel({ modelPath: model, vocabOnly: true });

function ours(subcommand, argv) {
  const r = spawnSync(args.latentserve, [subcommand, "--model", model, ...argv],
    { maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`latentserve ${subcommand} failed: ${r.stderr}`);
  return r.stdout;
}

let checks = 0, failures = 0, roundTrips = 0;
const report = (msg) => { failures++; process.stdout.write(`FAIL ${msg}\n`); };
for (let i = 0; i < cases.length; i++) {
  const c = cases[i];
  const file = path.join(workDir, "cases", `${String(i).padStart(4, "0")}_${c.name}.txt`);
  fs.writeFileSync(file, c.bytes);
  const llamaString = llamaText(c.bytes);
  if (llamaString === null) { report(`${c.name}: not representable for llama.cpp`); continue; }
  const expectedBytes = Buffer.from(llamaString, "utf8");  // == c.bytes for valid UTF-8
  for (const special of [false, true]) {
    checks++;
    const got = JSON.parse(ours("tokenize", ["--text-file", file, ...(special ? ["--special"] : [])])
      .toString("utf8")).token_ids;
    const want = Array.from(llamaModel.tokenize(llamaString, special));
    const tag = `${c.name} special=${special}`;
    if (got.length !== want.length || got.some((t, k) => t !== want[k])) {
      let k = 0;
      while (k < got.length && got[k] === want[k]) k++;
      report(`${tag}: ids differ at ${k}: ours ${JSON.stringify(got.slice(k, k + 8))} ` +
        `llama.cpp ${JSON.stringify(want.slice(k, k + 8))}`);
      continue;
    }
    const idsFile = `${file}.${special ? "special" : "plain"}.ids`;
    fs.writeFileSync(idsFile, got.join(","));
    const back = ours("detokenize", ["--ids-file", idsFile]);
    roundTrips++;
    if (!back.equals(expectedBytes)) {
      report(`${tag}: round trip differs: got ${JSON.stringify(back.toString("utf8").slice(0, 80))}`);
      continue;
    }
    const llamaBack = llamaModel.detokenize(want, true);
    if (llamaBack !== back.toString("utf8")) report(`${tag}: llama.cpp detokenize differs`);
    if (args.verbose) process.stdout.write(`ok   ${tag} (${got.length} tokens)\n`);
  }
}
await llamaModel.dispose();
await llama.dispose();
const invalid = cases.filter((c) => !c.bytes.equals(Buffer.from(c.bytes.toString("utf8"), "utf8"))).length;
process.stdout.write(`${checks - failures}/${checks} tokenisations identical to llama.cpp ` +
  `(${cases.length} cases x {plain, --special}; ${invalid} cases hold invalid UTF-8), ` +
  `${roundTrips} round trips checked, ${failures} failures; files in ${workDir}\n`);
process.exit(failures ? 1 : 0);
