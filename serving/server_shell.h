// The server shell every serving role (router, prefill, decode, serve) runs its gRPC services
// in: shutdown signals, TLS and internal-caller credentials, listening with limits, the health
// service and reflection, the metrics port, and draining on SIGTERM. It knows no role: roles
// hand it their services, gauges and "stop taking work" callbacks.
#pragma once

#include <signal.h>

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/args.h"
#include "serving/metrics.h"
#include "serving/security.h"

namespace latentserve::serving {

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
  // Calls one server runs at once (its thread quota; also HTTP/2 streams per connection):
  // beyond it a call is refused RESOURCE_EXHAUSTED instead of growing threads without bound.
  int64_t max_concurrent_calls = 4096;
};

// Blocks the shutdown signals in this thread (and every thread it starts) so the main thread
// can sigwait() for them.
sigset_t BlockShutdownSignals();

std::set<std::string> WithCommonFlags(std::set<std::string> flags);

absl::StatusOr<ProcessSecurity> SecurityFromArgs(const Args& args);

// Who may call this process's internal methods (serving/security.h). A split deployment
// with TLS or a public token must say who its components are (otherwise any certificate
// of the CA, a public client's included, would reach them); without either it runs open,
// as the plaintext loopback mode always has, and says so. `serve`, whose internal servers
// only its own router calls, makes up a random internal token when none is given.
absl::StatusOr<std::unique_ptr<InternalAuthorizer>> InternalAuthorizerFromArgs(const Args& args,
                                                                                        const char* command,
                                                                                        bool generate_token);

// The binary's version and git revision (latentserve_build_info).
struct BuildInfo {
  std::string version;
  std::string revision;
};

// Starts the /metrics endpoint when --metrics-listen is given (else nullptr): the families of
// `roles` (RoleMetricPrefixes), process_* and latentserve_build_info, every sample labelled
// model=<model()>.
absl::StatusOr<std::unique_ptr<MetricsServer>> StartMetrics(const Args& args, const std::vector<std::string>& roles,
                                                            std::function<std::string()> model, const BuildInfo& build);

// Builds and starts a server on `listen` (port 0: any free port); `reflection` adds gRPC
// server reflection (the serving ports; never the plaintext health port).
absl::StatusOr<Listening> StartServer(const std::string& listen, const std::vector<grpc::Service*>& services,
                                      const ProcessSecurity& security, bool reflection = true);

// --health-listen HOST:PORT: grpc.health.v1 alone, in plaintext, for probes that cannot
// speak TLS (kubelet's gRPC probes). It says what the serving port's health service says:
// SERVING once listening, NOT_SERVING from the start of a drain. Empty when not asked for.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartHealth(const Args& args);

absl::Status Announce(const Args& args, const std::string& address);

std::vector<grpc::Server*> WithHealth(std::vector<grpc::Server*> servers, const std::unique_ptr<grpc::Server>& health);

// Waits for SIGTERM/SIGINT, then drains: `stop_taking_work`, health NOT_SERVING, and
// Shutdown with a deadline (in-flight calls finish or are cancelled by then). Until the
// signal, a ListenerWatch (serving/listener_watch.h) turns health NOT_SERVING should
// `public_address` stop accepting connections.
void ServeUntilSignal(sigset_t signals, const std::string& public_address, const std::vector<grpc::Server*>& servers,
                      const std::function<void()>& stop_taking_work, absl::Duration drain);

}  // namespace latentserve::serving
