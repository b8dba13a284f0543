// The router: public latentserve.v1.Generation and the WorkerRegistry workers call.
//
// Generate: the per-client stream limit, metrics and the request log around one GenerateCall
// (router/generate_call.h: validate -> place -> prefill -> relay -> resume -> finish).
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "latentserve/v1/generate.grpc.pb.h"
#include "latentserve/internal/v1/worker.grpc.pb.h"
#include "router/session_store.h"
#include "router/worker_registry.h"
#include "serving/security.h"

namespace latentserve::router {

struct RouterOptions {
  absl::Duration lease_ttl = absl::Seconds(30);  // renewed each ttl/3 while the router holds it
  absl::Duration request_timeout = absl::Minutes(30);    // when the client sets no deadline
  absl::Duration control_timeout = absl::Seconds(5);     // ReserveLease / ReleaseLease
  // How long a request waits for a decode worker with room (every one answered
  // RESOURCE_EXHAUSTED) before it fails with RESOURCE_EXHAUSTED; its deadline still applies.
  absl::Duration capacity_wait = absl::Seconds(30);
  // A decode stream that brings no token for this long is cancelled and resumed on another
  // decode worker, as if that worker had died (zero: no limit).
  absl::Duration decode_progress_timeout = absl::Seconds(10);
  std::string model_path;  // GGUF to read the tokenizer from (else the first worker's path)
  int64_t max_prompt_tokens = 0;       // longest prompt accepted (0: the context limit only)
  int64_t max_prompt_bytes = 8 << 20;  // longest text / chat prompt, checked before tokenising (0: none)
  int64_t max_streams_per_client = 0;  // concurrent Generate calls per client (0: unlimited)
  RegistryLimits registry;             // worker registrations: cap and eviction
  // Decode cache pages: false (default): a lease reserves the prompt plus
  // kDecodeHeadroomTokens and the sequence grows a page at a time while it decodes; a
  // sequence that finds the cache full stops with finish_reason LENGTH (logged and counted
  // by the decode worker). true: prompt + max_tokens up front (no early stop, less concurrency).
  bool reserve_max_tokens = false;
  SessionLimits sessions;  // CreateSession's limits (router/session_store.h)
};

// The RetryInfo delay on the router's rejections that waiting may fix (stream limit, full
// decode caches, no workers yet, draining): clients back off from there.
inline constexpr absl::Duration kRetryDelay = absl::Seconds(1);

// Tokens of decode room a lease reserves beyond the prompt when pages grow during decode.
inline constexpr int64_t kDecodeHeadroomTokens = 256;

class TextCodec;    // tokenizer wrapper (router/text_codec.h)
class LeaseKeeper;  // router/lease_keeper.h

class RouterState {
 public:
  explicit RouterState(RouterOptions options);
  ~RouterState();
  WorkerRegistry& registry() { return registry_; }
  LeaseKeeper& lease_keeper() { return *lease_keeper_; }
  SessionStore& sessions() { return sessions_; }
  const RouterOptions& options() const { return options_; }
  // The tokenizer, loaded on first use; nullptr when the model has none (or it is not built).
  const TextCodec* codec();
  void StartDrain() { draining_ = true; }
  bool draining() const { return draining_; }
  std::atomic<int64_t> leases_active{0};
  std::atomic<int64_t> next_request{1};
  // Random per router process: ids "req-<prefix>-<n>" stay unique across router replicas.
  const std::string& request_id_prefix() const { return request_id_prefix_; }

 private:
  RouterOptions options_;
  std::string request_id_prefix_;
  WorkerRegistry registry_;
  std::unique_ptr<LeaseKeeper> lease_keeper_;
  SessionStore sessions_{options_.sessions};
  // Ends expired sessions and drops their documents on the workers (router/session_calls.cc).
  void SessionReaperLoop();
  std::mutex reaper_mu_;
  std::condition_variable reaper_cv_;
  bool stopping_ = false;
  std::thread session_reaper_;
  std::mutex codec_mu_;
  std::unique_ptr<TextCodec> codec_;
  bool codec_tried_ = false;
  std::atomic<bool> draining_{false};
};

class GenerationService final : public v1::Generation::Service {
 public:
  explicit GenerationService(RouterState& state)
      : state_(state), stream_limiter_(state.options().max_streams_per_client) {}
  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest* request,
                            v1::GetModelInfoResponse* response) override;
  // Sessions (router/session_calls.cc): owned by the caller's client identity.
  grpc::Status CreateSession(grpc::ServerContext* context, const v1::CreateSessionRequest* request,
                             v1::CreateSessionResponse* response) override;
  grpc::Status ListSessions(grpc::ServerContext* context, const v1::ListSessionsRequest* request,
                            v1::ListSessionsResponse* response) override;
  grpc::Status CloseSession(grpc::ServerContext* context, const v1::CloseSessionRequest* request,
                            v1::CloseSessionResponse* response) override;

 private:
  RouterState& state_;
  // RESOURCE_EXHAUSTED for a client over its stream limit (counted and logged).
  grpc::Status StreamLimitRejected(const std::string& client, const std::string& request_id);
  serving::StreamLimiter stream_limiter_;
};

// Internal: `auth` admits only cluster components (workers).
class RegistryService final : public internal::v1::WorkerRegistry::Service {
 public:
  RegistryService(RouterState& state, const serving::InternalAuthorizer& auth) : state_(state), auth_(auth) {}
  grpc::Status RegisterWorker(grpc::ServerContext* context, const internal::v1::RegisterWorkerRequest* request,
                              internal::v1::RegisterWorkerResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context, const internal::v1::HeartbeatRequest* request,
                         internal::v1::HeartbeatResponse* response) override;

 private:
  RouterState& state_;
  const serving::InternalAuthorizer& auth_;
};

}  // namespace latentserve::router
