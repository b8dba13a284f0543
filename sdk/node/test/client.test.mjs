// The Node SDK against a real `serve` on loopback (LATENTSERVE_BIN: the binary).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Client, LatentserveError, grpc } from "latentserve";

const BIN = process.env.LATENTSERVE_BIN;
if (!BIN) throw new Error("set LATENTSERVE_BIN to the latentserve binary");
const work = fs.mkdtempSync(path.join(os.tmpdir(), "latentserve-node-sdk-"));
const log = path.join(work, "serve.log");
let serve, target, client;

async function waitFor(predicate, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = predicate();
    if (value) return value;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

before(async () => {
  const model = path.join(work, "m.gguf");
  execFileSync(BIN, ["make-test-model", "--out", model, "--context", "8192", "--seed", "7"], { stdio: "ignore" });
  const portFile = path.join(work, "port");
  const out = fs.openSync(log, "w");
  serve = spawn(BIN, ["serve", "--listen", "127.0.0.1:0", "--port-file", portFile, "--model", model, "--threads", "1",
                      "--chunk", "64"], { stdio: ["ignore", out, out] });
  await waitFor(() => fs.existsSync(portFile), 30000, "serve to listen");
  target = fs.readFileSync(portFile, "utf8").trim();
  client = new Client(target, { timeoutMs: 60000 });
});

after(() => {
  client?.close();
  serve?.kill("SIGKILL");
  fs.rmSync(work, { recursive: true, force: true });
});

function cppClient(prompt, maxTokens) {
  const out = execFileSync(BIN, ["client", "generate", "--target", target, "--prompt", prompt, "--max-tokens",
                                 String(maxTokens), "--json"], { encoding: "utf8" });
  return JSON.parse(out.trim().split("\n").at(-1));
}

test("generate streams progress, tokens and a finish; max_tokens arrives (keepCase)", async () => {
  const chunks = [];
  for await (const chunk of client.generate({ prompt: "The quick brown fox", max_tokens: 7, ignore_eos: true })) {
    chunks.push(chunk);
  }
  assert.equal(chunks[0].kind, "progress");
  assert.equal(chunks.at(-1).kind, "finished");
  assert.equal(chunks.at(-1).finish_reason, "length");
  assert.equal(chunks.at(-1).usage.completion_tokens, 7);
  assert.equal(typeof chunks.at(-1).usage.prompt_tokens, "number");
  assert.equal(chunks.filter((c) => c.kind === "tokens").flatMap((c) => c.token_ids).length, 7);
});

test("the same greedy answer as the C++ client; token ids and chat prompts", async () => {
  const answer = await client.complete({ prompt: "Hello world", max_tokens: 10 });
  const reference = cppClient("Hello world", 10);
  assert.deepEqual(answer.token_ids, reference.token_ids);
  assert.equal(answer.text, reference.text);
  const ids = await client.tokenize({ text: "Hello world" });
  const byIds = await client.complete({ prompt_tokens: ids, max_tokens: 10 });
  assert.deepEqual(byIds.token_ids, answer.token_ids);
  const messages = [{ role: "system", content: "be brief" }, ["user", "Hi there"]];
  const chat = await client.chat(messages, { max_tokens: 4, ignore_eos: true });
  assert.equal(chat.usage.completion_tokens, 4);
  assert.equal(chat.usage.prompt_tokens, (await client.tokenize({ messages })).length);
  const info = await client.info();
  assert.ok(info.has_tokenizer && info.vocab_size > 0);
  assert.deepEqual(new Set(info.workers.filter((w) => w.alive).map((w) => w.role)), new Set(["prefill", "decode"]));
});

test("errors keep the gRPC code", async () => {
  await assert.rejects(client.complete({ prompt: "x", max_tokens: 0 }), (error) => {
    assert.ok(error instanceof LatentserveError);
    assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(error.codeName, "INVALID_ARGUMENT");
    assert.match(error.details, /max_tokens/);
    assert.equal(error.retryable, false);
    return true;
  });
  await assert.rejects(client.complete({ prompt: "x", max_tokens: 1, model: "nope" }),
                       (error) => error.code === grpc.status.NOT_FOUND);
  await assert.rejects(client.complete({ prompt: "x", max_tokens: 4000, ignore_eos: true, timeoutMs: 300 }),
                       (error) => error.code === grpc.status.DEADLINE_EXCEEDED);
  const nobody = new Client("127.0.0.1:1", { timeoutMs: 2000 });
  await assert.rejects(nobody.info(), (error) => error.code === grpc.status.UNAVAILABLE && error.retryable);
  nobody.close();
  assert.throws(() => client.generate({ prompt: "x", prompt_tokens: [1] }), TypeError);
  assert.throws(() => new Client(target, { token: "t" }), TypeError);
});

test("leaving the loop cancels the request on the server", async () => {
  for await (const chunk of client.generate({ prompt: "Tell me everything", max_tokens: 4000, ignore_eos: true,
                                              request_id: "node-cancel-1" })) {
    if (chunk.kind === "tokens") break;
  }
  const finished = await waitFor(() => fs.readFileSync(log, "utf8").split("\n").filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l)).find((e) => e.request_id === "node-cancel-1" && e.event === "request_finished"),
  20000, "the server to end the request");
  assert.equal(finished.code, "CANCELLED");
});

test("npm install into a fresh project, then the README snippet streams the answer", async () => {
  const sdk = path.resolve(path.dirname(new URL(import.meta.url).pathname), "..");
  const project = path.join(work, "project");
  fs.mkdirSync(project);
  fs.writeFileSync(path.join(project, "package.json"), JSON.stringify({ name: "p", private: true, type: "module" }));
  execFileSync("npm", ["install", "--install-links", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error",
                       sdk], { cwd: project, stdio: "ignore", timeout: 120000 });
  const readme = fs.readFileSync(path.join(sdk, "README.md"), "utf8");
  const snippet = readme.split("```js\n")[1].split("```")[0];
  assert.ok(snippet.trim().split("\n").length <= 5);
  fs.writeFileSync(path.join(project, "main.mjs"), snippet.replace("127.0.0.1:50051", target));
  const out = execFileSync(process.execPath, ["main.mjs"], { cwd: project, encoding: "utf8", timeout: 60000,
                                                              env: { ...process.env, LATENTSERVE_PROTO_DIR: "" } });
  assert.ok(out.length > 0, "the snippet printed an answer");
  assert.equal(out, (await client.complete({ prompt: "Hello", max_tokens: 32 })).text);
});

test("sessions: create, ask (sequential and parallel), list, close", async (t) => {
  // Its own serve with a prefix cache (which the one above lacks: there every prompt streams
  // progress from the prefill worker).
  const portFile = path.join(work, "sessions.port");
  const out = fs.openSync(path.join(work, "sessions.log"), "w");
  const server = spawn(BIN, ["serve", "--listen", "127.0.0.1:0", "--port-file", portFile, "--model",
                             path.join(work, "m.gguf"), "--threads", "1", "--chunk", "64", "--prefix-cache-mib", "64"],
                       { stdio: ["ignore", out, out] });
  t.after(() => server.kill("SIGKILL"));
  await waitFor(() => fs.existsSync(portFile), 30000, "serve to listen");
  const client = new Client(fs.readFileSync(portFile, "utf8").trim(), { timeoutMs: 60000 });
  t.after(() => client.close());
  const document = Array.from({ length: 150 }, (_, i) => ((7 * i) % 250) + 3);
  const question = [11, 12, 13, 14, 15];
  const plain = await client.complete({ prompt_tokens: [...document, ...question], max_tokens: 6, ignore_eos: true });
  const session = await client.createSession({ document_tokens: document, pinned: true, idle_timeout_ms: 120000 });
  assert.match(session.session_id, /^sess-[0-9a-f]{32}$/);
  assert.equal(session.document_tokens, document.length);
  assert.equal(session.pinned, true);
  assert.ok(session.prefill_ms > 0);
  const answer = await client.ask(session.session_id, { prompt_tokens: question, max_tokens: 6, ignore_eos: true });
  assert.deepEqual(answer.token_ids, plain.token_ids);
  assert.equal(answer.usage.prompt_tokens, document.length + question.length);
  assert.equal(answer.usage.cached_tokens, document.length);
  const parallel = await Promise.all([0, 1, 2].map(() =>
    client.ask(session.session_id, { prompt_tokens: question, max_tokens: 6, ignore_eos: true })));
  for (const a of parallel) assert.deepEqual(a.token_ids, plain.token_ids);
  const text = await client.ask(session.session_id, { prompt: " and then", max_tokens: 3, ignore_eos: true });
  assert.equal(text.usage.completion_tokens, 3);
  const listed = await client.listSessions();
  assert.deepEqual(listed.map((s) => [s.session_id, s.requests]), [[session.session_id, 5]]);
  await client.closeSession(session.session_id);
  assert.deepEqual(await client.listSessions(), []);
  await assert.rejects(client.ask(session.session_id, { prompt_tokens: question, max_tokens: 1 }),
                       (e) => e instanceof LatentserveError && e.codeName === "NOT_FOUND" && /session/i.test(e.details));
  await assert.rejects(client.closeSession(session.session_id), (e) => e.codeName === "NOT_FOUND");
  await assert.rejects(client.createSession({ document: "x", document_tokens: [1] }), TypeError);
});
