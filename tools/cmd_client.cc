// The `client` subcommand: calls a router (generate with streaming, info, tokenize) or any
// serving process (stats, health) over gRPC, with the same TLS / token flags as the servers.
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "client/health_check.h"
#include "common/args.h"
#include "common/error_details.h"
#include "common/status.h"
#include "serving/security.h"
#include "tools/cli.h"
#include "tools/client_verbs.h"
#include "tools/lib/engine_setup.h"
#include "worker/stats_service.h"

namespace latentserve::cli {
namespace {

// ---- client ----

// Keys in the order written (the summary reads top-down).
using Json = nlohmann::ordered_json;

// One line of compact JSON; bytes that are not UTF-8 (a cut multi-byte character) become U+FFFD.
std::string JsonLine(const Json& value) {
  return value.dump(-1, ' ', /*ensure_ascii=*/false, Json::error_handler_t::replace) + "\n";
}

void PrintJson(const Json& value) {
  const std::string line = JsonLine(value);
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fflush(stdout);
}

const char* FinishReasonName(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_LENGTH: return "length";
    case v1::FINISH_REASON_STOP_TOKEN: return "stop_token";
    case v1::FINISH_REASON_STOP_STRING: return "stop_string";
    default: return "unspecified";
  }
}

// The error as {"error": {"code", "message"[, "reason", "metadata"][, "retry_delay_ms"]}} (the
// last ones from the server's ErrorInfo / RetryInfo) and a line on stderr.
int ClientError(const absl::Status& status, bool json) {
  const std::string code = absl::StatusCodeToString(status.code());
  const ErrorDetails details = DetailsOf(status);
  std::string extra;
  if (!details.reason.empty()) extra = absl::StrCat(" [", details.reason, "]");
  if (details.retry_delay) {
    absl::StrAppend(&extra, " (retry after ", absl::FormatDuration(*details.retry_delay), ")");
  }
  if (json) {
    Json error = {{"code", code}, {"message", std::string(status.message())}};
    if (!details.reason.empty()) {
      error["reason"] = details.reason;
      error["metadata"] = details.metadata;
    }
    if (details.retry_delay) error["retry_delay_ms"] = absl::ToInt64Milliseconds(*details.retry_delay);
    PrintJson({{"error", std::move(error)}});
  }
  std::fprintf(stderr, "latentserve client: %s: %s%s\n", code.c_str(), std::string(status.message()).c_str(),
               extra.c_str());
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

// A connection that failed before any reply ("Socket closed", a failed handshake) says nothing
// about TLS; this adds what to check, from the client's own TLS flags.
absl::Status WithTlsHint(const absl::Status& status, const Args& args) {
  // A status with typed details is the server's own answer: the connection worked.
  if (status.code() != absl::StatusCode::kUnavailable || !DetailsOf(status).empty()) return status;
  const std::string message(status.message());
  const bool connection_level = absl::StrContains(message, "Socket closed") ||
                                absl::StrContains(message, "failed to connect") ||
                                absl::StrContains(message, "Connection reset") ||
                                absl::StrContains(absl::AsciiStrToLower(message), "handshake");
  if (!connection_level) return status;
  const char* hint = args.Has("tls-ca")
                         ? " (TLS: check that --tls-ca signed the server's certificate and, if the server requires "
                           "client certificates, pass --tls-cert/--tls-key signed by its CA)"
                         : " (no --tls-ca: if the server speaks TLS, pass --tls-ca CA.pem, and --tls-cert/--tls-key "
                           "when it requires client certificates)";
  return absl::UnavailableError(absl::StrCat(message, hint));
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A 64-bit flag value that the request carries as int32: out of range is an error, never
// a silent truncation or clamp.
absl::StatusOr<int32_t> Int32Flag(const char* flag, int64_t value) {
  if (value < INT32_MIN || value > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, " ", value, " does not fit a 32-bit integer"));
  }
  return static_cast<int32_t>(value);
}

// --system TEXT and --message [ROLE:]TEXT (repeatable, in order) as chat turns; the router
// renders them with the model's chat template.
absl::StatusOr<v1::ChatMessages> ChatFromArgs(const Args& args) {
  v1::ChatMessages chat;
  if (args.Has("system")) {
    v1::ChatMessage* turn = chat.add_messages();
    turn->set_role("system");
    turn->set_content(args.Get("system"));
  }
  for (const std::string& message : args.GetAll("message")) {
    v1::ChatMessage* turn = chat.add_messages();
    turn->set_role("user");
    turn->set_content(message);
    for (const char* role : {"user", "assistant", "tool"}) {
      const std::string prefix = absl::StrCat(role, ":");
      if (absl::StartsWith(message, prefix)) {
        turn->set_role(role);
        turn->set_content(std::string(absl::StripLeadingAsciiWhitespace(message.substr(prefix.size()))));
      }
    }
  }
  if (chat.messages_size() == 0 || chat.messages(chat.messages_size() - 1).role() == "system") {
    return absl::InvalidArgumentError("--system needs at least one --message (the user's turn)");
  }
  return chat;
}

absl::StatusOr<v1::GenerateRequest> RequestFromArgs(const Args& args) {
  v1::GenerateRequest request;
  if (args.Has("prompt-tokens") || args.Has("prompt-tokens-file")) {
    std::string text = args.Get("prompt-tokens");
    if (args.Has("prompt-tokens-file")) {
      ASSIGN_OR_RETURN(text, ReadFile(args.Get("prompt-tokens-file")));
    }
    ASSIGN_OR_RETURN(std::vector<int64_t> ids, ParseIntList(text));
    auto* tokens = request.mutable_tokens();
    for (int64_t id : ids) {
      if (id < INT32_MIN || id > INT32_MAX) return absl::InvalidArgumentError(absl::StrCat("token id ", id, " does not fit int32"));
      tokens->add_ids(static_cast<int32_t>(id));
    }
  } else if (args.Has("prompt")) {
    request.set_text(args.Get("prompt"));
  } else if (args.Has("prompt-file")) {
    ASSIGN_OR_RETURN(std::string text, ReadFile(args.Get("prompt-file")));
    request.set_text(text);
  } else if (args.Has("message") || args.Has("system")) {
    ASSIGN_OR_RETURN(*request.mutable_chat(), ChatFromArgs(args));
  } else {
    return absl::InvalidArgumentError(
        "give --prompt-tokens, --prompt-tokens-file, --prompt, --prompt-file or chat turns (--message, --system)");
  }
  const int prompt_kinds = args.Has("prompt-tokens") + args.Has("prompt-tokens-file") + args.Has("prompt") +
                           args.Has("prompt-file") + (args.Has("message") || args.Has("system"));
  if (prompt_kinds != 1) {
    return absl::InvalidArgumentError(
        "give one prompt: --prompt-tokens, --prompt-tokens-file, --prompt, --prompt-file, or --message turns "
        "(with an optional --system)");
  }
  request.set_model(args.Get("model"));
  request.set_session_id(args.Get("session"));
  ASSIGN_OR_RETURN(int64_t max_tokens, args.GetInt("max-tokens", 16));
  ASSIGN_OR_RETURN(int32_t max_tokens32, Int32Flag("max-tokens", max_tokens));
  request.mutable_stopping()->set_max_tokens(max_tokens32);
  request.mutable_stopping()->set_ignore_eos(args.Has("ignore-eos"));
  for (const std::string& stop : args.GetAll("stop")) request.mutable_stopping()->add_stop_strings(stop);
  if (args.Has("stop-token-ids")) {
    ASSIGN_OR_RETURN(std::vector<int64_t> ids, ParseIntList(args.Get("stop-token-ids")));
    for (int64_t id : ids) {
      ASSIGN_OR_RETURN(int32_t id32, Int32Flag("stop-token-ids", id));
      request.mutable_stopping()->add_stop_token_ids(id32);
    }
  }
  ASSIGN_OR_RETURN(double temperature, args.GetDouble("temperature", 0.0));
  ASSIGN_OR_RETURN(int64_t top_k, args.GetInt("top-k", 0));
  ASSIGN_OR_RETURN(double top_p, args.GetDouble("top-p", 1.0));
  ASSIGN_OR_RETURN(double min_p, args.GetDouble("min-p", 0.0));
  // Unset: random, as OpenAI and vLLM do; the summary prints the seed so a run can be repeated.
  bool random_seed = false;
  ASSIGN_OR_RETURN(uint64_t seed, SeedFromArgs(args, &random_seed));
  auto* sampling = request.mutable_sampling();
  sampling->set_temperature(static_cast<float>(temperature));
  ASSIGN_OR_RETURN(int32_t top_k32, Int32Flag("top-k", top_k));
  sampling->set_top_k(top_k32);
  sampling->set_top_p(static_cast<float>(top_p));
  sampling->set_min_p(static_cast<float>(min_p));
  sampling->set_seed(seed);
  return request;
}

// How the client reaches --target: TLS when --tls-ca is given (plus --tls-cert/--tls-key for
// mutual TLS), `authorization: Bearer` from --auth-token-file, and the internal token from
// --internal-token-file (operators only: e.g. `client stats` on a worker).
struct Connection {
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  std::string bearer_token;
  std::vector<std::pair<std::string, std::string>> metadata;  // beyond the bearer token
};

absl::StatusOr<Connection> ConnectionFromArgs(const Args& args) {
  ASSIGN_OR_RETURN(serving::TlsFiles tls, serving::TlsFilesFromArgs(args));
  Connection connection;
  ASSIGN_OR_RETURN(connection.credentials, serving::MakeChannelCredentials(tls));
  if (args.Has("auth-token-file")) {
    if (!tls.enabled()) {
      return absl::InvalidArgumentError(
          "--auth-token-file needs --tls-ca: the token would cross the network in plaintext (and a router only "
          "checks tokens under TLS)");
    }
    ASSIGN_OR_RETURN(connection.bearer_token, serving::ReadTokenFile(args.Get("auth-token-file")));
  }
  if (args.Has("internal-token-file")) {
    ASSIGN_OR_RETURN(std::string internal, serving::ReadTokenFile(args.Get("internal-token-file")));
    connection.metadata.emplace_back(serving::kInternalTokenMetadata, std::move(internal));
  }
  return connection;
}

absl::StatusOr<std::unique_ptr<client::GenerationClient>> ClientFromArgs(const Args& args) {
  ASSIGN_OR_RETURN(Connection connection, ConnectionFromArgs(args));
  return std::make_unique<client::GenerationClient>(args.Get("target"), std::move(connection.credentials),
                                                    std::move(connection.bearer_token), std::move(connection.metadata));
}

#define ASSIGN_OR_RETURN_CLIENT(name, args)                                 \
  auto name##_or = ClientFromArgs(args);                                    \
  if (!name##_or.ok()) return ClientError(name##_or.status(), true);       \
  client::GenerationClient& name = **name##_or

int RunClientGenerate(const Args& args) {
  const bool json = args.Has("json");
  auto request = RequestFromArgs(args);
  if (!request.ok()) return ClientError(request.status(), json);
  auto timeout_ms = args.GetInt("timeout-ms", 0);
  auto cancel_after_progress = args.GetInt("cancel-after-progress", -1);
  auto cancel_after_tokens = args.GetInt("cancel-after-tokens", -1);
  if (!timeout_ms.ok() || !cancel_after_progress.ok() || !cancel_after_tokens.ok()) {
    return ClientError(absl::InvalidArgumentError("--timeout-ms / --cancel-after-* must be integers"), json);
  }
  ASSIGN_OR_RETURN_CLIENT(client, args);
  int64_t progress_events = 0, tokens_seen = 0;
  const bool tty_progress = !json && isatty(STDERR_FILENO);
  client::GenerateCallbacks callbacks;
  callbacks.on_progress = [&](const v1::PrefillProgress& p) {
    ++progress_events;
    if (!json) {
      const int width = 30;
      const int filled = p.tokens_total() ? static_cast<int>(width * p.tokens_done() / p.tokens_total()) : 0;
      std::fprintf(stderr, "%sprefill [%s%s] %lld/%lld tokens, %.1f MiB cache sent%s", tty_progress ? "\r" : "",
                   std::string(filled, '#').c_str(), std::string(width - filled, ' ').c_str(),
                   static_cast<long long>(p.tokens_done()), static_cast<long long>(p.tokens_total()),
                   p.cache_bytes_sent() / 1048576.0, tty_progress ? "" : "\n");
    }
    return *cancel_after_progress < 0 || progress_events < *cancel_after_progress;
  };
  bool first_chunk = true;
  // Client-side wall clock, so that concurrent clients' streams can be lined up (a benchmark's
  // window where all of them decode): each token's arrival, ms after the call started.
  const absl::Time started = absl::Now();
  std::vector<double> token_ms;
  // A text prompt streams text only: a token without text (EOS) is not printed as its id.
  const bool text_prompt = args.Has("prompt") || args.Has("prompt-file");
  callbacks.on_tokens = [&](const v1::TokenChunk& chunk) {
    if (!json) {
      if (first_chunk && tty_progress) std::fprintf(stderr, "\n");
      if (!chunk.text().empty()) {
        std::fwrite(chunk.text().data(), 1, chunk.text().size(), stdout);
      } else if (!text_prompt && chunk.token_ids_size() > 0) {
        for (int32_t id : chunk.token_ids()) std::printf("%s%d", tokens_seen || !first_chunk ? "," : "", id);
      }
      std::fflush(stdout);
    }
    first_chunk = false;
    token_ms.insert(token_ms.end(), chunk.token_ids_size(), absl::ToDoubleMilliseconds(absl::Now() - started));
    tokens_seen += chunk.token_ids_size();
    return *cancel_after_tokens < 0 || tokens_seen < *cancel_after_tokens;
  };
  const absl::Duration timeout = *timeout_ms > 0 ? absl::Milliseconds(*timeout_ms) : absl::InfiniteDuration();
  auto result = client.Generate(*request, callbacks, timeout);
  if (!result.ok()) {
    if (!json) std::printf("\n");
    return ClientError(WithTlsHint(result.status(), args), json);
  }
  const double end_ms = absl::ToDoubleMilliseconds(absl::Now() - started);
  const v1::Finished& f = result->finished;
  Json fields = {
      {"token_ids", result->token_ids},
      {"text", result->text},
      {"finish_reason", FinishReasonName(f.reason())},
      {"usage",
       {{"prompt_tokens", f.usage().prompt_tokens()},
        {"completion_tokens", f.usage().completion_tokens()},
        {"cache_bytes_transferred", f.usage().cache_bytes_transferred()},
        {"cached_tokens", f.usage().cached_tokens()},
        {"cache_transport", f.usage().cache_transport()}}},
      {"timing",
       {{"ttft_ms", f.timings().ttft_ms()},
        {"decode_tokens_per_s", f.timings().decode_tokens_per_s()},
        {"prefill_ms", f.timings().prefill_ms()},
        {"transfer_tail_ms", f.timings().transfer_tail_ms()},
        {"client_start_unix_ms", absl::ToUnixMicros(started) / 1e3},
        {"client_first_token_ms", token_ms.empty() ? -1.0 : token_ms.front()},
        {"client_end_ms", end_ms}}},
      {"prefill_worker", f.prefill_worker()},
      {"decode_worker", f.decode_worker()},
      {"request_id", f.request_id()},
      {"progress_events", progress_events},
      {"seed", request->sampling().seed()},
  };
  if (args.Has("token-times")) fields["token_times_ms"] = token_ms;
  const std::string summary = JsonLine(fields);
  if (args.Has("summary-file")) {
    std::ofstream(args.Get("summary-file")) << summary;
  }
  if (json) {
    std::fputs(summary.c_str(), stdout);
  } else {
    std::printf("\n");
    std::fprintf(stderr,
                 "[%s] prompt %lld tokens, %lld generated; TTFT %.1f ms, decode %.1f tok/s, %.2f MiB cache moved; "
                 "seed %llu\n",
                 FinishReasonName(f.reason()), static_cast<long long>(f.usage().prompt_tokens()),
                 static_cast<long long>(f.usage().completion_tokens()), f.timings().ttft_ms(),
                 f.timings().decode_tokens_per_s(), f.usage().cache_bytes_transferred() / 1048576.0,
                 static_cast<unsigned long long>(request->sampling().seed()));
  }
  return 0;
}

Json WorkerJson(const v1::WorkerInfo& w) {
  return {{"address", w.address()},
          {"role", w.role()},
          {"alive", w.alive()},
          {"cache_pages_free", w.cache_pages_free()},
          {"cache_pages_total", w.cache_pages_total()},
          {"leases_active", w.leases_active()},
          {"sequences_active", w.sequences_active()},
          {"outstanding_cost", w.outstanding_cost()},
          {"draining", w.draining()},
          {"prefix_pages", w.prefix_pages()},
          {"prefix_entries", w.prefix_entries()},
          {"prefix_pinned_entries", w.prefix_pinned_entries()},
          {"prefix_checkpoints", w.prefix_checkpoints()},
          {"prefix_checkpoint_bytes", w.prefix_checkpoint_bytes()},
          {"prefix_lookups", w.prefix_lookups()},
          {"prefix_hits", w.prefix_hits()},
          {"prefix_cached_tokens", w.prefix_cached_tokens()},
          {"prefix_evictions", w.prefix_evictions()}};
}

int RunClientInfo(const Args& args) {
  ASSIGN_OR_RETURN_CLIENT(client, args);
  auto info = client.GetModelInfo();
  if (!info.ok()) return ClientError(WithTlsHint(info.status(), args), true);
  Json workers = Json::array();
  for (const v1::WorkerInfo& w : info->workers()) workers.push_back(WorkerJson(w));
  PrintJson({{"model_name", info->model_name()},
             {"model_fingerprint", info->model_fingerprint()},
             {"vocab_size", info->vocab_size()},
             {"max_context_tokens", info->max_context_tokens()},
             {"has_tokenizer", info->has_tokenizer()},
             {"router_leases_active", info->router_leases_active()},
             {"workers", std::move(workers)}});
  return 0;
}

// One worker's own view of itself (WorkerStats), e.g. to watch a worker the router lost.
int RunClientStats(const Args& args) {
  auto connection = ConnectionFromArgs(args);
  if (!connection.ok()) return ClientError(connection.status(), true);
  // The same credentials as the other verbs send (a public token is refused PERMISSION_DENIED).
  std::vector<std::pair<std::string, std::string>> metadata = connection->metadata;
  if (!connection->bearer_token.empty()) metadata.emplace_back("authorization", "Bearer " + connection->bearer_token);
  auto stats = worker::GetWorkerStats(args.Get("target"), connection->credentials, metadata, absl::Seconds(5));
  if (!stats.ok() && stats.status().code() == absl::StatusCode::kUnimplemented) {
    return ClientError(absl::UnimplementedError(absl::StrCat(
                           args.Get("target"), " serves no latentserve.internal.v1.WorkerStats: it is not a prefill or decode "
                           "worker (a router, or the public port of `serve`?). `client info --target ", args.Get("target"),
                           "` shows a router's workers with the same fields; `client stats` takes a worker's address")),
                       true);
  }
  if (!stats.ok()) return ClientError(WithTlsHint(stats.status(), args), true);
  v1::WorkerInfo w = stats->stats();
  w.set_role(stats->role());
  w.set_alive(true);
  PrintJson(WorkerJson(w));
  return 0;
}

// grpc.health.v1 Check, like grpc_health_probe: prints {"status":"SERVING"}; exit 0 only
// when SERVING.
int RunClientHealth(const Args& args) {
  auto tls = serving::TlsFilesFromArgs(args);
  if (!tls.ok()) return ClientError(tls.status(), true);
  auto credentials = serving::MakeChannelCredentials(*tls);
  if (!credentials.ok()) return ClientError(credentials.status(), true);
  auto timeout_ms = args.GetInt("timeout-ms", 5000);
  if (!timeout_ms.ok() || *timeout_ms <= 0) {
    return ClientError(absl::InvalidArgumentError("--timeout-ms must be a positive integer"), true);
  }
  auto status = client::CheckHealth(args.Get("target"), *credentials, args.Get("service"),
                                    absl::Milliseconds(*timeout_ms));
  if (!status.ok()) return ClientError(WithTlsHint(status.status(), args), true);
  PrintJson({{"status", *status}});
  return *status == "SERVING" ? 0 : 1;
}

int RunClientTokenize(const Args& args) {
  ASSIGN_OR_RETURN_CLIENT(client, args);
  v1::TokenizeRequest request;
  if (args.Has("prompt-file")) {
    auto text = ReadFile(args.Get("prompt-file"));
    if (!text.ok()) return ClientError(text.status(), true);
    request.set_text(*text);
  } else {
    request.set_text(args.Get("prompt"));
  }
  auto ids = client.Tokenize(request);
  if (!ids.ok()) return ClientError(WithTlsHint(ids.status(), args), true);
  PrintJson({{"token_ids", *ids}});
  return 0;
}

int RunClient(int argc, char** argv) {
  constexpr const char* kUsage = "usage: latentserve client generate|info|stats|health|tokenize|session --target HOST:PORT "
                                 "[flags] (latentserve client --help: every flag)\n";
  if (argc < 1) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string verb = argv[0];
  auto args = Args::Parse(argc - 1, argv + 1,
                          {"target", "prompt-tokens", "prompt-tokens-file", "prompt", "prompt-file", "system",
                           "message", "max-tokens",
                           "temperature", "top-k", "top-p", "min-p", "seed", "stop", "stop-token-ids", "model",
                           "timeout-ms", "cancel-after-progress", "cancel-after-tokens", "summary-file", "tls-ca",
                           "tls-cert", "tls-key", "auth-token-file", "internal-token-file", "service", "session",
                           "ttl-ms", "idle-ms"},
                          {"json", "ignore-eos", "pinned", "token-times"});
  if (!args.ok()) {
    std::fprintf(stderr, "latentserve client: %s\n%s", std::string(args.status().message()).c_str(), kUsage);
    return 2;
  }
  if (!args->Has("target")) {
    std::fprintf(stderr, "latentserve client: --target HOST:PORT is required\n%s", kUsage);
    return 2;
  }
  if (verb == "generate") return RunClientGenerate(*args);
  if (verb == "info") return RunClientInfo(*args);
  if (verb == "stats") return RunClientStats(*args);
  if (verb == "health") return RunClientHealth(*args);
  if (verb == "tokenize") return RunClientTokenize(*args);
  if (verb == "session") return RunClientSession(*args);
  std::fprintf(stderr, "latentserve client: unknown verb '%s'\n%s", verb.c_str(), kUsage);
  return 2;
}

Registrar client_cmd("client", "call a router: generate (streaming), info, tokenize; a worker: stats", RunClient);

}  // namespace

void PrintClientJson(const ClientJson& value) { PrintJson(value); }
int ClientFail(const absl::Status& status, bool json) { return ClientError(status, json); }
absl::StatusOr<v1::GenerateRequest> ClientRequestFromArgs(const Args& args) { return RequestFromArgs(args); }
absl::StatusOr<std::unique_ptr<client::GenerationClient>> MakeClient(const Args& args) { return ClientFromArgs(args); }
int ClientGenerate(const Args& args) { return RunClientGenerate(args); }

}  // namespace latentserve::cli
