// Types of the latentserve Node client. Message fields keep the proto's snake_case names
// (proto/latentserve/v1/generate.proto); int64 fields are numbers, enums their names.
import type * as grpc from "@grpc/grpc-js";

export type Role = "system" | "user" | "assistant" | "tool";
export type ChatMessage = { role: Role | string; content: string } | [Role | string, string];

export interface GenerateOptions {
  /** Exactly one of prompt (text), prompt_tokens (ids) or messages (chat turns). */
  prompt?: string;
  prompt_tokens?: number[];
  messages?: ChatMessage[];
  /** Tokens to generate at most (default 256). */
  max_tokens?: number;
  /** <= 0: greedy (default 0). */
  temperature?: number;
  top_k?: number;
  top_p?: number;
  min_p?: number;
  seed?: number;
  stop?: string | string[];
  stop_token_ids?: number[];
  ignore_eos?: boolean;
  /** Empty: the served model. */
  model?: string;
  request_id?: string;
  /** A session (createSession): the prompt is a suffix of its document. */
  session_id?: string;
  /** Deadline of this call in ms (default: the client's timeoutMs). */
  timeoutMs?: number;
}

export interface CreateSessionOptions {
  /** Exactly one of document (text), document_tokens (ids) or messages (chat turns). */
  document?: string;
  document_tokens?: number[];
  messages?: ChatMessage[];
  /** Never evicted for room while the session lives. */
  pinned?: boolean;
  /** Lifetime / idle limit in ms; 0 or absent: the router's defaults (which also cap them). */
  ttl_ms?: number;
  idle_timeout_ms?: number;
  model?: string;
  request_id?: string;
  timeoutMs?: number;
}

export interface Session {
  /** "sess-" + 128 random bits. */
  session_id: string;
  document_tokens: number;
  pinned: boolean;
  created_unix_ms: number;
  last_used_unix_ms: number;
  expires_unix_ms: number;
  /** The decode worker holding the document. */
  decode_worker: string;
  requests: number;
  /** Times the document was prefilled again after its worker was lost. */
  reprefills: number;
  /** createSession only: the document's prefill. */
  prefill_ms?: number;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  /** Latent rows plus KDA state moved from the prefill to the decode worker. */
  cache_bytes_transferred: number;
  /** Prompt tokens resumed from a cached prefix (a session's document). */
  cached_tokens: number;
}

export interface Timings {
  ttft_ms: number;
  decode_tokens_per_s: number;
  prefill_ms: number;
  transfer_tail_ms: number;
}

export type FinishReason = "length" | "stop_token" | "stop_string" | "unspecified";

export type Chunk =
  | { kind: "progress"; tokens_done: number; tokens_total: number }
  | { kind: "tokens"; text: string; token_ids: number[] }
  | { kind: "finished"; finish_reason: FinishReason; usage: Usage; timings: Timings; request_id: string };

export interface Completion {
  text: string;
  token_ids: number[];
  finish_reason: FinishReason;
  usage: Usage;
  timings: Timings;
  request_id: string;
}

export interface GenerateStream extends AsyncGenerator<Chunk, void, undefined> {
  /** Stops the request on the server (router, prefill and decode workers drop it). */
  cancel(): void;
}

export interface WorkerInfo {
  address: string;
  role: "prefill" | "decode" | string;
  alive: boolean;
  cache_pages_free: number;
  cache_pages_total: number;
  page_tokens: number;
  leases_active: number;
  sequences_active: number;
  outstanding_cost: number;
  draining: boolean;
}

export interface ModelInfo {
  model_name: string;
  model_fingerprint: string;
  vocab_size: number;
  max_context_tokens: number;
  has_tokenizer: boolean;
  workers: WorkerInfo[];
  router_leases_active: number;
}

export interface ClientOptions {
  /** TLS with the system roots (implied by any of the PEM options). */
  tls?: boolean;
  /** PEM as a Buffer or a file path. */
  rootCerts?: Buffer | string;
  privateKey?: Buffer | string;
  certChain?: Buffer | string;
  /** Bearer token (the server's --auth-token-file); needs TLS. */
  token?: string;
  /** Default deadline of every call, in ms. */
  timeoutMs?: number;
  channelOptions?: grpc.ChannelOptions;
}

export declare const LOADER_OPTIONS: Readonly<Record<string, unknown>>;

export declare class LatentserveError extends Error {
  /** grpc.status number. */
  code: number;
  /** "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", ... */
  codeName: string;
  /** The server's message. */
  details: string;
  metadata?: grpc.Metadata;
  /** UNAVAILABLE or RESOURCE_EXHAUSTED: the same request may succeed later. */
  retryable: boolean;
}

export declare class Client {
  constructor(target: string, options?: ClientOptions);
  generate(options: GenerateOptions): GenerateStream;
  complete(options: GenerateOptions): Promise<Completion>;
  chat(messages: ChatMessage[], options?: Omit<GenerateOptions, "prompt" | "prompt_tokens" | "messages">):
    Promise<Completion>;
  tokenize(options: { text?: string; messages?: ChatMessage[]; model?: string; timeoutMs?: number }):
    Promise<number[]>;
  info(options?: { timeoutMs?: number }): Promise<ModelInfo>;
  createSession(options: CreateSessionOptions): Promise<Session>;
  ask(sessionId: string, options: Omit<GenerateOptions, "session_id">): Promise<Completion>;
  listSessions(options?: { timeoutMs?: number }): Promise<Session[]>;
  closeSession(sessionId: string, options?: { timeoutMs?: number }): Promise<void>;
  close(): void;
}

export { grpc };
