// What every serving subcommand (router, prefill, decode, serve) sets up around its gRPC
// servers: shutdown signals, TLS and internal-caller credentials, metrics and health ports,
// listening, draining, and the WorkerStats service of a worker role.
#pragma once
#if __has_include("latentserve/v1/generate.grpc.pb.h")

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
#include "decode/decode_worker.h"
#include "latentserve/v1/worker.grpc.pb.h"
#include "router/generation_service.h"
#include "serving/metrics.h"
#include "serving/security.h"

namespace latentserve::cli {

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
absl::StatusOr<std::unique_ptr<serving::InternalAuthorizer>> InternalAuthorizerFromArgs(const Args& args,
                                                                                        const char* command,
                                                                                        bool generate_token);

// Starts the /metrics endpoint when --metrics-listen is given (else nullptr): the families of
// `roles` (serving::RoleMetricPrefixes), process_* and latentserve_build_info, every sample
// labelled model=<model()>.
absl::StatusOr<std::unique_ptr<serving::MetricsServer>> StartMetrics(const Args& args,
                                                                    const std::vector<std::string>& roles,
                                                                    std::function<std::string()> model);

// latentserve_decode_lease_expired_total and latentserve_decode_cache_full_stops_total, read
// from the decode worker at scrape time.
void AddDecodeCounters(serving::MetricsServer* metrics, std::function<decode::DecodeStats()> stats);

void AddCacheGauges(serving::MetricsServer* metrics, const std::string& role, std::function<v1::WorkerInfo()> info);

void AddRouterGauges(serving::MetricsServer* metrics, router::RouterState& state);

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
// signal, a ListenerWatch (tools/listener_watch.h) turns health NOT_SERVING should
// `public_address` stop accepting connections.
void ServeUntilSignal(sigset_t signals, const std::string& public_address, const std::vector<grpc::Server*>& servers,
                      const std::function<void()>& stop_taking_work, absl::Duration drain);

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

}  // namespace latentserve::cli

#endif  // __has_include generated protos
