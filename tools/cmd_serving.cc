// Serving subcommands: router, prefill, decode, serve (all roles in one process), client.
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
#include "common/secure_random.h"
#include "common/status.h"
#include "decode/decode_service.h"
#include "prefill/prefill_service.h"
#include "router/announcer_set.h"
#include "router/generation_service.h"
#include "serving/metrics.h"
#include "serving/security.h"
#include "tools/cli.h"
#include "tools/lib/engine_setup.h"
#include "transfer/fingerprint.h"
#include "transfer/grpc_transport.h"
#include "transfer/inproc_transport.h"

namespace latentserve::cli {
namespace {

// ---- process plumbing ----

// Blocks the shutdown signals in this thread (and every thread it starts) so the main thread
// can sigwait() for them.
sigset_t BlockShutdownSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

struct Listening {
  std::unique_ptr<grpc::Server> server;
  std::string address;  // host:port actually bound
};

// What every serving process sets up from its flags before it listens: TLS credentials
// (server side, and the client side of its internal channels), message limits, metrics.
struct ProcessSecurity {
  std::shared_ptr<grpc::ServerCredentials> server_credentials;
  std::shared_ptr<grpc::AuthMetadataProcessor> auth;  // public API only (router)
  int64_t max_message_bytes = 16 << 20;
};

// Flags every serving subcommand accepts (beyond its own).
const std::set<std::string> kCommonFlags = {"metrics-listen", "health-listen", "tls-cert", "tls-key", "tls-ca",
                                            "max-message-bytes", "internal-token-file", "internal-peer-cn"};

std::set<std::string> WithCommonFlags(std::set<std::string> flags) {
  flags.insert(kCommonFlags.begin(), kCommonFlags.end());
  return flags;
}

absl::StatusOr<ProcessSecurity> SecurityFromArgs(const Args& args) {
  ASSIGN_OR_RETURN(serving::TlsFiles tls, serving::TlsFilesFromArgs(args));
  ProcessSecurity security;
  ASSIGN_OR_RETURN(security.server_credentials, serving::MakeServerCredentials(tls));
  ASSIGN_OR_RETURN(auto channel_credentials, serving::MakeChannelCredentials(tls));
  serving::SetInternalChannelCredentials(channel_credentials);
  ASSIGN_OR_RETURN(security.max_message_bytes, args.GetInt("max-message-bytes", 16 << 20));
  if (security.max_message_bytes < 4096 || security.max_message_bytes > (1 << 30)) {
    return absl::InvalidArgumentError("--max-message-bytes must be in [4096, 1073741824]");
  }
  return security;
}

// Who may call this process's internal methods (serving/security.h). A split deployment
// with TLS or a public token must say who its components are (otherwise any certificate
// of the CA, a public client's included, would reach them); without either it runs open,
// as the plaintext loopback mode always has, and says so. `serve`, whose internal servers
// only its own router calls, makes up a random internal token when none is given.
absl::StatusOr<std::unique_ptr<serving::InternalAuthorizer>> InternalAuthorizerFromArgs(const Args& args,
                                                                                        const char* command,
                                                                                        bool generate_token) {
  ASSIGN_OR_RETURN(serving::InternalAuthConfig config, serving::InternalAuthFromArgs(args));
  if (config.token.empty() && generate_token) {
    ASSIGN_OR_RETURN(config.token, SecureRandomHex(32));
  }
  if (config.empty()) {
    if (args.Has("tls-cert") || args.Has("auth-token-file")) {
      return absl::InvalidArgumentError(
          "with --tls-cert or --auth-token-file, give --internal-peer-cn CN (the common name of the cluster "
          "components' certificate) and/or --internal-token-file F: otherwise every certificate the CA signed, a "
          "public client's included, could call the internal APIs (leases, prefill, decode, registry)");
    }
    std::fprintf(stderr,
                 "%s: no --internal-token-file / --internal-peer-cn: the internal APIs are open to anyone who can "
                 "reach this port (plaintext loopback mode)\n",
                 command);
  }
  serving::SetInternalCallToken(config.token);
  return std::make_unique<serving::InternalAuthorizer>(std::move(config));
}

// Starts the /metrics endpoint when --metrics-listen is given (else nullptr).
absl::StatusOr<std::unique_ptr<serving::MetricsServer>> StartMetrics(const Args& args) {
  if (!args.Has("metrics-listen")) return std::unique_ptr<serving::MetricsServer>();
  ASSIGN_OR_RETURN(auto server, serving::MetricsServer::Start(args.Get("metrics-listen")));
  std::printf("metrics on http://%s/metrics\n", server->address().c_str());
  std::fflush(stdout);
  return server;
}

void AddCacheGauges(serving::MetricsServer* metrics, const std::string& role, std::function<v1::WorkerInfo()> info) {
  if (!metrics) return;
  metrics->AddGaugeSource([role, info](serving::GaugeWriter& out) {
    const v1::WorkerInfo w = info();
    out.Set("latentserve_cache_pages_free", "Cache pages free on this worker", {{"role", role}},
            static_cast<double>(w.cache_pages_free()));
    out.Set("latentserve_cache_pages_used", "Cache pages in use on this worker", {{"role", role}},
            static_cast<double>(w.cache_pages_total() - w.cache_pages_free()));
    out.Set("latentserve_worker_draining", "1 while this worker drains", {{"role", role}}, w.draining() ? 1.0 : 0.0);
    if (role == "decode") {
      out.Set("latentserve_decode_leases_active", "Decode: leases reserved, not yet decoding", {},
              static_cast<double>(w.leases_active()));
      out.Set("latentserve_decode_sequences_active", "Decode: sequences in the continuous batch", {},
              static_cast<double>(w.sequences_active()));
    } else {
      out.Set("latentserve_prefill_queue_depth", "Prefill: jobs running or queued", {},
              static_cast<double>(w.sequences_active()));
      out.Set("latentserve_prefill_outstanding_cost", "Prefill: sum of prompt_tokens^2 over queued and running jobs",
              {}, w.outstanding_cost());
    }
  });
}

void AddRouterGauges(serving::MetricsServer* metrics, router::RouterState& state) {
  if (!metrics) return;
  metrics->AddGaugeSource([&state](serving::GaugeWriter& out) {
    out.Set("latentserve_router_leases_active", "Router: decode leases held by requests in flight", {},
            static_cast<double>(state.leases_active.load()));
    for (const router::WorkerEntry& w : state.registry().Snapshot()) {
      out.Set("latentserve_router_worker_up", "Router: 1 when the worker answered its last poll",
              {{"worker", w.address}, {"role", w.role}}, w.alive ? 1.0 : 0.0);
      out.Set("latentserve_router_worker_cache_pages_free", "Router: the worker's free cache pages, as last polled",
              {{"worker", w.address}, {"role", w.role}}, static_cast<double>(w.stats.cache_pages_free()));
    }
  });
}

// Drops the reflection plugin from one server: InitProtoReflectionServerBuilderPlugin adds it
// to every ServerBuilder of the process, and the plaintext health port must not describe the
// internal schema to whoever can reach it.
class WithoutReflection final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->erase(std::remove_if(plugins->begin(), plugins->end(),
                                  [](const auto& plugin) { return plugin->name() == "proto_server_reflection"; }),
                   plugins->end());
  }
};

// Builds and starts a server on `listen` (port 0: any free port); `reflection` adds gRPC
// server reflection (the serving ports; never the plaintext health port).
absl::StatusOr<Listening> StartServer(const std::string& listen, const std::vector<grpc::Service*>& services,
                                      const ProcessSecurity& security, bool reflection = true) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos) return absl::InvalidArgumentError(absl::StrCat("--listen must be HOST:PORT, got '", listen, "'"));
  // gRPC reads the port modulo 2^16 (99999 would bind 34463): only 0..65535 in decimal.
  const std::string port_text = listen.substr(colon + 1);
  int64_t port_number = -1;
  if (port_text.empty() || port_text.size() > 5 || port_text.find_first_not_of("0123456789") != std::string::npos ||
      (port_number = std::stoll(port_text)) > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("listen address '", listen, "': the port must be 0..65535"));
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  // The processor attaches to the credentials object: callers give each server its own.
  if (security.auth) security.server_credentials->SetAuthMetadataProcessor(security.auth);
  builder.AddListeningPort(listen, security.server_credentials, &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(security.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(security.max_message_bytes));
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // a taken port must be an error
  if (!reflection) builder.SetOption(std::make_unique<WithoutReflection>());
  transfer::AllowInternalKeepalivePings(builder);
  for (grpc::Service* service : services) builder.RegisterService(service);
  Listening out;
  out.server = builder.BuildAndStart();
  if (!out.server || port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", listen, " (address in use or not local?)"));
  }
  std::string host = listen.substr(0, colon);
  if (host.empty() || host == "0.0.0.0" || host == "[::]") host = "127.0.0.1";
  out.address = absl::StrCat(host, ":", port);
  return out;
}

// --health-listen HOST:PORT: grpc.health.v1 alone, in plaintext, for probes that cannot
// speak TLS (kubelet's gRPC probes). It says what the serving port's health service says:
// SERVING once listening, NOT_SERVING from the start of a drain. Empty when not asked for.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartHealth(const Args& args) {
  if (!args.Has("health-listen")) return std::unique_ptr<grpc::Server>();
  ProcessSecurity plaintext;
  plaintext.server_credentials = grpc::InsecureServerCredentials();
  // grpc builds a server (and its default health service) only when some synchronous method
  // is registered; without reflection the health port has none of its own. The generated
  // base class answers UNIMPLEMENTED to everything: it gives the server a method and exposes
  // nothing.
  static auto* placeholder = new v1::WorkerStats::Service();
  ASSIGN_OR_RETURN(Listening health,
                   StartServer(args.Get("health-listen"), {placeholder}, plaintext, /*reflection=*/false));
  std::printf("health on %s\n", health.address.c_str());
  std::fflush(stdout);
  return std::move(health.server);
}

absl::Status Announce(const Args& args, const std::string& address) {
  std::printf("listening on %s\n", address.c_str());
  std::fflush(stdout);
  if (args.Has("port-file")) {
    const std::string path = args.Get("port-file");
    const std::string tmp = path + ".tmp";
    {
      std::ofstream out(tmp);
      out << address << "\n";
      if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write --port-file ", path));
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      return absl::PermissionDeniedError(absl::StrCat("cannot write --port-file ", path));
    }
  }
  return absl::OkStatus();
}

std::vector<grpc::Server*> WithHealth(std::vector<grpc::Server*> servers, const std::unique_ptr<grpc::Server>& health) {
  if (health) servers.push_back(health.get());
  return servers;
}

// Waits for SIGTERM/SIGINT, then drains: `stop_taking_work`, health NOT_SERVING, and
// Shutdown with a deadline (in-flight calls finish or are cancelled by then).
void ServeUntilSignal(sigset_t signals, const std::vector<grpc::Server*>& servers,
                      const std::function<void()>& stop_taking_work, absl::Duration drain) {
  int signal = 0;
  sigwait(&signals, &signal);
  std::fprintf(stderr, "latentserve: signal %d: draining (up to %.1f s)\n", signal, absl::ToDoubleSeconds(drain));
  stop_taking_work();
  for (grpc::Server* server : servers) {
    if (auto* health = server->GetHealthCheckService()) health->SetServingStatus(false);
  }
  const auto deadline = absl::ToChronoTime(absl::Now() + drain);
  for (grpc::Server* server : servers) server->Shutdown(deadline);
  for (grpc::Server* server : servers) server->Wait();
}

// WorkerStats.GetWorkerStats for one worker role: its live info plus the model it serves.
class WorkerStatsService final : public v1::WorkerStats::Service {
 public:
  WorkerStatsService(std::string role, const v1::ModelDescriptor& model, std::function<v1::WorkerInfo()> info,
                     const serving::InternalAuthorizer& auth)
      : role_(std::move(role)), model_(model), info_(std::move(info)), auth_(auth) {}
  grpc::Status GetWorkerStats(grpc::ServerContext* context, const v1::GetWorkerStatsRequest*,
                              v1::GetWorkerStatsResponse* response) override {
    if (grpc::Status denied = auth_.Check(*context, "WorkerStats.GetWorkerStats"); !denied.ok()) return denied;
    *response->mutable_stats() = info_();
    *response->mutable_model() = model_;
    // The absolute path says where the host keeps its files: only a verified component (the
    // router's polls with the internal credential) gets it; anyone else the file name.
    if (!auth_.Verified(*context)) {
      const std::string& path = model_.path();
      response->mutable_model()->set_path(path.substr(path.rfind('/') + 1));
    }
    response->set_role(role_);
    return grpc::Status::OK;
  }

 private:
  std::string role_;
  const v1::ModelDescriptor& model_;
  std::function<v1::WorkerInfo()> info_;
  const serving::InternalAuthorizer& auth_;
};

// ---- worker roles ----

const std::set<std::string> kWorkerFlags = WithCommonFlags({"listen", "router", "routers-dns", "model", "port-file", "advertise",
                                                             "threads", "cache-type", "page-tokens", "cache-tokens",
                                                             "chunk", "backend", "drain-ms",
                                                             "fault-stall-transfer-ms", "max-lease-ttl-ms"});

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

absl::StatusOr<LoadedEngine> LoadEngine(const Args& args) {
  ASSIGN_OR_RETURN(int64_t cache_tokens, args.GetInt("cache-tokens", 65536));
  if (cache_tokens <= 0) return absl::InvalidArgumentError("--cache-tokens must be positive");
  ASSIGN_OR_RETURN(std::string path, args.Require("model"));
  LoadedEngine loaded;
  ASSIGN_OR_RETURN(loaded.engine, EngineFromArgs(args, cache_tokens));
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
  ASSIGN_OR_RETURN(std::unique_ptr<serving::MetricsServer> metrics, StartMetrics(args));
  AddCacheGauges(metrics.get(), role.name, info);
  address = args.Get("advertise", server.address);
  RETURN_IF_ERROR(Announce(args, server.address));
  router::AnnouncerSet announcers(routers, args.Get("routers-dns"), address, role.name, loaded.descriptor, info);
  ServeUntilSignal(signals, WithHealth({server.server.get()}, health), role.start_drain, absl::Milliseconds(drain_ms));
  return absl::OkStatus();
}

absl::Status RunPrefill(int argc, char** argv) {
  sigset_t signals = BlockShutdownSignals();
  ASSIGN_OR_RETURN(Args args, Args::Parse(argc, argv, kWorkerFlags));
  RETURN_IF_ERROR(args.Require("listen").status());  // flag errors before the model loads
  RETURN_IF_ERROR(RoutersFromArgs(args).status());
  ASSIGN_OR_RETURN(ProcessSecurity security, SecurityFromArgs(args));
  ASSIGN_OR_RETURN(auto auth, InternalAuthorizerFromArgs(args, "prefill", false));
  ASSIGN_OR_RETURN(int64_t stall_ms, args.GetInt("fault-stall-transfer-ms", 0));
  ASSIGN_OR_RETURN(LoadedEngine loaded, LoadEngine(args));
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
                      [&] { worker.StartDrain(); }});
}

absl::Status RunDecode(int argc, char** argv) {
  sigset_t signals = BlockShutdownSignals();
  ASSIGN_OR_RETURN(Args args, Args::Parse(argc, argv, kWorkerFlags));
  RETURN_IF_ERROR(args.Require("listen").status());
  RETURN_IF_ERROR(RoutersFromArgs(args).status());
  ASSIGN_OR_RETURN(ProcessSecurity security, SecurityFromArgs(args));
  ASSIGN_OR_RETURN(auto auth, InternalAuthorizerFromArgs(args, "decode", false));
  ASSIGN_OR_RETURN(absl::Duration max_lease_ttl, MaxLeaseTtlFromArgs(args));
  ASSIGN_OR_RETURN(LoadedEngine loaded, LoadEngine(args));
  decode::DecodeWorker worker(*loaded.engine.model, *loaded.engine.cache, loaded.descriptor.fingerprint(),
                              max_lease_ttl);
  decode::DecodeService service(worker, loaded.descriptor, *auth);
  return ServeWorker(args, signals, loaded, security, *auth,
                     {"decode", &service, [&](const std::string& address) { return service.Info(address); },
                      [&] { worker.StartDrain(); }});
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
  options.model_path = args.Get("model");
  ASSIGN_OR_RETURN(options.max_prompt_tokens, args.GetInt("max-prompt-tokens", 0));
  ASSIGN_OR_RETURN(options.max_streams_per_client, args.GetInt("max-streams-per-client", 0));
  ASSIGN_OR_RETURN(options.max_prompt_bytes, args.GetInt("max-prompt-bytes", 8 << 20));
  ASSIGN_OR_RETURN(options.registry.max_workers, args.GetInt("max-workers", 1024));
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

const std::set<std::string> kRouterFlags = {"lease-ttl-ms", "request-timeout-ms", "capacity-wait-ms", "auth-token-file",
                                            "max-prompt-tokens", "max-prompt-bytes", "max-streams-per-client",
                                            "max-workers", "worker-evict-ms"};

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
  ASSIGN_OR_RETURN(std::unique_ptr<grpc::Server> health, StartHealth(args));
  ASSIGN_OR_RETURN(std::unique_ptr<serving::MetricsServer> metrics, StartMetrics(args));
  AddRouterGauges(metrics.get(), state);
  RETURN_IF_ERROR(Announce(args, server.address));
  ServeUntilSignal(signals, WithHealth({server.server.get()}, health), [&] { state.StartDrain(); },
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
  ASSIGN_OR_RETURN(LoadedEngine prefill_engine, LoadEngine(args));
  ASSIGN_OR_RETURN(LoadedEngine decode_engine, LoadEngine(args));
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
  ASSIGN_OR_RETURN(std::unique_ptr<grpc::Server> health, StartHealth(args));
  ASSIGN_OR_RETURN(std::unique_ptr<serving::MetricsServer> metrics, StartMetrics(args));
  AddRouterGauges(metrics.get(), state);
  AddCacheGauges(metrics.get(), "prefill", [&] { return prefill_service.Info(prefill_address); });
  AddCacheGauges(metrics.get(), "decode", [&] { return decode_service.Info(decode_address); });
  // Ready once the router has seen both workers (its first poll).
  const absl::Time ready_by = absl::Now() + absl::Seconds(10);
  while (!(state.registry().AnyAlive("prefill") && state.registry().AnyAlive("decode")) && absl::Now() < ready_by) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  RETURN_IF_ERROR(Announce(args, server.address));
  ServeUntilSignal(
      signals, WithHealth({server.server.get(), prefill_server.server.get(), decode_server.server.get()}, health),
      [&] {
        state.StartDrain();
        prefill_worker.StartDrain();
        decode_worker.StartDrain();
      },
      absl::Milliseconds(drain_ms));
  return absl::OkStatus();
}

// ---- client ----

std::string IdsJson(const std::vector<int32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) absl::StrAppend(&out, i ? "," : "", ids[i]);
  return out + "]";
}

int ClientError(const absl::Status& status, bool json) {
  if (json) {
    std::printf("{\"error\":{\"code\":\"%s\",\"message\":%s}}\n", client::StatusCodeName(status.code()),
                client::JsonString(std::string(status.message())).c_str());
    std::fflush(stdout);
  }
  std::fprintf(stderr, "latentserve client: %s: %s\n", client::StatusCodeName(status.code()),
               std::string(status.message()).c_str());
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

// A connection that failed before any reply ("Socket closed", a failed handshake) says nothing
// about TLS; this adds what to check, from the client's own TLS flags.
absl::Status WithTlsHint(const absl::Status& status, const Args& args) {
  if (status.code() != absl::StatusCode::kUnavailable) return status;
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
  } else {
    return absl::InvalidArgumentError("give --prompt-tokens, --prompt-tokens-file, --prompt or --prompt-file");
  }
  request.set_model(args.Get("model"));
  ASSIGN_OR_RETURN(int64_t max_tokens, args.GetInt("max-tokens", 16));
  ASSIGN_OR_RETURN(int32_t max_tokens32, Int32Flag("max-tokens", max_tokens));
  request.mutable_stopping()->set_max_tokens(max_tokens32);
  request.mutable_stopping()->set_ignore_eos(args.Has("ignore-eos"));
  if (args.Has("stop")) request.mutable_stopping()->add_stop_strings(args.Get("stop"));
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
  ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
  auto* sampling = request.mutable_sampling();
  sampling->set_temperature(static_cast<float>(temperature));
  ASSIGN_OR_RETURN(int32_t top_k32, Int32Flag("top-k", top_k));
  sampling->set_top_k(top_k32);
  sampling->set_top_p(static_cast<float>(top_p));
  sampling->set_min_p(static_cast<float>(min_p));
  sampling->set_seed(static_cast<uint64_t>(seed));
  return request;
}

// The client's channel: TLS when --tls-ca is given (plus --tls-cert/--tls-key for mutual
// TLS), and `authorization: Bearer` from --auth-token-file.
absl::StatusOr<std::unique_ptr<client::GenerationClient>> ClientFromArgs(const Args& args) {
  ASSIGN_OR_RETURN(serving::TlsFiles tls, serving::TlsFilesFromArgs(args));
  ASSIGN_OR_RETURN(auto credentials, serving::MakeChannelCredentials(tls));
  std::string token;
  if (args.Has("auth-token-file")) {
    if (!tls.enabled()) {
      return absl::InvalidArgumentError(
          "--auth-token-file needs --tls-ca: the token would cross the network in plaintext (and a router only "
          "checks tokens under TLS)");
    }
    ASSIGN_OR_RETURN(token, serving::ReadTokenFile(args.Get("auth-token-file")));
  }
  if (args.Has("internal-token-file")) {  // operators only: e.g. `client stats` on a worker
    ASSIGN_OR_RETURN(std::string internal, serving::ReadTokenFile(args.Get("internal-token-file")));
    serving::SetInternalCallToken(std::move(internal));
  }
  return std::make_unique<client::GenerationClient>(args.Get("target"), std::move(credentials), std::move(token));
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
  callbacks.on_tokens = [&](const v1::TokenChunk& chunk) {
    if (!json) {
      if (first_chunk && tty_progress) std::fprintf(stderr, "\n");
      if (!chunk.text().empty()) {
        std::fwrite(chunk.text().data(), 1, chunk.text().size(), stdout);
      } else if (chunk.text().empty() && chunk.token_ids_size() > 0) {
        for (int32_t id : chunk.token_ids()) std::printf("%s%d", tokens_seen || !first_chunk ? "," : "", id);
      }
      std::fflush(stdout);
    }
    first_chunk = false;
    tokens_seen += chunk.token_ids_size();
    return *cancel_after_tokens < 0 || tokens_seen < *cancel_after_tokens;
  };
  const absl::Duration timeout = *timeout_ms > 0 ? absl::Milliseconds(*timeout_ms) : absl::InfiniteDuration();
  auto result = client.Generate(*request, callbacks, timeout);
  if (!result.ok()) {
    if (!json) std::printf("\n");
    return ClientError(WithTlsHint(result.status(), args), json);
  }
  const v1::Finished& f = result->finished;
  const std::string summary = absl::StrFormat(
        "{\"token_ids\":%s,\"text\":%s,\"finish_reason\":\"%s\",\"usage\":{\"prompt_tokens\":%lld,"
        "\"completion_tokens\":%lld,\"cache_bytes_transferred\":%lld},\"timing\":{\"ttft_ms\":%.3f,"
        "\"decode_tokens_per_s\":%.3f,\"prefill_ms\":%.3f,\"transfer_tail_ms\":%.3f},\"prefill_worker\":%s,"
        "\"decode_worker\":%s,\"request_id\":%s,\"progress_events\":%lld}\n",
        IdsJson(result->token_ids).c_str(), client::JsonString(result->text).c_str(),
        client::FinishReasonName(f.reason()), static_cast<long long>(f.usage().prompt_tokens()),
        static_cast<long long>(f.usage().completion_tokens()),
        static_cast<long long>(f.usage().cache_bytes_transferred()), f.timings().ttft_ms(),
        f.timings().decode_tokens_per_s(), f.timings().prefill_ms(), f.timings().transfer_tail_ms(),
        client::JsonString(f.prefill_worker()).c_str(), client::JsonString(f.decode_worker()).c_str(),
        client::JsonString(f.request_id()).c_str(), static_cast<long long>(progress_events));
  if (args.Has("summary-file")) {
    std::ofstream(args.Get("summary-file")) << summary;
  }
  if (json) {
    std::fputs(summary.c_str(), stdout);
  } else {
    std::printf("\n");
    std::fprintf(stderr,
                 "[%s] prompt %lld tokens, %lld generated; TTFT %.1f ms, decode %.1f tok/s, %.2f MiB cache moved\n",
                 client::FinishReasonName(f.reason()), static_cast<long long>(f.usage().prompt_tokens()),
                 static_cast<long long>(f.usage().completion_tokens()), f.timings().ttft_ms(),
                 f.timings().decode_tokens_per_s(), f.usage().cache_bytes_transferred() / 1048576.0);
  }
  return 0;
}

std::string WorkerJson(const v1::WorkerInfo& w) {
  return absl::StrCat("{\"address\":\"", w.address(), "\",\"role\":\"", w.role(), "\",\"alive\":",
                      w.alive() ? "true" : "false", ",\"cache_pages_free\":", w.cache_pages_free(),
                      ",\"cache_pages_total\":", w.cache_pages_total(), ",\"leases_active\":", w.leases_active(),
                      ",\"sequences_active\":", w.sequences_active(), ",\"outstanding_cost\":", w.outstanding_cost(),
                      ",\"draining\":", w.draining() ? "true" : "false", "}");
}

int RunClientInfo(const Args& args) {
  ASSIGN_OR_RETURN_CLIENT(client, args);
  auto info = client.GetModelInfo();
  if (!info.ok()) return ClientError(WithTlsHint(info.status(), args), true);
  std::string out = absl::StrCat("{\"model_name\":", client::JsonString(info->model_name()), ",\"model_fingerprint\":\"",
                                 info->model_fingerprint(), "\",\"vocab_size\":", info->vocab_size(),
                                 ",\"max_context_tokens\":", info->max_context_tokens(), ",\"has_tokenizer\":",
                                 info->has_tokenizer() ? "true" : "false", ",\"router_leases_active\":",
                                 info->router_leases_active(), ",\"workers\":[");
  for (int i = 0; i < info->workers_size(); ++i) absl::StrAppend(&out, i ? "," : "", WorkerJson(info->workers(i)));
  out += "]}\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

// One worker's own view of itself (WorkerStats), e.g. to watch a worker the router lost.
int RunClientStats(const Args& args) {
  ASSIGN_OR_RETURN_CLIENT(client, args);
  auto stats = client.GetWorkerStats();
  if (!stats.ok()) return ClientError(WithTlsHint(stats.status(), args), true);
  v1::WorkerInfo w = stats->stats();
  w.set_role(stats->role());
  w.set_alive(true);
  const std::string out = absl::StrCat(WorkerJson(w), "\n");
  std::fwrite(out.data(), 1, out.size(), stdout);
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
  std::printf("{\"status\":\"%s\"}\n", status->c_str());
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
  std::printf("{\"token_ids\":%s}\n", IdsJson(*ids).c_str());
  return 0;
}

int RunClient(int argc, char** argv) {
  constexpr const char* kUsage =
      "usage: latentserve client generate --target HOST:PORT (--prompt-tokens \"1,2,3\" | --prompt-tokens-file F |\n"
      "         --prompt TEXT | --prompt-file F) --max-tokens N [--temperature T --top-k K --top-p P --min-p P\n"
      "         --seed S --stop STR --stop-token-ids \"a,b\" --ignore-eos --model NAME --timeout-ms MS --json\n"
      "         --summary-file F (the --json object, written to F)]\n"
      "       common: [--tls-ca CA.pem [--tls-cert C.pem --tls-key K.pem]] [--auth-token-file F]\n"
      "         [--internal-token-file F] (the cluster's internal token: `stats` on a worker that requires it)\n"
      "       latentserve client info --target HOST:PORT (a router: model and workers)\n"
      "       latentserve client stats --target HOST:PORT (a worker: its own cache, leases, queue)\n"
      "       latentserve client health --target HOST:PORT [--service NAME] (grpc.health.v1; exit 0 when SERVING)\n"
      "       latentserve client tokenize --target HOST:PORT (--prompt TEXT | --prompt-file F)\n";
  if (argc < 1) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string verb = argv[0];
  auto args = Args::Parse(argc - 1, argv + 1,
                          {"target", "prompt-tokens", "prompt-tokens-file", "prompt", "prompt-file", "max-tokens",
                           "temperature", "top-k", "top-p", "min-p", "seed", "stop", "stop-token-ids", "model",
                           "timeout-ms", "cancel-after-progress", "cancel-after-tokens", "summary-file", "tls-ca",
                           "tls-cert", "tls-key", "auth-token-file", "internal-token-file", "service"},
                          {"json", "ignore-eos"});
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
  std::fprintf(stderr, "latentserve client: unknown verb '%s'\n%s", verb.c_str(), kUsage);
  return 2;
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
Registrar client_cmd("client", "call a router: generate (streaming), info, tokenize; a worker: stats", RunClient);

}  // namespace
}  // namespace latentserve::cli

#endif  // __has_include generated protos
