// The router's calls to its workers for one request: reserving decode pages (waiting for
// room), holding and releasing the lease, and running the prefill with retries on another
// worker. GenerationService (generation_service.cc) strings them together.
#pragma once

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "latentserve/v1/generate.grpc.pb.h"
#include "latentserve/v1/worker.grpc.pb.h"
#include "router/generation_service.h"
#include "router/lease_keeper.h"

namespace latentserve::router {

// Cancels the attached downstream call when the client's call is cancelled (client gone,
// deadline passed). The sync server has no cancel callback, so one thread polls.
class CancelLink {
 public:
  explicit CancelLink(grpc::ServerContext* server) : server_(server), thread_([this] { Loop(); }) {}
  ~CancelLink() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  // progress_timeout > 0: the downstream call is also cancelled when Progress() has not been
  // called for that long (a live worker that stopped producing; keepalive only catches a
  // frozen or unreachable one). stalled() says whether that is what ended the call.
  void Attach(grpc::ClientContext* client, absl::Duration progress_timeout = absl::ZeroDuration()) {
    std::lock_guard<std::mutex> lock(mu_);
    client_ = client;
    progress_timeout_ = progress_timeout;
    last_progress_ = absl::Now();
    stalled_ = false;
    if (cancelled_) client_->TryCancel();
  }
  void Progress() {
    std::lock_guard<std::mutex> lock(mu_);
    last_progress_ = absl::Now();
  }
  void Detach() {
    std::lock_guard<std::mutex> lock(mu_);
    client_ = nullptr;
  }
  bool cancelled() {
    std::lock_guard<std::mutex> lock(mu_);
    return cancelled_;
  }
  bool stalled() {
    std::lock_guard<std::mutex> lock(mu_);
    return stalled_;
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stopping_) {
      if (!cancelled_ && server_->IsCancelled()) {
        cancelled_ = true;
        if (client_) client_->TryCancel();
      }
      if (client_ && !stalled_ && progress_timeout_ > absl::ZeroDuration() &&
          absl::Now() - last_progress_ > progress_timeout_) {
        stalled_ = true;
        client_->TryCancel();
      }
      cv_.wait_for(lock, std::chrono::milliseconds(10));
    }
  }
  grpc::ServerContext* server_;
  std::mutex mu_;
  std::condition_variable cv_;
  grpc::ClientContext* client_ = nullptr;
  absl::Duration progress_timeout_ = absl::ZeroDuration();
  absl::Time last_progress_;
  bool stalled_ = false;
  bool cancelled_ = false;
  bool stopping_ = false;
  std::thread thread_;
};

void SetDeadline(grpc::ClientContext& context, absl::Time deadline);

void ReleaseLease(const std::string& decode_worker, const std::string& lease_id, absl::Duration timeout);

// A decode lease held by one request: counted by the router, renewed by the LeaseKeeper
// until Decode takes it over, released on every other path.
class DecodeLease {
 public:
  DecodeLease(RouterState& state, std::string worker, std::string id)
      : state_(state), worker_(std::move(worker)), id_(std::move(id)) {
    state_.leases_active++;
    state_.lease_keeper().Add(worker_, id_);
  }
  ~DecodeLease() {
    state_.lease_keeper().Remove(id_);
    if (open_) ReleaseLease(worker_, id_, state_.options().control_timeout);
    state_.leases_active--;
    state_.registry().ReleaseDecode(worker_);  // the claim ClaimDecode made
  }
  DecodeLease(const DecodeLease&) = delete;
  DecodeLease& operator=(const DecodeLease&) = delete;

  // From here Decode owns the pages (it frees them on every path) and the deadline.
  void HandToDecode() {
    open_ = false;
    state_.lease_keeper().Remove(id_);
  }
  const std::string& worker() const { return worker_; }
  const std::string& id() const { return id_; }

 private:
  RouterState& state_;
  const std::string worker_;
  const std::string id_;
  bool open_ = true;
};

constexpr int kMaxDecodeAttempts = 3;  // decode workers tried for one request's handoff

// Reserves pages for `lease_tokens` on the best decode worker that accepts them and whose
// cache can hold `context_tokens` (prompt + max_tokens: what the sequence may grow to). When every
// live worker is full (RESOURCE_EXHAUSTED), waits for pages to free up, polling with backoff,
// for up to the router's capacity_wait (and never past the request's deadline), as a queue
// would; any other refusal moves on to the next worker.
grpc::Status ReserveDecodeLease(RouterState& state, const v1::ModelDescriptor& model, const std::string& request_id,
                                int64_t context_tokens, int64_t lease_tokens, absl::Time deadline,
                                const std::set<std::string>& exclude,
                                CancelLink& cancel, const std::function<bool()>& client_gone,
                                std::unique_ptr<DecodeLease>* lease);

struct PrefillOutcome {
  grpc::Status status;
  bool handoff_lost = false;  // the cache did not reach the decode worker (status says why)
};

// Prefills into `lease`, relaying progress; retries on another prefill worker when one
// fails before the first token. Fills `done` and `prefill_worker` on success.
PrefillOutcome RunPrefill(RouterState& state, const v1::GenerateRequest& request, const v1::ModelDescriptor& model,
                          const std::string& request_id, const std::vector<int32_t>& tokens, const DecodeLease& lease,
                          absl::Time deadline, CancelLink& cancel, const std::function<bool()>& client_gone,
                          grpc::ServerWriter<v1::GenerateResponse>* writer, bool relay_progress,
                          v1::PrefillDone* done, std::string* prefill_worker);

}  // namespace latentserve::router
