// The HTTP front (--http-listen) against a real `serve` process on loopback, driven by the
// official `openai` npm client (streaming, non-streaming, a cancel, bad requests) and by
// curl. The greedy answers are checked against the gRPC API's (`latentserve client`).
//
// Run: LATENTSERVE_BIN=build/bin/latentserve node --test tests/http/openai_front.test.mjs
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync, execFile } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import OpenAI from "openai";

const BIN = process.env.LATENTSERVE_BIN;
if (!BIN) throw new Error("set LATENTSERVE_BIN to the latentserve binary");
const work = fs.mkdtempSync(path.join(os.tmpdir(), "latentserve-http-"));
const model = path.join(work, "m.gguf");
let log, serve, grpcTarget, httpBase, client;
const servers = [];

async function waitFor(predicate, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = predicate();
    if (value) return value;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; serve log:\n${fs.readFileSync(log, "utf8")}`);
}

// The router's structured log lines (serving/metrics.cc LogEvent) for one request id.
function events(requestId, logFile = log) {
  return fs.readFileSync(logFile, "utf8").split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l))
    .filter((e) => e.request_id === requestId);
}

function curl(args) {
  return new Promise((resolve, reject) => {
    execFile("curl", ["-sS", "--max-time", "60", "-w", "\n%{http_code}", ...args], (error, stdout) => {
      if (error) return reject(error);
      const cut = stdout.lastIndexOf("\n");
      resolve({ body: stdout.slice(0, cut), status: Number(stdout.slice(cut + 1)) });
    });
  });
}

// One `serve` with the HTTP front; its gRPC target, HTTP base URL, log and an openai client.
async function startServe(name, flags) {
  const dir = path.join(work, name);
  fs.mkdirSync(dir);
  const grpcPort = path.join(dir, "grpc.port");
  const httpPort = path.join(dir, "http.port");
  const logFile = path.join(dir, "serve.log");
  const out = fs.openSync(logFile, "w");
  const proc = spawn(BIN, ["serve", "--listen", "127.0.0.1:0", "--port-file", grpcPort, "--http-listen", "127.0.0.1:0",
                           "--http-port-file", httpPort, "--model", model, "--threads", "1", "--chunk", "64", ...flags],
                     { stdio: ["ignore", out, out] });
  servers.push(proc);
  log = log ?? logFile;
  await waitFor(() => fs.existsSync(grpcPort) && fs.existsSync(httpPort), 30000, `${name} to listen`);
  const base = `http://${fs.readFileSync(httpPort, "utf8").trim()}`;
  return { proc, log: logFile, grpcTarget: fs.readFileSync(grpcPort, "utf8").trim(), httpBase: base,
           client: new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 0, timeout: 60000 }) };
}

before(async () => {
  execFileSync(BIN, ["make-test-model", "--out", model, "--context", "8192", "--seed", "7"], { stdio: "ignore" });
  ({ proc: serve, grpcTarget, httpBase, client } = await startServe("main", ["--http-max-body-bytes", "65536"]));
});

after(() => {
  for (const proc of servers) proc.kill("SIGKILL");
  fs.rmSync(work, { recursive: true, force: true });
});

// The gRPC API's greedy answer for the same prompt (the reference the HTTP answers must equal).
function grpcGreedy(prompt, maxTokens, target = grpcTarget) {
  const out = execFileSync(BIN, ["client", "generate", "--target", target, "--prompt", prompt, "--max-tokens",
                                 String(maxTokens), "--ignore-eos", "--json"], { encoding: "utf8" });
  return JSON.parse(out.trim().split("\n").at(-1));
}

test("models and health", async () => {
  const models = await client.models.list();
  assert.equal(models.data.length, 1);
  assert.equal(models.data[0].object, "model");
  assert.deepEqual(await client.models.retrieve(models.data[0].id), models.data[0]);
  await assert.rejects(client.models.retrieve("other"), (error) => error.status === 404);
  const health = await curl([`${httpBase}/health`]);
  assert.equal(health.status, 200);
  assert.deepEqual(JSON.parse(health.body), { status: "ok" });
});

test("completion: non-streaming and streaming give the gRPC API's greedy text", async () => {
  const prompt = "The quick brown fox";
  const done = await client.completions.create({ model: "", prompt, max_tokens: 12, temperature: 0,
                                                 ignore_eos: true });
  assert.equal(done.object, "text_completion");
  assert.equal(done.choices[0].finish_reason, "length");
  assert.equal(done.usage.completion_tokens, 12);
  assert.ok(done.usage.prompt_tokens > 0);
  assert.equal(done.usage.total_tokens, done.usage.prompt_tokens + 12);
  assert.ok(done.choices[0].text.length > 0);
  const stream = await client.completions.create({ prompt, max_tokens: 12, temperature: 0, ignore_eos: true,
                                                   stream: true });
  let text = "";
  let finish = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.text ?? "";
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(text, done.choices[0].text);
  assert.equal(finish, "length");
  const reference = grpcGreedy(prompt, 12);
  assert.equal(text, reference.text);
  assert.equal(done.usage.prompt_tokens, reference.usage.prompt_tokens);
});

test("chat: streaming with include_usage equals the non-streaming answer", async () => {
  const messages = [{ role: "system", content: "be brief" }, { role: "user", content: "Hello there" }];
  const done = await client.chat.completions.create({ model: "", messages, max_tokens: 10, temperature: 0,
                                                      ignore_eos: true });
  assert.equal(done.object, "chat.completion");
  assert.equal(done.choices[0].message.role, "assistant");
  assert.equal(done.usage.completion_tokens, 10);
  const stream = await client.chat.completions.create({ messages, max_tokens: 10, temperature: 0, ignore_eos: true,
                                                        stream: true, stream_options: { include_usage: true } });
  let content = "";
  let role = null;
  let usage = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, "chat.completion.chunk");
    if (chunk.usage) {
      assert.deepEqual(chunk.choices, []);
      usage = chunk.usage;
      continue;
    }
    role = chunk.choices[0].delta.role ?? role;
    content += chunk.choices[0].delta.content ?? "";
  }
  assert.ok(chunks >= 3, `a stream of chunks, got ${chunks}`);
  assert.equal(role, "assistant");
  assert.equal(content, done.choices[0].message.content);
  assert.deepEqual(usage, done.usage);
});

test("a client that goes away cancels its request", async () => {
  const controller = new AbortController();
  const stream = await client.chat.completions.create(
    { messages: [{ role: "user", content: "Tell me everything" }], max_tokens: 4000, temperature: 0, ignore_eos: true,
      stream: true },
    { signal: controller.signal });
  let id = null;
  let received = 0;
  try {
    for await (const chunk of stream) {
      id = chunk.id;
      if (++received === 3) {
        controller.abort();  // openai v4 ends the iteration quietly on its own abort
        break;
      }
    }
  } catch (error) {
    assert.equal(error.name, "AbortError");
  }
  assert.equal(received, 3);
  const finished = await waitFor(() => events(id).find((e) => e.event === "request_finished"), 20000,
                                 `request ${id} to finish on the server`);
  assert.equal(finished.code, "CANCELLED");
});

test("the per-client stream limit holds for HTTP clients, apart from gRPC clients", async () => {
  const limited = await startServe("limited", ["--max-streams-per-client", "1"]);
  const controller = new AbortController();
  const stream = await limited.client.completions.create(
    { prompt: "Keep going", max_tokens: 8000, temperature: 0, ignore_eos: true, stream: true },
    { signal: controller.signal });
  const iterator = stream[Symbol.asyncIterator]();
  const first = await iterator.next();
  const id = first.value.id;
  // A second stream of this HTTP client: 429, the gRPC API's RESOURCE_EXHAUSTED.
  await assert.rejects(limited.client.completions.create({ prompt: "x", max_tokens: 2 }), (error) => {
    assert.equal(error.status, 429);
    assert.match(error.message, /per-client limit/);
    return true;
  });
  // A gRPC client on the same address has its own budget.
  assert.equal(grpcGreedy("Hi", 2, limited.grpcTarget).usage.completion_tokens, 2);
  controller.abort();
  await iterator.return?.();
  const finished = await waitFor(() => events(id, limited.log).find((e) => e.event === "request_finished"), 20000,
                                 `request ${id} to end`);
  assert.equal(finished.client, "http:127.0.0.1");
  limited.proc.kill("SIGKILL");
});

test("a non-streaming client that goes away cancels its request too", async () => {
  // curl gives up after 0.5 s; the answer (8000 tokens) would take seconds. The front notices
  // on its next probe write and the router logs the request CANCELLED.
  const body = JSON.stringify({ prompt: "Go on", max_tokens: 8000, temperature: 0, ignore_eos: true });
  await assert.rejects(curl(["--max-time", "0.5", "-d", body, `${httpBase}/v1/completions`]));
  const cancelled = () => fs.readFileSync(log, "utf8").split("\n").filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l))
    .find((e) => e.event === "request_finished" && e.request_id.startsWith("cmpl-") && e.code === "CANCELLED");
  await waitFor(cancelled, 20000, "the abandoned completion to be cancelled");
});

test("bad requests get OpenAI errors with the right status", async () => {
  await assert.rejects(client.completions.create({ prompt: "x", logprobs: 2 }), (error) => {
    assert.equal(error.status, 400);
    assert.match(error.message, /'logprobs' is not supported/);
    assert.equal(error.type, "invalid_request_error");
    return true;
  });
  await assert.rejects(client.chat.completions.create({ model: "no-such-model",
                                                        messages: [{ role: "user", content: "x" }] }),
                       (error) => error.status === 404 && error.code === "model_not_found");
  await assert.rejects(client.completions.create({ prompt: "x", max_tokens: 100000 }),
                       (error) => error.status === 400 && /context|tokens/.test(error.message));
});

test("curl: SSE on the wire, oversized and malformed bodies, unknown routes", async () => {
  const sse = await curl(["-N", "-H", "Content-Type: application/json", "-d",
                          JSON.stringify({ prompt: "Hi", max_tokens: 3, temperature: 0, ignore_eos: true, stream: true }),
                          `${httpBase}/v1/completions`]);
  assert.equal(sse.status, 200);
  const data = sse.body.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6));
  assert.equal(data.at(-1), "[DONE]");
  assert.equal(JSON.parse(data.at(-2)).choices[0].finish_reason, "length");
  const big = await curl(["-H", "Content-Type: application/json", "-d",
                          JSON.stringify({ prompt: "x".repeat(70000) }), `${httpBase}/v1/completions`]);
  assert.equal(big.status, 413);
  assert.match(JSON.parse(big.body).error.message, /http-max-body-bytes/);
  const broken = await curl(["-H", "Content-Type: application/json", "-d", "{\"prompt\": ", `${httpBase}/v1/completions`]);
  assert.equal(broken.status, 400);
  assert.match(JSON.parse(broken.body).error.message, /not valid JSON/);
  const missing = await curl([`${httpBase}/v1/embeddings`]);
  assert.equal(missing.status, 404);
  assert.ok(JSON.parse(missing.body).error.message);
});

test("router --http-listen without workers: 503 on /health and on requests", async () => {
  const dir = path.join(work, "router");
  fs.mkdirSync(dir);
  const httpPort = path.join(dir, "http.port");
  const out = fs.openSync(path.join(dir, "router.log"), "w");
  const router = spawn(BIN, ["router", "--listen", "127.0.0.1:0", "--port-file", path.join(dir, "grpc.port"),
                             "--http-listen", "127.0.0.1:0", "--http-port-file", httpPort],
                       { stdio: ["ignore", out, out] });
  servers.push(router);
  await waitFor(() => fs.existsSync(httpPort), 30000, "the router's HTTP front");
  const base = `http://${fs.readFileSync(httpPort, "utf8").trim()}`;
  const health = await curl([`${base}/health`]);
  assert.equal(health.status, 503);
  const routerClient = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 0 });
  await assert.rejects(routerClient.completions.create({ prompt: "x", max_tokens: 2 }), (error) => {
    assert.equal(error.status, 503);
    assert.match(error.message, /no live prefill and decode workers/);
    return true;
  });
  router.kill("SIGKILL");
});
