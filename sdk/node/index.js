// Node client of latentserve's public gRPC API (latentserve.v1.Generation), on @grpc/grpc-js.
//
// The proto is loaded with keepCase: true, so fields keep the proto's snake_case names
// (max_tokens, token_ids): proto-loader's default camelCase would silently drop snake_case
// fields a caller writes (the server then sees max_tokens 0). int64 fields come back as
// Numbers (token counts and byte totals stay far below 2^53), enums as their names.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const here = path.dirname(fileURLToPath(import.meta.url));

// The public proto: packed into the package (npm pack), else the checkout's proto/ (a linked
// `npm install ./sdk/node`), else LATENTSERVE_PROTO_DIR.
function protoDir() {
  const candidates = [process.env.LATENTSERVE_PROTO_DIR, path.join(here, "proto"), path.join(here, "..", "..", "proto")];
  for (const dir of candidates) {
    if (dir && fs.existsSync(path.join(dir, "latentserve", "v1", "generate.proto"))) return dir;
  }
  throw new Error("latentserve: generate.proto not found (set LATENTSERVE_PROTO_DIR to the checkout's proto/ folder)");
}

export const LOADER_OPTIONS = Object.freeze({
  keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true, includeDirs: [],
});

let generation = null;
function generationService() {
  if (!generation) {
    const dir = protoDir();
    const definition = protoLoader.loadSync("latentserve/v1/generate.proto", { ...LOADER_OPTIONS, includeDirs: [dir] });
    generation = grpc.loadPackageDefinition(definition).latentserve.v1.Generation;
  }
  return generation;
}

const FINISH = {
  FINISH_REASON_LENGTH: "length", FINISH_REASON_STOP_TOKEN: "stop_token", FINISH_REASON_STOP_STRING: "stop_string",
};
const RETRYABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.RESOURCE_EXHAUSTED]);

// A failed call: `code` (grpc status number), `codeName` ("INVALID_ARGUMENT"), `details`
// (the server's message), `metadata`, `retryable` (UNAVAILABLE, RESOURCE_EXHAUSTED).
export class LatentserveError extends Error {
  constructor(code, details, metadata) {
    const codeName = Object.keys(grpc.status).find((k) => grpc.status[k] === code) ?? "UNKNOWN";
    super(`${codeName}: ${details}`);
    this.name = "LatentserveError";
    this.code = code;
    this.codeName = codeName;
    this.details = details;
    this.metadata = metadata;
    this.retryable = RETRYABLE.has(code);
  }
}

function toError(error) {
  if (error instanceof LatentserveError || typeof error?.code !== "number") return error;
  return new LatentserveError(error.code, error.details ?? error.message, error.metadata);
}

function toChunk(event) {
  if (event.event === "progress") {
    return { kind: "progress", tokens_done: event.progress.tokens_done, tokens_total: event.progress.tokens_total };
  }
  if (event.event === "tokens") return { kind: "tokens", text: event.tokens.text, token_ids: event.tokens.token_ids };
  const f = event.finished;
  return { kind: "finished", finish_reason: FINISH[f.reason] ?? "unspecified", usage: f.usage, timings: f.timings,
           request_id: f.request_id };
}

function chatOf(messages) {
  return { messages: messages.map((m) => (Array.isArray(m) ? { role: m[0], content: m[1] } : m)) };
}

function generateRequest(options) {
  const { prompt, prompt_tokens, messages } = options;
  if ([prompt, prompt_tokens, messages].filter((x) => x !== undefined).length !== 1) {
    throw new TypeError("give exactly one of prompt, prompt_tokens or messages");
  }
  const stop = typeof options.stop === "string" ? [options.stop] : options.stop ?? [];
  const request = {
    model: options.model ?? "",
    request_id: options.request_id ?? "",
    session_id: options.session_id ?? "",
    sampling: { temperature: options.temperature ?? 0, top_k: options.top_k ?? 0, top_p: options.top_p ?? 0,
                min_p: options.min_p ?? 0, seed: options.seed ?? 0 },
    stopping: { max_tokens: options.max_tokens ?? 256, stop_token_ids: options.stop_token_ids ?? [],
                stop_strings: stop, ignore_eos: options.ignore_eos ?? false },
  };
  if (prompt !== undefined) request.text = prompt;
  else if (prompt_tokens !== undefined) request.tokens = { ids: prompt_tokens };
  else request.chat = chatOf(messages);
  return request;
}

// ttl / idle timeout in milliseconds; 0 or absent: the router's defaults (which also cap them).
function createSessionRequest(options) {
  const { document, document_tokens, messages } = options;
  if ([document, document_tokens, messages].filter((x) => x !== undefined).length !== 1) {
    throw new TypeError("give exactly one of document, document_tokens or messages");
  }
  for (const name of ["ttl_ms", "idle_timeout_ms"]) {
    const value = options[name] ?? 0;
    if (!Number.isSafeInteger(value) || value < 0) throw new TypeError(`${name} must be an integer >= 0`);
  }
  const request = {
    model: options.model ?? "", request_id: options.request_id ?? "", pinned: options.pinned ?? false,
    ttl_ms: options.ttl_ms ?? 0, idle_timeout_ms: options.idle_timeout_ms ?? 0,
  };
  if (document !== undefined) request.text = document;
  else if (document_tokens !== undefined) request.tokens = { ids: document_tokens };
  else request.chat = { ...chatOf(messages), add_generation_prompt: false };  // questions continue the turns
  return request;
}

// A connection to a latentserve router (or `serve`).
// options: tls (system roots), rootCerts / privateKey / certChain (PEM Buffers or file
// paths; the last two for mutual TLS), token (bearer), timeoutMs (default deadline).
export class Client {
  constructor(target, options = {}) {
    const pem = (v) => (v === undefined || Buffer.isBuffer(v) ? v : fs.readFileSync(v));
    const tls = options.tls || options.rootCerts || options.privateKey || options.certChain;
    if (options.token && !tls) throw new TypeError("a bearer token needs TLS (the server refuses tokens in plaintext)");
    let credentials = tls
      ? grpc.credentials.createSsl(pem(options.rootCerts) ?? null, pem(options.privateKey) ?? null,
                                   pem(options.certChain) ?? null)
      : grpc.credentials.createInsecure();
    if (options.token) {
      const header = `Bearer ${options.token}`;
      credentials = grpc.credentials.combineChannelCredentials(credentials,
        grpc.credentials.createFromMetadataGenerator((_, done) => {
          const metadata = new grpc.Metadata();
          metadata.set("authorization", header);
          done(null, metadata);
        }));
    }
    const Generation = generationService();
    this._stub = new Generation(target, credentials, options.channelOptions ?? {});
    this._timeoutMs = options.timeoutMs;
  }

  _callOptions(timeoutMs) {
    const ms = timeoutMs ?? this._timeoutMs;
    return ms === undefined ? {} : { deadline: new Date(Date.now() + ms) };
  }

  // Streams one prompt: an async iterable of chunks ({kind: "progress" | "tokens" |
  // "finished", ...}). Leaving the loop early (break, throw) cancels the request.
  generate(options) {
    const call = this._stub.Generate(generateRequest(options), this._callOptions(options.timeoutMs));
    const iterate = async function* () {
      try {
        for await (const event of call) yield toChunk(event);
      } catch (error) {
        throw toError(error);
      } finally {
        call.cancel();  // a no-op once the call has ended
      }
    };
    const stream = iterate();
    stream.cancel = () => call.cancel();
    return stream;
  }

  // The whole answer: {text, token_ids, finish_reason, usage, timings, request_id}.
  async complete(options) {
    const text = [];
    const token_ids = [];
    let finished = null;
    for await (const chunk of this.generate(options)) {
      if (chunk.kind === "tokens") {
        text.push(chunk.text);
        token_ids.push(...chunk.token_ids);
      } else if (chunk.kind === "finished") {
        finished = chunk;
      }
    }
    if (!finished) throw new Error("the stream ended without a finished event");
    const { kind, ...rest } = finished;
    return { text: text.join(""), token_ids, ...rest };
  }

  chat(messages, options = {}) {
    return this.complete({ ...options, messages });
  }

  _unary(method, request, timeoutMs) {
    return new Promise((resolve, reject) => {
      this._stub[method](request, this._callOptions(timeoutMs), (error, response) =>
        (error ? reject(toError(error)) : resolve(response)));
    });
  }

  // Token ids of {text} or {messages}, as generate would see them.
  async tokenize({ text, messages, model = "", timeoutMs } = {}) {
    if ((text === undefined) === (messages === undefined)) throw new TypeError("give exactly one of text or messages");
    const request = text !== undefined ? { model, text } : { model, chat: chatOf(messages) };
    return (await this._unary("Tokenize", request, timeoutMs)).token_ids;
  }

  // The served model and every worker's state (GetModelInfoResponse, snake_case fields).
  info({ timeoutMs } = {}) {
    return this._unary("GetModelInfo", {}, timeoutMs ?? 5000);
  }

  // A document session: the document prefilled once and kept; resolves when it is in the
  // cache with {session_id, document_tokens, pinned, created_unix_ms, last_used_unix_ms,
  // expires_unix_ms, decode_worker, requests, reprefills, prefill_ms}. options: exactly one of
  // document (text), document_tokens (ids) or messages; pinned, ttl_ms, idle_timeout_ms.
  async createSession(options) {
    const response = await this._unary("CreateSession", createSessionRequest(options), options.timeoutMs);
    return { ...response.session, prefill_ms: response.prefill_ms };
  }

  // complete() of a suffix (prompt, prompt_tokens or messages) over a session's document.
  ask(sessionId, options) {
    return this.complete({ ...options, session_id: sessionId });
  }

  // This client's sessions.
  async listSessions({ timeoutMs } = {}) {
    return (await this._unary("ListSessions", {}, timeoutMs)).sessions;
  }

  // Ends a session and frees its document's cache (NOT_FOUND: unknown, expired or another client's).
  async closeSession(sessionId, { timeoutMs } = {}) {
    await this._unary("CloseSession", { session_id: sessionId }, timeoutMs);
  }

  close() {
    this._stub.close();
  }
}

export { grpc };
