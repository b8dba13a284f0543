// The --help text of every subcommand (tools/usage.h). Defaults written here are the ones
// the code applies; test_cli.py checks the flag lists against each parser.
#include <utility>

#include "absl/strings/str_cat.h"
#include "tools/usage.h"

namespace latentserve::cli {
namespace {

using Flags = std::vector<FlagHelp>;

Flags Join(std::initializer_list<Flags> groups) {
  Flags out;
  for (const Flags& group : groups) out.insert(out.end(), group.begin(), group.end());
  return out;
}

// Model, backend and cache of the offline engine subcommands (tools/lib/engine_setup.cc).
Flags EngineFlags() {
  return {
      {"model", "PATH", "", "GGUF file (kimi-linear layout); its tokenizer, when present, reads text prompts"},
      {"random-weights", "CONFIG", "", "instead of --model: random weights of this shape (kimi-linear-48b-a3b)"},
      {"weight-type", "TYPE", "q4_0", "with --random-weights: f32, f16, bf16, q8_0, q4_0, q4_k, q5_k or q6_k"},
      {"weights-seed", "N", "1", "with --random-weights: seed of the weights"},
      {"backend", "cpu|cuda", "cpu", "compute backend"},
      {"device", "N", "0", "with --backend cuda: the CUDA device ordinal to run on"},
      {"threads", "N", "0", "CPU threads; 0: every core"},
      {"cache-type", "TYPE", "f16", "latent cache values: f32, f16, bf16, q8_0 or q4_0"},
      {"page-tokens", "N", "256", "tokens per cache page"},
      {"chunk", "N", "512 on cpu, 65536 on cuda", "prefill chunk in tokens"},
      {"context", "N", "prompt + generated tokens", "size the latent cache for at least N tokens"},
  };
}

Flags SamplingFlags() {
  return {
      {"max-tokens", "N", "16", "tokens to generate at most"},
      {"temperature", "T", "0", "<= 0: greedy"},
      {"top-k", "K", "0", "0: off"},
      {"top-p", "P", "1", "1: off"},
      {"min-p", "P", "0", "0: off"},
      {"seed", "N", "random (printed)", "sampling seed; give one to reproduce a sampled run"},
      {"ignore-eos", "", "", "do not stop at the model's end-of-generation token"},
  };
}

// Flags every serving process takes (serving/server_shell.cc WithCommonFlags).
Flags CommonServingFlags() {
  return {
      {"metrics-listen", "HOST:PORT", "", "serve Prometheus /metrics over HTTP here"},
      {"health-listen", "HOST:PORT", "", "plaintext grpc.health.v1 only (for kubelet probes when the port speaks TLS)"},
      {"tls-cert", "PEM", "", "serve TLS with this certificate (also the identity of internal calls)"},
      {"tls-key", "PEM", "", "private key of --tls-cert"},
      {"tls-ca", "PEM", "", "CA that signs peers: client certificates are required (mutual TLS)"},
      {"max-message-bytes", "N", "16777216", "largest gRPC message, in [4096, 1073741824]"},
      {"max-concurrent-calls", "N", "4096", "calls each gRPC server runs at once; more get RESOURCE_EXHAUSTED"},
      {"internal-token-file", "FILE", "", "shared secret of the cluster components, required on internal APIs"},
      {"internal-peer-cn", "CN", "", "certificate common name of the cluster components"},
      {"port-file", "FILE", "", "write the bound HOST:PORT here once listening (with --listen ...:0)"},
      {"drain-ms", "MS", "10000", "on SIGTERM: how long in-flight calls may finish"},
  };
}

Flags WorkerEngineFlags() {
  return {
      {"model", "PATH", "", "GGUF file to serve (this or --random-weights)"},
      {"random-weights", "CONFIG", "", "instead of --model: random weights of this shape (kimi-linear-48b-a3b)"},
      {"weight-type", "TYPE", "q4_0", "with --random-weights: f32, f16, bf16, q8_0, q4_0, q4_k, q5_k or q6_k"},
      {"weights-seed", "N", "1", "with --random-weights: seed of the weights (same on every worker)"},
      {"backend", "cpu|cuda", "cpu", "compute backend"},
      {"device", "N", "0", "with --backend cuda: the CUDA device ordinal to run on"},
      {"threads", "N", "0", "CPU threads; 0: every core"},
      {"cache-type", "TYPE", "f16", "latent cache values: f32, f16, bf16, q8_0 or q4_0"},
      {"page-tokens", "N", "256", "tokens per cache page"},
      {"cache-tokens", "N", "65536", "latent cache size in tokens: the longest prompt + output this worker holds"},
      {"chunk", "N", "512 on cpu, 65536 on cuda", "prefill chunk in tokens"},
      {"max-lease-ttl-ms", "MS", "300000", "decode: longest a page reservation lives without Decode"},
      {"prefix-cache-mib", "MIB", "0",
       "decode: memory for finished prompts' pages + KDA checkpoints kept for reuse (LRU); 0: no prefix cache"},
      {"checkpoint-interval", "N", "4096, or --chunk if larger",
       "decode: KDA checkpoint every N (>= 16) tokens inside kept prompts (prefilled here or handed off); 0: prompt ends only"},
      {"local-prefill-max-tokens", "N", "2048",
       "decode: a prompt whose uncached rest is at most N tokens is prefilled on the decode worker (no handoff)"},
  };
}

Flags RegistrationFlags() {
  return {
      {"router", "HOST:PORT[,...]", "", "router replicas to register with (this, --routers-dns, or both)"},
      {"routers-dns", "HOST:PORT", "", "register with every address HOST resolves to (a headless Service)"},
      {"advertise", "HOST:PORT", "the bound address", "address the router should call this worker on"},
      {"transport", "auto|grpc|cuda-ipc|nccl", "auto",
       "cache handoff transports offered: auto = gRPC + CUDA IPC where the backend exports memory; "
       "nccl = gRPC + NCCL (CUDA build, --backend cuda; not yet run on two GPUs); the router picks per handoff: "
       "CUDA IPC on one host, else NCCL when both offer it, else gRPC"},
  };
}

Flags RouterFlags() {
  return {
      {"lease-ttl-ms", "MS", "30000", "how long a decode page reservation lives before it must be used"},
      {"request-timeout-ms", "MS", "1800000", "deadline of a request that carries none"},
      {"capacity-wait-ms", "MS", "30000", "how long a request waits for free cache pages before RESOURCE_EXHAUSTED"},
      {"decode-progress-timeout-ms", "MS", "10000",
       "resume a request on another decode worker when its stream brings no token for this long; 0: no limit"},
      {"auth-token-file", "FILE", "", "bearer token clients must send (needs --tls-cert)"},
      {"max-prompt-tokens", "N", "0", "refuse longer prompts; 0: no limit beyond the workers' caches"},
      {"max-prompt-bytes", "N", "8388608", "refuse longer prompt texts; 0: no limit"},
      {"max-streams-per-client", "N", "0", "concurrent Generate calls per client; 0: no limit"},
      {"max-workers", "N", "1024", "most workers the registry holds"},
      {"worker-evict-ms", "MS", "60000", "forget a worker (and its metric series) after this long without an answer"},
      {"decode-pages", "grow|upfront", "grow",
       "grow: reserve the prompt + 256 tokens, add pages while decoding (a request that finds the cache full "
       "stops with finish_reason length); upfront: reserve prompt + max_tokens"},
      {"http-listen", "HOST:PORT", "", "also serve the OpenAI-compatible HTTP API here (docs/serving.md)"},
      {"http-port-file", "FILE", "", "with --http-listen: write the bound HTTP port here"},
      {"http-max-body-bytes", "N", "33554432", "with --http-listen: largest request body"},
      {"http-threads", "N", "64", "with --http-listen: HTTP worker threads"},
      {"session-ttl-ms", "MS", "3600000", "a session's lifetime when it asks none; also the longest it may ask"},
      {"session-idle-ms", "MS", "600000", "a session unused this long ends; also the longest idle timeout it may ask"},
      {"max-sessions-per-client", "N", "16", "sessions one client holds at once"},
      {"max-sessions", "N", "1024", "sessions this router holds at once"},
      {"session-max-pinned-tokens", "N", "4194304", "document tokens of pinned sessions, all clients together"},
  };
}

Flags ClientFlags() {
  return Join({{
                   {"target", "HOST:PORT", "", "the process to call (required)"},
                   {"prompt", "TEXT", "", "generate/tokenize: the prompt as text"},
                   {"prompt-file", "FILE", "", "generate/tokenize: the prompt text from a file"},
                   {"prompt-tokens", "1,2,3", "", "generate: the prompt as token ids"},
                   {"prompt-tokens-file", "FILE", "", "generate: token ids from a file (same format)"},
                   {"system", "TEXT", "", "generate: a chat prompt's system turn (with --message)"},
                   {"message", "[ROLE:]TEXT", "",
                    "generate: a chat turn, repeatable, in order; ROLE user (default), assistant or tool"},
               },
               SamplingFlags(),
               {
                   {"stop", "STR", "", "generate: stop when the text contains STR; repeatable"},
                   {"stop-token-ids", "a,b", "", "generate: stop after any of these tokens"},
                   {"model", "NAME", "the served model", "generate: model name (client info: model_name)"},
                   {"timeout-ms", "MS", "generate: none; health: 5000", "deadline of the call"},
                   {"json", "", "", "generate: print one JSON object (ids, text, usage, timing) instead of text"},
                   {"summary-file", "FILE", "", "generate: also write the --json object to FILE"},
                   {"token-times", "", "", "generate: the JSON also lists each token's arrival (token_times_ms, ms after the call started)"},
                   {"cancel-after-progress", "N", "", "testing: cancel after N prefill progress events"},
                   {"cancel-after-tokens", "N", "", "testing: cancel after N generated tokens"},
                   {"service", "NAME", "the whole server", "health: the service to check"},
                   {"session", "ID", "", "generate / session ask: the session whose document the prompt continues; "
                                         "session close: the session to end"},
                   {"pinned", "", "", "session create: never evict the document while the session lives"},
                   {"ttl-ms", "MS", "the router's", "session create: the session's lifetime"},
                   {"idle-ms", "MS", "the router's", "session create: end the session when unused this long"},
                   {"tls-ca", "PEM", "", "speak TLS, trusting this CA"},
                   {"tls-cert", "PEM", "", "client certificate (servers that require mutual TLS)"},
                   {"tls-key", "PEM", "", "key of --tls-cert"},
                   {"auth-token-file", "FILE", "", "bearer token of the router's public API (needs --tls-ca)"},
                   {"internal-token-file", "FILE", "", "operators: the cluster's internal token (stats on a worker)"},
               }});
}

std::map<std::string, Usage> BuildUsages() {
  std::map<std::string, Usage> u;
  u["serve"] = {"serve --listen HOST:PORT --model PATH [flags]",
                "Router, prefill and decode worker in one process; the cache moves in process. The public\n"
                "API (generate.proto) is on --listen.",
                Join({{{"listen", "HOST:PORT", "", "public API address (port 0: any free port) (required)"}},
                      WorkerEngineFlags(), RouterFlags(), CommonServingFlags()}),
                "latentserve serve --listen 127.0.0.1:50051 --model /tmp/m.gguf"};
  u["router"] = {"router --listen HOST:PORT [flags]",
                 "The public API: tokenises, reserves decode cache pages, picks a prefill worker. Workers\n"
                 "register with it (prefill/decode --router) or are listed with --prefill-workers/--decode-workers.",
                 Join({{{"listen", "HOST:PORT", "", "public API and worker registry address (required)"},
                        {"model", "PATH", "", "accept only workers serving this GGUF (by fingerprint)"},
                        {"prefill-workers", "A,B", "", "static prefill workers (besides those that register)"},
                        {"decode-workers", "A,B", "", "static decode workers"}},
                       RouterFlags(), CommonServingFlags()}),
                 "latentserve router --listen 0.0.0.0:50051 --metrics-listen 0.0.0.0:9090"};
  const Flags worker = Join({{{"listen", "HOST:PORT", "", "worker API address (required)"}}, RegistrationFlags(),
                             WorkerEngineFlags(), CommonServingFlags()});
  u["prefill"] = {"prefill --listen HOST:PORT --router HOST:PORT --model PATH [flags]",
                  "A prefill worker: chunked prefill, streaming latent pages and KDA state to a decode worker.",
                  Join({worker,
                        {{"prefix-read-max-mib", "MIB", "8192",
                          "largest cached prefix (latent rows + KDA state) read from a decode worker to resume a long "
                          "rest; larger ones are computed whole; 0: never read"},
                         {"fault-stall-transfer-ms", "MS", "0", "testing only: stall every cache transfer"}}}),
                  "latentserve prefill --listen 127.0.0.1:0 --router 127.0.0.1:50051 --model /tmp/m.gguf"};
  u["decode"] = {"decode --listen HOST:PORT --router HOST:PORT --model PATH [flags]",
                 "A decode worker: continuous batching over received caches, streaming tokens.",
                 Join({worker, {{"fault-stall-decode-ms", "MS", "0", "testing only: hold every token this long"}}}),
                 "latentserve decode --listen 127.0.0.1:0 --router 127.0.0.1:50051 --model /tmp/m.gguf"};
  u["client"] = {"client VERB --target HOST:PORT [flags]",
                 "Verbs: generate (a router; streams tokens), info (a router: model, context, workers),\n"
                 "tokenize (a router), stats (a prefill or decode worker's own view), health (any process;\n"
                 "exit 0 when SERVING), session create|ask|list|close (a router: a document prefilled once,\n"
                 "then questions about it; create takes the document as the prompt flags).",
                 ClientFlags(),
                 "latentserve client generate --target 127.0.0.1:50051 --system \"Be brief.\" --message \"Hi\" "
                 "--stop \"User:\" --max-tokens 32"};
  u["generate"] = {"generate --model PATH (--prompt TEXT | --prompt-file F | --prompt-tokens 1,2,3) [flags]",
                   "Load a GGUF and generate locally, streaming text (or ids).",
                   Join({{{"prompt", "TEXT", "", "the prompt as text (needs a tokenizer in the model)"},
                          {"prompt-file", "FILE", "", "the prompt text from a file"},
                          {"prompt-tokens", "1,2,3", "", "the prompt as token ids"},
                          {"prompt-tokens-file", "FILE", "", "token ids from a file"},
                          {"ids", "", "", "print token ids instead of text"},
                          {"profile", "", "", "per-part times of prefill and decode (stderr)"},
                          {"profile-overlap", "", "", "profile without per-part synchronisation"},
                          {"profiler-range", "", "",
                           "profile only the decode steps: ncu --profile-from-start off (CUDA: cudaProfilerStart/Stop)"},
                          {"batch", "N", "1",
                           "N sequences (the prompt rotated by 0..N-1 tokens) decoded together, one forward a step; "
                           "prints the aggregate decode rate and, with --ids, each sequence's ids; EOS does not stop"}},
                         SamplingFlags(), EngineFlags()}),
                   "latentserve generate --model /tmp/m.gguf --prompt \"Hello\" --max-tokens 16"};
  u["logits"] = {"logits --model PATH (--tokens 1,2,3 | --tokens-file F) [--greedy N] [flags]",
                 "Per-position logits and a greedy continuation as one JSON object (compared with llama.cpp).",
                 Join({{{"tokens", "1,2,3", "", "the prompt as token ids"},
                        {"tokens-file", "FILE", "", "token ids from a file"},
                        {"greedy", "N", "0", "greedy tokens to generate after the prompt"},
                        {"last", "", "", "print only the last position's logits (long prompts)"}},
                       EngineFlags()}),
                 "latentserve logits --model /tmp/m.gguf --tokens 1,2,3 --greedy 4"};
  u["plan"] = {"plan (--model PATH | --config kimi-linear-48b-a3b) [--context N] [flags]",
               "Memory plan for a context, as JSON: latent cache, KDA state, weights, and an MHA cache for\n"
               "comparison.",
               {{"model", "PATH", "", "a GGUF file: its shape and weight bytes"},
                {"config", "NAME", "", "instead of --model: kimi-linear-48b-a3b"},
                {"context", "N", "1048576", "tokens"},
                {"cache-type", "TYPE", "f16", "f32, f16, bf16, q8_0 or q4_0"},
                {"weight-type", "TYPE", "q4_0", "with --config: weight type (q4_k, q5_k, q6_k included)"}},
               "latentserve plan --config kimi-linear-48b-a3b --context 1048576 --cache-type q8_0"};
  u["dequantize-model"] = {"dequantize-model --model PATH --out PATH",
                           "Rewrites a GGUF with every quantised or half-precision tensor dequantised to f32\n"
                           "(metadata kept): the \"dequantised twin\" the K-quant conformance test compares on.",
                           {{"model", "PATH", "", "GGUF to read (required)"},
                            {"out", "PATH", "", "GGUF to write (required)"}},
                           "latentserve dequantize-model --model q4_k_m.gguf --out twin.gguf"};
  u["tokenize"] = {"tokenize --model PATH (--text TEXT | --text-file F) [--special] [--add-special]",
                   "The model's tokenizer: prints {\"token_ids\":[...]} (the same key as client tokenize).",
                   {{"model", "PATH", "", "GGUF with a tokenizer (a vocab-only file is enough) (required)"},
                    {"text", "TEXT", "", "text to tokenize"},
                    {"text-file", "FILE", "", "text from a file (bytes as they are)"},
                    {"special", "", "", "parse special tokens such as <|im_end|> in the text"},
                    {"add-special", "", "", "add the model's BOS/EOS tokens"}},
                   "latentserve tokenize --model /tmp/m.gguf --text \"Hello world\""};
  u["detokenize"] = {"detokenize --model PATH (--ids 1,2,3 | --ids-file F) [--no-special] [--out F]",
                     "Token ids back to the exact bytes of their text.",
                     {{"model", "PATH", "", "GGUF with a tokenizer (required)"},
                      {"ids", "1,2,3", "", "token ids"},
                      {"ids-file", "FILE", "", "token ids from a file"},
                      {"no-special", "", "", "leave special tokens out of the text"},
                      {"out", "FILE", "stdout", "write the bytes here"}},
                     "latentserve detokenize --model /tmp/m.gguf --ids 1,2,3"};
  u["bench-ops"] = {"bench-ops [--backend cuda|cpu] [flags]",
                    "Per-op times at the real model's shapes against measured ceilings (a GPU baseline).",
                    {{"backend", "cpu|cuda", "cuda", "compute backend"},
                     {"threads", "N", "0", "CPU threads; 0: every core"},
                     {"repeats", "N", "10", "timed runs per op"},
                     {"context", "N", "131072", "cached tokens of the decode ops"},
                     {"prefill-tokens", "N", "8192", "tokens of the prefill ops"},
                     {"mha-contexts", "A,B", "--context", "contexts of the MHA prefill attention op"},
                     {"moe-kernels", "LIST", "warps8,warps4", "MoE kernels to time: warps8, warps4, wgmma, predequant"},
                     {"mla-kernels", "LIST", "mma,tma_base,tma,absorbed", "MLA prefill (--mha-contexts) kernels to time: mma, tma, tma_base, absorbed"},
                     {"sections", "LIST", "handoff,decode,moe,kda,mla,mha", "which groups of rows to time (the ceilings always)"},
                     {"ops", "A,B", "every row", "only the rows whose names contain one of these (to profile one op)"}},
                    "latentserve bench-ops --backend cuda --context 131072"};
  const char* shape = "shape override (default: from --config)";
  Flags model_flags = {{"out", "PATH", "", "GGUF to write (required)"},
                       {"config", "NAME", "tiny", "preset: tiny or kimi-linear-48b-a3b"},
                       {"preset", "random|needle", "random",
                        "weights: random, or hand-built exact retrieval with a readable vocabulary (docs/needle.md)"},
                       {"seed", "N", "0", "seed of the random weights"},
                       {"name", "NAME", "from --config", "general.name"},
                       {"weight-type", "TYPE", "from --config",
                        "f32, f16, bf16, q8_0, q4_0, q4_k, q5_k, q6_k, or a mix like llama.cpp's: q4_k_m, q5_k_m "
                        "(q6_k output and attn_v / ffn_down on some layers; tools/lib/weight_mix.h)"},
                       {"threads", "N", "0", "threads that fill weights; 0: every core"},
                       {"mla-layers", "3,7", "every 4th from 3, and the last", "0-based MLA layers"}};
  for (const char* name : {"layers", "hidden", "heads", "kda-head-dim", "kv-lora-rank", "qk-nope", "qk-rope", "v-head",
                           "experts", "experts-used", "expert-ffn", "ffn", "shared-experts", "dense-layers",
                           "conv-kernel", "vocab", "context"}) {
    model_flags.push_back({name, "N", "", shape});
  }
  u["make-test-model"] = {"make-test-model --out PATH [--config tiny] [shape flags]",
                          "Write a random kimi-linear GGUF (any shape) with a small tokenizer.", model_flags,
                          "latentserve make-test-model --out /tmp/m.gguf --seed 1"};
  return u;
}

}  // namespace

const std::map<std::string, Usage>& Usages() {
  static const auto* const usages = new std::map<std::string, Usage>(BuildUsages());
  return *usages;
}

std::string FormatUsage(const Usage& usage) {
  std::string out = absl::StrCat("usage: latentserve ", usage.synopsis, "\n\n", usage.description, "\n\nflags:\n");
  for (const FlagHelp& flag : usage.flags) {
    std::string left = absl::StrCat("  --", flag.name, flag.value.empty() ? "" : " ", flag.value);
    if (left.size() < 30) left.resize(30, ' ');
    absl::StrAppend(&out, left, " ", flag.help);
    if (!flag.default_value.empty()) absl::StrAppend(&out, " (default: ", flag.default_value, ")");
    out += "\n";
  }
  absl::StrAppend(&out, "\nexample:\n  ", usage.example, "\n");
  return out;
}

}  // namespace latentserve::cli
