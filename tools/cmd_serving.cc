// Serving subcommands: router, prefill, decode, serve (all roles in one process).
// Each role is one gRPC server with the health service and reflection; SIGTERM drains it.
#if __has_include("latentserve/v1/generate.grpc.pb.h")

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <iterator>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/ascii.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "client/health_check.h"
#include "common/args.h"
#include "common/dtype.h"
#include "common/secure_random.h"
#include "common/status.h"
#include "decode/decode_service.h"
#include "http/openai_front.h"
#include "prefill/prefill_service.h"
#include "router/announcer_set.h"
#include "router/generation_service.h"
#include "serving/metrics.h"
#include "serving/security.h"
#include "tools/cli.h"
#include "tools/serving_process.h"
#include "tools/lib/engine_setup.h"
#include "transfer/fingerprint.h"
#include "transfer/grpc_transport.h"
#include "transfer/inproc_transport.h"

namespace latentserve::cli {
namespace {

// ---- worker roles ----

// The flags of every worker engine (prefill, decode and serve); a split worker adds how it
// registers, prefill its fault injection. Each list is what tools/usage_text.cc documents.
const std::set<std::string> kWorkerFlags = WithCommonFlags({"listen", "model", "port-file", "threads", "cache-type",
                                                             "page-tokens", "cache-tokens", "chunk", "backend",
                                                             "drain-ms", "max-lease-ttl-ms"});

std::set<std::string> SplitWorkerFlags(bool prefill) {
  std::set<std::string> flags = kWorkerFlags;
  flags.insert({"router", "routers-dns", "advertise"});
  flags.insert(prefill ? "fault-stall-transfer-ms" : "fault-stall-decode-ms");
  return flags;
}

// --max-lease-ttl-ms (decode): the longest a lease may live without Decode, whatever a
// caller's ReserveLease/RenewLease asks for.
absl::StatusOr<absl::Duration> MaxLeaseTtlFromArgs(const Args& args) {
  ASSIGN_OR_RETURN(int64_t max_lease_ttl_ms, args.GetInt("max-lease-ttl-ms", 300000));
  if (max_lease_ttl_ms <= 0 || max_lease_ttl_ms > 86400000) {
    return absl::InvalidArgumentError("--max-lease-ttl-ms must be in [1, 86400000] (one day)");
  }
  return absl::Milliseconds(max_lease_ttl_ms);
}

struct LoadedEngine {
  Engine engine;
  v1::ModelDescriptor descriptor;
};

// One startup line per engine: the context it holds and the memory that costs (DESIGN.md §2),
// so an operator sees the plan of a 1,048,576-token deployment before the first request.
void LogMemoryPlan(const char* role, const Engine& engine) {
  const model::LatentCache& cache = *engine.cache;
  const int64_t context = cache.total_pages() * cache.page_tokens();
  const auto gib = [](double bytes) { return bytes / (1 << 30); };
  serving::LogEvent(role, "memory_plan", "",
                    {{"context_tokens", context},
                     {"page_tokens", cache.page_tokens()},
                     {"cache_type", DTypeName(cache.dtype())},
                     {"chunk_tokens", engine.chunk_tokens},
                     {"backend", engine.backend->name()},
                     {"latent_cache_gib", gib(static_cast<double>(cache.total_bytes()))},
                     {"weights_gib", gib(static_cast<double>(engine.model->weights().bytes))},
                     {"kda_state_mib_per_sequence", engine.model->KdaStateBytes() / 1048576.0}});
}

absl::StatusOr<LoadedEngine> LoadEngine(const Args& args, const char* role) {
  ASSIGN_OR_RETURN(int64_t cache_tokens, args.GetInt("cache-tokens", 65536));
  if (cache_tokens <= 0) return absl::InvalidArgumentError("--cache-tokens must be positive");
  ASSIGN_OR_RETURN(std::string path, args.Require("model"));
  LoadedEngine loaded;
  ASSIGN_OR_RETURN(loaded.engine, EngineFromArgs(args, cache_tokens));
  LogMemoryPlan(role, loaded.engine);
  ASSIGN_OR_RETURN(std::string fingerprint, transfer::ModelFingerprint(path));
  char resolved[PATH_MAX];
  loaded.descriptor.set_path(realpath(path.c_str(), resolved) ? resolved : path);
  const gguf::File* file = loaded.engine.model->file();  // null with --random-weights
  auto name = file ? file->GetString("general.name") : absl::StatusOr<std::string>(absl::NotFoundError(""));
  loaded.descriptor.set_name(name.ok() ? *name : path.substr(path.rfind('/') + 1));
  loaded.descriptor.set_fingerprint(fingerprint);
  loaded.descriptor.set_vocab_size(loaded.engine.model->vocab());
  loaded.descriptor.set_cache_dtype(transfer::ToProtoDType(loaded.engine.cache->dtype()));
  loaded.descriptor.set_max_context_tokens(loaded.engine.cache->total_pages() * loaded.engine.cache->page_tokens());
  return loaded;
}

// What differs between the two worker roles; ServeWorker does the rest.
struct WorkerRole {
  const char* name;                                           // "prefill" or "decode"
  grpc::Service* service;                                     // the role's gRPC service
  std::function<v1::WorkerInfo(const std::string&)> info;     // stats, given the advertised address
  std::function<void()> start_drain;                          // stop taking work (SIGTERM)
  std::function<decode::DecodeStats()> decode_stats;          // decode only
};

// --router A[,B...] (each router replica by address) and/or --routers-dns HOST:PORT (every
// address HOST resolves to: a headless Service of router replicas). At least one is needed.
absl::StatusOr<std::vector<std::string>> RoutersFromArgs(const Args& args) {
  std::vector<std::string> routers;
  for (absl::string_view r : absl::StrSplit(args.Get("router"), ',', absl::SkipWhitespace())) {
    routers.emplace_back(absl::StripAsciiWhitespace(r));
  }
  if (args.Has("routers-dns")) {
    const std::string dns = args.Get("routers-dns");
    const size_t colon = dns.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == dns.size()) {
      return absl::InvalidArgumentError(absl::StrCat("--routers-dns must be HOST:PORT, got '", dns, "'"));
    }
  }
  if (routers.empty() && !args.Has("routers-dns")) {
    return absl::InvalidArgumentError("--router HOST:PORT[,HOST:PORT...] or --routers-dns HOST:PORT is required");
  }
  return routers;
}

// Serves a worker role until SIGTERM/SIGINT: its service and WorkerStats on --listen, metrics,
// and registration + heartbeats with the router.
absl::Status ServeWorker(const Args& args, sigset_t signals, const LoadedEngine& loaded,
                         const ProcessSecurity& security, const serving::InternalAuthorizer& auth,
                         const WorkerRole& role) {
  ASSIGN_OR_RETURN(std::string listen, args.Require("listen"));
  ASSIGN_OR_RETURN(std::vector<std::string> routers, RoutersFromArgs(args));
  ASSIGN_OR_RETURN(int64_t drain_ms, args.GetInt("drain-ms", 10000));
  std::string address;
  auto info = [&] { return role.info(address); };
  WorkerStatsService stats(role.name, loaded.descriptor, info, auth);
  ASSIGN_OR_RETURN(Listening server, StartServer(listen, {role.service, &stats}, security));
  ASSIGN_OR_RETURN(std::unique_ptr<grpc::Server> health, StartHealth(args));
  const std::string model_name = loaded.descriptor.name();
  ASSIGN_OR_RETURN(std::unique_ptr<serving::MetricsServer> metrics,
                   StartMetrics(args, {role.name}, [model_name] { return model_name; }));
  AddCacheGauges(metrics.get(), role.name, info);
  if (role.decode_stats) AddDecodeCounters(metrics.get(), role.decode_stats);
  address = args.Get("advertise", server.address);
  RETURN_IF_ERROR(Announce(args, server.address));
  router::AnnouncerSet announcers(routers, args.Get("routers-dns"), address, role.name, loaded.descriptor, info);
  ServeUntilSignal(signals, server.address, WithHealth({server.server.get()}, health), role.start_drain, absl::Milliseconds(drain_ms));
  return absl::OkStatus();
}

absl::Status RunPrefill(int argc, char** argv) {
  sigset_t signals = BlockShutdownSignals();
  ASSIGN_OR_RETURN(Args args, Args::Parse(argc, argv, SplitWorkerFlags(/*prefill=*/true)));
  RETURN_IF_ERROR(args.Require("listen").status());  // flag errors before the model loads
  RETURN_IF_ERROR(RoutersFromArgs(args).status());
  ASSIGN_OR_RETURN(ProcessSecurity security, SecurityFromArgs(args));
  ASSIGN_OR_RETURN(auto auth, InternalAuthorizerFromArgs(args, "prefill", false));
  ASSIGN_OR_RETURN(int64_t stall_ms, args.GetInt("fault-stall-transfer-ms", 0));
  ASSIGN_OR_RETURN(LoadedEngine loaded, LoadEngine(args, "prefill"));
  transfer::GrpcTransport transport(32 << 20, [] { return serving::InternalChannelCredentials(); },
                                    [](grpc::ClientContext& context) { serving::AttachInternalCredential(context); });
  prefill::PrefillWorker worker(*loaded.engine.model, *loaded.engine.cache, transport, loaded.descriptor.fingerprint(),
                                loaded.engine.chunk_tokens);
  if (stall_ms > 0) {
    std::fprintf(stderr, "prefill: TESTING ONLY: every cache transfer stalls %lld ms (--fault-stall-transfer-ms)\n",
                 static_cast<long long>(stall_ms));
    worker.SetFaultStallTransfer(absl::Milliseconds(stall_ms));
  }
  prefill::PrefillService service(worker, loaded.descriptor, *auth);
  return ServeWorker(args, signals, loaded, security, *auth,
                     {"prefill", &service, [&](const std::string& address) { return service.Info(address); },
                      [&] { worker.StartDrain(); }, nullptr});
}

absl::Status RunDecode(int argc, char** argv) {
  sigset_t signals = BlockShutdownSignals();
  ASSIGN_OR_RETURN(Args args, Args::Parse(argc, argv, SplitWorkerFlags(/*prefill=*/false)));
  RETURN_IF_ERROR(args.Require("listen").status());
  RETURN_IF_ERROR(RoutersFromArgs(args).status());
  ASSIGN_OR_RETURN(ProcessSecurity security, SecurityFromArgs(args));
  ASSIGN_OR_RETURN(auto auth, InternalAuthorizerFromArgs(args, "decode", false));
  ASSIGN_OR_RETURN(absl::Duration max_lease_ttl, MaxLeaseTtlFromArgs(args));
  ASSIGN_OR_RETURN(LoadedEngine loaded, LoadEngine(args, "decode"));
  decode::DecodeWorker worker(*loaded.engine.model, *loaded.engine.cache, loaded.descriptor.fingerprint(),
                              max_lease_ttl);
  decode::DecodeService service(worker, loaded.descriptor, *auth);
  ASSIGN_OR_RETURN(int64_t stall_ms, args.GetInt("fault-stall-decode-ms", 0));
  if (stall_ms < 0) return absl::InvalidArgumentError("--fault-stall-decode-ms must be >= 0");
  if (stall_ms > 0) {
    std::fprintf(stderr, "decode: TESTING ONLY: every token waits %lld ms before it is sent (--fault-stall-decode-ms)\n",
                 static_cast<long long>(stall_ms));
    service.SetFaultStallTokens(absl::Milliseconds(stall_ms));
  }
  return ServeWorker(args, signals, loaded, security, *auth,
                     {"decode", &service, [&](const std::string& address) { return service.Info(address); },
                      [&] { worker.StartDrain(); }, [&] { return worker.Stats(); }});
}

absl::Status AddStaticWorkers(router::WorkerRegistry& registry, const Args& args) {
  for (const char* role : {"prefill", "decode"}) {
    const std::string list = args.Get(absl::StrCat(role, "-workers"));
    for (absl::string_view address : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
      registry.AddStatic(std::string(address), role);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<router::RouterOptions> RouterOptionsFromArgs(const Args& args) {
  router::RouterOptions options;
  ASSIGN_OR_RETURN(int64_t lease_ttl_ms, args.GetInt("lease-ttl-ms", 30000));
  ASSIGN_OR_RETURN(int64_t request_timeout_ms, args.GetInt("request-timeout-ms", 1800000));
  if (lease_ttl_ms <= 0 || request_timeout_ms <= 0) {
    return absl::InvalidArgumentError("--lease-ttl-ms and --request-timeout-ms must be positive");
  }
  options.lease_ttl = absl::Milliseconds(lease_ttl_ms);
  options.request_timeout = absl::Milliseconds(request_timeout_ms);
  ASSIGN_OR_RETURN(int64_t capacity_wait_ms, args.GetInt("capacity-wait-ms", 30000));
  if (capacity_wait_ms < 0) return absl::InvalidArgumentError("--capacity-wait-ms must be >= 0");
  options.capacity_wait = absl::Milliseconds(capacity_wait_ms);
  ASSIGN_OR_RETURN(int64_t progress_timeout_ms, args.GetInt("decode-progress-timeout-ms", 10000));
  if (progress_timeout_ms < 0 || progress_timeout_ms > 86400000) {
    return absl::InvalidArgumentError("--decode-progress-timeout-ms must be in 0..86400000 (0: no limit)");
  }
  options.decode_progress_timeout = absl::Milliseconds(progress_timeout_ms);
  options.model_path = args.Get("model");
  ASSIGN_OR_RETURN(options.max_prompt_tokens, args.GetInt("max-prompt-tokens", 0));
  ASSIGN_OR_RETURN(options.max_streams_per_client, args.GetInt("max-streams-per-client", 0));
  ASSIGN_OR_RETURN(options.max_prompt_bytes, args.GetInt("max-prompt-bytes", 8 << 20));
  ASSIGN_OR_RETURN(options.registry.max_workers, args.GetInt("max-workers", 1024));
  const std::string decode_pages = args.Get("decode-pages", "grow");
  if (decode_pages != "grow" && decode_pages != "upfront") {
    return absl::InvalidArgumentError(absl::StrCat("--decode-pages must be grow or upfront, got '", decode_pages, "'"));
  }
  options.reserve_max_tokens = decode_pages == "upfront";
  ASSIGN_OR_RETURN(int64_t evict_ms, args.GetInt("worker-evict-ms", 60000));
  if (options.registry.max_workers <= 0 || evict_ms <= 0) {
    return absl::InvalidArgumentError("--max-workers and --worker-evict-ms must be positive");
  }
  options.registry.evict_after = absl::Milliseconds(evict_ms);
  if (options.max_prompt_tokens < 0 || options.max_streams_per_client < 0 || options.max_prompt_bytes < 0) {
    return absl::InvalidArgumentError(
        "--max-prompt-tokens, --max-prompt-bytes and --max-streams-per-client must be >= 0 (0: no limit)");
  }
  return options;
}

const std::set<std::string> kRouterFlags = {"lease-ttl-ms", "request-timeout-ms", "capacity-wait-ms",
                                            "decode-progress-timeout-ms", "auth-token-file",
                                            "max-prompt-tokens", "max-prompt-bytes", "max-streams-per-client",
                                            "max-workers", "worker-evict-ms", "decode-pages", "http-listen",
                                            "http-port-file", "http-max-body-bytes", "http-threads"};

// The router's public API checks a bearer token when --auth-token-file is given; the
// worker registry and health service are left to mutual TLS.
absl::Status AddAuth(const Args& args, ProcessSecurity& security) {
  if (!args.Has("auth-token-file")) return absl::OkStatus();
  if (!args.Has("tls-cert")) {
    // Also: grpc 1.51's insecure server credentials cannot carry an AuthMetadataProcessor.
    return absl::InvalidArgumentError(
        "--auth-token-file needs --tls-cert/--tls-key: a bearer token sent in plaintext can be read off the wire");
  }
  ASSIGN_OR_RETURN(std::string token, serving::ReadTokenFile(args.Get("auth-token-file")));
  security.auth = std::make_shared<serving::BearerTokenProcessor>(
      std::move(token), std::set<std::string>{"latentserve.v1.WorkerRegistry", "grpc.health.v1.Health"});
  return absl::OkStatus();
}

absl::Status RunRouter(int argc, char** argv) {
  sigset_t signals = BlockShutdownSignals();
  std::set<std::string> known = WithCommonFlags({"listen", "port-file", "model", "prefill-workers", "decode-workers",
                                                  "drain-ms"});
  known.insert(kRouterFlags.begin(), kRouterFlags.end());
  ASSIGN_OR_RETURN(Args args, Args::Parse(argc, argv, known));
  ASSIGN_OR_RETURN(std::string listen, args.Require("listen"));
  ASSIGN_OR_RETURN(ProcessSecurity security, SecurityFromArgs(args));
  RETURN_IF_ERROR(AddAuth(args, security));
  ASSIGN_OR_RETURN(auto auth, InternalAuthorizerFromArgs(args, "router", false));
  ASSIGN_OR_RETURN(int64_t drain_ms, args.GetInt("drain-ms", 10000));
  ASSIGN_OR_RETURN(router::RouterOptions options, RouterOptionsFromArgs(args));
  router::RouterState state(options);
  if (!options.model_path.empty()) {  // only workers of this model, whoever registers first
    ASSIGN_OR_RETURN(std::string fingerprint, transfer::ModelFingerprint(options.model_path));
    state.registry().PinFingerprint(fingerprint);
  }
  RETURN_IF_ERROR(AddStaticWorkers(state.registry(), args));
  router::GenerationService generation(state);
  router::RegistryService registry(state, *auth);
  ASSIGN_OR_RETURN(Listening server, StartServer(listen, {&generation, &registry}, security));
  ASSIGN_OR_RETURN(auto http_front, http::StartOpenAiFrontFromArgs(args, *server.server));
  ASSIGN_OR_RETURN(std::unique_ptr<grpc::Server> health, StartHealth(args));
  // The model is known once a worker has reported it.
  ASSIGN_OR_RETURN(std::unique_ptr<serving::MetricsServer> metrics, StartMetrics(args, {"router"}, [&state] {
                     const auto model = state.registry().Model();
                     return model ? model->name() : std::string();
                   }));
  AddRouterGauges(metrics.get(), state);
  RETURN_IF_ERROR(Announce(args, server.address));
  ServeUntilSignal(signals, server.address, WithHealth({server.server.get()}, health), [&] { state.StartDrain(); },
                   absl::Milliseconds(drain_ms));
  return absl::OkStatus();
}

// All roles in one process: the router on --listen, one prefill and one decode worker on
// private loopback ports; the cache moves in process (InProcTransport), not over gRPC.
absl::Status RunServe(int argc, char** argv) {
  sigset_t signals = BlockShutdownSignals();
  std::set<std::string> known = kWorkerFlags;
  known.insert(kRouterFlags.begin(), kRouterFlags.end());
  ASSIGN_OR_RETURN(Args args, Args::Parse(argc, argv, known));
  ASSIGN_OR_RETURN(std::string listen, args.Require("listen"));
  ASSIGN_OR_RETURN(ProcessSecurity security, SecurityFromArgs(args));
  ASSIGN_OR_RETURN(ProcessSecurity public_security, SecurityFromArgs(args));
  RETURN_IF_ERROR(AddAuth(args, public_security));
  ASSIGN_OR_RETURN(auto auth, InternalAuthorizerFromArgs(args, "serve", true));
  ASSIGN_OR_RETURN(absl::Duration max_lease_ttl, MaxLeaseTtlFromArgs(args));
  // The in-process workers listen on loopback; they keep the TLS settings (the router
  // reaches them over its internal channels).
  ASSIGN_OR_RETURN(int64_t drain_ms, args.GetInt("drain-ms", 10000));
  // Two engines (each with its own backend): prefill and decode compute concurrently.
  ASSIGN_OR_RETURN(LoadedEngine prefill_engine, LoadEngine(args, "prefill"));
  ASSIGN_OR_RETURN(LoadedEngine decode_engine, LoadEngine(args, "decode"));
  const v1::ModelDescriptor& descriptor = decode_engine.descriptor;

  decode::DecodeWorker decode_worker(*decode_engine.engine.model, *decode_engine.engine.cache, descriptor.fingerprint(),
                                     max_lease_ttl);
  decode::DecodeService decode_service(decode_worker, descriptor, *auth);
  std::string decode_address;
  WorkerStatsService decode_stats("decode", descriptor, [&] { return decode_service.Info(decode_address); }, *auth);
  ASSIGN_OR_RETURN(Listening decode_server, StartServer("127.0.0.1:0", {&decode_service, &decode_stats}, security));
  decode_address = decode_server.address;

  transfer::InProcTransport inproc;
  inproc.AddSink(decode_address, &decode_worker);
  transfer::GrpcTransport grpc_transport(32 << 20, [] { return serving::InternalChannelCredentials(); },
                                         [](grpc::ClientContext& context) { serving::AttachInternalCredential(context); });
  transfer::RoutingTransport transport(&inproc, &grpc_transport);
  prefill::PrefillWorker prefill_worker(*prefill_engine.engine.model, *prefill_engine.engine.cache, transport,
                                        descriptor.fingerprint(), prefill_engine.engine.chunk_tokens);
  prefill::PrefillService prefill_service(prefill_worker, descriptor, *auth);
  std::string prefill_address;
  WorkerStatsService prefill_stats("prefill", descriptor, [&] { return prefill_service.Info(prefill_address); }, *auth);
  ASSIGN_OR_RETURN(Listening prefill_server, StartServer("127.0.0.1:0", {&prefill_service, &prefill_stats}, security));
  prefill_address = prefill_server.address;

  ASSIGN_OR_RETURN(router::RouterOptions options, RouterOptionsFromArgs(args));
  if (options.lease_ttl > max_lease_ttl) {
    return absl::InvalidArgumentError("--lease-ttl-ms must not exceed --max-lease-ttl-ms (the decode worker would cut it)");
  }
  router::RouterState state(options);
  state.registry().PinFingerprint(descriptor.fingerprint());
  state.registry().AddStatic(prefill_address, "prefill");
  state.registry().AddStatic(decode_address, "decode");
  router::GenerationService generation(state);
  router::RegistryService registry(state, *auth);
  ASSIGN_OR_RETURN(Listening server, StartServer(listen, {&generation, &registry}, public_security));
  ASSIGN_OR_RETURN(auto http_front, http::StartOpenAiFrontFromArgs(args, *server.server));
  ASSIGN_OR_RETURN(std::unique_ptr<grpc::Server> health, StartHealth(args));
  const std::string model_name = descriptor.name();
  ASSIGN_OR_RETURN(std::unique_ptr<serving::MetricsServer> metrics,
                   StartMetrics(args, {"router", "prefill", "decode"}, [model_name] { return model_name; }));
  AddRouterGauges(metrics.get(), state);
  AddCacheGauges(metrics.get(), "prefill", [&] { return prefill_service.Info(prefill_address); });
  AddCacheGauges(metrics.get(), "decode", [&] { return decode_service.Info(decode_address); });
  AddDecodeCounters(metrics.get(), [&] { return decode_worker.Stats(); });
  // Ready once the router has seen both workers (its first poll).
  const absl::Time ready_by = absl::Now() + absl::Seconds(10);
  while (!(state.registry().AnyAlive("prefill") && state.registry().AnyAlive("decode")) && absl::Now() < ready_by) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  RETURN_IF_ERROR(Announce(args, server.address));
  ServeUntilSignal(
      signals, server.address, WithHealth({server.server.get(), prefill_server.server.get(), decode_server.server.get()}, health),
      [&] {
        state.StartDrain();
        prefill_worker.StartDrain();
        decode_worker.StartDrain();
      },
      absl::Milliseconds(drain_ms));
  return absl::OkStatus();
}

int Fail(const absl::Status& status, const char* command) {
  std::fprintf(stderr, "latentserve %s: %s\n", command, std::string(status.message()).c_str());
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

int Wrap(absl::Status (*fn)(int, char**), const char* name, int argc, char** argv) {
  absl::Status status = fn(argc, argv);
  return status.ok() ? 0 : Fail(status, name);
}

Registrar router_cmd("router", "serve the public Generation API and place requests on workers",
                     [](int argc, char** argv) { return Wrap(RunRouter, "router", argc, argv); });
Registrar prefill_cmd("prefill", "run a prefill worker registered with a router",
                      [](int argc, char** argv) { return Wrap(RunPrefill, "prefill", argc, argv); });
Registrar decode_cmd("decode", "run a decode worker registered with a router",
                     [](int argc, char** argv) { return Wrap(RunDecode, "decode", argc, argv); });
Registrar serve_cmd("serve", "router + prefill + decode in one process (in-process cache handoff)",
                    [](int argc, char** argv) { return Wrap(RunServe, "serve", argc, argv); });

}  // namespace
}  // namespace latentserve::cli

#endif  // __has_include generated protos
