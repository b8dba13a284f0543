// The server shell of every serving role (serving/server_shell.h).
#include "serving/server_shell.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>

#include "absl/strings/str_cat.h"
#include "common/secure_random.h"
#include "common/status.h"
#include "latentserve/internal/v1/worker.grpc.pb.h"
#include "serving/listener_watch.h"
#include "transfer/grpc_transport.h"

namespace latentserve::serving {
namespace {

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

}  // namespace

// Blocks the shutdown signals in this thread (and every thread it starts) so the main thread
// can sigwait() for them.
sigset_t BlockShutdownSignals() {
  // Every serving process starts here: take the whole descriptor allowance (the soft limit
  // is often 1024 while the hard one is far higher), since each connection costs one.
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}



std::set<std::string> WithCommonFlags(std::set<std::string> flags) {
  // Flags every serving subcommand accepts (beyond its own). A local: other files' static
  // flag sets call this during static initialisation.
  static const std::set<std::string>* const kCommonFlags = new std::set<std::string>{
      "metrics-listen", "health-listen", "tls-cert", "tls-key", "tls-ca", "max-message-bytes", "internal-token-file",
      "internal-peer-cn", "max-concurrent-calls"};
  flags.insert(kCommonFlags->begin(), kCommonFlags->end());
  return flags;
}

absl::StatusOr<ProcessSecurity> SecurityFromArgs(const Args& args) {
  ASSIGN_OR_RETURN(TlsFiles tls, TlsFilesFromArgs(args));
  ProcessSecurity security;
  ASSIGN_OR_RETURN(security.server_credentials, MakeServerCredentials(tls));
  ASSIGN_OR_RETURN(auto channel_credentials, MakeChannelCredentials(tls));
  SetInternalChannelCredentials(channel_credentials);
  ASSIGN_OR_RETURN(security.max_message_bytes, args.GetInt("max-message-bytes", 16 << 20));
  if (security.max_message_bytes < 4096 || security.max_message_bytes > (1 << 30)) {
    return absl::InvalidArgumentError("--max-message-bytes must be in [4096, 1073741824]");
  }
  ASSIGN_OR_RETURN(security.max_concurrent_calls, args.GetInt("max-concurrent-calls", 4096));
  if (security.max_concurrent_calls < 1 || security.max_concurrent_calls > 65536) {
    return absl::InvalidArgumentError("--max-concurrent-calls must be in [1, 65536]");
  }
  return security;
}

// Who may call this process's internal methods (serving/security.h). A split deployment
// with TLS or a public token must say who its components are (otherwise any certificate
// of the CA, a public client's included, would reach them); without either it runs open,
// as the plaintext loopback mode always has, and says so. `serve`, whose internal servers
// only its own router calls, makes up a random internal token when none is given.
absl::StatusOr<std::unique_ptr<InternalAuthorizer>> InternalAuthorizerFromArgs(const Args& args,
                                                                                        const char* command,
                                                                                        bool generate_token) {
  ASSIGN_OR_RETURN(InternalAuthConfig config, InternalAuthFromArgs(args));
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
  SetInternalCallToken(config.token);
  return std::make_unique<InternalAuthorizer>(std::move(config));
}

// Starts the /metrics endpoint when --metrics-listen is given (else nullptr).
absl::StatusOr<std::unique_ptr<MetricsServer>> StartMetrics(const Args& args, const std::vector<std::string>& roles,
                                                            std::function<std::string()> model, const BuildInfo& build) {
  if (!args.Has("metrics-listen")) return std::unique_ptr<MetricsServer>();
  ASSIGN_OR_RETURN(auto server,
                   MetricsServer::Start(args.Get("metrics-listen"), RoleMetricPrefixes(roles), std::move(model)));
  server->AddGaugeSource([build](GaugeWriter& out) {
    out.Set("latentserve_build_info", "1, labelled with the version and git revision of this binary",
            {{"version", build.version}, {"revision", build.revision}}, 1.0);
  });
  std::printf("metrics on http://%s/metrics\n", server->address().c_str());
  std::fflush(stdout);
  return server;
}

// Builds and starts a server on `listen` (port 0: any free port); `reflection` adds gRPC
// server reflection (the serving ports; never the plaintext health port).
absl::StatusOr<Listening> StartServer(const std::string& listen, const std::vector<grpc::Service*>& services,
                                      const ProcessSecurity& security, bool reflection) {
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
  // Each running call of the synchronous server holds a thread from this quota, and one more
  // thread polls: a call that finds no thread left to replace the poller that took it is
  // answered RESOURCE_EXHAUSTED (grpc ThreadManager), so N + 1 threads run N calls.
  grpc::ResourceQuota quota(absl::StrCat("latentserve ", listen));
  quota.SetMaxThreads(static_cast<int>(security.max_concurrent_calls) + 1);
  builder.SetResourceQuota(quota);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, static_cast<int>(security.max_concurrent_calls));
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
  static auto* placeholder = new internal::v1::WorkerStats::Service();
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
void ServeUntilSignal(sigset_t signals, const std::string& public_address, const std::vector<grpc::Server*>& servers,
                      const std::function<void()>& stop_taking_work, absl::Duration drain) {
  int signal = 0;
  {
    ListenerWatch watch(public_address, servers);
    sigwait(&signals, &signal);
  }
  std::fprintf(stderr, "latentserve: signal %d: draining (up to %.1f s)\n", signal, absl::ToDoubleSeconds(drain));
  stop_taking_work();
  for (grpc::Server* server : servers) {
    if (auto* health = server->GetHealthCheckService()) health->SetServingStatus(false);
  }
  const auto deadline = absl::ToChronoTime(absl::Now() + drain);
  for (grpc::Server* server : servers) server->Shutdown(deadline);
  for (grpc::Server* server : servers) server->Wait();
}

}  // namespace latentserve::serving
